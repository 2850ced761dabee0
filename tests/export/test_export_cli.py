"""``purenn export`` and the .safetensors model file in predict, evaluate and summary."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from export_models import META, every_layer_model
from PIL import Image

from purenn.cli.main import main
from purenn.data import load_image
from purenn.io import load_model, save_checkpoint, save_model
from purenn.kernels.ops import softmax
from purenn.training import evaluate


@pytest.fixture
def model_file(tmp_path):
    return save_model(tmp_path / "model.npz", every_layer_model(), {**META, "preset": "custom"})


@pytest.fixture
def leaves(tmp_path):
    """``<class>/<n>.png`` for the model's three classes, 2 images each, 12x10 (resized to 8)."""
    rng = np.random.default_rng(5)
    for name in META["class_names"]:
        (tmp_path / "leaves" / name).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "leaves" / name / f"{i}.png")
    return tmp_path / "leaves"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_safetensors_export_serves_predict_evaluate_and_summary(
    tmp_path, model_file, leaves, capsys
):
    out = tmp_path / "model.safetensors"
    code, stdout, _ = run(capsys, "export", model_file, out)
    assert code == 0 and "safetensors" in stdout and out.is_file()
    results = {}
    for path in (model_file, out):
        code, stdout, _ = run(capsys, "predict", path, leaves, "--json", "--top-k", "3")
        assert code == 0
        results[path.suffix] = json.loads(stdout)
    assert results[".safetensors"] == results[".npz"]
    reports = [
        evaluate(path, leaves, cache_dir=tmp_path / "cache", progress=False)
        for path in (model_file, out)
    ]
    assert reports[0]["confusion_matrix"] == reports[1]["confusion_matrix"]
    code, stdout, _ = run(capsys, "summary", out)
    assert code == 0 and "3 classes" in stdout
    assert load_model(out)[1]["preset"] == "custom"


def test_onnx_export_follows_the_documented_input_contract(tmp_path, model_file, leaves, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = tmp_path / "model.onnx"
    code, stdout, _ = run(capsys, "export", model_file, out)
    assert code == 0 and "ONNX opset 17, input (batch, 3, 8, 8)" in stdout
    code, stdout, _ = run(capsys, "predict", model_file, leaves, "--json", "--top-k", "3")
    predictions = json.loads(stdout)
    # The contract: the image resized as purenn does, uint8 RGB / 255, float32 NCHW.
    files = [p["file"] for p in predictions]
    x = np.stack([load_image(f, META["image_size"]) for f in files]).astype(np.float32) / 255
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probabilities = softmax(session.run(None, {"image": x})[0].astype(np.float64))
    names = META["class_names"]
    for row, prediction in zip(probabilities, predictions, strict=True):
        for p in prediction["predictions"]:
            assert abs(row[names.index(p["class"])] - p["probability"]) < 1e-5
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == names and json.loads(meta["preset"]) == "custom"


def test_a_checkpoint_exports_without_its_training_state(tmp_path, capsys):
    path = save_checkpoint(
        tmp_path / "last.ckpt.npz",
        every_layer_model(),
        META,
        {"epoch": 3},
        {"optim/m.0": np.ones(2)},
    )
    out = tmp_path / "m.safetensors"
    assert run(capsys, "export", path, out)[0] == 0
    _, meta = load_model(out)
    assert "state" not in meta and meta["format"] == "purenn-model"


@pytest.mark.parametrize(
    "out, message",
    [
        ("model.pt", "OUT must end in .onnx or .safetensors (the format is chosen by the suffix), "
         "received: OUT="),
        ("missing/model.onnx", "the folder of OUT does not exist"),
    ],
)  # fmt: skip
def test_bad_output_is_one_line_and_writes_nothing(tmp_path, model_file, capsys, out, message):
    code, _, err = run(capsys, "export", model_file, tmp_path / out)
    assert code == 2 and err.startswith("purenn: error: ") and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_a_bad_model_file_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00[]")
    code, _, err = run(capsys, "export", bad, tmp_path / "out.onnx")
    assert code == 2 and f"invalid safetensors header in {bad}" in err
    code, _, err = run(capsys, "predict", bad, bad)
    assert code == 2 and str(bad) in err
    assert not (tmp_path / "out.onnx").exists()


def test_safetensors_model_files_need_no_extra(tmp_path, model_file, leaves):
    """With onnx, onnxruntime, safetensors and torch unimportable, .safetensors still works and
    ONNX export says what to install."""
    out = tmp_path / "model.safetensors"
    script = f"""
import sys
for name in ("onnx", "onnxruntime", "safetensors", "torch"):
    sys.modules[name] = None
from purenn.cli.main import main
assert main(["export", {str(model_file)!r}, {str(out)!r}]) == 0
assert main(["predict", {str(out)!r}, {str(leaves)!r}, "--quiet"]) == 0
sys.exit(main(["export", {str(out)!r}, {str(tmp_path / "m.onnx")!r}]))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2, done.stderr
    assert 'ONNX export needs the onnx package: pip install "purenn[export]"' in done.stderr
    assert all(name in done.stdout for name in META["class_names"])  # predict's table
