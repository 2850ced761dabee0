"""Prometheus metrics in the text exposition format (version 0.0.4), written without a client.

Counters and histograms are kept under one lock; ``render`` writes ``# HELP``/``# TYPE`` lines
and, for a histogram, cumulative ``_bucket{le="..."}`` counts ending with ``le="+Inf"``, then
``_sum`` and ``_count``, as Prometheus expects.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: tuple[tuple[str, str], ...], extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in pairs] + ([extra] if extra else [])
    return "{" + ",".join(parts) + "}" if parts else ""


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)  # per bucket, not cumulative
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        self.total += value
        self.count += 1


class Metrics:
    """The server's metrics; every method is thread-safe.

    Args:
        queue_depth: returns the number of requests waiting for inference (read at render time).
    """

    def __init__(self, queue_depth: Callable[[], int] = lambda: 0) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple, int] = defaultdict(int)
        self._latency: dict[tuple, _Histogram] = {}
        self._batches = _Histogram(BATCH_BUCKETS)
        self.queue_depth = queue_depth

    def observe_request(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        """One answered request; ``endpoint`` is the route's path template, not the raw path."""
        with self._lock:
            key = (("method", method), ("endpoint", endpoint))
            self._requests[(*key, ("status", str(status)))] += 1
            if key not in self._latency:
                self._latency[key] = _Histogram(LATENCY_BUCKETS)
            self._latency[key].observe(seconds)

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self._batches.observe(size)

    def render(self) -> str:
        """The whole exposition, one metric family after another."""
        out = [
            "# HELP purenn_requests_total HTTP requests answered, by endpoint and status.",
            "# TYPE purenn_requests_total counter",
        ]
        with self._lock:
            for key, n in sorted(self._requests.items()):
                out.append(f"purenn_requests_total{_labels(key)} {n}")
            out += [
                "# HELP purenn_request_duration_seconds Time from request to response.",
                "# TYPE purenn_request_duration_seconds histogram",
            ]
            for key, h in sorted(self._latency.items()):
                out += _histogram_lines("purenn_request_duration_seconds", key, h)
            out += [
                "# HELP purenn_batch_size Images per forward pass.",
                "# TYPE purenn_batch_size histogram",
                *_histogram_lines("purenn_batch_size", (), self._batches),
            ]
        out += [
            "# HELP purenn_queue_depth Requests waiting for a forward pass.",
            "# TYPE purenn_queue_depth gauge",
            f"purenn_queue_depth {self.queue_depth()}",
        ]
        return "\n".join(out) + "\n"


def _histogram_lines(name: str, key: tuple, h: _Histogram) -> list[str]:
    lines, running = [], 0
    for bound, n in zip(h.buckets, h.counts, strict=True):
        running += n
        le = 'le="' + format(bound, "g") + '"'
        lines.append(f"{name}_bucket{_labels(key, le)} {running}")
    inf = 'le="+Inf"'
    lines.append(f"{name}_bucket{_labels(key, inf)} {h.count}")
    lines.append(f"{name}_sum{_labels(key)} {h.total:g}")
    lines.append(f"{name}_count{_labels(key)} {h.count}")
    return lines
