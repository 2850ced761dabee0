"""Temperature scaling and calibration error: derivatives, the fit, ECE, the header temperature."""

from __future__ import annotations

import numpy as np
import pytest

from purenn.inference.calibration import (
    expected_calibration_error,
    fit_temperature,
    reliability,
    temperature_nll,
)
from purenn.inference.probabilities import calibrated_probabilities, model_temperature
from purenn.io import ModelFileError
from purenn.kernels.ops import softmax


def noisy_logits(n: int = 400, k: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a model that is right about 70% of the time, with mislabelled confident rows."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), labels] += 2.5
    flipped = rng.random(n) < 0.2
    labels[flipped] = rng.integers(0, k, flipped.sum())
    return logits * 3.0, labels


def sampled_labels(logits: np.ndarray, temperature: float, seed: int) -> np.ndarray:
    """One label per row drawn from ``softmax(logits / temperature)``."""
    p = softmax(logits / temperature)
    u = np.random.default_rng(seed).random((len(p), 1))
    return (p.cumsum(axis=1) < u).sum(axis=1)


@pytest.mark.parametrize("s", [-1.5, -0.3, 0.0, 0.7, 2.0])
def test_derivatives_match_central_differences(s):
    logits, labels = noisy_logits()
    h = 1e-5
    loss, gradient, curvature = temperature_nll(logits, labels, s)
    plus, minus = temperature_nll(logits, labels, s + h), temperature_nll(logits, labels, s - h)
    assert gradient == pytest.approx((plus[0] - minus[0]) / (2 * h), rel=1e-7, abs=1e-9)
    assert curvature == pytest.approx((plus[1] - minus[1]) / (2 * h), rel=1e-7, abs=1e-9)
    # The loss itself: the NLL of softmax(z / T), computed directly.
    p = softmax(logits / np.exp(s))
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(len(labels)), labels])), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_is_the_minimum_of_a_grid_search(seed):
    logits, labels = noisy_logits(seed=seed)
    grid = np.linspace(-3, 3, 6001)  # log T, step 0.001
    losses = [temperature_nll(logits, labels, s)[0] for s in grid]
    best = grid[int(np.argmin(losses))]
    fitted = fit_temperature(logits, labels)
    assert abs(np.log(fitted) - best) <= 0.001
    assert temperature_nll(logits, labels, np.log(fitted))[0] <= min(losses) + 1e-12
    assert abs(temperature_nll(logits, labels, np.log(fitted))[1]) < 1e-9


def test_fit_matches_torch_lbfgs():
    torch = pytest.importorskip("torch")
    logits, labels = noisy_logits(seed=3)
    z = torch.tensor(logits, dtype=torch.float64)
    y = torch.tensor(labels)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_t], lr=1, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    assert fit_temperature(logits, labels) == pytest.approx(float(log_t.detach().exp()), rel=1e-7)


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fit_recovers_the_temperature_that_drew_the_labels(true_temperature):
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 3, (20000, 5))
    labels = sampled_labels(logits, true_temperature, seed=8)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.04)


def test_without_a_minimum_the_temperature_stays_one(caplog):
    # Every image right with a margin: the NLL falls to 0 as T -> 0; the bound would make every
    # answer certain, so T stays 1, with a warning.
    logits = np.array([[4.0, 0.0], [0.0, 3.0], [5.0, 1.0]])
    assert temperature_nll(logits, np.array([0, 1, 0]), np.log(0.1))[1] > 0  # rising in T
    assert fit_temperature(logits, np.array([0, 1, 0])) == 1.0
    assert "no minimum" in caplog.text
    # Every image wrong: the NLL falls toward log K as T -> inf.
    assert temperature_nll(logits, np.array([1, 0, 1]), np.log(10.0))[1] < 0  # falling in T
    assert fit_temperature(logits, np.array([1, 0, 1])) == 1.0
    # One mistake among confident answers: a minimum inside the bounds (T = 1.97).
    logits = np.array([[4.0, 0.0], [0.0, 3.0], [5.0, 1.0], [2.0, 0.0]])
    labels = np.array([0, 1, 0, 1])
    temperature = fit_temperature(logits, labels)
    assert 1.5 < temperature < 2.5
    assert abs(temperature_nll(logits, labels, np.log(temperature))[1]) < 1e-12
    # T changes nothing: 1.
    assert fit_temperature(np.ones((3, 4)), np.array([0, 1, 2])) == 1.0


