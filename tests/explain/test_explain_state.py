"""An explanation leaves the model exactly as it was, even in the middle of training."""

from __future__ import annotations

import numpy as np
from explain_models import bn_dropout_cnn

import purenn as pn
from purenn.explain import explain, grad_cam, saliency
from purenn.explain.deletion import deletion_check


def _snapshot(model):
    return {
        "state": model.state_dict(),
        "grads": {name: grad.copy() for name, _, grad in model.named_parameters()},
        "rng": model.rng_states(),
        "training": model.training,
    }


def _assert_same(a, b):
    assert a["training"] == b["training"] and a["rng"] == b["rng"]
    for store in ("state", "grads"):
        assert a[store].keys() == b[store].keys()
        for key in a[store]:
            np.testing.assert_array_equal(a[store][key], b[store][key], err_msg=f"{store} {key}")


def _explain_everything(model, x):
    grad_cam(model, x)
    grad_cam(model, x, layer=0)
    result = explain(model, x, "saliency", smooth_samples=2)
    deletion_check(model, x, result.maps, result.targets)


def _train_step(model, optimizer, x, y, loss_fn):
    loss = loss_fn.forward(model.forward(x, training=True), y)
    model.backward(loss_fn.backward(), input_grad=False)
    optimizer.step()
    return loss


def test_explaining_between_training_steps_changes_no_weight_and_no_gradient():
    rng = np.random.default_rng(3)
    batches = [
        (rng.standard_normal((8, 3, 16, 16)).astype(np.float32), rng.integers(0, 4, 8))
        for _ in range(2)
    ]
    runs = []
    for explain_between in (False, True):
        model = bn_dropout_cnn(np.float32).train()
        optimizer = pn.Adam(model.parameters(), lr=1e-2)
        loss_fn = pn.SoftmaxCrossEntropy()
        _train_step(model, optimizer, *batches[0], loss_fn)
        if explain_between:
            before = _snapshot(model)
            _explain_everything(model, batches[1][0][:3])
            _assert_same(before, _snapshot(model))
        loss = _train_step(model, optimizer, *batches[1], loss_fn)
        runs.append((loss, _snapshot(model)))
    assert runs[0][0] == runs[1][0]
    _assert_same(runs[0][1], runs[1][1])  # weights, gradients and Dropout RNG after step 2


def test_explaining_between_a_forward_and_its_backward_keeps_the_pending_backward():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 3, 16, 16)).astype(np.float32)
    dy = rng.standard_normal((6, 4)).astype(np.float32)
    grads = []
    for explain_between in (False, True):
        model = bn_dropout_cnn(np.float32).train()
        model.forward(x, training=True)
        if explain_between:
            _explain_everything(model, x[:2])
        dx = model.backward(dy)
        grads.append((dx, _snapshot(model)))
    np.testing.assert_array_equal(grads[0][0], grads[1][0])
    _assert_same(grads[0][1], grads[1][1])


def test_the_maps_do_not_depend_on_the_models_mode_or_batch():
    model = bn_dropout_cnn(np.float32)
    x = np.random.default_rng(5).standard_normal((4, 3, 16, 16)).astype(np.float32)
    eval_maps = grad_cam(model.eval(), x)
    train_maps = grad_cam(model.train(), x)
    np.testing.assert_array_equal(eval_maps, train_maps)
    assert model.training
    one_by_one = np.concatenate([saliency(model, x[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(saliency(model, x), one_by_one, rtol=1e-5, atol=1e-6)
