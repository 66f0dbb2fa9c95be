"""The finance views against answers worked out by hand (design.md 6 and 7, README "Metric definitions").

One small account holds the awkward cases an outside check would try: a quiet month between active ones, a
customer who churns and comes back in one month, one who churns in its first month, a change at 00:00 UTC of
the 1st (which is also a Monday and a quarter start), a plan switch whose movement window crosses the end of a
month and a week, and customers who change size band and family. Every figure below is counted from the
subscriptions, not read back from the SQL.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from builders import World, ts
from test_bridge import BRIDGE_COLUMNS, assert_bridge_adds_up, catalogue

from stripe_churn.metrics import queries
from stripe_churn.metrics.runner import recompute
from stripe_churn.settings import Settings

Derive = Callable[..., duckdb.DuckDBPyConnection]
D = Decimal
SEEN = ts(2024, 4, 20)
MONEY = ["opening_mrr", "new", "reactivation", "expansion", "contraction", "churn", "fx", "closing_mrr"]
PARTS = ["upgrade", "cross_sell", "seat_expansion", "resource_expansion", "downgrade", "seat_contraction",
         "resource_contraction", "discount_expansion", "discount_contraction"]
COUNTS = ["opening_customers", "new_customers", "reactivated_customers", "churned_customers", "closing_customers"]
RATES = ["gross_revenue_churn_rate", "net_revenue_churn_rate", "nrr", "grr", "customer_churn_rate", "quick_ratio"]


def awkward(w: World) -> World:
    """The account of this module (all USD; see the module docstring)."""
    catalogue(w)  # core (seat): basic 10, pro 20; analytics 50; api metered
    for cid, country in (("c1", "US"), ("c2", "US"), ("c3", "US"), ("c4", "DE")):
        w.customer(cid, address={"country": country})
    w.subscribe("s1", "c1", [("i1", "basic_usd", 2)], ts(2024, 1, 10))  # 20
    w.subscribe("s2", "c2", [("i2", "analytics_usd", 1)], ts(2024, 1, 15))  # 50
    w.subscribe("s4", "c4", [("i4", "basic_usd", 1)], ts(2024, 1, 2))  # 10
    # February: nothing happens
    w.subscribe("s3", "c3", [("i3", "basic_usd", 3)], ts(2024, 3, 3))  # 30, gone in its first month
    w.cancel("s1", ts(2024, 3, 5), feedback="too_expensive")
    w.subscribe("s1b", "c1", [("i1b", "pro_usd", 2)], ts(2024, 3, 20))  # back at 40
    w.cancel("s3", ts(2024, 3, 25), feedback="unused")  # (a Monday, 00:00)
    # Sunday 31 March 23:50 c4 leaves core, and 20 minutes later (1 April, Monday) takes analytics: one
    # transition dated 23:50 (a cross-sell of 50 and a downgrade of 10), in March, Q1 and the week of 25 March
    w.cancel("s4", ts(2024, 3, 31, 23, 50))
    w.subscribe("s4b", "c4", [("i4b", "analytics_usd", 1)], ts(2024, 4, 1, 0, 10))
    # at 00:00:00 UTC of 1 April exactly: c2 takes a second seat (belongs to April, Q2 and its first week)
    w.update("s2", ts(2024, 4, 1), items=[("i2", "analytics_usd", 2)])
    return w


def by_start(rows: list[dict[str, Any]]) -> dict[dt.date, dict[str, Any]]:
    return {r["period_start"]: r for r in rows}


def pick(row: dict[str, Any], cols: list[str]) -> tuple[Any, ...]:
    return tuple(row[c] for c in cols)


def rates(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(None if row[c] is None else pytest.approx(row[c]) for c in RATES)


def test_months_by_hand(derive_read_only: Derive) -> None:
    con = derive_read_only(awkward(World()), seen_at=SEEN)
    got = by_start(queries.bridge(con))
    jan, feb, mar, apr = (got[dt.date(2024, m, 1)] for m in (1, 2, 3, 4))
    assert pick(jan, MONEY) == (0, 80, 0, 0, 0, 0, 0, 80)
    assert pick(jan, COUNTS) == (0, 3, 0, 0, 3)
    # opening_mrr zero: every revenue rate and the verdict are NULL (quick ratio too: nothing was lost)
    assert [jan[c] for c in [*RATES, "net_negative_churn"]] == [None] * 7
    assert jan["arpa"] == D("26.6667")
    # the quiet month is a row of its own
    assert pick(feb, MONEY) == (80, 0, 0, 0, 0, 0, 0, 80) and pick(feb, COUNTS) == (3, 0, 0, 0, 3)
    assert rates(feb) == (0, 0, 1, 1, 0, None) and feb["net_negative_churn"] is False
    # March: new 30 (c3), reactivation 40 (c1), cross-sell 50 and downgrade 10 (c4), churn 20 (c1) + 30 (c3)
    assert pick(mar, MONEY) == (80, 30, 40, 50, 10, 50, 0, 140)
    assert pick(mar, PARTS) == (0, 50, 0, 0, 10, 0, 0, 0, 0)
    # c1 churned and came back (one churned and one reactivated customer), c3 came and went
    assert pick(mar, COUNTS) == (3, 1, 1, 2, 3)
    # gross 60/80, net (60 - 50 - 40)/80, NRR (80 + 50 - 60)/80, GRR 20/80, 1 of the 3 opening customers
    # churned (c3 had no MRR at the start), quick ratio (30 + 40 + 50)/60
    assert rates(mar) == (0.75, -0.375, 0.875, 0.25, pytest.approx(1 / 3), 2.0)
    assert mar["net_negative_churn"] is True and mar["arpa"] == D("46.6667")
    assert pick(apr, MONEY) == (140, 0, 0, 50, 0, 0, 0, 190)
    assert pick(apr, PARTS) == (0, 0, 50, 0, 0, 0, 0, 0, 0)
    assert rates(apr) == (0, pytest.approx(-50 / 140), pytest.approx(190 / 140), 1, 0, None)
    assert apr["arpa"] == D("63.3333")


def test_periods_run_from_the_first_month_with_mrr_through_the_current_one(derive_read_only: Derive) -> None:
    con = derive_read_only(awkward(World()), seen_at=SEEN)
    today = dt.datetime.now(dt.UTC).date()
    first_of = {"week": dt.date(2024, 1, 1), "month": dt.date(2024, 1, 1), "quarter": dt.date(2024, 1, 1),
                "year": dt.date(2024, 1, 1)}  # (1 January 2024 is a Monday)
    current = {"week": today - dt.timedelta(days=today.weekday()), "month": today.replace(day=1),
               "quarter": today.replace(month=(today.month - 1) // 3 * 3 + 1, day=1),
               "year": today.replace(month=1, day=1)}
    for period in queries.PERIODS:
        rows = queries.bridge(con, period)
        assert rows[0]["period_start"] == first_of[period], period
        assert rows[-1]["period_start"] == current[period], period
        assert rows[-1]["closing_mrr"] == D("190.0000"), period
        for r in rows:
            assert r["period_end"] >= r["period_start"]
    assert assert_bridge_adds_up(con, "awkward") > 100


def test_a_window_across_a_boundary_and_a_change_at_midnight_of_the_first(derive_read_only: Derive) -> None:
    """The window of c4's switch starts on Sunday 31 March 23:50 and ends on Monday 1 April 00:10: it is dated at
    its first change, so its flows are March's, Q1's and those of the week of 25 March; c2's change at 00:00:00 of
    1 April is April's, Q2's and that of the week of 1 April."""
    con = derive_read_only(awkward(World()), seen_at=SEEN)
    weeks = by_start(queries.bridge(con, "week"))
    w25, w01 = weeks[dt.date(2024, 3, 25)], weeks[dt.date(2024, 4, 1)]
    # c3's cancellation at 00:00 of Monday 25 March is in that week; c4's switch too
    assert pick(w25, MONEY) == (130, 0, 0, 50, 10, 30, 0, 140)
    assert pick(w25, COUNTS) == (4, 0, 0, 1, 3)
    assert pick(w01, MONEY) == (140, 0, 0, 50, 0, 0, 0, 190)
    quarters = by_start(queries.bridge(con, "quarter"))
    q1, q2 = quarters[dt.date(2024, 1, 1)], quarters[dt.date(2024, 4, 1)]
    assert pick(q1, MONEY) == (0, 110, 40, 50, 10, 50, 0, 140)
    assert pick(q1, COUNTS) == (0, 4, 1, 2, 3)
    assert q1["quick_ratio"] == pytest.approx(200 / 60) and q1["nrr"] is None
    assert pick(q2, MONEY) == (140, 0, 0, 50, 0, 0, 0, 190) and pick(q2, COUNTS) == (3, 0, 0, 0, 3)
    (y2024,) = [r for r in queries.bridge(con, "year") if r["period_start"] == dt.date(2024, 1, 1)]
    assert pick(y2024, MONEY) == (0, 110, 40, 100, 10, 50, 0, 190)
    assert pick(y2024, COUNTS) == (0, 4, 1, 2, 3)
    # customer_mrr agrees with the closing MRR at each boundary: the window's level starts at 23:50, and the
    # change at 00:00 of the 1st is not in March's closing
    for at, closing in ((ts(2024, 4, 1), D("140.0000")), (ts(2024, 3, 25), D("130.0000")),
                        (ts(2024, 4, 8), D("190.0000"))):
        (total,) = con.execute("SELECT coalesce(sum(mrr), 0) FROM customer_mrr WHERE valid_from < to_timestamp(?) "
                               "AND (valid_to IS NULL OR valid_to >= to_timestamp(?))", [at, at]).fetchall()[0]
        assert total == closing, at
    c4 = con.execute("SELECT valid_from, valid_to, mrr FROM customer_mrr WHERE customer_id = 'c4' "
                     "ORDER BY valid_from").fetchall()
    utc = dt.UTC
    assert [(a.astimezone(utc), b and b.astimezone(utc), m) for a, b, m in c4] == [
        (dt.datetime(2024, 1, 2, tzinfo=utc), dt.datetime(2024, 3, 31, 23, 50, tzinfo=utc), D("10.0000")),
        (dt.datetime(2024, 3, 31, 23, 50, tzinfo=utc), None, D("50.0000"))]


def test_segments_by_hand(derive_read_only: Derive) -> None:
    """A customer counts, for a period, in the segment of its state at the period start: c4's March flows are
    core's, its 50 moves to analytics at April's start; c2 grows out of the under-100 band in April and moves in
    May. Country is the customer's (c4 is in DE)."""
    con = derive_read_only(awkward(World()), seen_at=SEEN)
    fam = {(r["segment_value"], r["period_start"]): r for r in queries.bridge(con, "month", "family")}
    core_mar, core_apr = fam[("core", dt.date(2024, 3, 1))], fam[("core", dt.date(2024, 4, 1))]
    assert pick(core_mar, MONEY) == (30, 30, 40, 50, 10, 50, 0, 90)
    assert pick(core_mar, COUNTS) == (2, 1, 1, 2, 2)
    assert pick(core_apr, MONEY) == (40, 0, 0, 0, 0, 0, 0, 40) and pick(core_apr, COUNTS) == (1, 0, 0, 0, 1)
    ana_apr = fam[("analytics", dt.date(2024, 4, 1))]
    assert pick(ana_apr, MONEY) == (100, 0, 0, 50, 0, 0, 0, 150) and pick(ana_apr, COUNTS) == (2, 0, 0, 0, 2)
    bands = {(r["segment_value"], r["period_start"]): r for r in queries.bridge(con, "month", "size_band")}
    a_apr, a_may = bands[("a: under 100", dt.date(2024, 4, 1))], bands[("a: under 100", dt.date(2024, 5, 1))]
    assert pick(a_apr, MONEY) == (140, 0, 0, 50, 0, 0, 0, 190)
    assert pick(a_may, MONEY) == (90, 0, 0, 0, 0, 0, 0, 90) and a_may["opening_customers"] == 2
    b_may = bands[("b: 100 to 1k", dt.date(2024, 5, 1))]
    assert pick(b_may, MONEY) == (100, 0, 0, 0, 0, 0, 0, 100) and b_may["opening_customers"] == 1
    assert ("b: 100 to 1k", dt.date(2024, 4, 1)) not in bands
    de = by_start(queries.bridge(con, "quarter", "country", segment_value="DE"))
    assert pick(de[dt.date(2024, 1, 1)], MONEY) == (0, 10, 0, 50, 10, 0, 0, 50)


