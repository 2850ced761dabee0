"""Data-parallel training step on this machine: 2 MPI ranks x 1 thread against 1 process x 2
threads, and the share of each step spent in the gradient Allreduce.

A third configuration, 1 process x 1 thread, gives the speed-up of the second rank. Every
configuration runs the fit loop's step on the plantvillage-cnn (15 classes, 128x128) with a
global batch of 32 random images: forward, softmax cross-entropy (label smoothing 0.1), backward,
(with several ranks: scaling, packing, one Allreduce of the flat float32 gradient buffer and
unpacking), global-norm clipping at 1.0 and an Adam step. Figures are medians over
``--repeats`` timed steps after ``--warmup`` untimed ones, measured in one run of this script;
with ``--rounds R`` the two configurations alternate R times and the medians over rounds are
printed (on a shared machine, load that comes and goes then hits both alike).

    python benchmarks/bench_distributed.py            # needs mpi4py and mpiexec (purenn[mpi])
    python benchmarks/bench_distributed.py --repeats 5 --warmup 1 --image-size 64   # quick

The step time of 2 ranks includes waiting in the Allreduce for the slower rank; the Allreduce
is also timed alone, after a barrier, over the same buffer (the transfer itself).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from timing import cpu_model

REPO = Path(__file__).resolve().parents[1]
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_btl": "self,sm",
}


def worker(args) -> None:
    from threadpoolctl import threadpool_limits

    from purenn.distributed import DataParallel, world
    from purenn.kernels import parallel
    from purenn.kernels.runtime import retain_freed_memory
    from purenn.nn.losses import SoftmaxCrossEntropy
    from purenn.optim.optimizers import Adam, clip_grad_norm
    from purenn.presets import build_preset

    threadpool_limits(args.threads)
    parallel.set_num_threads(args.threads)
    retain_freed_memory()
    comm = world()
    model = build_preset("plantvillage-cnn", num_classes=15, image_size=args.image_size, seed=0)
    params = model.parameters()
    optimizer, loss_fn = Adam(params, lr=1e-4), SoftmaxCrossEntropy(label_smoothing=0.1)
    rng = np.random.default_rng(0)
    shape = (args.batch, 3, args.image_size, args.image_size)
    x, y = rng.standard_normal(shape).astype(np.float32), rng.integers(0, 15, args.batch)
    start, stop = (args.batch * comm.rank // comm.size, args.batch * (comm.rank + 1) // comm.size)
    x, y = x[start:stop], y[start:stop]
    dp = DataParallel(comm, model) if comm.size > 1 else None

    def step():
        if dp is None:
            loss_fn.forward(model.forward(x, training=True), y)
            model.backward(loss_fn.backward(), input_grad=False)
        else:
            dp.forward_backward(loss_fn, x, y, args.batch)
        clip_grad_norm(params, 1.0)
        optimizer.step()

    steps, reduce, pack = [], [], []
    for i in range(args.warmup + args.repeats):
        comm.barrier()
        before = (dp.allreduce_seconds, dp.pack_seconds) if dp else (0.0, 0.0)
        begin = time.perf_counter()
        step()
        if i >= args.warmup:
            steps.append(time.perf_counter() - begin)
            if dp:
                reduce.append(dp.allreduce_seconds - before[0])
                pack.append(dp.pack_seconds - before[1])
    result = {"step": statistics.median(steps), "params": model.num_parameters}
    if dp:
        result["allreduce"] = statistics.median(reduce)
        result["pack"] = statistics.median(pack)
        buffer = np.ones(model.num_parameters + 2, dtype=np.float32)
        alone = []
        for _ in range(args.repeats):
            comm.barrier()
            begin = time.perf_counter()
            comm.allreduce_(buffer)
            alone.append(time.perf_counter() - begin)
        result["allreduce_alone"] = statistics.median(alone)
    results = comm.allgather(result)
    if comm.is_root:
        print(json.dumps(results))


def launch(args, ranks: int, threads: int) -> list[dict]:
    command = [sys.executable, __file__, "--worker", "--threads", str(threads)]
    command += ["--batch", str(args.batch), "--image-size", str(args.image_size)]
    command += ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    if ranks > 1:
        mpiexec = Path(sys.executable).parent / "mpiexec"
        command = [str(mpiexec if mpiexec.exists() else "mpiexec"), "-n", str(ranks), *command]
    env = {**os.environ, **MPI_ENV, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def scaling_table(step: float, pack: float, nbytes: int, batch: int, latency: float) -> list:
    """Markdown rows of the predicted throughput of N machines like this one (docs/DISTRIBUTED.md).

    Each machine computes ``batch`` images per step in ``step`` seconds (measured here, 1
    process x 2 threads); with N > 1 it also packs/unpacks (``pack``) and takes part in a ring
    Allreduce of ``nbytes``: ``2 (N-1)/N * nbytes / bandwidth + 2 (N-1) * latency``, with no
    overlap of communication and computation (the step waits for the sum).
    """
    rows = [
        "| N | global batch | Allreduce, 10 Gbit/s | images/s | efficiency "
        "| Allreduce, 25 Gbit/s | images/s | efficiency |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in (1, 2, 4, 8, 16):
        cells = [str(n), str(n * batch)]
        for gbit in (10, 25):
            ring = 0.0 if n == 1 else 2 * (n - 1) / n * nbytes * 8 / (gbit * 1e9)
            ring += 2 * (n - 1) * latency
            seconds = step + (pack if n > 1 else 0.0) + ring
            rate = n * batch / seconds
            cells += [f"{1e3 * ring:.1f} ms", f"{rate:.0f}", f"{rate / (n * batch / step):.0%}"]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _median_of(results: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two setups")
    parser.add_argument(
        "--latency", type=float, default=50e-6, help="scaling model: seconds per ring message"
    )
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores); load average {os.getloadavg()[0]:.1f}")
    print(
        f"plantvillage-cnn (15 classes) at {args.image_size}x{args.image_size}, global batch "
        f"{args.batch}, float32; medians of {args.repeats} steps after {args.warmup}, "
        f"then over {args.rounds} alternating rounds"
    )
    rounds = [
        (launch(args, 1, 2)[0], launch(args, 2, 1), launch(args, 1, 1)[0])
        for _ in range(args.rounds)
    ]
    one = _median_of([r[0] for r in rounds])
    two = [_median_of([r[1][rank] for r in rounds]) for rank in range(2)]
    single = _median_of([r[2] for r in rounds])
    slowest = max(two, key=lambda r: r["step"])
    mb = 4 * (one["params"] + 2) / 1e6
    print(
        f"1 process x 2 threads: {args.batch / one['step']:.1f} images/s "
        f"(step {1e3 * one['step']:.0f} ms)"
    )
    for rank, r in enumerate(two):
        print(
            f"2 ranks x 1 thread, rank {rank}: step {1e3 * r['step']:.0f} ms, Allreduce "
            f"{1e3 * r['allreduce']:.1f} ms ({100 * r['allreduce'] / r['step']:.1f}% of the "
            f"step, waiting for the other rank included), pack/unpack {1e3 * r['pack']:.1f} ms "
            f"({100 * r['pack'] / r['step']:.1f}%), Allreduce alone "
            f"{1e3 * r['allreduce_alone']:.1f} ms for {mb:.1f} MB"
        )
    print(
        f"2 ranks x 1 thread: {args.batch / slowest['step']:.1f} images/s; ratio to 1 process x "
        f"2 threads: {one['step'] / slowest['step']:.2f}"
    )
    print(
        f"1 process x 1 thread: {args.batch / single['step']:.1f} images/s; 2 ranks x 1 thread "
        f"are {single['step'] / slowest['step']:.2f}x faster"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print(
        f"scaling model: N machines like this one, {args.batch} images each per step "
        f"({1e3 * one['step']:.0f} ms), pack/unpack {1e3 * slowest['pack']:.1f} ms, ring "
        f"Allreduce of {mb:.1f} MB, {1e6 * args.latency:.0f} us per message"
    )
    for row in scaling_table(
        one["step"], slowest["pack"], 4 * (one["params"] + 2), args.batch, args.latency
    ):
        print(row)


if __name__ == "__main__":
    main()
