"""Inference Winograd F(2x2, 3x3) on channels-last maps, in bands, with bias, ReLU and pooling.

The eval-mode fast path (``purenn.nn.inference``) runs a 3x3 stride-1 padding-1 convolution of an
even-sized channels-last (N, H, W, C) map here when :func:`pays` says so, else the im2col kernel
(:mod:`purenn.kernels.channels_last`). The algebra is :mod:`purenn.kernels.winograd`'s, laid out
for channels-last. For a band of S samples x R tile rows (T = S * R * W/2 tiles):

    source  (S, 2R + 2, 2, W/2 + 1, C)  the band's padded input rows, columns split by parity
    columns (4, S, 2R + 2, W/2, C) d B: the four column combinations of every tile column,
                                   each a difference or sum of two contiguous blocks
    v       (16, T, C)             B^T (d B): the same combinations over rows
    m       (16, T, O) = v @ u     one batched GEMM, u = G g G^T as (16, C, O)
    m[5]    + bias                 the bias enters every output of a tile through m[1, 1] alone
                                   (A^T's rows hold +1 at column 1 each)
    half    (2, 4, T, O)           A^T m: the tile's two output rows
    y       (S, 2R, W, O)          (A^T m) A, written into the band's rows of the output; or,
                                   pooled, the max of the tile's four outputs (a tile's 2x2
                                   outputs are exactly a 2x2 pooling window), (S, R, W/2, O)
    y       max(., 0)              ReLU

Per output pixel the GEMM does 4 C O multiply-adds instead of im2col's 9 C O; the transforms
cost about 20 element-wise passes per band, over contiguous runs of C or O values, in place of
im2col's one strided copy. So it pays where the GEMM dominates, with many channels, and only
with enough tiles per call (:data:`MIN_CHANNEL_RATIO`, :data:`MIN_TILES`; measured per layer in
docs/RESULTS.md, issue 26). In float32 it differs from the direct convolution by under 1e-6 of
the output's scale.
"""

from __future__ import annotations

import numpy as np

from purenn.kernels.banded import MIN_PARALLEL_FLOPS
from purenn.kernels.channels_last import bands
from purenn.kernels.parallel import num_threads, over_parts
from purenn.kernels.winograd import accepts, transform_filter
from purenn.kernels.workspace import Workspace

#: Smallest C*O/(C+O) (input and output channels) for which this kernel beats the channels-last
#: im2col kernel, measured (docs/RESULTS.md, issue 26).
MIN_CHANNEL_RATIO = 48

#: Fewest tiles (a tile per 2x2 outputs, over the batch) for which it is used. With fewer (the
#: presets' layers at batch 1: 4 to 64 tiles) the transforms' 20-odd NumPy calls per band cost
#: about what the GEMM saves: Winograd over im2col 0.82-1.06 across those layers, within the
#: noise, so the simpler kernel stays.
MIN_TILES = 128

#: Floats of work arrays per tile and per channel (of C + O), rounded up: v and m (16 each),
#: the column combinations (4 per padded row and tile column, about 8 per tile), the
#: half-transformed output (8) and the output's column pairs (4).
FLOATS_PER_TILE_CHANNEL = 28


def pays(
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pads: tuple[int, ...],
    groups: int,
    in_channels: int,
    out_channels: int,
) -> bool:
    """Whether the fast path computes a layer of this geometry here, on maps that :func:`fits`:
    a 3x3 stride-1 padding-1 dense convolution with C*O/(C+O) at least MIN_CHANNEL_RATIO."""
    return (
        accepts(kernel, stride, pads)
        and groups == 1
        and in_channels * out_channels >= MIN_CHANNEL_RATIO * (in_channels + out_channels)
    )


