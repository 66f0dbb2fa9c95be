"""Small hand-built accounts with discounts, checked against answers worked out by hand from design.md 4 (forever
and repeating discounts reduce MRR while they apply, `once` does not; subscription-level on all its items,
item-level on that item; a discount starting or ending is a `discount` movement at its start or end), 5 (labels,
parts of one transition) and 6 (the bridge), with README's Discounts rules (a subscription's own discount replaces
the customer's; a restricted coupon lowers only its products' items): amount-off coupons on quarterly and annual
prices, an item-level amount off larger than its item, a customer-wide discount shadowed for a while by the
subscription's own, a discount put on and taken off inside one movement window, a discount on a metered item, a tier
crossed as an amount off starts, a 100% forever coupon taken off, a restricted repeating coupon ending, a customer-wide
amount off on two subscriptions, a discount whose end comes after the subscription ended, two item-level percent
discounts stacked, one coupon swapped for another, and an item's discount taken off by an update before a full
sync flags it deleted."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from decimal import Decimal

import duckdb
import pytest
from builders import DAY, World, add_months, ts
from conftest import OneStore, customer_mrr_at
from test_bridge import assert_bridge_adds_up
from test_mrr_rules import T0, base, load_flagged, month
from test_rules_hunt import TIERS, moves

from stripe_churn.metrics import queries
from stripe_churn.store.load import mark_unlisted_discounts

Derive = Callable[..., duckdb.DuckDBPyConnection]
D = Decimal

# The tests marked @one_store are each an account of one store, derived once (conftest.OneStore): their queries see
# their own account's rows alone.
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()



def period(con: duckdb.DuckDBPyConnection, start: dt.date) -> dict:
    rows = [r for r in queries.bridge(con) if r["period_start"] == start]
    assert len(rows) == 1, rows
    return rows[0]


def two_items(w: World, discounts: list[str] | None = None) -> World:
    """cus_1: 4 seats at 10.00 (si_a, core) and an API plan at 50.00 (si_b, api) from T0: 90.00."""
    base(w).price("price_a", "prod_seat", 1_000)
    w.price("price_b", "prod_api", 5_000)
    w.subscribe("sub_1", "cus_1", [("si_a", "price_a", 4), ("si_b", "price_b", 1)], T0, discounts=discounts or [])
    return w


def take_item_discounts_off(w: World, sid: str, at: int, item: str) -> None:
    """An update at ``at`` that takes every discount off ``item`` (nothing else changes)."""
    sub = w.objects["subscriptions"][sid]
    before = copy.deepcopy(sub)
    for it in sub["items"]["data"]:
        if it["id"] == item:
            it["discounts"] = []
    w.event("customer.subscription.updated", at, sub, before)


@one_store
def test_a_repeating_amount_off_on_a_quarterly_price(world: World, derive: Derive) -> None:
    """design.md 4: 300.00 every 3 months less 60.00 off each invoice is (300 - 60) / 3 = 80.00 a month; the
    3-month repeating coupon ends on 1 April: a `discount` expansion of 20.00 on the item."""
    base(world).price("q", "prod_seat", 30_000, interval="month", interval_count=3)
    world.coupon("co_q", amount_off=6_000, currency="usd", duration="repeating", duration_in_months=3)
    d = world.discount("co_q", T0, customer="cus_1", subscription="sub_1")
    world.subscribe("sub_1", "cus_1", [("si_1", "q", 1)], T0, discounts=[d["id"]])
    con = derive(world, seen_at=month(4))
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == D("80.0000")
    assert customer_mrr_at(con, "cus_1", month(3)) == D("100.0000")
    assert moves(con) == [(T0, "new", "new", D("80.0000"), "si_1"),
                          (month(3), "discount", "expansion", D("20.0000"), "si_1")]


def test_a_repeating_amount_off_put_on_an_annual_plan_mid_month(world: World, derive: Derive) -> None:
    """design.md 4 and 6: an annual 1,200.00 plan (100.00 a month); on 15 February 10:00 a 120.00-off coupon for 3
    months: (1,200 - 120) / 12 = 90.00 until 15 May 10:00. February's bridge has discount_contraction 10.00, March
    and April no flow, May discount_expansion 10.00."""
    base(world).price("yr", "prod_seat", 120_000, interval="year")
    world.subscribe("sub_1", "cus_1", [("si_1", "yr", 1)], T0)
    world.coupon("co_y", amount_off=12_000, currency="usd", duration="repeating", duration_in_months=3)
    start, end = ts(2024, 2, 15, 10), ts(2024, 5, 15, 10)
    d = world.discount("co_y", start, customer="cus_1", subscription="sub_1")
    assert d["end"] == end
    world.update("sub_1", start, discounts=[d["id"]])
    con = derive(world, seen_at=month(6))
    assert [customer_mrr_at(con, "cus_1", t) for t in (start - 1, start, end - 1, end)] == [
        D("100.0000"), D("90.0000"), D("90.0000"), D("100.0000")]
    assert moves(con) == [(T0, "new", "new", D("100.0000"), "si_1"),
                          (start, "discount", "contraction", D("-10.0000"), "si_1"),
                          (end, "discount", "expansion", D("10.0000"), "si_1")]
    feb, mar, apr, may = (period(con, dt.date(2024, m, 1)) for m in (2, 3, 4, 5))
    assert (feb["contraction"], feb["discount_contraction"], feb["churn"], feb["closing_mrr"]) == (10, 10, 0, 90)
    assert (mar["expansion"], mar["contraction"], apr["expansion"], apr["contraction"]) == (0, 0, 0, 0)
    assert (may["expansion"], may["discount_expansion"], may["upgrade"], may["closing_mrr"]) == (10, 10, 0, 100)
    assert_bridge_adds_up(con, "annual amount off", periods=["month", "quarter"], segments=[None])


@one_store
def test_an_item_amount_off_larger_than_its_item_then_taken_off(world: World, derive: Derive) -> None:
    """design.md 4: an item-level 200.00 off applies to that item alone: the seats (40.00) floor at 0 and the API
    plan keeps its 50.00 (MRR 50.00, nothing spills over). Taken off the seats on 11 February (an update, inside
    the events; the next sync flags it deleted), MRR is 90.00 again: a `discount` expansion of 40.00 on si_a (the customer kept MRR throughout, so
    not a reactivation nor a cross-sell)."""
    two_items(world)
    world.coupon("co_big", amount_off=20_000, currency="usd")
    d = world.discount("co_big", T0, customer="cus_1", subscription="sub_1", subscription_item="si_a")
    world.objects["subscriptions"]["sub_1"]["items"]["data"][0]["discounts"] = [d["id"]]
    world.events[0]["data"]["object"]["items"]["data"][0]["discounts"] = [d["id"]]
    take_item_discounts_off(world, "sub_1", month(1, 10), "si_a")
    con = derive(world, seen_at=month(3), load=load_flagged)  # (the next full sync no longer finds it)
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == D("50.0000")
    assert customer_mrr_at(con, "cus_1", month(1, 10)) == D("90.0000")
    assert moves(con) == [(T0, "new", "new", D("50.0000"), "si_b"),
                          (month(1, 10), "discount", "expansion", D("40.0000"), "si_a")]


@one_store
def test_a_customer_wide_discount_shadowed_by_the_subscriptions_own_until_it_ends(world: World, derive: Derive
                                                                                  ) -> None:
    """README (a subscription's own discount replaces the customer's): the customer has 20% off forever (100.00 ->
    80.00); on 11 February the subscription gets its own 50% for 2 months: 50.00, a `discount` of -30.00; when it
    ends on 11 April the customer's 20% applies again: 80.00, a `discount` of +30.00."""
    base(world).price("price_a", "prod_seat", 10_000)
    world.coupon("co_cust", percent_off=20)
    world.coupon("co_own", percent_off=50, duration="repeating", duration_in_months=2)
    world.objects["customers"]["cus_1"]["discount"] = world.discount("co_cust", T0 - DAY, customer="cus_1")
    world.subscribe("sub_1", "cus_1", [("si_1", "price_a", 1)], T0)
    start = month(1, 10)
    own = world.discount("co_own", start, customer="cus_1", subscription="sub_1")
    end = add_months(start, 2)
    assert own["end"] == end == ts(2024, 4, 11)
    world.update("sub_1", start, discounts=[own["id"]])
    con = derive(world, seen_at=month(5))
    assert [customer_mrr_at(con, "cus_1", t) for t in (start - 1, start, end - 1, end)] == [
        D("80.0000"), D("50.0000"), D("50.0000"), D("80.0000")]
    assert moves(con) == [(T0, "new", "new", D("80.0000"), "si_1"),
                          (start, "discount", "contraction", D("-30.0000"), "si_1"),
                          (end, "discount", "expansion", D("30.0000"), "si_1")]


