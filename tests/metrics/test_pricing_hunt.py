"""An item's MRR where its price is unusual (design.md 4), seen through customer_mrr, mrr_movements and the bridge,
each answer worked out by hand first: metered usage over periods of different lengths, usage falling to zero and
coming back, two-weekly and quarterly meters, tiered and packed meters, a meter removed and added back, usage while
past_due and after the subscription ended, the `include_metered` setting both ways; tax-inclusive prices over a tax
rate change, several tax amounts on a line, the tax share taken from the customer's other invoices; tiers with
sub-cent decimal amounts at and past a bound, tiers with no bound only, volume tiers whose seats lower MRR in a plan
switch; packs at exact multiples; a currency option's own tiers in a plan switch; switches between week, month, year
and day prices with interval counts at equal MRR; an item at quantity 0; a billing cycle anchor reset; prorations,
a one-time price and credit notes; plan and quantity parts that round and must still add up.

Where design.md is silent the choices README.md ("Metric definitions"), docs/internals.md ("Money and rounding") and
stripe_churn/metrics/NOTES.md record are followed: metered usage counts from the invoice that bills a whole interval
(a month from its anchor, whatever its days); usage falling to zero on a customer's only MRR is a cancellation
(NOTES: left as design.md 5's table reads); a metered item added at 0 whose usage comes later moves by usage, not as a cross_sell
(NOTES, 2026-12-06); a tax-inclusive licensed price loses the share of tax of its latest invoice line, so a changed
rate restates the item, while metered usage loses the tax of the invoice that bills it; levels round once per
customer at 4 decimals half away from zero, and a transition's rounding remainder goes to its largest part.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import duckdb
import pytest
from builders import DAY, Obj, World, add_months, ts
from conftest import OneStore, customer_mrr_at
from test_bridge import assert_bridge_adds_up
from test_classifier import check_invariants
from test_mrr_rules import T0, month
from test_rules_hunt import moves

from stripe_churn.metrics import queries

Derive = Callable[..., duckdb.DuckDBPyConnection]
D = Decimal
MINUTE = 60

# The tests marked @one_store are each an account of one store, derived once per settings (conftest.OneStore): their
# queries see their own account's rows alone. The bridge sums a whole store: its test keeps a store of its own.
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()


# (every account of the shared store loads the same exchange rates: fx_rates is one table for a store)
EUR_RATE = ("2023-12-01", "eur", 1.10)


def base(w: World, currency: str = "usd") -> World:
    """cus_1; family core (seats, prod_seat), family api (prod_api: unit "api call", a resource) with a metered
    price ``meter`` (1 cent a call); a 10.00 seat ``seat``; the euro at 1.10."""
    w.fx_rates.append(EUR_RATE)
    w.customer("cus_1", currency=currency)
    w.product("prod_seat", unit_label="seat", family="core")
    w.product("prod_api", unit_label="api call", family="api")
    w.price("seat", "prod_seat", 1_000, currency=currency)
    w.price("meter", "prod_api", 1, usage_type="metered", currency=currency)
    return w


def line_of(inv: Obj, item_id: str) -> Obj:
    """The one line of ``inv`` that bills subscription item ``item_id`` (not a proration)."""
    (line,) = [ln for ln in inv["lines"]["data"]
               if (ln["parent"]["subscription_item_details"] or {}).get("subscription_item") == item_id
               and not ln["parent"]["subscription_item_details"]["proration"]]
    return line


def item_of(w: World, sid: str, item_id: str) -> Obj:
    return next(i for i in w.objects["subscriptions"][sid]["items"]["data"] if i["id"] == item_id)


def taxes(line: Obj, *amounts: int, behavior: str = "inclusive") -> None:
    """Tax amounts on an invoice line, as Stripe lists them (one entry per tax rate)."""
    line["taxes"] = [{"amount": a, "tax_behavior": behavior, "taxability_reason": "standard_rated",
                      "type": "tax_rate_details"} for a in amounts]


def vat(w: World, inv: Obj, percent: int) -> None:
    """Inclusive VAT at ``percent`` on every charging line of ``inv`` whose price is tax-inclusive: amount x p / (100 +
    p), as Stripe works it out on a price that includes tax."""
    for line in inv["lines"]["data"]:
        price = w.objects["prices"][line["pricing"]["price_details"]["price"]]
        if line["amount"] > 0 and price["tax_behavior"] == "inclusive":
            taxes(line, line["amount"] * percent // (100 + percent))


def invoice_at(w: World, at: int, customer: str = "cus_1") -> Obj:
    (inv,) = [i for i in w.objects["invoices"].values() if i["created"] == at and i["customer"] == customer]
    return inv


def quality(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in con.execute("SELECT kind, object_id FROM data_quality ORDER BY ALL").fetchall()]


def levels(con: duckdb.DuckDBPyConnection, customer: str, *moments: int) -> list[Decimal]:
    return [customer_mrr_at(con, customer, t) for t in moments]


# --- metered usage --------------------------------------------------------------------------------------------------

@one_store
def test_usage_periods_of_29_31_and_30_days_from_an_anchor_on_the_31st(world: World, derive: Derive) -> None:
    """design.md 4 (metered: the amount of the item's last invoiced full period, normalised; a month counts x 1 however
    many days it has). sub_1 starts on 31 January (its anchor, day 31) with a 10.00 seat and a meter. Stripe's monthly
    periods then run 31 Jan - 29 Feb (29 days), 29 Feb - 31 Mar (31), 31 Mar - 30 Apr (30): each is a full period.
    Usage 29.00 billed on 29 February: 39.00 (resource_expansion +29.00); 62.00 on 31 March: 72.00 (+33.00); 45.00 on
    30 April: 55.00 (resource_contraction -17.00). Never per day: 29.00 for 29 days is 29.00 a month."""
    base(world)
    start = ts(2024, 1, 31)
    world.subscribe("sub_1", "cus_1", [("si_s", "seat", 1), ("si_m", "meter", None)], start)
    ends = [ts(2024, 2, 29), ts(2024, 3, 31), ts(2024, 4, 30)]
    for at, amount in zip(ends, (2_900, 6_200, 4_500), strict=True):
        world.cycle("sub_1", at, usage={"si_m": amount})
    # (the builder counts a month back from 30 April to 30 March; Stripe's period starts at the anchor's 31 March)
    line_of(invoice_at(world, ends[2]), "si_m")["period"]["start"] = ends[1]
    assert [line_of(invoice_at(world, t), "si_m")["period"]["start"] for t in ends] == [start, ends[0], ends[1]]
    con = derive(world, seen_at=ts(2024, 5, 5))
    assert levels(con, "cus_1", start + DAY, ends[0] - 1, ends[0], ends[1], ends[2]) == [
        D("10.0000"), D("10.0000"), D("39.0000"), D("72.0000"), D("55.0000")]
    assert moves(con) == [(start, "new", "new", D("10.0000"), "si_s"),
                          (ends[0], "resource_expansion", "expansion", D("29.0000"), "si_m"),
                          (ends[1], "resource_expansion", "expansion", D("33.0000"), "si_m"),
                          (ends[2], "resource_contraction", "contraction", D("-17.0000"), "si_m")]
    check_invariants(con)


@one_store
def test_a_meter_added_two_days_into_a_month_has_no_full_period_until_the_next(world: World,
                                                                              derive: Derive) -> None:
    """design.md 4 (metered: the amount of the item's last invoiced FULL period, zero before it). A 10.00 seat from
    1 January, anchored on the 1st; a meter added on 3 January (no proration). 1 February's renewal bills the meter's
    usage of 3 January - 1 February (29.00): 29 days of a 31-day period, not a full period: nothing. 1 March's bills
    February, a full period (40.00): resource_expansion +40.00 (the item held at 0 since 3 January), MRR 50.00."""
    base(world)
    world.subscribe("sub_1", "cus_1", [("si_s", "seat", 1)], T0)
    world.update("sub_1", month(0, 2), items=[("si_s", "seat", 1), ("si_m", "meter", None)], prorate=False)
    world.cycle("sub_1", month(1), usage={"si_m": 2_900})
    world.cycle("sub_1", month(2), usage={"si_m": 4_000})
    assert line_of(invoice_at(world, month(1)), "si_m")["period"] == {"start": month(0, 2), "end": month(1)}
    con = derive(world, seen_at=month(2, 5))
    assert levels(con, "cus_1", month(0, 3), month(1, 1), month(2, 1)) == [D("10.0000"), D("10.0000"),
                                                                         D("50.0000")]
    assert moves(con) == [(T0, "new", "new", D("10.0000"), "si_s"),
                          (month(2), "resource_expansion", "expansion", D("40.0000"), "si_m")]


@one_store
def test_the_last_full_periods_usage_billed_after_the_subscription_ended(world: World, derive: Derive) -> None:
    """design.md 4 (metered MRR takes effect when its invoice is created; canceled counts zero from the transition; a
    cancel_at_period_end churns at the period end). A 10.00 seat and a meter from T0; January's usage 40.00 billed 1
    February: 50.00. Set on 15 February to cancel at the period end (1 March, feedback `unused`); Stripe's final
    invoice, 30 minutes after the end, bills February's whole period (70.00). The subscription counts zero from 1
    March, so that usage brings nothing: one `cancellation` of -50.00 (what the customer had; the main item the
    meter's 40.00), voluntary, and nothing after."""
    base(world)
    world.subscribe("sub_1", "cus_1", [("si_s", "seat", 1), ("si_m", "meter", None)], T0)
    world.cycle("sub_1", month(1), usage={"si_m": 4_000})
    meter = copy.deepcopy(item_of(world, "sub_1", "si_m"))
    world.cancel("sub_1", month(1, 14), ended_at=month(2), feedback="unused")
    final = world._line("sub_1", meter, month(1), month(2), amount=7_000, quantity=1)
    world._invoice("sub_1", month(2) + 30 * MINUTE, "subscription_cycle", [final])
    con = derive(world, seen_at=month(2, 5))
    assert levels(con, "cus_1", month(1, 20), month(2) - 1, month(2), month(2, 1)) == [
        D("50.0000"), D("50.0000"), D(0), D(0)]
    assert moves(con) == [(T0, "new", "new", D("10.0000"), "si_s"),
                          (month(1), "resource_expansion", "expansion", D("40.0000"), "si_m"),
                          (month(2), "cancellation", "churn", D("-50.0000"), "si_m")]
    assert con.execute("SELECT churn_type, cancellation_feedback FROM mrr_movements WHERE movement = 'cancellation'"
                       ).fetchall() == [("voluntary", "unused")]


@one_store
def test_a_licensed_and_a_metered_item_of_one_family_then_usage_falls_to_zero_and_comes_back(
        world: World, derive: Derive) -> None:
    """design.md 4 (metered) and 5 (an item of a family the customer keeps removed: by its unit; M(B) = 0 is a
    cancellation, M(A) = 0 after MRR is a reactivation). Family api holds a licensed plan (api_base 20.00, a product
    with no unit label: licensed, so a seat) and a meter (unit "api call": a resource), the customer's only family.
    - T0: `new` +20.00 (api_base);
    - 1 Feb, usage 30.00: resource_expansion +30.00 (the family was already held);
    - 10 Mar, api_base removed, the meter (30.00) keeps the family: seat_contraction -20.00, not downgrade;
    - 1 Apr, March's usage 0.00 (a full period billed at nothing): M(B) = 0 while the subscription stays active:
      `cancellation` -30.00, voluntary (NOTES: usage falling to zero is a cancellation, design.md 5's table);
    - 1 May, April's usage 12.50: `reactivation` +12.50."""
    base(world)
    world.product("prod_api_plan", family="api")
    world.price("api_base", "prod_api_plan", 2_000)
    world.subscribe("sub_1", "cus_1", [("si_l", "api_base", 1), ("si_m", "meter", None)], T0)
    world.cycle("sub_1", month(1), usage={"si_m": 3_000})
    world.update("sub_1", month(2, 9), items=[("si_m", "meter", None)])
    world.cycle("sub_1", month(3), usage={"si_m": 0})
    world.cycle("sub_1", month(4), usage={"si_m": 1_250})
    con = derive(world, seen_at=month(4, 5))
    assert levels(con, "cus_1", month(1, 1), month(2, 10), month(3, 1), month(4, 1)) == [
        D("50.0000"), D("30.0000"), D(0), D("12.5000")]
    assert moves(con) == [(T0, "new", "new", D("20.0000"), "si_l"),
                          (month(1), "resource_expansion", "expansion", D("30.0000"), "si_m"),
                          (month(2, 9), "seat_contraction", "contraction", D("-20.0000"), "si_l"),
                          (month(3), "cancellation", "churn", D("-30.0000"), "si_m"),
                          (month(4), "reactivation", "reactivation", D("12.5000"), "si_m")]
    assert con.execute("SELECT churn_type FROM mrr_movements WHERE movement = 'cancellation'").fetchall() == [
        ("voluntary",)]
    check_invariants(con)


@one_store
def test_a_meter_removed_and_added_back_as_a_new_item(world: World, derive: Derive) -> None:
    """design.md 4 (metered: zero before the item's first usage invoice, the last FULL period's amount) and 5. A
    10.00 seat (core) and meter si_m1 (api) from T0.
    - 1 Feb, usage 50.00: resource_expansion +50.00;
    - 10 Mar, si_m1 removed (its event): the api family leaves, the customer stays: `downgrade` -50.00;
    - 1 Apr, the renewal bills si_m1's last usage (1-10 March, 30.00): the item is gone, nothing;
    - 15 Apr, the same metered price added back as a new item si_m2: MRR 0 until its first usage invoice, no row;
    - 1 May, si_m2's usage from 15 April (a part period, 20.00): no full period yet, nothing;
    - 1 Jun, May's usage 60.00 (a full period): si_m2 was present at 0 in A, one component with its B row:
      resource_expansion +60.00 (as NOTES records for a meter added mid-period), not a cross_sell."""
    base(world)
    world.subscribe("sub_1", "cus_1", [("si_s", "seat", 1), ("si_m1", "meter", None)], T0)
    world.cycle("sub_1", month(1), usage={"si_m1": 5_000})
    world.cycle("sub_1", month(2))
    old = copy.deepcopy(item_of(world, "sub_1", "si_m1"))
    world.update("sub_1", month(2, 9), items=[("si_s", "seat", 1)], prorate=False)
    renewal = world.cycle("sub_1", month(3))
    late = world._line("sub_1", old, month(2), month(2, 9), amount=3_000, quantity=1)
    late["invoice"] = renewal["id"]
    renewal["lines"]["data"].append(late)
    world.update("sub_1", month(3, 14), items=[("si_s", "seat", 1), ("si_m2", "meter", None)], prorate=False)
    world.cycle("sub_1", month(4), usage={"si_m2": 2_000})
    world.cycle("sub_1", month(5), usage={"si_m2": 6_000})
    assert line_of(invoice_at(world, month(4)), "si_m2")["period"]["start"] == month(3, 14)
    con = derive(world, seen_at=month(5, 5))
    assert levels(con, "cus_1", month(2, 1), month(2, 10), month(3, 1), month(4, 1), month(5, 1)) == [
        D("60.0000"), D("10.0000"), D("10.0000"), D("10.0000"), D("70.0000")]
    assert moves(con) == [(T0, "new", "new", D("10.0000"), "si_s"),
                          (month(1), "resource_expansion", "expansion", D("50.0000"), "si_m1"),
                          (month(2, 9), "downgrade", "contraction", D("-50.0000"), "si_m1"),
                          (month(5), "resource_expansion", "expansion", D("60.0000"), "si_m2")]
    check_invariants(con)


@one_store
def test_a_two_weekly_meter_and_a_quarterly_meter_with_a_part_quarter(world: World, derive: Derive) -> None:
    """design.md 4 (metered, normalised: week x 52/12, each / interval_count; month / interval_count). One customer:
    - sub_w from Monday 1 January, metered every 2 weeks: 14.00 for 1-15 January billed on the 15th, 14 x 52 / 24 =
      30.3333... (`new` 30.3333); 21.00 for 15-29 January: 21 x 52 / 24 = 45.5 (resource_expansion +15.1667 =
      45.5000 - 30.3333, the customer's levels rounded once at 4 decimals);
    - sub_q from 15 February, metered every 3 months with its anchor on 1 April: the first invoice (1 April) bills
      15 February - 1 April (150.00), no whole quarter: nothing; 1 July bills April-June (300.00): 300 / 3 = 100.00.
      Its item was held at 0 in the api family: resource_expansion +100.00, MRR 145.5000."""
    base(world)
    world.price("meter_2w", "prod_api", None, usage_type="metered", interval="week", interval_count=2)
    world.price("meter_q", "prod_api", None, usage_type="metered", interval="month", interval_count=3)
    world.subscribe("sub_w", "cus_1", [("m_w", "meter_2w", None)], T0)
    world.cycle("sub_w", T0 + 14 * DAY, usage={"m_w": 1_400})
    world.cycle("sub_w", T0 + 28 * DAY, usage={"m_w": 2_100})
    world.subscribe("sub_q", "cus_1", [("m_q", "meter_q", None)], ts(2024, 2, 15))
    world.cycle("sub_q", ts(2024, 4, 1), usage={"m_q": 15_000})
    world.cycle("sub_q", ts(2024, 7, 1), usage={"m_q": 30_000})
    assert line_of(invoice_at(world, ts(2024, 4, 1)), "m_q")["period"]["start"] == ts(2024, 2, 15)
    con = derive(world, seen_at=ts(2024, 7, 5))
    assert levels(con, "cus_1", T0 + 14 * DAY - 1, T0 + 14 * DAY, T0 + 28 * DAY, ts(2024, 4, 2),
                  ts(2024, 7, 1)) == [D(0), D("30.3333"), D("45.5000"), D("45.5000"), D("145.5000")]
    assert moves(con) == [(T0 + 14 * DAY, "new", "new", D("30.3333"), "m_w"),
                          (T0 + 28 * DAY, "resource_expansion", "expansion", D("15.1667"), "m_w"),
                          (ts(2024, 7, 1), "resource_expansion", "expansion", D("100.0000"), "m_q")]


@one_store
def test_tiered_and_packed_meters_count_the_amount_their_invoices_bill(world: World, derive: Derive) -> None:
    """design.md 4: a metered item's MRR is the amount of its last full period's invoice line, whatever the price's
    tiers or transform_quantity (Stripe works the amount out from the usage). Three customers, usage billed on 1
    February and 1 March (the line's quantity is the usage, its amount the price's):
    - graduated (first 1,000 calls at 0.05 + 10.00 flat, then 0.04): 1,500 calls = 50 + 10 + 20 = 80.00 (`new`),
      then exactly 1,000 (the first tier's up_to) = 60.00: resource_contraction -20.00;
    - volume (up to 1,000 at 0.05, then 0.03 a call): 1,500 = 45.00 (`new`), then 1,000 = 50.00: fewer calls, more
      money: resource_expansion +5.00 (rows are labelled by the sign of their change, as test_classifier's invariant
      holds for every row);
    - per 1,000 calls at 2.00, rounded up (transform_quantity): 12,345 calls = 13 x 2.00 = 26.00 (`new`), then
      12,000 (an exact multiple) = 12 x 2.00 = 24.00: resource_contraction -2.00."""
    base(world)
    world.price("m_grad", "prod_api", None, usage_type="metered", tiers_mode="graduated",
                tiers=[{"up_to": 1000, "unit_amount": 5, "flat_amount": 1_000}, {"up_to": None, "unit_amount": 4}])
    world.price("m_vol", "prod_api", None, usage_type="metered", tiers_mode="volume",
                tiers=[{"up_to": 1000, "unit_amount": 5}, {"up_to": None, "unit_amount": 3}])
    world.price("m_pack", "prod_api", 200, usage_type="metered", transform_quantity={"divide_by": 1000, "round": "up"})
    usage = {"grad": ((1_500, 8_000), (1_000, 6_000)), "vol": ((1_500, 4_500), (1_000, 5_000)),
             "pack": ((12_345, 2_600), (12_000, 2_400))}
    for kind, billed in usage.items():
        world.customer(f"c_{kind}")
        world.subscribe(f"s_{kind}", f"c_{kind}", [(f"i_{kind}", f"m_{kind}", None)], T0)
        for n, (calls, amount) in enumerate(billed, start=1):
            inv = world.cycle(f"s_{kind}", month(n), usage={f"i_{kind}": amount})
            line_of(inv, f"i_{kind}")["quantity"] = calls
    con = derive(world, seen_at=month(2, 5))
    assert moves(con, "c_grad") == [(month(1), "new", "new", D("80.0000"), "i_grad"),
                                    (month(2), "resource_contraction", "contraction", D("-20.0000"), "i_grad")]
    assert moves(con, "c_vol") == [(month(1), "new", "new", D("45.0000"), "i_vol"),
                                   (month(2), "resource_expansion", "expansion", D("5.0000"), "i_vol")]
    assert moves(con, "c_pack") == [(month(1), "new", "new", D("26.0000"), "i_pack"),
                                    (month(2), "resource_contraction", "contraction", D("-2.0000"), "i_pack")]


@one_store
def test_a_meter_moved_in_place_to_another_metered_price_keeps_its_last_full_period(world: World,
                                                                                   derive: Derive) -> None:
    """design.md 4 (metered: the amount of the ITEM's last invoiced full period, from that invoice on) and README (a
    metered item's change at the same price is usage, resource_*). A 10.00 seat and si_m on `meter` from T0; usage
    50.00 billed 1 February (resource_expansion +50.00). On 15 February si_m is moved, same item id, to `meter_b`
    (another metered price): its last full period is still January's, so MRR stays 60.00 and the switch is no row.
    1 March bills two part periods (1-15 February at meter, 15 February - 1 March at meter_b): nothing. 1 April bills
    March at meter_b (80.00): the item's change is at one price (meter_b before and after), resource_expansion
    +30.00. (Read as the switch's effect, an upgrade +30.00; the rows README describes are per change, and this one's
    price did not change.)"""
    base(world)
    world.price("meter_b", "prod_api", 2, usage_type="metered")
    world.subscribe("sub_1", "cus_1", [("si_s", "seat", 1), ("si_m", "meter", None)], T0)
    world.cycle("sub_1", month(1), usage={"si_m": 5_000})
    old = copy.deepcopy(item_of(world, "sub_1", "si_m"))
    world.update("sub_1", month(1, 14), items=[("si_s", "seat", 1), ("si_m", "meter_b", None)], prorate=False)
    march = world.cycle("sub_1", month(2), usage={"si_m": 3_500})
    line_of(march, "si_m")["period"]["start"] = month(1, 14)
    part = world._line("sub_1", old, month(1), month(1, 14), amount=2_000, quantity=1)
    part["invoice"] = march["id"]
    march["lines"]["data"].append(part)
    world.cycle("sub_1", month(3), usage={"si_m": 8_000})
    con = derive(world, seen_at=month(3, 5))
    assert levels(con, "cus_1", month(1, 1), month(1, 15), month(2, 1), month(3, 1)) == [
        D("60.0000"), D("60.0000"), D("60.0000"), D("90.0000")]
    assert moves(con) == [(T0, "new", "new", D("10.0000"), "si_s"),
                          (month(1), "resource_expansion", "expansion", D("50.0000"), "si_m"),
                          (month(3), "resource_expansion", "expansion", D("30.0000"), "si_m")]


@pytest.mark.parametrize("include_metered", [True, False], ids=["metered-included", "metered-excluded"])
@one_store
def test_a_meter_switched_to_a_flat_price_under_both_values_of_include_metered(world: World, derive: Derive,
                                                                               include_metered: bool) -> None:
    """design.md 4 (metered usage counts; `include_metered`, README's rule setting, excludes it) and 5 (a removed
    and an added item of one family are a plan switch; README: metered to flat is a plan part). 2 seats (20.00) and
    a meter (api) from T0; usage 30.00 billed 1 February, 45.00 on 1 March; on 10 March the meter is replaced by a
    new item on api_flat (50.00 a month, family api).
    - included: resource_expansion +30.00 and +15.00, then the switch: `upgrade` +5.00 (50 - 45); MRR 20, 50, 65, 70;
    - excluded: the meter counts 0 throughout, so its invoices move nothing; the switch pairs the meter (0) with
      api_flat: `upgrade` +50.00; MRR 20 until 10 March, then 70."""
    base(world)
    world.product("prod_api_flat", family="api")
    world.price("api_flat", "prod_api_flat", 5_000)
    world.subscribe("sub_1", "cus_1", [("si_c", "seat", 2), ("si_m", "meter", None)], T0)
    world.cycle("sub_1", month(1), usage={"si_m": 3_000})
    world.cycle("sub_1", month(2), usage={"si_m": 4_500})
    world.update("sub_1", month(2, 9), items=[("si_c", "seat", 2), ("si_f", "api_flat", 1)])
    con = derive(world, seen_at=month(2, 20), **({} if include_metered else {"include_metered": False}))
    at = (month(1, 1), month(2, 1), month(2, 10))
    if include_metered:
        assert levels(con, "cus_1", *at) == [D("50.0000"), D("65.0000"), D("70.0000")]
        assert moves(con)[1:] == [(month(1), "resource_expansion", "expansion", D("30.0000"), "si_m"),
                                  (month(2), "resource_expansion", "expansion", D("15.0000"), "si_m"),
                                  (month(2, 9), "upgrade", "expansion", D("5.0000"), "si_f")]
    else:
        assert levels(con, "cus_1", *at) == [D("20.0000"), D("20.0000"), D("70.0000")]
        assert moves(con)[1:] == [(month(2, 9), "upgrade", "expansion", D("50.0000"), "si_f")]
    assert moves(con)[0] == (T0, "new", "new", D("20.0000"), "si_c")
    check_invariants(con)


@pytest.mark.parametrize("past_due_counts", [True, False], ids=["past-due-counts", "past-due-zero"])
@one_store
def test_usage_billed_while_past_due(world: World, derive: Derive, past_due_counts: bool) -> None:
    """design.md 4 (`past_due` counts, a setting; metered usage takes effect when its invoice is created). 2 seats
    (20.00) and a meter from T0; usage 30.00 billed 1 February (50.00); past_due from 3 February; February's usage
    80.00 billed on 1 March while past_due; paid (active) on 4 March.
    - past_due counts: resource_expansion +30.00 on 1 Feb and +50.00 on 1 Mar (the invoice is the change, whatever
      the status); nothing at the status changes;
    - past_due counts zero: `cancellation` -50.00 on 3 Feb, involuntary (README/NOTES: a past_due churn under this
      setting is involuntary); nothing on 1 Mar (still zero); `reactivation` +100.00 on 4 March (20 + 80)."""
    base(world)
    world.subscribe("sub_1", "cus_1", [("si_c", "seat", 2), ("si_m", "meter", None)], T0)
    world.cycle("sub_1", month(1), usage={"si_m": 3_000})
    world.update("sub_1", month(1, 2), status="past_due")
    world.cycle("sub_1", month(2), usage={"si_m": 8_000})
    world.update("sub_1", month(2, 3), status="active")
    con = derive(world, seen_at=month(2, 10), **({} if past_due_counts else {"past_due_counts": False}))
    if past_due_counts:
        assert levels(con, "cus_1", month(1, 5), month(2, 1), month(2, 5)) == [D("50.0000"), D("100.0000"),
                                                                              D("100.0000")]
        assert moves(con)[1:] == [(month(1), "resource_expansion", "expansion", D("30.0000"), "si_m"),
                                  (month(2), "resource_expansion", "expansion", D("50.0000"), "si_m")]
    else:
        assert levels(con, "cus_1", month(1, 5), month(2, 1), month(2, 5)) == [D(0), D(0), D("100.0000")]
        assert moves(con)[1:] == [(month(1), "resource_expansion", "expansion", D("30.0000"), "si_m"),
                                  (month(1, 2), "cancellation", "churn", D("-50.0000"), "si_m"),
                                  (month(2, 3), "reactivation", "reactivation", D("100.0000"), "si_m")]
        assert con.execute("SELECT churn_type FROM mrr_movements WHERE movement = 'cancellation'").fetchall() == [
            ("involuntary",)]
    check_invariants(con)


# --- tax ------------------------------------------------------------------------------------------------------------

@one_store
def test_a_tax_rate_change_restates_a_licensed_price_but_moves_metered_usage(world: World, derive: Derive) -> None:
    """design.md 4 (tax excluded) with README's rule: a tax-inclusive licensed price loses the share of tax of its
    latest invoice line (a changed rate restates the item, no movement); metered usage loses the tax of the invoice
    that bills it. `gross` 12.00 a seat incl. tax, 2 seats; a tax-inclusive meter. VAT 20% on the invoices of T0 and
    1 February, 25% from 1 March (Stripe: amount x rate / (1 + rate)).
    - gross: its latest line (1 March, 24.00 with 4.80 tax) gives 19.20 / 24.00 = 0.8 for its whole history: 19.20
      from T0 (not 20.00), no movement on 1 March; 3 seats from 10 March: 28.80, seat_expansion +9.60;
    - meter: 60.00 billed 1 February with 10.00 VAT: 50.00 (resource_expansion +50.00); 60.00 billed 1 March with
      12.00 VAT: 48.00 (resource_contraction -2.00). No `tax_inclusive_price` row."""
    base(world)
    world.price("gross", "prod_seat", 1_200)["tax_behavior"] = "inclusive"
    world.objects["prices"]["meter"]["tax_behavior"] = "inclusive"
    world.subscribe("sub_1", "cus_1", [("si_g", "gross", 2), ("si_m", "meter", None)], T0)
    world.cycle("sub_1", month(1), usage={"si_m": 6_000})
    world.cycle("sub_1", month(2), usage={"si_m": 6_000})
    world.update("sub_1", month(2, 9), items=[("si_g", "gross", 3), ("si_m", "meter", None)])
    for inv in world.objects["invoices"].values():
        vat(world, inv, 25 if inv["created"] >= month(2) else 20)
    assert [t["amount"] for t in line_of(invoice_at(world, month(2)), "si_g")["taxes"]] == [480]
    con = derive(world, seen_at=month(2, 20))
    assert levels(con, "cus_1", T0 + DAY, month(1, 1), month(2, 1), month(2, 10)) == [
        D("19.2000"), D("69.2000"), D("67.2000"), D("76.8000")]
    assert moves(con) == [(T0, "new", "new", D("19.2000"), "si_g"),
                          (month(1), "resource_expansion", "expansion", D("50.0000"), "si_m"),
                          (month(2), "resource_contraction", "contraction", D("-2.0000"), "si_m"),
                          (month(2, 9), "seat_expansion", "expansion", D("9.6000"), "si_g")]
    assert quality(con) == []


@one_store
def test_several_tax_amounts_on_one_line(world: World, derive: Derive) -> None:
    """design.md 4 (tax excluded): a line may list several taxes (one per rate: state and county). T0: `gross`
    11.50 a seat incl. tax, 2 seats: 23.00 with 2.00 + 1.00 inclusive tax: 23 x 20 / 23 = 20.00; `net` 20.00 plus
    tax, with 1.60 + 0.40 of exclusive tax listed (on top of the amount): 20.00; a tax-inclusive meter whose 69.00
    of usage billed 1 February lists 6.00 + 3.00: 60.00. MRR 40.00, then 100.00 (resource_expansion +60.00)."""
    base(world)
    world.price("gross", "prod_seat", 1_150)["tax_behavior"] = "inclusive"
    world.product("prod_addon", family="addon")
    world.price("net", "prod_addon", 2_000)
    world.objects["prices"]["meter"]["tax_behavior"] = "inclusive"
    world.subscribe("sub_1", "cus_1", [("si_g", "gross", 2), ("si_x", "net", 1), ("si_m", "meter", None)], T0)
    world.cycle("sub_1", month(1), usage={"si_m": 6_900})
    for inv in world.objects["invoices"].values():
        taxes(line_of(inv, "si_g"), 200, 100)
        taxes(line_of(inv, "si_x"), 160, 40, behavior="exclusive")
    taxes(line_of(invoice_at(world, month(1)), "si_m"), 600, 300)
    con = derive(world, seen_at=month(1, 10))
    assert levels(con, "cus_1", T0 + DAY, month(1, 1)) == [D("40.0000"), D("100.0000")]
    assert [m[1:4] for m in moves(con)] == [("new", "new", D("40.0000")),
                                            ("resource_expansion", "expansion", D("60.0000"))]
    assert quality(con) == []


@one_store
def test_a_tax_share_from_the_customers_other_invoices_and_a_tax_exempt_customer(world: World, derive: Derive
                                                                                 ) -> None:
    """design.md 4 (tax excluded) with README's fallbacks: an item of a tax-inclusive price with no invoice line of
    its own takes the share of its customer's latest line of a tax-inclusive price. cus_1: sub_1 from T0, 2 seats of
    `gross_a` (12.00 incl.; 20% VAT on its invoice: 20.00); sub_2 on 15 January, one `gross_b` analytics plan (6.00
    incl.), its invoice not stored: the customer's 10/12 gives 5.00, a `cross_sell` +5.00 (MRR 25.00), and no
    `tax_inclusive_price` row. cus_2 (tax-exempt: its invoice lists no tax) holds 2 seats of gross_a: 24.00, the
    invoice showing there is no tax to take out."""
    base(world)
    world.price("gross_a", "prod_seat", 1_200)["tax_behavior"] = "inclusive"
    world.product("prod_analytics", family="analytics")
    world.price("gross_b", "prod_analytics", 600)["tax_behavior"] = "inclusive"
    world.subscribe("sub_1", "cus_1", [("si_a", "gross_a", 2)], T0)
    vat(world, invoice_at(world, T0), 20)
    world.subscribe("sub_2", "cus_1", [("si_b", "gross_b", 1)], month(0, 14), invoice=False)
    world.customer("cus_2")
    world.subscribe("sub_3", "cus_2", [("si_c", "gross_a", 2)], T0)
    con = derive(world, seen_at=month(1))
    assert levels(con, "cus_1", T0 + DAY, month(0, 15)) == [D("20.0000"), D("25.0000")]
    assert moves(con) == [(T0, "new", "new", D("20.0000"), "si_a"),
                          (month(0, 14), "cross_sell", "expansion", D("5.0000"), "si_b")]
    assert levels(con, "cus_2", T0 + DAY) == [D("24.0000")]
    assert quality(con) == []


@one_store
def test_a_tax_inclusive_price_keeps_its_tax_until_an_invoice_shows_it_then_restates(world: World,
                                                                                    derive: Derive) -> None:
    """design.md 4 (tax excluded) with README: an item of a tax-inclusive licensed price whose customer has no invoice
    yet that shows the tax keeps it (a `tax_inclusive_price` row); once an invoice shows it, the share of its latest
    line restates the item. `gross` 12.00 a seat incl. tax, 2 seats from T0, the signup invoices not stored:
    - cus_1's 1 February renewal shows 20% VAT (4.00 of 24.00): 20.00 from T0 on, one `new` of 20.00, no row;
    - cus_2 has no invoice stored: 24.00, and one `tax_inclusive_price` row naming its item."""
    base(world)
    world.price("gross", "prod_seat", 1_200)["tax_behavior"] = "inclusive"
    world.customer("cus_2")
    for c, s, i in (("cus_1", "sub_1", "si_1"), ("cus_2", "sub_2", "si_2")):
        world.subscribe(s, c, [(i, "gross", 2)], T0, invoice=False)
    vat(world, world.cycle("sub_1", month(1)), 20)
    con = derive(world, seen_at=month(1, 5))
    assert levels(con, "cus_1", T0 + DAY, month(1, 1)) == [D("20.0000"), D("20.0000")]
    assert moves(con) == [(T0, "new", "new", D("20.0000"), "si_1")]
    assert levels(con, "cus_2", T0 + DAY, month(1, 1)) == [D("24.0000"), D("24.0000")]
    assert quality(con) == [("tax_inclusive_price", "si_2")]


# --- tiers, packs, intervals ----------------------------------------------------------------------------------------

def decimal_tiers(first: str, second: str, flat: str) -> list[Obj]:
    """Up to 10,000 units at ``first`` cents each, then ``second`` cents each plus a flat ``flat`` cents, as decimal
    strings (Stripe's *_decimal fields: minor units with up to 12 decimals)."""
    return [{"up_to": 10_000, "unit_amount": None, "unit_amount_decimal": first, "flat_amount": None,
             "flat_amount_decimal": None},
            {"up_to": None, "unit_amount": None, "unit_amount_decimal": second, "flat_amount": None,
             "flat_amount_decimal": flat}]


@one_store
def test_tiers_of_sub_cent_decimal_amounts_at_and_past_their_bound(world: World, derive: Derive) -> None:
    """design.md 4 (tiered prices from their tiers; money DECIMAL(18,4)) and docs/internals.md (a customer's MRR
    rounds once, at 4 decimals, half away from zero; a transition's rows add up to the customer's change). Up to
    10,000 seats at 0.125 cents, then 0.1 cents plus a flat 0.025 cents; each customer from T0 at 10,000 seats
    (exactly the first tier's up_to), 10,001 from 10 February.
    - c1, graduated: 10,000 x 0.125 = 1,250 cents = 12.5000; 10,001: 1,250 + 0.1 + 0.025 = 1,250.125 cents =
      12.50125, rounded half away: 12.5013; seat_expansion +0.0013;
    - c2, volume: 12.5000; 10,001 all at the second tier: 1,000.1 + 0.025 = 1,000.125 cents = 10.00125 -> 10.0013:
      one more seat, less MRR: seat_contraction of the customer's change, 10.0013 - 12.5000 = -2.4987 (the part's
      own -2.49875 would round to -2.4988; the remainder goes to the transition's largest part, its only one);
    - c3 / c4: one tier with no upper bound (up_to null: Stripe's `inf`), 3.00 a seat plus 5.00 flat, graduated and
      volume: 4 seats = 17.00 both."""
    world.fx_rates.append(EUR_RATE)
    world.product("prod_seat", unit_label="seat", family="core")
    world.price("dec_grad", "prod_seat", None, tiers_mode="graduated", tiers=[{"up_to": None, "unit_amount": 1}])
    world.objects["prices"]["dec_grad"]["tiers"] = decimal_tiers("0.125", "0.1", "0.025")
    world.price("dec_vol", "prod_seat", None, tiers_mode="volume", tiers=[{"up_to": None, "unit_amount": 1}])
    world.objects["prices"]["dec_vol"]["tiers"] = decimal_tiers("0.125", "0.1", "0.025")
    for mode in ("graduated", "volume"):
        world.price(f"inf_{mode}", "prod_seat", None, tiers_mode=mode,
                    tiers=[{"up_to": None, "unit_amount": 300, "flat_amount": 500}])
    for c, price in (("c1", "dec_grad"), ("c2", "dec_vol")):
        world.customer(c)
        world.subscribe(f"s_{c}", c, [(f"i_{c}", price, 10_000)], T0)
        world.update(f"s_{c}", month(1, 9), items=[(f"i_{c}", price, 10_001)])
    for c, mode in (("c3", "graduated"), ("c4", "volume")):
        world.customer(c)
        world.subscribe(f"s_{c}", c, [(f"i_{c}", f"inf_{mode}", 4)], T0)
    con = derive(world, seen_at=month(2))
    assert levels(con, "c1", T0 + DAY, month(1, 10)) == [D("12.5000"), D("12.5013")]
    assert levels(con, "c2", T0 + DAY, month(1, 10)) == [D("12.5000"), D("10.0013")]
    assert moves(con, "c1")[1:] == [(month(1, 9), "seat_expansion", "expansion", D("0.0013"), "i_c1")]
    assert moves(con, "c2")[1:] == [(month(1, 9), "seat_contraction", "contraction", D("-2.4987"), "i_c2")]
    assert levels(con, "c3", T0 + DAY) == levels(con, "c4", T0 + DAY) == [D("17.0000")]


@one_store
def test_packs_at_exact_multiples_and_a_switch_whose_plan_part_is_zero(world: World, derive: Derive) -> None:
    """design.md 4 (transform_quantity divides and rounds the quantity first) and 5 (plan part = MRR(new price, old
    quantity) - MRR(old price, old quantity), quantity part the rest; a part of 0 is no row; a change of no MRR is no
    movement). pack5_down: 10.00 a pack of 5, rounded down; pack4_up: 8.00 a pack of 4, rounded up.
    - T0 15 seats = 3 packs (an exact multiple) = 30.00 (`new`); 10 Feb 19 seats, still 3 packs: nothing;
      10 Mar 20 seats = 4 packs: seat_expansion +10.00;
    - 10 Apr onto pack4_up with 21 seats: MRR(pack4_up, 20) = 5 packs = 40.00 = MRR(pack5_down, 20): plan part 0
      (no upgrade row); 21 seats = 6 packs = 48.00: seat_expansion +8.00;
    - 10 May 24 seats, exactly 6 packs: nothing; 20 May 25 seats = 7 packs = 56.00: seat_expansion +8.00."""
    world.fx_rates.append(EUR_RATE)
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat", family="core")
    world.price("pack5_down", "prod_seat", 1_000, transform_quantity={"divide_by": 5, "round": "down"})
    world.price("pack4_up", "prod_seat", 800, transform_quantity={"divide_by": 4, "round": "up"})
    world.subscribe("sub_1", "cus_1", [("si_1", "pack5_down", 15)], T0)
    for at, price, seats in ((month(1, 9), "pack5_down", 19), (month(2, 9), "pack5_down", 20),
                             (month(3, 9), "pack4_up", 21), (month(4, 9), "pack4_up", 24),
                             (month(4, 19), "pack4_up", 25)):
        world.update("sub_1", at, items=[("si_1", price, seats)])
    con = derive(world, seen_at=month(5))
    assert levels(con, "cus_1", T0 + DAY, month(1, 10), month(2, 10), month(3, 10), month(4, 10), month(4, 20)) == [
        D("30.0000"), D("30.0000"), D("40.0000"), D("48.0000"), D("48.0000"), D("56.0000")]
    assert moves(con) == [(T0, "new", "new", D("30.0000"), "si_1"),
                          (month(2, 9), "seat_expansion", "expansion", D("10.0000"), "si_1"),
                          (month(3, 9), "seat_expansion", "expansion", D("8.0000"), "si_1"),
                          (month(4, 19), "seat_expansion", "expansion", D("8.0000"), "si_1")]


def tiered_option(tiers: list[tuple[int | None, int, int | None]]) -> Obj:
    """A tiered price's currency option as Stripe lists it with its tiers expanded: (up_to, unit, flat) each."""
    return {"unit_amount": None, "unit_amount_decimal": None, "tax_behavior": "exclusive", "custom_unit_amount": None,
            "tiers": [{"up_to": up, "unit_amount": unit, "unit_amount_decimal": str(unit), "flat_amount": flat,
                       "flat_amount_decimal": None if flat is None else str(flat)} for up, unit, flat in tiers]}


@one_store
def test_a_switch_onto_a_tiered_price_billed_through_its_currency_options_tiers(world: World, derive: Derive) -> None:
    """design.md 4 (every amount in its own currency; tiered from the tiers) and 5 (the plan / quantity split), with
    README (a tiered price billed in another currency counts at its tiers in that currency). A EUR customer (rate
    1.10). `per_seat` is 10.00 USD with a 9.00 EUR option; `tiered` is graduated, its USD tiers (10.00 to 5, then 8.00)
    and its EUR option's own (9.00 to 5 plus 5.00 flat, then 6.00).
    - T0 4 seats of per_seat: 36.00 EUR = 39.60 (`new`);
    - 10 Feb 7 seats of tiered: 5 x 9 + 5 + 2 x 6 = 62.00 EUR; MRR(tiered in EUR, 4 seats) = 4 x 9 + 5 = 41.00, so
      `upgrade` 41 - 36 = +5.00 EUR (5.50) and seat_expansion 62 - 41 = +21.00 EUR (23.10); MRR 68.20 (the USD tiers
      would give 40.00 for 4 seats);
    - 10 Mar 5 seats (the first tier's up_to): 50.00 EUR: seat_contraction -12.00 EUR (-13.20), MRR 55.00."""
    base(world, currency="eur")
    world.price("per_seat", "prod_seat", 1_000)["currency_options"] = {"eur": {"unit_amount": 900,
                                                                               "unit_amount_decimal": "900"}}
    world.price("tiered", "prod_seat", None, tiers_mode="graduated",
                tiers=[{"up_to": 5, "unit_amount": 1_000}, {"up_to": None, "unit_amount": 800}])
    world.objects["prices"]["tiered"]["currency_options"] = {"eur": tiered_option([(5, 900, 500), (None, 600, None)])}
    world.subscribe("sub_1", "cus_1", [("si_1", "per_seat", 4)], T0)
    world.update("sub_1", month(1, 9), items=[("si_1", "tiered", 7)])
    world.update("sub_1", month(2, 9), items=[("si_1", "tiered", 5)])
    for inv in world.objects["invoices"].values():  # (Stripe bills in the subscription's currency)
        for line in inv["lines"]["data"]:
            line["currency"] = "eur"
    con = derive(world, seen_at=month(3))
    assert levels(con, "cus_1", T0 + DAY, month(1, 10), month(2, 10)) == [D("39.6000"), D("68.2000"), D("55.0000")]
    assert moves(con) == [(T0, "new", "new", D("39.6000"), "si_1"),
                          (month(1, 9), "seat_expansion", "expansion", D("23.1000"), "si_1"),
                          (month(1, 9), "upgrade", "expansion", D("5.5000"), "si_1"),
                          (month(2, 9), "seat_contraction", "contraction", D("-13.2000"), "si_1")]
    assert con.execute("SELECT movement, currency, amount_delta_original FROM mrr_movements "
                       "ORDER BY occurred_at, movement").fetchall() == [
        ("new", "eur", D("36.0000")), ("seat_expansion", "eur", D("21.0000")), ("upgrade", "eur", D("5.0000")),
        ("seat_contraction", "eur", D("-12.0000"))]
    assert quality(con) == []


@one_store
def test_switches_between_week_month_year_and_day_prices_with_interval_counts_at_equal_mrr(world: World,
                                                                                           derive: Derive) -> None:
    """design.md 4 (week x 52/12, year / 12, day x 365/12, each / interval_count) and 5 (an interval switch at equal
    monthly MRR is no movement). One item moved through four prices, each 45.50 a month exactly:
    21.00 every 2 weeks (21 x 52 / 24 = 45.5), 45.50 a month, 1,092.00 every 2 years (1,092 / 24 = 45.5), 109.20 every
    73 days (109.20 x 365 / (12 x 73) = 109.20 x 5 / 12 = 45.5): `new` 45.50 at T0 and no other movement; then a
    second unit on the 73-day price: seat_expansion +45.50."""
    world.fx_rates.append(EUR_RATE)
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat", family="core")
    world.price("p_2w", "prod_seat", 2_100, interval="week", interval_count=2)
    world.price("p_1m", "prod_seat", 4_550)
    world.price("p_2y", "prod_seat", 109_200, interval="year", interval_count=2)
    world.price("p_73d", "prod_seat", 10_920, interval="day", interval_count=73)
    world.subscribe("sub_1", "cus_1", [("si_1", "p_2w", 1)], T0)
    for n, (price, units) in enumerate((("p_1m", 1), ("p_2y", 1), ("p_73d", 1), ("p_73d", 2)), start=1):
        world.update("sub_1", month(n, 9), items=[("si_1", price, units)])
    con = derive(world, seen_at=month(5))
    assert levels(con, "cus_1", T0 + DAY, month(1, 10), month(2, 10), month(3, 10), month(4, 10)) == [
        D("45.5000")] * 4 + [D("91.0000")]
    assert moves(con) == [(T0, "new", "new", D("45.5000"), "si_1"),
                          (month(4, 9), "seat_expansion", "expansion", D("45.5000"), "si_1")]


@one_store
def test_an_item_of_a_new_family_at_quantity_zero_then_seats(world: World, derive: Derive) -> None:
    """design.md 4 (per_unit: unit_amount x quantity, so 0 seats are 0.00) and 5 (an item present in A and B is one
    component; quantity up / down on a seat unit). 2 core seats (20.00) from T0. 10 Feb an analytics seat item (15.00
    a seat, a family the customer did not have) added at quantity 0: no change, no row. 10 Mar 3 seats: the item was
    there at 0, so seat_expansion +45.00 (as NOTES records for a meter held at 0, not a cross_sell); 10 Apr back to 0:
    seat_contraction -45.00; 10 May the item removed: nothing."""
    base(world)
    world.product("prod_analytics", unit_label="seat", family="analytics")
    world.price("analytics", "prod_analytics", 1_500)
    world.subscribe("sub_1", "cus_1", [("si_c", "seat", 2)], T0)
    for n, seats in ((1, 0), (2, 3), (3, 0)):
        world.update("sub_1", month(n, 9), items=[("si_c", "seat", 2), ("si_a", "analytics", seats)])
    world.update("sub_1", month(4, 9), items=[("si_c", "seat", 2)])
    con = derive(world, seen_at=month(5))
    assert levels(con, "cus_1", month(1, 10), month(2, 10), month(3, 10), month(4, 10)) == [
        D("20.0000"), D("65.0000"), D("20.0000"), D("20.0000")]
    assert moves(con) == [(T0, "new", "new", D("20.0000"), "si_c"),
                          (month(2, 9), "seat_expansion", "expansion", D("45.0000"), "si_a"),
                          (month(3, 9), "seat_contraction", "contraction", D("-45.0000"), "si_a")]


# --- what is not MRR ------------------------------------------------------------------------------------------------

@one_store
def test_a_billing_cycle_anchor_reset_moves_no_mrr(world: World, derive: Derive) -> None:
    """design.md 4 (prorations mark when, their amounts are not MRR; metered: the last FULL period). 3 seats (30.00)
    and a meter from T0; January's usage 40.00 billed 1 February (70.00). On 15 February the billing cycle anchor is
    reset to now: Stripe credits the seats' unused half month (a proration), bills a whole new period 15 Feb - 15 Mar
    at the same price and quantity, and the meter's usage of 1-15 February (25.00: a part period). Nothing changes:
    no row. 15 March's renewal bills 15 Feb - 15 Mar, a full period (50.00): resource_expansion +10.00."""
    base(world)
    world.subscribe("sub_1", "cus_1", [("si_c", "seat", 3), ("si_m", "meter", None)], T0)
    world.cycle("sub_1", month(1), usage={"si_m": 4_000})
    reset = month(1, 14)
    sub = world.objects["subscriptions"]["sub_1"]
    before = copy.deepcopy(sub)
    seats, meter = copy.deepcopy(item_of(world, "sub_1", "si_c")), copy.deepcopy(item_of(world, "sub_1", "si_m"))
    for item in sub["items"]["data"]:
        item["current_period_start"], item["current_period_end"] = reset, add_months(reset, 1)
    sub["billing_cycle_anchor"] = reset
    world.event("customer.subscription.updated", reset, sub, before)
    world._invoice("sub_1", reset, "subscription_update", [
        world._line("sub_1", seats, reset, month(2), proration=True, credit=True, amount=-1_500),
        world._line("sub_1", item_of(world, "sub_1", "si_c"), reset, add_months(reset, 1)),
        world._line("sub_1", meter, month(1), reset, amount=2_500, quantity=1)])
    world.cycle("sub_1", add_months(reset, 1), usage={"si_m": 5_000})
    con = derive(world, seen_at=month(2, 20))
    assert levels(con, "cus_1", reset - 1, reset + DAY, add_months(reset, 1)) == [
        D("70.0000"), D("70.0000"), D("80.0000")]
    assert moves(con) == [(T0, "new", "new", D("30.0000"), "si_c"),
                          (month(1), "resource_expansion", "expansion", D("40.0000"), "si_m"),
                          (add_months(reset, 1), "resource_expansion", "expansion", D("10.0000"), "si_m")]
    assert quality(con) == []


def load_with_credit_notes(w: World, con: duckdb.DuckDBPyConnection, *, seen_at: int, events: bool | int) -> None:
    """``w`` loaded as usual, then its credit notes (``w.objects["credit_notes"]``), as a sync stores them."""
    from stripe_churn.store.load import upsert_objects

    w.load(con, seen_at=seen_at, events=events)
    upsert_objects(con, "credit_notes", w.account_id, list(w.objects.get("credit_notes", {}).values()),
                   datetime.fromtimestamp(seen_at, tz=UTC))


def credit_note(cid: str, inv: Obj, line: Obj, amount: int, at: int) -> Obj:
    return {"id": cid, "object": "credit_note", "amount": amount, "amount_shipping": 0, "created": at,
            "currency": "usd", "customer": inv["customer"], "invoice": inv["id"], "discount_amount": 0,
            "discount_amounts": [], "livemode": False, "memo": None, "metadata": {}, "number": cid.upper(),
            "out_of_band_amount": None, "post_payment_amount": amount, "pre_payment_amount": 0,
            "reason": "order_change", "refunds": [], "status": "issued", "subtotal": amount, "total": amount,
            "type": "post_payment", "voided_at": None, "effective_at": at,
            "lines": {"object": "list", "has_more": False, "url": f"/v1/credit_notes/{cid}/lines",
                      "data": [{"id": f"{cid}_l1", "object": "credit_note_line_item", "amount": amount,
                                "description": None, "discount_amount": 0, "discount_amounts": [],
                                "invoice_line_item": line["id"], "livemode": False, "quantity": 1,
                                "tax_rates": [], "taxes": [], "type": "invoice_line_item", "unit_amount": amount,
                                "unit_amount_decimal": str(amount)}]}}


@one_store
def test_a_one_time_price_prorations_and_credit_notes_move_no_mrr(world: World, derive: Derive) -> None:
    """design.md 4: one-time prices, proration amounts and credit notes do not change MRR. T0: 3 seats of `seat`
    (30.00), the first invoice also billing a one-time `setup` price (500.00, an invoice item). 10 February the item
    moves to `pro` (20.00 a seat): prorations of +54.00 and -21.00 on an update invoice: `upgrade` +30.00 (60.00), not
    the prorations' amounts. Credit notes refund the setup whole (500.00) and 10.00 of the update invoice: nothing.
    No data-quality row (the one-time item is no unusable object)."""
    base(world)
    world.price("pro", "prod_seat", 2_000)
    world.price("setup", "prod_seat", 50_000, interval=None)
    created = world.subscribe("sub_1", "cus_1", [("si_c", "seat", 3)], T0)
    first = invoice_at(world, T0)
    seat_line = line_of(first, "si_c")
    setup = {**seat_line, "id": "il_setup", "amount": 50_000, "subtotal": 50_000, "quantity": 1,
             "period": {"start": T0, "end": T0},
             "parent": {"type": "invoice_item_details", "subscription_item_details": None,
                        "invoice_item_details": {"invoice_item": "ii_setup", "proration": False,
                                                 "subscription": created["id"]}},
             "pricing": {"type": "price_details", "price_details": {"price": "setup", "product": "prod_seat"},
                         "unit_amount_decimal": "50000"}}
    first["lines"]["data"].append(setup)
    world.update("sub_1", month(1, 9), items=[("si_c", "pro", 3)])
    update = invoice_at(world, month(1, 9))
    debit, credit = sorted(update["lines"]["data"], key=lambda ln: -ln["amount"])
    debit["amount"], credit["amount"] = 5_400, -2_100
    world.objects["credit_notes"] = {"cn_1": credit_note("cn_1", first, setup, 50_000, month(0, 5)),
                                     "cn_2": credit_note("cn_2", update, debit, 1_000, month(1, 12))}
    con = derive(world, seen_at=month(2), load=load_with_credit_notes)
    assert con.execute("SELECT count(*) FROM credit_notes").fetchall() == [(2,)]
    assert levels(con, "cus_1", T0 + DAY, month(0, 6), month(1, 10), month(1, 13)) == [
        D("30.0000"), D("30.0000"), D("60.0000"), D("60.0000")]
    assert moves(con) == [(T0, "new", "new", D("30.0000"), "si_c"),
                          (month(1, 9), "upgrade", "expansion", D("30.0000"), "si_c")]
    assert quality(con) == []


# --- rounding and the bridge ----------------------------------------------------------------------------------------

VOL_BASIC: list[Obj] = [{"up_to": 5, "unit_amount": 1000, "flat_amount": 500}, {"up_to": 10, "unit_amount": 800, "flat_amount": 300},
             {"up_to": None, "unit_amount": 500, "flat_amount": 100}]
VOL_PRO: list[Obj] = [{"up_to": 5, "unit_amount": 1200, "flat_amount": 500}, {"up_to": 10, "unit_amount": 900, "flat_amount": 300},
           {"up_to": None, "unit_amount": 600, "flat_amount": 100}]
SPLIT_SEEN = month(2, 20)


def split_world() -> World:
    """Three customers, each a plan switch with seats on 10 February (the third a second one on 10 March):
    - c_year: 2 seats of an annual 200.00 -> 3 seats of an annual 400.00;
    - c_week: 2 seats of 7.00 a week -> 3 seats of 8.00 a week;
    - c_vol: 5 seats of vol_basic -> 6 seats of vol_pro (volume tiers), then 11 seats of vol_basic."""
    w = World()
    w.product("prod_seat", unit_label="seat", family="core")
    w.price("year_a", "prod_seat", 20_000, interval="year")
    w.price("year_b", "prod_seat", 40_000, interval="year")
    w.price("week_a", "prod_seat", 700, interval="week")
    w.price("week_b", "prod_seat", 800, interval="week")
    w.price("vol_basic", "prod_seat", None, tiers=VOL_BASIC, tiers_mode="volume")
    w.price("vol_pro", "prod_seat", None, tiers=VOL_PRO, tiers_mode="volume")
    for c, old, new in (("c_year", "year_a", "year_b"), ("c_week", "week_a", "week_b"),
                        ("c_vol", "vol_basic", "vol_pro")):
        w.customer(c)
        w.subscribe(f"s_{c}", c, [(f"i_{c}", old, 5 if c == "c_vol" else 2)], T0)
        w.update(f"s_{c}", month(1, 9), items=[(f"i_{c}", new, 6 if c == "c_vol" else 3)])
    w.update("s_c_vol", month(2, 9), items=[("i_c_vol", "vol_basic", 11)])
    return w


def test_plan_and_quantity_parts_round_and_still_add_up(derive_read_only: Derive) -> None:
    """design.md 4 (money DECIMAL(18,4)) and 5 (plan part = MRR(new price, old qty) - MRR(old price, old qty),
    quantity part the rest; the parts add up exactly), with README's rule: each row rounded to 4 decimals, the
    remainder to the transition's largest part (of equal ones the first by item id, then plan, quantity).
    - c_year: 2 x 200 / 12 = 33.3333 -> 3 x 400 / 12 = 100.0000 (+66.6667). Plan 2 x 200 / 12 = 33.33333...,
      quantity 400 / 12 = 33.33333...: both 33.3333, 0.0001 short; equal parts: the plan's first: `upgrade`
      +33.3334, seat_expansion +33.3333;
    - c_week: 14 x 52 / 12 = 60.66666... (60.6667) -> 24 x 52 / 12 = 104.0000 (+43.3333). Plan 2 x 52 / 12 =
      8.66666... (8.6667), quantity 8 x 52 / 12 = 34.66666... (34.6667): 0.0001 too much, taken off the largest:
      `upgrade` +8.6667, seat_expansion +34.6666;
    - c_vol (volume: up to 5 at 10.00 + 5.00, up to 10 at 8.00 + 3.00, then 5.00 + 1.00; vol_pro 12.00 + 5.00,
      9.00 + 3.00, 6.00 + 1.00): 5 basic = 55.00 -> 6 pro = 6 x 9 + 3 = 57.00: plan MRR(pro, 5) - 55 = 65 - 55 =
      `upgrade` +10.00, quantity 57 - 65 = -8.00: more seats, less MRR, labelled by its sign: seat_contraction;
      10 March 11 basic = 56.00: plan MRR(basic, 6) - 57 = 51 - 57 = `downgrade` -6.00, quantity 56 - 51 =
      seat_expansion +5.00."""
    con = derive_read_only(split_world(), seen_at=SPLIT_SEEN)
    assert moves(con, "c_year")[1:] == [(month(1, 9), "seat_expansion", "expansion", D("33.3333"), "i_c_year"),
                                        (month(1, 9), "upgrade", "expansion", D("33.3334"), "i_c_year")]
    assert moves(con, "c_week")[1:] == [(month(1, 9), "seat_expansion", "expansion", D("34.6666"), "i_c_week"),
                                        (month(1, 9), "upgrade", "expansion", D("8.6667"), "i_c_week")]
    assert moves(con, "c_vol")[1:] == [
        (month(1, 9), "seat_contraction", "contraction", D("-8.0000"), "i_c_vol"),
        (month(1, 9), "upgrade", "expansion", D("10.0000"), "i_c_vol"),
        (month(2, 9), "downgrade", "contraction", D("-6.0000"), "i_c_vol"),
        (month(2, 9), "seat_expansion", "expansion", D("5.0000"), "i_c_vol")]
    for c in ("c_year", "c_week", "c_vol"):
        check_invariants(con, c)


def test_the_bridge_of_those_switches(derive_read_only: Derive) -> None:
    """design.md 6 (opening + new + expansion - contraction - churn = closing, exactly; the flows positive) over the
    three switches above. January: new 33.3333 + 60.6667 + 55.0000 = 149.0000. February: expansion 66.6667 + 43.3333
    + 10.0000 = 120.0000 (upgrade 33.3334 + 8.6667 + 10 = 52.0001, seat_expansion 33.3333 + 34.6666 = 67.9999),
    contraction 8.0000 (seat_contraction), closing 261.0000 (100 + 104 + 57), net negative churn. March: expansion
    5.0000 (seat_expansion), contraction 6.0000 (downgrade), closing 260.0000, not net negative. (January opens at 0:
    its rates, net_negative_churn too, are NULL, a zero denominator.)"""
    con = derive_read_only(split_world(), seen_at=SPLIT_SEEN)
    months = {r["period_start"]: r for r in queries.bridge(con)}
    cols = ("opening_mrr", "new", "expansion", "contraction", "churn", "closing_mrr", "upgrade", "seat_expansion",
            "downgrade", "seat_contraction", "net_negative_churn")
    assert [tuple(months[dt.date(2024, m, 1)][c] for c in cols) for m in (1, 2, 3)] == [
        (0, D("149.0000"), 0, 0, 0, D("149.0000"), 0, 0, 0, 0, None),
        (D("149.0000"), 0, D("120.0000"), D("8.0000"), 0, D("261.0000"), D("52.0001"), D("67.9999"), 0, D("8.0000"),
         True),
        (D("261.0000"), 0, D("5.0000"), D("6.0000"), 0, D("260.0000"), 0, D("5.0000"), D("6.0000"), 0, False)]
    assert assert_bridge_adds_up(con, "pricing hunt", ["month", "quarter"], [None, "plan"]) > 0
