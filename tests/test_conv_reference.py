"""The fast im2col Conv2D against the naive loop convolution, forward and backward."""

from __future__ import annotations

import numpy as np
import pytest
from naive_conv import naive_conv2d, naive_conv2d_backward

import purenn as pn


@pytest.mark.parametrize(
    ("in_ch", "out_ch", "kernel", "stride", "padding", "hw"),
    [
        (3, 4, 3, 1, 1, (8, 8)),
        (2, 3, 3, 2, 0, (9, 7)),
        (2, 2, (2, 3), (2, 1), (1, 0), (6, 5)),
        (1, 3, 5, 1, "same", (7, 6)),
        (3, 2, 4, 3, 2, (11, 10)),
        (3, 1, 3, 1, 1, (6, 6)),  # one output channel: W^T dy is an outer product
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
# 5 and 11: samples split over threads, small maps taken several samples per product
@pytest.mark.parametrize("batch", [2, 5, 11])
def test_conv_matches_naive_loops(in_ch, out_ch, kernel, stride, padding, hw, dtype, batch):
    rng = np.random.default_rng(0)
    layer = pn.Conv2D(in_ch, out_ch, kernel, stride=stride, padding=padding, rng=1, dtype=dtype)
    layer.params["bias"][...] = rng.standard_normal(out_ch)
    x = rng.standard_normal((batch, in_ch, *hw)).astype(dtype)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    weight, bias = layer.params["weight"], layer.params["bias"]

    y = layer.forward(x)
    expected = naive_conv2d(x, weight, bias, layer.stride, layer.pads)
    assert y.dtype == dtype
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)

    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    dx_ref, dw_ref, db_ref = naive_conv2d_backward(x, weight, dy, layer.stride, layer.pads)
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["weight"], dw_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.grads["bias"], db_ref, rtol=tol, atol=tol)


def test_naive_reference_computes_a_known_convolution():
    # A 3x3 box filter over a 4x4 ramp without padding: each output is 9 x its window centre.
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    y = naive_conv2d(x, np.ones((1, 1, 3, 3)), None, (1, 1), (0, 0, 0, 0))
    np.testing.assert_array_equal(y[0, 0], 9 * np.array([[5.0, 6.0], [9.0, 10.0]]))
