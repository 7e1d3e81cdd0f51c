"""``RealSenseSource`` survives framesets its filters or ``rs.align`` raise on: each is counted in
``stats.bad`` and skipped; ``max_bad_framesets`` in a row stop the stream with one clear error.
Real framesets from ``rs.software_device``, served by the pipeline double of test_realsense."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("pyrealsense2")

from engine.realsense import RealSenseConfig, RealSenseSource, SoftwareCamera  # noqa: E402
from engine.stream.sources import SourceError  # noqa: E402
from tests.test_realsense import INTR, OFF, FakePipeline, _framesets  # noqa: E402


def _failing_on(src: RealSenseSource, bad_calls: set[int], error: type[Exception] = RuntimeError) -> None:
    """Make the source's processor raise on the given (0-based) calls, as a filter or align would."""
    real, calls = src._processor.process, [0]

    def process(frames: Any) -> Any:
        k = calls[0]
        calls[0] += 1
        if k in bad_calls:
            raise error("Error occured during execution of the processing block!")
        return real(frames)

    src._processor.process = process  # type: ignore[method-assign]


@pytest.mark.parametrize("error", [RuntimeError, ValueError])
def test_a_frameset_the_processing_fails_on_is_counted_and_skipped(error: type[Exception]) -> None:
    with SoftwareCamera(INTR) as cam:
        fs = _framesets(cam, 4)
        src = RealSenseSource(RealSenseConfig(filters=OFF, max_missed_frames=1, timeout_ms=5),
                              pipeline=FakePipeline(cam, fs))
        _failing_on(src, {1}, error)
        frames = []
        with pytest.raises(SourceError, match="disconnected"):  # the double runs dry: a lost camera
            for frame in src:
                frames.append(frame)
    assert len(frames) == 3 and src.stats.bad == 1 and src.stats.delivered == 3
    assert all(f.depth_raw is not None for f in frames)


def test_bad_framesets_in_a_row_stop_the_stream_naming_the_problem() -> None:
    with SoftwareCamera(INTR) as cam:
        fs = _framesets(cam, 6)
        pipe = FakePipeline(cam, fs)
        config = RealSenseConfig(filters=OFF, max_missed_frames=1, timeout_ms=5, max_bad_framesets=3)
        src = RealSenseSource(config, pipeline=pipe)
        _failing_on(src, {1, 3, 4, 5})  # 1 alone, then 3, 4, 5 in a row
        frames = []
        with pytest.raises(SourceError, match=r"3 framesets in a row could not be used \(last: processing failed: "
                                              r"RuntimeError: .*processing block.*DepthFilterConfig"):
            for frame in src:
                frames.append(frame)
    assert len(frames) == 2 and src.stats.bad == 4 and pipe.stopped


def test_max_bad_framesets_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_bad_framesets must be >= 1"):
        RealSenseConfig(max_bad_framesets=0)
