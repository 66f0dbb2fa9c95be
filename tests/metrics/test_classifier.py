"""One named test per rule of design.md 5 (the movement classifier), on hand-built Stripe accounts.

Each case builds a small account with tests/metrics/builders.py, runs the whole pipeline, and compares the
customer's rows of ``mrr_movements`` (time, movement, category, delta, item) with the answer worked out by
hand. Every case also checks the invariants: the rows of one transition add up to the change of the
customer's MRR, one transition's MRR after is the next one's MRR before and both agree with customer_mrr,
and the case's bridge adds up.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from builders import DAY, World, add_months, ts
from conftest import OneStore, customer_mrr_at

T0 = ts(2024, 1, 1)
MINUTE = 60
Derive = Callable[..., duckdb.DuckDBPyConnection]

# The tests marked @one_store are each an account of one store, derived once (conftest.OneStore): their queries see
# their own account's rows alone.
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()
Row = tuple[int, str, str, Decimal, str | None]


def month(n: int, day: int = 0) -> int:
    return add_months(T0, n) + day * DAY


def base(w: World, currency: str = "usd") -> World:
    """cus_1 and a catalogue: family core (seat plans), family analytics, family api (metered)."""
    w.customer("cus_1", currency=currency)
    w.product("prod_core", unit_label="seat", family="core")
    w.product("prod_core_addon", unit_label="seat", family="core")
    w.product("prod_analytics", family="analytics")
    w.product("prod_api", unit_label="api call", family="api")
    w.price("core_basic", "prod_core", 1_000, currency=currency)
    w.price("core_pro", "prod_core", 2_000, currency=currency)
    w.price("core_monthly", "prod_core", 10_000, currency=currency)
    w.price("core_annual", "prod_core", 120_000, interval="year", currency=currency)
    w.price("core_annual_hi", "prod_core", 150_000, interval="year", currency=currency)
    w.price("addon", "prod_core_addon", 500, currency=currency)
    w.price("analytics", "prod_analytics", 5_000, currency=currency)
    w.price("api_metered", "prod_api", None, usage_type="metered", currency=currency)
    return w


def movements(con: duckdb.DuckDBPyConnection, customer: str = "cus_1", account: str | None = None) -> list[Row]:
    """The customer's movements as (unix time, movement, category, delta, item), in a stable order (of one
    account when the store holds several)."""
    rows = con.execute(
        "SELECT CAST(epoch(occurred_at) AS BIGINT), movement, category, mrr_delta, subscription_item_id "
        "FROM mrr_movements WHERE customer_id = ? AND account_id = coalesce(?, account_id) "
        "ORDER BY occurred_at, movement, subscription_item_id", [customer, account]).fetchall()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def check_invariants(con: duckdb.DuckDBPyConnection, customer: str = "cus_1", account: str | None = None) -> None:
    """Rows of a transition add up to its change; transitions chain; categories match signs."""
    per = con.execute(
        "SELECT CAST(epoch(occurred_at) AS BIGINT) AS t, any_value(mrr_before), any_value(mrr_after), "
        "sum(mrr_delta), count(DISTINCT mrr_before), count(DISTINCT mrr_after) FROM mrr_movements "
        "WHERE customer_id = ? AND account_id = coalesce(?, account_id) GROUP BY t ORDER BY t",
        [customer, account]).fetchall()
    previous_after = Decimal(0)
    for at, before, after, total, n_before, n_after in per:
        assert n_before == 1 and n_after == 1, f"rows at {at} disagree on mrr_before/mrr_after"
        assert total == after - before, f"rows at {at} add up to {total}, customer changed by {after - before}"
        assert before == customer_mrr_at(con, customer, at - 1, account), (
            f"transition at {at} disagrees with customer_mrr")
        assert before == previous_after, f"transition at {at} starts at {before}, previous ended at {previous_after}"
        previous_after = after
    assert previous_after == customer_mrr_at(con, customer, 2**31 - 1, account), "movements do not end at today's MRR"
    bad = con.execute(
        "SELECT movement, category, mrr_delta FROM mrr_movements WHERE customer_id = ? "
        "AND account_id = coalesce(?, account_id) AND NOT ("
        "(category IN ('new', 'reactivation', 'expansion') AND mrr_delta > 0) OR "
        "(category IN ('churn', 'contraction') AND mrr_delta < 0) OR category = 'fx')", [customer, account]).fetchall()
    assert not bad, f"category and sign disagree: {bad}"


# --- the cases: each returns (world, seen_at, expected rows) -------------------------------------------

Case = tuple[World, int, list[Row]]


def case_new_multi_family(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3), ("si_a", "analytics", 1)], T0)
    return w, month(2), [(T0, "new", "new", Decimal("80.0000"), "si_a")]


def case_reactivation_other_plan(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.cancel("sub_1", month(2))
    w.subscribe("sub_2", "cus_1", [("si_a", "analytics", 1)], month(4))
    return w, month(5), [
        (T0, "new", "new", Decimal("30.0000"), "si_c"),
        (month(2), "cancellation", "churn", Decimal("-30.0000"), "si_c"),
        (month(4), "reactivation", "reactivation", Decimal("50.0000"), "si_a"),
    ]


def case_cancellation_voluntary(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_pro", 2)], T0)
    w.cancel("sub_1", month(3, 5), feedback="too_expensive", comment="budget cut")
    return w, month(4), [
        (T0, "new", "new", Decimal("40.0000"), "si_c"),
        (month(3, 5), "cancellation", "churn", Decimal("-40.0000"), "si_c"),
    ]


def case_cancellation_involuntary_unpaid(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.update("sub_1", month(1, 1), status="past_due")
    w.update("sub_1", month(1, 15), status="unpaid")
    w.end("sub_1", month(2))  # the later deletion is no second movement
    return w, month(3), [
        (T0, "new", "new", Decimal("30.0000"), "si_c"),
        (month(1, 15), "cancellation", "churn", Decimal("-30.0000"), "si_c"),
    ]


def case_upgrade_with_seats(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.update("sub_1", month(1, 10), items=[("si_c", "core_pro", 5)])
    # plan part = MRR(pro, 3) - MRR(basic, 3) = 60 - 30; quantity part = MRR(pro, 5) - MRR(pro, 3) = 100 - 60
    return w, month(2), [
        (T0, "new", "new", Decimal("30.0000"), "si_c"),
        (month(1, 10), "seat_expansion", "expansion", Decimal("40.0000"), "si_c"),
        (month(1, 10), "upgrade", "expansion", Decimal("30.0000"), "si_c"),
    ]


def case_downgrade_plan(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_pro", 4)], T0)
    w.update("sub_1", month(1, 10), items=[("si_c", "core_basic", 4)])
    return w, month(2), [
        (T0, "new", "new", Decimal("80.0000"), "si_c"),
        (month(1, 10), "downgrade", "contraction", Decimal("-40.0000"), "si_c"),
    ]


def case_cross_sell(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.update("sub_1", month(1, 10), items=[("si_c", "core_basic", 3), ("si_a", "analytics", 1)])
    return w, month(2), [
        (T0, "new", "new", Decimal("30.0000"), "si_c"),
        (month(1, 10), "cross_sell", "expansion", Decimal("50.0000"), "si_a"),
    ]


def case_family_removed_downgrade(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3), ("si_a", "analytics", 1)], T0)
    w.update("sub_1", month(1, 10), items=[("si_c", "core_basic", 3)])
    return w, month(2), [
        (T0, "new", "new", Decimal("80.0000"), "si_a"),
        (month(1, 10), "downgrade", "contraction", Decimal("-50.0000"), "si_a"),
    ]


def case_seat_expansion(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.update("sub_1", month(1, 10), items=[("si_c", "core_basic", 5)])
    w.update("sub_1", month(2, 10), items=[("si_c", "core_basic", 2)])
    return w, month(3), [
        (T0, "new", "new", Decimal("30.0000"), "si_c"),
        (month(1, 10), "seat_expansion", "expansion", Decimal("20.0000"), "si_c"),
        (month(2, 10), "seat_contraction", "contraction", Decimal("-30.0000"), "si_c"),
    ]


def case_resource_expansion_metered(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 1), ("si_m", "api_metered", None)], T0)
    w.cycle("sub_1", month(1), usage={"si_m": 5_000})
    w.cycle("sub_1", month(2), usage={"si_m": 7_250})
    w.cycle("sub_1", month(3), usage={"si_m": 6_000})
    return w, month(3, 5), [
        (T0, "new", "new", Decimal("10.0000"), "si_c"),
        (month(1), "resource_expansion", "expansion", Decimal("50.0000"), "si_m"),
        (month(2), "resource_expansion", "expansion", Decimal("22.5000"), "si_m"),
        (month(3), "resource_contraction", "contraction", Decimal("-12.5000"), "si_m"),
    ]


def case_added_item_kept_family(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.update("sub_1", month(1, 10), items=[("si_c", "core_basic", 3), ("si_x", "addon", 2)])
    w.update("sub_1", month(2, 10), items=[("si_c", "core_basic", 3)])
    return w, month(3), [
        (T0, "new", "new", Decimal("30.0000"), "si_c"),
        (month(1, 10), "seat_expansion", "expansion", Decimal("10.0000"), "si_x"),
        (month(2, 10), "seat_contraction", "contraction", Decimal("-10.0000"), "si_x"),
    ]


def case_cancel_resubscribe_within_window(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_1", "core_basic", 3)], T0)
    w.cancel("sub_1", month(1, 10))
    w.subscribe("sub_2", "cus_1", [("si_2", "core_pro", 3)], month(1, 10) + 2 * MINUTE)
    # one transition dated at the cancellation: removed basic and added pro of family core are one switch
    return w, month(2), [
        (T0, "new", "new", Decimal("30.0000"), "si_1"),
        (month(1, 10), "upgrade", "expansion", Decimal("30.0000"), "si_2"),
    ]


def case_window_anchored(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_c", "core_basic", 4)])
    w.update("sub_1", t + 40 * MINUTE, items=[("si_c", "core_basic", 5)])
    w.update("sub_1", t + 80 * MINUTE, items=[("si_c", "core_basic", 6)])
    # 80 minutes is past the 60-minute window of the first change: a second transition, not a chain
    return w, month(2), [
        (T0, "new", "new", Decimal("30.0000"), "si_c"),
        (t, "seat_expansion", "expansion", Decimal("20.0000"), "si_c"),
        (t + 80 * MINUTE, "seat_expansion", "expansion", Decimal("10.0000"), "si_c"),
    ]


def case_annual_switch_equal(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_monthly", 1)], T0)
    w.update("sub_1", month(2), items=[("si_c", "core_annual", 1)])
    return w, month(3), [(T0, "new", "new", Decimal("100.0000"), "si_c")]


def case_annual_switch_higher(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_monthly", 1)], T0)
    w.update("sub_1", month(2), items=[("si_c", "core_annual_hi", 1)])
    return w, month(3), [
        (T0, "new", "new", Decimal("100.0000"), "si_c"),
        (month(2), "upgrade", "expansion", Decimal("25.0000"), "si_c"),
    ]


def case_discount_start(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 4)], T0)
    w.coupon("co_25", percent_off=25, duration="forever")
    d = w.discount("co_25", month(1, 5), customer="cus_1", subscription="sub_1")
    w.update("sub_1", month(1, 5), discounts=[d["id"]])
    return w, month(2), [
        (T0, "new", "new", Decimal("40.0000"), "si_c"),
        (month(1, 5), "discount", "contraction", Decimal("-10.0000"), "si_c"),
    ]


def case_coupon_ending(w: World) -> Case:
    base(w).coupon("co_20", percent_off=20, duration="repeating", duration_in_months=3)
    d = w.discount("co_20", T0, customer="cus_1", subscription="sub_1")
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 4)], T0, discounts=[d["id"]])
    return w, month(4), [
        (T0, "new", "new", Decimal("32.0000"), "si_c"),
        (month(3), "discount", "expansion", Decimal("8.0000"), "si_c"),
    ]


def _discount_ending_on_usage(w: World, currency: str, months: int, usage: list[int]) -> World:
    """cus_1 with 4 seats and a metered item under a 25% coupon for ``months``; usage invoiced monthly."""
    base(w, currency=currency).coupon("co_25", percent_off=25, duration="repeating", duration_in_months=months)
    d = w.discount("co_25", T0, customer="cus_1", subscription="sub_1")
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 4), ("si_m", "api_metered", None)], T0,
                discounts=[d["id"]])
    for n, cents in enumerate(usage, start=1):
        w.cycle("sub_1", month(n), usage={"si_m": cents})
    return w


def case_discount_ends_as_usage_arrives(w: World) -> Case:
    # the metered item had no amount under the discount: its first usage is valued at the discount (30.00 of
    # 40.00), and the discount's end is a part of its own (10.00), as for an item that had an amount
    _discount_ending_on_usage(w, "usd", 1, [4_000])
    return w, month(1, 5), [
        (T0, "new", "new", Decimal("30.0000"), "si_c"),
        (month(1), "discount", "expansion", Decimal("10.0000"), "si_c"),
        (month(1), "discount", "expansion", Decimal("10.0000"), "si_m"),
        (month(1), "resource_expansion", "expansion", Decimal("30.0000"), "si_m"),
    ]


def case_discount_ends_as_usage_drops(w: World) -> Case:
    # 80.00 of usage at 25% off, then 60.00 without: the item's MRR stays 60.00, yet it lost usage (-15.00 at
    # the discount) and its discount ended (+15.00); both are rows, as the customer's MRR changed
    _discount_ending_on_usage(w, "usd", 2, [8_000, 6_000])
    return w, month(2, 5), [
        (T0, "new", "new", Decimal("30.0000"), "si_c"),
        (month(1), "resource_expansion", "expansion", Decimal("60.0000"), "si_m"),
        (month(2), "discount", "expansion", Decimal("10.0000"), "si_c"),
        (month(2), "discount", "expansion", Decimal("15.0000"), "si_m"),
        (month(2), "resource_contraction", "contraction", Decimal("-15.0000"), "si_m"),
    ]


def case_rounding_remainder_tie(w: World) -> Case:
    # equal usage and discount parts of 15.00015 USD (15.00 EUR at 1.00001) each round to 15.0002, one 0.0001
    # too many: the remainder goes to the first of the equal largest, the usage part (plan, usage, discount)
    _discount_ending_on_usage(w, "eur", 2, [4_000, 6_000])
    w.fx_rates.append(("2023-12-01", "eur", 1.00001))
    return w, month(2, 5), [
        (T0, "new", "new", Decimal("30.0003"), "si_c"),
        (month(1), "resource_expansion", "expansion", Decimal("30.0003"), "si_m"),
        (month(2), "discount", "expansion", Decimal("10.0001"), "si_c"),
        (month(2), "discount", "expansion", Decimal("15.0002"), "si_m"),
        (month(2), "resource_expansion", "expansion", Decimal("15.0001"), "si_m"),
    ]


def case_seats_under_discount(w: World) -> Case:
    base(w).coupon("co_pct", percent_off=25, duration="forever")
    w.coupon("co_off", amount_off=500, currency="usd", duration="forever")
    d1 = w.discount("co_pct", T0, customer="cus_1", subscription="sub_1")
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 4)], T0, discounts=[d1["id"]])
    w.customer("cus_2")
    d2 = w.discount("co_off", T0, customer="cus_2", subscription="sub_2")
    w.subscribe("sub_2", "cus_2", [("si_d", "core_basic", 4)], T0, discounts=[d2["id"]])
    w.update("sub_1", month(1, 10), items=[("si_c", "core_basic", 6)])
    w.update("sub_2", month(1, 10), items=[("si_d", "core_basic", 6)])
    # a discount that stays is no discount movement: 25% off 20 more, and a fixed 5 off that does not move
    return w, month(2), [
        (T0, "new", "new", Decimal("30.0000"), "si_c"),
        (month(1, 10), "seat_expansion", "expansion", Decimal("15.0000"), "si_c"),
    ]


def case_fx_only(w: World) -> Case:
    base(w, currency="eur").subscribe("sub_1", "cus_1", [("si_c", "core_monthly", 1)], T0)
    w.fx_rates += [("2023-12-01", "eur", 1.08), ("2024-02-01", "eur", 1.10)]
    return w, month(3), [
        (T0, "new", "new", Decimal("108.0000"), "si_c"),
        (ts(2024, 2, 1), "fx", "fx", Decimal("2.0000"), "si_c"),
    ]


def case_trial_lapse(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0, trial_end=T0 + 14 * DAY)
    w.update("sub_1", T0 + 14 * DAY, status="incomplete_expired")
    w.end("sub_1", T0 + 14 * DAY + 5 * MINUTE)
    return w, month(2), []


def case_trial_converts(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0, trial_end=T0 + 14 * DAY)
    w.update("sub_1", T0 + 14 * DAY, status="active")
    return w, month(2), [(T0 + 14 * DAY, "new", "new", Decimal("30.0000"), "si_c")]


def case_churn_at_period_end(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.cancel("sub_1", month(1, 5), ended_at=month(2))
    return w, month(3), [
        (T0, "new", "new", Decimal("30.0000"), "si_c"),
        (month(2), "cancellation", "churn", Decimal("-30.0000"), "si_c"),
    ]


def case_second_subscription_same_family(w: World) -> Case:
    base(w).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.subscribe("sub_2", "cus_1", [("si_d", "core_pro", 1)], month(1, 3))
    w.cancel("sub_2", month(2, 3))
    # another item of a kept family, added and removed while the customer stays
    return w, month(3), [
        (T0, "new", "new", Decimal("30.0000"), "si_c"),
        (month(1, 3), "seat_expansion", "expansion", Decimal("20.0000"), "si_d"),
        (month(2, 3), "seat_contraction", "contraction", Decimal("-20.0000"), "si_d"),
    ]


def case_one_third_rounding(w: World) -> Case:
    # three items of 1/3 EUR at 1.00 USD: parts of 0.3333... each; the remainder lands on the largest
    base(w, currency="eur")
    w.price("third", "prod_core", 100, interval="month", interval_count=3, currency="eur")
    w.subscribe("sub_1", "cus_1", [("si_c", "core_monthly", 1)], T0)
    w.update("sub_1", month(1, 2), items=[("si_c", "core_monthly", 1), ("si_1", "third", 1),
                                          ("si_2", "third", 2), ("si_3", "third", 4)])
    w.fx_rates.append(("2023-12-01", "eur", 1.0))
    return w, month(2), [
        (T0, "new", "new", Decimal("100.0000"), "si_c"),
        (month(1, 2), "seat_expansion", "expansion", Decimal("0.3333"), "si_1"),
        (month(1, 2), "seat_expansion", "expansion", Decimal("0.6667"), "si_2"),
        (month(1, 2), "seat_expansion", "expansion", Decimal("1.3333"), "si_3"),
    ]


CASES = [
    pytest.param(case_new_multi_family, id="new-multi-family-one-row"),
    pytest.param(case_reactivation_other_plan, id="reactivation-other-plan"),
    pytest.param(case_cancellation_voluntary, id="cancellation-voluntary"),
    pytest.param(case_cancellation_involuntary_unpaid, id="cancellation-involuntary-unpaid"),
    pytest.param(case_upgrade_with_seats, id="upgrade-with-seats-split"),
    pytest.param(case_downgrade_plan, id="downgrade-plan"),
    pytest.param(case_cross_sell, id="cross-sell"),
    pytest.param(case_family_removed_downgrade, id="family-removed-downgrade"),
    pytest.param(case_seat_expansion, id="seat-expansion"),
    pytest.param(case_resource_expansion_metered, id="resource-expansion-metered"),
    pytest.param(case_added_item_kept_family, id="added-item-kept-family-seat"),
    pytest.param(case_second_subscription_same_family, id="second-subscription-kept-family"),
    pytest.param(case_cancel_resubscribe_within_window, id="cancel-resubscribe-within-window"),
    pytest.param(case_window_anchored, id="window-anchored-not-chained"),
    pytest.param(case_annual_switch_equal, id="annual-switch-equal-mrr"),
    pytest.param(case_annual_switch_higher, id="annual-switch-higher-mrr"),
    pytest.param(case_discount_start, id="discount-start"),
    pytest.param(case_coupon_ending, id="coupon-ending"),
    pytest.param(case_discount_ends_as_usage_arrives, id="discount-ends-as-usage-arrives"),
    pytest.param(case_discount_ends_as_usage_drops, id="discount-ends-as-usage-drops"),
    pytest.param(case_rounding_remainder_tie, id="rounding-remainder-tie-plan-usage-discount"),
    pytest.param(case_seats_under_discount, id="seats-under-a-kept-discount"),
    pytest.param(case_fx_only, id="fx-only"),
    pytest.param(case_trial_lapse, id="trial-lapse-no-movement"),
    pytest.param(case_trial_converts, id="trial-converts-new"),
    pytest.param(case_churn_at_period_end, id="churn-at-period-end"),
    pytest.param(case_one_third_rounding, id="rounding-remainder-on-largest"),
]


# The cases with exchange rates of their own (the others share the rates of cases_store)
OWN_RATES = {"rounding-remainder-on-largest", "rounding-remainder-tie-plan-usage-discount"}
SHARED_RATES = (("2023-12-01", "eur", 1.08), ("2024-02-01", "eur", 1.10))


@pytest.fixture(scope="module")
def cases_store(tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path
                ) -> Iterator[duckdb.DuckDBPyConnection]:
    """Every case but those of OWN_RATES as its own account (``acct_<case id>``) of one store, derived once: a
    recompute of a tiny store is about a second, most of it DuckDB's planning, so one for all the cases instead
    of one each. (test_bridge.py::test_classifier_cases_in_one_multi_account_store does the same.)"""
    from stripe_churn.metrics.runner import recompute
    from stripe_churn.settings import Settings
    from stripe_churn.store.db import open_store

    path = tmp_path_factory.mktemp("cases") / "cases.duckdb"
    shutil.copyfile(migrated_store_file, path)
    con = open_store(path)
    for param in CASES:
        if param.id not in OWN_RATES:
            w, seen_at, _ = param.values[0](World(account_id=f"acct_{param.id}"))
            w.fx_rates = []  # (rates are global: the accounts share SHARED_RATES)
            w.load(con, seen_at=seen_at)
    for date, currency, rate in SHARED_RATES:
        con.execute("INSERT INTO fx_rates (date, currency, rate) VALUES (?, ?, ?)", [date, currency, rate])
    recompute(con, Settings())
    try:
        yield con
    finally:
        con.close()


@pytest.mark.parametrize("build", CASES)
def test_rule(request: pytest.FixtureRequest, world: World, derive: Derive, build: Callable[[World], Case]
              ) -> None:
    case = request.node.callspec.id
    if case in OWN_RATES:
        w, seen_at, expected = build(world)
        con, account = derive(w, seen_at=seen_at), None
    else:
        w, seen_at, expected = build(World(account_id=f"acct_{case}"))
        assert not w.fx_rates or set(w.fx_rates) <= set(SHARED_RATES), w.fx_rates
        con, account = request.getfixturevalue("cases_store"), f"acct_{case}"
    got = movements(con, account=account)
    assert got == sorted(expected, key=lambda r: (r[0], r[1], r[4] or "")), (
        "movements differ:\n  got      " + "\n           ".join(map(str, got))
        + "\n  expected " + "\n           ".join(map(str, expected)))
    check_invariants(con, account=account)
    # (the bridge of every case adds up: test_bridge.py::test_classifier_cases_in_one_multi_account_store)


# --- what rows carry besides the label ---------------------------------------------------------------

def rows(con: duckdb.DuckDBPyConnection, where: str = "true") -> list[dict[str, Any]]:
    cur = con.execute(f"SELECT * REPLACE (CAST(epoch(occurred_at) AS BIGINT) AS occurred_at) FROM mrr_movements "
                      f"WHERE {where} ORDER BY occurred_at, movement")
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


@one_store
def test_amount_off_discount_kept(world: World, derive: Derive) -> None:
    w, seen_at, _ = case_seats_under_discount(world)
    con = derive(w, seen_at=seen_at)
    assert movements(con, "cus_2") == [
        (T0, "new", "new", Decimal("35.0000"), "si_d"),
        (month(1, 10), "seat_expansion", "expansion", Decimal("20.0000"), "si_d"),
    ]


PLAN_SWITCH_CHANGES = ["coupon-ends", "coupon-starts", "item-coupon-dropped"]


def discount_changing_with_a_plan_switch(world: World, change: str, new_item: bool) -> tuple[World, list[Row], str]:
    """4 seats switched from basic to pro (``new_item``: a new item replaces the old) as a discount ends, starts or
    is dropped from the item. Returns the world, the expected movements but the `new` and the new item's id."""
    w = base(world)
    w.coupon("quarter", percent_off=25, duration="repeating", duration_in_months=3)
    w.coupon("quarter_forever", percent_off=25)
    new_id = "si_p" if new_item else "si_c"
    if change == "coupon-ends":
        # 4 x basic under 25% off until month 3 (30); ten minutes after it ends, 4 x pro (80): +50
        d = w.discount("quarter", T0, customer="cus_1", subscription="sub_1")
        w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 4)], T0, discounts=[d["id"]])
        at = month(3)
        w.update("sub_1", at + 10 * MINUTE, items=[(new_id, "core_pro", 4)], discounts=[])
        # plan 30 = (80 - 40) x 0.75 at the old discount, then the discount's end 20 = 80 - 60
        expected = [(at, "discount", "expansion", Decimal("20.0000")), (at, "upgrade", "expansion", Decimal("30.0000"))]
    elif change == "coupon-starts":
        # 4 x basic (40); on the switch to 4 x pro a 25% forever discount starts (60): +20
        w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 4)], T0)
        at = month(1, 10)
        d = w.discount("quarter_forever", at, customer="cus_1", subscription="sub_1")
        w.update("sub_1", at, items=[(new_id, "core_pro", 4)], discounts=[d["id"]])
        # plan 40 = 80 - 40 undiscounted, then the discount's start -20 = 60 - 80
        expected = [(at, "discount", "contraction", Decimal("-20.0000")),
                    (at, "upgrade", "expansion", Decimal("40.0000"))]
    else:
        # 4 x basic with an item-level 25% forever discount (30), switched to 4 x pro without it (80): +50
        w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 4)], T0)
        d = w.discount("quarter_forever", T0, customer="cus_1", subscription="sub_1", subscription_item="si_c")
        w.objects["subscriptions"]["sub_1"]["items"]["data"][0]["discounts"] = [d["id"]]
        at = month(1, 10)
        w.objects["discounts"][d["id"]]["end"] = at
        w.update("sub_1", at, items=[(new_id, "core_pro", 4)])
        w.objects["subscriptions"]["sub_1"]["items"]["data"][0]["discounts"] = []
        expected = [(at, "discount", "expansion", Decimal("20.0000")), (at, "upgrade", "expansion", Decimal("30.0000"))]
    return w, expected, new_id


