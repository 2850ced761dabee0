"""Inference of an exported preset: onnxruntime against purenn's eval-mode fast path, one run.

The model (a trained model file if given, else ``--preset``'s seeded random weights: speed does
not depend on the weights) is exported to ONNX in a temporary folder. Both frameworks then
classify the same float32 [0, 1] batch, z-score included (the graph's Sub/Mul; purenn's
``normalize_batch``): purenn with ``limit_threads(T)``, onnxruntime with ``intra_op_num_threads=T``
and one inter-op thread. Each figure is the median of ``--repeats`` timed calls after
``--warmup`` untimed ones; the two frameworks alternate over ``--rounds`` rounds (the machine may
be shared), and the table gives the median over rounds of each figure and of the per-round ratio.
The whole measurement runs twice, in child processes: with OpenBLAS as the environment sets it
and with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (``timing.under_both_blas_settings``).

    python benchmarks/bench_export.py                              # plantvillage-cnn, 34 classes
    python benchmarks/bench_export.py --preset plantvillage-resnet
    python benchmarks/bench_export.py --model runs/pv-cnn/best.npz
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
from timing import cpu_model, machine_header, median_seconds, under_both_blas_settings


def load(args):
    from purenn.io import load_model
    from purenn.presets import build_preset

    if args.model:
        model, meta = load_model(args.model, require=("mean", "std", "image_size"))
        return model, meta, args.model
    model = build_preset(args.preset, num_classes=34, image_size=128, seed=0).eval()
    meta = {"image_size": 128, "mean": [0.46, 0.49, 0.41], "std": [0.18, 0.16, 0.2]}
    return model, meta, f"{args.preset} preset, 34 classes, random weights (seed 0)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a purenn model file (default: the preset, random)")
    parser.add_argument("--preset", default="plantvillage-cnn", help="without --model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if under_both_blas_settings():
        return

    import onnxruntime as ort

    from purenn.data import normalize_batch
    from purenn.export import OPSET, export_onnx
    from purenn.kernels.runtime import limit_threads

    model, meta, source = load(args)
    size = meta["image_size"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", meta)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    print(f"Model name: {cpu_model()}")
    print(machine_header())
    print(f"model: {source}; {model.num_parameters:,} parameters, input (N, 3, {size}, {size})")
    print(
        f"numpy {np.__version__}, onnxruntime {ort.__version__} (opset {OPSET}), "
        f"{args.threads} threads each, float32, median of {args.repeats} calls after "
        f"{args.warmup}, {args.rounds} alternating rounds"
    )
    print(f"{'batch':>5}  {'purenn ms':>10}  {'onnxruntime ms':>14}  {'purenn/ort':>10}  max|diff|")
    rng = np.random.default_rng(0)
    for batch in args.batches:
        x = (rng.integers(0, 256, size=(batch, 3, size, size)) / 255).astype(np.float32)

        def purenn_infer(x=x):
            return model.forward(normalize_batch(x, meta["mean"], meta["std"]), training=False)

        def ort_infer(x=x):
            return session.run(None, {"image": x})[0]

        rounds = []
        with limit_threads(args.threads):
            diff = float(np.abs(purenn_infer() - ort_infer()).max())
            for _ in range(args.rounds):
                ours = median_seconds(purenn_infer, args.repeats, args.warmup)
                rounds.append((ours, median_seconds(ort_infer, args.repeats, args.warmup)))
        ours, theirs = (statistics.median(times) for times in zip(*rounds, strict=True))
        ratio = statistics.median(a / b for a, b in rounds)
        print(
            f"{batch:>5}  {1000 * ours:>10.1f}  {1000 * theirs:>14.1f}  {ratio:>10.2f}  {diff:.1e}"
        )


if __name__ == "__main__":
    main()
