"""A small thread pool for the memory-bound array work that BLAS does not parallelise.

Matrix products already use every core through BLAS, but copies and element-wise passes
(im2col, col2im, pooling, ReLU, bias) run on one core in NumPy, and they are about half of a
convolutional training step. NumPy releases the GIL inside those loops, so splitting a batch
into row ranges, one per thread, runs them on all cores (:func:`over_batch`).

Convolutions go further (:func:`over_samples`): each thread takes whole samples, im2col, matrix
product and col2im one sample at a time with single-threaded BLAS, so a sample's column matrix
never leaves its core's cache. Every use writes disjoint rows, and a sample's products do not
depend on which thread runs them, so results are bit-identical whatever the thread count.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from purenn.checks import check_int

#: Below this many bytes of work, a thread handoff costs more than it saves.
MIN_PARALLEL_BYTES = 1 << 20
#: Below this many multiply-adds, :func:`matmul` runs in the calling thread.
MIN_PARALLEL_FLOPS = 1 << 20
#: :func:`over_samples` gives each thread at least this many samples.
MIN_SAMPLES_PER_THREAD = 2

_threads: int | None = None
_pool: ThreadPoolExecutor | None = None
_blas = None  # threadpoolctl's controller of the BLAS libraries, made on first use
_blas_lock = threading.Lock()
_blas_limit = None  # the active single-thread limit, while _blas_users > 0
_blas_users = 0


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
    threads = min(num_threads(), n)
    if threads <= 1 or nbytes < MIN_PARALLEL_BYTES:
        work(slice(0, n))
        return
    _run_parts(n, threads, lambda rows, slot: work(rows))


def sample_threads(n: int) -> int:
    """Threads :func:`over_samples` splits ``n`` samples over (1: the calling thread alone)."""
    return max(1, min(num_threads(), n // MIN_SAMPLES_PER_THREAD))


def over_samples(n: int, work: Callable[[slice, int], object]) -> None:
    """Run ``work(rows, slot)`` over per-thread sample ranges, each thread's BLAS single-threaded.

    For work that alternates small matrix products with memory passes on one sample at a time
    (a convolution's im2col, GEMM and col2im): each core keeps its own sample's temporaries in
    its cache, where BLAS threads would split every small product and stream whole-batch
    temporaries through memory. With fewer than ``2 * num_threads()`` samples the calling
    thread runs everything and BLAS keeps its threads (one image is still served by every core).

    Args:
        n: number of samples.
        work: called with a ``slice`` of samples and the thread's slot in
            ``range(sample_threads(n))``, to pick a per-thread buffer; must only write its own
            samples' rows and its own slot's buffers.
    """
    over_parts(n, sample_threads(n), work)


def over_parts(n: int, threads: int, work: Callable[[slice, int], object]) -> None:
    """Run ``work(rows, slot)`` over ``threads`` contiguous ranges of ``range(n)``.

    With more than one thread each runs BLAS single-threaded (see :func:`over_samples`); with
    one, the calling thread runs everything and BLAS keeps its threads.
    """
    threads = max(1, min(threads, n))
    if threads == 1:
        work(slice(0, n), 0)
        return
    with single_threaded_blas():
        _run_parts(n, threads, work)


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` for 2-D arrays; for a batch, split over purenn's threads with single-threaded BLAS.

    With at least 2 rows per thread (a batch), the output is cut into one block of rows (or of
    columns) per thread, along the larger operand, so that each thread reads its share of the
    large matrix (a Dense layer's weights) and all of the small one. Purenn's convolutions run
    BLAS single-threaded in their own threads (:func:`over_samples`); were the dense layers'
    products left to BLAS's threads, those would spin-wait for more work after every product
    (about 0.1 s with OpenBLAS) and take the cores from the convolutions that follow: 145
    instead of 94 ms for the preset CNN's batch-32 inference on 2 cores. With fewer rows (one
    image being served), BLAS's own threads do the product, as they do the convolutions'.

    Args:
        a: (M, K). b: (K, N), same dtype.
        out: optional (M, N) array to write into.

    Returns:
        (M, N), ``out`` if given.
    """
    m, n = a.shape[0], b.shape[1]
    if sample_threads(m) == 1 or a.shape[1] * m * n < MIN_PARALLEL_FLOPS:
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty((m, n), dtype=np.result_type(a, b))
    by_rows = a.size > b.size

    def block(part: slice, slot: int) -> None:
        if by_rows:
            np.matmul(a[part], b, out=out[part])
        else:
            np.matmul(a, b[:, part], out=out[:, part])

    over_samples(m if by_rows else n, block)
    return out


def _run_parts(n: int, threads: int, work: Callable[[slice, int], object]) -> None:
    """``work(rows, slot)`` for ``threads`` contiguous ranges of ``range(n)``, one per thread."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=num_threads(), thread_name_prefix="purenn")
    bounds = [n * k // threads for k in range(threads + 1)]
    parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    futures = [_pool.submit(work, rows, slot) for slot, rows in enumerate(parts[1:], start=1)]
    try:
        work(parts[0], 0)  # the calling thread takes the first range itself
    finally:
        wait(futures)  # no worker may outlive the call, even when the first range raised
    for future in futures:
        future.result()


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """NumPy's BLAS runs single-threaded within the block (about 6 us to enter and leave).

    Blocks may overlap across threads (two models run from two threads): the first to enter
    limits BLAS, the last to leave restores what the first found. OpenBLAS 0.3.31 was seen to
    ignore a thread count set from a thread other than the main one once the main thread had
    set one; BLAS then keeps its threads inside the block: slower, with the same results.
    """
    global _blas, _blas_limit, _blas_users
    with _blas_lock:
        if _blas_users == 0:
            if _blas is None:
                # Imported here, so that `import purenn` needs only NumPy and Pillow.
                from threadpoolctl import ThreadpoolController

                _blas = ThreadpoolController().select(user_api="blas")
            _blas_limit = _blas.limit(limits=1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limit.restore_original_limits()
                _blas_limit = None
