"""``arsel.v1`` messages: schema validation, binary framing, frame decoding, message builders.

Every message a client sends is checked here, before any slow work: first against the JSON Schema
(``docs/protocol.schema.json``), then the rules the schema cannot say. Those about the input itself
(finite numbers, image size and bytes, depth format and units, intrinsics, pose, prompts against
the frame) are ``engine.validate``'s, the same functions the CLI calls; its ``InputError`` becomes
a :class:`ProtocolError` (``input_error_code``). Only the wire's own rules (framing, blob byte
counts, encodings, limits) live here. The session answers a ``ProtocolError`` with an ``error``
message and lives on.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from engine import validate
from engine.gaze import GazeSample
from engine.types import CameraIntrinsics

PROTOCOL = "arsel.v1"
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "protocol.schema.json"
ErrorCode = Literal["bad_message", "too_large", "bad_frame", "unauthorized", "server_busy",
                    "unsupported", "rate_limited", "idle_timeout"]
CLIENT_TEXT_TYPES = ("hello", "prompt", "gaze", "cursor", "ping")
_U32 = struct.Struct("<I")


class ProtocolError(Exception):
    """A message broke the protocol: ``code`` (an ``error`` code), ``message`` (what and how to fix)."""

    def __init__(self, code: ErrorCode, message: str, frame_id: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.frame_id = code, message, frame_id


def input_error_code(exc: validate.InputError, default: ErrorCode) -> ErrorCode:
    """The ``error`` code of a validation failure: ``too_large`` for a size limit, else ``default``
    (``bad_frame`` in a frame, ``bad_message`` in a text message)."""
    return "too_large" if isinstance(exc, validate.InputTooLarge) else default


@contextmanager
def checked(code: ErrorCode, frame_id: int | None = None) -> Iterator[None]:
    """Run ``engine.validate`` checks; an ``InputError`` becomes ``ProtocolError`` (``input_error_code``)."""
    try:
        yield
    except validate.InputError as exc:
        raise ProtocolError(input_error_code(exc, code), str(exc), frame_id) from None


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-session limits. ``max_frame_bytes``: one binary message; ``max_image_side``: image/depth
    width and height; ``max_text_bytes``: one text message; ``max_messages_per_s``: sustained rate
    (burst of one second's worth); ``idle_timeout_s``: close a session silent this long."""

    max_frame_bytes: int = 8 << 20
    max_image_side: int = 4096
    max_text_bytes: int = 64 << 10
    max_messages_per_s: float = 400.0
    idle_timeout_s: float = 60.0
    max_inflight: int = 2

    def __post_init__(self) -> None:
        if min(self.max_frame_bytes, self.max_image_side, self.max_text_bytes, self.max_inflight) < 1:
            raise ValueError(f"Limits must be positive, got {self}")
        if self.max_messages_per_s <= 0 or self.idle_timeout_s <= 0:
            raise ValueError(f"Limits rates and timeouts must be > 0, got {self}")


@dataclass(frozen=True, slots=True)
class FrameMessage:
    """A checked ``frame`` whose image is decoded on demand (``rgb()``), so a frame dropped for a
    newer one costs no decode. ``image``: the image blob as sent (``encoding``, already checked: its
    size, magic bytes, end marker and stated ``hw`` ``(H, W)``); ``depth_raw`` ``(H, W) uint16`` or
    None, ``intrinsics`` (with the depth scale) or None, ``pose`` ``(4, 4) float64`` camera-to-world
    or None."""

    frame_id: int
    t_capture_ns: int
    image: bytes
    encoding: str
    hw: tuple[int, int]
    depth_raw: np.ndarray | None
    intrinsics: CameraIntrinsics | None
    pose: np.ndarray | None
    gaze: tuple[GazeSample, ...]

    def rgb(self) -> np.ndarray:
        """The image as ``(H, W, 3) uint8`` RGB, decoded now (``ProtocolError`` ``bad_frame`` when the
        checked bytes still do not decode)."""
        return decode_image(self.image, self.encoding, self.hw, self.frame_id)


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The protocol's JSON Schema (``docs/protocol.schema.json``)."""
    return json.loads(SCHEMA_PATH.read_text())


