"""The pending invoice items' listing of every sync (``GET /v1/invoiceitems?pending=true``) at its HTTP edge:
a small account served through the SDK's requests-based client under ``responses``, real DuckDB files.

What a listing leaves behind (paging, items that left the list, runs with nothing new) and what a missing
endpoint, a failure or a stop in the middle of it leave; the sandbox's own pending items are in
``tests/test_sync.py``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import duckdb
import orjson
import pytest
import requests
import responses
import stripe

from stripe_churn import sync as sync_module
from stripe_churn.errors import StripeAPIError
from stripe_churn.settings import Secret, Settings
from stripe_churn.store.db import open_store
from stripe_churn.stripe_api.client import StripeRaw
from stripe_churn.sync import SyncResult, run_sync

BASE = "http://stripe.test"
KEY = "sk_test_pending_items_key"
ACCOUNT = "acct_items"
T0 = 1_790_000_000  # the fake's clock (its answers' Date)


def item(n: int, created: int = T0 - 86400) -> dict[str, Any]:
    """A pending proration of the 2026 API's shape."""
    return {"id": f"ii_{n:04d}", "object": "invoiceitem", "amount": 100 * n, "currency": "usd",
            "customer": "cus_1", "date": created, "description": "Remaining time", "discountable": False,
            "discounts": [], "invoice": None, "livemode": False, "metadata": {},
            "parent": {"type": "subscription_details", "subscription_details": {
                "subscription": "sub_1", "subscription_item": "si_1"}},
            "period": {"start": created, "end": created + 300 * 86400},
            "pricing": {"type": "price_details", "price_details": {"price": "price_1", "product": "prod_1"},
                        "unit_amount_decimal": str(100 * n)},
            "proration": True, "proration_details": {"credited_items": None}, "quantity": 1, "tax_rates": [],
            "test_clock": None}


def event(etype: str, obj: dict[str, Any], created: int, n: int) -> dict[str, Any]:
    return {"id": f"evt_{n}", "object": "event", "type": etype, "created": created, "api_version": None,
            "data": {"object": obj}, "livemode": False, "pending_webhooks": 0, "request": None}


class FakeStripe:
    """One account: a customer, the pending items (newest first, as Stripe lists them), events; every other
    list empty. ``items_status``: what /v1/invoiceitems answers instead of its pages, from ``fail_from`` on
    (its 1st page is 0); ``on_items_page``: called with each page of items served."""

    def __init__(self) -> None:
        self.clock = T0
        self.items: list[dict[str, Any]] = [item(n) for n in range(150, 0, -1)]
        # newest first; one at the start (the events cursor of the first full sync)
        self.events: list[dict[str, Any]] = [event("customer.created", {"id": "cus_1", "object": "customer"},
                                                   T0 - 100, 0)]
        self.items_status: int | None = None
        self.fail_from = 0
        self.on_items_page: Any = None
        self.item_pages: list[dict[str, list[str]]] = []  # query of each /v1/invoiceitems request
        self.paths: list[str] = []  # every path asked for

    def __call__(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(str(request.url))
        query = parse_qs(url.query)
        headers = {"Date": formatdate(self.clock, usegmt=True), "Request-Id": "req_fake"}
        path = url.path
        self.paths.append(path)
        if path == "/v1/account":
            return 200, headers, orjson.dumps({"id": ACCOUNT, "object": "account", "created": T0 - 400 * 86400})
        if path == "/v1/invoiceitems":
            self.item_pages.append(query)
            if self.items_status is not None and len(self.item_pages) - 1 >= self.fail_from:
                return self.items_status, headers, orjson.dumps({"error": {"message": "Unrecognized request URL "
                                                                            "(GET: /v1/invoiceitems)"}})
            return 200, headers, self._page(self.items, query)
        if path == "/v1/events":
            gte = int(query.get("created[gte]", ["0"])[0])
            return 200, headers, self._page([e for e in self.events if e["created"] >= gte], query)
        if path.startswith("/v1/events/"):
            found = [e for e in self.events if e["id"] == path.rsplit("/", 1)[1]]
            return (200, headers, orjson.dumps(found[0])) if found else (404, headers, b'{"error": {}}')
        if path == "/v1/customers":
            return 200, headers, self._page([{"id": "cus_1", "object": "customer", "created": T0 - 90 * 86400,
                                              "discount": None}], query)
        if re.fullmatch(r"/v1/(products|prices|coupons|subscriptions|invoices|credit_notes)", path):
            return 200, headers, self._page([], query)
        return 404, headers, orjson.dumps({"error": {"message": f"Unrecognized request URL (GET: {path})"}})

    def _page(self, objs: list[dict[str, Any]], query: dict[str, list[str]]) -> bytes:
        limit = int(query.get("limit", ["10"])[0])
        before = query.get("ending_before", [None])[0]
        if before:  # the page just newer than `before`
            at = next(i for i, o in enumerate(objs) if o["id"] == before)
            return orjson.dumps({"object": "list", "data": objs[max(0, at - limit):at], "has_more": at > limit,
                                 "url": "/v1/x"})
        after = query.get("starting_after", [None])[0]
        start = next(i + 1 for i, o in enumerate(objs) if o["id"] == after) if after else 0
        data = objs[start:start + limit]
        if objs is self.items and self.on_items_page is not None:
            self.on_items_page(data)
        return orjson.dumps({"object": "list", "data": data, "has_more": start + limit < len(objs),
                             "url": "/v1/x"})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStripe]:
    def requests_raw(settings: Settings, **kw: Any) -> StripeRaw:  # the sync's client, on the `responses`-patched SDK one
        raw = StripeRaw(settings, http_client=stripe.RequestsClient(), **kw)
        raw._backoff = lambda attempt: 0.0  # type: ignore[method-assign]
        return raw

    monkeypatch.setattr(sync_module, "StripeRaw", requests_raw)
    account = FakeStripe()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.GET, re.compile(re.escape(BASE) + r"/.*"), callback=account)
        yield account


