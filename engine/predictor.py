"""Two-step predictor: ``set_image`` encodes once, ``predict`` decodes many prompts cheaply.

Latency per model against the reference predictors: ``bench/bench_model.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engine.backends.base import Backend
from engine.models.registry import ModelSpec, get_spec
from engine.prompts import DecoderPrompts, build_prompts
from engine.transforms import postprocess_logits, preprocess
from engine.types import Embedding, Prediction

MaskSelect = Literal["all", "best"]


def load_backend(spec: ModelSpec, checkpoint: Path | None = None, device: str = "cpu",
                 backend: str = "torch") -> Backend:
    """Backend of ``spec`` on runtime ``backend`` (torch, onnxruntime, tensorrt, auto); weights
    resolved by ``engine.weights.resolve``. See ``engine.backends.factory.create_backend``."""
    from engine.backends.factory import create_backend

    return create_backend(backend, spec.name, checkpoint, device)


class Predictor:
    """SAM-style predictor over any ``Backend``.

    >>> p = Predictor.from_name("lite_medsam")          # doctest: +SKIP
    >>> p.set_image(rgb)                                  # HxWx3 uint8 RGB, encodes once
    >>> pred = p.predict(box_xyxy=[425, 600, 700, 875])   # masks (1, 1, H, W) bool
    """

    def __init__(self, backend: Backend, spec: ModelSpec) -> None:
        self.backend = backend
        self.spec = spec
        self._embedding: Embedding | None = None

    @classmethod
    def from_name(cls, name: str, checkpoint: Path | None = None, device: str = "cpu",
                  backend: str = "torch") -> "Predictor":
        """Predictor for registered model ``name`` on runtime ``backend`` (torch|onnxruntime|tensorrt|auto)."""
        spec = get_spec(name)
        return cls(load_backend(spec, checkpoint, device, backend), spec)

    # --- encoding -------------------------------------------------------------------------
    def set_image(self, rgb: np.ndarray, frame_index: int = 0) -> Embedding:
        """Encode an ``HxWx3 uint8 RGB`` image; the embedding is kept for ``predict``."""
        t0 = time.perf_counter()
        x, input_hw = preprocess(rgb, self.spec.input_size, self.spec.pixel_norm,  # type: ignore[arg-type]
                                 self.spec.resize)  # type: ignore[arg-type]
        features = self.backend.encode(x)
        self._embedding = Embedding(features, tuple(rgb.shape[:2]), input_hw, frame_index)
        self.encode_ms = (time.perf_counter() - t0) * 1e3
        return self._embedding

    @property
    def embedding(self) -> Embedding:
        if self._embedding is None:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        return self._embedding

    def set_embedding(self, embedding: Embedding) -> None:
        """Use an embedding computed elsewhere (e.g. by the stream engine's keyframe encoder)."""
        if not isinstance(embedding, Embedding):
            raise TypeError(f"expected an engine.types.Embedding, got {type(embedding).__name__}")
        self._embedding = embedding

    def reset_image(self) -> None:
        self._embedding = None

    # --- decoding -------------------------------------------------------------------------
    def predict(
        self,
        points_xy: Any = None,
        labels: Any = None,
        box_xyxy: Any = None,
        mask_input: Any = None,
        multimask_output: bool = False,
        mask_threshold: float = 0.0,
    ) -> Prediction:
        """Decode B prompts in one decoder call (shapes in ``engine.prompts.build_prompts``).

        Returns masks ``(B, M, H, W)`` bool at the original size (M = 3 with ``multimask_output``,
        else 1), scores ``(B, M)``, low-res logits ``(B, M, 256, 256)`` and full-size logits.
        """
        emb = self.embedding
        if points_xy is not None and self.spec.box_only:
            warnings.warn(
                f"{self.spec.name} answers box prompts only; point prompts are ignored by its weights. "
                "Give a box, or use the stream engine's point-to-box proposals.",
                stacklevel=2,
            )
        prompts = build_prompts(
            emb.original_hw, emb.input_hw, points_xy, labels, box_xyxy, mask_input, self.spec.uniform_scale
        )
        return self.decode(prompts, multimask_output, mask_threshold)

    def decode(
        self,
        prompts: DecoderPrompts,
        multimask_output: bool,
        mask_threshold: float = 0.0,
        select: MaskSelect = "all",
        roi: tuple[int, int, int, int] | None = None,
    ) -> Prediction:
        """Decode already-converted prompts (``predict`` and the stream engine both come here).

        ``multimask_output``: the three multimask outputs, else the single-mask one. ``select``:
        "all" keeps them (M = 3 or 1); "best" keeps, per prompt, the one with the highest predicted
        IoU (M = 1). ``roi``: image-token window ``(row0, row1, col0, col1)`` to upscale the masks
        in (background logits outside), on a backend that ``supports_roi`` only.
        """
        if select not in ("all", "best"):
            raise ValueError(f"select must be 'all' or 'best', got {select!r}")
        if roi is not None and not getattr(self.backend, "supports_roi", False):
            raise ValueError(f"{type(self.backend).__name__} decodes whole masks only; pass roi=None "
                             "(an upscaling window needs the eager torch backend)")
        emb = self.embedding
        t0 = time.perf_counter()
        args = (emb.features, prompts.point_coords, prompts.point_labels, prompts.mask_input, prompts.has_mask_input)
        scores, low_res_logits = self.backend.decode(*args) if roi is None else self.backend.decode(*args, roi=roi)
        t1 = time.perf_counter()
        sel = slice(1, None) if multimask_output else slice(0, 1)
        scores, low_res_logits = scores[:, sel], low_res_logits[:, sel]
        if select == "best":
            best = np.argmax(scores, axis=1)[:, None]
            scores = np.take_along_axis(scores, best, 1)
            low_res_logits = np.take_along_axis(low_res_logits, best[..., None, None], 1)
        scores = np.ascontiguousarray(scores, np.float32)
        low_res_logits = np.ascontiguousarray(low_res_logits, np.float32)
        logits = postprocess_logits(low_res_logits, emb.input_hw, emb.original_hw, self.spec.input_size)
        t2 = time.perf_counter()
        timings = {"decode_ms": (t1 - t0) * 1e3, "postprocess_ms": (t2 - t1) * 1e3}
        return Prediction(logits > mask_threshold, scores, low_res_logits, logits, timings)
