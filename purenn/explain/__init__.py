"""Explanations of a model's decisions: saliency, SmoothGrad and Grad-CAM, and their overlays.

Everything is computed with the model's own hand-written backward pass; the model is left exactly
as it was. Typical use::

    model, meta = load_model("best.npz")
    x = normalize_batch(uint8_images, meta["mean"], meta["std"])
    heat = grad_cam(model, x)                  # float32 (N, H, W) in [0, 1]
    write_png("leaf.png", render(photo_hwc, heat[0], caption="Tomato late blight 87%"))
"""

from purenn.explain.methods import (
    METHODS,
    ExplainError,
    Explanation,
    explain,
    grad_cam,
    saliency,
)
from purenn.explain.overlay import overlay, png_bytes, render, write_png
from purenn.explain.photo import PhotoExplanation, class_index, explain_photo

__all__ = [
    "METHODS",
    "ExplainError",
    "Explanation",
    "PhotoExplanation",
    "class_index",
    "explain",
    "explain_photo",
    "grad_cam",
    "overlay",
    "png_bytes",
    "render",
    "saliency",
    "write_png",
]
