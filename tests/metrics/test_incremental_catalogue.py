"""The incremental recompute against a full one, for what touches the catalogue or the data-quality rows: a
sync of only products, prices or coupons, rows naming a price or an item seen only on an invoice line, and a
discount removed with no event (whose end the owner's invoices date). Apart from test_incremental.py so that
the two files run side by side."""

from __future__ import annotations

import copy
import datetime as dt
import shutil
from pathlib import Path

import pytest
from builders import World, ts
from test_bridge import SEEN, book
from test_incremental import (
    ONE_SCOPE,
    SHARDS,
    assert_incremental_equals_full,
    derived_contents,
    later_sync,
    new_store,
    recomputed_before,
    world_key,
)

from stripe_churn.metrics.incremental import recompute_changed
from stripe_churn.metrics.runner import recompute
from stripe_churn.settings import Settings
from stripe_churn.store.db import open_store

# The full recompute's derived contents and rows of removed_with_no_event, once per worlds and moment (both shard
# counts of a test compare with it).
_FULL_UNLISTED: dict[str, tuple[dict[str, list[str]], list[tuple[object, ...]]]] = {}


def removed_with_no_event(before: World, changed: World, w: World, tmp_path: Path, later: int,
                          shards: int) -> list[list[tuple[object, ...]]]:
    """Load ``before``, then ``changed`` as a later full sync's listing at ``later`` (flagging what it no longer
    lists), into one store derived again incrementally and one recomputed in full; assert every derived table is
    the same in both, and give each store's discount_end_estimated rows (kind, object, moment), then its removed
    discounts' ends (``("end", discount, valid_to, removal_event_id)``)."""
    from stripe_churn.store.load import mark_unlisted_children

    at = dt.datetime.fromtimestamp(later, tz=dt.UTC)
    results, estimated = [], []
    for name, incremental in (("incremental", True), ("full", False)):
        key = world_key(before, changed, later, w.account_id)
        if not incremental and key in _FULL_UNLISTED:  # (the full recompute of the other shard count)
            results.append(_FULL_UNLISTED[key][0])
            estimated.append(_FULL_UNLISTED[key][1])
            continue
        if incremental:
            shutil.copyfile(recomputed_before(tmp_path, before, SEEN, Settings()), tmp_path / f"{name}.duckdb")
            con = open_store(tmp_path / f"{name}.duckdb")
        else:
            con = new_store(tmp_path / f"{name}.duckdb")
            before.load(con, seen_at=SEEN)
        changed.load(con, seen_at=later)
        mark_unlisted_children(con, w.account_id, at, at)
        if incremental:
            assert recompute_changed(con, Settings(), at, shards=shards) >= 1
        else:
            recompute(con, Settings())
        results.append(derived_contents(con))
        estimated.append(con.execute("SELECT kind, object_id, CAST(epoch(moment) AS BIGINT) FROM data_quality "
                                     "WHERE kind = 'discount_end_estimated'").fetchall()
                         + con.execute("SELECT 'end', d.discount_id, CAST(epoch(d.valid_to) AS BIGINT), "
                                       "d.removal_event_id FROM derived_discount_spans d JOIN discounts USING "
                                       "(account_id) WHERE discounts.id = d.discount_id AND discounts.deleted "
                                       "ORDER BY d.discount_id").fetchall())
        con.close()
        if not incremental:
            _FULL_UNLISTED[key] = (results[-1], estimated[-1])
    assert results[0] == results[1]
    return estimated


@SHARDS
def test_a_discount_removed_with_no_event_equals_a_full_recompute(world: World, tmp_path: Path, shards: int) -> None:
    """A forever discount taken off with no event, flagged deleted by a full sync's listing: 35 dates its end by
    its owner's invoices, whose JSON the scope must then hold (incremental._READ_RAW), to give the full
    recompute's rows."""

    w = book(world)
    w.coupon("tenth", percent_off=10)
    d = w.discount("tenth", ts(2024, 1, 5), customer="cus_a", subscription="sub_a")
    w.objects["subscriptions"]["sub_a"]["discounts"] = [d["id"]]
    for inv in w.objects["invoices"].values():
        if inv["parent"]["subscription_details"]["subscription"] == "sub_a" and inv["created"] >= d["start"]:
            inv["discounts"] = [d["id"]]
    before = copy.deepcopy(w)
    w.update("sub_a", ts(2024, 5, 12), discounts=[], event=False)
    w.cycle("sub_a", ts(2024, 5, 20))
    changed = later_sync(w, {"cus_a"}, {"sub_a"}, ts(2024, 5, 12))
    later = ts(2024, 6, 2)
    for rows in removed_with_no_event(before, changed, w, tmp_path, later, shards):
        assert [r[:2] for r in rows] == [("discount_end_estimated", d["id"]), ("end", d["id"])]


