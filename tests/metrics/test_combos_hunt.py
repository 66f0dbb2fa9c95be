"""Combinations of the rules of design.md 4 (an item's MRR), 5 (the labels and their pairing) and 6 (the rollup), each on
a small hand-built account, in ways the other hand-worked files do not combine them: a plan switch onto a new item with
seats while a subscription discount ends beside an unchanged item, two items of a family removed while another family
is added, interval switches with seats (in place and across subscriptions), a family taken from the settings' mapping
pairing a switch while product metadata beats the mapping for a cross-sell, a unit taken from the settings' mapping, a
volume tier crossed as a discount starts, packs that do not change as a discount ends, an item discount put on beside
an unchanged item, usage growing as a subscription discount starts, a pair across subscriptions that leaves a discount
behind, an amount-off that ends beside seats, pairs made by discounted MRR, a comeback on a metered family, seats then
unpaid in one window, a weekly price whose rounding remainder lands on the largest part, a trial turning active beside
a seat change; and bridges (month, week, quarter, customer counts, churn reasons) around a churn at period end with
feedback and a comeback on other families, a repeating coupon ending between seat changes, a window that straddles the
end of a month, a quarter and a week (a seat change, then a cancellation), and a family segment taken from the
settings' mapping.

Each expected row (time, movement, category, delta, item) and bridge cell is worked out by hand from design.md alone
(where it is silent, with README.md's "Metric definitions": an item's plan and quantity parts are valued at the
discount it had before the window, what its discounts add or take is the `discount` part); the arithmetic is in each
docstring. Every test also checks that the rows of each transition add up to the customer's change and chain with
customer_mrr, and that every row names its subscription, item, product and price.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import duckdb
import pytest
from builders import DAY, World, ts
from conftest import OneStore, customer_mrr_at
from test_classifier import MINUTE, T0, Row, base, month
from test_classifier_hunt import expect as hunt_expect

from stripe_churn.metrics import queries

Derive = Callable[..., duckdb.DuckDBPyConnection]
D = Decimal

# The tests marked @one_store are each an account of one store, derived once (conftest.OneStore): their queries see
# their own account's rows alone.
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()

# settings of the tests about the settings' family and unit mappings (one shared store for both)
MAPPINGS: dict[str, Any] = {"families": {"prod_m": "analytics", "prod_n": "analytics"},
                            "units": {"prod_store": "resource"}}

VOLUME: list[dict[str, Any]] = [{"up_to": 5, "unit_amount": 1000, "flat_amount": 500},
                                {"up_to": 10, "unit_amount": 800, "flat_amount": 300},
                                {"up_to": None, "unit_amount": 500, "flat_amount": 100}]


def expect(con: duckdb.DuckDBPyConnection, expected: list[Row], customer: str = "cus_1") -> None:
    """The customer's movements, its first `new` included, are ``expected``; the invariants of test_classifier hold;
    every row names its subscription, item, product and price, and every row but a `discount` (or `fx`) an event or
    invoice (a repeating coupon that runs out has neither in these accounts: Stripe's evidence of it is the
    discount)."""
    hunt_expect(con, expected, customer, skip_new=False, without_ids=("fx", "discount"))


def put_item_discount(w: World, sid: str, iid: str, did: str, at: int) -> None:
    """The discount ``did`` put on item ``iid`` of ``sid`` at ``at`` (the subscription's updated event shows it)."""
    sub = w.objects["subscriptions"][sid]
    before = copy.deepcopy(sub)
    for item in sub["items"]["data"]:
        if item["id"] == iid:
            item["discounts"] = [did]
    w.event("customer.subscription.updated", at, sub, before)


def bridge_rows(con: duckdb.DuckDBPyConnection, kind: str = "month", **kw: Any) -> dict[dt.date, dict[str, Any]]:
    return {r["period_start"]: r for r in queries.bridge(con, kind, **kw)}


FLOWS = ("opening_mrr", "new", "reactivation", "expansion", "contraction", "churn", "fx", "closing_mrr")
PARTS = ("upgrade", "cross_sell", "seat_expansion", "resource_expansion", "discount_expansion", "downgrade",
         "seat_contraction", "resource_contraction", "discount_contraction")
COUNTS = ("opening_customers", "new_customers", "reactivated_customers", "churned_customers", "closing_customers")


def flows(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[c] for c in FLOWS)


def parts(row: dict[str, Any]) -> dict[str, Any]:
    """The bridge's nonzero subtotals of expansion and contraction."""
    return {c: row[c] for c in PARTS if row[c]}


def counts(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[c] for c in COUNTS)


def catalogue(w: World) -> World:
    """test_classifier's base plus family reports (35.00) and a core storage product billed per GB (0.10)."""
    base(w)
    w.product("prod_reports", family="reports")
    w.price("reports", "prod_reports", 3_500)
    w.product("prod_storage", unit_label="GB", family="core")
    w.price("storage", "prod_storage", 10)
    return w


# --- several rules in one window ------------------------------------------------------------------------------------

@one_store
def test_a_switch_to_a_new_item_with_seats_as_a_subscription_discount_ends_beside_an_unchanged_item(
        world: World, derive: Derive) -> None:
    """design.md 4 (a discount ending is a `discount` movement at its end) and 5 (pairing: the removed core item and
    the added one are a plan switch; plan part = MRR(new price, old qty) - MRR(old price, old qty), quantity part =
    MRR(new price, new qty) - MRR(new price, old qty)).

    sub_1 from T0: si_1 core basic x4 (40.00) and si_a analytics (50.00) under the subscription's 30% for 2 months
    (ends 1 March 00:00): M = 90 x 0.7 = 63.00 (`new`, on the main item si_a, 35 > 28). At 1 March 00:20 si_1 is
    replaced by si_2 core pro x5 (100.00), one window with the end: B = 100 + 50 = 150, +87.00, dated 1 March 00:00:
    - the pair si_1 -> si_2, at the discount before: plan (80 - 40) x 0.7 = +28.00, seats (100 - 80) x 0.7 = +14.00,
      discount 100 - 70 = +30.00 (rows on the added item, as a pair's rows are);
    - si_a: discount 50 - 35 = +15.00.  28 + 14 + 30 + 15 = 87."""
    w = base(world)
    w.coupon("c30", percent_off=30, duration="repeating", duration_in_months=2)
    d = w.discount("c30", T0, customer="cus_1", subscription="sub_1")
    w.subscribe("sub_1", "cus_1", [("si_1", "core_basic", 4), ("si_a", "analytics", 1)], T0, discounts=[d["id"]])
    assert d["end"] == month(2)
    w.update("sub_1", month(2) + 20 * MINUTE, items=[("si_2", "core_pro", 5), ("si_a", "analytics", 1)])
    con = derive(w, seen_at=month(3))
    t = month(2)
    expect(con, [(T0, "new", "new", D("63.0000"), "si_a"),
                 (t, "upgrade", "expansion", D("28.0000"), "si_2"),
                 (t, "seat_expansion", "expansion", D("14.0000"), "si_2"),
                 (t, "discount", "expansion", D("30.0000"), "si_2"),
                 (t, "discount", "expansion", D("15.0000"), "si_a")])
    assert customer_mrr_at(con, "cus_1", t + 10 * MINUTE) == D("150.0000")


@one_store
def test_two_items_of_a_family_removed_across_subscriptions_while_another_family_is_added(
        world: World, derive: Derive) -> None:
    """design.md 5: items of a family removed while the customer stays are `downgrade` whatever their unit (a seat
    item and a per-GB item), an item of a family the customer did not have is `cross_sell`; no pair (no core item is
    added); the second subscription's cancellation is no `cancellation` (M(B) > 0) and its rows carry no churn_type.

    sub_1 from T0: si_c core basic x3 (30.00), si_a analytics (50.00); sub_2 a minute later: si_s storage 200 GB x
    0.10 = 20.00 (one window: `new` 100.00 on si_a, the largest). On 11 February sub_1 drops si_c and adds si_r
    reports (35.00); 5 minutes later sub_2 is canceled (feedback unused). A = 100, B = 85: downgrade -30.00 (si_c),
    downgrade -20.00 (si_s), cross_sell +35.00 (si_r); -30 - 20 + 35 = -15."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3), ("si_a", "analytics", 1)], T0)
    w.subscribe("sub_2", "cus_1", [("si_s", "storage", 200)], T0 + MINUTE)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_a", "analytics", 1), ("si_r", "reports", 1)])
    w.cancel("sub_2", t + 5 * MINUTE, feedback="unused")
    con = derive(w, seen_at=month(2))
    expect(con, [(T0, "new", "new", D("100.0000"), "si_a"),
                 (t, "downgrade", "contraction", D("-30.0000"), "si_c"),
                 (t, "downgrade", "contraction", D("-20.0000"), "si_s"),
                 (t, "cross_sell", "expansion", D("35.0000"), "si_r")])
    assert con.execute("SELECT count(*) FROM mrr_movements WHERE churn_type IS NOT NULL").fetchall() == [(0,)]


INTERVAL_SWITCHES = {
    # in place, monthly 100.00 x2 (200) -> annual 1,200.00 x3 (300 a month): plan MRR(annual,2) - MRR(monthly,2) =
    # 200 - 200 = 0 (no row), seats MRR(annual,3) - MRR(annual,2) = 300 - 200 = +100
    "equal-monthly-in-place": ("core_annual", 3, False, [("seat_expansion", "expansion", "100.0000")]),
    # in place, monthly 100.00 x2 (200) -> annual 1,500.00 x1 (125 a month): plan MRR(hi,2) - MRR(monthly,2) =
    # 250 - 200 = +50, seats MRR(hi,1) - MRR(hi,2) = 125 - 250 = -125; -75 in all
    "higher-fewer-seats-in-place": ("core_annual_hi", 1, False, [("upgrade", "expansion", "50.0000"),
                                                                  ("seat_contraction", "contraction", "-125.0000")]),
    # sub_1 canceled, sub_2 annual x3 five minutes later: one window, the removed monthly item and the added annual
    # one are a pair of family core: plan 0, seats +100 on the added item, dated at the cancel
    "equal-monthly-new-subscription": ("core_annual", 3, True, [("seat_expansion", "expansion", "100.0000")]),
}


@pytest.mark.parametrize("case", list(INTERVAL_SWITCHES))
@one_store
def test_an_interval_switch_with_a_quantity_change(world: World, derive: Derive, case: str) -> None:
    """design.md 4 (year / 12) and 5 (an interval switch at equal monthly MRR is no movement, at a different one an
    upgrade/downgrade; the split into plan and quantity parts; pairing across subscriptions in one window): the
    figures are in INTERVAL_SWITCHES. cus_1 starts on core monthly x2 (200.00) at T0; the switch is on 11 February."""
    price, quantity, new_sub, want = INTERVAL_SWITCHES[case]
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_monthly", 2)], T0)
    t = month(1, 10)
    if new_sub:
        w.cancel("sub_1", t)
        w.subscribe("sub_2", "cus_1", [("si_2", price, quantity)], t + 5 * MINUTE)
    else:
        w.update("sub_1", t, items=[("si_c", price, quantity)])
    con = derive(w, seen_at=month(2))
    item = "si_2" if new_sub else "si_c"
    rows: list[Row] = [(T0, "new", "new", D("200.0000"), "si_c")]
    expect(con, rows + [(t, m, c, D(v), item) for m, c, v in want])


@one_store
def test_a_family_from_the_settings_pairs_a_switch_while_metadata_beats_the_settings_for_a_cross_sell(
        world: World, derive: Derive) -> None:
    """design.md 5 product family: product.metadata["family"], else the settings' mapping, else the product.

    cus_1 from T0: core basic x3 (30.00) and analytics (50.00, prod_analytics, metadata family analytics): `new`
    80.00 on si_a. On 11 February si_a is removed and two items added: si_m of prod_m (no metadata; the settings map
    it to analytics; 80.00) and si_n of prod_n (metadata family reports, though the settings map it to analytics too;
    20.00). prod_m is family analytics: si_a -> si_m is a plan switch, plan MRR(m,1) - MRR(analytics,1) = +30.00
    (upgrade), quantity part 0 (no row). prod_n is family reports, which the customer did not have: cross_sell
    +20.00. A = 80, B = 130: 30 + 20 = 50."""
    w = base(world)
    w.product("prod_m")
    w.price("m", "prod_m", 8_000)
    w.product("prod_n", family="reports")
    w.price("n", "prod_n", 2_000)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3), ("si_a", "analytics", 1)], T0)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_c", "core_basic", 3), ("si_m", "m", 1), ("si_n", "n", 1)])
    con = derive(w, seen_at=month(2), **MAPPINGS)
    expect(con, [(T0, "new", "new", D("80.0000"), "si_a"),
                 (t, "upgrade", "expansion", D("30.0000"), "si_m"),
                 (t, "cross_sell", "expansion", D("20.0000"), "si_n")])


@one_store
def test_a_unit_from_the_settings_labels_a_plan_switch_with_more_units_and_an_added_item(
        world: World, derive: Derive) -> None:
    """design.md 5 seat vs resource: the settings' mapping first (prod_store's unit_label says seat, the settings
    say resource).

    cus_1 from T0: core basic x3 (30.00) and si_st storage-small 2.00 x10 (20.00, family storage): `new` 50.00 on
    si_c. On 11 February si_st moves in place to storage-large 3.00 x15 and, 10 minutes later, si_st2 storage-small
    x5 is added (a family the customer keeps): plan MRR(large,10) - MRR(small,10) = 30 - 20 = +10.00 (upgrade),
    quantity MRR(large,15) - MRR(large,10) = 45 - 30 = +15.00 (resource_expansion), the added item +10.00
    (resource_expansion). A = 50, B = 30 + 45 + 10 = 85: 10 + 15 + 10 = 35."""
    w = base(world)
    w.product("prod_store", unit_label="seat", family="storage")
    w.price("store_s", "prod_store", 200)
    w.price("store_l", "prod_store", 300)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3), ("si_st", "store_s", 10)], T0)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_c", "core_basic", 3), ("si_st", "store_l", 15)])
    w.update("sub_1", t + 10 * MINUTE, items=[("si_c", "core_basic", 3), ("si_st", "store_l", 15),
                                              ("si_st2", "store_s", 5)])
    con = derive(w, seen_at=month(2), **MAPPINGS)
    expect(con, [(T0, "new", "new", D("50.0000"), "si_c"),
                 (t, "upgrade", "expansion", D("10.0000"), "si_st"),
                 (t, "resource_expansion", "expansion", D("15.0000"), "si_st"),
                 (t, "resource_expansion", "expansion", D("10.0000"), "si_st2")])


@one_store
def test_a_volume_tier_crossed_as_a_discount_starts_then_the_next_tier_under_it(world: World, derive: Derive
                                                                                ) -> None:
    """design.md 4 (volume tiers: the tier the whole quantity falls in prices every unit, plus its flat amount; a
    forever discount reduces MRR) and 5 (a discount starting is a `discount` movement; the quantity part at the
    discount before).

    Volume tiers: up to 5 at 10.00 + 5.00 flat, up to 10 at 8.00 + 3.00, beyond at 5.00 + 1.00. 5 seats from T0:
    5 x 10 + 5 = 55.00 (`new`). On 11 February 6 seats (6 x 8 + 3 = 51.00) and 20% forever put on in the same update:
    B = 51 x 0.8 = 40.80; seats at no discount 51 - 55 = -4.00 (seat_contraction: more seats, less MRR), discount
    40.80 - 51 = -10.20. On 11 March 11 seats (11 x 5 + 1 = 56.00) under the 20%: (56 - 51) x 0.8 = +4.00."""
    w = base(world)
    w.price("vol", "prod_core", None, tiers=VOLUME, tiers_mode="volume")
    w.coupon("c20", percent_off=20)
    w.subscribe("sub_1", "cus_1", [("si_v", "vol", 5)], T0)
    t = month(1, 10)
    d = w.discount("c20", t, customer="cus_1", subscription="sub_1")
    w.update("sub_1", t, items=[("si_v", "vol", 6)], discounts=[d["id"]])
    w.update("sub_1", month(2, 10), items=[("si_v", "vol", 11)])
    con = derive(w, seen_at=month(3))
    expect(con, [(T0, "new", "new", D("55.0000"), "si_v"),
                 (t, "seat_contraction", "contraction", D("-4.0000"), "si_v"),
                 (t, "discount", "contraction", D("-10.2000"), "si_v"),
                 (month(2, 10), "seat_expansion", "expansion", D("4.0000"), "si_v")])


@one_store
def test_packs_that_do_not_change_in_the_window_of_a_discount_ending(world: World, derive: Derive) -> None:
    """design.md 4 (transform_quantity divides and rounds the quantity first) and 5 (a part that moves no MRR is no
    row; rows add up to the change).

    Packs of 5 seats (rounded up) at 30.00 a pack, 7 seats = 2 packs = 60.00, under the subscription's 20% for 2
    months from T0: 48.00 (`new`). The discount ends 1 March 00:00; at 00:10 the seats go to 8, still 2 packs: one
    window, B = 60.00, the whole +12.00 is the discount's end (the seats' part is 0: no row). On 11 March 11 seats =
    3 packs = 90.00: seat_expansion +30.00."""
    w = base(world)
    w.price("pack5", "prod_core", 3_000, transform_quantity={"divide_by": 5, "round": "up"})
    w.coupon("c20r", percent_off=20, duration="repeating", duration_in_months=2)
    d = w.discount("c20r", T0, customer="cus_1", subscription="sub_1")
    w.subscribe("sub_1", "cus_1", [("si_p", "pack5", 7)], T0, discounts=[d["id"]])
    w.update("sub_1", month(2) + 10 * MINUTE, items=[("si_p", "pack5", 8)])
    w.update("sub_1", month(2, 10), items=[("si_p", "pack5", 11)])
    con = derive(w, seen_at=month(3))
    expect(con, [(T0, "new", "new", D("48.0000"), "si_p"),
                 (month(2), "discount", "expansion", D("12.0000"), "si_p"),
                 (month(2, 10), "seat_expansion", "expansion", D("30.0000"), "si_p")])


@one_store
def test_an_item_discount_put_on_and_ending_beside_an_unchanged_item_under_a_subscription_discount(
        world: World, derive: Derive) -> None:
    """design.md 4: a subscription-level discount applies to all its items, an item-level one to that item (they
    stack); a discount starting or ending is a `discount` movement dated at its start or end, per component: the
    unchanged item has no row.

    sub_1 from T0 with 10% forever: core basic x3 (27.00) and analytics (45.00): `new` 72.00 on si_a. On 11 February
    50% for 2 months goes on si_a alone: 50 x 0.9 x 0.5 = 22.50, discount -22.50 on si_a; it ends on 11 April:
    +22.50 on si_a."""
    w = base(world)
    w.coupon("c10", percent_off=10)
    w.coupon("c50r", percent_off=50, duration="repeating", duration_in_months=2)
    ds = w.discount("c10", T0, customer="cus_1", subscription="sub_1")
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3), ("si_a", "analytics", 1)], T0, discounts=[ds["id"]])
    t = month(1, 10)
    di = w.discount("c50r", t, customer="cus_1", subscription="sub_1", subscription_item="si_a")
    assert di["end"] == month(3, 10)
    put_item_discount(w, "sub_1", "si_a", di["id"], t)
    con = derive(w, seen_at=month(4))
    expect(con, [(T0, "new", "new", D("72.0000"), "si_a"),
                 (t, "discount", "contraction", D("-22.5000"), "si_a"),
                 (month(3, 10), "discount", "expansion", D("22.5000"), "si_a")])


@one_store
def test_usage_grows_as_a_subscription_discount_starts_in_its_window(world: World, derive: Derive) -> None:
    """design.md 4 (metered: the last invoiced full period's amount, from that invoice on; a subscription-level
    discount applies to all its items) and 5 (usage up is resource_expansion; a discount starting is `discount`):
    the usage part at the discount before the window, the discount the rest.

    4 seats (40.00) and a metered api item from T0 (`new` 40.00). Usage 30.00 billed 1 February: resource_expansion
    +30.00. Usage 50.00 billed 1 March, and 10 minutes later 20% forever on the subscription: B = (40 + 50) x 0.8 =
    72.00 (+2.00): usage +20.00, discount on si_m 40 - 50 = -10.00, on si_c 32 - 40 = -8.00."""
    w = base(world)
    w.coupon("c20", percent_off=20)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 4), ("si_m", "api_metered", None)], T0)
    w.cycle("sub_1", month(1), usage={"si_m": 3_000})
    w.cycle("sub_1", month(2), usage={"si_m": 5_000})
    d = w.discount("c20", month(2) + 10 * MINUTE, customer="cus_1", subscription="sub_1")
    w.update("sub_1", month(2) + 10 * MINUTE, discounts=[d["id"]])
    con = derive(w, seen_at=month(2, 5))
    t = month(2)
    expect(con, [(T0, "new", "new", D("40.0000"), "si_c"),
                 (month(1), "resource_expansion", "expansion", D("30.0000"), "si_m"),
                 (t, "resource_expansion", "expansion", D("20.0000"), "si_m"),
                 (t, "discount", "contraction", D("-10.0000"), "si_m"),
                 (t, "discount", "contraction", D("-8.0000"), "si_c")])


@one_store
def test_a_switch_across_subscriptions_leaves_the_old_subscriptions_discount_behind(world: World, derive: Derive
                                                                                    ) -> None:
    """design.md 5 (one window; a removed and an added item of one family are a pair) with README's convention (plan
    part at the discount the item had, the discount's change its own part).

    sub_1 from T0: core basic x4 under its own 25% forever: 30.00 (`new`). On 11 February sub_1 is canceled and,
    5 minutes later, sub_2 starts with core pro x4 and no discount: B = 80.00 (+50.00). The pair si_1 -> si_2: plan
    (80 - 40) x 0.75 = +30.00 (upgrade), quantity 0, discount 80 - 60 = +20.00 (the 25% no longer applies)."""
    w = base(world)
    w.coupon("c25", percent_off=25)
    d = w.discount("c25", T0, customer="cus_1", subscription="sub_1")
    w.subscribe("sub_1", "cus_1", [("si_1", "core_basic", 4)], T0, discounts=[d["id"]])
    t = month(1, 10)
    w.cancel("sub_1", t)
    w.subscribe("sub_2", "cus_1", [("si_2", "core_pro", 4)], t + 5 * MINUTE)
    con = derive(w, seen_at=month(2))
    expect(con, [(T0, "new", "new", D("30.0000"), "si_1"),
                 (t, "upgrade", "expansion", D("30.0000"), "si_2"),
                 (t, "discount", "expansion", D("20.0000"), "si_2")])


@one_store
def test_an_amount_off_ends_in_the_window_of_seats_on_one_of_its_items(world: World, derive: Derive) -> None:
    """design.md 4 (a repeating discount ends; an amount_off is shared among the subscription's items by MRR,
    README) and 5 (the quantity part at the discount before, the discount's end its own part per item).

    sub_1 from T0 with 9.00 off for 2 months: core basic x4 (40.00, share 4.00: 36.00, factor 0.9) and analytics
    (50.00, share 5.00: 45.00): `new` 81.00 on si_a. The discount ends 1 March 00:00; at 00:10 si_c goes to 6 seats:
    B = 60 + 50 = 110.00 (+29.00): seats 20 x 0.9 = +18.00, si_c's discount 60 - 54 = +6.00, si_a's 50 - 45 = +5.00."""
    w = base(world)
    w.coupon("off9", amount_off=900, currency="usd", duration="repeating", duration_in_months=2)
    d = w.discount("off9", T0, customer="cus_1", subscription="sub_1")
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 4), ("si_a", "analytics", 1)], T0, discounts=[d["id"]])
    w.update("sub_1", month(2) + 10 * MINUTE, items=[("si_c", "core_basic", 6), ("si_a", "analytics", 1)])
    con = derive(w, seen_at=month(3))
    t = month(2)
    expect(con, [(T0, "new", "new", D("81.0000"), "si_a"),
                 (t, "seat_expansion", "expansion", D("18.0000"), "si_c"),
                 (t, "discount", "expansion", D("6.0000"), "si_c"),
                 (t, "discount", "expansion", D("5.0000"), "si_a")])


@one_store
def test_pairs_are_made_largest_discounted_mrr_first(world: World, derive: Derive) -> None:
    """design.md 4 (MRR is after discounts) and 5 (pairing: removed and added items of one family paired largest MRR
    first; the split; README: parts at the discount the item had, what its discounts add or take the `discount`
    part).

    sub_1 from T0: si_1 core basic x5 (50.00) under its own 60% forever: 20.00; si_2 core pro x2: 40.00. `new` 60.00
    on si_2. On 11 February both are replaced by si_3 core pro x5 (100.00) and si_4 core basic x1 (10.00), no
    discount. By MRR the removed are si_2 (40) then si_1 (20), the added si_3 (100) then si_4 (10):
    - si_2 -> si_3: plan MRR(pro,2) - MRR(pro,2) = 0, seats 100 - 40 = +60.00 (seat_expansion);
    - si_1 -> si_4: plan 0, seats (10 - 50) x 0.4 = -16.00 (seat_contraction), discount 10 - (20 - 16) = +6.00.
    A = 60, B = 110: 60 - 16 + 6 = 50."""
    w = base(world)
    w.coupon("c60", percent_off=60)
    di = w.discount("c60", T0, customer="cus_1", subscription="sub_1", subscription_item="si_1")
    sub = w.subscribe("sub_1", "cus_1", [("si_1", "core_basic", 5), ("si_2", "core_pro", 2)], T0)
    sub["items"]["data"][0]["discounts"] = [di["id"]]
    w.events[0]["data"]["object"]["items"]["data"][0]["discounts"] = [di["id"]]
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_3", "core_pro", 5), ("si_4", "core_basic", 1)])
    con = derive(w, seen_at=month(2))
    expect(con, [(T0, "new", "new", D("60.0000"), "si_2"),
                 (t, "seat_expansion", "expansion", D("60.0000"), "si_3"),
                 (t, "seat_contraction", "contraction", D("-16.0000"), "si_4"),
                 (t, "discount", "expansion", D("6.0000"), "si_4")])


@one_store
def test_a_comeback_on_a_metered_family_is_a_reactivation_when_its_first_usage_is_billed(
        world: World, derive: Derive) -> None:
    """design.md 4 (metered: zero before the item's first usage invoice, then the last invoiced full period's amount
    from that invoice on) and 5 (M(A) = 0, M(B) > 0, the customer had MRR before: `reactivation`, whatever the
    family).

    core basic x3 (30.00) from T0, canceled 11 February (cancellation -30.00). A subscription of the metered api item
    alone starts 1 March (MRR 0: no movement); its first full period's usage, 45.00, is billed 1 April: reactivation
    +45.00 dated 1 April on si_m."""
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.cancel("sub_1", month(1, 10))
    w.subscribe("sub_2", "cus_1", [("si_m", "api_metered", None)], month(2))
    w.cycle("sub_2", month(3), usage={"si_m": 4_500})
    con = derive(w, seen_at=month(3, 5))
    expect(con, [(T0, "new", "new", D("30.0000"), "si_c"),
                 (month(1, 10), "cancellation", "churn", D("-30.0000"), "si_c"),
                 (month(3), "reactivation", "reactivation", D("45.0000"), "si_m")])


@one_store
def test_seats_taken_off_then_unpaid_in_one_window_is_one_involuntary_cancellation(world: World, derive: Derive
                                                                                    ) -> None:
    """design.md 4 (unpaid counts zero from the transition; its later deletion is no second movement) and 5 (one
    window; M(B) = 0: `cancellation` takes the whole delta; involuntary when the subscription went unpaid).

    5 seats (50.00) from T0. On 11 February 00:00 the seats go to 3, at 00:10 past_due (still counts), at 00:20
    unpaid: one transition dated 00:00, 50 -> 0: cancellation -50.00, involuntary; the deletion on 1 March adds
    nothing."""
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 5)], T0)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_c", "core_basic", 3)])
    w.update("sub_1", t + 10 * MINUTE, status="past_due")
    w.update("sub_1", t + 20 * MINUTE, status="unpaid")
    w.end("sub_1", month(2))
    con = derive(w, seen_at=month(3))
    expect(con, [(T0, "new", "new", D("50.0000"), "si_c"),
                 (t, "cancellation", "churn", D("-50.0000"), "si_c")])
    assert con.execute("SELECT churn_type FROM mrr_movements WHERE movement = 'cancellation'").fetchall() == [
        ("involuntary",)]


@one_store
def test_a_weekly_price_with_seats_as_a_discount_ends_rounds_the_remainder_onto_the_largest_part(
        world: World, derive: Derive) -> None:
    """design.md 4 (week x 52/12; a repeating discount ends) and 5 (the split; rows add up to the customer's change),
    with README's rounding (each row to 4 decimals, the remainder to the transition's largest part).

    1 seat of a weekly 10.00 price (10 x 52 / 12 = 43.3333... a month) under 15% for 2 months from T0: 36.83333...
    (`new` 36.8333). The discount ends 1 March 00:00; at 00:10 2 seats: B = 86.66666... (86.6667). The customer's
    change is 86.6667 - 36.8333 = 49.8334; seats at the discount before 43.3333... x 0.85 = 36.83333..., the
    discount's end 86.6666... x 0.15 = 13.0000; rounded they make 49.8333, so the 0.0001 goes to the seats: 36.8334."""
    w = base(world)
    w.price("wk", "prod_core", 1_000, interval="week")
    w.coupon("c15", percent_off=15, duration="repeating", duration_in_months=2)
    d = w.discount("c15", T0, customer="cus_1", subscription="sub_1")
    w.subscribe("sub_1", "cus_1", [("si_w", "wk", 1)], T0, discounts=[d["id"]])
    w.update("sub_1", month(2) + 10 * MINUTE, items=[("si_w", "wk", 2)])
    con = derive(w, seen_at=month(3))
    expect(con, [(T0, "new", "new", D("36.8333"), "si_w"),
                 (month(2), "seat_expansion", "expansion", D("36.8334"), "si_w"),
                 (month(2), "discount", "expansion", D("13.0000"), "si_w")])


@one_store
def test_a_trial_converting_beside_a_seat_change_in_one_window(world: World, derive: Derive) -> None:
    """design.md 4 (trialing counts zero) and 5 (one window; an item of a family the customer did not have is a
    cross_sell even when it arrives by a trial's end, for a customer already paying: no `new`).

    core basic x3 (30.00) from T0 (`new`). An analytics subscription trials from 15 January to 15 February (0);
    it turns active on 15 February 00:00, and at 00:10 sub_1 gets a fourth seat: one transition, cross_sell +50.00
    (si_a) and seat_expansion +10.00 (si_c), dated 15 February 00:00."""
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    trial_end = T0 + 45 * DAY
    w.subscribe("sub_2", "cus_1", [("si_a", "analytics", 1)], T0 + 14 * DAY, trial_end=trial_end)
    w.update("sub_2", trial_end, status="active")
    w.update("sub_1", trial_end + 10 * MINUTE, items=[("si_c", "core_basic", 4)])
    con = derive(w, seen_at=month(3))
    expect(con, [(T0, "new", "new", D("30.0000"), "si_c"),
                 (trial_end, "cross_sell", "expansion", D("50.0000"), "si_a"),
                 (trial_end, "seat_expansion", "expansion", D("10.0000"), "si_c")])


# --- bridges (design.md 6) around such changes: each its own store (the bridge sums a whole store) ------------------

def test_churn_at_period_end_with_feedback_a_comeback_on_other_families_and_customer_counts(
        world: World, derive: Derive) -> None:
    """design.md 4 (churn at ended_at), 5 (reactivation takes the whole delta, one row; cancellation rows carry
    churn_type and feedback; a subscription ended while another stays is a downgrade) and 6 (bridge, counts, rates).

    - c1: core basic x3 (30.00) from 10 January; on 5 February asks to cancel at the period's end (feedback
      too_expensive), ends 10 March 00:00: cancellation -30.00, voluntary, too_expensive. At 02:00 (outside the
      window) it comes back with analytics (50.00) and reports (35.00) under 20% forever: 68.00, one `reactivation`
      on its main item (analytics, 40.00 > 28.00).
    - c2: core pro x2 (40.00) from 20 January; 3 seats on 20 March: seat_expansion +20.00.
    - c3: core basic x1 from 25 March: new 10.00.
    - c4: core basic x2 (20.00) and, a minute later, analytics (50.00) in another subscription, from 5 January (one
      `new` 70.00); the analytics subscription canceled 15 March (downgrade -50.00: family removed, customer stays),
      the core one 28 March (cancellation -20.00, no feedback).
    January: new 30 + 40 + 70 = 140, closing 140, 3 new customers. February: 140 -> 140.
    March: opening 140, new 10, reactivation 68, expansion 20, contraction 50, churn 30 + 20 = 50, closing 138
    (68 + 60 + 10 + 0); customers opening 3, new 1 (c3), reactivated 1 (c1), churned 2 (c1, c4), closing 3;
    customer churn rate 2/3; gross (50 + 50)/140; net (100 - 20 - 68)/140 = 12/140 (not net negative);
    NRR (140 + 20 - 100)/140; GRR 40/140; quick ratio (10 + 68 + 20)/100 = 0.98; ARPA 138/3 = 46.
    Q1: opening 0, new 150, reactivation 68, expansion 20, contraction 50, churn 50, closing 138; customers 0, 4, 1,
    2, 3; rates over opening 0 NULL; quick ratio 238/100.
    Weeks (Monday first): 4-10 March: churn 30 and reactivation 68 (Sunday 10 March), 140 -> 178; 11-17: contraction
    50 -> 128; 18-24: expansion 20 -> 148; 25-31: new 10, churn 20 -> 138."""
    w = catalogue(world)
    for c in ("c1", "c2", "c3", "c4"):
        w.customer(c)
    w.coupon("c20", percent_off=20)
    w.subscribe("s1", "c1", [("i1", "core_basic", 3)], ts(2024, 1, 10))
    w.cancel("s1", ts(2024, 2, 5), ended_at=ts(2024, 3, 10), feedback="too_expensive")
    back = ts(2024, 3, 10, 2)
    d = w.discount("c20", back, customer="c1", subscription="s1b")
    w.subscribe("s1b", "c1", [("i1a", "analytics", 1), ("i1r", "reports", 1)], back, discounts=[d["id"]])
    w.subscribe("s2", "c2", [("i2", "core_pro", 2)], ts(2024, 1, 20))
    w.update("s2", ts(2024, 3, 20), items=[("i2", "core_pro", 3)])
    w.subscribe("s3", "c3", [("i3", "core_basic", 1)], ts(2024, 3, 25))
    w.subscribe("s4", "c4", [("i4", "core_basic", 2)], ts(2024, 1, 5))
    w.subscribe("s4a", "c4", [("i4a", "analytics", 1)], ts(2024, 1, 5) + MINUTE)
    w.cancel("s4a", ts(2024, 3, 15))
    w.cancel("s4", ts(2024, 3, 28))
    con = derive(w, seen_at=month(4))
    expect(con, [(ts(2024, 1, 10), "new", "new", D("30.0000"), "i1"),
                 (ts(2024, 3, 10), "cancellation", "churn", D("-30.0000"), "i1"),
                 (back, "reactivation", "reactivation", D("68.0000"), "i1a")], "c1")
    expect(con, [(ts(2024, 1, 20), "new", "new", D("40.0000"), "i2"),
                 (ts(2024, 3, 20), "seat_expansion", "expansion", D("20.0000"), "i2")], "c2")
    expect(con, [(ts(2024, 3, 25), "new", "new", D("10.0000"), "i3")], "c3")
    expect(con, [(ts(2024, 1, 5), "new", "new", D("70.0000"), "i4a"),
                 (ts(2024, 3, 15), "downgrade", "contraction", D("-50.0000"), "i4a"),
                 (ts(2024, 3, 28), "cancellation", "churn", D("-20.0000"), "i4")], "c4")
    churn = con.execute("SELECT customer_id, churn_type, cancellation_feedback FROM mrr_movements "
                        "WHERE movement = 'cancellation' ORDER BY customer_id").fetchall()
    assert churn == [("c1", "voluntary", "too_expensive"), ("c4", "voluntary", None)]

    months = bridge_rows(con)
    jan, feb, mar = (months[dt.date(2024, m, 1)] for m in (1, 2, 3))
    assert flows(jan) == (0, 140, 0, 0, 0, 0, 0, 140) and counts(jan) == (0, 3, 0, 0, 3)
    assert flows(feb) == (140, 0, 0, 0, 0, 0, 0, 140) and counts(feb) == (3, 0, 0, 0, 3)
    assert flows(mar) == (140, 10, 68, 20, 50, 50, 0, 138)
    assert parts(mar) == {"seat_expansion": 20, "downgrade": 50}
    assert counts(mar) == (3, 1, 1, 2, 3)
    assert [mar[c] for c in ("customer_churn_rate", "gross_revenue_churn_rate", "net_revenue_churn_rate", "nrr",
                             "grr", "quick_ratio")] == [
        pytest.approx(2 / 3), pytest.approx(100 / 140), pytest.approx(12 / 140), pytest.approx(60 / 140),
        pytest.approx(40 / 140), pytest.approx(0.98)]
    assert (mar["arpa"], mar["net_negative_churn"]) == (46, False)

    q1 = bridge_rows(con, "quarter")[dt.date(2024, 1, 1)]
    assert flows(q1) == (0, 150, 68, 20, 50, 50, 0, 138) and counts(q1) == (0, 4, 1, 2, 3)
    assert [q1[c] for c in ("customer_churn_rate", "gross_revenue_churn_rate", "nrr")] == [None, None, None]
    assert q1["quick_ratio"] == pytest.approx(2.38)

    weeks = bridge_rows(con, "week", start=dt.date(2024, 3, 4), end=dt.date(2024, 3, 25))
    assert [flows(weeks[dt.date(2024, 3, d)]) for d in (4, 11, 18, 25)] == [
        (140, 0, 68, 0, 0, 30, 0, 178), (178, 0, 0, 0, 50, 0, 0, 128), (128, 0, 0, 20, 0, 0, 0, 148),
        (148, 10, 0, 0, 0, 20, 0, 138)]
    assert counts(weeks[dt.date(2024, 3, 4)]) == (3, 0, 1, 1, 3)

    reasons = [(r["period_start"], r["churn_type"], r["cancellation_feedback"], r["churned_customers"],
                r["churned_mrr"]) for r in queries.churn_reasons(con)]
    assert reasons == [(dt.date(2024, 3, 1), "voluntary", "(none)", 1, D("20.0000")),
                       (dt.date(2024, 3, 1), "voluntary", "too_expensive", 1, D("30.0000"))]


def test_a_repeating_coupon_ending_mid_month_between_seat_changes_by_month_week_and_quarter(
        world: World, derive: Derive) -> None:
    """design.md 4 (repeating: its end is `start` + duration; a movement dated at the start and at the end) and 6.

    4 seats (40.00) from T0. 20% for 1 month put on Monday 15 January 10:00 (-8.00, discount), ending Thursday
    15 February 10:00. Monday 5 February 09:00, 6 seats under it: (60 - 40) x 0.8 = +16.00; the end: 60 - 48 =
    +12.00; Monday 19 February 09:00, 5 seats: -10.00.
    January: 0 + new 40 - contraction 8 (discount_contraction) = 32; quick ratio 40/8 = 5.
    February: 32 + expansion 28 (seat 16, discount 12) - contraction 10 (seat) = 50; gross 10/32, net (10 - 28)/32
    (net negative), NRR 50/32, GRR 22/32, quick ratio 2.8, ARPA 50; customers 1 -> 1.
    Weeks: 15-21 January 40 -> 32; 5-11 February 32 -> 48; 12-18: 48 -> 60; 19-25: 60 -> 50.
    Q1: new 40, expansion 28, contraction 18 (discount 8, seat 10), closing 50."""
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 4)], T0)
    w.coupon("c20r", percent_off=20, duration="repeating", duration_in_months=1)
    on = ts(2024, 1, 15, 10)
    d = w.discount("c20r", on, customer="cus_1", subscription="sub_1")
    w.update("sub_1", on, discounts=[d["id"]])
    assert d["end"] == ts(2024, 2, 15, 10)
    w.update("sub_1", ts(2024, 2, 5, 9), items=[("si_c", "core_basic", 6)])
    w.update("sub_1", ts(2024, 2, 19, 9), items=[("si_c", "core_basic", 5)])
    con = derive(w, seen_at=month(3))
    expect(con, [(T0, "new", "new", D("40.0000"), "si_c"),
                 (on, "discount", "contraction", D("-8.0000"), "si_c"),
                 (ts(2024, 2, 5, 9), "seat_expansion", "expansion", D("16.0000"), "si_c"),
                 (ts(2024, 2, 15, 10), "discount", "expansion", D("12.0000"), "si_c"),
                 (ts(2024, 2, 19, 9), "seat_contraction", "contraction", D("-10.0000"), "si_c")])
    months = bridge_rows(con)
    jan, feb = months[dt.date(2024, 1, 1)], months[dt.date(2024, 2, 1)]
    assert flows(jan) == (0, 40, 0, 0, 8, 0, 0, 32) and parts(jan) == {"discount_contraction": 8}
    assert counts(jan) == (0, 1, 0, 0, 1) and jan["quick_ratio"] == pytest.approx(5)
    assert flows(feb) == (32, 0, 0, 28, 10, 0, 0, 50)
    assert parts(feb) == {"seat_expansion": 16, "discount_expansion": 12, "seat_contraction": 10}
    assert counts(feb) == (1, 0, 0, 0, 1)
    assert [feb[c] for c in ("gross_revenue_churn_rate", "net_revenue_churn_rate", "nrr", "grr", "quick_ratio",
                             "customer_churn_rate")] == [
        pytest.approx(0.3125), pytest.approx(-0.5625), pytest.approx(1.5625), pytest.approx(0.6875),
        pytest.approx(2.8), 0]
    assert (feb["arpa"], feb["net_negative_churn"]) == (50, True)
    weeks = bridge_rows(con, "week", start=dt.date(2024, 1, 8), end=dt.date(2024, 2, 26))
    assert flows(weeks[dt.date(2024, 1, 8)]) == (40, 0, 0, 0, 0, 0, 0, 40)
    assert flows(weeks[dt.date(2024, 1, 15)]) == (40, 0, 0, 0, 8, 0, 0, 32)
    assert flows(weeks[dt.date(2024, 2, 5)]) == (32, 0, 0, 16, 0, 0, 0, 48)
    assert flows(weeks[dt.date(2024, 2, 12)]) == (48, 0, 0, 12, 0, 0, 0, 60)
    assert parts(weeks[dt.date(2024, 2, 12)]) == {"discount_expansion": 12}
    assert flows(weeks[dt.date(2024, 2, 19)]) == (60, 0, 0, 0, 10, 0, 0, 50)
    assert flows(weeks[dt.date(2024, 2, 26)]) == (50, 0, 0, 0, 0, 0, 0, 50)
    q1 = bridge_rows(con, "quarter")[dt.date(2024, 1, 1)]
    assert flows(q1) == (0, 40, 0, 28, 18, 0, 0, 50)
    assert parts(q1) == {"seat_expansion": 16, "discount_expansion": 12, "seat_contraction": 10,
                         "discount_contraction": 8}


