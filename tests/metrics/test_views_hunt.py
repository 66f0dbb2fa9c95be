"""Scheduled churn, churn reasons, the cohort matrix and the bridge per week, quarter and year, against cases
worked out by hand (design.md 4-7): the awkward ones a finance user would try.

Stores are built once per module where several tests read the same account.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from builders import World, ts
from test_bridge import catalogue

from stripe_churn.metrics import queries
from stripe_churn.metrics.runner import recompute
from stripe_churn.settings import Rules, Settings

D = Decimal
UTC = dt.UTC


def derived(tmp: Path, template: Path, w: World, *, seen_at: int, currency: str = "usd",
            **rules: Any) -> duckdb.DuckDBPyConnection:
    """A store at ``tmp`` holding ``w``, recomputed with ``rules``."""
    from stripe_churn.store.db import open_store

    shutil.copyfile(template, tmp / "hunt.duckdb")
    con = open_store(tmp / "hunt.duckdb")
    w.load(con, seen_at=seen_at)
    recompute(con, Settings(currency=currency, rules=Rules(**rules)))
    return con


# --- churn type ------------------------------------------------------------------------------------------------

def goes_unpaid(w: World) -> None:
    """c2's 3 x basic (30) falls past_due on 7 March, goes unpaid on 17 March and is deleted on 10 April."""
    w.subscribe("s2", "c2", [("i2", "basic_usd", 3)], ts(2024, 1, 5))  # 30
    w.update("s2", ts(2024, 3, 7), status="past_due")
    w.update("s2", ts(2024, 3, 17), status="unpaid")
    w.cancel("s2", ts(2024, 4, 10), reason="payment_failed")


def past_due_then_cancelled(w: World) -> World:
    """c1 falls past_due on 5 March and asks, the next day, to cancel at period end (5 April); c2 goes unpaid and
    is deleted later; c3 cancels for a failed payment."""
    catalogue(w)
    for c in ("c1", "c2", "c3"):
        w.customer(c)
    w.subscribe("s1", "c1", [("i1", "pro_usd", 2)], ts(2024, 1, 5))  # 40
    w.update("s1", ts(2024, 3, 5), status="past_due")
    w.cancel("s1", ts(2024, 3, 6), ended_at=ts(2024, 4, 5), reason="cancellation_requested",
             feedback="too_expensive")
    goes_unpaid(w)
    w.subscribe("s3", "c3", [("i3", "basic_usd", 1)], ts(2024, 1, 5))  # 10
    w.cancel("s3", ts(2024, 3, 20), reason="payment_failed")
    return w


@pytest.mark.parametrize(("recognition", "c1_at"), [("ended", ts(2024, 4, 5)), ("canceled", ts(2024, 3, 6))])
def test_a_past_due_customer_who_asks_to_cancel_churns_voluntarily(
        tmp_path: Path, migrated_store_file: Path, recognition: str, c1_at: int) -> None:
    """design.md 5: involuntary when the reason is payment_failed or the subscription went unpaid. A past_due
    subscription counts (past_due_counts, the default) and did not go unpaid: its customer's own cancellation is
    voluntary however churn is recognised. With churn_recognition = "canceled" the churn is dated at the request,
    while the subscription is still past_due, and it was labelled involuntary."""
    con = derived(tmp_path, migrated_store_file, past_due_then_cancelled(World()), seen_at=ts(2024, 4, 20),
                  churn_recognition=recognition)
    got = {r[0]: r[1:] for r in con.execute(
        "SELECT customer_id, epoch(occurred_at), mrr_delta, churn_type, cancellation_feedback FROM mrr_movements "
        "WHERE movement = 'cancellation'").fetchall()}
    assert got == {"c1": (c1_at, D("-40"), "voluntary", "too_expensive"),
                   "c2": (ts(2024, 3, 17), D("-30"), "involuntary", None),
                   "c3": (ts(2024, 3, 20), D("-10"), "involuntary", None)}


@pytest.mark.parametrize("recognition", ["ended", "canceled"])
def test_past_due_is_involuntary_churn_when_it_counts_zero(tmp_path: Path, migrated_store_file: Path,
                                                           recognition: str) -> None:
    """With past_due_counts = false going past_due is the churn, and it is involuntary (README)."""
    con = derived(tmp_path, migrated_store_file, past_due_then_cancelled(World()), seen_at=ts(2024, 4, 20),
                  past_due_counts=False, churn_recognition=recognition)
    got = {r[0]: r[1:] for r in con.execute(
        "SELECT customer_id, epoch(occurred_at), mrr_delta, churn_type FROM mrr_movements "
        "WHERE movement = 'cancellation'").fetchall()}
    assert got == {"c1": (ts(2024, 3, 5), D("-40"), "involuntary"),
                   "c2": (ts(2024, 3, 7), D("-30"), "involuntary"),
                   "c3": (ts(2024, 3, 20), D("-10"), "involuntary")}


