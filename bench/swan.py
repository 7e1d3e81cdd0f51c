"""The DAVIS blackswan prompt both serving benchmarks use (``bench_serve``, ``bench_serve_ray``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def swan_box(data: Path, hw: tuple[int, int]) -> list[float]:
    """The swan's ground-truth box on frame 0 (DAVIS annotation), in the pixels of ``hw`` frames."""
    from engine.stream.evaluate import box_of, davis_annotations

    truth = davis_annotations(data / "davis_blackswan")[0]
    sx, sy = hw[1] / truth.shape[1], hw[0] / truth.shape[0]
    return [float(v) for v in box_of(truth) * np.array([sx, sy, sx, sy])]