def fits(n: int, height: int, width: int) -> bool:
    """Whether a batch of n maps of that size is computed here (for a layer :func:`pays` took):
    even sides and at least :data:`MIN_TILES` tiles."""
    return height % 2 == 0 and width % 2 == 0 and n * (height // 2) * (width // 2) >= MIN_TILES


def filter_matrices(weight: np.ndarray) -> np.ndarray:
    """u = G g G^T of an (O, C, 3, 3) weight as the (16, C, O) matrices :func:`conv3x3` takes."""
    return np.ascontiguousarray(transform_filter(weight).transpose(0, 2, 1))


def _parity_split(samples: np.ndarray, rows: tuple[int, int], out_flat: np.ndarray) -> np.ndarray:
    """Input rows [rows[0], rows[1]) of the (S, H, W, C) ``samples``, zero-padded as
    :func:`purenn.kernels.banded.padded_rows` pads them (one zero column each side), with the
    padded columns split by parity: padded column 2q + p at [:, :, p, q]; (S, R', 2, W/2 + 1, C)
    in ``out_flat``."""
    count, h, w, c = samples.shape
    start, stop = rows
    out = out_flat.reshape(count, stop - start, 2, w // 2 + 1, c)
    low, high = max(start, 0), min(stop, h)
    out[:, : low - start] = 0
    out[:, high - start :] = 0
    out[:, :, 0, 0] = 0
    out[:, :, 1, -1] = 0
    inside = out[:, low - start : high - start]
    # x column 2q is padded column 2q + 1; x column 2q + 1 is padded column 2q + 2.
    inside[:, :, 1, :-1] = samples[:, low:high, 0::2]
    inside[:, :, 0, 1:] = samples[:, low:high, 1::2]
    return out


def conv3x3(
    x: np.ndarray,
    u: np.ndarray,
    bias: np.ndarray | None,
    relu: bool = False,
    pool: bool = False,
    workspace: Workspace | None = None,
) -> np.ndarray:
    """``maxpool2x2(relu(conv3x3(x) + bias))`` (stride 1, padding 1) as a channels-last map.

    Args:
        x: (N, H, W, C), H and W even; float32 or float64.
        u: (16, C, O) from :func:`filter_matrices`, x's dtype.
        bias: (O,) or None.
        workspace: keeps the per-thread buffers across calls (new ones when None).

    Returns:
        (N, H, W, O), or (N, H/2, W/2, O) when pooled; a new array.
    """
    workspace = workspace or Workspace()
    n, h, w, c = x.shape
    o = u.shape[2]
    tile_rows, tile_cols = h // 2, w // 2
    parallel = 2 * 16 * c * o * tile_rows * tile_cols * n >= MIN_PARALLEL_FLOPS
    rows, group = bands(
        FLOATS_PER_TILE_CHANNEL * (c + o), tile_cols, tile_rows, n, x.itemsize, False, parallel
    )
    per_sample = -(-tile_rows // rows)
    band_count = -(-n // group) if group > 1 else n * per_sample
    y = np.empty((n, tile_rows, tile_cols, o) if pool else (n, h, w, o), dtype=x.dtype)
    most_tiles = group * rows * tile_cols

    def extent(band: int) -> tuple[slice, int, int]:
        """(samples, first tile row, end tile row) of a band."""
        if group > 1:
            return slice(band * group, min(band * group + group, n)), 0, tile_rows
        i, part = divmod(band, per_sample)
        return slice(i, i + 1), part * rows, min(part * rows + rows, tile_rows)

    def run(part: slice, slot: int) -> None:
        def buffer(name: str, size: int) -> np.ndarray:
            return workspace.get((name, slot), (size,), x.dtype)

        pad_flat = buffer("pad", group * (2 * rows + 2) * 2 * (tile_cols + 1) * c)
        columns_flat = buffer("columns", 4 * group * (2 * rows + 2) * tile_cols * c)
        v_flat = buffer("v", 16 * most_tiles * c)
        m_flat = buffer("m", 16 * most_tiles * o)
        half_flat = buffer("half", 8 * most_tiles * o)
        pairs_flat = buffer("pairs", 4 * most_tiles * o)
        for band in range(part.start, part.stop):
            samples, start, stop = extent(band)
            count, band_rows = samples.stop - samples.start, stop - start
            tiles = count * band_rows * tile_cols
            src = _parity_split(
                x[samples],
                (2 * start - 1, 2 * stop + 1),
                pad_flat[: (count * (2 * band_rows + 2) * 2 * (tile_cols + 1) * c)],
            )
            # d B first: tile column s reads padded columns 2s .. 2s + 3, which are
            # src[..., 0, s], src[..., 1, s], src[..., 0, s + 1], src[..., 1, s + 1].
            e = [src[:, :, 0, :-1], src[:, :, 1, :-1], src[:, :, 0, 1:], src[:, :, 1, 1:]]
            combined = columns_flat[: 4 * count * (2 * band_rows + 2) * tile_cols * c].reshape(
                4, count, 2 * band_rows + 2, tile_cols, c
            )
            np.subtract(e[0], e[2], out=combined[0])
            np.add(e[1], e[2], out=combined[1])
            np.subtract(e[2], e[1], out=combined[2])
            np.subtract(e[1], e[3], out=combined[3])
            # B^T (d B): tile row t reads padded rows 2t .. 2t + 3; v[4a + b].
            d = [combined[:, :, k : k + 2 * band_rows : 2] for k in range(4)]
            v = v_flat[: 16 * tiles * c].reshape(16, tiles, c)
            vb = v.reshape(4, 4, count, band_rows, tile_cols, c)
            np.subtract(d[0], d[2], out=vb[0])
            np.add(d[1], d[2], out=vb[1])
            np.subtract(d[2], d[1], out=vb[2])
            np.subtract(d[1], d[3], out=vb[3])
            m = m_flat[: 16 * tiles * o].reshape(16, tiles, o)
            np.matmul(v, u, out=m)
            if bias is not None:
                np.add(m[5], bias, out=m[5])
            # A^T m: output row 0 = m[0] + m[1] + m[2], row 1 = m[1] - m[2] - m[3] (over a).
            mb = m.reshape(4, 4, tiles, o)
            half = half_flat[: 8 * tiles * o].reshape(2, 4, tiles, o)
            np.add(mb[0], mb[1], out=half[0])
            np.add(half[0], mb[2], out=half[0])
            np.subtract(mb[1], mb[2], out=half[1])
            np.subtract(half[1], mb[3], out=half[1])
            # (A^T m) A over b, r = rows_of: column 0 = r[0] + r[1] + r[2], column 1 = r[1] - r[2]
            # - r[3], for both output rows i at once, as (i, sample, tile row, tile column, O).
            rows_of = half.reshape(2, 4, count, band_rows, tile_cols, o)
            first, second = pairs_flat[: 4 * tiles * o].reshape(
                2, 2, count, band_rows, tile_cols, o
            )
            np.add(rows_of[:, 0], rows_of[:, 1], out=first)
            np.subtract(rows_of[:, 1], rows_of[:, 2], out=second)
            if pool:
                np.add(first, rows_of[:, 2], out=first)
                np.subtract(second, rows_of[:, 3], out=second)
                np.maximum(first, second, out=first)
                out = y[samples, start:stop]
                np.maximum(first[0], first[1], out=out)
            else:
                out = y[samples, 2 * start : 2 * stop]
                grid = out.reshape(count, band_rows, 2, tile_cols, 2, o).transpose(4, 2, 0, 1, 3, 5)
                np.add(first, rows_of[:, 2], out=grid[0])
                np.subtract(second, rows_of[:, 3], out=grid[1])
            if relu:
                np.maximum(out, 0, out=out)

    over_parts(band_count, num_threads() if parallel else 1, run)
    return y
