"""The eval-mode fast path: a model's layers compiled into fused inference steps.

``model.eval()`` then ``model(x)`` (or ``forward(x, training=False)``) runs an
:class:`InferencePlan` instead of the layers' training forward:

- a BatchNorm right after a Conv2D or Dense is folded into its weight and bias:
  ``bn(W x + b) = (s W) x + (s (b - mean) + beta)`` with ``s = gamma / sqrt(var + eps)`` per
  output channel (computed in float64, then cast);
- the ReLU, 2x2 max-pooling and Dropout (the identity in evaluation) that follow a Conv2D, a
  Dense, a BatchNorm or an Add run inside that step (one pass per band of output rows, in
  cache);
- the maps between convolutions are channels-last, (N, H, W, C): every convolution runs
  :func:`purenn.kernels.channels_last.conv2d` and writes channels-last; Add and the
  element-wise activations take the layout they are given; GlobalAvgPool2D averages either
  layout; every other layer is given channels-first maps (one transpose where a channels-last
  map meets it, as at the CNN's Flatten), and so is the caller;
- a 3x3 stride-1 convolution with enough channels runs Winograd F(2x2, 3x3) on even-sized maps
  of enough tiles (:mod:`purenn.kernels.winograd_channels_last`), with the same fusions;
- every other layer runs its ``infer``: nothing is kept for a backward pass.

A layer is absorbed into the step before it only if that step's output feeds it alone (in a
graph, a tensor read by two nodes is computed on its own). The plan is a snapshot of the
weights: the model builds it on the first evaluation-mode forward after ``eval()`` and drops it
on ``train()``, ``eval()``, a training-mode forward, ``load_state_dict`` and ``astype``.
Assigning into a parameter array by hand in evaluation mode needs ``model.eval()`` again.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from purenn.kernels import channels_last, winograd_channels_last
from purenn.kernels.parallel import num_threads, single_threaded_blas
from purenn.kernels.workspace import Workspace
from purenn.nn.layers import (
    Add,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    GlobalAvgPool2D,
    Layer,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Tanh,
)

#: Layers whose evaluation is the same per element in any layout.
ELEMENTWISE = (Add, ReLU, LeakyReLU, Sigmoid, Tanh, Dropout)


@dataclass
class Step:
    """One fused step: reads the tensors ``inputs`` (0 = the model input), writes ``output``.

    ``run`` takes the input tensors in the layouts the plan keeps them in and returns the
    output in the layout ``channels_last`` says (4-D maps only; other tensors are as the
    layers give them).
    """

    layers: list[int]
    inputs: list[int]
    output: int
    run: Callable[[list[np.ndarray]], np.ndarray]
    channels_last: bool = False


def _is_pool2x2(layer: Layer) -> bool:
    return type(layer) is MaxPool2D and layer.kernel_size == (2, 2) and layer.stride == (2, 2)


def _absorbable(head: Layer, taken: list[Layer], layer: Layer) -> bool:
    """Whether ``layer`` can run inside the step of ``head`` that already absorbed ``taken``."""
    if type(layer) is Dropout:
        return True
    kinds = [type(t) for t in taken if type(t) is not Dropout]
    if type(layer) is ReLU:
        return ReLU not in kinds
    norm = BatchNorm2D if isinstance(head, Conv2D) else BatchNorm1D
    if isinstance(layer, norm) and isinstance(head, Conv2D | Dense):
        return not kinds and layer.dtype == head.dtype
    if _is_pool2x2(layer) and isinstance(head, Conv2D):
        return not any(k is MaxPool2D for k in kinds)
    return False


def _folded(head: Conv2D | Dense, taken: list[Layer]):
    """(weight, bias) of ``head`` with an absorbed BatchNorm folded in (new arrays).

    With nothing to fold, the layer's own: its live weight (or weight norm's g * v / ||v||,
    computed once) and its bias (None without one).
    """
    norm = next((t for t in taken if isinstance(t, BatchNorm1D | BatchNorm2D)), None)
    if norm is None:
        return head.weight(), head.params["bias"] if head.use_bias else None
    scale, shift = norm.folded()
    weight = head.weight() * scale.reshape((-1,) + (1,) * (head.weight().ndim - 1))
    bias = shift if not head.use_bias else shift + scale * head.params["bias"]
    return weight.astype(head.dtype), bias.astype(head.dtype)


def _conv_run(head: Conv2D, taken: list[Layer], channels_last_input: bool):
    """The function computing the convolution ``head`` and the absorbed ``taken`` layers from an
    (N, H, W, C) map, or from an (N, C, H, W) one (checked as the layer checks its input), to an
    (N, H', W', O) map."""
    weight, bias = _folded(head, taken)
    matrix = channels_last.weight_matrix(weight, head.groups, channels_last_input)
    relu = any(type(t) is ReLU for t in taken)
    pool = any(_is_pool2x2(t) for t in taken)
    workspace = Workspace()
    geometry = (head.kernel_size, head.stride, head.pads)
    shape = (head.groups, head.in_channels, head.out_channels)
    winograd_layer = channels_last_input and winograd_channels_last.pays(*geometry, *shape)
    transformed: list[np.ndarray] = []  # the Winograd filters, made on first use

    def run(args: list[np.ndarray]) -> np.ndarray:
        x = args[0] if channels_last_input else head.checked_input(args[0])
        if winograd_layer and winograd_channels_last.fits(*x.shape[:3]):
            if not transformed:
                transformed.append(winograd_channels_last.filter_matrices(weight))
            return winograd_channels_last.conv3x3(x, transformed[0], bias, relu, pool, workspace)
        return channels_last.conv2d(
            x, matrix, bias, *geometry, relu, pool, channels_last_input, workspace
        )

    return run


def _fused_run(head: Layer, taken: list[Layer]) -> Callable[[list[np.ndarray]], np.ndarray]:
    """The function computing ``head`` followed by the absorbed ``taken`` layers, on
    channels-first maps (a convolution: :func:`_conv_run`)."""
    relu = any(type(t) is ReLU for t in taken)
    if isinstance(head, Dense):
        weight, bias = _folded(head, taken)
        return lambda args: head.infer(args[0], weight, bias, relu=relu)
    if isinstance(head, BatchNorm1D | BatchNorm2D | Add):
        return lambda args: head.infer(args if head.merges else args[0], relu=relu)
    return lambda args: head.infer(args if head.merges else args[0])


def _arranged(run, given: list[bool], wanted: bool):
    """``run`` given its input maps in the layout ``wanted`` (True: channels-last), whatever
    the layouts ``given`` (per input) they come in; tensors that are not maps pass as they are."""
    convert = channels_last.to_channels_last if wanted else channels_last.to_channels_first

    def arranged(args: list[np.ndarray]) -> np.ndarray:
        return run(
            [
                convert(x) if layout != wanted and x.ndim == 4 else x
                for x, layout in zip(args, given, strict=True)
            ]
        )

    return arranged


class InferencePlan:
    """A model's layers as fused steps, run without keeping anything for a backward.

    Args:
        layers: the model's layers in execution order.
        inputs: per layer, the tensor indices it reads (0 = the model input, k + 1 = the output
            of layer k); a Sequential reads ``[[0], [1], ...]``.
    """

    def __init__(self, layers: list[Layer], inputs: list[list[int]]) -> None:
        readers: dict[int, list[int]] = {}
        for k, reads in enumerate(inputs):
            for i in reads:
                readers.setdefault(i, []).append(k)
        self.output = len(layers)
        self.steps: list[Step] = []
        self._channels_last = {0: False}  # per tensor: a channels-last map
        k = 0
        while k < len(layers):
            head, chain = layers[k], [k]
            fusing = isinstance(head, Conv2D | Dense | BatchNorm1D | BatchNorm2D | Add)
            while fusing and chain[-1] + 1 != self.output:
                consumers = readers.get(chain[-1] + 1, [])
                if len(consumers) != 1 or inputs[consumers[0]] != [chain[-1] + 1]:
                    break
                nxt = consumers[0]
                if nxt != chain[-1] + 1 or not _absorbable(
                    head, [layers[j] for j in chain[1:]], layers[nxt]
                ):
                    break
                chain.append(nxt)
            step = self._step(head, [layers[j] for j in chain[1:]], chain, inputs[k])
            self._channels_last[step.output] = step.channels_last
            self.steps.append(step)
            k = chain[-1] + 1
        self._last_read = {i: s for s, step in enumerate(self.steps) for i in step.inputs}

    def _step(self, head: Layer, taken: list[Layer], chain: list[int], reads: list[int]) -> Step:
        """The step running ``head`` and ``taken``, in the layout its inputs come in where it can
        take it; a channels-last map for a layer that cannot is transposed first."""
        given = [self._channels_last[i] for i in reads]
        if isinstance(head, Conv2D):
            return Step(chain, reads, chain[-1] + 1, _conv_run(head, taken, given[0]), True)
        if isinstance(head, GlobalAvgPool2D) and given[0]:
            wanted = True
            run = lambda args: args[0].mean(axis=(1, 2), dtype=args[0].dtype)  # noqa: E731
        else:
            wanted = isinstance(head, ELEMENTWISE) and given[0]
            run = _fused_run(head, taken)
        if any(layout != wanted for layout in given):
            run = _arranged(run, given, wanted)
        return Step(chain, reads, chain[-1] + 1, run, wanted and isinstance(head, ELEMENTWISE))

    def run(self, x: np.ndarray) -> np.ndarray:
        """The model's output for the batch ``x``, as the layers' evaluation-mode forward gives."""
        values: dict[int, np.ndarray] = {0: x}
        # Every step splits its work over purenn's threads itself (bands of a convolution, rows
        # of a dense layer's weights); BLAS's own threads would only spin after a small product
        # and take the cores from the next step (155 against 125 ms for the preset CNN's
        # batch of 32 on 2 cores).
        with single_threaded_blas() if num_threads() > 1 else nullcontext():
            for s, step in enumerate(self.steps):
                values[step.output] = step.run([values[i] for i in step.inputs])
                for i in step.inputs:
                    if self._last_read.get(i) == s:
                        values.pop(i, None)
        if self._channels_last[self.output]:
            return channels_last.to_channels_first(values[self.output])
        return values[self.output]