@lru_cache(maxsize=32)
def validator(name: str) -> Any:
    """A ``jsonschema`` validator for the message ``name`` (a key of the schema's ``$defs``)."""
    import jsonschema

    defs = schema()["$defs"]
    if name not in defs:
        raise KeyError(f"no message {name!r} in the arsel.v1 schema")
    return jsonschema.Draft202012Validator({"$ref": f"#/$defs/{name}", "$defs": defs})


def check(name: str, message: Any, code: ErrorCode = "bad_message", frame_id: int | None = None) -> None:
    """Raise ``ProtocolError(code)`` naming the first schema violation of ``message`` as ``name``."""
    err = next(iter(sorted(validator(name).iter_errors(message), key=lambda e: list(e.path))), None)
    if err is not None:
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ProtocolError(code, f"{name} message invalid at {where}: {err.message}", frame_id)


def _loads(text: str | bytes, code: ErrorCode, what: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(code, f"{what} is not valid UTF-8 JSON ({exc}); send one JSON object") from None


def parse_text(text: str, limits: Limits) -> dict[str, Any]:
    """Validate one client text message; returns it as a dict (schema- and semantically checked)."""
    if len(text.encode("utf-8", "surrogatepass")) > limits.max_text_bytes:
        raise ProtocolError("too_large", f"text message over {limits.max_text_bytes} bytes")
    msg = _loads(text, "bad_message", "text message")
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("bad_message", 'a text message must be a JSON object with a string "type"')
    kind = msg["type"]
    if kind == "frame":
        raise ProtocolError("bad_message", "frames are binary messages (uint32 header length, header, blobs)")
    if kind not in CLIENT_TEXT_TYPES:
        raise ProtocolError("unsupported", f"unknown message type {kind!r}; arsel.v1 clients send "
                                           f"{', '.join(CLIENT_TEXT_TYPES)} and binary frames")
    check(kind, msg, frame_id=msg.get("frame_id") if kind == "prompt" and _is_uint(msg.get("frame_id")) else None)
    with checked("bad_message"):
        if kind in ("gaze", "cursor") and msg["confidence"] > 0:
            validate.finite(f"{kind} x, y", (msg["x"], msg["y"]))
        if kind == "ping":
            validate.finite("ping t0", (msg["t0"],))
    if kind == "prompt":
        _check_prompt(msg)
    return msg


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _check_prompt(msg: dict[str, Any]) -> None:
    check_prompt_inside(msg, None)
    fid, action = msg["frame_id"], msg["action"]
    points, box = msg.get("points") or [], msg.get("box")
    if action in ("add", "refine") and not points and box is None:
        raise ProtocolError("bad_message", f"prompt {action} needs points or a box", fid)
    if action in ("refine", "remove") and msg.get("object_id") is None:
        raise ProtocolError("bad_message", f"prompt {action} needs an object_id", fid)


def check_prompt_inside(msg: dict[str, Any], frame_hw: tuple[int, int] | None) -> None:
    """A prompt's points (finite, labels 0/1) lie in its frame (``[0, W) x [0, H)`` pixels) and its box
    (finite, positive area) within ``[0, W] x [0, H]``; ``frame_hw`` None: frame not known yet."""
    points, box = msg.get("points") or [], msg.get("box")
    with checked("bad_message", msg["frame_id"]):
        if points:
            validate.points_xy("prompt points", [p[:2] for p in points], frame_hw)
            validate.point_labels("prompt point label", [p[2] for p in points])
        if box is not None:
            validate.box_xyxy("prompt box", box, frame_hw, inside=True)


def pack(header: dict[str, Any], *blobs: bytes) -> bytes:
    """A binary message: uint32 LE header length, UTF-8 JSON header, blobs."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((_U32.pack(len(head)), head, *blobs))


def unpack(data: bytes, code: ErrorCode = "bad_frame") -> tuple[Any, memoryview]:
    """Split a binary message into (parsed JSON header, the bytes after it)."""
    if len(data) < 4:
        raise ProtocolError(code, f"binary message of {len(data)} bytes is shorter than its 4-byte header length")
    (n,) = _U32.unpack_from(data)
    if n == 0 or 4 + n > len(data):
        raise ProtocolError(code, f"header length {n} is beyond the message ({len(data) - 4} bytes after it)")
    view = memoryview(data)
    return _loads(bytes(view[4:4 + n]), code, "the frame header"), view[4 + n:]


INLINE_HEADER_BYTES = 16 << 10  # frame headers up to this size (no depth) are parsed on the event loop


def parse_is_cheap(data: bytes) -> bool:
    """Whether ``parse_frame(data)`` costs little enough (about 0.2 ms) to run on the event loop
    rather than a thread: a header of at most ``INLINE_HEADER_BYTES`` that names no depth (decoding
    depth takes milliseconds). Conservative: any ``"depth"`` in the header bytes counts."""
    if len(data) < 4:
        return True
    (n,) = _U32.unpack_from(data)
    return n <= INLINE_HEADER_BYTES and b'"depth"' not in data[4:4 + n]


def parse_frame(data: bytes, limits: Limits) -> FrameMessage:
    """Validate one binary ``frame`` message and decode all but its image (raises ``ProtocolError``):
    the image's bytes are checked here, without decoding its pixels (``FrameMessage.rgb``)."""
    if len(data) > limits.max_frame_bytes:
        raise ProtocolError("too_large", f"frame message of {len(data)} bytes is over the limit of "
                                         f"{limits.max_frame_bytes}; send a smaller or JPEG-compressed image")
    header, rest = unpack(data)
    fid = header.get("frame_id") if isinstance(header, dict) and _is_uint(header.get("frame_id")) else None
    if isinstance(header, dict) and header.get("type") not in (None, "frame"):
        raise ProtocolError("unsupported", f"binary message type {header.get('type')!r}; clients send 'frame'", fid)
    _check_encodings(header, fid)
    check("frame_header", header, "bad_frame", fid)
    image, depth = header["image"], header.get("depth")
    with checked("bad_frame", fid):  # the time and sizes the header claims, before any decoding
        validate.timestamp_ns("frame t_capture_ns", header["t_capture_ns"])
        for name, blob in (("image", image), ("depth", depth)):
            if blob is not None:
                validate.image_hw(name, (blob["height"], blob["width"]), limits.max_image_side)
    sizes = [image["bytes"]] + ([depth["bytes"]] if depth else [])
    if sum(sizes) != len(rest):
        raise ProtocolError("bad_frame", f"the header lists blobs of {sizes} bytes but {len(rest)} bytes follow it", fid)
    blob, hw = bytes(rest[:image["bytes"]]), (image["height"], image["width"])
    check_image(blob, image["encoding"], hw, fid)
    depth_raw = None if depth is None else decode_depth(bytes(rest[image["bytes"]:]), depth, hw, fid)
    intr = _intrinsics(header, hw, depth, fid)
    pose = _pose(header.get("pose"), fid)
    gaze = _gaze(header.get("gaze", []), fid)
    return FrameMessage(fid, header["t_capture_ns"], blob, image["encoding"], hw,  # type: ignore[arg-type]
                        depth_raw, intr, pose, gaze)


def _check_encodings(header: Any, fid: int | None) -> None:
    if not isinstance(header, dict):
        return
    for key, known in (("image", ("jpeg", "png", "rgb8")), ("depth", ("png16", "u16"))):
        blob = header.get(key)
        enc = blob.get("encoding") if isinstance(blob, dict) else None
        if isinstance(enc, str) and enc not in known:
            raise ProtocolError("unsupported", f"{key} encoding {enc!r}; this server reads {', '.join(known)}", fid)


def _image_hw(data: bytes, fid: int | None) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.height, im.width
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for garbage
        raise ProtocolError("bad_frame", f"the image bytes do not decode ({type(exc).__name__})", fid) from None


def check_image(data: bytes, encoding: str, hw: tuple[int, int], fid: int | None) -> None:
    """An image blob against its header, without decoding pixels: ``rgb8`` byte count; for PNG and
    JPEG the magic bytes, the end marker and the size in the image's own header."""
    if encoding == "rgb8":
        if len(data) != hw[0] * hw[1] * 3:
            raise ProtocolError("bad_frame", f"rgb8 image of {hw[1]}x{hw[0]} needs {hw[0] * hw[1] * 3} bytes, got "
                                             f"{len(data)}", fid)
        return
    with checked("bad_frame", fid):
        validate.image_bytes("image", data, encoding)
        validate.same_hw(f"the {encoding} image", _image_hw(data, fid), "the header says", hw,
                         "send width and height of the image itself")


def decode_image(data: bytes, encoding: str, hw: tuple[int, int], fid: int | None) -> np.ndarray:
    """An image blob that passed ``check_image`` -> ``(H, W, 3) uint8 RGB``."""
    if encoding == "rgb8":
        return np.frombuffer(data, np.uint8).reshape(hw[0], hw[1], 3).copy()
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)  # = IMREAD_COLOR + BGR2RGB, one pass
    if rgb is None or rgb.shape[:2] != hw:
        raise ProtocolError("bad_frame", f"the {encoding} image does not decode; send a whole, valid {encoding} image",
                            fid)
    return rgb


