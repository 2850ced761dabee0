"""Network: what Sequential and the functional Model share, a list of layers named by index.

Both keep their layers in ``self.layers`` in execution order and name each parameter and buffer
``"<index>.<name>"`` (``"0.weight"``, ``"3.running_mean"``), so state dicts, checkpoints,
safetensors and optimizers treat either kind the same way. Subclasses add ``forward``,
``backward``, ``get_config`` / ``from_config``, ``_node_shapes`` (each layer's input and output
shapes, from which ``output_shapes`` and ``flops`` here follow), ``summary`` and ``inputs`` (the
tensors each layer reads: 0 the input, ``i + 1`` the output of layer ``i``).
"""

from __future__ import annotations

import json

import numpy as np

from purenn.nn.inference import InferencePlan
from purenn.nn.layers import Layer


class Network:
    """Parameters, state, modes and dtype of a model whose layers are held in ``self.layers``."""

    layers: list[Layer]
    training: bool
    inputs: list[list[int]]
    _plan: InferencePlan | None = None
    _backward_ready = False

    def train(self):
        self.training = True
        self._plan = None
        return self

    def eval(self):
        """Evaluation mode; the next forward builds the inference plan from the current weights."""
        self.training = False
        self._plan = None
        return self

    def __call__(self, x: np.ndarray, training: bool | None = None) -> np.ndarray:
        return self.forward(x, training)

    def forward(
        self, x: np.ndarray, training: bool | None = None, for_backward: bool = False
    ) -> np.ndarray:
        """The model's output for the batch ``x``.

        Args:
            x: a batch of the model's input shape.
            training: defaults to the mode set by ``train()`` / ``eval()``. In training mode
                the layers run their forward and keep what backward needs. In evaluation mode
                the fast path runs (``purenn.nn.inference``): BatchNorm folded, ReLU and pooling
                fused, nothing kept; its plan is cached while the model stays in evaluation mode.
            for_backward: in evaluation mode, run the layers' own forward instead and keep
                what ``backward`` needs (gradients of an evaluation-mode model: saliency,
                gradient checks). Training mode always keeps it.
        """
        training = self.training if training is None else training
        if training or for_backward:
            if training:
                self._plan = None  # the parameters are about to change
            self._backward_ready = True
            return self._forward_layers(x, training)
        self._backward_ready = False
        return self.inference_plan().run(x)

    def inference_plan(self) -> InferencePlan:
        """The fused steps of the evaluation-mode forward, from the current weights.

        Kept until the mode changes or the state is loaded, when the model is in evaluation
        mode; made anew on every call in training mode (an eval forward during training).
        """
        if self.training:
            return InferencePlan(self.layers, self.inputs)
        if self._plan is None:
            self._plan = InferencePlan(self.layers, self.inputs)
        return self._plan

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
        if not self._backward_ready:
            raise RuntimeError(
                "backward needs the forward before it to keep its intermediate values: call "
                "forward(x, training=True), or forward(x, training=False, for_backward=True) "
                "for an evaluation-mode model (the evaluation-mode fast path keeps none)"
            )
        held = [grad.copy() for _, grad in self.parameters()] if accumulate else None
        grad_in = self._backward(grad_out, input_grad)
        if held is not None:
            for (_, grad), before in zip(self.parameters(), held, strict=True):
                grad += before
        return grad_in

    def dominating(self) -> list[bool]:
        """Per layer: whether every path from the input to the output passes through its output.

        With tensors numbered as in ``self.inputs`` (0 the input, ``k + 1`` the output of layer
        ``k``, layers in topological order), the output of layer ``k`` is avoided by some path
        exactly when a later layer reads a tensor computed before it (an edge that jumps over
        it). Every layer of a Sequential dominates; in a ResNet, the Adds and what lies between
        blocks do, the layers of a block's two branches do not.
        """
        result = [False] * len(self.layers)
        earliest = len(self.layers) + 1  # the lowest tensor any layer after k reads
        for k in range(len(self.layers) - 1, -1, -1):
            result[k] = earliest >= k + 1
            earliest = min(earliest, *self.inputs[k])
        return result

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

    def output_shapes(self, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Per-sample output shape of every layer, in execution order; ValueError where a layer
        cannot take its input."""
        return [out for _, out in self._node_shapes(input_shape)]

    def flops(self, input_shape: tuple[int, ...] | None = None) -> int:
        """Forward FLOPs for one sample (a multiply-add counts as 2); ``input_shape`` defaults
        to the model's own."""
        return sum(
            layer.flops(given)
            for layer, (given, _) in zip(self.layers, self._node_shapes(input_shape), strict=True)
        )

    @property
    def num_parameters(self) -> int:
        return sum(layer.num_parameters for layer in self.layers)

    def _named_state(self) -> dict[str, np.ndarray]:
        """The live parameter and buffer arrays under their ``"<index>.<name>"`` names."""
        return {
            f"{index}.{name}": value
            for index, layer in enumerate(self.layers)
            for store in (layer.params, layer.buffers)
            for name, value in store.items()
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer under PyTorch-style names."""
        return {key: value.copy() for key, value in self._named_state().items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy arrays into the existing parameters and buffers (in place, so optimizers keep them).

        Raises:
            ValueError: listing missing or unexpected keys, or naming a key whose shape differs.
        """
        targets = self._named_state()
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
        self._plan = None

    def astype(self, dtype):
        """Cast every layer to ``dtype`` (float32 or float64); create optimizers afterwards."""
        for layer in self.layers:
            layer.astype(dtype)
        self._plan = None
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


def format_table(rows: list[tuple[str, ...]], left: int) -> str:
    """Rows as aligned columns (the first ``left`` left-aligned), a rule under the header and
    above the last row (the totals)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    rule = "-" * len(lines[0])
    return "\n".join([lines[0], rule, *lines[1:-1], rule, lines[-1]])
