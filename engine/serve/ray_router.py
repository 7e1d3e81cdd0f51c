"""Gateway replica choice for ``arsel serve --ray``: each new session goes to the replica with the fewest.

A WebSocket session is one long request to one gateway replica. Ray Serve's default router (power
of two choices) compares the replicas' queue lengths as it last saw them; sessions that connect
together all see the same lengths and land wherever the random tie-break sends them (7 of 8 on one
of two replicas, measured). Every session's frames then share that replica's CPU, so sessions on a
crowded replica get a fraction of the others' frame rate.

:class:`FewestSessionsRouter` counts, in the router itself (the HTTP proxy's), the requests each
replica holds plus the choices it made that are not routed yet, and ranks the replicas by that
count, ties at random. The count changes synchronously with each choice, so sessions that connect
together spread evenly. A replica that refuses (``max_ongoing_requests``) passes the request on
to the next in rank. Loaded by import path (``ROUTER_PATH``) in the proxy process: kept free of
heavy imports.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Any

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica

ROUTER_PATH = "engine.serve.ray_router.FewestSessionsRouter"
CHOICE_TTL_S = 10.0  # a choice not routed by then (the request went elsewhere or was refused) stops counting


class FewestSessionsRouter(FIFOMixin, RequestRouter):
    """Rank replicas by requests held + choices pending (see the module docstring)."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._held: dict[str, ReplicaID] = {}  # internal request id -> the replica holding it
        self._choices: dict[ReplicaID, deque[float]] = {}  # replica -> monotonic times of pending choices

    def load(self, replica_id: ReplicaID, now: float) -> int:
        """Requests ``replica_id`` holds plus this router's pending choices of it (younger than the TTL)."""
        choices = self._choices.get(replica_id)
        while choices and now - choices[0] > CHOICE_TTL_S:
            choices.popleft()
        return sum(r == replica_id for r in self._held.values()) + len(choices or ())

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        now = time.monotonic()
        ranked = sorted(candidate_replicas, key=lambda r: (self.load(r.replica_id, now), random.random()))
        if ranked:
            self._choices.setdefault(ranked[0].replica_id, deque()).append(now)
        return [[r] for r in ranked]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult) -> None:
        self._held[pending_request.metadata.internal_request_id] = replica_id
        choices = self._choices.get(replica_id)
        if choices:
            choices.popleft()

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self._held.pop(internal_request_id, None)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._held = {k: r for k, r in self._held.items() if r != replica_id}
        self._choices.pop(replica_id, None)
