"""The functional API: Input, merge layers, Model; gradients, torch parity, files, errors."""

from __future__ import annotations

import numpy as np
import pytest
from gradcheck import check_layer_gradients, numerical_gradient, relative_error
from torch_parity import assert_close

import purenn as pn
from purenn.io import ModelFileError, load_torch_state, write_safetensors
from purenn.io.model_file import load_model, save_model
from purenn.presets import build_preset


def check_model_gradients(model: pn.Model, x: np.ndarray, tol: float = 1e-6) -> None:
    """Input and every parameter gradient of ``sum(model(x) * r)`` against central differences."""
    y = model.forward(x, training=False, for_backward=True)
    r = np.random.default_rng(1).standard_normal(y.shape)
    analytic = {"input": model.backward(r.copy())}
    analytic |= {name: grad.copy() for name, _, grad in model.named_parameters()}

    def loss() -> float:
        return float(np.sum(model.forward(x, training=False) * r))

    numeric = {"input": numerical_gradient(loss, x)}
    numeric |= {
        name: numerical_gradient(loss, value) for name, value, _ in model.named_parameters()
    }
    errors = {name: relative_error(analytic[name], numeric[name]) for name in numeric}
    assert all(err < tol for err in errors.values()), errors


def conv(cin, cout, k=3, seed=0):
    return pn.Conv2D(
        cin, cout, k, padding=k // 2, rng=np.random.default_rng(seed), dtype=np.float64
    )


def test_add_gradients_match_finite_differences():
    x = pn.Input((2, 5, 5))
    y = pn.Add()([conv(2, 3, seed=1)(x), conv(2, 3, 1, seed=2)(x), conv(2, 3, seed=3)(x)])
    model = pn.Model(x, y)
    check_model_gradients(model, np.random.default_rng(0).standard_normal((2, 2, 5, 5)))


def test_concatenate_gradients_match_finite_differences():
    x = pn.Input((2, 5, 5))
    y = pn.Concatenate(axis=1)([conv(2, 3, seed=1)(x), conv(2, 1, 1, seed=2)(x)])
    y = conv(4, 2, seed=3)(y)  # mixes the joined channels, so a wrong split shows
    model = pn.Model(x, y)
    check_model_gradients(model, np.random.default_rng(0).standard_normal((2, 2, 5, 5)))


def test_fan_out_sums_the_gradients_of_every_consumer():
    x = pn.Input((6,))
    h = pn.Tanh()(pn.Dense(6, 4, rng=np.random.default_rng(1), dtype=np.float64)(x))
    a = pn.Dense(4, 4, rng=np.random.default_rng(2), dtype=np.float64)(h)
    b = pn.Sigmoid()(h)
    c = pn.Dense(4, 4, rng=np.random.default_rng(3), dtype=np.float64)(h)
    y = pn.Concatenate(axis=1)([pn.Add()([a, b]), c, h])  # h read by four nodes
    model = pn.Model(x, y)
    check_model_gradients(model, np.random.default_rng(0).standard_normal((3, 6)))


@pytest.mark.parametrize(
    ("cin", "cout", "groups", "stride", "padding"),
    [(4, 6, 2, 1, 1), (6, 12, 3, 2, 0), (3, 3, 3, 1, 1), (4, 8, 4, 2, 1)],
)
def test_grouped_and_depthwise_conv_gradients_match_finite_differences(
    cin, cout, groups, stride, padding
):
    layer = pn.Conv2D(
        cin, cout, 3, stride=stride, padding=padding, groups=groups, rng=0, dtype=np.float64
    )
    assert layer.params["weight"].shape == (cout, cin // groups, 3, 3)
    # 5 samples of a small map: the products take 2 samples at a time, the last alone
    x = np.random.default_rng(1).standard_normal((5, cin, 6, 6))
    check_layer_gradients(layer, x)


def test_grouped_conv_equals_dense_convs_on_channel_slices():
    layer = pn.Conv2D(4, 6, 3, padding=1, groups=2, rng=0, dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 5))
    halves = []
    for g in range(2):
        part = pn.Conv2D(2, 3, 3, padding=1, dtype=np.float64)
        part.params["weight"][...] = layer.params["weight"][3 * g : 3 * g + 3]
        part.params["bias"][...] = layer.params["bias"][3 * g : 3 * g + 3]
        halves.append(part.forward(x[:, 2 * g : 2 * g + 2]))
    np.testing.assert_allclose(layer.forward(x), np.concatenate(halves, axis=1), atol=1e-12)
    assert layer.flops((4, 5, 5)) == 2 * (2 * 9) * 6 * 25


