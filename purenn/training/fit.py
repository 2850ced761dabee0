"""The Python API of a training run: ``train(config)`` and ``resume(run_dir)``.

A run: check everything that can be wrong (config, data folder, run folder) before any work;
cache and split the images; build the preset, optimizer and schedule; run the :class:`Trainer`
(checkpointing as it goes); then restore the best weights, fit the calibration temperature on the
validation split and the out-of-distribution test (:func:`purenn.training.calibrate.fit_ood`),
save ``best.npz`` and evaluate the test split (``report.json``, ``confusion.png``,
``reliability.png``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info

import purenn
from purenn.data import DataError, FolderScan, scan_image_folder
from purenn.distributed import abort_on_error, world
from purenn.inference.calibration import (
    ECE_BINS,
    calibration_summary,
    fit_temperature,
    reliability,
    scaled_logits,
)
from purenn.inference.ood import ends_in_dense
from purenn.inference.recognition import FEATURE_SCORES, OOD_KEY, OODTest, default_score
from purenn.io import load_checkpoint, save_checkpoint, save_model
from purenn.kernels.ops import softmax
from purenn.kernels.runtime import limit_threads, peak_memory_mb, retain_freed_memory
from purenn.nn.losses import SoftmaxCrossEntropy
from purenn.nn.sequential import Sequential
from purenn.optim.optimizers import SGD, Adam, AdamW, Optimizer
from purenn.optim.schedules import Constant, CosineWarmup, Schedule, StepDecay
from purenn.training.calibrate import fit_ood, split_outputs
from purenn.training.callbacks import EarlyStopping
from purenn.training.config import (
    ConfigError,
    TrainConfig,
    effective_warmup,
    make_config,
    validate,
)
from purenn.training.evaluation import write_report
from purenn.training.metrics import classification_report, format_report, recognition_summary
from purenn.training.outliers import OutlierExposure, check_outlier_folder, outlier_exposure
from purenn.training.pipeline import TrainingData, load_training_data
from purenn.training.plots import plot_curves, plot_reliability
from purenn.training.progress import Progress, plural
from purenn.training.replay import Replay, check_replay_classes, load_replay, mix
from purenn.training.rundir import RunDir
from purenn.training.start import Start, initial_model
from purenn.training.trainer import LoopState, NonFiniteLossError, Trainer, TrainingInterrupted

logger = logging.getLogger(__name__)

# Seconds between redraws of curves.png during training (always drawn after the last epoch).
PLOT_INTERVAL = 30.0


@dataclass
class RunResult:
    """The outcome of :func:`train` / :func:`resume`.

    Attributes:
        run_dir: the run folder.
        model: the model with the best weights restored (eval mode).
        history: the metrics rows, one per epoch.
        best_epoch: the (1-based) epoch whose weights were kept.
        stopped_early: early stopping ended the run before the last epoch.
        test_report: metrics on the test split (``classification_report``), None if empty.
        replay_report: with ``replay``, the metrics on the replayed folder's original test
            split (``data_dir``, ``split`` and the ``REPLAY_TEST_KEYS`` of a
            ``classification_report``), None otherwise or if that split is empty.
    """

    run_dir: Path
    model: Sequential
    history: list[dict]
    best_epoch: int | None
    stopped_early: bool
    test_report: dict | None
    replay_report: dict | None = None


@abort_on_error
def train(
    config: TrainConfig,
    overwrite: bool = False,
    progress: Progress | None = None,
    model: Sequential | None = None,
) -> RunResult:
    """Train a model as ``config`` says, in a new run folder ``config.out``.

    Args:
        config: the run's settings (validated again here).
        overwrite: reuse an existing run folder, deleting its run files.
        progress: where to report (default: bars on a terminal, else plain lines).
        model: your own Sequential to train instead of ``config.preset`` (its weights are
            trained in place). It must take (3, image_size, image_size) images and output one
            logit per class (classes: the data folder's, sorted). It is saved as ``init.npz``
            in the run folder, so the run can be resumed and its model files rebuilt.

    Raises:
        ConfigError, DataError, RunDirError: before any work, naming the key, folder or file.
        NonFiniteLossError: the loss diverged; the last good checkpoint is kept.
        TrainingInterrupted: Ctrl-C; a checkpoint was written.

    Under ``mpiexec -n N`` (N > 1) every rank calls this with the same arguments: they train
    together (docs/DISTRIBUTED.md); rank 0 alone writes the run folder and reports, and an
    error on any rank aborts them all.
    """
    started = time.perf_counter()
    config = validate(dataclasses.replace(config))
    if config.data_dir is None:
        raise ConfigError("data_dir is required (the image folder to train on)")
    for key in ("init_from", "replay", "augment_backgrounds"):
        if getattr(config, key) is not None:
            setattr(config, key, str(Path(getattr(config, key)).expanduser().resolve()))
    scan, start = _prepare(config, model)
    config.data_dir = str(scan.root)
    if config.outliers is not None:
        config.outliers = str(check_outlier_folder(config.outliers, scan.root).root)
    if config.out is None:
        config.out = f"runs/{start.name or 'custom'}-{time.strftime('%Y%m%d-%H%M%S')}"
    comm = world()
    config.out = comm.broadcast(config.out)  # rank 0's clock names the folder
    run = RunDir.create(config.out, overwrite=overwrite) if comm.is_root else RunDir(config.out)
    config.out = str(run.path)
    if config.cache_dir is not None:
        config.cache_dir = str(Path(config.cache_dir).expanduser().resolve())
    if comm.is_root:
        if not start.from_preset:
            meta = {"class_names": start.class_names, "preset": start.name, "note": start.note}
            if start.source:
                meta["source"] = start.source
            save_model(run / RunDir.INIT, start.model, meta)
        run.write_config(config.to_dict())
    return _run(config, run, scan, start, None, _rank_progress(progress), started)


@abort_on_error
def resume(
    run_dir: str | Path, threads: int | None = None, progress: Progress | None = None
) -> RunResult:
    """Continue the run in ``run_dir`` from its last checkpoint (or from the start, if none).

    The result is identical to that of a run that was never stopped. A finished run only redoes
    its final stage (best model, test report).

    Args:
        run_dir: a folder made by :func:`train`.
        threads: BLAS threads and decoding processes, if different from the run's setting.
        progress: where to report.

    Raises:
        RunDirError: not a run folder. ModelFileError: a damaged checkpoint. DataError: the data
        folder is gone or its classes changed. Others as :func:`train`.
    """
    started = time.perf_counter()
    run = RunDir.open(run_dir)
    config = make_config(run / RunDir.CONFIG, {} if threads is None else {"threads": threads})
    config.out = str(run.path)
    checkpoint = None
    if (run / RunDir.CHECKPOINT).exists():
        checkpoint = load_checkpoint(run / RunDir.CHECKPOINT)
    init_file = run / RunDir.INIT
    scan, start = _prepare(config, init_file=init_file if init_file.is_file() else None)
    if checkpoint is not None and checkpoint[1]["class_names"] != start.class_names:
        raise DataError(
            f"the classes under {scan.root} changed since the run started "
            f"(was {checkpoint[1]['class_names']}, now {start.class_names})"
        )
    return _run(config, run, scan, start, checkpoint, _rank_progress(progress), started)


def _rank_progress(progress: Progress | None) -> Progress:
    """``progress`` on rank 0 (or in one process); silenced on the other ranks."""
    progress = progress or Progress()
    if not world().is_root:
        progress.quiet, progress.bars = True, False
        progress.result = progress.info  # the final line too
    return progress


def _prepare(
    config: TrainConfig, model: Sequential | None = None, init_file: Path | None = None
) -> tuple[FolderScan, Start]:
    """Scan the data folder and build the initial model: the checks that precede any work."""
    scan = scan_image_folder(config.data_dir)
    start = initial_model(config, scan.class_names, model, init_file)
    if config.replay is not None:
        check_replay_classes(config.replay, scan, start.class_names)
    return scan, start


def make_optimizer(config: TrainConfig, model: Sequential) -> Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return SGD(params, config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    cls = AdamW if config.optimizer == "adamw" else Adam
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)


def make_schedule(config: TrainConfig, optimizer: Optimizer, steps_per_epoch: int) -> Schedule:
    """The schedule, with epoch settings converted to batches (stepped once per batch)."""
    if config.schedule == "cosine":
        return CosineWarmup(
            optimizer,
            total_steps=config.epochs * steps_per_epoch,
            warmup_steps=int(effective_warmup(config) * steps_per_epoch),
            min_lr=config.min_lr,
        )
    if config.schedule == "step":
        step_size = max(1, round(config.step_epochs * steps_per_epoch))
        return StepDecay(optimizer, step_size, gamma=config.step_gamma)
    return Constant(optimizer)


def _rank_threads(config: TrainConfig) -> int | None:
    """This process's threads: ``--threads``, else its share of the host under MPI (None: all
    cores)."""
    return config.threads or world().threads_per_rank()


def _threads_line(config: TrainConfig) -> str:
    libs = [
        f"{lib['internal_api']} {lib.get('version') or ''} ({lib['num_threads']} threads)"
        for lib in threadpool_info()
        if lib["user_api"] == "blas"
    ]
    comm = world()
    threads = _rank_threads(config)
    limit = "all cores" if threads is None else threads
    if comm.size > 1:
        limit = f"{limit} per rank x {comm.size} MPI ranks"
    return f"threads: {limit}; BLAS: {', '.join(libs) or 'unknown'}"


def _class_list(names: list[str], limit: int = 8) -> str:
    """The class names, the middle left out when there are more than ``limit``."""
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[: limit - 2])}, ... ({len(names) - limit + 1} more), {names[-1]}"


def _describe(
    config: TrainConfig, data: TrainingData, start: Start, steps: int, replay: Replay | None
) -> list:
    sizes = {name: len(idx) for name, idx in data.splits.items()}
    cache, model = data.cache, start.model
    recipe = f"{config.optimizer} lr {config.lr:g}"
    if config.weight_decay:
        recipe += f", weight decay {config.weight_decay:g}"
    recipe += f", {config.schedule} schedule"
    warmup = effective_warmup(config)
    epochs = "epoch" if warmup == 1 else "epochs"
    if config.schedule == "cosine" and warmup != config.warmup_epochs:
        recipe += (
            f" (warmup {warmup:g} {epochs}, shortened from {config.warmup_epochs:g}: the run has "
            f"{plural(config.epochs, 'epoch')})"
        )
    elif config.schedule == "cosine" and warmup:
        recipe += f" (warmup {warmup:g} {epochs})"
    recipe += f", label smoothing {config.label_smoothing:g}, "
    recipe += f"clip norm {config.clip_norm:g}" if config.clip_norm else "no clipping"
    recipe += (
        f", batch {config.batch_size}, {config.epochs} epochs x {steps} steps, patience "
        f"{config.patience}, augment x{config.augment_factor}"
        + (f" ({config.augment})" if config.augment_factor > 1 else "")
    )
    names = cache.class_names
    replayed = 0 if replay is None else len(replay.rows)
    lines = [
        f"purenn {purenn.__version__}: run folder {config.out}",
        f"data: {cache.root} ({len(cache)} images, {plural(len(names), 'class')}, "
        f"{len(cache.skipped)} skipped; train {sizes['train'] - replayed}, val {sizes['val']}, "
        f"test {sizes['test']})",
        f"classes: {_class_list(names)}",
    ]
    if replay is not None:
        split = replay.split
        lines.append(
            f"replay: {replayed} images of {replay.cache.root} ({replay.fraction:g} x the "
            f"{sizes['train'] - replayed} new training images, from its training split: val "
            f"{split['val_fraction']:g}, test {split['test_fraction']:g}, seed {split['seed']}); "
            f"its test split ({len(replay.test)} images) is scored at the end; the model's "
            f"{len(data.class_names)} classes are kept"
        )
    if data.ignored_folders:
        ignored = "; ".join(f"{name}/ ({why})" for name, why in data.ignored_folders)
        lines.append(f"not classes (ignored): {ignored}")
    if cache.skipped:
        lines.append(f"skipped files: {config.out}/{RunDir.SKIPPED}")
    name = start.name or "custom model"
    model_line = f"model: {name} at {config.image_size}x{config.image_size}, "
    model_line += f"{model.num_parameters:,} parameters"
    if start.from_preset and config.weight_norm:
        model_line += ", weight norm"
    if start.note:
        model_line += f"; {start.note}"
    return [*lines, model_line, f"recipe: {recipe}", _threads_line(config)]


def _epoch_line(row: dict, epochs: int, improved: bool) -> str:
    line = (
        f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} "
        f"acc {100 * row['train_accuracy']:.2f}%"
    )
    if row["val_loss"] is not None:
        line += f", val loss {row['val_loss']:.4f} acc {100 * row['val_accuracy']:.2f}%"
    line += f", lr {row['lr']:.3g}, {row['seconds']:.2f} s, {row['images_per_sec']:.0f} img/s"
    return line + (" *" if improved else "")


def _run(
    config: TrainConfig,
    run: RunDir,
    scan: FolderScan,
    start: Start,
    checkpoint: tuple | None,
    progress: Progress,
    started: float,
) -> RunResult:
    # Each step frees and reallocates the same large activations: keep them in malloc's heap.
    retain_freed_memory()
    comm = world()
    threads = _rank_threads(config)

    def load() -> tuple[TrainingData, Replay | None]:
        data = load_training_data(
            scan,
            config.image_size,
            config.val_fraction,
            config.test_fraction,
            config.split_seed,
            config.cache_dir,
            threads,
            progress.bars,
            run / RunDir.SKIPPED,
        )
        if config.replay is None:
            return data, None
        replay = load_replay(
            config, start.class_names, start.source, len(data.splits["train"]), threads,
            progress.bars,
        )  # fmt: skip
        return mix(data, replay, start.class_names, start.source), replay

    with limit_threads(threads):
        # Rank 0 builds the image caches; the others wait, then open (memory-map) them.
        loaded = load() if comm.is_root else None
        comm.barrier()
        data, replay = loaded or load()
        if comm.is_root:
            run.write_skipped(data.cache.skipped_path)
        return _fit(config, run, data, start, checkpoint, progress, started, replay)


def _fit(
    config: TrainConfig,
    run: RunDir,
    data: TrainingData,
    start: Start,
    checkpoint: tuple | None,
    progress: Progress,
    started: float,
    replay: Replay | None = None,
) -> RunResult:
    model = start.model
    comm = world()
    writes = comm.is_root  # only rank 0 writes the run folder
    optimizer = make_optimizer(config, model)
    train_loader = data.train_loader(config, comm.shard)
    schedule = make_schedule(config, optimizer, len(train_loader))
    outliers = _outlier_exposure(config, data, progress) if config.outliers else None
    metadata = _model_metadata(config, data, start.name, outliers, replay)
    early_stopping = EarlyStopping(config.patience)

    def save() -> None:
        if not writes:
            return
        scalars, arrays = trainer.state_dict()
        save_checkpoint(
            run / RunDir.CHECKPOINT, model, {**metadata, "data_key": data.key}, scalars, arrays
        )

    last_plot = -math.inf

    def end_epoch(row: dict, improved: bool) -> None:
        nonlocal last_plot
        if not writes:
            return
        if improved:
            save_model(run / RunDir.BEST, model, {**metadata, "epoch": row["epoch"]})
        plot = trainer.state.finished or time.monotonic() - last_plot >= PLOT_INTERVAL
        _write_history(run, trainer, plot)
        last_plot = time.monotonic() if plot else last_plot
        progress.info(_epoch_line(row, config.epochs, improved))

    trainer = Trainer(
        model,
        optimizer,
        schedule,
        SoftmaxCrossEntropy(config.label_smoothing),
        train_loader,
        data.loader("val", config.batch_size, shard=comm.shard),
        config.epochs,
        config.clip_norm,
        early_stopping,
        config.checkpoint_steps,
        save,
        end_epoch,
        progress,
        comm,
        outliers,
    )
    for line in _describe(config, data, start, len(train_loader), replay):
        progress.info(line)
    if outliers is not None:
        progress.info(
            f"outlier exposure: {outliers.images} photos of {outliers.root}, "
            f"{outliers.loader.batch_size} per step, weight {config.outlier_weight:g}"
        )
    if checkpoint is not None:
        _restore(checkpoint, trainer, data)
        if writes:
            _write_history(run, trainer, plot=True)
        if writes and early_stopping.best_weights is not None:
            best = {**metadata, "epoch": early_stopping.best_epoch}
            save_model(run / RunDir.BEST, model, best, weights=early_stopping.best_weights)
        s = trainer.state
        progress.info(f"resuming at epoch {s.epoch + 1}, batch {s.batch} (step {s.step})")

    try:
        trainer.fit()
    except NonFiniteLossError as err:
        kept = (
            f"the last good checkpoint {run / RunDir.CHECKPOINT} is kept"
            if (run / RunDir.CHECKPOINT).exists()
            else "no checkpoint had been written yet"
        )
        raise NonFiniteLossError(f"training stopped: {err}; {kept}") from None
    except TrainingInterrupted as err:
        raise TrainingInterrupted(
            f"interrupted at {err}; checkpoint saved to {run / RunDir.CHECKPOINT}; continue "
            f"with: purenn train --resume {run.path}"
        ) from None

    return _finish(config, run, data, trainer, metadata, progress, started, replay)


def _outlier_exposure(config: TrainConfig, data: TrainingData, progress: Progress):
    """The run's outlier batches (``--outliers``), cached and normalised as its training images."""
    if world().size > 1:
        raise ConfigError("outliers: outlier exposure runs in one process, not under mpiexec")
    return outlier_exposure(
        check_outlier_folder(config.outliers, data.cache.root),
        config.image_size,
        data.mean,
        data.std,
        config.outlier_batch_size,
        config.outlier_weight,
        config.seed,
        config.augment_factor,
        config.augment,
        config.cache_dir,
        _rank_threads(config),
        progress.bars,
    )


