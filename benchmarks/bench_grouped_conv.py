"""Grouped and depthwise Conv2D against the dense one and torch's, and depthwise alternatives.

For C -> C 3x3 padding-1 convolutions at plantvillage-resnet's map sizes (batch 32, float32),
with groups 1 (dense), 4 and C (depthwise), prints the median forward+backward milliseconds of
purenn's Conv2D (grouped im2col and one batched matmul over the groups) and of
``torch.nn.functional.conv2d`` with autograd, at 1 and 2 threads, as a Markdown table, and each
one's time against its dense convolution of the same shape (which has G times the FLOPs).

For the depthwise layers it also times the alternatives the choice was made against, all in
NumPy at 1 thread: the same im2col scheme with NumPy's matmul for the outer product
``W^T dy`` (what purenn did before, an inner dimension of 1), depthwise as kh*kw shifted
multiply-adds (one per kernel offset, a sample at a time), and ``as_strided`` windows
(``sliding_window_view``) contracted by ``einsum``.

    python benchmarks/bench_grouped_conv.py            # batch 32
    python benchmarks/bench_grouped_conv.py --quick    # small shapes, to check the script works
"""

from __future__ import annotations

import argparse

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from threadpoolctl import threadpool_limits
from timing import alternating_medians, machine_header

from purenn import Conv2D
from purenn.kernels import parallel
from purenn.kernels.ops import _offset_windows
from purenn.nn.layers import conv as conv_module

SHAPES = [(32, 32), (64, 16), (128, 8), (256, 4)]  # (C, H = W)
PADS = (1, 1, 1, 1)


