"""The run folder: what a training run writes, and the checks made before any work."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

from purenn.io import BEST_FILE, atomic_write, remove_stale_temporaries
from purenn.training.evaluation import CONFUSION_FILE, REPORT_FILE

METRICS_FIELDS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "seconds",
    "images_per_sec",
    "elapsed_s",
)


class RunDirError(ValueError):
    """The run folder cannot be used (exists, not writable, not a run folder)."""


class RunDir:
    """Paths of a run folder's files, and their writers (all atomic).

        ``best.npz`` (best model), ``last.ckpt.npz`` (checkpoint), ``metrics.csv``, ``config.json``,
        ``curves.png``, ``confusion.png`` and ``report.json`` (test split), ``reliability.png``
    (calibration before and after temperature scaling), ``skipped.txt`` (image
        files the data pipeline could not use), ``init.npz`` (the starting model, when it is not a
        preset: fine-tuning or the user's own model).
    """

    BEST = BEST_FILE
    CHECKPOINT = "last.ckpt.npz"
    METRICS = "metrics.csv"
    CONFIG = "config.json"
    CURVES = "curves.png"
    SKIPPED = "skipped.txt"
    INIT = "init.npz"
    RELIABILITY = "reliability.png"
    FILES = (
        BEST, CHECKPOINT, METRICS, CONFIG, CURVES, CONFUSION_FILE, REPORT_FILE, SKIPPED, INIT,
        RELIABILITY,
    )  # fmt: skip

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().absolute()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> RunDir:
        """Make (or reuse an empty) run folder and check that it is writable.

        A folder holding only temporary files counts as empty: those are what a run killed
        while writing its first file (``config.json``) leaves, and such a run starts again.
        With ``overwrite``, the run files of an existing folder (``FILES``) are deleted; nothing
        else in it is touched.

        Raises:
            RunDirError: the folder exists and is not empty (without ``overwrite``), or it
                cannot be created or written.
        """
        run = cls(path)
        if run.path.is_dir():
            remove_stale_temporaries(run.path)
            if any(run.path.iterdir()) and not overwrite:
                raise RunDirError(
                    f"run folder already exists: {run.path} (use --resume {run.path} to "
                    "continue it, --out with a new folder for a new run, or --overwrite to "
                    "delete its run files and start again)"
                )
            for name in cls.FILES:
                (run / name).unlink(missing_ok=True)
        try:
            run.path.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=run.path).close()
        except OSError as err:
            raise RunDirError(
                f"cannot write the run folder {run.path}: {err.strerror or err}"
            ) from None
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run folder (to resume): it must hold ``config.json`` and be writable."""
        run = cls(path)
        if run.path.is_file():
            raise RunDirError(
                f"--resume takes a run folder, not a file: {run.path} (use --resume "
                f"{run.path.parent})"
            )
        if not run.path.exists():
            raise RunDirError(f"run folder does not exist: {run.path}")
        if not (run / cls.CONFIG).is_file():
            raise RunDirError(
                f"not a run folder (no {cls.CONFIG}): {run.path} (a run stopped before it wrote "
                f"{cls.CONFIG} has nothing to resume: start it again with --out {run.path})"
            )
        try:
            tempfile.TemporaryFile(dir=run.path).close()
        except OSError as err:
            raise RunDirError(
                f"cannot write the run folder {run.path}: {err.strerror or err}"
            ) from None
        remove_stale_temporaries(run.path)
        return run

    def write_config(self, config: dict) -> None:
        atomic_write(self / self.CONFIG, json.dumps(config, indent=2) + "\n")

    def write_metrics(self, history: list[dict]) -> None:
        """``metrics.csv``: a header and one row per epoch (empty cells for missing values)."""
        text = io.StringIO()
        writer = csv.DictWriter(text, METRICS_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in history:
            writer.writerow(
                {k: "" if row.get(k) is None else _cell(row[k]) for k in METRICS_FIELDS}
            )
        atomic_write(self / self.METRICS, text.getvalue())

    def write_skipped(self, listing: Path) -> None:
        """Copy the data pipeline's list of skipped files (``path<TAB>reason`` lines)."""
        atomic_write(self / self.SKIPPED, Path(listing).read_bytes())


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
