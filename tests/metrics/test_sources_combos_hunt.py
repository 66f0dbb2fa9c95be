"""Where the change history comes from (design.md 3), checked on combinations of sources: changes made before the
events begin that only invoices (proration lines, renewals, pending invoice items, discounts, usage), the
subscription's own dates (start_date, canceled_at, ended_at, trial_end) or a sync's snapshot show, beside events
that begin later, stop in a gap, or disagree. Each case is worked out by hand from design.md 3-5 (and the README's
data-quality rules where design.md is silent): the item history, the customer's MRR levels, the movements with
their dates and the Stripe ids they name, and the data-quality rows where the sources disagree (the events win).

Unless a case says otherwise: cus_1 subscribes on 1 January 2025 (T0) to 3 seats of basic (10.00 a seat a month,
30.00), renewing on the 1st; cus_o subscribes on 16 March (WINDOW), the oldest stored event, so the events begin
there and everything of cus_1 before it is known from invoices, dates and the snapshot alone; the sync is on 26
March. Most cases are each an account of one store, derived once (conftest.OneStore); the expected failures keep
a store of their own."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import duckdb
import pytest
from builders import DAY, World, add_months, ts
from conftest import OneStore, customer_mrr_at, record_stripes_clock

from stripe_churn.store.load import mark_unlisted_children, upsert_objects

T0 = ts(2025, 1, 1)
Derive = Callable[..., duckdb.DuckDBPyConnection]

one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()


def month(n: int, day: int = 0) -> int:
    return add_months(T0, n) + day * DAY


WINDOW = month(2, 15)  # 16 March: cus_o's signup, the oldest stored event
SEEN = month(2, 25)  # 26 March: the sync


# --- builders and readers -------------------------------------------------------------------------------------

def catalogue(w: World) -> World:
    """Customers cus_1 and cus_o; seats (family core: basic 10.00, pro 20.00, extra 10.00 of another core product,
    annual basic_y 120.00 and pro_y 240.00 a year), storage (gb, 7.00 a month) and an API meter (1 cent a call)."""
    w.customer("cus_1")
    w.customer("cus_o")
    w.product("prod_seat", unit_label="seat", family="core")
    w.product("prod_extra", unit_label="seat", family="core")
    w.product("prod_store", unit_label="gb", family="storage")
    w.product("prod_api", unit_label="api call", family="api")
    w.price("basic", "prod_seat", 1_000)
    w.price("pro", "prod_seat", 2_000)
    w.price("extra", "prod_extra", 1_000)
    w.price("basic_y", "prod_seat", 12_000, interval="year")
    w.price("pro_y", "prod_seat", 24_000, interval="year")
    w.price("store", "prod_store", 700)
    w.price("meter", "prod_api", 1, usage_type="metered")
    return w


def three_seats(w: World) -> World:
    """cus_1 on 3 seats of basic (30.00) from T0."""
    catalogue(w)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    return w


def window_begins(w: World, at: int = WINDOW, own_event: int | None = None) -> None:
    """cus_o's signup at ``at``, the oldest stored event; with ``own_event``, sub_1's metadata set then (an event
    of its own inside the window, which changes nothing)."""
    w.subscribe("sub_o", "cus_o", [("si_o", "basic", 1)], at)
    if own_event is not None:
        w.update("sub_1", own_event, metadata={"note": "seen"})


def invoice_at(w: World, at: int, sub: str = "sub_1") -> dict[str, Any]:
    (inv,) = [i for i in w.objects["invoices"].values()
              if i["created"] == at and i["parent"]["subscription_details"]["subscription"] == sub]
    return inv


def movements(con: duckdb.DuckDBPyConnection, customer: str = "cus_1") -> list[tuple[Any, ...]]:
    """(occurred_at as unix seconds, movement, subscription item, mrr_delta, source_event_id, source_invoice_id)."""
    return con.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, subscription_item_id, mrr_delta, "
                       "source_event_id, source_invoice_id FROM mrr_movements WHERE customer_id = ? "
                       "ORDER BY occurred_at, movement, subscription_item_id", [customer]).fetchall()


def traced(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    """cus_1's movements as (occurred_at, movement, item, mrr_delta, source_invoice_id)."""
    return [m[:4] + m[5:] for m in movements(con)]


def labels(con: duckdb.DuckDBPyConnection, customer: str = "cus_1") -> list[tuple[Any, ...]]:
    """(occurred_at, movement, mrr_delta) of the customer's movements."""
    return [(m[0], m[1], m[3]) for m in movements(con, customer)]


def levels(con: duckdb.DuckDBPyConnection, customer: str = "cus_1") -> list[tuple[Any, ...]]:
    """The customer's MRR levels (customer_mrr): (valid_from, valid_to, mrr), unix seconds."""
    return con.execute("SELECT CAST(epoch(valid_from) AS BIGINT), CAST(epoch(valid_to) AS BIGINT), mrr "
                       "FROM customer_mrr WHERE customer_id = ? ORDER BY valid_from", [customer]).fetchall()


