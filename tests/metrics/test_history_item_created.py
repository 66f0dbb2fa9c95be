"""A licensed item added without prorations before the events begin (design.md 3-4): no event shows it and no
invoice bills it until the next renewal, but the stored subscription item's `created` says when it was made, and
its MRR counts while it is in the subscription (design.md 4), so from then."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from builders import DAY, World, add_months, ts
from conftest import OneStore, customer_mrr_at

T0 = ts(2024, 1, 1)
Derive = Callable[..., duckdb.DuckDBPyConnection]
ADDED = add_months(T0, 1) + 10 * DAY  # the change, between the renewals of month(1) and month(2)

# The tests marked @one_store are each an account of one store, derived once (conftest.OneStore).
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()


def month(n: int, day: int = 0) -> int:
    return add_months(T0, n) + day * DAY


def account(w: World) -> World:
    """cus_1: 3 seats of basic (30.00) from T0, renewed at month(1); cus_o subscribes at month(2, 15), the oldest
    event kept when the events begin there."""
    w.customer("cus_1")
    w.customer("cus_o")
    w.product("prod_seat", unit_label="seat", family="core")
    w.product("prod_extra", unit_label="seat", family="core")
    w.product("prod_store", unit_label="gb", family="storage")
    w.product("prod_support", family="support")
    w.price("basic", "prod_seat", 1_000)
    w.price("pro", "prod_seat", 2_000)
    w.price("extra", "prod_extra", 1_000)
    w.price("store", "prod_store", 700)
    w.price("support", "prod_support", 5_000)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    w.cycle("sub_1", month(1))
    return w


def oldest_event(w: World) -> None:
    w.subscribe("sub_o", "cus_o", [("si_o", "basic", 1)], month(2, 15))


def movements(con: duckdb.DuckDBPyConnection, customer: str = "cus_1", account_id: str | None = None
              ) -> list[tuple[int, str, int]]:
    """The customer's movements (of one account when the store holds several)."""
    rows = con.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta FROM mrr_movements "
                       "WHERE customer_id = ? AND account_id = coalesce(?, account_id) ORDER BY occurred_at, movement",
                       [customer, account_id]).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def source_invoices(con: duckdb.DuckDBPyConnection, account_id: str) -> list[tuple[str]]:
    """The invoice each of the account's movements of si_2 is traced to."""
    return con.execute("SELECT source_invoice_id FROM mrr_movements WHERE subscription_item_id = 'si_2' "
                       "AND account_id = ?", [account_id]).fetchall()


EVENTS = pytest.mark.parametrize("events", [False, True], ids=["no-events", "events-begin-later"])
ADDED_CASES = {"cross-sell": (("si_2", "store", 10), "cross_sell"), "seat": (("si_2", "extra", 2), "seat_expansion")}
SWAPS = ["plan-switch", "add-on-swap"]
Case = tuple[int, bool | int, Any]  # (seen_at, events, what the test reads back)


def added_without_prorations(w: World, events: bool, added: tuple[str, str, int]) -> Case:
    """The add-on (or seats) of the 11th without prorations, first billed by the renewal of month(2); the events
    begin at month(2, 15), or none are kept. Returns the renewal too."""
    account(w)
    w.update("sub_1", ADDED, items=[("si_1", "basic", 3), added], prorate=False)
    renewal = w.cycle("sub_1", month(2))
    oldest_event(w)
    return month(2, 20), month(2, 15) if events else False, renewal


@EVENTS
@pytest.mark.parametrize("added", ADDED_CASES)
@one_store
def test_an_item_added_without_prorations_counts_from_its_creation(world: World, derive: Derive,
                                                                  events: bool, added: str) -> None:
    """An add-on (storage, 10 × 7.00) or more seats of another core product (2 × 10.00) added on the 11th without
    prorations: the renewal of month(2) bills it first. It counts from its `created`, at what it was first billed,
    and its movement is dated there (it was dated at the renewal: February's expansion showed in March)."""
    item, movement = ADDED_CASES[added]
    seen_at, events_from, renewal = added_without_prorations(world, events, item)
    con, acct = derive(world, seen_at=seen_at, events=events_from), world.account_id
    delta = {"store": 70, "extra": 20}[item[1]]
    assert movements(con, account_id=acct) == [(T0, "new", 30), (ADDED, movement, delta)], acct
    assert customer_mrr_at(con, "cus_1", ADDED - 1, acct) == 30, acct
    assert customer_mrr_at(con, "cus_1", ADDED, acct) == 30 + delta, acct
    assert customer_mrr_at(con, "cus_1", month(2, 1), acct) == 30 + delta, acct
    # (the change is traced to the invoice that first bills the item)
    assert source_invoices(con, acct) == [(renewal["id"],)], acct


