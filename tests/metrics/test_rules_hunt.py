"""Small hand-built accounts checked against answers worked out by hand from design.md 4 (the MRR rules) and 6 (the
rollup), as seen through customer_mrr, mrr_movements and the bridge (mrr_bridge and mrr_bridge_for): tier
boundaries, transform_quantity edges, intervals with an interval_count, discounts that start or end inside a
month, stacked discounts, coupons that take the whole MRR, unpaid churn, rates and their zero denominators,
period boundaries, fx beside another change."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import duckdb
import pytest
from builders import DAY, World, add_interval, ts
from conftest import OneStore, customer_mrr_at
from test_bridge import assert_bridge_adds_up
from test_mrr_rules import T0, base, month

from stripe_churn.metrics import queries

Derive = Callable[..., duckdb.DuckDBPyConnection]

# The tests marked @one_store are each an account of one store, derived once (conftest.OneStore): their queries see
# their own account's rows alone.
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()
Row = tuple[int, str, str, Decimal, str | None]


def moves(con: duckdb.DuckDBPyConnection, customer: str = "cus_1") -> list[Row]:
    rows = con.execute(
        "SELECT CAST(epoch(occurred_at) AS BIGINT), movement, category, mrr_delta, subscription_item_id "
        "FROM mrr_movements WHERE customer_id = ? ORDER BY occurred_at, movement, subscription_item_id",
        [customer]).fetchall()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def period(con: duckdb.DuckDBPyConnection, start: dt.date, kind: str = "month", segment: str | None = None,
           value: str | None = None) -> dict[str, Any]:
    rows = [r for r in queries.bridge(con, kind, segment, segment_value=value) if r["period_start"] == start]
    assert len(rows) == 1, rows
    return rows[0]


# --- design.md 4: per_unit, transform_quantity, tiers, normalisation -----------------------------------------

TIERS = [{"up_to": 5, "unit_amount": 1000, "flat_amount": 500}, {"up_to": 10, "unit_amount": 800, "flat_amount": 300},
         {"up_to": None, "unit_amount": 500, "flat_amount": 100}]


TIER_CASES = [
    # graduated: each tier prices its own slice, and its flat amount once the quantity reaches into it
    ("graduated", 5, "55.0000"),   # 5 x 10 + 5
    ("graduated", 6, "66.0000"),   # 55 + 1 x 8 + 3
    ("graduated", 10, "98.0000"),  # 55 + 5 x 8 + 3
    ("graduated", 11, "104.0000"),  # 98 + 1 x 5 + 1
    # volume: the tier the whole quantity falls in prices every unit, plus that tier's flat amount
    ("volume", 5, "55.0000"),      # 5 x 10 + 5
    ("volume", 6, "51.0000"),      # 6 x 8 + 3
    ("volume", 10, "83.0000"),     # 10 x 8 + 3
    ("volume", 11, "56.0000"),     # 11 x 5 + 1
]


@one_store
def test_tiers_at_and_past_each_boundary_with_flat_amounts(world: World, derive: Derive) -> None:
    """design.md 4: `tiered` with tiers_mode graduated or volume, computed from the tiers (up_to inclusive); one
    customer per case."""
    base(world)
    for mode in ("graduated", "volume"):
        world.price(mode, "prod_seat", None, tiers=TIERS, tiers_mode=mode)
    for n, (mode, quantity, _) in enumerate(TIER_CASES):
        world.customer(f"c{n}")
        world.subscribe(f"s{n}", f"c{n}", [(f"i{n}", mode, quantity)], T0)
    con = derive(world, seen_at=month(1))
    got = [customer_mrr_at(con, f"c{n}", T0 + DAY) for n in range(len(TIER_CASES))]
    assert got == [Decimal(e) for _, _, e in TIER_CASES]


@one_store
def test_tiers_with_flat_amount_only_first_tier_annual(world: World, derive: Derive) -> None:
    """design.md 4: a graduated annual price whose first tier is a flat fee only (120.00 a year for up to 3) and
    then 24.00 a unit a year: 3 units are 10.00 a month, 5 units (120 + 2 x 24 = 168 a year) 14.00. The change is
    a seat_expansion of 4.00."""
    base(world).price("flatfirst", "prod_seat", None, interval="year", tiers_mode="graduated",
                      tiers=[{"up_to": 3, "flat_amount": 12_000}, {"up_to": None, "unit_amount": 2_400}])
    world.subscribe("sub_1", "cus_1", [("si_1", "flatfirst", 3)], T0)
    world.update("sub_1", month(1, 10), items=[("si_1", "flatfirst", 5)])
    con = derive(world, seen_at=month(2))
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == Decimal("10.0000")
    assert customer_mrr_at(con, "cus_1", month(1, 10)) == Decimal("14.0000")
    assert moves(con) == [(T0, "new", "new", Decimal("10.0000"), "si_1"),
                          (month(1, 10), "seat_expansion", "expansion", Decimal("4.0000"), "si_1")]


PACK_CASES = [
    ("up", 10, "20.0000"),  # 10 / 5 = 2 packs
    ("up", 11, "30.0000"),  # 2.2 -> 3 packs
    ("up", 1, "10.0000"),   # 0.2 -> 1 pack
    ("down", 14, "20.0000"),  # 2.8 -> 2 packs
]


@one_store
def test_transform_quantity_edges(world: World, derive: Derive) -> None:
    """design.md 4: transform_quantity divides and rounds the quantity first (packs of 5 at 10.00 a pack); one
    customer per case."""
    base(world)
    for rounding in ("up", "down"):
        world.price(f"pack_{rounding}", "prod_seat", 1_000, transform_quantity={"divide_by": 5, "round": rounding})
    for n, (rounding, quantity, _) in enumerate(PACK_CASES):
        world.customer(f"c{n}")
        world.subscribe(f"s{n}", f"c{n}", [(f"i{n}", f"pack_{rounding}", quantity)], T0)
    con = derive(world, seen_at=month(1))
    assert [customer_mrr_at(con, f"c{n}", T0 + DAY) for n in range(len(PACK_CASES))] == [
        Decimal(e) for _, _, e in PACK_CASES]


def test_transform_quantity_rounding_down_to_zero_then_a_pack(world: World, derive: Derive) -> None:
    """design.md 4 and 5: 4 units rounded down in packs of 5 are no pack (MRR 0, no movement: a transition whose MRR
    does not change gives no row); 6 units a month later are one pack, and the customer's first MRR: `new`, dated then.
    The bridge starts in the first month with MRR (February), not the month of the subscription."""
    base(world).price("pack", "prod_seat", 1_000, transform_quantity={"divide_by": 5, "round": "down"})
    world.subscribe("sub_1", "cus_1", [("si_1", "pack", 4)], T0)
    world.update("sub_1", month(1, 3), items=[("si_1", "pack", 6)])
    con = derive(world, seen_at=month(2))
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == 0
    assert moves(con) == [(month(1, 3), "new", "new", Decimal("10.0000"), "si_1")]
    assert queries.bridge(con)[0]["period_start"] == dt.date(2024, 2, 1)


def test_quantity_zero_then_seats_then_zero(world: World, derive: Derive) -> None:
    """design.md 4 and 5: a licensed item at quantity 0 counts 0; raised to 3 seats it is the customer's first MRR
    (`new` 30.00); back to 0 while the subscription stays active, M(B) = 0: a `cancellation` (churn 30.00)."""
    base(world).price("seat", "prod_seat", 1_000)
    world.subscribe("sub_1", "cus_1", [("si_1", "seat", 0)], T0)
    world.update("sub_1", month(1, 10), items=[("si_1", "seat", 3)])
    world.update("sub_1", month(2, 10), items=[("si_1", "seat", 0)])
    con = derive(world, seen_at=month(3))
    assert moves(con) == [(month(1, 10), "new", "new", Decimal("30.0000"), "si_1"),
                          (month(2, 10), "cancellation", "churn", Decimal("-30.0000"), "si_1")]
    mar = period(con, dt.date(2024, 3, 1))
    assert (mar["opening_mrr"], mar["churn"], mar["closing_mrr"], mar["churned_customers"],
            mar["closing_customers"], mar["customer_churn_rate"]) == (30, 30, 0, 1, 0, 1.0)


INTERVAL_CASES = [
    ("week", 3, 3_000, 1, "43.3333"),  # 30.00 every 3 weeks: 30 x 52 / 12 / 3 = 43.3333...
    ("week", 2, 2_000, 3, "130.0000"),  # 60.00 every 2 weeks: 60 x 52 / 24
    ("day", 6, 600, 1, "30.4167"),  # 6.00 every 6 days: 6 x 365 / 12 / 6 = 30.41666...
    ("day", 3, 100, 7, "70.9722"),  # 7.00 every 3 days: 7 x 365 / 36 = 70.97222...
    ("month", 6, 60_000, 1, "100.0000"),  # 600.00 every 6 months
    ("year", 3, 360_000, 1, "100.0000"),  # 3,600.00 every 3 years
]


@one_store
def test_interval_count_on_every_interval(world: World, derive: Derive) -> None:
    """design.md 4: week x 52/12, day x 365/12, year / 12, each / interval_count; one customer per case, whose `new`
    is that MRR."""
    base(world)
    for n, (interval, count, unit_amount, quantity, _) in enumerate(INTERVAL_CASES):
        world.price(f"p{n}", "prod_seat", unit_amount, interval=interval, interval_count=count)
        world.customer(f"c{n}")
        world.subscribe(f"s{n}", f"c{n}", [(f"i{n}", f"p{n}", quantity)], T0)
    con = derive(world, seen_at=month(1))
    for n, (*_, expected) in enumerate(INTERVAL_CASES):
        assert customer_mrr_at(con, f"c{n}", T0 + DAY) == Decimal(expected), n
        assert moves(con, f"c{n}") == [(T0, "new", "new", Decimal(expected), f"i{n}")], n


# --- design.md 4: discounts -----------------------------------------------------------------------------------

def two_items(w: World) -> World:
    """cus_1: 4 seats at 10.00 (si_a, core) and an API plan at 50.00 (si_b, api) from T0: 90.00."""
    base(w).price("price_a", "prod_seat", 1_000)
    w.price("price_b", "prod_api", 5_000)
    w.subscribe("sub_1", "cus_1", [("si_a", "price_a", 4), ("si_b", "price_b", 1)], T0)
    return w


def test_repeating_coupon_put_on_mid_month_ends_mid_month(world: World, derive: Derive) -> None:
    """design.md 4: a repeating 20% coupon put on at 15 January 10:00 for 2 months ends at 15 March 10:00; each is
    a `discount` movement dated then (contraction when it starts, expansion when it ends), per item; the monthly
    bridge puts them in discount_contraction (January) and discount_expansion (March); the quarter nets both."""
    two_items(world)
    world.coupon("co_r", percent_off=20, duration="repeating", duration_in_months=2)
    start = ts(2024, 1, 15, 10)
    d = world.discount("co_r", start, customer="cus_1", subscription="sub_1")
    world.update("sub_1", start, discounts=[d["id"]])
    end = ts(2024, 3, 15, 10)
    assert d["end"] == end
    con = derive(world, seen_at=month(4))
    assert customer_mrr_at(con, "cus_1", start - 1) == Decimal("90.0000")
    assert customer_mrr_at(con, "cus_1", start) == Decimal("72.0000")
    assert customer_mrr_at(con, "cus_1", end - 1) == Decimal("72.0000")
    assert customer_mrr_at(con, "cus_1", end) == Decimal("90.0000")
    assert moves(con) == [
        (T0, "new", "new", Decimal("90.0000"), "si_b"),
        (start, "discount", "contraction", Decimal("-8.0000"), "si_a"),
        (start, "discount", "contraction", Decimal("-10.0000"), "si_b"),
        (end, "discount", "expansion", Decimal("8.0000"), "si_a"),
        (end, "discount", "expansion", Decimal("10.0000"), "si_b"),
    ]
    jan, feb, mar = (period(con, dt.date(2024, m, 1)) for m in (1, 2, 3))
    assert (jan["new"], jan["contraction"], jan["discount_contraction"], jan["closing_mrr"]) == (90, 18, 18, 72)
    assert (feb["opening_mrr"], feb["expansion"], feb["contraction"], feb["closing_mrr"]) == (72, 0, 0, 72)
    assert (mar["expansion"], mar["discount_expansion"], mar["upgrade"], mar["closing_mrr"]) == (18, 18, 0, 90)
    q1 = period(con, dt.date(2024, 1, 1), "quarter")
    assert (q1["new"], q1["expansion"], q1["contraction"], q1["closing_mrr"]) == (90, 18, 18, 90)


@one_store
def test_once_coupon_no_movement(world: World, derive: Derive) -> None:
    """design.md 4: a `once` coupon does not reduce MRR: no `discount` rows, only the `new`."""
    two_items(world)
    world.coupon("co_once", percent_off=50, duration="once")
    d = world.discount("co_once", month(1, 5), customer="cus_1", subscription="sub_1")
    world.update("sub_1", month(1, 5), discounts=[d["id"]])
    con = derive(world, seen_at=month(3))
    assert moves(con) == [(T0, "new", "new", Decimal("90.0000"), "si_b")]
    assert customer_mrr_at(con, "cus_1", month(2)) == Decimal("90.0000")


@one_store
def test_an_amount_off_in_another_currency_takes_nothing_off_and_says_so(world: World, derive: Derive) -> None:
    """design.md 4 (every amount in its own currency): a 10.00 EUR amount-off coupon (no USD amount among its
    currency options) on a subscription billed in USD takes nothing off the 90.00, and data_quality names the
    discount."""
    two_items(world)
    world.coupon("co_eur", amount_off=1_000, currency="eur")
    d = world.discount("co_eur", T0, customer="cus_1", subscription="sub_1")
    world.objects["subscriptions"]["sub_1"]["discounts"] = [d["id"]]
    world.events[0]["data"]["object"]["discounts"] = [d["id"]]
    con = derive(world, seen_at=month(1))
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == Decimal("90.0000")
    assert con.execute("SELECT kind, object_id FROM data_quality").fetchall() == [("currency_mismatch", d["id"])]


@one_store
def test_subscription_and_item_discounts_stack(world: World, derive: Derive) -> None:
    """design.md 4: a subscription-level discount applies to all its items, an item-level one to that item: the
    seats (40.00) under both 50% (item) and 10% (subscription) are 18.00, the API plan (50.00) 45.00: 63.00."""
    two_items(world)
    world.coupon("co_sub", percent_off=10)
    world.coupon("co_item", percent_off=50)
    sub = world.objects["subscriptions"]["sub_1"]
    ds = world.discount("co_sub", T0, customer="cus_1", subscription="sub_1")
    di = world.discount("co_item", T0, customer="cus_1", subscription="sub_1", subscription_item="si_a")
    sub["discounts"] = [ds["id"]]
    sub["items"]["data"][0]["discounts"] = [di["id"]]
    world.events[0]["data"]["object"]["discounts"] = [ds["id"]]
    world.events[0]["data"]["object"]["items"]["data"][0]["discounts"] = [di["id"]]
    con = derive(world, seen_at=month(1))
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == Decimal("63.0000")


def test_full_repeating_coupon_from_signup_ends_as_new(world: World, derive: Derive) -> None:
    """design.md 4 and 5: 100% off for 2 months from signup: MRR 0 until the coupon ends on 1 March; then M(A) = 0,
    M(B) = 90 and the customer never had MRR: `new` (the whole delta), dated at the discount's end, not a `discount`.
    The bridge runs from March, the first month with MRR."""
    two_items(world)
    world.coupon("co_free", percent_off=100, duration="repeating", duration_in_months=2)
    d = world.discount("co_free", T0, customer="cus_1", subscription="sub_1")
    world.objects["subscriptions"]["sub_1"]["discounts"] = [d["id"]]
    world.events[0]["data"]["object"]["discounts"] = [d["id"]]
    con = derive(world, seen_at=month(4))
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == 0
    assert [(t, m, c, x) for t, m, c, x, _ in moves(con)] == [(month(2), "new", "new", Decimal("90.0000"))]
    first = queries.bridge(con)[0]
    assert (first["period_start"], first["opening_mrr"], first["new"], first["new_customers"]) == (
        dt.date(2024, 3, 1), 0, 90, 1)


def test_amount_off_beyond_the_price_then_ended(world: World, derive: Derive) -> None:
    """design.md 4 and 5: a repeating 200.00-off coupon (more than the 90.00 MRR) put on in February for 1 month
    floors MRR at 0: M(B) = 0 is a `cancellation` (churn 90.00); when it ends, MRR 90.00 comes back to a customer
    who had MRR before: `reactivation`."""
    two_items(world)
    world.coupon("co_big", amount_off=20_000, currency="usd", duration="repeating", duration_in_months=1)
    d = world.discount("co_big", month(1, 5), customer="cus_1", subscription="sub_1")
    world.update("sub_1", month(1, 5), discounts=[d["id"]])
    con = derive(world, seen_at=month(4))
    assert customer_mrr_at(con, "cus_1", month(1, 6)) == 0
    assert customer_mrr_at(con, "cus_1", month(2, 5)) == Decimal("90.0000")
    got = [(t, m, c) for t, m, c, _, _ in moves(con)]
    assert got[0] == (T0, "new", "new")
    assert {(t, m, c) for t, m, c in got[1:]} == {(month(1, 5), "cancellation", "churn"),
                                                  (month(2, 5), "reactivation", "reactivation")}
    feb, mar = period(con, dt.date(2024, 2, 1)), period(con, dt.date(2024, 3, 1))
    assert (feb["churn"], feb["contraction"], feb["churned_customers"], feb["closing_mrr"]) == (90, 0, 1, 0)
    assert (mar["reactivation"], mar["reactivated_customers"], mar["closing_mrr"]) == (90, 1, 90)


# --- design.md 4: status and churn timing -----------------------------------------------------------------------

def test_unpaid_churns_once_in_its_month_and_deletion_adds_nothing(world: World, derive: Derive) -> None:
    """design.md 4: past_due counts; an unpaid subscription churns at that transition (15 February, involuntary),
    and its deletion on 1 April is no second movement: the bridge's churn is in February only."""
    base(world).price("seat", "prod_seat", 2_500)
    world.subscribe("sub_1", "cus_1", [("si_1", "seat", 2)], T0)
    world.update("sub_1", month(1, 1), status="past_due")
    world.update("sub_1", month(1, 14), status="unpaid")
    world.update("sub_1", month(3), event=False, canceled_at=month(3),
                 cancellation_details={"reason": "payment_failed", "feedback": None, "comment": None})
    world.end("sub_1", month(3))
    con = derive(world, seen_at=month(4))
    assert moves(con) == [(T0, "new", "new", Decimal("50.0000"), "si_1"),
                          (month(1, 14), "cancellation", "churn", Decimal("-50.0000"), "si_1")]
    assert con.execute("SELECT churn_type FROM mrr_movements WHERE movement = 'cancellation'").fetchall() == [
        ("involuntary",)]
    churn = {r["period_start"]: (r["churn"], r["churned_customers"]) for r in queries.bridge(con)}
    assert churn[dt.date(2024, 2, 1)] == (50, 1)
    assert churn[dt.date(2024, 3, 1)] == (0, 0) and churn[dt.date(2024, 4, 1)] == (0, 0)


