"""``arsel demo``'s pipeline around the model: an input that fails mid-run, RealSense frames
without depth, ``--device`` for the runtime, and the bounded per-object fusion frames. The model
is the exact green-pixel double of ``tests.stream_fakes``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.demo.objects import ObjectLog
from engine.stream.sources import SourceError, SourceStats
from engine.types import CameraIntrinsics, Frame
from tests.stream_fakes import FakeSegmenter, fake_spec, green_scene

SMALL = CameraIntrinsics(160, 120, 100.0, 100.0, 79.5, 59.5, 0.001)


class ScriptedSource:
    """A frame source double: ``count`` frames (no depth on indices in ``no_depth``), then a
    ``SourceError`` when ``fail`` (a camera unplugged), else the end of the stream."""

    fps = 30.0

    def __init__(self, count: int, hw: tuple[int, int] = (480, 640), depth: bool = False,
                 no_depth: tuple[int, ...] = (), fail: bool = False) -> None:
        self.count, self.depth, self.no_depth, self.fail = count, depth, set(no_depth), fail
        self.rgb, _ = green_scene(hw, radius_px=min(hw) / 5)
        self.intr = SMALL if hw == (120, 160) else None
        self.stats = SourceStats()
        self.closed = False

    def __iter__(self) -> Iterator[Frame]:
        for i in range(self.count):
            depth = None
            if self.depth and i not in self.no_depth:
                depth = np.full(self.rgb.shape[:2], 1000, np.uint16)
            self.stats.delivered += 1
            yield Frame(i, int(i * 1e9 / self.fps), self.rgb, depth, self.intr if depth is not None else None)
        if self.fail:
            raise SourceError("RealSense camera disconnected: no frames for 5 consecutive waits; reconnect it")

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Replace the model with the green double; returns what ``from_name`` was asked for."""
    from engine.stream.engine import StreamEngine

    asked: dict[str, Any] = {}

    def from_name(cls, name, checkpoint=None, device="cpu", backend="torch", threads=None,  # noqa: ANN001, ANN202
                  **kwargs):
        asked.update(name=name, device=device, backend=backend)
        return cls(FakeSegmenter(), fake_spec(box_only=True), **kwargs)

    monkeypatch.setattr(StreamEngine, "from_name", classmethod(from_name))
    return asked


def _use_source(monkeypatch: pytest.MonkeyPatch, src: ScriptedSource) -> None:
    from engine.demo import source

    monkeypatch.setattr(source, "open_input", lambda config: (src, source.CentreGaze()))


# ---------------------------------------------------------------- an input that fails mid-run
def test_source_error_mid_run_still_writes_the_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture, fake_engine: dict) -> None:
    from engine.cli import main

    src = ScriptedSource(25, fail=True)  # the centre disc is selected after 18 frames of dwell
    _use_source(monkeypatch, src)
    out = tmp_path / "run"
    assert main(["demo", "--camera", "0", "--frames", "100", "--out", str(out), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "stopped after 25 frames: RealSense camera disconnected" in captured.err
    assert "stopped early" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 25 and "RealSense camera disconnected" in summary["error"]
    assert len(summary["objects"]) == 1 and summary["objects"][0]["frames_selected"] > 0
    assert (out / "gaze.csv").is_file() and summary["overlay_frames"] == 25
    assert src.closed


def test_source_error_before_any_frame_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture, fake_engine: dict) -> None:
    from engine.cli import main

    _use_source(monkeypatch, ScriptedSource(0, fail=True))
    assert main(["demo", "--camera", "0", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "delivered no frames (SourceError: RealSense camera disconnected" in err


def test_a_complete_run_has_no_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_engine: dict) -> None:
    from engine.demo.pipeline import DemoConfig, run_demo

    _use_source(monkeypatch, ScriptedSource(5))
    summary = run_demo(DemoConfig(frames=5, input="camera", video=False), tmp_path, progress=False)
    assert "error" not in summary and summary["frames"] == 5


# ---------------------------------------------------------------- RealSense frames without depth
def test_realsense_frames_without_depth_are_counted_not_skipping_lifting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_engine: dict) -> None:
    from engine.demo.pipeline import DemoConfig, run_demo

    _use_source(monkeypatch, ScriptedSource(12, hw=(120, 160), depth=True, no_depth=(2, 5, 8)))
    summary = run_demo(DemoConfig(frames=12, input="realsense", video=False), tmp_path, progress=False)
    assert summary["lifting"] == "tsdf" and summary["no_depth_frames"] == 3
    assert summary["latency_ms"]["odometry"]["n"] == 9


def test_plain_camera_says_lifting_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              fake_engine: dict) -> None:
    from engine.demo.pipeline import DemoConfig, run_demo

    _use_source(monkeypatch, ScriptedSource(4))
    summary = run_demo(DemoConfig(frames=4, input="camera", video=False), tmp_path, progress=False)
    assert summary["lifting"].startswith("skipped: the input has no depth")


# ---------------------------------------------------------------- --device
def _parse(argv: list[str]) -> Any:
    import argparse

    from engine.demo.cli import _config, add_demo_parser

    parser = argparse.ArgumentParser()
    add_demo_parser(parser.add_subparsers(dest="command"))
    return _config(parser.parse_args(["demo", *argv]))


def test_device_reaches_the_backend(monkeypatch: pytest.MonkeyPatch, fake_engine: dict) -> None:
    from engine.backends import factory
    from engine.demo.pipeline import build_engine

    config = _parse(["--backend", "tensorrt", "--device", "cuda:0"])
    assert (config.backend, config.device) == ("tensorrt", "cuda:0")
    build_engine(config).close()
    assert fake_engine["device"] == "cuda:0" and fake_engine["backend"] == "tensorrt"

    resolved: list[str] = []
    monkeypatch.setattr(factory, "resolve_auto", lambda device="cpu": resolved.append(device) or "onnxruntime")
    build_engine(_parse(["--device", "cuda"])).close()  # --backend auto
    assert resolved == ["cuda"] and fake_engine == {"name": "lite_medsam", "device": "cuda", "backend": "onnxruntime"}


def test_tensorrt_without_cuda_names_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from engine.cli import main

    assert main(["demo", "--backend", "tensorrt", "--out", str(tmp_path / "o")]) == 2
    assert "--backend tensorrt runs on a CUDA GPU: add --device cuda" in capsys.readouterr().err
    with pytest.raises(ValueError, match="pass --device cuda"):
        from engine.demo.pipeline import DemoConfig

        DemoConfig(backend="tensorrt")


# ---------------------------------------------------------------- fusion frames stay evenly spread
@pytest.mark.parametrize("offered, keep", [(7, 10), (100, 10), (1000, 10), (1000, 3), (333, 7)])
def test_fusion_frames_are_evenly_spread_over_the_whole_run(offered: int, keep: int) -> None:
    log = ObjectLog(1)
    for i in range(offered):
        log.add_fusion(i, keep)  # type: ignore[arg-type]  # the frame's position stands for the frame
    kept = np.array(log.fusion)
    assert log.fusion_seen == offered and kept[0] == 0
    if offered < 2 * keep:
        assert kept.tolist() == list(range(offered))
        return
    assert keep <= len(kept) < 2 * keep
    gaps = set(np.diff(kept).tolist())
    assert gaps == {log.fusion_stride}, gaps  # one spacing from the first frame to the last
    assert offered - 1 - kept[-1] < log.fusion_stride  # the newest frames are no denser than the oldest
