"""Serving benchmark: micro-batching on (``--max-batch 32``) and off (``--max-batch 1``).

Starts ``purenn serve`` itself (a subprocess on 127.0.0.1, a free port, a throwaway SQLite
database and image folder), posts real leaf photos from ../shared/data/plantvillage (generated
JPEGs when absent) with N concurrent clients (asyncio streams, keep-alive, each request's
bytes built once), and prints for each server and client count: requests, non-200 answers,
p50/p95/p99 latency seen by the client, throughput, and the batch-size distribution read from
the server's /metrics. Then an overload run: more clients than ``--max-queue`` admits,
counting 503s, and a check that the server still answers. Loopback only; every run is bounded
in requests and in time, and stops by itself.

``--model cnn`` (the default) is plantvillage-cnn at 128x128: the trained
/work/runs/pv-cnn/best.npz when present, else the preset with random weights (the speed is the
same). ``--model ann`` is the dense plantvillage-ann (26M parameters, whose batch-1 pass is
bound by reading its weights): the trained 34-class /work/runs/pv34-ann/best.npz when present,
else the preset with random weights. ``--model PATH`` serves any model file. It also times the
forward pass alone at batch 1 and batch ``--max-batch`` in this process, with the server's BLAS
threads: the ceiling of what batching can gain when inference is the bottleneck.

    python benchmarks/bench_serve.py                          # 2,000 requests at 32 clients
    python benchmarks/bench_serve.py --model ann --also 8     # the dense model, 3 servers
    python benchmarks/bench_serve.py --quick                  # a small run, to check it works
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from timing import cpu_model, median_seconds

REPO = Path(__file__).resolve().parents[1]
PLANTVILLAGE = REPO / ".." / "shared" / "data" / "plantvillage"
# --model name -> (preset, trained model file used when present, classes of the random one)
MODELS = {
    "cnn": ("plantvillage-cnn", Path("/work/runs/pv-cnn/best.npz"), 15),
    "ann": ("plantvillage-ann", Path("/work/runs/pv34-ann/best.npz"), 34),
}
IMAGE_SIZE = 128


def the_model(choice: str, workdir: Path) -> tuple[Path, str]:
    """The model file to serve for ``--model`` (a name of MODELS or a path) and its label."""
    if choice not in MODELS:
        return Path(choice), str(choice)
    preset, trained, classes = MODELS[choice]
    if trained.is_file():
        return trained, f"{preset}, trained {trained}"
    from purenn.io import save_model
    from purenn.presets import build_preset

    model = build_preset(preset, classes, IMAGE_SIZE)
    meta = {"class_names": [f"class_{i}" for i in range(classes)], "image_size": IMAGE_SIZE,
            "mean": [0.45] * 3, "std": [0.2] * 3}  # fmt: skip
    return save_model(workdir / f"{preset}-random.npz", model, meta), f"{preset}, random weights"


def the_photos(count: int) -> tuple[list[bytes], str]:
    files = sorted(PLANTVILLAGE.glob("*/*.[jJ][pP][gG]")) if PLANTVILLAGE.is_dir() else []
    if files:
        step = max(1, len(files) // count)
        return [f.read_bytes() for f in files[::step][:count]], f"{PLANTVILLAGE.name} JPEGs"
    from PIL import Image

    rng, photos = np.random.default_rng(0), []
    for _ in range(count):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos, "generated 256x256 JPEGs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path, workdir: Path, threads: int, *flags: str) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        db = Path(tempfile.mkdtemp(dir=workdir)) / "history.db"
        args = [sys.executable, "-m", "purenn", "serve", str(model), "--db", str(db), "--quiet",
                "--port", str(self.port), "--threads", str(threads), *flags]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the server did not start")

    def batch_sizes(self) -> Counter:
        """Forward passes so far by batch-size bucket (upper bound), from /metrics."""
        import httpx

        text = httpx.get(self.url + "/metrics", timeout=30).text
        cumulative = {
            float(le): int(n)
            for le, n in re.findall(r'^purenn_batch_size_bucket\{le="([^"]+)"\} (\d+)$', text, re.M)
        }
        out, previous = Counter(), 0
        for le in sorted(cumulative):
            out[le] = cumulative[le] - previous
            previous = cumulative[le]
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (Linux /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


BOUNDARY = "purenn-bench-boundary"


def predict_request(url: str, name: str, photo: bytes) -> bytes:
    """The bytes of ``POST /api/predict`` with ``photo`` as the multipart field ``file``: what
    an HTTP client sends, built once, so the load generator spends its CPU on the socket only."""
    host = url.split("://", 1)[1]
    body = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + photo
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST /api/predict HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: send request bytes, read the
    status and the Content-Length body. A load generator much cheaper than an HTTP library
    (httpx cost 4.7 ms of CPU per request here, a third of a core at the server's rate)."""

    def __init__(self, url: str) -> None:
        host, port = url.split("://", 1)[1].split(":")
        self.address = (host, int(port))
        self.streams = None

    async def post(self, request: bytes) -> int:
        if self.streams is None:
            self.streams = await asyncio.open_connection(*self.address)
        reader, writer = self.streams
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        await reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection") == "close":
            await self.close()
        return int(lines[0].split()[1])

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def load(url: str, photos: list[bytes], clients: int, requests: int, max_seconds: float):
    """``clients`` closed-loop clients share ``requests`` posts; stops early after max_seconds."""
    latencies, codes = [], Counter()
    bodies = [predict_request(url, f"leaf{i}.jpg", photo) for i, photo in enumerate(photos)]
    next_index = 0
    deadline = time.monotonic() + max_seconds

    async def client() -> None:
        # Each client is its own connection, as separate users are.
        nonlocal next_index
        connection = Connection(url)
        while next_index < requests and time.monotonic() < deadline:
            i = next_index
            next_index += 1
            start = time.perf_counter()
            try:
                status = await asyncio.wait_for(connection.post(bodies[i % len(bodies)]), 120)
                codes[status] += 1
                if status == 200:
                    latencies.append(time.perf_counter() - start)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as err:
                codes[type(err).__name__] += 1
                await connection.close()
        await connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, codes, time.perf_counter() - start


