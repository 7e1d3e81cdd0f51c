"""What the exporters share: tolerances, the decoder's dynamic axes, the TorchScript export call,
the ONNX checker, an ONNX Runtime CPU session and the output-shape fix-up.

``onnx`` and ``onnxruntime`` are imported inside the functions that use them.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "DECODER_DYNAMIC_AXES", "FP16_TOLERANCE", "FP32_OPS", "FP32_TOLERANCE", "ExportError", "check_onnx",
    "declare_output_dims", "ort_session", "torch_to_onnx",
]

FP32_TOLERANCE = 1e-3  # max |onnx - torch|, absolute
FP16_TOLERANCE = 2e-2  # max |onnx - torch| / max |torch| for the fp16 encoder
# Ops kept in float32 in the fp16 encoder (a fully fp16 SAM encoder overflows in LayerNorm).
FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Div", "Erf")

DECODER_DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "point_coords": {0: "B", 1: "N"},
    "point_labels": {0: "B", 1: "N"},
    "mask_input": {0: "B"},
    "has_mask_input": {0: "B"},
    "iou_predictions": {0: "B"},
    "low_res_masks": {0: "B"},
}


class ExportError(RuntimeError):
    """An exported graph is invalid or does not match torch."""


@contextmanager
def _quiet_export() -> Iterator[None]:
    """Hide the TorchScript exporter's deprecation and tracer warnings (shapes are static by design)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        yield


def torch_to_onnx(module: nn.Module, args: tuple[Tensor, ...], path: Path, opset: int, **kw: object) -> None:
    """``torch.onnx.export`` (TorchScript exporter, constant folding, no grad) of ``module`` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_export(), torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            module, args, str(path), opset_version=opset, do_constant_folding=True, dynamo=False, **kw  # type: ignore[arg-type]
        )


def declare_output_dims(path: Path, dims: dict[str, tuple[int | None, ...]]) -> None:
    """Write the outputs' fixed axes into the graph (the tracer leaves ``Reshape`` outputs symbolic).

    ``dims``: output name -> sizes, ``None`` keeping the exported (named, dynamic) axis.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)  # > 2 GB models keep their data files
    for output in model.graph.output:
        for dim, value in zip(output.type.tensor_type.shape.dim, dims[output.name]):
            if value is not None:
                dim.Clear()
                dim.dim_value = value
    onnx.save(model, str(path))


def check_onnx(path: Path) -> None:
    """``onnx.checker.check_model`` on the file (by path, so models over 2 GB work); raises ``ExportError``."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # noqa: BLE001 - checker raises several kinds
        raise ExportError(f"{path} fails onnx.checker: {exc}. Re-export with another --opset.") from exc


def ort_session(path: Path) -> Any:
    """An ONNX Runtime CPU ``InferenceSession`` of ``path`` (onnxruntime is imported here)."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
