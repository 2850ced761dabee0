"""Overlays, the one-photo API for servers, and ``purenn explain`` on the command line."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from explain_models import bn_dropout_cnn
from PIL import Image

from purenn.cli.main import main
from purenn.data import load_image, normalize_batch
from purenn.data.decode import square_chw
from purenn.explain import ExplainError, explain, explain_photo, overlay, render
from purenn.explain.overlay import colormap_table
from purenn.io import save_model

CLASSES = ["healthy", "late blight", "mosaic", "rust"]
TEMPERATURE = 0.5  # the model file's: explained probabilities are softmax(logits / T)


def _photo(height=40, width=56, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def model_file(tmp_path):
    model = bn_dropout_cnn(np.float32)
    meta = {
        "class_names": CLASSES,
        "image_size": 16,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "temperature": TEMPERATURE,
    }
    return save_model(tmp_path / "model.npz", model, meta), model, meta


def test_overlay_blends_the_colour_in_proportion_to_the_heat():
    photo = _photo()
    heat = np.zeros(photo.shape[:2])
    np.testing.assert_array_equal(overlay(photo, heat), photo)  # cold: the photo unchanged
    heat[:] = 1
    hot = colormap_table()[255].astype(np.float64)
    expected = np.round(0.4 * photo + 0.6 * hot).astype(np.uint8)
    np.testing.assert_array_equal(overlay(photo, heat), expected)
    with pytest.raises(ValueError, match=r"heat map shape \(3, 3\) differs"):
        overlay(photo, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="photo must be uint8"):
        overlay(photo.astype(np.float32), heat)


def test_render_puts_photo_and_overlay_side_by_side_with_a_caption():
    photo = _photo(32, 32)
    image = render(photo, np.ones((32, 32)), caption="rust 97.0%", panel=64)
    assert image.size == (128, 64 + 16)
    assert render(photo, np.ones((32, 32)), caption="a\nb").size == (64, 32 + 30)
    pixels = np.asarray(image)
    assert (pixels[64:] < 128).any()  # caption text drawn on the white strip
    np.testing.assert_array_equal(np.asarray(render(photo, np.zeros((32, 32))))[:, :32], photo)


def test_explain_photo_prepares_the_photo_as_training_did(model_file):
    _, model, meta = model_file
    photo = _photo()
    result = explain_photo(model, meta, photo)
    with Image.open(io.BytesIO(result.png)) as png:
        assert png.format == "PNG" and png.size == (56, 40)
    resized = np.asarray(Image.fromarray(photo).resize((16, 16), Image.Resampling.BILINEAR))
    x = normalize_batch(resized.transpose(2, 0, 1)[None], meta["mean"], meta["std"])
    expected = explain(model, x, temperature=TEMPERATURE)
    assert result.class_index == expected.targets[0] and result.class_name in CLASSES
    assert result.predicted == result.class_name
    assert result.probability == pytest.approx(float(expected.probabilities.max()), rel=1e-6)
    uncalibrated = float(explain(model, x).probabilities.max())
    assert abs(result.probability - uncalibrated) > 1e-3

    other = explain_photo(model, meta, photo, method="saliency", target="mosaic")
    assert other.class_name == "mosaic" and other.class_index == 2
    with pytest.raises(ExplainError, match="unknown class 'blight'"):
        explain_photo(model, meta, photo, target="blight")
    with pytest.raises(ExplainError, match="photo must be uint8 RGB"):
        explain_photo(model, meta, photo[..., 0])
    with pytest.raises(ExplainError, match="lacks"):
        explain_photo(model, {"class_names": CLASSES}, photo)


def test_explain_photo_with_prepared_pixels_explains_them(model_file):
    _, model, meta = model_file
    photo = _photo()
    same = explain_photo(model, meta, photo, pixels=square_chw(Image.fromarray(photo), 16))
    assert same == explain_photo(model, meta, photo)
    other = np.ascontiguousarray(np.flip(square_chw(Image.fromarray(photo), 16), axis=2))
    flipped = explain_photo(model, meta, photo, pixels=other)
    x = normalize_batch(other[None], meta["mean"], meta["std"])
    expected = explain(model, x, temperature=TEMPERATURE).probabilities.max()
    assert flipped.probability == pytest.approx(float(expected))
    assert flipped.png != same.png
    with pytest.raises(ExplainError, match=r"pixels must be uint8 of shape \(3, 16, 16\)"):
        explain_photo(model, meta, photo, pixels=other[:, :8])


def _write_images(folder, count):
    folder.mkdir()
    for i in range(count):
        Image.fromarray(_photo(seed=i)).save(folder / f"leaf{i}.png")
    return folder


def test_cli_writes_one_captioned_overlay_per_image(model_file, tmp_path, capsys):
    path, _, _ = model_file
    images = _write_images(tmp_path / "leaves", 3)
    out = tmp_path / "out"
    code = main(["explain", str(path), str(images), "--out", str(out), "--batch-size", "2"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("%" in line and "gradcam.png" in line for line in lines)
    for i in range(3):
        with Image.open(out / f"leaf{i}.gradcam.png") as png:
            assert png.size == (2 * 256, 256 + 16)

    code = main(
        ["explain", str(path), str(images / "leaf0.png"), "--out", str(out), "--json"]
        + ["--method", "saliency", "--smooth", "2", "--class", "rust"]
    )
    assert code == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["class"] == "rust" and record["overlay"].endswith("leaf0.saliency.png")
    assert 0 < record["probability"] < 1 and record["predicted"] in CLASSES
    _, model, meta = model_file
    x = normalize_batch(load_image(images / "leaf0.png", 16)[None], meta["mean"], meta["std"])
    calibrated = explain(model, x, temperature=TEMPERATURE).probabilities[0, CLASSES.index("rust")]
    assert record["probability"] == pytest.approx(float(calibrated), rel=1e-5)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--class", "blight"], "unknown class 'blight'; the model's classes: healthy"),
        (["--class", "7"], "class must be a name or an index below 4"),
        (["--layer", "8"], "layer 8 (Dense"),
        (["--method", "lime"], "invalid choice: 'lime'"),
    ],
)
def test_cli_reports_bad_arguments_in_one_line(model_file, tmp_path, capsys, args, message):
    path, _, _ = model_file
    images = _write_images(tmp_path / "leaves", 1)
    code = main(["explain", str(path), str(images), "--out", str(tmp_path / "out")] + args)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("purenn: error: ") and message in err
    assert "Traceback" not in err


def test_cli_reports_missing_images_and_models_before_writing(model_file, tmp_path, capsys):
    path, _, _ = model_file
    out = tmp_path / "out"
    assert main(["explain", str(path), str(tmp_path / "nope.jpg"), "--out", str(out)]) == 2
    assert "image does not exist" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "none.npz"), "x.jpg", "--out", str(out)]) == 2
    assert "model file does not exist" in capsys.readouterr().err
    assert not out.exists()
