"""Optimizers, gradient clipping and schedules: they see ``(value, grad)`` pairs only."""

from purenn.optim.optimizers import SGD, Adam, AdamW, Optimizer, clip_grad_norm
from purenn.optim.schedules import Constant, CosineWarmup, Schedule, StepDecay

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "Constant",
    "CosineWarmup",
    "Optimizer",
    "Schedule",
    "StepDecay",
    "clip_grad_norm",
]
