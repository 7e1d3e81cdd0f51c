"""Shared pieces of the ``arsel serve`` tests: a schema-validating client, real frames, servers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.serve.client import StreamClient, decode_message
from engine.serve.protocol import check, unpack

SERVER_TEXT = {"welcome", "pong", "result", "error"}


def validate_server(raw: str | bytes) -> dict[str, Any]:
    """Validate one server message against the arsel.v1 schema (raises AssertionError)."""
    if isinstance(raw, bytes):
        header, blob = unpack(raw, "bad_message")
        _strict("mask_header", header)
        assert header["mask"]["bytes"] == len(blob)
        return header
    msg = decode_message(raw)
    assert msg.get("type") in SERVER_TEXT, msg
    _strict(msg["type"], msg)
    return msg


def validate_client(raw: str | bytes) -> None:
    """Validate one client message (text or binary frame header) against the schema."""
    if isinstance(raw, bytes):
        header, _ = unpack(raw)
        _strict("frame_header", header)
    else:
        msg = decode_message(raw)
        _strict(msg["type"], msg)


def _strict(name: str, msg: Any) -> None:
    try:
        check(name, msg)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"{name} message breaks the arsel.v1 schema: {exc}\n{msg}") from None


class CheckedClient(StreamClient):
    """``StreamClient`` validating every message it sends (valid ones) and receives."""

    def __init__(self, *args: Any, check_sent: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.check_sent = check_sent
        self.received = 0

    def _send(self, message: str | bytes) -> None:
        if self.check_sent:
            validate_client(message)
        super()._send(message)

    def _recv_one(self, timeout_s: float | None) -> dict[str, Any]:
        raw = self.ws.recv(timeout=timeout_s)
        validate_server(raw)
        self.received += 1
        msg = decode_message(raw)
        self.state.file(msg)
        return msg


def blackswan(data_dir: Path, n: int) -> tuple[list[Path], list[np.ndarray], np.ndarray]:
    """First ``n`` DAVIS blackswan frames (paths, RGB arrays) and the GT box of frame 0 (xyxy)."""
    paths = sorted((data_dir / "davis_blackswan" / "JPEGImages").glob("*.jpg"))[:n]
    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    gt = cv2.imread(str(sorted((data_dir / "davis_blackswan" / "Annotations").glob("*.png"))[0]), 0) > 0
    ys, xs = np.nonzero(gt)
    return paths, frames, np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def gt_masks(data_dir: Path, n: int) -> list[np.ndarray]:
    paths = sorted((data_dir / "davis_blackswan" / "Annotations").glob("*.png"))[:n]
    return [cv2.imread(str(p), 0) > 0 for p in paths]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@contextmanager
def served(engines: Any, **kwargs: Any) -> Iterator[Any]:
    """A real uvicorn server on 127.0.0.1 (free port) serving ``create_app(engines, **kwargs)``."""
    from engine.serve.app import create_app
    from engine.serve.cli import BackgroundServer

    app = create_app(engines, **kwargs)
    with BackgroundServer(app, kwargs.get("limits")) as srv:
        srv.app = app
        yield srv
