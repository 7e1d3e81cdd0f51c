"""Tensor names and shapes shared by the torch, ONNX Runtime and TensorRT backends.

One set of names for every runtime (the official SAM ONNX decoder's names), so a client written
against one backend works against the others.

Encoder
    ``image``            float32 ``(1, 3, S, S)`` normalised, padded image (S = model input size)
    ``image_embeddings`` float32 ``(1, 256, S/16, S/16)`` (64x64 for every registered model)

Decoder (meanings as the official SAM ONNX decoder)
    ``image_embeddings`` float32 ``(1, 256, 64, 64)``
    ``point_coords``     float32 ``(B, N, 2)`` x, y in the model's *input* frame (after resize-longest-side,
                         before padding), pixels
    ``point_labels``     float32 ``(B, N)``: 1 foreground, 0 background, 2 box top-left, 3 box
                         bottom-right, -1 padding ("not a point")
    ``mask_input``       float32 ``(B, 1, 256, 256)`` low-res logits of an earlier prediction
    ``has_mask_input``   float32 ``(B,)``: 1 where ``mask_input`` is used, else 0
    ``iou_predictions``  float32 ``(B, 4)``: predicted IoU of every mask token
    ``low_res_masks``    float32 ``(B, 4, 256, 256)`` logits. Index 0 is the single-mask output,
                         indices 1..3 the multimask outputs (as SAM's ``multimask_output``).
"""

from __future__ import annotations

ENCODER_INPUT = "image"
ENCODER_OUTPUT = "image_embeddings"
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
DECODER_OUTPUTS = ("iou_predictions", "low_res_masks")

ROI_FILL = -32.0  # low-res logit outside a decode's ``roi`` window (sigmoid ~1e-14: background)

EMBED_DIM = 256
EMBED_HW = (64, 64)
LOW_RES_HW = (256, 256)
NUM_MASK_TOKENS = 4

LABEL_PAD = -1
LABEL_BACKGROUND = 0
LABEL_FOREGROUND = 1
LABEL_BOX_TL = 2
LABEL_BOX_BR = 3


def check_roi(roi: tuple[int, int, int, int], grid_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """An image-token window ``(row0, row1, col0, col1)`` of a ``grid_hw`` grid as ints, or ValueError."""
    r0, r1, c0, c1 = (int(v) for v in roi)
    h, w = grid_hw
    if not (0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w):
        raise ValueError(f"roi must be (row0, row1, col0, col1) with 0 <= row0 < row1 <= {h} and "
                         f"0 <= col0 < col1 <= {w} (image tokens), got {roi}")
    return r0, r1, c0, c1
