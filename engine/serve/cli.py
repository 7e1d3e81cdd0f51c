"""``arsel serve``: run the ``arsel.v1`` stream server (FastAPI on uvicorn).

    arsel serve [--host 127.0.0.1] [--port 8765] [--model NAME] [--backend B]
        [--keyframe-interval auto|K] [--threads N] [--reuse-decode-px PX]
        [--max-correction-decodes N] [--max-sessions N] [--token TOKEN] [--tls-cert F --tls-key F]
        [--ray [--address A] [--gateways N] [--encoders M] ...]

Binds loopback by default; any other host needs ``--token``. Prints the URL to open. ``--ray``
scales out on Ray Serve (``engine.serve.ray_gateway``, run by ``cmd_serve_ray``).
:class:`BackgroundServer` runs the same server on a thread (tests, benchmarks, demos).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

from engine.cli_common import UsageError, add_keyframe_args, add_model_args, keyframe_policy
from engine.extras import require
from engine.serve.protocol import Limits

#: The live server's engine settings (``engine_config``): a decode is reused while the object holds
#: still on its keyframe, and a drift correction decodes at most a few prompts (``bench/bench_serve.py``).
LIVE_REUSE_DECODE_PX = 6.0
LIVE_ROI_MARGIN = 0.25
LIVE_MAX_CORRECTION_DECODES = 4


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` verb to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser("serve", help="serve the arsel.v1 stream protocol to headsets and browsers")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 = any free port)")
    add_model_args(p, backend_default="auto",
                   backend_help="runtime of encoder and decoder (default auto: onnxruntime on the CPU, tensorrt "
                                "or torch on CUDA; onnxruntime exports into the cache on first use)")
    add_keyframe_args(p)
    p.add_argument("--sync-encoder", action="store_true",
                   help="encode keyframes on the session's thread (identical masks to `arsel track`; slower)")
    p.add_argument("--threads", type=int, help="CPU threads per compute thread (keyframe encoder, each session's "
                   "decoder; default half the cores)")
    p.add_argument("--reuse-decode-px", type=float, default=LIVE_REUSE_DECODE_PX, metavar="PX",
                   help="reuse an object's last decode on the same keyframe when its prompt moved <= PX there "
                        f"(default {LIVE_REUSE_DECODE_PX:g}; 0: decode every frame, as `arsel track` does)")
    p.add_argument("--max-correction-decodes", type=int, default=LIVE_MAX_CORRECTION_DECODES, metavar="N",
                   help="prompts a drift correction decodes at most, the expected box first and the "
                        f"others only if it fails (default {LIVE_MAX_CORRECTION_DECODES}; 0: all at once, "
                        "as `arsel track` does)")
    p.add_argument("--roi-margin", type=fraction_or_none, default=LIVE_ROI_MARGIN, metavar="F",
                   help="upscale a box prompt's mask only around the box grown by F times its size: exact "
                        f"inside, background outside (default {LIVE_ROI_MARGIN:g}; none: whole masks, as "
                        "`arsel track` does; whole masks anyway where no window applies: point-capable models, "
                        "TensorRT)")
    p.add_argument("--max-sessions", type=int, default=8, help="concurrent sessions (default 8)")
    p.add_argument("--max-inflight", type=int, default=2, help="frames in flight per session: the one being processed plus those waiting (default 2)")
    p.add_argument("--frame-slots", type=int, default=None, metavar="N",
                   help="frames stepped at once across sessions, granted in turns so that sessions get "
                        "the same frame rate (default: one per core, at most 8)")
    p.add_argument("--max-frame-mb", type=float, default=8.0, help="largest frame message in MiB (default 8)")
    p.add_argument("--max-image-side", type=int, default=4096, help="largest image width/height (default 4096)")
    p.add_argument("--max-messages-per-s", type=float, default=400.0, help="per-session message rate (default 400)")
    p.add_argument("--idle-timeout", type=float, default=60.0, metavar="S", help="close silent sessions (default 60 s)")
    p.add_argument("--token", help="shared secret clients send (Authorization: Bearer or ?token=)")
    p.add_argument("--tls-cert", help="TLS certificate (PEM): serve https/wss (headset browsers need it for cameras)")
    p.add_argument("--tls-key", help="TLS private key (PEM) for --tls-cert")
    add_ray_args(p)
    p.set_defaults(func=cmd_serve)
    return p


def _usage(msg: str) -> Exception:
    return UsageError(msg)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_args(args: argparse.Namespace) -> Limits:
    """Validate the flags before anything loads; returns the session limits."""
    if not is_loopback(args.host) and not args.token:
        raise _usage(f"--host {args.host} exposes the server beyond this machine: give --token SECRET so only "
                     "clients that know it connect (or bind 127.0.0.1)")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise _usage("TLS needs both --tls-cert and --tls-key")
    for f in (args.tls_cert, args.tls_key):
        if f and not Path(f).is_file():
            raise FileNotFoundError(f"TLS file {f} not found")
    check_ray_args(args)
    if args.max_sessions < 1 or args.max_inflight < 1 or not 0 <= args.port <= 65535:
        raise _usage("--max-sessions and --max-inflight must be >= 1 and --port in 0..65535")
    if args.frame_slots is not None and args.frame_slots < 1:
        raise _usage("--frame-slots must be >= 1 (or left out: one per core)")
    from engine.validate import number, optional_number

    optional_number("--threads", args.threads, lo=1, hi=1024, integer=True)
    number("--reuse-decode-px", args.reuse_decode_px, lo=0, hint=" (0: decode every frame)")
    number("--max-correction-decodes", args.max_correction_decodes, lo=0, hi=64, integer=True, hint=" (0: all)")
    optional_number("--roi-margin", args.roi_margin, lo=0, hi=100, hint=" (a fraction of the box size, or none)")
    try:
        return Limits(max_frame_bytes=int(args.max_frame_mb * (1 << 20)), max_image_side=args.max_image_side,
                      max_messages_per_s=args.max_messages_per_s, idle_timeout_s=args.idle_timeout,
                      max_inflight=args.max_inflight)
    except ValueError as exc:
        raise _usage(str(exc)) from None


def engine_config(args: argparse.Namespace) -> Any:
    """The sessions' ``EngineConfig``: the flags' reuse distance (with tracking prompts mapped through
    their own frame's motion, ``EngineConfig.track_prompt_own_motion``, so reuse survives skipped
    frames; 0: as ``arsel track``) and correction cap (0: every prompt in one batch, as ``arsel
    track``; else staged: the expected box first, ``GuardConfig.staged``) and box prompts' upscaling
    window (``EngineConfig.roi_margin``; None: whole masks, as ``arsel track``)."""
    from engine.stream.engine import EngineConfig
    from engine.stream.guards import GuardConfig

    return EngineConfig(reuse_decode_px=float(args.reuse_decode_px), track_prompt_own_motion=args.reuse_decode_px > 0,
                        guard=GuardConfig(max_candidates=args.max_correction_decodes or None,
                                          staged=args.max_correction_decodes > 0),
                        roi_margin=args.roi_margin)


def fraction_or_none(text: str) -> float | None:
    """``--roi-margin``'s value: a number, or ``none`` (whole masks)."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a fraction of the box size (e.g. 0.25) or none, got {text!r}") from None


