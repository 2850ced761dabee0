"""Dense (fully connected) layer: ``y = x @ W.T + b``."""

from __future__ import annotations

import numpy as np

from purenn.checks import check_int
from purenn.kernels.parallel import matmul
from purenn.nn.layers.weighted import WeightedLayer


class Dense(WeightedLayer):
    """Fully connected layer, PyTorch's ``nn.Linear``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn an additive bias.
        init: "he" (default; for layers followed by ReLU) or "glorot".
        weight_norm: reparameterise the weight as ``g * v / ||v||`` (params weight_g, weight_v).
        rng: Generator or seed for the initial weights.
        dtype: float32 (default) or float64.

    Input shape: (N, in_features). Output shape: (N, out_features). Parameters:
    ``weight`` (out_features, in_features), ``bias`` (out_features,).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        init: str = "he",
        weight_norm: bool = False,
        rng: np.random.Generator | int | None = None,
        dtype=np.float32,
    ) -> None:
        self.in_features = check_int(in_features, "in_features")
        self.out_features = check_int(out_features, "out_features")
        super().__init__((self.out_features, self.in_features), bias, init, weight_norm, rng, dtype)

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        self._x = self._checked(x)
        self._w = self.weight()
        return self._affine(self._x, self._w, self._bias(), relu=False)

    def infer(
        self,
        x: np.ndarray,
        weight: np.ndarray | None = None,
        bias: np.ndarray | None = None,
        relu: bool = False,
    ) -> np.ndarray:
        """Inference: ``relu(x @ W.T + b)`` (ReLU when asked), keeping nothing for a backward.

        ``weight`` (out, in) and ``bias`` (out,) replace the layer's own when given (the fast
        path folds a following BatchNorm1D into them).
        """
        weight = self.weight() if weight is None else weight
        bias = self._bias() if bias is None else bias
        return self._affine(self._checked(x), weight, bias, relu)

    def _checked(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=self.dtype)
        self.check_input(x, 2, 1, self.in_features)
        return x

    @staticmethod
    def _affine(x, weight, bias, relu: bool) -> np.ndarray:
        # y = x W^T computed as (W x^T)^T: split over threads by rows of W (each reads half the
        # weights, even for one image); OpenBLAS's x @ W^T was seen 20x slower at 2 or 3 rows
        y = np.ascontiguousarray(matmul(weight, x.T).T)
        if bias is not None:
            y += bias
        if relu:
            np.maximum(y, 0, out=y)
        return y

    def backward(self, grad_out: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        dy = np.asarray(grad_out, dtype=self.dtype)
        dw = self.weight_grad_buffer()
        matmul(dy.T, self._x, out=dw)  # dL/dW = dy^T x, (out, N) @ (N, in)
        self.finish_weight_grad(dw)
        if self.use_bias:
            np.sum(dy, axis=0, out=self.grads["bias"])
        if not input_grad:
            return None
        return matmul(dy, self._w)  # dL/dx = dy W, (N, out) @ (out, in)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(
                f"{self!r} expected input of shape (N, {self.in_features}), "
                f"received per-sample shape {tuple(input_shape)}"
            )
        return (self.out_features,)

    def flops(self, input_shape: tuple[int, ...]) -> int:
        return 2 * self.in_features * self.out_features

    def get_config(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            **self.weighted_config(),
        }
