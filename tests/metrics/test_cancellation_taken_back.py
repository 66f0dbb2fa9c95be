"""A cancellation requested and taken back before it took effect (design.md 4 "Churn timing"). With
churn_recognition = "canceled" the churn counts at the request (Stripe's canceled_at), so a request the customer takes
back is a churn at the request and a comeback (`reactivation`) when it was taken back: the month of the request keeps
its churn after the next sync, as it was reported. Stripe clears canceled_at then; the stored
customer.subscription.updated event that did it (its previous_attributes hold the request) is the evidence. Without
such an event (the request and its undoing between two syncs) nothing is known and nothing changes. Under the
default recognition (at ended_at) a request taken back never churned, and nothing changes either. Worked out by hand:
cus_1 pays 2 x 25.00 = 50.00 a month from 1 January 2024 on one subscription (periods start on the 1st)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import duckdb
import pytest
from builders import World
from conftest import OneStore, customer_mrr_at
from test_mrr_rules import T0, base, month

Derive = Callable[..., duckdb.DuckDBPyConnection]

# The tests marked @one_store (those under churn_recognition = "canceled" that read no store-wide view and expect
# rows) are each an account of one store, derived once (conftest.OneStore).
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()
HOUR = 3_600
MINUTE = 60


def paying(world: World) -> World:
    base(world)
    world.price("price_a", "prod_seat", 2_500)
    world.subscribe("sub_1", "cus_1", [("si_1", "price_a", 2)], T0)
    world.cycle("sub_1", month(1))
    world.cycle("sub_1", month(2))
    return world


def request(world: World, at: int, *, ends: int | None = None, feedback: str | None = None,
            comment: str | None = None) -> None:
    """cus_1 asks at ``at`` to cancel sub_1 at the period's end (``ends``: a cancel_at date instead)."""
    details = {"reason": "cancellation_requested", "feedback": feedback, "comment": comment}
    if ends is None:
        world.update("sub_1", at, cancel_at_period_end=True, cancel_at=month(3), canceled_at=at,
                     cancellation_details=details)
    else:
        world.update("sub_1", at, cancel_at=ends, canceled_at=at, cancellation_details=details)


def take_back(world: World, at: int, *, event: bool = True) -> None:
    """cus_1 takes the request back at ``at``: Stripe clears canceled_at, cancel_at(_period_end) and the details."""
    world.update("sub_1", at, event=event, cancel_at_period_end=False, cancel_at=None, canceled_at=None,
                 cancellation_details={"reason": None, "feedback": None, "comment": None})


def movements(con: duckdb.DuckDBPyConnection) -> list[tuple[object, ...]]:
    return con.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta, churn_type, "
                       "cancellation_feedback, source_event_id FROM mrr_movements ORDER BY occurred_at").fetchall()


def event_at(world: World, at: int) -> str:
    (evt,) = [e["id"] for e in world.events if e["created"] == at and e["type"] == "customer.subscription.updated"]
    return str(evt)


NEW = (T0, "new", Decimal("50.0000"), None, None)