@pytest.mark.parametrize("change", PLAN_SWITCH_CHANGES)
@pytest.mark.parametrize("new_item", [False, True], ids=["same-item", "new-item"])
@one_store
def test_discount_changing_with_a_plan_switch(world: World, derive: Derive, change: str, new_item: bool) -> None:
    """A discount that starts or ends in the window of a plan switch is a `discount` movement (design.md 4), and
    the switch is labelled alike whether Stripe kept the item id or replaced the item (a pair, design.md 5):
    plan part at the discount before the change, the discount part the rest."""
    w, expected, new_id = discount_changing_with_a_plan_switch(world, change, new_item)
    con, account = derive(w, seen_at=month(4)), w.account_id
    got = [m for m in movements(con, account=account) if m[1] != "new"]
    assert [m[:4] for m in got] == expected, (account, got)
    assert {m[4] for m in got} == {new_id}, account
    check_invariants(con, account=account)


@one_store
def test_cancellation_carries_churn_type_and_feedback(world: World, derive: Derive) -> None:
    w, seen_at, _ = case_cancellation_voluntary(world)
    w.customer("cus_2")
    w.subscribe("sub_2", "cus_2", [("si_z", "core_basic", 1)], T0)
    w.cancel("sub_2", month(1, 3), reason="payment_failed", comment="Card keeps failing; we'll be back.")
    con = derive(w, seen_at=seen_at)
    churn = {r["customer_id"]: r for r in rows(con, "movement = 'cancellation'")}
    assert churn["cus_1"]["churn_type"] == "voluntary"
    assert churn["cus_1"]["cancellation_feedback"] == "too_expensive"
    assert churn["cus_2"]["churn_type"] == "involuntary"
    assert all(r["churn_type"] is None for r in rows(con, "movement <> 'cancellation'"))
    # (design.md 5: the comment too, on the cancellation row alone; mrr_movements keeps design.md 7's columns)
    comments = con.execute("SELECT customer_id, movement, cancellation_comment FROM derived_mrr_movements "
                           "WHERE cancellation_comment IS NOT NULL OR customer_id = 'cus_2' ORDER BY ALL").fetchall()
    assert comments == [("cus_1", "cancellation", "budget cut"),
                        ("cus_2", "cancellation", "Card keeps failing; we'll be back."), ("cus_2", "new", None)]
    assert "cancellation_comment" not in [d[0] for d in con.execute("SELECT * FROM mrr_movements LIMIT 0").description]