def history(con: duckdb.DuckDBPyConnection, subscription: str = "sub_1") -> list[tuple[Any, ...]]:
    """(item, price, quantity, valid_from, valid_to) of the subscription's item history."""
    return con.execute("SELECT subscription_item_id, price_id, quantity, CAST(epoch(valid_from) AS BIGINT), "
                       "CAST(epoch(valid_to) AS BIGINT) FROM derived_item_history WHERE subscription_id = ? "
                       "ORDER BY subscription_item_id, valid_from", [subscription]).fetchall()


def quality(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    """(kind, object_id, related_id, moment as unix seconds, detail) of every data-quality row."""
    return con.execute("SELECT kind, object_id, related_id, CAST(epoch(moment) AS BIGINT), detail FROM data_quality "
                       "ORDER BY kind, object_id, moment").fetchall()


def d(x: int) -> Decimal:
    return Decimal(x).quantize(Decimal("0.0001"))


# --- loaders (derive(..., load=...)) -----------------------------------------------------------------------------

def utc(at: int) -> datetime:
    return datetime.fromtimestamp(at, tz=UTC)


def load_across_a_gap(w: World, con: duckdb.DuckDBPyConnection, *, seen_at: int, events: bool | int) -> None:
    """Two syncs: the first, at ``w.first_sync[0]``, stores the objects as they were then (``w.first_sync[1]``) and
    every event so far; the daemon is then down longer than Stripe keeps events, and the sync at ``seen_at`` stores
    every object as it is now and the events from ``events`` on (the oldest Stripe still keeps), marking where the
    unbroken events begin, as a sync after a gap does."""
    first_at, then = w.first_sync  # type: ignore[attr-defined]
    now = w.objects
    w.objects = then
    try:
        w.load(con, seen_at=first_at, events=False)
    finally:
        w.objects = now
    upsert_objects(con, "events", w.account_id, [e for e in w.events if e["created"] <= first_at], utc(first_at))
    w.load(con, seen_at=seen_at, events=False)
    assert not isinstance(events, bool)
    upsert_objects(con, "events", w.account_id, [e for e in w.events if e["created"] >= events], utc(seen_at))
    con.execute("INSERT INTO sync_cursors (account_id, stream, value, created, done) "
                "VALUES (?, 'events:unbroken', NULL, ?, false)", [w.account_id, events])
    record_stripes_clock(con, w.account_id, seen_at)


def load_listed_before_the_last_event(w: World, con: duckdb.DuckDBPyConnection, *, seen_at: int,
                                      events: bool | int) -> None:
    """One sync that lists the objects at ``seen_at`` as they were then (``w.first_sync[1]``), then lists the events,
    among them one made after the objects were listed; Stripe's clock at the end of the sync is ``events``."""
    _, then = w.first_sync  # type: ignore[attr-defined]
    now = w.objects
    w.objects = then
    try:
        w.load(con, seen_at=seen_at, events=True)
    finally:
        w.objects = now
    assert not isinstance(events, bool)
    record_stripes_clock(con, w.account_id, events)


def load_flagged(w: World, con: duckdb.DuckDBPyConnection, *, seen_at: int, events: bool | int) -> None:
    """A full sync at ``seen_at``: every object, the events from ``events`` on, and the discounts no longer on
    their owner flagged deleted."""
    w.load(con, seen_at=seen_at, events=events)
    mark_unlisted_children(con, w.account_id, utc(seen_at), utc(seen_at))


# --- 1. a plan change before the events: dated by the renewal, or by its prorations -----------------------------

@pytest.mark.parametrize("prorate", [False, True], ids=["without-prorations", "with-prorations"])
@one_store
def test_a_plan_change_before_the_events_is_dated_by_what_bills_it(world: World, derive: Derive,
                                                                    prorate: bool) -> None:
    """3 seats switched from basic to pro on 11 February (same item), before the events begin; sub_1's own event on
    21 March, inside them, agrees. Without prorations nothing bills the change until the renewal of 1 March, which
    dates it (the item's created is T0: it does not move); with prorations the update invoice's lines date it on
    the 11th. Either way an upgrade of 30.00 named after that invoice, and nothing disagrees."""
    three_seats(world)
    world.cycle("sub_1", month(1))
    world.update("sub_1", month(1, 10), items=[("si_1", "pro", 3)], prorate=prorate)
    world.cycle("sub_1", month(2))
    window_begins(world, own_event=month(2, 20))
    con = derive(world, seen_at=SEEN, events=WINDOW)
    changed = month(1, 10) if prorate else month(2)
    assert history(con) == [("si_1", "basic", 3, T0, changed), ("si_1", "pro", 3, changed, None)]
    assert levels(con) == [(T0, changed, d(30)), (changed, None, d(60))]
    assert traced(con) == [(T0, "new", "si_1", d(30), invoice_at(world, T0)["id"]),
                           (changed, "upgrade", "si_1", d(30), invoice_at(world, changed)["id"])]
    assert quality(con) == []


# --- 2. an annual plan upgraded mid-year before the events, its prorations pending -------------------------------

@one_store
def test_an_annual_upgrade_whose_prorations_wait_then_seats_inside_the_events(world: World, derive: Derive) -> None:
    """One seat of basic_y (120.00 a year: 10.00) upgraded to pro_y (20.00) on 11 April with Stripe's default
    create_prorations: no invoice until next January's renewal, only two pending invoice items (a charge for pro_y,
    a credit for basic_y, each from the 11th). The events begin on 16 May; on 21 May a second pro_y seat is added
    (its event, its prorations pending too). The pending items date the upgrade (+10.00 on 11 April, named after
    the charge); the event dates the seat (+20.00 on 21 May, named after it and its own charge); nothing
    disagrees."""
    catalogue(world)
    world.subscribe("sub_1", "cus_1", [("si_1", "basic_y", 1)], T0)
    world.update("sub_1", month(3, 10), items=[("si_1", "pro_y", 1)], pending=True)
    window_begins(world, month(4, 15))
    world.update("sub_1", month(4, 20), items=[("si_1", "pro_y", 2)], pending=True)
    charge, credit, charge_2, _ = world.objects["invoiceitems"].values()
    assert (charge["amount"], credit["amount"], charge_2["amount"]) == (24_000, -12_000, 48_000)
    con = derive(world, seen_at=month(4, 25), events=month(4, 15))
    assert history(con) == [("si_1", "basic_y", 1, T0, month(3, 10)), ("si_1", "pro_y", 1, month(3, 10), month(4, 20)),
                            ("si_1", "pro_y", 2, month(4, 20), None)]
    assert levels(con) == [(T0, month(3, 10), d(10)), (month(3, 10), month(4, 20), d(20)), (month(4, 20), None, d(40))]
    assert movements(con) == [
        (T0, "new", "si_1", d(10), None, invoice_at(world, T0)["id"]),
        (month(3, 10), "upgrade", "si_1", d(10), None, charge["id"]),
        (month(4, 20), "seat_expansion", "si_1", d(20), world.events[-1]["id"], charge_2["id"])]
    assert quality(con) == []


# --- 3. a quantity change and a price change of one item, on two dates, each with prorations ---------------------

EVENTS = pytest.mark.parametrize("events", [False, True], ids=["no-events", "events-begin-later"])


@EVENTS
@one_store
def test_seats_then_plan_of_one_item_before_the_events_each_dated_by_its_prorations(world: World, derive: Derive,
                                                                                    events: bool) -> None:
    """si_1 raised from 3 to 5 seats of basic on 6 February, then moved to pro (5 seats) on 21 February, each with
    prorations, before the events: 30.00, then 50.00 (seat_expansion +20.00), then 100.00 (upgrade +50.00: 5 ×
    (20.00 − 10.00), the quantity already 5), each named after its own update invoice."""
    three_seats(world)
    world.cycle("sub_1", month(1))
    world.update("sub_1", month(1, 5), items=[("si_1", "basic", 5)])
    world.update("sub_1", month(1, 20), items=[("si_1", "pro", 5)])
    world.cycle("sub_1", month(2))
    window_begins(world)
    con = derive(world, seen_at=SEEN, events=WINDOW if events else False)
    assert history(con) == [("si_1", "basic", 3, T0, month(1, 5)), ("si_1", "basic", 5, month(1, 5), month(1, 20)),
                            ("si_1", "pro", 5, month(1, 20), None)]
    assert levels(con) == [(T0, month(1, 5), d(30)), (month(1, 5), month(1, 20), d(50)),
                           (month(1, 20), None, d(100))]
    assert traced(con) == [
        (T0, "new", "si_1", d(30), invoice_at(world, T0)["id"]),
        (month(1, 5), "seat_expansion", "si_1", d(20), invoice_at(world, month(1, 5))["id"]),
        (month(1, 20), "upgrade", "si_1", d(50), invoice_at(world, month(1, 20))["id"])]
    assert quality(con) == []


# --- 4. seats raised without prorations, then the plan switched with them, in one period --------------------------

@EVENTS
@one_store
def test_seats_raised_unbilled_then_a_prorated_switch_dates_both_at_the_switch(world: World, derive: Derive,
                                                                               events: bool) -> None:
    """3 seats of basic raised to 5 on 6 February without prorations (nothing bills it; si_1 is no new item), then
    moved to pro on 21 February with prorations: the switch's credit line takes back 5 seats of basic, the first
    evidence of them. Both changes are dated at the switch, one transition from 3 × basic (30.00) to 5 × pro
    (100.00), split as design.md 5 says: upgrade +30.00 (pro at the old 3 seats, less 30.00) and seat_expansion
    +40.00 (the rest). Every invoice agrees with that history: no row."""
    three_seats(world)
    world.cycle("sub_1", month(1))
    world.update("sub_1", month(1, 5), items=[("si_1", "basic", 5)], prorate=False)
    world.update("sub_1", month(1, 20), items=[("si_1", "pro", 5)])
    world.cycle("sub_1", month(2))
    window_begins(world)
    con = derive(world, seen_at=SEEN, events=WINDOW if events else False)
    assert levels(con) == [(T0, month(1, 20), d(30)), (month(1, 20), None, d(100))]
    switch = invoice_at(world, month(1, 20))["id"]
    assert traced(con) == [(T0, "new", "si_1", d(30), invoice_at(world, T0)["id"]),
                           (month(1, 20), "seat_expansion", "si_1", d(40), switch),
                           (month(1, 20), "upgrade", "si_1", d(30), switch)]
    assert quality(con) == []


# --- 5. changes made while the daemon was down longer than Stripe keeps events ------------------------------------

FIRST_SYNC = month(0, 20)  # 21 January: the first sync, every event so far stored
KEPT = month(3, 20)  # 21 April: the oldest event Stripe still keeps at the second sync
GAP_SEEN = month(4, 19)  # 20 May: the second sync
GAP_CASES = ["annual-quiet", "annual-own-event", "prorated", "canceled"]


@pytest.mark.parametrize("case", GAP_CASES)
@one_store
def test_a_change_made_in_a_gap(world: World, derive: Derive, case: str) -> None:
    """The sync of 21 January stores the subscription and its creation event; the next, on 20 May, finds the
    events before 21 April gone. ``annual-*``: 3 seats of basic_y (30.00) raised to 5 on 11 March without prorations
    (an annual plan: no invoice). ``annual-quiet``: no event since: only that sync's snapshot shows the change, so
    it is dated there (design.md 3: a state that differs from the last known one is a change) and the sync's state
    against the invoice is a row (README: invoice_snapshot_mismatch, the sync's state used from where the events
    begin, here the sync itself). ``annual-own-event``: sub_1's metadata set on 1 May, the first event after the
    gap, lists 5 seats: the events win from where they begin, the invoice that bills 3 is a row.
    ``prorated``: 3 seats of basic raised to 5 on 11 March with prorations, the same event on 1 May: the proration
    dates it (+20.00, named after its invoice), nothing disagrees. ``canceled``: 3 seats of basic canceled at once on
    11 March with feedback unused (its deletion event lost): it churns at its ended_at, voluntary, unused; an end
    before the events begin is no missing event."""
    catalogue(world)
    annual = case.startswith("annual")
    world.subscribe("sub_1", "cus_1", [("si_1", "basic_y" if annual else "basic", 3)], T0)
    world.first_sync = (FIRST_SYNC, copy.deepcopy(world.objects))  # type: ignore[attr-defined]
    if not annual:
        world.cycle("sub_1", month(1))
        world.cycle("sub_1", month(2))
    if case == "canceled":
        world.cancel("sub_1", month(2, 10), feedback="unused")
    else:
        world.update("sub_1", month(2, 10), items=[("si_1", "basic_y" if annual else "basic", 5)], prorate=not annual)
        if not annual:
            world.cycle("sub_1", month(3))
            world.cycle("sub_1", month(4))
        if case != "annual-quiet":
            world.update("sub_1", month(4), metadata={"note": "after the gap"})
    con = derive(world, seen_at=GAP_SEEN, events=KEPT, load=load_across_a_gap)
    created = world.events[0]["id"]
    if case == "canceled":
        assert levels(con) == [(T0, month(2, 10), d(30)), (month(2, 10), None, d(0))]
        assert con.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta, churn_type, "
                           "cancellation_feedback FROM mrr_movements WHERE movement <> 'new'").fetchall() == [
            (month(2, 10), "cancellation", d(-30), "voluntary", "unused")]
        assert quality(con) == []
        return
    changed = {"annual-quiet": GAP_SEEN, "annual-own-event": month(4), "prorated": month(2, 10)}[case]
    assert history(con) == [("si_1", "basic_y" if annual else "basic", 3, T0, changed),
                            ("si_1", "basic_y" if annual else "basic", 5, changed, None)]
    assert levels(con) == [(T0, changed, d(30)), (changed, None, d(50))]
    after = world.events[-1]["id"]
    source = ((None, invoice_at(world, month(2, 10))["id"]) if case == "prorated"
              else (after if case == "annual-own-event" else None, None))
    assert movements(con) == [(T0, "new", "si_1", d(30), created, invoice_at(world, T0)["id"]),
                              (changed, "seat_expansion", "si_1", d(20), *source)]
    signup = invoice_at(world, T0)["id"]
    rows = quality(con)
    if case == "annual-quiet":
        assert [r[:4] for r in rows] == [("invoice_snapshot_mismatch", "si_1", signup, GAP_SEEN)]
        assert rows[0][4] == (f"invoice {signup} bills 3 × basic_y, the latest sync gives 5 × basic_y; the sync's "
                              "state was used from 2025-05-20 00:00:00+00 on (no stored event shows when it changed)")
    elif case == "annual-own-event":
        assert [r[:4] for r in rows] == [("invoice_event_mismatch", "si_1", signup, month(4))]
        assert "bills 3 × basic_y, the events give 5 × basic_y" in rows[0][4]
    else:
        assert rows == []


