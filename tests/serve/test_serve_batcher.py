"""The micro-batcher: lone requests run at once, waiting ones share a pass, the queue is bounded."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from purenn.serve.batcher import BatcherStopped, BatchPolicy, MicroBatcher, QueueFull

TIMEOUT = 10


class GatedForward:
    """A forward pass that records batch sizes and, while ``gate`` is clear, blocks."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.sizes.append(len(images))
        self.entered.set()
        assert self.gate.wait(TIMEOUT)
        return images.reshape(len(images), -1).sum(axis=1, dtype=np.int64)  # one value per image


def image(value: int) -> np.ndarray:
    return np.full((3, 2, 2), value, dtype=np.uint8)


@pytest.fixture
def forward():
    return GatedForward()


def test_a_lone_request_runs_at_once(forward):
    batcher = MicroBatcher(forward, max_batch=32).start()
    try:
        start = time.perf_counter()
        assert batcher.submit(image(1)).result(TIMEOUT) == 12
        assert time.perf_counter() - start < 0.5 and forward.sizes == [1]
    finally:
        batcher.stop()


def test_requests_waiting_during_a_pass_share_the_next_one(forward):
    batcher = MicroBatcher(forward, max_batch=4).start()
    try:
        forward.gate.clear()
        first = batcher.submit(image(1))
        assert forward.entered.wait(TIMEOUT)
        waiting = [batcher.submit(image(v)) for v in range(2, 12)]  # 10 arrive during the pass
        assert batcher.depth == 10
        forward.gate.set()
        assert first.result(TIMEOUT) == 12
        # every request gets its own image's row, whatever batch it was in
        assert [f.result(TIMEOUT) for f in waiting] == [12 * v for v in range(2, 12)]
        assert forward.sizes == [1, 4, 4, 2]
    finally:
        forward.gate.set()
        batcher.stop()


def test_the_queue_is_bounded(forward):
    batcher = MicroBatcher(forward, max_batch=8, max_queue=2).start()
    try:
        forward.gate.clear()
        running = batcher.submit(image(1))
        assert forward.entered.wait(TIMEOUT)
        queued = [batcher.submit(image(2)), batcher.submit(image(3))]
        with pytest.raises(QueueFull, match="2 requests are waiting"):
            batcher.submit(image(4))
        forward.gate.set()
        assert running.result(TIMEOUT) == 12 and [f.result(TIMEOUT) for f in queued] == [24, 36]
        assert batcher.submit(image(5)).result(TIMEOUT) == 60  # room again
    finally:
        forward.gate.set()
        batcher.stop()


def test_a_failing_pass_fails_its_requests_and_the_thread_goes_on():
    calls = []

    def forward(images):
        calls.append(len(images))
        if len(calls) == 1:
            raise FloatingPointError("boom")
        return images[:, 0, 0, 0].astype(np.int64)

    batcher = MicroBatcher(forward).start()
    try:
        with pytest.raises(FloatingPointError, match="boom"):
            batcher.submit(image(1)).result(TIMEOUT)
        assert batcher.submit(image(7)).result(TIMEOUT) == 7
    finally:
        batcher.stop()


def test_jobs_run_alone_between_passes(forward):
    batcher = MicroBatcher(forward, max_batch=8).start()
    try:
        forward.gate.clear()
        batcher.submit(image(1))
        assert forward.entered.wait(TIMEOUT)
        before = [batcher.submit(image(2)), batcher.submit(image(3))]
        job = batcher.call(lambda: list(forward.sizes))
        after = batcher.submit(image(4))
        forward.gate.set()
        assert job.result(TIMEOUT) == [1, 2]  # ran after the pass of the requests before it
        assert after.result(TIMEOUT) == 48 and forward.sizes == [1, 2, 1]
        assert [f.result(TIMEOUT) for f in before] == [24, 36]
    finally:
        forward.gate.set()
        batcher.stop()


def test_stop_fails_waiting_requests_and_refuses_new_ones(forward):
    batcher = MicroBatcher(forward, max_batch=1).start()
    forward.gate.clear()
    running = batcher.submit(image(1))
    assert forward.entered.wait(TIMEOUT)
    waiting = batcher.submit(image(2))
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()
    with pytest.raises(BatcherStopped):
        waiting.result(TIMEOUT)
    forward.gate.set()
    stopper.join(TIMEOUT)
    assert running.result(TIMEOUT) == 12
    with pytest.raises(BatcherStopped):
        batcher.submit(image(3))


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda x: x, max_batch=0)
    with pytest.raises(ValueError, match="max_queue"):
        MicroBatcher(lambda x: x, max_queue=-1)


def settle(policy: BatchPolicy, seconds_for, passes: int = 64) -> list[int]:
    """Run ``passes`` saturated passes (always max_batch waiting); the caps chosen, in order."""
    caps = []
    for _ in range(passes):
        caps.append(policy.cap())
        policy.record(caps[-1], seconds_for(caps[-1]))
    return caps


def test_the_cap_rises_to_max_batch_when_big_passes_are_cheaper_per_image():
    # A weight-bound model: a pass costs mostly the weight reads, shared by the whole batch.
    policy = BatchPolicy(32)
    caps = settle(policy, lambda n: 3e-3 + 0.5e-3 * n)
    assert caps[0] == 32 and caps[-16:].count(32) == 12
    assert set(caps) <= {16, 32}  # 16 re-timed now and then: 0.69 ms/image against 0.59


def test_the_cap_falls_to_one_when_batching_saves_nothing():
    # A compute-bound model whose per-image time grows with the batch (caches overflow).
    policy = BatchPolicy(32)
    caps = settle(policy, lambda n: 1e-3 * n * (1 + n / 64))
    assert caps[:8] == [32, 32, 32, 16, 16, 16, 16, 8]  # max_batch, then down every 4th pass
    assert caps[-16:].count(1) == 12  # then single passes, a neighbour re-timed every 4th
    assert set(caps[-16:]) <= {1, 2}


def test_the_cap_is_the_smallest_size_within_tolerance_and_neighbours_are_retimed():
    policy = BatchPolicy(8, tolerance=0.1, explore_every=4)
    for size, per_image in ((1, 10.0), (2, 5.0), (4, 1.05), (8, 1.0)):
        policy.record(size, size * per_image)
    assert policy.passes == 4 and policy.cap() == 4  # 1.05 is within 10% of 1.0
    caps = []
    for _ in range(8):
        caps.append(policy.cap())
        policy.record(caps[-1], caps[-1] * policy.seconds_per_image[caps[-1]])
    assert caps == [4, 4, 4, 2, 4, 4, 4, 8]  # every 4th pass: down, then up


def test_a_batch_that_costs_more_per_image_is_dropped_while_answers_stay_right():
    def forward(images):  # per-image CPU time grows with the batch: 0.5 ms x n
        end = time.thread_time() + 5e-4 * len(images) ** 2
        while time.thread_time() < end:
            pass
        return images.reshape(len(images), -1).sum(axis=1, dtype=np.int64)

    batcher = MicroBatcher(forward, max_batch=8, max_queue=200).start()
    sizes = []
    batcher.on_batch = sizes.append
    try:
        futures = [batcher.submit(image(v % 200)) for v in range(200)]
        assert [f.result(TIMEOUT) for f in futures] == [12 * (v % 200) for v in range(200)]
        assert max(sizes[-40:]) <= 2 and sizes[-40:].count(1) >= 28
    finally:
        batcher.stop()