@pytest.mark.parametrize(("recognition", "churn_month"), [("ended", 2), ("canceled", 1)])
def test_cancel_at_period_end_churns_in_the_month_the_setting_names(world: World, derive: Derive,
                                                                     recognition: str, churn_month: int) -> None:
    """design.md 4: churn_recognition "ended" counts a cancel_at_period_end at the period end (1 February, in
    February's bridge), "canceled" when it was asked for (20 January, in January's)."""
    base(world).price("seat", "prod_seat", 2_500)
    world.subscribe("sub_1", "cus_1", [("si_1", "seat", 2)], T0)
    world.cancel("sub_1", month(0, 19), ended_at=month(1))
    con = derive(world, seen_at=month(3), churn_recognition=recognition)
    at = month(1) if recognition == "ended" else month(0, 19)
    assert moves(con) == [(T0, "new", "new", Decimal("50.0000"), "si_1"),
                          (at, "cancellation", "churn", Decimal("-50.0000"), "si_1")]
    churn = {r["period_start"].month: r["churn"] for r in queries.bridge(con) if r["period_start"].year == 2024}
    assert churn[churn_month] == 50 and sum(churn.values()) == 50


@one_store
def test_pause_collection_is_no_movement(world: World, derive: Derive) -> None:
    """design.md 4: pause_collection keeps MRR by default: pausing and resuming collection are no movements."""
    base(world).price("seat", "prod_seat", 2_500)
    world.subscribe("sub_1", "cus_1", [("si_1", "seat", 2)], T0)
    world.update("sub_1", month(1, 3), pause_collection={"behavior": "keep_as_draft", "resumes_at": month(2, 3)})
    world.update("sub_1", month(2, 3), pause_collection=None)
    con = derive(world, seen_at=month(3))
    assert moves(con) == [(T0, "new", "new", Decimal("50.0000"), "si_1")]