def bound_malloc_arenas(n: int = 2) -> bool:
    """Cap glibc's malloc arenas at ``n`` (``mallopt(M_ARENA_MAX)``), as ``MALLOC_ARENA_MAX=n`` would:
    glibc otherwise keeps a heap arena per session thread, and a long-running server's memory only
    grows. Call before the session threads start. False where it does not apply (not glibc, or the
    variable is set: the user's value stands)."""
    import ctypes
    import os
    import sys

    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(-8, int(n)))  # -8: M_ARENA_MAX in <malloc.h>


def _require_server_libs() -> None:
    for module in ("fastapi", "uvicorn"):
        require("serve", module, what="arsel serve")


def cmd_serve(args: argparse.Namespace) -> int:
    from engine.serve.app import create_app
    from engine.serve.engines import LocalEngines
    from engine.serve.session import freeze_loaded_objects

    limits = check_args(args)
    _require_server_libs()
    bound_malloc_arenas()
    if args.ray:
        return cmd_serve_ray(args, limits, keyframe_policy(args))
    import uvicorn

    from engine.threads import engine_threads

    engines = LocalEngines.load(args.model, args.backend, Path(args.checkpoint) if args.checkpoint else None,
                                args.device, threads=engine_threads(args.threads), policy=keyframe_policy(args),
                                async_encoder=not args.sync_encoder, config=engine_config(args))
    app = create_app(engines, limits, token=args.token, max_sessions=args.max_sessions, frame_slots=args.frame_slots)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key, **ws_options(limits))
    server = uvicorn.Server(config)
    freeze_loaded_objects()
    sock = config.bind_socket()
    sock.listen(config.backlog)  # connections from the moment the URL is printed wait, not fail
    scheme = "https" if args.tls_cert else "http"
    port = sock.getsockname()[1]
    host = args.host if ":" not in args.host else f"[{args.host}]"
    query = "?token=" + args.token if args.token else ""
    print(f"arsel serve: {engines.model} on {engines.backend_name}; open {scheme}://{host}:{port}/{query}  "
          f"(stream: {'wss' if args.tls_cert else 'ws'}://{host}:{port}/v1/stream)", flush=True)
    server.run(sockets=[sock])
    return 0


RAY_DEFAULTS = {"gateways": 2, "encoders": 1, "max_batch": 8, "batch_wait_ms": 10.0}
RAY_ADDRESS = re.compile(r"^(auto|ray://[^\s:/]+:\d{1,5}|[^\s:/]+:\d{1,5})$")