# --- 6. the sync listed the subscriptions just before an event it then stored -------------------------------------

@one_store
def test_a_snapshot_listed_just_before_the_last_event_does_not_undo_it(world: World, derive: Derive) -> None:
    """One sync lists the subscriptions on 11 February at 00:00 (3 seats), then lists the events, among them an
    update made two minutes later (5 seats, without prorations), and ends at 00:05 (Stripe's clock). The snapshot
    is older than the event, so they do not disagree: the events date the change (+20.00 at 00:02, named after its
    event), nothing goes back to 3 seats at the snapshot, and no row."""
    three_seats(world)
    world.cycle("sub_1", month(1))
    listed = month(1, 10)
    world.first_sync = (listed, copy.deepcopy(world.objects))  # type: ignore[attr-defined]
    world.update("sub_1", listed + 120, items=[("si_1", "basic", 5)], prorate=False)
    con = derive(world, seen_at=listed, events=listed + 300, load=load_listed_before_the_last_event)
    assert levels(con) == [(T0, listed + 120, d(30)), (listed + 120, None, d(50))]
    assert movements(con)[1:] == [(listed + 120, "seat_expansion", "si_1", d(20), world.events[-1]["id"], None)]
    assert quality(con) == []


# --- 7. events and invoices that disagree on what was billed -------------------------------------------------------

