"""The demos run headless (subprocess smoke tests at the real LiteMedSAM weights, a few frames)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


from tests.refs import medsam_checkpoint
from tests.script_helpers import count_video_frames

REPO = Path(__file__).resolve().parents[1]




def _run(args: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_live_select_headless(tmp_path: Path) -> None:
    out = tmp_path / "live.mp4"
    stdout = _run(["demos/live_select.py", "--headless", "--frames", "3", "--keyframe-interval", "10",
                   "--checkpoint", str(medsam_checkpoint()), "--out", str(out)])
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("frame   2")]
    area = re.search(r"objects 1 mask px (\d+)", line)
    assert area is not None and int(area.group(1)) > 0, line  # the click on the centre selected something
    assert count_video_frames(out) == 3


def test_gaze_replay_headless(tmp_path: Path) -> None:
    gaze = tmp_path / "gaze.csv"
    # 1.2 s of steady gaze on the centre at 125 Hz: the 600 ms dwell selects at frame ~18 of 25 (30 fps)
    gaze.write_text("timestamp_ns,x,y,confidence\n" + "".join(f"{i * 8_000_000},320,240,1.0\n" for i in range(150)))
    out = tmp_path / "gaze.mp4"
    stdout = _run(["demos/gaze_replay.py", "synthetic:25", str(gaze), "--out", str(out),
                   "--checkpoint", str(medsam_checkpoint())])
    assert "25 frames, 1 gaze selections" in stdout, stdout
    assert count_video_frames(out) == 25
