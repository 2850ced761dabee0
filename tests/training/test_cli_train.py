"""End to end through the CLI on a small generated image folder: train, evaluate, predict,
summary, and the files of a run folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from purenn.cli.main import main
from purenn.data import build_cache, normalize_batch, scan_image_folder
from purenn.io import load_checkpoint, load_model
from purenn.kernels.ops import softmax
from purenn.kernels.runtime import peak_memory_mb
from purenn.training import predict

EPOCHS = 4
RUN_FILES = {
    "best.npz",
    "last.ckpt.npz",
    "metrics.csv",
    "config.json",
    "curves.png",
    "confusion.png",
    "report.json",
    "reliability.png",
    "skipped.txt",
}
CLASSES = ["blue", "green", "red"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, colour_folder, tiny_args):
    """The run folder of one CLI training run, shared by the tests of this module."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    args = ["train", colour_folder, "--out", run_dir, "--epochs", EPOCHS, "--patience", 0]
    assert main([str(a) for a in [*args, *tiny_args]]) == 0
    return run_dir


def test_run_folder_holds_every_file_and_no_temporaries(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert names == RUN_FILES, names ^ RUN_FILES
    assert (trained_run / "skipped.txt").read_text() == ""


def test_metrics_csv_has_one_finite_row_per_epoch(trained_run, metrics_reader):
    header = (trained_run / "metrics.csv").read_text().splitlines()[0]
    assert header == (
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,seconds,images_per_sec,elapsed_s"
    )
    rows = metrics_reader(trained_run / "metrics.csv")
    assert [row["epoch"] for row in rows] == list(range(1, EPOCHS + 1))
    for row in rows:
        assert all(math.isfinite(v) for v in row.values())
        assert 0 <= row["train_accuracy"] <= 1 and 0 <= row["val_accuracy"] <= 1
        assert row["seconds"] > 0 and row["images_per_sec"] > 0
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    # Wall time since the run's first step: it holds every epoch's steps and validation so far.
    elapsed = [row["elapsed_s"] for row in rows]
    assert elapsed == sorted(elapsed) and len(set(elapsed)) == EPOCHS
    for i, row in enumerate(rows):
        assert row["elapsed_s"] >= sum(r["seconds"] for r in rows[: i + 1]) * (1 - 1e-5)
    # Cosine annealing stepped per batch: the rate only falls after a warmup of 0 epochs.
    lrs = [row["lr"] for row in rows]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] <= 0.01


def test_config_json_is_the_resolved_config_and_a_valid_config_file(trained_run, colour_folder):
    from purenn.training import make_config

    saved = json.loads((trained_run / "config.json").read_text())
    assert saved["data_dir"] == str(colour_folder)
    assert saved["out"] == str(trained_run)
    assert saved["epochs"] == EPOCHS and saved["image_size"] == 8
    assert saved["optimizer"] == "adam" and saved["label_smoothing"] == 0.1  # defaults
    # Reused as a config file, it describes a new run: the old run's folder is left out.
    assert make_config(trained_run / "config.json").to_dict() == {**saved, "out": None}


@pytest.mark.parametrize("name", ["curves.png", "confusion.png", "reliability.png"])
def test_plots_are_real_pngs_with_content(trained_run, name):
    with Image.open(trained_run / name) as image:
        assert image.format == "PNG"
        assert image.width >= 300 and image.height >= 300
        colours = np.asarray(image.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(colours, axis=0)) > 20  # lines, text and cells, not a blank canvas


def test_report_json_holds_the_test_metrics(trained_run):
    report = json.loads((trained_run / "report.json").read_text())
    assert report["split"] == "test" and report["samples"] == 9  # 3 per class
    assert [c["name"] for c in report["classes"]] == CLASSES
    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 9 and (cm.sum(axis=1) == 3).all()
    assert report["accuracy"] == pytest.approx(np.trace(cm) / 9)
    assert report["accuracy"] >= 2 / 3  # the colours are easy
    assert report["top_k"] == 3 and report["top_k_accuracy"] == 1.0
    mistakes = cm - np.diag(np.diag(cm))
    assert sum(p["count"] for p in report["confused_pairs"]) == mistakes.sum()


