"""Traceability of movements (design.md 5: every movement keeps the Stripe ids that caused it), each on a small
hand-built account: for every row of mrr_movements, the event (source_event_id) and the invoice or pending
invoice item (source_invoice_id) that made it, worked out by hand before running.

The scenarios: a signup and a trial's end; two changes of one item, of two items of one subscription and of two
subscriptions of one customer in one window; a seat change that billed nothing beside a one-off invoice of its
subscription; a removal only the snapshot saw; a cross-sell beside a change that billed nothing; a cancellation at
the period's end (alone, and beside another subscription's renewal) and an immediate one with a final invoice; a
discount put on by an update, by a customer's promotion code, and a coupon ending beside another subscription's
promotion code; a plan switch without prorations; a reactivation; metered usage growth beside a seat change (of
another subscription and of the same one); a rate change beside a seat change (README's example); prorations
that waited for the next invoice; two customers changing in the same minute; a change made before the events
begin. Most run with every event stored (a daemon that syncs often), some also from invoices alone. Every test
also checks that no row names an event, invoice or invoice item of another subscription or customer.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import duckdb
import pytest
from builders import DAY, World, add_months, ts
from conftest import OneStore

T0 = ts(2024, 1, 1)
MINUTE = 60
D = Decimal
Derive = Callable[..., duckdb.DuckDBPyConnection]
Row = tuple[int, str, str | None, Decimal, str | None, str | None]

# The tests marked @one_store are each an account of one store, derived once (conftest.OneStore): their queries see
# their own account's rows alone.
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()

EVENTS = pytest.mark.parametrize("events", [True, False], ids=["events", "invoices-only"])


def month(n: int, day: int = 0) -> int:
    return add_months(T0, n) + day * DAY


def catalogue(w: World, currency: str = "usd") -> World:
    """cus_1 and cus_2; family core (seats: basic 10.00, pro 20.00), analytics (50.00, analytics_pro 80.00), api
    (metered); coupons: 20% forever, 25% for 3 months, a 10% forever promotion."""
    w.customer("cus_1", currency=currency)
    w.customer("cus_2", currency=currency)
    w.product("prod_core", unit_label="seat", family="core")
    w.product("prod_analytics", family="analytics")
    w.product("prod_api", unit_label="api call", family="api")
    w.price("basic", "prod_core", 1_000, currency=currency)
    w.price("pro", "prod_core", 2_000, currency=currency)
    w.price("analytics", "prod_analytics", 5_000, currency=currency)
    w.price("analytics_pro", "prod_analytics", 8_000, currency=currency)
    w.price("api_metered", "prod_api", None, usage_type="metered", currency=currency)
    w.coupon("c20", percent_off=20, duration="forever")
    w.coupon("r25", percent_off=25, duration="repeating", duration_in_months=3)
    w.coupon("promo10", percent_off=10, duration="forever")
    return w


def last_event(w: World) -> str:
    return str(w.events[-1]["id"])


def last_invoice(w: World) -> str:
    return list(w.objects["invoices"])[-1]


def discount_event(w: World, etype: str, d: dict[str, Any], at: int) -> str:
    """A customer.discount.* event of ``d`` at ``at`` (its coupon expanded, as Stripe sends it)."""
    coupon = w.objects["coupons"][d["source"]["coupon"]]
    return str(w.event(etype, at, {**d, "source": {"type": "coupon", "coupon": dict(coupon)}})["id"])


def traced(con: duckdb.DuckDBPyConnection, customer: str = "cus_1") -> list[Row]:
    """The customer's movements as (unix time, movement, item, delta, source_event_id, source_invoice_id)."""
    return [tuple(r) for r in con.execute(  # type: ignore[misc]
        "SELECT CAST(epoch(occurred_at) AS BIGINT), movement, subscription_item_id, mrr_delta, source_event_id, "
        "source_invoice_id FROM mrr_movements WHERE customer_id = ? "
        "ORDER BY occurred_at, movement, subscription_item_id", [customer]).fetchall()]


def expect(con: duckdb.DuckDBPyConnection, w: World, want: list[Row], customer: str = "cus_1") -> None:
    got = traced(con, customer)
    want = sorted(want, key=lambda r: (r[0], r[1], r[2] or ""))
    assert got == want, ("movements differ:\n  got      " + "\n           ".join(map(str, got))
                         + "\n  expected " + "\n           ".join(map(str, want)))
    own_ids_only(con, w)


