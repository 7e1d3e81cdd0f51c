"""Property tests of the wire- and file-level parsers: random bytes and random-but-valid-looking
structures never raise anything but the parser's own error type (or, for the receivers, never
raise at all), and the gaze clock guard never gets stuck."""

from __future__ import annotations

import json
import math
import socket
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.gaze.clock import ClockPolicy, GazeClock
from engine.gaze.samples import GazeSample, read_gaze_csv
from engine.gaze.udp import UdpGazeReceiver, parse_gaze_json

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

numbers = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.booleans(), st.none(), st.text(max_size=5))
json_values = st.recursive(st.one_of(numbers, st.text(max_size=8)),
                           lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                  st.dictionaries(st.text(max_size=6), kids, max_size=4)),
                           max_leaves=12)
gaze_like = st.fixed_dictionaries({"t_ns": numbers, "x": numbers, "y": numbers, "conf": numbers},
                                  optional={"extra": json_values})


# ---------------------------------------------------------------- gaze JSON / UDP
@SETTINGS
@given(obj=st.one_of(json_values, gaze_like))
def test_parse_gaze_json_returns_a_sample_or_a_reason(obj: object) -> None:
    got = parse_gaze_json(obj)
    assert isinstance(got, (GazeSample, str))
    if isinstance(got, GazeSample):
        assert 0 <= got.timestamp_ns < 2**63 and math.isfinite(got.x) and 0 <= got.confidence <= 1


@pytest.fixture(scope="module")
def receiver():  # noqa: ANN201
    with UdpGazeReceiver("127.0.0.1", 0) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        yield rx, tx


def _drain(rx: UdpGazeReceiver, expect: int) -> list[GazeSample]:
    import time

    out: list[GazeSample] = []
    deadline = time.monotonic() + 2.0
    while rx.stats["received"] < expect and time.monotonic() < deadline:
        out += rx.poll()
    return out + rx.poll()


@SETTINGS
@given(datagram=st.one_of(st.binary(max_size=1500),
                          st.lists(gaze_like, min_size=1, max_size=4).map(
                              lambda objs: "\n".join(json.dumps(o) for o in objs).encode())))
