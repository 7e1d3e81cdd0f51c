"""``arsel doctor``: what arsel sees on this machine, one line per check, each ok / warn / missing + the fix.

In the spirit of ``python -m torch.utils.collect_env`` and the vision libraries' ``checks``
commands: versions and builds of the runtimes, the GPU, cameras, weights, caches and extras. Fast
and side-effect free: no model is loaded, libraries are imported only to ask their version and
devices, camera probes are bounded in time and only touch devices the OS lists.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine import extras as extras_mod
from engine.weights import ENV_DIR, SOURCES, resolve, user_cache_dir

OK, WARN, MISSING = "ok", "warn", "missing"
SETUP = "bash scripts/setup.sh"
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Check:
    """One line of the report; ``info`` holds the machine-readable facts behind ``detail``."""

    name: str
    status: str  # ok | warn | missing
    detail: str
    fix: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def _version(dist: str) -> str | None:
    return extras_mod.installed_version(dist)


def _bounded(fn: Callable[[], Any], timeout_s: float = PROBE_TIMEOUT_S) -> tuple[Any, str | None]:
    """Run ``fn`` in a daemon thread; (result, None), or (None, why) on error or timeout."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - a probe reports any failure as text
            box["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        return None, f"no answer within {timeout_s:g} s"
    return box.get("value"), box.get("error")


def nvidia_smi_gpus(timeout_s: float = PROBE_TIMEOUT_S) -> tuple[list[dict[str, Any]], str]:
    """GPUs listed by ``nvidia-smi`` as ``[{name, memory_mib, driver}]``, and how the query went."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "nvidia-smi not found"
    try:
        proc = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"nvidia-smi failed: {exc}"
    if proc.returncode != 0:
        return [], f"nvidia-smi failed (exit {proc.returncode}): {(proc.stdout + proc.stderr).strip()[:120]}"
    gpus = []
    for line in proc.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            mem = int(parts[1]) if parts[1].isdigit() else None
            gpus.append({"name": parts[0], "memory_mib": mem, "driver": parts[2]})
    return gpus, f"nvidia-smi lists {len(gpus)} GPU(s)"


def check_python() -> Check:
    v = sys.version_info
    info = {"version": platform.python_version(), "executable": sys.executable,
            "platform": platform.platform(), "machine": platform.machine()}
    detail = f"{info['version']} ({sys.executable}) on {platform.system()} {platform.machine()}"
    if v < (3, 10):
        return Check("python", MISSING, detail, "arsel needs Python >= 3.10", info)
    return Check("python", OK, detail, info=info)


def _nvidia_libs_bytes() -> int:
    """Bytes of the pip-installed CUDA libraries (``site-packages/nvidia``) beside torch."""
    spec = importlib.util.find_spec("nvidia")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    return sum(f.stat().st_size for root in roots for f in root.rglob("*") if f.is_file())


def check_torch(gpus: list[dict[str, Any]]) -> Check:
    """torch's version and build (CPU / CUDA x.y / ROCm) against the GPUs present."""
    if importlib.util.find_spec("torch") is None:
        return Check("torch", MISSING, "not installed", f"{SETUP} (picks the CPU or CUDA build for this machine)")
    import torch

    cuda, hip = torch.version.cuda, getattr(torch.version, "hip", None)
    build = f"CUDA {cuda}" if cuda else f"ROCm {hip}" if hip else "CPU"
    available = bool(torch.cuda.is_available())
    info = {"version": torch.__version__, "build": "cuda" if cuda else "rocm" if hip else "cpu",
            "cuda_version": cuda, "cuda_available": available, "threads": torch.get_num_threads()}
    detail = f"{torch.__version__}, a {build} build"
    if cuda and not available:
        info["nvidia_libs_bytes"] = _nvidia_libs_bytes()
        libs = f" ({info['nvidia_libs_bytes'] / 2**30:.1f} GiB of CUDA libraries unused)" if info["nvidia_libs_bytes"] else ""
        return Check("torch", WARN, f"{detail}, but no CUDA GPU is usable{libs}",
                     f"on a CPU-only machine: {SETUP} --cpu (reinstalls the CPU build)", info)
    if not cuda and not hip and gpus:
        return Check("torch", WARN, f"{detail}, but an NVIDIA GPU is present ({gpus[0]['name']})",
                     f"{SETUP} --cuda (installs the CUDA build matching the driver)", info)
    if available:
        detail += f", CUDA available ({torch.cuda.device_count()} device(s))"
    return Check("torch", OK, detail, info=info)


def check_gpu(gpus: list[dict[str, Any]], how: str) -> Check:
    """The GPUs (torch's view when it has CUDA, else nvidia-smi's)."""
    found = list(gpus)
    if importlib.util.find_spec("torch") is not None and not found:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                found.append({"name": props.name, "memory_mib": props.total_memory // 2**20, "driver": None})
            how = "torch.cuda"
    if not found:
        return Check("gpu", WARN, f"no NVIDIA GPU ({how}): arsel runs on the CPU (torch / ONNX Runtime)",
                     "--device cuda and TensorRT need an NVIDIA GPU and driver", {"gpus": [], "probe": how})
    text = "; ".join(f"{g['name']}, {g['memory_mib'] / 1024:.0f} GiB" if g["memory_mib"] else g["name"] for g in found)
    return Check("gpu", OK, text, info={"gpus": found, "probe": how})


def check_tensorrt(gpus: list[dict[str, Any]]) -> Check:
    if importlib.util.find_spec("tensorrt") is None:
        fix = extras_mod.install_line("trt") + ("" if gpus else " (needs an NVIDIA GPU; the onnxruntime backend works without)")
        return Check("tensorrt", MISSING, "not installed", fix, {"version": None})
    version, err = _bounded(lambda: __import__("tensorrt").__version__)
    if version is None:
        return Check("tensorrt", WARN, f"installed but does not import: {err}", extras_mod.install_line("trt"),
                     {"version": None})
    if int(str(version).split(".")[0]) < 10:
        return Check("tensorrt", WARN, f"{version} is too old (arsel needs >= 10)", extras_mod.install_line("trt"),
                     {"version": version})
    return Check("tensorrt", OK, str(version), info={"version": version})


def check_onnxruntime(gpus: list[dict[str, Any]]) -> Check:
    if importlib.util.find_spec("onnxruntime") is None:
        return Check("onnxruntime", MISSING, "not installed", "pip install onnxruntime", {"providers": []})
    import onnxruntime

    providers = list(onnxruntime.get_available_providers())
    info = {"version": onnxruntime.__version__, "providers": providers, "onnx": _version("onnx")}
    detail = f"{onnxruntime.__version__}, providers {', '.join(providers)}; onnx {info['onnx'] or 'not installed'}"
    if gpus and "CUDAExecutionProvider" not in providers:
        return Check("onnxruntime", WARN, detail, "for the GPU: pip install onnxruntime-gpu", info)
    if info["onnx"] is None:
        return Check("onnxruntime", WARN, detail, "pip install onnx (needed to export models)", info)
    return Check("onnxruntime", OK, detail, info=info)


def check_open3d() -> Check:
    version = _version("open3d") or _version("open3d-cpu")
    if version is None:
        return Check("open3d", MISSING, "not installed (needed by arsel lift / fuse / demo)", "pip install open3d")
    return Check("open3d", OK, version, info={"version": version})


def _realsense_devices() -> list[dict[str, str]]:
    import pyrealsense2 as rs

    out = []
    for dev in rs.context().query_devices():
        out.append({key: dev.get_info(getattr(rs.camera_info, key)) if dev.supports(getattr(rs.camera_info, key)) else ""
                    for key in ("name", "serial_number", "firmware_version")})
    return out


def check_realsense() -> Check:
    version = _version("pyrealsense2")
    if version is None:
        return Check("realsense", MISSING, "pyrealsense2 not installed", "pip install pyrealsense2", {"devices": []})
    devices, err = _bounded(_realsense_devices)
    if err is not None:
        return Check("realsense", WARN, f"pyrealsense2 {version}; device query failed: {err}",
                     "check the USB connection and udev rules (librealsense's 99-realsense-libusb.rules)",
                     {"version": version, "devices": []})
    names = ", ".join(f"{d['name']} #{d['serial_number']}" for d in devices) or "no device attached"
    return Check("realsense", OK, f"pyrealsense2 {version}; {names}", info={"version": version, "devices": devices})


def _opencv_cameras(paths: list[str]) -> list[dict[str, Any]]:
    import cv2

    found = []
    for path in paths:
        cap = cv2.VideoCapture(path, cv2.CAP_V4L2)
        try:
            if cap.isOpened():
                found.append({"device": path, "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                              "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))})
        finally:
            cap.release()
    return found


def check_cameras() -> Check:
    """OpenCV cameras: only the ``/dev/video*`` nodes Linux lists are opened (no frame is read)."""
    version = _version("opencv-python") or _version("opencv-python-headless") or _version("opencv-contrib-python")
    if version is None:
        return Check("opencv", MISSING, "OpenCV not installed", "pip install opencv-python", {"cameras": []})
    if platform.system() != "Linux":
        return Check("opencv", OK, f"{version}; cameras not probed on {platform.system()} (try `arsel track 0`)",
                     info={"version": version, "cameras": None})
    nodes = sorted(str(p) for p in Path("/dev").glob("video*"))
    if not nodes:
        return Check("opencv", OK, f"{version}; no camera (/dev/video* absent)", info={"version": version, "cameras": []})
    cams, err = _bounded(lambda: _opencv_cameras(nodes), timeout_s=PROBE_TIMEOUT_S * 2)
    if err is not None:
        return Check("opencv", WARN, f"{version}; probing {', '.join(nodes)} failed: {err}",
                     "check the camera's permissions (the video group)", {"version": version, "cameras": []})
    listed = ", ".join(f"{c['device']} {c['width']}x{c['height']}" for c in cams) or f"none of {len(nodes)} nodes opens"
    return Check("opencv", OK, f"{version}; cameras: {listed}", info={"version": version, "cameras": cams})


def _weights_origin(path: Path) -> str:
    env = os.environ.get(ENV_DIR)
    if env and Path(env).expanduser() in path.parents:
        return f"${ENV_DIR}"
    if user_cache_dir() in path.parents:
        return "user cache"
    return "installed package"


def check_weights() -> list[Check]:
    """One check per model: where its checkpoint was found (no file is read)."""
    checks = []
    for name, src in SOURCES.items():
        try:
            path = resolve(name)
        except FileNotFoundError:
            size = f" ({src.size_bytes / 2**20:.0f} MiB)" if src.size_bytes else ""
            checks.append(Check(f"weights:{name}", MISSING, f"{src.filename} not found",
                                f"arsel weights fetch {name}{size}", {"path": None, "origin": None}))
            continue
        origin = _weights_origin(path)
        checks.append(Check(f"weights:{name}", OK, f"{path} ({origin})", info={"path": str(path), "origin": origin}))
    return checks


def _dir_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.is_symlink())