@EVENTS
@one_store
def test_an_item_added_with_prorations_is_dated_by_its_proration(world: World, derive: Derive, events: bool) -> None:
    """The same add-on with prorations: its proration line dates it, as before (its `created` is that moment)."""
    account(world)
    world.update("sub_1", ADDED, items=[("si_1", "basic", 3), ("si_2", "store", 10)])
    world.cycle("sub_1", month(2))
    oldest_event(world)
    con = derive(world, seen_at=month(2, 20), events=month(2, 15) if events else False)
    assert movements(con) == [(T0, "new", 30), (ADDED, "cross_sell", 70)]
    assert customer_mrr_at(con, "cus_1", ADDED) == 100


def swap_without_prorations(world: World, swap: str) -> tuple[int, int, list[tuple[int, str, int]]]:
    """The update of ADDED without prorations: basic's 3 seats for pro's (``plan-switch``, 10.00 to 20.00 a seat),
    or a storage add-on (taken a month in) for support (``add-on-swap``). The customer's MRR before and after it,
    and the movements it should make."""
    if swap == "plan-switch":
        world.update("sub_1", ADDED, items=[("si_2", "pro", 3)], prorate=False)
        return 30, 60, [(T0, "new", 30), (ADDED, "upgrade", 30)]
    world.update("sub_1", month(1, 3), items=[("si_1", "basic", 3), ("si_s", "store", 10)])
    world.update("sub_1", ADDED, items=[("si_1", "basic", 3), ("si_2", "support", 1)], prorate=False)
    return 100, 80, [(T0, "new", 30), (month(1, 3), "cross_sell", 70), (ADDED, "cross_sell", 50),
                     (ADDED, "downgrade", -70)]


def replaced_without_prorations(w: World, events: bool, swap: str) -> Case:
    """:func:`swap_without_prorations`, renewed at month(2); the events begin at month(2, 15), or none are kept.
    Returns (before, after, expected movements) too."""
    account(w)
    out = swap_without_prorations(w, swap)
    w.cycle("sub_1", month(2))
    oldest_event(w)
    return month(2, 20), month(2, 15) if events else False, out


@EVENTS
@pytest.mark.parametrize("swap", SWAPS)
@one_store
def test_an_item_replaced_without_prorations_ends_when_its_successor_begins(world: World, derive: Derive,
                                                                            events: bool, swap: str) -> None:
    """One update without prorations deletes an item and adds another: basic's 3 seats for pro's (a plan switch,
    10.00 to 20.00 a seat), or a storage add-on for support. Nothing dates the deletion but the renewal that no
    longer bills it; the addition is dated by the new item's `created`, and the item the same renewal drops ends
    there too, so the two are never counted together (the customer is at 30 then 60, never 90)."""
    seen_at, events_from, (before, after, expected) = replaced_without_prorations(world, events, swap)
    con, acct = derive(world, seen_at=seen_at, events=events_from), world.account_id
    assert customer_mrr_at(con, "cus_1", ADDED - 1, acct) == before, acct
    assert customer_mrr_at(con, "cus_1", ADDED, acct) == after, acct
    assert customer_mrr_at(con, "cus_1", month(2, 1), acct) == after, acct
    assert movements(con, account_id=acct) == expected, acct


