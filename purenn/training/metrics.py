"""Classification metrics in pure NumPy: accuracy, top-k, confusion matrix, precision/recall/F1.

Definitions follow scikit-learn (``accuracy_score``, ``top_k_accuracy_score``,
``confusion_matrix``, ``precision_recall_fscore_support`` with ``zero_division=0``).
"""

from __future__ import annotations

import numpy as np

from purenn.nn.losses import SoftmaxCrossEntropy
from purenn.training.labels import short_labels

# How many confused pairs a report lists.
CONFUSED_PAIRS = 10


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows of ``scores`` (N, K) whose argmax is ``labels`` (N,)."""
    return float(np.mean(np.argmax(scores, axis=1) == labels))


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples whose label is among the ``k`` highest of its ``scores`` row.

    Args:
        scores: (N, K) logits or probabilities, N >= 1.
        labels: (N,) int class indices.
        k: capped at K (then every sample counts).
    """
    scores = np.asarray(scores)
    k = min(int(k), scores.shape[1])
    label_scores = scores[np.arange(len(labels)), labels]
    # Rank = number of classes scoring strictly higher: ties count in the sample's favour.
    rank = (scores > label_scores[:, None]).sum(axis=1)
    return float(np.mean(rank < k))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = predicted class."""
    flat = np.asarray(labels, np.int64) * num_classes + np.asarray(predictions, np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, -1)


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 (float64, 0 where undefined) and support (int64) per class, (K,)."""
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def confused_pairs(cm: np.ndarray, class_names: list[str], limit: int = CONFUSED_PAIRS) -> list:
    """The most frequent mistakes: off-diagonal cells of ``cm``, most images first.

    Args:
        cm: (K, K) counts, row = true class, column = predicted.
        class_names: the K names.
        limit: at most this many pairs.

    Returns:
        ``[{"true", "predicted", "count", "share"}...]`` for the non-zero off-diagonal cells,
        ``share`` being the fraction of the true class's images given that prediction; sorted by
        count, then share, then (true, predicted) index, all descending but the index.
    """
    cm = np.asarray(cm, dtype=np.int64)
    support = cm.sum(axis=1)
    true, predicted = np.nonzero(cm * (1 - np.eye(len(cm), dtype=np.int64)))
    counts = cm[true, predicted]
    shares = counts / support[true]
    # lexsort sorts by its last key first: count, then share, descending; then row, column.
    order = np.lexsort((predicted, true, -shares, -counts))[:limit]
    return [
        {
            "true": class_names[true[i]],
            "predicted": class_names[predicted[i]],
            "count": int(counts[i]),
            "share": float(shares[i]),
        }
        for i in order
    ]


def classification_report(
    logits: np.ndarray, labels: np.ndarray, class_names: list[str], top_k: int = 5
) -> dict:
    """Every test metric of a set of predictions, JSON-able.

    Args:
        logits: (N, K) float scores of the model, N >= 1.
        labels: (N,) int64 true classes.
        class_names: the K class names.
        top_k: k of the top-k accuracy (capped at K).

    Returns:
        ``{"samples", "loss" (plain cross-entropy), "accuracy", "top_k", "top_k_accuracy",
        "macro_f1", "weighted_f1", "classes": [{"name", "precision", "recall", "f1",
        "support"}...], "confusion_matrix": K lists of K ints, "confused_pairs":
        :func:`confused_pairs`}``.
    """
    cm = confusion_matrix(labels, np.argmax(logits, axis=1), len(class_names))
    scores = per_class_scores(cm)
    support = scores["support"]
    # Macro average over the classes that occur (as a label or a prediction), as scikit-learn.
    present = (support > 0) | (cm.sum(axis=0) > 0)
    return {
        "samples": int(len(labels)),
        "loss": SoftmaxCrossEntropy().forward(logits, labels),
        "accuracy": accuracy(logits, labels),
        "top_k": min(top_k, len(class_names)),
        "top_k_accuracy": top_k_accuracy(logits, labels, top_k),
        "macro_f1": float(scores["f1"][present].mean()),
        "weighted_f1": float((scores["f1"] * support).sum() / max(support.sum(), 1)),
        "classes": [
            {
                "name": name,
                "precision": float(scores["precision"][i]),
                "recall": float(scores["recall"][i]),
                "f1": float(scores["f1"][i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        ],
        "confusion_matrix": cm.tolist(),
        "confused_pairs": confused_pairs(cm, class_names),
    }


def format_report(report: dict) -> str:
    """The per-class table, the summary line and the most confused pairs of a report."""
    width = max(len("class"), *(len(c["name"]) for c in report["classes"]))
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    lines.append("-" * len(lines[0]))
    for c in report["classes"]:
        lines.append(
            f"{c['name']:<{width}}  {c['precision']:9.3f}  {c['recall']:6.3f}  {c['f1']:5.3f}"
            f"  {c['support']:7d}"
        )
    lines.append("-" * len(lines[0]))
    lines.append(
        f"{report['samples']} images: loss {report['loss']:.4f}, accuracy "
        f"{100 * report['accuracy']:.2f}%, top-{report['top_k']} "
        f"{100 * report['top_k_accuracy']:.2f}%, macro F1 {report['macro_f1']:.4f}"
    )
    pairs = report.get("confused_pairs")  # absent from reports written before it existed
    if pairs:
        names = [c["name"] for c in report["classes"]]
        short = dict(zip(names, short_labels(names), strict=True))
        lines.append("most confused (true -> predicted: images, share of the true class):")
        lines.extend(
            f"  {short[p['true']]} -> {short[p['predicted']]}: {p['count']}, "
            f"{100 * p['share']:.0f}%"
            for p in pairs
        )
    return "\n".join(lines)


def recognition_summary(scores: np.ndarray, threshold: float, correct: np.ndarray) -> dict:
    """How an OOD threshold filters labelled in-distribution images.

    Args:
        scores: float ``(N,)`` OOD scores; an image is recognized when its score <= threshold.
        threshold: the model file's threshold.
        correct: bool ``(N,)``: the top class is the label.

    Returns:
        ``{"samples", "recognized" (share), "accuracy" (all images), "accuracy_recognized"
        (None if none is)}``, JSON-able.
    """
    accepted = np.asarray(scores) <= threshold
    correct = np.asarray(correct, dtype=bool)
    return {
        "samples": int(len(correct)),
        "recognized": float(accepted.mean()),
        "accuracy": float(correct.mean()),
        "accuracy_recognized": float(correct[accepted].mean()) if accepted.any() else None,
    }
