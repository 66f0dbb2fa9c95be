"""A discount on one item whose item is itself deleted (design.md 4: an item-level discount applies to that item):
the discount cannot outlast its item, so when a subscription update inside the events deletes the item, with no
customer.discount.deleted event, the discount ends at that update (the first event whose complete item list no
longer has the item), not at an invoice or the sync, and its end is no estimate."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from builders import World, ts
from conftest import OneStore, customer_mrr_at, make_settings
from test_mrr_rules import T0, discounted, load_flagged, month

from stripe_churn.metrics.runner import recompute
from stripe_churn.store.load import mark_unlisted_children

Derive = Callable[..., duckdb.DuckDBPyConnection]

# The tests marked @one_store are each an account of one store, derived once (conftest.OneStore).
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()


def build_removed(world: World, *, prorate: bool = False, renewal: bool = False, lists: str = "with-discounts",
                  events: int = month(1, 5)) -> tuple[Any, Any]:
    """si_a (4 × 10.00, 50% off for ever: 70.00 with si_b's 50.00) deleted on month(1, 10) by an update; the events
    begin at month(1, 5) (a metadata update whose item list shows the discount on si_a), or at ``events`` with
    cus_o's signup. Returns (the discount, the update)."""
    discounted(world, {"percent_off": 50, "duration": "forever"}, item_level=True)
    (d,) = world.objects["discounts"].values()
    world.cycle("sub_1", month(1))
    for inv in world.objects["invoices"].values():
        for line in inv["lines"]["data"]:
            if line["parent"]["subscription_item_details"]["subscription_item"] == "si_a":
                line["discounts"] = [d["id"]]
    world.update("sub_1", month(1, 5), metadata={"team": "north"})
    world.update("sub_1", month(1, 10), items=[("si_b", "price_b", 1)], prorate=prorate)
    update = world.events[-1]
    if lists == "without-discounts":  # (item lists that say nothing of the items' discounts: an older shape)
        for e in world.events:
            for items in (e["data"]["object"]["items"], e["data"].get("previous_attributes", {}).get("items")):
                for it in (items or {}).get("data", []):
                    it.pop("discounts", None)
    elif lists == "cut-short":  # (the update's lists leave si_a out: has_more)
        for items in (update["data"]["object"]["items"], update["data"]["previous_attributes"]["items"]):
            items["data"], items["has_more"] = [i for i in items["data"] if i["id"] != "si_a"], True
    if renewal:
        world.cycle("sub_1", month(2))  # (bills si_b alone)
    if events > month(1, 5):  # (cus_o's signup then: the oldest event stored)
        world.customer("cus_o")
        world.subscribe("sub_o", "cus_o", [("si_o", "price_b", 1)], events)
    return d, update


# (the cases of the last test below, which nothing dates: build_removed's events and lists)
NOTHING_DATES = {"list-cut-short": (month(1, 5), "cut-short"),
                 "deleted-before-the-events": (month(1, 20), "with-discounts")}


@pytest.mark.parametrize("prorate", [False, True], ids=["no-prorations", "prorated"])
@pytest.mark.parametrize("renewal", [False, True], ids=["no-renewal", "then-a-renewal"])
@pytest.mark.parametrize("lists", ["with-discounts", "without-discounts"])
@one_store
def test_an_items_discount_ends_with_the_item_an_update_deletes(world: World, derive: Derive,
                                                                prorate: bool, renewal: bool, lists: str) -> None:
    """The update deleting si_a is the discount's end and its removal event; the item's MRR leaves at the
    discounted 20.00 with it, one movement, and no estimate is reported (the discount ended at the sync that
    found it gone, two months later, with a discount_end_estimated row; no invoice line of si_a came after)."""
    _, update = build_removed(world, prorate=prorate, renewal=renewal, lists=lists)
    store = derive(world, seen_at=month(3), events=month(1, 5), load=load_flagged)
    account = world.account_id
    assert store.execute("SELECT CAST(epoch(valid_to) AS BIGINT), removal_event_id, end_dated_by "
                         "FROM derived_discount_spans WHERE account_id = ?",
                         [account]).fetchall() == [(month(1, 10), update["id"], None)], account
    assert customer_mrr_at(store, "cus_1", month(1, 10) - 1, account) == Decimal("70.0000"), account
    assert customer_mrr_at(store, "cus_1", month(1, 10), account) == Decimal("50.0000"), account
    moves = store.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, subscription_item_id, mrr_delta, "
                          "source_event_id FROM mrr_movements WHERE account_id = ? ORDER BY occurred_at",
                          [account]).fetchall()
    assert moves == [(T0, "new", "si_b", Decimal("70.0000"), None),
                     (month(1, 10), "downgrade", "si_a", Decimal("-20.0000"), update["id"])], (account, moves)
    assert store.execute("SELECT kind, detail FROM data_quality WHERE account_id = ?", [account]).fetchall() == [], (
        account)


