"""The field loop, measured: a lab model on field photos before and after fine-tuning on growers'
corrections, with its lab test accuracy after each.

For each k in ``--ks`` (corrections per class) and each of ``--folds`` folds, k photos of every
class of the field folder are the corrections and all its other photos the test; the model is
fine-tuned with the training API as ``purenn train CORRECTIONS --init-from MODEL --replay LAB
--replay-fraction F`` would (the corrections laid out as ``train/``, the rest as ``test/``, so
the run report scores them), and its report gives the accuracy on those field photos and on the
lab's original test split.

Folds: each class's photos are shuffled once (``--seed``); fold f's corrections are positions
``f*k .. f*k + k - 1`` of that order, wrapping round: folds are disjoint as far as the class
has photos (the dev set's smallest class, 17 photos, gives one disjoint fold at k = 10, three
at k = 5, five at k = 3), and overlap after that.

    nice -n 5 python benchmarks/field_loop.py /work/runs/pv34-cnn \\
        --field ../shared/data/field --out runs/field-loop --plot docs/img/field-loop.png

Beside each fine-tuning, with no training at all: the nearest class mean (cosine) of the
corrections' features at the model's last layer's input, scored on the same photos. It says how
far the lab model's features already separate the field classes.

A fold whose run folder already has its ``report.json`` is read, not trained again, so an
interrupted benchmark continues where it stopped. Model files are deleted after each fold (only
the reports, configs and metrics are kept) unless ``--keep-models``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from timing import machine_header

from purenn.data import load_image, normalize_batch, scan_image_folder
from purenn.inference import predict
from purenn.inference.ood import features_and_logits
from purenn.io import atomic_write, load_model, model_file
from purenn.training import Progress, evaluate, make_config, train

# What a fold's run folder loses after its report is read (about 200 MB for the CNN).
MODEL_FILES = ("last.ckpt.npz", "init.npz", "best.npz")


def class_photos(field: Path, seed: int) -> dict[str, list[Path]]:
    """Every class's photos, in a fixed shuffled order (``default_rng([seed, class index])``)."""
    scan = scan_image_folder(field)
    photos: dict[str, list[Path]] = {}
    for label, name in enumerate(scan.class_names):
        files = sorted(scan.root / f for f, y in zip(scan.files, scan.labels, strict=True)
                       if y == label)  # fmt: skip
        order = np.random.default_rng([seed, label]).permutation(len(files))
        photos[name] = [files[i] for i in order]
    return photos


def fold(photos: dict[str, list[Path]], k: int, f: int) -> tuple[dict, dict]:
    """``(corrections, rest)``: per class, positions ``f*k ..`` (wrapping) and all the others."""
    corrections, rest = {}, {}
    for name, files in photos.items():
        if k >= len(files):
            raise SystemExit(f"field_loop: error: {k} corrections of {name}, which has only "
                             f"{len(files)} photos")  # fmt: skip
        chosen = {(f * k + i) % len(files) for i in range(k)}
        corrections[name] = [files[i] for i in sorted(chosen)]
        rest[name] = [p for i, p in enumerate(files) if i not in chosen]
    return corrections, rest


def link_split(root: Path, parts: dict[str, dict[str, list[Path]]]) -> Path:
    """``root/<split>/<class>/<photo>`` as symbolic links to the photos (nothing copied)."""
    for split, classes in parts.items():
        for name, files in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for path in files:
                link = folder / path.name
                if not link.is_symlink():
                    link.symlink_to(path.resolve())
    return root


