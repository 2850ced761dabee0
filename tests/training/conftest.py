"""Fixtures for the training tests: a tiny learnable image folder and ways to run ``purenn``."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from purenn.cli.main import main

# Three classes of 12 noisy solid-colour 16x16 PNGs; a tiny CNN separates them in a few epochs.
COLOURS = {"blue": (30, 60, 200), "green": (40, 190, 60), "red": (210, 40, 40)}
PER_CLASS = 12

# A training run that takes about a second: demo-cnn at 8x8, 3 steps per epoch, one thread.
TINY_ARGS = (
    "--preset", "demo-cnn", "--image-size", "8", "--batch-size", "8", "--warmup-epochs", "0",
    "--augment-factor", "1", "--val-fraction", "0.25", "--test-fraction", "0.25",
    "--threads", "1", "--lr", "0.01",
)  # fmt: skip


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def write_colour_folder(
    root: Path, colours: dict = COLOURS, per_class: int = PER_CLASS, noise: int = 40
) -> Path:
    """``root/<class>/<nn>.png``: 16x16 images of each class's colour plus uniform noise."""
    rng = np.random.default_rng(0)
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            offsets = rng.integers(-noise, noise + 1, size=(16, 16, 3))
            pixels = np.clip(np.array(colour) + offsets, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def colour_folder_writer():
    """:func:`write_colour_folder`, for tests that need other colours or noise."""
    return write_colour_folder


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory) -> Path:
    """``<class>/<nn>.png``: classes blue, green, red of 12 images each (do not modify)."""
    return write_colour_folder(tmp_path_factory.mktemp("colours") / "data")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A decoded-image cache shared by the tests of one worker."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def no_home_cache(monkeypatch, cache_dir):
    """Commands run without --cache-dir use the test session's cache, never ~/.cache/purenn."""
    monkeypatch.setenv("PURENN_CACHE_DIR", str(cache_dir))


@pytest.fixture(scope="session")
def tiny_args(cache_dir) -> list[str]:
    """Flags for a one-second training run on ``colour_folder``."""
    return [*TINY_ARGS, "--cache-dir", str(cache_dir)]


@pytest.fixture(scope="session")
def checkpointing_run_args(colour_folder, tiny_args):
    """``checkpointing_run_args(epochs)``: a tiny ``train`` command line with augmentation x2, a
    half-epoch warmup, a checkpoint every 2 steps and no early stopping (for resume tests)."""

    def run_args(epochs: int) -> list:
        args = list(tiny_args)
        args[args.index("--augment-factor") + 1] = "2"
        args[args.index("--warmup-epochs") + 1] = "0.5"
        return [
            "train", colour_folder, *args, "--epochs", str(epochs), "--checkpoint-steps", "2",
            "--patience", "0",
        ]  # fmt: skip

    return run_args


@pytest.fixture(scope="session")
def train_quietly(tiny_args):
    """``train_quietly(folder, out, epochs)``: a tiny ``purenn train`` run without early stopping,
    in this process, asserted to succeed; returns ``out``."""

    def run(folder: Path, out: Path, epochs: int) -> Path:
        args = ["train", folder, "--out", out, "--epochs", epochs, "--patience", 0, "-q"]
        assert main([str(a) for a in [*args, *tiny_args]]) == 0
        return out

    return run


@pytest.fixture
def cli(capsys):
    """``cli(*args) -> Outcome(code, out, err)``: run ``purenn`` in this process."""

    def run(*args) -> Outcome:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


def purenn_process(*args, env: dict | None = None, **popen) -> subprocess.Popen:
    """Start ``python -m purenn ARGS`` with its output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "purenn", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        **popen,
    )


@pytest.fixture(scope="session")
def purenn_subprocess():
    """``purenn_subprocess(*args, env=None) -> Popen``: ``python -m purenn`` in a new process."""
    return purenn_process


def read_metrics(path: Path) -> list[dict]:
    """Rows of a metrics.csv as dicts of floats (None for empty cells)."""
    with open(path, newline="") as f:
        return [{k: float(v) if v else None for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.fixture(scope="session")
def metrics_reader():
    return read_metrics
