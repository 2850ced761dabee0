"""Out-of-distribution scores of a classifier, and how well a score separates two sets of images.

Every score here is oriented the same way: **higher means less like the training images**
(an image is accepted when its score is at most a threshold). For ``(N, K)`` logits ``z``:

- maximum softmax probability (Hendrycks & Gimpel 2017): ``-max_k softmax(z / T)_k``;
- maximum logit: ``-max_k z_k``;
- energy (Liu et al. 2020): ``E = -T logsumexp(z / T)``;
- Mahalanobis (Lee et al. 2018) on penultimate features ``f``: ``min_k (f - mu_k)^T S^-1
  (f - mu_k)``, with class means ``mu_k`` and one covariance ``S`` shared by the classes
  (pooled within-class), fitted in float64 on the training split;
- k nearest neighbours (Sun et al. 2022) on the same features scaled to unit length:
  ``||z - b_(k)||``, the distance to the k-th nearest normalised training feature.

Penultimate features and logits come from one forward pass (:func:`features_and_logits`).

Separation, with the in-distribution images as the ones to accept: :func:`auroc` (the
probability that an out-of-distribution image scores higher than an in-distribution one, ties
counting one half) and :func:`fpr_at_tpr` (the share of out-of-distribution images accepted at
the threshold that accepts 95% of the in-distribution ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from purenn.nn.graph import Model
from purenn.nn.layers import Dense
from purenn.nn.network import Network

# Ridge added to the shared covariance, relative to its mean variance: a direction no training
# feature varies in (e.g. a ReLU unit that never fires) then costs a large but finite distance.
COVARIANCE_RIDGE = 1e-6


def _logits(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 1 or not np.all(np.isfinite(z)):
        raise ValueError(f"logits must be finite (N, K); received: shape {z.shape}")
    return z


def _temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not (
        isinstance(temperature, (int, float)) and 0 < temperature < np.inf
    ):
        raise ValueError(f"temperature must be a number > 0; received: {temperature!r}")
    return float(temperature)


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1)
    return m + np.log(np.exp(z - m[:, None]).sum(axis=1))


def max_softmax_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float64 ``(N,)``: ``-max softmax(logits / T)`` (minus the top probability)."""
    z = _logits(logits) / _temperature(temperature)
    # max_k softmax(z)_k = exp(max z - logsumexp(z)).
    return -np.exp(z.max(axis=1) - _logsumexp(z))


def max_logit_score(logits: np.ndarray) -> np.ndarray:
    """float64 ``(N,)``: ``-max_k logits_k``."""
    return -_logits(logits).max(axis=1)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """float64 ``(N,)``: the energy ``-T logsumexp(logits / T)``."""
    t = _temperature(temperature)
    return -t * _logsumexp(_logits(logits) / t)


def ends_in_dense(model: Network) -> bool:
    """Whether the model's last layer is a Dense (whose input are the penultimate features)."""
    return bool(model.layers) and type(model.layers[-1]) is Dense


def feature_layer(model: Network) -> int | None:
    """The layer whose output is the input of the model's final Dense (None: the model input).

    Sequential: the layer before the last (a Dense takes ``(N, D)``, so no max-pool that
    ``Sequential`` runs after its ReLU can precede it). Graph model: the producer of the last
    node's input.

    Raises:
        ValueError: the model does not end in a Dense layer.
    """
    if not ends_in_dense(model):
        last = type(model.layers[-1]).__name__ if model.layers else "nothing"
        raise ValueError(f"model must end in a Dense layer; received: a model ending in {last}")
    if isinstance(model, Model):
        # Tensor 0 is the input, tensor i + 1 the output of layer i.
        source = model.inputs[-1][0]
        return None if source == 0 else source - 1
    return len(model.layers) - 2 if len(model.layers) > 1 else None


