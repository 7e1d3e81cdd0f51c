"""engine.gaze: CSV, One-Euro, gating, fixations (I-VT, I-DT), dwell selection, UDP receiver."""

from __future__ import annotations

import json
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from engine.gaze import (
    DwellSelector,
    GazeSample,
    GazeSmoother,
    OneEuroFilter,
    UdpGazeReceiver,
    detect_fixations_idt,
    detect_fixations_ivt,
    read_gaze_csv,
    smooth_gaze,
    split_segments,
    write_gaze_csv,
)
from engine.stream.events import ReleaseEvent, SelectEvent

RATE_HZ = 100


def assert_csv_error(path: Path, text: str, read: Callable[[Path], object], match: str) -> None:
    """Write ``text`` to ``path``: ``read(path)`` must raise a ``ValueError`` matching ``match``
    that names the file (shared with the calibration CSV tests)."""
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        read(path)
    assert str(path) in str(info.value)

PERIOD_NS = 10_000_000


# ---------------------------------------------------------------------------- synthetic traces
def _trace(
    spots: list[tuple[float, float, int]], saccade_samples: int = 2, noise_px: float = 0.3, seed: int = 0
) -> tuple[list[GazeSample], list[tuple[int, int, float, float]]]:
    """Fixations at ``(x, y, n_samples)`` joined by linear saccades; returns samples and the truth
    ``(start_ns, end_ns, x, y)`` of each fixation."""
    rng = np.random.default_rng(seed)
    samples, truth, i = [], [], 0
    prev = None
    for x, y, n in spots:
        if prev is not None:
            for k in range(1, saccade_samples + 1):
                f = k / (saccade_samples + 1)
                samples.append(GazeSample(i * PERIOD_NS, prev[0] + f * (x - prev[0]), prev[1] + f * (y - prev[1])))
                i += 1
        truth.append((i * PERIOD_NS, (i + n - 1) * PERIOD_NS, x, y))
        for _ in range(n):
            dx, dy = rng.normal(0.0, noise_px, 2)
            samples.append(GazeSample(i * PERIOD_NS, x + dx, y + dy))
            i += 1
        prev = (x, y)
    return samples, truth


SPOTS = [(100.0, 100.0, 40), (400.0, 150.0, 25), (250.0, 380.0, 60), (600.0, 300.0, 30)]


def _check(found: list, truth: list) -> None:
    assert len(found) == len(truth), (found, truth)
    for fix, (start, end, x, y) in zip(found, truth):
        assert abs(fix.start_ns - start) <= PERIOD_NS and abs(fix.end_ns - end) <= PERIOD_NS
        assert np.hypot(fix.x - x, fix.y - y) <= 1.0


# ---------------------------------------------------------------------------- One-Euro
@pytest.mark.parametrize(
    "kwargs, min_factor",
    [({}, 5.0), ({"min_cutoff": 0.5, "beta": 0.002}, 8.0)],
    ids=["defaults", "smooth"],
)
def test_one_euro_removes_jitter_on_constant_signal(kwargs: dict, min_factor: float) -> None:
    rng = np.random.default_rng(0)
    raw = 200.0 + rng.normal(0.0, 3.0, 1000)  # 3 px jitter at 200 Hz
    filt = OneEuroFilter(**kwargs)
    out = np.array([filt(v, i * 5_000_000) for i, v in enumerate(raw)]).reshape(-1)
    assert np.std(out[200:]) < np.std(raw[200:]) / min_factor
    assert abs(np.mean(out[200:]) - 200.0) < 0.5


def test_one_euro_lags_little_on_ramp() -> None:
    speed_px_s = 500.0
    t_s = np.arange(300) / RATE_HZ
    filt = OneEuroFilter(min_cutoff=1.0, beta=0.05, d_cutoff=1.0)
    out = np.array([filt(v, int(t * 1e9)) for v, t in zip(speed_px_s * t_s, t_s)]).reshape(-1)
    lag_px = speed_px_s * t_s[100:] - out[100:]
    assert np.all(lag_px >= -1e-6) and lag_px.max() < 0.03 * speed_px_s  # < 30 ms behind


