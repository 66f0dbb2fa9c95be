"""The sandbox server over real HTTP: Stripe's wire behaviour, checked with the real stripe SDK and raw HTTP.

A small hand-made simulation (``MiniSim``) pins the edges that a random simulation may not produce (ties in
``created``, a subscription with 12 items, deleted objects, tiered prices); the real ``Simulation`` is walked
end to end through the SDK.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
import stripe

from stripe_churn.sandbox import catalog as catalog_module
from stripe_churn.sandbox.server import RunningSandbox, mask_key, start_in_thread
from stripe_churn.sandbox.sim import start_of_today
from stripe_churn.sandbox.wire import parse_query

KEY = "sk_test_51Sandbox0123456789abcd"
DAY = 86400
T0 = 1_700_000_000


# --- a tiny simulation with the attributes the server reads (docs/internals.md) -----------------------


def _price(i: int, product: str, *, active: bool = True, tiered: bool = False, created: int = T0) -> dict[str, Any]:
    price: dict[str, Any] = {
        "id": f"price_{i:04d}", "object": "price", "active": active, "created": created, "currency": "usd",
        "billing_scheme": "tiered" if tiered else "per_unit", "livemode": False, "lookup_key": None,
        "metadata": {}, "nickname": None, "product": product, "type": "recurring",
        "recurring": {"interval": "month", "interval_count": 1, "meter": None, "usage_type": "licensed",
                      "trial_period_days": None},
        "tiers_mode": "graduated" if tiered else None, "unit_amount": None if tiered else 1000 + i,
    }
    if tiered:
        price["tiers"] = [{"up_to": 10, "unit_amount": 500, "flat_amount": None},
                          {"up_to": None, "unit_amount": 300, "flat_amount": None}]
    elif i == 1:
        price["currency_options"] = {"eur": {"custom_unit_amount": None, "tax_behavior": "exclusive",
                                             "unit_amount": 900, "unit_amount_decimal": "900"}}
    return price


class MiniSim:
    """Deterministic little account: 25 customers (3 share each created second), 20 subscriptions, ..."""

    def __init__(self) -> None:
        self.account_id = "acct_minisandbox"
        self.start = T0
        self.clock = T0 + 90 * DAY
        self.discounts: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.truth: list[dict[str, Any]] = []
        objs: dict[str, dict[str, dict[str, Any]]] = {r: {} for r in (
            "customers", "products", "prices", "coupons", "subscriptions", "invoices", "credit_notes")}
        self.objects = objs
        for i in range(25):
            cid = f"cus_{i:04d}"
            objs["customers"][cid] = {"id": cid, "object": "customer", "created": T0 + (i // 3) * DAY,
                                      "email": f"c{i}@example.com", "currency": "usd", "livemode": False,
                                      "metadata": {}, "name": f"Customer {i}"}
        objs["customers"]["cus_0024"] = {"id": "cus_0024", "object": "customer", "deleted": True}
        for i in range(4):
            pid = f"prod_{i:04d}"
            objs["products"][pid] = {"id": pid, "object": "product", "active": i != 3, "created": T0 + i,
                                     "name": f"Product {i}", "type": "service", "updated": T0 + i}
        for i in range(6):
            price = _price(i, f"prod_{i % 4:04d}", active=i != 5, tiered=i == 4, created=T0 + i)
            objs["prices"][price["id"]] = price
        objs["coupons"]["SAVE20"] = {"id": "SAVE20", "object": "coupon", "percent_off": 20.0,
                                     "amount_off": None, "duration": "forever", "created": T0, "valid": True}
        objs["coupons"]["ONCE5"] = {"id": "ONCE5", "object": "coupon", "percent_off": None, "amount_off": 500,
                                    "currency": "usd", "duration": "once", "created": T0 + 1, "valid": True,
                                    "applies_to": {"products": ["prod_0001"]}}
        self.discounts["di_0001"] = {"id": "di_0001", "object": "discount", "customer": "cus_0000",
                                     "subscription": "sub_0000", "start": T0, "end": None,
                                     "source": {"type": "coupon", "coupon": "SAVE20"}}
        statuses = ["active", "trialing", "past_due", "canceled", "incomplete_expired", "unpaid"]
        for i in range(20):
            sid = f"sub_{i:04d}"
            n_items = 12 if i == 0 else 1 + i % 2
            items = [{"id": f"si_{i:04d}_{k:02d}", "object": "subscription_item", "created": T0 + i * DAY,
                      "current_period_start": T0, "current_period_end": T0 + 30 * DAY, "discounts": [],
                      "metadata": {}, "price": copy.deepcopy(objs["prices"][f"price_{(i + k) % 5:04d}"]),
                      "quantity": 1 + k, "subscription": sid} for k in range(n_items)]
            objs["subscriptions"][sid] = {
                "id": sid, "object": "subscription", "created": T0 + i * DAY, "customer": f"cus_{i:04d}",
                "status": statuses[i % len(statuses)], "currency": "usd", "cancel_at_period_end": False,
                "discounts": ["di_0001"] if i == 0 else [], "latest_invoice": f"in_{i:04d}",
                "items": {"object": "list", "data": items, "has_more": False, "total_count": n_items,
                          "url": f"/v1/subscription_items?subscription={sid}"},
            }
        for i in range(30):
            self._add_invoice(i, T0 + i * 2 * DAY, f"cus_{i % 20:04d}", f"sub_{i % 20:04d}",
                              15 if i == 0 else 1)
        for i in range(3):
            cn = f"cn_{i:04d}"
            lines = [{"id": f"cnli_{i:04d}_{k:02d}", "object": "credit_note_line_item", "amount": 100,
                      "type": "custom_line_item"} for k in range(12 if i == 0 else 1)]
            objs["credit_notes"][cn] = {
                "id": cn, "object": "credit_note", "created": T0 + (10 + i) * DAY, "customer": f"cus_{i:04d}",
                "invoice": f"in_{i:04d}", "amount": 100 * len(lines), "currency": "usd", "status": "issued",
                "lines": {"object": "list", "data": lines, "has_more": False, "total_count": len(lines),
                          "url": f"/v1/credit_notes/{cn}/lines"}}
        for i in range(120):
            self._add_event(T0 + i * 18 * 3600)

    def _add_invoice(self, i: int, created: int, customer: str, sub: str, n_lines: int) -> None:
        iid = f"in_{i:04d}"
        lines = [{"id": f"il_{i:04d}_{k:02d}", "object": "line_item", "amount": 1000, "currency": "usd",
                  "invoice": iid, "period": {"start": created, "end": created + 30 * DAY}, "discounts": [],
                  "pricing": {"type": "price_details",
                              "price_details": {"price": "price_0004", "product": "prod_0000"}},
                  "parent": {"type": "subscription_item_details",
                             "subscription_item_details": {"subscription": sub, "proration": False,
                                                           "subscription_item": f"si_{sub[4:]}_00"}}}
                 for k in range(n_lines)]
        self.objects["invoices"][iid] = {
            "id": iid, "object": "invoice", "created": created, "customer": customer,
            "status": ["paid", "open", "void"][i % 3], "currency": "usd", "total": 1000 * n_lines,
            "discounts": [], "billing_reason": "subscription_cycle",
            "parent": {"type": "subscription_details", "subscription_details": {"subscription": sub}},
            "lines": {"object": "list", "data": lines, "has_more": False, "total_count": n_lines,
                      "url": f"/v1/invoices/{iid}/lines"}}

    def _add_event(self, created: int) -> None:
        n = len(self.events)
        kind = n % 4
        if kind in (0, 1):
            sub = copy.deepcopy(self.objects["subscriptions"]["sub_0000"])
            etype = "customer.subscription.created" if kind == 0 else "customer.subscription.updated"
            data: dict[str, Any] = {"object": sub}
            if kind == 1:
                data["previous_attributes"] = {"status": "trialing"}
        elif kind == 2:
            etype, data = "invoice.paid", {"object": copy.deepcopy(self.objects["invoices"]["in_0001"])}
        else:
            etype, data = "customer.created", {"object": copy.deepcopy(self.objects["customers"]["cus_0001"])}
        self.events.append({"id": f"evt_{n:05d}", "object": "event", "created": created, "type": etype,
                            "api_version": "2026-10-28.endive", "data": data, "livemode": False,
                            "pending_webhooks": 0, "request": {"id": None, "idempotency_key": None}})

    def advance(self, months: int = 1) -> None:
        for _ in range(months):
            before = self.clock
            self.clock += 30 * DAY
            base = len(self.objects["invoices"])
            for k in range(5):
                self._add_invoice(base + k, before + k * DAY + 1, f"cus_{k:04d}", f"sub_{k:04d}", 1)
            for k in range(40):
                self._add_event(before + k * 18 * 3600 + 1)
            self.truth.append({"customer_id": "cus_0001", "subscription_id": "sub_0001",
                               "occurred_at": "2024-01-01T00:00:00Z", "movement": "expansion",
                               "category": "seat_expansion", "mrr_delta": 10.0, "currency": "usd"})


# --- helpers ------------------------------------------------------------------------------------------


@pytest.fixture
def mini() -> Iterator[RunningSandbox]:
    with start_in_thread(MiniSim(), api_key=KEY) as sandbox:
        yield sandbox


def get(sb: RunningSandbox, path: str, key: str | None = KEY, headers: dict[str, str] | None = None,
        **kw: Any) -> httpx.Response:
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(sb.url + path, headers={**auth, **(headers or {})}, timeout=10, **kw)


def client(sb: RunningSandbox) -> stripe.StripeClient:
    return stripe.StripeClient(KEY, base_addresses={"api": sb.url})


def ids(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [o["id"] for o in resp.json()["data"]]


def expected_order(objs: dict[str, dict[str, Any]], keep: Any = lambda o: True) -> list[str]:
    """Newest first by created, ties by creation sequence descending, deleted left out."""
    seq = {oid: n for n, oid in enumerate(objs)}
    live = [o for o in objs.values() if not o.get("deleted") and keep(o)]
    return [o["id"] for o in sorted(live, key=lambda o: (o["created"], seq[o["id"]]), reverse=True)]


def error_of(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}, body
    return body["error"]


def _without_tiers(price: Any) -> Any:
    return {k: v for k, v in price.items() if k != "tiers"} if isinstance(price, dict) else price


def served(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API must send for a simulation object: embedded lists cut to 10, no total_count, no tiers, no
    coupon's applies_to."""
    kind = obj.get("object")
    if obj.get("deleted"):
        return obj
    if kind == "price":
        return _without_tiers(obj)
    if kind == "coupon":
        return {k: v for k, v in obj.items() if k != "applies_to"}
    if kind == "event":
        return {**obj, "data": {**obj["data"], "object": served(obj["data"]["object"])}}
    field = {"subscription": "items", "invoice": "lines", "credit_note": "lines"}.get(str(kind))
    if field is None or not isinstance(obj.get(field), dict):
        return obj
    url = {"subscription": f"/v1/subscription_items?subscription={obj['id']}",
           "invoice": f"/v1/invoices/{obj['id']}/lines",
           "credit_note": f"/v1/credit_notes/{obj['id']}/lines"}[str(kind)]
    data = obj[field]["data"]
    head = [{**i, "price": _without_tiers(i["price"])} if "price" in i else i for i in data[:10]]
    return {**obj, field: {"object": "list", "data": head, "has_more": len(data) > 10, "url": url}}


