"""safetensors files in plain NumPy: purenn models and PyTorch state dicts, never pickle.

The format (https://github.com/huggingface/safetensors) is::

    8 bytes     N, the header length, unsigned little-endian
    N bytes     UTF-8 JSON: {"<name>": {"dtype": "F32", "shape": [O, C, kh, kw],
                                        "data_offsets": [begin, end]}, ...,
                             "__metadata__": {"<key>": "<string>", ...}}   (optional)
    the rest    the tensors' bytes, little-endian, C order; offsets count from here

A purenn model file in this format holds the model's arrays under the names of the equivalent
``torch.nn.Sequential``'s ``state_dict()`` (weight-normalised layers under
``torch.nn.utils.parametrizations.weight_norm``'s names) and, in ``__metadata__["purenn"]``, the
JSON header of a ``.npz`` model file (format, architecture, class names, image size, mean, std).
:func:`purenn.io.load_model` reads it like an ``.npz``; ``safetensors.torch.load_file``
reads it into a torch state dict.

The reader trusts nothing in the file: the header length is bounded by the file size, the JSON
is parsed strictly (no duplicate keys, no NaN), dtypes come from a short list, every shape must
match its byte count, and the tensors must tile the data area exactly (in bounds, no gaps, no
overlaps). Anything else is a :class:`~purenn.io.ModelFileError` naming the file and
the fault; nothing in a file is ever executed.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np

from purenn.io.atomic import atomic_write
from purenn.io.header import MODEL_FORMAT, ModelFileError, model_header
from purenn.nn.network import Network

# The dtypes read and written: float tensors, and int64 for BatchNorm's num_batches_tracked in
# state dicts saved by PyTorch.
DTYPES = {
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in DTYPES.items()}
# The reference implementation refuses headers over 100 MB; so do we.
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_NDIM = 32
METADATA = "__metadata__"
PURENN_KEY = "purenn"
ENTRY_KEYS = {"dtype", "shape", "data_offsets"}

# purenn parameter suffix -> torch state-dict suffix (torch.nn.utils.parametrizations.weight_norm)
TORCH_NAMES = {
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
}
# Buffers of torch modules that purenn does not keep; accepted and ignored when loading.
IGNORED_TORCH_BUFFERS = ("num_batches_tracked",)


# -- the file format ------------------------------------------------------------------------------
def write_safetensors(
    path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors`` (and string ``metadata``) to ``path`` atomically.

    Args:
        path: destination, conventionally ``*.safetensors``.
        tensors: name -> array of a dtype in :data:`DTYPES` (float16/32/64, int64), any shape.
        metadata: string -> string, stored as the header's ``__metadata__``.

    Raises:
        ValueError: a name is not a non-empty string or is ``__metadata__``, an array has
            another dtype, or a metadata key or value is not a string.
    """
    header: dict = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("safetensors metadata must map strings to strings")
        header[METADATA] = dict(metadata)
    blobs, offset = [], 0
    for name, array in tensors.items():
        array = np.asarray(array)
        if not isinstance(name, str) or not name or name == METADATA:
            raise ValueError(f"tensor names must be non-empty strings, received: {name!r}")
        code = _CODES.get(array.dtype.newbyteorder("="))
        if code is None:
            raise ValueError(
                f"tensor {name!r} has dtype {array.dtype}; safetensors files written by purenn "
                f"hold {', '.join(str(d) for d in _CODES)}"
            )
        blob = np.ascontiguousarray(array, dtype=DTYPES[code]).tobytes()
        header[name] = {
            "dtype": code,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # pad so that the data starts 8-byte aligned

    def write(f) -> None:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)

    return atomic_write(path, write)


