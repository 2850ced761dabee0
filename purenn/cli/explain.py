"""``purenn explain MODEL IMAGE... --out DIR``: one overlay PNG per image, class in the caption."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from purenn.cli.arguments import non_negative_int, positive_int
from purenn.data import collect_images, load_image, normalize_batch
from purenn.explain.methods import METHODS, explain
from purenn.explain.overlay import render, write_png
from purenn.explain.photo import REQUIRED_METADATA, class_index
from purenn.inference.probabilities import model_temperature
from purenn.io import load_model, model_file
from purenn.kernels.runtime import limit_threads

# Each panel (photo, overlay) of a written PNG is at least this many pixels high.
MIN_PANEL = 256


def add_parser(commands) -> None:
    """Register the ``explain`` subcommand on the ``purenn`` subparsers ``commands``."""
    p = commands.add_parser("explain", help="heat maps of what a model's decision depends on")
    p.add_argument("model", metavar="MODEL", help="a .npz model file")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the overlay PNGs")
    p.add_argument("--method", choices=METHODS, default="gradcam", help="(default: %(default)s)")
    p.add_argument(
        "--class",
        dest="target",
        metavar="NAME",
        help="explain this class (name or index) instead of the predicted one",
    )
    p.add_argument(
        "--layer",
        type=non_negative_int,
        metavar="N",
        help="gradcam: index of the layer whose output maps are used (default: the last Conv2D; "
        "in a graph whose last Conv2D a shortcut bypasses, the last map on every path)",
    )
    p.add_argument(
        "--smooth",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="saliency: SmoothGrad over N noisy copies (default: 0, the plain gradient)",
    )
    p.add_argument("--batch-size", type=positive_int, default=16, metavar="N")
    p.add_argument("--json", action="store_true", help="print JSON instead of lines")
    p.add_argument("--threads", type=positive_int, metavar="N")
    p.set_defaults(func=run)


def _output_names(files: list[Path], method: str) -> list[str]:
    """``<stem>.<method>.png`` per file, with ``-2``, ``-3`` ... where stems repeat."""
    names, seen = [], {}
    for f in files:
        seen[f.stem] = seen.get(f.stem, 0) + 1
        suffix = "" if seen[f.stem] == 1 else f"-{seen[f.stem]}"
        names.append(f"{f.stem}{suffix}.{method}.png")
    return names


def run(args: argparse.Namespace, progress) -> int:
    """The ``explain`` command: decode every image first, then explain and write in batches."""
    model, meta = load_model(model_file(args.model), require=REQUIRED_METADATA)
    temperature = model_temperature(meta)
    target = None
    if args.target is not None:  # a class name, else an index
        name_or_index = args.target
        if name_or_index not in meta["class_names"] and name_or_index.isdigit():
            name_or_index = int(name_or_index)
        target = class_index(meta, name_or_index)
    files = collect_images(args.images)
    outputs = _output_names(files, args.method)
    size = meta["image_size"]
    pixels = np.stack([load_image(f, size) for f in files])  # (N, 3, S, S) uint8
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names, records = meta["class_names"], []
    with limit_threads(args.threads):
        for start in range(0, len(files), args.batch_size):
            rows = slice(start, start + args.batch_size)
            result = explain(
                model,
                normalize_batch(pixels[rows], meta["mean"], meta["std"]),
                args.method,
                target,
                layer=args.layer,
                smooth_samples=args.smooth,
                temperature=temperature,
            )
            for i, f in enumerate(files[rows]):
                chosen = int(result.targets[i])
                predicted = int(np.argmax(result.probabilities[i]))
                probability = float(result.probabilities[i, chosen])
                caption = f"{names[chosen]} {100 * probability:.1f}%"
                if chosen != predicted:
                    caption += f" (predicted: {names[predicted]})"
                image = render(
                    pixels[start + i].transpose(1, 2, 0),
                    result.maps[i],
                    caption,
                    panel=max(size, MIN_PANEL),
                )
                path = write_png(out / outputs[start + i], image)
                records.append(
                    {
                        "file": str(f),
                        "overlay": str(path),
                        "class": names[chosen],
                        "probability": probability,
                        "predicted": names[predicted],
                    }
                )
                if not args.json:
                    progress.result(f"{f}: {caption} -> {path}")
    if args.json:
        print(json.dumps(records, indent=2))
    return 0