def _model_metadata(
    config: TrainConfig,
    data: TrainingData,
    name: str | None,
    outliers: OutlierExposure | None,
    replay: Replay | None,
) -> dict:
    """What a model file of this run holds besides its weights (see docs/CLI.md)."""
    cache = data.cache
    exposure = None
    if outliers is not None:
        exposure = {"folder": str(outliers.root), "images": outliers.images}
        exposure |= {"weight": config.outlier_weight, "batch_size": outliers.loader.batch_size}
    replayed = {} if replay is None else {"replay": replay.describe()}
    return {
        "class_names": data.class_names,
        "image_size": config.image_size,
        "in_channels": 3,
        "mean": data.mean.tolist(),
        "std": data.std.tolist(),
        "preset": name,
        "data_dir": str(cache.root),
        "split": {
            "val_fraction": config.val_fraction,
            "test_fraction": config.test_fraction,
            "seed": config.split_seed,
            "presplit": cache.subset is not None,
        },
        "outlier_exposure": exposure,
        **replayed,
        "purenn_version": purenn.__version__,
    }


def _finish(
    config: TrainConfig,
    run: RunDir,
    data: TrainingData,
    trainer: Trainer,
    metadata: dict,
    progress: Progress,
    started: float,
    replay: Replay | None = None,
) -> RunResult:
    """After the last epoch: restore the best weights, fit the temperature on the validation
    split and the OOD test (statistics of the training split, threshold on the validation split;
    a model that does not end in a Dense layer gets none), save best.npz, evaluate the test
    split (and, with replay, the replayed folder's original test split).

    ``started``: the ``perf_counter`` when train/resume was called (for the run's wall time).
    """
    model, early_stopping, s = trainer.model, trainer.early_stopping, trainer.state
    early_stopping.restore(model)
    model.eval()
    writes = world().is_root
    test_loader = data.loader("test", config.batch_size, shard=world().shard)
    held_out = {"val": trainer.val_loader, "test": test_loader}
    predicted = {
        name: trainer.predict(loader) for name, loader in held_out.items() if loader is not None
    }
    temperature = fit_temperature(*predicted["val"]) if "val" in predicted else 1.0
    metadata = {**metadata, "epoch": early_stopping.best_epoch, "temperature": temperature}
    ood_test = ood_arrays = None
    score = config.ood_score or default_score(metadata)
    fits = score not in FEATURE_SCORES or (len(data.splits["train"]) and ends_in_dense(model))
    if writes and "val" in predicted and fits:
        progress.info(f"fitting the OOD test ({score})")
        ood_test = fit_ood(model, data, data.splits, data.mean, data.std, score, config.batch_size)
        metadata[OOD_KEY], ood_arrays = ood_test.to_file()
    if writes:
        save_model(run / RunDir.BEST, model, metadata, arrays=ood_arrays)
    stopped_early = s.epoch < config.epochs
    progress.info(
        ("early stopping: " if stopped_early else "done: ")
        + f"{s.epoch} epochs; best epoch {early_stopping.best_epoch} restored, saved to "
        f"{run / RunDir.BEST}"
    )
    calibration = {
        "temperature": temperature,
        "fitted_on": "val" if "val" in predicted else None,
        "bins": ECE_BINS,
        **{name: calibration_summary(*pair, temperature) for name, pair in predicted.items()},
    }
    progress.info(_calibration_line(calibration))
    if writes and predicted:
        plotted = "test" if "test" in predicted else "val"
        logits, labels = predicted[plotted]
        plot_reliability(
            run / RunDir.RELIABILITY,
            reliability(softmax(logits.astype(np.float64)), labels),
            reliability(softmax(scaled_logits(logits, temperature)), labels),
            temperature,
            plotted,
        )
    report = None
    if "test" in predicted:
        logits, labels = predicted["test"]
        report = classification_report(scaled_logits(logits, temperature), labels, data.class_names)
        if ood_test is not None:
            report["ood"] = _ood_report(model, data, ood_test, config.batch_size)
            progress.info(_ood_line(report["ood"]))
    summary = _run_summary(s, started)
    replayed = None
    if replay is not None:
        replayed = _replay_report(config, trainer, data, replay, temperature)
    if report is not None:
        if writes:
            write_report(
                run.path,
                {
                    "model": str(run / RunDir.BEST),
                    "data_dir": str(data.cache.root),
                    "split": "test",
                    **report,
                    "calibration": calibration,
                    **({} if replayed is None else {"replay": replayed}),
                    "run": summary,
                },
            )
        progress.info(format_report(report))
    if replayed is not None:
        progress.info(_replay_line(replayed))
    progress.info(_summary_line(summary))
    return RunResult(
        run.path, model, s.history, early_stopping.best_epoch, stopped_early, report,
        None if replayed is None else replayed["test"],
    )  # fmt: skip


