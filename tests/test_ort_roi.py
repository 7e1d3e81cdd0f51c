"""OrtBackend's upscaling window (``decode(..., roi=...)``): the no-mask prompt graph upscales the
window's tokens only; masks are exact inside it and ``ROI_FILL`` outside, IoU predictions
unchanged, for prompts with and without masks, and equal to the eager torch backend's window.
LiteMedSAM's decoder at random weights (the stub-encoder export of ``test_ort_no_mask``); then a
stream on real weights gives the same masks with ``roi_margin`` as with whole decodes."""

from __future__ import annotations

from pathlib import Path
import numpy as np
import pytest

from engine.backends.torch_backend import TorchBackend
from engine.contract import DECODER_OUTPUTS, ROI_FILL
from engine.export.common import FP32_TOLERANCE
from engine.export.prompts import realistic_prompts
from tests.test_decoder_roi import assert_window_keeps_stream_masks
from tests.test_ort_no_mask import SIDE, _backend, _copy, exported  # noqa: F401 - the module fixture

WINDOWS = [(0, 64, 0, 64), (10, 41, 3, 60), (0, 1, 0, 64), (63, 64, 63, 64), (20, 30, 0, 5)]


def _prompts(has_mask: bool) -> dict[str, np.ndarray]:
    p = realistic_prompts(3, 4, SIDE, seed=7)
    p["has_mask_input"][:] = 1.0 if has_mask else 0.0
    return p


@pytest.mark.parametrize("has_mask", [False, True], ids=["no-mask graph", "contract graph"])
@pytest.mark.parametrize("roi", WINDOWS)
def test_window_is_exact_inside_and_background_outside(exported, roi: tuple[int, ...], has_mask: bool) -> None:  # noqa: ANN001, F811
    _, folder = exported
    backend = _backend(folder)
    assert backend.supports_roi
    emb = np.random.default_rng(3).standard_normal((1, 256, 64, 64)).astype(np.float32)
    p = _prompts(has_mask)
    iou, whole = backend.decoder.run(list(DECODER_OUTPUTS), {"image_embeddings": emb, **p})  # contract graph
    iou_w, win = backend.decode(emb, **p, roi=roi)
    assert win.shape == whole.shape and win.dtype == np.float32
    r0, r1, c0, c1 = (4 * v for v in roi)
    assert np.abs(iou_w - iou).max() <= FP32_TOLERANCE
    assert np.abs(win[..., r0:r1, c0:c1] - whole[..., r0:r1, c0:c1]).max() <= FP32_TOLERANCE
    outside = np.ones(win.shape[-2:], bool)
    outside[r0:r1, c0:c1] = False
    assert np.all(win[..., outside] == ROI_FILL)


def test_window_equals_the_torch_backends(exported) -> None:  # noqa: ANN001, F811
    model, folder = exported
    ort_backend, torch_backend = _backend(folder), TorchBackend(model, SIDE)
    emb = np.random.default_rng(4).standard_normal((1, 256, 64, 64)).astype(np.float32)
    p = _prompts(False)
    for roi in WINDOWS[1:3]:
        for got, want in zip(ort_backend.decode(emb, **p, roi=roi), torch_backend.decode(emb, **p, roi=roi)):
            assert np.abs(got - want).max() <= FP32_TOLERANCE


@pytest.mark.parametrize("roi", [(3, 3, 0, 4), (0, 65, 0, 4), (-1, 4, 0, 4), (0, 4, 5, 2)])
def test_bad_window_is_refused_before_decoding(exported, roi: tuple[int, ...]) -> None:  # noqa: ANN001, F811
    _, folder = exported
    with pytest.raises(ValueError, match=r"roi must be \(row0, row1, col0, col1\) with 0 <= row0 < row1 <= 64"):
        _backend(folder).decode(np.zeros((1, 256, 64, 64), np.float32), **_prompts(False), roi=roi)


def test_without_the_pair_there_is_no_window(exported, tmp_path: Path) -> None:  # noqa: ANN001, F811
    _, folder = exported
    backend = _backend(_copy(folder, tmp_path, with_pair=False))
    assert not backend.supports_roi
    with pytest.raises(ValueError, match="decodes whole masks only"):
        backend.decode(np.zeros((1, 256, 64, 64), np.float32), **_prompts(False), roi=(0, 8, 0, 8))


def test_stream_masks_with_a_window_equal_whole_decodes_real_weights() -> None:
    """LiteMedSAM on ONNX Runtime: ``test_decoder_roi``'s stream check (windowed tracking decodes,
    the same decisions and masks as whole decodes)."""
    from engine.backends.factory import onnx_files
    from engine.backends.ort_backend import OrtBackend
    from tests.refs import medsam_checkpoint

    enc, dec = onnx_files("lite_medsam", medsam_checkpoint())
    assert_window_keeps_stream_masks(OrtBackend(enc, dec, 256, threads=1))


def test_guard_redecode_of_several_boxes_is_windowed_around_all_of_them(exported) -> None:  # noqa: ANN001, F811
    """The drift guards' batched re-decode (``correction.decode_boxes``) with a margin upscales one
    window holding every box's own window: exact there, background outside; without a margin, or on a
    backend without windows, it decodes whole masks (``decoding.prompts_roi``)."""
    from engine.models.registry import get_spec
    from engine.predictor import Predictor
    from engine.prompts import build_prompts
    from engine.stream.correction import decode_boxes
    from engine.stream.decoding import box_roi, prompts_roi
    from engine.types import Embedding

    _, folder = exported
    spec = get_spec("lite_medsam")
    backend = _backend(folder)
    pred = Predictor(backend, spec)
    emb = np.random.default_rng(8).standard_normal((1, 256, 64, 64)).astype(np.float32)
    pred.set_embedding(Embedding(emb, (480, 640), (192, 256)))
    boxes = np.array([[100, 80, 220, 200], [300, 150, 380, 260], [150, 60, 260, 140]], np.float32)
    prompts = build_prompts((480, 640), (192, 256), box_xyxy=boxes)
    roi = prompts_roi(pred, prompts, 0.25)
    own = [box_roi(prompts.point_coords[k].reshape(-1), SIDE, (64, 64), 0.25) for k in range(3)]
    assert roi is not None and roi != (0, 64, 0, 64)
    for r in own:  # the window holds each box's own window
        assert roi[0] <= r[0] and r[1] <= roi[1] and roi[2] <= r[2] and r[3] <= roi[3], (roi, r)
    whole, windowed = decode_boxes(pred, boxes), decode_boxes(pred, boxes, roi_margin=0.25)
    r0, r1, c0, c1 = (4 * v for v in roi)
    got, want = windowed.low_res_logits, whole.low_res_logits
    assert got.shape == want.shape == (3, 1, 256, 256)
    assert np.abs(got[..., r0:r1, c0:c1] - want[..., r0:r1, c0:c1]).max() <= FP32_TOLERANCE
    outside = np.ones((256, 256), bool)
    outside[r0:r1, c0:c1] = False
    assert np.all(got[..., outside] == ROI_FILL)
    assert np.abs(windowed.scores - whole.scores).max() <= FP32_TOLERANCE
    assert prompts_roi(pred, prompts, None) is None
    points_only = build_prompts((480, 640), (192, 256), np.array([[120.0, 100.0]]), np.array([1]))
    assert prompts_roi(pred, points_only, 0.25) is None
    assert prompts_roi(Predictor(object(), spec), prompts, 0.25) is None  # type: ignore[arg-type] # no windows