def decode_depth(data: bytes, blob: dict[str, Any], image_hw: tuple[int, int], fid: int | None) -> np.ndarray:
    """Depth blob -> ``(H, W) uint16`` raw depth, the colour image's size."""
    hw = (blob["height"], blob["width"])
    with checked("bad_frame", fid):
        validate.same_hw("depth", hw, "the image is", image_hw, "send depth aligned to the colour image")
        if blob["encoding"] == "u16":
            if len(data) != hw[0] * hw[1] * 2:
                raise ProtocolError("bad_frame", f"u16 depth of {hw[1]}x{hw[0]} needs {hw[0] * hw[1] * 2} bytes, "
                                                 f"got {len(data)}", fid)
            depth = np.frombuffer(data, "<u2").reshape(hw).astype(np.uint16)
        else:
            validate.image_bytes("depth", data, "png")
            validate.same_hw("the depth PNG", _image_hw(data, fid), "the header says", hw,
                             "send width and height of the depth image itself")
            depth = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            if depth is None:
                raise ProtocolError("bad_frame", "the png16 depth does not decode", fid)
            validate.depth_array("png16 depth", depth)
        validate.depth_units("depth", depth, float(blob["scale_m"]),
                             fix="send the depth's scale_m in metres per raw unit (0.001 for millimetres)")
    return depth


