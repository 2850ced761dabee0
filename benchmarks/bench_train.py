"""Train-step, inference and memory benchmark: purenn against PyTorch on the same CPU.

For each preset (plantvillage-cnn, plantvillage-ann, plantvillage-resnet against its torch twin
``TorchResNet``) one process per framework runs the same architecture on the same random batch:
forward, softmax cross-entropy with label smoothing 0.1, backward, global-norm clipping at 1.0
and an Adam step. Each figure is the median over
``--repeats`` timed steps after ``--warmup`` untimed ones; ratios compare figures of this run.
Separate processes keep one framework's memory and threads from affecting the other.

    python benchmarks/bench_train.py                    # both presets, 2 threads, batch 32
    python benchmarks/bench_train.py --model cnn --profile   # plus purenn's per-layer profile
    python benchmarks/bench_train.py --model resnet --profile
    python benchmarks/bench_train.py --loop readme      # README's Python loop vs `purenn train`

``--loop readme`` alternates three purenn processes over ``--rounds``: the step as `purenn
train` runs it (after its process setup), the README's Python loop verbatim after
``pn.use_fast_path()``, and the same loop without that call; it prints each one's train step
and its ratio to `purenn train`'s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from timing import machine_header, median_seconds

PRESETS = {"cnn": "plantvillage-cnn", "ann": "plantvillage-ann", "resnet": "plantvillage-resnet"}


def rss_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM, RssAnon), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def batch(args, classes: int = 38):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, 3, args.image_size, args.image_size)).astype(np.float32)
    return x, rng.integers(0, classes, args.batch)


def purenn_worker(args) -> dict:
    from threadpoolctl import threadpool_info, threadpool_limits

    from purenn.kernels import parallel
    from purenn.kernels.runtime import retain_freed_memory
    from purenn.nn.losses import SoftmaxCrossEntropy
    from purenn.optim.optimizers import Adam, clip_grad_norm
    from purenn.presets import build_preset

    threadpool_limits(args.threads)
    parallel.set_num_threads(args.threads)
    retained = args.malloc == "retain" and retain_freed_memory()
    baseline = rss_mb("VmRSS")
    model = build_preset(PRESETS[args.model], image_size=args.image_size, seed=0)
    for layer in model.layers:
        if hasattr(layer, "algorithm"):
            layer.algorithm = args.conv_algorithm
    params = model.parameters()
    optimizer, loss_fn = Adam(params, lr=1e-4), SoftmaxCrossEntropy(label_smoothing=0.1)
    x, y = batch(args)

    def train_step():
        logits = model.forward(x, training=True)
        loss_fn.forward(logits, y)
        model.backward(loss_fn.backward(), input_grad=False)
        clip_grad_norm(params, 1.0)
        optimizer.step()

    result = {"train": median_seconds(train_step, args.repeats, args.warmup)}
    result["peak_mb"], result["peak_above_baseline_mb"] = (
        rss_mb("VmHWM"),
        rss_mb("VmHWM") - baseline,
    )
    result["infer"] = median_seconds(lambda: model.forward(x, training=False), args.repeats, 1)
    x1 = x[:1].copy()
    result["latency"] = median_seconds(lambda: model.forward(x1, training=False), args.repeats, 1)
    blas = [(i["internal_api"], i.get("version"), i["num_threads"]) for i in threadpool_info()]
    result["backend"] = (
        f"numpy {np.__version__}, BLAS {blas}, malloc heap retained: {retained}, "
        f"conv algorithm: {args.conv_algorithm}"
    )
    if args.profile:
        result.update(gemm_floor(model, train_step, args))
        result["profile"] = purenn_profile(model, train_step, optimizer, args)
    return result


def gemm_floor(model, train_step, args) -> dict:
    """What bounds the train step from below in NumPy: the time its matrix products take
    (per thread, as roofline.py counts them), the sgemm peak of this machine (a 2048^3
    product), and the step's product FLOPs (forward, dW and dcol: 3 times the forward's)."""
    from roofline import gemm_seconds, sgemm_peak, training_modules

    step_flops = 3 * args.batch * model.flops((3, args.image_size, args.image_size))
    return {
        "train_gemm": gemm_seconds(train_step, args.repeats, args.threads, training_modules()),
        "sgemm_gflops": sgemm_peak(args.repeats),
        "train_gflop": step_flops / 1e9,
    }


def readme_worker(args) -> dict:
    """The README's training loop, word for word, with or without ``pn.use_fast_path()``."""
    import purenn as pn
    from purenn.presets import build_preset

    if args.worker == "readme":
        pn.use_fast_path(threads=args.threads)
    else:  # only the thread count, which `purenn train --threads` would set too
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
        pn.parallel.set_num_threads(args.threads)
    model = build_preset(PRESETS[args.model], image_size=args.image_size, seed=0)
    loss_fn = pn.SoftmaxCrossEntropy(label_smoothing=0.1)
    optimizer = pn.Adam(model.parameters(), lr=1e-4)
    x, y = batch(args)

    def readme_step():
        loss = loss_fn(model(x, training=True), y)
        model.backward(loss_fn.backward(), input_grad=False)
        pn.clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()
        return loss

    return {"train": median_seconds(readme_step, args.repeats, args.warmup)}


