"""Live gaze from a Pupil Labs Neon / Invisible through its real-time API.

Needs ``pip install pupil-labs-realtime-api`` (the ``gaze`` extra: ``pip install 'arsel[gaze]'``);
the package is imported only when a receiver connects to a real device, so ``import engine.gaze``
works without it.

:class:`PupilLabsGazeReceiver` has the interface of :class:`engine.gaze.UdpGazeReceiver`
(:meth:`poll`, :attr:`stats`, :attr:`last_t_ns`, :meth:`close`, context manager), so a loop that
feeds ``GazePrompts.push`` from ``receiver.poll()`` takes either. A worker thread blocks on
``Device.receive_gaze_datum`` (or ``receive_matched_scene_video_frame_and_gaze`` with
``scene_frames=True``) and queues :class:`GazeSample` s; :meth:`poll` drains the queue.

Conversion: the datum's ``x, y`` are scene-camera pixels already; ``timestamp_unix_ns`` becomes
``timestamp_ns`` (Unix time on the phone's clock: ``Device.estimate_time_offset()`` measures the
offset to this machine); ``worn=False`` (glasses off the face) gives ``confidence`` 0, else 1 (the
API reports no per-sample confidence). Bad input never raises; it is counted in :attr:`stats` and
dropped with a warning emitted from :meth:`poll`. Kinds:

- ``received``: datums read from the device; ``accepted``: samples queued (including not-worn);
- ``not_worn``: samples with ``worn=False`` (kept, with confidence 0);
- ``malformed``: a datum without finite ``x, y`` / ``timestamp_unix_seconds`` (e.g. dual-monocular
  gaze, which has ``left``/``right`` points instead);
- ``out_of_order``: a sample not after the last accepted one;
- ``clock_jump``: a sample far from the phone clock the receiver locked onto; ``clock_resyncs``:
  re-locks after the phone's clock really jumped (see :mod:`engine.gaze.clock`);
- ``overflow``: samples dropped because nobody polled (the queue keeps the newest ``max_queue``);
- ``timeouts``: receive calls that returned ``None`` after ``receive_timeout_s``;
- ``device_errors``: exceptions raised by the device, and errors from ``Device.get_errors()``;
- ``disconnects``: times the device went silent for ``stale_after_s`` or raised.

The worker never dies on a device error: it records it (:attr:`last_error`, :attr:`connected`
False), waits ``retry_s`` and tries again; the simple API reconnects its RTSP streams by itself
when the phone comes back.
"""

from __future__ import annotations

import collections
import math
import threading
import time
import warnings
from typing import Any

import numpy as np

from engine.extras import require
from engine.gaze.clock import ClockPolicy, GazeClock
from engine.gaze.samples import GazeSample

STAT_KINDS = (
    "received", "accepted", "not_worn", "malformed", "out_of_order", "clock_jump", "clock_resyncs", "overflow",
    "timeouts", "device_errors", "disconnects",
)  # fmt: skip


def import_simple_api() -> Any:
    """``pupil_labs.realtime_api.simple``, or an ImportError saying how to install it."""
    return require("gaze", "pupil_labs.realtime_api.simple", what="the Pupil Labs gaze source")


def datum_to_sample(datum: Any) -> GazeSample | str:
    """A :class:`GazeSample` from one gaze datum (``GazeData`` or a richer type), or why it is malformed."""
    try:
        x, y, worn = float(datum.x), float(datum.y), bool(datum.worn)
        ts_s = float(datum.timestamp_unix_seconds)
    except (AttributeError, TypeError, ValueError) as exc:
        return f"{type(datum).__name__} is not a binocular gaze datum with x, y, worn, timestamp ({exc})"
    if not math.isfinite(ts_s) or ts_s < 0:
        return f"timestamp_unix_seconds must be a finite time >= 0, got {ts_s!r}"
    t_ns = getattr(datum, "timestamp_unix_ns", None)
    t_ns = int(t_ns) if isinstance(t_ns, (int, np.integer)) else int(ts_s * 1e9)
    if not worn:
        return GazeSample(t_ns, x, y, 0.0)  # x, y may be anything (even NaN) when not worn
    if not (math.isfinite(x) and math.isfinite(y)):
        return f"x, y must be finite pixels while worn, got {x!r}, {y!r}"
    return GazeSample(t_ns, x, y, 1.0)