@SHARDS
def test_an_item_discount_removed_with_no_event_equals_a_full_recompute(world: World, tmp_path: Path,
                                                                       shards: int) -> None:
    """A forever discount on one item taken off with no event, flagged deleted by a full sync's listing: 35 dates
    its end by the item's invoice lines (Stripe bills an item's discount there), whose JSON the scope must then
    hold (incremental._READ_RAW), to give the full recompute's rows: the end at the first renewal billing the
    item without it."""

    w = book(world)
    w.coupon("tenth", percent_off=10)
    d = w.discount("tenth", ts(2024, 3, 10), customer="cus_a", subscription="sub_a", subscription_item="si_a2")
    w.objects["subscriptions"]["sub_a"]["items"]["data"][1]["discounts"] = [d["id"]]
    for inv in w.objects["invoices"].values():
        for line in inv["lines"]["data"]:
            if (line["parent"]["subscription_item_details"]["subscription_item"] == "si_a2"
                    and not line["parent"]["subscription_item_details"]["proration"]):
                line["discounts"] = [dict(d)]
    before = copy.deepcopy(w)
    w.objects["subscriptions"]["sub_a"]["items"]["data"][1]["discounts"] = []
    w.cycle("sub_a", ts(2024, 5, 20))
    changed = later_sync(w, {"cus_a"}, {"sub_a"}, ts(2024, 5, 12))
    later = ts(2024, 6, 2)
    for rows in removed_with_no_event(before, changed, w, tmp_path, later, shards):
        assert rows == [("discount_end_estimated", d["id"], ts(2024, 5, 20)), ("end", d["id"], ts(2024, 5, 20), None)]


@SHARDS
def test_an_item_discount_removed_by_an_update_inside_the_events_equals_a_full_recompute(world: World, tmp_path: Path,
                                                                                        shards: int) -> None:
    """A forever discount on one item taken off inside the events by a subscription update, with no discount event
    of its own, then flagged deleted by a full sync's listing: 35 dates its end at that update by the item lists of
    the subscription's events, whose JSON the scope must then hold (incremental._READ_RAW), to give the full
    recompute's rows: the end at the update, no estimate."""

    w = book(world)
    w.coupon("tenth", percent_off=10)
    d = w.discount("tenth", ts(2024, 3, 10), customer="cus_a", subscription="sub_a", subscription_item="si_a2")
    sub = w.objects["subscriptions"]["sub_a"]
    sub["items"]["data"][1]["discounts"] = [d["id"]]
    before = copy.deepcopy(w)
    prev = copy.deepcopy(sub)
    sub["items"]["data"][1]["discounts"] = []
    update = w.event("customer.subscription.updated", ts(2024, 5, 25), sub, prev)
    changed = later_sync(w, {"cus_a"}, {"sub_a"}, ts(2024, 5, 21))
    later = ts(2024, 6, 2)
    for rows in removed_with_no_event(before, changed, w, tmp_path, later, shards):
        assert rows == [("end", d["id"], ts(2024, 5, 25), update["id"])]


def catalogue_world(w: World) -> World:
    w.product("prod_core", unit_label="seat", family="core")
    w.price("basic_usd", "prod_core", 1_000)
    w.customer("cus_a")
    w.coupon("co_ten", percent_off=10)
    w.subscribe("sub_a", "cus_a", [("si_a1", "basic_usd", 2)], ts(2024, 5, 1), discounts=[
        w.discount("co_ten", ts(2024, 5, 1), customer="cus_a", subscription="sub_a", did="di_a")["id"]])
    return w


@SHARDS
@pytest.mark.parametrize("change", ["new-price", "changed-coupon"])
def test_a_sync_of_only_the_catalogue(world: World, tmp_path: Path, shards: int, change: str) -> None:
    """A sync that brings a product, price or coupon and no customer: a new price joins the derived catalogue,
    and a coupon in use that changed derives the whole account again (it was kept at its old terms)."""
    w = catalogue_world(world)
    before = copy.deepcopy(w)
    if change == "new-price":
        w.price("pro_usd", "prod_core", 2_000)
    else:
        w.objects["coupons"]["co_ten"]["percent_off"] = 20
    changed = later_sync(w, set(), set(), ts(2024, 6, 1))
    n, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 6, 2), shards)
    assert n == (0 if change == "new-price" else 1)
    if change == "changed-coupon":
        assert any("Decimal('16.0000')" in r for r in full["view customer_mrr"])  # 2 x 10.00 less 20%