def own_ids_only(con: duckdb.DuckDBPyConnection, w: World) -> None:
    """No row names an event, invoice or invoice item of another subscription or customer: a subscription event
    is of the row's subscription, a customer.discount.* event of the row's customer (and of its subscription when
    the discount is one's), an invoice or pending item of the row's subscription."""
    subs = w.objects["subscriptions"]
    events = {}
    for e in w.events:
        obj = e["data"]["object"]
        if obj["object"] == "subscription":
            events[e["id"]] = (obj["customer"], obj["id"])
        else:
            events[e["id"]] = (obj["customer"], obj.get("subscription"))
    bills = {}
    for iid, inv in w.objects["invoices"].items():
        parent = (inv.get("parent") or {}).get("subscription_details") or {}
        bills[iid] = parent.get("subscription")
    for iid, item in w.objects["invoiceitems"].items():
        bills[iid] = item["parent"]["subscription_details"]["subscription"]
    for customer, sub, item, movement, event, invoice in con.execute(
            "SELECT customer_id, subscription_id, subscription_item_id, movement, source_event_id, source_invoice_id "
            "FROM mrr_movements").fetchall():
        assert sub is None or subs[sub]["customer"] == customer, (sub, customer)
        if event is not None:
            e_customer, e_sub = events[event]
            assert e_customer == customer and e_sub in (sub, None), (
                f"{movement} of {item} ({sub}) names {event}, an event of {e_customer}'s {e_sub}")
        if invoice is not None:
            assert bills[invoice] == sub, f"{movement} of {item} ({sub}) names {invoice}, which bills {bills[invoice]}"


# --- signups ---------------------------------------------------------------------------------------------------

@EVENTS
@one_store
def test_a_signup_names_its_created_event_and_first_invoice(world: World, derive: Derive, events: bool) -> None:
    """3 seats of basic from T0: `new` +30.00 names customer.subscription.created and the subscription_create
    invoice; from invoices alone, that invoice and no event."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    created, first = last_event(w), last_invoice(w)
    con = derive(w, seen_at=month(0, 20), events=events)
    expect(con, w, [(T0, "new", "si_1", D("30.0000"), created if events else None, first)])


@EVENTS
@one_store
def test_a_trial_that_converts_names_the_event_and_invoice_of_its_end(world: World, derive: Derive,
                                                                      events: bool) -> None:
    """A 14-day trial from T0 (its created event and a 0.00 invoice), active at its end (an update event, the
    first paid invoice): `new` +30.00 at the trial's end names that update and that invoice, not the signup's."""
    w = catalogue(world)
    end = T0 + 14 * DAY
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0, trial_end=end)
    w.update("sub_1", end, status="active")
    converted = last_event(w)
    paid = w.cycle("sub_1", end)["id"]
    con = derive(w, seen_at=T0 + 20 * DAY, events=events)
    expect(con, w, [(end, "new", "si_1", D("30.0000"), converted if events else None, paid)])


# --- several changes in one window ------------------------------------------------------------------------------

def test_seats_then_price_of_one_item_in_one_window_each_name_their_own_change(world: World,
                                                                               derive: Derive) -> None:
    """si_1 from 3 to 5 seats of basic at t (event, proration invoice), then to pro 20 minutes later (another
    event and invoice): one transition, the plan part (3 seats at pro: +30.00) names the price change's event and
    invoice, the quantity part (+40.00) the seat change's (README: each row names the event and invoice of its own
    change, also when one window holds several changes of a subscription)."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    created, first = last_event(w), last_invoice(w)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_1", "basic", 5)])
    seats = (last_event(w), last_invoice(w))
    w.update("sub_1", t + 20 * MINUTE, items=[("si_1", "pro", 5)])
    price = (last_event(w), last_invoice(w))
    con = derive(w, seen_at=month(1, 20))
    expect(con, w, [
        (T0, "new", "si_1", D("30.0000"), created, first),
        (t, "upgrade", "si_1", D("30.0000"), *price),
        (t, "seat_expansion", "si_1", D("40.0000"), *seats),
    ])


