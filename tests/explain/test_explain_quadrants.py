"""A trained CNN's Grad-CAM points at the quadrant that holds the class evidence."""

from __future__ import annotations

import numpy as np
from small_models import two_conv_cnn

import purenn as pn
from purenn.explain import grad_cam

SIZE, PATCH = 32, 12
# Class c is a 12x12 patch of colour c (in z-score units) somewhere in one quadrant of the image;
# everything else is grey noise, so the quadrant holding the patch holds all the evidence.
COLOURS = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]], np.float32)


def quadrant_images(n: int, rng: np.random.Generator):
    """``(x, y, quadrant)``: float32 (n, 3, 32, 32) images, their classes and evidence quadrants
    (0 top left, 1 top right, 2 bottom left, 3 bottom right)."""
    grey = rng.standard_normal((n, 1, SIZE, SIZE)).astype(np.float32) * 0.5
    x = np.repeat(grey, 3, axis=1)
    y = rng.integers(0, len(COLOURS), n)
    quadrant = rng.integers(0, 4, n)
    half = SIZE // 2
    for i in range(n):
        top = (quadrant[i] // 2) * half + rng.integers(1, half - PATCH)
        left = (quadrant[i] % 2) * half + rng.integers(1, half - PATCH)
        x[i, :, top : top + PATCH, left : left + PATCH] += 2 * COLOURS[y[i]][:, None, None]
    return x, y, quadrant


def quadrant_masks() -> np.ndarray:
    """bool (4, 32, 32): quadrant q of the image."""
    masks = np.zeros((4, SIZE, SIZE), dtype=bool)
    half = SIZE // 2
    for q in range(4):
        masks[q, (q // 2) * half : (q // 2 + 1) * half, (q % 2) * half : (q % 2 + 1) * half] = 1
    return masks


def test_grad_cam_mass_lies_in_the_evidence_quadrant_of_each_class():
    rng = np.random.default_rng(0)
    model = two_conv_cnn(len(COLOURS), SIZE, rng)
    # Decoupled weight decay removes the part of the classifier weights shared by all classes:
    # the softmax ignores it, but a class logit's Grad-CAM would show it as a uniform haze.
    optimizer = pn.AdamW(model.parameters(), lr=3e-3, weight_decay=3.0)
    loss_fn = pn.SoftmaxCrossEntropy()
    for _ in range(300):
        x, y, _ = quadrant_images(32, rng)
        loss_fn.forward(model.forward(x, training=True), y)
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()

    x, y, quadrant = quadrant_images(400, rng)
    assert (model.forward(x, training=False).argmax(1) == y).mean() > 0.95
    maps = grad_cam(model, x, target=y, normalize=False)  # upsampled to 32x32
    mass = maps.sum(axis=(1, 2))
    assert (mass > 0).all()
    share = (maps * quadrant_masks()[quadrant]).sum(axis=(1, 2)) / mass
    for c in range(len(COLOURS)):
        assert share[y == c].mean() >= 0.8, f"class {c}: {share[y == c].mean():.3f}"
