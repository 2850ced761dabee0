"""Test-time augmentation: the views, the averaged probabilities, and --tta in predict/evaluate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import purenn as pn
from purenn.cli.main import main
from purenn.data import normalize_batch
from purenn.inference import class_probabilities, predict
from purenn.inference.tta import MAX_VIEWS, VIEWS, check_views, tta_logits, view
from purenn.io import save_model
from purenn.kernels.ops import softmax
from purenn.training import evaluate

SIZE = 8
CLASSES = ["a", "b", "c"]
TEMPERATURE = 0.7


def numpy_view(image: np.ndarray, index: int) -> np.ndarray:
    """The same views of one (H, W) image spelled with NumPy's own flips and turns."""
    return [
        image,
        np.fliplr(image),
        np.flipud(image),
        np.rot90(image, 2),
        np.rot90(image, 1),
        np.rot90(image, 3),
        image.T,
        np.rot90(image, 2).T,
    ][index]


def test_the_eight_views_are_the_symmetries_of_the_square_in_the_documented_order():
    image = np.arange(16).reshape(4, 4)
    batch = np.stack([image, image + 100])[:, None]  # (2, 1, 4, 4)
    seen = set()
    for index in range(MAX_VIEWS):
        out = view(batch, index)
        for n in range(2):
            np.testing.assert_array_equal(out[n, 0], numpy_view(batch[n, 0], index), VIEWS[index])
        seen.add(out[0, 0].tobytes())
    assert len(seen) == 8 and VIEWS[:4] == ("identity", "hflip", "vflip", "rot180")


def test_turns_of_non_square_images_are_refused_by_name():
    x = np.zeros((1, 3, 4, 6))
    assert view(x, 3).shape == x.shape  # flips need no square
    with pytest.raises(ValueError, match="rot90 view needs square images"):
        view(x, 4)


def linear_model(seed: int) -> pn.Sequential:
    """Not invariant to any flip: a Dense layer sees every pixel at its own place."""
    rng = np.random.default_rng(seed)
    return pn.Sequential(
        [pn.Flatten(), pn.Dense(3 * SIZE * SIZE, len(CLASSES), rng=rng)],
        input_shape=(3, SIZE, SIZE),
    ).eval()


def pooled_model(seed: int) -> pn.Sequential:
    """Invariant to every flip and turn: 1x1 convolutions, then the mean over all pixels."""
    rng = np.random.default_rng(seed)
    return pn.Sequential(
        [
            pn.Conv2D(3, 6, 1, rng=rng),
            pn.ReLU(),
            pn.GlobalAvgPool2D(),
            pn.Dense(6, len(CLASSES), rng=rng),
        ],
        input_shape=(3, SIZE, SIZE),
    ).eval()


META = {
    "class_names": CLASSES,
    "image_size": SIZE,
    "mean": [0.4, 0.5, 0.6],
    "std": [0.2, 0.25, 0.3],
    "temperature": TEMPERATURE,
}


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8)


def test_one_view_is_the_plain_answer_exactly():
    model, x = linear_model(0), images(5)
    logits = model.forward(normalize_batch(x, META["mean"], META["std"]), training=False)
    plain = softmax(logits.astype(np.float64) / TEMPERATURE)
    np.testing.assert_array_equal(class_probabilities(model, x, META, views=1), plain)
    np.testing.assert_array_equal(class_probabilities(model, x, META), plain)
    assert tta_logits(lambda batch: logits, x, 2.0, 1) is logits


@pytest.mark.parametrize("views", [2, 3, 4, 8])
def test_views_average_the_calibrated_probabilities(views):
    model, x = linear_model(1), images(4, seed=1)
    expected = np.mean(
        [class_probabilities(model, numpy_views(x, v), META) for v in range(views)], axis=0
    )
    got = class_probabilities(model, x, META, views=views)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-12)


def numpy_views(batch: np.ndarray, index: int) -> np.ndarray:
    return np.stack(
        [np.stack([numpy_view(channel, index) for channel in image]) for image in batch]
    )


