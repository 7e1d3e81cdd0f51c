"""``arsel serve --ray``: the gateway deployment in front of the shared, batching encoder.

One Ray Serve application, ``arsel``:

- :class:`Gateway` (N replicas) is the ingress. Each replica serves the very app of ``arsel serve``
  (``create_app``) with :class:`RayEngines` as its ``EngineFactory``: every session's
  ``StreamEngine`` has a :class:`~engine.serve.ray_encoder.RemoteEncoderBackend` (or a
  :class:`~engine.serve.triton_encoder.TritonEncoderBackend`) as its backend, so keyframes are
  encoded remotely while decodes run here, beside the session, on the replica's local model.
- :class:`~engine.serve.ray_encoder.BatchedEncoder` (M replicas) batches keyframes of every session
  on every gateway (absent with ``--encoder-url triton://...``: Triton batches).

A WebSocket is one long request to one gateway replica (sticky for its life). Backpressure is the
engine's: a session has at most one keyframe encode in flight (``AsyncEncoder`` drops requests
while busy), decodes go on on the newest embedding and ``result.embedding_age_frames`` grows.
``/healthz`` adds the answering replica, the deployments' replica states and the encoder's
batch-size histogram. Ray is imported here only (``pip install 'arsel[ray]'``).
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

from engine.serve.engines import LocalEngines, SharedBackend
from engine.serve.protocol import Limits
from engine.serve.ray_encoder import BatchedEncoder, RemoteEncoderBackend
from engine.serve.ray_proxy import PROXY_CALLBACK
from engine.serve.ray_router import ROUTER_PATH
from engine.stream.engine import EngineConfig
from engine.stream.scheduler import KeyframePolicy

APP_NAME = "arsel"
GATEWAY_CPUS = 0.5  # a replica's decodes are light; the encoder replica takes a whole CPU
ENCODER_CPUS = 1.0
ENCODE_TIMEOUT_S = 300.0  # one remote keyframe encode, queueing included (CPU batches under load are slow)
WORKER_NICENESS_ENV = "RAY_worker_niceness"  # read by the raylet a local start launches (Ray default: 15)


@dataclass(frozen=True)
class GatewaySettings:
    """What every gateway replica needs to build its app (pickled to the replicas)."""

    model: str
    checkpoint: str | None = None
    policy: KeyframePolicy = field(default_factory=KeyframePolicy)
    async_encoder: bool = True
    limits: Limits = field(default_factory=Limits)
    token: str | None = None
    max_sessions: int = 8
    encoder_url: str | None = None
    backend: str = "torch"  # the gateways' local decode runtime, "auto" allowed (the encoder deployment runs torch)
    device: str = "cpu"
    threads: int | None = None  # intra-op threads of a replica's decodes (None: Ray's, 1 per whole CPU reserved)
    config: EngineConfig = field(default_factory=EngineConfig)  # the sessions' engine settings


class _ConcurrentEncodes(SharedBackend):
    """``SharedBackend`` whose encodes are not serialised: they are remote calls, batched over there
    (so no encode turns either: sessions' keyframe encoders send at once)."""

    encode_turn = None  # type: ignore[assignment]

    def encode(self, image: np.ndarray) -> Any:
        return self._backend.encode(image)


@dataclass
class RayEngines(LocalEngines):
    """``LocalEngines`` over a remote-encoder backend, with ``health()`` for ``/healthz``."""

    encoder: Any = None  # the BatchedEncoder DeploymentHandle (None with Triton)
    encoder_url: str | None = None

    def __post_init__(self) -> None:
        self.shared = _ConcurrentEncodes(self.backend)
        self.backend_name = f"{self.backend.describe().runtime}+{'triton' if self.encoder_url else 'ray'}-encoder"

    def health(self) -> dict[str, Any]:
        """The answering replica, the application's deployments, the encoder's batch sizes."""
        ctx = serve.get_replica_context()
        out: dict[str, Any] = {"replica": ctx.replica_id.unique_id, "replica_actor": ctx.replica_id.to_full_id_str(),
                               "deployments": deployment_states(ctx.app_name)}
        if self.encoder is not None:
            try:
                hist = self.encoder.batch_histogram.remote().result(timeout_s=30)
                out["encoder"] = {"batch_histogram": {str(k): v for k, v in hist.items()}}
            except Exception as exc:  # noqa: BLE001 - /healthz reports it rather than failing
                out["encoder"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        else:
            out["encoder"] = {"url": self.encoder_url}
        return {"ray": out}


def deployment_states(app_name: str) -> dict[str, Any]:
    """Deployment name -> ``{"status", "replicas": {state: count}}`` of Serve application ``app_name``."""
    app = serve.status().applications.get(app_name)
    if app is None:
        return {}
    return {name: {"status": str(d.status.value), "replicas": {str(getattr(s, "value", s)): n
                                                               for s, n in d.replica_states.items()}}
            for name, d in app.deployments.items()}


@serve.deployment(ray_actor_options={"num_cpus": GATEWAY_CPUS})
@serve.ingress()
class Gateway:
    """The ingress: ``create_app`` over :class:`RayEngines` (see the module docstring)."""

    def __init__(self, encoder: Any, settings: GatewaySettings) -> None:
        from engine.backends.factory import create_backend, resolve_auto
        from engine.models.registry import get_spec
        from engine.serve.session import freeze_loaded_objects
        from engine.threads import apply_threads

        name = resolve_auto(settings.device) if settings.backend == "auto" else settings.backend
        if settings.threads:  # floating-point sums depend on it: equal to a local server only at its count
            apply_threads(name, settings.threads)
        checkpoint = Path(settings.checkpoint) if settings.checkpoint else None
        local = create_backend(name, settings.model, checkpoint, settings.device, threads=settings.threads)
        if settings.encoder_url:
            from engine.serve.triton_encoder import TritonEncoderBackend

            backend: Any = TritonEncoderBackend(settings.encoder_url, local, timeout_s=ENCODE_TIMEOUT_S)
        else:
            backend = RemoteEncoderBackend(encoder, local, timeout_s=ENCODE_TIMEOUT_S)
        self.settings = settings
        self.engines = RayEngines(backend, get_spec(settings.model), settings.model, policy=settings.policy,
                                  async_encoder=settings.async_encoder, config=settings.config, encoder=encoder,
                                  encoder_url=settings.encoder_url)
        freeze_loaded_objects()  # as arsel serve: full collections walk only the sessions' objects

    def __serve_build_asgi_app__(self) -> Any:
        from engine.serve.app import create_app

        s = self.settings
        return create_app(self.engines, s.limits, token=s.token, max_sessions=s.max_sessions)


def build_application(settings: GatewaySettings, gateways: int = 2, encoders: int = 1, max_batch: int = 8,
                      batch_wait_s: float = 0.01) -> Any:
    """The bound ``arsel`` application: ``gateways`` Gateway replicas over ``encoders`` encoder replicas."""
    encoder = None
    if not settings.encoder_url:
        encoder = BatchedEncoder.options(num_replicas=encoders, max_ongoing_requests=max(16, 4 * max_batch)).bind(
            settings.model, settings.checkpoint, max_batch=max_batch, batch_wait_s=batch_wait_s)
    # a WebSocket is one long request: a replica must hold max_sessions of them plus /healthz calls;
    # a new session goes to the replica holding the fewest (engine.serve.ray_router)
    return Gateway.options(num_replicas=gateways, max_ongoing_requests=settings.max_sessions + 8,
                           request_router_config=RequestRouterConfig(request_router_class=ROUTER_PATH)).bind(
        encoder, settings)


def required_cpus(gateways: int, encoders: int, triton: bool = False) -> float:
    """Logical CPUs the replicas reserve (a local instance gets at least this many, cores or not)."""
    return gateways * GATEWAY_CPUS + (0 if triton else encoders * ENCODER_CPUS)


def start_ray(address: str | None, node_ip: str | None = "127.0.0.1", num_cpus: float | None = None,
              log: Callable[[str], None] = print) -> None:
    """Connect to ``address`` (``auto``, ``ray://HOST:PORT``) or start a local instance on ``node_ip``
    (``None``: Ray picks the machine's address).

    Usage reporting is off and the proxy closes orphaned WebSockets cleanly (``engine.serve.ray_proxy``);
    a local start runs its workers (the gateways, the encoder, the proxy) at normal priority, as
    ``arsel serve`` runs, not at Ray's default niceness 15, under which any other process on the
    machine (a client, a capture tool) takes their CPU first. All three are read from the
    environment by the processes a local start creates."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", PROXY_CALLBACK)
    os.environ.setdefault(WORKER_NICENESS_ENV, "0")
    t0 = time.monotonic()
    if address:
        log(f"ray: connecting to {address} ...")
        ray.init(address=address, log_to_driver=False)
    else:
        cpus = math.ceil(num_cpus or os.cpu_count() or 1)
        log(f"ray: starting a local instance ({cpus:g} CPUs, dashboard off) ...")
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 _node_ip_address=node_ip)
    log(f"ray: up in {time.monotonic() - t0:.1f} s")


def deploy(app: Any, host: str, port: int, tls: tuple[str, str] | None = None,
           log: Callable[[str], None] = print, poll_s: float = 2.0) -> Any:
    """Start Serve's proxy on ``host:port`` and run ``app``, logging replica readiness; the ingress handle."""
    http: dict[str, Any] = {"host": host, "port": port}
    if tls:
        http.update(ssl_certfile=tls[0], ssl_keyfile=tls[1])
    serve.start(http_options=http, proxy_location="HeadOnly")
    done: dict[str, Any] = {}

    def run() -> None:
        try:
            done["handle"] = serve.run(app, name=APP_NAME, route_prefix="/")
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            done["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    t0, last = time.monotonic(), ""
    while worker.is_alive():
        worker.join(poll_s)
        states = deployment_states(APP_NAME)
        line = "; ".join(f"{name} {', '.join(f'{n} {s}' for s, n in d['replicas'].items()) or d['status']}"
                         for name, d in states.items())
        if line and line != last:
            log(f"deploy ({time.monotonic() - t0:.0f} s): {line}")
            last = line
    if "error" in done:
        raise done["error"]
    log(f"deploy: ready in {time.monotonic() - t0:.1f} s")
    return done["handle"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (for Serve's proxy, which cannot bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def shutdown(log: Callable[[str], None] = print) -> None:
    """Delete the deployments and disconnect (a local instance stops with it)."""
    log("ray: shutting down the deployments ...")
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
