"""purenn: a deep-learning library written from first principles in NumPy."""

from purenn import optim
from purenn.kernels import ops
from purenn.kernels.runtime import use_fast_path
from purenn.nn import init, layers, losses
from purenn.nn.graph import Input, Model
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
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from purenn.nn.losses import MSE, SoftmaxCrossEntropy, UniformCrossEntropy
from purenn.nn.sequential import Sequential
from purenn.optim import SGD, Adam, AdamW, clip_grad_norm, schedules
from purenn.optim.schedules import Constant, CosineWarmup, StepDecay

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
    "UniformCrossEntropy",
    "clip_grad_norm",
    "use_fast_path",
    "losses",
    "optim",
    "schedules",
    "Add",
    "AvgPool2D",
    "Concatenate",
    "Input",
    "Model",
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
