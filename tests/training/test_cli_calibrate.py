"""``purenn calibrate`` end to end: a model trained before temperatures existed gets one."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from purenn.data import scan_image_folder
from purenn.inference.calibration import calibration_summary, fit_temperature
from purenn.inference.recognition import read_ood_test
from purenn.io import load_model, load_model_arrays, save_model
from purenn.io.header import header_metadata
from purenn.kernels.ops import softmax
from purenn.training import predict
from purenn.training.evaluation import predict_features, predict_logits
from purenn.training.pipeline import load_training_data

# Three close colours under heavy noise: a tiny CNN gets most, not all, right (T inside bounds).
CLOSE_COLOURS = {"a": (120, 110, 100), "b": (100, 120, 110), "c": (110, 100, 120)}
PER_CLASS = 16


@pytest.fixture(scope="module")
def close_folder(tmp_path_factory, colour_folder_writer):
    root = tmp_path_factory.mktemp("close") / "data"
    return colour_folder_writer(root, CLOSE_COLOURS, PER_CLASS, noise=60)


@pytest.fixture(scope="module")
def close_run(tmp_path_factory, close_folder, train_quietly):
    """A run folder trained on the close colours (do not modify)."""
    return train_quietly(close_folder, tmp_path_factory.mktemp("run") / "run", 3)


@pytest.fixture(scope="module")
def legacy_model(close_run):
    """The run's best.npz without its temperature and OOD test, as purenn wrote model files
    before (save_model without ``arrays`` leaves the OOD statistics out)."""
    model, header = load_model(close_run / "best.npz")
    metadata = header_metadata(header)
    del metadata["temperature"], metadata["ood"]
    return save_model(close_run.parent / "legacy.npz", model, metadata)


@pytest.fixture
def model_copy(legacy_model, tmp_path):
    """A copy of the legacy model, to be rewritten by one test (the data folder stays its own)."""
    return shutil.copy(legacy_model, tmp_path / "best.npz")


def _val_loader(model_path, cache_dir):
    """The model and the batches of its validation split, rebuilt from its metadata."""
    model, meta = load_model(model_path)
    split = meta["split"]
    data = load_training_data(
        scan_image_folder(meta["data_dir"]), meta["image_size"], split["val_fraction"],
        split["test_fraction"], split["seed"], str(cache_dir), 1, False,
    )  # fmt: skip
    return model, data.loader("val", 8)


def val_logits(model_path, cache_dir):
    """The model's logits and labels on its validation split."""
    return predict_logits(*_val_loader(model_path, cache_dir))


def val_features(model_path, cache_dir):
    """The model's penultimate features, logits and labels on its validation split."""
    return predict_features(*_val_loader(model_path, cache_dir))


def test_training_fits_the_temperature_on_the_val_split(close_run, cache_dir):
    calibration = json.loads((close_run / "report.json").read_text())["calibration"]
    _, meta = load_model(close_run / "best.npz")
    logits, labels = val_logits(close_run / "best.npz", cache_dir)
    temperature = fit_temperature(logits, labels)
    assert 0.05 < temperature < 20 and temperature != 1.0  # a real minimum
    assert meta["temperature"] == calibration["temperature"]
    assert meta["temperature"] == pytest.approx(temperature, rel=1e-9)
    assert calibration["fitted_on"] == "val" and calibration["bins"] == 15
    assert calibration["val"] == pytest.approx(calibration_summary(logits, labels, temperature))
    # Fitted on these images, the temperature cannot raise their NLL.
    assert calibration["val"]["nll_after"] < calibration["val"]["nll_before"]
    assert calibration["test"]["samples"] == 12
    with Image.open(close_run / "reliability.png") as png:
        assert png.format == "PNG" and png.width >= 600


def test_training_fits_the_ood_test_and_reports_it_on_the_test_split(close_run, cache_dir):
    _, meta = load_model(close_run / "best.npz")
    test = read_ood_test(close_run / "best.npz", meta)
    assert test.score == "knn" and test.statistics.k == 1  # trained without --outliers
    features, logits, _ = val_features(close_run / "best.npz", cache_dir)
    assert (test.scores(features, logits) <= test.threshold).sum() == 12  # ceil(0.95 * 12)
    ood = json.loads((close_run / "report.json").read_text())["ood"]
    assert ood == {**meta["ood"], "test": ood["test"]}
    assert ood["test"]["samples"] == 12 and 0 < ood["test"]["recognized"] <= 1


def test_calibrate_fits_the_val_split_and_rewrites_the_temperature_and_ood_test(
    cli, model_copy, close_folder, cache_dir
):
    before_model, before = load_model(model_copy)
    assert "temperature" not in before and "ood" not in before
    assert read_ood_test(model_copy, before) is None
    result = cli("calibrate", model_copy, close_folder, "--cache-dir", cache_dir)
    assert result.code == 0, result.err
    logits, labels = val_logits(model_copy, cache_dir)
    temperature = fit_temperature(logits, labels)
    assert 0.05 < temperature < 20  # a real minimum, not a bound
    after_model, after = load_model(model_copy)
    assert after["temperature"] == pytest.approx(temperature, rel=1e-9)
    assert {k: v for k, v in after.items() if k not in ("temperature", "ood")} == before
    # The OOD test: the kNN bank of the 24 training images; its threshold keeps 95% of val.
    test = read_ood_test(model_copy, after)
    assert test.score == "knn" and test.statistics.bank.shape[0] == 24
    assert sorted(load_model_arrays(model_copy)) == ["ood/bank"]
    features, logits, _ = val_features(model_copy, cache_dir)
    accepted = test.scores(features, logits) <= test.threshold
    assert accepted.sum() == np.ceil(0.95 * len(accepted))
    assert "OOD test: knn, k=1 fitted on the training split" in result.out
    for name, array in before_model.state_dict().items():
        np.testing.assert_array_equal(after_model.state_dict()[name], array)
    summary = calibration_summary(logits, labels, temperature)
    assert f"temperature {temperature:.4g} (was 1)" in result.out
    assert f"{summary['samples']} images (the val split)" in result.out
    assert f"{100 * summary['ece_before']:.2f}% -> {100 * summary['ece_after']:.2f}%" in result.out
    assert summary["nll_after"] < summary["nll_before"]


