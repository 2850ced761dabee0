"""What a trained PlantVillage CNN looks at: overlays, the deletion check, leaf vs background.

On the test split of the model's own training run (the model file stores the split's fractions and
seed), this script

1. writes photo | Grad-CAM overlay PNGs for a dozen test leaves of different classes, wrong
   predictions first, into ``--out`` (docs/img/explain);
2. runs the deletion check on every test image: the predicted class's probability after blanking
   the 20% of pixels that Grad-CAM (and, for comparison, saliency) ranks highest vs 20% at random,
   blanked pixels set to 0 after z-scoring, i.e. the training images' mean colour;
3. measures the share of the Grad-CAM mass that falls on the leaf, with the leaf segmented by
   colour (see ``leaf_mask``), beside the share of the image the leaf covers;
4. times explaining one image against predicting it (median, ``--threads`` threads).

Run from the repository root::

    flock /work/bench.lock python benchmarks/explain_leaves.py /work/runs/pv-cnn/best.npz \\
        ../shared/data/plantvillage --out docs/img/explain
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from timing import cpu_model

from purenn.data import normalize_batch, scan_image_folder
from purenn.explain import explain, explain_photo, render, write_png
from purenn.explain.deletion import deletion_check
from purenn.io import load_model
from purenn.kernels.runtime import limit_threads
from purenn.presets import build_preset
from purenn.training.pipeline import open_cache, split_indices


def leaf_mask(photo: np.ndarray) -> np.ndarray:
    """bool ``(H, W)``: the leaf in a uint8 ``(H, W, 3)`` PlantVillage photo.

    PlantVillage leaves lie on a grey, grey-blue or black background. A pixel is leaf if it is
    coloured (HSV saturation > 0.15), not black (value > 0.06) and its hue lies between orange
    and cyan (15 to 170 degrees: green tissue, yellow and brown lesions), outside the blue-violet
    tint of the grey backgrounds. The mask is then cleaned: opened with a 3x3 square (drops
    isolated background pixels), closed with a 9x9 square and its holes filled (grey lesions,
    pale veins and glare inside the leaf), and only the largest connected component kept.
    Checked by eye on 30 photos (``--mask-sheet``): glare at a leaf's edge and the palest parts
    of corn leaves can still fall outside the mask, so the share on the leaf is if anything
    underestimated.
    """
    rgb = photo.astype(np.float64) / 255
    value = rgb.max(axis=2)
    spread = value - rgb.min(axis=2)
    saturation = np.where(value > 0, spread / np.maximum(value, 1e-12), 0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(spread, 1e-12)
    hue = (
        np.select(
            [value == r, value == g],
            [((g - b) / safe) % 6, (b - r) / safe + 2],
            (r - g) / safe + 4,
        )
        * 60
    )
    mask = (saturation > 0.15) & (value > 0.06) & (hue > 15) & (hue < 170)
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3)))
    padded = np.pad(mask, 4, mode="edge")  # so that the closing does not erode the image border
    mask = ndimage.binary_closing(padded, structure=np.ones((9, 9)))[4:-4, 4:-4]
    mask = ndimage.binary_fill_holes(mask)
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return labels == 1 + int(np.argmax(sizes))


def short(name: str, width: int = 31) -> str:
    """A class name for a caption: ``"Corn_(maize)___Common_rust_"`` -> ``"Corn (maize): Common
    rust"``, cut to ``width`` characters."""
    plant, _, disease = name.partition("___")
    text = f"{plant.replace('_', ' ').strip()}: {disease.replace('_', ' ').strip()}"
    return text if len(text) <= width else text[: width - 3] + "..."


