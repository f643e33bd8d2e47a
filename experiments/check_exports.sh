#!/usr/bin/env bash
# Validate a `planner export` directory with LLaMA-Factory's and Axolotl's own parsers, each in
# its own venv under $PLANNER_TOOL_VENVS (default ~/.cache/planner/tool-venvs, built on first use).
# Usage: experiments/check_exports.sh DIR [--tools llamafactory,axolotl] [--setup-only]
# Details: the docstring of experiments/check_exports.py.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$REPO/.venv/bin/python"
[[ -x "$PY" ]] || PY=python3
exec "$PY" "$REPO/experiments/check_exports.py" "$@"