def test_taken_back_under_canceled_is_a_churn_and_a_comeback(world: World, derive: Derive) -> None:
    """Asked on 10 March (period ends 1 April) with feedback too_expensive and a comment, taken back on 20 March:
    -50.00 on 10 March (voluntary, too_expensive, the comment, the request's event), +50.00 reactivation on 20 March (the event that took it
    back); customer_mrr 0 between; March's bridge churn 50.00 and reactivation 50.00."""
    paying(world)
    request(world, month(2, 9), feedback="too_expensive", comment="over budget this quarter")
    take_back(world, month(2, 19))
    world.cycle("sub_1", month(3))
    con = derive(world, seen_at=month(3, 5), churn_recognition="canceled")
    rows = movements(con)
    assert con.execute("SELECT movement, cancellation_comment FROM derived_mrr_movements WHERE movement <> 'new' "
                       "ORDER BY occurred_at").fetchall() == [("cancellation", "over budget this quarter"),
                                                              ("reactivation", None)]
    assert [r[:5] for r in rows] == [
        NEW, (month(2, 9), "cancellation", Decimal("-50.0000"), "voluntary", "too_expensive"),
        (month(2, 19), "reactivation", Decimal("50.0000"), None, None)]
    assert rows[1][5] == event_at(world, month(2, 9))
    assert rows[2][5] == event_at(world, month(2, 19))
    assert customer_mrr_at(con, "cus_1", month(2, 9) - 1) == Decimal("50.0000")
    assert customer_mrr_at(con, "cus_1", month(2, 9)) == 0
    assert customer_mrr_at(con, "cus_1", month(2, 19) - 1) == 0
    assert customer_mrr_at(con, "cus_1", month(2, 19)) == Decimal("50.0000")
    assert customer_mrr_at(con, "cus_1", month(3, 5)) == Decimal("50.0000")
    march = con.execute("SELECT churn, reactivation FROM mrr_bridge WHERE period_start = DATE '2024-03-01'"
                        ).fetchone()
    assert march == (Decimal("50.0000"), Decimal("50.0000"))
    # nothing pending now
    assert con.execute("SELECT count(*) FROM scheduled_churn").fetchone() == (0,)


def test_taken_back_under_ended_changes_nothing(world: World, derive: Derive) -> None:
    """The default recognition: the request never took effect, so no movement after the new one."""
    paying(world)
    request(world, month(2, 9), feedback="too_expensive")
    take_back(world, month(2, 19))
    world.cycle("sub_1", month(3))
    con = derive(world, seen_at=month(3, 5))
    assert [r[:5] for r in movements(con)] == [NEW]
    assert customer_mrr_at(con, "cus_1", month(2, 15)) == Decimal("50.0000")


@one_store
def test_taken_back_then_requested_again_and_carried_out(world: World, derive: Derive) -> None:
    """Asked on 10 March (missing_features), taken back on 20 March, asked again on 25 March (too_expensive), ended
    1 April: -50.00 on 10 March with missing_features, +50.00 on 20 March, -50.00 on 25 March with too_expensive
    (the subscription's latest details); nothing at the end."""
    paying(world)
    request(world, month(2, 9), feedback="missing_features")
    take_back(world, month(2, 19))
    request(world, month(2, 24), feedback="too_expensive")
    world.end("sub_1", month(3))
    con = derive(world, seen_at=month(3, 5), churn_recognition="canceled")
    rows = movements(con)
    assert [r[:5] for r in rows] == [
        NEW, (month(2, 9), "cancellation", Decimal("-50.0000"), "voluntary", "missing_features"),
        (month(2, 19), "reactivation", Decimal("50.0000"), None, None),
        (month(2, 24), "cancellation", Decimal("-50.0000"), "voluntary", "too_expensive")]
    assert [r[5] for r in rows[1:]] == [event_at(world, month(2, 9)), event_at(world, month(2, 19)),
                                         event_at(world, month(2, 24))]
    assert customer_mrr_at(con, "cus_1", month(2, 22)) == Decimal("50.0000")
    assert customer_mrr_at(con, "cus_1", month(2, 24)) == 0


@one_store
def test_two_requests_each_taken_back_keep_their_own_feedback(world: World, derive: Derive) -> None:
    """Asked on 5 March (missing_features), taken back on 10 March; asked on 15 March (too_expensive), taken back on
    20 March: two churns and two comebacks of 50.00, each cancellation with its own request's feedback, MRR 0
    inside each span and 50.00 between them."""
    paying(world)
    request(world, month(2, 4), feedback="missing_features")
    take_back(world, month(2, 9))
    request(world, month(2, 14), feedback="too_expensive")
    take_back(world, month(2, 19))
    world.cycle("sub_1", month(3))
    con = derive(world, seen_at=month(3, 5), churn_recognition="canceled")
    assert [r[:5] for r in movements(con)] == [
        NEW, (month(2, 4), "cancellation", Decimal("-50.0000"), "voluntary", "missing_features"),
        (month(2, 9), "reactivation", Decimal("50.0000"), None, None),
        (month(2, 14), "cancellation", Decimal("-50.0000"), "voluntary", "too_expensive"),
        (month(2, 19), "reactivation", Decimal("50.0000"), None, None)]
    assert [customer_mrr_at(con, "cus_1", month(2, d)) for d in (3, 4, 8, 9, 13, 14, 18, 19)] == [
        Decimal("50.0000"), 0, 0, Decimal("50.0000"), Decimal("50.0000"), 0, 0, Decimal("50.0000")]


