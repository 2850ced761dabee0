"""Fine-tuning with replay: the model's classes kept, its original data replayed and scored."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_resume_exact import assert_same_run, finish

from purenn.cli.main import main
from purenn.data import scan_image_folder
from purenn.io import load_model
from purenn.training import evaluate, make_config
from purenn.training.pipeline import open_cache, split_indices
from purenn.training.replay import load_replay, stratified_sample

# The colour folder's training flags, without those --init-from decides (size, architecture).
TUNE_ARGS = (
    "--batch-size", "8", "--warmup-epochs", "0", "--augment-factor", "1", "--val-fraction",
    "0.25", "--test-fraction", "0.25", "--threads", "1", "--lr", "0.01",
)  # fmt: skip
CORRECTED = {"blue": (60, 80, 170), "red": (170, 70, 60)}  # two of the three classes, off-colour
PER_CLASS = 8


@pytest.fixture(scope="module")
def base(tmp_path_factory, colour_folder, tiny_args):
    """A finished 2-epoch run on the colour folder (blue, green, red)."""
    out = tmp_path_factory.mktemp("replay") / "base"
    assert main(["train", str(colour_folder), "--out", str(out), "--epochs", "2", *tiny_args]) == 0
    return out


@pytest.fixture(scope="module")
def corrections(tmp_path_factory, colour_folder_writer):
    """New photos of two of the model's classes (8 each): what ``diagnoses export`` writes."""
    return colour_folder_writer(
        tmp_path_factory.mktemp("corrections") / "data", CORRECTED, PER_CLASS, noise=60
    )