@EVENTS
@one_store
def test_only_an_items_first_appearance_moves_to_its_creation(world: World, derive: Derive, events: bool) -> None:
    """The storage add-on added on the 11th without prorations, then raised in place (same item, 10 to 20 GB) a
    month later, again without prorations: `created` dates the item, not its later quantity, which the renewal
    that bills it still dates (nothing else does)."""
    account(world)
    world.update("sub_1", ADDED, items=[("si_1", "basic", 3), ("si_2", "store", 10)], prorate=False)
    world.cycle("sub_1", month(2))
    world.update("sub_1", month(2, 5), items=[("si_1", "basic", 3), ("si_2", "store", 20)], prorate=False)
    world.cycle("sub_1", month(3))
    world.subscribe("sub_o", "cus_o", [("si_o", "basic", 1)], month(3, 15))
    con = derive(world, seen_at=month(3, 20), events=month(3, 15) if events else False)
    assert movements(con) == [(T0, "new", 30), (ADDED, "cross_sell", 70), (month(3), "resource_expansion", 70)]
    assert customer_mrr_at(con, "cus_1", month(2, 6)) == 100
    assert customer_mrr_at(con, "cus_1", month(3)) == 170


@one_store
def test_an_item_made_after_its_first_line_begins_is_not_moved(world: World, derive: Derive) -> None:
    """A subscription made on the 6th with backdate_start_date at T0: its first invoice bills the items from T0,
    before they were made. `created` only ever moves an item's start earlier: it counts from its first line."""
    account(world)
    world.objects["subscriptions"]["sub_1"]["created"] = T0 + 5 * DAY
    world.objects["subscriptions"]["sub_1"]["items"]["data"][0]["created"] = T0 + 5 * DAY
    oldest_event(world)
    con = derive(world, seen_at=month(2, 20), events=month(2, 15))
    assert movements(con) == [(T0, "new", 30)]
    assert customer_mrr_at(con, "cus_1", T0) == 30


@one_store
def test_a_first_subscriptions_items_count_from_its_start(world: World, derive: Derive) -> None:
    """A first subscription of two items, both made at its start: one `new` at the start, nothing earlier or
    later (their `created` is the first line's start)."""
    account(world)
    world.subscribe("sub_2", "cus_o", [("si_a", "basic", 2), ("si_b", "store", 5)], month(1, 20))
    world.cycle("sub_2", month(2, 20))
    con = derive(world, seen_at=month(3), events=False)
    assert movements(con, "cus_o") == [(month(1, 20), "new", 55)]
    assert con.execute("SELECT CAST(epoch(min(valid_from)) AS BIGINT) FROM derived_item_history "
                       "WHERE subscription_id = 'sub_2'").fetchall() == [(month(1, 20),)]


def test_an_item_added_without_prorations_through_the_sandbox(world: World, tmp_path: Path) -> None:
    """The add-on's case fetched by a full sync from the sandbox server (Stripe keeps the events of the last 30
    days, which begin after the renewal that first bills the item): the synced item's `created` dates it."""
    from test_ground_truth import derived_through_the_sandbox

    account(world)
    world.update("sub_1", ADDED, items=[("si_1", "basic", 3), ("si_2", "store", 10)], prorate=False)
    world.cycle("sub_1", month(2))
    oldest_event(world)
    seen_at = month(2, 15) + 30 * DAY - 3600
    with derived_through_the_sandbox(world.served(seen_at), tmp_path / "sandbox.duckdb") as con:
        assert con.execute("SELECT count(*) FROM events WHERE created < to_timestamp(?)",
                           [month(2, 15)]).fetchall() == [(0,)]
        assert movements(con) == [(T0, "new", 30), (ADDED, "cross_sell", 70)]
        assert customer_mrr_at(con, "cus_1", ADDED) == 100


@pytest.mark.parametrize("shards", [1, 2])
def test_the_incremental_path_dates_them_as_a_full_recompute_does(world: World, tmp_path: Path, shards: int) -> None:
    """The add-on of cus_1 and a plan switch of cus_2 (both without prorations, before the events begin); a later
    sync brings cus_1's next renewal: every derived table derived again incrementally is a full recompute's."""
    two_changes_without_prorations(world)
    world.cycle("sub_1", month(2))
    world.cycle("sub_2", month(2, 2))
    oldest_event(world)
    world.events = [e for e in world.events if e["created"] >= month(2, 15)]
    assert_a_later_sync_keeps_both_changes_dated(world, tmp_path, shards)