def test_a_discount_taken_off_before_its_item_is_deleted_ends_when_taken_off(world: World, store: Any) -> None:
    """Control: the discount taken off si_a by an update of month(1, 7), the item deleted on month(1, 10): the
    discount ends at the first update, as before."""
    discounted(world, {"percent_off": 50, "duration": "forever"}, item_level=True)
    sub = world.objects["subscriptions"]["sub_1"]
    world.update("sub_1", month(1, 5), metadata={"team": "north"})
    before = copy.deepcopy(sub)
    sub["items"]["data"][0]["discounts"] = []
    off = world.event("customer.subscription.updated", month(1, 7), sub, before)
    world.update("sub_1", month(1, 10), items=[("si_b", "price_b", 1)], prorate=False)
    world.load(store, seen_at=month(3), events=month(1, 5))
    at = dt.datetime.fromtimestamp(month(3), tz=dt.UTC)
    mark_unlisted_children(store, world.account_id, at, at)
    recompute(store, make_settings())
    assert store.execute("SELECT CAST(epoch(valid_to) AS BIGINT), removal_event_id, end_dated_by "
                         "FROM derived_discount_spans").fetchall() == [(month(1, 7), off["id"], None)]
    assert customer_mrr_at(store, "cus_1", month(1, 7)) == Decimal("90.0000")
    assert customer_mrr_at(store, "cus_1", month(1, 10)) == Decimal("50.0000")
    assert store.execute("SELECT count(*) FROM data_quality").fetchall() == [(0,)]


@pytest.mark.parametrize("case", ["list-cut-short", "deleted-before-the-events"])
@one_store
def test_an_items_discount_nothing_dates_keeps_its_estimate(world: World, derive: Derive, case: str) -> None:
    """Controls: the update's item lists cut short (has_more) leave si_a out, or the events begin after the
    deletion: no complete list shows the item gone after one that has it, so nothing in the events dates the
    discount's end, and it stays the sync's estimate with its discount_end_estimated row."""
    events, lists = NOTHING_DATES[case]
    d, _ = build_removed(world, events=events, lists=lists)
    store = derive(world, seen_at=month(3), events=events, load=load_flagged)
    account = world.account_id
    assert store.execute("SELECT CAST(epoch(valid_to) AS BIGINT), removal_event_id, end_dated_by "
                         "FROM derived_discount_spans WHERE account_id = ?",
                         [account]).fetchall() == [(month(3), None, "sync")], account
    assert store.execute("SELECT kind, object_id, CAST(epoch(moment) AS BIGINT) FROM data_quality "
                         "WHERE kind = 'discount_end_estimated' AND account_id = ?", [account]).fetchall() == [
        ("discount_end_estimated", d["id"], month(3))], account


@pytest.mark.parametrize("shards", [1, 2])
def test_the_incremental_path_ends_it_with_its_item_too(world: World, tmp_path: Path, shards: int) -> None:
    """A later sync brings the update that deletes sub_a's discounted si_a2 (the full sync's listing flags the
    discount deleted): derived again incrementally, every derived table is a full recompute's, and the discount
    ends at that update there too (the scope holds the subscription's events' JSON)."""
    from test_bridge import book
    from test_incremental import later_sync
    from test_incremental_catalogue import removed_with_no_event

    w = book(world)
    w.coupon("tenth", percent_off=10)
    d = w.discount("tenth", ts(2024, 3, 10), customer="cus_a", subscription="sub_a", subscription_item="si_a2")
    w.objects["subscriptions"]["sub_a"]["items"]["data"][1]["discounts"] = [d["id"]]
    w.update("sub_a", ts(2024, 4, 1), metadata={"seen": "yes"})  # (its item list shows the discount on si_a2)
    before = copy.deepcopy(w)
    w.update("sub_a", ts(2024, 5, 25), items=[("si_a1", "pro_usd", 5), ("si_a3", "api_usd", None)], prorate=False)
    update = w.events[-1]
    changed = later_sync(w, {"cus_a"}, {"sub_a"}, ts(2024, 5, 21))
    for rows in removed_with_no_event(before, changed, w, tmp_path, ts(2024, 6, 2), shards):
        assert rows == [("end", d["id"], ts(2024, 5, 25), update["id"])]
