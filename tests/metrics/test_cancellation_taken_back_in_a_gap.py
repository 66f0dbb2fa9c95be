"""A cancellation requested before a gap in the events and taken back inside it (design.md 4 "Churn timing",
churn_recognition = "canceled"). Stripe keeps events 30 days: a sync after longer finds the ones in between lost. The
request's event stays stored; the one that took it back is lost, and the state where coverage starts again (the first
event after the gap, else the snapshot) no longer holds the request. The month of the request reported its churn
while the request was the latest state; it keeps it, and the comeback counts where coverage starts again, where the
state after the gap takes over (as step 20 dates a change that the gap hides). A request made and taken back inside
the gap leaves no trace and changes nothing; under the default recognition (at ended_at) nothing changes either.
Worked out by hand: cus_1 pays 2 x 25.00 = 50.00 a month from 1 January 2024 on sub_1 (periods start on the 1st)."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from builders import World
from conftest import customer_mrr_at, make_settings, record_stripes_clock
from test_cancellation_taken_back import event_at, paying, request, take_back
from test_incremental import derived_contents
from test_mrr_rules import T0, month

from stripe_churn.metrics.incremental import recompute_changed
from stripe_churn.metrics.runner import recompute
from stripe_churn.store.db import open_store
from stripe_churn.store.load import upsert_objects

Load = Callable[..., duckdb.DuckDBPyConnection]
GAP = (month(2, 14), month(3, 19))  # no event stored from 15 March to 20 April
BACK = month(3, 24)  # 25 April: the first event stored after the gap (where coverage starts again)
SEEN = month(4, 5)
CANCEL_AT = month(4, 14)  # 15 May: a request's cancel_at after the gap


def load_with_gap(w: World, con: duckdb.DuckDBPyConnection, *, seen: int = SEEN) -> None:
    """The store as a sync after the gap leaves it: every object, the events stored before the gap and those after
    it, the cursor where the unbroken events begin, and Stripe's clock at the sync."""
    w.load(con, seen_at=seen, events=False)
    events = [e for e in w.events if e["created"] < GAP[0] or e["created"] >= GAP[1]]
    upsert_objects(con, "events", w.account_id, events, datetime.fromtimestamp(seen, tz=UTC))
    con.execute("INSERT INTO sync_cursors (account_id, stream, value, created, done) "
                "VALUES (?, 'events:unbroken', NULL, ?, false)", [w.account_id, GAP[1]])
    record_stripes_clock(con, w.account_id, seen)


@pytest.fixture
def load(store: duckdb.DuckDBPyConnection) -> Load:
    def run(w: World, **rules: str) -> duckdb.DuckDBPyConnection:
        load_with_gap(w, store)
        recompute(store, make_settings("usd", **rules))
        return store
    return run


def second_customer(w: World) -> None:
    """cus_2 on one seat (25.00) from T0: its event after the gap is the first stored there when sub_1 has none."""
    w.customer("cus_2")
    w.subscribe("sub_2", "cus_2", [("si_2", "price_a", 1)], T0)


def moves(con: duckdb.DuckDBPyConnection, customer: str = "cus_1") -> list[tuple[object, ...]]:
    return con.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta, churn_type, "
                       "cancellation_feedback, source_event_id FROM mrr_movements WHERE customer_id = ? "
                       "ORDER BY occurred_at", [customer]).fetchall()


NEW = (T0, "new", Decimal("50.0000"), None, None)


def taken_back_in_the_gap(w: World, *, after: str, ends: int | None = CANCEL_AT) -> World:
    """Asked on 10 March (too_expensive, a comment) to cancel on ``ends``, after the gap (None: at the period's end,
    1 April, inside it), taken back on 20 March inside the gap (its event lost), renewed 1 April and 1 May. After the
    gap the first stored event (25 April) is sub_1's own (``after`` = "event") or cus_2's, sub_1's state then known
    from the snapshot alone ("snapshot")."""
    paying(w)
    second_customer(w)
    request(w, month(2, 9), ends=ends, feedback="too_expensive", comment="over budget this quarter")
    take_back(w, month(2, 19))
    w.cycle("sub_1", month(3))
    w.update("sub_1" if after == "event" else "sub_2", BACK, metadata={"note": "after the gap"})
    w.cycle("sub_1", month(4))
    return w


