"""Finite-difference gradient checking in float64 (central differences)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def numerical_gradient(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f / d x by central differences, perturbing ``x`` in place one element at a time."""
    grad = np.zeros_like(x, dtype=np.float64)
    flat_x, flat_grad = x.reshape(-1), grad.reshape(-1)
    for i in range(flat_x.size):
        original = flat_x[i]
        flat_x[i] = original + eps
        plus = f()
        flat_x[i] = original - eps
        minus = f()
        flat_x[i] = original
        flat_grad[i] = (plus - minus) / (2 * eps)
    return grad


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / max(||a|| + ||b||, 1e-12): scale-free, and 0 for two zero arrays."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-12))


def check_layer_gradients(
    layer, x: np.ndarray, training: bool = True, tol: float = 1e-6, before_forward=None
) -> dict[str, float]:
    """Compare a layer's analytic input and parameter gradients with central differences.

    The scalar checked is ``L = sum(forward(x) * r)`` for a fixed random ``r``, so ``dL/dy = r``
    exercises every output. ``before_forward`` runs before each forward (e.g. to reset an RNG so
    that Dropout draws the same mask every time). Asserts every relative error is below ``tol``
    and returns them by name ("input" and each parameter name).
    """
    assert x.dtype == np.float64
    prepare = before_forward or (lambda: None)
    prepare()
    y = layer.forward(x, training=training)
    r = np.random.default_rng(1).standard_normal(y.shape)
    dx = layer.backward(r.copy())
    analytic = {"input": dx, **{name: g.copy() for name, g in layer.grads.items()}}

    def loss() -> float:
        prepare()
        return float(np.sum(layer.forward(x, training=training) * r))

    # Running statistics must not drift while the loss is probed.
    buffers = {name: value.copy() for name, value in layer.buffers.items()}
    numeric = {"input": numerical_gradient(loss, x)}
    for name, value in layer.params.items():
        numeric[name] = numerical_gradient(loss, value)
    for name, value in buffers.items():
        layer.buffers[name][...] = value

    errors = {name: relative_error(analytic[name], numeric[name]) for name in numeric}
    bad = {name: err for name, err in errors.items() if not err < tol}
    assert not bad, f"{layer!r}: gradient relative errors above {tol}: {bad}"
    return errors