@one_store
def test_unpaid_churn_is_involuntary(world: World, derive: Derive) -> None:
    w, seen_at, _ = case_cancellation_involuntary_unpaid(world)
    con = derive(w, seen_at=seen_at)
    (churn,) = rows(con, "movement = 'cancellation'")
    assert churn["churn_type"] == "involuntary"


@pytest.mark.parametrize("events_from", ["start", "coverage"])
@one_store
def test_a_payment_failure_does_not_date_a_churn_that_follows_within_the_window(world: World, derive: Derive,
                                                                              events_from: str) -> None:
    """A renewal's payment fails (active -> past_due, MRR unchanged) and 20 minutes later the subscription goes
    unpaid: the churn is dated when it went unpaid, not at the failure. The same when the failure is seen only at
    the start of the events' window (the event that takes it unpaid, 5 minutes after another customer's event
    opened the window, is the first of the subscription's and says it was past_due before; invoices alone say
    nothing of the failure): the window's start must not date the churn either."""
    w = base(world)
    w.customer("cus_2")
    w.subscribe("sub_1", "cus_1", [("si_1", "core_basic", 2)], T0)
    w.subscribe("sub_2", "cus_2", [("si_2", "core_basic", 1)], T0)
    fail = month(1)
    w.cycle("sub_1", fail)
    opened = fail + 3 * DAY
    w.update("sub_2", opened, items=[("si_2", "core_basic", 2)])
    if events_from == "start":
        w.update("sub_1", opened - 20 * 60, status="past_due")
        unpaid = opened
    else:
        w.objects["subscriptions"]["sub_1"]["status"] = "past_due"
        unpaid = opened + 5 * 60
    w.update("sub_1", unpaid, status="unpaid")
    con = derive(w, seen_at=month(2), events=True if events_from == "start" else opened)
    assert [m for m in movements(con) if m[1] != "new"] == [
        (unpaid, "cancellation", "churn", Decimal("-20.0000"), "si_1")]
    (churn,) = rows(con, "movement = 'cancellation'")
    assert churn["churn_type"] == "involuntary"
    check_invariants(con)