def test_a_discount_put_on_and_taken_off_within_the_window_is_no_movement(world: World, derive: Derive) -> None:
    """design.md 5: a 10% forever discount put on at 5 February 10:00 and taken off at 10:30 nets, within the
    60-minute window, to no change: no `discount` rows, customer_mrr one level (90.00 from T0), and February's
    bridge has no expansion or contraction."""
    two_items(world)
    world.coupon("co_10", percent_off=10)
    on, off = ts(2024, 2, 5, 10), ts(2024, 2, 5, 10, 30)
    d = world.discount("co_10", on, customer="cus_1", subscription="sub_1")
    world.update("sub_1", on, discounts=[d["id"]])
    world.update("sub_1", off, discounts=[])
    con = derive(world, seen_at=month(3))
    assert moves(con) == [(T0, "new", "new", D("90.0000"), "si_b")]
    assert con.execute("SELECT epoch(valid_from), mrr, valid_to FROM customer_mrr WHERE customer_id = 'cus_1'"
                       ).fetchall() == [(T0, D("90.0000"), None)]
    feb = period(con, dt.date(2024, 2, 1))
    assert (feb["expansion"], feb["contraction"], feb["discount_expansion"], feb["discount_contraction"],
            feb["closing_mrr"]) == (0, 0, 0, 0, 90)


