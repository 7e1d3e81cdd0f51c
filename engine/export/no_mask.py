"""The internal no-mask decoder pair that ``OrtBackend`` uses for prompts without masks.

The contract decoder of ``engine.export.onnx_export`` stays the public graph. Next to it
``export_model`` writes an image-side graph (``{decoder}_image_side.onnx``: ``image_embeddings``
-> ``IMAGE_SIDE_OUTPUTS``, run once per embedding) and a prompt graph (``{decoder}_no_mask.onnx``: ``NO_MASK_INPUTS`` ->
``iou_predictions, low_res_masks``) without the mask path and the first block's image-side
projections; its masks are upscaled in the image-token window ``roi`` only (the whole grid for
whole masks). Both files carry the sha256 of the contract decoder file they were exported with
(ONNX ``metadata_props`` key ``CONTRACT_SHA256_KEY``); ``pair_is_current`` checks it, so a pair
left from another export is never run with this decoder's weights. The file names and that check
live in the torch-free ``engine.export.no_mask_files``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from engine.contract import DECODER_INPUTS, DECODER_OUTPUTS, EMBED_DIM, EMBED_HW, LOW_RES_HW
from engine.export.common import (
    DECODER_DYNAMIC_AXES,
    FP32_TOLERANCE,
    ExportError,
    check_onnx,
    ort_session,
    torch_to_onnx,
)
from engine.export.no_mask_files import (
    CONTRACT_SHA256_KEY,
    IMAGE_SIDE_OUTPUTS,
    NO_MASK_INPUTS,
    WHOLE_ROI,
    no_mask_paths,
    pair_is_current,
)
from engine.export.prompts import realistic_prompts
from engine.models.sam import SamModel

__all__ = [
    "CONTRACT_SHA256_KEY", "IMAGE_SIDE_OUTPUTS", "NO_MASK_INPUTS", "compare_no_mask_decoder",
    "export_no_mask_decoder", "export_no_mask_pair", "no_mask_paths", "pair_is_current",
]


class _ImageSideGraph(nn.Module):
    def __init__(self, model: SamModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image_embeddings: Tensor) -> tuple[Tensor, ...]:
        return self.model.decoder_image_side(image_embeddings)


class _NoMaskGraph(nn.Module):
    def __init__(self, model: SamModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, keys: Tensor, k: Tensor, v: Tensor, q_t: Tensor, point_coords: Tensor,
                point_labels: Tensor, roi: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.decode_no_mask((keys, k, v, q_t), point_coords, point_labels, roi)


def _stamp(path: Path, props: dict[str, str]) -> None:
    """Set ``props`` as the ONNX file's ``metadata_props`` (in place)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def export_no_mask_decoder(model: SamModel, decoder_path: Path, opset: int = 17) -> tuple[Path, Path]:
    """Write the pair next to the finished contract decoder ``decoder_path`` (see ``no_mask_paths``),
    each file stamped with the decoder file's sha256."""
    from engine.weights import sha256_file

    side_path, prompt_path = no_mask_paths(decoder_path)
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(1, EMBED_DIM, *EMBED_HW, generator=gen)
    model = model.eval()
    torch_to_onnx(_ImageSideGraph(model).eval(), (emb,), side_path, opset,
            input_names=[DECODER_INPUTS[0]], output_names=list(IMAGE_SIDE_OUTPUTS))
    with torch.no_grad():
        side = model.decoder_image_side(emb)
    b, n = 2, 3
    dummy = (*side, torch.rand(b, n, 2, generator=gen) * model.input_size,
             torch.tensor([[1.0, 0.0, -1.0], [2.0, 3.0, -1.0]]), torch.tensor([5, 41, 9, 30]))  # any window
    axes = {k: v for k, v in DECODER_DYNAMIC_AXES.items() if k in NO_MASK_INPUTS + DECODER_OUTPUTS}
    axes[DECODER_OUTPUTS[1]] = {0: "B", 2: "window_h", 3: "window_w"}
    torch_to_onnx(_NoMaskGraph(model).eval(), dummy, prompt_path, opset,
            input_names=list(NO_MASK_INPUTS), output_names=list(DECODER_OUTPUTS), dynamic_axes=axes)
    digest = sha256_file(Path(decoder_path))
    for path in (side_path, prompt_path):
        _stamp(path, {CONTRACT_SHA256_KEY: digest})
    return side_path, prompt_path


def compare_no_mask_decoder(model: SamModel, decoder_path: Path, embedding: np.ndarray,
                            prompts: dict[str, np.ndarray], roi: tuple[int, int, int, int] = WHOLE_ROI) -> float:
    """Run the pair once on prompts without masks, masks in the image-token window ``roi``; max abs
    diff vs torch's whole decode there, ``ExportError`` > 1e-3."""
    side_path, prompt_path = no_mask_paths(decoder_path)
    side = ort_session(side_path).run(list(IMAGE_SIDE_OUTPUTS), {DECODER_INPUTS[0]: embedding})
    feeds = dict(zip(IMAGE_SIDE_OUTPUTS, side))
    feeds.update(point_coords=prompts["point_coords"], point_labels=prompts["point_labels"],
                 roi=np.asarray(roi, np.int64))
    outs = ort_session(prompt_path).run(list(DECODER_OUTPUTS), feeds)
    b = prompts["point_coords"].shape[0]
    with torch.inference_mode():
        iou, masks = model(torch.from_numpy(embedding), torch.from_numpy(prompts["point_coords"]),
                           torch.from_numpy(prompts["point_labels"]), torch.zeros(b, 1, *LOW_RES_HW), torch.zeros(b))
    r0, r1, c0, c1 = (4 * v for v in roi)
    refs = (iou.numpy(), masks.numpy()[..., r0:r1, c0:c1])
    diff = max(float(np.abs(o - r).max()) if o.shape == r.shape else float("inf") for o, r in zip(outs, refs))
    if not diff <= FP32_TOLERANCE:
        raise ExportError(
            f"no-mask decoder {prompt_path}: ONNX Runtime differs from torch by {diff:.3g} (limit {FP32_TOLERANCE})"
        )
    return diff


def export_no_mask_pair(model: SamModel, decoder_path: Path, embedding: np.ndarray, opset: int = 17) -> float | None:
    """Export, check and compare the pair (it is optional): its max abs diff vs torch, or None after
    a failure, which deletes the pair's files and warns (``OrtBackend`` then uses the contract
    decoder for every prompt), so one failing optional graph neither aborts nor repeats the export."""
    try:
        export_no_mask_decoder(model, decoder_path, opset)
        for path in no_mask_paths(decoder_path):
            check_onnx(path)
        return max(
            compare_no_mask_decoder(model, decoder_path, embedding, realistic_prompts(b, n, model.input_size, b + n), roi)
            for b, n in ((1, 2), (3, 4)) for roi in (WHOLE_ROI, (7, 30, 0, 64))
        )
    except Exception as exc:  # noqa: BLE001 - exporter, checker and parity failures alike; the pair is optional
        for path in no_mask_paths(decoder_path):
            path.unlink(missing_ok=True)
        reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
        warnings.warn(
            f"skipped the optional no-mask decoder pair of {Path(decoder_path).name} ({reason}). The export "
            f"is complete and ONNX Runtime runs the contract decoder for every prompt (same results, "
            f"~1.25x the decode time for clicks and boxes). The pair must load in ONNX Runtime and match "
            f"torch within {FP32_TOLERANCE} (max abs); to get it back, re-export with another --opset.",
            stacklevel=2,
        )
        return None
