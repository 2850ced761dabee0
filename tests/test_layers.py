"""Every layer: finite-difference gradients (float64), parity with torch.nn (float64, float32)."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_layer_gradients
from torch_parity import assert_layer_matches_torch

import purenn as pn


def torch_nn():
    return pytest.importorskip("torch").nn


def weight_normed(module):
    return pytest.importorskip("torch").nn.utils.parametrizations.weight_norm(module)


# (id, purenn factory taking dtype, torch factory, per-batch input shape)
CASES = [
    ("dense", lambda d: pn.Dense(5, 4, rng=0, dtype=d), lambda: torch_nn().Linear(5, 4), (3, 5)),
    (
        "dense-nobias-glorot",
        lambda d: pn.Dense(6, 3, bias=False, init="glorot", rng=1, dtype=d),
        lambda: torch_nn().Linear(6, 3, bias=False),
        (4, 6),
    ),
    (
        "dense-weightnorm",
        lambda d: pn.Dense(5, 4, weight_norm=True, rng=2, dtype=d),
        lambda: weight_normed(torch_nn().Linear(5, 4)),
        (3, 5),
    ),
    (
        "conv3x3-pad1",
        lambda d: pn.Conv2D(2, 3, 3, padding=1, rng=0, dtype=d),
        lambda: torch_nn().Conv2d(2, 3, 3, padding=1),
        (2, 2, 7, 6),
    ),
    (
        "conv3x3-stride2-odd",
        lambda d: pn.Conv2D(3, 2, 3, stride=2, rng=1, dtype=d),
        lambda: torch_nn().Conv2d(3, 2, 3, stride=2),
        (2, 3, 9, 7),
    ),
    (
        "conv-rect-kernel-mixed-stride",
        lambda d: pn.Conv2D(2, 3, (2, 3), stride=(2, 1), padding=(1, 2), rng=2, dtype=d),
        lambda: torch_nn().Conv2d(2, 3, (2, 3), stride=(2, 1), padding=(1, 2)),
        (2, 2, 5, 6),
    ),
    (
        "conv5x5-same",
        lambda d: pn.Conv2D(2, 2, 5, padding="same", rng=3, dtype=d),
        lambda: torch_nn().Conv2d(2, 2, 5, padding="same"),
        (1, 2, 6, 5),
    ),
    (
        "conv4x4-same-even",
        lambda d: pn.Conv2D(1, 2, 4, padding="same", bias=False, rng=4, dtype=d),
        lambda: torch_nn().Conv2d(1, 2, 4, padding="same", bias=False),
        (2, 1, 5, 7),
    ),
    (
        "conv1x1-stride3-pad2",
        lambda d: pn.Conv2D(3, 4, 1, stride=3, padding=2, rng=5, dtype=d),
        lambda: torch_nn().Conv2d(3, 4, 1, stride=3, padding=2),
        (2, 3, 7, 8),
    ),
    (
        "conv-weightnorm",
        lambda d: pn.Conv2D(2, 3, 3, padding=1, weight_norm=True, rng=6, dtype=d),
        lambda: weight_normed(torch_nn().Conv2d(2, 3, 3, padding=1)),
        (2, 2, 5, 5),
    ),
    # Winograd F(2x2, 3x3): even and odd sizes (cropped last tiles), one-pixel input (all
    # padding), no bias, weight norm; the selector would pick im2col for so few channels.
    (
        "conv-winograd-even",
        lambda d: pn.Conv2D(3, 4, 3, padding=1, algorithm="winograd", rng=7, dtype=d),
        lambda: torch_nn().Conv2d(3, 4, 3, padding=1),
        (2, 3, 6, 8),
    ),
    (
        "conv-winograd-odd",
        lambda d: pn.Conv2D(2, 3, 3, padding="same", algorithm="winograd", rng=8, dtype=d),
        lambda: torch_nn().Conv2d(2, 3, 3, padding=1),
        (2, 2, 7, 5),
    ),
    (
        "conv-winograd-1x1-input",
        lambda d: pn.Conv2D(2, 2, 3, padding=1, bias=False, algorithm="winograd", rng=9, dtype=d),
        lambda: torch_nn().Conv2d(2, 2, 3, padding=1, bias=False),
        (3, 2, 1, 1),
    ),
    (
        "conv-winograd-weightnorm",
        lambda d: pn.Conv2D(
            2, 3, 3, padding=1, weight_norm=True, algorithm="winograd", rng=10, dtype=d
        ),
        lambda: weight_normed(torch_nn().Conv2d(2, 3, 3, padding=1)),
        (2, 2, 5, 6),
    ),
    (
        "maxpool2",
        lambda d: pn.MaxPool2D(2),
        lambda: torch_nn().MaxPool2d(2),
        (2, 3, 8, 6),
    ),
    (
        "maxpool2-odd",
        lambda d: pn.MaxPool2D(2),
        lambda: torch_nn().MaxPool2d(2),
        (2, 2, 7, 9),
    ),
    (
        "maxpool3-stride2-overlap",
        lambda d: pn.MaxPool2D(3, stride=2),
        lambda: torch_nn().MaxPool2d(3, stride=2),
        (2, 2, 9, 7),
    ),
    (
        "maxpool2-stride1-overlap",
        lambda d: pn.MaxPool2D(2, stride=1),
        lambda: torch_nn().MaxPool2d(2, stride=1),
        (1, 2, 5, 6),
    ),
    (
        "maxpool-rect",
        lambda d: pn.MaxPool2D((3, 2), stride=(1, 2)),
        lambda: torch_nn().MaxPool2d((3, 2), stride=(1, 2)),
        (2, 1, 6, 7),
    ),
    ("avgpool2", lambda d: pn.AvgPool2D(2), lambda: torch_nn().AvgPool2d(2), (2, 3, 6, 7)),
    (
        "avgpool3-stride2-overlap",
        lambda d: pn.AvgPool2D(3, stride=2),
        lambda: torch_nn().AvgPool2d(3, stride=2),
        (2, 2, 9, 8),
    ),
    (
        "globalavgpool",
        lambda d: pn.GlobalAvgPool2D(),
        lambda: torch_nn().Sequential(torch_nn().AdaptiveAvgPool2d(1), torch_nn().Flatten()),
        (3, 4, 5, 3),
    ),
    ("flatten", lambda d: pn.Flatten(), lambda: torch_nn().Flatten(), (2, 3, 4, 5)),
    (
        "batchnorm1d",
        lambda d: pn.BatchNorm1D(4, momentum=0.2, dtype=d),
        lambda: torch_nn().BatchNorm1d(4, momentum=0.2),
        (6, 4),
    ),
    (
        "batchnorm2d",
        lambda d: pn.BatchNorm2D(3, eps=1e-3, dtype=d),
        lambda: torch_nn().BatchNorm2d(3, eps=1e-3),
        (2, 3, 4, 5),
    ),
    ("relu", lambda d: pn.ReLU(), lambda: torch_nn().ReLU(), (3, 7)),
    (
        "leakyrelu",
        lambda d: pn.LeakyReLU(0.1),
        lambda: torch_nn().LeakyReLU(0.1),
        (2, 3, 4, 4),
    ),
    ("sigmoid", lambda d: pn.Sigmoid(), lambda: torch_nn().Sigmoid(), (3, 6)),
    ("tanh", lambda d: pn.Tanh(), lambda: torch_nn().Tanh(), (3, 6)),
    ("softmax", lambda d: pn.Softmax(), lambda: torch_nn().Softmax(dim=-1), (4, 5)),
    ("dropout-eval", lambda d: pn.Dropout(0.3), lambda: torch_nn().Dropout(0.3), (3, 5)),
]
IDS = [case[0] for case in CASES]
STATEFUL = {"batchnorm1d", "batchnorm2d"}  # train and eval modes differ
MODES = [
    (case, mode)
    for case in CASES
    for mode in (
        (True, False)
        if case[0] in STATEFUL
        else ((False,) if case[0] == "dropout-eval" else (True,))
    )
]


def make_input(shape, dtype, seed=0):
    """Random input whose entries are pairwise distinct by a margin (no max-pool ties/kinks)."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    values = (rng.permutation(size) - size / 2) / size * 4 + rng.uniform(-0.01, 0.01, size)
    return values.reshape(shape).astype(dtype)


