"""The JSON header every purenn model file and checkpoint carries, whatever its container.

::

    {"format": "purenn-model", "format_version": 1,
     "architecture": model.get_config(), "class_names": [...], "image_size": 128,
     "mean": [r, g, b], "std": [r, g, b], ...}                       (any JSON-able metadata)

A checkpoint has ``"format": "purenn-checkpoint"`` and a ``"state"`` entry. The ``.npz`` archive
(:mod:`purenn.io.archive`) and the safetensors file (:mod:`purenn.io.safetensors`) both store this
header and the model's arrays; this module checks the header and rebuilds the model from both.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from purenn.nn.graph import Model
from purenn.nn.network import Network
from purenn.nn.sequential import Sequential

MODEL_FORMAT = "purenn-model"
CHECKPOINT_FORMAT = "purenn-checkpoint"
FORMAT_VERSION = 1
# Header entries that describe the file, not the model (a checkpoint's "state" stays behind).
FILE_KEYS = ("format", "format_version", "architecture", "state")


class ModelFileError(ValueError):
    """A file that is missing, not a purenn model/checkpoint, or damaged; the message names it."""


def check_header(path: Path, header: object) -> dict:
    """``header`` if it is a purenn model or checkpoint header this version reads."""
    if not isinstance(header, dict) or header.get("format") not in (
        MODEL_FORMAT,
        CHECKPOINT_FORMAT,
    ):
        raise ModelFileError(f"not a purenn model file (unknown format): {path}")
    if not isinstance(header.get("format_version"), int) or header["format_version"] > (
        FORMAT_VERSION
    ):
        raise ModelFileError(
            f"{path} has format_version {header.get('format_version')!r}; this purenn reads "
            f"versions up to {FORMAT_VERSION} (upgrade purenn)"
        )
    return header


def build_model(path: Path, arrays: dict[str, np.ndarray], header: dict) -> Network:
    """The model the header's architecture describes (a graph has "nodes", a stack "layers")."""
    try:
        architecture = header["architecture"]
        kind = Model if "nodes" in architecture else Sequential
        model = kind.from_config(architecture)
        model.load_state_dict({k: v for k, v in arrays.items() if "/" not in k})
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"damaged model file {path}: {err}") from None
    return model


def check_extra_arrays(arrays: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """``arrays`` if every name contains ``/`` (``"optim/exp_avg.0"``, ``"ood/bank"``), so that
    it can never be taken for a model array; ValueError naming ``what`` otherwise."""
    bad = [key for key in arrays if "/" not in key]
    if bad:
        raise ValueError(f"{what} array names must contain '/', received: {bad}")
    return arrays


def header_metadata(header: dict) -> dict:
    """A header's metadata: what :func:`model_header` was given, the file's entries left out."""
    return {key: value for key, value in header.items() if key not in FILE_KEYS}


def model_header(fmt: str, model: Network, metadata: dict) -> dict:
    """The JSON header of a model file or checkpoint: format, version, architecture, metadata."""
    reserved = {"format", "format_version", "architecture", "state"} & set(metadata)
    if reserved:
        raise ValueError(f"metadata must not use the reserved keys {sorted(reserved)}")
    return {
        "format": fmt,
        "format_version": FORMAT_VERSION,
        "architecture": model.get_config(),
        **metadata,
    }
