"""scripts/arch_report.py: the figures of the architecture report on a small tree with known answers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "arch_report.py"
BLOCK = "".join(f"    total_{i} = compute_{i}(value_{i})\n" for i in range(7))


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("_arch_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> Path:
    files = {
        "engine/__init__.py": "",
        "engine/a.py": "from engine import b\n\n\ndef f():\n" + BLOCK,
        "engine/b.py": "def g():\n    from engine.a import f\n" + BLOCK,
        "engine/stream/__init__.py": "",
        "engine/stream/big.py": "".join(f"x_{i} = {i}\n" for i in range(30)),
        "trt/__init__.py": "",
        "calibration/__init__.py": "",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_repeats_largest_and_cycles(report, tmp_path: Path, capsys: pytest.CaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path)
    rows = report.window_repeats(root)
    assert rows == ["  2 files: engine/a.py:5-11, engine/b.py:3-9"]
    assert report.largest(root, 2) == ["     30  engine/stream/big.py", "     11  engine/a.py"]
    monkeypatch.setattr(report.shutil, "which", lambda name: None)  # the line-window fallback
    assert report.main([str(root), "--most", "3"]) == 0
    out = capsys.readouterr().out
    assert "import cycles: 1 groups" in out and "engine.a, engine.b" in out
    assert "(six-line windows) 1 groups" in out


def test_a_root_without_engine_is_refused(report, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        report.main([str(tmp_path)])
    assert exc.value.code == 2 and "has no engine/ folder" in capsys.readouterr().err
