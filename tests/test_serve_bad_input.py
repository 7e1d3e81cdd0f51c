"""``arsel serve`` under bad input: each case gets its ``error`` code, the session lives on and the
next valid frame still gets a correct result. Also tokens, session limit, idle timeout, rate limit,
and the COCO RLE encoder against pycocotools."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from engine.serve.client import encode_frame, result_masks
from engine.serve.engines import LocalEngines
from engine.serve.protocol import Limits, pack, unpack
from engine.serve.rle import decode_rle, encode_rle
from engine.stream.scheduler import KeyframePolicy
from tests.serve_support import CheckedClient, blackswan, jaccard, served

pytest.importorskip("fastapi")
websockets_sync = pytest.importorskip("websockets.sync.client")
HW = (240, 427)


def _frame(fid: int, **header: Any) -> bytes:
    """A valid 427x240 PNG frame message with header fields replaced/added by ``header``."""
    rgb = np.zeros((*HW, 3), np.uint8)
    raw = encode_frame(fid, rgb, encoding="png")
    head, blob = unpack(raw)
    for k, v in header.items():
        if v is None:
            head.pop(k, None)
        else:
            head[k] = v
    return pack(head, bytes(blob))


def _img(**kw: Any) -> dict[str, Any]:
    return {"encoding": "png", "width": HW[1], "height": HW[0], "bytes": 0, **kw}


def _with_blob(head_update: dict[str, Any], blob: bytes, fid: int) -> bytes:
    head = {"type": "frame", "frame_id": fid, "t_capture_ns": 1, **head_update}
    return pack(head, blob)


JPEG = cv2.imencode(".jpg", np.zeros((*HW, 3), np.uint8))[1].tobytes()
PNG = cv2.imencode(".png", np.zeros((*HW, 3), np.uint8))[1].tobytes()
DEPTH_SMALL = cv2.imencode(".png", np.zeros((10, 10), np.uint16))[1].tobytes()
DEPTH_8BIT = cv2.imencode(".png", np.full(HW, 100, np.uint8))[1].tobytes()
DEPTH_FAR = np.full(HW, 5000, "<u2").tobytes()  # 5 km at scale_m 1
NaN = float("nan")


def _cases(fid: int) -> dict[str, tuple[Any, str]]:
    """name -> (message, expected code); ``fid``: a frame id that is still fresh."""
    img = {"encoding": "png", "width": HW[1], "height": HW[0], "bytes": len(PNG)}
    return {
        "truncated_header": (b"\x05\x00", "bad_frame"),
        "header_len_beyond_message": (struct.pack("<I", 4000) + b'{"type":"frame"}', "bad_frame"),
        "zero_header_len": (struct.pack("<I", 0) + b"xx", "bad_frame"),
        "non_json_header": (struct.pack("<I", 5) + b"{nope" + PNG, "bad_frame"),
        "header_not_object": (pack([1, 2, 3]), "bad_frame"),
        "frame_id_string": (_with_blob({"frame_id": "7", "image": img}, PNG, 0), "bad_frame"),
        "missing_image": (_with_blob({}, PNG, fid), "bad_frame"),
        "negative_width": (_with_blob({"image": {**img, "width": -3}}, PNG, fid), "bad_frame"),
        "extra_header_field": (_with_blob({"image": img, "colour": "blue"}, PNG, fid), "bad_frame"),
        "jpeg_not_a_jpeg": (_with_blob({"image": {**img, "encoding": "jpeg", "bytes": 100}}, b"\x00" * 100, fid),
                            "bad_frame"),
        "png_header_jpeg_bytes": (_with_blob({"image": {**img, "bytes": len(JPEG)}}, JPEG, fid), "bad_frame"),
        "truncated_png": (_with_blob({"image": {**img, "bytes": 40}}, PNG[:40], fid), "bad_frame"),
        "size_not_matching_image": (_with_blob({"image": {**img, "width": 320}}, PNG, fid), "bad_frame"),
        "blob_bytes_mismatch": (_with_blob({"image": {**img, "bytes": len(PNG) + 9}}, PNG, fid), "bad_frame"),
        "rgb8_wrong_length": (_with_blob({"image": {**img, "encoding": "rgb8", "bytes": 30}}, b"\x01" * 30, fid),
                              "bad_frame"),
        "depth_wrong_size": (_with_blob({"image": img, "depth": {"encoding": "png16", "width": 10, "height": 10,
                                         "bytes": len(DEPTH_SMALL), "scale_m": 0.001}}, PNG + DEPTH_SMALL, fid),
                             "bad_frame"),
        "depth_8bit_png": (_with_blob({"image": img, "depth": {"encoding": "png16", "width": HW[1], "height": HW[0],
                                       "bytes": len(DEPTH_8BIT), "scale_m": 0.001}}, PNG + DEPTH_8BIT, fid),
                           "bad_frame"),
        "depth_units_km": (_with_blob({"image": img, "depth": {"encoding": "u16", "width": HW[1], "height": HW[0],
                                       "bytes": len(DEPTH_FAR), "scale_m": 1.0}}, PNG + DEPTH_FAR, fid), "bad_frame"),
        "nan_intrinsics": (_frame(fid, intrinsics=[NaN, 500.0, 200.0, 120.0]), "bad_frame"),
        "principal_point_far": (_frame(fid, intrinsics=[500.0, 500.0, -5000.0, 1e12]), "bad_frame"),
        "focal_implausible": (_frame(fid, intrinsics=[1e9, 1e9, 200.0, 120.0]), "bad_frame"),
        "pose_nan": (_frame(fid, pose=[NaN] + [0.0] * 15), "bad_frame"),
        "pose_mirrored": (_frame(fid, pose=[-1.0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]), "bad_frame"),
        "image_extreme_aspect": (_with_blob({"image": {**img, "encoding": "rgb8", "width": 400, "height": 8,
                                             "bytes": 9600}}, b"\x01" * 9600, fid), "bad_frame"),
        "t_capture_over_int64": (_frame(fid, t_capture_ns=2**70), "bad_frame"),
        "image_too_small": (_with_blob({"image": {**img, "encoding": "rgb8", "width": 4, "height": 4, "bytes": 48}},
                                       b"\x01" * 48, fid), "bad_frame"),
        "negative_intrinsics": (_frame(fid, intrinsics=[-500.0, 500.0, 200.0, 120.0]), "bad_frame"),
        "pose_not_rigid": (_frame(fid, pose=[2.0] * 16), "bad_frame"),
        "bad_gaze_in_header": (_frame(fid, gaze=[{"t_ns": 1, "x": 1, "y": 1, "confidence": 3}]), "bad_frame"),
        "unsupported_image_encoding": (_frame(fid, image=_img(encoding="webp", bytes=len(PNG))), "unsupported"),
        "image_side_over_limit": (_frame(fid, image=_img(width=5000, bytes=len(PNG))), "too_large"),
        "frame_20_mib": (_frame(fid) + b"\x00" * (20 << 20), "too_large"),
        "frame_id_not_increasing": (_frame(0), "bad_frame"),
        "text_not_json": ("{type: hello", "bad_message"),
        "text_json_array": ("[1, 2]", "bad_message"),
        "unknown_type": (json.dumps({"type": "teleport"}), "unsupported"),
        "frame_as_text": (json.dumps({"type": "frame", "frame_id": 1}), "bad_message"),
        "hello_bad_encoding": (json.dumps({"type": "hello", "mask_encoding": "bmp"}), "bad_message"),
        "prompt_unknown_frame": (json.dumps({"type": "prompt", "frame_id": fid + 10_000, "action": "add",
                                             "box": [1, 1, 9, 9]}), "bad_message"),
        "prompt_box_outside": (json.dumps({"type": "prompt", "frame_id": fid - 1, "action": "add",
                                           "box": [10, 10, 900, 100]}), "bad_message"),
        "prompt_label_7": (json.dumps({"type": "prompt", "frame_id": fid - 1, "action": "add",
                                       "points": [[10, 10, 7]]}), "bad_message"),
        "prompt_box_inverted": (json.dumps({"type": "prompt", "frame_id": fid - 1, "action": "add",
                                            "box": [50, 50, 10, 10]}), "bad_message"),
        "prompt_box_zero_area": (json.dumps({"type": "prompt", "frame_id": fid - 1, "action": "add",
                                             "box": [10, 10, 10, 90]}), "bad_message"),
        "prompt_point_right_edge": (json.dumps({"type": "prompt", "frame_id": fid - 1, "action": "add",
                                                "points": [[HW[1], 10, 1]]}), "bad_message"),
        "prompt_point_nan": ('{"type": "prompt", "frame_id": %d, "action": "add", "points": [[NaN, 5, 1]]}' % (fid - 1),
                             "bad_message"),
        "prompt_wrong_types": (json.dumps({"type": "prompt", "frame_id": "one", "action": "add"}), "bad_message"),
        "prompt_refine_unknown_object": (json.dumps({"type": "prompt", "frame_id": fid - 1, "action": "refine",
                                                     "object_id": 99, "box": [1, 1, 9, 9]}), "bad_message"),
        "prompt_remove_without_id": (json.dumps({"type": "prompt", "frame_id": fid - 1, "action": "remove"}),
                                     "bad_message"),
        "gaze_confidence_2": (json.dumps({"type": "gaze", "t_ns": 5, "x": 1, "y": 1, "confidence": 2}),
                              "bad_message"),
        "gaze_nan_x": ('{"type": "gaze", "t_ns": 5, "x": NaN, "y": 1, "confidence": 1}', "bad_message"),
        "ping_t0_string": (json.dumps({"type": "ping", "t0": "now"}), "bad_message"),
        "text_over_64k": (json.dumps({"type": "hello", "client": "x" * 70_000}), "too_large"),
    }


CASES = list(_cases(1))


@pytest.fixture(scope="module")
def engines() -> LocalEngines:
    return LocalEngines.load("lite_medsam", policy=KeyframePolicy(interval=5), async_encoder=False)


def _swan(data_dir: Path) -> tuple[np.ndarray, list[float]]:
    """DAVIS blackswan's frame 0 at 427x240 (``HW``) and the swan's box in its pixels."""
    _, frames, box = blackswan(data_dir, 1)
    return cv2.resize(frames[0], (HW[1], HW[0]), interpolation=cv2.INTER_AREA), (box / 2).tolist()


@pytest.fixture(scope="module")
def session(engines: LocalEngines, data_dir: Path):
    """One session tracking the swan in a 427x240 blackswan frame; yields (client, state)."""
    rgb, box = _swan(data_dir)
    with served(engines, limits=Limits(idle_timeout_s=60)) as srv, CheckedClient(srv.ws_url, check_sent=False) as c:
        c.prompt(0, box=box)
        c.send_frame(0, rgb, encoding="png")
        ref = result_masks(c.result(0))[1]
        assert ref.sum() > 500
        yield c, {"rgb": rgb, "ref": ref, "next": 1, "srv": srv}


@pytest.mark.parametrize("name", CASES)
def test_bad_input_answered_and_session_lives(session, name: str) -> None:
    c, st = session
    message, code = _cases(st["next"])[name]
    before = len(c.errors)
    c.send_raw(message)
    err = c.expect_error(timeout_s=120)
    assert err["code"] == code, err
    assert err["message"]
    fid = st["next"]
    st["next"] += 1
    c.send_frame(fid, st["rgb"], encoding="png")
    res = c.result(fid, timeout_s=120)
    masks = result_masks(res)
    assert list(masks) == [1] and jaccard(masks[1], st["ref"]) > 0.9
    assert len(c.errors) == before + 1  # exactly one error per bad message


def test_server_survived_every_case(session) -> None:
    import httpx

    health = httpx.get(session[1]["srv"].url + "/healthz").json()
    assert health["exceptions"] == 0 and health["errors_sent"] >= len(CASES)


# ------------------------------------------------------------------ token, limits
def _closed_with(url: str, **kw: Any) -> tuple[int | None, list[dict[str, Any]]]:
    """Connect with the ``websockets`` package and collect messages until the server closes."""
    from websockets.exceptions import ConnectionClosed

    got: list[dict[str, Any]] = []
    ws = websockets_sync.connect(url, **kw)
    try:
        while True:
            got.append(json.loads(ws.recv(timeout=30)))
    except ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd else None), got
    finally:
        try:
            ws.close()
        except ConnectionClosed:
            pass


def test_token_required(engines: LocalEngines) -> None:
    with served(engines, token="s3cret") as srv:
        for kw, url in (({}, srv.ws_url), ({}, srv.ws_url + "?token=wrong"),
                        ({"additional_headers": {"Authorization": "Bearer nope"}}, srv.ws_url)):
            code, got = _closed_with(url, **kw)
            assert code == 4401 and [m["code"] for m in got] == ["unauthorized"]
        with CheckedClient(srv.ws_url, token="s3cret") as c:
            assert c.state.welcome["protocol"] == "arsel.v1"
        with CheckedClient(srv.ws_url + "?token=s3cret") as c:
            assert c.ping()["type"] == "pong"


def test_server_declines_permessage_deflate(engines: LocalEngines) -> None:
    """A client offering permessage-deflate (``websockets`` does by default) gets no compression:
    frames are JPEG or PNG already, and deflating them costs the sender milliseconds per frame."""
    with served(engines) as srv:
        with websockets_sync.connect(srv.ws_url) as plain:
            assert [e.name for e in plain.protocol.extensions] == []
        with CheckedClient(srv.ws_url) as c:
            assert [e.name for e in c.ws.protocol.extensions] == [] and c.ping()["type"] == "pong"


def test_max_sessions_busy_then_free(engines: LocalEngines) -> None:
    with served(engines, max_sessions=1) as srv:
        with CheckedClient(srv.ws_url) as first:
            code, got = _closed_with(srv.ws_url)
            assert code == 1013 and [m["code"] for m in got] == ["server_busy"]
            assert first.ping()["type"] == "pong"  # the first session is untouched
        import time

        time.sleep(0.5)
        with CheckedClient(srv.ws_url) as again:  # freed when the first left
            assert again.state.welcome is not None


def test_idle_timeout_and_rate_limit(engines: LocalEngines) -> None:
    with served(engines, limits=Limits(idle_timeout_s=1.0, max_messages_per_s=20)) as srv:
        code, got = _closed_with(srv.ws_url)
        assert code == 1000 and got[-1]["code"] == "idle_timeout"
        with CheckedClient(srv.ws_url) as c:
            for _ in range(60):
                c.send_raw(json.dumps({"type": "ping", "t0": 1}))
            assert c.expect_error()["code"] == "rate_limited"


# ------------------------------------------------------------------ RLE
def test_rle_equals_pycocotools() -> None:
    mask_util = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(3)
    masks = [np.zeros((7, 5), bool), np.ones((4, 9), bool), rng.random((480, 854)) < 0.5]
    for _ in range(200):
        h, w = rng.integers(1, 80, 2)
        m = np.zeros((h, w), bool)
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        m[y0:y0 + rng.integers(1, h + 1), x0:x0 + rng.integers(1, w + 1)] = True
        masks.append(m if rng.random() < 0.7 else m ^ (rng.random((h, w)) < 0.1))
    for m in masks:
        ref = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        mine = encode_rle(m)
        assert mine["counts"] == ref["counts"].decode() and mine["size"] == list(ref["size"])
        assert np.array_equal(decode_rle(mine), m)
        assert np.array_equal(mask_util.decode({"size": mine["size"], "counts": mine["counts"]}).astype(bool), m)


def test_server_decodes_images_to_the_same_rgb_as_imread() -> None:
    """The server decodes JPEG/PNG straight to RGB; the pixels equal the official predictors' read
    (``cv2.imread`` + ``COLOR_BGR2RGB``), channel order included."""
    from engine.serve.protocol import decode_image

    rgb = np.random.default_rng(5).integers(0, 256, (48, 64, 3), np.uint8)
    rgb[:, :32, 0] = 255  # a red left half: a swapped decode puts it in the blue channel
    for ext, enc in ((".jpg", "jpeg"), (".png", "png")):
        data = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
        ref = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        got = decode_image(data, enc, (48, 64), 0)
        assert got.dtype == np.uint8 and np.array_equal(got, ref)
        assert got[:, :32, 0].mean() > 200
    assert np.array_equal(decode_image(rgb.tobytes(), "rgb8", (48, 64), 0), rgb)


# ------------------------------------------------------------------ CLI guards, TLS
def test_serve_refuses_public_host_without_token(capsys: pytest.CaptureFixture) -> None:
    from engine.cli import main

    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--token" in err and "0.0.0.0" in err
    assert main(["serve", "--tls-cert", "only-cert.pem"]) == 2
    assert "--tls-key" in capsys.readouterr().err


def test_tls_wss(engines: LocalEngines, tmp_path: Path) -> None:
    """With a certificate the same app serves wss:// (a headset browser needs it for its camera)."""
    import shutil
    import ssl
    import subprocess

    from engine.serve.app import create_app
    from engine.serve.cli import BackgroundServer

    if shutil.which("openssl") is None:
        pytest.skip("openssl (the command) is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    srv = BackgroundServer(create_app(engines, token="t"), ssl_certfile=str(cert), ssl_keyfile=str(key)).start()
    try:
        url = f"wss://127.0.0.1:{srv.port}/v1/stream?token=t"
        with websockets_sync.connect(url, ssl=ctx) as ws:
            ws.send(json.dumps({"type": "hello"}))
            assert json.loads(ws.recv(timeout=30))["type"] == "welcome"
    finally:
        srv.stop()


# ------------------------------------------------------------------ images decoded only when stepped
JPEG_NO_SCAN = JPEG[:JPEG.index(b"\xff\xda")] + b"\xff\xd9"  # magic, size and end marker right; no pixels


def _no_scan_frame(fid: int) -> bytes:
    """A frame message whose JPEG passes every arrival check but has no pixels to decode."""
    img = {"encoding": "jpeg", "width": HW[1], "height": HW[0], "bytes": len(JPEG_NO_SCAN)}
    return _with_blob({"image": img}, JPEG_NO_SCAN, fid)


def test_image_that_does_not_decode_is_answered_when_stepped(session) -> None:
    c, st = session
    fid = st["next"]
    c.send_raw(_no_scan_frame(fid))
    err = c.expect_error(timeout_s=120)
    assert (err["code"], err["frame_id"]) == ("bad_frame", fid) and "does not decode" in err["message"]
    c.send_frame(fid + 1, st["rgb"], encoding="png")  # its frame_id was used: the next one goes on
    st["next"] = fid + 2
    assert jaccard(result_masks(c.result(fid + 1, timeout_s=120))[1], st["ref"]) > 0.9


def test_dropped_frames_are_never_decoded(engines: LocalEngines, data_dir: Path, monkeypatch) -> None:
    from engine.serve import protocol

    decoded: list[int] = []
    real = protocol.decode_image

    def counting(data: bytes, encoding: str, hw: tuple[int, int], fid: int | None) -> np.ndarray:
        decoded.append(fid)
        return real(data, encoding, hw, fid)

    monkeypatch.setattr(protocol, "decode_image", counting)
    rgb, box = _swan(data_dir)
    sent = 12
    with served(engines) as srv, CheckedClient(srv.ws_url) as c:
        c.prompt(0, box=box)
        for fid in range(sent):  # a burst: frame 0's keyframe encode (synchronous) keeps the session busy
            c.send_frame(fid, rgb, encoding="jpeg")
        last = c.result(sent - 1, timeout_s=120)
        stepped = sorted([sent - 1, *c.state.results])  # results come in frame order: all are in
    assert last["dropped"] == sent - len(stepped) > 0
    assert sorted(decoded) == stepped  # each stepped frame decoded once, no dropped frame at all


def test_prompt_on_a_dropped_frame_that_does_not_decode(engines: LocalEngines, data_dir: Path) -> None:
    import time

    from engine.serve.protocol import parse_frame
    from engine.serve.session import QueuedFrame, SessionCore

    rgb, box = _swan(data_dir)
    core = SessionCore(engines())
    try:
        core.remember(parse_frame(_no_scan_frame(3), Limits()))  # dropped, undecoded
        core.process(QueuedFrame(parse_frame(encode_frame(4, rgb, encoding="png"), Limits()), time.perf_counter()), 1)
        core.prompt({"type": "prompt", "frame_id": 3, "action": "add", "object_id": None, "points": [], "box": box})
        obj = core.engine.tracker.get(1)  # added; its prompt is taken in the next stepped frame's pixels
        assert obj.prompt_frame_index is None
    finally:
        core.close()


def test_only_frames_with_depth_or_large_headers_parse_on_a_thread(engines: LocalEngines,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain frame's header checks (about 0.2 ms) run on the event loop, where a thread hop would
    cost more; a frame with depth (decoded here: milliseconds) or a header over 16 KiB goes to a
    thread. Both get their results."""
    import asyncio

    from engine.serve import app as app_module
    from engine.serve.protocol import INLINE_HEADER_BYTES, parse_is_cheap

    rgb = np.full((48, 64, 3), 90, np.uint8)
    depth = np.full((48, 64), 1000, np.uint16)
    plain = encode_frame(0, rgb, encoding="png")
    with_depth = encode_frame(1, rgb, encoding="png", depth_raw=depth, intrinsics=(50.0, 50.0, 32.0, 24.0))
    assert parse_is_cheap(plain) and not parse_is_cheap(with_depth) and parse_is_cheap(b"\x01")
    header, blob = unpack(plain)
    big = pack({**header, "gaze": [{"t_ns": 1, "x": 1.0, "y": 1.0, "confidence": 1.0}] * 400}, bytes(blob))
    assert struct.unpack_from("<I", big)[0] > INLINE_HEADER_BYTES and not parse_is_cheap(big)

    hops: list[str] = []
    to_thread = asyncio.to_thread

    def spying(fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(fn.__name__)
        return to_thread(fn, *args, **kwargs)

    monkeypatch.setattr(app_module.asyncio, "to_thread", spying)
    with served(engines) as srv, CheckedClient(srv.ws_url) as c:
        c.send_raw(plain)
        assert c.result(0, timeout_s=120)["frame_id"] == 0 and hops == []
        c.send_raw(with_depth)
        assert c.result(1, timeout_s=120)["frame_id"] == 1 and hops == ["parse_frame"]
