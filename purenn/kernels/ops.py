"""Pure array functions shared by the layers: window geometry, im2col / col2im, (log-)softmax.

Everything here is stateless. Image tensors are NCHW. im2col and col2im split the batch over
threads (``purenn.kernels.parallel``), which is exact: each thread copies or adds its own samples.
"""

from __future__ import annotations

import numpy as np

from purenn.kernels.parallel import over_batch


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


def _offset_span(offset: int, size: int, out: int, stride: int, pad: int) -> tuple[int, int, int]:
    """Which outputs of one kernel offset read real (not padding) input, along one axis.

    Output position p reads input row ``offset + stride * p - pad``. Returns (p_start, p_stop,
    first input row) for the positions whose row lies in [0, size); p_start == p_stop if none.
    """
    p_start = max(0, -((offset - pad) // stride))  # ceil((pad - offset) / stride)
    p_stop = min(out, (size - 1 + pad - offset) // stride + 1)
    p_stop = max(p_start, p_stop)
    return p_start, p_stop, offset + stride * p_start - pad


def _offset_windows(shape, kernel, stride, pads):
    """For each kernel offset (i, j): the output box reading real input and that input's view.

    Yields (i, j, rows, cols, source) with ``rows``/``cols`` slices of the (Ho, Wo) output grid
    and ``source`` the matching strided slice of the unpadded (N, C, H, W) input.
    """
    _, _, h, w = shape
    top, bottom, left, right = pads
    out_h = output_size(h, kernel[0], stride[0], top + bottom)
    out_w = output_size(w, kernel[1], stride[1], left + right)
    for i in range(kernel[0]):
        p0, p1, r0 = _offset_span(i, h, out_h, stride[0], top)
        for j in range(kernel[1]):
            q0, q1, c0 = _offset_span(j, w, out_w, stride[1], left)
            source = (
                slice(None),
                slice(None),
                slice(r0, r0 + stride[0] * (p1 - p0 - 1) + 1, stride[0]),
                slice(c0, c0 + stride[1] * (q1 - q0 - 1) + 1, stride[1]),
            )
            yield i, j, slice(p0, p1), slice(q0, q1), source


def im2col(
    x: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pads: tuple[int, int, int, int] = (0, 0, 0, 0),
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Gather every sliding window of an NCHW batch into one column matrix per sample.

    Zero padding is implicit: each kernel offset copies the outputs that see real input and
    zero-fills the rest, so no padded copy of x is made.

    Args:
        x: (N, C, H, W) input.
        kernel: (kh, kw).
        stride: (sh, sw).
        pads: zero padding (top, bottom, left, right).
        out: optional preallocated (N, C * kh * kw, Ho * Wo) array of x's dtype.

    Returns:
        (N, C * kh * kw, Ho * Wo) with ``col[n, (c, i, j), (p, q)] = xpad[n, c, i + sh*p,
        j + sw*q]``, so that a convolution is the batched product ``W.reshape(O, K) @ col``.
        Built with kh * kw strided block copies (one per kernel offset), never a pixel loop.
    """
    n, c, h, w = x.shape
    kh, kw = kernel
    top, bottom, left, right = pads
    out_h = output_size(h, kh, stride[0], top + bottom)
    out_w = output_size(w, kw, stride[1], left + right)
    if out is None:
        out = np.empty((n, c * kh * kw, out_h * out_w), dtype=x.dtype)
    col = out.reshape(n, c, kh, kw, out_h, out_w)
    windows = list(_offset_windows(x.shape, kernel, stride, pads))

    def gather(batch: slice) -> None:
        for i, j, rows, columns, source in windows:
            block = col[batch, :, i, j]
            block[:, :, rows, columns] = x[batch][source]
            # The border of this offset's block reads padding: zero it (four thin strips).
            block[:, :, : rows.start] = 0
            block[:, :, rows.stop :] = 0
            block[:, :, :, : columns.start] = 0
            block[:, :, :, columns.stop :] = 0

    over_batch(n, gather, out.nbytes)
    return out


def col2im(
    col: np.ndarray,
    input_shape: tuple[int, int, int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pads: tuple[int, int, int, int] = (0, 0, 0, 0),
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Adjoint of :func:`im2col`: add column gradients back onto the (unpadded) input.

    Args:
        col: (N, C * kh * kw, Ho * Wo) gradient with respect to the column matrix.
        input_shape: (N, C, H, W) of the unpadded input.
        out: optional (N, C, H, W) array of col's dtype to write the result into.

    Returns:
        (N, C, H, W) with ``dx[n, c, i + sh*p - top, j + sw*q - left] += dcol[n, (c, i, j),
        (p, q)]`` summed over all windows; entries that fall on padding are dropped. One strided
        addition per kernel offset; an offset that covers the whole input (the centre of a
        stride-1 'same' convolution) initialises dx instead of a zero fill.
    """
    n, c, h, w = input_shape
    kh, kw = kernel
    top, bottom, left, right = pads
    out_h = output_size(h, kh, stride[0], top + bottom)
    out_w = output_size(w, kw, stride[1], left + right)
    cols = col.reshape(n, c, kh, kw, out_h, out_w)
    windows = list(_offset_windows(input_shape, kernel, stride, pads))
    covering = [
        k
        for k, (_, _, rows, columns, _) in enumerate(windows)
        if stride == (1, 1) and rows.stop - rows.start == h and columns.stop - columns.start == w
    ]
    first = windows.pop(covering[0]) if covering else None
    grad = np.empty(input_shape, dtype=col.dtype) if out is None else out

    def scatter(batch: slice) -> None:
        if first is None:
            grad[batch] = 0
        else:
            i, j, rows, columns, _ = first
            grad[batch] = cols[batch, :, i, j, rows, columns]
        for i, j, rows, columns, source in windows:
            grad[batch][source] += cols[batch, :, i, j, rows, columns]

    over_batch(n, scatter, col.nbytes)
    return grad


def maxpool2x2(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """2x2 stride-2 max-pooling of (..., H, W) into ``out`` (..., H // 2, W // 2), x's dtype.

    First the maximum of row pairs (whole contiguous rows), then of column pairs on the
    half-height result; an odd last row or column is outside every window, as in PyTorch.
    """
    h, w = out.shape[-2] * 2, out.shape[-1] * 2
    row_max = np.empty(x.shape[:-2] + (h // 2, x.shape[-1]), dtype=x.dtype)
    np.maximum(x[..., 0:h:2, :], x[..., 1:h:2, :], out=row_max)
    return np.maximum(row_max[..., 0:w:2], row_max[..., 1:w:2], out=out)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``, shifted by the maximum so ``exp`` cannot overflow; keeps dtype."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


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
