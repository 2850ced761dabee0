"""Compare purenn and PyTorch over several training seeds of one model on one split.

Each run folder is a finished ``purenn train`` run followed by ``torch_reference.py`` on it, so
each seed gives one paired comparison: both frameworks started from the same weights and saw the
same batches. One pair alone cannot separate the frameworks from the run-to-run spread of a
chaotic trajectory; the mean over seeds and the spread of the paired differences can.

    python benchmarks/compare_seeds.py runs/pv-ann runs/pv-ann-seed* --plot seeds.png

Prints a markdown table (test accuracy and macro F1 per seed and framework, their means and
sample standard deviations, the paired differences, and the mean validation accuracy at the last
epoch) and, with ``--plot``, draws every run's validation accuracy per epoch, purenn and PyTorch
in one figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

TORCH_FOLDER = "torch-reference"


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"compare_seeds: error: {path} is missing (finish the run)") from None


def read_column(path: Path, column: str) -> list[float]:
    with path.open(newline="") as handle:
        return [float(row[column]) for row in csv.DictReader(handle)]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def table(runs: list[Path]) -> str:
    rows, columns = [], {"purenn": [], "torch": [], "purenn_f1": [], "torch_f1": [], "diff": []}
    last_val = {"purenn": [], "torch": []}
    for run in runs:
        for name, folder in (("purenn", run), ("torch", run / TORCH_FOLDER)):
            last_val[name].append(100 * read_column(folder / "metrics.csv", "val_accuracy")[-1])
        seed = read_json(run / "config.json")["seed"]
        ours, theirs = read_json(run / "report.json"), read_json(run / TORCH_FOLDER / "report.json")
        diff = 100 * (ours["accuracy"] - theirs["accuracy"])
        for key, value in (
            ("purenn", 100 * ours["accuracy"]),
            ("torch", 100 * theirs["accuracy"]),
            ("purenn_f1", ours["macro_f1"]),
            ("torch_f1", theirs["macro_f1"]),
            ("diff", diff),
        ):
            columns[key].append(value)
        rows.append(
            f"| {seed} | {100 * ours['accuracy']:.2f}% | {ours['macro_f1']:.4f} "
            f"| {100 * theirs['accuracy']:.2f}% | {theirs['macro_f1']:.4f} | {diff:+.2f} |"
        )
    stats = {key: mean_std(values) for key, values in columns.items()}
    (pm, ps), (tm, ts), (dm, ds) = stats["purenn"], stats["torch"], stats["diff"]
    (pfm, pfs), (tfm, tfs) = stats["purenn_f1"], stats["torch_f1"]
    n = len(runs)
    lines = [
        "| seed | purenn test acc | purenn macro F1 | PyTorch test acc | PyTorch macro F1 "
        "| difference (pp) |",
        "|---:|---:|---:|---:|---:|---:|",
        *rows,
        f"| mean ± sd ({n} seeds) | {pm:.2f} ± {ps:.2f}% | {pfm:.4f} ± {pfs:.4f} "
        f"| {tm:.2f} ± {ts:.2f}% | {tfm:.4f} ± {tfs:.4f} | {dm:+.2f} ± {ds:.2f} |",
        "",
        f"Difference of the means: {pm - tm:+.2f} pp; standard error of the mean paired "
        f"difference: {ds / math.sqrt(n):.2f} pp.",
        "Validation accuracy at the last epoch, mean ± sd: purenn "
        "{:.2f} ± {:.2f}%, PyTorch {:.2f} ± {:.2f}%.".format(
            *mean_std(last_val["purenn"]), *mean_std(last_val["torch"])
        ),
    ]
    return "\n".join(lines)


def plot(runs: list[Path], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(7, 4.2))
    for i, run in enumerate(runs):
        for folder, name, style in ((run, "purenn", "-"), (run / TORCH_FOLDER, "PyTorch", "--")):
            accuracy = read_column(folder / "metrics.csv", "val_accuracy")
            axis.plot(
                range(1, len(accuracy) + 1),
                100 * np.asarray(accuracy),
                style,
                color="tab:green" if name == "purenn" else "tab:orange",
                alpha=0.7,
                label=name if i == 0 else None,
            )
    axis.set(xlabel="epoch", ylabel="validation accuracy (%)")
    axis.set_title(f"{len(runs)} training seeds, one split: purenn (solid) and PyTorch (dashed)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with torch-reference/")
    parser.add_argument("--plot", type=Path, help="write the validation curves to this PNG")
    args = parser.parse_args()
    print(table(args.runs))
    if args.plot:
        plot(args.runs, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
