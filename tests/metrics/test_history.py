"""State history from events, invoices and snapshots (design.md 3), and the runner's guarantees."""

from __future__ import annotations

import logging
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from builders import DAY, World, add_months, ts
from conftest import OneStore, customer_mrr_at, make_settings, record_stripes_clock

from stripe_churn.errors import DataError
from stripe_churn.metrics.runner import recompute, sql_steps

T0 = ts(2024, 1, 1)
Derive = Callable[..., duckdb.DuckDBPyConnection]

# The tests marked @one_store are each an account of one store, derived once (conftest.OneStore): their queries see
# their own account's rows alone.
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()


def month(n: int, day: int = 0) -> int:
    return add_months(T0, n) + day * DAY


def history_account(w: World) -> World:
    """Customers whose every change is evidenced on an invoice: at a renewal, or mid-cycle with prorations."""
    w.product("prod_seat", unit_label="seat", family="core")
    w.product("prod_addon", unit_label="gb", family="storage")
    w.price("basic", "prod_seat", 1_000)
    w.price("pro", "prod_seat", 2_500)
    w.price("pro_year", "prod_seat", 27_000, interval="year")
    w.price("storage", "prod_addon", 700)
    for n in range(1, 6):
        w.customer(f"cus_{n}")
    # 1: seats up at a renewal (no proration), then plan upgrade at the next renewal
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 2)], T0)
    w.update("sub_1", month(1), items=[("si_1", "basic", 5)], prorate=False)
    w.cycle("sub_1", month(1))
    w.update("sub_1", month(2), items=[("si_1", "pro", 5)], prorate=False)
    w.cycle("sub_1", month(2))
    w.cycle("sub_1", month(3))
    # 2: mid-cycle upgrade with prorations, a cross-sell with prorations, then removal with a credit
    w.subscribe("sub_2", "cus_2", [("si_2", "basic", 1)], T0 + 3 * DAY)
    w.update("sub_2", month(0, 12), items=[("si_2", "pro", 1)])
    w.cycle("sub_2", month(1, 3))
    w.update("sub_2", month(1, 20), items=[("si_2", "pro", 1), ("si_2b", "storage", 10)])
    w.cycle("sub_2", month(2, 3))
    w.update("sub_2", month(2, 9), items=[("si_2", "pro", 1)])
    w.cycle("sub_2", month(3, 3))
    # 3: trial, then paying, then canceled at period end
    w.subscribe("sub_3", "cus_3", [("si_3", "pro", 3)], T0, trial_end=month(0, 14))
    w.update("sub_3", month(0, 14), status="active")
    w.invoice_for("sub_3", month(0, 14), "subscription_cycle", period_start=month(0, 14))
    w.cycle("sub_3", month(1, 14))
    w.cancel("sub_3", month(2), ended_at=month(2, 14), feedback="unused")
    # 4: canceled immediately, then a new subscription on the annual plan (a comeback)
    w.subscribe("sub_4", "cus_4", [("si_4", "basic", 1)], T0)
    w.cancel("sub_4", month(1))
    w.subscribe("sub_4b", "cus_4", [("si_4b", "pro_year", 1)], month(2))
    # 5: quantity down mid-cycle with prorations
    w.subscribe("sub_5", "cus_5", [("si_5", "pro", 8)], month(0, 5))
    w.update("sub_5", month(1, 1), items=[("si_5", "pro", 6)])
    w.cycle("sub_5", month(1, 5))
    w.cycle("sub_5", month(2, 5))
    w.cycle("sub_5", month(3, 5))
    return w


