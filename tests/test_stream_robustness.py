"""Stream engine in long or unusual sessions: id reuse, late first decodes, restarts, bounded
counters, encoder errors, demo wiring (cursor vs gaze state), video writers, video sources."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.gaze import GazeSample
from engine.stream.engine import StreamEngine
from engine.stream.events import Prompt, ReleaseEvent, SelectEvent
from engine.stream.latency import HUD_SAMPLES, LatencyRecorder
from engine.stream.prompt_sources import CursorPrompts, GazePrompts
from engine.stream.results import RECENT_KEYFRAMES, EngineStats
from engine.stream.scheduler import RECENT_ENCODES, AsyncEncoder, KeyframePolicy
from engine.stream.tracker import Tracker
from engine.types import Embedding, Frame
from tests.stream_fakes import FakeSegmenter, fake_spec, green_scene

DEMOS = Path(__file__).resolve().parents[1] / "demos"


def _demo(name: str):  # noqa: ANN202
    sys.path.insert(0, str(DEMOS))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(DEMOS))


# --- ids ----------------------------------------------------------------------------------------
def test_object_ids_are_reused_after_release() -> None:
    tracker = Tracker()
    ids = []
    for _ in range(300):  # a long session: more selections than ids, never more than one live
        ids.append(tracker.add(Prompt.point(1, 1)))
        tracker.remove(ids[-1])
    assert ids[:255] == list(range(1, 256)) and ids[255:] == list(range(1, 46))  # fresh ids first, then reused
    for _ in range(255):
        tracker.add(Prompt.point(1, 1))
    assert len(tracker) == 255
    with pytest.raises(ValueError, match="all 255 object ids are tracked.*release objects"):
        tracker.add(Prompt.point(1, 1))
    tracker.remove(7)
    assert tracker.add(Prompt.point(1, 1)) == 7  # the only free one


# --- a user prompt decoded frames after it was given (async encoder) ------------------------------
_OFFSET_PX = {0: 0, 2: 25, 4: -25}  # camera x offset of frames 0, 2, 4 over a wide still scene
_WIDE, _ = green_scene((240, 400), centre_xy=(200, 120), radius_px=15, seed=7)


def _pan_frame(k: int) -> Frame:
    x0 = 40 + _OFFSET_PX[k]
    return Frame(k, k * 33_333_333, np.ascontiguousarray(_WIDE[:, x0:x0 + 320]))


def _disc_xy(k: int) -> tuple[int, int]:
    return 160 - _OFFSET_PX[k], 120


@pytest.mark.parametrize("prompt_frame", [0, 2])  # 0: the keyframe; 2: neither keyframe nor decode frame
def test_user_prompt_is_mapped_from_the_frame_it_was_given_on(prompt_frame: int) -> None:
    eng = StreamEngine(FakeSegmenter(encode_s=1.0), fake_spec(), KeyframePolicy(interval=50), async_encoder=True)
    try:
        if prompt_frame == 0:
            eng.add_object(Prompt.point(*_disc_xy(0)))
        assert eng.step(_pan_frame(0)).status == "no_embedding"  # keyframe 0 submitted, encoding 1 s
        if prompt_frame == 2:
            eng.add_object(Prompt.point(*_disc_xy(2)))
        assert eng.step(_pan_frame(2)).status == "no_embedding"
        assert eng.encoder.wait_idle(10)
        res = eng.step(_pan_frame(4))  # first decode: keyframe 0, frame 4 (50 px from frame 2)
    finally:
        eng.close()
    obj = res.objects[0]
    x, y = _disc_xy(4)
    assert res.keyframe_index == 0 and obj.status == "ok" and obj.mask[y, x], (obj.status, obj.mask.sum())


# --- frame indices going backwards ----------------------------------------------------------------
def test_frame_indices_going_back_restart_the_keyframes() -> None:
    rgb, disc = green_scene((120, 160), centre_xy=(80, 60), radius_px=20)
    eng = StreamEngine(FakeSegmenter(), fake_spec(), KeyframePolicy(interval=5), motion="none")
    eng.add_object(Prompt.box([55, 35, 105, 85]))
    for i in range(20, 23):
        eng.step(Frame(i, i, rgb))
    second = [eng.step(Frame(i, i, rgb)) for i in range(0, 7)]  # a new source on the same engine
    assert second[0].keyframe_reason == "restart" and second[0].keyframe_index == 0
    assert [r.keyframe_index for r in second] == [0, 0, 0, 0, 0, 5, 5]
    assert all(r.objects[0].status == "ok" for r in second)
    assert list(eng.stats.keyframes_used) == [20, 0, 5]


# --- encoder errors ---------------------------------------------------------------------------------
def _raise(exc: BaseException):  # noqa: ANN202
    def encode(rgb: np.ndarray, index: int) -> Embedding:
        raise exc
    return encode


def test_ctrl_c_in_the_sync_encoder_is_not_wrapped() -> None:
    rgb, _ = green_scene((32, 40))
    with pytest.raises(KeyboardInterrupt):
        AsyncEncoder(_raise(KeyboardInterrupt()), asynchronous=False).submit(Frame(0, 0, rgb), rgb[..., 0])
    with pytest.raises(RuntimeError, match="keyframe encoder failed: OSError"):
        AsyncEncoder(_raise(OSError("disk")), asynchronous=False).submit(Frame(0, 0, rgb), rgb[..., 0])


def test_worker_killed_by_a_base_exception_does_not_hang_wait_idle() -> None:
    rgb, _ = green_scene((32, 40))
    enc = AsyncEncoder(_raise(SystemExit(3)), asynchronous=True)
    assert enc.submit(Frame(0, 0, rgb), rgb[..., 0])
    with pytest.raises(RuntimeError, match="keyframe encoder failed: SystemExit"):
        enc.wait_idle(5)
    enc.close()


# --- bounded counters, cheap HUD ----------------------------------------------------------------------
def test_counters_are_bounded_with_totals() -> None:
    stats = EngineStats()
    for i in range(RECENT_KEYFRAMES + 5):
        stats.add_keyframe(i)
    assert len(stats.keyframes_used) == RECENT_KEYFRAMES and stats.keyframes_total == RECENT_KEYFRAMES + 5
    assert stats.keyframes_used[-1] == RECENT_KEYFRAMES + 4
    rgb, _ = green_scene((32, 40))
    enc = AsyncEncoder(lambda im, i: Embedding(np.zeros((1, 256, 64, 64), np.float32), (32, 40), (32, 40), i),
                       asynchronous=False)
    for i in range(3):
        enc.submit(Frame(i, 0, rgb), rgb[..., 0])
    assert enc.stats.encode_ms.maxlen == RECENT_ENCODES and len(enc.stats.encode_ms) == 3
    assert enc.stats.encode_ms_total == pytest.approx(sum(enc.stats.encode_ms))


def test_hud_summarises_only_recent_samples() -> None:
    rec = LatencyRecorder()
    for _ in range(2000):
        rec.add("frame", 100.0)
    for _ in range(HUD_SAMPLES):
        rec.add("frame", 1.0)
    (line,) = [ln for ln in rec.hud_lines() if ln.startswith("frame")]
    assert line.split()[1:] == ["1.0", "/", "1.0", "ms"], line
    assert rec.to_json()["stages"]["frame"]["p50_ms"] == 100.0  # metrics keep the whole window


# --- gaze counters and the live demo's cursor/gaze state ------------------------------------------------
def test_gaze_prompts_count_out_of_order_samples() -> None:
    gp = GazePrompts()
    for t in (10, 20, 20, 15, 30):
        gp.push(GazeSample(t * 1_000_000, 100.0, 100.0, 1.0))
    assert gp.dropped_out_of_order == 2


def _live_app():  # noqa: ANN202
    live_select = _demo("live_select")
    app = live_select.App.__new__(live_select.App)  # the wiring only: a fake engine, no window
    app.engine = StreamEngine(FakeSegmenter(), fake_spec())
    app.cursor, app.gaze, app.mouse_gaze = CursorPrompts(), GazePrompts(), GazePrompts()
    app.pending, app.mouse_as_gaze, app.live_gaze = [], False, None
    return live_select, app


def _click(app, x: int, y: int, button: str = "left") -> None:  # noqa: ANN001
    down, up = (cv2.EVENT_LBUTTONDOWN, cv2.EVENT_LBUTTONUP) if button == "left" else (
        cv2.EVENT_RBUTTONDOWN, cv2.EVENT_RBUTTONUP)
    app.on_mouse(down, x, y, 0)
    app.on_mouse(up, x, y, 0)


def test_live_select_gaze_selection_does_not_inherit_cursor_points() -> None:
    _, app = _live_app()
    _click(app, 50, 60)
    app.apply()
    assert app.cursor.current_object_id == 1
    app.pending.append(SelectEvent(Prompt.point(200, 100, source="gaze"), None, 0))
    app.apply()
    assert app.cursor.current_object_id is None  # the gaze object (2) is not the cursor's
    _click(app, 70, 80, "right")
    assert app.pending == []  # a background point refines nothing, not object 2
    _click(app, 50, 60)
    app.apply()
    assert app.cursor.current_object_id == 3  # a new cursor object (1 and 2 are live)
    app.pending.append(ReleaseEvent(None, 0))
    app.apply()
    assert app.cursor.current_object_id is None and len(app.engine.tracker) == 0
    app.engine.close()


def test_live_select_key_c_resets_gaze_dwell_and_mouse_gaze_has_its_own_clock() -> None:
    _, app = _live_app()
    for k in range(30):  # a live tracker on epoch ns, a dwell in progress
        app.gaze.push(GazeSample(1_700_000_000_000_000_000 + k * 8_333_333, 200.0, 150.0, 1.0))
    assert app.gaze.dwell.dwell_centroid_xy is not None
    app.on_key(ord("c"))
    assert app.gaze.dwell.dwell_centroid_xy is None
    app.on_key(ord("g"))
    app.on_mouse(cv2.EVENT_MOUSEMOVE, 100, 100, 0)  # monotonic ns: far before the tracker's clock
    assert app.mouse_gaze.gaze_xy is not None
    assert app.gaze.dropped_out_of_order == 0 and app.mouse_gaze.dropped_out_of_order == 0
    assert "gaze out-of-order 0" in app.gaze_counters()
    app.engine.close()


# --- video writers that cannot open ---------------------------------------------------------------------
def test_demo_video_writers_that_cannot_open_raise(tmp_path: Path) -> None:
    bad = tmp_path / "no_such_dir" / "out.mp4"
    _, app = _live_app()
    app.args, app.writer = argparse.Namespace(out=bad), None
    with pytest.raises(OSError, match="cannot write .*no_such_dir.*out.mp4"):
        app.record(np.zeros((48, 64, 3), np.uint8), 30.0)
    app.engine.close()
    gaze_replay = _demo("gaze_replay")
    csv = tmp_path / "gaze.csv"
    csv.write_text("timestamp_ns,x,y,confidence\n0,10,10,1.0\n")
    rep = gaze_replay.App.__new__(gaze_replay.App)
    rep.args = argparse.Namespace(source="synthetic:2", gaze=csv, out=bad, gaze_offset_ms=None, show=False,
                                  max_frames=None)
    rep.engine, rep.replay, rep.writer, rep.selections = StreamEngine(FakeSegmenter(), fake_spec()), None, None, 0
    with pytest.raises(OSError, match="cannot write .*no_such_dir.*out.mp4"):
        rep.run()


# --- video sources: a lost last frame is a bad frame, not the end -----------------------------------------
class _FakeCapture:
    """``cv2.VideoCapture`` double: a 5-frame file whose frames in ``lost`` fail to decode."""

    def __init__(self, count: int, lost: set[int]) -> None:
        self.count, self.lost, self.pos = count, lost, 0

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        i, self.pos = self.pos, self.pos + 1
        return (False, None) if i >= 5 or i in self.lost else (True, np.full((8, 8, 3), i, np.uint8))

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FPS: 10.0, cv2.CAP_PROP_FRAME_COUNT: float(self.count)}.get(prop, 0.0)

    def release(self) -> None:
        pass


def _video(count: int, lost: set[int]):  # noqa: ANN202
    from engine.stream.sources import VideoSource, _CaptureSource

    src = VideoSource.__new__(VideoSource)
    _CaptureSource.__init__(src, _FakeCapture(count, lost), "video fake.mp4", 10, False)
    return src


def test_video_source_counts_a_lost_last_frame_and_has_a_length() -> None:
    src = _video(5, {4})
    assert [f.index for f in src] == [0, 1, 2, 3] and src.stats.bad == 1 and len(src) == 5
    src = _video(0, {2})  # no frame count in the header: a failed read ends the file
    assert [f.index for f in src] == [0, 1] and src.stats.bad == 0
    with pytest.raises(TypeError, match="announces no frame count"):
        len(src)
    src = _video(50, set())  # the header overcounts and the file breaks off after frame 4
    src.max_failed_reads = 3
    with pytest.warns(UserWarning, match="ended at frame 7 after 3 failed reads"):
        assert [f.index for f in src] == [0, 1, 2, 3, 4]
    assert len(src) == 7  # frames 5 and 6 were lost inside it; nothing is promised past the break


def test_explicit_object_id_does_not_move_the_round_robin() -> None:
    tracker = Tracker()
    assert [tracker.add(Prompt.point(1, 1)) for _ in range(3)] == [1, 2, 3]
    tracker.remove(1)
    assert tracker.add(Prompt.point(1, 1), object_id=255) == 255
    assert tracker.add(Prompt.point(1, 1)) == 4  # a new id per selection, not the released 1


def test_roi_margin_is_used_only_where_it_stays_exact() -> None:
    from engine.stream.decoding import effective_roi_margin

    class Roi:
        supports_roi = True

    assert effective_roi_margin(0.25, Roi(), feeds_masks_back=False) == 0.25
    assert effective_roi_margin(None, object(), feeds_masks_back=True) is None
    with pytest.warns(UserWarning, match="ignored: the backend decodes whole masks only"):
        assert effective_roi_margin(0.25, object(), feeds_masks_back=False) is None
    with pytest.warns(UserWarning, match="ignored: the tracker feeds low-res masks back"):
        assert effective_roi_margin(0.25, Roi(), feeds_masks_back=True) is None
    with pytest.raises(ValueError, match="roi_margin must be >= 0"):
        effective_roi_margin(-1.0, Roi(), feeds_masks_back=False)
    point_model = StreamEngine(FakeSegmenter(), fake_spec(), KeyframePolicy(interval=5))
    assert point_model.tracker.feeds_masks_back  # so a point-capable model's engine never windows
