"""The Ray Serve keyframe encoder (``engine.serve.ray_encoder``) on a real local Ray instance.

Ray runs with 2 CPUs, no dashboard, no HTTP proxy, usage reporting off, on 127.0.0.1; afterwards
the test checks that no process of its Ray session is left and removes that session's folder.
Concurrent submissions must run as batches > 1, and batched embeddings must equal the torch
encoder's one-image embeddings within 1e-4. LiteMedSAM at its real weights.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.refs import medsam_checkpoint

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'arsel[ray]')")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'arsel[ray]')")

pytestmark = pytest.mark.slow  # Ray start-up plus LiteMedSAM encodes: ~1 min idle, several under load


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


@pytest.fixture(scope="module")
def encoder() -> Iterator[object]:
    from engine.serve.ray_encoder import BatchedEncoder

    usage_stats = os.environ.get("RAY_USAGE_STATS_ENABLED")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    session_dir = Path(ray._private.worker._global_node.get_session_dir_path())  # noqa: SLF001
    try:
        serve.start(proxy_location="Disabled")
        app = BatchedEncoder.bind("lite_medsam", str(medsam_checkpoint()), max_batch=4, batch_wait_s=5.0, threads=1)
        yield serve.run(app, name="encoder", route_prefix=None)
    finally:
        serve.shutdown()
        ray.shutdown()
        if usage_stats is None:
            os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
        else:
            os.environ["RAY_USAGE_STATS_ENABLED"] = usage_stats
        deadline = time.monotonic() + 30
        while _session_pids(session_dir.name) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _session_pids(session_dir.name)
        shutil.rmtree(session_dir, ignore_errors=True)
        latest = session_dir.parent / "session_latest"
        if latest.is_symlink() and not latest.exists():
            latest.unlink()
        assert not left, f"Ray processes of {session_dir.name} still running: {left}"


def _images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, 3, 256, 256)).astype(np.float32) for _ in range(n)]


def test_concurrent_keyframes_batch_and_match_single_encodes(encoder) -> None:  # noqa: ANN001
    from engine.models.registry import load_model

    images = _images(3)
    responses = [encoder.encode.remote(x) for x in images]  # all queued before the 5 s batch window ends
    batched = [r.result(timeout_s=600) for r in responses]
    histogram = encoder.batch_histogram.remote().result(timeout_s=60)
    assert sum(size * count for size, count in histogram.items()) == 3
    assert max(histogram) > 1, histogram
    model = load_model("lite_medsam", medsam_checkpoint()).eval()
    with torch.inference_mode():
        single = [model.encode(torch.from_numpy(x)).numpy() for x in images]
    for b, s in zip(batched, single):
        assert b.shape == (1, 256, 64, 64) and b.dtype == np.float32
        assert np.abs(b - s).max() <= 1e-4


def test_bad_input_is_refused_and_the_replica_lives_on(encoder) -> None:  # noqa: ANN001
    with pytest.raises(Exception, match="encoder input must be float32"):
        encoder.encode.remote(np.zeros((1, 3, 64, 64), np.float32)).result(timeout_s=120)
    assert encoder.batch_histogram.remote().result(timeout_s=60)  # still answering


def test_remote_backend_encodes_remotely_and_decodes_locally(encoder) -> None:  # noqa: ANN001
    from engine.backends.torch_backend import TorchBackend
    from engine.export.prompts import realistic_prompts
    from engine.models.registry import load_model
    from engine.serve.ray_encoder import RemoteEncoderBackend

    local = TorchBackend(load_model("lite_medsam", medsam_checkpoint()), 256)
    remote = RemoteEncoderBackend(encoder, local)
    (x,) = _images(1)
    before = sum(encoder.batch_histogram.remote().result(timeout_s=60).values())
    emb = remote.encode(x)
    assert sum(encoder.batch_histogram.remote().result(timeout_s=60).values()) == before + 1  # ran on Ray
    prompts = realistic_prompts(1, 2, 256, seed=3)
    iou_r, low_r = remote.decode(emb, *prompts.values())
    iou_l, low_l = local.decode(local.encode(x), *prompts.values())
    assert np.abs(low_r - low_l).max() <= 1e-3 and np.abs(iou_r - iou_l).max() <= 1e-3
