"""A clean close for WebSockets whose gateway replica died: middleware for Ray Serve's HTTP proxy.

When a gateway replica dies mid-session, Ray Serve's proxy ends the client's WebSocket by dropping
the TCP connection (the client sees 1006, "abnormal closure", and no reason). :class:`ReplicaLossClose`
wraps the proxy's ASGI app: a WebSocket that was accepted and has not been closed by either side
when the proxied call ends gets a close frame with code 1012 ("service restart") and a reason that
tells the client to reconnect for a new session.

Ray Serve's proxy loads it from ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` (set to
``PROXY_CALLBACK``), read by the proxy process when it starts: ``arsel serve --ray`` sets it before
it starts a local Ray instance; on a cluster started with ``ray start``, set it there. Kept free of
heavy imports (the proxy process imports this module only).
"""

from __future__ import annotations

from typing import Any

CLOSE_REPLICA_LOST = 1012
REPLICA_LOST_REASON = "arsel gateway replica lost; reconnect to start a new session"
PROXY_CALLBACK = "engine.serve.ray_proxy.proxy_middlewares"


class ReplicaLossClose:
    """Pure ASGI middleware: close an accepted, unclosed WebSocket with 1012 and a reason."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        state = {"accepted": False, "closed": False}

        async def tracked_send(message: dict[str, Any]) -> None:
            if message["type"] == "websocket.accept":
                state["accepted"] = True
            elif message["type"] == "websocket.close":
                state["closed"] = True
            await send(message)

        async def tracked_receive() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                state["closed"] = True
            return message

        try:
            await self.app(scope, tracked_receive, tracked_send)
        finally:
            if state["accepted"] and not state["closed"]:
                try:
                    await send({"type": "websocket.close", "code": CLOSE_REPLICA_LOST, "reason": REPLICA_LOST_REASON})
                except Exception:  # noqa: BLE001 - the client may be gone as well
                    pass


def proxy_middlewares() -> list[Any]:
    """The proxy callback: Starlette ``Middleware`` objects for Ray Serve's HTTP proxy."""
    from starlette.middleware import Middleware

    return [Middleware(ReplicaLossClose)]
