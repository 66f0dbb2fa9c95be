"""The sync against Stripe facts of /work/shared/stripe/reference.md that it depends on and that the other sync tests
leave unchecked: the real sync (the stripe SDK's HTTP client) against the sandbox server serving a small account built by hand
(tests/metrics/builders.py), the server changed where a case needs Stripe to answer otherwise than the sandbox does.
Every expected store below is worked out by hand from the served objects and design.md 2-3 and 7.

Facts covered here: embedded lists cut at 10 with ``has_more`` and paged from their own endpoint in pages of at most
100 (a subscription's items, an invoice's lines, with their discounts expanded); ``status=all`` and the ``active``
passes; objects left out of lists when on a test clock; a deleted object retrieved as its ``{id, object, deleted}``
stub; Stripe's own example objects (fixtures3.json) through the real load path; objects changing between the pages
of one listing; events kept 30 days (what the store keeps of them, and what a gap longer than that means);
``ending_before`` pages of events applied oldest first and resumed after a failure; ``created[gte]`` pages of events;
a discount in the shape of an event rendered before 2025-09-30 (``coupon`` instead of ``source``); a second sync that
has nothing to fetch."""

from __future__ import annotations

import contextlib
import copy
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

sys.path.insert(0, str(Path(__file__).parent / "metrics"))
from builders import DAY, ServedWorld, World, ts

from stripe_churn.errors import StripeAPIError
from stripe_churn.sandbox.listing import ApiError
from stripe_churn.sandbox.server import RunningSandbox, start_in_thread
from stripe_churn.settings import Secret, Settings
from stripe_churn.sync import EVENT_GROUP, SyncResult, run_sync

KEY = "sk_test_sync_reference_hunt"
T0 = ts(2026, 6, 1)
# Stripe's example objects (stripe/openapi fixtures3.json), beside reference.md: from the repository's parent folder
FIXTURES = next((p for p in (Path(__file__).resolve().parents[2] / "shared" / "stripe" / "fixtures3.json",
                             Path("/work/shared/stripe/fixtures3.json")) if p.exists()), None)
Tamper = Callable[[RunningSandbox], None]


def _sync(served: World | ServedWorld, db: Path, clock: int | None = None, *, full: bool = False,
          tamper: Tamper | None = None, **kw: Any) -> SyncResult:
    """One sync of ``served`` (a World served at ``clock``, or a served world as it is), on 127.0.0.1;
    ``tamper`` changes the server before it, ``kw`` are settings."""
    sim = served.served(clock if clock is not None else T0) if isinstance(served, World) else served
    with start_in_thread(sim, api_key=KEY) as sb:
        if tamper is not None:
            tamper(sb)
        return run_sync(Settings(api_key=Secret(KEY), api_base=sb.url, db=db, rate_limit=10_000, timeout_seconds=10,
                                 **kw), full=full, progress=False)


