"""A small thread pool for the memory-bound array work that BLAS does not parallelise.

Matrix products already use every core through BLAS, but copies and element-wise passes
(im2col, col2im, pooling, ReLU, bias) run on one core in NumPy, and they are about half of a
convolutional training step. NumPy releases the GIL inside those loops, so splitting a batch
into row ranges, one per thread, runs them on all cores. Every use writes disjoint rows with
element-wise or copy operations only, so results are bit-identical whatever the thread count.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from purenn.checks import check_int

#: Below this many bytes of work, a thread handoff costs more than it saves.
MIN_PARALLEL_BYTES = 1 << 20

_threads: int | None = None
_pool: ThreadPoolExecutor | None = None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform tells)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def num_threads() -> int:
    """Threads used by :func:`over_batch` (default: the available cores)."""
    return _threads or available_cores()


def set_num_threads(threads: int | None) -> None:
    """Use ``threads`` threads for batch-parallel array work; None restores the default."""
    global _threads, _pool
    if threads is not None:
        threads = check_int(threads, "threads")
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None
    _threads = threads


def over_batch(n: int, work: Callable[[slice], object], nbytes: int) -> None:
    """Run ``work(rows)`` over row ranges that split ``range(n)``, one per thread.

    Args:
        n: number of rows (the batch size).
        work: called with a ``slice`` of rows; must only write those rows of its outputs.
        nbytes: rough size of the data touched, to run small jobs inline.
    """
    global _pool
    threads = min(num_threads(), n)
    if threads <= 1 or nbytes < MIN_PARALLEL_BYTES:
        work(slice(0, n))
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=num_threads(), thread_name_prefix="purenn")
    bounds = [n * k // threads for k in range(threads + 1)]
    parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    futures = [_pool.submit(work, rows) for rows in parts[1:]]
    work(parts[0])  # the calling thread takes the first range itself
    for future in futures:
        future.result()
