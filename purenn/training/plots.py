"""PNG plots of a run: learning curves, the confusion matrix, reliability diagrams and
risk-coverage curves (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from purenn.inference.calibration import Reliability
from purenn.io import atomic_write
from purenn.training.labels import short_labels


def _figure(width: float, height: float):
    # The object-oriented API with the Agg canvas: no pyplot, no global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    return atomic_write(path, lambda f: fig.savefig(f, format="png"))


def plot_curves(path: str | Path, history: list[dict], best_epoch: int | None = None) -> Path:
    """Loss and accuracy per epoch, train vs val, side by side; the best epoch marked.

    Args:
        path: the PNG to write.
        history: metrics rows with ``epoch``, ``train_loss``, ``val_loss``, ``train_accuracy``,
            ``val_accuracy`` (val values may be None when there is no validation split).
        best_epoch: the epoch whose weights were kept, drawn as a dotted line.
    """
    fig = _figure(10, 4)
    epochs = [row["epoch"] for row in history]
    for ax, metric, title in zip(
        fig.subplots(1, 2), ("loss", "accuracy"), ("loss", "accuracy"), strict=True
    ):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [row[f"{split}_{metric}"] for row in history]
            if any(v is not None for v in values):
                ys = [np.nan if v is None else v for v in values]
                ax.plot(epochs, ys, style, markersize=3, label=split)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_confusion(path: str | Path, cm: np.ndarray, class_names: list[str]) -> Path:
    """The confusion matrix normalised by row: each cell is the share of its true class.

    Colour and the number written in each non-empty cell are that share in percent (a cell
    below 0.5% reads "<1"); the ticks are :func:`short_labels` of the class names, so 34
    PlantVillage classes stay legible.

    Args:
        path: the PNG to write.
        cm: (K, K) counts, row = true class, column = predicted.
        class_names: the K names.
    """
    cm = np.asarray(cm)
    k = len(class_names)
    labels = short_labels(class_names)
    # About 0.4 inch per class (room for a 3-digit number at 7 pt), capped for huge K.
    side = min(3 + 0.4 * k, 30)
    fig = _figure(side + 3, side + 1.5)
    ax = fig.subplots()
    rows = cm.sum(axis=1, keepdims=True)
    recall = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    image = ax.imshow(recall, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class (row)", shrink=0.6)
    tick_size = 10 if k <= 20 else 9
    ax.set_xticks(range(k), labels, rotation=90, fontsize=tick_size)
    ax.set_yticks(range(k), labels, fontsize=tick_size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, j in zip(*np.nonzero(cm), strict=True):
        percent = 100 * recall[i, j]
        text = "<1" if percent < 0.5 else f"{percent:.0f}"
        colour = "white" if recall[i, j] > 0.5 else "black"
        ax.text(j, i, text, ha="center", va="center", color=colour, size=7 if k > 20 else 8)
    ax.set_title(f"confusion matrix, % of each true class ({int(cm.sum())} images)")
    return _save(fig, path)


def plot_reliability(
    path: str | Path, before: Reliability, after: Reliability, temperature: float, split: str
) -> Path:
    """Reliability diagrams before and after temperature scaling, side by side.

    Each bar is a confidence bin's accuracy (drawn at the bin), the red outline its mean
    confidence; a calibrated model's bars reach the diagonal. Empty bins have no bar.

    Args:
        path: the PNG to write.
        before, after: :func:`purenn.inference.calibration.reliability` of the probabilities
            without and with the temperature.
        temperature: the fitted T, for the title.
        split: the images binned (e.g. ``"val"``), for the title.
    """
    fig = _figure(10, 4.8)
    panels = (("before (T = 1)", before), (f"after (T = {temperature:.3g})", after))
    for ax, (title, bins) in zip(fig.subplots(1, 2, sharey=True), panels, strict=True):
        left, width = bins.edges[:-1], np.diff(bins.edges)
        filled = bins.counts > 0
        ax.bar(left[filled], bins.accuracy[filled], width[filled], align="edge",
               color="tab:blue", edgecolor="white", label="accuracy")  # fmt: skip
        ax.bar(left[filled], bins.confidence[filled], width[filled], align="edge",
               fill=False, edgecolor="tab:red", label="mean confidence")  # fmt: skip
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("top probability")
        ax.set_title(f"{title}: ECE {100 * bins.ece:.2f}%")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    fig.axes[0].set_ylabel("accuracy")
    fig.suptitle(f"reliability on the {split} split ({int(before.counts.sum())} images)")
    return _save(fig, path)


def risk_coverage(scores: np.ndarray, wrong: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(coverage, risk)`` of accepting images in increasing order of OOD score.

    After accepting the ``i`` lowest-scoring of ``N`` images, coverage is ``i / N`` and risk the
    share of wrong answers among them (ties broken by input order).
    """
    order = np.argsort(scores, kind="stable")
    accepted = np.arange(1, len(order) + 1)
    return accepted / len(order), np.cumsum(np.asarray(wrong, dtype=float)[order]) / accepted


def plot_risk_coverage(
    path: str | Path,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    marked: dict[str, tuple[float, float]],
    score: str,
) -> Path:
    """Risk-coverage curves (Geifman & El-Yaniv 2017), with the model's threshold marked.

    Args:
        path: the PNG to write.
        curves: label -> ``(wrong, scores)``: bool ``(N,)`` wrong answers and their OOD scores.
        marked: label -> ``(coverage, risk)`` at the model file's threshold.
        score: the OOD score's name, for the title.
    """
    fig = _figure(6, 4.5)
    ax = fig.subplots()
    for label, (wrong, scores) in curves.items():
        coverage, risk = risk_coverage(scores, wrong)
        (line,) = ax.plot(coverage, 100 * risk, label=label)
        if label in marked:
            c, r = marked[label]
            ax.plot([c], [100 * r], "o", color=line.get_color())
    ax.set_xlabel("coverage (share of images answered, lowest OOD score first)")
    ax.set_ylabel("risk (% of answered images wrong)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_title(f"risk-coverage, OOD score {score} (dots: the model's threshold)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)
