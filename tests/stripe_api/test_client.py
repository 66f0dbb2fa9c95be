"""The HTTP edge of the raw client, through the SDK's requests-based client under ``responses``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import requests
import responses
import stripe

from stripe_churn.errors import AuthError, BadResponseError, ConfigError, StripeAPIError
from stripe_churn.settings import Secret, Settings
from stripe_churn.stripe_api.client import API_VERSION, NotFoundError, StripeRaw, encode_params
from stripe_churn.stripe_api.ratelimit import TokenBucket

BASE = "http://stripe.test"
KEY = "sk_test_client_edge_key"
URL = f"{BASE}/v1/customers"
PAGE = b'{"object": "list", "data": [{"id": "cus_1", "object": "customer"}], "has_more": false}'


def client(max_retries: int = 3, account: str | None = None) -> StripeRaw:
    raw = StripeRaw(Settings(api_key=Secret(KEY), api_base=BASE, max_retries=max_retries, rate_limit=1000.0,
                             account=account), http_client=stripe.RequestsClient())
    raw._backoff = lambda attempt: 0.0  # type: ignore[method-assign]
    return raw


def get(raw: StripeRaw, path: str = "/v1/customers", params: dict[str, Any] | None = None) -> dict[str, Any]:
    return asyncio.run(raw.get(path, params))


@responses.activate
def test_page_parsed_and_headers_sent() -> None:
    responses.get(URL, body=PAGE)
    data = get(client(account="acct_123"), params={"limit": 100, "expand": ["data.discount"]})
    assert data["data"][0]["id"] == "cus_1"
    sent = responses.calls[0].request
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.headers["Stripe-Version"] == API_VERSION
    assert sent.headers["Stripe-Account"] == "acct_123"
    assert "expand%5B0%5D=data.discount" in str(sent.url) and "limit=100" in str(sent.url)


@responses.activate
def test_429_without_header_is_retried_and_slows_its_endpoint() -> None:
    responses.get(URL, status=429, json={"error": {"message": "rate"}})
    responses.get(URL, body=PAGE)
    raw = client()
    before = raw.limiter.endpoint("/v1/customers").rate
    assert get(raw)["data"]
    assert len(responses.calls) == 2
    assert raw.limiter.throttled == 1 and raw.limiter.endpoint("/v1/customers").rate < before
    assert raw.limiter.glob.rate == 1000.0  # one endpoint's 429 is that endpoint's limit


@responses.activate
def test_429_of_the_global_limit_slows_the_global_bucket() -> None:
    responses.get(URL, status=429, json={"error": {"message": "rate"}},
                  headers={"Stripe-Rate-Limited-Reason": "global-rate"})
    responses.get(URL, body=PAGE)
    raw = client()
    assert get(raw)["data"]
    assert raw.limiter.glob.rate == 500.0 and raw.limiter.endpoint("/v1/customers").rate == 250.0


@responses.activate
def test_429_lock_timeout_is_retried_without_slowing_anything() -> None:
    """A 429 of code lock_timeout is an object busy with another request, not a rate limit."""
    responses.get(URL, status=429, json={"error": {"code": "lock_timeout", "message": "locked"}})
    responses.get(URL, body=PAGE)
    raw = client()
    assert get(raw)["data"]
    assert len(responses.calls) == 2
    assert raw.limiter.throttled == 0 and raw.limiter.endpoint("/v1/customers").rate == 250.0
    assert raw.limiter.glob.rate == 1000.0


def paused(raw: StripeRaw) -> list[float]:
    """The waits ``raw`` makes before its retries, recorded instead of slept."""
    waits: list[float] = []

    async def pause(seconds: float, path: str) -> None:
        waits.append(seconds)

    raw._pause = pause  # type: ignore[method-assign]
    return waits


@pytest.mark.parametrize(("status", "headers", "wait"), [
    (429, {"Retry-After": "2"}, 2.0),
    (503, {"Retry-After": "1.5"}, 1.5),
    (429, {"Date": "Sat, 05 Dec 2026 20:00:00 GMT", "Retry-After": "Sat, 05 Dec 2026 20:00:03 GMT"}, 3.0),
    (429, {"Retry-After": "3600"}, 60.0),  # (at most a minute: longer waits the next run's turn)
    (429, {"Retry-After": "soon"}, 0.0),  # (unreadable: the backoff alone, 0 here)
    (429, {"Retry-After": "-5"}, 0.0),
    (429, {}, 0.0),
])
@responses.activate
def test_a_retry_waits_as_long_as_retry_after_asks(status: int, headers: dict[str, str], wait: float) -> None:
    """The SDK does not read Retry-After, and the backoff's first waits (0.125-0.5 s) come before the second a
    rate limiter (or a proxy) asks for: the retry was refused again, and the retries ran out. The wait before the
    next try is now at least what the answer asked, up to a minute."""
    responses.get(URL, status=status, headers=headers, json={"error": {"message": "slow down"}})
    responses.get(URL, body=PAGE)
    raw = client()
    waits = paused(raw)
    assert get(raw)["data"] and len(responses.calls) == 2
    assert waits == [wait]


@responses.activate
def test_should_retry_false_is_not_retried() -> None:
    responses.get(URL, status=429, headers={"Stripe-Should-Retry": "false"}, json={"error": {}})
    with pytest.raises(StripeAPIError, match="429"):
        get(client())
    assert len(responses.calls) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 409], ids=["500", "502", "503", "409-lock"])
@responses.activate
def test_server_errors_are_retried(status: int) -> None:
    responses.get(URL, status=status, json={"error": {}})
    responses.get(URL, body=PAGE)
    assert get(client())["data"]
    assert len(responses.calls) == 2


@responses.activate
def test_server_errors_give_up_after_max_retries() -> None:
    responses.get(URL, status=500, json={"error": {}})
    with pytest.raises(StripeAPIError, match="after 2 retries"):
        get(client(max_retries=2))
    assert len(responses.calls) == 3


@responses.activate
def test_connection_reset_is_retried() -> None:
    responses.get(URL, body=requests.ConnectionError("reset by peer"))
    responses.get(URL, body=PAGE)
    assert get(client())["data"]
    assert len(responses.calls) == 2


@pytest.mark.parametrize("body", [PAGE[: len(PAGE) // 2], b"<html><body>502 Bad Gateway</body></html>", b"[1, 2]"],
                         ids=["truncated", "html", "not-an-object"])
@responses.activate
def test_bad_bodies_are_retried_then_reported(body: bytes) -> None:
    responses.get(URL, body=body)
    with pytest.raises(BadResponseError) as info:
        get(client(max_retries=2))
    assert len(responses.calls) == 3
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("body", "said"), [
    (b'{"id": "cus_1", "balance": NaN}', "not JSON"),
    (b'{"id": "cus_1", "balance": 1e400}', "not JSON"),  # (beyond a double: no shape problem, no JSON we can read)
    (b'{"id": "cus_1", "name": "\\ud800"}', "not JSON"),  # (a lone surrogate)
    (b'{"id": "cus_1", "metadata": ' + b'{"a": ' * 5000 + b'1' + b'}' * 5000 + b'}', "nested too deeply"),
], ids=["nan", "beyond-a-double", "lone-surrogate", "nested-too-deeply"])
@responses.activate
def test_an_object_that_is_no_json_we_can_read_is_retried_then_named(body: bytes, said: str) -> None:
    responses.get(URL, body=body)
    with pytest.raises(BadResponseError, match=f"Stripe sent (a body that is|JSON) {said}.* after 1 retries") as info:
        get(client(max_retries=1))
    assert len(responses.calls) == 2
    assert "\n" not in str(info.value)


@responses.activate
def test_an_integer_beyond_64_bits_is_read_whole() -> None:
    """design.md 7 (raw as Stripe sent it): an object's integer beyond 64 bits comes back as that integer, not as
    the nearest double; the largest and smallest 64-bit ones too."""
    responses.get(URL, body=b'{"id": "cus_1", "balance": 100000000000000000000001, "a": -9223372036854775809, '
                            b'"b": 18446744073709551615, "c": -9223372036854775808, "d": 1.5}')
    got = get(client())
    assert got == {"id": "cus_1", "balance": 100000000000000000000001, "a": -9223372036854775809,
                   "b": 18446744073709551615, "c": -9223372036854775808, "d": 1.5}
    assert [type(got[k]) for k in ("balance", "a", "b", "c", "d")] == [int, int, int, int, float]


@responses.activate
def test_bad_body_then_good_one() -> None:
    responses.get(URL, body=PAGE[:20])
    responses.get(URL, body=PAGE)
    assert get(client())["data"]


@pytest.mark.parametrize("body", [PAGE[: len(PAGE) // 2], b'{"object": "list", "data": 5}', b"[1, 2]",
                                  b'{"message": "down for maintenance"}', b'{"object": "customer", "data": []}',
                                  b'{"object": "list", "has_more": false}',
                                  b'{"object": "list", "data": [{"id": "cus_1", "metadata": ' + b'{"a": ' * 5000 + b'1'
                                  + b'}' * 5000 + b'}], "has_more": false}'],
                         ids=["truncated", "data-not-a-list", "not-an-object", "another-json-object",
                              "not-a-list-object", "no-data", "nested-too-deeply"])
@responses.activate
def test_bad_list_pages_are_retried_then_reported(body: bytes) -> None:
    responses.get(URL, body=body)
    with pytest.raises(BadResponseError, match="after 2 retries") as info:
        asyncio.run(client(max_retries=2).get_page("/v1/customers"))
    assert len(responses.calls) == 3
    assert "\n" not in str(info.value)


@responses.activate
def test_list_page_gives_each_objects_own_compact_json() -> None:
    """Stripe indents its answers: the objects' bytes come out compact, and parse to the objects sent."""
    objs = [{"id": "cus_1", "object": "customer", "name": "A: b", "address": {"country": "DE"}},
            {"id": "cus_2", "object": "customer", "name": "\u00e9t\u00e9", "discount": None}]
    responses.get(URL, body=json.dumps({"object": "list", "data": objs, "has_more": True}, indent=2))
    page = asyncio.run(client().get_page("/v1/customers"))
    assert page.has_more is True
    assert [json.loads(bytes(r)) for r in page.data] == objs
    assert all(b"\n" not in bytes(r) and b'": ' not in bytes(r) for r in page.data)


