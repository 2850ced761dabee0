"""ONNX export of a purenn model (a Sequential or a graph Model), built with ``onnx``'s helper API.

Opset 17 (ONNX 1.12, 2022): the oldest opset the issue allows, so the graph runs on the widest
range of runtimes (onnxruntime >= 1.12, onnxruntime-web, mobile builds); every operator used here
(Gemm, Conv with groups, MaxPool, AveragePool, GlobalAveragePool, Flatten, BatchNormalization,
Relu, LeakyRelu, Sigmoid, Tanh, Softmax over one axis, Add, Concat, Sub, Mul) has its current
semantics there.

The graph, for an image model whose metadata holds ``mean`` and ``std``::

    image  float32 (batch, C, H, W), RGB in [0, 1]   (batch is a dynamic dimension)
      -> Sub(mean) -> Mul(1 / std)                   the z-score purenn applies before the model
      -> one or two nodes per layer, in declared (topological) order, each reading the tensors its
         layer reads in the model (Dropout is dropped: identity in inference;
         BatchNorm uses its running statistics; weight norm is folded into plain weights)
    logits float32 (batch, classes)                  ("probabilities" if the last layer is Softmax)

The initializers carry the state-dict names (``"0.weight"``); the model metadata
(``metadata_props``) carries ``class_names``, ``image_size``, ``mean``, ``std`` (JSON) and the
input contract in words (``input``). See docs/EXPORT.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

import purenn
from purenn.io import atomic_write
from purenn.nn.graph import Model
from purenn.nn.layers import (
    Add,
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Concatenate,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from purenn.nn.network import Network

OPSET = 17
# ONNX IR version 8 goes with opset 17 (ONNX 1.12); newer IR versions would lock out older runtimes.
IR_VERSION = 8
INPUT, OUTPUT = "image", "logits"
BATCH = "batch"

CONTRACT = (
    "float32 NCHW (batch, {c}, {h}, {w}), RGB, values in [0, 1]: decode the image (EXIF "
    "orientation applied, transparency composited over black), resize the whole image to "
    "{h}x{w} with an antialiased bilinear (triangle) filter, take the uint8 RGB values and "
    "divide by 255. {norm}"
)
IN_GRAPH = "The z-score with the metadata's mean and std is inside the graph."
NO_NORM = "No normalisation: the model was saved without mean and std."


class ExportError(ValueError):
    """The model cannot be exported (a layer type with no ONNX conversion, a bad input shape)."""


class _Graph:
    """Nodes and float32 initializers of the graph being built; names are unique by layer index."""

    def __init__(self, onnx) -> None:
        self.onnx = onnx
        self.nodes: list = []
        self.initializers: list = []

    def constant(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array, dtype=np.float32)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attributes) -> str:
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [name], name=name, **attributes))
        return name


# -- one converter per layer type: (graph, layer, input name(s), prefix) -> output name ---------
def _dense(g: _Graph, layer: Dense, x: str, prefix: str) -> str:
    # y = x @ W.T + b is Gemm with transB=1; layer.weight() folds weight norm, g * v / ||v||.
    inputs = [x, g.constant(f"{prefix}.weight", layer.weight())]
    if layer.use_bias:
        inputs.append(g.constant(f"{prefix}.bias", layer.params["bias"]))
    return g.node("Gemm", inputs, f"{prefix}.Gemm", transB=1)


def _conv(g: _Graph, layer: Conv2D, x: str, prefix: str) -> str:
    inputs = [x, g.constant(f"{prefix}.weight", layer.weight())]
    if layer.use_bias:
        inputs.append(g.constant(f"{prefix}.bias", layer.params["bias"]))
    top, bottom, left, right = layer.pads  # ONNX orders pads as all begins, then all ends
    return g.node(
        "Conv",
        inputs,
        f"{prefix}.Conv",
        kernel_shape=list(layer.kernel_size),
        strides=list(layer.stride),
        pads=[top, left, bottom, right],
        group=layer.groups,
    )


def _pool(op: str) -> Callable:
    def convert(g: _Graph, layer, x: str, prefix: str) -> str:
        # No padding and floor rounding (ceil_mode 0), as purenn's pooling.
        return g.node(
            op,
            [x],
            f"{prefix}.{op}",
            kernel_shape=list(layer.kernel_size),
            strides=list(layer.stride),
        )

    return convert


def _global_avg(g: _Graph, layer: GlobalAvgPool2D, x: str, prefix: str) -> str:
    pooled = g.node("GlobalAveragePool", [x], f"{prefix}.GlobalAveragePool")  # (N, C, 1, 1)
    return g.node("Flatten", [pooled], f"{prefix}.Flatten", axis=1)


def _batch_norm(g: _Graph, layer, x: str, prefix: str) -> str:
    # Inference form: (x - running_mean) / sqrt(running_var + eps) * weight + bias.
    names = [
        g.constant(f"{prefix}.{key}", store[key])
        for store, key in (
            (layer.params, "weight"),
            (layer.params, "bias"),
            (layer.buffers, "running_mean"),
            (layer.buffers, "running_var"),
        )
    ]
    return g.node(
        "BatchNormalization", [x, *names], f"{prefix}.BatchNormalization", epsilon=layer.eps
    )


def _simple(op: str, **attributes) -> Callable:
    def convert(g: _Graph, layer, x: str, prefix: str) -> str:
        return g.node(op, [x], f"{prefix}.{op}", **attributes)

    return convert


def _leaky_relu(g: _Graph, layer: LeakyReLU, x: str, prefix: str) -> str:
    return g.node("LeakyRelu", [x], f"{prefix}.LeakyRelu", alpha=layer.negative_slope)


def _add(g: _Graph, layer: Add, xs: list[str], prefix: str) -> str:
    # ONNX's Add takes two inputs: a chain of them sums any number, left to right as purenn does.
    total = xs[0]
    for index, x in enumerate(xs[1:]):
        total = g.node("Add", [total, x], f"{prefix}.Add{index or ''}")
    return total


def _concatenate(g: _Graph, layer: Concatenate, xs: list[str], prefix: str) -> str:
    return g.node("Concat", xs, f"{prefix}.Concat", axis=layer.axis)


def _identity(g: _Graph, layer, x: str, prefix: str) -> str:
    return x


# Keyed by exact type: a subclass may compute something else, so it is refused, not guessed.
CONVERTERS: dict[type, Callable] = {
    Dense: _dense,
    Conv2D: _conv,
    MaxPool2D: _pool("MaxPool"),
    AvgPool2D: _pool("AveragePool"),
    GlobalAvgPool2D: _global_avg,
    Flatten: _simple("Flatten", axis=1),
    Dropout: _identity,
    BatchNorm1D: _batch_norm,
    BatchNorm2D: _batch_norm,
    ReLU: _simple("Relu"),
    LeakyReLU: _leaky_relu,
    Sigmoid: _simple("Sigmoid"),
    Tanh: _simple("Tanh"),
    Softmax: _simple("Softmax", axis=-1),
    Add: _add,
    Concatenate: _concatenate,
}


def _wiring(model: Network) -> list[list[int]]:
    """The tensors each layer reads: 0 is the model's input, ``k + 1`` the output of layer k."""
    if isinstance(model, Model):
        return model.inputs
    return [[index] for index in range(len(model.layers))]


