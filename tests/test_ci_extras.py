"""scripts/ci_extras.py's choice of a CPU torch for the base venv (no install: the choice only)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.script_helpers import load_script

ci = load_script("scripts/ci_extras.py", "ci_extras_under_test")
TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"


@pytest.fixture
def links(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setattr(ci, "find_links_dirs", lambda: [str(tmp_path)])
    return tmp_path


def test_reachable_cpu_index_wins(monkeypatch: pytest.MonkeyPatch, links: Path) -> None:
    monkeypatch.setattr(ci, "reachable", lambda url, timeout_s=5: True)
    args, origin = ci.cpu_torch()
    assert args == ["torch", "--index-url", ci.CPU_INDEX] and origin == f"the PyTorch CPU index {ci.CPU_INDEX}"


def test_local_cpu_wheel_when_the_index_is_unreachable(monkeypatch: pytest.MonkeyPatch, links: Path) -> None:
    monkeypatch.setattr(ci, "reachable", lambda url, timeout_s=5: False)
    for name in (f"torch-2.14.1-{TAG}-{TAG}-manylinux_2_28_x86_64.whl",       # a CUDA build: never picked
                 f"torch-2.9.1+cpu-{TAG}-{TAG}-manylinux_2_28_x86_64.whl",          # older, though last by name
                 f"torch-2.13.0+cpu-{TAG}-{TAG}-manylinux_2_28_x86_64.whl",
                 "torch-2.13.0+cpu-cp39-cp39-manylinux_2_28_x86_64.whl"):      # another Python
        (links / name).write_bytes(b"")
    args, origin = ci.cpu_torch()
    assert args == [str(links / f"torch-2.13.0+cpu-{TAG}-{TAG}-manylinux_2_28_x86_64.whl")]
    assert origin.startswith("the local CPU wheel") and "unreachable" in origin


def test_no_cpu_build_anywhere(monkeypatch: pytest.MonkeyPatch, links: Path) -> None:
    monkeypatch.setattr(ci, "reachable", lambda url, timeout_s=5: False)
    (links / f"torch-2.14.1-{TAG}-{TAG}-manylinux_2_28_x86_64.whl").write_bytes(b"")
    args, origin = ci.cpu_torch()
    assert args is None and origin.startswith("no CPU build reachable")


def test_size_counts_files_once_and_skips_links(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x" * 100)
    (tmp_path / "g").write_bytes(b"y" * 20)
    (tmp_path / "link").symlink_to(tmp_path / "a" / "f")
    assert ci.size_bytes(tmp_path) == 120
