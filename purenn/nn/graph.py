"""The functional API: ``pn.Input``, layers called on symbolic tensors, ``pn.Model(x, y)``.

::

    x = pn.Input((3, 32, 32))
    h = pn.ReLU()(pn.Conv2D(3, 8, 3, padding=1)(x))
    y = pn.Add()([h, pn.Conv2D(8, 8, 3, padding=1)(h)])      # h feeds two layers
    model = pn.Model(x, y)

A layer called on a symbolic tensor adds a node to that tensor's graph and returns the node's
symbolic output (with its per-sample shape, checked as the graph is built). ``Model`` keeps the
nodes the output depends on, in topological order (the order they were created in), numbered
like Sequential's layers: parameters are ``"<index>.weight"``. One input and one output.

Forward runs the nodes in order. Backward runs them in reverse; where a tensor feeds several
nodes its gradient is the sum of theirs (the chain rule over every path, Caffe's Split layer).
"""

from __future__ import annotations

import numpy as np

from purenn.nn.layers import Layer, layer_from_spec
from purenn.nn.network import Network, format_table


class SymbolicTensor:
    """A placeholder for a tensor in a graph under construction: its graph, index and shape.

    ``shape`` is per sample (no batch axis). Index 0 is the graph's input; index ``k`` the output
    of the graph's ``k``-th node (from 1).
    """

    def __init__(self, graph: _Graph, index: int, shape: tuple[int, ...]) -> None:
        self.graph, self.index, self.shape = graph, index, shape

    def __repr__(self) -> str:
        return f"SymbolicTensor(shape={self.shape}, from {self.graph.describe(self.index)})"


def _node_output_shape(layer: Layer, shapes: list[tuple[int, ...]], producers: list[str]):
    """``layer``'s output shape for its input shapes; the error names every input's producer."""
    try:
        return layer.output_shape(shapes if layer.merges else shapes[0])
    except ValueError as err:
        given = " and ".join(
            f"{shape} from {producer}" for shape, producer in zip(shapes, producers, strict=True)
        )
        raise ValueError(f"{layer!r} cannot take its inputs {given}: {err}") from None


