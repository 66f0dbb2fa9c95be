"""Segments, cohorts and the report's numbers against small accounts worked out by hand (design.md 6 and 7, the
README's segment, cohort and report sections): a customer without an address, MRR exactly on a size band's edge,
a metadata key some customers lack, a plan switch in the middle of a month, two families of equal MRR, a customer
who changes currency, cohorts with a comeback, a churn in the cohort's own month and a signup a second before
midnight UTC, a week that straddles two months, and `report --period quarter --segment family` as JSON and CSV
next to the SQL macro, with its sentence on the latest complete month.

Each account is loaded and recomputed once and read through a read-only connection.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from builders import World, ts
from click.testing import CliRunner

from stripe_churn.cli import cli

D = Decimal
Derive = Callable[..., duckdb.DuckDBPyConnection]
SEEN = ts(2024, 4, 20)
COLS = ("opening_mrr", "new", "reactivation", "expansion", "contraction", "churn", "fx", "closing_mrr")


def shop(w: World) -> World:
    """Products of three families; usd prices (per unit, monthly) and eur ones; EUR at 1.08, then 1.10 from April."""
    w.product("prod_core", unit_label="seat", family="core")
    w.product("prod_alpha", family="alpha")
    w.product("prod_beta", family="beta")
    w.price("basic_usd", "prod_core", 1_000)      # 10.00
    w.price("pro_usd", "prod_core", 2_000)        # 20.00
    w.price("plan_x", "prod_core", 1_500)         # 15.00
    w.price("plan_y", "prod_core", 2_500)         # 25.00
    w.price("alpha_usd", "prod_alpha", 2_000)     # 20.00
    w.price("beta_usd", "prod_beta", 2_000)       # 20.00
    w.price("basic_eur", "prod_core", 1_000, currency="eur")
    w.fx_rates += [("2023-12-01", "eur", 1.08), ("2024-04-01", "eur", 1.10)]
    return w


def bridge(con: duckdb.DuckDBPyConnection, period: str, kind: str | None) -> dict[tuple[str, dt.date], tuple]:
    """{(segment value, period start): (opening, new, reactivation, expansion, contraction, churn, fx, closing)}."""
    rows = con.execute(
        f"SELECT segment_value, period_start, {', '.join(COLS)} FROM mrr_bridge_for(period_kind := ?, "
        "segment_kind := ?, segment_value := NULL) WHERE period_start <= DATE '2024-04-30' ORDER BY ALL",
        [period, kind]).fetchall()
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def b(*values: str | int) -> tuple:
    return tuple(D(str(v)) for v in values)


def month(m: int) -> dt.date:
    return dt.date(2024, m, 1)


def quiet(mrr: str | int) -> tuple:
    return b(mrr, 0, 0, 0, 0, 0, 0, mrr)


# --- country, size band, metadata ------------------------------------------------------------------------------

def countries() -> World:
    w = shop(World())
    w.customer("c_none", address=None)
    w.customer("c_blank", address={"country": None, "line1": "1 Main St"})
    w.customer("c_us")
    w.subscribe("s_none", "c_none", [("i_none", "basic_usd", 3)], ts(2024, 1, 10))   # 30
    w.subscribe("s_blank", "c_blank", [("i_blank", "basic_usd", 1)], ts(2024, 1, 10))  # 10
    w.subscribe("s_us", "c_us", [("i_us", "pro_usd", 1)], ts(2024, 1, 10))            # 20
    w.cancel("s_none", ts(2024, 3, 5))
    return w


def test_a_customer_without_an_address_counts_in_one_country_segment(derive_read_only: Derive) -> None:
    """README: `country` is the customer's as last synced, for every period. A customer with no address (or an
    address without a country) has none: the macro names that segment `(none)`, and its whole MRR counts there, so
    the country segments still add up to the account. January: (none) new 30 + 10 = 40, US new 20; March: (none)
    loses c_none's 30."""
    con = derive_read_only(countries(), seen_at=SEEN)
    got = bridge(con, "month", "country")
    assert {k: v for k, v in got.items() if k[1] <= month(3)} == {
        ("(none)", month(1)): b(0, 40, 0, 0, 0, 0, 0, 40),
        ("(none)", month(2)): quiet(40),
        ("(none)", month(3)): b(40, 0, 0, 0, 0, 30, 0, 10),
        ("US", month(1)): b(0, 20, 0, 0, 0, 0, 0, 20),
        ("US", month(2)): quiet(20),
        ("US", month(3)): quiet(20),
    }
    whole = bridge(con, "month", None)
    for p in (month(1), month(2), month(3), month(4)):
        assert sum(v[-1] for (s, q), v in got.items() if q == p) == whole[("all", p)][-1]


