"""One named test per MRR rule of design.md 4, on small hand-built Stripe accounts loaded into a store."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Any

import duckdb
import pytest
from builders import DAY, World, add_months, ts
from conftest import OneStore, customer_mrr_at, item_rows, make_settings, record_stripes_clock

from stripe_churn.errors import DataError
from stripe_churn.metrics.runner import recompute
from stripe_churn.store.load import mark_unlisted_children

T0 = ts(2024, 1, 1)
Derive = Callable[..., duckdb.DuckDBPyConnection]

# The tests marked @one_store are each an account of one store, derived once (conftest.OneStore): their queries see
# their own account's rows alone.
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()


def base(w: World, currency: str = "usd") -> World:
    w.customer("cus_1", currency=currency)
    w.product("prod_seat", unit_label="seat", family="core")
    w.product("prod_api", unit_label="api call", family="api")
    return w


def month(n: int, day: int = 0) -> int:
    return add_months(T0, n) + day * DAY


# --- prices: intervals, tiers, transform_quantity ------------------------------------------------------

PRICE_CASES = [
    pytest.param({"unit_amount": 120_000, "interval": "year"}, 1, Decimal("100.0000"), id="annual-normalised"),
    pytest.param({"unit_amount": 30_000, "interval": "month", "interval_count": 3}, 1, Decimal("100.0000"),
                 id="interval-count-3"),
    pytest.param({"unit_amount": 1_000, "interval": "week"}, 1, Decimal("43.3333"), id="weekly-52-over-12"),
    pytest.param({"unit_amount": 100, "interval": "day"}, 1, Decimal("30.4167"), id="daily-365-over-12"),
    pytest.param({"unit_amount": 1_999, "interval": "month"}, 3, Decimal("59.9700"), id="per-unit-quantity"),
    pytest.param({"unit_amount": 100_000, "interval": "year", "interval_count": 2}, 1, Decimal("41.6667"),
                 id="two-yearly"),
    pytest.param({"tiers": [{"up_to": 5, "unit_amount": 1000}, {"up_to": 10, "unit_amount": 800},
                            {"up_to": None, "unit_amount": 500, "flat_amount": 700}],
                  "tiers_mode": "graduated"}, 12, Decimal("107.0000"), id="graduated-tiers"),
    pytest.param({"tiers": [{"up_to": 5, "unit_amount": 1000}, {"up_to": 10, "unit_amount": 800},
                            {"up_to": None, "unit_amount": 500, "flat_amount": 700}],
                  "tiers_mode": "volume"}, 12, Decimal("67.0000"), id="volume-tiers"),
    pytest.param({"tiers": [{"up_to": 5, "unit_amount": 1000, "flat_amount": 200},
                            {"up_to": None, "unit_amount": 800}],
                  "tiers_mode": "volume"}, 5, Decimal("52.0000"), id="volume-tiers-boundary"),
    pytest.param({"unit_amount": 1_000, "transform_quantity": {"divide_by": 5, "round": "up"}}, 12,
                 Decimal("30.0000"), id="transform-quantity-round-up"),
    pytest.param({"unit_amount": 1_000, "transform_quantity": {"divide_by": 5, "round": "down"}}, 12,
                 Decimal("20.0000"), id="transform-quantity-round-down"),
]


def price_case(w: World, terms: dict[str, Any], quantity: int) -> World:
    """A case of PRICE_CASES as its own account: ``quantity`` units of ``price_<account>`` (its own id, so that
    price_mrr(price_id, quantity) finds it alone in a store of every case) from T0."""
    base(w).price(f"price_{w.account_id}", "prod_seat", **terms)
    w.subscribe("sub_1", "cus_1", [("si_1", f"price_{w.account_id}", quantity)], T0)
    return w


@pytest.mark.parametrize(("terms", "quantity", "expected"), PRICE_CASES)
@one_store
def test_price_mrr(world: World, derive: Derive, terms: dict[str, Any], quantity: int, expected: Decimal) -> None:
    con, account = derive(price_case(world, terms, quantity), seen_at=month(1)), world.account_id
    got = customer_mrr_at(con, "cus_1", month(0, 1), account)
    assert got == expected, f"{account}: MRR {got}, expected {expected}"
    assert customer_mrr_at(con, "cus_1", T0 - 1, account) == 0, account
    # the macro the classifier uses gives the same undiscounted figure
    macro = con.execute("SELECT price_mrr(?, ?)", [f"price_{account}", quantity]).fetchone()
    assert macro is not None and round(macro[0], 4) == expected, f"{account}: price_mrr {macro}"


@one_store
def test_a_price_at_an_interval_the_rules_do_not_know_counts_zero_and_is_reported(world: World,
                                                                                    derive: Derive) -> None:
    """A recurring price at an interval design.md 4 does not normalise (another word, or an interval_count under
    1): its item counts zero MRR and data_quality names the price, while the subscription's other items count as
    usual. (Before, a `fortnight` price dropped its revenue without a word, and an interval_count of 0 stopped the
    recompute with DuckDB's division by zero.)"""
    base(world).price("price_ok", "prod_seat", 1_000)
    world.price("price_f", "prod_seat", 2_000)["recurring"]["interval"] = "fortnight"
    world.price("price_z", "prod_api", 3_000)["recurring"]["interval_count"] = 0
    world.price("price_w", "prod_api", 4_000)
    world.price("price_h", "prod_api", 3_000)
    world.subscribe("sub_1", "cus_1", [("si_ok", "price_ok", 1), ("si_f", "price_f", 1), ("si_z", "price_z", 1),
                                       ("si_w", "price_w", 1), ("si_h", "price_h", 1)], T0)
    world.objects["prices"]["price_w"]["recurring"]["interval_count"] = "twelve"  # (it counted as 1)
    world.objects["prices"]["price_h"]["recurring"]["interval_count"] = 2.5  # (it counted as 3)
    con = derive(world, seen_at=month(1))
    assert customer_mrr_at(con, "cus_1", month(0, 1)) == Decimal("10.0000")
    assert con.execute("SELECT object_id, detail FROM data_quality WHERE kind = 'unknown_interval' "
                       "ORDER BY object_id").fetchall() == [
        ("price_f", "price bills every 1 fortnight, not an interval the MRR rules know (day, week, month or year, "
                    "every 1 or more); its items count zero MRR"),
        ("price_h", "price bills every (not a whole number) month, not an interval the MRR rules know (day, week, "
                    "month or year, every 1 or more); its items count zero MRR"),
        ("price_w", "price bills every (not a whole number) month, not an interval the MRR rules know (day, week, "
                    "month or year, every 1 or more); its items count zero MRR"),
        ("price_z", "price bills every 0 month, not an interval the MRR rules know (day, week, month or year, "
                    "every 1 or more); its items count zero MRR")]


# --- metered usage ------------------------------------------------------------------------------------

def metered_world(w: World) -> World:
    base(w).price("price_m", "prod_api", None, usage_type="metered")
    w.price("price_s", "prod_seat", 1_000)
    w.subscribe("sub_1", "cus_1", [("si_s", "price_s", 1), ("si_m", "price_m", None)], T0)
    w.cycle("sub_1", month(1), usage={"si_m": 5_000})
    w.cycle("sub_1", month(2), usage={"si_m": 7_250})
    return w


@one_store
def test_metered_last_full_period(world: World, derive: Derive) -> None:
    """Metered MRR is the last invoiced full period's amount, from that invoice's creation, never back-dated."""
    con = derive(metered_world(world), seen_at=month(2, 3))
    assert customer_mrr_at(con, "cus_1", month(1) - 1) == Decimal("10.0000")
    assert customer_mrr_at(con, "cus_1", month(1)) == Decimal("60.0000")
    assert customer_mrr_at(con, "cus_1", month(2)) == Decimal("82.5000")
    rows = item_rows(con, "si_m")
    assert [r["valid_from"] for r in rows if r["mrr_original"] > 0] == [month(1), month(2)]
    assert all(r["quantity"] is None and r["usage_type"] == "metered" for r in rows)
    assert rows[-1]["source_invoice_id"] is not None


@one_store
def test_metered_zero_before_first_invoice(world: World, derive: Derive) -> None:
    con = derive(metered_world(world), seen_at=month(2, 3))
    first = item_rows(con, "si_m")[0]
    assert first["valid_from"] == T0 and first["mrr_original"] == 0


@one_store
def test_metered_excluded_by_setting(world: World, derive: Derive) -> None:
    con = derive(metered_world(world), seen_at=month(2, 3), include_metered=False)
    assert customer_mrr_at(con, "cus_1", month(2, 1)) == Decimal("10.0000")


@one_store
def test_metered_partial_period_ignored(world: World, derive: Derive) -> None:
    """A usage line for less than a whole interval (the first, partial period) does not set MRR."""
    base(world).price("price_m", "prod_api", None, usage_type="metered")
    world.subscribe("sub_1", "cus_1", [("si_m", "price_m", None)], month(0, 20))
    world.cycle("sub_1", month(1), usage={"si_m": 3_000})
    world.cycle("sub_1", month(2), usage={"si_m": 9_000})
    con = derive(world, seen_at=month(2, 1))
    assert customer_mrr_at(con, "cus_1", month(1, 1)) == 0
    assert customer_mrr_at(con, "cus_1", month(2)) == Decimal("90.0000")


@pytest.mark.parametrize("rest_from", ["period_start", "threshold"])
@one_store
def test_metered_usage_billed_at_a_threshold_counts_in_its_period(world: World, derive: Derive,
                                                                    rest_from: str) -> None:
    """A billing threshold invoices the usage so far (60.00 by day 12); the period's own invoice bills the rest
    (12.50), its line dated from the period's start or from the threshold: the period's usage is their sum,
    from the period's invoice on."""
    metered_world(world)
    world.threshold("sub_1", month(1, 12), {"si_m": 6_000}, period_start=month(1))
    world.cycle("sub_1", month(3), usage={"si_m": 1_000})
    # (metered_world's cycle at month 2 is replaced: it billed the whole period)
    second = next(i for i in world.objects["invoices"].values()
                  if i["billing_reason"] == "subscription_cycle" and i["created"] == month(2))
    rest = next(ln for ln in second["lines"]["data"] if ln["parent"]["subscription_item_details"]["subscription_item"]
                == "si_m")
    rest["amount"] = 1_250
    if rest_from == "threshold":
        rest["period"]["start"] = month(1, 12)
    con = derive(world, seen_at=month(3, 1))
    assert customer_mrr_at(con, "cus_1", month(1, 20)) == Decimal("60.0000")  # (never back-dated)
    assert customer_mrr_at(con, "cus_1", month(2)) == Decimal("82.5000")
    assert customer_mrr_at(con, "cus_1", month(3)) == Decimal("20.0000")
    assert item_rows(con, "si_m")[-2]["source_invoice_id"] == second["id"]


@one_store
def test_metered_threshold_resetting_the_cycle_ends_its_period(world: World, derive: Derive) -> None:
    """With reset_billing_cycle_anchor the threshold invoice ends the period (a short one, not counted); the
    next period starts then and its line spans a whole interval alone: the threshold's usage is not added."""
    base(world).price("price_m", "prod_api", None, usage_type="metered")
    world.subscribe("sub_1", "cus_1", [("si_m", "price_m", None)], T0)
    world.cycle("sub_1", month(1), usage={"si_m": 5_000})
    world.threshold("sub_1", month(1, 12), {"si_m": 6_000}, period_start=month(1))
    world.cycle("sub_1", month(2, 12), usage={"si_m": 4_000})
    con = derive(world, seen_at=month(2, 13))
    assert customer_mrr_at(con, "cus_1", month(2)) == Decimal("50.0000")
    assert customer_mrr_at(con, "cus_1", month(2, 12)) == Decimal("40.0000")


# --- discounts ----------------------------------------------------------------------------------------

def discounted(w: World, coupon: dict[str, Any], *, item_level: bool = False, start: int = T0) -> World:
    base(w).price("price_a", "prod_seat", 1_000)
    w.price("price_b", "prod_api", 5_000)
    w.coupon("co_1", **coupon)
    sub = w.subscribe("sub_1", "cus_1", [("si_a", "price_a", 4), ("si_b", "price_b", 1)], T0)
    d = w.discount("co_1", start, customer="cus_1", subscription="sub_1",
                   subscription_item="si_a" if item_level else None)
    if item_level:
        sub["items"]["data"][0]["discounts"] = [d["id"]]
    else:
        sub["discounts"] = [d["id"]]
    return w


@one_store
def test_forever_coupon(world: World, derive: Derive) -> None:
    con = derive(discounted(world, {"percent_off": 25, "duration": "forever"}), seen_at=month(6))
    assert customer_mrr_at(con, "cus_1", month(5)) == Decimal("67.5000")
    row = item_rows(con, "si_a")[0]
    assert row["mrr_undiscounted"] == Decimal("40") and row["discount_factor"] == Decimal("0.75")


def test_a_deleted_coupons_discounts_keep_running(world: World, derive: Derive) -> None:
    """Deleting a coupon stops new redemptions only; the discounts already given keep taking their part off.
    (The deletion came as a stub and the derived terms left the coupon out: MRR 90.00 for all of history.)"""
    w = discounted(world, {"percent_off": 25, "duration": "forever"})
    assert customer_mrr_at(derive(w, seen_at=month(3)), "cus_1", month(2)) == Decimal("67.5000")
    w.objects["coupons"]["co_1"] = {"id": "co_1", "object": "coupon", "deleted": True}
    con = derive(w, seen_at=month(6))
    assert customer_mrr_at(con, "cus_1", month(2)) == customer_mrr_at(con, "cus_1", month(5)) == Decimal("67.5000")
    assert con.execute("SELECT count(*) FROM data_quality WHERE kind = 'missing_coupon'").fetchone() == (0,)


@one_store
def test_a_discount_in_the_shape_before_api_version_2025_09_30_counts(world: World, derive: Derive) -> None:
    """An event keeps the API version it was made in, and before 2025-09-30 a discount named its coupon as a whole
    object in `coupon` (not `source.coupon`): a discount whose last stored copy has that shape still takes its
    part off, with its coupon's terms, and is no `missing_coupon` row. (It counted for nothing before.)"""
    w = discounted(world, {"percent_off": 25, "duration": "forever"})
    (d,) = w.objects["discounts"].values()
    del d["source"]
    d["coupon"] = dict(w.objects["coupons"]["co_1"])
    del w.objects["coupons"]["co_1"]  # (the coupon's terms then come from the discount alone)
    con = derive(w, seen_at=month(3))
    assert customer_mrr_at(con, "cus_1", month(2)) == Decimal("67.5000")
    assert con.execute("SELECT count(*) FROM data_quality WHERE kind = 'missing_coupon'").fetchone() == (0,)

def test_a_discount_an_item_names_but_the_store_lacks_is_recorded(world: World, derive: Derive) -> None:
    """A discount on one item that came as an id (a store synced before the items' discounts were expanded) is
    not stored, so the item's MRR leaves it out: a `missing_discount` row names it and says how to fetch it.
    The same item with the discount stored counts it and has no row."""
    w = discounted(world, {"percent_off": 25, "duration": "forever"}, item_level=True)
    (d,) = w.objects["discounts"].values()
    del w.objects["discounts"][d["id"]]
    con = derive(w, seen_at=month(3))
    assert customer_mrr_at(con, "cus_1", month(2)) == Decimal("90.0000")
    rows = con.execute("SELECT kind, object_type, object_id, related_id, CAST(epoch(moment) AS BIGINT), detail "
                       "FROM data_quality").fetchall()
    assert [r[:5] for r in rows] == [("missing_discount", "subscription_item", "si_a", d["id"], T0)]
    assert "sync --full" in rows[0][5]
    w.objects["discounts"][d["id"]] = d
    con = derive(w, seen_at=month(3))
    assert customer_mrr_at(con, "cus_1", month(2)) == Decimal("80.0000")
    assert con.execute("SELECT count(*) FROM data_quality").fetchone() == (0,)

@one_store
def test_repeating_coupon_ends(world: World, derive: Derive) -> None:
    con = derive(discounted(world, {"percent_off": 20, "duration": "repeating", "duration_in_months": 3}),
                 seen_at=month(6))
    assert customer_mrr_at(con, "cus_1", month(3) - 1) == Decimal("72.0000")
    assert customer_mrr_at(con, "cus_1", month(3)) == Decimal("90.0000")


@one_store
def test_discount_starting_later(world: World, derive: Derive) -> None:
    con = derive(discounted(world, {"percent_off": 50, "duration": "forever"}, start=month(2, 5)),
                 seen_at=month(6))
    assert customer_mrr_at(con, "cus_1", month(2, 5) - 1) == Decimal("90.0000")
    assert customer_mrr_at(con, "cus_1", month(2, 5)) == Decimal("45.0000")


@one_store
def test_once_coupon_no_mrr(world: World, derive: Derive) -> None:
    con = derive(discounted(world, {"percent_off": 50, "duration": "once"}), seen_at=month(2))
    assert customer_mrr_at(con, "cus_1", month(0, 1)) == Decimal("90.0000")


@one_store
def test_item_level_discount_only_that_item(world: World, derive: Derive) -> None:
    con = derive(discounted(world, {"percent_off": 50, "duration": "forever"}, item_level=True), seen_at=month(2))
    assert customer_mrr_at(con, "cus_1", month(0, 1)) == Decimal("70.0000")
    assert item_rows(con, "si_b")[0]["mrr_original"] == Decimal("50")


@one_store
def test_a_subscriptions_own_discount_overrides_the_customers(world: World, derive: Derive) -> None:
    """A customer-wide discount applies to every subscription of the customer that has no discount of its own;
    Stripe bills a subscription's own discount instead of it, not on top of it. (Both used to be multiplied:
    81.00 where Stripe bills 90.00.)"""
    base(world).price("price_a", "prod_seat", 10_000)
    world.customer("cus_2")
    world.coupon("co_cust", percent_off=20)
    world.coupon("co_sub", percent_off=10)
    for cus in ("cus_1", "cus_2"):
        d = world.discount("co_cust", T0, customer=cus)
        world.objects["customers"][cus]["discount"] = d
    world.subscribe("sub_1", "cus_1", [("si_1", "price_a", 1)], T0)
    world.subscribe("sub_2", "cus_2", [("si_2", "price_a", 1)], T0)
    own = world.discount("co_sub", month(1, 10), customer="cus_1", subscription="sub_1", did="di_own")
    world.update("sub_1", month(1, 10), discounts=[own["id"]])
    con = derive(world, seen_at=month(3))
    assert customer_mrr_at(con, "cus_1", month(1, 9)) == Decimal("80.0000")
    assert customer_mrr_at(con, "cus_1", month(1, 10)) == Decimal("90.0000")
    assert item_rows(con, "si_1")[-1]["discount_ids"] == ["di_own"]
    # (the other customer, with no subscription discount, keeps the customer's)
    assert customer_mrr_at(con, "cus_2", month(2)) == Decimal("80.0000")
    moves = con.execute("SELECT customer_id, movement, mrr_delta FROM mrr_movements WHERE movement = 'discount'"
                        ).fetchall()
    assert moves == [("cus_1", "discount", Decimal("10.0000"))]


@one_store
def test_a_coupon_restricted_to_some_products_discounts_only_their_items(world: World, derive: Derive) -> None:
    """A coupon's applies_to.products limits it to the items of those products: 50% off the seats (40.00 of
    them) leaves the API item (50.00) whole. (Every item used to be discounted: 45.00 where Stripe bills 70.00.)"""
    con = derive(discounted(world, {"percent_off": 50, "duration": "forever", "products": ["prod_seat"]}),
                 seen_at=month(2))
    assert customer_mrr_at(con, "cus_1", month(0, 1)) == Decimal("70.0000")
    assert item_rows(con, "si_a")[0]["mrr_original"] == Decimal("20")
    b = item_rows(con, "si_b")[0]
    assert b["mrr_original"] == Decimal("50") and b["discount_ids"] is None


@one_store
def test_a_subscriptions_own_restricted_discount_still_overrides_the_customers(world: World,
                                                                               derive: Derive) -> None:
    """A subscription with a discount of its own is billed without the customer's even where its own is restricted
    to other products: the seats (40.00) are not discounted, the API item (50.00) is halved."""
    discounted(world, {"percent_off": 50, "duration": "forever", "products": ["prod_api"]})
    world.coupon("co_cust", percent_off=20)
    world.objects["customers"]["cus_1"]["discount"] = world.discount("co_cust", T0, customer="cus_1")
    con = derive(world, seen_at=month(2))
    assert customer_mrr_at(con, "cus_1", month(0, 1)) == Decimal("65.0000")
    assert item_rows(con, "si_a")[0]["mrr_original"] == Decimal("40")


ONE_INVOICE_COUPONS = {"percent": {"percent_off": 20}, "amount-equal-to-the-mrr": {"amount_off": 10_000, "currency": "usd"}}
ONE_INVOICE_FLAGS = {"listed": False, "flagged-deleted": True}


def one_invoice_discount(w: World, coupon: dict[str, Any], flagged: bool) -> dict[str, Any]:
    """10 seats at 10.00 from T0, renewed monthly; a forever ``coupon`` applied to month 2's invoice alone
    (``flagged``: the discount flagged deleted since). Returns the discount."""
    w.customer("cus_1")
    w.product("prod_seat", unit_label="seat")
    w.price("price_a", "prod_seat", 1_000)
    w.subscribe("sub_1", "cus_1", [("si_a", "price_a", 10)], T0)
    w.cycle("sub_1", month(1))
    inv = w.cycle("sub_1", month(2))
    w.coupon("co_bill", duration="forever", **coupon)
    d = w.discount("co_bill", month(2) + 1800, customer="cus_1")
    d["invoice"] = inv["id"]
    w.cycle("sub_1", month(3))
    if flagged:
        d["deleted"] = True
    return d


@pytest.mark.parametrize("coupon", ONE_INVOICE_COUPONS)
@pytest.mark.parametrize("flagged", ONE_INVOICE_FLAGS)
@one_store
def test_a_discount_on_one_invoice_is_no_mrr_discount(world: World, derive: Derive, coupon: str, flagged: str
                                                      ) -> None:
    """A forever coupon applied to one invoice (the discount names the invoice, no subscription or item) takes
    money off that bill alone: the MRR stays 100.00, with no `discount` movements (and an amount off equal to the
    MRR no cancellation and reactivation). It used to count as the customer's discount from that invoice on."""
    d = one_invoice_discount(world, ONE_INVOICE_COUPONS[coupon], ONE_INVOICE_FLAGS[flagged])
    con, account = derive(world, seen_at=month(3, 5)), world.account_id
    assert [customer_mrr_at(con, "cus_1", month(n, 1), account) for n in range(4)] == [Decimal("100.0000")] * 4, (
        account)
    assert con.execute("SELECT movement FROM mrr_movements WHERE customer_id = 'cus_1' AND account_id = ?",
                       [account]).fetchall() == [("new",)], account
    assert con.execute("SELECT kind FROM data_quality WHERE object_id = ? AND account_id = ?",
                       [d["id"], account]).fetchall() == [], account


@one_store
def test_a_discount_put_on_and_taken_off_by_its_own_events_names_them(world: World, derive: Derive) -> None:
    """A promotion code's 10% forever discount on the customer, by `customer.discount.created` on day 5 and
    `customer.discount.deleted` on day 15: its two `discount` rows (-2.50, +2.50) name those events (design.md 5:
    every movement keeps the Stripe ids that caused it). They named none."""
    simple(world)
    world.coupon("co_fv", percent_off=10, duration="forever")
    d = world.discount("co_fv", month(0, 5), customer="cus_1", did="di_promo")
    d["promotion_code"] = "promo_1"
    obj = {**d, "source": {"type": "coupon", "coupon": dict(world.objects["coupons"]["co_fv"])}}
    created = world.event("customer.discount.created", month(0, 5), obj)
    deleted = world.event("customer.discount.deleted", month(0, 15), obj)
    d["deleted"] = True  # (as a sync leaves it: flagged deleted, its last copy kept)
    con = derive(world, seen_at=month(1, 20))
    rows = con.execute("SELECT epoch(occurred_at), mrr_delta, source_event_id FROM mrr_movements "
                       "WHERE movement = 'discount' ORDER BY occurred_at").fetchall()
    assert rows == [(month(0, 5), Decimal("-5.0000"), created["id"]), (month(0, 15), Decimal("5.0000"), deleted["id"])]


@one_store
def test_a_restricted_amount_off_is_shared_among_its_products_items_only(world: World, derive: Derive) -> None:
    """An amount off restricted to some products is split among the items of those products (in proportion to
    their MRR), and the other items keep their whole MRR."""
    base(world).price("price_a", "prod_seat", 1_000)
    world.price("price_a2", "prod_seat", 3_000)
    world.price("price_b", "prod_api", 5_000)
    world.coupon("co_1", amount_off=2_000, currency="usd", products=["prod_seat"])
    sub = world.subscribe("sub_1", "cus_1", [("si_a", "price_a", 1), ("si_a2", "price_a2", 1),
                                             ("si_b", "price_b", 1)], T0)
    sub["discounts"] = [world.discount("co_1", T0, customer="cus_1", subscription="sub_1")["id"]]
    con = derive(world, seen_at=month(2))
    assert customer_mrr_at(con, "cus_1", month(0, 1)) == Decimal("70.0000")
    assert item_rows(con, "si_a")[0]["mrr_original"] == Decimal("5")
    assert item_rows(con, "si_a2")[0]["mrr_original"] == Decimal("15")
    assert item_rows(con, "si_b")[0]["mrr_original"] == Decimal("50")


@one_store
def test_amount_off_shared_and_capped(world: World, derive: Derive) -> None:
    con = derive(discounted(world, {"amount_off": 1_500, "currency": "usd", "duration": "forever"}),
                 seen_at=month(2))
    assert customer_mrr_at(con, "cus_1", month(0, 1)) == Decimal("75.0000")
    parts = [item_rows(con, i)[0]["mrr_original"] for i in ("si_a", "si_b")]
    assert sum(parts) == Decimal("75")


@one_store
def test_amount_off_share_follows_the_other_items(world: World, derive: Derive) -> None:
    """A shared amount_off is split in proportion to the items' MRR: when one item changes, every item's
    share changes with it (the other item gets a new row then although nothing of its own changed)."""
    discounted(world, {"amount_off": 1_500, "currency": "usd", "duration": "forever"})
    world.update("sub_1", month(1, 10), items=[("si_a", "price_a", 8), ("si_b", "price_b", 1)])
    con = derive(world, seen_at=month(3))
    assert customer_mrr_at(con, "cus_1", month(1, 9)) == Decimal("75.0000")
    assert customer_mrr_at(con, "cus_1", month(1, 10)) == Decimal("115.0000")
    b = item_rows(con, "si_b")
    assert [r["valid_from"] for r in b] == [T0, month(1, 10)]
    for at in (month(1, 9), month(1, 10)):
        rows = [r for i in ("si_a", "si_b") for r in item_rows(con, i)
                if r["valid_from"] <= at and (r["valid_to"] is None or at < r["valid_to"])]
        assert sum(r["mrr_original"] for r in rows) == customer_mrr_at(con, "cus_1", at)


@one_store
def test_other_items_change_leaves_an_item_unchanged(world: World, derive: Derive) -> None:
    """Without a shared amount_off, an item's rows do not break where another item of its subscription
    changes."""
    discounted(world, {"percent_off": 10, "duration": "forever"})
    world.update("sub_1", month(1, 10), items=[("si_a", "price_a", 8), ("si_b", "price_b", 1)])
    con = derive(world, seen_at=month(3))
    assert [r["valid_from"] for r in item_rows(con, "si_b")] == [T0]
    assert [r["valid_from"] for r in item_rows(con, "si_a")] == [T0, month(1, 10)]
    assert customer_mrr_at(con, "cus_1", month(1, 10)) == Decimal("117.0000")


@one_store
def test_amount_off_never_below_zero(world: World, derive: Derive) -> None:
    con = derive(discounted(world, {"amount_off": 50_000, "currency": "usd", "duration": "forever"}),
                 seen_at=month(2))
    assert customer_mrr_at(con, "cus_1", month(0, 1)) == 0
    # (the case's own account holds the derived items the zero is made of)
    assert len(item_rows(con, "si_a")) == 1, item_rows(con, "si_a")


@one_store
def test_discount_removed_early_by_event(world: World, derive: Derive) -> None:
    discounted(world, {"percent_off": 10, "duration": "forever"})
    world.update("sub_1", month(1, 10), discounts=[])
    con = derive(world, seen_at=month(3))
    assert customer_mrr_at(con, "cus_1", month(1, 10) - 1) == Decimal("81.0000")
    assert customer_mrr_at(con, "cus_1", month(1, 10)) == Decimal("90.0000")


FOREVER_EVIDENCE = ["removal-event", "next-invoice", "only-the-sync", "only-the-sync-clock-ahead"]
ITEM_LINES_EVIDENCE = ["lines-list-it-expanded", "lines-list-it-by-id", "only-the-sync"]


def forever_discount_removed(w: World, evidence: str) -> tuple[int, int]:
    """sub_1's 10% forever discount (4 x 10.00 + 50.00 = 90.00, 81.00 with it) taken off on month(1, 10), as
    ``evidence`` says. Returns (the removal, the sync that found it gone, in Stripe's clock)."""
    discounted(w, {"percent_off": 10, "duration": "forever"})  # 4 x 10.00 + 50.00 = 90.00, 81.00 with it
    d = next(iter(w.objects["discounts"]))
    for inv in w.objects["invoices"].values():
        inv["discounts"] = [d]
    w.objects["invoices"][w.cycle("sub_1", month(1))["id"]]["discounts"] = [d]
    removed = month(1, 10)
    w.update("sub_1", removed, discounts=[], event=evidence == "removal-event")
    if evidence == "next-invoice":
        w.cycle("sub_1", month(2))  # lists no discount
    return removed, month(3) if evidence != "removal-event" else month(2)


def load_flagged(w: World, con: duckdb.DuckDBPyConnection, *, seen_at: int, events: bool | int,
                 stripes_clock: int | None = None) -> None:
    """``w`` loaded (not recomputed: other accounts may be loaded in the store first) by a full sync at ``seen_at``
    (this machine's clock; ``stripes_clock``: Stripe's then, ahead of it) that flags its discount deleted:
    ``derive(..., load=load_flagged)``."""
    w.load(con, seen_at=seen_at, events=events)
    at = dt.datetime.fromtimestamp(seen_at, tz=dt.UTC)
    mark_unlisted_children(con, w.account_id, at, at, server_time=stripes_clock)
    if stripes_clock is not None:  # (the listing's version, and the server's time the sync recorded)
        con.execute("UPDATE subscriptions SET version = ? WHERE account_id = ?", [stripes_clock, w.account_id])
        record_stripes_clock(con, w.account_id, stripes_clock)
    assert con.execute("SELECT deleted FROM discounts WHERE account_id = ?",
                       [w.account_id]).fetchall() == [(True,)], w.account_id


def item_discount_removed_before_the_events(w: World, evidence: str) -> dict[str, Any]:
    """si_a's 50% forever discount (70.00 with it, 90.00 without) taken off before the events, its lines listing it
    as ``evidence`` says. Returns the discount."""
    discounted(w, {"percent_off": 50, "duration": "forever"}, item_level=True)  # 70.00 with it, 90.00 without
    (d,) = w.objects["discounts"].values()
    w.cycle("sub_1", month(1))
    for inv in w.objects["invoices"].values():
        for line in inv["lines"]["data"]:
            if line["parent"]["subscription_item_details"]["subscription_item"] == "si_a":
                line["discounts"] = [d["id"] if evidence == "lines-list-it-by-id" else dict(d)]
    w.objects["subscriptions"]["sub_1"]["items"]["data"][0]["discounts"] = []  # taken off si_a, no event
    if evidence != "only-the-sync":
        w.cycle("sub_1", month(2))  # bills si_a without it
    return d


@pytest.mark.parametrize("evidence", FOREVER_EVIDENCE)
@one_store
def test_removed_forever_discount_counts_until_it_went(world: World, derive: Derive, evidence: str) -> None:
    """A forever discount taken off a subscription is flagged deleted by the next full sync (it is no longer
    on its owner) and has no end of its own: it still reduced MRR from its start until it went. That moment is
    its removal event when the events hold it; before them, its owner's first invoice without it after the
    last one listing it; with neither, the sync that found it gone, which data_quality reports: in Stripe's clock
    when it runs ahead of this machine's (a sandbox advanced, a test clock; before, the discount ended at this
    machine's time of the sync, on its second day here)."""
    removed, seen = forever_discount_removed(world, evidence)
    ahead = evidence == "only-the-sync-clock-ahead"
    here = T0 + 2 * DAY if ahead else seen  # this machine's clock
    # the events begin at the removal when they hold it, after every invoice when not
    store = derive(world, seen_at=here, events=True if evidence == "removal-event" else month(2, 15),
                   load=partial(load_flagged, stripes_clock=seen if ahead else None))
    account = world.account_id
    went = {"removal-event": removed, "next-invoice": month(2)}.get(evidence, seen)
    assert customer_mrr_at(store, "cus_1", T0 + DAY, account) == Decimal("81.0000"), account
    assert customer_mrr_at(store, "cus_1", went - 1, account) == Decimal("81.0000"), account
    assert customer_mrr_at(store, "cus_1", went, account) == Decimal("90.0000"), account
    moves = store.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta FROM mrr_movements "
                          "WHERE account_id = ? ORDER BY occurred_at, mrr_delta", [account]).fetchall()
    # (the discount's end on each item: 10% of 40.00 and of 50.00)
    assert moves == [(T0, "new", Decimal("81.0000")), (went, "discount", Decimal("4.0000")),
                     (went, "discount", Decimal("5.0000"))], (account, moves)
    dq = store.execute("SELECT kind, CAST(epoch(moment) AS BIGINT) FROM data_quality WHERE account_id = ?",
                       [account]).fetchall()
    assert dq == ([] if evidence == "removal-event" else [("discount_end_estimated", went)]), (account, dq)