def test_groups_must_divide_the_channels():
    with pytest.raises(ValueError, match="groups must divide"):
        pn.Conv2D(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="needs groups=1"):
        pn.Conv2D(4, 4, 3, padding=1, groups=2, algorithm="winograd")


def residual_graph(dtype=np.float64):
    """conv-BN-ReLU stem, a depthwise residual block, a grouped conv branch concatenated."""
    rng = np.random.default_rng(0)
    x = pn.Input((3, 8, 8))
    h = pn.ReLU()(
        pn.BatchNorm2D(4, dtype=dtype)(pn.Conv2D(3, 4, 3, padding=1, rng=rng, dtype=dtype)(x))
    )
    r = pn.BatchNorm2D(4, dtype=dtype)(
        pn.Conv2D(4, 4, 3, padding=1, groups=4, rng=rng, dtype=dtype)(h)
    )
    h2 = pn.ReLU()(pn.Add()([h, r]))
    side = pn.Conv2D(4, 2, 3, padding=1, groups=2, rng=rng, dtype=dtype)(h)
    joined = pn.Concatenate(axis=1)([h2, side])
    y = pn.Dense(6, 5, rng=rng, dtype=dtype)(pn.GlobalAvgPool2D()(joined))
    return pn.Model(x, y)


class TorchTwin:
    def __init__(self, torch):
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4))
        self.side = nn.Conv2d(4, 2, 3, padding=1, groups=2)
        self.head = nn.Linear(6, 5)
        self.torch = torch
        # purenn's topological order: conv, bn, relu, conv, bn, add, relu, conv, concat, gap, dense
        self.by_index = {
            0: self.stem[0],
            1: self.stem[1],
            3: self.branch[0],
            4: self.branch[1],
            7: self.side,
            10: self.head,
        }

    def modules(self):
        return [self.stem, self.branch, self.side, self.head]

    def parameters(self):
        return [p for m in self.modules() for p in m.parameters()]

    def eval(self):
        for module in self.modules():
            module.eval()
        return self

    def __call__(self, x):
        h = self.stem(x)
        h2 = self.torch.relu(h + self.branch(h))
        joined = self.torch.cat([h2, self.side(h)], dim=1)
        return self.head(joined.mean(dim=(2, 3)))


@pytest.fixture
def torch64():
    """torch with float64 as its default dtype for the test (restored afterwards)."""
    torch = pytest.importorskip("torch")
    torch.set_default_dtype(torch.float64)
    yield torch
    torch.set_default_dtype(torch.float32)


def adam_steps_in_both(torch, model, twin, batches, lr=1e-2) -> list[tuple[float, float]]:
    """One Adam step of cross-entropy per ``(x, labels)`` batch in purenn and in torch (both in
    training mode); each step's two losses."""
    loss_fn = pn.SoftmaxCrossEntropy()
    optimizer = pn.Adam(model.parameters(), lr=lr)
    t_optimizer = torch.optim.Adam(list(twin.parameters()), lr=lr)
    losses = []
    for x, labels in batches:
        loss = loss_fn.forward(model.forward(x, training=True), labels)
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()
        t_optimizer.zero_grad()
        t_loss = torch.nn.functional.cross_entropy(
            twin(torch.from_numpy(x)), torch.from_numpy(labels)
        )
        t_loss.backward()
        t_optimizer.step()
        losses.append((loss, t_loss.item()))
    return losses


