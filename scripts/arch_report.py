"""Architecture figures of a checkout: modules and lines per layer, import cycles, the largest
files, and the places that repeat six or more lines.

Usage: ``python scripts/arch_report.py [ROOT] [--most N]`` (ROOT defaults to this checkout; it may
be another commit's worktree, read with this checkout's graph code). The layers and the cycle search
are ``tests/import_graph.py``'s; repeats come from the ``duplicates`` command when it is on PATH,
else from a hash of every six-line window (blank lines, comments and imports left out).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("engine", "trt", "calibration", "bench", "demos", "tests", "scripts")
WINDOW = 6


def _graph_module():
    spec = importlib.util.spec_from_file_location("_arch_import_graph", HERE / "tests" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


def python_files(root: Path) -> list[Path]:
    return [p for d in SOURCE_DIRS if (root / d).is_dir() for p in sorted((root / d).rglob("*.py"))
            if ".venv" not in p.parts]


def largest(root: Path, most: int) -> list[str]:
    sizes = sorted(((len(p.read_text(encoding="utf-8").splitlines()), p) for p in python_files(root)),
                   key=lambda t: (-t[0], str(t[1])))
    return [f"  {n:>5}  {p.relative_to(root)}" for n, p in sizes[:most]]


def _code_lines(path: Path) -> list[tuple[int, str]]:
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = " ".join(line.split())
        if not text or text.startswith("#") or text.startswith(("import ", "from ")) or len(text) <= 2:
            continue
        out.append((number, text))
    return out


def window_repeats(root: Path) -> list[str]:
    """Places where the same six code lines (to the letter, white space folded) stand twice or more."""
    seen: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    for path in python_files(root):
        lines = _code_lines(path)
        for i in range(len(lines) - WINDOW + 1):
            chunk = lines[i: i + WINDOW]
            key = hashlib.sha1("\n".join(t for _, t in chunk).encode()).hexdigest()
            seen[key].append((str(path.relative_to(root)), chunk[0][0], chunk[-1][0]))
    spans: dict[tuple[str, ...], dict[str, list[int]]] = {}  # one row per set of files sharing windows
    for places in seen.values():
        if len(places) > 1:
            files = tuple(sorted({p[0] for p in places}))
            row = spans.setdefault(files, {})
            for name, start, end in places:  # the row spans every shared window of each file
                lo_hi = row.setdefault(name, [start, end])
                lo_hi[0], lo_hi[1] = min(lo_hi[0], start), max(lo_hi[1], end)
    return [f"  {len(row)} files: " + ", ".join(f"{f}:{a}-{b}" for f, (a, b) in sorted(row.items())[:4])
            for row in spans.values()]


def repeats(root: Path, most: int) -> list[str]:
    tool = shutil.which("duplicates")
    if tool:
        done = subprocess.run([tool, "--repo", str(root), "--most", str(most), "--seconds", "120"],
                              capture_output=True, text=True, check=False)
        return ["  (duplicates --min-lines 6)"] + ["  " + line for line in done.stdout.splitlines()]
    rows = window_repeats(root)
    return [f"  (six-line windows) {len(rows)} groups"] + rows[:most]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=HERE)
    parser.add_argument("--most", type=int, default=10, help="rows of the largest files and repeats")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if not (root / "engine").is_dir():
        parser.error(f"{root} has no engine/ folder: give the root of an arsel checkout")
    graph = _graph_module()
    print(f"== {root}")
    print(graph.report(root))
    print(f"largest files (lines), of {len(python_files(root))} .py files in {', '.join(SOURCE_DIRS)}:")
    print("\n".join(largest(root, args.most)))
    print("places repeating >= 6 lines:")
    print("\n".join(repeats(root, args.most)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
