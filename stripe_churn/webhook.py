"""Optional webhook trigger: a signed invoice.* or customer.subscription.* event schedules an incremental sync.

Signatures are checked with the Stripe SDK (tolerance 300 s, both ways: a replayed old delivery and a
timestamp from the future are refused); anything unsigned, wrongly signed, stale, oversized or without a
declared length is refused and triggers nothing, and a client that stops sending is cut off after
``READ_TIMEOUT_S``. Several events close together become one sync (the caller debounces).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import stripe

from stripe_churn.errors import ConfigError

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
TOLERANCE_S = 300
READ_TIMEOUT_S = 10.0
TRIGGER_PREFIXES = ("invoice.", "customer.subscription.")


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: tuple[str, int] | object) -> None:
        """A client that went away mid-request (a reset, a broken pipe: one refused early often closes before
        reading the answer) is no error of ours: one DEBUG line, not the traceback socketserver prints on stderr.
        Anything else is logged with its traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("webhook: the client went away mid-request (%s)", exc)
            return
        log.exception("webhook: a request failed")


class WebhookServer:
    """HTTP server on a thread; calls ``on_event(event_type)`` for each verified event that should sync."""

    def __init__(self, secret: str, on_event: Callable[[str], None], host: str = "127.0.0.1", port: int = 0) -> None:
        if not secret:
            raise ConfigError("the webhook needs STRIPE_WEBHOOK_SECRET (the endpoint's signing secret, whsec_...)")
        self._secret = secret
        self._on_event = on_event
        handler = self._make_handler()
        try:
            self.httpd = _Server((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"the webhook cannot listen on {host}:{port}: {exc.strerror or exc}; pick another "
                              "--webhook-port (setting webhook_port; 0 for a free one) or --webhook-host") from None
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="webhook", daemon=True)

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

            def log_message(self, format: str, *args: object) -> None:
                log.debug("webhook %s", format % args)

            def _reply(self, code: int, message: str, with_body: bool = True) -> None:
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
                if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length") is None:
                    self._reply(411, "Content-Length required")
                    return
                try:
                    length = int(self.headers.get("Content-Length") or "")
                except ValueError:
                    length = -1
                if length < 0:
                    self._reply(400, "bad Content-Length")
                    return
                if length > MAX_BODY:
                    self._reply(413, "body too large")
                    return
                try:
                    payload = self.rfile.read(length)
                except OSError:  # the client stopped sending (timeout) or went away
                    self.close_connection = True
                    return
                try:
                    _check_not_future(self.headers.get("Stripe-Signature") or "")
                    stripe.WebhookSignature.verify_header(payload.decode("utf-8"),
                                                          self.headers.get("Stripe-Signature"),
                                                          server._secret, tolerance=TOLERANCE_S)
                except (stripe.SignatureVerificationError, ValueError):  # (UnicodeDecodeError is a ValueError)
                    log.warning("webhook: refused a request without a valid signature")
                    self._reply(400, "invalid signature")
                    return
                try:
                    event = json.loads(payload)
                    etype = event["type"]
                    if not isinstance(etype, str):
                        raise TypeError
                except (ValueError, KeyError, TypeError):
                    # (signed with the endpoint's secret, so from Stripe or from someone who holds the secret)
                    log.warning("webhook: refused a signed request whose body is not a Stripe event (no JSON object "
                                "with a type)")
                    self._reply(400, "not a Stripe event")
                    return
                if etype.startswith(TRIGGER_PREFIXES):
                    log.info("webhook: %s, sync scheduled", etype)
                    server._on_event(etype)
                    self._reply(200, "sync scheduled")
                else:
                    self._reply(200, "ignored")

        return Handler


def _check_not_future(header: str) -> None:
    """The SDK refuses signatures older than the tolerance; a timestamp too far ahead is refused here."""
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                at = int(value)
            except ValueError:
                raise ValueError("bad timestamp in Stripe-Signature") from None
            if at > time.time() + TOLERANCE_S:
                raise ValueError("Stripe-Signature timestamp is in the future")
