"""The cohort revenue-retention matrix, scheduled_churn and churn_reasons against one account worked out by hand
(design.md 4-7; README "Metric definitions" and the finance cookbook's paragraphs on cohorts, churn reasons and the
MRR at stake; NOTES.md for the recorded choices), and the identities that must hold between them and the other views:
a cohort's month is its customers' MRR at that month's end (while the rates are the cohort's), churn_reasons add up to
the bridge's churn in every period of every kind, and the MRR at stake of a customer's only subscription is that
customer's current MRR.

The account, seen on 20 September 2024 (reporting in USD). Exchange rates: EUR 1.08 from 1 December 2023, 1.10 from
15 March 2024, 1.12 from 1 July 2024 (and a row of 2.00 from 1 January 2099, not in force yet); GBP 1.27 from 1
December 2023, 1.481478 from 15 May 2024. Prices: basic 10.00, pro 20.00, analytics 50.00 a month in each currency,
and a GBP annual plan of 100.00 a year.

- pf (USD, December 2023's cohort): 2 x pro (40.00) from 1 December 2023, cancelled for a failed payment on 15 August.
- ja (January's): 3 x basic EUR (30 EUR, 32.40 at 1.08) from 10 January; cancelled on 10 May (switched_service, with a
  comment) when EUR is 1.10 (33.00); back on 10 June on 2 x basic GBP (20 GBP; 29.6296 at 1.481478).
- jb (January's): 1 x pro USD (20.00) from 20 January.
- fb (February's): 1 x basic (10.00) from 5 February; cancelled on 10 April (too_expensive); back on 15 May with two
  subscriptions 20 minutes apart: analytics at 10:00 and 2 x basic at 10:20 (one comeback of 70.00).
- me (March's): 3 x basic EUR from 5 March (30 EUR: 32.40 at 1.08, 33.00 from the 15th, 33.60 from 1 July); a
  fourth seat on 10 August (40 EUR, 44.80).
- gb (May's): the GBP annual plan from 2 May (8.3333... GBP a month: 10.5833 at 1.27; from 15 May 12.34565 exactly,
  12.3457).
- jn (June's): 2 x basic (20.00) from 3 June, cancelled on 10 June (unused), back on 20 June at 2 x pro (40.00).
- tw (July's): basic (10.00) from 1 July 10:00, cancelled on 5 July; 3 x basic (30.00) from 10 July, cancelled on 20
  July; both too_expensive.
- pa (August's): 4 x basic (40.00) from 12 August; on 1 September set to cancel on 15 October (missing_features, a
  comment).
- mi (August's, EUR): 2 x basic and analytics EUR (70 EUR, 78.40 at 1.12) from 25 August; on 2 September set to cancel
  at its period's end, 25 September.
- te1, te2 (no MRR): trials of 3 x basic from 1 September, each set on 5 September to cancel on 15 November; on 10
  September te1's trial is moved from 1 October to 1 December, te2's brought forward from 1 December to 1 October.

One store, derived once for the module; every test reads it.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import duckdb
import pytest
from builders import World, ts
from test_bridge import catalogue

from stripe_churn.metrics import queries
from stripe_churn.metrics.runner import recompute
from stripe_churn.settings import Settings

D = Decimal
UTC = dt.UTC
SEEN = ts(2024, 9, 20)
day = dt.date


def at(year: int, month: int, dd: int) -> dt.datetime:
    return dt.datetime(year, month, dd, tzinfo=UTC)


def details(feedback: str | None, comment: str | None = None,
            reason: str = "cancellation_requested") -> dict[str, Any]:
    return {"reason": reason, "feedback": feedback, "comment": comment}


def account() -> World:
    """The account of the module docstring."""
    w = catalogue(World())
    w.price("annual_gbp", "prod_core", 10_000, currency="gbp", interval="year")
    w.fx_rates = [("2023-12-01", "eur", 1.08), ("2024-03-15", "eur", 1.10), ("2024-07-01", "eur", 1.12),
                  ("2023-12-01", "gbp", 1.27), ("2024-05-15", "gbp", 1.481478),
                  ("2099-01-01", "eur", 2.00)]  # (a rate not yet in force)
    w.customer("pf")
    w.subscribe("s_pf", "pf", [("i_pf", "pro_usd", 2)], ts(2023, 12, 1))
    w.cancel("s_pf", ts(2024, 8, 15), reason="payment_failed")
    w.customer("ja", currency="eur")
    w.subscribe("s_ja1", "ja", [("i_ja1", "basic_eur", 3)], ts(2024, 1, 10))
    w.cancel("s_ja1", ts(2024, 5, 10), feedback="switched_service", comment="moved to a cheaper tool")
    w.objects["customers"]["ja"]["currency"] = "gbp"  # (a multi-currency customer: its new subscription bills in GBP)
    w.subscribe("s_ja2", "ja", [("i_ja2", "basic_gbp", 2)], ts(2024, 6, 10))
    w.customer("jb")
    w.subscribe("s_jb", "jb", [("i_jb", "pro_usd", 1)], ts(2024, 1, 20))
    w.customer("fb")
    w.subscribe("s_fb1", "fb", [("i_fb1", "basic_usd", 1)], ts(2024, 2, 5))
    w.cancel("s_fb1", ts(2024, 4, 10), feedback="too_expensive")
    w.subscribe("s_fb2", "fb", [("i_fb2", "analytics_usd", 1)], ts(2024, 5, 15, 10))
    w.subscribe("s_fb3", "fb", [("i_fb3", "basic_usd", 2)], ts(2024, 5, 15, 10, 20))
    w.customer("me", currency="eur")
    w.subscribe("s_me", "me", [("i_me", "basic_eur", 3)], ts(2024, 3, 5))
    w.update("s_me", ts(2024, 8, 10), items=[("i_me", "basic_eur", 4)])
    w.customer("gb", currency="gbp")
    w.subscribe("s_gb", "gb", [("i_gb", "annual_gbp", 1)], ts(2024, 5, 2))
    w.customer("jn")
    w.subscribe("s_jn1", "jn", [("i_jn1", "basic_usd", 2)], ts(2024, 6, 3))
    w.cancel("s_jn1", ts(2024, 6, 10), feedback="unused")
    w.subscribe("s_jn2", "jn", [("i_jn2", "pro_usd", 2)], ts(2024, 6, 20))
    w.customer("tw")
    w.subscribe("s_tw1", "tw", [("i_tw1", "basic_usd", 1)], ts(2024, 7, 1, 10))
    w.cancel("s_tw1", ts(2024, 7, 5), feedback="too_expensive")
    w.subscribe("s_tw2", "tw", [("i_tw2", "basic_usd", 3)], ts(2024, 7, 10))
    w.cancel("s_tw2", ts(2024, 7, 20), feedback="too_expensive")
    w.customer("pa")
    w.subscribe("s_pa", "pa", [("i_pa", "basic_usd", 4)], ts(2024, 8, 12))
    w.update("s_pa", ts(2024, 9, 1), cancel_at=ts(2024, 10, 15), canceled_at=ts(2024, 9, 1),
             cancellation_details=details("missing_features", "needs single sign-on"))
    w.customer("mi", currency="eur")
    w.subscribe("s_mi", "mi", [("i_mi1", "basic_eur", 2), ("i_mi2", "analytics_eur", 1)], ts(2024, 8, 25))
    w.update("s_mi", ts(2024, 9, 2), cancel_at_period_end=True, cancel_at=ts(2024, 9, 25), canceled_at=ts(2024, 9, 2),
             cancellation_details=details(None))
    for cid, first_end, moved_end in (("te1", ts(2024, 10, 1), ts(2024, 12, 1)),
                                      ("te2", ts(2024, 12, 1), ts(2024, 10, 1))):
        w.customer(cid)
        sid = f"s_{cid}"
        w.subscribe(sid, cid, [(f"i_{cid}", "basic_usd", 3)], ts(2024, 9, 1), trial_end=first_end)
        w.update(sid, ts(2024, 9, 5), cancel_at=ts(2024, 11, 15), canceled_at=ts(2024, 9, 5),
                 cancellation_details=details("unused"))
        w.update(sid, ts(2024, 9, 10), trial_end=moved_end, billing_cycle_anchor=moved_end)
    return w


@pytest.fixture(scope="module")
def con(module_stores: Callable[[], duckdb.DuckDBPyConnection]) -> Iterator[duckdb.DuckDBPyConnection]:
    store = module_stores()
    account().load(store, seen_at=SEEN)
    recompute(store, Settings())
    yield store


def month_end_mrr(con: duckdb.DuckDBPyConnection, customers: list[str], month: dt.date) -> Decimal:
    """The customers' MRR summed at the end of ``month``: customer_mrr just before the next month's first instant
    (a change at that instant belongs to the next month)."""
    nxt = (dt.datetime(month.year, month.month, 1, tzinfo=UTC) + dt.timedelta(days=32)).replace(day=1)
    (got,) = con.execute(
        "SELECT coalesce(sum(mrr), 0) FROM customer_mrr WHERE list_contains(?, customer_id) AND valid_from < ? "
        "AND (valid_to IS NULL OR valid_to >= ?)", [customers, nxt, nxt]).fetchall()[0]
    return Decimal(got)


def cohort_members(con: duckdb.DuckDBPyConnection) -> dict[dt.date, list[str]]:
    """Each cohort's customers, read from mrr_movements (the UTC month of each customer's first `new`)."""
    out: dict[dt.date, list[str]] = defaultdict(list)
    for month, customer in con.execute(
            "SELECT CAST(date_trunc('month', timezone('UTC', min(occurred_at))) AS DATE), customer_id "
            "FROM mrr_movements WHERE movement = 'new' GROUP BY customer_id ORDER BY 1, 2").fetchall():
        out[month].append(customer)
    return dict(out)


def matrix(con: duckdb.DuckDBPyConnection) -> dict[tuple[dt.date, dt.date], dict[str, Any]]:
    return {(r["cohort_month"], r["month"]): r for r in queries.cohort_matrix(con)}


# --- cohorts -------------------------------------------------------------------------------------------------------

def test_the_cohorts_and_their_customers(con: duckdb.DuckDBPyConnection) -> None:
    """README: a cohort is the customers whose first `new` falls in one UTC month. December 2023: pf; January: ja,
    jb; February: fb; March: me; May: gb; June: jn; July: tw; August: pa, mi. te1 and te2 are still on their trials
    (no `new`) and in no cohort. The matrix runs from each cohort's month through the current month (today's, after
    the data), one row a month."""
    assert cohort_members(con) == {
        day(2023, 12, 1): ["pf"], day(2024, 1, 1): ["ja", "jb"], day(2024, 2, 1): ["fb"], day(2024, 3, 1): ["me"],
        day(2024, 5, 1): ["gb"], day(2024, 6, 1): ["jn"], day(2024, 7, 1): ["tw"], day(2024, 8, 1): ["mi", "pa"]}
    rows = queries.cohort_matrix(con)
    today = dt.datetime.now(UTC).date().replace(day=1)
    sizes = {r["cohort_month"]: r["cohort_customers"] for r in rows}
    assert sizes == {day(2023, 12, 1): 1, day(2024, 1, 1): 2, day(2024, 2, 1): 1, day(2024, 3, 1): 1,
                     day(2024, 5, 1): 1, day(2024, 6, 1): 1, day(2024, 7, 1): 1, day(2024, 8, 1): 2}
    for cohort in sizes:
        months = [r["month"] for r in rows if r["cohort_month"] == cohort]
        assert months[0] == cohort and months[-1] == today
        assert [r["months_since_start"] for r in rows if r["cohort_month"] == cohort] == list(range(len(months)))


def test_a_customer_who_leaves_and_comes_back_in_another_currency(con: duckdb.DuckDBPyConnection) -> None:
    """README: at constant exchange rates, the rates on the last day of the cohort's first month (31 January: EUR
    1.08, GBP 1.27), fx movements left out. January's cohort: ja 30 EUR x 1.08 = 32.40 + jb 20.00 = 52.40 in
    January and through April (EUR's moves to 1.10 in March are fx, not retention); ja's cancellation on 10 May takes
    30 EUR x 1.08 = 32.40 back out (not the 33.00 the bridge's churn says at that day's rate): 20.00, one active
    customer; its comeback on 10 June in GBP counts 20 GBP x 1.27 = 25.40 (the bridge's reactivation is 29.6296 at
    1.481478): 45.40, two active, retention 45.40 / 52.40 from June on."""
    got = matrix(con)
    jan = day(2024, 1, 1)
    want = {1: ("52.4", 2), 2: ("52.4", 2), 3: ("52.4", 2), 4: ("52.4", 2), 5: ("20", 1), 6: ("45.4", 2),
            7: ("45.4", 2), 9: ("45.4", 2)}
    assert {m: (got[(jan, day(2024, m, 1))]["mrr"], got[(jan, day(2024, m, 1))]["active_customers"])
            for m in want} == {m: (D(v), n) for m, (v, n) in want.items()}
    assert {r["starting_mrr"] for (c, _), r in got.items() if c == jan} == {D("52.4")}
    assert got[(jan, day(2024, 5, 1))]["revenue_retention"] == pytest.approx(20 / 52.4)
    assert got[(jan, day(2024, 6, 1))]["revenue_retention"] == pytest.approx(45.4 / 52.4)
    bridge = {r["period_start"]: r for r in queries.bridge(con)}
    # (the bridge: May's churn is ja's 33.00; June's reactivations ja's 29.6296 and jn's 40.00)
    assert (bridge[day(2024, 5, 1)]["churn"], bridge[day(2024, 6, 1)]["reactivation"]) == (D(33), D("69.6296"))


def test_a_comeback_on_two_subscriptions_in_one_window_is_one_active_customer(con: duckdb.DuckDBPyConnection
                                                                              ) -> None:
    """design.md 5: a comeback takes the whole customer delta in one `reactivation`. February's cohort (fb): 10.00 in
    February and March, 0 from its churn on 10 April (no active customer, retention 0), then analytics at 10:00 and
    2 x basic at 10:20 on 15 May, one window: +70.00, one active customer again (not two), retention 7.0."""
    got = matrix(con)
    feb = day(2024, 2, 1)
    assert [(got[(feb, day(2024, m, 1))]["mrr"], got[(feb, day(2024, m, 1))]["active_customers"],
             got[(feb, day(2024, m, 1))]["revenue_retention"]) for m in range(2, 10)] == [
        (D(10), 1, 1.0), (D(10), 1, 1.0), (D(0), 0, 0.0)] + [(D(70), 1, 7.0)] * 5
    assert con.execute("SELECT movement, mrr_delta FROM mrr_movements WHERE customer_id = 'fb' "
                       "AND movement = 'reactivation'").fetchall() == [("reactivation", D(70))]


def test_a_rate_that_moves_inside_the_cohorts_first_month(con: duckdb.DuckDBPyConnection) -> None:
    """README: starting_mrr is the cohort's MRR at the end of its first month, at the rate of that month's last day.
    March's cohort (me): 30 EUR, signed up at 1.08 (the bridge's March: new 32.40, fx +1.20 on the 15th with ja's 30
    EUR), is 30 x 1.10 = 33.00 at March's end, as customer_mrr says then; 33.00 through July (EUR's 1.12 from 1 July
    is fx); the fourth seat on 10 August is 10 EUR x 1.10 = 11.00: 44.00 (customer_mrr 44.80 at 1.12), retention
    44 / 33."""
    got = matrix(con)
    mar = day(2024, 3, 1)
    assert [got[(mar, day(2024, m, 1))]["mrr"] for m in range(3, 10)] == [D(33)] * 5 + [D(44)] * 2
    assert got[(mar, day(2024, 3, 1))]["starting_mrr"] == D(33) == month_end_mrr(con, ["me"], day(2024, 3, 1))
    assert got[(mar, day(2024, 8, 1))]["revenue_retention"] == pytest.approx(44 / 33)
    assert month_end_mrr(con, ["me"], day(2024, 8, 1)) == D("44.8")
    march = {r["period_start"]: r for r in queries.bridge(con)}[mar]
    assert (march["new"], march["fx"]) == (D("32.4"), D("1.2"))  # (fx: me's 0.60 and ja's 30 EUR x 0.02)


def test_the_starting_mrr_of_an_annual_plan_after_a_rate_move_to_the_last_decimal(
        con: duckdb.DuckDBPyConnection) -> None:
    """design.md 4 (money in the views to 4 decimals) and README (starting_mrr is the cohort's MRR at the end of its
    first month, at that day's rate). May's cohort (gb): 100.00 GBP a year from 2 May, 8.3333... GBP a month (10.5833
    at 1.27); from 15 May at 1.481478: exactly 12.34565, 12.3457 rounded half away from zero, as customer_mrr and the
    bridge's closing MRR for May say. The cohort's starting MRR and every later month (the rate never moves again)
    must be 12.3457 too."""
    may = day(2024, 5, 1)
    assert month_end_mrr(con, ["gb"], may) == D("12.3457")
    got = matrix(con)
    assert [got[(may, day(2024, m, 1))]["mrr"] for m in range(5, 10)] == [D("12.3457")] * 5
    assert got[(may, may)]["starting_mrr"] == D("12.3457")


def test_a_churn_and_comeback_inside_the_first_month_and_a_cohort_that_ends_at_zero(
        con: duckdb.DuckDBPyConnection) -> None:
    """README: starting_mrr is the cohort's new MRR with any change within the month, less what churned before it
    ended. June's cohort (jn): +20.00 on 3 June, -20.00 on 10 June, +40.00 on 20 June: 40.00, one active customer
    (one new, one churn, one reactivation), 100% after. July's cohort (tw): +10 -10 +30 -30 = 0, no active customer,
    a zero base: revenue_retention NULL in every month."""
    got = matrix(con)
    jun, jul = day(2024, 6, 1), day(2024, 7, 1)
    assert [(got[(jun, day(2024, m, 1))]["starting_mrr"], got[(jun, day(2024, m, 1))]["mrr"],
             got[(jun, day(2024, m, 1))]["active_customers"], got[(jun, day(2024, m, 1))]["revenue_retention"])
            for m in (6, 7, 9)] == [(D(40), D(40), 1, 1.0)] * 3
    assert {(r["starting_mrr"], r["mrr"], r["active_customers"], r["revenue_retention"])
            for (c, _), r in got.items() if c == jul} == {(D(0), D(0), 0, None)}


def test_a_cohort_at_each_month_end_is_its_customers_mrr_while_the_rates_are_the_cohorts(
        con: duckdb.DuckDBPyConnection) -> None:
    """The identity: while every currency a cohort's customers hold MRR in is at the rate of the cohort's month end,
    the cohort's `mrr` is the sum of its customers' customer_mrr at that month's end (README: with rates that never
    move the cohorts add up to the bridge to the cent). The cells where that holds, by hand: December 2023's (USD)
    every month; January's in January and February (EUR 1.08) and May (ja at 0, jb 20.00); February's, June's and
    July's (USD) every month; March's from March to June (EUR 1.10); August's (EUR 1.12 since July) in August and
    September. (May's cohort, GBP, is the test above.) Each cohort's month 0 is among them: its starting MRR is what
    its customers held at the end of their first month."""
    members = cohort_members(con)
    got = matrix(con)
    months = [day(2023, 12, 1)] + [day(2024, m, 1) for m in range(1, 10)]
    cells = {day(2023, 12, 1): months, day(2024, 1, 1): [day(2024, 1, 1), day(2024, 2, 1), day(2024, 5, 1)],
             day(2024, 2, 1): months[2:], day(2024, 3, 1): [day(2024, m, 1) for m in range(3, 7)],
             day(2024, 6, 1): months[6:], day(2024, 7, 1): months[7:], day(2024, 8, 1): months[8:]}
    off = [(cohort, month, got[(cohort, month)]["mrr"], month_end_mrr(con, members[cohort], month))
           for cohort, ms in cells.items() for month in ms
           if got[(cohort, month)]["mrr"] != month_end_mrr(con, members[cohort], month)]
    assert off == []
    assert {c: got[(c, c)]["starting_mrr"] for c in cells} == {
        day(2023, 12, 1): D(40), day(2024, 1, 1): D("52.4"), day(2024, 2, 1): D(10), day(2024, 3, 1): D(33),
        day(2024, 6, 1): D(40), day(2024, 7, 1): D(0), day(2024, 8, 1): D("118.4")}
    # December 2023's pf leaves on 15 August: 0 from August
    assert [got[(day(2023, 12, 1), m)]["mrr"] for m in (day(2024, 7, 1), day(2024, 8, 1))] == [D(40), D(0)]


# --- churn reasons -------------------------------------------------------------------------------------------------

def reasons(con: duckdb.DuckDBPyConnection, period: str) -> list[tuple[Any, ...]]:
    return [(r["period_start"], r["churn_type"], r["cancellation_feedback"], r["churned_customers"], r["churned_mrr"])
            for r in queries.churn_reasons(con, period)]


def test_churn_reasons_by_month_quarter_year_and_week(con: duckdb.DuckDBPyConnection) -> None:
    """design.md 5 and 7, README. April: fb 10.00 (too_expensive). May: ja 30 EUR at 10 May's 1.10 = 33.00
    (switched_service). June: jn 20.00 (unused; its comeback is no churn). July: tw churns twice for the same reason,
    10.00 + 30.00: one row, one customer, 40.00. August: pf 40.00 for a failed payment, involuntary, no feedback.
    Per quarter: Q2 the three of April to June; Q3 July's and August's. The year: too_expensive is fb and tw, two
    customers, 50.00. Weeks (Monday starts, UTC): Wednesday 10 April, Friday 10 May, Monday 10 June, Friday 5 July
    and Saturday 20 July (tw's two churns in two weeks), Thursday 15 August."""
    m = day
    too_expensive, switched, unused = ("voluntary", "too_expensive"), ("voluntary", "switched_service"), (
        "voluntary", "unused")
    failed = ("involuntary", "(none)")
    assert reasons(con, "month") == [
        (m(2024, 4, 1), *too_expensive, 1, D(10)),
        (m(2024, 5, 1), *switched, 1, D(33)),
        (m(2024, 6, 1), *unused, 1, D(20)),
        (m(2024, 7, 1), *too_expensive, 1, D(40)),
        (m(2024, 8, 1), *failed, 1, D(40))]
    assert reasons(con, "quarter") == [
        (m(2024, 4, 1), *switched, 1, D(33)),
        (m(2024, 4, 1), *too_expensive, 1, D(10)),
        (m(2024, 4, 1), *unused, 1, D(20)),
        (m(2024, 7, 1), *failed, 1, D(40)),
        (m(2024, 7, 1), *too_expensive, 1, D(40))]
    assert reasons(con, "year") == [
        (m(2024, 1, 1), *failed, 1, D(40)),
        (m(2024, 1, 1), *switched, 1, D(33)),
        (m(2024, 1, 1), *too_expensive, 2, D(50)),
        (m(2024, 1, 1), *unused, 1, D(20))]
    assert reasons(con, "week") == [
        (m(2024, 4, 8), *too_expensive, 1, D(10)),
        (m(2024, 5, 6), *switched, 1, D(33)),
        (m(2024, 6, 10), *unused, 1, D(20)),
        (m(2024, 7, 1), *too_expensive, 1, D(10)),
        (m(2024, 7, 15), *too_expensive, 1, D(30)),
        (m(2024, 8, 12), *failed, 1, D(40))]
    ends = {(r["period_start"], r["period_end"]) for r in queries.churn_reasons(con, "week")}
    assert (m(2024, 7, 15), m(2024, 7, 21)) in ends


@pytest.mark.parametrize("period", ["week", "month", "quarter", "year"])
def test_churn_reasons_are_the_bridges_churn_in_every_period(con: duckdb.DuckDBPyConnection, period: str) -> None:
    """README: per period, the rows' churned_mrr add up to the bridge's churn, and (no customer here churns under two
    reasons in one period) their churned customers to the bridge's churned customers; no period without churn has a
    row. So also through SQL, with the README's `churn_reasons_for` as the macro itself."""
    mrr: dict[dt.date, Decimal] = defaultdict(Decimal)
    customers: dict[dt.date, int] = defaultdict(int)
    for r in queries.churn_reasons(con, period):
        mrr[r["period_start"]] += r["churned_mrr"]
        customers[r["period_start"]] += r["churned_customers"]
    bridge = {r["period_start"]: r for r in queries.bridge(con, period) if r["churn"] or r["churned_customers"]}
    assert dict(mrr) == {p: r["churn"] for p, r in bridge.items()}
    assert dict(customers) == {p: r["churned_customers"] for p, r in bridge.items()}
    assert sum(mrr.values()) == D(143)
    assert con.execute(f"SELECT sum(churned_mrr) FROM churn_reasons_for('{period}')").fetchall() == [(D(143),)]


def test_a_churned_customers_comment_is_on_its_cancellation_row(con: duckdb.DuckDBPyConnection) -> None:
    """README: what churned customers wrote (cancellation_details.comment) is on the cancellation rows of
    derived_mrr_movements; the cookbook's query lists ja's alone (10 May, -33.00, switched_service)."""
    assert con.execute(
        "SELECT customer_id, occurred_at, mrr_delta, cancellation_feedback, cancellation_comment "
        "FROM derived_mrr_movements WHERE movement = 'cancellation' AND cancellation_comment IS NOT NULL "
        "ORDER BY occurred_at DESC").fetchall() == [
        ("ja", at(2024, 5, 10), D(-33), "switched_service", "moved to a cheaper tool")]


# --- scheduled churn -----------------------------------------------------------------------------------------------

def test_scheduled_churn_by_hand(con: duckdb.DuckDBPyConnection) -> None:
    """design.md 4 and 7, README. Seen on 20 September:
    - s_mi: at its period's end, 25 September; two items, 2 x basic + analytics = 70 EUR at today's rate (1.12, the
      latest on or before today; the 2.00 of 2099 is not in force): 78.40; no feedback.
    - s_pa: 15 October; 40.00; missing_features with its comment.
    - s_te1: trialing, its trial moved after the request to 1 December, past the cancellation on 15 November: it
      never converts, 0.00 at stake (README: one set to cancel when the trial ends never converts).
    - s_te2: trialing, its trial brought forward to 1 October, before the cancellation on 15 November: it converts
      first, 3 x basic = 30.00 at stake.
    Every subscription that ended (ja's, fb's, jn's, tw's, pf's) is not listed."""
    got = [(r["subscription_id"], r["customer_id"], r["cancel_at"], r["cancel_at_period_end"], r["status"],
            r["mrr_at_stake"], r["currency"], r["mrr_at_stake_original"], r["cancellation_reason"],
            r["cancellation_feedback"], r["cancellation_comment"]) for r in queries.scheduled_churn(con)]
    assert got == [
        ("s_mi", "mi", at(2024, 9, 25), True, "active", D("78.4"), "eur", D(70), "cancellation_requested", None,
         None),
        ("s_pa", "pa", at(2024, 10, 15), False, "active", D(40), "usd", D(40), "cancellation_requested",
         "missing_features", "needs single sign-on"),
        ("s_te1", "te1", at(2024, 11, 15), False, "trialing", D(0), "usd", D(0), "cancellation_requested", "unused",
         None),
        ("s_te2", "te2", at(2024, 11, 15), False, "trialing", D(30), "usd", D(30), "cancellation_requested",
         "unused", None),
    ]


def test_the_mrr_at_stake_of_a_customers_only_subscription_is_its_current_mrr(con: duckdb.DuckDBPyConnection) -> None:
    """The identity: for a subscription that is its customer's only one and whose MRR does not change before its
    date (no discount ending, no trial), the MRR at stake is the customer's current MRR (customer_mrr's open level,
    valued at the latest rate, which is today's): mi 78.40, pa 40.00. The trials count nothing now (0.00 each)."""
    current = dict(con.execute("SELECT customer_id, mrr FROM customer_mrr WHERE valid_to IS NULL").fetchall())
    stakes = {r["customer_id"]: r["mrr_at_stake"] for r in queries.scheduled_churn(con)}
    assert {c: (stakes[c], current[c]) for c in ("mi", "pa")} == {"mi": (D("78.4"), D("78.4")),
                                                                  "pa": (D(40), D(40))}
    assert {c: current.get(c, D(0)) for c in ("te1", "te2")} == {"te1": D(0), "te2": D(0)}
