"""torch backend: CPU, or CUDA with fp16/bf16 autocast, channels-last, CUDA graphs and ``torch.compile``.

Options (``TorchOptions``; ``create_backend(..., torch_options=...)`` passes them through):

The CUDA paths (fp16/bf16 autocast, CUDA graphs, compile on CUDA) are not yet verified on a GPU:
their tests are marked ``gpu`` and have only ever skipped here (no GPU).

* ``precision``: "fp32", or "fp16"/"bf16" autocast (CUDA only).
* ``channels_last``: the image encoder's convolutions in NHWC. ``None`` = on for CUDA (tensor-core
  convs want NHWC), off on CPU: no gain there in interleaved runs (``bench_backends.py
  --torch-options``), and NHWC changes rounding by ~1e-5 against the parity references.
  (TinyViT already runs its convs channels-last internally, ``Conv2dBN.forward_cl``; the option
  matters most for ViT's patch embedding and neck, and for the stem.)
* ``cuda_graphs``: replay the decoder as one CUDA graph per prompt shape (B prompts, N points),
  with an LRU of ``max_graphs`` captured shapes, and the encoder (fixed ``1x3xSxS``) as one graph.
* ``compile``: ``torch.compile`` the encoder and the decoder, compiled on first use; True means
  mode "default". On CPU inductor needs a C++ compiler; without one the backend warns and runs
  eager. Every compiled call is guarded: when one fails (compiling, or a later recompile), that
  part warns once and runs eager from then on; ``describe()`` names the parts that fell back.
  With "reduce-overhead" or "max-autotune" the compiled encoder's output lives in CUDA-graph-tree
  memory that the next compiled call overwrites, so a compiled ``encode`` returns a clone (as with
  ``cuda_graphs``). On CPU it is slower than eager (compiling takes minutes, and the traced
  decoder has no image-side cache and always runs the mask convs; ``bench_backends.py
  --torch-options``): it is for CUDA.
"""

from __future__ import annotations

import os
import shutil
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from engine.backends.base import BackendInfo
from engine.models.sam import SamModel, check_decoder_inputs

