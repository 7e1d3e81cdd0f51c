"""TensorRT engine builder for the encoder/decoder ONNX of ``engine.export`` (TensorRT >= 10).

Not yet verified on a GPU: building, fp16 and INT8 calibration have only run in CPU unit tests
(TensorRT mocked) here.

An engine is only valid for the ONNX file, TensorRT version and GPU it was built with, so every
engine is cached under a name holding all of them (plus precision and the decoder profile) and a
JSON sidecar repeats them. A stale engine (different ONNX, profile or precision) is rebuilt; a
foreign one (other TensorRT version or GPU) is rebuilt, or refused with an error naming both when
``on_mismatch="error"``. The key/sidecar logic needs no ``tensorrt`` (tested on CPU).

Precision: "fp32"; "fp16" (TensorRT 10: fp16 kernels with normalisation/softmax/reduce layers held
in fp32 by ``OBEY_PRECISION_CONSTRAINTS`` -- a fully fp16 SAM encoder overflows in LayerNorm;
TensorRT 11, which dropped weak typing, builds the mixed-precision ONNX of ``engine.export``'s fp16
conversion instead); "int8" (encoder only; TensorRT 10 entropy calibration on images of
``calib_dir``, preprocessed with ``engine.transforms.preprocess``, fp16 fallback).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from engine.contract import DECODER_INPUTS, EMBED_DIM, EMBED_HW, LOW_RES_HW
from engine.extras import require

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS = ("fp32", "fp16", "int8")
SIDECAR_VERSION = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class EngineMismatchError(RuntimeError):
    """A cached or given engine was built for another ONNX file, TensorRT version or GPU."""


def import_tensorrt() -> Any:
    """``import tensorrt`` (version >= 10) or raise ``ImportError`` saying how to install it."""
    tensorrt = require("trt", "tensorrt", what="TensorRT (NVIDIA GPU and driver; or use the onnxruntime backend)")
    if int(tensorrt.__version__.split(".")[0]) < 10:
        raise ImportError(f"TensorRT {tensorrt.__version__} is too old: pip install 'arsel[trt]' (tensorrt >= 10)")
    return tensorrt


def gpu_name(device: int = 0) -> str:
    """Name of CUDA device ``device`` (via torch), e.g. "NVIDIA H100 80GB HBM3"."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("TensorRT needs a CUDA GPU and none is visible (check the driver and CUDA_VISIBLE_DEVICES)")
    return str(torch.cuda.get_device_name(device))


@dataclass(frozen=True, slots=True)
class DecoderProfile:
    """Optimisation profile of the decoder: prompt batch ``B`` and point count ``N`` as min/opt/max."""

    min_points: int = 1
    opt_points: int = 2
    max_points: int = 16
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 16

    def __post_init__(self) -> None:
        for what, lo, opt, hi in (("points", self.min_points, self.opt_points, self.max_points),
                                  ("batch", self.min_batch, self.opt_batch, self.max_batch)):
            if not 1 <= lo <= opt <= hi:
                raise ValueError(f"decoder profile {what} needs 1 <= min <= opt <= max, got {lo}, {opt}, {hi}")

    @property
    def tag(self) -> str:
        b = f"b{self.min_batch}-{self.opt_batch}-{self.max_batch}"
        return f"{b}_n{self.min_points}-{self.opt_points}-{self.max_points}"

    def shapes(self, which: Literal["min", "opt", "max"]) -> dict[str, tuple[int, ...]]:
        """Input shapes of the decoder at the profile's ``which`` point."""
        b = getattr(self, f"{which}_batch")
        n = getattr(self, f"{which}_points")
        return {
            "image_embeddings": (1, EMBED_DIM, *EMBED_HW), "point_coords": (b, n, 2), "point_labels": (b, n),
            "mask_input": (b, 1, *LOW_RES_HW), "has_mask_input": (b,),
        }


