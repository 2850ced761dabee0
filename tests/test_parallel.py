"""Batch-parallel array work is exact: the same bits whatever the thread count."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import purenn as pn
from purenn.kernels import parallel


@pytest.fixture
def restore_threads(monkeypatch):
    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 0)  # split even these small arrays
    yield
    parallel.set_num_threads(None)


def run_model(threads: int, x: np.ndarray, dy: np.ndarray, algorithm: str = "im2col"):
    parallel.set_num_threads(threads)
    conv = pn.Conv2D(4, 8, 3, padding=1, rng=0, algorithm=algorithm)
    dense = pn.Dense(8 * 16 * 15, 5, rng=0)
    model = pn.Sequential(
        [conv, pn.BatchNorm2D(8), pn.ReLU(), pn.MaxPool2D(2), pn.ReLU(), pn.Flatten(), dense]
    )
    y = model.forward(x)
    dx = model.backward(dy)
    return y, dx, [grad.copy() for _, grad in model.parameters()]


@pytest.mark.usefixtures("restore_threads")
@pytest.mark.parametrize("algorithm", ["im2col", "winograd"])
def test_threads_do_not_change_a_single_bit(algorithm, monkeypatch):
    from purenn.kernels import normalization
    from purenn.kernels import winograd as conv_winograd

    monkeypatch.setattr(conv_winograd, "CHUNK_BYTES", 1)  # Winograd: one sample per chunk
    monkeypatch.setattr(normalization, "BLOCK_BYTES", 70_000)  # BatchNorm: blocks of 2 samples
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 4, 33, 30)).astype(np.float32)  # odd sizes
    dy = rng.standard_normal((7, 5)).astype(np.float32)
    y1, dx1, grads1 = run_model(1, x, dy, algorithm)
    for threads in (2, 3):
        y, dx, grads = run_model(threads, x, dy, algorithm)
        assert parallel.num_threads() == threads
        np.testing.assert_array_equal(y, y1)
        np.testing.assert_array_equal(dx, dx1)
        for a, b in zip(grads, grads1, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.usefixtures("restore_threads")
def test_over_batch_covers_every_row_once():
    parallel.set_num_threads(3)
    seen = np.zeros(10, dtype=int)

    def mark(rows):
        seen[rows] += 1

    parallel.over_batch(10, mark, nbytes=1 << 30)
    np.testing.assert_array_equal(seen, 1)


def blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return min(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


@pytest.mark.usefixtures("restore_threads")
def test_over_samples_gives_each_thread_its_samples_a_slot_and_one_blas_thread():
    parallel.set_num_threads(2)
    before = blas_threads()
    calls = []

    def work(samples, slot):
        calls.append((samples, slot, blas_threads()))

    parallel.over_samples(9, work)
    assert sorted(calls, key=lambda call: call[1]) == [(slice(0, 4), 0, 1), (slice(4, 9), 1, 1)]
    assert blas_threads() == before
    calls.clear()
    parallel.over_samples(3, work)  # fewer than 2 per thread: the caller alone, BLAS untouched
    assert calls == [(slice(0, 3), 0, before)]


class RecordingBlas:
    """Stands in for threadpoolctl's BLAS controller: records limits set and restored."""

    def __init__(self):
        self.events = []

    def limit(self, limits):
        self.events.append(("limit", limits))
        return self

    def restore_original_limits(self):
        self.events.append(("restore", None))


@pytest.mark.usefixtures("restore_threads")
def test_overlapping_callers_limit_blas_once_and_restore_when_the_last_leaves(monkeypatch):
    # Two models run from two threads: their single-threaded-BLAS blocks overlap, and the one
    # that started first finishes first. BLAS is limited once, by the first, and restored once,
    # by the last (a restore by the first would give the second threaded BLAS; a restore by
    # the second to what it found would leave BLAS at one thread for good).
    blas = RecordingBlas()
    monkeypatch.setattr(parallel, "_blas", blas)
    parallel.set_num_threads(2)
    first_inside, second_inside, first_left = (threading.Event() for _ in range(3))
    seen = []

    def first(samples, slot):
        if slot == 0:
            first_inside.set()
            second_inside.wait(5)

    def second(samples, slot):
        if slot == 0:
            second_inside.set()
            first_left.wait(5)
            seen.append(list(blas.events))

    def run_first():
        parallel.over_samples(4, first)
        first_left.set()

    other = threading.Thread(target=run_first)
    other.start()
    first_inside.wait(5)
    parallel.over_samples(4, second)
    other.join(5)
    assert seen == [[("limit", 1)]]  # still limited after the first caller left
    assert blas.events == [("limit", 1), ("restore", None)]


@pytest.mark.usefixtures("restore_threads")
def test_over_samples_waits_for_every_thread_when_one_fails():
    parallel.set_num_threads(2)
    finished = []

    def work(samples, slot):
        if slot == 0:
            raise RuntimeError("sample 0 failed")
        time.sleep(0.2)
        finished.append(slot)

    with pytest.raises(RuntimeError, match="sample 0 failed"):
        parallel.over_samples(4, work)
    assert finished == [1]  # the other thread had finished before the error reached the caller


@pytest.mark.usefixtures("restore_threads")
@pytest.mark.parametrize(("m", "k", "n"), [(40, 7, 3000), (3000, 7, 40), (1, 50, 60), (9, 3, 2)])
def test_matmul_equals_numpy_for_row_and_column_splits(m, k, n, monkeypatch):
    monkeypatch.setattr(parallel, "MIN_PARALLEL_FLOPS", 0)
    parallel.set_num_threads(3)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k)), rng.standard_normal((n, k)).T  # b: a transposed view
    np.testing.assert_allclose(parallel.matmul(a, b), a @ b, rtol=1e-13, atol=1e-13)
    out = np.full((m, n), np.nan)
    assert parallel.matmul(a, b, out=out) is out
    np.testing.assert_allclose(out, a @ b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_set_num_threads_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="threads must be an int >= 1, received: threads="):
        parallel.set_num_threads(bad)


def test_use_fast_path_sets_purenn_train_s_threads_and_allocator(monkeypatch):
    import threadpoolctl

    from purenn.kernels import runtime

    calls = []
    monkeypatch.setattr(runtime, "retain_freed_memory", lambda: calls.append("malloc") or True)
    monkeypatch.setattr(threadpoolctl, "threadpool_limits", lambda n: calls.append(("blas", n)))
    try:
        assert pn.use_fast_path(threads=3) is True
        assert parallel.num_threads() == 3
        assert calls == ["malloc", ("blas", 3)]
        with pytest.raises(ValueError, match="threads must be an int >= 1"):
            pn.use_fast_path(threads=0)
    finally:
        parallel.set_num_threads(None)


def test_serving_threads_gives_purenn_the_threads_and_blas_one_set_from_the_main_thread():
    """The server's forwards run on the batcher's thread, where OpenBLAS ignores a limit once
    the main thread has set one; so the main thread sets BLAS to one thread for the server."""
    from threadpoolctl import threadpool_info

    from purenn.kernels.runtime import serving_threads

    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before, purenn_before = blas_threads(), parallel.num_threads()
    try:
        with serving_threads(3):
            assert parallel.num_threads() == 3
            assert blas_threads() and set(blas_threads()) == {1}
        assert blas_threads() == before and parallel.num_threads() == purenn_before
    finally:
        parallel.set_num_threads(None)
