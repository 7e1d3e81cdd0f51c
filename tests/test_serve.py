"""``arsel serve`` end to end: real uvicorn on 127.0.0.1, LiteMedSAM, DAVIS blackswan, real RGB-D.

Every message both ways is validated against ``docs/protocol.schema.json`` (``CheckedClient``).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from engine.serve.client import result_masks
from engine.serve.engines import LocalEngines
from engine.serve.protocol import Limits
from engine.stream.scheduler import KeyframePolicy
from tests.serve_support import CheckedClient, blackswan, gt_masks, jaccard, served

pytest.importorskip("fastapi")
N_FRAMES = 6


@pytest.fixture(scope="module")
def engines() -> LocalEngines:
    return LocalEngines.load("lite_medsam", policy=KeyframePolicy(interval=5), async_encoder=False)


@pytest.fixture(scope="module")
def server(engines: LocalEngines):
    with served(engines, limits=Limits(idle_timeout_s=30)) as srv:
        yield srv


def test_healthz_and_page(server) -> None:
    health = httpx.get(server.url + "/healthz").json()
    assert health["status"] == "ok" and health["model"] == "lite_medsam" and health["backend"] == "torch"
    assert health["sessions"] == 0 and health["uptime_s"] >= 0
    assert httpx.get(server.url + "/").status_code in (200, 404)  # 404 only until the page exists


def test_remote_masks_equal_arsel_track(server, data_dir: Path, tmp_path: Path) -> None:
    """Same frames, same box on frame 0, keyframe every 5 frames, synchronous encoder: same masks."""
    from engine.cli import main

    paths, frames, box = blackswan(data_dir, N_FRAMES)
    src = tmp_path / "frames"
    src.mkdir()
    for p in paths:
        (src / p.name).write_bytes(p.read_bytes())
    box_arg = ",".join(f"{v:g}" for v in box)
    assert main(["track", str(src), "--box", box_arg, "--keyframe-interval", "5", "--no-overlay",
                 "--out", str(tmp_path / "local")]) == 0
    local = [cv2.imread(str(tmp_path / "local" / "masks" / f"{i:05d}.png"), 0) > 0 for i in range(N_FRAMES)]
    remote = []
    with CheckedClient(server.ws_url) as c:
        c.prompt(0, box=box.tolist())
        for i, rgb in enumerate(frames):
            c.send_frame(i, rgb, encoding="rgb8")
            res = c.result(i)
            assert res["frame_id"] == i and [o["id"] for o in res["objects"]] == [1]
            assert res["objects"][0]["status"] == ("new" if i == 0 else "tracked")
            remote.append(result_masks(res)[1])
        assert c.errors == []
    gts = gt_masks(data_dir, N_FRAMES)
    j_local = np.mean([jaccard(m, g) for m, g in zip(local, gts)])
    j_remote = np.mean([jaccard(m, g) for m, g in zip(remote, gts)])
    assert j_remote == pytest.approx(j_local, abs=1e-9) and j_local > 0.3
    for a, b in zip(local, remote):
        assert np.array_equal(a, b)
    # the demo client writes the same masks/ as arsel track, from the same folder
    import demos.serve_client as demo

    assert demo.main([str(src), "--box", box_arg, "--url", server.ws_url, "--encoding", "png", "--no-overlay",
                      "--out", str(tmp_path / "remote")]) == 0
    for i in range(N_FRAMES):
        a = cv2.imread(str(tmp_path / "local" / "masks" / f"{i:05d}.png"), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(tmp_path / "remote" / "masks" / f"{i:05d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(a, b)
    metrics = json.loads((tmp_path / "remote" / "metrics.json").read_text())
    assert metrics["masks_written"] == N_FRAMES and metrics["server_errors"] == []


def test_png_masks_match_rle(server, data_dir: Path) -> None:
    _, frames, box = blackswan(data_dir, 2)
    out = {}
    for enc in ("coco_rle", "png"):
        with CheckedClient(server.ws_url, mask_encoding=enc) as c:
            c.prompt(0, box=box.tolist())
            c.send_frame(0, frames[0], encoding="png")
            out[enc] = result_masks(c.result(0))[1]
    assert out["png"].sum() > 1000 and np.array_equal(out["png"], out["coco_rle"])


def test_two_sessions_and_add_refine_remove(server, data_dir: Path) -> None:
    _, frames, box = blackswan(data_dir, 5)
    with CheckedClient(server.ws_url) as a, CheckedClient(server.ws_url) as b:
        a.prompt(0, box=box.tolist())
        b.prompt(0, box=[0, 0, 200, 150], object_id=7)
        for i in range(2):
            a.send_frame(i, frames[i])
            b.send_frame(i, frames[i])
            assert [o["id"] for o in a.result(i)["objects"]] == [1]
            assert [o["id"] for o in b.result(i)["objects"]] == [7]
        health = httpx.get(server.url + "/healthz").json()
        assert health["sessions"] == 2
        # add a second object mid-stream on the frame already seen, refine it, then remove the first
        a.prompt(1, box=[0, 0, 200, 150])
        a.send_frame(2, frames[2])
        objs = {o["id"]: o for o in a.result(2)["objects"]}
        assert set(objs) == {1, 2} and objs[2]["status"] == "new" and objs[1]["status"] == "tracked"
        small = objs[2]["bbox_xyxy"]
        a.prompt(2, "refine", box=[0, 0, 100, 80], object_id=2)
        a.send_frame(3, frames[3])
        refined = {o["id"]: o for o in a.result(3)["objects"]}[2]
        assert refined["bbox_xyxy"][2] < small[2]  # the smaller box gives a smaller mask
        a.prompt(3, "remove", object_id=1)
        a.send_frame(4, frames[4])
        assert [o["id"] for o in a.result(4)["objects"]] == [2]
        a.prompt(4, "refine", box=[0, 0, 10, 10], object_id=1)
        assert a.expect_error()["code"] == "bad_message"
        assert a.errors[-1]["frame_id"] == 4 and b.errors == []


def test_gaze_dwell_selects_and_release(server, data_dir: Path) -> None:
    """Gaze held on the swan for 0.8 s selects it; looking elsewhere (wandering, no dwell) for > 1 s
    releases it."""
    _, frames, box = blackswan(data_dir, 2)
    cx, cy = float((box[0] + box[2]) / 2), float((box[1] + box[3]) / 2)
    t0, dt = 1_000_000_000, 33_000_000
    seen: list[list[int]] = []
    with CheckedClient(server.ws_url) as c:
        for i in range(60):
            t = t0 + i * dt
            x, y = (cx, cy) if i < 25 else (20.0 + 60 * (i % 10), 20.0)
            c.gaze(t - dt // 2, x, y, 1.0, kind="gaze" if i % 2 else "cursor")
            c.send_frame(i, frames[i % 2], t_capture_ns=t, jpeg_quality=80)
            seen.append([o["id"] for o in c.result(i)["objects"]])
        assert c.errors == []
    first = next(i for i, ids in enumerate(seen) if ids)
    assert 18 <= first <= 25  # dwell 600 ms at 33 ms a frame
    assert seen[24] == [1] and seen[-1] == []  # released after looking away


def test_ping_pong_and_flow_control(server, data_dir: Path) -> None:
    _, frames, _ = blackswan(data_dir, 1)
    with CheckedClient(server.ws_url) as c:
        pong = c.ping()
        assert pong["t1"] <= pong["t2"] and pong["t3"] >= pong["t0"]
        for i in range(12):  # a burst: newest wins, older queued frames dropped
            c.send_frame(i, frames[0], encoding="jpeg")
        ids = []
        while not ids or ids[-1] != 11:
            ids.append(c.result(timeout_s=60)["frame_id"])
        assert ids == sorted(set(ids)) and len(ids) < 12
        assert c.result  # noqa: B018
        dropped = 12 - len(ids)
        c.send_frame(12, frames[0])
        assert c.result(12)["dropped"] == dropped


def test_box3d_matches_arsel_lift(server, data_dir: Path, tmp_path: Path) -> None:
    """slambook2 frame 1 with depth + intrinsics: box3d and centroid equal `arsel lift` on the same mask;
    a pose moves them into the world frame."""
    from engine.cli import main

    root = data_dir / "slambook2_rgbd"
    rgb = cv2.cvtColor(cv2.imread(str(root / "color" / "1.png")), cv2.COLOR_BGR2RGB)
    depth = cv2.imread(str(root / "depth" / "1.pgm"), cv2.IMREAD_UNCHANGED)
    k = (518.0, 519.0, 325.5, 253.5)
    pose = np.eye(4)
    pose[:3, 3] = (1.0, -2.0, 0.5)
    box = [200, 150, 420, 330]
    with CheckedClient(server.ws_url) as c:
        c.prompt(0, box=box)
        c.send_frame(0, rgb, encoding="png", depth_raw=depth, intrinsics=k)
        cam = c.result(0)["objects"][0]
        c.send_frame(1, rgb, encoding="png", depth_raw=depth, intrinsics=k, pose=pose)
        world = c.result(1)["objects"][0]
    assert "box3d" in cam and "centroid_m" in cam
    mask = result_masks({"objects": [cam]})[1]
    cv2.imwrite(str(tmp_path / "mask.png"), mask.astype(np.uint8) * 255)
    (tmp_path / "cam.json").write_text(json.dumps({"width": 640, "height": 480, "fx": k[0], "fy": k[1],
                                                   "cx": k[2], "cy": k[3]}))
    assert main(["lift", "--color", str(root / "color" / "1.png"), "--depth", str(root / "depth" / "1.pgm"),
                 "--intrinsics", str(tmp_path / "cam.json"), "--mask", str(tmp_path / "mask.png"),
                 "--out", str(tmp_path / "o.ply"), "--json", str(tmp_path / "o.json")]) == 0
    ref = json.loads((tmp_path / "o.json").read_text())
    np.testing.assert_allclose(cam["centroid_m"], ref["centroid_m"], atol=0.01)
    np.testing.assert_allclose(cam["box3d"]["center_m"], ref["obb"]["center"], atol=0.01)
    assert sorted(cam["box3d"]["extent_m"]) == pytest.approx(sorted(ref["obb"]["extent"]), abs=0.01)
    np.testing.assert_allclose(np.array(world["centroid_m"]) - cam["centroid_m"], pose[:3, 3], atol=0.02)
    q = np.array(cam["box3d"]["rotation_xyzw"])
    assert np.linalg.norm(q) == pytest.approx(1.0, abs=1e-5)


def test_frame_slots_bound_concurrent_steps(engines: LocalEngines, data_dir: Path, monkeypatch) -> None:
    """``frame_slots=1``: three sessions bursting frames at once never step two frames at the same
    time, each still gets a result for its newest frame, and none waits out the others (each steps
    again before any session steps a third time in a row: first come, first served)."""
    import threading
    import time

    from engine.serve.client import encode_frame
    from engine.serve.session import SessionCore

    spans: list[tuple[float, float, str]] = []
    process = SessionCore.process

    def timed(self: SessionCore, item, dropped):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return process(self, item, dropped)
        finally:
            spans.append((t0, time.perf_counter(), threading.current_thread().name))

    monkeypatch.setattr(SessionCore, "process", timed)
    _, frames, box = blackswan(data_dir, 6)
    packed = [encode_frame(i, f, encoding="jpeg") for i, f in enumerate(frames)]
    finals: dict[int, dict] = {}

    def client(k: int, url: str) -> None:
        with CheckedClient(url, check_sent=False) as c:
            c.prompt(0, box=box.tolist())
            for msg in packed:
                c._send(msg)
            finals[k] = c.result(len(packed) - 1, timeout_s=120)

    with served(engines, limits=Limits(idle_timeout_s=30), frame_slots=1) as srv:
        threads = [threading.Thread(target=client, args=(k, srv.ws_url)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
    assert sorted(finals) == [0, 1, 2] and all(r["objects"] for r in finals.values())
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), "two frames stepped at once with one slot"
    names = [s[2] for s in spans]
    assert len(set(names)) == 3 and not any(a == b == c for a, b, c in zip(names, names[1:], names[2:])), names
    with pytest.raises(ValueError, match="frame_slots"):
        from engine.serve.app import create_app

        create_app(engines, frame_slots=0)