@one_store
def test_changes_of_two_items_of_one_subscription_in_one_window(world: World, derive: Derive) -> None:
    """si_a from 3 to 5 seats at t, si_b from analytics to analytics_pro 20 minutes later, each with its event and
    proration invoice: the seat row names the first pair, the upgrade the second."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_a", "basic", 3), ("si_b", "analytics", 1)], T0)
    created, first = last_event(w), last_invoice(w)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_a", "basic", 5), ("si_b", "analytics", 1)])
    seats = (last_event(w), last_invoice(w))
    w.update("sub_1", t + 20 * MINUTE, items=[("si_a", "basic", 5), ("si_b", "analytics_pro", 1)])
    price = (last_event(w), last_invoice(w))
    con = derive(w, seen_at=month(1, 20))
    expect(con, w, [
        (T0, "new", "si_b", D("80.0000"), created, first),
        (t, "seat_expansion", "si_a", D("20.0000"), *seats),
        (t, "upgrade", "si_b", D("30.0000"), *price),
    ])


@one_store
def test_changes_of_two_subscriptions_of_one_customer_in_one_window(world: World, derive: Derive) -> None:
    """sub_2 moves to analytics_pro at t and sub_1 gains two seats 20 minutes later, each with its event and
    proration invoice: one transition dated t, each row its own subscription's event and invoice."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_a", "basic", 3)], T0)
    w.subscribe("sub_2", "cus_1", [("si_b", "analytics", 1)], T0 + 2 * 3600)
    t = month(1, 10)
    w.update("sub_2", t, items=[("si_b", "analytics_pro", 1)])
    price = (last_event(w), last_invoice(w))
    w.update("sub_1", t + 20 * MINUTE, items=[("si_a", "basic", 5)])
    seats = (last_event(w), last_invoice(w))
    con = derive(w, seen_at=month(1, 20))
    got = [r for r in traced(con) if r[0] == t]
    assert got == [(t, "seat_expansion", "si_a", D("20.0000"), *seats),
                   (t, "upgrade", "si_b", D("30.0000"), *price)], got
    own_ids_only(con, w)


@pytest.mark.parametrize("skew", [-1, 1], ids=["a-second-before", "a-second-after"])
@one_store
def test_an_invoice_stamped_a_second_off_its_changes_event_is_still_named(world: World, derive: Derive,
                                                                          skew: int) -> None:
    """Stripe stamps each object by its own clock: here a signup's first invoice, and the proration invoice of two
    seats added on 11 February, are stamped a second before (after) the events of their changes. Each row still
    names its invoice (a window's invoices were looked for from its first change to its last only, so both rows
    named none)."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_a", "basic", 3)], T0)
    created, first = last_event(w), last_invoice(w)
    w.objects["invoices"][first]["created"] = T0 + skew
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_a", "basic", 5)])
    seats, bill = last_event(w), last_invoice(w)
    w.objects["invoices"][bill]["created"] = t + skew
    con = derive(w, seen_at=month(1, 20))
    expect(con, w, [(T0, "new", "si_a", D("30.0000"), created, first),
                    (t, "seat_expansion", "si_a", D("20.0000"), seats, bill)])


@one_store
def test_the_leeway_for_an_invoices_stamp_stays_inside_half_the_movement_window(world: World,
                                                                                derive: Derive) -> None:
    """With movement_window = 0 (every change a window of its own): two seats added at t without prorations (an
    event, no invoice), two more 5 seconds later with a proration invoice stamped at that event. The invoice is the
    second change's alone: the first row names none (the leeway is at most half the window, none here, so two windows
    never share an invoice; with 10 seconds the first row named the second's invoice)."""
    w, created, first, t, seats = two_seats_without_prorations(world)
    later = t + 5
    w.update("sub_1", later, items=[("si_a", "basic", 7)])
    more, bill = last_event(w), last_invoice(w)
    con = derive(w, seen_at=month(1, 20), movement_window_minutes=0)
    expect(con, w, [(T0, "new", "si_a", D("30.0000"), created, first),
                    (t, "seat_expansion", "si_a", D("20.0000"), seats, None),
                    (later, "seat_expansion", "si_a", D("20.0000"), more, bill)])