def test_graph_matches_torch_logits_gradients_and_adam_steps(torch64):
    torch = torch64
    model = residual_graph()
    twin = TorchTwin(torch)
    with torch.no_grad():
        for index, module in twin.by_index.items():
            named = dict(module.named_parameters()) | dict(module.named_buffers())
            for store in (model.layers[index].params, model.layers[index].buffers):
                for name, value in store.items():
                    named[name].copy_(torch.from_numpy(value.reshape(named[name].shape)))
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 8, 8))
    labels = rng.integers(0, 5, 4)
    loss_fn = pn.SoftmaxCrossEntropy()

    logits = model.forward(x, training=True)
    tx = torch.from_numpy(x).requires_grad_(True)
    t_logits = twin(tx)
    assert_close(logits, t_logits.detach().numpy(), 1e-9, "logits")
    loss_fn.forward(logits, labels)
    dx = model.backward(loss_fn.backward())
    torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(labels)).backward()
    assert_close(dx, tx.grad.numpy(), 1e-9, "input gradient")
    for index, module in twin.by_index.items():
        for name, param in module.named_parameters():
            grad = model.layers[index].grads[name]
            assert_close(grad, param.grad.numpy().reshape(grad.shape), 1e-9, f"{index}.{name}")

    adam_steps_in_both(torch, model, twin, [(x, labels)] * 5)
    with torch.no_grad():
        after = twin.eval()(torch.from_numpy(x)).numpy()
    assert_close(model.forward(x, training=False), after, 1e-7, "after Adam")


def test_resnet_preset_loads_its_torch_twin_and_trains_like_it_on_the_same_batches(
    tmp_path, torch64
):
    """plantvillage-resnet (34 classes, at 32x32 to keep it quick) and TorchResNet, the same
    network written as torch users write a ResNet: load_torch_state with the module names, then
    the same logits and the same 3 Adam steps on the same batches (float64)."""
    torch = torch64
    from torch_twin import TorchResNet, module_names, resnet_twin  # benchmarks/torch_twin.py

    torch.manual_seed(0)
    twin = TorchResNet(34)
    with torch.no_grad():  # BatchNorm's parameters and running statistics off 1 and 0
        for name, param in twin.named_parameters():
            if "bn" in name or "downsample.1" in name:
                param.add_(0.2 * torch.randn_like(param))
        for _ in range(2):
            twin(torch.randn(4, 3, 32, 32))
    state = {key: value.numpy() for key, value in twin.state_dict().items()}
    path = write_safetensors(tmp_path / "twin.safetensors", state)

    model = build_preset("plantvillage-resnet", 34, image_size=32, dtype=np.float64)
    names = module_names(model, twin)
    # the mapping of docs/EXPORT.md
    assert {k: names[k] for k in ("conv1", "layer1.0.conv1", "layer2.0.downsample.0", "fc")} == {
        "conv1": 0,
        "layer1.0.conv1": 4,
        "layer2.0.downsample.0": 16,
        "fc": 39,
    }
    assert load_torch_state(path, model, names) is model
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 32, 32))
    with torch.no_grad():
        expected = twin.eval()(torch.from_numpy(x)).numpy()
    assert_close(model.forward(x, training=False), expected, 1e-9, "eval logits")

    twin.train()
    batches = [(rng.standard_normal((4, 3, 32, 32)), rng.integers(0, 34, 4)) for _ in range(3)]
    losses = adam_steps_in_both(torch, model, twin, batches)
    for step, (ours, theirs) in enumerate(losses):
        assert abs(ours - theirs) < 1e-9, (step, ours, theirs)
    assert losses[0][0] != losses[-1][0]  # the steps moved the weights
    # ...to the same weights and running statistics (the twin of the trained purenn model)
    ours = resnet_twin(model).state_dict()
    for key, value in twin.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert_close(ours[key].numpy(), value.numpy(), 1e-9, key)


def test_load_torch_state_by_module_names_names_the_torch_tensor(tmp_path):
    model = residual_graph(np.float32)
    names = {"stem.0": 0, "stem.1": 1, "branch.0": 3, "branch.1": 4, "side": 7, "head": 10}
    index_to_module = {index: name for name, index in names.items()}
    state = {}
    for key, value in model.state_dict().items():
        index, _, rest = key.partition(".")
        state[f"{index_to_module[int(index)]}.{rest}"] = value
    target = residual_graph(np.float32)
    for _, value, _ in target.named_parameters():
        value += 1
    load_torch_state(write_safetensors(tmp_path / "ok.safetensors", state), target, names)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(target.state_dict()[key], value)
    state["side.weight"] = np.zeros((2, 2, 1, 1), np.float32)
    bad = write_safetensors(tmp_path / "bad.safetensors", state)
    with pytest.raises(ModelFileError, match=r"tensor 'side.weight' .* has shape \(2, 2, 1, 1\)"):
        load_torch_state(bad, target, names)
    del state["side.weight"]
    short = write_safetensors(tmp_path / "short.safetensors", state)
    with pytest.raises(ModelFileError, match=r"lacks the tensor '7.weight'.*torch module 'side'"):
        load_torch_state(short, target, names)
    with pytest.raises(ValueError, match="distinct layer indices"):
        load_torch_state(short, target, {"stem.0": 0, "side": 0})


