"""ONNX Runtime backend: the encoder and decoder ONNX files of ``engine.export`` behind ``Backend``.

``onnxruntime`` is imported inside ``OrtBackend``, so ``import engine`` works without it. Session
options are tuned for latency on a small CPU: intra-op threads = physical cores, inter-op 1,
sequential execution, all graph optimisations. CUDA (and TensorRT) execution providers are used
when the installed onnxruntime has them and the device asks for CUDA; the embedding then stays
on the GPU between ``encode`` and ``decode`` (I/O binding).

Figures against torch eager and the official code: ``bench/bench_backends.py``
(docs/benchmarks.md). TinyViT's conv stages and MLPs export as channels-first convs so ORT runs
them on its NCHWc kernels (``engine.models.tiny_vit``). ORT_ENABLE_ALL matters (``--variants``
times the basic level); BatchNorm is already folded into the convolutions by the exporter; a
pre-optimised model file is not cached because sessions open in well under a second. When other
work shares the cores, ``threads=1`` or ``spin=False`` can beat the default.

Decoder: prompts without masks (clicks, boxes) run through ``engine.export.no_mask``'s internal pair
when its files lie next to the decoder and record this decoder file's sha256: an image-side graph
once per embedding (cached by value) and a prompt graph without the mask path and the first
block's image-side projections (~0.8x the contract graph's time at 1 thread), whose masks may be
upscaled in a window of image tokens only (``decode(..., roi=...)``, as the eager torch backend;
about half of a decode is the upscaling). Masks, GPUs, older
export folders and pairs from another export (a warning) use the contract decoder. With the
TensorRT execution provider (profile max 16 prompts) larger prompt batches run in chunks.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.backends.base import BackendInfo, decode_in_chunks
from engine.contract import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    EMBED_DIM,
    EMBED_HW,
    ENCODER_INPUT,
    ENCODER_OUTPUT,
    LOW_RES_HW,
    ROI_FILL,
    check_roi,
)
from engine.export.no_mask_files import IMAGE_SIDE_OUTPUTS, NO_MASK_INPUTS, WHOLE_ROI, no_mask_paths, pair_is_current
from engine.threads import physical_cores

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
# The TensorRT execution provider's decoder profile (as trt.build's DecoderProfile): prompts and
# points per prompt 1..16. ``OrtBackend.decode`` splits larger prompt batches into chunks.
TRT_EP_MAX_BATCH = 16
TRT_EP_MAX_POINTS = 16


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "the onnxruntime backend needs onnxruntime: pip install onnxruntime (CPU) or "
            "onnxruntime-gpu (CUDA); or use backend='torch'"
        ) from None
    return onnxruntime


def default_providers(device: str = "cpu") -> list[str]:
    """Execution providers for ``device``: GPU ones first where installed and asked for, then CPU."""
    ort = _import_ort()
    available = ort.get_available_providers()
    chosen = [p for p in _GPU_PROVIDERS if p in available] if device.startswith("cuda") else []
    return [*chosen, "CPUExecutionProvider"]


def check_decoder_arrays(
    point_coords: np.ndarray, point_labels: np.ndarray, mask_input: np.ndarray, has_mask_input: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate decoder prompt arrays against ``engine.contract``; returns them float32 C-contiguous.

    ``point_coords (B, N, 2)``, ``point_labels (B, N)``, ``mask_input (B, 1, 256, 256)``,
    ``has_mask_input (B,)``. Raises ``ValueError`` naming the expected and actual shapes.
    """
    arrays = (point_coords, point_labels, mask_input, has_mask_input)
    pc, pl, mi, hm = (np.ascontiguousarray(a, dtype=np.float32) for a in arrays)
    if pc.ndim != 3 or pc.shape[2] != 2 or pc.shape[1] < 1:
        raise ValueError(
            f"point_coords must be (B, N, 2) with N >= 1, got {pc.shape}; build prompts with engine.prompts"
        )
    b, n = pc.shape[:2]
    expected = {"point_labels": (pl, (b, n)), "mask_input": (mi, (b, 1, *LOW_RES_HW)), "has_mask_input": (hm, (b,))}
    for name, (arr, shape) in expected.items():
        if arr.shape != shape:
            raise ValueError(f"{name} must have shape {shape} to match point_coords {pc.shape}, got {arr.shape}")
    return pc, pl, mi, hm