class PupilLabsGazeReceiver:
    """Threaded gaze receiver for a Pupil Labs device (interface of ``UdpGazeReceiver``).

    ``device``: an opened ``pupil_labs.realtime_api.simple.Device`` (or anything with its
    ``receive_gaze_datum(timeout_seconds)`` / ``receive_matched_scene_video_frame_and_gaze``
    methods); it stays the caller's to close. Without one, ``address`` (and ``port``, the
    Companion app's 8080) opens ``Device(address, port)``, and with neither
    ``discover_one_device(discover_timeout_s)`` finds one on the local network; such a device is
    closed by :meth:`close`. ``scene_frames=True`` reads matched scene frames too:
    :meth:`latest_scene` returns the newest as ``(timestamp_ns, rgb)``.
    """

    def __init__(
        self,
        device: Any = None,
        address: str | None = None,
        port: int = 8080,
        discover_timeout_s: float = 10.0,
        receive_timeout_s: float = 0.5,
        stale_after_s: float = 2.0,
        retry_s: float = 1.0,
        max_queue: int = 1024,
        scene_frames: bool = False,
        clock: ClockPolicy | None = None,
    ) -> None:
        if min(receive_timeout_s, stale_after_s, discover_timeout_s) <= 0 or retry_s < 0 or max_queue < 1:
            raise ValueError(
                "need receive_timeout_s, stale_after_s, discover_timeout_s > 0, retry_s >= 0 and max_queue >= 1, "
                f"got {receive_timeout_s}, {stale_after_s}, {discover_timeout_s}, {retry_s}, {max_queue}"
            )
        self.receive_timeout_s, self.stale_after_s, self.retry_s = receive_timeout_s, stale_after_s, retry_s
        self.scene_frames = scene_frames
        self.stats: dict[str, int] = {k: 0 for k in STAT_KINDS}
        self.clock = GazeClock(clock or ClockPolicy())
        self.last_error: str | None = None
        self.connected = False
        self._owns_device = device is None
        self.device = device if device is not None else _open_device(address, port, discover_timeout_s)
        self._lock = threading.Lock()
        self._queue: collections.deque[GazeSample] = collections.deque(maxlen=max_queue)
        self._notes: collections.deque[tuple[str, str]] = collections.deque(maxlen=256)
        self._scene: tuple[int, np.ndarray] | None = None
        self._last_datum_s = time.monotonic()
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pupil-labs-gaze", daemon=True)
        self._thread.start()

    # --- caller's thread -------------------------------------------------------------------------
    def poll(self) -> list[GazeSample]:
        """Samples received since the last call, in order (never blocks); emits the queued warnings."""
        if self._closed:
            raise RuntimeError("PupilLabsGazeReceiver.poll() after close(); create a new receiver")
        with self._lock:
            out = list(self._queue)
            self._queue.clear()
            notes = list(self._notes)
            self._notes.clear()
        for kind, detail in notes:
            warnings.warn(f"PupilLabsGazeReceiver {kind.replace('_', '-')}: {detail}", stacklevel=2)
        return out

    def latest_scene(self) -> tuple[int, np.ndarray] | None:
        """Newest matched scene frame ``(timestamp_ns, rgb HxWx3 uint8)`` (``scene_frames=True``), else None."""
        with self._lock:
            return self._scene

    @property
    def alive(self) -> bool:
        """True while the worker thread runs."""
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop the worker (waits up to ``receive_timeout_s`` + 1 s) and close a device opened here."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join(timeout=self.receive_timeout_s + 1.0)
        if self._owns_device:
            self.device.close()

    def __enter__(self) -> PupilLabsGazeReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- worker thread ---------------------------------------------------------------------------
    def _note(self, kind: str, detail: str) -> None:
        with self._lock:
            self.stats[kind] += 1
            self._notes.append((kind, detail))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._receive()
                if item is None:
                    self._timed_out()
                else:
                    self._accept(item)
            except Exception as exc:  # noqa: BLE001 - any device failure must leave the loop alive
                self._lost(f"{type(exc).__name__}: {exc}", count_error=True)
                self._stop.wait(self.retry_s)

    def _receive(self) -> Any:
        if not self.scene_frames:
            return self.device.receive_gaze_datum(timeout_seconds=self.receive_timeout_s)
        matched = self.device.receive_matched_scene_video_frame_and_gaze(timeout_seconds=self.receive_timeout_s)
        if matched is None:
            return None
        frame = matched.frame
        rgb = np.ascontiguousarray(np.asarray(frame.bgr_pixels)[..., ::-1])  # BGR at the edge -> RGB
        with self._lock:
            self._scene = (int(frame.timestamp_unix_seconds * 1e9), rgb)
        return matched.gaze

    def _timed_out(self) -> None:
        with self._lock:
            self.stats["timeouts"] += 1
        get_errors = getattr(self.device, "get_errors", None)
        for err in get_errors() if callable(get_errors) else []:
            self.last_error = str(err)
            self._note("device_errors", f"device reported: {err}")
        if self.connected and time.monotonic() - self._last_datum_s >= self.stale_after_s:
            self._lost(f"no gaze for {self.stale_after_s:g} s (phone asleep, app closed or network lost?)")

    def _lost(self, reason: str, count_error: bool = False) -> None:
        if count_error:
            self.last_error = reason
            self._note("device_errors", reason)
        if self.connected:
            self.connected = False
            self._note("disconnects", reason)

    @property
    def last_t_ns(self) -> int | None:
        """Timestamp of the last accepted sample (phone clock, ns)."""
        return self.clock.last_t_ns

    @last_t_ns.setter
    def last_t_ns(self, value: int | None) -> None:
        """Start after ``value`` (locks the clock offset there when none is locked yet)."""
        self.clock.start_after(value, time.time_ns())

    def _accept(self, datum: Any) -> None:
        """Count and queue one datum under one lock acquisition, so a reader never sees it
        ``received`` but not yet ``accepted`` / queued (or rejected)."""
        sample = datum_to_sample(datum)
        with self._lock:
            self._last_datum_s = time.monotonic()
            self.connected = True
            self.stats["received"] += 1
            if isinstance(sample, str):
                self.stats["malformed"] += 1
                self._notes.append(("malformed", sample))
                return
            last = self.clock.last_t_ns
            reason = self.clock.check(sample.timestamp_ns, time.time_ns())
            self.stats["clock_resyncs"] = self.clock.stats["clock_resyncs"]
            if reason is not None:
                self.stats[reason] += 1
                self._notes.append((reason, f"t_ns {sample.timestamp_ns} (last accepted {last})"))
                return
            if len(self._queue) == self._queue.maxlen:
                self.stats["overflow"] += 1  # counted, not warned: the caller polls too rarely
            self._queue.append(sample)
            self.stats["accepted"] += 1
            self.stats["not_worn"] += int(sample.confidence == 0.0)


def _open_device(address: str | None, port: int, discover_timeout_s: float) -> Any:
    simple = import_simple_api()
    if address is not None:
        try:
            return simple.Device(address, port)
        except Exception as exc:  # noqa: BLE001 - aiohttp/DeviceError: report where and how to fix
            raise ConnectionError(
                f"cannot reach the Pupil Labs Companion app at {address}:{port} ({type(exc).__name__}: {exc}); "
                "check the phone's IP in the app (Stream section) and that both are on the same network"
            ) from exc
    device = simple.discover_one_device(max_search_duration_seconds=discover_timeout_s)
    if device is None:
        raise ConnectionError(
            f"no Pupil Labs device found on the local network within {discover_timeout_s:g} s; start the "
            "Companion app, join the same network (mDNS must pass), or pass address='PHONE_IP'"
        )
    return device