@one_store
def test_a_renewal_half_a_minute_before_a_change_is_not_its_invoice(world: World, derive: Derive) -> None:
    """sub_1 renews on 1 February (an invoice billing its 3 seats) and gains two seats 30 seconds later without
    prorations (an event, no invoice): the seat row names its event and no invoice, not the renewal's, which bills
    the seats before the change (the leeway for a change's invoice stamped off its event is 10 seconds)."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_a", "basic", 3)], T0)
    created, first = last_event(w), last_invoice(w)
    w.cycle("sub_1", month(1))
    t = month(1) + 30
    w.update("sub_1", t, items=[("si_a", "basic", 5)], prorate=False)
    seats = last_event(w)
    con = derive(w, seen_at=month(1, 20))
    expect(con, w, [(T0, "new", "si_a", D("30.0000"), created, first),
                    (t, "seat_expansion", "si_a", D("20.0000"), seats, None)])


def two_seats_without_prorations(world: World) -> tuple[World, str, str, int, str]:
    """sub_1 on 3 seats of basic from T0, 5 from t = 11 February without prorations (an event, no invoice): the
    World, the signup's event and invoice, t and the seat change's event."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_a", "basic", 3)], T0)
    created, first = last_event(w), last_invoice(w)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_a", "basic", 5)], prorate=False)
    return w, created, first, t, last_event(w)


@one_store
def test_a_change_that_billed_nothing_names_no_one_off_invoice_of_its_subscription(
        world: World, derive: Derive) -> None:
    """In one window of sub_1: two seats added to si_a at t without prorations (an event, no invoice), a one-off
    setup fee of sub_1 invoiced by hand 5 minutes later (an invoice of sub_1 whose one line bills no item), and
    analytics (si_b) added 10 minutes after t, its proration invoiced at once. The seat row has no invoice of its
    own and none of the window bills si_a: it names the first invoice of the window that bills an item of its
    subscription (si_b's), not the setup fee's, which bills none (it did: the subscription's first invoice of the
    window)."""
    w, created, first, t, seats = two_seats_without_prorations(world)
    fee = w.invoice_one_off("sub_1", t + 5 * MINUTE, 5_000)
    w.update("sub_1", t + 10 * MINUTE, items=[("si_a", "basic", 5), ("si_b", "analytics", 1)])
    cross = (last_event(w), last_invoice(w))
    assert fee["id"] < cross[1] and fee["created"] < w.objects["invoices"][cross[1]]["created"]
    con = derive(w, seen_at=month(1, 20))
    expect(con, w, [
        (T0, "new", "si_a", D("30.0000"), created, first),
        (t, "seat_expansion", "si_a", D("20.0000"), seats, cross[1]),
        (t, "cross_sell", "si_b", D("50.0000"), *cross),
    ])


@one_store
def test_a_removal_only_the_snapshot_saw_names_the_change_that_began_in_its_window(world: World,
                                                                                   derive: Derive) -> None:
    """sub_1 holds basic (si_a) and extra (si_x, a family of its own). At t analytics (si_b) is added (E1, its
    proration invoiced at once), at t + 10 minutes only the metadata changes (E2), at t + 15 minutes si_x is deleted
    with no event stored and no proration, and the sync at t + 20 minutes sees it gone. One window from t: the
    cross-sell names E1 and its invoice; si_x's downgrade, dated by the snapshot where no event says anything, names
    the source of the row of its subscription that began inside the window (E1), not the subscription's last event
    there (E2, which changed nothing of it), and the first invoice of the window that bills an item of sub_1."""
    w = catalogue(world)
    w.product("prod_extra", family="extra")
    w.price("extra", "prod_extra", 3_000)
    w.subscribe("sub_1", "cus_1", [("si_a", "basic", 3), ("si_x", "extra", 1)], T0)
    created, first = last_event(w), last_invoice(w)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_a", "basic", 3), ("si_x", "extra", 1), ("si_b", "analytics", 1)])
    cross = (last_event(w), last_invoice(w))
    w.update("sub_1", t + 10 * MINUTE, metadata={"note": "renamed"})
    w.update("sub_1", t + 15 * MINUTE, items=[("si_a", "basic", 3), ("si_b", "analytics", 1)], event=False,
             prorate=False)
    con = derive(w, seen_at=t + 20 * MINUTE)
    expect(con, w, [
        (T0, "new", "si_x", D("60.0000"), created, first),
        (t, "cross_sell", "si_b", D("50.0000"), *cross),
        (t, "downgrade", "si_x", D("-30.0000"), *cross),
    ])


@one_store
def test_a_cross_sell_beside_a_change_that_billed_nothing(world: World, derive: Derive) -> None:
    """Two seats added to sub_1 at t without prorations (an event, no invoice), sub_2 (analytics) created 10
    minutes later (its created event and first invoice): the seat row names its event and no invoice (not sub_2's
    first invoice), the cross-sell sub_2's two."""
    w, created, first, t, seats = two_seats_without_prorations(world)
    w.subscribe("sub_2", "cus_1", [("si_b", "analytics", 1)], t + 10 * MINUTE)
    cross = (last_event(w), last_invoice(w))
    con = derive(w, seen_at=month(1, 20))
    expect(con, w, [
        (T0, "new", "si_a", D("30.0000"), created, first),
        (t, "seat_expansion", "si_a", D("20.0000"), seats, None),
        (t, "cross_sell", "si_b", D("50.0000"), *cross),
    ])


