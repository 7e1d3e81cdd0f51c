"""``fuse_tsdf`` takes any iterable and integrates each frame before taking the next, so a
generator reading frames from disk keeps one frame in memory (``arsel fuse`` does that)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("open3d")

from engine.lift import fusion  # noqa: E402
from engine.lift.fusion import fuse_tsdf  # noqa: E402
from engine.types import CameraIntrinsics  # noqa: E402

INTR = CameraIntrinsics(64, 48, 50.0, 50.0, 31.5, 23.5, 0.001)


def _wall(shift_m: float) -> np.ndarray:
    """4x4 camera-to-world pose: the camera slid sideways by ``shift_m``."""
    pose = np.eye(4)
    pose[0, 3] = shift_m
    return pose


def test_generator_frames_are_integrated_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real = fusion._BlockGrid.integrate

    def integrate(self, rgb, depth, extrinsic):  # noqa: ANN001, ANN202
        events.append("integrate")
        return real(self, rgb, depth, extrinsic)

    monkeypatch.setattr(fusion._BlockGrid, "integrate", integrate)

    def frames() -> Iterator[tuple]:
        for k in range(4):
            events.append(f"read {k}")
            yield None, np.full((48, 64), 1000, np.uint16), None, _wall(0.01 * k)  # a wall 1 m away

    mesh = fuse_tsdf(frames(), INTR, voxel_m=0.02)
    assert len(mesh.triangles) > 0
    assert events == [e for k in range(4) for e in (f"read {k}", "integrate")]  # never two frames read ahead


def test_empty_iterable_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one frame .* the input was empty"):
        fuse_tsdf(iter(()), INTR)


def test_frames_without_valid_depth_are_skipped_with_a_warning() -> None:
    frames = ((None, np.zeros((48, 64), np.uint16), None, np.eye(4)) for _ in range(2))
    with pytest.warns(UserWarning, match="no frame had valid masked depth"):
        mesh = fuse_tsdf(frames, INTR, voxel_m=0.02)
    assert len(mesh.vertices) == 0


def test_bad_backend_fails_before_reading_a_frame() -> None:
    read: list[int] = []

    def frames() -> Iterator[tuple]:
        read.append(1)
        yield None, np.full((48, 64), 1000, np.uint16), None, np.eye(4)

    with pytest.raises(ValueError, match="unknown TSDF backend"):
        fuse_tsdf(frames(), INTR, backend="nope")
    assert not read
