"""The rate limiter's buckets on a clock the tests move: a sleep moves it instead of waiting."""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Iterable
from typing import Any

import pytest

from stripe_churn.stripe_api.ratelimit import RateLimiter, TokenBucket, endpoint_of


class FakeTime:
    """A clock that only a sleep moves; every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def most_in_a_second(times: Iterable[float]) -> int:
    """The most of ``times`` that fall within any one second (a window starting at one of them)."""
    ts = sorted(times)
    return max((sum(1 for u in ts if t <= u < t + 1.0 - 1e-9) for t in ts), default=0)


def send(limiter: RateLimiter, t: FakeTime, paths: list[str]) -> dict[str, list[float]]:
    """Acquire for each path in turn; the clock's time of each grant, by path."""
    granted: dict[str, list[float]] = {}

    async def run() -> None:
        for path in paths:
            await limiter.acquire(path)
            granted.setdefault(path, []).append(t.now)

    asyncio.run(run())
    return granted


@pytest.mark.parametrize(("path", "endpoint"), [
    pytest.param("/v1/invoices", "/v1/invoices", id="list"),
    pytest.param("/v1/invoices/in_1MtHbELkdIwHu7ixl4OzzPMv/lines", "/v1/invoices/{id}/lines", id="sublist"),
    pytest.param("/v1/credit_notes/cn_AbC0000000001/lines", "/v1/credit_notes/{id}/lines", id="underscored-name"),
    pytest.param("/v1/events/evt_1NG8Du2eZvKYlo2CUI79vXWy", "/v1/events/{id}", id="object"),
    pytest.param("/v1/subscription_items/si_00000000000042", "/v1/subscription_items/{id}", id="digits-only"),
    pytest.param("/v1/account", "/v1/account", id="account"),
    pytest.param("/v1/events?limit=1", "/v1/events", id="query-left-out"),
    pytest.param("/v1/coupons/summer", "/v1/coupons/{id}", id="chosen-id"),
    pytest.param("/v1/invoices/gold/lines", "/v1/invoices/{id}/lines", id="chosen-id-sublist"),
    pytest.param("/v1/test_helpers/test_clocks", "/v1/test_helpers/test_clocks", id="namespace"),
    pytest.param("/v1/billing/meters/mtr_123/event_summaries", "/v1/billing/meters/{id}/event_summaries",
                 id="namespace-object"),
    pytest.param("/v1/customers/search", "/v1/customers/search", id="search"),
    pytest.param("/_sandbox/fx_rates", "/_sandbox/fx_rates", id="not-v1"),
])
def test_endpoint_of_takes_the_ids_out(path: str, endpoint: str) -> None:
    assert endpoint_of(path) == endpoint


def test_one_endpoint_is_held_to_its_rate_while_the_global_allows_more() -> None:
    """Concurrent slices of /v1/invoices: 200 requests in a row, global 100/s, endpoint 25/s."""
    t = FakeTime()
    limiter = RateLimiter(100, 25, clock=t.clock, sleep=t.sleep)
    granted = send(limiter, t, ["/v1/invoices"] * 200)["/v1/invoices"]
    # 25 a second plus the bucket's burst of 2.5 (a single bucket at 100/s let ~100 through)
    assert most_in_a_second(granted) <= 27
    assert 199 / 25 - 0.2 <= granted[-1] - granted[0] <= 199 / 25 + 0.2


def test_the_global_caps_the_total_over_many_endpoints() -> None:
    t = FakeTime()
    limiter = RateLimiter(100, 25, clock=t.clock, sleep=t.sleep)
    paths = [f"/v1/{name}" for name in ("customers", "prices", "products", "subscriptions", "invoices", "events",
                                        "coupons", "credit_notes")] * 60
    granted = send(limiter, t, paths)
    everything = [x for times in granted.values() for x in times]
    assert most_in_a_second(everything) <= 100 + 10  # the global's burst is a tenth of its rate
    assert all(most_in_a_second(times) <= 27 for times in granted.values())
    # the total is the global's, not the sum of the endpoints' (8 x 25 = 200)
    assert len(everything) / (max(everything) - min(everything)) == pytest.approx(100, rel=0.05)


def test_object_ids_share_their_endpoints_bucket() -> None:
    t = FakeTime()
    limiter = RateLimiter(1000, 25, clock=t.clock, sleep=t.sleep)
    paths = [f"/v1/invoices/in_{n:06d}Xy/lines" for n in range(100)]
    granted = send(limiter, t, paths)
    assert list(limiter.endpoints) == ["/v1/invoices/{id}/lines"]
    assert most_in_a_second([x for times in granted.values() for x in times]) <= 27


