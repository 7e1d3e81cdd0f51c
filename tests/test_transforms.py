"""Pre/post-processing against segment-anything's own transforms and torch interpolation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import transforms as T


@pytest.mark.parametrize("hw", [(1200, 1800), (534, 800), (480, 854), (1, 1), (1024, 1024), (300, 451)])
@pytest.mark.parametrize("side", [1024, 256])
def test_input_hw_matches_official(hw: tuple[int, int], side: int) -> None:
    from segment_anything.utils.transforms import ResizeLongestSide

    assert T.input_hw_for(hw, side) == ResizeLongestSide.get_preprocess_shape(hw[0], hw[1], side)


def test_coords_and_boxes_match_official() -> None:
    from segment_anything.utils.transforms import ResizeLongestSide

    rng = np.random.default_rng(0)
    hw = (1200, 1800)
    pts = rng.uniform(0, 1200, size=(5, 3, 2)).astype(np.float32)
    boxes = rng.uniform(0, 1200, size=(4, 4)).astype(np.float32)
    ref = ResizeLongestSide(1024)
    inp = T.input_hw_for(hw, 1024)
    np.testing.assert_allclose(T.points_to_input(pts, hw, inp), ref.apply_coords(pts, hw), rtol=1e-6)
    np.testing.assert_allclose(T.boxes_to_input(boxes, hw, inp), ref.apply_boxes(boxes, hw), rtol=1e-6)


@pytest.mark.parametrize("hw,side", [((1200, 1800), 1024), ((480, 854), 256), ((534, 800), 1024)])
def test_postprocess_matches_torch_bilinear(hw: tuple[int, int], side: int) -> None:
    rng = np.random.default_rng(1)
    low = rng.normal(size=(2, 3, 256, 256)).astype(np.float32) * 5
    inp = T.input_hw_for(hw, side)
    t = torch.from_numpy(low)
    ref = F.interpolate(t, (side, side), mode="bilinear", align_corners=False)[..., : inp[0], : inp[1]]
    ref = F.interpolate(ref, hw, mode="bilinear", align_corners=False).numpy()
    ours = T.postprocess_logits(low, inp, hw, side)
    assert ours.shape == (2, 3, *hw)
    # OpenCV computes its bilinear weights in its own float rounding (and the crop is applied before
    # the first resize), so values differ from torch's two passes by ~3e-5 relative on this
    # random-noise input, which is far rougher than real logits; thresholded masks agree.
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()
    assert np.mean((ours > 0) != (ref > 0)) < 1e-5


def test_preprocess_imagenet_pads_with_zero_and_normalises() -> None:
    rgb = np.full((100, 200, 3), 128, np.uint8)
    x, inp = T.preprocess(rgb, 1024, "imagenet")
    assert x.shape == (1, 3, 1024, 1024) and x.dtype == np.float32 and inp == (512, 1024)
    np.testing.assert_allclose(x[0, :, 0, 0], (128 - T.SAM_PIXEL_MEAN) / T.SAM_PIXEL_STD, rtol=1e-6)
    assert np.all(x[:, :, 512:, :] == 0)


def test_preprocess_minmax_range() -> None:
    rgb = np.random.default_rng(0).integers(20, 200, size=(60, 30, 3), dtype=np.uint8)
    x, inp = T.preprocess(rgb, 256, "minmax")
    assert inp == (256, 128)
    region = x[0, :, :256, :128]
    assert region.min() == pytest.approx(0.0, abs=1e-6) and region.max() == pytest.approx(1.0, abs=1e-6)
    assert np.all(x[0, :, :, 128:] == 0)


@pytest.mark.parametrize(
    "image,exception,match",
    [
        (np.zeros((10, 10), np.uint8), ValueError, "HxWx3"),
        (np.zeros((10, 10, 4), np.uint8), ValueError, "HxWx3"),
        (np.zeros((10, 10, 3), np.float32), ValueError, "uint8"),
        (np.zeros((0, 10, 3), np.uint8), ValueError, "empty"),
        ([[1, 2, 3]], TypeError, "numpy array"),
    ],
)
def test_check_rgb_rejects(image: object, exception: type, match: str) -> None:
    with pytest.raises(exception, match=match):
        T.check_rgb(image)  # type: ignore[arg-type]


def test_mask_to_box() -> None:
    m = np.zeros((10, 20), bool)
    assert T.mask_to_box_xyxy(m) is None
    m[2:5, 3:9] = True
    assert T.mask_to_box_xyxy(m).tolist() == [3, 2, 8, 4]


def _photos(data_dir) -> list[np.ndarray]:  # noqa: ANN001
    from engine.imageio import load_rgb

    out = []
    for name in ("truck.jpg", "groceries.jpg", "dog.jpg"):
        rgb = load_rgb(data_dir / "sam_images" / name)
        out += [rgb, np.ascontiguousarray(rgb.transpose(1, 0, 2)), np.ascontiguousarray(rgb[:200, :300])]
    return out


@pytest.mark.parametrize("side", [1024, 256])
def test_pil_resize_is_bit_exact_with_official_apply_image(data_dir, side: int) -> None:  # noqa: ANN001
    """Landscape, portrait, larger and smaller than the model side: the same uint8 pixels."""
    from segment_anything.utils.transforms import ResizeLongestSide

    for rgb in _photos(data_dir) + [np.random.default_rng(2).integers(0, 256, (37, 61, 3), dtype=np.uint8)]:
        ref = ResizeLongestSide(side).apply_image(rgb)
        ours = T.resize_longest_side(rgb, side, "pil")
        assert ours.dtype == np.uint8 and ours.shape == ref.shape, (rgb.shape, ours.shape, ref.shape)
        assert np.array_equal(ours, ref), (rgb.shape, int(np.abs(ours.astype(int) - ref).max()))


def test_preprocess_defaults_to_each_models_official_resize() -> None:
    """imagenet (SAM, MobileSAM) -> PIL; minmax (LiteMedSAM) -> cv2 INTER_AREA, also when enlarging."""
    import cv2
    from PIL import Image

    rgb = np.random.default_rng(3).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    x, (h, w) = T.preprocess(rgb, 1024, "imagenet")
    pil = np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    np.testing.assert_array_equal(x[0, :, :h, :w], ((pil - T.SAM_PIXEL_MEAN) / T.SAM_PIXEL_STD).transpose(2, 0, 1))
    x, (h, w) = T.preprocess(rgb, 256, "minmax")
    area = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    ref = (area - area.min()) / (area.max() - area.min())
    np.testing.assert_allclose(x[0, :, :h, :w], ref.transpose(2, 0, 1), atol=1e-6)
    fast, _ = T.preprocess(rgb, 256, "minmax", "fast")  # the opt-in recipe enlarges with INTER_LINEAR
    assert not np.array_equal(fast, x)


def test_unknown_resize_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown resize method 'bicubic'; expected one of pil, area, fast"):
        T.preprocess(np.zeros((10, 10, 3), np.uint8), 64, "imagenet", "bicubic")  # type: ignore[arg-type]