# --- cancellations ----------------------------------------------------------------------------------------------

@EVENTS
@one_store
def test_a_cancellation_at_period_end_names_the_deletion_and_no_invoice(world: World, derive: Derive,
                                                                        events: bool) -> None:
    """Set on 11 February to cancel at its period's end, 1 March: the cancellation (-30.00, at ended_at) names
    customer.subscription.deleted (not the request's update) and no invoice (nothing was billed); from invoices
    alone, nothing."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    created, first = last_event(w), last_invoice(w)
    w.cycle("sub_1", month(1))
    w.cancel("sub_1", month(1, 10), ended_at=month(2), feedback="unused")
    deleted = last_event(w)
    con = derive(w, seen_at=month(2, 5), events=events)
    expect(con, w, [
        (T0, "new", "si_1", D("30.0000"), created if events else None, first),
        (month(2), "cancellation", "si_1", D("-30.0000"), deleted if events else None, None),
    ])


@EVENTS
@one_store
def test_a_subscription_ended_at_period_end_beside_another_renewing_then(world: World, derive: Derive,
                                                                         events: bool) -> None:
    """sub_1 (analytics) ends on 1 March at its period's end while sub_2 (3 seats) renews that same second: the
    downgrade (-50.00) names sub_1's deletion (or nothing from invoices alone), never sub_2's renewal invoice."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_a", "analytics", 1)], T0)
    w.subscribe("sub_2", "cus_1", [("si_b", "basic", 3)], T0)
    w.cycle("sub_1", month(1))
    w.cycle("sub_2", month(1))
    w.cancel("sub_1", month(1, 10), ended_at=month(2))
    deleted = last_event(w)
    w.cycle("sub_2", month(2))
    con = derive(w, seen_at=month(2, 5), events=events)
    got = [r for r in traced(con) if r[0] == month(2)]
    assert got == [(month(2), "downgrade", "si_a", D("-50.0000"), deleted if events else None, None)], got
    own_ids_only(con, w)


@EVENTS
@one_store
def test_an_immediate_cancellation_names_its_final_invoice(world: World, derive: Derive, events: bool) -> None:
    """5 seats canceled at once on 11 February with a final invoice crediting the unused time: the cancellation
    (-50.00) names the deletion event and that invoice (from invoices alone, the invoice)."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 5)], T0)
    w.cycle("sub_1", month(1))
    t = month(1, 10)
    w.cancel("sub_1", t, feedback="too_expensive")
    deleted = last_event(w)
    item = w.objects["subscriptions"]["sub_1"]["items"]["data"][0]
    credit = w._line("sub_1", item, t, item["current_period_end"], proration=True, credit=True)
    final = w._invoice("sub_1", t, "subscription_update", [credit])["id"]
    con = derive(w, seen_at=month(2, 5), events=events)
    got = [r for r in traced(con) if r[1] == "cancellation"]
    assert got == [(t, "cancellation", "si_1", D("-50.0000"), deleted if events else None, final)], got
    own_ids_only(con, w)


# --- discounts --------------------------------------------------------------------------------------------------

@one_store
def test_a_discount_put_on_by_a_subscription_update(world: World, derive: Derive) -> None:
    """20% forever put on sub_1 by an update on 11 February (no invoice): the discount row (-10.00) names the
    update and no invoice."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 5)], T0)
    t = month(1, 10)
    d = w.discount("c20", t, customer="cus_1", subscription="sub_1")
    w.update("sub_1", t, discounts=[d["id"]])
    update = last_event(w)
    con = derive(w, seen_at=month(1, 20))
    got = [r for r in traced(con) if r[0] == t]
    assert got == [(t, "discount", "si_1", D("-10.0000"), update, None)], got
    own_ids_only(con, w)


