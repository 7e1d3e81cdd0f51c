"""``arsel serve --ray`` on a real local Ray instance: gateways, the batching encoder, replica death.

One Ray instance for the module (2 CPUs, no dashboard, usage reporting off, 127.0.0.1), running the
``arsel`` application as ``arsel serve --ray`` deploys it: 2 gateway replicas over 1 encoder replica,
Serve's proxy on a free loopback port. Clients are the schema-checking ``CheckedClient`` over real
WebSockets; the reference is the single-process server (``create_app`` over ``LocalEngines``) on
the same frames, with as many torch threads in the gateways as in this process (a decode's float
sums, so a pixel on a mask's edge, depend on it). The encoder deployment is also
called directly (batched = unbatched, bad input, ``RemoteEncoderBackend``). The last test shuts Ray down and checks that no process of its session is left.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from engine.serve.client import result_masks
from engine.serve.protocol import Limits
from engine.stream.scheduler import KeyframePolicy
from tests.refs import medsam_checkpoint
from tests.serve_support import CheckedClient, blackswan, served

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'arsel[ray]')")
pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'arsel[ray]')")

pytestmark = pytest.mark.slow  # a Ray start, three deployments' replicas, LiteMedSAM encodes on 2 cores
N_FRAMES = 6  # keyframes on frames 0 and 5
N_CLIENTS = 3
TIMEOUT_S = 300.0  # one result under heavy load (a CPU encode can take several seconds)


def _alive(procs: list[Any]) -> list[int]:
    """Pids of ``procs`` (``psutil.Process``) still running and not zombies (pid reuse is told apart)."""
    import psutil

    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


def _session_pids(session: str) -> list[int]:
    """Pids of live processes whose command line names the Ray session ``session``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().split()[2]
            except OSError:
                continue
            if session.encode() in cmd and state != "Z":
                pids.append(int(entry.name))
    return pids


class RayServe:
    """The module's Ray instance and ``arsel`` application; ``stop()`` is idempotent."""

    def __init__(self) -> None:
        from engine.serve import ray_gateway as rg

        self.usage_stats = os.environ.get("RAY_USAGE_STATS_ENABLED")
        rg.start_ray(None, "127.0.0.1", num_cpus=2, log=lambda _: None)
        self.session_dir = Path(ray._private.worker._global_node.get_session_dir_path())  # noqa: SLF001
        self.port = rg.free_port()
        settings = rg.GatewaySettings("lite_medsam", str(medsam_checkpoint()), KeyframePolicy(interval=5),
                                      async_encoder=False, limits=Limits(idle_timeout_s=TIMEOUT_S),
                                      threads=torch.get_num_threads())  # the reference server's decode threads
        # a long batch window: concurrent keyframes of 3 sessions on a loaded machine still meet
        rg.deploy(rg.build_application(settings, gateways=2, encoders=1, max_batch=4, batch_wait_s=1.0),
                  "127.0.0.1", self.port, log=lambda _: None)
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/stream"
        self.left: list[int] | None = None

    def health(self) -> dict[str, Any]:
        return httpx.get(self.url + "/healthz", timeout=60).json()

    def stop(self) -> list[int]:
        """Shut Serve and Ray down, wait for its processes (descendants of this one, or naming the session
        folder), remove the session folder; the pids left."""
        if self.left is not None:
            return self.left
        import psutil

        from engine.serve import ray_gateway as rg

        ours = psutil.Process().children(recursive=True)  # the processes Ray started for this module
        self.started = len(ours)
        try:
            rg.shutdown(log=lambda _: None)
        finally:
            if self.usage_stats is None:
                os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
            else:
                os.environ["RAY_USAGE_STATS_ENABLED"] = self.usage_stats
            deadline = time.monotonic() + 30
            while (_alive(ours) or _session_pids(self.session_dir.name)) and time.monotonic() < deadline:
                time.sleep(0.5)
            self.left = sorted(set(_alive(ours)) | set(_session_pids(self.session_dir.name)))
            shutil.rmtree(self.session_dir, ignore_errors=True)
            latest = self.session_dir.parent / "session_latest"
            if latest.is_symlink() and not latest.exists():
                latest.unlink()
        return self.left


@pytest.fixture(scope="module")
def ray_serve() -> Iterator[RayServe]:
    rs = RayServe()
    try:
        yield rs
    finally:
        rs.stop()