def test_a_window_straddling_the_end_of_a_month_a_quarter_and_a_week(world: World, derive: Derive) -> None:
    """design.md 5 (changes within 60 minutes are one transition dated at the first) and 6 (periods; weeks start on
    Monday, and Sunday 31 March closes a week, a month and a quarter).

    4 seats (40.00) from T0. 25% forever put on Sunday 31 March 23:30; 6 seats Monday 1 April 00:10: one window
    dated 31 March 23:30, B = 60 x 0.75 = 45.00 (+5.00): seats at the discount before the window (none) +20.00,
    discount 45 - 60 = -15.00. March, Q1 and the week of 25 March take both (40 -> 45); April, Q2 and the week of
    1 April open at 45.00 with no flow; customer_mrr is 45.00 from 31 March 23:30."""
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 4)], T0)
    w.coupon("c25", percent_off=25)
    on = ts(2024, 3, 31, 23, 30)
    d = w.discount("c25", on, customer="cus_1", subscription="sub_1")
    w.update("sub_1", on, discounts=[d["id"]])
    w.update("sub_1", ts(2024, 4, 1, 0, 10), items=[("si_c", "core_basic", 6)])
    con = derive(w, seen_at=month(4))
    expect(con, [(T0, "new", "new", D("40.0000"), "si_c"),
                 (on, "seat_expansion", "expansion", D("20.0000"), "si_c"),
                 (on, "discount", "contraction", D("-15.0000"), "si_c")])
    assert customer_mrr_at(con, "cus_1", on - 1) == D("40.0000")
    assert customer_mrr_at(con, "cus_1", ts(2024, 4, 1, 0, 5)) == D("45.0000")
    months = bridge_rows(con)
    mar, apr = months[dt.date(2024, 3, 1)], months[dt.date(2024, 4, 1)]
    assert flows(mar) == (40, 0, 0, 20, 15, 0, 0, 45)
    assert parts(mar) == {"seat_expansion": 20, "discount_contraction": 15}
    assert flows(apr) == (45, 0, 0, 0, 0, 0, 0, 45)
    quarters = bridge_rows(con, "quarter")
    assert flows(quarters[dt.date(2024, 1, 1)]) == (0, 40, 0, 20, 15, 0, 0, 45)
    assert flows(quarters[dt.date(2024, 4, 1)]) == (45, 0, 0, 0, 0, 0, 0, 45)
    weeks = bridge_rows(con, "week", start=dt.date(2024, 3, 25), end=dt.date(2024, 4, 1))
    assert flows(weeks[dt.date(2024, 3, 25)]) == (40, 0, 0, 20, 15, 0, 0, 45)
    assert weeks[dt.date(2024, 3, 25)]["period_end"] == dt.date(2024, 3, 31)
    assert flows(weeks[dt.date(2024, 4, 1)]) == (45, 0, 0, 0, 0, 0, 0, 45)


