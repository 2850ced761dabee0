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

__all__ = ["Layer", "LAYER_TYPES", *LAYER_TYPES]
