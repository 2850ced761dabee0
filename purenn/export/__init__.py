"""Take a model elsewhere: ONNX graphs for onnxruntime, safetensors weights shared with PyTorch.

``export_onnx`` needs the ``onnx`` package (``pip install "purenn[export]"``), imported only when
it is called; the safetensors reader and writer are plain NumPy.
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