# --- design.md 4: currency --------------------------------------------------------------------------------------

def test_rate_change_mid_month_is_an_fx_line(world: World, derive: Derive) -> None:
    """design.md 4 and 6: a EUR customer (3 seats x 10.00 EUR) at 1.08, then 1.10 from 15 March: an `fx` movement of
    +0.60 dated 15 March 00:00 UTC, in the bridge's fx (signed), no expansion; the currency segment's bridge the
    same."""
    base(world, currency="eur").price("seat_eur", "prod_seat", 1_000, currency="eur")
    world.subscribe("sub_1", "cus_1", [("si_1", "seat_eur", 3)], T0)
    world.fx_rates += [("2023-12-01", "eur", 1.08), ("2024-03-15", "eur", 1.10), ("2024-04-01", "eur", 1.05)]
    con = derive(world, seen_at=month(4))
    got = [(t, m, c, x) for t, m, c, x, _ in moves(con)]
    assert got == [(T0, "new", "new", Decimal("32.4000")), (ts(2024, 3, 15), "fx", "fx", Decimal("0.6000")),
                   (ts(2024, 4, 1), "fx", "fx", Decimal("-1.5000"))]
    mar = period(con, dt.date(2024, 3, 1))
    assert (mar["opening_mrr"], mar["fx"], mar["expansion"], mar["contraction"], mar["closing_mrr"]) == (
        Decimal("32.4000"), Decimal("0.6000"), 0, 0, Decimal("33.0000"))
    assert period(con, dt.date(2024, 4, 1))["fx"] == Decimal("-1.5000")
    q = period(con, dt.date(2024, 1, 1), "quarter", "currency", "eur")
    assert (q["new"], q["fx"], q["closing_mrr"]) == (Decimal("32.4000"), Decimal("0.6000"), Decimal("33.0000"))


