"""Events of one subscription in the same second: Stripe's ``event.created`` is whole seconds and its ``evt_`` ids
are not ordered within a second. Step 20 orders such events by what they say (created first, deleted last, the
updates chained by their ``previous_attributes``), never by id, so that swapping the ids of events in one second
changes nothing derived."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from builders import DAY, World, add_months, ts
from conftest import customer_mrr_at, make_settings

from stripe_churn.metrics.runner import recompute
from stripe_churn.store.db import open_store

T0 = ts(2025, 6, 1)
T1 = T0 + 10 * DAY
SEEN = add_months(T0, 1) + 2 * DAY


def account() -> World:
    w = World()
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


def derive(tmp_path: Path, template: Path, name: str, w: World) -> duckdb.DuckDBPyConnection:
    shutil.copyfile(template, tmp_path / f"{name}.duckdb")
    con = open_store(tmp_path / f"{name}.duckdb")
    w.load(con, seen_at=SEEN)
    recompute(con, make_settings())
    return con


def results(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "levels": con.execute("SELECT customer_id, CAST(epoch(valid_from) AS BIGINT), CAST(epoch(valid_to) AS BIGINT), "
                              "mrr FROM customer_mrr ORDER BY ALL").fetchall(),
        "movements": con.execute("SELECT customer_id, CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta "
                                 "FROM mrr_movements ORDER BY ALL").fetchall(),
        "history": con.execute("SELECT subscription_item_id, price_id, quantity, CAST(epoch(valid_from) AS BIGINT), "
                               "CAST(epoch(valid_to) AS BIGINT) FROM derived_item_history ORDER BY ALL").fetchall(),
        "steps": con.execute("SELECT subscription_id, CAST(epoch(moment) AS BIGINT), status "
                             "FROM derived_sub_status_steps ORDER BY ALL").fetchall(),
        "data_quality": con.execute("SELECT kind, object_id, detail FROM data_quality ORDER BY ALL").fetchall(),
    }


def event_order(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(event type, status after) of each event, in the order step 20 gives them."""
    return con.execute("SELECT event_type, after_status FROM derived_sub_events ORDER BY subscription_id, seq"
                       ).fetchall()


def same_second_pair(tmp_path: Path, template: Path, build: Callable[[], tuple[World, int, list[int]]]
                     ) -> tuple[duckdb.DuckDBPyConnection, duckdb.DuckDBPyConnection]:
    """The account ``build`` makes derived twice: ids in the order the events happened, and reordered."""
    in_order, _, _ = build()
    swapped, first, order = build()
    reorder_ids(swapped, first, order)
    assert [e["id"] for e in swapped.events] != [e["id"] for e in in_order.events]
    return derive(tmp_path, template, "in_order", in_order), derive(tmp_path, template, "swapped", swapped)


def created_then_paid() -> tuple[World, int, list[int]]:
    """created (incomplete) and updated (active, the first payment succeeded at once) in the same second."""
    w = account()
    sub = w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0, event=False)
    sub["status"] = "incomplete"
    w.event("customer.subscription.created", T0, sub)
    w.update("sub_1", T0, status="active")
    w.cycle("sub_1", add_months(T0, 1))
    w.update("sub_1", add_months(T0, 1))  # (the renewal's event: nothing changes)
    return w, 0, [1, 0]


def test_created_and_paid_in_one_second_whatever_their_ids(tmp_path: Path, migrated_store_file: Path) -> None:
    in_order, swapped = same_second_pair(tmp_path, migrated_store_file, created_then_paid)
    expected = results(in_order)
    # (the subscription counts from the second it was created and paid, as a new customer's revenue)
    assert customer_mrr_at(in_order, "cus_1", T0 + DAY) == 30
    assert [m[1:3] for m in expected["movements"]] == [(T0, "new")]
    assert customer_mrr_at(swapped, "cus_1", T0 + DAY) == 30
    assert results(swapped) == expected
    assert event_order(swapped)[:2] == [("customer.subscription.created", "incomplete"),
                                        ("customer.subscription.updated", "active")]
    # the state before the subscription's first event is the created event's (it has none)
    assert swapped.execute("SELECT count(*) FROM derived_sub_events WHERE has_before").fetchone() == (0,)