@one_store
def test_a_customers_promotion_code_names_its_discount_event_on_each_subscription(world: World,
                                                                                  derive: Derive) -> None:
    """A 10% forever promotion code redeemed on the customer (customer.discount.created, no subscription event)
    while it holds two subscriptions with no discount of their own: each subscription's discount row (-5.00 each)
    names that event and no invoice."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_a", "basic", 5)], T0)
    w.subscribe("sub_2", "cus_1", [("si_b", "analytics", 1)], T0)
    t = month(1, 10)
    d = w.discount("promo10", t, customer="cus_1", did="di_promo")
    d["promotion_code"] = "promo_1"
    created = discount_event(w, "customer.discount.created", d, t)
    con = derive(w, seen_at=month(1, 20))
    got = [r for r in traced(con) if r[0] == t]
    assert got == [(t, "discount", "si_a", D("-5.0000"), created, None),
                   (t, "discount", "si_b", D("-5.0000"), created, None)], got
    own_ids_only(con, w)


@pytest.mark.parametrize("skew", [-1, 1], ids=["a-second-before", "a-second-after"])
@one_store
def test_a_discount_event_stamped_a_second_off_the_discounts_start_is_still_named(world: World, derive: Derive,
                                                                                  skew: int) -> None:
    """The 10% promotion code redeemed on the customer on 11 February (the discount's `start`), its
    customer.discount.created stamped a second before (after) that: the discount row (-5.00) still names the event
    (the window's discount events were looked for from its first change to its last only: it named none)."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_a", "basic", 5)], T0)
    t = month(1, 10)
    d = w.discount("promo10", t, customer="cus_1", did="di_promo")
    d["promotion_code"] = "promo_1"
    created = discount_event(w, "customer.discount.created", d, t + skew)
    con = derive(w, seen_at=month(1, 20))
    got = [r for r in traced(con) if r[1] == "discount"]
    assert got == [(t, "discount", "si_a", D("-5.0000"), created, None)], got
    own_ids_only(con, w)


def test_a_coupon_ending_beside_another_subscriptions_promotion_code(world: World, derive: Derive) -> None:
    """sub_1's 25% coupon for 3 months (put on by an update on 11 January) ends on 11 April, with no event; 10
    minutes later a promotion code is redeemed on sub_2 (customer.discount.created naming sub_2, and sub_2's update
    in the same second). One transition: sub_1's discount row (+10.00) has no event or invoice of its own and names
    none (not sub_2's discount event); sub_2's (-5.00) names sub_2's update."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_a", "basic", 4)], T0)
    w.subscribe("sub_2", "cus_1", [("si_b", "analytics", 1)], T0 + 3600)
    d1 = w.discount("r25", month(0, 10), customer="cus_1", subscription="sub_1")
    w.update("sub_1", month(0, 10), discounts=[d1["id"]])
    on = last_event(w)
    assert d1["end"] == month(3, 10)
    t2 = month(3, 10) + 10 * MINUTE
    d2 = w.discount("promo10", t2, customer="cus_1", subscription="sub_2", did="di_promo")
    d2["promotion_code"] = "promo_1"
    discount_event(w, "customer.discount.created", d2, t2)
    w.update("sub_2", t2, discounts=["di_promo"])
    promo = last_event(w)
    con = derive(w, seen_at=month(3, 20))
    got = [r for r in traced(con) if r[1] == "discount"]
    assert got == [(month(0, 10), "discount", "si_a", D("-10.0000"), on, None),
                   (month(3, 10), "discount", "si_a", D("10.0000"), None, None),
                   (month(3, 10), "discount", "si_b", D("-5.0000"), promo, None)], got
    own_ids_only(con, w)


# --- no prorations, reactivation ------------------------------------------------------------------------------

@EVENTS
@one_store
def test_an_upgrade_without_prorations(world: World, derive: Derive, events: bool) -> None:
    """basic to pro (3 seats) on 11 February with proration_behavior none, the next renewal (1 March) billing pro:
    with the events, the upgrade (+30.00) is dated by its event and names it and no invoice (NOTES: a plan switch
    made without prorations names no invoice); from invoices alone it is dated at that renewal and names it."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    w.cycle("sub_1", month(1))
    w.update("sub_1", month(1, 10), items=[("si_1", "pro", 3)], prorate=False)
    switched = last_event(w)
    renewal = w.cycle("sub_1", month(2))["id"]
    con = derive(w, seen_at=month(2, 5), events=events)
    got = [r for r in traced(con) if r[1] == "upgrade"]
    want = (month(1, 10), "upgrade", "si_1", D("30.0000"), switched, None) if events else (
        month(2), "upgrade", "si_1", D("30.0000"), None, renewal)
    assert got == [want], got
    own_ids_only(con, w)


@EVENTS
@one_store
def test_a_reactivation_names_the_new_subscription(world: World, derive: Derive, events: bool) -> None:
    """sub_1 canceled at once on 1 March (deletion event, no invoice), sub_2 (analytics) created on 1 May: the
    cancellation names the deletion, the reactivation (+50.00) sub_2's created event and first invoice (from
    invoices alone, the invoice only)."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_a", "basic", 3)], T0)
    w.cycle("sub_1", month(1))
    w.cancel("sub_1", month(2))
    deleted = last_event(w)
    w.subscribe("sub_2", "cus_1", [("si_b", "analytics", 1)], month(4))
    created, first = last_event(w), last_invoice(w)
    con = derive(w, seen_at=month(4, 10), events=events)
    got = [r for r in traced(con) if r[1] != "new"]
    assert got == [(month(2), "cancellation", "si_a", D("-30.0000"), deleted if events else None, None),
                   (month(4), "reactivation", "si_b", D("50.0000"), created if events else None, first)], got
    own_ids_only(con, w)


# --- metered usage -----------------------------------------------------------------------------------------------

@one_store
def test_metered_growth_beside_another_subscriptions_seats(world: World, derive: Derive) -> None:
    """sub_m's usage invoices of 1 February (50.00) and 1 March (80.00); sub_1 (renewing mid-month) gains two seats
    10 minutes after the March one (event, proration invoice): the usage row (+30.00) names its usage invoice and
    no event; the seat row its own event and invoice."""
    w = catalogue(world)
    w.subscribe("sub_m", "cus_1", [("si_m", "api_metered", None)], T0)
    w.subscribe("sub_1", "cus_1", [("si_b", "basic", 3)], month(0, 14))
    w.cycle("sub_m", month(1), usage={"si_m": 5_000})
    w.cycle("sub_1", month(1, 14))
    usage = w.cycle("sub_m", month(2), usage={"si_m": 8_000})["id"]
    t = month(2) + 10 * MINUTE
    w.update("sub_1", t, items=[("si_b", "basic", 5)])
    seats = (last_event(w), last_invoice(w))
    con = derive(w, seen_at=month(2, 10))
    got = [r for r in traced(con) if r[0] == month(2)]
    assert got == [(month(2), "resource_expansion", "si_m", D("30.0000"), None, usage),
                   (month(2), "seat_expansion", "si_b", D("20.0000"), *seats)], got
    own_ids_only(con, w)


def test_metered_growth_then_seats_of_the_same_subscription(world: World, derive: Derive) -> None:
    """sub_1 holds 3 seats and a meter; its renewal of 1 March bills usage of 80.00 (50.00 the month before) and 3
    seats for March; 10 minutes later two seats are added (event, proration invoice). The usage row (+30.00) names
    the renewal and no event (the seat change's event is not its cause); the seat row (+20.00) names its event and
    its proration invoice (not the renewal, which bills 3 seats)."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_b", "basic", 3), ("si_m", "api_metered", None)], T0)
    w.cycle("sub_1", month(1), usage={"si_m": 5_000})
    renewal = w.cycle("sub_1", month(2), usage={"si_m": 8_000})["id"]
    t = month(2) + 10 * MINUTE
    w.update("sub_1", t, items=[("si_b", "basic", 5), ("si_m", "api_metered", None)])
    seats = (last_event(w), last_invoice(w))
    con = derive(w, seen_at=month(2, 10))
    got = [r for r in traced(con) if r[0] == month(2)]
    assert got == [(month(2), "resource_expansion", "si_m", D("30.0000"), None, renewal),
                   (month(2), "seat_expansion", "si_b", D("20.0000"), *seats)], got
    own_ids_only(con, w)


