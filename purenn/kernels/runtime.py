"""Process-wide settings for speed: thread counts, and the C allocator's treatment of big arrays.

A training step allocates and frees the same large activations every step. By default glibc
serves every allocation above 32 MB with a fresh ``mmap`` and returns it with ``munmap`` when
freed, so each step pays a page fault per 4 KB page of every large activation (measured: the
PlantVillage CNN train step at batch 32 spends about 14% of its time there). Keeping such blocks
in malloc's heap lets the next step reuse the same pages.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator

from purenn.kernels import parallel

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def retain_freed_memory() -> bool:
    """Ask glibc malloc to keep freed memory for reuse instead of returning it to the system.

    Sets ``M_MMAP_MAX`` to 0 (large blocks come from the heap, not per-allocation mmaps) and
    ``M_TRIM_THRESHOLD`` to 2 GB (freed heap space stays mapped). The process's resident memory
    then stays at its peak, which a training run reaches in its first step anyway.

    Returns:
        True if the settings were applied; False off Linux/glibc, where it does nothing.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def use_fast_path(threads: int | None = None) -> bool:
    """Set this process up for training speed exactly as ``purenn train`` does.

    Call it once at the top of a training script. It applies :func:`retain_freed_memory` (the
    process keeps its peak resident memory, and other libraries in the process share the
    setting, so purenn does not do it on import) and, if ``threads`` is given, limits BLAS and
    purenn's batch-parallel work to that many threads (by default both use every core, as in
    ``purenn train`` without ``--threads``).

    Returns:
        Whether the allocator setting was applied (False off Linux/glibc).
    """
    retained = retain_freed_memory()
    if threads is not None:
        # Imported here, so that `import purenn` needs only NumPy and Pillow.
        from threadpoolctl import threadpool_limits

        parallel.set_num_threads(threads)  # checks the value first
        threadpool_limits(parallel.num_threads())
    return retained


@contextlib.contextmanager
def _thread_counts(threads: int | None, blas: int, user_api: str | None) -> Iterator[None]:
    """purenn's own work on ``threads`` threads (None: every core) and the ``user_api``
    thread pools (None: BLAS and OpenMP) limited to ``blas``, both restored afterwards."""
    # Imported here, so that `import purenn` needs only NumPy and Pillow.
    from threadpoolctl import threadpool_limits

    previous = parallel.num_threads()
    parallel.set_num_threads(threads)
    try:
        with threadpool_limits(blas, user_api=user_api):
            yield
    finally:
        parallel.set_num_threads(previous)


@contextlib.contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """Within the block, BLAS and purenn's own batch-parallel work use ``threads`` threads.

    None leaves both at their defaults (all available cores).
    """
    if threads is None:
        yield
        return
    with _thread_counts(threads, threads, None):
        yield


@contextlib.contextmanager
def serving_threads(threads: int | None) -> Iterator[None]:
    """Within the block, purenn's own work uses ``threads`` threads (None: every core) and BLAS
    one, set from the calling (main) thread: for a process whose forward passes run on another
    thread, as the server's batcher does.

    The eval-mode plan splits its products over purenn's threads and asks BLAS for one thread
    (:func:`purenn.kernels.parallel.single_threaded_blas`). OpenBLAS 0.3.31 ignores a thread
    count set from a thread other than the main one once the main thread has set one, so from
    the batcher's thread BLAS kept its threads and oversubscribed the cores: plantvillage-cnn at
    batch 32 took 312-393 ms from a second thread against 195 ms from the main one, and 194 ms
    from a second thread once the main thread had set BLAS to one thread.
    """
    with _thread_counts(threads, 1, "blas"):
        yield


def peak_memory_mb() -> float | None:
    """This process's peak resident memory so far, in MB (2**20 bytes); None if unknown.

    Linux's ``VmHWM`` from ``/proc/self/status`` (the high-water mark of the resident set),
    else ``getrusage``'s ``ru_maxrss`` (kilobytes on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
