"""Helpers for tests that run the demo scripts: load a script as a module, count a video's frames."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import cv2

REPO = Path(__file__).resolve().parents[1]


def load_script(relative_path: str, module_name: str) -> ModuleType:
    """Import ``REPO/relative_path`` as module ``module_name`` (a fresh module per name, so one
    test's monkeypatching does not leak into another's copy)."""
    spec = importlib.util.spec_from_file_location(module_name, REPO / relative_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module
    spec.loader.exec_module(module)
    return module


def count_video_frames(path: Path) -> int:
    """Frames OpenCV can read from the video at ``path`` (0 when it cannot open it)."""
    cap = cv2.VideoCapture(str(path))
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    return count
