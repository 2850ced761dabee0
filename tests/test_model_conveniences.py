"""PyTorch habits that work: callable losses and layers, a nested repr, len/indexing/slicing/
iteration on Sequential, and gradient accumulation with PyTorch's ``.grad`` semantics."""

from __future__ import annotations

import numpy as np
import pytest
from torch_parity import assert_close

import purenn as pn


def conv_bn_dense(dtype=np.float64) -> pn.Sequential:
    return pn.Sequential(
        [
            pn.Conv2D(3, 4, 3, padding=1, rng=0, dtype=dtype),
            pn.BatchNorm2D(4, dtype=dtype),
            pn.ReLU(),
            pn.MaxPool2D(2),
            pn.Flatten(),
            pn.Dense(4 * 4 * 4, 5, rng=1, dtype=dtype),
        ],
        input_shape=(3, 8, 8),
    )


def test_repr_is_nested_like_torch_and_layers_show_their_arguments():
    assert repr(conv_bn_dense(np.float32)) == (
        "Sequential(\n"
        "  (0): Conv2D(in_channels=3, out_channels=4, kernel_size=3, padding=1)\n"
        "  (1): BatchNorm2D(num_features=4)\n"
        "  (2): ReLU()\n"
        "  (3): MaxPool2D(kernel_size=2, stride=2)\n"
        "  (4): Flatten()\n"
        "  (5): Dense(in_features=64, out_features=5)\n"
        ")"
    )
    assert repr(pn.Sequential([])) == "Sequential()"
    assert repr(pn.SoftmaxCrossEntropy(0.1)) == "SoftmaxCrossEntropy(label_smoothing=0.1)"


def test_len_indexing_slicing_and_iteration():
    model = conv_bn_dense()
    assert len(model) == 6
    assert model[0] is model.layers[0] and model[-1] is model.layers[5]
    assert list(model) == model.layers
    head = model[4:]
    assert isinstance(head, pn.Sequential) and len(head) == 2
    assert head[1] is model[5]  # shared layers: the slice trains the same weights
    assert head.input_shape == (4, 4, 4)  # the output shape of model[:4]
    assert model[:4].input_shape == (3, 8, 8) and model[::2].input_shape is None
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    features = model[:4](x, training=False)
    np.testing.assert_array_equal(head(features, training=False), model(x, training=False))
    with pytest.raises(IndexError):
        model[6]


def test_losses_and_layers_are_callable():
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((4, 3)), np.array([0, 2, 1, 1])
    loss_fn = pn.SoftmaxCrossEntropy(label_smoothing=0.1)
    assert loss_fn(logits, labels) == loss_fn.forward(logits, labels)
    mse = pn.MSE()
    assert mse(logits, logits + 1) == pytest.approx(1.0)
    relu = pn.ReLU()
    np.testing.assert_array_equal(relu(logits), np.maximum(logits, 0))


def _torch_twin(model: pn.Sequential):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    twin = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 5),
    ).double()
    state = {k: torch.from_numpy(v) for k, v in model.state_dict().items()}
    twin.load_state_dict(state, strict=False)  # (torch also counts BatchNorm's batches)
    return twin


def test_backward_accumulate_matches_torch_accumulated_grads():
    """Three micro-batches: zero_grad, then backward(accumulate=True) each, as loss.backward()."""
    torch = pytest.importorskip("torch")
    model = conv_bn_dense()
    twin = _torch_twin(model)
    rng = np.random.default_rng(1)
    batches = [(rng.standard_normal((4, 3, 8, 8)), rng.integers(0, 5, 4)) for _ in range(3)]
    loss_fn = pn.SoftmaxCrossEntropy(label_smoothing=0.1)

    model.zero_grad()
    twin.zero_grad()
    for x, y in batches:
        loss_fn(model(x, training=True), y)
        model.backward(loss_fn.backward() / len(batches), input_grad=False, accumulate=True)
        out = twin(torch.from_numpy(x))
        loss = torch.nn.functional.cross_entropy(out, torch.from_numpy(y), label_smoothing=0.1)
        (loss / len(batches)).backward()

    torch_grads = {name: p.grad.numpy() for name, p in twin.named_parameters()}
    for name, _, grad in model.named_parameters():
        assert_close(grad, torch_grads[name], 1e-9, name)
        assert np.abs(grad).max() > 0, name

    # Without accumulate, backward overwrites: the grads are those of the last micro-batch only.
    x, y = batches[-1]
    loss_fn(model(x, training=True), y)
    model.backward(loss_fn.backward(), input_grad=False)
    twin.zero_grad()
    out = twin(torch.from_numpy(x))
    torch.nn.functional.cross_entropy(out, torch.from_numpy(y), label_smoothing=0.1).backward()
    for name, _, grad in model.named_parameters():
        assert_close(grad, dict(twin.named_parameters())[name].grad.numpy(), 1e-9, name)
