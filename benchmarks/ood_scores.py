"""Which out-of-distribution score tells a trained model's leaves from photos that are not.

For a model trained by ``purenn train`` (the model file records its data folder, split fractions
and seed, so the splits here are exactly the run's), this script computes in one forward pass per
image the penultimate features and the logits of

- the training split (unaugmented): what Mahalanobis and the nearest-neighbour bank are fitted on;
- the validation split: where the threshold keeping 95% of the leaves is set;
- the test split: the in-distribution images every figure is measured on;
- each folder of the OOD halves given (``--ood``; benchmarks/split_ood.py made them): the
  ``train`` half (what a score may be chosen with) and the ``eval`` half (what it is reported on).

and prints, per score and OOD folder: the AUROC (test leaves against the folder), the FPR at 95%
TPR (the share of the folder accepted at the threshold keeping 95% of the test leaves), and the
share rejected at the validation threshold; then the share of test leaves accepted at that
threshold and their accuracy; then each score's cost per image relative to the forward pass
(medians over interleaved rounds, batches of 1 and 64 test images, ``--threads`` threads).

    nice -n 5 python benchmarks/ood_scores.py /work/runs/pv34-cnn/best.npz \\
        --ood /work/runs/ood-split/train /work/runs/ood-split/eval
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from timing import alternating_medians, cpu_model, machine_header

from purenn.data import DataLoader, normalize_batch, scan_image_folder, scan_outlier_folder
from purenn.inference.ood import (
    Mahalanobis,
    NearestNeighbours,
    acceptance_threshold,
    auroc,
    energy_score,
    features_and_logits,
    fpr_at_tpr,
    max_logit_score,
    max_softmax_score,
)
from purenn.inference.probabilities import model_temperature
from purenn.io import load_model, model_file
from purenn.kernels.runtime import limit_threads
from purenn.training.evaluation import predict_features
from purenn.training.pipeline import open_cache, split_indices

KEEP = 0.95
NEIGHBOURS = (1, 5, 10, 20, 50, 100)

Score = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (features, logits) -> (N,) scores


def extract(model, cache, indices, labels, meta, batch_size: int):
    """``(features, logits, labels)`` of ``cache.images[indices]``, one tapped forward each."""
    loader = DataLoader(cache.images, labels, indices, batch_size, meta["mean"], meta["std"])
    return predict_features(model, loader)


def make_scores(train_features, train_labels, temperature: float) -> dict[str, Score]:
    """Every score, fitted on the training split's features where it needs fitting."""
    mahalanobis = Mahalanobis.fit(train_features, train_labels)
    scores: dict[str, Score] = {
        "max softmax (T=1)": lambda f, z: max_softmax_score(z),
        f"max softmax (T={temperature:.3g})": lambda f, z: max_softmax_score(z, temperature),
        "max logit": lambda f, z: max_logit_score(z),
        "energy (T=1)": lambda f, z: energy_score(z),
        "Mahalanobis": lambda f, z: mahalanobis.score(f),
    }
    for k in NEIGHBOURS:
        knn = NearestNeighbours.fit(train_features, k)
        scores[f"kNN k={k}"] = lambda f, z, knn=knn: knn.score(f)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a model file written by purenn train (or its run folder)")
    parser.add_argument(
        "--ood", nargs="+", required=True, metavar="DIR", help="folders of OOD folders"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="threads for the timing")
    parser.add_argument("--rounds", type=int, default=15, help="timing rounds")
    parser.add_argument(
        "--cost-batches", type=int, nargs="+", default=[1, 64], help="batch sizes timed"
    )
    parser.add_argument("--cache-dir", help="decoded-image cache (default ~/.cache/purenn)")
    args = parser.parse_args()

    path = model_file(args.model)
    model, meta = load_model(path, require=("class_names", "mean", "std", "data_dir", "split"))
    temperature = model_temperature(meta)
    size = meta["image_size"]
    print(machine_header())
    print(f"# Model name: {cpu_model()}")
    print(f"# model {path} (epoch {meta.get('epoch')}, temperature {temperature:.4g})")

    scan = scan_image_folder(meta["data_dir"])
    cache = open_cache(scan, size, args.cache_dir, workers=None, progress=False)
    s = meta["split"]
    splits = split_indices(cache, s["val_fraction"], s["test_fraction"], s["seed"])
    sets = {
        name: extract(model, cache, splits[name], cache.labels, meta, args.batch_size)
        for name in ("train", "val", "test")
    }
    print(
        "# leaves: "
        + ", ".join(f"{name} {len(sets[name][2])}" for name in sets)
        + f" of {meta['data_dir']}"
    )
    ood: dict[str, tuple] = {}
    for folder in args.ood:
        groups = scan_outlier_folder(folder)
        ood_cache = open_cache(groups, size, args.cache_dir, workers=None, progress=False)
        features, logits, group = extract(
            model, ood_cache, np.arange(len(ood_cache)), ood_cache.labels, meta, args.batch_size
        )
        for g, name in enumerate(ood_cache.class_names):
            ood[f"{Path(folder).name}/{name}"] = (features[group == g], logits[group == g])
    print("# OOD: " + ", ".join(f"{name} {len(f)}" for name, (f, _) in ood.items()))

    scores = make_scores(sets["train"][0], sets["train"][2], temperature)
    test_f, test_z, test_y = sets["test"]
    correct = test_z.argmax(axis=1) == test_y
    print(f"\n# test accuracy unfiltered {100 * correct.mean():.2f}% ({len(test_y)} leaves)")
    header = ["score", "test kept", "acc kept"]
    for name in ood:
        header += [f"{name} AUROC", "FPR95", "rejected"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, score in scores.items():
        threshold = acceptance_threshold(score(*sets["val"][:2]), KEEP)
        s_test = score(test_f, test_z)
        kept = s_test <= threshold
        row = [name, f"{100 * kept.mean():.1f}%", f"{100 * correct[kept].mean():.2f}%"]
        for f, z in ood.values():
            s_out = score(f, z)
            row += [
                f"{auroc(s_test, s_out):.4f}",
                f"{100 * fpr_at_tpr(s_test, s_out, KEEP):.1f}%",
                f"{100 * np.mean(s_out > threshold):.1f}%",
            ]
        print("| " + " | ".join(row) + " |")

    # Cost: a batch of test images, the forward against each score of its features/logits.
    for size in args.cost_batches:
        x = normalize_batch(cache.images[splits["test"][:size]], meta["mean"], meta["std"])
        f, z = features_and_logits(model, x)
        calls = {"forward": lambda x=x: model.forward(x, training=False)}
        calls |= {
            name: (lambda score=score, f=f, z=z: score(f, z)) for name, score in scores.items()
        }
        with limit_threads(args.threads):
            seconds = alternating_medians(calls, repeats=args.rounds, warmup=2)
        base = seconds["forward"]
        print(
            f"\n# cost per image, batch {len(x)}, {args.threads} thread(s), medians of "
            f"{args.rounds} interleaved rounds (a shared machine: indications)"
        )
        print("| | ms per image | share of the forward |")
        print("|---|---:|---:|")
        for name, t in seconds.items():
            print(f"| {name} | {1e3 * t / len(x):.3f} | {100 * t / base:.2f}% |")


if __name__ == "__main__":
    main()
