"""Batch normalization with PyTorch's semantics (``nn.BatchNorm1d`` / ``nn.BatchNorm2d``).

Training normalises with the batch statistics over every axis but the channel axis
(biased variance), and updates the running statistics with the *unbiased* variance:
``running = (1 - momentum) * running + momentum * batch``. Evaluation uses the running ones.

Backward in training mode, per channel, with m reduced elements, xhat the normalised input
and g = dL/dxhat = dy * gamma::

    dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)

(the two subtracted terms are the gradient flowing through the batch mean and variance).
In evaluation mode the statistics are constants and ``dx = g / sqrt(running_var + eps)``.

Both passes are per-channel affine maps, ``y = scale * x + shift`` and
``dx = scale * dy + b * x + c``, and their statistics per-channel sums, computed by
``purenn.kernels.normalization`` in few passes over memory, threaded over the batch: forward
reads x twice (the mean; the centred squares, centred a cache-sized block at a time) and writes
y; backward reads dy and x twice and writes dx. The layer keeps x (a reference, no copy) and the
float64 per-channel mean and 1/std for backward; xhat is never stored.
"""

from __future__ import annotations

import numpy as np

from purenn.checks import check_int
from purenn.kernels.normalization import centred_dot, channel_affine, channel_moments
from purenn.nn.layers.base import Layer, check_dtype


class _BatchNorm(Layer):
    #: rank of the input; the channel axis is always 1
    input_ndim = 2

    def __init__(
        self, num_features: int, momentum: float = 0.1, eps: float = 1e-5, dtype=np.float32
    ) -> None:
        super().__init__()
        self.num_features = check_int(num_features, "num_features")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], received: momentum={momentum!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, received: eps={eps!r}")
        self.momentum, self.eps = float(momentum), float(eps)
        self.dtype = check_dtype(dtype)
        self.add_param("weight", np.ones(num_features, dtype=self.dtype))
        self.add_param("bias", np.zeros(num_features, dtype=self.dtype))
        self.buffers["running_mean"] = np.zeros(num_features, dtype=self.dtype)
        self.buffers["running_var"] = np.ones(num_features, dtype=self.dtype)

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        x = np.asarray(x, dtype=self.dtype)
        self.check_input(x, self.input_ndim, 1, self.num_features)
        # (N, C, P) with P = H*W (1 for BatchNorm1D): the kernels' layout, a view of x
        self._x = x.reshape(x.shape[0], self.num_features, -1)
        self._training = training
        if training:
            count = x.size // self.num_features
            if count < 2:
                raise ValueError(
                    f"{self!r} needs more than one value per channel in training, "
                    f"received input of shape {tuple(x.shape)}"
                )
            mean, var = channel_moments(self._x)  # float64 (C,)
            m = self.momentum
            running_mean, running_var = self.buffers["running_mean"], self.buffers["running_var"]
            running_mean *= 1 - m
            running_mean += m * mean
            running_var *= 1 - m
            running_var += m * var * (count / (count - 1))
        else:
            mean = self.buffers["running_mean"].astype(np.float64)
            var = self.buffers["running_var"].astype(np.float64)
        self._mean, self._inv_std = mean, 1.0 / np.sqrt(var + self.eps)
        # y = (x - mean) * inv_std * weight + bias = scale * x + shift: one pass over x
        scale = self.params["weight"] * self._inv_std
        y = np.empty_like(self._x)
        channel_affine(y, self._x, scale, self.params["bias"] - self._mean * scale)
        return y.reshape(x.shape)

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(scale, shift) per channel in float64: evaluation mode computes ``x * scale + shift``.

        ``scale = gamma / sqrt(running_var + eps)``, ``shift = beta - running_mean * scale``; the
        fast path folds them into a preceding convolution's or dense layer's weight and bias.
        """
        scale = self.params["weight"] / np.sqrt(
            self.buffers["running_var"].astype(np.float64) + self.eps
        )
        return scale, self.params["bias"] - self.buffers["running_mean"] * scale

    def infer(self, x: np.ndarray, relu: bool = False) -> np.ndarray:
        """Inference: ``x * scale + shift`` per channel (see :meth:`folded`), then ReLU if asked."""
        x = np.asarray(x, dtype=self.dtype)
        self.check_input(x, self.input_ndim, 1, self.num_features)
        rows = x.reshape(x.shape[0], self.num_features, -1)
        y = np.empty_like(rows)
        channel_affine(y, rows, *self.folded())
        if relu:
            np.maximum(y, 0, out=y)
        return y.reshape(x.shape)

    def backward(self, grad_out: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        dy = np.ascontiguousarray(grad_out, dtype=self.dtype).reshape(self._x.shape)
        inv_std = self._inv_std
        # sum dy and sum dy * xhat, xhat = (x - mean) * inv_std, from one pass over dy and x
        sum_dy, sum_dy_centred = centred_dot(dy, self._x, self._mean)
        sum_dy_xhat = sum_dy_centred * inv_std
        self.grads["bias"][...] = sum_dy
        self.grads["weight"][...] = sum_dy_xhat
        if not input_grad:
            return None
        scale = self.params["weight"] * inv_std
        dx = np.empty_like(dy)
        if not self._training:
            return channel_affine(dx, dy, scale, np.zeros_like(scale)).reshape(grad_out.shape)
        # dx = scale * (dy - mean(dy) - xhat * mean(dy * xhat)) = scale * dy + b * x + c
        count = dy.size // self.num_features
        b = -scale * inv_std * (sum_dy_xhat / count)
        c = -scale * (sum_dy / count) - b * self._mean
        return channel_affine(dx, self._x, b, c, dy=dy, dy_scale=scale).reshape(grad_out.shape)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != self.input_ndim - 1 or input_shape[0] != self.num_features:
            want = ", ".join(["N", str(self.num_features)] + ["*"] * (self.input_ndim - 2))
            raise ValueError(
                f"{self!r} expected input of shape ({want}), "
                f"received per-sample shape {tuple(input_shape)}"
            )
        return tuple(input_shape)

    def flops(self, input_shape: tuple[int, ...]) -> int:
        return 2 * int(np.prod(input_shape))

    def get_config(self) -> dict:
        return {
            "num_features": self.num_features,
            "momentum": self.momentum,
            "eps": self.eps,
            "dtype": self.dtype.name,
        }


class BatchNorm1D(_BatchNorm):
    """Batch normalization over (N, C) inputs, per feature. Params weight, bias (C,)."""

    input_ndim = 2


class BatchNorm2D(_BatchNorm):
    """Batch normalization over (N, C, H, W) inputs, per channel. Params weight, bias (C,)."""

    input_ndim = 4