@pytest.mark.parametrize("status", [401, 403])
@responses.activate
def test_refused_key_is_one_line_without_the_key(status: int) -> None:
    responses.get(URL, status=status, json={"error": {"message": f"Invalid API Key provided: {KEY}"}})
    with pytest.raises(AuthError) as info:
        get(client())
    msg = str(info.value)
    assert len(responses.calls) == 1
    assert "STRIPE_API_KEY" in msg and KEY not in msg and "\n" not in msg
    assert KEY not in repr(client())


@responses.activate
def test_404_is_not_found() -> None:
    responses.get(f"{BASE}/v1/customers/cus_x", status=404, json={"error": {"message": "No such customer"}})
    with pytest.raises(NotFoundError):
        get(client(), "/v1/customers/cus_x")
    assert len(responses.calls) == 1


def test_encode_params() -> None:
    q = encode_params({"status": "all", "active": False, "expand": ["data.discounts", "data.tiers"],
                       "created": {"gte": 1, "lte": 2}, "starting_after": None})
    assert q == ("status=all&active=false&expand%5B0%5D=data.discounts&expand%5B1%5D=data.tiers"
                 "&created%5Bgte%5D=1&created%5Blte%5D=2")


def test_token_bucket_holds_the_rate_on_the_real_clock() -> None:
    async def run() -> tuple[float, float]:
        bucket = TokenBucket(200)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.gather(*(bucket.acquire() for _ in range(120)))
        rate = 120 / (loop.time() - t0)
        bucket.penalise()
        return rate, bucket.rate

    rate, after = asyncio.run(run())
    assert 150 < rate < 260
    assert after == 100


