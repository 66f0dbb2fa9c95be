"""Events of one subscription in the same second: Stripe's ``event.created`` is whole seconds and its ``evt_`` ids
are not ordered within a second. Step 20 orders such events by what they say (created first, deleted last, the
updates chained by their ``previous_attributes``), never by id, so that swapping the ids of events in one second
changes nothing derived."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import duckdb
import pytest
from builders import DAY, World, add_months, ts
from conftest import OneStore, customer_mrr_at

T0 = ts(2025, 6, 1)
T1 = T0 + 10 * DAY
SEEN = add_months(T0, 1) + 2 * DAY
Derive = Callable[..., duckdb.DuckDBPyConnection]

# Each test derives its case twice (:func:`pair`), each its own account of one store, derived once
# (conftest.OneStore).
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()


def account(w: World) -> World:
    w.product("prod_seat", unit_label="seat")
    w.price("basic", "prod_seat", 1_000)
    w.price("pro", "prod_seat", 2_500)
    w.customer("cus_1")
    return w


def reorder_ids(w: World, first: int, order: list[int]) -> None:
    """Give the events ``first``, ``first + 1``, ... the ids of the events ``first + order[k]`` (their times and
    what they say unchanged): ids that sort the other way round within their second, as Stripe's may."""
    ids = [w.events[first + k]["id"] for k in order]
    for k, evt_id in enumerate(ids):
        w.events[first + k]["id"] = evt_id


def results(con: duckdb.DuckDBPyConnection, account: str) -> dict[str, list[tuple[Any, ...]]]:
    """What is derived of one ``account`` of the store."""
    def rows(sql: str) -> list[tuple[Any, ...]]:
        return con.execute(sql.format(acct="account_id = ?"), [account]).fetchall()

    return {
        "levels": rows("SELECT customer_id, CAST(epoch(valid_from) AS BIGINT), CAST(epoch(valid_to) AS BIGINT), "
                       "mrr FROM customer_mrr WHERE {acct} ORDER BY ALL"),
        "movements": rows("SELECT customer_id, CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta "
                          "FROM mrr_movements WHERE {acct} ORDER BY ALL"),
        "history": rows("SELECT subscription_item_id, price_id, quantity, CAST(epoch(valid_from) AS BIGINT), "
                        "CAST(epoch(valid_to) AS BIGINT) FROM derived_item_history WHERE {acct} ORDER BY ALL"),
        "steps": rows("SELECT subscription_id, CAST(epoch(moment) AS BIGINT), status "
                      "FROM derived_sub_status_steps WHERE {acct} ORDER BY ALL"),
        "data_quality": rows("SELECT kind, object_id, detail FROM data_quality WHERE {acct} ORDER BY ALL"),
    }


def event_order(con: duckdb.DuckDBPyConnection, account: str) -> list[tuple[str, str]]:
    """(event type, status after) of each event of ``account``, in the order step 20 gives them."""
    return con.execute("SELECT event_type, after_status FROM derived_sub_events WHERE account_id = ? "
                       "ORDER BY subscription_id, seq", [account]).fetchall()


Build = Callable[[World], tuple[World, int, list[int]]]


def pair(world: World, build: Build) -> tuple[World, World]:
    """``build``'s case twice: in ``world``, ids in the order the events happened, and in its ``-swapped`` account,
    reordered."""
    in_order, _, _ = build(world)
    swapped, first, order = build(World(account_id=f"{world.account_id}-swapped"))
    reorder_ids(swapped, first, order)
    assert [e["id"] for e in swapped.events] != [e["id"] for e in in_order.events], build.__name__
    return in_order, swapped


def created_then_paid(w: World) -> tuple[World, int, list[int]]:
    """created (incomplete) and updated (active, the first payment succeeded at once) in the same second."""
    account(w)
    sub = w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0, event=False)
    sub["status"] = "incomplete"
    w.event("customer.subscription.created", T0, sub)
    w.update("sub_1", T0, status="active")
    w.cycle("sub_1", add_months(T0, 1))
    w.update("sub_1", add_months(T0, 1))  # (the renewal's event: nothing changes)
    return w, 0, [1, 0]


@one_store
def test_created_and_paid_in_one_second_whatever_their_ids(world: World, derive: Derive) -> None:
    worlds = pair(world, created_then_paid)
    con, (in_order, swapped) = derive(*worlds, seen_at=SEEN), (w.account_id for w in worlds)
    expected = results(con, in_order)
    # (the subscription counts from the second it was created and paid, as a new customer's revenue)
    assert customer_mrr_at(con, "cus_1", T0 + DAY, in_order) == 30
    assert [m[1:3] for m in expected["movements"]] == [(T0, "new")]
    assert customer_mrr_at(con, "cus_1", T0 + DAY, swapped) == 30
    assert results(con, swapped) == expected
    assert event_order(con, swapped)[:2] == [("customer.subscription.created", "incomplete"),
                                             ("customer.subscription.updated", "active")]
    # the state before the subscription's first event is the created event's (it has none)
    assert con.execute("SELECT count(*) FROM derived_sub_events WHERE has_before AND account_id = ?",
                       [swapped]).fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM derived_sub_events WHERE account_id = ?", [swapped]).fetchone() != (0,)


