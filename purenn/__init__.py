"""purenn: a deep-learning library written from first principles in NumPy."""

from purenn import init, layers, losses, ops, optim, schedules
from purenn.layers import (
    AvgPool2D,
    BatchNorm1D,
    BatchNorm2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from purenn.losses import MSE, SoftmaxCrossEntropy
from purenn.model import Sequential
from purenn.optim import SGD, Adam, AdamW, clip_grad_norm
from purenn.runtime import use_fast_path
from purenn.schedules import Constant, CosineWarmup, StepDecay

__version__ = "0.1.0"

__all__ = [
    "MSE",
    "SGD",
    "Adam",
    "AdamW",
    "Constant",
    "CosineWarmup",
    "SoftmaxCrossEntropy",
    "StepDecay",
    "clip_grad_norm",
    "use_fast_path",
    "losses",
    "optim",
    "schedules",
    "AvgPool2D",
    "BatchNorm1D",
    "BatchNorm2D",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "GlobalAvgPool2D",
    "LeakyReLU",
    "MaxPool2D",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "init",
    "layers",
    "ops",
]
