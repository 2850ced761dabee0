"""Train the same architecture in PyTorch on exactly the arrays a purenn run trained on.

Reads a finished (or started) purenn run folder's ``config.json`` and reproduces its setup in
PyTorch: the same cached images, split and normalisation, the same batches in the same order
with the same augmentation (purenn's loader), the same initial weights (the preset built with
the run's seed, copied into the torch twin), Adam with the same learning-rate schedule (purenn's
own ``lr_at`` drives a ``LambdaLR``), the same clipping, label smoothing and early stopping.
Even the Dropout masks are the same: the twin's dropout draws its masks from a copy of
the purenn layer's generator, with purenn's formula.

It also replays the first epoch in purenn and PyTorch side by side from identical weights and
batches and records both training losses at every step. ``--replay-dtype float64`` replays it in
float64 instead: where the float32 losses part because rounding differences grow, the float64
losses stay together for longer, while a difference in the math would part them at the same
step in both precisions.

``--replay-epochs N`` replays N epochs (no validation or early stopping) and then compares both
models' test predictions; in float64 over the whole run this shows whether the two frameworks
reach the same model when float32 rounding is taken out.

    python benchmarks/torch_reference.py runs/cnn            # writes runs/cnn/torch-reference/
    python benchmarks/torch_reference.py runs/cnn --replay-only --replay-dtype float64
    python benchmarks/torch_reference.py runs/ann --replay-only --replay-dtype float64 \
        --replay-epochs 20

Output folder: ``metrics.csv`` (purenn's columns), ``report.json`` (test metrics, purenn's
format), ``first_epoch_losses.csv`` (step, purenn loss, torch loss; ``_float64`` in the name
for a float64 replay), ``compare.png`` (both runs' curves and the first-epoch losses in one
figure), once both replays exist ``replay_precision.png`` (the loss difference per step in
float32 and in float64), and for a replay of several epochs ``replay_<dtype>.json`` (mean losses
per epoch, both test accuracies, how many test predictions agree).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch_twin import resnet_twin, torch_twin

from purenn.data import DataLoader, scan_image_folder
from purenn.nn.graph import Model
from purenn.nn.losses import SoftmaxCrossEntropy
from purenn.nn.sequential import Sequential
from purenn.optim.optimizers import Optimizer, clip_grad_norm
from purenn.optim.schedules import Schedule
from purenn.presets import build_preset
from purenn.training.callbacks import EarlyStopping
from purenn.training.config import make_config
from purenn.training.evaluation import predict_logits
from purenn.training.fit import make_optimizer, make_schedule
from purenn.training.metrics import classification_report, format_report
from purenn.training.pipeline import load_training_data

# Two losses "agree" while they differ by at most this (they print the same to 4 decimals).
REPLAY_AGREEMENT = 1e-4
REPLAY64 = "first_epoch_losses_float64.csv"
# Exactly equal losses are drawn at this difference, below float64's resolution of a loss ~1.
TIE_FLOOR = 1e-17


class SameMaskDropout(torch.nn.Module):
    """Inverted dropout whose masks come from a NumPy generator exactly as purenn draws them."""

    def __init__(self, p: float, rng: np.random.Generator) -> None:
        super().__init__()
        self.p, self.rng = p, rng

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = self.rng.random(tuple(x.shape), dtype=np.float32) >= self.p
        return x * torch.from_numpy(keep) * (1.0 / (1.0 - self.p))


def twin_with_same_masks(model) -> torch.nn.Module:
    """The torch twin of ``model`` whose Dropout layers replay ``model``'s initial RNG states: for
    a Sequential, its layer-by-layer twin; for the plantvillage-resnet graph (no Dropout), the
    ResNet as torch users write it."""
    if not isinstance(model, Sequential):
        return resnet_twin(model)
    twin = torch_twin(model)
    for index, layer in enumerate(model.layers):
        if hasattr(layer, "rng"):
            rng = np.random.Generator(type(layer.rng.bit_generator)())
            rng.bit_generator.state = layer.rng.bit_generator.state
            twin[index] = SameMaskDropout(layer.p, rng)
    return twin


def torch_logits(model, batches) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of ``model`` in eval mode over ``(x, y)`` batches (x in its dtype)."""
    model.eval()
    logits, labels = [], []
    with torch.inference_mode():
        for x, y in batches:
            logits.append(model(torch.from_numpy(x)).numpy())
            labels.append(y)
    return np.concatenate(logits), np.concatenate(labels)


