"""Batch-parallel array work is exact: the same bits whatever the thread count."""

from __future__ import annotations

import numpy as np
import pytest

import purenn as pn
from purenn import parallel


@pytest.fixture
def restore_threads(monkeypatch):
    monkeypatch.setattr(parallel, "MIN_PARALLEL_BYTES", 0)  # split even these small arrays
    yield
    parallel.set_num_threads(None)


def run_model(threads: int, x: np.ndarray, dy: np.ndarray, algorithm: str = "im2col"):
    parallel.set_num_threads(threads)
    conv = pn.Conv2D(4, 8, 3, padding=1, rng=0, algorithm=algorithm)
    model = pn.Sequential([conv, pn.ReLU(), pn.MaxPool2D(2), pn.ReLU()])
    y = model.forward(x)
    dx = model.backward(dy)
    return y, dx, [grad.copy() for _, grad in model.parameters()]


@pytest.mark.usefixtures("restore_threads")
@pytest.mark.parametrize("algorithm", ["im2col", "winograd"])
def test_threads_do_not_change_a_single_bit(algorithm, monkeypatch):
    from purenn import conv_winograd

    monkeypatch.setattr(conv_winograd, "CHUNK_BYTES", 1)  # Winograd: one sample per chunk
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 4, 33, 30)).astype(np.float32)  # odd sizes
    dy = rng.standard_normal((7, 8, 16, 15)).astype(np.float32)
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


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_set_num_threads_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="threads must be an int >= 1, received: threads="):
        parallel.set_num_threads(bad)


def test_use_fast_path_sets_purenn_train_s_threads_and_allocator(monkeypatch):
    import threadpoolctl

    from purenn import runtime

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