class OrtBackend:
    """Encoder + decoder ONNX files in ONNX Runtime (numpy in, numpy out).

    ``encode``: ``image`` float32 ``(1, 3, S, S)`` -> embedding float32 ``(1, 256, 64, 64)`` (numpy
    on CPU; an ``OrtValue`` on the GPU with CUDA providers). ``decode``: contract decoder inputs ->
    ``(scores (B, 4), low_res_logits (B, 4, 256, 256))`` float32 numpy.
    ``providers``: ONNX Runtime execution providers (default: ``default_providers(device)``).
    ``threads``: intra-op threads (default: physical cores). ``spin``: let idle pool threads
    spin-wait (lowest latency on an idle machine; turn off when other work shares the cores).
    ``no_mask_graphs``: on CPU, when ``engine.export.no_mask``'s pair lies next to the
    decoder (``{decoder}_image_side.onnx``, ``{decoder}_no_mask.onnx``), prompts without masks run
    through it: the image side once per embedding (cached by value), then a smaller prompt graph.
    Results equal the contract decoder's up to float rounding.
    """

    def __init__(
        self,
        encoder_onnx: Path | str,
        decoder_onnx: Path | str,
        input_size: int,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        device: str = "cpu",
        spin: bool = True,
        no_mask_graphs: bool = True,
    ) -> None:
        ort = _import_ort()
        for path in (encoder_onnx, decoder_onnx):
            if not Path(path).is_file():
                raise FileNotFoundError(f"{path} does not exist; write it with `arsel export MODEL --out DIR`")
        self.input_size = int(input_size)
        self.threads = int(threads) if threads else physical_cores()
        self.providers = list(providers) if providers else default_providers(device)
        self.encoder_path, self.decoder_path = Path(encoder_onnx), Path(decoder_onnx)
        self._ort = ort
        self.encoder = self._session(self.encoder_path, spin)
        self.decoder = self._session(self.decoder_path, spin)
        self._check_io()
        self.on_gpu = self.encoder.get_providers()[0] in _GPU_PROVIDERS
        # Prompts per decoder run: the TensorRT EP's profile caps it; other providers take any batch.
        trt_ep = "TensorrtExecutionProvider" in self.decoder.get_providers()
        self.max_batch: int | None = TRT_EP_MAX_BATCH if trt_ep else None
        self._no_mask = self._no_mask_sessions(spin) if no_mask_graphs and not self.on_gpu else None
        self._side_cache: tuple[np.ndarray, list[np.ndarray]] | None = None  # (a copy, side): writeable embeddings
        self._frozen_sides: dict[int, tuple[weakref.ref, list[np.ndarray]]] = {}  # id -> (frozen embedding, side)
        self.device = f"cuda:{self._device_id()}" if self.on_gpu else "cpu"
        self._precision = _onnx_precision(self.encoder_path)

    def _no_mask_sessions(self, spin: bool) -> tuple[Any, Any] | None:
        """The pair's ``(image side, prompt)`` sessions, or None: no pair files (quietly), or a pair
        that is not from this decoder's export (a warning; the contract decoder runs instead)."""
        paths = no_mask_paths(self.decoder_path)
        if not all(p.is_file() for p in paths):
            return None
        side, prompt = (self._session(p, spin) for p in paths)
        names_ok = [o.name for o in side.get_outputs()] == list(IMAGE_SIDE_OUTPUTS) and (
            [i.name for i in prompt.get_inputs()] == list(NO_MASK_INPUTS)
            and [o.name for o in prompt.get_outputs()] == list(DECODER_OUTPUTS)
        )
        metadata = [s.get_modelmeta().custom_metadata_map for s in (side, prompt)]
        if not (names_ok and pair_is_current(self.decoder_path, metadata)):
            warnings.warn(
                f"ignoring the no-mask decoder pair next to {self.decoder_path}: it was not exported with this "
                "decoder file (another export or version), so every prompt runs the contract decoder (same "
                f"results, slower for clicks and boxes). Delete {paths[0].name} and {paths[1].name}, or "
                "re-export the model with `arsel export MODEL --out DIR`, to restore the fast path.",
                stacklevel=3,
            )
            return None
        return side, prompt

    def prepare_image_side(self, embedding: Any) -> None:
        """Compute and keep ``embedding``'s no-mask image side now, so the first decode on it does
        not pay for it (a stream's keyframe encoder calls this on its own thread right after
        ``encode``). A no-op on the GPU or without the no-mask pair."""
        if self._no_mask is not None and not self.on_gpu:
            self._image_side(_embedding_array(embedding))

    def _image_side(self, embedding: np.ndarray) -> list[np.ndarray]:
        """The no-mask image side of ``embedding``, computed once per embedding.

        A frozen embedding (read-only, its memory its own or ONNX Runtime's, as ``encode`` returns)
        is trusted by identity: its side is kept for as long as the embedding lives elsewhere (a
        weak reference; at most ``MAX_FROZEN_SIDES``, oldest out first), so sessions that share this
        backend and decode on their own keyframes in turn each compute theirs once. Any other array
        is compared by value with the one kept copy (recomputed when its values changed).
        """
        key, frozen = id(embedding), _frozen(embedding)
        entry = self._frozen_sides.get(key)
        if frozen and entry is not None and entry[0]() is embedding:
            return entry[1]
        if not frozen:
            if entry is not None:  # thawed since: no longer trusted by identity
                self._frozen_sides.pop(key, None)
            cached = self._side_cache
            if cached is not None and np.array_equal(cached[0], embedding):
                return cached[1]
        side = self._no_mask[0].run(list(IMAGE_SIDE_OUTPUTS), {DECODER_INPUTS[0]: embedding})
        if not frozen:
            self._side_cache = (embedding.copy(), side)
            return side
        sides = self._frozen_sides  # (a dead embedding's callback, on any thread, pops its own entry)
        for old in list(sides)[:max(0, len(sides) - MAX_FROZEN_SIDES + 1)]:  # list(): one atomic copy
            sides.pop(old, None)
        sides[key] = (weakref.ref(embedding, lambda _ref, k=key: sides.pop(k, None)), side)
        return side

    def _device_id(self) -> int:
        opts = self.encoder.get_provider_options().get(self.encoder.get_providers()[0], {})
        return int(opts.get("device_id", 0))

    def _session(self, path: Path, spin: bool) -> Any:
        ort = self._ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        provider_options = [self._provider_options(p, path) for p in self.providers]
        return ort.InferenceSession(str(path), so, providers=self.providers, provider_options=provider_options)

    @staticmethod
    def _provider_options(provider: str, path: Path) -> dict[str, str]:
        if provider != "TensorrtExecutionProvider":
            return {}
        options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(path.parent / "ort_trt_cache")}
        if "decoder" in path.name:  # prompt batch 1..16, points 1..16 (as trt.build's profile)
            lo, opt, hi = ((1, 1), (1, 2), (TRT_EP_MAX_BATCH, TRT_EP_MAX_POINTS))
            options.update({
                "trt_profile_min_shapes": _shapes(*lo), "trt_profile_opt_shapes": _shapes(*opt),
                "trt_profile_max_shapes": _shapes(*hi),
            })
        return options

    def _check_io(self) -> None:
        enc_in = [i.name for i in self.encoder.get_inputs()]
        enc_out = [o.name for o in self.encoder.get_outputs()]
        dec_in = [i.name for i in self.decoder.get_inputs()]
        dec_out = [o.name for o in self.decoder.get_outputs()]
        problems = []
        if enc_in != [ENCODER_INPUT] or enc_out != [ENCODER_OUTPUT]:
            problems.append(
                f"encoder {self.encoder_path} has {enc_in} -> {enc_out}, "
                f"expected [{ENCODER_INPUT!r}] -> [{ENCODER_OUTPUT!r}]"
            )
        if dec_in != list(DECODER_INPUTS) or dec_out != list(DECODER_OUTPUTS):
            problems.append(
                f"decoder {self.decoder_path} has {dec_in} -> {dec_out}, "
                f"expected {list(DECODER_INPUTS)} -> {list(DECODER_OUTPUTS)}"
            )
        shape = self.encoder.get_inputs()[0].shape
        if not problems and list(shape) != [1, 3, self.input_size, self.input_size]:
            s = self.input_size
            problems.append(f"encoder input is {shape}, expected [1, 3, {s}, {s}] (a model of another input size?)")
        if problems:
            raise ValueError("; ".join(problems) + ". Re-export the model with `arsel export MODEL --out DIR`.")

    def encode(self, image: np.ndarray) -> Any:
        """``(1, 3, S, S)`` float32 -> embedding ``(1, 256, 64, 64)`` float32 (read-only numpy, or GPU
        ``OrtValue``). Read-only so the no-mask image-side cache can trust it by identity."""
        x = np.ascontiguousarray(image, dtype=np.float32)
        s = self.input_size
        if x.shape != (1, 3, s, s):
            raise ValueError(f"image must have shape (1, 3, {s}, {s}), got {x.shape}; use engine.transforms.preprocess")
        if not self.on_gpu:
            embedding = self.encoder.run([ENCODER_OUTPUT], {ENCODER_INPUT: x})[0]
            embedding.flags.writeable = False
            return embedding
        binding = self.encoder.io_binding()
        binding.bind_cpu_input(ENCODER_INPUT, x)
        binding.bind_output(ENCODER_OUTPUT, "cuda", self._device_id())
        self.encoder.run_with_iobinding(binding)
        return binding.get_outputs()[0]

    def decode(
        self,
        embedding: Any,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
        roi: tuple[int, int, int, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Contract decoder inputs -> ``(scores (B, 4), low_res_logits (B, 4, 256, 256))`` float32 numpy.

        With the TensorRT execution provider (profile max ``TRT_EP_MAX_BATCH`` prompts) larger
        batches run as consecutive chunks (``decode_in_chunks``); other providers take any B.
        ``roi`` (where ``supports_roi``): image-token window ``(row0, row1, col0, col1)``; the masks
        are exact inside it and ``ROI_FILL`` outside (prompts without masks upscale the window only).
        """
        prompts = check_decoder_arrays(point_coords, point_labels, mask_input, has_mask_input)
        if roi is not None:
            if not self.supports_roi:
                raise ValueError("this OrtBackend decodes whole masks only (no CPU no-mask decoder pair); pass roi=None")
            roi = check_roi(roi, EMBED_HW)
        if self.max_batch is not None and prompts[0].shape[0] > self.max_batch:
            return decode_in_chunks(self._decode_checked, self.max_batch, embedding, *prompts)
        return self._decode_checked(embedding, *prompts, roi=roi)

    @property
    def supports_roi(self) -> bool:
        """Whether ``decode`` takes an upscaling window: on the CPU with the no-mask pair."""
        return self._no_mask is not None

    def _decode_checked(self, embedding: Any, *prompts: np.ndarray,
                        roi: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``decode`` of checked float32 prompt arrays (one runtime call)."""
        if self.on_gpu:
            return self._decode_bound(embedding, prompts)
        emb = _embedding_array(embedding)
        if self._no_mask is not None and not prompts[3].any():
            feeds = dict(zip(IMAGE_SIDE_OUTPUTS, self._image_side(emb)))
            feeds.update(point_coords=prompts[0], point_labels=prompts[1],
                         roi=np.asarray(WHOLE_ROI if roi is None else roi, np.int64))
            iou, low = self._no_mask[1].run(list(DECODER_OUTPUTS), feeds)
            return iou, low if roi is None else _in_window(low, roi)
        feeds = dict(zip(DECODER_INPUTS, (emb, *prompts)))
        iou, low = self.decoder.run(list(DECODER_OUTPUTS), feeds)
        if roi is not None:  # whole masks from the mask path: the same window semantics
            r0, r1, c0, c1 = (4 * v for v in roi)
            low = _in_window(low[..., r0:r1, c0:c1], roi)
        return iou, low

    def _decode_bound(self, embedding: Any, prompts: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
        binding = self.decoder.io_binding()
        if isinstance(embedding, self._ort.OrtValue):
            binding.bind_ortvalue_input(DECODER_INPUTS[0], embedding)
        else:
            binding.bind_cpu_input(DECODER_INPUTS[0], _embedding_array(embedding))
        for name, arr in zip(DECODER_INPUTS[1:], prompts):
            binding.bind_cpu_input(name, arr)
        for name in DECODER_OUTPUTS:
            binding.bind_output(name, "cpu")
        self.decoder.run_with_iobinding(binding)
        iou, low = binding.copy_outputs_to_cpu()
        return iou, low

    def describe(self) -> BackendInfo:
        used = self.encoder.get_providers()[0].removesuffix("ExecutionProvider")
        detail = f"onnxruntime {self._ort.__version__}, {used}, {self.threads} threads, {self.encoder_path.name}"
        return BackendInfo("onnxruntime", self.device, self._precision, detail)


MAX_FROZEN_SIDES = 16  # image sides kept for live frozen embeddings (16 MB each for SAM-family decoders)


def _in_window(window: np.ndarray, roi: tuple[int, int, int, int]) -> np.ndarray:
    """Masks ``(B, T, 4 (row1 - row0), 4 (col1 - col0))`` of the token window ``roi`` placed in a
    ``ROI_FILL`` canvas ``(B, T, 256, 256)``."""
    r0, r1, c0, c1 = (4 * v for v in roi)
    out = np.full((*window.shape[:2], *LOW_RES_HW), ROI_FILL, np.float32)
    out[..., r0:r1, c0:c1] = window
    return out


def _shapes(b: int, n: int) -> str:
    h, w = EMBED_HW
    lh, lw = LOW_RES_HW
    return (f"image_embeddings:1x{EMBED_DIM}x{h}x{w},point_coords:{b}x{n}x2,point_labels:{b}x{n},"
            f"mask_input:{b}x1x{lh}x{lw},has_mask_input:{b}")


def _frozen(arr: np.ndarray) -> bool:
    """Read-only, and its memory owned by itself or by an ONNX Runtime result (a capsule), so no
    other array can change its values."""
    return not arr.flags.writeable and (arr.base is None or type(arr.base).__name__ == "PyCapsule")


def _embedding_array(embedding: Any) -> np.ndarray:
    """An embedding from any backend (numpy, torch tensor, ``OrtValue``) as float32 ``(1, 256, 64, 64)``."""
    if hasattr(embedding, "numpy") and callable(embedding.numpy):
        if hasattr(embedding, "detach"):  # torch tensor
            embedding = embedding.detach().float().cpu()
        embedding = embedding.numpy()
    arr = np.ascontiguousarray(embedding, dtype=np.float32)
    if arr.shape != (1, EMBED_DIM, *EMBED_HW):
        raise ValueError(f"embedding must have shape (1, {EMBED_DIM}, {EMBED_HW[0]}, {EMBED_HW[1]}), got {arr.shape}")
    return arr


def _onnx_precision(path: Path) -> str:
    """"fp16" when the graph holds float16 initializers, else "fp32" (reads no external data)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    f16 = onnx.TensorProto.FLOAT16
    return "fp16" if any(t.data_type == f16 for t in model.graph.initializer) else "fp32"
