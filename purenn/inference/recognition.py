"""Whether an image looks like the leaves a model was trained on: the model file's OOD test.

``purenn train`` fits it at the end of a run, where it fits the temperature (``purenn calibrate``
does it for an older model): the statistics of one out-of-distribution score
(:mod:`purenn.inference.ood`), fitted in float64 on the training split's penultimate features,
and the threshold that accepts :data:`KEEP` (95%) of the validation split. An image is
*recognized* when its score is at most the threshold; the score is oriented so that higher means
less like the training leaves.

In the model file the scalars are the header's ``"ood"`` entry::

    "ood": {"score": "knn", "k": 1, "threshold": 0.79, "keep": 0.95, "temperature": 1.0}

and the statistics are arrays under ``ood/`` (``ood/bank`` for ``knn``; ``ood/means`` and
``ood/whitening`` for ``mahalanobis``; none for the scores of the logits). A model file without
the entry (written before it existed, or exported to safetensors) has no test: every image is
recognized and its score is None.

:func:`answer` runs the model once per batch: the logits and, for a score of the features, the
penultimate features of the same forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from purenn.data import normalize_batch
from purenn.inference.ood import (
    Mahalanobis,
    NearestNeighbours,
    acceptance_threshold,
    energy_score,
    features_and_logits,
    max_softmax_score,
)
from purenn.inference.probabilities import calibrated_probabilities, model_temperature
from purenn.inference.tta import tta_logits
from purenn.io import ModelFileError, load_model_arrays
from purenn.nn.network import Network

OOD_KEY = "ood"
OOD_PREFIX = "ood/"
# The scores a model file can carry; the first two need the penultimate features.
SCORES = ("knn", "mahalanobis", "energy", "max_softmax")
FEATURE_SCORES = ("knn", "mahalanobis")
# The neighbour whose distance is the kNN score (chosen by benchmarks/ood_scores.py).
DEFAULT_K = 1
# The share of the validation leaves the threshold accepts.
KEEP = 0.95


def default_score(meta: dict) -> str:
    """The score a model's OOD test uses unless told otherwise, chosen by measurement
    (benchmarks/ood_scores.py, docs/RESULTS.md): ``max_softmax`` for a model trained with
    outlier exposure (which teaches exactly its softmax to spread out on outliers), ``knn``
    for any other (the best separation without outlier exposure)."""
    return "max_softmax" if meta.get("outlier_exposure") else "knn"


@dataclass(frozen=True)
class OODTest:
    """One fitted score and its threshold.

    Attributes:
        score: one of :data:`SCORES`.
        threshold: images scoring at most this are recognized.
        keep: the share of the validation split the threshold accepts.
        temperature: the temperature of ``energy`` and ``max_softmax`` (1 when fitted: the
            raw softmax, as outlier exposure trains it; not the calibration temperature).
        statistics: the fitted :class:`NearestNeighbours` or :class:`Mahalanobis`, or None for
            a score of the logits.
    """

    score: str
    threshold: float
    keep: float
    temperature: float
    statistics: NearestNeighbours | Mahalanobis | None

    @property
    def needs_features(self) -> bool:
        return self.score in FEATURE_SCORES

    def scores(self, features: np.ndarray | None, logits: np.ndarray) -> np.ndarray:
        """float64 ``(N,)`` scores of ``(N, D)`` penultimate features and ``(N, K)`` logits."""
        if self.score == "energy":
            return energy_score(logits, self.temperature)
        if self.score == "max_softmax":
            return max_softmax_score(logits, self.temperature)
        return self.statistics.score(features)

    def to_file(self) -> tuple[dict, dict[str, np.ndarray]]:
        """``(header entry, arrays)`` as stored in a model file."""
        entry = {
            "score": self.score,
            "threshold": self.threshold,
            "keep": self.keep,
            "temperature": self.temperature,
        }
        arrays: dict[str, np.ndarray] = {}
        if isinstance(self.statistics, NearestNeighbours):
            entry["k"] = self.statistics.k
            arrays = {f"{OOD_PREFIX}bank": self.statistics.bank}
        elif isinstance(self.statistics, Mahalanobis):
            arrays = {
                f"{OOD_PREFIX}means": self.statistics.means,
                f"{OOD_PREFIX}whitening": self.statistics.whitening,
            }
        return entry, arrays


def fit_ood_test(
    train_features: np.ndarray | None,
    train_labels: np.ndarray | None,
    val_features: np.ndarray | None,
    val_logits: np.ndarray,
    score: str,
    k: int = DEFAULT_K,
    keep: float = KEEP,
    temperature: float = 1.0,
) -> OODTest:
    """Fit ``score`` on the training split and set its threshold on the validation split.

    Args:
        train_features: ``(N, D)`` penultimate features of the training split (unaugmented),
            ``train_labels`` their ``(N,)`` classes (None for a score of the logits).
        val_features, val_logits: ``(M, D)`` features (None for a score of the logits) and
            ``(M, K)`` logits of the validation split.
        score: one of :data:`SCORES`; ``k``: the neighbour of ``knn`` (capped at N).
        keep: the share of the validation split to accept.
        temperature: of ``energy`` and ``max_softmax``.

    Raises:
        ValueError: an unknown score, or inputs the score's ``fit`` refuses.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}; received: {score!r}")
    statistics = None
    if score == "knn":
        statistics = NearestNeighbours.fit(train_features, min(k, len(train_features)))
    elif score == "mahalanobis":
        statistics = Mahalanobis.fit(train_features, train_labels)
    test = OODTest(score, 0.0, float(keep), float(temperature), statistics)
    threshold = acceptance_threshold(test.scores(val_features, val_logits), keep)
    return OODTest(score, threshold, float(keep), float(temperature), statistics)


