"""A new user's first hour: every situation that used to train or evaluate the wrong thing in
silence, run through the command line as a user runs it."""

from __future__ import annotations

import io
import json
import shutil
import sys

import numpy as np
import pytest

from purenn.cli.main import main
from purenn.io import load_model

PER_CLASS = 12  # images per class of the colour folder


def without(args: list[str], flag: str) -> list[str]:
    """``args`` without ``flag`` and its value (e.g. --image-size, taken from --init-from)."""
    i = args.index(flag)
    return [*args[:i], *args[i + 2 :]]


def one_error_line(result, *fragments):
    assert result.code == 2, (result.out, result.err)
    assert result.err.startswith("purenn: error: ") and "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in result.err, (fragment, result.err)


@pytest.fixture(scope="module")
def run(tmp_path_factory, colour_folder, tiny_args):
    """A finished 2-epoch run on the colour folder."""
    out = tmp_path_factory.mktemp("first-hour") / "run"
    code = main(["train", str(colour_folder), "--out", str(out), "--epochs", "2", *tiny_args])
    assert code == 0
    return out


# -- data layout -----------------------------------------------------------------------------
def test_header_names_the_classes(run, cli, colour_folder, tiny_args, tmp_path):
    result = cli("train", colour_folder, "--out", tmp_path / "r", "--epochs", 1, *tiny_args)
    assert result.code == 0, result.err
    assert "classes: blue, green, red" in result.out
    assert "3 classes" in result.out


def test_many_class_names_are_shortened():
    from purenn.training.fit import _class_list

    names = [f"c{i:02d}" for i in range(20)]
    assert _class_list(names) == "c00, c01, c02, c03, c04, c05, ... (13 more), c19"
    assert _class_list(names[:3]) == "c00, c01, c02"


def test_a_folder_one_level_too_high_is_refused(cli, colour_folder, tiny_args, tmp_path):
    """PlantVillage/{color,grayscale}/<class>/*.jpg would train "color vs grayscale"."""
    top = tmp_path / "PlantVillage"
    for variant in ("color", "grayscale"):
        shutil.copytree(colour_folder, top / variant)
    result = cli("train", top, "--out", tmp_path / "r", "--epochs", 1, *tiny_args)
    one_error_line(result, "one level too high", "color, grayscale", str(top / "color"))
    assert not (tmp_path / "r").exists()
    # The same sense in evaluate: the folder is refused before anything is scored.
    assert cli("evaluate", tmp_path / "x.npz", top).code == 2


def test_a_single_class_is_refused(cli, colour_folder, tiny_args, tmp_path):
    shutil.copytree(colour_folder / "red", tmp_path / "data" / "red")
    result = cli("train", tmp_path / "data", "--out", tmp_path / "r", "--epochs", 1, *tiny_args)
    one_error_line(result, "only one class ('red')", "two or more class folders")


def test_run_folders_inside_the_data_folder_are_never_classes(
    cli, colour_folder, tiny_args, tmp_path, monkeypatch
):
    """`purenn train .` inside the data folder puts runs/ there; the next run ignores it."""
    data = shutil.copytree(colour_folder, tmp_path / "data")
    (data / "__MACOSX" / "red").mkdir(parents=True)
    shutil.copy(data / "red" / "00.png", data / "__MACOSX" / "red" / "._00.png")
    monkeypatch.chdir(data)
    first = cli("train", ".", "--epochs", 1, *tiny_args)
    assert first.code == 0, first.err
    assert "not classes (ignored): __MACOSX/ (tool debris)" in first.out
    second = cli("train", ".", "--epochs", 1, *tiny_args, "--out", "runs/second")
    assert second.code == 0, second.err
    assert "3 classes" in second.out and "classes: blue, green, red" in second.out
    assert "runs/ (holds purenn run folders)" in second.out
    # And an evaluation folder beside the data (eval-<name>/ of report.json + confusion.png).
    (run_dir,) = [p for p in (data / "runs").iterdir() if p.name != "second"]
    assert cli("evaluate", run_dir, data, "--split", "all").code == 0
    shutil.move(run_dir / "eval-data", data / "eval-data")
    third = cli("train", ".", "--epochs", 1, *tiny_args, "--out", "runs/third")
    assert "eval-data/ (a purenn run folder)" in third.out and "3 classes" in third.out