@one_store
def test_a_subscription_discount_on_a_metered_item_and_its_end(world: World, derive: Derive) -> None:
    """design.md 4: a 25% discount for 2 months from T0 on a subscription of 4 seats (40.00) and a metered API item:
    30.00 (`new`); the first usage invoice (80.00, 1 February) adds 80 x 0.75 = 60.00 (`resource_expansion`); on
    1 March the discount ends as the same usage is billed again: +10.00 (seats) and +20.00 (usage), `discount`."""
    base(world).price("price_a", "prod_seat", 1_000)
    world.price("metered", "prod_api", 1, usage_type="metered")
    world.coupon("co_25", percent_off=25, duration="repeating", duration_in_months=2)
    d = world.discount("co_25", T0, customer="cus_1", subscription="sub_1")
    world.subscribe("sub_1", "cus_1", [("si_a", "price_a", 4), ("si_m", "metered", None)], T0, discounts=[d["id"]])
    world.cycle("sub_1", month(1), usage={"si_m": 8_000})
    world.cycle("sub_1", month(2), usage={"si_m": 8_000})
    con = derive(world, seen_at=month(3))
    assert [customer_mrr_at(con, "cus_1", month(n, 1)) for n in range(3)] == [D("30.0000"), D("90.0000"),
                                                                             D("120.0000")]
    assert moves(con) == [(T0, "new", "new", D("30.0000"), "si_a"),
                          (month(1), "resource_expansion", "expansion", D("60.0000"), "si_m"),
                          (month(2), "discount", "expansion", D("10.0000"), "si_a"),
                          (month(2), "discount", "expansion", D("20.0000"), "si_m")]


@one_store
def test_a_graduated_tier_crossed_as_an_amount_off_starts(world: World, derive: Derive) -> None:
    """design.md 4 and 5 (parts of one change, README: quantity part at the discount the item had, then a discount
    part): 5 seats on graduated tiers are 55.00; on 6 February a sixth seat (66.00: 55 + 8 + 3) and a 5.00-off
    forever coupon in one update: 61.00. Rows: seat_expansion +11.00, `discount` -5.00 (together +6.00)."""
    base(world).price("grad", "prod_seat", None, tiers=TIERS, tiers_mode="graduated")
    world.subscribe("sub_1", "cus_1", [("si_1", "grad", 5)], T0)
    world.coupon("co_5", amount_off=500, currency="usd")
    at = month(1, 5)
    d = world.discount("co_5", at, customer="cus_1", subscription="sub_1")
    world.update("sub_1", at, items=[("si_1", "grad", 6)], discounts=[d["id"]])
    con = derive(world, seen_at=month(3))
    assert customer_mrr_at(con, "cus_1", at) == D("61.0000")
    assert moves(con) == [(T0, "new", "new", D("55.0000"), "si_1"),
                          (at, "discount", "contraction", D("-5.0000"), "si_1"),
                          (at, "seat_expansion", "expansion", D("11.0000"), "si_1")]