def quantity_then_price() -> tuple[World, int, list[int]]:
    """Two API updates in one second: seats 3 -> 5, then basic -> pro."""
    w = account()
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    w.update("sub_1", T1, items=[("si_1", "basic", 5)])
    w.update("sub_1", T1, items=[("si_1", "pro", 5)])
    w.cycle("sub_1", add_months(T0, 1))
    return w, 1, [1, 0]


def recovered_then_quantity() -> tuple[World, int, list[int]]:
    """A past-due subscription paid (past_due -> active), then seats 3 -> 5 in the same second: the second event
    lists only the items, its status before is the one after (active), which the first event's after is."""
    w = account()
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    w.update("sub_1", T0 + 3 * DAY, status="past_due")
    w.update("sub_1", T1, status="active")
    w.update("sub_1", T1, items=[("si_1", "basic", 5)])
    w.cycle("sub_1", add_months(T0, 1))
    return w, 2, [1, 0]


def three_updates() -> tuple[World, int, list[int]]:
    """Three updates in one second (seats 3 -> 5, basic -> pro, seats 5 -> 7), ids in reverse order."""
    w = account()
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    w.update("sub_1", T1, items=[("si_1", "basic", 5)])
    w.update("sub_1", T1, items=[("si_1", "pro", 5)])
    w.update("sub_1", T1, items=[("si_1", "pro", 7)])
    w.cycle("sub_1", add_months(T0, 1))
    return w, 1, [2, 1, 0]


def seats_up_and_back() -> tuple[World, int, list[int]]:
    """Seats 3 -> 5 and back 5 -> 3 in one second (an update undone at once): each event leads to the other, and
    only the state before the second (3 seats, from the subscription's creation) tells which came first."""
    w = account()
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    w.update("sub_1", T1, items=[("si_1", "basic", 5)], prorate=False)
    w.update("sub_1", T1, items=[("si_1", "basic", 3)], prorate=False)
    return w, 1, [1, 0]


def seats_up_back_and_up() -> tuple[World, int, list[int]]:
    """Seats 3 -> 5, 5 -> 3 and 3 -> 5 again in one second, ids in reverse order: it ends at 5."""
    w = account()
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    for qty in (5, 3, 5):
        w.update("sub_1", T1, items=[("si_1", "basic", qty)], prorate=False)
    return w, 1, [2, 1, 0]


@pytest.mark.parametrize(("build", "mrr_after"), [(quantity_then_price, 125), (recovered_then_quantity, 50),
                                                  (three_updates, 175), (seats_up_and_back, 30),
                                                  (seats_up_back_and_up, 50)],
                         ids=["quantity_then_price", "recovered_then_quantity", "three_updates", "up_and_back",
                              "up_back_and_up"])
def test_updates_in_one_second_follow_their_previous_attributes(
        tmp_path: Path, migrated_store_file: Path, build: Callable[[], tuple[World, int, list[int]]],
        mrr_after: int) -> None:
    in_order, swapped = same_second_pair(tmp_path, migrated_store_file, build)
    expected = results(in_order)
    assert customer_mrr_at(in_order, "cus_1", T1 + DAY) == mrr_after
    assert customer_mrr_at(swapped, "cus_1", T1 + DAY) == mrr_after
    assert results(swapped) == expected
    assert event_order(swapped) == event_order(in_order)


def update_then_deleted() -> tuple[World, int, list[int]]:
    """Seats 3 -> 5, then the subscription canceled at once, in the same second."""
    w = account()
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    w.update("sub_1", T1, items=[("si_1", "basic", 5)], prorate=False)
    w.cancel("sub_1", T1)
    return w, 1, [1, 0]


def test_a_deletion_in_the_same_second_as_an_update_comes_last(tmp_path: Path, migrated_store_file: Path) -> None:
    in_order, swapped = same_second_pair(tmp_path, migrated_store_file, update_then_deleted)
    expected = results(in_order)
    assert customer_mrr_at(in_order, "cus_1", T1 - DAY) == 30
    assert customer_mrr_at(in_order, "cus_1", T1 + DAY) == 0
    assert customer_mrr_at(swapped, "cus_1", T1 + DAY) == 0
    assert results(swapped) == expected
    assert event_order(swapped)[-1] == ("customer.subscription.deleted", "canceled")
