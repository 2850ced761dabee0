"""Data-pipeline benchmark: cache build rate, loader rate, and private memory while loading.

Generates a folder of 256x256 JPEGs (15 classes; smooth random colour fields plus noise,
10-20 KB each, like PlantVillage photographs) with a process pool, then for each dataset size
(the smaller sizes are hard links to a prefix of the same files):

* cache build: scan + decode + resize to ``--image-size`` with ``--workers`` processes, cold
  (a fresh cache folder; the JPEGs are in the page cache since they were just written);
* in a fresh child process: one epoch of the training split (70%) at ``--batch`` with the
  default augmentation and augment factor 2, shuffled, prefetch on, z-scored; the loader rate
  is images yielded per second with nothing else running. The CNN train step reference rate
  (~40 img/s on this machine, issue 4) gives the headroom ratio;
* peak RssAnon (private anonymous memory; the memory-mapped cache's file pages do not count)
  above the child's baseline right after its imports, sampled every 2 ms by a thread and after
  every batch: over the whole child run (scan, cache open, channel statistics, epoch) and over
  the epoch alone.

    python benchmarks/bench_data.py                      # 20,000 images; sizes 5,000 and 20,000
    python benchmarks/bench_data.py --quick              # tiny, to check the script still works
    python benchmarks/bench_data.py --workdir /tmp/bench --keep   # reuse generated JPEGs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from timing import machine_header

CNN_TRAIN_RATE = 40.0  # img/s, PlantVillage CNN train step at batch 32 (issue 4)
CLASSES = 15


def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise KeyError("RssAnon")


def write_jpegs(folder: str, start: int, stop: int, side: int) -> None:
    from PIL import Image

    for i in range(start, stop):
        rng = np.random.default_rng(i)
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        field = np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC), dtype=np.int16)
        noisy = field + rng.integers(-12, 13, field.shape, dtype=np.int16)
        path = Path(folder) / f"class {i % CLASSES:02d}" / f"leaf {i:06d}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)


def generate(root: Path, count: int, side: int, workers: int) -> float:
    """Write images 0 .. count-1 that are not there yet; return the seconds taken."""
    for c in range(CLASSES):
        (root / f"class {c:02d}").mkdir(parents=True, exist_ok=True)
    have = sum(1 for _ in root.rglob("*.jpg"))
    start = time.perf_counter()
    step = 250
    with ProcessPoolExecutor(workers) as pool:
        jobs = [
            pool.submit(write_jpegs, str(root), a, min(a + step, count), side)
            for a in range(have, count, step)
        ]
        for job in jobs:
            job.result()
    return time.perf_counter() - start


def link_prefix(source: Path, target: Path, count: int) -> None:
    """``target``: hard links to the first ``count`` images of ``source`` (same class layout)."""
    if target.exists():
        shutil.rmtree(target)
    for i in range(count):
        rel = Path(f"class {i % CLASSES:02d}") / f"leaf {i:06d}.jpg"
        (target / rel.parent).mkdir(parents=True, exist_ok=True)
        os.link(source / rel, target / rel)


def child(args) -> None:
    """One epoch through the loader of an already built cache; prints a JSON line."""
    from purenn.data import (
        Augmentation,
        DataLoader,
        build_cache,
        channel_stats,
        scan_image_folder,
        stratified_split,
    )

    baseline = rss_anon_mb()
    peak = {"run": baseline, "epoch": baseline}
    phase = ["run"]
    done = threading.Event()

    def sample() -> None:
        value = rss_anon_mb()
        for name in ("run", phase[0]):
            peak[name] = max(peak[name], value)

    def poll() -> None:
        while not done.wait(0.002):
            sample()

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    cache = build_cache(scan_image_folder(args.root), args.cache, args.image_size, progress=False)
    train, _, _ = stratified_split(cache.labels, 0.15, 0.15, seed=0)
    mean, std = channel_stats(cache.images, train)
    loader = DataLoader(
        cache.images, cache.labels, train, args.batch, mean, std, shuffle=True, seed=0,
        augmentation=Augmentation(), augment_factor=2, drop_last=True,
    )  # fmt: skip
    sample()
    phase[0] = "epoch"
    images = 0
    start = time.perf_counter()
    for x, _ in loader.epoch(0):
        images += len(x)
        sample()
    seconds = time.perf_counter() - start
    done.set()
    poller.join()
    print(
        json.dumps(
            {
                "images": images,
                "seconds": seconds,
                "run_mb": peak["run"] - baseline,
                "epoch_mb": peak["epoch"] - baseline,
                "baseline_mb": baseline,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20000, help="images generated (largest size)")
    parser.add_argument(
        "--sizes", default="5000,20000", help="dataset sizes measured, comma-separated"
    )
    parser.add_argument("--image-size", type=int, default=128, help="cached image side")
    parser.add_argument("--source-size", type=int, default=256, help="generated JPEG side")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--workers", type=int, default=None, help="cache build processes (default: all CPUs)"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep JPEGs and caches here")
    parser.add_argument(
        "--keep", action="store_true", help="do not delete --workdir's contents at the end"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to smoke-test the script")
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.root, args.cache = args.child
        child(args)
        return
    if args.quick:
        args.images, args.sizes, args.image_size, args.source_size = 300, "100,300", 32, 64
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if sizes[-1] > args.images:
        parser.error(f"--sizes must not exceed --images; received: {sizes[-1]} > {args.images}")

    from purenn.data import build_cache, scan_image_folder

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="purenn-bench-data-"))
    workdir.mkdir(parents=True, exist_ok=True)
    full = workdir / f"jpegs-{args.source_size}"
    cpus = len(os.sched_getaffinity(0))
    print(machine_header())
    print(f"# {cpus} CPUs available to this process, workdir {workdir}")
    seconds = generate(full, args.images, args.source_size, cpus)
    mean_kb = np.mean([p.stat().st_size for p in list(full.rglob("*.jpg"))[:500]]) / 1024
    print(
        f"generated {args.images} JPEGs {args.source_size}x{args.source_size} "
        f"(~{mean_kb:.0f} KB) in {seconds:.1f} s"
    )

    try:
        for size in sizes:
            root = full if size == args.images else workdir / f"subset-{size}"
            if root != full:
                link_prefix(full, root, size)
            cache_dir = workdir / f"cache-{size}"
            shutil.rmtree(cache_dir, ignore_errors=True)
            start = time.perf_counter()
            scan = scan_image_folder(root)
            build_cache(scan, cache_dir, args.image_size, workers=args.workers, progress=False)
            build = time.perf_counter() - start
            print(
                f"cache build   {size:6d} images {args.source_size}->{args.image_size}px: "
                f"{size / build:7.0f} img/s ({build:.1f} s, workers {args.workers or cpus})"
            )
            run = subprocess.run(
                [sys.executable, __file__, "--child", str(root), str(cache_dir),
                 "--image-size", str(args.image_size), "--batch", str(args.batch)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            result = json.loads(run.stdout.strip().splitlines()[-1])
            rate = result["images"] / result["seconds"]
            print(
                f"loader        {size:6d} images, batch {args.batch}, augmented, factor 2: "
                f"{rate:7.0f} img/s = {rate / CNN_TRAIN_RATE:.0f}x the CNN train step "
                f"(~{CNN_TRAIN_RATE:.0f} img/s)"
            )
            print(
                f"peak RssAnon  {size:6d} images, above baseline {result['baseline_mb']:.0f} MB: "
                f"{result['epoch_mb']:6.1f} MB during the epoch, "
                f"{result['run_mb']:6.1f} MB whole run (scan, cache open, stats, epoch)"
            )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