def test_one_euro_vector_reset_and_bad_input() -> None:
    filt = OneEuroFilter()
    first = filt(np.array([1.0, 2.0]), 0)
    np.testing.assert_array_equal(first, [1.0, 2.0])
    np.testing.assert_array_equal(filt(np.array([9.0, 9.0]), 0), first)  # same timestamp: unchanged
    with pytest.raises(ValueError, match="must not decrease"):
        filt(np.array([1.0, 2.0]), -5)
    filt.reset()
    np.testing.assert_array_equal(filt(np.array([5.0, 6.0]), -5), [5.0, 6.0])
    with pytest.raises(ValueError, match="non-finite"):
        filt(np.array([np.nan, 1.0]), 10)


@pytest.mark.parametrize(
    "kwargs, exception",
    [({"min_cutoff": 0.0}, ValueError), ({"d_cutoff": -1.0}, ValueError), ({"beta": -0.1}, ValueError), ({}, None)],
)
def test_one_euro_parameters(kwargs: dict, exception: type | None) -> None:
    if exception is None:
        OneEuroFilter(**kwargs)
    else:
        with pytest.raises(exception):
            OneEuroFilter(**kwargs)


def test_smoother_resets_on_low_confidence_and_gap() -> None:
    smoother = GazeSmoother(min_confidence=0.6, max_gap_ms=75.0)
    assert smoother.update(GazeSample(0, 10.0, 10.0)) is not None
    assert smoother.update(GazeSample(PERIOD_NS, 10.0, 10.0, 0.2)) is None  # gated
    after_blink = smoother.update(GazeSample(2 * PERIOD_NS, 300.0, 300.0))
    assert after_blink is not None and after_blink.xy == (300.0, 300.0)  # fresh filter: no smoothing
    after_gap = smoother.update(GazeSample(2 * PERIOD_NS + 200_000_000, 50.0, 50.0))
    assert after_gap is not None and after_gap.xy == (50.0, 50.0)
    assert smoother.resets == 2
    assert len(smooth_gaze([GazeSample(0, 1.0, 1.0), GazeSample(1, 1.0, 1.0, 0.0)])) == 1


# ---------------------------------------------------------------------------- fixations
def test_ivt_finds_known_fixations() -> None:
    samples, truth = _trace(SPOTS)
    _check(detect_fixations_ivt(samples, velocity_threshold_px_s=600.0), truth)


def test_ivt_threshold_in_degrees() -> None:
    samples, truth = _trace(SPOTS)
    _check(detect_fixations_ivt(samples, velocity_threshold_deg_s=30.0, px_per_deg=20.0), truth)
    # 30 deg/s at 0.05 px/deg is 1.5 px/s: sensor noise alone exceeds it, nothing is a fixation.
    assert detect_fixations_ivt(samples, velocity_threshold_deg_s=30.0, px_per_deg=0.05) == []


def test_ivt_merges_noise_spike_but_not_blink() -> None:
    samples, truth = _trace([(200.0, 200.0, 50)])
    spiked = list(samples)
    spiked[25] = GazeSample(spiked[25].timestamp_ns, 230.0, 200.0)  # one 30 px glitch
    found = detect_fixations_ivt(spiked, velocity_threshold_px_s=600.0)
    assert len(found) == 1 and found[0].num_samples == 49
    _check(found, truth)


def test_idt_finds_known_fixations() -> None:
    samples, truth = _trace(SPOTS)
    _check(detect_fixations_idt(samples, dispersion_threshold_px=20.0, min_duration_ms=100.0), truth)
    _check(detect_fixations_idt(samples), truth)  # defaults: 1 deg at 20 px/deg


