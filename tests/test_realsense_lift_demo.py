"""``demos/realsense_lift.py`` around its source: a camera lost mid-run, lifting every N-th
processed frame when the camera drops frames, and an overlay video OpenCV cannot write. The
source is a double (no pyrealsense2 needed), the model the green double of ``tests.stream_fakes``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.stream.sources import SourceError, SourceStats
from engine.types import Frame
from tests.script_helpers import count_video_frames, load_script
from tests.stream_fakes import green_scene


def _load_demo() -> Any:
    return load_script("demos/realsense_lift.py", "realsense_lift_demo_io")


class GappySource:
    """``count`` colour frames without depth whose indices step by ``step`` (a camera that drops
    every other frame), then a ``SourceError`` when ``fail``."""

    fps = 30.0
    intrinsics = None

    def __init__(self, count: int, step: int = 1, fail: bool = False) -> None:
        self.count, self.step, self.fail = count, step, fail
        self.rgb, _ = green_scene((120, 160), radius_px=25)
        self.stats = SourceStats()

    def __iter__(self) -> Iterator[Frame]:
        for k in range(self.count):
            self.stats.delivered += 1
            yield Frame(k * self.step, int(k * self.step * 1e9 / self.fps), self.rgb)
        if self.fail:
            raise SourceError("RealSense camera disconnected: no frames for 5 consecutive waits; reconnect it")

    def close(self) -> None:
        pass


def _run(monkeypatch: pytest.MonkeyPatch, src: GappySource, out: Path, *extra: str) -> int:
    from engine.stream.engine import StreamEngine
    from engine.stream.scheduler import KeyframePolicy
    from tests.stream_fakes import FakeSegmenter, fake_spec

    demo = _load_demo()
    monkeypatch.setattr(demo.App, "open_source", lambda self: src)
    engine = StreamEngine(FakeSegmenter(), fake_spec(), KeyframePolicy(interval=3))
    return demo.main(["--headless", "--out", str(out), "--box", "55,35,105,85", *extra], engine)




def test_camera_lost_mid_run_saves_what_was_gathered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert _run(monkeypatch, GappySource(4, fail=True), out) == 1
    assert "input stopped after 4 frames: RealSense camera disconnected" in capsys.readouterr().err
    report = json.loads((out / "objects.json").read_text())
    assert report["frames"] == 4 and "RealSense camera disconnected" in report["error"]
    assert report["objects"]["1"]["lift_statuses"] == {"no_depth": 4}
    assert count_video_frames(out / "overlay.mp4") == 4 and (out / "overlay_last.png").is_file()


def test_lift_every_counts_processed_frames_not_camera_indices(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    # indices 0, 2, 4, ... 10 (the camera dropped every other frame): every index is even, yet
    # --lift-every 2 must lift every second frame processed
    assert _run(monkeypatch, GappySource(6, step=2), out, "--lift-every", "2") == 0
    report = json.loads((out / "objects.json").read_text())
    assert "error" not in report and report["frames"] == 6
    assert report["objects"]["1"]["lift_statuses"] == {"no_depth": 3}


def test_overlay_video_that_cannot_be_opened_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.demo import overlay

    class ClosedWriter:
        def __init__(self, *args: Any) -> None:
            pass

        def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
            return False

    monkeypatch.setattr(overlay.cv2, "VideoWriter", ClosedWriter)
    with pytest.raises(OSError, match=r"cannot write .*overlay.mp4 with OpenCV's mp4v codec; run without --out"):
        _run(monkeypatch, GappySource(3), tmp_path / "run")
