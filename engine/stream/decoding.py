"""Per-frame decoding for the stream: one prompt on the current keyframe embedding.

Decodes through ``Predictor.decode`` (the image path's decoder call, mask selection and
upsampler, ``engine.transforms.postprocess_logits``), so a stream and ``Predictor.predict`` give
the same mask for the same prompt and embedding; this module adds the stream's choices: which
multimask output to keep (the best predicted IoU) and the box upscaling window (``box_roi``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from engine.contract import LABEL_BOX_BR, LABEL_BOX_TL
from engine.deprecation import renamed_field
from engine.predictor import Predictor
from engine.prompts import DecoderPrompts, build_prompts
from engine.stream.events import Prompt


@dataclass(frozen=True, slots=True)
class Decoded:
    """One decoded mask: full-size ``logits`` float32 ``(H, W)`` (keyframe pixels), ``low_res_logits``
    float32 ``(256, 256)``, predicted IoU ``score``, and the decoder and upsampling wall times (ms).
    The old names ``low_res``, ``decoder_ms``, ``upsample_ms`` still read, with a DeprecationWarning."""

    logits: np.ndarray
    low_res_logits: np.ndarray
    score: float
    decode_ms: float
    postprocess_ms: float

    low_res = renamed_field("low_res_logits", "low_res")
    decoder_ms = renamed_field("decode_ms", "decoder_ms")
    upsample_ms = renamed_field("postprocess_ms", "upsample_ms")


def box_roi(box_xyxy: np.ndarray, input_size: int, grid_hw: tuple[int, int], margin: float) -> tuple[int, int, int, int] | None:
    """Image-token window ``(row0, row1, col0, col1)`` around a box in model-input pixels
    (``(4,)`` x0, y0, x1, y1 after resize-longest-side): the box grown by ``margin`` times its
    size plus 2 tokens on every side, clipped to ``grid_hw``; None when that is the whole grid."""
    gh, gw = grid_hw
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    sy, sx = gh / input_size, gw / input_size
    my, mx = margin * (y1 - y0) * sy + 2, margin * (x1 - x0) * sx + 2
    r0, r1 = max(0, int(np.floor(y0 * sy - my))), min(gh, int(np.ceil(y1 * sy + my)))
    c0, c1 = max(0, int(np.floor(x0 * sx - mx))), min(gw, int(np.ceil(x1 * sx + mx)))
    if r1 <= r0 or c1 <= c0 or (r0, r1, c0, c1) == (0, gh, 0, gw):
        return None
    return r0, r1, c0, c1


def prompts_roi(predictor: Predictor, prompts: DecoderPrompts,
                margin: float | None) -> tuple[int, int, int, int] | None:
    """The upscaling window for a decode of ``prompts`` (``K`` prompts, model-input coordinates), each
    with one box: ``box_roi`` of the box holding all K boxes, so it holds each box's own window. None
    (whole masks) without a margin, on a backend without ``supports_roi``, or when a prompt has no box."""
    if margin is None or not getattr(predictor.backend, "supports_roi", False):
        return None
    is_corner = np.isin(prompts.point_labels, (LABEL_BOX_TL, LABEL_BOX_BR))
    if not np.all(is_corner.sum(axis=1) == 2):
        return None
    corners = prompts.point_coords[is_corner].reshape(-1, 2)
    grid_hw = tuple(int(v) for v in np.shape(predictor.embedding.features)[-2:])
    box = np.concatenate([corners.min(axis=0), corners.max(axis=0)])
    return box_roi(box, predictor.spec.input_size, grid_hw, margin)  # type: ignore[arg-type]


def roi_window_blocker(backend: object, feeds_masks_back: bool) -> str | None:
    """Why an upscaling window cannot be used, or None when it can: the backend decodes whole masks
    only (TensorRT, CUDA graphs, compiled torch, ONNX Runtime without its CPU no-mask pair), or the
    tracker feeds each decode's low-res logits back as ``mask_input`` (point-capable models):
    background outside a window would change the next decode everywhere, so it stays exact only
    where nothing is fed back (box-only models such as LiteMedSAM, or ``use_mask_input=False``)."""
    if not getattr(backend, "supports_roi", False):
        return "the backend decodes whole masks only"
    return "the tracker feeds low-res masks back as mask_input" if feeds_masks_back else None


def effective_roi_margin(margin: float | None, backend: object, feeds_masks_back: bool) -> float | None:
    """The upscaling-window margin a stream engine can use: ``margin``, or None (with a warning) where
    ``roi_window_blocker`` names a reason."""
    if margin is None:
        return None
    if margin < 0:
        raise ValueError(f"roi_margin must be >= 0 (a fraction of the box size) or None, got {margin}")
    why = roi_window_blocker(backend, feeds_masks_back)
    if why is None:
        return margin
    warnings.warn(f"roi_margin={margin:g} is ignored: {why}; masks are upscaled whole (use eager torch or ONNX "
                  "Runtime on the CPU, and TrackerConfig(use_mask_input=False) for point-capable models)",
                  stacklevel=3)
    return None


def decode_prompt(
    predictor: Predictor,
    prompt: Prompt,
    mask_input: np.ndarray | None,
    multimask: bool,
    roi_margin: float | None = None,
) -> Decoded:
    """Decode one prompt (keyframe pixels) on ``predictor.embedding``; keeps the best-scoring mask
    of the multimask outputs when ``multimask``. Box-only models ignore the prompt's points.
    ``roi_margin``: with a box prompt on a backend that ``supports_roi``, upscale the masks only
    in ``box_roi(box, margin)`` (background logits outside it); None decodes whole masks."""
    emb, spec = predictor.embedding, predictor.spec
    points = None if spec.box_only else prompt.points_xy
    labels = None if points is None else prompt.labels
    prompts = build_prompts(emb.original_hw, emb.input_hw, points, labels, prompt.box_xyxy, mask_input,
                            spec.uniform_scale)
    roi = prompts_roi(predictor, prompts, roi_margin)
    pred = predictor.decode(prompts, multimask, select="best", roi=roi)
    return Decoded(pred.logits[0, 0], pred.low_res_logits[0, 0], float(pred.scores[0, 0]),  # type: ignore[index]
                   pred.timings_ms["decode_ms"], pred.timings_ms["postprocess_ms"])
