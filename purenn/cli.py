"""The ``purenn`` command: train, evaluate, predict, summary, demo, explain.

Exit codes: 0 success; 1 training diverged (NaN/inf loss); 2 bad input (``purenn: error: ...``
on stderr, no traceback); 130 interrupted (Ctrl-C; ``train`` saves a checkpoint first).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import purenn
from purenn.explain import cli as explain_cli
from purenn.presets import PRESETS, build_preset
from purenn.runtime import limit_threads
from purenn.serialization import load_model
from purenn.training import (
    NonFiniteLossError,
    Progress,
    TrainingInterrupted,
    evaluate,
    make_config,
    predict,
    resume,
    run_demo,
    train,
    write_report,
)
from purenn.training.config import KEYS, RESUMABLE_OVERRIDES
from purenn.training.evaluation import default_eval_dir
from purenn.training.metrics import format_report
from purenn.training.prediction import format_predictions

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(ValueError):
    """A bad combination of command-line arguments."""


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line ``purenn: error: ...`` of every other input error."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"purenn: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


_positive_int.__name__ = "positive int"  # argparse names the type in its message


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config key (``--batch-size`` for ``batch_size``), absent unless given."""
    types = {"int": int, "float": float, "str": str}
    for name, f in KEYS.items():
        if name == "data_dir":
            continue
        kind = str(f.type).replace(" | None", "")
        default = "" if f.default is None else f" (default: {f.default})"
        kwargs = {"default": argparse.SUPPRESS, "help": f.metadata["help"] + default}
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = types[kind]
            kwargs["metavar"] = {"int": "N", "float": "X", "str": "PATH"}[kind]
            if f.metadata["choices"]:
                kwargs["choices"] = f.metadata["choices"]
                kwargs["metavar"] = "{" + ",".join(f.metadata["choices"]) + "}"
        parser.add_argument(_flag(name), dest=name, **kwargs)


def _writable_folder(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as err:
        raise UsageError(f"cannot write to {path}: {err.strerror or err}") from None
    return path


# -- commands --------------------------------------------------------------------------------
def _cmd_train(args: argparse.Namespace, progress: Progress) -> int:
    # Config flags default to SUPPRESS: only the ones given are attributes. DATA_DIR is optional.
    given = {
        name: getattr(args, name) for name in KEYS if name != "data_dir" and hasattr(args, name)
    }
    if args.data_dir is not None:
        given["data_dir"] = args.data_dir
    if args.resume is not None:
        conflicts = [
            "DATA_DIR" if name == "data_dir" else _flag(name)
            for name in given
            if name not in RESUMABLE_OVERRIDES
        ]
        conflicts += [flag for flag in ("--config", "--overwrite") if getattr(args, flag[2:])]
        if conflicts:
            raise UsageError(
                f"{conflicts[0]} cannot be used with --resume: a resumed run keeps the config "
                f"saved in {Path(args.resume) / 'config.json'}"
            )
        result = resume(args.resume, threads=given.get("threads"), progress=progress)
    else:
        result = train(make_config(args.config, given), args.overwrite, progress)
    line = f"best model (epoch {result.best_epoch}): {result.run_dir / 'best.npz'}"
    if result.test_report is not None:
        report = result.test_report
        line = (
            f"test accuracy: {100 * report['accuracy']:.2f}% ({report['samples']} test images); "
            + line
        )
    progress.result(line)
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace, progress: Progress) -> int:
    out = Path(args.out) if args.out else default_eval_dir(args.model, args.data_dir, args.split)
    load_model(args.model)  # a bad model file is reported before the folder is created
    _writable_folder(out.absolute())
    with limit_threads(args.threads):
        report = evaluate(
            args.model,
            args.data_dir,
            split=args.split,
            batch_size=args.batch_size,
            cache_dir=args.cache_dir,
            workers=args.threads,
            progress=progress.bars,
        )
    json_path, png_path = write_report(out, report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        progress.result(format_report(report))
        progress.info(f"report: {json_path}\nconfusion matrix: {png_path}")
    return EXIT_OK


def _cmd_predict(args: argparse.Namespace, progress: Progress) -> int:
    with limit_threads(args.threads):
        results = predict(args.model, args.images, top_k=args.top_k, batch_size=args.batch_size)
    print(json.dumps(results, indent=2) if args.json else format_predictions(results))
    return EXIT_OK


def _cmd_summary(args: argparse.Namespace, progress: Progress) -> int:
    target = args.target
    if Path(target).is_file():
        model, meta = load_model(target)
        title = f"{target}: {len(meta.get('class_names', []))} classes"
        shape = model.input_shape
    elif target in PRESETS:
        model = build_preset(target, args.num_classes, args.image_size, args.in_channels)
        title = f"{target}: {args.num_classes} classes"
        shape = (args.in_channels, args.image_size, args.image_size)
    else:
        raise UsageError(
            f"{target!r} is neither a model file nor a preset; presets: {', '.join(PRESETS)}"
        )
    print(f"{title}, input {shape}\n{model.summary(shape)}")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace, progress: Progress) -> int:
    overrides = {
        k: getattr(args, k) for k in ("epochs", "seed", "threads") if getattr(args, k) is not None
    }
    start = time.perf_counter()
    result = run_demo(args.out, overwrite=args.overwrite, progress=progress, **overrides)
    report = result.test_report
    progress.result(
        f"demo test accuracy: {100 * report['accuracy']:.1f}% ({report['samples']} test "
        f"images, {time.perf_counter() - start:.0f} s)"
    )
    return EXIT_OK


