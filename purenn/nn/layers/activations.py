"""Element-wise activations and softmax; each keeps the least that its derivative needs."""

from __future__ import annotations

import numpy as np

from purenn.kernels.ops import softmax
from purenn.kernels.parallel import over_batch
from purenn.nn.layers.base import Layer, as_float_array


class ReLU(Layer):
    """``max(x, 0)``; derivative 1 where x > 0, else 0 (kept as a boolean mask).

    Both passes split the batch over threads (``purenn.kernels.parallel``; exact, element-wise).
    """

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        x = as_float_array(x)
        self._mask = np.empty(x.shape, dtype=bool)
        y = np.empty_like(x)

        def relu(rows: slice) -> None:
            np.greater(x[rows], 0, out=self._mask[rows])
            np.multiply(x[rows], self._mask[rows], out=y[rows])

        over_batch(len(x), relu, x.nbytes)
        return y

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = as_float_array(x)
        y = np.empty_like(x)
        over_batch(len(x), lambda rows: np.maximum(x[rows], 0, out=y[rows]), x.nbytes)
        return y

    def backward(self, grad_out: np.ndarray, input_grad: bool = True) -> np.ndarray:
        dx = np.empty_like(grad_out)

        def gate(rows: slice) -> None:
            np.multiply(grad_out[rows], self._mask[rows], out=dx[rows])

        over_batch(len(dx), gate, dx.nbytes)
        return dx

    def flops(self, input_shape: tuple[int, ...]) -> int:
        return int(np.prod(input_shape))


class LeakyReLU(Layer):
    """``x`` for x > 0, else ``negative_slope * x``; derivative 1 or negative_slope."""

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        if not np.isfinite(negative_slope) or negative_slope < 0:
            raise ValueError(
                f"negative_slope must be a finite number >= 0, "
                f"received: negative_slope={negative_slope!r}"
            )
        self.negative_slope = float(negative_slope)

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        x = as_float_array(x)
        self._mask = x > 0
        return np.where(self._mask, x, x * x.dtype.type(self.negative_slope))

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = as_float_array(x)
        return np.where(x > 0, x, x * x.dtype.type(self.negative_slope))

    def backward(self, grad_out: np.ndarray, input_grad: bool = True) -> np.ndarray:
        return np.where(self._mask, grad_out, grad_out * grad_out.dtype.type(self.negative_slope))

    def flops(self, input_shape: tuple[int, ...]) -> int:
        return int(np.prod(input_shape))

    def get_config(self) -> dict:
        return {"negative_slope": self.negative_slope}


class Sigmoid(Layer):
    """``1 / (1 + exp(-x))``, computed without overflow; derivative ``y * (1 - y)``."""

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        self._y = self.infer(x)
        return self._y

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = as_float_array(x)
        # exp of a non-positive number never overflows: use exp(-|x|) for both signs.
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)

    def backward(self, grad_out: np.ndarray, input_grad: bool = True) -> np.ndarray:
        return grad_out * self._y * (1 - self._y)

    def flops(self, input_shape: tuple[int, ...]) -> int:
        return 4 * int(np.prod(input_shape))


class Tanh(Layer):
    """``tanh(x)``; derivative ``1 - y**2``."""

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        self._y = self.infer(x)
        return self._y

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(as_float_array(x))

    def backward(self, grad_out: np.ndarray, input_grad: bool = True) -> np.ndarray:
        return grad_out * (1 - np.square(self._y))

    def flops(self, input_shape: tuple[int, ...]) -> int:
        return 4 * int(np.prod(input_shape))


class Softmax(Layer):
    """Softmax over the last axis, shifted by the row maximum so exp never overflows.

    Jacobian-vector product: ``dx = y * (dy - sum(dy * y, axis=-1))``. For classification
    train on logits with ``SoftmaxCrossEntropy`` instead, which is more stable.
    """

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        self._y = self.infer(x)
        return self._y

    def infer(self, x: np.ndarray) -> np.ndarray:
        return softmax(as_float_array(x))

    def backward(self, grad_out: np.ndarray, input_grad: bool = True) -> np.ndarray:
        y = self._y
        return y * (grad_out - np.sum(grad_out * y, axis=-1, keepdims=True))

    def flops(self, input_shape: tuple[int, ...]) -> int:
        return 5 * int(np.prod(input_shape))