@pytest.mark.parametrize("spell", ["unpaid", "paused", "past_due"])
def test_an_undone_churn_keeps_no_reason_given_later(world: World, derive: Derive, spell: str) -> None:
    """A churn the customer undid (an unpaid spell paid off; a pause or a past_due spell under the settings
    that count them zero) had no cancellation reason or feedback then: the subscription's cancellation_details,
    given at its later cancellation, belong to that cancellation's row alone."""
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_1", "core_basic", 2)], T0)
    if spell == "paused":
        w.update("sub_1", month(1, 10), pause_collection={"behavior": "void", "resumes_at": None})
        w.update("sub_1", month(2, 10), pause_collection=None)
    else:
        if spell == "unpaid":
            w.update("sub_1", month(1, 1), status="past_due")
        w.update("sub_1", month(1, 10), status=spell)
        w.update("sub_1", month(2, 10), status="active")
    w.cancel("sub_1", month(3, 10), reason="payment_failed", feedback="too_expensive")
    con = derive(w, seen_at=month(4), pause_collection_keeps_mrr=spell != "paused",
                 past_due_counts=spell != "past_due")
    got = [(r["occurred_at"], r["movement"], r["mrr_delta"], r["churn_type"], r["cancellation_feedback"])
           for r in rows(con, "movement IN ('cancellation', 'reactivation')")]
    assert got == [
        (month(1, 10), "cancellation", Decimal(-20), "voluntary" if spell == "paused" else "involuntary", None),
        (month(2, 10), "reactivation", Decimal(20), None, None),
        (month(3, 10), "cancellation", Decimal(-20), "involuntary", "too_expensive"),
    ]
    reasons = con.execute("SELECT period_start, churn_type, cancellation_feedback, churned_mrr FROM churn_reasons "
                          "ORDER BY ALL").fetchall()
    assert [(str(p), t, f, m) for p, t, f, m in reasons] == [
        (str(datetime.fromtimestamp(month(1), UTC).date()), "voluntary" if spell == "paused" else "involuntary",
         "(none)", Decimal(20)),
        (str(datetime.fromtimestamp(month(3), UTC).date()), "involuntary", "too_expensive", Decimal(20))]


