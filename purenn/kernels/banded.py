"""The channels-first convolution in bands: im2col and one GEMM per band, in cache.

Conv2D's forward (training, and ``Conv2D.infer``) runs :func:`conv2d`. For a sample's band of
``b`` output rows (P = b * Wo positions, K = C * kh * kw):

    xpad      (C, H + pads, W + pads)   the sample, zero-padded once per sample
    col       (K, P)                    the band's receptive fields, one strided copy
    y         (O, P) = W (O, K) @ col   one single-threaded GEMM straight into the band's block
                                        of y (per group: (G, O/G, K/G) @ (G, K/G, P))
    y         + bias, once per sample over the rows a thread wrote

A band's column matrix is kept under ``BAND_BYTES``, so it is written, multiplied and read while
in the core's cache; the bands of the batch are split over purenn's threads, so one image keeps
both cores busy too.

A small map makes a thin GEMM: at 4x4 a sample's band has P = 16 columns, and BLAS multiplies
such a product at a third of its speed on 128 columns. Where a whole sample's band has fewer
than ``GROUP_COLUMNS`` columns, a band takes several whole samples instead: col is (K, S, P)
for S samples, one GEMM gives acc (O, S, P), copied back as (S, O, P).

The eval-mode fast path has its own kernel, channels-last with ReLU and pooling fused in
(:mod:`purenn.kernels.channels_last`).
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


def band_rows(k: int, out_w: int, out_h: int, n: int, itemsize: int) -> int:
    """Output rows per band: col and the GEMM's output, (k, rows * out_w) together, stay under
    BAND_BYTES (k: im2col rows plus output channels).

    A batch of fewer than MIN_BANDS bands is cut finer, so one image keeps the cores busy. The
    bands never depend on the thread count: neither do the results, bit for bit.
    """
    rows = max(1, BAND_BYTES // (k * out_w * itemsize))
    per_sample = -(-MIN_BANDS // n)
    return min(rows, -(-out_h // per_sample), out_h)


def samples_per_band(k: int, positions: int, n: int, itemsize: int) -> int:
    """Whole samples per band for a map of ``positions`` outputs a sample (1: bands of rows).

    Enough samples for ``GROUP_COLUMNS`` GEMM columns, within ``BAND_BYTES`` (k: im2col rows
    plus output channels) and leaving the batch at least ``MIN_BANDS`` bands where it has them;
    like the bands, independent of the thread count.
    """
    wanted = -(-GROUP_COLUMNS // positions)
    fitting = BAND_BYTES // (k * positions * itemsize)
    return max(1, min(wanted, fitting, -(-n // MIN_BANDS)))


def add_channel_bias(y: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """In place: ``y[:, c] += bias[c]`` for an (N, C, H, W) batch, split over the threads.

    For a convolution computed otherwise (Winograd); returns y.
    """
    if bias is not None:
        per_channel = bias.reshape(-1, 1, 1)
        over_batch(len(y), lambda rows: np.add(y[rows], per_channel, out=y[rows]), y.nbytes)
    return y


def padded_rows(
    samples: np.ndarray,
    rows: tuple[int, int],
    columns: tuple[int, int],
    out: np.ndarray,
    channels_last: bool = False,
) -> np.ndarray:
    """Input rows [rows[0], rows[1]) of ``samples``, which may run past the map's top and
    bottom, with zeros there and ``columns`` = (left, right) zero columns, into ``out``.

    ``samples`` is (S, C, H, W) and ``out`` (S, C, R', W + left + right), or both channels-last:
    (S, H, W, C) and (S, R', W + left + right, C). Rows (-top, H + bottom) pad a whole map.
    """

    def at(row_range: slice, column_range: slice) -> tuple:
        lead = (slice(None),) if channels_last else (slice(None), slice(None))
        return lead + (row_range, column_range)

    start, stop = rows
    left, _ = columns
    h, w = samples.shape[1:3] if channels_last else samples.shape[2:4]
    low, high = max(start, 0), min(stop, h)
    out[at(slice(0, low - start), slice(None))] = 0
    out[at(slice(high - start, None), slice(None))] = 0
    out[at(slice(None), slice(0, left))] = 0
    out[at(slice(None), slice(left + w, None))] = 0
    out[at(slice(low - start, high - start), slice(left, left + w))] = samples[
        at(slice(low, high), slice(None))
    ]
    return out


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    groups: int = 1,
    workspace: Workspace | None = None,
) -> np.ndarray:
    """``conv(x, weight) + bias``, cross-correlation as PyTorch's.

    Args:
        x: (N, C, H, W) input, float32 or float64.
        weight: (O, C / groups, kh, kw), x's dtype.
        bias: (O,) or None.
        stride: (sh, sw). pads: zero padding (top, bottom, left, right).
        groups: G; the C input and O output channels split into G groups.
        workspace: keeps the per-thread buffers across calls (new ones when None).

    Returns:
        (N, O, Ho, Wo), a new array.
    """
    workspace = workspace or Workspace()
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    top, bottom, left, right = pads
    out_h = output_size(h, kh, stride[0], top + bottom)
    out_w = output_size(w, kw, stride[1], left + right)
    k = c * kh * kw
    rows = band_rows(k + o, out_w, out_h, n, x.itemsize)
    group = 1
    if rows == out_h:
        group = samples_per_band(k + o, out_h * out_w, n, x.itemsize)
    bands = -(-out_h // rows)  # per sample; or, with group > 1, one per `group` samples
    y = np.empty((n, o, out_h, out_w), dtype=x.dtype)
    per_channel = None if bias is None else bias.reshape(-1, 1, 1)
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
        """Bands of rows of one sample each, the GEMM straight into y."""
        col_flat = workspace.get(("col", slot), (k * rows * out_w,), x.dtype)
        for i in range(chunks.start // bands, (chunks.stop - 1) // bands + 1):
            first = max(chunks.start - i * bands, 0)
            last = min(chunks.stop - i * bands, bands)  # this thread's bands of sample i
            source = x[i : i + 1]
            if any(pads):
                pad = workspace.get(("pad", slot), pad_shape, x.dtype)
                source = padded_rows(source, (-top, h + bottom), (left, right), pad)
            for band in range(first, last):
                start, stop = band * rows, min(band * rows + rows, out_h)
                col = columns(source, start, stop, col_flat)
                # straight into the band's (O, P) block of y (row stride Ho * Wo: BLAS takes it)
                block = y[i].reshape(o, -1)[:, start * out_w : stop * out_w]
                np.matmul(matrix, grouped(col), out=grouped(block))
            if per_channel is not None:  # once over the rows of sample i this thread wrote
                written = y[i, :, first * rows : min(last * rows, out_h)]
                np.add(written, per_channel, out=written)

    def run_samples(chunks: slice, slot: int) -> None:
        """Bands of ``group`` whole samples: (O, S, P) out of one GEMM, written as (S, O, P)."""
        p = out_h * out_w
        col_flat = workspace.get(("col", slot), (k * group * p,), x.dtype)
        acc_flat = workspace.get(("acc", slot), (o * group * p,), x.dtype)
        for band in range(chunks.start, chunks.stop):
            first, last = band * group, min(band * group + group, n)
            source = x[first:last]
            if any(pads):
                pad = workspace.get(("pad", slot), pad_shape, x.dtype)[: last - first]
                source = padded_rows(source, (-top, h + bottom), (left, right), pad)
            col = columns(source, 0, out_h, col_flat)
            acc = acc_flat[: o * col.shape[1]].reshape(o, last - first, out_h, out_w)
            np.matmul(matrix, grouped(col), out=grouped(acc.reshape(o, -1)))
            target = y[first:last].transpose(1, 0, 2, 3)  # (O, S, ...): y's own memory
            np.copyto(target, acc)
            if per_channel is not None:
                np.add(target, per_channel[:, None], out=target)

    threads = (
        num_threads() if 2 * o * (k // groups) * out_h * out_w * n >= MIN_PARALLEL_FLOPS else 1
    )
    if group > 1:
        over_parts(-(-n // group), threads, run_samples)
    else:
        over_parts(n * bands, threads, run_rows)
    return y
