"""docs/cli.md documents exactly the verbs and flags of ``arsel``'s parser.

Each verb has a section headed ``## `arsel VERB` `` (nested verbs: ``## `arsel calibrate gaze` ``,
the top level: ``## `arsel` ``). A section must name every flag of its parser, and every ``--flag``
written in it must be one of its parser's flags. The failure message lists what is missing where,
so that the reference can be brought up to date from it.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

from engine.cli import build_parser

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
HEADING = re.compile(r"^## `(arsel(?: [a-z][\w-]*)*)`", re.MULTILINE)
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
ALWAYS = {"--help"}  # argparse adds it to every parser; documenting it is optional


def walk(parser: argparse.ArgumentParser, path: str = "arsel") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Yield ``("arsel VERB [SUBVERB]", parser)`` for the parser and every nested subparser."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")


def parser_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for a in parser._actions for opt in a.option_strings if opt.startswith("--")}


def doc_sections(text: str) -> dict[str, str]:
    """Map each ``## `arsel ...` `` heading to its text, up to the next ``## `` heading."""
    starts = [(m.group(1), m.start()) for m in HEADING.finditer(text)]
    ends = [m.start() for m in re.finditer(r"^## ", text, re.MULTILINE)] + [len(text)]
    sections: dict[str, str] = {}
    for verb, start in starts:
        sections[verb] = text[start:min(e for e in ends if e > start)]
    return sections


def mismatches(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """One line per problem: a verb without a section, a section without a verb, flags missing or extra."""
    sections = doc_sections(text)
    verbs = dict(walk(parser))
    problems = [f"missing section '## `{v}`' (flags: {', '.join(sorted(parser_flags(p) - ALWAYS)) or 'none'})"
                for v, p in verbs.items() if v not in sections]
    problems += [f"section '## `{v}`' documents a verb the parser does not have" for v in sections if v not in verbs]
    for verb, section in sections.items():
        if verb not in verbs:
            continue
        have = parser_flags(verbs[verb])
        written = set(FLAG.findall(section))
        if missing := sorted(have - written - ALWAYS):
            problems.append(f"'## `{verb}`' lacks: {', '.join(missing)}")
        if extra := sorted(written - have - ALWAYS):
            problems.append(f"'## `{verb}`' documents flags the parser does not have: {', '.join(extra)}")
    return problems


def test_docs_cli_matches_the_parser() -> None:
    problems = mismatches(build_parser(), DOC.read_text())
    assert not problems, "docs/cli.md is out of date with `arsel --help`:\n" + "\n".join(problems)


def _toy_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="arsel")
    parser.add_argument("--debug", action="store_true")
    sub = parser.add_subparsers()
    run = sub.add_parser("run")
    run.add_argument("--fast", action="store_true")
    run.add_argument("--out-dir")
    group = sub.add_parser("calibrate").add_subparsers()
    group.add_parser("gaze").add_argument("--seed")
    return parser


def test_the_check_names_what_is_missing_and_what_is_extra() -> None:
    good = ("## `arsel`\n`--debug`\n## `arsel run`\n`--fast`, `--out-dir`\n"
            "## `arsel calibrate`\n## `arsel calibrate gaze`\n`--seed N`\n")
    assert mismatches(_toy_parser(), good) == []
    bad = ("## `arsel`\n`--debug`\n## `arsel run`\n`--fast`, `--slow`\n"
           "## `arsel calibrate`\n## `arsel stop`\n")
    assert mismatches(_toy_parser(), bad) == [
        "missing section '## `arsel calibrate gaze`' (flags: --seed)",
        "section '## `arsel stop`' documents a verb the parser does not have",
        "'## `arsel run`' lacks: --out-dir",
        "'## `arsel run`' documents flags the parser does not have: --slow",
    ]


def test_a_flag_of_another_verb_does_not_count() -> None:
    text = "## `arsel`\n`--debug`\n## `arsel run`\n`--fast`\n## `arsel calibrate`\n`--out-dir`\n" \
           "## `arsel calibrate gaze`\n`--seed`\n"
    assert mismatches(_toy_parser(), text) == [
        "'## `arsel run`' lacks: --out-dir",
        "'## `arsel calibrate`' documents flags the parser does not have: --out-dir",
    ]
