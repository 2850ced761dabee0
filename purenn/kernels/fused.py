"""Inference kernels: a convolution with its bias, ReLU and 2x2 max-pooling in one pass.

The eval-mode fast path (``purenn.nn.inference``) runs a convolution and the element-wise
layers after it as one job per band of output rows. For a sample's band of ``b`` output rows
(P = b * Wo positions, K = C * kh * kw):

    xpad      (C, H + pads, W + pads)   the sample, zero-padded once per sample
    col       (K, P)                    the band's receptive fields, one strided copy
    acc       (O, P) = W (O, K) @ col   one single-threaded GEMM (per group: (G, O/G, K/G) @
                                        (G, K/G, P), as in training)
    y         max over 2x2 windows of acc, then + bias, then max(., 0)

Max-pooling commutes with adding a per-channel constant and with ReLU (both monotone), so bias
and ReLU run on the pooled quarter of the elements. A band's column matrix is kept under
``BAND_BYTES``, so it is written, multiplied and read while in the core's cache; the bands of
the batch are split over purenn's threads, so one image keeps both cores busy too. Nothing is
kept for a backward pass.

A small map makes a thin GEMM: at 4x4 a sample's band has P = 16 columns, and BLAS multiplies
such a product at a third of its speed on 128 columns. Where a whole sample's band has fewer
than ``GROUP_COLUMNS`` columns, a band takes several whole samples instead: col is (K, S, P)
for S samples, one GEMM gives acc (O, S, P), and the pooling (or a copy) writes it back as
(S, O, ...).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from purenn.kernels.ops import output_size
from purenn.kernels.parallel import num_threads, over_batch, over_parts
from purenn.kernels.workspace import Workspace

#: Largest column matrix plus GEMM output of one band, in bytes: about half an L2 cache.
BAND_BYTES = 1 << 19
#: A batch is cut into at least this many bands (when it has the rows): 2 per core of 2 cores.
MIN_BANDS = 4
#: Whole samples share a band until it has this many GEMM columns (small maps).
GROUP_COLUMNS = 128
#: A convolution of fewer FLOPs runs in the calling thread: handing bands to another thread and
#: waiting for it took 140 us on an idle 2-core Intel Xeon, a quarter of such a layer's time.
MIN_PARALLEL_FLOPS = 1 << 25


def band_rows(k: int, out_w: int, out_h: int, n: int, itemsize: int, pool: bool) -> int:
    """Output rows per band: col and the GEMM's output, (k, rows * out_w) together, stay under
    BAND_BYTES (k: im2col rows plus output channels); even rows if pooled.

    A batch of fewer than MIN_BANDS bands is cut finer, so one image keeps the cores busy. The
    bands never depend on the thread count: neither do the results, bit for bit.
    """
    rows = max(1, BAND_BYTES // (k * out_w * itemsize))
    per_sample = -(-MIN_BANDS // n)
    rows = min(rows, -(-out_h // per_sample))
    if pool:
        rows = max(2, rows + rows % 2)
    return min(rows, out_h)


def samples_per_band(k: int, positions: int, n: int, itemsize: int) -> int:
    """Whole samples per band for a map of ``positions`` outputs a sample (1: bands of rows).

    Enough samples for ``GROUP_COLUMNS`` GEMM columns, within ``BAND_BYTES`` (k: im2col rows
    plus output channels) and leaving the batch at least ``MIN_BANDS`` bands where it has them;
    like the bands, independent of the thread count.
    """
    wanted = -(-GROUP_COLUMNS // positions)
    fitting = BAND_BYTES // (k * positions * itemsize)
    return max(1, min(wanted, fitting, -(-n // MIN_BANDS)))


def maxpool2x2(x: np.ndarray, out: np.ndarray, row_max: np.ndarray | None = None) -> np.ndarray:
    """2x2 stride-2 max-pooling of (..., H, W) into ``out`` (..., H // 2, W // 2).

    First the maximum of row pairs (whole contiguous rows), then of column pairs on the
    half-height result; an odd last row or column is outside every window, as in PyTorch.

    Args:
        x: (..., H, W).
        out: (..., H // 2, W // 2), x's dtype.
        row_max: optional (..., H // 2, W) work array.
    """
    h, w = out.shape[-2] * 2, out.shape[-1] * 2
    if row_max is None:
        row_max = np.empty(x.shape[:-2] + (h // 2, x.shape[-1]), dtype=x.dtype)
    np.maximum(x[..., 0:h:2, :], x[..., 1:h:2, :], out=row_max)
    return np.maximum(row_max[..., 0:w:2], row_max[..., 1:w:2], out=out)


def channel_bias_relu(y: np.ndarray, bias: np.ndarray | None, relu: bool) -> None:
    """In place on one sample's (C, ...) block: ``y[c] += bias[c]``, then ReLU if asked."""
    if bias is not None:
        np.add(y, bias.reshape((-1,) + (1,) * (y.ndim - 1)), out=y)
    if relu:
        np.maximum(y, 0, out=y)


def finish(y: np.ndarray, bias: np.ndarray | None, relu: bool, pool: bool) -> np.ndarray:
    """``maxpool2x2(relu(y + bias))`` of an (N, C, H, W) batch, per sample over the threads.

    For a convolution computed otherwise (Winograd); returns y itself when nothing is pooled.
    """
    n, c, h, w = y.shape
    out = np.empty((n, c, h // 2, w // 2), dtype=y.dtype) if pool else y

    def samples(batch: slice) -> None:
        for i in range(batch.start, batch.stop):
            if pool:
                maxpool2x2(y[i], out[i])
            channel_bias_relu(out[i], bias, relu)

    over_batch(n, samples, y.nbytes)
    return out


def padded(samples: np.ndarray, pads: tuple[int, int, int, int], out: np.ndarray) -> np.ndarray:
    """(..., H, W) -> ``out`` (..., H + top + bottom, W + left + right) with zero borders."""
    top, bottom, left, right = pads
    h, w = samples.shape[-2:]
    out[..., :top, :] = 0
    out[..., top + h :, :] = 0
    out[..., :left] = 0
    out[..., left + w :] = 0
    out[..., top : top + h, left : left + w] = samples
    return out


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    groups: int = 1,
    relu: bool = False,
    pool: bool = False,
    workspace: Workspace | None = None,
) -> np.ndarray:
    """``maxpool2x2(relu(conv(x, weight) + bias))``, the pooling and ReLU each when asked.

    Args:
        x: (N, C, H, W) input, float32 or float64.
        weight: (O, C / groups, kh, kw), x's dtype.
        bias: (O,) or None.
        stride: (sh, sw). pads: zero padding (top, bottom, left, right).
        groups: G; the C input and O output channels split into G groups.
        relu: apply max(., 0). pool: 2x2 stride-2 max-pooling (floor, as PyTorch).
        workspace: keeps the per-thread buffers across calls (new ones when None).

    Returns:
        (N, O, Ho, Wo), or (N, O, Ho // 2, Wo // 2) when pooled; a new array.
    """
    workspace = workspace or Workspace()
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    top, bottom, left, right = pads
    out_h = output_size(h, kh, stride[0], top + bottom)
    out_w = output_size(w, kw, stride[1], left + right)
    rows_needed = 2 * (out_h // 2) if pool else out_h  # an odd last row is pooled away
    k = c * kh * kw
    rows = band_rows(k + o, out_w, rows_needed, n, x.itemsize, pool)
    group = 1
    if rows == rows_needed:
        group = samples_per_band(k + o, rows_needed * out_w, n, x.itemsize)
    bands = -(-rows_needed // rows)  # per sample; or, with group > 1, one per `group` samples
    y_h, y_w = (out_h // 2, out_w // 2) if pool else (out_h, out_w)
    y = np.empty((n, o, y_h, y_w), dtype=x.dtype)
    matrix = weight.reshape(o, k // groups)
    if groups > 1:
        matrix = matrix.reshape(groups, o // groups, k // groups)
    pad_shape = (group, c, h + top + bottom, w + left + right)

    def grouped(block: np.ndarray) -> np.ndarray:
        return block if groups == 1 else block.reshape(groups, -1, block.shape[-1])

    def columns(source: np.ndarray, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """im2col of output rows [start, stop) of the (S, C, H', W') source: (K, S * P) in out."""
        # windows[c, a, b, s, p, q] = source[s, c, sh * p + a, sw * q + b]
        sn, sc, sy, sx = source.strides
        windows = as_strided(
            source,
            (c, kh, kw, len(source), out_h, out_w),
            (sc, sy, sx, sn, stride[0] * sy, stride[1] * sx),
            writeable=False,
        )
        col = out[: k * len(source) * (stop - start) * out_w]
        np.copyto(
            col.reshape(c, kh, kw, len(source), stop - start, out_w), windows[..., start:stop, :]
        )
        return col.reshape(k, -1)

    def run_rows(chunks: slice, slot: int) -> None:
        """Bands of rows of one sample each, the GEMM straight into y unless pooled."""
        col_flat = workspace.get(("col", slot), (k * rows * out_w,), x.dtype)
        acc_flat = workspace.get(("acc", slot), (o * rows * out_w,), x.dtype) if pool else None
        row_max = workspace.get(("row_max", slot), (o, rows // 2, out_w), x.dtype) if pool else None
        for i in range(chunks.start // bands, (chunks.stop - 1) // bands + 1):
            first = max(chunks.start - i * bands, 0)
            last = min(chunks.stop - i * bands, bands)  # this thread's bands of sample i
            source = x[i : i + 1]
            if any(pads):
                source = padded(source, pads, workspace.get(("pad", slot), pad_shape, x.dtype))
            for band in range(first, last):
                start, stop = band * rows, min(band * rows + rows, rows_needed)
                p = (stop - start) * out_w
                col = columns(source, start, stop, col_flat)
                if pool:
                    acc = acc_flat[: o * p].reshape(o, stop - start, out_w)
                    np.matmul(matrix, grouped(col), out=grouped(acc.reshape(o, p)))
                    target = y[i, :, start // 2 : stop // 2]
                    maxpool2x2(acc, target, row_max[:, : (stop - start) // 2])
                else:
                    # straight into the band's (O, P) block of y (row stride Ho * Wo: BLAS takes it)
                    block = y[i].reshape(o, -1)[:, start * out_w : stop * out_w]
                    np.matmul(matrix, grouped(col), out=grouped(block))
            # bias and ReLU once over the rows of sample i this thread wrote, still in cache
            low, high = first * rows, min(last * rows, rows_needed)
            if pool:
                low, high = low // 2, high // 2
            channel_bias_relu(y[i, :, low:high], bias, relu)

    def run_samples(chunks: slice, slot: int) -> None:
        """Bands of ``group`` whole samples: (O, S, P) out of one GEMM, written as (S, O, P)."""
        p = rows_needed * out_w
        col_flat = workspace.get(("col", slot), (k * group * p,), x.dtype)
        acc_flat = workspace.get(("acc", slot), (o * group * p,), x.dtype)
        row_max = workspace.get(("row_max", slot), (o, group, rows // 2, out_w), x.dtype)
        for band in range(chunks.start, chunks.stop):
            first, last = band * group, min(band * group + group, n)
            source = x[first:last]
            if any(pads):
                pad = workspace.get(("pad", slot), pad_shape, x.dtype)[: last - first]
                source = padded(source, pads, pad)
            col = columns(source, 0, rows_needed, col_flat)
            acc = acc_flat[: o * col.shape[1]].reshape(o, last - first, rows_needed, out_w)
            np.matmul(matrix, grouped(col), out=grouped(acc.reshape(o, -1)))
            target = y[first:last].transpose(1, 0, 2, 3)  # (O, S, ...): y's own memory
            if pool:
                maxpool2x2(acc, target, row_max[:, : last - first])
            else:
                np.copyto(target, acc)
            channel_bias_relu(target, bias, relu)

    threads = (
        num_threads() if 2 * o * (k // groups) * out_h * out_w * n >= MIN_PARALLEL_FLOPS else 1
    )
    if group > 1:
        over_parts(-(-n // group), threads, run_samples)
    else:
        over_parts(n * bands, threads, run_rows)
    return y
