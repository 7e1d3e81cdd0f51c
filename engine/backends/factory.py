"""``create_backend``: one call from a runtime name and a model name to a ready ``Backend``.

``onnxruntime`` and ``tensorrt`` backends need exported files; they are made on first use in a
cache folder keyed by the model name and the checkpoint's sha256, so a new checkpoint never runs
with a stale graph. Runtimes are imported only when chosen.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from engine.backends.base import Backend

if TYPE_CHECKING:
    from engine.backends.torch_backend import TorchOptions

BackendName = Literal["torch", "onnxruntime", "tensorrt", "auto"]
BACKENDS = ("torch", "onnxruntime", "tensorrt", "auto")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/arsel`` (``~/.cache/arsel``): exported ONNX and TensorRT engines live under it."""
    from engine.weights import user_cache_dir

    return user_cache_dir().parent


def checkpoint_sha256(path: Path, cache_dir: Path) -> str:
    """sha256 of a checkpoint, memoised in ``cache_dir/sha256.json`` by (path, size, mtime)."""
    from engine.weights import sha256_file

    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = cache_dir / "sha256.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key not in memo:
        memo[key] = sha256_file(path)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(memo, indent=1))
        tmp.replace(memo_path)
    return str(memo[key])


# Bump when exported files change (2: the no-mask pair records its decoder's sha256; 3: faster
# decoder graphs, see engine.models.transformer._softmax; 8: the no-mask prompt graph takes an
# upscaling window, ``roi``), so older cached exports are redone once
# instead of being used, or warned about, on every run.
EXPORT_FORMAT = 8


def onnx_files(model_name: str, checkpoint: Path | None, cache_dir: Path | None = None) -> tuple[Path, Path]:
    """(encoder, decoder) ONNX of ``model_name`` with the weights of ``checkpoint``, exported if missing.

    Files live in ``cache_dir/onnx/{model}-{sha256[:16]}-v{EXPORT_FORMAT}/``; the export is
    checked against torch. The folder's ``manifest.json`` records every file's size and sha256
    (``engine.artifacts``); a folder that fails it (a truncated, zero-byte or changed file, no
    manifest) is exported again with one warning line. An export goes to a temporary folder
    renamed into place when complete, so an interrupted export leaves nothing to trust.
    """
    import os
    import shutil

    from engine.artifacts import verify, warn_rebuild, write_manifest
    from engine.weights import resolve

    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    ckpt = resolve(model_name, checkpoint)
    digest = checkpoint_sha256(ckpt, cache_dir)
    folder = cache_dir / "onnx" / f"{model_name}-{digest[:16]}-v{EXPORT_FORMAT}"
    encoder, decoder = folder / f"{model_name}_encoder.onnx", folder / f"{model_name}_decoder.onnx"
    names = [p.name for p in (encoder, decoder, folder / f"{model_name}_export.json")]
    if folder.exists():
        reason = verify(folder / "manifest.json") or verify(folder / "manifest.json", names)
        if reason is None:
            return encoder, decoder
        warn_rebuild(f"cached ONNX export {folder}", reason)
    from engine.export.onnx_export import export_model

    tmp = folder.with_name(f".{folder.name}.part-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        export_model(model_name, tmp, ckpt)
        report = tmp / f"{model_name}_export.json"  # it names the files where they will live, not the temporary
        report.write_text(report.read_text().replace(json.dumps(str(tmp))[1:-1], json.dumps(str(folder))[1:-1]))
        write_manifest(tmp / "manifest.json", [p for p in tmp.iterdir() if p.is_file()])
        shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process put a complete export there first: use that one
            if verify(folder / "manifest.json", names) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return encoder, decoder


def _gpu_present() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def resolve_auto(device: str = "cpu") -> str:
    """The runtime ``auto`` picks: on a CUDA ``device``, tensorrt where importable, else torch (CUDA);
    on the CPU, onnxruntime where importable (its decodes are about twice torch's speed on 2 cores,
    ``bench/bench_backends.py``), else torch."""
    if device != "cpu" and _gpu_present():
        return "tensorrt" if importlib.util.find_spec("tensorrt") is not None else "torch"
    if importlib.util.find_spec("onnxruntime") is not None:
        return "onnxruntime"
    return "torch"


def create_backend(
    name: BackendName | str,
    model_name: str,
    checkpoint: Path | None = None,
    device: str = "cpu",
    cache_dir: Path | None = None,
    torch_options: TorchOptions | None = None,
    threads: int | None = None,
) -> Backend:
    """A ``Backend`` for ``model_name`` on runtime ``name`` ("torch", "onnxruntime", "tensorrt", "auto").

    ``checkpoint``: weights file (default: ``engine.weights.resolve``). ``device``: "cpu" or
    "cuda[:N]" (tensorrt needs CUDA; ``auto`` on "cpu" never picks tensorrt). ``cache_dir``:
    where exported ONNX files and engines are kept (default ``default_cache_dir()``).
    ``torch_options``: precision, channels_last, cuda_graphs, compile of the torch backend
    (``engine.backends.torch_backend.TorchOptions``); other runtimes refuse them. ``threads``:
    intra-op threads of each onnxruntime session (other runtimes ignore it), with spin-waiting off (the encoder worker and the
    decoder share the cores; ``engine.threads``); None: the physical cores, spinning. torch's pool
    is process-wide (``engine.threads.apply_threads``), set by the caller.
    """
    from engine.models.registry import get_spec

    spec = get_spec(model_name)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "auto":
        name = resolve_auto(device)
    if torch_options is not None and name != "torch":
        raise ValueError(
            f"torch_options apply to the torch backend only, and the runtime is {name!r}; "
            "pass name='torch' or drop torch_options"
        )
    if name == "torch":
        from engine.backends.torch_backend import TorchBackend, TorchOptions
        from engine.models.registry import load_model
        from engine.weights import resolve

        o = torch_options or TorchOptions()
        return TorchBackend(
            load_model(model_name, resolve(model_name, checkpoint)), spec.input_size, device, o.precision,
            channels_last=o.channels_last, cuda_graphs=o.cuda_graphs, compile=o.compile, max_graphs=o.max_graphs,
        )
    if name == "tensorrt" and not device.startswith("cuda"):  # before the minutes-long ONNX export
        raise ValueError(
            f"the tensorrt backend runs on a CUDA device, got device={device!r}; pass --device cuda "
            "(CLI) or device='cuda' (Python), or pick backend onnxruntime/torch for the CPU"
        )
    encoder, decoder = onnx_files(model_name, checkpoint, cache_dir)
    if name == "onnxruntime":
        from engine.backends.ort_backend import OrtBackend

        if threads:
            return OrtBackend(encoder, decoder, spec.input_size, threads=threads, device=device, spin=False)
        return OrtBackend(encoder, decoder, spec.input_size, device=device)
    from trt.build import build_engine
    from trt.runtime import TrtBackend

    out = (Path(cache_dir) if cache_dir else default_cache_dir()) / "engines"
    enc_engine = build_engine(encoder, out)
    dec_engine = build_engine(decoder, out)
    return TrtBackend(enc_engine, dec_engine, spec.input_size, device=device)
