"""Flatten: (N, d1, d2, ...) -> (N, d1*d2*...), a view; backward reshapes the gradient back."""

from __future__ import annotations

import numpy as np

from purenn.nn.layers.base import Layer, as_float_array


class Flatten(Layer):
    """Keep the batch axis, merge all others (PyTorch's ``nn.Flatten()`` with start_dim=1)."""

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        x = as_float_array(x)
        if x.ndim < 2:
            raise ValueError(
                f"{self!r} expected input with a batch axis (N, ...), received shape {x.shape}"
            )
        self._input_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, grad_out: np.ndarray, input_grad: bool = True) -> np.ndarray:
        return grad_out.reshape(self._input_shape)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (int(np.prod(input_shape)),)
