"""Training checkpoints: a model file plus the state that makes ``--resume`` continue exactly.

A checkpoint is an ``.npz`` model archive whose header says ``"format": "purenn-checkpoint"`` and
carries a ``"state"`` entry (scalars: position, optimizer scalars, early-stopping values, metrics
so far), with extra arrays whose names contain a ``/`` (``"optim/exp_avg.0"``,
``"best/0.weight"``); its model arrays are the latest weights, so a checkpoint is also a loadable
model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from purenn.io.archive import read_archive, write_archive
from purenn.io.header import (
    CHECKPOINT_FORMAT,
    ModelFileError,
    build_model,
    check_extra_arrays,
    model_header,
)
from purenn.nn.sequential import Sequential


def save_checkpoint(
    path: str | Path,
    model: Sequential,
    metadata: dict,
    state: dict,
    state_arrays: dict[str, np.ndarray],
) -> Path:
    """Write a training checkpoint atomically.

    Args:
        path: destination, conventionally ``last.ckpt.npz``.
        model: the model being trained (its current weights are stored as a model file's are).
        metadata: as for :func:`save_model`.
        state: JSON-able training state (positions, scalars, histories).
        state_arrays: arrays of the training state; every name must contain ``/``
            (``"optim/exp_avg.0"``) so that it can never be taken for a model array.
    """
    check_extra_arrays(state_arrays, "checkpoint state")
    header = {**model_header(CHECKPOINT_FORMAT, model, metadata), "state": state}
    return write_archive(path, {**model.state_dict(), **state_arrays}, header)


def load_checkpoint(path: str | Path) -> tuple[Sequential, dict, dict, dict[str, np.ndarray]]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``(model, metadata, state, state_arrays)``; ``metadata`` is the JSON header without
        ``state``.

    Raises:
        ModelFileError: as :func:`load_model`, or the file is a model file, not a checkpoint.
    """
    arrays, header = read_archive(path)
    if header["format"] != CHECKPOINT_FORMAT or not isinstance(header.get("state"), dict):
        raise ModelFileError(f"not a purenn checkpoint (a model file?): {path}")
    model = build_model(Path(path), arrays, header)
    state = header.pop("state")
    return model, header, state, {k: v for k, v in arrays.items() if "/" in k}


def split_state(flat: dict[str, Any], prefix: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Split a flat state dict (e.g. ``optimizer.state_dict()``) into JSON scalars and arrays.

    Arrays are renamed ``"<prefix>/<key>"``; :func:`join_state` reverses this.
    """
    scalars, arrays = {}, {}
    for key, value in flat.items():
        if isinstance(value, np.ndarray):
            arrays[f"{prefix}/{key}"] = value
        else:
            scalars[key] = value.item() if isinstance(value, np.generic) else value
    return scalars, arrays


def join_state(scalars: dict, arrays: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
    """The flat state dict that :func:`split_state` split (arrays taken from ``arrays``)."""
    start = f"{prefix}/"
    return {
        **scalars,
        **{key[len(start) :]: value for key, value in arrays.items() if key.startswith(start)},
    }
