"""Layers with hand-written backward passes; ``LAYER_TYPES`` maps type names to classes."""

from purenn.nn.layers.activations import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from purenn.nn.layers.base import Layer
from purenn.nn.layers.conv import Conv2D
from purenn.nn.layers.dense import Dense
from purenn.nn.layers.dropout import Dropout
from purenn.nn.layers.merge import Add, Concatenate
from purenn.nn.layers.normalization import BatchNorm1D, BatchNorm2D
from purenn.nn.layers.pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from purenn.nn.layers.reshape import Flatten

LAYER_TYPES = {
    cls.__name__: cls
    for cls in (
        Dense,
        Conv2D,
        MaxPool2D,
        AvgPool2D,
        GlobalAvgPool2D,
        Flatten,
        Dropout,
        BatchNorm1D,
        BatchNorm2D,
        ReLU,
        LeakyReLU,
        Sigmoid,
        Tanh,
        Softmax,
        Add,
        Concatenate,
    )
}


def layer_from_spec(spec: dict, where: str) -> Layer:
    """A fresh layer from ``{"type": name, "config": constructor arguments}`` (a model config).

    Raises:
        ValueError: an unknown type, named with ``where`` (e.g. ``"layer 3"``).
    """
    if spec["type"] not in LAYER_TYPES:
        raise ValueError(f"{where} has an unknown type {spec['type']!r}")
    return LAYER_TYPES[spec["type"]](**dict(spec.get("config", {})))


__all__ = ["Layer", "LAYER_TYPES", "layer_from_spec", *LAYER_TYPES]
