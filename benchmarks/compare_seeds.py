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


def seed_results(run: Path) -> dict:
    """One seed's figures, in percent except the F1 scores: test accuracy and macro F1 of both
    frameworks, their difference, and both validation accuracies at the last epoch."""
    ours, theirs = read_json(run / "report.json"), read_json(run / TORCH_FOLDER / "report.json")
    return {
        "seed": read_json(run / "config.json")["seed"],
        "purenn": 100 * ours["accuracy"],
        "purenn_f1": ours["macro_f1"],
        "torch": 100 * theirs["accuracy"],
        "torch_f1": theirs["macro_f1"],
        "diff": 100 * (ours["accuracy"] - theirs["accuracy"]),
        "purenn_val": 100 * read_column(run / "metrics.csv", "val_accuracy")[-1],
        "torch_val": 100 * read_column(run / TORCH_FOLDER / "metrics.csv", "val_accuracy")[-1],
    }


def table(runs: list[Path]) -> str:
    results = [seed_results(run) for run in runs]
    stats = {key: mean_std([r[key] for r in results]) for key in results[0] if key != "seed"}
    rows = [
        f"| {r['seed']} | {r['purenn']:.2f}% | {r['purenn_f1']:.4f} | {r['torch']:.2f}% "
        f"| {r['torch_f1']:.4f} | {r['diff']:+.2f} |"
        for r in results
    ]
    (pm, ps), (pfm, pfs) = stats["purenn"], stats["purenn_f1"]
    (tm, ts), (tfm, tfs) = stats["torch"], stats["torch_f1"]
    dm, ds = stats["diff"]
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
            *stats["purenn_val"], *stats["torch_val"]
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
