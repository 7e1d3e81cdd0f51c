"""``arsel serve --ray`` pieces that need no Ray instance: flags, the proxy's close, the Triton client.

The Triton path runs against a tiny gRPC server on 127.0.0.1 that speaks Triton's
``GRPCInferenceService`` (``ModelInfer`` only) with a stand-in model, so the request tensors, the
wire and the response mapping of :class:`TritonEncoderBackend` are real; a real Triton server is not.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from engine.cli import main
from engine.serve.ray_proxy import CLOSE_REPLICA_LOST, REPLICA_LOST_REASON, ReplicaLossClose


@pytest.mark.parametrize("argv, match", [
    (["--gateways", "3"], "--gateways need --ray"),
    (["--encoder-url", "triton://h:8001"], "--encoder-url need --ray"),
    (["--ray", "--gateways", "0"], "must be >= 1"),
    (["--ray", "--max-batch", "0"], "must be >= 1"),
    (["--ray", "--batch-wait-ms", "-1"], "--batch-wait-ms must be in 0..10000"),
    (["--ray", "--address", "somewhere"], "give 'auto'"),
    (["--ray", "--port", "0"], "--port 0 is not supported with --ray"),
    (["--ray", "--encoder-url", "http://h:8001"], "expected triton://HOST:PORT"),
    (["--ray", "--encoder-url", "triton://h"], "expected triton://HOST:PORT"),
    (["--ray", "--host", "0.0.0.0"], "give --token"),
])
def test_bad_ray_flags_fail_before_ray_starts(argv: list[str], match: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", *argv]) == 2
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("argv, interval", [([], 5), (["--keyframe-interval", "3"], 3)])
def test_serve_ray_reaches_the_ray_server_with_the_keyframe_policy(argv: list[str], interval: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``arsel serve --ray`` hands ``cmd_serve_ray`` the checked limits and the keyframe policy of the flags
    (the start of Ray itself is covered by tests/test_ray_serve.py)."""
    pytest.importorskip("fastapi")
    from engine.serve import cli as serve_cli

    seen: list[Any] = []
    monkeypatch.setattr(serve_cli, "cmd_serve_ray", lambda args, limits, policy: seen.append((args, policy)) or 0)
    assert main(["serve", "--ray", "--port", "8799", *argv]) == 0
    (args, policy), = seen
    assert policy.mode == "interval" and policy.interval == interval and args.gateways == 2


def _router() -> Any:
    """A ``FewestSessionsRouter`` without a Serve router around it (its state only)."""
    from engine.serve.ray_router import FewestSessionsRouter

    router = object.__new__(FewestSessionsRouter)
    router.initialize_state()
    return router


def _request(rid: str) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(metadata=SimpleNamespace(internal_request_id=rid))


def _replicas(max_ongoing: int = 5) -> list[Any]:
    from types import SimpleNamespace

    return [SimpleNamespace(replica_id=name, max_ongoing_requests=max_ongoing) for name in ("a", "b")]


def _choose(router: Any, replicas: list[Any], rids: list[str]) -> list[list[str]]:
    """The ranks offered for ``rids`` choosing at once (all choices before any is routed)."""
    async def run() -> list[Any]:
        return await asyncio.gather(*[router.choose_replicas(replicas, _request(rid)) for rid in rids])

    return [[group[0].replica_id for group in rank] for rank in asyncio.run(run())]


def test_sessions_connecting_together_spread_over_the_replicas() -> None:
    router, replicas = _router(), _replicas()
    first = _choose(router, replicas, [f"s{k}" for k in range(8)])
    assert all(len(rank) == 1 for rank in first)  # the least-loaded replica alone: no fall-through
    assert sorted(rank[0] for rank in first) == ["a"] * 4 + ["b"] * 4
    for k, rank in enumerate(first):
        router.on_request_routed(_request(f"s{k}"), rank[0], None)
    router.on_request_completed("b", "never-routed")  # a refused request completes without being routed
    a_sessions = [k for k, rank in enumerate(first) if rank == ["a"]]
    for k in a_sessions[:3]:  # three of a's sessions close: the next three sessions go to a
        router.on_request_completed("a", f"s{k}")
    assert _choose(router, replicas, ["t0", "t1", "t2"]) == [["a"]] * 3


