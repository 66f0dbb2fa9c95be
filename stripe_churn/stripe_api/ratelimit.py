"""A client-side async token bucket that keeps the sync under Stripe's read rate limit.

It starts at the configured rate, halves on every 429 (Stripe's limit is shared with other clients of the
account, so ours may be too high) and climbs back by a small step each second without one.
"""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """Tokens refill at ``rate`` per second up to ``burst``; :meth:`acquire` waits for one."""

    def __init__(self, rate: float, *, burst: float | None = None, min_rate: float = 1.0) -> None:
        self.target = max(float(rate), min_rate)
        self.rate = self.target
        self.min_rate = min(min_rate, self.target)
        self.burst = burst if burst is not None else max(1.0, self.target / 10)
        self._tokens = self.burst
        self._last = time.monotonic()
        self._last_penalty = 0.0
        self._lock = asyncio.Lock()
        self.throttled = 0

    def _refill(self, now: float) -> None:
        elapsed = now - self._last
        self._last = now
        if self.rate < self.target and now - self._last_penalty > 1.0:
            # recover 5 % of the target per second without a 429
            self.rate = min(self.target, self.rate + self.target * 0.05 * elapsed)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)

    async def acquire(self) -> None:
        """Wait until a request may be sent."""
        async with self._lock:
            while True:
                now = time.monotonic()
                self._refill(now)
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self.rate)

    def penalise(self) -> None:
        """Stripe answered 429: halve the rate (at most once per half second) and empty the bucket."""
        now = time.monotonic()
        self.throttled += 1
        if now - self._last_penalty < 0.5:
            return
        self._last_penalty = now
        self.rate = max(self.min_rate, self.rate / 2)
        self._tokens = 0.0
