"""Answering with a trained model: probabilities from images, and ``predict`` over image files.

Modules: ``probabilities`` (normalise as training did, forward in eval mode, softmax of the
logits divided by the model's temperature, top classes), ``calibration`` (fitting that
temperature; expected calibration error, reliability bins), ``ood`` (out-of-distribution
scores: maximum softmax, maximum logit, energy, Mahalanobis; AUROC, FPR at 95% TPR; not yet
used by any command), ``tta`` (test-time augmentation: the views, flips and right-angle turns,
and the mean of their calibrated probabilities), ``prediction`` (``purenn predict``: files in,
ranked classes out).
Predict, explain, serve and export share this floor and never import the fit loop.
"""

from purenn.inference.prediction import format_predictions, predict
from purenn.inference.probabilities import INFERENCE_KEYS, class_probabilities, top_classes

__all__ = ["INFERENCE_KEYS", "class_probabilities", "format_predictions", "predict", "top_classes"]
