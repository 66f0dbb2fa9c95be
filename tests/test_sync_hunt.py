"""The sync against Stripe's documented (and reported) behaviour, at its edges: the real sync, through the SDK's HTTP
client, against the sandbox server serving a small account built by hand (tests/metrics/builders.py), the server
changed where a case needs Stripe to answer otherwise than the sandbox does; each case built so that the right store
can be worked out by hand. A few cases of one part alone: the whole-list pager, and the client's reading of a refused
cursor under ``responses``."""

from __future__ import annotations

import asyncio
import copy
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
import responses
import stripe

sys.path.insert(0, str(Path(__file__).parent / "metrics"))
from builders import DAY, World, ts

from stripe_churn.errors import StripeAPIError
from stripe_churn.sandbox.listing import ApiError
from stripe_churn.sandbox.server import RunningSandbox, start_in_thread
from stripe_churn.settings import Secret, Settings
from stripe_churn.stripe_api.client import CursorGoneError, NotFoundError, StripeRaw
from stripe_churn.sync import SyncResult, _Sync, run_sync

KEY = "sk_test_sync_hunt"
T0 = ts(2026, 6, 1)


def _sync(w: World, clock: int, db: Path, *, full: bool = False,
          tamper: Callable[[RunningSandbox], None] | None = None, **kw: Any) -> SyncResult:
    """One sync of ``w`` as Stripe serves it at ``clock`` (``tamper``: changes the server before it; ``kw``:
    settings)."""
    with start_in_thread(w.served(clock), api_key=KEY) as sb:
        if tamper is not None:
            tamper(sb)
        return run_sync(Settings(api_key=Secret(KEY), api_base=sb.url, db=db, rate_limit=10_000, **kw), full=full,
                        progress=False)