# The summary of the replayed folder's original test split that report.json keeps.
REPLAY_TEST_KEYS = ("samples", "loss", "accuracy", "top_k", "top_k_accuracy", "macro_f1")


def _replay_report(
    config: TrainConfig, trainer: Trainer, data: TrainingData, replay: Replay, temperature: float
) -> dict:
    """What the replay was, and the model's metrics on the original data's test split (``test``:
    None when that split is empty), at the model's calibration temperature."""
    loader = replay.test_loader(config.batch_size, data.mean, data.std, world().shard)
    test = None
    if loader is not None:
        logits, labels = trainer.predict(loader)
        full = classification_report(scaled_logits(logits, temperature), labels, data.class_names)
        test = {"data_dir": str(replay.cache.root), "split": "test"}
        test.update({key: full[key] for key in REPLAY_TEST_KEYS})
    return {**replay.describe(), "test": test}


def _replay_line(replayed: dict) -> str:
    """``replayed N images of DIR; its original test split: A% (M images)``."""
    line = f"replayed {replayed['images']} images of {replayed['data_dir']}"
    test = replayed["test"]
    if test is None:
        return line + " (its original test split is empty)"
    return (
        line + f"; accuracy on its original test split: {100 * test['accuracy']:.2f}% "
        f"({test['samples']} images)"
    )


