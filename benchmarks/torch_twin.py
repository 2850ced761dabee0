"""Build the PyTorch twin of a purenn Sequential: same layers, same weights (benchmarks only).

PyTorch is not a dependency of purenn; the benchmarks import it to measure against.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _module(layer_type: str, config: dict) -> nn.Module:
    """The torch.nn module equivalent to one purenn layer (type name and config)."""
    if config.get("weight_norm"):
        raise ValueError("torch twins of weight-normalised layers are not needed by the benchmarks")
    if layer_type == "Conv2D":
        return nn.Conv2d(
            config["in_channels"],
            config["out_channels"],
            tuple(config["kernel_size"]),
            stride=tuple(config["stride"]),
            padding=config["padding"]
            if isinstance(config["padding"], (int, str))
            else tuple(config["padding"]),
            bias=config["bias"],
        )
    if layer_type == "Dense":
        return nn.Linear(config["in_features"], config["out_features"], bias=config["bias"])
    simple = {
        "ReLU": lambda: nn.ReLU(),
        "MaxPool2D": lambda: nn.MaxPool2d(tuple(config["kernel_size"]), tuple(config["stride"])),
        "AvgPool2D": lambda: nn.AvgPool2d(tuple(config["kernel_size"]), tuple(config["stride"])),
        "Flatten": lambda: nn.Flatten(),
        "Dropout": lambda: nn.Dropout(config["p"]),
        "BatchNorm1D": lambda: nn.BatchNorm1d(
            config["num_features"], config["eps"], config["momentum"]
        ),
        "BatchNorm2D": lambda: nn.BatchNorm2d(
            config["num_features"], config["eps"], config["momentum"]
        ),
        "LeakyReLU": lambda: nn.LeakyReLU(config["negative_slope"]),
        "Sigmoid": lambda: nn.Sigmoid(),
        "Tanh": lambda: nn.Tanh(),
    }
    if layer_type not in simple:
        raise ValueError(f"no torch twin for layer type {layer_type!r}")
    return simple[layer_type]()


def torch_twin(model) -> nn.Sequential:
    """An ``nn.Sequential`` computing what ``model`` computes, with a copy of its weights (in
    their dtype)."""
    twin = nn.Sequential(
        *(_module(spec["type"], spec["config"]) for spec in model.get_config()["layers"])
    )
    state = {
        key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in model.state_dict().items()
    }
    if state:  # in the model's precision: loading float64 weights into float32 would round them
        twin.to(next(iter(state.values())).dtype)
    twin.load_state_dict(state)
    return twin
