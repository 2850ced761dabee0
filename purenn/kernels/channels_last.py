"""Inference convolution that writes channels-last maps: (N, H, W, C), one GEMM per band.

The eval-mode fast path (``purenn.nn.inference``) keeps the maps between its convolutions
channels-last. For a band of S samples x R output rows (P = S * R * Wo positions, K = kh * kw
* C, O output channels):

    source  (S, R', W', C)      the band's input rows, zero-padded (R' = (R - 1) * sh + kh)
    col     (P, K)              rows ordered (i, j, c): each position's receptive field, copied
                                in contiguous runs of kw * C values
    y       (P, O) = col @ M    M: the weight as (K, O); y is the band's block of the
                                (N, Ho, Wo, O) output, so nothing is transposed on the way out
    y       max over 2x2 windows, then + bias, then max(., 0); a pooled layer computes the
            positions of a row pair in the order (row, column parity, column pair), so that
            the pooling's maxima run over contiguous blocks (:func:`maxpool_pairs`)

Against the channels-first kernel (:func:`purenn.kernels.banded.conv2d`: col (K, P) with runs of
Wo values, y = W @ col), on plantvillage-resnet's 3x3 layers at batch 32, one thread, Intel Xeon:
the copy is 2-3x faster (runs of 96-768 values instead of 4-32) and OpenBLAS multiplies the
tall (P, K) @ (K, O) faster than the wide (O, K) @ (K, P), 1.4-1.6x per layer in all
(docs/RESULTS.md, issue 26).

A channels-first source (the model's input image, 3 channels) is gathered as the
channels-first kernel does, col (K, P) with rows (c, i, j), and multiplied transposed,
``col.T @ M`` with M's rows in the same order: transposing a 3-channel batch to channels-last
first cost 5 ms and its copy of runs of 9 values 14 ms more, of a 27 ms layer.

``groups=G``: col is (P, G, K/G) (or (G, K/G, P)) and M (G, K/G, O/G), one batched product
over the groups gives y as (P, G, O/G). The bands (:func:`bands`) are split over purenn's threads.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from purenn.kernels.banded import MIN_PARALLEL_FLOPS, padded_rows
from purenn.kernels.ops import output_size
from purenn.kernels.parallel import available_cores, num_threads, over_parts
from purenn.kernels.workspace import Workspace

#: Largest column matrix plus GEMM output of one band, in bytes: 8 times the channels-first
#: kernel's, more than a core's L2 cache, because measured so (batch 32, 2 threads, Intel Xeon,
#: 2 MB L2 per core, bands of 512 KB / 1 MB / 2 MB / 4 MB: plantvillage-cnn's first layer
#: 64-73 / 40-43 / 31-36 / 30-31 ms, plantvillage-resnet's 32x32 layer 22-23 / 16-19 / 12-15 /
#: 12-13 ms).
BAND_BYTES = 1 << 22


def bands(k: int, out_w: int, out_h: int, n: int, itemsize: int, pool: bool, parallel: bool):
    """(rows, samples) of a band: output rows of one sample, or ``samples`` whole samples.

    A band's col and output, (rows * out_w, k) together (k: K + O), stay under BAND_BYTES;
    rows are even when pooled; whole samples are shared out evenly over the cores
    (:func:`balanced_samples`). A convolution split over the threads keeps at least one band
    per core (one image too: one band each is faster than two, plantvillage-cnn's layers at
    batch 1 took 1.7-2.5 ms in 2 bands against 1.7-2.6 in 4 and 1.5-3.8 in 8 on 2 cores);
    one run in the calling thread takes the largest bands. The bands depend on the shapes and
    the machine's cores only, so the results do not depend on the thread count.
    """
    least = available_cores() if parallel else 1
    rows = max(1, BAND_BYTES // (k * out_w * itemsize))
    rows = min(rows, -(-out_h // -(-least // n)))
    if pool:
        rows = max(2, rows + rows % 2)
    if rows < out_h:
        return rows, 1
    fitting = max(1, min(n, BAND_BYTES // (k * out_h * out_w * itemsize)))
    return out_h, balanced_samples(n, fitting, least)


def balanced_samples(n: int, fitting: int, cores: int) -> int:
    """Samples per band, at most ``fitting``, for which the core given the most samples has the
    fewest (the bands are split into ``cores`` contiguous runs of equal count): the largest such.

    At batch 32 on 2 cores, 12 samples a band make 3 bands, 24 samples on one core, against
    8 samples a band, 16 on each: plantvillage-resnet's 128-channel 8x8 layer took 2.93 ms
    instead of 3.36 (its 64-channel 16x16 one, 4 samples against 6: 3.76 against 4.07 ms;
    Intel Xeon, medians of 15 calls in turn).
    """

    def busiest(samples: int) -> int:
        band_count = -(-n // samples)
        return -(-band_count // cores) * samples

    return min(range(fitting, 0, -1), key=busiest)


def to_channels_last(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> a new contiguous (N, H, W, C)."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def to_channels_first(x: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> a new contiguous (N, C, H, W)."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def weight_matrix(weight: np.ndarray, groups: int, channels_last_input: bool) -> np.ndarray:
    """The (O, C/G, kh, kw) weight as the (G, K/G, O/G) matrices :func:`conv2d` multiplies by.

    Rows are ordered (i, j, c) for a channels-last input and (c, i, j) for a channels-first
    one, as that input's columns are. A new contiguous array.
    """
    o, cg, kh, kw = weight.shape
    per_group = weight.reshape(groups, o // groups, cg, kh, kw)
    order = (0, 3, 4, 2, 1) if channels_last_input else (0, 2, 3, 4, 1)
    return np.ascontiguousarray(per_group.transpose(order)).reshape(groups, -1, o // groups)


def maxpool_pairs(x: np.ndarray, out: np.ndarray, row_max: np.ndarray) -> np.ndarray:
    """2x2 stride-2 max-pooling of a channels-last map computed in pair order into ``out``.

    Args:
        x: (S, H/2, 2, 2, W/2, C): [sample, row pair, row in pair, column in pair, column
            pair, channel], the order :func:`conv2d` computes a pooled layer's positions in.
        out: (S, H/2, W/2, C).
        row_max: (S, H/2, 2, W/2, C) work array.

    Both maxima run over contiguous blocks (2 * W/2 * C, then W/2 * C values); in plain (S, H,
    W, C) order the column pairs would be runs of C values, and this pass took half the time
    of plantvillage-cnn's first convolution.
    """
    np.maximum(x[:, :, 0], x[:, :, 1], out=row_max)
    return np.maximum(row_max[:, :, 0], row_max[:, :, 1], out=out)


def conv2d(
    x: np.ndarray,
    matrix: np.ndarray,
    bias: np.ndarray | None,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    relu: bool = False,
    pool: bool = False,
    channels_last_input: bool = True,
    workspace: Workspace | None = None,
) -> np.ndarray:
    """``maxpool2x2(relu(conv(x, W) + bias))`` as a channels-last map, pooling and ReLU if asked.

    Args:
        x: (N, H, W, C), or (N, C, H, W) with ``channels_last_input=False``; float32 or float64.
        matrix: ``weight_matrix(W, G, channels_last_input)``, (G, K/G, O/G), x's dtype.
        bias: (O,) or None. kernel: (kh, kw). stride: (sh, sw).
        pads: zero padding (top, bottom, left, right).
        workspace: keeps the per-thread buffers across calls (new ones when None).

    Returns:
        (N, Ho, Wo, O), or (N, Ho // 2, Wo // 2, O) when pooled; a new array.
    """
    workspace = workspace or Workspace()
    if channels_last_input:
        n, h, w, c = x.shape
    else:
        n, c, h, w = x.shape
    groups, k_group, o_group = matrix.shape
    k, o = groups * k_group, groups * o_group
    (kh, kw), (sh, sw) = kernel, stride
    top, bottom, left, right = pads
    out_h = output_size(h, kh, sh, top + bottom)
    out_w = output_size(w, kw, sw, left + right)
    rows_needed = 2 * (out_h // 2) if pool else out_h  # an odd last row is pooled away
    parallel = 2 * o * k_group * out_h * out_w * n >= MIN_PARALLEL_FLOPS
    rows, group = bands(k + o, out_w, rows_needed, n, x.itemsize, pool, parallel)
    per_sample = -(-rows_needed // rows)
    band_count = -(-n // group) if group > 1 else n * per_sample
    y = np.empty((n, out_h // 2, out_w // 2, o) if pool else (n, out_h, out_w, o), dtype=x.dtype)
    most_rows_in = (rows - 1) * sh + kh
    # The positions of an output row: in pair order when pooled (the columns q = 2 q' + e as
    # (e, q'), the odd last column left out), else q itself.
    row_shape, row_steps = ((2, out_w // 2), (sw, 2 * sw)) if pool else ((out_w,), (sw,))
    row_positions = int(np.prod(row_shape))
    most_positions = group * rows * row_positions
    padded_width = w + left + right

    def extent(band: int) -> tuple[slice, int, int]:
        """(samples, first output row, end output row) of a band."""
        if group > 1:
            return slice(band * group, min(band * group + group, n)), 0, rows_needed
        i, part = divmod(band, per_sample)
        return slice(i, i + 1), part * rows, min(part * rows + rows, rows_needed)

    def source(samples: slice, start: int, stop: int, pad_flat: np.ndarray) -> np.ndarray:
        """The padded input rows the output rows [start, stop) of x[samples] read (in the
        thread's ``pad_flat`` buffer when padded)."""
        first_in, end_in = start * sh - top, (stop - 1) * sh + kh - top
        count = samples.stop - samples.start
        if not any(pads):
            return (
                x[samples, first_in:end_in]
                if channels_last_input
                else x[samples, :, first_in:end_in]
            )
        shape = (
            (count, end_in - first_in, padded_width, c)
            if channels_last_input
            else (count, c, end_in - first_in, padded_width)
        )
        out = pad_flat[: int(np.prod(shape))].reshape(shape)
        return padded_rows(x[samples], (first_in, end_in), (left, right), out, channels_last_input)

    def columns(src: np.ndarray, band_rows_out: int, col_flat: np.ndarray) -> np.ndarray:
        """The band's col as (G, P, K/G): a view of the thread's ``col_flat`` buffer."""
        count = len(src)
        positions = count * band_rows_out * row_positions
        col = col_flat[: k * positions]
        cg = c // groups
        if channels_last_input:
            # windows[s, r, q, g, i, j, c'] = src[s, sh * r + i, sw * q + j, g * cg + c']
            sn, sy, sx, sc = src.strides
            shape = (count, band_rows_out, *row_shape, groups, kh, kw, cg)
            steps = tuple(step * sx for step in row_steps)
            strides = (sn, sh * sy, *steps, cg * sc, sy, sx, sc)
            np.copyto(col.reshape(shape), as_strided(src, shape, strides, writeable=False))
            return col.reshape(positions, groups, k_group).transpose(1, 0, 2)
        # windows[g, c', i, j, s, r, q] = src[s, g * cg + c', sh * r + i, sw * q + j]
        sn, sc, sy, sx = src.strides
        shape = (groups, cg, kh, kw, count, band_rows_out, *row_shape)
        strides = (cg * sc, sc, sy, sx, sn, sh * sy, *(step * sx for step in row_steps))
        np.copyto(col.reshape(shape), as_strided(src, shape, strides, writeable=False))
        return col.reshape(groups, k_group, positions).transpose(0, 2, 1)

    def run(part: slice, slot: int) -> None:
        def buffer(name: str, size: int) -> np.ndarray:
            return workspace.get((name, slot), (size,), x.dtype)

        pad_flat = buffer("pad", group * c * most_rows_in * padded_width) if any(pads) else None
        col_flat = buffer("col", k * most_positions)
        acc_flat = buffer("acc", o * most_positions) if pool else None
        row_max = buffer("row_max", o * most_positions // 2) if pool else None
        for band in range(part.start, part.stop):
            samples, start, stop = extent(band)
            col = columns(source(samples, start, stop, pad_flat), stop - start, col_flat)
            positions = col.shape[1]
            if pool:
                acc = acc_flat[: o * positions]
                target = y[samples, start // 2 : stop // 2]
            else:
                acc = target = y[samples, start:stop]
            if groups == 1:
                np.matmul(col[0], matrix[0], out=acc.reshape(positions, o))
            else:
                np.matmul(col, matrix, out=acc.reshape(positions, groups, o_group).swapaxes(0, 1))
            if pool:
                count = samples.stop - samples.start
                pairs = (count, (stop - start) // 2, 2, 2, out_w // 2, o)
                half = row_max[: o * positions // 2].reshape(pairs[:2] + pairs[3:])
                maxpool_pairs(acc.reshape(pairs), target, half)
            if bias is not None:
                np.add(target, bias, out=target)
            if relu:
                np.maximum(target, 0, out=target)

    over_parts(band_count, num_threads() if parallel else 1, run)
    return y
