"""Every file format purenn reads and writes: model files, checkpoints, safetensors; atomic writes.

Modules, lowest first: ``atomic`` (write-then-rename), ``header`` (the JSON header every model
file carries), ``archive`` (the ``.npz`` container), ``safetensors`` (the safetensors container
and PyTorch's tensor names), ``model_file`` (save and load a model in either container),
``checkpoint`` (a model file plus training state). No file is ever unpickled.
"""

from purenn.io.atomic import atomic_write, remove_stale_temporaries
from purenn.io.checkpoint import join_state, load_checkpoint, save_checkpoint, split_state
from purenn.io.header import CHECKPOINT_FORMAT, FORMAT_VERSION, MODEL_FORMAT, ModelFileError
from purenn.io.model_file import (
    BEST_FILE,
    load_model,
    load_model_arrays,
    model_file,
    save_model,
    update_model_metadata,
)
from purenn.io.safetensors import (
    load_torch_state,
    read_safetensors,
    save_safetensors,
    write_safetensors,
)

__all__ = [
    "BEST_FILE",
    "CHECKPOINT_FORMAT",
    "FORMAT_VERSION",
    "MODEL_FORMAT",
    "ModelFileError",
    "atomic_write",
    "join_state",
    "load_checkpoint",
    "load_model",
    "load_model_arrays",
    "load_torch_state",
    "model_file",
    "read_safetensors",
    "remove_stale_temporaries",
    "save_checkpoint",
    "save_model",
    "update_model_metadata",
    "save_safetensors",
    "split_state",
    "write_safetensors",
]
