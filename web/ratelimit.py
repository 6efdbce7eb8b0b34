"""Per-client-address rate limit for the public portal: a token bucket per address."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """`per_minute` uploads per address, in bursts of up to that many."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, address: str) -> bool:
        now = self._clock()
        with self._lock:
            if len(self._buckets) > 100_000:  # forget addresses whose bucket is full again
                self._buckets = {a: b for a, b in self._buckets.items()
                                 if b[0] + (now - b[1]) * self.rate < self.capacity}
            tokens, at = self._buckets.get(address, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.rate)
            if tokens < 1:
                self._buckets[address] = (tokens, now)
                return False
            self._buckets[address] = (tokens - 1, now)
            return True
