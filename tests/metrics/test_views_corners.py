"""The finance views in the corners a demanding finance user queries, against answers worked out by hand from
design.md 4-7 and the README before running ours: weeks, quarters and years across a year's end, a month whose
only movement is an exchange rate (and a size band crossed by it), the README's LTV recipe, churn reasons of a
subscription that went unpaid and was deleted later, and the MRR at stake of subscriptions changed after they
were set to cancel.

Two small accounts, each derived once and shared read-only by the tests that read it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from builders import World, ts
from test_bridge import catalogue

from stripe_churn.metrics import queries

Derive = Callable[..., duckdb.DuckDBPyConnection]
D = Decimal
UTC = dt.UTC
MONEY = ["opening_mrr", "new", "reactivation", "expansion", "contraction", "churn", "fx", "closing_mrr"]
COUNTS = ["opening_customers", "new_customers", "reactivated_customers", "churned_customers", "closing_customers"]
RATES = ["gross_revenue_churn_rate", "net_revenue_churn_rate", "nrr", "grr", "customer_churn_rate", "quick_ratio",
         "net_negative_churn"]
YEAR_END_SEEN = ts(2025, 1, 20)


def year_end(w: World) -> World:
    """fx1 (EUR, DE): 9 x basic at 10.00 EUR from 10 February 2024, 90.00 EUR: 97.20 at 1.08, 99.00 from 1 April
    at 1.10, 103.50 from 1 June at 1.15 (only the rate moves). yr (USD, US): 1 seat at 10.00 from Tuesday 31
    December 2024 12:00, a second seat on Thursday 2 January 2025 10:00 (20.00), cancelled at 00:00 of Monday
    6 January 2025 (feedback unused)."""
    catalogue(w)  # eur 1.08 from December 2023, 1.10 from 1 April 2024
    w.fx_rates.append(("2024-06-01", "eur", 1.15))
    w.customer("fx1", currency="eur", address={"country": "DE"})
    w.subscribe("s_fx1", "fx1", [("i_fx1", "basic_eur", 9)], ts(2024, 2, 10))
    w.customer("yr", address={"country": "US"})
    w.subscribe("s_yr", "yr", [("i_yr", "basic_usd", 1)], ts(2024, 12, 31, 12))
    w.update("s_yr", ts(2025, 1, 2, 10), items=[("i_yr", "basic_usd", 2)])
    w.cancel("s_yr", ts(2025, 1, 6), feedback="unused")
    return w


def by_start(rows: list[dict[str, Any]]) -> dict[dt.date, dict[str, Any]]:
    return {r["period_start"]: r for r in rows}


def pick(row: dict[str, Any], cols: list[str]) -> tuple[Any, ...]:
    return tuple(row[c] for c in cols)


def rates(row: dict[str, Any]) -> list[Any]:
    return [row[c] if row[c] is None or isinstance(row[c], bool) else pytest.approx(row[c]) for c in RATES]


def test_a_month_whose_only_movement_is_an_exchange_rate(derive_read_only: Derive) -> None:
    """design.md 6: April 2024 opens at 97.20 and its one movement is fx1's rate, +1.80 (90.00 EUR x (1.10 -
    1.08)): fx is signed and in no rate, so gross and net revenue churn are 0 / 97.20 = 0, NRR and GRR
    97.20 / 97.20 = 1, the customer churn rate 0 of 1, the quick ratio (0 + 0 + 0) / (0 + 0) NULL (a zero
    denominator), and 0 is not negative: not net negative churn. ARPA 99.00 / 1. Q2 holds both rate moves
    (+1.80 and +4.50) and reads the same."""
    con = derive_read_only(year_end(World()), seen_at=YEAR_END_SEEN)
    months = by_start(queries.bridge(con))
    apr = months[dt.date(2024, 4, 1)]
    assert pick(apr, MONEY) == (D("97.2"), 0, 0, 0, 0, 0, D("1.8"), D("99"))
    assert pick(apr, COUNTS) == (1, 0, 0, 0, 1)
    assert rates(apr) == [0, 0, 1, 1, 0, None, False]
    assert apr["arpa"] == D("99.0000")
    q2 = by_start(queries.bridge(con, "quarter"))[dt.date(2024, 4, 1)]
    assert pick(q2, MONEY) == (D("97.2"), 0, 0, 0, 0, 0, D("6.3"), D("103.5"))
    assert rates(q2) == [0, 0, 1, 1, 0, None, False]
    # the fx rows: amounts in the reporting currency, nothing in the customer's own (the EUR amount never moved),
    # dated at 00:00 UTC of the rate's day, caused by no Stripe object (no event, no invoice)
    got = con.execute("SELECT occurred_at, movement, category, mrr_before, mrr_after, mrr_delta, currency, "
                      "amount_delta_original, churn_type, cancellation_feedback, source_event_id, source_invoice_id "
                      "FROM mrr_movements WHERE customer_id = 'fx1' ORDER BY occurred_at").fetchall()
    at = lambda *a: dt.datetime(*a, tzinfo=UTC)  # noqa: E731
    assert [(r[0].astimezone(UTC), *r[1:10]) for r in got] == [
        (at(2024, 2, 10), "new", "new", D("0"), D("97.2"), D("97.2"), "eur", D("90"), None, None),
        (at(2024, 4, 1), "fx", "fx", D("97.2"), D("99"), D("1.8"), "eur", D("0"), None, None),
        (at(2024, 6, 1), "fx", "fx", D("99"), D("103.5"), D("4.5"), "eur", D("0"), None, None)]
    signup = con.execute("SELECT id FROM events WHERE type = 'customer.subscription.created' "
                         "AND raw->>'$.data.object.id' = 's_fx1'").fetchall()
    first_invoice = con.execute("SELECT id FROM invoices WHERE billing_reason = 'subscription_create' "
                                "AND customer_id = 'fx1'").fetchall()
    assert [r[10:] for r in got] == [(*signup[0], *first_invoice[0]), (None, None), (None, None)]


def test_a_size_band_crossed_by_the_exchange_rate_alone(derive_read_only: Derive) -> None:
    """README: size_band follows the customer's MRR as the plan segments do (the band of its state at the
    period's start). fx1 is 99.00 at 1 June (under 100), so June's +4.50 of fx is the under-100 band's; at 103.50
    on 1 July it opens July in the 100-to-1k band (moved there with no flow), and leaves under-100 empty until yr
    signs up at 10.00 in December; yr's January (in under-100 at its start: 10.00) holds its seat and its churn."""
    con = derive_read_only(year_end(World()), seen_at=YEAR_END_SEEN)
    bands = {(r["segment_value"], r["period_start"]): r for r in queries.bridge(con, "month", "size_band")}
    a, b = "a: under 100", "b: 100 to 1k"
    assert pick(bands[(a, dt.date(2024, 6, 1))], MONEY) == (99, 0, 0, 0, 0, 0, D("4.5"), D("103.5"))
    assert pick(bands[(a, dt.date(2024, 6, 1))], COUNTS) == (1, 0, 0, 0, 1)
    assert pick(bands[(a, dt.date(2024, 7, 1))], MONEY) == (0, 0, 0, 0, 0, 0, 0, 0)
    assert bands[(a, dt.date(2024, 7, 1))]["opening_customers"] == 0
    assert pick(bands[(b, dt.date(2024, 7, 1))], MONEY) == (D("103.5"), 0, 0, 0, 0, 0, 0, D("103.5"))
    assert bands[(b, dt.date(2024, 7, 1))]["opening_customers"] == 1
    assert (b, dt.date(2024, 6, 1)) not in bands
    assert pick(bands[(a, dt.date(2024, 12, 1))], MONEY) == (0, 10, 0, 0, 0, 0, 0, 10)
    jan = bands[(a, dt.date(2025, 1, 1))]
    assert pick(jan, MONEY) == (10, 0, 0, 10, 0, 20, 0, 0) and pick(jan, COUNTS) == (1, 0, 0, 1, 0)
    assert jan["customer_churn_rate"] == 1 and jan["arpa"] is None
    assert pick(bands[(b, dt.date(2025, 1, 1))], MONEY) == (D("103.5"), 0, 0, 0, 0, 0, 0, D("103.5"))


