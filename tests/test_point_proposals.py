"""Point-to-box proposals (box-only models): the candidate boxes and the scores that rank them."""

from __future__ import annotations

import numpy as np
import pytest

from engine.stream.proposals import (
    ProposalConfig,
    colour_contrast,
    edge_cover,
    fill_ratios,
    point_box_proposals,
)


def test_boxes_per_scale_and_aspect_are_centred_and_clipped() -> None:
    boxes = point_box_proposals(np.array([100.0, 50.0]), (200, 400), (0.2, 0.5), (1.0, 4.0))
    assert boxes.shape == (4, 4) and boxes.dtype == np.float32
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert np.allclose(w[:2], h[:2]) and np.allclose(w[:2], [40, 100])  # squares: scale x shorter side
    assert np.allclose(boxes[2], [60, 40, 140, 60])  # aspect 4: twice as wide, half as high (80 x 20)
    assert np.allclose(boxes[3], [0, 25, 200, 75])  # 200 x 50, clipped on the left
    assert np.allclose((boxes[:3, :2] + boxes[:3, 2:]) / 2, [100, 50])


def _disc(hw: tuple[int, int], centre: tuple[int, int], r: int) -> np.ndarray:
    ys, xs = np.indices(hw)
    return (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= r * r


def test_fill_and_edge_tell_a_framed_object_from_a_cut_piece() -> None:
    disc = _disc((60, 80), (40, 30), 10)
    cut = np.zeros((60, 80), bool)
    cut[25:35, 30:50] = True  # a piece of a larger region, cut off by its box
    masks = np.stack([disc, disc, cut])
    boxes = np.array([[28, 18, 53, 43], [0, 0, 80, 60], [30, 25, 50, 35]], np.float32)
    fill = fill_ratios(masks, boxes)
    assert fill[0] == pytest.approx(disc.sum() / 625) and fill[1] < 0.1 and fill[2] == 1.0
    edge = edge_cover(masks, boxes)
    assert edge[0] == 0.0 and edge[2] > 0.9
    assert edge[1] == 0.0  # sides on the grid's edge are not counted


def test_colour_contrast_is_high_for_an_object_on_other_colours() -> None:
    rgb = np.full((60, 80, 3), 40, np.uint8)
    disc = _disc((60, 80), (40, 30), 10)
    rgb[disc] = (220, 30, 30)
    off = np.roll(disc, 12, axis=1)  # half on the object, half on the background
    c = colour_contrast(rgb, np.stack([disc, off, np.zeros_like(disc)]))
    assert c[0] > 0.9 and c[1] < c[0] and c[2] == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"aspects": ()}, "aspects"), ({"aspects": (0.0,)}, "aspects"), ({"min_fill": 1.5}, "min_fill"),
     ({"whole_band": 0.0}, "whole_band"), ({"scales": (3.0,)}, "scales")],
)
def test_proposal_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ProposalConfig(**kwargs)