def test_predict_uses_the_written_temperature(cli, model_copy, close_folder, cache_dir):
    image = close_folder / "b" / "03.png"
    uncalibrated = predict(model_copy, [image], top_k=3)[0]["predictions"]
    assert cli("calibrate", model_copy, close_folder, "--cache-dir", cache_dir).code == 0
    _, meta = load_model(model_copy)
    calibrated = predict(model_copy, [image], top_k=3)[0]["predictions"]
    p = {row["class"]: row["probability"] for row in uncalibrated}
    logits = np.log([p[name] for name in meta["class_names"]])  # logits up to a constant
    expected = softmax(logits / meta["temperature"])
    got = {row["class"]: row["probability"] for row in calibrated}
    assert [got[name] for name in meta["class_names"]] == pytest.approx(expected, rel=1e-6)


def test_calibrate_json_and_a_second_run_reports_the_previous_temperature(
    cli, model_copy, close_folder, cache_dir
):
    first = cli("calibrate", model_copy, close_folder, "--cache-dir", cache_dir, "--json")
    assert first.code == 0, first.err
    result = json.loads(first.out)
    assert result["split"] == "val" and result["previous_temperature"] == 1.0
    assert result["bins"] == 15 and result["samples"] == 12
    second = json.loads(
        cli("calibrate", model_copy, close_folder, "--cache-dir", cache_dir, "--json").out
    )
    # Fitted on the same images: the same temperature, and "before" is already calibrated.
    assert second["temperature"] == pytest.approx(result["temperature"], rel=1e-9)
    assert second["previous_temperature"] == pytest.approx(result["temperature"], rel=1e-12)
    assert second["ece_before"] == pytest.approx(result["ece_after"], rel=1e-9)


def test_calibrate_refuses_images_the_model_was_trained_on(
    cli, model_copy, close_folder, cache_dir
):
    saved = model_copy.read_bytes()
    result = cli("calibrate", model_copy, close_folder, "--split", "all", "--cache-dir", cache_dir)
    assert result.code == 2
    assert "24 of the 48 images" in result.err and "training split" in result.err
    assert model_copy.read_bytes() == saved  # nothing written


def test_calibrate_on_another_folder_uses_all_its_images(
    cli, model_copy, close_folder, cache_dir, tmp_path
):
    other = shutil.copytree(close_folder, tmp_path / "other")
    result = cli("calibrate", model_copy, other, "--cache-dir", cache_dir, "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["split"] == "all"
    assert json.loads(result.out)["samples"] == 3 * PER_CLASS


def test_calibrate_a_safetensors_model_keeps_its_container(
    cli, model_copy, close_folder, cache_dir, tmp_path
):
    exported = tmp_path / "model.safetensors"
    assert cli("export", model_copy, exported).code == 0
    assert cli("calibrate", exported, close_folder, "--cache-dir", cache_dir).code == 0
    assert exported.read_bytes()[8:9] == b"{"  # still a safetensors header
    _, meta = load_model(exported)
    logits, labels = val_logits(model_copy, cache_dir)
    assert meta["temperature"] == pytest.approx(fit_temperature(logits, labels), rel=1e-6)
    assert "ood" not in meta  # a .safetensors file holds weights only


def test_export_leaves_the_ood_test_out(cli, close_run, tmp_path):
    exported = tmp_path / "model.safetensors"
    assert cli("export", close_run / "best.npz", exported).code == 0
    _, meta = load_model(exported)
    assert "ood" not in meta and read_ood_test(exported, meta) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "test"], "invalid choice: 'test'"),
        (["--split", "train"], "invalid choice: 'train'"),
    ],
)
def test_calibrate_bad_split(cli, model_copy, close_folder, args, message):
    result = cli("calibrate", model_copy, close_folder, *args)
    assert result.code == 2 and message in result.err


def test_calibrate_refuses_a_checkpoint(cli, legacy_model, close_folder, cache_dir):
    checkpoint = legacy_model.parent / "run" / "last.ckpt.npz"
    saved = checkpoint.read_bytes()
    result = cli("calibrate", checkpoint, close_folder, "--cache-dir", cache_dir)
    assert result.code == 2 and "is a checkpoint, not a model file" in result.err
    assert checkpoint.read_bytes() == saved


def test_calibrate_fits_the_ood_score_asked_for(cli, model_copy, close_folder, cache_dir):
    args = ["calibrate", model_copy, close_folder, "--cache-dir", cache_dir, "--json"]
    result = json.loads(cli(*args, "--ood-score", "mahalanobis").out)
    assert result["ood"]["score"] == "mahalanobis"
    assert sorted(load_model_arrays(model_copy)) == ["ood/means", "ood/whitening"]
    result = json.loads(cli(*args, "--ood-score", "energy").out)
    _, meta = load_model(model_copy)
    assert result["ood"] == meta["ood"] and meta["ood"]["score"] == "energy"
    assert meta["ood"]["temperature"] == 1.0  # the raw softmax, not the calibrated one
    assert load_model_arrays(model_copy) == {}  # the Mahalanobis arrays are replaced, not kept