@dataclass(frozen=True, slots=True)
class EngineKey:
    """Everything an engine depends on; equal keys mean an engine can be reused."""

    onnx_sha256: str
    trt_version: str
    gpu: str
    precision: str
    profile: str = ""  # DecoderProfile.tag for decoders, "" for encoders

    def file_name(self, onnx_stem: str) -> str:
        """``{stem}_{precision}_{sha[:12]}_trt{version}_{gpu}[_{profile}].engine`` (filesystem-safe)."""
        gpu = re.sub(r"[^A-Za-z0-9]+", "-", self.gpu).strip("-").lower()
        parts = [onnx_stem, self.precision, self.onnx_sha256[:12], f"trt{self.trt_version}", gpu]
        if self.profile:
            parts.append(self.profile)
        return "_".join(parts) + ".engine"


def sidecar_path(engine_path: Path) -> Path:
    return Path(engine_path).with_suffix(".json")


def write_sidecar(engine_path: Path, key: EngineKey, onnx_path: Path, build_s: float) -> None:
    """Write the engine's sidecar: its ``EngineKey``, the ONNX it came from, and the engine file's
    size, sha256 and mtime (``engine.artifacts``), checked by :func:`engine_status` before use."""
    from engine.artifacts import sha256_file

    st = Path(engine_path).stat()
    meta = {"sidecar_version": SIDECAR_VERSION, **asdict(key), "onnx": str(onnx_path), "build_s": round(build_s, 1),
            "files": {Path(engine_path).name: {"size": st.st_size, "sha256": sha256_file(engine_path),
                                               "mtime_ns": st.st_mtime_ns}}}
    tmp = sidecar_path(engine_path).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(sidecar_path(engine_path))


def engine_integrity(engine_path: Path) -> str | None:
    """None when the engine file matches the size and sha256 its sidecar recorded, else why not."""
    from engine.artifacts import verify

    meta = read_sidecar(engine_path) or {}
    if not isinstance(meta.get("files"), dict):
        return f"{sidecar_path(engine_path).name} records no size or sha256 (built before they were recorded)"
    return verify(sidecar_path(engine_path), [Path(engine_path).name])