def _rows(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _one_sub(w: World, at: int) -> None:
    w.customer("cus_1", created=at)
    w.product("prod_1", unit_label="seat")
    w.price("price_1", "prod_1", 1_000)
    w.subscribe("sub_1", "cus_1", [("si_1", "price_1", 1)], at)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "hunt.duckdb"


def test_a_full_sync_of_an_account_without_retained_events_dates_its_listing_by_stripes_clock(db: Path) -> None:
    """No event within Stripe's 30 days when the full sync starts: the listing's version and the events cursor
    are the server's time (its ``Date``), not this machine's. Here this machine's clock is months ahead of the
    served account's: by its clock, the incremental sync after listed no event from before it (the new subscription
    was lost), and the listed subscription's copy outranked every later event of it (its change was lost too)."""
    _one_sub(w := World(), T0)
    assert _sync(w, T0 + 40 * DAY, db, full=True).status == "succeeded"  # the account's events have all expired
    w.customer("cus_2", created=T0 + 41 * DAY)
    w.subscribe("sub_2", "cus_2", [("si_2", "price_1", 1)], T0 + 41 * DAY)
    w.update("sub_1", T0 + 41 * DAY + 60, items=[("si_1", "price_1", 3)], prorate=False)
    r = _sync(w, T0 + 42 * DAY, db)
    assert (r.mode, r.status) == ("incremental", "succeeded")
    assert _rows(db, "SELECT id FROM subscriptions ORDER BY id") == [("sub_1",), ("sub_2",)]
    assert _rows(db, "SELECT id, quantity FROM subscription_items ORDER BY id") == [("si_1", 3), ("si_2", 1)]


def test_a_customer_deleted_between_two_syncs_keeps_the_state_its_deletion_event_carries(db: Path) -> None:
    """``customer.deleted`` carries the customer as it was before its deletion; retrieving it after (the refresh of
    the event page) gives only its stub. The stub flags the stored row deleted and keeps the last full copy, in the
    store (load._STUB) and within the page as well: the stub replaced the event's copy, so a customer created and
    deleted between two syncs was stored as ``{"id", "deleted"}`` alone (no created time, currency, country or
    metadata for its segments), and one changed just before its deletion kept its state from before the change."""
    _one_sub(w := World(), T0)
    assert _sync(w, T0 + DAY, db, full=True).status == "succeeded"
    c1 = w.objects["customers"]["cus_1"]
    before = copy.deepcopy(c1)
    c1["metadata"] = {"tier": "silver"}
    w.event("customer.updated", T0 + 2 * DAY, c1, before)
    w.event("customer.deleted", T0 + 2 * DAY + 60, c1)
    c2 = w.customer("cus_2", created=T0 + 2 * DAY, metadata={"tier": "gold"})
    w.event("customer.created", T0 + 2 * DAY, c2)
    w.event("customer.deleted", T0 + 2 * DAY + 60, c2)
    for cid in ("cus_1", "cus_2"):  # (Stripe answers a deleted customer's retrieve with its stub)
        w.objects["customers"][cid] = {"id": cid, "object": "customer", "deleted": True}
    assert _sync(w, T0 + 3 * DAY, db).status == "succeeded"
    got = {cid: (deleted, orjson.loads(raw)) for cid, deleted, raw in _rows(db, "SELECT id, deleted, raw FROM customers")}
    assert got == {"cus_1": (True, c1), "cus_2": (True, c2)}


def _refusing_a_cursor(path: str, refused: set[str],
                       gone: Callable[[str], None] | None = None) -> Callable[[RunningSandbox], None]:
    """The server refuses the first cursor the sync gives a page of ``path``, and that cursor ever after, as Stripe
    does once the cursor's object has left the list since the page that named it (stripe-go #1030: a plan deleted
    while listed, ``400 resource_missing``, ``param: starting_after``; stripe-node #2368: a subscription canceled
    while the non-canceled ones are listed). ``gone(id)`` takes the object out of the list then; without it, the
    object stays listed and only its use as a cursor fails."""
    def tamper(sb: RunningSandbox) -> None:
        catalog = sb.app.catalog
        list_page, sublist_page = catalog.list_page, catalog.sublist_page

        def check(params: Any) -> None:
            after = params.get("starting_after")
            if after and not refused:
                refused.add(after)
                if gone is not None:
                    gone(after)
                    catalog.reset()
            if after in refused:
                raise ApiError(400, f"No such object: '{after}'", code="resource_missing", param="starting_after")

        def listed(resource: str, params: Any) -> Any:
            if f"/v1/{resource}" == path:
                check(params)
            return list_page(resource, params)

        def sublisted(resource: str, parent_id: str, params: Any, url: str, param: str = "id") -> Any:
            if url == path:
                check(params)
            return sublist_page(resource, parent_id, params, url, param)

        catalog.list_page, catalog.sublist_page = listed, sublisted  # type: ignore[method-assign]
    return tamper


def _failing_after_a_cursor(sb: RunningSandbox) -> None:
    """Every page of products after the first answers 500."""
    list_page = sb.app.catalog.list_page

    def listed(resource: str, params: Any) -> Any:
        if resource == "products" and params.get("starting_after"):
            raise ApiError(500, "An error occurred with our connection to Stripe.", type_="api_error")
        return list_page(resource, params)

    sb.app.catalog.list_page = listed  # type: ignore[method-assign]


@pytest.mark.parametrize("before", ["nothing", "a-failed-full-sync"])
def test_a_full_listing_goes_on_when_stripe_drops_its_cursor(db: Path, before: str) -> None:
    """A product archived or deleted while the products are listed: Stripe refuses it as the next page's cursor.
    The slice failed the run, and every run after it, for good: each resumed the same stored cursor (``sync --full``
    too). Now it lists on from the last product's ``created`` (a resumed slice, whose stored cursor Stripe refuses,
    from the top of its range): every product is stored, once."""
    w = World()
    w.customer("cus_1", created=T0)  # (the served account's creation: no object is older)
    for k in range(150):  # (a page holds 100: the second page starts after the 100th newest)
        w.product(f"prod_{k:03d}", created=T0 + 60 * k)
    if before == "a-failed-full-sync":  # (its products slice stopped with the cursor prod_050 stored)
        with pytest.raises(StripeAPIError):
            _sync(w, T0 + DAY, db, full=True, tamper=_failing_after_a_cursor, max_retries=0)
        assert _rows(db, "SELECT value FROM sync_cursors WHERE stream LIKE 'full:products.active:%'") == \
            [("prod_050",)]
    refused: set[str] = set()
    r = _sync(w, T0 + DAY, db, full=True, tamper=_refusing_a_cursor("/v1/products", refused))
    assert (r.status, r.error) == ("succeeded", None)
    assert refused == {"prod_050"}  # (the 100th newest, as worked out above)
    assert _rows(db, "SELECT count(*), count(DISTINCT id) FROM products WHERE NOT deleted") == [(150, 150)]


def test_the_pending_invoice_items_are_listed_again_when_stripe_drops_their_cursor(db: Path) -> None:
    """An invoice item invoiced (no longer pending) or deleted while the pending items are listed: Stripe refuses it
    as the next page's cursor. That failed every run in which it happened; now the pending items are listed again
    from the first page, and all are stored."""
    w = World()
    w.customer("cus_1", created=T0)
    for k in range(120):
        w.objects["invoiceitems"][f"ii_{k:03d}"] = {
            "id": f"ii_{k:03d}", "object": "invoiceitem", "amount": 100, "currency": "usd", "customer": "cus_1",
            "date": T0 + k, "created": T0 + k, "discounts": [], "invoice": None, "livemode": False, "metadata": {},
            "parent": None, "proration": False, "quantity": 1}
    refused: set[str] = set()

    def invoiced(oid: str) -> None:
        w.objects["invoiceitems"][oid]["invoice"] = "in_1"

    r = _sync(w, T0 + DAY, db, full=True, tamper=_refusing_a_cursor("/v1/invoiceitems", refused, invoiced))
    assert (r.status, r.error) == ("succeeded", None)
    assert refused == {"ii_020"}  # (the 100th newest)
    # every item stored, the one invoiced meanwhile no longer pending
    assert _rows(db, "SELECT id FROM invoice_items WHERE NOT pending OR deleted") == [("ii_020",)]
    assert _rows(db, "SELECT count(*) FROM invoice_items WHERE pending AND NOT deleted") == [(119,)]


def test_a_whole_list_is_paged_again_when_stripe_drops_its_cursor() -> None:
    """An invoice's lines (or a subscription's items) paged whole: a line removed from a draft while its lines are
    paged makes Stripe refuse it as the cursor; the list is paged again from its start, a few times at most."""
    lines = [{"id": f"il_{k:03d}", "object": "line_item"} for k in range(150)]

    class Api:
        def __init__(self, refusals: int) -> None:
            self.refusals = refusals
            self.asked: list[str | None] = []

        async def get(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
            after = params.get("starting_after")
            self.asked.append(after)
            if after is not None and self.refusals:
                self.refusals -= 1
                raise CursorGoneError("gone", http_status=400)
            at = 0 if after is None else next(k for k, ln in enumerate(lines) if ln["id"] == after) + 1
            return {"object": "list", "data": lines[at:at + params["limit"]], "has_more": at + params["limit"] < 150}

    engine = _Sync.__new__(_Sync)  # (_page_all reads nothing of the engine but its client)
    engine.api = Api(refusals=2)  # type: ignore[assignment]
    assert asyncio.run(engine._page_all("/v1/invoices/in_1/lines", {})) == lines
    assert engine.api.asked == [None, "il_099", None, "il_099", None, "il_099"]  # type: ignore[attr-defined]
    engine.api = Api(refusals=4)  # type: ignore[assignment]
    with pytest.raises(CursorGoneError):
        asyncio.run(engine._page_all("/v1/invoices/in_1/lines", {}))


def test_an_invoice_deleted_while_listed_does_not_fail_the_listing(db: Path) -> None:
    """A draft invoice of 12 lines (10 embedded: its list is cut short) deleted between the page that lists it and
    the request for the rest of its lines, which answers 404. That failed the run (the next one, listing the page
    again without it, went through); the listing now stores what the page embedded, as for an event's object gone
    since (its deletion event, after the listing's start, flags it)."""
    _one_sub(w := World(), T0)
    item = w.objects["subscriptions"]["sub_1"]["items"]["data"][0]
    inv = w._invoice("sub_1", T0 + DAY, "manual", [w._line("sub_1", item, T0 + DAY, T0 + DAY, amount=100)
                                                   for _ in range(12)])
    inv.update(status="draft", parent=None)

    def deleted_meanwhile(sb: RunningSandbox) -> None:
        sublist_page = sb.app.catalog.sublist_page

        def sublisted(resource: str, parent_id: str, params: Any, url: str, param: str = "id") -> Any:
            if parent_id == inv["id"]:
                raise ApiError(404, f"No such invoice: '{parent_id}'", code="resource_missing", param="id")
            return sublist_page(resource, parent_id, params, url, param)

        sb.app.catalog.sublist_page = sublisted  # type: ignore[method-assign]

    r = _sync(w, T0 + 2 * DAY, db, full=True, tamper=deleted_meanwhile)
    assert (r.status, r.error) == ("succeeded", None)
    assert _rows(db, "SELECT count(*) FROM invoice_lines WHERE invoice_id = ? AND NOT deleted", [inv["id"]]) == [(10,)]


def test_a_first_page_whose_newest_object_has_no_created_time_does_not_cut_the_listing_short(db: Path) -> None:
    """The newest object of a stream's first page dates the stream's range (its ``created``). Without one (null or
    missing: a malformed answer), the range was [0, 0]: every object past the first page was left out, silently
    (a re-list took them for deleted: retrieved one by one, or beyond 250 flagged deleted at once). The range is
    dated by the page's newest ``created`` now."""
    w = World()
    for k in range(130):
        w.customer(f"cus_{k:03d}", created=T0 + 60 * k)

    def undated_first(sb: RunningSandbox) -> None:
        list_page = sb.app.catalog.list_page

        def listed(resource: str, params: Any) -> Any:
            pieces = list_page(resource, params)
            if resource != "customers" or params.get("starting_after") or params.get("created"):
                return pieces
            page = orjson.loads(b"".join(bytes(p) for p in pieces))
            del page["data"][0]["created"]
            return [orjson.dumps(page)]

        sb.app.catalog.list_page = listed  # type: ignore[method-assign]

    r = _sync(w, T0 + DAY, db, full=True, tamper=undated_first)
    assert (r.status, r.error) == ("succeeded", None)
    assert _rows(db, "SELECT count(*) FROM customers WHERE NOT deleted") == [(130,)]


@pytest.mark.parametrize(("status", "error", "gone"), [
    # stripe-go #1030: a plan deleted between two pages of /v1/plans
    (400, {"code": "resource_missing", "param": "starting_after", "message": "No such plan: 'plan_1'"}, True),
    (404, {"code": "resource_missing", "param": "ending_before", "message": "No such event: 'evt_1'"}, True),
    # an object that is not there (a retrieve) stays a 404; another refusal stays one
    (404, {"code": "resource_missing", "param": "id", "message": "No such customer: 'cus_1'"}, False),
    (400, {"code": "parameter_invalid_integer", "param": "limit", "message": "Invalid integer"}, False),
], ids=["cursor-400", "cursor-404", "object-404", "other-400"])
@responses.activate
def test_a_refused_cursor_is_told_from_a_missing_object_and_a_bad_request(status: int, error: dict[str, str],
                                                                         gone: bool) -> None:
    responses.get("http://stripe.test/v1/plans", status=status, json={"error": {"type": "invalid_request_error",
                                                                                **error}})
    raw = StripeRaw(Settings(api_key=Secret(KEY), api_base="http://stripe.test", max_retries=2, rate_limit=1000.0),
                    http_client=stripe.RequestsClient())
    with pytest.raises(StripeAPIError) as caught:
        asyncio.run(raw.get("/v1/plans", {"limit": 100, "starting_after": "plan_1"}))
    assert isinstance(caught.value, CursorGoneError) is gone
    assert isinstance(caught.value, NotFoundError) is (status == 404 and not gone)
    assert len(responses.calls) == 1  # (none of them is tried again)
