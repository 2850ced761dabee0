"""Bad input: one line ``purenn: error: ...`` naming the file or argument, exit code 2, no
traceback, and nothing done (no cache built, no existing file touched)."""

from __future__ import annotations

import pickle
import shutil
import zipfile

import numpy as np
import pytest

from purenn.io import save_model
from purenn.presets import build_preset

TRAIN = ("--preset", "demo-cnn", "--image-size", "8", "--epochs", "1", "--warmup-epochs", "0")


def assert_usage_error(result, *fragments: str) -> None:
    assert result.code == 2, (result.out, result.err)
    assert result.err.startswith("purenn: error: ")
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in result.err, (fragment, result.err)


@pytest.fixture
def model_file(tmp_path):
    model = build_preset("demo-cnn", num_classes=3, image_size=8)
    meta = {"class_names": ["a", "b", "c"], "image_size": 8, "mean": [0.5] * 3, "std": [0.2] * 3}
    return save_model(tmp_path / "model.npz", model, meta)


# -- train ---------------------------------------------------------------------------------------
def test_missing_data_folder(cli, tmp_path):
    missing = tmp_path / "nope"
    result = cli("train", missing, "--out", tmp_path / "run", "--cache-dir", tmp_path / "c", *TRAIN)
    assert_usage_error(result, "data folder does not exist", str(missing))
    assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()


def test_data_folder_without_classes(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "stray.png").write_bytes(b"")
    result = cli("train", tmp_path / "empty", "--out", tmp_path / "run", *TRAIN)
    assert_usage_error(result, "no class folders", str(tmp_path / "empty"))
    assert not (tmp_path / "run").exists()


def test_unwritable_run_folder(cli, colour_folder, tmp_path):
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "run"
    result = cli("train", colour_folder, "--out", out, "--cache-dir", tmp_path / "c", *TRAIN)
    assert_usage_error(result, "cannot write the run folder", str(out))
    assert not (tmp_path / "c").exists()


def test_existing_run_folder_needs_resume_or_overwrite(cli, colour_folder, tiny_args, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.npz").write_bytes(b"precious")
    (run / "notes.txt").write_text("mine")
    result = cli("train", colour_folder, "--out", run, *tiny_args)
    assert_usage_error(result, "run folder already exists", str(run), "--resume", "--overwrite")
    assert (run / "best.npz").read_bytes() == b"precious"

    result = cli("train", colour_folder, "--out", run, "--epochs", 1, "--overwrite", *tiny_args)
    assert result.code == 0, result.err
    assert (run / "best.npz").read_bytes() != b"precious"
    assert (run / "notes.txt").read_text() == "mine"  # --overwrite only replaces run files


def test_unknown_preset(cli, colour_folder, tmp_path):
    result = cli("train", colour_folder, "--out", tmp_path / "run", "--preset", "resnet")
    assert result.code == 2 and "resnet" in result.err and "plantvillage-cnn" in result.err
    assert result.err.startswith("purenn: error: ") and result.err.count("\n") == 1


def test_image_size_the_preset_cannot_take(cli, colour_folder, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "c"
    args = ("train", colour_folder, "--out", out, "--cache-dir", cache, "--preset")
    result = cli(*args, "plantvillage-cnn", "--image-size", 24)
    assert_usage_error(result, "must be a multiple of 16", "image_size=24")
    assert_usage_error(cli(*args, "demo-cnn", "--image-size", 4), "image_size must be >= 8")
    assert not out.exists() and not cache.exists()


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("epochs = 3\nlearning_rate = 0.1\n", ["unknown config key 'learning_rate'", "lr"]),
        ("preset = 'resnet'\n", ["preset must be one of", "resnet"]),
        ("epochs = 'ten'\n", ["epochs must be an int", "'ten'"]),
        ("epochs = [\n", ["cannot parse config file"]),
    ],
)
def test_bad_config_file(cli, colour_folder, tmp_path, text, fragments):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = cli("train", colour_folder, "--config", config, "--out", tmp_path / "run")
    assert_usage_error(result, *fragments, str(config))
    assert not (tmp_path / "run").exists()


def test_config_file_must_exist_and_be_toml_or_json(cli, colour_folder, tmp_path):
    result = cli("train", colour_folder, "--config", tmp_path / "x.toml")
    assert_usage_error(result, "cannot read config file", "x.toml")
    (tmp_path / "x.yaml").write_text("epochs: 3")
    assert_usage_error(
        cli("train", colour_folder, "--config", tmp_path / "x.yaml"), ".toml or .json"
    )


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--lr", "-1"], "--lr: lr must be > 0, received: lr=-1.0"),
        (["--val-fraction", "0.6", "--test-fraction", "0.5"], "val_fraction + test_fraction"),
        (["--min-lr", "0.5"], "--min-lr: min_lr must be <= lr (0.001)"),
        (["--batch-size", "0"], "batch_size must be >= 1"),
        (["--cache-dir", __file__], "--cache-dir: cache_dir must be a folder, received:"),
        (
            ["--augment", "field", "--augment-backgrounds", "/no/such/folder"],
            "--augment-backgrounds: augment_backgrounds must be a folder with image files",
        ),
    ],
)
def test_bad_values_name_the_key(cli, colour_folder, tmp_path, flags, fragment):
    result = cli("train", colour_folder, "--out", tmp_path / "run", *flags)
    assert_usage_error(result, fragment)
    assert not (tmp_path / "run").exists()


def test_argument_type_errors_are_one_line_too(cli, colour_folder):
    result = cli("train", colour_folder, "--epochs", "ten")
    assert_usage_error(result, "--epochs", "'ten'")


