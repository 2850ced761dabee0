"""Sequential: a stack of layers run forward in order and backward in reverse."""

from __future__ import annotations

import json

import numpy as np

from purenn.nn.layers import LAYER_TYPES, Layer, MaxPool2D, ReLU


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


class Sequential:
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
    def forward(self, x: np.ndarray, training: bool | None = None) -> np.ndarray:
        """Run every layer; ``training`` defaults to the mode set by ``train()`` / ``eval()``."""
        training = self.training if training is None else training
        for index in self._order:
            x = self.layers[index].forward(x, training=training)
        return x

    __call__ = forward

    def backward(
        self, grad_out: np.ndarray, input_grad: bool = True, accumulate: bool = False
    ) -> np.ndarray | None:
        """Backpropagate ``dL/d(output)``; fills every layer's grads, returns ``dL/d(input)``.

        Args:
            grad_out: ``dL/d(output)`` of the last ``forward``, the output's shape and dtype.
            input_grad: with False the first layer skips the input gradient and None is
                returned (training never needs dL/d(image); for a conv or dense first layer
                that saves a GEMM).
            accumulate: add this backward's parameter gradients to the ones already held
                (PyTorch's ``.grad`` semantics, for gradient accumulation over micro-batches:
                ``zero_grad()``, then ``forward``/``backward(..., accumulate=True)`` per
                micro-batch, then one optimizer step). The default, False, overwrites them,
                so a plain training loop needs no ``zero_grad()``; accumulating costs one copy
                and one add per parameter.

        Note that the loss is a mean over its micro-batch: to get the gradient of the mean over
        all ``k`` micro-batches of equal size, scale each ``grad_out`` by ``1 / k``.
        """
        held = [grad.copy() for _, grad in self.parameters()] if accumulate else None
        for position, index in enumerate(reversed(self._order)):
            last = position == len(self._order) - 1
            grad_out = self.layers[index].backward(grad_out, input_grad=input_grad or not last)
        if held is not None:
            for (_, grad), before in zip(self.parameters(), held, strict=True):
                grad += before
        return grad_out

    def train(self) -> Sequential:
        self.training = True
        return self

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

    def __repr__(self) -> str:
        lines = [f"  ({index}): {layer!r}" for index, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + "\n)" if lines else "Sequential()"

    def eval(self) -> Sequential:
        self.training = False
        return self

    # -- parameters and state -------------------------------------------------------------
    def named_parameters(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(name, value, grad) for every trainable array, in layer order."""
        return [
            (f"{index}.{name}", value, layer.grads[name])
            for index, layer in enumerate(self.layers)
            for name, value in layer.params.items()
        ]

    def parameters(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(value, grad) pairs for the optimizers; the same arrays for the model's lifetime."""
        return [(value, grad) for _, value, grad in self.named_parameters()]

    def zero_grad(self) -> None:
        for layer in self.layers:
            layer.zero_grad()

    @property
    def num_parameters(self) -> int:
        return sum(layer.num_parameters for layer in self.layers)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer under PyTorch-style names."""
        state = {}
        for index, layer in enumerate(self.layers):
            for store in (layer.params, layer.buffers):
                for name, value in store.items():
                    state[f"{index}.{name}"] = value.copy()
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy arrays into the existing parameters and buffers (in place, so optimizers keep them).

        Raises:
            ValueError: listing missing or unexpected keys, or naming a key whose shape differs.
        """
        targets = {}
        for index, layer in enumerate(self.layers):
            for store in (layer.params, layer.buffers):
                for name, value in store.items():
                    targets[f"{index}.{name}"] = value
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        if missing or unexpected:
            raise ValueError(
                f"state dict does not match the model: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
        for key, target in targets.items():
            value = np.asarray(state[key])
            if value.shape != target.shape:
                raise ValueError(
                    f"state dict entry {key!r} has shape {value.shape}, "
                    f"the model expects {target.shape}"
                )
        for key, target in targets.items():
            target[...] = state[key]

    def astype(self, dtype) -> Sequential:
        """Cast every layer to ``dtype`` (float32 or float64); create optimizers afterwards."""
        for layer in self.layers:
            layer.astype(dtype)
        return self

    def rng_states(self) -> str:
        """JSON of the random generators' states (Dropout masks), for exact resumption."""
        return json.dumps(
            {
                str(index): layer.rng.bit_generator.state
                for index, layer in enumerate(self.layers)
                if hasattr(layer, "rng")
            }
        )

    def set_rng_states(self, states: str) -> None:
        for index, state in json.loads(states).items():
            self.layers[int(index)].rng.bit_generator.state = state

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
        layers = []
        for index, spec in enumerate(config["layers"]):
            if spec["type"] not in LAYER_TYPES:
                raise ValueError(f"layer {index} has an unknown type {spec['type']!r}")
            kwargs = dict(spec.get("config", {}))
            layers.append(LAYER_TYPES[spec["type"]](**kwargs))
        return cls(layers, input_shape=config.get("input_shape"))

    def output_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Per-sample output shape of every layer; raises ValueError where the stack mismatches."""
        shapes, shape = [], tuple(input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
            shapes.append(shape)
        return shapes

    def summary(self, input_shape: tuple[int, ...] | None = None) -> str:
        """A table of layers with output shape, parameters and forward FLOPs per sample."""
        shape = tuple(input_shape or self.input_shape or ())
        if not shape:
            raise ValueError("summary() needs input_shape (the model was built without one)")
        rows = [("#", "layer", "output shape", "params", "FLOPs")]
        total_flops = 0
        for index, layer in enumerate(self.layers):
            flops = layer.flops(shape)
            shape = layer.output_shape(shape)
            total_flops += flops
            rows.append(
                (
                    str(index),
                    repr(layer),
                    str(shape),
                    f"{layer.num_parameters:,}",
                    f"{flops:,}",
                )
            )
        rows.append(("", "total", "", f"{self.num_parameters:,}", f"{total_flops:,}"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [
            "  ".join(
                cell.ljust(width) if i < 3 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
            for row in rows
        ]
        rule = "-" * len(lines[0])
        return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1]])
