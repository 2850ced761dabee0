"""Stratified and pre-split train/val/test indices."""

from __future__ import annotations

import numpy as np
import pytest

from purenn.data import stratified_split, subset_split


@pytest.fixture
def labels() -> np.ndarray:
    counts = [100, 40, 7, 1, 2]
    return np.random.default_rng(0).permutation(np.repeat(np.arange(5), counts))


def test_partition_and_per_class_counts(labels):
    train, val, test = stratified_split(labels, 0.2, 0.1, seed=3)
    for part in (train, val, test):
        assert part.dtype == np.int64 and (np.diff(part) > 0).all()
    np.testing.assert_array_equal(
        np.sort(np.concatenate([train, val, test])), np.arange(len(labels))
    )
    # per class: round half up of n * fraction; a class keeps at least one training sample
    assert np.bincount(labels[val], minlength=5).tolist() == [20, 8, 1, 0, 0]
    assert np.bincount(labels[test], minlength=5).tolist() == [10, 4, 1, 0, 0]
    assert np.bincount(labels[train], minlength=5).tolist() == [70, 28, 5, 1, 2]


def test_tiny_class_keeps_a_training_sample():
    train, val, test = stratified_split(np.array([0, 0]), 0.5, 0.45, seed=0)
    assert len(train) == 1 and len(val) == 1 and len(test) == 0


def test_deterministic_and_seed_dependent(labels):
    first = stratified_split(labels, 0.2, 0.1, seed=3)
    for a, b in zip(first, stratified_split(labels, 0.2, 0.1, seed=3), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], stratified_split(labels, 0.2, 0.1, seed=4)[1])


def test_a_class_split_does_not_depend_on_other_classes(labels):
    _, val, _ = stratified_split(labels, 0.2, 0.1, seed=3)
    keep = np.flatnonzero(labels != 1)  # drop class 1 entirely
    _, val_sub, _ = stratified_split(labels[keep], 0.2, 0.1, seed=3)
    np.testing.assert_array_equal(keep[val_sub], val[labels[val] != 1])


def test_zero_fractions(labels):
    train, val, test = stratified_split(labels, 0, 0, seed=0)
    assert len(train) == len(labels) and len(val) == len(test) == 0


@pytest.mark.parametrize(
    ("val", "test", "message"),
    [
        (1.0, 0.1, "val_fraction=1.0"),
        (-0.1, 0.1, "val_fraction=-0.1"),
        (0.1, float("nan"), "test_fraction=nan"),
        (0.6, 0.4, "val_fraction \\+ test_fraction must be < 1"),
    ],
)
def test_bad_fractions(labels, val, test, message):
    with pytest.raises(ValueError, match=message):
        stratified_split(labels, val, test, seed=0)


def test_subset_split():
    train, val, test = subset_split(["test", "train", "train", "test"])
    assert train.tolist() == [1, 2] and test.tolist() == [0, 3]
    assert val.dtype == np.int64 and val.size == 0
    with pytest.raises(ValueError, match="'dev'"):
        subset_split(["train", "dev"])