@pytest.mark.parametrize("case", ["signup-quantity", "renewal-price"])
@one_store
def test_an_invoice_that_disagrees_with_the_events_loses_and_is_recorded(world: World, derive: Derive,
                                                                        case: str) -> None:
    """Every event stored. ``signup-quantity``: cus_1 subscribes on 11 January to 3 seats (its created event); the
    signup invoice bills 4: new 30.00, from the events. ``renewal-price``: 3 seats moved to pro on 11 February
    without prorations (its event); the renewal of 1 March still bills basic: upgrade +30.00 on the 11th, from the
    event, and 60.00 on through the renewal. Either way one invoice_event_mismatch row naming the item and the
    invoice, at the line's moment, saying what each source gives."""
    catalogue(world)
    if case == "signup-quantity":
        world.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], month(0, 10))
        inv = invoice_at(world, month(0, 10))
        inv["lines"]["data"][0].update(quantity=4, amount=4_000)
        world.cycle("sub_1", month(1, 10))
        at, billed, given = month(0, 10), "4 × basic", "3 × basic"
        expected = [(month(0, 10), "new", d(30))]
        mrr: list[tuple[int, int | None, Decimal]] = [(month(0, 10), None, d(30))]
    else:
        world.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
        world.cycle("sub_1", month(1))
        world.update("sub_1", month(1, 10), items=[("si_1", "pro", 3)], prorate=False)
        inv = world.cycle("sub_1", month(2))
        inv["lines"]["data"][0]["pricing"]["price_details"]["price"] = "basic"
        inv["lines"]["data"][0]["amount"] = 3_000
        at, billed, given = month(2), "3 × basic", "3 × pro"
        expected = [(T0, "new", d(30)), (month(1, 10), "upgrade", d(30))]
        mrr = [(T0, month(1, 10), d(30)), (month(1, 10), None, d(60))]
    con = derive(world, seen_at=month(2, 5))
    assert labels(con) == expected
    assert levels(con) == mrr
    ((kind, obj, related, moment, detail),) = quality(con)
    assert (kind, obj, related, moment) == ("invoice_event_mismatch", "si_1", inv["id"], at)
    assert f"bills {billed}, the events give {given}" in detail, detail