@one_store
def test_rate_change_and_a_seat_an_hour_and_a_half_apart(world: World, derive: Derive) -> None:
    """design.md 4: the case below with the seat added at 01:30, outside the rate change's window: the rate swing on
    the 20 EUR held is fx (+0.40), the seat at the rate in force (10 EUR x 1.10) seat_expansion (+11.00)."""
    base(world, currency="eur").price("seat_eur", "prod_seat", 1_000, currency="eur")
    world.subscribe("sub_1", "cus_1", [("si_1", "seat_eur", 2)], T0)
    world.update("sub_1", ts(2024, 3, 1, 1, 30), items=[("si_1", "seat_eur", 3)])
    world.fx_rates += [("2023-12-01", "eur", 1.08), ("2024-03-01", "eur", 1.10)]
    con = derive(world, seen_at=month(4))
    assert [(t, m, x) for t, m, _, x, _ in moves(con)][1:] == [(ts(2024, 3, 1), "fx", Decimal("0.4000")),
                                                               (ts(2024, 3, 1, 1, 30), "seat_expansion",
                                                                Decimal("11.0000"))]


def test_rate_change_and_a_seat_in_one_window(world: World, derive: Derive) -> None:
    """design.md 4 and 5: exchange-rate swings are their own line, never disguised as expansion. A EUR customer with
    2 seats x 10.00 EUR (21.60 USD at 1.08) adds a seat 20 minutes after the rate moves to 1.10 (1 March 00:00): one
    transition of +11.40 USD. Worked by hand as finance does: the rate swing on the MRR held (20 EUR x 0.02 = 0.40)
    is fx, the seat at the new rate (10 EUR x 1.10 = 11.00) is seat_expansion: design.md 5's split of a combined
    change, the rate taken as the plan's price is (its move on the old quantity, the rest at the new one). Until
    the fx part was taken on A's items, ours gave fx 0.60 (30 EUR x 0.02) and seat_expansion 10.80 (10 EUR x
    1.08)."""
    base(world, currency="eur").price("seat_eur", "prod_seat", 1_000, currency="eur")
    world.subscribe("sub_1", "cus_1", [("si_1", "seat_eur", 2)], T0)
    world.update("sub_1", ts(2024, 3, 1, 0, 20), items=[("si_1", "seat_eur", 3)])
    world.fx_rates += [("2023-12-01", "eur", 1.08), ("2024-03-01", "eur", 1.10)]
    con = derive(world, seen_at=month(4))
    mar = period(con, dt.date(2024, 3, 1))
    assert mar["closing_mrr"] - mar["opening_mrr"] == Decimal("11.4000")
    assert (mar["fx"], mar["seat_expansion"], mar["expansion"]) == (Decimal("0.4000"), Decimal("11.0000"),
                                                                    Decimal("11.0000"))