# --- exchange rates ----------------------------------------------------------------------------------------------

def test_a_rate_change_beside_a_seat_change_names_nothing_on_the_fx_row(world: World, derive: Derive) -> None:
    """README's example: 2 seats of 10.00 EUR at 1.08, the rate 1.10 from midnight on 1 February, a third seat
    added 20 minutes later (event, proration invoice): fx +0.40 at midnight names no event or invoice (a rate moved,
    nothing in Stripe did); seat_expansion +11.00 at 00:20 names the seat's event and invoice."""
    w = catalogue(world, currency="eur")
    w.fx_rates += [("2023-12-01", "eur", 1.08), ("2024-02-01", "eur", 1.10)]
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 2)], T0 + 3 * DAY)
    t = month(1) + 20 * MINUTE
    w.update("sub_1", t, items=[("si_1", "basic", 3)])
    seats = (last_event(w), last_invoice(w))
    con = derive(w, seen_at=month(1, 10))
    got = [r for r in traced(con) if month(1) <= r[0] <= t]
    assert got == [(month(1), "fx", "si_1", D("0.4000"), None, None),
                   (t, "seat_expansion", "si_1", D("11.0000"), *seats)], got
    own_ids_only(con, w)


# --- prorations that wait ----------------------------------------------------------------------------------------