@pytest.mark.parametrize(
    ("case", "training"), MODES, ids=[f"{c[0]}-{'train' if t else 'eval'}" for c, t in MODES]
)
def test_finite_difference_gradients(case, training):
    _, make, _, shape = case
    layer = make(np.float64)
    if not training:
        # Give eval-mode BatchNorm non-trivial running statistics first.
        for seed in range(3):
            layer.forward(make_input(shape, np.float64, seed) * 2 + 1, training=True)
    check_layer_gradients(layer, make_input(shape, np.float64), training=training)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(
    ("case", "training"), MODES, ids=[f"{c[0]}-{'train' if t else 'eval'}" for c, t in MODES]
)
def test_matches_torch(case, training, dtype):
    _, make, make_torch, shape = case
    steps = 3 if case[0] in STATEFUL else 1
    assert_layer_matches_torch(
        make(dtype), make_torch(), make_input(shape, dtype), training=training, steps=steps
    )


def test_dropout_gradient_uses_the_forward_mask():
    layer = pn.Dropout(0.4, rng=3)
    state = layer.rng.bit_generator.state

    def same_mask():
        layer.rng.bit_generator.state = state

    check_layer_gradients(layer, make_input((4, 6), np.float64), before_forward=same_mask)


def test_dropout_statistics_and_scale():
    layer = pn.Dropout(0.25, rng=0)
    x = np.ones((200, 500), dtype=np.float32)
    y = layer.forward(x, training=True)
    assert y.dtype == np.float32
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)  # inverted dropout keeps E[y] = x
    dx = layer.backward(np.full_like(x, 2.0))
    np.testing.assert_array_equal(dx != 0, kept)
    assert np.array_equal(layer.forward(x, training=False), x)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_float32_batchnorm_is_accurate_far_from_zero_mean(training, monkeypatch):
    """Channels whose mean is 300 times their spread (and one of constant value), in blocks of
    one sample: output, input gradient and parameter gradients within 2e-5 of float64."""
    from purenn.kernels import normalization

    monkeypatch.setattr(normalization, "BLOCK_BYTES", 1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4, 9, 7)) * [[[[0.1]], [[1.0]], [[0.0]], [[3.0]]]]
    x += np.array([30.0, -2.0, 5.0, 0.0])[:, None, None]
    dy = rng.standard_normal(x.shape)
    results = {}
    for dtype in (np.float64, np.float32):
        layer = pn.BatchNorm2D(4, dtype=dtype)
        layer.params["weight"][...] = [1.5, 0.5, 2.0, 1.0]
        layer.params["bias"][...] = [0.1, -0.2, 0.3, 0.0]
        if not training:
            layer.forward(x.astype(dtype) + 0.05, training=True)
        y = layer.forward(x.astype(dtype), training=training)
        dx = layer.backward(dy.astype(dtype))
        results[dtype] = [
            y,
            dx,
            layer.grads["weight"],
            layer.grads["bias"],
            *layer.buffers.values(),
        ]
        assert all(r.dtype == dtype for r in results[dtype])
    for exact, single in zip(results[np.float64], results[np.float32], strict=True):
        scale = max(1.0, float(np.abs(exact).max()))
        assert float(np.abs(single - exact).max()) < 2e-5 * scale