def features_and_logits(
    model: Network, x: np.ndarray, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features and logits of the same forward passes (evaluation mode).

    The features are the input ``f`` of the model's final Dense layer (the logits are
    ``W f + b``), kept by the model's ``tapped_forward``: one pass gives both.

    Args:
        model: a Sequential or graph Model ending in a Dense layer.
        x: float ``(N, ...)`` inputs, normalised as the model expects.
        batch_size: inputs per forward pass.

    Returns:
        ``(features, logits)``: float64 ``(N, D)``, D the final Dense's ``in_features``, and
        ``(N, K)`` logits in the model's dtype.
    """
    layer = feature_layer(model)
    features, logits = [], []
    for start in range(0, len(x), batch_size):
        f, z = model.tapped_forward(x[start : start + batch_size], layer)
        features.append(f.reshape(len(f), -1).astype(np.float64))
        logits.append(z)
    return np.concatenate(features), np.concatenate(logits)


@dataclass(frozen=True)
class Mahalanobis:
    """Class means and a shared covariance of features; :meth:`score` is the distance.

    Attributes:
        means: float64 ``(K, D)`` class means.
        whitening: float64 ``(D, D)`` ``L^-1``, with ``L L^T = S + ridge I`` (Cholesky), so
            ``(f - mu)^T (S + ridge I)^-1 (f - mu) = ||L^-1 (f - mu)||^2``.
    """

    means: np.ndarray
    whitening: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> Mahalanobis:
        """Fit on ``(N, D)`` features of the training images and their ``(N,)`` int labels.

        ``S = (1 / N) sum_i (f_i - mu_{y_i})(f_i - mu_{y_i})^T`` (the pooled within-class
        covariance, as Lee et al. 2018), plus ``COVARIANCE_RIDGE * trace(S) / D`` on the
        diagonal. Every class in ``0..max(labels)`` must occur.
        """
        f = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels)
        if f.ndim != 2 or len(f) < 2 or not np.all(np.isfinite(f)):
            raise ValueError(f"features must be finite (N, D), N >= 2; received: shape {f.shape}")
        if y.shape != (len(f),) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
            raise ValueError(f"labels must be {len(f)} ints >= 0; received: {y.dtype} {y.shape}")
        counts = np.bincount(y)
        if not np.all(counts):
            missing = int(np.argmin(counts))
            raise ValueError(f"every class must occur; received: no features of class {missing}")
        means = np.zeros((len(counts), f.shape[1]))
        np.add.at(means, y, f)
        means /= counts[:, None]
        centred = f - means[y]
        covariance = centred.T @ centred / len(f)
        ridge = COVARIANCE_RIDGE * max(np.trace(covariance) / f.shape[1], np.finfo(float).tiny)
        cholesky = np.linalg.cholesky(covariance + ridge * np.eye(f.shape[1]))
        return cls(means, np.linalg.inv(cholesky))

    def distances(self, features: np.ndarray) -> np.ndarray:
        """float64 ``(N, K)`` squared Mahalanobis distances of ``(N, D)`` features to each mean."""
        w = np.asarray(features, dtype=np.float64) @ self.whitening.T
        m = self.means @ self.whitening.T
        # ||w - m||^2 = ||w||^2 - 2 w.m + ||m||^2; rounding can take it a hair below 0.
        squared = (w**2).sum(axis=1)[:, None] - 2 * w @ m.T + (m**2).sum(axis=1)[None, :]
        return np.maximum(squared, 0.0)

    def score(self, features: np.ndarray) -> np.ndarray:
        """float64 ``(N,)``: the squared distance to the nearest class mean."""
        return self.distances(features).min(axis=1)


@dataclass(frozen=True)
class NearestNeighbours:
    """Distance to the k-th nearest training feature, every feature scaled to unit length.

    Sun et al. 2022 ("Out-of-distribution detection with deep nearest neighbors"): with
    ``z = f / ||f||``, the score is ``||z - b_(k)||``, ``b_(k)`` the k-th nearest of the
    normalised training features. On the unit sphere ``||z - b||^2 = 2 - 2 z.b``, so the
    k-th nearest is the k-th largest cosine similarity: one ``(N, D) @ (D, M)`` product and a
    partial sort per row.

    Attributes:
        bank: float64 ``(M, D)`` training features scaled to unit length (a zero feature
            vector stays zero).
        k: which neighbour (1 = the nearest), ``1 <= k <= M``.
    """

    bank: np.ndarray
    k: int

    @classmethod
    def fit(cls, features: np.ndarray, k: int) -> NearestNeighbours:
        """Keep the ``(M, D)`` features of the training images, normalised, in float64."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or not len(f) or not np.all(np.isfinite(f)):
            raise ValueError(f"features must be finite (M, D), M >= 1; received: shape {f.shape}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(f):
            raise ValueError(f"k must be an int in [1, {len(f)}]; received: k={k!r}")
        return cls(unit_rows(f), int(k))

    def score(self, features: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """float64 ``(N,)``: ``||z - b_(k)||`` of ``(N, D)`` features, in ``[0, 2]``.

        Computed as ``sqrt(2 - 2 cos_(k))``, ``cos_(k)`` the k-th largest cosine similarity;
        a feature vector of zeros (every unit off) has cosine 0 to all: ``sqrt(2)``.

        ``batch_size`` rows at a time bound the ``(rows, M)`` similarity matrix.
        """
        z = unit_rows(np.asarray(features, dtype=np.float64))
        kth = np.empty(len(z))
        for start in range(0, len(z), batch_size):
            similarity = z[start : start + batch_size] @ self.bank.T
            # The k-th largest similarity: the (k-1)-th smallest of its negation.
            kth[start : start + batch_size] = -np.partition(-similarity, self.k - 1, axis=1)[
                :, self.k - 1
            ]
        # Rounding can take 2 - 2 cos a hair below 0 for a feature in the bank.
        return np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))