PRECISIONS = ("fp32", "fp16", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_WARMUP_RUNS = 3  # side-stream runs before a capture (PyTorch's CUDA graph recipe)


@dataclass(frozen=True, slots=True)
class TorchOptions:
    """How ``TorchBackend`` runs a model; see the module docstring. Checked by ``validate``."""

    precision: str = "fp32"
    channels_last: bool | None = None
    cuda_graphs: bool = False
    compile: bool | str = False
    max_graphs: int = 4

    def validate(self, device: torch.device) -> None:
        """Raise ``ValueError`` for an option, or a combination, that cannot run on ``device``."""
        cuda = device.type == "cuda"
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.precision != "fp32" and not cuda:
            raise ValueError(f"precision {self.precision} needs a CUDA device; use precision='fp32' on {device}")
        if self.channels_last not in (None, True, False):
            raise ValueError(f"channels_last must be True, False or None (auto), got {self.channels_last!r}")
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be True or False, got {self.cuda_graphs!r}")
        if self.cuda_graphs and not cuda:
            raise ValueError(
                f"cuda_graphs=True needs a CUDA device, got device={str(device)!r}; CUDA graphs replay GPU "
                "kernels only, so drop the option on CPU (or pass device='cuda')"
            )
        if not isinstance(self.compile, bool) and self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be True, False or a mode in {COMPILE_MODES}, got {self.compile!r}")
        if self.compile is not False and self.cuda_graphs:
            raise ValueError(
                "compile and cuda_graphs cannot be combined: use compile='reduce-overhead' for compiled "
                "kernels replayed as CUDA graphs, or cuda_graphs=True for eager kernels in CUDA graphs"
            )
        if self.compile == "reduce-overhead" and not cuda:
            raise ValueError(
                "compile='reduce-overhead' means CUDA graphs and needs a CUDA device; on CPU use "
                "compile=True or compile='max-autotune-no-cudagraphs'"
            )
        if isinstance(self.max_graphs, bool) or not isinstance(self.max_graphs, int) or self.max_graphs < 1:
            raise ValueError(f"max_graphs must be an int >= 1 (captured decoder shapes kept), got {self.max_graphs!r}")

    @property
    def compile_mode(self) -> str | None:
        """The ``torch.compile`` mode, or None when compiling is off."""
        if self.compile is False:
            return None
        return "default" if self.compile is True else str(self.compile)


def cpp_compiler() -> str | None:
    """Path of the C++ compiler inductor would use on CPU (``$CXX``, g++, clang++, c++), or None."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else []
    for name in [*names, "g++", "clang++", "c++"]:
        path = shutil.which(name)
        if path:
            return path
    return None


def graph_safe_decode(model: SamModel, embedding: Tensor, coords: Tensor, labels: Tensor, mask: Tensor,
                      has_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``model.forward`` without host syncs or eager caches, for CUDA-graph capture.

    Same inputs/outputs as ``SamModel.decode``. The eager model skips the mask convs after reading
    ``has_mask_input.any()`` and reuses the image side of an embedding after comparing it with
    ``torch.equal``; both read the device (illegal while capturing), and a cache hit would bake the
    warm-up embedding into the graph. Here the mask is always blended (the ONNX formulation), and
    grad mode is on so ``engine.models.common.can_cache`` refuses the caches; under
    ``inference_mode`` nothing is recorded for autograd.
    """
    pe = model.prompt_encoder
    with torch.enable_grad():
        sparse = pe.embed_points(coords, labels)
        has = has_mask.reshape(-1, 1, 1, 1)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has * pe.mask_downscaling(mask) + (1 - has) * no_mask
        return model.mask_decoder(
            image_embeddings=embedding, image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
        )


@dataclass(slots=True)
class _Graph:
    """One captured CUDA graph with its static device inputs and outputs (and pinned host copies)."""

    graph: Any  # torch.cuda.CUDAGraph
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    host_inputs: tuple[Tensor, ...] = ()
    host_outputs: tuple[Tensor, ...] = ()
    uploaded: Any = None  # torch.cuda.Event after the last pinned -> device copy (pinned reuse waits on it)


def capture(fn: Callable[..., tuple[Tensor, ...]], inputs: tuple[Tensor, ...], context: Callable[[], Any]) -> _Graph:
    """Capture ``fn(*inputs)`` (static device tensors) into a CUDA graph; ``context()`` wraps each call.

    Warm-up runs on a side stream first (lazy cuBLAS/cuDNN init, autotuning), as in PyTorch's
    "CUDA Graphs" recipe; the graph gets a private memory pool. The capture is "thread_local": the
    stream engine encodes keyframes on a background thread, whose CUDA calls must not void it.
    """
    device = inputs[0].device
    with torch.cuda.device(device):
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(_WARMUP_RUNS):
                with context():
                    fn(*inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"), context():
            outputs = fn(*inputs)
    return _Graph(graph, inputs, tuple(outputs))


class TorchBackend:
    """Runs a ``SamModel`` in torch on ``device`` ("cpu", "cuda[:N]") with ``TorchOptions``.

    ``encode`` returns a float32 ``(1, 256, 64, 64)`` tensor on the device (its own memory, also
    with CUDA graphs); ``decode`` takes it, or a numpy array, with the contract's prompt arrays.
    ``supports_roi``: ``decode`` honours an upscaling window (eager runs; CUDA graphs and compiled
    decoders have one fixed graph and decode whole masks).
    """

    def __init__(
        self,
        model: SamModel,
        input_size: int,
        device: str = "cpu",
        precision: str = "fp32",
        *,
        channels_last: bool | None = None,
        cuda_graphs: bool = False,
        compile: bool | str = False,  # noqa: A002 - the option's name in the issue and the CLI
        max_graphs: int = 4,
    ) -> None:
        self.device = torch.device(device)
        self.options = TorchOptions(precision, channels_last, cuda_graphs, compile, max_graphs)
        self.options.validate(self.device)
        if self.options.compile_mode and self.device.type == "cpu" and cpp_compiler() is None:
            warnings.warn(
                "compile=True on CPU needs a C++ compiler for torch.compile (inductor), and none was found "
                "($CXX, g++, clang++, c++); running eager. Install g++ or set CXX to use it.",
                stacklevel=2,
            )
            self.options = TorchOptions(precision, channels_last, cuda_graphs, False, max_graphs)
        self.model = model.to(self.device).eval()
        self.input_size = input_size
        self.precision = precision
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.channels_last = self.device.type == "cuda" if channels_last is None else channels_last
        if self.channels_last:
            self.model.image_encoder.to(memory_format=torch.channels_last)
        self._compiled: dict[str, Callable[..., Any]] = {}  # part -> torch.compile'd callable, made on first use
        self._compile_failed: dict[str, str] = {}  # part -> why it runs eager (the first failure)
        self._encoder_graph: _Graph | None = None
        self._decoder_graphs: OrderedDict[tuple[int, int], _Graph] = OrderedDict()
        self._embedding_buffer: Tensor | None = None  # shared static embedding input of all decoder graphs
        self._capture_lock = threading.Lock()  # one capture at a time (encoder thread + decoder thread)

    # --- helpers ------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        if self._dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        # The autocast weight-cast cache must be off while capturing CUDA graphs.
        return torch.autocast(self.device.type, dtype=self._dtype, cache_enabled=not self.options.cuda_graphs)

    def _encode_eager(self, x: Tensor) -> Tensor:
        return self.model.image_encoder(x).float()

    def _compiled_call(self, part: str, eager: Callable[..., Any], *args: Tensor) -> Any:
        """The compiled ``part`` ("encoder"/"decoder") on ``args`` (compiled on first use), or None
        when the part runs eager: every call is guarded, and after the first failure (compile or a
        later recompile) the part warns once and stays eager (``describe`` reports it)."""
        if part in self._compile_failed:
            return None
        compiled = self._compiled.get(part)
        if compiled is None:
            compiled = self._compiled[part] = torch.compile(eager, mode=self.options.compile_mode)
        try:
            with self._autocast():
                return compiled(*args)
        except Exception as exc:  # noqa: BLE001 - inductor/triton fail in many ways; eager still works
            reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
            self._compile_failed[part] = reason
            warnings.warn(
                f"torch.compile of the {part} failed ({reason}); running it eager from now on. "
                "Check the C++ compiler (CPU) or triton (CUDA), or pass compile=False.",
                stacklevel=3,
            )
            return None

    def _check_image(self, image: np.ndarray) -> None:
        s = self.input_size
        if getattr(image, "shape", None) != (1, 3, s, s):
            raise ValueError(
                f"image must be a float32 array of shape (1, 3, {s}, {s}), got {getattr(image, 'shape', type(image))}; "
                "use engine.transforms.preprocess"
            )

    # --- encoder ------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> Tensor:
        """``(1, 3, S, S)`` float32 -> float32 ``(1, 256, 64, 64)`` contiguous torch tensor on the device."""
        self._check_image(image)
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        if self.options.cuda_graphs:
            return self._encode_graph(x)
        x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self._compiled_call("encoder", self._encode_eager, x) if self.options.compile_mode else None
        if out is None:
            with self._autocast():
                out = self._encode_eager(x)
        else:
            # compiled: "reduce-overhead" and "max-autotune" run CUDA graph trees whose next call
            # overwrites this output memory, and the stream engine keeps several keyframes'
            # embeddings, so every compiled encode hands out a copy (as _encode_graph does; 4 MiB)
            return out.clone(memory_format=torch.contiguous_format)
        return out.contiguous()

    def _encode_graph(self, x: Tensor) -> Tensor:
        """Encoder as one CUDA graph: host ``x`` -> pinned -> static input; the output is cloned
        (the stream engine keeps embeddings of several keyframes, so none may alias the static buffer)."""
        g = self._ensure_encoder_graph(tuple(x.shape))
        g.uploaded.synchronize()  # the previous upload may still be queued behind earlier GPU work
        g.host_inputs[0].copy_(x)
        g.inputs[0].copy_(g.host_inputs[0], non_blocking=True)
        g.uploaded.record()
        g.graph.replay()
        return g.outputs[0].clone(memory_format=torch.contiguous_format)

    def _ensure_encoder_graph(self, shape: tuple[int, ...]) -> _Graph:
        """The encoder graph, captured once even when several threads encode the first image
        (double-checked locking: the stream engine's worker thread and the caller may race)."""
        g = self._encoder_graph
        if g is None:
            with self._capture_lock:
                g = self._encoder_graph
                if g is None:
                    g = self._encoder_graph = self._capture_encoder(shape)
        return g

    def _capture_encoder(self, shape: tuple[int, ...]) -> _Graph:
        """Capture the encoder for input ``shape`` (hold ``_capture_lock``)."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        static = torch.zeros(shape, device=self.device)  # NCHW, as the pinned copy; NHWC in the graph
        g = capture(lambda t: (self._encode_eager(t.contiguous(memory_format=fmt)),), (static,), self._autocast)
        g.host_inputs, g.uploaded = (torch.empty(shape, pin_memory=True),), torch.cuda.Event()
        return g

    # --- decoder ------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(
        self,
        embedding: Any,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
        roi: tuple[int, int, int, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decoder inputs of ``engine.contract`` -> ``(scores (B, 4), low_res_logits (B, 4, 256, 256))`` float32 numpy.

        ``embedding``: ``encode``'s tensor or a float32 numpy ``(1, 256, 64, 64)``; ``point_coords``
        ``(B, N, 2)``, ``point_labels`` ``(B, N)``, ``mask_input`` ``(B, 1, 256, 256)``,
        ``has_mask_input`` ``(B,)``, float32. Inputs are checked on the host (no device sync).
        ``roi``: image-token window ``(row0, row1, col0, col1)`` to upscale the masks in (see
        ``MaskDecoder.forward``); honoured only where ``supports_roi``, else whole masks.
        """
        emb = embedding.to(self.device, torch.float32) if isinstance(embedding, Tensor) else torch.from_numpy(
            np.ascontiguousarray(embedding, dtype=np.float32)).to(self.device)
        prompts = tuple(
            a.detach().cpu().float() if isinstance(a, Tensor) else torch.from_numpy(np.ascontiguousarray(a, np.float32))
            for a in (point_coords, point_labels, mask_input, has_mask_input)
        )
        pe = self.model.prompt_encoder
        check_decoder_inputs(emb, *prompts, embed_dim=pe.embed_dim, embed_hw=pe.image_embedding_size)
        if self.options.cuda_graphs:
            return self._decode_graph(emb, prompts)
        args = (emb, *(p.to(self.device) for p in prompts))
        out = self._compiled_call("decoder", self.model.forward, *args) if self.options.compile_mode else None
        if out is None:
            with self._autocast():
                out = self.model.forward(*args, roi=roi if self.supports_roi else None)
        iou, low = out
        return iou.float().cpu().numpy(), low.float().cpu().numpy()

    @property
    def supports_roi(self) -> bool:
        return not (self.options.cuda_graphs or self.options.compile_mode)

    def _decoder_graph(self, emb: Tensor, prompts: tuple[Tensor, ...]) -> _Graph:
        """The captured graph for this prompt shape (B, N), capturing it on a miss (LRU of ``max_graphs``)."""
        key = (int(prompts[0].shape[0]), int(prompts[0].shape[1]))
        g = self._decoder_graphs.get(key)
        if g is not None:
            self._decoder_graphs.move_to_end(key)
            return g
        if self._embedding_buffer is None or self._embedding_buffer.shape != emb.shape:
            self._decoder_graphs.clear()  # graphs read the old buffer
            self._embedding_buffer = torch.empty_like(emb, memory_format=torch.contiguous_format)
        self._embedding_buffer.copy_(emb)
        static = (self._embedding_buffer, *(torch.zeros(p.shape, device=self.device) for p in prompts))
        for s, p in zip(static[1:], prompts):
            s.copy_(p)  # realistic values for the warm-up runs
        with self._capture_lock:
            g = capture(lambda *a: tuple(t.float() for t in graph_safe_decode(self.model, *a)), static, self._autocast)
        g.host_inputs = tuple(torch.empty(p.shape, pin_memory=True) for p in prompts)
        g.host_outputs = tuple(torch.empty(o.shape, pin_memory=True) for o in g.outputs)
        self._decoder_graphs[key] = g
        if len(self._decoder_graphs) > self.options.max_graphs:
            self._decoder_graphs.popitem(last=False)  # its pool is freed with it
        return g

    def _decode_graph(self, emb: Tensor, prompts: tuple[Tensor, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Replay the decoder graph of this shape: copy the embedding into the shared static buffer
        (4 MiB device-to-device, a few µs next to the replay; the stream engine swaps embeddings
        per keyframe, so a graph never captures one embedding's address), prompts via pinned memory."""
        g = self._decoder_graph(emb, prompts)
        self._embedding_buffer.copy_(emb)  # type: ignore[union-attr]
        for host, static, p in zip(g.host_inputs, g.inputs[1:], prompts):
            host.copy_(p)
            static.copy_(host, non_blocking=True)
        g.graph.replay()
        for host, out in zip(g.host_outputs, g.outputs):
            host.copy_(out, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        iou, low = (h.numpy().copy() for h in g.host_outputs)
        return iou, low

    def describe(self) -> BackendInfo:
        """Runtime, device, precision; ``detail`` names the torch version and the options in effect,
        including parts that run eager after a compile failure."""
        o = self.options
        compile_ = o.compile_mode or "off"
        if self._compile_failed:
            eager = ", ".join(f"{part} eager after a failure ({why})" for part, why in self._compile_failed.items())
            compile_ = f"{compile_} ({eager})"
        detail = (
            f"torch {torch.__version__}; channels_last={'on' if self.channels_last else 'off'}; "
            f"cuda_graphs={'on' if o.cuda_graphs else 'off'}; compile={compile_}"
        )
        return BackendInfo("torch", str(self.device), self.precision, detail)


__all__ = ["COMPILE_MODES", "PRECISIONS", "TorchBackend", "TorchOptions", "cpp_compiler", "graph_safe_decode"]