# --- query parsing and key masking -------------------------------------------------------------------


def test_query_parsing_accepts_every_spelling_stripe_clients_use() -> None:
    q = ("expand[]=a&expand[0]=b&expand%5B1%5D=c&expand=d&types%5B0%5D=x&types[1]=y"
         "&created%5Bgte%5D=5&created[lt]=9&limit=3&status=all&status=all")
    parsed = parse_query(q)
    assert parsed["expand"] == ["a", "b", "c", "d"]
    assert parsed["types"] == ["x", "y"]
    assert parsed["created"] == {"gte": "5", "lt": "9"}
    assert parsed["limit"] == "3"
    assert parsed["status"] == ["all", "all"]


@pytest.mark.parametrize("key", [KEY, "sk_live_abcdefghijklmnop1234", "rk_test_short", "whatever-key-value-9876",
                                 "abc"])
def test_mask_key_never_shows_the_key(key: str) -> None:
    masked = mask_key(key)
    assert key not in masked
    assert "*" in masked
    if len(key) > 16:
        assert masked.endswith(key[-4:])


# --- lists: order, pagination, filters ---------------------------------------------------------------


def test_lists_are_newest_first_with_ties_by_creation_sequence(mini: RunningSandbox) -> None:
    objs = mini.sim.objects["customers"]
    assert ids(get(mini, "/v1/customers?limit=100")) == expected_order(objs)
    first = ids(get(mini, "/v1/customers?limit=3"))
    assert first == ["cus_0023", "cus_0022", "cus_0021"]  # same created second: later created first
    body = get(mini, "/v1/customers?limit=3").json()
    assert body["object"] == "list" and body["has_more"] is True and body["url"] == "/v1/customers"


@pytest.mark.parametrize("resource", ["customers", "products", "coupons", "invoices", "credit_notes"])
def test_sdk_auto_paging_walks_a_whole_list(mini: RunningSandbox, resource: str) -> None:
    service = getattr(client(mini).v1, resource)
    got = [o.to_dict(for_json=True) for o in service.list({"limit": 3}).auto_paging_iter()]
    objs = mini.sim.objects[resource]
    assert [o["id"] for o in got] == expected_order(objs)
    assert got == [served(objs[o["id"]]) for o in got]


def test_limit_edges(mini: RunningSandbox) -> None:
    one = get(mini, "/v1/invoices?limit=1").json()
    assert len(one["data"]) == 1 and one["has_more"] is True
    hundred = get(mini, "/v1/invoices?limit=100").json()
    assert len(hundred["data"]) == 30 and hundred["has_more"] is False
    assert len(get(mini, "/v1/invoices").json()["data"]) == 10
    for bad in ("101", "0", "-1", "ten"):
        resp = get(mini, f"/v1/invoices?limit={bad}")
        assert resp.status_code == 400, bad
        err = error_of(resp)
        assert err["type"] == "invalid_request_error" and err["param"] == "limit"


