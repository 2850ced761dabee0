"""From an image folder to loaders: cache, split, statistics (shared by train and evaluate)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from purenn.checks import require
from purenn.data import (
    Augmentation,
    DataLoader,
    FieldAugmentation,
    FolderScan,
    ImageCache,
    build_cache,
    channel_stats,
    stratified_split,
    subset_split,
)
from purenn.data.loader import shard_bounds

SPLITS = ("train", "val", "test")
# A channel that is constant over the training set would divide by zero when z-scored.
MIN_STD = 1e-3


def default_cache_dir() -> Path:
    """``$PURENN_CACHE_DIR``, else ``$XDG_CACHE_HOME/purenn``, else ``~/.cache/purenn``."""
    if os.environ.get("PURENN_CACHE_DIR"):
        return Path(os.environ["PURENN_CACHE_DIR"]).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser().resolve() / "purenn"


def open_cache(
    scan: FolderScan,
    image_size: int,
    cache_dir: str | None,
    workers: int | None,
    progress: bool,
    listing: Path | None = None,
) -> ImageCache:
    """The decoded-image cache of ``scan`` at ``image_size`` (built on first use).

    ``listing``: where the skipped-files warning says the list is (default: in the cache).
    """
    return build_cache(
        scan,
        cache_dir or default_cache_dir(),
        image_size=image_size,
        workers=workers,
        progress=progress,
        listing=listing,
    )


def split_indices(
    cache: ImageCache, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """``{"train", "val", "test"}`` int64 indices into the cache.

    A pre-split folder (``train/``, ``val/``, ``test/``) keeps its own split and ignores the
    fractions; otherwise each class is split by the fractions (``stratified_split``).
    """
    if cache.subset is not None:
        parts = subset_split(cache.subset)
    else:
        parts = stratified_split(cache.labels, val_fraction, test_fraction, seed)
    return dict(zip(SPLITS, parts, strict=True))


def make_augmentation(
    recipe: str, backgrounds: str | None = None
) -> Augmentation | FieldAugmentation:
    """The augmentation of the config key ``augment``: "standard", "geometric" or "field".

    "geometric" is the field recipe's geometry and light alone, at its strengths: what a lab
    photo looks like taken closer, further, turned or lit otherwise, with the leaf's own
    background and colours kept.
    """
    if recipe == "field":
        return FieldAugmentation(background_dir=backgrounds)
    if recipe == "geometric":
        return FieldAugmentation.only("hflip", "crop", "rotate", "brightness")
    require(recipe == "standard", "augment", "standard, geometric or field", recipe)
    return Augmentation()


def make_backdrop(probability: float, backgrounds: str | None = None) -> FieldAugmentation | None:
    """The config key ``replace_background``: each training sample's background replaced with
    this probability (the field recipe's textures, and the photos of ``backgrounds``); None
    at 0."""
    if not probability:
        return None
    return FieldAugmentation.only("background", background=probability, background_dir=backgrounds)


@dataclass
class TrainingData:
    """A cached dataset split for training, with the normalisation statistics of its train part.

    Attributes:
        cache: the decoded images (uint8 (N, 3, S, S) memmap) and labels.
        splits: ``{"train", "val", "test"}`` int64 index arrays into ``images``.
        mean, std: float64 (3,) statistics of the training images in [0, 1] units.
        ignored_folders: the data folder's folders that are not classes (``FolderScan``).
        images, labels, class_names: what the loaders read and what the labels index; the
            cache's unless given (a replay run, :mod:`purenn.training.replay`, puts the
            replayed images after the cache's and labels them by the model's classes).
        key: identifies the images (for the checkpoint's changed-data warning); the cache's
            unless given.
    """

    cache: ImageCache
    splits: dict[str, np.ndarray]
    mean: np.ndarray
    std: np.ndarray
    ignored_folders: list[tuple[str, str]] = field(default_factory=list)
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if self.images is None:
            self.images, self.labels = self.cache.images, self.cache.labels
        if self.class_names is None:
            self.class_names = self.cache.class_names
        if self.key is None:
            self.key = self.cache.key

    def loader(
        self, split: str, batch_size: int, shard: tuple[int, int] = (0, 1)
    ) -> DataLoader | None:
        """Batches of ``split`` in order, not augmented (an evaluation pass, over any split,
        :func:`held_out_loader`); None if it is empty. The training batches are
        :meth:`train_loader`'s.

        ``shard=(rank, size)``: rank's contiguous block of the split's samples.
        """
        indices = self.splits[split]
        if not len(indices):
            return None
        return held_out_loader(
            self.images, self.labels, indices, batch_size, self.mean, self.std, shard
        )

    def train_loader(self, config, shard: tuple[int, int] = (0, 1)) -> DataLoader:
        """The training split's batches a ``TrainConfig`` asks for, shuffled by its seed.

        ``config.augment``: the recipe of the augmented views when ``config.augment_factor`` > 1,
        "standard" (``Augmentation``), "geometric" or "field" (``FieldAugmentation``, with the
        photos of the folder ``config.augment_backgrounds`` as extra backgrounds).
        ``config.replace_background``: the probability that a sample's background is replaced,
        on every view (``make_backdrop``).

        ``shard=(rank, size)`` (data-parallel training): rank's slice of every batch.
        """
        return DataLoader(
            self.images,
            self.labels,
            self.splits["train"],
            batch_size=config.batch_size,
            mean=self.mean,
            std=self.std,
            shuffle=True,
            seed=config.seed,
            augmentation=(
                make_augmentation(config.augment, config.augment_backgrounds)
                if config.augment_factor > 1
                else None
            ),
            augment_factor=config.augment_factor,
            backdrop=make_backdrop(config.replace_background, config.augment_backgrounds),
            shard=shard,
        )


def held_out_loader(
    images: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    batch_size: int,
    mean: np.ndarray,
    std: np.ndarray,
    shard: tuple[int, int] = (0, 1),
) -> DataLoader:
    """Batches of ``images[indices]`` in order, not augmented: an evaluation split.

    ``shard=(rank, size)``: rank's contiguous block of the samples (the blocks of all ranks,
    in rank order, are the split).
    """
    indices = indices[slice(*shard_bounds(len(indices), *shard))]
    return DataLoader(images, labels, indices, batch_size=batch_size, mean=mean, std=std)


def load_training_data(
    scan: FolderScan,
    image_size: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    cache_dir: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    listing: Path | None = None,
) -> TrainingData:
    """Cache and split the images of ``scan``; statistics of the training split."""
    cache = open_cache(scan, image_size, cache_dir, workers, progress, listing)
    splits = split_indices(cache, val_fraction, test_fraction, seed)
    mean, std = channel_stats(cache.images, splits["train"])
    return TrainingData(cache, splits, mean, np.maximum(std, MIN_STD), list(scan.ignored_folders))
