"""Fine-tuning with replay: new images mixed with a sample of the model's original training data.

``purenn train NEW --init-from MODEL --replay ORIGINAL --replay-fraction F`` fine-tunes MODEL on
the folder NEW (e.g. growers' corrections) and on images of ORIGINAL, so that the classes NEW
does not show are not forgotten:

- **The classes stay the model's.** NEW may hold any of them; its class folders are matched
  by name (a name the model does not know is an error), and so are ORIGINAL's. No output
  layer is replaced.
- **The original split.** ORIGINAL is split as the model's run split it: with the fractions and
  seed the model file records (``split``), which on the folder it was trained on (``data_dir``)
  gives back the same train, val and test images. Images are replayed from its **training**
  split only, so its test split stays unseen and the run report's accuracy on it measures what
  fine-tuning kept of the lab. A model file without a recorded split is split with the run's own
  fractions and ``split_seed`` (a warning says so), as is a folder other than the model's.
- **F is replayed images per new training image**: the run's training split is NEW's (n
  images) plus ``round(F * n)`` images of ORIGINAL's training split (all of it if it has fewer),
  drawn once, without replacement, from the run's ``seed``, each class in proportion to its
  share. They are shuffled together, so a batch holds on average a fraction F / (1 + F) of
  replayed images. F counts against the new set, not the batch: the corrections are few (tens
  of images), an epoch is then exactly the corrections plus their replay, and the schedule,
  early stopping and checkpoints work on it unchanged; a per-batch share would need a second
  sampler and make an epoch's length depend on the batch size. The sample is fixed for the run
  (a rehearsal memory, as a deployed system would keep), which keeps every batch a pure function
  of (seed, epoch, batch), so ``resume`` stays exact.
- **Normalisation**: the model's own statistics (its filters were learnt with them, and the
  replayed images are part of training), not those of the few new photos.
- **Validation** is NEW's val split (early stopping, temperature), as for any run.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from purenn.data import DataError, FolderScan, ImageCache, scan_image_folder
from purenn.training.config import TrainConfig
from purenn.training.pipeline import TrainingData, held_out_loader, open_cache, split_indices

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Replay:
    """The replayed folder of a run.

    Attributes:
        cache: ORIGINAL's decoded images.
        labels: int64 (N,) ``cache``'s labels as indices into the model's classes.
        rows: int64 (M,) the replayed images (indices into ``cache``), sorted.
        test: int64 the original test split (indices into ``cache``).
        split: ``{"val_fraction", "test_fraction", "seed"}`` the split ORIGINAL was cut with.
        fraction: F.
    """

    cache: ImageCache
    labels: np.ndarray
    rows: np.ndarray
    test: np.ndarray
    split: dict
    fraction: float

    def describe(self) -> dict:
        """What the model file and run report say of it."""
        return {
            "data_dir": str(self.cache.root),
            "fraction": self.fraction,
            "images": len(self.rows),
            "split": self.split,
        }

    def test_loader(self, batch_size: int, mean, std, shard: tuple[int, int]):
        """The original test split's batches (None if it is empty)."""
        if not len(self.test):
            return None
        return held_out_loader(
            self.cache.images, self.labels, self.test, batch_size, mean, std, shard
        )


def class_indices(names: list[str], classes: list[str], root: Path) -> np.ndarray:
    """int64 index of each of ``names`` (a folder's classes) among ``classes`` (the model's).

    Raises:
        DataError: a class folder of ``root`` that is not one of ``classes``.
    """
    known = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise DataError(
            f"class folder {unknown[0]!r} of {root} is not one of the model's {len(classes)} "
            f"classes ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}): with "
            "replay the run keeps the model's classes, so every class folder must be one of them"
        )
    return np.array([known[name] for name in names], dtype=np.int64)


def check_replay_classes(replay_dir: str, scan: FolderScan, class_names: list[str]) -> None:
    """Before any work: the new folder's and ``replay_dir``'s classes are all the model's.

    Raises:
        DataError: a class unknown to the model, or ``replay_dir`` is no image folder.
    """
    class_indices(scan.class_names, class_names, scan.root)
    try:
        replayed = scan_image_folder(replay_dir)
    except DataError as err:
        raise DataError(f"replay: {err}") from None
    class_indices(replayed.class_names, class_names, replayed.root)


