"""Tests for purenn.optim.schedules: the formulas, PyTorch's schedulers, resuming, errors."""

import math

import numpy as np
import pytest

from purenn.optim.optimizers import SGD
from purenn.optim.schedules import Constant, CosineWarmup, StepDecay

BASE_LR = 0.1

# (total_steps, warmup_steps, warmup_start_factor, min_lr)
COSINE_CONFIGS = [(20, 0, 0.0, 0.0), (20, 5, 0.0, 0.0), (30, 7, 0.1, 1e-3), (10, 1, 0.5, 0.02)]


def cosine_factor(step, total, warmup, start_factor, min_factor):
    """The specified schedule as a multiple of the base rate, written out independently."""
    if step < warmup:
        return start_factor + (1 - start_factor) * step / warmup
    step = min(step, total)
    cosine = 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
    return min_factor + (1 - min_factor) * cosine


def make_optimizer(lr=BASE_LR):
    return SGD([(np.zeros(3), np.zeros(3))], lr=lr)


def make_cosine(optimizer, config):
    total, warmup, start_factor, min_lr = config
    return CosineWarmup(
        optimizer,
        total_steps=total,
        warmup_steps=warmup,
        warmup_start_factor=start_factor,
        min_lr=min_lr,
    )


@pytest.mark.parametrize("config", COSINE_CONFIGS)
def test_cosine_warmup_follows_the_formula_at_every_step(config):
    total, warmup, start_factor, min_lr = config
    opt = make_optimizer()
    schedule = make_cosine(opt, config)
    for step in range(total + 5):
        expected = BASE_LR * cosine_factor(step, total, warmup, start_factor, min_lr / BASE_LR)
        assert opt.lr == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert schedule.lr_at(step) == opt.lr
        schedule.step()