def replay(
    config, data, epochs: int = 1, steps: int | None = None, dtype: str = "float32", log=None
) -> tuple[list[tuple[int, int, float, float]], Sequential | Model, torch.nn.Module]:
    """Train purenn and PyTorch side by side, step by step, from identical weights and batches,
    in ``dtype`` ("float32" or "float64"): ``epochs`` epochs of at most ``steps`` steps each,
    no validation or early stopping. ``log(line)``, if given, gets each epoch's mean losses.

    Returns:
        ``(rows, ours, theirs)``: rows ``(epoch, step, purenn loss, torch loss)`` (both 1-based)
        and the two trained models.
    """
    twins = start_twins(config, data, dtype)
    ours, theirs = twins.ours, twins.theirs.train()
    loss_fn = SoftmaxCrossEntropy(config.label_smoothing)
    rows = []
    for epoch in range(epochs):
        for step, (x, y) in enumerate(twins.train.epoch(epoch)):
            if steps is not None and step >= steps:
                break
            x = x.astype(dtype, copy=False)
            loss = loss_fn.forward(ours.forward(x, training=True), y)
            ours.backward(loss_fn.backward(), input_grad=False)
            clip_grad_norm(ours.parameters(), config.clip_norm or math.inf)
            twins.optimizer.step()
            twins.schedule.step()
            torch_loss = torch_step(config, theirs, twins.torch_optimizer, x, y)[0]
            twins.torch_schedule.step()
            rows.append((epoch + 1, step + 1, loss, torch_loss))
        if log is not None:
            row = epoch_losses(rows, epoch + 1)
            log(
                f"replay epoch {row['epoch']}: loss purenn {row['purenn_loss']:.6f}, torch "
                f"{row['torch_loss']:.6f}, largest step difference {row['max_step_gap']:.3g}"
            )
    return rows, ours, theirs


def epoch_losses(rows, epoch: int) -> dict:
    """Mean training losses of one epoch of replay ``rows``, and their largest step gap."""
    ours_losses, their_losses = np.array([row[2:] for row in rows if row[0] == epoch]).T
    return {
        "epoch": epoch,
        "purenn_loss": float(ours_losses.mean()),
        "torch_loss": float(their_losses.mean()),
        "max_step_gap": float(np.abs(ours_losses - their_losses).max()),
    }


def replay_summary(rows, ours, theirs, loader, dtype: str) -> dict:
    """Per-epoch mean losses of a replay, and both models' predictions on ``loader``."""
    batches = [(x.astype(dtype), y) for x, y in loader.epoch(0)]
    ours_logits, labels = predict_logits(ours, batches)
    their_logits, _ = torch_logits(theirs, batches)
    ours_pred, their_pred = ours_logits.argmax(1), their_logits.argmax(1)
    return {
        "dtype": dtype,
        "epochs": [epoch_losses(rows, epoch) for epoch in sorted({row[0] for row in rows})],
        "test_images": len(labels),
        "purenn_test_accuracy": float((ours_pred == labels).mean()),
        "torch_test_accuracy": float((their_pred == labels).mean()),
        "same_predictions": int((ours_pred == their_pred).sum()),
        "max_logit_gap": float(np.abs(ours_logits - their_logits).max()),
    }


@dataclass
class Twins:
    """A run's start in both frameworks: the preset built with the run's seed and its torch twin
    (same weights and dropout masks), each framework's optimizer, purenn's schedule and the torch
    ``LambdaLR`` replaying it, and the run's training loader."""

    ours: Sequential | Model
    optimizer: Optimizer
    schedule: Schedule
    theirs: torch.nn.Module
    torch_optimizer: torch.optim.Optimizer
    torch_schedule: torch.optim.lr_scheduler.LambdaLR
    train: DataLoader


def start_twins(config, data, dtype: str = "float32") -> Twins:
    """Both frameworks at step 0 of the run ``config`` on ``data``, in ``dtype``."""
    ours = build_preset(
        config.preset,
        len(data.cache.class_names),
        config.image_size,
        seed=config.seed,
        dtype=np.dtype(dtype),
    )
    theirs = twin_with_same_masks(ours)
    train = data.train_loader(config)
    optimizer = make_optimizer(config, ours)
    schedule = make_schedule(config, optimizer, len(train))
    torch_optimizer, torch_schedule = torch_training(config, theirs, schedule)
    return Twins(ours, optimizer, schedule, theirs, torch_optimizer, torch_schedule, train)