def size_bands() -> World:
    w = shop(World())
    for c in ("c100", "c1000", "c90"):
        w.customer(c)
    w.subscribe("s100", "c100", [("i100", "pro_usd", 5)], ts(2024, 1, 10))      # 100.00: on the edge
    w.subscribe("s1000", "c1000", [("i1000", "pro_usd", 50)], ts(2024, 1, 10))  # 1000.00: on the next edge
    w.subscribe("s90", "c90", [("i90", "basic_usd", 9)], ts(2024, 1, 10))       # 90.00
    w.update("s90", ts(2024, 2, 15), items=[("i90", "basic_usd", 10)])          # 100.00 from 15 February
    return w


def test_mrr_exactly_on_a_size_bands_edge_is_in_the_band_above(derive_read_only: Derive) -> None:
    """mrr_size_band: under 100, 100 to 1k, 1k to 10k, 10k and more (queries.py), so 100.00 is `b: 100 to 1k` and
    1000.00 `c: 1k to 10k`. c90 reaches exactly 100.00 on 15 February: February stays in `a` (its state at the
    period start) with a seat expansion of 10 and closing 100; it moves to `b` at 1 March with no flow (a's March
    opens at 0, b's at 200)."""
    got = bridge(derive_read_only(size_bands(), seen_at=SEEN), "month", "size_band")
    assert {k: v for k, v in got.items() if k[1] <= month(3)} == {
        ("a: under 100", month(1)): b(0, 90, 0, 0, 0, 0, 0, 90),
        ("a: under 100", month(2)): b(90, 0, 0, 10, 0, 0, 0, 100),
        ("a: under 100", month(3)): quiet(0),
        ("b: 100 to 1k", month(1)): b(0, 100, 0, 0, 0, 0, 0, 100),
        ("b: 100 to 1k", month(2)): quiet(100),
        ("b: 100 to 1k", month(3)): quiet(200),
        ("c: 1k to 10k", month(1)): b(0, 1000, 0, 0, 0, 0, 0, 1000),
        ("c: 1k to 10k", month(2)): quiet(1000),
        ("c: 1k to 10k", month(3)): quiet(1000),
    }


def metadata_tiers() -> World:
    w = shop(World())
    w.customer("c_gold", metadata={"tier": "gold"})
    w.customer("c_plain")
    w.customer("c_other", metadata={"region": "emea"})
    w.subscribe("s_gold", "c_gold", [("i_gold", "basic_usd", 2)], ts(2024, 1, 10))     # 20
    w.subscribe("s_plain", "c_plain", [("i_plain", "basic_usd", 4)], ts(2024, 2, 10))  # 40
    w.subscribe("s_other", "c_other", [("i_other", "pro_usd", 1)], ts(2024, 2, 12))    # 20
    w.update("s_gold", ts(2024, 3, 3), items=[("i_gold", "basic_usd", 1)])             # -10
    return w


def test_customers_without_the_metadata_key_share_the_none_segment(derive_read_only: Derive) -> None:
    """README: `metadata.<key>` is the customer's as last synced. c_gold has tier=gold; c_plain has no metadata and
    c_other other keys only: both count under `(none)`. gold: January new 20, March contraction 10; (none): February
    new 60."""
    got = bridge(derive_read_only(metadata_tiers(), seen_at=SEEN), "month", "metadata.tier")
    assert {k: v for k, v in got.items() if k[1] <= month(3)} == {
        ("gold", month(1)): b(0, 20, 0, 0, 0, 0, 0, 20),
        ("gold", month(2)): quiet(20),
        ("gold", month(3)): b(20, 0, 0, 0, 10, 0, 0, 10),
        ("(none)", month(2)): b(0, 60, 0, 0, 0, 0, 0, 60),
        ("(none)", month(3)): quiet(60),
    }


# --- plan, family, currency ------------------------------------------------------------------------------------

def plan_switch() -> World:
    w = shop(World())
    w.customer("c_sw")
    w.subscribe("s_sw", "c_sw", [("i_sw", "plan_x", 1)], ts(2024, 1, 10))     # 15
    w.update("s_sw", ts(2024, 2, 15), items=[("i_sw", "plan_y", 1)])          # 25: an upgrade of 10
    return w


def test_a_plan_switch_mid_month_moves_the_customer_at_the_next_period_start(derive_read_only: Derive) -> None:
    """README: the customer counts in the plan of its state at the period's start; a change of segment moves its
    closing MRR at the next period's start, with no flow. February: plan_x opens 15, expands 10, closes 25; March:
    plan_x opens 0, plan_y opens 25 (opening_customers 1). Per quarter the whole first quarter is plan_x's (new 15,
    expansion 10, closing 25), and plan_y opens the second with 25."""
    con = derive_read_only(plan_switch(), seen_at=SEEN)
    got = bridge(con, "month", "plan")
    assert {k: v for k, v in got.items() if k[1] <= month(3)} == {
        ("plan_x", month(1)): b(0, 15, 0, 0, 0, 0, 0, 15),
        ("plan_x", month(2)): b(15, 0, 0, 10, 0, 0, 0, 25),
        ("plan_x", month(3)): quiet(0),
        ("plan_y", month(3)): quiet(25),
    }
    counts = con.execute(
        "SELECT segment_value, period_start, opening_customers, closing_customers, upgrade FROM mrr_bridge_for("
        "period_kind := 'month', segment_kind := 'plan', segment_value := NULL) "
        "WHERE period_start IN (DATE '2024-02-01', DATE '2024-03-01') ORDER BY ALL").fetchall()
    assert counts == [("plan_x", month(2), 1, 1, D("10")), ("plan_x", month(3), 0, 0, D("0")),
                      ("plan_y", month(3), 1, 1, D("0"))]
    assert bridge(con, "quarter", "plan") == {
        ("plan_x", month(1)): b(0, 15, 0, 10, 0, 0, 0, 25),
        ("plan_x", month(4)): quiet(0),
        ("plan_y", month(4)): quiet(25),
    }


def two_families() -> World:
    w = shop(World())
    w.customer("c_tie")
    w.subscribe("s_tie", "c_tie", [("i_t1", "alpha_usd", 1), ("i_t2", "beta_usd", 1)], ts(2024, 1, 10))  # 20 + 20
    w.update("s_tie", ts(2024, 2, 15), items=[("i_t1", "alpha_usd", 1), ("i_t2", "beta_usd", 2)])      # beta 40
    return w


def test_two_families_of_equal_mrr_put_the_customer_in_one_of_them(derive_read_only: Derive) -> None:
    """README: a customer's whole MRR counts in the family of its main item, the one with the largest MRR. With two
    of 20.00 each the customer is in one family, not split: January new 40 in exactly one of alpha and beta. On 15
    February beta grows to 40 (seat expansion 20), so from 1 March beta is its family with an opening of 60."""
    got = bridge(derive_read_only(two_families(), seen_at=SEEN), "month", "family")
    jan = {s: v for (s, p), v in got.items() if p == month(1)}
    assert list(jan.values()) == [b(0, 40, 0, 0, 0, 0, 0, 40)] and set(jan) <= {"alpha", "beta"}
    first = next(iter(jan))
    assert got[(first, month(2))] == b(40, 0, 0, 20, 0, 0, 0, 60)
    assert got[("beta", month(3))] == quiet(60)
    assert got.get(("alpha", month(3)), quiet(0)) == quiet(0)


