"""The seam between the fit loop and a communicator: synchronous data-parallel SGD.

Every rank holds the whole model and computes a contiguous slice of every global batch (rows
``[B*r//N, B*(r+1)//N)`` of a batch of B samples on rank r of N, see ``shard_bounds``). The
training loss is the mean over the global batch, so with ``n_r`` rows on rank r::

    dL/dw = (1/B) sum_i dl_i/dw = sum_r (n_r/B) * (1/n_r) sum_{i in r} dl_i/dw

Each rank scales the gradient of its own slice's mean by ``n_r/B`` and one Allreduce sums them:
every rank then holds the gradient of the global mean (even when the slices differ in size) and
takes the same optimizer step. Clipping runs after the sum, on the global norm.

The gradients are packed into one contiguous buffer (Horovod's "tensor fusion"), with the
batch's loss sum and correct count appended, so a step costs exactly one Allreduce.

BatchNorm uses per-rank batch statistics in training, as PyTorch's DistributedDataParallel
without SyncBatchNorm; the running statistics of rank 0 are the model's (broadcast to the other
ranks before every evaluation, as DDP broadcasts buffers from rank 0).
"""

from __future__ import annotations

import time

import numpy as np

from purenn.data.loader import DataLoader, shard_bounds
from purenn.distributed.group import Communicator
from purenn.nn.layers import Dropout
from purenn.nn.losses import SoftmaxCrossEntropy
from purenn.nn.sequential import Sequential


class DataParallel:
    """Keeps the replicas of ``model`` on every rank of ``comm`` identical.

    Args:
        comm: the communicator (size > 1; in one process the fit loop does not use this).
        model: this rank's replica; its parameters' gradients must be the arrays the optimizer
            holds (``model.parameters()``), all of one dtype.

    Attributes:
        allreduce_seconds: time spent in the gradient Allreduce (waiting for slower ranks
            included); ``pack_seconds``: time spent copying gradients in and out of the buffer.
    """

    def __init__(self, comm: Communicator, model: Sequential) -> None:
        self.comm = comm
        self.model = model
        self._grads = [grad for _, grad in model.parameters()]
        dtypes = {grad.dtype for grad in self._grads}
        if len(dtypes) != 1:
            raise ValueError(f"data-parallel training needs one parameter dtype, found {dtypes}")
        # The flat buffer: every gradient, then the slice's loss sum and correct count.
        size = sum(grad.size for grad in self._grads)
        self._buffer = np.empty(size + 2, dtype=dtypes.pop())
        self._dropouts = [layer for layer in model.layers if isinstance(layer, Dropout)]
        if self._dropouts and model.input_shape is None:
            raise ValueError(
                "data-parallel training of a model with Dropout needs Sequential(..., "
                "input_shape=...): a rank with no rows of a batch still draws its masks"
            )
        self.allreduce_seconds = 0.0
        self.pack_seconds = 0.0

    # -- once per run -----------------------------------------------------------------------
    def broadcast_state(self) -> None:
        """Give every rank rank 0's weights, buffers and Dropout generators."""
        for layer in self.model.layers:
            for store in (layer.params, layer.buffers):
                for array in store.values():
                    self.comm.broadcast_(array)
        self.model.set_rng_states(self.comm.broadcast(self.model.rng_states()))

    # -- every step ---------------------------------------------------------------------------
    def forward_backward(
        self, loss_fn: SoftmaxCrossEntropy, x: np.ndarray, y: np.ndarray, total: int
    ) -> tuple[float, int]:
        """Forward and backward of this rank's slice ``(x, y)`` of a global batch, then
        :meth:`reduce`: every rank ends with the gradients of the global batch's mean loss.

        Each Dropout draws the masks of the whole global batch from its generator (in the same
        state on every rank) and keeps this rank's rows, so the masks and the generators' states
        do not depend on the number of ranks. A rank whose slice is empty (a last batch smaller
        than the number of ranks) draws them too, and contributes zero gradients.

        Returns:
            ``(mean loss over the global batch, correct samples in it)``, equal on every rank.
        """
        model = self.model
        start, _ = shard_bounds(total, *self.comm.shard)
        for layer in self._dropouts:
            layer.batch_part = (start, total)
        if len(y):
            logits = model.forward(x, training=True)
            loss = loss_fn.forward(logits, y)
            model.backward(loss_fn.backward(), input_grad=False)
            correct = int(np.count_nonzero(np.argmax(logits, axis=1) == y))
        else:
            loss, correct = 0.0, 0
            model.zero_grad()
            shapes = model.output_shapes(model.input_shape)
            for index, layer in enumerate(model.layers):
                if isinstance(layer, Dropout) and layer.p > 0:
                    layer.rng.random((total, *shapes[index]), dtype=np.float32)
        return self.reduce(loss, correct, len(y), total)

    def reduce(self, loss: float, correct: int, rows: int, total: int) -> tuple[float, int]:
        """Sum the scaled gradients of every rank's slice; returns the global loss and count.

        Args:
            loss: mean loss over this rank's ``rows`` samples (ignored if ``rows`` is 0).
            correct: samples of the slice classified correctly.
            rows: this rank's slice size; ``total``: the global batch size.

        Returns:
            ``(mean loss over the global batch, correct samples in it)``, equal on every rank.
        """
        start = time.perf_counter()
        buffer, offset, scale = self._buffer, 0, rows / total
        for grad in self._grads:
            np.multiply(grad.reshape(-1), scale, out=buffer[offset : offset + grad.size])
            offset += grad.size
        buffer[-2] = loss * rows if rows else 0.0
        buffer[-1] = correct
        packed = time.perf_counter()
        self.comm.allreduce_(buffer)
        reduced = time.perf_counter()
        offset = 0
        for grad in self._grads:
            grad.reshape(-1)[...] = buffer[offset : offset + grad.size]
            offset += grad.size
        self.allreduce_seconds += reduced - packed
        self.pack_seconds += (packed - start) + (time.perf_counter() - reduced)
        return float(buffer[-2]) / total, int(round(float(buffer[-1])))

    # -- evaluation and decisions ---------------------------------------------------------------
    def sync_buffers(self) -> None:
        """Rank 0's non-trained state (BatchNorm running statistics) on every rank."""
        for layer in self.model.layers:
            for array in layer.buffers.values():
                self.comm.broadcast_(array)

    def predict_logits(self, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
        """Eval-mode outputs over a split whose samples are divided into one block per rank.

        ``loader`` holds this rank's block (``TrainingData.loader`` with ``shard``); the blocks
        are gathered in rank order, which is the split's order.

        Returns:
            ``(logits, labels)`` of the whole split, the same on every rank.
        """
        self.sync_buffers()
        self.model.eval()
        outputs, labels = [], []
        for x, y in loader.epoch(0):
            outputs.append(self.model.forward(x, training=False))
            labels.append(y)
        parts = self.comm.allgather((outputs, labels))
        logits = np.concatenate([o for rank_outputs, _ in parts for o in rank_outputs])
        return logits, np.concatenate([y for _, rank_labels in parts for y in rank_labels])

    def agree(self, value):
        """Rank 0's ``value`` on every rank (decisions such as stopping early)."""
        return self.comm.broadcast(value)