@pytest.mark.parametrize("detector", [detect_fixations_ivt, detect_fixations_idt], ids=["ivt", "idt"])
@pytest.mark.parametrize("how", ["missing", "low-confidence"])
def test_blink_gap_splits_a_fixation(detector, how: str) -> None:
    samples, _ = _trace([(300.0, 200.0, 80)])
    blink = range(30, 45)  # 150 ms
    if how == "missing":
        samples = [s for i, s in enumerate(samples) if i not in blink]
    else:
        samples = [GazeSample(s.timestamp_ns, s.x, s.y, 0.1) if i in blink else s for i, s in enumerate(samples)]
    found = detector(samples)
    assert len(found) == 2
    assert found[0].end_ns == 29 * PERIOD_NS and found[1].start_ns == 45 * PERIOD_NS
    assert len(split_segments(samples)) == 2


def test_short_fixations_are_dropped() -> None:
    samples, truth = _trace([(100.0, 100.0, 40), (400.0, 100.0, 4), (100.0, 400.0, 40)])  # 30 ms glance
    _check(detect_fixations_ivt(samples, velocity_threshold_px_s=600.0, min_duration_ms=60.0), [truth[0], truth[2]])
    _check(detect_fixations_idt(samples, min_duration_ms=100.0), [truth[0], truth[2]])


@pytest.mark.parametrize(
    "detector, kwargs, exception",
    [
        (detect_fixations_ivt, {"px_per_deg": 0.0}, ValueError),
        (detect_fixations_ivt, {"velocity_threshold_px_s": -1.0}, ValueError),
        (detect_fixations_ivt, {"min_confidence": 1.5}, ValueError),
        (detect_fixations_idt, {"dispersion_threshold_px": 0.0}, ValueError),
        (detect_fixations_idt, {"max_gap_ms": 0.0}, ValueError),
        (detect_fixations_idt, {"min_duration_ms": -5.0}, ValueError),
    ],
)
def test_fixation_bad_parameters(detector, kwargs: dict, exception: type) -> None:
    samples, _ = _trace(SPOTS[:1])
    with pytest.raises(exception):
        detector(samples, **kwargs)


def test_unsorted_samples_raise() -> None:
    with pytest.raises(ValueError, match="increasing time order"):
        detect_fixations_idt([GazeSample(10, 0.0, 0.0), GazeSample(5, 0.0, 0.0)])


# ---------------------------------------------------------------------------- dwell
def test_dwell_selects_once_then_releases() -> None:
    dwell = DwellSelector(dwell_ms=500.0, release_ms=300.0, radius_px=30.0)
    samples, _ = _trace([(200.0, 150.0, 100), (500.0, 400.0, 100)], saccade_samples=0)
    events = [(s.timestamp_ns, e) for s in samples for e in dwell.update(s)]
    selects = [(t, e) for t, e in events if isinstance(e, SelectEvent)]
    releases = [(t, e) for t, e in events if isinstance(e, ReleaseEvent)]
    # Spot A: select at 500 ms. Leave at 1000 ms: release at 1300 ms, then select B at 1500 ms.
    assert [t for t, _ in selects] == [500_000_000, 1_500_000_000]
    assert [t for t, _ in releases] == [1_300_000_000]
    prompt = selects[0][1].prompt
    assert prompt.source == "gaze" and np.hypot(*(prompt.points_xy[0] - (200.0, 150.0))) < 1.0
    assert dwell.selected_xy is not None and np.hypot(dwell.selected_xy[0] - 500.0, dwell.selected_xy[1] - 400.0) < 1.0


def test_dwell_short_glance_and_blink_keep_selection() -> None:
    dwell = DwellSelector(dwell_ms=300.0, release_ms=400.0, radius_px=30.0)
    t = 0
    out = []
    for x, n, conf in [(100.0, 40, 1.0), (400.0, 20, 1.0), (100.0, 10, 1.0), (100.0, 20, 0.0), (100.0, 40, 1.0)]:
        for _ in range(n):
            out += dwell.update(GazeSample(t, x, 100.0, conf))
            t += PERIOD_NS
    assert len(out) == 1 and isinstance(out[0], SelectEvent)  # a 200 ms glance and a blink release nothing


