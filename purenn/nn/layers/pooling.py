"""Pooling over NCHW batches: max, average and global average.

Max and average pooling loop over the kh*kw kernel offsets, each a strided view of the whole
batch (``ops.window_slices``), so the work is kh*kw vectorised passes whatever the stride;
overlapping windows simply add their contributions in backward.
"""

from __future__ import annotations

import numpy as np

from purenn.kernels.ops import maxpool2x2, output_size, pair, window_slices
from purenn.kernels.parallel import over_batch
from purenn.nn.layers.base import Layer, as_float_array


class _Pool2D(Layer):
    """Window geometry shared by max and average pooling (no padding, as torch's defaults)."""

    def __init__(self, kernel_size, stride=None) -> None:
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 3:
            raise ValueError(
                f"{self!r} expected input of shape (N, C, H, W), "
                f"received per-sample shape {tuple(input_shape)}"
            )
        c, h, w = input_shape
        kh, kw = self.kernel_size
        if h < kh or w < kw:
            raise ValueError(
                f"kernel_size {self.kernel_size} is larger than the input {(h, w)} of {self!r}"
            )
        return (c, output_size(h, kh, self.stride[0]), output_size(w, kw, self.stride[1]))

    def _offsets(self, out_h: int, out_w: int):
        """(k, index) for each kernel offset k = i*kw + j, index a strided view of the input."""
        kh, kw = self.kernel_size
        for i in range(kh):
            for j in range(kw):
                yield i * kw + j, window_slices(i, j, out_h, out_w, self.stride)

    def _prepare(self, x) -> tuple[np.ndarray, int, int]:
        x = as_float_array(x)
        self.check_input(x, 4, None, None)
        _, out_h, out_w = self.output_shape(x.shape[1:])
        self._input_shape, self._dtype = x.shape, x.dtype
        return x, out_h, out_w

    def flops(self, input_shape: tuple[int, ...]) -> int:
        c, out_h, out_w = self.output_shape(input_shape)
        return c * out_h * out_w * self.kernel_size[0] * self.kernel_size[1]

    def get_config(self) -> dict:
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride)}


