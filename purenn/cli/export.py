"""``purenn export MODEL OUT.onnx|OUT.safetensors``: the format is chosen by OUT's suffix."""

from __future__ import annotations

import argparse
from pathlib import Path

from purenn.export.onnx import OPSET, ExportError, export_onnx
from purenn.inference.recognition import OOD_KEY
from purenn.io import load_model, model_file
from purenn.io.header import header_metadata
from purenn.io.safetensors import save_safetensors

SUFFIXES = (".onnx", ".safetensors")


def _cmd_export(args: argparse.Namespace, progress) -> int:
    """Check OUT before reading MODEL, then write OUT atomically (nothing on any error)."""
    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise ExportError(
            f"OUT must end in {' or '.join(SUFFIXES)} (the format is chosen by the suffix), "
            f"received: OUT={args.out}"
        )
    if not out.absolute().parent.is_dir():
        raise ExportError(f"the folder of OUT does not exist: {out.absolute().parent}")
    model, header = load_model(model_file(args.model))
    # The OOD test's statistics are arrays of the .npz that neither format carries: the
    # exported file has no OOD test (every image recognized), not a header without its arrays.
    metadata = {k: v for k, v in header_metadata(header).items() if k != OOD_KEY}
    if suffix == ".onnx":
        export_onnx(model, out, metadata)
        what = f"ONNX opset {OPSET}, input (batch, {', '.join(map(str, model.input_shape or ()))})"
    else:
        save_safetensors(out, model, metadata)
        what = f"safetensors, {len(model.state_dict())} tensors"
    progress.result(f"wrote {out} ({what})")
    return 0


def add_parser(commands) -> None:
    """Register ``purenn export`` on the ``commands`` subparsers of ``purenn.cli.main``."""
    p = commands.add_parser(
        "export", help="write a model as ONNX or safetensors (chosen by OUT's suffix)"
    )
    p.add_argument("model", metavar="MODEL", help="a model file (.npz or .safetensors)")
    p.add_argument(
        "out",
        metavar="OUT",
        help=f"OUT.onnx (ONNX opset {OPSET}, needs purenn[export]) or OUT.safetensors",
    )
    p.set_defaults(func=_cmd_export)
