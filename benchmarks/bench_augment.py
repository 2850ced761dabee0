"""Cost of the augmentations: ``apply`` on one batch, per field piece, all together, standard.

Times each augmentation on a batch of ``--batch`` random ``--image-size`` float32 images (the
median of ``--repeats`` calls, a new rng state each), with BLAS limited to ``--threads`` as in
`purenn train`. With ``--step``, also a preset's training step (``--preset``; forward, loss,
backward, clipping, Adam) on batches from prefetching DataLoaders without augmentation, with
the standard one, with the field one (factor 2) and with the standard one plus every
sample's background replaced (``--replace-background 1``), taken in turn a few steps at a time
by one model (``interleaved_steps``): the step time includes the contention of the loader's
thread, which must also keep up with the step. Each step's ratio to the standard one is taken
within each round, and its median over the rounds is the figure to quote. Runs twice: with
the environment's OpenBLAS variables and with them unset (``timing.under_both_blas_settings``).

    python benchmarks/bench_augment.py --step
    python benchmarks/bench_augment.py --step --preset plantvillage-resnet --rounds 30
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits
from timing import machine_header, under_both_blas_settings

from purenn.data import Augmentation, DataLoader, FieldAugmentation
from purenn.training.pipeline import make_backdrop


def median_ms(augmentation, batch: np.ndarray, repeats: int) -> float:
    times = []
    for r in range(repeats):
        x = batch.copy()
        start = time.perf_counter()
        augmentation.apply(x, np.random.default_rng(r))
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def interleaved_steps(
    recipes: dict, preset: str, threads: int, rounds: int, steps: int, batch: int, size: int
) -> dict[str, list[float]]:
    """Per round and recipe, the median ms of ``steps`` training steps of ``preset``.

    One model trains on batches from one endless prefetching DataLoader per recipe (an
    ``(augmentation, backdrop)`` pair, either None); the rounds take the loaders in turn, a
    few steps each, so that the machine's drift hits all alike. Each turn's first step is not
    timed: the loader used before it may still be preparing its next batch. During a step the
    loader prepares the next batch in its thread, so the step's time includes that
    contention.
    """
    from purenn.kernels import parallel
    from purenn.nn.losses import SoftmaxCrossEntropy
    from purenn.optim.optimizers import Adam, clip_grad_norm
    from purenn.presets import build_preset

    parallel.set_num_threads(threads)
    model = build_preset(preset, image_size=size, seed=0)
    params = model.parameters()
    optimizer, loss_fn = Adam(params, lr=1e-4), SoftmaxCrossEntropy(label_smoothing=0.1)
    streams = {name: endless_batches(*recipe, batch, size) for name, recipe in recipes.items()}
    times: dict[str, list[float]] = {name: [] for name in recipes}
    for _ in range(rounds):
        for name, stream in streams.items():
            turn = []
            for _ in range(steps + 1):
                x, y = next(stream)
                start = time.perf_counter()
                loss_fn.forward(model.forward(x, training=True), y % 38)
                model.backward(loss_fn.backward(), input_grad=False)
                clip_grad_norm(params, 1.0)
                optimizer.step()
                turn.append(time.perf_counter() - start)
            times[name].append(1000 * statistics.median(turn[1:]))
    return times


def endless_batches(augmentation, backdrop, batch: int, size: int):
    """Training batches of 512 random uint8 images, augmented x2 (and ``backdrop`` on every
    sample) in the prefetch thread."""
    images = np.random.default_rng(1).integers(0, 256, (512, 3, size, size), dtype=np.uint8)
    loader = DataLoader(
        images, np.arange(512), np.arange(512), batch, shuffle=True,
        augmentation=augmentation, augment_factor=2 if augmentation else 1, backdrop=backdrop,
    )  # fmt: skip
    return (pair for epoch in itertools.count() for pair in loader.epoch(epoch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--step", action="store_true", help="also time the training step")
    parser.add_argument("--steps", type=int, default=3, help="--step: timed steps per turn")
    parser.add_argument("--preset", default="plantvillage-cnn", help="the model of --step")
    parser.add_argument("--rounds", type=int, default=10, help="--step: turns of each loader")
    args = parser.parse_args()
    if under_both_blas_settings():
        return
    print(machine_header(), flush=True)
    threadpool_limits(args.threads)
    size = args.image_size
    batch = np.random.default_rng(0).random((args.batch, 3, size, size), dtype=np.float32)
    rows = [("standard (today's default)", Augmentation())]
    for piece in FieldAugmentation.PIECES:
        rows.append((f"field: {piece} only", FieldAugmentation.only(piece)))
    rows += [("field: all pieces", FieldAugmentation())]
    print(f"apply on {args.batch} x 3 x {size} x {size} float32, median of {args.repeats}")
    for name, augmentation in rows:
        print(f"  {name:40s} {median_ms(augmentation, batch, args.repeats):8.1f} ms")
    if args.step:
        print(
            f"{args.preset} train step, batch {args.batch}, per round the median of {args.steps}:"
        )
        recipes = {
            "no augmentation": (None, None), "standard x2": (Augmentation(), None),
            "field x2": (FieldAugmentation(), None),
            "standard x2, backgrounds": (Augmentation(), make_backdrop(1.0)),
        }  # fmt: skip
        times = interleaved_steps(
            recipes, args.preset, args.threads, args.rounds, args.steps, args.batch, size
        )
        for name, measured in times.items():
            rounds = " ".join(f"{t:7.1f}" for t in measured)
            print(f"  {name:40s} {rounds}  median {statistics.median(measured):7.1f} ms")
        # The machine's speed drifts between rounds; within a round the loaders ran back to back.
        for name in ("field x2", "standard x2, backgrounds"):
            ratios = [a / b for a, b in zip(times[name], times["standard x2"], strict=True)]
            rounds = " ".join(f"{r:7.3f}" for r in ratios)
            label = f"{name} / standard x2"
            print(f"  {label:40s} {rounds}  median {statistics.median(ratios):7.3f}")


if __name__ == "__main__":
    main()