def tune(cli, corrections, base, colour_folder, out, cache_dir, *extra):
    return cli(
        "train", corrections, "--init-from", base, "--replay", colour_folder, "--epochs", 2,
        "--out", out, "--cache-dir", cache_dir, *TUNE_ARGS, *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tuned(base, corrections, colour_folder, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "run"
    code = main(
        ["train", str(corrections), "--init-from", str(base), "--replay", str(colour_folder),
         "--replay-fraction", "1.5", "--epochs", "2", "--out", str(out), "--cache-dir",
         str(cache_dir), *TUNE_ARGS]
    )  # fmt: skip
    assert code == 0
    return out


def test_a_replay_run_keeps_the_models_classes_and_statistics(base, tuned):
    model, meta = load_model(tuned / "best.npz")
    _, base_meta = load_model(base / "best.npz")
    assert meta["class_names"] == base_meta["class_names"] == ["blue", "green", "red"]
    assert model.output_shapes((3, 8, 8))[-1] == (3,)
    assert meta["mean"] == base_meta["mean"] and meta["std"] == base_meta["std"]
    init, init_meta = load_model(tuned / "init.npz")
    for key, value in load_model(base / "best.npz")[0].state_dict().items():
        np.testing.assert_array_equal(init.state_dict()[key], value, err_msg=key)
    # Corrections: 8 per class, 2 val and 2 test each, so 4 + 4 train; 1.5 x 8 = 12 replayed.
    assert meta["replay"]["images"] == 12 and meta["replay"]["fraction"] == 1.5
    assert meta["replay"]["split"] == {
        key: base_meta["split"][key] for key in ("val_fraction", "test_fraction", "seed")
    }
    assert init_meta["source"]["split"] == base_meta["split"]


def test_the_report_scores_the_new_test_split_and_the_original_one(
    base, tuned, colour_folder, cache_dir
):
    report = json.loads((tuned / "report.json").read_text())
    assert report["samples"] == 4  # the corrections' test split
    lab = report["replay"]["test"]
    base_test = evaluate(base / "best.npz", colour_folder, "test", cache_dir=cache_dir)
    assert lab["samples"] == base_test["samples"] == 9 and lab["split"] == "test"
    # The same images, scored by the tuned model independently of the run.
    tuned_on_lab = evaluate(
        tuned / "best.npz", colour_folder, "test", cache_dir=cache_dir, progress=False
    )
    assert lab["accuracy"] == tuned_on_lab["accuracy"]
    assert lab["loss"] == pytest.approx(tuned_on_lab["loss"], rel=1e-6)


def test_replayed_images_come_from_the_original_training_split_only(base, colour_folder, cache_dir):
    _, meta = load_model(base / "best.npz")
    config = make_config(
        overrides={"data_dir": "x", "init_from": str(base), "replay": str(colour_folder),
                   "replay_fraction": 2.0, "image_size": 8, "cache_dir": str(cache_dir)}
    )  # fmt: skip
    replay = load_replay(config, meta["class_names"], meta, new_train=5, workers=1, progress=False)
    scan = scan_image_folder(colour_folder)
    cache = open_cache(scan, 8, str(cache_dir), 1, False)
    s = meta["split"]
    parts = split_indices(cache, s["val_fraction"], s["test_fraction"], s["seed"])
    # 2 x 5 = 10 of the 18 training images (6 a class: quotas of 3.33, the spare one to blue).
    assert len(replay.rows) == 10 and np.isin(replay.rows, parts["train"]).all()
    assert np.bincount(cache.labels[replay.rows]).tolist() == [4, 3, 3]
    np.testing.assert_array_equal(replay.test, parts["test"])
    everything = load_replay(config, meta["class_names"], meta, 10, workers=1, progress=False)
    np.testing.assert_array_equal(everything.rows, parts["train"])  # 20 asked, 18 there


def test_stratified_sample_is_proportional_deterministic_and_capped():
    labels = np.array([0] * 10 + [1] * 30 + [2] * 60)
    pool = np.arange(100)[::2]  # 5, 15, 30 per class
    sample = stratified_sample(labels, pool, 10, seed=3)
    assert np.isin(sample, pool).all() and len(np.unique(sample)) == 10
    assert np.bincount(labels[sample]).tolist() == [1, 3, 6]
    np.testing.assert_array_equal(sample, stratified_sample(labels, pool, 10, seed=3))
    assert not np.array_equal(sample, stratified_sample(labels, pool, 10, seed=4))
    np.testing.assert_array_equal(stratified_sample(labels, pool, 500, seed=0), pool)


def test_the_header_says_what_is_replayed(
    cli, base, corrections, colour_folder, cache_dir, tmp_path
):
    result = tune(cli, corrections, base, colour_folder, tmp_path / "r", cache_dir)
    assert result.code == 0, result.err
    assert "classes: blue, red" in result.out and "replaced" not in result.out
    assert f"replay: 8 images of {colour_folder} (1 x the 8 new training images" in result.out
    assert "its test split (9 images) is scored at the end; the model's 3 classes" in result.out
    assert "accuracy on its original test split: " in result.out
    assert f"original test split of {colour_folder}: " in result.out


def test_a_class_the_model_does_not_know_is_a_clear_error(
    cli, base, colour_folder, colour_folder_writer, cache_dir, tmp_path
):
    unknown = colour_folder_writer(tmp_path / "new", {"blue": (0, 0, 255), "purple": (128, 0, 128)})
    result = tune(cli, unknown, base, colour_folder, tmp_path / "r", cache_dir)
    assert result.code == 2 and "Traceback" not in result.err
    assert f"class folder 'purple' of {unknown} is not one of the model's 3 classes" in result.err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--replay", "{data}"], "--replay: replay must be used with init_from"),
        (["--init-from", "{base}", "--replay", "{data}", "--replay-fraction", "0"],
         "--replay-fraction: replay_fraction must be > 0"),
        (["--init-from", "{base}", "--replay", "{missing}"], "replay: data folder does not exist"),
    ],
)  # fmt: skip
def test_replay_argument_errors(cli, base, colour_folder, corrections, tmp_path, args, message):
    names = {"data": colour_folder, "base": base, "missing": tmp_path / "missing"}
    args = [a.format(**names) for a in args]
    result = cli("train", corrections, *args, "--out", tmp_path / "r", *TUNE_ARGS)
    assert result.code == 2 and message in result.err and "Traceback" not in result.err
    assert not (tmp_path / "r").exists()


def test_a_killed_replay_run_resumes_to_identical_weights(
    base, corrections, colour_folder, cache_dir, tmp_path, purenn_subprocess, metrics_reader
):
    args = [
        "train", corrections, "--init-from", base, "--replay", colour_folder, "--epochs", 3,
        "--checkpoint-steps", 2, "--patience", 0, "--cache-dir", cache_dir, *TUNE_ARGS,
    ]  # fmt: skip
    reference, out = tmp_path / "reference", tmp_path / "run"
    finish(purenn_subprocess(*args, "--out", reference))
    finish(purenn_subprocess(*args, "--out", out, env={"PURENN_TEST_SIGNAL": "KILL@3"}), -9)
    finish(purenn_subprocess("train", "--resume", out))
    assert_same_run(out, reference, metrics_reader)
