"""2-D convolution (cross-correlation, like PyTorch) by im2col and a BLAS product per sample.

Shapes (N batch, C in channels, O out channels, kernel kh x kw, K = C*kh*kw, P = Ho*Wo), for
each sample n:

    col  = im2col(x[n])             (K, P)   every receptive field as a column (forward pads a
                                             copy of the sample; backward pads implicitly)
    y[n] = W.reshape(O, K) @ col    (O, P)   already NCHW: no transpose on the way out

Backward, with dy reshaped to (N, O, P), recomputing col from the kept input:

    dW    = sum_n dy[n] @ col.T     (O, K)
    db    = sum over n and p of dy  (O,)
    dcol  = W.T @ dy[n]             (K, P), then col2im adds it back onto dx[n]

``groups=G`` splits the C input and O output channels into G groups (depthwise when G == C),
each convolved with its own (O/G, C/G, kh, kw) filters, as PyTorch. im2col's rows are ordered
(c, i, j) with c outermost, so a group's rows are contiguous: ``col`` reshapes for free to
(G, K/G, P) and the products above become one batched matmul over the groups,
``y[n].reshape(G, O/G, P) = W.reshape(G, O/G, K/G) @ col.reshape(G, K/G, P)`` (Chainer's scheme);
likewise dW and dcol per group. For a depthwise layer dcol is an outer product per channel
((kh*kw, 1) @ (1, P)), computed by broadcasting: NumPy's matmul is 13x slower with an inner
dimension of 1. Measured against depthwise as kh*kw shifted multiply-adds and as ``as_strided``
windows contracted by ``einsum`` (benchmarks/bench_grouped_conv.py, docs/RESULTS.md), this
scheme was the fastest at every map size of plantvillage-resnet (1 thread, forward+backward,
batch 32: 87 against 128 and 448 ms for 32 channels at 64x64).

Forward runs :func:`purenn.kernels.banded.conv2d`: per band of output rows of a sample, one
im2col copy and one GEMM while the band's column matrix is in cache, the bands split over
purenn's threads with single-threaded BLAS (the eval-mode fast path runs its own channels-last
kernel with BatchNorm, ReLU and pooling fused in, :mod:`purenn.kernels.channels_last`).
Backward takes whole samples per thread (``purenn.kernels.parallel.over_samples``), so a
sample's column matrix (1-5 MB in the preset CNN) is written, multiplied and read back while it
is in that core's cache, and no (N, K, P) matrix is ever stored: recomputing im2col in backward
costs less than streaming the batch's column matrices (320 MB for the preset CNN at batch 32)
to memory and back (docs/RESULTS.md, issue 13). On a small map, where the forward's bands hold
several samples, the backward's products take the same samples together: col (K, S * P) and
dy (O, S * P).

``algorithm="winograd"`` computes 3x3 stride-1 padding-1 layers with Winograd F(2x2, 3x3)
instead (``purenn.kernels.winograd``, 16 multiplications per output 2x2 block and channel pair
instead of 36), and ``"auto"`` picks it per layer by shape. im2col stays the default: on an idle
AMD EPYC with 2 threads, the preset CNN was slower with ``"auto"`` than with the per-sample
im2col (train step 87.5 vs 115.4 images/s, batch-1 inference 5.25 vs 4.36 ms;
docs/RESULTS.md, issue 13).
"""

from __future__ import annotations

import numpy as np

from purenn.checks import check_int
from purenn.kernels import banded, winograd
from purenn.kernels.ops import col2im, im2col, output_size, pair
from purenn.kernels.parallel import over_samples, sample_threads
from purenn.nn.layers.weighted import WeightedLayer

#: Values of Conv2D's ``algorithm`` argument.
ALGORITHMS = ("auto", "im2col", "winograd")


