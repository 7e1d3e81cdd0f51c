"""Upscaling window (``roi``): masks upscaled only around a box are exact inside it, background
outside, with unchanged IoU predictions; the stream engine's ``roi_margin`` gives the same masks
as whole decodes on real LiteMedSAM weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from engine.backends.torch_backend import TorchBackend
from engine.models.mask_decoder import ROI_FILL
from engine.stream.decoding import box_roi
from tests.test_torch_backend import SIDE, image, prompts, tiny_model


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    return TorchBackend(tiny_model(3), SIDE)


@pytest.mark.parametrize("roi", [(2, 10, 4, 13), (0, 16, 0, 1), (15, 16, 7, 16), (0, 16, 0, 16)])
def test_window_is_exact_inside_and_background_outside(backend: TorchBackend, roi: tuple[int, int, int, int]) -> None:
    emb = backend.encode(image(1))
    p = prompts(3, 3, seed=2)
    iou, full = backend.decode(emb, **p)
    iou_w, win = backend.decode(emb, **p, roi=roi)
    r0, r1, c0, c1 = (4 * v for v in roi)
    np.testing.assert_allclose(iou_w, iou, atol=1e-6)
    np.testing.assert_allclose(win[..., r0:r1, c0:c1], full[..., r0:r1, c0:c1], atol=1e-5)
    outside = np.ones(win.shape[-2:], bool)
    outside[r0:r1, c0:c1] = False
    assert np.all(win[..., outside] == ROI_FILL)
    assert backend.supports_roi


@pytest.mark.parametrize("roi", [(3, 3, 0, 4), (0, 17, 0, 4), (-1, 4, 0, 4), (0, 4, 5, 2)])
def test_bad_window_is_refused(backend: TorchBackend, roi: tuple[int, int, int, int]) -> None:
    emb = backend.encode(image(1))
    with pytest.raises(ValueError, match=r"roi must be \(row0, row1, col0, col1\) with 0 <= row0 < row1 <= 16"):
        backend.decode(emb, **prompts(1, 2), roi=roi)


@pytest.mark.parametrize(
    ("box", "margin", "expected"),
    [
        ((64, 64, 128, 192), 0.0, (14, 50, 14, 34)),  # input 256 -> grid 64: /4, then 2 tokens each side
        ((64, 64, 128, 192), 0.25, (6, 58, 10, 38)),  # + a quarter of the size (16 x 32 tokens)
        ((0, 0, 20, 20), 0.5, (0, 10, 0, 10)),  # clipped at the top-left
        ((0, 0, 256, 256), 0.0, None),  # the whole grid: no window
    ],
)
def test_box_roi(box: tuple[float, ...], margin: float, expected: Any) -> None:
    assert box_roi(np.array(box, np.float32), 256, (64, 64), margin) == expected


class _RoiSpy:
    """Any backend, recording ``(roi, prompts in the call)`` of every decode."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.rois = inner, []

    def decode(self, *args: Any, roi: Any = None) -> Any:
        self.rois.append((roi, len(args[1])))
        return self.inner.decode(*args, roi=roi)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def assert_window_keeps_stream_masks(backend: Any) -> None:
    """LiteMedSAM (real weights) on ``backend`` tracks a box over 4 shifted frames with and without
    ``roi_margin`` 0.25: every single-box decode (tracking, and the guards' first re-decode) is
    windowed with the margin and whole without, and every frame's decisions and mask are the same."""
    from engine.imageio import load_rgb
    from engine.models.registry import get_spec
    from engine.stream.engine import EngineConfig, StreamEngine
    from engine.stream.events import Prompt
    from engine.stream.scheduler import KeyframePolicy
    from engine.types import Frame

    rgb = load_rgb("sample:coffee")
    frames = [np.ascontiguousarray(np.roll(rgb, (2 * i, 3 * i), axis=(0, 1))) for i in range(4)]
    spy = _RoiSpy(backend)
    masks = {}
    calls = {}
    for margin in (None, 0.25):
        start = len(spy.rois)
        eng = StreamEngine(spy, get_spec("lite_medsam"), KeyframePolicy(interval=2),
                           config=EngineConfig(roi_margin=margin))
        eng.add_object(Prompt.box(np.array([170, 15, 410, 305], np.float32)))
        masks[margin] = [eng.step(Frame(i, i, f)).objects[0] for i, f in enumerate(frames)]
        eng.close()
        calls[margin] = spy.rois[start:]
    # every decode is whole without a margin; with it, every single-box decode (tracking decodes and
    # the guards' first-stage re-decode) is windowed, and a batched re-decode of several boxes too,
    # unless the window around all its boxes is the whole grid
    assert len(calls[None]) == len(calls[0.25]) >= 3
    assert all(r is None for r, _ in calls[None])
    assert all(r is not None for r, n in calls[0.25] if n == 1)
    # the same decisions with and without the window (the drift guards may drop the cup on the
    # rolled keyframe: then both runs do), and identical masks on every frame
    assert [r.status for r in masks[None]] == [r.status for r in masks[0.25]]
    assert sum(r.status == "ok" for r in masks[None]) >= 2
    for whole, windowed in zip(masks[None], masks[0.25]):
        assert np.array_equal(whole.mask, windowed.mask)
        assert whole.status != "ok" or whole.mask.sum() > 5000


def test_stream_roi_masks_equal_whole_decodes_real_weights() -> None:
    from engine.models.registry import load_model
    from tests.refs import medsam_checkpoint

    assert_window_keeps_stream_masks(TorchBackend(load_model("lite_medsam", medsam_checkpoint()), 256))
