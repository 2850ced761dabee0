"""Saliency vs finite differences; Grad-CAM vs PyTorch autograd; arguments and their errors."""

from __future__ import annotations

import numpy as np
import pytest
from explain_models import bn_dropout_cnn, torch_grad_cam
from gradcheck import numerical_gradient, relative_error

import purenn as pn
from purenn.explain import ExplainError, explain, grad_cam, saliency
from purenn.explain.methods import (
    bilinear_matrix,
    conv_layer,
    grad_cam_maps,
    score_gradient,
    upsample,
)
from purenn.presets import build_preset


def _images(n, shape, seed=1):
    return np.random.default_rng(seed).standard_normal((n, *shape))


def test_saliency_equals_finite_difference_gradient_of_the_class_logit():
    model = bn_dropout_cnn()
    x = _images(2, (3, 16, 16))
    targets = np.array([3, 1])

    def logit_sum() -> float:
        return float(model.forward(x, training=False)[[0, 1], targets].sum())

    numeric = numerical_gradient(logit_sum, x)
    _, analytic, _, _ = score_gradient(model, x, targets, None)
    assert relative_error(analytic, numeric) < 1e-6
    raw = saliency(model, x, target=targets, normalize=False)
    assert raw.dtype == np.float32 and raw.shape == (2, 16, 16)
    assert relative_error(raw, np.abs(numeric).max(axis=1)) < 1e-6


def test_default_target_is_the_predicted_class_and_probabilities_are_softmax():
    model = bn_dropout_cnn()
    x = _images(5, (3, 16, 16))
    logits = model.forward(x, training=False)
    result = explain(model, x, "saliency", batch_size=2)
    np.testing.assert_array_equal(result.targets, logits.argmax(axis=1))
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(result.probabilities, expected, rtol=1e-5)
    # batches of 2 give what one batch gives
    np.testing.assert_array_equal(result.maps, explain(model, x, "saliency").maps)
    # A temperature divides the logits before the softmax; the maps and targets stay.
    scaled = explain(model, x, "saliency", temperature=2.0)
    cooled = np.exp((logits - logits.max(1, keepdims=True)) / 2)
    np.testing.assert_allclose(scaled.probabilities, cooled / cooled.sum(1, keepdims=True), 1e-5)
    np.testing.assert_array_equal(scaled.maps, result.maps)
    np.testing.assert_array_equal(scaled.targets, result.targets)
    for bad in (0, -1.0, float("nan"), "2"):
        with pytest.raises(ExplainError, match="temperature"):
            explain(model, x, temperature=bad)


def test_smoothgrad_is_the_mean_saliency_of_noisy_copies():
    model = bn_dropout_cnn()
    x = _images(3, (3, 16, 16))
    plain = saliency(model, x, normalize=False)
    # zero noise: every copy is the image itself
    zero = saliency(model, x, smooth_samples=3, noise=0.0, normalize=False)
    np.testing.assert_allclose(zero, plain, rtol=1e-6)
    smooth = saliency(model, x, smooth_samples=4, noise=0.2, seed=5, normalize=False)
    rng = np.random.default_rng(5)
    sigma = 0.2 * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
    targets = model.forward(x, training=False).argmax(1)
    expected = np.mean(
        [
            saliency(
                model,
                x + rng.standard_normal(x.shape) * sigma[:, None, None, None],
                target=targets,
                normalize=False,
            )
            for _ in range(4)
        ],
        axis=0,
    )
    np.testing.assert_allclose(smooth, expected, rtol=1e-6)
    assert relative_error(smooth, plain) > 1e-3  # the noise did change the maps