def currency_switch() -> World:
    w = shop(World())
    w.customer("c_cur", currency="usd")
    w.subscribe("s_usd", "c_cur", [("i_usd", "basic_usd", 2)], ts(2024, 1, 10))   # 20.00 USD
    w.cancel("s_usd", ts(2024, 2, 15))
    w.objects["customers"]["c_cur"]["currency"] = "eur"                          # Stripe's customer now bills in EUR
    w.subscribe("s_eur", "c_cur", [("i_eur", "basic_eur", 2)], ts(2024, 2, 15) + 60)  # 20.00 EUR at 1.08 = 21.60
    w.customer("c_stay")
    w.subscribe("s_stay", "c_stay", [("i_stay", "pro_usd", 1)], ts(2024, 1, 12))  # 20.00 USD
    return w


def test_a_customer_who_switches_currency_counts_in_its_latest_currency_throughout(derive_read_only: Derive
                                                                                      ) -> None:
    """README: `currency` is the customer's as last synced, for every period (so EUR from its first MRR on); the
    switch a minute after the cancel is one plan switch valued at the new plan's rates: +1.60 (21.60 - 20.00) in
    February, and the EUR rate's move to 1.10 in April is fx +0.40. usd holds c_stay alone."""
    got = bridge(derive_read_only(currency_switch(), seen_at=SEEN), "month", "currency")
    assert got == {
        ("eur", month(1)): b(0, 20, 0, 0, 0, 0, 0, 20),
        ("eur", month(2)): b(20, 0, 0, "1.60", 0, 0, 0, "21.60"),
        ("eur", month(3)): quiet("21.60"),
        ("eur", month(4)): b("21.60", 0, 0, 0, 0, 0, "0.40", 22),
        ("usd", month(1)): b(0, 20, 0, 0, 0, 0, 0, 20),
        ("usd", month(2)): quiet(20),
        ("usd", month(3)): quiet(20),
        ("usd", month(4)): quiet(20),
    }


# --- cohorts ---------------------------------------------------------------------------------------------------

def cohorts() -> World:
    w = shop(World())
    for c in ("c_back", "c_gone", "c_keep", "c_late", "c_first"):
        w.customer(c)
    w.subscribe("s_back", "c_back", [("i_back", "basic_usd", 3)], ts(2023, 11, 10))   # 30, November cohort
    w.cancel("s_back", ts(2023, 12, 10))
    w.subscribe("s_back2", "c_back", [("i_back2", "basic_usd", 5)], ts(2024, 2, 5))  # a comeback at 50
    w.subscribe("s_gone", "c_gone", [("i_gone", "pro_usd", 2)], ts(2024, 1, 10))      # 40, January cohort
    w.cancel("s_gone", ts(2024, 1, 25))                                               # gone within January
    w.subscribe("s_keep", "c_keep", [("i_keep", "basic_usd", 1)], ts(2024, 1, 20))   # 10, January cohort
    w.subscribe("s_late", "c_late", [("i_late", "basic_usd", 7)],
                ts(2024, 1, 31, 23, 59) + 59)                                          # 70, 23:59:59 UTC: January
    w.subscribe("s_first", "c_first", [("i_first", "basic_usd", 2)], ts(2024, 2, 1))  # 20, 00:00:00 UTC: February
    return w


def cohort_rows(con: duckdb.DuckDBPyConnection) -> dict[tuple[dt.date, int], tuple]:
    rows = con.execute("SELECT cohort_month, months_since_start, cohort_customers, active_customers, starting_mrr, "
                       "mrr, revenue_retention FROM cohort_revenue_retention WHERE month <= DATE '2024-03-01' "
                       "ORDER BY ALL").fetchall()
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def test_a_cohort_with_a_comeback_counts_its_reactivation(derive_read_only: Derive) -> None:
    """README: starting_mrr is the cohort's MRR at the end of its first month (30); a later comeback's reactivation
    is added to `mrr`, so the November cohort is at 0 in December and January and at 50 from February:
    retention 50 / 30, above 100% with no expansion."""
    got = cohort_rows(derive_read_only(cohorts(), seen_at=SEEN))
    nov = dt.date(2023, 11, 1)
    assert [got[(nov, k)][:4] for k in range(5)] == [
        (1, 1, D(30), D(30)), (1, 0, D(30), D(0)), (1, 0, D(30), D(0)), (1, 1, D(30), D(50)), (1, 1, D(30), D(50))]
    assert got[(nov, 3)][4] == pytest.approx(50 / 30) and got[(nov, 1)][4] == 0