@pytest.mark.parametrize(
    ("logits", "labels", "named"),
    [
        (np.zeros((3,)), np.zeros(3, int), "logits"),
        (np.zeros((0, 3)), np.zeros(0, int), "logits"),
        (np.array([[0.0, np.nan]]), np.zeros(1, int), "logits"),
        (np.zeros((2, 3)), np.zeros(3, int), "labels"),
        (np.zeros((2, 3)), np.array([0.0, 1.0]), "labels"),
        (np.zeros((2, 3)), np.array([0, 3]), "labels"),
    ],
)
def test_bad_input_is_named(logits, labels, named):
    with pytest.raises(ValueError, match=named):
        fit_temperature(logits, labels)


def test_ece_of_a_hand_computed_example():
    # Top probabilities 0.9, 0.9 (one right), 0.6 (right), 0.3 of K=4 (wrong), 1.0 (right).
    probabilities = np.array(
        [
            [0.9, 0.1, 0.0, 0.0],
            [0.9, 0.1, 0.0, 0.0],
            [0.2, 0.6, 0.2, 0.0],
            [0.3, 0.25, 0.25, 0.2],
            [1.0, 0.0, 0.0, 0.0],
        ]
    )
    labels = np.array([0, 1, 1, 1, 0])
    # 15 bins of width 1/15: 0.9 -> bin 13 (0.8667, 0.9333]; 0.6 -> bin 8 (0.5333, 0.6];
    # 0.3 -> bin 4 (0.2667, 0.3333]; 1.0 -> bin 14.
    # |B| / N * |acc - conf|: 2/5 * |0.5 - 0.9| + 1/5 * |1 - 0.6| + 1/5 * |0 - 0.3| + 0.
    expected = 0.4 * 0.4 + 0.2 * 0.4 + 0.2 * 0.3
    assert expected_calibration_error(probabilities, labels) == pytest.approx(expected, abs=1e-12)
    bins = reliability(probabilities, labels)
    assert bins.counts.tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 2, 1]
    assert bins.accuracy[13] == 0.5 and bins.confidence[13] == pytest.approx(0.9)
    assert np.isnan(bins.accuracy[0]) and bins.to_dict()["accuracy"][0] is None
    # Two bins: 0.3 alone in [0, 0.5]; 0.6, 0.9, 0.9, 1.0 (three right) in (0.5, 1].
    two = 0.2 * abs(0 - 0.3) + 0.8 * abs(3 / 4 - (0.6 + 0.9 + 0.9 + 1.0) / 4)
    assert expected_calibration_error(probabilities, labels, bins=2) == pytest.approx(two)


def test_scaling_lowers_the_calibration_error_of_underconfident_logits():
    rng = np.random.default_rng(11)
    logits = rng.normal(0, 3, (5000, 5))
    labels = sampled_labels(logits, 1.0, seed=12)
    flat = logits / 3  # as label smoothing leaves them: right as often, less confident
    before = expected_calibration_error(softmax(flat), labels)
    temperature = fit_temperature(flat, labels)
    after = expected_calibration_error(softmax(flat / temperature), labels)
    assert temperature == pytest.approx(1 / 3, rel=0.05)
    assert before > 0.15 and after < 0.02


def test_model_temperature_defaults_to_one_and_scales_the_softmax():
    logits = np.array([[2.0, 0.0, -1.0]])
    assert model_temperature({}) == 1.0
    np.testing.assert_allclose(calibrated_probabilities(logits, {}), softmax(logits))
    np.testing.assert_allclose(
        calibrated_probabilities(logits, {"temperature": 2.0}), softmax(logits / 2)
    )
    for bad in (0, -1.0, float("inf"), "2", True, None):
        with pytest.raises(ModelFileError, match="temperature"):
            model_temperature({"temperature": bad})
