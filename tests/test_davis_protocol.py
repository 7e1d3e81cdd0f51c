"""DAVIS protocol of the stream evaluation: frame 0 (the prompt) leaves the mean J; the shared
davis2016 sequences read like blackswan."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from engine.stream.evaluate import TrackEval, davis_annotations
from engine.stream.sources import folder_images


def test_mean_j_excludes_the_prompted_frame() -> None:
    ev = TrackEval(np.array([1.0, 0.5, 0.7]), (0,), {"embedding_age_frames": {"mean": 1.5, "max": 3}})
    assert ev.mean_j_after_first == pytest.approx(0.6) and ev.embedding_age_mean == 1.5
    assert math.isnan(TrackEval(np.array([1.0]), (0,), {}).mean_j_after_first)
    assert TrackEval(np.array([1.0]), (0,), {}).embedding_age_mean is None


@pytest.mark.parametrize("seq, frames", [("davis_blackswan", 50), ("davis2016/car-shadow", 40),
                                         ("davis2016/dog", 60), ("davis2016/camel", 90)])
def test_davis_layouts_read_alike(data_dir: Path, seq: str, frames: int) -> None:
    folder = data_dir / seq
    truth = davis_annotations(folder)
    assert len(truth) == len(folder_images(folder)) == frames
    assert truth[0].shape == (480, 854) and all(t.any() for t in truth)
