"""The benchmarks' shared rules: median wall time after warm-up calls, and the machine header."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    """Median of ``repeats`` timed calls of ``fn`` after ``warmup`` untimed ones, in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def alternating_medians(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int
) -> dict[str, float]:
    """Median seconds of each function, timed in turn (A, B, A, B, ...) so drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


#: SIMD levels, best first, and the /proc/cpuinfo flags that each needs.
SIMD_LEVELS = (
    ("AVX-512", ("avx512f", "avx512bw", "avx512vl")),
    ("AVX2+FMA", ("avx2", "fma")),
    ("AVX", ("avx",)),
    ("SSE4.2", ("sse4_2",)),
)


def cpu_model_and_flags() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags from /proc/cpuinfo (platform.processor elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU", set()
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in pairs}  # the last CPU's entries
    model = fields.get("model name", "unknown CPU")
    if "cpu family" in fields:  # virtual machines often hide the generation in the name
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return model, set(fields.get("flags", "").split())


def lscpu_model_line() -> str:
    """lscpu's ``Model name:`` line (the CPU model line the benchmarks print)."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
        return next(line for line in lines if line.startswith("Model name")).strip()
    except (OSError, StopIteration):
        return f"Model name: {platform.processor() or 'unknown'}"


def simd_level(flags: set[str]) -> str:
    """The widest SIMD level whose flags are all present, e.g. "AVX-512" or "AVX2+FMA"."""
    for name, needed in SIMD_LEVELS:
        if all(flag in flags for flag in needed):
            return name
    return "none detected"


def blas_line() -> str:
    """NumPy's BLAS library, version and kernel architecture, from threadpoolctl.

    (The threads each figure ran with are in that figure's own line.)
    """
    from threadpoolctl import threadpool_info

    parts = [
        f"{info.get('internal_api')} {info.get('version')} "
        f"({info.get('architecture', '?')} kernels)"
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]
    forced = os.environ.get("OPENBLAS_CORETYPE")
    note = f" [kernel forced by OPENBLAS_CORETYPE={forced}]" if forced else ""
    return (", ".join(parts) or "no BLAS found by threadpoolctl") + note


def machine_header() -> str:
    """One line for every benchmark's output: CPU model, cores, SIMD level, NumPy and BLAS."""
    model, flags = cpu_model_and_flags()
    return (
        f"# machine: {model}, {os.cpu_count()} CPUs, SIMD {simd_level(flags)}; "
        f"numpy {np.__version__}, BLAS {blas_line()}"
    )
