"""The demos run headless (subprocess smoke tests at the real LiteMedSAM weights, a few frames)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2

from tests.refs import medsam_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def _run(args: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_live_select_headless(tmp_path: Path) -> None:
    out = tmp_path / "live.mp4"
    stdout = _run(["demos/live_select.py", "--headless", "--frames", "3", "--keyframe", "10",
                   "--checkpoint", str(medsam_checkpoint()), "--out", str(out)])
    assert "frame   2" in stdout and "objects 1" in stdout
    assert _frames(out) == 3


def test_gaze_replay_headless(tmp_path: Path) -> None:
    gaze = tmp_path / "gaze.csv"
    gaze.write_text("timestamp_ns,x,y,confidence\n" + "".join(f"{i * 8_000_000},320,240,1.0\n" for i in range(40)))
    out = tmp_path / "gaze.mp4"
    stdout = _run(["demos/gaze_replay.py", "synthetic:3", str(gaze), "--out", str(out),
                   "--checkpoint", str(medsam_checkpoint())])
    assert "3 frames" in stdout
    assert _frames(out) == 3