# --- scheduled churn -------------------------------------------------------------------------------------------

def set_to_cancel(w: World) -> World:
    """Subscriptions set to cancel, seen on 20 April 2024 (EUR at 1.10 since 1 April)."""
    catalogue(w)
    w.coupon("item20", percent_off=20, duration="repeating", duration_in_months=2)  # 1 March to 1 May
    w.coupon("sub10", percent_off=10, duration="forever")
    w.coupon("cust5off", amount_off=500, currency="usd", duration="repeating", duration_in_months=3)  # to 1 June
    t0 = ts(2024, 3, 1)
    # two EUR subscriptions of two items, 10% off the subscription and 20% off analytics until 1 May: one cancels
    # before that coupon ends (30 x 0.9 + 50 x 0.8 x 0.9 = 63 EUR), one after it (30 x 0.9 + 50 x 0.9 = 72 EUR)
    for cid, cancel in (("m1", ts(2024, 4, 25)), ("m2", ts(2024, 6, 10))):
        w.customer(cid, currency="eur")
        sid = f"s_{cid}"
        d_sub = w.discount("sub10", t0, customer=cid, subscription=sid)
        w.subscribe(sid, cid, [(f"ib_{cid}", "basic_eur", 3), (f"ia_{cid}", "analytics_eur", 1)], t0,
                    discounts=[d_sub["id"]])
        d_item = w.discount("item20", t0, customer=cid, subscription=sid, subscription_item=f"ia_{cid}")
        w.objects["subscriptions"][sid]["items"]["data"][1]["discounts"] = [d_item["id"]]
        w.update(sid, ts(2024, 4, 10), cancel_at=cancel, canceled_at=ts(2024, 4, 10))
    # a customer-wide 5.00 USD off until 1 June on 2 x pro (40): 35 at stake before it ends, 40 after
    for cid, cancel in (("k1", ts(2024, 5, 20)), ("k2", ts(2024, 6, 20))):
        w.customer(cid)
        w.objects["customers"][cid]["discount"] = w.discount("cust5off", t0, customer=cid)
        w.subscribe(f"s_{cid}", cid, [(f"i_{cid}", "pro_usd", 2)], t0)
        w.update(f"s_{cid}", ts(2024, 4, 12), cancel_at_period_end=True, cancel_at=cancel, canceled_at=ts(2024, 4, 12))
    # past_due (it counts): its 40 are at stake
    w.customer("pd")
    w.subscribe("s_pd", "pd", [("i_pd", "pro_usd", 2)], ts(2024, 3, 5))
    w.update("s_pd", ts(2024, 4, 5), status="past_due")
    w.update("s_pd", ts(2024, 4, 6), cancel_at_period_end=True, cancel_at=ts(2024, 5, 5), canceled_at=ts(2024, 4, 6))
    # unpaid: churned when it went unpaid, nothing left at stake
    w.customer("up")
    w.subscribe("s_up", "up", [("i_up", "pro_usd", 1)], ts(2024, 3, 5))
    w.update("s_up", ts(2024, 4, 5), status="past_due")
    w.update("s_up", ts(2024, 4, 8), status="unpaid")
    w.update("s_up", ts(2024, 4, 9), cancel_at_period_end=True, cancel_at=ts(2024, 5, 5), canceled_at=ts(2024, 4, 9))
    # set, taken back, set again for another date: one row, the last date
    w.customer("re")
    w.subscribe("s_re", "re", [("i_re", "basic_usd", 5)], ts(2024, 3, 8))
    w.update("s_re", ts(2024, 4, 1), cancel_at_period_end=True, cancel_at=ts(2024, 4, 8), canceled_at=ts(2024, 4, 1))
    w.update("s_re", ts(2024, 4, 2), cancel_at_period_end=False, cancel_at=None, canceled_at=None)
    w.update("s_re", ts(2024, 4, 12), cancel_at=ts(2024, 5, 30), canceled_at=ts(2024, 4, 12))
    # a cancel_at with no canceled_at (as set through the API here): churns at the date under either recognition
    w.customer("ca")
    w.subscribe("s_ca", "ca", [("i_ca", "basic_usd", 2)], ts(2024, 3, 9))
    w.update("s_ca", ts(2024, 4, 11), cancel_at=ts(2024, 7, 1))
    return w


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path
              ) -> Iterator[dict[str, duckdb.DuckDBPyConnection]]:
    cons = {rec: derived(tmp_path_factory.mktemp(rec), migrated_store_file, set_to_cancel(World()),
                         seen_at=ts(2024, 4, 20), churn_recognition=rec) for rec in ("ended", "canceled")}
    yield cons
    for con in cons.values():
        con.close()


