"""benchmarks/time_to_accuracy.py on run folders fabricated here (metrics.csv files only)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "time_to_accuracy.py"
HEADER = "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,seconds,images_per_sec,elapsed_s"


@pytest.fixture(scope="module")
def tta():
    spec = importlib.util.spec_from_file_location("time_to_accuracy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_metrics(path: Path, rows: list[tuple[float, float]]) -> None:
    """A metrics.csv whose epochs end at the given (elapsed_s, val_accuracy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [HEADER] + [
        f"{i + 1},1.0,0.5,1.0,{acc},0.001,{t / (i + 1)},100,{t}" for i, (t, acc) in enumerate(rows)
    ]
    path.write_text("\n".join(lines) + "\n")


def test_times_to_90_and_95_percent_and_the_plot(tta, tmp_path, capsys):
    run = tmp_path / "run"
    write_metrics(run / "metrics.csv", [(60, 0.8), (120, 0.9), (180, 0.93), (240, 0.951)])
    # PyTorch crosses 90% later, dips below it again and never reaches 95%.
    write_metrics(
        run / "torch-reference" / "metrics.csv", [(90, 0.85), (180, 0.899), (270, 0.91), (360, 0.9)]
    )
    times = tta.main([str(run)])
    assert times == {"purenn": {0.9: 120.0, 0.95: 240.0}, "PyTorch": {0.9: 270.0, 0.95: None}}
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "| first reaches | purenn | PyTorch |",
        "|---|---|---|",
        "| 90% val accuracy | 120 s (2.0 min) | 270 s (4.5 min) |",
        "| 95% val accuracy | 240 s (4.0 min) | not reached |",
    ]
    with Image.open(run / "time_to_accuracy.png") as image:
        assert image.format == "PNG" and image.width >= 600
        assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 20


def test_other_targets_and_output_path(tta, tmp_path):
    run = tmp_path / "run"
    write_metrics(run / "metrics.csv", [(10, 0.5), (20, 0.7)])
    write_metrics(run / "torch-reference" / "metrics.csv", [(15, 0.6)])
    times = tta.main([str(run), "--targets", "0.6", "--out", str(tmp_path / "t.png")])
    assert times == {"purenn": {0.6: 20.0}, "PyTorch": {0.6: 15.0}}
    assert (tmp_path / "t.png").is_file() and not (run / "time_to_accuracy.png").exists()


def test_a_missing_reference_or_a_metrics_csv_without_elapsed_s_is_a_clear_error(tta, tmp_path):
    run = tmp_path / "run"
    write_metrics(run / "metrics.csv", [(10, 0.5)])
    with pytest.raises(SystemExit, match="torch-reference/metrics.csv is missing"):
        tta.main([str(run)])
    old = run / "torch-reference" / "metrics.csv"
    old.parent.mkdir()
    old.write_text("epoch,val_accuracy,seconds\n1,0.5,3.0\n")
    with pytest.raises(SystemExit, match="has no elapsed_s for every epoch"):
        tta.main([str(run)])