@pytest.mark.parametrize("after", ["event", "snapshot"])
def test_taken_back_in_the_gap_is_a_churn_and_a_comeback_where_coverage_starts(world: World, load: Load,
                                                                               after: str) -> None:
    """-50.00 on 10 March (voluntary, too_expensive, the comment, the request's event), +50.00 reactivation on
    25 April where coverage starts again (no event took it back: none named); customer_mrr 0 between; March's
    bridge churn 50.00, April's reactivation 50.00. (Before: nothing but the new business, the churn of March gone.)"""
    con = load(taken_back_in_the_gap(world, after=after), churn_recognition="canceled")
    rows = moves(con)
    assert [r[:5] for r in rows] == [
        NEW, (month(2, 9), "cancellation", Decimal("-50.0000"), "voluntary", "too_expensive"),
        (BACK, "reactivation", Decimal("50.0000"), None, None)]
    assert rows[1][5] == event_at(world, month(2, 9))
    assert rows[2][5] == (event_at(world, BACK) if after == "event" else None)
    assert con.execute("SELECT cancellation_comment FROM derived_mrr_movements WHERE movement = 'cancellation'"
                       ).fetchall() == [("over budget this quarter",)]
    assert [customer_mrr_at(con, "cus_1", t) for t in (month(2, 9) - 1, month(2, 9), month(3, 5), BACK - 1, BACK,
                                                        SEEN)] == [
        Decimal("50.0000"), 0, 0, 0, Decimal("50.0000"), Decimal("50.0000")]
    assert con.execute("SELECT period_start, churn, reactivation FROM mrr_bridge WHERE churn <> 0 OR reactivation <> 0 "
                       "ORDER BY 1").fetchall() == [
        (dt.date(2024, 3, 1), Decimal("50.0000"), Decimal("0.0000")),
        (dt.date(2024, 4, 1), Decimal("0.0000"), Decimal("50.0000"))]
    assert [r[1] for r in moves(con, "cus_2")] == ["new"]


def test_taken_back_in_the_gap_before_its_period_end_comes_back_by_then(world: World, load: Load) -> None:
    """Asked on 10 March to cancel at the period's end (1 April, inside the gap) and taken back on 20 March: the
    subscription did not end on 1 April, so the request was taken back by then at the latest (its renewal invoice of
    1 April bills it on). -50.00 on 10 March, +50.00 reactivation on 1 April, not where coverage starts (25 April):
    customer_mrr 50.00 through April, as billed. (Before: 0 until 25 April.)"""
    con = load(taken_back_in_the_gap(world, after="event", ends=None), churn_recognition="canceled")
    assert [r[:5] for r in moves(con)] == [
        NEW, (month(2, 9), "cancellation", Decimal("-50.0000"), "voluntary", "too_expensive"),
        (month(3), "reactivation", Decimal("50.0000"), None, None)]
    assert [customer_mrr_at(con, "cus_1", t) for t in (month(2, 9), month(3) - 1, month(3), month(3, 10), BACK)] == [
        0, 0, Decimal("50.0000"), Decimal("50.0000"), Decimal("50.0000")]


def test_taken_back_in_the_gap_under_ended_changes_nothing(world: World, load: Load) -> None:
    """The default recognition: the request never took effect, so no movement after the new one."""
    con = load(taken_back_in_the_gap(world, after="event"))
    assert [r[:5] for r in moves(con)] == [NEW]
    assert customer_mrr_at(con, "cus_1", month(3, 5)) == Decimal("50.0000")
    assert con.execute("SELECT count(*) FROM derived_withdrawn_cancels").fetchone() == (0,)