def check_cache() -> Check:
    root = user_cache_dir().parent
    if not root.is_dir():
        return Check("cache", OK, f"{root} (not created yet)", info={"path": str(root), "bytes": 0, "folders": {}})
    sizes, err = _bounded(lambda: {p.name: _dir_bytes(p) for p in sorted(root.iterdir()) if p.is_dir()})
    if err is not None:
        return Check("cache", WARN, f"{root}: size unknown ({err})", info={"path": str(root), "bytes": None})
    total = sum(sizes.values())
    parts = ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in sizes.items())
    return Check("cache", OK, f"{root}: {total / 2**20:.0f} MiB" + (f" ({parts})" if parts else ""),
                 info={"path": str(root), "bytes": total, "folders": sizes})


def check_extras() -> list[Check]:
    """One check per extra: each distribution it adds, installed (and in range) or not."""
    table, origin = extras_mod.extra_requirements()
    checks = []
    for extra in sorted(k for k in table if k):
        missing, dists = [], {}
        for req in table[extra]:
            version, fits = extras_mod.requirement_status(req)
            dists[req.name] = version
            if not fits:
                missing.append(req.name + (f" {version} (needs {req.specifier})" if version else ""))
        use = extras_mod.EXTRAS.get(extra, ("",))[0]
        info = {"distributions": dists, "missing": missing, "install": extras_mod.install_line(extra), "from": origin}
        if missing:
            checks.append(Check(f"extra:{extra}", MISSING, f"{use}; missing: {', '.join(missing)}",
                                extras_mod.install_line(extra), info))
        else:
            checks.append(Check(f"extra:{extra}", OK, f"{use}; {len(dists)} distribution(s) installed", info=info))
    return checks