def two_changes_without_prorations(world: World) -> None:
    """cus_1's add-on (storage) and cus_2's plan switch (basic for pro) on the 11th, both without prorations."""
    account(world)
    world.customer("cus_2")
    world.subscribe("sub_2", "cus_2", [("si_21", "basic", 2)], T0 + 2 * DAY)
    world.cycle("sub_2", month(1, 2))
    world.update("sub_1", ADDED, items=[("si_1", "basic", 3), ("si_2", "store", 10)], prorate=False)
    world.update("sub_2", ADDED + 3600, items=[("si_22", "pro", 2)], prorate=False)


def assert_a_later_sync_keeps_both_changes_dated(world: World, tmp_path: Path, shards: int) -> None:
    """A sync after sub_1's next renewal derives cus_1 alone again, equal to a full recompute, and the two changes
    of the 11th (cus_1's add-on, cus_2's plan switch) stay dated then."""
    import copy

    from test_incremental import assert_incremental_equals_full, later_sync

    before = copy.deepcopy(world)
    world.cycle("sub_1", month(3))
    changed = later_sync(world, {"cus_1"}, {"sub_1"}, month(2, 20))
    n, full = assert_incremental_equals_full(tmp_path, before, changed, month(2, 20), month(3, 2), shards)
    assert n == 1
    moves = [r for r in full["view mrr_movements"] if "'cross_sell'" in r or "'upgrade'" in r]
    assert len(moves) == 2 and all("2024-02-11" in r for r in moves), moves

# --- the renewal that first bills it comes after the events begin -----------------------------------------------
# The events begin on the 21st (cus_o's signup there is the oldest stored), after the change of the 11th and before
# the renewal of month(2). The first state they give lists the new item (the first event's state before, or the
# snapshot of a subscription with no event of its own): it was dated there, ten days late.
WINDOW = month(1, 20)
OWN_EVENT = pytest.mark.parametrize("own_event", [False, True], ids=["snapshot-first-state", "event-first-state"])


def window_begins(w: World, own_event: bool) -> None:
    """cus_o's signup at WINDOW; with ``own_event``, sub_1 has an event of its own inside the window too (its
    metadata set on the 25th: the event's state before is sub_1's first state in the window)."""
    w.subscribe("sub_o", "cus_o", [("si_o", "basic", 1)], WINDOW)
    if own_event:
        w.update("sub_1", month(1, 24), metadata={"note": "renewal due"})


def added_before_the_events(w: World, own_event: bool, added: tuple[str, str, int], billed: bool) -> Case:
    """The add-on (or seats) of the 11th without prorations, the events beginning at WINDOW; the renewal that
    first bills it inside them, or not yet (the sync on month(1, 27)). Returns the renewal (or None) too."""
    account(w)
    w.update("sub_1", ADDED, items=[("si_1", "basic", 3), added], prorate=False)
    window_begins(w, own_event)
    renewal = w.cycle("sub_1", month(2)) if billed else None
    return month(2, 20) if billed else month(1, 27), WINDOW, renewal


@OWN_EVENT
@pytest.mark.parametrize("added", ADDED_CASES)
@pytest.mark.parametrize("billed", [True, False], ids=["billed-inside", "not-billed-yet"])
@one_store
def test_an_item_added_before_the_events_first_billed_after_they_begin(world: World, derive: Derive,
                                                                        own_event: bool, added: str, billed: bool
                                                                        ) -> None:
    """The add-on (or the seats) of the 11th without prorations, the events beginning on the 21st: it counts from
    its `created`, not from the events' first state; the renewal that first bills it, inside the events, is its
    source (not yet billed at the sync, as on an annual plan: the first state that lists it is)."""
    item, movement = ADDED_CASES[added]
    seen_at, events_from, renewal = added_before_the_events(world, own_event, item, billed)
    con, acct = derive(world, seen_at=seen_at, events=events_from), world.account_id
    delta = {"store": 70, "extra": 20}[item[1]]
    assert movements(con, account_id=acct) == [(T0, "new", 30), (ADDED, movement, delta)], acct
    assert customer_mrr_at(con, "cus_1", ADDED - 1, acct) == 30, acct
    assert customer_mrr_at(con, "cus_1", ADDED, acct) == 30 + delta, acct
    assert customer_mrr_at(con, "cus_1", WINDOW, acct) == 30 + delta, acct
    if billed:
        assert renewal is not None
        assert customer_mrr_at(con, "cus_1", month(2, 1), acct) == 30 + delta, acct
        assert source_invoices(con, acct) == [(renewal["id"],)], acct


