"""The data_quality row of an item replaced without prorations before the events begin (design.md 3): the invoice
before the events still bills it, the first state they give no longer lists it. Step 30 ends it at the `created`
of the item added in its place (`replaced_before_covered`), so the row says that, not that the state the events
(or the sync) give was used from where they begin."""

from __future__ import annotations

from collections.abc import Callable

import duckdb
import pytest
from builders import World
from conftest import customer_mrr_at
from test_history_item_created import ADDED, OWN_EVENT, WINDOW, account, month, window_begins

Derive = Callable[..., duckdb.DuckDBPyConnection]


def quality(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, int, str]]:
    rows = con.execute("SELECT kind, object_id, CAST(epoch(moment) AS BIGINT), detail FROM data_quality "
                       "ORDER BY kind, object_id").fetchall()
    return [(r[0], r[1], r[2], r[3]) for r in rows]


@OWN_EVENT
@pytest.mark.parametrize("swap", ["plan-switch", "add-on-swap"])
def test_the_replaced_items_row_says_where_the_history_ends_it(world: World, derive: Derive, own_event: bool,
                                                               swap: str) -> None:
    """Basic's 3 seats for pro's (or the storage add-on for support) on the 11th without prorations, the events
    beginning on the 21st and the renewal that bills the new item inside them: the last invoice before the events
    bills the old item, the first state they give has no such item. The sources disagree, so the row stays, at
    the moment the history ends the item (the new item's `created`), and its detail says so: the state the events
    or the sync give was not used from where they begin (the row said it was)."""
    account(world)
    if swap == "plan-switch":
        world.update("sub_1", ADDED, items=[("si_2", "pro", 3)], prorate=False)
        old, billed = "si_1", "3 × basic"
    else:
        world.update("sub_1", month(1, 3), items=[("si_1", "basic", 3), ("si_s", "store", 10)])
        world.update("sub_1", ADDED, items=[("si_1", "basic", 3), ("si_2", "support", 1)], prorate=False)
        old, billed = "si_s", "10 × store"
    window_begins(world, own_event)
    world.cycle("sub_1", month(2))
    con = derive(world, seen_at=month(2, 20), events=WINDOW)
    assert customer_mrr_at(con, "cus_1", ADDED) == customer_mrr_at(con, "cus_1", WINDOW)
    kind = "invoice_event_mismatch" if own_event else "invoice_snapshot_mismatch"
    ((k, item, moment, detail),) = quality(con)
    assert (k, item, moment) == (kind, old, ADDED)
    source = "the events show" if own_event else "the latest sync shows"
    assert f"bills item {old} ({billed}) but {source} no such item" in detail, detail
    assert ("the history ends it at 2024-02-11 00:00 UTC, the created of item si_2 added in its place (no "
            "stored event or credit shows when it changed)") in detail, detail
    assert "was used from" not in detail


def test_a_removal_nothing_dates_still_stands_from_where_the_events_begin(world: World, derive: Derive) -> None:
    """Control: the storage add-on deleted on the 11th without prorations and nothing added in its place: nothing
    dates the removal, so the sync's state stands from where the events begin, as the row still says."""
    account(world)
    world.update("sub_1", month(1, 3), items=[("si_1", "basic", 3), ("si_s", "store", 10)])
    world.update("sub_1", ADDED, items=[("si_1", "basic", 3)], prorate=False)
    window_begins(world, False)
    world.cycle("sub_1", month(2))
    con = derive(world, seen_at=month(2, 20), events=WINDOW)
    assert customer_mrr_at(con, "cus_1", WINDOW - 1) == 100
    assert customer_mrr_at(con, "cus_1", WINDOW) == 30
    ((k, item, moment, detail),) = quality(con)
    assert (k, item, moment) == ("invoice_snapshot_mismatch", "si_s", WINDOW)
    assert "the sync's state was used from 2024-02-21 00:00:00+00 on (no stored event shows when it changed)" \
        in detail, detail


@OWN_EVENT
def test_a_switch_whose_renewal_comes_before_the_events_leaves_no_row(world: World, derive: Derive,
                                                                      own_event: bool) -> None:
    """Control: the plan switch's renewal comes before the events: it no longer bills the old item, so the
    invoices before the events agree with the first state they give, and no row is made."""
    account(world)
    world.update("sub_1", ADDED, items=[("si_2", "pro", 3)], prorate=False)
    world.cycle("sub_1", month(2))
    world.subscribe("sub_o", "cus_o", [("si_o", "basic", 1)], month(2, 15))
    if own_event:
        world.update("sub_1", month(2, 17), metadata={"note": "renewed"})
    con = derive(world, seen_at=month(2, 20), events=month(2, 15))
    assert customer_mrr_at(con, "cus_1", ADDED) == 60
    assert quality(con) == []
