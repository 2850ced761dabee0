"""The model file's OOD test: fitting, storing and reading it, and answering with it."""

from __future__ import annotations

import numpy as np
import pytest

from purenn.data import normalize_batch
from purenn.inference.ood import features_and_logits
from purenn.inference.probabilities import class_probabilities
from purenn.inference.recognition import (
    SCORES,
    answer,
    fit_ood_test,
    read_ood_test,
)
from purenn.io import ModelFileError, load_model, load_model_arrays, save_model
from purenn.nn.layers import Conv2D, Dense, Flatten, ReLU
from purenn.nn.sequential import Sequential

META = {"class_names": ["a", "b", "c"], "image_size": 4, "mean": [0.5] * 3, "std": [0.25] * 3}


def _model():
    return Sequential(
        [Conv2D(3, 4, 3, padding=1, rng=0), ReLU(), Flatten(), Dense(64, 8, rng=1), ReLU(),
         Dense(8, 3, rng=2)],
        input_shape=(3, 4, 4),
    ).eval()  # fmt: skip


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 4, 4), dtype=np.uint8)


def _normalised(images):
    return normalize_batch(images, np.array(META["mean"]), np.array(META["std"]))


def _fitted(model, score):
    features, logits = features_and_logits(model, _normalised(_images(60, 0)))
    labels = np.arange(60) % 3
    return fit_ood_test(
        features[:40], labels[:40], features[40:], logits[40:], score, k=5, temperature=1.3
    )


@pytest.mark.parametrize("score", SCORES)
def test_a_fitted_test_round_trips_through_a_model_file_and_answers_as_fitted(score, tmp_path):
    model = _model()
    test = _fitted(model, score)
    entry, arrays = test.to_file()
    path = save_model(tmp_path / "m.npz", model, {**META, "ood": entry}, arrays=arrays)
    loaded, meta = load_model(path)  # the OOD arrays are not taken for weights
    read = read_ood_test(path, meta)
    assert read.score == score and read.threshold == test.threshold and read.keep == 0.95
    images = _images(9, 1)
    got = answer(loaded, images, meta, read)
    np.testing.assert_allclose(got.probabilities, class_probabilities(model, images, META))
    expected = test.scores(*features_and_logits(model, _normalised(images)))
    np.testing.assert_allclose(got.ood_scores, expected, rtol=1e-12)
    assert np.array_equal(got.recognized, expected <= test.threshold)


def test_the_threshold_keeps_95_percent_of_the_validation_images():
    model = _model()
    test = _fitted(model, "knn")
    features, logits = features_and_logits(model, _normalised(_images(60, 0)))
    assert (test.scores(features[40:], logits[40:]) <= test.threshold).sum() == 19  # of 20


def test_a_model_file_without_a_test_recognizes_everything(tmp_path):
    model = _model()
    path = save_model(tmp_path / "old.npz", model, META)
    _, meta = load_model(path)
    assert read_ood_test(path, meta) is None and load_model_arrays(path) == {}
    got = answer(model, _images(4, 2), meta, None)
    assert got.ood_scores is None and got.recognized.all() and got.recognized.shape == (4,)


@pytest.mark.parametrize(
    ("entry", "arrays", "message"),
    [
        ({"score": "nope", "threshold": 1, "keep": 0.95, "temperature": 1}, {}, "ood.score"),
        ({"score": "energy", "threshold": "x", "keep": 0.95, "temperature": 1}, {}, "threshold"),
        ({"score": "energy", "threshold": 1, "keep": 0.95, "temperature": 0}, {}, "temperature"),
        ({"score": "knn", "threshold": 1, "keep": 0.95, "temperature": 1, "k": 3}, {}, "ood/bank"),
        (
            {"score": "knn", "threshold": 1, "keep": 0.95, "temperature": 1, "k": 30},
            {"ood/bank": np.ones((5, 8))},
            "k 30 for a bank",
        ),
        (
            {"score": "mahalanobis", "threshold": 1, "keep": 0.95, "temperature": 1},
            {"ood/means": np.ones((3, 8)), "ood/whitening": np.eye(4)},
            "whitening",
        ),
    ],
)
def test_a_damaged_test_is_a_model_file_error(entry, arrays, message, tmp_path):
    path = save_model(tmp_path / "m.npz", _model(), {**META, "ood": entry}, arrays=arrays)
    _, meta = load_model(path)
    with pytest.raises(ModelFileError, match=message) as err:
        read_ood_test(path, meta)
    assert str(path) in str(err.value)


def test_model_file_extra_arrays_need_a_slash(tmp_path):
    with pytest.raises(ValueError, match="must contain '/'"):
        save_model(tmp_path / "m.npz", _model(), META, arrays={"bank": np.ones(3)})
