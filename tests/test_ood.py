"""Out-of-distribution scores and their separation metrics, against direct formulas and
scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

import purenn as pn
from purenn.inference.ood import (
    Mahalanobis,
    NearestNeighbours,
    acceptance_threshold,
    auroc,
    energy_score,
    feature_layer,
    features_and_logits,
    fpr_at_tpr,
    max_logit_score,
    max_softmax_score,
)
from purenn.kernels.ops import softmax
from purenn.nn.layers import Dense, Flatten, ReLU
from purenn.nn.sequential import Sequential


def _logits(n=50, k=5, seed=0):
    return np.random.default_rng(seed).normal(0, 4, (n, k))


def test_logit_scores_are_the_direct_formulas():
    z = _logits()
    np.testing.assert_allclose(max_softmax_score(z), -softmax(z).max(axis=1), rtol=1e-12)
    np.testing.assert_allclose(max_softmax_score(z, 2.0), -softmax(z / 2).max(axis=1), rtol=1e-12)
    assert np.array_equal(max_logit_score(z), -z.max(axis=1))
    direct = -2.0 * np.log(np.exp(z / 2.0).sum(axis=1))
    np.testing.assert_allclose(energy_score(z, 2.0), direct, rtol=1e-12)
    # Shifting every logit of an image by c shifts its energy by -c, not its softmax score.
    np.testing.assert_allclose(energy_score(z + 3.0), energy_score(z) - 3.0, rtol=1e-12)
    np.testing.assert_allclose(max_softmax_score(z + 3.0), max_softmax_score(z), rtol=1e-12)
    # Large logits: no overflow.
    assert np.isfinite(energy_score(np.array([[1e4, 0.0]]))).all()


def test_energy_matches_torch():
    torch = pytest.importorskip("torch")
    z = _logits(seed=1)
    expected = -1.5 * torch.logsumexp(torch.tensor(z) / 1.5, dim=1).numpy()
    np.testing.assert_allclose(energy_score(z, 1.5), expected, rtol=1e-12)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), True, "1"])
def test_bad_temperature_is_named(bad):
    with pytest.raises(ValueError, match="temperature"):
        energy_score(_logits(), bad)


def _clustered_features(n=600, d=6, k=3, seed=2):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    centres = rng.normal(0, 5, (k, d))
    # A shared, correlated, well-conditioned covariance (the ridge then changes ~1e-6 of it).
    mixing = np.eye(d) + 0.3 * rng.normal(0, 1, (d, d))
    return centres[labels] + rng.normal(0, 1, (n, d)) @ mixing, labels


def test_mahalanobis_matches_scikit_learn():
    covariance = pytest.importorskip("sklearn.covariance")
    features, labels = _clustered_features()
    fitted = Mahalanobis.fit(features, labels)
    means = np.stack([features[labels == c].mean(axis=0) for c in range(3)])
    np.testing.assert_allclose(fitted.means, means, rtol=1e-12)
    empirical = covariance.EmpiricalCovariance(assume_centered=True).fit(features - means[labels])
    queries = _clustered_features(n=40, seed=3)[0] + np.random.default_rng(4).normal(0, 3, (40, 6))
    expected = np.stack([empirical.mahalanobis(queries - m) for m in means], axis=1)
    np.testing.assert_allclose(fitted.distances(queries), expected, rtol=1e-5)
    np.testing.assert_allclose(fitted.score(queries), expected.min(axis=1), rtol=1e-5)


def test_mahalanobis_with_a_feature_that_never_varies():
    features, labels = _clustered_features()
    features = np.c_[features, np.zeros(len(features))]  # e.g. a ReLU unit that never fires
    fitted = Mahalanobis.fit(features, labels)
    near = fitted.means[:1].copy()
    away = near.copy()
    away[0, -1] = 1.0  # off in the dead direction: far, but finite
    assert fitted.score(near)[0] == pytest.approx(0.0, abs=1e-6)
    assert 1e3 < fitted.score(away)[0] < np.inf


def test_mahalanobis_bad_input():
    features, labels = _clustered_features()
    with pytest.raises(ValueError, match="every class"):
        Mahalanobis.fit(features, np.where(labels == 1, 2, labels))
    with pytest.raises(ValueError, match="labels"):
        Mahalanobis.fit(features, labels[:-1])
    with pytest.raises(ValueError, match="features"):
        Mahalanobis.fit(features[:, :, None], labels)


def _graph_model():
    x = pn.Input((3, 2, 2))
    h = pn.Flatten()(x)
    a = pn.ReLU()(pn.Dense(12, 7, rng=0)(h))
    b = pn.ReLU()(pn.Dense(12, 7, rng=1)(h))
    return pn.Model(x, pn.Dense(7, 3, rng=2)(pn.Add()([a, b])))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Sequential([Flatten(), Dense(12, 7, rng=0), ReLU(), Dense(7, 3, rng=1)]),
        _graph_model,
    ],
    ids=["sequential", "graph"],
)
def test_features_are_the_input_of_the_last_dense_from_the_same_pass(make):
    model = make()
    x = np.random.default_rng(5).normal(0, 1, (10, 3, 2, 2))
    features, logits = features_and_logits(model, x, batch_size=4)
    assert features.shape == (10, 7) and features.dtype == np.float64
    np.testing.assert_allclose(logits, model.forward(x, training=False), rtol=1e-12)
    np.testing.assert_allclose(
        model.layers[-1].forward(features, training=False), logits, rtol=1e-6
    )


def test_features_need_a_final_dense():
    x = np.zeros((2, 3, 2, 2))
    with pytest.raises(ValueError, match="must end in a Dense layer"):
        features_and_logits(Sequential([Flatten(), Dense(12, 3, rng=0), ReLU()]), x)
    assert feature_layer(Sequential([Dense(12, 3, rng=0)])) is None


def test_nearest_neighbours_is_the_kth_cosine_distance():
    rng = np.random.default_rng(7)
    bank, queries = rng.normal(0, 1, (40, 5)), rng.normal(0, 1, (9, 5))
    queries[0] = 0.0  # a feature vector of zeros: cosine 0 to every training feature
    fitted = NearestNeighbours.fit(bank, k=3)
    unit = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(fitted.bank, axis=1), 1.0, rtol=1e-12)
    for i, q in enumerate(queries):
        if not q.any():
            assert fitted.score(queries[i : i + 1])[0] == pytest.approx(np.sqrt(2))
            continue
        expected = np.sort(np.linalg.norm(unit - q / np.linalg.norm(q), axis=1))[2]
        assert fitted.score(queries[i : i + 1], batch_size=1)[0] == pytest.approx(expected)
    np.testing.assert_allclose(fitted.score(queries, batch_size=4), fitted.score(queries))
    # Scale does not matter; a training feature is its own nearest neighbour.
    np.testing.assert_allclose(fitted.score(5 * queries[1:]), fitted.score(queries[1:]))
    assert NearestNeighbours.fit(bank, k=1).score(bank[:3] * 2) == pytest.approx(0, abs=1e-7)


@pytest.mark.parametrize("k", [0, 41, 2.0, True])
def test_nearest_neighbours_bad_k(k):
    with pytest.raises(ValueError, match="k must be"):
        NearestNeighbours.fit(np.ones((40, 5)), k=k)


def _separable_scores(seed=6, ties=False):
    rng = np.random.default_rng(seed)
    s_in, s_out = rng.normal(0, 1, 300), rng.normal(1.5, 1, 200)
    if ties:
        s_in, s_out = np.round(s_in, 1), np.round(s_out, 1)
    return s_in, s_out


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_and_fpr_at_95_match_scikit_learn(ties):
    metrics = pytest.importorskip("sklearn.metrics")
    s_in, s_out = _separable_scores(ties=ties)
    y_ood = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    scores = np.r_[s_in, s_out]
    assert auroc(s_in, s_out) == pytest.approx(metrics.roc_auc_score(y_ood, scores), rel=1e-12)
    # In-distribution as the positive class, accepted when -score >= -threshold.
    fpr, tpr, _ = metrics.roc_curve(1 - y_ood, -scores, drop_intermediate=False)
    expected = fpr[np.searchsorted(tpr, 0.95, side="left")]
    assert fpr_at_tpr(s_in, s_out) == pytest.approx(expected, abs=1e-12)


def test_auroc_extremes_and_acceptance_threshold():
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert auroc(np.ones(4), np.ones(3)) == 0.5
    s = np.arange(1, 101, dtype=float)[::-1]  # 100 scores, 1..100
    assert acceptance_threshold(s, 0.95) == 95.0  # not 96: 0.95 * 100 is 95.00000000000001
    assert acceptance_threshold(s, 1.0) == 100.0 and acceptance_threshold(s, 0.001) == 1.0
    assert fpr_at_tpr(s, np.array([94.0, 95.0, 96.0, 200.0])) == 0.5
    with pytest.raises(ValueError, match="keep"):
        acceptance_threshold(s, 0)
    with pytest.raises(ValueError, match="out_scores"):
        auroc(s, np.array([]))