def test_data_dir_is_required_without_resume(cli):
    assert_usage_error(cli("train"), "data_dir is required")


# -- resume --------------------------------------------------------------------------------------
def test_resume_needs_a_run_folder(cli, tmp_path):
    assert_usage_error(cli("train", "--resume", tmp_path), "not a run folder", str(tmp_path))


def test_a_run_killed_while_writing_its_config_starts_again(
    cli, colour_folder, tiny_args, tmp_path
):
    """The folder holds only the temporary file of the interrupted config.json write: resume
    says to start again, and starting again with the same --out works."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".config.json.123.abcd.tmp").write_text('{"data_dir": ')
    result = cli("train", "--resume", run)
    assert_usage_error(result, "not a run folder", f"start it again with --out {run}")
    result = cli("train", colour_folder, "--out", run, "--epochs", 1, *tiny_args)
    assert result.code == 0, result.err
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []


def test_resume_refuses_flags_that_would_change_the_run(cli, tmp_path):
    result = cli("train", "--resume", tmp_path, "--lr", "0.1")
    assert_usage_error(result, "--lr cannot be used with --resume", "config.json")
    result = cli("train", "data", "--resume", tmp_path)
    assert_usage_error(result, "DATA_DIR cannot be used with --resume")


# -- model files ---------------------------------------------------------------------------------
class Trap:
    """Unpickling this would create the file named by ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_is_refused_without_being_loaded(cli, colour_folder, tmp_path):
    evil = tmp_path / "model.npz"
    evil.write_bytes(pickle.dumps(Trap(tmp_path / "pwned"), protocol=4))
    for result in (
        cli("predict", evil, colour_folder / "red" / "00.png"),
        cli("evaluate", evil, colour_folder, "--out", tmp_path / "eval"),
        cli("summary", evil),
    ):
        assert_usage_error(result, "refusing to load", "pickle", str(evil))
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "eval").exists()


def test_non_model_files_are_refused(cli, colour_folder, tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    assert_usage_error(cli("predict", text, colour_folder), "not a purenn model file", str(text))

    plain = tmp_path / "plain.npz"
    np.savez(plain, weight=np.zeros(3))
    assert_usage_error(cli("predict", plain, colour_folder), "no __purenn__ entry", str(plain))

    broken = tmp_path / "broken.npz"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("__purenn__.npy", b"garbage")
    assert_usage_error(cli("predict", broken, colour_folder), str(broken))

    missing = tmp_path / "missing.npz"
    assert_usage_error(cli("predict", missing, colour_folder), "does not exist", str(missing))


def test_object_arrays_are_never_unpickled(tmp_path):
    """An npz whose entry holds a pickled object array fails with allow_pickle=False."""
    from purenn.io import ModelFileError, load_model

    path = tmp_path / "objects.npz"
    np.savez(path, __purenn__=np.array([Trap(tmp_path / "pwned")], dtype=object))
    with pytest.raises(ModelFileError, match="damaged model file"):
        load_model(path)
    assert not (tmp_path / "pwned").exists()


def test_model_files_without_the_metadata_a_command_needs(cli, colour_folder, model_file, tmp_path):
    bare = save_model(tmp_path / "bare.npz", build_preset("demo-cnn", 3, 8), {})
    result = cli("predict", bare, colour_folder / "red" / "00.png")
    assert_usage_error(result, str(bare), "lacks the metadata ['class_names', 'image_size'")
    result = cli("evaluate", model_file, colour_folder, "--split", "test")
    assert_usage_error(result, str(model_file), "lacks the metadata ['split']")


# -- predict -------------------------------------------------------------------------------------
def test_unreadable_image_with_strict(cli, model_file, colour_folder, tmp_path):
    corrupt = tmp_path / "leaf.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = cli("predict", model_file, colour_folder / "red" / "00.png", corrupt, "--strict")
    assert_usage_error(result, "cannot read image", str(corrupt))
    assert result.out == ""


def test_no_readable_image_names_them_and_why(cli, model_file, tmp_path):
    files = [tmp_path / f"leaf{i}.jpg" for i in range(5)]
    for f in files:
        f.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = cli("predict", model_file, tmp_path)
    assert_usage_error(result, "none of the 5 image files could be read: ", "; and 2 more")
    assert sum(str(f) in result.err for f in files) == 3
    assert result.out == ""


def test_missing_image_and_empty_folder(cli, model_file, tmp_path):
    assert_usage_error(cli("predict", model_file, tmp_path / "x.png"), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_usage_error(cli("predict", model_file, tmp_path / "empty"), "no image files")


def test_summary_of_something_unknown(cli):
    assert_usage_error(cli("summary", "vgg16"), "'vgg16'", "demo-cnn")


def test_evaluate_folder_with_classes_the_model_does_not_know(cli, model_file, colour_folder):
    result = cli("evaluate", model_file, colour_folder)
    assert_usage_error(result, "class folder 'blue'", "not one of the model's")


def test_resume_after_the_data_changed(cli, colour_folder, tiny_args, tmp_path, caplog):
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(colour_folder, data)
    assert cli("train", data, "--out", run, "--epochs", 1, "-q", *tiny_args).code == 0

    (data / "red" / "00.png").unlink()  # other files: a warning, and the run goes on
    result = cli("train", "--resume", run, "-q")
    assert result.code == 0 and "changed since the run started" in caplog.text

    shutil.copytree(data / "red", data / "yellow")  # other classes: the model cannot fit them
    result = cli("train", "--resume", run)
    assert_usage_error(result, "classes under", "changed since the run started", "yellow")
