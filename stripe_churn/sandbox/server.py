"""The sandbox's HTTP face: a simulation served on 127.0.0.1 with Stripe's wire behaviour.

Auth, rate limiting (token bucket, 429 with Stripe's headers), latency that never blocks other requests,
seeded fault injection, request statistics and the ``/_sandbox`` control endpoints live here; object
serialisation and list semantics are in :mod:`stripe_churn.sandbox.catalog`, the HTTP protocol in
:mod:`stripe_churn.sandbox.wire`. ``start_in_thread`` is what tests and benchmarks use;
``serve_forever`` is the ``stripe-churn sandbox`` command.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import os
import random
import re
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import orjson

from stripe_churn.errors import FatalError
from stripe_churn.sandbox.catalog import Catalog, SimulationLike
from stripe_churn.sandbox.listing import RESOURCES, ApiError, Params, parse_int
from stripe_churn.sandbox.wire import Body, HttpServer, Request, Response, parse_query
from stripe_churn.settings import SANDBOX_KEY, Secret

log = logging.getLogger(__name__)

API_VERSION = "2026-10-28.endive"
LISTABLE = (*RESOURCES, "events")
DEFAULT_FAULTS = ("500", "502", "503", "drop")
FAULT_KINDS = frozenset({"500", "502", "503", "409_lock_timeout", "429_lock_timeout", "drop", "reset",
                         "truncated", "html", "not_json", "slow"})
_HTML_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway"
             b"</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
# A 200 whose body is not JSON: what a captive portal or a misconfigured proxy in front of the API answers.
_NOT_JSON = b"OK\r\nrequest accepted by gateway\r\n"
_LOCK_MESSAGE = ("This object cannot be accessed right now because another API request or Stripe process is "
                 "currently accessing it. If you see this error intermittently, retry the request.")
_KEY_PREFIX = re.compile(r"^(?:sk|rk|pk)_(?:test|live)_")


def mask_key(key: str) -> str:
    """Stripe's way of naming a key in an error: the prefix and at most the last 4 characters."""
    key = key[:200]
    match = _KEY_PREFIX.match(key)
    prefix = match.group(0) if match else ""
    rest = key[len(prefix):]
    if len(rest) > 8:
        return prefix + "*" * min(len(rest) - 4, 40) + rest[-4:]
    return prefix + "*" * max(len(rest), 4)


@dataclass
class ServerOptions:
    """Behaviour knobs of one sandbox server (see ``start_in_thread`` for what each does)."""

    api_key: Secret = field(default_factory=lambda: Secret(SANDBOX_KEY))
    latency_ms: float = 0.0
    rate_limit: float = 0.0
    endpoint_rate_limit: float = 0.0
    fault_rate: float = 0.0
    faults: Sequence[str] = DEFAULT_FAULTS
    fault_seed: int = 0
    fault_after: int = 0
    auth_revoked_after: int | None = None
    should_retry: bool | None = None
    slow_s: float = 10.0
    truth_out: Path | None = None

    def __post_init__(self) -> None:
        unknown = [f for f in self.faults if f not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; choose from {sorted(FAULT_KINDS)}")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be within 0..1, got {self.fault_rate}")
        if self.fault_rate > 0 and not self.faults:
            raise ValueError("fault_rate > 0 needs at least one fault kind")
        if self.rate_limit < 0 or self.endpoint_rate_limit < 0 or self.latency_ms < 0 or self.fault_after < 0:
            raise ValueError("rate_limit, endpoint_rate_limit, latency_ms and fault_after must not be negative")


ENDPOINT_BURST_S = 0.25  # the burst of endpoint_rate_limit, in seconds of its rate


