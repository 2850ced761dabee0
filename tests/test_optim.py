"""Tests for purenn.optim: PyTorch parity, in-place updates, state round trips, clipping, errors."""

import io
import tracemalloc

import numpy as np
import pytest

from purenn import optim
from purenn.optim.optimizers import SGD, Adam, AdamW, clip_grad_norm

SHAPES = [(3, 4), (5,), (2, 3, 2, 2)]
DTYPES_TOL = [(np.float64, 1e-6), (np.float32, 1e-5)]

# (class name in both purenn.optim.optimizers and torch.optim, keyword arguments valid for both)
CONFIGS = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.1, "weight_decay": 0.05}),
    ("SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.05}),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.01}),
    ("AdamW", {"lr": 0.02, "betas": (0.85, 0.95), "weight_decay": 0.2}),
]
CONFIG_IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for name, kw in CONFIGS]


def make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s).astype(dtype), np.zeros(s, dtype)) for s in SHAPES]


def step_grads(step, dtype):
    """Different gradients at every step, with magnitudes varying across steps and arrays."""
    rng = np.random.default_rng(100 + step)
    return [(rng.standard_normal(s) * 10.0 ** rng.uniform(-2, 1)).astype(dtype) for s in SHAPES]


def set_grads(params, grads):
    for (_, grad), new in zip(params, grads, strict=True):
        grad[...] = new


def assert_close(actual, expected, tol):
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * np.abs(expected).max())


# --- PyTorch parity -------------------------------------------------------------------------


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("dtype, tol", DTYPES_TOL)
def test_optimizer_matches_torch_over_five_steps(name, kwargs, dtype, tol):
    torch = pytest.importorskip("torch")
    params = make_params(dtype)
    t_params = [torch.tensor(value, requires_grad=True) for value, _ in params]
    opt = getattr(optim, name)(params, **kwargs)
    t_opt = getattr(torch.optim, name)(t_params, **kwargs)

    for step in range(5):
        grads = step_grads(step, dtype)
        set_grads(params, grads)
        for t_param, grad in zip(t_params, grads, strict=True):
            t_param.grad = torch.tensor(grad)
        opt.step()
        t_opt.step()
        for (value, _), t_param in zip(params, t_params, strict=True):
            assert value.dtype == dtype
            assert_close(value, t_param.detach().numpy(), tol)

    # The state buffers carry PyTorch's names and values.
    state = opt.state_dict()
    assert state["step"] == 5
    for i, t_param in enumerate(t_params):
        for key, t_value in t_opt.state[t_param].items():
            if key != "step":
                assert_close(state[f"{key}.{i}"], t_value.numpy(), tol)


# --- in-place protocol ----------------------------------------------------------------------


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_step_updates_values_in_place_and_leaves_grads_alone(name, kwargs):
    params = make_params(np.float32)
    values = [value for value, _ in params]
    before = [value.copy() for value in values]
    grads = step_grads(0, np.float32)
    set_grads(params, grads)
    opt = getattr(optim, name)(iter(params), **kwargs)  # any iterable of pairs
    opt.step()
    for (value, grad), original, old, new_grad in zip(
        opt.params, values, before, grads, strict=True
    ):
        assert value is original
        assert not np.array_equal(value, old)
        np.testing.assert_array_equal(grad, new_grad)


def test_zero_grad_fills_grads_in_place():
    params = make_params(np.float32)
    set_grads(params, step_grads(0, np.float32))
    grads = [grad for _, grad in params]
    opt = SGD(params, lr=0.1)
    opt.zero_grad()
    for (_, grad), original in zip(opt.params, grads, strict=True):
        assert grad is original and not grad.any()


def test_assigned_lr_is_used_by_the_next_step():
    value, grad = np.zeros(3), np.ones(3)
    opt = SGD([(value, grad)], lr=1.0)
    opt.lr = 0.25
    opt.step()
    np.testing.assert_array_equal(value, [-0.25, -0.25, -0.25])


def test_mixed_dtypes_share_one_optimizer():
    mixed = [(np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32)), (np.ones(7), np.zeros(7))]
    alone = [[(v.copy(), g.copy())] for v, g in mixed]
    opts = [Adam(mixed, lr=0.1), *(Adam(p, lr=0.1) for p in alone)]
    rng = np.random.default_rng(0)
    for _ in range(3):
        for (_, grad), [(_, alone_grad)] in zip(mixed, alone, strict=True):
            grad[...] = alone_grad[...] = rng.standard_normal(grad.shape)
        for opt in opts:
            opt.step()
    for (value, _), [(alone_value, _)] in zip(mixed, alone, strict=True):
        np.testing.assert_array_equal(value, alone_value)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
        ("Adam", {"weight_decay": 0.01}),
        ("AdamW", {}),
    ],
)
def test_step_allocates_no_parameter_sized_arrays(name, kwargs):
    value = np.ones((2000, 2000), np.float32)  # 16 MB
    grad = np.full_like(value, 0.01)
    opt = getattr(optim, name)([(value, grad)], **kwargs)
    opt.step()
    tracemalloc.start()
    try:
        opt.step()
        clip_grad_norm([(value, grad)], max_norm=1.0)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        _ = value * 2  # control: NumPy allocations are visible to tracemalloc
        _, control = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert control > value.nbytes
    assert peak < 1_000_000