@one_store
def test_a_full_forever_coupon_from_signup_taken_off_is_new(world: World, derive: Derive) -> None:
    """design.md 4 and 5: 100% off forever from signup: MRR 0, no row at signup. Taken off on 11 February, MRR
    becomes 90.00 for a customer who never had MRR: `new` (the whole delta), not a `discount`."""
    two_items(world)
    world.coupon("co_free", percent_off=100)
    d = world.discount("co_free", T0, customer="cus_1", subscription="sub_1")
    world.objects["subscriptions"]["sub_1"]["discounts"] = [d["id"]]
    world.events[0]["data"]["object"]["discounts"] = [d["id"]]
    world.update("sub_1", month(1, 10), discounts=[])
    con = derive(world, seen_at=month(3))
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == 0
    assert customer_mrr_at(con, "cus_1", month(1, 10)) == D("90.0000")
    assert [(t, m, c, x) for t, m, c, x, _ in moves(con)] == [(month(1, 10), "new", "new", D("90.0000"))]


@one_store
def test_a_restricted_repeating_coupon_ending_moves_only_its_products_item(world: World, derive: Derive) -> None:
    """README (a coupon restricted to some products lowers only their items): 50% for 2 months on the seats alone:
    20.00 + 50.00 = 70.00; its end on 1 March is one `discount` row of +20.00 on si_a, none on si_b."""
    world.coupon("co_seat", percent_off=50, duration="repeating", duration_in_months=2, products=["prod_seat"])
    d = world.discount("co_seat", T0, customer="cus_1", subscription="sub_1")
    two_items(world, discounts=[d["id"]])
    con = derive(world, seen_at=month(3))
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == D("70.0000")
    assert moves(con) == [(T0, "new", "new", D("70.0000"), "si_b"),
                          (month(2), "discount", "expansion", D("20.0000"), "si_a")]


@one_store
def test_a_customer_wide_amount_off_comes_off_each_subscription(world: World, derive: Derive) -> None:
    """README (a customer-wide discount applies to each subscription with no discount of its own): 10.00 off forever
    on the customer comes off each subscription's bill: (90 - 10) + (20 - 10) = 90.00."""
    two_items(world)
    world.product("prod_x", unit_label="seat", family="extra")
    world.price("price_x", "prod_x", 2_000)
    world.coupon("co_off", amount_off=1_000, currency="usd")
    world.objects["customers"]["cus_1"]["discount"] = world.discount("co_off", T0 - DAY, customer="cus_1")
    world.subscribe("sub_2", "cus_1", [("si_x", "price_x", 1)], T0 + 3 * 3600)
    con = derive(world, seen_at=month(2))
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == D("90.0000")


@one_store
def test_a_repeating_discount_ending_after_its_subscription_ended_is_no_movement(world: World, derive: Derive
                                                                                ) -> None:
    """design.md 4 and 5: 20% for 3 months from T0 (72.00); the subscription is canceled on 6 February: a
    cancellation of -72.00 (the discounted MRR); the discount's end on 1 April moves nothing."""
    world.coupon("co_r", percent_off=20, duration="repeating", duration_in_months=3)
    d = world.discount("co_r", T0, customer="cus_1", subscription="sub_1")
    two_items(world, discounts=[d["id"]])
    world.cancel("sub_1", month(1, 5))
    con = derive(world, seen_at=month(5))
    assert [(t, m, c, x) for t, m, c, x, _ in moves(con)] == [
        (T0, "new", "new", D("72.0000")), (month(1, 5), "cancellation", "churn", D("-72.0000"))]
    assert customer_mrr_at(con, "cus_1", month(3, 1)) == 0