# --- 8. a pending proration item that disagrees with the events -----------------------------------------------------

def pending_charge_for_six(w: World, inside: bool) -> dict[str, Any]:
    """3 seats of basic_y (30.00) raised to 5 on 11 February with Stripe's default create_prorations, the pending
    charge for the new seats billing 6 (72,000 for the year) where the subscription has 5. ``inside``: every event
    stored (the update's says 5); else none before 16 March, when the events begin, sub_1's own event on the 21st
    listing 5. Returns the charge."""
    catalogue(w)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic_y", 3)], T0)
    w.update("sub_1", month(1, 10), items=[("si_1", "basic_y", 5)], pending=True)
    charge, _ = w.objects["invoiceitems"].values()
    charge.update(quantity=6, amount=72_000)
    w._pending["sub_1"][0].update(quantity=6, amount=72_000)
    if not inside:
        window_begins(w, own_event=month(2, 20))
    return charge


@pytest.mark.parametrize("inside", [False, True], ids=["before-the-events", "inside-the-events"])
@one_store
def test_a_pending_charge_that_disagrees_with_the_events_loses(world: World, derive: Derive, inside: bool) -> None:
    """Inside the events they win: 5 seats (50.00) from 11 February. Before them the pending charge is the only
    dated evidence (6 seats, 60.00, from the 11th) until the events begin (5 seats from 16 March: a seat_contraction
    there), and the disagreement is an invoice_event_mismatch row naming the pending item."""
    charge = pending_charge_for_six(world, inside)
    con = derive(world, seen_at=SEEN, events=True if inside else WINDOW)
    if inside:
        assert levels(con) == [(T0, month(1, 10), d(30)), (month(1, 10), None, d(50))]
        assert labels(con)[1:] == [(month(1, 10), "seat_expansion", d(20))]
        return
    assert levels(con) == [(T0, month(1, 10), d(30)), (month(1, 10), WINDOW, d(60)), (WINDOW, None, d(50))]
    assert labels(con)[1:] == [(month(1, 10), "seat_expansion", d(30)), (WINDOW, "seat_contraction", d(-10))]
    assert [r[:4] for r in quality(con)] == [("invoice_event_mismatch", "si_1", charge["id"], WINDOW)]


