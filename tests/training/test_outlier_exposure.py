"""Outlier exposure (``purenn train --outliers``): the outlier batches, what the term does to the
model's answers on outliers, the run's records, a killed run resuming exactly, bad folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from purenn.data import scan_outlier_folder
from purenn.inference.prediction import predict
from purenn.io import load_model, load_model_arrays
from purenn.training.outliers import outlier_exposure

# Colours that are none of the classes (blue, green, red) of the colour folder.
OUTLIER_COLOURS = {"grey": (128, 128, 128), "magenta": (200, 40, 200), "yellow": (220, 210, 30)}


@pytest.fixture(scope="module")
def outlier_folder(tmp_path_factory, colour_folder_writer):
    return colour_folder_writer(
        tmp_path_factory.mktemp("outliers") / "outliers", OUTLIER_COLOURS, per_class=6
    )


def test_the_outlier_batch_of_a_step_does_not_depend_on_where_the_stream_started(
    outlier_folder, cache_dir
):
    exposure = outlier_exposure(
        scan_outlier_folder(outlier_folder), 8, np.zeros(3), np.ones(3), 5, 0.5, 3, 2, "standard",
        str(cache_dir), 1, False,
    )  # fmt: skip
    assert len(exposure.loader) == 7  # 18 photos x 2 views in full batches of 5
    stream = exposure.batches(0)
    from_start = [next(stream) for _ in range(17)]
    stream.close()
    stream = exposure.batches(12)  # in the second outlier epoch
    later = [next(stream) for _ in range(5)]
    stream.close()
    assert all(np.array_equal(a, b) for a, b in zip(from_start[12:], later, strict=True))
    assert all(b.shape == (5, 3, 8, 8) and b.dtype == np.float32 for b in from_start)
    # Epochs differ (reshuffled, re-augmented).
    assert not np.array_equal(from_start[0], from_start[7])


def _train(cli, colour_folder, tiny_args, out, *extra):
    outcome = cli("train", colour_folder, *tiny_args, "--epochs", "12", "--out", out, *extra)
    assert outcome.code == 0, outcome.err
    return outcome


def _outlier_confidence(run, outlier_folder) -> float:
    """Mean top (calibrated) probability of the run's model on the outlier photos."""
    rows = predict(run / "best.npz", [outlier_folder], top_k=1)
    return float(np.mean([r["predictions"][0]["probability"] for r in rows]))


def test_outlier_exposure_spreads_the_outliers_probabilities_and_is_recorded(
    cli, colour_folder, tiny_args, outlier_folder, tmp_path
):
    plain = tmp_path / "plain"
    exposed = tmp_path / "exposed"
    _train(cli, colour_folder, tiny_args, plain)
    outcome = _train(
        cli, colour_folder, tiny_args, exposed, "--outliers", outlier_folder,
        "--outlier-weight", "1", "--outlier-batch-size", "4",
    )  # fmt: skip
    assert f"outlier exposure: 18 photos of {outlier_folder}, 4 per step, weight 1" in outcome.out
    config = json.loads((exposed / "config.json").read_text())
    assert config["outliers"] == str(outlier_folder) and config["outlier_batch_size"] == 4
    _, meta = load_model(exposed / "best.npz")
    assert meta["outlier_exposure"] == {
        "folder": str(outlier_folder), "images": 18, "weight": 1.0, "batch_size": 4,
    }  # fmt: skip
    assert load_model(plain / "best.npz")[1]["outlier_exposure"] is None
    # The OOD test: the maximum softmax probability with outlier exposure, kNN without.
    assert meta["ood"]["score"] == "max_softmax" and meta["ood"]["temperature"] == 1.0
    assert load_model_arrays(exposed / "best.npz") == {}
    assert load_model(plain / "best.npz")[1]["ood"]["score"] == "knn"
    # The classes are still learnt; the outliers get spread-out answers (1/3 is uniform).
    report = json.loads((exposed / "report.json").read_text())
    assert report["accuracy"] == 1.0
    confidence = _outlier_confidence(exposed, outlier_folder)
    assert confidence < 0.4
    assert _outlier_confidence(plain, outlier_folder) > confidence + 0.2


def test_a_killed_run_with_outliers_resumes_to_identical_weights(
    checkpointing_run_args, outlier_folder, tmp_path, purenn_subprocess
):
    args = [*checkpointing_run_args(2), "--outliers", outlier_folder, "--outlier-batch-size", "5"]
    runs = {}
    for name, kill in (("reference", None), ("killed", "KILL@4")):
        out = tmp_path / name
        env = {"PURENN_TEST_SIGNAL": kill} if kill else None
        process = purenn_subprocess(*args, "--out", out, env=env)
        process.communicate(timeout=120)
        assert process.returncode == (-9 if kill else 0)
        runs[name] = out
    process = purenn_subprocess("train", "--resume", runs["killed"])
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    with np.load(runs["reference"] / "best.npz") as a, np.load(runs["killed"] / "best.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files if k != "__purenn__")


@pytest.mark.parametrize("where", ["inside", "missing", "empty"])
def test_bad_outlier_folders_are_refused_before_any_work(
    cli, colour_folder, tiny_args, tmp_path, where
):
    folder = {"inside": colour_folder / "red", "missing": tmp_path / "nope", "empty": tmp_path}[
        where
    ]
    outcome = cli(
        "train", colour_folder, *tiny_args, "--out", tmp_path / "run", "--outliers", folder
    )
    assert outcome.code != 0
    expected = {
        "inside": "overlaps the data folder",
        "missing": "outlier folder does not exist",
        "empty": "outlier folder has no image files",
    }[where]
    assert expected in outcome.err and str(folder) in outcome.err
    assert not (tmp_path / "run").exists()
