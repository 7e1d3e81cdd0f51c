"""The README stays a front door: short, and its test command is the one CI runs."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 120


def test_readme_is_short() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= MAX_LINES, (f"README.md has {len(lines)} lines (at most {MAX_LINES}): move detail "
                                     "into docs/ (cli.md, install.md, architecture.md, ...) and link it")


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    command = ci[ci.index("# The README's test command:") + 1].strip()
    readme_commands = [line.split("#")[0].strip() for line in (REPO / "README.md").read_text().splitlines()]
    assert command in readme_commands, f"the README's quick start lacks CI's test command {command!r}"
