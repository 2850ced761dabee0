"""Batch normalization with PyTorch's semantics (``nn.BatchNorm1d`` / ``nn.BatchNorm2d``).

Training normalises with the batch statistics over every axis but the channel axis
(biased variance), and updates the running statistics with the *unbiased* variance:
``running = (1 - momentum) * running + momentum * batch``. Evaluation uses the running ones.

Backward in training mode, per channel, with m reduced elements, xhat the normalised input
and g = dL/dxhat = dy * gamma::

    dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)

(the two subtracted terms are the gradient flowing through the batch mean and variance).
In evaluation mode the statistics are constants and ``dx = g / sqrt(running_var + eps)``.
"""

from __future__ import annotations

import numpy as np

from purenn.checks import check_int
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

    def _shape(self) -> tuple[int, ...]:
        """Broadcast shape of per-channel vectors against the input: (1, C, 1, ...)."""
        return (1, self.num_features) + (1,) * (self.input_ndim - 2)

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        x = np.asarray(x, dtype=self.dtype)
        self.check_input(x, self.input_ndim, 1, self.num_features)
        axes = (0,) + tuple(range(2, x.ndim))
        shape = self._shape()
        self._training = training
        if training:
            count = x.size // self.num_features
            if count < 2:
                raise ValueError(
                    f"{self!r} needs more than one value per channel in training, "
                    f"received input of shape {tuple(x.shape)}"
                )
            mean = x.mean(axis=axes, dtype=self.dtype)
            centered = x - mean.reshape(shape)
            var = np.mean(np.square(centered), axis=axes, dtype=self.dtype)
            m = self.momentum
            running_mean, running_var = self.buffers["running_mean"], self.buffers["running_var"]
            running_mean *= 1 - m
            running_mean += m * mean
            running_var *= 1 - m
            running_var += m * var * (count / (count - 1))
        else:
            centered = x - self.buffers["running_mean"].reshape(shape)
            var = self.buffers["running_var"]
        self._inv_std = (1.0 / np.sqrt(var + self.dtype.type(self.eps))).astype(self.dtype)
        self._xhat = centered * self._inv_std.reshape(shape)
        return self._xhat * self.params["weight"].reshape(shape) + self.params["bias"].reshape(
            shape
        )

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
        scale, shift = (v.astype(self.dtype).reshape(self._shape()) for v in self.folded())
        y = x * scale
        y += shift
        if relu:
            np.maximum(y, 0, out=y)
        return y

    def backward(self, grad_out: np.ndarray, input_grad: bool = True) -> np.ndarray:
        dy = np.asarray(grad_out, dtype=self.dtype)
        axes = (0,) + tuple(range(2, dy.ndim))
        shape = self._shape()
        np.sum(dy * self._xhat, axis=axes, out=self.grads["weight"])
        np.sum(dy, axis=axes, out=self.grads["bias"])
        scale = (self.params["weight"] * self._inv_std).reshape(shape)
        if not self._training:
            return dy * scale
        count = dy.size // self.num_features
        mean_dy = (self.grads["bias"] / count).reshape(shape)
        mean_dy_xhat = (self.grads["weight"] / count).reshape(shape)
        return (dy - mean_dy - self._xhat * mean_dy_xhat) * scale

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
