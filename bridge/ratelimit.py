"""A sliding-window rate limiter keyed by an arbitrary string.

Used by the sinks to stay under the documented limits of the APIs they call, so the outbox holds an
item back locally instead of burning a request on a 429: PagerDuty Events v2 (120 events per
integration key over a 60 s window looking back from now), the PagerDuty REST API (960/min) and
Statuspage (1 request/s per token, measured over 60 s). The clock is injected so tests can drive it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class SlidingWindowLimiter:
    """At most ``limit`` acquisitions per key in any ``window`` seconds.

    >>> limiter = SlidingWindowLimiter(120, 60.0)
    >>> wait = limiter.try_acquire("routing-key-hash")
    >>> wait == 0.0  # acquired; otherwise the seconds until a slot frees
    True
    """

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if window <= 0:
            raise ValueError(f"window must be positive, got {window}")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._next_sweep = clock() + window

    def try_acquire(self, key: str) -> float:
        """Take a slot for ``key`` and answer 0.0, or answer the seconds until one frees (nothing taken)."""
        return self.acquire(key)[0]

    def acquire(self, key: str) -> tuple[float, float]:
        """``(0.0, stamp)`` when a slot was taken (``stamp`` gives it back, see :meth:`release`), else
        ``(seconds until one frees, 0.0)``."""
        now = self._clock()
        self._sweep(now)
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = deque()
        self._expire(hits, now)
        if len(hits) >= self.limit:
            return self._until_free(hits, now), 0.0
        hits.append(now)
        return 0.0, now

    def release(self, key: str, stamp: float) -> None:
        """Give back the slot taken at ``stamp``: the upstream did not count it (refused, failed, timed out)."""
        hits = self._hits.get(key)
        if hits is not None and stamp in hits:
            hits.remove(stamp)

    def wait_time(self, key: str) -> float:
        """Seconds until ``key`` could acquire a slot (0.0: now), without taking one."""
        now = self._clock()
        hits = self._hits.get(key)
        if hits is None:
            return 0.0
        self._expire(hits, now)
        if len(hits) < self.limit:
            return 0.0
        return self._until_free(hits, now)

    def tracked_keys(self) -> int:
        """How many keys the limiter remembers (idle keys are forgotten after a window)."""
        return len(self._hits)

    def _until_free(self, hits: deque[float], now: float) -> float:
        # The oldest hit leaves the window first; _expire keeps it inside, so this is > 0.
        return hits[0] + self.window - now

    def _expire(self, hits: deque[float], now: float) -> None:
        horizon = now - self.window
        while hits and hits[0] <= horizon:
            hits.popleft()

    def _sweep(self, now: float) -> None:
        # Memory stays bounded by the keys used within the last window: once per window, drop keys
        # whose newest hit has left it (a rotated routing key, a removed environment).
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.window
        horizon = now - self.window
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= horizon]:
            del self._hits[key]
