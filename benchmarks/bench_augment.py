"""Cost of the augmentations: ``apply`` on one batch, per field piece, all together, standard.

Times each augmentation on a batch of ``--batch`` random ``--image-size`` float32 images (the
median of ``--repeats`` calls, a new rng state each), with BLAS limited to ``--threads`` as in
`purenn train`. With ``--step``, also the plantvillage-cnn training step at the same batch
(forward, loss, backward, clipping, Adam), which the loader's background thread must keep up with.

    python benchmarks/bench_augment.py --step
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from purenn.data import Augmentation, FieldAugmentation


def median_ms(augmentation, batch: np.ndarray, repeats: int) -> float:
    times = []
    for r in range(repeats):
        x = batch.copy()
        start = time.perf_counter()
        augmentation.apply(x, np.random.default_rng(r))
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def step_ms(batch: np.ndarray, threads: int, repeats: int) -> float:
    from purenn.kernels import parallel
    from purenn.nn.losses import SoftmaxCrossEntropy
    from purenn.optim.optimizers import Adam, clip_grad_norm
    from purenn.presets import build_preset

    parallel.set_num_threads(threads)
    model = build_preset("plantvillage-cnn", image_size=batch.shape[2], seed=0)
    params = model.parameters()
    optimizer, loss_fn = Adam(params, lr=1e-4), SoftmaxCrossEntropy(label_smoothing=0.1)
    x, y = (batch - 0.5) / 0.25, np.arange(len(batch)) % 38
    times = []
    for r in range(repeats + 1):
        start = time.perf_counter()
        loss_fn.forward(model.forward(x, training=True), y)
        model.backward(loss_fn.backward(), input_grad=False)
        clip_grad_norm(params, 1.0)
        optimizer.step()
        if r:  # the first step warms up
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--step", action="store_true", help="also time the training step")
    args = parser.parse_args()
    threadpool_limits(args.threads)
    size = args.image_size
    batch = np.random.default_rng(0).random((args.batch, 3, size, size), dtype=np.float32)
    rows = [("standard (today's default)", Augmentation())]
    for piece in FieldAugmentation.PIECES:
        rows.append((f"field: {piece} only", FieldAugmentation.only(piece)))
    rows += [("field: all pieces", FieldAugmentation())]
    print(f"apply on {args.batch} x 3 x {size} x {size} float32, median of {args.repeats}")
    for name, augmentation in rows:
        print(f"  {name:28s} {median_ms(augmentation, batch, args.repeats):8.1f} ms")
    if args.step:
        print(f"  plantvillage-cnn train step {step_ms(batch, args.threads, 3):8.1f} ms")


if __name__ == "__main__":
    main()
