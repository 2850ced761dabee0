"""Learning-rate schedules, stepped once per batch.

A schedule owns a position (the number of ``step()`` calls) and keeps ``optimizer.lr`` equal to
``lr_at(position)``: construction sets it to ``lr_at(0)``, so the first batch already uses the
scheduled rate, and each ``step()`` after a batch advances to the next one. The base rate is the
optimizer's ``lr`` at construction. Positions count batches, so epoch-based settings are
multiplied by the number of batches per epoch.

``state_dict()`` is ``{"step": int, "base_lr": float}``. ``base_lr`` is saved with the position
so that a resumed run continues exactly even if the schedule is built after the optimizer's own
state (which holds an already scheduled ``lr``) has been loaded.
"""

from __future__ import annotations

import math
from typing import Any

from purenn.checks import check_int, is_int, require
from purenn.optim.optimizers import Optimizer


class Schedule:
    """Base class: a pure ``lr_at(step)`` plus the position that drives the optimizer.

    Subclasses set their own attributes, then call ``super().__init__(optimizer)``, and implement
    ``_lr(step)`` for a validated ``step``.

    Args:
        optimizer: Any object with a settable ``lr`` attribute (a
            :class:`purenn.optim.Optimizer`).

    Attributes:
        optimizer: The driven optimizer.
        base_lr: ``optimizer.lr`` at construction.
        position: Number of ``step()`` calls so far.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.position = 0
        self.optimizer.lr = self.lr_at(0)

    def lr_at(self, step: int) -> float:
        """Learning rate for the batch at position ``step`` (a pure function of ``step``).

        Args:
            step: Non-negative batch index.

        Returns:
            The learning rate as a Python float.

        Raises:
            ValueError: ``step`` is negative.
        """
        require(step >= 0, "step", ">= 0", step)
        return self._lr(step)

    def _lr(self, step: int) -> float:
        raise NotImplementedError

    def step(self) -> None:
        """Advances one batch and sets ``optimizer.lr = lr_at(position)``."""
        self.position += 1
        self.optimizer.lr = self.lr_at(self.position)

    def state_dict(self) -> dict[str, Any]:
        """Returns ``{"step": position, "base_lr": base_lr}``."""
        return {"step": self.position, "base_lr": self.base_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the position and base rate and sets the optimizer's ``lr`` accordingly.

        Args:
            state: Mapping with ``"step"`` and ``"base_lr"`` (plain scalars or 0-d arrays).
        """
        step = int(state["step"])
        require(step >= 0, "step", ">= 0", step)
        self.base_lr = float(state["base_lr"])
        self.position = step
        self.optimizer.lr = self.lr_at(step)


class Constant(Schedule):
    """Keeps the learning rate at the optimizer's initial value."""

    def _lr(self, step: int) -> float:
        return self.base_lr


class StepDecay(Schedule):
    """Multiplies the rate by ``gamma`` every ``step_size`` batches, as ``torch`` ``StepLR``.

    ``lr_at(s) = base_lr * gamma ** (s // step_size)``.

    Args:
        optimizer: The optimizer whose ``lr`` is driven.
        step_size: Batches between decays, an integer ``>= 1``.
        gamma: Decay factor in ``(0, 1]``.

    Raises:
        ValueError: An argument out of range.
    """

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = check_int(step_size, "step_size")
        require(0 < gamma <= 1, "gamma", "in (0, 1]", gamma)
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def _lr(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)


class CosineWarmup(Schedule):
    """Linear warmup followed by cosine annealing to ``min_lr``.

    With ``W = warmup_steps``, ``T = total_steps``, ``f = warmup_start_factor``, ``b = base_lr``::

        lr_at(s) = b * (f + (1 - f) * s / W)                               for s < W
        lr_at(s) = min_lr + (b - min_lr) * (1 + cos(pi * (s - W) / (T - W))) / 2   for W <= s <= T
        lr_at(s) = min_lr                                                  for s > T

    The warmup rises linearly from ``f * b`` towards ``b``, reached at ``s = W`` where the cosine
    half-period starts.

    Args:
        optimizer: The optimizer whose ``lr`` is driven; its ``lr`` is the peak rate.
        total_steps: Batches of the whole schedule (warmup included), an integer ``>= 1``.
        warmup_steps: Batches of linear warmup, an integer in ``[0, total_steps)``.
        warmup_start_factor: Fraction of the base rate at step 0, in ``[0, 1]``.
        min_lr: Final rate, in ``[0, base_lr]``.

    Raises:
        ValueError: An argument out of range.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.0,
        min_lr: float = 0.0,
    ) -> None:
        total_steps = check_int(total_steps, "total_steps")
        require(
            is_int(warmup_steps) and 0 <= warmup_steps < total_steps,
            "warmup_steps",
            f"an int in [0, total_steps={total_steps})",
            warmup_steps,
        )
        require(
            0 <= warmup_start_factor <= 1, "warmup_start_factor", "in [0, 1]", warmup_start_factor
        )
        require(0 <= min_lr <= optimizer.lr, "min_lr", f"in [0, lr={optimizer.lr}]", min_lr)
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = float(warmup_start_factor)
        self.min_lr = float(min_lr)
        super().__init__(optimizer)

    def _lr(self, step: int) -> float:
        w, f = self.warmup_steps, self.warmup_start_factor
        if step < w:
            return self.base_lr * (f + (1.0 - f) * step / w)
        progress = (min(step, self.total_steps) - w) / (self.total_steps - w)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )
