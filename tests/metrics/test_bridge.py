"""The MRR bridge (design.md 6 and 7), scheduled churn, churn reasons and the cohort matrix.

The identity opening + new + reactivation + expansion - contraction - churn + fx = closing is checked for
every period kind and segment kind of every test store; the rates are compared with figures worked out by
hand; the monthly closing MRR is compared with customer_mrr, an independent path to the same number.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import duckdb
import pytest
from builders import DAY, World, add_months, ts

from stripe_churn.errors import ConfigError
from stripe_churn.metrics import queries

Derive = Callable[..., duckdb.DuckDBPyConnection]
PERIODS = ["week", "month", "quarter", "year"]
SEGMENTS = [None, "family", "plan", "product", "currency", "country", "size_band", "metadata.tier"]
BRIDGE_COLUMNS = [
    "period_start", "period_end", "opening_mrr", "new", "reactivation", "expansion", "contraction", "churn", "fx",
    "closing_mrr", "upgrade", "cross_sell", "seat_expansion", "resource_expansion", "downgrade",
    "seat_contraction", "resource_contraction", "discount_expansion", "discount_contraction",
    "opening_customers", "new_customers", "reactivated_customers", "churned_customers", "closing_customers",
    "gross_revenue_churn_rate", "net_revenue_churn_rate", "nrr", "grr", "customer_churn_rate", "quick_ratio",
    "arpa", "net_negative_churn",
]


def catalogue(w: World) -> World:
    w.product("prod_core", unit_label="seat", family="core")
    w.product("prod_analytics", family="analytics")
    w.product("prod_api", unit_label="api call", family="api")
    for cur in ("usd", "eur", "gbp"):
        w.price(f"basic_{cur}", "prod_core", 1_000, currency=cur)
        w.price(f"pro_{cur}", "prod_core", 2_000, currency=cur)
        w.price(f"analytics_{cur}", "prod_analytics", 5_000, currency=cur)
        w.price(f"api_{cur}", "prod_api", None, usage_type="metered", currency=cur)
    w.fx_rates += [("2023-12-01", "eur", 1.08), ("2023-12-01", "gbp", 1.27), ("2024-04-01", "eur", 1.10)]
    return w


def book(w: World) -> World:
    """Several customers in three currencies and countries, with most kinds of movement."""
    catalogue(w)
    w.customer("cus_a", address={"country": "US"}, metadata={"tier": "gold"})
    w.subscribe("sub_a", "cus_a", [("si_a1", "basic_usd", 5)], ts(2024, 1, 1))
    w.update("sub_a", ts(2024, 2, 15), items=[("si_a1", "pro_usd", 5)])
    w.update("sub_a", ts(2024, 3, 10), items=[("si_a1", "pro_usd", 5), ("si_a2", "analytics_usd", 1),
                                              ("si_a3", "api_usd", None)])
    w.cycle("sub_a", ts(2024, 4, 10), usage={"si_a3": 12_345})
    w.customer("cus_b", currency="eur", address={"country": "DE"}, metadata={"tier": "silver"})
    w.subscribe("sub_b", "cus_b", [("si_b1", "pro_eur", 3)], ts(2024, 1, 10))
    w.cancel("sub_b", ts(2024, 3, 20), feedback="too_expensive")
    w.customer("cus_c", address={"country": "US"})
    w.subscribe("sub_c", "cus_c", [("si_c1", "basic_usd", 2)], ts(2024, 2, 1))
    w.update("sub_c", ts(2024, 2, 20), items=[("si_c1", "basic_usd", 1)])
    w.cancel("sub_c", ts(2024, 3, 5), ended_at=ts(2024, 4, 1), feedback="unused")
    w.subscribe("sub_c2", "cus_c", [("si_c2", "analytics_usd", 1)], ts(2024, 5, 5))
    w.customer("cus_d", currency="gbp", address={"country": "GB"})
    w.subscribe("sub_d", "cus_d", [("si_d1", "basic_gbp", 3)], ts(2024, 2, 1), trial_end=ts(2024, 2, 15))
    w.update("sub_d", ts(2024, 2, 15), status="active")
    w.update("sub_d", ts(2024, 4, 1), status="past_due")
    w.update("sub_d", ts(2024, 4, 20), status="unpaid")
    w.customer("cus_e", address={"country": "FR"}, metadata={"tier": "gold"})
    w.subscribe("sub_e", "cus_e", [("si_e1", "basic_usd", 4)], ts(2024, 3, 1))
    w.update("sub_e", ts(2024, 5, 10), cancel_at_period_end=True, cancel_at=ts(2024, 6, 1),
             canceled_at=ts(2024, 5, 10),
             cancellation_details={"reason": "cancellation_requested", "feedback": "switched_service",
                                   "comment": None})
    return w


SEEN = ts(2024, 5, 20)


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def assert_bridge_adds_up(con: duckdb.DuckDBPyConnection, label: str, periods: list[str] = PERIODS,
                          segments: list[str | None] = SEGMENTS) -> int:
    """Identity, subtotals and continuity for each period and segment kind; returns rows checked.

    ``segments`` must start with None (the whole account), which the segments are compared with.
    """
    checked = 0
    has_movements = con.execute("SELECT count(*) FROM mrr_movements").fetchall()[0][0] > 0
    for period in periods:
        totals: dict[dt.date, Decimal] = {}
        for segment in segments:
            got = queries.bridge(con, period, segment)
            assert got or not has_movements, f"{label}: no bridge rows for {period}/{segment}"
            by_seg: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in got:
                by_seg[r.get("segment_value", "all")].append(r)
                where = f"{label} {period}/{segment}={r.get('segment_value')} {r['period_start']}"
                flows = (r["opening_mrr"] + r["new"] + r["reactivation"] + r["expansion"] - r["contraction"]
                         - r["churn"] + r["fx"])
                assert flows == r["closing_mrr"], f"{where}: identity broken ({flows} != {r['closing_mrr']})"
                assert r["expansion"] == (r["upgrade"] + r["cross_sell"] + r["seat_expansion"]
                                          + r["resource_expansion"] + r["discount_expansion"]), where
                assert r["contraction"] == (r["downgrade"] + r["seat_contraction"] + r["resource_contraction"]
                                            + r["discount_contraction"]), where
                for col in ("new", "reactivation", "expansion", "contraction", "churn", "upgrade", "cross_sell",
                            "seat_expansion", "resource_expansion", "downgrade", "seat_contraction",
                            "resource_contraction", "discount_expansion", "discount_contraction"):
                    assert r[col] >= 0, f"{where}: {col} is negative ({r[col]})"
                assert r["closing_customers"] >= 0 and r["opening_customers"] >= 0, where
                checked += 1
            if segment is None:
                seq = by_seg["all"]
                for prev, cur in itertools.pairwise(seq):
                    assert cur["opening_mrr"] == prev["closing_mrr"], f"{label} {period}: gap at {cur['period_start']}"
                    assert cur["opening_customers"] == prev["closing_customers"]
                    assert cur["period_start"] == prev["period_end"] + dt.timedelta(days=1)
                totals = {r["period_start"]: r["closing_mrr"] for r in seq}
            else:
                summed: dict[dt.date, Decimal] = defaultdict(Decimal)
                for r in got:
                    summed[r["period_start"]] += r["closing_mrr"]
                for p, total in summed.items():
                    assert total == totals[p], f"{label} {period}/{segment}: segments add to {total} != {totals[p]}"
    return checked


def test_bridge_identity_every_period_and_segment(world: World, derive_read_only: Derive) -> None:
    con = derive_read_only(book(world), seen_at=SEEN)
    assert assert_bridge_adds_up(con, "book") > 100


def test_classifier_cases_in_one_multi_account_store(store: duckdb.DuckDBPyConnection) -> None:
    """Every hand-built case of the classifier tests as its own account of one store (same ids in each):
    each account's movements stay as in its own test, and the bridge adds up over all of them."""
    from test_classifier import CASES

    from stripe_churn.metrics.runner import recompute
    from stripe_churn.settings import Settings

    expected = {}
    for param in CASES:
        account = f"acct_{param.id}"
        w, seen_at, rows_expected = param.values[0](World(account_id=account))
        w.fx_rates = []  # rates are global: the accounts share the ones below
        w.load(store, seen_at=seen_at)
        expected[account] = sorted(rows_expected, key=lambda r: (r[0], r[1], r[4] or ""))
    for date, currency, rate in (("2023-12-01", "eur", 1.08), ("2024-02-01", "eur", 1.10)):
        store.execute("INSERT INTO fx_rates (date, currency, rate) VALUES (?, ?, ?)", [date, currency, rate])
    recompute(store, Settings())
    for account, rows_expected in expected.items():
        if account in ("acct_rounding-remainder-on-largest", "acct_rounding-remainder-tie-plan-usage-discount"):
            continue  # their own tests use EUR rates of their own (1.00, 1.00001)
        got = store.execute(
            "SELECT CAST(epoch(occurred_at) AS BIGINT), movement, category, mrr_delta, subscription_item_id "
            "FROM mrr_movements WHERE account_id = ? AND customer_id = 'cus_1' "
            "ORDER BY occurred_at, movement, subscription_item_id",
            [account]).fetchall()
        assert [tuple(r) for r in got] == rows_expected, account
    assert assert_bridge_adds_up(store, "classifier cases") > 100


def test_bridge_identity_small_simulation(small_sim_derived: duckdb.DuckDBPyConnection) -> None:
    # (the small simulation, recomputed under Settings())
    assert assert_bridge_adds_up(small_sim_derived, "small simulation") > 0


def test_closing_mrr_equals_customer_mrr_at_month_ends(world: World, derive_read_only: Derive) -> None:
    con = derive_read_only(book(world), seen_at=SEEN)
    for r in queries.bridge(con):
        end = r["period_end"] + dt.timedelta(days=1)
        (total,) = con.execute(
            "SELECT coalesce(sum(mrr), 0) FROM customer_mrr WHERE valid_from < CAST(? AS TIMESTAMPTZ) "
            "AND (valid_to IS NULL OR valid_to >= CAST(? AS TIMESTAMPTZ))",
            [f"{end} 00:00:00+00", f"{end} 00:00:00+00"]).fetchall()[0]
        assert r["closing_mrr"] == total, f"{r['period_start']}: bridge closes at {r['closing_mrr']}, customers sum {total}"


def test_book_by_hand(world: World, derive_read_only: Derive) -> None:
    """March 2024 of the book, worked out by hand."""
    con = derive_read_only(book(world), seen_at=SEEN)
    march = next(r for r in queries.bridge(con) if r["period_start"] == dt.date(2024, 3, 1))
    # opening: a 100 (pro x5), b 64.80 (60 EUR at 1.08), c 10, d 38.10 (30 GBP at 1.27)
    assert march["opening_mrr"] == Decimal("212.9000")
    assert march["new"] == Decimal("40.0000")  # e
    assert march["cross_sell"] == Decimal("50.0000")  # a adds analytics (api is metered, no usage yet)
    assert march["churn"] == Decimal("64.8000")  # b
    assert march["contraction"] == 0 and march["reactivation"] == 0 and march["fx"] == 0
    assert march["closing_mrr"] == Decimal("238.1000")
    assert (march["opening_customers"], march["new_customers"], march["churned_customers"],
            march["closing_customers"]) == (4, 1, 1, 4)
    april = next(r for r in queries.bridge(con) if r["period_start"] == dt.date(2024, 4, 1))
    # c ends at period end (1 April), d turns unpaid, a's usage of 123.45, no fx line: b is gone before EUR moves
    assert april["churn"] == Decimal("48.1000")
    assert april["resource_expansion"] == Decimal("123.4500")
    assert april["fx"] == 0
    may = next(r for r in queries.bridge(con) if r["period_start"] == dt.date(2024, 5, 1))
    assert may["reactivation"] == Decimal("50.0000") and may["reactivated_customers"] == 1


def rates_world(w: World) -> World:
    catalogue(w)
    for c in ("cus_1", "cus_2", "cus_3", "cus_4"):
        w.customer(c)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic_usd", 5)], ts(2024, 1, 3))
    w.subscribe("sub_2", "cus_2", [("si_2", "basic_usd", 5)], ts(2024, 1, 4))
    w.subscribe("sub_4", "cus_4", [("si_4", "pro_usd", 2)], ts(2024, 1, 5))
    w.update("sub_1", ts(2024, 3, 2), items=[("si_1", "basic_usd", 7)])
    w.update("sub_2", ts(2024, 3, 3), items=[("si_2", "basic_usd", 4)])
    w.subscribe("sub_3", "cus_3", [("si_3", "basic_usd", 3)], ts(2024, 3, 4))
    w.cancel("sub_4", ts(2024, 3, 5))
    w.update("sub_3", ts(2024, 4, 6), items=[("si_3", "basic_usd", 3), ("si_3b", "analytics_usd", 1)])
    return w


def test_rates_by_hand(world: World, derive_read_only: Derive) -> None:
    con = derive_read_only(rates_world(world), seen_at=ts(2024, 4, 20))
    got = {r["period_start"]: r for r in queries.bridge(con)}
    jan, feb, mar, apr = (got[dt.date(2024, m, 1)] for m in (1, 2, 3, 4))
    # January: opening 0, so every revenue rate is NULL rather than an error
    assert jan["opening_mrr"] == 0 and jan["new"] == Decimal("140.0000")
    for col in ("gross_revenue_churn_rate", "net_revenue_churn_rate", "nrr", "grr", "customer_churn_rate",
                "quick_ratio", "net_negative_churn"):
        assert jan[col] is None, col
    # February: nothing moves; quick ratio has a zero denominator
    assert (feb["gross_revenue_churn_rate"], feb["net_revenue_churn_rate"], feb["nrr"], feb["grr"]) == (0, 0, 1, 1)
    assert feb["quick_ratio"] is None and feb["net_negative_churn"] is False
    # March: opening 140 (3 customers), new 30, expansion 20, contraction 10, churn 40
    assert (mar["opening_mrr"], mar["new"], mar["expansion"], mar["contraction"], mar["churn"], mar["closing_mrr"]) \
        == (140, 30, 20, 10, 40, 140)
    assert mar["gross_revenue_churn_rate"] == pytest.approx(50 / 140)
    assert mar["net_revenue_churn_rate"] == pytest.approx(30 / 140)
    assert mar["nrr"] == pytest.approx(110 / 140) and mar["grr"] == pytest.approx(90 / 140)
    assert mar["customer_churn_rate"] == pytest.approx(1 / 3)
    assert mar["quick_ratio"] == pytest.approx(50 / 50)
    assert mar["arpa"] == Decimal("46.6667") and mar["net_negative_churn"] is False
    # April: a cross-sell and nothing lost: net negative churn
    assert apr["net_revenue_churn_rate"] == pytest.approx(-50 / 140) and apr["net_negative_churn"] is True


def test_arpa_rounds_an_exact_half_up(world: World, derive: Derive) -> None:
    """ARPA = closing_mrr / closing customers, to 4 decimals: 17.5675 / 2 is 8.78375 exactly, so 8.7838 (the
    division in DOUBLE showed 8.7837)."""
    world.product("prod_a", unit_label="seat")
    world.price("p10", "prod_a", 1_000)
    world.price("p1009", "prod_a", 1_009)
    world.coupon("co_f25", percent_off=25, duration="forever")
    world.customer("c1")
    world.customer("c2")
    world.subscribe("s1", "c1", [("i1", "p10", 1)], ts(2024, 3, 5))
    d = world.discount("co_f25", ts(2024, 3, 6), customer="c2", subscription="s2")
    world.subscribe("s2", "c2", [("i2", "p1009", 1)], ts(2024, 3, 6), discounts=[d["id"]])
    con = derive(world, seen_at=ts(2024, 3, 20))
    (mar,) = [r for r in queries.bridge(con) if r["period_start"] == dt.date(2024, 3, 1)]
    assert (mar["closing_mrr"], mar["closing_customers"], mar["arpa"]) == (Decimal("17.5675"), 2, Decimal("8.7838"))