def test_a_run_started_inside_a_class_folder_is_not_part_of_that_class(
    cli, colour_folder, tiny_args, tmp_path, monkeypatch
):
    data = shutil.copytree(colour_folder, tmp_path / "data")
    monkeypatch.chdir(data / "red")
    assert cli("train", "..", "--epochs", 1, *tiny_args, "--out", "runs/first").code == 0
    second = cli("train", "..", "--epochs", 1, *tiny_args, "--out", "runs/second")
    assert second.code == 0, second.err
    assert "(36 images, 3 classes" in second.out
    assert "red/runs/first/ (a purenn run folder)" in second.out


def test_the_same_folder_is_cached_once_however_it_is_spelled(
    cli, colour_folder, tmp_path, tiny_args
):
    data = shutil.copytree(colour_folder, tmp_path / "data")
    (tmp_path / "link").symlink_to(data)
    cache = tmp_path / "cache"
    for spelling in (data, tmp_path / "link", data / ".." / "data"):
        args = ("train", spelling, "--out", tmp_path / "r", "--overwrite", "--epochs", 1)
        assert cli(*args, *tiny_args, "--cache-dir", cache).code == 0
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1
    listing = cli("cache", "list", "--cache-dir", cache)
    assert listing.out.count(str(data)) == 1 and "1 entry" in listing.out


# -- evaluate ----------------------------------------------------------------------------------
def test_evaluate_on_the_training_folder_scores_its_test_split(cli, run, colour_folder):
    result = cli("evaluate", run, colour_folder)  # a run folder stands for its best.npz
    assert result.code == 0, result.err
    assert f"scored 9 images (the test split) of {colour_folder}" in result.out
    assert "0 of them trained on" in result.out and "training split" not in result.err
    report = json.loads((run / "eval-data" / "report.json").read_text())
    assert report["split"] == "test" and report["samples"] == 9


def test_evaluate_all_images_of_the_training_folder_warns(
    cli, run, colour_folder, tmp_path, caplog
):
    """Warnings are logged (stderr for a user; pytest collects them in caplog)."""
    out = tmp_path / "e"
    result = cli(
        "evaluate", run / "best.npz", colour_folder, "--split", "all", "--json", "--out", out
    )
    assert result.code == 0, result.err
    assert json.loads(result.out)["train_overlap"] == 18  # 6 training images per class
    assert "18 of the 36 images scored are in the model's training split" in caplog.text
    assert "scored 36 images (all images)" in result.err  # stdout stays pure JSON


def test_evaluate_another_folder_scores_all_of_it_and_never_resplits_silently(
    cli, run, colour_folder, tmp_path, caplog
):
    other = shutil.copytree(colour_folder, tmp_path / "new-photos")
    result = cli("evaluate", run, other, "--out", tmp_path / "a")
    assert result.code == 0, result.err
    assert caplog.text == ""
    assert "scored 36 images (all images)" in result.out
    assert f"not the folder the model was trained on, {colour_folder})" in result.out
    result = cli("evaluate", run, other, "--split", "test", "--out", tmp_path / "t")
    assert result.code == 0, result.err
    assert f"{other} is not the folder the model was trained on" in caplog.text
    assert "a new split of it" in caplog.text and "--split all" in caplog.text


def test_evaluate_with_a_model_that_does_not_record_its_folder(cli, colour_folder, tmp_path):
    from purenn.io import save_model
    from purenn.presets import build_preset

    meta = {
        "class_names": ["blue", "green", "red"],
        "image_size": 8,
        "mean": [0.5] * 3,
        "std": [0.2] * 3,
    }
    model = save_model(tmp_path / "m.npz", build_preset("demo-cnn", 3, 8), meta)
    result = cli("evaluate", model, colour_folder)
    assert result.code == 0, result.err
    assert "scored 36 images (all images)" in result.out
    assert "does not record the folder it was trained on" in result.out


