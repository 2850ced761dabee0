"""Eval-mode forward of two checkouts of purenn, in alternating processes: before and after.

On a machine whose speed drifts from minute to minute, the figures of two runs an hour apart
cannot show a 20% change. This runs the same measurement in a fresh process for each tree in
turn (A, B, A, B, ...), both presets at batch 32 and 1, 2 threads, and prints every round and
the median per tree of the per-round ratio B / A.

    git worktree add /tmp/before <commit>
    python benchmarks/ab_inference.py /tmp/before . --rounds 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from timing import machine_header, median_seconds, under_both_blas_settings

CASES = [("plantvillage-resnet", 32), ("plantvillage-resnet", 1)]
CASES += [("plantvillage-cnn", 32), ("plantvillage-cnn", 1)]


def measure(tree: str, threads: int) -> dict[str, float]:
    """Milliseconds per forward for each case, with ``tree``'s purenn (in this process)."""
    sys.path.insert(0, tree)
    import numpy as np

    import purenn
    from purenn.kernels.runtime import limit_threads
    from purenn.presets import build_preset

    if not purenn.__file__.startswith(tree):
        raise SystemExit(f"purenn came from {purenn.__file__}, not from {tree}")
    times = {}
    with limit_threads(threads):
        for preset, batch in CASES:
            model = build_preset(preset, num_classes=34, image_size=128, seed=0).eval()
            x = np.random.default_rng(1).standard_normal((batch, 3, 128, 128)).astype(np.float32)
            repeats = 5 if batch > 1 else 21
            times[f"{preset} b{batch}"] = 1000 * median_seconds(
                lambda m=model, x=x: m(x), repeats, 2
            )
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="a checkout of purenn (a git worktree)")
    parser.add_argument("after", help="another checkout")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # a child: measure this tree
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.threads)))
        return
    if under_both_blas_settings():
        return
    print(machine_header())
    trees = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    rounds = []
    for round_ in range(args.rounds):
        figures = {}
        for name, tree in trees.items():
            child = [sys.executable, __file__, tree, tree, "--measure", tree]
            child += ["--threads", str(args.threads)]
            figures[name] = json.loads(subprocess.check_output(child, text=True))
        rounds.append(figures)
        print(
            f"round {round_ + 1}: "
            + "; ".join(
                f"{case} {figures['before'][case]:.1f} -> {figures['after'][case]:.1f} ms"
                for case in figures["before"]
            ),
            flush=True,
        )
    for case in rounds[0]["before"]:
        ratios = [r["after"][case] / r["before"][case] for r in rounds]
        before = statistics.median(r["before"][case] for r in rounds)
        after = statistics.median(r["after"][case] for r in rounds)
        print(
            f"{case}: median {before:.1f} -> {after:.1f} ms; after / before per round: median "
            f"{statistics.median(ratios):.2f} ({', '.join(f'{v:.2f}' for v in ratios)})"
        )


if __name__ == "__main__":
    main()
