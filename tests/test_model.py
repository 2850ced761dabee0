"""Sequential: forward/backward chaining, parameters, state dicts, config round trip, summary."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_layer_gradients, numerical_gradient, relative_error
from torch_parity import assert_close

import purenn as pn


def small_cnn(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return pn.Sequential(
        [
            pn.Conv2D(3, 4, 3, padding=1, rng=rng, dtype=dtype),
            pn.BatchNorm2D(4, dtype=dtype),
            pn.ReLU(),
            pn.MaxPool2D(2),
            pn.Flatten(),
            pn.Dense(4 * 4 * 4, 5, rng=rng, dtype=dtype),
            pn.Dropout(0.5, rng=rng),
            pn.Dense(5, 3, init="glorot", weight_norm=True, rng=rng, dtype=dtype),
        ],
        input_shape=(3, 8, 8),
    )


def test_parameters_are_named_like_torch_and_shared_with_layers():
    model = small_cnn()
    names = [name for name, _, _ in model.named_parameters()]
    assert names == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "5.weight",
        "5.bias",
        "7.weight_g",
        "7.weight_v",
        "7.bias",
    ]
    value, grad = model.parameters()[0]
    assert value is model.layers[0].params["weight"] and grad is model.layers[0].grads["weight"]
    assert model.num_parameters == sum(v.size for v, _ in model.parameters())


def test_model_gradient_matches_finite_differences_end_to_end():
    model = small_cnn(np.float64, seed=3)
    model.layers[6] = pn.Dropout(0.0)  # deterministic for finite differences
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8))

    class Whole:
        """Adapter so the layer gradient checker sees the model as one layer."""

        params = {name: value for name, value, _ in model.named_parameters()}
        buffers = {}

        def forward(self, inputs, training=True):
            return model.forward(inputs, training=training, for_backward=True)

        def backward(self, dy):
            dx = model.backward(dy)
            self.grads = {name: grad for name, _, grad in model.named_parameters()}
            return dx

    check_layer_gradients(Whole(), x, training=False)
    # Training mode too (batch statistics flow through the BatchNorm backward).
    y = model.forward(x, training=True)
    r = np.random.default_rng(2).standard_normal(y.shape)
    model.backward(r)
    analytic = model.layers[0].grads["weight"].copy()
    numeric = numerical_gradient(
        lambda: float(np.sum(model.forward(x, training=True) * r)), model.layers[0].params["weight"]
    )
    assert relative_error(analytic, numeric) < 1e-6


def test_state_dict_round_trip_and_in_place_load():
    model, other = small_cnn(seed=0), small_cnn(seed=1)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    model.forward(x, training=True)  # moves BatchNorm running statistics
    state = model.state_dict()
    assert "1.running_mean" in state and "1.running_var" in state
    before = other.parameters()[0][0]
    other.load_state_dict(state)
    assert other.parameters()[0][0] is before  # loaded in place: optimizers keep their arrays
    np.testing.assert_array_equal(model.eval()(x), other.eval()(x))
    state["0.weight"][...] = 0  # a copy, not a view of the live weights
    assert model.layers[0].params["weight"].any()


def test_load_state_dict_reports_mismatches():
    model = small_cnn()
    state = model.state_dict()
    del state["0.bias"]
    state["9.weight"] = np.zeros(1)
    with pytest.raises(
        ValueError, match=r"missing keys \['0.bias'\].*unexpected keys \['9.weight'\]"
    ):
        model.load_state_dict(state)
    state = small_cnn().state_dict()
    state["5.weight"] = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=r"'5.weight' has shape \(2, 2\).*\(5, 64\)"):
        model.load_state_dict(state)


def test_config_round_trip_rebuilds_the_same_function():
    model = small_cnn()
    rebuilt = pn.Sequential.from_config(model.get_config())
    rebuilt.load_state_dict(model.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(model.eval()(x), rebuilt.eval()(x))
    assert rebuilt.get_config() == model.get_config()


def test_rng_states_make_dropout_repeatable():
    model = small_cnn()
    x = np.ones((2, 3, 8, 8), dtype=np.float32)
    saved = model.rng_states()
    first = model.forward(x, training=True)
    model.set_rng_states(saved)
    np.testing.assert_array_equal(model.forward(x, training=True), first)


def test_summary_lists_shapes_parameters_and_flops():
    text = small_cnn().summary()
    lines = text.splitlines()
    assert "output shape" in lines[0] and "FLOPs" in lines[0]
    assert "(4, 8, 8)" in text and "(64,)" in text
    conv_flops = 2 * 27 * 4 * 64
    assert f"{conv_flops:,}" in text
    assert lines[-1].split()[1] == f"{small_cnn().num_parameters:,}"


def test_state_dict_loads_into_torch_sequential():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = small_cnn(np.float64, seed=5)
    model.layers[7] = pn.Dense(5, 3, rng=1, dtype=np.float64)  # plain weights for torch
    reference = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 5),
        nn.Dropout(0.5),
        nn.Linear(5, 3),
    ).double()
    state = {key: torch.from_numpy(value) for key, value in model.state_dict().items()}
    reference.load_state_dict(state, strict=False)
    reference.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    assert_close(model.eval()(x), reference(torch.from_numpy(x)).detach().numpy(), 1e-10, "output")


def test_relu_before_max_pool_runs_swapped_with_identical_results():
    model = pn.Sequential([pn.Conv2D(2, 3, 3, rng=0), pn.ReLU(), pn.MaxPool2D(2), pn.Flatten()])
    x = np.random.default_rng(0).standard_normal((4, 2, 9, 9)).astype(np.float32)
    dy = np.random.default_rng(1).standard_normal((4, 27)).astype(np.float32)
    y, dx = model.forward(x), model.backward(dy)
    expected, grad = x, dy
    for layer in model.layers:  # the literal order, one layer at a time
        expected = layer.forward(expected)
    for layer in reversed(model.layers):
        grad = layer.backward(grad)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(dx, grad)


def test_backward_without_input_gradient_keeps_parameter_gradients():
    model = small_cnn(seed=2)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    dy = np.ones((2, 3), dtype=np.float32)
    state = model.rng_states()
    model.forward(x, training=True)
    assert model.backward(dy) is not None
    full = [grad.copy() for _, grad in model.parameters()]
    model.set_rng_states(state)
    model.forward(x, training=True)
    assert model.backward(dy, input_grad=False) is None
    for expected, (_, grad) in zip(full, model.parameters(), strict=True):
        np.testing.assert_array_equal(grad, expected)