def test_model_file_round_trips_a_graph(tmp_path):
    model = residual_graph(np.float32)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    model.forward(x)  # moves the BatchNorm running statistics off their initial values
    path = save_model(tmp_path / "graph.npz", model.eval(), {"class_names": list("abcde")})
    loaded, metadata = load_model(path)
    assert isinstance(loaded, pn.Model)
    assert loaded.get_config() == model.get_config()
    assert metadata["class_names"] == list("abcde")
    np.testing.assert_array_equal(loaded.eval().forward(x), model.forward(x))


def test_a_sequential_file_still_loads(tmp_path):
    model = pn.Sequential([pn.Flatten(), pn.Dense(12, 2)], input_shape=(3, 2, 2))
    loaded, _ = load_model(save_model(tmp_path / "seq.npz", model, {}))
    assert isinstance(loaded, pn.Sequential)
    assert loaded.get_config() == model.get_config()


def test_accumulate_adds_the_gradients_of_two_backwards():
    model = residual_graph()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    y = model.forward(x, training=False, for_backward=True)
    model.backward(np.ones_like(y))
    once = [grad.copy() for _, grad in model.parameters()]
    model.backward(np.ones_like(y), accumulate=True)
    for (_, grad), single in zip(model.parameters(), once, strict=True):
        np.testing.assert_allclose(grad, 2 * single)


def test_errors_name_the_problem():
    x = pn.Input((4, 8, 8))
    a = pn.Conv2D(4, 4, 3, padding=1)(x)
    b = pn.Conv2D(4, 2, 1)(x)
    with pytest.raises(
        ValueError, match=r"\(4, 8, 8\) from node 0 Conv2D.*\(2, 8, 8\) from node 1 Conv2D"
    ):
        pn.Add()([a, b])
    relu = pn.ReLU()
    relu(a)
    with pytest.raises(ValueError, match="appears once in a graph"):
        relu(b)
    other = pn.Conv2D(4, 4, 1)(pn.Input((4, 8, 8)))
    with pytest.raises(ValueError, match="another graph"):
        pn.Add()([a, other])
    with pytest.raises(ValueError, match="not reachable from the input"):
        pn.Model(x, other)
    with pytest.raises(ValueError, match="one inputs tensor"):
        pn.Model([x, x], a)
    with pytest.raises(ValueError, match="no layers"):
        pn.Model(x, x)


def test_tapped_gradient_at_a_fan_out_tensor_sums_its_three_consumers():
    """Explain's hooks: h (the stem's ReLU, node 2) feeds the branch, the shortcut and the side
    conv; every path from the input passes through it, so backpropagating its gradient through
    the stem must give the full input gradient."""
    model = residual_graph().eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    activation, logits = model.tapped_forward(x, 2)
    h = x
    for layer in model.layers[:3]:
        h = layer.forward(h, training=False)
    np.testing.assert_allclose(activation, h, atol=1e-12)
    seed = np.random.default_rng(1).standard_normal(logits.shape)
    full = model.backward(seed.copy())
    model.tapped_forward(x, 2)
    grad = model.backward_from(seed.copy(), 2)
    for layer in reversed(model.layers[:3]):
        grad = layer.backward(grad)
    np.testing.assert_allclose(grad, full, atol=1e-12)
    np.testing.assert_allclose(model.backward_from(seed.copy(), None), full, atol=1e-12)


def test_with_layers_keeps_the_topology_over_a_new_head():
    model = residual_graph()
    head = pn.Dense(6, 2, dtype=np.float64)
    swapped = model.with_layers([*model.layers[:-1], head])
    assert swapped.inputs == model.inputs and swapped.layers[3] is model.layers[3]
    assert swapped.output_shapes((3, 8, 8))[-1] == (2,)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    pooled, _ = model.eval().tapped_forward(x, len(model.layers) - 2)
    np.testing.assert_allclose(swapped.eval().forward(x), head.forward(pooled), atol=1e-12)