def replaced_before_the_events(w: World, own_event: bool, swap: str) -> Case:
    """:func:`swap_without_prorations`, the events beginning at WINDOW, the renewal that bills the new item inside
    them. Returns (before, after, expected movements) too."""
    account(w)
    out = swap_without_prorations(w, swap)
    window_begins(w, own_event)
    w.cycle("sub_1", month(2))
    return month(2, 20), WINDOW, out


@OWN_EVENT
@pytest.mark.parametrize("swap", SWAPS)
@one_store
def test_an_item_replaced_before_the_events_ends_when_its_successor_begins(world: World, derive: Derive,
                                                                            own_event: bool, swap: str) -> None:
    """The plan switch (basic's 3 seats for pro's) or the add-on swap (storage for support) of the 11th without
    prorations, the renewal that bills the new item inside the events: the first state they give lists the new item
    and no longer the old one, which nothing else dates (no credit). Both move to the new item's `created`
    together: the customer is at 30 then 60 (100 then 80), never both items at once, nor the switch ten days late."""
    seen_at, events_from, (before, after, expected) = replaced_before_the_events(world, own_event, swap)
    con, acct = derive(world, seen_at=seen_at, events=events_from), world.account_id
    assert customer_mrr_at(con, "cus_1", ADDED - 1, acct) == before, acct
    assert customer_mrr_at(con, "cus_1", ADDED, acct) == after, acct
    assert customer_mrr_at(con, "cus_1", WINDOW, acct) == after, acct
    assert customer_mrr_at(con, "cus_1", month(2, 1), acct) == after, acct
    assert movements(con, account_id=acct) == expected, acct


@one_store
def test_an_item_added_with_prorations_before_the_events_is_dated_by_its_proration(world: World,
                                                                                   derive: Derive) -> None:
    """Control: the add-on of the 11th with prorations, the events beginning on the 21st: its proration line,
    before the events, dates it (and stays its source)."""
    account(world)
    world.update("sub_1", ADDED, items=[("si_1", "basic", 3), ("si_2", "store", 10)])
    window_begins(world, False)
    world.cycle("sub_1", month(2))
    con = derive(world, seen_at=month(2, 20), events=WINDOW)
    assert movements(con) == [(T0, "new", 30), (ADDED, "cross_sell", 70)]
    assert customer_mrr_at(con, "cus_1", ADDED) == 100
    proration = [i["id"] for i in world.objects["invoices"].values() if i["billing_reason"] == "subscription_update"]
    assert con.execute("SELECT source_invoice_id FROM mrr_movements WHERE subscription_item_id = 'si_2'"
                       ).fetchall() == [(proration[0],)]


@one_store
def test_an_item_added_inside_the_events_is_dated_by_them(world: World, derive: Derive) -> None:
    """Control: the add-on added without prorations on the 25th, inside the events, billed first by the renewal of
    month(2): its event dates it, as before."""
    account(world)
    window_begins(world, False)
    world.update("sub_1", month(1, 24), items=[("si_1", "basic", 3), ("si_2", "store", 10)], prorate=False)
    event = world.events[-1]["id"]
    world.cycle("sub_1", month(2))
    con = derive(world, seen_at=month(2, 20), events=WINDOW)
    assert movements(con) == [(T0, "new", 30), (month(1, 24), "cross_sell", 70)]
    assert customer_mrr_at(con, "cus_1", month(1, 24) - 1) == 30
    assert con.execute("SELECT source_event_id FROM mrr_movements WHERE subscription_item_id = 'si_2'"
                       ).fetchall() == [(event,)]


