"""Gateway replica choice for ``arsel serve --ray``: each new session goes to the replica with the fewest.

A WebSocket session is one long request to one gateway replica. Ray Serve's default router (power
of two choices) compares the replicas' queue lengths as it last saw them; sessions that connect
together all see the same lengths and land wherever the random tie-break sends them (7 of 8 on one
of two replicas, measured). Every session's frames then share that replica's CPU, so sessions on a
crowded replica get a fraction of the others' frame rate.

:class:`FewestSessionsRouter` counts, in the router itself (the HTTP proxy's), the requests each
replica holds plus its pending choices (one per request, made and not routed yet), and ranks the
replicas by that count, ties at random. The count changes synchronously with each choice, so
sessions that connect together spread evenly.

Serve confirms a choice by asking the replica its queue length, with a deadline of 0.1 s that
doubles on each retry. On a loaded machine a gateway busy decoding can miss it; the request must
then not fall through to the next replica in rank (measured, 6 sessions connecting together on 2
busy cores: split 1/5 or 2/4 in 6 of 8 rounds when it did, 3/3 in 8 of 8 since). So the first :data:`PATIENT_TRIES` choices of a
request offer the least-loaded replica alone, the retries re-rank without counting the request's own
earlier choice, and only then, or when this router already counts the replica full
(``max_ongoing_requests``), does the ranking include the others, for a replica that really refuses.
A replica found is handed to the request it was chosen for (Serve's default exact match; its
``FIFOMixin`` would hand it to the oldest waiting request, and the count made for one request would
land on another's replica). Loaded by import path (``ROUTER_PATH``) in the proxy process: kept free
of heavy imports.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica

ROUTER_PATH = "engine.serve.ray_router.FewestSessionsRouter"
CHOICE_TTL_S = 10.0  # a choice not routed by then (the request was cancelled) stops counting
PATIENT_TRIES = 4  # queue-length deadlines 0.1 + 0.2 + 0.4 + 0.8 s before another replica is offered


@dataclass
class _Choice:
    replica: ReplicaID
    at: float  # time.monotonic() of the latest choice for this request, s
    tries: int  # choices made for this request so far


class FewestSessionsRouter(RequestRouter):
    """Rank replicas by requests held + pending choices (see the module docstring)."""

    def initialize_state(self, **kwargs: Any) -> None:
        self._held: dict[str, ReplicaID] = {}  # internal request id -> the replica holding it
        self._pending: dict[str, _Choice] = {}  # internal request id -> its choice, not routed yet

    def load(self, replica_id: ReplicaID, now: float) -> int:
        """Requests ``replica_id`` holds plus the pending choices of it younger than the TTL."""
        return (sum(r == replica_id for r in self._held.values())
                + sum(c.replica == replica_id and now - c.at <= CHOICE_TTL_S for c in self._pending.values()))

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        now = time.monotonic()
        self._pending = {k: c for k, c in self._pending.items() if now - c.at <= CHOICE_TTL_S}
        rid = pending_request.metadata.internal_request_id if pending_request is not None else None
        earlier = self._pending.pop(rid, None) if rid is not None else None  # a retry: its own choice does not count
        loads = {r.replica_id: self.load(r.replica_id, now) for r in candidate_replicas}
        again = earlier.replica if earlier is not None else None  # on a tie, a retry asks the same replica
        ranked = sorted(candidate_replicas, key=lambda r: (loads[r.replica_id], r.replica_id != again, random.random()))
        if not ranked:
            return []
        best = ranked[0]
        tries = (earlier.tries if earlier is not None else 0) + 1
        if rid is not None:
            self._pending[rid] = _Choice(best.replica_id, now, tries)
        max_ongoing = getattr(best, "max_ongoing_requests", None)
        full = max_ongoing is not None and loads[best.replica_id] >= max_ongoing
        if tries <= PATIENT_TRIES and not full:
            return [[best]]
        return [[r] for r in ranked]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult) -> None:
        rid = pending_request.metadata.internal_request_id
        self._pending.pop(rid, None)
        self._held[rid] = replica_id

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self._held.pop(internal_request_id, None)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._held = {k: r for k, r in self._held.items() if r != replica_id}
        self._pending = {k: c for k, c in self._pending.items() if c.replica != replica_id}
