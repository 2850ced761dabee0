"""Take a model elsewhere: ONNX graphs for onnxruntime, safetensors weights shared with PyTorch.

``export_onnx`` needs the ``onnx`` package (``pip install "purenn[export]"``), imported only when
it is called. The safetensors reader and writer are plain NumPy and live in :mod:`purenn.io` with
the other file formats; they are re-exported here beside the ONNX exporter.
"""

from purenn.export.onnx import OPSET, ExportError, build_onnx, export_onnx
from purenn.io.safetensors import (
    load_torch_state,
    read_safetensors,
    save_safetensors,
    write_safetensors,
)

__all__ = [
    "OPSET",
    "ExportError",
    "build_onnx",
    "export_onnx",
    "load_torch_state",
    "read_safetensors",
    "save_safetensors",
    "write_safetensors",
]
