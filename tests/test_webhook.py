"""Webhook trigger: signed subscription/invoice events schedule a sync; anything else is refused or ignored."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import select
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from stripe_churn import webhook
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


# Events of what the sync stores and the metrics read (design.md 3-5): each starts a sync
SYNCING = ["invoice.paid", "invoice.voided", "customer.subscription.updated", "customer.subscription.deleted",
           # (a discount starting or ending is a movement)
           "customer.discount.created", "customer.discount.updated", "customer.discount.deleted",
           # (segments by country and metadata; a deleted customer)
           "customer.created", "customer.updated", "customer.deleted",
           "credit_note.created", "credit_note.voided", "invoiceitem.created", "invoiceitem.deleted",
           # (family and unit_label decide labels; prices and the older plans the MRR; coupons a discount's terms)
           "product.updated", "product.deleted", "price.created", "price.updated", "plan.updated",
           "coupon.created", "coupon.updated", "coupon.deleted"]
# Events of nothing the sync stores: answered 200, and no sync
IGNORED = ["charge.succeeded", "charge.refunded", "payment_intent.succeeded", "payment_method.attached",
           "customer.source.created", "customer.tax_id.created", "customer.card.updated", "invoice_payment.paid",
           "subscription_schedule.updated", "promotion_code.created", "payout.paid", "customer", "invoiceitems",
           # (reminders ahead of an invoice or a trial's end: nothing stored has changed yet)
           "invoice.upcoming", "invoice.will_be_due", "customer.subscription.trial_will_end"]


@pytest.mark.parametrize("etype", SYNCING)
def test_valid_signature_triggers(server: tuple[WebhookServer, list[str]], etype: str) -> None:
    """Every event that changes what the metrics read starts a sync: only invoice.* and customer.subscription.*
    did, and a discount ended, a customer's country changed or a product's family set waited for the next tick."""
    srv, seen = server
    body = event(etype)
    assert post(srv, body, {"Stripe-Signature": sign(body)}) == 200
    assert seen == [etype]


@pytest.mark.parametrize("etype", IGNORED)
def test_other_event_type_is_accepted_but_triggers_nothing(server: tuple[WebhookServer, list[str]],
                                                           etype: str) -> None:
    srv, seen = server
    host, port = srv.httpd.server_address[:2]
    body = event(etype)
    conn = http.client.HTTPConnection(str(host), port, timeout=5)
    try:
        conn.request("POST", "/", body=body, headers={"Stripe-Signature": sign(body)})
        response = conn.getresponse()
        assert (response.status, json.loads(response.read())["message"]) == (200, "ignored")
    finally:
        conn.close()
    assert seen == []


def test_every_object_the_sync_applies_from_events_has_events_that_sync() -> None:
    """The trigger set follows what the sync stores: each object type an incremental sync applies from its events
    (streams.OBJECT_TABLE), and the pending invoice items it lists, has its change events start a sync. A type
    added there without an event here fails (the mapping below names each one's events)."""
    from stripe_churn.stripe_api.streams import OBJECT_TABLE

    events_of = {"customer": "customer", "product": "product", "price": "price", "plan": "plan", "coupon": "coupon",
                 "subscription": "customer.subscription", "invoice": "invoice", "credit_note": "credit_note",
                 "discount": "customer.discount", "invoiceitem": "invoiceitem"}
    for kind in [*OBJECT_TABLE, "invoiceitem"]:
        for change in ("created", "updated", "deleted"):
            assert webhook.triggers_sync(f"{events_of[kind]}.{change}"), (kind, change)


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


@pytest.mark.parametrize("head", [
    pytest.param(f"Content-Length: {MAX_BODY + 1}\r\n", id="over-1-mib-413"),
    pytest.param("Transfer-Encoding: chunked\r\n", id="no-length-411"),
    pytest.param("Content-Length: -5\r\n", id="bad-length-400"),
])
def test_a_body_refused_for_its_size_is_logged_as_a_refusal(server: tuple[WebhookServer, list[str]], head: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """README: refusals are logged (one WARNING a minute for each reason). A delivery refused for its size or its
    Content-Length was answered and forgotten: no sync followed, and only the DEBUG log showed it."""
    srv, seen = server
    host, port = srv.httpd.server_address[:2]
    with caplog.at_level(logging.WARNING, logger="stripe_churn.webhook"):
        for _ in range(2):
            with socket.create_connection((str(host), port), timeout=5) as sock:
                sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,v1=00\r\n{head}\r\n".encode())
                assert sock.recv(100).split(b" ")[1] in (b"413", b"411", b"400")
    assert seen == []
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "refused a request" in warned[0], warned  # (the second within the minute: counted)


@pytest.mark.parametrize("body", [b"[1, 2, 3]", b"not json", b'{"id": "evt_1"}', b'{"type": null}',
                                  b"[" * 100_000, b'{"type": ' * 100_000],
                         ids=["list", "not-json", "no-type", "null-type", "deep-list", "deep-object"])
def test_a_signed_body_that_is_no_event_is_said_so(server: tuple[WebhookServer, list[str]], body: bytes,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Validly signed, but not a Stripe event: refused, and the log says that, not that the signature was bad."""
    srv, seen = server
    with caplog.at_level(logging.WARNING, logger="stripe_churn.webhook"):
        assert post(srv, body, {"Stripe-Signature": sign(body)}) == 400
    assert seen == []
    assert "not a Stripe event" in caplog.text and "valid signature" not in caplog.text
    # (a body nested past the parser's recursion limit was a RecursionError: no answer and a traceback)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_a_client_that_went_away_is_one_debug_line_not_a_traceback(
        server: tuple[WebhookServer, list[str]], capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """A client refused early (413) often closes before reading the answer, and the answer's write then meets a
    reset: socketserver would print that traceback on stderr. The server logs one DEBUG line instead, and anything
    else as one ERROR line (the secrets masked) with its traceback at DEBUG."""
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
    assert [(r.levelno, r.exc_info is not None) for r in caplog.records] == [(logging.ERROR, False),
                                                                            (logging.DEBUG, True)]
    assert "RuntimeError: a bug" in caplog.records[0].getMessage()
    # (end to end: clients that reset the connection right after an oversized request print nothing either)
    host, port = srv.httpd.server_address[:2]
    for _ in range(20):
        with socket.create_connection((str(host), port), timeout=5) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode())
    time.sleep(0.2)
    assert capfd.readouterr().err == ""


def test_a_request_that_fails_is_one_error_line_without_a_secret(caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected failure while a request is handled was logged at ERROR with its traceback, over dozens of
    lines that the journal keeps apart, and with whatever the error's message holds: one line now, the webhook
    secret and the other secrets given masked, the traceback at DEBUG."""
    key = "rk_live_51WebhookFailureKey0123"

    def on_event(etype: str) -> None:
        raise RuntimeError(f"cannot schedule {etype}\nwith {key} and {SECRET} at hand")

    srv = WebhookServer(SECRET, on_event, port=0, secrets=[key]).start()
    try:
        caplog.set_level(logging.DEBUG, logger="stripe_churn.webhook")
        body = event("invoice.paid")
        with pytest.raises((http.client.HTTPException, OSError)):  # (no answer: the connection is closed)
            post(srv, body, {"Stripe-Signature": sign(body)})
        deadline = time.monotonic() + 5
        while not any(r.levelno == logging.ERROR for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        srv.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR and errors[0].exc_info is None, caplog.text
    line = logging.Formatter("%(levelname)s %(name)s: %(message)s").format(errors[0])
    assert "\n" not in line and "RuntimeError: cannot schedule invoice.paid" in line, line
    assert key not in line and SECRET not in line and "********" in line, line
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records)  # (the traceback)


def test_a_non_ascii_signature_is_one_bad_signature(server: tuple[WebhookServer, list[str]],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Header bytes arrive as latin-1 text; the SDK's constant-time comparison raises TypeError on non-ASCII
    text, which dropped the connection with an ERROR traceback per request."""
    srv, seen = server
    body = event("invoice.paid")
    with caplog.at_level(logging.WARNING, logger="stripe_churn.webhook"):
        assert post(srv, body, {"Stripe-Signature": f"t={int(time.time())},v1=\xe9\xe9"}) == 400
    assert seen == []
    assert [(r.levelno, r.exc_info) for r in caplog.records] == [(logging.WARNING, None)]
    assert "valid signature" in caplog.text


def test_an_event_type_is_made_fit_for_the_log_before_it_is_logged_or_passed_on(
        server: tuple[WebhookServer, list[str]], caplog: pytest.LogCaptureFixture) -> None:
    """A signed event's type is logged and becomes the sync's reason (stored in the daemon's state file):
    control characters come escaped and a huge type is cut, so neither can forge log lines or bloat the state."""
    srv, seen = server
    caplog.set_level(logging.INFO, logger="stripe_churn.webhook")
    forged = "invoice.paid\r\n2024-01-01 ERROR forged\x00\x1b[2J\u2028\\n"
    for etype in (forged, "invoice.paid" + "x" * 500_000, "customer.subscription.updated"):
        body = event(etype)
        assert post(srv, body, {"Stripe-Signature": sign(body)}) == 200
    assert seen[0] == "invoice.paid\\r\\n2024-01-01 ERROR forged\\x00\\x1b[2J\\u2028\\\\n"
    assert seen[1] == "invoice.paid" + "x" * 87 + "\u2026" and len(seen[1]) == webhook.LOGGED_TYPE_MAX
    assert seen[2] == "customer.subscription.updated"  # (a real type is left alone)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and all(len(m) < 200 and m.isprintable() for m in messages)


def test_request_lines_are_logged_escaped(server: tuple[WebhookServer, list[str]],
                                          caplog: pytest.LogCaptureFixture) -> None:
    """The standard library escapes control characters of request lines in what it logs; so does the DEBUG
    line that replaces its logging."""
    srv, _ = server
    caplog.set_level(logging.DEBUG, logger="stripe_churn.webhook")
    host, port = srv.httpd.server_address[:2]
    for line, code in ((b"GET /\x1b[2J\x00\r HTTP/1.0", b"405"), (b"\x1b[2J\x07 / HTTP/1.0", b"501")):
        with socket.create_connection((str(host), port), timeout=5) as sock:
            sock.sendall(line + b"\r\n\r\n")
            assert sock.recv(100).split(b" ")[1] == code
    time.sleep(0.1)  # (the access line is logged after the answer is sent)
    messages = [r.getMessage() for r in caplog.records]
    assert any("\\x1b[2J\\x00" in m for m in messages) and any("\\x07" in m for m in messages)
    assert all(m.isprintable() for m in messages), messages


def _trickle(srv: WebhookServer, head: bytes, pace: float = 0.1, give_up: float = 3.0) -> tuple[bytes, float]:
    """Send ``head``, then one byte every ``pace`` seconds until the server answers or closes; its first bytes
    and the time it took."""
    host, port = srv.httpd.server_address[:2]
    with socket.create_connection((str(host), port), timeout=5) as sock:
        t0 = time.monotonic()
        sock.sendall(head)
        while time.monotonic() - t0 < give_up:
            readable, _, _ = select.select([sock], [], [], pace)
            if readable:
                return sock.recv(200), time.monotonic() - t0
            sock.sendall(b"x")
        return b"", time.monotonic() - t0


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_slow_client_is_cut_off_at_the_request_deadline(server: tuple[WebhookServer, list[str]], phase: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Each read has its own timeout, but a client trickling a byte every so often never trips it: the whole
    request (headers and body) has a deadline, after which it gets 408 and the connection is closed."""
    srv, seen = server
    srv.httpd.request_deadline_s = 0.4
    head = b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: " if phase == "headers" else (
        b"POST / HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,v1=00\r\nContent-Length: 1000\r\n\r\n")
    with caplog.at_level(logging.WARNING, logger="stripe_churn.webhook"):
        reply, took = _trickle(srv, head)
    assert reply.startswith(b"HTTP/1.0 408 "), reply
    assert 0.4 <= took < 2
    assert "408" in caplog.text and seen == []


def test_connections_beyond_the_cap_get_503_at_once(server: tuple[WebhookServer, list[str]],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Each connection being handled holds a thread (and up to 1 MiB of body): past the cap, a connection is
    answered 503 with Retry-After and closed before anything of it is read; a slot freed serves again."""
    srv, seen = server
    srv.httpd.max_handlers = 2
    host, port = srv.httpd.server_address[:2]
    held = [socket.create_connection((str(host), port), timeout=5) for _ in range(2)]
    try:
        for sock in held:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")  # (headers not finished: the handler waits)
        with caplog.at_level(logging.WARNING, logger="stripe_churn.webhook"), \
                socket.create_connection((str(host), port), timeout=2) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
            reply = b""
            while chunk := sock.recv(1000):  # (till the server closes: a 2 s timeout if it does not)
                reply += chunk
        status, _, rest = reply.partition(b"\r\n")
        assert status == b"HTTP/1.0 503 Service Unavailable" and b"\r\nRetry-After: " in b"\r\n" + rest
        assert "503" in caplog.text
        # (more refused within the minute: no more WARNING lines, anyone can open connections)
        for _ in range(5):
            with socket.create_connection((str(host), port), timeout=2) as extra:
                while extra.recv(1000):
                    pass
        assert sum("503" in r.getMessage() for r in caplog.records) == 1
    finally:
        for sock in held:
            sock.close()
    body = event("invoice.paid")
    deadline = time.monotonic() + 5

    def delivered() -> int:
        try:
            return post(srv, body, {"Stripe-Signature": sign(body)})
        except OSError:  # (refused while the held connections' threads still end: closed under the sender's feet)
            return 503

    while (status_code := delivered()) == 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status_code == 200 and seen == ["invoice.paid"]


def test_needs_a_secret() -> None:
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRET"):
        WebhookServer("", lambda _: None)


def test_an_event_of_another_account_or_mode_is_answered_ignored() -> None:
    seen: list[str] = []
    srv = WebhookServer(SECRET, seen.append, port=0, account="acct_1", livemode=False).start()
    try:
        host, port = srv.httpd.server_address[:2]
        answers = []
        for fields in ({"account": "acct_2", "livemode": False}, {"livemode": False},
                       {"account": "acct_1", "livemode": True}, {"account": "acct_1"},
                       {"account": "acct_1", "livemode": False}):
            body = json.dumps({"id": "evt_1", "object": "event", "type": "invoice.paid", **fields}).encode()
            conn = http.client.HTTPConnection(str(host), port, timeout=5)
            try:
                conn.request("POST", "/", body=body, headers={"Stripe-Signature": sign(body)})
                response = conn.getresponse()
                answers.append((response.status, json.loads(response.read())["message"]))
            finally:
                conn.close()
    finally:
        srv.stop()
    # (an event that names no account is of the account itself, to an endpoint it made; one that does not say its
    # mode is taken)
    assert answers == [(200, "ignored: another account"), (200, "sync scheduled"),
                       (200, "ignored: live mode"), (200, "sync scheduled"), (200, "sync scheduled")]
    assert seen == ["invoice.paid"] * 3


def test_refused_requests_are_one_warning_a_minute(server: tuple[WebhookServer, list[str]],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Anyone who reaches the port can send requests with no valid signature: each was a WARNING line, so a scanner
    flooded the log (and the journal's rate limit then drops the daemon's own lines). One line a minute at most,
    with how many were refused since; each request is still answered 400. (The server's clock is the test's: the
    20 requests come within one minute however slowly a loaded machine sends them; with a one-second minute of real
    time, 20 requests that took longer than it made a third line.)"""
    srv, seen = server
    now = [1000.0]
    srv.httpd.clock = lambda: now[0]  # type: ignore[method-assign]
    body = event("invoice.paid")
    with caplog.at_level(logging.WARNING, logger="stripe_churn.webhook"):
        for _ in range(20):
            assert post(srv, body, {"Stripe-Signature": sign(body, "whsec_other")}) == 400
            now[0] += (webhook.REFUSED_LOG_EVERY_S - 1) / 20  # (all within the minute of the first line)
        now[0] = 1000.0 + webhook.REFUSED_LOG_EVERY_S
        assert post(srv, body, {}) == 400
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all("without a valid signature" in line for line in lines), lines
    assert lines[1].endswith("(20 such requests since the last such line)")
    assert seen == []
