"""Raw page fetching from Stripe: the SDK's client for auth, version pin and base URL; bodies parsed by msgspec
(a list page cut into its objects' JSON, an object whole with its integers kept whole: ``stripe_api/listed.py``;
the sandbox's exchange rates, a list of numbers, by orjson).

Building SDK objects costs ~40x more than parsing the JSON (design.md 2), so pages go through the SDK's
async HTTP client (its aiohttp one, ``request_with_retries_async``) untouched and are parsed here. Retries are ours: the SDK
does not retry 429s nor bad bodies, and every attempt has to pass the shared :class:`RateLimiter` (its endpoint's
bucket and the global one).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import msgspec
import orjson
import stripe

from stripe_churn.errors import AuthError, BadResponseError, ConfigError, StripeAPIError, TLSError
from stripe_churn.settings import Secret, Settings, redact_secrets
from stripe_churn.stripe_api.listed import ListPage, decode_page, parse_json
from stripe_churn.stripe_api.ratelimit import RateLimiter

log = logging.getLogger(__name__)
# httpx logs every request at INFO; a sync makes thousands, so only its warnings reach the log
logging.getLogger("httpx").setLevel(logging.WARNING)

API_VERSION: str = stripe.api_version  # the SDK's pin; every request sends it as Stripe-Version
# After a stop is requested, a request on the way still has this long to answer (the page it brings is committed);
# then it is given up, and no retry starts: a server that hangs cannot hold a stop for timeout x retries.
STOP_GRACE_S = 5.0
_STOP_POLL_S = 0.25  # how often a request on the way looks at the stop
RETRY_AFTER_MAX_S = 60.0  # the longest a Retry-After header makes a retry wait (a longer one waits this long)


class Stopped(Exception):
    """A stop was requested (the daemon's SIGTERM, a stop event): the run stops where it is; what it committed
    stays. Not an ``errors.StoppedError`` (the recompute's, a StripeChurnError): the sync catches StripeChurnError
    where a request may fail harmlessly (the account's creation time, a missing endpoint), and a stop must pass
    through those; ``run_sync`` ends it as the status ``stopped``."""


class NotFoundError(StripeAPIError):
    """Stripe answered 404 for an object (deleted for good, or never existed)."""

    transient = False


class CursorGoneError(StripeAPIError):
    """Stripe refused a list page's cursor (``starting_after`` or ``ending_before``: ``resource_missing``), as it
    does once the object it names has left that list since the page that named it: deleted (a draft invoice, a
    coupon, a plan), or out of the list's filter (a price archived while the active prices are listed). The list
    is whole again from the object's place, not from the cursor."""


def encode_params(params: Mapping[str, Any]) -> str:
    """Stripe's form encoding of query parameters: ``expand[0]=..``, ``created[gte]=..``, booleans lower-case."""
    pairs: list[tuple[str, str]] = []

    def scalar(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else str(v)

    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            pairs.extend((f"{key}[{i}]", scalar(v)) for i, v in enumerate(value))
        elif isinstance(value, Mapping):
            pairs.extend((f"{key}[{k}]", scalar(v)) for k, v in value.items())
        else:
            pairs.append((key, scalar(value)))
    return urlencode(pairs)


class StripeRaw:
    """One account's raw GETs, rate limited and retried. Use as ``async with``; not thread-safe."""

    def __init__(self, settings: Settings, *, http_client: stripe.HTTPClient | None = None,
                 limiter: RateLimiter | None = None, stop: threading.Event | None = None) -> None:
        key = settings.require_api_key()
        self._key = Secret(key)  # masked in any text of an answer that reaches a message (a proxy may echo it)
        self.stop = stop  # once set: no new attempt, and the one on the way has STOP_GRACE_S to answer
        self._watcher: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Timeout] = set()  # the deadlines of the requests on the way
        self._give_up_at: float | None = None  # (the loop's time; set once the stop is seen)
        self.base = settings.api_base.rstrip("/")
        self._account: dict[str, Any] | None = None  # GET /v1/account's answer, asked for once per client (run)
        # where the key, the base URL and the account were set (the config file's api_key, STRIPE_API_KEY, one
        # overriding the other), for the messages that say what to check
        self._key_given_in = settings.given_in("api_key")
        self._base_given_in = settings.given_in("api_base")
        self._account_given_in = settings.given_in("account")
        self._timeout = settings.timeout_seconds
        self.max_retries = settings.max_retries
        self.limiter = limiter or RateLimiter(settings.effective_rate_limit, settings.effective_endpoint_rate_limit)
        # aiohttp: a fraction of httpx's cost per request (its pool scans every connection on each request)
        self._http = http_client or stripe.AIOHTTPClient(timeout=aiohttp.ClientTimeout(total=settings.timeout_seconds))
        # The SDK client holds the same key, account, version pin and base URL, for the few object calls
        # (and for anyone who wants the typed API); pages are fetched through its HTTP client below.
        self.sdk = stripe.StripeClient(key, stripe_account=settings.account, base_addresses={"api": self.base},
                                       http_client=self._http)
        self._headers = {"Authorization": f"Bearer {key}", "Stripe-Version": API_VERSION,
                         "Accept": "application/json", "User-Agent": "stripe-churn"}
        if settings.account:
            self._headers["Stripe-Account"] = settings.account
        self.requests = 0
        self.retries = 0
        self.latency_s = 0.0  # exponentially smoothed response time
        self.server_time: int | None = None  # the server's clock (``Date`` header) at the last answer
        self._tuned = False

    def __repr__(self) -> str:
        return f"StripeRaw(base={self.base!r}, requests={self.requests})"

    async def __aenter__(self) -> StripeRaw:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        close = getattr(self._http, "close_async", None)
        if close is not None:
            try:
                await close()
            except Exception:  # closing a pool that is already gone is harmless
                log.debug("closing the HTTP client failed", exc_info=True)

    async def _send(self, url: str) -> tuple[Any, int, Mapping[str, str]]:
        if not isinstance(self._http, stripe.RequestsClient):
            if not self._tuned and isinstance(self._http, stripe.AIOHTTPClient):
                # aiohttp silently sends a request again when a kept-alive connection was closed under it: that
                # attempt would bypass the rate limiter and our retry count, so every attempt is ours
                session = self._http._session  # created on first use, inside the running loop
                if hasattr(session, "_retry_connection"):
                    session._retry_connection = False
                self._tuned = True
            try:
                return await self._http.request_with_retries_async("get", url, self._headers, max_network_retries=0)
            except (TimeoutError, aiohttp.ClientError) as exc:  # the body cut short, after the headers
                raise stripe.APIConnectionError(f"reading the answer failed ({type(exc).__name__})") from None
        # a synchronous SDK client (tests drive RequestsClient through `responses`): run it off the loop
        return await asyncio.to_thread(self._http.request_with_retries, "get", url, self._headers, None, 0)

    async def _send_unless_stopped(self, url: str, path: str) -> tuple[Any, int, Mapping[str, str]]:
        """:meth:`_send`, given up ``STOP_GRACE_S`` after a stop is requested (:class:`Stopped`). The request runs in
        the caller's task under an ``asyncio.timeout`` with no deadline, which one watcher per client sets when it
        sees the stop (nothing more per request on the hot path)."""
        if self.stop is None:
            return await self._send(url)
        if self.stop.is_set():
            raise Stopped(f"stop requested before GET {path}")
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch_stop())
        try:
            async with asyncio.timeout(self._give_up_at) as deadline:
                self._sending.add(deadline)
                try:
                    return await self._send(url)
                finally:
                    self._sending.discard(deadline)
        except TimeoutError:  # (only the deadline above: _send turns its own timeouts into APIConnectionError)
            raise Stopped(f"stop requested: GET {path} gave no answer within {STOP_GRACE_S:.0f} s after it") from None

    async def _watch_stop(self) -> None:
        """Once the stop is set, the requests on the way have STOP_GRACE_S more to answer."""
        assert self.stop is not None
        while not self.stop.is_set():
            await asyncio.sleep(_STOP_POLL_S)
        self._give_up_at = asyncio.get_running_loop().time() + STOP_GRACE_S
        for deadline in list(self._sending):
            deadline.reschedule(self._give_up_at)

    async def _pause(self, seconds: float, path: str) -> None:
        """Sleep before a retry, unless a stop is requested (then :class:`Stopped`)."""
        end = time.monotonic() + seconds
        while True:
            if self.stop is not None and self.stop.is_set():
                raise Stopped(f"stop requested: GET {path} is not tried again")
            left = end - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, _STOP_POLL_S) if self.stop is not None else left)

    def _backoff(self, attempt: int) -> float:
        return min(0.25 * 2 ** (attempt - 1), 8.0) * random.uniform(0.5, 1.0)

    async def get(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """GET ``path`` and return the parsed JSON object, after retries where retrying can help."""
        data: dict[str, Any] = await self._get(path, params, _json_object)
        return data

    async def get_json(self, path: str) -> Any:
        """GET ``path`` and return its parsed JSON, whatever its shape (the sandbox's exchange rates are a list),
        counted, rate-limited and retried as every request is."""
        return await self._get(path, None, orjson.loads)

    async def get_page(self, path: str, params: Mapping[str, Any] | None = None) -> ListPage:
        """GET a list page as its objects' raw JSON spans (see :mod:`stripe_churn.stripe_api.listed`)."""
        page: ListPage = await self._get(path, params, decode_page)
        return page

    async def _get(self, path: str, params: Mapping[str, Any] | None, parse: Callable[[bytes], Any]) -> Any:
        """GET ``path`` and return ``parse(body)`` (which raises ``ValueError`` for a body it cannot take)."""
        query = encode_params(params or {})
        # (an id in the path comes percent-encoded already, "/" included: see sync.path_id)
        url = f"{self.base}{quote(path, safe='/%')}" + (f"?{query}" if query else "")
        last = ""
        todo = ""  # what to do, when the last attempt reached no server
        request_id: str | None = None
        status: int | None = None
        tls_refused = False  # (the last attempt failed in a TLS handshake no retry can change)
        attempt = 0  # retries made so far, for the message
        asked = 0.0  # the wait the last answer asked for (its Retry-After), at least that before the next try
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retries += 1
                await self._pause(max(self._backoff(attempt), asked), path)
            asked = 0.0
            await self.limiter.acquire(path)
            started = time.monotonic()
            self.requests += 1
            try:
                body, status, headers = await self._send_unless_stopped(url, path)
            except stripe.APIConnectionError as exc:
                last, todo = _unreachable(exc, self.base, self._base_given_in, self._timeout)
                status = None
                tls_refused = _tls_refused(exc)
                if tls_refused:  # (the same certificate, or a server without TLS, answers every try alike)
                    break
                continue
            todo = ""
            self.latency_s = 0.8 * self.latency_s + 0.2 * (time.monotonic() - started) if self.latency_s else \
                time.monotonic() - started
            request_id = headers.get("Request-Id") or headers.get("request-id")
            date = headers.get("Date") or headers.get("date")
            if date:
                self.server_time = _http_date(date) or self.server_time
            should_retry = (headers.get("Stripe-Should-Retry") or "").lower()
            if status == 403 and self._headers.get("Stripe-Account") and _error_field(body, "code") == "account_invalid":
                raise AuthError(f"Stripe refused this key access to the connected account "
                                f"{self._headers['Stripe-Account']}: check {self._account_given_in} (the account id, "
                                "and that the platform still has access to it), or unset it there to sync the key's "
                                "own account; the store was left as it was", http_status=status, request_id=request_id)
            if status in (401, 403):
                what = "refused the API key (wrong, expired or revoked)" if status == 401 else \
                    "says the API key lacks a permission needed"
                raise AuthError(f"Stripe {what}: check {self._key_given_in} (a secret or restricted read key of the "
                                "right account and mode); the store was left as it was",
                                http_status=status, request_id=request_id)
            if status == 429 and _error_field(body, "code") != "lock_timeout":  # (a busy object, not a limit)
                self.limiter.penalise(path, headers.get("Stripe-Rate-Limited-Reason")
                                      or headers.get("stripe-rate-limited-reason"))
            if status == 429 or status == 409 or status >= 500:
                asked = _retry_after(headers.get("Retry-After") or headers.get("retry-after"), self.server_time)
                code = _error_field(body, "code")
                last = f"Stripe answered {status}" + (f" ({self._from_answer(code)})" if code else "")
                if should_retry == "false":
                    break
                continue
            if status in (400, 404) and _error_field(body, "code") == "resource_missing" and \
                    _error_field(body, "param") in ("starting_after", "ending_before"):
                raise CursorGoneError(f"Stripe no longer knows the cursor of GET {path}: "
                                      f"{_error_message(body, self._key)}", http_status=status,
                                      request_id=request_id)
            if status == 404:
                raise NotFoundError(f"not found: {path}", http_status=404, request_id=request_id)
            if status >= 400:
                raise StripeAPIError(f"Stripe rejected GET {path}: {_error_message(body, self._key)}; this is a "
                                     "bug in stripe-churn or an unsupported account setup", http_status=status,
                                     request_id=request_id)
            try:
                return parse(body)
            except msgspec.ValidationError:
                last = "Stripe sent JSON that is not a list page"
            except _NotAnObject:
                last = "Stripe sent JSON that is not an object"
            except ValueError:  # orjson's and msgspec's decode errors
                last = "Stripe sent a body that is not JSON"
            except RecursionError:  # (msgspec's formatting of JSON nested thousands of levels deep)
                last = "Stripe sent JSON nested too deeply to read"
        if last.startswith("Stripe sent"):
            raise BadResponseError(f"{last} for GET {path} after {attempt} retries (a proxy in the way?); "
                                   "nothing of that page was stored, run the sync again", http_status=status,
                                   request_id=request_id)
        if tls_refused:  # (a person must act: a later run meets the same handshake)
            raise TLSError(f"{last} for GET {path}: {todo}, then run the sync again; the store keeps what was "
                           "committed", request_id=request_id)
        if todo:  # (no server answered)
            raise StripeAPIError(f"{last} for GET {path} after {attempt} retries: {todo}, then run the sync again; "
                                 "the store keeps what was committed", request_id=request_id)
        raise StripeAPIError(f"{last} for GET {path} after {attempt} retries; the store keeps what was "
                             "committed, run the sync again later", http_status=status, request_id=request_id)

    def _from_answer(self, text: str) -> str:
        """Text taken from an answer, fit for a message: see :func:`_redacted`."""
        return _redacted(text, self._key)

    async def account(self) -> dict[str, Any]:
        """The key's own account (GET /v1/account), asked for once: a full sync reads its id and its `created`."""
        if self._account is None:
            self._account = await self.get("/v1/account")
        return self._account

    async def account_id(self, configured: str | None) -> str:
        """The account being synced: the configured one (Stripe-Account) or the key's own."""
        if configured:
            return configured
        try:
            acct = await self.account()
        except NotFoundError as exc:  # the first request: a 404 here is the wrong server, not a missing object
            v1 = ", which ends in /v1 now" if self.base.endswith("/v1") else ""
            raise ConfigError(f"the server at {self.base} has no /v1/account: check {self._base_given_in}{v1}: "
                              "it should be the server's root such as https://api.stripe.com, "
                              "without /v1; the store was left as it was", http_status=exc.http_status,
                              request_id=exc.request_id) from None
        account = acct.get("id")
        if not isinstance(account, str) or not account:
            raise BadResponseError(f"Stripe sent an account without an id for GET /v1/account (id: "
                                   f"{self._from_answer(orjson.dumps(account).decode())[:40]}): nothing was "
                                   f"stored; check that {self._base_given_in} is Stripe's API, and run "
                                   "the sync again")
        return account


def _unreachable(exc: stripe.APIConnectionError, base: str, given_in: str, timeout: float) -> tuple[str, str]:
    """What happened and what to do ("" when only trying again later can help), for a request that got no answer from
    ``base`` (``given_in``: where the base URL was set). The SDK's own words name only the exception's class ("A ClientConnectorError was raised"); what
    it was raised from says which: nothing listening, a host name that does not resolve, a failed TLS handshake,
    no answer in time."""
    host = urlsplit(base).hostname or base
    # (aiohttp names a failed lookup ClientConnectorDNSError from 3.10.10 on; an older one, which pyproject allows, has
    # no such name, and its ClientConnectorError keeps the resolver's gaierror as os_error)
    dns = (socket.gaierror, *[e for e in [getattr(aiohttp, "ClientConnectorDNSError", None)] if e is not None])
    for err in _causes(exc):
        if isinstance(err, ssl.SSLError | aiohttp.ClientSSLError):
            why = getattr(err, "verify_message", None) or getattr(err, "reason", None) or type(err).__name__
            return (f"the TLS handshake with {base} failed ({why})",
                    f"check {given_in} (http:// for a server without TLS, such as the sandbox), else this "
                    "machine's CA certificates and clock")
        if isinstance(err, dns):
            return (f"the host name {host} of {base} was not found (DNS)",
                    f"check {given_in} for a typo, and this machine's network")
        if isinstance(err, ConnectionRefusedError):
            sandbox = " (`stripe-churn sandbox` serves the built-in one)" if host in _LOOPBACK else ""
            return (f"nothing is listening at {base} (connection refused)",
                    f"check {given_in} and that the server is up{sandbox}")
        if isinstance(err, TimeoutError):
            return (f"{base} gave no answer within {timeout:g} s (setting timeout_seconds)",
                    f"check {given_in}, that the server is up and this machine's network")
    detail = (str(exc).splitlines() or [""])[-1].strip() or type(exc).__name__
    if detail.startswith("(") and detail.endswith(")"):  # (the SDK's "(Network error: ...)")
        detail = detail[1:-1]
    return f"connection to {base} failed ({detail})", ""  # (a connection dropped: the next run may well get through)


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _tls_refused(exc: stripe.APIConnectionError) -> bool:
    """Whether the request failed in a TLS handshake that trying again cannot change: a certificate this machine
    does not trust (or of another host), a server that speaks no TLS. Not a connection closed in the middle of the
    handshake (``SSLEOFError``, ``SSLZeroReturnError``): a dropped connection, which the next try may not meet."""
    for err in _causes(exc):
        if isinstance(err, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return False
        if isinstance(err, ssl.SSLError | aiohttp.ClientSSLError):
            return True
    return False


def _causes(exc: BaseException) -> list[BaseException]:
    """What a failed request was raised from (:func:`_raised_from`), each preceded by the OS's error it keeps
    (aiohttp keeps it as ``os_error``; the SDK and urllib3 raise theirs from it)."""
    return [err for cause in _raised_from(exc) for err in (getattr(cause, "os_error", None), cause)
            if isinstance(err, BaseException)]


def _raised_from(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from, nearest first; not what it was raised while handling when it says
    ``from None`` (a body cut short, whose words are :meth:`StripeRaw._send`'s)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and not any(current is seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


class _NotAnObject(ValueError):
    pass


def _json_object(body: bytes) -> dict[str, Any]:
    data = parse_json(body)
    if not isinstance(data, dict):
        raise _NotAnObject
    return data


def _error_field(body: Any, name: str) -> str | None:
    """A field of Stripe's error envelope (``code``, ``param``), None when the body has none."""
    try:
        value = orjson.loads(body).get("error", {}).get(name)
        return str(value) if value else None
    except Exception:
        return None


def _retry_after(value: str | None, now: int | None) -> float:
    """Seconds a ``Retry-After`` header asks a client to wait (seconds, or an HTTP date against the server's
    ``now``), at most :data:`RETRY_AFTER_MAX_S`; 0 when there is none or it does not parse. Stripe's rate limits
    and a proxy in front of it may send one; the SDK does not read it, and a retry sooner is refused again."""
    if not value:
        return 0.0
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        when = _http_date(value)
        if when is None:
            return 0.0
        seconds = when - (now if now is not None else time.time())
    if seconds != seconds:  # (NaN)
        return 0.0
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_S)


def _http_date(value: str) -> int | None:
    """Unix seconds of an HTTP ``Date`` header, None when it does not parse."""
    try:
        return int(parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError, IndexError):
        return None


def _redacted(text: str, key: Secret) -> str:
    """``text`` from an answer as a message may show it: on one line, with the API key and anything shaped like a
    Stripe key or signing secret masked (a proxy or a test server may echo the key it was sent; the message goes to
    the console, the log and ``sync_runs.error``)."""
    return redact_secrets(" ".join(text.split()), [key.reveal()])


def _error_message(body: Any, key: Secret) -> str:
    try:
        err = orjson.loads(body).get("error", {})
        text = str(err.get("message") or err)
    except Exception:
        return "unreadable error body"
    # (masked before it is cut: a key cut in two would no longer be recognised)
    return _redacted(text, key)[:200]