def collect() -> list[Check]:
    """Every check, in report order."""
    gpus, how = nvidia_smi_gpus()
    checks = [check_python(), check_torch(gpus), check_gpu(gpus, how), check_tensorrt(gpus),
              check_onnxruntime(gpus), check_open3d(), check_realsense(), check_cameras()]
    return checks + check_weights() + [check_cache()] + check_extras()


def format_text(checks: list[Check]) -> str:
    """``STATUS  NAME  detail`` lines, each failing one followed by its ``fix:`` line."""
    width = max(len(c.name) for c in checks) + 2
    lines = []
    for c in checks:
        lines.append(f"{c.status:<8}{c.name:<{width}}{c.detail}")
        if c.fix:
            lines.append(f"{'':<8}{'':<{width}}fix: {c.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in (OK, WARN, MISSING)}
    lines.append(f"{counts[OK]} ok, {counts[WARN]} warn, {counts[MISSING]} missing")
    return "\n".join(lines)


def to_json(checks: list[Check]) -> str:
    arsel = _version("arsel")
    return json.dumps({"arsel": arsel, "checks": [asdict(c) for c in checks]}, indent=2)


def run(as_json: bool = False) -> int:
    """Print the report; exit status 0 (doctor reports, it does not fail)."""
    checks = collect()
    print(to_json(checks) if as_json else format_text(checks))
    return 0