def test_dwell_interrupted_by_blink_restarts() -> None:
    dwell = DwellSelector(dwell_ms=300.0, release_ms=400.0)
    events = []
    for i in range(60):
        conf = 0.0 if 20 <= i < 25 else 1.0
        events += [(i, e) for e in dwell.update(GazeSample(i * PERIOD_NS, 50.0, 50.0, conf))]
    assert [i for i, _ in events] == [55]  # the dwell restarts at sample 25: 300 ms later


@pytest.mark.parametrize("kwargs", [{"dwell_ms": 0.0}, {"release_ms": -1.0}, {"radius_px": 0.0}])
def test_dwell_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        DwellSelector(**kwargs)


# ---------------------------------------------------------------------------- CSV
def test_csv_round_trip_pixels(tmp_path: Path) -> None:
    samples, _ = _trace(SPOTS[:2])
    samples.append(GazeSample(samples[-1].timestamp_ns + PERIOD_NS, float("nan"), float("nan"), 0.0))
    path = tmp_path / "gaze.csv"
    write_gaze_csv(path, samples)
    back = read_gaze_csv(path)
    assert len(back) == len(samples)
    assert back[0] == samples[0] and back[-1].confidence == 0.0


@pytest.mark.parametrize(
    "text, frame_hw, first_xy",
    [
        ("timestamp_ns,x,y,confidence\n0,0.5,0.25,1\n10,0.6,0.3,0.9\n", (480, 640), (320.0, 120.0)),
        ("# units: normalized\ntimestamp_ns,x,y,confidence\n0,0.5,1.2,1\n", (480, 640), (320.0, 576.0)),
        ("# units: pixels\ntimestamp_ns,x,y,confidence\n0,0.5,0.25,1\n", None, (0.5, 0.25)),
        ("timestamp_ns,x,y,confidence\n0,12,30,1\n", (480, 640), (12.0, 30.0)),
        ("confidence, y, x, timestamp_ns\n1,30,12,0\n\n", None, (12.0, 30.0)),
    ],
    ids=["auto-normalised", "comment-normalised", "comment-pixels", "auto-pixels", "column-order"],
)
def test_csv_units(tmp_path: Path, text: str, frame_hw, first_xy) -> None:
    path = tmp_path / "g.csv"
    path.write_text(text)
    assert read_gaze_csv(path, frame_hw=frame_hw)[0].xy == first_xy


@pytest.mark.parametrize(
    "text, match",
    [
        ("0,1,2,1\n", r":1: header"),
        ("timestamp_ns,x,y\n0,1,2\n", r":1: header.*missing"),
        ("timestamp_ns,x,y,confidence\n0,1,2,1\n1,1,2\n", r":3: expected 4 fields"),
        ("timestamp_ns,x,y,confidence\n0.5,1,2,1\n", r":2: timestamp_ns must be an integer"),
        ("timestamp_ns,x,y,confidence\n0,abc,2,1\n", r":2: x must be a number"),
        ("timestamp_ns,x,y,confidence\n0,1,nan,1\n", r":2: y is 'nan'"),
        ("timestamp_ns,x,y,confidence\n0,1,2,1.5\n", r":2: confidence must be in \[0, 1\]"),
        ("timestamp_ns,x,y,confidence\n# c\n5,1,2,1\n5,1,2,1\n", r":4: timestamp_ns 5 is not after"),
        ("# units: furlongs\ntimestamp_ns,x,y,confidence\n", r":1: unknown units"),
        ("timestamp_ns,x,y,confidence\n0,0.5,0.5,1\n", r"normalised.*frame_hw"),
        ("# only a comment\n", r"no header"),
    ],
)
def test_csv_bad_rows(tmp_path: Path, text: str, match: str) -> None:
    assert_csv_error(tmp_path / "bad.csv", text, read_gaze_csv, match)


