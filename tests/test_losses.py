"""Tests for purenn.nn.losses: finite-difference gradients, PyTorch parity, stability, errors."""

import numpy as np
import pytest

from purenn.nn.losses import MSE, SoftmaxCrossEntropy, UniformCrossEntropy

SMOOTHINGS = [0.0, 0.1, 0.5, 1.0]
DTYPES_RTOL = [(np.float64, 1e-6), (np.float32, 1e-4)]


def numeric_grad(f, x, h=1e-6):
    """Central differences of the scalar function f at x (float64), one element at a time."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        original = x[idx]
        x[idx] = original + h
        up = f(x)
        x[idx] = original - h
        down = f(x)
        x[idx] = original
        grad[idx] = (up - down) / (2 * h)
    return grad


def rel_error(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)


def assert_close(actual, expected, rtol):
    """Relative agreement, with the absolute slack scaled by the largest reference entry."""
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


def logits_and_labels(dtype, n=6, k=5, seed=0):
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal((n, k))).astype(dtype)
    labels = rng.integers(0, k, size=n)
    return logits, labels


# --- softmax cross-entropy ------------------------------------------------------------------


@pytest.mark.parametrize("eps", SMOOTHINGS)
def test_cross_entropy_gradient_matches_finite_differences(eps):
    logits, labels = logits_and_labels(np.float64)
    fn = SoftmaxCrossEntropy(label_smoothing=eps)
    fn.forward(logits, labels)
    analytic = fn.backward()
    numeric = numeric_grad(lambda z: SoftmaxCrossEntropy(eps).forward(z, labels), logits)
    assert rel_error(analytic, numeric) < 1e-6


@pytest.mark.parametrize("eps", SMOOTHINGS)
def test_cross_entropy_value_matches_naive_formula(eps):
    # Small logits, so the naive log(sum(exp)) is exact enough to serve as an independent oracle.
    logits, labels = logits_and_labels(np.float64, seed=1)
    lse = np.log(np.exp(logits).sum(axis=1))
    nll = lse - logits[np.arange(len(labels)), labels]
    uniform = lse - logits.mean(axis=1)
    expected = np.mean((1 - eps) * nll + eps * uniform)
    loss = SoftmaxCrossEntropy(label_smoothing=eps).forward(logits, labels)
    assert isinstance(loss, float)
    assert loss == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("eps", SMOOTHINGS)
@pytest.mark.parametrize("dtype, rtol", DTYPES_RTOL)
def test_cross_entropy_matches_torch(eps, dtype, rtol):
    torch = pytest.importorskip("torch")
    logits, labels = logits_and_labels(dtype, n=16, k=7, seed=2)
    fn = SoftmaxCrossEntropy(label_smoothing=eps)
    loss = fn.forward(logits, labels)
    grad = fn.backward()

    t_logits = torch.from_numpy(logits.copy()).requires_grad_()
    t_loss = torch.nn.functional.cross_entropy(
        t_logits, torch.from_numpy(labels), label_smoothing=eps
    )
    t_loss.backward()

    assert loss == pytest.approx(t_loss.item(), rel=rtol)
    assert grad.dtype == dtype
    assert_close(grad, t_logits.grad.numpy(), rtol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [1e4, 0.0, -1e4], [-1e4, -1e4, -1e4]], dtype=dtype)
    labels = np.array([0, 2, 1])
    fn = SoftmaxCrossEntropy()
    loss = fn.forward(logits, labels)
    grad = fn.backward()
    # Per sample: log-sum-exp is 1e4, 1e4 and -1e4 + log(3); the losses are 0, 2e4 and log(3).
    assert loss == pytest.approx((0.0 + 2e4 + np.log(3)) / 3, rel=1e-6)
    expected = np.array([[0, 0, 0], [1, 0, -1], [1 / 3, -2 / 3, 1 / 3]]) / 3
    np.testing.assert_allclose(grad, expected, atol=1e-7)

    smoothed = SoftmaxCrossEntropy(label_smoothing=0.1)
    assert np.isfinite(smoothed.forward(logits, labels))
    assert np.isfinite(smoothed.backward()).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_keeps_dtype(dtype):
    logits, labels = logits_and_labels(dtype)
    fn = SoftmaxCrossEntropy(label_smoothing=0.1)
    fn.forward(logits, labels)
    grad = fn.backward()
    assert grad.dtype == dtype and grad.shape == logits.shape


@pytest.mark.parametrize(
    "logits_shape, labels, match",
    [
        ((4,), np.array([0, 1, 2, 3]), r"logits must be .*2-D.*received: logits of shape \(4,\)"),
        ((2, 3, 4), np.array([0, 1]), r"received: logits of shape \(2, 3, 4\)"),
        ((0, 3), np.zeros(0, dtype=int), r"non-empty.*received: logits of shape \(0, 3\)"),
        ((4, 3), np.array([0, 1, 2]), r"labels must be .*\(4,\).*received: labels of shape \(3,\)"),
        ((2, 3), np.array([[0], [1]]), r"received: labels of shape \(2, 1\)"),
        ((2, 3), np.array([0.0, 1.0]), r"labels must be .*integer.*dtype float64"),
        ((3, 3), np.array([0, 3, 1]), r"class indices in \[0, 3\), received: labels\[1\]=3"),
        ((3, 3), np.array([0, 1, -1]), r"received: labels\[2\]=-1"),
    ],
)
def test_cross_entropy_rejects_bad_inputs(logits_shape, labels, match):
    with pytest.raises(ValueError, match=match):
        SoftmaxCrossEntropy().forward(np.zeros(logits_shape), labels)


def test_cross_entropy_rejects_integer_logits():
    with pytest.raises(ValueError, match="floating.*dtype int64"):
        SoftmaxCrossEntropy().forward(np.zeros((2, 3), dtype=np.int64), np.array([0, 1]))


@pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan")])
def test_cross_entropy_rejects_bad_label_smoothing(eps):
    expected = rf"label_smoothing must be in \[0, 1\], received: label_smoothing={eps!r}$"
    with pytest.raises(ValueError, match=expected):
        SoftmaxCrossEntropy(label_smoothing=eps)


@pytest.mark.parametrize("fn", [SoftmaxCrossEntropy(), MSE(), UniformCrossEntropy()])
def test_backward_before_forward_raises(fn):
    with pytest.raises(RuntimeError, match="before forward"):
        fn.backward()


# --- mean squared error ---------------------------------------------------------------------


def test_mse_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    pred = rng.standard_normal((4, 3, 2))
    target = rng.standard_normal((4, 3, 2))
    fn = MSE()
    fn.forward(pred, target)
    analytic = fn.backward()
    numeric = numeric_grad(lambda p: MSE().forward(p, target), pred)
    assert rel_error(analytic, numeric) < 1e-6


@pytest.mark.parametrize("dtype, rtol", DTYPES_RTOL)
def test_mse_matches_torch(dtype, rtol):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    pred = rng.standard_normal((8, 5)).astype(dtype)
    target = rng.standard_normal((8, 5)).astype(dtype)
    fn = MSE()
    loss = fn.forward(pred, target)
    grad = fn.backward()

    t_pred = torch.from_numpy(pred.copy()).requires_grad_()
    t_loss = torch.nn.functional.mse_loss(t_pred, torch.from_numpy(target))
    t_loss.backward()

    assert isinstance(loss, float)
    assert loss == pytest.approx(t_loss.item(), rel=rtol)
    assert grad.dtype == dtype
    assert_close(grad, t_pred.grad.numpy(), rtol)


def test_mse_gradient_takes_pred_dtype():
    fn = MSE()
    fn.forward(np.ones((2, 3), dtype=np.float32), np.zeros((2, 3), dtype=np.float64))
    assert fn.backward().dtype == np.float32


def test_mse_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"target must have pred's shape \(2, 3\), received: "):
        MSE().forward(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="pred must be a floating array, received: pred.dtype=int"):
        MSE().forward(np.zeros((2, 3), dtype=int), np.zeros((2, 3)))


# --- outlier exposure: cross-entropy to the uniform distribution ----------------------------


@pytest.mark.parametrize("weight", [0.0, 0.5, 2.0])
def test_uniform_cross_entropy_gradient_matches_finite_differences(weight):
    logits, _ = logits_and_labels(np.float64, seed=3)
    fn = UniformCrossEntropy(weight)
    fn.forward(logits)
    numeric = numeric_grad(lambda z: UniformCrossEntropy(weight).forward(z), logits)
    if weight == 0:
        assert not fn.backward().any() and not numeric.any()
    else:
        assert rel_error(fn.backward(), numeric) < 1e-6


@pytest.mark.parametrize("dtype, rtol", DTYPES_RTOL)
def test_uniform_cross_entropy_matches_torch(dtype, rtol):
    torch = pytest.importorskip("torch")
    logits, _ = logits_and_labels(dtype, seed=4)
    fn = UniformCrossEntropy(0.5)
    loss, grad = fn.forward(logits), fn.backward()
    t_logits = torch.from_numpy(logits.copy()).requires_grad_()
    k = logits.shape[1]
    # Hendrycks et al.'s code: -(x.mean(1) - torch.logsumexp(x, dim=1)).mean(), weighted.
    uniform = torch.full_like(t_logits, 1.0 / k)
    t_loss = 0.5 * torch.nn.functional.cross_entropy(t_logits, uniform)
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=rtol)
    assert grad.dtype == dtype
    assert_close(grad, t_logits.grad.numpy(), rtol)


def test_uniform_cross_entropy_is_least_at_uniform_and_stable():
    fn = UniformCrossEntropy(1.0)
    assert fn.forward(np.full((3, 4), 7.0)) == pytest.approx(np.log(4))
    assert np.allclose(fn.backward(), 0)
    assert fn.forward(np.array([[1e4, 0.0, 0.0]])) == pytest.approx(2e4 / 3)
    assert np.isfinite(fn.backward()).all()


@pytest.mark.parametrize("weight", [-0.1, float("nan"), float("inf"), True])
def test_uniform_cross_entropy_rejects_bad_weight(weight):
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        UniformCrossEntropy(weight)


def test_uniform_cross_entropy_rejects_bad_logits():
    with pytest.raises(ValueError, match="logits must be a non-empty 2-D floating array"):
        UniformCrossEntropy().forward(np.zeros(3))
