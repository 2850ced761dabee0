"""Winograd F(2x2, 3x3): the per-layer selector, the im2col fallback, and float32 accuracy.

Gradients and PyTorch parity of the Winograd path run with every other layer in
tests/test_layers.py (the conv-winograd-* cases), float64 and float32.
"""

from __future__ import annotations

import numpy as np
import pytest

import purenn as pn
from purenn.kernels import winograd as conv_winograd
from purenn.presets import build_preset


@pytest.mark.parametrize(
    ("kwargs", "chw", "expected"),
    [
        ({"kernel_size": 3, "padding": 1}, (64, 32, 32), "winograd"),  # the preset's 64->128
        ({"kernel_size": 3, "padding": "same"}, (128, 16, 16), "winograd"),
        ({"kernel_size": 3, "padding": 1}, (32, 64, 64), "im2col"),  # 32->128: C*O/(C+O) 25.6
        ({"kernel_size": 3, "padding": 1}, (3, 128, 128), "im2col"),  # too few channels
        ({"kernel_size": 3, "padding": 1}, (128, 3, 8), "im2col"),  # output too small
        ({"kernel_size": 3, "padding": 1, "stride": 2}, (128, 64, 64), "im2col"),
        ({"kernel_size": 3, "padding": 0}, (128, 64, 64), "im2col"),
        ({"kernel_size": 5, "padding": 2}, (128, 64, 64), "im2col"),
        ({"kernel_size": (3, 1), "padding": 1}, (128, 64, 64), "im2col"),
    ],
)
def test_auto_picks_winograd_only_where_it_applies_and_pays(kwargs, chw, expected, monkeypatch):
    monkeypatch.setattr(conv_winograd, "blas_kernel_favours_winograd", lambda: True)
    layer = pn.Conv2D(chw[0], 128, rng=0, algorithm="auto", **kwargs)
    assert layer.algorithm_for(chw) == expected
    forced = pn.Conv2D(chw[0], 128, rng=0, algorithm="im2col", **kwargs)
    assert forced.algorithm_for(chw) == "im2col"


@pytest.mark.parametrize(
    ("kernels", "expected"),
    [(["Haswell"], True), (["Zen", "Haswell"], True), (["SkylakeX"], False), ([], False)],
)
def test_winograd_only_with_the_blas_kernels_it_was_measured_faster_with(
    kernels, expected, monkeypatch
):
    import threadpoolctl

    info = [{"user_api": "blas", "architecture": k} for k in kernels]
    monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda: info)
    conv_winograd.blas_kernel_favours_winograd.cache_clear()
    try:
        assert conv_winograd.blas_kernel_favours_winograd() is expected
        layer = pn.Conv2D(128, 128, 3, padding=1, algorithm="auto")
        assert layer.algorithm_for((128, 16, 16)) == ("winograd" if expected else "im2col")
    finally:
        conv_winograd.blas_kernel_favours_winograd.cache_clear()


