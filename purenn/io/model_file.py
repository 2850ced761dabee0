"""Model files: the architecture, the weights and the metadata ``predict`` needs, in one file.

A model file is a purenn ``.npz`` archive (:mod:`purenn.io.archive`) or a ``.safetensors`` file
written by ``purenn export`` (:mod:`purenn.io.safetensors`), chosen by the suffix; both carry the
same JSON header (:mod:`purenn.io.header`). A run folder stands for its ``best.npz``.

An ``.npz`` model file may also hold arrays that are not weights, under names with a ``/``
(``"ood/bank"``: the statistics of the out-of-distribution test, whose scalars are in the
header): :func:`save_model` takes them as ``arrays``, :func:`load_model_arrays` reads them, and
:func:`update_model_metadata` keeps them. A ``.safetensors`` model file holds the weights only
(a torch state dict must not carry other tensors).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from purenn.io.archive import read_archive, write_archive
from purenn.io.header import (
    MODEL_FORMAT,
    ModelFileError,
    build_model,
    check_extra_arrays,
    check_header,
    header_metadata,
    model_header,
)
from purenn.io.safetensors import read_model_tensors, save_safetensors
from purenn.nn.sequential import Sequential


def _read_model_file(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and header of a ``.safetensors`` model file (by suffix) or a purenn ``.npz``."""
    if Path(path).suffix.lower() == ".safetensors":
        arrays, header = read_model_tensors(path)
        return arrays, check_header(Path(path), header)
    return read_archive(path)


# -- models --------------------------------------------------------------------------------------
BEST_FILE = "best.npz"


def model_file(path: str | Path, flag: str = "MODEL") -> Path:
    """A model file path; a run folder stands for its ``best.npz``.

    Raises:
        ModelFileError: a folder without ``best.npz`` (naming ``flag``); any other path is
        returned as it is, for the loader to report.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / BEST_FILE).is_file():
            return path / BEST_FILE
        raise ModelFileError(
            f"{flag} {path} is a folder without {BEST_FILE}; pass a model file "
            "(.npz or .safetensors) or a finished run folder"
        )
    return path


def save_model(
    path: str | Path,
    model: Sequential,
    metadata: dict,
    weights: dict[str, np.ndarray] | None = None,
    arrays: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write ``model`` (architecture and weights) and ``metadata`` to ``path`` atomically.

    Args:
        path: destination, conventionally ``*.npz``.
        model: the model; its ``state_dict()`` arrays are stored under their names.
        metadata: JSON-able dict, e.g. ``class_names``, ``image_size``, ``mean``, ``std``.
        weights: a state dict of ``model`` to store instead of its current one (e.g. the best
            weights kept by early stopping).
        arrays: other arrays to store, every name with a ``/`` (e.g. ``"ood/bank"``).
    """
    weights = model.state_dict() if weights is None else weights
    extra = check_extra_arrays(arrays or {}, "model file")
    return write_archive(path, {**weights, **extra}, model_header(MODEL_FORMAT, model, metadata))


def load_model(path: str | Path, require: tuple[str, ...] = ()) -> tuple[Sequential, dict]:
    """Read a model file (or a checkpoint, giving its latest weights).

    Args:
        path: the file: a purenn ``.npz``, or a ``.safetensors`` written by
            ``purenn export`` (chosen by the suffix).
        require: metadata keys the caller needs (e.g. ``("class_names", "image_size")``).

    Returns:
        ``(model, metadata)``: the rebuilt model in eval mode, and the JSON header (the
        ``metadata`` given to :func:`save_model` plus ``format``, ``format_version`` and
        ``architecture``).

    Raises:
        ModelFileError: the file is missing, a pickle, not an ``.npz``, lacks the purenn entry,
            has a newer format version, its arrays do not fit its architecture, or a key of
            ``require`` is missing.
    """
    arrays, header = _read_model_file(path)
    missing = [key for key in require if key not in header]
    if missing:
        raise ModelFileError(f"model file {path} lacks the metadata {missing}")
    return build_model(Path(path), arrays, header).eval(), header


def load_model_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a model file that are not weights (names with a ``/``); ``{}`` for a
    ``.safetensors`` file. Only those members of an ``.npz`` are read.

    Raises:
        ModelFileError: as :func:`load_model`.
    """
    if Path(path).suffix.lower() == ".safetensors":
        _read_model_file(path)  # checked as load_model checks it
        return {}
    return read_archive(path, members=lambda name: "/" in name)[0]


def update_model_metadata(
    path: str | Path,
    changes: dict,
    arrays: dict[str, np.ndarray] | None = None,
    prefix: str | None = None,
) -> Path:
    """Rewrite a model file atomically with ``changes`` merged into its metadata.

    The container (``.safetensors`` or ``.npz``, by the suffix) and the weights stay as they
    were; so do its other arrays, except that with ``prefix`` (e.g. ``"ood/"``) every array
    under it is replaced by ``arrays``. The file is replaced only once the new one is written.

    Args:
        path: a model file (not a checkpoint: its optimizer state would be dropped).
        changes: JSON-able metadata entries to set (e.g. ``{"temperature": 1.7}``).
        arrays: the arrays to store under ``prefix`` (every name starting with it); an
            ``.npz`` model file only.
        prefix: the arrays to replace, a name prefix ending in ``/``.

    Raises:
        ModelFileError: not a purenn model file, a checkpoint, or ``arrays`` for a
            ``.safetensors`` file. ValueError: ``arrays`` without ``prefix``, or named otherwise.
    """
    new = check_extra_arrays(arrays or {}, "model file")
    if new and (prefix is None or not all(name.startswith(prefix) for name in new)):
        raise ValueError(f"arrays must all be named {prefix!r}...; received: {sorted(new)}")
    model, header = load_model(path)
    if header["format"] != MODEL_FORMAT:
        raise ModelFileError(
            f"{path} is a checkpoint, not a model file; pass the run's {BEST_FILE} instead"
        )
    metadata = {**header_metadata(header), **changes}
    if Path(path).suffix.lower() == ".safetensors":
        if arrays:
            raise ModelFileError(
                f"{path} is a .safetensors file, which holds weights only: the arrays "
                f"{sorted(arrays)} need the .npz model file"
            )
        return save_safetensors(path, model, metadata)
    kept = load_model_arrays(path)
    if prefix is not None:
        kept = {k: v for k, v in kept.items() if not k.startswith(prefix)}
    return save_model(path, model, metadata, arrays={**kept, **new})
