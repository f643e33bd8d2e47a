#!/usr/bin/env bash
# Opt-in check: `planner report` as a person sees it. Runs a 30-trial agent search of a
# two-stage replay task, writes its HTML report, renders the page in headless Chromium
# (Debian's `chromium`, installed with apt-get if missing) with no network, and saves a
# screenshot (palette PNG, a few hundred KB).
#
#   experiments/render_report.sh [SCREENSHOT]    # default experiments/results/report.png
set -euo pipefail
cd "$(dirname "$0")/.."
shot=${1:-experiments/results/report.png}
bin=.venv/bin
if ! command -v chromium >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
db="sqlite:///$work/planner.db"
export OMP_NUM_THREADS=1
"$bin/planner" optimize envs/replay/tasks/pythia_gsm8k_math.yaml --trials 30 --db "$db" \
    --json >/dev/null
"$bin/planner" report pythia-gsm8k-math-agent --db "$db" -o "$work/report.html"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$(mktemp -d -p "$work")" \
    --screenshot="$work/shot.png" --window-size=1200,3000 "file://$work/report.html" \
    2>"$work/chromium.log" || { cat "$work/chromium.log" >&2; exit 1; }
mkdir -p "$(dirname "$shot")"
"$bin/python" - "$work/shot.png" "$shot" <<'EOF'
"""Crop the screenshot's empty bottom and store it as a 256-colour palette PNG."""
import sys

from PIL import Image, ImageChops

image = Image.open(sys.argv[1]).convert("RGB")
ink = ImageChops.difference(image, Image.new("RGB", image.size, "white")).getbbox()
if ink is None:
    sys.exit("the screenshot is blank: the page did not render")
image = image.crop((0, 0, image.width, min(image.height, ink[3] + 24)))
image.quantize(colors=256).save(sys.argv[2], optimize=True)
print(f"{sys.argv[2]}: {image.width}x{image.height}")
EOF