async def alternate(urls: list[str], photos: list[bytes], requests: int, max_seconds: float):
    """One client sends each photo to every server in turn (A, B, C, A, B, C, ...), so that
    lone-request latencies of the servers are measured under the same load, moment by moment."""
    latencies = {url: [] for url in urls}
    connections = {url: Connection(url) for url in urls}
    deadline = time.monotonic() + max_seconds
    for i in range(requests):
        if time.monotonic() > deadline:
            break
        for url in urls[i % len(urls) :] + urls[: i % len(urls)]:
            request = predict_request(url, f"leaf{i}.jpg", photos[i % len(photos)])
            start = time.perf_counter()
            if await connections[url].post(request) == 200:
                latencies[url].append(time.perf_counter() - start)
    for connection in connections.values():
        await connection.close()
    return latencies


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_load(server: Server, photos, clients: int, requests: int, max_seconds: float) -> dict:
    """One bounded load run; the raw figures, merged over rounds by :func:`summarize`."""
    before, server_cpu, client_cpu = server.batch_sizes(), server.cpu_seconds(), time.process_time()
    latencies, codes, seconds = asyncio.run(
        load(server.url, photos, clients, requests, max_seconds)
    )
    return {
        "latencies": latencies,
        "codes": codes,
        "seconds": seconds,
        "batches": server.batch_sizes() - before,
        "server_cpu": server.cpu_seconds() - server_cpu,
        "client_cpu": time.process_time() - client_cpu,
    }


def summarize(clients: int, runs: list[dict]) -> dict:
    codes = sum((r["codes"] for r in runs), Counter())
    latencies = [x for r in runs for x in r["latencies"]]
    answered = max(1, sum(codes.values()))
    return {
        "clients": clients,
        "requests": sum(codes.values()),
        "ok": codes[200],
        "errors": {k: v for k, v in codes.items() if k != 200},
        "p50": 1000 * percentile(latencies, 50),
        "p95": 1000 * percentile(latencies, 95),
        "p99": 1000 * percentile(latencies, 99),
        "throughput": codes[200] / sum(r["seconds"] for r in runs),
        "batches": sum((r["batches"] for r in runs), Counter()),
        "server_cpu_ms": 1000 * sum(r["server_cpu"] for r in runs) / answered,
        "client_cpu_ms": 1000 * sum(r["client_cpu"] for r in runs) / answered,
    }


