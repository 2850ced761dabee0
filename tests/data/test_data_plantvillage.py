"""Smoke test on the real PlantVillage images in ../shared/data/plantvillage (skipped if absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from purenn.data import (
    Augmentation,
    DataLoader,
    build_cache,
    channel_stats,
    scan_image_folder,
    stratified_split,
)

PLANTVILLAGE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "plantvillage"

pytestmark = pytest.mark.skipif(
    not PLANTVILLAGE.is_dir(), reason=f"no real images at {PLANTVILLAGE}"
)


def test_real_images_scan_cache_split_and_load(tmp_path):
    scan = scan_image_folder(PLANTVILLAGE)
    assert len(scan.class_names) == 15 and len(scan.files) == 2475
    assert np.bincount(scan.labels).tolist() == [165] * 15
    assert "Pepper,_bell___healthy" in scan.class_names  # commas, spaces, parentheses in names

    cache = build_cache(scan, tmp_path / "cache", image_size=32, workers=2, progress=False)
    assert cache.images.shape == (2475, 3, 32, 32) and cache.skipped == []

    train, val, test = stratified_split(cache.labels, 0.15, 0.15, seed=0)
    assert np.bincount(cache.labels[val]).tolist() == [25] * 15
    mean, std = channel_stats(cache.images, train)
    # leaves on grey/brown backgrounds: mid-range means, green channel brightest
    assert (0.3 < mean).all() and (mean < 0.6).all() and mean[1] == mean.max()
    assert (0.1 < std).all() and (std < 0.35).all()

    loader = DataLoader(
        cache.images,
        cache.labels,
        train,
        64,
        mean,
        std,
        shuffle=True,
        augmentation=Augmentation(),
        augment_factor=2,
    )
    x, y = next(iter(loader))
    assert x.shape == (64, 3, 32, 32) and x.dtype == np.float32 and np.isfinite(x).all()
    assert abs(float(x.mean())) < 0.5 and 0.6 < float(x.std()) < 1.4
