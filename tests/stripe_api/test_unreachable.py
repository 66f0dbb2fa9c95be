"""A server that cannot be reached, through the SDK's aiohttp client as a sync uses it: nothing listening, a host
name that does not resolve, a failed TLS handshake, no answer in time. Each is one line that names the base URL
and what to check, where the SDK's own words named only an exception's class ("A ClientConnectorError was
raised"). Nothing here leaves the machine: a closed port on 127.0.0.1, a resolver that knows no name, local
servers."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from stripe_churn.cli import cli
from stripe_churn.errors import FatalError, StripeAPIError, TLSError, TransientError
from stripe_churn.settings import Secret, Settings, load_settings
from stripe_churn.stripe_api.client import StripeRaw

KEY = "sk_test_" + "unreachable0123456789"


def closed_port() -> int:
    """A port of 127.0.0.1 where nothing listens (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port of 127.0.0.1 that takes connections and never says a word (the kernel completes a connection to a
    listening socket in its backlog, accepted or not: the client waits for its answer)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield int(server.getsockname()[1])


class _CountingHTTPServer(http.server.HTTPServer):
    """A plain HTTP server (no TLS) that counts the connections it takes."""

    connections = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections += 1  # (before any answer: a client sees its error only after this)
        super().process_request(request, client_address)


@pytest.fixture
def http_server() -> Iterator[_CountingHTTPServer]:
    """A plain HTTP server (no TLS) on a port of 127.0.0.1, which an https:// base URL cannot handshake with."""

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = _CountingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def fetch(settings: Settings, expected: type[Exception] = StripeAPIError) -> str:
    """The one-line error of GET /v1/account through the aiohttp client a sync uses."""

    async def go() -> None:
        async with StripeRaw(settings) as raw:
            await raw.account_id(None)

    with pytest.raises(expected) as info:
        asyncio.run(go())
    message = str(info.value)
    assert "\n" not in message and KEY not in message and "was raised" not in message, message
    return message


def settings(base: str, **kw: Any) -> Settings:
    return Settings(api_key=Secret(KEY), api_base=base, max_retries=0, rate_limit=1000.0, **kw)


def test_nothing_listening_names_the_base_url_and_says_what_to_check() -> None:
    base = f"http://127.0.0.1:{closed_port()}"
    message = fetch(settings(base))
    assert message == (f"nothing is listening at {base} (connection refused) for GET /v1/account after 0 retries: "
                       "check STRIPE_API_BASE (setting api_base) and that the server is up (`stripe-churn sandbox` "
                       "serves the built-in one), then run the sync again; the store keeps what was committed"), message


def test_a_host_name_that_does_not_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "api.stripe.invalid":  # (no resolver is asked: the name is refused here)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    message = fetch(load_settings(env={"STRIPE_API_KEY": KEY, "STRIPE_API_BASE": "https://api.stripe.invalid"},
                                  overrides={"max_retries": 0}))
    assert message.startswith("the host name api.stripe.invalid of https://api.stripe.invalid was not found (DNS) "
                              "for GET /v1/account after 0 retries: check the environment variable STRIPE_API_BASE "
                              "for a typo"), message


@pytest.mark.parametrize("what", ["refused", "dns"])
def test_an_aiohttp_without_its_dns_error_class_says_the_same(monkeypatch: pytest.MonkeyPatch, what: str) -> None:
    """pyproject takes aiohttp 3.9 on, and aiohttp.ClientConnectorDNSError came with 3.10.10: under an older one, a
    refused connection (or any other not a TLS one) failed with "module 'aiohttp' has no attribute
    'ClientConnectorDNSError'" instead of its line. Its failed lookup is a ClientConnectorError that keeps the
    resolver's gaierror, read as a lookup all the same."""
    monkeypatch.delattr(aiohttp, "ClientConnectorDNSError")  # (aiohttp's own modules import it by themselves)
    if what == "refused":
        base = f"http://127.0.0.1:{closed_port()}"
        assert fetch(settings(base)).startswith(f"nothing is listening at {base} (connection refused) for GET")
        return
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "api.stripe.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    assert fetch(settings("https://api.stripe.invalid")).startswith(
        "the host name api.stripe.invalid of https://api.stripe.invalid was not found (DNS) for GET")


