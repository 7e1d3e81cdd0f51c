"""The bench harness: spreads, the result JSON every bench writes, and the generated docs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import make_docs
from bench.harness import Run, interleaved_ms, spread


def test_spread_percentiles_and_empty() -> None:
    s = spread([float(i) for i in range(1, 101)] + [float("nan")])
    assert s["n"] == 100 and s["median"] == pytest.approx(50.5) and s["min"] == 1.0 and s["max"] == 100.0
    assert s["p5"] == pytest.approx(5.95) and s["p95"] == pytest.approx(95.05)
    empty = spread([])
    assert empty["n"] == 0 and math.isnan(empty["median"])


def test_interleaved_calls_take_turns_after_warmup() -> None:
    calls: list[str] = []
    times = interleaved_ms({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert [len(v) for v in times.values()] == [3, 3] and min(times["a"]) >= 0


def test_run_writes_result_with_context(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = Run("bench_x", {"mode": "short", "repeats": 3}, notes=["a note"])
    run.add({"model": "m"}, {"encode_ms": spread([1.0, 2.0, 3.0]), "encode_x_ref": 0.5})
    path = run.write(tmp_path / "r.json")
    assert str(path) in capsys.readouterr().out
    res = json.loads(path.read_text())
    assert res["bench"] == "bench_x" and res["config"]["mode"] == "short" and res["notes"] == ["a note"]
    assert {"commit", "dirty", "date", "libraries", "load"} <= set(res)
    assert res["host"]["cores"] >= 1 and res["host"]["id"].endswith(f"{res['host']['cores']}c")
    assert "numpy" in res["libraries"] and isinstance(res["load"]["under_load"], bool)
    assert res["rows"] == [{"labels": {"model": "m"}, "figures": {"encode_ms": spread([1.0, 2.0, 3.0]),
                                                                 "encode_x_ref": 0.5}}]


def _result(date: str, host: str, median: float) -> dict:
    return {"schema": 1, "bench": "bench_lift", "date": date, "commit": "abc", "dirty": False,
            "host": {"id": host, "cpu": "CPU " + host, "cores": 2, "simd": ["avx2"]}, "libraries": {},
            "config": {"mode": "short"}, "load": {"start": 9.0, "end": 8.0, "under_load": True}, "notes": [],
            "rows": [{"labels": {"case": "box"}, "figures": {"lift_ms": spread([median, median + 1, median + 2])}}]}


def test_docs_one_table_per_host_newest_run_wins(tmp_path: Path) -> None:
    for name, res in {"a1": _result("2026-01-01T00:00:00+00:00", "h1", 10.0),
                      "a2": _result("2026-01-02T00:00:00+00:00", "h1", 20.0),
                      "b": _result("2026-01-01T00:00:00+00:00", "h2", 30.0)}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(res))
    results = make_docs.load_results(tmp_path)
    docs = make_docs.render_docs(results)
    assert docs.count("## Host `") == 2 and "| box | 21 (20.1-21.9, 3) |" in docs and "| box | 11 " not in docs
    assert "**under load**" in docs and "commit `abc`" in docs
    readme = make_docs.update_readme("intro\n<!-- bench:begin -->\nold\n<!-- bench:end -->\nrest\n",
                                     make_docs.render_readme_table(results))
    assert readme.startswith("intro\n<!-- bench:begin -->") and readme.endswith("<!-- bench:end -->\nrest\n")
    assert "| lift, box | 21 ms |" in readme and "old" not in readme
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json is not a bench result"):
        make_docs.load_results(tmp_path)


def _stream_result(date: str, tables: dict[str, float]) -> dict:
    res = _result(date, "h1", 1.0)
    res["bench"] = "bench_stream"
    res["rows"] = [{"labels": {"table": t, "sequence": "s", "config": "torch, async k5"},
                    "figures": {"mean_j": j, "fps": 2.0, "embedding_age_mean": 3.0, "embedding_age_max": 5}}
                   for t, j in tables.items()]
    return res


def test_docs_table_run_alone_replaces_only_its_rows(tmp_path: Path) -> None:
    """A bench_stream section run alone (the starts) refreshes its rows; the other tables stay."""
    (tmp_path / "full.json").write_text(json.dumps(
        _stream_result("2026-01-01T00:00:00+00:00", {"davis": 0.111, "starts": 0.222, "throughput": 0.333})))
    (tmp_path / "starts.json").write_text(json.dumps(_stream_result("2026-01-02T00:00:00+00:00", {"starts": 0.444})))
    results = make_docs.load_results(tmp_path)
    docs = make_docs.render_docs(results)
    assert "0.111" in docs and "0.333" in docs and "0.444" in docs and "0.222" not in docs
    assert docs.count("### bench_stream") == 1 and "Tables starts: 2026-01-02" in docs
    assert "mean J 0.333" in make_docs.render_readme_table(results)  # the throughput row of the full run
