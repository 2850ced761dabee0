"""Per-step roofline of the eval-mode fast path: each fused step's time, GFLOP/s, share of sgemm.

For each preset (34 classes, 128x128, seeded random weights: speed does not depend on them) the
model's inference plan is run once to record every step's inputs; then each step is timed on its
own (median of ``--repeats`` after a warm-up) and its FLOPs (a multiply-add is 2) are those of the
layers it runs. The ceiling is measured in the same run: a 2048^3 float32 GEMM with the same
threads, NumPy's BLAS (``peak``); each step's share of it says how far from the hardware's
practical limit it runs. The whole forward is timed too (the steps' sum omits only the plan's
bookkeeping). ``GEMM ms`` is the part of a step's time spent inside its matrix products (the
products of every thread summed, over the threads): what the step would cost if NumPy's passes
around them (im2col copies, padding, pooling, bias, ReLU) were free. Everything runs twice, in
child processes: with OpenBLAS as the environment sets it and with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset.

    python benchmarks/roofline.py                    # both presets, batch 32 and 1, 2 threads
    python benchmarks/roofline.py --presets plantvillage-resnet --batches 32
"""

from __future__ import annotations

import argparse
import threading
import time
from contextlib import contextmanager

import numpy as np
from timing import cpu_model, machine_header, median_seconds, under_both_blas_settings


def sgemm_peak(repeats: int) -> float:
    """GFLOP/s of a 2048 x 2048 x 2048 float32 product with NumPy's BLAS."""
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    return 2 * 2048**3 / median_seconds(lambda: a @ a, repeats, 2) / 1e9


class TimedProducts:
    """Stands in for the ``np`` of the kernel modules: ``matmul`` timed, all else NumPy's."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()

    def matmul(self, *args, **kwargs):
        start = time.perf_counter()
        result = np.matmul(*args, **kwargs)
        elapsed = time.perf_counter() - start
        with self._lock:
            self.seconds += elapsed
        return result

    def __getattr__(self, name):
        return getattr(np, name)


def inference_modules() -> tuple:
    """The modules whose matrix products the eval-mode fast path runs."""
    from purenn.kernels import channels_last, parallel

    return channels_last, parallel


def training_modules() -> tuple:
    """The modules whose matrix products a train step runs: the banded convolution forward,
    Conv2D's backward (dW and dcol) and the dense layers' products."""
    from purenn.kernels import banded, parallel
    from purenn.nn.layers import conv

    return banded, conv, parallel


@contextmanager
def timed_products(modules: tuple):
    """Within the block, the matrix products of ``modules`` (their ``np.matmul``) are timed."""
    timer = TimedProducts()
    for module in modules:
        module.np = timer
    try:
        yield timer
    finally:
        for module in modules:
            module.np = np


def gemm_seconds(run, repeats: int, threads: int, modules: tuple | None = None) -> float:
    """Median over ``repeats`` calls of the time ``run()`` spends in the matrix products of
    ``modules`` (default: the fast path's), per thread."""
    times = []
    with timed_products(modules or inference_modules()) as timer:
        run()
        for _ in range(repeats):
            timer.seconds = 0.0
            run()
            times.append(timer.seconds / threads)
    return float(np.median(times))


def step_values(plan, x: np.ndarray) -> dict[int, np.ndarray]:
    """Every tensor of one run of the inference ``plan`` on ``x``, by index (0: x), in the
    layouts the plan keeps them in: what each step reads."""
    values = {0: x}
    for step in plan.steps:
        values[step.output] = step.run([values[i] for i in step.inputs])
    return values


def step_flops(model, step, shapes: dict) -> int:
    """FLOPs per sample of the layers fused in ``step`` (shapes: tensor index -> shape)."""
    given = [shapes[i] for i in step.inputs]
    shape = given if model.layers[step.layers[0]].merges else given[0]
    total = 0
    for k in step.layers:
        total += model.layers[k].flops(shape)
        shape = model.layers[k].output_shape(shape)
    shapes[step.output] = shape
    return total


def profile(preset: str, batch: int, repeats: int, peak: float, threads: int) -> None:
    from purenn.presets import build_preset

    model = build_preset(preset, num_classes=34, image_size=128, seed=0).eval()
    plan = model.inference_plan()
    x = np.random.default_rng(1).standard_normal((batch, 3, 128, 128)).astype(np.float32)
    values = step_values(plan, x)
    shapes = {0: tuple(model.input_shape)}
    rows, total_ms, total_flops, total_gemm_ms = [], 0.0, 0, 0.0
    for step in plan.steps:
        args = [values[i] for i in step.inputs]
        seconds = median_seconds(lambda step=step, args=args: step.run(args), repeats, 1)
        gemm_ms = 1000 * gemm_seconds(lambda step=step, args=args: step.run(args), repeats, threads)
        flops = step_flops(model, step, shapes) * batch
        names = "+".join(type(model.layers[k]).__name__ for k in step.layers)
        total_ms += 1000 * seconds
        total_gemm_ms += gemm_ms
        total_flops += flops
        rate = flops / seconds / 1e9
        rows.append((f"{step.layers[0]:>2} {names}", 1000 * seconds, gemm_ms, flops / 1e9, rate))
    whole = median_seconds(lambda: model(x), repeats, 1)
    print(
        f"\n{preset}, batch {batch}: whole forward {1000 * whole:.1f} ms (steps sum "
        f"{total_ms:.1f} ms, of which GEMMs {total_gemm_ms:.1f} ms), "
        f"{total_flops / whole / 1e9:.0f} GFLOP/s = "
        f"{100 * total_flops / whole / 1e9 / peak:.0f}% of sgemm peak"
    )
    print(
        f"{'step':<46} {'ms':>7} {'GEMM ms':>8} {'GFLOP':>7} {'GFLOP/s':>8} {'% peak':>7} "
        f"{'% time':>7}"
    )
    for name, ms, gemm_ms, gflop, rate in rows:
        print(
            f"{name:<46} {ms:>7.2f} {gemm_ms:>8.2f} {gflop:>7.3f} {rate:>8.1f} "
            f"{100 * rate / peak:>6.0f}% {100 * ms / total_ms:>6.1f}%"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["plantvillage-cnn", "plantvillage-resnet"])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if under_both_blas_settings():
        return
    from purenn.kernels.runtime import limit_threads

    print(f"Model name: {cpu_model()}")
    print(machine_header())
    with limit_threads(args.threads):
        peak = sgemm_peak(args.repeats)
        print(f"sgemm peak (2048^3 float32, {args.threads} threads): {peak:.0f} GFLOP/s")
        for preset in args.presets:
            for batch in args.batches:
                profile(preset, batch, args.repeats, peak, args.threads)


if __name__ == "__main__":
    main()
