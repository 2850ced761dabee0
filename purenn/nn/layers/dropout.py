"""Inverted dropout: scale the kept units by 1/(1-p) in training so evaluation is the identity."""

from __future__ import annotations

import numpy as np

from purenn.nn.layers.base import Layer, as_float_array
from purenn.nn.layers.weighted import make_rng


class Dropout(Layer):
    """Zero each element with probability ``p`` in training; identity in evaluation.

    Args:
        p: drop probability in [0, 1).
        rng: Generator or seed for the masks. Its state is part of a checkpoint (see
            ``Sequential.rng_states``), so a resumed run draws the same masks.

    Any input shape; output has the same shape and dtype. Backward applies the same mask
    and scale: ``dx = dy * mask / (1 - p)``.

    Attributes:
        batch_part: None, or ``(start, total)`` when the input is rows ``start ..`` of a batch
            of ``total`` rows split over processes: the masks of the whole batch are drawn and
            this part's rows kept, so the masks do not depend on the split (set per step by
            ``purenn.distributed.DataParallel``).
    """

    def __init__(self, p: float = 0.5, rng: np.random.Generator | int | None = None) -> None:
        super().__init__()
        if not (isinstance(p, (int, float)) and 0.0 <= p < 1.0):
            raise ValueError(f"p must be in [0, 1), received: p={p!r}")
        self.p = float(p)
        self.rng = make_rng(rng)
        self._mask = None
        self.batch_part: tuple[int, int] | None = None

    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        x = as_float_array(x)
        if not training or self.p == 0.0:
            self._mask = None
            return x
        if self.batch_part is None:
            self._mask = self.rng.random(x.shape, dtype=np.float32) >= self.p
        else:
            start, total = self.batch_part
            draws = self.rng.random((total, *x.shape[1:]), dtype=np.float32)
            self._mask = draws[start : start + len(x)] >= self.p
        self._scale = x.dtype.type(1.0 / (1.0 - self.p))
        return x * self._mask * self._scale

    def backward(self, grad_out: np.ndarray, input_grad: bool = True) -> np.ndarray:
        if self._mask is None:
            return grad_out
        return grad_out * self._mask * self._scale

    def get_config(self) -> dict:
        return {"p": self.p}
