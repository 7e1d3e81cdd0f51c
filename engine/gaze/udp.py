"""Live gaze over UDP: JSON lines ``{"t_ns": int, "x": px, "y": px, "conf": 0..1}``.

One datagram holds one or more newline-separated JSON objects (at most :data:`MAX_PACKET_BYTES`
bytes in all). Extra keys are ignored. Bad input never raises: it is counted in
:attr:`UdpGazeReceiver.stats` and dropped with a warning. Kinds:

- ``oversized``: a datagram longer than ``MAX_PACKET_BYTES`` (the whole datagram is dropped);
- ``malformed``: a line that is not UTF-8 JSON, not an object, lacks a key, has a non-integer
  ``t_ns``, non-finite ``x``/``y`` or ``conf`` outside [0, 1];
- ``out_of_order``: a sample whose ``t_ns`` is not after the last accepted one;
- ``clock_jump``: a sample whose ``t_ns`` is far (over ``ClockPolicy.max_skew_ns``) from the
  tracker clock the receiver locked onto (see :mod:`engine.gaze.clock`); ``clock_resyncs``
  counts the times the receiver re-locked after the tracker's clock really jumped or reset;
- ``socket_errors``: errors reported by the socket itself (e.g. ICMP port unreachable).

``received`` counts datagrams, ``accepted`` the samples returned.
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket
import time
import warnings
from typing import Any

from engine.gaze.clock import INT64_MAX, ClockPolicy, GazeClock
from engine.gaze.samples import GazeSample

MAX_PACKET_BYTES = 1024
KEYS = ("t_ns", "x", "y", "conf")
STAT_KINDS = ("received", "accepted", "malformed", "oversized", "out_of_order", "clock_jump", "clock_resyncs",
              "socket_errors")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_gaze_json(obj: Any) -> GazeSample | str:
    """A :class:`GazeSample` from one decoded JSON object, or the reason it is malformed."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    missing = [k for k in KEYS if k not in obj]
    if missing:
        return f"missing key(s) {missing}; send {{\"t_ns\":..,\"x\":..,\"y\":..,\"conf\":..}}"
    t_ns, x, y, conf = (obj[k] for k in KEYS)
    if not isinstance(t_ns, int) or isinstance(t_ns, bool) or not 0 <= t_ns <= INT64_MAX:
        return f"t_ns must be an integer in [0, 2**63) (ns), got {t_ns!r}"
    if not (_is_number(x) and _is_number(y) and math.isfinite(x) and math.isfinite(y)):
        return f"x, y must be finite numbers (px), got {x!r}, {y!r}"
    if not _is_number(conf) or not 0.0 <= conf <= 1.0:
        return f"conf must be a number in [0, 1], got {conf!r}"
    return GazeSample(t_ns, float(x), float(y), float(conf))


class UdpGazeReceiver:
    """Non-blocking UDP receiver of gaze JSON lines.

    ``host`` defaults to the loopback address (a non-loopback address works but warns: anyone on
    the network can then steer the selection); ``port=0`` lets the OS choose (see :attr:`address`).
    :meth:`poll` reads at most ``max_packets_per_poll`` waiting datagrams and returns their valid
    samples in arrival order. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, max_packets_per_poll: int = 1024,
                 clock: ClockPolicy | None = None) -> None:
        if not 0 <= port <= 65535 or max_packets_per_poll < 1:
            raise ValueError(
                f"need 0 <= port <= 65535 and max_packets_per_poll >= 1, got {port}, {max_packets_per_poll}"
            )
        if not _is_loopback(host):
            warnings.warn(
                f"UdpGazeReceiver bound to {host!r}, not loopback: other machines can send gaze; "
                "use host='127.0.0.1' unless the tracker runs elsewhere",
                stacklevel=2,
            )
        self.max_packets_per_poll = max_packets_per_poll
        self.stats: dict[str, int] = {k: 0 for k in STAT_KINDS}
        self.clock = GazeClock(clock or ClockPolicy())
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            raise OSError(
                f"cannot bind UDP gaze receiver to {host}:{port}: {exc}; pick another port (0: any free one)"
            ) from exc

    @property
    def last_t_ns(self) -> int | None:
        """Timestamp of the last accepted sample (tracker clock, ns)."""
        return self.clock.last_t_ns

    @last_t_ns.setter
    def last_t_ns(self, value: int | None) -> None:
        """Start after ``value`` (locks the clock offset there when none is locked yet)."""
        self.clock.start_after(value, time.monotonic_ns())

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the socket is bound to."""
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> UdpGazeReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop(self, kind: str, detail: str) -> None:
        self.stats[kind] += 1
        warnings.warn(f"UdpGazeReceiver dropped a {kind.replace('_', '-')} packet: {detail}", stacklevel=3)

    def poll(self) -> list[GazeSample]:
        """Valid samples from the datagrams waiting now (never blocks, never raises on bad input)."""
        if self._sock.fileno() < 0:
            raise RuntimeError("UdpGazeReceiver.poll() after close(); create a new receiver")
        out: list[GazeSample] = []
        for _ in range(self.max_packets_per_poll):
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._drop("socket_errors", str(exc))
                continue
            self.stats["received"] += 1
            if len(data) > MAX_PACKET_BYTES:
                self._drop("oversized", f"{len(data)} bytes > {MAX_PACKET_BYTES}")
                continue
            out.extend(self._parse(data))
        return out

    def _parse(self, data: bytes) -> list[GazeSample]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self._drop("malformed", "not UTF-8")
            return []
        out = []
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                parsed = parse_gaze_json(json.loads(line))
            except (ValueError, RecursionError) as exc:
                self._drop("malformed", f"not JSON ({exc})")
                continue
            if isinstance(parsed, str):
                self._drop("malformed", parsed)
                continue
            last = self.clock.last_t_ns
            reason = self.clock.check(parsed.timestamp_ns, time.monotonic_ns())
            self.stats["clock_resyncs"] = self.clock.stats["clock_resyncs"]
            if reason is not None:
                self._drop(reason, f"t_ns {parsed.timestamp_ns} (last accepted {last})")
                continue
            self.stats["accepted"] += 1
            out.append(parsed)
        return out


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