def test_a_429_without_a_reason_slows_its_endpoint_only() -> None:
    t = FakeTime()
    limiter = RateLimiter(100, 25, clock=t.clock, sleep=t.sleep)
    limiter.penalise("/v1/invoices/in_1Abc/lines")
    assert limiter.endpoint("/v1/invoices/in_9Xyz/lines").rate == 12.5
    assert limiter.glob.rate == 100
    assert limiter.endpoint("/v1/events").rate == 25
    # more 429s of that endpoint still leave the global alone
    for _ in range(3):
        t.now += 0.6
        limiter.penalise("/v1/invoices/in_2Abc/lines")
    assert limiter.glob.rate == 100 and limiter.endpoint("/v1/invoices/{id}/lines").rate == 25 / 16
    assert limiter.throttled == 4


def test_429s_without_a_reason_from_two_endpoints_at_once_slow_the_global() -> None:
    t = FakeTime()
    limiter = RateLimiter(100, 25, clock=t.clock, sleep=t.sleep)
    limiter.penalise("/v1/invoices")
    t.now += 0.3
    limiter.penalise("/v1/events")
    assert limiter.glob.rate == 50
    assert limiter.endpoint("/v1/invoices").rate == 12.5 and limiter.endpoint("/v1/events").rate == 12.5
    # two endpoints far apart in time are each their own limit
    t.now += 10
    limiter.penalise("/v1/customers")
    t.now += 5
    limiter.penalise("/v1/prices")
    assert limiter.glob.rate == 50 and limiter.glob.throttled == 1  # (not halved again)


@pytest.mark.parametrize(("reason", "global_rate", "endpoint_rate"), [
    pytest.param("global-rate", 50, 25, id="global-rate"),
    pytest.param("global-concurrency", 50, 25, id="global-concurrency"),
    pytest.param("endpoint-rate", 100, 12.5, id="endpoint-rate"),
    pytest.param("endpoint-concurrency", 100, 12.5, id="endpoint-concurrency"),
    pytest.param("resource-specific", 100, 12.5, id="resource-specific"),
])
def test_a_429s_stated_reason_picks_the_bucket(reason: str, global_rate: float, endpoint_rate: float) -> None:
    t = FakeTime()
    limiter = RateLimiter(100, 25, clock=t.clock, sleep=t.sleep)
    limiter.penalise("/v1/invoices", reason)
    t.now += 0.3
    limiter.penalise("/v1/events", reason)  # (two endpoints: a stated reason is believed, not guessed at)
    assert limiter.glob.rate == global_rate
    assert limiter.endpoint("/v1/invoices").rate == endpoint_rate


def test_a_slowed_endpoint_climbs_back_without_429s() -> None:
    t = FakeTime()
    limiter = RateLimiter(100, 25, clock=t.clock, sleep=t.sleep)
    limiter.penalise("/v1/invoices")
    granted = send(limiter, t, ["/v1/invoices"] * 400)["/v1/invoices"]
    # 12.5/s at first, back to 25/s ten seconds later (5 % of the target a second), never above
    assert most_in_a_second(granted[:10]) <= 13
    assert limiter.endpoint("/v1/invoices").rate == 25
    assert most_in_a_second(granted) <= 27


def test_token_bucket_on_a_moved_clock() -> None:
    t = FakeTime()
    bucket = TokenBucket(10, clock=t.clock, sleep=t.sleep)

    async def run() -> None:
        for _ in range(21):
            await bucket.acquire()

    asyncio.run(run())
    assert t.now - 1000.0 == pytest.approx(2.0)  # one token at once, then 20 at 10 a second
    bucket.penalise()
    bucket.penalise()  # (within half a second of the first: counted, not halved again)
    assert bucket.rate == 5 and bucket.throttled == 2


class _VirtualSelector(selectors.DefaultSelector):
    """A selector that, asked to wait, moves its loop's clock by the wait instead (nothing here does I/O)."""

    now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout:
            _VirtualSelector.now += timeout
        return []


def test_requests_held_by_the_global_do_not_leave_in_a_burst_to_their_endpoint() -> None:
    """Fifty other endpoints fill the global queue; meanwhile ten slices of /v1/invoices take the endpoint's
    tokens at its pace and queue behind them. Once the queue drains they must not all go out in one burst: the
    endpoint's limit holds on the requests sent, not only on the tokens taken."""
    _VirtualSelector.now = 0.0
    loop = asyncio.SelectorEventLoop(_VirtualSelector())
    loop.time = lambda: _VirtualSelector.now  # type: ignore[method-assign]
    limiter = RateLimiter(10, 2, clock=loop.time)
    sent: list[float] = []

    async def one(path: str) -> None:
        await limiter.acquire(path)
        if path == "/v1/invoices":
            sent.append(loop.time())

    async def run() -> None:
        await asyncio.gather(*(one(f"/v1/resource{chr(97 + n // 26)}{chr(97 + n % 26)}") for n in range(50)),
                             *(one("/v1/invoices") for _ in range(10)))

    try:
        loop.run_until_complete(run())
    finally:
        loop.close()
    assert len(sent) == 10 and len(limiter.endpoints) == 51
    # 2 a second, its burst of 1 and the one already through (before: all ten within one second)
    assert most_in_a_second(sent) <= 4
