"""The ``purenn`` command: train, evaluate, calibrate, predict, summary, demo, cache, export,
serve, diagnoses, explain.

Exit codes: 0 success; 1 training diverged (NaN/inf loss); 2 bad input (``purenn: error: ...``
on stderr, no traceback); 130 interrupted (Ctrl-C; ``train`` saves a checkpoint first); 141
the reader of the output went away (``purenn predict ... | head -1``), silently, as SIGPIPE
ends other command-line tools.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import purenn
from purenn.cli import explain as explain_cli
from purenn.cli import serve as serve_cli
from purenn.cli.arguments import (
    add_batch_size,
    add_cache_dir,
    add_model_argument,
    add_threads,
    add_tta,
    positive_int,
)
from purenn.cli.cache import add_parser as add_cache_parser
from purenn.cli.calibrate import add_parser as add_calibrate_parser
from purenn.cli.export import add_parser as add_export_parser
from purenn.inference.prediction import format_predictions
from purenn.io import load_model, model_file
from purenn.kernels.runtime import limit_threads
from purenn.presets import PRESETS, build_preset
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
from purenn.training.config import (
    KEYS,
    RESUMABLE_OVERRIDES,
    ConfigError,
    TrainConfig,
    read_config_file,
)
from purenn.training.evaluation import SPLIT_CHOICES, default_eval_dir, describe_scored
from purenn.training.metrics import format_report
from purenn.training.ood_evaluation import evaluate_ood, format_ood, require_ood_test
from purenn.training.progress import plural
from purenn.training.rundir import RunDir

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141


class UsageError(ValueError):
    """A bad combination of command-line arguments."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Help with every default shown (except "none" and off switches) and epilogs kept as typed."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "default:" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line ``purenn: error: ...`` of every other input error."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"purenn: error: {message} (see {self.prog} --help)\n")


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
        if "epochs" in given:
            raise UsageError(_more_epochs_advice(Path(args.resume), given["epochs"]))
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
        config = _new_run_config(args.config, given)
        result = train(config, args.overwrite, progress)
    line = f"best model (epoch {result.best_epoch}): {result.run_dir / RunDir.BEST}"
    if result.replay_report is not None:
        lab = result.replay_report
        line = (
            f"original test split of {lab['data_dir']}: {100 * lab['accuracy']:.2f}% "
            f"({lab['samples']} images); " + line
        )
    if result.test_report is not None:
        report = result.test_report
        line = (
            f"test accuracy: {100 * report['accuracy']:.2f}% ({report['samples']} test images); "
            + line
        )
    progress.result(line)
    return EXIT_OK


def _new_run_config(file: str | None, given: dict) -> TrainConfig:
    """The config of a new run from the config file and the flags given, checked."""
    for flag in ("preset", "weight_norm"):
        if "init_from" in given and flag in given:
            raise UsageError(
                f"{_flag(flag)} cannot be used with --init-from: the model's architecture "
                f"comes from {given['init_from']}"
            )
    in_file = read_config_file(file) if file else {}
    if "init_from" in given and "image_size" not in {**in_file, **given}:
        # A fine-tuned model keeps the input size it was trained at.
        _, meta = load_model(model_file(given["init_from"], "--init-from"))
        if isinstance(meta.get("image_size"), int):
            given = {**given, "image_size": meta["image_size"]}
    try:
        return make_config(file, given)
    except ConfigError as err:
        key = str(err).split(" ", 1)[0]
        if key in given:  # name the flag the user typed, too
            raise ConfigError(f"{_flag(key)}: {err}") from None
        raise


def _more_epochs_advice(run: Path, epochs: int) -> str:
    """Why ``--resume RUN --epochs N`` is refused, and the command that trains on."""
    data = ""
    if (run / RunDir.CONFIG).is_file():
        data = f" --config {run / RunDir.CONFIG}"
    return (
        f"--epochs cannot change the length of a run being resumed: its learning-rate schedule "
        f"was planned for the epochs it started with. To train its model further, start a new "
        f"run from it (a fresh schedule and optimizer): purenn train{data} --init-from {run} "
        f"--epochs {epochs} --out {run}-more"
    )