def test_a_pending_charge_inside_the_events_that_disagrees_is_recorded(world: World, derive: Derive) -> None:
    """design.md 3: where the sources disagree the events win and the disagreement is recorded, never silently
    dropped. The pending charge of 11 February bills 6 seats, the update's event says 5: a row naming si_1 and the
    pending item is expected, as there is one for the same charge before the events and for the same line billed."""
    charge = pending_charge_for_six(world, inside=True)
    con = derive(world, seen_at=SEEN)
    assert [r[:4] for r in quality(con)] == [("invoice_event_mismatch", "si_1", charge["id"], month(1, 10))]
    assert (f"pending invoice item {charge['id']} bills 6 × basic_y, the events give 5 × basic_y; the events were "
            "used") in quality(con)[0][4]


# --- 9. an item removed before the events with a credit line only --------------------------------------------------

@one_store
def test_an_item_of_a_kept_family_removed_with_a_credit_only_before_the_events(world: World, derive: Derive) -> None:
    """sub_1 holds 3 seats of basic and 2 of extra (another core product: 50.00); extra is removed on 11 February
    with prorations: the update invoice credits its unused time and bills nothing new. The credit dates the
    removal; the core family stays (basic), so it is a seat_contraction of 20.00 (design.md 5), named after that
    invoice. The renewal of 1 March and sub_1's own event inside the window agree: no row."""
    catalogue(world)
    world.subscribe("sub_1", "cus_1", [("si_1", "basic", 3), ("si_x", "extra", 2)], T0)
    world.cycle("sub_1", month(1))
    world.update("sub_1", month(1, 10), items=[("si_1", "basic", 3)])
    update = invoice_at(world, month(1, 10))
    assert [ln["amount"] for ln in update["lines"]["data"]] == [-2_000]
    world.cycle("sub_1", month(2))
    window_begins(world, own_event=month(2, 20))
    con = derive(world, seen_at=SEEN, events=WINDOW)
    assert history(con) == [("si_1", "basic", 3, T0, None), ("si_x", "extra", 2, T0, month(1, 10))]
    assert levels(con) == [(T0, month(1, 10), d(50)), (month(1, 10), None, d(30))]
    assert traced(con)[1:] == [(month(1, 10), "seat_contraction", "si_x", d(-20), update["id"])]
    assert quality(con) == []


# --- 10. a subscription canceled before the events, with no event of it ---------------------------------------------

@pytest.mark.parametrize("how", ["at-once", "at-period-end"])
@one_store
def test_a_cancellation_before_the_events_is_dated_by_ended_at(world: World, derive: Derive, how: str) -> None:
    """sub_1 canceled on 11 February with feedback too_expensive, no event stored (the events begin on 16 March):
    at once (canceled_at = ended_at = the 11th), or at the period's end (canceled_at the 11th, ended_at 1 March). It
    churns when it ends (design.md 4, churn_recognition "ended"): -30.00, voluntary, its feedback, neither an event
    nor an invoice named; an end before the events is no missing event."""
    three_seats(world)
    world.cycle("sub_1", month(1))
    ends = month(1, 10) if how == "at-once" else month(2)
    world.cancel("sub_1", month(1, 10), ended_at=None if how == "at-once" else ends, feedback="too_expensive",
                 event=False)
    window_begins(world)
    con = derive(world, seen_at=SEEN, events=WINDOW)
    assert levels(con) == [(T0, ends, d(30)), (ends, None, d(0))]
    assert con.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta, churn_type, "
                       "cancellation_feedback, source_event_id, source_invoice_id FROM mrr_movements "
                       "WHERE movement = 'cancellation'").fetchall() == [
        (ends, "cancellation", d(-30), "voluntary", "too_expensive", None, None)]
    assert quality(con) == []


# --- 11. a trial before the events that converted, its seats raised during it --------------------------------------

@EVENTS
@one_store
def test_a_trial_before_the_events_converts_at_its_end_with_the_seats_it_ended_with(world: World, derive: Derive,
                                                                                   events: bool) -> None:
    """A 14-day trial of 3 seats from T0 (its signup invoice bills 3 seats at zero), raised to 5 seats on 6
    January without prorations, converted on 15 January (trial_end): the conversion invoice bills 5 seats. A trial
    counts zero (design.md 4), so nothing moves before the 15th and then one `new` of 50.00, no seat movement; the
    invoices agree with the snapshot: no row."""
    catalogue(world)
    world.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0, trial_end=month(0, 14))
    world.update("sub_1", month(0, 5), items=[("si_1", "basic", 5)], prorate=False)
    world.update("sub_1", month(0, 14), status="active")
    world.invoice_for("sub_1", month(0, 14), "subscription_cycle", period_start=month(0, 14))
    world.cycle("sub_1", month(1, 14))
    world.cycle("sub_1", month(2, 14))
    window_begins(world, month(2, 20))
    con = derive(world, seen_at=month(2, 25), events=month(2, 20) if events else False)
    assert customer_mrr_at(con, "cus_1", month(0, 10)) == 0
    assert levels(con)[-1] == (month(0, 14), None, d(50))
    assert labels(con) == [(month(0, 14), "new", d(50))]
    assert quality(con) == []


# --- 12. a discount put on and taken off before the events, known from invoices -----------------------------------

