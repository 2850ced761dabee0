"""The OOD test through the CLI: predict's recognized/ood_score, its plain words, and
``evaluate --ood`` (figures, report.json, risk_coverage.png); old model files have no test."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from purenn.io import load_model, save_model
from purenn.io.header import header_metadata

# Not blue, green or red: photos the colour model was never shown.
OUTLIERS = {"grey": (128, 128, 128), "magenta": (200, 40, 200)}


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory, colour_folder_writer):
    """The three colours with 40 images each: 20 per class in the training split, so that the
    10th nearest training neighbour of a leaf is one of its own class."""
    return colour_folder_writer(tmp_path_factory.mktemp("colours40") / "data", per_class=40)


@pytest.fixture(scope="module")
def run(tmp_path_factory, colour_folder, train_quietly):
    return train_quietly(colour_folder, tmp_path_factory.mktemp("ood") / "run", 6)


@pytest.fixture(scope="module")
def outlier_folder(tmp_path_factory, colour_folder_writer):
    """Two groups of outlier photos, and one photo directly in the folder."""
    root = colour_folder_writer(tmp_path_factory.mktemp("photos") / "photos", OUTLIERS, 6)
    pixels = np.full((16, 16, 3), 250, dtype=np.uint8)
    Image.fromarray(pixels).save(root / "white.png")
    return root


@pytest.fixture(scope="module")
def legacy_model(run):
    """The run's model as purenn wrote model files before the OOD test."""
    model, header = load_model(run / "best.npz")
    metadata = {k: v for k, v in header_metadata(header).items() if k != "ood"}
    return save_model(run.parent / "legacy.npz", model, metadata)


def test_predict_json_says_whether_each_photo_is_recognized(cli, run, colour_folder):
    leaves = json.loads(cli("predict", run, colour_folder, "--json").out)
    assert all(isinstance(r["recognized"], bool) for r in leaves)
    assert all(isinstance(r["ood_score"], float) for r in leaves)
    _, meta = load_model(run / "best.npz")
    threshold = meta["ood"]["threshold"]
    assert all(r["recognized"] == (r["ood_score"] <= threshold) for r in leaves)
    assert np.mean([r["recognized"] for r in leaves]) >= 0.75


def test_predict_says_plainly_when_a_photo_is_not_recognized(cli, run, outlier_folder):
    rows = json.loads(cli("predict", run, outlier_folder, "--json").out)
    rejected = [r["file"] for r in rows if not r["recognized"]]
    assert len(rejected) >= len(rows) // 2
    lines = cli("predict", run, outlier_folder).out.splitlines()
    for file in rejected:
        following = lines[lines.index(file) + 1]
        assert following.startswith("  NOT RECOGNIZED: this does not look like a leaf")
    recognized = [r["file"] for r in rows if r["recognized"]]
    for file in recognized:
        assert lines[lines.index(file) + 1].startswith("  1. ")


def test_an_old_model_file_recognizes_every_photo(cli, legacy_model, outlier_folder):
    rows = json.loads(cli("predict", legacy_model, outlier_folder, "--json").out)
    assert all(r["recognized"] is True and r["ood_score"] is None for r in rows)
    assert "NOT RECOGNIZED" not in cli("predict", legacy_model, outlier_folder).out


def test_evaluate_ood_reports_each_folder_and_draws_the_risk_coverage(
    cli, run, colour_folder, outlier_folder
):
    out = run.parent / "eval-ood"
    result = cli("evaluate", run, colour_folder, "--ood", outlier_folder, "--out", out)
    assert result.code == 0, result.err
    ood = json.loads((out / "report.json").read_text())["ood"]
    assert set(ood["folders"]) == {"grey", "magenta", "photos"}  # "photos": the loose image
    assert [ood["folders"][g]["samples"] for g in ("grey", "magenta", "photos")] == [6, 6, 1]
    assert ood["all"]["samples"] == 13
    # The leaves are the test split, filtered exactly as training reported it.
    trained = json.loads((run / "report.json").read_text())["ood"]
    assert ood["leaves"] == trained["test"] and ood["threshold"] == trained["threshold"]
    # Each folder's share not recognized is what predict says of its photos.
    rows = json.loads(cli("predict", run, outlier_folder / "grey", "--json").out)
    rejected = np.mean([not r["recognized"] for r in rows])
    assert ood["folders"]["grey"]["rejected"] == pytest.approx(rejected)
    for f in ood["folders"].values():
        assert 0 <= f["auroc"] <= 1 and 0 <= f["fpr_at_95"] <= 1
    assert "AUROC" in result.out and "not recognized" in result.out
    with Image.open(out / "risk_coverage.png") as png:
        assert png.format == "PNG" and png.width >= 500


def test_evaluate_ood_needs_a_model_with_an_ood_test(
    cli, legacy_model, colour_folder, outlier_folder, tmp_path
):
    out = tmp_path / "eval"
    result = cli("evaluate", legacy_model, colour_folder, "--ood", outlier_folder, "--out", out)
    assert result.code == 2
    assert "has no OOD test" in result.err and "purenn calibrate" in result.err
    assert not out.exists()
