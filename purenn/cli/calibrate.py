"""``purenn calibrate MODEL DATA_DIR``: fit a model file's temperature (and, on its validation
split, its OOD test) and write them into it."""

from __future__ import annotations

import argparse
import json

from purenn.cli.arguments import (
    add_batch_size,
    add_cache_dir,
    add_model_argument,
    add_threads,
)
from purenn.inference.recognition import SCORES
from purenn.kernels.runtime import limit_threads
from purenn.training.calibrate import CALIBRATE_SPLITS, calibrate, format_calibration


def _cmd_calibrate(args: argparse.Namespace, progress) -> int:
    with limit_threads(args.threads):
        result = calibrate(
            args.model,
            args.data_dir,
            split=args.split,
            batch_size=args.batch_size,
            cache_dir=args.cache_dir,
            workers=args.threads,
            progress=progress.bars,
            ood_score=args.ood_score,
        )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        progress.result(format_calibration(result))
    return 0


def add_parser(commands) -> None:
    """Register ``purenn calibrate`` on the sub-command parsers ``commands``."""
    p = commands.add_parser(
        "calibrate",
        help="fit a model's temperature (and OOD test) so its answers are calibrated",
        description="Fit the temperature T that minimises the NLL of softmax(logits / T) on "
        "held-out labelled images, and write it into MODEL (atomically; the weights are "
        "unchanged). Every probability purenn reports divides the logits by it. On the "
        "model's validation split of an .npz file, also fit its OOD test (statistics of the "
        "training split, threshold keeping 95%% of the validation split).",
        epilog="example:\n  purenn calibrate runs/cnn leaves/         # its validation split\n"
        "  purenn calibrate old.npz new-leaves/ --split all",
    )
    add_model_argument(p)
    p.add_argument("data_dir", metavar="DATA_DIR", help="DATA_DIR/<class>/<image>")
    p.add_argument(
        "--split",
        choices=CALIBRATE_SPLITS,
        default="auto",
        help="auto: the model's validation split on the folder it was trained on, all images "
        "of any other folder; or val, or all (never images the model was trained on)",
    )
    p.add_argument(
        "--ood-score",
        choices=SCORES,
        help="the OOD test's score (default, chosen by measurement: max_softmax for a model "
        "trained with --outliers, knn for any other)",
    )
    add_batch_size(p)
    add_cache_dir(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_threads(p)
    p.set_defaults(func=_cmd_calibrate)