def _stream(url: str, frames: list[np.ndarray], box: np.ndarray, barrier: threading.Barrier | None = None,
            ) -> list[np.ndarray]:
    """One session: the box on frame 0, the frames in order, each result awaited; the masks."""
    masks = []
    with CheckedClient(url) as c:
        c.prompt(0, box=box.tolist())
        for i, rgb in enumerate(frames):
            if barrier is not None:
                barrier.wait(TIMEOUT_S)  # all sessions send their keyframes together
            c.send_frame(i, rgb, encoding="rgb8")
            res = c.result(i, timeout_s=TIMEOUT_S)
            assert [o["id"] for o in res["objects"]] == [1]
            masks.append(result_masks(res)[1])
        assert c.errors == []
    return masks


def test_sessions_on_gateways_equal_one_process_and_keyframes_batch(ray_serve: RayServe, data_dir: Path) -> None:
    from engine.serve.engines import LocalEngines

    _, frames, box = blackswan(data_dir, N_FRAMES)
    with served(LocalEngines.load("lite_medsam", policy=KeyframePolicy(interval=5), async_encoder=False),
                limits=Limits(idle_timeout_s=TIMEOUT_S)) as single:
        reference = _stream(single.ws_url, frames, box)
    health = ray_serve.health()
    assert health["backend"] == "torch+ray-encoder"
    assert health["ray"]["deployments"]["Gateway"]["replicas"] == {"RUNNING": 2}
    assert health["ray"]["deployments"]["BatchedEncoder"]["replicas"] == {"RUNNING": 1}
    barrier = threading.Barrier(N_CLIENTS)
    out: dict[int, Any] = {}

    def client(k: int) -> None:
        try:
            out[k] = _stream(ray_serve.ws_url, frames, box, barrier)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the test's thread
            out[k] = exc
            barrier.abort()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(N_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(N_CLIENTS):
        if isinstance(out[k], BaseException):
            raise out[k]
        for i, (a, b) in enumerate(zip(reference, out[k])):
            assert a.sum() > 1000 and np.array_equal(a, b), f"client {k}, frame {i}: {int((a != b).sum())} pixels differ"
    hist = {int(k): v for k, v in ray_serve.health()["ray"]["encoder"]["batch_histogram"].items()}
    assert sum(size * n for size, n in hist.items()) == N_CLIENTS * 2  # 2 keyframes per session, all on Ray
    assert max(hist) > 1, hist


def test_batched_embeddings_equal_unbatched(ray_serve: RayServe) -> None:
    from engine.models.registry import load_model

    encoder = ray.serve.get_deployment_handle("BatchedEncoder", app_name="arsel")
    rng = np.random.default_rng(0)
    images = [rng.standard_normal((1, 3, 256, 256)).astype(np.float32) for _ in range(3)]
    before = encoder.batch_histogram.remote().result(timeout_s=60)
    batched = [r.result(timeout_s=TIMEOUT_S) for r in [encoder.encode.remote(x) for x in images]]
    after = encoder.batch_histogram.remote().result(timeout_s=60)
    assert any(after.get(size, 0) > before.get(size, 0) for size in after if size > 1), (before, after)
    model = load_model("lite_medsam", medsam_checkpoint()).eval()
    with torch.inference_mode():
        single = [model.encode(torch.from_numpy(x)).numpy() for x in images]
    for b, s in zip(batched, single):
        assert b.shape == (1, 256, 64, 64) and np.abs(b - s).max() <= 1e-4


def test_bad_input_is_refused_and_the_encoder_lives_on(ray_serve: RayServe) -> None:
    encoder = ray.serve.get_deployment_handle("BatchedEncoder", app_name="arsel")
    with pytest.raises(Exception, match="encoder input must be float32"):
        encoder.encode.remote(np.zeros((1, 3, 64, 64), np.float32)).result(timeout_s=TIMEOUT_S)
    assert encoder.batch_histogram.remote().result(timeout_s=60)  # still answering


def test_replicas_run_at_the_servers_priority(ray_serve: RayServe) -> None:
    """The gateways, the encoder and the proxy run at this process's niceness (Ray's default is 15, under
    which a client on the same machine took 80 % of a core from them and 8 streams got 0.4 fps each)."""
    import psutil

    mine = os.nice(0)
    replicas = {}
    for p in psutil.Process().children(recursive=True):
        try:
            name = p.name()
            if name.startswith(("ray::ServeReplica:arsel:", "ray::ProxyActor")):
                replicas[f"{name} {p.pid}"] = p.nice()
        except psutil.Error:
            continue
    assert len(replicas) >= 4, replicas  # 2 gateways, 1 encoder, the proxy
    assert set(replicas.values()) == {mine}, replicas


def test_remote_backend_encodes_remotely_and_decodes_locally(ray_serve: RayServe) -> None:
    from engine.backends.torch_backend import TorchBackend
    from engine.export.prompts import realistic_prompts
    from engine.models.registry import load_model
    from engine.serve.ray_encoder import RemoteEncoderBackend

    encoder = ray.serve.get_deployment_handle("BatchedEncoder", app_name="arsel")
    local = TorchBackend(load_model("lite_medsam", medsam_checkpoint()), 256)
    remote = RemoteEncoderBackend(encoder, local)
    x = np.random.default_rng(1).standard_normal((1, 3, 256, 256)).astype(np.float32)
    before = sum(encoder.batch_histogram.remote().result(timeout_s=60).values())
    emb = remote.encode(x)
    assert sum(encoder.batch_histogram.remote().result(timeout_s=60).values()) == before + 1  # ran on Ray
    prompts = realistic_prompts(1, 2, 256, seed=3)
    iou_r, low_r = remote.decode(emb, *prompts.values())
    iou_l, low_l = local.decode(local.encode(x), *prompts.values())
    assert np.abs(low_r - low_l).max() <= 1e-3 and np.abs(iou_r - iou_l).max() <= 1e-3


def _encodes(encoder: Any) -> int:
    return sum(size * n for size, n in encoder.batch_histogram.remote().result(timeout_s=60).items())


def test_saturated_encoder_backpressure(ray_serve: RayServe, data_dir: Path) -> None:
    """A keyframe every frame, encodes far slower than decodes (the encoder holds each batch 1 s):
    frames go on decoding on the newest embedding, its age grows and is reported, and a session never
    has more than one encode in flight (the rest are dropped, not queued)."""
    from engine.backends.factory import create_backend
    from engine.models.registry import get_spec
    from engine.serve.ray_encoder import RemoteEncoderBackend
    from engine.serve.ray_gateway import RayEngines
    from engine.stream.events import Prompt
    from engine.types import Frame

    _, frames, box = blackswan(data_dir, 8)
    encoder = ray.serve.get_deployment_handle("BatchedEncoder", app_name="arsel")
    local = create_backend("torch", "lite_medsam", medsam_checkpoint(), "cpu")
    engines = RayEngines(RemoteEncoderBackend(encoder, local), get_spec("lite_medsam"), "lite_medsam",
                         policy=KeyframePolicy(interval=1), async_encoder=True, encoder=encoder)
    eng = engines()
    try:
        eng.add_object(Prompt.box(box.tolist()))
        eng.step(Frame(0, 0, frames[0]))
        assert eng.encoder.wait_idle(TIMEOUT_S)
        before = _encodes(encoder)
        ages = []
        for i in range(1, 8):
            res = eng.step(Frame(i, i, frames[i]))
            assert res.status == "ok" and res.objects[0].mask.sum() > 1000
            ages.append(res.embedding_age_frames)
        stats = eng.encoder.stats
        assert stats.dropped_busy >= 1 and max(ages) >= 3, (ages, stats)
        assert eng.encoder.wait_idle(TIMEOUT_S) and stats.errors == 0
        # every request that was not dropped ran on the deployment; nothing waits in a queue
        assert _encodes(encoder) - before == stats.submitted - 1 - stats.dropped_busy
    finally:
        eng.close()


def _replica_sessions(ray_serve: RayServe, total: int) -> dict[str, int]:
    """Gateway replica actor name -> its open sessions (``/healthz`` answers from one replica at a time)."""
    names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith("SERVE_REPLICA::arsel#Gateway#")}
    seen: dict[str, int] = {}
    for _ in range(40):
        h = ray_serve.health()
        seen[h["ray"]["replica_actor"]] = h["sessions"]
        if set(seen) >= names:
            break
    unseen = names - set(seen)
    if len(unseen) == 1:  # the routing prefers the emptier replica: the other holds the rest
        seen[unseen.pop()] = total - sum(seen.values())
    return seen


