"""Winograd F(2x2, 3x3) convolution for 3x3, stride-1, padding-1 layers (Lavin & Gray, 2015).

Pure array functions over NCHW batches; :class:`purenn.nn.layers.conv.Conv2D` picks them per layer
shape through :func:`use_winograd`. Each 2x2 block of outputs is computed from the 4x4 input
tile around it with 16 multiplications per (input, output) channel pair instead of im2col's 36:

    Y = A^T [ (G g G^T) * (B^T d B) ] A        (one tile; * element-wise, g the 3x3 filter)

    B^T = [[1, 0,-1, 0],   G = [[ 1,   0,   0 ],   A^T = [[1, 1, 1, 0],
           [0, 1, 1, 0],        [1/2, 1/2, 1/2],          [0, 1,-1,-1]]
           [0,-1, 1, 0],        [1/2,-1/2, 1/2],
           [0, 1, 0,-1]]        [ 0,   0,   1 ]]

Summed over input channels, the element-wise products become 16 matrix products, one per
position (a, b) of the 4x4 transformed tile, done as one batched BLAS call:

    U = G g G^T   (16, O, C)        filter transform
    V = B^T d B   (16, C, N*T)      input transform, T = tiles per image = ceil(H/2)*ceil(W/2)
    M = U @ V     (16, O, N*T)      the batched GEMM: all the multiply-adds
    y = A^T M A   (N, O, H, W)      output transform (odd H or W: the last tile is cropped)

Backward (dy the output gradient):

    dM = A dy A^T                   (16, O, N*T)  the adjoint of the output transform
    dU = dM @ V^T                   (16, O, C)    batched GEMM with the V kept from forward
    dW = G^T dU G                   (O, C, 3, 3)  the adjoint of the filter transform
    dx = Winograd convolution of dy with the flipped, transposed filters W[:, :, ::-1, ::-1]^T
         (a stride-1 padding-1 3x3 convolution's input gradient is exactly that convolution:
         a gather over dy, no scatter-add)

The transforms are additions of strided views (the matrices hold 0, +-1 and +-1/2), written
straight into the layouts the GEMM wants, and split over threads by batch rows
(``purenn.kernels.parallel``), which is exact. Everything keeps the input's dtype (float64 for the
gradient checks). In float32 the transforms add rounding of a few 1e-7 relative to the
output's scale (tests/test_conv_winograd.py states the measured figure).

When it pays: :func:`use_winograd` is the measured rule, see its docstring.
"""

from __future__ import annotations

import functools

import numpy as np

from purenn.kernels.parallel import over_batch

_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])

#: Bytes of input handled per transform pass: the pass's temporaries (about 3x this) then stay
#: in a 1-2 MB L2 cache instead of streaming through memory several times.
CHUNK_BYTES = 1 << 18

#: Smallest C*O/(C+O) (input and output channels) for which Winograd beats im2col here.
MIN_CHANNEL_RATIO = 32

#: OpenBLAS kernels (threadpoolctl's ``architecture``) with which Winograd was measured faster:
#: the AVX2 ones. With AVX-512 kernels (SkylakeX, ...) the GEMM runs twice as fast, the
#: transforms do not, and im2col won on every layer measured.
WINOGRAD_BLAS_KERNELS = frozenset({"haswell", "zen"})


@functools.cache
def blas_kernel_favours_winograd() -> bool:
    """Whether every BLAS in the process uses a kernel of :data:`WINOGRAD_BLAS_KERNELS`."""
    from threadpoolctl import threadpool_info

    kernels = [
        str(info.get("architecture")).lower()
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]
    return bool(kernels) and all(kernel in WINOGRAD_BLAS_KERNELS for kernel in kernels)


def accepts(kernel: tuple[int, int], stride: tuple[int, int], pads: tuple[int, ...]) -> bool:
    """Whether this module can compute a convolution of that geometry: 3x3, stride 1, padding 1."""
    return kernel == (3, 3) and stride == (1, 1) and tuple(pads) == (1, 1, 1, 1)


