"""CI: install the base package and each extra into fresh venvs; print set-up time and size of each.

Usage: python3 scripts/ci_extras.py [--work DIR] [--extras serve,ray,viz,gaze,trt] [--main-venv .venv
       --main-seconds S] [--json OUT.json]

1. ``base``: a fresh venv, a CPU build of torch (the PyTorch CPU index when reachable, else a
   ``torch-*+cpu`` wheel in pip's find-links folders), then ``pip install`` of arsel's wheel: what
   a laptop gets from ``pip install arsel``. It must hold no CUDA libraries.
2. Each extra: a fresh venv layered on ``base`` (a ``.pth`` line puts base's site-packages after
   its own), then ``pip install 'arsel[EXTRA]'``: pip installs only what the extra adds on top, so
   its size is the extra's cost. Checked: every distribution of the extra installed in range,
   every module ``engine.extras`` names for it imports, still no CUDA libraries, torch still CPU.
3. ``test``: the main venv that ``scripts/setup.sh`` made (``--main-venv``, timed by the caller).

``trt`` needs NVIDIA's package index (PyPI's tensorrt is a stub that downloads from it): where that
index is unreachable the extra is reported as skipped, with the reason. Standard library only.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_INDEX = os.environ.get("ARSEL_TORCH_INDEX_CPU", "https://download.pytorch.org/whl/cpu")
NVIDIA_INDEX = "https://pypi.nvidia.com"
PIP_ENV = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def run(cmd: list[str], what: str, timeout_s: float = 900) -> str:
    """Run ``cmd`` outside the source tree (so ``engine`` imports from the venv); on failure print
    its output's tail and exit 1 naming ``what``."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=PIP_ENV, timeout=timeout_s, check=False,
                          cwd="/")
    if proc.returncode != 0:
        sys.stderr.write((proc.stdout + proc.stderr)[-4000:])
        sys.exit(f"ci_extras: {what} failed (exit {proc.returncode}): {' '.join(cmd)}")
    return proc.stdout


def reachable(url: str, timeout_s: float = 5) -> bool:
    try:
        urllib.request.urlopen(url, timeout=timeout_s).close()
        return True
    except OSError:
        return False


def size_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                total += os.path.getsize(path)
    return total


def site_packages(venv: Path) -> Path:
    out = run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
              f"locating {venv}'s site-packages")
    return Path(out.strip())


def find_links_dirs() -> list[str]:
    """pip's find-links folders (``$PIP_FIND_LINKS`` and pip's config), existing ones only."""
    values = os.environ.get("PIP_FIND_LINKS", "").split()
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            values += value.strip("'\"").split()
    return [v for v in dict.fromkeys(values) if os.path.isdir(v)]


def cpu_torch() -> tuple[list[str] | None, str]:
    """pip arguments installing a CPU build of torch, and where it comes from (None: no CPU build here)."""
    if reachable(f"{CPU_INDEX}/torch/"):
        return ["torch", "--index-url", CPU_INDEX], f"the PyTorch CPU index {CPU_INDEX}"
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    wheels = sorted((w for d in find_links_dirs() for w in glob.glob(os.path.join(d, f"torch-*+cpu-{tag}-{tag}-*.whl"))),
                    key=lambda w: [int(n) for n in re.findall(r"\d+", os.path.basename(w).split("+")[0])])
    if wheels:
        return [wheels[-1]], f"the local CPU wheel {wheels[-1]} ({CPU_INDEX} unreachable)"
    return None, f"no CPU build reachable ({CPU_INDEX} unreachable, no torch-*+cpu wheel in pip's find-links)"


CHECK = r"""
import importlib.metadata as md, json, sys
from engine import extras
extra = sys.argv[1]
if extra in ("", "test"):  # base and the main venv: torch's own word on its build
    import torch
    torch_version, torch_cuda = torch.__version__, torch.version.cuda
else:  # an extra layered on base: the same torch distribution as base (checked by the caller)
    torch_version, torch_cuda = md.version("torch"), None
table, origin = extras.extra_requirements()
bad = [f"{r.name}{r.specifier} (installed: {extras.requirement_status(r)[0]})" for r in table.get(extra, [])
       if not extras.requirement_status(r)[1]]
if extra:
    for module in extras.EXTRAS[extra][1]:
        extras.require(extra, module)
cuda_dists = sorted({d.metadata["Name"] for d in md.distributions()
                     if (d.metadata["Name"] or "").lower().startswith(("nvidia-", "nvidia_")) or d.metadata["Name"] == "triton"})
print(json.dumps({"torch": torch_version, "torch_cuda": torch_cuda, "unmet": bad,
                  "cuda_dists": cuda_dists, "requirements_from": origin}))
"""


def check(venv: Path, extra: str) -> dict:
    """Import-check ``extra`` in ``venv`` with the installed package; fail on unmet or CUDA libs."""
    out = run([str(venv / "bin" / "python"), "-c", CHECK, extra], f"import check of {extra or 'base'}")
    facts = json.loads(out.strip().splitlines()[-1])
    if facts["unmet"]:
        sys.exit(f"ci_extras: {extra or 'base'}: requirements not met: {', '.join(facts['unmet'])}")
    return facts