@pytest.mark.parametrize("evidence", ITEM_LINES_EVIDENCE)
@one_store
def test_removed_item_discount_counts_until_its_items_lines_bill_without_it(world: World, derive: Derive,
                                                                             evidence: str) -> None:
    """A forever discount on one item, taken off before the events begin and flagged deleted by the next full sync
    (no longer on its item): Stripe bills it on that item's invoice lines (line.discounts, expanded by the sync or
    an id), not among the invoice's discounts, so its end is the first invoice after the last whose line for the
    item lists it that bills the item without it, as for a subscription's discount by its invoices. With no such
    invoice, the sync that found it gone. (It ended at the sync always, and data_quality said no invoice showed
    when.)"""
    d = item_discount_removed_before_the_events(world, evidence)
    seen = month(3)
    store, account = derive(world, seen_at=seen, events=False, load=load_flagged), world.account_id
    went = seen if evidence == "only-the-sync" else month(2)
    assert customer_mrr_at(store, "cus_1", T0 + DAY, account) == Decimal("70.0000"), account
    assert customer_mrr_at(store, "cus_1", went - 1, account) == Decimal("70.0000"), account
    assert customer_mrr_at(store, "cus_1", went, account) == Decimal("90.0000"), account
    moves = store.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, subscription_item_id, mrr_delta "
                          "FROM mrr_movements WHERE account_id = ? ORDER BY occurred_at", [account]).fetchall()
    assert moves == [(T0, "new", "si_b", Decimal("70.0000")), (went, "discount", "si_a", Decimal("20.0000"))], (
        account, moves)
    (row,) = store.execute("SELECT kind, object_id, CAST(epoch(moment) AS BIGINT), detail FROM data_quality "
                           "WHERE account_id = ?", [account]).fetchall()
    assert row[:3] == ("discount_end_estimated", d["id"], went), account
    assert "item si_a" in row[3], account
    assert ("the sync that found it gone" in row[3]) == (evidence == "only-the-sync"), account