def test_a_plan_switch_made_across_a_rate_change_is_valued_when_the_new_plan_begins(world: World, derive: Derive
                                                                                      ) -> None:
    """design.md 4 and 5: a EUR customer on 3 x 10.00 EUR (32.40 USD at 1.08) cancels at 23:40 on 29 February and
    subscribes to 5 x 10.00 EUR at 00:10 on 1 March, the rate having moved to 1.10 at 00:00: one transition (the
    window nets the cancel and the new subscription into a switch), +22.60 USD in all (55.00 - 32.40). The switch
    is made when the new plan begins, so the old one counts as held until then: the rate's move on it is fx (30 EUR
    x 0.02 = +0.60), and the two more seats are valued at the new rate (20 EUR x 1.10 = +22.00). A seat removed 20
    minutes after the rate moved, from another EUR customer on 3 seats: fx on the 3 seats held (+0.60) when the
    rate moves, then the seat at the new rate (-11.00) when it is removed (a rate's move joins no window)."""
    base(world, currency="eur").price("seat_eur", "prod_seat", 1_000, currency="eur")
    world.customer("cus_2", currency="eur")
    world.subscribe("sub_1", "cus_1", [("si_1", "seat_eur", 3)], T0)
    world.cancel("sub_1", ts(2024, 2, 29, 23, 40))
    world.subscribe("sub_2", "cus_1", [("si_2", "seat_eur", 5)], ts(2024, 3, 1, 0, 10))
    world.subscribe("sub_3", "cus_2", [("si_3", "seat_eur", 3)], T0)
    world.update("sub_3", ts(2024, 3, 1, 0, 20), items=[("si_3", "seat_eur", 2)])
    world.fx_rates += [("2023-12-01", "eur", 1.08), ("2024-03-01", "eur", 1.10)]
    con = derive(world, seen_at=month(4))
    assert [(t, m, x) for t, m, _, x, _ in moves(con)][1:] == [
        (ts(2024, 2, 29, 23, 40), "fx", Decimal("0.6000")),
        (ts(2024, 2, 29, 23, 40), "seat_expansion", Decimal("22.0000"))]
    assert [(t, m, x) for t, m, _, x, _ in moves(con, "cus_2")][1:] == [
        (ts(2024, 3, 1), "fx", Decimal("0.6000")),
        (ts(2024, 3, 1, 0, 20), "seat_contraction", Decimal("-11.0000"))]

# --- design.md 6: rates --------------------------------------------------------------------------------------------

def rates_world(w: World) -> World:
    """c1 (50.00) and c2 (30.00) from January; in March c1 churns, c3 signs up (20.00) and churns again, c2 adds a
    seat (10.00)."""
    w.product("prod_seat", unit_label="seat", family="core")
    w.price("seat", "prod_seat", 1_000)
    for c in ("c1", "c2", "c3"):
        w.customer(c)
    w.subscribe("s1", "c1", [("i1", "seat", 5)], ts(2024, 1, 5))
    w.subscribe("s2", "c2", [("i2", "seat", 3)], ts(2024, 1, 6))
    w.cancel("s1", ts(2024, 3, 3))
    w.subscribe("s3", "c3", [("i3", "seat", 2)], ts(2024, 3, 4))
    w.update("s2", ts(2024, 3, 8), items=[("i2", "seat", 4)])
    w.cancel("s3", ts(2024, 3, 20))
    return w


def test_customer_churn_rate_counts_only_customers_there_at_the_start(world: World, derive: Derive) -> None:
    """design.md 6: customer churn rate = customers with MRR at the period start who churned in it / customers at
    the start. In March c1 (there at the start) and c3 (new in March) churn: 1 / 2, though churned_customers is 2.
    Opening 80, new 20, expansion 10, churn 70: gross 70/80, net (70 - 10)/80, NRR (80 + 10 - 70)/80, GRR 10/80,
    quick ratio 30/70, ARPA 40/1."""
    con = derive(rates_world(world), seen_at=ts(2024, 4, 2))
    mar = period(con, dt.date(2024, 3, 1))
    assert (mar["opening_mrr"], mar["new"], mar["expansion"], mar["churn"], mar["closing_mrr"]) == (80, 20, 10, 70, 40)
    assert (mar["opening_customers"], mar["new_customers"], mar["churned_customers"], mar["closing_customers"]) == (
        2, 1, 2, 1)
    assert mar["customer_churn_rate"] == 0.5
    assert mar["gross_revenue_churn_rate"] == pytest.approx(70 / 80)
    assert mar["net_revenue_churn_rate"] == pytest.approx(60 / 80)
    assert mar["nrr"] == pytest.approx(20 / 80) and mar["grr"] == pytest.approx(10 / 80)
    assert mar["quick_ratio"] == pytest.approx(30 / 70)
    assert mar["arpa"] == Decimal("40.0000") and mar["net_negative_churn"] is False


def test_everyone_gone_arpa_null_quick_ratio_zero(world: World, derive: Derive) -> None:
    """design.md 6: a month where the only customer churns: ARPA has zero closing customers (NULL); quick ratio is
    0 / 50 = 0 (not NULL); gross and net churn 1, NRR and GRR 0, customer churn 1. The next (quiet) month opens at 0:
    every rate with opening_mrr or opening customers as denominator is NULL, and net_negative_churn NULL."""
    base(world).price("seat", "prod_seat", 2_500)
    world.subscribe("sub_1", "cus_1", [("si_1", "seat", 2)], T0)
    world.cancel("sub_1", month(1, 10))
    con = derive(world, seen_at=month(3))
    feb, mar = period(con, dt.date(2024, 2, 1)), period(con, dt.date(2024, 3, 1))
    assert (feb["arpa"], feb["quick_ratio"], feb["gross_revenue_churn_rate"], feb["net_revenue_churn_rate"],
            feb["nrr"], feb["grr"], feb["customer_churn_rate"], feb["net_negative_churn"]) == (
        None, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, False)
    assert (mar["opening_mrr"], mar["closing_mrr"], mar["arpa"], mar["quick_ratio"], mar["nrr"],
            mar["customer_churn_rate"], mar["net_negative_churn"]) == (0, 0, None, None, None, None, None)


def test_net_churn_exactly_zero_is_not_net_negative(world: World, derive: Derive) -> None:
    """design.md 6: expansion (+10) equal to contraction (-10): net revenue churn rate 0, not negative, so
    net_negative_churn is false; quick ratio 10/10 = 1."""
    world.product("prod_seat", unit_label="seat", family="core")
    world.price("seat", "prod_seat", 1_000)
    for c in ("c1", "c2"):
        world.customer(c)
    world.subscribe("s1", "c1", [("i1", "seat", 5)], ts(2024, 1, 5))
    world.subscribe("s2", "c2", [("i2", "seat", 3)], ts(2024, 1, 6))
    world.update("s1", ts(2024, 2, 3), items=[("i1", "seat", 6)])
    world.update("s2", ts(2024, 2, 8), items=[("i2", "seat", 2)])
    con = derive(world, seen_at=ts(2024, 3, 2))
    feb = period(con, dt.date(2024, 2, 1))
    assert (feb["expansion"], feb["contraction"], feb["net_revenue_churn_rate"], feb["net_negative_churn"],
            feb["quick_ratio"], feb["nrr"]) == (10, 10, 0.0, False, 1.0, 1.0)