def test_starting_after_and_ending_before(mini: RunningSandbox) -> None:
    order = expected_order(mini.sim.objects["invoices"])
    assert ids(get(mini, f"/v1/invoices?limit=5&starting_after={order[4]}")) == order[5:10]
    page = get(mini, f"/v1/invoices?limit=5&ending_before={order[10]}").json()
    assert [o["id"] for o in page["data"]] == order[5:10] and page["has_more"] is True
    page = get(mini, f"/v1/invoices?limit=5&ending_before={order[3]}").json()
    assert [o["id"] for o in page["data"]] == order[0:3] and page["has_more"] is False
    last = get(mini, f"/v1/invoices?limit=5&starting_after={order[-1]}").json()
    assert last["data"] == [] and last["has_more"] is False
    # the SDK walks ending_before backwards and yields oldest first
    back = [i.id for i in client(mini).v1.invoices.list({"limit": 4, "ending_before": order[12]}).auto_paging_iter()]
    assert back == list(reversed(order[:12]))
    for param in ("starting_after", "ending_before"):
        err = error_of(get(mini, f"/v1/invoices?{param}=in_nope"))
        assert err["code"] == "resource_missing" and err["param"] == param
    both = get(mini, f"/v1/invoices?starting_after={order[1]}&ending_before={order[3]}")
    assert both.status_code == 400


def test_created_filters(mini: RunningSandbox) -> None:
    objs = mini.sim.objects["invoices"]
    lo, hi = T0 + 10 * DAY, T0 + 20 * DAY
    cases = {
        f"created[gte]={lo}&created[lt]={hi}": lambda c: lo <= c < hi,
        f"created[gt]={lo}&created[lte]={hi}": lambda c: lo < c <= hi,
        f"created={lo}": lambda c: c == lo,
        f"created%5Bgte%5D={hi}": lambda c: c >= hi,
    }
    for query, keep in cases.items():
        want = expected_order(objs, lambda o, keep=keep: keep(o["created"]))
        assert want, query
        params: Any = {**parse_query(query), "limit": 2}
        got = [i.id for i in client(mini).v1.invoices.list(params).auto_paging_iter()]
        assert got == want, query
    assert get(mini, "/v1/invoices?created[gte]=soon").status_code == 400
    assert get(mini, "/v1/invoices?created[after]=1").status_code == 400


def test_subscription_status_filters(mini: RunningSandbox) -> None:
    subs = mini.sim.objects["subscriptions"]
    default = ids(get(mini, "/v1/subscriptions?limit=100"))
    assert default == expected_order(subs, lambda s: s["status"] != "canceled")
    assert ids(get(mini, "/v1/subscriptions?limit=100&status=all")) == expected_order(subs)
    for status in ("canceled", "past_due", "incomplete_expired", "trialing"):
        got = ids(get(mini, f"/v1/subscriptions?limit=100&status={status}"))
        assert got == expected_order(subs, lambda s, st=status: s["status"] == st) and got, status
    ended = ids(get(mini, "/v1/subscriptions?limit=100&status=ended"))
    assert set(ended) == {s["id"] for s in subs.values() if s["status"] in ("canceled", "incomplete_expired")}
    assert error_of(get(mini, "/v1/subscriptions?status=bogus"))["param"] == "status"
    assert ids(get(mini, "/v1/subscriptions?customer=cus_0002&status=all")) == ["sub_0002"]


def test_price_and_product_active_filters(mini: RunningSandbox) -> None:
    prices = mini.sim.objects["prices"]
    assert ids(get(mini, "/v1/prices?limit=100")) == expected_order(prices, lambda p: p["active"])
    assert ids(get(mini, "/v1/prices?limit=100&active=false")) == ["price_0005"]
    assert ids(get(mini, "/v1/prices?limit=100&product=prod_0000")) == ["price_0004", "price_0000"]
    products = mini.sim.objects["products"]
    assert ids(get(mini, "/v1/products?limit=100")) == expected_order(products)
    assert ids(get(mini, "/v1/products?active=false")) == ["prod_0003"]
    assert error_of(get(mini, "/v1/prices?active=maybe"))["param"] == "active"


def test_invoice_and_credit_note_filters(mini: RunningSandbox) -> None:
    invoices = mini.sim.objects["invoices"]
    assert ids(get(mini, "/v1/invoices?customer=cus_0003&limit=100")) == expected_order(
        invoices, lambda i: i["customer"] == "cus_0003")
    assert ids(get(mini, "/v1/invoices?subscription=sub_0004&limit=100")) == expected_order(
        invoices, lambda i: i["parent"]["subscription_details"]["subscription"] == "sub_0004")
    assert ids(get(mini, "/v1/invoices?status=void&limit=100")) == expected_order(
        invoices, lambda i: i["status"] == "void")
    assert ids(get(mini, "/v1/credit_notes?customer=cus_0001")) == ["cn_0001"]
    assert get(mini, "/v1/invoices?colour=blue").status_code == 400


def test_deleted_objects_are_retrievable_but_not_listed(mini: RunningSandbox) -> None:
    assert "cus_0024" not in ids(get(mini, "/v1/customers?limit=100"))
    resp = get(mini, "/v1/customers/cus_0024")
    assert resp.status_code == 200 and resp.json() == {"id": "cus_0024", "object": "customer", "deleted": True}
    cus = client(mini).v1.customers.retrieve("cus_0024")
    assert cus.to_dict()["deleted"] is True


# --- embedded lists and their paging endpoints -------------------------------------------------------


def test_embedded_lists_are_truncated_and_paged_elsewhere(mini: RunningSandbox) -> None:
    sub = get(mini, "/v1/subscriptions/sub_0000").json()
    items = sub["items"]
    full = mini.sim.objects["subscriptions"]["sub_0000"]["items"]["data"]
    assert len(items["data"]) == 10 and items["has_more"] is True and "total_count" not in items
    assert items["url"] == "/v1/subscription_items?subscription=sub_0000"
    assert [i["id"] for i in items["data"]] == [i["id"] for i in full[:10]]
    sdk_sub = client(mini).v1.subscriptions.retrieve("sub_0000")
    assert [i.id for i in sdk_sub["items"].auto_paging_iter()] == [i["id"] for i in full]
    paged = ids(get(mini, "/v1/subscription_items?subscription=sub_0000&limit=5&starting_after=si_0000_04"))
    assert paged == [i["id"] for i in full[5:10]]
    assert get(mini, "/v1/subscription_items/si_0000_11").json()["id"] == "si_0000_11"
    assert error_of(get(mini, "/v1/subscription_items/si_nope"))["code"] == "resource_missing"
    missing_param = get(mini, "/v1/subscription_items")
    assert missing_param.status_code == 400 and error_of(missing_param)["param"] == "subscription"
    assert error_of(get(mini, "/v1/subscription_items?subscription=sub_nope"))["code"] == "resource_missing"

    inv = get(mini, "/v1/invoices/in_0000").json()
    assert len(inv["lines"]["data"]) == 10 and inv["lines"]["has_more"] is True
    assert inv["lines"]["url"] == "/v1/invoices/in_0000/lines"
    lines = [ln.id for ln in client(mini).v1.invoices.line_items.list("in_0000", {"limit": 4}).auto_paging_iter()]
    assert lines == [ln["id"] for ln in mini.sim.objects["invoices"]["in_0000"]["lines"]["data"]]
    cn = get(mini, "/v1/credit_notes/cn_0000").json()
    assert len(cn["lines"]["data"]) == 10 and cn["lines"]["url"] == "/v1/credit_notes/cn_0000/lines"
    assert len(ids(get(mini, "/v1/credit_notes/cn_0000/lines?limit=100"))) == 12
    assert get(mini, "/v1/invoices/in_nope/lines").status_code == 404