def _number(entry: dict, name: str, path: Path, low: float = -np.inf) -> float:
    value = entry.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < np.inf:
        raise ModelFileError(f"{path}: ood.{name} must be a finite number; received: {value!r}")
    return float(value)


def read_ood_test(path: str | Path, meta: dict) -> OODTest | None:
    """The OOD test of a loaded model file (``meta`` its header), None if it has none.

    Raises:
        ModelFileError: an ``"ood"`` entry that is malformed or whose arrays are missing or do
            not fit the model.
    """
    entry = meta.get(OOD_KEY)
    if entry is None:
        return None
    path = Path(path)
    if not isinstance(entry, dict) or entry.get("score") not in SCORES:
        raise ModelFileError(f"{path}: ood.score must be one of {', '.join(SCORES)}")
    threshold = _number(entry, "threshold", path)
    keep = _number(entry, "keep", path, low=0.0)
    temperature = _number(entry, "temperature", path, low=0.0)
    arrays = load_model_arrays(path) if entry["score"] in FEATURE_SCORES else {}
    try:
        statistics = None
        if entry["score"] == "knn":
            bank = arrays[f"{OOD_PREFIX}bank"]
            statistics = NearestNeighbours(bank.astype(np.float64), int(entry["k"]))
            if bank.ndim != 2 or not 1 <= statistics.k <= len(bank):
                raise ValueError(f"k {statistics.k} for a bank of shape {bank.shape}")
        elif entry["score"] == "mahalanobis":
            means, whitening = arrays[f"{OOD_PREFIX}means"], arrays[f"{OOD_PREFIX}whitening"]
            if means.ndim != 2 or whitening.shape != (means.shape[1], means.shape[1]):
                raise ValueError(f"means {means.shape} and whitening {whitening.shape}")
            statistics = Mahalanobis(means.astype(np.float64), whitening.astype(np.float64))
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: damaged OOD statistics ({entry['score']}): {err}") from None
    return OODTest(entry["score"], threshold, keep, temperature, statistics)


@dataclass(frozen=True)
class Answers:
    """What a model answers for a batch of images.

    Attributes:
        probabilities: float64 ``(N, K)`` calibrated class probabilities.
        ood_scores: float64 ``(N,)`` OOD scores (higher: less like the training leaves), None
            when the model file has no OOD test.
        recognized: bool ``(N,)``: score at most the threshold (all True without a test).
    """

    probabilities: np.ndarray
    ood_scores: np.ndarray | None
    recognized: np.ndarray

    def verdict(self, i: int) -> dict:
        """``{"recognized": bool, "ood_score": float | None}`` of image ``i`` (JSON-able)."""
        score = None if self.ood_scores is None else float(self.ood_scores[i])
        return {"recognized": bool(self.recognized[i]), "ood_score": score}


def answer(
    model: Network, images: np.ndarray, meta: dict, ood_test: OODTest | None, views: int = 1
) -> Answers:
    """Calibrated probabilities and the OOD verdict of a batch.

    Args:
        model: a model in eval mode.
        images: uint8 ``(N, 3, S, S)`` at the model's ``image_size``.
        meta: the model file's metadata (``mean``, ``std``, ``temperature``).
        ood_test: from :func:`read_ood_test`, or None.
        views: test-time augmentation (:func:`purenn.inference.tta.tta_logits`): the
            probabilities average that many views; the OOD score is always the plain image's,
            as it was fitted. ``views`` forward passes in all.
    """
    x = normalize_batch(images, meta["mean"], meta["std"])
    if ood_test is not None and ood_test.needs_features:
        features, logits = features_and_logits(model, x, batch_size=len(x))
    else:
        features, logits = None, model.forward(x, training=False)
    averaged = tta_logits(
        lambda batch: model.forward(batch, training=False),
        x,
        model_temperature(meta),
        views,
        first=logits,
    )
    probabilities = calibrated_probabilities(averaged, meta)
    if ood_test is None:
        return Answers(probabilities, None, np.ones(len(x), dtype=bool))
    scores = ood_test.scores(features, logits)
    return Answers(probabilities, scores, scores <= ood_test.threshold)
