"""``arsel serve`` on the synthetic demo scene (box3d against `arsel lift` and the renderer's truth)
and one session's slow network not stalling another (real uvicorn on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from engine.serve.client import result_masks
from engine.serve.engines import LocalEngines
from engine.serve.protocol import Limits
from engine.stream.scheduler import KeyframePolicy
from tests.serve_support import CheckedClient, blackswan, served

pytest.importorskip("fastapi")


@pytest.fixture(scope="module")
def engines() -> LocalEngines:
    return LocalEngines.load("lite_medsam", policy=KeyframePolicy(interval=100), async_encoder=False)


def _visible_centroid_world(view: Any, object_id: int, intrinsics: Any) -> np.ndarray:
    """Centroid (world, metres) of the object's surface seen in ``view``: the renderer's noise-free
    depth on the pixels its id map gives the object."""
    v, u = np.nonzero(view.object_ids == object_id)
    z = view.z_m[v, u]
    cam = np.stack([(u - intrinsics.cx) / intrinsics.fx * z, (v - intrinsics.cy) / intrinsics.fy * z, z], 1)
    world = cam @ view.pose[:3, :3].T + view.pose[:3, 3]
    return world.mean(0)


def test_box3d_on_the_demo_scene_matches_arsel_lift_and_the_truth(engines: LocalEngines, tmp_path: Path) -> None:
    """The demo's table scene (box, can, ball) rendered with RealSense-like depth noise: each object's
    server ``centroid_m``/``box3d`` (camera frame) equals `arsel lift` on the server's mask, and with
    the pose its world centroid lies within 1.5 cm of the visible surface's true centroid."""
    pytest.importorskip("open3d")
    from engine.cli import main
    from engine.demo.scene import TableScene, orbit_poses

    scene = TableScene()
    k = scene.intrinsics
    view = scene.render(orbit_poses(5)[2], np.random.default_rng(0))
    boxes = {}
    for obj in scene.objects:
        v, u = np.nonzero(view.object_ids == obj.object_id)
        boxes[obj.object_id] = [float(u.min() - 3), float(v.min() - 3), float(u.max() + 4), float(v.max() + 4)]
    intr = (k.fx, k.fy, k.cx, k.cy)
    with served(engines, limits=Limits(idle_timeout_s=30)) as srv, CheckedClient(srv.ws_url) as c:
        for oid, box in boxes.items():
            c.prompt(0, box=box, object_id=oid)
        c.send_frame(0, view.rgb, encoding="png", depth_raw=view.depth_raw, depth_scale_m=0.001, intrinsics=intr)
        cam = {o["id"]: o for o in c.result(0)["objects"]}
        c.send_frame(1, view.rgb, encoding="png", depth_raw=view.depth_raw, depth_scale_m=0.001, intrinsics=intr,
                     pose=view.pose)
        world = {o["id"]: o for o in c.result(1)["objects"]}
    assert set(cam) == set(boxes) == set(world)
    cv2.imwrite(str(tmp_path / "color.png"), cv2.cvtColor(view.rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "depth.png"), view.depth_raw)
    (tmp_path / "cam.json").write_text(json.dumps({"width": k.width, "height": k.height, "fx": k.fx, "fy": k.fy,
                                                   "cx": k.cx, "cy": k.cy, "depth_scale_m": 0.001}))
    for oid, obj in cam.items():
        mask = result_masks({"objects": [obj]})[oid]
        truth = view.object_ids == oid
        assert np.logical_and(mask, truth).sum() / np.logical_or(mask, truth).sum() > 0.8, oid
        cv2.imwrite(str(tmp_path / "mask.png"), mask.astype(np.uint8) * 255)
        assert main(["lift", "--color", str(tmp_path / "color.png"), "--depth", str(tmp_path / "depth.png"),
                     "--intrinsics", str(tmp_path / "cam.json"), "--mask", str(tmp_path / "mask.png"),
                     "--out", str(tmp_path / f"{oid}.ply"), "--json", str(tmp_path / f"{oid}.json")]) == 0
        ref = json.loads((tmp_path / f"{oid}.json").read_text())
        np.testing.assert_allclose(obj["centroid_m"], ref["centroid_m"], atol=0.01)
        np.testing.assert_allclose(obj["box3d"]["center_m"], ref["obb"]["center"], atol=0.01)
        assert sorted(obj["box3d"]["extent_m"]) == pytest.approx(sorted(ref["obb"]["extent"]), abs=0.01)
        seen = _visible_centroid_world(view, oid, k)
        assert np.linalg.norm(np.array(world[oid]["centroid_m"]) - seen) < 0.015, (oid, world[oid], seen)


def _slow_network(app: Any, delay_s: float) -> Any:
    """``app`` with every message it sends on a ``?slow=1`` WebSocket held back ``delay_s`` seconds,
    as a congested link to that one client would (other connections untouched)."""

    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and b"slow=1" in scope.get("query_string", b""):
            async def slow_send(message: dict) -> None:
                if message["type"] == "websocket.send":
                    await asyncio.sleep(delay_s)
                await send(message)

            return await app(scope, receive, slow_send)
        return await app(scope, receive, send)

    return wrapped


def test_a_slow_client_does_not_stall_another(engines: LocalEngines, data_dir: Path) -> None:
    """Client A's link delivers one message per 3 s; client B, meanwhile, streams 20 frames in lock
    step. B gets every result in order, long before A's link could have carried them (B waited on A:
    >= 60 s), and A's session drops its backlog (counted) instead of queueing it."""
    from engine.serve.app import create_app
    from engine.serve.cli import BackgroundServer

    _, frames, box = blackswan(data_dir, 20)
    limits = Limits(idle_timeout_s=60)
    app = create_app(engines, limits)
    a_results: list[dict[str, Any]] = []
    a_failed: list[BaseException] = []
    with BackgroundServer(_slow_network(app, 3.0), limits) as srv:
        def slow_client() -> None:
            try:
                _slow_client()
            except BaseException as exc:  # noqa: BLE001 - reported by the test below
                a_failed.append(exc)

        def _slow_client() -> None:
            with CheckedClient(srv.ws_url + "?slow=1", timeout_s=60) as a:
                a.prompt(0, box=box.tolist())
                for i, f in enumerate(frames):
                    a.send_frame(i, f)
                    time.sleep(0.03)
                end = time.monotonic() + 30
                while time.monotonic() < end and len(a_results) < 3:
                    try:
                        a_results.append(a.result(timeout_s=max(0.1, end - time.monotonic())))
                    except TimeoutError:
                        break

        t_a = threading.Thread(target=slow_client)
        t_a.start()
        time.sleep(1.0)  # A is in and stalled
        t0 = time.monotonic()
        with CheckedClient(srv.ws_url, timeout_s=60) as b:
            b.prompt(0, box=box.tolist())
            got = []
            for i, f in enumerate(frames):
                b.send_frame(i, f)
                got.append(b.result(i))
        b_s = time.monotonic() - t0
        t_a.join(90)
    assert not a_failed, a_failed
    assert [r["frame_id"] for r in got] == list(range(len(frames)))
    assert all(r["objects"] and r["dropped"] == 0 for r in got)
    assert b_s < 30, f"B took {b_s:.1f} s: it waited on A's link (20 frames x 3 s)"
    assert a_results, "A's link carried nothing in 30 s"
    assert a_results[-1]["dropped"] > 0  # A's backlog was dropped and counted, not queued
    ids = [r["frame_id"] for r in a_results]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
