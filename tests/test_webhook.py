"""Webhook trigger: signed subscription/invoice events schedule a sync; anything else is refused or ignored."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from stripe_churn.errors import ConfigError
from stripe_churn.webhook import MAX_BODY, WebhookServer

SECRET = "whsec_test_secret"


def sign(payload: bytes, secret: str = SECRET, at: int | None = None) -> str:
    ts = int(time.time()) if at is None else at
    sig = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={sig}"


@pytest.fixture
def server() -> Iterator[tuple[WebhookServer, list[str]]]:
    seen: list[str] = []
    srv = WebhookServer(SECRET, seen.append, port=0).start()
    try:
        yield srv, seen
    finally:
        srv.stop()


def post(srv: WebhookServer, body: bytes, headers: dict[str, str] | None = None,
         method: str = "POST") -> int:
    host, port = srv.httpd.server_address[:2]
    conn = http.client.HTTPConnection(str(host), port, timeout=5)
    try:
        conn.request(method, "/", body=body, headers=headers or {})
        return conn.getresponse().status
    finally:
        conn.close()


def event(etype: str) -> bytes:
    return json.dumps({"id": "evt_1", "object": "event", "type": etype, "data": {"object": {}}}).encode()


def test_bound_to_loopback(server: tuple[WebhookServer, list[str]]) -> None:
    assert server[0].httpd.server_address[0] == "127.0.0.1"


@pytest.mark.parametrize("etype", ["invoice.paid", "customer.subscription.updated", "customer.subscription.deleted"])
def test_valid_signature_triggers(server: tuple[WebhookServer, list[str]], etype: str) -> None:
    srv, seen = server
    body = event(etype)
    assert post(srv, body, {"Stripe-Signature": sign(body)}) == 200
    assert seen == [etype]


def test_other_event_type_is_accepted_but_triggers_nothing(server: tuple[WebhookServer, list[str]]) -> None:
    srv, seen = server
    body = event("charge.succeeded")
    assert post(srv, body, {"Stripe-Signature": sign(body)}) == 200
    assert seen == []


@pytest.mark.parametrize("case", ["unsigned", "wrong_secret", "stale", "tampered", "garbage_header"])
def test_refused_without_a_valid_signature(server: tuple[WebhookServer, list[str]], case: str) -> None:
    srv, seen = server
    body = event("invoice.paid")
    headers = {
        "unsigned": {},
        "wrong_secret": {"Stripe-Signature": sign(body, "whsec_other")},
        "stale": {"Stripe-Signature": sign(body, at=int(time.time()) - 301)},
        "tampered": {"Stripe-Signature": sign(event("invoice.created"))},
        "garbage_header": {"Stripe-Signature": "nonsense"},
    }[case]
    assert post(srv, body, headers) == 400
    assert seen == []


def test_oversized_body_and_wrong_method(server: tuple[WebhookServer, list[str]]) -> None:
    srv, seen = server
    # Declared size over the limit: answered 413 before the body is read (the client may still be sending).
    host, port = srv.httpd.server_address[:2]
    with socket.create_connection((str(host), port), timeout=5) as sock:
        sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,v1=00\r\n"
                     f"Content-Length: {MAX_BODY + 1}\r\n\r\n".encode() + b"{" * 1024)
        assert sock.recv(100).startswith(b"HTTP/1.0 413")
    assert post(srv, b"", method="GET") == 405
    # (HEAD and OPTIONS were 501 with an HTML page)
    assert post(srv, b"", method="HEAD") == 405 and post(srv, b"", method="OPTIONS") == 405
    assert seen == []


@pytest.mark.parametrize("body", [b"[1, 2, 3]", b"not json", b'{"id": "evt_1"}', b'{"type": null}'])
def test_a_signed_body_that_is_no_event_is_said_so(server: tuple[WebhookServer, list[str]], body: bytes,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Validly signed, but not a Stripe event: refused, and the log says that, not that the signature was bad."""
    srv, seen = server
    with caplog.at_level(logging.WARNING, logger="stripe_churn.webhook"):
        assert post(srv, body, {"Stripe-Signature": sign(body)}) == 400
    assert seen == []
    assert "not a Stripe event" in caplog.text and "valid signature" not in caplog.text


def test_a_client_that_went_away_is_one_debug_line_not_a_traceback(
        server: tuple[WebhookServer, list[str]], capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """A client refused early (413) often closes before reading the answer, and the answer's write then meets a
    reset: socketserver would print that traceback on stderr. The server logs one DEBUG line instead, and still
    logs anything else with its traceback."""
    srv, _ = server
    caplog.set_level(logging.DEBUG, logger="stripe_churn.webhook")
    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError:
        srv.httpd.handle_error(None, ("127.0.0.1", 1))
    assert capfd.readouterr().err == ""
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert "went away" in caplog.records[0].getMessage()
    caplog.clear()
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        srv.httpd.handle_error(None, ("127.0.0.1", 1))
    assert [(r.levelno, r.exc_info is not None) for r in caplog.records] == [(logging.ERROR, True)]
    # (end to end: clients that reset the connection right after an oversized request print nothing either)
    host, port = srv.httpd.server_address[:2]
    for _ in range(20):
        with socket.create_connection((str(host), port), timeout=5) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode())
    time.sleep(0.2)
    assert capfd.readouterr().err == ""


def test_needs_a_secret() -> None:
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRET"):
        WebhookServer("", lambda _: None)