def test_scheduled_churn_by_hand(scheduled: dict[str, duckdb.DuckDBPyConnection]) -> None:
    got = [(r["subscription_id"], r["cancel_at"], r["status"], r["mrr_at_stake"], r["currency"],
            r["mrr_at_stake_original"]) for r in queries.scheduled_churn(scheduled["ended"])]
    at = lambda *a: dt.datetime(*a, tzinfo=UTC)  # noqa: E731
    assert got == [
        ("s_m1", at(2024, 4, 25), "active", D("69.3000"), "eur", D("63.0000")),  # (63 EUR at 1.10)
        ("s_pd", at(2024, 5, 5), "past_due", D("40.0000"), "usd", D("40.0000")),
        ("s_up", at(2024, 5, 5), "unpaid", D("0.0000"), "usd", D("0.0000")),
        ("s_k1", at(2024, 5, 20), "active", D("35.0000"), "usd", D("35.0000")),
        ("s_re", at(2024, 5, 30), "active", D("50.0000"), "usd", D("50.0000")),
        ("s_m2", at(2024, 6, 10), "active", D("79.2000"), "eur", D("72.0000")),  # (72 EUR at 1.10)
        ("s_k2", at(2024, 6, 20), "active", D("40.0000"), "usd", D("40.0000")),
        ("s_ca", at(2024, 7, 1), "active", D("20.0000"), "usd", D("20.0000")),
    ]


def test_scheduled_churn_under_churn_recognition_canceled(scheduled: dict[str, duckdb.DuckDBPyConnection]) -> None:
    """With churn_recognition = "canceled" a cancellation is churn when it is made: only the one without a
    canceled_at still waits, and every other one is in April's churn at its full MRR (the unpaid one in it once,
    when it went unpaid); the one taken back and set again churns at each request and comes back when the first
    was taken back (a churn reported on 1 April stays in April's numbers), one churned customer in April."""
    con = scheduled["canceled"]
    assert [(r["subscription_id"], r["mrr_at_stake"]) for r in queries.scheduled_churn(con)] == [
        ("s_ca", D("20.0000"))]
    churns: dict[str, list[tuple[object, ...]]] = {}
    for r in con.execute("SELECT customer_id, CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta "
                         "FROM mrr_movements WHERE movement IN ('cancellation', 'reactivation') "
                         "ORDER BY occurred_at").fetchall():
        churns.setdefault(r[0], []).append(r[1:])
    churn = lambda at, delta: [(at, "cancellation", D(delta))]  # noqa: E731
    assert churns == {"m1": churn(ts(2024, 4, 10), "-69.3000"), "m2": churn(ts(2024, 4, 10), "-69.3000"),
                      "k1": churn(ts(2024, 4, 12), "-35.0000"), "k2": churn(ts(2024, 4, 12), "-35.0000"),
                      "pd": churn(ts(2024, 4, 6), "-40.0000"), "up": churn(ts(2024, 4, 8), "-20.0000"),
                      "re": [(ts(2024, 4, 1), "cancellation", D("-50.0000")),
                             (ts(2024, 4, 2), "reactivation", D("50.0000")),
                             (ts(2024, 4, 12), "cancellation", D("-50.0000"))]}
    april = {r["period_start"]: r for r in queries.bridge(con)}[dt.date(2024, 4, 1)]
    assert (april["churn"], april["reactivation"], april["churned_customers"]) == (D("368.6000"), D("50.0000"), 7)


def coupon_to_the_last_period(ended: bool) -> World:
    """2 x pro (40) and metered API usage, 25% off for three months from 10 January: set on 20 March to cancel at
    the period end, 10 April, the day the coupon ends; usage billed 15.00 on 10 February and 25.00 on 10 March."""
    w = catalogue(World())
    w.coupon("q3", percent_off=25, duration="repeating", duration_in_months=3)
    t0 = ts(2024, 1, 10)
    w.customer("c1")
    d = w.discount("q3", t0, customer="c1", subscription="s1")
    w.subscribe("s1", "c1", [("i1", "pro_usd", 2), ("i2", "api_usd", None)], t0, discounts=[d["id"]])
    w.cycle("s1", ts(2024, 2, 10), usage={"i2": 1_500})
    w.cycle("s1", ts(2024, 3, 10), usage={"i2": 2_500})
    w.update("s1", ts(2024, 3, 20), cancel_at_period_end=True, cancel_at=ts(2024, 4, 10), canceled_at=ts(2024, 3, 20))
    if ended:
        w.end("s1", ts(2024, 4, 10))
    return w


