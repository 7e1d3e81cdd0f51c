"""One ``arsel.v1`` session's engine side: prompts, gaze, frames -> ``result`` messages.

A :class:`SessionCore` owns one ``StreamEngine`` (objects, keyframes, motion) and is touched by one
worker thread only (``app`` runs every call on the session's own single-thread executor, in the
order the messages came). Prompts name the frame they were made on: a prompt on the frame about to
be stepped is stamped by the engine as usual; one on an earlier frame is stamped with that frame's
grey image (kept for the last ``RECENT_FRAMES``), so the engine maps it through the motion between
that frame and the keyframe (``StreamEngine._prompt_motion``). Gaze and cursor samples pass a clock
guard against the client's clock at receipt (``ClientClock``, ``engine.gaze.clock``: a far-future
``t_ns`` or a jumped clock is dropped, a clock that really moved is re-locked onto), wait in a time-ordered buffer and are fed to
the dwell logic before the first frame captured after them; off-frame samples count as lost. All
of it is counted in ``gaze_counters`` (``GazeCounters``, as ``arsel track`` writes to metrics.json).
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from engine.gaze import GazeSample
from engine.gaze.clock import ClockPolicy, GazeClock
from engine.gaze.counters import GazeCounters
from engine.serve.protocol import FrameMessage, ProtocolError, check_prompt_inside, pack
from engine.serve.rle import encode_rle
from engine.stream.engine import StreamEngine
from engine.stream.events import Prompt, ReleaseEvent, SelectEvent
from engine.stream.prompt_sources import GazePrompts
from engine.stream.results import StepResult
from engine.transforms import mask_to_box_xyxy
from engine.types import Frame

RECENT_FRAMES = 64  # frames a prompt may name (their motion-resolution greys, or a dropped frame's image blob)
MAX_PENDING = 256  # prompts waiting for the frame they name
MAX_GAZE_BUFFER = 20_000  # buffered gaze samples per session (oldest dropped beyond)


@dataclass(frozen=True, slots=True)
class QueuedFrame:
    """A received frame waiting for the worker; ``t_receive`` in ``time.perf_counter`` seconds."""

    frame: FrameMessage
    t_receive: float


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message for the client: ``text`` (JSON) or ``data`` (binary); ``frame_id`` of a result."""

    text: str | None = None
    data: bytes | None = None
    frame_id: int | None = None


class ClientClock:
    """The client's clock (its frames' ``t_capture_ns``, which gaze ``t_ns`` share) estimated at a
    receive time: the newest frame's capture time plus the time received since, read on the server's
    ``time.monotonic_ns``. Before the first frame, the first gaze sample anchors it. A client that
    replays a recording slower than real time stays in step, since every frame re-anchors it."""

    def __init__(self) -> None:
        self._anchor: tuple[int, int] | None = None  # (client ns, monotonic ns at receipt)

    def frame(self, t_capture_ns: int, received_ns: int) -> None:
        self._anchor = (t_capture_ns, received_ns)

    def now_ns(self, received_ns: int, t_sample_ns: int) -> int:
        """Client time at ``received_ns``; anchors on ``t_sample_ns`` when nothing came before."""
        if self._anchor is None:
            self._anchor = (t_sample_ns, received_ns)
        return self._anchor[0] + (received_ns - self._anchor[1])


def prompt_from_message(msg: dict[str, Any]) -> Prompt:
    """A checked ``prompt`` message (add/refine) -> engine ``Prompt`` in the named frame's pixels."""
    points = msg.get("points") or []
    pts = np.array([p[:2] for p in points], np.float32).reshape(-1, 2) if points else None
    labels = np.array([p[2] for p in points], np.float32) if points else None
    box = None if msg.get("box") is None else np.asarray(msg["box"], np.float32)
    return Prompt(pts, labels, box, source="cli")