def test_arpa_of_a_repeating_mrr(world: World, derive: Derive) -> None:
    """design.md 6: ARPA = closing_mrr / closing customers at 4 decimals: three customers of 100.00/3 ... : an annual
    price of 400.00 is 33.3333; two of them and one at 10.00: closing 76.6666, ARPA 25.5555 (76.6666 / 3 =
    25.55553...)."""
    world.product("prod_seat", unit_label="seat", family="core")
    world.price("yr", "prod_seat", 40_000, interval="year")
    world.price("m", "prod_seat", 1_000)
    for c in ("c1", "c2", "c3"):
        world.customer(c)
    world.subscribe("s1", "c1", [("i1", "yr", 1)], ts(2024, 1, 5))
    world.subscribe("s2", "c2", [("i2", "yr", 1)], ts(2024, 1, 6))
    world.subscribe("s3", "c3", [("i3", "m", 1)], ts(2024, 1, 7))
    con = derive(world, seen_at=ts(2024, 2, 2))
    jan = period(con, dt.date(2024, 1, 1))
    assert (jan["closing_mrr"], jan["closing_customers"], jan["arpa"]) == (Decimal("76.6666"), 3, Decimal("25.5555"))


# --- design.md 6: period boundaries ----------------------------------------------------------------------------

def test_changes_at_the_last_second_and_the_first_instant_of_a_period(world: World, derive: Derive,
                                                                       store: duckdb.DuckDBPyConnection) -> None:
    """design.md 6 (periods in UTC; a period starts at 00:00:00 UTC, included): Monday 1 April 2024 starts a week, a
    month and a quarter. c1's seat at 23:59:59 on Sunday 31 March counts in the week of 25 March, March and Q1;
    c2's seat at 00:00:00 on 1 April counts in the week of 1 April, April and Q2; whatever the session's time
    zone when the metrics are derived (Tokyo here) and when the bridge is read."""
    world.product("prod_seat", unit_label="seat", family="core")
    world.price("seat", "prod_seat", 1_000)
    for c in ("c1", "c2"):
        world.customer(c)
    world.subscribe("s1", "c1", [("i1", "seat", 1)], ts(2024, 1, 10))
    world.subscribe("s2", "c2", [("i2", "seat", 1)], ts(2024, 1, 10))
    world.update("s1", ts(2024, 4, 1) - 1, items=[("i1", "seat", 3)])
    world.update("s2", ts(2024, 4, 1), items=[("i2", "seat", 5)])
    store.execute("SET TimeZone = 'Asia/Tokyo'")
    con = derive(world, seen_at=ts(2024, 4, 20))
    try:
        for session_tz, (kind, before, after) in itertools.product(
                ("UTC", "America/Los_Angeles", "Asia/Tokyo"),
                (("week", dt.date(2024, 3, 25), dt.date(2024, 4, 1)), ("month", dt.date(2024, 3, 1), dt.date(2024, 4, 1)),
                 ("quarter", dt.date(2024, 1, 1), dt.date(2024, 4, 1)), ("year", dt.date(2024, 1, 1), dt.date(2024, 1, 1)))):
            con.execute(f"SET TimeZone = '{session_tz}'")
            rows = {r["period_start"]: r for r in queries.bridge(con, kind)}
            if kind == "year":
                assert rows[before]["seat_expansion"] == 60, kind
                continue
            assert rows[before]["seat_expansion"] == 20, kind
            assert rows[after]["seat_expansion"] == 40, kind
            assert rows[after]["opening_mrr"] == 40, kind
            assert rows[before]["period_end"] == after - dt.timedelta(days=1), kind
    finally:
        con.execute("SET TimeZone = 'UTC'")


def test_identity_in_every_period_and_segment_of_a_mixed_account(world: World, derive: Derive) -> None:
    """design.md 6: the identity for every period and segment, on an account of this file's cases together: a EUR
    customer with rate swings and a seat in the rate's window, a mid-month repeating coupon, a customer who moves
    between plans and size bands, a churn at 00:00 of a quarter, an unpaid churn."""
    world.product("prod_seat", unit_label="seat", family="core")
    world.product("prod_an", family="analytics")
    world.price("seat", "prod_seat", 1_000)
    world.price("seat_eur", "prod_seat", 1_000, currency="eur")
    world.price("an", "prod_an", 9_000)
    world.customer("c1", metadata={"tier": "gold"})
    world.customer("c2", currency="eur", address={"country": "DE"})
    world.customer("c3", metadata={"tier": "silver"})
    world.subscribe("s1", "c1", [("i1", "seat", 5)], ts(2024, 1, 5))
    world.coupon("co_r", percent_off=20, duration="repeating", duration_in_months=2)
    d = world.discount("co_r", ts(2024, 1, 15, 10), customer="c1", subscription="s1")
    world.update("s1", ts(2024, 1, 15, 10), discounts=[d["id"]])
    world.update("s1", ts(2024, 2, 20), items=[("i1b", "an", 2)])
    world.subscribe("s2", "c2", [("i2", "seat_eur", 2)], ts(2024, 1, 6))
    world.update("s2", ts(2024, 3, 1, 0, 20), items=[("i2", "seat_eur", 3)])
    world.subscribe("s3", "c3", [("i3", "seat", 12)], ts(2024, 2, 2))
    world.cancel("s3", ts(2024, 3, 10), ended_at=ts(2024, 4, 1))
    world.update("s2", ts(2024, 5, 1), status="past_due")
    world.update("s2", ts(2024, 5, 12), status="unpaid")
    world.fx_rates += [("2023-12-01", "eur", 1.08), ("2024-03-01", "eur", 1.10), ("2024-04-15", "eur", 1.04)]
    con = derive(world, seen_at=ts(2024, 6, 2))
    assert assert_bridge_adds_up(con, "hunt") > 50


# --- design.md 4: discounts on other intervals, offsetting changes ---------------------------------------------

OFF_CASES = [
    ("month", 3, 30_000, 3_000, "90.0000"),  # (300.00 - 30.00) every 3 months
    ("week", 1, 1_000, 200, "34.6667"),  # (10.00 - 2.00) a week x 52 / 12 = 34.666...
    ("year", 1, 120_000, 12_000, "90.0000"),  # (1,200.00 - 120.00) a year / 12
]


@one_store
def test_amount_off_is_per_billing_period(world: World, derive: Derive) -> None:
    """design.md 4: an amount_off coupon takes its amount off each invoice, so off the price's period before the
    normalisation to a month; one customer per case."""
    base(world)
    for n, (interval, count, unit_amount, amount_off, _) in enumerate(OFF_CASES):
        world.price(f"p{n}", "prod_seat", unit_amount, interval=interval, interval_count=count)
        world.coupon(f"co{n}", amount_off=amount_off, currency="usd")
        world.customer(f"c{n}")
        d = world.discount(f"co{n}", T0, customer=f"c{n}", subscription=f"s{n}")
        world.subscribe(f"s{n}", f"c{n}", [(f"i{n}", f"p{n}", 1)], T0, discounts=[d["id"]])
    con = derive(world, seen_at=month(1))
    assert [customer_mrr_at(con, f"c{n}", T0 + DAY) for n in range(len(OFF_CASES))] == [
        Decimal(e) for *_, e in OFF_CASES]


