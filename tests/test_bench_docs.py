"""The committed docs/benchmarks.md and README table are what bench/make_docs.py makes of bench/results/."""

from __future__ import annotations

from bench import make_docs


def test_committed_docs_are_generated_from_committed_results() -> None:
    assert make_docs.main(["--check"]) == 0, "docs out of date: run python bench/make_docs.py"


def test_serve_headline_spans_every_repeat_and_session() -> None:
    """The README's serving rows give the range over all repeats and sessions, one row per client
    count: a live run varies, so the first repeat alone would be a pick."""

    def row(repeat: int, clients: int, session: int, fps: float, p95: float) -> dict:
        return {"labels": {"repeat": repeat, "mode": "served", "clients": clients, "session": session},
                "figures": {"fps": fps, "latency_p95_ms": p95, "dropped": int(100 / fps), "embedding_age_p50": 70.0}}

    res = {"config": {"runtime": "onnxruntime"}, "rows": [
        {"labels": {"repeat": 0, "mode": "in-process step", "clients": 0, "session": "-"}, "figures": {"step_p50_ms": 15.0}},
        row(0, 1, 0, 23.6, 126.0), row(0, 4, 0, 7.2, 211.0), row(0, 4, 1, 6.4, 250.0),
        row(1, 1, 0, 11.7, 298.0), row(1, 4, 0, 4.4, 316.0), row(1, 4, 1, 5.9, 185.0)]}
    rows = make_docs._serve_headlines(res)
    assert [what for what, _, _ in rows] == ["arsel serve 640x480 at 30 fps, one client, onnxruntime (2 runs)",
                                             "arsel serve 640x480 at 30 fps, 4 clients, per session, onnxruntime (2 runs)"]
    assert rows[0][1] == "11.7-23.6 fps, p95 126-298 ms, 4-8 dropped, embeddings 70 frames old (median)"
    assert rows[1][1].startswith("4.4-7.2 fps, p95 185-316 ms, ")
