"""How far the CNN train step is from this machine's matrix-product limit.

Measures the float32 GEMM peak through NumPy's BLAS (square matrices, ``--threads`` threads,
median GFLOP/s per size; the peak is the best size's median), then the plantvillage-cnn train
step (forward, loss, backward without the first layer's input gradient, Adam) in the same
process, and prints the step's effective GFLOP/s as a share of the peak. The step's FLOPs are
the layers' direct-convolution multiply-adds (``Layer.flops``: 2 per multiply-add, the count
``purenn summary`` prints) times 3 for forward, input gradient and weight gradient, less the
first layer's input gradient; Winograd layers do fewer real multiplications than that count.

    python benchmarks/bench_gemm.py              # 2 threads, sizes 1024 2048 4096, batch 32
"""

from __future__ import annotations

import argparse

import numpy as np
from threadpoolctl import threadpool_limits
from timing import machine_header, median_seconds


def gemm_gflops(size: int, repeats: int) -> float:
    """Median GFLOP/s of a float32 ``size`` x ``size`` matrix product (2 size^3 FLOPs)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    out = np.empty_like(a)
    seconds = median_seconds(lambda: np.matmul(a, b, out=out), repeats, warmup=2)
    return 2 * size**3 / seconds / 1e9


def train_step_flops(model, input_shape: tuple[int, ...], batch: int) -> int:
    """Forward FLOPs x 3 (forward, input and weight gradients), less layer 0's input gradient."""
    shape, forward = tuple(input_shape), []
    for layer in model.layers:
        forward.append(layer.flops(shape))
        shape = layer.output_shape(shape)
    return batch * (3 * sum(forward) - forward[0])


def cnn_step_seconds(args) -> tuple[float, int]:
    """Median seconds of the plantvillage-cnn train step, and its FLOPs."""
    import purenn as pn
    from purenn.presets import build_preset

    pn.use_fast_path(threads=args.threads)
    model = build_preset("plantvillage-cnn", image_size=args.image_size, seed=0)
    loss_fn = pn.SoftmaxCrossEntropy(label_smoothing=0.1)
    optimizer = pn.Adam(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    shape = (3, args.image_size, args.image_size)
    x = rng.standard_normal((args.batch, *shape)).astype(np.float32)
    y = rng.integers(0, 38, args.batch)

    def step():
        loss_fn(model(x, training=True), y)
        model.backward(loss_fn.backward(), input_grad=False)
        pn.clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()

    return median_seconds(step, args.repeats, warmup=2), train_step_flops(model, shape, args.batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeats, args.batch, args.image_size = [256], 2, 2, 32
    threadpool_limits(args.threads)
    print(machine_header(), flush=True)
    peak = 0.0
    for size in args.sizes:
        gflops = gemm_gflops(size, args.repeats)
        peak = max(peak, gflops)
        print(
            f"sgemm {size}x{size} float32, {args.threads} threads, median of {args.repeats}: "
            f"{gflops:7.1f} GFLOP/s",
            flush=True,
        )
    seconds, flops = cnn_step_seconds(args)
    effective = flops / seconds / 1e9
    print(
        f"plantvillage-cnn train step, batch {args.batch}, {args.threads} threads, median of "
        f"{args.repeats}: {1000 * seconds:.1f} ms, {flops / 1e9:.2f} GFLOP (direct-convolution "
        f"count) -> {effective:.1f} GFLOP/s effective = {100 * effective / peak:.0f}% of the "
        f"sgemm peak {peak:.1f} GFLOP/s"
    )


if __name__ == "__main__":
    main()
