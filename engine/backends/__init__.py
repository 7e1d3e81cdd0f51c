"""Runtimes behind one interface: torch (CPU/CUDA), ONNX Runtime, TensorRT (in ``trt/``).

Every backend takes the arrays made by ``engine.transforms`` and returns numpy:
``encode(image (1,3,S,S) float32) -> embedding`` and
``decode(embedding, point_coords, point_labels, mask_input, has_mask_input) -> (scores, low_res_logits)``
with the tensor meanings of ``engine.contract``.
"""

from engine.backends.base import Backend, BackendInfo

__all__ = ["Backend", "BackendInfo"]