def _intrinsics(header: dict[str, Any], hw: tuple[int, int], depth: dict[str, Any] | None,
                fid: int | None) -> CameraIntrinsics | None:
    k = header.get("intrinsics")
    if k is None:
        return None
    with checked("bad_frame", fid):
        fx, fy, cx, cy = validate.finite("intrinsics [fx, fy, cx, cy]", k)
        validate.intrinsics("intrinsics [fx, fy, cx, cy]", hw[1], hw[0], fx, fy, cx, cy)
    scale = float(depth["scale_m"]) if depth else 0.001
    try:
        return CameraIntrinsics(hw[1], hw[0], fx, fy, cx, cy, scale)
    except ValueError as exc:
        raise ProtocolError("bad_frame", f"intrinsics: {exc}", fid) from None


def _pose(values: list[float] | None, fid: int | None) -> np.ndarray | None:
    if values is None:
        return None
    with checked("bad_frame", fid):
        return validate.pose("pose (row-major 4x4 camera-to-world)", np.asarray(values, object).reshape(4, 4))


def _gaze(samples: list[dict[str, Any]], fid: int | None) -> tuple[GazeSample, ...]:
    try:
        return tuple(GazeSample(s["t_ns"], s["x"], s["y"], s["confidence"]) for s in samples)
    except (ValueError, OverflowError) as exc:
        raise ProtocolError("bad_frame", f"frame gaze: {exc}", fid) from None


def gaze_sample(msg: dict[str, Any]) -> GazeSample:
    """A checked ``gaze``/``cursor`` message -> ``GazeSample``."""
    try:
        return GazeSample(msg["t_ns"], msg["x"], msg["y"], msg["confidence"])
    except (ValueError, OverflowError) as exc:
        raise ProtocolError("bad_message", f"{msg['type']}: {exc}") from None


def error_message(code: ErrorCode, message: str, frame_id: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if frame_id is not None:
        out["frame_id"] = frame_id
    return out