ITEM_DISCOUNT_EVIDENCE = ["update-event", "update-event-expanded", "update-event-then-a-renewal",
                          "repeating-taken-off-early", "update-and-discount-event", "list-cut-short"]


def item_discount_taken_off(w: World, evidence: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """si_a's 50% discount (70.00 with it, 90.00 without) taken off by an update on month(1, 10), the events
    kept from month(1, 5), as ``evidence`` says. Returns (the discount's own deleted event or None, the update)."""
    coupon = {"percent_off": 50, "duration": "forever"}
    if evidence == "repeating-taken-off-early":
        coupon = {"percent_off": 50, "duration": "repeating", "duration_in_months": 6}  # (its end: month 6)
    discounted(w, coupon, item_level=True)  # 70.00 with it, 90.00 without
    (d,) = w.objects["discounts"].values()
    sub = w.objects["subscriptions"]["sub_1"]
    if evidence == "update-event-expanded":
        sub["items"]["data"][0]["discounts"] = [dict(d)]
    w.cycle("sub_1", month(1))
    for inv in w.objects["invoices"].values():
        for line in inv["lines"]["data"]:
            if line["parent"]["subscription_item_details"]["subscription_item"] == "si_a":
                line["discounts"] = [d["id"]]
    w.update("sub_1", month(1, 5), metadata={"team": "north"})  # (an event whose item list shows it on si_a)
    removed = month(1, 10)
    before = copy.deepcopy(sub)
    sub["items"]["data"][0]["discounts"] = []  # taken off si_a
    update = w.event("customer.subscription.updated", removed, sub, before)
    if evidence == "list-cut-short":  # (both lists: the state after and previous_attributes')
        for items in (update["data"]["object"]["items"], update["data"]["previous_attributes"]["items"]):
            items["data"], items["has_more"] = items["data"][1:], True
    deleted = w.event("customer.discount.deleted", removed, d) if evidence == "update-and-discount-event" else None
    if evidence in ("update-event-then-a-renewal", "list-cut-short"):
        w.cycle("sub_1", month(2))  # bills si_a without it
    return deleted, update


@pytest.mark.parametrize("evidence", ITEM_DISCOUNT_EVIDENCE)
@one_store
def test_item_discount_removed_inside_the_events_ends_at_the_update_that_took_it_off(world: World, derive: Derive,
                                                                                       evidence: str) -> None:
    """A forever discount on one item taken off inside the events by a subscription update (the item's
    `discounts` no longer list it) with no customer.discount.deleted event (Stripe's reference does not say it
    sends one for an item's discount), then flagged deleted by the next full sync: it ended at that update, and the
    MRR from there to the sync is the undiscounted one. (It ended at the item's next invoice without it, or at the
    sync.) With the discount's own event, its end stays that event's. An item list cut short (has_more) that
    leaves the item out says nothing of it: the item's invoice lines date the end, as before the events. (A
    repeating discount taken off before its own end ended at its end.)"""
    deleted, update = item_discount_taken_off(world, evidence)
    store = derive(world, seen_at=month(3), events=month(1, 5), load=load_flagged)
    account = world.account_id
    removed = month(1, 10)
    went = month(2) if evidence == "list-cut-short" else removed
    spans = store.execute("SELECT CAST(epoch(valid_to) AS BIGINT), removal_event_id, end_dated_by "
                          "FROM derived_discount_spans WHERE account_id = ?", [account]).fetchall()
    assert spans == ([(went, None, "invoice")] if evidence == "list-cut-short"
                     else [(went, (deleted or update)["id"], None)]), account
    assert customer_mrr_at(store, "cus_1", month(1, 5), account) == Decimal("70.0000"), account
    assert customer_mrr_at(store, "cus_1", went - 1, account) == Decimal("70.0000"), account
    assert customer_mrr_at(store, "cus_1", went, account) == Decimal("90.0000"), account
    assert customer_mrr_at(store, "cus_1", month(2, 15), account) == Decimal("90.0000"), account
    moves = store.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, subscription_item_id, mrr_delta, "
                          "source_event_id FROM mrr_movements WHERE account_id = ? ORDER BY occurred_at",
                          [account]).fetchall()
    assert [m[:4] for m in moves] == [(T0, "new", "si_b", Decimal("70.0000")),
                                      (went, "discount", "si_a", Decimal("20.0000"))], (account, moves)
    # (the movement's source: the subscription's event that changed the item)
    assert moves[1][4] == (None if evidence == "list-cut-short" else update["id"]), account
    dq = store.execute("SELECT kind, CAST(epoch(moment) AS BIGINT), detail FROM data_quality WHERE account_id = ?",
                       [account]).fetchall()
    assert [r[:2] for r in dq] == ([("discount_end_estimated", went)] if evidence == "list-cut-short" else []), (
        account)
    assert all("item si_a and no stored event shows when" in r[2] for r in dq), account