def quaternion_xyzw(rot: np.ndarray) -> list[float]:
    """Rotation matrix ``(3, 3)`` (proper, axes as columns) -> unit quaternion ``[x, y, z, w]``."""
    m = np.asarray(rot, np.float64)
    w = np.sqrt(max(0.0, 1.0 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
    x = np.copysign(np.sqrt(max(0.0, 1.0 + m[0, 0] - m[1, 1] - m[2, 2])) / 2, m[2, 1] - m[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1.0 - m[0, 0] + m[1, 1] - m[2, 2])) / 2, m[0, 2] - m[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1.0 - m[0, 0] - m[1, 1] + m[2, 2])) / 2, m[1, 0] - m[0, 1])
    q = np.array([x, y, z, w])
    return [round(float(v), 6) for v in q / np.linalg.norm(q)]


def _r(values: Any, nd: int = 4) -> list[float]:
    return [round(float(v), nd) for v in values]


class SessionCore:
    """The engine side of one session (single-threaded; see the module docstring)."""

    def __init__(self, engine: StreamEngine, mask_encoding: str = "coco_rle") -> None:
        self.engine = engine
        self.mask_encoding = mask_encoding
        self.gaze_counters = GazeCounters()
        self.gaze = GazePrompts(counters=self.gaze_counters)
        self.gaze_clock = GazeClock(ClockPolicy(check_order=False))  # the buffer reorders by time
        self._gaze_buffer: list[tuple[int, int, GazeSample]] = []
        self._gaze_seq = 0
        self._gaze_object: int | None = None
        # frame id -> (its motion grey, or the dropped frame itself until a prompt names it; (H, W))
        self._greys: OrderedDict[int, tuple[np.ndarray | FrameMessage, tuple[int, int]]] = OrderedDict()
        self._pending: list[dict[str, Any]] = []  # prompts on frames not stepped yet
        self._last_stepped = -1
        self._announced: set[int] = set()

    # --- prompts and gaze -------------------------------------------------------------------
    def prompt(self, msg: dict[str, Any]) -> None:
        """Apply a checked ``prompt`` now or, when it names a frame not stepped yet, before that frame."""
        if msg["frame_id"] > self._last_stepped:
            if len(self._pending) >= MAX_PENDING:
                raise ProtocolError("rate_limited", f"over {MAX_PENDING} prompts wait for their frames", msg["frame_id"])
            self._pending.append(msg)
        else:
            self._apply(msg, None)

    def _apply(self, msg: dict[str, Any], stepping: FrameMessage | None) -> None:
        """Apply a prompt; ``stepping``: the frame about to be stepped (None: between frames)."""
        eng, fid, action, oid = self.engine, msg["frame_id"], msg["action"], msg.get("object_id")
        if fid in self._greys:
            check_prompt_inside(msg, self._greys[fid][1])
        elif stepping is not None:
            check_prompt_inside(msg, stepping.hw)
        if action == "clear":
            eng.remove_object(None)
            self._announced.clear()
            return
        if action in ("refine", "remove") and oid not in eng.tracker:
            raise ProtocolError("bad_message", f"prompt {action}: no object {oid} in this session", fid)
        if action == "remove":
            eng.remove_object(oid)
            self._announced.discard(oid)
            return
        prompt = prompt_from_message(msg)
        if action == "add":
            if oid is not None and oid in eng.tracker:
                raise ProtocolError("bad_message", f"prompt add: object {oid} exists; refine it or add with "
                                                   "object_id null", fid)
            try:
                oid = eng.add_object(prompt, oid)
            except ValueError as exc:
                raise ProtocolError("bad_message", f"prompt add: {exc}", fid) from None
            self._announced.discard(oid)
        else:
            eng.tracker.refine(oid, prompt)
        if stepping is None or fid != stepping.frame_id:
            self._stamp(oid, fid)

    def _stamp(self, object_id: int, frame_id: int) -> None:
        """The object's prompt is in frame ``frame_id``'s pixels (an earlier or dropped frame)."""
        kept = self._greys.get(frame_id)
        if kept is None:
            return  # forgotten meanwhile: the engine stamps it with the next stepped frame
        grey, hw = kept
        if isinstance(grey, FrameMessage):  # a dropped frame: decoded now that a prompt names it
            try:
                grey = self.engine.motion_estimator.small_grey(grey.rgb())
            except ProtocolError:
                return  # its image does not decode: the engine stamps it with the next stepped frame
            self._greys[frame_id] = (grey, hw)
        obj = self.engine.tracker.get(object_id)
        obj.prompt_frame_index, obj.prompt_grey, obj.prompt_hw = frame_id, grey, hw

    def remember(self, frame: FrameMessage, grey: np.ndarray | None = None) -> None:
        """Keep a frame for prompts naming it: a stepped frame's motion-resolution ``grey`` (``hxw
        uint8``, ``StreamEngine.last_grey``), a dropped frame as it came (decoded only if a prompt names it)."""
        kept = replace(frame, depth_raw=None) if grey is None else grey
        self._greys[frame.frame_id] = (kept, frame.hw)
        while len(self._greys) > RECENT_FRAMES:
            self._greys.popitem(last=False)

    def add_gaze(self, samples: tuple[GazeSample, ...] | list[GazeSample], client_now_ns: int) -> None:
        """Buffer gaze/cursor samples that pass the clock guard against ``client_now_ns`` (the client's
        clock when they came, ``ClientClock``); fed to the dwell logic by capture time (``_feed_gaze``)."""
        counters, clock = self.gaze_counters, self.gaze_clock
        for s in samples:
            resyncs = clock.stats["clock_resyncs"]
            reason = clock.check(s.timestamp_ns, client_now_ns)
            if clock.stats["clock_resyncs"] != resyncs:
                counters.clock_resyncs += 1
                self.gaze.restart_clock()
            if reason is not None:
                counters.drop(reason)
                continue
            heapq.heappush(self._gaze_buffer, (s.timestamp_ns, self._gaze_seq, s))
            self._gaze_seq += 1
        while len(self._gaze_buffer) > MAX_GAZE_BUFFER:
            self._gaze_buffer.remove(max(self._gaze_buffer))
            heapq.heapify(self._gaze_buffer)
            counters.drop("overflow")

    def _feed_gaze(self, t_capture_ns: int) -> None:
        while self._gaze_buffer and self._gaze_buffer[0][0] <= t_capture_ns:
            _, _, sample = heapq.heappop(self._gaze_buffer)
            for ev in self.gaze.push(sample):
                if isinstance(ev, ReleaseEvent):  # gaze releases the object gaze selected, not the user's
                    if self._gaze_object is not None:
                        self.engine.remove_object(self._gaze_object)
                        self._announced.discard(self._gaze_object)
                    self._gaze_object = None
                elif isinstance(ev, SelectEvent):
                    self._gaze_object = self.engine.handle(ev)
                    if self._gaze_object is not None:
                        self._announced.discard(self._gaze_object)
                else:
                    self.engine.handle(ev)

    # --- frames -------------------------------------------------------------------------------
    def process(self, item: QueuedFrame, dropped: int) -> tuple[Outgoing, list[ProtocolError]]:
        """Step one frame: apply its prompts and gaze, decode, lift; returns the result message and
        the errors of prompts applied on the way (each still gets its ``error``)."""
        t_start = time.perf_counter()
        msg = item.frame
        rgb = msg.rgb()  # a frame that does not decode raises here, before its prompts are applied
        errors = self._apply_pending(msg)
        self.gaze.frame_hw = msg.hw  # gaze is in this frame's pixels
        self._feed_gaze(msg.t_capture_ns)
        frame = Frame(msg.frame_id, msg.t_capture_ns, rgb, msg.depth_raw, msg.intrinsics)
        res = self.engine.step(frame)
        self._last_stepped = msg.frame_id
        self.remember(msg, self.engine.last_grey)
        t_lift = time.perf_counter()
        objects = [self._object(r, msg) for r in res.objects]
        lift_ms = (time.perf_counter() - t_lift) * 1e3
        out = self._result(res, objects, item, t_start, lift_ms, dropped)
        return out, errors

    def _apply_pending(self, stepping: FrameMessage) -> list[ProtocolError]:
        errors, frame_id = [], stepping.frame_id
        due = [m for m in self._pending if m["frame_id"] <= frame_id]
        self._pending = [m for m in self._pending if m["frame_id"] > frame_id]
        for m in due:
            try:
                self._apply(m, stepping)
            except ProtocolError as exc:
                errors.append(exc)
        return errors

    def _object(self, r: Any, msg: FrameMessage) -> dict[str, Any]:
        new = r.object_id not in self._announced
        self._announced.add(r.object_id)
        status = "new" if new else r.wire_status
        xyxy = mask_to_box_xyxy(r.mask) if r.found else None  # inclusive pixel indices
        box = None if xyxy is None else [float(xyxy[0]), float(xyxy[1]), float(xyxy[2] + 1), float(xyxy[3] + 1)]
        score = float(r.score) if np.isfinite(r.score) else 0.0
        obj: dict[str, Any] = {"id": int(r.object_id), "score": round(score, 4), "status": status, "bbox_xyxy": box}
        if self.mask_encoding == "coco_rle":
            obj["mask"] = encode_rle(r.mask)
        if msg.depth_raw is not None and msg.intrinsics is not None and box is not None:
            obj.update(self._lift(r.mask, msg))
        return obj

    def _lift(self, mask: np.ndarray, msg: FrameMessage) -> dict[str, Any]:
        from engine.lift.single import lift

        res = lift(mask, msg.depth_raw, msg.intrinsics, pose=msg.pose, compute_volume=False)  # type: ignore[arg-type]
        if res.status != "ok":
            return {}
        return {"box3d": {"center_m": _r(res.obb_center_m), "extent_m": _r(res.obb_extent_m),
                          "rotation_xyzw": quaternion_xyzw(res.obb_rotation)},
                "centroid_m": _r(res.centroid_m)}

    def _result(self, res: StepResult, objects: list[dict[str, Any]], item: QueuedFrame, t_start: float,
                lift_ms: float, dropped: int) -> Outgoing:
        import json

        t = res.timings_ms
        header: dict[str, Any] = {
            "type": "result", "frame_id": item.frame.frame_id, "keyframe_id": int(res.keyframe_index),
            "embedding_age_frames": max(0, int(res.embedding_age_frames)), "objects": objects,
            "latency_ms": {"queue": 0.0, "motion": round(t.get("motion", 0.0), 2),
                           "decode": round(t.get("decode", 0.0), 2), "postprocess": round(t.get("postprocess", 0.0), 2),
                           "lift": round(lift_ms, 2), "server_total": 0.0},
            "dropped": dropped,
        }
        lat = header["latency_ms"]
        lat["queue"] = round(max(0.0, (t_start - item.t_receive) * 1e3), 2)
        if self.mask_encoding == "png":
            ok, png = cv2.imencode(".png", res.id_map())
            if not ok:
                raise RuntimeError("OpenCV could not encode the id-map PNG")
            h, w = res.frame_hw
            header["mask"] = {"encoding": "png", "width": w, "height": h, "bytes": len(png)}
            lat["server_total"] = round((time.perf_counter() - item.t_receive) * 1e3, 2)
            return Outgoing(data=pack(header, png.tobytes()), frame_id=item.frame.frame_id)
        lat["server_total"] = round((time.perf_counter() - item.t_receive) * 1e3, 2)
        return Outgoing(text=json.dumps(header, separators=(",", ":")), frame_id=item.frame.frame_id)

    def close(self) -> None:
        """Stop the engine's encoder worker and drop all state (then ``release_memory``)."""
        self.engine.close()
        self._greys.clear()
        self._gaze_buffer.clear()
        self._pending.clear()


def release_memory() -> None:
    """Collect reference cycles now (an engine and its encoder worker form one, holding embeddings
    until the next full collection), then hand freed heap back to the OS: glibc keeps it in
    per-thread arenas, and every session's threads leave some behind (no-op off Linux)."""
    import ctypes
    import gc
    import sys

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def freeze_loaded_objects() -> None:
    """Collect, then move every object alive now (the loaded model, torch's and the other libraries'
    modules) into the collector's permanent generation (``gc.freeze``): a full collection during
    streaming then walks only what the sessions made since. Without it, such a collection walks
    the whole process while holding the GIL on whichever session thread set it off, stalling every
    session. Call once, after loading and before serving."""
    import gc

    gc.collect()
    gc.freeze()
