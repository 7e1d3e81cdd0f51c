"""Soak: ``arsel serve`` as a subprocess, 3 clients for 2 minutes with random disconnects and bad
messages. Zero server exceptions, sessions' memory freed (RSS growth < 50 MB once they leave), no
frame answered twice or out of order."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from tests.serve_support import CheckedClient, blackswan

logging.getLogger("websockets.client").setLevel(logging.CRITICAL)  # our own abrupt closes

pytest.importorskip("fastapi")
REPO = Path(__file__).resolve().parents[1]
SOAK_S = float(os.environ.get("ARSEL_SOAK_S", "120"))
BAD = ["{oops", json.dumps({"type": "warp"}), b"\x01\x02", json.dumps({"type": "prompt", "frame_id": 10**9,
       "action": "add", "box": [1, 1, 5, 5]}), json.dumps({"type": "gaze", "t_ns": 1, "x": 1, "y": 1,
                                                          "confidence": 9})]


def _rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024  # type: ignore[union-attr]


class _Recorder(CheckedClient):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, check_sent=False, **kw)
        self.order: list[int] = []

    def _recv_one(self, timeout_s: float | None) -> dict[str, Any]:
        msg = super()._recv_one(timeout_s)
        if msg.get("type") == "result":
            self.order.append(msg["frame_id"])
        return msg


def _session(url: str, frames: list[np.ndarray], box: list[float], rng: np.random.Generator, until: float,
             log: list[dict[str, Any]]) -> None:
    c = _Recorder(url, timeout_s=30)
    c.connect()
    extensions = [e.name for e in c.ws.protocol.extensions]  # negotiated at the handshake
    sent = 0
    c.prompt(0, box=box)
    end = min(until, time.monotonic() + rng.uniform(4, 25))
    try:
        while time.monotonic() < end:
            t = time.monotonic()
            c.send_frame(sent, frames[sent % len(frames)], jpeg_quality=80)
            sent += 1
            if rng.random() < 0.08:
                c.send_raw(BAD[int(rng.integers(len(BAD)))])
            while True:
                try:
                    c.recv(timeout_s=max(0.001, 1 / 12 - (time.monotonic() - t)))
                except TimeoutError:
                    break
    finally:
        if rng.random() < 0.5:
            c.ws.socket.shutdown(socket.SHUT_RDWR)  # abrupt: no close handshake
        c.close()
    log.append({"sent": sent, "order": c.order, "errors": [e["code"] for e in c.errors],
                "extensions": extensions})


def _wait_idle(url: str, timeout_s: float = 240) -> dict[str, Any]:
    """healthz once no session is open or closing (a closing one frees its state after its encode)."""
    t_end = time.monotonic() + timeout_s
    while True:
        health = httpx.get(url + "/healthz").json()
        if health["sessions"] == health["closing"] == 0 or time.monotonic() > t_end:
            return health
        time.sleep(0.5)


@pytest.mark.slow
def test_soak_three_clients(data_dir: Path) -> None:
    _, raw, box = blackswan(data_dir, 8)
    frames = [cv2.resize(f, (427, 240), interpolation=cv2.INTER_AREA) for f in raw]
    box = (box / 2).tolist()
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}  # the server bounds them itself
    env["PYTHONPATH"] = str(REPO)
    boot = ("import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
            "from engine.cli import main; sys.exit(main(sys.argv[1:]))")  # SIGUSR1: thread stacks on stderr
    proc = subprocess.Popen([sys.executable, "-c", boot, "serve", "--port", "0", "--idle-timeout", "20",
                             "--backend", "torch"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        port = int(re.search(r"127\.0\.0\.1:(\d+)/", line).group(1))  # type: ignore[union-attr]
        url, ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/v1/stream"
        warm: list[dict[str, Any]] = []  # warm-up at the soak's concurrency: caches and pools fill once
        ts = [threading.Thread(target=_session, args=(ws_url, frames, box, np.random.default_rng(s),
                                                      time.monotonic() + 8, warm)) for s in (4, 5, 6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        _wait_idle(url)
        rss0 = _rss_mb(proc.pid)
        until = time.monotonic() + SOAK_S
        logs: list[dict[str, Any]] = []

        def client(seed: int) -> None:
            rng = np.random.default_rng(seed)
            while time.monotonic() < until - 2:
                _session(ws_url, frames, box, rng, until, logs)

        threads = [threading.Thread(target=client, args=(s,)) for s in (1, 2, 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(SOAK_S + 120)
        health = _wait_idle(url)
        rss1 = _rss_mb(proc.pid)
        if health["sessions"] or health["closing"]:
            proc.send_signal(signal.SIGUSR1)  # the stacks explain what a session waits for
            time.sleep(2)
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert len(logs) >= 6, "expected several sessions per client"
    for log in logs:
        assert log["order"] == sorted(set(log["order"])), "a frame answered twice or out of order"
        assert all(0 <= f < log["sent"] for f in log["order"])
        assert len(log["order"]) > 0
        assert set(log["errors"]) <= {"bad_message", "bad_frame", "unsupported"}
        assert log["extensions"] == [], "the server must decline permessage-deflate (frames are JPEG already)"
    assert health["exceptions"] == 0 and health["sessions"] == 0 and health["closing"] == 0, (health, err[-6000:])
    assert health["sessions_total"] == len(logs) + len(warm)
    assert "Traceback" not in err, err[-3000:]
    assert rss1 - rss0 < 50, f"RSS grew {rss1 - rss0:.0f} MB ({rss0:.0f} -> {rss1:.0f})"