@pytest.mark.parametrize("shards", [2])
@pytest.mark.parametrize("tiered", [False, True], ids=["per-unit", "tiered"])
def test_a_price_known_only_from_an_item_on_a_later_shard_is_kept(world: World, tmp_path: Path, shards: int,
                                                                   tiered: bool) -> None:
    """Two customers derived again in two shards; the one in the second shard (cus_y: hash % 2 = 1) has an item at
    a price the store has only embedded in the item. Its terms (and tiers) are kept as a full recompute keeps
    them: they were taken from the first shard alone, which never saw the item."""
    import duckdb

    assert duckdb.connect().execute("SELECT hash('cus_y') % 2, hash('cus_c') % 2").fetchall() == [(1, 0)]
    w = catalogue_world(world)
    w.customer("cus_c")
    w.subscribe("sub_c", "cus_c", [("si_c1", "basic_usd", 1)], ts(2024, 5, 3))
    before = copy.deepcopy(w)
    if tiered:
        w.price("secret_usd", "prod_core", None, tiers=[{"up_to": 5, "unit_amount": 1_000, "flat_amount": None},
                                                      {"up_to": None, "unit_amount": 800, "flat_amount": None}],
                tiers_mode="graduated")
    else:
        w.price("secret_usd", "prod_core", 3_000)
    w.customer("cus_y")
    w.subscribe("sub_y", "cus_y", [("si_y1", "secret_usd", 7)], ts(2024, 5, 25))
    w.update("sub_c", ts(2024, 5, 26), items=[("si_c1", "basic_usd", 4)])
    changed = later_sync(w, {"cus_c", "cus_y"}, {"sub_c", "sub_y"}, ts(2024, 5, 25))
    del changed.objects["prices"]["secret_usd"]
    n, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 6, 2), shards)
    assert n == 2
    assert any("'secret_usd'" in r for r in full["derived_price_terms"])


@ONE_SCOPE
@pytest.mark.parametrize("case", ["metered-price-without-amount", "price-only-embedded", "item-only-on-a-line"])
def test_data_quality_rows_about_prices_and_items_seen_only_on_lines(world: World, tmp_path: Path, shards: int,
                                                                    case: str) -> None:
    """Data-quality rows that name a price (its terms missing, or found only in an item) or an item known only
    from an invoice line follow the customers derived again like the others."""
    w = catalogue_world(world)
    w.product("prod_analytics", family="analytics")
    w.price("analytics_usd", "prod_analytics", 5_000)
    w.customer("cus_b")
    w.subscribe("sub_b", "cus_b", [("si_b0", "basic_usd", 1)], ts(2024, 5, 3))
    before = copy.deepcopy(w)
    if case == "metered-price-without-amount":
        w.price("api_usd", "prod_core", None, usage_type="metered")
        w.cycle("sub_a", ts(2024, 6, 1))
        changed = later_sync(w, {"cus_a"}, {"sub_a"}, ts(2024, 6, 1))
        kind = "missing_price_terms"
    elif case == "price-only-embedded":
        w.price("secret_usd", "prod_core", 3_000)
        w.customer("cus_c")
        w.subscribe("sub_c", "cus_c", [("si_c1", "secret_usd", 1)], ts(2024, 5, 25))
        changed = later_sync(w, {"cus_c"}, {"sub_c"}, ts(2024, 5, 25))
        del changed.objects["prices"]["secret_usd"]
        kind = "missing_price"
    else:
        # an item added with its proration invoice synced and dropped again, both events lost: the subscription
        # the sync brings never lists it
        w.update("sub_b", ts(2024, 5, 25), items=[("si_b0", "basic_usd", 1), ("si_b1", "analytics_usd", 3)],
                 event=False)
        w.update("sub_b", ts(2024, 5, 28), items=[("si_b0", "basic_usd", 1)], event=False, prorate=False)
        changed = later_sync(w, {"cus_b"}, {"sub_b"}, ts(2024, 5, 25))
        kind = "invoice_event_mismatch"
    _, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 6, 2), shards)
    assert any(f"'{kind}'" in r for r in full["derived_data_quality"])


@ONE_SCOPE
def test_a_switch_at_equal_mrr_equals_a_full_recompute(world: World, tmp_path: Path, shards: int) -> None:
    """A billing run that brings a switch at equal MRR (2 x 10.00 to 1 x 20.00: no movement, a row of kind 'same'
    for the segments) leaves every derived table as a full recompute does, the monthly ledger included (a period
    with only that switch has no ledger row either way)."""
    w = world
    w.product("prod_core", unit_label="seat", family="core")
    w.price("basic", "prod_core", 1_000)
    w.price("basic2", "prod_core", 2_000)
    w.customer("cus_e")
    w.customer("cus_o")
    w.subscribe("sub_e", "cus_e", [("si_e", "basic", 2)], ts(2024, 1, 5))
    w.subscribe("sub_o", "cus_o", [("si_o", "basic", 1)], ts(2024, 1, 7))
    before = copy.deepcopy(w)
    w.cycle("sub_e", ts(2024, 2, 5))
    w.update("sub_e", ts(2024, 2, 10), items=[("si_e", "basic2", 1)])
    changed = later_sync(w, {"cus_e"}, {"sub_e"}, ts(2024, 2, 1))
    n, full = assert_incremental_equals_full(tmp_path, before, changed, ts(2024, 2, 1), ts(2024, 3, 20), shards)
    assert n == 1
    assert any("'same'" in r for r in full["derived_transition_states"])