def sync(db: Path, **kw: Any) -> SyncResult:
    settings = Settings(api_key=Secret(KEY), api_base=BASE, db=db, max_retries=2, rate_limit=1000.0)
    return run_sync(settings, progress=False, **kw)


def items(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[Any, ...]]:
    """id -> (pending, deleted, version, last_seen_at, raw) of the stored invoice items."""
    rows = con.execute("SELECT id, pending, deleted, version, last_seen_at, CAST(raw AS VARCHAR) FROM invoice_items "
                       "WHERE account_id = ?", [ACCOUNT]).fetchall()
    return {r[0]: (r[1], r[2], r[3], r[4], orjson.loads(r[5])) for r in rows}


def test_pending_items_are_listed_whole_at_every_run_and_those_gone_are_no_longer_pending(
        fake: FakeStripe, tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    first = sync(db)
    assert (first.mode, first.status) == ("full", "succeeded")
    # the whole list, 100 a page, no `created` filter
    expand = {"expand[0]": ["data.discounts"]}
    assert fake.item_pages == [
        {"pending": ["true"], "limit": ["100"], **expand},
        {"pending": ["true"], "limit": ["100"], "starting_after": [fake.items[99]["id"]], **expand}]
    assert first.counts["invoice_items"] == 150
    with open_store(db) as con:
        before = items(con)
        assert {k: v[4] for k, v in before.items()} == {o["id"]: o for o in fake.items}
        assert all(pending and not deleted and version == T0 for pending, deleted, version, _, _ in before.values())
        # the typed columns come from the JSON at load
        assert con.execute("SELECT customer_id, subscription_id, subscription_item_id, price_id, amount, proration "
                           "FROM invoice_items WHERE id = 'ii_0007'").fetchone() == (
            "cus_1", "sub_1", "si_1", "price_1", 700, True)

    # a day on: 10 items were invoiced (they leave the pending list) and 5 new ones are pending
    fake.clock += 86400
    gone = {o["id"] for o in fake.items[20:30]}
    new = [item(n, created=T0 + 3600) for n in range(205, 200, -1)]
    fake.items = new + [o for o in fake.items if o["id"] not in gone]
    fake.item_pages.clear()
    second = sync(db)
    assert (second.mode, second.status) == ("incremental", "succeeded")
    assert len(fake.item_pages) == 2
    assert second.counts["invoice_items"] == 15  # the new ones and those that left, not the 140 unchanged
    with open_store(db) as con:
        after = items(con)
    assert set(after) == set(before) | {o["id"] for o in new}
    for oid, (pending, deleted, version, seen, raw) in after.items():
        if oid in gone:  # only the flag and the time seen change: the JSON stays as last listed
            assert (pending, deleted, version, raw) == (False, False, T0, before[oid][4])
            assert seen > before[oid][3]
        elif oid in before:
            assert (pending, version, seen) == (True, T0, before[oid][3])
        else:
            assert (pending, deleted, version) == (True, False, T0 + 86400)

    # nothing new: the run writes nothing
    fake.item_pages.clear()
    third = sync(db)
    assert (third.mode, third.status) == ("incremental", "succeeded") and len(fake.item_pages) == 2
    assert "invoice_items" not in third.counts
    with open_store(db) as con:
        assert items(con) == after
        assert con.execute("SELECT counts->>'invoice_items' FROM sync_runs ORDER BY started_at").fetchall() == [
            ("150",), ("15",), (None,)]


def test_the_discount_a_pending_item_names_is_stored(fake: FakeStripe, tmp_path: Path) -> None:
    """An add-on sold on an annual plan with a three-month promotion: its proration waits for the renewal, and
    when the promotion has ended, the pending item is the only object that names its discount. The listing asks
    for it expanded, and the sync stores it, as it stores those an invoice's lines name; an incremental run that
    lists the same item again writes neither again."""
    promo = {"id": "di_promo", "object": "discount", "checkout_session": None, "customer": "cus_1",
             "customer_account": None, "end": T0 - 3600, "invoice": None, "invoice_item": None,
             "promotion_code": None, "start": T0 - 92 * 86400, "subscription": "sub_1", "subscription_item": "si_1",
             "source": {"coupon": "PROMO3", "type": "coupon"}}
    fake.items = [{**item(1, T0 - 92 * 86400), "discounts": [promo]}, item(2)]
    db = tmp_path / "s.duckdb"
    assert sync(db).status == "succeeded"
    with open_store(db) as con:
        stored = con.execute("SELECT id, subscription_item_id, CAST(raw AS VARCHAR), version, last_seen_at "
                             "FROM discounts WHERE account_id = ?", [ACCOUNT]).fetchall()
        assert [(i, si, orjson.loads(raw)) for i, si, raw, *_ in stored] == [("di_promo", "si_1", promo)]
        assert items(con)["ii_0001"][4]["discounts"] == [promo]
    fake.clock += 60
    again = sync(db)
    assert (again.mode, again.status) == ("incremental", "succeeded")
    with open_store(db) as con:
        assert con.execute("SELECT id, subscription_item_id, CAST(raw AS VARCHAR), version, last_seen_at "
                           "FROM discounts WHERE account_id = ?", [ACCOUNT]).fetchall() == stored


def test_a_full_sync_does_not_take_items_it_no_longer_lists_for_deleted(fake: FakeStripe, tmp_path: Path) -> None:
    """A full sync checks each stored object it no longer lists (deleted?); an invoice item that left the
    pending list was invoiced, most likely: it is no longer pending, neither deleted nor retrieved."""
    db = tmp_path / "s.duckdb"
    assert sync(db).status == "succeeded"
    gone = fake.items.pop(3)["id"]
    fake.clock += 60
    again = sync(db, full=True)
    assert (again.mode, again.status) == ("full", "succeeded")
    with open_store(db) as con:
        got = items(con)
    assert got[gone][:2] == (False, False)
    assert sum(1 for v in got.values() if v[0]) == 149
    assert "/v1/invoiceitems" in fake.paths and not [p for p in fake.paths if p.startswith("/v1/invoiceitems/")]


def test_a_404_for_invoiceitems_leaves_the_sync_succeeded(fake: FakeStripe, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A server without the endpoint (a proxy in front of Stripe, an old mock): one warning, and the sync
    succeeds; the items stored before stay as they were (no listing completed to say which left)."""
    db = tmp_path / "s.duckdb"
    assert sync(db).status == "succeeded"
    with open_store(db) as con:
        before = items(con)
    fake.items_status = 404
    fake.clock += 60
    caplog.set_level(logging.DEBUG)
    for full in (False, True):
        caplog.clear()
        result = sync(db, full=full)
        assert result.status == "succeeded", result
        warned = [r for r in caplog.records if "invoiceitems" in r.getMessage()]
        assert [r.levelno for r in warned] == [logging.WARNING]
        assert KEY not in caplog.text
        with open_store(db) as con:
            assert items(con) == before
    # a first sync of a store against such a server
    first = sync(tmp_path / "new.duckdb")
    assert first.status == "succeeded" and "invoice_items" not in first.counts


def test_a_listing_that_fails_midway_keeps_its_pages_and_marks_nothing(fake: FakeStripe, tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    assert sync(db).status == "succeeded"
    with open_store(db) as con:
        before = items(con)
    # the first page now holds 3 new items, and the items of the second page left the list: but its second page
    # fails (after the retries)
    new = [item(n, created=T0 + 60) for n in (303, 302, 301)]
    fake.items = new + fake.items[:100]
    fake.items_status, fake.fail_from = 500, 1
    fake.clock += 60
    fake.item_pages.clear()
    with pytest.raises(StripeAPIError, match="500"):
        sync(db)
    assert len(fake.item_pages) == 1 + 3  # the first page, then the second and its 2 retries
    with open_store(db) as con:
        after = items(con)
        assert con.execute("SELECT status FROM sync_runs ORDER BY started_at DESC LIMIT 1").fetchone() == ("failed",)
    assert {oid: v for oid, v in after.items() if oid in before} == before  # nothing marked
    assert {oid for oid in after if oid not in before} == {o["id"] for o in new}  # the page listed is kept
    # the next run lists them whole again
    fake.items_status = None
    assert sync(db).status == "succeeded"
    with open_store(db) as con:
        assert {oid for oid, v in items(con).items() if v[0]} == {o["id"] for o in fake.items}


def test_a_stop_during_the_listing_keeps_its_pages_and_marks_nothing(fake: FakeStripe, tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    assert sync(db).status == "succeeded"
    with open_store(db) as con:
        before = items(con)
    fake.items = [item(n, created=T0 + 60) for n in (402, 401)] + fake.items[:120]
    fake.clock += 60
    stop = threading.Event()
    fake.on_items_page = lambda data: stop.set()  # asked to stop while the first page is on its way
    result = sync(db, stop=stop)
    assert result.status == "stopped"
    with open_store(db) as con:
        after = items(con)
    assert {oid: v for oid, v in after.items() if oid in before} == before
    assert {oid for oid in after if oid not in before} == {"ii_0402", "ii_0401"}


def test_invoiceitem_events_are_stored_but_not_applied(fake: FakeStripe, tmp_path: Path) -> None:
    """An invoiceitem event's object is the item at the event (pending at its creation): the listing of the same
    run is the truth, so the events stay in `events` only."""
    db = tmp_path / "s.duckdb"
    assert sync(db).status == "succeeded"
    fake.clock += 60
    invoiced = dict(item(999, created=T0 + 10))  # created, then invoiced before this run
    fake.events = [event("invoiceitem.deleted", invoiced, T0 + 11, 2), event("invoiceitem.created", invoiced, T0 + 10, 1),
                   *fake.events]
    result = sync(db)
    assert (result.mode, result.status) == ("incremental", "succeeded")
    with open_store(db) as con:
        assert con.execute("SELECT count(*) FROM events WHERE object_id = 'ii_0999'").fetchone() == (2,)
        assert "ii_0999" not in items(con)


def test_a_run_asks_for_the_account_once(fake: FakeStripe, tmp_path: Path) -> None:
    """README's Stripe API table: `GET /v1/account` once per run (a full sync read it for the id and again for the
    account's `created`, the listing's lower bound)."""
    db = tmp_path / "s.duckdb"
    assert sync(db).mode == "full"
    assert fake.paths.count("/v1/account") == 1
    fake.clock += 86400
    fake.paths.clear()
    assert sync(db).mode == "incremental"
    assert fake.paths.count("/v1/account") == 1


def test_a_pending_item_changed_only_beyond_64_bits_is_written_again(fake: FakeStripe, tmp_path: Path) -> None:
    """design.md 7 (raw: the latest state as Stripe sent it). A pending item with an integer beyond 64 bits (a
    field Stripe may add), which the next day's listing sends one higher: the listing compares each item with the
    stored copy, and read as doubles the two are equal (the item was taken for unchanged and the old value kept).
    The second run writes the item, and the store holds the new integer whole."""
    big = 100_000_000_000_000_000_000_001
    sent = {"value": big}
    fake.items = [item(1)]
    fake.items[0]["odd_count"] = "@big@"
    page = fake._page

    def with_big(objs: list[dict[str, Any]], query: dict[str, list[str]]) -> bytes:
        return page(objs, query).replace(b'"@big@"', str(sent["value"]).encode())

    fake._page = with_big  # type: ignore[method-assign]
    db = tmp_path / "s.duckdb"
    assert sync(db).status == "succeeded"
    fake.clock += 86400
    sent["value"] = big + 1
    second = sync(db)
    assert (second.mode, second.status) == ("incremental", "succeeded")
    assert second.counts.get("invoice_items") == 1
    with open_store(db) as con:
        ((raw,),) = con.execute("SELECT CAST(raw AS VARCHAR) FROM invoice_items WHERE id = 'ii_0001'").fetchall()
    assert json.loads(raw)["odd_count"] == big + 1
