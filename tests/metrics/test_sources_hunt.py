"""Where the change history comes from (design.md 3), checked case by case: events inside Stripe's 30 days, invoices
before them, the latest sync's snapshot, and the events stored before a gap in them. Where the sources disagree
the events win and the disagreement is a row of `data_quality`, never dropped."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from builders import DAY, World, add_months, ts
from conftest import customer_mrr_at, make_settings, record_stripes_clock

from stripe_churn.metrics.incremental import recompute_changed
from stripe_churn.metrics.runner import recompute
from stripe_churn.store.db import open_store
from stripe_churn.store.load import (
    Staged,
    create_stages,
    drop_stages,
    mark_missing_children,
    merge_stage,
    upsert_objects,
    upsert_staged,
)
from stripe_churn.store.schema import RAW_TABLES

T0 = ts(2026, 1, 1)


def month(n: int, day: int = 0) -> int:
    return add_months(T0, n) + day * DAY


def store_of(tmp: Path, template: Path, name: str) -> duckdb.DuckDBPyConnection:
    shutil.copyfile(template, tmp / f"{name}.duckdb")
    return open_store(tmp / f"{name}.duckdb")


def derived(tmp: Path, template: Path, name: str, w: World, *, seen_at: int, events: bool | int = True,
            **rules: Any) -> duckdb.DuckDBPyConnection:
    con = store_of(tmp, template, name)
    w.load(con, seen_at=seen_at, events=events)
    recompute(con, make_settings("usd", **rules))
    return con


def quality(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    """(kind, object_id, related_id, moment as unix seconds) of every data-quality row."""
    return con.execute("SELECT kind, object_id, related_id, CAST(epoch(moment) AS BIGINT) FROM data_quality "
                       "ORDER BY ALL").fetchall()


def moves(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return con.execute("SELECT customer_id, CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta "
                       "FROM mrr_movements ORDER BY 2, 1, 3").fetchall()


def five_seats(w: World) -> World:
    """cus_1 on 5 seats of basic (10.00 a month, 50.00) from T0, renewing on the 1st."""
    w.customer("cus_1")
    w.product("prod_seat", unit_label="seat", family="core")
    w.price("basic", "prod_seat", 1_000)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 5)], T0)
    return w


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sources")


@pytest.fixture(scope="module")
def template(tmp: Path) -> Path:
    path = tmp / "migrated.duckdb"
    open_store(path).close()
    return path


# --- a collection pause only the latest sync shows -------------------------------------------------------------

@pytest.fixture(scope="module")
def pause_unseen(tmp: Path, template: Path) -> Iterator[dict[str, duckdb.DuckDBPyConnection]]:
    """Collection paused on 11 January with no event stored for it (seen by the sync of 21 January), and the
    reverse: paused by an event on 11 January, resumed unseen (the sync of 21 January shows no pause)."""
    paused = five_seats(World())
    paused.update("sub_1", month(0, 10), event=False, pause_collection={"behavior": "void", "resumes_at": None})
    resumed = five_seats(World())
    resumed.update("sub_1", month(0, 10), pause_collection={"behavior": "void", "resumes_at": None})
    resumed.update("sub_1", month(0, 15), event=False, pause_collection=None)
    cons = {
        "paused-kept": derived(tmp, template, "paused-kept", paused, seen_at=month(0, 20)),
        "paused-zero": derived(tmp, template, "paused-zero", paused, seen_at=month(0, 20),
                               pause_collection_keeps_mrr=False),
        "resumed-zero": derived(tmp, template, "resumed-zero", resumed, seen_at=month(0, 20),
                                pause_collection_keeps_mrr=False),
    }
    yield cons
    for con in cons.values():
        con.close()


def test_a_collection_pause_no_event_shows_counts_from_the_sync_that_saw_it(
        pause_unseen: dict[str, duckdb.DuckDBPyConnection]) -> None:
    """With pause_collection_keeps_mrr = false a pause the events missed takes the MRR to zero from the sync that
    saw it (nothing dates it earlier); it used to be ignored, the subscription counted 50.00 throughout."""
    con = pause_unseen["paused-zero"]
    assert customer_mrr_at(con, "cus_1", month(0, 20) - 1) == 50
    assert customer_mrr_at(con, "cus_1", month(0, 20)) == 0
    assert moves(con) == [("cus_1", T0, "new", Decimal("50.0000")),
                          ("cus_1", month(0, 20), "cancellation", Decimal("-50.0000"))]
    assert quality(con) == [("snapshot_event_mismatch", "sub_1", None, month(0, 20))]


def test_a_collection_pause_no_event_shows_is_recorded_when_it_keeps_mrr(
        pause_unseen: dict[str, duckdb.DuckDBPyConnection]) -> None:
    """By default a pause keeps the MRR: nothing moves, but the snapshot still disagrees with the last event."""
    con = pause_unseen["paused-kept"]
    assert moves(con) == [("cus_1", T0, "new", Decimal("50.0000"))]
    assert quality(con) == [("snapshot_event_mismatch", "sub_1", None, month(0, 20))]


def test_a_resume_no_event_shows_counts_from_the_sync_that_saw_it(
        pause_unseen: dict[str, duckdb.DuckDBPyConnection]) -> None:
    con = pause_unseen["resumed-zero"]
    assert customer_mrr_at(con, "cus_1", month(0, 10) - 1) == 50
    assert customer_mrr_at(con, "cus_1", month(0, 19)) == 0
    assert customer_mrr_at(con, "cus_1", month(0, 20)) == 50
    assert quality(con) == [("snapshot_event_mismatch", "sub_1", None, month(0, 20))]


# --- an event missing between two stored ones -------------------------------------------------------------------

@pytest.mark.parametrize("prorate", [False, True], ids=["without-prorations", "with-prorations"])
def test_an_update_whose_state_before_is_not_the_last_events_is_a_missing_event(tmp: Path, template: Path,
                                                                                prorate: bool) -> None:
    """3 seats (30.00), 5 on 6 January (event), 7 on 11 January (its event not stored), 9 on 16 January (event, its
    previous_attributes: 7 seats). The history keeps 5 seats until the 16th, where the events date the change,
    and the break between the events is a `missing_events` row (it used to pass unrecorded); with prorations the
    invoice of the 11th that bills 7 seats is an invoice_event_mismatch row as well."""
    w = World()
    w.customer("cus_1")
    w.product("prod_seat", unit_label="seat")
    w.price("basic", "prod_seat", 1_000)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    w.update("sub_1", month(0, 5), items=[("si_1", "basic", 5)])
    w.update("sub_1", month(0, 10), items=[("si_1", "basic", 7)], event=False, prorate=prorate)
    w.update("sub_1", month(0, 15), items=[("si_1", "basic", 9)])
    con = derived(tmp, template, f"missing-{prorate}", w, seen_at=month(0, 20))
    assert moves(con) == [("cus_1", T0, "new", Decimal("30.0000")),
                          ("cus_1", month(0, 5), "seat_expansion", Decimal("20.0000")),
                          ("cus_1", month(0, 15), "seat_expansion", Decimal("40.0000"))]
    after = w.events[-1]["id"]
    before = next(e["id"] for e in w.events if e["created"] == month(0, 5))
    expected = [("missing_events", "sub_1", after, month(0, 15))]
    if prorate:
        update = next(i["id"] for i in w.objects["invoices"].values() if i["created"] == month(0, 10))
        expected.insert(0, ("invoice_event_mismatch", "si_1", update, month(0, 10)))
    assert quality(con) == expected
    (detail,) = con.execute("SELECT detail FROM data_quality WHERE kind = 'missing_events'").fetchall()[0]
    assert detail == (f"event {after} says the subscription's items just before it differ from what event {before} "
                      "left at 2026-01-06 00:00:00 UTC: an event between them is not stored, and the change it made "
                      f"is dated at event {after}")
    con.close()


def test_updates_that_follow_each_other_are_no_missing_event(tmp: Path, template: Path) -> None:
    """Status, collection pause and items changed by updates whose previous_attributes each match the event before:
    no row (also across a paused event, which carries no previous_attributes)."""
    w = five_seats(World())
    w.update("sub_1", month(0, 3), status="past_due")
    w.update("sub_1", month(0, 4), status="active")
    w.update("sub_1", month(0, 5), pause_collection={"behavior": "void", "resumes_at": None})
    w.update("sub_1", month(0, 6), pause_collection=None, items=[("si_1", "basic", 6)])
    w.update("sub_1", month(0, 7), status="paused")
    w.event("customer.subscription.paused", month(0, 7) + 1, w.objects["subscriptions"]["sub_1"])
    w.update("sub_1", month(0, 8), status="active")
    con = derived(tmp, template, "chained", w, seen_at=month(0, 20))
    assert quality(con) == []
    con.close()


# --- statuses the events stored before a gap show ---------------------------------------------------------------

GAP = (month(3, 4), month(4, 19))  # no event stored from the first to the second
GAP_SEEN = month(5, 9)


def load_with_gap(w: World, con: duckdb.DuckDBPyConnection) -> None:
    """The store as a sync leaves it after more than Stripe's 30 days away: every object, the events stored before
    the gap and those after it, and the cursor that marks where the unbroken events begin."""
    w.load(con, seen_at=GAP_SEEN, events=False)
    events = [e for e in w.events if not GAP[0] <= e["created"] < GAP[1]]
    upsert_objects(con, "events", w.account_id, events, datetime.fromtimestamp(GAP_SEEN, tz=UTC))
    con.execute("INSERT INTO sync_cursors (account_id, stream, value, created, done) "
                "VALUES (?, 'events:unbroken', NULL, ?, false)", [w.account_id, GAP[1]])
    record_stripes_clock(con, w.account_id, GAP_SEEN)


def spells_before_the_gap() -> World:
    """cus_1's 5 seats (50.00) go past_due from 3 to 7 February, have collection paused from 11 to 16 February and
    are paused (status) from 6 to 26 March, every change with its event, all before the gap; the first event after
    the gap is on 26 May."""
    w = five_seats(World())
    for n in range(1, 6):
        w.cycle("sub_1", month(n))
    w.update("sub_1", month(1, 2), status="past_due")
    w.update("sub_1", month(1, 6), status="active")
    w.update("sub_1", month(1, 10), pause_collection={"behavior": "void", "resumes_at": None})
    w.update("sub_1", month(1, 15), pause_collection=None)
    w.update("sub_1", month(2, 5), status="paused")
    w.update("sub_1", month(2, 25), status="active")
    w.update("sub_1", month(4, 25), metadata={"note": "after the gap"})
    w.events.sort(key=lambda e: e["created"])
    return w


SPELL_RULES = {"default": {}, "past-due-zero": {"past_due_counts": False},
               "pause-zero": {"pause_collection_keeps_mrr": False}}


@pytest.fixture(scope="module")
def spells(tmp: Path, template: Path) -> Iterator[dict[str, duckdb.DuckDBPyConnection]]:
    cons = {}
    for name, rules in SPELL_RULES.items():
        con = store_of(tmp, template, f"gap-{name}")
        load_with_gap(spells_before_the_gap(), con)
        recompute(con, make_settings("usd", **rules))
        cons[name] = con
        cons[f"{name}-no-gap"] = derived(tmp, template, f"nogap-{name}", spells_before_the_gap(), seen_at=GAP_SEEN,
                                         **rules)
    yield cons
    for con in cons.values():
        con.close()


def levels(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return con.execute("SELECT CAST(epoch(valid_from) AS BIGINT), CAST(epoch(valid_to) AS BIGINT), mrr "
                       "FROM customer_mrr ORDER BY 1").fetchall()


@pytest.mark.parametrize("rules", list(SPELL_RULES))
def test_statuses_the_events_before_a_gap_show_count(spells: dict[str, duckdb.DuckDBPyConnection],
                                                     rules: str) -> None:
    """The events stored before the gap date every spell (events win: the invoices and the snapshot's dates show
    none of them), so the MRR is what it is with no gap at all: zero while paused (by default), while past_due
    (past_due_counts = false) and while collection is paused (pause_collection_keeps_mrr = false). The spells used
    to be ignored, the subscription counted 50.00 throughout."""
    zero = [(month(2, 5), month(2, 25))]
    if rules == "past-due-zero":
        zero.insert(0, (month(1, 2), month(1, 6)))
    if rules == "pause-zero":
        zero.insert(0, (month(1, 10), month(1, 15)))
    expected: list[tuple[int, int | None, Decimal]] = []
    at = T0
    for start, end in zero:
        expected += [(at, start, Decimal("50.0000")), (start, end, Decimal("0.0000"))]
        at = end
    expected.append((at, None, Decimal("50.0000")))
    assert levels(spells[rules]) == expected
    assert levels(spells[f"{rules}-no-gap"]) == expected
    kinds = [m[2] for m in moves(spells[rules])]
    assert kinds == ["new"] + ["cancellation", "reactivation"] * len(zero)
    assert quality(spells[rules]) == []


@pytest.mark.parametrize("status", ["paused", "past_due"])
def test_a_spell_the_gap_ends_ends_at_what_dates_it(tmp: Path, template: Path, status: str) -> None:
    """The last event before the gap (2 April) leaves the subscription paused, or past_due (past_due_counts =
    false); it comes back (active) on 2 May, in the gap, and the first event after the gap (26 May) says it is
    active. A paused subscription makes no invoice until resumed: the resume's invoice of 2 May dates it. Nothing
    dates the past_due spell's end (its invoice's payment is not read): it ends where the events begin, and that is a
    `missing_events` row."""
    w = five_seats(World())
    for n in (1, 2, 3):
        w.cycle("sub_1", month(n))
    w.update("sub_1", month(3, 1), status=status)
    w.update("sub_1", month(4, 1), status="active")
    resume = w.invoice_for("sub_1", month(4, 1), "subscription_update", period_start=month(4, 1))
    w.update("sub_1", month(4, 25), metadata={"note": "after the gap"})
    con = store_of(tmp, template, f"open-{status}")
    load_with_gap(w, con)
    recompute(con, make_settings("usd", past_due_counts=False))
    back = month(4, 1) if status == "paused" else month(4, 25)
    assert levels(con) == [(T0, month(3, 1), Decimal("50.0000")), (month(3, 1), back, Decimal("0.0000")),
                           (back, None, Decimal("50.0000"))]
    last_before = next(e["id"] for e in w.events if e["created"] == month(3, 1))
    if status == "paused":
        assert quality(con) == []
        assert con.execute("SELECT source_invoice_id FROM mrr_movements WHERE movement = 'reactivation'"
                           ).fetchall() == [(resume["id"],)]
    else:
        assert quality(con) == [("missing_events", "sub_1", last_before, month(4, 25))]
        (detail,) = con.execute("SELECT detail FROM data_quality").fetchall()[0]
        assert detail == (f"event {last_before} (stored before a gap in the events) left the subscription past_due, "
                          "and the events after the gap begin with it active: the change was made in the gap, and is "
                          "dated where they begin")
    con.close()


@pytest.mark.parametrize("then", ["paid", "open", "given-up-then-paid"])
def test_a_renewal_paid_late_before_the_events_is_a_past_due_spell(tmp: Path, template: Path, then: str) -> None:
    """Before the events' window only the invoices show a payment that failed: a renewal's invoice paid at a later
    attempt (attempt_count 2) was past_due from its finalization to its payment; one still open after a failed
    attempt (the subscription past_due now), from its finalization on; one marked uncollectible, then paid, past_due
    to the mark, unpaid to the payment. 5 seats (50.00), renewals on the 1st, the renewal of 1 March failing (paid on
    6 March; or open; or given up on 4 March and paid on 9 March); the events stored from 15 April on. With
    past_due_counts = false the MRR is 0 while past_due (and while unpaid): a cancellation, involuntary, and a
    reactivation at the payment. By default past_due counts: 50.00 throughout, no movement but `new`, but for the
    unpaid spell (zero under either rule). (The spells were not read: 50.00 throughout under either rule, the open
    one's zero dated where the events begin.)"""
    w = five_seats(World())
    for n in (1, 2, 3):
        w.cycle("sub_1", month(n))
    failed = next(i for i in w.objects["invoices"].values() if i["created"] == month(2))
    failed.update(attempted=True, attempt_count=2)
    failed["status_transitions"]["paid_at"] = month(2, 5)
    if then == "open":
        failed.update(status="open", attempt_count=1)
        failed["status_transitions"]["paid_at"] = None
        w.objects["invoices"] = {k: v for k, v in w.objects["invoices"].items() if v["created"] <= month(2)}
        w.objects["subscriptions"]["sub_1"]["status"] = "past_due"
    elif then == "given-up-then-paid":
        failed["status_transitions"].update(marked_uncollectible_at=month(2, 3), paid_at=month(2, 8))
    w.update("sub_1", month(3, 20), metadata={"note": "inside the events"})
    zero = {"paid": (month(2), month(2, 5)), "open": (month(2), None), "given-up-then-paid": (month(2), month(2, 8))}
    start, end = zero[then]
    for rule in ("past-due-zero", "default"):
        con = derived(tmp, template, f"late-{then}-{rule}", w, seen_at=month(4), events=month(3, 15),
                      past_due_counts=rule == "default")
        if rule == "default" and then == "given-up-then-paid":  # (unpaid counts zero whatever the rule)
            assert levels(con) == [(T0, month(2, 3), Decimal("50.0000")), (month(2, 3), end, Decimal("0.0000")),
                                   (end, None, Decimal("50.0000"))]
            assert [m[2] for m in moves(con)] == ["new", "cancellation", "reactivation"]
        elif rule == "default":
            assert levels(con) == [(T0, None, Decimal("50.0000"))]
            assert [m[2] for m in moves(con)] == ["new"]
        else:
            want = [(T0, start, Decimal("50.0000")), (start, end, Decimal("0.0000"))]
            assert levels(con) == (want if end is None else [*want, (end, None, Decimal("50.0000"))])
            assert [m[2] for m in moves(con)] == ["new", "cancellation"] + ([] if end is None else ["reactivation"])
            assert con.execute("SELECT churn_type FROM mrr_movements WHERE movement = 'cancellation'"
                               ).fetchall() == [("involuntary",)]
        con.close()


def same_second_before_a_gap(swap: bool) -> World:
    """5 seats; on 11 February two updates in one second, 5 to 6 seats and 6 to 8; on 11 March a payment fails and
    is recovered in the same second (active to past_due, past_due to active); renewals on the 1st; all before the
    gap. With ``swap`` the ids of each second's two events sort the other way round (Stripe's ids are not ordered
    within a second)."""
    w = five_seats(World())
    w.cycle("sub_1", month(1))
    w.update("sub_1", month(1, 10), items=[("si_1", "basic", 6)], prorate=False)
    w.update("sub_1", month(1, 10), items=[("si_1", "basic", 8)], prorate=False)
    w.cycle("sub_1", month(2))
    w.update("sub_1", month(2, 10), status="past_due")
    w.update("sub_1", month(2, 10), status="active")
    for n in (3, 4, 5):
        w.cycle("sub_1", month(n))
    w.update("sub_1", month(4, 25), metadata={"note": "after the gap"})
    if swap:
        for at in (month(1, 10), month(2, 10)):
            a, b = (e for e in w.events if e["created"] == at)
            a["id"], b["id"] = b["id"], a["id"]
    w.events.sort(key=lambda e: (e["created"], e["id"]))
    return w


@pytest.mark.parametrize("swap", [False, True], ids=["ids-in-order", "ids-reversed"])
def test_events_in_one_second_before_a_gap_are_taken_in_the_order_they_happened(tmp: Path, template: Path,
                                                                                 swap: bool) -> None:
    """Whatever their ids, the second of each pair is the later (its previous_attributes are the first's state
    after; of the two that undo each other, the one whose state before is the state the event before them left
    comes first): 8 seats (80.00) from 11 February, and no past_due spell from 11 March (past_due_counts = false).
    Taken by id, the reversed pairs used to leave 6 seats until the renewal of 1 March and past_due (zero) until
    the next step, where the events after the gap begin."""
    con = store_of(tmp, template, f"same-second-{swap}")
    load_with_gap(same_second_before_a_gap(swap), con)
    recompute(con, make_settings("usd", past_due_counts=False))
    assert levels(con) == [(T0, month(1, 10), Decimal("50.0000")), (month(1, 10), None, Decimal("80.0000"))]
    assert quality(con) == []
    con.close()


# (20% off from 11 January to 16 March, then full price again)
DISCOUNT_OFF_16_MARCH = [(T0, month(0, 10), Decimal("50.0000")), (month(0, 10), month(2, 15), Decimal("40.0000")),
                         (month(2, 15), None, Decimal("50.0000"))]


def derived_with_gap(w: World, tmp: Path, template: Path, name: str) -> duckdb.DuckDBPyConnection:
    """``w``'s events in time order, loaded as a sync after a gap in them stores them, and derived."""
    w.events.sort(key=lambda e: e["created"])
    con = store_of(tmp, template, name)
    load_with_gap(w, con)
    recompute(con, make_settings("usd"))
    return con


def test_a_discount_an_event_before_the_gap_took_off_ends_then(tmp: Path, template: Path) -> None:
    """20% off sub_1 (forever) from 11 January; an update takes it off on 16 March, before the gap, its event stored
    (previous_attributes list the discount). It ends then (40.00 to 50.00 on 16 March), as with no gap at all; it
    used to end at the next invoice without it (1 April), and data quality said no stored event showed when."""
    w = five_seats(World())
    w.coupon("c20", percent_off=20, duration="forever")
    off = w.discount("c20", month(0, 10), customer="cus_1", subscription="sub_1")
    w.update("sub_1", month(0, 10), discounts=[off["id"]])
    for n in range(1, 6):
        inv = w.cycle("sub_1", month(n))
        if n <= 2:
            inv["discounts"] = [off["id"]]
    w.update("sub_1", month(2, 15), discounts=[])
    off["deleted"] = True
    w.update("sub_1", month(4, 25), metadata={"note": "after the gap"})
    con = derived_with_gap(w, tmp, template, "discount-before-gap")
    taken_off = next(e["id"] for e in w.events if e["created"] == month(2, 15))
    assert levels(con) == DISCOUNT_OFF_16_MARCH
    assert con.execute("SELECT movement, mrr_delta, source_event_id FROM mrr_movements WHERE occurred_at = ?",
                       [datetime.fromtimestamp(month(2, 15), tz=UTC)]).fetchall() == [
        ("discount", Decimal("10.0000"), taken_off)]
    assert quality(con) == []
    con.close()


def test_an_items_discount_an_event_before_the_gap_took_off_ends_then(tmp: Path, template: Path) -> None:
    """The same on the item: 20% off si_1 from 11 January, taken off the item by an update of 16 March (its item
    lists, data.object's and previous_attributes', say so), before the gap. It ends then, not at the first renewal
    whose line of si_1 no longer lists it (1 April)."""
    w = five_seats(World())
    w.coupon("c20", percent_off=20, duration="forever")
    off = w.discount("c20", month(0, 10), customer="cus_1", subscription="sub_1", subscription_item="si_1")
    sub = w.objects["subscriptions"]["sub_1"]
    before = copy.deepcopy(sub)
    sub["items"]["data"][0]["discounts"] = [off["id"]]
    w.event("customer.subscription.updated", month(0, 10), sub, before)
    for n in range(1, 6):
        if n == 3:
            before = copy.deepcopy(sub)
            sub["items"]["data"][0]["discounts"] = []
            w.event("customer.subscription.updated", month(2, 15), sub, before)
        inv = w.cycle("sub_1", month(n))
        if n <= 2:
            inv["lines"]["data"][0]["discounts"] = [off["id"]]
    off["deleted"] = True
    w.update("sub_1", month(4, 25), metadata={"note": "after the gap"})
    con = derived_with_gap(w, tmp, template, "item-discount-before-gap")
    assert levels(con) == DISCOUNT_OFF_16_MARCH
    assert quality(con) == []
    con.close()


@pytest.mark.parametrize("recognition", ["ended", "canceled"])
def test_a_cancellation_requested_before_a_gap_churns_by_the_setting(tmp: Path, template: Path,
                                                                     recognition: str) -> None:
    """sub_1 (50.00) set on 10 March to cancel at its period's end, 1 April, inside the gap (its deletion event lost);
    sub_2 (cus_2, 20.00) set on 12 March to cancel and withdrawn on 14 March, both before the gap. With
    churn_recognition "ended" cus_1 churns on 1 April (its ended_at), with "canceled" on 10 March, the event of the
    request named; cus_2 never churns under "ended" and under "canceled" churns on 12 March and comes back on 14 March
    (the events stored before the gap show the request and its undoing), each row naming its event."""
    w = five_seats(World())
    w.customer("cus_2")
    w.subscribe("sub_2", "cus_2", [("si_2", "basic", 2)], T0)
    for n in (1, 2):
        w.cycle("sub_1", month(n))
        w.cycle("sub_2", month(n))
    w.cancel("sub_1", month(2, 9), ended_at=month(3), feedback="too_expensive")
    w.update("sub_2", month(2, 11), cancel_at_period_end=True, cancel_at=month(3), canceled_at=month(2, 11))
    w.update("sub_2", month(2, 13), cancel_at_period_end=False, cancel_at=None, canceled_at=None)
    for n in (3, 4, 5):
        w.cycle("sub_2", month(n))
    w.update("sub_2", month(4, 25), metadata={"note": "after the gap"})
    w.events.sort(key=lambda e: e["created"])
    con = store_of(tmp, template, f"cancel-before-gap-{recognition}")
    load_with_gap(w, con)
    recompute(con, make_settings("usd", churn_recognition=recognition))
    churn = month(3) if recognition == "ended" else month(2, 9)
    request, request_2, taken_back = (next(e["id"] for e in w.events if e["created"] == at)
                                      for at in (month(2, 9), month(2, 11), month(2, 13)))
    withdrawn = [("cus_2", month(2, 11), "cancellation", Decimal("-20.0000"), request_2, None),
                 ("cus_2", month(2, 13), "reactivation", Decimal("20.0000"), taken_back, None)]
    assert con.execute("SELECT customer_id, CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta, source_event_id, "
                       "cancellation_feedback FROM mrr_movements WHERE movement <> 'new' "
                       "ORDER BY occurred_at").fetchall() == (
        [("cus_1", churn, "cancellation", Decimal("-50.0000"), None, "too_expensive")] if recognition == "ended" else
        [("cus_1", churn, "cancellation", Decimal("-50.0000"), request, "too_expensive"), *withdrawn])
    assert customer_mrr_at(con, "cus_2", month(4, 20)) == 20
    assert quality(con) == []
    con.close()


# --- a change only the snapshot shows, seen by two syncs ------------------------------------------------------

def test_a_change_only_the_snapshot_shows_stays_dated_at_the_first_sync_that_saw_it(tmp: Path,
                                                                                   template: Path) -> None:
    """5 seats raised to 7 on 11 January without prorations, its event missing: the sync of 13 January sees it and
    dates it then (70.00 from 13 January). A second full listing on 21 January sees the same state: the change was
    still made by the 13th, and the months already reported do not move (they moved to the 21st while the store
    kept only when a row was last seen)."""
    w = five_seats(World())
    w.update("sub_1", month(0, 10), items=[("si_1", "basic", 7)], prorate=False, event=False)
    con = store_of(tmp, template, "seen-twice")
    w.load(con, seen_at=month(0, 12))
    recompute(con, make_settings("usd"))
    assert customer_mrr_at(con, "cus_1", month(0, 12)) == 70
    w.load(con, seen_at=month(0, 20))
    recompute(con, make_settings("usd"))
    try:
        assert customer_mrr_at(con, "cus_1", month(0, 12)) == 70
    finally:
        con.close()


def list_fully(w: World, con: duckdb.DuckDBPyConnection, *, seen_at: int) -> None:
    """Every object of ``w`` written as a full sync's listing writes it into a store holding the account already:
    appended to the stages, then merged per table (World.load upserts, as an incremental sync writes)."""
    seen = datetime.fromtimestamp(seen_at, UTC)
    subs = list(w.objects["subscriptions"].values())
    invoices = list(w.objects["invoices"].values())
    tables = {"customers": list(w.objects["customers"].values()), "products": list(w.objects["products"].values()),
              "prices": list(w.objects["prices"].values()), "coupons": list(w.objects["coupons"].values()),
              "discounts": list(w.objects["discounts"].values()), "subscriptions": subs,
              "subscription_items": [it for s in subs for it in s["items"]["data"]], "invoices": invoices,
              "invoice_lines": [ln for inv in invoices for ln in inv["lines"]["data"]],
              "invoice_items": list(w.objects["invoiceitems"].values()), "events": w.events}
    create_stages(con, fresh=True)
    for seq, (table, objs) in enumerate(tables.items(), start=1):
        rows = Staged()
        for obj in objs:
            rows.add(obj, seen_at)
        upsert_staged(con, table, w.account_id, rows, seen, stage_seq=seq)
    for table in tables:
        merge_stage(con, table, w.account_id)
    drop_stages(con)


def test_a_change_an_incremental_sync_saw_first_stays_dated_there_through_a_full_listing(tmp: Path,
                                                                                       template: Path) -> None:
    """The same change, first seen by the incremental sync of 13 January (its rows upserted), then by a full
    sync's listing on 21 January (merged from its stages), the customer derived again incrementally: still
    70.00 from 13 January, 50.00 before."""
    w = five_seats(World())
    w.update("sub_1", month(0, 10), items=[("si_1", "basic", 7)], prorate=False, event=False)
    con = store_of(tmp, template, "seen-incremental-then-listed")
    try:
        w.load(con, seen_at=month(0, 12))
        settings = make_settings("usd")
        recompute(con, settings)
        assert customer_mrr_at(con, "cus_1", month(0, 12)) == 70
        list_fully(w, con, seen_at=month(0, 20))
        assert recompute_changed(con, settings, datetime.fromtimestamp(month(0, 20), UTC)) == 1
        assert customer_mrr_at(con, "cus_1", month(0, 12) - 1) == 50
        assert customer_mrr_at(con, "cus_1", month(0, 12)) == 70
    finally:
        con.close()


def starts(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    """cus_1's MRR levels as (valid_from in unix seconds, mrr)."""
    return con.execute("SELECT CAST(epoch(valid_from) AS BIGINT), mrr FROM customer_mrr WHERE customer_id = 'cus_1' "
                       "ORDER BY valid_from").fetchall()


def test_a_state_that_changes_again_is_dated_at_the_sync_that_saw_the_new_state(tmp: Path, template: Path) -> None:
    """5 seats raised to 7 on 11 January and to 9 on 16 January, both without prorations and their events missing,
    seen by the syncs of 13 January (an incremental one), 21 January and 25 January (full listings): 90.00 from the
    21st, the first sync that showed 9, which the listing of the 25th does not move. (The store keeps each object's
    latest state: once 9 is seen, the 7 seen on the 13th is no longer there to read, and 50.00 holds until the
    21st.)"""
    w = five_seats(World())
    w.update("sub_1", month(0, 10), items=[("si_1", "basic", 7)], prorate=False, event=False)
    con = store_of(tmp, template, "changed-again")

    try:
        w.load(con, seen_at=month(0, 12))
        w.update("sub_1", month(0, 15), items=[("si_1", "basic", 9)], prorate=False, event=False)
        list_fully(w, con, seen_at=month(0, 20))
        list_fully(w, con, seen_at=month(0, 24))
        recompute(con, make_settings("usd"))
        assert starts(con) == [(T0, 50), (month(0, 20), 90)]
    finally:
        con.close()


def test_a_store_migrated_from_before_state_seen_at_dates_the_change_at_the_sync_before_the_upgrade(
        tmp: Path, template: Path) -> None:
    """The change of the first test seen by the sync of 13 January into a store made before 009_state_seen_at (the
    column dropped, the migration unrecorded); the upgraded store, reopened, is migrated, and a full listing on
    21 January sees the same state: 70.00 from 13 January, when the row was last written before the upgrade."""
    w = five_seats(World())
    w.update("sub_1", month(0, 10), items=[("si_1", "basic", 7)], prorate=False, event=False)
    path = tmp / "migrated-between.duckdb"
    shutil.copyfile(template, path)
    con = open_store(path)
    w.load(con, seen_at=month(0, 12))
    for table in RAW_TABLES:
        con.execute(f"ALTER TABLE {table} DROP COLUMN state_seen_at")
    con.execute("DELETE FROM schema_migrations WHERE name = '009_state_seen_at'")
    con.close()
    con = open_store(path)
    try:
        list_fully(w, con, seen_at=month(0, 20))
        recompute(con, make_settings("usd"))
        assert customer_mrr_at(con, "cus_1", month(0, 12) - 1) == 50
        assert customer_mrr_at(con, "cus_1", month(0, 12)) == 70
    finally:
        con.close()


# --- a metered item known only from invoices, gone before the syncs that see its subscription -------------------

def metered_until_february(w: World) -> World:
    """cus_1 on one seat of basic (10.00) and a metered API meter (1 cent a call) from T0; January's usage of 9,000
    calls billed by the renewal of 1 February (month(1)), no invoice since: 100.00 from 1 February."""
    w.customer("cus_1")
    w.product("prod_seat", unit_label="seat")
    w.product("prod_api", unit_label="api call")
    w.price("basic", "prod_seat", 1_000)
    w.price("meter", "prod_api", 1, usage_type="metered")
    w.subscribe("sub_1", "cus_1", [("si_s", "basic", 1), ("si_m", "meter", None)], T0)
    w.cycle("sub_1", month(1), usage={"si_m": 9_000})
    return w


def item_end(con: duckdb.DuckDBPyConnection, item: str) -> list[tuple[Any, ...]]:
    return con.execute("SELECT CAST(epoch(valid_to) AS BIGINT) FROM derived_item_history "
                       "WHERE subscription_item_id = ? ORDER BY valid_from", [item]).fetchall()


def assert_the_meter_ends_on_the_13th(con: duckdb.DuckDBPyConnection) -> None:
    """The meter of metered_until_february ended at the sync of 13 February: 100.00 before it, 10.00 from it."""
    assert item_end(con, "si_m") == [(month(1, 12),)]
    assert customer_mrr_at(con, "cus_1", month(1, 12) - 1) == 100
    assert customer_mrr_at(con, "cus_1", month(1, 12)) == 10


def test_a_metered_item_gone_before_the_syncs_stays_ended_at_the_first_sync_that_saw_it_gone(
        tmp: Path, template: Path) -> None:
    """The meter removed on 11 February without prorations, and no event stored (invoices alone): no invoice says
    when it went, and the subscription has made none since, so its last usage (90.00) counts until a sync saw the
    subscription without it: the sync of 13 February. A second sync on 21 February sees the same state: the meter
    still ended on the 13th, and 100.00 before, 10.00 from then, do not move (it ended at every sync that listed
    the subscription again)."""
    w = metered_until_february(World())
    w.update("sub_1", month(1, 10), items=[("si_s", "basic", 1)], prorate=False, event=False)
    con = store_of(tmp, template, "metered-gone-seen-twice")
    try:
        for seen in (month(1, 12), month(1, 20)):
            w.load(con, seen_at=seen, events=False)
            recompute(con, make_settings("usd"))
            assert_the_meter_ends_on_the_13th(con)
    finally:
        con.close()


def test_a_metered_item_beyond_a_cut_short_list_ends_at_the_sync_that_found_it_gone(tmp: Path,
                                                                                   template: Path) -> None:
    """The same meter listed by the sync of 6 February, removed on 11 February without prorations, found gone by
    the sync of 13 February, and the subscription seen the same again on 21 February (invoices alone). The
    subscription's embedded list is cut short and does not show the meter (has_more: as beyond Stripe's first 10
    items), so the subscription's JSON did not change when the meter went: its state was first seen on the 6th,
    when the meter was still there. The meter's own row says when a sync first saw it gone: 90.00 counts until
    the 13th."""
    w = metered_until_february(World())
    sub = w.objects["subscriptions"]["sub_1"]
    meter = next(it for it in sub["items"]["data"] if it["id"] == "si_m")
    sub["items"]["data"], sub["items"]["has_more"] = [it for it in sub["items"]["data"] if it is not meter], True
    con = store_of(tmp, template, "metered-beyond-the-list")
    acct = w.account_id
    try:
        seen = datetime.fromtimestamp(month(1, 5), UTC)
        w.load(con, seen_at=month(1, 5), events=False)
        upsert_objects(con, "subscription_items", acct, [meter], seen)  # (the rest of the list, fetched in full)
        for at in (month(1, 12), month(1, 20)):
            seen = datetime.fromtimestamp(at, UTC)
            w.load(con, seen_at=at, events=False)
            mark_missing_children(con, "subscription_items", "subscription_id", acct, [("sub_1", ["si_s"], at)], seen)
            recompute(con, make_settings("usd"))
            assert_the_meter_ends_on_the_13th(con)
    finally:
        con.close()


def test_a_state_that_came_back_without_an_event_stays_dated_at_the_first_sync_after_the_event(
        tmp: Path, template: Path) -> None:
    """5 seats seen by the sync of 13 January; raised to 7 on 15 January by an update whose event is stored, and
    back to 5 on 17 January without prorations and with no event. The sync of 21 January stores that event and
    sees 5 seats again: the subscription's stored state never changed, so the way back is dated at that sync,
    the first to see 5 seats after the event (70.00 from the 15th to the 21st, 50.00 from then). A full listing on
    25 January sees the same: the months already reported do not move (the way back moved to each sync), derived
    again incrementally or in full."""
    w = five_seats(World())
    con = store_of(tmp, template, "came-back")

    try:
        w.load(con, seen_at=month(0, 12))
        w.update("sub_1", month(0, 14), items=[("si_1", "basic", 7)], prorate=False)
        w.update("sub_1", month(0, 16), items=[("si_1", "basic", 5)], prorate=False, event=False)
        w.load(con, seen_at=month(0, 20))
        recompute(con, make_settings("usd"))
        assert starts(con) == [(T0, 50), (month(0, 14), 70), (month(0, 20), 50)]
        list_fully(w, con, seen_at=month(0, 24))
        settings = make_settings("usd")
        assert recompute_changed(con, settings, datetime.fromtimestamp(month(0, 24), UTC)) == 1
        assert starts(con) == [(T0, 50), (month(0, 14), 70), (month(0, 20), 50)]
        recompute(con, settings)
        assert starts(con) == [(T0, 50), (month(0, 14), 70), (month(0, 20), 50)]
    finally:
        con.close()