def test_a_model_invariant_to_flips_gives_the_same_answer_with_every_view_count():
    model, x = pooled_model(2), images(6, seed=2)
    plain = class_probabilities(model, x, META)
    for views in range(2, MAX_VIEWS + 1):
        # float32 sums over the pixels in another order: equal to rounding.
        np.testing.assert_allclose(class_probabilities(model, x, META, views), plain, rtol=2e-6)


def test_probabilities_that_underflow_stay_finite():
    def forward(x: np.ndarray) -> np.ndarray:  # certain of class 1, and mirrored of class 0
        return np.array([[0.0, 2000.0]] if x[0, 0, 0, 0] == 0 else [[2000.0, 0.0]])

    x = np.arange(16.0).reshape(1, 1, 4, 4)
    logits = tta_logits(forward, x, temperature=1.0, views=2)
    assert np.isfinite(logits).all()
    np.testing.assert_allclose(softmax(logits), [[0.5, 0.5]])


@pytest.mark.parametrize("bad", [0, 9, -1, 2.0, True, "4", None])
def test_bad_view_counts_are_clear_errors(bad):
    with pytest.raises(ValueError, match=r"tta must be a number of views from 1 to 8 \(in order: "
                       r"identity, hflip, .*received: tta="):  # fmt: skip
        check_views(bad)


# -- predict and evaluate --------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, Path]:
    """A model file (not flip-invariant) and a labelled folder of its classes."""
    root = tmp_path_factory.mktemp("tta")
    model_path = save_model(root / "model.npz", linear_model(3), META)
    data = root / "data"
    for label, name in enumerate(CLASSES):
        (data / name).mkdir(parents=True)
        for i, image in enumerate(images(4, seed=10 + label)):
            Image.fromarray(image.transpose(1, 2, 0)).save(data / name / f"{i}.png")
    return model_path, data


def test_predict_with_one_view_equals_predict_without(saved):
    model_path, data = saved
    assert predict(model_path, [data], top_k=3, tta=1) == predict(model_path, [data], top_k=3)
    tta = predict(model_path, [data], top_k=3, tta=8)
    assert tta != predict(model_path, [data], top_k=3)


def test_evaluate_with_views(saved, tmp_path):
    model_path, data = saved
    cache = tmp_path / "cache"
    plain = evaluate(model_path, data, cache_dir=cache, progress=False)
    one = evaluate(model_path, data, cache_dir=cache, progress=False, tta=1)
    assert plain == one and plain["tta"] == 1
    four = evaluate(model_path, data, cache_dir=cache, progress=False, tta=4)
    assert four["tta"] == 4 and four["samples"] == plain["samples"]
    # Its loss is the NLL of the averaged probabilities, computed here from predict's.
    files = sorted(data.rglob("*.png"))
    probs = np.array(
        [
            [p["probability"] for p in sorted(r["predictions"], key=lambda p: p["class"])]
            for r in predict(model_path, files, top_k=3, tta=4)
        ]
    )
    labels = np.array([CLASSES.index(f.parent.name) for f in files])
    nll = -np.log(probs[np.arange(len(files)), labels]).mean()
    assert four["loss"] == pytest.approx(nll, rel=1e-6)
    assert four["accuracy"] == pytest.approx(np.mean(probs.argmax(axis=1) == labels))


def test_cli_tta(saved, tmp_path, capsys):
    model_path, data = saved
    image = next(data.rglob("*.png"))
    assert main(["predict", str(model_path), str(image), "--tta", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == predict(model_path, [image], tta=8)
    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    assert main(["evaluate", str(model_path), str(copy), "--tta", "2", "--out",
                 str(tmp_path / "eval"), "--cache-dir", str(tmp_path / "cache")]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "each the mean of 2 views" in captured.err + captured.out
    assert json.loads((tmp_path / "eval" / "report.json").read_text())["tta"] == 2


@pytest.mark.parametrize("value", ["0", "9", "two"])
def test_cli_bad_tta_is_one_error_line(saved, capsys, value):
    model_path, data = saved
    assert main(["predict", str(model_path), str(data), "--tta", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "argument --tta: must be a number of views from 1 to 8" in err[0]
