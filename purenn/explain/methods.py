"""Saliency and Grad-CAM: which pixels a class score depends on, from the model's own backward.

The score explained is the logit of the target class, before the softmax (as in Selvaraju et al.
2017 and Simonyan et al. 2014): the probability would also depend on the other classes' logits.

Both methods run the model in evaluation mode (Dropout is the identity, BatchNorm uses its running
statistics), so every image's score depends on that image only, and one backward pass of
``sum_n logit[n, target[n]]`` gives every image's gradient at once.

Grad-CAM's feature maps are the output Z of the last Conv2D (or a chosen layer), rectified,
``A = max(Z, 0)``, when a ReLU follows it: the maps the rest of the network sees, as the paper's
"last convolutional layer". The gradient is taken at Z, so a unit the ReLU switched off has zero
gradient (at the ReLU's output it would only reflect how a following max-pool breaks ties between
zeros; purenn even runs that ReLU after the pooling, see ``Sequential``).

In a graph model the last Conv2D may be bypassed: in a ResNet it is a shortcut's 1x1 projection,
and the main path's last conv is another branch; neither map is what the head sees. There the
default is the last feature map that every path from the input to the output passes through
(the last node that dominates the output with a (C, H, W) output): in ``plantvillage-resnet``
the ReLU after the last Add, whose maps the global average pooling reads, so that Grad-CAM there
is Zhou et al.'s CAM (``alpha_k`` is the head's weight of channel k over H*W).

The model is left exactly as it was: its parameters, the gradients it holds for training (a
layer's ``backward`` overwrites ``layer.grads``, so the explanation runs with stand-in gradient
arrays), the values layers cached for a pending backward, its ``training`` flag and its Dropout
random generators (evaluation mode draws nothing). A model must not be explained from two threads
at once, as it must not be run from two threads at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from purenn.checks import check_int
from purenn.kernels.ops import softmax
from purenn.kernels.workspace import Workspace
from purenn.nn.layers import Conv2D, ReLU
from purenn.nn.network import Network

METHODS = ("gradcam", "saliency")
# Normalised saliency maps are divided by this quantile of each map (and clipped at 1).
SALIENCY_QUANTILE = 0.99


class ExplainError(ValueError):
    """A bad argument to an explanation (target class, layer, images, method)."""


@dataclass(frozen=True)
class Explanation:
    """What :func:`explain` returns.

    Attributes:
        maps: float32 ``(N, H, W)`` heat maps at the input size (per image in [0, 1] when
            normalised).
        targets: int64 ``(N,)`` class explained for each image.
        probabilities: float32 ``(N, K)`` softmax of the logits of the clean images divided
            by the temperature (the calibrated probabilities, with the model file's).
    """

    maps: np.ndarray
    targets: np.ndarray
    probabilities: np.ndarray


# -- running the model in segments ---------------------------------------------------------
@contextmanager
def isolated(model: Network) -> Iterator[None]:
    """Run ``model``'s layers inside the block without leaving any trace on them.

    Each layer gets zeroed stand-in gradient arrays and an empty scratch store for the block;
    afterwards every layer attribute is restored to the object it referred to before (the
    optimizer-held gradient arrays are never written, and the values cached by a forward pass for
    its backward are back). Parameters and buffers must not be changed inside the block (run the
    layers with ``training=False``).
    """
    saved = [dict(vars(layer)) for layer in model.layers]
    backward_ready = model._backward_ready
    for layer in model.layers:
        layer.grads = {name: np.zeros(g.shape, g.dtype) for name, g in layer.grads.items()}
        layer._scratch = Workspace()
    try:
        yield
    finally:
        model._backward_ready = backward_ready
        for layer, attributes in zip(model.layers, saved, strict=True):
            vars(layer).clear()
            vars(layer).update(attributes)


def score_gradient(
    model: Network, x: np.ndarray, targets: np.ndarray | None, layer: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Forward ``x`` in evaluation mode and backpropagate the target logits down to ``layer``.

    The forward keeps the output of ``layer`` (``tapped_forward``); the backward runs through
    the layers after it only (``backward_from``). Either model kind, Sequential or graph Model.

    Args:
        model: the model (left unchanged, see :func:`isolated`).
        x: ``(N, C, H, W)`` input batch in the model's dtype.
        targets: int ``(N,)`` classes, or None for each image's highest logit.
        layer: index into ``model.layers`` whose output to stop at, or None for the input.

    Returns:
        ``(activation, gradient, logits, targets)``: the output of ``layer`` (``x`` when None),
        ``d sum_n logits[n, targets[n]] / d activation`` of the same shape, the ``(N, K)``
        logits and the int64 targets.
    """
    with isolated(model):
        activation, logits = model.tapped_forward(x, layer)
        if targets is None:
            targets = np.argmax(logits, axis=1)
        grad = np.zeros_like(logits)
        grad[np.arange(len(grad)), targets] = 1  # d(sum of target logits) / d logits
        grad = model.backward_from(grad, layer)
    return activation, grad, logits, np.asarray(targets, dtype=np.int64)


# -- arguments ---------------------------------------------------------------------------------
def _model_dtype(model: Network) -> np.dtype:
    for _, value, _ in model.named_parameters():
        return value.dtype
    return np.dtype(np.float32)


def _check_images(model: Network, images) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        raise ExplainError(
            f"images must be a float array of shape (N, C, H, W), normalised as the model "
            f"expects, received: {x.dtype} array of shape {x.shape}"
        )
    if model.input_shape is not None and x.shape[1:] != model.input_shape:
        expected = ", ".join(map(str, model.input_shape))
        raise ExplainError(
            f"images must have the model's input shape (N, {expected}), received shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise ExplainError("images must be finite (an image holds NaN or inf)")
    return x.astype(_model_dtype(model), copy=False)


def _check_targets(target, n: int, num_classes: int | None) -> np.ndarray | None:
    """None, or int64 ``(n,)`` classes from an int (for every image) or one per image."""
    if target is None:
        return None
    targets = np.broadcast_to(np.asarray(target), (n,)) if np.ndim(target) == 0 else target
    targets = np.asarray(targets)
    if targets.shape != (n,) or not np.issubdtype(targets.dtype, np.integer):
        raise ExplainError(
            f"target must be None, a class index or {n} class indices, received: {target!r}"
        )
    if (targets < 0).any() or (num_classes is not None and (targets >= num_classes).any()):
        valid = ">= 0" if num_classes is None else f"in [0, {num_classes})"
        raise ExplainError(f"target must be class indices {valid}, received: {target!r}")
    return targets.astype(np.int64)


def _num_classes(model: Network) -> int | None:
    if model.input_shape is None:
        return None
    return model.output_shapes(model.input_shape)[-1][-1]


def conv_layer(model: Network, layer: int | None = None) -> int:
    """The index of the layer Grad-CAM reads: ``layer`` (checked), else the default.

    The default is the last Conv2D when every path to the output passes through it (always in a
    Sequential); else (a shortcut bypasses it) the last layer with a (C, H, W) output that every
    path passes through.

    Raises:
        ExplainError: the model has no Conv2D, or ``layer`` is not the index of a layer whose
            output is a 4-D feature map.
    """
    if layer is None:
        convs = [i for i, item in enumerate(model.layers) if isinstance(item, Conv2D)]
        if not convs:
            raise ExplainError("Grad-CAM needs a model with a Conv2D layer; use saliency instead")
        passed = model.dominating()
        if passed[convs[-1]]:
            return convs[-1]
        shapes = model.output_shapes(model.input_shape)
        return max(k for k in range(len(model.layers)) if passed[k] and len(shapes[k]) == 3)
    layer = check_int(layer, "layer", minimum=0, error=ExplainError)
    if layer >= len(model.layers):
        raise ExplainError(
            f"layer must be an index below {len(model.layers)}, received: layer={layer}"
        )
    if model.input_shape is not None:
        shape = model.output_shapes(model.input_shape)[layer]
        if len(shape) != 3:
            raise ExplainError(
                f"layer {layer} ({model.layers[layer]!r}) outputs shape {shape}, not a feature "
                f"map (C, H, W); Grad-CAM needs a convolutional layer"
            )
    return layer


# -- the maps -----------------------------------------------------------------------------------
def bilinear_matrix(size_out: int, size_in: int) -> np.ndarray:
    """float64 ``(size_out, size_in)`` linear interpolation along one axis.

    Pixel centres are aligned (``align_corners=False``, as PyTorch's and OpenCV's bilinear
    resize): output pixel i samples input coordinate ``(i + 0.5) * size_in / size_out - 0.5``,
    clamped to the edge pixels.
    """
    src = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    src = np.clip(src, 0, size_in - 1)
    low = np.floor(src).astype(np.int64)
    high = np.minimum(low + 1, size_in - 1)
    frac = src - low
    matrix = np.zeros((size_out, size_in))
    rows = np.arange(size_out)
    np.add.at(matrix, (rows, low), 1 - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(N, h, w)`` maps to ``(N, H, W)``: ``R_h @ map @ R_w^T``."""
    rows = bilinear_matrix(size[0], maps.shape[1]).astype(maps.dtype)
    cols = bilinear_matrix(size[1], maps.shape[2]).astype(maps.dtype)
    return rows @ maps @ cols.T


def normalize_maps(maps: np.ndarray, quantile: float = 1.0) -> np.ndarray:
    """Each non-negative map divided by its ``quantile`` value and clipped at 1.

    ``quantile=1`` divides by the maximum; a smaller one (saliency uses 0.99) keeps a few extreme
    pixels from making the rest of the map invisible. An all-zero map stays zero.
    """
    peak = np.quantile(maps, quantile, axis=(1, 2), keepdims=True).astype(maps.dtype)
    return np.minimum(maps / np.where(peak > 0, peak, 1), 1)


def grad_cam_maps(activation: np.ndarray, gradient: np.ndarray, rectify: bool) -> np.ndarray:
    """Grad-CAM at a layer's resolution: ``ReLU(sum_k alpha_k A_k)``, ``alpha_k = mean(G_k)``.

    Args:
        activation: ``(N, K, h, w)`` the layer's output Z.
        gradient: ``(N, K, h, w)`` ``G = dS/dZ``.
        rectify: use the feature maps ``A = max(Z, 0)`` (the layer is followed by a ReLU: A is
            what the rest of the network sees) instead of ``A = Z``.

    Returns:
        ``(N, h, w)`` in the dtype of the inputs.
    """
    n, k, h, w = activation.shape
    maps = np.maximum(activation, 0) if rectify else activation
    alpha = gradient.mean(axis=(2, 3))  # (N, K): each channel's importance for the score
    weighted = np.matmul(alpha[:, None, :], maps.reshape(n, k, h * w))
    return np.maximum(weighted.reshape(n, h, w), 0)


def _rectified(model: Network, layer: int) -> bool:
    """Whether the layer's output goes straight into a ReLU, and into nothing else."""
    readers = [k for k, inputs in enumerate(model.inputs) if layer + 1 in inputs]
    return bool(readers) and all(type(model.layers[k]) is ReLU for k in readers)


def _gradcam_batch(model, x, targets, layer):
    activation, gradient, logits, targets = score_gradient(model, x, targets, layer)
    if activation.ndim != 4:
        raise ExplainError(f"layer {layer} outputs shape {activation.shape[1:]}, not (C, H, W)")
    return grad_cam_maps(activation, gradient, _rectified(model, layer)), logits, targets


def _saliency_batch(model, x, targets, smooth_samples, noise, rng):
    _, gradient, logits, targets = score_gradient(model, x, targets, None)
    maps = np.abs(gradient).max(axis=1)  # the largest |gradient| over channels (Simonyan et al.)
    if smooth_samples:
        # SmoothGrad (Smilkov et al. 2017): the mean map over noisy copies of each image,
        # sigma a fraction of that image's value range, for the class found on the clean image.
        sigma = noise * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
        maps = np.zeros_like(maps)
        for _ in range(smooth_samples):
            noisy = x + (rng.standard_normal(x.shape) * sigma[:, None, None, None]).astype(x.dtype)
            _, gradient, _, _ = score_gradient(model, noisy, targets, None)
            maps += np.abs(gradient).max(axis=1)
        maps /= smooth_samples
    return maps, logits, targets


def explain(
    model: Network,
    images,
    method: str = "gradcam",
    target=None,
    layer: int | None = None,
    upsampled: bool = True,
    normalize: bool = True,
    smooth_samples: int = 0,
    noise: float = 0.15,
    seed: int = 0,
    batch_size: int = 32,
    temperature: float = 1.0,
) -> Explanation:
    """Heat maps of what each image's target-class logit depends on.

    Args:
        model: a :class:`Sequential` or a graph :class:`Model` (left unchanged).
        images: float ``(N, C, H, W)``, normalised as the model expects (e.g. with
            ``purenn.data.normalize_batch`` and the model file's mean and std).
        method: ``"gradcam"`` or ``"saliency"``.
        target: None (each image's predicted class), a class index for every image, or ``N``
            class indices.
        layer: Grad-CAM only: index into ``model.layers`` of the layer whose output feature maps
            are used (rectified when a ReLU follows it); default the last Conv2D, or in a graph
            whose last Conv2D a shortcut bypasses, the last feature map every path to the output
            passes through (:func:`conv_layer`).
        upsampled: Grad-CAM only: resize the maps bilinearly to the input size (else the maps
            have the layer's resolution).
        normalize: scale each map to [0, 1]: Grad-CAM divided by its maximum, saliency by its
            99th percentile and clipped at 1 (else the raw maps).
        smooth_samples: saliency only: SmoothGrad with this many noisy copies (0: plain).
        noise: SmoothGrad noise standard deviation as a fraction of each image's value range.
        seed: seed of the SmoothGrad noise.
        batch_size: images per forward/backward pass (memory grows with it).
        temperature: the logits are divided by it before the softmax of ``probabilities``
            (``purenn.inference.probabilities.model_temperature`` of the model file); the maps
            and the predicted class do not depend on it.

    Returns:
        An :class:`Explanation` with float32 maps.

    Raises:
        ExplainError: a bad method, images, target or layer.
    """
    if method not in METHODS:
        raise ExplainError(f"method must be one of {', '.join(METHODS)}, received: {method!r}")
    x = _check_images(model, images)
    targets = _check_targets(target, len(x), _num_classes(model))
    batch_size = check_int(batch_size, "batch_size", error=ExplainError)
    smooth_samples = check_int(smooth_samples, "smooth_samples", minimum=0, error=ExplainError)
    if not (isinstance(noise, (int, float)) and 0 <= noise < np.inf):
        raise ExplainError(f"noise must be a number >= 0, received: noise={noise!r}")
    if not (isinstance(temperature, (int, float)) and 0 < temperature < np.inf):
        raise ExplainError(
            f"temperature must be a number > 0, received: temperature={temperature!r}"
        )
    if method == "gradcam":
        layer = conv_layer(model, layer)
    rng = np.random.default_rng(seed)
    maps, logits, chosen = [], [], []
    for start in range(0, len(x), batch_size):
        rows = slice(start, start + batch_size)
        part = None if targets is None else targets[rows]
        if method == "gradcam":
            m, out, t = _gradcam_batch(model, x[rows], part, layer)
            m = upsample(m, x.shape[2:]) if upsampled else m
        else:
            m, out, t = _saliency_batch(model, x[rows], part, smooth_samples, noise, rng)
        if normalize:
            m = normalize_maps(m, 1.0 if method == "gradcam" else SALIENCY_QUANTILE)
        maps.append(m)
        logits.append(out)
        chosen.append(t)
    return Explanation(
        maps=np.concatenate(maps).astype(np.float32),
        targets=np.concatenate(chosen),
        probabilities=softmax(np.concatenate(logits).astype(np.float64) / temperature).astype(
            np.float32
        ),
    )


def saliency(
    model: Network,
    images,
    target=None,
    smooth_samples: int = 0,
    noise: float = 0.15,
    seed: int = 0,
    normalize: bool = True,
    batch_size: int = 32,
) -> np.ndarray:
    """``max over channels of |d logit_target / d image|`` (Simonyan et al. 2014): float32
    ``(N, H, W)``.

    With ``smooth_samples`` > 0, SmoothGrad: the mean of that map over noisy copies of each
    image (Gaussian noise of standard deviation ``noise`` times the image's value range). See
    :func:`explain` for the arguments.
    """
    return explain(
        model,
        images,
        "saliency",
        target,
        normalize=normalize,
        smooth_samples=smooth_samples,
        noise=noise,
        seed=seed,
        batch_size=batch_size,
    ).maps


def grad_cam(
    model: Network,
    images,
    target=None,
    layer: int | None = None,
    upsampled: bool = True,
    normalize: bool = True,
    batch_size: int = 32,
) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) at the output of ``layer`` (default: :func:`conv_layer`).

    With Z the layer's output, ``alpha_k = mean over positions of d logit_target / d Z_k`` for
    each channel k, and the map is ``ReLU(sum_k alpha_k A_k)`` where the feature maps
    ``A = max(Z, 0)`` when a ReLU follows the layer (the maps the rest of the network sees), else
    ``A = Z``. The map is resized bilinearly to the input size (pixel centres aligned). Returns
    float32 ``(N, H, W)``; see :func:`explain` for the arguments.
    """
    return explain(
        model,
        images,
        "gradcam",
        target,
        layer=layer,
        upsampled=upsampled,
        normalize=normalize,
        batch_size=batch_size,
    ).maps