def test_a_churn_in_the_cohort_month_and_a_signup_a_second_before_midnight(derive_read_only: Derive) -> None:
    """A cohort is the customers whose first `new` falls in one UTC month. January: c_gone (40, gone on 25
    January: nothing in starting_mrr), c_keep (10) and c_late (70, at 23:59:59 on the 31st): 3 customers, starting
    80, retention 1.0 after. c_first at 00:00:00 on 1 February is February's cohort alone (20). The same answer
    with the session in another time zone."""
    con = derive_read_only(cohorts(), seen_at=SEEN)
    for zone in ("UTC", "Asia/Tokyo", "America/Los_Angeles"):
        con.execute(f"SET TimeZone = '{zone}'")
        got = cohort_rows(con)
        assert got[(month(1), 0)] == (3, 2, D(80), D(80), 1.0), zone
        assert got[(month(1), 2)] == (3, 2, D(80), D(80), 1.0), zone
        assert got[(month(2), 0)] == (1, 1, D(20), D(20), 1.0), zone
        assert {k[0] for k in got} == {dt.date(2023, 11, 1), month(1), month(2)}, zone
        jan = bridge(con, "month", None)[("all", month(1))]
        assert jan == b(0, 120, 0, 0, 0, 40, 0, 80), zone
    con.execute("SET TimeZone = 'UTC'")


# --- weeks ------------------------------------------------------------------------------------------------------

def straddling_week() -> World:
    w = shop(World())
    w.customer("c_w")
    w.subscribe("s_w", "c_w", [("i_w", "basic_usd", 1)], ts(2024, 1, 30))           # 10, Tuesday 30 January
    w.update("s_w", ts(2024, 2, 2), items=[("i_w", "basic_usd", 3)])                 # 30, Friday 2 February
    w.update("s_w", ts(2024, 2, 5), items=[("i_w", "basic_usd", 2)])                 # 20, Monday 5 February
    return w


def test_a_week_that_straddles_two_months(derive_read_only: Derive) -> None:
    """README: a week runs from Monday 00:00 UTC (ISO weeks). The week of Monday 29 January 2024 holds the new 10
    and the expansion of 20 (period_end Sunday 4 February); the week of 5 February opens at 30 and contracts 10. By
    month: January new 10, February expansion 20 and contraction 10."""
    con = derive_read_only(straddling_week(), seen_at=SEEN)
    rows = con.execute(
        f"SELECT period_start, period_end, {', '.join(COLS)} FROM mrr_bridge_for(period_kind := 'week', "
        "segment_kind := NULL, segment_value := NULL) WHERE period_start < DATE '2024-02-12' ORDER BY 1").fetchall()
    assert rows == [(dt.date(2024, 1, 29), dt.date(2024, 2, 4), *b(0, 10, 0, 20, 0, 0, 0, 30)),
                    (dt.date(2024, 2, 5), dt.date(2024, 2, 11), *b(30, 0, 0, 0, 10, 0, 0, 20))]
    months = bridge(con, "month", None)
    assert months[("all", month(1))] == b(0, 10, 0, 0, 0, 0, 0, 10)
    assert months[("all", month(2))] == b(10, 0, 0, 20, 10, 0, 0, 20)


# --- report ------------------------------------------------------------------------------------------------------

REPORT_SEEN = ts(2024, 5, 20)


