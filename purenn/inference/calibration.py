"""Temperature scaling (Guo et al. 2017) and how calibrated probabilities are: ECE, reliability.

Temperature scaling divides every logit by one scalar ``T > 0`` fitted on held-out images; the
argmax (so the accuracy) is unchanged, the confidence is not. Derivation, with ``s = log T``,
``u = z / T`` (one image's logits over ``K`` classes, label ``y``) and ``p = softmax(u)``::

    L(s)      = mean_i [ logsumexp(u_i) - u_iy ]              (the NLL of softmax(z / T))
    du/ds     = -u
    dp_k/ds   = -p_k (u_k - E_p[u])
    dL/ds     = mean_i [ u_iy - E_p[u_i] ]
    d2L/ds2   = mean_i [ Var_p(u_i) ] - dL/ds

``L`` is convex in ``1 / T`` (its second derivative there is ``mean Var_p(z) >= 0``), so as a
function of ``s`` it falls then rises: ``dL/ds`` changes sign at most once. The fit brackets that
sign change and runs Newton's method inside the bracket, falling back to bisection when a Newton
step leaves it (``rtsafe``, Press et al., Numerical Recipes 9.4).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from purenn.kernels.ops import log_softmax, softmax

logger = logging.getLogger(__name__)

# Guo et al. 2017: confidences in 15 equal-width bins.
ECE_BINS = 15
# The minimum is searched for in [1 / MAX_TEMPERATURE, MAX_TEMPERATURE]. Where there is none
# (the NLL still falls at a bound: every image right with a margin, so it tends to 0 as T -> 0),
# T stays 1: the bound would make every answer certain, wrong ones included.
MAX_TEMPERATURE = 100.0
# Newton/bisection stops when the step in log T is below this (T within 1e-10 relative).
LOG_T_TOLERANCE = 1e-10
MAX_ITERATIONS = 200


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``(N, K)`` logits and int64 ``(N,)`` labels, checked; ValueError naming them."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] < 2:
        raise ValueError(f"logits must be (N, K) with N >= 1, K >= 2; received: shape {z.shape}")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite; received: logits with NaN or inf")
    if y.shape != (len(z),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"labels must be {len(z)} integers; received: labels of {y.dtype} {y.shape}"
        )
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must be in [0, {z.shape[1]}); received: {y.min()}..{y.max()}")
    return z, y.astype(np.int64)


def temperature_nll(
    logits: np.ndarray, labels: np.ndarray, log_temperature: float
) -> tuple[float, float, float]:
    """The mean NLL of ``softmax(logits / T)`` and its first two derivatives in ``s = log T``.

    Args:
        logits: ``(N, K)`` floats (computed in float64).
        labels: ``(N,)`` int classes.
        log_temperature: ``s``.

    Returns:
        ``(L, dL/ds, d2L/ds2)`` as in the module docstring.
    """
    z, y = _check(logits, labels)
    return _nll_derivatives(z, y, float(log_temperature))


def _nll_derivatives(z: np.ndarray, y: np.ndarray, s: float) -> tuple[float, float, float]:
    u = z * np.exp(-s)
    log_p = log_softmax(u, axis=1)
    p = np.exp(log_p)
    rows = np.arange(len(y))
    mean_u = (p * u).sum(axis=1)
    var_u = (p * (u - mean_u[:, None]) ** 2).sum(axis=1)
    gradient = float(np.mean(u[rows, y] - mean_u))
    return float(-np.mean(log_p[rows, y])), gradient, float(np.mean(var_u)) - gradient


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The ``T > 0`` minimising the mean NLL of ``softmax(logits / T)`` (float64).

    Args:
        logits: ``(N, K)`` floats of held-out images (the validation split).
        labels: ``(N,)`` int classes.

    Returns:
        ``T`` within ``[1 / MAX_TEMPERATURE, MAX_TEMPERATURE]``; 1.0, with a warning, when the
        NLL has no minimum there (it still falls at a bound: e.g. every image right with a
        margin, where it tends to 0 as ``T -> 0`` and the bound would make every answer
        certain), and when every row of logits is constant (``T`` changes nothing).

    Raises:
        ValueError: logits not ``(N, K)`` finite, or labels not ``N`` ints in ``[0, K)``.
    """
    z, y = _check(logits, labels)
    if not np.any(np.ptp(z, axis=1) > 0):
        return 1.0

    def gradient(s: float) -> float:
        return _nll_derivatives(z, y, s)[1]

    bound = float(np.log(MAX_TEMPERATURE))
    lo, hi = -bound, bound
    if gradient(lo) >= 0 or gradient(hi) <= 0:
        logger.warning(
            "the NLL of softmax(logits / T) on these %d images has no minimum for T in "
            "[%g, %g] (every image right with a margin?): the temperature stays 1, uncalibrated",
            len(y),
            1 / MAX_TEMPERATURE,
            MAX_TEMPERATURE,
        )
        return 1.0
    # Invariant: dL/ds < 0 at lo, > 0 at hi. Start at T = 1, where training left the logits.
    s = 0.0
    for _ in range(MAX_ITERATIONS):
        _, g, h = _nll_derivatives(z, y, s)
        if g == 0:
            break
        lo, hi = (s, hi) if g < 0 else (lo, s)
        newton = s - g / h if h > 0 else np.nan
        step_to = newton if lo < newton < hi else 0.5 * (lo + hi)
        if abs(step_to - s) < LOG_T_TOLERANCE:
            s = step_to
            break
        s = step_to
    return float(np.exp(s))


