"""engine.gaze.pupil_labs: Pupil Labs real-time API gaze -> GazeSample, threaded like the UDP receiver.

A scripted ``FakeDevice`` stands in for ``pupil_labs.realtime_api.simple.Device``; where the
package is installed, ``test_fake_matches_the_real_api`` checks the fake's method names, argument
names and datum fields against it, and the datums are the package's own ``GazeData``.
"""

from __future__ import annotations

import collections
import gc
import inspect
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest

from engine.gaze import GazeSample
from engine.gaze import pupil_labs as pl
from engine.gaze.pupil_labs import PupilLabsGazeReceiver, datum_to_sample
from engine.stream.events import SelectEvent
from engine.stream.prompt_sources import GazePrompts

try:
    from pupil_labs.realtime_api import simple as real_simple
    from pupil_labs.realtime_api.streaming.gaze import GazeData as RealGazeData
except ImportError:
    real_simple = RealGazeData = None
NO_API = "pupil-labs-realtime-api is not installed (pip install 'arsel[gaze]')"
T0_S = 1_700_000_000.0  # a Unix time, as the phone sends


class FakeGazeData(NamedTuple):
    """Mirror of ``pupil_labs.realtime_api.streaming.gaze.GazeData`` (binocular gaze)."""

    x: float
    y: float
    worn: bool
    timestamp_unix_seconds: float

    @property
    def timestamp_unix_ns(self) -> int:
        return int(self.timestamp_unix_seconds * 1e9)


class FakeDualMonocular(NamedTuple):
    """Mirror of ``DualMonocularGazeData``: no x, y (left/right points instead)."""

    left: tuple[float, float]
    right: tuple[float, float]
    worn: bool
    timestamp_unix_seconds: float


class FakeVideoFrame(NamedTuple):
    """Mirror of ``simple.SimpleVideoFrame``."""

    bgr_pixels: np.ndarray
    timestamp_unix_seconds: float


class FakeMatched(NamedTuple):
    """Mirror of ``simple.MatchedItem``."""

    frame: FakeVideoFrame
    gaze: Any


GazeData = RealGazeData or FakeGazeData


def gaze(i: int, x: float = 100.0, y: float = 50.0, worn: bool = True, rate_hz: float = 200.0) -> Any:
    return GazeData(x, y, worn, T0_S + i / rate_hz)


class FakeDevice:
    """Scripted ``simple.Device``: each receive pops the next item: a datum, ``None`` (a timeout)
    or an exception (raised). An empty script behaves like a silent device (``None`` after the timeout)."""

    def __init__(self, script: list[Any] = (), errors: list[str] = ()) -> None:  # type: ignore[assignment]
        self.script = collections.deque(script)
        self.errors = list(errors)
        self.closed = False

    def _next(self, timeout_seconds: float | None) -> Any:
        if not self.script:
            time.sleep(min(timeout_seconds or 0.01, 0.01))
            return None
        item = self.script.popleft()
        if isinstance(item, BaseException):
            raise item
        return item

    def receive_gaze_datum(self, timeout_seconds: float | None = None) -> Any:
        return self._next(timeout_seconds)

    def receive_matched_scene_video_frame_and_gaze(self, timeout_seconds: float | None = None) -> Any:
        return self._next(timeout_seconds)

    def get_errors(self) -> list[str]:
        out, self.errors = self.errors, []
        return out

    def close(self) -> None:
        self.closed = True