@one_store
def test_two_item_percent_discounts_stack_and_one_ends(world: World, derive: Derive) -> None:
    """design.md 4 (item-level discounts apply to that item, multiplied as a subscription's and an item's are): the
    seats (40.00) under 50% forever and 20% for 1 month are 16.00, with the API plan 66.00; the 20% ends on
    1 February: seats 20.00, a `discount` of +4.00 on si_a."""
    two_items(world)
    world.coupon("co_50", percent_off=50)
    world.coupon("co_20", percent_off=20, duration="repeating", duration_in_months=1)
    d1 = world.discount("co_50", T0, customer="cus_1", subscription="sub_1", subscription_item="si_a")
    d2 = world.discount("co_20", T0, customer="cus_1", subscription="sub_1", subscription_item="si_a")
    world.objects["subscriptions"]["sub_1"]["items"]["data"][0]["discounts"] = [d1["id"], d2["id"]]
    world.events[0]["data"]["object"]["items"]["data"][0]["discounts"] = [d1["id"], d2["id"]]
    con = derive(world, seen_at=month(2))
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == D("66.0000")
    assert moves(con) == [(T0, "new", "new", D("66.0000"), "si_b"),
                          (month(1), "discount", "expansion", D("4.0000"), "si_a")]


@one_store
def test_one_coupon_swapped_for_another_is_one_discount_change_per_item(world: World, derive: Derive) -> None:
    """design.md 4 and 5: 10% forever (81.00) replaced by 25% forever in one update on 11 February (67.50): one
    `discount` row per item, seats 36.00 -> 30.00 (-6.00), API 45.00 -> 37.50 (-7.50)."""
    world.coupon("co_10", percent_off=10)
    world.coupon("co_25", percent_off=25)
    d1 = world.discount("co_10", T0, customer="cus_1", subscription="sub_1")
    two_items(world, discounts=[d1["id"]])
    d2 = world.discount("co_25", month(1, 10), customer="cus_1", subscription="sub_1")
    world.update("sub_1", month(1, 10), discounts=[d2["id"]])
    con = derive(world, seen_at=month(3))
    assert customer_mrr_at(con, "cus_1", month(1, 10)) == D("67.5000")
    assert moves(con) == [(T0, "new", "new", D("81.0000"), "si_b"),
                          (month(1, 10), "discount", "contraction", D("-6.0000"), "si_a"),
                          (month(1, 10), "discount", "contraction", D("-7.5000"), "si_b")]


def load_as_an_incremental_sync(w: World, con: duckdb.DuckDBPyConnection, *, seen_at: int, events: bool | int) -> None:
    """``w`` as an incremental sync at ``seen_at`` leaves it: its objects and events, and the discounts their owners
    seen then no longer have flagged deleted (no full listing)."""
    w.load(con, seen_at=seen_at, events=events)
    at = dt.datetime.fromtimestamp(seen_at, tz=dt.UTC)
    mark_unlisted_discounts(con, w.account_id, at, at, whole=False)


def test_an_item_discount_taken_off_ends_at_the_update_before_any_full_sync_flags_it(world: World,
                                                                                      derive: Derive) -> None:
    """README (a discount taken off one item inside the event window ends at the subscription update that took it
    off) and design.md 4: 50% forever on the seats (40.00 -> 20.00; 70.00 in all) taken off si_a by an update on
    11 February, the store as an incremental sync leaves it (no full listing; the item seen without the discount):
    90.00 from then, a `discount` expansion of +20.00 on si_a, as for a subscription's discount taken off the same
    way."""
    two_items(world)
    world.coupon("co_50", percent_off=50)
    d = world.discount("co_50", T0, customer="cus_1", subscription="sub_1", subscription_item="si_a")
    world.objects["subscriptions"]["sub_1"]["items"]["data"][0]["discounts"] = [d["id"]]
    world.events[0]["data"]["object"]["items"]["data"][0]["discounts"] = [d["id"]]
    take_item_discounts_off(world, "sub_1", month(1, 10), "si_a")
    con = derive(world, seen_at=month(3), load=load_as_an_incremental_sync)
    assert con.execute("SELECT deleted FROM discounts WHERE id = ?", [d["id"]]).fetchall() == [(True,)]
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == D("70.0000")
    assert moves(con) == [(T0, "new", "new", D("70.0000"), "si_b"),
                          (month(1, 10), "discount", "expansion", D("20.0000"), "si_a")]
    assert customer_mrr_at(con, "cus_1", month(1, 10)) == D("90.0000")


