"""Python client of ``arsel.v1`` (sync :class:`StreamClient` and asyncio :class:`AsyncStreamClient`).

    with StreamClient("ws://127.0.0.1:8765/v1/stream") as c:
        c.send_frame(0, rgb)
        c.prompt(0, box=[100, 80, 300, 260])
        res = c.result(0)          # the result message of frame 0; res["objects"][i]["mask"] is COCO RLE
        masks = result_masks(res)  # {id: (H, W) bool}

Frames are packed by :func:`encode_frame` (JPEG by default; ``"rgb8"`` or ``"png"`` are lossless).
Server ``error`` messages are kept in ``.errors`` (``result`` skips them) or raised by ``expect_error``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from engine.serve.protocol import pack, unpack
from engine.serve.rle import decode_rle

DEFAULT_TIMEOUT_S = 60.0


def encode_frame(frame_id: int, rgb: np.ndarray, t_capture_ns: int | None = None, encoding: str = "jpeg",
                 jpeg_quality: int = 90, depth_raw: np.ndarray | None = None, depth_scale_m: float = 0.001,
                 intrinsics: tuple[float, float, float, float] | None = None, pose: np.ndarray | None = None,
                 gaze: list[dict[str, Any]] | None = None) -> bytes:
    """One binary ``frame`` message from ``rgb`` ``(H, W, 3) uint8`` (and ``depth_raw`` ``(H, W) uint16``)."""
    h, w = rgb.shape[:2]
    if encoding == "rgb8":
        image = np.ascontiguousarray(rgb, np.uint8).tobytes()
    else:
        ext, params = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]) if encoding == "jpeg" else (".png", [])
        ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise ValueError(f"OpenCV could not encode the frame as {encoding}")
        image = buf.tobytes()
    header: dict[str, Any] = {"type": "frame", "frame_id": int(frame_id),
                              "t_capture_ns": time.time_ns() if t_capture_ns is None else int(t_capture_ns),
                              "image": {"encoding": encoding, "width": w, "height": h, "bytes": len(image)}}
    blobs = [image]
    if depth_raw is not None:
        ok, dbuf = cv2.imencode(".png", np.asarray(depth_raw, np.uint16))
        if not ok:
            raise ValueError("OpenCV could not encode the depth as a 16-bit PNG")
        blobs.append(dbuf.tobytes())
        header["depth"] = {"encoding": "png16", "width": depth_raw.shape[1], "height": depth_raw.shape[0],
                           "bytes": len(blobs[1]), "scale_m": float(depth_scale_m)}
    if intrinsics is not None:
        header["intrinsics"] = [float(v) for v in intrinsics]
    if pose is not None:
        header["pose"] = [float(v) for v in np.asarray(pose, np.float64).reshape(16)]
    if gaze:
        header["gaze"] = gaze
    return pack(header, *blobs)


def decode_message(raw: str | bytes) -> dict[str, Any]:
    """A server message -> dict; a binary (PNG-mask) result gets ``"id_map"`` ``(H, W) uint8`` added."""
    if isinstance(raw, str):
        return json.loads(raw)
    header, blob = unpack(bytes(raw), "bad_message")
    png = np.frombuffer(bytes(blob), np.uint8)
    header["id_map"] = cv2.imdecode(png, cv2.IMREAD_UNCHANGED)
    return header


def result_masks(result: dict[str, Any]) -> dict[int, np.ndarray]:
    """``{object id: (H, W) bool mask}`` of a result (COCO RLE or PNG id map)."""
    if "id_map" in result:
        return {o["id"]: result["id_map"] == o["id"] for o in result["objects"]}
    return {o["id"]: decode_rle(o["mask"]) for o in result["objects"]}


@dataclass
class _State:
    welcome: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    pongs: list[dict[str, Any]] = field(default_factory=list)

    def file(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "result":
            self.results[msg["frame_id"]] = msg
        elif kind == "error":
            self.errors.append(msg)
        elif kind == "welcome":
            self.welcome = msg
        elif kind == "pong":
            self.pongs.append(msg)


def _hello(client: str, mask_encoding: str) -> str:
    return json.dumps({"type": "hello", "client": client, "mask_encoding": mask_encoding})


def _prompt(frame_id: int, action: str, box: Any, points: Any, object_id: int | None) -> str:
    msg: dict[str, Any] = {"type": "prompt", "frame_id": int(frame_id), "object_id": object_id, "action": action,
                           "points": [[float(x), float(y), int(lab)] for x, y, lab in (points or [])],
                           "box": None if box is None else [float(v) for v in box]}
    return json.dumps(msg)


def _headers(token: str | None) -> dict[str, str] | None:
    return None if token is None else {"Authorization": f"Bearer {token}"}


class StreamClient:
    """Blocking client over ``websockets.sync`` (one session)."""

    def __init__(self, url: str, token: str | None = None, mask_encoding: str = "coco_rle",
                 client: str = "arsel-python", timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url, self.token, self.mask_encoding, self.client = url, token, mask_encoding, client
        self.timeout_s = timeout_s
        self.state = _State()
        self.ws: Any = None

    def connect(self) -> dict[str, Any]:
        """Open the session and exchange hello/welcome; returns the welcome."""
        from websockets.sync.client import connect

        self.ws = connect(self.url, additional_headers=_headers(self.token), max_size=None,
                          open_timeout=self.timeout_s, compression=None)  # frames are JPEG/PNG already
        self._send(_hello(self.client, self.mask_encoding))
        while self.state.welcome is None:
            self._recv_one(self.timeout_s)
        return self.state.welcome

    @property
    def errors(self) -> list[dict[str, Any]]:
        return self.state.errors

    def send_frame(self, frame_id: int, rgb: np.ndarray, **kwargs: Any) -> None:
        self._send(encode_frame(frame_id, rgb, **kwargs))

    def send_raw(self, message: str | bytes) -> None:
        self._send(message)

    def prompt(self, frame_id: int, action: str = "add", box: Any = None, points: Any = None,
               object_id: int | None = None) -> None:
        self._send(_prompt(frame_id, action, box, points, object_id))

    def gaze(self, t_ns: int, x: float, y: float, confidence: float = 1.0, kind: str = "gaze") -> None:
        self._send(json.dumps({"type": kind, "t_ns": int(t_ns), "x": float(x), "y": float(y),
                                 "confidence": float(confidence)}))

    def ping(self) -> dict[str, Any]:
        """Round trip a ping; returns the pong with ``t3`` (client receive, ns) added."""
        n = len(self.state.pongs)
        self._send(json.dumps({"type": "ping", "t0": time.time_ns()}))
        while len(self.state.pongs) == n:
            self._recv_one(self.timeout_s)
        return {**self.state.pongs[-1], "t3": time.time_ns()}

    def _send(self, message: str | bytes) -> None:
        self.ws.send(message)

    def _recv_one(self, timeout_s: float | None) -> dict[str, Any]:
        msg = decode_message(self.ws.recv(timeout=timeout_s))
        self.state.file(msg)
        return msg

    def recv(self, timeout_s: float | None = None) -> dict[str, Any]:
        """The next server message (any type)."""
        return self._recv_one(self.timeout_s if timeout_s is None else timeout_s)

    def result(self, frame_id: int | None = None, timeout_s: float | None = None) -> dict[str, Any]:
        """The result of ``frame_id`` (None: the next result); waits, filing other messages."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while True:
            if frame_id is not None and frame_id in self.state.results:
                return self.state.results.pop(frame_id)
            msg = self._recv_one(max(0.0, deadline - time.monotonic()))
            if frame_id is None and msg.get("type") == "result":
                return self.state.results.pop(msg["frame_id"])

    def expect_error(self, timeout_s: float | None = None) -> dict[str, Any]:
        """The next ``error`` message (results meanwhile are filed)."""
        n = len(self.state.errors)
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while len(self.state.errors) == n:
            self._recv_one(max(0.0, deadline - time.monotonic()))
        return self.state.errors[n]

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def __enter__(self) -> "StreamClient":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStreamClient:
    """The same session over ``websockets.asyncio`` (``async with AsyncStreamClient(url) as c``)."""

    def __init__(self, url: str, token: str | None = None, mask_encoding: str = "coco_rle",
                 client: str = "arsel-python-async", timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url, self.token, self.mask_encoding, self.client = url, token, mask_encoding, client
        self.timeout_s = timeout_s
        self.state = _State()
        self.ws: Any = None

    async def connect(self) -> dict[str, Any]:
        from websockets.asyncio.client import connect

        self.ws = await connect(self.url, additional_headers=_headers(self.token), max_size=None,
                                open_timeout=self.timeout_s, compression=None)  # frames are JPEG/PNG already
        await self.ws.send(_hello(self.client, self.mask_encoding))
        while self.state.welcome is None:
            await self.recv()
        return self.state.welcome

    async def send_frame(self, frame_id: int, rgb: np.ndarray, **kwargs: Any) -> None:
        await self.ws.send(encode_frame(frame_id, rgb, **kwargs))

    async def prompt(self, frame_id: int, action: str = "add", box: Any = None, points: Any = None,
                     object_id: int | None = None) -> None:
        await self.ws.send(_prompt(frame_id, action, box, points, object_id))

    async def gaze(self, t_ns: int, x: float, y: float, confidence: float = 1.0, kind: str = "gaze") -> None:
        await self.ws.send(json.dumps({"type": kind, "t_ns": int(t_ns), "x": float(x), "y": float(y),
                                       "confidence": float(confidence)}))

    async def recv(self, timeout_s: float | None = None) -> dict[str, Any]:
        import asyncio

        raw = await asyncio.wait_for(self.ws.recv(), self.timeout_s if timeout_s is None else timeout_s)
        msg = decode_message(raw)
        self.state.file(msg)
        return msg

    async def result(self, frame_id: int | None = None, timeout_s: float | None = None) -> dict[str, Any]:
        while True:
            if frame_id is not None and frame_id in self.state.results:
                return self.state.results.pop(frame_id)
            msg = await self.recv(timeout_s)
            if frame_id is None and msg.get("type") == "result":
                return self.state.results.pop(msg["frame_id"])

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None

    async def __aenter__(self) -> "AsyncStreamClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