def _cmd_evaluate(args: argparse.Namespace, progress: Progress) -> int:
    model = model_file(args.model)
    out = Path(args.out) if args.out else default_eval_dir(model, args.data_dir, args.split)
    _, meta = load_model(model)  # a bad model file is reported before the folder is created
    if args.ood is not None:
        require_ood_test(model, meta)
    _writable_folder(out.absolute())
    with limit_threads(args.threads):
        report = evaluate(
            model,
            args.data_dir,
            split=args.split,
            batch_size=args.batch_size,
            cache_dir=args.cache_dir,
            workers=args.threads,
            progress=progress.bars,
            tta=args.tta,
        )
        if args.ood is not None:
            report["ood"] = _evaluate_ood(args, model, out, progress)
    json_path, png_path = write_report(out, report)
    if args.json:
        print(describe_scored(report), file=sys.stderr)
        print(json.dumps(report, indent=2))
    else:
        progress.info(describe_scored(report))
        progress.result(format_report(report))
        if args.ood is not None:
            progress.result(format_ood(report["ood"]))
        progress.info(
            f"calibration: temperature {report['temperature']:.4g}, expected calibration "
            f"error {100 * report['ece']:.2f}%\nreport: {json_path}\nconfusion matrix: {png_path}"
        )
    return EXIT_OK


def _evaluate_ood(args: argparse.Namespace, model: Path, out: Path, progress: Progress) -> dict:
    """``evaluate --ood DIR``: the OOD test's figures for report.json (risk_coverage.png)."""
    return evaluate_ood(
        model,
        args.data_dir,
        args.ood,
        out,
        split=args.split,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        workers=args.threads,
        progress=progress.bars,
    )


def _cmd_predict(args: argparse.Namespace, progress: Progress) -> int:
    skipped: list[tuple[str, str]] | None = None if args.strict else []
    with limit_threads(args.threads):
        results = predict(
            args.model, args.images, args.top_k, args.batch_size, skipped=skipped, tta=args.tta
        )
    if skipped:
        listed = "".join(f"\n  {path}: {reason}" for path, reason in skipped)
        print(
            f"purenn: skipped {len(skipped)} unreadable file(s) (--strict to fail instead):"
            + listed,
            file=sys.stderr,
        )
    print(json.dumps(results, indent=2) if args.json else format_predictions(results))
    return EXIT_OK


# What ``purenn summary PRESET`` shows without --num-classes / --image-size: how it is used.
SUMMARY_DEFAULTS = {"demo-cnn": (10, 16)}
SUMMARY_FALLBACK = (38, 128)  # the seed project's PlantVillage models


def _cmd_summary(args: argparse.Namespace, progress: Progress) -> int:
    target = args.target
    if Path(target).exists():
        model, meta = load_model(model_file(target))
        title = f"{target}: {plural(len(meta.get('class_names', [])), 'class')}"
        shape = model.input_shape
    elif target in PRESETS:
        classes, size = SUMMARY_DEFAULTS.get(target, SUMMARY_FALLBACK)
        classes = args.num_classes or classes
        size = args.image_size or size
        model = build_preset(target, classes, size, args.in_channels)
        title = f"{target}: {plural(classes, 'class')}"
        shape = (args.in_channels, size, size)
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
    progress.info(
        f"run folder: {result.run_dir} (try: purenn summary {result.run_dir / RunDir.BEST})"
    )
    report = result.test_report
    progress.result(
        f"demo test accuracy: {100 * report['accuracy']:.1f}% ({report['samples']} test "
        f"images, {time.perf_counter() - start:.0f} s)"
    )
    return EXIT_OK