def pick_examples(labels, predicted, count: int) -> list[int]:
    """Up to ``count`` indices of different true classes: wrong predictions for up to half of
    them (the first test image of each class that has one), then correct ones."""
    chosen, classes = [], set()
    wrong = np.flatnonzero(predicted != labels)
    right = np.flatnonzero(predicted == labels)
    for pool, limit in ((wrong, count // 2), (right, count)):
        for i in pool:
            if len(chosen) < limit and labels[i] not in classes:
                chosen.append(int(i))
                classes.add(int(labels[i]))
    return chosen


def interleaved_seconds(calls: dict, rounds: int, warmup: int = 3) -> dict:
    """``{name: (median seconds, median ratio to the first call)}``.

    Each round times every call once, one after the other, so that a slower or faster spell of a
    shared machine affects the calls of a round alike; the ratio is the median over rounds of a
    call's time divided by the first call's time in the same round.
    """
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = np.array(next(iter(times.values())))
    return {
        name: (float(np.median(t)), float(np.median(np.array(t) / base)))
        for name, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a trained model file (.npz)")
    parser.add_argument("data_dir", help="the PlantVillage folder it was trained on")
    parser.add_argument("--out", default="docs/img/explain", help="folder for the overlays")
    parser.add_argument("--examples", type=int, default=12)
    parser.add_argument("--cache-dir", help="decoded-image cache (default ~/.cache/purenn)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--mask-sheet", help="write 8 photos beside their leaf masks (PNG)")
    args = parser.parse_args()

    print(f"Model name: {cpu_model()}")
    model, meta = load_model(args.model, require=("class_names", "split", "mean", "std"))
    names, size = meta["class_names"], meta["image_size"]
    scan = scan_image_folder(args.data_dir)
    if scan.class_names != names:
        raise SystemExit(f"{args.data_dir} does not hold the model's classes")
    cache = open_cache(scan, size, args.cache_dir, workers=args.threads, progress=False)
    split = meta["split"]
    test = split_indices(cache, split["val_fraction"], split["test_fraction"], split["seed"])[
        "test"
    ]
    pixels = np.asarray(cache.images[test])  # uint8 (N, 3, S, S)
    labels = cache.labels[test]
    x = normalize_batch(pixels, meta["mean"], meta["std"])
    photos = pixels.transpose(0, 2, 3, 1)
    figures: dict = {"model": args.model, "epoch": meta.get("epoch"), "test_images": len(test)}

    with limit_threads(args.threads):
        gradcam = explain(model, x, "gradcam", batch_size=16)
        sal = explain(model, x, "saliency", batch_size=16)
        predicted = gradcam.targets
        figures["test_accuracy"] = float((predicted == labels).mean())
        print(f"test images: {len(test)}, accuracy {100 * figures['test_accuracy']:.2f}%")

        # 1. overlays
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        examples = []
        for rank, i in enumerate(pick_examples(labels, predicted, args.examples), 1):
            p = float(gradcam.probabilities[i, predicted[i]])
            correct = bool(predicted[i] == labels[i])
            caption = f"true: {short(names[labels[i]])}\npredicted: {short(names[predicted[i]])}"
            caption += f" {100 * p:.0f}%"
            file = out / f"{rank:02d}-{'right' if correct else 'wrong'}.png"
            write_png(file, render(photos[i], gradcam.maps[i], caption, panel=128))
            examples.append(
                {
                    "file": file.name,
                    "true": names[labels[i]],
                    "predicted": names[predicted[i]],
                    "probability": p,
                    "correct": correct,
                }
            )
        figures["examples"] = examples
        print(f"wrote {len(examples)} overlays to {out}")

        # 2. deletion check
        for method, result in (("gradcam", gradcam), ("saliency", sal)):
            check = deletion_check(model, x, result.maps, predicted, fraction=0.2, batch_size=16)
            diff = check.explained_drop - check.random_drop
            figures[f"deletion_{method}"] = {
                "probability_before": float(check.original.mean()),
                "drop_explained": float(check.explained_drop.mean()),
                "drop_random": float(check.random_drop.mean()),
                "mean_difference": float(diff.mean()),
                "standard_error": float(diff.std(ddof=1) / np.sqrt(len(diff))),
                "share_explained_larger": float((diff > 0).mean()),
            }
            d = figures[f"deletion_{method}"]
            print(
                f"deletion ({method} top 20% vs random 20%, {len(diff)} images): mean probability "
                f"{d['probability_before']:.3f} -> drop {d['drop_explained']:.3f} vs "
                f"{d['drop_random']:.3f} (difference {d['mean_difference']:.3f} +- "
                f"{d['standard_error']:.3f} s.e.; larger on "
                f"{100 * d['share_explained_larger']:.0f}% of images)"
            )

        # 3. leaf vs background
        masks = np.stack([leaf_mask(photo) for photo in photos])
        mass = gradcam.maps.sum(axis=(1, 2))
        on_leaf = (gradcam.maps * masks).sum(axis=(1, 2)) / np.where(mass > 0, mass, 1)
        area = masks.mean(axis=(1, 2))
        figures["leaf"] = {
            "gradcam_mass_on_leaf_mean": float(on_leaf[mass > 0].mean()),
            "gradcam_mass_on_leaf_median": float(np.median(on_leaf[mass > 0])),
            "leaf_area_mean": float(area.mean()),
            "images_mostly_background": int(((on_leaf < 0.5) & (mass > 0)).sum()),
            "empty_maps": int((mass == 0).sum()),
            # share of the mass on the leaf / share of the pixels on the leaf: 1 for a uniform map
            "concentration_median": float(np.median(on_leaf / np.maximum(area, 1e-12))),
            "per_class": {
                names[c]: {
                    "mass_on_leaf": float(on_leaf[labels == c].mean()),
                    "leaf_area": float(area[labels == c].mean()),
                }
                for c in range(len(names))
            },
        }
        f = figures["leaf"]
        print(
            f"Grad-CAM mass on the leaf: mean {100 * f['gradcam_mass_on_leaf_mean']:.1f}%, median "
            f"{100 * f['gradcam_mass_on_leaf_median']:.1f}% (the leaf covers "
            f"{100 * f['leaf_area_mean']:.1f}% of the pixels); under half on the leaf in "
            f"{f['images_mostly_background']} images; empty maps: {f['empty_maps']}; median "
            f"concentration (share of mass / share of area) {f['concentration_median']:.2f}"
        )
        if meta.get("preset"):
            # Control: the same architecture with its initial (untrained) weights.
            fresh = build_preset(meta["preset"], len(names), size, seed=0)
            fresh_maps = explain(fresh, x, "gradcam", batch_size=16).maps
            fresh_mass = fresh_maps.sum(axis=(1, 2))
            fresh_on_leaf = (fresh_maps * masks).sum(axis=(1, 2)) / np.where(
                fresh_mass > 0, fresh_mass, 1
            )
            f["untrained_mass_on_leaf_mean"] = float(fresh_on_leaf[fresh_mass > 0].mean())
            print(
                f"control, the untrained {meta['preset']} (seed 0): "
                f"{100 * f['untrained_mass_on_leaf_mean']:.1f}% of the Grad-CAM mass on the leaf"
            )
        for name, row in f["per_class"].items():
            print(
                f"  {name}: {100 * row['mass_on_leaf']:.1f}% of the mass on the leaf, which "
                f"covers {100 * row['leaf_area']:.1f}%"
            )
        if args.mask_sheet:
            rows = range(0, len(test), max(1, len(test) // 8))
            sheet = [
                np.concatenate([photos[i], masks[i, ..., None].repeat(3, 2) * 255], 1) for i in rows
            ]
            write_png(args.mask_sheet, np.concatenate(sheet[:8]).astype(np.uint8))

        # 4. time to explain one image vs to predict it
        one = x[:1]
        photo = np.ascontiguousarray(photos[0])
        timings = interleaved_seconds(
            {
                "predict": lambda: model.forward(one, training=False),
                "gradcam": lambda: explain(model, one),
                "saliency": lambda: explain(model, one, "saliency"),
                "explain_photo": lambda: explain_photo(model, meta, photo),
            },
            args.repeats,
        )
        figures["seconds_per_image"] = timings
        for name, (seconds, ratio) in timings.items():
            print(
                f"one {size}x{size} image, {args.threads} threads, float32: {name} "
                f"{1000 * seconds:.1f} ms (median of {args.repeats}; x{ratio:.2f} predict, "
                "median of the per-round ratios)"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
