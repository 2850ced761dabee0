"""The eval-mode fast path's two kernels for a 3x3 stride-1 layer: channels-last im2col or Winograd.

For every 3x3 stride-1 padding-1 convolution of both presets (34 classes, 128x128; the map each
layer sees, ReLU fused, pooling where the preset pools), at each batch size: the two kernels of
:mod:`purenn.kernels.channels_last` and :mod:`purenn.kernels.winograd_channels_last` timed in
turn (median of ``--repeats``), float32, ``--threads`` threads, and which one the fast path
picks (``winograd_channels_last.pays`` and ``fits``). Runs as the environment sets OpenBLAS and
with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset.

    python benchmarks/bench_fast_conv.py --batches 32 1
"""

from __future__ import annotations

import argparse

import numpy as np
from roofline import step_values
from timing import alternating_medians, cpu_model, machine_header, under_both_blas_settings

#: The convolutions both kernels compute: 3x3, stride 1, padding 1.
GEOMETRY = ((3, 3), (1, 1), (1, 1, 1, 1))


def layers(preset: str) -> list[tuple[int, int, int, bool]]:
    """(C, O, side, pooled) of the preset's 3x3 stride-1 padding-1 convolutions, as its inference
    plan runs them (pooled: a 2x2 pooling fused into the step)."""
    from purenn.nn.layers import Conv2D, MaxPool2D
    from purenn.presets import build_preset

    model = build_preset(preset, num_classes=34, image_size=128, seed=0).eval()
    plan = model.inference_plan()
    values = step_values(plan, np.zeros((1, 3, 128, 128), np.float32))
    seen = []
    for step in plan.steps:
        head = model.layers[step.layers[0]]
        if isinstance(head, Conv2D) and (head.kernel_size, head.stride, head.pads) == GEOMETRY:
            side = values[step.inputs[0]].shape[2]  # square maps: H or W in either layout
            pooled = any(type(model.layers[k]) is MaxPool2D for k in step.layers[1:])
            seen.append((head.in_channels, head.out_channels, side, pooled))
    return seen


def compare(c: int, o: int, side: int, pool: bool, batch: int, repeats: int) -> str:
    from purenn.kernels import channels_last, winograd_channels_last
    from purenn.kernels.workspace import Workspace

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, side, side, c)).astype(np.float32)
    weight = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    matrix = channels_last.weight_matrix(weight, 1, True)
    u = winograd_channels_last.filter_matrices(weight)
    im2col, winograd = Workspace(), Workspace()
    times = alternating_medians(
        {
            "im2col": lambda: channels_last.conv2d(
                x, matrix, bias, *GEOMETRY, True, pool, True, im2col
            ),
            "winograd": lambda: winograd_channels_last.conv3x3(x, u, bias, True, pool, winograd),
        },
        repeats,
        2,
    )
    picked = winograd_channels_last.pays(*GEOMETRY, 1, c, o) and winograd_channels_last.fits(
        batch, side, side
    )
    return (
        f"{c:>4} -> {o:<4} {side:>3}x{side:<3} {'yes' if pool else 'no':>6} {batch:>5} "
        f"{1000 * times['im2col']:>9.2f} {1000 * times['winograd']:>9.2f} "
        f"{times['winograd'] / times['im2col']:>6.2f}  {'winograd' if picked else 'im2col'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["plantvillage-cnn", "plantvillage-resnet"])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    if under_both_blas_settings():
        return
    from purenn.kernels.runtime import limit_threads

    print(f"Model name: {cpu_model()}")
    print(machine_header())
    print(f"{args.threads} threads, float32, median of {args.repeats} calls, kernels in turn")
    print("layer              side pooled batch im2col ms  Winograd ms  ratio  fast path")
    with limit_threads(args.threads):
        for preset in args.presets:
            print(f"# {preset}")
            for c, o, side, pool in dict.fromkeys(layers(preset)):
                for batch in args.batches:
                    print(compare(c, o, side, pool, batch, args.repeats), flush=True)


if __name__ == "__main__":
    main()