def test_a_request_still_in_force_after_the_gap_is_one_churn(world: World, load: Load) -> None:
    """Asked on 10 March to cancel on 1 May (a cancel_at), still asked after the gap (the update of 25 April keeps
    it), carried out on 1 May: -50.00 on 10 March alone, no comeback, 0 from then on."""
    paying(world)
    second_customer(world)
    request(world, month(2, 9), ends=month(4), feedback="too_expensive")
    world.cycle("sub_1", month(3))
    world.update("sub_1", BACK, metadata={"note": "after the gap"})
    world.end("sub_1", month(4))
    con = load(world, churn_recognition="canceled")
    assert [r[:5] for r in moves(con)] == [
        NEW, (month(2, 9), "cancellation", Decimal("-50.0000"), "voluntary", "too_expensive")]
    assert [customer_mrr_at(con, "cus_1", t) for t in (month(2, 9), BACK, SEEN)] == [0, 0, 0]


def test_a_request_made_and_taken_back_inside_the_gap_leaves_nothing(world: World, load: Load) -> None:
    """Asked on 17 March and taken back on 20 March, both inside the gap: no stored state shows it."""
    paying(world)
    second_customer(world)
    request(world, month(2, 16), feedback="too_expensive")
    take_back(world, month(2, 19))
    world.cycle("sub_1", month(3))
    world.update("sub_1", BACK, metadata={"note": "after the gap"})
    world.cycle("sub_1", month(4))
    con = load(world, churn_recognition="canceled")
    assert [r[:5] for r in moves(con)] == [NEW]
    assert customer_mrr_at(con, "cus_1", month(2, 18)) == Decimal("50.0000")


def test_a_request_taken_back_in_its_own_second_before_the_gap_leaves_nothing(world: World, load: Load) -> None:
    """Asked and taken back in the same second on 10 March, both events stored before the gap (Stripe's ids say
    nothing of their order: here the undoing's id sorts first, and the two states differ in canceled_at alone): the
    stored undoing took the request back, so nothing is lost in the gap and nothing changes. (Before: -50.00 on
    10 March and +50.00 on 25 April, the request read as still in force before the gap.)"""
    paying(world)
    second_customer(world)
    request(world, month(2, 9), feedback="too_expensive")
    take_back(world, month(2, 9))
    asked, undone = world.events[-2:]
    asked["id"], undone["id"] = undone["id"], asked["id"]
    world.cycle("sub_1", month(3))
    world.update("sub_1", BACK, metadata={"note": "after the gap"})
    con = load(world, churn_recognition="canceled")
    assert [r[:5] for r in moves(con)] == [NEW]
    assert customer_mrr_at(con, "cus_1", month(3, 5)) == Decimal("50.0000")


def test_taken_back_in_the_gap_derived_incrementally_equals_a_full_recompute(tmp_path: Path) -> None:
    """A sync on 12 March (the request stored), then one after the gap (the coverage moved: the whole account
    derived again in a scope): every derived table and view as a full recompute of the same store gives, with the
    churn of 10 March and the comeback of 25 April (the scope reads the request's event's JSON)."""
    w = paying(World())
    second_customer(w)
    request(w, month(2, 9), ends=CANCEL_AT, feedback="too_expensive")
    before = copy.deepcopy(w)
    take_back(w, month(2, 19))
    w.cycle("sub_1", month(3))
    w.update("sub_1", BACK, metadata={"note": "after the gap"})
    w.cycle("sub_1", month(4))
    settings = make_settings("usd", churn_recognition="canceled")

    def two_syncs(name: str, *, incremental: bool) -> duckdb.DuckDBPyConnection:
        con = open_store(tmp_path / name)
        before.load(con, seen_at=month(2, 11))
        record_stripes_clock(con, w.account_id, month(2, 11))
        if incremental:
            recompute(con, settings)
        con.execute("DELETE FROM sync_cursors")
        load_with_gap(w, con)
        if incremental:
            recompute_changed(con, settings, dt.datetime.fromtimestamp(SEEN, tz=dt.UTC), shards=1)
        else:
            recompute(con, settings)
        return con

    con = two_syncs("incremental.duckdb", incremental=True)
    incremental = derived_contents(con)
    con.close()
    fresh = two_syncs("full.duckdb", incremental=False)
    assert [r[:3] for r in moves(fresh)] == [
        NEW[:3], (month(2, 9), "cancellation", Decimal("-50.0000")), (BACK, "reactivation", Decimal("50.0000"))]
    full = derived_contents(fresh)
    fresh.close()
    assert set(incremental) == set(full)
    for name in full:
        assert incremental[name] == full[name], name
