"""ONNX export: onnx.checker accepts the graph and onnxruntime computes what purenn computes."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from export_models import META, every_layer_model, images, moved
from torch_parity import assert_close

import purenn as pn
from purenn.data import normalize_batch
from purenn.export import OPSET, ExportError, build_onnx, export_onnx
from purenn.presets import build_preset

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOL = 1e-4  # float32, relative to the output's scale (assert_close)


def run_onnx(model: pn.Sequential, metadata: dict | None, x: np.ndarray) -> np.ndarray:
    """Build, check, serialise and run the graph in onnxruntime (one thread)."""
    proto = build_onnx(model, metadata)
    onnx.checker.check_model(proto, full_check=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    (name,) = [i.name for i in session.get_inputs()]
    return session.run(None, {name: x})[0]


def purenn_output(model: pn.Sequential, metadata: dict | None, x: np.ndarray) -> np.ndarray:
    if metadata and "mean" in metadata:
        x = normalize_batch(x, metadata["mean"], metadata["std"])
    return model.forward(x, training=False)


def check_layers(layers: list, input_shape: tuple, batch: int, metadata=None) -> None:
    model = moved(pn.Sequential(layers, input_shape=input_shape))
    x = images(batch, input_shape) if len(input_shape) == 3 else images(batch, input_shape) - 0.5
    expected = purenn_output(model, metadata, x)
    assert_close(run_onnx(model, metadata, x), expected, TOL, "onnxruntime vs purenn")


RNG = 0
IMAGE = (3, 9, 10)  # odd, non-square sizes exercise every padding and rounding rule

LAYER_CASES = {
    "conv pad 0": lambda: [pn.Conv2D(3, 4, 3, rng=RNG)],
    "conv pad 1 no bias": lambda: [pn.Conv2D(3, 4, 3, padding=1, bias=False, rng=RNG)],
    "conv pad (1, 2) kernel (3, 2)": lambda: [pn.Conv2D(3, 4, (3, 2), padding=(1, 2), rng=RNG)],
    "conv same, even kernel": lambda: [pn.Conv2D(3, 4, 4, padding="same", rng=RNG)],
    "conv stride 2": lambda: [pn.Conv2D(3, 4, 3, stride=2, padding=1, rng=RNG)],
    "conv stride (2, 1)": lambda: [pn.Conv2D(3, 4, (2, 3), stride=(2, 1), rng=RNG)],
    "conv weight norm": lambda: [pn.Conv2D(3, 4, 3, padding=1, weight_norm=True, rng=RNG)],
    "conv depthwise": lambda: [pn.Conv2D(3, 6, 3, padding=1, groups=3, rng=RNG)],
    "maxpool 2": lambda: [pn.MaxPool2D(2)],
    "maxpool 3 stride 2": lambda: [pn.MaxPool2D(3, stride=2)],
    "maxpool (2, 3)": lambda: [pn.MaxPool2D((2, 3))],
    "avgpool 2": lambda: [pn.AvgPool2D(2)],
    "avgpool 3 stride 1": lambda: [pn.AvgPool2D(3, stride=1)],
    "global avgpool": lambda: [pn.GlobalAvgPool2D()],
    "flatten": lambda: [pn.Flatten()],
    "batchnorm 2d": lambda: [pn.BatchNorm2D(3, eps=1e-3)],
    "relu then maxpool": lambda: [pn.Conv2D(3, 4, 3, rng=RNG), pn.ReLU(), pn.MaxPool2D(2)],
    "activations": lambda: [pn.LeakyReLU(0.1), pn.Sigmoid(), pn.Tanh(), pn.ReLU()],
}

VECTOR_CASES = {
    "dense": lambda: [pn.Dense(5, 4, rng=RNG)],
    "dense no bias": lambda: [pn.Dense(5, 4, bias=False, rng=RNG)],
    "dense weight norm": lambda: [pn.Dense(5, 4, weight_norm=True, rng=RNG)],
    "batchnorm 1d": lambda: [pn.BatchNorm1D(5)],
    "dropout": lambda: [pn.Dense(5, 6, rng=RNG), pn.Dropout(0.5), pn.Dense(6, 3, rng=RNG)],
    "dropout alone": lambda: [pn.Dropout(0.5)],
    "softmax": lambda: [pn.Dense(5, 4, rng=RNG), pn.Softmax()],
}


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("case", LAYER_CASES)
def test_image_layers_match_onnxruntime(case, batch):
    check_layers(LAYER_CASES[case](), IMAGE, batch)


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("case", VECTOR_CASES)
def test_vector_layers_match_onnxruntime(case, batch):
    check_layers(VECTOR_CASES[case](), (5,), batch)


@pytest.mark.parametrize("batch", [1, 7])
def test_every_layer_type_in_one_model_with_normalisation(batch):
    model = every_layer_model()
    x = images(batch)
    expected = purenn_output(model, META, x)
    assert_close(run_onnx(model, META, x), expected, TOL, "onnxruntime vs purenn")


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize(
    "preset, size, weight_norm",
    [
        ("plantvillage-cnn", 32, False),
        ("plantvillage-cnn", 32, True),
        ("plantvillage-ann", 16, False),
        ("plantvillage-ann", 16, True),
    ],
)
def test_presets_match_onnxruntime(preset, size, weight_norm, batch):
    model = moved(build_preset(preset, num_classes=15, image_size=size, weight_norm=weight_norm))
    meta = {**META, "image_size": size, "class_names": [f"c{i}" for i in range(15)]}
    x = images(batch, (3, size, size))
    assert_close(run_onnx(model, meta, x), purenn_output(model, meta, x), TOL, preset)


def test_a_float64_model_exports_as_float32():
    model = moved(build_preset("demo-cnn", num_classes=3, image_size=8).astype(np.float64))
    proto = build_onnx(model, META)
    assert {i.data_type for i in proto.graph.initializer} == {onnx.TensorProto.FLOAT}
    x = images(3)
    expected = purenn_output(model, META, x.astype(np.float64))
    assert_close(run_onnx(model, META, x), expected, TOL, "float64 model")


def test_plantvillage_cnn_at_128_batch_1_and_7():
    model = moved(build_preset("plantvillage-cnn", num_classes=15, image_size=128))
    # purenn runs each ReLU after the MaxPool that follows it; the graph keeps the declared order.
    assert model._order != list(range(len(model.layers)))
    meta = {**META, "image_size": 128, "class_names": [f"c{i}" for i in range(15)]}
    proto = build_onnx(model, meta)
    ops = [node.op_type for node in proto.graph.node]
    assert ops[:5] == ["Sub", "Mul", "Conv", "Relu", "MaxPool"]
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = images(batch, (3, 128, 128), seed=batch)
        expected = purenn_output(model, meta, x)
        assert_close(session.run(None, {"image": x})[0], expected, TOL, f"batch {batch}")


def test_graph_interface_and_metadata():
    proto = build_onnx(every_layer_model(), {**META, "data_dir": "/home/me/leaves"})
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", OPSET)] and OPSET >= 17
    (graph_input,) = proto.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert graph_input.name == "image"
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, 8, 8]
    (output,) = proto.graph.output
    assert output.name == "logits"
    assert [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim] == ["batch", 3]
    props = {p.key: p.value for p in proto.metadata_props}
    assert {k: json.loads(props[k]) for k in META} == META
    assert "[0, 1]" in props["input"] and "inside the graph" in props["input"]
    assert "data_dir" not in props  # a local path is not the model's business
    # Dropout left no node; weight norm left plain weights under the state-dict names.
    assert "Dropout" not in {n.op_type for n in proto.graph.node}
    names = {i.name for i in proto.graph.initializer}
    assert {"0.weight", "10.weight", "mean", "inv_std"} <= names
    assert not any("weight_g" in n or "weight_v" in n for n in names)


def test_without_mean_and_std_the_graph_has_no_normalisation():
    model = every_layer_model()
    proto = build_onnx(model, {"class_names": META["class_names"]})
    assert proto.graph.node[0].op_type == "Conv"
    assert "No normalisation" in {p.key: p.value for p in proto.metadata_props}["input"]
    x = images(2)
    assert_close(run_onnx(model, None, x), purenn_output(model, None, x), TOL, "no z-score")


def test_softmax_output_is_named_probabilities():
    model = pn.Sequential([pn.Dense(5, 3, rng=0), pn.Softmax()], input_shape=(5,))
    assert build_onnx(model).graph.output[0].name == "probabilities"


def branching_graph() -> pn.Model:
    """A fan-out into three consumers, a depthwise residual Add of three, a grouped branch and a
    Concatenate, BatchNorm and global average pooling."""
    rng = np.random.default_rng(0)
    x = pn.Input((3, 9, 10))
    h = pn.ReLU()(pn.BatchNorm2D(6)(pn.Conv2D(3, 6, 3, padding=1, bias=False, rng=rng)(x)))
    depthwise = pn.Conv2D(6, 6, 3, padding=1, groups=6, rng=rng)(h)
    grouped = pn.Conv2D(6, 4, 1, groups=2, rng=rng)(h)
    residual = pn.Add()([h, depthwise, pn.BatchNorm2D(6)(depthwise)])
    joined = pn.Concatenate(axis=1)([residual, grouped])
    y = pn.Dense(10, 5, rng=rng)(pn.GlobalAvgPool2D()(pn.ReLU()(joined)))
    return moved(pn.Model(x, y))


@pytest.mark.parametrize("batch", [1, 7])
def test_a_graph_model_matches_onnxruntime(batch):
    model = branching_graph()
    x = images(batch, (3, 9, 10))
    expected = purenn_output(model, META, x)
    assert_close(run_onnx(model, META, x), expected, TOL, "onnxruntime vs purenn")
    ops = [node.op_type for node in build_onnx(model, META).graph.node]
    assert ops.count("Add") == 2 and ops.count("Concat") == 1  # Add of three: two ONNX Adds


def test_the_resnet_preset_matches_onnxruntime():
    model = moved(build_preset("plantvillage-resnet", num_classes=4, image_size=32))
    meta = {**META, "image_size": 32, "class_names": [f"c{i}" for i in range(4)]}
    x = images(2, (3, 32, 32))
    assert_close(run_onnx(model, meta, x), purenn_output(model, meta, x), TOL, "resnet")


class Doubler(pn.layers.Layer):
    def forward(self, x, training=True):
        return 2 * x


class MyReLU(pn.ReLU):
    """A subclass may compute anything: it is not taken for a ReLU."""


@pytest.mark.parametrize("layer, name", [(Doubler(), "Doubler"), (MyReLU(), "MyReLU")])
def test_a_layer_without_conversion_is_named(layer, name):
    model = pn.Sequential([pn.Dense(5, 5, rng=0), layer], input_shape=(5,))
    with pytest.raises(ExportError, match=rf"layer 1 \({name}\) cannot be exported to ONNX"):
        build_onnx(model)


def test_bad_mean_length_and_missing_input_shape_are_refused():
    with pytest.raises(ExportError, match="one value per input channel"):
        build_onnx(every_layer_model(), {**META, "mean": [0.5, 0.5]})
    with pytest.raises(ExportError, match="no input_shape"):
        build_onnx(pn.Sequential([pn.Flatten()]))


def test_export_writes_a_checked_file(tmp_path):
    path = export_onnx(every_layer_model(), tmp_path / "m.onnx", META)
    onnx.checker.check_model(str(path), full_check=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left


def test_export_without_the_onnx_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ModuleNotFoundError
    with pytest.raises(ExportError, match=r"pip install \"purenn\[export\]\""):
        export_onnx(every_layer_model(), tmp_path / "m.onnx", META)
    assert not (tmp_path / "m.onnx").exists()
