"""Build the PyTorch twin of a purenn Sequential: same layers, same weights.

PyTorch is not a dependency of purenn; the benchmarks import it to measure against, and the
export tests to load safetensors files into torch (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from purenn.io.safetensors import to_torch_names


def _module(layer_type: str, config: dict) -> nn.Module:
    """The torch.nn module equivalent to one purenn layer (type name and config)."""
    module = _plain_module(layer_type, config)
    if config.get("weight_norm"):
        return nn.utils.parametrizations.weight_norm(module, dim=0)
    return module


def _plain_module(layer_type: str, config: dict) -> nn.Module:
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
        "Softmax": lambda: nn.Softmax(dim=-1),
        "GlobalAvgPool2D": lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
    }
    if layer_type not in simple:
        raise ValueError(f"no torch twin for layer type {layer_type!r}")
    return simple[layer_type]()


def torch_sequential(architecture: dict) -> nn.Sequential:
    """The ``nn.Sequential`` of a purenn architecture (``Sequential.get_config()``), fresh weights.

    Its ``state_dict()`` names are those of ``purenn.io.safetensors.to_torch_names``.
    """
    return nn.Sequential(
        *(_module(spec["type"], spec["config"]) for spec in architecture["layers"])
    )


def torch_twin(model) -> nn.Sequential:
    """An ``nn.Sequential`` computing what ``model`` computes, with a copy of its weights (in
    their dtype)."""
    twin = torch_sequential(model.get_config())
    state = {
        key: torch.from_numpy(np.ascontiguousarray(v))
        for key, v in to_torch_names(model.state_dict()).items()
    }
    if state:  # in the model's precision: loading float64 weights into float32 would round them
        twin.to(next(iter(state.values())).dtype)
    twin.load_state_dict(state)
    return twin