def test_report_json_holds_the_calibration_block(trained_run):
    # The colours are easy: every validation image right, so the NLL has no minimum and T = 1
    # (test_cli_calibrate.py trains on close colours, where T is fitted).
    calibration = json.loads((trained_run / "report.json").read_text())["calibration"]
    _, meta = load_model(trained_run / "best.npz")
    assert calibration["temperature"] == meta["temperature"] == 1.0
    assert calibration["fitted_on"] == "val" and calibration["bins"] == 15
    assert calibration["val"]["samples"] == calibration["test"]["samples"] == 9


def test_report_json_holds_the_runs_time_throughput_and_peak_memory(trained_run, metrics_reader):
    run = json.loads((trained_run / "report.json").read_text())["run"]
    rows = metrics_reader(trained_run / "metrics.csv")
    assert run["training_images"] == EPOCHS * 18  # 36 images, 9 for validation, 9 for test
    assert run["training_seconds"] == pytest.approx(rows[-1]["elapsed_s"], rel=1e-5)
    assert run["wall_seconds"] > run["training_seconds"] > 0
    assert run["images_per_sec"] == pytest.approx(run["training_images"] / run["training_seconds"])
    # The run was in this process: its peak is at most the process's peak now, and real.
    assert 10 < run["peak_memory_mb"] <= peak_memory_mb()


def test_best_model_file_is_self_contained(trained_run, colour_folder):
    model, meta = load_model(trained_run / "best.npz")
    assert meta["format"] == "purenn-model" and meta["format_version"] == 1
    assert meta["class_names"] == CLASSES and meta["image_size"] == 8
    assert len(meta["mean"]) == len(meta["std"]) == 3
    assert meta["preset"] == "demo-cnn" and meta["split"]["test_fraction"] == 0.25
    assert model.input_shape == (3, 8, 8)
    _, _, state, arrays = load_checkpoint(trained_run / "last.ckpt.npz")
    assert state["loop"]["finished"] and state["loop"]["epoch"] == EPOCHS
    assert meta["epoch"] == state["early_stopping"]["best_epoch"]
    assert any(key.startswith("optim/") for key in arrays)


def test_train_prints_the_header_epochs_and_test_accuracy(cli, colour_folder, tiny_args, tmp_path):
    result = cli("train", colour_folder, "--out", tmp_path / "run", "--epochs", 2, *tiny_args)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith("purenn ") and str(tmp_path / "run") in lines[0]
    assert any(line.startswith("threads: 1; BLAS: ") for line in lines)
    assert sum(line.startswith("epoch ") for line in lines) == 2
    assert lines[-2].startswith("run: ") and " images/s, peak memory " in lines[-2]
    assert lines[-1].startswith("test accuracy: ") and "best.npz" in lines[-1]


def test_quiet_prints_only_the_result(cli, colour_folder, tiny_args, tmp_path):
    result = cli("train", colour_folder, "--out", tmp_path / "run", "--epochs", 1, "-q", *tiny_args)
    assert result.code == 0, result.err
    assert result.out.count("\n") == 1 and result.out.startswith("test accuracy: ")
    assert result.err == ""


def test_config_file_values_are_used_and_flags_override_them(
    cli, colour_folder, tiny_args, tmp_path
):
    config = tmp_path / "train.toml"
    config.write_text(
        f'data_dir = "{colour_folder}"\nepochs = 3\nseed = 7\nlabel-smoothing = 0.0\n'
    )
    result = cli("train", "--config", config, "--out", tmp_path / "run", "--epochs", 1, *tiny_args)
    assert result.code == 0, result.err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["epochs"] == 1  # the flag wins
    assert saved["seed"] == 7 and saved["label_smoothing"] == 0.0  # from the file