def test_a_canceled_subscriptions_removed_discount_counts_to_the_end(world: World, store: Any) -> None:
    """A canceled subscription's forever discount, flagged deleted once it is gone from its owner, still reduced
    the MRR the cancellation takes; when it ended is no question then, so data_quality stays empty."""
    discounted(world, {"percent_off": 10, "duration": "forever"})
    world.cancel("sub_1", month(2))
    world.objects["subscriptions"]["sub_1"]["discounts"] = []
    at = dt.datetime.fromtimestamp(month(3), tz=dt.UTC)
    world.load(store, seen_at=month(3))
    mark_unlisted_children(store, world.account_id, at, at)
    assert store.execute("SELECT deleted FROM discounts").fetchall() == [(True,)]
    recompute(store, make_settings())
    assert customer_mrr_at(store, "cus_1", month(2) - 1) == Decimal("81.0000")
    assert store.execute("SELECT movement, mrr_delta FROM mrr_movements ORDER BY occurred_at").fetchall() == [
        ("new", Decimal("81.0000")), ("cancellation", Decimal("-81.0000"))]
    assert store.execute("SELECT count(*) FROM data_quality").fetchall() == [(0,)]


# --- status -------------------------------------------------------------------------------------------

def simple(w: World, **kw: Any) -> World:
    base(w).price("price_a", "prod_seat", 2_500)
    w.subscribe("sub_1", "cus_1", [("si_1", "price_a", 2)], T0, **kw)
    return w


@one_store
def test_trial_counts_zero(world: World, derive: Derive) -> None:
    simple(world, trial_end=T0 + 14 * DAY)
    world.update("sub_1", T0 + 14 * DAY, status="active")
    con = derive(world, seen_at=month(2))
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == 0
    assert customer_mrr_at(con, "cus_1", T0 + 14 * DAY) == Decimal("50.0000")


@one_store
def test_trial_from_snapshot_dates_without_events(world: World, derive: Derive) -> None:
    simple(world, trial_end=T0 + 14 * DAY)
    world.update("sub_1", T0 + 14 * DAY, status="active")
    world.cycle("sub_1", T0 + 14 * DAY)  # (the trial's end is invoiced at once)
    world.cycle("sub_1", add_months(T0 + 14 * DAY, 1))
    con = derive(world, seen_at=month(1, 16), events=False)
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == 0
    assert customer_mrr_at(con, "cus_1", T0 + 14 * DAY) == Decimal("50.0000")


def trial_into_pause(world: World, then: str) -> None:
    """A 14-day trial that ends into a pause, then resumed on day 34 (and billed monthly from then) or canceled
    on day 40 while paused."""
    simple(world, trial_end=T0 + 14 * DAY)
    world.update("sub_1", T0 + 14 * DAY, status="paused")
    if then == "resumed":
        world.update("sub_1", T0 + 34 * DAY, status="active")
        world.cycle("sub_1", T0 + 34 * DAY)
        world.cycle("sub_1", add_months(T0 + 34 * DAY, 1))
    else:
        world.cancel("sub_1", T0 + 40 * DAY)


TRIAL_PAUSE_THEN = ["resumed", "canceled"]


@pytest.mark.parametrize("events", [True, False], ids=["events", "invoices-and-dates"])
@pytest.mark.parametrize("then", TRIAL_PAUSE_THEN)
@one_store
def test_a_trial_that_ended_into_a_pause_counts_zero_until_resumed(world: World, derive: Derive, events: bool,
                                                                    then: str) -> None:
    """A trial that ends without a payment method pauses the subscription (trial_settings.end_behavior
    .missing_payment_method = pause): no invoice until it is resumed, and it counts zero meanwhile. Without events
    the pause shows as a trial's end with no invoice made within a day: paused until the next invoice (the
    resume's), or until the subscription ended."""
    trial_into_pause(world, then)
    con, account = derive(world, seen_at=month(2, 10), events=events), world.account_id
    assert item_rows(con, "si_1", account), f"{account}: no item rows"
    assert customer_mrr_at(con, "cus_1", T0 + 20 * DAY, account) == 0, account
    moves = con.execute("SELECT movement, CAST(epoch(occurred_at) AS BIGINT) FROM mrr_movements WHERE account_id = ?",
                        [account]).fetchall()
    if then == "resumed":
        assert customer_mrr_at(con, "cus_1", T0 + 34 * DAY, account) == Decimal("50.0000"), account
        assert moves == [("new", T0 + 34 * DAY)], account
    else:
        assert customer_mrr_at(con, "cus_1", T0 + 38 * DAY, account) == 0, account
        assert moves == [], account


@pytest.mark.parametrize("then", ["resumed", "canceled"])
def test_a_trial_pause_read_with_stripes_clock_ahead_of_this_machines(world: World, store: duckdb.DuckDBPyConnection,
                                                                     then: str) -> None:
    """The trial pause of the test above, from invoices and dates alone, synced while Stripe's clock (a sandbox
    advanced, a test clock) ran ahead of this machine's: the subscription's `last_seen_at` (this machine's clock)
    is before its trial ended, and the sync recorded Stripe's clock. The resume's invoice, or its end, shows the
    day after the trial's end passed: paused until then. (Read by this machine's clock, the trial's end counted
    as paying: MRR 50.00 from the trial's end, `new` then.)"""
    trial_into_pause(world, then)
    world.load(store, seen_at=T0 + 5 * DAY, events=False)  # this machine's clock
    record_stripes_clock(store, world.account_id, month(2, 10))
    recompute(store, make_settings())
    assert customer_mrr_at(store, "cus_1", T0 + 20 * DAY) == 0
    moves = store.execute("SELECT movement, CAST(epoch(occurred_at) AS BIGINT) FROM mrr_movements").fetchall()
    assert moves == ([("new", T0 + 34 * DAY)] if then == "resumed" else [])


@one_store
def test_a_trial_with_no_invoice_stored_is_not_read_as_a_pause(world: World, derive: Derive) -> None:
    """The pause is read from a trial's end with no invoice after it only where the store holds some invoice of the
    subscription: without any (invoices not synced), its status steps claim no pause they cannot see."""
    simple(world, trial_end=T0 + 14 * DAY, invoice=False)
    world.update("sub_1", T0 + 14 * DAY, status="active")
    con = derive(world, seen_at=month(2), events=False)
    steps = con.execute("SELECT status, CAST(epoch(moment) AS BIGINT) FROM derived_sub_status_steps "
                        "ORDER BY moment, ord").fetchall()
    assert steps[:2] == [("trialing", T0), ("active", T0 + 14 * DAY)]