def check_main(venv: Path, seconds: float | None) -> dict:
    """The venv setup.sh made (the test extra): no CUDA libraries where its plan was a reachable CPU build."""
    facts = check(venv, "test")
    plan = dict(line.split("=", 1) for line in run(["bash", str(REPO / "scripts" / "setup.sh"), "--print-plan"],
                                                   "setup.sh --print-plan").splitlines())
    if plan["build"] == "cpu" and plan.get("reachable") == "yes" and (facts["torch_cuda"] or facts["cuda_dists"]):
        sys.exit(f"ci_extras: {venv} holds CUDA libraries ({', '.join(facts['cuda_dists'])}) although its plan "
                 f"was the CPU build from {plan['index']}, which is reachable")
    note = f"plan {plan['build']} from {plan['index']}" + (", unreachable" if plan.get("reachable") == "no" else "")
    return {"name": "test (setup.sh)", "seconds": seconds, "bytes": size_bytes(venv), "torch": facts["torch"],
            "torch_from": note, "cuda_dists": facts["cuda_dists"]}


def new_venv(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    run([sys.executable, "-m", "venv", str(path)], f"creating {path}")
    return path / "bin" / "python"


def build_base(work: Path) -> tuple[dict, Path, bool]:
    """The base venv; its record, arsel's wheel, and whether its torch had to be a CPU build."""
    t0 = time.perf_counter()
    py = new_venv(work / "base")
    torch_args, torch_from = cpu_torch()
    pip = [str(py), "-m", "pip", "install", "-q", "--no-compile"]
    run(pip + (torch_args or ["torch"]), "installing torch into base")
    run([str(py), "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(work / "wheels")], "building arsel's wheel")
    wheel = next((work / "wheels").glob("arsel-*.whl"))
    run(pip + [str(wheel)], "installing arsel (base)")
    seconds = time.perf_counter() - t0
    facts = check(work / "base", "")
    cpu_only = torch_args is not None
    if cpu_only and (facts["torch_cuda"] or facts["cuda_dists"]):
        sys.exit(f"ci_extras: base holds CUDA libraries although a CPU build was reachable: "
                 f"torch {facts['torch']}, {', '.join(facts['cuda_dists'])}")
    return {"name": "base", "seconds": round(seconds, 1), "bytes": size_bytes(work / "base"),
            "torch": facts["torch"], "torch_from": torch_from, "cuda_dists": facts["cuda_dists"]}, wheel, cpu_only


def install_extra(work: Path, base_site: Path, wheel: Path, extra: str, empty_bytes: int, cpu_only: bool,
                  base_torch: str) -> dict:
    """A fresh venv layered on base, with ``arsel[extra]`` installed; its record."""
    if extra == "trt" and not reachable(f"{NVIDIA_INDEX}/tensorrt/"):
        return {"name": extra, "skipped": f"tensorrt's wheels come from {NVIDIA_INDEX}, unreachable here "
                                          "(PyPI's tensorrt is a stub that downloads from it); needs an NVIDIA GPU"}
    t0 = time.perf_counter()
    py = new_venv(work / extra)
    (site_packages(work / extra) / "_arsel_base.pth").write_text(f"{base_site}\n")
    run([str(py), "-m", "pip", "install", "-q", "--no-compile", f"{wheel}[{extra}]"], f"installing arsel[{extra}]")
    seconds = time.perf_counter() - t0
    facts = check(work / extra, extra)
    own = site_packages(work / extra)
    own_cuda = sorted(p.name for p in own.glob("nvidia*")) + sorted(p.name for p in own.glob("triton"))
    if cpu_only and (own_cuda or facts["torch"] != base_torch):
        sys.exit(f"ci_extras: arsel[{extra}] pulled CUDA libraries on a CPU machine: {own_cuda or facts['torch']}")
    return {"name": extra, "seconds": round(seconds, 1), "bytes": size_bytes(work / extra) - empty_bytes,
            "torch": facts["torch"]}


def default_work_dir() -> str:
    """A tmpfs when one has room (deleting ~4 GB of venvs on a disk mounted with ``discard`` takes
    minutes; on tmpfs it is instant), else the temp folder."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 8e9:
        return str(shm / "arsel-ci-extras")
    return str(Path(os.environ.get("TMPDIR", "/tmp")) / "arsel-ci-extras")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=os.environ.get("ARSEL_CI_EXTRAS_DIR", default_work_dir()))
    ap.add_argument("--extras", default="serve,ray,viz,gaze,trt")
    ap.add_argument("--main-venv", help="the venv scripts/setup.sh made (reported as the test extra)")
    ap.add_argument("--main-seconds", type=float, help="how long scripts/setup.sh took")
    ap.add_argument("--json", help="write the records here")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        records = []
        if args.main_venv:
            records.append(check_main(Path(args.main_venv).resolve(), args.main_seconds))
        base, wheel, cpu_only = build_base(work)
        records.append(base)
        new_venv(work / "empty")
        empty = size_bytes(work / "empty")
        base_site = site_packages(work / "base")
        for extra in [e for e in args.extras.split(",") if e]:
            records.append(install_extra(work, base_site, wheel, extra, empty, cpu_only, base["torch"]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'venv':<16}{'set-up s':>9}{'size MB':>10}  torch / note")
    for r in records:
        if "skipped" in r:
            print(f"{r['name']:<16}{'-':>9}{'-':>10}  skipped: {r['skipped']}")
            continue
        secs = f"{r['seconds']:.0f}" if r.get("seconds") is not None else "?"
        note = r["torch"] + (f" from {r['torch_from']}" if "torch_from" in r else "")
        if r.get("cuda_dists"):
            note += f"; CUDA libraries: {len(r['cuda_dists'])} distributions"
        print(f"{r['name']:<16}{secs:>9}{r['bytes'] / 1e6:>10.0f}  {note}")
    print(f"(pip install --no-compile into {work}; extras: fresh venvs layered on base, size and time are what "
          "the extra adds)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