def use_winograd(
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pads: tuple[int, ...],
    in_channels: int,
    out_channels: int,
    height: int,
    width: int,
) -> bool:
    """The per-layer choice between Winograd and im2col, by geometry and shape.

    Per output pixel, Winograd saves GEMM work in proportion to C*O but pays transforms (memory
    passes) in proportion to C+O, so it wins once C*O/(C+O) is large enough: at least
    :data:`MIN_CHANNEL_RATIO`, with an output of at least 4x4 (smaller ones are mostly
    padding tiles), and only with AVX2 BLAS kernels (:func:`blas_kernel_favours_winograd`).
    Measured on the plantvillage-cnn layers at batch 32, one thread, CPU milliseconds of
    forward+backward, medians of 6 alternated rounds, on a shared AMD EPYC (Zen 5, AVX-512)
    with OpenBLAS 0.3.31 forced to its Haswell (AVX2) kernels and then with its own SkylakeX
    (AVX-512) kernels:

        layer               C*O/(C+O)   AVX2 kernels       AVX-512 kernels
                                        im2col  Winograd   im2col  Winograd
        3->32 on 128x128         2.7      40      138        44      161
        32->64 on 64x64         21.3     181      197       151      185
        64->128 on 32x32        42.7     153      140       106      117
        128->128 on 16x16       64.0      81       63        54       56
    """
    return (
        accepts(kernel, stride, pads)
        and in_channels * out_channels >= MIN_CHANNEL_RATIO * (in_channels + out_channels)
        and height >= 4
        and width >= 4
        and blas_kernel_favours_winograd()
    )


def tiles(height: int, width: int) -> tuple[int, int]:
    """Tiles per column and per row: each 2x2 output block is one tile."""
    return (height + 1) // 2, (width + 1) // 2


def _in_chunks(n: int, sample_bytes: int, work) -> None:
    """Run ``work(rows)`` over all threads, each thread's rows in chunks of ~CHUNK_BYTES."""
    step = max(1, CHUNK_BYTES // max(1, sample_bytes))

    def chunked(rows: slice) -> None:
        for start in range(rows.start, rows.stop, step):
            work(slice(start, min(start + step, rows.stop)))

    over_batch(n, chunked, n * sample_bytes * 4)


def transform_filter(weight: np.ndarray) -> np.ndarray:
    """U = G g G^T for every (out, in) pair: (O, C, 3, 3) -> (16, O, C), contiguous."""
    g = _G.astype(weight.dtype)
    u = np.einsum("ai,ocij,bj->aboc", g, weight, g, optimize=True)
    return np.ascontiguousarray(u).reshape(16, weight.shape[0], weight.shape[1])


def filter_grad(du: np.ndarray, out_channels: int, in_channels: int) -> np.ndarray:
    """dW = G^T dU G, the adjoint of :func:`transform_filter`: (16, O, C) -> (O, C, 3, 3)."""
    g = _G.astype(du.dtype)
    du = du.reshape(4, 4, out_channels, in_channels)
    return np.einsum("ai,aboc,bj->ocij", g, du, g, optimize=True)


def flipped_filter(weight: np.ndarray) -> np.ndarray:
    """The filters of the input-gradient convolution: W[:, :, ::-1, ::-1] with O and C swapped."""
    return weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)


