"""Optional webhook trigger: a signed event that changes what the sync stores and the metrics read schedules an
incremental sync (:func:`triggers_sync`: subscriptions, invoices and their items, credit notes, discounts, customers,
products, prices and coupons); other events (payments, charges, payment methods...) are answered 200 and ignored.

Signatures are checked with the Stripe SDK (tolerance 300 s, both ways: a replayed old delivery and a
timestamp from the future are refused); anything unsigned, wrongly signed, stale, oversized or without a
declared length is refused and triggers nothing. A client that stops sending is cut off after
``READ_TIMEOUT_S``, one that trickles its request gets 408 once ``REQUEST_DEADLINE_S`` has passed, and past
``MAX_HANDLERS`` requests being handled a new connection gets 503 at once: all before any signature is checked.
An event of another connected account (an endpoint that listens to connected accounts gets all of theirs) or of
the other mode than the daemon syncs gets 200 and triggers nothing. Refusals are logged once a minute at most for
each reason. Several events close together become one sync (the caller debounces). An event's type reaches the log
and the daemon's state (as the sync's reason), and a request line the DEBUG log, only escaped and cut short.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import stripe

from stripe_churn.errors import ConfigError
from stripe_churn.settings import redacted_line

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
TOLERANCE_S = 300
READ_TIMEOUT_S = 10.0
# the whole request (request line, headers, body) within this, however steadily it trickles: Stripe sends a few
# KiB at once, and a client sending a byte every few seconds would otherwise hold a thread for as long as it likes
REQUEST_DEADLINE_S = 10.0
# requests handled at once (a thread and up to MAX_BODY of memory each); a connection past them gets 503
MAX_HANDLERS = 32
RETRY_AFTER_S = 5
REFUSED_LOG_EVERY_S = 60.0
LOGGED_TYPE_MAX = 100  # an event type longer than this is cut (Stripe's are under 50 characters)
LOGGED_LINE_MAX = 300  # the same for a request line in the DEBUG log
LOGGED_ERROR_MAX = 1000  # the same for the message of a request's unexpected failure
# The events that start a sync: those of the objects the sync stores and the metrics read (design.md 3-5), the
# types of streams.OBJECT_TABLE and the pending invoice items. Subscriptions and their items (no event of their own),
# invoices and their lines, pending invoice items (prorations date a change), credit notes, discounts (a discount
# starting or ending is a movement), customers (segments by country and metadata; a deleted customer), products
# (family, unit_label: seat or resource), prices and the older plans (MRR), coupons (a discount's terms).
TRIGGER_PREFIXES = ("customer.subscription.", "customer.discount.", "invoice.", "invoiceitem.", "credit_note.",
                    "product.", "price.", "plan.", "coupon.")
# (customer.* alone would take customer.source.*, customer.tax_id.*, customer.card.*: nothing the sync stores)
TRIGGER_TYPES = frozenset({"customer.created", "customer.updated", "customer.deleted"})
# (reminders sent days ahead, of an invoice not made yet or of a trial's end: nothing stored has changed)
REMINDER_TYPES = frozenset({"invoice.upcoming", "invoice.will_be_due", "customer.subscription.trial_will_end"})


def triggers_sync(event_type: str) -> bool:
    """Whether an event of ``event_type`` changes what the sync stores and the metrics read (its sync is worth it)."""
    if event_type in REMINDER_TYPES:
        return False
    return event_type in TRIGGER_TYPES or event_type.startswith(TRIGGER_PREFIXES)


class _Server(ThreadingHTTPServer):
    # (instance attributes may override these: tests use small ones)
    max_handlers = MAX_HANDLERS
    request_deadline_s = REQUEST_DEADLINE_S
    secrets: tuple[str, ...] = ()  # masked in what it logs (the signing secret, the API key)
    clock = staticmethod(time.monotonic)  # when refusals were logged (seconds)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._handlers = 0  # connections accepted and not yet done with (each on its own thread)
        self._refused = 0  # connections refused with 503 since the last WARNING about them
        self._refused_logged_at = -REFUSED_LOG_EVERY_S
        self._handlers_lock = threading.Lock()
        # refused requests of each kind since its last WARNING, and when that was (monotonic; None: never)
        self._refusals: dict[str, tuple[int, float | None]] = {}
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Runs on the accepting thread: past ``max_handlers`` connections being handled, this one gets 503 and
        is closed here, without a thread and before anything of it is read."""
        with self._handlers_lock:
            full = self._handlers >= self.max_handlers
            if not full:
                self._handlers += 1
        if full:
            # (one WARNING a minute at most, with how many were refused since: connections anyone can open must not
            # flood the log)
            self._refused += 1
            now = self.clock()
            if now - self._refused_logged_at >= REFUSED_LOG_EVERY_S:
                log.warning("webhook: refused %d connection(s) with 503 since the last such line, %d requests being "
                            "handled already", self._refused, self.max_handlers)
                self._refused, self._refused_logged_at = 0, now
            self._refuse_busy(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # (no thread started: nothing else gives the slot back)
            self._release_handler()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release_handler()

    def warn_refused(self, message: str) -> None:
        """A WARNING ``message`` for a refused request, at most one a minute for each message, with how many there
        were since the last one: anyone who reaches the port can send them, and must not flood the log."""
        with self._handlers_lock:
            count, logged_at = self._refusals.get(message, (0, None))
            count += 1
            now = self.clock()
            if logged_at is not None and now - logged_at < REFUSED_LOG_EVERY_S:
                self._refusals[message] = (count, logged_at)
                return
            self._refusals[message] = (0, now)
        log.warning("webhook: %s%s", message,
                    f" ({count} such requests since the last such line)" if count > 1 else "")

    def _release_handler(self) -> None:
        with self._handlers_lock:
            self._handlers -= 1

    def _refuse_busy(self, request: socket.socket) -> None:
        body = json.dumps({"message": "too many requests at once"}).encode()
        head = ("HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_S}\r\nConnection: close\r\n\r\n")
        try:
            # Non-blocking: the accepting thread must not wait on this client. A fresh socket's send buffer
            # takes the few bytes at once; what the client sent already is read away, so that closing with
            # unread data does not reset the connection before the client reads the answer.
            request.setblocking(False)
            request.sendall(head.encode() + body)
            request.recv(65536)
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request: object, client_address: tuple[str, int] | object) -> None:
        """A client that went away mid-request (a reset, a broken pipe: one refused early often closes before
        reading the answer) is no error of ours: one DEBUG line, not the traceback socketserver prints on stderr.
        Anything else is one ERROR line, its message joined, escaped and with the secrets masked (as the daemon
        logs a run's failure), and its traceback at DEBUG."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("webhook: the client went away mid-request (%s)", exc)
            return
        message = redacted_line(f"{type(exc).__name__}: {exc}", self.secrets)
        log.error("webhook: a request failed: %s (STRIPE_CHURN_LOG_LEVEL=DEBUG logs the traceback)",
                  _printable(message, LOGGED_ERROR_MAX))
        log.debug("webhook: a request failed", exc_info=True)


class WebhookServer:
    """HTTP server on a thread; calls ``on_event(event_type)`` for each verified event that should sync: one that names
    no account or ``account`` (None: the key's own, which no event names) and, unless ``livemode`` is None, of that
    mode. Its log lines mask ``secret`` and ``secrets`` (the API key)."""

    def __init__(self, secret: str, on_event: Callable[[str], None], host: str = "127.0.0.1", port: int = 0,
                 account: str | None = None, livemode: bool | None = None, secrets: Iterable[str] = ()) -> None:
        if not secret:
            raise ConfigError("the webhook needs STRIPE_WEBHOOK_SECRET (the endpoint's signing secret, whsec_...)")
        self._secret = secret
        self._on_event = on_event
        self._account = account
        self._livemode = livemode
        handler = self._make_handler()
        try:
            self.httpd: _Server = _Server((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"the webhook cannot listen on {host}:{port}: {exc.strerror or exc}; pick another "
                              "--webhook-port (setting webhook_port; 0 for a free one) or --webhook-host") from None
        self.httpd.daemon_threads = True
        self.httpd.secrets = tuple(s for s in (secret, *secrets) if s)
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="webhook", daemon=True)

    def configure(self, secret: str, account: str | None = None, livemode: bool | None = None,
                  secrets: Iterable[str] = ()) -> None:
        """Take a new signing secret, account and mode (the daemon's settings read again) from the next request on,
        listening on as before. A ConfigError, with nothing changed, for no secret."""
        if not secret:
            raise ConfigError("the webhook needs STRIPE_WEBHOOK_SECRET (the endpoint's signing secret, whsec_...)")
        self._secret, self._account, self._livemode = secret, account, livemode
        self.httpd.secrets = tuple(s for s in (secret, *secrets) if s)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> WebhookServer:
        self._thread.start()
        log.info("webhook listening on %s", self.url)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = READ_TIMEOUT_S  # socket timeout for every read: an idle client does not hold a thread

            def setup(self) -> None:
                super().setup()
                # (send_response and the access log read these, set once the request line is parsed: a 408 may
                # come before it, as the 414 of handle_one_request does)
                self.requestline = self.request_version = self.command = ""
                self._replied = False
                # socketserver's reader is replaced by one that keeps the request's deadline (one request a
                # connection: every answer closes it)
                self.rfile.close()
                self._reader = _DeadlineReader(self.connection, read_timeout=self.timeout or READ_TIMEOUT_S,
                                               deadline=time.monotonic() + server.httpd.request_deadline_s)
                self.rfile = io.BufferedReader(self._reader)

            def handle_one_request(self) -> None:
                super().handle_one_request()  # (a read timeout ends it: the connection is to be closed)
                if self._reader.expired and not self._replied:
                    server.httpd.warn_refused(f"refused a request not received within "
                                              f"{server.httpd.request_deadline_s} s (408)")
                    self.close_connection = True
                    with contextlib.suppress(OSError):  # (gone meanwhile)
                        self._reply(408, "request not received in time")
                # (a client that merely stopped sending for READ_TIMEOUT_S is taken for gone: closed silently)

            def log_message(self, format: str, *args: object) -> None:
                # The standard library escapes control characters of what it logs (request lines are the
                # client's): so does this, which replaces its logging.
                log.debug("webhook %s", _printable(format % args, LOGGED_LINE_MAX))

            def _reply(self, code: int, message: str, with_body: bool = True) -> None:
                self._replied = True
                # (the last read may have left the socket a timeout of a few milliseconds, the deadline's rest)
                self.connection.settimeout(self.timeout)
                body = json.dumps({"message": message}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if code == 405:
                    self.send_header("Allow", "POST")
                self.send_header("Connection", "close")
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self._reply(405, "POST only")

            do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

            def do_HEAD(self) -> None:  # (GET's answer without its body)
                self._reply(405, "POST only", with_body=False)

            def do_POST(self) -> None:
                # (refused before the signature is checked, but may be a delivery of Stripe's that no sync follows:
                # logged as every refusal is)
                if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length") is None:
                    server.httpd.warn_refused("refused a request without a Content-Length (411)")
                    self._reply(411, "Content-Length required")
                    return
                try:
                    length = int(self.headers.get("Content-Length") or "")
                except ValueError:
                    length = -1
                if length < 0:
                    server.httpd.warn_refused("refused a request with a bad Content-Length (400)")
                    self._reply(400, "bad Content-Length")
                    return
                if length > MAX_BODY:
                    server.httpd.warn_refused(f"refused a request over {MAX_BODY // (1 << 20)} MiB (413)")
                    self._reply(413, "body too large")
                    return
                try:
                    payload = self.rfile.read(length)
                except OSError:  # the client stopped sending (timeout, 408 past the deadline) or went away
                    self.close_connection = True
                    return
                try:
                    _check_signature_header(self.headers.get("Stripe-Signature") or "")
                    stripe.WebhookSignature.verify_header(payload.decode("utf-8"),
                                                          self.headers.get("Stripe-Signature"),
                                                          server._secret, tolerance=TOLERANCE_S)
                except (stripe.SignatureVerificationError, ValueError):  # (UnicodeDecodeError is a ValueError)
                    server.httpd.warn_refused("refused a request without a valid signature")
                    self._reply(400, "invalid signature")
                    return
                try:
                    event = json.loads(payload)
                    etype = event["type"]
                    if not isinstance(etype, str):
                        raise TypeError
                except (ValueError, KeyError, TypeError, RecursionError):  # (RecursionError: nested too deep)
                    # (signed with the endpoint's secret, so from Stripe or from someone who holds the secret)
                    server.httpd.warn_refused("refused a signed request whose body is not a Stripe event (no JSON "
                                              "object with a type)")
                    self._reply(400, "not a Stripe event")
                    return
                other = server._other_account_or_mode(event)
                wanted = triggers_sync(etype)
                if wanted and other:
                    log.debug("webhook: %s of %s, ignored", _printable(etype, LOGGED_TYPE_MAX), other)
                    self._reply(200, f"ignored: {other}")
                elif wanted:
                    # (it is logged and becomes the sync's reason, kept in the daemon's state file: escaped and cut)
                    etype = _printable(etype, LOGGED_TYPE_MAX)
                    log.info("webhook: %s, sync scheduled", etype)
                    server._on_event(etype)
                    self._reply(200, "sync scheduled")
                else:
                    self._reply(200, "ignored")

        return Handler

    def _other_account_or_mode(self, event: dict[str, Any]) -> str | None:
        """What makes ``event`` another account's or mode's than the one synced ("another account", "test mode"),
        or None when it is of the account and mode synced (or does not say)."""
        # (an event to an endpoint that listens to connected accounts names the one it is of; one to an endpoint of
        # an account itself names none: the account synced, when it made the endpoint)
        account = event.get("account")
        if account is not None and account != self._account:
            return "another account"
        livemode = event.get("livemode")
        if self._livemode is not None and isinstance(livemode, bool) and livemode != self._livemode:
            return "live mode" if livemode else "test mode"
        return None


class _DeadlineReader(io.RawIOBase):
    """A connection's reads, each with the per-read timeout cut to what is left of the request's deadline: a
    client sending a byte every few seconds never trips a per-read timeout alone. A read the deadline ends
    raises TimeoutError, as a per-read timeout does, and sets ``expired``."""

    def __init__(self, sock: socket.socket, read_timeout: float, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._read_timeout = read_timeout
        self._deadline = deadline
        self.expired = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            self.expired = True
            raise TimeoutError("the request's deadline has passed")
        self._sock.settimeout(min(self._read_timeout, left))
        try:
            return self._sock.recv_into(buffer)
        except TimeoutError:
            self.expired = left <= self._read_timeout
            raise


def _printable(text: str, limit: int) -> str:
    """``text`` fit for one log line: unprintable characters (controls, line separators) escaped as Python
    writes them (``\\n``, ``\\x00``, ``\\u2028``), a backslash doubled so that no escape can be forged, and
    at most ``limit`` characters, the last an ellipsis when cut."""
    head = text[:limit + 1]  # (escaping only lengthens: what is past this is cut anyway)
    out = "".join(c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii") for c in head)
    return out if len(out) <= limit else out[:limit - 1] + "\u2026"


def _check_signature_header(header: str) -> None:
    """Refuses what the SDK would not refuse cleanly: a non-ASCII header (header bytes arrive as latin-1 text,
    and the SDK's constant-time comparison raises TypeError on non-ASCII text), and a timestamp too far ahead
    (the SDK refuses signatures older than the tolerance only)."""
    if not header.isascii():
        raise ValueError("non-ASCII Stripe-Signature")
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                at = int(value)
            except ValueError:
                raise ValueError("bad timestamp in Stripe-Signature") from None
            if at > time.time() + TOLERANCE_S:
                raise ValueError("Stripe-Signature timestamp is in the future")
