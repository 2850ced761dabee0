"""The embedded demo: the shipped digits written as an image folder, trained through the same
pipeline, with no scikit-learn."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from purenn.training.demo import DIGITS_FILE, load_digits, write_digits


def test_shipped_digits_are_scikit_learns():
    datasets = pytest.importorskip("sklearn.datasets")
    reference = datasets.load_digits()
    images, labels = load_digits()
    assert images.dtype == labels.dtype == np.uint8
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(labels, reference.target)
    assert DIGITS_FILE.stat().st_size < 100_000
    assert "CC BY 4.0" in (DIGITS_FILE.parent / "README.md").read_text()


def test_shipped_digits_are_packaged_and_not_git_ignored():
    """The wheel takes package-data from pyproject; a *.npz ignore rule once hid the file."""
    tomllib = pytest.importorskip("tomllib")
    repo = DIGITS_FILE.parents[2]
    pyproject = tomllib.loads((repo / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["purenn"]
    package = DIGITS_FILE.parents[1]
    for name in ("digits.npz", "README.md"):
        assert any(DIGITS_FILE.parent / name in package.glob(p) for p in patterns), name
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "-C", repo, "check-ignore", "--no-index", "-q", DIGITS_FILE])
    assert ignored.returncode == 1  # 1: not ignored


def test_digits_are_written_as_an_image_folder(tmp_path):
    root = write_digits(tmp_path / "digits")
    folders = sorted(p.name for p in root.iterdir())
    assert folders == [str(d) for d in range(10)]
    files = sorted(root.glob("*/*.png"))
    assert len(files) == 1797
    with Image.open(root / "0" / "0000.png") as image:
        assert image.mode == "L" and image.size == (8, 8)
        pixels = np.asarray(image)
    first = load_digits()[0][0].astype(np.float64)  # values 0..16
    np.testing.assert_array_equal(pixels, np.round(first * 255 / 16))


def test_demo_command_trains_and_reports_accuracy(cli, tmp_path, monkeypatch):
    """Three epochs (the full demo runs 15), with scikit-learn made unimportable."""
    monkeypatch.setitem(sys.modules, "sklearn", None)
    result = cli("demo", "--epochs", 3, "--threads", 1, "--out", tmp_path / "run")
    assert result.code == 0, result.err
    last = result.out.splitlines()[-1]
    match = re.fullmatch(r"demo test accuracy: ([\d.]+)% \(359 test images, \d+ s\)", last)
    assert match, last
    assert float(match.group(1)) > 85
    assert (tmp_path / "run" / "best.npz").is_file()
    assert "augment x1" in result.out  # flips and rotations would change the digits' meaning


def test_demo_keeps_the_run_it_says_it_saved(cli, tmp_path, monkeypatch):
    """Without --out the run folder is kept under runs/ and named; --epochs 1 warms up half."""
    monkeypatch.chdir(tmp_path)
    result = cli("demo", "--epochs", 1, "--threads", 1)
    assert result.code == 0, result.err
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("demo-")
    assert f"saved to {run / 'best.npz'}" in result.out and (run / "best.npz").is_file()
    assert f"run folder: {run}" in result.out
    assert "warmup 0.5 epochs, shortened from 1: the run has 1 epoch)" in result.out
