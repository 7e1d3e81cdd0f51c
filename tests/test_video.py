"""engine.video.VideoWriter: the overlay writer of arsel track, arsel demo and the demos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.video import VideoWriter
from tests.script_helpers import count_video_frames


def test_frames_of_another_size_are_resized_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    with VideoWriter(path, 10, "pass --no-video") as video:
        for hw in ((48, 64), (48, 64), (30, 40), (48, 64)):
            video.write_rgb(np.full((*hw, 3), 128, np.uint8))
    assert (video.frames, video.resized, video.hw) == (4, 1, (48, 64))
    assert count_video_frames(path) == 4


def test_no_frame_no_file_and_a_bad_path_names_the_fix(tmp_path: Path) -> None:
    video = VideoWriter(tmp_path / "unused.mp4", 10, "pass --no-video")
    video.close()
    assert not (tmp_path / "unused.mp4").exists()
    bad = VideoWriter(tmp_path / "missing" / "v.mp4", 10, "pass --no-overlay")
    with pytest.raises(OSError, match=r"cannot write .*missing.*v\.mp4 with OpenCV's mp4v codec; pass --no-overlay"):
        bad.write_bgr(np.zeros((8, 8, 3), np.uint8))
    assert bad.frames == 0
