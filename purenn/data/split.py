"""Train/val/test index splits: stratified by class, or from a pre-split folder layout."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from purenn.checks import check_fraction

SUBSETS = ("train", "val", "test")


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split sample indices so that every class is divided in the same proportions.

    For a class of n samples, ``round(n * val_fraction)`` go to val and
    ``round(n * test_fraction)`` to test (rounding half up), the rest to train; if that would
    leave no training sample, test then val give one up. Which samples go where is a shuffle of
    the class drawn from ``np.random.default_rng([seed, class label])``: deterministic, and a
    class's split does not change when other classes are added or removed.

    Args:
        labels: int array of shape ``(N,)``, class labels >= 0.
        val_fraction, test_fraction: in [0, 1), with a sum < 1.
        seed: integer >= 0.

    Returns:
        ``(train, val, test)``: sorted int64 index arrays into ``labels``, disjoint, covering
        ``range(N)``.
    """
    val_fraction = check_fraction(val_fraction, "val_fraction")
    test_fraction = check_fraction(test_fraction, "test_fraction")
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            "val_fraction + test_fraction must be < 1, "
            f"received: val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise ValueError(
            f"labels must be a 1-D array of integers >= 0, "
            f"received: shape {labels.shape}, dtype {labels.dtype}"
        )

    parts: list[list[np.ndarray]] = [[], [], []]
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n = len(members)
        n_val, n_test = _round_half_up(n * val_fraction), _round_half_up(n * test_fraction)
        n_test = min(n_test, max(0, n - 1 - n_val))
        n_val = min(n_val, n - 1 - n_test)
        shuffled = np.random.default_rng([seed, int(label)]).permutation(members)
        parts[1].append(shuffled[:n_val])
        parts[2].append(shuffled[n_val : n_val + n_test])
        parts[0].append(shuffled[n_val + n_test :])
    train, val, test = (
        np.sort(np.concatenate(p or [np.empty(0, np.int64)])).astype(np.int64) for p in parts
    )
    return train, val, test


def subset_split(subset: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a pre-split layout's ``"train"``, ``"val"`` and ``"test"`` files.

    Args:
        subset: per file one of ``"train"``, ``"val"``, ``"test"`` (``FolderScan.subset``).

    Returns:
        ``(train, val, test)``: sorted int64 index arrays; a split with no file is empty.
    """
    subset = np.asarray(subset, dtype=object)
    unknown = sorted(set(subset.tolist()) - set(SUBSETS))
    if unknown:
        raise ValueError(f"subset entries must be one of {SUBSETS}, received: {unknown[0]!r}")
    train, val, test = (np.flatnonzero(subset == name).astype(np.int64) for name in SUBSETS)
    return train, val, test
