"""Files users keep: atomic writes, model files and training checkpoints (``.npz``, never pickle).

A model file is an uncompressed ``.npz`` archive holding the model's arrays under their state-dict
names (``"0.weight"``, ``"3.running_mean"``) plus one entry ``__purenn__``: UTF-8 JSON bytes stored
as a uint8 array::

    {"format": "purenn-model", "format_version": 1,
     "architecture": Sequential.get_config(), "class_names": [...], "image_size": 128,
     "mean": [r, g, b], "std": [r, g, b], ...}                       (any JSON-able metadata)

:func:`load_model` also reads a ``.safetensors`` model file (same arrays and JSON header; see
:mod:`purenn.export.safetensors`).

A checkpoint is the same with ``"format": "purenn-checkpoint"``, a ``"state"`` entry in the JSON
(scalars: position, optimizer scalars, early-stopping values, metrics so far) and extra arrays whose
names contain a ``/`` (``"optim/exp_avg.0"``, ``"best/0.weight"``); its model arrays are the latest
weights, so a checkpoint is also a loadable model. Files are read with ``allow_pickle=False``, and a
pickle is recognised by its first byte and refused before anything is unpickled.

Every file the project writes goes through :func:`atomic_write`: the bytes go to a temporary file in
the destination folder, which is flushed, fsynced and renamed over the destination, so a crash at
any moment leaves either the old file or the new one, never a partial file under the real name.
"""

from __future__ import annotations

import json
import os
import secrets
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from purenn.model import Sequential

MODEL_FORMAT = "purenn-model"
CHECKPOINT_FORMAT = "purenn-checkpoint"
FORMAT_VERSION = 1
META_KEY = "__purenn__"
TMP_SUFFIX = ".tmp"

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_2_PLUS = 0x80


class ModelFileError(ValueError):
    """A file that is missing, not a purenn model/checkpoint, or damaged; the message names it."""


def atomic_write(path: str | Path, content: bytes | str | Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` so that it is never seen half-written.

    The content goes to ``.<name>.<pid>.<random>.tmp`` in the same folder, is flushed and fsynced,
    and the temporary file is renamed over ``path`` (atomic on POSIX and Windows); the folder is
    then fsynced so the rename survives a power cut. On any error the temporary file is removed
    and ``path`` keeps its previous content.

    Args:
        path: destination file; its folder must exist.
        content: bytes, text (written as UTF-8), or a function that writes to a binary file object.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        with open(tmp, "xb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":  # folders cannot be opened for fsync on Windows
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | Path) -> None:
    """Delete temporary files left in ``folder`` by writers killed before their rename."""
    for tmp in Path(folder).glob(f".*{TMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)


# -- archives ------------------------------------------------------------------------------------
def _write_archive(path: str | Path, arrays: dict[str, np.ndarray], header: dict) -> Path:
    meta = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    return atomic_write(path, lambda f: np.savez(f, **arrays, **{META_KEY: meta}))


def _read_archive(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and the JSON header of a purenn ``.npz``; refuses anything else unread."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file does not exist: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:1] == bytes([_PICKLE_PROTOCOL_2_PLUS]):
        raise ModelFileError(f"refusing to load {path}: it is a Python pickle, not a purenn model")
    if magic != _ZIP_MAGIC:
        raise ModelFileError(f"not a purenn model file (not an .npz archive): {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if META_KEY not in archive.files:
                raise ModelFileError(f"not a purenn model file (no {META_KEY} entry): {path}")
            # Members that are not .npy files load as bytes: the archive was not written by us.
            arrays = {key: archive[key] for key in archive.files}
            if not all(isinstance(value, np.ndarray) for value in arrays.values()):
                raise ValueError("an entry is not a NumPy array")
            header = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except ModelFileError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ModelFileError(f"damaged model file {path}: {err}") from None
    return arrays, _check_header(path, header)


def _check_header(path: Path, header: object) -> dict:
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


def _read_model_file(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and header of a ``.safetensors`` model file (by suffix) or a purenn ``.npz``."""
    if Path(path).suffix.lower() == ".safetensors":
        # Imported here, not at the top: purenn.export is built on this module.
        from purenn.export.safetensors import read_model_tensors

        arrays, header = read_model_tensors(path)
        return arrays, _check_header(Path(path), header)
    return _read_archive(path)


def _build_model(path: Path, arrays: dict[str, np.ndarray], header: dict) -> Sequential:
    try:
        model = Sequential.from_config(header["architecture"])
        model.load_state_dict({k: v for k, v in arrays.items() if "/" not in k})
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"damaged model file {path}: {err}") from None
    return model


def model_header(fmt: str, model: Sequential, metadata: dict) -> dict:
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
) -> Path:
    """Write ``model`` (architecture and weights) and ``metadata`` to ``path`` atomically.

    Args:
        path: destination, conventionally ``*.npz``.
        model: the model; its ``state_dict()`` arrays are stored under their names.
        metadata: JSON-able dict, e.g. ``class_names``, ``image_size``, ``mean``, ``std``.
        weights: a state dict of ``model`` to store instead of its current one (e.g. the best
            weights kept by early stopping).
    """
    weights = model.state_dict() if weights is None else weights
    return _write_archive(path, weights, model_header(MODEL_FORMAT, model, metadata))


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
    return _build_model(Path(path), arrays, header).eval(), header


# -- checkpoints ---------------------------------------------------------------------------------
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
    bad = [key for key in state_arrays if "/" not in key]
    if bad:
        raise ValueError(f"checkpoint state array names must contain '/', received: {bad}")
    header = {**model_header(CHECKPOINT_FORMAT, model, metadata), "state": state}
    return _write_archive(path, {**model.state_dict(), **state_arrays}, header)


def load_checkpoint(path: str | Path) -> tuple[Sequential, dict, dict, dict[str, np.ndarray]]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``(model, metadata, state, state_arrays)``; ``metadata`` is the JSON header without
        ``state``.

    Raises:
        ModelFileError: as :func:`load_model`, or the file is a model file, not a checkpoint.
    """
    arrays, header = _read_archive(path)
    if header["format"] != CHECKPOINT_FORMAT or not isinstance(header.get("state"), dict):
        raise ModelFileError(f"not a purenn checkpoint (a model file?): {path}")
    model = _build_model(Path(path), arrays, header)
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