def _wait_idle(ray_serve: RayServe) -> None:
    """Until both gateway replicas report no session (or 30 s)."""
    idle: set[str] = set()
    deadline = time.monotonic() + 30
    while len(idle) < 2 and time.monotonic() < deadline:
        h = ray_serve.health()
        if h["sessions"] == 0:
            idle.add(h["ray"]["replica_actor"])
        else:
            idle.discard(h["ray"]["replica_actor"])


def test_sessions_connecting_together_spread_evenly(ray_serve: RayServe) -> None:
    """Twice; the second time on busy cores, after the proxy's queue-length cache has expired (10 s), where
    a gateway can miss Serve's 0.1 s queue-length deadline (engine.serve.ray_router)."""
    import subprocess
    import sys

    n = 6

    def connect_together() -> list[CheckedClient]:
        barrier = threading.Barrier(n)

        def connect() -> CheckedClient:
            barrier.wait(TIMEOUT_S)
            return CheckedClient(ray_serve.ws_url).__enter__()

        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda _: connect(), range(n)))

    for busy_cores in (0, 2):
        if busy_cores:
            time.sleep(11.0)  # no request for longer than Serve's queue-length cache lasts: it probes again
        busy = [subprocess.Popen([sys.executable, "-c",
                                  "import time\nt = time.monotonic() + 60\nwhile time.monotonic() < t: pass"])
                for _ in range(busy_cores)]  # each stops itself after 60 s at most
        try:
            clients = connect_together()
        finally:
            for p in busy:
                p.kill()
                p.wait()
        try:
            assert sorted(_replica_sessions(ray_serve, n).values()) == [n // 2, n // 2], f"{busy_cores} busy cores"
        finally:
            for c in clients:
                c.close()
        _wait_idle(ray_serve)  # the next round and the next test count sessions


def test_replica_death_closes_only_its_sessions(ray_serve: RayServe, data_dir: Path) -> None:
    from websockets.exceptions import ConnectionClosed

    from engine.serve.ray_proxy import CLOSE_REPLICA_LOST

    _, frames, box = blackswan(data_dir, 3)
    clients = []
    for _ in range(4):  # one at a time, each busy before the next: Serve spreads them over both replicas
        c = CheckedClient(ray_serve.ws_url).__enter__()
        c.prompt(0, box=box.tolist())
        c.send_frame(0, frames[0], encoding="rgb8")
        c.result(0, timeout_s=TIMEOUT_S)
        clients.append(c)
    sessions = _replica_sessions(ray_serve, len(clients))
    assert sum(sessions.values()) == len(clients), sessions
    victim = max(sessions, key=sessions.get)
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    closed, going = [], []
    for c in clients:
        try:
            c.send_frame(1, frames[1], encoding="rgb8")
            c.result(1, timeout_s=TIMEOUT_S)
            going.append(c)
        except ConnectionClosed as exc:
            closed.append(exc.rcvd)
    assert len(closed) == sessions[victim], (sessions, closed)
    assert all(r is not None and r.code == CLOSE_REPLICA_LOST and "reconnect" in r.reason for r in closed), closed
    for c in going:  # the other replica's sessions go on
        c.send_frame(2, frames[2], encoding="rgb8")
        assert result_masks(c.result(2, timeout_s=TIMEOUT_S))[1].sum() > 1000
        c.close()
    t0 = time.monotonic()
    with CheckedClient(ray_serve.ws_url) as c:  # a reconnect gets a new session on a live replica
        assert time.monotonic() - t0 < 30
        c.prompt(0, box=box.tolist())
        c.send_frame(0, frames[0], encoding="rgb8")
        assert c.result(0, timeout_s=TIMEOUT_S)["objects"][0]["status"] == "new"


def test_shutdown_leaves_no_ray_process(ray_serve: RayServe) -> None:
    left = ray_serve.stop()
    assert ray_serve.started >= 5  # gcs, raylet, Serve's controller and proxy, the replicas: the check saw them
    assert not left, f"Ray processes of {ray_serve.session_dir.name} still running: {left}"
    assert not ray_serve.session_dir.exists()
