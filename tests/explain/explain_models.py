"""Shared models and the PyTorch Grad-CAM used as the oracle of the explanation tests."""

from __future__ import annotations

import numpy as np
import pytest

import purenn as pn


def bn_dropout_cnn(dtype=np.float64, seed=0) -> pn.Sequential:
    """Conv-BatchNorm-ReLU-pool, conv-ReLU-pool, dense with Dropout, at 16x16, 4 classes.

    The BatchNorm running statistics are set away from their initial (identity) values.
    """
    rng = np.random.default_rng(seed)
    model = pn.Sequential(
        [
            pn.Conv2D(3, 6, 3, padding=1, rng=rng, dtype=dtype),
            pn.BatchNorm2D(6, dtype=dtype),
            pn.ReLU(),
            pn.MaxPool2D(2),
            pn.Conv2D(6, 8, 3, padding=1, rng=rng, dtype=dtype),
            pn.ReLU(),
            pn.MaxPool2D(2),
            pn.Flatten(),
            pn.Dense(8 * 4 * 4, 16, rng=rng, dtype=dtype),
            pn.ReLU(),
            pn.Dropout(0.5, rng=rng),
            pn.Dense(16, 4, init="glorot", rng=rng, dtype=dtype),
        ],
        input_shape=(3, 16, 16),
    )
    bn = model.layers[1]
    bn.buffers["running_mean"][...] = rng.normal(0, 0.3, 6)
    bn.buffers["running_var"][...] = rng.uniform(0.5, 2.0, 6)
    bn.params["weight"][...] = rng.uniform(0.5, 1.5, 6)
    bn.params["bias"][...] = rng.normal(0, 0.2, 6)
    for layer in (model.layers[0], model.layers[4]):
        layer.params["bias"][...] = rng.normal(0, 0.1, layer.params["bias"].shape)
    return model


def torch_grad_cam(model, x: np.ndarray, targets, layer: int, rectify: bool) -> np.ndarray:
    """Grad-CAM computed with autograd on the same-weights torch twin (float64, eval mode).

    The twin runs the layers in their written order (ReLU before max-pooling). Z is the output
    of ``layer``; alpha = mean over positions of d logit_target / dZ; the map is
    ReLU(sum_k alpha_k A_k) with A = ReLU(Z) when ``rectify``, else Z. Returns (N, h, w).
    """
    torch = pytest.importorskip("torch")
    from torch_twin import torch_twin

    twin = torch_twin(model).eval()
    h = torch.tensor(x)
    for index, module in enumerate(twin):
        h = module(h)
        if index == layer:
            z = h
            z.retain_grad()
    h[torch.arange(len(x)), torch.as_tensor(targets)].sum().backward()
    alpha = z.grad.mean(dim=(2, 3))
    maps = torch.relu(z) if rectify else z
    return torch.relu((alpha[:, :, None, None] * maps).sum(dim=1)).detach().numpy()