def test_auto_falls_back_to_im2col_and_both_agree(monkeypatch):
    monkeypatch.setattr(conv_winograd, "blas_kernel_favours_winograd", lambda: True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 64, 9, 9))
    dy = rng.standard_normal((2, 64, 5, 5))
    strided = pn.Conv2D(64, 64, 3, stride=2, padding=1, rng=1, dtype=np.float64)
    strided.forward(x)
    assert strided._algorithm == "im2col"
    strided.backward(dy)  # runs the im2col backward that its forward prepared
    dy = rng.standard_normal((2, 64, 9, 9))
    results = []
    for algorithm in ("auto", "im2col"):
        layer = pn.Conv2D(64, 64, 3, padding=1, rng=1, dtype=np.float64, algorithm=algorithm)
        y = layer.forward(x)
        results.append((layer._algorithm, y, layer.backward(dy), layer.grads["weight"].copy()))
    assert [r[0] for r in results] == ["winograd", "im2col"]
    for a, b in zip(results[0][1:], results[1][1:], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_algorithm_is_checked_and_kept_in_the_config():
    with pytest.raises(ValueError, match="algorithm must be one of"):
        pn.Conv2D(2, 2, 3, padding=1, algorithm="fft")
    with pytest.raises(ValueError, match="algorithm='winograd' needs a 3x3 kernel, stride 1"):
        pn.Conv2D(2, 2, 3, stride=2, padding=1, algorithm="winograd")
    strided = pn.Conv2D(2, 2, 3, stride=2, padding=1)
    strided.algorithm = "winograd"  # set after construction: checked before use
    with pytest.raises(ValueError, match="algorithm='winograd' needs a 3x3 kernel, stride 1"):
        strided.forward(np.zeros((1, 2, 4, 4), np.float32))
    model = pn.Sequential([pn.Conv2D(2, 2, 3, padding=1, algorithm="winograd", rng=0)])
    assert pn.Sequential.from_config(model.get_config()).layers[0].algorithm == "winograd"
    assert "algorithm" not in pn.Conv2D(2, 2, 3, padding=1).get_config()  # im2col, the default
    assert pn.Conv2D(2, 2, 3, padding=1).algorithm_for((2, 8, 8)) == "im2col"


def relative_to_scale(actual: np.ndarray, reference: np.ndarray) -> float:
    """Largest error relative to the largest magnitude of the reference."""
    return float(np.abs(actual - reference).max() / np.abs(reference).max())


def test_float32_winograd_error_on_the_presets_layers_is_below_1e_4():
    """Each conv of plantvillage-cnn (3->32 on 128, 32->64 on 64, 64->128 on 32, 128->128 on
    16), forced to Winograd in float32, against the float64 convolution (im2col in float64,
    exact up to 1e-16), on the activations the preset itself feeds that layer: a batch of 2
    smooth random "images" through the float64 preset's earlier layers (ReLU'd and pooled).
    Measured (largest over the four layers, relative to the largest reference magnitude):
    forward 6.1e-7, input gradient 4.7e-7, weight gradient 4.0e-7; the bound is 1e-4."""
    rng = np.random.default_rng(0)
    model = build_preset("plantvillage-cnn", num_classes=15, image_size=128, seed=0)
    model64 = model.astype(np.float64)
    # Smooth images like photographs: upsampled 16x16 noise, z-scored as the data pipeline does.
    x = np.kron(rng.standard_normal((2, 3, 16, 16)), np.ones((8, 8)))
    convs = [layer for layer in model64.layers if isinstance(layer, pn.Conv2D)]
    assert len(convs) == 4
    for conv in convs:
        conv.algorithm = "im2col"  # the float64 reference
    errors = []
    for layer in model64.layers:
        if isinstance(layer, pn.Conv2D):
            fast = pn.Conv2D(
                layer.in_channels, layer.out_channels, 3, padding=1, algorithm="winograd"
            )
            fast.params["weight"][...] = layer.params["weight"]
            fast.params["bias"][...] = layer.params["bias"]
            y64 = layer.forward(x)
            dy = rng.standard_normal(y64.shape)
            dx64 = layer.backward(dy)
            y32 = fast.forward(x.astype(np.float32))
            dx32 = fast.backward(dy.astype(np.float32))
            assert y32.dtype == dx32.dtype == np.float32
            errors.append(
                (
                    relative_to_scale(y32, y64),
                    relative_to_scale(dx32, dx64),
                    relative_to_scale(fast.grads["weight"], layer.grads["weight"]),
                )
            )
        x = layer.forward(x, training=False)
        if isinstance(layer, pn.MaxPool2D) and len(errors) == 4:
            break
    worst = np.max(errors, axis=0)
    assert worst.max() < 1e-4, errors
    assert worst.min() > 0  # float32 really ran: some rounding is expected


def test_transforms_are_adjoint_pairs():
    """<transform_output(m), dy> == <m, transform_output_grad(dy)> (what the backward relies on),
    and dW from the Winograd domain matches the direct formula on a small case."""
    rng = np.random.default_rng(1)
    n, o, h, w = 2, 3, 5, 6
    th, tw = conv_winograd.tiles(h, w)
    m = rng.standard_normal((16, o, n * th * tw))
    dy = rng.standard_normal((n, o, h, w))
    left = np.vdot(conv_winograd.transform_output(m, (n, o, h, w)), dy)
    right = np.vdot(m, conv_winograd.transform_output_grad(dy))
    assert left == pytest.approx(right, rel=1e-12)
    du = rng.standard_normal((16, o, 4))
    g = rng.standard_normal((o, 4, 3, 3))
    assert np.vdot(conv_winograd.transform_filter(g), du) == pytest.approx(
        np.vdot(g, conv_winograd.filter_grad(du, o, 4)), rel=1e-12
    )