@pytest.mark.parametrize(
    "args, exception",
    [((0, 1.0, 2.0, 1.5), ValueError), ((0, float("nan"), 2.0, 0.9), ValueError), ((0.5, 1.0, 2.0), ValueError),
     ((0, float("nan"), 2.0, 0.0), None), ((np.int64(3), 1, 2, 1), None)],
)
def test_gaze_sample_validation(args: tuple, exception: type | None) -> None:
    if exception is None:
        assert GazeSample(*args).timestamp_ns == int(args[0])
    else:
        with pytest.raises(exception):
            GazeSample(*args)


# ---------------------------------------------------------------------------- UDP
def _drain(rx: UdpGazeReceiver, want: int, timeout_s: float = 2.0) -> list[GazeSample]:
    """Poll until ``want`` datagrams were received or the timeout passes (never loops forever)."""
    got: list[GazeSample] = []
    deadline = time.monotonic() + timeout_s
    while rx.stats["received"] < want and time.monotonic() < deadline:
        got += rx.poll()
        time.sleep(0.002)
    return got + rx.poll()


def test_udp_receiver_parses_and_counts() -> None:
    with UdpGazeReceiver(port=0) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        host, port = rx.address
        assert host == "127.0.0.1" and port > 0
        assert rx.poll() == []  # nothing waiting: returns at once
        packets = [
            json.dumps({"t_ns": 100, "x": 10.5, "y": 20, "conf": 0.9}).encode(),
            b"{not json",
            json.dumps({"t_ns": 200, "x": 11, "y": 21}).encode(),  # missing conf
            json.dumps({"t_ns": 300, "x": "a", "y": 21, "conf": 1}).encode(),
            json.dumps({"t_ns": 50, "x": 1, "y": 2, "conf": 1}).encode(),  # older than t_ns=100
            b"\xff\xfe",
            b'{"t_ns": 400, "x": 1, "y": 2, "conf": 1, "pad": "' + b"x" * 1100 + b'"}',
            json.dumps({"t_ns": 500, "x": 12, "y": 22, "conf": 1.0}).encode()
            + b"\n" + json.dumps({"t_ns": 600, "x": 13, "y": 23, "conf": 1.0}).encode(),
            json.dumps({"t_ns": 600, "x": 1, "y": 2, "conf": 1}).encode(),  # duplicate time
            json.dumps([1, 2, 3]).encode(),
        ]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for p in packets:
                tx.sendto(p, (host, port))
            got = _drain(rx, len(packets))
    assert [(s.timestamp_ns, s.x, s.y) for s in got] == [(100, 10.5, 20.0), (500, 12.0, 22.0), (600, 13.0, 23.0)]
    assert rx.stats["received"] == len(packets) and rx.stats["accepted"] == 3
    assert rx.stats["malformed"] == 5 and rx.stats["oversized"] == 1 and rx.stats["out_of_order"] == 2
    assert len(caught) == 8 and all("UdpGazeReceiver dropped" in str(w.message) for w in caught)


def test_udp_receiver_bounded_poll_and_close() -> None:
    rx = UdpGazeReceiver(port=0, max_packets_per_poll=3)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for i in range(5):
            tx.sendto(json.dumps({"t_ns": i + 1, "x": 1, "y": 1, "conf": 1}).encode(), rx.address)
        deadline = time.monotonic() + 2.0
        first: list[GazeSample] = []
        while not first and time.monotonic() < deadline:
            first = rx.poll()
            time.sleep(0.002)
        rest = _drain(rx, 5)
    assert len(first) <= 3 and len(first) + len(rest) == 5
    rx.close()
    with pytest.raises(RuntimeError, match="after close"):
        rx.poll()


@pytest.mark.parametrize(
    "kwargs, exception", [({"port": 70000}, ValueError), ({"max_packets_per_poll": 0}, ValueError)]
)
def test_udp_receiver_bad_config(kwargs: dict, exception: type) -> None:
    with pytest.raises(exception):
        UdpGazeReceiver(**kwargs)


def test_udp_receiver_warns_on_non_loopback() -> None:
    with pytest.warns(UserWarning, match="not loopback"):
        rx = UdpGazeReceiver(host="0.0.0.0", port=0)
    rx.close()