SECOND_COUPONS = {"same-amount-off": ("co_r50", "-20.0000"), "other": ("co_f25", "-7.5000")}
SAME_AMOUNT_HOW = ["same-item", "new-subscription"]


def discount_change_taking_off(world: World, coupon: str, how: str) -> tuple[World, int]:
    """5 seats at 50.00 with 10% off become 1 seat with ``coupon`` within the window (``how``). Returns the world
    and the change's moment."""
    w = base(world)
    w.coupon("co_r10", percent_off=10, duration="repeating", duration_in_months=6)
    w.coupon("co_r50", percent_off=50, duration="forever")
    w.coupon("co_f25", percent_off=25, duration="forever")
    d1 = w.discount("co_r10", T0, customer="cus_1", subscription="sub_1")
    w.subscribe("sub_1", "cus_1", [("si_1", "analytics", 5)], T0, discounts=[d1["id"]])
    at = month(1, 5)
    if how == "same-item":
        w.update("sub_1", at, items=[("si_1", "analytics", 1)])
        d2 = w.discount(coupon, at + 60, customer="cus_1", subscription="sub_1")
        w.update("sub_1", at + 60, discounts=[d2["id"]])
    else:
        w.cancel("sub_1", at)
        d2 = w.discount(coupon, at + 17 * 60, customer="cus_1", subscription="sub_2")
        w.subscribe("sub_2", "cus_1", [("si_2", "analytics", 1)], at + 17 * 60, discounts=[d2["id"]])
    return w, at