def test_latest_verdict(world: World, derive_read_only: Derive) -> None:
    con = derive_read_only(rates_world(world), seen_at=ts(2024, 4, 20))
    verdict = queries.latest_verdict(con)
    # the data runs up to the sync of 2024-04-20: March is the latest complete month (the quiet months since
    # are after what was synced), and it lost more than it gained
    assert queries.data_as_of(con) == dt.date(2024, 4, 20)
    assert verdict is not None and verdict["period_start"] == dt.date(2024, 3, 1)
    assert verdict["net_negative_churn"] is False and verdict["opening_mrr"] == Decimal("140.0000")


def test_periods_run_through_now_with_quiet_months(world: World, derive_read_only: Derive) -> None:
    con = derive_read_only(rates_world(world), seen_at=ts(2024, 4, 20))
    got = queries.bridge(con)
    today = dt.datetime.now(dt.UTC).date()
    assert got[0]["period_start"] == dt.date(2024, 1, 1)
    assert got[-1]["period_start"] == today.replace(day=1)
    assert len(got) == (today.year - 2024) * 12 + today.month
    assert got[-1]["closing_mrr"] == got[3]["closing_mrr"]  # quiet since April


def test_longer_periods_sum_the_months(world: World, derive_read_only: Derive) -> None:
    con = derive_read_only(book(world), seen_at=SEEN)
    months = queries.bridge(con, "month")
    for period, key in (("quarter", lambda d: (d.year, (d.month - 1) // 3)), ("year", lambda d: d.year)):
        for r in queries.bridge(con, period):
            inside = [m for m in months if key(m["period_start"]) == key(r["period_start"])]
            for col in ("new", "reactivation", "expansion", "contraction", "churn", "fx", "upgrade", "cross_sell"):
                assert r[col] == sum(m[col] for m in inside), (period, r["period_start"], col)
            assert r["opening_mrr"] == inside[0]["opening_mrr"] and r["closing_mrr"] == inside[-1]["closing_mrr"]
    weeks = queries.bridge(con, "week")
    assert all(w["period_start"].weekday() == 0 for w in weeks)
    assert sum(w["new"] for w in weeks) == sum(m["new"] for m in months)


@pytest.mark.parametrize("key", ['plan "tier"', "plan.tier", "plan\\tier", "plán tier", "plan\ttier"])
def test_a_metadata_key_of_any_characters_segments(world: World, derive: Derive, key: str) -> None:
    """Stripe allows any metadata key: one with a double quote found nobody (the quote was dropped from the JSON
    path), so every customer came out as '(none)'."""
    catalogue(world)
    world.customer("c1", metadata={key: "gold", "plan": "other"})
    world.customer("c2", metadata={"other": "x"})
    world.subscribe("s1", "c1", [("i1", "basic_usd", 1)], ts(2024, 1, 10))
    world.subscribe("s2", "c2", [("i2", "basic_usd", 1)], ts(2024, 1, 12))
    con = derive(world, seen_at=ts(2024, 2, 20))
    rows = queries.bridge(con, "month", f"metadata.{key}")
    assert {(r["segment_value"], r["closing_customers"]) for r in rows if r["period_start"] == dt.date(2024, 1, 1)} \
        == {("gold", 1), ("(none)", 1)}


def test_segments(world: World, derive_read_only: Derive) -> None:
    con = derive_read_only(book(world), seen_at=SEEN)
    by_country = {(r["segment_value"], r["period_start"]): r for r in queries.bridge(con, "month", "country")}
    assert by_country[("DE", dt.date(2024, 3, 1))]["churn"] == Decimal("64.8000")
    assert by_country[("US", dt.date(2024, 3, 1))]["churn"] == 0
    gold = queries.bridge(con, "month", "metadata.tier", segment_value="gold")
    assert {r["segment_value"] for r in gold} == {"gold"}
    assert next(r for r in gold if r["period_start"] == dt.date(2024, 3, 1))["new"] == Decimal("40.0000")
    eur = queries.bridge(con, "quarter", "currency", segment_value="eur")
    assert eur[0]["new"] == Decimal("64.8000") and eur[0]["churn"] == Decimal("64.8000")
    # cus_a moves from the 'under 100' band to '100 to 1k' after its February upgrade
    bands = {(r["segment_value"], r["period_start"]): r for r in queries.bridge(con, "month", "size_band")}
    assert bands[("b: 100 to 1k", dt.date(2024, 3, 1))]["opening_customers"] == 1
    plans = queries.bridge(con, "month", "plan", start=dt.date(2024, 3, 1), end=dt.date(2024, 3, 31))
    assert {r["period_start"] for r in plans} == {dt.date(2024, 3, 1)}


@pytest.mark.parametrize("kind", ["plan", "family"])
def test_a_segment_follows_a_switch_at_equal_mrr(world: World, derive: Derive, kind: str) -> None:
    """A switch that leaves the customer's MRR as it was (monthly 100.00 to annual 1,200.00 on the same item;
    10 core seats at 10.00 to 2 analytics at 50.00) is no movement, but the customer's plan or family segment
    follows it from the next period on, with the later flows (design.md 5; a customer belongs, for a period, to
    the segment of its state at the period start)."""
    catalogue(world)
    world.price("core_monthly", "prod_core", 10_000)
    world.price("core_annual", "prod_core", 120_000, interval="year")
    world.customer("cus_e")
    if kind == "plan":
        world.subscribe("sub_e", "cus_e", [("si_e", "core_monthly", 1)], ts(2025, 1, 5))
        world.update("sub_e", ts(2025, 2, 10), items=[("si_e", "core_annual", 1)])
        world.update("sub_e", ts(2025, 6, 10), items=[("si_e", "core_annual", 2)])
        old, new = "core_monthly", "core_annual"
    else:
        world.subscribe("sub_e", "cus_e", [("si_e", "basic_usd", 10)], ts(2025, 1, 5))
        world.update("sub_e", ts(2025, 2, 10), items=[("si_f", "analytics_usd", 2)])
        world.update("sub_e", ts(2025, 6, 10), items=[("si_f", "analytics_usd", 4)])
        old, new = "core", "analytics"
    con = derive(world, seen_at=ts(2025, 7, 1))
    assert [r[0] for r in con.execute("SELECT movement FROM mrr_movements ORDER BY occurred_at").fetchall()] == \
        ["new", "seat_expansion"]
    rows = {(r["segment_value"], r["period_start"]): r for r in queries.bridge(con, "month", kind)}
    cols = ("opening_mrr", "expansion", "closing_mrr", "opening_customers", "closing_customers")

    def at(value: str, month: int) -> tuple[Any, ...]:
        r = rows.get((value, dt.date(2025, month, 1)))
        return tuple(r[c] for c in cols) if r else (0, 0, 0, 0, 0)

    assert at(old, 2) == (100, 0, 100, 1, 1)  # (it moves at the next period start)
    assert at(new, 3) == (100, 0, 100, 1, 1) and at(old, 3) == (0, 0, 0, 0, 0)
    assert at(new, 6) == (100, 100, 200, 1, 1) and at(old, 6) == (0, 0, 0, 0, 0)
    assert_bridge_adds_up(con, f"equal-mrr switch, {kind}", periods=["month", "quarter"], segments=[None, kind])


def test_a_switch_at_equal_mrr_across_currencies_keeps_the_main_item_by_its_worth(world: World,
                                                                                  derive: Derive) -> None:
    """The main item that a segment follows after a switch at equal MRR is the largest in the reporting currency, as
    for any other change (64), not in its own: 5 core seats (100.00 USD) and an analytics plan of 90.00 USD, whose
    subscription is replaced 5 minutes later by one of 120.00 CAD at 0.75 (90.00 USD): no movement, and the customer
    stays in the core family, its largest item. (Picked by its own amount, 120 against 100, it moved to analytics.)"""
    catalogue(world)
    world.price("team_usd", "prod_analytics", 9_000)
    world.price("team_cad", "prod_analytics", 12_000, currency="cad")
    world.fx_rates += [("2023-12-01", "cad", 0.75)]
    world.customer("cus_m")
    world.subscribe("sub_x", "cus_m", [("si_x", "pro_usd", 5)], ts(2025, 1, 5))
    world.subscribe("sub_y", "cus_m", [("si_y", "team_usd", 1)], ts(2025, 1, 5) + 60)
    world.cancel("sub_y", ts(2025, 2, 10))
    world.subscribe("sub_z", "cus_m", [("si_z", "team_cad", 1)], ts(2025, 2, 10) + 300)
    con = derive(world, seen_at=ts(2025, 4, 1))
    assert [r[0] for r in con.execute("SELECT movement FROM mrr_movements").fetchall()] == ["new"]
    rows = {(r["segment_value"], r["period_start"]): (r["opening_mrr"], r["closing_mrr"], r["closing_customers"])
            for r in queries.bridge(con, "month", "family", end=dt.date(2025, 3, 31))
            if r["opening_mrr"] or r["closing_mrr"]}
    assert rows == {("core", dt.date(2025, m, 1)): (0 if m == 1 else 190, 190, 1) for m in (1, 2, 3)}
    assert_bridge_adds_up(con, "equal-mrr switch across currencies", periods=["month"], segments=[None, "family"])


def test_bad_period_or_segment_is_a_clear_error(world: World, derive_read_only: Derive) -> None:
    con = derive_read_only(rates_world(world), seen_at=ts(2024, 4, 20))
    with pytest.raises(ConfigError, match="unknown period 'fortnight'"):
        queries.bridge(con, "fortnight")
    with pytest.raises(ConfigError, match="unknown segment 'colour'"):
        queries.bridge(con, "month", "colour")
    with pytest.raises(duckdb.Error, match="unknown segment kind"):
        con.execute("SELECT * FROM mrr_bridge_for('month', 'colour', NULL)").fetchall()


def test_bridge_view_columns(world: World, derive_read_only: Derive) -> None:
    con = derive_read_only(rates_world(world), seen_at=ts(2024, 4, 20))
    cols = con.execute("DESCRIBE mrr_bridge").fetchall()
    assert [c[0] for c in cols] == BRIDGE_COLUMNS
    types = {c[0]: c[1] for c in cols}
    assert types["period_start"] == "DATE" and types["opening_mrr"] == "DECIMAL(18,4)"
    assert types["arpa"] == "DECIMAL(18,4)" and types["net_negative_churn"] == "BOOLEAN"
    assert types["nrr"] == "DOUBLE" and types["closing_customers"] == "BIGINT"


def test_scheduled_churn(world: World, derive_read_only: Derive) -> None:
    con = derive_read_only(book(world), seen_at=SEEN)
    got = queries.scheduled_churn(con)
    assert [(r["subscription_id"], r["mrr_at_stake"], r["cancel_at"]) for r in got] == [
        ("sub_e", Decimal("40.0000"), dt.datetime(2024, 6, 1, tzinfo=dt.UTC))]
    assert got[0]["cancellation_feedback"] == "switched_service" and got[0]["customer_id"] == "cus_e"


@pytest.mark.parametrize(("coupon_months", "at_stake"), [
    # the coupon runs past the cancellation: it still takes its 25% off what is lost (30 of 40)
    pytest.param(3, Decimal("30.0000"), id="coupon-past-the-date"),
    # the coupon ends a month before the cancellation: the full 40 is lost then
    pytest.param(1, Decimal("40.0000"), id="coupon-ends-before"),
])
def test_scheduled_churn_values_the_mrr_the_cancellation_takes(world: World, derive: Derive, coupon_months: int,
                                                               at_stake: Decimal) -> None:
    """The MRR at stake is the subscription's MRR just before the cancellation takes effect, not a later level
    (the item rows after the date, such as a repeating coupon's end, never happen for it)."""
    t0 = ts(2024, 1, 1)
    world.customer("cus_1")
    world.product("prod_core", unit_label="seat")
    world.price("basic", "prod_core", 1_000)
    world.coupon("quarter_off", percent_off=25, duration="repeating", duration_in_months=coupon_months)
    d = world.discount("quarter_off", t0, customer="cus_1", subscription="sub_1")
    world.subscribe("sub_1", "cus_1", [("si_1", "basic", 4)], t0, discounts=[d["id"]])
    world.cycle("sub_1", add_months(t0, 1))
    cancel_at = add_months(t0, 2)
    world.update("sub_1", add_months(t0, 1) + 10 * DAY, cancel_at_period_end=True, cancel_at=cancel_at,
                 canceled_at=add_months(t0, 1) + 10 * DAY)
    con = derive(world, seen_at=add_months(t0, 1) + 15 * DAY)
    got = queries.scheduled_churn(con)
    assert [(r["subscription_id"], r["mrr_at_stake"], r["cancel_at"]) for r in got] == [
        ("sub_1", at_stake, dt.datetime.fromtimestamp(cancel_at, dt.UTC))]


def test_scheduled_churn_values_another_currency_at_todays_rate_on_any_day(world: World, derive: Derive) -> None:
    """An eur subscription set to cancel is valued at the latest rate on or before the day the view is read. It
    read derived_fx_days, which the recompute fills up to its own day: from the next midnight until the next sync
    the eur rows said 0.00 at stake beside their eur amount, silently (design.md 4: never a silent zero)."""
    t0 = ts(2024, 1, 1)
    world.fx_rates += [("2023-12-01", "eur", 1.08), ("2024-01-15", "eur", 1.10)]
    world.customer("cus_1", currency="eur")
    world.product("prod_core", unit_label="seat")
    world.price("basic_eur", "prod_core", 1_000, currency="eur")
    world.subscribe("sub_1", "cus_1", [("si_1", "basic_eur", 4)], t0)
    world.update("sub_1", t0 + 10 * DAY, cancel_at_period_end=True, canceled_at=t0 + 10 * DAY)
    con = derive(world, seen_at=t0 + 15 * DAY)
    expected = [("sub_1", Decimal("44.0000"), "eur", Decimal("40.0000"))]  # (40 eur at 1.10, the rate in force)
    assert [(r["subscription_id"], r["mrr_at_stake"], r["currency"], r["mrr_at_stake_original"])
            for r in queries.scheduled_churn(con)] == expected
    # the next day, before any sync: the recompute's day rows end a day before the one the view is read on
    con.execute("DELETE FROM derived_fx_days WHERE day >= CAST(timezone('UTC', now()) AS DATE)")
    assert [(r["subscription_id"], r["mrr_at_stake"], r["currency"], r["mrr_at_stake_original"])
            for r in queries.scheduled_churn(con)] == expected


def test_scheduled_churn_is_churn_already_when_recognised_at_cancel_time(world: World, derive_read_only: Derive) -> None:
    con = derive_read_only(book(world), seen_at=SEEN, churn_recognition="canceled")
    assert queries.scheduled_churn(con) == []
    (e,) = [r for r in queries.churn_reasons(con) if r["cancellation_feedback"] == "switched_service"]
    assert e["period_start"] == dt.date(2024, 5, 1) and e["churned_mrr"] == Decimal("40.0000")


def test_churn_reasons(world: World, derive_read_only: Derive) -> None:
    con = derive_read_only(book(world), seen_at=SEEN)
    got = [(r["period_start"], r["churn_type"], r["cancellation_feedback"], r["churned_customers"], r["churned_mrr"])
           for r in queries.churn_reasons(con)]
    assert got == [
        (dt.date(2024, 3, 1), "voluntary", "too_expensive", 1, Decimal("64.8000")),
        (dt.date(2024, 4, 1), "involuntary", "(none)", 1, Decimal("38.1000")),
        (dt.date(2024, 4, 1), "voluntary", "unused", 1, Decimal("10.0000")),
    ]
    (total,) = con.execute("SELECT sum(churned_mrr) FROM churn_reasons").fetchall()[0]
    assert total == sum(r["churn"] for r in queries.bridge(con))


def test_cohort_matrix(world: World, derive_read_only: Derive) -> None:
    con = derive_read_only(rates_world(world), seen_at=ts(2024, 4, 20))
    got = {(r["cohort_month"], r["months_since_start"]): r for r in queries.cohort_matrix(con)}
    jan = [got[(dt.date(2024, 1, 1), k)] for k in range(4)]
    assert [r["mrr"] for r in jan] == [Decimal("140.0000"), Decimal("140.0000"), Decimal("110.0000"),
                                       Decimal("110.0000")]
    assert jan[0]["revenue_retention"] == 1.0 and jan[2]["revenue_retention"] == pytest.approx(110 / 140)
    assert [r["active_customers"] for r in jan] == [3, 3, 2, 2] and jan[0]["cohort_customers"] == 3
    mar = [got[(dt.date(2024, 3, 1), k)] for k in range(2)]
    assert mar[0]["starting_mrr"] == Decimal("30.0000") and mar[1]["revenue_retention"] == pytest.approx(80 / 30)
    assert queries.cohort_matrix(con, start=dt.date(2024, 2, 1))[0]["cohort_month"] == dt.date(2024, 3, 1)


def test_cohort_matrix_at_constant_exchange_rates(world: World, derive: Derive) -> None:
    """Exchange-rate swings are their own line (design.md 4), never retention: the cohort matrix values every
    movement in another currency at the rate in force at the end of the cohort's first month and leaves the fx
    movements out. An unchanged EUR customer stays at 100% when EUR/USD goes from 1.08 to 1.10 (it showed 101.85%),
    an upgrade counts 10 EUR at 1.08, and a cohort whose one EUR customer left after the rate moved counts 0 (not
    the 0.40 USD that leaving the fx movements out alone would leave behind). The bridge still shows the fx."""
    catalogue(world)  # EUR 1.08 from 2023-12-01, 1.10 from 2024-04-01
    for c, cur in (("c_eur1", "eur"), ("c_eur2", "eur"), ("c_usd", "usd"), ("c_feb", "eur")):
        world.customer(c, currency=cur)
    world.subscribe("s_eur1", "c_eur1", [("i_eur1", "basic_eur", 5)], ts(2024, 1, 5))  # 50 EUR, never changed
    world.subscribe("s_eur2", "c_eur2", [("i_eur2", "basic_eur", 3)], ts(2024, 1, 10))  # 30 EUR
    world.subscribe("s_usd", "c_usd", [("i_usd", "basic_usd", 5)], ts(2024, 1, 12))  # 50 USD
    world.subscribe("s_feb", "c_feb", [("i_feb", "basic_eur", 2)], ts(2024, 2, 3))  # 20 EUR
    world.update("s_eur2", ts(2024, 5, 10), items=[("i_eur2", "basic_eur", 4)])  # +10 EUR
    world.cancel("s_feb", ts(2024, 5, 15))
    con = derive(world, seen_at=ts(2024, 5, 20))
    got = {(r["cohort_month"], r["months_since_start"]): r for r in queries.cohort_matrix(con)}
    jan = [got[(dt.date(2024, 1, 1), k)] for k in range(5)]
    assert [r["mrr"] for r in jan] == [Decimal("136.4000")] * 4 + [Decimal("147.2000")]  # 80 EUR at 1.08 + 50
    assert [r["revenue_retention"] for r in jan[:4]] == [1.0] * 4
    assert jan[4]["revenue_retention"] == pytest.approx(147.2 / 136.4)
    feb = [got[(dt.date(2024, 2, 1), k)] for k in range(4)]
    assert [r["mrr"] for r in feb] == [Decimal("21.6000")] * 3 + [Decimal("0.0000")]
    assert [r["revenue_retention"] for r in feb] == [1.0, 1.0, 1.0, 0.0]
    bridge = {r["period_start"]: r for r in queries.bridge(con)}
    assert bridge[dt.date(2024, 4, 1)]["fx"] == Decimal("2.0000")  # (50 + 30 + 20 EUR, 1.08 -> 1.10)


def random_book(w: World, seed: int, customers: int = 30) -> World:
    """Random histories over two years: seats, plan switches, cross-sells, metered usage, removals, coupons,
    trials, failed payments, cancellations now or at period end, comebacks, three currencies."""
    rnd = random.Random(seed)
    catalogue(w)
    w.coupon("co_pct", percent_off=20, duration="repeating", duration_in_months=3)
    for c in range(customers):
        cur = rnd.choice(["usd", "usd", "eur", "gbp"])
        cid = f"cus_{c}"
        w.customer(cid, currency=cur, address={"country": rnd.choice(["US", "DE", "GB"])},
                   metadata={"tier": rnd.choice(["gold", "silver"])})
        t = ts(2023, 1, 1) + rnd.randrange(0, 200) * DAY + rnd.randrange(0, 86_400)
        sid, n = f"sub_{c}", 0
        items = {f"si_{c}_0": (f"basic_{cur}", rnd.randint(1, 5))}
        trial = t + 14 * DAY if rnd.random() < 0.2 else None
        discounts = []
        if rnd.random() < 0.2:
            discounts = [w.discount("co_pct", t, customer=cid, subscription=sid)["id"]]
        w.subscribe(sid, cid, [(k, p, q) for k, (p, q) in items.items()], t, trial_end=trial, discounts=discounts)
        if trial:
            w.update(sid, trial, status="active")
        alive = True
        for m in range(1, 20):
            t = add_months(t, 1) if m > 1 else t + 31 * DAY
            if t > ts(2024, 12, 1):
                break
            if not alive:
                if rnd.random() < 0.1:  # a comeback on a new subscription
                    n += 1
                    sid = f"sub_{c}_{n}"
                    items = {f"si_{c}_{n}_0": (rnd.choice([f"pro_{cur}", f"analytics_{cur}"]), 1)}
                    w.subscribe(sid, cid, [(k, p, q) for k, (p, q) in items.items()], t)
                    alive = True
                continue
            usage = {k: rnd.randint(0, 30_000) for k, (p, _) in items.items() if p.startswith("api")}
            w.cycle(sid, t, usage=usage or None)
            when = t + rnd.randrange(1, 25) * DAY + rnd.randrange(0, 3_600)
            r = rnd.random()
            if r < 0.04:
                w.cancel(sid, when, feedback=rnd.choice(["too_expensive", "unused", None]))
                alive = False
                continue
            if r < 0.06:
                w.cancel(sid, when, ended_at=add_months(t, 1))
                alive = False
                continue
            if r < 0.08:
                w.update(sid, when, status="past_due")
                w.update(sid, when + 10 * DAY, status="unpaid")
                alive = False
                continue
            key = next(iter(items))
            price, qty = items[key]
            if r < 0.2 and not price.startswith(("analytics", "api")):
                items[key] = (price, max(1, qty + rnd.choice([-2, -1, 1, 2, 4])))
            elif r < 0.26 and price.startswith(("basic", "pro")):
                items[key] = (price.replace("basic", "x").replace("pro", "basic").replace("x", "pro"), qty)
            elif r < 0.32:
                extra = rnd.choice([f"analytics_{cur}", f"api_{cur}", f"basic_{cur}"])
                items[f"si_{c}_{n}_{m}"] = (extra, None if extra.startswith("api") else 1)
            elif r < 0.36 and len(items) > 1:
                items.pop(rnd.choice(list(items)[1:]))
            else:
                continue
            w.update(sid, when, items=[(k, p, q) for k, (p, q) in items.items()])
    return w


def test_random_histories(store: duckdb.DuckDBPyConnection) -> None:
    """Three random accounts in one store: each customer's movements add up and chain to customer_mrr, and
    the bridge adds up for every period and segment."""
    from stripe_churn.metrics.runner import recompute
    from stripe_churn.settings import Settings

    for seed in (1, 2, 3):
        w = random_book(World(account_id=f"acct_random_{seed}"), seed)
        w.fx_rates = [] if seed > 1 else [("2022-12-01", "eur", 1.08), ("2022-12-01", "gbp", 1.27),
                                          ("2024-06-01", "eur", 1.12)]
        w.load(store, seen_at=ts(2024, 12, 15))
    recompute(store, Settings())
    broken = store.execute("""
        WITH per AS (
            SELECT account_id, customer_id, occurred_at, any_value(mrr_before) AS b, any_value(mrr_after) AS a,
                   sum(mrr_delta) AS d, count(DISTINCT mrr_before) + count(DISTINCT mrr_after) AS n
            FROM mrr_movements GROUP BY ALL),
        chained AS (
            SELECT *, lag(a, 1, 0) OVER (PARTITION BY account_id, customer_id ORDER BY occurred_at) AS prev_a
            FROM per)
        SELECT account_id, customer_id, occurred_at, b, a, d, prev_a FROM chained
        WHERE d <> a - b OR n <> 2 OR b <> prev_a""").fetchall()
    assert not broken, broken
    off = store.execute("""
        SELECT m.account_id, m.customer_id, m.occurred_at, m.mrr_before, c.mrr
        FROM (SELECT DISTINCT account_id, customer_id, occurred_at, mrr_before FROM mrr_movements) m
        LEFT JOIN customer_mrr c ON c.account_id = m.account_id AND c.customer_id = m.customer_id
         AND c.valid_from < m.occurred_at AND (c.valid_to IS NULL OR c.valid_to >= m.occurred_at)
        WHERE coalesce(c.mrr, 0) <> m.mrr_before""").fetchall()
    assert not off, off
    labels = dict(store.execute("SELECT movement, count(*) FROM mrr_movements GROUP BY ALL").fetchall())
    for movement in ("new", "reactivation", "cancellation", "upgrade", "downgrade", "cross_sell",
                     "seat_expansion", "seat_contraction", "resource_expansion", "resource_contraction",
                     "discount", "fx"):
        assert labels.get(movement, 0) > 0, f"the random histories never gave {movement}: {labels}"
    (unexplained,) = store.execute("SELECT max(abs(unexplained)) FROM derived_mrr_movements").fetchall()[0]
    assert unexplained < Decimal("0.0001") * 10, "components do not explain the customer's change"
    assert assert_bridge_adds_up(store, "random", ["month", "quarter"], SEGMENTS) > 0


def test_trial_only_customer_counts_nowhere(world: World, derive: Derive) -> None:
    catalogue(world).customer("cus_t")
    world.subscribe("sub_t", "cus_t", [("si_t", "basic_usd", 1)], ts(2024, 1, 1), trial_end=ts(2024, 1, 1) + 7 * DAY)
    world.end("sub_t", ts(2024, 1, 1) + 7 * DAY)
    con = derive(world, seen_at=ts(2024, 2, 1))
    assert queries.bridge(con) == []
    assert queries.latest_verdict(con) is None
