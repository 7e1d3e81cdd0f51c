"""The ASGI app of ``arsel serve`` (FastAPI): ``/healthz``, the browser page, ``WS /v1/stream``.

``create_app`` is a factory so the app can be mounted elsewhere (a Ray Serve ingress) with another
``EngineFactory``. Each WebSocket is one session: a receive task validates every message at the
boundary (``protocol``) and a process task steps the newest queued frames on the session's own
worker thread (``SessionCore``), so one session's slow socket or bad input never stalls another.
FastAPI is imported here, and this module only when a server runs (``pip install 'arsel[serve]'``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.websockets import WebSocketDisconnect

from engine.gaze.counters import GazeCounters
from engine.serve.engines import EngineFactory
from engine.serve.protocol import (PROTOCOL, Limits, ProtocolError, check_prompt_inside, error_message, gaze_sample,
                                   parse_frame, parse_is_cheap, parse_text)
from engine.serve.session import ClientClock, Outgoing, QueuedFrame, SessionCore, release_memory
from engine.serve.turns import TurnGate

STATIC_DIR = Path(__file__).resolve().parent / "static"
CLOSE_UNAUTHORIZED, CLOSE_BUSY, CLOSE_NORMAL = 4401, 1013, 1000
MAX_PENDING_PROMPTS = 256
MAX_PROMPT_AHEAD = 64  # frames a prompt may name ahead of the newest received
log = logging.getLogger("arsel.serve")


@dataclass
class ServerStats:
    """Process-wide counters reported by ``/healthz``; gaze counters per live session (by id) and
    summed over the closed ones."""

    started: float = field(default_factory=time.time)
    sessions: int = 0
    closing: int = 0
    sessions_total: int = 0
    frames: int = 0
    dropped: int = 0
    errors_sent: int = 0
    exceptions: int = 0
    gaze_live: dict[str, GazeCounters] = field(default_factory=dict)
    gaze_closed: GazeCounters = field(default_factory=GazeCounters)

    def gaze(self) -> GazeCounters:
        """Gaze counters of every session so far, live and closed."""
        total = GazeCounters().add(self.gaze_closed)
        for counters in list(self.gaze_live.values()):
            total.add(counters)
        return total


class _RateLimit:
    """Token bucket: ``rate`` messages per second, bursts of one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate, self.tokens, self.t = rate, rate, time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def default_frame_slots() -> int:
    """Frames stepped at once across all sessions: one per CPU core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def create_app(engines: EngineFactory, limits: Limits | None = None, token: str | None = None,
               max_sessions: int = 8, static_dir: Path = STATIC_DIR, frame_slots: int | None = None) -> Any:
    """The FastAPI app serving ``arsel.v1`` with engines from ``engines``. ``frame_slots``: frames
    stepped at once across all sessions (default ``default_frame_slots``), granted in turns
    (``turns.TurnGate``): no session steps more than two frames ahead of the one furthest behind, so
    sessions with frames waiting get the same frame rate, however cheap another session's frames are."""
    limits = limits or Limits()
    stats = ServerStats()
    slots = default_frame_slots() if frame_slots is None else frame_slots
    if slots < 1:
        raise ValueError(f"frame_slots must be >= 1, got {slots}")
    gate = TurnGate(slots)
    app = FastAPI(title="arsel serve", docs_url=None, redoc_url=None)
    app.state.stats, app.state.engines, app.state.limits = stats, engines, limits

    @app.get("/healthz")
    async def healthz() -> Any:  # on the event loop: a closing session's counters move atomically
        body = {"status": "ok", "protocol": PROTOCOL, "model": engines.model,
                "backend": engines.backend_name, "sessions": stats.sessions,
                "closing": stats.closing, "max_sessions": max_sessions, "uptime_s": round(time.time() - stats.started, 1),
                "sessions_total": stats.sessions_total, "frames": stats.frames,
                "dropped": stats.dropped, "errors_sent": stats.errors_sent,
                "exceptions": stats.exceptions, "gaze": stats.gaze().as_dict()}
        health = getattr(engines, "health", None)  # optional: a scale-out factory's replicas (ray_gateway)
        if callable(health):  # it may block (remote calls): on a thread, after the counters were read
            body.update(await asyncio.to_thread(health))
        return JSONResponse(body)

    @app.get("/")
    def index() -> Any:
        page = static_dir / "index.html"
        if not page.is_file():
            return JSONResponse({"error": "no browser client installed (engine/serve/static/index.html)"}, 404)
        return FileResponse(page)

    if static_dir.is_dir():
        app.mount("/static", StaticFiles(directory=static_dir), name="static")

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        if token is not None and not _authorized(ws, token):
            await _send_close(ws, error_message("unauthorized", "missing or wrong token: send "
                                               "'Authorization: Bearer TOKEN' or ?token=TOKEN"), CLOSE_UNAUTHORIZED)
            return
        if stats.sessions >= max_sessions:
            await _send_close(ws, error_message("server_busy", f"all {max_sessions} sessions are in use; "
                                                "try again later"), CLOSE_BUSY)
            return
        stats.sessions += 1
        stats.sessions_total += 1
        try:
            await _Session(ws, engines, limits, stats, gate).run()
        except Exception:  # noqa: BLE001 - a session's failure is logged and counted, never the server's
            stats.exceptions += 1
            log.exception("session failed")

    return app