@one_store
def test_a_cancel_at_date_set_and_removed(world: World, derive: Derive) -> None:
    """A cancel_at of 15 April set on 10 March (canceled_at 10 March), removed on 2 April, before it took effect."""
    paying(world)
    request(world, month(2, 9), ends=month(3, 14))
    world.cycle("sub_1", month(3))
    take_back(world, month(3, 1))
    con = derive(world, seen_at=month(3, 5), churn_recognition="canceled")
    assert [r[:5] for r in movements(con)] == [
        NEW, (month(2, 9), "cancellation", Decimal("-50.0000"), "voluntary", None),
        (month(3, 1), "reactivation", Decimal("50.0000"), None, None)]


@one_store
def test_taken_back_within_the_movement_window_is_no_movement(world: World, derive: Derive) -> None:
    """Asked at 10:00 on 10 March, taken back at 10:20 (the window is 60 minutes): the changes net to nothing."""
    paying(world)
    request(world, month(2, 9) + 10 * HOUR)
    take_back(world, month(2, 9) + 10 * HOUR + 20 * MINUTE)
    con = derive(world, seen_at=month(3, 5), churn_recognition="canceled")
    assert [r[:5] for r in movements(con)] == [NEW]


@one_store
def test_taken_back_between_two_syncs_without_an_event_changes_nothing(world: World, derive: Derive) -> None:
    """No stored event shows the request or its undoing: nothing can be known."""
    paying(world)
    request(world, month(2, 9))
    take_back(world, month(2, 19))
    con = derive(world, seen_at=month(3, 5), events=month(2, 25), churn_recognition="canceled")
    assert [r[:5] for r in movements(con)] == [NEW]


@one_store
def test_a_request_before_the_events_taken_back_inside_them(world: World, derive: Derive) -> None:
    """The request (10 March) is older than the oldest stored event; the event of 20 March that took it back shows
    it (previous_attributes.canceled_at): the churn and the comeback, both sourced by that event."""
    paying(world)
    request(world, month(2, 9), feedback="unused")
    take_back(world, month(2, 19))
    con = derive(world, seen_at=month(3, 5), events=month(2, 15), churn_recognition="canceled")
    rows = movements(con)
    assert [r[:5] for r in rows] == [
        NEW, (month(2, 9), "cancellation", Decimal("-50.0000"), "voluntary", "unused"),
        (month(2, 19), "reactivation", Decimal("50.0000"), None, None)]
    assert rows[1][5] == rows[2][5] == event_at(world, month(2, 19))


@pytest.mark.parametrize("recognition", ["ended", "canceled"])
def test_scheduled_churn_lists_what_is_pending_now(world: World, derive: Derive, recognition: str) -> None:
    """Taken back on 20 March, asked again on 25 March to cancel at the period end (1 April), seen on 26 March:
    pending under "ended" (50.00 at stake), already churned under "canceled"."""
    paying(world)
    request(world, month(2, 9))
    take_back(world, month(2, 19))
    request(world, month(2, 24))
    con = derive(world, seen_at=month(2, 25), churn_recognition=recognition)
    pending = con.execute("SELECT subscription_id, mrr_at_stake FROM scheduled_churn").fetchall()
    assert pending == ([("sub_1", Decimal("50.0000"))] if recognition == "ended" else [])