@pytest.mark.parametrize("events", [True, False], ids=["events", "invoices-and-dates"])
@one_store
def test_a_trial_granted_to_a_paying_subscription_counts_zero(world: World, derive: Derive, events: bool) -> None:
    """A trial given to a subscription already paying (trial_end set on an update: status trialing, trial_start
    the update's moment) counts zero while it lasts, as any trial does. Without events it is read from the
    subscription's trial_start and trial_end, which keep the latest trial."""
    simple(world)
    world.cycle("sub_1", month(1))
    world.update("sub_1", month(1, 10), status="trialing", trial_start=month(1, 10), trial_end=month(2, 10))
    world.invoice_for("sub_1", month(1, 10), "subscription_update", period_start=month(1, 10))  # (0.00 lines)
    world.update("sub_1", month(2, 10), status="active")
    world.cycle("sub_1", month(2, 10))
    con = derive(world, seen_at=month(3), events=events)
    assert customer_mrr_at(con, "cus_1", month(1, 10) - 1) == Decimal("50.0000")
    assert customer_mrr_at(con, "cus_1", month(1, 10)) == 0
    assert customer_mrr_at(con, "cus_1", month(2, 10) - 1) == 0
    assert customer_mrr_at(con, "cus_1", month(2, 10)) == Decimal("50.0000")
    assert con.execute("SELECT movement, CAST(epoch(occurred_at) AS BIGINT) FROM mrr_movements "
                       "ORDER BY occurred_at").fetchall() == [("new", T0), ("cancellation", month(1, 10)),
                                                               ("reactivation", month(2, 10))]


@pytest.mark.parametrize(("counts", "expected"), [pytest.param(True, Decimal("50.0000"), id="past-due-counts"),
                                                  pytest.param(False, Decimal("0"), id="past-due-excluded")])
@one_store
def test_past_due(world: World, derive: Derive, counts: bool, expected: Decimal) -> None:
    simple(world)
    world.update("sub_1", month(1, 1), status="past_due")
    world.update("sub_1", month(1, 9), status="active")
    con = derive(world, seen_at=month(2), past_due_counts=counts)
    assert customer_mrr_at(con, "cus_1", month(1, 2)) == expected
    assert customer_mrr_at(con, "cus_1", month(1, 10)) == Decimal("50.0000")


@one_store
def test_unpaid_zero_from_transition(world: World, derive: Derive) -> None:
    simple(world)
    world.update("sub_1", month(1, 1), status="past_due")
    world.update("sub_1", month(1, 15), status="unpaid")
    world.update("sub_1", month(2), event=False, canceled_at=month(2),
                 cancellation_details={"reason": "payment_failed", "feedback": None, "comment": None})
    world.end("sub_1", month(2))
    con = derive(world, seen_at=month(3))
    assert customer_mrr_at(con, "cus_1", month(1, 15) - 1) == Decimal("50.0000")
    assert customer_mrr_at(con, "cus_1", month(1, 15)) == 0
    rows = item_rows(con, "si_1")
    drop = [r for r in rows if r["valid_from"] == month(1, 15)]
    assert drop and drop[0]["status"] == "unpaid" and drop[0]["churn_type"] == "involuntary"
    # the later deletion is no second change of MRR
    assert all(r["mrr_original"] == 0 for r in rows if r["valid_from"] >= month(1, 15))


def movements(con: duckdb.DuckDBPyConnection, customer: str = "cus_1") -> list[tuple[int, str, Decimal]]:
    rows = con.execute("SELECT occurred_at, movement, mrr_delta FROM mrr_movements WHERE customer_id = ? "
                       "ORDER BY occurred_at, movement", [customer]).fetchall()
    return [(int(r[0].timestamp()), r[1], r[2]) for r in rows]


@pytest.mark.parametrize("events_from", ["all", "inside-the-spell"])
@one_store
def test_a_spell_the_first_stored_event_shows_is_dated_where_it_began(world: World, derive: Derive,
                                                                      events_from: str) -> None:
    """The stored events begin inside a zero-MRR spell that ended in payment before the latest state: incomplete,
    then paid a day later; unpaid from the invoice marked uncollectible, then paid back. The first stored event's
    previous_attributes say the status then; the spell begins where it did (incomplete: at the start; unpaid:
    when the invoice was marked uncollectible), as with every event stored. It used to begin where the events
    do: a new, a cancellation and a reactivation for a subscription paid a day late, or an unpaid churn dated
    days (or a month) late."""
    simple(world)  # (cus_1's sub_1 at 50.00 from T0)
    world.customer("cus_2")
    sub = world.subscribe("sub_2", "cus_2", [("si_2", "price_a", 3)], month(1, 18), event=False, invoice=False)
    sub["status"] = "incomplete"
    world.event("customer.subscription.created", month(1, 18), sub)
    first = world.invoice_for("sub_2", month(1, 18), "subscription_create", period_start=month(1, 18))
    first.update(status="open")
    first["status_transitions"]["paid_at"] = None
    inv = world.cycle("sub_1", month(1))
    inv.update(status="uncollectible")
    inv["status_transitions"].update(paid_at=None, marked_uncollectible_at=month(1, 15))
    world.update("sub_1", month(1, 15), status="unpaid")
    world.update("sub_1", month(1, 25), status="active")  # paid back
    inv.update(status="paid")
    inv["status_transitions"]["paid_at"] = month(1, 25)
    world.update("sub_2", month(1, 22), status="active")  # paid four days late
    first.update(status="paid")
    first["status_transitions"]["paid_at"] = month(1, 22)
    # (inside both spells: another customer's event there is the oldest stored)
    world.customer("cus_o")
    world.subscribe("sub_o", "cus_o", [("si_o", "price_a", 1)], month(1, 20))
    con = derive(world, seen_at=month(2, 5), events=True if events_from == "all" else month(1, 20))
    assert movements(con, "cus_1") == [(T0, "new", Decimal("50.0000")),
                                       (month(1, 15), "cancellation", Decimal("-50.0000")),
                                       (month(1, 25), "reactivation", Decimal("50.0000"))]
    assert movements(con, "cus_2") == [(month(1, 22), "new", Decimal("75.0000"))]


@one_store
def test_incomplete_and_paused_count_zero(world: World, derive: Derive) -> None:
    simple(world)
    world.update("sub_1", month(1), status="paused")
    world.update("sub_1", month(2), status="active")
    con = derive(world, seen_at=month(3))
    assert customer_mrr_at(con, "cus_1", month(1, 1)) == 0
    assert customer_mrr_at(con, "cus_1", month(2, 1)) == Decimal("50.0000")


@pytest.mark.parametrize(("keeps", "expected"), [pytest.param(True, Decimal("50.0000"), id="pause-collection-keeps-mrr"),
                                                 pytest.param(False, Decimal("0"), id="pause-collection-excluded")])
@one_store
def test_pause_collection(world: World, derive: Derive, keeps: bool, expected: Decimal) -> None:
    simple(world)
    world.update("sub_1", month(1, 3), pause_collection={"behavior": "void", "resumes_at": None})
    world.update("sub_1", month(2, 3), pause_collection=None)
    con = derive(world, seen_at=month(3), pause_collection_keeps_mrr=keeps)
    assert customer_mrr_at(con, "cus_1", month(1, 4)) == expected
    assert customer_mrr_at(con, "cus_1", month(2, 4)) == Decimal("50.0000")


@one_store
def test_cancel_at_period_end_churns_at_end(world: World, derive: Derive) -> None:
    simple(world)
    world.cycle("sub_1", month(1))
    world.cancel("sub_1", month(1, 10), ended_at=month(2), feedback="too_expensive", comment="pricey")
    con = derive(world, seen_at=month(3))
    assert customer_mrr_at(con, "cus_1", month(2) - 1) == Decimal("50.0000")
    assert customer_mrr_at(con, "cus_1", month(2)) == 0
    last = item_rows(con, "si_1")[-1]
    assert (last["valid_from"], last["status"], last["churn_type"], last["cancellation_feedback"]) == (
        month(2), "canceled", "voluntary", "too_expensive")


@one_store
def test_churn_recognition_canceled(world: World, derive: Derive) -> None:
    simple(world)
    world.cancel("sub_1", month(1, 10), ended_at=month(2))
    con = derive(world, seen_at=month(3), churn_recognition="canceled")
    assert customer_mrr_at(con, "cus_1", month(1, 10) - 1) == Decimal("50.0000")
    assert customer_mrr_at(con, "cus_1", month(1, 10)) == 0


@one_store
def test_immediate_cancel_payment_failed_is_involuntary(world: World, derive: Derive) -> None:
    simple(world)
    world.cancel("sub_1", month(1, 5), reason="payment_failed")
    con = derive(world, seen_at=month(2))
    assert customer_mrr_at(con, "cus_1", month(1, 5)) == 0
    assert item_rows(con, "si_1")[-1]["churn_type"] == "involuntary"


def paused_for(kind: str, at: int) -> dict[str, Any]:
    """A paused subscription's status_details (``kind``: what paused it)."""
    return {"paused": {"type": "subscription", "transitioned_at": at, "subscription": {"type": kind}}}


@pytest.mark.parametrize("events", [True, False], ids=["events", "snapshot"])
@pytest.mark.parametrize(("kind", "churn_type"), [("final_payment_failure", "involuntary"),
                                                  ("first_payment_failure", "involuntary"),
                                                  ("pause_requested", "voluntary")])
def test_a_pause_after_a_payment_failure_is_involuntary_churn(world: World, derive: Derive, events: bool, kind: str,
                                                              churn_type: str) -> None:
    """Stripe can pause a subscription (flexible billing mode) after a renewal's first failed payment or its last
    retry, instead of canceling it or marking it unpaid (status_details.paused.subscription.type
    first_payment_failure / final_payment_failure): paused counts zero, and that churn is involuntary, as an
    unpaid one is. A pause the customer asked for (pause_requested) stays voluntary."""
    simple(world)
    inv = world.cycle("sub_1", month(1))
    inv.update(status="open", amount_paid=0)
    inv["status_transitions"]["paid_at"] = None
    if kind != "pause_requested":
        world.update("sub_1", month(1), status="past_due")
    world.update("sub_1", month(1, 12), status="paused", status_details=paused_for(kind, month(1, 12)))
    con = derive(world, seen_at=month(2), events=events)
    assert customer_mrr_at(con, "cus_1", month(1, 12) - 1) == Decimal("50.0000")
    assert customer_mrr_at(con, "cus_1", month(1, 12)) == 0
    assert con.execute("SELECT movement, CAST(epoch(occurred_at) AS BIGINT), churn_type FROM mrr_movements "
                       "ORDER BY occurred_at").fetchall() == [("new", T0, None),
                                                              ("cancellation", month(1, 12), churn_type)]
    assert con.execute("SELECT churn_type, churned_customers FROM churn_reasons").fetchall() == [(churn_type, 1)]


@one_store
def test_each_pause_churns_by_what_paused_it(world: World, derive: Derive) -> None:
    """A subscription paused after its last failed retry, resumed when the invoice was paid, and paused later at
    the customer's request: the first churn is involuntary, the second voluntary."""
    simple(world)
    world.update("sub_1", month(1), status="past_due")
    world.update("sub_1", month(1, 12), status="paused", status_details=paused_for("final_payment_failure",
                                                                                     month(1, 12)))
    world.update("sub_1", month(1, 20), status="active", status_details=None)
    world.cycle("sub_1", month(1, 20))
    world.update("sub_1", month(2, 25), status="paused", status_details=paused_for("pause_requested", month(2, 25)))
    con = derive(world, seen_at=month(3))
    assert con.execute("SELECT movement, CAST(epoch(occurred_at) AS BIGINT), churn_type FROM mrr_movements "
                       "ORDER BY occurred_at").fetchall() == [
        ("new", T0, None), ("cancellation", month(1, 12), "involuntary"), ("reactivation", month(1, 20), None),
        ("cancellation", month(2, 25), "voluntary")]


# --- what is not MRR ----------------------------------------------------------------------------------

@one_store
def test_tax_excluded(world: World, derive: Derive) -> None:
    """Exclusive tax is outside MRR; an inclusive tax inside a metered line's amount is taken out."""
    metered_world(world)
    inv = list(world.objects["invoices"].values())[-1]
    line = next(ln for ln in inv["lines"]["data"] if ln["parent"]["subscription_item_details"]["subscription_item"] == "si_m")
    line["taxes"] = [{"amount": 1_250, "tax_behavior": "inclusive", "taxability_reason": "standard_rated",
                      "type": "tax_rate_details"}]
    inv["total"] += 999  # an exclusive tax on the invoice changes nothing
    con = derive(world, seen_at=month(2, 3))
    assert customer_mrr_at(con, "cus_1", month(2)) == Decimal("70.0000")


