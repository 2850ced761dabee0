"""Test-time augmentation: a model's answer averaged over flipped and turned copies of an image.

The views are the eight symmetries of the square (the dihedral group D4), in this order::

    1 identity   2 hflip (mirror left-right)   3 vflip (mirror top-bottom)   4 rot180
    5 rot90 (a quarter turn counter-clockwise)   6 rot270   7 transpose   8 anti-transpose

``views=N`` uses the first N: 1 is the plain image, 2 adds the left-right mirror, 4 are all the
flips (a group: every flip of a flip is among them), 8 all flips and right-angle turns (what
``Augmentation`` trains with: left-right mirror and quarter turns generate the group). The
answer is the mean over the views of the calibrated probabilities ``softmax(logits / T)``.

Cost: N forward passes of the batch, one view at a time, so time grows N-fold and memory not
at all (docs/RESULTS.md gives the measured times).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from purenn.checks import is_int, require
from purenn.kernels.ops import log_softmax

VIEWS = (
    "identity",
    "hflip",
    "vflip",
    "rot180",
    "rot90",
    "rot270",
    "transpose",
    "anti-transpose",
)
MAX_VIEWS = len(VIEWS)


def check_views(views: object, name: str = "tta") -> int:
    """``views`` if it is an int in [1, 8]; ValueError naming ``name`` and the views otherwise."""
    require(
        is_int(views) and 1 <= views <= MAX_VIEWS,
        name,
        f"a number of views from 1 to {MAX_VIEWS} (in order: {', '.join(VIEWS)})",
        views,
    )
    return int(views)


def view(x: np.ndarray, index: int) -> np.ndarray:
    """View ``index`` (0-based, in the order of ``VIEWS``) of images ``(..., H, W)``.

    Any dtype; flips and turns act on the last two axes, so they commute with a per-channel
    normalisation. Views 4-7 (turns, transposes) need H == W. The result shares memory with
    ``x`` where NumPy allows (a strided view, not a copy).
    """
    if index >= 4 and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"the {VIEWS[index]} view needs square images, received: shape {x.shape}")
    flipped = (x, x[..., ::-1], x[..., ::-1, :], x[..., ::-1, ::-1])
    if index < 4:
        return flipped[index]
    # rot90 = transpose then vflip; rot270 = transpose then hflip; anti-transpose = rot180 of it.
    t = np.swapaxes(x, -1, -2)
    return (t[..., ::-1, :], t[..., ::-1], t, t[..., ::-1, ::-1])[index - 4]


def tta_logits(
    forward: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    temperature: float = 1.0,
    views: int = 1,
    first: np.ndarray | None = None,
) -> np.ndarray:
    """Logits whose softmax at ``temperature`` is the mean of the views' calibrated probabilities.

    With ``views == 1`` this is ``forward(x)`` itself (no copy, no rounding), so callers that
    divide by the temperature and take the softmax get exactly what they got without TTA.
    With more views it is ``T * log(mean_v softmax(forward(view_v(x)) / T))``, computed as a
    log-sum-exp of the views' log-softmaxes in float64 (finite even where a probability
    underflows): dividing it by ``T`` gives the log of the averaged probabilities.

    Args:
        forward: ``(B, C, S, S)`` -> logits ``(B, K)`` (a model's eval-mode forward).
        x: images ``(B, C, S, S)`` as ``forward`` takes them (normalised floats, any order of
            normalisation and view: they commute).
        temperature: T > 0 (the model file's calibration temperature).
        views: how many views of ``VIEWS`` to average, 1 to 8.
        first: ``forward(x)`` when the caller has it already (the identity view's logits).

    Returns:
        ``(B, K)``: ``forward``'s dtype for one view, float64 otherwise.
    """
    views = check_views(views)
    first = forward(x) if first is None else first
    if views == 1:
        return first
    # (V, B, K) log-probabilities of the views, one forward pass each.
    outputs = [first] + [forward(np.ascontiguousarray(view(x, v))) for v in range(1, views)]
    log_probs = np.stack(
        [log_softmax(np.asarray(out, np.float64) / temperature, axis=1) for out in outputs]
    )
    # log mean_v p_v = m + log sum_v exp(log p_v - m) - log V, m = max_v log p_v.
    top = log_probs.max(axis=0)
    log_mean = top + np.log(np.exp(log_probs - top).sum(axis=0)) - np.log(views)
    return temperature * log_mean
