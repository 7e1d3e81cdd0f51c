"""The committed docs/benchmarks.md and README table are what bench/make_docs.py makes of bench/results/."""

from __future__ import annotations

from bench import make_docs


def test_committed_docs_are_generated_from_committed_results() -> None:
    assert make_docs.main(["--check"]) == 0, "docs out of date: run python bench/make_docs.py"