def read_sidecar(engine_path: Path) -> dict[str, Any] | None:
    """The sidecar of ``engine_path``, or ``None`` when it is missing or unreadable."""
    try:
        meta = json.loads(sidecar_path(engine_path).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def engine_status(engine_path: Path, expected: EngineKey) -> tuple[str, str]:
    """``(status, reason)`` of a cached engine against ``expected``.

    status: "ok"; "missing" (no engine file); "stale" (no/unreadable sidecar, or another ONNX,
    precision or profile); "foreign" (built by another TensorRT version or on another GPU);
    "corrupt" (size or sha256 differ from those recorded at build time: truncated, zero-byte, changed).
    """
    if not Path(engine_path).is_file():
        return "missing", f"{engine_path} does not exist"
    meta = read_sidecar(engine_path)
    if meta is None:
        return "stale", f"{sidecar_path(engine_path)} is missing or unreadable"
    foreign = [f"{label} {meta.get(field)!r} (installed: {getattr(expected, field)!r})"
               for field, label in (("trt_version", "TensorRT"), ("gpu", "GPU"))
               if meta.get(field) != getattr(expected, field)]
    if foreign:
        return "foreign", f"{engine_path} was built for " + " and ".join(foreign)
    stale = [f"{field} {meta.get(field)!r} != {getattr(expected, field)!r}"
             for field in ("onnx_sha256", "precision", "profile") if meta.get(field) != getattr(expected, field)]
    if stale:
        return "stale", f"{engine_path} is out of date: " + ", ".join(stale)
    broken = engine_integrity(engine_path)
    if broken is not None:
        return "corrupt", broken
    return "ok", ""


def check_engine_compatible(engine_path: Path, trt_version: str, gpu: str) -> None:
    """Raise ``EngineMismatchError`` when the sidecar says another TensorRT version or GPU built it."""
    meta = read_sidecar(engine_path) or {}
    built_trt, built_gpu = meta.get("trt_version"), meta.get("gpu")
    problems = []
    if built_trt is not None and built_trt != trt_version:
        problems.append(f"TensorRT {built_trt} (installed: TensorRT {trt_version})")
    if built_gpu is not None and built_gpu != gpu:
        problems.append(f"GPU {built_gpu!r} (this GPU: {gpu!r})")
    if problems:
        raise EngineMismatchError(
            f"{engine_path} was built with " + " and ".join(problems)
            + "; engines are not portable: rebuild it with `arsel build-engine MODEL --out DIR`"
        )


def onnx_sha256(path: Path) -> str:
    from engine.weights import sha256_file

    return sha256_file(Path(path))


def _is_decoder(onnx_path: Path) -> bool:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return [i.name for i in graph.input] == list(DECODER_INPUTS)


def build_engine(
    onnx_path: Path | str,
    out_dir: Path | str,
    precision: Precision | str = "fp32",
    calib_dir: Path | str | None = None,
    profile: DecoderProfile | None = None,
    workspace_gib: float = 4.0,
    pixel_norm: str = "imagenet",
    on_mismatch: Literal["rebuild", "error"] = "rebuild",
) -> Path:
    """Build (or reuse from ``out_dir``) the TensorRT engine of an encoder or decoder ONNX file.

    ``profile`` applies to decoders (default ``DecoderProfile()``: N 1/2/16, B 1/1/16).
    ``calib_dir``: images for int8 calibration (encoder only), preprocessed with ``pixel_norm``.
    Returns the engine path; its sidecar ``.json`` holds the ``EngineKey``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    trt = import_tensorrt()
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path} does not exist; write it with `arsel export MODEL --out DIR`")
    decoder = _is_decoder(onnx_path)
    if precision == "int8" and (decoder or calib_dir is None):
        raise ValueError("int8 needs the encoder ONNX and --int8 CALIB_DIR (a folder of images); build decoders fp16")
    profile = (profile or DecoderProfile()) if decoder else None
    key = EngineKey(onnx_sha256(onnx_path), trt.__version__, gpu_name(), str(precision), profile.tag if profile else "")
    engine_path = out_dir / key.file_name(onnx_path.stem)
    status, reason = engine_status(engine_path, key)
    if status == "ok":
        return engine_path
    if status == "foreign" and on_mismatch == "error":
        raise EngineMismatchError(reason + "; rebuild it (on_mismatch='rebuild') or delete the file")
    if status == "corrupt":
        from engine.artifacts import warn_rebuild

        warn_rebuild(f"cached TensorRT engine {engine_path.name}", reason)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plan = _build_serialized(trt, onnx_path, out_dir, str(precision), profile, workspace_gib, calib_dir, pixel_norm)
    tmp = engine_path.with_name(f".{engine_path.name}.part")
    tmp.write_bytes(plan)
    tmp.replace(engine_path)  # a reader never sees a half-written engine
    write_sidecar(engine_path, key, onnx_path, time.perf_counter() - t0)
    return engine_path


def _weak_typing(trt: Any) -> bool:
    """TensorRT 10 has the FP16/INT8 builder flags; TensorRT 11 builds strongly typed networks only."""
    return hasattr(trt.BuilderFlag, "FP16")


def _build_serialized(trt: Any, onnx_path: Path, out_dir: Path, precision: str, profile: DecoderProfile | None,
                      workspace_gib: float, calib_dir: Path | str | None, pixel_norm: str) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if precision != "fp32" and not _weak_typing(trt):
        if precision == "int8":
            raise RuntimeError(
                f"TensorRT {trt.__version__} removed implicit INT8 calibration; install tensorrt>=10,<11 "
                "for --int8, or quantize the ONNX with Q/DQ nodes (NVIDIA ModelOpt)")
        onnx_path = _mixed_fp16_copy(onnx_path, out_dir)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name()).strip("-").lower()
    timing_path = out_dir / f"timing_trt{trt.__version__}_{gpu}.cache"
    cache = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(cache, True)  # ignore_mismatch: a foreign cache is ignored, not fatal
    if profile is not None:
        opt_profile = builder.create_optimization_profile()
        lo, opt, hi = profile.shapes("min"), profile.shapes("opt"), profile.shapes("max")
        for i in range(network.num_inputs):
            name = network.get_input(i).name
            if -1 in tuple(network.get_input(i).shape):  # image_embeddings is static
                opt_profile.set_shape(name, lo[name], opt[name], hi[name])
        config.add_optimization_profile(opt_profile)
    if precision in ("fp16", "int8") and _weak_typing(trt):
        config.set_flag(trt.BuilderFlag.FP16)
        _keep_sensitive_layers_fp32(trt, network, config)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        shape = tuple(network.get_input(0).shape)
        config.int8_calibrator = make_calibrator(trt, Path(calib_dir), int(shape[-1]), pixel_norm,  # type: ignore[arg-type]
                                                 out_dir / f"{onnx_path.stem}.calib")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT {trt.__version__} failed to build {onnx_path} ({precision}); see the log above")
    timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def _keep_sensitive_layers_fp32(trt: Any, network: Any, config: Any) -> None:
    """Hold normalisation, softmax, reductions, pow and sqrt in fp32 (fp16 LayerNorm overflows)."""
    L = trt.LayerType
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = layer.type
        sensitive = kind in (L.NORMALIZATION, L.SOFTMAX, L.REDUCE)
        if kind == L.ELEMENTWISE:
            layer.__class__ = trt.IElementWiseLayer
            sensitive = layer.op == trt.ElementWiseOperation.POW
        elif kind == L.UNARY:
            layer.__class__ = trt.IUnaryLayer
            sensitive = layer.op == trt.UnaryOperation.SQRT
        if sensitive and layer.get_output(0).dtype in (trt.float32, trt.float16):  # not on shape tensors
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)


def _mixed_fp16_copy(onnx_path: Path, out_dir: Path) -> Path:
    """Mixed-precision copy of an fp32 ONNX for strongly typed TensorRT (11+), made once per file."""
    import shutil

    from engine.export.onnx_export import convert_fp16

    target = out_dir / f"{onnx_path.stem}_mixed_fp16.onnx"
    if not target.is_file() or target.stat().st_mtime < onnx_path.stat().st_mtime:
        shutil.copyfile(onnx_path, target)
        convert_fp16(target)
    return target


def calibration_images(calib_dir: Path) -> list[Path]:
    """Image files of ``calib_dir`` (sorted); raises ``FileNotFoundError`` when there are none."""
    calib_dir = Path(calib_dir)
    files = sorted(p for p in calib_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if calib_dir.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no calibration images ({', '.join(IMAGE_SUFFIXES)}) in {calib_dir}; "
                                "give a folder of a few hundred frames like those the model will see")
    return files


def make_calibrator(trt: Any, calib_dir: Path, side: int, pixel_norm: str, cache_path: Path) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``engine.transforms.preprocess``-ed images, batch 1."""
    import torch

    from engine.imageio import load_rgb
    from engine.transforms import preprocess

    files = calibration_images(calib_dir)

    class _Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.buffer = torch.empty((1, 3, side, side), dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(files):
                return None
            x, _ = preprocess(load_rgb(files[self.index]), side, pixel_norm)  # type: ignore[arg-type]
            self.buffer.copy_(torch.from_numpy(x))
            torch.cuda.synchronize()
            self.index += 1
            return [int(self.buffer.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            cache_path.write_bytes(bytes(cache))

    return _Calibrator()