def fine_tune(args, data: Path, out: Path) -> dict:
    """Fine-tune the model on ``data`` (train/ and test/) into ``out``; its report's figures."""
    report_path = out / "report.json"
    if not report_path.is_file():
        config = make_config(
            overrides={
                "data_dir": str(data), "out": str(out), "init_from": str(args.model),
                "replay": str(args.replay), "replay_fraction": args.replay_fraction,
                "epochs": args.epochs, "lr": args.lr, "warmup_epochs": args.warmup_epochs,
                "batch_size": args.batch_size, "augment": args.augment,
                "augment_factor": args.augment_factor, "patience": 0, "seed": args.seed,
                "threads": args.threads, "checkpoint_steps": 0, "image_size": args.image_size,
            }
        )  # fmt: skip
        train(config, overwrite=True, progress=Progress(quiet=True, bars=False))
        if not args.keep_models:
            for name in MODEL_FILES:
                (out / name).unlink(missing_ok=True)
    report = json.loads(report_path.read_text())
    lab = report["replay"]["test"]
    return {
        "field_accuracy": report["accuracy"],
        "field_samples": report["samples"],
        "field_recall": {c["name"]: c["recall"] for c in report["classes"] if c["support"]},
        "lab_accuracy": lab["accuracy"],
        "lab_samples": lab["samples"],
        "replayed": report["replay"]["images"],
        "seconds": report["run"]["wall_seconds"],
        "training_seconds": report["run"]["training_seconds"],
    }


def base_field_scores(model: Path, photos: dict[str, list[Path]]) -> dict[Path, tuple[bool, bool]]:
    """Per field photo: whether the base model's top-1 and top-3 classes hold its label."""
    files = [p for files in photos.values() for p in files]
    labels = {p: name for name, files in photos.items() for p in files}
    scores = {}
    for result in predict(model, files, top_k=3):
        path = Path(result["file"])
        ranked = [p["class"] for p in result["predictions"]]
        scores[path] = (ranked[0] == labels[path], labels[path] in ranked)
    return scores


def head_features(model_path: Path, files: list[Path]) -> dict[Path, np.ndarray]:
    """Each photo's input to the model's last layer (its Dense head), unit length."""
    model, meta = load_model(model_path)
    images = np.stack([load_image(p, meta["image_size"]) for p in files])
    h, _ = features_and_logits(model.eval(), normalize_batch(images, meta["mean"], meta["std"]))
    return dict(zip(files, h / np.linalg.norm(h, axis=1, keepdims=True), strict=True))


