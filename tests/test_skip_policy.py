"""The CI skip policy (``tests/skip_policy.py``) on a planted test file, in a pytest subprocess:
with ARSEL_REQUIRE_DATA=1 every non-hardware skip fails; hardware skips, passes and xfails stay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PLANTED = '''
import pytest
np_missing = pytest.importorskip("numpy_not_installed_anywhere", reason="optional dependency missing")

def test_never_collected():
    pass
'''

PLANTED_TESTS = '''
import pytest

def test_passes():
    assert True

def test_data_skip():
    pytest.skip("shared data not found")

@pytest.mark.skipif(True, reason="reference package missing")
def test_skipif_dependency():
    pass

@pytest.mark.gpu
def test_gpu_skip():
    pytest.skip("no CUDA GPU visible to torch")

@pytest.mark.realsense
@pytest.mark.skipif(True, reason="no RealSense camera attached")
def test_camera_skipif():
    pass

def test_hardware_reason_prefix():
    pytest.skip("hardware: a RealSense camera is attached; the no-device path cannot be exercised")

@pytest.mark.xfail(reason="known", strict=True)
def test_xfail():
    assert False
'''


def _run(tmp_path: Path, require: str) -> tuple[int, dict[str, str], str]:
    """(exit code, {test id: outcome word of ``pytest -v``}, output) of the planted files."""
    (tmp_path / "test_planted.py").write_text(PLANTED_TESTS)
    (tmp_path / "test_planted_module.py").write_text(PLANTED)
    (tmp_path / "conftest.py").write_text("from tests.skip_policy import *  # noqa: F401,F403\n"
                                          "def pytest_configure(config):\n"
                                          "    config.addinivalue_line('markers', 'gpu: x')\n"
                                          "    config.addinivalue_line('markers', 'realsense: x')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "ARSEL_REQUIRE_DATA": require}
    out = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "no:dash",
                          "--continue-on-collection-errors", "."],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    text = out.stdout + out.stderr
    outcomes = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and "::" in parts[0] and parts[1] in ("PASSED", "FAILED", "SKIPPED", "XFAIL", "ERROR"):
            outcomes[parts[0].split("::")[1]] = parts[1]
    return out.returncode, outcomes, text


@pytest.mark.parametrize("require", ["1", "0"])
def test_skips_fail_in_ci_except_hardware(tmp_path: Path, require: str) -> None:
    code, outcomes, text = _run(tmp_path, require)
    ci = require == "1"
    assert outcomes == {
        "test_passes": "PASSED",
        "test_data_skip": "FAILED" if ci else "SKIPPED",
        "test_skipif_dependency": "ERROR" if ci else "SKIPPED",  # a skip at setup fails as an error
        "test_gpu_skip": "SKIPPED",
        "test_camera_skipif": "SKIPPED",
        "test_hardware_reason_prefix": "SKIPPED",
        "test_xfail": "XFAIL",
    }, text
    if ci:  # the module skipped at import fails its collection, and every refusal says why
        assert code == 1 and "ERROR test_planted_module.py" in text, text
        assert "this skip is a failure: 'shared data not found'" in text
        assert "this skip is a failure: 'optional dependency missing'" in text
    else:
        assert code == 0 and "ERROR" not in text and "6 skipped" in text, text