def with_vat(w: World, percent: int, discount_percent: int = 0) -> None:
    """Inclusive tax on every charging invoice line, as Stripe works it out: on the amount less the line's
    discount (a pre-tax credit)."""
    for inv in w.objects["invoices"].values():
        for line in inv["lines"]["data"]:
            if line["amount"] > 0:
                off = line["amount"] * discount_percent // 100
                line["pretax_credit_amounts"] = [{"amount": off, "type": "discount"}] if off else []
                line["taxes"] = [{"amount": (line["amount"] - off) * percent // (100 + percent),
                                  "tax_behavior": "inclusive", "taxability_reason": "standard_rated",
                                  "type": "tax_rate_details"}]


@one_store
def test_tax_inclusive_price_excluded(world: World, derive: Derive) -> None:
    """A tax-inclusive licensed price's MRR is its amount less the tax share its invoices show (20% VAT: 24.00
    a month for two seats is 20.00); seats and plan changes are labelled as without tax, at net amounts; the
    new price's share comes from the item's earlier invoice until an invoice bills it."""
    base(world).price("gross", "prod_seat", 1_200)["tax_behavior"] = "inclusive"
    world.price("gross_pro", "prod_seat", 1_800)["tax_behavior"] = "inclusive"
    world.subscribe("sub_1", "cus_1", [("si_1", "gross", 2)], T0)
    world.cycle("sub_1", month(1))
    world.update("sub_1", month(1, 10), items=[("si_1", "gross", 3)])
    world.update("sub_1", month(2, 10), items=[("si_1", "gross_pro", 3)])
    world.update("sub_1", month(3, 10), items=[("si_1", "gross", 4)])
    with_vat(world, 20)
    con = derive(world, seen_at=month(3, 20))
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == Decimal("20.0000")
    assert customer_mrr_at(con, "cus_1", month(1, 11)) == Decimal("30.0000")
    assert customer_mrr_at(con, "cus_1", month(2, 11)) == Decimal("45.0000")
    moves = con.execute("SELECT movement, mrr_delta FROM mrr_movements ORDER BY occurred_at, movement").fetchall()
    # (back to the cheaper plan with a seat more: -15.00 for the plan at 3 seats, +10.00 for the seat)
    assert moves == [("new", Decimal("20.0000")), ("seat_expansion", Decimal("10.0000")),
                     ("upgrade", Decimal("15.0000")), ("downgrade", Decimal("-15.0000")),
                     ("seat_expansion", Decimal("10.0000"))], moves
    assert con.execute("SELECT count(*) FROM data_quality").fetchall() == [(0,)]


@one_store
def test_tax_inclusive_price_with_a_coupon(world: World, derive: Derive) -> None:
    """The tax is worked out on the discounted amount: 50% off 24.00 is 12.00 charged, of which 2.00 is 20% VAT,
    so MRR is 10.00 (taking the tax as a share of the undiscounted 24.00 would give 11.00). A metered line's
    usage loses its tax the same way."""
    base(world).price("gross", "prod_seat", 1_200)["tax_behavior"] = "inclusive"
    world.price("usage", "prod_api", None, usage_type="metered")["tax_behavior"] = "inclusive"
    world.coupon("half", percent_off=50, duration="forever")
    d = world.discount("half", T0, customer="cus_1", subscription="sub_1")
    world.subscribe("sub_1", "cus_1", [("si_1", "gross", 2), ("si_m", "usage", None)], T0, discounts=[d["id"]])
    world.cycle("sub_1", month(1), usage={"si_m": 6_000})
    with_vat(world, 20, discount_percent=50)
    con = derive(world, seen_at=month(1, 10))
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == Decimal("10.0000")
    # (usage: 60.00 billed, 30.00 after the coupon, of which 5.00 tax: 50.00 a month before the coupon, 25.00 after)
    assert customer_mrr_at(con, "cus_1", month(1, 1)) == Decimal("35.0000")


@one_store
def test_currency_option_prices_the_item_in_the_subscriptions_currency(world: World, derive: Derive) -> None:
    """A dollar price with a euro amount among its currency_options, on a subscription billed in euros: Stripe
    charges the euro amount, so the item is in euros at that amount (converted to the reporting currency by
    the euro's rate), seats and plan changes split at euro amounts, and no data-quality row."""
    base(world, currency="eur")
    world.price("pro", "prod_seat", 1_000)["currency_options"] = {
        "usd": {"unit_amount": 1_000}, "eur": {"unit_amount_decimal": "900", "tax_behavior": "exclusive"}}
    world.price("pro_plus", "prod_seat", 2_000)["currency_options"] = {"eur": {"unit_amount": 1_800}}
    world.fx_rates.append(("2023-12-01", "eur", 1.10))
    world.subscribe("sub_1", "cus_1", [("si_1", "pro", 2)], T0)
    world.update("sub_1", month(1, 10), items=[("si_1", "pro", 3)])
    world.update("sub_1", month(2, 10), items=[("si_1", "pro_plus", 4)])
    con = derive(world, seen_at=month(2, 20))
    assert [(r["currency"], r["mrr_original"]) for r in item_rows(con, "si_1")] == [
        ("eur", Decimal("18")), ("eur", Decimal("27")), ("eur", Decimal("72"))]
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == Decimal("19.8000")
    moves = con.execute("SELECT movement, currency, amount_delta_original, mrr_delta FROM mrr_movements "
                        "ORDER BY occurred_at, movement").fetchall()
    # (to 4 seats of the dearer plan: +27.00 EUR for the plan at 3 seats, +18.00 EUR for the seat)
    assert moves == [("new", "eur", Decimal("18.0000"), Decimal("19.8000")),
                     ("seat_expansion", "eur", Decimal("9.0000"), Decimal("9.9000")),
                     ("seat_expansion", "eur", Decimal("18.0000"), Decimal("19.8000")),
                     ("upgrade", "eur", Decimal("27.0000"), Decimal("29.7000"))], moves
    assert con.execute("SELECT count(*) FROM data_quality").fetchall() == [(0,)]


@one_store
def test_currency_option_with_its_own_tax_behaviour(world: World, derive: Derive) -> None:
    """A dollar price exclusive of tax, whose euro amount says it includes tax: an item billed in euros loses
    the 20% VAT its invoices show (24.00 EUR is 20.00), one billed in dollars keeps its amount, and an option
    that leaves its tax behaviour unspecified follows the price's (24.00 EUR stays). No data-quality row."""
    base(world, currency="eur")
    world.price("pro", "prod_seat", 1_200)["tax_behavior"] = "exclusive"
    world.objects["prices"]["pro"]["currency_options"] = {"eur": {"unit_amount": 1_200, "tax_behavior": "inclusive"}}
    world.price("plain", "prod_seat", 1_200)["tax_behavior"] = "exclusive"
    world.objects["prices"]["plain"]["currency_options"] = {"eur": {"unit_amount": 1_200,
                                                                     "tax_behavior": "unspecified"}}
    world.fx_rates.append(("2023-12-01", "eur", 1.10))
    world.subscribe("sub_1", "cus_1", [("si_1", "pro", 2)], T0)
    world.customer("cus_2", currency="eur")
    world.subscribe("sub_2", "cus_2", [("si_2", "plain", 2)], T0)
    world.customer("cus_3")
    world.subscribe("sub_3", "cus_3", [("si_3", "pro", 2)], T0)
    with_vat(world, 20)
    for line in world.objects["invoices"][next(i for i, v in world.objects["invoices"].items()
                                               if v["customer"] == "cus_3")]["lines"]["data"]:
        line["taxes"] = []
    con = derive(world, seen_at=month(1))
    assert [(r["currency"], r["mrr_original"]) for r in item_rows(con, "si_1")] == [("eur", Decimal("20"))]
    assert [(r["currency"], r["mrr_original"]) for r in item_rows(con, "si_2")] == [("eur", Decimal("24"))]
    assert [(r["currency"], r["mrr_original"]) for r in item_rows(con, "si_3")] == [("usd", Decimal("24"))]
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == Decimal("22.0000")
    assert con.execute("SELECT count(*) FROM data_quality").fetchall() == [(0,)]


@one_store
def test_amount_off_in_the_items_currency_from_the_coupons_currency_options(world: World, derive: Derive) -> None:
    """A dollar amount-off coupon with a euro amount among its currency_options, on a subscription billed in
    euros through a price's euro option: 5.00 EUR off 18.00 EUR, and no data-quality row."""
    base(world, currency="eur")
    world.price("pro", "prod_seat", 1_000)["currency_options"] = {"eur": {"unit_amount": 900}}
    world.coupon("five", amount_off=550, currency="usd")["currency_options"] = {"eur": {"amount_off": 500}}
    world.fx_rates.append(("2023-12-01", "eur", 1.10))
    d = world.discount("five", T0, customer="cus_1", subscription="sub_1")
    world.subscribe("sub_1", "cus_1", [("si_1", "pro", 2)], T0, discounts=[d["id"]])
    con = derive(world, seen_at=month(1))
    assert [(r["currency"], r["mrr_original"]) for r in item_rows(con, "si_1")] == [("eur", Decimal("13"))]
    assert con.execute("SELECT count(*) FROM data_quality").fetchall() == [(0,)]


@one_store
def test_proration_not_mrr(world: World, derive: Derive) -> None:
    base(world).price("price_a", "prod_seat", 1_000)
    world.price("price_b", "prod_seat", 3_000)
    world.subscribe("sub_1", "cus_1", [("si_1", "price_a", 2)], T0)
    world.update("sub_1", month(0, 15), items=[("si_1", "price_b", 2)])
    con = derive(world, seen_at=month(1))
    assert customer_mrr_at(con, "cus_1", month(0, 16)) == Decimal("60.0000")
    assert world.objects["invoices"] and any(
        ln["parent"]["subscription_item_details"]["proration"]
        for inv in world.objects["invoices"].values() for ln in inv["lines"]["data"])


@one_store
def test_one_time_price_not_mrr(world: World, derive: Derive) -> None:
    base(world).price("price_a", "prod_seat", 1_000)
    world.price("price_setup", "prod_seat", 50_000, interval=None)
    world.subscribe("sub_1", "cus_1", [("si_1", "price_a", 1)], T0)
    sub = world.objects["subscriptions"]["sub_1"]
    sub["items"]["data"].append({**sub["items"]["data"][0], "id": "si_2",
                                 "price": world.objects["prices"]["price_setup"]})
    con = derive(world, seen_at=month(1))
    assert customer_mrr_at(con, "cus_1", month(0, 20)) == Decimal("10.0000")


@pytest.mark.parametrize("events", [True, False], ids=["events", "invoices-only"])
def test_deleted_price_keeps_its_terms_for_the_time_it_was_billed(world: World, derive: Derive, store: Any,
                                                                     events: bool) -> None:
    """A price deleted in Stripe after its items moved to another one (a legacy plan deleted): the store keeps
    its last full copy (the deletion only flags the row), and the months billed at it count at it."""
    base(world).price("price_old", "prod_seat", 1_500)
    world.price("price_new", "prod_seat", 2_000)
    world.subscribe("sub_1", "cus_1", [("si_1", "price_old", 2)], T0)
    world.cycle("sub_1", month(1))
    world.update("sub_1", month(1, 9), items=[("si_1", "price_new", 2)])
    world.cycle("sub_1", month(2))
    world.load(store, seen_at=month(1), events=events)  # a sync while price_old still existed
    world.objects["prices"]["price_old"] = {"id": "price_old", "object": "price", "deleted": True}
    con = derive(world, seen_at=month(2, 5), events=events)
    assert con.execute("SELECT deleted, raw->>'$.unit_amount' FROM prices WHERE id = 'price_old'").fetchall() == [
        (True, "1500")]
    # 2 × 15.00 until the switch on day 10 of month 1, then 2 × 20.00
    assert [customer_mrr_at(con, "cus_1", t) for t in (T0 + DAY, month(1, 1), month(1, 10), month(2, 1))] == [
        Decimal("30.0000"), Decimal("30.0000"), Decimal("40.0000"), Decimal("40.0000")]
    assert con.execute("SELECT movement, mrr_delta FROM mrr_movements ORDER BY occurred_at").fetchall() == [
        ("new", Decimal("30.0000")), ("upgrade", Decimal("10.0000"))]
    # its terms are whole, so it is no data-quality problem
    assert con.execute("SELECT count(*) FROM data_quality WHERE object_id = 'price_old'").fetchall() == [(0,)]