def format_row(max_batch: int, r: dict) -> str:
    batches = " ".join(f"<={int(le)}:{n}" for le, n in sorted(r["batches"].items()) if n)
    return (
        f"max_batch={max_batch:<3d} clients={r['clients']:<3d} requests={r['requests']:<5d} "
        f"errors={sum(r['errors'].values()):<3d} p50={r['p50']:7.1f} ms p95={r['p95']:7.1f} ms "
        f"p99={r['p99']:7.1f} ms throughput={r['throughput']:6.1f} req/s "
        f"CPU/request: server {r['server_cpu_ms']:5.1f} ms, client {r['client_cpu_ms']:4.1f} ms  "
        f"passes by size: {batches}"
    )


def forward_ceiling(model_path: Path, threads: int, batches: list[int]) -> dict[int, float]:
    """Forward-pass time per image (ms) at each batch size of ``batches``, in this process.

    The batch sizes alternate (5 rounds, medians), so all see the same load.
    """
    from purenn.inference.probabilities import class_probabilities
    from purenn.io import load_model
    from purenn.kernels.runtime import limit_threads

    model, meta = load_model(model_path)
    rng = np.random.default_rng(0)
    size = meta["image_size"]
    times = {batch: [] for batch in batches}
    with limit_threads(threads):
        for _ in range(5):
            for batch in times:
                x = rng.integers(0, 256, (batch, 3, size, size), dtype=np.uint8)
                seconds = median_seconds(
                    lambda x=x: class_probabilities(model, x, meta), max(3, 32 // batch), 1
                )
                times[batch].append(1000 * seconds / batch)
    return {batch: statistics.median(values) for batch, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="cnn",
                        help="cnn, ann (see above) or a model file")  # fmt: skip
    parser.add_argument("--requests", type=int, default=2000, help="per run at many clients")
    parser.add_argument("--lone-requests", type=int, default=200, help="per run at 1 client")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--also", type=int, nargs="*", default=[], metavar="B",
                        help="more --max-batch values to measure in the same run")  # fmt: skip
    parser.add_argument("--max-queue", type=int, default=128, help="above --clients: no 503")
    parser.add_argument("--overload-clients", type=int, default=96)
    parser.add_argument("--overload-queue", type=int, default=16)
    parser.add_argument("--overload-requests", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads of the server")
    parser.add_argument("--rounds", type=int, default=4, help="load alternates between servers")
    parser.add_argument("--max-seconds", type=float, default=300, help="cap of each run")
    parser.add_argument("--quick", action="store_true", help="small runs: check it works")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.lone_requests, args.overload_requests, args.rounds = 64, 10, 64, 2
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        workdir = Path(tmp)
        model, model_text = the_model(args.model, workdir)
        photos, photo_text = the_photos(256)
        print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs, shared with other work)")
        print(f"model: {model_text} at {IMAGE_SIZE}x{IMAGE_SIZE}; photos: {photo_text}; "
              f"server BLAS threads: {args.threads}; client: asyncio streams")  # fmt: skip
        ceiling = forward_ceiling(model, args.threads, [1, args.max_batch])
        one, many = ceiling[1], ceiling[args.max_batch]
        print(f"forward pass alone ({args.threads} BLAS threads): {one:.2f} ms/image "
              f"({1000 / one:.0f} images/s) at batch 1, {many:.2f} ms/image ({1000 / many:.0f} "
              f"images/s) at batch {args.max_batch}: batching can gain at most {one / many:.2f}x "
              "when inference is the bottleneck")  # fmt: skip
        # Every server runs at once (an idle one uses no CPU) and the load alternates between
        # them in rounds, so that each sees the same share of the shared machine's drifting load.
        configs = [args.max_batch, *args.also, 1]
        servers = {}
        try:
            for max_batch in configs:
                flags = ("--max-batch", str(max_batch), "--max-queue", str(args.max_queue))
                servers[max_batch] = Server(model, workdir, args.threads, *flags)
                run_load(servers[max_batch], photos, 4, 16, args.max_seconds)  # warm-up
            urls = [servers[b].url for b in configs]
            lone = asyncio.run(alternate(urls, photos, args.lone_requests, args.max_seconds))
            runs = {b: [] for b in configs}
            for round_ in range(args.rounds):
                order = configs[round_ % len(configs) :] + configs[: round_ % len(configs)]
                for max_batch in order:
                    runs[max_batch].append(
                        run_load(
                            servers[max_batch],
                            photos,
                            args.clients,
                            args.requests // args.rounds,
                            args.max_seconds,
                        )
                    )
        finally:
            for server in servers.values():
                server.stop()
        for max_batch in configs:
            times = lone[servers[max_batch].url]
            p50, p95, p99 = (1000 * percentile(times, q) for q in (50, 95, 99))
            print(
                f"max_batch={max_batch:<3d} clients=1   requests={len(times):<5d} (alternating) "
                f"p50={p50:7.1f} ms p95={p95:7.1f} ms p99={p99:7.1f} ms"
            )
        for max_batch in configs:
            print(format_row(max_batch, summarize(args.clients, runs[max_batch])))
        values = [
            (on["codes"][200] / on["seconds"]) / (off["codes"][200] / off["seconds"])
            for on, off in zip(runs[args.max_batch], runs[1], strict=True)
        ]
        print(
            f"throughput at {args.clients} clients, --max-batch {args.max_batch} over 1: median "
            f"{statistics.median(values):.2f}x (rounds: {', '.join(f'{v:.2f}' for v in values)})"
            " (target >= 3x)"
        )
        # On a machine whose cores are the limit (shared, and the load generator on them too),
        # throughput follows the CPU spent per request: what batching saves of it, it gains.
        on, off = (summarize(args.clients, runs[b]) for b in (args.max_batch, 1))
        print(
            f"CPU per request, --max-batch {args.max_batch} against 1: server "
            f"{on['server_cpu_ms']:.1f} vs {off['server_cpu_ms']:.1f} ms "
            f"(1 over {args.max_batch}: {off['server_cpu_ms'] / on['server_cpu_ms']:.2f}x), "
            "server + load generator "
            f"{on['server_cpu_ms'] + on['client_cpu_ms']:.1f} vs "
            f"{off['server_cpu_ms'] + off['client_cpu_ms']:.1f} ms"
        )
        # The forward alone at the passes this server formed: the ceiling of its throughput.
        mean_pass = round(on["ok"] / max(1, sum(on["batches"].values())))
        per_image = forward_ceiling(model, args.threads, [mean_pass])[mean_pass]
        print(
            f"throughput at {args.clients} clients, --max-batch {args.max_batch}, over the "
            f"forward alone at its mean pass of {mean_pass} images ({1000 / per_image:.0f} "
            f"images/s): {on['throughput'] * per_image / 10:.0f}% (target >= 80%)"
        )
        p50_on = percentile(lone[servers[args.max_batch].url], 50)
        p50_off = percentile(lone[servers[1].url], 50)
        print(
            f"p50 at 1 client, --max-batch {args.max_batch} over 1: {p50_on / p50_off:.2f}x "
            "(target <= 1.1x)"
        )
        flags = ("--max-batch", str(args.max_batch), "--max-queue", str(args.overload_queue))
        server = Server(model, workdir, args.threads, *flags)
        try:
            r = summarize(
                args.overload_clients,
                [
                    run_load(
                        server,
                        photos,
                        args.overload_clients,
                        args.overload_requests,
                        args.max_seconds,
                    )
                ],
            )
            alive = server.proc.poll() is None
            import httpx

            after = httpx.post(
                server.url + "/api/predict", files={"file": ("a.jpg", photos[0])}, timeout=60
            ).status_code
        finally:
            server.stop()
        print(
            f"overload: {args.overload_clients} clients, --max-queue {args.overload_queue}: "
            f"{r['ok']} answered 200, errors {r['errors']}; server alive: {alive}, "
            f"next request: {after}"
        )


if __name__ == "__main__":
    main()