# --- expand -----------------------------------------------------------------------------------------


def test_tiers_only_when_expanded(mini: RunningSandbox) -> None:
    plain = get(mini, "/v1/prices/price_0004").json()
    assert "tiers" not in plain
    expanded = get(mini, "/v1/prices/price_0004?expand[]=tiers").json()
    assert expanded["tiers"] == mini.sim.objects["prices"]["price_0004"]["tiers"]
    listed = get(mini, "/v1/prices?limit=100&expand%5B0%5D=data.tiers").json()["data"]
    assert next(p for p in listed if p["id"] == "price_0004")["tiers"][0]["up_to"] == 10
    sub_items = get(mini, "/v1/subscriptions/sub_0000").json()["items"]["data"]
    assert all("tiers" not in i["price"] for i in sub_items)


def test_currency_options_only_when_expanded(mini: RunningSandbox) -> None:
    """As Stripe serves them: left out unless expanded; expanded, the price's own currency and its others."""
    assert "currency_options" not in get(mini, "/v1/prices/price_0001").json()
    expanded = get(mini, "/v1/prices/price_0001?expand[]=currency_options").json()["currency_options"]
    assert expanded["usd"]["unit_amount"] == 1001 and expanded["eur"]["unit_amount"] == 900
    listed = get(mini, "/v1/prices?limit=100&expand%5B0%5D=data.tiers&expand%5B1%5D=data.currency_options").json()
    by_id = {p["id"]: p for p in listed["data"]}
    assert by_id["price_0001"]["currency_options"]["eur"]["unit_amount_decimal"] == "900"
    assert set(by_id["price_0004"]["currency_options"]) == {"usd"}
    # (an option's tiers only when that option's are expanded, as Stripe serves them)
    assert "tiers" not in by_id["price_0004"]["currency_options"]["usd"]
    deep = get(mini, "/v1/prices/price_0004?expand[]=currency_options.usd.tiers").json()["currency_options"]
    assert deep["usd"]["tiers"][0]["up_to"] == 10
    assert all("currency_options" not in p for p in get(mini, "/v1/prices?limit=100").json()["data"])
    # (a coupon's: its amount off in its own currency, none for a percent off)
    assert "currency_options" not in get(mini, "/v1/coupons/ONCE5").json()
    coupons = {c["id"]: c for c in get(mini, "/v1/coupons?expand[]=data.currency_options").json()["data"]}
    assert coupons["ONCE5"]["currency_options"] == {coupons["ONCE5"]["currency"]: {"amount_off": 500}}
    assert coupons["SAVE20"]["currency_options"] == {}


def test_a_customers_discount_cannot_be_expanded(mini: RunningSandbox) -> None:
    """Stripe always embeds a customer's discount and refuses to expand it, listed or retrieved."""
    for path in ("/v1/customers?expand[]=data.discount", "/v1/customers/cus_0000?expand[]=discount"):
        resp = get(mini, path)
        assert resp.status_code == 400, path
        assert "cannot be expanded" in resp.json()["error"]["message"]
    assert get(mini, "/v1/customers/cus_0000").status_code == 200


def test_a_coupons_products_only_when_expanded(mini: RunningSandbox) -> None:
    """A coupon's applies_to is left out unless expanded, as Stripe serves it; expanded, the products of a
    restricted coupon, null for any other."""
    assert "applies_to" not in get(mini, "/v1/coupons/ONCE5").json()
    assert all("applies_to" not in c for c in get(mini, "/v1/coupons").json()["data"])
    assert get(mini, "/v1/coupons/ONCE5?expand[]=applies_to").json()["applies_to"] == {"products": ["prod_0001"]}
    listed = get(mini, "/v1/coupons?expand[]=data.currency_options&expand[]=data.applies_to").json()["data"]
    by_id = {c["id"]: c for c in listed}
    assert by_id["ONCE5"]["applies_to"] == {"products": ["prod_0001"]}
    assert by_id["SAVE20"]["applies_to"] is None


def test_expand_ids_to_objects(mini: RunningSandbox) -> None:
    subs = get(mini, "/v1/subscriptions?limit=100&status=all&expand[]=data.discounts&expand[]=data.customer").json()
    sub0 = next(s for s in subs["data"] if s["id"] == "sub_0000")
    assert sub0["discounts"][0]["id"] == "di_0001" and sub0["discounts"][0]["object"] == "discount"
    assert sub0["customer"]["object"] == "customer" and sub0["customer"]["id"] == "cus_0000"
    deep = get(mini, "/v1/subscriptions/sub_0000?expand[]=discounts.source.coupon").json()
    assert deep["discounts"][0]["source"]["coupon"]["percent_off"] == 20.0
    via_sdk = client(mini).v1.subscriptions.list({"status": "all", "expand": ["data.discounts"], "limit": 100})
    assert next(s for s in via_sdk.data if s.id == "sub_0000").to_dict()["discounts"][0]["id"] == "di_0001"
    for bad in ("/v1/subscriptions?expand[]=data.colour", "/v1/subscriptions?expand[]=discounts",
                "/v1/customers/cus_0001?expand[]=email"):
        resp = get(mini, bad)
        assert resp.status_code == 400, bad
        assert error_of(resp)["message"].startswith("This property cannot be expanded")
    # the plain path is unaffected by an expanded request before it
    assert get(mini, "/v1/subscriptions/sub_0000").json()["discounts"] == ["di_0001"]


def test_expanded_list_pages_match_expanded_retrieves(mini: RunningSandbox) -> None:
    # listed pages with expand are stored per list; objects with nothing to expand reuse their plain bytes
    for resource, field, extra in (("subscriptions", "discounts", "&status=all"), ("invoices", "discounts", "")):
        listed, after = [], ""
        while True:
            page = get(mini, f"/v1/{resource}?limit=3{extra}&expand[]=data.{field}{after}").json()
            listed += page["data"]
            if not page["has_more"]:
                break
            after = f"&starting_after={page['data'][-1]['id']}"
        assert [o["id"] for o in listed] == ids(get(mini, f"/v1/{resource}?limit=100{extra}"))
        for obj in listed:
            assert obj == get(mini, f"/v1/{resource}/{obj['id']}?expand[]={field}").json()
        if resource == "subscriptions":  # both kinds were served
            assert any(o[field] for o in listed) and any(not o[field] for o in listed)


# --- events -----------------------------------------------------------------------------------------


def _retained(sim: Any) -> list[str]:
    """Event ids within 30 days of the clock, newest first (ties: later recorded first)."""
    cutoff = sim.clock - 30 * DAY
    kept = [(e["created"], n, e["id"]) for n, e in enumerate(sim.events) if e["created"] >= cutoff]
    return [i for _, _, i in sorted(kept, reverse=True)]


