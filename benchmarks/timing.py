"""The benchmarks' shared rules: median wall time after warm-up calls, and the machine header."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
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


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` prints it ("AMD EPYC"), platform.processor() without it."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    names = (line.split(":", 1)[1].strip() for line in lines.splitlines() if "Model name" in line)
    return next(names, platform.processor() or "unknown CPU")


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


#: The machine's pins of OpenBLAS's kernel; a user's machine with a current NumPy has none.
BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
#: Set in the environment of the child runs of :func:`under_both_blas_settings`.
_CHILD = "PURENN_BENCHMARK_BLAS_SETTING"


def under_both_blas_settings() -> bool:
    """Run this benchmark again as two child processes: as the environment is, then unset.

    The second child's environment lacks ``BLAS_VARIABLES`` (``env -u OPENBLAS_CORETYPE -u
    OPENBLAS_L2_SIZE``), so NumPy's OpenBLAS picks its kernel for the CPU, as on a user's
    machine. Returns True in the parent (which has then printed both runs and should stop),
    False in a child, which does the measuring.
    """
    if os.environ.get(_CHILD):
        return False
    settings = {
        "as the environment is": dict(os.environ),
        "with " + " and ".join(BLAS_VARIABLES) + " unset": {
            key: value for key, value in os.environ.items() if key not in BLAS_VARIABLES
        },
    }
    for label, env in settings.items():
        pinned = ", ".join(f"{k}={os.environ[k]}" for k in BLAS_VARIABLES if k in os.environ)
        print(f"## OpenBLAS {label} ({pinned or 'no variable set here'})", flush=True)
        subprocess.run([sys.executable, *sys.argv], env={**env, _CHILD: label}, check=True)
    return True