@pytest.mark.parametrize("second", SECOND_COUPONS)
@pytest.mark.parametrize("how", SAME_AMOUNT_HOW)
@one_store
def test_a_discount_change_taking_off_the_same_amount_is_a_discount_part(world: World, derive: Derive, second: str,
                                                                         how: str) -> None:
    """5 seats at 50.00 with 10% off (225.00) become 1 seat with another coupon within the window: the seat part
    is valued at the old discount (0.9 x -200 = -180) and the discount's change is its own part, also when the
    new coupon (50%) happens to take off the same 25.00 as the old one."""
    coupon, discount_part = SECOND_COUPONS[second]
    w, at = discount_change_taking_off(world, coupon, how)
    con, account = derive(w, seen_at=month(3)), w.account_id
    got = sorted((r["movement"], str(r["mrr_delta"]))
                 for r in rows(con, f"occurred_at = to_timestamp({at}) AND account_id = '{account}'"))
    assert got == sorted([("seat_contraction", "-180.0000"), ("discount", discount_part)]), (account, got)
    check_invariants(con, account=account)


@pytest.mark.parametrize("change", ["seats", "added-item", "beside-another-subscription"])
@one_store
def test_a_shared_amount_off_split_anew_belongs_to_the_change(world: World, derive: Derive, change: str) -> None:
    """A subscription's fixed 20.00 amount_off is shared among its items by MRR: when one item changes, the other
    item's share moves although its price, quantity and discounts did not. That part belongs to the change of
    that subscription that caused it (two more seats: +20.00, all seat_expansion; an added item: all cross_sell),
    not to an upgrade of the untouched item, nor to a larger change of another subscription in the window."""
    w = base(world)
    w.coupon("off20", amount_off=2000, currency="usd", duration="forever")
    d = w.discount("off20", T0, customer="cus_1", subscription="sub_1")
    w.subscribe("sub_1", "cus_1", [("si_a", "core_basic", 3), ("si_b", "analytics", 1)], T0, discounts=[d["id"]])
    if change != "added-item":
        w.update("sub_1", month(0, 10), items=[("si_a", "core_basic", 5), ("si_b", "analytics", 1)])
        expected = [(month(0, 10), "seat_expansion", "expansion", Decimal(20), "si_a")]
    else:
        w.price("api_flat", "prod_api", 4_000)
        w.update("sub_1", month(0, 10), items=[("si_a", "core_basic", 3), ("si_b", "analytics", 1),
                                                ("si_c", "api_flat", 1)])
        expected = [(month(0, 10), "cross_sell", "expansion", Decimal(40), "si_c")]
    if change == "beside-another-subscription":
        w.price("api_big", "prod_api", 10_000)
        w.subscribe("sub_2", "cus_1", [("si_d", "api_big", 1)], month(0, 10) + 600)
        expected = [(month(0, 10), "cross_sell", "expansion", Decimal(100), "si_d"),
                    (month(0, 10), "seat_expansion", "expansion", Decimal(20), "si_a")]
    con = derive(w, seen_at=month(1, 5))
    assert [m for m in movements(con) if m[1] != "new"] == expected
    check_invariants(con)