def test_repeating_coupon_on_an_annual_plan_ends_after_its_months(world: World, derive: Derive) -> None:
    """design.md 4: a repeating discount reduces MRR while it applies and its end is a `discount` movement dated at
    the discount's end: 50% off an annual 1,200.00 plan for 3 months is 50.00 a month until 1 April, then 100.00 (a
    discount_expansion of 50.00 in April's bridge, Q2 in the quarter's)."""
    base(world).price("yr", "prod_seat", 120_000, interval="year")
    world.coupon("co_half", percent_off=50, duration="repeating", duration_in_months=3)
    d = world.discount("co_half", T0, customer="cus_1", subscription="sub_1")
    world.subscribe("sub_1", "cus_1", [("si_1", "yr", 1)], T0, discounts=[d["id"]])
    con = derive(world, seen_at=month(5))
    assert moves(con) == [(T0, "new", "new", Decimal("50.0000"), "si_1"),
                          (month(3), "discount", "expansion", Decimal("50.0000"), "si_1")]
    assert period(con, dt.date(2024, 4, 1))["discount_expansion"] == 50
    q2 = period(con, dt.date(2024, 4, 1), "quarter")
    assert (q2["opening_mrr"], q2["expansion"], q2["closing_mrr"]) == (50, 50, 100)


def test_a_seat_and_a_discount_that_offset_each_other_are_no_movement(world: World, derive: Derive) -> None:
    """design.md 5 (and 4): a fifth seat (+10.00) and a 10% forever discount on the subscription (100.00 -> 90.00)
    in one update leave the customer's MRR at 90.00: a transition whose MRR does not change produces no row, and the
    bridge shows no flow in February."""
    two_items(world)
    world.coupon("co_10", percent_off=10)
    d = world.discount("co_10", month(1, 5), customer="cus_1", subscription="sub_1")
    world.update("sub_1", month(1, 5), items=[("si_a", "price_a", 5), ("si_b", "price_b", 1)], discounts=[d["id"]])
    con = derive(world, seen_at=month(3))
    assert customer_mrr_at(con, "cus_1", month(1, 6)) == Decimal("90.0000")
    assert moves(con) == [(T0, "new", "new", Decimal("90.0000"), "si_b")]
    feb = period(con, dt.date(2024, 2, 1))
    assert (feb["expansion"], feb["contraction"], feb["closing_mrr"]) == (0, 0, 90)


# --- design.md 4: churn timing with a cancellation taken back --------------------------------------------------

def cancel_then_undo(w: World) -> World:
    """cus_1 (50.00) sets its subscription to cancel at period end (1 February) on 20 January, and takes it back on
    25 January: the subscription never ends."""
    base(w).price("seat", "prod_seat", 2_500)
    w.subscribe("sub_1", "cus_1", [("si_1", "seat", 2)], T0)
    w.update("sub_1", month(0, 19), cancel_at_period_end=True, cancel_at=month(1), canceled_at=month(0, 19),
             cancellation_details={"reason": "cancellation_requested", "feedback": "too_expensive", "comment": None})
    w.update("sub_1", month(0, 24), cancel_at_period_end=False, cancel_at=None, canceled_at=None,
             cancellation_details={"reason": None, "feedback": None, "comment": None})
    w.cycle("sub_1", month(1))
    return w


@one_store
def test_a_cancellation_taken_back_before_period_end_is_no_churn(world: World, derive: Derive) -> None:
    """design.md 4: with churn_recognition "ended" a cancellation counts when the subscription ends: one taken back
    before its period end never churns, and scheduled_churn no longer lists it."""
    con = derive(cancel_then_undo(world), seen_at=month(2))
    assert moves(con) == [(T0, "new", "new", Decimal("50.0000"), "si_1")]
    assert queries.scheduled_churn(con) == []
    assert customer_mrr_at(con, "cus_1", month(1, 5)) == Decimal("50.0000")


# --- design.md 6: segments --------------------------------------------------------------------------------------

def test_churn_and_comeback_on_another_plan_within_a_month_by_plan(world: World, derive: Derive) -> None:
    """design.md 6 and README (a customer belongs, for a period, to the segment of its state at the period start):
    c1 on `basic` (50.00) cancels on 5 March and subscribes to `pro` (100.00) on 20 March. March's flows (churn 50,
    reactivation 100) are in `basic`, whose March closes at 100; c1 moves to `pro` at 1 April with no flow: `basic`
    opens April at 0, `pro` at 100. c2 stays on `basic` (30.00) throughout. Each segment's identity holds."""
    world.product("prod_seat", unit_label="seat", family="core")
    world.price("basic", "prod_seat", 1_000)
    world.price("pro", "prod_seat", 2_000)
    world.customer("c1")
    world.customer("c2")
    world.subscribe("s1", "c1", [("i1", "basic", 5)], ts(2024, 1, 5))
    world.subscribe("s2", "c2", [("i2", "basic", 3)], ts(2024, 1, 6))
    world.cancel("s1", ts(2024, 3, 5))
    world.subscribe("s1b", "c1", [("i1b", "pro", 5)], ts(2024, 3, 20))
    con = derive(world, seen_at=ts(2024, 4, 20))
    mar_b = period(con, dt.date(2024, 3, 1), "month", "plan", "basic")
    assert (mar_b["opening_mrr"], mar_b["churn"], mar_b["reactivation"], mar_b["closing_mrr"],
            mar_b["opening_customers"], mar_b["churned_customers"], mar_b["reactivated_customers"],
            mar_b["closing_customers"], mar_b["customer_churn_rate"]) == (80, 50, 100, 130, 2, 1, 1, 2, 0.5)
    apr_b = period(con, dt.date(2024, 4, 1), "month", "plan", "basic")
    apr_p = period(con, dt.date(2024, 4, 1), "month", "plan", "pro")
    assert (apr_b["opening_mrr"], apr_b["opening_customers"], apr_b["closing_mrr"]) == (30, 1, 30)
    assert (apr_p["opening_mrr"], apr_p["opening_customers"], apr_p["closing_mrr"], apr_p["reactivation"]) == (
        100, 1, 100, 0)
    assert not [r for r in queries.bridge(con, "month", "plan", segment_value="pro")
                if r["period_start"] < dt.date(2024, 4, 1)]
    assert_bridge_adds_up(con, "comeback", periods=["month", "quarter"], segments=[None, "plan", "size_band"])


