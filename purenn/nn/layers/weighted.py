"""Shared machinery for layers with a weight matrix: initialisation and weight normalization.

Weight normalization (Salimans & Kingma, 2016) reparameterises each output unit's weights as
``w = g * v / ||v||`` where the norm runs over every axis but the first, exactly like
``torch.nn.utils.weight_norm(layer, dim=0)``: ``weight_g`` has shape (out, 1, ...) and
``weight_v`` the weight's shape. Given ``dL/dw``, with ``n = ||v||`` per unit::

    dL/dg = sum(dL/dw * v) / n
    dL/dv = (g / n) * (dL/dw - (dL/dg / n) * v)

(the second term removes the component of the gradient along v, which only rescales w).
"""

from __future__ import annotations

import numpy as np

from purenn.nn.init import initialize
from purenn.nn.layers.base import Layer, check_dtype


def make_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """A Generator from a Generator, a seed, or None (fresh entropy)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _unit_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per output unit (first axis), the dot product of a and b over all other axes: (out,)."""
    return np.einsum("ij,ij->i", a.reshape(len(a), -1), b.reshape(len(b), -1))


class WeightedLayer(Layer):
    """A layer whose parameters are a weight (optionally weight-normalised) and an optional bias."""

    def __init__(
        self,
        weight_shape: tuple[int, ...],
        bias: bool,
        init: str,
        weight_norm: bool,
        rng: np.random.Generator | int | None,
        dtype,
    ) -> None:
        super().__init__()
        self.dtype = check_dtype(dtype)
        self.use_bias = bool(bias)
        self.init = init
        self.weight_norm = bool(weight_norm)
        weight = initialize(init, weight_shape, make_rng(rng), self.dtype)
        if self.weight_norm:
            # PyTorch's weight_norm starts from g = ||v||, so the effective weight equals v.
            self.add_param("weight_g", self._unit_norms(weight))
            self.add_param("weight_v", weight)
        else:
            self.add_param("weight", weight)
        if self.use_bias:
            self.add_param("bias", np.zeros(weight_shape[0], dtype=self.dtype))

    @staticmethod
    def _unit_norms(v: np.ndarray) -> np.ndarray:
        """||v|| over every axis but the first, kept as shape (out, 1, ...)."""
        return np.sqrt(_unit_dots(v, v)).reshape((-1,) + (1,) * (v.ndim - 1))

    def weight(self) -> np.ndarray:
        """The effective weight of shape (out, in, ...): ``g * v / ||v||`` under weight norm."""
        if not self.weight_norm:
            return self.params["weight"]
        v = self.params["weight_v"]
        self._v_norm = self._unit_norms(v)
        return v * (self.params["weight_g"] / self._v_norm)

    def _bias(self) -> np.ndarray | None:
        """The bias (out,), or None for a layer built with ``bias=False``."""
        return self.params["bias"] if self.use_bias else None

    def weight_grad_buffer(self) -> np.ndarray:
        """Where backward writes dL/dw: the weight's own gradient, or a scratch for weight norm."""
        if not self.weight_norm:
            return self.grads["weight"]
        return np.empty_like(self.params["weight_v"])

    def finish_weight_grad(self, dw: np.ndarray) -> None:
        """Map dL/dw onto dL/dg and dL/dv under weight norm (see the module docstring)."""
        if not self.weight_norm:
            return
        v, g, n = self.params["weight_v"], self.params["weight_g"], self._v_norm
        dg = _unit_dots(dw, v).reshape(g.shape) / n
        self.grads["weight_g"][...] = dg
        np.multiply(g / n, dw - (dg / n) * v, out=self.grads["weight_v"])

    def weighted_config(self) -> dict:
        return {
            "bias": self.use_bias,
            "init": self.init,
            "weight_norm": self.weight_norm,
            "dtype": self.dtype.name,
        }