# -- the parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="purenn", description="A deep-learning library in pure NumPy: train and use models."
    )
    parser.add_argument("--version", action="version", version=f"purenn {purenn.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = commands.add_parser("train", help="train a model on an image folder")
    p.add_argument("data_dir", nargs="?", metavar="DATA_DIR", help="DATA_DIR/<class>/<image>")
    p.add_argument("--config", metavar="FILE", help="TOML or JSON file of config keys")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="reuse an existing run folder")
    _add_config_flags(p)
    p.set_defaults(func=_cmd_train)

    p = commands.add_parser("evaluate", help="metrics of a model on an image folder")
    p.add_argument("model", metavar="MODEL", help="a .npz model file")
    p.add_argument("data_dir", metavar="DATA_DIR", help="DATA_DIR/<class>/<image>")
    p.add_argument(
        "--split",
        choices=("all", "train", "val", "test"),
        default="all",
        help="all images, or one part of the split made in training (default: all)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="for report.json and confusion.png "
        "(default: <model folder>/eval-<data folder>[-<split>])",
    )
    p.add_argument("--batch-size", type=_positive_int, default=64, metavar="N")
    p.add_argument("--cache-dir", metavar="DIR", help="decoded-image cache")
    p.add_argument("--json", action="store_true", help="print the JSON report")
    p.add_argument("--threads", type=_positive_int, metavar="N")
    p.set_defaults(func=_cmd_evaluate)

    p = commands.add_parser("predict", help="top-k classes of image files")
    p.add_argument("model", metavar="MODEL", help="a .npz model file")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--top-k", type=_positive_int, default=5, metavar="K")
    p.add_argument("--batch-size", type=_positive_int, default=64, metavar="N")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--threads", type=_positive_int, metavar="N")
    p.set_defaults(func=_cmd_predict)

    p = commands.add_parser("summary", help="layers, output shapes, parameters, FLOPs")
    p.add_argument("target", metavar="PRESET_OR_MODEL", help=f"{', '.join(PRESETS)} or a .npz")
    p.add_argument("--image-size", type=int, default=128, metavar="S")
    p.add_argument("--num-classes", type=int, default=38, metavar="K")
    p.add_argument("--in-channels", type=int, default=3, metavar="C")
    p.set_defaults(func=_cmd_summary)

    p = commands.add_parser("demo", help="train a small CNN on the digits shipped with sklearn")
    p.add_argument("--out", metavar="RUN_DIR", help="keep the run folder here")
    p.add_argument("--overwrite", action="store_true", help="reuse an existing run folder")
    p.add_argument("--epochs", type=_positive_int, metavar="N")
    p.add_argument("--seed", type=int, metavar="N")
    p.add_argument("--threads", type=_positive_int, metavar="N")
    p.set_defaults(func=_cmd_demo)

    explain_cli.add_parser(commands)

    for sub in commands.choices.values():
        sub.add_argument("--quiet", "-q", action="store_true", help="print only the result")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # --help, --version, or a usage error already printed
        return exit.code
    progress = Progress(quiet=args.quiet)
    try:
        return args.func(args, progress)
    except NonFiniteLossError as err:
        print(f"purenn: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    except TrainingInterrupted as err:
        print(f"purenn: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("purenn: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as err:
        # ValueError covers ConfigError, DataError, ModelFileError, RunDirError, UsageError.
        print(f"purenn: error: {err}", file=sys.stderr)
        return EXIT_USAGE