def scaled_logits(logits: np.ndarray, temperature: float) -> np.ndarray:
    """float64 ``logits / temperature``: the logits whose softmax is the calibrated probability."""
    return np.asarray(logits, dtype=np.float64) / temperature


@dataclass(frozen=True)
class Reliability:
    """Reliability-diagram data: held-out images binned by their top probability.

    Bin ``m`` (of ``M``) holds the confidences in ``(m / M, (m + 1) / M]`` (bin 0 also 0).

    Attributes:
        edges: float64 ``(M + 1,)`` bin edges, 0 to 1.
        counts: int64 ``(M,)`` images per bin.
        accuracy: float64 ``(M,)`` share of them predicted right (NaN in an empty bin).
        confidence: float64 ``(M,)`` their mean top probability (NaN in an empty bin).
    """

    edges: np.ndarray
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: ``sum_m |B_m| / N * |acc(B_m) - conf(B_m)|``."""
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((self.counts[filled] * gaps).sum() / self.counts.sum())

    def to_dict(self) -> dict:
        """JSON-able: ``{"edges", "counts", "accuracy", "confidence"}``, None for NaN."""

        def listed(values: np.ndarray) -> list:
            return [None if np.isnan(v) else float(v) for v in values]

        return {
            "edges": self.edges.tolist(),
            "counts": self.counts.tolist(),
            "accuracy": listed(self.accuracy),
            "confidence": listed(self.confidence),
        }


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    """Bin ``(N, K)`` probabilities (rows summing to 1) of labelled images by top probability.

    Raises:
        ValueError: bad shapes, labels or ``bins`` (an int >= 1).
    """
    p, y = _check(probabilities, labels)
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be an int >= 1; received: bins={bins!r}")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # Right-closed bins: a confidence exactly m / M falls in bin m - 1.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct, minlength=bins) / counts
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / counts
    return Reliability(np.linspace(0.0, 1.0, bins + 1), counts, accuracy, mean_confidence)


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE of ``(N, K)`` probabilities of labelled images, ``bins`` equal-width bins (Guo 2017)."""
    return reliability(probabilities, labels, bins).ece


def calibration_summary(
    logits: np.ndarray, labels: np.ndarray, temperature: float, before: float = 1.0
) -> dict:
    """How ``temperature`` calibrates labelled logits, compared with temperature ``before``.

    Returns:
        ``{"samples", "nll_before", "nll_after", "ece_before", "ece_after"}``: the mean NLL and
        the expected calibration error (:data:`ECE_BINS` bins) of ``softmax(logits / before)``
        and of ``softmax(logits / temperature)``; JSON-able.
    """
    z, y = _check(logits, labels)
    summary = {"samples": int(len(y))}
    for when, t in (("before", before), ("after", temperature)):
        summary[f"nll_{when}"] = _nll_derivatives(z, y, float(np.log(t)))[0]
        summary[f"ece_{when}"] = expected_calibration_error(softmax(z / t), y)
    return summary
