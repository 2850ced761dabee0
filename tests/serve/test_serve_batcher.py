"""The micro-batcher: lone requests run at once, waiting ones share a pass, the queue is bounded."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from purenn.serve.batcher import BatcherStopped, MicroBatcher, QueueFull

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