def test_events_keep_30_days_and_advance_moves_the_window(mini: RunningSandbox) -> None:
    sim = mini.sim
    want = _retained(sim)
    assert 0 < len(want) < len(sim.events)
    got = [e.id for e in client(mini).v1.events.list({"limit": 100}).auto_paging_iter()]
    assert got == want
    oldest_kept, too_old = want[-1], sim.events[0]["id"]
    assert get(mini, f"/v1/events/{oldest_kept}").status_code == 200
    err = error_of(get(mini, f"/v1/events/{too_old}"))
    assert err["code"] == "resource_missing" and err["param"] == "id"

    summary = mini.advance(1)
    assert summary["clock"] == sim.clock and summary["new_events"] == 40
    after = ids(get(mini, "/v1/events?limit=100"))
    assert after == _retained(sim)
    assert oldest_kept not in after
    assert get(mini, f"/v1/events/{oldest_kept}").status_code == 404


def test_event_type_filters_and_embedded_objects(mini: RunningSandbox) -> None:
    sim = mini.sim
    retained = {e["id"]: e for e in sim.events if e["created"] >= sim.clock - 30 * DAY}
    wildcard = ids(get(mini, "/v1/events?limit=100&type=customer.subscription.*"))
    assert wildcard and all(retained[i]["type"].startswith("customer.subscription.") for i in wildcard)
    assert len(wildcard) == sum(1 for e in retained.values() if e["type"].startswith("customer.subscription."))
    exact = ids(get(mini, "/v1/events?limit=100&type=invoice.paid"))
    assert exact and {retained[i]["type"] for i in exact} == {"invoice.paid"}
    both = ids(get(mini, "/v1/events?limit=100&types[0]=invoice.paid&types%5B1%5D=customer.created"))
    assert len(both) == sum(1 for e in retained.values() if e["type"] in ("invoice.paid", "customer.created"))
    assert get(mini, "/v1/events?type=invoice.paid&types[0]=customer.created").status_code == 400
    updated = get(mini, f"/v1/events/{next(i for i in wildcard if retained[i]['type'].endswith('updated'))}").json()
    assert updated["data"]["previous_attributes"] == {"status": "trialing"}
    # an embedded subscription is truncated like anywhere else
    assert len(updated["data"]["object"]["items"]["data"]) == 10
    assert updated["data"]["object"]["items"]["has_more"] is True
    evt = client(mini).v1.events.retrieve(updated["id"])
    assert evt.data.object.object == "subscription"


# --- errors, auth, headers --------------------------------------------------------------------------


def test_wrong_or_missing_key_is_401_with_a_masked_key(mini: RunningSandbox) -> None:
    wrong = "sk_test_51WrongKeyXYZ000000wxyz"
    resp = get(mini, "/v1/customers", key=wrong)
    assert resp.status_code == 401
    err = error_of(resp)
    assert err["type"] == "invalid_request_error"
    assert err["message"].startswith("Invalid API Key provided: sk_test_") and err["message"].endswith("wxyz")
    assert wrong not in resp.text and KEY not in resp.text
    assert error_of(get(mini, "/v1/customers", key=None))["message"].startswith("You did not provide an API key")
    with pytest.raises(stripe.AuthenticationError) as info:
        stripe.StripeClient(wrong, base_addresses={"api": mini.url}).v1.customers.list()
    assert info.value.http_status == 401 and wrong not in str(info.value)
    basic = httpx.get(mini.url + "/v1/customers", auth=(KEY, ""), timeout=10)
    assert basic.status_code == 200
    assert httpx.get(mini.url + "/v1/customers", auth=("sk_test_nope", ""), timeout=10).status_code == 401
    assert KEY not in repr(mini.app) and KEY not in repr(mini)


def test_headers_and_error_envelopes(mini: RunningSandbox) -> None:
    resp = get(mini, "/v1/customers", headers={"Stripe-Version": "2024-06-20"})
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["stripe-version"] == "2024-06-20"
    rid = resp.headers["request-id"]
    assert rid.startswith("req_") and rid != get(mini, "/v1/customers").headers["request-id"]
    unknown = get(mini, "/v1/charges_of_the_light_brigade")
    assert unknown.status_code == 404 and "Unrecognized request URL" in error_of(unknown)["message"]
    assert unknown.headers["request-id"].startswith("req_")
    missing = get(mini, "/v1/subscriptions/sub_nope")
    assert missing.status_code == 404
    assert error_of(missing) | {"doc_url": None} == {
        "type": "invalid_request_error", "code": "resource_missing", "param": "id",
        "message": "No such subscription: 'sub_nope'", "doc_url": None}
    post = httpx.post(mini.url + "/v1/customers", headers={"Authorization": f"Bearer {KEY}"},
                      data={"email": "x@example.com"}, timeout=10)
    assert post.status_code in (400, 405) and error_of(post)["type"] == "invalid_request_error"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client(mini).v1.customers.create({"email": "x@example.com"})
    assert info.value.http_status in (400, 405)
    with pytest.raises(stripe.InvalidRequestError):
        client(mini).v1.invoices.list({"limit": 101})
    assert get(mini, "/v1/account").json()["id"] == "acct_minisandbox"


