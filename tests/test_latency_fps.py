"""Engine fps (the per-frame ``StreamEngine.step``) and wall fps are told apart, in JSON and the HUD."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.stream.hud import draw_hud
from engine.stream.latency import LatencyRecorder


def test_engine_fps_is_the_step_rate_wall_fps_the_tick_rate() -> None:
    rec = LatencyRecorder()
    assert math.isnan(rec.engine_fps())
    for i in range(40):  # a 20 ms step every 100 ms: the rest is rendering, sinks and waiting
        rec.add("frame", 20.0)
        rec.tick(now_ns=i * 100_000_000)
    assert rec.engine_fps() == pytest.approx(50.0) and rec.fps() == pytest.approx(10.0)
    js = rec.to_json()
    assert js["engine_fps"] == pytest.approx(50.0) and js["fps"] == pytest.approx(10.0)
    first = rec.hud_lines()[0]
    assert "engine  50.0 fps" in first and "wall  10.0 fps" in first, first
    rec.add("frame", 80.0)  # the HUD's engine fps follows the last 30 steps
    assert rec.engine_fps(last=30) == pytest.approx(1e3 / ((29 * 20 + 80) / 30))
    assert draw_hud(np.zeros((200, 400, 3), np.uint8), rec.hud_lines()).max() == 255
