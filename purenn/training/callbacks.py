"""Small pieces of the fit loop with state: early stopping and the Ctrl-C handler."""

from __future__ import annotations

import math
import signal
import sys
import threading

import numpy as np

from purenn.nn.sequential import Sequential


class EarlyStopping:
    """Track the best epoch by a monitored loss; ask to stop after ``patience`` bad epochs.

    Keras' ``EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)``:
    an epoch improves when its loss is strictly below the best so far; the best weights are kept
    (a copy of the state dict) so that they can be restored at the end.

    Args:
        patience: consecutive epochs without improvement before stopping; 0 never stops (the
            best weights are still tracked and restored).
    """

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = math.inf
        self.best_epoch: int | None = None
        self.wait = 0
        self.best_weights: dict[str, np.ndarray] | None = None

    def update(self, epoch: int, loss: float, model: Sequential) -> bool:
        """Record the (1-based) ``epoch``'s monitored ``loss``; returns True if it improved."""
        if loss < self.best:  # False for NaN
            self.best, self.best_epoch, self.wait = float(loss), epoch, 0
            self.best_weights = model.state_dict()
            return True
        self.wait += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.wait >= self.patience

    def restore(self, model: Sequential) -> None:
        """Load the best weights into ``model`` (no-op before the first epoch)."""
        if self.best_weights is not None:
            model.load_state_dict(self.best_weights)

    def state_dict(self) -> tuple[dict, dict[str, np.ndarray]]:
        """JSON scalars and ``"best/<name>"`` arrays, for a checkpoint."""
        scalars = {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}
        arrays = {f"best/{k}": v for k, v in (self.best_weights or {}).items()}
        return scalars, arrays

    def load_state_dict(self, scalars: dict, arrays: dict[str, np.ndarray]) -> None:
        self.best = float(scalars["best"])
        self.best_epoch = scalars["best_epoch"]
        self.wait = int(scalars["wait"])
        weights = {k[len("best/") :]: v for k, v in arrays.items() if k.startswith("best/")}
        self.best_weights = weights or None


class GracefulInterrupt:
    """Within ``with``: the first Ctrl-C (SIGINT) only sets ``requested``; a second one raises.

    The loop polls ``requested`` between steps and saves a consistent checkpoint before
    leaving, instead of being interrupted halfway through an optimizer update. Outside the main
    thread (where signal handlers cannot be installed) it does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit at once)",
            file=sys.stderr,
            flush=True,
        )

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