def test_a_discount_ending_after_the_latest_sync_has_not_happened_yet(world: World, derive: Derive) -> None:
    """design.md 4 and 6: a repeating 20% coupon from signup for 3 months (ends 1 April), synced on 20 March: the
    end is no movement yet, customer_mrr's current level (72.00) has no end, and March closes at 72.00."""
    two_items(world)
    world.coupon("co_r", percent_off=20, duration="repeating", duration_in_months=3)
    d = world.discount("co_r", T0, customer="cus_1", subscription="sub_1")
    world.objects["subscriptions"]["sub_1"]["discounts"] = [d["id"]]
    world.events[0]["data"]["object"]["discounts"] = [d["id"]]
    con = derive(world, seen_at=ts(2024, 3, 20))
    assert moves(con) == [(T0, "new", "new", Decimal("72.0000"), "si_b")]
    assert con.execute("SELECT mrr, valid_to FROM customer_mrr").fetchall() == [(Decimal("72.0000"), None)]
    assert period(con, dt.date(2024, 3, 1))["closing_mrr"] == Decimal("72.0000")


@one_store
def test_an_item_level_amount_off_comes_off_the_items_amount(world: World, derive: Derive) -> None:
    """design.md 4: an item-level discount applies to that item: 5.00 off the 4 seats' 40.00 (not off each seat),
    the API plan's 50.00 untouched: 85.00."""
    two_items(world)
    world.coupon("co_5", amount_off=500, currency="usd")
    d = world.discount("co_5", T0, customer="cus_1", subscription="sub_1", subscription_item="si_a")
    world.objects["subscriptions"]["sub_1"]["items"]["data"][0]["discounts"] = [d["id"]]
    world.events[0]["data"]["object"]["items"]["data"][0]["discounts"] = [d["id"]]
    con = derive(world, seen_at=month(1))
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == Decimal("85.0000")


def test_a_customer_wide_repeating_discount_on_two_subscriptions(world: World, derive: Derive) -> None:
    """design.md 4: a customer-wide 10% coupon for 2 months from 10 January 12:00 applies to both subscriptions
    (90.00 and 20.00): a `discount` row per item at its start (-4, -5, -2) and at its end on 10 March 12:00 (+4, +5,
    +2); January's discount_contraction and March's discount_expansion are 11.00."""
    two_items(world)
    world.price("price_c", "prod_api", 2_000)
    world.subscribe("sub_2", "cus_1", [("si_c", "price_c", 1)], T0)
    world.coupon("co_r", percent_off=10, duration="repeating", duration_in_months=2)
    start, end = ts(2024, 1, 10, 12), ts(2024, 3, 10, 12)
    world.objects["customers"]["cus_1"]["discount"] = world.discount("co_r", start, customer="cus_1")
    con = derive(world, seen_at=month(4))
    assert moves(con)[1:] == [(start, "discount", "contraction", Decimal(x), i) for x, i in
                              (("-4.0000", "si_a"), ("-5.0000", "si_b"), ("-2.0000", "si_c"))] + [
        (end, "discount", "expansion", Decimal(x), i) for x, i in (("4.0000", "si_a"), ("5.0000", "si_b"),
                                                                     ("2.0000", "si_c"))]
    assert period(con, dt.date(2024, 1, 1))["discount_contraction"] == 11
    assert period(con, dt.date(2024, 3, 1))["discount_expansion"] == 11


def test_volume_tiers_fewer_seats_can_cost_more(world: World, derive: Derive) -> None:
    """design.md 4 (volume tiers): 6 seats are 51.00 (all at the second tier), 5 seats 55.00 (all at the first, plus
    its flat 5.00): going down a seat raises MRR by 4.00, and the bridge counts it where its sign says (expansion;
    the bridge's flows are positive amounts)."""
    base(world).price("tiered", "prod_seat", None, tiers=TIERS, tiers_mode="volume")
    world.subscribe("sub_1", "cus_1", [("si_1", "tiered", 6)], T0)
    world.update("sub_1", month(1, 3), items=[("si_1", "tiered", 5)])
    con = derive(world, seen_at=month(2))
    assert customer_mrr_at(con, "cus_1", month(1, 3)) == Decimal("55.0000")
    feb = period(con, dt.date(2024, 2, 1))
    assert (feb["opening_mrr"], feb["expansion"], feb["contraction"], feb["closing_mrr"]) == (51, 4, 0, 55)


METERED_CASES = [
    ("week", 1, 700, "30.3333"),  # 7.00 for a full week: 7 x 52 / 12 = 30.333...
    ("month", 3, 30_000, "100.0000"),  # 300.00 for a full quarter
    ("day", 1, 100, "30.4167"),  # 1.00 for a full day: 365 / 12 = 30.41666...
]


@one_store
def test_metered_usage_normalised_by_its_interval(world: World, derive: Derive) -> None:
    """design.md 4: metered MRR is the last invoiced full period's amount, normalised as any price (week x 52/12,
    day x 365/12, / interval_count), from that invoice on; zero before it, so the first usage is the `new`; one
    customer per case."""
    base(world)
    firsts = []
    for n, (interval, count, amount, _) in enumerate(METERED_CASES):
        world.price(f"usage{n}", "prod_api", None, usage_type="metered", interval=interval, interval_count=count)
        world.customer(f"c{n}")
        world.subscribe(f"s{n}", f"c{n}", [(f"m{n}", f"usage{n}", None)], T0)
        firsts.append(add_interval(T0, interval, count))
        world.cycle(f"s{n}", firsts[-1], usage={f"m{n}": amount})
    con = derive(world, seen_at=ts(2024, 4, 20))
    for n, (*_, expected) in enumerate(METERED_CASES):
        assert customer_mrr_at(con, f"c{n}", firsts[n] - 1) == 0, n
        assert customer_mrr_at(con, f"c{n}", firsts[n]) == Decimal(expected), n
        assert moves(con, f"c{n}") == [(firsts[n], "new", "new", Decimal(expected), f"m{n}")], n


def test_a_cancellation_twenty_minutes_after_a_rate_change(world: World, derive: Derive) -> None:
    """design.md 4 (a cancellation counts when the subscription ends, `ended_at`; rate swings are their own fx line):
    a EUR customer (30.00 EUR, 32.40 USD at 1.08) whose subscription ends at 00:20 on 1 March, the rate having moved
    to 1.10 at 00:00: fx +0.60 at 00:00, then the cancellation of 33.00 at 00:20."""
    base(world, currency="eur").price("seat_eur", "prod_seat", 1_000, currency="eur")
    world.subscribe("sub_1", "cus_1", [("si_1", "seat_eur", 3)], T0)
    world.cancel("sub_1", ts(2024, 3, 1, 0, 20))
    world.fx_rates += [("2023-12-01", "eur", 1.08), ("2024-03-01", "eur", 1.10)]
    con = derive(world, seen_at=month(4))
    assert [(t, m, x) for t, m, _, x, _ in moves(con)][1:] == [(ts(2024, 3, 1), "fx", Decimal("0.6000")),
                                                               (ts(2024, 3, 1, 0, 20), "cancellation",
                                                                Decimal("-33.0000"))]
