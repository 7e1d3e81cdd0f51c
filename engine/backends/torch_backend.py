"""torch backend (CPU, or CUDA with fp16/bf16 autocast)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from engine.backends.base import BackendInfo
from engine.models.sam import SamModel


class TorchBackend:
    """Runs a ``SamModel`` in torch. ``precision`` is "fp32", or "fp16"/"bf16" (autocast, CUDA only)."""

    def __init__(self, model: SamModel, input_size: int, device: str = "cpu", precision: str = "fp32") -> None:
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
        if precision != "fp32" and not device.startswith("cuda"):
            raise ValueError(f"precision {precision} needs a CUDA device; use precision='fp32' on {device}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.input_size = input_size
        self.precision = precision
        self._dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)

    def _autocast(self) -> Any:
        if self._dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self._dtype)

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> torch.Tensor:
        """``(1, 3, S, S)`` float32 -> float32 ``(1, 256, 64, 64)`` torch tensor on the device."""
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(self.device)
        with self._autocast():
            return self.model.encode(x).float()

    @torch.inference_mode()
    def decode(
        self,
        embedding: Any,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decoder inputs of ``engine.contract`` -> ``(iou (B,4), low_res (B,4,256,256))`` numpy."""
        dev = self.device

        def t(a: Any) -> torch.Tensor:
            if isinstance(a, torch.Tensor):
                return a.to(dev, torch.float32)
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dev)

        with self._autocast():
            iou, low = self.model.decode(t(embedding), t(point_coords), t(point_labels), t(mask_input), t(has_mask_input))
        return iou.float().cpu().numpy(), low.float().cpu().numpy()

    def describe(self) -> BackendInfo:
        return BackendInfo("torch", str(self.device), self.precision, f"torch {torch.__version__}")
