"""A deliberately naive loop convolution: the reference the fast im2col Conv2D is checked against.

Written straight from the definition ``y[n, o, p, q] = b[o] + sum_{c,i,j} w[o, c, i, j] *
xpad[n, c, p*sh + i, q*sw + j]``, one output element at a time. Also used by the conv benchmark.
"""

from __future__ import annotations

import numpy as np


def zero_padded(x, pads):
    """(N, C, H, W) x inside a zero border of (top, bottom, left, right) pixels."""
    n, c, h, w = x.shape
    top, bottom, left, right = pads
    xp = np.zeros((n, c, h + top + bottom, w + left + right), dtype=x.dtype)
    xp[:, :, top : top + h, left : left + w] = x
    return xp


def naive_conv2d(x, weight, bias, stride, pads, outputs=None):
    """Loop convolution over (N, C, H, W) ``x`` with (O, C, kh, kw) ``weight``.

    ``pads`` is (top, bottom, left, right). ``outputs`` optionally restricts the work to a list of
    (n, o, p, q) positions (the benchmark times a sample and extrapolates); the others stay zero.
    """
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    sh, sw = stride
    xp = zero_padded(x, pads)
    out_h = (xp.shape[2] - kh) // sh + 1
    out_w = (xp.shape[3] - kw) // sw + 1
    y = np.zeros((n, o, out_h, out_w), dtype=x.dtype)
    if outputs is None:
        outputs = np.ndindex(n, o, out_h, out_w)
    for b, oc, p, q in outputs:
        total = 0.0 if bias is None else bias[oc]
        for ci in range(c):
            for i in range(kh):
                for j in range(kw):
                    total += weight[oc, ci, i, j] * xp[b, ci, p * sh + i, q * sw + j]
        y[b, oc, p, q] = total
    return y


def naive_conv2d_backward(x, weight, dy, stride, pads, outputs=None):
    """Loop gradients of :func:`naive_conv2d`: (dx, dweight, dbias), one product at a time.

    ``outputs`` optionally restricts the loop to some (n, o, p, q) output positions, as above.
    """
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    sh, sw = stride
    top, bottom, left, right = pads
    xp = zero_padded(x, pads)
    dxp = np.zeros_like(xp)
    dweight = np.zeros_like(weight)
    for b, oc, p, q in np.ndindex(*dy.shape) if outputs is None else outputs:
        g = dy[b, oc, p, q]
        for ci in range(c):
            for i in range(kh):
                for j in range(kw):
                    dweight[oc, ci, i, j] += g * xp[b, ci, p * sh + i, q * sw + j]
                    dxp[b, ci, p * sh + i, q * sw + j] += g * weight[oc, ci, i, j]
    dbias = dy.sum(axis=(0, 2, 3))
    return dxp[:, :, top : top + h, left : left + w], dweight, dbias