@one_store
def test_a_discount_before_the_events_starts_at_its_start_and_ends_by_its_invoices(world: World,
                                                                                  derive: Derive) -> None:
    """5 seats (50.00); a 20% forever discount put on sub_1 on 11 February and taken off on 21 March, neither with
    a stored event (the events begin on 16 April); the renewal of 1 March lists it (the invoice's discounts, its
    amounts), that of 1 April does not, and the sync finds it gone. It starts at its own `start` (design.md 4:
    -10.00 on 11 February) and ends at its owner's first invoice without it (+10.00 on 1 April), an estimate data
    quality reports (discount_end_estimated, naming its coupon)."""
    catalogue(world)
    world.subscribe("sub_1", "cus_1", [("si_1", "basic", 5)], T0)
    world.cycle("sub_1", month(1))
    world.coupon("c20", percent_off=20, duration="forever")
    off = world.discount("c20", month(1, 10), customer="cus_1", subscription="sub_1")
    world.update("sub_1", month(1, 10), discounts=[off["id"]], event=False)
    inv = world.cycle("sub_1", month(2))
    inv.update(discounts=[off["id"]], total_discount_amounts=[{"amount": 1_000, "discount": off["id"]}],
               total=inv["subtotal"] - 1_000)
    inv["lines"]["data"][0]["discount_amounts"] = [{"amount": 1_000, "discount": off["id"]}]
    world.update("sub_1", month(2, 20), discounts=[], event=False)
    world.cycle("sub_1", month(3))
    window_begins(world, month(3, 15))
    con = derive(world, seen_at=month(3, 20), events=month(3, 15), load=load_flagged)
    assert levels(con) == [(T0, month(1, 10), d(50)), (month(1, 10), month(3), d(40)), (month(3), None, d(50))]
    assert labels(con) == [(T0, "new", d(50)), (month(1, 10), "discount", d(-10)), (month(3), "discount", d(10))]
    assert [r[:4] for r in quality(con)] == [("discount_end_estimated", off["id"], "c20", month(3))]


# --- 13. metered usage before the events and inside them -------------------------------------------------------------

def seat_and_meter(w: World) -> World:
    """cus_1 on one seat of basic (10.00) and the API meter from T0."""
    catalogue(w)
    w.subscribe("sub_1", "cus_1", [("si_s", "basic", 1), ("si_m", "meter", None)], T0)
    return w


@one_store
def test_metered_usage_billed_before_and_inside_the_events(world: World, derive: Derive) -> None:
    """Usage billed in arrears by the renewals: 5,000 calls (50.00) on 1 February and 8,000 (80.00) on 1 March,
    before the events, 6,000 (60.00) on 1 April inside them (sub_1's own event on 21 March). Each counts from its
    invoice (design.md 4): resource_expansion +50.00 and +30.00, resource_contraction -20.00, each named after its
    invoice; nothing disagrees."""
    seat_and_meter(world)
    for n, calls in ((1, 5_000), (2, 8_000), (3, 6_000)):
        world.cycle("sub_1", month(n), usage={"si_m": calls})
    window_begins(world, own_event=month(2, 20))
    con = derive(world, seen_at=month(3, 5), events=WINDOW)
    assert levels(con) == [(T0, month(1), d(10)), (month(1), month(2), d(60)), (month(2), month(3), d(90)),
                           (month(3), None, d(70))]
    assert traced(con) == [
        (T0, "new", "si_s", d(10), invoice_at(world, T0)["id"]),
        (month(1), "resource_expansion", "si_m", d(50), invoice_at(world, month(1))["id"]),
        (month(2), "resource_expansion", "si_m", d(30), invoice_at(world, month(2))["id"]),
        (month(3), "resource_contraction", "si_m", d(-20), invoice_at(world, month(3))["id"])]
    assert quality(con) == []


@one_store
def test_a_meter_removed_inside_the_events_whose_last_usage_is_billed_after(world: World, derive: Derive) -> None:
    """Usage of 50.00 and 80.00 billed on 1 February and 1 March before the events (they begin on 16 February);
    the meter removed by an update on 11 March (its event); the renewal of 1 April bills its usage from 1 to 11
    March in arrears (30.00), as Stripe bills a removed meter's last usage. The event ends it (the api family
    removed: downgrade -80.00 on the 11th); the late usage line is no evidence that it came back (no MRR from 1
    April) and no disagreement (a renewal may bill a removed meter's usage)."""
    seat_and_meter(world)
    world.cycle("sub_1", month(1), usage={"si_m": 5_000})
    world.cycle("sub_1", month(2), usage={"si_m": 8_000})
    window_begins(world, month(1, 15))
    meter = copy.deepcopy(world.objects["subscriptions"]["sub_1"]["items"]["data"][1])
    world.update("sub_1", month(2, 10), items=[("si_s", "basic", 1)], prorate=False)
    renewal = world.cycle("sub_1", month(3))
    late = world._line("sub_1", meter, month(2), month(2, 10), amount=3_000, quantity=1)
    late["invoice"] = renewal["id"]
    renewal["lines"]["data"].append(late)
    con = derive(world, seen_at=month(3, 5), events=month(1, 15))
    assert levels(con) == [(T0, month(1), d(10)), (month(1), month(2), d(60)), (month(2), month(2, 10), d(90)),
                           (month(2, 10), None, d(10))]
    assert movements(con)[-1] == (month(2, 10), "downgrade", "si_m", d(-80), world.events[-1]["id"], None)
    assert quality(con) == []