def test_batchnorm_running_statistics_use_unbiased_variance():
    layer = pn.BatchNorm1D(2, momentum=0.5, dtype=np.float64)
    x = np.array([[1.0, 10.0], [3.0, 14.0], [5.0, 12.0]])
    layer.forward(x, training=True)
    np.testing.assert_allclose(layer.buffers["running_mean"], 0.5 * x.mean(0))
    np.testing.assert_allclose(layer.buffers["running_var"], 0.5 + 0.5 * x.var(0, ddof=1))


@pytest.mark.parametrize("pool", [pn.MaxPool2D(2), pn.MaxPool2D(3, stride=1)], ids=repr)
def test_max_pool_ties_route_the_gradient_to_one_input_like_torch(pool):
    torch = pytest.importorskip("torch")
    # Plateaus of equal values (as after a ReLU): each window's gradient must go to one input.
    x = np.maximum(make_input((2, 3, 6, 6), np.float32), 0).round(0)
    y = pool.forward(x)
    dy = np.arange(y.size, dtype=np.float32).reshape(y.shape) + 1
    dx = pool.backward(dy)
    x_torch = torch.tensor(x, requires_grad=True)
    module = torch.nn.MaxPool2d(pool.kernel_size, pool.stride)
    module(x_torch).backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(dx, x_torch.grad.numpy())
    assert dx.sum() == dy.sum()
