"""Prompt validation (table-driven) and conversion to the official ONNX decoder form."""

from __future__ import annotations

import numpy as np
import pytest

from engine.prompts import build_prompts

HW = (480, 640)  # original frame
INP = (768, 1024)  # input frame (scale 1.6)


def test_point_only_gets_padding_point() -> None:
    p = build_prompts(HW, INP, points_xy=[[100, 50]], labels=[1])
    assert p.point_coords.shape == (1, 2, 2)
    np.testing.assert_allclose(p.point_coords[0, 0], [160, 80])
    assert p.point_labels.tolist() == [[1, -1]]
    assert p.has_mask_input.tolist() == [0.0]


def test_box_becomes_corners_without_padding() -> None:
    p = build_prompts(HW, INP, points_xy=[[10, 10]], labels=[0], box_xyxy=[0, 0, 640, 480])
    assert p.point_labels.tolist() == [[0, 2, 3]]
    np.testing.assert_allclose(p.point_coords[0, 1:], [[0, 0], [1024, 768]])


def test_batched_boxes_broadcast_points() -> None:
    p = build_prompts(HW, INP, points_xy=[[5, 5]], box_xyxy=[[0, 0, 10, 10], [1, 1, 20, 20], [2, 2, 30, 30]])
    assert p.batch == 3 and p.point_coords.shape == (3, 3, 2)
    assert p.mask_input.shape == (3, 1, 256, 256)


def test_mask_input_sets_flag() -> None:
    p = build_prompts(HW, INP, points_xy=[[5, 5]], mask_input=np.ones((256, 256), np.float32))
    assert p.has_mask_input.tolist() == [1.0] and p.mask_input.shape == (1, 1, 256, 256)


NAN = float("nan")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({}, "empty prompt"),
        ({"points_xy": np.zeros((0, 2))}, "empty"),
        ({"points_xy": [1, 2, 3]}, "points_xy must be"),
        ({"points_xy": [[1, 2, 3]]}, "last axis 2"),
        ({"points_xy": [[NAN, 2]]}, "NaN"),
        ({"points_xy": [[700, 10]]}, "outside the 640x480 image"),
        ({"points_xy": [[-1, 10]]}, "outside"),
        ({"points_xy": [[1, 2]], "labels": [2]}, "labels must be 1"),
        ({"points_xy": [[1, 2]], "labels": [1, 0]}, "does not match"),
        ({"labels": [1], "box_xyxy": [0, 0, 5, 5]}, "labels were given without"),
        ({"box_xyxy": [0, 0, 5]}, "last axis 4"),
        ({"box_xyxy": [10, 0, 5, 5]}, "x0 <= x1"),
        ({"box_xyxy": [0, 0, 700, 500]}, "outside"),
        ({"box_xyxy": ["a", 0, 1, 1]}, "numeric"),
        ({"mask_input": np.zeros((256, 256))}, "mask_input refines"),
        ({"points_xy": [[1, 1]], "mask_input": np.zeros((64, 64))}, "last axis 256"),
        ({"points_xy": [[1, 1]], "mask_input": np.zeros((64, 256))}, "256x256"),
        ({"points_xy": np.zeros((2, 1, 2)), "box_xyxy": np.zeros((3, 4))}, "prompts but boxes give"),
    ],
)
def test_bad_prompts_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_prompts(HW, INP, **kwargs)