# -- the depthwise alternatives (stride 1, padding 1, no bias), forward and backward ----------
def shifted_forward(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """y[c] = sum over the 9 offsets of w[c, i, j] * (x[c] shifted by (i, j)), by sample."""
    n, c = x.shape[:2]
    windows = list(_offset_windows(x.shape, (3, 3), (1, 1), PADS))
    y = np.zeros_like(x)
    scratch = np.empty(x.shape[1:], dtype=x.dtype)
    for k in range(n):
        for i, j, rows, cols, source in windows:
            part = scratch[:, rows, cols]
            np.multiply(x[k][source[1:]], w[:, 0, i, j][:, None, None], out=part)
            y[k][:, rows, cols] += part
    return y


def shifted_backward(x: np.ndarray, w: np.ndarray, dy: np.ndarray):
    """dx scattered back offset by offset, dW[c, i, j] as one dot product per offset."""
    n, c = x.shape[:2]
    windows = list(_offset_windows(x.shape, (3, 3), (1, 1), PADS))
    dx, dw = np.zeros_like(x), np.zeros((n, c, 3, 3), dtype=x.dtype)
    scratch = np.empty(x.shape[1:], dtype=x.dtype)
    for k in range(n):
        for i, j, rows, cols, source in windows:
            d = dy[k][:, rows, cols]
            dw[k, :, i, j] = np.einsum("cpq,cpq->c", d, x[k][source[1:]])
            part = scratch[:, rows, cols]
            np.multiply(d, w[:, 0, i, j][:, None, None], out=part)
            dx[k][source[1:]] += part
    return dx, dw.sum(axis=0)


def strided_forward(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = sliding_window_view(padded, (3, 3), axis=(2, 3))  # (N, C, H, W, 3, 3), a view
    return np.einsum("ncpqij,cij->ncpq", windows, w[:, 0])


def strided_backward(x: np.ndarray, w: np.ndarray, dy: np.ndarray):
    """dW from the input's windows; dx as dy's windows against the flipped kernel."""
    windows = sliding_window_view(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), axis=(2, 3))
    dw = np.einsum("ncpq,ncpqij->cij", dy, windows)
    dy_windows = sliding_window_view(
        np.pad(dy, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), axis=(2, 3)
    )
    return np.einsum("ncpqij,cij->ncpq", dy_windows, w[:, 0, ::-1, ::-1]), dw


def matmul_outer_product(a, b, out):
    np.matmul(a, b, out=out)


def check_alternatives(layer: Conv2D, x: np.ndarray, dy: np.ndarray) -> None:
    """The alternatives compute what Conv2D computes (so the timings compare like with like)."""
    w = layer.params["weight"]
    y = layer.forward(x)
    dx = layer.backward(dy)
    for forward, backward in (
        (shifted_forward, shifted_backward),
        (strided_forward, strided_backward),
    ):
        their_dx, their_dw = backward(x, w, dy)
        scale = float(np.abs(layer.grads["weight"]).max())
        assert np.abs(forward(x, w) - y).max() < 1e-4 * max(1.0, float(np.abs(y).max()))
        assert np.abs(their_dx - dx).max() < 1e-4 * max(1.0, float(np.abs(dx).max()))
        assert np.abs(their_dw - layer.grads["weight"][:, 0]).max() < 1e-4 * scale


def purenn_medians(cases, threads: int, repeats: int) -> dict:
    threadpool_limits(threads)
    parallel.set_num_threads(threads)
    fns = {}
    for key, (layer, x, dy) in cases.items():
        fns[key] = lambda layer=layer, x=x, dy=dy: (layer.forward(x), layer.backward(dy))
    return {k: 1000 * v for k, v in alternating_medians(fns, repeats, 1).items()}


def alternative_medians(cases, repeats: int) -> dict:
    """Depthwise alternatives at 1 thread: {(C, H): {name: ms}}."""
    threadpool_limits(1)
    parallel.set_num_threads(1)
    fns = {}
    for (c, h, groups), (layer, x, dy) in cases.items():
        if groups != c:
            continue
        w = layer.params["weight"]
        check_alternatives(layer, x, dy)

        def old_scheme(layer=layer, x=x, dy=dy):
            kept, conv_module._product = conv_module._product, matmul_outer_product
            try:
                layer.forward(x), layer.backward(dy)
            finally:
                conv_module._product = kept

        fns[(c, h, "im2col, NumPy matmul outer product")] = old_scheme
        fns[(c, h, "shifted multiply-adds")] = lambda x=x, w=w, dy=dy: (
            shifted_forward(x, w),
            shifted_backward(x, w, dy),
        )
        fns[(c, h, "as_strided windows + einsum")] = lambda x=x, w=w, dy=dy: (
            strided_forward(x, w),
            strided_backward(x, w, dy),
        )
    return {k: 1000 * v for k, v in alternating_medians(fns, repeats, 1).items()}


def torch_medians(cases, threads: int, repeats: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    fns = {}
    for key, (layer, x, dy) in cases.items():
        xt = torch.from_numpy(x).requires_grad_(True)
        wt = torch.from_numpy(layer.params["weight"].copy()).requires_grad_(True)
        dyt = torch.from_numpy(dy)
        groups = key[2]

        def step(xt=xt, wt=wt, dyt=dyt, groups=groups):
            torch.nn.functional.conv2d(xt, wt, padding=1, groups=groups).backward(dyt)

        fns[key] = step
    return {k: 1000 * v for k, v in alternating_medians(fns, repeats, 1).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    shapes = SHAPES
    if args.quick:
        args.batch, args.repeats = 2, 2
        shapes = [(c, max(4, h // 8)) for c, h in SHAPES]
    print(machine_header(), flush=True)
    rng = np.random.default_rng(0)
    cases = {}
    for c, h in shapes:
        x = rng.standard_normal((args.batch, c, h, h)).astype(np.float32)
        dy = rng.standard_normal((args.batch, c, h, h)).astype(np.float32)
        for groups in (1, 4, c):
            layer = Conv2D(c, c, 3, padding=1, groups=groups, bias=False, rng=0)
            cases[(c, h, groups)] = (layer, x, dy)
    ours = {t: purenn_medians(cases, t, args.repeats) for t in (1, 2)}
    alternatives = alternative_medians(cases, args.repeats)
    theirs = {t: torch_medians(cases, t, args.repeats) for t in (1, 2)}  # torch last
    print(
        f"\nforward+backward, batch {args.batch}, float32, median of {args.repeats} "
        "(time / dense: against groups 1 of the same shape, same framework and threads)\n"
    )
    print(
        "| C->C on HxW | groups | fwd MFLOP | purenn 1 thr | purenn 2 thr | torch 1 thr | "
        "torch 2 thr | purenn / torch (2 thr) | time / dense: purenn, torch (2 thr) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (c, h, groups), (layer, x, _) in cases.items():
        mflop = layer.flops(x.shape[1:]) * args.batch / 1e6
        dense = (c, h, 1)
        label = "depthwise " + str(groups) if groups == c else str(groups)
        print(
            f"| {c}->{c} on {h}x{h} | {label} | {mflop:,.0f} | {ours[1][(c, h, groups)]:.1f} | "
            f"{ours[2][(c, h, groups)]:.1f} | {theirs[1][(c, h, groups)]:.1f} | "
            f"{theirs[2][(c, h, groups)]:.1f} | "
            f"{ours[2][(c, h, groups)] / theirs[2][(c, h, groups)]:.2f} | "
            f"{ours[2][(c, h, groups)] / ours[2][dense]:.2f}, "
            f"{theirs[2][(c, h, groups)] / theirs[2][dense]:.2f} |"
        )
    print("\ndepthwise alternatives, forward+backward, 1 thread, median of", args.repeats, "\n")
    names = sorted({name for _, _, name in alternatives})
    print("| C on HxW | purenn (grouped im2col, one batched matmul) | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for c, h in shapes:
        row = " | ".join(f"{alternatives[(c, h, name)]:.1f}" for name in names)
        print(f"| {c} on {h}x{h} | {ours[1][(c, h, c)]:.1f} | {row} |")


if __name__ == "__main__":
    main()