def histories(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return con.execute(
        "SELECT subscription_item_id, price_id, quantity, CAST(epoch(valid_from) AS BIGINT), "
        "CAST(epoch(valid_to) AS BIGINT) FROM derived_item_history ORDER BY ALL").fetchall()


def item_levels(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    """item_mrr without the ids that dated each row (an event's, or an invoice's)."""
    return con.execute(
        "SELECT subscription_item_id, price_id, quantity, status, CAST(epoch(valid_from) AS BIGINT), "
        "CAST(epoch(valid_to) AS BIGINT), mrr_original, undiscounted_mrr_original FROM item_mrr ORDER BY ALL").fetchall()


def levels(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return con.execute(
        "SELECT customer_id, CAST(epoch(valid_from) AS BIGINT), CAST(epoch(valid_to) AS BIGINT), mrr "
        "FROM customer_mrr ORDER BY ALL").fetchall()


def test_history_from_invoices_alone_equals_history_from_events(tmp_path: Path) -> None:
    """Events withheld, the invoices and the snapshot give the same item history, item MRR (item_mrr, but the ids
    that dated each row) and customer MRR."""
    from stripe_churn.store.db import open_store

    seen = month(3, 10)
    results = {}
    for label, events in (("events", True), ("invoices", False)):
        con = open_store(tmp_path / f"{label}.duckdb")
        history_account(World()).load(con, seen_at=seen, events=events)
        recompute(con, make_settings())
        results[label] = (histories(con), levels(con), item_levels(con))
        con.close()
    with_events, invoices_only = results["events"], results["invoices"]
    assert with_events[0], "no history was derived"
    missing = sorted(set(with_events[0]) - set(invoices_only[0]))
    extra = sorted(set(invoices_only[0]) - set(with_events[0]))
    assert not missing and not extra, f"item history differs: only with events {missing}; only from invoices {extra}"
    assert with_events[1] == invoices_only[1]
    assert with_events[2] == invoices_only[2]


@pytest.mark.parametrize("window_months", [1, 2, 3])
def test_events_window_joins_invoice_history(tmp_path: Path, window_months: int) -> None:
    """Events kept only for the last weeks: the invoice history before and the events after agree."""
    from stripe_churn.store.db import open_store

    seen = month(3, 10)
    full = open_store(tmp_path / "full.duckdb")
    history_account(World()).load(full, seen_at=seen, events=True)
    recompute(full, make_settings())
    part = open_store(tmp_path / "part.duckdb")
    history_account(World()).load(part, seen_at=seen, events=seen - window_months * 30 * DAY)
    recompute(part, make_settings())
    assert histories(part) == histories(full)
    assert levels(part) == levels(full)
    assert item_levels(part) == item_levels(full)
    assert part.execute("SELECT count(*) FROM data_quality").fetchone() == (0,)


@one_store
def test_events_win_and_disagreement_recorded(world: World, derive: Derive) -> None:
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.price("basic", "prod_seat", 1_000)
    world.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    world.update("sub_1", month(1), items=[("si_1", "basic", 5)], prorate=False)
    inv = world.cycle("sub_1", month(1))
    inv["lines"]["data"][0]["quantity"] = 4  # the invoice says 4 seats, the events 5
    con = derive(world, seen_at=month(1, 5))
    assert customer_mrr_at(con, "cus_1", month(1, 1)) == 50
    rows = con.execute("SELECT kind, object_id, related_id, detail FROM data_quality").fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [("invoice_event_mismatch", "si_1", inv["id"])]
    assert "events were used" in rows[0][3]


def three_basic_seats(world: World) -> None:
    """cus_1 with 3 seats of basic (10.00) from T0, and cus_o, whose subscription later is the oldest stored event."""
    world.customer("cus_1")
    world.customer("cus_o")
    world.product("prod_seat", unit_label="seat", family="core")
    world.price("basic", "prod_seat", 1_000)
    world.price("pro", "prod_seat", 2_000)
    world.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)


@pytest.mark.parametrize("first_event", ["updated", "deleted"])
@one_store
def test_a_deletion_as_the_first_stored_event_gives_the_items_before_it(world: World, derive: Derive,
                                                                       first_event: str) -> None:
    """3 seats switched from basic to pro without prorations before the stored events begin: only the events show
    it. The first stored event of the subscription is either an update (its previous_attributes give the state
    before) or its deletion (no previous_attributes: only *.updated events carry them, but a deletion changes no
    item). Either way the events win from where they begin (an upgrade there, recorded as a disagreement with the
    invoice) and the churn takes the MRR in force when the subscription ends. (The deletion used to leave the
    invoice's basic seats in force until the end: a churn of 30 instead of 60, and no data-quality row.)"""
    three_basic_seats(world)
    world.cycle("sub_1", month(1))
    world.update("sub_1", month(1, 10), items=[("si_1", "pro", 3)], prorate=False)  # before the stored events
    world.subscribe("sub_o", "cus_o", [("si_o", "basic", 1)], month(1, 15))  # the oldest stored event
    if first_event == "updated":
        world.update("sub_1", month(1, 25), metadata={"k": "v"})
        world.cancel("sub_1", month(1, 27))
    else:
        world.cancel("sub_1", month(1, 27))
    con = derive(world, seen_at=month(2, 5), events=month(1, 15))
    rows = con.execute("SELECT occurred_at, movement, mrr_delta FROM mrr_movements WHERE customer_id = 'cus_1' "
                       "ORDER BY occurred_at").fetchall()
    assert [(int(r[0].timestamp()), r[1], r[2]) for r in rows] == [
        (T0, "new", 30), (month(1, 15), "upgrade", 30), (month(1, 27), "cancellation", -60)]
    assert con.execute("SELECT kind, object_id FROM data_quality").fetchall() == [("invoice_event_mismatch", "si_1")]


@pytest.mark.parametrize("change", ["price", "quantity", "none"])
@one_store
def test_a_subscription_ended_before_the_events_that_changed_unbilled_is_recorded(world: World, derive: Derive,
                                                                                change: str) -> None:
    """3 seats changed without prorations, then the subscription canceled, all before the stored events begin: no
    event, no invoice dates the change, only the latest sync lists the items the subscription ended with. The churn
    takes the invoice's state (the only dated one), and the disagreement is a data-quality row (design.md 3: never
    silently dropped). (It used to be none.) Without a change, no row."""
    three_basic_seats(world)
    world.cycle("sub_1", month(1))
    if change != "none":
        world.update("sub_1", month(1, 10), prorate=False,
                     items=[("si_1", "pro", 3) if change == "price" else ("si_1", "basic", 5)])
    world.cancel("sub_1", month(1, 20))
    world.subscribe("sub_o", "cus_o", [("si_o", "basic", 1)], month(2, 1))  # the oldest stored event
    con = derive(world, seen_at=month(2, 5), events=month(2, 1))
    rows = con.execute("SELECT occurred_at, movement, mrr_delta FROM mrr_movements WHERE customer_id = 'cus_1' "
                       "ORDER BY occurred_at").fetchall()
    assert [(int(r[0].timestamp()), r[1], r[2]) for r in rows] == [(T0, "new", 30), (month(1, 20), "cancellation", -30)]
    dq = con.execute("SELECT kind, object_id, related_id, epoch(moment), detail FROM data_quality").fetchall()
    if change == "none":
        assert dq == []
        return
    first = next(i for i in world.objects["invoices"].values() if i["billing_reason"] == "subscription_create")
    assert [r[:4] for r in dq] == [("invoice_snapshot_mismatch", "si_1", first["id"], month(1, 20))]
    listed = "3 × pro" if change == "price" else "5 × basic"
    assert "bills 3 × basic on item si_1 when subscription sub_1 ended" in dq[0][4]
    assert f"the latest sync lists {listed}" in dq[0][4]


@pytest.mark.parametrize("case", ["bills-the-monthly-items", "misses-a-monthly-item"])
@one_store
def test_a_renewal_of_some_intervals_expects_only_their_items(world: World, derive: Derive, case: str) -> None:
    """A subscription whose items renew on different intervals (billing_mode flexible) gets a monthly renewal
    billing only its monthly items: the annual item is not missing from it. (Every month used to record the
    annual item as an invoice_event_mismatch.) A monthly item it leaves out still is."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.product("prod_store", unit_label="gb")
    world.product("prod_support")
    world.price("basic", "prod_seat", 1_000)
    world.price("store", "prod_store", 700)
    world.price("support", "prod_support", 12_000, interval="year")
    sub = world.subscribe("sub_1", "cus_1", [("si_a", "basic", 3), ("si_c", "store", 2), ("si_y", "support", 1)],
                          T0)
    items = {i["id"]: i for i in sub["items"]["data"]}
    billed = ["si_a", "si_c"] if case == "bills-the-monthly-items" else ["si_a"]
    inv = world._invoice("sub_1", month(1), "subscription_cycle",
                         [world._line("sub_1", items[i], month(1), month(2)) for i in billed])
    world.update("sub_1", month(1, 3), metadata={"k": "v"})
    con = derive(world, seen_at=month(1, 5))
    assert customer_mrr_at(con, "cus_1", month(1, 1)) == 54
    rows = con.execute("SELECT kind, object_id, related_id FROM data_quality").fetchall()
    assert rows == ([] if case == "bills-the-monthly-items" else [("invoice_event_mismatch", "si_c", inv["id"])])


@pytest.mark.parametrize("case", ["quantity", "price", "unknown-item", "agrees-a-minute-early"])
@one_store
def test_a_proration_inside_the_window_that_disagrees_is_recorded(world: World, derive: Derive, case: str) -> None:
    """Inside the event window a proration's debit line bills the state from the change on: when no history row
    of its item within 5 minutes of that moment has its price and quantity, the events win and the disagreement
    is a data-quality row (design.md 3). A line dated a little before the event (Stripe's proration date) agrees."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.price("basic", "prod_seat", 1_000)
    world.price("team", "prod_seat", 4_000)
    world.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    world.update("sub_1", month(0, 10), items=[("si_1", "basic", 5)])
    inv = [i for i in world.objects["invoices"].values() if i["billing_reason"] == "subscription_update"][-1]
    (debit,) = [ln for ln in inv["lines"]["data"] if ln["amount"] > 0]
    if case == "quantity":
        debit["quantity"] = 6
    elif case == "price":
        debit["pricing"]["price_details"]["price"] = "team"
    elif case == "unknown-item":
        debit["parent"]["subscription_item_details"]["subscription_item"] = "si_ghost"
    else:
        debit["period"]["start"] -= 60
    con = derive(world, seen_at=month(0, 20))
    assert customer_mrr_at(con, "cus_1", month(0, 10)) == 50  # the events' 5 seats
    rows = con.execute("SELECT kind, object_id, related_id, detail FROM data_quality").fetchall()
    if case == "agrees-a-minute-early":
        assert rows == []
    elif case == "unknown-item":
        # (the invoice bills an item the events do not know, and credits si_1 with no new line for it: a removal
        # the events do not show)
        assert sorted((r[0], r[1], r[2]) for r in rows) == [("invoice_event_mismatch", "si_1", inv["id"]),
                                                            ("invoice_event_mismatch", "si_ghost", inv["id"])]
    else:
        assert [(r[0], r[1], r[2]) for r in rows] == [("invoice_event_mismatch", "si_1", inv["id"])]


@one_store
def test_a_proration_dated_a_minute_apart_from_its_credit_is_no_removal(world: World, derive: Derive) -> None:
    """Before the event window (invoices alone), a credit for unused time whose item's new line starts a minute
    earlier is a change, not a removal: read as a removal, the item dropped out until its next renewal."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.price("basic", "prod_seat", 1_000)
    world.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    world.update("sub_1", month(0, 10), items=[("si_1", "basic", 5)])
    inv = [i for i in world.objects["invoices"].values() if i["billing_reason"] == "subscription_update"][-1]
    (debit,) = [ln for ln in inv["lines"]["data"] if ln["amount"] > 0]
    debit["period"]["start"] -= 60
    world.cycle("sub_1", month(1))
    con = derive(world, seen_at=month(1, 5), events=False)
    assert customer_mrr_at(con, "cus_1", month(0, 15)) == 50
    assert con.execute("SELECT movement, mrr_delta FROM mrr_movements ORDER BY occurred_at").fetchall() == [
        ("new", 30), ("seat_expansion", 20)]


def seats_and_storage(w: World) -> None:
    """cus_1 with sub_1 from T0: si_a, 3 seats at 10.00, and si_b, 2 GB of storage at 7.00 (44.00)."""
    w.customer("cus_1")
    w.product("prod_seat", unit_label="seat")
    w.product("prod_store", unit_label="gb")
    w.price("basic", "prod_seat", 1_000)
    w.price("store", "prod_store", 700)
    w.subscribe("sub_1", "cus_1", [("si_a", "basic", 3), ("si_b", "store", 2)], T0)


def credit_only_proration(w: World) -> dict[str, Any]:
    """An invoice crediting si_b's unused time from month(0, 10) with no new line for it (read alone: a removal)."""
    item_b = next(i for i in w.objects["subscriptions"]["sub_1"]["items"]["data"] if i["id"] == "si_b")
    return w._invoice("sub_1", month(0, 10), "subscription_update",
                      [w._line("sub_1", item_b, month(0, 10), month(1), proration=True, credit=True)])


@pytest.mark.parametrize("case", ["inside-kept", "inside-removed", "before-window-kept"])
@one_store
def test_a_removal_only_the_invoices_show_is_recorded(world: World, derive: Derive, case: str) -> None:
    """A proration that credits an item's unused time with no new line for it reads as the item's removal.
    When the events keep the item (inside their window, 5 minutes after the credit's start; or when the window
    begins, for a credit before it), the events win and the disagreement is a data-quality row. A removal the
    events show too gives none."""
    seats_and_storage(world)
    if case != "inside-removed":
        inv = credit_only_proration(world)
    else:
        world.update("sub_1", month(0, 10), items=[("si_a", "basic", 3)])
        inv = [i for i in world.objects["invoices"].values() if i["billing_reason"] == "subscription_update"][-1]
    world.update("sub_1", month(0, 20), metadata={"k": "v"})  # (where the window begins, in the last case)
    con = derive(world, seen_at=month(0, 25), events=month(0, 15) if case == "before-window-kept" else True)
    assert customer_mrr_at(con, "cus_1", month(0, 22)) == (30 if case == "inside-removed" else 44)
    rows = con.execute("SELECT kind, object_id, related_id, detail FROM data_quality").fetchall()
    if case == "inside-removed":
        assert rows == []
    else:
        assert [(r[0], r[1], r[2]) for r in rows] == [("invoice_event_mismatch", "si_b", inv["id"])]
        assert "removal" in rows[0][3] or "removes" in rows[0][3]


@one_store
def test_a_one_time_item_billed_with_the_subscription_is_no_data_quality_row(world: World, derive: Derive) -> None:
    """A pending invoice item swept into a renewal invoice names neither a subscription item nor a price (its
    parent is invoice_item_details): it is one-time, not MRR (design.md 4), and nothing is wrong with it. A
    subscription line naming neither is still reported."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.price("basic", "prod_seat", 1_000)
    world.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    world.add_one_time_and_broken_lines(world.cycle("sub_1", month(1)), "sub_1")
    con = derive(world, seen_at=month(1, 5))
    assert customer_mrr_at(con, "cus_1", month(1, 1)) == 30
    assert con.execute("SELECT kind, object_id FROM data_quality").fetchall() == [("unusable_object", "il_broken")]


@one_store
def test_a_renewal_without_an_item_the_events_keep_is_recorded(world: World, derive: Derive) -> None:
    """A renewal invoice inside the event window that bills no line for an item the events keep disagrees with
    them: MRR follows the events and the disagreement is a row (it went unrecorded). Renewals billing every
    item, a metered one without usage among them, give none."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.product("prod_api", unit_label="api call")
    world.price("basic", "prod_seat", 1_000)
    world.price("extra", "prod_seat", 500)
    world.price("calls", "prod_api", 0, usage_type="metered")
    world.subscribe("sub_1", "cus_1", [("si_1", "basic", 3), ("si_2", "extra", 2), ("si_3", "calls", None)], T0)
    world.cycle("sub_1", month(1))
    short = world.cycle("sub_1", month(2))
    short["lines"]["data"] = [ln for ln in short["lines"]["data"]
                              if ln["parent"]["subscription_item_details"]["subscription_item"] != "si_2"]
    con = derive(world, seen_at=month(2, 5))
    assert customer_mrr_at(con, "cus_1", month(2, 1)) == 40
    rows = con.execute("SELECT kind, object_id, related_id, CAST(epoch(moment) AS BIGINT), detail "
                       "FROM data_quality").fetchall()
    assert [r[:4] for r in rows] == [("invoice_event_mismatch", "si_2", short["id"], month(2))]
    assert "without item si_2" in rows[0][4]


@one_store
def test_snapshot_change_missed_by_events(world: World, derive: Derive) -> None:
    """A state in the snapshot that no event explains is a change dated at the snapshot, and reported."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.price("basic", "prod_seat", 1_000)
    world.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    world.update("sub_1", month(0, 20), items=[("si_1", "basic", 7)], prorate=False, event=False)
    con = derive(world, seen_at=month(0, 25))
    assert customer_mrr_at(con, "cus_1", month(0, 25) - 1) == 30
    assert customer_mrr_at(con, "cus_1", month(0, 25)) == 70
    kinds = [r[0] for r in con.execute("SELECT kind FROM data_quality").fetchall()]
    assert kinds == ["snapshot_event_mismatch"]


@pytest.mark.parametrize("events", ["none stored", "of other subscriptions only"])
@one_store
def test_a_change_only_the_latest_sync_shows_is_recorded(world: World, derive: Derive, events: str) -> None:
    """An annual subscription's seats raised with Stripe's default proration_behavior, before the events begin:
    its prorations wait for the next renewal, months away, so no invoice shows the change and no stored event
    does. The latest sync's state stands from where coverage begins (at the sync itself when no event is stored
    at all), and the disagreement with the invoice is a data-quality row, with or without events in the store
    (without any, it used to pass unrecorded)."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.price("yearly", "prod_seat", 12_000, interval="year")
    world.subscribe("sub_1", "cus_1", [("si_a", "yearly", 3)], T0)
    world.update("sub_1", month(1, 10), items=[("si_a", "yearly", 5)], prorate=False)
    if events != "none stored":
        world.customer("cus_2")
        world.subscribe("sub_2", "cus_2", [("si_b", "yearly", 1)], month(3, 5))
    con = derive(world, seen_at=month(4), events=month(3))
    (start,) = con.execute("SELECT coverage_start FROM derived_coverage").fetchone()
    assert int(start.timestamp()) == (month(4) if events == "none stored" else month(3, 5))
    assert customer_mrr_at(con, "cus_1", int(start.timestamp()) - 1) == 30
    assert customer_mrr_at(con, "cus_1", int(start.timestamp())) == 50
    (row,) = con.execute("SELECT kind, object_id, related_id, moment, detail FROM data_quality").fetchall()
    invoice = next(iter(world.objects["invoices"]))
    assert row[:4] == ("invoice_snapshot_mismatch", "si_a", invoice, start)
    assert row[4] == (f"invoice {invoice} bills 3 × yearly, the latest sync gives 5 × yearly; the sync's state was "
                      f"used from {start:%Y-%m-%d %H:%M:%S}+00 on (no stored event shows when it changed)")


@pytest.mark.parametrize("billed", [False, True], ids=["still-pending", "billed-at-the-renewal"])
@pytest.mark.parametrize("events", ["none stored", "of other subscriptions only"])
@one_store
def test_a_change_waiting_as_pending_invoice_items_is_dated_when_it_was_made(world: World, derive: Derive,
                                                                             events: str, billed: bool) -> None:
    """The change of the test above, with its prorations stored as the pending invoice items Stripe keeps them
    as until the renewal (the sync lists them): their period starts when the change was made, and they date it
    there, with no data-quality row. The movement names the item that bills the seats added until an invoice
    does; once the renewal has billed them, it names the renewal (its proration lines date it the same)."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.price("yearly", "prod_seat", 12_000, interval="year")
    world.subscribe("sub_1", "cus_1", [("si_a", "yearly", 3)], T0)
    world.update("sub_1", month(1, 10), items=[("si_a", "yearly", 5)], pending=True)
    charge, credit = world.objects["invoiceitems"].values()
    assert (charge["amount"], credit["amount"]) == (60_000, -36_000)
    seen = month(4)
    if billed:
        renewal = world.cycle("sub_1", month(12))
        assert credit["invoice"] == charge["invoice"] == renewal["id"]
        seen = month(13)
    if events != "none stored":
        world.customer("cus_2")
        world.subscribe("sub_2", "cus_2", [("si_b", "yearly", 1)], seen - 20 * DAY)
    con = derive(world, seen_at=seen, events=seen - 25 * DAY)
    assert [customer_mrr_at(con, "cus_1", at) for at in (month(1, 10) - 1, month(1, 10), seen - 1)] == [30, 50, 50]
    assert con.execute("SELECT movement, CAST(epoch(occurred_at) AS BIGINT), mrr_delta, source_invoice_id "
                       "FROM mrr_movements WHERE customer_id = 'cus_1' ORDER BY occurred_at").fetchall() == [
        ("new", T0, 30, next(iter(world.objects["invoices"]))),
        ("seat_expansion", month(1, 10), 20, renewal["id"] if billed else charge["id"])]
    assert con.execute("SELECT kind, detail FROM data_quality").fetchall() == []


@pytest.mark.parametrize("reason", ["automatic_pending_invoice_item_invoice", "manual"])
@one_store
def test_pending_prorations_billed_on_an_invoice_of_their_own_date_the_change(world: World, derive: Derive,
                                                                              reason: str) -> None:
    """The pending items of the tests above billed before the renewal, on an invoice of their own (Stripe's for a
    subscription with pending_invoice_item_interval, or one made by hand): no longer pending, and that invoice
    is no subscription invoice, but its proration lines still date the change, and the movement names it. (Its
    lines were not read before: the change was dated where the events begin.)"""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.price("yearly", "prod_seat", 12_000, interval="year")
    world.subscribe("sub_1", "cus_1", [("si_a", "yearly", 3)], T0)
    world.update("sub_1", month(1, 10), items=[("si_a", "yearly", 5)], pending=True)
    bill = world.bill_pending("sub_1", month(2), reason)
    assert [ln["amount"] for ln in bill["lines"]["data"]] == [60_000, -36_000]
    con = derive(world, seen_at=month(4), events=False)
    assert [customer_mrr_at(con, "cus_1", at) for at in (month(1, 10) - 1, month(1, 10))] == [30, 50]
    assert con.execute("SELECT movement, CAST(epoch(occurred_at) AS BIGINT), mrr_delta, source_invoice_id "
                       "FROM mrr_movements WHERE movement <> 'new'").fetchall() == [
        ("seat_expansion", month(1, 10), 20, bill["id"])]
    assert con.execute("SELECT kind FROM data_quality").fetchall() == []


@one_store
def test_an_item_removed_with_a_pending_credit_ends_when_it_was_removed(world: World, derive: Derive) -> None:
    """An annual subscription's storage item removed before the events begin, its unused time credited by a
    pending invoice item (no charge beside it): the item ends at the credit's start, a downgrade (its family
    removed) that names the credit."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.product("prod_addon", unit_label="gb")
    world.price("yearly", "prod_seat", 12_000, interval="year")
    world.price("store_year", "prod_addon", 8_400, interval="year")
    world.subscribe("sub_1", "cus_1", [("si_a", "yearly", 3), ("si_b", "store_year", 2)], T0)
    world.update("sub_1", month(2, 3), items=[("si_a", "yearly", 3)], pending=True)
    (credit,) = world.objects["invoiceitems"].values()
    assert credit["amount"] < 0 and credit["invoice"] is None
    con = derive(world, seen_at=month(5), events=False)
    assert [customer_mrr_at(con, "cus_1", at) for at in (month(2, 3) - 1, month(2, 3))] == [44, 30]
    assert con.execute("SELECT movement, CAST(epoch(occurred_at) AS BIGINT), mrr_delta, source_invoice_id "
                       "FROM mrr_movements WHERE movement <> 'new'").fetchall() == [
        ("downgrade", month(2, 3), -14, credit["id"])]
    assert con.execute("SELECT kind FROM data_quality").fetchall() == []


def test_invoice_items_no_longer_pending_are_not_read_as_pending(world: World, derive: Derive,
                                                               store: Any) -> None:
    """A pending item the latest sync no longer listed (invoiced or deleted since: the sync marks it) is no
    evidence of its own: a change reverted before the renewal, its items deleted, leaves the seats as they were."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.price("yearly", "prod_seat", 12_000, interval="year")
    world.subscribe("sub_1", "cus_1", [("si_a", "yearly", 3)], T0)
    world.update("sub_1", month(1, 10), items=[("si_a", "yearly", 5)], pending=True, event=False)
    world.update("sub_1", month(1, 10), items=[("si_a", "yearly", 3)], prorate=False, event=False)
    world.load(store, seen_at=month(4), events=False)
    store.execute("UPDATE invoice_items SET pending = false")
    recompute(store, make_settings())
    assert store.execute("SELECT movement FROM mrr_movements").fetchall() == [("new",)]
    assert customer_mrr_at(store, "cus_1", month(3)) == 30
    store.execute("UPDATE invoice_items SET pending = true")
    recompute(store, make_settings())
    assert customer_mrr_at(store, "cus_1", month(3)) == 50


def test_changes_dated_after_this_machines_clock_by_stripes_count(world: World, store: Any) -> None:
    """Stripe's clock (a sandbox advanced, a test clock) ahead of this machine's at the sync: the snapshot is
    dated by Stripe's clock, which the sync records. (Dated by this machine's, every change after it was
    dropped: no seat_expansion, MRR 30.00 with 5 seats stored.)"""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.price("basic", "prod_seat", 1_000)
    world.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    world.cycle("sub_1", month(1))
    world.update("sub_1", month(1, 10), items=[("si_1", "basic", 5)])
    world.load(store, seen_at=month(1, 5))  # this machine's clock
    record_stripes_clock(store, world.account_id, month(1, 15))
    recompute(store, make_settings())
    assert customer_mrr_at(store, "cus_1", month(1, 14)) == 50
    assert store.execute("SELECT movement, CAST(epoch(occurred_at) AS BIGINT), mrr_delta FROM mrr_movements "
                         "ORDER BY occurred_at").fetchall() == [("new", T0, 30), ("seat_expansion", month(1, 10), 20)]


@pytest.mark.parametrize("outage", [False, True], ids=["event-missing", "daemon-down-past-retention"])
def test_an_end_without_its_event_is_dated_at_ended_at(world: World, derive: Derive, store: Any,
                                                       outage: bool) -> None:
    """A subscription with no stored event that ended inside the event window (its deletion event missing, or
    lost while the daemon was down longer than Stripe keeps events) churns at its ended_at (design.md 4), not
    where the events begin, and the missing events are reported."""
    world.customer("cus_1")
    world.customer("cus_other")
    world.product("prod_seat", unit_label="seat")
    world.price("basic", "prod_seat", 1_000)
    world.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    # another customer's subscription has events from month 1 on: the account's event window starts there
    world.subscribe("sub_other", "cus_other", [("si_o", "basic", 1)], month(1, 1))
    world.cycle("sub_1", month(1))
    if outage:
        # a first sync keeps month 1's events; sub_1 ends in month 2, whose events the next sync no longer gets
        world.load(store, seen_at=month(1, 20), events=month(1, 1))
        world.cycle("sub_1", month(2))
        ended = month(2, 15)
        world.cancel("sub_1", ended)
        world.update("sub_other", month(4, 1), metadata={"k": "v"})
        con = derive(world, seen_at=month(4, 10), events=month(3, 11))
    else:
        ended = month(1, 10)
        world.cancel("sub_1", ended, event=False)
        con = derive(world, seen_at=month(1, 20), events=month(1, 1))
    assert customer_mrr_at(con, "cus_1", ended - 1) == 30
    assert customer_mrr_at(con, "cus_1", ended) == 0
    assert con.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement FROM mrr_movements "
                       "WHERE customer_id = 'cus_1' ORDER BY occurred_at").fetchall() == [
        (T0, "new"), (ended, "cancellation")]
    assert con.execute("SELECT kind, CAST(epoch(moment) AS BIGINT) FROM data_quality "
                       "WHERE object_id = 'sub_1'").fetchall() == [("missing_events", ended)]


@one_store
def test_item_removed_mid_cycle_from_credit_line(world: World, derive: Derive) -> None:
    seats_and_storage(world)
    world.update("sub_1", month(0, 10), items=[("si_a", "basic", 3)])
    world.cycle("sub_1", month(1))
    con = derive(world, seen_at=month(1, 2), events=False)
    assert customer_mrr_at(con, "cus_1", month(0, 10) - 1) == 44
    assert customer_mrr_at(con, "cus_1", month(0, 10)) == 30


@one_store
def test_an_item_billed_again_after_a_gap_counts_again(world: World, derive: Derive) -> None:
    """An item whose history has a gap (a credit-only proration reads as its removal; the next renewals bill it
    again at the same price and quantity) counts again from the renewal: its MRR rows follow the history, with
    the gap between them, instead of the first row swallowing the second."""
    seats_and_storage(world)
    credit_only_proration(world)
    world.cycle("sub_1", month(1))
    world.cycle("sub_1", month(2))
    con = derive(world, seen_at=month(2, 5), events=False)
    got = con.execute("SELECT CAST(epoch(valid_from) AS BIGINT), CAST(epoch(valid_to) AS BIGINT), mrr_original FROM "
                      "derived_item_mrr WHERE subscription_item_id = 'si_b' ORDER BY valid_from").fetchall()
    assert got == [(T0, month(0, 10), 14), (month(1), None, 14)]
    assert customer_mrr_at(con, "cus_1", month(0, 10) - 1) == 44
    assert customer_mrr_at(con, "cus_1", month(0, 11)) == 30
    assert customer_mrr_at(con, "cus_1", month(1, 1)) == 44
    moves = con.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta FROM mrr_movements "
                        "ORDER BY occurred_at").fetchall()
    # (si_b's family leaves the customer and comes back)
    assert moves == [(T0, "new", 44), (month(0, 10), "downgrade", -14), (month(1), "cross_sell", 14)]


@pytest.mark.parametrize("events", [True, False], ids=["events", "invoices-alone"])
@one_store
def test_a_removed_metered_items_last_usage_counts_until_it_goes(world: World, derive: Derive,
                                                                 events: bool) -> None:
    """A metered item is billed in arrears: its last usage invoice (February's 90.00, made at month(2)) counts
    from that invoice on until the item goes. The events date the removal (month(2, 10)); from invoices alone
    (no proration marks a metered item's removal) it goes at the next renewal, the first invoice without it."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.product("prod_api", unit_label="api call")
    world.price("basic", "prod_seat", 1_000)
    world.price("meter", "prod_api", 1, usage_type="metered")
    world.subscribe("sub_1", "cus_1", [("si_s", "basic", 1), ("si_m", "meter", None)], T0)
    world.cycle("sub_1", month(1), usage={"si_m": 5_000})
    world.cycle("sub_1", month(2), usage={"si_m": 9_000})
    world.update("sub_1", month(2, 10), items=[("si_s", "basic", 1)], prorate=False)
    world.cycle("sub_1", month(3))
    con = derive(world, seen_at=month(3, 2), events=events)
    assert customer_mrr_at(con, "cus_1", month(1, 1)) == 60
    assert customer_mrr_at(con, "cus_1", month(2, 1)) == 100
    gone = month(2, 10) if events else month(3)
    assert customer_mrr_at(con, "cus_1", gone - 1) == 100
    assert customer_mrr_at(con, "cus_1", gone) == 10


@pytest.mark.parametrize("events", [True, False], ids=["events", "invoices-alone"])
@one_store
def test_a_metered_item_added_mid_period_starts_when_it_was_made(world: World, derive: Derive, events: bool) -> None:
    """A metered add-on added mid-period with no proration (month(1, 10)): its first usage line, on the next
    renewal, dates from the period's start (month(1)), before the item existed. The item is there from when it
    was made (its ``created``, which the events show as well), so that is its change point: a seat added 20
    minutes later joins that window and is dated at the add-on, from invoices alone as with the events, and the
    period's start anchors nothing (before, from invoices alone, the seat change was dated 20 minutes later)."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.product("prod_api", unit_label="api call")
    world.price("basic", "prod_seat", 1_000)
    world.price("meter", "prod_api", 1, usage_type="metered")
    world.subscribe("sub_1", "cus_1", [("si_s", "basic", 1)], T0)
    world.cycle("sub_1", month(1))
    added = month(1, 10)
    world.update("sub_1", added, items=[("si_s", "basic", 1), ("si_m", "meter", None)], prorate=False)
    world.update("sub_1", added + 20 * 60, items=[("si_s", "basic", 2), ("si_m", "meter", None)])
    first = world.cycle("sub_1", month(2), usage={"si_m": 4_000})
    (usage,) = [ln for ln in first["lines"]["data"] if ln["parent"]["subscription_item_details"]["subscription_item"]
                == "si_m"]
    usage["period"]["start"] = month(1)  # (the period's, as the sandbox's usage lines have it)
    world.cycle("sub_1", month(3), usage={"si_m": 5_000})
    con = derive(world, seen_at=month(3, 2), events=events)
    rows = con.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta FROM mrr_movements "
                       "ORDER BY occurred_at, movement").fetchall()
    assert rows == [(T0, "new", Decimal("10.0000")), (added, "seat_expansion", Decimal("10.0000")),
                    (month(2), "resource_expansion", Decimal("40.0000")),
                    (month(3), "resource_expansion", Decimal("10.0000"))], rows
    starts = con.execute("SELECT min(valid_from) FROM derived_item_history WHERE subscription_item_id = 'si_m'"
                         ).fetchone()
    assert starts is not None and int(starts[0].timestamp()) == added


def test_recompute_is_idempotent(world: World, derive: Derive) -> None:
    con = derive(history_account(world), seen_at=month(3, 10))
    tables = ["derived_item_history", "derived_item_mrr", "derived_customer_mrr", "derived_data_quality"]

    def snapshot() -> dict[str, Any]:
        return {t: con.execute(f"SELECT count(*), md5(string_agg(CAST(x AS VARCHAR), '|' ORDER BY CAST(x AS VARCHAR))) "
                               f"FROM {t} x").fetchone() for t in tables}

    first = snapshot()
    recompute(con, make_settings())
    assert snapshot() == first
    assert first["derived_customer_mrr"][0] > 0 and first["derived_item_mrr"][0] > 0


def test_runner_runs_every_step_in_name_order_and_logs_timing(world: World, derive: Derive,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    names = [n for n, _ in sql_steps()]
    assert names == sorted(names) and "40_item_mrr.sql" in names
    with caplog.at_level(logging.DEBUG, logger="stripe_churn.metrics.runner"):
        derive(history_account(world), seen_at=month(3, 10))
    logged = [r.args[0] for r in caplog.records if r.msg == "metrics step %s took %.3f s"]
    assert logged == names


def test_failed_recompute_leaves_previous_results(world: World, derive: Derive) -> None:
    con = derive(history_account(world), seen_at=month(3, 10))
    before = levels(con)
    world.customer("cus_gbp", currency="gbp")
    world.price("gbp_plan", "prod_seat", 900, currency="gbp")
    world.subscribe("sub_gbp", "cus_gbp", [("si_gbp", "gbp_plan", 1)], month(3))
    with pytest.raises(DataError, match="gbp"):
        derive(world, seen_at=month(3, 11))
    assert levels(con) == before


def month_starts(start: int, end: int) -> list[int]:
    """The first instant of every UTC month after ``start`` up to ``end``."""
    from datetime import UTC, datetime

    d = datetime.fromtimestamp(start, tz=UTC)
    t = ts(d.year, d.month) if d.day == 1 and d.hour == 0 and d.minute == 0 and d.second == 0 else add_months(
        ts(d.year, d.month), 1)
    out = []
    while t <= end:
        out.append(t)
        t = add_months(t, 1)
    return out


def test_customer_mrr_matches_simulation_every_month(small_sim_derived: duckdb.DuckDBPyConnection,
                                                      small_sim: Any) -> None:
    """customer_mrr at the start of each month equals the simulation's own MRR for every customer."""
    from decimal import Decimal

    sim_store = small_sim_derived  # (the small simulation, recomputed under make_settings(), which is Settings())
    first = min(int(s["start_date"]) for s in small_sim.objects["subscriptions"].values() if not s.get("deleted"))
    moments = month_starts(first, int(small_sim.clock))
    assert len(moments) >= 3
    rows = sim_store.execute(
        "SELECT customer_id, CAST(epoch(valid_from) AS BIGINT), CAST(epoch(valid_to) AS BIGINT), mrr "
        "FROM customer_mrr").fetchall()
    by_customer: dict[str, list[tuple[int, int | None, Decimal]]] = {}
    for cid, vf, vt, mrr in rows:
        by_customer.setdefault(cid, []).append((vf, vt, mrr))
    wrong = []
    checked = 0
    for at in moments:
        truth = {c: Decimal(str(round(v, 4))) for c, v in small_sim.customer_mrr(at).items()}
        ours = {c: next((m for vf, vt, m in spans if vf <= at and (vt is None or at < vt)), Decimal(0))
                for c, spans in by_customer.items()}
        for cid in sorted(set(truth) | set(ours)):
            want, got = truth.get(cid, Decimal(0)), ours.get(cid, Decimal(0))
            checked += 1
            if want != got:
                wrong.append(f"{cid} at {at}: simulation {want}, customer_mrr {got}")
    assert checked > 0
    assert not wrong, f"{len(wrong)} of {checked} customer-months disagree:\n" + "\n".join(wrong)


@one_store
def test_data_quality_lists_unusable_and_missing_objects(world: World, derive: Derive) -> None:
    """Objects that cannot be used are kept as raw and each problem is one data_quality row."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.price("basic", "prod_seat", 1_000)
    world.coupon("co_gone", percent_off=10)
    sub = world.subscribe("sub_1", "cus_1", [("si_1", "basic", 1)], T0)
    d = world.discount("co_gone", T0, customer="cus_1", subscription="sub_1")
    sub["discounts"] = [d["id"]]
    del world.objects["coupons"]["co_gone"]
    world.price("ghost", "prod_seat", 2_000)
    world.subscribe("sub_2", "cus_1", [("si_2", "ghost", 1)], T0)
    del world.objects["prices"]["ghost"]  # known only from the item's embedded price
    world.objects["subscriptions"]["sub_odd"] = {"id": "sub_odd", "object": "subscription", "created": T0,
                                                 "customer": None, "items": {"data": []}}
    world.event("customer.subscription.updated", T0 + 5, {"id": "x", "object": "invoice"})
    con = derive(world, seen_at=month(1))
    found = sorted(con.execute("SELECT kind, object_id FROM data_quality").fetchall())
    assert found == sorted([("missing_coupon", d["id"]), ("missing_price", "ghost"),
                            ("unusable_object", "sub_odd"),
                            ("unusable_object", world.events[-1]["id"])]), found
    # the price known from the item still counts, the coupon that cannot be read does not
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == 30


def test_currency_mismatches_are_data_quality_rows(world: World, derive: Derive) -> None:
    """A price or an amount off in another currency than the subscription's (Stripe's currency_options, which
    the store does not keep) is valued as it stands or left out, and said so, never silently."""
    world.customer("cus_1", currency="eur")
    world.product("prod_seat", unit_label="seat")
    world.price("eur_plan", "prod_seat", 1_000, currency="eur")
    world.price("usd_plan", "prod_seat", 2_000)  # (usd; billed in eur through its currency options)
    world.coupon("co_usd", amount_off=300, currency="usd", duration="forever")
    world.coupon("co_eur", amount_off=100, currency="eur", duration="forever")
    world.subscribe("sub_1", "cus_1", [("si_1", "eur_plan", 1)], T0)
    world.subscribe("sub_2", "cus_1", [("si_2", "usd_plan", 1)], T0)
    bad = world.discount("co_usd", T0 + DAY, customer="cus_1", subscription="sub_1")
    world.discount("co_eur", T0 + DAY, customer="cus_1", subscription="sub_1")
    world.fx_rates += [("2023-12-01", "eur", 1.10)]
    con = derive(world, seen_at=month(1))
    found = sorted(con.execute("SELECT kind, object_type, object_id, related_id FROM data_quality").fetchall())
    assert found == [("currency_mismatch", "discount", bad["id"], "co_usd"),
                     ("currency_mismatch", "subscription_item", "si_2", "usd_plan")], found
    detail = dict(con.execute("SELECT object_type, detail FROM data_quality").fetchall())
    assert "billed in eur" in detail["subscription_item"] and "counted only on items priced in usd" in detail["discount"]
    # (the euro amount off applies, the dollar one does not: 10 EUR - 1 EUR, plus 20 USD as priced)
    assert customer_mrr_at(con, "cus_1", T0 + 2 * DAY) == Decimal("9.0000") * Decimal("1.10") + 20


def test_a_tax_inclusive_price_no_invoice_shows_is_a_data_quality_row(world: World, derive: Derive) -> None:
    """Stripe works out an inclusive tax per invoice; an item of a tax-inclusive licensed price whose customer has
    no invoice showing that tax keeps it in its MRR, and says so (a metered item's MRR comes from its invoiced
    amount less that tax: no row). Once an invoice shows the tax, the row goes."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.product("prod_api", unit_label="api call")
    world.price("gross", "prod_seat", 1_200)["tax_behavior"] = "inclusive"
    world.price("net", "prod_seat", 1_000)
    world.price("usage", "prod_api", 1, usage_type="metered")["tax_behavior"] = "inclusive"
    world.subscribe("sub_1", "cus_1", [("si_1", "gross", 1), ("si_2", "net", 1), ("si_3", "usage", None)], T0,
                    invoice=False)
    con = derive(world, seen_at=month(1))
    assert con.execute("SELECT kind, object_type, object_id, related_id FROM data_quality").fetchall() == [
        ("tax_inclusive_price", "subscription_item", "si_1", "gross")]
    assert "no invoice of customer cus_1 shows its tax" in con.execute("SELECT detail FROM data_quality").fetchone()[0]
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == 22
    world.invoice_for("sub_1", T0, "subscription_create", period_start=T0)
    con = derive(world, seen_at=month(1))
    assert con.execute("SELECT count(*) FROM data_quality").fetchall() == [(0,)]
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == 22  # (an invoice without tax: none to take out)


@one_store
def test_coupon_terms_from_discount_source(world: World, derive: Derive) -> None:
    """A coupon known only as the discount's expanded ``source.coupon`` still applies."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.price("basic", "prod_seat", 1_000)
    cp = world.coupon("co_1", percent_off=50, duration="forever")
    sub = world.subscribe("sub_1", "cus_1", [("si_1", "basic", 2)], T0)
    d = world.discount("co_1", T0, customer="cus_1", subscription="sub_1")
    d["source"]["coupon"] = dict(cp)
    del world.objects["coupons"]["co_1"]
    sub["discounts"] = [d["id"]]
    con = derive(world, seen_at=month(1))
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == 10


@one_store
def test_truncated_snapshot_items_read_from_item_table(world: World, derive: Derive) -> None:
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.price("basic", "prod_seat", 100)
    items = [(f"si_{k:02d}", "basic", 1) for k in range(12)]
    sub = world.subscribe("sub_1", "cus_1", items, T0, event=False)
    full = sub["items"]["data"]
    sub["items"] = {**sub["items"], "data": full[:10], "has_more": True}
    w_load = world.load

    def load(con: duckdb.DuckDBPyConnection, **kw: Any) -> None:
        w_load(con, **kw)
        from datetime import UTC, datetime

        from stripe_churn.store.load import upsert_objects

        upsert_objects(con, "subscription_items", world.account_id, full, datetime.fromtimestamp(kw["seen_at"], tz=UTC))

    world.load = load  # type: ignore[method-assign]
    con = derive(world, seen_at=month(0, 3), events=False)
    assert customer_mrr_at(con, "cus_1", month(0, 3)) == 12


def test_two_accounts_with_the_same_ids_kept_apart(store: duckdb.DuckDBPyConnection) -> None:
    for acct, amount in (("acct_a", 1_000), ("acct_b", 3_000)):
        w = World(account_id=acct)
        w.customer("cus_1")
        w.product("prod_seat", unit_label="seat")
        w.price("basic", "prod_seat", amount)
        w.subscribe("sub_1", "cus_1", [("si_1", "basic", 2)], T0)
        w.load(store, seen_at=month(1))
    recompute(store, make_settings())
    got = store.execute("SELECT account_id, mrr FROM customer_mrr WHERE valid_to IS NULL ORDER BY 1").fetchall()
    assert [(a, float(m)) for a, m in got] == [("acct_a", 20.0), ("acct_b", 60.0)]
    assert store.execute("SELECT price_mrr('acct_b', 'basic', 3)").fetchone() == (90,)


@one_store
def test_event_with_cut_short_item_list_keeps_unlisted_items(world: World, derive: Derive) -> None:
    """An event whose embedded items stop at 10 (has_more) does not remove the items it leaves out."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.price("basic", "prod_seat", 100)
    items = [(f"si_{k:02d}", "basic", 1) for k in range(12)]
    world.subscribe("sub_1", "cus_1", items, T0)
    world.update("sub_1", month(0, 5), items=[*items[:11], ("si_11", "basic", 3)])
    for evt in world.events:
        obj = evt["data"]["object"]
        obj["items"] = {**obj["items"], "data": obj["items"]["data"][:10], "has_more": True}
    con = derive(world, seen_at=month(0, 6))
    assert customer_mrr_at(con, "cus_1", month(0, 4)) == 12
    assert customer_mrr_at(con, "cus_1", month(0, 5)) == 14


def eleventh_item_added_unlisted(world: World) -> None:
    """Ten seats from T0; an eleventh added on day 5 with no proration (no invoice bills it yet); every event
    cuts its embedded items at 10 (has_more), so none lists the new one: only the snapshot does."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.price("basic", "prod_seat", 100)
    items = [(f"si_{k:02d}", "basic", 1) for k in range(10)]
    world.subscribe("sub_1", "cus_1", items, T0)
    world.update("sub_1", month(0, 5), items=[*items, ("si_10", "basic", 2)], prorate=False)
    world.update("sub_1", month(0, 12), metadata={"k": "v"})
    for evt in world.events:
        obj = evt["data"]["object"]
        obj["items"] = {**obj["items"], "data": obj["items"]["data"][:10], "has_more": True}


@one_store
def test_an_item_no_event_lists_counts_from_its_creation(world: World, derive: Derive) -> None:
    """An item added inside the events' window that no event lists (their lists cut short) and the snapshot
    lists counts from its `created`, the moment of the event that added it, not from the snapshot's moment."""
    eleventh_item_added_unlisted(world)
    con = derive(world, seen_at=month(0, 20))
    assert customer_mrr_at(con, "cus_1", month(0, 4)) == 10
    assert customer_mrr_at(con, "cus_1", month(0, 6)) == 12
    moves = con.execute("SELECT subscription_item_id, CAST(epoch(occurred_at) AS BIGINT), source_event_id "
                        "FROM mrr_movements WHERE epoch(occurred_at) > ?", [month(0, 1)]).fetchall()
    added = [e["id"] for e in world.events if e["created"] == month(0, 5)]
    assert moves == [("si_10", month(0, 5), added[0])]


def test_a_snapshot_listed_with_stripes_clock_ahead_of_this_machines(world: World,
                                                                     store: duckdb.DuckDBPyConnection) -> None:
    """The world above synced while Stripe's clock (a sandbox advanced, a test clock) ran ahead of this
    machine's: the rows' `last_seen_at` (this machine's clock) is before the events, their version (the listing's
    start, Stripe's clock) after them. The snapshot is an observation at its version: it lists the eleventh
    item, which counts from its creation. (Dated by this machine's clock the snapshot came before the last event
    and said nothing: the item was never seen.)"""
    eleventh_item_added_unlisted(world)
    world.load(store, seen_at=month(0, 3))  # this machine's clock
    store.execute("UPDATE subscriptions SET version = ?", [month(0, 20)])
    record_stripes_clock(store, world.account_id, month(0, 20))
    recompute(store, make_settings())
    assert customer_mrr_at(store, "cus_1", month(0, 4)) == 10
    assert customer_mrr_at(store, "cus_1", month(0, 13)) == 12


@pytest.mark.parametrize("missed", [False, True], ids=["nothing-missed", "listed-item-changed-without-event"])
@one_store
def test_a_cut_short_item_list_disagrees_only_about_the_items_it_lists(world: World, derive: Derive,
                                                                       missed: bool) -> None:
    """Events whose embedded items stop at 20 (has_more) give no data-quality row about the items they leave
    out (the invoice before the event window bills them; the snapshot lists them), but a change to an item they
    do list that no event explains is still reported."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.price("basic", "prod_seat", 100)
    items = [(f"si_{k:02d}", "basic", 1) for k in range(22)]
    world.subscribe("sub_1", "cus_1", items, T0)
    world.cycle("sub_1", month(1))
    world.update("sub_1", month(1, 10), metadata={"k": "v"})
    if missed:
        world.update("sub_1", month(1, 15), items=[("si_00", "basic", 3), *items[1:]], prorate=False, event=False)
    for evt in world.events:
        obj = evt["data"]["object"]
        obj["items"] = {**obj["items"], "data": obj["items"]["data"][:20], "has_more": True}
    con = derive(world, seen_at=month(1, 20), events=month(1, 1))
    assert customer_mrr_at(con, "cus_1", month(1, 12)) == 22
    assert customer_mrr_at(con, "cus_1", month(1, 20)) == (24 if missed else 22)
    rows = con.execute("SELECT kind, object_id FROM data_quality ORDER BY ALL").fetchall()
    assert rows == ([("snapshot_event_mismatch", "sub_1")] if missed else [])


def expired_pending_update(w: World, at: int, items: list[tuple[str, str, int | None]]) -> dict[str, Any]:
    """An update made with payment_behavior=pending_if_incomplete whose payment failed and was never retried:
    Stripe bills it on a subscription_update invoice (prorations for the new items, a credit for the old), keeps
    the subscription as it was, and voids the invoice when the pending update expires (23 hours later at the
    most). Returns that invoice."""
    inv = w.pending_update("sub_1", at, items, event=False)
    inv.update(status="void")
    inv["status_transitions"].update(paid_at=None, voided_at=at + 23 * 3600)
    return inv


@pytest.mark.parametrize("change", ["upgrade", "cross-sell"])
@one_store
def test_a_voided_invoice_of_an_expired_pending_update_is_no_change(world: World, derive: Derive,
                                                                     change: str) -> None:
    """Before the events' window, history comes from invoices: the voided invoice of an update that never
    applied is not evidence of it (it read as an upgrade or a cross-sell, then as a downgrade at the next
    renewal or when the billed period ended)."""
    seats_and_storage(world)
    items = ([("si_a", "pro", 3), ("si_b", "store", 2)] if change == "upgrade"
             else [("si_a", "basic", 3), ("si_b", "store", 2), ("si_c", "store", 10)])
    world.price("pro", "prod_seat", 2_500)
    expired_pending_update(world, month(0, 10), items)
    world.cycle("sub_1", month(1))
    world.cycle("sub_1", month(2))
    con = derive(world, seen_at=month(2, 2), events=False)
    for at in (month(0, 10), month(0, 20), month(1, 5), month(2, 1)):
        assert customer_mrr_at(con, "cus_1", at) == 44, at
    assert con.execute("SELECT movement FROM mrr_movements").fetchall() == [("new",)]
    assert con.execute("SELECT count(*) FROM data_quality").fetchall() == [(0,)]


@pytest.mark.parametrize("metered", [False, True])
@one_store
def test_renewals_voided_while_collection_is_paused_still_show_the_items(world: World, derive: Derive,
                                                                          metered: bool) -> None:
    """pause_collection with behavior void: Stripe voids every invoice made while collection is paused, the
    renewals too, and the subscription goes on as it was. Before the events' window such a renewal still
    shows what the subscription renewed with: an add-on removed after the pause is dated at its removal (it
    read as removed when the last paid renewal's period ended, a month early), and a metered item's usage
    billed on a voided renewal sets its MRR as any renewal's does."""
    seats_and_storage(world)
    if metered:
        world.product("prod_sms", unit_label="message")
        world.price("sms", "prod_sms", 10, usage_type="metered")
        world.update("sub_1", T0, items=[("si_a", "basic", 3), ("si_b", "store", 2), ("si_m", "sms", None)],
                     prorate=False, event=False)
    world.cycle("sub_1", month(1), usage={"si_m": 100} if metered else None)
    world.update("sub_1", month(1, 10), pause_collection={"behavior": "void", "resumes_at": None})
    voided = [world.cycle("sub_1", month(n), usage={"si_m": 300} if metered else None) for n in (2, 3)]
    for inv in voided:
        inv.update(status="void", amount_remaining=0)
        inv["status_transitions"].update(paid_at=None, voided_at=inv["created"])
    world.update("sub_1", month(3, 5), pause_collection=None)
    world.update("sub_1", month(3, 10), items=[("si_a", "basic", 3)] + ([("si_m", "sms", None)] if metered else []))
    con = derive(world, seen_at=month(3, 20), events=False)
    usage = (3 if metered else 0)
    assert customer_mrr_at(con, "cus_1", month(2, 20)) == 44 + usage
    assert customer_mrr_at(con, "cus_1", month(3, 8)) == 44 + usage
    assert customer_mrr_at(con, "cus_1", month(3, 12)) == 30 + usage
    got = con.execute("SELECT movement, occurred_at, mrr_delta FROM mrr_movements WHERE movement <> 'new' "
                      "ORDER BY occurred_at").fetchall()
    expected = [("downgrade", month(3, 10), Decimal(-14))]
    if metered:  # (usage billed: 1.00 on the paid renewal, 3.00 on each voided one)
        expected[:0] = [("resource_expansion", month(1), Decimal(1)), ("resource_expansion", month(2), Decimal(2))]
    assert [(m, int(at.timestamp()), d) for m, at, d in got] == expected, got


@one_store
def test_an_update_voided_while_collection_is_paused_still_dates_its_change(world: World, derive: Derive) -> None:
    """A change made while collection is paused with behavior void: Stripe voids its update invoice at once, no
    payment attempted. Unlike an expired pending update's (attempted, failed), that invoice still dates the
    change before the events' window (it read as made at the next renewal)."""
    seats_and_storage(world)
    world.cycle("sub_1", month(1))
    world.update("sub_1", month(1, 2), pause_collection={"behavior": "void", "resumes_at": None})
    world.update("sub_1", month(1, 10), items=[("si_a", "basic", 5), ("si_b", "store", 2)])
    voided = [world.objects["invoices"][i] for i in list(world.objects["invoices"])[-1:]]
    voided.append(world.cycle("sub_1", month(2)))
    for inv in voided:
        inv.update(status="void", amount_remaining=0)
        inv["status_transitions"].update(paid_at=None, voided_at=inv["created"])
    assert [i["billing_reason"] for i in voided] == ["subscription_update", "subscription_cycle"]
    world.update("sub_1", month(2, 5), pause_collection=None)
    world.cycle("sub_1", month(3))
    con = derive(world, seen_at=month(3, 2), events=False)
    assert customer_mrr_at(con, "cus_1", month(1, 8)) == 44
    assert customer_mrr_at(con, "cus_1", month(1, 12)) == 64
    got = con.execute("SELECT movement, occurred_at, mrr_delta, source_invoice_id FROM mrr_movements "
                      "WHERE movement <> 'new'").fetchall()
    assert [(m, int(at.timestamp()), d, i) for m, at, d, i in got] == [
        ("seat_expansion", month(1, 10), Decimal(20), voided[0]["id"])], got


@one_store
def test_a_voided_invoice_is_not_named_as_the_source_of_a_change_without_an_invoice(world: World,
                                                                                  derive: Derive) -> None:
    """Changes made without prorations have no invoice of their own; 70 names the subscription's first
    invoice made within their window instead. The voided invoice of an update that never applied, made
    between two such changes of one window, bills nothing that happened: it is no source."""
    seats_and_storage(world)
    world.price("pro", "prod_seat", 2_500)
    at = month(1, 10)
    world.update("sub_1", at, items=[("si_a", "basic", 5), ("si_b", "store", 2)], prorate=False)
    seats_event = world.events[-1]["id"]
    voided = expired_pending_update(world, at + 300, [("si_a", "pro", 5), ("si_b", "store", 2)])
    world.update("sub_1", at + 600, items=[("si_a", "basic", 5), ("si_b", "store", 4)], prorate=False)
    storage_event = world.events[-1]["id"]
    con = derive(world, seen_at=month(2, 2))
    got = con.execute("SELECT movement, mrr_delta, source_event_id, source_invoice_id FROM mrr_movements "
                      "WHERE movement <> 'new' ORDER BY movement").fetchall()
    assert voided["status"] == "void"
    assert {r[2] for r in got} <= {seats_event, storage_event}
    assert [(r[0], r[1], r[3]) for r in got] == [("resource_expansion", Decimal(14), None),
                                                 ("seat_expansion", Decimal(20), None)]


@pytest.mark.parametrize("events", [True, False], ids=["events", "invoices-and-dates"])
@one_store
def test_prorations_billed_on_the_next_renewal_date_the_change(world: World, derive: Derive, events: bool) -> None:
    """An update made with Stripe's default proration_behavior (create_prorations) makes no invoice: its
    prorations wait as pending invoice items and are billed on the next renewal invoice, beside the new period's
    lines. Read from invoices alone, the change is dated at the prorations' period start (when it was made), not
    at the renewal that billed them, as the events date it."""
    seats_and_storage(world)
    world.update("sub_1", month(0, 10), items=[("si_a", "basic", 5), ("si_b", "store", 2)], prorate=False)
    item_a = next(i for i in world.objects["subscriptions"]["sub_1"]["items"]["data"] if i["id"] == "si_a")
    renewal = world.cycle("sub_1", month(1))
    renewal["lines"]["data"][:0] = [
        world._line("sub_1", item_a, month(0, 10), month(1), proration=True, credit=True, quantity=3),
        world._line("sub_1", item_a, month(0, 10), month(1), proration=True, quantity=5)]
    for line in renewal["lines"]["data"]:
        line["invoice"] = renewal["id"]
    world.cycle("sub_1", month(2))
    con = derive(world, seen_at=month(2, 2), events=events)
    assert [customer_mrr_at(con, "cus_1", at) for at in (month(0, 9), month(0, 11), month(1, 5))] == [44, 64, 64]
    got = con.execute("SELECT occurred_at, movement, mrr_delta FROM mrr_movements WHERE movement <> 'new'").fetchall()
    assert [(int(t.timestamp()), m, d) for t, m, d in got] == [(month(0, 10), "seat_expansion", Decimal(20))]
    assert con.execute("SELECT kind, detail FROM data_quality").fetchall() == []


@one_store
def test_an_update_waiting_for_its_payment_is_a_pending_update_row(world: World, derive: Derive) -> None:
    """Inside the events' window, an update made with payment_behavior=pending_if_incomplete whose payment has
    not gone through yet: its subscription_update invoice is open and bills the new price, the events keep the
    old one. Nothing changed (yet): MRR stays, and data quality names the row for what it is."""
    seats_and_storage(world)
    world.price("pro", "prod_seat", 2_500)
    at = month(1, 10)
    invoice = world.pending_update("sub_1", at, [("si_a", "pro", 3), ("si_b", "store", 2)])
    con = derive(world, seen_at=at + 3600)
    assert customer_mrr_at(con, "cus_1", at + 1800) == 44
    assert con.execute("SELECT movement FROM mrr_movements").fetchall() == [("new",)]
    (row,) = con.execute("SELECT kind, object_id, related_id, detail FROM data_quality").fetchall()
    assert row == ("pending_update", "si_a", invoice["id"],
                   f"invoice {invoice['id']} (open) bills 3 × pro on item si_a for an update that waits for its "
                   "payment (payment_behavior=pending_if_incomplete: it applies once paid, and Stripe voids the "
                   "invoice when the update expires, 23 hours at the most); the events give 3 × basic and were used")
