"""Outlier exposure (Hendrycks et al. 2019): batches of outlier photos beside the training batches.

``purenn train --outliers DIR``: the photos of DIR (none of the classes) go through the same
pipeline as the training images (decode-once cache at the run's image size, the training split's
normalisation, the run's augmentation), and each optimizer step sees one batch of them beside its
training batch. Their loss, :class:`purenn.nn.losses.UniformCrossEntropy`, pulls their predicted
distribution toward uniform.

The outlier batch of optimizer step ``t`` is batch ``t mod L`` of outlier epoch ``t div L`` (``L``
outlier batches per epoch): a pure function of the step, so a resumed run sees the same outliers
as one never stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from purenn.data import DataError, DataLoader, FolderScan, scan_outlier_folder
from purenn.nn.losses import UniformCrossEntropy
from purenn.training.pipeline import make_augmentation, open_cache


@dataclass
class OutlierExposure:
    """The outlier batches of a run and the loss on them.

    Attributes:
        loader: shuffled (and, with the run's augment factor, augmented) outlier batches of a
            fixed size (the last partial batch of an outlier epoch is dropped).
        loss: the weighted cross-entropy to the uniform distribution.
        root: the outlier folder; images: how many photos it holds.
    """

    loader: DataLoader
    loss: UniformCrossEntropy
    root: Path
    images: int

    def batches(self, step: int) -> Iterator[np.ndarray]:
        """The float32 outlier batches of optimizer steps ``step``, ``step + 1``, ... (endless)."""
        epoch, batch = divmod(step, len(self.loader))
        while True:
            stream = self.loader.epoch(epoch, start_batch=batch)
            try:
                for x, _ in stream:
                    yield x
            finally:
                stream.close()
            epoch, batch = epoch + 1, 0


def check_outlier_folder(outliers: str | Path, data_root: Path) -> FolderScan:
    """Scan the outlier folder, refusing one that is, holds or lies inside the data folder.

    Raises:
        DataError: not a folder, no images, or overlapping the data folder (its leaves would be
            pushed toward uniform).
    """
    scan = scan_outlier_folder(outliers)
    if scan.root == data_root or data_root in scan.root.parents or scan.root in data_root.parents:
        raise DataError(
            f"the outlier folder {scan.root} overlaps the data folder {data_root}: outliers "
            "must be photos that are none of the classes"
        )
    return scan


def outlier_exposure(
    scan: FolderScan,
    image_size: int,
    mean: np.ndarray,
    std: np.ndarray,
    batch_size: int,
    weight: float,
    seed: int,
    augment_factor: int,
    augment: str,
    cache_dir: str | None,
    workers: int | None,
    progress: bool,
) -> OutlierExposure:
    """Cache the outlier photos of ``scan`` and batch them as the training images are batched.

    Args:
        scan: from :func:`check_outlier_folder`.
        image_size, mean, std: the run's image size and the training split's statistics.
        batch_size: outlier images per step (at most the folder's photos times the factor).
        weight: the loss term's weight.
        seed, augment_factor, augment: the run's shuffling seed and augmentation.
        cache_dir, workers, progress: as for the training images' cache.
    """
    cache = open_cache(scan, image_size, cache_dir, workers, progress)
    augmenting = augment_factor > 1
    loader = DataLoader(
        cache.images,
        np.zeros(len(cache), dtype=np.int64),
        np.arange(len(cache)),
        batch_size=min(batch_size, len(cache) * augment_factor),
        mean=mean,
        std=std,
        shuffle=True,
        seed=seed,
        augmentation=make_augmentation(augment) if augmenting else None,
        augment_factor=augment_factor,
        drop_last=True,
    )
    return OutlierExposure(loader, UniformCrossEntropy(weight), scan.root, len(cache))