def test_a_discount_then_a_cancellation_in_one_window_across_a_month_end(world: World, derive: Derive) -> None:
    """design.md 5 (one window dated at its first change; M(B) = 0: one `cancellation` of the whole delta, with the
    subscription's feedback) and 6 (the month, the week and the churn reasons the window's date falls in).

    4 seats (40.00) from T0. 25% forever put on Sunday 31 March 23:50 (alone it would be -10.00), the subscription
    canceled Monday 1 April 00:20 with feedback switched_service: one transition from 40.00 to 0 dated 31 March
    23:50: cancellation -40.00, voluntary, no `discount` row. March: opening 40, churn 40, closing 0, customers 1 ->
    0, 1 churned, customer churn rate 1, GRR 0, quick ratio 0; April: nothing (0 -> 0, no customer). Week of 25
    March: churn 40. churn_reasons for March: voluntary, switched_service, 1 customer, 40.00."""
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 4)], T0)
    w.coupon("c25", percent_off=25)
    on = ts(2024, 3, 31, 23, 50)
    d = w.discount("c25", on, customer="cus_1", subscription="sub_1")
    w.update("sub_1", on, discounts=[d["id"]])
    w.cancel("sub_1", ts(2024, 4, 1, 0, 20), feedback="switched_service")
    con = derive(w, seen_at=month(4))
    expect(con, [(T0, "new", "new", D("40.0000"), "si_c"),
                 (on, "cancellation", "churn", D("-40.0000"), "si_c")])
    assert con.execute("SELECT churn_type, cancellation_feedback FROM mrr_movements WHERE movement = 'cancellation'"
                       ).fetchall() == [("voluntary", "switched_service")]
    assert customer_mrr_at(con, "cus_1", on - 1) == D("40.0000")
    assert customer_mrr_at(con, "cus_1", ts(2024, 4, 1, 0, 10)) == 0
    months = bridge_rows(con)
    mar, apr = months[dt.date(2024, 3, 1)], months[dt.date(2024, 4, 1)]
    assert flows(mar) == (40, 0, 0, 0, 0, 40, 0, 0) and counts(mar) == (1, 0, 0, 1, 0)
    assert [mar[c] for c in ("customer_churn_rate", "grr", "quick_ratio", "arpa")] == [
        pytest.approx(1), pytest.approx(0), pytest.approx(0), None]
    assert flows(apr) == (0, 0, 0, 0, 0, 0, 0, 0) and counts(apr) == (0, 0, 0, 0, 0)
    week = bridge_rows(con, "week", start=dt.date(2024, 3, 25), end=dt.date(2024, 3, 25))[dt.date(2024, 3, 25)]
    assert flows(week) == (40, 0, 0, 0, 0, 40, 0, 0)
    reasons = [(r["period_start"], r["churn_type"], r["cancellation_feedback"], r["churned_customers"],
                r["churned_mrr"]) for r in queries.churn_reasons(con)]
    assert reasons == [(dt.date(2024, 3, 1), "voluntary", "switched_service", 1, D("40.0000"))]


