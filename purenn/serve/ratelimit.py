"""Rate limits of ``purenn serve``: a token bucket per key, in bounded memory.

Each key (a client address, a token name) has a bucket of ``per_minute`` requests that refills
at ``per_minute / 60`` per second, so a client may send a burst of ``per_minute`` and then one
every ``60 / per_minute`` seconds. At most ``max_keys`` buckets are kept; past that the bucket
used longest ago is dropped (a dropped key starts again with a full bucket), so a flood of
addresses cannot grow memory without bound. Used from the event loop only (no lock).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

MAX_KEYS = 10_000


class RateLimiter:
    """Token buckets of ``per_minute`` requests per key; at most ``max_keys`` keys."""

    def __init__(
        self, per_minute: int, max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if per_minute < 1 or max_keys < 1:
            raise ValueError(
                f"per_minute and max_keys must be >= 1. Received: per_minute={per_minute}, "
                f"max_keys={max_keys}"
            )
        self.per_minute, self.max_keys, self.clock = per_minute, max_keys, clock
        self.rate = per_minute / 60.0  # requests per second
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _level(self, key: Hashable, now: float) -> float:
        level, then = self._buckets.get(key, (float(self.per_minute), now))
        return min(float(self.per_minute), level + (now - then) * self.rate)

    def _retry_after(self, level: float) -> int:
        """Whole seconds until the bucket holds one request again (at least 1)."""
        return max(1, math.ceil((1.0 - level) / self.rate))

    def wait(self, key: Hashable) -> int:
        """Seconds until ``key`` may be let through (0: now), taking nothing."""
        level = self._level(key, self.clock())
        return 0 if level >= 1.0 else self._retry_after(level)

    def take(self, key: Hashable) -> int:
        """Let one request of ``key`` through if its bucket allows: 0; else the seconds to wait
        (nothing taken)."""
        now = self.clock()
        level = self._level(key, now)
        if level >= 1.0:
            level -= 1.0
            waited = 0
        else:
            waited = self._retry_after(level)
        self._buckets[key] = (level, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return waited