def report_book() -> World:
    """core and alpha families. April: c1 churns 20 (core), c2 expands 40 (core), c3 (alpha) reactivates at 20."""
    w = shop(World())
    for c in ("c1", "c2", "c3", "c4"):
        w.customer(c)
    w.subscribe("s1", "c1", [("i1", "pro_usd", 1)], ts(2024, 1, 10))            # core 20
    w.subscribe("s2", "c2", [("i2", "basic_usd", 2)], ts(2024, 1, 15))          # core 20
    w.subscribe("s3", "c3", [("i3", "alpha_usd", 1)], ts(2024, 2, 3))           # alpha 20
    w.cancel("s3", ts(2024, 3, 3))
    w.subscribe("s4", "c4", [("i4", "alpha_usd", 3)], ts(2024, 2, 20))          # alpha 60
    w.cancel("s1", ts(2024, 4, 8))                                              # churn 20
    w.update("s2", ts(2024, 4, 9), items=[("i2", "basic_usd", 6)])             # expansion 40
    w.subscribe("s3b", "c3", [("i3b", "alpha_usd", 1)], ts(2024, 4, 12))        # reactivation 20
    return w


@pytest.fixture(scope="module")
def report_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stripe_churn.metrics.runner import recompute
    from stripe_churn.settings import Settings
    from stripe_churn.store.db import open_store
    from stripe_churn.store.snapshot import publish_snapshot

    path = tmp_path_factory.mktemp("segments_report") / "book.duckdb"
    con = open_store(path)
    report_book().load(con, seen_at=REPORT_SEEN)
    recompute(con, Settings(db=path))
    con.execute("CHECKPOINT")
    con.close()
    publish_snapshot(path)
    return path


def report(db: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["report", *args], env={"STRIPE_CHURN_DB": str(db)})
    assert result.exit_code == 0, result.output
    return result.output


def test_report_per_quarter_and_family_is_the_macro_by_hand(report_db: Path) -> None:
    """Q1: core new 40 (c1, c2), closing 40; alpha new 80, churn 20, closing 60. Q2: core opens 40, churn 20,
    expansion 40, closing 60; alpha opens 60, reactivation 20, closing 80. JSON and CSV say what the macro says."""
    args = ("--period", "quarter", "--segment", "family", "--from", "2024-01", "--to", "2024-06")
    js = json.loads(report(report_db, *args, "--format", "json"))
    rows = list(csv.DictReader(io.StringIO(report(report_db, *args, "--format", "csv"))))
    want = {("alpha", "2024-01-01"): b(0, 80, 0, 0, 0, 20, 0, 60),
            ("alpha", "2024-04-01"): b(60, 0, 20, 0, 0, 0, 0, 80),
            ("core", "2024-01-01"): b(0, 40, 0, 0, 0, 0, 0, 40),
            ("core", "2024-04-01"): b(40, 0, 0, 40, 0, 20, 0, 60)}
    assert {(r["segment_value"], r["period_start"]): tuple(D(str(r[c])) for c in COLS) for r in js} == want
    assert {(r["segment_value"], r["period_start"]): tuple(D(r[c]) for c in COLS) for r in rows} == want
    con = duckdb.connect(str(report_db), read_only=True)
    try:
        macro = con.execute(
            f"SELECT segment_value, period_start, {', '.join(COLS)}, net_revenue_churn_rate, nrr "
            "FROM mrr_bridge_for(period_kind := 'quarter', segment_kind := 'family', segment_value := NULL) "
            "WHERE period_start <= DATE '2024-06-30' ORDER BY ALL").fetchall()
    finally:
        con.close()
    assert {(r[0], r[1].isoformat()): tuple(r[2:10]) for r in macro} == want
    assert [(r["segment_value"], r["period_start"], r["net_revenue_churn_rate"], r["nrr"]) for r in js] == [
        (m[0], m[1].isoformat(), m[10], m[11]) for m in macro]
    assert [r["complete"] for r in js] == [True, False, True, False]
    assert js[1]["net_revenue_churn_rate"] == pytest.approx(-20 / 60)  # alpha Q2: -(20) / 60
    assert js[3]["net_revenue_churn_rate"] == pytest.approx((20 - 40) / 40)  # core Q2: (20 - 40) / 40


