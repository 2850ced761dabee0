"""The reference architectures have the seed's parameter counts and shapes."""

from __future__ import annotations

import numpy as np
import pytest

import purenn as pn
from purenn.presets import PRESETS, build_preset


def test_plantvillage_cnn_has_the_seed_parameter_count():
    model = build_preset("plantvillage-cnn")
    assert model.num_parameters == 8_142_630
    assert model.output_shapes((3, 128, 128))[-1] == (38,)
    assert [type(layer).__name__ for layer in model.layers[-5:]] == [
        "Flatten",
        "Dense",
        "ReLU",
        "Dropout",
        "Dense",
    ]


def test_plantvillage_ann_has_the_seed_parameter_count():
    model = build_preset("plantvillage-ann")
    assert model.num_parameters == 26_126_006
    # Sequential counts FLOPs as a graph Model does: a Dense's 2 * in * out, a ReLU's one per value
    dense = 2 * (49_152 * 528 + 528 * 256 + 256 * 128 + 128 * 38)
    assert model.flops() == dense + 528 + 256 + 128
    with pytest.raises(ValueError, match="built without input_shape"):
        pn.Sequential([pn.Dense(3, 4)]).flops()


def test_plantvillage_resnet_is_a_small_residual_graph():
    model = build_preset("plantvillage-resnet", num_classes=34)
    assert isinstance(model, pn.Model)
    assert model.num_parameters == 1_235_138  # at most 1.5M, as issue 23 asks
    assert model.flops() == 133_940_224  # 67M multiply-adds at 128x128
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds[:4] == ["Conv2D", "BatchNorm2D", "ReLU", "MaxPool2D"]  # the stem: 128 -> 32
    assert kinds.count("Add") == 4 and kinds[-2:] == ["GlobalAvgPool2D", "Dense"]
    shortcut = model.layers[16]  # stage 2's 1x1 projection reads the block's input
    assert shortcut.kernel_size == (1, 1) and model.inputs[16] == model.inputs[11]
    row = model.summary().splitlines()[2 + 9]
    assert row.split()[:2] == ["9", "Add()"] and "8, 3" in row


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_run_at_other_sizes_and_class_counts(name):
    model = build_preset(name, num_classes=15, image_size=32, seed=1)
    y = model.forward(np.zeros((2, 3, 32, 32), dtype=np.float32))
    assert y.shape == (2, 15) and y.dtype == np.float32


def test_same_seed_same_weights_and_clear_errors():
    a, b = build_preset("demo-cnn", 10, 16, seed=4), build_preset("demo-cnn", 10, 16, seed=4)
    for (x, _), (y, _) in zip(a.parameters(), b.parameters(), strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="unknown preset 'resnet'"):
        build_preset("resnet")
    with pytest.raises(ValueError, match="image_size=100"):
        build_preset("plantvillage-cnn", image_size=100)