def fit_worker(args) -> dict:
    """The fit loop's step after the process setup `purenn train` makes (purenn.training.fit)."""
    from purenn.training import fit

    assert "retain_freed_memory" in vars(fit), "purenn train's setup moved: update this worker"
    fit.retain_freed_memory()
    return purenn_worker(argparse.Namespace(**{**vars(args), "malloc": "default"}))


def purenn_profile(model, train_step, optimizer, args) -> list[tuple[str, float, float]]:
    """Median forward and backward milliseconds of each layer, and of the optimizer step."""
    timings = {i: {"forward": [], "backward": []} for i in range(len(model.layers))}
    timings["optimizer"] = {"forward": [], "backward": []}

    def timed(fn, bucket):
        def wrapper(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            bucket.append(time.perf_counter() - start)
            return out

        return wrapper

    for index, layer in enumerate(model.layers):
        layer.forward = timed(layer.forward, timings[index]["forward"])
        layer.backward = timed(layer.backward, timings[index]["backward"])
    optimizer.step = timed(optimizer.step, timings["optimizer"]["backward"])
    for _ in range(args.repeats):
        train_step()
    rows = []
    for key, t in timings.items():
        name = f"{key:>2} {model.layers[key]!r}" if key != "optimizer" else "   Adam step"
        ms = [1000 * statistics.median(t[phase]) if t[phase] else 0.0 for phase in t]
        rows.append((name, *ms))
    return rows


def torch_worker(args) -> dict:
    import torch
    from threadpoolctl import threadpool_limits

    from purenn.presets import build_preset

    threadpool_limits(args.threads)
    torch.set_num_threads(args.threads)
    baseline = rss_mb("VmRSS")
    from torch_twin import resnet_twin, torch_twin

    twin = resnet_twin if args.model == "resnet" else torch_twin
    model = twin(build_preset(PRESETS[args.model], image_size=args.image_size, seed=0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    x_np, y_np = batch(args)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    model.train()
    result = {"train": median_seconds(train_step, args.repeats, args.warmup)}
    result["peak_mb"], result["peak_above_baseline_mb"] = (
        rss_mb("VmHWM"),
        rss_mb("VmHWM") - baseline,
    )
    model.eval()
    with torch.inference_mode():
        result["infer"] = median_seconds(lambda: model(x), args.repeats, 1)
        x1 = x[:1].clone()
        result["latency"] = median_seconds(lambda: model(x1), args.repeats, 1)
    result["backend"] = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    return result


WORKERS = {"purenn": purenn_worker, "torch": torch_worker}
WORKERS.update({"readme": readme_worker, "readme-plain": readme_worker, "fit": fit_worker})


def run_worker(framework: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", framework, "--model", args.model]
    for flag in ("batch", "threads", "repeats", "warmup", "image_size", "malloc", "conv_algorithm"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    command += ["--profile"] if args.profile and framework == "purenn" else []
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{framework} worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", choices=["cnn", "ann", "resnet", "both"], default="both", help="both: cnn, ann"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two workers")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--profile", action="store_true", help="per-layer profile of purenn")
    parser.add_argument(
        "--malloc",
        choices=["retain", "default"],
        default="retain",
        help="purenn's process keeps freed memory for reuse, as `purenn train` does (default), "
        "or uses glibc's defaults",
    )
    parser.add_argument(
        "--conv-algorithm",
        choices=["auto", "im2col", "winograd"],
        default="im2col",
        help="purenn's Conv2D algorithm for every conv layer (default: im2col, the layers' "
        "default; auto: chosen per layer by shape)",
    )
    parser.add_argument(
        "--loop",
        choices=["fit", "readme"],
        default="fit",
        help="fit: purenn against PyTorch (default); readme: the README's Python loop against "
        "`purenn train`'s step",
    )
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.warmup, args.image_size, args.batch, args.rounds = 2, 1, 32, 4, 1
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return

    print(machine_header(), flush=True)
    for key in ("cnn", "ann") if args.model == "both" else (args.model,):
        args.model = key
        (report_loops if args.loop == "readme" else report)(key, args)


def report(key: str, args) -> None:
    """Alternate the two workers ``--rounds`` times; print medians over rounds and their ratios.

    Each round measures both frameworks back to back, so a ratio compares runs a few seconds
    apart; the median over rounds damps what other processes on the machine did meanwhile.
    """
    rounds = [
        {fw: run_worker(fw, args if r == 0 else _no_profile(args)) for fw in ("purenn", "torch")}
        for r in range(args.rounds)
    ]
    shape = f"batch {args.batch}, float32, 3x{args.image_size}x{args.image_size}"
    head = (
        f"{PRESETS[key]}, {args.threads} threads, {shape}, median of {args.repeats} steps, "
        f"median of {args.rounds} rounds"
    )
    for fw, r in rounds[0].items():
        print(f"{head}: {fw:6s} [{r['backend']}]")

    def median(fw: str, field: str, scale: float = 1.0) -> float:
        return statistics.median(scale / r[fw][field] for r in rounds)

    def ratio(field: str) -> float:  # purenn speed / torch speed, per round
        return statistics.median(r["torch"][field] / r["purenn"][field] for r in rounds)

    for label, field in (("train step", "train"), ("inference", "infer")):
        a, b = median("purenn", field, args.batch), median("torch", field, args.batch)
        print(
            f"{head}: {label} images/s purenn {a:8.1f}  torch {b:8.1f}  ratio {ratio(field):5.2f}x"
        )
    a, b = 1 / median("purenn", "latency", 1e-3), 1 / median("torch", "latency", 1e-3)
    print(f"{head}: latency batch 1 ms purenn {a:8.2f}  torch {b:8.2f}  ratio {b / a:5.2f}x")
    for field, label in (
        ("peak_mb", "peak RSS"),
        ("peak_above_baseline_mb", "peak RSS above imports"),
    ):
        a = statistics.median(r["purenn"][field] for r in rounds)
        b = statistics.median(r["torch"][field] for r in rounds)
        print(f"{head}: train {label} MB purenn {a:8.0f}  torch {b:8.0f}  ratio {a / b:5.2f}")
    first = rounds[0]["purenn"]
    if "train_gemm" in first:
        step_ms = 1000 * statistics.median(r["purenn"]["train"] for r in rounds)
        torch_ms = 1000 * statistics.median(r["torch"]["train"] for r in rounds)
        gemm_ms, peak = 1000 * first["train_gemm"], first["sgemm_gflops"]
        print(
            f"{head}: purenn train step {step_ms:.1f} ms, of which inside matrix products "
            f"{gemm_ms:.1f} ms; its {first['train_gflop']:.2f} GFLOP at the sgemm peak "
            f"({peak:.0f} GFLOP/s) {1000 * first['train_gflop'] / peak:.1f} ms; torch's step "
            f"{torch_ms:.1f} ms, 1/1.2 of it {torch_ms / 1.2:.1f} ms"
        )
    for name, fwd, bwd in first.get("profile", []):
        print(f"profile {PRESETS[key]}: {name:60s} forward {fwd:8.2f} ms  backward {bwd:8.2f} ms")


def report_loops(key: str, args) -> None:
    """`purenn train`'s step against the README loop with and without ``pn.use_fast_path()``."""
    names = ("fit", "readme", "readme-plain")
    rounds = [
        {name: run_worker(name, _no_profile(args)) for name in names} for _ in range(args.rounds)
    ]
    head = (
        f"{PRESETS[key]}, {args.threads} threads, batch {args.batch}, median of {args.repeats} "
        f"steps, median of {args.rounds} rounds"
    )
    labels = {
        "fit": "`purenn train`'s step",
        "readme": "README loop with pn.use_fast_path()",
        "readme-plain": "README loop without it",
    }
    for name in names:
        speed = statistics.median(args.batch / r[name]["train"] for r in rounds)
        ratio = statistics.median(r["fit"]["train"] / r[name]["train"] for r in rounds)
        print(f"{head}: {labels[name]:38s} {speed:8.1f} images/s  vs purenn train {ratio:5.3f}x")


def _no_profile(args):
    return argparse.Namespace(**{**vars(args), "profile": False})


if __name__ == "__main__":
    main()