def torch_training(config, model, schedule):
    """Torch Adam (or SGD) and a LambdaLR replaying purenn's schedule step by step."""
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    else:
        cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        optimizer = cls(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    lr_lambda = lambda step: schedule.lr_at(step) / config.lr  # noqa: E731
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def torch_step(config, model, optimizer, x, y) -> tuple[float, int]:
    """One training step; returns the batch's loss and number of correct predictions."""
    optimizer.zero_grad(set_to_none=True)
    logits = model(torch.from_numpy(x))
    loss = torch.nn.functional.cross_entropy(
        logits, torch.from_numpy(y), label_smoothing=config.label_smoothing
    )
    loss.backward()
    if config.clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
    optimizer.step()
    return loss.item(), int((logits.detach().argmax(1).numpy() == y).sum())


def train_torch(config, data, log) -> tuple[torch.nn.Module, list[dict], int]:
    twins = start_twins(config, data)
    model, optimizer, lr_schedule = twins.theirs, twins.torch_optimizer, twins.torch_schedule
    train, val = twins.train, data.loader("val", config.batch_size)
    stopper, history = EarlyStopping(config.patience), []
    best_state = None
    # Wall-clock seconds from the start of training, as purenn's elapsed_s (validation included).
    training_start = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        start, losses, correct, seen = time.perf_counter(), 0.0, 0, 0
        for x, y in train.epoch(epoch):
            lr = optimizer.param_groups[0]["lr"]  # the rate of the epoch's last step is logged
            loss, hits = torch_step(config, model, optimizer, x, y)
            lr_schedule.step()
            losses, correct, seen = losses + loss * len(y), correct + hits, seen + len(y)
        seconds = time.perf_counter() - start
        logits, labels = torch_logits(model, val.epoch(0))
        # As purenn's trainer: the validation loss includes the label smoothing of training.
        val_loss = SoftmaxCrossEntropy(config.label_smoothing).forward(logits, labels)
        row = {
            "epoch": epoch + 1,
            "train_loss": losses / seen,
            "train_accuracy": correct / seen,
            "val_loss": val_loss,
            "val_accuracy": float((logits.argmax(1) == labels).mean()),
            "lr": lr,
            "seconds": seconds,
            "images_per_sec": seen / seconds,
            "elapsed_s": time.perf_counter() - training_start,
        }
        history.append(row)
        if val_loss < stopper.best:
            stopper.best, stopper.best_epoch, stopper.wait = val_loss, epoch + 1, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stopper.wait += 1
        log(
            f"torch epoch {epoch + 1}: train loss {row['train_loss']:.4f}, val loss "
            f"{val_loss:.4f} acc {100 * row['val_accuracy']:.2f}%, {row['images_per_sec']:.1f} "
            "img/s"
        )
        if stopper.should_stop:
            break
    model.load_state_dict(best_state)
    return model, history, stopper.best_epoch


def read_metrics(path: Path) -> list[dict]:
    with path.open() as handle:
        return [
            {k: float(v) if v else math.nan for k, v in row.items()}
            for row in csv.DictReader(handle)
        ]


def plot_comparison(path: Path, ours: list[dict], theirs: list[dict], steps) -> None:
    fig, (loss_axes, acc_axes, step_axes) = plt.subplots(1, 3, figsize=(15, 4))
    for history, name, style in ((ours, "purenn", "-"), (theirs, "PyTorch", "--")):
        epochs = [row["epoch"] for row in history]
        for key, axes in (("loss", loss_axes), ("accuracy", acc_axes)):
            axes.plot(epochs, [r[f"train_{key}"] for r in history], style, label=f"{name} train")
            axes.plot(epochs, [r[f"val_{key}"] for r in history], style, label=f"{name} val")
    for axes, title in ((loss_axes, "loss"), (acc_axes, "accuracy")):
        axes.set(xlabel="epoch", title=title)
        axes.legend()
    step_axes.plot([s for s, _, _ in steps], [a for _, a, _ in steps], label="purenn")
    step_axes.plot([s for s, _, _ in steps], [b for _, _, b in steps], "--", label="PyTorch")
    step_axes.set(xlabel="step", ylabel="training loss", title="first epoch, per batch")
    step_axes.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_replay(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Steps and |purenn - torch| training-loss differences of a ``first_epoch_losses*.csv``."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    steps = np.array([int(row["step"]) for row in rows])
    gaps = np.array([abs(float(row["purenn_loss"]) - float(row["torch_loss"])) for row in rows])
    return steps, gaps


def plot_replay_precision(out: Path) -> None:
    """Loss differences per step of the float32 and float64 replays, on a log scale."""
    fig, axes = plt.subplots(figsize=(7, 4))
    for dtype, name in (("float32", "first_epoch_losses.csv"), ("float64", REPLAY64)):
        steps, gaps = read_replay(out / name)
        axes.semilogy(steps, np.maximum(gaps, TIE_FLOOR), label=dtype)
    axes.set(
        ylim=(TIE_FLOOR / 2, 10),
        xlabel="step of epoch 1",
        ylabel=f"|purenn loss - PyTorch loss| (0 drawn at {TIE_FLOOR:g})",
        title="first epoch from identical weights and batches",
    )
    axes.grid(alpha=0.3)
    axes.legend()
    fig.tight_layout()
    fig.savefig(out / "replay_precision.png", dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a purenn run folder (its config.json)")
    parser.add_argument("--out", type=Path, help="output folder (default RUN_DIR/torch-reference)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--first-epoch-steps", type=int, help="replay only this many steps of each epoch"
    )
    parser.add_argument(
        "--replay-epochs",
        type=int,
        default=1,
        help="replay this many epochs (more than 1: also writes replay_<dtype>.json)",
    )
    parser.add_argument(
        "--replay-dtype",
        choices=("float32", "float64"),
        default="float32",
        help="precision of the replay (training is float32 either way)",
    )
    parser.add_argument(
        "--replay-only", action="store_true", help="replay, then stop: skip the training"
    )
    args = parser.parse_args()
    config = make_config(args.run_dir / "config.json")
    out = args.out or args.run_dir / "torch-reference"
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    data = load_training_data(
        scan_image_folder(config.data_dir),
        config.image_size,
        config.val_fraction,
        config.test_fraction,
        config.split_seed,
        config.cache_dir,
        args.threads,
        progress=False,
    )

    log = (lambda line: print(line, flush=True)) if args.replay_epochs > 1 else None
    rows, ours, theirs = replay(
        config, data, args.replay_epochs, args.first_epoch_steps, args.replay_dtype, log
    )
    steps = [(step, a, b) for epoch, step, a, b in rows if epoch == 1]
    name = REPLAY64 if args.replay_dtype == "float64" else "first_epoch_losses.csv"
    with (out / name).open("w", newline="") as handle:
        csv.writer(handle).writerows([("step", "purenn_loss", "torch_loss"), *steps])
    if (out / "first_epoch_losses.csv").exists() and (out / REPLAY64).exists():
        plot_replay_precision(out)
    gaps = np.array([abs(a - b) for _, a, b in steps])
    apart = np.flatnonzero(gaps > REPLAY_AGREEMENT)
    print(
        f"first epoch in {args.replay_dtype}, {len(steps)} steps: mean |purenn - torch| "
        f"training loss {gaps.mean():.3g}, max {gaps.max():.3g}; losses within "
        f"{REPLAY_AGREEMENT:g} for the first {apart[0] if len(apart) else len(steps)} steps",
        flush=True,
    )
    if args.replay_epochs > 1:
        test = data.loader("test", config.batch_size)
        summary = replay_summary(rows, ours, theirs, test, args.replay_dtype)
        (out / f"replay_{args.replay_dtype}.json").write_text(json.dumps(summary, indent=2))
        print(
            f"after {args.replay_epochs} epochs in {args.replay_dtype}: test accuracy purenn "
            f"{100 * summary['purenn_test_accuracy']:.2f}%, torch "
            f"{100 * summary['torch_test_accuracy']:.2f}%; same prediction on "
            f"{summary['same_predictions']} of {summary['test_images']} test images, largest "
            f"logit difference {summary['max_logit_gap']:.3g}",
            flush=True,
        )
    if args.replay_only:
        return

    started = time.perf_counter()
    model, history, best_epoch = train_torch(config, data, lambda line: print(line, flush=True))
    wall = time.perf_counter() - started
    with (out / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    logits, labels = torch_logits(model, data.loader("test", config.batch_size).epoch(0))
    report = classification_report(logits, labels, data.cache.class_names)
    report.update(best_epoch=best_epoch, epochs=len(history), wall_seconds=wall)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(format_report(report))
    print(f"torch: best epoch {best_epoch} of {len(history)}, wall {wall:.0f} s")
    ours = args.run_dir / "metrics.csv"
    if ours.exists():
        plot_comparison(out / "compare.png", read_metrics(ours), history, steps)


if __name__ == "__main__":
    main()