def wait_for(cond: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


def poll_warned(rx: PupilLabsGazeReceiver) -> tuple[list[GazeSample], list[str]]:
    """``rx.poll()`` and the texts of the warnings it emitted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = rx.poll()
    return got, [str(w.message) for w in caught]


def receiver(device: FakeDevice, **kwargs: Any) -> PupilLabsGazeReceiver:
    kwargs = {"receive_timeout_s": 0.01, "retry_s": 0.01, **kwargs}
    return PupilLabsGazeReceiver(device, **kwargs)


# ---------------------------------------------------------------------------- the real API
@pytest.mark.skipif(real_simple is None, reason=NO_API)
def test_fake_matches_the_real_api() -> None:
    from pupil_labs.realtime_api.streaming.gaze import DualMonocularGazeData

    assert callable(real_simple.discover_one_device)
    assert "max_search_duration_seconds" in inspect.signature(real_simple.discover_one_device).parameters
    assert list(inspect.signature(real_simple.Device.__init__).parameters)[1:3] == ["address", "port"]
    for name in ("receive_gaze_datum", "receive_matched_scene_video_frame_and_gaze", "get_errors", "close"):
        real = inspect.signature(getattr(real_simple.Device, name)).parameters
        assert list(real) == list(inspect.signature(getattr(FakeDevice, name)).parameters), name
    assert RealGazeData._fields == FakeGazeData._fields
    assert DualMonocularGazeData._fields == FakeDualMonocular._fields
    assert real_simple.SimpleVideoFrame._fields == FakeVideoFrame._fields
    assert real_simple.MatchedItem._fields == FakeMatched._fields
    d = RealGazeData(1.0, 2.0, True, T0_S)
    assert d.timestamp_unix_ns == FakeGazeData(1.0, 2.0, True, T0_S).timestamp_unix_ns


@pytest.mark.skipif(real_simple is None, reason=NO_API)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the API's Device.__del__
def test_real_device_unreachable_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connection refused
    with pytest.raises(ConnectionError, match=rf"127\.0\.0\.1:{port}.*same network") as info:
        PupilLabsGazeReceiver(address="127.0.0.1", port=port)
    del info
    gc.collect()  # the half-built Device's __del__ complains here, inside the filter above


def test_missing_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("pupil_labs", "pupil_labs.realtime_api", "pupil_labs.realtime_api.simple"):
        monkeypatch.setitem(sys.modules, name, None)  # import of these now raises ImportError
    with pytest.raises(ImportError, match=r"needs the gaze extra: pip install 'arsel\[gaze\]'"):
        PupilLabsGazeReceiver(address="192.168.1.20")


def test_discovery_finding_nothing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class Simple:
        @staticmethod
        def discover_one_device(max_search_duration_seconds: float | None = 10.0) -> None:
            assert max_search_duration_seconds == 0.5
            return None

    monkeypatch.setattr(pl, "import_simple_api", lambda: Simple)
    with pytest.raises(ConnectionError, match="no Pupil Labs device found .* 0.5 s"):
        PupilLabsGazeReceiver(discover_timeout_s=0.5)


# ---------------------------------------------------------------------------- conversion
@pytest.mark.parametrize(
    "datum, expected",
    [
        (FakeGazeData(10.5, 20.0, True, T0_S), GazeSample(int(T0_S * 1e9), 10.5, 20.0, 1.0)),
        (FakeGazeData(10.5, 20.0, False, T0_S), GazeSample(int(T0_S * 1e9), 10.5, 20.0, 0.0)),
        (FakeGazeData(float("nan"), 20.0, False, T0_S), "nan-ok"),
        (FakeGazeData(float("nan"), 20.0, True, T0_S), "x, y must be finite"),
        (FakeGazeData(1.0, 2.0, True, float("inf")), "timestamp_unix_seconds"),
        (FakeDualMonocular((1.0, 2.0), (3.0, 4.0), True, T0_S), "FakeDualMonocular is not a binocular"),
        (None, "NoneType is not a binocular"),
    ],
)
def test_datum_to_sample(datum: Any, expected: GazeSample | str) -> None:
    out = datum_to_sample(datum)
    if expected == "nan-ok":
        assert isinstance(out, GazeSample) and out.confidence == 0.0 and np.isnan(out.x)
    elif isinstance(expected, str):
        assert isinstance(out, str) and expected in out
    else:
        assert out == expected


@pytest.mark.parametrize(
    "kwargs", [{"receive_timeout_s": 0}, {"stale_after_s": -1}, {"retry_s": -0.1}, {"max_queue": 0}]
)
def test_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="need receive_timeout_s"):
        PupilLabsGazeReceiver(FakeDevice(), **kwargs)


# ---------------------------------------------------------------------------- the thread
def test_receiver_converts_counts_and_warns() -> None:
    script = [gaze(0), None, gaze(1, worn=False), GazeData(float("nan"), 1.0, True, T0_S + 0.1),
              gaze(0), gaze(2, x=7.0, y=8.0)]  # fmt: skip
    dev = FakeDevice(script)
    with receiver(dev) as rx:
        wait_for(lambda: rx.stats["received"] == 5)
        got, texts = poll_warned(rx)
        assert [s.confidence for s in got[-3:]] == [1.0, 0.0, 1.0]
        assert got[-1] == GazeSample(gaze(2).timestamp_unix_ns, 7.0, 8.0, 1.0)
        stats = rx.stats
        assert stats["accepted"] == 3 and stats["not_worn"] == 1
        assert stats["malformed"] == 1 and stats["out_of_order"] == 1 and stats["timeouts"] >= 1
        assert rx.last_t_ns == got[-1].timestamp_ns and rx.connected
        assert any("malformed" in t and "finite" in t for t in texts) and any("out-of-order" in t for t in texts)
    assert not dev.closed, "a device passed in stays the caller's to close"
    assert not rx.alive
    with pytest.raises(RuntimeError, match="after close"):
        rx.poll()


def test_device_error_then_recovery_keeps_the_loop_alive() -> None:
    dev = FakeDevice([gaze(0), ConnectionResetError("phone gone"), OSError("no route"), None, gaze(1)])
    with receiver(dev) as rx:
        wait_for(lambda: rx.stats["received"] == 2)
        assert rx.alive and rx.connected
        assert rx.stats["device_errors"] == 2 and rx.stats["disconnects"] == 1
        assert "OSError: no route" in (rx.last_error or "")
        got, texts = poll_warned(rx)
        assert len(got) == 2 and "PupilLabsGazeReceiver disconnects: ConnectionResetError: phone gone" in texts
        assert "PupilLabsGazeReceiver device-errors: OSError: no route" in texts


def test_silent_device_counts_a_disconnect_and_reported_errors() -> None:
    dev = FakeDevice([gaze(0)], errors=["Stream error in sensor gaze"])
    with receiver(dev, stale_after_s=0.05) as rx:
        wait_for(lambda: rx.stats["disconnects"] == 1)
        assert not rx.connected and rx.alive and rx.stats["timeouts"] >= 2
        assert rx.stats["device_errors"] == 1 and rx.last_error == "Stream error in sensor gaze"
        got, texts = poll_warned(rx)
        assert len(got) == 1 and any("disconnects: no gaze for 0.05 s" in t for t in texts)
        assert "PupilLabsGazeReceiver device-errors: device reported: Stream error in sensor gaze" in texts
        dev.script.append(gaze(1))
        wait_for(lambda: rx.connected)


def test_unpolled_queue_keeps_the_newest_samples() -> None:
    dev = FakeDevice([gaze(i) for i in range(5)])
    with receiver(dev, max_queue=3) as rx:
        wait_for(lambda: rx.stats["received"] == 5)
        got = rx.poll()
        assert [s.timestamp_ns for s in got] == [gaze(i).timestamp_unix_ns for i in (2, 3, 4)]
        assert rx.stats["overflow"] == 2 and rx.stats["accepted"] == 5


class CountingLock:
    """A lock counting the acquisitions made by the thread that created it."""

    def __init__(self) -> None:
        self._lock, self.owner, self.count = threading.Lock(), threading.get_ident(), 0

    def __enter__(self) -> CountingLock:
        self._lock.acquire()
        self.count += int(threading.get_ident() == self.owner)
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


@pytest.mark.parametrize("case", ["accepted", "malformed", "out_of_order"])
def test_one_datum_is_counted_and_queued_under_one_lock(case: str) -> None:
    """A reader that saw ``received`` go up must also see the datum accepted and queued (or
    rejected): every update for one datum happens under one lock acquisition."""
    datum = GazeData(float("nan"), 1.0, True, T0_S) if case == "malformed" else gaze(5)
    with receiver(FakeDevice()) as rx:
        rx._lock = lock = CountingLock()  # type: ignore[assignment]
        if case == "out_of_order":
            rx.last_t_ns = gaze(9).timestamp_unix_ns
        rx._accept(datum)
        assert lock.count == 1
        stats = rx.stats
        assert stats["received"] == 1 and stats[case] == 1
        assert len(rx._queue) == (case == "accepted")


def test_matched_scene_frames_are_kept_as_rgb() -> None:
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 0] = 255  # blue in BGR
    dev = FakeDevice([FakeMatched(FakeVideoFrame(bgr, T0_S), gaze(0, x=3.0, y=2.0))])
    with receiver(dev, scene_frames=True) as rx:
        wait_for(lambda: rx.stats["accepted"] == 1)
        t_ns, rgb = rx.latest_scene()
        assert t_ns == int(T0_S * 1e9) and rgb.shape == (4, 6, 3) and (rgb[..., 2] == 255).all()
        assert rx.poll()[0].xy == (3.0, 2.0)


def test_owned_device_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    devices: list[FakeDevice] = []

    class Simple:
        @staticmethod
        def Device(address: str, port: int) -> FakeDevice:  # noqa: N802 - the API's name
            assert (address, port) == ("10.0.0.7", 8080)
            devices.append(FakeDevice())
            return devices[-1]

    monkeypatch.setattr(pl, "import_simple_api", lambda: Simple)
    PupilLabsGazeReceiver(address="10.0.0.7", receive_timeout_s=0.01).close()
    assert devices[0].closed


def test_dwell_on_live_gaze_selects_through_gaze_prompts() -> None:
    """The receiver's output drives GazePrompts like the UDP receiver's: 0.8 s of steady gaze selects."""
    dev = FakeDevice([gaze(i, x=320.0 + (i % 3), y=240.0, rate_hz=100.0) for i in range(80)])
    prompts = GazePrompts()
    events = []
    with receiver(dev) as rx:
        wait_for(lambda: rx.stats["received"] == 80)
        for sample in rx.poll():
            events += prompts.push(sample)
    selects = [e for e in events if isinstance(e, SelectEvent)]
    assert len(selects) == 1
    np.testing.assert_allclose(selects[0].prompt.points_xy[0], (321.0, 240.0), atol=1.5)
