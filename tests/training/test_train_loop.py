"""The fit loop: NaN/inf stop, early stopping restoring the best epoch, progress output."""

from __future__ import annotations

import io

import numpy as np
import pytest

from purenn.data import scan_image_folder
from purenn.io import load_checkpoint, load_model
from purenn.nn.losses import SoftmaxCrossEntropy
from purenn.optim.optimizers import Adam
from purenn.optim.schedules import Constant
from purenn.presets import build_preset
from purenn.training import EarlyStopping, NonFiniteLossError, Progress, Trainer, make_config
from purenn.training import train as train_run
from purenn.training.evaluation import predict_logits
from purenn.training.pipeline import load_training_data

API_SETTINGS = {
    "preset": "demo-cnn",
    "image_size": 8,
    "batch_size": 8,
    "warmup_epochs": 0.0,
    "augment_factor": 1,
    "val_fraction": 0.25,
    "test_fraction": 0.25,
    "threads": 1,
}


def test_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    cli, colour_folder, tiny_args, tmp_path
):
    run = tmp_path / "run"
    result = cli(
        "train", colour_folder, "--out", run, *tiny_args, "--epochs", 3, "--optimizer", "sgd",
        "--momentum", 0, "--lr", 1e6, "--clip-norm", 0, "--schedule", "constant",
        "--checkpoint-steps", 1,
    )  # fmt: skip
    assert result.code == 1
    assert result.err.startswith("purenn: training stopped: the ")
    assert "at epoch 1, step 2" in result.err and "last good checkpoint" in result.err
    assert "Warning" not in result.err and "Traceback" not in result.err
    model, meta, state, arrays = load_checkpoint(run / "last.ckpt.npz")
    assert state["loop"]["step"] == 1  # the step before the one that diverged
    assert all(np.isfinite(v).all() for v in model.state_dict().values())
    assert all(np.isfinite(v).all() for v in arrays.values())


class ListLoader:
    """The DataLoader protocol over fixed batches (for driving the Trainer directly)."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def epoch(self, epoch, start_batch=0):
        return (batch for batch in self.batches[start_batch:])


def make_trainer(batches, saves: list) -> Trainer:
    model = build_preset("demo-cnn", num_classes=3, image_size=8)
    optimizer = Adam(model.parameters(), lr=1e-3)
    return Trainer(
        model,
        optimizer,
        Constant(optimizer),
        SoftmaxCrossEntropy(0.1),
        ListLoader(batches),
        None,
        epochs=2,
        clip_norm=1.0,
        early_stopping=EarlyStopping(5),
        checkpoint_steps=1,
        save_checkpoint=lambda: saves.append(1),
        end_epoch=lambda row, improved: None,
        progress=Progress(quiet=True),
    )


def test_nan_loss_stops_before_the_step_and_before_any_checkpoint():
    rng = np.random.default_rng(0)
    good = (rng.normal(size=(4, 3, 8, 8)).astype(np.float32), np.array([0, 1, 2, 0]))
    bad = (np.full((4, 3, 8, 8), np.nan, np.float32), np.array([0, 1, 2, 0]))
    saves: list = []
    trainer = make_trainer([good, good, bad, good], saves)
    with pytest.raises(NonFiniteLossError, match=r"the loss is nan at epoch 1, step 3"):
        trainer.fit()
    assert trainer.state.step == 2 and len(saves) == 2  # checkpoints after steps 1 and 2 only
    assert all(np.isfinite(v).all() for v in trainer.model.state_dict().values())


def test_early_stopping_restores_the_best_epoch(colour_folder, cache_dir, tmp_path):
    """A constant high rate makes the validation loss wander; patience 1 stops at its first rise."""
    config = make_config(
        overrides={
            **API_SETTINGS,
            "data_dir": str(colour_folder),
            "out": str(tmp_path / "run"),
            "cache_dir": str(cache_dir),
            "epochs": 30,
            "lr": 0.05,
            "schedule": "constant",
            "patience": 1,
        }
    )
    result = train_run(config, progress=Progress(quiet=True))
    val_losses = [row["val_loss"] for row in result.history]
    assert result.stopped_early and len(result.history) < 30
    assert result.best_epoch == int(np.argmin(val_losses)) + 1 == len(result.history) - 1
    assert val_losses[-1] >= val_losses[-2]

    # best.npz holds the best epoch's weights: its validation loss is that epoch's, exactly.
    model, meta = load_model(tmp_path / "run" / "best.npz")
    assert meta["epoch"] == result.best_epoch
    data = load_training_data(
        scan_image_folder(colour_folder), 8, 0.25, 0.25, 0, str(cache_dir), 1, False
    )
    logits, labels = predict_logits(model, data.loader("val", 8))
    assert SoftmaxCrossEntropy(0.1).forward(logits, labels) == min(val_losses)
    # ... and the returned model is the restored best, not the last epoch's.
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(result.model.state_dict()[key], value)


def test_early_stopping_state_machine():
    model = build_preset("demo-cnn", num_classes=3, image_size=8)
    stopping = EarlyStopping(patience=2)
    assert stopping.update(1, 1.0, model) and stopping.best_epoch == 1
    model.layers[0].params["weight"][...] = 0
    assert not stopping.update(2, 1.0, model)  # equal is not better
    assert not stopping.should_stop
    assert not stopping.update(3, float("nan"), model)
    assert stopping.should_stop and stopping.best_epoch == 1
    stopping.restore(model)
    assert model.layers[0].params["weight"].any()
    scalars, arrays = stopping.state_dict()
    again = EarlyStopping(patience=2)
    again.load_state_dict(scalars, arrays)
    assert (again.best, again.best_epoch, again.wait) == (1.0, 1, 2)
    assert again.best_weights.keys() == stopping.best_weights.keys()
    assert not EarlyStopping(patience=0).should_stop


def test_progress_prints_plain_lines_when_not_on_a_terminal():
    stream = io.StringIO()
    progress = Progress(bars=False, stream=stream, log_interval=0)
    progress.info("header")
    progress.start_epoch(2, 5, batches=10, done=4)
    progress.update(5, loss=0.5, accuracy=0.75, images_per_sec=100)
    progress.end_epoch()
    progress.result("done")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "header" and lines[-1] == "done"
    assert lines[1].startswith("epoch 2/5 batch 5/10: loss 0.5000, acc 75.0%, 100 img/s, ETA ")


def test_quiet_progress_prints_only_results():
    stream = io.StringIO()
    progress = Progress(quiet=True, stream=stream, log_interval=0)
    progress.info("header")
    progress.start_epoch(1, 1, batches=2, done=0)
    progress.update(1, loss=0.5, accuracy=0.75, images_per_sec=100)
    progress.end_epoch()
    progress.result("done")
    assert stream.getvalue() == "done\n"