def frames_to_drop(queued: int, processing: int, max_inflight: int) -> int:
    """How many of the oldest ``queued`` frames to drop so that at most ``max_inflight`` frames are
    in flight: those queued plus the ``processing`` one (0 or 1) the worker is stepping. A frame
    waits at most for the one being processed, never behind another queued frame."""
    return max(0, queued + processing - max_inflight)


def _authorized(ws: Any, token: str) -> bool:
    auth = ws.headers.get("authorization", "")
    given = auth[7:].strip() if auth.lower().startswith("bearer ") else ws.query_params.get("token", "")
    return hmac.compare_digest(given.encode(), token.encode())


async def _send_close(ws: Any, msg: dict[str, Any], code: int) -> None:
    try:
        await ws.send_text(json.dumps(msg))
        await ws.close(code)
    except Exception:  # noqa: BLE001 - the client may be gone already
        pass


class _Session:
    """Glue between one WebSocket and its ``SessionCore`` (see the module docstring)."""

    def __init__(self, ws: Any, engines: EngineFactory, limits: Limits, stats: ServerStats,
                 gate: TurnGate) -> None:
        self.ws, self.engines, self.limits, self.stats = ws, engines, limits, stats
        self.turn = gate.turn()
        self.id = uuid.uuid4().hex[:12]
        self.worker = ThreadPoolExecutor(1, thread_name_prefix=f"arsel-session-{self.id}")
        self.core: SessionCore | None = None
        self.mask_encoding = "coco_rle"
        self.queue: deque[QueuedFrame] = deque()
        self.wake = asyncio.Event()
        self.send_lock = asyncio.Lock()
        self.rate = _RateLimit(limits.max_messages_per_s)
        self.client_clock = ClientClock()  # gaze times are judged against the frames' clock
        self.recent: dict[int, tuple[int, int]] = {}  # received frame id -> (h, w), last 64
        self.last_frame_id = -1
        self.dropped = 0
        self.processing = 0  # 1 while the worker steps a frame: it counts as in flight
        self.pending_prompts = 0
        self.closed = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.core = await loop.run_in_executor(self.worker, lambda: SessionCore(self.engines()))
        except BaseException:
            self.stats.sessions -= 1
            self.worker.shutdown(wait=False)
            raise
        self.stats.gaze_live[self.id] = self.core.gaze_counters
        processor = asyncio.create_task(self._process_loop())
        try:
            await self._receive_loop()
        finally:  # the slot frees at once; the state goes once a running encode finished
            self.closed = True
            self.stats.sessions -= 1
            self.stats.closing += 1
            processor.cancel()
            await asyncio.gather(processor, return_exceptions=True)
            self.turn.close()
            self.queue.clear()
            core, self.core = self.core, None
            try:
                await loop.run_in_executor(self.worker, core.close)
                del core
                await loop.run_in_executor(self.worker, release_memory)
            finally:  # the worker no longer counts: move the gaze counters to the totals (no await: atomic)
                self.stats.gaze_closed.add(self.stats.gaze_live.pop(self.id, GazeCounters()))
                self.worker.shutdown(wait=False)
                self.stats.closing -= 1

    async def send(self, out: Outgoing | dict[str, Any]) -> None:
        if isinstance(out, dict):
            self.stats.errors_sent += out.get("type") == "error"
            out = Outgoing(text=json.dumps(out, separators=(",", ":")))
        async with self.send_lock:
            if out.text is not None:
                await self.ws.send_text(out.text)
            else:
                await self.ws.send_bytes(out.data)

    async def _receive_loop(self) -> None:
        while True:
            try:
                msg = await asyncio.wait_for(self.ws.receive(), self.limits.idle_timeout_s)
            except asyncio.TimeoutError:
                await _send_close(self.ws, error_message("idle_timeout", f"nothing received for "
                                                         f"{self.limits.idle_timeout_s:g} s"), CLOSE_NORMAL)
                return
            except WebSocketDisconnect:
                return
            if msg["type"] == "websocket.disconnect":
                return
            if not self.rate.allow():
                try:
                    await self.send(error_message("rate_limited", f"over {self.limits.max_messages_per_s:g} "
                                                  "messages/s; message ignored"))
                except WebSocketDisconnect:
                    return
                continue
            try:
                try:
                    if msg.get("bytes") is not None:
                        await self._frame(msg["bytes"])
                    elif msg.get("text") is not None:
                        await self._text(msg["text"])
                except ProtocolError as exc:
                    await self.send(error_message(exc.code, exc.message, exc.frame_id))
            except WebSocketDisconnect:  # the client left while we answered
                return

    async def _text(self, text: str) -> None:
        msg = parse_text(text, self.limits)
        kind, loop = msg["type"], asyncio.get_running_loop()
        if kind == "hello":
            self.mask_encoding = msg.get("mask_encoding", "coco_rle")
            self.core.mask_encoding = self.mask_encoding  # type: ignore[union-attr]
            await self.send({"type": "welcome", "session_id": self.id, "protocol": PROTOCOL,
                             "model": self.engines.model, "max_inflight": self.limits.max_inflight,
                             "max_frame_bytes": self.limits.max_frame_bytes})
        elif kind == "ping":
            t1 = time.time_ns()
            await self.send({"type": "pong", "t0": msg["t0"], "t1": t1, "t2": time.time_ns()})
        elif kind in ("gaze", "cursor"):
            sample = gaze_sample(msg)
            now_ns = self.client_clock.now_ns(time.monotonic_ns(), sample.timestamp_ns)
            loop.run_in_executor(self.worker, self.core.add_gaze, [sample], now_ns)  # type: ignore[union-attr]
        elif kind == "prompt":
            self._check_prompt_frame(msg)
            self.pending_prompts += 1
            fut = loop.run_in_executor(self.worker, self.core.prompt, msg)  # type: ignore[union-attr]
            fut.add_done_callback(lambda f: self._prompt_done(f))

    async def _send_quietly(self, msg: dict[str, Any]) -> None:
        try:
            await self.send(msg)
        except WebSocketDisconnect:
            pass  # the client left meanwhile

    def _prompt_done(self, fut: Any) -> None:
        self.pending_prompts -= 1
        exc = fut.exception()
        if isinstance(exc, ProtocolError) and not self.closed:
            asyncio.ensure_future(self._send_quietly(error_message(exc.code, exc.message, exc.frame_id)))
        elif exc is not None:
            self.stats.exceptions += 1
            log.error("prompt failed", exc_info=exc)

    def _check_prompt_frame(self, msg: dict[str, Any]) -> None:
        """A prompt names a recent frame, or one at most ``MAX_PROMPT_AHEAD`` ahead of the newest."""
        fid = msg["frame_id"]
        if self.pending_prompts >= MAX_PENDING_PROMPTS:
            raise ProtocolError("rate_limited", f"over {MAX_PENDING_PROMPTS} prompts waiting; slow down", fid)
        hw = self.recent.get(fid)
        if hw is not None:
            check_prompt_inside(msg, hw)
        elif fid <= self.last_frame_id or fid > self.last_frame_id + MAX_PROMPT_AHEAD:
            raise ProtocolError("bad_message", f"prompt on unknown frame {fid}: name one of this session's last "
                                               f"{len(self.recent)} frames ({min(self.recent, default='-')}.."
                                               f"{max(self.recent, default='-')}) or the next one to be sent", fid)

    async def _frame(self, data: bytes) -> None:
        received_ns = time.monotonic_ns()
        if parse_is_cheap(data):  # header checks only: a thread hop would cost more than the parse
            frame = parse_frame(data, self.limits)
        else:
            frame = await asyncio.to_thread(parse_frame, data, self.limits)
        if frame.frame_id <= self.last_frame_id:
            raise ProtocolError("bad_frame", f"frame_id {frame.frame_id} does not increase (last was "
                                             f"{self.last_frame_id}); number frames 0, 1, 2, ...", frame.frame_id)
        self.last_frame_id = frame.frame_id
        self.recent[frame.frame_id] = frame.hw
        while len(self.recent) > 64:
            del self.recent[next(iter(self.recent))]
        self.client_clock.frame(frame.t_capture_ns, received_ns)
        if frame.gaze:
            asyncio.get_running_loop().run_in_executor(self.worker, self.core.add_gaze,  # type: ignore
                                                       frame.gaze, frame.t_capture_ns)
        self.queue.append(QueuedFrame(frame, time.perf_counter()))
        self._drop_oldest(frames_to_drop(len(self.queue), self.processing, self.limits.max_inflight))
        self.wake.set()

    def _drop_oldest(self, n: int) -> None:
        """Drop the ``n`` oldest queued frames (the newest frame wins): counted, never decoded, and
        kept for prompts that name them."""
        for _ in range(n):
            old = self.queue.popleft()
            self.dropped += 1
            self.stats.dropped += 1
            asyncio.get_running_loop().run_in_executor(self.worker, self.core.remember, old.frame)  # type: ignore

    async def _process_loop(self) -> None:
        try:
            await self._process_frames()
        except WebSocketDisconnect:
            return  # the client left; the receive loop ends the session

    async def _process_frames(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                async with self.turn:  # one frame per turn; those that came meanwhile: the newest wins
                    if not self.queue:
                        break
                    self._drop_oldest(len(self.queue) - 1)
                    item = self.queue.popleft()
                    self.processing = 1
                    try:
                        out, errors = await loop.run_in_executor(self.worker, self.core.process,  # type: ignore
                                                                 item, self.dropped)
                    except ProtocolError as exc:  # its image did not decode: answered, the session goes on
                        await self.send(error_message(exc.code, exc.message, exc.frame_id))
                        continue
                    except Exception:  # noqa: BLE001 - counted; the session goes on with the next frame
                        self.stats.exceptions += 1
                        log.exception("frame %d failed", item.frame.frame_id)
                        continue
                    finally:
                        self.processing = 0
                self.stats.frames += 1
                for exc in errors:
                    await self.send(error_message(exc.code, exc.message, exc.frame_id))
                await self.send(out)