def test_keep_alive_serves_many_requests_on_one_connection(mini: RunningSandbox) -> None:
    host, port = mini.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        fh = sock.makefile("rb")
        for _ in range(5):
            sock.sendall(f"GET /v1/customers?limit=2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n"
                         .encode())
            status = fh.readline()
            assert status.startswith(b"HTTP/1.1 200")
            length = 0
            while (line := fh.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert orjson.loads(fh.read(length))["object"] == "list"



def test_sdk_async_client_pages_concurrently(mini: RunningSandbox) -> None:
    sdk = client(mini)

    async def walk() -> list[list[str]]:
        async def one(resource: str) -> list[str]:
            page = await getattr(sdk.v1, resource).list_async({"limit": 4})
            return [o.id async for o in page.auto_paging_iter()]

        return await asyncio.gather(*(one(r) for r in ("customers", "invoices", "credit_notes")))

    got = asyncio.run(walk())
    assert got == [expected_order(mini.sim.objects[r]) for r in ("customers", "invoices", "credit_notes")]


def _raw(sb: RunningSandbox, payload: bytes) -> bytes:
    host, port = sb.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(payload)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_pipelining_connection_close_and_malformed_requests(mini: RunningSandbox) -> None:
    auth = f"Authorization: Bearer {KEY}\r\n".encode()
    two = _raw(mini, b"GET /v1/customers/cus_0001 HTTP/1.1\r\n" + auth + b"\r\n"
               b"GET /v1/customers/cus_0002 HTTP/1.1\r\n" + auth + b"Connection: close\r\n\r\n")
    assert two.count(b"HTTP/1.1 200 OK") == 2
    assert two.index(b'"cus_0001"') < two.index(b'"cus_0002"')  # answered in order
    http10 = _raw(mini, b"GET /v1/account HTTP/1.0\r\n" + auth + b"\r\n")  # closes after one answer
    assert http10.startswith(b"HTTP/1.1 200") and b"Connection: close" in http10
    assert _raw(mini, b"NONSENSE\r\n\r\n").startswith(b"HTTP/1.1 400")


def test_start_and_stop_are_fast_and_leak_free() -> None:
    sim = MiniSim()
    threads = threading.active_count()
    fds = len(os.listdir("/proc/self/fd"))
    started = time.perf_counter()
    for _ in range(15):
        with start_in_thread(sim, api_key=KEY) as sb, httpx.Client(timeout=5) as http:
            assert http.get(sb.url + "/v1/account", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        sb.stop()  # a second stop is harmless
    assert time.perf_counter() - started < 5
    assert threading.active_count() == threads
    assert len(os.listdir("/proc/self/fd")) <= fds + 2
    with pytest.raises(RuntimeError, match="stopped"):
        sb.stats()

# --- rate limit, faults, latency --------------------------------------------------------------------


def test_rate_limit_answers_429_with_stripes_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    """(The bucket's clock is the test's: the 20 requests come at one moment however slowly a loaded machine sends
    them; by the real clock, 20 requests that took more than half a second refilled the bucket past 7.)"""
    from stripe_churn.sandbox import server

    now = [1000.0]
    monkeypatch.setattr(server, "TokenBucket", functools.partial(server.TokenBucket, clock=lambda: now[0]))
    with start_in_thread(MiniSim(), api_key=KEY, rate_limit=5) as sb, httpx.Client(timeout=10) as http:
        headers = {"Authorization": f"Bearer {KEY}"}
        statuses = [http.get(sb.url + "/v1/customers", headers=headers) for _ in range(20)]
        limited = [r for r in statuses if r.status_code == 429]
        assert [r.status_code for r in statuses] == [200] * 5 + [429] * 15  # (a burst of a second's 5)
        r = limited[0]
        assert r.headers["stripe-rate-limited-reason"] == "global-rate" and r.headers["retry-after"] == "1"
        assert "stripe-should-retry" not in r.headers
        err = error_of(r)
        assert err["type"] == "invalid_request_error" and err["code"] == "rate_limit"
        with pytest.raises(stripe.RateLimitError):
            stripe.StripeClient(KEY, base_addresses={"api": sb.url}).v1.customers.list()
        now[0] += 0.1  # (half a token: still limited)
        assert http.get(sb.url + "/v1/customers", headers=headers).status_code == 429
        now[0] += 0.15  # (a token and a quarter)
        assert http.get(sb.url + "/v1/customers", headers=headers).status_code == 200
        assert sb.stats()["rate_limited"] == len(limited) + 2
    with start_in_thread(MiniSim(), api_key=KEY, rate_limit=1, should_retry=True) as sb:
        statuses = [get(sb, "/v1/customers") for _ in range(3)]
        assert statuses[-1].status_code == 429 and statuses[-1].headers["stripe-should-retry"] == "true"


def test_endpoint_rate_limit_answers_429_per_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stripe's per-endpoint limit: an endpoint over its rate is refused (``endpoint-rate``) while the others, and
    each object of an endpoint such as /v1/customers/{id}, count apart from it and from one another as Stripe
    counts them: by endpoint, not by object. (The buckets' clock is the test's.)"""
    from stripe_churn.sandbox import server

    now = [1000.0]
    monkeypatch.setattr(server, "TokenBucket", functools.partial(server.TokenBucket, clock=lambda: now[0]))
    with start_in_thread(MiniSim(), api_key=KEY, rate_limit=100, endpoint_rate_limit=8) as sb, \
            httpx.Client(timeout=10, headers={"Authorization": f"Bearer {KEY}"}) as http:
        listed = [http.get(sb.url + "/v1/customers") for _ in range(4)]
        assert [r.status_code for r in listed] == [200, 200, 429, 429]  # (a burst of a quarter second's 8)
        assert listed[2].headers["stripe-rate-limited-reason"] == "endpoint-rate"
        assert error_of(listed[2])["code"] == "rate_limit"
        assert http.get(sb.url + "/v1/products").status_code == 200
        objects = [http.get(sb.url + f"/v1/customers/cus_{i:04d}").status_code for i in range(3)]
        assert objects == [200, 200, 429]
        now[0] += 0.125  # (a token)
        assert http.get(sb.url + "/v1/customers").status_code == 200
        assert sb.stats()["rate_limited_by"] == {"endpoint-rate": 3}
    with pytest.raises(ValueError, match="must not be negative"):
        start_in_thread(MiniSim(), api_key=KEY, endpoint_rate_limit=-1)


def _statuses(sb: RunningSandbox, n: int) -> list[str]:
    out = []
    with httpx.Client(timeout=5, headers={"Authorization": f"Bearer {KEY}"}) as http:
        for _ in range(n):
            try:
                out.append(str(http.get(sb.url + "/v1/customers?limit=5").status_code))
            except httpx.TransportError:
                out.append("conn")
    return out


def test_injected_faults_occur_at_about_the_rate_and_are_deterministic() -> None:
    n, rate = 400, 0.25
    runs = []
    for _ in range(2):
        with start_in_thread(MiniSim(), api_key=KEY, fault_rate=rate, fault_seed=7) as sb:
            runs.append(_statuses(sb, n))
            stats = sb.stats()
    statuses = runs[0]
    faulty = [s for s in statuses if s != "200"]
    assert abs(len(faulty) - n * rate) < 4 * (n * rate * (1 - rate)) ** 0.5
    assert set(faulty) == {"500", "502", "503", "conn"}
    assert runs[0] == runs[1]  # same seed, same sequence
    assert sum(stats["faults"].values()) == len(faulty)
    assert stats["by_path"]["/v1/customers"]["drop"] == statuses.count("conn")


def test_richer_fault_kinds() -> None:
    def one(kind: str, **kw: Any) -> Any:
        with start_in_thread(MiniSim(), api_key=KEY, fault_rate=1.0, faults=[kind], **kw) as sb:
            try:
                return get(sb, "/v1/customers?limit=100")
            except httpx.HTTPError as exc:
                return exc

    assert isinstance(one("reset"), httpx.TransportError)
    assert isinstance(one("drop"), httpx.TransportError)
    assert isinstance(one("truncated"), httpx.RemoteProtocolError)
    html = one("html")
    assert html.status_code == 502 and html.headers["content-type"].startswith("text/html")
    lock = one("409_lock_timeout", should_retry=False)
    assert lock.status_code == 409 and error_of(lock)["code"] == "lock_timeout"
    assert lock.headers["stripe-should-retry"] == "false"
    with (start_in_thread(MiniSim(), api_key=KEY, fault_rate=1.0, faults=["slow"], slow_s=5) as sb,
          pytest.raises(httpx.ReadTimeout)):
        httpx.get(sb.url + "/v1/customers", headers={"Authorization": f"Bearer {KEY}"}, timeout=0.3)
    with start_in_thread(MiniSim(), api_key=KEY, auth_revoked_after=3) as sb:
        assert [get(sb, "/v1/customers").status_code for _ in range(5)] == [200, 200, 200, 401, 401]
    with pytest.raises(ValueError, match="unknown fault kinds"):
        start_in_thread(MiniSim(), faults=["teapot"], fault_rate=0.5)


def test_latency_does_not_serialise_concurrent_requests() -> None:
    n, latency = 12, 200
    with start_in_thread(MiniSim(), api_key=KEY, latency_ms=latency) as sb:

        async def fetch_all() -> list[int]:
            async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {KEY}"}) as http:
                rs = await asyncio.gather(*(http.get(sb.url + "/v1/invoices?limit=100") for _ in range(n)))
                return [r.status_code for r in rs]

        started = time.perf_counter()
        one = get(sb, "/v1/customers")
        single = time.perf_counter() - started
        assert one.status_code == 200 and single >= latency / 1000
        started = time.perf_counter()
        assert asyncio.run(fetch_all()) == [200] * n
        elapsed = time.perf_counter() - started
        # (served one after another they take n latencies at least, 2.4 s; at once, one latency and the making of
        # n pages of 100 invoices on the server's one thread, which a loaded machine slows: a third of 2.4 s was
        # missed with 0.05 s more for each page)
        assert elapsed < n * latency / 1000 / 2, elapsed


# --- control endpoints ------------------------------------------------------------------------------


def test_advance_and_stats_endpoints(mini: RunningSandbox, tmp_path: Path) -> None:
    clock = mini.sim.clock
    assert httpx.post(mini.url + "/_sandbox/advance?months=1", timeout=10).status_code == 401
    resp = httpx.post(mini.url + "/_sandbox/advance?months=2", headers={"Authorization": f"Bearer {KEY}"},
                      timeout=10)
    assert resp.status_code == 200
    summary = resp.json()
    assert summary["clock"] == clock + 60 * DAY == mini.sim.clock
    assert summary["counts"]["invoices"] == 40 and summary["new_events"] == 80 and summary["new_truth"] == 2
    assert ids(get(mini, "/v1/invoices?limit=1"))[0] == "in_0039"  # caches were rebuilt
    bad = httpx.post(mini.url + "/_sandbox/advance?months=zero", headers={"Authorization": f"Bearer {KEY}"},
                     timeout=10)
    assert bad.status_code == 400
    get(mini, "/v1/customers/cus_nope")
    stats = httpx.get(mini.url + "/_sandbox/stats", timeout=10).json()
    assert stats["by_path"]["/v1/invoices"]["200"] == 1
    assert stats["by_path"]["/v1/customers/{id}"]["404"] == 1
    assert stats["by_path"]["/_sandbox/advance"] == {"401": 1, "200": 1, "400": 1}
    assert mini.stats()["requests"] == stats["requests"] + 1


def test_pages_are_exact_whatever_the_cursor_and_across_view_evictions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages are slices of bytes stored per view; evicting views (more filters than the cache holds) must not
    mix them up, whatever the cursor and limit."""
    monkeypatch.setattr(catalog_module, "VIEW_CACHE_MAX", 3)
    sim = MiniSim()
    cat = catalog_module.Catalog(sim)
    objs = sim.objects["customers"]
    order = expected_order(objs)

    def page(params: dict[str, Any]) -> dict[str, Any]:
        return orjson.loads(b"".join(cat.list_page("customers", params)))

    for rnd in range(3):
        for limit, after in ((7, None), (2, order[0]), (4, order[2]), (3, order[9]), (100, order[5])):
            params = {"limit": str(limit)} | ({"starting_after": after} if after else {})
            start = 0 if after is None else order.index(after) + 1
            got = page(params)
            assert got["data"] == [served(objs[i]) for i in order[start:start + limit]], (rnd, params)
            assert got["has_more"] is (start + limit < len(order))
            email = f"c{(rnd * 4 + limit) % 24}@example.com"  # a new filtered view each time: evictions
            assert [o["id"] for o in page({"email": email})["data"]] == [
                o["id"] for o in objs.values() if o.get("email") == email]


def test_pages_walked_before_an_advance_show_the_new_state_after_it() -> None:
    """A walked list keeps its objects' bytes with its view; a billing run must drop them with the view."""
    sim_module = pytest.importorskip("stripe_churn.sandbox.sim")
    sim = sim_module.Simulation(customers=30, months=6, seed=5)
    customer = next(s["customer"] for s in sim.objects["subscriptions"].values() if not s.get("deleted"))
    lists = [("subscriptions", {"status": "all"}), ("invoices", {}), ("invoices", {"customer": customer}),
             ("subscriptions", {"customer": customer, "status": "all"})]

    def walk(sb: RunningSandbox, resource: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        query = {"limit": 7, **params}
        while True:
            body = get(sb, f"/v1/{resource}?{urlencode(query)}").json()
            out += body["data"]
            if not body["has_more"]:
                return out
            query["starting_after"] = body["data"][-1]["id"]

    with start_in_thread(sim, api_key=KEY) as sb:
        before = {(r, tuple(p.items())): walk(sb, r, p) for r, p in lists}
        walk(sb, "subscriptions", {"status": "all"})  # the second walk is served from the filled view
        sb.advance(1)
        changed = 0
        for (resource, items), old in before.items():
            params = dict(items)
            cust = params.get("customer")
            new = walk(sb, resource, params)
            objs = sim.objects[resource]
            assert [o["id"] for o in new] == expected_order(objs, lambda o, c=cust: c is None or o["customer"] == c)
            assert new == [served(objs[o["id"]]) for o in new], (resource, params)
            old_by_id = {o["id"]: o for o in old}
            changed += sum(1 for o in new if o["id"] in old_by_id and old_by_id[o["id"]] != o)
        assert changed > 0  # the billing run changed objects that had been served before it


# --- the real simulation through the SDK ------------------------------------------------------------


@pytest.fixture(scope="module")
def real() -> Iterator[RunningSandbox]:
    sim_module = pytest.importorskip("stripe_churn.sandbox.sim")
    with start_in_thread(sim_module.Simulation(customers=60, months=12, seed=3), api_key=KEY) as sandbox:
        yield sandbox


def _sdk_list(sb: RunningSandbox, resource: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    service = getattr(client(sb).v1, resource)
    return [o.to_dict(for_json=True) for o in service.list({"limit": 100, **params}).auto_paging_iter()]


def test_sdk_walks_every_list_of_a_simulation_exactly(real: RunningSandbox) -> None:
    sim = real.sim
    for resource in ("customers", "products", "coupons", "subscriptions", "invoices", "credit_notes", "prices"):
        objs = sim.objects[resource]
        if resource == "subscriptions":
            got = _sdk_list(real, resource, {"status": "all"})
        elif resource == "prices":
            got = _sdk_list(real, resource, {"active": "true"}) + _sdk_list(real, resource, {"active": "false"})
            got.sort(key=lambda p: expected_order(objs).index(p["id"]))
        else:
            got = _sdk_list(real, resource, {})
        assert [o["id"] for o in got] == expected_order(objs), resource
        assert got == [served(objs[o["id"]]) for o in got], resource
        assert got, resource
    events = _sdk_list(real, "events", {})
    by_id = {e["id"]: e for e in sim.events}
    want = [by_id[i] for i in _retained(sim)]
    assert [e["id"] for e in events] == [e["id"] for e in want]
    plain = [orjson.loads(orjson.dumps(e)) for e in want]
    for got_evt, want_evt in zip(events, plain, strict=True):
        obj = want_evt["data"]["object"]
        assert got_evt["data"]["object"] == served(obj) and got_evt["type"] == want_evt["type"]


def test_every_subscription_item_and_invoice_line_is_reachable(real: RunningSandbox) -> None:
    sim = real.sim
    sdk = client(real)
    for sub in sim.objects["subscriptions"].values():
        if sub.get("deleted"):
            continue
        got = [i.id for i in sdk.v1.subscription_items.list({"subscription": sub["id"], "limit": 3})
               .auto_paging_iter()]
        assert got == [i["id"] for i in sub["items"]["data"]]
    longest = max((i for i in sim.objects["invoices"].values() if not i.get("deleted")),
                  key=lambda i: len(i["lines"]["data"]))
    got = [ln.id for ln in sdk.v1.invoices.line_items.list(longest["id"], {"limit": 2}).auto_paging_iter()]
    assert got == [ln["id"] for ln in longest["lines"]["data"]]


def test_legacy_global_api_auto_paging(real: RunningSandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stripe, "api_key", KEY)
    monkeypatch.setattr(stripe, "api_base", real.url)
    got = [s.id for s in stripe.Subscription.list(status="all", limit=7).auto_paging_iter()]
    assert got == expected_order(real.sim.objects["subscriptions"])


def test_fx_rates_endpoint(real: RunningSandbox) -> None:
    from stripe_churn.sandbox.fx import SANDBOX_FX_RATES

    rows = httpx.get(real.url + "/_sandbox/fx_rates", timeout=10).json()
    assert {r["currency"]: r["rate"] for r in rows} == {c: float(v) for c, v in SANDBOX_FX_RATES.items()}
    assert len({r["date"] for r in rows}) == 1


# --- pending invoice items (a simulation with deferred prorations) ------------------------------------


@pytest.fixture(scope="module")
def deferred() -> Iterator[RunningSandbox]:
    sim_module = pytest.importorskip("stripe_churn.sandbox.sim")
    sim = sim_module.Simulation(customers=300, months=24, seed=5, deferred_prorations=True)
    with start_in_thread(sim, api_key=KEY) as sandbox:
        yield sandbox


def _items_order(items: dict[str, dict[str, Any]], keep: Any = lambda o: True) -> list[str]:
    """Newest first by ``date`` (an invoice item has no ``created``), ties by creation sequence descending."""
    seq = {oid: n for n, oid in enumerate(items)}
    return [o["id"] for o in sorted((o for o in items.values() if keep(o)), key=lambda o: (o["date"], seq[o["id"]]),
                                    reverse=True)]


def test_invoice_items_are_listed_filtered_paged_and_retrieved(deferred: RunningSandbox) -> None:
    items = deferred.sim.objects["invoiceitems"]
    pending = _items_order(items, lambda o: o["invoice"] is None)
    billed = _items_order(items, lambda o: o["invoice"] is not None)
    assert pending and billed
    sdk = client(deferred)
    walked = [o.to_dict(for_json=True) for o in sdk.v1.invoice_items.list({"limit": 3}).auto_paging_iter()]
    assert [o["id"] for o in walked] == _items_order(items) and walked == [items[o["id"]] for o in walked]
    assert [o.id for o in sdk.v1.invoice_items.list({"pending": True, "limit": 100})] == pending
    assert [o.id for o in sdk.v1.invoice_items.list({"pending": False, "limit": 100})] == billed
    page = get(deferred, "/v1/invoiceitems?pending=true&limit=1").json()
    assert page == {"object": "list", "data": [items[pending[0]]], "has_more": len(pending) > 1,
                    "url": "/v1/invoiceitems"}
    # one customer's, a page at a time
    cust = Counter(o["customer"] for o in items.values()).most_common(1)[0][0]
    mine = _items_order(items, lambda o: o["customer"] == cust)
    assert len(mine) >= 2
    first = get(deferred, f"/v1/invoiceitems?customer={cust}&limit=1").json()
    assert [o["id"] for o in first["data"]] == mine[:1] and first["has_more"] is True
    rest = get(deferred, f"/v1/invoiceitems?customer={cust}&limit=100&starting_after={mine[0]}").json()
    assert [o["id"] for o in rest["data"]] == mine[1:] and rest["has_more"] is False
    back = ids(get(deferred, f"/v1/invoiceitems?customer={cust}&ending_before={mine[-1]}&limit=100"))
    assert back == mine[:-1]
    inv = items[billed[0]]["invoice"]
    assert ids(get(deferred, f"/v1/invoiceitems?invoice={inv}&limit=100")) == _items_order(
        items, lambda o: o["invoice"] == inv)
    day = items[billed[-1]]["date"]
    assert ids(get(deferred, f"/v1/invoiceitems?created[gte]={day}&limit=100")) == _items_order(
        items, lambda o: o["date"] >= day)
    # retrieve, and Stripe's errors
    assert sdk.v1.invoice_items.retrieve(pending[0]).to_dict(for_json=True) == items[pending[0]]
    err = error_of(get(deferred, "/v1/invoiceitems/ii_missing"))
    assert err["code"] == "resource_missing" and err["message"] == "No such invoiceitem: 'ii_missing'"
    assert error_of(get(deferred, "/v1/invoiceitems?pending=yes"))["param"] == "pending"
    assert error_of(get(deferred, "/v1/invoiceitems?status=paid"))["param"] == "status"


def test_invoice_item_events_and_an_account_without_invoice_items(deferred: RunningSandbox,
                                                                  real: RunningSandbox) -> None:
    sim = deferred.sim
    made = [e for e in sim.events if e["type"] == "invoiceitem.created" and e["created"] >= sim.clock - 30 * DAY]
    assert made
    got = list(client(deferred).v1.events.list({"type": "invoiceitem.created"}).auto_paging_iter())
    assert sorted(e.id for e in got) == sorted(e["id"] for e in made)
    assert all(e.data.object.object == "invoiceitem" and e.data.object.invoice is None for e in got)
    # a simulation made without deferred prorations has no invoice items: an empty list, as Stripe gives
    assert "invoiceitems" not in real.sim.objects
    assert get(real, "/v1/invoiceitems?pending=true").json() == {
        "object": "list", "data": [], "has_more": False, "url": "/v1/invoiceitems"}
    assert list(client(real).v1.invoice_items.list({"pending": True}).auto_paging_iter()) == []
    assert get(real, "/v1/invoiceitems/ii_1").status_code == 404


def test_cli_sandbox_prints_the_url_first_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    pytest.importorskip("stripe_churn.sandbox.sim")
    truth = tmp_path / "truth.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "STRIPE_API_KEY"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stripe_churn", "sandbox", "--port", "0", "--customers", "15", "--months", "3",
         "--api-key", KEY, "--truth-out", str(truth)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and int(url.rsplit(":", 1)[1]) > 0
        account = httpx.get(url + "/v1/account", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
        assert account.status_code == 200 and account.json()["object"] == "account"
        # (the served history ends at the start of today, UTC, not on the simulation's fixed day)
        clock = httpx.get(url + "/_sandbox/stats", headers={"Authorization": f"Bearer {KEY}"},
                          timeout=10).json()["clock"]
        assert start_of_today() - 4 * 86_400 <= clock <= start_of_today(), clock
        rows = [json.loads(line) for line in truth.read_text().splitlines()]
        assert rows and {"customer_id", "subscription_id", "occurred_at", "movement", "category", "mrr_delta",
                         "currency"} <= set(rows[0])
        adv = httpx.post(url + "/_sandbox/advance?months=1", headers={"Authorization": f"Bearer {KEY}"},
                         timeout=60)
        assert adv.status_code == 200
        assert len(truth.read_text().splitlines()) == adv.json()["truth_total"]
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert KEY not in err
