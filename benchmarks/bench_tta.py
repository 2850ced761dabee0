"""Cost of test-time augmentation: ``class_probabilities`` of one batch at 1, 2, 4 and 8 views.

The plantvillage-cnn preset (random weights: the time does not depend on them) at
``--image-size``, 34 classes, in eval mode, with BLAS limited to ``--threads``. Each view is one
more forward pass of the batch, so the expected ratio to one view is N; what the views add
besides (the flipped copies, the log-sum-exp) shows as the ratio's excess over N.

    python benchmarks/bench_tta.py
"""

from __future__ import annotations

import argparse

import numpy as np
from threadpoolctl import threadpool_limits
from timing import alternating_medians, machine_header

from purenn.inference.probabilities import class_probabilities
from purenn.kernels import parallel
from purenn.presets import build_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="images per call")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--views", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    print(machine_header(), flush=True)
    threadpool_limits(args.threads)
    parallel.set_num_threads(args.threads)
    size = args.image_size
    model = build_preset("plantvillage-cnn", num_classes=34, image_size=size, seed=0).eval()
    meta = {"mean": [0.5] * 3, "std": [0.25] * 3, "temperature": 1.2}
    images = np.random.default_rng(0).integers(0, 256, (args.batch, 3, size, size), np.uint8)
    medians = alternating_medians(
        {n: (lambda n=n: class_probabilities(model, images, meta, n)) for n in args.views},
        args.repeats,
        warmup=1,
    )
    first = args.views[0]
    print(
        f"plantvillage-cnn at {size}x{size}, batch {args.batch}, {args.threads} threads, "
        f"median of {args.repeats} (views timed in turn)"
    )
    print(f"views  ms/batch  ms/image  ratio to {first} view(s)")
    for n, seconds in medians.items():
        print(
            f"{n:5d}  {1000 * seconds:8.1f}  {1000 * seconds / args.batch:8.2f}  "
            f"{seconds / medians[first]:6.2f}"
        )


if __name__ == "__main__":
    main()
