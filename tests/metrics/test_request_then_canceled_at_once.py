"""A request to cancel later, then an immediate cancel (design.md 4 "Churn timing", churn_recognition = "canceled").
With that setting a churn counts at the request (Stripe's canceled_at). A customer who asks to cancel at the period's
end (or at a cancel_at date) and is then canceled at once has Stripe's canceled_at moved to the immediate cancel; the
request's stored customer.subscription.updated event still shows it, and nothing between took it back. The churn
stays at the request (its month keeps it after the next sync), one cancellation, MRR zero from then; the deletion is
no second movement; the row carries the subscription's final details (the same churn "ended" reports at the end).
Under the default recognition (at ended_at) nothing changes. Worked out by hand: cus_1 pays 2 x 25.00 = 50.00 a month
from 1 January 2024 on sub_1 (periods start on the 1st). Each case is its own account of one store per recognition."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import duckdb
from builders import World
from conftest import OneStore, customer_mrr_at
from test_cancellation_taken_back import MINUTE, paying, request, take_back
from test_mrr_rules import T0, month

NEW = (T0, "new", Decimal("50.0000"), None, None)
CHURN = Decimal("-50.0000")
Derive = Callable[..., duckdb.DuckDBPyConnection]

# Each case is its own account of one store per churn_recognition, derived once (conftest.OneStore).
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()


def period_end_then_at_once(w: World) -> World:
    """Asked on 10 March to cancel at the period's end (1 April), too_expensive; canceled at once on 21 March,
    switched_service (the final details)."""
    paying(w)
    request(w, month(2, 9), feedback="too_expensive")
    w.cancel("sub_1", month(2, 20), feedback="switched_service")
    return w


def cancel_at_then_at_once_next_month(w: World) -> World:
    """Asked on 10 March to cancel on 15 May (a cancel_at date), renewed 1 April, canceled at once on 5 April."""
    paying(w)
    request(w, month(2, 9), ends=month(4, 14), feedback="too_expensive")
    w.cycle("sub_1", month(3))
    w.cancel("sub_1", month(3, 4), feedback="switched_service")
    return w


def taken_back_then_at_once(w: World) -> World:
    """Asked on 5 March (missing_features), taken back on 10 March, canceled at once on 21 March (switched_service)."""
    paying(w)
    request(w, month(2, 4), feedback="missing_features")
    take_back(w, month(2, 9))
    w.cancel("sub_1", month(2, 20), feedback="switched_service")
    return w


def at_once_within_the_window(w: World) -> World:
    """Asked on 10 March to cancel at the period's end, canceled at once 30 minutes later (one movement window)."""
    paying(w)
    request(w, month(2, 9), feedback="too_expensive")
    w.cancel("sub_1", month(2, 9) + 30 * MINUTE, feedback="switched_service")
    return w


SEEN = month(3, 10)


def moves(con: duckdb.DuckDBPyConnection, account: str) -> list[tuple[object, ...]]:
    rows = con.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta, churn_type, "
                       "cancellation_feedback FROM mrr_movements WHERE account_id = ? ORDER BY occurred_at",
                       [account]).fetchall()
    assert rows, account  # the case's account was derived
    return rows


@one_store
def test_a_request_then_an_immediate_cancel_churns_at_the_request(world: World, derive: Derive) -> None:
    """One cancellation on 10 March (-50.00, voluntary, the final feedback), nothing on 21 March; MRR zero from 10
    March; the source is the request's event."""
    con = derive(period_end_then_at_once(world), seen_at=SEEN, churn_recognition="canceled")
    acct_period_end = world.account_id
    assert moves(con, acct_period_end) == [
        NEW, (month(2, 9), "cancellation", CHURN, "voluntary", "switched_service")]
    assert customer_mrr_at(con, "cus_1", month(2, 9) - 1, acct_period_end) == Decimal("50.0000")
    for at in (month(2, 9), month(2, 15), month(2, 20), month(3)):
        assert customer_mrr_at(con, "cus_1", at, acct_period_end) == 0, at
    (source,) = con.execute("SELECT source_event_id FROM mrr_movements WHERE account_id = ? AND movement = "
                            "'cancellation'", [acct_period_end]).fetchone() or (None,)
    (request_event,) = con.execute("SELECT id FROM events WHERE account_id = ? AND epoch(created) = ?",
                                   [acct_period_end, month(2, 9)]).fetchone() or (None,)
    assert source == request_event is not None


@one_store
def test_a_cancel_at_request_keeps_its_month_when_canceled_at_once_in_the_next(world: World, derive: Derive
                                                                                 ) -> None:
    """Asked in March (cancel_at 15 May), canceled at once on 5 April: the churn stays in March (its bridge month),
    April has none; the renewal of 1 April brings no comeback."""
    con = derive(cancel_at_then_at_once_next_month(world), seen_at=SEEN, churn_recognition="canceled")
    acct_cancel_at = world.account_id
    assert moves(con, acct_cancel_at) == [
        NEW, (month(2, 9), "cancellation", CHURN, "voluntary", "switched_service")]
    assert customer_mrr_at(con, "cus_1", month(3, 1), acct_cancel_at) == 0


@one_store
def test_under_ended_the_churn_stays_at_the_immediate_cancel(world: World, derive: Derive) -> None:
    """The default recognition: one cancellation when the subscription ends (21 March; 5 April)."""
    period_end = period_end_then_at_once(world)
    cancel_at = cancel_at_then_at_once_next_month(World(account_id=f"{world.account_id}-cancel_at"))
    con = derive(period_end, cancel_at, seen_at=SEEN, churn_recognition="ended")
    acct_period_end, acct_cancel_at = period_end.account_id, cancel_at.account_id
    assert moves(con, acct_period_end) == [
        NEW, (month(2, 20), "cancellation", CHURN, "voluntary", "switched_service")]
    assert moves(con, acct_cancel_at) == [
        NEW, (month(3, 4), "cancellation", CHURN, "voluntary", "switched_service")]
    assert customer_mrr_at(con, "cus_1", month(2, 15), acct_period_end) == Decimal("50.0000")


@one_store
def test_a_request_taken_back_then_an_immediate_cancel(world: World, derive: Derive) -> None:
    """The request taken back is a churn and a comeback (the existing rule); the later immediate cancel churns when
    it is made (21 March), with the final feedback."""
    con = derive(taken_back_then_at_once(world), seen_at=SEEN, churn_recognition="canceled")
    assert moves(con, world.account_id) == [
        NEW, (month(2, 4), "cancellation", CHURN, "voluntary", "missing_features"),
        (month(2, 9), "reactivation", Decimal("50.0000"), None, None),
        (month(2, 20), "cancellation", CHURN, "voluntary", "switched_service")]


@one_store
def test_a_request_and_an_immediate_cancel_in_one_window(world: World, derive: Derive) -> None:
    """Both within the movement window: one cancellation, dated at the request."""
    con = derive(at_once_within_the_window(world), seen_at=SEEN, churn_recognition="canceled")
    acct_window = world.account_id
    assert moves(con, acct_window) == [
        NEW, (month(2, 9), "cancellation", CHURN, "voluntary", "switched_service")]
    assert customer_mrr_at(con, "cus_1", month(2, 9), acct_window) == 0
