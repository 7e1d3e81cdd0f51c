"""The thread-count policy: how many CPU threads each compute thread of the engine gets.

The stream engine runs two compute threads when the encoder is asynchronous (the keyframe encoder
worker and the per-frame decoder), each with its own intra-op pool; half the cores each keeps them
from oversubscribing the machine (sharing all the cores, each slows the other several-fold). One
ONNX Runtime session alone uses the physical cores.
"""

from __future__ import annotations

import os

__all__ = ["apply_threads", "engine_threads", "physical_cores"]


def engine_threads(requested: int | None = None) -> int:
    """Intra-op threads per engine thread: ``requested``, else half the logical cores (at least 1)."""
    if requested is not None and requested < 1:
        raise ValueError(f"threads must be >= 1, got {requested}")
    return requested or max(1, (os.cpu_count() or 2) // 2)


def apply_threads(backend: str, threads: int) -> None:
    """Set the intra-op pool of a torch backend (process-wide); ONNX Runtime takes ``threads`` per
    session instead (``OrtBackend(threads=...)``), TensorRT needs none. OpenCV's pool (motion,
    resizes: per-frame work) gets ``threads`` too, process-wide, for every backend: its default
    of all the cores oversubscribes them beside a busy encoder thread."""
    import cv2

    cv2.setNumThreads(threads)
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)


def physical_cores() -> int:
    """Physical CPU cores usable by this process (psutil when present, else the affinity mask)."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except ImportError:
        n = None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(n or usable, usable))