def test_weeks_quarters_and_years_across_a_years_end(derive_read_only: Derive) -> None:
    """Weeks start on Monday, UTC: the week of Monday 30 December 2024 ends on Sunday 5 January 2025 and holds
    yr's signup (31 December, 2024's) and its second seat (2 January, 2025's); yr's cancellation at 00:00 of
    Monday 6 January is the next week's. Per year: 2024 opens at 0 (every rate NULL, the quick ratio too: nothing
    was lost) with fx1's and yr's new 97.20 + 10.00 and fx 1.80 + 4.50; 2025 opens at 113.50 with yr's seat (+10)
    and churn (20): 1 of 2 opening customers churned, gross 20 / 113.50, net (20 - 10) / 113.50, NRR (113.50 +
    10 - 20) / 113.50, GRR 93.50 / 113.50, quick ratio 10 / 20. Q4 2024 and Q1 2025 split the same way."""
    con = derive_read_only(year_end(World()), seen_at=YEAR_END_SEEN)
    weeks = by_start(queries.bridge(con, "week", start=dt.date(2024, 12, 23), end=dt.date(2025, 1, 13)))
    assert sorted(weeks) == [dt.date(2024, 12, 23), dt.date(2024, 12, 30), dt.date(2025, 1, 6), dt.date(2025, 1, 13)]
    w1, w2 = weeks[dt.date(2024, 12, 30)], weeks[dt.date(2025, 1, 6)]
    assert w1["period_end"] == dt.date(2025, 1, 5) and w2["period_end"] == dt.date(2025, 1, 12)
    assert pick(w1, MONEY) == (D("103.5"), 10, 0, 10, 0, 0, 0, D("123.5"))
    assert pick(w1, COUNTS) == (1, 1, 0, 0, 2)
    assert pick(w1, ["seat_expansion", "upgrade", "cross_sell"]) == (10, 0, 0)
    assert pick(w2, MONEY) == (D("123.5"), 0, 0, 0, 0, 20, 0, D("103.5"))
    assert pick(w2, COUNTS) == (2, 0, 0, 1, 1)
    assert rates(w2) == [pytest.approx(20 / 123.5), pytest.approx(20 / 123.5), pytest.approx(103.5 / 123.5),
                         pytest.approx(103.5 / 123.5), 0.5, 0, False]
    years = by_start(queries.bridge(con, "year"))
    y24, y25 = years[dt.date(2024, 1, 1)], years[dt.date(2025, 1, 1)]
    assert y24["period_end"] == dt.date(2024, 12, 31)
    assert pick(y24, MONEY) == (0, D("107.2"), 0, 0, 0, 0, D("6.3"), D("113.5"))
    assert pick(y24, COUNTS) == (0, 2, 0, 0, 2)
    assert rates(y24) == [None] * 7
    assert pick(y25, MONEY) == (D("113.5"), 0, 0, 10, 0, 20, 0, D("103.5"))
    assert pick(y25, COUNTS) == (2, 0, 0, 1, 1)
    assert rates(y25) == [pytest.approx(20 / 113.5), pytest.approx(10 / 113.5), pytest.approx(103.5 / 113.5),
                          pytest.approx(93.5 / 113.5), 0.5, 0.5, False]
    assert y25["arpa"] == D("103.5000")
    quarters = by_start(queries.bridge(con, "quarter"))
    assert pick(quarters[dt.date(2024, 10, 1)], MONEY) == (D("103.5"), 10, 0, 0, 0, 0, 0, D("113.5"))
    assert pick(quarters[dt.date(2025, 1, 1)], MONEY) == (D("113.5"), 0, 0, 10, 0, 20, 0, D("103.5"))
    reasons = [(r["period_start"], r["period_end"], r["churn_type"], r["cancellation_feedback"],
                r["churned_customers"], r["churned_mrr"]) for r in queries.churn_reasons(con, "week")]
    assert reasons == [(dt.date(2025, 1, 6), dt.date(2025, 1, 12), "voluntary", "unused", 1, D("20"))]
    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    assert ("a week runs from Monday 00:00 to Sunday (ISO weeks, so the week of Monday 30 December 2024 holds 2024's "
            "last two days and 2025's first five)") in readme
    yr = con.execute("SELECT occurred_at, movement, mrr_delta, amount_delta_original FROM mrr_movements "
                     "WHERE customer_id = 'yr' ORDER BY occurred_at").fetchall()
    assert [(r[0].astimezone(UTC), *r[1:]) for r in yr] == [
        (dt.datetime(2024, 12, 31, 12, tzinfo=UTC), "new", D("10"), D("10")),
        (dt.datetime(2025, 1, 2, 10, tzinfo=UTC), "seat_expansion", D("10"), D("10")),
        (dt.datetime(2025, 1, 6, tzinfo=UTC), "cancellation", D("-20"), D("-20"))]