@pytest.mark.parametrize("scope", ["subscription", "item"])
@pytest.mark.parametrize("change", ["seats", "plan"])
@one_store
def test_a_change_of_an_item_an_amount_off_covered_whole(world: World, derive: Derive, scope: str, change: str
                                                          ) -> None:
    """design.md 5 (quantity up on a seat unit: seat_expansion; price changed: upgrade) under a fixed amount off
    that took all of the item's MRR. 3 seats at 10.00 under 50.00 off forever (on their subscription, or on the
    item): 0.00; an API plan (50.00) on another subscription keeps the customer. On 11 February 8 seats (80.00 less
    50.00: +30.00) or the same 3 seats on a 25.00 plan (75.00 less 50.00: +25.00); on 11 March 4 seats, or the 3 on
    the 10.00 plan again (0.00 again: -30.00 or -25.00). The first change's parts at the discount the item had are
    both 0.00: what the amount off leaves joins the part larger before discounts, the seats' or the price's (it went
    to the plan part whatever changed: the seats were an `upgrade`)."""
    base(world).coupon("co_off", amount_off=5_000, currency="usd", duration="forever")
    world.price("price_s", "prod_seat", 1_000)
    world.price("price_p", "prod_seat", 2_500)
    world.price("price_b", "prod_api", 5_000)
    d = world.discount("co_off", T0, customer="cus_1", subscription="sub_1",
                       **({"subscription_item": "si_s"} if scope == "item" else {}))
    world.subscribe("sub_1", "cus_1", [("si_s", "price_s", 3)], T0, discounts=[d["id"]] if scope == "subscription" else [])
    if scope == "item":
        world.objects["subscriptions"]["sub_1"]["items"]["data"][0]["discounts"] = [d["id"]]
        world.events[-1]["data"]["object"]["items"]["data"][0]["discounts"] = [d["id"]]
    world.subscribe("sub_2", "cus_1", [("si_b", "price_b", 1)], T0 + 60)
    world.update("sub_1", month(1, 10), items=[("si_s", "price_s", 8) if change == "seats" else ("si_s", "price_p", 3)])
    world.update("sub_1", month(2, 10), items=[("si_s", "price_s", 4 if change == "seats" else 3)])
    con = derive(world, seen_at=month(3))
    first = ("seat_expansion", D("30.0000")) if change == "seats" else ("upgrade", D("25.0000"))
    last = ("seat_contraction", D("-30.0000")) if change == "seats" else ("downgrade", D("-25.0000"))
    assert moves(con) == [(T0, "new", "new", D("50.0000"), "si_b"),  # (dated at the window's first change)
                          (month(1, 10), first[0], "expansion", first[1], "si_s"),
                          (month(2, 10), last[0], "contraction", last[1], "si_s")]


@pytest.mark.parametrize("currency", ["eur", "usd"])
def test_a_shared_amount_off_whose_shares_the_rate_makes_exact_halves(store: duckdb.DuckDBPyConnection,
                                                                      currency: str) -> None:
    """design.md 4 (an amount off shared among a subscription's items in proportion to their MRR) and 5 (a discount
    starting or ending is a `discount` movement of each item; rounded at 4, half away from zero). Three eur items
    of 35.00, 2 x 20.00 and 50 x 0.25 (87.50) at 1.3349 usd; 13.50 eur off forever from 6 February, taken off on 6
    March. The shares are 5.40, 6.1714285... and 1.9285714...: at the rate 7.20846, 8.23824 and 2.57445 exactly
    (1.3349 is 7 x 0.1907), so -7.2085, -8.2382 and -2.5745, which add up to the customer's -18.02115 rounded,
    -18.0212 (the cut shares gave -8.2383 and -2.5744, the sum the same). Then the same back. In usd at 1 (the
    control): -5.4000, -6.1714, -1.9286, no exact half."""
    from conftest import derive_in

    w = World()
    rate = 1.3349 if currency == "eur" else 1.0
    w.customer("cus_1", currency=currency)
    w.product("prod_seat", unit_label="seat", family="core")
    w.price("price_l", "prod_seat", 3_500, currency=currency)
    w.price("price_m", "prod_seat", 2_000, currency=currency)
    w.price("price_f", "prod_seat", 25, currency=currency)
    if currency == "eur":
        w.fx_rates = [(dt.datetime.fromtimestamp(T0, tz=dt.UTC).date().isoformat(), "eur", rate)]
    w.coupon("co_off", amount_off=1_350, currency=currency, duration="forever")
    w.subscribe("sub_1", "cus_1", [("si_l", "price_l", 1), ("si_m", "price_m", 2), ("si_f", "price_f", 50)], T0)
    d = w.discount("co_off", month(1, 5), customer="cus_1", subscription="sub_1")
    w.update("sub_1", month(1, 5), discounts=[d["id"]])
    w.update("sub_1", month(2, 5), discounts=[])
    con = derive_in(store)(w, seen_at=month(3))
    parts = ([D("-7.2085"), D("-8.2382"), D("-2.5745")] if currency == "eur"
             else [D("-5.4000"), D("-6.1714"), D("-1.9286")])
    on = [(month(1, 5), "discount", "contraction", p, item) for p, item in zip(parts, ("si_l", "si_m", "si_f"),
                                                                                strict=True)]
    off = [(month(2, 5), "discount", "expansion", -p, item) for p, item in zip(parts, ("si_l", "si_m", "si_f"),
                                                                                 strict=True)]
    assert [m for m in moves(con) if m[1] == "discount"] == sorted(on, key=lambda m: m[4]) + sorted(off, key=lambda m: m[4])
    # (each change's rows add up to the customer's change, rounded once)
    total = D("-18.0212") if currency == "eur" else D("-13.5000")
    assert customer_mrr_at(con, "cus_1", month(1, 6)) - customer_mrr_at(con, "cus_1", month(1, 4)) == total
    assert sum(parts) == total