@pytest.mark.parametrize("layer", [None, 0, 4])
def test_grad_cam_equals_torch_autograd_on_a_batchnorm_dropout_model(layer):
    model = bn_dropout_cnn().train()  # explain runs in eval mode whatever the model's mode
    x = _images(3, (3, 16, 16))
    targets = np.array([0, 2, 3])
    raw = grad_cam(model, x, targets, layer=layer, upsampled=False, normalize=False)
    index = 4 if layer is None else layer
    # conv 4 feeds a ReLU (rectified maps); conv 0 feeds the BatchNorm (raw maps)
    expected = torch_grad_cam(model, x, targets, index, rectify=index == 4)
    assert raw.shape == expected.shape == (3, 16 // (1 + (index == 4)), 16 // (1 + (index == 4)))
    assert expected.max() > 0
    assert relative_error(raw, expected) < 1e-5


def test_grad_cam_equals_torch_autograd_on_the_plantvillage_cnn():
    torch = pytest.importorskip("torch")
    model = build_preset("plantvillage-cnn", num_classes=15, image_size=32, dtype=np.float64)
    x = _images(2, (3, 32, 32))
    logits = model.forward(x, training=False)
    targets = logits.argmax(1)
    raw = grad_cam(model, x, upsampled=False, normalize=False)
    expected = torch_grad_cam(model, x, targets, 9, rectify=True)  # layer 9: the last Conv2D
    assert raw.shape == (2, 4, 4) and expected.max() > 0
    assert relative_error(raw, expected) < 1e-5
    # upsampled like torch's bilinear interpolation (align_corners=False), then max-normalised
    shown = grad_cam(model, x)
    up = torch.nn.functional.interpolate(
        torch.tensor(expected)[:, None], size=(32, 32), mode="bilinear", align_corners=False
    )[:, 0].numpy()
    assert relative_error(shown, up / up.max(axis=(1, 2), keepdims=True)) < 1e-5
    assert shown.dtype == np.float32 and shown.max() == 1.0 and shown.min() >= 0


def test_grad_cam_on_the_resnet_reads_the_last_map_every_path_passes_through():
    """The last Conv2D of plantvillage-resnet is a shortcut's 1x1 projection (node 34), which the
    main path bypasses; the default is the ReLU after the last Add (node 37), the maps the global
    average pooling reads. Checked against torch autograd on TorchResNet at layer4's output, and
    against CAM (Zhou et al. 2016): with GAP and one Dense, ReLU(sum_k W[t, k] A_k) / (H*W)."""
    torch = pytest.importorskip("torch")
    from torch_twin import resnet_twin  # benchmarks/torch_twin.py

    model = build_preset("plantvillage-resnet", num_classes=5, image_size=64, dtype=np.float64)
    passed = model.dominating()
    assert [k for k, p in enumerate(passed) if p] == [
        *(0, 1, 2, 3, 9, 10, 18, 19, 27, 28, 36, 37, 38, 39)
    ]
    assert type(model.layers[34]).__name__ == "Conv2D" and not passed[34]
    assert conv_layer(model) == 37 and type(model.layers[37]).__name__ == "ReLU"
    x = _images(2, (3, 64, 64))
    targets = np.array([1, 4])
    raw = grad_cam(model, x, targets, upsampled=False, normalize=False)

    twin = resnet_twin(model).eval()
    kept = {}
    twin.layer4.register_forward_hook(lambda module, args, out: kept.update(a=out))
    logits = twin(torch.tensor(x))
    kept["a"].retain_grad()
    logits[torch.arange(2), torch.as_tensor(targets)].sum().backward()
    a, g = kept["a"].detach().numpy(), kept["a"].grad.numpy()
    expected = np.maximum(np.einsum("nk,nkhw->nhw", g.mean(axis=(2, 3)), a), 0)
    assert raw.shape == (2, 2, 2) and expected.max() > 0
    assert relative_error(raw, expected) < 1e-6  # the maps are float32
    weights = model.layers[39].params["weight"][targets]  # (N, K)
    cam = np.maximum(np.einsum("nk,nkhw->nhw", weights, a), 0) / 4
    assert relative_error(raw, cam) < 1e-6


def test_a_graph_whose_last_conv_every_path_passes_through_keeps_it():
    x = pn.Input((3, 8, 8))
    h = pn.Add()([pn.Conv2D(3, 4, 3, padding=1, rng=0)(x), pn.Conv2D(3, 4, 1, rng=1)(x)])
    h = pn.ReLU()(pn.Conv2D(4, 4, 3, padding=1, rng=2)(pn.ReLU()(h)))
    model = pn.Model(x, pn.Dense(4, 2, rng=3)(pn.GlobalAvgPool2D()(pn.MaxPool2D(2)(h))))
    assert model.dominating() == [False, False, True, True, True, True, True, True, True]
    assert conv_layer(model) == 4


def test_grad_cam_rectifies_only_when_a_relu_reads_the_layer():
    """Node 1 is a ReLU, but of the input: the conv's maps (node 0) stay unrectified."""
    x = pn.Input((3, 6, 6))
    z = pn.Conv2D(3, 3, 3, padding=1, rng=0, dtype=np.float64)(x)
    y = pn.Add()([z, pn.ReLU()(x)])
    model = pn.Model(x, pn.Dense(3, 2, rng=1, dtype=np.float64)(pn.GlobalAvgPool2D()(y)))
    images = _images(2, (3, 6, 6))
    raw = grad_cam(model, images, 0, layer=0, upsampled=False, normalize=False)
    activation, gradient, _, _ = score_gradient(model, images, np.zeros(2, int), 0)
    assert activation.min() < 0
    np.testing.assert_allclose(raw, grad_cam_maps(activation, gradient, rectify=False))
    assert relative_error(raw, grad_cam_maps(activation, gradient, rectify=True)) > 1e-3


@pytest.mark.parametrize("size_in,size_out", [(4, 16), (5, 13), (8, 3), (1, 4)])
def test_bilinear_upsampling_matches_torch(size_in, size_out):
    torch = pytest.importorskip("torch")
    maps = _images(2, (size_in, size_in + 1))
    expected = torch.nn.functional.interpolate(
        torch.tensor(maps)[:, None],
        size=(size_out, size_out + 2),
        mode="bilinear",
        align_corners=False,
    )[:, 0].numpy()
    np.testing.assert_allclose(upsample(maps, (size_out, size_out + 2)), expected, atol=1e-12)
    np.testing.assert_allclose(bilinear_matrix(size_out, size_in).sum(axis=1), 1.0)


def test_bad_arguments_raise_errors_naming_them():
    model = bn_dropout_cnn()
    x = _images(2, (3, 16, 16))
    cases = [
        (lambda: explain(model, x, "lime"), "method must be one of gradcam, saliency"),
        (lambda: explain(model, x[:, :2]), "model's input shape (N, 3, 16, 16)"),
        (lambda: explain(model, x.astype(np.uint8)), "images must be a float array"),
        (lambda: explain(model, x[0]), "images must be a float array of shape (N, C, H, W)"),
        (lambda: explain(model, np.full_like(x, np.nan)), "images must be finite"),
        (lambda: explain(model, x, target=4), "class indices in [0, 4)"),
        (lambda: explain(model, x, target=[1, 2, 3]), "2 class indices"),
        (lambda: explain(model, x, target=1.5), "a class index"),
        (lambda: explain(model, x, layer=8), "layer 8 (Dense"),
        (lambda: explain(model, x, layer=12), "index below 12"),
        (lambda: explain(model, x, layer=-1), "layer"),
        (lambda: explain(model, x, batch_size=0), "batch_size"),
        (lambda: explain(model, x, "saliency", smooth_samples=-1), "smooth_samples"),
        (lambda: explain(model, x, "saliency", noise=-0.1), "noise must be a number >= 0"),
    ]
    for call, message in cases:
        with pytest.raises(ExplainError, match=None) as info:
            call()
        assert message in str(info.value), (message, str(info.value))
    dense_only = build_preset("plantvillage-ann", num_classes=3, image_size=8)
    with pytest.raises(ExplainError, match="needs a model with a Conv2D layer"):
        grad_cam(dense_only, np.zeros((1, 3, 8, 8), np.float32))
    assert saliency(dense_only, np.ones((1, 3, 8, 8), np.float32)).shape == (1, 8, 8)
