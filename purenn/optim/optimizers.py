"""Optimizers (SGD, Adam, AdamW) and global-norm gradient clipping.

Parameters are ``(value, grad)`` pairs of NumPy arrays of equal shape and floating dtype, as
returned by a model's ``parameters()``. Layers write ``grad`` in place during backward; the
optimizers here update ``value`` in place and never read or write anything else of the model.
The update formulas are PyTorch's (``torch.optim.SGD``, ``Adam``, ``AdamW``) for one parameter
group with ``dampening=0``, ``amsgrad=False`` and ``maximize=False``.

Every step works in place: the state (momentum buffers, moment estimates) is allocated once at
construction, and a step walks each parameter in flat chunks of ``CHUNK`` elements whose
temporaries go into a small scratch workspace shared by all parameters, so a step allocates no
parameter-sized array.

State dict layout (flat, NumPy arrays and plain scalars only, so it can be written with
``np.savez`` and read back with ``allow_pickle=False``)::

    "step"             int    number of steps taken (Adam's bias correction uses it)
    "lr"               float  current learning rate
    "<buffer>.<i>"     array  per-parameter state of parameter i (in ``params`` order):
                              SGD with momentum: "momentum_buffer.<i>";
                              Adam, AdamW: "exp_avg.<i>", "exp_avg_sq.<i>"

Hyperparameters other than ``lr`` are not part of the state: they come from the constructor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from purenn.checks import require

Param = tuple[np.ndarray, np.ndarray]

#: Elements per chunk of an update step (512 KB of float32 per array: cache-resident).
CHUNK = 131072


def _add_scaled(y: np.ndarray, alpha: float, x: np.ndarray, out: np.ndarray, tmp: np.ndarray):
    """Computes ``out = y + alpha * x`` in two in-place passes through ``tmp``.

    ``tmp`` may be ``x`` or ``out`` but not ``y`` (it is written before ``y`` is read).
    """
    np.multiply(x, alpha, out=tmp)
    np.add(y, tmp, out=out)


def _as_param_list(params: Iterable[Param]) -> list[Param]:
    """Materialises and checks an iterable of ``(value, grad)`` pairs."""
    pairs = list(params)
    if not pairs:
        raise ValueError("params must hold at least one (value, grad) pair, received: params=[]")
    checked = []
    for i, pair in enumerate(pairs):
        try:
            value, grad = pair
        except (TypeError, ValueError):
            raise ValueError(
                f"params[{i}] must be a (value, grad) pair, received: {type(pair).__name__}"
            ) from None
        if not (isinstance(value, np.ndarray) and isinstance(grad, np.ndarray)):
            raise ValueError(
                f"params[{i}] must be a pair of NumPy arrays, "
                f"received: ({type(value).__name__}, {type(grad).__name__})"
            )
        if not (
            np.issubdtype(value.dtype, np.floating)
            and (value.dtype, value.shape) == (grad.dtype, grad.shape)
            and value.flags.writeable
            and value.flags.c_contiguous
            and grad.flags.c_contiguous
        ):
            raise ValueError(
                f"params[{i}] must be writeable C-contiguous floating arrays of equal shape "
                "and dtype, "
                f"received: value {value.shape} {value.dtype} (writeable={value.flags.writeable}), "
                f"grad {grad.shape} {grad.dtype}"
            )
        checked.append((value, grad))
    return checked


class Optimizer:
    """Base class: parameters, learning rate, step count, state buffers, scratch, (de)serialisation.

    Subclasses name their per-parameter state buffers and the number of scratch arrays a step
    needs, and implement ``_update`` for one parameter.

    Args:
        params: Iterable of ``(value, grad)`` pairs of floating arrays of equal shape and dtype.
        lr: Learning rate, ``>= 0``. A schedule may reassign ``optimizer.lr`` between steps.
        buffer_names: Names of the per-parameter state arrays (zero-initialised, value's shape).
        n_scratch: Number of scratch arrays of a parameter's shape ``_update`` receives.

    Attributes:
        params: The list of ``(value, grad)`` pairs.
        step_count: Number of ``step()`` calls so far (restored by ``load_state_dict``).
    """

    def __init__(
        self,
        params: Iterable[Param],
        lr: float,
        buffer_names: tuple[str, ...] = (),
        n_scratch: int = 1,
    ) -> None:
        self.lr = lr
        self.params = _as_param_list(params)
        self.step_count = 0
        self._buffers = {
            name: [np.zeros_like(value) for value, _ in self.params] for name in buffer_names
        }
        largest = min(CHUNK, max(value.size for value, _ in self.params))
        dtypes = {value.dtype for value, _ in self.params}
        self._workspace = {dtype: np.empty((n_scratch, largest), dtype) for dtype in dtypes}

    @property
    def lr(self) -> float:
        """The learning rate used by the next ``step()``."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        require(value >= 0, "lr", ">= 0", value)
        self._lr = float(value)

    def zero_grad(self) -> None:
        """Fills every gradient with zeros, in place."""
        for _, grad in self.params:
            grad.fill(0)

    def step(self) -> None:
        """Updates every parameter value in place from its current gradient.

        The update is element-wise, so it runs on flat chunks of ``CHUNK`` elements: the dozen
        passes of an Adam update then hit cache-resident chunks instead of streaming whole
        parameters through memory each time (measured 1.5x faster on the 26M-parameter ANN).
        """
        self.step_count += 1
        for i, (value, grad) in enumerate(self.params):
            flat_value, flat_grad = value.reshape(-1), grad.reshape(-1)
            flat_state = {name: buffers[i].reshape(-1) for name, buffers in self._buffers.items()}
            workspace = self._workspace[value.dtype]
            for start in range(0, value.size, CHUNK):
                part = slice(start, min(start + CHUNK, value.size))
                size = part.stop - start
                self._update(
                    flat_value[part],
                    flat_grad[part],
                    {name: buffer[part] for name, buffer in flat_state.items()},
                    [row[:size] for row in workspace],
                )

    def _update(
        self,
        value: np.ndarray,
        grad: np.ndarray,
        state: dict[str, np.ndarray],
        scratch: list[np.ndarray],
    ) -> None:
        """Updates one parameter in place; ``state`` holds its buffers by name."""
        raise NotImplementedError

    def _state_keys(self) -> list[str]:
        keys = ["step", "lr"]
        for name, buffers in self._buffers.items():
            keys += [f"{name}.{i}" for i in range(len(buffers))]
        return keys

    def state_dict(self) -> dict[str, Any]:
        """Returns a snapshot of the optimizer state (layout in the module docstring).

        Returns:
            A flat dict: ``"step"`` (int), ``"lr"`` (float) and copies of the state buffers.
        """
        state: dict[str, Any] = {"step": self.step_count, "lr": self.lr}
        for name, buffers in self._buffers.items():
            for i, buffer in enumerate(buffers):
                state[f"{name}.{i}"] = buffer.copy()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state from ``state_dict()`` (or the ``np.load`` of its ``.npz``).

        Buffers are copied into the existing arrays. Nothing is changed if the state does not fit.

        Args:
            state: Mapping with exactly the keys ``state_dict()`` produces for this optimizer.

        Raises:
            ValueError: Keys missing or unexpected, or a buffer of the wrong shape.
        """
        expected = self._state_keys()
        missing = [key for key in expected if key not in state]
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"state does not match this {type(self).__name__}, received: "
                f"missing keys {missing}, unexpected keys {unexpected}"
            )
        for name, buffers in self._buffers.items():
            for i, buffer in enumerate(buffers):
                key = f"{name}.{i}"
                if np.shape(state[key]) != buffer.shape:
                    raise ValueError(
                        f"{key} must have shape {buffer.shape}, "
                        f"received: {key}.shape={np.shape(state[key])}"
                    )
        for name, buffers in self._buffers.items():
            for i, buffer in enumerate(buffers):
                np.copyto(buffer, state[f"{name}.{i}"])
        self.step_count = int(state["step"])
        self.lr = float(state["lr"])


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay.

    As ``torch.optim.SGD`` with ``dampening=0``; per parameter ``w`` with gradient ``g``::

        d = g + weight_decay * w
        buf = momentum * buf + d          (buf = d on the first step)
        d = d + momentum * buf  if nesterov  else  buf
        w = w - lr * d

    Args:
        params: Iterable of ``(value, grad)`` pairs (see the module docstring).
        lr: Learning rate, ``>= 0``.
        momentum: Momentum factor, ``>= 0``; 0 disables the momentum buffer.
        nesterov: Use Nesterov momentum; requires ``momentum > 0``.
        weight_decay: L2 penalty coefficient, ``>= 0``, added to the gradient.

    Raises:
        ValueError: An argument out of range, or an empty or malformed ``params``.
    """

    def __init__(
        self,
        params: Iterable[Param],
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        require(momentum >= 0, "momentum", ">= 0", momentum)
        require(weight_decay >= 0, "weight_decay", ">= 0", weight_decay)
        if nesterov and momentum == 0:
            raise ValueError(
                f"nesterov=True requires momentum > 0, received: momentum={momentum!r}"
            )
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)
        super().__init__(
            params,
            lr,
            buffer_names=("momentum_buffer",) if momentum else (),
            n_scratch=2 if nesterov else 1,
        )

    def _update(self, value, grad, state, scratch):
        d = grad
        if self.weight_decay:
            # Gradient of the L2 penalty (weight_decay / 2) * ||w||^2 is weight_decay * w.
            d = scratch[0]
            _add_scaled(grad, self.weight_decay, value, out=d, tmp=d)
        if self.momentum:
            # The buffer starts at zero, so the first step leaves buf = d: PyTorch's initialisation.
            buf = state["momentum_buffer"]
            _add_scaled(d, self.momentum, buf, out=buf, tmp=buf)
            if self.nesterov:
                _add_scaled(d, self.momentum, buf, out=scratch[1], tmp=scratch[1])
                d = scratch[1]
            else:
                d = buf
        _add_scaled(value, -self.lr, d, out=value, tmp=scratch[0])


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with L2 weight decay added to the gradient, as ``torch.optim.Adam``.

    Per parameter ``w`` with gradient ``g`` at step ``t`` (counting from 1)::

        g = g + weight_decay * w                      (Adam: L2 penalty)
        w = w * (1 - lr * weight_decay)               (AdamW instead: decoupled decay)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        w = w - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Args:
        params: Iterable of ``(value, grad)`` pairs (see the module docstring).
        lr: Learning rate, ``>= 0``.
        betas: ``(beta1, beta2)``, decay rates of the first and second moment, each in ``[0, 1)``.
        eps: Added to the denominator, ``> 0``.
        weight_decay: Decay coefficient, ``>= 0``.

    Raises:
        ValueError: An argument out of range, or an empty or malformed ``params``.
    """

    #: False: the decay is an L2 term added to the gradient (Adam); True: it shrinks the weights
    #: directly (AdamW).
    decoupled_weight_decay = False

    def __init__(
        self,
        params: Iterable[Param],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        betas = tuple(betas)
        require(
            len(betas) == 2 and all(0 <= beta < 1 for beta in betas),
            "betas",
            "a pair of numbers in [0, 1)",
            betas,
        )
        require(eps > 0, "eps", "> 0", eps)
        require(weight_decay >= 0, "weight_decay", ">= 0", weight_decay)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self._l2 = bool(weight_decay) and not self.decoupled_weight_decay
        super().__init__(
            params, lr, buffer_names=("exp_avg", "exp_avg_sq"), n_scratch=2 if self._l2 else 1
        )

    def _update(self, value, grad, state, scratch):
        beta1, beta2 = self.betas
        m, v, tmp = state["exp_avg"], state["exp_avg_sq"], scratch[0]
        if self._l2:
            _add_scaled(grad, self.weight_decay, value, out=scratch[1], tmp=scratch[1])
            grad = scratch[1]
        elif self.weight_decay:
            np.multiply(value, 1.0 - self.lr * self.weight_decay, out=value)
        np.multiply(m, beta1, out=m)
        _add_scaled(m, 1.0 - beta1, grad, out=m, tmp=tmp)
        np.multiply(v, beta2, out=v)
        np.multiply(grad, grad, out=tmp)
        _add_scaled(v, 1.0 - beta2, tmp, out=v, tmp=tmp)
        # Bias corrections undo the zero initialisation of m and v: E[m_t] = (1 - beta1^t) E[g].
        step_size = self.lr / (1.0 - beta1**self.step_count)
        np.sqrt(v, out=tmp)
        np.divide(tmp, math.sqrt(1.0 - beta2**self.step_count), out=tmp)
        np.add(tmp, self.eps, out=tmp)
        np.divide(m, tmp, out=tmp)
        _add_scaled(value, -step_size, tmp, out=value, tmp=tmp)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay, as ``torch.optim.AdamW``.

    Identical to :class:`Adam` except that the weights are shrunk by ``1 - lr * weight_decay``
    before the moment update instead of adding an L2 term to the gradient, and the default
    ``weight_decay`` is ``1e-2``.
    """

    decoupled_weight_decay = True

    def __init__(
        self,
        params: Iterable[Param],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def clip_grad_norm(params: Iterable[Param], max_norm: float) -> float:
    """Scales all gradients in place so that their global L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: the norm is taken over all gradients together,
    ``norm = sqrt(sum_i ||g_i||^2)``, and every gradient is multiplied by
    ``max_norm / (norm + 1e-6)`` when that factor is below 1. Unlike PyTorch, a non-finite norm
    leaves the gradients untouched (the caller sees it in the return value and skips the step).

    Args:
        params: Iterable of ``(value, grad)`` pairs; only the grads are used.
        max_norm: Largest allowed global norm, ``>= 0``.

    Returns:
        The global norm before clipping, as a Python float.

    Raises:
        ValueError: ``max_norm`` is negative or NaN.
    """
    require(max_norm >= 0, "max_norm", ">= 0", max_norm)
    grads = [grad for _, grad in params]
    # ||g||^2 as a dot product of a flat view with itself: accumulated in the gradient's own
    # dtype without a float64 (or squared) copy; the per-array sums are added in Python floats.
    norm = math.sqrt(sum(float(np.dot(grad.ravel(), grad.ravel())) for grad in grads))
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0 and math.isfinite(norm):
        for grad in grads:
            np.multiply(grad, coef, out=grad)
    return norm