def transform_input(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """V = B^T d B over every 4x4 tile of the zero-padded (padding 1) input.

    Args:
        x: (N, C, H, W).
        out: optional (16, C, N * T) array of x's dtype to write into.

    Returns:
        (16, C, N * T) with tiles ordered (n, tile row, tile column); tile (t, s) reads padded
        rows 2t..2t+3 and columns 2s..2s+3.
    """
    n, c, h, w = x.shape
    th, tw = tiles(h, w)
    if out is None:
        out = np.empty((16, c, n * th * tw), dtype=x.dtype)
    v = out.reshape(4, 4, c, n, th, tw)

    def work(rows: slice) -> None:
        xb = x[rows]
        # The padded input with its columns split by parity: padded[..., 2k + p] is at
        # [..., p, k], so every column combination below reads contiguous rows.
        split = np.zeros((len(xb), c, 2 * th + 2, 2, tw + 1), dtype=x.dtype)
        split[:, :, 1 : h + 1, 1, : (w + 1) // 2] = xb[..., 0::2]
        split[:, :, 1 : h + 1, 0, 1 : w // 2 + 1] = xb[..., 1::2]
        r = [split[:, :, k : k + 2 * th : 2] for k in range(4)]  # row k of every tile
        # B^T d: the four row combinations, then d B: the same combinations over columns.
        for a, t in enumerate((r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3])):
            col = [t[..., 0, :tw], t[..., 1, :tw], t[..., 0, 1:], t[..., 1, 1:]]
            dest = [v[a, b][:, rows].transpose(1, 0, 2, 3) for b in range(4)]  # (nb, C, th, tw)
            np.subtract(col[0], col[2], out=dest[0])
            np.add(col[1], col[2], out=dest[1])
            np.subtract(col[2], col[1], out=dest[2])
            np.subtract(col[1], col[3], out=dest[3])

    _in_chunks(n, x[0].nbytes, work)
    return out


def transform_output(m: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """y = A^T M A per tile, assembled into a new (N, O, H, W) array (``shape``)."""
    n, o, h, w = shape
    th, tw = tiles(h, w)
    m = m.reshape(4, 4, o, n, th, tw)
    full = np.empty((n, o, 2 * th, 2 * tw), dtype=m.dtype)
    blocks = full.reshape(n, o, th, 2, tw, 2)

    def work(rows: slice) -> None:
        mb = m[:, :, :, rows]
        # A^T over the tile rows (index a), for every column b at once: (4, O, nb, th, tw).
        for i, s in enumerate((mb[0] + mb[1] + mb[2], mb[1] - mb[2] - mb[3])):
            dest = [blocks[rows, :, :, i, :, j].transpose(1, 0, 2, 3) for j in range(2)]
            np.add(s[0] + s[1], s[2], out=dest[0])
            np.subtract(s[1] - s[2], s[3], out=dest[1])

    _in_chunks(n, full[0].nbytes, work)
    return full if (2 * th, 2 * tw) == (h, w) else np.ascontiguousarray(full[:, :, :h, :w])


def transform_output_grad(dy: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """dM = A dy A^T per tile, the adjoint of :func:`transform_output`: -> (16, O, N * T)."""
    n, o, h, w = dy.shape
    th, tw = tiles(h, w)
    if out is None:
        out = np.empty((16, o, n * th * tw), dtype=dy.dtype)
    dm = out.reshape(4, 4, o, n, th, tw)

    def work(rows: slice) -> None:
        if (2 * th, 2 * tw) == (h, w):
            full = dy[rows]
        else:  # the cropped outputs of the last tiles have zero gradient
            full = np.zeros((len(dy[rows]), o, 2 * th, 2 * tw), dtype=dy.dtype)
            full[:, :, :h, :w] = dy[rows]
        g = full.reshape(-1, o, th, 2, tw, 2)
        # A has rows [1, 0], [1, 1], [1, -1], [0, -1]: the same combinations on rows, then columns.
        top, bottom = g[:, :, :, 0], g[:, :, :, 1]
        for a, t in enumerate((top, top + bottom, top - bottom, -bottom)):
            dest = [dm[a, b][:, rows].transpose(1, 0, 2, 3) for b in range(4)]
            first, second = t[..., 0], t[..., 1]
            np.copyto(dest[0], first)
            np.add(first, second, out=dest[1])
            np.subtract(first, second, out=dest[2])
            np.negative(second, out=dest[3])

    _in_chunks(n, dy[0].nbytes, work)
    return out


def conv3x3(x: np.ndarray, u: np.ndarray, v_out: np.ndarray | None = None) -> np.ndarray:
    """A 3x3 stride-1 padding-1 convolution (no bias) of x with transformed filters u.

    Args:
        x: (N, C, H, W).
        u: (16, O, C) from :func:`transform_filter`.
        v_out: optional (16, C, N * T) buffer for the input transform, which backward reuses.

    Returns:
        (N, O, H, W).
    """
    v = transform_input(x, out=v_out)
    return transform_output(np.matmul(u, v), (x.shape[0], u.shape[1], *x.shape[2:]))
