"""Token buckets: at most N requests a minute per key (a token's name, or a client address)."""

from __future__ import annotations

import threading
import time


class RateLimiter:
    """One bucket per key, refilled continuously at ``per_minute``, holding at most ``per_minute`` (the burst)."""

    def __init__(self, per_minute: float, max_keys: int = 10_000) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.max_keys = max_keys  # addresses of failed logins are many: forget the fullest buckets
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        level, then = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, level + (now - then) * self.rate)

    def take(self, key: str, now: float | None = None) -> float:
        """Spend one request of ``key``'s bucket: 0 when allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        with self._lock:
            level = self._level(key, now)
            if level < 1.0:
                self._buckets[key] = (level, now)
                return (1.0 - level) / self.rate
            self._buckets[key] = (level - 1.0, now)
            if len(self._buckets) > self.max_keys:
                full = [k for k in self._buckets if self._level(k, now) >= self.capacity]
                for stale in full[: len(self._buckets) - self.max_keys]:
                    del self._buckets[stale]
            return 0.0

    def blocked(self, key: str, now: float | None = None) -> float:
        """Seconds until ``key`` may make a request (0: now), without spending one."""
        now = time.monotonic() if now is None else now
        with self._lock:
            level = self._level(key, now)
        return 0.0 if level >= 1.0 else (1.0 - level) / self.rate
