"""``--debug`` anywhere on the command line: an unexpected exception prints one line without it and
its traceback with it, exit status 1 either way (a real ``arsel`` process); a usage error's
traceback shows the same way."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli_common import parse_with_debug
from tests.bad_input_kit import leftovers, run_cli

REPO = Path(__file__).resolve().parents[1]
# `arsel models` with a registry that raises an exception no verb expects (a bug), in a fresh process
CRASHING = """
import sys
import engine.models.registry as registry
class Boom(dict):
    def values(self):
        raise KeyError("boom")
registry.REGISTRY = Boom()
from engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _toy() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arsel")
    parser.add_argument("--debug", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("items", nargs="*")
    run.add_argument("--out")
    return parser


@pytest.mark.parametrize("argv,debug,items", [
    (["run", "a"], False, ["a"]),
    (["--debug", "run", "a"], True, ["a"]),
    (["run", "a", "--debug"], True, ["a"]),
    (["run", "--debug", "a", "--out", "x"], True, ["a"]),
    (["run", "a", "--", "--debug"], False, ["a", "--debug"]),  # after `--` it is an operand
])
def test_parse_with_debug(argv: list[str], debug: bool, items: list[str]) -> None:
    args = parse_with_debug(_toy(), argv)
    assert args.debug is debug and args.items == items


@pytest.fixture(scope="module")
def crashes() -> dict[str, subprocess.CompletedProcess[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = {}
    for name, argv in (("plain", ["models"]), ("before", ["--debug", "models"]), ("after", ["models", "--debug"])):
        runs[name] = subprocess.run([sys.executable, "-c", CRASHING, *argv], capture_output=True, text=True,
                                    cwd=REPO, env=env, timeout=300)
    return runs


def test_unexpected_error_without_debug_is_one_line(crashes: dict[str, subprocess.CompletedProcess[str]]) -> None:
    res = crashes["plain"]
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error: KeyError" in lines[0] and "--debug" in lines[0]


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_anywhere_shows_the_traceback(crashes: dict[str, subprocess.CompletedProcess[str]], where: str) -> None:
    res = crashes[where]
    assert res.returncode == 1, res.stderr
    assert "Traceback (most recent call last)" in res.stderr and "KeyError: 'boom'" in res.stderr


def test_debug_after_the_verb_shows_a_usage_errors_traceback(tmp_path: Path) -> None:
    argv = ["segment", "sample:dog", "--out", str(tmp_path / "m.png"), "--box", "1,1,9,9"]
    plain = run_cli(argv)
    assert plain.code == 2 and "Traceback" not in plain.text and "unknown sample" in plain.text
    res = run_cli([*argv, "--debug"])
    assert res.code is None and "Traceback" in res.text and "unknown sample" in res.text
    assert leftovers(tmp_path) == []