def quantity_then_price(w: World) -> tuple[World, int, list[int]]:
    """Two API updates in one second: seats 3 -> 5, then basic -> pro."""
    account(w)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    w.update("sub_1", T1, items=[("si_1", "basic", 5)])
    w.update("sub_1", T1, items=[("si_1", "pro", 5)])
    w.cycle("sub_1", add_months(T0, 1))
    return w, 1, [1, 0]


def recovered_then_quantity(w: World) -> tuple[World, int, list[int]]:
    """A past-due subscription paid (past_due -> active), then seats 3 -> 5 in the same second: the second event
    lists only the items, its status before is the one after (active), which the first event's after is."""
    account(w)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    w.update("sub_1", T0 + 3 * DAY, status="past_due")
    w.update("sub_1", T1, status="active")
    w.update("sub_1", T1, items=[("si_1", "basic", 5)])
    w.cycle("sub_1", add_months(T0, 1))
    return w, 2, [1, 0]


def three_updates(w: World) -> tuple[World, int, list[int]]:
    """Three updates in one second (seats 3 -> 5, basic -> pro, seats 5 -> 7), ids in reverse order."""
    account(w)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    w.update("sub_1", T1, items=[("si_1", "basic", 5)])
    w.update("sub_1", T1, items=[("si_1", "pro", 5)])
    w.update("sub_1", T1, items=[("si_1", "pro", 7)])
    w.cycle("sub_1", add_months(T0, 1))
    return w, 1, [2, 1, 0]


def seats_up_and_back(w: World) -> tuple[World, int, list[int]]:
    """Seats 3 -> 5 and back 5 -> 3 in one second (an update undone at once): each event leads to the other, and
    only the state before the second (3 seats, from the subscription's creation) tells which came first."""
    account(w)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    w.update("sub_1", T1, items=[("si_1", "basic", 5)], prorate=False)
    w.update("sub_1", T1, items=[("si_1", "basic", 3)], prorate=False)
    return w, 1, [1, 0]


def seats_up_back_and_up(w: World) -> tuple[World, int, list[int]]:
    """Seats 3 -> 5, 5 -> 3 and 3 -> 5 again in one second, ids in reverse order: it ends at 5."""
    account(w)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    for qty in (5, 3, 5):
        w.update("sub_1", T1, items=[("si_1", "basic", qty)], prorate=False)
    return w, 1, [2, 1, 0]


UPDATE_CASES = [
    pytest.param(quantity_then_price, 125, id="quantity_then_price"),
    pytest.param(recovered_then_quantity, 50, id="recovered_then_quantity"),
    pytest.param(three_updates, 175, id="three_updates"),
    pytest.param(seats_up_and_back, 30, id="up_and_back"),
    pytest.param(seats_up_back_and_up, 50, id="up_back_and_up"),
]


@pytest.mark.parametrize(("build", "mrr_after"), UPDATE_CASES)
@one_store
def test_updates_in_one_second_follow_their_previous_attributes(world: World, derive: Derive, build: Build,
                                                                mrr_after: int) -> None:
    worlds = pair(world, build)
    con, (in_order, swapped) = derive(*worlds, seen_at=SEEN), (w.account_id for w in worlds)
    expected = results(con, in_order)
    assert customer_mrr_at(con, "cus_1", T1 + DAY, in_order) == mrr_after, in_order
    assert customer_mrr_at(con, "cus_1", T1 + DAY, swapped) == mrr_after, swapped
    assert results(con, swapped) == expected, swapped
    assert event_order(con, swapped) == event_order(con, in_order), swapped


def update_then_deleted(w: World) -> tuple[World, int, list[int]]:
    """Seats 3 -> 5, then the subscription canceled at once, in the same second."""
    account(w)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    w.update("sub_1", T1, items=[("si_1", "basic", 5)], prorate=False)
    w.cancel("sub_1", T1)
    return w, 1, [1, 0]


@one_store
def test_a_deletion_in_the_same_second_as_an_update_comes_last(world: World, derive: Derive) -> None:
    worlds = pair(world, update_then_deleted)
    con, (in_order, swapped) = derive(*worlds, seen_at=SEEN), (w.account_id for w in worlds)
    expected = results(con, in_order)
    assert customer_mrr_at(con, "cus_1", T1 - DAY, in_order) == 30
    assert customer_mrr_at(con, "cus_1", T1 + DAY, in_order) == 0
    assert customer_mrr_at(con, "cus_1", T1 + DAY, swapped) == 0
    assert results(con, swapped) == expected
    assert event_order(con, swapped)[-1] == ("customer.subscription.deleted", "canceled")