def prorations_billed_at_the_renewal(w: World) -> tuple[str, str]:
    """3 to 5 seats of basic on 11 February with create_prorations (two pending invoice items), billed by the
    renewal of 1 March: (the update's event, the renewal's id)."""
    catalogue(w)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    w.cycle("sub_1", month(1))
    w.update("sub_1", month(1, 10), items=[("si_1", "basic", 5)], pending=True)
    seats = last_event(w)
    renewal = w.cycle("sub_1", month(2))
    assert {ln["period"]["start"] for ln in renewal["lines"]["data"]} == {month(1, 10), month(2)}
    assert all(i["invoice"] == renewal["id"] for i in w.objects["invoiceitems"].values())
    return seats, renewal["id"]


@one_store
def test_prorations_billed_since_name_the_renewal_from_invoices_alone(world: World, derive: Derive) -> None:
    """From invoices alone (the sync of 6 March), the renewal's proration lines date the seats (+20.00) on 11
    February, and the row names that renewal."""
    _, renewal = prorations_billed_at_the_renewal(world)
    con = derive(world, seen_at=month(2, 5), events=False)
    got = [r for r in traced(con) if r[1] != "new"]
    assert got == [(month(1, 10), "seat_expansion", "si_1", D("20.0000"), None, renewal)], got
    own_ids_only(con, world)


@one_store
def test_prorations_billed_since_name_the_renewal_with_the_events(world: World, derive: Derive) -> None:
    """With every event stored, the seat row names the update and the renewal that billed its prorations (README:
    the pending item is named until an invoice bills it; before the renewal the row named the pending charge)."""
    seats, renewal = prorations_billed_at_the_renewal(world)
    con = derive(world, seen_at=month(2, 5))
    got = [r for r in traced(con) if r[1] != "new"]
    assert got == [(month(1, 10), "seat_expansion", "si_1", D("20.0000"), seats, renewal)], got
    own_ids_only(con, world)


# --- customers, coverage -----------------------------------------------------------------------------------------

@one_store
def test_two_customers_changing_in_the_same_minute(world: World, derive: Derive) -> None:
    """cus_1 and cus_2 each add two seats at the same second, cus_1 with a proration invoice, cus_2 without: each
    row names its own customer's event, and cus_2's no invoice (not cus_1's)."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    w.subscribe("sub_2", "cus_2", [("si_2", "basic", 3)], T0)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_1", "basic", 5)])
    one = (last_event(w), last_invoice(w))
    w.update("sub_2", t, items=[("si_2", "basic", 5)], prorate=False)
    two = last_event(w)
    con = derive(w, seen_at=month(1, 20))
    assert [r for r in traced(con, "cus_1") if r[0] == t] == [(t, "seat_expansion", "si_1", D("20.0000"), *one)]
    assert [r for r in traced(con, "cus_2") if r[0] == t] == [(t, "seat_expansion", "si_2", D("20.0000"), two, None)]
    own_ids_only(con, w)


@one_store
def test_a_change_before_the_events_and_one_inside_them(world: World, derive: Derive) -> None:
    """Events stored from 1 March on. 3 to 5 seats on 11 February (before them: dated by its proration invoice,
    named after it, no event); basic to pro on 11 March (its event and proration invoice)."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    first = last_invoice(w)
    w.cycle("sub_1", month(1))
    w.update("sub_1", month(1, 10), items=[("si_1", "basic", 5)])
    seats = last_invoice(w)
    w.cycle("sub_1", month(2))
    w.update("sub_1", month(2, 10), items=[("si_1", "pro", 5)])
    price = (last_event(w), last_invoice(w))
    con = derive(w, seen_at=month(2, 20), events=month(2))
    expect(con, w, [
        (T0, "new", "si_1", D("30.0000"), None, first),
        (month(1, 10), "seat_expansion", "si_1", D("20.0000"), None, seats),
        (month(2, 10), "upgrade", "si_1", D("50.0000"), *price),
    ])
