"""Paths never run on a GPU here say so: the README and the ``--help`` of the verbs and flags that
reach TensorRT, CUDA graphs, fp16/bf16 or INT8 calibration carry "not yet verified on a GPU"."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from engine.cli import build_parser

LABEL = "not yet verified on a GPU"


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize(("verb", "flags"), [
    ("segment", ["--backend"]),
    ("track", ["--backend"]),
    ("demo", ["--backend"]),
    ("build-engine", ["--fp16", "--int8"]),
])
def test_help_labels_gpu_paths(verb: str, flags: list[str]) -> None:
    p = _subparser(verb)
    helps = {opt: a.help or "" for a in p._actions for opt in a.option_strings}
    for flag in flags:
        assert LABEL in helps[flag], (verb, flag, helps[flag])


def test_build_engine_verb_and_readme_say_so() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    verb_help = next(c.help for c in sub._choices_actions if c.dest == "build-engine")
    assert LABEL in verb_help
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"**{LABEL[0].upper()}{LABEL[1:]}:**" in readme