@contextlib.contextmanager
def _reading(db: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """The store opened read-only (one connection for several queries: each opening costs a few hundredths of a
    second)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        yield con
    finally:
        con.close()


def _rows(db: Path | duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    if isinstance(db, duckdb.DuckDBPyConnection):
        return db.execute(sql, params or []).fetchall()
    with _reading(db) as con:
        return con.execute(sql, params or []).fetchall()


def _at(t: int) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _tracking(calls: list[tuple[Any, ...]]) -> Tamper:
    """Record every list page (resource, its parameters), retrieve (resource, id) and list of a parent's items or
    lines (parent id, ``starting_after``) the server answers."""
    def tamper(sb: RunningSandbox) -> None:
        cat = sb.app.catalog
        list_page, retrieve, sublist_page = cat.list_page, cat.retrieve, cat.sublist_page

        def listed(resource: str, params: Any) -> Any:
            calls.append(("list", resource, dict(params)))
            return list_page(resource, params)

        def retrieved(resource: str, oid: str, params: Any) -> Any:
            calls.append(("get", resource, oid))
            return retrieve(resource, oid, params)

        def sublisted(resource: str, parent_id: str, params: Any, url: str, param: str = "id") -> Any:
            calls.append(("sub", parent_id, params.get("starting_after")))
            return sublist_page(resource, parent_id, params, url, param)

        cat.list_page, cat.retrieve, cat.sublist_page = listed, retrieved, sublisted  # type: ignore[method-assign]
    return tamper


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "reference.duckdb"


def _one_sub(w: World, at: int) -> None:
    w.customer("cus_1", created=at)
    w.product("prod_1", unit_label="seat")
    w.price("price_1", "prod_1", 1_000)
    w.subscribe("sub_1", "cus_1", [("si_1", "price_1", 1)], at)


# --------------------------------------------------------------------------------------------------------------
# Stripe's own example objects (fixtures3.json) through a full listing, then their deleted stubs
# --------------------------------------------------------------------------------------------------------------

FIX_CLOCK = 1234567890 + DAY  # (every fixture object is created at 1234567890, 2009-02-13 23:31:30 UTC)
CUS, PROD, PRICE, COUPON = "cus_QXg1o8vcGmoR32", "prod_QXg1hqf4jFNsqG", "price_1PgafmB7WZ01zgkW6dKueIc5", "Z4OV52SU"
SUB, ITEM, INV, LINE = "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw", "si_QXhVnC2h0Jczwc", "in_1Pgc6tB7WZ01zgkWu9fdqL6I", \
    "il_1Pgc6sB7WZ01zgkWFnxLrLCq"
II, CN, EVT = "ii_1Pgc6sB7WZ01zgkWrG16hkdl", "cn_1Pgc75B7WZ01zgkWJMPt5riP", "evt_1Pgc76B7WZ01zgkWwyRHS12y"
_TYPED = {
    "customers": "email, name, currency, test_clock, country",
    "products": "name, active, unit_label",
    "prices": "product_id, active, currency, type, unit_amount, recurring_interval, recurring_interval_count, "
              "usage_type, options_without_tiers",
    "coupons": "duration, percent_off, amount_off, currency",
    "subscriptions": "customer_id, status, currency, start_date, cancel_at_period_end, cancel_at, canceled_at, ended_at, "
                     "test_clock, trial_start, trial_end, paused_at, cancellation_reason, cancellation_feedback, "
                     "cancellation_comment, pause_collection",
    "subscription_items": "subscription_id, price_id, product_id, quantity, current_period_start, current_period_end",
    "invoices": "customer_id, subscription_id, status, currency, billing_reason, amount_due, amount_paid, total, "
                "period_start, period_end, marked_uncollectible_at, attempted",
    "invoice_lines": "invoice_id, subscription_id, subscription_item_id, price_id, product_id, quantity, amount, "
                     "currency, proration, period_start, period_end, parent_proration, proration_credit, "
                     "tax_inclusive, pretax_credits, invoice_item_id",
    "invoice_items": "customer_id, subscription_id, subscription_item_id, invoice_id, price_id, product_id, quantity, "
                     "amount, currency, proration, proration_credit, date, period_start, period_end, pending",
    "credit_notes": "customer_id, invoice_id, status, currency, total, lines_has_more",
    "discounts": "customer_id, subscription_id, subscription_item_id, coupon_id, start_at, end_at",
    "events": "type, object_id, object_type",
}


@dataclass
class _Stored:
    """What the store held after a sync: per table, id -> (deleted, created, version, raw, typed columns)."""

    rows: dict[str, dict[str, tuple[Any, ...]]] = field(default_factory=dict)
    results: list[SyncResult] = field(default_factory=list)


def _read_store(db: Path) -> dict[str, dict[str, tuple[Any, ...]]]:
    out: dict[str, dict[str, tuple[Any, ...]]] = {}
    with _reading(db) as con:
        for table, cols in _TYPED.items():
            out[table] = {r[0]: (r[1], r[2], r[3], orjson.loads(r[4]), r[5:]) for r in _rows(
                con, f"SELECT id, deleted, created, version, CAST(raw AS VARCHAR), {cols} FROM {table}")}
    return out


@pytest.fixture(scope="module")
def fixture_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], _Stored, _Stored]:
    """The fixtures' customer, product, price, coupon, subscription (one item), invoice (one line), pending invoice
    item, credit note and ``plan.created`` event served as an account at 2009-02-14 (the event, a day old, within
    the 30 days) and listed in full; then the customer, product, coupon and invoice replaced by the fixtures' deleted
    stubs (``deleted_customer``, ``deleted_product``, ``deleted_coupon``, ``deleted_invoice``: the same ids, three
    keys each) and listed in full again a day later."""
    if FIXTURES is None:
        pytest.skip("Stripe's fixtures3.json is not beside this repository")
    fx = json.loads(FIXTURES.read_text())["resources"]
    w = World()
    for resource, name in [("customers", "customer"), ("products", "product"), ("prices", "price"),
                           ("coupons", "coupon"), ("subscriptions", "subscription"), ("invoices", "invoice"),
                           ("invoiceitems", "invoiceitem")]:
        obj = copy.deepcopy(fx[name])
        w.objects[resource][obj["id"]] = obj
    w.events.append(copy.deepcopy(fx["event"]))
    db = tmp_path_factory.mktemp("fixtures") / "fixtures.duckdb"
    first, second = _Stored(), _Stored()

    def served(clock: int) -> ServedWorld:
        sim = w.served(clock)
        sim.objects["credit_notes"] = {CN: copy.deepcopy(fx["credit_note"])}
        return sim

    first.results.append(_sync(served(FIX_CLOCK), db, full=True))
    first.rows = _read_store(db)
    for resource, name in [("customers", "deleted_customer"), ("products", "deleted_product"),
                           ("coupons", "deleted_coupon"), ("invoices", "deleted_invoice")]:
        stub = copy.deepcopy(fx[name])
        w.objects[resource][stub["id"]] = stub
    second.results.append(_sync(served(FIX_CLOCK + DAY), db, full=True))
    second.rows = _read_store(db)
    return fx, first, second


def _without(obj: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


def test_stripes_example_objects_keep_their_json_and_give_these_typed_columns(
        fixture_store: tuple[dict[str, Any], _Stored, _Stored]) -> None:
    """Each fixture read by hand, field by field, as schema.EXTRACT names the columns:

    - customer: email, name null; currency usd; no test clock; ``address.country`` null.
    - product: "T-shirt", active, no unit label.  price: product prod_QXg1…, active, usd, recurring, 2000, month x 1,
      licensed; per_unit, so no currency option lacks tiers.  coupon: forever, 25.5 % off, no amount off, usd.
    - subscription: customer cus_QXg1…, active, usd; start_date, cancel_at, canceled_at, ended_at, trial_start and
      trial_end all 1234567890; cancel_at_period_end true; no test clock; no ``status_details`` (paused_at null);
      cancellation_details all null; ``pause_collection`` an object (true).
    - its item: sub_1Pgc6r…, price_1Pgaf…, product prod_QXg1… (the embedded price's ``product``), quantity 1,
      current_period_start 1896570518 and current_period_end 976287773 as the fixture has them (in that order).
    - invoice: cus_QXg1…, its parent's ``subscription_details.subscription`` "subscription", draft, usd, manual, due
      1000, paid 0, total 1000, period 1234567890, not marked uncollectible, not attempted (attempt_count 0).
    - its line: in_1Pgc6t…; ``subscription_item_details`` names subscription "subscription" and item
      "subscription_item", proration true with ``credited_items`` (a credit); ``pricing`` has no ``price_details``
      (no price, no product); quantity 1, 1000 usd, period 1721954054 both ends; ``taxes`` null (0 inclusive);
      ``pretax_credit_amounts`` null and ``discount_amounts`` empty (0); its invoice item "invoice_item" (the
      ``invoice_item_details``; the other branch names none).
    - pending invoice item: cus_QXg1…, ``parent.subscription_details.subscription`` "subscription", no item, no
      invoice (pending), no price; ``quantity`` 1 (its ``quantity_decimal`` "174352450" is read only without one),
      1000 usd, no proration, date 1234567890, period 1721954054.
    - credit note: cus_QXg1…, invoice in_1Pgc75…, issued, usd, total 1690, its two lines whole (has_more false).
    - the customer's embedded discount obj_123: its own ``customer`` and ``subscription`` null, ``source.coupon``
      null, start 109757538 (1973-06-24 08:12:18 UTC), no end.
    - the ``plan.created`` event: its object the plan price_1Pgaf…; a full listing stores events without applying
      them, so the price's row stays the price.

    (The fixture fills every branch of an invoice's and a line's ``parent`` whatever its ``type``, quote_details and
    invoice_item_details here; Stripe fills only the branch ``type`` names. The columns read the subscription
    branch when it is filled, as they would from Stripe's objects: subscription "subscription", item
    "subscription_item".)

    Raw JSON is what the server sent: the fixture itself, except the price's and the coupon's ``tiers`` /
    ``currency_options`` / ``applies_to``, which the listing expands. Every listed object's version is the newest
    retained event's ``created``, 1234567890; the pending invoice item's, the server's time at its listing,
    1234567890 + 86400 (module docstring of sync.py)."""
    fx, first, _ = fixture_store
    r = first.results[0]
    assert (r.mode, r.status, r.error) == ("full", "succeeded", None)
    rows = first.rows
    t, t_line = _at(1234567890), _at(1721954054)
    typed = {table: {oid: row[4] for oid, row in objs.items()} for table, objs in rows.items()}
    assert typed["customers"] == {CUS: (None, None, "usd", None, None)}
    assert typed["products"] == {PROD: ("T-shirt", True, None)}
    assert typed["prices"] == {PRICE: (PROD, True, "usd", "recurring", 2000, "month", 1, "licensed", False)}
    assert typed["coupons"] == {COUPON: ("forever", 25.5, None, "usd")}
    assert typed["subscriptions"] == {SUB: (CUS, "active", "usd", t, True, t, t, t, None, t, t, None, None, None, None,
                                            True)}
    assert typed["subscription_items"] == {ITEM: (SUB, PRICE, PROD, 1, _at(1896570518), _at(976287773))}
    assert typed["invoices"] == {INV: (CUS, "subscription", "draft", "usd", "manual", 1000, 0, 1000, t, t, None, False)}
    assert typed["invoice_lines"] == {LINE: (INV, "subscription", "subscription_item", None, None, 1, 1000, "usd", True,
                                             t_line, t_line, True, True, 0, 0, "invoice_item")}
    assert typed["invoice_items"] == {II: (CUS, "subscription", None, None, None, None, 1, 1000, "usd", False, False,
                                           t, t_line, t_line, True)}
    assert typed["credit_notes"] == {CN: (CUS, "in_1Pgc75B7WZ01zgkWYv4iMwt7", "issued", "usd", 1690, False)}
    assert typed["discounts"] == {"obj_123": (None, None, None, None, _at(109757538), None)}
    assert typed["events"] == {EVT: ("plan.created", PRICE, "plan")}
    # raw JSON as sent
    for table, oid, name in [("customers", CUS, "customer"), ("products", PROD, "product"),
                             ("subscriptions", SUB, "subscription"), ("invoices", INV, "invoice"),
                             ("invoice_items", II, "invoiceitem"), ("credit_notes", CN, "credit_note"),
                             ("events", EVT, "event")]:
        assert rows[table][oid][3] == fx[name], table
    assert _without(rows["prices"][PRICE][3], "tiers", "currency_options") == fx["price"]
    assert _without(rows["coupons"][COUPON][3], "currency_options", "applies_to") == fx["coupon"]
    assert rows["subscription_items"][ITEM][3] == fx["subscription"]["items"]["data"][0]
    assert rows["invoice_lines"][LINE][3] == fx["invoice"]["lines"]["data"][0]
    assert rows["discounts"]["obj_123"][3] == fx["customer"]["discount"]
    assert rows["prices"][PRICE][3]["object"] == "price"  # (the plan of the event is not applied by a listing)
    # created and version
    assert [rows[tb][oid][1] for tb, oid in [("customers", CUS), ("subscription_items", ITEM), ("invoice_lines", LINE),
                                            ("events", EVT)]] == [t, _at(1721954054), None, t]
    assert {tb: {row[2] for row in objs.values()} for tb, objs in rows.items()} == \
        {tb: {FIX_CLOCK if tb == "invoice_items" else 1234567890} for tb in rows}


def test_a_deleted_objects_stub_flags_its_row_and_keeps_its_last_full_copy(
        fixture_store: tuple[dict[str, Any], _Stored, _Stored]) -> None:
    """The second full listing no longer lists the customer, product, coupon and invoice, and retrieving each gives
    its stub ``{"id", "object", "deleted": true}`` (reference 1: the fixtures deleted_customer, deleted_product,
    deleted_coupon, deleted_invoice; the invoice's asked for again without ``expand``, which a stub refuses). Each
    row: deleted, its JSON and typed columns those of the first listing (a stub
    only flags), its version the second listing's (the plan.created event is still the newest retained one:
    1234567890). The invoice's line: flagged deleted with its invoice. What is still listed (the price, the
    subscription, its item, the credit note) is not deleted; one row per id throughout."""
    _, first, second = fixture_store
    r = second.results[0]
    assert (r.mode, r.status, r.error) == ("full", "succeeded", None)
    for table, oid in [("customers", CUS), ("products", PROD), ("coupons", COUPON), ("invoices", INV)]:
        deleted, created, version, raw, typed = second.rows[table][oid]
        assert (deleted, created, version) == (True, _at(1234567890), 1234567890), table
        assert (raw, typed) == first.rows[table][oid][3:], table
    assert second.rows["invoice_lines"][LINE][0] is True
    assert [second.rows[tb][oid][0] for tb, oid in [("prices", PRICE), ("subscriptions", SUB),
                                                    ("subscription_items", ITEM), ("credit_notes", CN)]] == [False] * 4
    assert {tb: sorted(objs) for tb, objs in second.rows.items()} == {tb: sorted(objs) for tb, objs in first.rows.items()}


# --------------------------------------------------------------------------------------------------------------
# One account listed in full: a subscription of 12 items, an invoice of 150 lines, every subscription status, an
# archived price, objects on a test clock; then a change; then nothing
# --------------------------------------------------------------------------------------------------------------

STATUSES = ("active", "canceled", "incomplete", "incomplete_expired", "past_due", "paused", "trialing", "unpaid")
CLOCKS = {"object": "list", "has_more": False, "url": "/v1/test_helpers/test_clocks", "data": [{
    "id": "clock_1", "object": "test_helpers.test_clock", "created": T0, "deletes_after": T0 + 30 * DAY,
    "frozen_time": T0 + DAY, "livemode": False, "name": "clock", "status": "ready"}]}


def _with_test_clocks(sb: RunningSandbox) -> None:
    """The server as Stripe lists objects on test clocks (reference 3), which the sandbox has not: /v1/test_helpers/
    test_clocks lists clock_1, and the lists of customers and subscriptions hold only the objects on the clock their
    ``test_clock`` names (without one: only those on no clock)."""
    app, cat = sb.app, sb.app.catalog
    route, list_page = app._route, cat.list_page

    def routed(req: Any, parts: list[str]) -> Any:
        if parts == ["test_helpers", "test_clocks"]:
            return orjson.dumps(CLOCKS)
        return route(req, parts)

    def listed(resource: str, params: Any) -> Any:
        if resource not in ("customers", "subscriptions"):
            return list_page(resource, params)
        clock = params.get("test_clock")
        page = orjson.loads(b"".join(bytes(p) for p in list_page(
            resource, {k: v for k, v in params.items() if k != "test_clock"})))
        page["data"] = [o for o in page["data"] if o.get("test_clock") == clock]
        return [orjson.dumps(page)]

    app._route, cat.list_page = routed, listed  # type: ignore[method-assign]


@dataclass
class _Account:
    db: Path
    results: list[SyncResult] = field(default_factory=list)
    calls: list[list[tuple[Any, ...]]] = field(default_factory=list)
    items: list[list[tuple[Any, ...]]] = field(default_factory=list)
    lines: list[list[tuple[Any, ...]]] = field(default_factory=list)
    discounts: list[list[tuple[Any, ...]]] = field(default_factory=list)
    seen: list[list[tuple[Any, ...]]] = field(default_factory=list)
    cursors: list[dict[str, tuple[Any, ...]]] = field(default_factory=list)
    runs: list[tuple[Any, ...]] = field(default_factory=list)
    invoices: tuple[str, str] = ("", "")
    hundredth: str = ""
    event_items: int = 0


@pytest.fixture(scope="module")
def account(tmp_path_factory: pytest.TempPathFactory) -> _Account:
    """sub_1 of cus_1 with items si_00..si_11 (price_kk of 100 x (k + 1), quantity k + 1), si_11 carrying the item
    discount di_item (co_1, 10 % forever); its subscription_create invoice bills the 12 items; a manual invoice of 150
    lines of si_11 (amounts 1..150), the last one naming di_item. Beside it, sub_<status> of cus_<status> in each of
    the eight statuses (price_on); price_off, archived, of prod_off, inactive; cus_clk and its sub_clk (12 items of
    price_on) on the test clock clock_1. Full sync at T0 + 2 days; at T0 + 3 days an update of sub_1 removes si_05 and
    sets si_11 to 20 (no proration), incremental sync at T0 + 4 days; an incremental sync an hour later, with nothing
    new."""
    w = World()
    w.customer("cus_1", created=T0)
    w.product("prod_1", unit_label="seat")
    for k in range(12):
        w.price(f"price_{k:02d}", "prod_1", 100 * (k + 1))
    w.coupon("co_1", percent_off=10)
    w.discount("co_1", T0, customer="cus_1", subscription="sub_1", subscription_item="si_11", did="di_item")
    sub = w.subscribe("sub_1", "cus_1", [(f"si_{k:02d}", f"price_{k:02d}", k + 1) for k in range(12)], T0)
    sub["items"]["data"][11]["discounts"] = ["di_item"]
    create = next(iter(w.objects["invoices"]))
    lines = [w._line("sub_1", sub["items"]["data"][11], T0 + DAY, T0 + DAY, amount=k + 1) for k in range(150)]
    lines[-1]["discounts"] = ["di_item"]
    manual = w._invoice("sub_1", T0 + DAY, "manual", lines)["id"]
    w.product("prod_on")
    w.product("prod_off", active=False)
    w.price("price_on", "prod_on", 1_000)
    w.price("price_off", "prod_off", 2_000)["active"] = False
    for k, status in enumerate(STATUSES):
        w.customer(f"cus_{status}", created=T0 + k)
        w.subscribe(f"sub_{status}", f"cus_{status}", [(f"si_{status}", "price_on", 1)], T0 + k)["status"] = status
    w.customer("cus_clk", created=T0 + 60, test_clock="clock_1")
    w.subscribe("sub_clk", "cus_clk", [(f"si_c{k:02d}", "price_on", 1) for k in range(12)], T0 + 60)
    w.objects["subscriptions"]["sub_clk"]["test_clock"] = "clock_1"
    out = _Account(tmp_path_factory.mktemp("account") / "account.duckdb", invoices=(create, manual),
                   hundredth=lines[99]["id"])
    db = out.db

    def snap() -> None:
        with _reading(db) as con:
            snap_with(con)

    def snap_with(con: duckdb.DuckDBPyConnection) -> None:
        out.items.append(_rows(con, "SELECT id, subscription_id, price_id, quantity, deleted, "
                                   "raw->>'$.discounts[0].id' FROM subscription_items WHERE subscription_id = 'sub_1' "
                                   "ORDER BY id"))
        out.lines.append(_rows(con, "SELECT invoice_id, count(*), count(DISTINCT id), sum(amount), "
                                   "count(*) FILTER (WHERE deleted) FROM invoice_lines WHERE list_contains(?, invoice_id) "
                                   "GROUP BY ALL ORDER BY 1", [[create, manual]]))
        out.discounts.append(_rows(con, "SELECT id, subscription_id, subscription_item_id, coupon_id, deleted "
                                       "FROM discounts ORDER BY id"))
        out.seen.append(_rows(con, " UNION ALL ".join(
            f"SELECT '{t}', id, last_seen_at, state_seen_at FROM {t}" for t in
            ("customers", "products", "prices", "coupons", "subscriptions", "subscription_items", "invoices",
             "invoice_lines", "discounts", "events")) + " ORDER BY 1, 2"))
        out.cursors.append({r[0]: r[1:] for r in _rows(con, "SELECT stream, value, created FROM sync_cursors")})

    for clock, full in [(T0 + 2 * DAY, True), (T0 + 4 * DAY, False), (T0 + 4 * DAY + 3600, False)]:
        if clock == T0 + 4 * DAY:
            w.update("sub_1", T0 + 3 * DAY, prorate=False,
                     items=[(f"si_{k:02d}", f"price_{k:02d}", 20 if k == 11 else k + 1) for k in range(12) if k != 5])
            sub["items"]["data"][-1]["discounts"] = ["di_item"]  # (the changed item keeps its discount)
            out.event_items = len(w.events[-1]["data"]["previous_attributes"]["items"]["data"])
        calls: list[tuple[Any, ...]] = []
        track = _tracking(calls)

        def tamper(sb: RunningSandbox, track: Tamper = track) -> None:
            _with_test_clocks(sb)
            track(sb)

        out.results.append(_sync(w, db, clock, full=full, tamper=tamper))
        out.calls.append(calls)
        snap()
    out.runs = _rows(db, "SELECT mode, status, CAST(counts AS VARCHAR), error FROM sync_runs ORDER BY started_at")
    return out


def test_a_subscription_with_more_items_than_embedded_is_stored_whole(account: _Account) -> None:
    """Stripe embeds 10 of sub_1's 12 items (``has_more``): the rest come from
    ``/v1/subscription_items?subscription=sub_1`` (one page: 12 < 100) with their discounts expanded. Stored: si_00..
    si_11, each of sub_1, price_kk, quantity k + 1, none deleted; si_11 (the 12th, not embedded) names di_item
    expanded, and di_item is stored as si_11's discount of co_1."""
    a = account
    assert (a.results[0].mode, a.results[0].status) == ("full", "succeeded")
    assert a.items[0] == [(f"si_{k:02d}", "sub_1", f"price_{k:02d}", k + 1, False, "di_item" if k == 11 else None)
                          for k in range(12)]
    assert a.discounts[0] == [("di_item", "sub_1", "si_11", "co_1", False)]
    assert [c for c in a.calls[0] if c[:2] == ("sub", "sub_1")] == [("sub", "sub_1", None)]


def test_an_invoice_with_more_lines_than_a_page_is_stored_whole(account: _Account) -> None:
    """The subscription_create invoice: 12 lines (10 embedded), 100 x sum(k^2, k=1..12) = 100 x 650 = 65,000. The
    manual invoice: 150 lines, 10 embedded; its lines endpoint answers 100 per page: a first page, then one after
    the 100th line; 150 rows, 1 + 2 + ... + 150 = 11,325. The 150th line, on the second page, names di_item
    expanded."""
    a = account
    create, manual = a.invoices
    assert a.lines[0] == sorted([(create, 12, 12, 65_000, 0), (manual, 150, 150, 11_325, 0)])
    assert [c for c in a.calls[0] if c[0] == "sub" and c[1] == manual] == [("sub", manual, None),
                                                                         ("sub", manual, a.hundredth)]
    assert _rows(a.db, "SELECT raw->>'$.discounts[0].id', raw->>'$.discounts[0].object' FROM invoice_lines "
                       "WHERE invoice_id = ? AND amount = 150", [manual]) == [("di_item", "discount")]


def test_a_full_listing_stores_every_subscription_status_and_every_archived_price_and_product(
        account: _Account) -> None:
    """``/v1/subscriptions`` without ``status`` leaves the canceled out, ``/v1/prices`` and ``/v1/products`` without
    ``active`` the archived (reference 2-3): each of the eight subscriptions is stored with its status, and
    price_off and prod_off inactive."""
    a = account
    assert _rows(a.db, "SELECT id, status FROM subscriptions WHERE list_contains(?, id) ORDER BY id",
                 [[f"sub_{s}" for s in STATUSES]]) == sorted((f"sub_{s}", s) for s in STATUSES)
    assert _rows(a.db, "SELECT id, active FROM prices WHERE id LIKE 'price_o%' UNION ALL "
                       "SELECT id, active FROM products WHERE id LIKE 'prod_o%' ORDER BY 1") == \
        [("price_off", False), ("price_on", True), ("prod_off", False), ("prod_on", True)]
    assert ("list", "subscriptions", {"status": "all", "expand": ["data.discounts", "data.items.data.discounts"],
                                      "limit": "100"}) in a.calls[0]


def test_objects_on_a_test_clock_are_listed_by_their_clock(account: _Account) -> None:
    """Left out of the plain lists, cus_clk and sub_clk come from the lists asked for clock_1 (a test key): both
    stored with test_clock clock_1, sub_clk with its 12 items (10 embedded, the rest paged), none deleted."""
    a = account
    asked = {(c[1], c[2].get("test_clock"), c[2].get("status")) for c in a.calls[0] if c[0] == "list"}
    assert {("customers", "clock_1", None), ("subscriptions", "clock_1", "all")} <= asked
    assert _rows(a.db, "SELECT id, test_clock FROM customers WHERE test_clock IS NOT NULL UNION ALL "
                       "SELECT id, test_clock FROM subscriptions WHERE test_clock IS NOT NULL ORDER BY 1") == \
        [("cus_clk", "clock_1"), ("sub_clk", "clock_1")]
    assert _rows(a.db, "SELECT count(*), count(*) FILTER (WHERE deleted) FROM subscription_items "
                       "WHERE subscription_id = 'sub_clk'") == [(12, 0)]


def test_an_item_removed_from_a_long_subscription_is_flagged_by_the_incremental_sync(account: _Account) -> None:
    """The update's ``customer.subscription.updated`` carries the subscription cut to 10 items (si_05 gone: si_00..
    si_10 but si_05, then si_11 beyond). The incremental sync pages the items whole for the refreshed copy: si_05
    deleted, si_11 at 20, the 10 others as they were; di_item still on si_11. The event is stored as it was sent
    (its ``previous_attributes.items`` hold the 12 items before, as the builder wrote them)."""
    a = account
    assert (a.results[1].mode, a.results[1].status) == ("incremental", "succeeded")
    assert a.items[1] == [(f"si_{k:02d}", "sub_1", f"price_{k:02d}", 20 if k == 11 else k + 1, k == 5,
                           "di_item" if k == 11 else None) for k in range(12)]
    assert a.discounts[1] == [("di_item", "sub_1", "si_11", "co_1", False)]
    assert a.event_items == 12
    assert _rows(a.db, "SELECT json_array_length(raw->'$.data.previous_attributes.items.data') FROM events "
                       "WHERE type = 'customer.subscription.updated'") == [(12,)]


def test_a_second_sync_with_nothing_new_fetches_and_writes_nothing(account: _Account) -> None:
    """An hour later nothing changed: the incremental sync asks for the cursor event (is it retained?), one page of
    the events after it (empty) and the pending invoice items (none), nothing else; no row is written (every
    last_seen_at and state_seen_at as before), the events cursor stays, only ``events:complete`` moves to the
    server's time (T0 + 4 days + 1 hour); its sync_runs row: incremental, succeeded, counts {}, no error."""
    a = account
    assert (a.results[2].mode, a.results[2].status, a.results[2].counts) == ("incremental", "succeeded", {})
    cursor = a.cursors[1]["events"][0]
    assert a.calls[2] == [("get", "events", cursor), ("list", "events", {"limit": "100", "ending_before": cursor}),
                          ("list", "invoiceitems", {"pending": "true", "expand": ["data.discounts"], "limit": "100"})]
    assert a.seen[2] == a.seen[1]
    assert a.cursors[2] == {**a.cursors[1], "events:complete": (None, T0 + 4 * DAY + 3600)}
    assert a.runs[2] == ("incremental", "succeeded", "{}", None)


# --------------------------------------------------------------------------------------------------------------
# Objects changing while they are listed; an incremental sync failing midway
# --------------------------------------------------------------------------------------------------------------

@dataclass
class _Changing:
    db: Path
    results: list[SyncResult | BaseException] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    after_full: list[tuple[Any, ...]] = field(default_factory=list)
    after_events: list[tuple[Any, ...]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    after_failure: list[list[tuple[Any, ...]]] = field(default_factory=list)


EVENTS_OF_149 = ("SELECT count(*), count(DISTINCT id), max(id) FROM events WHERE type = 'customer.updated' "
                 "AND object_id = 'cus_149'")


def _failing_once_after(event_id: str, failed: list[str]) -> Tamper:
    """The page of events after ``event_id`` (``ending_before``) answers 500 once."""
    def tamper(sb: RunningSandbox) -> None:
        list_page = sb.app.catalog.list_page

        def listed(resource: str, params: Any) -> Any:
            if resource == "events" and params.get("ending_before") == event_id and not failed:
                failed.append(event_id)
                raise ApiError(500, "An error occurred with our connection to Stripe.", type_="api_error")
            return list_page(resource, params)

        sb.app.catalog.list_page = listed  # type: ignore[method-assign]
    return tamper


@pytest.fixture(scope="module")
def changing(tmp_path_factory: pytest.TempPathFactory) -> _Changing:
    """150 customers, cus_kkk created at T0 + 60 k, and cus_149's creation event (the newest event: the listing's
    start). When the server is asked for the second page of customers, cus_000 gets ``metadata.tier`` gold with its
    ``customer.updated``, and cus_new is created, both a minute before the server's clock (T0 + 1 day). Full sync,
    then an incremental one. Then 650 ``customer.updated`` of cus_149 a second apart from T0 + 1 day + 60 (metadata
    n = 0..649), an incremental sync at T0 + 2 days whose page of events after the 500th answers 500 (no retry), and
    the next incremental sync."""
    w = World()
    for k in range(150):
        w.customer(f"cus_{k:03d}", created=T0 + 60 * k)
    w.event("customer.created", T0 + 60 * 149, w.objects["customers"]["cus_149"])
    clock = T0 + DAY
    sim = w.served(clock)
    out = _Changing(tmp_path_factory.mktemp("changing") / "changing.duckdb")
    db = out.db

    def changing_once(sb: RunningSandbox) -> None:
        cat = sb.app.catalog
        list_page = cat.list_page

        def listed(resource: str, params: Any) -> Any:
            if resource == "customers" and params.get("starting_after") and not out.changed:
                out.changed.append(str(params["starting_after"]))
                c0 = w.objects["customers"]["cus_000"]
                before = copy.deepcopy(c0)
                c0["metadata"] = {"tier": "gold"}
                w.event("customer.updated", clock - 60, c0, before)
                w.event("customer.created", clock - 60, w.customer("cus_new", created=clock - 60))
                sim.events = sorted(w.events, key=lambda e: e["created"])
                cat.reset()
            return list_page(resource, params)

        cat.list_page = listed  # type: ignore[method-assign]

    customers = ("SELECT count(*), count(DISTINCT id), max(raw->>'$.metadata.tier'), "
                 "max(raw->>'$.metadata.tier') FILTER (WHERE id = 'cus_000'), bool_or(id = 'cus_new') FROM customers")
    out.results.append(_sync(sim, db, full=True, tamper=changing_once))
    out.after_full = _rows(db, customers)
    out.results.append(_sync(sim, db))
    out.after_events = _rows(db, customers)
    c = w.objects["customers"]["cus_149"]
    for k in range(650):
        before = copy.deepcopy(c)
        c["metadata"] = {"n": str(k)}
        out.ids.append(w.event("customer.updated", T0 + DAY + 60 + k, c, before)["id"])
    for tamper in (_failing_once_after(out.ids[EVENT_GROUP - 1], out.failed), None):
        try:
            out.results.append(_sync(w, db, T0 + 2 * DAY, tamper=tamper, max_retries=0))
        except StripeAPIError as exc:
            out.results.append(exc)
        with _reading(db) as con:
            out.after_failure.append([*_rows(con, EVENTS_OF_149),
                                      *_rows(con, "SELECT value, created FROM sync_cursors WHERE stream = 'events'"),
                                      *_rows(con, "SELECT raw->>'$.metadata.n' FROM customers WHERE id = 'cus_149'")])
    return out


def test_objects_created_or_changed_between_two_pages_of_a_listing_are_not_lost(changing: _Changing) -> None:
    """The second page of customers is asked for after the 100 newest, cus_149..cus_050; cus_000 is on it. The full
    listing stores the 150, cus_000 gold as that page shows it. The incremental sync after it applies the two events
    after the listing's start: 151 customers, one row each, cus_000 gold, cus_new there."""
    ch = changing
    assert [r.status for r in ch.results[:2] if isinstance(r, SyncResult)] == ["succeeded", "succeeded"]
    assert ch.changed == ["cus_050"]
    assert ch.after_full[0][:4] == (150, 150, "gold", "gold")
    assert ch.after_events == [(151, 151, "gold", "gold", True)]


def test_an_incremental_sync_that_fails_midway_resumes_without_loss_or_duplicate(changing: _Changing) -> None:
    """The incremental sync reads the 650 events oldest first, 100 a page (``ending_before`` the newest read); every
    EVENT_GROUP = 500 read are applied with the events cursor in one transaction. The sixth page (after the 500th)
    answers 500: the run fails, the store keeps those 500, its cursor on the 500th (cus_149 refreshed: n = 649, as
    Stripe serves it now). The next run reads 501..650: 650 events, each once, the cursor on the 650th, created
    T0 + 1 day + 60 + 649; sync_runs: full, incremental succeeded, then incremental failed naming the 500 and
    incremental succeeded."""
    ch = changing
    ids = ch.ids
    assert ch.failed == [ids[499]]
    assert isinstance(ch.results[2], StripeAPIError) and "500" in str(ch.results[2])
    assert ch.after_failure[0] == [(500, 500, ids[499]), (ids[499], T0 + DAY + 60 + 499), ("649",)]
    r = ch.results[3]
    assert isinstance(r, SyncResult) and (r.mode, r.status) == ("incremental", "succeeded")
    assert ch.after_failure[1] == [(650, 650, ids[-1]), (ids[-1], T0 + DAY + 60 + 649), ("649",)]
    runs = _rows(ch.db, "SELECT mode, status, error FROM sync_runs ORDER BY started_at")
    assert [run[:2] for run in runs] == [("full", "succeeded"), ("incremental", "succeeded"),
                                         ("incremental", "failed"), ("incremental", "succeeded")]
    assert runs[2][2].startswith("Stripe answered 500 for GET /v1/events")


# --------------------------------------------------------------------------------------------------------------
# Events: 30 days, pages by time, gaps
# --------------------------------------------------------------------------------------------------------------

@dataclass
class _Retention:
    db: Path
    kept: str = ""
    last: str = ""
    results: list[SyncResult] = field(default_factory=list)
    events: list[list[tuple[Any, ...]]] = field(default_factory=list)
    cursors: list[list[tuple[Any, ...]]] = field(default_factory=list)


@pytest.fixture(scope="module")
def retention(tmp_path_factory: pytest.TempPathFactory) -> _Retention:
    """cus_1's sub_1 at T0 (its ``customer.subscription.created`` then), cus_2 (T0, no event), cus_1's
    ``customer.updated`` at T0 + 20 days. Full syncs at T0 + 35 and T0 + 60 days. Then from T0 + 61 days 249
    ``customer.updated`` of cus_2 a second apart (n = 0..248) and its ``customer.deleted`` at T0 + 61 days + 300
    (carrying n = 248), Stripe answering cus_2's retrieve with its stub; incremental sync at T0 + 62 days."""
    _one_sub(w := World(), T0)
    w.customer("cus_2", created=T0)
    c = w.objects["customers"]["cus_1"]
    before = copy.deepcopy(c)
    c["metadata"] = {"plan": "x"}
    out = _Retention(tmp_path_factory.mktemp("retention") / "retention.duckdb")
    out.kept = w.event("customer.updated", T0 + 20 * DAY, c, before)["id"]

    def snap() -> None:
        with _reading(out.db) as con:
            snap_with(con)

    def snap_with(con: duckdb.DuckDBPyConnection) -> None:
        out.events.append(_rows(con, "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE deleted), "
                                        "max(id) FILTER (WHERE type = 'customer.updated' AND object_id = 'cus_1') "
                                        "FROM events"))
        out.cursors.append(_rows(con, "SELECT stream, value, created FROM sync_cursors WHERE stream LIKE 'events%' "
                                         "ORDER BY stream"))

    for clock in (T0 + 35 * DAY, T0 + 60 * DAY):
        out.results.append(_sync(w, out.db, clock, full=True))
        snap()
    c2 = w.objects["customers"]["cus_2"]
    for k in range(249):
        before = copy.deepcopy(c2)
        c2["metadata"] = {"n": str(k)}
        w.event("customer.updated", T0 + 61 * DAY + k, c2, before)
    out.last = w.event("customer.deleted", T0 + 61 * DAY + 300, c2)["id"]
    w.objects["customers"]["cus_2"] = {"id": "cus_2", "object": "customer", "deleted": True}
    out.results.append(_sync(w, out.db, T0 + 62 * DAY))
    snap()
    return out


def test_the_events_stored_are_those_stripe_keeps_and_stay_once_it_no_longer_does(retention: _Retention) -> None:
    """At T0 + 35 days Stripe keeps events from T0 + 5 days: the listing gets only the ``customer.updated`` of
    T0 + 20 days (the creation at T0 is gone), which the store holds alone and which is the events cursor. At T0 + 60
    days it keeps none (that one is 40 days old): the stored one stays, not deleted (Stripe no longer listing it
    says nothing of it); the listing is dated by the server's clock (cursor ``events`` without an event, at T0 + 60
    days); no gap is recorded: the events were complete up to T0 + 35 days, later than the oldest Stripe keeps at
    T0 + 60 days (T0 + 30 days)."""
    rt = retention
    assert [(r.mode, r.status) for r in rt.results[:2]] == [("full", "succeeded")] * 2
    assert rt.events[0] == [(1, 1, 0, rt.kept)]
    assert rt.cursors[0] == [("events", rt.kept, T0 + 20 * DAY), ("events:complete", None, T0 + 35 * DAY)]
    assert rt.events[1] == [(1, 1, 0, rt.kept)]
    assert rt.cursors[1] == [("events", None, T0 + 60 * DAY), ("events:complete", None, T0 + 60 * DAY)]


def test_events_listed_by_time_over_several_pages_keep_the_last_state_of_a_deleted_customer(
        retention: _Retention) -> None:
    """With no event for its cursor, the incremental sync lists the events ``created[gte]`` the cursor's time
    (T0 + 60 days), newest page first (100, 100, 50): the 250 of cus_2 stored once each, beside the one kept; cus_2
    flagged deleted with the JSON its deletion event carried (n = 248), its version that event's time; cus_1 as the
    second listing stored it (version T0 + 60 days); the events cursor on the deletion event."""
    rt = retention
    assert (rt.results[2].mode, rt.results[2].status) == ("incremental", "succeeded")
    assert rt.events[2] == [(251, 251, 0, rt.kept)]
    assert _rows(rt.db, "SELECT id, deleted, raw->>'$.metadata.n', version FROM customers ORDER BY id") == \
        [("cus_1", False, None, T0 + 60 * DAY), ("cus_2", True, "248", T0 + 61 * DAY + 300)]
    assert rt.cursors[2][0] == ("events", rt.last, T0 + 61 * DAY + 300)


def test_no_event_at_the_listing_then_a_quiet_spell_longer_than_stripes_30_days_is_a_gap(db: Path) -> None:
    """Full sync at T0 + 40 days: the account's events (T0) are gone, the events cursor is the server's time
    (T0 + 40 days), with no event. At T0 + 45 days cus_2 and sub_2 are created (their events then). The next sync is
    at T0 + 80 days: Stripe keeps events from T0 + 50 days only, so those of T0 + 45 days are lost, and the events
    were last complete at T0 + 40 days: a gap (design.md 3; sync.py: "When the cursor event is no longer retained
    (Stripe keeps 30 days) there is a gap: the sync falls back to a full re-list"). Right: mode fallback, cus_2 and
    sub_2 stored, the gap recorded (``events:unbroken`` from T0 + 50 days)."""
    _one_sub(w := World(), T0)
    assert _sync(w, db, T0 + 40 * DAY, full=True).status == "succeeded"
    assert _rows(db, "SELECT value, created FROM sync_cursors WHERE stream = 'events'") == [(None, T0 + 40 * DAY)]
    w.event("customer.created", T0 + 45 * DAY, w.customer("cus_2", created=T0 + 45 * DAY))
    w.subscribe("sub_2", "cus_2", [("si_2", "price_1", 1)], T0 + 45 * DAY)
    r = _sync(w, db, T0 + 80 * DAY)
    assert (r.mode, r.status) == ("fallback", "succeeded")
    assert _rows(db, "SELECT id FROM subscriptions ORDER BY id") == [("sub_1",), ("sub_2",)]
    assert _rows(db, "SELECT id FROM customers ORDER BY id") == [("cus_1",), ("cus_2",)]
    assert _rows(db, "SELECT created FROM sync_cursors WHERE stream = 'events:unbroken'") == [(T0 + 50 * DAY,)]

# --------------------------------------------------------------------------------------------------------------
# Deletions and older shapes that events carry
# --------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def deleted_draft(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[SyncResult]]:
    """cus_1's sub_1 (si_1, 10.00 a month, T0); a draft manual invoice of 3 lines of si_1 (T0 + 1 day, with its
    ``invoice.created``); cus_1's own discount di_old of the forever coupon co_old, as the listing at the pinned API
    version serves it (``source.coupon`` co_old). Full sync at T0 + 2 days. Then at T0 + 3 days the draft is deleted
    (``invoice.deleted`` with the draft, and Stripe's stub for it after) and the discount removed
    (``customer.discount.deleted`` rendered at API version 2025-03-31.basil, before the discount's ``source`` came in
    2025-09-30: its ``coupon`` the whole coupon, no ``source``); incremental sync at T0 + 4 days."""
    _one_sub(w := World(), T0)
    item = w.objects["subscriptions"]["sub_1"]["items"]["data"][0]
    inv = w._invoice("sub_1", T0 + DAY, "manual", [w._line("sub_1", item, T0 + DAY, T0 + DAY, amount=100)
                                                   for _ in range(3)])
    inv.update(status="draft", parent=None, status_transitions={"finalized_at": None, "paid_at": None,
                                                                "marked_uncollectible_at": None, "voided_at": None})
    w.event("invoice.created", T0 + DAY, inv)
    coupon = w.coupon("co_old", percent_off=20)
    disc = w.discount("co_old", T0, customer="cus_1", did="di_old")
    w.objects["customers"]["cus_1"]["discount"] = disc
    db = tmp_path_factory.mktemp("draft") / "draft.duckdb"
    results = [_sync(w, db, T0 + 2 * DAY, full=True)]
    w.event("invoice.deleted", T0 + 3 * DAY, inv)
    w.objects["invoices"][inv["id"]] = {"id": inv["id"], "object": "invoice", "deleted": True}
    cus = w.objects["customers"]["cus_1"]
    before = copy.deepcopy(cus)
    cus["discount"] = None
    old = {**_without(disc, "source"), "coupon": copy.deepcopy(coupon)}
    w.event("customer.discount.deleted", T0 + 3 * DAY + 60, old)["api_version"] = "2025-03-31.basil"
    w.event("customer.updated", T0 + 3 * DAY + 60, cus, before)
    results.append(_sync(w, db, T0 + 4 * DAY))
    return db, inv["id"], results


def test_a_discount_in_the_shape_of_an_older_api_version_keeps_its_coupon(
        deleted_draft: tuple[Path, str, list[SyncResult]]) -> None:
    """An event keeps the shape of the API version of its creation (reference 2 and 6): the
    ``customer.discount.deleted`` of basil names its coupon as ``coupon`` (an object), not ``source.coupon``. The
    discount's row: deleted, its JSON that event's, its coupon still co_old, its customer cus_1, its start T0."""
    db, _, results = deleted_draft
    assert [(r.mode, r.status) for r in results] == [("full", "succeeded"), ("incremental", "succeeded")]
    assert _rows(db, "SELECT id, deleted, coupon_id, customer_id, start_at, raw->>'$.source' IS NULL, "
                     "raw->>'$.coupon.id' FROM discounts") == [("di_old", True, "co_old", "cus_1", _at(T0), True,
                                                               "co_old")]


def test_the_lines_of_a_draft_deleted_between_two_syncs_are_flagged_with_it(
        deleted_draft: tuple[Path, str, list[SyncResult]]) -> None:
    """A draft invoice deleted goes with its lines (GET /v1/invoices/<id>/lines answers 404 for it), and a full
    listing of that state flags them deleted with their invoice. Right after the incremental sync that applied
    ``invoice.deleted``: the invoice deleted, and its 3 lines deleted too; the subscription_create invoice's line
    not."""
    db, draft, _ = deleted_draft
    assert _rows(db, "SELECT deleted FROM invoices WHERE id = ?", [draft]) == [(True,)]
    assert _rows(db, "SELECT invoice_id = ?, count(*), count(*) FILTER (WHERE deleted) FROM invoice_lines "
                     "GROUP BY ALL ORDER BY 1", [draft]) == [(False, 1, 0), (True, 3, 3)]
