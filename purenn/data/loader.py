"""Mini-batches of float32 NCHW images from the uint8 cache, prepared one batch ahead."""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from purenn.checks import check_int, is_int, require
from purenn.data.augment import Augmentation
from purenn.data.field import FieldAugmentation, leaf_alpha
from purenn.data.stats import channel_columns, standardize_

Batch = tuple[np.ndarray, np.ndarray]


def shard_bounds(total: int, rank: int, size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of a batch of ``total`` rows that rank ``rank`` of ``size`` takes.

    Contiguous, in rank order, sizes differing by at most one: the slices of all ranks
    concatenate to the whole batch.
    """
    return total * rank // size, total * (rank + 1) // size


class DataLoader:
    """Batches ``(x, y)`` over ``images[indices]``: scaled, augmented, z-scored.

    An epoch is a list of ``len(indices) * augment_factor`` samples: sample ``s`` is view
    ``s // len(indices)`` of image ``indices[s % len(indices)]``; view 0 is the image as stored,
    views 1 .. F-1 are augmented. The list is shuffled with ``np.random.default_rng([seed,
    epoch])`` and batch ``b`` is augmented with ``np.random.default_rng([seed, epoch, b])``, so
    every batch is a pure function of (seed, epoch, b): the same with or without prefetching,
    and ``epoch(e, start_batch=k)`` yields exactly the batches ``k, k+1, ...`` of ``epoch(e)``.

    Args:
        images: uint8 array (e.g. ``ImageCache.images``, a memmap) of shape ``(N, C, S, S)``.
        labels: int array of shape ``(N,)``.
        indices: which images to use (e.g. the training split), int array.
        batch_size: samples per batch.
        mean, std: per-channel statistics of shape ``(C,)`` in [0, 1] units for the z-score,
            or both None to only scale to [0, 1].
        shuffle: shuffle the samples each epoch.
        seed: integer >= 0 for the shuffles and augmentations.
        augmentation: applied to views 1 .. F-1 (before the z-score): ``Augmentation`` or
            ``FieldAugmentation`` (both honour the draws/keep contract); an enabled one is
            required when F > 1 and refused when F = 1 (it would have no effect).
        augment_factor: F, the number of views of each image per epoch.
        backdrop: applied to every sample, view 0 too, before ``augmentation``, with
            ``np.random.default_rng([seed, epoch, b, 1])``: a ``FieldAugmentation`` that
            replaces backgrounds, so that the background a lab photographed one class on
            (PlantVillage's Common rust: on black) stops telling the class. When the
            augmentation replaces backgrounds too, both take the leaf masks of the images as
            stored, computed once per sample.
        drop_last: leave out the last batch if it is smaller than ``batch_size``.
        prefetch: prepare the next batch in a background thread while the caller works.
        shard: ``(rank, size)``: yield only rows ``shard_bounds(B, rank, size)`` of every batch
            of B samples (data-parallel training). Samples, order and augmentation draws are
            those of the whole batch, so the slices of all ranks make up exactly the batch one
            process would get; only the kept rows are read and augmented.

    Yields:
        ``x``: float32 of shape ``(B, C, S, S)``; ``y``: int64 of shape ``(B,)``.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        batch_size: int = 32,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
        shuffle: bool = False,
        seed: int = 0,
        augmentation: Augmentation | FieldAugmentation | None = None,
        augment_factor: int = 1,
        backdrop: FieldAugmentation | None = None,
        drop_last: bool = False,
        prefetch: bool = True,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 of shape (N, C, H, W), "
                f"received: {images.dtype} {images.shape}"
            )
        labels = np.asarray(labels)
        if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be integers of shape ({len(images)},), "
                f"received: {labels.dtype} {labels.shape}"
            )
        indices = np.asarray(indices)
        if indices.ndim != 1 or (indices.size and not np.issubdtype(indices.dtype, np.integer)):
            raise ValueError(
                f"indices must be a 1-D integer array, received: {indices.dtype} {indices.shape}"
            )
        if indices.size and (indices.min() < 0 or indices.max() >= len(images)):
            raise ValueError(
                f"indices must lie in [0, {len(images)}), "
                f"received: {indices.min()}..{indices.max()}"
            )
        self.augment_factor = check_int(augment_factor, "augment_factor", 1)
        augmenting = augmentation is not None and augmentation.enabled
        if augmenting != (self.augment_factor > 1):
            # View 0 is never augmented: F = 1 would silently ignore the augmentation, and F > 1
            # without one would only repeat images.
            raise ValueError(
                "an enabled augmentation needs augment_factor >= 2 and augment_factor >= 2 needs "
                f"an enabled augmentation, received: augment_factor={augment_factor}, "
                f"augmentation={augmentation}"
            )
        if (
            augmentation is not None
            and augmentation.needs_square
            and images.shape[2] != images.shape[3]
        ):
            raise ValueError(
                f"rotation needs square images, received: images of shape {images.shape}"
            )
        channel_columns(mean, std, images.shape[1])  # validate now rather than at the first batch
        self.images = images
        self.labels = labels.astype(np.int64, copy=False)
        self.indices = indices.astype(np.int64, copy=False)
        self.batch_size = check_int(batch_size, "batch_size", 1)
        self.mean, self.std = mean, std
        self.shuffle = shuffle
        self.seed = check_int(seed, "seed", 0)
        self.augmentation = augmentation
        self.backdrop = backdrop if backdrop is not None and backdrop.enabled else None
        self._augmentation_replaces_backgrounds = isinstance(
            augmentation, FieldAugmentation
        ) and bool(augmentation.background)
        self.drop_last = drop_last
        self.prefetch = prefetch
        rank, size = shard
        size = check_int(size, "shard size", 1)
        require(is_int(rank) and 0 <= rank < size, "shard rank", f"in [0, {size})", rank)
        self.shard = (int(rank), size)

    @property
    def num_samples(self) -> int:
        """Samples per epoch: ``len(indices) * augment_factor``."""
        return len(self.indices) * self.augment_factor

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def global_batch_size(self, b: int) -> int:
        """Samples in batch ``b`` over all shards (``batch_size``, or fewer for the last)."""
        return min(self.batch_size, self.num_samples - b * self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        """The batches of epoch ``epoch`` from batch ``start_batch`` on.

        Closing the iterator early (``break``, ``close()``) stops the prefetch thread; an
        exception raised while preparing a batch is raised here.
        """
        epoch = check_int(epoch, "epoch", 0)
        start_batch = check_int(start_batch, "start_batch", 0)
        if start_batch > len(self):
            raise ValueError(
                f"start_batch must be <= {len(self)} (batches per epoch), "
                f"received: start_batch={start_batch}"
            )
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        batches = range(start_batch, len(self))
        if self.prefetch:
            return self._prefetched(order, epoch, batches)
        return (self._batch(order, epoch, b) for b in batches)

    def _prefetched(self, order: np.ndarray, epoch: int, batches: range) -> Iterator[Batch]:
        # One worker thread builds batch b + 1 while the caller holds batch b (NumPy releases
        # the GIL for the copies and arithmetic). Leaving the `with` (exhausted, closed or
        # garbage-collected generator) waits for that one batch and joins the thread.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="purenn-prefetch") as pool:
            future = pool.submit(self._batch, order, epoch, batches.start) if batches else None
            for b in batches:
                batch = future.result()
                if b + 1 < batches.stop:
                    future = pool.submit(self._batch, order, epoch, b + 1)
                yield batch

    def _batch(self, order: np.ndarray, epoch: int, b: int) -> Batch:
        batch = order[b * self.batch_size : (b + 1) * self.batch_size]
        start, stop = shard_bounds(len(batch), *self.shard)
        samples = batch[start:stop]
        n = len(self.indices)
        rows = self.indices[samples % n]
        # Read the rows in ascending order (sequential access to the memmap) and scatter them
        # back to their batch positions in the same pass that converts uint8 to float32.
        ascending = np.argsort(rows, kind="stable")
        x = np.empty((len(rows), *self.images.shape[1:]), dtype=np.float32)
        x[ascending] = self.images[rows[ascending]]
        x *= np.float32(1 / 255)
        lab_alpha = None  # the leaves as shot, when backdrop and augmentation both need them
        if self.backdrop is not None:
            if self._augmentation_replaces_backgrounds:
                lab_alpha = leaf_alpha(x)
            rng = np.random.default_rng([self.seed, epoch, b, 1])
            keep = np.arange(start, stop)
            self.backdrop.apply(x, rng, draws=len(batch), keep=keep, alpha=lab_alpha)
        # The draws are made for every augmented sample of the whole batch (as in one process);
        # this shard's augmented samples use theirs.
        augmented_in_batch = np.flatnonzero(batch >= n)
        mine = np.flatnonzero((augmented_in_batch >= start) & (augmented_in_batch < stop))
        if mine.size:
            rng = np.random.default_rng([self.seed, epoch, b])
            augmented = augmented_in_batch[mine] - start
            shot = {} if lab_alpha is None else {"alpha": lab_alpha[augmented]}
            x[augmented] = self.augmentation.apply(
                x[augmented], rng, draws=len(augmented_in_batch), keep=mine, **shot
            )
        return standardize_(x, self.mean, self.std), self.labels[rows]
