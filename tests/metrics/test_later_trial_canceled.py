"""A trial granted to a paying subscription, then canceled while it runs (design.md 4: trialing counts zero, and a
cancellation counts when the subscription ends, or when it is canceled with churn_recognition = "canceled").
Its MRR went to zero at the trial's start, which is the customer's churn; the cancellation later changes no MRR and
is no second movement, whichever churn_recognition and whether the cancellation takes effect at once or at the
trial's end. The churn row carries the cancellation's type and feedback (design.md 5)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import duckdb
import pytest
from builders import World
from conftest import OneStore, customer_mrr_at
from test_mrr_rules import T0, base, month

RECOGNITIONS = ["ended", "canceled"]
Derive = Callable[..., duckdb.DuckDBPyConnection]

# Each case is its own account of one store per churn_recognition, derived once (conftest.OneStore).
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()


def later_trial_canceled(w: World, at_trial_end: bool) -> World:
    """cus_1 pays 50.00; on day 10 of month 1 sub_1 is granted a month's trial, and on day 20 it is canceled with
    feedback (at once, or at the trial's end)."""
    base(w)
    w.price("price_a", "prod_seat", 2_500)
    w.subscribe("sub_1", "cus_1", [("si_1", "price_a", 2)], T0)
    w.cycle("sub_1", month(1))
    w.update("sub_1", month(1, 10), status="trialing", trial_start=month(1, 10), trial_end=month(2, 10))
    w.invoice_for("sub_1", month(1, 10), "subscription_update", period_start=month(1, 10))  # (0.00 lines)
    w.cancel("sub_1", month(1, 20), ended_at=month(2, 10) if at_trial_end else None, feedback="too_expensive")
    return w


@pytest.mark.parametrize("recognition", RECOGNITIONS)
@pytest.mark.parametrize("events", [True, False], ids=["events", "invoices-and-dates"])
@pytest.mark.parametrize("at_trial_end", [False, True], ids=["at-once", "at-the-trial-end"])
@one_store
def test_a_later_trial_canceled_while_it_runs_churns_once_at_its_start(world: World, derive: Derive,
                                                                      recognition: str, events: bool,
                                                                      at_trial_end: bool) -> None:
    """cus_1 pays 50.00; on day 10 of month 1 sub_1 is granted a month's trial, and on day 20 it is canceled with
    feedback (at once, or at the trial's end). One cancellation at the trial's start, -50.00, voluntary, with the
    feedback; nothing at the cancellation or the end; MRR zero from the trial's start on."""
    con = derive(later_trial_canceled(world, at_trial_end), seen_at=month(3), events=events,
                 churn_recognition=recognition)
    account = world.account_id
    rows = con.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta, churn_type, "
                       "cancellation_feedback FROM mrr_movements WHERE account_id = ? ORDER BY occurred_at",
                       [account]).fetchall()
    assert rows == [(T0, "new", Decimal("50.0000"), None, None),
                    (month(1, 10), "cancellation", Decimal("-50.0000"), "voluntary", "too_expensive")], (
        recognition, account, rows)
    assert customer_mrr_at(con, "cus_1", month(1, 10) - 1, account) == Decimal("50.0000"), (recognition, account)
    for at in (month(1, 10), month(1, 20), month(2, 10)):
        assert customer_mrr_at(con, "cus_1", at, account) == 0, (recognition, account, at)
