"""One helper to run a purenn layer and its torch.nn twin on the same input and compare.

Used by every layer's parity test (torch is a test-only dependency; tests skip without it).
"""

from __future__ import annotations

import numpy as np
import pytest

# purenn parameter names that differ from the torch module's (weight norm parametrisation).
from purenn.io.safetensors import TORCH_NAMES

TOLERANCE = {np.float64: 1e-6, np.float32: 1e-4}


def assert_close(actual, expected, tol: float, what: str) -> None:
    """max |actual - expected| <= tol * max(1, max |expected|): relative at scale, absolute at 0."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    error = float(np.abs(actual - expected).max(initial=0.0))
    assert error <= tol * scale, f"{what}: max abs error {error:.3g} > {tol:g} x {scale:.3g}"


def torch_dtype(dtype):
    torch = pytest.importorskip("torch")
    return torch.float64 if np.dtype(dtype) == np.float64 else torch.float32


def copy_params_to_torch(layer, module) -> None:
    """Overwrite the torch module's parameters and buffers with the purenn layer's."""
    torch = pytest.importorskip("torch")
    named = dict(module.named_parameters()) | dict(module.named_buffers())
    with torch.no_grad():
        for store in (layer.params, layer.buffers):
            for name, value in store.items():
                target = named[TORCH_NAMES.get(name, name)]
                target.copy_(torch.from_numpy(value.copy()).reshape(target.shape))


def assert_layer_matches_torch(layer, module, x: np.ndarray, training: bool = True, steps=1):
    """Forward, input gradient, parameter gradients and buffers of ``layer`` equal ``module``'s.

    The layer must already have ``x``'s dtype; the module is cast to it and given the layer's
    parameters. ``steps`` > 1 repeats forward/backward on fresh inputs (running statistics).
    """
    torch = pytest.importorskip("torch")
    dtype = x.dtype.type
    tol = TOLERANCE[dtype]
    module = module.to(torch_dtype(dtype))
    module.train(training)
    copy_params_to_torch(layer, module)
    rng = np.random.default_rng(7)
    named = dict(module.named_parameters())
    for step in range(steps):
        inputs = x if step == 0 else rng.standard_normal(x.shape).astype(dtype)
        x_torch = torch.tensor(inputs, requires_grad=True)
        y_torch = module(x_torch)
        y = layer.forward(inputs.copy(), training=training)
        assert y.dtype == dtype, f"{layer!r}: output dtype {y.dtype}, input {dtype}"
        assert_close(y, y_torch.detach().numpy(), tol, f"{layer!r} step {step} output")
        dy = rng.standard_normal(y.shape).astype(dtype)
        module.zero_grad()
        y_torch.backward(torch.from_numpy(dy.copy()))
        dx = layer.backward(dy)
        assert dx.dtype == dtype, f"{layer!r}: input gradient dtype {dx.dtype}"
        assert_close(dx, x_torch.grad.numpy(), tol, f"{layer!r} step {step} input gradient")
        for name, grad in layer.grads.items():
            expected = named[TORCH_NAMES.get(name, name)].grad.numpy()
            assert_close(grad, expected.reshape(grad.shape), tol, f"{layer!r} grad {name}")
    buffers = dict(module.named_buffers())
    for name, value in layer.buffers.items():
        assert_close(value, buffers[name].numpy(), tol, f"{layer!r} buffer {name}")