def test_split_seed_fixes_the_split_while_the_seed_changes_the_weights(
    cli, colour_folder, tiny_args, tmp_path
):
    def run(*seeds):
        out = tmp_path / "-".join(seeds)
        result = cli("train", colour_folder, "--out", out, "--epochs", 1, *seeds, *tiny_args)
        assert result.code == 0, result.err
        return load_model(out / "best.npz")

    (model_a, meta_a), (model_b, meta_b), (_, meta_c) = (
        run("--seed", "1", "--split-seed", "0"),
        run("--seed", "2", "--split-seed", "0"),
        run("--seed", "2"),
    )
    # The normalisation statistics are those of the training split: the same split gives the
    # same statistics, another split (split seed 2, the seed's default) other statistics.
    assert meta_a["mean"] == meta_b["mean"] and meta_a["std"] == meta_b["std"]
    assert meta_c["mean"] != meta_a["mean"]
    assert meta_a["split"]["seed"] == meta_b["split"]["seed"] == 0 and meta_c["split"]["seed"] == 2
    assert not np.array_equal(model_a.state_dict()["0.weight"], model_b.state_dict()["0.weight"])


def test_evaluate_reproduces_the_test_report_and_writes_its_files(cli, trained_run, colour_folder):
    out = trained_run.parent / "eval"
    result = cli(
        "evaluate", trained_run / "best.npz", colour_folder, "--split", "test", "--out", out
    )
    assert result.code == 0, result.err
    assert "precision  recall" in result.out and "blue" in result.out
    report = json.loads((out / "report.json").read_text())
    trained = json.loads((trained_run / "report.json").read_text())
    for key in ("samples", "accuracy", "top_k_accuracy", "confusion_matrix", "classes"):
        assert report[key] == trained[key], key
    assert report["loss"] == pytest.approx(trained["loss"], rel=1e-6)
    assert (out / "confusion.png").stat().st_size > 1000


def test_evaluate_whole_folder_as_json_default_folder(cli, trained_run, colour_folder):
    result = cli("evaluate", trained_run / "best.npz", colour_folder, "--split", "all", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert report["samples"] == 36 and report["split"] == "all"
    assert (trained_run / f"eval-{colour_folder.name}" / "report.json").is_file()


def test_predict_table_and_json_agree_and_rank_probabilities(cli, trained_run, colour_folder):
    model = trained_run / "best.npz"
    red = colour_folder / "red" / "00.png"
    table = cli("predict", model, red, colour_folder / "blue", "--top-k", 2)
    assert table.code == 0, table.err
    assert table.out.splitlines()[0] == str(red)
    as_json = cli("predict", model, red, colour_folder / "blue", "--top-k", 2, "--json")
    results = json.loads(as_json.out)
    assert [r["file"] for r in results] == [str(red)] + [
        str(colour_folder / "blue" / f"{i:02d}.png") for i in range(12)
    ]
    for r in results:
        probs = [p["probability"] for p in r["predictions"]]
        assert len(probs) == 2 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    assert results[0]["predictions"][0]["class"] == "red"
    assert sum(r["predictions"][0]["class"] == "blue" for r in results[1:]) >= 10


def test_predict_decodes_files_exactly_as_the_training_cache(trained_run, colour_folder, cache_dir):
    results = predict(trained_run / "best.npz", [colour_folder], top_k=3)
    model, meta = load_model(trained_run / "best.npz")
    cache = build_cache(scan_image_folder(colour_folder), cache_dir, 8, workers=1, progress=False)
    x = normalize_batch(np.asarray(cache.images), meta["mean"], meta["std"])
    expected = softmax(model.forward(x, training=False).astype(np.float64) / meta["temperature"])
    assert [r["file"] for r in results] == [str(colour_folder / f) for f in cache.files]
    for r, probs in zip(results, expected, strict=True):
        got = {p["class"]: p["probability"] for p in r["predictions"]}
        want = dict(zip(meta["class_names"], probs, strict=True))
        assert got == pytest.approx(want, rel=1e-5)


def test_summary_of_a_preset_and_of_a_model_file(cli, trained_run):
    preset = cli("summary", "plantvillage-cnn")
    assert preset.code == 0
    assert "8,142,630" in preset.out and "FLOPs" in preset.out
    small = cli("summary", "demo-cnn", "--image-size", 16, "--num-classes", 10)
    assert "(32, 4, 4)" in small.out
    model = cli("summary", trained_run / "best.npz")
    assert model.code == 0 and "3 classes, input (3, 8, 8)" in model.out


def test_python_m_purenn_runs_the_cli(purenn_subprocess):
    process = purenn_subprocess("--version")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0 and out.strip() == "purenn 0.1.0"
