"""Model files and checkpoints: round trips, atomic writes, what is refused."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import purenn as pn
from purenn.io import (
    ModelFileError,
    atomic_write,
    join_state,
    load_checkpoint,
    load_model,
    save_checkpoint,
    save_model,
    split_state,
)
from purenn.optim.optimizers import Adam
from purenn.presets import build_preset

META = {"class_names": ["a", "b", "c"], "image_size": 8, "mean": [0.1, 0.2, 0.3], "std": [1, 2, 3]}


def trained_like(model: pn.Sequential, seed: int = 1) -> pn.Sequential:
    """Move every parameter and buffer away from its initial value (variances stay positive)."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, value in model.state_dict().items():
        moved = value + rng.normal(scale=0.1, size=value.shape).astype(value.dtype)
        state[key] = np.abs(moved) + 0.1 if key.endswith("running_var") else moved
    model.load_state_dict(state)
    return model


def bn_model() -> pn.Sequential:
    rng = np.random.default_rng(0)
    return pn.Sequential(
        [
            pn.Conv2D(3, 4, 3, padding=1, rng=rng, weight_norm=True),
            pn.BatchNorm2D(4),
            pn.ReLU(),
            pn.MaxPool2D(2),
            pn.Flatten(),
            pn.Dropout(0.3, rng=rng),
            pn.Dense(64, 3, init="glorot", rng=rng),
        ],
        input_shape=(3, 8, 8),
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: build_preset("demo-cnn", num_classes=3, image_size=8),
        lambda: build_preset("plantvillage-ann", num_classes=3, image_size=8, weight_norm=True),
        bn_model,
    ],
)
def test_round_trip_gives_identical_predictions(make, tmp_path):
    model = trained_like(make())
    x = np.random.default_rng(2).normal(size=(5, 3, 8, 8)).astype(np.float32)
    expected = model.forward(x, training=False)
    path = save_model(tmp_path / "m.npz", model, META)
    loaded, meta = load_model(path)
    np.testing.assert_array_equal(loaded.forward(x, training=False), expected)
    assert loaded.get_config() == model.get_config()
    assert {k: meta[k] for k in META} == META and meta["format"] == "purenn-model"
    for key, value in model.state_dict().items():
        assert loaded.state_dict()[key].dtype == value.dtype == np.float32
    assert not loaded.training  # ready for inference


def test_model_file_layout(tmp_path):
    model = build_preset("demo-cnn", num_classes=3, image_size=8)
    path = save_model(tmp_path / "m.npz", model, META)
    with np.load(path, allow_pickle=False) as archive:
        files = set(archive.files)
        header = json.loads(archive["__purenn__"].tobytes().decode("utf-8"))
        assert archive["__purenn__"].dtype == np.uint8
    assert files == set(model.state_dict()) | {"__purenn__"}
    assert header["format_version"] == 1 and header["architecture"] == model.get_config()


def test_save_model_with_other_weights(tmp_path):
    model = build_preset("demo-cnn", num_classes=3, image_size=8)
    best = trained_like(build_preset("demo-cnn", num_classes=3, image_size=8)).state_dict()
    loaded, _ = load_model(save_model(tmp_path / "m.npz", model, META, weights=best))
    for key, value in best.items():
        np.testing.assert_array_equal(loaded.state_dict()[key], value)


def test_checkpoint_round_trip_and_it_is_also_a_model(tmp_path):
    model = trained_like(build_preset("demo-cnn", num_classes=3, image_size=8))
    optimizer = Adam(model.parameters(), lr=0.01)
    for _, grad in model.parameters():
        grad[...] = 1.0
    optimizer.step()
    scalars, arrays = split_state(optimizer.state_dict(), "optim")
    state = {"optimizer": scalars, "loop": {"epoch": 3, "history": [{"loss": 0.1}]}}
    path = save_checkpoint(tmp_path / "c.npz", model, META, state, arrays)

    restored, meta, got_state, got_arrays = load_checkpoint(path)
    assert got_state == state and meta["format"] == "purenn-checkpoint"
    again = Adam(restored.parameters(), lr=1.0)
    again.load_state_dict(join_state(got_state["optimizer"], got_arrays, "optim"))
    for key, value in optimizer.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[key], value)
    as_model, _ = load_model(path)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(as_model.state_dict()[key], value)
    with pytest.raises(ModelFileError, match="not a purenn checkpoint"):
        load_checkpoint(save_model(tmp_path / "m.npz", model, META))


def test_checkpoint_state_arrays_need_a_prefix(tmp_path):
    model = build_preset("demo-cnn", num_classes=3, image_size=8)
    with pytest.raises(ValueError, match="must contain '/'"):
        save_checkpoint(tmp_path / "c.npz", model, META, {}, {"0.weight": np.zeros(1)})


def test_newer_format_version_is_refused(tmp_path):
    model = build_preset("demo-cnn", num_classes=3, image_size=8)
    path = save_model(tmp_path / "m.npz", model, META)
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    header = json.loads(arrays["__purenn__"].tobytes())
    header["format_version"] = 2
    arrays["__purenn__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(path, **arrays)
    with pytest.raises(ModelFileError, match="format_version 2"):
        load_model(path)


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    model = build_preset("demo-cnn", num_classes=3, image_size=8)
    path = save_model(tmp_path / "m.npz", model, META, weights={"0.weight": np.zeros(2)})
    with pytest.raises(ModelFileError, match="damaged model file .*missing keys"):
        load_model(path)


def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "metrics.csv"
    atomic_write(target, "old\n")

    def crash(f):
        f.write(b"half a fi")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_text() == "old\n"
    atomic_write(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    atomic_write(target, lambda f: f.write(b"streamed"))
    assert target.read_bytes() == b"streamed"
    assert os.listdir(tmp_path) == ["metrics.csv"]


def test_atomic_write_errors_name_the_file_being_written_not_the_temporary(tmp_path):
    target = tmp_path / "missing folder" / "model.npz"
    with pytest.raises(FileNotFoundError) as raised:
        atomic_write(target, b"x")
    assert raised.value.filename == str(target) and ".tmp" not in str(raised.value)


def test_model_saves_are_atomic_too(tmp_path, monkeypatch):
    """A crash while an archive is written keeps the previous model file intact."""
    model = build_preset("demo-cnn", num_classes=3, image_size=8)
    path = save_model(tmp_path / "best.npz", model, META)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError("no space left on device")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="no space"):
        save_model(path, trained_like(model), META)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["best.npz"]