def test_a_retried_choice_counts_once_and_falls_through_only_after_patience() -> None:
    from engine.serve.ray_router import PATIENT_TRIES

    router, replicas = _router(), _replicas()
    (first,) = _choose(router, replicas, ["slow"])
    for _ in range(PATIENT_TRIES - 1):  # the replica missed the queue-length deadline: Serve asks again
        assert _choose(router, replicas, ["slow"]) == [first]
    assert router.load(first[0], time.monotonic()) == 1  # four choices of one request count as one
    (last,) = _choose(router, replicas, ["slow"])
    assert last[0] == first[0] and sorted(last) == ["a", "b"]  # then a real refusal may fall through
    other = "b" if first[0] == "a" else "a"
    router.on_request_routed(_request("slow"), other, None)  # ... and it was routed to the other replica
    now = time.monotonic()
    assert (router.load(first[0], now), router.load(other, now)) == (0, 1)
    assert _choose(router, replicas, ["next"]) == [[first[0]]]


def test_a_replica_counted_full_is_not_waited_for() -> None:
    router, replicas = _router(), _replicas(max_ongoing=1)
    router.on_request_routed(_request("s0"), "a", None)
    router.on_request_routed(_request("s1"), "b", None)
    assert sorted(_choose(router, replicas, ["s2"])[0]) == ["a", "b"]  # both full: offer both at once


def test_unrouted_choices_expire_and_dead_replicas_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.serve import ray_router

    router, replicas = _router(), _replicas()
    clock = [100.0]
    monkeypatch.setattr(ray_router.time, "monotonic", lambda: clock[0])
    assert _choose(router, replicas, ["gone0", "gone1"]) in ([["a"], ["b"]], [["b"], ["a"]])  # cancelled
    router.on_request_routed(_request("s0"), "a", None)
    assert (router.load("a", clock[0]), router.load("b", clock[0])) == (2, 1)
    clock[0] += ray_router.CHOICE_TTL_S + 1
    assert (router.load("a", clock[0]), router.load("b", clock[0])) == (1, 0)
    assert _choose(router, replicas, ["s1"]) == [["b"]]
    router._replicas, router._replica_id_set, router._queue_len_gauge_last_update = {}, set(), {}  # noqa: SLF001
    router.on_replica_actor_died("b")  # b held s1's choice: a replica that died counts for nothing
    assert router.load("b", clock[0]) == 0 and router.load("a", clock[0]) == 1


def test_triton_address() -> None:
    from engine.serve.triton_encoder import triton_address

    assert triton_address("triton://gpu-7:8001") == "gpu-7:8001"
    assert triton_address("triton://[::1]:8001") == "[::1]:8001"


# --- the proxy's close for sockets whose replica died --------------------------------------------------------
def _run_middleware(inner: Any) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.receive", "text": "{}"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(ReplicaLossClose(inner)({"type": "websocket"}, receive, send))
    return sent