@pytest.mark.parametrize("currency", ["eur", "usd"])
def test_a_plan_switch_off_an_items_own_amount_off_whose_parts_the_rate_makes_exact_halves(
        store: duckdb.DuckDBPyConnection, currency: str) -> None:
    """design.md 5 (a plan switch onto a new item of the same family: its price's change a `downgrade`, the discount
    that stayed on the old item a `discount` part) with README's rule that the plan part is valued at the discount
    the item had. 2 x 32.20 eur (64.40) under its own 22.50 off (41.90), switched on 11 February to 2 x 13.80
    (27.60, no discount), at 1.0423 usd. The plan part is -36.80 x 41.90 / 64.40 = -23.9428571..., the discount part
    the rest, +9.6428571...; at the rate exactly -24.95564 and +10.05075 (1.0423 is 7 x 0.1489): +10.0508 rounded,
    and the customer's -14.90489, -14.9049, leaves -0.0001 for the larger row, -24.9557. (Held through the cut
    discount factor, the discount part was 10.0507499988: 10.0507 and -24.9556.) In usd at 1, the control: -23.9429
    and +9.6429."""
    from conftest import derive_in

    w = World()
    w.customer("cus_1", currency=currency)
    w.product("prod_seat", unit_label="seat", family="core")
    w.price("price_g", "prod_seat", 3_220, currency=currency)
    w.price("price_t", "prod_seat", 1_380, currency=currency)
    if currency == "eur":
        w.fx_rates = [(dt.datetime.fromtimestamp(T0, tz=dt.UTC).date().isoformat(), "eur", 1.0423)]
    w.coupon("co_item", amount_off=2_250, currency=currency, duration="forever")
    d = w.discount("co_item", T0, customer="cus_1", subscription="sub_1", subscription_item="si_g")
    w.subscribe("sub_1", "cus_1", [("si_g", "price_g", 2)], T0)
    w.objects["subscriptions"]["sub_1"]["items"]["data"][0]["discounts"] = [d["id"]]
    w.events[-1]["data"]["object"]["items"]["data"][0]["discounts"] = [d["id"]]
    w.update("sub_1", month(1, 10), items=[("si_t", "price_t", 2)])
    con = derive_in(store)(w, seen_at=month(3))
    expected = ([("discount", D("10.0508")), ("downgrade", D("-24.9557"))] if currency == "eur"
                else [("discount", D("9.6429")), ("downgrade", D("-23.9429"))])
    assert [(m[1], m[3]) for m in moves(con) if m[0] == month(1, 10)] == expected
    total = D("-14.9049") if currency == "eur" else D("-14.3000")
    assert customer_mrr_at(con, "cus_1", month(1, 11)) - customer_mrr_at(con, "cus_1", month(1, 9)) == total
    assert sum(v for _, v in expected) == total