@one_store
def test_an_amount_off_put_on_an_item_of_no_amount_is_no_movement_later(world: World, derive: Derive) -> None:
    """An item-level 15.00 amount_off goes on a metered item before it has usage (MRR 0: no movement then). When
    the first usage is invoiced (123.45, less the subscription's 10%, less 15.00: 96.105) no discount starts or
    ends: the whole change is resource_expansion."""
    w = base(world)
    w.coupon("off15", amount_off=1500, currency="usd", duration="forever")
    w.coupon("p10", percent_off=10, duration="forever")
    d0 = w.discount("p10", T0, customer="cus_1", subscription="sub_1")
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 2), ("si_m", "api_metered", None)], T0,
                discounts=[d0["id"]])
    d = w.discount("off15", T0 + 4 * DAY, customer="cus_1", subscription="sub_1", subscription_item="si_m")
    sub = w.objects["subscriptions"]["sub_1"]
    before = copy.deepcopy(sub)
    sub["items"]["data"][1]["discounts"] = [d["id"]]
    w.event("customer.subscription.updated", T0 + 4 * DAY, sub, before)
    w.cycle("sub_1", month(1), usage={"si_m": 12_345})
    con = derive(w, seen_at=month(1, 10))
    assert [m for m in movements(con) if m[1] != "new"] == [
        (month(1), "resource_expansion", "expansion", Decimal("96.1050"), "si_m")]
    check_invariants(con)


@one_store
def test_an_item_that_stops_counting_at_zero_mrr_is_a_change_in_the_window(world: World, derive: Derive) -> None:
    """With churn_recognition "canceled", a subscription brought to 0 by a 999.00 amount_off and set to cancel 3
    minutes later is one transition of the customer (80.00 to 20.00) in which its item no longer counts: a
    removed item of a family the customer keeps (seat_contraction), not a discount."""
    w = base(world)
    w.coupon("off999", amount_off=99_900, currency="usd", duration="forever")
    w.subscribe("sub_1", "cus_1", [("si_1", "core_basic", 2)], T0)
    w.subscribe("sub_2", "cus_1", [("si_2", "core_pro", 3)], T0)
    t = month(1, 9)
    d = w.discount("off999", t, customer="cus_1", subscription="sub_2")
    w.update("sub_2", t, discounts=[d["id"]])
    w.cancel("sub_2", t + 180, ended_at=month(2))
    con = derive(w, seen_at=month(3), churn_recognition="canceled")
    assert [m for m in movements(con) if m[1] != "new"] == [
        (t, "seat_contraction", "contraction", Decimal(-60), "si_2")]
    check_invariants(con)


@one_store
def test_every_row_traces_to_stripe(world: World, derive: Derive) -> None:
    w, _, _ = case_upgrade_with_seats(world)
    w.update("sub_1", month(2, 4), items=[("si_c", "core_pro", 5), ("si_a", "analytics", 1)])
    w.cancel("sub_1", month(3, 1))
    con = derive(w, seen_at=month(4))
    event_ids = {e["id"] for e in w.events}
    got = rows(con)
    assert len(got) == 5
    for r in got:
        assert r["subscription_id"] == "sub_1" and r["subscription_item_id"] and r["price_id"] and r["product_id"]
        assert r["source_event_id"] in event_ids, r
        assert r["account_id"] == w.account_id
        assert r["currency"] == "usd"


@one_store
def test_source_ids_point_at_the_change(world: World, derive: Derive) -> None:
    base(world).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    world.update("sub_1", month(1, 10), items=[("si_c", "core_basic", 5)])
    upgrade_event = world.events[-1]["id"]
    con = derive(world, seen_at=month(2))
    (row,) = rows(con, "movement = 'seat_expansion'")
    assert row["source_event_id"] == upgrade_event
    # the proration invoice of that change
    invoices = [i for i in world.objects["invoices"].values() if i["billing_reason"] == "subscription_update"]
    assert row["source_invoice_id"] == invoices[0]["id"]


def test_amount_delta_original_in_own_currency(world: World, derive: Derive) -> None:
    base(world, currency="eur").subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    world.update("sub_1", month(1, 10), items=[("si_c", "core_basic", 5)])
    world.fx_rates.append(("2023-12-01", "eur", 1.08))
    con = derive(world, seen_at=month(2))
    got = [(r["movement"], r["currency"], r["amount_delta_original"], r["mrr_delta"]) for r in rows(con)]
    assert got == [("new", "eur", Decimal("30.0000"), Decimal("32.4000")),
                   ("seat_expansion", "eur", Decimal("20.0000"), Decimal("21.6000"))]


@one_store
def test_movement_window_setting(world: World, derive: Derive) -> None:
    w, _, _ = case_cancel_resubscribe_within_window(world)
    con = derive(w, seen_at=month(2), movement_window_minutes=1)
    # with a one-minute window the cancellation and the new subscription two minutes later are apart
    assert [(m[1], m[3]) for m in movements(con)] == [
        ("new", Decimal("30.0000")), ("cancellation", Decimal("-30.0000")), ("reactivation", Decimal("60.0000"))]


@one_store
def test_churn_recognised_at_cancel_time(world: World, derive: Derive) -> None:
    base(world).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    world.subscribe("sub_2", "cus_1", [("si_a", "analytics", 1)], T0)
    world.cancel("sub_2", month(1, 5), ended_at=month(2), feedback="unused")
    world.cancel("sub_1", month(2, 5), ended_at=month(3))
    con = derive(world, seen_at=month(4), churn_recognition="canceled")
    # analytics leaves when its cancellation is made, not at period end, and while core stays it is a
    # downgrade; the last subscription's cancellation is the churn
    assert movements(con) == [
        (T0, "new", "new", Decimal("80.0000"), "si_a"),
        (month(1, 5), "downgrade", "contraction", Decimal("-50.0000"), "si_a"),
        (month(2, 5), "cancellation", "churn", Decimal("-30.0000"), "si_c"),
    ]
    check_invariants(con)