def _ood_report(model, data: TrainingData, test: OODTest, batch_size: int) -> dict:
    """The OOD test's header entry and how it filters the test split (``recognition_summary``)."""
    features, logits, labels = split_outputs(
        model, data, data.splits["test"], data.mean, data.std, batch_size,
        test.needs_features,
    )  # fmt: skip
    scores = test.scores(features, logits)
    correct = logits.argmax(axis=1) == labels
    return {**test.to_file()[0], "test": recognition_summary(scores, test.threshold, correct)}


def _ood_line(ood: dict) -> str:
    """``OOD test knn: threshold t; test: r% recognized, accuracy a% on those (b% on all)``."""
    test = ood["test"]
    kept = test["accuracy_recognized"]
    return (
        f"OOD test {ood['score']}: threshold {ood['threshold']:.4g} (keeps "
        f"{100 * ood['keep']:.0f}% of val); test: {100 * test['recognized']:.1f}% recognized, "
        f"accuracy {'n/a' if kept is None else f'{100 * kept:.2f}%'} on those "
        f"({100 * test['accuracy']:.2f}% on all)"
    )


def _calibration_line(calibration: dict) -> str:
    """``temperature T (fitted on the val split): ECE val a% -> b%, test c% -> d%``."""
    if calibration["fitted_on"] is None:
        return "temperature 1 (no validation split to fit it on)"
    changes = ", ".join(
        f"{name} {100 * calibration[name]['ece_before']:.2f}% -> "
        f"{100 * calibration[name]['ece_after']:.2f}%"
        for name in ("val", "test")
        if name in calibration
    )
    return f"temperature {calibration['temperature']:.4g} (fitted on the val split): ECE {changes}"