def test_a_family_segment_taken_from_the_settings_moves_with_the_main_item(world: World, derive: Derive) -> None:
    """design.md 5 (family: metadata, else the settings' mapping) and 6 per segment, with README's segment rule (a
    customer belongs for a period to the segment of its state at the period's start, its main item's, the one of
    largest MRR; a new segment takes its MRR at the next period's start, with no flow).

    cus_1 from T0: core basic x3 (30.00, main) and si_m of prod_m (no metadata; the settings map it to analytics;
    20.00): `new` 50.00, family core. On 11 February si_m moves in place to 80.00: upgrade +60.00 (plan part; quantity
    unchanged), B = 110.00, main item si_m (analytics) from then on.
    core: January 0 -> 50 (new 50, 1 new customer); February 50 -> 110 (upgrade 60); March no MRR.
    analytics: March opens at 110.00 with 1 customer, no flow. Quarters: core Q1 0 -> 110; analytics Q2 110 -> 110."""
    w = base(world)
    w.product("prod_m")
    w.price("m20", "prod_m", 2_000)
    w.price("m80", "prod_m", 8_000)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3), ("si_m", "m20", 1)], T0)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_c", "core_basic", 3), ("si_m", "m80", 1)])
    con = derive(w, seen_at=month(4), families={"prod_m": "analytics"})
    expect(con, [(T0, "new", "new", D("50.0000"), "si_c"),
                 (t, "upgrade", "expansion", D("60.0000"), "si_m")])
    core = bridge_rows(con, "month", segment="family", segment_value="core")
    analytics = bridge_rows(con, "month", segment="family", segment_value="analytics")
    jan, feb, mar = (dt.date(2024, m, 1) for m in (1, 2, 3))
    assert flows(core[jan]) == (0, 50, 0, 0, 0, 0, 0, 50) and counts(core[jan]) == (0, 1, 0, 0, 1)
    assert flows(core[feb]) == (50, 0, 0, 60, 0, 0, 0, 110) and parts(core[feb]) == {"upgrade": 60}
    assert mar not in core or (core[mar]["opening_mrr"], core[mar]["closing_mrr"]) == (0, 0)
    assert flows(analytics[mar]) == (110, 0, 0, 0, 0, 0, 0, 110) and counts(analytics[mar]) == (1, 0, 0, 0, 1)
    assert jan not in analytics or (analytics[jan]["opening_mrr"], analytics[jan]["closing_mrr"]) == (0, 0)
    q_core = bridge_rows(con, "quarter", segment="family", segment_value="core")
    q_analytics = bridge_rows(con, "quarter", segment="family", segment_value="analytics")
    assert flows(q_core[jan]) == (0, 50, 0, 60, 0, 0, 0, 110)
    assert flows(q_analytics[dt.date(2024, 4, 1)]) == (110, 0, 0, 0, 0, 0, 0, 110)
