"""The live-schedule evaluation (``engine.stream.live_eval``, ``bench/bench_live.py``): keyframes
adopted a set number of frames after their request, and the same settings giving the same masks."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from engine.stream.live_eval import LateEncoder, evaluate_live
from engine.types import Frame


def _frame(i: int) -> Frame:
    return Frame(i, i, np.zeros((8, 8, 3), np.uint8))


def test_late_encoder_adopts_a_request_delay_frames_later() -> None:
    encoded: list[int] = []
    enc = LateEncoder(lambda rgb, index: encoded.append(index) or index, delay=8)
    grey = np.zeros((4, 4), np.uint8)
    assert enc.submit(_frame(3), grey) and enc.busy
    enc.advance(3)  # the first keyframe: at once
    assert enc.latest().frame_index == 3 and not enc.busy  # type: ignore[union-attr]
    assert enc.submit(_frame(5), grey)
    assert not enc.submit(_frame(6), grey) and enc.stats.dropped_busy == 1  # one at a time, as while encoding
    enc.advance(12)
    assert enc.latest().frame_index == 3 and encoded == [3]  # type: ignore[union-attr]
    enc.advance(13)
    assert enc.latest().frame_index == 5 and encoded == [3, 5] and enc.adopted == [(3, 3), (5, 13)]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="delay"):
        LateEncoder(lambda rgb, index: index, delay=-1)


def test_evaluate_live_is_deterministic_and_lags(data_dir: Path) -> None:
    """Blackswan from its box, serve settings, every 2nd frame stepped, keyframes 6 frames late: the
    swan is tracked, every keyframe after the first was adopted at least 6 frames after its request,
    and a second run gives the same J, statuses and areas frame for frame."""
    from engine.models.registry import get_spec
    from engine.serve.cli import LIVE_MAX_CORRECTION_DECODES, LIVE_REUSE_DECODE_PX, LIVE_ROI_MARGIN, engine_config
    from engine.stream.engine import StreamEngine
    from engine.stream.evaluate import CachingBackend
    from engine.stream.scheduler import KeyframePolicy
    from tests.test_live_settings import _lite_medsam_torch

    backend = CachingBackend(_lite_medsam_torch())
    config = engine_config(argparse.Namespace(reuse_decode_px=LIVE_REUSE_DECODE_PX,
                                              max_correction_decodes=LIVE_MAX_CORRECTION_DECODES,
                                              roi_margin=LIVE_ROI_MARGIN))
    runs = []
    for _ in range(2):
        eng = StreamEngine(backend, get_spec("lite_medsam"), KeyframePolicy(interval=5), config=config)
        ev = evaluate_live(eng, data_dir / "davis_blackswan", stride=2, delay=6, frames=30)
        runs.append((ev, eng.encoder.adopted))
    (ev, adopted), (ev2, adopted2) = runs
    assert len(ev.j_per_frame) == 15 and ev.mean_j_after_first > 0.3, ev.j_per_frame
    assert len(adopted) >= 3 and adopted[0] == (0, 0), adopted
    assert all(at - k >= 6 for k, at in adopted[1:]), adopted
    assert ev.latency["embedding_age_frames"]["max"] >= 6
    assert adopted2 == adopted and ev2.statuses == ev.statuses
    assert np.array_equal(ev2.j_per_frame, ev.j_per_frame) and np.array_equal(ev2.area_px, ev.area_px)
