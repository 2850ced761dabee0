"""The embedded demo: the digits written as an image folder, trained through the same pipeline."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from purenn.training.demo import write_digits


def test_digits_are_written_as_an_image_folder(tmp_path):
    root = write_digits(tmp_path / "digits")
    folders = sorted(p.name for p in root.iterdir())
    assert folders == [str(d) for d in range(10)]
    files = sorted(root.glob("*/*.png"))
    assert len(files) == 1797
    with Image.open(root / "0" / "0000.png") as image:
        assert image.mode == "L" and image.size == (8, 8)
        pixels = np.asarray(image)
    first = load_digits().images[0]  # values 0..16
    np.testing.assert_array_equal(pixels, np.round(first * 255 / 16))


def test_demo_command_trains_and_reports_accuracy(cli, tmp_path):
    """Three epochs (the full demo runs 15): the pipeline works end to end and learns."""
    result = cli("demo", "--epochs", 3, "--threads", 1, "--out", tmp_path / "run")
    assert result.code == 0, result.err
    last = result.out.splitlines()[-1]
    match = re.fullmatch(r"demo test accuracy: ([\d.]+)% \(359 test images, \d+ s\)", last)
    assert match, last
    assert float(match.group(1)) > 85
    assert (tmp_path / "run" / "best.npz").is_file()
    assert "augment x1" in result.out  # flips and rotations would change the digits' meaning