def account_of(raw: StripeRaw) -> str:
    return asyncio.run(raw.account_id(None))


@pytest.mark.parametrize("body", [{"id": None, "object": "account"}, {"object": "account"}, {"id": 42},
                                  {"id": ""}], ids=["null", "missing", "number", "empty"])
@responses.activate
def test_an_account_without_an_id_is_one_line_error_not_the_text_none(body: dict[str, Any]) -> None:
    responses.get(f"{BASE}/v1/account", json=body)
    with pytest.raises(BadResponseError) as info:
        account_of(client())
    msg = str(info.value)
    assert "/v1/account" in msg and "without an id" in msg and "\n" not in msg


@responses.activate
def test_the_account_id_is_taken_as_sent() -> None:
    responses.get(f"{BASE}/v1/account", json={"id": "acct_123", "object": "account"})
    assert account_of(client()) == "acct_123"


@pytest.mark.parametrize("base", [BASE, f"{BASE}/v1"], ids=["other-server", "base-with-v1"])
@responses.activate
def test_a_404_of_the_account_names_stripe_api_base(base: str) -> None:
    responses.get(f"{base}/v1/account", status=404, json={"error": {"message": "Unrecognized request URL"}})
    raw = StripeRaw(Settings(api_key=Secret(KEY), api_base=base, rate_limit=1000.0), http_client=stripe.RequestsClient())
    with pytest.raises(ConfigError) as info:
        account_of(raw)
    msg = str(info.value)
    assert "STRIPE_API_BASE" in msg and "without /v1" in msg and "\n" not in msg
    assert ("ends in /v1" in msg) == base.endswith("/v1")
    assert len(responses.calls) == 1


