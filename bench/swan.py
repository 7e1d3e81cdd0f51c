"""The DAVIS blackswan stream both serving benchmarks use (``bench_serve``, ``bench_serve_ray``):
640x480 frames, the swan's box, re-numbered frame messages, the wait for a first keyframe, percentiles."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import cv2
import numpy as np

HW = (480, 640)


def swan_box(data: Path, hw: tuple[int, int]) -> list[float]:
    """The swan's ground-truth box on frame 0 (DAVIS annotation), in the pixels of ``hw`` frames."""
    from engine.stream.evaluate import box_of, davis_annotations

    truth = davis_annotations(data / "davis_blackswan")[0]
    sx, sy = hw[1] / truth.shape[1], hw[0] / truth.shape[0]
    return [float(v) for v in box_of(truth) * np.array([sx, sy, sx, sy])]


def frames_640(data: Path, n: int = 50) -> list[np.ndarray]:
    """The first ``n`` DAVIS blackswan frames resized to 640x480, ``(480, 640, 3)`` uint8 RGB, then
    back again (frames ``0..n-1, n-2..1``): a stream that loops over them by index stays continuous,
    as a camera's does. Wrapping from the last frame to the first would cut the scene every ``n``
    frames, and each cut sets off drift corrections that no live stream would see."""
    paths = sorted((data / "davis_blackswan" / "JPEGImages").glob("*.jpg"))[:n]
    if not paths:
        raise FileNotFoundError(f"no DAVIS blackswan frames under {data}; pass --data /path/to/shared/data")
    rgb = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    forth = [cv2.resize(f, (HW[1], HW[0]), interpolation=cv2.INTER_AREA) for f in rgb]
    return forth + forth[-2:0:-1]


def renumber(frame_msg: bytes, frame_id: int) -> bytes:
    """A packed frame message with a new ``frame_id`` and capture time now (JSON header rewritten, blob kept)."""
    from engine.serve.protocol import pack, unpack

    header, blob = unpack(frame_msg)
    header["frame_id"], header["t_capture_ns"] = frame_id, time.time_ns()
    return pack(header, bytes(blob))


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values``; NaN when there are none."""
    return float(np.percentile(values, q)) if values else float("nan")


async def until_keyframe(ws: Any, jpegs: list[bytes]) -> int:
    """Send frames at 2 fps on the open WebSocket ``ws`` until a result comes on a keyframe;
    returns the next frame id to send."""
    i = 0
    while True:
        await ws.send(renumber(jpegs[i % len(jpegs)], i))
        i += 1
        msg = json.loads(await ws.recv())
        while msg["type"] != "result":
            msg = json.loads(await ws.recv())
        if msg["keyframe_id"] >= 0:
            return i
        await asyncio.sleep(0.5)


async def start_together(session: Callable[[list[int], asyncio.Event], Awaitable[Any]], clients: int) -> list[Any]:
    """Run ``clients`` copies of ``session(ready, start)``: each appends to ``ready`` once it has its
    first keyframe, then waits for ``start``, set when all are ready (or one ended early), so all
    sessions stream over the same span and none runs alone."""
    ready: list[int] = []
    start = asyncio.Event()
    tasks = [asyncio.create_task(session(ready, start)) for _ in range(clients)]
    while len(ready) < clients and not any(t.done() for t in tasks):
        await asyncio.sleep(0.2)
    start.set()
    return await asyncio.gather(*tasks)