def _check_layers(layers: list[Layer]) -> None:
    for index, layer in enumerate(layers):
        if type(layer) not in CONVERTERS:
            known = ", ".join(sorted(cls.__name__ for cls in CONVERTERS))
            raise ExportError(
                f"layer {index} ({type(layer).__name__}) cannot be exported to ONNX; "
                f"exportable layer types: {known}"
            )


def _input_shape(model: Network, metadata: dict) -> tuple[int, ...]:
    """The per-sample input shape: the model's own, else (in_channels, image_size, image_size)."""
    if model.input_shape is not None:
        return model.input_shape
    if "image_size" in metadata:
        size = int(metadata["image_size"])
        return (int(metadata.get("in_channels", 3)), size, size)
    raise ExportError("the model has no input_shape and the metadata no image_size")


def _normalization(metadata: dict, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
    """mean and 1/std as float32 (1, C, 1, 1), as purenn's ``normalize_batch`` uses them."""
    if metadata.get("mean") is None or metadata.get("std") is None:
        return None
    mean = np.asarray(metadata["mean"], dtype=np.float32)
    std = np.asarray(metadata["std"], dtype=np.float32)
    if len(shape) != 3 or mean.shape != (shape[0],) or std.shape != (shape[0],):
        raise ExportError(
            f"metadata mean and std must have one value per input channel of the input shape "
            f"{shape}, received: mean={metadata['mean']}, std={metadata['std']}"
        )
    column = (1, shape[0], 1, 1)
    return mean.reshape(column), (1 / std).reshape(column)


def _metadata_props(metadata: dict, shape: tuple[int, ...], normalized: bool) -> dict[str, str]:
    props = {
        key: json.dumps(metadata[key])
        for key in ("class_names", "image_size", "mean", "std", "preset")
        if key in metadata
    }
    if len(shape) == 3:
        props["input"] = CONTRACT.format(
            c=shape[0], h=shape[1], w=shape[2], norm=IN_GRAPH if normalized else NO_NORM
        )
    else:
        props["input"] = f"float32 (batch, {', '.join(map(str, shape))})"
    return props


def build_onnx(model: Network, metadata: dict | None = None):
    """The ONNX ``ModelProto`` of ``model`` in inference form (see the module docstring).

    Args:
        model: the model; float32 or float64 (the graph is float32 either way).
        metadata: a model file's metadata (``class_names``, ``image_size``, ``mean``, ``std``);
            with ``mean`` and ``std`` the z-score is the graph's first two nodes.

    Raises:
        ExportError: a layer type that has no ONNX conversion (named with its index), or no
            known input shape.
        ModuleNotFoundError: the ``onnx`` package is not installed.
    """
    import onnx

    metadata = dict(metadata or {})
    _check_layers(model.layers)
    shape = _input_shape(model, metadata)
    output_shape = model.output_shapes(shape)[-1] if model.layers else shape
    norm = _normalization(metadata, shape)
    g = _Graph(onnx)
    x = INPUT if len(shape) == 3 else "input"
    graph_input = x
    if norm is not None:
        x = g.node("Sub", [x, g.constant("mean", norm[0])], "normalize.Sub")
        x = g.node("Mul", [x, g.constant("inv_std", norm[1])], "normalize.Mul")
    tensors = [x]
    for index, (layer, inputs) in enumerate(zip(model.layers, _wiring(model), strict=True)):
        args = [tensors[i] for i in inputs]
        convert = CONVERTERS[type(layer)]
        tensors.append(convert(g, layer, args if layer.merges else args[0], str(index)))
    x = tensors[-1]
    output = "probabilities" if model.layers and type(model.layers[-1]) is Softmax else OUTPUT
    if g.nodes and x == g.nodes[-1].output[0]:
        g.nodes[-1].output[0] = output  # the last node writes the graph output directly
    else:
        g.node("Identity", [x], output)
    float32 = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        g.nodes,
        "purenn",
        [onnx.helper.make_tensor_value_info(graph_input, float32, [BATCH, *shape])],
        [onnx.helper.make_tensor_value_info(output, float32, [BATCH, *output_shape])],
        initializer=g.initializers,
    )
    proto = onnx.helper.make_model(
        graph,
        producer_name="purenn",
        producer_version=purenn.__version__,
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
    )
    props = _metadata_props(metadata, shape, norm is not None)
    onnx.helper.set_model_props(proto, props)
    proto.doc_string = f"purenn model. Input {graph_input!r}: {props['input']}"
    return proto


def export_onnx(model: Network, path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``build_onnx(model, metadata)``, checked by ``onnx.checker``, to ``path`` atomically.

    Raises:
        ExportError: as :func:`build_onnx`, or the ``onnx`` package is missing.
    """
    try:
        import onnx
    except ModuleNotFoundError:
        raise ExportError(
            'ONNX export needs the onnx package: pip install "purenn[export]"'
        ) from None
    proto = build_onnx(model, metadata)
    onnx.checker.check_model(proto, full_check=True)
    return atomic_write(path, proto.SerializeToString())