def stratified_sample(labels: np.ndarray, pool: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` distinct members of ``pool``, each class in proportion to its share of it.

    Each class gets the floor of its quota ``count * n_class / len(pool)``, and the classes with
    the largest remainders one more (ties: lower label), so the counts sum to ``count``; which
    members is a permutation of the class from ``default_rng([seed, label])``.

    Returns:
        Sorted int64 indices (a subset of ``pool``); all of ``pool`` if ``count >= len(pool)``.
    """
    if count >= len(pool):
        return np.sort(pool).astype(np.int64)
    classes, sizes = np.unique(labels[pool], return_counts=True)
    quota = count * sizes / len(pool)
    take = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: count - take.sum()]] += 1
    chosen = [
        np.random.default_rng([seed, int(label)]).permutation(pool[labels[pool] == label])[:k]
        for label, k in zip(classes, take, strict=True)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def original_split(config: TrainConfig, source: dict, root: Path) -> dict:
    """The fractions and seed ORIGINAL is split with: the model's, if its file records them."""
    saved = source.get("split")
    if saved is None:
        logger.warning(
            "the model file does not record the split of its training data: %s is split with "
            "this run's fractions and split_seed, and its test split may hold images the model "
            "was trained on",
            root,
        )
        return {
            "val_fraction": config.val_fraction,
            "test_fraction": config.test_fraction,
            "seed": config.split_seed,
        }
    trained_on = source.get("data_dir")
    if trained_on is None or Path(trained_on).resolve() != root:
        logger.warning(
            "%s is not the folder the model was trained on (%s): its split is a new split with "
            "the model's fractions and seed, not necessarily the images the model held out",
            root,
            trained_on or "not recorded in the model file",
        )
    return {key: saved[key] for key in ("val_fraction", "test_fraction", "seed")}


def load_replay(
    config: TrainConfig,
    class_names: list[str],
    source: dict,
    new_train: int,
    workers: int | None,
    progress: bool,
) -> Replay:
    """Cache and split ORIGINAL (``config.replay``) and draw the replayed images.

    Args:
        config: the run's config (``replay``, ``replay_fraction``, ``image_size``, ``seed``).
        class_names: the model's classes.
        source: the model's metadata (:data:`purenn.training.start.SOURCE_KEYS`).
        new_train: n, the size of the new folder's training split.
        workers, progress: for building ORIGINAL's cache.

    Raises:
        DataError: ORIGINAL is no image folder, has a class the model does not know, or an empty
        training split.
    """
    scan = scan_image_folder(config.replay)
    labels = class_indices(scan.class_names, class_names, scan.root)
    cache = open_cache(scan, config.image_size, config.cache_dir, workers, progress)
    split = original_split(config, source, scan.root)
    parts = split_indices(cache, split["val_fraction"], split["test_fraction"], split["seed"])
    if not len(parts["train"]):
        raise DataError(f"the training split of {scan.root} (replay) is empty")
    count = round(config.replay_fraction * new_train)
    rows = stratified_sample(cache.labels, parts["train"], count, config.seed)
    return Replay(cache, labels[cache.labels], rows, parts["test"], split, config.replay_fraction)


def mix(data: TrainingData, replay: Replay, class_names: list[str], source: dict) -> TrainingData:
    """``data`` (the new folder) with the replayed images added to its training split.

    The images are the new cache's followed by the replayed ones (read into memory: the new
    folder and the sample, not all of ORIGINAL); labels index ``class_names``; the statistics
    are the model's (``source``'s ``mean`` and ``std``, when it has them).

    Raises:
        DataError: a class folder of the new data that is not one of ``class_names``.
    """
    cache = data.cache
    new_labels = class_indices(cache.class_names, class_names, cache.root)[cache.labels]
    offset = len(cache.labels)
    splits = dict(data.splits)
    splits["train"] = np.concatenate([splits["train"], offset + np.arange(len(replay.rows))])
    mean, std = data.mean, data.std
    if "mean" in source and "std" in source:
        mean, std = np.asarray(source["mean"], np.float64), np.asarray(source["std"], np.float64)
    return dataclasses.replace(
        data,
        splits=splits,
        mean=mean,
        std=std,
        images=np.concatenate([cache.images, replay.cache.images[replay.rows]]),
        labels=np.concatenate([new_labels, replay.labels[replay.rows]]),
        class_names=list(class_names),
        key=f"{cache.key}+{replay.cache.key}",
    )