def test_segments_add_up_to_the_account_in_every_column(derive_read_only: Derive) -> None:
    """Summed over a segment's values, every flow, sub-column and customer count of each period is the
    account's (the queries' promise: each customer is in one segment value per period)."""
    from test_bridge import book

    con = derive_read_only(book(World()), seen_at=ts(2024, 5, 20))
    cols = [*MONEY, *PARTS, *COUNTS]
    for period in queries.PERIODS:
        whole = by_start(queries.bridge(con, period))
        for segment in ("family", "plan", "product", "currency", "country", "size_band", "metadata.tier"):
            summed: dict[dt.date, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
            for r in queries.bridge(con, period, segment):
                for c in cols:
                    summed[r["period_start"]][c] += r[c]
            assert summed.keys() <= whole.keys()
            for p, row in whole.items():
                assert {c: summed[p][c] for c in cols} == {c: row[c] for c in cols}, (period, segment, p)


def test_every_column_in_order_and_type_for_every_period_and_segment(derive_read_only: Derive) -> None:
    con = derive_read_only(awkward(World()), seen_at=SEEN)
    money, counts, doubles = set(MONEY + PARTS + ["arpa"]), set(COUNTS), set(RATES)
    expected = {c: ("DATE" if c in ("period_start", "period_end") else "DECIMAL(18,4)" if c in money
                    else "BIGINT" if c in counts else "DOUBLE" if c in doubles else "BOOLEAN")
                for c in BRIDGE_COLUMNS}
    assert expected["net_negative_churn"] == "BOOLEAN"
    got = con.execute("DESCRIBE mrr_bridge").fetchall()
    assert [(c[0], c[1]) for c in got] == list(expected.items())
    for period in queries.PERIODS:
        for segment in (None, "family"):
            seg = "NULL" if segment is None else f"'{segment}'"
            got = con.execute(f"DESCRIBE SELECT * FROM mrr_bridge_for(period_kind := '{period}', "
                              f"segment_kind := {seg}, segment_value := NULL)").fetchall()
            assert [(c[0], c[1]) for c in got] == [("segment_value", "VARCHAR"), *expected.items()], (period, seg)
    got = con.execute("DESCRIBE customer_mrr").fetchall()
    assert [(c[0], c[1]) for c in got] == [
        ("account_id", "VARCHAR"), ("customer_id", "VARCHAR"), ("valid_from", "TIMESTAMP WITH TIME ZONE"),
        ("valid_to", "TIMESTAMP WITH TIME ZONE"), ("mrr", "DECIMAL(18,4)")]


def test_churn_reasons_by_hand(derive_read_only: Derive) -> None:
    con = derive_read_only(awkward(World()), seen_at=SEEN)
    got = [(r["period_start"], r["period_end"], r["churn_type"], r["cancellation_feedback"], r["churned_customers"],
            r["churned_mrr"]) for r in queries.churn_reasons(con)]
    # (c4's cancellation inside its switch's window is no churn)
    assert got == [(dt.date(2024, 3, 1), dt.date(2024, 3, 31), "voluntary", "too_expensive", 1, D("20.0000")),
                   (dt.date(2024, 3, 1), dt.date(2024, 3, 31), "voluntary", "unused", 1, D("30.0000"))]
    weekly = [(r["period_start"], r["cancellation_feedback"], r["churned_mrr"])
              for r in queries.churn_reasons(con, "week")]
    assert weekly == [(dt.date(2024, 3, 4), "too_expensive", D("20.0000")),
                      (dt.date(2024, 3, 25), "unused", D("30.0000"))]


def test_cohorts_by_hand(derive_read_only: Derive) -> None:
    """January's cohort (c1, c2, c4) starts at 80 and holds c1's comeback and c4's switch; March's (c3) lost its
    only customer within its first month: a zero base, so no retention."""
    con = derive_read_only(awkward(World()), seen_at=SEEN)
    got = {(r["cohort_month"], r["month"]): r for r in queries.cohort_matrix(con)}
    jan = [got[(dt.date(2024, 1, 1), dt.date(2024, m, 1))] for m in (1, 2, 3, 4)]
    assert [(r["months_since_start"], r["mrr"], r["active_customers"]) for r in jan] == [
        (0, D("80.0000"), 3), (1, D("80.0000"), 3), (2, D("140.0000"), 3), (3, D("190.0000"), 3)]
    assert {r["starting_mrr"] for r in jan} == {D("80.0000")} and {r["cohort_customers"] for r in jan} == {3}
    assert [r["revenue_retention"] for r in jan] == [1.0, 1.0, 1.75, 2.375]
    mar = got[(dt.date(2024, 3, 1), dt.date(2024, 3, 1))]
    assert (mar["cohort_customers"], mar["active_customers"], mar["starting_mrr"], mar["revenue_retention"]) == (
        1, 0, D("0.0000"), None)


def test_scheduled_churn_by_hand(derive: Derive) -> None:
    """Set to cancel: at period end (the date is the period's end), at a date of its own mid-period, set and
    then taken back (not listed), on a trial (nothing at stake), and one that has ended (not listed)."""
    w = catalogue(World())
    for cid in ("c1", "c2", "c3", "c4", "c5"):
        w.customer(cid)
    w.subscribe("s1", "c1", [("i1", "basic_usd", 4), ("i1b", "analytics_usd", 1)], ts(2024, 3, 10))
    w.update("s1", ts(2024, 4, 2), cancel_at_period_end=True, cancel_at=ts(2024, 5, 10), canceled_at=ts(2024, 4, 2),
             cancellation_details={"reason": "cancellation_requested", "feedback": "missing_features",
                                   "comment": None})
    w.subscribe("s2", "c2", [("i2", "pro_usd", 1)], ts(2024, 3, 12))
    w.update("s2", ts(2024, 4, 3), cancel_at=ts(2024, 6, 15), canceled_at=ts(2024, 4, 3))
    w.subscribe("s3", "c3", [("i3", "pro_usd", 3)], ts(2024, 3, 14))
    w.update("s3", ts(2024, 4, 4), cancel_at_period_end=True, cancel_at=ts(2024, 4, 14), canceled_at=ts(2024, 4, 4))
    w.update("s3", ts(2024, 4, 5), cancel_at_period_end=False, cancel_at=None, canceled_at=None)
    w.subscribe("s4", "c4", [("i4", "basic_usd", 1)], ts(2024, 4, 1), trial_end=ts(2024, 5, 1))
    w.update("s4", ts(2024, 4, 6), cancel_at_period_end=True, cancel_at=ts(2024, 5, 1), canceled_at=ts(2024, 4, 6))
    w.subscribe("s5", "c5", [("i5", "basic_usd", 2)], ts(2024, 3, 1))
    w.cancel("s5", ts(2024, 3, 5), ended_at=ts(2024, 4, 1))
    con = derive(w, seen_at=SEEN)
    utc = dt.UTC
    got = [(r["subscription_id"], r["customer_id"], r["cancel_at"], r["mrr_at_stake"], r["cancellation_feedback"])
           for r in queries.scheduled_churn(con)]
    assert got == [("s4", "c4", dt.datetime(2024, 5, 1, tzinfo=utc), D("0.0000"), None),
                   ("s1", "c1", dt.datetime(2024, 5, 10, tzinfo=utc), D("90.0000"), "missing_features"),
                   ("s2", "c2", dt.datetime(2024, 6, 15, tzinfo=utc), D("20.0000"), None)]


def test_another_reporting_currency(derive: Derive) -> None:
    """Reporting in EUR: a USD customer of 100.00 counts 90.00 at 0.90 and 80.00 from 1 March at 0.80, the swing
    an fx line (never expansion); the EUR customer counts as it is; the cohort stays at constant rates; the
    scheduled churn is valued at today's rate."""
    w = World()
    w.product("prod_core", unit_label="seat", family="core")
    w.price("basic_usd", "prod_core", 1_000, currency="usd")
    w.price("basic_eur", "prod_core", 1_000, currency="eur")
    w.fx_rates += [("2023-12-01", "usd", 0.9), ("2024-03-01", "usd", 0.8)]
    w.customer("c_usd", currency="usd")
    w.customer("c_eur", currency="eur")
    w.subscribe("s_usd", "c_usd", [("i_usd", "basic_usd", 10)], ts(2024, 1, 10))
    w.subscribe("s_eur", "c_eur", [("i_eur", "basic_eur", 5)], ts(2024, 1, 12))
    w.update("s_usd", ts(2024, 4, 10), cancel_at_period_end=True, cancel_at=ts(2024, 5, 10),
             canceled_at=ts(2024, 4, 10))
    con = derive(w, seen_at=SEEN, currency="eur")
    got = by_start(queries.bridge(con))
    assert pick(got[dt.date(2024, 1, 1)], MONEY) == (0, 140, 0, 0, 0, 0, 0, 140)
    assert pick(got[dt.date(2024, 3, 1)], MONEY) == (140, 0, 0, 0, 0, 0, -10, 130)
    assert got[dt.date(2024, 3, 1)]["net_revenue_churn_rate"] == 0  # (fx is in no rate)
    cur = {(r["segment_value"], r["period_start"]): r for r in queries.bridge(con, "month", "currency")}
    assert pick(cur[("usd", dt.date(2024, 3, 1))], MONEY) == (90, 0, 0, 0, 0, 0, -10, 80)
    assert pick(cur[("eur", dt.date(2024, 3, 1))], MONEY) == (50, 0, 0, 0, 0, 0, 0, 50)
    (s,) = queries.scheduled_churn(con)
    assert (s["mrr_at_stake"], s["currency"], s["mrr_at_stake_original"]) == (D("80.0000"), "usd", D("100.0000"))
    cohort = [r["mrr"] for r in queries.cohort_matrix(con) if r["month"] <= dt.date(2024, 4, 1)]
    assert cohort == [D("140.0000")] * 4


def test_two_accounts_in_one_store(store: duckdb.DuckDBPyConnection) -> None:
    """The views are of every account in the store: the bridge adds the accounts up (a customer id that both
    accounts use is two customers), each view's rows keep their account, and no account's customer takes
    another's history."""
    a = awkward(World(account_id="acct_a"))
    b = catalogue(World(account_id="acct_b"))
    b.fx_rates = []  # (rates are the store's, shared: a's are loaded once)
    b.customer("c1")
    b.subscribe("sb", "c1", [("ib", "basic_usd", 1)], ts(2024, 2, 10))  # b's c1: 10 from February
    b.cancel("sb", ts(2024, 3, 12), feedback="unused")
    for w in (a, b):
        w.load(store, seen_at=SEEN)
    recompute(store, Settings())
    got = by_start(queries.bridge(store))
    assert pick(got[dt.date(2024, 2, 1)], MONEY) == (80, 10, 0, 0, 0, 0, 0, 90)
    assert pick(got[dt.date(2024, 2, 1)], COUNTS) == (3, 1, 0, 0, 4)
    # March: a's figures plus b's churn of 10
    assert pick(got[dt.date(2024, 3, 1)], MONEY) == (90, 30, 40, 50, 10, 60, 0, 140)
    assert pick(got[dt.date(2024, 3, 1)], COUNTS) == (4, 1, 1, 3, 3)
    assert got[dt.date(2024, 3, 1)]["customer_churn_rate"] == pytest.approx(2 / 4)
    c1 = store.execute("SELECT account_id, mrr FROM customer_mrr WHERE customer_id = 'c1' AND valid_to IS NULL "
                       "ORDER BY account_id").fetchall()
    assert c1 == [("acct_a", D("40.0000")), ("acct_b", D("0.0000"))]
    reasons = {(r["cancellation_feedback"]): (r["churned_customers"], r["churned_mrr"])
               for r in queries.churn_reasons(store)}
    assert reasons == {"too_expensive": (1, D("20.0000")), "unused": (2, D("40.0000"))}
    jan_cohort = [r for r in queries.cohort_matrix(store) if r["cohort_month"] == dt.date(2024, 1, 1)]
    assert jan_cohort[0]["cohort_customers"] == 3  # (b's c1 is February's)
    assert assert_bridge_adds_up(store, "two accounts", ["month", "quarter"], [None, "family", "country"]) > 0


def test_an_empty_store_answers(store: duckdb.DuckDBPyConnection) -> None:
    """A store that holds no revenue yet (a first sync of an empty account): every view and macro answers with
    no rows, and the readers with nothing, instead of failing."""
    recompute(store, Settings())
    for name in ("mrr_bridge", "mrr_movements", "customer_mrr", "item_mrr", "scheduled_churn", "churn_reasons",
                 "cohort_revenue_retention", "mrr_bridge_for(period_kind := 'week', segment_kind := 'family', "
                 "segment_value := NULL)", "churn_reasons_for('quarter')", "cohort_matrix()"):
        assert store.execute(f"SELECT count(*) FROM {name}").fetchall() == [(0,)], name
    for period in queries.PERIODS:
        assert queries.bridge(store, period) == [] and queries.bridge(store, period, "size_band") == []
    assert queries.churn_reasons(store) == [] and queries.scheduled_churn(store) == []
    assert queries.cohort_matrix(store) == [] and queries.latest_verdict(store) is None


def test_a_metadata_segment_without_a_key_says_what_to_give(derive_read_only: Derive) -> None:
    """`segment_kind := 'metadata.'` (the key left out) stopped in DuckDB's binder with "JSON path error near
    '.""'", a message that names neither the segment nor what to write."""
    con = derive_read_only(awkward(World()), seen_at=SEEN)
    with pytest.raises(duckdb.Error) as caught:
        con.execute("SELECT * FROM mrr_bridge_for(period_kind := 'month', segment_kind := 'metadata.', "
                    "segment_value := NULL)").fetchall()
    message = str(caught.value)
    assert "segment kind metadata. names no key: use metadata.<key>, for example metadata.tier" in message
    assert "\n" not in message.strip()


def test_a_cohort_in_another_currency_at_an_unchanged_rate_is_the_bridge_to_the_cent(derive: Derive) -> None:
    """Three EUR customers on a 1,000.00 EUR annual plan (83.3333... EUR a month each, 90.0000 USD at 1.08): the
    bridge says 270.0000 and so does a hand count, but the cohort valued each movement's amount rounded to 4
    decimals (83.3333 EUR) times the rate, 3 x 89.999964, and said 269.9999 while the rate never moved. A later
    upgrade at another rate is still valued at the cohort's (166.6667 - 83.3333 EUR at 1.08)."""
    w = World()
    w.product("prod_core", unit_label="seat", family="core")
    w.price("annual_eur", "prod_core", 100_000, currency="eur", interval="year")
    w.fx_rates += [("2023-12-01", "eur", 1.08), ("2024-03-01", "eur", 1.10)]
    for n in (1, 2, 3):
        w.customer(f"c{n}", currency="eur")
        w.subscribe(f"s{n}", f"c{n}", [(f"i{n}", "annual_eur", 1)], ts(2024, 1, 10 + n))
    w.update("s1", ts(2024, 4, 10), items=[("i1", "annual_eur", 2)])
    con = derive(w, seen_at=SEEN)
    bridge = by_start(queries.bridge(con))
    assert [bridge[dt.date(2024, m, 1)]["closing_mrr"] for m in (1, 2, 3, 4)] == [
        D("270.0000"), D("270.0000"), D("275.0001"), D("366.6667")]  # (91.6667 each at 1.10)
    cohort = [r["mrr"] for r in queries.cohort_matrix(con) if r["month"] <= dt.date(2024, 4, 1)]
    assert cohort == [D("270.0000"), D("270.0000"), D("270.0000"), D("360.0000")]


def test_cohorts_add_up_to_the_bridge_at_constant_rates(small_sim_derived: duckdb.DuckDBPyConnection) -> None:
    """With rates that never move (the sandbox's eur 1.08 and gbp 1.27), every customer is in one cohort, so the
    cohorts' MRR and active customers at each month's end are the bridge's closing MRR and customers (the cohorts
    were up to 0.0001 short in 4 of the simulation's 10 months)."""
    sim_store = small_sim_derived  # (the small simulation, recomputed under Settings())
    assert sim_store.execute("SELECT count(*) FROM mrr_movements WHERE category = 'fx'").fetchall() == [(0,)]
    off = sim_store.execute("""
        SELECT b.period_start, b.closing_mrr, c.mrr, b.closing_customers, c.customers
        FROM mrr_bridge b
        JOIN (SELECT month, sum(mrr) AS mrr, sum(active_customers) AS customers
              FROM cohort_revenue_retention GROUP BY ALL) c ON c.month = b.period_start
        WHERE b.closing_mrr <> c.mrr OR b.closing_customers <> c.customers""").fetchall()
    assert off == []
    assert sim_store.execute("SELECT count(DISTINCT currency) FROM mrr_movements").fetchall()[0][0] > 1


@pytest.mark.parametrize("period", ["week", "quarter", "year"])
def test_every_period_opens_with_what_customer_mrr_says(small_sim_derived: duckdb.DuckDBPyConnection,
                                                        period: str) -> None:
    """An independent path to the opening figures of every period kind: customer_mrr at 00:00 UTC of the period's
    first day (a change at that instant is the period's own), counted and summed."""
    sim_store = small_sim_derived  # (the small simulation, recomputed under Settings())
    off = sim_store.execute(f"""
        SELECT b.period_start, b.opening_mrr, c.mrr, b.opening_customers, c.customers
        FROM mrr_bridge_for(period_kind := '{period}', segment_kind := NULL, segment_value := NULL) b,
        LATERAL (SELECT coalesce(sum(mrr), 0) AS mrr, count(*) FILTER (WHERE mrr > 0) AS customers
                 FROM customer_mrr
                 WHERE valid_from < timezone('UTC', CAST(b.period_start AS TIMESTAMP))
                   AND (valid_to IS NULL OR valid_to >= timezone('UTC', CAST(b.period_start AS TIMESTAMP)))) c
        WHERE b.opening_mrr <> c.mrr OR b.opening_customers <> c.customers""").fetchall()
    assert off == []
    assert queries.bridge(sim_store, period)


def test_the_readme_queries_for_a_day_and_for_a_periods_opening(derive_read_only: Derive) -> None:
    """c2's second seat comes at 00:00:00 UTC of 1 April: the README's query of the MRR at that instant counts it,
    and its query of a period's opening gives April's opening_mrr and opening_customers, which do not."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", readme, flags=re.S)
    (at_day,) = [b for b in blocks if b.startswith("SELECT customer_id, mrr\nFROM customer_mrr")]
    (opening,) = [b for b in blocks if b.startswith("SELECT count(*) FILTER (WHERE mrr > 0) AS opening_customers")]
    con = derive_read_only(awkward(World()), seen_at=SEEN)
    day = "2024-04-01 00:00:00+00"
    assert sum(r[1] for r in con.execute(at_day.replace("2026-01-01 00:00:00+00", day)).fetchall()) == 190
    apr = by_start(queries.bridge(con))[dt.date(2024, 4, 1)]
    got = con.execute(opening.replace("2026-01-01 00:00:00+00", day)).fetchall()
    assert got == [(apr["opening_customers"], apr["opening_mrr"])] == [(3, D("140.0000"))]


def test_a_customer_who_moved_country_counts_in_the_latest_one_throughout(derive: Derive) -> None:
    """The store keeps a customer's latest state only (README): c4, in DE when it subscribed, has moved to FR by the
    sync (its address as synced), so FR has its whole history and DE none of it; the identity holds in each."""
    w = awkward(World())
    w.objects["customers"]["c4"]["address"] = {"country": "FR"}
    con = derive(w, seen_at=SEEN)
    countries = {(r["segment_value"], r["period_start"]): r for r in queries.bridge(con, "month", "country")}
    assert {v for v, _ in countries} == {"US", "FR"}
    assert pick(countries[("FR", dt.date(2024, 1, 1))], MONEY) == (0, 10, 0, 0, 0, 0, 0, 10)
    assert pick(countries[("FR", dt.date(2024, 3, 1))], MONEY) == (10, 0, 0, 50, 10, 0, 0, 50)
    assert pick(countries[("US", dt.date(2024, 1, 1))], MONEY) == (0, 70, 0, 0, 0, 0, 0, 70)
    assert_bridge_adds_up(con, "moved country", ["month"], [None, "country"])
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    assert "so a customer who moved from US to DE counts in DE from its first MRR on" in readme


def test_the_sub_columns_add_up_when_rounding_turns_a_part_over(derive: Derive) -> None:
    """Four sub-cent seats (0.00005 a month each, a unit price of 0.005 cents) each gain a seat in one change, on
    a customer at 10.00023 that goes to 10.00043: the customer's MRR moves 10.0002 -> 10.0004, so the four parts,
    0.0001 each once rounded, carry a remainder of -0.0002, and the part that takes it is -0.0001 while labelled
    `seat_expansion` (its category says contraction). February's expansion (0.0003) and contraction (0.0001) must
    still be the sums of their columns: seat_expansion said 0.0002 and no contraction column held the 0.0001."""
    w = World()
    w.product("prod_core", unit_label="seat", family="core")
    w.price("base", "prod_core", 1_000)
    w.price("base3", "prod_core", 1)
    w.objects["prices"]["base3"].update(unit_amount=None, unit_amount_decimal="0.003")
    items = [("i0", "base", 1), ("i9", "base3", 1)]
    for k in range(1, 5):
        w.product(f"prod_x{k}", unit_label="seat", family=f"x{k}")
        w.price(f"tiny{k}", f"prod_x{k}", 1)
        w.objects["prices"][f"tiny{k}"].update(unit_amount=None, unit_amount_decimal="0.005")
    w.customer("c1")
    w.subscribe("s1", "c1", [*items, *((f"i{k}", f"tiny{k}", 1) for k in range(1, 5))], ts(2024, 1, 10))
    w.update("s1", ts(2024, 2, 10), items=[*items, *((f"i{k}", f"tiny{k}", 2) for k in range(1, 5))])
    con = derive(w, seen_at=ts(2024, 3, 1))
    feb = by_start(queries.bridge(con))[dt.date(2024, 2, 1)]
    assert (feb["opening_mrr"], feb["closing_mrr"]) == (D("10.0002"), D("10.0004"))
    assert feb["expansion"] - feb["contraction"] == D("0.0002")
    assert feb["expansion"] == sum(feb[c] for c in PARTS[:4]) + feb["discount_expansion"]
    assert feb["contraction"] == sum(feb[c] for c in PARTS[4:8]) + feb["discount_contraction"]
    assert all(feb[c] >= 0 for c in PARTS)
    # (the part turned over is a contraction of seats in the bridge)
    assert (feb["seat_expansion"], feb["seat_contraction"]) == (feb["expansion"], feb["contraction"])