@pytest.mark.parametrize("config", COSINE_CONFIGS)
def test_cosine_warmup_landmarks(config):
    total, warmup, start_factor, min_lr = config
    schedule = make_cosine(make_optimizer(), config)
    lrs = [schedule.lr_at(step) for step in range(total + 3)]
    assert lrs[0] == pytest.approx(start_factor * BASE_LR if warmup else BASE_LR)
    assert lrs[warmup] == pytest.approx(BASE_LR)
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1 : warmup + 1], strict=True))
    assert all(a > b for a, b in zip(lrs[warmup:total], lrs[warmup + 1 : total + 1], strict=True))
    if (total - warmup) % 2 == 0:
        assert lrs[(total + warmup) // 2] == pytest.approx((BASE_LR + min_lr) / 2)
    assert lrs[total:] == pytest.approx([min_lr] * 3, abs=1e-15)


def test_construction_sets_the_first_rate():
    opt = make_optimizer()
    schedule = CosineWarmup(opt, total_steps=10, warmup_steps=4)
    assert opt.lr == 0.0 and schedule.base_lr == BASE_LR


@pytest.mark.parametrize("config", COSINE_CONFIGS)
def test_cosine_warmup_matches_torch_lambda_lr_in_training(config):
    torch = pytest.importorskip("torch")
    total, warmup, start_factor, min_lr = config
    rng = np.random.default_rng(0)
    value, grad = rng.standard_normal(4), np.zeros(4)
    opt = SGD([(value, grad)], lr=BASE_LR, momentum=0.9)
    schedule = make_cosine(opt, config)
    t_value = torch.tensor(value, requires_grad=True)
    t_opt = torch.optim.SGD([t_value], lr=BASE_LR, momentum=0.9)
    t_schedule = torch.optim.lr_scheduler.LambdaLR(
        t_opt, lambda s: cosine_factor(s, total, warmup, start_factor, min_lr / BASE_LR)
    )
    for _ in range(total + 3):
        assert opt.lr == pytest.approx(t_opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        grad[...] = rng.standard_normal(4)
        t_value.grad = torch.tensor(grad)
        opt.step()
        t_opt.step()
        schedule.step()
        t_schedule.step()
        np.testing.assert_allclose(value, t_value.detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize("config", [c for c in COSINE_CONFIGS if c[1] and c[2]])
def test_cosine_warmup_matches_torch_linear_then_cosine(config):
    torch = pytest.importorskip("torch")
    sched = torch.optim.lr_scheduler
    total, warmup, start_factor, min_lr = config
    opt = make_optimizer()
    schedule = make_cosine(opt, config)
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE_LR)
    t_schedule = sched.SequentialLR(
        t_opt,
        [
            sched.LinearLR(t_opt, start_factor=start_factor, total_iters=warmup),
            sched.CosineAnnealingLR(t_opt, T_max=total - warmup, eta_min=min_lr),
        ],
        milestones=[warmup],
    )
    for _ in range(total + 1):  # CosineAnnealingLR rises again after T_max; ours stays at min_lr
        assert opt.lr == pytest.approx(t_opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        t_opt.step()
        t_schedule.step()
        schedule.step()


@pytest.mark.parametrize("step_size, gamma", [(3, 0.1), (1, 0.5), (4, 1.0)])
def test_step_decay_matches_torch_step_lr(step_size, gamma):
    opt = make_optimizer()
    schedule = StepDecay(opt, step_size=step_size, gamma=gamma)
    for step in range(12):
        assert opt.lr == pytest.approx(BASE_LR * gamma ** (step // step_size), rel=1e-12)
        schedule.step()

    torch = pytest.importorskip("torch")
    opt = make_optimizer()
    schedule = StepDecay(opt, step_size=step_size, gamma=gamma)
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE_LR)
    t_schedule = torch.optim.lr_scheduler.StepLR(t_opt, step_size=step_size, gamma=gamma)
    for _ in range(12):
        assert opt.lr == pytest.approx(t_opt.param_groups[0]["lr"], rel=1e-12)
        t_opt.step()
        t_schedule.step()
        schedule.step()


def test_constant_keeps_the_base_rate():
    opt = make_optimizer(0.03)
    schedule = Constant(opt)
    for _ in range(5):
        schedule.step()
        assert opt.lr == 0.03
    assert schedule.lr_at(10**9) == 0.03


SCHEDULES = [
    lambda opt: CosineWarmup(opt, total_steps=20, warmup_steps=5, min_lr=1e-3),
    lambda opt: StepDecay(opt, step_size=4, gamma=0.5),
    Constant,
]


@pytest.mark.parametrize("make_schedule", SCHEDULES, ids=["cosine", "step", "constant"])
def test_resume_from_state_dict_continues_exactly(make_schedule):
    opt = make_optimizer()
    schedule = make_schedule(opt)
    for _ in range(7):
        schedule.step()
    saved_schedule, saved_opt = schedule.state_dict(), opt.state_dict()
    assert saved_schedule == {"step": 7, "base_lr": BASE_LR}
    expected = []
    for _ in range(8):
        schedule.step()
        expected.append(opt.lr)

    # The schedule may be built before or after the optimizer's state is loaded.
    for schedule_first in (True, False):
        fresh = make_optimizer()
        if schedule_first:
            resumed = make_schedule(fresh)
            fresh.load_state_dict(saved_opt)
        else:
            fresh.load_state_dict(saved_opt)
            resumed = make_schedule(fresh)
        resumed.load_state_dict(
            {key: np.asarray(value) for key, value in saved_schedule.items()}  # as from .npz
        )
        assert resumed.position == 7 and fresh.lr == saved_opt["lr"]
        actual = []
        for _ in range(8):
            resumed.step()
            actual.append(fresh.lr)
        assert actual == expected


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"total_steps": 0}, "total_steps must be an int >= 1, received: total_steps=0"),
        ({"total_steps": 10.0}, "total_steps must be an int >= 1, received: total_steps=10.0"),
        ({"total_steps": 10, "warmup_steps": -1}, "warmup_steps must be an int in [0, total_"),
        ({"total_steps": 10, "warmup_steps": 10}, "total_steps=10), received: warmup_steps=10"),
        (
            {"total_steps": 10, "warmup_start_factor": 1.5},
            "warmup_start_factor must be in [0, 1], received: warmup_start_factor=1.5",
        ),
        ({"total_steps": 10, "min_lr": -1e-3}, "min_lr must be in [0, lr=0.1], received: min_lr="),
        ({"total_steps": 10, "min_lr": 0.2}, "received: min_lr=0.2"),
    ],
)
def test_cosine_warmup_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as info:
        CosineWarmup(make_optimizer(), **kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"step_size": 0}, "step_size must be an int >= 1, received: step_size=0"),
        ({"step_size": 2, "gamma": 0.0}, "gamma must be in (0, 1], received: gamma=0.0"),
        ({"step_size": 2, "gamma": 1.5}, "received: gamma=1.5"),
    ],
)
def test_step_decay_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as info:
        StepDecay(make_optimizer(), **kwargs)
    assert message in str(info.value)


def test_negative_steps_are_rejected():
    schedule = Constant(make_optimizer())
    with pytest.raises(ValueError, match="step must be >= 0, received: step=-1"):
        schedule.lr_at(-1)
    with pytest.raises(ValueError, match="step must be >= 0, received: step=-3"):
        schedule.load_state_dict({"step": -3, "base_lr": BASE_LR})
    assert schedule.position == 0
