"""Conv2D benchmark: purenn's im2col convolution against torch and against naive loops.

For each conv layer shape of the plantvillage-cnn preset at batch 32 (3x3, padding 1), prints the
median forward and forward+backward milliseconds of purenn's Conv2D and of
``torch.nn.functional.conv2d`` with autograd, measured in this run, and the speed-up over the
naive loop convolution kept in tests/naive_conv.py. The naive loops would take minutes per
layer, so they are timed on a random sample of output positions and extrapolated linearly to
the full output (stated in each line).

    python benchmarks/bench_conv.py            # 2 threads, batch 32
    python benchmarks/bench_conv.py --quick    # small shapes, to check the script works

Both of purenn's algorithms (im2col, Winograd F(2x2, 3x3)) are timed in alternation, and the
one ``Conv2D(algorithm="auto")`` picks for the shape is compared with torch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from timing import alternating_medians, machine_header, median_seconds

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from naive_conv import naive_conv2d, naive_conv2d_backward  # noqa: E402

from purenn import Conv2D  # noqa: E402
from purenn.kernels import parallel  # noqa: E402

LAYERS = [(3, 32, 128), (32, 64, 64), (64, 128, 32), (128, 128, 16)]  # (C_in, C_out, H=W)


def median_ms(fn, repeats: int) -> float:
    return 1000 * median_seconds(fn, repeats, warmup=2)


def naive_ms(x, weight, bias, dy, sample: int, rng) -> tuple[float, float]:
    """Extrapolated naive forward and forward+backward ms from ``sample`` random outputs."""
    n, o, h, w = dy.shape
    positions = [
        tuple(int(v) for v in p)
        for p in zip(
            rng.integers(0, n, sample),
            rng.integers(0, o, sample),
            rng.integers(0, h, sample),
            rng.integers(0, w, sample),
            strict=True,
        )
    ]
    start = time.perf_counter()
    naive_conv2d(x, weight, bias, (1, 1), (1, 1, 1, 1), outputs=positions)
    forward = (time.perf_counter() - start) / sample * dy.size
    start = time.perf_counter()
    naive_conv2d_backward(x, weight, dy, (1, 1), (1, 1, 1, 1), outputs=positions)
    backward = (time.perf_counter() - start) / sample * dy.size
    return 1000 * forward, 1000 * (forward + backward)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--sample", type=int, default=300, help="naive outputs timed per layer")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    algorithms = ("im2col", "winograd")
    layers = LAYERS
    if args.quick:
        args.batch, args.repeats, args.sample = 2, 2, 20
        layers = [(c_in, c_out, h // 8) for c_in, c_out, h in LAYERS]
    threadpool_limits(args.threads)
    parallel.set_num_threads(args.threads)
    print(machine_header(), flush=True)
    rng = np.random.default_rng(0)
    cases = []
    for c_in, c_out, size in layers:
        head = (
            f"conv {c_in}->{c_out} 3x3 pad 1 on {size}x{size}, batch {args.batch}, float32, "
            f"{args.threads} threads, median of {args.repeats}"
        )
        x = rng.standard_normal((args.batch, c_in, size, size)).astype(np.float32)
        dy = rng.standard_normal((args.batch, c_out, size, size)).astype(np.float32)
        layers = {a: Conv2D(c_in, c_out, 3, padding=1, rng=0, algorithm=a) for a in algorithms}
        auto = Conv2D(c_in, c_out, 3, padding=1, algorithm="auto").algorithm_for(x.shape[1:])
        fns = {}
        for name, layer in layers.items():
            fns[(name, "forward")] = lambda layer=layer, x=x: layer.forward(x)
            fns[(name, "train")] = lambda layer=layer, x=x, dy=dy: (
                layer.forward(x),
                layer.backward(dy),
            )
        ms = {k: 1000 * v for k, v in alternating_medians(fns, args.repeats, 2).items()}
        for name in algorithms:
            print(
                f"{head}: {name:8s} forward {ms[(name, 'forward')]:8.2f} ms  forward+backward "
                f"{ms[(name, 'train')]:8.2f} ms" + ("  (auto's choice)" if name == auto else ""),
                flush=True,
            )
        layer = layers[auto]
        ours = (ms[(auto, "forward")], ms[(auto, "train")])
        slow = naive_ms(x, layer.params["weight"], layer.params["bias"], dy, args.sample, rng)
        for label, mine, naive in (
            ("forward", ours[0], slow[0]),
            ("forward+backward", ours[1], slow[1]),
        ):
            print(
                f"{head}: {label:16s} purenn {mine:9.2f} ms  naive loops {naive / 1000:9.1f} s "
                f"(extrapolated from {args.sample} outputs)  speed-up {naive / mine:9.0f}x",
                flush=True,
            )
        cases.append((head, x, layer, dy, ours))
    # torch last, so that its OpenMP threads (which spin after each call) never overlap ours.
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(args.threads)
    for head, x, layer, dy, ours in cases:
        xt = torch.from_numpy(x).requires_grad_(True)
        wt = torch.from_numpy(layer.params["weight"].copy()).requires_grad_(True)
        bt = torch.from_numpy(layer.params["bias"].copy()).requires_grad_(True)
        dyt = torch.from_numpy(dy)

        def torch_forward(xt=xt, wt=wt, bt=bt):
            with torch.no_grad():
                torch.nn.functional.conv2d(xt, wt, bt, padding=1)

        def torch_train(xt=xt, wt=wt, bt=bt, dyt=dyt):
            torch.nn.functional.conv2d(xt, wt, bt, padding=1).backward(dyt)

        theirs = (median_ms(torch_forward, args.repeats), median_ms(torch_train, args.repeats))
        for label, mine, other in (
            ("forward", ours[0], theirs[0]),
            ("forward+backward", ours[1], theirs[1]),
        ):
            print(
                f"{head}: {label:16s} purenn {mine:9.2f} ms  torch {other:9.2f} ms  "
                f"ratio (torch time / purenn time) {other / mine:5.2f}x"
            )


if __name__ == "__main__":
    main()