# --- currencies ---------------------------------------------------------------------------------------

def test_fx_converted_and_rounded_once(world: World, derive: Derive) -> None:
    base(world, currency="eur").price("price_e", "prod_seat", 1_001, currency="eur", interval="year")
    world.subscribe("sub_1", "cus_1", [("si_1", "price_e", 7)], T0)
    world.fx_rates.append(("2023-12-01", "eur", 1.08))
    con = derive(world, seen_at=month(1))
    # 1001 × 7 / 12 cents = 583.9166… EUR cents; × 1.08 / 100 = 6.30630 → 6.3063
    assert customer_mrr_at(con, "cus_1", month(0, 1)) == Decimal("6.3063")


MINOR_UNIT_CASES = [
    # zero-decimal: Stripe's amounts are whole yen (5,000 is ¥5,000, not ¥50.00)
    pytest.param("jpy", 5_000, 0.0067, Decimal("5000.0000"), Decimal("33.5000"), id="zero-decimal-jpy"),
    pytest.param("krw", 45_000, 0.00072, Decimal("45000.0000"), Decimal("32.4000"), id="zero-decimal-krw"),
    # three-decimal: thousandths (12,340 is 12.340 dinars)
    pytest.param("kwd", 12_340, 3.25, Decimal("12.3400"), Decimal("40.1050"), id="three-decimal-kwd"),
    # two-decimal, including the special cases Stripe still counts in hundredths
    pytest.param("isk", 990_000, 0.0072, Decimal("9900.0000"), Decimal("71.2800"), id="two-decimal-isk"),
]


