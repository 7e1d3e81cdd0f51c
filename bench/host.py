"""One line describing the CPU a benchmark ran on, printed with every bench table.

Shared machines differ between runs (an AVX2 EPYC one day, an AVX-512/AMX Xeon the next: the
LiteMedSAM encoder took 1.4 s on one and 0.56 s on the other), so figures are only comparable
with the host they were measured on.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

SIMD_FLAGS = ("amx_bf16", "avx512_vnni", "avx512f", "avx2")  # best first


def describe_host() -> str:
    """``"<CPU model>, <N> cores usable, <best SIMD flag>, load avg <1 min>"`` (Linux ``/proc/cpuinfo``;
    elsewhere the platform's processor string)."""
    model, flags = platform.processor() or "unknown CPU", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
            if model != "unknown CPU" and flags:
                break
    simd = next((f for f in SIMD_FLAGS if f in flags), "no AVX2")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f", load avg {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return f"{model}, {cores} cores usable, {simd}{load}"
