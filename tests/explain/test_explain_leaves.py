"""Deletion check on real PlantVillage leaves (../shared/data/plantvillage; skipped if absent).

A small CNN is trained here at 32x32 on 8 classes (a second or two), because the trained 128x128
plantvillage-cnn is too slow to train in a test; benchmarks/explain_leaves.py measures the same
check on the trained model (docs/RESULTS.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from small_models import two_conv_cnn

import purenn as pn
from purenn.data import channel_stats, load_image, normalize_batch, scan_image_folder
from purenn.explain import explain
from purenn.explain.deletion import deletion_check

PLANTVILLAGE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "plantvillage"
CLASSES, PER_CLASS, TEST_PER_CLASS, SIZE = 8, 60, 15, 32

pytestmark = pytest.mark.skipif(
    not PLANTVILLAGE.is_dir(), reason=f"no real images at {PLANTVILLAGE}"
)


def test_blanking_the_top_grad_cam_pixels_hurts_more_than_blanking_random_ones():
    scan = scan_image_folder(PLANTVILLAGE)
    chosen = [np.flatnonzero(scan.labels == c)[:PER_CLASS] for c in range(CLASSES)]
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    pixels = np.stack([load_image(scan.root / scan.files[i], SIZE) for i in np.concatenate(chosen)])
    test = (np.arange(len(labels)) % PER_CLASS) < TEST_PER_CLASS
    mean, std = channel_stats(pixels, np.flatnonzero(~test))
    x = normalize_batch(pixels, mean, std)

    rng = np.random.default_rng(0)
    model = two_conv_cnn(CLASSES, SIZE, rng)
    optimizer = pn.Adam(model.parameters(), lr=2e-3)
    loss_fn = pn.SoftmaxCrossEntropy()
    train = np.flatnonzero(~test)
    for _ in range(8):
        order = rng.permutation(train)
        for start in range(0, len(order), 32):
            batch = order[start : start + 32]
            loss_fn.forward(model.forward(x[batch], training=True), labels[batch])
            model.backward(loss_fn.backward(), input_grad=False)
            optimizer.step()

    x_test = x[test]
    assert len(x_test) >= 50
    result = explain(model, x_test)  # the predicted class of each image
    assert (result.targets == labels[test]).mean() > 0.6
    # blanked pixels get 0 in every channel: the training mean colour after z-scoring
    check = deletion_check(model, x_test, result.maps, result.targets, fraction=0.2)
    np.testing.assert_allclose(check.original, result.probabilities.max(axis=1), rtol=1e-5)
    assert check.explained_drop.mean() > check.random_drop.mean() + 0.05
