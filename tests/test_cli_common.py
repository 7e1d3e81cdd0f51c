"""The CLI's shared leaf: parsing errors, the error-to-exit-code wrapper, one set of backend choices."""

from __future__ import annotations

import argparse

import pytest

from engine.backends.factory import BACKENDS
from engine.cli_common import UsageError, parse_box, parse_floats, parse_points, run_verb


@pytest.mark.parametrize(("text", "n", "match"), [
    ("1,x", (2,), "must be comma-separated numbers"),
    ("1,2,3", (2,), "must have 2 values"),
    ("1", (2, 3), "must have 2 or 3 values"),
])
def test_parse_floats_names_the_flag_and_the_problem(text: str, n: tuple, match: str) -> None:
    with pytest.raises(UsageError, match=f"--flag {text!r} {match}"):
        parse_floats(text, n, "--flag")


def test_prompt_parsers() -> None:
    pts, labels = parse_points(["1,2", "3,4,0"])
    assert pts.tolist() == [[1, 2], [3, 4]] and labels.tolist() == [1, 0]
    assert parse_points(None) == (None, None) and parse_box(None) is None
    with pytest.raises(UsageError, match="LABEL must be 1"):
        parse_points(["1,2,5"])


@pytest.mark.parametrize("exc", [UsageError("bad flag"), FileNotFoundError("bad flag"), RuntimeError("bad flag"),
                                 ImportError("bad flag"), PermissionError("bad flag")])
def test_run_verb_turns_user_errors_into_one_line_and_exit_2(exc: Exception, capsys: pytest.CaptureFixture) -> None:
    def fail(_args: argparse.Namespace) -> int:
        raise exc

    assert run_verb(argparse.Namespace(func=fail, command="segment")) == 2
    assert capsys.readouterr().err == "arsel segment: error: bad flag\n"


def test_run_verb_turns_programming_errors_into_one_line_unless_debug(capsys: pytest.CaptureFixture) -> None:
    def bug(_args: argparse.Namespace) -> int:
        raise TypeError("a bug, not bad input")

    assert run_verb(argparse.Namespace(func=bug, command="x"), "x") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: TypeError: a bug" in err and "--debug" in err
    assert "Traceback" not in err
    with pytest.raises(TypeError):  # --debug: the traceback shows
        run_verb(argparse.Namespace(func=bug, command="x", debug=True), "x")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every (nested) verb parser by its prog, e.g. ``arsel calibrate gaze``."""
    found = {}
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                found[sub.prog] = sub
                found.update(_subparsers(sub))
    return found


def test_every_backend_flag_offers_the_factory_backends() -> None:
    from engine.cli import build_parser

    verbs = _subparsers(build_parser())
    with_backend = {prog: a.choices for prog, p in verbs.items() for a in p._actions  # noqa: SLF001
                    if "--backend" in a.option_strings}
    assert set(with_backend) == {"arsel segment", "arsel everything", "arsel track", "arsel lift", "arsel demo",
                                "arsel serve"}
    assert all(tuple(c) == BACKENDS for c in with_backend.values()), with_backend


def test_engine_cli_keeps_the_old_names() -> None:
    import engine.cli as cli
    import engine.cli_common as common

    assert cli.UsageError is common.UsageError and cli.parse_box is common.parse_box
    assert cli._floats is common.parse_floats and cli._predictor is common.build_predictor  # noqa: SLF001
    assert cli._add_model_args is common.add_model_args  # noqa: SLF001