def minor_unit_case(w: World, currency: str, unit_amount: int, rate: float) -> World:
    """A licensed item and a metered one in ``currency`` (one price's worth of usage billed at month 1), an amount
    off of a tenth of the price from month 2, and the currency's rate."""
    base(w, currency=currency).price("price_c", "prod_seat", unit_amount, currency=currency)
    w.price("price_m", "prod_api", None, currency=currency, usage_type="metered")
    w.coupon("c_off", amount_off=unit_amount // 10, currency=currency, duration="forever")
    w.subscribe("sub_1", "cus_1", [("si_1", "price_c", 1), ("si_m", "price_m", None)], T0)
    w.discount("c_off", month(2), customer="cus_1", subscription="sub_1")
    w.cycle("sub_1", month(1), usage={"si_m": unit_amount})
    w.fx_rates.append(("2023-12-01", currency, rate))
    return w


@pytest.mark.parametrize(("currency", "unit_amount", "rate", "own", "reported"), MINOR_UNIT_CASES)
@one_store
def test_amounts_in_the_currencys_minor_unit(world: World, derive: Derive, currency: str, unit_amount: int,
                                             rate: float, own: Decimal, reported: Decimal) -> None:
    """Stripe's amounts are in the currency's smallest unit: a cent for most, the unit itself for zero-decimal
    currencies, a thousandth for three-decimal ones. Prices, metered usage and amount_off all convert so."""
    con = derive(minor_unit_case(world, currency, unit_amount, rate), seen_at=month(3))
    account = world.account_id
    rows = item_rows(con, "si_1", account)
    assert rows, f"{account}: no item rows"
    assert rows[0]["mrr_original"] == own and rows[0]["currency"] == currency, (account, rows[0])
    assert customer_mrr_at(con, "cus_1", month(0, 1), account) == reported, account
    # metered usage billed at month 1 counts from then (as much as the licensed item); from month 2 an amount
    # off of a tenth of the licensed item's price
    assert customer_mrr_at(con, "cus_1", month(1, 1), account) == 2 * reported, account
    assert customer_mrr_at(con, "cus_1", month(2, 1), account) == reported * Decimal("1.9"), account


def test_fx_rate_change_moves_mrr(world: World, derive: Derive) -> None:
    base(world, currency="eur").price("price_e", "prod_seat", 10_000, currency="eur")
    world.subscribe("sub_1", "cus_1", [("si_1", "price_e", 1)], T0)
    world.fx_rates += [("2023-12-01", "eur", 1.08), ("2024-02-01", "eur", 1.10)]
    con = derive(world, seen_at=month(3))
    assert customer_mrr_at(con, "cus_1", month(1) - 1) == Decimal("108.0000")
    assert customer_mrr_at(con, "cus_1", month(1)) == Decimal("110.0000")


def test_missing_fx_rate_error(world: World, derive: Derive) -> None:
    base(world, currency="gbp").price("price_g", "prod_seat", 10_000, currency="gbp")
    world.subscribe("sub_1", "cus_1", [("si_1", "price_g", 1)], T0)
    world.fx_rates.append(("2024-03-01", "gbp", 1.27))  # too late for January
    with pytest.raises(DataError) as err:
        derive(world, seen_at=month(3))
    message = str(err.value)
    assert "gbp" in message and "2024-01-01" in message and "fx_rates" in message
    assert "\n" not in message



def test_an_mrr_too_large_for_the_views_money_names_its_customer(world: World, derive: Derive) -> None:
    """Money in the views is DECIMAL(18,4) (design.md 4): an MRR beyond it (a Stripe price at its largest times
    a quantity of a billion) stops the recompute with one line naming the customer and what to check, instead
    of DuckDB's "Casting value ... out of range". Nothing is stored (the recompute is one transaction)."""
    base(world).price("price_big", "prod_seat", 99_999_999)
    world.subscribe("sub_1", "cus_1", [("si_1", "price_big", 1_000_000_000)], T0)
    with pytest.raises(DataError) as err:
        derive(world, seen_at=month(2))
    message = str(err.value)
    assert "the MRR of customer cus_1 from 2024-01-01" in message and "999999990000000" in message
    assert "check the amounts and quantities" in message and "\n" not in message
    assert "Casting value" not in message


def big_customers(w: World, starts: list[tuple[str, int, int | None]]) -> World:
    """Customers of 59,999,999,400,000 MRR each (one fits the views' money, two do not), subscribed at each
    start and canceled at each end."""
    base(w).price("price_big", "prod_seat", 99_999_999)
    for k, (cid, start, end) in enumerate(starts):
        if cid != "cus_1":
            w.customer(cid)
        w.subscribe(f"sub_{k}", cid, [(f"si_{k}", "price_big", 60_000_000)], start)
        if end is not None:
            w.cancel(f"sub_{k}", end, ended_at=end)
    return w


def test_sums_too_large_for_the_views_money_stop_the_recompute(world: World, derive: Derive) -> None:
    """Each customer's MRR fits DECIMAL(18,4) but the monthly bridge's sum of them does not: the recompute is
    refused with one line naming the bridge amount, instead of succeeding and leaving every query of the bridge,
    the report and the exports to fail with DuckDB's raw conversion error."""
    big_customers(world, [("cus_1", T0, None), ("cus_2", T0, None)])
    with pytest.raises(DataError) as err:
        derive(world, seen_at=month(2))
    message = str(err.value)
    assert "the bridge's opening_mrr of the period from 2024-02-01 is 119999998800000.0000" in message, message
    assert "nothing was changed" in message and "\n" not in message


def test_a_yearly_sum_too_large_for_the_views_money_is_a_clear_error(world: World, derive: Derive) -> None:
    """Two such customers one after the other fit every monthly view, so the recompute stands; their year's
    new MRR does not fit, and asking for it is a DataError naming the amount (the report prints it as one
    line), not DuckDB's raw conversion error."""
    from stripe_churn.metrics import queries

    big_customers(world, [("cus_1", T0, month(1)), ("cus_2", month(2), None)])
    con = derive(world, seen_at=month(4))
    assert [r["new"] for r in queries.bridge(con, "month")][:3] == [Decimal("59999999400000.0000"), 0,
                                                                     Decimal("59999999400000.0000")]
    with pytest.raises(DataError) as err:
        queries.bridge(con, "year")
    message = str(err.value)
    assert "the bridge's new of the period from 2024-01-01 is 119999998800000" in message, message
    assert "check the amounts and quantities" in message and "\n" not in message
    with pytest.raises(DataError, match="new of the period from 2024-01-01 in segment family = core is 1199"):
        queries.bridge(con, "year", "family")


@one_store
def test_a_status_the_rules_do_not_know_counts_zero_and_says_so(world: World, derive: Derive) -> None:
    """A status design.md 4 does not name (one a newer API version may add) counts zero, as the statuses that
    stop MRR do, and is a data-quality row naming it and its event (it was a silent cancellation)."""
    simple(world)
    world.update("sub_1", month(1, 10), status="frozen")
    con = derive(world, seen_at=month(2))
    assert customer_mrr_at(con, "cus_1", month(1, 10)) == 0
    rows = con.execute("SELECT kind, object_id, related_id, CAST(epoch(moment) AS BIGINT), detail "
                       "FROM data_quality").fetchall()
    assert [r[:4] for r in rows] == [("unknown_status", "sub_1", world.events[-1]["id"], month(1, 10))]
    assert "frozen" in rows[0][4]


@one_store
def test_unpaid_before_event_window_dated_by_invoice(world: World, derive: Derive) -> None:
    """Without events, an unpaid subscription drops to zero when its failed invoice was given up on."""
    simple(world)
    inv = world.cycle("sub_1", month(1))
    inv["status"] = "uncollectible"
    inv["status_transitions"].update(paid_at=None, marked_uncollectible_at=month(1, 15))
    world.objects["subscriptions"]["sub_1"]["status"] = "unpaid"
    con = derive(world, seen_at=month(2), events=False)
    assert customer_mrr_at(con, "cus_1", month(1, 15) - 1) == Decimal("50.0000")
    assert customer_mrr_at(con, "cus_1", month(1, 15)) == 0
    assert item_rows(con, "si_1")[-1]["churn_type"] == "involuntary"


@one_store
def test_incomplete_expired_never_counts(world: World, derive: Derive) -> None:
    simple(world)
    sub = world.objects["subscriptions"]["sub_1"]
    sub.update(status="incomplete_expired", ended_at=T0 + DAY)
    con = derive(world, seen_at=month(1), events=False)
    assert customer_mrr_at(con, "cus_1", T0 + 60) == 0
    assert customer_mrr_at(con, "cus_1", month(0, 5)) == 0
    # (the case's own account holds the subscription that counts nothing)
    assert con.execute("SELECT status FROM derived_subs WHERE subscription_id = 'sub_1'").fetchall() == [
        ("incomplete_expired",)]


@one_store
def test_unpaid_then_paid_comes_back(world: World, derive: Derive) -> None:
    """An unpaid spell that ends in payment counts zero only while it lasts and is no churn."""
    simple(world)
    world.update("sub_1", month(1, 15), status="unpaid")
    world.update("sub_1", month(1, 20), status="active")
    con = derive(world, seen_at=month(3))
    assert customer_mrr_at(con, "cus_1", month(1, 16)) == 0
    assert customer_mrr_at(con, "cus_1", month(1, 20)) == Decimal("50.0000")
    rows = item_rows(con, "si_1")
    assert [r["churn_type"] for r in rows if r["mrr_original"] > 0] == [None, None]


@one_store
def test_unpaid_then_deleted_before_event_window(world: World, derive: Derive) -> None:
    """Without events, a subscription deleted for a failed payment churns when it went unpaid."""
    simple(world)
    inv = world.cycle("sub_1", month(1))
    inv["status"] = "uncollectible"
    inv["status_transitions"].update(paid_at=None, marked_uncollectible_at=month(1, 15))
    world.update("sub_1", month(2), event=False, canceled_at=month(2),
                 cancellation_details={"reason": "payment_failed", "feedback": None, "comment": None})
    world.end("sub_1", month(2), event=False)
    con = derive(world, seen_at=month(3), events=False)
    assert customer_mrr_at(con, "cus_1", month(1, 15) - 1) == Decimal("50.0000")
    assert customer_mrr_at(con, "cus_1", month(1, 15)) == 0
    assert customer_mrr_at(con, "cus_1", month(2)) == 0


@pytest.mark.parametrize("end", ["canceled", "unpaid"])
@one_store
def test_an_earlier_uncollectible_invoice_does_not_date_a_later_unpaid_churn(world: World, derive: Derive,
                                                                            end: str) -> None:
    """Without events: an invoice forgiven (marked uncollectible) in month 1, paid renewals after it, then the
    renewal of month 3 fails for good and stays open, and the subscription is deleted for it (or left unpaid).
    MRR counts until that last spell: the forgiven invoice is a spell the subscription came out of. (The churn
    used to be dated at the forgiven invoice, two months early.)"""
    simple(world)
    forgiven = world.cycle("sub_1", month(1))
    forgiven["status"] = "uncollectible"
    forgiven["status_transitions"].update(paid_at=None, marked_uncollectible_at=month(1, 10))
    world.cycle("sub_1", month(2))
    failed = world.cycle("sub_1", month(3))
    failed["status"] = "open"
    failed["status_transitions"].update(paid_at=None)
    if end == "canceled":
        world.update("sub_1", month(3, 20), event=False, canceled_at=month(3, 20),
                     cancellation_details={"reason": "payment_failed", "feedback": None, "comment": None})
        world.end("sub_1", month(3, 20), event=False)
    else:
        world.objects["subscriptions"]["sub_1"]["status"] = "unpaid"
    con = derive(world, seen_at=month(4), events=False)
    assert customer_mrr_at(con, "cus_1", month(1, 10)) == Decimal("50.0000")
    assert customer_mrr_at(con, "cus_1", month(2, 15)) == Decimal("50.0000")
    assert customer_mrr_at(con, "cus_1", month(3, 21)) == 0
    churn = con.execute("SELECT occurred_at, churn_type FROM mrr_movements WHERE movement = 'cancellation'").fetchall()
    assert len(churn) == 1 and churn[0][1] == "involuntary"
    assert month(3) <= int(churn[0][0].timestamp()) <= month(3, 20)


@one_store
def test_an_update_invoice_paid_at_once_does_not_end_the_unpaid_spell(world: World, derive: Derive) -> None:
    """Without events: the renewal of month 2 fails and stays open, a downgrade on day 5 makes an update invoice
    paid at once (credit covers it), and the subscription is unpaid now. It went unpaid with the open renewal, not
    when the sync saw it: a paid update is no renewal paid after the spell."""
    simple(world)
    world.cycle("sub_1", month(1))
    failed = world.cycle("sub_1", month(2))
    failed["status"] = "open"
    failed["status_transitions"].update(paid_at=None)
    world.update("sub_1", month(2, 5), event=False, items=[("si_1", "price_a", 1)])
    for inv in world.objects["invoices"].values():
        if inv.get("billing_reason") == "subscription_update":
            inv["status"] = "paid"
    world.objects["subscriptions"]["sub_1"]["status"] = "unpaid"
    con = derive(world, seen_at=month(4), events=False)
    assert [customer_mrr_at(con, "cus_1", month(n, 10)) for n in range(5)] == [Decimal("50.0000")] * 2 + [0] * 3


@one_store
def test_exact_half_rounds_away_from_zero_across_items(world: World, derive: Derive) -> None:
    """Two annual items whose monthly parts repeat (…3333 + …6666) sum exactly to a half at the 5th decimal."""
    base(world, currency="gbp").price("y1", "prod_seat", 127, currency="gbp", interval="year")
    world.price("y2", "prod_api", 55_250, currency="gbp", interval="year")
    # 1.27 × 250 / 12 + 552.50 × 4 / 12 = 26.4583… + 184.1666… = 210.625 GBP; × 1.27 = 267.49375 → 267.4938
    world.subscribe("sub_1", "cus_1", [("si_1", "y1", 250), ("si_2", "y2", 4)], T0)
    world.fx_rates.append(("2023-12-01", "gbp", 1.27))
    con = derive(world, seen_at=month(1))
    assert customer_mrr_at(con, "cus_1", month(0, 1)) == Decimal("267.4938")


@one_store
def test_an_exact_half_over_many_items_still_rounds_away_from_zero(world: World, derive: Derive) -> None:
    """Sixteen annual items in GBP (4 x 297.50, 1,266.50 and 14 add-ons of 85.00 a year: 303.875 a month, exact)
    whose monthly parts each repeat: cut at 10 decimals they sum to 303.8749999994, so rounding that sum at 9
    decimals left it under the half (385.9212 instead of 385.92125 -> 385.9213 USD at 1.27). Found by the
    simulation through the sandbox."""
    base(world, currency="gbp").price("y1", "prod_seat", 29_750, currency="gbp", interval="year")
    world.price("y2", "prod_seat", 126_650, currency="gbp", interval="year")
    items = [("si_1", "y1", 4), ("si_2", "y2", 1)]
    for n in range(14):
        world.price(f"addon{n}", "prod_api", 8_500, currency="gbp", interval="year")
        items.append((f"si_a{n}", f"addon{n}", 1))
    world.subscribe("sub_1", "cus_1", items, T0)
    world.fx_rates.append(("2023-12-01", "gbp", 1.27))
    con = derive(world, seen_at=month(1))
    assert customer_mrr_at(con, "cus_1", month(0, 1)) == Decimal("385.9213")


@one_store
def test_exact_halves_of_each_items_part_round_away_from_zero(world: World, derive: Derive) -> None:
    """A subscription's own 25% offer ends and the customer's 10% counts again, on two annual GBP items (1,785.00
    and 170.00 a year): each item's discount part is an exact half in USD at 1.27 (22.3125 GBP -> 28.336875,
    2.125 GBP -> 2.69875), so the rows are 28.3369 and 2.6988. The second item's monthly MRR repeats (14.1666…),
    and the part made from its discounted values cut at 10 decimals fell just under the half: 2.6987, and the
    rounding remainder went to the first row (28.3370). Found by the simulation through the sandbox (5,000 x 60,
    seed 18)."""
    base(world, currency="gbp").price("y1", "prod_seat", 29_750, currency="gbp", interval="year")
    world.price("y2", "prod_api", 17_000, currency="gbp", interval="year")
    world.coupon("co_cust", percent_off=10)
    world.coupon("co_sub", percent_off=25, duration="repeating", duration_in_months=3)
    world.objects["customers"]["cus_1"]["discount"] = world.discount("co_cust", T0, customer="cus_1")
    own = world.discount("co_sub", T0, customer="cus_1", subscription="sub_1")
    world.subscribe("sub_1", "cus_1", [("si_1", "y1", 6), ("si_2", "y2", 1)], T0, discounts=[own["id"]])
    world.fx_rates.append(("2023-12-01", "gbp", 1.27))
    con = derive(world, seen_at=month(4))
    assert customer_mrr_at(con, "cus_1", month(3) - 1) == Decimal("155.1781")  # 122.1875 GBP x 1.27
    assert customer_mrr_at(con, "cus_1", month(3)) == Decimal("186.2138")  # 146.625 GBP x 1.27
    moves = con.execute("SELECT subscription_item_id, mrr_delta, amount_delta_original FROM mrr_movements "
                        "WHERE movement = 'discount' ORDER BY subscription_item_id").fetchall()
    assert moves == [("si_1", Decimal("28.3369"), Decimal("22.3125")), ("si_2", Decimal("2.6988"), Decimal("2.1250"))]


def test_an_exact_half_that_only_the_rate_makes_rounds_away_from_zero(world: World, derive: Derive) -> None:
    """100.00 GBP a year is 8.3333… GBP a month, a value that repeats; at 1.481478 it is exactly 12.34565 USD,
    and from March at 1.245006 exactly 10.37505: the levels are 12.3457 and 10.3751, and the rate change is an fx
    movement of -1.9706. With the item cut at 10 decimals (8.3333333333 x 1.481478 = 12.3456499…), both rounded
    down. Found by the simulation with monthly rates (Simulation(fx_changes=True): 29 MRR levels of 2,000 x 24,
    seed 5, each 0.0001 off)."""
    base(world, currency="gbp").price("y1", "prod_seat", 10_000, currency="gbp", interval="year")
    world.subscribe("sub_1", "cus_1", [("si_1", "y1", 1)], T0)
    world.fx_rates.append(("2023-12-01", "gbp", 1.481478))
    world.fx_rates.append(("2024-03-01", "gbp", 1.245006))
    con = derive(world, seen_at=month(4))
    assert customer_mrr_at(con, "cus_1", month(1)) == Decimal("12.3457")
    assert customer_mrr_at(con, "cus_1", month(3)) == Decimal("10.3751")
    assert con.execute("SELECT movement, mrr_delta, amount_delta_original FROM mrr_movements ORDER BY occurred_at"
                       ).fetchall() == [("new", Decimal("12.3457"), Decimal("8.3333")),
                                        ("fx", Decimal("-1.9706"), Decimal("0.0000"))]


def test_each_part_of_a_change_rounds_an_exact_half_that_only_the_rate_makes_away_from_zero(
        world: World, derive: Derive) -> None:
    """Two annual GBP add-ons of new families in one change (100.00 and 300.00 a year, at 1.481478 exactly
    12.34565 and 37.03695 USD) beside a 100.00 one: each row rounds up (12.3457, 37.0370), and the customer's delta
    (12.3457 -> 61.7283: 49.3826) takes the remainder from the larger: 37.0369. With the parts cut (8.333333333
    GBP x 1.481478 = 12.3456499...), the first rounded down to 12.3456 and the remainder went up (37.0370). Found
    by the simulation with monthly rates (1,000 x 12, seed 902, the daemon's flow: 6 rows, 0.0001 each)."""
    base(world, currency="gbp").product("prod_base", family="base")
    world.price("ya", "prod_base", 10_000, currency="gbp", interval="year")
    world.price("yb", "prod_seat", 10_000, currency="gbp", interval="year")
    world.price("yc", "prod_api", 30_000, currency="gbp", interval="year")
    world.subscribe("sub_1", "cus_1", [("si_a", "ya", 1)], T0)
    world.update("sub_1", month(1, 5), items=[("si_a", "ya", 1), ("si_b", "yb", 1), ("si_c", "yc", 1)])
    world.fx_rates.append(("2023-12-01", "gbp", 1.481478))
    con = derive(world, seen_at=month(3))
    assert customer_mrr_at(con, "cus_1", month(2)) == Decimal("61.7283")
    assert con.execute("SELECT subscription_item_id, movement, mrr_delta FROM mrr_movements "
                       "WHERE movement = 'cross_sell' ORDER BY subscription_item_id").fetchall() == [
        ("si_b", "cross_sell", Decimal("12.3457")), ("si_c", "cross_sell", Decimal("37.0369"))]


@one_store
def test_a_new_customers_amount_in_its_currency_rounds_an_exact_half_away_from_zero(world: World,
                                                                                   derive: Derive) -> None:
    """Two annual GBP items (170.00 and 170.20 a year) under a 12.5% forever coupon: 12.3958333… + 12.4104166… =
    24.80625 GBP a month, an exact half at 4 decimals, so the new row's amount_delta_original is 24.8063. Each
    item MRR cut at 10 decimals summed to 24.8062499999, which rounded to 24.8062. (The customer's MRR in USD,
    31.5039375 -> 31.5039, was right: step 50 rounds the sum at 9 decimals before the rate.)"""
    base(world, currency="gbp").price("y1", "prod_seat", 17_000, currency="gbp", interval="year")
    world.price("y2", "prod_api", 17_020, currency="gbp", interval="year")
    world.coupon("co_1", percent_off=12.5)
    d = world.discount("co_1", T0, customer="cus_1", subscription="sub_1")
    world.subscribe("sub_1", "cus_1", [("si_1", "y1", 1), ("si_2", "y2", 1)], T0, discounts=[d["id"]])
    world.fx_rates.append(("2023-12-01", "gbp", 1.27))
    con = derive(world, seen_at=month(1))
    assert con.execute("SELECT movement, mrr_delta, amount_delta_original FROM mrr_movements").fetchall() == [
        ("new", Decimal("31.5039"), Decimal("24.8063"))]
