"""Pure array functions shared by the layers: window geometry, im2col / col2im, padding.

Everything here is stateless and imports only NumPy. Image tensors are NCHW.
"""

from __future__ import annotations

import numpy as np


def pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    """Normalise an int or a 2-sequence of ints to a pair, checking both are positive.

    Raises:
        ValueError: naming ``name`` and the value received, if it is not one or two positive ints.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        result = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        result = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or a pair of ints, received: {name}={value!r}")
    if min(result) < 1:
        raise ValueError(f"{name} must be positive, received: {name}={value!r}")
    return result


def output_size(size: int, kernel: int, stride: int, pad_total: int = 0) -> int:
    """Number of window positions along one axis: ``(size + pad_total - kernel) // stride + 1``."""
    return (size + pad_total - kernel) // stride + 1


def window_slices(
    offset_h: int, offset_w: int, out_h: int, out_w: int, stride: tuple[int, int]
) -> tuple[slice, slice, slice, slice]:
    """Index selecting, for one kernel offset, the input pixel seen by every output position.

    ``x[window_slices(i, j, Ho, Wo, (sh, sw))]`` has shape (N, C, Ho, Wo) and holds
    ``x[n, c, i + sh * p, j + sw * q]`` at ``[n, c, p, q]``: a strided view, no copy.
    """
    sh, sw = stride
    return (
        slice(None),
        slice(None),
        slice(offset_h, offset_h + sh * (out_h - 1) + 1, sh),
        slice(offset_w, offset_w + sw * (out_w - 1) + 1, sw),
    )


def unpad_nchw(x: np.ndarray, pads: tuple[int, int, int, int]) -> np.ndarray:
    """Crop (top, bottom, left, right) from the spatial axes of an NCHW array (a view)."""
    top, bottom, left, right = pads
    if not any(pads):
        return x
    h, w = x.shape[2], x.shape[3]
    return x[:, :, top : h - bottom, left : w - right]


def im2col(
    x_padded: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Gather every sliding window of a padded NCHW batch into one column matrix per sample.

    Args:
        x_padded: (N, C, Hp, Wp) input, already padded.
        kernel: (kh, kw).
        stride: (sh, sw).
        out: optional preallocated (N, C * kh * kw, Ho * Wo) array of x_padded's dtype.

    Returns:
        (N, C * kh * kw, Ho * Wo) with ``col[n, (c, i, j), (p, q)] = x[n, c, i + sh*p, j + sw*q]``,
        so that a convolution is the batched product ``W.reshape(O, C*kh*kw) @ col``. Built
        with kh * kw strided block copies (one per kernel offset), never a loop over pixels.
    """
    n, c, hp, wp = x_padded.shape
    kh, kw = kernel
    out_h, out_w = output_size(hp, kh, stride[0]), output_size(wp, kw, stride[1])
    if out is None:
        out = np.empty((n, c * kh * kw, out_h * out_w), dtype=x_padded.dtype)
    col = out.reshape(n, c, kh, kw, out_h, out_w)
    for i in range(kh):
        for j in range(kw):
            col[:, :, i, j] = x_padded[window_slices(i, j, out_h, out_w, stride)]
    return out


def col2im(
    col: np.ndarray,
    padded_shape: tuple[int, int, int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
) -> np.ndarray:
    """Adjoint of :func:`im2col`: scatter-add column gradients back onto the padded input.

    Args:
        col: (N, C * kh * kw, Ho * Wo) gradient with respect to the column matrix.
        padded_shape: (N, C, Hp, Wp) of the padded input.

    Returns:
        (N, C, Hp, Wp): ``dx[n, c, i + sh*p, j + sw*q] += dcol[n, (c, i, j), (p, q)]`` summed over
        all windows, computed as kh * kw strided slice additions (one per kernel offset).
    """
    n, c, hp, wp = padded_shape
    kh, kw = kernel
    out_h, out_w = output_size(hp, kh, stride[0]), output_size(wp, kw, stride[1])
    cols = col.reshape(n, c, kh, kw, out_h, out_w)
    grad = np.zeros(padded_shape, dtype=col.dtype)
    for i in range(kh):
        for j in range(kw):
            grad[window_slices(i, j, out_h, out_w, stride)] += cols[:, :, i, j]
    return grad


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax.

    ``log_softmax(x) = x - logsumexp(x)``, with ``logsumexp(x) = m + log(sum(exp(x - m)))`` and
    ``m = max(x)``, so ``exp`` never sees a positive argument and cannot overflow.

    Args:
        x: Floating array of any shape.
        axis: Axis over which the softmax normalises.

    Returns:
        Array of ``x``'s shape and dtype.
    """
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
