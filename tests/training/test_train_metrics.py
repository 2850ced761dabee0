"""Classification metrics against scikit-learn, the independent oracle."""

from __future__ import annotations

import numpy as np
import pytest

sk = pytest.importorskip("sklearn.metrics")

from purenn.training.metrics import (  # noqa: E402
    accuracy,
    classification_report,
    confusion_matrix,
    format_report,
    top_k_accuracy,
)


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, size=300)
    logits = rng.normal(size=(300, 6)).astype(np.float32)
    logits[np.arange(300), labels] += 1.0  # better than chance
    logits[:, 5] -= 10.0  # class 5 is never predicted: precision undefined -> 0
    return logits, labels


def test_accuracy_and_top_k(predictions):
    logits, labels = predictions
    assert accuracy(logits, labels) == pytest.approx(sk.accuracy_score(labels, logits.argmax(1)))
    for k in (1, 2, 5):
        expected = sk.top_k_accuracy_score(labels, logits, k=k, labels=range(6))
        assert top_k_accuracy(logits, labels, k) == pytest.approx(expected)
    assert top_k_accuracy(logits, labels, 10) == 1.0  # k capped at the number of classes


def test_confusion_matrix(predictions):
    logits, labels = predictions
    predicted = logits.argmax(1)
    np.testing.assert_array_equal(
        confusion_matrix(labels, predicted, 6),
        sk.confusion_matrix(labels, predicted, labels=range(6)),
    )


def test_report_matches_precision_recall_f1_support(predictions):
    logits, labels = predictions
    names = list("abcdef")
    report = classification_report(logits, labels, names)
    p, r, f, s = sk.precision_recall_fscore_support(
        labels, logits.argmax(1), labels=range(6), zero_division=0
    )
    got = {key: [c[key] for c in report["classes"]] for key in ("precision", "recall", "f1")}
    np.testing.assert_allclose(got["precision"], p)
    np.testing.assert_allclose(got["recall"], r)
    np.testing.assert_allclose(got["f1"], f)
    assert [c["support"] for c in report["classes"]] == s.tolist()
    assert [c["name"] for c in report["classes"]] == names
    predicted = logits.argmax(1)
    assert report["macro_f1"] == pytest.approx(sk.f1_score(labels, predicted, average="macro"))
    assert report["weighted_f1"] == pytest.approx(
        sk.f1_score(labels, predicted, average="weighted")
    )
    assert report["loss"] == pytest.approx(sk.log_loss(labels, softmax(logits)), rel=1e-5)
    assert report["top_k"] == 5 and report["samples"] == 300


def test_macro_f1_skips_classes_absent_from_labels_and_predictions():
    logits = np.eye(3, dtype=np.float32)[[0, 1, 1]]
    labels = np.array([0, 1, 0])
    report = classification_report(logits, labels, ["x", "y", "unused"])
    expected = sk.f1_score(labels, logits.argmax(1), average="macro")  # over classes x, y
    assert report["macro_f1"] == pytest.approx(expected)
    assert report["classes"][2] == {
        "name": "unused", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0
    }  # fmt: skip


def test_format_report_is_a_table_and_a_summary(predictions):
    logits, labels = predictions
    text = format_report(classification_report(logits, labels, list("abcdef")))
    lines = text.splitlines()
    assert lines[0].split() == ["class", "precision", "recall", "f1", "support"]
    report = classification_report(logits, labels, list("abcdef"))
    pairs = len(report["confused_pairs"])
    assert pairs == 10  # random logits: more than 10 confused pairs, the 10 largest listed
    assert len(lines) == 1 + 1 + 6 + 1 + 1 + 1 + pairs
    assert lines[9].startswith("300 images: loss ") and "top-5" in lines[9]
    assert lines[10].startswith("most confused (true -> predicted")


def softmax(logits):
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