class TokenBucket:
    """``rate`` requests per second with a burst of ``seconds`` of them (at least 1), by ``clock`` (seconds)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic, *, seconds: float = 1.0) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * seconds)
        self.tokens = self.capacity
        self.clock = clock
        self.stamp = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def write_truth(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Ground truth as JSON Lines, replaced atomically so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        for row in rows:
            fh.write(orjson.dumps(row))
            fh.write(b"\n")
    os.replace(tmp, path)


class SandboxApp:
    """Turns one request into one response; runs on the server's event loop thread only."""

    def __init__(self, sim: SimulationLike, options: ServerOptions) -> None:
        self.sim = sim
        self.options = options
        self.catalog = Catalog(sim)
        self.catalog.warm()
        self._key = options.api_key.reveal()
        self._bucket = TokenBucket(options.rate_limit) if options.rate_limit > 0 else None
        self._endpoint_buckets: dict[str, TokenBucket] = {}  # path template -> its bucket (endpoint_rate_limit)
        self._rng = random.Random(options.fault_seed)
        self._rid_prefix = os.urandom(3).hex()
        self._seq = 0
        self._api_requests = 0
        self.by_path: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.faults: Counter[str] = Counter()
        self.rate_limited = 0
        self.rate_limited_by: Counter[str] = Counter()  # the 429s above by Stripe-Rate-Limited-Reason
        self._date_cache: tuple[int, str] = (-1, "")

    def __repr__(self) -> str:
        return f"SandboxApp(account={self.sim.account_id!r}, key={mask_key(self._key)!r})"

    # --- entry point ------------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        self._seq += 1
        headers = [("Request-Id", f"req_{self._rid_prefix}{self._seq:011d}"),
                   ("Stripe-Version", req.headers.get("stripe-version") or API_VERSION),
                   ("Date", self._date())]
        # (split before decoding: an id chosen by the account may hold "/", sent as %2F)
        parts = [unquote(p) for p in req.path.split("/") if p]
        if parts and parts[0] == "_sandbox":
            template = "/_sandbox/" + "/".join(parts[1:])
            resp = self._control(req, parts[1:])
        elif parts and parts[0] == "v1":
            template = self._template(parts[1:])
            resp = self._api(req, parts[1:])
        else:
            template = "unmatched"
            resp = self._error(ApiError(404, f"Unrecognized request URL ({req.method}: {req.path})."))
        resp.headers[:0] = headers
        self.by_path[template][resp.action or str(resp.status)] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s -> %s", req.method, template, resp.action or resp.status)
        return resp

    def _date(self) -> str:
        """The sandbox's clock as an HTTP ``Date`` (Stripe's answers carry its own time)."""
        clock = int(self.sim.clock)
        if self._date_cache[0] != clock:
            self._date_cache = (clock, formatdate(clock, usegmt=True))
        return self._date_cache[1]

    # --- /v1 --------------------------------------------------------------------------------------
    def _api(self, req: Request, parts: list[str]) -> Response:
        opts = self.options
        self._api_requests += 1
        delay = opts.latency_ms / 1000.0
        revoked = opts.auth_revoked_after is not None and self._api_requests > opts.auth_revoked_after
        auth_error = self._auth_error(req, revoked)
        if auth_error is None:
            auth_error = self._account_error(req)
        if auth_error is not None:
            resp = self._error(auth_error)
            resp.delay = delay
            return resp
        limited = self._rate_limited(parts)
        if limited is not None:
            self.rate_limited += 1
            self.rate_limited_by[limited] += 1
            resp = self._error(ApiError(
                429, "Request rate limit exceeded. Learn more about rate limits here "
                "https://stripe.com/docs/rate-limits.", code="rate_limit"))
            resp.headers += [("Stripe-Rate-Limited-Reason", limited), ("Retry-After", "1")]
            self._should_retry(resp)
            resp.delay = delay
            return resp
        fault = None
        if opts.fault_rate > 0 and self._api_requests > opts.fault_after and self._rng.random() < opts.fault_rate:
            fault = self._rng.choice(list(opts.faults))
            self.faults[fault] += 1
        if fault is not None and fault not in ("truncated", "slow"):
            resp = self._fault(fault)
        else:
            try:
                resp = Response(200, self._route(req, parts))
            except ApiError as exc:
                resp = self._error(exc)
            if fault == "truncated":
                resp.action = "truncate"
            elif fault == "slow":
                delay += opts.slow_s
        resp.delay = delay
        return resp

    def _route(self, req: Request, parts: list[str]) -> Body:
        if req.method != "GET":
            raise ApiError(400, f"The sandbox is read-only: {req.method} {req.path} is not supported "
                           "(only GET; POST /_sandbox/advance moves its clock).")
        params: Params = parse_query(req.query)
        cat = self.catalog
        n = len(parts)
        if n == 1:
            name = parts[0]
            if name == "account":
                return self._account()
            if name in LISTABLE:
                return cat.list_page(name, params)
            if name == "subscription_items":
                sub = params.get("subscription")
                if not isinstance(sub, str) or not sub:
                    raise ApiError(400, "Missing required param: subscription.", code="parameter_missing",
                                   param="subscription")
                return cat.sublist_page("subscriptions", sub, params, "/v1/subscription_items",
                                        param="subscription")
        elif n == 2:
            name, oid = parts
            if name in LISTABLE:
                return cat.retrieve(name, oid, params)
            if name == "subscription_items":
                return cat.subscription_item(oid, params)
        elif n == 3 and parts[2] == "lines" and parts[0] in ("invoices", "credit_notes"):
            return cat.sublist_page(parts[0], parts[1], params, f"/v1/{parts[0]}/{parts[1]}/lines")
        raise ApiError(404, f"Unrecognized request URL ({req.method}: {req.path}).")

    def _rate_limited(self, parts: list[str]) -> str | None:
        """Which limit a request is over, as Stripe's ``Stripe-Rate-Limited-Reason`` names it, or None. As Stripe
        counts them: a request refused by its endpoint's limit is not counted by the global one."""
        if self.options.endpoint_rate_limit > 0:
            template = self._template(parts)
            bucket = self._endpoint_buckets.get(template)
            if bucket is None:
                # (a quarter second's burst: Stripe does not say how much it lets through at once, so the sandbox
                # lets through little, and a client that bunches its requests to one endpoint sees 429s)
                bucket = self._endpoint_buckets[template] = TokenBucket(self.options.endpoint_rate_limit,
                                                                        seconds=ENDPOINT_BURST_S)
            if not bucket.take():
                return "endpoint-rate"
        if self._bucket is not None and not self._bucket.take():
            return "global-rate"
        return None

    @staticmethod
    def _template(parts: list[str]) -> str:
        n = len(parts)
        if n == 1 and parts[0] in (*LISTABLE, "account", "subscription_items"):
            return f"/v1/{parts[0]}"
        if n == 2 and parts[0] in (*LISTABLE, "subscription_items"):
            return f"/v1/{parts[0]}/{{id}}"
        if n == 3 and parts[0] in ("invoices", "credit_notes") and parts[2] == "lines":
            return f"/v1/{parts[0]}/{{id}}/lines"
        return "unmatched"

    def _account(self) -> bytes:
        return orjson.dumps({
            "id": self.sim.account_id, "object": "account", "business_type": "company",
            "business_profile": {"name": "Sandbox Subscriptions Inc.", "url": None},
            "charges_enabled": True, "payouts_enabled": True, "details_submitted": True,
            "country": "US", "default_currency": "usd", "email": None, "created": self._start(),
            "metadata": {}, "type": "standard",
            "settings": {"dashboard": {"display_name": "Sandbox", "timezone": "Etc/UTC"}},
        })

    # --- errors, auth, faults ---------------------------------------------------------------------
    @staticmethod
    def _error(exc: ApiError) -> Response:
        return Response(exc.status, orjson.dumps(exc.envelope()))

    def _auth_error(self, req: Request, revoked: bool) -> ApiError | None:
        given = self._given_key(req.headers.get("authorization", ""))
        if given is None:
            return ApiError(401, "You did not provide an API key. You need to provide your API key in the "
                            "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                            "YOUR_SECRET_KEY').")
        if revoked or not hmac.compare_digest(given.encode(), self._key.encode()):
            return ApiError(401, f"Invalid API Key provided: {mask_key(given)}")
        return None

    def _account_error(self, req: Request) -> ApiError | None:
        """Stripe's 403 for a ``Stripe-Account`` the key cannot reach (only the sandbox's own account can be)."""
        account = req.headers.get("stripe-account")
        if account is None or account == self.sim.account_id:
            return None
        given = self._given_key(req.headers.get("authorization", "")) or ""
        return ApiError(403, f"The provided key '{mask_key(given)}' does not have access to account "
                        f"'{account[:100]}' (or that account does not exist). Application access may have been "
                        "revoked.", code="account_invalid")

    @staticmethod
    def _given_key(header: str) -> str | None:
        scheme, _, value = header.strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer" and value:
            return value
        if scheme == "basic" and value:
            try:
                user = base64.b64decode(value, validate=True).decode("utf-8", "replace")
            except (binascii.Error, ValueError):
                return None
            return user.partition(":")[0] or None
        return None

    def _should_retry(self, resp: Response) -> None:
        if self.options.should_retry is not None:
            resp.headers.append(("Stripe-Should-Retry", "true" if self.options.should_retry else "false"))

    def _fault(self, kind: str) -> Response:
        if kind in ("drop", "reset"):
            return Response(0, b"", action="drop" if kind == "drop" else "reset")
        if kind == "html":
            resp = Response(502, _HTML_502, content_type="text/html")
        elif kind == "not_json":
            resp = Response(200, _NOT_JSON, content_type="text/plain")
        elif kind in ("500", "502", "503"):
            resp = self._error(ApiError(int(kind), "An unknown error occurred while processing your request. "
                                        "Please try again.", type_="api_error"))
        else:
            status = 409 if kind.startswith("409") else 429
            resp = self._error(ApiError(status, _LOCK_MESSAGE, code="lock_timeout"))
        self._should_retry(resp)
        return resp

    # --- /_sandbox --------------------------------------------------------------------------------
    def _control(self, req: Request, parts: list[str]) -> Response:
        name = "/".join(parts)
        try:
            if name == "advance":
                if req.method != "POST":
                    raise ApiError(400, "Use POST /_sandbox/advance?months=N.")
                auth_error = self._auth_error(req, False)
                if auth_error is not None:
                    raise auth_error
                months = parse_int(parse_query(req.query).get("months", "1"), "months")
                if not 1 <= months <= 120:
                    raise ApiError(400, f"months must be within 1..120, got {months}.", param="months")
                return Response(200, orjson.dumps(self.advance(months)))
            if req.method != "GET":
                raise ApiError(400, f"Use GET /_sandbox/{name}.")
            if name == "stats":
                return Response(200, orjson.dumps(self.stats()))
            if name == "fx_rates":
                return Response(200, orjson.dumps(self.fx_rates()))
            raise ApiError(404, f"Unrecognized request URL ({req.method}: {req.path}).")
        except ApiError as exc:
            return self._error(exc)

    def advance(self, months: int) -> dict[str, Any]:
        """A billing run: advance the simulation, drop the caches, rewrite the truth file."""
        events0, truth0 = len(self.sim.events), len(self.sim.truth)
        started = time.perf_counter()
        self.sim.advance(months)
        self.catalog.reset()
        if self.options.truth_out is not None:
            write_truth(self.options.truth_out, self.sim.truth)
        clock = int(self.sim.clock)
        log.info("sandbox advanced %d month(s) to %s in %.1f s", months,
                 datetime.fromtimestamp(clock, UTC).isoformat(), time.perf_counter() - started)
        return {"clock": clock, "clock_iso": datetime.fromtimestamp(clock, UTC).isoformat(),
                "months": months, "counts": self.catalog.counts(),
                "new_events": len(self.sim.events) - events0, "new_truth": len(self.sim.truth) - truth0,
                "events_total": len(self.sim.events), "truth_total": len(self.sim.truth)}

    def stats(self) -> dict[str, Any]:
        """Request counts by path template and status (faults and drops by kind)."""
        return {"requests": sum(sum(c.values()) for c in self.by_path.values()),
                "by_path": {p: dict(c) for p, c in sorted(self.by_path.items())},
                "faults": dict(self.faults), "rate_limited": self.rate_limited,
                "rate_limited_by": dict(self.rate_limited_by), "clock": int(self.sim.clock)}

    def _start(self) -> int:
        start = getattr(self.sim, "start", None)
        if isinstance(start, int):
            return start
        created = [int(c.get("created") or 0) for c in self.sim.objects.get("customers", {}).values()
                   if not c.get("deleted")]
        return min(created) if created else int(self.sim.clock)

    def fx_rates(self) -> list[dict[str, Any]]:
        """The sandbox's exchange rates: its constant ones, dated at the simulation start, then each change of a
        simulation made with ``fx_changes`` (dated at the day it takes effect, up to the simulation's clock)."""
        from stripe_churn.sandbox.fx import rate_rows

        day = datetime.fromtimestamp(self._start(), UTC).date().isoformat()
        return [{"date": d, "currency": cur, "rate": rate} for d, cur, rate in rate_rows(self.sim, day)]


class RunningSandbox:
    """A sandbox server on a background thread with its own event loop; a context manager."""

    def __init__(self, app: SandboxApp, port: int, host: str = "127.0.0.1") -> None:
        self.app = app
        self.sim = app.sim
        self.port = port
        self.url = f"http://{host}:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: HttpServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"RunningSandbox(url={self.url!r})"

    def _call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the server's loop thread (the app is not thread-safe) and return its result."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the sandbox is stopped")

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=600)

    def stats(self) -> dict[str, Any]:
        """Request counts by path template and status, as ``GET /_sandbox/stats`` returns them."""
        return self._call(self.app.stats)

    def advance(self, months: int = 1) -> dict[str, Any]:
        """Advance the simulation (a billing run) while no request is being served."""
        return self._call(self.app.advance, months)

    def cpu_time(self) -> float:
        """CPU seconds the server thread has used so far (for benchmarks: CPU per request)."""
        return float(self._call(time.thread_time))

    def stop(self) -> None:
        """Close every connection, stop the loop and join the thread (idempotent)."""
        loop, server, thread = self._loop, self._server, self._thread
        if loop is None or server is None or thread is None:
            return
        self._loop = None
        try:
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)

    def __enter__(self) -> RunningSandbox:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_in_thread(sim: SimulationLike, *, api_key: str | Secret = SANDBOX_KEY, latency_ms: float = 0.0,
                    rate_limit: float = 0.0, endpoint_rate_limit: float = 0.0, fault_rate: float = 0.0, port: int = 0,
                    faults: Sequence[str] = DEFAULT_FAULTS, fault_seed: int = 0, fault_after: int = 0,
                    auth_revoked_after: int | None = None, should_retry: bool | None = None,
                    slow_s: float = 10.0, truth_out: Path | None = None) -> RunningSandbox:
    """Serve ``sim`` on 127.0.0.1 from a background thread and return once it accepts connections.

    ``faults`` are the kinds drawn (seeded by ``fault_seed``) for a share ``fault_rate`` of /v1 requests:
    "500", "502", "503", "409_lock_timeout", "429_lock_timeout", "drop" (close without answer), "reset"
    (TCP reset), "truncated" (half the body), "html" (a proxy's 502 page), "not_json" (a 200 with a plain
    text body), "slow" (answer after ``slow_s`` seconds); the first ``fault_after`` /v1 requests are spared.
    ``auth_revoked_after=N`` answers 401 after N /v1 requests. ``should_retry`` adds ``Stripe-Should-Retry``
    to 429 and fault answers. A ``Stripe-Account`` header other than the simulation's account id is answered
    as Stripe does: 403 ``account_invalid``. Above ``rate_limit`` /v1 requests per second a request is answered 429
    with ``Stripe-Rate-Limited-Reason: global-rate``, above ``endpoint_rate_limit`` to one endpoint (path template,
    such as ``/v1/invoices/{id}/lines``) with ``endpoint-rate``, as Stripe's per-endpoint limit; 0 is no limit.
    """
    key = api_key if isinstance(api_key, Secret) else Secret(api_key)
    options = ServerOptions(api_key=key, latency_ms=latency_ms, rate_limit=rate_limit,
                            endpoint_rate_limit=endpoint_rate_limit, fault_rate=fault_rate,
                            faults=tuple(faults), fault_seed=fault_seed, fault_after=fault_after,
                            auth_revoked_after=auth_revoked_after,
                            should_retry=should_retry, slow_s=slow_s, truth_out=truth_out)
    app = SandboxApp(sim, options)
    loop = asyncio.new_event_loop()
    server = HttpServer(app.handle, port)
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    thread = threading.Thread(target=run, name="stripe-sandbox", daemon=True)
    thread.start()
    ready.wait(timeout=30)
    if failure:
        raise FatalError(f"sandbox could not listen on 127.0.0.1:{port}: {failure[0]}; pick another port or 0")
    running = RunningSandbox(app, server.port)
    running._loop, running._server, running._thread = loop, server, thread
    return running