def test_udp_receiver_never_raises_and_counts_every_datagram(receiver, datagram: bytes) -> None:  # noqa: ANN001
    rx, tx = receiver
    before = rx.stats["received"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tx.sendto(datagram, rx.address)
        samples = _drain(rx, before + 1)
    assert rx.stats["received"] == before + 1
    assert all(isinstance(s, GazeSample) for s in samples)


# ---------------------------------------------------------------- the clock guard
@SETTINGS
@given(ts=st.lists(st.integers(min_value=0, max_value=2**63 - 1), max_size=60),
       resync=st.integers(min_value=1, max_value=8))
def test_clock_guard_accepts_only_increasing_times_and_never_sticks(ts: list[int], resync: int) -> None:
    clock = GazeClock(ClockPolicy(max_skew_ns=1_000_000_000, resync_after=resync))
    now = 10**12
    accepted = []
    for t in ts:
        if clock.check(t, now) is None:
            accepted.append(t)
        now += 10_000_000
    stats = clock.stats
    assert stats["accepted"] == len(accepted)
    assert stats["accepted"] + stats["clock_jump"] + stats["out_of_order"] + stats["clock_resyncs"] >= len(ts)
    # whatever came before, a steady stream on the receiver's clock is accepted after `resync` samples
    base = now + 5 * 10**18 % (2**62)
    good = [clock.check(base + k * 10_000_000, now + k * 10_000_000) for k in range(resync + 3)]
    assert good[-1] is None and good[-2] is None


def test_one_far_future_sample_costs_one_sample() -> None:
    """The issue's case: int64-max t_ns used to make every later sample out of order, forever."""
    clock = GazeClock()
    now = 5 * 10**9
    assert clock.check(now, now) is None
    assert clock.check(2**63 - 1, now + 1) == "clock_jump"
    assert all(clock.check(now + k * 10**7, now + k * 10**7) is None for k in range(1, 50))
    assert clock.stats == {"accepted": 50, "clock_jump": 1, "out_of_order": 0, "clock_resyncs": 0}


def test_a_clock_reset_resyncs_after_n_samples() -> None:
    clock = GazeClock(ClockPolicy(resync_after=5))
    now = 10**12
    for k in range(10):
        assert clock.check(10**15 + k * 10**7, now + k * 10**7) is None
    got = [clock.check(k * 10**7 + 1, now + (10 + k) * 10**7) for k in range(10)]  # tracker restarted at 0
    assert got[:4] == ["clock_jump"] * 4 and got[4:] == [None] * 6
    assert clock.stats["clock_resyncs"] == 1


# ---------------------------------------------------------------- gaze CSV
HEADER = "timestamp_ns,x,y,confidence"
cells = st.one_of(st.integers(-(2**70), 2**70).map(str), st.floats().map(repr), st.sampled_from(["", "nan", "inf", "x"]))


@SETTINGS
@given(data=st.binary(max_size=600))
def test_gaze_csv_random_bytes_raise_value_error_naming_the_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "g.csv"
    path.write_bytes(data)
    try:
        read_gaze_csv(path, (480, 640))
    except ValueError as exc:
        assert str(path) in str(exc)


@SETTINGS
@given(rows=st.lists(st.lists(cells, min_size=2, max_size=5), max_size=8),
       units=st.sampled_from(["", "# units: normalized\n", "# units: pixels\n", "# units: furlongs\n"]))
def test_gaze_csv_plausible_rows_parse_or_raise_value_error(tmp_path: Path, rows: list[list[str]], units: str) -> None:
    path = tmp_path / "g.csv"
    path.write_text(units + HEADER + "\n" + "\n".join(",".join(r) for r in rows) + "\n")
    try:
        samples = read_gaze_csv(path, (480, 640))
    except ValueError as exc:
        assert str(path) in str(exc)
        return
    assert all(isinstance(s, GazeSample) for s in samples)
    assert all(b.timestamp_ns > a.timestamp_ns for a, b in zip(samples, samples[1:]))


# ---------------------------------------------------------------- intrinsics JSON
@SETTINGS
@given(data=st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode()),
                      st.fixed_dictionaries({k: numbers for k in ("width", "height", "fx", "fy", "cx", "cy")},
                                            optional={"depth_scale_m": numbers, "dist": json_values}).map(
                          lambda v: json.dumps(v).encode())))
def test_intrinsics_json_raises_only_value_error(tmp_path: Path, data: bytes) -> None:
    from calibration.intrinsics import load_intrinsics

    path = tmp_path / "cam.json"
    path.write_bytes(data)
    try:
        intr = load_intrinsics(path)
    except ValueError as exc:
        assert str(path) in str(exc)
        return
    assert intr.width > 0 and intr.fx > 0 and math.isfinite(intr.cx)


# ---------------------------------------------------------------- arsel.v1 binary frame header
@SETTINGS
@given(data=st.one_of(st.binary(max_size=400),
                      json_values.map(lambda h: __import__("engine.serve.protocol", fromlist=["pack"]).pack(
                          h if isinstance(h, dict) else {"h": h}, b"\xff\xd8junk")),
                      st.fixed_dictionaries({"type": st.just("frame"), "frame_id": numbers, "t_capture_ns": numbers,
                                             "image": st.fixed_dictionaries(
                                                 {"encoding": st.sampled_from(["jpeg", "png", "raw", 3]),
                                                  "width": numbers, "height": numbers, "bytes": numbers})}).map(
                          lambda h: __import__("engine.serve.protocol", fromlist=["pack"]).pack(h, b"\x00" * 16))))
def test_frame_header_raises_only_protocol_error(data: bytes) -> None:
    protocol = pytest.importorskip("engine.serve.protocol")
    try:
        protocol.parse_frame(data, protocol.Limits())
    except protocol.ProtocolError:
        pass