@pytest.mark.parametrize("case", ["backdated", "made-before-its-start"])
@one_store
def test_an_items_creation_before_its_subscriptions_start_moves_nothing(world: World, derive: Derive,
                                                                        case: str) -> None:
    """Controls: cus_2 subscribes on the 25th, inside the events. Backdated to the 6th (backdate_start_date), its
    first invoice bills from then, before the events and before the item was made: it counts from its start, as
    that line says. An item whose stored `created` (the 16th) comes before its subscription's start: it counts from
    the start (the events' `customer.subscription.created`), never before the subscription began."""
    account(world)
    window_begins(world, False)
    world.customer("cus_2")
    start = month(1, 5) if case == "backdated" else month(1, 24)
    sub = world.subscribe("sub_2", "cus_2", [("si_21", "basic", 2)], month(1, 24), invoice=False, event=False)
    sub["start_date"] = start
    if case == "made-before-its-start":
        sub["items"]["data"][0]["created"] = month(1, 15)
    world.event("customer.subscription.created", month(1, 24), sub)
    world.invoice_for("sub_2", month(1, 24), "subscription_create", period_start=start)
    con = derive(world, seen_at=month(2, 20), events=WINDOW)
    assert movements(con, "cus_2") == [(start, "new", 20)]
    assert customer_mrr_at(con, "cus_2", start - 1) == 0
    assert con.execute("SELECT CAST(epoch(min(valid_from)) AS BIGINT) FROM derived_item_history "
                       "WHERE subscription_id = 'sub_2'").fetchall() == [(start,)]


@OWN_EVENT
@one_store
def test_an_item_there_since_its_subscription_began_counts_from_its_start(world: World, derive: Derive,
                                                                        own_event: bool) -> None:
    """Control: cus_2's subscription of the 6th, before the events, its first invoice then: its items count from
    its start, and nothing moves when the events begin."""
    account(world)
    world.customer("cus_2")
    world.subscribe("sub_2", "cus_2", [("si_21", "basic", 2), ("si_22", "store", 5)], month(1, 5))
    window_begins(world, False)
    if own_event:
        world.update("sub_2", month(1, 24), metadata={"note": "x"})
    world.cycle("sub_2", month(2, 5))
    con = derive(world, seen_at=month(2, 20), events=WINDOW)
    assert movements(con, "cus_2") == [(month(1, 5), "new", 55)]
    assert con.execute("SELECT subscription_item_id, CAST(epoch(min(valid_from)) AS BIGINT) FROM derived_item_history "
                       "WHERE subscription_id = 'sub_2' GROUP BY ALL ORDER BY 1").fetchall() == [
        ("si_21", month(1, 5)), ("si_22", month(1, 5))]


@OWN_EVENT
@one_store
def test_an_item_changed_in_place_inside_the_events_before_its_first_line(world: World, derive: Derive,
                                                                          own_event: bool) -> None:
    """The add-on of the 11th (10 GB, without prorations) raised to 20 GB on the 26th, inside the events and again
    without prorations, before the renewal that first bills it (20 GB): from its `created` it counts at what the
    events' first state lists (10 GB), not at what that later line bills, and the event dates the raise."""
    account(world)
    world.update("sub_1", ADDED, items=[("si_1", "basic", 3), ("si_2", "store", 10)], prorate=False)
    window_begins(world, own_event)
    world.update("sub_1", month(1, 25), items=[("si_1", "basic", 3), ("si_2", "store", 20)], prorate=False)
    world.cycle("sub_1", month(2))
    con = derive(world, seen_at=month(2, 20), events=WINDOW)
    assert movements(con) == [(T0, "new", 30), (ADDED, "cross_sell", 70), (month(1, 25), "resource_expansion", 70)]
    assert customer_mrr_at(con, "cus_1", WINDOW) == 100
    assert customer_mrr_at(con, "cus_1", month(2, 1)) == 170


@pytest.mark.parametrize("shards", [1, 2])
def test_the_incremental_path_dates_them_as_a_full_recompute_does_inside_the_events(world: World, tmp_path: Path,
                                                                                    shards: int) -> None:
    """The add-on of cus_1 and a plan switch of cus_2 (both without prorations, before the events begin), their
    renewals inside the events; a later sync brings cus_1's next renewal: every derived table derived again
    incrementally is a full recompute's, both changes dated on the 11th."""
    two_changes_without_prorations(world)
    window_begins(world, False)
    world.cycle("sub_1", month(2))
    world.cycle("sub_2", month(2, 2))
    world.events = [e for e in world.events if e["created"] >= WINDOW]
    assert_a_later_sync_keeps_both_changes_dated(world, tmp_path, shards)