@one_store
def test_unpaid_second_subscription_is_a_downgrade(world: World, derive: Derive) -> None:
    base(world).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    world.subscribe("sub_2", "cus_1", [("si_a", "analytics", 1)], T0)
    world.update("sub_2", month(1, 1), status="past_due")
    world.update("sub_2", month(1, 15), status="unpaid")
    con = derive(world, seen_at=month(2))
    assert movements(con) == [
        (T0, "new", "new", Decimal("80.0000"), "si_a"),
        (month(1, 15), "downgrade", "contraction", Decimal("-50.0000"), "si_a"),
    ]


@one_store
def test_past_due_setting(world: World, derive: Derive) -> None:
    base(world).subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    world.update("sub_1", month(1, 1), status="past_due")
    world.update("sub_1", month(1, 9), status="active")
    con = derive(world, seen_at=month(2), past_due_counts=False)
    assert [(m[0], m[1]) for m in movements(con)] == [
        (T0, "new"), (month(1, 1), "cancellation"), (month(1, 9), "reactivation")]


@one_store
def test_resource_unit_quantity(world: World, derive: Derive) -> None:
    base(world).product("prod_storage", unit_label="GB", family="storage")
    world.price("storage", "prod_storage", 10)
    world.subscribe("sub_1", "cus_1", [("si_s", "storage", 500)], T0)
    world.update("sub_1", month(1, 10), items=[("si_s", "storage", 800)])
    con = derive(world, seen_at=month(2))
    assert movements(con)[1:] == [(month(1, 10), "resource_expansion", "expansion", Decimal("30.0000"), "si_s")]


def test_family_and_unit_settings(world: World, derive: Derive) -> None:
    base(world).product("prod_reports")  # no metadata family, no unit label
    world.price("reports", "prod_reports", 2_500)
    world.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    world.update("sub_1", month(1, 10), items=[("si_c", "core_basic", 3), ("si_r", "reports", 2)])
    con = derive(world, seen_at=month(2))
    assert movements(con)[1:] == [(month(1, 10), "cross_sell", "expansion", Decimal("50.0000"), "si_r")]
    # the settings put the product in family core (kept by the customer) and call its unit a resource
    con = derive(world, seen_at=month(2), families={"prod_reports": "core"}, units={"prod_reports": "resource"})
    assert movements(con)[1:] == [(month(1, 10), "resource_expansion", "expansion", Decimal("50.0000"), "si_r")]


@one_store
def test_view_columns_and_types(world: World, derive: Derive) -> None:
    w, seen_at, _ = case_upgrade_with_seats(world)
    con = derive(w, seen_at=seen_at)
    cols = con.execute("DESCRIBE mrr_movements").fetchall()
    assert [(c[0], c[1]) for c in cols] == [
        ("account_id", "VARCHAR"), ("customer_id", "VARCHAR"), ("subscription_id", "VARCHAR"),
        ("subscription_item_id", "VARCHAR"), ("product_id", "VARCHAR"), ("price_id", "VARCHAR"),
        ("occurred_at", "TIMESTAMP WITH TIME ZONE"), ("movement", "VARCHAR"), ("category", "VARCHAR"),
        ("mrr_before", "DECIMAL(18,4)"), ("mrr_after", "DECIMAL(18,4)"), ("mrr_delta", "DECIMAL(18,4)"),
        ("currency", "VARCHAR"), ("amount_delta_original", "DECIMAL(18,4)"), ("churn_type", "VARCHAR"),
        ("cancellation_feedback", "VARCHAR"), ("source_event_id", "VARCHAR"), ("source_invoice_id", "VARCHAR"),
    ]
    (at,) = con.execute("SELECT strftime(min(occurred_at) AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S') "
                        "FROM mrr_movements").fetchall()[0]
    assert at == datetime.fromtimestamp(T0, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def test_a_customer_of_forty_subscriptions_is_labelled_as_a_small_one(world: World, derive: Derive) -> None:
    """Step 62 lists, for a change of a customer of more than 32 item rows, only the rows that change, the largest
    held row and one held row of each family they touch (every row held, before: (changes x items) rows per
    customer, minutes for one of thousands of subscriptions). The labels that read the held rows: a removed or an
    added item of a family the customer keeps is a contraction or an expansion, not a downgrade or a cross-sell;
    the main item (largest MRR) of a change that touches only a smaller item is a held one (its plan segment)."""
    base(world)
    for k in range(40):
        world.subscribe(f"sub_{k}", "cus_1", [(f"si_{k}", "core_basic", 1)], T0)
    world.update("sub_5", month(2), items=[("si_5", "core_basic", 3)])
    world.subscribe("sub_a", "cus_1", [("si_a", "analytics", 1)], month(2, 1))
    world.cancel("sub_7", month(3))
    world.subscribe("sub_x", "cus_1", [("si_x", "addon", 1)], month(3, 1))
    world.update("sub_3", month(4), items=[("si_3", "core_pro", 1)])
    world.cancel("sub_20", month(5))
    con = derive(world, seen_at=month(6))
    assert con.execute("SELECT count(*) FROM derived_item_mrr WHERE customer_id = 'cus_1'").fetchall()[0][0] > 32
    assert movements(con) == [
        (T0, "new", "new", Decimal("400.0000"), "si_9"),
        (month(2), "seat_expansion", "expansion", Decimal("20.0000"), "si_5"),
        (month(2, 1), "cross_sell", "expansion", Decimal("50.0000"), "si_a"),
        (month(3), "seat_contraction", "contraction", Decimal("-10.0000"), "si_7"),
        (month(3, 1), "seat_expansion", "expansion", Decimal("5.0000"), "si_x"),
        (month(4), "upgrade", "expansion", Decimal("10.0000"), "si_3"),
        (month(5), "seat_contraction", "contraction", Decimal("-10.0000"), "si_20"),
    ]
    check_invariants(con)
    # (the plan segment after the last change: the largest item then is si_a, analytics at 50.00, held through it)
    assert con.execute("SELECT price_id FROM derived_transition_states WHERE customer_id = 'cus_1' AND t_start = ?",
                       [datetime.fromtimestamp(month(5), UTC)]).fetchall() == [("analytics",)]
