"""``TrtBackend``: the ``Backend`` interface on two TensorRT engines (TensorRT >= 10 named tensors).

Not yet verified on a GPU (its tests are marked ``tensorrt`` and have only skipped here).

At load time the engines' tensor names, dtypes and shapes are checked against ``engine.contract``;
an engine built by another TensorRT version or on another GPU is refused with both versions named.
I/O buffers are torch CUDA tensors allocated once: the decoder's at the profile's maximum shape,
used through views of the first ``B * N`` elements per call (addresses set once). Encoder and
decoder have their own execution context and CUDA stream, so a keyframe encode in a worker thread
does not queue in front of the per-frame decode; each call returns after its stream finished.
"""

from __future__ import annotations

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
)
from trt.build import check_engine_compatible, engine_integrity, gpu_name, import_tensorrt, read_sidecar

# name -> (is_input, expected shape with -1 for a dynamic axis); S is filled in per model.
IoSpec = dict[str, tuple[bool, tuple[int, ...]]]


def expected_io(kind: str, input_size: int) -> IoSpec:
    """Contract I/O of the "encoder" or "decoder" engine (dynamic axes as -1)."""
    emb = (1, EMBED_DIM, *EMBED_HW)
    if kind == "encoder":
        return {ENCODER_INPUT: (True, (1, 3, input_size, input_size)), ENCODER_OUTPUT: (False, emb)}
    return {
        "image_embeddings": (True, emb), "point_coords": (True, (-1, -1, 2)), "point_labels": (True, (-1, -1)),
        "mask_input": (True, (-1, 1, *LOW_RES_HW)), "has_mask_input": (True, (-1,)),
        "iou_predictions": (False, (-1, 4)), "low_res_masks": (False, (-1, 4, *LOW_RES_HW)),
    }


def check_engine_io(actual: dict[str, tuple[bool, str, tuple[int, ...]]], kind: str, input_size: int) -> list[str]:
    """Problems of an engine's I/O ``{name: (is_input, dtype, shape)}`` against the contract (empty: ok)."""
    expected = expected_io(kind, input_size)
    problems = []
    if set(actual) != set(expected):
        problems.append(f"tensors {sorted(actual)}, expected {sorted(expected)}")
    for name, (is_input, shape) in expected.items():
        if name not in actual:
            continue
        got_in, dtype, got_shape = actual[name]
        if got_in != is_input:
            problems.append(f"{name} is an {'input' if got_in else 'output'}, expected the other")
        if dtype != "float32":
            problems.append(f"{name} is {dtype}, expected float32")
        if tuple(got_shape) != shape:
            problems.append(f"{name} has shape {tuple(got_shape)}, expected {shape} (-1 = dynamic)")
    return problems


def _torch() -> Any:
    import torch

    return torch