# --- 14. a change inside the events that only its invoice shows -----------------------------------------------------

@one_store
def test_a_prorated_change_inside_the_events_without_its_event(world: World, derive: Derive) -> None:
    """sub_1 (3 seats, made before the events, none of its own stored) raised to 5 seats on 21 March, inside the
    events (they begin on 16 March), with prorations but no event. Inside the events' window invoices do not date
    changes (NOTES: the invoice steps stand before coverage only); for a subscription without stored events the
    sync's state stands from where the events begin (README, invoice_snapshot_mismatch): +20.00 on 16 March, no
    invoice or event named, and the renewal of 1 March that bills 3 seats is a row."""
    three_seats(world)
    world.cycle("sub_1", month(1))
    world.cycle("sub_1", month(2))
    window_begins(world)
    world.update("sub_1", month(2, 20), items=[("si_1", "basic", 5)], event=False)
    con = derive(world, seen_at=SEEN, events=WINDOW)
    assert levels(con) == [(T0, WINDOW, d(30)), (WINDOW, None, d(50))]
    assert movements(con)[1:] == [(WINDOW, "seat_expansion", "si_1", d(20), None, None)]
    renewal = invoice_at(world, month(2))["id"]
    ((kind, obj, related, moment, detail),) = quality(con)
    assert (kind, obj, related, moment) == ("invoice_snapshot_mismatch", "si_1", renewal, WINDOW)
    assert "the sync's state was used from 2025-03-16 00:00:00+00 on" in detail, detail


# --- 15. a subscription that no invoice shows yet -------------------------------------------------------------------

@one_store
def test_a_subscription_no_invoice_shows_counts_from_its_start_date(world: World, derive: Derive) -> None:
    """sub_1 (3 seats of basic) made on 4 February before the events, its billing cycle anchored on 1 April with no
    proration (Stripe makes no invoice until the anchor): no event and no invoice, only the sync's state and its
    start_date. Active, it counts from its start (design.md 3: the past from invoices plus start_date): one `new`
    of 30.00 on 4 February, not where the events begin, and nothing to disagree with."""
    catalogue(world)
    sub = world.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], month(1, 3), invoice=False, event=False)
    sub["billing_cycle_anchor"] = month(3)
    window_begins(world)
    con = derive(world, seen_at=SEEN, events=WINDOW)
    assert levels(con) == [(month(1, 3), None, d(30))]
    assert movements(con) == [(month(1, 3), "new", "si_1", d(30), None, None)]
    assert quality(con) == []


# --- 16. two subscriptions of one customer changed in one window, known from invoices and dates -------------------

def seats_and_a_storage_subscription(w: World) -> None:
    """cus_1: sub_1 (3 seats, 30.00) and sub_2 (2 GB of storage, 14.00) from T0. On 11 February sub_1 goes to 5
    seats with prorations (its update invoice) and 30 minutes later sub_2 is canceled at once; no event of either is
    stored (the events begin on 16 March)."""
    three_seats(w)
    w.subscribe("sub_2", "cus_1", [("si_b", "store", 2)], T0)
    w.cycle("sub_1", month(1))
    w.cycle("sub_2", month(1))
    w.update("sub_1", month(1, 10), items=[("si_1", "basic", 5)], event=False)
    w.cancel("sub_2", month(1, 10) + 1_800, event=False)
    w.cycle("sub_1", month(2))
    window_begins(w)


@one_store
def test_two_subscriptions_changed_in_one_window_before_the_events(world: World, derive: Derive) -> None:
    """One transition (design.md 5: 60 minutes), dated at its first change, 44.00 to 50.00: seat_expansion +20.00
    (sub_1's invoice dates and names it) and a downgrade of -14.00 (storage, a family the customer no longer has,
    dated by sub_2's ended_at)."""
    seats_and_a_storage_subscription(world)
    con = derive(world, seen_at=SEEN, events=WINDOW)
    assert levels(con) == [(T0, month(1, 10), d(44)), (month(1, 10), None, d(50))]
    assert labels(con) == [(T0, "new", d(44)), (month(1, 10), "downgrade", d(-14)),
                           (month(1, 10), "seat_expansion", d(20))]
    assert traced(con)[2] == (month(1, 10), "seat_expansion", "si_1", d(20), invoice_at(world, month(1, 10))["id"])
    assert quality(con) == []


def test_the_ended_subscriptions_row_names_no_invoice_of_another_subscription(world: World, derive: Derive) -> None:
    """design.md 5: every movement keeps the Stripe ids that caused it; README: each row names the event and invoice
    of its own item's change. No invoice shows sub_2's end (only its ended_at), so its row names none."""
    seats_and_a_storage_subscription(world)
    con = derive(world, seen_at=SEEN, events=WINDOW)
    assert con.execute("SELECT subscription_id, source_invoice_id FROM mrr_movements WHERE subscription_item_id = "
                       "'si_b' AND movement = 'downgrade'").fetchall() == [("sub_2", None)]