def resolve_padding(padding, kernel: tuple[int, int], stride: tuple[int, int]):
    """(top, bottom, left, right) from an int, a pair, or "same" (stride 1 only, as PyTorch).

    For "same" with an even kernel the extra row/column goes to the bottom/right, like PyTorch.
    """
    if padding == "same":
        if stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1, received: stride={stride}")
        (kh, kw) = kernel
        return ((kh - 1) // 2, kh - 1 - (kh - 1) // 2, (kw - 1) // 2, kw - 1 - (kw - 1) // 2)
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        ph = pw = int(padding)
    elif isinstance(padding, (tuple, list)) and len(padding) == 2:
        ph, pw = (int(p) for p in padding)
    else:
        raise ValueError(
            f"padding must be an int, a pair of ints or 'same', received: padding={padding!r}"
        )
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be >= 0, received: padding={padding!r}")
    return (ph, ph, pw, pw)


def _product(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out = a @ b`` (2-D or stacked). With an inner dimension of 1 (a depthwise layer's
    ``W^T dy``: (C, kh*kw, 1) @ (C, 1, P)) it is an outer product, computed by broadcasting:
    NumPy's matmul took 1.31 ms there against 0.10 ms (C = 32, P = 64x64, one sample)."""
    if a.shape[-1] == 1:
        np.multiply(a, b, out=out)
    else:
        np.matmul(a, b, out=out)


class Conv2D(WeightedLayer):
    """2-D convolution over NCHW batches, PyTorch's ``nn.Conv2d`` (no dilation).

    Args:
        in_channels, out_channels: C and O.
        kernel_size: int or (kh, kw).
        stride: int or (sh, sw).
        padding: int, (ph, pw), or "same" (stride 1).
        bias, init, weight_norm, rng, dtype: as for :class:`~purenn.nn.layers.dense.Dense`.
        algorithm: "im2col" (the default), "winograd" (3x3, stride 1, padding 1 only), or
            "auto" (Winograd where :func:`purenn.kernels.winograd.use_winograd` says it paid at one
            thread, else im2col). The results agree to rounding. Grouped layers use im2col.
        groups: G, dividing both C and O; G == C is a depthwise convolution.

    Input shape: (N, C, H, W). Output shape: (N, O, Ho, Wo) with
    ``Ho = (H + pad_top + pad_bottom - kh) // sh + 1`` (likewise Wo). Parameters: ``weight``
    (O, C/G, kh, kw), ``bias`` (O,).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        bias: bool = True,
        init: str = "he",
        weight_norm: bool = False,
        rng: np.random.Generator | int | None = None,
        dtype=np.float32,
        algorithm: str = "im2col",
        groups: int = 1,
    ) -> None:
        self.in_channels = check_int(in_channels, "in_channels")
        self.out_channels = check_int(out_channels, "out_channels")
        self.groups = check_int(groups, "groups")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"groups must divide in_channels={self.in_channels} and "
                f"out_channels={self.out_channels}, received: groups={self.groups}"
            )
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = padding
        self.pads = resolve_padding(padding, self.kernel_size, self.stride)
        self.algorithm = algorithm
        self._check_algorithm()
        shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        super().__init__(shape, bias, init, weight_norm, rng, dtype)

    def _check_algorithm(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(
                f"algorithm must be one of {ALGORITHMS}, received: algorithm={self.algorithm!r}"
            )
        if self.algorithm == "winograd" and self.groups > 1:
            raise ValueError(f"algorithm='winograd' needs groups=1, received: groups={self.groups}")
        if self.algorithm == "winograd" and not winograd.accepts(
            self.kernel_size, self.stride, self.pads
        ):
            raise ValueError(
                "algorithm='winograd' needs a 3x3 kernel, stride 1 and padding 1, received: "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}"
            )

    def algorithm_for(self, input_shape: tuple[int, ...]) -> str:
        """ "winograd" or "im2col": what forward uses for per-sample input shape (C, H, W)."""
        self._check_algorithm()  # the attribute may have been set after construction
        if self.groups > 1:
            return "im2col"
        if self.algorithm != "auto":
            return self.algorithm
        _, h, w = input_shape
        chosen = winograd.use_winograd(
            self.kernel_size, self.stride, self.pads, self.in_channels, self.out_channels, h, w
        )
        return "winograd" if chosen else "im2col"

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise ValueError(
                f"{self!r} expected input of shape (N, {self.in_channels}, H, W), "
                f"received per-sample shape {tuple(input_shape)}"
            )
        top, bottom, left, right = self.pads
        padded = (input_shape[1] + top + bottom, input_shape[2] + left + right)
        kh, kw = self.kernel_size
        if padded[0] < kh or padded[1] < kw:
            raise ValueError(
                f"kernel_size {self.kernel_size} is larger than the padded input {padded} "
                f"of {self!r} (input spatial size {tuple(input_shape[1:])})"
            )
        return (
            self.out_channels,
            output_size(padded[0], kh, self.stride[0]),
            output_size(padded[1], kw, self.stride[1]),
        )

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        x = self.checked_input(x)
        self._algorithm = self.algorithm_for(x.shape[1:])
        self._w = self.weight()
        self._x = x
        return self._convolve(x, self._w, self._bias(), self._algorithm)

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Inference on (N, C, H, W): the forward, keeping nothing for a backward."""
        x = self.checked_input(x)
        return self._convolve(x, self.weight(), self._bias(), self.algorithm_for(x.shape[1:]))

    def checked_input(self, x) -> np.ndarray:
        """x as an (N, C, H, W) array of the layer's dtype; a clear error for another shape."""
        x = np.asarray(x, dtype=self.dtype)
        self.check_input(x, 4, 1, self.in_channels)
        self.output_shape(x.shape[1:])
        return x

    def _convolve(self, x, weight, bias, algorithm: str) -> np.ndarray:
        """The convolution of x with ``weight``, + ``bias``; ``algorithm`` is what
        :meth:`algorithm_for` chose for x."""
        if algorithm == "winograd":
            _, out_h, out_w = self.output_shape(x.shape[1:])
            th, tw = winograd.tiles(out_h, out_w)
            self._v = self.scratch("winograd_v", (16, self.in_channels, len(x) * th * tw), x.dtype)
            y = winograd.conv3x3(x, winograd.transform_filter(weight), v_out=self._v)
            return banded.add_channel_bias(y, bias)
        return banded.conv2d(x, weight, bias, self.stride, self.pads, self.groups, self._scratch)

    def backward(self, grad_out: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        n = grad_out.shape[0]
        dy = np.ascontiguousarray(grad_out, dtype=self.dtype).reshape(n, self.out_channels, -1)
        dw = self.weight_grad_buffer()
        if self._algorithm == "winograd":
            return self._winograd_backward(dy.reshape(grad_out.shape), dw, input_grad)
        w = self._grouped_weight()
        grouped = self._grouped
        k, positions = w.shape[-1] * self.groups, dy.shape[2]
        # Whole samples per product, as the forward's bands (several only on small maps).
        group = banded.samples_per_band(k + self.out_channels, positions, n, self.dtype.itemsize)
        bands = -(-n // group)
        # One (G, O/G, K/G) product per band, summed afterwards in band order: the same sum
        # whatever the thread count.
        dw_per_band = self.scratch("dw_per_band", (bands,) + w.shape, self.dtype)
        dx = np.empty(self._x.shape, dtype=self.dtype) if input_grad else None
        threads = sample_threads(bands)
        cols = self.scratch("col", (threads, k * group * positions), self.dtype)
        dys = self.scratch("dy_band", (threads, self.out_channels * group * positions), self.dtype)

        def backward_bands(part: slice, slot: int) -> None:
            for band in range(part.start, part.stop):
                first, last = band * group, min(band * group + group, n)
                columns = (last - first) * positions
                col = cols[slot, : k * columns].reshape(k, columns)  # (K, S * P)
                per_sample = col.reshape(k, last - first, positions)
                for i in range(first, last):
                    self._im2col(i, per_sample[:, i - first][None])
                if group == 1:
                    dy_band = dy[first]
                else:  # (S, O, P) -> (O, S * P)
                    dy_band = dys[slot, : self.out_channels * columns].reshape(-1, columns)
                    np.copyto(
                        dy_band.reshape(-1, last - first, positions), dy[first:last].swapaxes(0, 1)
                    )
                dy_band = grouped(dy_band)
                np.matmul(dy_band, np.swapaxes(grouped(col), -1, -2), out=dw_per_band[band])
                if dx is not None:
                    # dcol = W^T dy per group, reusing col's buffer
                    _product(np.swapaxes(w, -1, -2), dy_band, grouped(col))
                    for i in range(first, last):
                        col2im(
                            per_sample[:, i - first][None],
                            (1,) + self._x.shape[1:],
                            *self._geometry,
                            out=dx[i : i + 1],
                        )

        over_samples(bands, backward_bands)
        np.sum(dw_per_band, axis=0, out=dw.reshape(w.shape))
        self.finish_weight_grad(dw)
        if self.use_bias:
            np.sum(dy, axis=(0, 2), out=self.grads["bias"])
        return dx

    def _grouped_weight(self) -> np.ndarray:
        """The weight as (G, O/G, K/G) matrices, K/G = C/G * kh * kw; (O, K) when G == 1."""
        return self._grouped(self._w.reshape(self.out_channels, -1))

    def _grouped(self, matrix: np.ndarray) -> np.ndarray:
        """A (rows, P) matrix of one sample viewed as (G, rows/G, P), the groups' blocks.

        With G == 1 the matrix itself, so an ungrouped layer runs plain 2-D BLAS products.
        """
        if self.groups == 1:
            return matrix
        return matrix.reshape(self.groups, -1, matrix.shape[-1])

    @property
    def _geometry(self) -> tuple:
        return (self.kernel_size, self.stride, self.pads)

    def _im2col(self, sample: int, col: np.ndarray) -> None:
        """Fill col (1, K, P) with the columns of the kept input's sample ``sample``."""
        im2col(self._x[sample : sample + 1], *self._geometry, out=col)

    def _winograd_backward(self, dy: np.ndarray, dw: np.ndarray, input_grad: bool):
        """dW through the Winograd domain, dx as the Winograd convolution of dy with W flipped."""
        o, c = self.out_channels, self.in_channels
        dm = winograd.transform_output_grad(dy)  # (16, O, N*T)
        du = np.matmul(dm, self._v.transpose(0, 2, 1))  # (16, O, C): sums over batch and tiles
        dw[...] = winograd.filter_grad(du, o, c)
        self.finish_weight_grad(dw)
        if self.use_bias:
            np.sum(dy, axis=(0, 2, 3), out=self.grads["bias"])
        if not input_grad:
            return None
        u = winograd.transform_filter(winograd.flipped_filter(self._w))  # (16, C, O)
        return winograd.conv3x3(dy, u, v_out=dm)  # dm is spent: reuse it

    def flops(self, input_shape: tuple[int, ...]) -> int:
        _, out_h, out_w = self.output_shape(input_shape)
        k = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        return 2 * k * self.out_channels * out_h * out_w

    def get_config(self) -> dict:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": self.padding if isinstance(self.padding, (int, str)) else list(self.padding),
            **self.weighted_config(),
            **({} if self.algorithm == "im2col" else {"algorithm": self.algorithm}),
            **({} if self.groups == 1 else {"groups": self.groups}),
        }
