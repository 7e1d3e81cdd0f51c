"""``arsel serve``: run the ``arsel.v1`` stream server (FastAPI on uvicorn).

    arsel serve [--host 127.0.0.1] [--port 8765] [--model NAME] [--backend B]
        [--keyframe-interval K | --keyframe auto] [--threads N] [--reuse-decode-px PX]
        [--max-correction-decodes N] [--max-sessions N] [--token TOKEN] [--tls-cert F --tls-key F]

Binds loopback by default; any other host needs ``--token``. Prints the URL to open.
:class:`BackgroundServer` runs the same server on a thread (tests, benchmarks, demos).
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import threading
import time
from pathlib import Path
from typing import Any

from engine.cli_common import UsageError, add_model_args
from engine.extras import require
from engine.serve.protocol import Limits

#: The live server's engine settings (``engine_config``): a decode is reused while the object holds
#: still on its keyframe, and a drift correction decodes at most a few prompts (``bench/bench_serve.py``).
LIVE_REUSE_DECODE_PX = 6.0
LIVE_MAX_CORRECTION_DECODES = 4


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` verb to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser("serve", help="serve the arsel.v1 stream protocol to headsets and browsers")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765; 0 = any free port)")
    add_model_args(p, backend_default="auto",
                   backend_help="runtime of encoder and decoder (default auto: onnxruntime on the CPU, tensorrt "
                                "or torch on CUDA; onnxruntime exports into the cache on first use)")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--keyframe-interval", type=int, metavar="K", help="encode every K frames (default 5)")
    key.add_argument("--keyframe", metavar="auto|K", help="'auto' (motion/score driven) or an interval K")
    p.add_argument("--sync-encoder", action="store_true",
                   help="encode keyframes on the session's thread (identical masks to `arsel track`; slower)")
    p.add_argument("--threads", type=int, help="CPU threads per compute thread (keyframe encoder, each session's "
                   "decoder; default half the cores)")
    p.add_argument("--reuse-decode-px", type=float, default=LIVE_REUSE_DECODE_PX, metavar="PX",
                   help="reuse an object's last decode on the same keyframe when its prompt moved <= PX there "
                        f"(default {LIVE_REUSE_DECODE_PX:g}; 0: decode every frame, as `arsel track` does)")
    p.add_argument("--max-correction-decodes", type=int, default=LIVE_MAX_CORRECTION_DECODES, metavar="N",
                   help="prompts a drift correction decodes at most (default "
                        f"{LIVE_MAX_CORRECTION_DECODES}; 0: all, as `arsel track` does)")
    p.add_argument("--max-sessions", type=int, default=8, help="concurrent sessions (default 8)")
    p.add_argument("--max-inflight", type=int, default=2, help="frames queued per session (default 2)")
    p.add_argument("--max-frame-mb", type=float, default=8.0, help="largest frame message in MiB (default 8)")
    p.add_argument("--max-image-side", type=int, default=4096, help="largest image width/height (default 4096)")
    p.add_argument("--max-messages-per-s", type=float, default=400.0, help="per-session message rate (default 400)")
    p.add_argument("--idle-timeout", type=float, default=60.0, metavar="S", help="close silent sessions (default 60 s)")
    p.add_argument("--token", help="shared secret clients send (Authorization: Bearer or ?token=)")
    p.add_argument("--tls-cert", help="TLS certificate (PEM): serve https/wss (headset browsers need it for cameras)")
    p.add_argument("--tls-key", help="TLS private key (PEM) for --tls-cert")
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
    if args.max_sessions < 1 or args.max_inflight < 1 or not 0 <= args.port <= 65535:
        raise _usage("--max-sessions and --max-inflight must be >= 1 and --port in 0..65535")
    from engine.validate import number, optional_number

    optional_number("--threads", args.threads, lo=1, hi=1024, integer=True)
    number("--reuse-decode-px", args.reuse_decode_px, lo=0, hint=" (0: decode every frame)")
    number("--max-correction-decodes", args.max_correction_decodes, lo=0, hi=64, integer=True, hint=" (0: all)")
    try:
        return Limits(max_frame_bytes=int(args.max_frame_mb * (1 << 20)), max_image_side=args.max_image_side,
                      max_messages_per_s=args.max_messages_per_s, idle_timeout_s=args.idle_timeout,
                      max_inflight=args.max_inflight)
    except ValueError as exc:
        raise _usage(str(exc)) from None


def engine_config(args: argparse.Namespace) -> Any:
    """The sessions' ``EngineConfig``: the flags' reuse distance and correction cap (0: every prompt)."""
    from engine.stream.engine import EngineConfig
    from engine.stream.guards import GuardConfig

    return EngineConfig(reuse_decode_px=float(args.reuse_decode_px),
                        guard=GuardConfig(max_candidates=args.max_correction_decodes or None))


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
    from engine.stream.track_cli import _policy

    limits = check_args(args)
    _require_server_libs()
    bound_malloc_arenas()
    import uvicorn

    from engine.threads import engine_threads

    engines = LocalEngines.load(args.model, args.backend, Path(args.checkpoint) if args.checkpoint else None,
                                args.device, threads=engine_threads(args.threads), policy=_policy(args),
                                async_encoder=not args.sync_encoder, config=engine_config(args))
    app = create_app(engines, limits, token=args.token, max_sessions=args.max_sessions)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                            ws_max_size=ws_max_size(limits), ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key)
    server = uvicorn.Server(config)
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


def ws_max_size(limits: Limits) -> int:
    """The transport's message cap: above the frame limit, so an oversized frame gets ``too_large``."""
    return max(4 * limits.max_frame_bytes, 32 << 20)


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
        cfg = uvicorn.Config(app, log_level="warning", ws_max_size=ws_max_size(limits or Limits()), **config)
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