class _Graph:
    """The nodes created from one ``Input``: (layer, input tensor indices) and tensor shapes."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shapes = [shape]
        self.nodes: list[tuple[Layer, list[int]]] = []

    def describe(self, index: int) -> str:
        return "Input" if index == 0 else f"node {index - 1} {self.nodes[index - 1][0]!r}"

    def add_node(self, layer: Layer, inputs: list) -> SymbolicTensor:
        for item in inputs:
            if not isinstance(item, SymbolicTensor) or item.graph is not self:
                raise ValueError(
                    f"{layer!r} received a tensor from another graph (or not a symbolic "
                    f"tensor): {item!r}; every tensor of a model must come from its one pn.Input"
                )
        if any(node_layer is layer for node_layer, _ in self.nodes):
            raise ValueError(
                f"{layer!r} is already in this graph; a layer object appears once in a graph "
                "(shared weights are not supported): create a new layer"
            )
        if not layer.merges and len(inputs) != 1:
            raise ValueError(f"{layer!r} takes one tensor, received a list of {len(inputs)}")
        indices = [item.index for item in inputs]
        shape = _node_output_shape(
            layer, [self.shapes[i] for i in indices], [self.describe(i) for i in indices]
        )
        self.nodes.append((layer, indices))
        self.shapes.append(tuple(shape))
        return SymbolicTensor(self, len(self.shapes) - 1, tuple(shape))


def Input(shape: tuple[int, ...]) -> SymbolicTensor:  # noqa: N802 (Keras' name)
    """The symbolic input of a new graph; ``shape`` is per sample, e.g. (3, 128, 128)."""
    shape = tuple(shape)
    if not shape or not all(isinstance(d, int | np.integer) and d >= 1 for d in shape):
        raise ValueError(f"shape must be a tuple of positive ints, received: shape={shape!r}")
    return SymbolicTensor(_Graph(tuple(int(d) for d in shape)), 0, tuple(int(d) for d in shape))


def _single(value, name: str) -> SymbolicTensor:
    if isinstance(value, list | tuple):
        if len(value) != 1:
            raise ValueError(
                f"Model takes one {name} tensor (several are not supported), "
                f"received a list of {len(value)}"
            )
        value = value[0]
    if not isinstance(value, SymbolicTensor):
        raise ValueError(
            f"{name} must be a symbolic tensor from pn.Input, received: {type(value).__name__}"
        )
    return value


class Model(Network):
    """A model whose layers form a directed acyclic graph, built with the functional API.

    Args:
        inputs: the ``pn.Input`` tensor (or a one-element list of it).
        outputs: the output tensor computed from it (or a one-element list).

    Raises:
        ValueError: the output is not computed from ``inputs`` or is ``inputs`` itself.
    """

    def __init__(self, inputs, outputs) -> None:
        x, y = _single(inputs, "inputs"), _single(outputs, "outputs")
        if x.index != 0:
            raise ValueError(f"inputs must be a pn.Input tensor, received: {x!r}")
        if y.graph is not x.graph:
            raise ValueError(
                f"the output {y!r} is not reachable from the input {x!r}: it was built from "
                "another pn.Input"
            )
        if y.index == 0:
            raise ValueError("the output is the input itself: the model has no layers")
        graph = x.graph
        needed = {y.index}
        for index in range(y.index, 0, -1):
            if index in needed:
                needed.update(graph.nodes[index - 1][1])
        kept = [index for index in range(1, y.index + 1) if index in needed]
        renumber = {0: 0} | {old: new for new, old in enumerate(kept, start=1)}
        self.layers = [graph.nodes[old - 1][0] for old in kept]
        # Tensor indices each layer reads: 0 is the input, i + 1 the output of layer i.
        self.inputs = [[renumber[i] for i in graph.nodes[old - 1][1]] for old in kept]
        self.input_shape = graph.shapes[0]
        self.training = True

    # -- running --------------------------------------------------------------------------
    def _forward_layers(self, x: np.ndarray, training: bool) -> np.ndarray:
        """Run the nodes in topological order."""
        return self._forward(x, training)[1]

    def tapped_forward(self, x: np.ndarray, layer: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(output of layer ``layer`` (x when None), the model's output), in evaluation mode."""
        self._backward_ready = True
        return self._forward(x, False, keep=0 if layer is None else layer + 1)

    def backward_from(self, grad_out: np.ndarray, layer: int | None) -> np.ndarray:
        """``dL/d(output of layer)`` (``dL/dx`` when None), after :meth:`tapped_forward`.

        Runs only the nodes after ``layer``; the parameter gradients they leave are not summed
        with any held before.
        """
        return self._backward(grad_out, layer is None, stop=0 if layer is None else layer + 1)

    def _forward(self, x, training, keep: int = 0) -> tuple[np.ndarray, np.ndarray]:
        training = self.training if training is None else training
        last_use = {i: k for k, inputs in enumerate(self.inputs) for i in inputs}
        last_use.pop(keep, None)
        values: dict[int, np.ndarray] = {0: x}
        for k, (layer, inputs) in enumerate(zip(self.layers, self.inputs, strict=True)):
            args = [values[i] for i in inputs]
            values[k + 1] = layer.forward(args if layer.merges else args[0], training=training)
            for i in inputs:
                if last_use.get(i) == k:
                    values.pop(i, None)
        return values[keep], values[len(self.layers)]

    def _backward(self, grad_out: np.ndarray, input_grad: bool, stop: int = 0):
        """Backward through the nodes from the last down to node ``stop``; dL/d(tensor stop)."""
        grads = {len(self.layers): grad_out}
        for k in range(len(self.layers) - 1, stop - 1, -1):
            layer, inputs = self.layers[k], self.inputs[k]
            wanted = [i for i in inputs if i != 0 or input_grad]
            result = layer.backward(grads.pop(k + 1), input_grad=bool(wanted))
            if not wanted:
                continue
            for i, grad in zip(inputs, result if layer.merges else [result], strict=True):
                if i in wanted:
                    # A tensor feeding several nodes: dL/dt is the sum over its consumers.
                    grads[i] = grad if i not in grads else grads[i] + grad
        return grads.get(stop)

    # -- architecture -----------------------------------------------------------------------
    def _labels(self, index: int) -> str:
        return "input" if index == 0 else str(index - 1)

    def __repr__(self) -> str:
        lines = [
            f"  ({k}): {layer!r} <- {', '.join(self._labels(i) for i in inputs)}"
            for k, (layer, inputs) in enumerate(zip(self.layers, self.inputs, strict=True))
        ]
        return "Model(\n" + "\n".join(lines) + "\n)"

    def get_config(self) -> dict:
        """The topology as JSON-able data: per node its type, constructor arguments, inputs."""
        return {
            "input_shape": list(self.input_shape),
            "nodes": [
                {"type": type(layer).__name__, "config": layer.get_config(), "inputs": inputs}
                for layer, inputs in zip(self.layers, self.inputs, strict=True)
            ],
        }

    @classmethod
    def from_config(cls, config: dict) -> Model:
        """Rebuild a model (with fresh weights) from :meth:`get_config` output."""
        layers = []
        for index, spec in enumerate(config["nodes"]):
            layer = layer_from_spec(spec, f"node {index}")
            if not all(isinstance(i, int) and 0 <= i <= index for i in spec["inputs"]):
                raise ValueError(f"node {index} reads tensors {spec['inputs']} not yet computed")
            layers.append(layer)
        return cls._wire(
            tuple(config["input_shape"]), layers, [s["inputs"] for s in config["nodes"]]
        )

    def with_layers(self, layers: list[Layer]) -> Model:
        """A model of this topology over ``layers`` (e.g. this one's with a new head)."""
        return self._wire(self.input_shape, layers, self.inputs)

    @classmethod
    def _wire(cls, input_shape, layers: list[Layer], inputs: list[list[int]]) -> Model:
        """Call each layer on the tensors its ``inputs`` indices name (0 = the input)."""
        tensors = [Input(input_shape)]
        for layer, indices in zip(layers, inputs, strict=True):
            args = [tensors[i] for i in indices]
            tensors.append(layer(args if layer.merges else args[0]))
        return cls(tensors[0], tensors[-1])

    def _node_shapes(self, input_shape) -> list[tuple[list, tuple[int, ...]]]:
        """Per layer: its input shape(s) as it takes them, and its output shape."""
        shapes = [tuple(input_shape or self.input_shape)]
        result = []
        for layer, inputs in zip(self.layers, self.inputs, strict=True):
            given = [shapes[i] for i in inputs]
            producers = [
                "Input" if i == 0 else f"node {i - 1} {self.layers[i - 1]!r}" for i in inputs
            ]
            shapes.append(tuple(_node_output_shape(layer, given, producers)))
            result.append((given if layer.merges else given[0], shapes[-1]))
        return result

    def summary(self, input_shape: tuple[int, ...] | None = None) -> str:
        """A table of nodes with their inputs, output shape, parameters and FLOPs per sample."""
        rows = [("#", "layer", "inputs", "output shape", "params", "FLOPs")]
        total = 0
        node_shapes = self._node_shapes(input_shape)
        for k, (layer, (given, shape)) in enumerate(zip(self.layers, node_shapes, strict=True)):
            flops = layer.flops(given)
            total += flops
            labels = ", ".join(self._labels(i) for i in self.inputs[k])
            rows.append(
                (str(k), repr(layer), labels, str(shape), f"{layer.num_parameters:,}", f"{flops:,}")
            )
        rows.append(("", "total", "", "", f"{self.num_parameters:,}", f"{total:,}"))
        return format_table(rows, left=4)