def test_a_tls_handshake_with_a_server_without_tls(http_server: _CountingHTTPServer) -> None:
    base = f"https://127.0.0.1:{http_server.server_address[1]}"
    message = fetch(settings(base), TLSError)
    assert message == (f"the TLS handshake with {base} failed (WRONG_VERSION_NUMBER) for GET /v1/account: check "
                       "STRIPE_API_BASE (setting api_base) (http:// for a server without TLS, such as the sandbox), "
                       "else this machine's CA certificates and clock, then run the sync again; the store keeps what "
                       "was committed"), message
    # (a person must act: the daemon waits for its next scheduled run instead of trying again within minutes)
    assert issubclass(TLSError, FatalError) and not issubclass(TLSError, TransientError)


def test_a_failed_tls_handshake_is_not_tried_again(http_server: _CountingHTTPServer) -> None:
    """A server that speaks no TLS (or a certificate this machine does not trust) fails every try alike: the request
    was tried again max_retries times, each after a backoff (about 12 s with the default 6) before the line came.
    Now the line comes after the first try; retries are left to what may pass (nothing listening, a lookup, no
    answer in time, a dropped connection)."""
    base = f"https://127.0.0.1:{http_server.server_address[1]}"
    message = fetch(Settings(api_key=Secret(KEY), api_base=base, max_retries=3, rate_limit=1000.0), TLSError)
    assert message.startswith(f"the TLS handshake with {base} failed (WRONG_VERSION_NUMBER) for GET /v1/account: "
                              "check STRIPE_API_BASE (setting api_base)"), message
    assert http_server.connections == 1


def test_no_answer_in_time(silent_server: int) -> None:
    base = f"http://127.0.0.1:{silent_server}"
    message = fetch(settings(base, timeout_seconds=0.3))
    assert message.startswith(f"{base} gave no answer within 0.3 s (setting timeout_seconds) for GET /v1/account after "
                              "0 retries: check STRIPE_API_BASE (setting api_base), that the server is up"), message


def test_sync_against_nothing_is_one_line_naming_where_the_base_url_was_set(tmp_path: Path) -> None:
    """`sync` with no sandbox started (or a wrong port) in the config file: one line, no traceback, exit code 1."""
    base = f"http://127.0.0.1:{closed_port()}"
    config = tmp_path / "c.toml"
    config.write_text(f'api_base = "{base}"\nmax_retries = 0\ndb = "{tmp_path / "s.duckdb"}"\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["sync", "--config", str(config)],
                                env={"STRIPE_API_KEY": KEY, "STRIPE_API_BASE": None, "STRIPE_CHURN_DB": None,
                                     "STRIPE_CHURN_LOG_LEVEL": "WARNING"})
    assert result.exit_code == 1, result.output
    assert result.output == (f"error: nothing is listening at {base} (connection refused) for GET /v1/account after 0 "
                             f"retries: check api_base in {config} and that the server is up (`stripe-churn sandbox` "
                             "serves the built-in one), then run the sync again; the store keeps what was committed\n"), result.output


def test_sync_against_a_server_without_tls_exits_2(tmp_path: Path, http_server: _CountingHTTPServer) -> None:
    """An https:// base URL at a server without TLS (or behind a certificate this machine does not trust) is a setting
    to fix, not an outage to wait out: `sync` exits 2, as for a refused key or a bad setting, and a daemon takes it
    as fatal (no retry before its next scheduled run). It exited 1, and the daemon tried again 1, 2, 4 ... minutes
    later, meeting the same handshake each time."""
    base = f"https://127.0.0.1:{http_server.server_address[1]}"
    result = CliRunner().invoke(cli, ["sync"], env={"STRIPE_API_KEY": KEY, "STRIPE_API_BASE": base,
                                                    "STRIPE_CHURN_DB": str(tmp_path / "s.duckdb"),
                                                    "STRIPE_CHURN_LOG_LEVEL": "WARNING"})
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: the TLS handshake with {base} failed (WRONG_VERSION_NUMBER) for GET "
                                    "/v1/account: check the environment variable STRIPE_API_BASE"), result.output
    assert result.output.count("\n") == 1 and KEY not in result.output
