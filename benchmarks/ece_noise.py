"""How large an expected calibration error sampling alone gives on a test split of this size.

Scores MODEL on its test split (as ``purenn evaluate`` does: calibrated probabilities, 15 bins)
and prints the observed ECE; then draws ``--draws`` sets of outcomes from the model's own
confidences (each image right with probability equal to its top probability: a perfectly
calibrated model with these confidences) and prints the ECE those give, and a bootstrap
interval of the observed one. With a few hundred test images the ECE of a perfect model is
not zero: a target of a couple of percent sits close to that floor.

    python benchmarks/ece_noise.py runs/rn34/best.npz ../shared/data/plantvillage34
"""

from __future__ import annotations

import argparse

import numpy as np

from purenn.inference.calibration import expected_calibration_error, scaled_logits
from purenn.inference.probabilities import model_temperature
from purenn.io import load_model
from purenn.kernels.ops import softmax
from purenn.training.evaluation import score_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model file written by purenn train")
    parser.add_argument("data_dir", help="the folder it was trained on (its test split is used)")
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, meta = load_model(args.model)
    scored = score_folder(model, meta, args.data_dir, "test", progress=False)
    p = softmax(scaled_logits(scored.logits, model_temperature(meta)).astype(np.float64))
    labels = scored.labels
    observed = expected_calibration_error(p, labels)
    rng = np.random.default_rng(args.seed)
    confidence, top = p.max(axis=1), p.argmax(axis=1)
    wrong = (top + 1) % p.shape[1]  # any other class: only right or wrong counts
    perfect = np.array(
        [
            expected_calibration_error(p, np.where(rng.random(len(p)) < confidence, top, wrong))
            for _ in range(args.draws)
        ]
    )
    resampled = [
        expected_calibration_error(p[i], labels[i])
        for i in (rng.integers(0, len(p), len(p)) for _ in range(args.draws))
    ]
    print(f"{len(p)} test images: observed ECE {100 * observed:.2f}%")
    print(
        f"a perfectly calibrated model with these confidences: ECE median "
        f"{100 * np.median(perfect):.2f}%, 90th percentile {100 * np.percentile(perfect, 90):.2f}%"
        f", at least the observed one in {100 * np.mean(perfect >= observed):.0f}% of "
        f"{args.draws} draws"
    )
    low, high = np.percentile(resampled, [5, 95])
    print(
        f"bootstrap of the observed ECE (5th-95th percentile): {100 * low:.2f}% - {100 * high:.2f}%"
    )


if __name__ == "__main__":
    main()