def _run_summary(s: LoopState, started: float) -> dict:
    """Time, throughput and memory of the run, for report.json.

    ``wall_seconds``: this ``train``/``resume`` call so far (data loading and caching included);
    ``training_seconds``: the training loop over all sessions (validation included);
    ``images_per_sec``: training images of all epochs / ``training_seconds``;
    ``peak_memory_mb``: the process's peak resident memory (None where unknown).
    """
    training = s.elapsed_seconds
    return {
        "wall_seconds": time.perf_counter() - started,
        "training_seconds": training,
        "training_images": s.images_trained,
        "images_per_sec": s.images_trained / training if training > 0 else None,
        "peak_memory_mb": peak_memory_mb(),
    }


def _summary_line(summary: dict) -> str:
    """``run: W s wall, training T s at R images/s, peak memory M MB`` (unknowns left out)."""
    line = (
        f"run: {summary['wall_seconds']:.1f} s wall, training {summary['training_seconds']:.1f} s"
    )
    if summary["images_per_sec"] is not None:
        line += f" at {summary['images_per_sec']:.1f} images/s"
    if summary["peak_memory_mb"] is not None:
        line += f", peak memory {summary['peak_memory_mb']:.0f} MB"
    return line


def _restore(checkpoint: tuple, trainer: Trainer, data: TrainingData) -> None:
    """Load a checkpoint's weights and loop state, after checking it fits the data."""
    saved_model, saved_meta, scalars, arrays = checkpoint
    if saved_meta.get("data_key") != data.key:
        logger.warning(
            "the files under %s changed since the run started; the resumed run will not match "
            "an uninterrupted one",
            data.cache.root if data.key == data.cache.key else f"{data.cache.root} or the replay",
        )
    trainer.model.load_state_dict(saved_model.state_dict())
    trainer.load_state_dict(scalars, arrays)


def _write_history(run: RunDir, trainer: Trainer, plot: bool) -> None:
    """``metrics.csv`` and, if ``plot``, ``curves.png`` (0.3 s or more to draw)."""
    history = trainer.state.history
    run.write_metrics(history)
    if plot and history:
        plot_curves(run / RunDir.CURVES, history, trainer.early_stopping.best_epoch)