@pytest.mark.parametrize("error", [
    pytest.param({"message": f"Invalid value for param: {KEY}"}, id="the-key"),
    pytest.param({"message": f"Invalid value: {KEY.upper()}"}, id="the-key-upper-cased"),
    pytest.param({"message": "Bad keys: sk_live_OTHERSECRET1, RK_TEST_OTHERSECRET1 and whsec_OTHERSECRET1"},
                 id="secret-shaped"),
    pytest.param({"type": "invalid_request_error", "param": f"Bearer {KEY}"}, id="no-message"),
    pytest.param({"message": f"bad\nrequest {KEY}\r\n"}, id="line-breaks"),
])
@responses.activate
def test_a_rejection_echoing_a_key_does_not_pass_it_on(error: dict[str, Any]) -> None:
    """A 400's message becomes the console's error and ``sync_runs.error``: a key a proxy echoes in it is masked."""
    responses.get(URL, status=400, json={"error": error})
    with pytest.raises(StripeAPIError) as info:
        get(client())
    msg = str(info.value)
    assert "Stripe rejected GET /v1/customers" in msg and "\n" not in msg and "\r" not in msg
    assert "client_edge_key" not in msg.lower() and "OTHERSECRET1" not in msg


@responses.activate
def test_an_error_code_echoing_a_key_does_not_pass_it_on() -> None:
    responses.get(URL, status=503, json={"error": {"code": f"proxy_said_{KEY}"}})
    with pytest.raises(StripeAPIError, match=r"Stripe answered 503 \(proxy_said_\*+\)") as info:
        get(client(max_retries=0))
    assert "client_edge_key" not in str(info.value)


@responses.activate
def test_an_account_id_echoing_a_key_does_not_pass_it_on() -> None:
    responses.get(f"{BASE}/v1/account", json={"id": [KEY]})
    with pytest.raises(BadResponseError) as info:
        account_of(client())
    assert "client_edge_key" not in str(info.value)


def loaded(tmp_path: Any, file: dict[str, str], env: dict[str, str]) -> StripeRaw:
    """A client on settings loaded as the CLI loads them, from a config file and the environment."""
    from stripe_churn.settings import load_settings

    config = tmp_path / "c.toml"
    config.write_text("".join(f'{k} = "{v}"\n' for k, v in file.items()), encoding="utf-8")
    config.chmod(0o600)
    raw = StripeRaw(load_settings(config, env={"STRIPE_CHURN_RATE_LIMIT": "1000", **env}),
                    http_client=stripe.RequestsClient())
    raw._backoff = lambda attempt: 0.0  # type: ignore[method-assign]
    return raw


@pytest.mark.parametrize("in_file, in_env, where", [
    pytest.param(True, False, "account in {config}", id="config-file"),
    pytest.param(False, True, "the environment variable STRIPE_ACCOUNT (the account id", id="environment"),
    pytest.param(True, True, "the environment variable STRIPE_ACCOUNT (which overrides account in {config})",
                 id="environment-over-file"),
])
@responses.activate
def test_a_refused_connected_account_names_where_it_was_set(tmp_path: Any, in_file: bool, in_env: bool,
                                                            where: str) -> None:
    """An account in the config file that Stripe refused said "(STRIPE_ACCOUNT) ... unset STRIPE_ACCOUNT", a
    variable the user never set: the line names where the account was read from, and a file's account the
    environment overrode as overridden."""
    responses.get(URL, status=403, json={"error": {"code": "account_invalid", "message": "no access"}})
    raw = loaded(tmp_path, {"api_key": KEY, **({"account": "acct_file"} if in_file else {})},
                 {"STRIPE_API_BASE": BASE, **({"STRIPE_ACCOUNT": "acct_env"} if in_env else {})})
    with pytest.raises(AuthError) as info:
        get(raw)
    msg = str(info.value)
    shown = "acct_env" if in_env else "acct_file"
    assert f"connected account {shown}: check {where.format(config=tmp_path / 'c.toml')}" in msg, msg
    assert in_env or "STRIPE_ACCOUNT" not in msg, msg
    assert KEY not in msg and "\n" not in msg


@responses.activate
def test_a_404_of_the_account_names_the_config_file_or_its_override(tmp_path: Any) -> None:
    """A wrong api_base in the config file was reported as "check STRIPE_API_BASE": the line names the file's
    setting, and the environment variable that overrides it as overriding it."""
    responses.get(f"{BASE}/v1/account", status=404, json={"error": {"message": "Unrecognized request URL"}})
    config = tmp_path / "c.toml"
    raw = loaded(tmp_path, {"api_key": KEY, "api_base": BASE}, {})
    with pytest.raises(ConfigError) as info:
        account_of(raw)
    assert f"has no /v1/account: check api_base in {config}: it should be" in str(info.value), info.value
    assert "STRIPE_API_BASE" not in str(info.value)
    raw = loaded(tmp_path, {"api_key": KEY, "api_base": "https://api.stripe.com"}, {"STRIPE_API_BASE": BASE})
    with pytest.raises(ConfigError) as info:
        account_of(raw)
    assert (f"has no /v1/account: check the environment variable STRIPE_API_BASE (which overrides api_base in "
            f"{config}): it should be") in str(info.value), info.value
