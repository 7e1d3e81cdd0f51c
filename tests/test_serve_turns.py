"""``engine.serve.turns.TurnGate``: frame slots granted so that sessions get the same frame rate.

Sessions are simulated on one event loop: each steps "frames" of a fixed cost (``asyncio.sleep``)
back to back, as ``arsel serve``'s process loop does while frames wait. The first-come-first-served
semaphore the gate replaced runs the same load beside it, to show what the gate changes."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import pytest

from engine.serve.turns import TurnGate


async def _steps(slot_of, costs_s: list[float], done, start_after=None,  # type: ignore[no-untyped-def]
                 log: list[int] | None = None, timeout_s: float = 60.0) -> tuple[list[int], int]:
    """Frames each session stepped and the most stepping at once, once ``done(counts)`` holds;
    ``slot_of(k)``: an async context manager for session ``k``'s turn; ``start_after(k, counts)``:
    whether session ``k`` may start yet (default: all start at once). Counted, not timed, so a
    loaded machine changes how long it takes, not what it shows."""
    counts = [0] * len(costs_s)
    busy = {"now": 0, "max": 0}
    finished = asyncio.Event()

    async def session(k: int) -> None:
        while start_after is not None and not start_after(k, counts):
            await asyncio.sleep(0.001)
        slot = slot_of(k)
        while not finished.is_set():
            async with slot:
                busy["now"] += 1
                busy["max"] = max(busy["max"], busy["now"])
                await asyncio.sleep(costs_s[k])
                busy["now"] -= 1
            counts[k] += 1
            if log is not None:
                log.append(k)
            if done(counts):
                finished.set()
            await asyncio.sleep(0)  # the result is sent: other tasks run before the next frame

    tasks = [asyncio.create_task(session(k)) for k in range(len(costs_s))]
    try:
        await asyncio.wait_for(finished.wait(), timeout_s)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return counts, busy["max"]


def _turn_gate(slots: int, n: int):  # type: ignore[no-untyped-def]
    gate = TurnGate(slots)
    turns = [gate.turn() for _ in range(n)]
    return gate, (lambda k: turns[k])


def test_a_slow_session_gets_the_same_frame_rate_as_cheap_ones() -> None:
    costs = [0.002, 0.002, 0.002, 0.020]  # the last one is in a decode streak
    cheap_done = lambda c: min(c[:3]) >= 100  # noqa: E731 - until the cheap ones stepped 100 frames each

    async def both() -> tuple[tuple[list[int], int], tuple[list[int], int], TurnGate]:
        sem = asyncio.Semaphore(2)
        fifo = await _steps(lambda k: sem, costs, cheap_done)
        gate, slot_of = _turn_gate(2, len(costs))
        return fifo, await _steps(slot_of, costs, cheap_done), gate

    (fifo, fifo_busy), (turned, busy), gate = asyncio.run(both())
    assert fifo_busy == busy == 2
    assert min(fifo) / max(fifo) < 0.5, f"the load is not unfair under first come, first served: {fifo}"
    assert gate.lead == 2 and max(turned) - min(turned) <= 3, turned
    assert not gate.waiting and not gate.running and gate.free == 2


def test_a_session_alone_is_never_held_back_and_slots_are_not_left_idle() -> None:
    async def run() -> tuple[list[int], int, list[bool]]:
        gate, slot_of = _turn_gate(2, 2)
        at_once = []
        for k in range(2):  # each asks while the other holds its slot: granted at once, no wait
            pending = asyncio.ensure_future(gate.acquire(slot_of(k)))
            await asyncio.sleep(0)
            at_once.append(pending.done())
        for k in range(2):
            gate.release(slot_of(k))
        counts, busy = await _steps(slot_of, [0.001, 0.001], lambda c: min(c) >= 60)
        return counts, busy, at_once

    counts, busy, at_once = asyncio.run(run())
    assert all(at_once) and busy == 2 and max(counts) - min(counts) <= 3, (counts, at_once)


def test_a_late_joiner_gets_a_short_head_start_not_a_debt() -> None:
    """Two sessions step 100 frames alone, then a third joins: from its first frame on, the first
    two keep stepping in turn with it instead of waiting out its missing frames."""
    log: list[int] = []

    async def run() -> list[int]:
        _, slot_of = _turn_gate(1, 3)
        counts, _ = await _steps(slot_of, [0.001] * 3, lambda c: c[2] >= 40,
                                 start_after=lambda k, c: k < 2 or c[0] >= 100, log=log)
        return counts

    counts = asyncio.run(run())
    first = log.index(2)
    assert first >= 199, "the early sessions did not run alone first"
    after = Counter(log[first:first + 30])
    assert after[0] >= 8 and after[1] >= 8 and after[2] <= 12, after
    assert counts[0] >= 100 + 12 and counts[1] >= 100 + 12, counts


def test_cancelled_waits_and_cancelled_grants_free_their_slot() -> None:
    async def run() -> TurnGate:
        gate = TurnGate(1)
        a, b, c = gate.turn(), gate.turn(), gate.turn()
        await gate.acquire(a)
        waiting_b = asyncio.create_task(gate.acquire(b))
        waiting_c = asyncio.create_task(gate.acquire(c))
        await asyncio.sleep(0)
        waiting_b.cancel()  # b leaves while waiting: c is next
        with contextlib.suppress(asyncio.CancelledError):
            await waiting_b
        gate.release(a)
        await asyncio.wait_for(waiting_c, 1)
        assert c in gate.running and gate.free == 0
        # granted, then cancelled before it ran: the slot comes back
        waiting_b = asyncio.create_task(gate.acquire(b))
        await asyncio.sleep(0)
        gate.release(c)
        assert b in gate.running  # granted; its task has not resumed yet
        waiting_b.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting_b
        return gate

    gate = asyncio.run(run())
    assert gate.free == 1 and not gate.running and not gate.waiting


@pytest.mark.parametrize("slots, lead, match", [(0, 2, "frame slots"), (2, 0, "lead")])
def test_gate_settings_are_checked(slots: int, lead: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TurnGate(slots, lead)
    with pytest.raises(RuntimeError, match="release without"):
        TurnGate(1).release(TurnGate(1).turn())