def _strict_object(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"duplicate key {duplicate!r}")
    return dict(pairs)


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def parse_json(text: str) -> object:
    """Strict JSON: UTF-8, no duplicate keys, no NaN or Infinity. Raises ValueError."""
    try:
        return json.loads(text, object_pairs_hook=_strict_object, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_entry(name: str, entry) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """dtype, shape and byte range of one header entry; ValueError naming the tensor."""
    if not isinstance(entry, dict) or set(entry) != ENTRY_KEYS:
        raise ValueError(f"tensor {name!r} must have exactly the keys {sorted(ENTRY_KEYS)}")
    dtype = DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise ValueError(
            f"tensor {name!r} has dtype {entry['dtype']!r}; purenn reads {', '.join(DTYPES)}"
        )
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not (isinstance(shape, list) and len(shape) <= MAX_NDIM and all(map(_is_count, shape))):
        raise ValueError(f"tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise ValueError(f"tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if end - begin != math.prod(shape) * dtype.itemsize:
        raise ValueError(
            f"tensor {name!r} of shape {tuple(shape)} and dtype {entry['dtype']} needs "
            f"{math.prod(shape) * dtype.itemsize} bytes, its data_offsets {offsets} give "
            f"{end - begin}"
        )
    return dtype, tuple(shape), begin, end


def _parse_header(raw: bytes, data_size: int) -> tuple[dict, dict[str, str]]:
    """The checked tensor entries and the metadata of a header; ValueError on any fault."""
    if not raw.startswith(b"{"):
        raise ValueError("the header is not a JSON object")
    header = parse_json(raw.decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    metadata = header.pop(METADATA, {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError(f"{METADATA} must map strings to strings")
    entries = {name: _check_entry(name, entry) for name, entry in header.items()}
    for name, (_, _, _, end) in entries.items():
        if end > data_size:
            raise ValueError(
                f"tensor {name!r} ends at byte {end}, past the data area of {data_size} bytes"
            )
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if begin != position:
            what = "overlaps the previous tensor" if begin < position else "leaves a gap before it"
            raise ValueError(f"tensor {name!r} starts at byte {begin}: it {what}")
        position = end
    if position != data_size:
        raise ValueError(f"the tensors cover {position} bytes of a data area of {data_size} bytes")
    return entries, metadata


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor and the string metadata of a safetensors file.

    Returns:
        ``(tensors, metadata)``: name -> native-byte-order array of the stored dtype and shape
        (in header order), and the ``__metadata__`` dict (empty if absent).

    Raises:
        ModelFileError: the file is missing, truncated, or its header is invalid (see the
            module docstring); the message names the file and the fault.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file does not exist: {path}")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise ModelFileError(f"not a safetensors file ({size} bytes, too short): {path}")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise ModelFileError(
                f"not a safetensors file (header length {length} exceeds the file's "
                f"{size} bytes or the {MAX_HEADER_BYTES}-byte limit): {path}"
            )
        try:
            entries, metadata = _parse_header(f.read(length), size - 8 - length)
        except (UnicodeDecodeError, ValueError) as err:
            raise ModelFileError(f"invalid safetensors header in {path}: {err}") from None
        tensors = {}
        for name, (dtype, shape, begin, end) in entries.items():
            f.seek(8 + length + begin)
            data = f.read(end - begin)
            array = np.frombuffer(data, dtype=dtype).reshape(shape)
            tensors[name] = array.astype(dtype.newbyteorder("="))
    return tensors, metadata


# -- purenn models ---------------------------------------------------------------------------------
def _rename(key: str, names: dict[str, str]) -> str:
    """``"<index>.<name>"`` with ``name`` mapped through ``names``; other keys unchanged."""
    index, dot, name = key.partition(".")
    return f"{index}.{names[name]}" if dot and name in names else key


def to_torch_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A purenn state dict under the torch ``nn.Sequential`` names (weight norm renamed)."""
    return {_rename(key, TORCH_NAMES): value for key, value in state.items()}


def from_torch_names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A torch ``nn.Sequential`` state dict under purenn's names, without ignored buffers."""
    purenn_names = {torch: ours for ours, torch in TORCH_NAMES.items()}
    return {
        _rename(key, purenn_names): value
        for key, value in state.items()
        if key.rpartition(".")[2] not in IGNORED_TORCH_BUFFERS
    }


def save_safetensors(path: str | Path, model: Network, metadata: dict) -> Path:
    """Write ``model`` as a safetensors model file (see the module docstring).

    Args:
        path: destination, conventionally ``*.safetensors``.
        model: the model; its state dict is stored under torch's names, in its dtype.
        metadata: JSON-able dict (``class_names``, ``image_size``, ``mean``, ``std``, ...), as for
            :func:`purenn.io.save_model`.
    """
    header = model_header(MODEL_FORMAT, model, metadata)
    return write_safetensors(
        path, to_torch_names(model.state_dict()), {PURENN_KEY: json.dumps(header)}
    )


def read_model_tensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The purenn-named arrays and the JSON header of a safetensors model file.

    Used by :func:`purenn.io.load_model`, which checks the header's format.

    Raises:
        ModelFileError: an invalid file, or one without purenn metadata (a bare state dict:
            see :func:`load_torch_state`).
    """
    tensors, metadata = read_safetensors(path)
    if PURENN_KEY not in metadata:
        raise ModelFileError(
            f"{path} holds tensors but no purenn metadata (no architecture): if it is a PyTorch "
            f"state dict, build the model and use purenn.io.load_torch_state(path, model)"
        )
    try:
        header = parse_json(metadata[PURENN_KEY])
    except ValueError as err:
        raise ModelFileError(f"invalid purenn metadata in {path}: {err}") from None
    return from_torch_names(tensors), header


def _module_renamer(names: dict[str, int], model: Network, path):
    """A function from a torch key ``"<module>.<rest>"`` to ``"<index>.<rest>"``, ``names``
    giving each module's layer index (the longest matching module name wins); a key of no named
    module is kept, to be reported as unexpected."""
    indices = list(names.values())
    if not all(isinstance(i, int) and 0 <= i < len(model.layers) for i in indices) or len(
        set(indices)
    ) != len(indices):
        raise ValueError(
            f"names must map torch module names to distinct layer indices in "
            f"[0, {len(model.layers)}), received: names={names!r} (loading {path})"
        )
    by_length = sorted(names, key=len, reverse=True)

    def rename(key: str) -> str:
        module = next((m for m in by_length if key.startswith(m + ".")), None)
        return key if module is None else f"{names[module]}.{key[len(module) + 1 :]}"

    return rename


def load_torch_state(
    path: str | Path, model: Network, names: dict[str, int] | None = None
) -> Network:
    """Load a PyTorch state dict saved as safetensors into ``model`` (Sequential or graph).

    ``model`` must have the torch model's architecture (same layers at the same indices, e.g.
    ``build_preset("plantvillage-cnn", num_classes=15)``). BatchNorm's ``num_batches_tracked``
    is ignored; weight-normalised layers are read from ``parametrizations.weight.original0/1``
    or the legacy ``weight_g``/``weight_v``. Float tensors are cast to the model's dtype.

    Args:
        path: a file written by ``safetensors.torch.save_file(module.state_dict(), path)``
            (or by purenn).
        model: the purenn model to fill (in place).
        names: which torch module holds each purenn layer's tensors: torch module name ->
            layer index, e.g. ``{"conv1": 0, "bn1": 1, "layer1.0.conv1": 3, ..., "fc": 38}``
            for a ResNet written as a torch ``nn.Module`` (docs/EXPORT.md has the table of
            ``plantvillage-resnet``). None: the torch model is an ``nn.Sequential`` (or a
            module whose children are named by purenn's indices), its keys ``"<index>.weight"``.

    Returns:
        ``model``, in eval mode.

    Raises:
        ModelFileError: an invalid file, or a tensor missing, unexpected, mis-shaped or not
            float; the message names the file and the tensor (under torch's name).
        ValueError: ``names`` maps to indices that are not distinct layers of ``model``.
    """
    tensors, _ = read_safetensors(path)
    rename = (lambda key: key) if names is None else _module_renamer(names, model, path)
    state = from_torch_names({rename(key): value for key, value in tensors.items()})
    torch_keys = from_torch_names({rename(key): key for key in tensors})  # for the messages
    expected = model.state_dict()
    for key, target in expected.items():
        if key not in state:
            index = int(key.partition(".")[0])
            holder = next((m for m, i in (names or {}).items() if i == index), None)
            where = "" if holder is None else f" (torch module {holder!r})"
            raise ModelFileError(
                f"{path} lacks the tensor {key!r} (shape {target.shape}) of "
                f"{model.layers[index]!r}{where}"
            )
        value = state[key]
        if value.shape != target.shape:
            raise ModelFileError(
                f"tensor {torch_keys[key]!r} in {path} has shape {value.shape}, the model "
                f"expects {target.shape}"
            )
        if value.dtype.kind != "f":
            raise ModelFileError(
                f"tensor {torch_keys[key]!r} in {path} has dtype {value.dtype}, not a float"
            )
    unexpected = sorted(torch_keys[key] for key in set(state) - set(expected))
    if unexpected:
        raise ModelFileError(
            f"{path} holds tensors the model does not have: {unexpected} (is the architecture "
            f"the same?)"
        )
    model.load_state_dict(state)
    return model.eval()
