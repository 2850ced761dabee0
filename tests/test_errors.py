"""Bad arguments and bad inputs raise ValueError naming the argument and what was received."""

from __future__ import annotations

import numpy as np
import pytest

import purenn as pn


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: pn.Dense(-3, 4), "in_features=-3"),
        (lambda: pn.Dense(3, 0), "out_features=0"),
        (lambda: pn.Dense(3, 2.5), "out_features=2.5"),
        (lambda: pn.Dense(3, 4, init="zeros"), "init='zeros'"),
        (lambda: pn.Dense(3, 4, dtype=np.int32), "dtype=int32"),
        (lambda: pn.Conv2D(0, 4, 3), "in_channels=0"),
        (lambda: pn.Conv2D(3, 4, -1), "kernel_size=-1"),
        (lambda: pn.Conv2D(3, 4, 3, stride=0), "stride=0"),
        (lambda: pn.Conv2D(3, 4, 3, padding=-1), "padding=-1"),
        (lambda: pn.Conv2D(3, 4, 3, padding="valid-ish"), "padding='valid-ish'"),
        (lambda: pn.Conv2D(3, 4, 3, stride=2, padding="same"), "stride=(2, 2)"),
        (lambda: pn.MaxPool2D(0), "kernel_size=0"),
        (lambda: pn.MaxPool2D(2, stride=-2), "stride=-2"),
        (lambda: pn.AvgPool2D((2, 2, 2)), "kernel_size=(2, 2, 2)"),
        (lambda: pn.Dropout(1.0), "p=1.0"),
        (lambda: pn.Dropout(-0.1), "p=-0.1"),
        (lambda: pn.BatchNorm2D(0), "num_features=0"),
        (lambda: pn.BatchNorm1D(3, momentum=1.5), "momentum=1.5"),
        (lambda: pn.BatchNorm1D(3, eps=0), "eps=0"),
        (lambda: pn.LeakyReLU(-1), "negative_slope=-1"),
    ],
)
def test_bad_constructor_arguments_name_the_argument_and_value(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()


@pytest.mark.parametrize(
    ("layer", "x", "expected", "received"),
    [
        (pn.Dense(4, 2), np.zeros((3, 5)), "(N, 4)", "(3, 5)"),
        (pn.Dense(4, 2), np.zeros((3, 2, 2)), "(N, 4)", "(3, 2, 2)"),
        (pn.Conv2D(3, 2, 3), np.zeros((1, 1, 8, 8)), "(N, 3, *, *)", "(1, 1, 8, 8)"),
        (pn.Conv2D(3, 2, 3), np.zeros((3, 8, 8)), "(N, 3, *, *)", "(3, 8, 8)"),
        (pn.BatchNorm2D(4), np.zeros((2, 3, 4, 4)), "(N, 4, *, *)", "(2, 3, 4, 4)"),
        (pn.MaxPool2D(2), np.zeros((2, 3)), "(N, *, *, *)", "(2, 3)"),
    ],
)
def test_wrong_input_shape_names_expected_and_received(layer, x, expected, received):
    with pytest.raises(ValueError) as info:
        layer.forward(x)
    assert expected in str(info.value) and received in str(info.value)


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (pn.Conv2D(1, 1, 5, padding=1), (1, 1, 2, 6)),
        (pn.MaxPool2D(3), (1, 1, 2, 2)),
        (pn.AvgPool2D(4), (1, 1, 8, 3)),
    ],
)
def test_kernel_larger_than_padded_input(layer, shape):
    with pytest.raises(ValueError, match="kernel_size .* larger than the"):
        layer.forward(np.zeros(shape, dtype=np.float32))


ALL_LAYERS = [
    (pn.Dense(6, 3), (2, 6)),
    (pn.Dense(6, 3, weight_norm=True), (2, 6)),
    (pn.Conv2D(2, 3, 3, padding=1), (2, 2, 5, 5)),
    (pn.Conv2D(2, 3, 3, padding=1, weight_norm=True), (2, 2, 5, 5)),
    (pn.MaxPool2D(2), (2, 2, 4, 4)),
    (pn.MaxPool2D(3, stride=1), (2, 2, 4, 4)),
    (pn.AvgPool2D(2), (2, 2, 4, 4)),
    (pn.GlobalAvgPool2D(), (2, 2, 4, 4)),
    (pn.Flatten(), (2, 2, 4, 4)),
    (pn.Dropout(0.5), (2, 6)),
    (pn.BatchNorm1D(6), (2, 6)),
    (pn.BatchNorm2D(2), (2, 2, 4, 4)),
    (pn.ReLU(), (2, 6)),
    (pn.LeakyReLU(), (2, 6)),
    (pn.Sigmoid(), (2, 6)),
    (pn.Tanh(), (2, 6)),
    (pn.Softmax(), (2, 6)),
]


@pytest.mark.parametrize(("layer", "shape"), ALL_LAYERS, ids=[repr(lyr) for lyr, _ in ALL_LAYERS])
@pytest.mark.parametrize("training", [True, False])
def test_float32_in_gives_float32_out(layer, shape, training):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y = layer.forward(x, training=training)
    assert y.dtype == np.float32
    dx = layer.backward(np.ones_like(y))
    assert dx.dtype == np.float32
    for name, grad in layer.grads.items():
        assert grad.dtype == np.float32, name


def test_sequential_rejects_non_layers_and_mismatched_stacks():
    with pytest.raises(ValueError, match=r"layers\[1\] must be a purenn Layer"):
        pn.Sequential([pn.ReLU(), "dense"])
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 10\)"):
        pn.Sequential([pn.Flatten(), pn.Dense(10, 2)], input_shape=(3, 4, 4))
