"""The ``.npz`` container of model files and checkpoints (uncompressed, never pickle).

The archive holds the model's arrays under their state-dict names (``"0.weight"``,
``"3.running_mean"``) plus one entry ``__purenn__``: the JSON header (:mod:`purenn.io.header`) as
UTF-8 bytes in a uint8 array. It is read with ``allow_pickle=False``, and a pickle is recognised
by its first byte and refused before anything is unpickled.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from purenn.io.atomic import atomic_write
from purenn.io.header import ModelFileError, check_header

META_KEY = "__purenn__"

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_2_PLUS = 0x80


def write_archive(path: str | Path, arrays: dict[str, np.ndarray], header: dict) -> Path:
    meta = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    return atomic_write(path, lambda f: np.savez(f, **arrays, **{META_KEY: meta}))


def read_archive(
    path: str | Path, members: Callable[[str], bool] | None = None
) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and the JSON header of a purenn ``.npz``; refuses anything else unread.

    ``members``: read only the arrays whose name it accepts (default: all).
    """
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
            wanted = [k for k in archive.files if k == META_KEY or members is None or members(k)]
            arrays = {key: archive[key] for key in wanted}
            if not all(isinstance(value, np.ndarray) for value in arrays.values()):
                raise ValueError("an entry is not a NumPy array")
            header = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except ModelFileError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ModelFileError(f"damaged model file {path}: {err}") from None
    return arrays, check_header(path, header)
