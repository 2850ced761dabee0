"""Validation accuracy against wall-clock time, purenn vs PyTorch, and the time to reach a target.

Reads a purenn run folder's ``metrics.csv`` and that of its ``torch-reference/`` subfolder
(written by ``torch_reference.py``); both have ``elapsed_s``, the wall-clock seconds from the
start of training (first epoch included) to the end of each epoch's validation. Draws both
validation-accuracy curves against time in one PNG and prints, for each framework, the time at
which validation accuracy first reaches each target (90% and 95% by default), or "not reached".
The times compare only if both runs had the machine to themselves with the same threads.

    python benchmarks/time_to_accuracy.py runs/pv34-cnn   # runs/pv34-cnn/time_to_accuracy.png
    python benchmarks/time_to_accuracy.py runs/pv34-cnn --targets 0.9 0.95 --out tta.png
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

TORCH_FOLDER = "torch-reference"
FRAMEWORKS = ("purenn", "PyTorch")


def read_curve(path: Path) -> tuple[list[float], list[float]]:
    """``(elapsed seconds, validation accuracy)`` per epoch from a metrics.csv.

    Raises:
        SystemExit: the file is missing or has no ``elapsed_s`` / ``val_accuracy`` values.
    """
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise SystemExit(f"time_to_accuracy: error: {path} is missing (finish the run)") from None
    for column in ("elapsed_s", "val_accuracy"):
        if not rows or column not in rows[0] or any(not row[column] for row in rows):
            raise SystemExit(
                f"time_to_accuracy: error: {path} has no {column} for every epoch (a run without "
                "validation, or written before elapsed_s was recorded)"
            )
    return [float(r["elapsed_s"]) for r in rows], [float(r["val_accuracy"]) for r in rows]


def time_to_reach(elapsed: list[float], accuracy: list[float], target: float) -> float | None:
    """The elapsed seconds of the first epoch whose accuracy is >= ``target``; None if none."""
    return next((t for t, a in zip(elapsed, accuracy, strict=True) if a >= target), None)


def plot(path: Path, curves: dict, targets: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for (name, (elapsed, accuracy)), style in zip(curves.items(), ("-o", "--s"), strict=True):
        ax.plot([t / 60 for t in elapsed], [100 * a for a in accuracy], style, ms=4, label=name)
    for target in targets:
        ax.axhline(100 * target, color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="wall-clock minutes since the start of training", ylabel="validation accuracy, %")
    ax.set_title("time to accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_time(seconds: float | None) -> str:
    return "not reached" if seconds is None else f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def main(argv: list[str] | None = None) -> dict[str, dict[float, float | None]]:
    """Run from the command line; returns ``{framework: {target: seconds or None}}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a purenn run folder with torch-reference/")
    parser.add_argument("--out", type=Path, help="the PNG (default RUN_DIR/time_to_accuracy.png)")
    parser.add_argument(
        "--targets", type=float, nargs="+", default=[0.9, 0.95], help="accuracies, as fractions"
    )
    args = parser.parse_args(argv)
    curves = {
        "purenn": read_curve(args.run_dir / "metrics.csv"),
        "PyTorch": read_curve(args.run_dir / TORCH_FOLDER / "metrics.csv"),
    }
    times = {
        name: {target: time_to_reach(*curve, target) for target in args.targets}
        for name, curve in curves.items()
    }
    out = args.out or args.run_dir / "time_to_accuracy.png"
    plot(out, curves, args.targets)
    print(f"| first reaches | {' | '.join(FRAMEWORKS)} |")
    print(f"|---|{'---|' * len(FRAMEWORKS)}")
    for target in args.targets:
        cells = " | ".join(format_time(times[name][target]) for name in FRAMEWORKS)
        print(f"| {100 * target:g}% val accuracy | {cells} |")
    print(f"wrote {out}", file=sys.stderr)
    return times


if __name__ == "__main__":
    main()