class _Stop(Exception):
    """SIGTERM arrived before the server was listening."""


def serve_forever(*, customers: int, months: int, seed: int, port: int, latency_ms: float = 0.0,
                  rate_limit: float = 0.0, endpoint_rate_limit: float = 0.0, fault_rate: float = 0.0,
                  api_key: str = SANDBOX_KEY, truth_out: Path | None = None) -> None:
    """``stripe-churn sandbox``: build the simulation, print the base URL first, serve until SIGTERM/SIGINT."""

    def on_term(_signum: int, _frame: Any) -> None:
        raise _Stop()

    try:
        options = ServerOptions(api_key=Secret(api_key), latency_ms=latency_ms, rate_limit=rate_limit,
                                endpoint_rate_limit=endpoint_rate_limit,
                                fault_rate=fault_rate, fault_seed=seed, truth_out=truth_out)
    except ValueError as exc:
        raise FatalError(f"invalid sandbox option: {exc}") from None
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        from stripe_churn.sandbox.sim import SANDBOX_OPTIONS, Simulation, history_to_today

        started = time.perf_counter()
        sim = Simulation(customers=customers, months=months, seed=seed, start=history_to_today(months),
                         **SANDBOX_OPTIONS)
        # (the history's millions of long-lived objects are out of the cycle collector's reach, as each run of the
        # simulation leaves them: its full passes over them would stall the event loop for seconds while serving)
        log.info("simulated %d customers over %d months (seed %d) in %.1f s", customers, months, seed,
                 time.perf_counter() - started)
        app = SandboxApp(sim, options)
        if truth_out is not None:
            try:
                write_truth(truth_out, sim.truth)
            except OSError as exc:
                raise FatalError(f"cannot write the ground truth to {truth_out}: {exc.strerror}; "
                                 "pass a writable --truth-out path") from None
            log.info("ground truth (%d rows) written to %s", len(sim.truth), truth_out)
        asyncio.run(_serve(app, port))
    except (_Stop, KeyboardInterrupt):
        log.info("sandbox stopped before it was serving")
    finally:
        signal.signal(signal.SIGTERM, previous)


async def _serve(app: SandboxApp, port: int) -> None:
    server = HttpServer(app.handle, port)
    try:
        actual = await server.start()
    except OSError as exc:
        raise FatalError(f"sandbox could not listen on 127.0.0.1:{port}: {exc.strerror}; "
                         "pick another --port or 0 for a free one") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"http://127.0.0.1:{actual}\n")
    sys.stdout.flush()
    log.info("sandbox serving account %s on http://127.0.0.1:%d (Ctrl-C or SIGTERM to stop)",
             app.sim.account_id, actual)
    try:
        await stop.wait()
    finally:
        await server.close()
        log.info("sandbox stopped; %d requests served", app.stats()["requests"])
