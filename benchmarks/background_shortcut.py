"""Does a model read the leaf or the lab's background? Each class's background, and each model's
test accuracy with the backgrounds as shot and with every leaf put on one plain grey.

1. For every class of DATA: how many of its images have a black background (at least
   ``DARK_SHARE`` of the 3-pixel border darker than ``DARK_LEVEL``). PlantVillage shot one
   class this way: a background only that class has is a label a model can learn instead of
   the disease.
2. For every model (a run folder trained on DATA): its test split scored twice, the images
   as stored and with the background replaced by ``GREY`` through the field recipe's leaf mask
   (``purenn.data.field.leaf_mask``, soft-edged). The leaf's pixels are the same in both. A
   class whose accuracy collapses on grey was recognised by its background.

    python benchmarks/background_shortcut.py ../shared/data/plantvillage34 runs/a runs/b
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from timing import machine_header

from purenn.data import DataLoader, scan_image_folder
from purenn.data.field import leaf_alpha
from purenn.inference.probabilities import model_temperature
from purenn.io import load_model
from purenn.training.evaluation import predict_logits
from purenn.training.metrics import classification_report
from purenn.training.pipeline import open_cache, split_indices

DARK_LEVEL = 25  # uint8: a border pixel darker than this (mean of R, G, B) is black
DARK_SHARE = 0.3  # an image whose border is at least this share black has a black background
BORDER = 3  # pixels
GREY = np.array([0.60, 0.58, 0.62], dtype=np.float32)  # PlantVillage's usual grey card, [0, 1]
CHUNK = 64  # images composited at a time


def black_background(images: np.ndarray) -> np.ndarray:
    """(N,) bool: which uint8 (N, 3, H, W) images have a black background."""
    shade = images.mean(axis=1)  # (N, H, W)
    border = np.concatenate(
        [
            shade[:, :BORDER].reshape(len(images), -1),
            shade[:, -BORDER:].reshape(len(images), -1),
            shade[:, :, :BORDER].reshape(len(images), -1),
            shade[:, :, -BORDER:].reshape(len(images), -1),
        ],
        axis=1,
    )
    return (border < DARK_LEVEL).mean(axis=1) >= DARK_SHARE


def on_grey(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 3, H, W): each leaf (its soft mask) over the plain ``GREY``."""
    out = np.empty_like(images)
    for start in range(0, len(images), CHUNK):
        x = images[start : start + CHUNK].astype(np.float32) / 255
        alpha = leaf_alpha(x)[:, None]
        y = alpha * x + (1 - alpha) * GREY[None, :, None, None]
        out[start : start + CHUNK] = np.clip(np.rint(y * 255), 0, 255).astype(np.uint8)
    return out


def scored(model, meta, images: np.ndarray, labels: np.ndarray, names: list[str]) -> dict:
    """``classification_report`` of the model on uint8 ``images`` (its per-class recall is the
    per-class accuracy)."""
    loader = DataLoader(images, labels, np.arange(len(labels)), 64, meta["mean"], meta["std"])
    logits, y = predict_logits(model, loader, model_temperature(meta))
    return classification_report(logits, y, names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="DATA/<class>/<image>, the models' training folder")
    parser.add_argument("runs", type=Path, nargs="*", help="run folders (their best.npz)")
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()
    print(machine_header())
    scan = scan_image_folder(args.data)
    cache = open_cache(scan, args.image_size, None, None, False)
    dark = black_background(np.asarray(cache.images))
    names = cache.class_names
    print(f"\n{'class':<55} {'images':>7} {'black background':>17}")
    for k, name in enumerate(names):
        mine = cache.labels == k
        if dark[mine].any():
            print(f"{name:<55} {mine.sum():>7} {dark[mine].sum():>17}")
    print(f"{'every other class':<55} {'':>7} {0:>17}")

    for run in args.runs:
        model, meta = load_model(run / "best.npz")
        s = meta["split"]
        test = split_indices(cache, s["val_fraction"], s["test_fraction"], s["seed"])["test"]
        stored, labels = np.asarray(cache.images[test]), cache.labels[test]
        as_shot = scored(model, meta, stored, labels, names)
        grey = scored(model, meta, on_grey(stored), labels, names)
        print(
            f"\n{run}: test split ({len(test)} images), top-1 as shot "
            f"{100 * as_shot['accuracy']:.2f}%, every leaf on grey {100 * grey['accuracy']:.2f}%"
        )
        print(f"{'class (largest changes)':<55} {'test':>5} {'as shot':>8} {'on grey':>8}")
        shot_recall = np.array([c["recall"] for c in as_shot["classes"]])
        grey_recall = np.array([c["recall"] for c in grey["classes"]])
        for k in np.argsort(-np.abs(shot_recall - grey_recall))[:5]:
            support = as_shot["classes"][k]["support"]
            print(
                f"{names[k]:<55} {support:>5} {100 * shot_recall[k]:>7.1f}% "
                f"{100 * grey_recall[k]:>7.1f}%"
            )


if __name__ == "__main__":
    main()