def test_orphaned_websocket_gets_1012_with_a_reason() -> None:
    async def replica_died(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        await receive()  # ... then the proxied call ends without a close (the replica is gone)

    sent = _run_middleware(replica_died)
    assert sent[-1] == {"type": "websocket.close", "code": CLOSE_REPLICA_LOST, "reason": REPLICA_LOST_REASON}
    assert len(REPLICA_LOST_REASON.encode()) <= 123  # a close frame's reason limit


@pytest.mark.parametrize("inner_messages", [
    [{"type": "websocket.accept"}, {"type": "websocket.close", "code": 1000}],  # the app closed
    [{"type": "websocket.close", "code": 4401}],  # refused before accept
])
def test_closed_or_refused_websocket_is_left_alone(inner_messages: list[dict[str, Any]]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        for m in inner_messages:
            await send(m)

    assert _run_middleware(app) == inner_messages


def test_client_disconnect_is_left_alone() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.disconnect", "code": 1001}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def both(scope: Any, rcv: Any, snd: Any) -> None:
        await app(scope, rcv, snd)
        await rcv()

    asyncio.run(ReplicaLossClose(both)({"type": "websocket"}, receive, send))
    assert sent == [{"type": "websocket.accept"}]


# --- the Triton client against a stand-in Triton gRPC server ------------------------------------------------
SIDE = 256


def _stand_in_encoder(x: np.ndarray) -> np.ndarray:
    """(b, 3, S, S) -> (b, 256, 64, 64): per-channel means broadcast, scaled by the channel index."""
    means = x.mean(axis=(1, 2, 3), dtype=np.float64).astype(np.float32)
    return (means[:, None, None, None] * np.arange(1, 257, dtype=np.float32)[None, :, None, None]
            * np.ones((1, 1, 64, 64), np.float32))


@pytest.fixture(scope="module")
def triton_url() -> Iterator[tuple[str, list[Any]]]:
    grpc = pytest.importorskip("grpc", reason="grpcio is not installed (pip install 'arsel[ray]')")
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    requests: list[Any] = []

    class StandIn(service_pb2_grpc.GRPCInferenceServiceServicer):
        def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802 - the gRPC method's name
            requests.append(request)
            (inp,) = request.inputs
            x = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(tuple(inp.shape))
            y = _stand_in_encoder(x)
            if request.id == "bad":
                y = y[:, :128]
            out = service_pb2.ModelInferResponse.InferOutputTensor(name="image_embeddings", datatype="FP32",
                                                                  shape=list(y.shape))
            return service_pb2.ModelInferResponse(model_name=request.model_name, outputs=[out],
                                                  raw_output_contents=[y.tobytes()])

    server = grpc.server(ThreadPoolExecutor(2))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(StandIn(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"triton://127.0.0.1:{port}", requests
    finally:
        server.stop(grace=None)


class _Local:
    input_size = SIDE

    def decode(self, *args: Any) -> str:
        return "local decode"


def test_triton_backend_maps_the_tensors_over_grpc(triton_url: tuple[str, list[Any]]) -> None:
    from engine.serve.triton_encoder import TritonEncoderBackend

    url, requests = triton_url
    backend = TritonEncoderBackend(url, _Local(), timeout_s=30)
    x = np.random.default_rng(0).standard_normal((1, 3, SIDE, SIDE)).astype(np.float32)
    emb = backend.encode(x)
    req = requests[-1]
    assert req.model_name == "encoder" and [i.name for i in req.inputs] == ["image"]
    assert req.inputs[0].datatype == "FP32" and list(req.inputs[0].shape) == [1, 3, SIDE, SIDE]
    assert [o.name for o in req.outputs] == ["image_embeddings"]
    assert emb.shape == (1, 256, 64, 64) and emb.dtype == np.float32 and emb.flags.writeable
    np.testing.assert_allclose(emb, _stand_in_encoder(x), rtol=1e-6)
    assert backend.decode() == "local decode"  # decodes stay local
    with pytest.raises(ValueError, match="encoder input must be"):
        backend.encode(np.zeros((1, 3, 64, 64), np.float32))


def test_triton_backend_refuses_a_wrong_answer(triton_url: tuple[str, list[Any]]) -> None:
    import tritonclient.grpc as grpcclient

    from engine.serve.triton_encoder import encoder_embedding, encoder_request

    url, _ = triton_url
    client = grpcclient.InferenceServerClient(url.removeprefix("triton://"))
    x = np.ones((1, 3, SIDE, SIDE), np.float32)
    result = client.infer("encoder", [encoder_request(x, SIDE)], request_id="bad",
                          outputs=[grpcclient.InferRequestedOutput("image_embeddings")])
    with pytest.raises(ValueError, match=r"expected float32 \(1, 256, 64, 64\)"):
        encoder_embedding(result)


def test_gateway_sessions_send_keyframe_encodes_at_once() -> None:
    """On a gateway, encodes are remote calls the encoder deployment batches: two sessions' keyframe
    encoders must not take encode turns (``SharedBackend.encode_turn``), or one would wait for the
    other's round trip and no batch could form. Two encodes here overlap in time."""
    import time

    pytest.importorskip("ray")
    from engine.serve.ray_gateway import _ConcurrentEncodes
    from engine.stream.scheduler import AsyncEncoder
    from engine.types import Frame

    spans: list[tuple[float, float]] = []

    class SlowRemote:
        input_size = 8

        def encode(self, image: np.ndarray) -> int:
            t0 = time.perf_counter()
            time.sleep(0.3)
            spans.append((t0, time.perf_counter()))
            return 0

    shared = _ConcurrentEncodes(SlowRemote())  # type: ignore[arg-type]
    encoders = [AsyncEncoder(lambda rgb, i: shared.encode(rgb), turn=getattr(shared, "encode_turn", None))
                for _ in range(2)]
    try:
        for enc in encoders:
            assert enc.submit(Frame(0, 0, np.zeros((8, 8, 3), np.uint8)), np.zeros((4, 4), np.uint8))
        assert all(enc.wait_idle(10) for enc in encoders)
    finally:
        for enc in encoders:
            enc.close()
    assert len(spans) == 2 and max(s[0] for s in spans) < min(s[1] for s in spans), spans  # they overlapped
