"""Frame slots shared by a server's sessions, granted in turns so that every session gets the same
frame rate, whatever its frames cost.

A first-come-first-served semaphore is fair in turns only with one slot: with two, a session whose
frames are slow (a decode streak) holds one slot while the cheap sessions cycle through the other,
and gets a fraction of their frame rate. ``TurnGate`` instead counts the frames each session has
started. A free slot goes to the waiting session that has started the fewest (ties: the one that
has waited longest), and no session starts a frame more than ``lead`` frames ahead of the session
furthest behind among those stepping or waiting, so over a stream the sessions' frame counts stay
within about ``lead`` of each other. A session with nothing to step does not hold the others back, and one that
comes back (or joins) starts at most ``lead`` frames behind the furthest behind: a short head start,
not a debt the others wait out.
Event-loop only: every method runs on the loop that owns the gate (no locks).
"""

from __future__ import annotations

import asyncio
import itertools


class Turn:
    """One session's handle on a ``TurnGate``: ``async with turn:`` steps one frame."""

    def __init__(self, gate: TurnGate) -> None:
        self.gate = gate
        self.started = 0  # frames started, levelled up on (re)joining

    async def __aenter__(self) -> Turn:
        await self.gate.acquire(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.gate.release(self)

    def close(self) -> None:
        """The session ended: forget it (a frame it still steps keeps its slot until released)."""
        self.gate.forget(self)


class TurnGate:
    """``slots`` frames step at once across sessions, granted in turns (see the module docstring).
    ``lead`` (>= 1): how many frames a session may start ahead of the one furthest behind."""

    def __init__(self, slots: int, lead: int = 2) -> None:
        if slots < 1:
            raise ValueError(f"frame slots must be >= 1, got {slots}")
        if lead < 1:
            raise ValueError(f"lead must be >= 1 frame, got {lead}")
        self.slots, self.lead = slots, lead
        self.free = slots
        self.waiting: dict[Turn, tuple[int, asyncio.Future[None]]] = {}  # turn -> (arrival, future)
        self.running: dict[Turn, int] = {}  # turn -> frames it is stepping now (0 or 1 in the server)
        self._arrivals = itertools.count()

    def turn(self) -> Turn:
        """A new session's handle."""
        return Turn(self)

    async def acquire(self, turn: Turn) -> None:
        """Wait for a slot and this session's turn."""
        if turn in self.waiting:
            raise RuntimeError("a session waits for one frame slot at a time")
        if turn not in self.running:  # (re)joining: at most `lead` frames behind, no debt
            behind = self._min_started(exclude=turn, default=turn.started + self.lead) - self.lead
            turn.started = max(turn.started, behind)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting[turn] = (next(self._arrivals), future)
        self._dispatch()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted, then cancelled: give it back
                self.release(turn)
            else:
                self.waiting.pop(turn, None)
                self._dispatch()
            raise

    def release(self, turn: Turn) -> None:
        """The frame ``turn`` stepped is done: its slot goes to the next turn."""
        left = self.running.get(turn, 0) - 1
        if left < 0:
            raise RuntimeError("release without a granted slot")
        if left:
            self.running[turn] = left
        else:
            del self.running[turn]
        self.free += 1
        self._dispatch()

    def forget(self, turn: Turn) -> None:
        """Drop a session's wait (its task is gone); a slot it holds is kept until ``release``."""
        entry = self.waiting.pop(turn, None)
        if entry is not None and not entry[1].done():
            entry[1].cancel()
        self._dispatch()

    def _min_started(self, exclude: Turn | None, default: int) -> int:
        active = [t.started for t in itertools.chain(self.waiting, self.running) if t is not exclude]
        return min(active, default=default)

    def _eligible(self, turn: Turn) -> bool:
        return turn.started < self._min_started(exclude=turn, default=turn.started) + self.lead

    def _dispatch(self) -> None:
        """Grant free slots: fewest frames started first, then longest waiting; none to a session
        ``lead`` frames ahead (its slot stays free until the one behind moves)."""
        while self.free > 0 and self.waiting:
            order = sorted(self.waiting.items(), key=lambda kv: (kv[0].started, kv[1][0]))
            turn = next((t for t, _ in order if self._eligible(t)), None)
            if turn is None:
                return
            _, future = self.waiting.pop(turn)
            if future.done():  # cancelled while waiting: nothing to grant
                continue
            turn.started += 1
            self.running[turn] = self.running.get(turn, 0) + 1
            self.free -= 1
            future.set_result(None)