# -- short runs ------------------------------------------------------------------------------
def test_a_run_shorter_than_the_warmup_trains_with_a_shorter_warmup(
    cli, colour_folder, tmp_path, tiny_args
):
    result = cli(
        "train",
        colour_folder,
        "--epochs",
        2,
        "--out",
        tmp_path / "r",
        *without(tiny_args, "--warmup-epochs"),
    )
    assert result.code == 0, result.err
    assert "warmup 1 epoch, shortened from 2: the run has 2 epochs" in result.out


# -- predict ---------------------------------------------------------------------------------
def test_predict_skips_unreadable_files_lists_them_and_predicts_the_rest(
    cli, run, colour_folder, tmp_path
):
    photos = shutil.copytree(colour_folder / "red", tmp_path / "photos")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (photos / "empty.png").write_bytes(b"")
    result = cli("predict", run, photos, "--json")
    assert result.code == 0, result.err
    files = [r["file"] for r in json.loads(result.out)]
    assert len(files) == PER_CLASS and str(photos / "broken.jpg") not in files
    assert "skipped 2 unreadable file(s)" in result.err
    assert str(photos / "broken.jpg") in result.err and "empty file" in result.err
    strict = cli("predict", run, photos, "--strict")
    one_error_line(strict, "cannot read image", "broken.jpg")
    assert strict.out == ""


def test_predict_on_a_folder_leaves_run_folders_out(cli, run, colour_folder, tmp_path):
    photos = shutil.copytree(colour_folder / "red", tmp_path / "photos")
    shutil.copytree(run, photos / "runs" / "old")  # its curves.png and confusion.png
    result = cli("predict", run, photos, "--json")
    assert result.code == 0, result.err
    assert len(json.loads(result.out)) == PER_CLASS


def test_predict_with_a_folder_that_is_no_run(cli, colour_folder, tmp_path):
    result = cli("predict", tmp_path, colour_folder / "red" / "00.png")
    one_error_line(result, "is a folder without best.npz")


# -- fine-tuning and continuing --------------------------------------------------------------
def test_init_from_a_run_with_the_same_classes_starts_from_its_weights(
    cli, run, colour_folder, tmp_path, tiny_args
):
    out = tmp_path / "tuned"
    result = cli(
        "train",
        colour_folder,
        "--init-from",
        run,
        "--epochs",
        1,
        "--out",
        out,
        *without(without(tiny_args, "--image-size"), "--preset"),
    )
    assert result.code == 0, result.err
    assert f"weights from {run / 'best.npz'}" in result.out and "replaced" not in result.out
    assert "at 8x8" in result.out  # the image size comes from the model
    start, _ = load_model(out / "init.npz")
    best, _ = load_model(run / "best.npz")
    for key, value in best.state_dict().items():
        np.testing.assert_array_equal(start.state_dict()[key], value, err_msg=key)


def test_init_from_with_other_classes_replaces_the_output_layer(
    cli, run, colour_folder, tmp_path, tiny_args
):
    data = tmp_path / "two"
    for name in ("blue", "red"):
        shutil.copytree(colour_folder / name, data / f"my-{name}")
    out = tmp_path / "tuned"
    result = cli(
        "train",
        data,
        "--init-from",
        run / "best.npz",
        "--epochs",
        1,
        "--out",
        out,
        *without(without(tiny_args, "--image-size"), "--preset"),
    )
    assert result.code == 0, result.err
    assert "output layer replaced (3 -> 2 classes" in result.out
    model, meta = load_model(out / "best.npz")
    assert meta["class_names"] == ["my-blue", "my-red"] and model.output_shapes((3, 8, 8))[-1] == (
        2,
    )
    start, _ = load_model(out / "init.npz")
    old, _ = load_model(run / "best.npz")
    np.testing.assert_array_equal(start[0].params["weight"], old[0].params["weight"])
    predicted = cli("predict", out, data / "my-red" / "00.png", "--top-k", 1)
    assert predicted.code == 0 and "my-" in predicted.out


