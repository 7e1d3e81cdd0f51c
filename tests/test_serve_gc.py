"""``arsel serve`` freezes what it loaded before it serves (``session.freeze_loaded_objects``): a full
garbage collection during streaming walks only the sessions' own objects, not torch's modules and
the model, so it no longer holds the GIL long enough to stall every session's frames."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_arsel_serve_freezes_the_loaded_objects_before_it_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fastapi")
    import uvicorn

    from engine.serve.engines import LocalEngines

    loaded = SimpleNamespace(model="lite_medsam", backend_name="onnxruntime")
    monkeypatch.setattr(LocalEngines, "load", classmethod(lambda cls, *a, **k: loaded))
    frozen_at_run: list[int] = []

    def run(self: Any, sockets: list[Any]) -> None:
        frozen_at_run.append(gc.get_freeze_count())
        for sock in sockets:
            sock.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    assert gc.get_freeze_count() == 0
    try:
        assert main(["serve", "--port", "0"]) == 0
    finally:
        gc.unfreeze()  # the rest of the test session collects as before
    assert frozen_at_run and frozen_at_run[0] > 10_000, frozen_at_run  # torch alone is far more


def test_a_full_collection_after_the_freeze_walks_only_new_objects() -> None:
    """In a fresh process with torch and the engine imported, a full collection takes a quarter of
    its time before the freeze, or less (it walks the objects made since)."""
    code = """
import gc, json, time
import torch, numpy, cv2  # noqa: F401
import engine.serve.app, engine.stream.engine  # noqa: F401
from engine.serve.session import freeze_loaded_objects

def full_ms():
    runs = []
    for _ in range(5):
        t0 = time.perf_counter(); gc.collect(); runs.append((time.perf_counter() - t0) * 1e3)
    return sorted(runs)[2]

before = full_ms()
freeze_loaded_objects()
junk = [{"i": i} for i in range(1000)]  # a session's worth of new objects
print(json.dumps({"before": before, "after": full_ms(), "frozen": gc.get_freeze_count()}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         check=True)
    ms = json.loads(out.stdout.strip().splitlines()[-1])
    assert ms["frozen"] > 10_000, ms
    assert ms["after"] < 0.25 * ms["before"], ms
