"""Build the PyTorch twin of a purenn Sequential (same layers, same weights), and of the
``plantvillage-resnet`` graph (a ResNet written as torch users write one).

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


# -- plantvillage-resnet ------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """torchvision's BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
    """``plantvillage-resnet`` written as one writes a ResNet in PyTorch, under torchvision's
    names: ``conv1``, ``bn1``, ``layer1`` ... ``layer4`` (one BasicBlock each), ``fc``."""

    widths = (32, 32, 64, 128, 256)

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, self.widths[0], 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.widths[0])
        for stage, (c_in, c_out) in enumerate(zip(self.widths[:-1], self.widths[1:], strict=True)):
            block = BasicBlock(c_in, c_out, 1 if stage == 0 else 2)
            self.add_module(f"layer{stage + 1}", nn.Sequential(block))
        self.fc = nn.Linear(self.widths[-1], num_classes)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))


#: The torch module type of each purenn layer type that holds parameters or buffers.
_MODULE_TYPES = {
    "Conv2D": nn.Conv2d,
    "Dense": nn.Linear,
    "BatchNorm1D": nn.BatchNorm1d,
    "BatchNorm2D": nn.BatchNorm2d,
}


def module_names(model, twin: nn.Module) -> dict[str, int]:
    """``load_torch_state``'s ``names`` for a twin that registers its modules in the order of
    the model's layers: torch module name -> layer index, pairing the model's layers that hold
    arrays with the twin's modules that do, in order (types checked)."""
    layers = [(i, layer) for i, layer in enumerate(model.layers) if layer.params or layer.buffers]
    modules = [
        (name, module)
        for name, module in twin.named_modules()
        if any(True for _ in module.parameters(recurse=False))
        or any(True for _ in module.buffers(recurse=False))
    ]
    if len(layers) != len(modules):
        raise ValueError(f"{len(layers)} layers with arrays but {len(modules)} torch modules")
    for (index, layer), (name, module) in zip(layers, modules, strict=True):
        if not isinstance(module, _MODULE_TYPES[type(layer).__name__]):
            raise ValueError(f"layer {index} {layer!r} pairs with {name} {module!r}")
    return {name: index for (index, _), (name, _) in zip(layers, modules, strict=True)}


def resnet_twin(model) -> TorchResNet:
    """The TorchResNet computing what the plantvillage-resnet ``model`` computes, with a copy of
    its weights (in their dtype)."""
    in_channels = model.input_shape[0]
    twin = TorchResNet(model.layers[-1].out_features, in_channels)
    index_to_module = {index: name for name, index in module_names(model, twin).items()}
    state = {}
    for key, value in to_torch_names(model.state_dict()).items():
        index, _, rest = key.partition(".")
        state[f"{index_to_module[int(index)]}.{rest}"] = torch.from_numpy(value.copy())
    twin.to(next(iter(state.values())).dtype)
    result = twin.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:  # purenn keeps no num_batches_tracked
        raise ValueError(f"twin missing {missing}, unexpected {result.unexpected_keys}")
    return twin