def test_init_from_a_resnet_with_other_classes_replaces_its_head_and_keeps_the_graph(
    cli, colour_folder, tmp_path, tiny_args
):
    """plantvillage-resnet (a graph with BatchNorm) fine-tuned on 2 classes: the Dense after the
    global average pooling is replaced; the topology and every other array (running statistics
    included) are those of the source run's best model."""
    args = list(tiny_args)
    args[args.index("--preset") + 1] = "plantvillage-resnet"
    args[args.index("--image-size") + 1] = "32"
    source = tmp_path / "resnet"
    result = cli("train", colour_folder, "--out", source, "--epochs", 1, *args)
    assert result.code == 0, result.err
    data = tmp_path / "two"
    for name in ("blue", "red"):
        shutil.copytree(colour_folder / name, data / f"my-{name}")
    out = tmp_path / "tuned"
    result = cli(
        "train", data, "--init-from", source, "--epochs", 1, "--out", out,
        *without(without(args, "--image-size"), "--preset"),
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "output layer replaced (3 -> 2 classes" in result.out
    start, _ = load_model(out / "init.npz")
    old, _ = load_model(source / "best.npz")
    assert start.inputs == old.inputs and start.output_shapes((3, 32, 32))[-1] == (2,)
    head = len(old.layers) - 1
    assert type(start.layers[head]).__name__ == "Dense"
    for key, value in old.state_dict().items():
        if not key.startswith(f"{head}."):
            np.testing.assert_array_equal(start.state_dict()[key], value, err_msg=key)
    assert "1.running_mean" in old.state_dict()
    predicted = cli("predict", out, data / "my-red" / "00.png", "--top-k", 1)
    assert predicted.code == 0 and "my-" in predicted.out


def test_init_from_a_graph_with_two_heads_and_other_classes_is_a_clear_error(tmp_path):
    import purenn as pn
    from purenn.training.config import ConfigError, make_config
    from purenn.training.start import from_model

    x = pn.Input((3, 8, 8))
    pooled = pn.GlobalAvgPool2D()(pn.Conv2D(3, 4, 3, padding=1)(x))
    model = pn.Model(x, pn.Add()([pn.Dense(4, 3)(pooled), pn.Dense(4, 3)(pooled)]))
    config = make_config(overrides={"data_dir": str(tmp_path), "image_size": 8})
    with pytest.raises(ConfigError, match="every path to the output must pass through it"):
        from_model(model, {"class_names": list("abc")}, config, ["x", "y"], "two-heads.npz")


def test_init_from_with_another_image_size_is_a_clear_error(
    cli, run, colour_folder, tmp_path, tiny_args
):
    result = cli(
        "train",
        colour_folder,
        "--init-from",
        run,
        "--out",
        tmp_path / "r",
        "--image-size",
        "16",
    )
    one_error_line(result, "takes inputs of shape (3, 8, 8)", "set image_size 8")
    assert not (tmp_path / "r").exists()


def test_init_from_a_grey_model_is_a_clear_error(cli, colour_folder, tmp_path):
    from purenn.io import save_model
    from purenn.presets import build_preset

    grey = build_preset("demo-cnn", 3, 8, in_channels=1)
    save_model(tmp_path / "grey.npz", grey, {"class_names": ["blue", "green", "red"]})
    result = cli(
        "train",
        colour_folder,
        "--init-from",
        tmp_path / "grey.npz",
        "--image-size",
        8,
        "--out",
        tmp_path / "r",
    )
    one_error_line(result, "takes inputs of shape (1, 8, 8)", "(3, 8, 8) images", "RGB input")


def test_init_from_excludes_a_preset(cli, run, colour_folder, tmp_path):
    result = cli("train", colour_folder, "--init-from", run, "--preset", "plantvillage-ann")
    one_error_line(result, "--preset cannot be used with --init-from")


def test_more_epochs_on_resume_points_to_init_from(cli, run):
    result = cli("train", "--resume", run, "--epochs", 5)
    one_error_line(
        result,
        "--epochs cannot change the length",
        f"--init-from {run}",
        f"--config {run / 'config.json'}",
        "--epochs 5",
    )


def test_the_suggested_command_trains_on(cli, run, cache_dir, tmp_path):
    out = tmp_path / "more"
    result = cli(
        "train",
        "--config",
        run / "config.json",
        "--init-from",
        run,
        "--epochs",
        2,
        "--out",
        out,
        "--cache-dir",
        cache_dir,
    )
    assert result.code == 0, result.err
    assert (out / "best.npz").is_file() and (run / "best.npz").is_file()


def test_a_run_config_reused_for_a_new_run_gets_a_new_folder(cli, run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = (run / "metrics.csv").read_text()
    result = cli("train", "--config", run / "config.json", "--epochs", 1)
    assert result.code == 0, result.err
    (new,) = (tmp_path / "runs").iterdir()
    assert new.name.startswith("demo-cnn-") and (new / "best.npz").is_file()
    assert (run / "metrics.csv").read_text() == before


def test_train_accepts_your_own_sequential_and_resumes_it_exactly(
    colour_folder, cache_dir, tmp_path
):
    import purenn as pn
    from purenn.training import make_config, resume, train
    from purenn.training.progress import Progress

    def model():
        return pn.Sequential(
            [
                pn.Conv2D(3, 4, 3, padding=1, rng=3),
                pn.ReLU(),
                pn.MaxPool2D(2),
                pn.Flatten(),
                pn.Dropout(0.2),
                pn.Dense(4 * 4 * 4, 3, rng=4),
            ]
        )

    keys = {
        "epochs": 2,
        "batch_size": 8,
        "lr": 0.01,
        "image_size": 8,
        "warmup_epochs": 0.0,
        "val_fraction": 0.25,
        "test_fraction": 0.25,
        "threads": 1,
        "cache_dir": str(cache_dir),
        "data_dir": str(colour_folder),
    }
    quiet = Progress(quiet=True)
    first = train(
        make_config(overrides={**keys, "out": str(tmp_path / "a")}), False, quiet, model()
    )
    assert (tmp_path / "a" / "init.npz").is_file()
    _, meta = load_model(tmp_path / "a" / "best.npz")
    assert meta["class_names"] == ["blue", "green", "red"]
    # A copy of the run that stopped before its first checkpoint resumes from init.npz.
    copy = tmp_path / "b"
    copy.mkdir()
    for name in ("config.json", "init.npz"):
        shutil.copy(tmp_path / "a" / name, copy / name)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "out": str(copy)}))
    again = resume(copy, progress=quiet)
    for key, value in first.model.state_dict().items():
        np.testing.assert_array_equal(again.model.state_dict()[key], value, err_msg=key)

    both = make_config(overrides={**keys, "init_from": str(tmp_path / "a")})
    with pytest.raises(ValueError, match="exclude each other"):
        train(both, False, quiet, model())
    wrong = pn.Sequential([pn.Flatten(), pn.Dense(3 * 8 * 8, 5)])
    with pytest.raises(ValueError, match=r"outputs \(5,\) per image, but the data has 3 classes"):
        train(make_config(overrides={**keys, "out": str(tmp_path / "c")}), False, quiet, wrong)


