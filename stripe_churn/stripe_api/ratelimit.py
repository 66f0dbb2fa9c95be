"""Client-side async rate limiting that keeps the sync under Stripe's read rate limits.

Stripe counts requests twice: across the account (live 100/s, sandbox 25/s) and per API endpoint (25/s unless
noted). A full sync lists one endpoint in several concurrent slices (``/v1/invoices`` cut by ``created``), so one
bucket for everything let a live key send its whole 100/s to that one endpoint, and Stripe answered 429 again and
again. :class:`RateLimiter` holds the global :class:`TokenBucket` and one per endpoint (the path with its object
ids taken out, :func:`endpoint_of`); a request waits for a token of its endpoint, then of the global bucket.

A bucket starts at its configured rate, halves on a 429 meant for it (the limits are shared with other clients of
the account, so ours may be too high) and climbs back by a small step each second without one.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable

# Stripe's paths alternate resource and id after the version and an optional namespace
# (/v1/[namespace/]resource/{id}/resource/{id}); a segment with a digit or capital is an id wherever it is (Stripe's
# generated ids have them after their prefix, resource names never do)
_NAMESPACES = frozenset({"apps", "billing", "billing_portal", "checkout", "climate", "entitlements",
                         "financial_connections", "forwarding", "identity", "issuing", "radar", "reporting", "sigma",
                         "tax", "terminal", "test_helpers", "treasury"})
_ID_CHARS = re.compile(r"[^a-z_]")
# How close together 429s of no stated reason from two endpoints must come for the global limit to be blamed
GLOBAL_SUSPECT_S = 1.0


def endpoint_of(path: str) -> str:
    """The endpoint of a request path, Stripe's unit of its per-endpoint limit: ``/v1/invoices/in_1Mx/lines`` is
    ``/v1/invoices/{id}/lines``, and ``/v1/coupons/summer`` (a chosen id) is ``/v1/coupons/{id}``. The query
    string is left out. A path of a shape not known here is cut into fewer endpoints rather than more (a slower pace,
    never one above Stripe's limit)."""
    version, _, rest = path.split("?", 1)[0].lstrip("/").partition("/")
    parts = rest.split("/") if rest else []
    start = 1 if parts and parts[0] in _NAMESPACES else 0
    out = parts[:start]
    for i, part in enumerate(parts[start:]):
        search = part == "search" and i == 1 and len(parts) == start + 2  # (/v1/customers/search: its own limit)
        out.append("{id}" if not search and (i % 2 == 1 or _ID_CHARS.search(part)) else part)
    return "/" + "/".join([version, *out]) if out else "/" + version


class TokenBucket:
    """Tokens refill at ``rate`` per second up to ``burst``; :meth:`acquire` waits for one.

    ``clock`` (seconds) and ``sleep`` are the time it runs by: tests pass a clock they move and a sleep that moves it.
    """

    def __init__(self, rate: float, *, burst: float | None = None, min_rate: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.target = max(float(rate), min_rate)
        self.rate = self.target
        self.min_rate = min(min_rate, self.target)
        self.burst = burst if burst is not None else max(1.0, self.target / 10)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()
        self._last_penalty = -1e9
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
                now = self._clock()
                self._refill(now)
                # (a hair under a whole token is one: the wait for the rest of it would round to nothing)
                if self._tokens >= 1.0 - 1e-9:
                    self._tokens = max(0.0, self._tokens - 1.0)
                    return
                await self._sleep((1.0 - self._tokens) / self.rate)

    def penalise(self) -> None:
        """Stripe answered 429: halve the rate (at most once per half second) and empty the bucket."""
        now = self._clock()
        self._refill(now)
        self.throttled += 1
        if now - self._last_penalty < 0.5:
            return
        self._last_penalty = now
        self.rate = max(self.min_rate, self.rate / 2)
        self._tokens = 0.0


class RateLimiter:
    """The global bucket at ``rate`` and one bucket per endpoint at ``endpoint_rate`` (see the module's doc).

    A 429 slows what caused it. Stripe's ``Stripe-Rate-Limited-Reason`` header, when sent, says which limit it was:
    ``global-*`` halves the global bucket, ``endpoint-*`` or ``resource-specific`` the endpoint's. Without it (the
    header is not in Stripe's reference, and a proxy may drop it) the endpoint's bucket halves, and the global one
    too once 429s come from two different endpoints within :data:`GLOBAL_SUSPECT_S`: one hot endpoint is its own
    limit, several at once is the account's. The other endpoints keep their pace either way.
    """

    def __init__(self, rate: float, endpoint_rate: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self.glob = TokenBucket(rate, clock=clock, sleep=sleep)
        self.endpoint_rate = float(endpoint_rate)
        self.endpoints: dict[str, TokenBucket] = {}
        self._turns: dict[str, asyncio.Lock] = {}  # endpoint -> held from its token until the global one (acquire)
        self._last_429: dict[str, float] = {}  # endpoint -> when it last got a 429 of no stated reason
        self.throttled = 0

    @property
    def target(self) -> float:
        """The global rate configured (the sync sizes its slices by it)."""
        return self.glob.target

    def endpoint(self, path: str) -> TokenBucket:
        """The bucket of ``path``'s endpoint, made on first use."""
        return self._bucket(endpoint_of(path))

    def _bucket(self, key: str) -> TokenBucket:
        """The bucket of endpoint ``key`` (and its turn lock), made on first use."""
        bucket = self.endpoints.get(key)
        if bucket is None:
            bucket = self.endpoints[key] = TokenBucket(self.endpoint_rate, clock=self._clock, sleep=self._sleep)
            self._turns[key] = asyncio.Lock()
        return bucket

    async def acquire(self, path: str) -> None:
        """Wait until a request to ``path`` may be sent: a token of its endpoint, then a global one (in that order,
        so that a request held back by its endpoint does not hold a global token other endpoints could use). The
        endpoint's next request takes its token only once this one has its global token: else requests whose
        endpoint tokens were taken at its pace while the global queue was long would all leave together once it
        drains, a burst above the endpoint's limit."""
        key = endpoint_of(path)
        bucket = self._bucket(key)
        async with self._turns[key]:
            await bucket.acquire()
            await self.glob.acquire()

    def penalise(self, path: str, reason: str | None = None) -> None:
        """Stripe answered 429 to a request to ``path``, with ``reason`` from its ``Stripe-Rate-Limited-Reason``."""
        self.throttled += 1
        why = (reason or "").strip().lower()
        if why.startswith("global"):
            self.glob.penalise()
            return
        key = endpoint_of(path)
        self._bucket(key).penalise()
        if why.startswith("endpoint") or why == "resource-specific":
            return
        now = self._clock()
        others = [e for e, at in self._last_429.items() if e != key and now - at < GLOBAL_SUSPECT_S]
        self._last_429[key] = now
        if others:
            self.glob.penalise()
