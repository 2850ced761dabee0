"""Micro-batching: requests that wait while a forward pass runs share the next forward pass.

One inference thread owns the model (its layers keep forward caches, so two passes must never
overlap). It blocks on a bounded queue; when a request arrives it takes it together with the
requests already waiting, up to a cap (at most ``max_batch``), stacks their images, runs one
forward pass and hands each request its own row. A request reaching an idle server is therefore
run at once, never held back to fill a batch; under load the batch grows by itself to what
arrived during the previous pass. The queue holds at most ``max_queue`` waiting requests: beyond
that ``submit`` raises :class:`QueueFull` at once (the server answers 503), so memory stays
bounded.

The cap adapts to what a batch is worth for this model on this machine (:class:`BatchPolicy`):
the batcher times every pass and keeps, per batch size, the forward pass's CPU time per image
(of the inference thread: wall time would also count the waits for the GIL, which the event
loop holds while other requests are parsed, and those make small passes look dear). A pass takes
no more requests than the smallest size whose time per image is within 3% of the best size's.
For a model whose single-image pass is bound by reading its weights (a large dense layer), big
batches are several times cheaper per image and the cap rises to ``max_batch``; for one whose
single-image pass already saturates the CPU (a CNN whose convolutions are large GEMMs), a batch
saves nothing and the cap stays small, so the requests left waiting are decoded, answered and
stored while the next pass runs instead of all waiting on one long pass.

Each request gets a ``concurrent.futures.Future``; asyncio code awaits it with
``asyncio.wrap_future``, so the event loop never runs inference.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from purenn.checks import check_int


class QueueFull(RuntimeError):
    """The queue holds ``max_queue`` requests already; try again later."""


class BatcherStopped(RuntimeError):
    """The batcher was stopped before the request ran."""


@dataclass
class _Request:
    image: np.ndarray | None  # uint8 (3, S, S); None for a job
    future: Future
    job: Callable[[], Any] | None = None


_STOP = object()


class BatchPolicy:
    """How many waiting requests the next pass may take, learnt from the passes run so far.

    Pass sizes fall into buckets 1, 2, 4, ... up to ``max_batch`` (a pass of n counts in the
    largest bucket <= n). Each bucket keeps an exponential moving average of the pass's time
    per image. The cap is the smallest bucket whose time per image is within ``tolerance``
    of the best bucket's: batching only as far as it pays. Buckets above that size that were
    never timed are tried first, the largest that the waiting requests fill first (so the first
    cap is ``max_batch``), and every ``explore_every``-th pass the cap is a neighbouring
    bucket, up or down (one never timed first, else in turn), so that a size that became
    cheaper (the machine's load changes) is found again.
    """

    def __init__(
        self, max_batch: int, tolerance: float = 0.03, explore_every: int = 4, decay: float = 0.2
    ) -> None:
        self.max_batch = max_batch
        self.buckets = sorted({min(2**k, max_batch) for k in range(max_batch.bit_length() + 1)})
        self.tolerance, self.explore_every, self.decay = tolerance, explore_every, decay
        self.seconds_per_image: dict[int, float] = {}
        self.passes = 0

    def bucket(self, size: int) -> int:
        return max(b for b in self.buckets if b <= size)

    def cap(self, waiting: int | None = None) -> int:
        """The most requests the next pass may take (>= 1; fewer run if fewer wait).

        Args:
            waiting: requests ready now (None: unknown, as many as needed).
        """
        timed = self.seconds_per_image
        if not timed:
            return self.max_batch
        best = min(timed.values())
        chosen = min(b for b, t in timed.items() if t <= best * (1 + self.tolerance))
        larger = [b for b in self.buckets if b > chosen]
        untimed = [b for b in larger if b not in timed and (waiting is None or b <= waiting)]
        if untimed:
            return untimed[-1]
        if self.passes % self.explore_every == self.explore_every - 1:
            # Re-time a neighbour of the chosen size, up and down in turn: under load the
            # sizes below the cap would otherwise never run again.
            smaller = [b for b in self.buckets if b < chosen]
            up = (self.passes // self.explore_every) % 2 == 0
            neighbours = [*larger[:1], *smaller[-1:]] if up else [*smaller[-1:], *larger[:1]]
            neighbours.sort(key=lambda b: b in timed)  # a never-timed one first
            return neighbours[0] if neighbours else chosen
        return chosen

    def record(self, size: int, seconds: float) -> None:
        """One pass of ``size`` images took ``seconds``."""
        self.passes += 1
        b, per_image = self.bucket(size), seconds / size
        old = self.seconds_per_image.get(b)
        self.seconds_per_image[b] = (
            per_image if old is None else old + self.decay * (per_image - old)
        )


class MicroBatcher:
    """Runs ``forward`` on stacked requests in one background thread.

    Args:
        forward: uint8 ``(N, 3, S, S)`` -> array ``(N, ...)``; row i answers request i.
        max_batch: most requests in one forward pass (1 turns batching off); a pass takes at
            most ``policy.cap()`` of the waiting requests.
        max_queue: most requests waiting (not counting the pass that is running).
        on_batch: called with the size of every batch run (for metrics), on the worker thread.
    """

    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        max_batch: int = 32,
        max_queue: int = 128,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.forward = forward
        self.max_batch = check_int(max_batch, "max_batch")
        self.max_queue = check_int(max_queue, "max_queue")
        self.on_batch = on_batch
        self.policy = BatchPolicy(self.max_batch)
        self._queue: queue.Queue = queue.Queue(maxsize=self.max_queue)
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> MicroBatcher:
        self._thread = threading.Thread(target=self._run, name="purenn-inference", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the running pass, fail every waiting request with BatcherStopped, join."""
        if self._thread is None:
            return
        self._stopping = True  # submit refuses from now on
        self._drain(BatcherStopped("the server is shutting down"))
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:  # submissions raced in after the drain; the thread is a daemon
            pass
        self._thread.join(timeout)
        self._thread = None
        self._drain(BatcherStopped("the server is shutting down"))

    @property
    def depth(self) -> int:
        """Requests waiting now (approximate, as any queue size read by another thread)."""
        return self._queue.qsize()

    def submit(self, image: np.ndarray) -> Future:
        """Queue one uint8 ``(3, S, S)`` image; the future gets its row of ``forward``'s output.

        Raises:
            QueueFull: ``max_queue`` requests are waiting already.
        """
        return self._put(_Request(image, Future()))

    def call(self, job: Callable[[], Any]) -> Future:
        """Run ``job()`` alone on the inference thread, between two passes.

        Anything that uses the model's layers (e.g. a saliency map, which runs a backward pass)
        must go through here so that it never overlaps a forward pass.
        """
        return self._put(_Request(None, Future(), job))

    def _put(self, request: _Request) -> Future:
        if self._thread is None or self._stopping:
            raise BatcherStopped("the batcher is not running")
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise QueueFull(f"{self.max_queue} requests are waiting already") from None
        return request.future

    def _drain(self, error: Exception) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Request):
                item.future.set_exception(error)

    def _run(self) -> None:
        pending: _Request | None = None
        while True:
            item = pending if pending is not None else self._queue.get()
            pending = None
            if item is _STOP:
                return
            if item.job is not None:
                self._run_job(item)
                continue
            batch, cap = [item], self.policy.cap(1 + self._queue.qsize())
            while len(batch) < cap:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP or nxt.job is not None:
                    pending = nxt  # handled after this pass, in arrival order
                    break
                batch.append(nxt)
            self._run_batch(batch)

    def _run_job(self, request: _Request) -> None:
        if not request.future.set_running_or_notify_cancel():
            return
        try:
            request.future.set_result(request.job())
        except BaseException as err:  # the caller sees the error; the thread keeps serving
            request.future.set_exception(err)

    def _run_batch(self, batch: list[_Request]) -> None:
        batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            start = time.thread_time()
            out = self.forward(np.stack([r.image for r in batch]))
            self.policy.record(len(batch), time.thread_time() - start)
            if len(out) != len(batch):
                raise RuntimeError(f"forward gave {len(out)} rows for {len(batch)} images")
        except BaseException as err:  # every request of the pass gets the error
            for r in batch:
                r.future.set_exception(err)
            return
        if self.on_batch is not None:
            self.on_batch(len(batch))
        for r, row in zip(batch, out, strict=True):
            r.future.set_result(row)
