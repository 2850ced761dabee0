"""The fit loop: epochs of optimizer steps, validation, early stopping, resumable state.

Everything random in a run comes from the loader (a pure function of seed, epoch and batch
index) and the model's Dropout generators, so the loop state below is all that is needed to
continue a run exactly: a resumed run computes bit for bit the same weights as one that was
never stopped.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from purenn.data import DataLoader
from purenn.distributed import Communicator, DataParallel
from purenn.io import join_state, split_state
from purenn.nn.losses import SoftmaxCrossEntropy
from purenn.nn.sequential import Sequential
from purenn.optim.optimizers import Optimizer, clip_grad_norm
from purenn.optim.schedules import Schedule
from purenn.training.callbacks import EarlyStopping, GracefulInterrupt
from purenn.training.evaluation import predict_logits
from purenn.training.metrics import accuracy
from purenn.training.outliers import OutlierExposure
from purenn.training.progress import Progress

# Test hook (documented in docs/CLI.md): PURENN_TEST_SIGNAL=KILL@7 makes the process send itself
# SIGKILL (or INT: Ctrl-C, ...) right after optimizer step 7 and its checkpoint, if any, to test
# that a killed or interrupted run resumes exactly. Read when the trainer is built.
SIGNAL_ENV = "PURENN_TEST_SIGNAL"


def _test_signal() -> tuple[signal.Signals, int] | None:
    value = os.environ.get(SIGNAL_ENV)
    if not value:
        return None
    name, _, step = value.partition("@")
    return signal.Signals[f"SIG{name}"], int(step)


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; training stopped before the step."""


class TrainingInterrupted(Exception):
    """Ctrl-C: a checkpoint was written at a step boundary and training left cleanly."""