class MaxPool2D(_Pool2D):
    """Max pooling, PyTorch's ``nn.MaxPool2d`` (no padding, dilation 1).

    Args:
        kernel_size: int or (kh, kw).
        stride: int or pair; defaults to kernel_size. Overlapping windows (stride < kernel) work.

    Input shape: (N, C, H, W). Output shape: (N, C, Ho, Wo), ``Ho = (H - kh) // sh + 1``.
    Keeps only compact masks for backward: two boolean masks in the 2x2 stride-2 case, else an
    int8 (int16 for kernels over 127 cells) argmax per output. Ties go to the first maximum in
    row-major window order, like PyTorch.
    """

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        x, out_h, out_w = self._prepare(x)
        self._fast = self.kernel_size == (2, 2) and self.stride == (2, 2)
        if self._fast:
            return self._forward_2x2(x, out_h, out_w)
        offsets = self._offsets(out_h, out_w)
        _, first = next(offsets)
        out = x[first].copy()
        count = self.kernel_size[0] * self.kernel_size[1]
        argmax = np.zeros(out.shape, dtype=np.int8 if count <= 127 else np.int16)
        for k, index in offsets:
            better = x[index] > out  # strict: earlier offsets win ties
            np.copyto(out, x[index], where=better)
            argmax[better] = k
        self._argmax = argmax
        return out

    def infer(self, x: np.ndarray) -> np.ndarray:
        """The pooled maxima alone: no masks or argmax for a backward."""
        x, out_h, out_w = self._prepare(x)
        out = np.empty(x.shape[:2] + (out_h, out_w), dtype=x.dtype)
        if self.kernel_size == (2, 2) and self.stride == (2, 2):
            over_batch(len(x), lambda rows: maxpool2x2(x[rows], out[rows]), x.nbytes)
            return out
        offsets = self._offsets(out_h, out_w)
        _, first = next(offsets)
        out[...] = x[first]
        for _, index in offsets:
            np.maximum(out, x[index], out=out)
        return out

    def _forward_2x2(self, x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
        """The common 2x2 stride-2 case as two pairwise maxima: across columns, then rows.

        ``right`` marks where the right column of a pair won, ``lower`` where the bottom row of
        the column-maxima won. Strict comparisons keep the first maximum in row-major order,
        as PyTorch does; the masks (1.5 bits per input element) are all backward needs.
        """
        n, c = x.shape[:2]
        x = x[:, :, : 2 * out_h, : 2 * out_w]  # odd borders are outside every window
        out = np.empty((n, c, out_h, out_w), dtype=x.dtype)
        self._right = np.empty((n, c, 2 * out_h, out_w), dtype=bool)
        self._lower = np.empty((n, c, out_h, out_w), dtype=bool)

        def pool(batch: slice) -> None:
            left, right = x[batch, :, :, 0::2], x[batch, :, :, 1::2]
            np.greater(right, left, out=self._right[batch])
            columns = np.maximum(left, right)  # (n, C, 2*Ho, Wo)
            top, bottom = columns[:, :, 0::2], columns[:, :, 1::2]
            np.greater(bottom, top, out=self._lower[batch])
            np.maximum(top, bottom, out=out[batch])

        over_batch(n, pool, x.nbytes)
        return out

    def _backward_2x2(self, dy: np.ndarray) -> np.ndarray:
        """Route dy back through the row choice, then the column choice (each exactly split)."""
        n, c, h, w = self._input_shape
        out_h, out_w = dy.shape[2:]
        odd = h % 2 or w % 2
        dx = (np.zeros if odd else np.empty)(self._input_shape, dtype=self._dtype)

        def route(batch: slice) -> None:
            dy_rows = dy[batch]
            d_columns = np.empty((len(dy_rows), c, 2 * out_h, out_w), dtype=self._dtype)
            # dy * mask and dy - dy * mask are dy or 0 exactly: the gradient is split, not scaled.
            np.multiply(dy_rows, self._lower[batch], out=d_columns[:, :, 1::2])
            np.subtract(dy_rows, d_columns[:, :, 1::2], out=d_columns[:, :, 0::2])
            inside = dx[batch, :, : 2 * out_h, : 2 * out_w]
            np.multiply(d_columns, self._right[batch], out=inside[..., 1::2])
            np.subtract(d_columns, inside[..., 1::2], out=inside[..., 0::2])

        over_batch(n, route, dx.nbytes)
        return dx

    def backward(self, grad_out: np.ndarray, input_grad: bool = True) -> np.ndarray:
        dy = np.asarray(grad_out, dtype=self._dtype)
        _, _, out_h, out_w = dy.shape
        if self._fast:
            return self._backward_2x2(dy)
        dx = np.zeros(self._input_shape, dtype=self._dtype)
        # Each output's gradient goes to the one input that won its window.
        for k, index in self._offsets(out_h, out_w):
            dx[index] += np.where(self._argmax == k, dy, 0)
        return dx


class AvgPool2D(_Pool2D):
    """Average pooling, PyTorch's ``nn.AvgPool2d`` (no padding).

    Input shape: (N, C, H, W). Output shape: (N, C, Ho, Wo). Backward spreads each output's
    gradient equally, ``dy / (kh*kw)``, over its window.
    """

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        x, out_h, out_w = self._prepare(x)
        out = np.zeros(x.shape[:2] + (out_h, out_w), dtype=x.dtype)
        for _, index in self._offsets(out_h, out_w):
            out += x[index]
        out *= x.dtype.type(1.0 / (self.kernel_size[0] * self.kernel_size[1]))
        return out

    def backward(self, grad_out: np.ndarray, input_grad: bool = True) -> np.ndarray:
        share = np.asarray(grad_out, dtype=self._dtype) * self._dtype.type(
            1.0 / (self.kernel_size[0] * self.kernel_size[1])
        )
        dx = np.zeros(self._input_shape, dtype=self._dtype)
        for _, index in self._offsets(share.shape[2], share.shape[3]):
            dx[index] += share
        return dx


class GlobalAvgPool2D(Layer):
    """Mean over the spatial axes: (N, C, H, W) -> (N, C). Backward: ``dy / (H*W)`` everywhere."""

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        x = as_float_array(x)
        self.check_input(x, 4, None, None)
        self._input_shape = x.shape
        return x.mean(axis=(2, 3), dtype=x.dtype)

    def backward(self, grad_out: np.ndarray, input_grad: bool = True) -> np.ndarray:
        n, c, h, w = self._input_shape
        dy = np.asarray(grad_out) * grad_out.dtype.type(1.0 / (h * w))
        return np.broadcast_to(dy[:, :, None, None], self._input_shape).copy()

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 3:
            raise ValueError(
                f"{self!r} expected input of shape (N, C, H, W), "
                f"received per-sample shape {tuple(input_shape)}"
            )
        return (input_shape[0],)

    def flops(self, input_shape: tuple[int, ...]) -> int:
        return int(np.prod(input_shape))
