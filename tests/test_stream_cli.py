"""``arsel track``: one mask per input frame, metrics.json, overlay.mp4 (fake model + one real run)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.stream import track_cli
from engine.stream.engine import StreamEngine
from tests.stream_fakes import FakeSegmenter, fake_spec, green_scene


def _fake(monkeypatch: pytest.MonkeyPatch, encode_s: float = 0.0) -> None:
    def from_name(cls, name, checkpoint=None, device="cpu", backend="torch", threads=None,  # noqa: ANN001, ANN202
                  **kwargs):
        return cls(FakeSegmenter(encode_s=encode_s), fake_spec(box_only=True), **kwargs)

    monkeypatch.setattr(StreamEngine, "from_name", classmethod(from_name))


@pytest.fixture()
def fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """``StreamEngine.from_name`` builds the green-pixel fake instead of loading weights."""
    _fake(monkeypatch)


@pytest.fixture()
def slow_fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """As ``fake_model``, with a 0.3 s encode (a first keyframe takes several frames)."""
    _fake(monkeypatch, encode_s=0.3)


def _folder(tmp_path: Path, n: int = 7, bad: tuple[int, ...] = (), step_px: float = 10.0,
            second_disc: bool = False, small: tuple[int, ...] = ()) -> Path:
    """A disc moving right by ``step_px`` a frame over a still background; ``bad`` frames corrupt;
    ``second_disc``: a still disc at (260, 190), r 30; ``small`` frames are 200x300 instead of 240x320."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(n):
        rgb, _ = green_scene((240, 320), centre_xy=(120 + step_px * i, 120), radius_px=40)
        if second_disc:
            rgb2, disc2 = green_scene((240, 320), centre_xy=(260, 190), radius_px=30, seed=5)
            rgb[disc2] = rgb2[disc2]
        if i in small:
            rgb = np.ascontiguousarray(rgb[:200, :300])
        if i in bad:
            (folder / f"{i:05d}.jpg").write_bytes(b"\xff\xd8 truncated")
        else:
            cv2.imwrite(str(folder / f"{i:05d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return folder


def _check_outputs(out: Path, n: int, hw: tuple[int, int], values: set[int]) -> dict:
    masks = sorted((out / "masks").iterdir())
    assert [p.name for p in masks] == [f"{i:05d}.png" for i in range(n)]
    for p in masks:
        m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert m.shape == hw and m.dtype == np.uint8 and set(np.unique(m)) <= values
    cap = cv2.VideoCapture(str(out / "overlay.mp4"))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("fps", "stages", "keyframes_used", "dropped_frames", "late_frames", "bad_frames", "masks_written"):
        assert key in metrics, key
    for stage in ("motion", "decode", "postprocess", "frame", "encode"):
        assert {"p50_ms", "p95_ms"} <= set(metrics["stages"][stage]), stage
    assert metrics["masks_written"] == n
    metrics["overlay_count"] = count
    return metrics


def test_track_box_writes_one_mask_per_frame_with_bad_frame(tmp_path: Path, fake_model: None) -> None:
    folder = _folder(tmp_path, 7, bad=(3,))
    out = tmp_path / "out"
    code = track_cli.main([str(folder), "--box", "75,75,165,165", "--keyframe-interval", "2", "--out", str(out)])
    assert code == 0
    metrics = _check_outputs(out, 7, (240, 320), {0, 255})
    assert metrics["bad_frames"] == 1 and metrics["frames"] == 6 and metrics["overlay_count"] == 6
    assert cv2.imread(str(out / "masks" / "00003.png"), cv2.IMREAD_UNCHANGED).max() == 0  # the bad frame
    last = cv2.imread(str(out / "masks" / "00006.png"), cv2.IMREAD_UNCHANGED) > 0
    assert last[120, 180]  # the disc moved right 10 px a frame and was followed


def test_track_several_points_write_object_ids(tmp_path: Path, slow_fake_model: None) -> None:
    folder = _folder(tmp_path, 4, second_disc=True)
    out = tmp_path / "out"
    code = track_cli.main([str(folder), "--point", "120,120", "--point", "260,190", "--keyframe-interval", "auto",
                           "--motion", "affine", "--async-encoder", "--threads", "1", "--out", str(out)])
    assert code == 0
    metrics = _check_outputs(out, 4, (240, 320), {0, 1, 2})
    assert metrics["async_encoder"] is True
    ids = [cv2.imread(str(out / "masks" / f"{i:05d}.png"), cv2.IMREAD_UNCHANGED) for i in range(4)]
    # offline input waits for the first keyframe after frame 0 (the 0.3 s encode), so frame 1 on has masks
    for m in ids[1:]:
        assert m[120, 140] == 1 and m[190, 260] == 2, np.unique(m)


def test_track_overlay_keeps_frames_of_another_size(tmp_path: Path, fake_model: None) -> None:
    folder = _folder(tmp_path, 5, small=(2, 3))
    out = tmp_path / "out"
    assert track_cli.main([str(folder), "--box", "75,75,165,165", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    cap = cv2.VideoCapture(str(out / "overlay.mp4"))
    sizes = []
    while (got := cap.read())[0]:
        sizes.append(got[1].shape[:2])
    cap.release()
    assert metrics["overlay_frames"] == 5 and metrics["overlay_frames_resized"] == 2
    assert sizes == [(240, 320)] * 5
    assert cv2.imread(str(out / "masks" / "00002.png"), cv2.IMREAD_UNCHANGED).shape == (200, 300)


def test_track_gaze(tmp_path: Path, fake_model: None) -> None:
    folder = _folder(tmp_path, 30, step_px=1.0)
    csv = tmp_path / "gaze.csv"
    rows = ["timestamp_ns,x,y,confidence", "# units: pixels"]  # 100 Hz, following the disc (30 px/s)
    rows += [f"{i * 10_000_000},{125 + 0.3 * i:.1f},120,1.0" for i in range(100)]
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert track_cli.main([str(folder), "--gaze", str(csv), "--out", str(out)]) == 0
    metrics = _check_outputs(out, 30, (240, 320), {0, 255})
    assert len(metrics["keyframes_used"]) <= 7
    last = cv2.imread(str(out / "masks" / "00029.png"), cv2.IMREAD_UNCHANGED)
    assert last.max() == 255  # a 600 ms dwell at 30 fps selected the disc
    gaze = metrics["gaze"]  # the replay's counters: every sample up to the last frame fed, none off the frame
    assert gaze["samples"] == 100 and gaze["off_frame"] == 0 and 0 < gaze["accepted"] == gaze["fed"] <= 100


@pytest.mark.parametrize(
    "argv,match",
    [
        ([], "give one kind of prompt"),
        (["--box", "1,2,3,4", "--point", "5,5"], "give one kind of prompt"),
        (["--box", "1,2,3"], "must have 4 values"),
        (["--box", "1,2,3,4", "--keyframe-interval", "often"], "--keyframe-interval"),
        (["--box", "1,2,3,4", "--keyframe-interval", "0"], "--keyframe-interval must be >= 1"),
    ],
)
def test_track_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list, match: str) -> None:
    assert track_cli.main(["synthetic:2", *argv, "--out", str(tmp_path / "o")]) == 2
    assert match in capsys.readouterr().err


def test_track_real_lite_medsam_synthetic(tmp_path: Path) -> None:
    from tests.refs import medsam_checkpoint

    out = tmp_path / "real"
    code = track_cli.main(["synthetic:4", "--box", "240,140,400,330", "--checkpoint", str(medsam_checkpoint()),
                           "--keyframe-interval", "5", "--threads", "1", "--out", str(out)])
    assert code == 0
    metrics = _check_outputs(out, 4, (480, 640), {0, 255})
    assert metrics["keyframes_used"] == [0] and metrics["overlay_count"] == 4
    assert all((cv2.imread(str(p), 0) > 0).sum() > 500 for p in (out / "masks").iterdir())