def unit_rows(features: np.ndarray) -> np.ndarray:
    """``features`` with each row divided by its L2 norm (rows of zeros stay zero)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, np.finfo(features.dtype).tiny)


def _scores(scores: np.ndarray, name: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or not len(s) or not np.all(np.isfinite(s)):
        raise ValueError(f"{name} must be a non-empty finite 1-D array; received: shape {s.shape}")
    return s


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    # Each run of equal values: its first and last position (0-based) in sorted order.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)] - 1
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + ends) / 2 + 1, ends - starts + 1)
    return ranks


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve of telling out-of-distribution images by a higher score.

    The Mann-Whitney statistic: ``P(out > in) + P(out == in) / 2`` over all pairs, from the
    average ranks of the pooled scores.
    """
    s_in, s_out = _scores(in_scores, "in_scores"), _scores(out_scores, "out_scores")
    ranks = _average_ranks(np.concatenate([s_in, s_out]))[len(s_in) :]
    n_out = len(s_out)
    return float((ranks.sum() - n_out * (n_out + 1) / 2) / (n_out * len(s_in)))


def acceptance_threshold(in_scores: np.ndarray, keep: float = 0.95) -> float:
    """The lowest score threshold that accepts (score <= it) at least ``keep`` of ``in_scores``."""
    s = np.sort(_scores(in_scores, "in_scores"))
    if isinstance(keep, bool) or not (isinstance(keep, (int, float)) and 0 < keep <= 1):
        raise ValueError(f"keep must be in (0, 1]; received: keep={keep!r}")
    # The ceil(keep * N)-th smallest; the 1e-9 keeps 0.95 * 100 = 95.00000000000001 at 95.
    return float(s[int(np.ceil(keep * len(s) - 1e-9)) - 1])


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Share of out-of-distribution images accepted at :func:`acceptance_threshold` (``tpr``)."""
    threshold = acceptance_threshold(in_scores, tpr)
    return float(np.mean(_scores(out_scores, "out_scores") <= threshold))