def nearest_mean_accuracy(features: dict, corrections: dict, rest: dict) -> float:
    """Top-1 of the nearest class mean (cosine) of the corrections' features: how far the lab
    model's features alone separate the field classes, with no training."""
    names = list(corrections)
    means = np.stack([np.mean([features[p] for p in corrections[n]], axis=0) for n in names])
    right = [np.argmax(means @ features[p]) == i for i, n in enumerate(names) for p in rest[n]]
    return float(np.mean(right))


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def plot(path: Path, before: float, rows: list[dict], lab_before: float, lab_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (field_ax, lab_ax) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    ks = sorted({row["k"] for row in rows})
    for ax, key, base, title in (
        (field_ax, "field_accuracy", before, "field photos not used for fine-tuning"),
        (lab_ax, "lab_accuracy", lab_before, f"lab test split ({lab_name})"),
    ):
        if ax is field_ax:
            ax.axhline(80, color="tab:red", linestyle=":", label="80%")
            ax.set_ylim(0, 100)
        per_k = [[100 * r[key] for r in rows if r["k"] == k] for k in ks]
        for k, values in zip(ks, per_k, strict=True):
            ax.plot([k] * len(values), values, "o", color="tab:blue", alpha=0.35, markersize=4)
        means = [statistics.mean(v) for v in per_k]
        sds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in per_k]
        ax.errorbar(ks, means, yerr=sds, fmt="-s", color="tab:blue", capsize=4,
                    label="fine-tuned (mean ± sd over folds)")  # fmt: skip
        ax.axhline(100 * base, color="grey", linestyle="--", label="before fine-tuning")
        if ax is field_ax:
            paired = [statistics.mean(100 * r["field_before"] for r in rows if r["k"] == k)
                      for k in ks]  # fmt: skip
            ax.plot(ks, paired, "s:", color="grey", label="before, on the same photos")
        ax.set_xlabel("corrections per class")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_xticks(ks)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the lab model: a model file or run folder")
    parser.add_argument("--field", type=Path, default=Path("../shared/data/field"))
    parser.add_argument("--replay", type=Path, help="the lab data (default: the model's folder)")
    parser.add_argument("--ks", type=int, nargs="+", default=[3, 5, 10])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--augment", default="standard", choices=("standard", "field"))
    parser.add_argument("--augment-factor", type=int, default=4)
    parser.add_argument("--replay-fraction", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="folds and fine-tuning")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", type=Path, default=Path("runs/field-loop"))
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--keep-models", action="store_true")
    args = parser.parse_args()
    print(machine_header(), flush=True)
    print("# command: python " + shlex.join(sys.argv), flush=True)
    args.model = model_file(args.model)
    _, meta = load_model(args.model)
    args.image_size = meta["image_size"]  # as `purenn train --init-from` takes it
    args.replay = (args.replay or Path(meta["data_dir"])).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    photos = class_photos(args.field, args.seed)

    start = time.perf_counter()
    field = evaluate(args.model, args.field, "all", progress=False)
    lab = evaluate(args.model, args.replay, "test", progress=False)
    scores = base_field_scores(args.model, photos)
    features = head_features(args.model, [p for files in photos.values() for p in files])
    top3 = np.mean([s[1] for s in scores.values()])
    print(f"before: field top-1 {100 * field['accuracy']:.1f}%, top-3 {100 * top3:.1f}% "
          f"({field['samples']} photos); lab test {100 * lab['accuracy']:.2f}% "
          f"({lab['samples']} images); {time.perf_counter() - start:.0f} s")  # fmt: skip
    for c in field["classes"]:
        if c["support"]:
            print(f"  {c['name']}: top-1 {100 * c['recall']:.1f}% of {c['support']}")

    rows = []
    for k in args.ks:
        for f in range(args.folds):
            corrections, rest = fold(photos, k, f)
            data = link_split(args.out / f"k{k}-fold{f}" / "data",
                              {"train": corrections, "test": rest})  # fmt: skip
            row = {"k": k, "fold": f, **fine_tune(args, data, args.out / f"k{k}-fold{f}" / "run")}
            tested = [p for files in rest.values() for p in files]
            row["field_before"] = float(np.mean([scores[p][0] for p in tested]))
            row["nearest_mean"] = nearest_mean_accuracy(features, corrections, rest)
            rows.append(row)
            probe = f", nearest mean {100 * row['nearest_mean']:.1f}%"
            print(f"k={k:2d} fold {f}: field {100 * row['field_before']:5.1f}% -> "
                  f"{100 * row['field_accuracy']:5.1f}% ({row['field_samples']} photos{probe}), "
                  f"lab {100 * row['lab_accuracy']:.2f}% ({row['replayed']} replayed, "
                  f"{row['seconds']:.0f} s)", flush=True)  # fmt: skip

    print(
        "\n| corrections per class | folds | field photos tested | field top-1 before | "
        "after (mean ± sd) | nearest class mean | lab test after | lab change (pp) | s per run |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in args.ks:
        mine = [r for r in rows if r["k"] == k]
        before, after, probe, lab_after = (
            mean_sd([100 * r[key] for r in mine])
            for key in ("field_before", "field_accuracy", "nearest_mean", "lab_accuracy")
        )
        print(f"| {k} | {len(mine)} | {mine[0]['field_samples']} | {before[0]:.1f}% | "
              f"{after[0]:.1f} ± {after[1]:.1f}% | {probe[0]:.1f} ± {probe[1]:.1f}% | "
              f"{lab_after[0]:.2f} ± {lab_after[1]:.2f}% | "
              f"{lab_after[0] - 100 * lab['accuracy']:+.2f} | "
              f"{statistics.mean(r['seconds'] for r in mine):.0f} |")  # fmt: skip
    results = {
        "model": str(args.model), "field": str(args.field.resolve()), "replay": str(args.replay),
        "settings": {key: str(value) if isinstance(value, Path) else value
                     for key, value in vars(args).items()},
        "before": {"field_accuracy": field["accuracy"], "field_top3": float(top3),
                   "field_samples": field["samples"], "lab_accuracy": lab["accuracy"],
                   "field_recall": {c["name"]: c["recall"] for c in field["classes"]
                                    if c["support"]}},
        "folds": rows,
    }  # fmt: skip
    atomic_write(args.out / "results.json", json.dumps(results, indent=2) + "\n")
    if args.plot:
        plot(args.plot, field["accuracy"], rows, lab["accuracy"], args.replay.name)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