def test_reports_verdict_on_the_latest_complete_month(report_db: Path) -> None:
    """Data up to 20 May 2024: April is the latest complete month. It opens at 100 (c1 20, c2 20, c4 60): churn
    20, expansion 40, reactivation 20, so net revenue churn = (20 - 40 - 20) / 100 = -40.00%: AT net negative
    churn. March opens at 120 (c3's 20 churns: 16.67%) and February has no churn or expansion (0.00%, not net
    negative); January opened without MRR (n/a, left out): 1 of 3 complete months."""
    table = " ".join(report(report_db, "--from", "2024-01", "--to", "2024-05").split())
    assert ("latest complete month (2024-04-01): AT net negative churn; net revenue churn -40.00% (expansion + "
            "reactivation 60.00 outweigh churn + contraction 20.00)") in table
    assert "net negative churn in 1 of 3 complete periods (data up to 2024-05-20)" in table
    js = json.loads(report(report_db, "--from", "2024-01", "--to", "2024-05", "--format", "json"))
    assert [(r["period_start"], r["opening_mrr"], r["closing_mrr"], r["net_negative_churn"], r["complete"])
            for r in js] == [("2024-01-01", 0, 40, None, True), ("2024-02-01", 40, 120, False, True),
                             ("2024-03-01", 120, 100, False, True), ("2024-04-01", 100, 140, True, True),
                             ("2024-05-01", 140, 140, False, False)]


def test_a_quarter_per_family_starts_at_from_and_sums_its_months(report_db: Path) -> None:
    """README: --from keeps the periods that start within it, so `--from 2024-02 --period quarter` begins with
    the quarter of April. The family quarter's flows are the sums of its months' flows for the same family,
    since no customer moved family."""
    js = json.loads(report(report_db, "--period", "quarter", "--segment", "family", "--from", "2024-02",
                           "--to", "2024-06", "--format", "json"))
    assert [(r["segment_value"], r["period_start"]) for r in js] == [("alpha", "2024-04-01"), ("core", "2024-04-01")]
    months = json.loads(report(report_db, "--segment", "family", "--from", "2024-04", "--to", "2024-06",
                               "--format", "json"))
    for q in js:
        ms = [m for m in months if m["segment_value"] == q["segment_value"]]
        for c in ("new", "reactivation", "expansion", "contraction", "churn", "fx"):
            assert sum(D(str(m[c])) for m in ms) == D(str(q[c])), (q["segment_value"], c)
        assert D(str(ms[0]["opening_mrr"])) == D(str(q["opening_mrr"]))
        assert D(str(ms[-1]["closing_mrr"])) == D(str(q["closing_mrr"]))


def test_one_family_has_its_own_verdict(report_db: Path) -> None:
    """`--segment family=alpha`: alpha alone. February opens without MRR (n/a); March opens at 80 and c3's 20
    churns (25.00%, not net negative); April opens at 60 (c4) and c3 comes back at 20: (0 - 20) / 60 = -33.33%,
    AT net negative churn: 1 of 2 complete months."""
    js = json.loads(report(report_db, "--segment", "family=alpha", "--from", "2024-01", "--to", "2024-05",
                           "--format", "json"))
    assert [(r["segment_value"], r["period_start"], r["opening_mrr"], r["churn"], r["reactivation"],
             r["closing_mrr"]) for r in js] == [
        ("alpha", "2024-02-01", 0, 0, 0, 80), ("alpha", "2024-03-01", 80, 20, 0, 60),
        ("alpha", "2024-04-01", 60, 0, 20, 80), ("alpha", "2024-05-01", 80, 0, 0, 80)]
    assert js[1]["net_revenue_churn_rate"] == pytest.approx(0.25)
    table = " ".join(report(report_db, "--segment", "family=alpha", "--from", "2024-01", "--to", "2024-05").split())
    assert ("latest complete month (2024-04-01): AT net negative churn; net revenue churn -33.33% (expansion + "
            "reactivation 20.00 outweigh churn + contraction 0.00)") in table
    assert "net negative churn in 1 of 2 complete periods (data up to 2024-05-20)" in table
