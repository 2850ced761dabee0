"""Sequential: a stack of layers run forward in order and backward in reverse."""

from __future__ import annotations

import numpy as np

from purenn.nn.layers import Layer, MaxPool2D, ReLU, layer_from_spec
from purenn.nn.network import Network, format_table


def _execution_order(layers: list[Layer]) -> list[int]:
    """Layer indices in the order to run them: each ReLU directly followed by a MaxPool2D swaps.

    Max-pooling commutes with ReLU (``max(relu(x)) == relu(max(x))``, both monotone), and the
    gradients agree too (a window whose maximum is <= 0 passes no gradient either way), so the
    ReLU can run on the pooled map, with a quarter of the elements for 2x2 pooling.
    """
    order = list(range(len(layers)))
    for i in range(len(layers) - 1):
        if type(layers[i]) is ReLU and type(layers[i + 1]) is MaxPool2D and order[i] == i:
            order[i], order[i + 1] = i + 1, i
    return order


class Sequential(Network):
    """A model made of layers applied one after another.

    Parameter and buffer names follow PyTorch's ``nn.Sequential``: ``"<index>.<name>"``
    (``"0.weight"``, ``"3.running_mean"``), so a state dict maps 1:1 onto a torch model.
    Like ``nn.Sequential``, it has ``len(model)``, ``model[i]`` (a layer), ``model[a:b]`` (a
    Sequential sharing those layers), iteration over the layers, and a nested ``repr``.

    Args:
        layers: the layers, in order.
        input_shape: optional per-sample input shape, e.g. (3, 128, 128); enables
            ``summary()`` without an argument and an up-front shape check of the stack.
    """

    def __init__(self, layers: list[Layer], input_shape: tuple[int, ...] | None = None) -> None:
        layers = list(layers)
        for index, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ValueError(
                    f"layers[{index}] must be a purenn Layer, received: {type(layer).__name__}"
                )
        self.layers = layers
        self._order = _execution_order(layers)
        self.training = True
        self.input_shape = None if input_shape is None else tuple(int(d) for d in input_shape)
        if self.input_shape is not None:
            self.output_shapes(self.input_shape)

    # -- running --------------------------------------------------------------------------
    def _forward_layers(self, x: np.ndarray, training: bool) -> np.ndarray:
        for index in self._order:
            x = self.layers[index].forward(x, training=training)
        return x

    def tapped_forward(self, x: np.ndarray, layer: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(output of layer ``layer`` (x when None), the model's output), in evaluation mode.

        The layers run in execution order (a ReLU followed by a MaxPool2D runs after it; they
        commute), so the kept output is that of ``layer`` in that order.
        """
        cut = self._cut(layer)
        self._backward_ready = True
        for index in self._order[:cut]:
            x = self.layers[index].forward(x, training=False)
        activation = x
        for index in self._order[cut:]:
            x = self.layers[index].forward(x, training=False)
        return activation, x

    def backward_from(self, grad_out: np.ndarray, layer: int | None) -> np.ndarray:
        """``dL/d(output of layer)`` (``dL/dx`` when None), after :meth:`tapped_forward`."""
        for index in reversed(self._order[self._cut(layer) :]):
            grad_out = self.layers[index].backward(grad_out)
        return grad_out

    def _cut(self, layer: int | None) -> int:
        return 0 if layer is None else self._order.index(layer) + 1

    def _backward(self, grad_out: np.ndarray, input_grad: bool) -> np.ndarray | None:
        for position, index in enumerate(reversed(self._order)):
            last = position == len(self._order) - 1
            grad_out = self.layers[index].backward(grad_out, input_grad=input_grad or not last)
        return grad_out

    # -- container ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, index: int | slice) -> Layer | Sequential:
        """A layer (``model[0]``, ``model[-1]``), or a Sequential of the same layer objects.

        A slice shares the layers (and their weights) with this model, as in PyTorch; its
        ``input_shape`` is the output shape of the layers before it, when this model has one.
        """
        if isinstance(index, slice):
            shape = None
            if self.input_shape is not None and index.step in (None, 1):
                first = range(len(self.layers))[index].start
                shape = self.input_shape
                if first:
                    shape = self.output_shapes(self.input_shape)[first - 1]
            return Sequential(self.layers[index], input_shape=shape)
        return self.layers[index]

    @property
    def inputs(self) -> list[list[int]]:
        """The tensor each layer reads, in a graph Model's numbering: 0 is the input, ``i + 1``
        the output of layer ``i`` (so layer ``i`` reads ``[i]``)."""
        return [[index] for index in range(len(self.layers))]

    def with_layers(self, layers: list[Layer]) -> Sequential:
        """A Sequential of ``layers`` with this one's input shape (e.g. with a new head)."""
        return Sequential(layers, input_shape=self.input_shape)

    def __repr__(self) -> str:
        lines = [f"  ({index}): {layer!r}" for index, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + "\n)" if lines else "Sequential()"

    # -- architecture -----------------------------------------------------------------------
    def get_config(self) -> dict:
        """The architecture as JSON-able data: layer types and constructor arguments."""
        return {
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "layers": [
                {"type": type(layer).__name__, "config": layer.get_config()}
                for layer in self.layers
            ],
        }

    @classmethod
    def from_config(cls, config: dict) -> Sequential:
        """Rebuild a model (with fresh weights) from :meth:`get_config` output."""
        layers = [
            layer_from_spec(spec, f"layer {index}") for index, spec in enumerate(config["layers"])
        ]
        return cls(layers, input_shape=config.get("input_shape"))

    def _node_shapes(self, input_shape) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        """Per layer: its input shape and its output shape; ValueError where the stack
        mismatches."""
        shape = tuple(input_shape or self.input_shape or ())
        if not shape:
            raise ValueError("the model was built without input_shape: give input_shape")
        result = []
        for layer in self.layers:
            given, shape = shape, tuple(layer.output_shape(shape))
            result.append((given, shape))
        return result

    def summary(self, input_shape: tuple[int, ...] | None = None) -> str:
        """A table of layers with output shape, parameters and forward FLOPs per sample."""
        rows = [("#", "layer", "output shape", "params", "FLOPs")]
        total_flops = 0
        node_shapes = self._node_shapes(input_shape)
        for index, (layer, (given, shape)) in enumerate(zip(self.layers, node_shapes, strict=True)):
            flops = layer.flops(given)
            total_flops += flops
            rows.append(
                (str(index), repr(layer), str(shape), f"{layer.num_parameters:,}", f"{flops:,}")
            )
        rows.append(("", "total", "", f"{self.num_parameters:,}", f"{total_flops:,}"))
        return format_table(rows, left=3)