# --- state dict -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=CONFIG_IDS)
def test_state_dict_round_trip_through_npz_continues_exactly(name, kwargs):
    cls = getattr(optim, name)
    params = make_params(np.float32)
    opt = cls(params, **kwargs)
    for step in range(3):
        set_grads(params, step_grads(step, np.float32))
        opt.step()
        opt.lr *= 0.5  # as a schedule would; the saved lr must be the current one
    buffer = io.BytesIO()
    np.savez(buffer, **opt.state_dict())
    saved_values = [value.copy() for value, _ in params]

    for step in (3, 4):
        set_grads(params, step_grads(step, np.float32))
        opt.step()

    restored = [(value, np.zeros_like(value)) for value in saved_values]
    fresh = cls(restored, **kwargs)
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as archive:
        fresh.load_state_dict(dict(archive))
    assert fresh.step_count == 3 and fresh.lr == opt.lr
    for step in (3, 4):
        set_grads(restored, step_grads(step, np.float32))
        fresh.step()
    for (value, _), (restored_value, _) in zip(params, restored, strict=True):
        np.testing.assert_array_equal(restored_value, value)


def test_state_dict_layout():
    params = make_params(np.float32)
    assert set(SGD(params, lr=0.1).state_dict()) == {"step", "lr"}
    assert set(SGD(params, lr=0.1, momentum=0.9).state_dict()) == {
        "step",
        "lr",
        *(f"momentum_buffer.{i}" for i in range(len(SHAPES))),
    }
    opt = AdamW(params)
    set_grads(params, step_grads(0, np.float32))
    opt.step()
    state = opt.state_dict()
    assert set(state) == {
        "step",
        "lr",
        *(f"{name}.{i}" for name in ("exp_avg", "exp_avg_sq") for i in range(len(SHAPES))),
    }
    assert type(state["step"]) is int and type(state["lr"]) is float
    for i, shape in enumerate(SHAPES):
        assert state[f"exp_avg.{i}"].shape == shape and state[f"exp_avg.{i}"].dtype == np.float32
    # A snapshot: later steps do not change it.
    snapshot = state["exp_avg.0"].copy()
    opt.step()
    np.testing.assert_array_equal(state["exp_avg.0"], snapshot)


def test_load_state_dict_rejects_mismatched_state_and_changes_nothing():
    params = make_params(np.float32)
    opt = Adam(params, lr=0.01)
    set_grads(params, step_grads(0, np.float32))
    opt.step()
    good = opt.state_dict()

    missing = {k: v for k, v in good.items() if k != "exp_avg_sq.2"}
    with pytest.raises(ValueError, match=r"missing keys \['exp_avg_sq.2'\], unexpected keys \[\]"):
        opt.load_state_dict(missing)
    with pytest.raises(ValueError, match=r"unexpected keys \['momentum_buffer.0'\]"):
        opt.load_state_dict({**good, "momentum_buffer.0": np.zeros(3)})

    zeroed = {k: (np.zeros_like(v) if isinstance(v, np.ndarray) else 0) for k, v in good.items()}
    zeroed["exp_avg.1"] = np.zeros(6, np.float32)
    with pytest.raises(ValueError, match=r"exp_avg.1 must have shape \(5,\), received: .*\(6,\)"):
        opt.load_state_dict(zeroed)
    after = opt.state_dict()
    assert after["step"] == 1
    for key, value in good.items():
        np.testing.assert_array_equal(after[key], value)


# --- gradient clipping ----------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.1, 0.9, 1.1, 100.0])
@pytest.mark.parametrize("dtype, tol", DTYPES_TOL)
def test_clip_grad_norm_matches_torch(ratio, dtype, tol):
    torch = pytest.importorskip("torch")
    params = make_params(dtype)
    set_grads(params, step_grads(2, dtype))
    original = [grad.copy() for _, grad in params]
    # max_norm below (clipping) or above (no clipping) the true global norm
    max_norm = ratio * np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in original))
    t_params = [torch.zeros(grad.shape, dtype=torch.from_numpy(grad).dtype) for grad in original]
    for t_param, grad in zip(t_params, original, strict=True):
        t_param.grad = torch.tensor(grad)

    norm = clip_grad_norm(params, max_norm)
    t_norm = torch.nn.utils.clip_grad_norm_(t_params, max_norm)

    assert type(norm) is float
    assert norm == pytest.approx(t_norm.item(), rel=tol)
    for (_, grad), t_param in zip(params, t_params, strict=True):
        assert grad.dtype == dtype
        assert_close(grad, t_param.grad.numpy(), tol)
    new_norm = np.sqrt(sum(np.sum(grad.astype(np.float64) ** 2) for _, grad in params))
    if max_norm < norm:
        assert new_norm == pytest.approx(max_norm, rel=1e-5)
    else:
        for (_, grad), old in zip(params, original, strict=True):
            np.testing.assert_array_equal(grad, old)