# -- the parser ------------------------------------------------------------------------------
def _examples(*lines: str) -> str:
    return "example:\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="purenn",
        description="A deep-learning library in pure NumPy: train and use models.",
        epilog=_examples(
            "purenn demo", "purenn train leaves/ --out runs/cnn", "purenn train --help"
        ),
    )
    parser.add_argument("--version", action="version", version=f"purenn {purenn.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = commands.add_parser(
        "train",
        help="train a model on an image folder",
        description="Train a classifier on DATA_DIR/<class>/<image> into a run folder.",
        epilog=_examples(
            "purenn train leaves/ --preset plantvillage-cnn --epochs 30 --out runs/cnn",
            "purenn train --resume runs/cnn",
            "purenn train new-photos/ --init-from runs/cnn --epochs 10 --out runs/cnn-tuned",
            "purenn train corrections/ --init-from runs/cnn --replay leaves/ --replay-fraction 1 "
            "--epochs 10 --out runs/cnn-field",
        ),
    )
    p.add_argument("data_dir", nargs="?", metavar="DATA_DIR", help="DATA_DIR/<class>/<image>")
    p.add_argument(
        "--config", metavar="FILE", help="TOML or JSON file of config keys (a run's config.json)"
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument(
        "--overwrite", action="store_true", help="delete an existing run folder's run files first"
    )
    _add_config_flags(p)
    p.set_defaults(func=_cmd_train)

    p = commands.add_parser(
        "evaluate",
        help="metrics of a model on an image folder",
        description="Score a model on labelled images; writes report.json and confusion.png.",
        epilog=_examples(
            "purenn evaluate runs/cnn/best.npz leaves/            # its test split (auto)",
            "purenn evaluate runs/cnn test-leaves/ --json | head",
            "purenn evaluate runs/cnn leaves/ --ood not-leaves/  # and the OOD test",
        ),
    )
    add_model_argument(p)
    p.add_argument("data_dir", metavar="DATA_DIR", help="DATA_DIR/<class>/<image>")
    p.add_argument(
        "--split",
        choices=SPLIT_CHOICES,
        default="auto",
        help="auto: the model's test split on the folder it was trained on, all images of any "
        "other folder; or all, or one part of the training split",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="for report.json and confusion.png "
        "(default: <model folder>/eval-<data folder>[-<split>])",
    )
    p.add_argument(
        "--ood",
        metavar="DIR",
        help="also measure the model's OOD test against the photos in DIR (none of its "
        "classes; DIR/<group>/<image> and/or images in DIR): AUROC, FPR at 95%% of the leaves "
        "accepted, share not recognized; risk_coverage.png",
    )
    add_batch_size(p)
    add_cache_dir(p)
    add_tta(p)
    p.add_argument("--json", action="store_true", help="print the JSON report")
    add_threads(p)
    p.set_defaults(func=_cmd_evaluate)
    add_calibrate_parser(commands)

    p = commands.add_parser(
        "predict",
        help="top-k classes of image files",
        description="Top-k classes of image files; unreadable files are listed and skipped.",
        epilog=_examples("purenn predict runs/cnn/best.npz leaf1.jpg photos/ --top-k 3"),
    )
    add_model_argument(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--top-k", type=positive_int, default=5, metavar="K", help="classes per image")
    add_batch_size(p)
    add_tta(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--strict", action="store_true", help="fail on an unreadable file instead of skipping it"
    )
    add_threads(p)
    p.set_defaults(func=_cmd_predict)

    p = commands.add_parser(
        "summary",
        help="layers, output shapes, parameters, FLOPs",
        epilog=_examples(
            "purenn summary plantvillage-cnn --num-classes 15", "purenn summary runs/cnn"
        ),
    )
    p.add_argument(
        "target", metavar="PRESET_OR_MODEL", help=f"{', '.join(PRESETS)}, a .npz or a run folder"
    )
    p.add_argument(
        "--image-size",
        type=positive_int,
        metavar="S",
        help="for a preset (default: 16 for demo-cnn, else 128)",
    )
    p.add_argument(
        "--num-classes",
        type=positive_int,
        metavar="K",
        help="for a preset (default: 10 for demo-cnn, else 38)",
    )
    p.add_argument("--in-channels", type=positive_int, default=3, metavar="C", help="for a preset")
    p.set_defaults(func=_cmd_summary)

    p = commands.add_parser(
        "demo",
        help="train a small CNN on handwritten digits shipped with purenn",
        description="Train demo-cnn on 1,797 8x8 handwritten digits (shipped, no download).",
        epilog=_examples("purenn demo", "purenn demo --epochs 3 --out runs/demo"),
    )
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/demo-<date>-<time>)")
    p.add_argument(
        "--overwrite", action="store_true", help="delete an existing run folder's run files first"
    )
    p.add_argument("--epochs", type=positive_int, metavar="N", help="(default: 15)")
    p.add_argument("--seed", type=int, metavar="N", help="(default: 0)")
    add_threads(p)
    p.set_defaults(func=_cmd_demo)

    add_cache_parser(commands)
    add_export_parser(commands)
    serve_cli.add_parser(commands)
    explain_cli.add_parser(commands)

    for sub in commands.choices.values():
        if sub.prog.endswith((" diagnoses", " tokens")):
            continue  # their sub-commands have their own --quiet
        sub.add_argument("--quiet", "-q", action="store_true", help="print only the result")
    return parser


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (tests)
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    try:
        args = build_parser().parse_args(serve_cli.route_tokens_command(argv))
    except SystemExit as exit:  # --help, --version, or a usage error already printed
        return exit.code
    progress = Progress(quiet=args.quiet)
    try:
        code = args.func(args, progress)
        sys.stdout.flush()  # a closed pipe is reported here, not at interpreter exit
        return code
    except BrokenPipeError:  # `purenn predict ... | head -1`: the reader has what it wanted
        _silence_stdout()
        return EXIT_BROKEN_PIPE
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
