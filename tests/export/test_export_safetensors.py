"""safetensors: the format against the reference package, model files, and PyTorch round trips."""

from __future__ import annotations

import json
import pickle
import struct

import numpy as np
import pytest
from export_models import META, every_layer_model, images, moved
from torch_parity import assert_close

import purenn as pn
from purenn.data import normalize_batch
from purenn.export import load_torch_state, read_safetensors, save_safetensors, write_safetensors
from purenn.io import ModelFileError, load_model, save_model
from purenn.presets import build_preset

TORCH_TOL = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "a": rng.normal(size=(2, 3)).astype(np.float32),
        "b.c": rng.normal(size=(4,)),
        "half": rng.normal(size=(1, 2, 1)).astype(np.float16),
        "count": np.array(7, dtype=np.int64),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "big-endian": np.arange(3, dtype=">f4"),
    }


def assert_same_tensors(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for name, value in expected.items():
        assert actual[name].shape == value.shape, name
        assert actual[name].dtype == value.dtype.newbyteorder("="), name
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


# -- the format ---------------------------------------------------------------------------------
def test_write_read_round_trip(tmp_path):
    path = write_safetensors(tmp_path / "t.safetensors", tensors(), {"note": "hi"})
    read, metadata = read_safetensors(path)
    assert_same_tensors(read, tensors())
    assert metadata == {"note": "hi"}
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert (8 + length) % 8 == 0  # the data area starts aligned


def test_reference_package_reads_ours_and_we_read_its(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    safe_open = pytest.importorskip("safetensors").safe_open
    ours = write_safetensors(tmp_path / "ours.safetensors", tensors(), {"note": "hi"})
    assert_same_tensors(st_numpy.load_file(str(ours)), tensors())
    with safe_open(str(ours), "np") as f:
        assert f.metadata() == {"note": "hi"}
    native = {k: v.astype(v.dtype.newbyteorder("=")) for k, v in tensors().items()}
    theirs = tmp_path / "theirs.safetensors"
    st_numpy.save_file(native, str(theirs), metadata={"x": "y"})
    read, metadata = read_safetensors(theirs)
    assert_same_tensors(dict(sorted(read.items())), dict(sorted(native.items())))
    assert metadata == {"x": "y"}


@pytest.mark.parametrize(
    "tensors, metadata, message",
    [
        ({"a": np.zeros(2, dtype=np.int32)}, None, "has dtype int32"),
        ({"a": np.zeros(2, dtype=object)}, None, "has dtype object"),
        ({"__metadata__": np.zeros(2)}, None, "non-empty strings"),
        ({"": np.zeros(2)}, None, "non-empty strings"),
        ({"a": np.zeros(2)}, {"k": 1}, "strings to strings"),
    ],
)
def test_writer_refuses_what_it_cannot_store(tmp_path, tensors, metadata, message):
    with pytest.raises(ValueError, match=message):
        write_safetensors(tmp_path / "t.safetensors", tensors, metadata)
    assert list(tmp_path.iterdir()) == []


# -- wrong or tampered files --------------------------------------------------------------------
def raw_file(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
TAMPERED = {
    "too short": (b"\x10\x00", "too short"),
    "length beyond the file": (raw_file({"a": F32x2}, bytes(8), length=10**6), "exceeds the file"),
    "length over the limit": (raw_file(b"{}", length=2**63), "exceeds the file"),
    "not json": (raw_file(b"{nope"), "invalid safetensors header"),
    "not utf-8": (raw_file(b'{"\xff": 1}'), "invalid safetensors header"),
    "not an object": (raw_file(b"[1, 2]"), "not a JSON object"),
    "duplicate key": (
        raw_file(b'{"a": %s, "a": %s}' % ((json.dumps(F32x2).encode(),) * 2), bytes(8)),
        "duplicate key 'a'",
    ),
    "NaN": (raw_file(b'{"__metadata__": {"a": NaN}}'), "NaN"),
    "metadata not strings": (raw_file({"__metadata__": {"a": 1}}), "strings to strings"),
    "dtype not allowed": (
        raw_file({"a": {**F32x2, "dtype": "BOOL", "data_offsets": [0, 2]}}, bytes(2)),
        "dtype 'BOOL'",
    ),
    "extra key": (raw_file({"a": {**F32x2, "code": "x"}}, bytes(8)), "exactly the keys"),
    "negative dim": (raw_file({"a": {**F32x2, "shape": [-2]}}, bytes(8)), "invalid shape"),
    "bool dim": (raw_file({"a": {**F32x2, "shape": [True, 2]}}, bytes(8)), "invalid shape"),
    "shape vs bytes": (raw_file({"a": {**F32x2, "shape": [3]}}, bytes(8)), "needs 12 bytes"),
    "offsets not a pair": (
        raw_file({"a": {**F32x2, "data_offsets": [0, 4, 8]}}, bytes(8)),
        "invalid data_offsets",
    ),
    "out of bounds": (
        raw_file({"a": {**F32x2, "data_offsets": [8, 16]}}, bytes(8)),
        "ends at byte 16, past the data area of 8 bytes",
    ),
    "gap": (raw_file({"a": {**F32x2, "data_offsets": [4, 12]}}, bytes(12)), "gap before it"),
    "overlap": (
        raw_file({"a": F32x2, "b": {**F32x2, "data_offsets": [4, 12]}}, bytes(12)),
        "overlaps",
    ),
    "trailing bytes": (raw_file({"a": F32x2}, bytes(12)), "cover 8 bytes of a data area of 12"),
    "missing bytes": (raw_file({"a": F32x2}, bytes(4)), "past the data area of 4 bytes"),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_tampered_files_are_refused_naming_file_and_fault(tmp_path, case):
    content, message = TAMPERED[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message) as info:
        read_safetensors(path)
    assert str(path) in str(info.value)
    with pytest.raises(ModelFileError):
        load_model(path)


class Payload:
    """Unpickling this would create the file named ``target``."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_a_pickle_is_refused_and_never_executed(tmp_path, suffix):
    marker = tmp_path / "executed"
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps(Payload(str(marker))))
    with pytest.raises(ModelFileError, match="model"):
        load_model(path)
    assert not marker.exists()


def test_tampered_purenn_metadata_is_refused(tmp_path):
    good = save_safetensors(tmp_path / "m.safetensors", every_layer_model(), META)
    tensors, metadata = read_safetensors(good)
    header = json.loads(metadata["purenn"])
    cases = {
        "not json": ("{", "invalid purenn metadata"),
        "unknown format": (json.dumps({**header, "format": "evil"}), "unknown format"),
        "newer version": (json.dumps({**header, "format_version": 99}), "format_version 99"),
        "bad layer": (
            json.dumps({**header, "architecture": {"layers": [{"type": "os.system"}]}}),
            "unknown type 'os.system'",
        ),
    }
    for case, (text, message) in cases.items():
        path = write_safetensors(tmp_path / f"{case}.safetensors", tensors, {"purenn": text})
        with pytest.raises(ModelFileError, match=message):
            load_model(path)


# -- purenn model files -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        every_layer_model,
        lambda: moved(build_preset("plantvillage-ann", 3, 8, weight_norm=True)),
        lambda: moved(build_preset("demo-cnn", 3, 8).astype(np.float64)),
    ],
)
def test_model_file_round_trip_is_exact(tmp_path, make):
    model = make()
    path = save_safetensors(tmp_path / "m.safetensors", model, META)
    loaded, meta = load_model(path, require=tuple(META))
    x = images(5).astype(next(iter(model.state_dict().values())).dtype)
    np.testing.assert_array_equal(loaded.forward(x, training=False), model.forward(x, False))
    assert loaded.get_config() == model.get_config()
    assert {k: meta[k] for k in META} == META and meta["format"] == "purenn-model"


def test_model_file_holds_torch_names_and_the_architecture(tmp_path):
    path = save_safetensors(tmp_path / "m.safetensors", every_layer_model(), META)
    tensors, metadata = read_safetensors(path)
    assert "0.parametrizations.weight.original0" in tensors and "0.weight_g" not in tensors
    assert "1.running_var" in tensors and "13.weight" in tensors
    header = json.loads(metadata["purenn"])
    assert header["architecture"] == every_layer_model().get_config()


def test_a_bare_state_dict_points_to_load_torch_state(tmp_path):
    path = write_safetensors(tmp_path / "sd.safetensors", {"0.weight": np.zeros((2, 2))})
    with pytest.raises(ModelFileError, match="load_torch_state"):
        load_model(path)


# -- PyTorch round trips ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch_tools():
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    from torch_twin import torch_sequential  # benchmarks/torch_twin.py

    torch.set_num_threads(1)
    return torch, st_torch, torch_sequential


def torch_logits(torch, module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize(
    "make",
    [every_layer_model, lambda: moved(build_preset("plantvillage-cnn", 15, 32))],
    ids=["every-layer", "plantvillage-cnn"],
)
def test_purenn_to_safetensors_to_torch(tmp_path, torch_tools, make):
    torch, st_torch, torch_sequential = torch_tools
    model = make()
    size = model.input_shape[1]
    meta = {**META, "image_size": size}
    path = save_safetensors(tmp_path / "m.safetensors", model, meta)
    # A user's torch side: the same nn.Sequential, strict loading through safetensors.torch.
    module = torch_sequential(model.get_config())
    module.load_state_dict(st_torch.load_file(str(path)), strict=True)
    x = normalize_batch(images(4, model.input_shape), META["mean"], META["std"])
    expected = model.forward(x, training=False)
    assert_close(torch_logits(torch, module, x), expected, TORCH_TOL, "torch vs purenn")


def torch_trained(torch, module, shape: tuple) -> None:
    """Random weights, and a few training-mode passes: BatchNorm statistics and counts move."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
        module.train()
        for _ in range(3):
            module(torch.randn((4, *shape), generator=gen))


def test_torch_to_safetensors_to_purenn(tmp_path, torch_tools):
    torch, st_torch, torch_sequential = torch_tools
    architecture = every_layer_model().get_config()
    module = torch_sequential(architecture)
    torch_trained(torch, module, (3, 8, 8))
    state = module.state_dict()
    assert int(state["1.num_batches_tracked"]) == 3  # present, and ignored by purenn
    path = tmp_path / "torch.safetensors"
    st_torch.save_file(state, str(path))
    model = load_torch_state(path, pn.Sequential.from_config(architecture))
    x = images(6)
    assert_close(model.forward(x, training=False), torch_logits(torch, module, x), TORCH_TOL, "")
    # and on to a purenn model file, which serves predict/evaluate
    save_model(tmp_path / "m.npz", model, META)
    loaded, _ = load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.forward(x, False), model.forward(x, False))


def test_legacy_weight_norm_names_load_too(tmp_path, torch_tools):
    torch, st_torch, torch_sequential = torch_tools
    architecture = every_layer_model().get_config()
    module = torch_sequential(architecture)
    torch_trained(torch, module, (3, 8, 8))
    legacy = {
        key.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): value
        for key, value in module.state_dict().items()
    }
    assert "10.weight_g" in legacy
    st_torch.save_file(legacy, str(tmp_path / "legacy.safetensors"))
    model = load_torch_state(
        tmp_path / "legacy.safetensors", pn.Sequential.from_config(architecture)
    )
    x = images(2)
    assert_close(model.forward(x, False), torch_logits(torch, module, x), TORCH_TOL, "legacy")


def test_torch_preset_state_dict_loads_into_the_preset(tmp_path, torch_tools):
    torch, st_torch, torch_sequential = torch_tools
    model = build_preset("plantvillage-ann", num_classes=15, image_size=8)
    module = torch_sequential(model.get_config())
    path = tmp_path / "ann.safetensors"
    st_torch.save_file(module.state_dict(), str(path))
    load_torch_state(path, model)
    x = images(3) - 0.5
    assert_close(model.forward(x, False), torch_logits(torch, module, x), TORCH_TOL, "ann")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("10.bias"), r"lacks the tensor '10.bias' \(shape \(8,\)\)"),
        (
            lambda s: s.update({"13.weight": np.zeros((3, 9), np.float32)}),
            r"tensor '13.weight' .* has shape \(3, 9\), the model expects \(3, 8\)",
        ),
        (
            lambda s: s.update({"13.weight": np.zeros((3, 8), np.int64)}),
            r"tensor '13.weight' .* has dtype int64, not a float",
        ),
        (lambda s: s.update({"14.weight": np.zeros(2, np.float32)}), r"\['14.weight'\]"),
        (lambda s: s.update({"weight": np.zeros(2, np.float32)}), r"\['weight'\]"),
    ],
    ids=["missing", "mis-shaped", "integer", "unexpected", "unexpected, not indexed"],
)
def test_a_wrong_tensor_is_named(tmp_path, edit, message):
    state, _ = read_safetensors(
        save_safetensors(tmp_path / "m.safetensors", every_layer_model(), META)
    )
    edit(state)
    path = write_safetensors(tmp_path / "edited.safetensors", state)
    target = every_layer_model()
    before = target.state_dict()
    with pytest.raises(ModelFileError, match=message) as info:
        load_torch_state(path, target)
    assert str(path) in str(info.value)
    for key, value in target.state_dict().items():  # nothing was half-loaded
        np.testing.assert_array_equal(value, before[key])
