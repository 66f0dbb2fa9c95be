"""An item added without prorations before the events begin, then changed with prorations before the renewal that
would first bill it (design.md 3-4): its first lines are that change's credit and new line. Its `created` dates
the addition (tests/metrics/test_history_item_created.py), the credit says the state it had until the change, and
an item it replaced ends at that `created` though the renewal that drops it is the first to bill it at its own
price. (Found by scripts/truth_check.py --no-prorations.)"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from builders import DAY, World
from conftest import OneStore, customer_mrr_at
from test_history_item_created import ADDED, EVENTS, T0, account, month, movements, oldest_event

Derive = Callable[..., duckdb.DuckDBPyConnection]

# The tests marked @one_store are each an account of one store, derived once (conftest.OneStore): their queries see
# their own account's rows alone.
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()
CHANGED = ADDED + 5 * DAY  # the change with prorations, before the renewal of month(2)


def add_then_change(world: World, swap: bool) -> list[tuple[int, str, int]]:
    """On the 11th without prorations: a storage add-on (10 × 7.00), or (``swap``) pro's 3 seats in place of
    basic's (a new item, 10.00 to 20.00 a seat). Five days later, with prorations: the add-on to 20 GB, or a
    fourth pro seat. Returns the movements they should make."""
    if swap:
        world.update("sub_1", ADDED, items=[("si_2", "pro", 3)], prorate=False)
        world.update("sub_1", CHANGED, items=[("si_2", "pro", 4)])
        return [(T0, "new", 30), (ADDED, "upgrade", 30), (CHANGED, "seat_expansion", 20)]
    world.update("sub_1", ADDED, items=[("si_1", "basic", 3), ("si_2", "store", 10)], prorate=False)
    world.update("sub_1", CHANGED, items=[("si_1", "basic", 3), ("si_2", "store", 20)])
    return [(T0, "new", 30), (ADDED, "cross_sell", 70), (CHANGED, "resource_expansion", 70)]


@EVENTS
@pytest.mark.parametrize("swap", [False, True], ids=["add-on", "plan-switch"])
@one_store
def test_an_item_added_without_prorations_and_changed_with_them_before_its_renewal(world: World, derive: Derive,
                                                                                 events: bool, swap: bool) -> None:
    """The add-on counts from its `created` at the 10 GB its change's credit takes back, not at the 20 GB of the
    change's new line (it counted 140 from the 11th, with no expansion on the 16th); pro's 3 seats count from
    theirs, and basic, which no credit ends, ends then too (both items counted until the renewal of month(2): the
    renewal was compared with the new item's first line, the change of the 16th)."""
    account(world)
    expected = add_then_change(world, swap)
    world.cycle("sub_1", month(2))
    oldest_event(world)
    con = derive(world, seen_at=month(2, 20), events=month(2, 15) if events else False)
    assert movements(con) == expected
    before, after = (30, 60) if swap else (30, 100)
    assert customer_mrr_at(con, "cus_1", ADDED - 1) == before
    assert customer_mrr_at(con, "cus_1", ADDED) == after
    assert customer_mrr_at(con, "cus_1", CHANGED) == after + expected[-1][2]
    assert customer_mrr_at(con, "cus_1", month(2, 1)) == after + expected[-1][2]


@one_store
def test_an_item_added_with_prorations_and_changed_again_keeps_its_first_line(world: World,
                                                                               derive: Derive) -> None:
    """The same add-on added with prorations: its own first line dates it at 10 GB, and the change of the 16th
    is its second (as before)."""
    account(world)
    world.update("sub_1", ADDED, items=[("si_1", "basic", 3), ("si_2", "store", 10)])
    world.update("sub_1", CHANGED, items=[("si_1", "basic", 3), ("si_2", "store", 20)])
    world.cycle("sub_1", month(2))
    oldest_event(world)
    con = derive(world, seen_at=month(2, 20), events=month(2, 15))
    assert movements(con) == [(T0, "new", 30), (ADDED, "cross_sell", 70), (CHANGED, "resource_expansion", 70)]


@pytest.mark.parametrize("shards", [1, 2])
def test_the_incremental_path_dates_them_as_a_full_recompute_does(world: World, tmp_path: Path, shards: int) -> None:
    """cus_1's plan switch and its fourth seat (as above) and cus_2's add-on changed the same way, before the events;
    a later sync brings cus_1's next renewal: every derived table derived again incrementally is a full
    recompute's, and the movements stay dated on the 11th and the 16th."""
    from test_incremental import assert_incremental_equals_full, later_sync

    account(world)
    world.customer("cus_2")
    world.subscribe("sub_2", "cus_2", [("si_21", "basic", 2)], T0 + 2 * DAY)
    world.cycle("sub_2", month(1, 2))
    add_then_change(world, True)
    world.update("sub_2", ADDED, items=[("si_21", "basic", 2), ("si_22", "store", 10)], prorate=False)
    world.update("sub_2", CHANGED, items=[("si_21", "basic", 2), ("si_22", "store", 20)])
    world.cycle("sub_1", month(2))
    world.cycle("sub_2", month(2, 2))
    oldest_event(world)
    world.events = [e for e in world.events if e["created"] >= month(2, 15)]
    before = copy.deepcopy(world)
    world.cycle("sub_1", month(3))
    changed = later_sync(world, {"cus_1"}, {"sub_1"}, month(2, 20))
    n, full = assert_incremental_equals_full(tmp_path, before, changed, month(2, 20), month(3, 2), shards)
    assert n == 1
    moves = sorted(r for r in full["view mrr_movements"] if "'upgrade'" in r or "'cross_sell'" in r
                   or "_expansion'" in r)
    assert len(moves) == 4, moves
    assert sum("2024-02-11" in r for r in moves) == 2 and sum("2024-02-16" in r for r in moves) == 2, moves


@EVENTS
@pytest.mark.parametrize("swap", ["plan-switch", "add-on-swap"])
@one_store
def test_an_item_replaced_without_prorations_in_a_subscription_ended_before_the_renewal(world: World,
                                                                                        derive: Derive,
                                                                                        events: bool,
                                                                                        swap: str) -> None:
    """The plan switch (basic's 3 seats for pro's) or the add-on swap (storage for support) of the 11th without
    prorations, then the subscription canceled on the 16th, before any renewal bills the new item. The canceled
    subscription's items (the first state the sync gives) list the new item, not the old one; the old one ends at
    its successor's `created`, as it does when a renewal comes. (It ran on to the end of its last billed period,
    counted beside its successor until the cancellation: the end of that period, past the subscription's end,
    was taken for its last step.)"""
    from test_history_item_created import swap_without_prorations

    account(world)
    before, after, expected = swap_without_prorations(world, swap)
    world.cancel("sub_1", CHANGED)
    oldest_event(world)
    con = derive(world, seen_at=month(2, 20), events=month(2, 15) if events else False)
    assert customer_mrr_at(con, "cus_1", ADDED - 1) == before
    assert customer_mrr_at(con, "cus_1", ADDED) == after
    assert customer_mrr_at(con, "cus_1", CHANGED) == 0
    assert con.execute("SELECT sum(mrr_delta) FROM mrr_movements WHERE customer_id = 'cus_1' "
                       "AND movement = 'cancellation'").fetchone() == (-after,)
    assert movements(con)[:len(expected)] == expected


@EVENTS
@pytest.mark.parametrize("pending", [False, True], ids=["invoiced", "pending"])
@one_store
def test_an_item_replaced_without_prorations_then_switched_to_annual_before_the_renewal(world: World,
                                                                                       derive: Derive,
                                                                                       events: bool,
                                                                                       pending: bool) -> None:
    """Pro's 3 seats in place of basic's on the 11th without prorations, then switched to pro's annual price (20.00
    a seat a month either way) on the 16th with prorations: the switch credits the monthly price to the end of the
    period basic was last billed for and moves the renewal, so no renewal bills pro at that end. Basic ends on the
    11th all the same (its successor's lines end where its last billed period ends); it ran on to that end, the two
    items counted together (90 instead of 60). The same with the switch's prorations left pending."""
    account(world)
    world.price("pro_y", "prod_seat", 24_000, interval="year")
    world.update("sub_1", ADDED, items=[("si_2", "pro", 3)], prorate=False)
    world.update("sub_1", CHANGED, items=[("si_2", "pro_y", 3)], pending=pending)
    oldest_event(world)
    con = derive(world, seen_at=month(2, 20), events=month(2, 15) if events else False)
    assert customer_mrr_at(con, "cus_1", ADDED - 1) == 30
    assert customer_mrr_at(con, "cus_1", ADDED) == 60
    assert customer_mrr_at(con, "cus_1", CHANGED) == 60
    assert customer_mrr_at(con, "cus_1", month(2, 1)) == 60
    assert movements(con) == [(T0, "new", 30), (ADDED, "upgrade", 30)]


@pytest.mark.parametrize("shards", [1, 2])
def test_the_incremental_path_reads_a_pending_items_period_end(world: World, tmp_path: Path, shards: int) -> None:
    """The plan switch of the 11th and its annual switch of the 16th with the prorations left pending (as above),
    before the events; a later sync brings a change of sub_1: derived again incrementally (the pending items copied
    with their period's end), every derived table is a full recompute's, basic ended on the 11th."""
    from test_incremental import assert_incremental_equals_full, later_sync

    account(world)
    world.price("pro_y", "prod_seat", 24_000, interval="year")
    world.update("sub_1", ADDED, items=[("si_2", "pro", 3)], prorate=False)
    world.update("sub_1", CHANGED, items=[("si_2", "pro_y", 3)], pending=True)
    oldest_event(world)
    world.events = [e for e in world.events if e["created"] >= month(2, 15)]
    before = copy.deepcopy(world)
    world.update("sub_1", month(2, 25), metadata={"note": "renewal due"})
    changed = later_sync(world, {"cus_1"}, {"sub_1"}, month(2, 20))
    n, full = assert_incremental_equals_full(tmp_path, before, changed, month(2, 20), month(3, 2), shards)
    assert n == 1
    history = [r for r in full["derived_item_history"] if "'si_1'" in r]
    assert len(history) == 1 and "datetime.datetime(2024, 2, 11, 0, 0" in history[0], history


@EVENTS
@one_store
def test_an_item_replaced_without_prorations_then_given_a_trial_before_the_renewal(world: World, derive: Derive,
                                                                                  events: bool) -> None:
    """Pro's 3 seats in place of basic's on the 11th without prorations, then a 20-day trial granted on the 16th:
    the trial's update invoice bills the subscription's items for a new period from then, pro's seat line at 0.00
    and none of basic, so basic was gone by then, and it ends at pro's `created` as at a renewal that no longer
    bills it. It ran on to the trial (both items counted: 90 from the 11th, a 90.00 cancellation on the 16th).
    (Found by scripts/truth_check.py --later-trials.)"""
    account(world)
    world.update("sub_1", ADDED, items=[("si_2", "pro", 3)], prorate=False)
    trial_end = CHANGED + 20 * DAY
    world.update("sub_1", CHANGED, status="trialing", trial_start=CHANGED, trial_end=trial_end)
    world.invoice_for("sub_1", CHANGED, "subscription_update", period_start=CHANGED)  # (0.00 lines)
    world.update("sub_1", trial_end, status="active")
    world.cycle("sub_1", trial_end)
    oldest_event(world)
    con = derive(world, seen_at=month(2, 20), events=month(2, 15) if events else False)
    assert customer_mrr_at(con, "cus_1", ADDED - 1) == 30
    assert customer_mrr_at(con, "cus_1", ADDED) == 60
    assert customer_mrr_at(con, "cus_1", CHANGED) == 0
    assert customer_mrr_at(con, "cus_1", trial_end) == 60
    assert movements(con) == [(T0, "new", 30), (ADDED, "upgrade", 30), (CHANGED, "cancellation", -60),
                              (trial_end, "reactivation", 60)]


@pytest.mark.parametrize("shards", [1, 2])
def test_the_incremental_path_ends_an_item_replaced_before_a_trial_as_a_full_recompute_does(
        world: World, tmp_path: Path, shards: int) -> None:
    """The replacement of the 11th and the trial of the 16th (as above) before the events; a later sync brings a
    change of sub_1: derived again incrementally, every derived table is a full recompute's, basic ended on the
    11th."""
    from test_incremental import assert_incremental_equals_full, later_sync

    account(world)
    world.update("sub_1", ADDED, items=[("si_2", "pro", 3)], prorate=False)
    trial_end = CHANGED + 20 * DAY
    world.update("sub_1", CHANGED, status="trialing", trial_start=CHANGED, trial_end=trial_end)
    world.invoice_for("sub_1", CHANGED, "subscription_update", period_start=CHANGED)
    world.update("sub_1", trial_end, status="active")
    world.cycle("sub_1", trial_end)
    oldest_event(world)
    world.events = [e for e in world.events if e["created"] >= month(2, 15)]
    before = copy.deepcopy(world)
    world.update("sub_1", month(2, 25), metadata={"note": "renewal due"})
    changed = later_sync(world, {"cus_1"}, {"sub_1"}, month(2, 20))
    n, full = assert_incremental_equals_full(tmp_path, before, changed, month(2, 20), month(3, 2), shards)
    assert n == 1
    history = [r for r in full["derived_item_history"] if "'si_1'" in r]
    assert len(history) == 1 and "datetime.datetime(2024, 2, 11, 0, 0" in history[0], history