class _Engine:
    """One deserialized engine with its context, stream and once-allocated flat buffers."""

    def __init__(self, trt: Any, path: Path, kind: str, input_size: int, device: Any) -> None:
        torch = _torch()
        self.path = path
        check_engine_compatible(path, trt.__version__, gpu_name(device.index or 0))
        if isinstance((read_sidecar(path) or {}).get("files"), dict):  # recorded at build time: check it
            broken = engine_integrity(path)
            if broken is not None:
                raise RuntimeError(f"{broken}; rebuild it with `arsel build-engine MODEL --out DIR` (or delete it)")
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # must outlive the engine
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            built = (read_sidecar(path) or {}).get("trt_version", "unknown (no sidecar)")
            raise RuntimeError(
                f"TensorRT {trt.__version__} cannot load {path} (built with TensorRT {built}); "
                "rebuild it with `arsel build-engine MODEL --out DIR`")
        io = self._io(trt)
        problems = check_engine_io(io, kind, input_size)
        if problems:
            raise ValueError(f"{path} ({kind}) does not follow engine.contract: " + "; ".join(problems)
                             + f". Engine TensorRT {(read_sidecar(path) or {}).get('trt_version', '?')}, "
                             f"installed {trt.__version__}; rebuild from `arsel export` ONNX files")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=device)
        self.buffers: dict[str, Any] = {}
        max_b, max_n = self._max_batch_points(kind)
        for name, (_, _, shape) in io.items():
            full = [max_b if d == -1 and i == 0 else max_n if d == -1 else d for i, d in enumerate(shape)]
            self.buffers[name] = torch.empty(int(np.prod(full)), dtype=torch.float32, device=device)
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
        self.max_batch, self.max_points = max_b, max_n

    def _io(self, trt: Any) -> dict[str, tuple[bool, str, tuple[int, ...]]]:
        io = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = {trt.float32: "float32", trt.float16: "float16"}.get(self.engine.get_tensor_dtype(name), "other")
            io[name] = (is_input, dtype, tuple(self.engine.get_tensor_shape(name)))
        return io

    def _max_batch_points(self, kind: str) -> tuple[int, int]:
        if kind == "encoder":
            return 1, 1
        _, _, hi = self.engine.get_tensor_profile_shape("point_coords", 0)
        return int(hi[0]), int(hi[1])

    def view(self, name: str, shape: tuple[int, ...]) -> Any:
        """The first ``prod(shape)`` elements of ``name``'s buffer as a contiguous ``shape`` view."""
        return self.buffers[name][: int(np.prod(shape))].view(shape)

    def run(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {self.path} failed; see the TensorRT log above")


class TrtBackend:
    """Encoder + decoder TensorRT engines (``trt.build.build_engine``) on one CUDA device.

    ``encode``: ``image`` float32 ``(1, 3, S, S)`` numpy or torch -> float32 CUDA tensor
    ``(1, 256, 64, 64)`` (a copy, safe to keep). ``decode``: contract decoder inputs (numpy or torch)
    -> ``(iou (B, 4), low_res (B, 4, 256, 256))`` float32 numpy for any prompt batch B (chunked at
    the profile's maximum); ``decode_tensors`` returns CUDA tensor views instead (valid until the
    next decode) and takes at most ``dec.max_batch`` prompts.
    """

    def __init__(
        self, encoder_engine: Path | str, decoder_engine: Path | str, input_size: int, device: str = "cuda"
    ) -> None:
        trt = import_tensorrt()
        torch = _torch()
        self._trt_version = trt.__version__
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"TrtBackend runs on a CUDA device, got {device!r}")
        self.input_size = int(input_size)
        for path in (encoder_engine, decoder_engine):
            if not Path(path).is_file():
                raise FileNotFoundError(f"{path} does not exist; build it with `arsel build-engine MODEL --out DIR`")
        with torch.cuda.device(self.device):
            self.enc = _Engine(trt, Path(encoder_engine), "encoder", self.input_size, self.device)
            self.dec = _Engine(trt, Path(decoder_engine), "decoder", self.input_size, self.device)
        s = self.input_size
        self._image = self.enc.view(ENCODER_INPUT, (1, 3, s, s))
        self._embedding = self.enc.view(ENCODER_OUTPUT, (1, EMBED_DIM, *EMBED_HW))
        self.enc.context.set_input_shape(ENCODER_INPUT, (1, 3, s, s))
        self.dec.context.set_input_shape("image_embeddings", (1, EMBED_DIM, *EMBED_HW))

    def _tensor(self, a: Any) -> Any:
        torch = _torch()
        if isinstance(a, torch.Tensor):
            return a.to(self.device, torch.float32, non_blocking=True)
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    def encode(self, image: Any) -> Any:
        """``(1, 3, S, S)`` float32 -> CUDA float32 ``(1, 256, 64, 64)`` (a fresh tensor)."""
        torch = _torch()
        s = self.input_size
        self.enc.stream.wait_stream(torch.cuda.current_stream(self.device))
        if tuple(image.shape) != (1, 3, s, s):
            raise ValueError(
                f"image must have shape (1, 3, {s}, {s}), got {tuple(image.shape)}; use engine.transforms.preprocess"
            )
        with torch.cuda.stream(self.enc.stream):
            self._image.copy_(self._tensor(image))
            self.enc.run()
            out = self._embedding.clone()
        self.enc.stream.synchronize()
        return out

    def decode_tensors(self, embedding: Any, point_coords: Any, point_labels: Any, mask_input: Any,
                       has_mask_input: Any) -> tuple[Any, Any]:
        """As ``decode`` but returns CUDA tensor views ``(iou (B, 4), low_res (B, 4, 256, 256))``."""
        torch = _torch()
        b, n = int(point_coords.shape[0]), int(point_coords.shape[1])
        if not (1 <= b <= self.dec.max_batch and 1 <= n <= self.dec.max_points):
            raise ValueError(f"decoder engine takes 1..{self.dec.max_batch} prompts of 1..{self.dec.max_points} "
                             f"points, got B={b}, N={n}; use decode (it splits the batch), or rebuild with a larger "
                             "DecoderProfile for more points")
        shapes = {"point_coords": (b, n, 2), "point_labels": (b, n), "mask_input": (b, 1, *LOW_RES_HW),
                  "has_mask_input": (b,)}
        ctx = self.dec.context
        self.dec.stream.wait_stream(torch.cuda.current_stream(self.device))  # caller's tensors are ready
        with torch.cuda.stream(self.dec.stream):
            emb = self._tensor(embedding)
            if emb.is_cuda and emb.is_contiguous() and tuple(emb.shape) == (1, EMBED_DIM, *EMBED_HW):
                ctx.set_tensor_address("image_embeddings", emb.data_ptr())
            else:
                self.dec.view("image_embeddings", (1, EMBED_DIM, *EMBED_HW)).copy_(emb.view(1, EMBED_DIM, *EMBED_HW))
                ctx.set_tensor_address("image_embeddings", self.dec.buffers["image_embeddings"].data_ptr())
            for name, value in zip(DECODER_INPUTS[1:], (point_coords, point_labels, mask_input, has_mask_input)):
                src = self._tensor(value)
                if tuple(src.shape) != shapes[name]:
                    raise ValueError(
                        f"{name} must have shape {shapes[name]} to match point_coords, got {tuple(src.shape)}"
                    )
                self.dec.view(name, shapes[name]).copy_(src)
                ctx.set_input_shape(name, shapes[name])
            self.dec.run()
            iou = self.dec.view(DECODER_OUTPUTS[0], (b, 4))
            low = self.dec.view(DECODER_OUTPUTS[1], (b, 4, *LOW_RES_HW))
        self.dec.stream.synchronize()
        self._keep = emb  # the engine read it asynchronously; keep it alive until the next call
        return iou, low

    def decode(self, embedding: Any, point_coords: Any, point_labels: Any, mask_input: Any,
               has_mask_input: Any) -> tuple[np.ndarray, np.ndarray]:
        """Contract decoder inputs -> ``(iou (B, 4), low_res (B, 4, 256, 256))`` float32 numpy.

        Any ``B``: batches over the engine profile's maximum (16 from ``trt.build``; segment-
        everything sends 64) run as consecutive chunks (``decode_in_chunks``), the outputs joined.
        """
        return decode_in_chunks(self._decode_host, self.dec.max_batch, embedding, point_coords, point_labels,
                                mask_input, has_mask_input)

    def _decode_host(self, embedding: Any, point_coords: Any, point_labels: Any, mask_input: Any,
                     has_mask_input: Any) -> tuple[np.ndarray, np.ndarray]:
        """One ``decode_tensors`` call, copied to host memory (the views are reused by the next call)."""
        iou, low = self.decode_tensors(embedding, point_coords, point_labels, mask_input, has_mask_input)
        return iou.cpu().numpy(), low.cpu().numpy()

    def describe(self) -> BackendInfo:
        meta = read_sidecar(self.enc.path) or {}
        torch = _torch()
        detail = f"TensorRT {self._trt_version}, {torch.cuda.get_device_name(self.device)}, {self.enc.path.name}"
        return BackendInfo("tensorrt", str(self.device), str(meta.get("precision", "unknown")), detail)