def add_ray_args(p: argparse.ArgumentParser) -> None:
    """The ``--ray`` group of ``arsel serve``."""
    g = p.add_argument_group("scale-out on Ray Serve (pip install 'arsel[ray]')")
    g.add_argument("--ray", action="store_true",
                   help="serve through Ray Serve: gateway replicas hold sessions, a shared deployment batches keyframes")
    g.add_argument("--address", metavar="auto|ray://HOST:PORT",
                   help="join a running Ray cluster (default: start a local instance)")
    g.add_argument("--gateways", type=int, metavar="N", help="gateway replicas holding sessions (default 2)")
    g.add_argument("--encoders", type=int, metavar="M", help="batching encoder replicas (default 1)")
    g.add_argument("--max-batch", type=int, metavar="B", help="keyframes per encoder batch, at most (default 8)")
    g.add_argument("--batch-wait-ms", type=float, metavar="T",
                   help="how long an encoder waits to fill a batch (default 10 ms)")
    g.add_argument("--encoder-url", metavar="triton://HOST:PORT",
                   help="encode keyframes on a Triton server (gRPC) instead of the encoder deployment")


def check_ray_args(args: argparse.Namespace) -> None:
    """Validate the ``--ray`` flags (fill their defaults); UsageError naming the fix."""
    given = [f"--{k.replace('_', '-')}" for k in (*RAY_DEFAULTS, "address", "encoder_url")
             if getattr(args, k, None) is not None]
    if not args.ray:
        if given:
            raise UsageError(f"{', '.join(given)} need --ray (the scale-out on Ray Serve)")
        return
    for key, default in RAY_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    if args.gateways < 1 or args.encoders < 1 or args.max_batch < 1:
        raise UsageError("--gateways, --encoders and --max-batch must be >= 1")
    if not 0 <= args.batch_wait_ms <= 10_000:
        raise UsageError(f"--batch-wait-ms must be in 0..10000, got {args.batch_wait_ms:g}")
    if args.address is not None and not RAY_ADDRESS.match(args.address):
        raise UsageError(f"--address {args.address!r}: give 'auto' (the cluster `ray start` made on this "
                         "machine), ray://HOST:PORT (Ray Client) or HOST:PORT (the head's GCS)")
    if args.port == 0:
        raise UsageError("--port 0 is not supported with --ray: Ray Serve's proxy needs a fixed port")
    if args.encoder_url is not None:
        from engine.serve.triton_encoder import triton_address

        try:
            triton_address(args.encoder_url)
        except ValueError as exc:
            raise UsageError(str(exc)) from None


def cmd_serve_ray(args: argparse.Namespace, limits: Limits, policy: Any) -> int:
    """Run ``arsel serve --ray`` (flags checked by ``check_ray_args``) until Ctrl-C."""
    require("ray", "ray", what="arsel serve --ray")
    if args.encoder_url:
        require("ray", "tritonclient.grpc", what="--encoder-url")
    from engine.serve import ray_gateway as rg

    settings = rg.GatewaySettings(args.model, args.checkpoint, policy, async_encoder=not args.sync_encoder,
                                  limits=limits, token=args.token, max_sessions=args.max_sessions,
                                  encoder_url=args.encoder_url, backend=args.backend, device=args.device,
                                  threads=args.threads, config=engine_config(args))
    app = rg.build_application(settings, args.gateways, args.encoders, args.max_batch, args.batch_wait_ms / 1e3)
    cpus = max(float(os.cpu_count() or 1), rg.required_cpus(args.gateways, args.encoders, bool(args.encoder_url)))
    rg.start_ray(args.address, "127.0.0.1" if is_loopback(args.host) else None, num_cpus=cpus)
    try:
        tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
        rg.deploy(app, args.host, args.port, tls)
        scheme = "https" if tls else "http"
        host = args.host if ":" not in args.host else f"[{args.host}]"
        query = "?token=" + args.token if args.token else ""
        encoder = args.encoder_url or f"{args.encoders} batching encoder(s), batches <= {args.max_batch}"
        print(f"arsel serve --ray: {args.model}, {args.gateways} gateway(s) over {encoder}; open "
              f"{scheme}://{host}:{args.port}/{query}  (stream: {'wss' if tls else 'ws'}://{host}:{args.port}/v1/stream)"
              "\nstop with Ctrl-C (deletes the deployments" + ("" if args.address else
                                                             ", stops the local Ray instance") + ")", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        rg.shutdown()


def ws_options(limits: Limits) -> dict[str, Any]:
    """uvicorn's WebSocket settings. The message cap lies above the frame limit, so an oversized
    frame gets ``too_large``. permessage-deflate is declined: frames are JPEG or PNG already, and
    deflating a 640x480 JPEG costs the sender about 3.5 ms a frame (Python ``websockets``) for nothing."""
    return {"ws_max_size": max(4 * limits.max_frame_bytes, 32 << 20), "ws_per_message_deflate": False}


class BackgroundServer:
    """``create_app(...)`` served by uvicorn on a daemon thread at 127.0.0.1 and a free port.

    >>> with BackgroundServer(app) as srv: print(srv.url)  # doctest: +SKIP
    """

    def __init__(self, app: Any, limits: Limits | None = None, host: str = "127.0.0.1", **config: Any) -> None:
        import uvicorn

        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        cfg = uvicorn.Config(app, log_level="warning", **ws_options(limits or Limits()), **config)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/stream"

    def start(self, timeout_s: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if time.monotonic() - t0 > timeout_s or not self.thread.is_alive():
                raise RuntimeError("the background server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)
        self.sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