@dataclass
class LoopState:
    """Where the loop is, and the running sums of the epoch in progress (JSON-able).

    Attributes:
        epoch: 0-based epoch in progress (== epochs once training is complete).
        batch: next batch of that epoch.
        step: optimizer steps taken in the whole run.
        loss_sum: sum over the epoch's batches of (batch mean loss * batch size).
        correct: training samples of the epoch classified correctly (before the step).
        seen: training samples of the epoch so far.
        train_seconds: time spent in the epoch's training steps so far (over all sessions).
        elapsed_seconds: wall-clock seconds of the training loop (steps, validation,
            checkpoints) up to the last checkpoint, over all sessions.
        images_trained: training images of the completed epochs.
        finished: all epochs done, or early stopping triggered.
        history: one metrics row per completed epoch.
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    train_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    images_trained: int = 0
    finished: bool = False
    history: list[dict] = field(default_factory=list)


class Trainer:
    """Runs the epochs of a run and owns its resumable state.

    Args:
        model, optimizer, schedule: the model, its optimizer over ``model.parameters()``, and
            the schedule driving the optimizer's ``lr`` (stepped per batch).
        loss_fn: the training objective (also used for the validation loss).
        train_loader: shuffled training batches; ``val_loader``: None without a validation split
            (early stopping then monitors the training loss).
        epochs: maximum number of epochs.
        clip_norm: global gradient-norm threshold; 0 disables clipping.
        early_stopping: tracks the best epoch and decides when to stop.
        checkpoint_steps: besides every epoch, checkpoint every this many steps (0: never).
        save_checkpoint: called with no argument to write the checkpoint of ``state_dict()``.
        end_epoch: called with the epoch's metrics row and whether it improved, after the
            epoch's checkpoint is written (to update metrics, plots and the best model).
        progress: where progress is reported.
        comm: the ranks training together (default: this process alone). With several, the
            loaders must be sharded by ``comm.shard`` and every rank runs this loop; see
            :class:`purenn.distributed.DataParallel` for what they exchange.
        outliers: outlier exposure (one process only): a batch of outlier images beside each
            training batch, in the same forward and backward, their loss added to the
            training loss (the reported training loss stays that of the training images).
    """

    def __init__(
        self,
        model: Sequential,
        optimizer: Optimizer,
        schedule: Schedule,
        loss_fn: SoftmaxCrossEntropy,
        train_loader: DataLoader,
        val_loader: DataLoader | None,
        epochs: int,
        clip_norm: float,
        early_stopping: EarlyStopping,
        checkpoint_steps: int,
        save_checkpoint: Callable[[], None],
        end_epoch: Callable[[dict, bool], None],
        progress: Progress,
        comm: Communicator | None = None,
        outliers: OutlierExposure | None = None,
    ) -> None:
        if outliers is not None and comm is not None and comm.size > 1:
            raise ValueError("outlier exposure runs in one process, not under mpiexec")
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.loss_fn = loss_fn
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.epochs = epochs
        self.clip_norm = clip_norm
        self.early_stopping = early_stopping
        self.checkpoint_steps = checkpoint_steps
        self.save_checkpoint = save_checkpoint
        self.end_epoch = end_epoch
        self.progress = progress
        self.outliers = outliers
        self.state = LoopState()
        self._params = model.parameters()
        self._test_signal = _test_signal()
        self.parallel = DataParallel(comm, model) if comm is not None and comm.size > 1 else None
        # (elapsed_seconds at the start of this session's fit, perf_counter then)
        self._session: tuple[float, float] | None = None

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The loop's state as JSON scalars and named arrays (for ``save_checkpoint``).

        The model's weights are not included (the checkpoint stores them as a model file does).
        """
        optim, optim_arrays = split_state(self.optimizer.state_dict(), "optim")
        stopping, best_arrays = self.early_stopping.state_dict()
        loop = asdict(self.state)
        loop["elapsed_seconds"] = self.elapsed()
        scalars = {
            "loop": loop,
            "optimizer": optim,
            "schedule": self.schedule.state_dict(),
            "early_stopping": stopping,
            "rng_states": self.model.rng_states(),
        }
        return scalars, {**optim_arrays, **best_arrays}

    def load_state_dict(self, scalars: dict, arrays: dict[str, np.ndarray]) -> None:
        """Restore a state from :meth:`state_dict` (the model's weights are loaded separately)."""
        self.optimizer.load_state_dict(join_state(scalars["optimizer"], arrays, "optim"))
        self.schedule.load_state_dict(scalars["schedule"])
        self.early_stopping.load_state_dict(scalars["early_stopping"], arrays)
        self.model.set_rng_states(scalars["rng_states"])
        self.state = LoopState(**scalars["loop"])

    def elapsed(self) -> float:
        """Wall-clock seconds of the training loop so far, over all sessions."""
        if self._session is None:
            return self.state.elapsed_seconds
        before, start = self._session
        return before + time.perf_counter() - start

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> LoopState:
        """Train from the current state until the last epoch or early stopping.

        Raises:
            NonFiniteLossError: the loss or gradient norm is NaN/inf (no step is taken with it
                and no checkpoint written after it).
            TrainingInterrupted: Ctrl-C; a checkpoint of the last completed step was written.
        """
        if self.parallel is not None:
            self.parallel.broadcast_state()
        self._session = (self.state.elapsed_seconds, time.perf_counter())
        with GracefulInterrupt() as interrupt:
            while not self.state.finished:
                self._train_epoch(interrupt)
                self._finish_epoch()
                if interrupt.requested:
                    raise TrainingInterrupted(self._position())
        return self.state

    def _position(self) -> str:
        s = self.state
        return f"epoch {s.epoch + 1}, batch {s.batch}, step {s.step}"

    def _train_epoch(self, interrupt: GracefulInterrupt) -> None:
        s, loader = self.state, self.train_loader
        batches = len(loader)
        self.progress.start_epoch(s.epoch + 1, self.epochs, batches, s.batch)
        self.model.train()
        seconds_before, start = s.train_seconds, time.perf_counter()
        stream = loader.epoch(s.epoch, start_batch=s.batch)
        outliers = None if self.outliers is None else self.outliers.batches(s.step)
        try:
            for x, y in stream:
                self._step(x, y, None if outliers is None else next(outliers))
                s.train_seconds = seconds_before + time.perf_counter() - start
                self.progress.update(
                    s.batch, s.loss_sum / s.seen, s.correct / s.seen, s.seen / s.train_seconds
                )
                # (the epoch's last step is checkpointed at the end of the epoch, after validation)
                if (
                    self.checkpoint_steps
                    and s.step % self.checkpoint_steps == 0
                    and s.batch < batches
                ):
                    self.save_checkpoint()
                if self._test_signal and s.step == self._test_signal[1]:
                    signal.raise_signal(self._test_signal[0])
                if interrupt.requested:
                    self.save_checkpoint()
                    raise TrainingInterrupted(self._position())
        finally:
            stream.close()
            if outliers is not None:
                outliers.close()
            self.progress.end_epoch()

    def _step(self, x: np.ndarray, y: np.ndarray, x_out: np.ndarray | None = None) -> None:
        s = self.state
        where = f"at epoch {s.epoch + 1}, step {s.step + 1}"
        total = len(y)
        # Overflow is detected here and reported once, with the step: no NumPy warnings.
        with np.errstate(over="ignore", invalid="ignore"):
            if x_out is not None:
                loss, correct = self._outlier_step(x, y, x_out)
            elif self.parallel is None:
                logits = self.model.forward(x, training=True)
                loss = self.loss_fn.forward(logits, y)
                self.model.backward(self.loss_fn.backward(), input_grad=False)
                correct = int(np.count_nonzero(np.argmax(logits, axis=1) == y))
            else:
                # This rank's slice; the loss and gradients become the global batch's.
                total = self.train_loader.global_batch_size(s.batch)
                loss, correct = self.parallel.forward_backward(self.loss_fn, x, y, total)
            if not math.isfinite(loss):
                raise NonFiniteLossError(f"the loss is {loss} {where}")
            norm = clip_grad_norm(self._params, self.clip_norm or math.inf)
        if not math.isfinite(norm):
            raise NonFiniteLossError(f"the gradient norm is {norm} {where}")
        self.optimizer.step()
        self.schedule.step()
        s.batch += 1
        s.step += 1
        s.loss_sum += loss * total
        s.correct += correct
        s.seen += total

    def _outlier_step(self, x: np.ndarray, y: np.ndarray, x_out: np.ndarray) -> tuple[float, int]:
        """Forward and backward of training and outlier images as one batch.

        The objective is ``loss(training logits) + outlier loss(outlier logits)``; its gradient
        with respect to the stacked logits is the two gradients stacked. Returns the training
        images' loss (NaN if the outlier loss is not finite) and how many they got right.
        """
        n = len(y)
        logits = self.model.forward(np.concatenate([x, x_out]), training=True)
        loss = self.loss_fn.forward(logits[:n], y)
        outlier_loss = self.outliers.loss.forward(logits[n:])
        grad = np.concatenate([self.loss_fn.backward(), self.outliers.loss.backward()])
        self.model.backward(grad, input_grad=False)
        correct = int(np.count_nonzero(np.argmax(logits[:n], axis=1) == y))
        return (loss if math.isfinite(outlier_loss) else math.nan), correct

    def predict(self, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
        """``(logits, labels)`` of an evaluation split (gathered from every rank's block)."""
        if self.parallel is not None:
            return self.parallel.predict_logits(loader)
        return predict_logits(self.model, loader)

    def _finish_epoch(self) -> None:
        s = self.state
        start = time.perf_counter()
        row = {
            "epoch": s.epoch + 1,
            "train_loss": s.loss_sum / s.seen,
            "train_accuracy": s.correct / s.seen,
            "val_loss": None,
            "val_accuracy": None,
        }
        if self.val_loader is not None:
            logits, labels = self.predict(self.val_loader)
            row["val_loss"] = SoftmaxCrossEntropy(self.loss_fn.label_smoothing).forward(
                logits, labels
            )
            row["val_accuracy"] = accuracy(logits, labels)
        row["lr"] = self.schedule.lr_at(s.step - 1)
        row["seconds"] = s.train_seconds + time.perf_counter() - start
        row["images_per_sec"] = s.seen / s.train_seconds
        # Time to accuracy: since the first step of the run, validation included.
        row["elapsed_s"] = self.elapsed()
        s.elapsed_seconds, s.images_trained = row["elapsed_s"], s.images_trained + s.seen
        monitored = row["train_loss"] if row["val_loss"] is None else row["val_loss"]
        improved = self.early_stopping.update(row["epoch"], monitored, self.model)
        s.history.append(row)
        s.epoch, s.batch, s.loss_sum, s.correct, s.seen, s.train_seconds = (
            s.epoch + 1,
            0,
            0.0,
            0,
            0,
            0.0,
        )
        s.finished = s.epoch >= self.epochs or self.early_stopping.should_stop
        if self.parallel is not None:
            s.finished = self.parallel.agree(s.finished)
        self.save_checkpoint()
        self.end_epoch(row, improved)