def test_clip_grad_norm_of_zero_and_non_finite_gradients_leaves_them_alone():
    zeros = [(np.zeros(3), np.zeros(3))]
    assert clip_grad_norm(zeros, 1.0) == 0.0
    assert not zeros[0][1].any()
    grad = np.array([1.0, np.inf, 2.0])
    assert clip_grad_norm([(np.zeros(3), grad)], 1.0) == np.inf
    np.testing.assert_array_equal(grad, [1.0, np.inf, 2.0])


# --- argument checking ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (SGD, {"lr": -1}, "lr must be >= 0, received: lr=-1"),
        (SGD, {"lr": float("nan")}, "lr must be >= 0, received: lr=nan"),
        (SGD, {"lr": 0.1, "momentum": -0.5}, "momentum must be >= 0, received: momentum=-0.5"),
        (SGD, {"lr": 0.1, "nesterov": True}, "nesterov=True requires momentum > 0, "),
        (SGD, {"lr": 0.1, "weight_decay": -1e-4}, "weight_decay must be >= 0, received: "),
        (Adam, {"lr": -1e-3}, "lr must be >= 0, received: lr=-0.001"),
        (Adam, {"betas": (0.9, 1.0)}, "betas must be a pair of numbers in [0, 1), received: "),
        (Adam, {"betas": (-0.1, 0.999)}, "received: betas=(-0.1, 0.999)"),
        (Adam, {"betas": (0.9,)}, "received: betas=(0.9,)"),
        (AdamW, {"eps": 0}, "eps must be > 0, received: eps=0"),
        (AdamW, {"weight_decay": -0.01}, "weight_decay must be >= 0, received: weight_decay=-0.01"),
    ],
)
def test_bad_hyperparameters_raise_with_name_and_value(cls, kwargs, message):
    with pytest.raises(ValueError) as info:
        cls(make_params(np.float32), **kwargs)
    assert message in str(info.value)


def test_assigning_a_negative_lr_raises():
    opt = SGD(make_params(np.float32), lr=0.1)
    with pytest.raises(ValueError, match="lr must be >= 0, received: lr=-0.5"):
        opt.lr = -0.5


@pytest.mark.parametrize(
    "params, message",
    [
        ([], "params must hold at least one (value, grad) pair, received: params=[]"),
        ([np.zeros(3)], "params[0] must be a (value, grad) pair, received: ndarray"),
        ([(np.zeros(3), [0, 0, 0])], "params[0] must be a pair of NumPy arrays, received: "),
        ([(np.zeros(3), np.zeros(4))], "equal shape and dtype, received: value (3,) float64"),
        ([(np.zeros(3), np.zeros(3, np.float32))], "grad (3,) float32"),
        ([(np.zeros(3, int), np.zeros(3, int))], "must be writeable C-contiguous floating arrays"),
        ([(np.broadcast_to(np.zeros(1), 3), np.zeros(3))], "(writeable=False)"),
        ([(np.zeros((3, 4))[:, ::2], np.zeros((3, 2)))], "C-contiguous"),
    ],
)
def test_bad_params_raise(params, message):
    with pytest.raises(ValueError) as info:
        Adam(params)
    assert message in str(info.value)


def test_clip_grad_norm_rejects_negative_max_norm():
    with pytest.raises(ValueError, match="max_norm must be >= 0, received: max_norm=-1.0"):
        clip_grad_norm(make_params(np.float32), -1.0)


def test_parameters_larger_than_a_chunk_update_like_torch():
    """Chunked updates (optim.CHUNK elements at a time) cover every element exactly once."""
    torch = pytest.importorskip("torch")
    from purenn.optim.optimizers import CHUNK

    rng = np.random.default_rng(0)
    value = rng.standard_normal((2, CHUNK + 7))
    grad = np.zeros_like(value)
    reference = torch.tensor(value.copy(), requires_grad=True)
    ours, theirs = Adam([(value, grad)], lr=0.01), torch.optim.Adam([reference], lr=0.01)
    for _ in range(3):
        grad[...] = rng.standard_normal(grad.shape)
        reference.grad = torch.tensor(grad.copy())
        ours.step()
        theirs.step()
    np.testing.assert_allclose(value, reference.detach().numpy(), rtol=1e-12, atol=1e-12)
