"""Prompt sources (cursor, gaze replay) and the latency recorder / HUD."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.stream.events import CursorEvent, HoverEvent, Prompt, ReleaseEvent, SelectEvent
from engine.stream.hud import draw_hud
from engine.stream.latency import LatencyRecorder
from engine.stream.prompt_sources import CursorPrompts, GazeReplay


def _ev(kind: str, x: float, y: float, button: str = "left", shift: bool = False) -> CursorEvent:
    return CursorEvent(kind, x, y, button, shift)  # type: ignore[arg-type]


def _feed(cur: CursorPrompts, events: list[CursorEvent]) -> list:
    out = []
    for e in events:
        out += cur.feed(e)
    return out


@pytest.mark.parametrize(
    "events,kind,points,labels,box",
    [
        ([_ev("down", 10, 20), _ev("up", 11, 21)], SelectEvent, [[10, 20]], [1], None),
        ([_ev("down", 10, 20), _ev("move", 60, 50), _ev("up", 100, 90)], SelectEvent, None, None, [10, 20, 100, 90]),
        ([_ev("down", 100, 90), _ev("up", 10, 20)], SelectEvent, None, None, [10, 20, 100, 90]),
    ],
)
def test_cursor_click_and_drag(events: list, kind: type, points: list | None, labels: list | None,
                               box: list | None) -> None:
    (out,) = _feed(CursorPrompts(), events)
    assert isinstance(out, kind) and out.object_id is None
    if points is None:
        assert out.prompt.points_xy is None
    else:
        assert out.prompt.points_xy.tolist() == points and out.prompt.labels.tolist() == labels
    assert (out.prompt.box_xyxy is None) if box is None else out.prompt.box_xyxy.tolist() == box


@pytest.mark.parametrize("button,shift", [("right", False), ("left", True)])
def test_cursor_background_point_refines_current_object(button: str, shift: bool) -> None:
    cur = CursorPrompts()
    assert _feed(cur, [_ev("down", 5, 5, button, shift), _ev("up", 5, 5, button, shift)]) == []  # nothing to refine
    _feed(cur, [_ev("down", 10, 20), _ev("up", 10, 20)])
    cur.current_object_id = 4
    (out,) = _feed(cur, [_ev("down", 50, 60, button, shift), _ev("up", 50, 60, button, shift)])
    assert out.object_id == 4
    assert out.prompt.points_xy.tolist() == [[10, 20], [50, 60]] and out.prompt.labels.tolist() == [1, 0]


def test_cursor_hover_mode_and_release() -> None:
    cur = CursorPrompts(hover=True)
    (out,) = cur.feed(_ev("move", 30, 40, "none"))
    assert isinstance(out, HoverEvent) and out.prompt.points_xy.tolist() == [[30, 40]]
    assert cur.set_hover(False) == [HoverEvent(None)]
    assert cur.feed(_ev("move", 31, 40, "none")) == []
    assert isinstance(cur.release_all()[0], ReleaseEvent)


def test_gaze_replay_dwell_selects_then_release(tmp_path: Path) -> None:
    rows = ["timestamp_ns,x,y,confidence"]
    t = 1_000_000_000
    rng = np.random.default_rng(0)
    for i in range(100):  # 1 s at 100 Hz on (200, 150) with jitter, then 1.5 s elsewhere
        rows.append(f"{t + i * 10_000_000},{200 + rng.normal(0, 2):.2f},{150 + rng.normal(0, 2):.2f},0.9")
    for i in range(100, 250):
        rows.append(f"{t + i * 10_000_000},500,400,0.9")
    csv = tmp_path / "gaze.csv"
    csv.write_text("\n".join(rows) + "\n")
    replay = GazeReplay.from_csv(csv, (480, 640))
    frame_ns = [k * 33_333_333 for k in range(80)]  # 30 fps clock starting at 0
    got = {k: replay.events_until(ts) for k, ts in enumerate(frame_ns)}
    selects = [(k, e) for k, evs in got.items() for e in evs if isinstance(e, SelectEvent)]
    k0, first = selects[0]
    assert 17 <= k0 <= 20, k0  # 600 ms dwell -> frame 18 at 30 fps
    assert np.allclose(first.prompt.points_xy, [[200, 150]], atol=6) and first.prompt.source == "gaze"
    assert any(isinstance(e, ReleaseEvent) for evs in got.values() for e in evs)
    assert replay.gaze_xy is not None


def test_latency_recorder_percentiles_json_and_hud() -> None:
    rec = LatencyRecorder()
    for i in range(100):
        rec.add("decode", float(i))
        rec.add_age(i % 5)
        rec.tick(now_ns=i * 50_000_000)
    js = rec.to_json()
    assert js["stages"]["decode"]["p50_ms"] == pytest.approx(49.5)
    assert js["stages"]["decode"]["p95_ms"] == pytest.approx(94.05)
    assert js["fps"] == pytest.approx(20.0) and js["embedding_age_frames"]["max"] == 4
    img = np.zeros((120, 200, 3), np.uint8)
    out = draw_hud(img, rec.hud_lines())
    assert out is img and img.max() == 255


def test_prompt_validation() -> None:
    with pytest.raises(ValueError, match="empty Prompt"):
        Prompt()
    with pytest.raises(ValueError, match="labels must be 1"):
        Prompt(np.array([[1.0, 2.0]]), np.array([2.0]))
    with pytest.raises(ValueError, match="x0 <= x1"):
        Prompt.box([10, 0, 5, 5])


@pytest.mark.parametrize("spec", ["udp:x", "udp:1:2:3", "tcp:5005", "pupil:a:b", ""])
def test_open_live_gaze_bad_spec(spec: str) -> None:
    from engine.stream.prompt_sources import open_live_gaze

    with pytest.raises(ValueError, match="bad live gaze source"):
        open_live_gaze(spec)


def test_live_udp_gaze_dwell_selects_in_the_demo_app() -> None:
    """A tracker streaming a steady fixation over UDP selects through live_select's App wiring."""
    import json
    import socket
    import sys
    import time

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "demos"))
    import live_select

    app = live_select.App.__new__(live_select.App)  # the gaze wiring only: no model needed
    app.gaze, app.pending = live_select.GazePrompts(), []
    app.live_gaze = live_select.open_live_gaze("udp:0")
    try:
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t0 = 1_000_000_000
        for k in range(120):  # 1 s at 120 Hz on (200, 150), with a bad packet in the middle
            line = {"t_ns": t0 + k * 8_333_333, "x": 200.0 + (k % 3), "y": 150.0, "conf": 1.0}
            sender.sendto(json.dumps(line).encode(), app.live_gaze.address)
            if k == 60:
                sender.sendto(b"not json", app.live_gaze.address)
        sender.close()
        got, deadline = 0, time.monotonic() + 5
        with pytest.warns(UserWarning, match="malformed"):
            while got < 120 and time.monotonic() < deadline:
                got += app.poll_live_gaze()
    finally:
        app.live_gaze.close()
    assert got == 120 and app.live_gaze.stats["malformed"] == 1
    selects = [e for e in app.pending if isinstance(e, SelectEvent)]
    assert len(selects) == 1
    (x, y), = selects[0].prompt.points_xy
    assert abs(x - 201) < 3 and abs(y - 150) < 3