def test_the_readme_ltv_recipe_by_hand(derive_read_only: Derive) -> None:
    """README: LTV = ARPA / monthly customer churn rate (NULL in a month no customer churned or none opened), and
    over the trailing twelve months' churn (churned customers / opening customers of the twelve months). January
    2025: ARPA 103.50 / 1, 1 of 2 churned: 207.00; its twelve months (February 2024 to January 2025) opened with
    0 + 10 x 1 + 2 = 12 customers of whom 1 churned: 103.50 x 12 = 1,242.00. February 2025: no churn (NULL),
    its twelve opened with 10 - 1 + 2 + 1 = 13: 1,345.50, as every month through December 2025; January 2026's
    twelve hold no churn: NULL."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (recipe,) = [b for b in re.findall(r"```sql\n(.*?)```", readme, flags=re.S)
                 if b.startswith("SELECT period_start, arpa, customer_churn_rate,")]
    assert recipe.rstrip().endswith("LIMIT 12;")
    con = derive_read_only(year_end(World()), seen_at=YEAR_END_SEEN)
    got = {r[0]: r[1:] for r in con.execute(recipe.rstrip()[:-len("LIMIT 12;")]).fetchall()}
    assert got[dt.date(2024, 2, 1)] == (D("97.2000"), None, None, None)
    assert got[dt.date(2024, 3, 1)] == (D("97.2000"), 0, None, None)
    assert got[dt.date(2025, 1, 1)] == (D("103.5000"), 0.5, D("207.00"), D("1242.00"))
    assert got[dt.date(2025, 2, 1)] == (D("103.5000"), 0, None, D("1345.50"))
    assert got[dt.date(2025, 12, 1)][2:] == (None, D("1345.50"))
    assert got[dt.date(2026, 1, 1)][2:] == (None, None)


def test_cohorts_of_the_years_end(derive_read_only: Derive) -> None:
    """README: at constant rates (February 2024's last day: 1.08) fx1's cohort stays at 97.20, 100%, whatever the
    rate does later; yr's December cohort starts at 10.00 and is at 0 (0%, no customer) in January: its seat and
    its cancellation both fall there."""
    con = derive_read_only(year_end(World()), seen_at=YEAR_END_SEEN)
    got = {(r["cohort_month"], r["month"]): r for r in queries.cohort_matrix(con)}
    feb = [got[(dt.date(2024, 2, 1), dt.date(2024, m, 1))] for m in (2, 4, 6, 7)]
    assert {(r["starting_mrr"], r["mrr"], r["active_customers"], r["revenue_retention"]) for r in feb} == {
        (D("97.2"), D("97.2"), 1, 1.0)}
    dec, jan = got[(dt.date(2024, 12, 1), dt.date(2024, 12, 1))], got[(dt.date(2024, 12, 1), dt.date(2025, 1, 1))]
    assert (dec["cohort_customers"], dec["starting_mrr"], dec["mrr"], dec["revenue_retention"]) == (
        1, D("10"), D("10"), 1.0)
    assert (jan["months_since_start"], jan["mrr"], jan["active_customers"], jan["revenue_retention"]) == (
        1, D("0"), 0, 0.0)


# --- churn reasons and the MRR at stake ---------------------------------------------------------------------------

REASONS_SEEN = ts(2024, 4, 20)


def reasons_and_stakes(w: World) -> World:
    """March 2024's churn and April's requests to cancel, seen on 20 April (USD).

    two: basic (10) from 10 January and analytics (50) from 12 January; basic cancelled on 5 March (unused) while
    analytics stays, analytics cancelled on 20 March (too_expensive). disp: 2 x basic (20), cancelled on 6 March
    for a disputed payment. u1: 3 x basic (30), past_due on 7 March, unpaid on 17 March, deleted on 10 April at
    the customer's request (too_expensive). p1: 2 x pro (40) from 5 March, collection paused on 1 April, set on 2
    April to cancel at its period's end (5 May). a1: 2 x basic (20) from 8 March, set on 3 April to cancel on 1
    June, 5 seats from 9 April. k1: basic (10) and, on its own subscription, analytics (50); the basic one set on
    3 April to cancel at its period's end (8 May)."""
    catalogue(w)
    for cid in ("two", "disp", "u1", "p1", "a1", "k1"):
        w.customer(cid)
    w.subscribe("s_two_a", "two", [("i_two_a", "basic_usd", 1)], ts(2024, 1, 10))
    w.subscribe("s_two_b", "two", [("i_two_b", "analytics_usd", 1)], ts(2024, 1, 12))
    w.cancel("s_two_a", ts(2024, 3, 5), feedback="unused")
    w.cancel("s_two_b", ts(2024, 3, 20), feedback="too_expensive")
    w.subscribe("s_disp", "disp", [("i_disp", "basic_usd", 2)], ts(2024, 1, 10))
    w.cancel("s_disp", ts(2024, 3, 6), reason="payment_disputed")
    w.subscribe("s_u1", "u1", [("i_u1", "basic_usd", 3)], ts(2024, 1, 5))
    w.update("s_u1", ts(2024, 3, 7), status="past_due")
    w.update("s_u1", ts(2024, 3, 17), status="unpaid")
    w.cancel("s_u1", ts(2024, 4, 10), feedback="too_expensive", comment="paid elsewhere")
    w.subscribe("s_p1", "p1", [("i_p1", "pro_usd", 2)], ts(2024, 3, 5))
    w.update("s_p1", ts(2024, 4, 1), pause_collection={"behavior": "void", "resumes_at": None})
    w.update("s_p1", ts(2024, 4, 2), cancel_at_period_end=True, cancel_at=ts(2024, 5, 5), canceled_at=ts(2024, 4, 2))
    w.subscribe("s_a1", "a1", [("i_a1", "basic_usd", 2)], ts(2024, 3, 8))
    w.update("s_a1", ts(2024, 4, 3), cancel_at=ts(2024, 6, 1), canceled_at=ts(2024, 4, 3))
    w.update("s_a1", ts(2024, 4, 9), items=[("i_a1", "basic_usd", 5)])
    w.subscribe("s_k1a", "k1", [("i_k1a", "basic_usd", 1)], ts(2024, 3, 8))
    w.subscribe("s_k1b", "k1", [("i_k1b", "analytics_usd", 1)], ts(2024, 3, 9))
    w.update("s_k1a", ts(2024, 4, 3), cancel_at_period_end=True, cancel_at=ts(2024, 5, 8), canceled_at=ts(2024, 4, 3))
    return w


def test_churn_reasons_of_march_by_hand(derive_read_only: Derive) -> None:
    """design.md 5: a cancellation is involuntary when its reason is payment_failed or the subscription went
    unpaid, else voluntary, and carries the subscription's cancellation feedback. two's basic plan ending while
    it keeps analytics is a downgrade (contraction 10), no churn and no reason; its analytics ending is its
    churn, with that subscription's feedback (too_expensive, not unused). disp's disputed payment is voluntary
    with no feedback. u1 churned when it went unpaid (17 March, involuntary), and its later deletion is no second
    churn: the row carries the subscription's feedback, too_expensive. March: churn 50 + 20 + 30 = 100 of 3
    customers, contraction 10; April none."""
    con = derive_read_only(reasons_and_stakes(World()), seen_at=REASONS_SEEN)
    mar = (dt.date(2024, 3, 1), dt.date(2024, 3, 31))
    assert [(r["period_start"], r["period_end"], r["churn_type"], r["cancellation_feedback"], r["churned_customers"],
             r["churned_mrr"]) for r in queries.churn_reasons(con)] == [
        (*mar, "involuntary", "too_expensive", 1, D("30")),
        (*mar, "voluntary", "(none)", 1, D("20")),
        (*mar, "voluntary", "too_expensive", 1, D("50"))]
    got = con.execute("SELECT customer_id, CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta, churn_type, "
                      "cancellation_feedback FROM mrr_movements WHERE occurred_at >= TIMESTAMPTZ '2024-03-01 00:00+00' "
                      "AND category IN ('churn', 'contraction') ORDER BY occurred_at").fetchall()
    assert got == [("two", ts(2024, 3, 5), "downgrade", D("-10"), None, None),
                   ("disp", ts(2024, 3, 6), "cancellation", D("-20"), "voluntary", None),
                   ("u1", ts(2024, 3, 17), "cancellation", D("-30"), "involuntary", "too_expensive"),
                   ("two", ts(2024, 3, 20), "cancellation", D("-50"), "voluntary", "too_expensive")]
    months = by_start(queries.bridge(con))
    assert pick(months[dt.date(2024, 3, 1)], ["contraction", "churn", "churned_customers"]) == (10, 100, 3)
    assert pick(months[dt.date(2024, 4, 1)], ["contraction", "churn", "churned_customers"]) == (0, 0, 0)


def test_the_mrr_at_stake_of_subscriptions_changed_after_the_request(derive_read_only: Derive) -> None:
    """design.md 4 and 7: the MRR at stake is the subscription's MRR when its cancellation takes effect. p1's
    paused collection keeps its MRR (pause_collection_keeps_mrr, the default): 40.00 on 5 May. a1 took 5 seats
    after asking to leave: 50.00 on 1 June, not the 20.00 of the request. k1's basic subscription ends on 8 May
    with its own 10.00; the customer keeps analytics' 50.00, which is not at stake."""
    con = derive_read_only(reasons_and_stakes(World()), seen_at=REASONS_SEEN)
    at = lambda *a: dt.datetime(*a, tzinfo=UTC)  # noqa: E731
    got = [(r["subscription_id"], r["customer_id"], r["cancel_at"], r["cancel_at_period_end"], r["status"],
            r["mrr_at_stake"], r["mrr_at_stake_original"]) for r in queries.scheduled_churn(con)]
    assert got == [("s_p1", "p1", at(2024, 5, 5), True, "active", D("40"), D("40")),
                   ("s_k1a", "k1", at(2024, 5, 8), True, "active", D("10"), D("10")),
                   ("s_a1", "a1", at(2024, 6, 1), False, "active", D("50"), D("50"))]


def test_the_mrr_at_stake_is_the_mrr_the_cancellation_takes_to_the_last_decimal(derive_read_only: Derive) -> None:
    """design.md 4 (money in the views to 4 decimals; internals: one rounding, half away from zero, at the
    customer level) and README (at stake: the subscription's MRR just before its cancellation takes effect, at
    today's rate). A 100.00 GBP annual plan is 8.3333... GBP a month, at 1.481478 exactly 12.34565: 12.3457, as
    customer_mrr says and as g2's cancellation took on 10 April. g1, the same plan set to cancel at its period's
    end (10 January 2025) at the same rate, has 12.3457 at stake; the item's MRR cut at 10 decimals times the rate
    (12.3456499999...) said 12.3456. g3, on a trial of the same plan set to cancel after it ends, converts first
    (README): 12.3457 at stake as well."""
    w = World()
    w.product("prod_core", unit_label="seat", family="core")
    w.price("annual_gbp", "prod_core", 10_000, currency="gbp", interval="year")
    w.fx_rates.append(("2023-01-01", "gbp", 1.481478))
    for cid in ("g1", "g2"):
        w.customer(cid, currency="gbp")
        w.subscribe(f"s_{cid}", cid, [(f"i_{cid}", "annual_gbp", 1)], ts(2023, 4, 10) if cid == "g2" else
                    ts(2024, 1, 10))
    w.update("s_g1", ts(2024, 4, 3), cancel_at_period_end=True, cancel_at=ts(2025, 1, 10), canceled_at=ts(2024, 4, 3))
    w.cancel("s_g2", ts(2024, 3, 1), ended_at=ts(2024, 4, 10))
    # g3: the same plan on a trial to 10 May, set to cancel on 10 August: it converts first, 12.3457 at stake too
    w.customer("g3", currency="gbp")
    w.subscribe("s_g3", "g3", [("i_g3", "annual_gbp", 1)], ts(2024, 4, 10), trial_end=ts(2024, 5, 10))
    w.update("s_g3", ts(2024, 4, 20), cancel_at=ts(2024, 8, 10), canceled_at=ts(2024, 4, 20))
    con = derive_read_only(w, seen_at=ts(2024, 5, 1))
    assert [(r["subscription_id"], r["cancel_at"], r["status"], r["mrr_at_stake"], r["currency"],
             r["mrr_at_stake_original"]) for r in queries.scheduled_churn(con)] == [
        ("s_g3", dt.datetime(2024, 8, 10, tzinfo=UTC), "trialing", D("12.3457"), "gbp", D("8.3333")),
        ("s_g1", dt.datetime(2025, 1, 10, tzinfo=UTC), "active", D("12.3457"), "gbp", D("8.3333"))]
    assert con.execute("SELECT customer_id, mrr FROM customer_mrr WHERE valid_to IS NULL ORDER BY 1").fetchall() == [
        ("g1", D("12.3457")), ("g2", D("0"))]  # (g3 counts nothing while on its trial)
    assert con.execute("SELECT mrr_delta FROM mrr_movements WHERE movement = 'cancellation'").fetchall() == [
        (D("-12.3457"),)]
