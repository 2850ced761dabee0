"""BatchNorm2D's training forward and backward at plantvillage-resnet's shapes (batch 32, 128x128).

For each of the four map sizes (32x64x64, 64x32x32, 128x16x16, 256x8x8) the fastest of
``--repeats`` forward and backward passes, then the sum over the preset's 12 BatchNorm layers
(4, 3, 3 and 2 + 1 of each size). The fastest, not the median: on a shared machine it is the
figure least disturbed by the other processes. Run it on two commits to compare them:

    python benchmarks/bench_batchnorm.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits
from timing import machine_header

from purenn.kernels import parallel
from purenn.nn.layers import BatchNorm2D

#: (channels, map side, layers of plantvillage-resnet with that shape)
SHAPES = ((32, 64, 1), (32, 32, 2), (64, 16, 3), (128, 8, 3), (256, 4, 3))


def fastest(layer: BatchNorm2D, x: np.ndarray, dy: np.ndarray, repeats: int) -> tuple:
    forward = backward = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        layer.forward(x, training=True)
        middle = time.perf_counter()
        layer.backward(dy)
        forward = min(forward, middle - start)
        backward = min(backward, time.perf_counter() - middle)
    return forward, backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    threadpool_limits(args.threads)
    parallel.set_num_threads(args.threads)
    print(machine_header())
    rng = np.random.default_rng(0)
    total_forward = total_backward = 0.0
    for channels, side, count in SHAPES:
        x = rng.standard_normal((args.batch, channels, side, side)).astype(np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        forward, backward = fastest(BatchNorm2D(channels), x, dy, args.repeats)
        total_forward += count * forward
        total_backward += count * backward
        print(
            f"BatchNorm2D {args.batch}x{channels}x{side}x{side}, {args.threads} threads: "
            f"forward {1e3 * forward:6.2f} ms  backward {1e3 * backward:6.2f} ms"
        )
    print(
        f"plantvillage-resnet's 12 BatchNorm2D layers: forward {1e3 * total_forward:6.1f} ms  "
        f"backward {1e3 * total_backward:6.1f} ms"
    )


if __name__ == "__main__":
    main()
