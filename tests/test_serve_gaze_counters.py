"""Gaze counters of ``arsel serve`` in ``/healthz``, over a real server on 127.0.0.1: a far-future
``t_ns``, off-frame samples and a tracker clock that jumps are each counted exactly, summed over
live sessions and kept for closed ones; the counter type is the one ``arsel track`` writes."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from engine.gaze.clock import INT64_MAX, ClockPolicy
from engine.gaze.counters import DROP_REASONS, GazeCounters
from engine.serve.engines import LocalEngines
from engine.stream.scheduler import KeyframePolicy
from tests.serve_support import CheckedClient, served

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
HW = (96, 128)
T0 = 5_000_000_000_000  # the client's clock (ns); the server locks onto its offset
MS = 1_000_000
HOUR = 3600 * 1_000_000_000


@pytest.fixture(scope="module")
def engines() -> LocalEngines:
    return LocalEngines.load("lite_medsam", policy=KeyframePolicy(interval=5), async_encoder=False)


def _health(url: str) -> dict[str, Any]:
    return httpx.get(url + "/healthz", timeout=30).json()


def _gaze(**kw: int) -> dict[str, Any]:
    dropped = {k: 0 for k in DROP_REASONS}
    dropped.update({k: v for k, v in kw.items() if k in DROP_REASONS})
    return {"accepted": kw.get("accepted", 0), "off_frame": kw.get("off_frame", 0),
            "clock_resyncs": kw.get("clock_resyncs", 0), "dropped": dropped, "dropped_total": sum(dropped.values())}


def _wait_closed(url: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        health = _health(url)
        if health["sessions"] == 0 and health["closing"] == 0:
            return health
        time.sleep(0.1)
    raise AssertionError(f"the session did not close: {health}")


def test_healthz_counts_gaze_exactly(engines: LocalEngines) -> None:
    rgb = np.full((*HW, 3), 90, np.uint8)
    resync = ClockPolicy().resync_after
    with served(engines) as srv:
        assert _health(srv.url)["gaze"] == _gaze()
        with CheckedClient(srv.ws_url) as c:
            c.send_frame(0, rgb, t_capture_ns=T0, encoding="png")
            c.result(0, timeout_s=120)
            for i in range(1, 11):  # 10 good samples: the first locks the clock
                c.gaze(T0 + i * 10 * MS, 40.0, 30.0)
            c.gaze(INT64_MAX, 40.0, 30.0)  # far future: dropped, and the stream goes on
            for i in range(3):  # far off the 128x96 frame: accepted, counted off-frame (lost)
                c.gaze(T0 + (110 + 10 * i) * MS, -5000.0, 30.0)
            for i in range(resync + 1):  # the tracker clock jumps an hour: re-locked after `resync` samples
                c.gaze(T0 + HOUR + i * 10 * MS, 40.0, 30.0)
            c.send_frame(1, rgb, t_capture_ns=T0 + HOUR + 1000 * MS, encoding="png")  # feeds every buffered one
            c.result(1, timeout_s=120)
            want = _gaze(accepted=10 + 3 + 2, off_frame=3, clock_resyncs=1, clock_jump=1 + resync - 1)
            health = _health(srv.url)
            assert health["gaze"] == want, health
            assert health["exceptions"] == 0 and health["errors_sent"] == 0
        assert _wait_closed(srv.url)["gaze"] == want  # a closed session's counts stay in the totals
        with CheckedClient(srv.ws_url) as c:  # live + closed are summed
            c.send_frame(0, rgb, t_capture_ns=10 * T0, encoding="png")
            c.result(0, timeout_s=120)
            c.gaze(10 * T0 + 5 * MS, 40.0, 30.0)
            c.gaze(10 * T0 + 3 * MS, 40.0, 30.0)  # late but before its frame: the buffer reorders it
            c.gaze(10 * T0 + 4 * MS, 400.0, 30.0)
            c.send_frame(1, rgb, t_capture_ns=10 * T0 + 10 * MS, encoding="png")
            c.result(1, timeout_s=120)
            assert _health(srv.url)["gaze"] == _gaze(accepted=18, off_frame=4, clock_resyncs=1, clock_jump=resync)


def test_counters_sum_and_serialise() -> None:
    a, b = GazeCounters(accepted=2, off_frame=1), GazeCounters(clock_resyncs=1)
    b.drop("clock_jump", 3)
    b.drop("overflow")
    assert GazeCounters().add(a).add(b).as_dict() == _gaze(accepted=2, off_frame=1, clock_resyncs=1, clock_jump=3,
                                                           overflow=1)
    with pytest.raises(ValueError, match="unknown gaze drop reason"):
        a.drop("tired")


def test_slow_replay_stays_in_step() -> None:
    """A client replaying a recording 30x slower than real time (one 33 ms frame per second): gaze is
    judged against its frames' clock, so nothing is dropped; against the server's own clock the
    offset would wander 1 s per frame and the samples would be dropped after ten frames."""
    from engine.gaze.clock import GazeClock
    from engine.serve.session import ClientClock

    client, guard = ClientClock(), GazeClock(ClockPolicy(check_order=False))
    for i in range(100):
        client.frame(i * 33 * MS, i * 1000 * MS)
        assert guard.check(i * 33 * MS + 16 * MS, client.now_ns(i * 1000 * MS + 700 * MS, 0)) is None, i
    assert guard.stats["accepted"] == 100 and guard.stats["clock_jump"] == 0
    naive = GazeClock(ClockPolicy(check_order=False))
    drops = [naive.check(i * 33 * MS + 16 * MS, i * 1000 * MS + 700 * MS) for i in range(100)]
    assert "clock_jump" in drops