# -- path advice ------------------------------------------------------------------------------
def test_resume_advice_names_the_run_folder(cli, run, tmp_path):
    one_error_line(
        cli("train", "--resume", run / "last.ckpt.npz"),
        "--resume takes a run folder, not a file",
        f"--resume {run}",
    )
    one_error_line(cli("train", "--resume", tmp_path / "typo"), "run folder does not exist")


def test_an_existing_run_folder_suggests_a_new_out(cli, run, colour_folder, tiny_args):
    result = cli("train", colour_folder, "--out", run, *tiny_args)
    one_error_line(result, f"--resume {run}", "--out with a new folder", "--overwrite to delete")


def test_report_json_of_a_run_names_its_data_folder(run, colour_folder):
    assert json.loads((run / "report.json").read_text())["data_dir"] == str(colour_folder)


def test_skipped_files_warning_points_into_the_run_folder(
    cli, colour_folder, tiny_args, tmp_path, caplog
):
    data = shutil.copytree(colour_folder, tmp_path / "data")
    (data / "red" / "broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "r"
    result = cli("train", data, "--out", out, "--epochs", 1, *tiny_args)
    assert result.code == 0, result.err
    assert f"list: {out / 'skipped.txt'}" in caplog.text
    assert f"skipped files: {out / 'skipped.txt'}" in result.out
    assert "broken.png" in (out / "skipped.txt").read_text()


# -- pipes, cache, help ------------------------------------------------------------------------
def test_a_closed_pipe_ends_quietly(purenn_subprocess, run, colour_folder):
    """`purenn predict ... | head -1` with a real pipe: exit 141, nothing on stderr."""
    many = [colour_folder] * 30  # about 200 kB of JSON: more than a pipe buffer holds
    proc = purenn_subprocess("predict", run, *many, "--json", "--threads", 1)
    first = proc.stdout.readline()
    proc.stdout.close()
    proc.wait(timeout=60)
    assert first == "[\n"
    assert proc.returncode == 141 and proc.stderr.read() == ""


def test_a_closed_pipe_in_evaluate_is_no_error(run, colour_folder, monkeypatch, capsys, tmp_path):
    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    code = main(["evaluate", str(run), str(colour_folder), "--json", "--out", str(tmp_path)])
    assert code == 141 and "error" not in capsys.readouterr().err


def test_cache_list_and_clear(cli, colour_folder, tmp_path, tiny_args):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "notes.txt").write_text("mine")
    other = shutil.copytree(colour_folder, tmp_path / "other")
    for folder in (colour_folder, other):
        args = (
            "train",
            folder,
            "--out",
            tmp_path / f"run-{folder.name}",
            "--epochs",
            1,
            *tiny_args,
        )
        assert cli(*args, "--cache-dir", cache).code == 0
    listing = cli("cache", "list", "--cache-dir", cache)
    assert listing.code == 0
    assert str(colour_folder) in listing.out and str(other) in listing.out
    assert "8x8  36 images" in listing.out and "2 entries" in listing.out
    cleared = cli("cache", "clear", other, "--cache-dir", cache)
    assert "removed 1 cache entry of" in cleared.out
    listing = cli("cache", "list", "--cache-dir", cache)
    assert str(other) not in listing.out and "1 entry" in listing.out
    assert "removed 1 cache entry" in cli("cache", "clear", "--cache-dir", cache).out
    assert sorted(p.name for p in cache.iterdir()) == ["notes.txt"]  # nothing else touched


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "summary", "demo", "cache"])
def test_every_help_shows_defaults_and_an_example(cli, command):
    result = cli(command, "--help")
    assert result.code == 0
    assert "(default:" in result.out and "\nexample:\n  purenn " + command in result.out


def test_help_defaults_of_the_options_users_reach_for(cli):
    assert "classes per image (default: 5)" in cli("predict", "--help").out
    assert "(default: 16 for demo-cnn, else 128)" in cli("summary", "--help").out
    assert "(default: 15)" in cli("demo", "--help").out


def test_summary_of_a_preset_describes_it_as_used(cli):
    result = cli("summary", "demo-cnn")
    assert result.out.startswith("demo-cnn: 10 classes, input (3, 16, 16)")
    assert cli("summary", "plantvillage-cnn").out.startswith("plantvillage-cnn: 38 classes")
    assert cli("summary", "demo-cnn", "--num-classes", 1).out.startswith("demo-cnn: 1 class,")


def test_summary_of_a_run_folder(cli, run):
    assert cli("summary", run).out.startswith(f"{run}: 3 classes, input (3, 8, 8)")
