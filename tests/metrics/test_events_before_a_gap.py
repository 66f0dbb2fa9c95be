"""Events stored before a gap in them (design.md 3). A sync after more than Stripe's 30 days away finds the events
in between lost; event coverage starts after the gap, but the events stored before it stay, and where they overlap
the invoices events win: a change made without prorations is dated by its event, not by the renewal that bills
it. In the gap itself nothing but the invoices and the items' `created` speak."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import pytest
from builders import DAY, World, add_months, ts
from conftest import make_settings, record_stripes_clock

from stripe_churn.metrics.runner import recompute
from stripe_churn.store.load import upsert_objects

T0 = ts(2026, 1, 1)


def month(n: int, day: int = 0) -> int:
    return add_months(T0, n) + day * DAY


GAP = (month(3, 4), month(4, 19))  # no event stored from the first to the second
SEATS_8, SUPPORT_GONE = month(2, 9), month(2, 19)  # without prorations, before the gap
SEATS_10, STORE_ADDED = month(3, 14), month(3, 19)  # in the gap: with prorations; an item added without
SEEN = month(5, 9)


def account(w: World) -> World:
    """cus_1: 5 seats of basic (50.00) and support (50.00) from T0, monthly. Before the gap, 8 seats (month(2, 9))
    and support removed (month(2, 19)), both without prorations; in the gap 10 seats with prorations
    (month(3, 14)) and storage added without (month(3, 19)); renewals on the 1st."""
    w.customer("cus_1")
    w.product("prod_seat", unit_label="seat", family="core")
    w.product("prod_store", unit_label="gb", family="storage")
    w.product("prod_support", family="support")
    w.price("basic", "prod_seat", 1_000)
    w.price("store", "prod_store", 700)
    w.price("support", "prod_support", 5_000)
    w.subscribe("sub_1", "cus_1", [("si_seat", "basic", 5), ("si_sup", "support", 1)], T0)
    w.cycle("sub_1", month(1))
    w.cycle("sub_1", month(2))
    w.update("sub_1", SEATS_8, items=[("si_seat", "basic", 8), ("si_sup", "support", 1)], prorate=False)
    w.update("sub_1", SUPPORT_GONE, items=[("si_seat", "basic", 8)], prorate=False)
    w.cycle("sub_1", month(3))
    w.update("sub_1", SEATS_10, items=[("si_seat", "basic", 10)])
    w.update("sub_1", STORE_ADDED, items=[("si_seat", "basic", 10), ("si_store", "store", 10)], prorate=False)
    w.cycle("sub_1", month(4))
    w.cycle("sub_1", month(5))
    return w


def load_with_gap(w: World, con: duckdb.DuckDBPyConnection, *, kept: bool, since: int = 0) -> None:
    """The store as a sync leaves it after the gap: every object, the events after the gap, and (``kept``) those
    stored before it, from ``since`` on; the cursor that marks where the unbroken events begin."""
    w.load(con, seen_at=SEEN, events=False)
    events = [e for e in w.events if e["created"] >= GAP[1] or (kept and since <= e["created"] < GAP[0])]
    upsert_objects(con, "events", w.account_id, events, datetime.fromtimestamp(SEEN, tz=UTC))
    con.execute("INSERT INTO sync_cursors (account_id, stream, value, created, done) "
                "VALUES (?, 'events:unbroken', NULL, ?, false)", [w.account_id, GAP[1]])
    record_stripes_clock(con, w.account_id, SEEN)


def annual_plan(w: World) -> World:
    """cus_1 on one seat of an annual plan (basic_y, 120.00 a year) from T0; pro_y costs twice as much."""
    w.customer("cus_1")
    w.product("prod_seat", unit_label="seat", family="core")
    w.price("basic_y", "prod_seat", 12_000, interval="year")
    w.price("pro_y", "prod_seat", 24_000, interval="year")
    w.subscribe("sub_1", "cus_1", [("si_1", "basic_y", 1)], T0)
    return w


def history(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int | None, int, int | None, str]]:
    rows = con.execute(
        "SELECT subscription_item_id, quantity, CAST(epoch(valid_from) AS BIGINT), CAST(epoch(valid_to) AS BIGINT), "
        "source FROM derived_item_history ORDER BY subscription_item_id, valid_from").fetchall()
    return [tuple(r) for r in rows]


@pytest.mark.parametrize("kept", [True, False], ids=["events-kept-before-the-gap", "none-before-it"])
def test_events_before_a_gap_date_changes_made_without_prorations(world: World, store: duckdb.DuckDBPyConnection,
                                                                   kept: bool) -> None:
    w = account(world)
    load_with_gap(w, store, kept=kept)
    recompute(store, make_settings("usd"))
    # (without the events before the gap, the renewal of month(3) is all that shows both changes)
    seats_8 = SEATS_8 if kept else month(3)
    support_gone = SUPPORT_GONE if kept else month(3)
    source = "event" if kept else "invoice"  # (events win over invoices at the same moment too)
    assert history(store) == [
        ("si_seat", 5, T0, seats_8, source),
        ("si_seat", 8, seats_8, SEATS_10, source),
        # in the gap: the proration dates it, the stored item's created the one added without
        ("si_seat", 10, SEATS_10, None, "invoice"),
        ("si_store", 10, STORE_ADDED, None, "invoice"),
        ("si_sup", 1, T0, support_gone, source),
    ]
    moves = store.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta, source_event_id "
                          "FROM mrr_movements WHERE occurred_at > to_timestamp(?) ORDER BY ALL", [T0]).fetchall()
    events_at = {e["created"]: e["id"] for e in w.events}
    if kept:
        assert [m[:3] for m in moves] == [
            (SEATS_8, "seat_expansion", 30), (SUPPORT_GONE, "downgrade", -50),
            (SEATS_10, "seat_expansion", 20), (STORE_ADDED, "cross_sell", 70)]
        # (the events that made them are named)
        assert [m[3] for m in moves[:2]] == [events_at[SEATS_8], events_at[SUPPORT_GONE]]
    else:
        assert [m[:3] for m in moves] == [
            (month(3), "downgrade", -50), (month(3), "seat_expansion", 30),
            (SEATS_10, "seat_expansion", 20), (STORE_ADDED, "cross_sell", 70)]


def test_an_invoice_an_event_before_the_gap_contradicts_is_a_data_quality_row(world: World,
                                                                                store: duckdb.DuckDBPyConnection) -> None:
    """Where a stored event and an invoice line before coverage disagree about one change, the event wins (the
    history follows it) and the disagreement is a row of derived_data_quality, as inside coverage. (Between two
    events the lines are the only evidence of a gap, so a renewal there still makes a step of its own.)"""
    w = world
    w.customer("cus_1")
    w.product("prod_seat", unit_label="seat", family="core")
    w.price("basic", "prod_seat", 1_000)
    w.subscribe("sub_1", "cus_1", [("si_seat", "basic", 5)], T0)
    w.cycle("sub_1", month(1))
    w.update("sub_1", month(1, 13), items=[("si_seat", "basic", 6)])
    for n in range(2, 6):
        w.cycle("sub_1", month(n))
    # (the proration bills 7 seats where the event of that update says 6)
    update = next(inv for inv in w.objects["invoices"].values() if inv["billing_reason"] == "subscription_update")
    debit = next(ln for ln in update["lines"]["data"] if ln["amount"] > 0)
    debit["quantity"] = 7
    load_with_gap(w, store, kept=True)
    recompute(store, make_settings("usd"))
    assert history(store) == [("si_seat", 5, T0, month(1, 13), "event"), ("si_seat", 6, month(1, 13), None, "event")]
    rows = store.execute("SELECT kind, object_id, related_id, CAST(epoch(moment) AS BIGINT), detail "
                         "FROM derived_data_quality WHERE kind LIKE 'invoice_%'").fetchall()
    assert [r[:4] for r in rows] == [("invoice_event_mismatch", "si_seat", update["id"], month(1, 13))]
    assert "bills 7 × basic, the events give 6 × basic" in rows[0][4]


def test_a_switch_an_event_before_the_gap_shows_is_named_in_its_data_quality_row(world: World,
                                                                                   store: duckdb.DuckDBPyConnection
                                                                                   ) -> None:
    """An annual plan switched without prorations (a new item in place of the old) before the gap: the invoice
    before coverage still bills the old item, so data quality reports it, and says the event that shows the switch
    instead of "no stored event"."""
    w = annual_plan(world)
    switch = w.update("sub_1", SEATS_8, items=[("si_2", "pro_y", 1)], prorate=False)
    assert switch["items"]["data"][0]["created"] == SEATS_8
    load_with_gap(w, store, kept=True)
    recompute(store, make_settings("usd"))
    assert history(store) == [("si_1", 1, T0, SEATS_8, "event"), ("si_2", 1, SEATS_8, None, "event")]
    event = next(e["id"] for e in w.events if e["created"] == SEATS_8)
    rows = store.execute("SELECT kind, object_id, CAST(epoch(moment) AS BIGINT), detail FROM derived_data_quality "
                         "WHERE kind LIKE 'invoice_%'").fetchall()
    assert [r[:3] for r in rows] == [("invoice_snapshot_mismatch", "si_1", SEATS_8)]
    assert f"the history ends it at 2026-03-10 00:00 UTC, when event {event} shows item si_2 added" in rows[0][3]


def test_a_switch_before_the_stored_events_ends_the_old_item_when_the_new_one_was_made(
        world: World, store: duckdb.DuckDBPyConnection) -> None:
    """An annual item replaced without prorations before any stored event (no invoice bills the new one yet): the
    old one ends at the new one's `created`, as without a gap. The events stored before the gap all leave the old
    item out; they must not stand for its removal (it ran on to the first of them)."""
    w = annual_plan(world)
    w.update("sub_1", SEATS_8, items=[("si_2", "pro_y", 1)], prorate=False)
    w.update("sub_1", month(3, 1), metadata={"note": "kept"})  # (the first stored event, before the gap)
    w.update("sub_1", month(4, 25), metadata={"note": "after"})  # (the first after it)
    load_with_gap(w, store, kept=True, since=month(2, 20))
    recompute(store, make_settings("usd"))
    assert [r[:4] for r in history(store)] == [("si_1", 1, T0, SEATS_8), ("si_2", 1, SEATS_8, None)]