def test_the_mrr_at_stake_is_what_the_cancellation_takes(tmp_path_factory: pytest.TempPathFactory,
                                                         migrated_store_file: Path) -> None:
    """The usual shape: a coupon for the first three periods and a cancellation at the third period's end, on the
    day the coupon ends. At stake: (40 + 25) x 0.75 = 48.75, the discounted MRR in force up to the end; and the
    churn, once it has happened, takes exactly that (the coupon's end and the cancellation are one change)."""
    pending = derived(tmp_path_factory.mktemp("pending"), migrated_store_file, coupon_to_the_last_period(False),
                      seen_at=ts(2024, 3, 25))
    assert [(r["subscription_id"], r["cancel_at"], r["mrr_at_stake"]) for r in queries.scheduled_churn(pending)] == [
        ("s1", dt.datetime(2024, 4, 10, tzinfo=UTC), D("48.7500"))]
    pending.close()
    done = derived(tmp_path_factory.mktemp("done"), migrated_store_file, coupon_to_the_last_period(True),
                   seen_at=ts(2024, 4, 20))
    assert queries.scheduled_churn(done) == []
    assert done.execute("SELECT epoch(occurred_at), mrr_delta FROM mrr_movements WHERE movement = 'cancellation'"
                        ).fetchall() == [(ts(2024, 4, 10), D("-48.7500"))]
    done.close()


def trials_set_to_cancel() -> World:
    """Trials from 1 April to 1 May 2024, each set on 10 April to cancel, seen on 20 April (still trialing)."""
    w = catalogue(World())
    w.coupon("f20", percent_off=20, duration="forever")
    w.coupon("half1", percent_off=50, duration="repeating", duration_in_months=1)  # 1 April to 1 May
    w.coupon("q2", percent_off=25, duration="repeating", duration_in_months=2)  # 1 April to 1 June
    t0, t1, asked = ts(2024, 4, 1), ts(2024, 5, 1), ts(2024, 4, 10)
    for cid in ("c1", "c2", "c3", "c4", "c5", "c6"):
        w.customer(cid)
    # 3 x basic: 30 a month from 1 May; on 15 June the cancellation takes those 30
    w.subscribe("s1", "c1", [("i1", "basic_usd", 3)], t0, trial_end=t1)
    w.update("s1", asked, cancel_at=ts(2024, 6, 15), canceled_at=asked)
    # 2 x pro (40), 20% off for ever: 32 from 1 May, still 32 on 15 June
    d2 = w.discount("f20", t0, customer="c2", subscription="s2")
    w.subscribe("s2", "c2", [("i2", "pro_usd", 2)], t0, trial_end=t1, discounts=[d2["id"]])
    w.update("s2", asked, cancel_at=ts(2024, 6, 15), canceled_at=asked)
    # 3 x basic, half off for the trial's month only: the coupon has ended by 15 June, 30 at stake (not 15)
    d3 = w.discount("half1", t0, customer="c3", subscription="s3")
    w.subscribe("s3", "c3", [("i3", "basic_usd", 3)], t0, trial_end=t1, discounts=[d3["id"]])
    w.update("s3", asked, cancel_at=ts(2024, 6, 15), canceled_at=asked)
    # 3 x basic, 25% off until 1 June, cancelled on 1 June: the coupon runs up to the cancellation, 22.50 at stake
    d4 = w.discount("q2", t0, customer="c4", subscription="s4")
    w.subscribe("s4", "c4", [("i4", "basic_usd", 3)], t0, trial_end=t1, discounts=[d4["id"]])
    w.update("s4", asked, cancel_at=ts(2024, 6, 1), canceled_at=asked)
    # two items, 3 x basic (30) and 1 x analytics (50): 80 from 1 May
    w.subscribe("s5", "c5", [("i5a", "basic_usd", 3), ("i5b", "analytics_usd", 1)], t0, trial_end=t1)
    w.update("s5", asked, cancel_at=ts(2024, 7, 1), canceled_at=asked)
    # cancelled at its period end, the trial's end: it never converts, nothing at stake
    w.subscribe("s6", "c6", [("i6", "pro_usd", 2)], t0, trial_end=t1)
    w.update("s6", asked, cancel_at_period_end=True, cancel_at=t1, canceled_at=asked)
    return w


@pytest.fixture(scope="module")
def trials(tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    con = derived(tmp_path_factory.mktemp("trials"), migrated_store_file, trials_set_to_cancel(),
                  seen_at=ts(2024, 4, 20))
    yield con
    con.close()


def test_a_trial_set_to_cancel_after_it_ends_puts_its_paid_mrr_at_stake(trials: duckdb.DuckDBPyConnection) -> None:
    """README: the MRR at stake is the subscription's MRR just before the cancellation takes effect. A trial that
    ends before that has converted by then: at stake is the MRR it converts to, with its discounts as they will
    stand then (said 0.00, the trial's MRR, until the trial had converted). One cancelled at the trial's end never
    converts: 0.00."""
    at = lambda *a: dt.datetime(*a, tzinfo=UTC)  # noqa: E731
    assert [(r["subscription_id"], r["cancel_at"], r["status"], r["mrr_at_stake"], r["mrr_at_stake_original"])
            for r in queries.scheduled_churn(trials)] == [
        ("s6", at(2024, 5, 1), "trialing", D("0.0000"), D("0.0000")),
        ("s4", at(2024, 6, 1), "trialing", D("22.5000"), D("22.5000")),  # 30 x 0.75
        ("s1", at(2024, 6, 15), "trialing", D("30.0000"), D("30.0000")),
        ("s2", at(2024, 6, 15), "trialing", D("32.0000"), D("32.0000")),  # 40 x 0.8
        ("s3", at(2024, 6, 15), "trialing", D("30.0000"), D("30.0000")),
        ("s5", at(2024, 7, 1), "trialing", D("80.0000"), D("80.0000")),  # 30 + 50
    ]


def test_a_trial_set_to_cancel_moves_no_mrr_while_it_runs(trials: duckdb.DuckDBPyConnection) -> None:
    """design.md 4: a trialing subscription counts zero. Its paid MRR is kept for scheduled_churn alone: no
    customer has MRR and nothing has moved by 20 April."""
    assert trials.execute("SELECT count(*) FROM customer_mrr WHERE mrr <> 0").fetchall() == [(0,)]
    assert trials.execute("SELECT count(*) FROM mrr_movements").fetchall() == [(0,)]


# --- churn reasons -----------------------------------------------------------------------------------------------

def churners(w: World) -> World:
    """March and April 2024: c1 past_due asks to leave at period end (5 April); c2 goes unpaid (17 March) and is
    deleted later; c3 leaves (2 March), comes back and leaves again (20 March) with other feedback; c4 ends two
    subscriptions in one window (12 March), the small one for a failed payment; c5 is cancelled for a failed
    payment (25 March)."""
    catalogue(w)
    for c in ("c1", "c2", "c3", "c4", "c5"):
        w.customer(c)
    w.subscribe("s1", "c1", [("i1", "pro_usd", 2)], ts(2024, 1, 5))  # 40
    w.update("s1", ts(2024, 3, 5), status="past_due")
    w.cancel("s1", ts(2024, 3, 6), ended_at=ts(2024, 4, 5), feedback="too_expensive")
    goes_unpaid(w)
    w.subscribe("s3a", "c3", [("i3a", "basic_usd", 1)], ts(2024, 1, 5))  # 10
    w.cancel("s3a", ts(2024, 3, 2), feedback="unused")
    w.subscribe("s3b", "c3", [("i3b", "basic_usd", 2)], ts(2024, 3, 10))  # 20
    w.cancel("s3b", ts(2024, 3, 20), feedback="too_expensive")
    w.subscribe("s4a", "c4", [("i4a", "basic_usd", 1)], ts(2024, 1, 5))  # 10
    w.subscribe("s4b", "c4", [("i4b", "analytics_usd", 1)], ts(2024, 1, 6))  # 50
    w.cancel("s4a", ts(2024, 3, 12), reason="payment_failed")
    w.cancel("s4b", ts(2024, 3, 12, 0, 10), feedback="switched_service")
    w.subscribe("s5", "c5", [("i5", "basic_usd", 1)], ts(2024, 1, 5))  # 10
    w.cancel("s5", ts(2024, 3, 25), reason="payment_failed")
    return w


@pytest.fixture(scope="module")
def churned(tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path
            ) -> Iterator[duckdb.DuckDBPyConnection]:
    con = derived(tmp_path_factory.mktemp("churners"), migrated_store_file, churners(World()),
                  seen_at=ts(2024, 4, 20))
    yield con
    con.close()


def reasons(con: duckdb.DuckDBPyConnection, period: str) -> list[tuple[Any, ...]]:
    return [(r["period_start"], r["period_end"], r["churn_type"], r["cancellation_feedback"], r["churned_customers"],
             r["churned_mrr"]) for r in queries.churn_reasons(con, period)]


def test_churn_reasons_by_hand(churned: duckdb.DuckDBPyConnection) -> None:
    """c2 went unpaid: involuntary, with no feedback (its later deletion for payment_failed is no second churn).
    c4's two subscriptions end in one window: one cancellation of 60, labelled by its main (largest) subscription.
    c3 churned twice in March with two feedbacks: it counts under each."""
    mar, apr = dt.date(2024, 3, 1), dt.date(2024, 4, 1)
    assert reasons(churned, "month") == [
        (mar, dt.date(2024, 3, 31), "involuntary", "(none)", 2, D("40.0000")),  # c2 30, c5 10
        (mar, dt.date(2024, 3, 31), "voluntary", "switched_service", 1, D("60.0000")),  # c4
        (mar, dt.date(2024, 3, 31), "voluntary", "too_expensive", 1, D("20.0000")),  # c3's second
        (mar, dt.date(2024, 3, 31), "voluntary", "unused", 1, D("10.0000")),  # c3's first
        (apr, dt.date(2024, 4, 30), "voluntary", "too_expensive", 1, D("40.0000")),  # c1, past_due but asked
    ]
    day = dt.date
    assert reasons(churned, "week") == [
        (day(2024, 2, 26), day(2024, 3, 3), "voluntary", "unused", 1, D("10.0000")),  # Saturday 2 March
        (day(2024, 3, 11), day(2024, 3, 17), "involuntary", "(none)", 1, D("30.0000")),  # Sunday 17 March
        (day(2024, 3, 11), day(2024, 3, 17), "voluntary", "switched_service", 1, D("60.0000")),
        (day(2024, 3, 18), day(2024, 3, 24), "voluntary", "too_expensive", 1, D("20.0000")),
        (day(2024, 3, 25), day(2024, 3, 31), "involuntary", "(none)", 1, D("10.0000")),  # Monday 25 March
        (day(2024, 4, 1), day(2024, 4, 7), "voluntary", "too_expensive", 1, D("40.0000")),
    ]
    assert reasons(churned, "year") == [
        (day(2024, 1, 1), day(2024, 12, 31), "involuntary", "(none)", 2, D("40.0000")),
        (day(2024, 1, 1), day(2024, 12, 31), "voluntary", "switched_service", 1, D("60.0000")),
        (day(2024, 1, 1), day(2024, 12, 31), "voluntary", "too_expensive", 2, D("60.0000")),  # c3 and c1
        (day(2024, 1, 1), day(2024, 12, 31), "voluntary", "unused", 1, D("10.0000")),
    ]


@pytest.mark.parametrize("period", ["week", "month", "quarter", "year"])
def test_churn_reasons_add_up_to_the_bridges_churn(churned: duckdb.DuckDBPyConnection, period: str) -> None:
    """Per period, the reasons' churned MRR is the bridge's churn; their customers are the bridge's churned
    customers but for a customer who churned under two reasons in the period (c3 in March: in each)."""
    mrr: dict[dt.date, Decimal] = defaultdict(Decimal)
    customers: dict[dt.date, int] = defaultdict(int)
    for r in queries.churn_reasons(churned, period):
        mrr[r["period_start"]] += r["churned_mrr"]
        customers[r["period_start"]] += r["churned_customers"]
    bridge = {r["period_start"]: r for r in queries.bridge(churned, period) if r["churn"]}
    assert mrr == {p: r["churn"] for p, r in bridge.items()}
    assert sum(mrr.values()) == D("170.0000")
    twice = {"week": set(), "month": {dt.date(2024, 3, 1)}, "quarter": {dt.date(2024, 1, 1)},
             "year": {dt.date(2024, 1, 1)}}[period]
    assert customers == {p: r["churned_customers"] + (p in twice) for p, r in bridge.items()}


# --- cohorts and the bridge per quarter, year and week ------------------------------------------------------------

def five_customers(w: World) -> World:
    """A (20, upgraded to 40 in February, gone 3 April, back on 2 June at 50), B (30 EUR from 20 January, 32.40 at
    1.08; 33.00 at 1.10 from 1 April, a fx line; a fourth seat on 10 May: +10 EUR, 11.00), C (10 from 25 January,
    gone on the 28th, back on 5 March), D (one subscription of two families, 60, from 5 January) and E (20 GBP
    from Thursday 29 February 23:30, 25.40 at 1.27)."""
    catalogue(w)
    w.customer("A")
    w.customer("B", currency="eur")
    w.customer("C")
    w.customer("D")
    w.customer("E", currency="gbp")
    w.subscribe("sA", "A", [("iA", "basic_usd", 2)], ts(2024, 1, 10))
    w.update("sA", ts(2024, 2, 15), items=[("iA", "pro_usd", 2)])
    w.cancel("sA", ts(2024, 4, 3), feedback="unused")
    w.subscribe("sA2", "A", [("iA2", "analytics_usd", 1)], ts(2024, 6, 2))
    w.subscribe("sB", "B", [("iB", "basic_eur", 3)], ts(2024, 1, 20))
    w.update("sB", ts(2024, 5, 10), items=[("iB", "basic_eur", 4)])
    w.subscribe("sC", "C", [("iC", "basic_usd", 1)], ts(2024, 1, 25))
    w.cancel("sC", ts(2024, 1, 28))
    w.subscribe("sC2", "C", [("iC2", "basic_usd", 1)], ts(2024, 3, 5))
    w.subscribe("sD", "D", [("iD1", "basic_usd", 1), ("iD2", "analytics_usd", 1)], ts(2024, 1, 5))
    w.subscribe("sE", "E", [("iE", "basic_gbp", 2)], ts(2024, 2, 29, 23, 30))
    return w


FIVE_SEEN = ts(2024, 7, 20)


@pytest.fixture(scope="module")
def five(tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    con = derived(tmp_path_factory.mktemp("five"), migrated_store_file, five_customers(World()), seen_at=FIVE_SEEN)
    yield con
    con.close()


def test_cohorts_by_hand(five: duckdb.DuckDBPyConnection) -> None:
    """January's cohort (A, B, C, D) starts at 20 + 32.40 + 0 + 60 = 112.40 (C left within its first month), B at
    January's 1.08 throughout (its fx line left out, its fourth seat 10 EUR x 1.08); D, one customer of two
    families, counts once; C's comeback and A's come into mrr and active customers."""
    got = {(r["cohort_month"], r["months_since_start"]): r for r in queries.cohort_matrix(five)}
    jan = [got[(dt.date(2024, 1, 1), k)] for k in range(7)]
    assert [r["mrr"] for r in jan] == [D("112.4000"), D("132.4000"), D("142.4000"), D("102.4000"), D("113.2000"),
                                       D("163.2000"), D("163.2000")]
    assert [r["active_customers"] for r in jan] == [3, 3, 4, 3, 3, 4, 4]
    assert {(r["cohort_customers"], r["starting_mrr"]) for r in jan} == {(4, D("112.4000"))}
    assert [r["revenue_retention"] for r in jan] == pytest.approx(
        [1, 132.4 / 112.4, 142.4 / 112.4, 102.4 / 112.4, 113.2 / 112.4, 163.2 / 112.4, 163.2 / 112.4])
    feb = [got[(dt.date(2024, 2, 1), k)] for k in range(6)]
    assert {(r["cohort_customers"], r["active_customers"], r["mrr"], r["revenue_retention"]) for r in feb} == {
        (1, 1, D("25.4000"), 1.0)}
    assert [r["month"] for r in feb] == [dt.date(2024, m, 1) for m in range(2, 8)]


BRIDGE = ["opening_mrr", "new", "reactivation", "expansion", "contraction", "churn", "fx", "closing_mrr",
          "opening_customers", "new_customers", "reactivated_customers", "churned_customers", "closing_customers",
          "arpa"]
RATES = ["gross_revenue_churn_rate", "net_revenue_churn_rate", "nrr", "grr", "customer_churn_rate", "quick_ratio",
         "net_negative_churn"]


def cells(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["period_start"], row["period_end"], *(row[c] for c in BRIDGE))


def rates(row: dict[str, Any]) -> list[Any]:
    return [row[c] if row[c] is None or isinstance(row[c], bool) else pytest.approx(row[c]) for c in RATES]


def test_quarters_and_years_by_hand(five: duckdb.DuckDBPyConnection) -> None:
    q = {r["period_start"]: r for r in queries.bridge(five, "quarter")}
    q1, q2, q3 = q[dt.date(2024, 1, 1)], q[dt.date(2024, 4, 1)], q[dt.date(2024, 7, 1)]
    # Q1: new A 20, B 32.40, C 10, D 60, E 25.40; C's comeback 10; A's upgrade 20; C's churn 10
    assert cells(q1) == (dt.date(2024, 1, 1), dt.date(2024, 3, 31), 0, D("147.8"), 10, 20, 0, 10, 0, D("167.8"),
                         0, 5, 1, 1, 5, D("33.56"))
    assert rates(q1) == [None, None, None, None, None, pytest.approx(177.8 / 10), None]
    # Q2: A gone (40) and back (50), B's seat (11.00) and fx (0.60)
    assert cells(q2) == (dt.date(2024, 4, 1), dt.date(2024, 6, 30), D("167.8"), 0, 50, 11, 0, 40, D("0.6"),
                         D("189.4"), 5, 0, 1, 1, 5, D("37.88"))
    assert rates(q2) == [pytest.approx(40 / 167.8), pytest.approx((40 - 11 - 50) / 167.8),
                         pytest.approx((167.8 + 11 - 40) / 167.8), pytest.approx((167.8 - 40) / 167.8),
                         pytest.approx(1 / 5), pytest.approx(61 / 40), True]
    # a quiet quarter: every flow zero, the rates that have a denominator zero or one, the quick ratio NULL
    assert cells(q3) == (dt.date(2024, 7, 1), dt.date(2024, 9, 30), D("189.4"), 0, 0, 0, 0, 0, 0, D("189.4"),
                         5, 0, 0, 0, 5, D("37.88"))
    assert rates(q3) == [0, 0, 1, 1, 0, None, False]
    years = queries.bridge(five, "year")
    today = dt.datetime.now(UTC).date()
    assert [r["period_start"] for r in years] == [dt.date(y, 1, 1) for y in range(2024, today.year + 1)]
    assert cells(years[0]) == (dt.date(2024, 1, 1), dt.date(2024, 12, 31), 0, D("147.8"), 60, 31, 0, 50, D("0.6"),
                               D("189.4"), 0, 5, 2, 2, 5, D("37.88"))
    assert rates(years[0]) == [None] * 5 + [pytest.approx(238.8 / 50), None]
    for y in years[1:]:  # (quiet years through the current one)
        assert cells(y)[2:] == (D("189.4"), 0, 0, 0, 0, 0, 0, D("189.4"), 5, 0, 0, 0, 5, D("37.88"))
        assert rates(y) == [0, 0, 1, 1, 0, None, False]


def test_weeks_by_hand(five: duckdb.DuckDBPyConnection) -> None:
    """Weeks start on Monday (UTC): E's signup on Thursday 29 February 23:30 is in the week of 26 February; the
    1 April rate change (a Monday) and A's churn on 3 April share one week, a reactivation alone makes a week
    net negative."""
    w = {r["period_start"]: r for r in queries.bridge(five, "week", start=dt.date(2024, 2, 19),
                                                       end=dt.date(2024, 4, 8))}
    assert sorted(w) == [dt.date(2024, 2, 19) + dt.timedelta(weeks=k) for k in range(8)]
    assert cells(w[dt.date(2024, 2, 26)]) == (dt.date(2024, 2, 26), dt.date(2024, 3, 3), D("132.4"), D("25.4"), 0,
                                              0, 0, 0, 0, D("157.8"), 3, 1, 0, 0, 4, D("39.45"))
    assert cells(w[dt.date(2024, 3, 4)])[2:10] == (D("157.8"), 0, 10, 0, 0, 0, 0, D("167.8"))
    assert rates(w[dt.date(2024, 3, 4)]) == [0, pytest.approx(-10 / 157.8), 1, 1, 0, None, True]
    assert cells(w[dt.date(2024, 4, 1)]) == (dt.date(2024, 4, 1), dt.date(2024, 4, 7), D("167.8"), 0, 0, 0, 0, 40,
                                             D("0.6"), D("128.4"), 5, 0, 0, 1, 4, D("32.1"))
    assert rates(w[dt.date(2024, 4, 1)]) == [pytest.approx(40 / 167.8), pytest.approx(40 / 167.8),
                                             pytest.approx(127.8 / 167.8), pytest.approx(127.8 / 167.8),
                                             pytest.approx(0.2), 0, False]
    for quiet in (dt.date(2024, 2, 19), dt.date(2024, 3, 11), dt.date(2024, 3, 18), dt.date(2024, 3, 25)):
        assert cells(w[quiet])[3:8] == (0, 0, 0, 0, 0) and w[quiet]["opening_mrr"] == w[quiet]["closing_mrr"]


def test_family_segments_per_quarter_by_hand(five: duckdb.DuckDBPyConnection) -> None:
    """D (basic 10 + analytics 50) is analytics (its largest item). A is core at Q2's start, so its churn and its
    comeback on analytics both count in core's Q2 (README: a segment's bridge is that of its customers); it takes
    its 50 to analytics at Q3's start, with no flow, and core's Q3 opens 50 below its Q2 closing."""
    got = {(r["segment_value"], r["period_start"]): r for r in queries.bridge(five, "quarter", "family")}
    q1, q2, q3 = dt.date(2024, 1, 1), dt.date(2024, 4, 1), dt.date(2024, 7, 1)
    assert cells(got[("core", q1)])[2:] == (0, D("87.8"), 10, 20, 0, 10, 0, D("107.8"), 0, 4, 1, 1, 4,
                                            D("26.95"))
    assert cells(got[("core", q2)])[2:] == (D("107.8"), 0, 50, 11, 0, 40, D("0.6"), D("129.4"), 4, 0, 1, 1, 4,
                                            D("32.35"))
    assert rates(got[("core", q2)])[1:5] == [pytest.approx(-21 / 107.8), pytest.approx(78.8 / 107.8),
                                             pytest.approx(67.8 / 107.8), pytest.approx(1 / 4)]
    assert cells(got[("core", q3)])[2:10] == (D("79.4"), 0, 0, 0, 0, 0, 0, D("79.4"))
    assert (got[("core", q3)]["opening_customers"], got[("analytics", q3)]["opening_customers"]) == (3, 2)
    assert [cells(got[("analytics", q)])[2:10] for q in (q1, q2, q3)] == [
        (0, 60, 0, 0, 0, 0, 0, 60), (60, 0, 0, 0, 0, 0, 0, 60), (110, 0, 0, 0, 0, 0, 0, 110)]
