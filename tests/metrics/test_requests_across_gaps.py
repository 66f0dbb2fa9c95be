"""Cancellation requests stored before a gap in the events (design.md 4 "Churn timing", churn_recognition = "canceled":
a cancellation counts when it is requested, Stripe's canceled_at). Stripe keeps events 30 days; a sync after longer
finds those in between lost, and keeps each gap as a cursor `events:gap:<where the stored events ended>` (`created`:
where the kept ones begin), the last one also as `events:unbroken`.

- A request stored before the FIRST of two gaps and taken back inside it (its undoing's event lost; the
  subscription's events between the two gaps no longer hold it) is a `cancellation` at the request and a
  `reactivation` where the events start again after that gap (the account's first stored event there), or at the
  request's own cancel_at when that lies inside the gap, MRR zero between: as with one gap
  (test_cancellation_taken_back_in_a_gap.py), where the comeback counts where coverage starts.
- A request stored before a gap, the subscription then canceled at once after the gap (or inside it): Stripe moves
  canceled_at to the immediate cancel, and the deletion's event tells nothing of the state just before it. Nothing
  stored took the request back, so the churn counts at the request, one `cancellation`, MRR zero from then on, as
  with every event stored (test_request_then_canceled_at_once.py); unless the request's cancel_at lies before the
  end (the subscription did not end then: the request no longer stood).

Under the default recognition (at ended_at) nothing changes. Worked out by hand: cus_1 pays 2 x 25.00 = 50.00 a month
from 1 January 2024 on sub_1 (periods start on the 1st); cus_2 pays 25.00 on sub_2 and owns the events that start a
stretch when sub_1 has none there. Each case is its own account of one store per recognition (one recompute each,
conftest.OneStore)."""

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
from conftest import OneStore, customer_mrr_at, make_settings
from test_cancellation_taken_back import paying, request, take_back
from test_incremental import derived_contents, later_sync
from test_mrr_rules import T0, month

from stripe_churn.metrics.incremental import recompute_changed
from stripe_churn.metrics.runner import recompute
from stripe_churn.store.db import open_store
from stripe_churn.store.load import upsert_objects

Gap = tuple[int, int]  # (where the stored events end, where the kept ones begin again)
ASKED = month(2, 9)  # 10 March: the request
GAP1: Gap = (month(2, 14), month(3, 19))  # no event stored from 15 March to 20 April
BACK1 = month(3, 24)  # 25 April: the first event stored after the first gap
BETWEEN = month(4, 4)  # 5 May: an event of sub_1 between the gaps, when not the first there
GAP2: Gap = (month(4, 14), month(5, 19))  # none from 15 May to 20 June
BACK2 = month(5, 24)  # 25 June: the first event after the second gap (where coverage starts)
SEEN = month(6, 4)  # 5 July: the sync after the second gap
LATE = month(7, 14)  # 15 August: a request's cancel_at after all of it
NEW = (T0, "new", Decimal("50.0000"), None, None)
CHURN = Decimal("-50.0000")
BACK = Decimal("50.0000")
Derive = Callable[..., duckdb.DuckDBPyConnection]

one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()


def set_cursor(con: duckdb.DuckDBPyConnection, account: str, stream: str, created: int, done: bool = False) -> None:
    con.execute("INSERT INTO sync_cursors (account_id, stream, value, created, done) VALUES (?, ?, NULL, ?, ?) "
                "ON CONFLICT (account_id, stream) DO UPDATE SET created = excluded.created, done = excluded.done",
                [account, stream, created, done])


def load_with_gaps(w: World, con: duckdb.DuckDBPyConnection, gaps: list[Gap], *, seen: int = SEEN) -> None:
    """The store as a sync at ``seen`` after ``gaps`` leaves it: every object, the events outside the gaps, each gap
    as the sync keeps it (`events:gap:<end>`, and the last as `events:unbroken`), Stripe's clock at the sync."""
    w.load(con, seen_at=seen, events=False)
    kept = [e for e in w.events if not any(lost < e["created"] < back for lost, back in gaps)]
    upsert_objects(con, "events", w.account_id, kept, datetime.fromtimestamp(seen, tz=UTC))
    for lost, back in gaps:
        set_cursor(con, w.account_id, f"events:gap:{lost}", back)
    if gaps:
        set_cursor(con, w.account_id, "events:unbroken", gaps[-1][1])
    set_cursor(con, w.account_id, "events:complete", seen, True)


def two_customers(w: World) -> World:
    paying(w)
    w.customer("cus_2")
    w.subscribe("sub_2", "cus_2", [("si_2", "price_a", 1)], T0)
    return w


def note(w: World, sub: str, at: int) -> None:
    w.update(sub, at, metadata={"note": f"at {at}"})


def renew(w: World, *months: int) -> None:
    for m in months:
        w.cycle("sub_1", month(m))
        w.cycle("sub_2", month(m))


def back_in_the_first_gap(w: World, *, first: str = "sub_1", ends: int | None = LATE, between: bool = True) -> World:
    """Asked on 10 March to cancel on ``ends`` (None: at the period's end, 1 April, inside the first gap), taken back
    on 20 March inside the first gap; renewed every month. After it, the first stored event (25 April) is sub_1's own
    or cus_2's (``first``), sub_1's then on 5 May (``between``: none of sub_1 between the gaps); coverage starts on
    25 June after the second gap (cus_2's event)."""
    two_customers(w)
    request(w, ASKED, ends=ends, feedback="too_expensive")
    take_back(w, month(2, 19))
    renew(w, 3)
    note(w, first, BACK1)
    if first != "sub_1" and between:
        note(w, "sub_1", BETWEEN)
    renew(w, 4, 5)
    note(w, "sub_2", BACK2)
    renew(w, 6)
    return w


def back_in_the_second_gap(w: World) -> World:
    """Asked on 10 March (cancel_at 15 August), still asked on 25 April (sub_1's event between the gaps keeps it),
    taken back on 25 May inside the second gap."""
    two_customers(w)
    request(w, ASKED, ends=LATE, feedback="too_expensive")
    renew(w, 3)
    note(w, "sub_1", BACK1)
    renew(w, 4)
    take_back(w, month(4, 24))
    renew(w, 5)
    note(w, "sub_2", BACK2)
    renew(w, 6)
    return w


def at_once_after_the_gap(w: World, *, first: str = "sub_1", ends: int | None = LATE, at: int = BACK1) -> World:
    """Asked on 10 March to cancel on ``ends`` (None: at the period's end, 1 April, inside the gap), renewed 1 April,
    canceled at once on ``at`` (switched_service): by default 25 April, right after the gap, the first stored event
    there when ``first`` is sub_1, else cus_2's event on 22 April comes first; or inside the gap."""
    two_customers(w)
    request(w, ASKED, ends=ends, feedback="too_expensive")
    renew(w, 3)
    if first != "sub_1":
        note(w, first, month(3, 21))
    w.cancel("sub_1", at, feedback="switched_service")
    w.cycle("sub_2", month(4))
    if at < GAP1[1]:
        note(w, "sub_2", BACK1)
    return w


def undone_then_at_once(w: World, *, gap: bool) -> World:
    """Asked on 10 March and taken back in the same second, the request's event last by id (Stripe's ids are not in
    time order), canceled at once: on 27 April after the gap (the request's events the last of sub_1's stored
    before it), or on 21 March with no gap (within coverage)."""
    two_customers(w)
    request(w, ASKED, ends=LATE, feedback="too_expensive")
    take_back(w, ASKED)
    asked, undone = (e for e in w.events if e["created"] == ASKED)
    asked["id"], undone["id"] = undone["id"], asked["id"]
    if gap:
        renew(w, 3)
        note(w, "sub_2", BACK1)
        w.cancel("sub_1", month(3, 26), feedback="switched_service")
    else:
        w.cancel("sub_1", month(2, 20), feedback="switched_service")
        w.cycle("sub_2", month(3))
    return w


# case: (build, the gaps in its account's events)
CASES: dict[str, tuple[Callable[[World], World], list[Gap]]] = {
    "acct_first_gap": (back_in_the_first_gap, [GAP1, GAP2]),
    "acct_first_gap_other": (lambda w: back_in_the_first_gap(w, first="sub_2"), [GAP1, GAP2]),
    "acct_first_gap_period_end": (lambda w: back_in_the_first_gap(w, ends=None), [GAP1, GAP2]),
    "acct_first_gap_none_between": (lambda w: back_in_the_first_gap(w, first="sub_2", between=False), [GAP1, GAP2]),
    "acct_second_gap": (back_in_the_second_gap, [GAP1, GAP2]),
    "acct_at_once": (at_once_after_the_gap, [GAP1]),
    "acct_at_once_other": (lambda w: at_once_after_the_gap(w, first="sub_2"), [GAP1]),
    "acct_at_once_inside": (lambda w: at_once_after_the_gap(w, at=month(3, 9)), [GAP1]),
    "acct_at_once_period_end": (lambda w: at_once_after_the_gap(w, first="sub_2", ends=None), [GAP1]),
    "acct_at_once_inside_period_end": (lambda w: at_once_after_the_gap(w, ends=None, at=month(3, 9)), [GAP1]),
    "acct_undone_at_once": (lambda w: undone_then_at_once(w, gap=True), [GAP1]),
    "acct_undone_at_once_no_gap": (lambda w: undone_then_at_once(w, gap=False), []),
}


def derive_cases(derive: Derive, world: World, *cases: str, recognition: str = "canceled"
                 ) -> tuple[duckdb.DuckDBPyConnection, dict[str, str]]:
    """Build the CASES ``cases``, the first in ``world`` and each other in an account named after ``world``'s and
    the case, store each as a sync on 5 July after its gaps leaves it (:func:`load_with_gaps`) and derive them under
    ``recognition``: the store they are derived in and each case's account."""
    worlds = [world, *(World(account_id=f"{world.account_id}-{case}") for case in cases[1:])]
    gaps: dict[str, list[Gap]] = {}
    for w, case in zip(worlds, cases, strict=True):
        build, gaps[w.account_id] = CASES[case]
        build(w)

    def load_case(w: World, con: duckdb.DuckDBPyConnection, *, seen_at: int, events: bool | int) -> None:
        assert events is True, "a case's store holds its events outside the gaps"
        load_with_gaps(w, con, gaps[w.account_id], seen=seen_at)

    con = derive(*worlds, seen_at=SEEN, load=load_case, churn_recognition=recognition)
    return con, {case: w.account_id for w, case in zip(worlds, cases, strict=True)}


def moves(con: duckdb.DuckDBPyConnection, account: str, customer: str = "cus_1") -> list[tuple[object, ...]]:
    rows = con.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta, churn_type, "
                       "cancellation_feedback FROM mrr_movements WHERE account_id = ? AND customer_id = ? "
                       "ORDER BY occurred_at", [account, customer]).fetchall()
    assert rows, account  # the case's account was derived
    return rows


def mrr(con: duckdb.DuckDBPyConnection, account: str, *moments: int) -> list[Decimal]:
    return [customer_mrr_at(con, "cus_1", t, account) for t in moments]


@pytest.mark.parametrize("case", ["acct_first_gap", "acct_first_gap_other"])
@one_store
def test_taken_back_in_the_first_of_two_gaps_comes_back_where_the_events_start_again(
        world: World, derive: Derive, case: str) -> None:
    """-50.00 on 10 March (the request's feedback), +50.00 reactivation on 25 April, the first event stored after the
    first gap (sub_1's own, or cus_2's with sub_1's on 5 May); 0 between, 50.00 from then on. (Before: nothing but
    the new business: the subscription's last event before coverage, between the gaps, holds no request.)"""
    con, _ = derive_cases(derive, world, case)
    account = world.account_id
    assert moves(con, account) == [
        NEW, (ASKED, "cancellation", CHURN, "voluntary", "too_expensive"), (BACK1, "reactivation", BACK, None, None)]
    assert mrr(con, account, ASKED - 1, ASKED, month(3, 5), BACK1 - 1, BACK1, BACK2, SEEN) == [
        BACK, 0, 0, 0, BACK, BACK, BACK]
    assert [r[1] for r in moves(con, account, "cus_2")] == ["new"]


@one_store
def test_taken_back_in_the_first_gap_before_its_cancel_at_comes_back_by_then(world: World, derive: Derive) -> None:
    """Asked on 10 March to cancel at the period's end (1 April, inside the first gap): the subscription did not end
    then, so the request no longer stood: the comeback counts on 1 April. (Before: nothing after the new business.)"""
    con, _ = derive_cases(derive, world, "acct_first_gap_period_end")
    assert moves(con, world.account_id) == [
        NEW, (ASKED, "cancellation", CHURN, "voluntary", "too_expensive"), (month(3), "reactivation", BACK, None, None)]
    assert mrr(con, world.account_id, month(3) - 1, month(3), BACK1) == [0, BACK, BACK]


@one_store
def test_taken_back_in_one_of_two_gaps_with_no_event_between_comes_back_where_coverage_starts(
        world: World, derive: Derive) -> None:
    """sub_1 has no event between the gaps: the store cannot tell in which gap the request was taken back (its state
    there is not known), and the comeback counts where the state is known again, where coverage starts (25 June), as
    for a request taken back in the second gap. (Unchanged.)"""
    con, _ = derive_cases(derive, world, "acct_first_gap_none_between")
    assert moves(con, world.account_id) == [
        NEW, (ASKED, "cancellation", CHURN, "voluntary", "too_expensive"), (BACK2, "reactivation", BACK, None, None)]


@one_store
def test_taken_back_in_the_second_gap_comes_back_where_coverage_starts(world: World, derive: Derive) -> None:
    """The request still stood between the gaps (sub_1's event of 25 April holds it): one churn on 10 March, the
    comeback on 25 June. (Unchanged.)"""
    con, _ = derive_cases(derive, world, "acct_second_gap")
    assert moves(con, world.account_id) == [
        NEW, (ASKED, "cancellation", CHURN, "voluntary", "too_expensive"), (BACK2, "reactivation", BACK, None, None)]
    assert mrr(con, world.account_id, BACK1, month(4, 20), BACK2) == [0, 0, BACK]


@pytest.mark.parametrize("case", ["acct_at_once", "acct_at_once_other", "acct_at_once_inside"])
@one_store
def test_a_request_before_a_gap_then_an_immediate_cancel_churns_at_the_request(world: World, derive: Derive,
                                                                              case: str) -> None:
    """Asked on 10 March (cancel_at 15 August), canceled at once on 25 April right after the gap (its deletion the
    first event there, or after cus_2's of 22 April), or on 10 April inside it: one cancellation on 10 March, with
    the final details (switched_service, as with every event stored), MRR zero from then on, no comeback. (Before:
    the churn on 25 April or 10 April, or a comeback on 22 April and a second churn.)"""
    con, _ = derive_cases(derive, world, case)
    assert moves(con, world.account_id) == [NEW, (ASKED, "cancellation", CHURN, "voluntary", "switched_service")]
    assert mrr(con, world.account_id, ASKED - 1, ASKED, month(3, 9), month(3, 21), BACK1, SEEN) == [
        BACK, 0, 0, 0, 0, 0]


@pytest.mark.parametrize(("case", "canceled"), [
    pytest.param("acct_at_once_period_end", BACK1, id="after-the-gap"),
    pytest.param("acct_at_once_inside_period_end", month(3, 9), id="inside-the-gap")])
@one_store
def test_a_request_whose_cancel_at_passed_in_the_gap_then_an_immediate_cancel(world: World, derive: Derive,
                                                                             case: str, canceled: int) -> None:
    """Asked on 10 March to cancel at the period's end (1 April, inside the gap), renewed then, canceled at once on
    25 April after the gap, or on 10 April inside it: the request no longer stood on 1 April (the subscription did not
    end): churn, comeback on 1 April, churn at the cancel. (After the gap: unchanged. Inside it: before, one churn on
    10 April, the request's churn in March lost.)"""
    con, _ = derive_cases(derive, world, case)
    assert moves(con, world.account_id) == [
        NEW, (ASKED, "cancellation", CHURN, "voluntary", "too_expensive"),
        (month(3), "reactivation", BACK, None, None), (canceled, "cancellation", CHURN, "voluntary", "switched_service")]


@pytest.mark.parametrize(("case", "canceled"), [
    pytest.param("acct_undone_at_once", month(3, 26), id="across-a-gap"),
    pytest.param("acct_undone_at_once_no_gap", month(2, 20), id="within-coverage")])
@one_store
def test_a_request_taken_back_in_its_own_second_then_an_immediate_cancel_churns_at_the_cancel(
        world: World, derive: Derive, case: str, canceled: int) -> None:
    """Asked and taken back on 10 March in one second, the request's event last by id, canceled at once on 27 April
    (after the gap) or 21 March: the request did not stand, so one cancellation at the immediate cancel, MRR 50.00
    up to it. (Before: the churn on 10 March, the request read in force from the event last in 20's order of that
    second, which does not look at canceled_at and falls back on the ids.)"""
    con, _ = derive_cases(derive, world, case)
    assert moves(con, world.account_id) == [NEW, (canceled, "cancellation", CHURN, "voluntary", "switched_service")]
    assert mrr(con, world.account_id, ASKED, canceled - 1, canceled) == [BACK, BACK, 0]


@one_store
def test_under_ended_nothing_changes(world: World, derive: Derive) -> None:
    """The default recognition: a request taken back never churned; an immediate cancel churns when it ends. (Every
    case is derived, each its own account: none withdraws a cancellation.)"""
    con, accounts = derive_cases(derive, world, *CASES, recognition="ended")
    for case in ("acct_first_gap", "acct_first_gap_other", "acct_second_gap"):
        assert moves(con, accounts[case]) == [NEW], case
    assert moves(con, accounts["acct_at_once_other"]) == [
        NEW, (BACK1, "cancellation", CHURN, "voluntary", "switched_service")]
    assert moves(con, accounts["acct_at_once_inside"]) == [
        NEW, (month(3, 9), "cancellation", CHURN, "voluntary", "switched_service")]
    assert con.execute("SELECT count(DISTINCT account_id) FROM mrr_movements").fetchone() == (len(CASES),)
    assert con.execute("SELECT count(*) FROM derived_withdrawn_cancels").fetchone() == (0,)


Stage = tuple[Callable[[duckdb.DuckDBPyConnection], None], int]  # (what a sync stores, when it ran)


def synced(path: Path, stages: list[Stage], *, incremental: int | None) -> duckdb.DuckDBPyConnection:
    """A store after the syncs ``stages``: derived in full before the sync numbered ``incremental`` and
    incrementally after it and each one after, or (None) once in full after the last."""
    settings = make_settings("usd", churn_recognition="canceled")
    con = open_store(path)
    for i, (store, seen) in enumerate(stages):
        if i == incremental:
            recompute(con, settings)
        store(con)
        if incremental is not None and i >= incremental:
            recompute_changed(con, settings, dt.datetime.fromtimestamp(seen, tz=dt.UTC), shards=1)
    if incremental is None:
        recompute(con, settings)
    return con


def assert_incremental_equals_full(tmp_path: Path, stages: list[Stage], incremental: int
                                   ) -> duckdb.DuckDBPyConnection:
    """Every derived table and view, derived incrementally from the sync numbered ``incremental`` on, as a full
    recompute gives; the full store (open) for the case's own checks."""
    con = synced(tmp_path / "incremental.duckdb", stages, incremental=incremental)
    incremental = derived_contents(con)
    con.close()
    fresh = synced(tmp_path / "full.duckdb", stages, incremental=None)
    full = derived_contents(fresh)
    assert set(incremental) == set(full)
    for name in full:
        assert incremental[name] == full[name], name
    return fresh


def stage(w: World, gaps: list[Gap], seen: int) -> Stage:
    """A sync at ``seen`` of the account as it stands now (the events of ``gaps`` lost)."""
    now = copy.deepcopy(w)
    return (lambda con: load_with_gaps(now, con, gaps, seen=seen)), seen


def test_taken_back_in_the_first_gap_derived_incrementally_equals_a_full_recompute(tmp_path: Path) -> None:
    """Syncs on 12 March (the request stored), on 10 May (the first gap found), on 5 July (the second), then on 12
    July one that brings cus_1 alone (sub_1 changed on 10 July), derived incrementally: its scope holds the event
    where the events start again after the first gap (cus_2's, 25 April), not only cus_1's, so the comeback stays on
    25 April. (Without it: on 5 May, sub_1's own event.)"""
    w = two_customers(World())
    request(w, ASKED, ends=LATE, feedback="too_expensive")
    stages = [stage(w, [], month(2, 11))]
    take_back(w, month(2, 19))
    renew(w, 3)
    note(w, "sub_2", BACK1)
    note(w, "sub_1", BETWEEN)
    stages.append(stage(w, [GAP1], month(4, 9)))
    renew(w, 4, 5)
    note(w, "sub_2", BACK2)
    renew(w, 6)
    stages.append(stage(w, [GAP1, GAP2], SEEN))
    note(w, "sub_1", month(6, 9))
    later = month(6, 11)

    def cus_1_alone(con: duckdb.DuckDBPyConnection) -> None:
        later_sync(w, {"cus_1"}, {"sub_1"}, SEEN).load(con, seen_at=later)
        set_cursor(con, w.account_id, "events:complete", later, True)

    stages.append((cus_1_alone, later))
    con = assert_incremental_equals_full(tmp_path, stages, 3)
    assert moves(con, w.account_id) == [
        NEW, (ASKED, "cancellation", CHURN, "voluntary", "too_expensive"), (BACK1, "reactivation", BACK, None, None)]
    con.close()


def test_a_request_then_an_immediate_cancel_after_the_gap_derived_incrementally_equals_a_full_recompute(
        tmp_path: Path) -> None:
    """Syncs on 12 March (the request stored) and on 10 May (the gap found, the account derived again incrementally;
    cus_2's event of 22 April, then sub_1's deletion on 25 April): one churn, on 10 March, as in full (the scope reads
    the request's event, stored before the gap)."""
    w = two_customers(World())
    request(w, ASKED, ends=LATE, feedback="too_expensive")
    stages = [stage(w, [], month(2, 11))]
    renew(w, 3)
    note(w, "sub_2", month(3, 21))
    w.cancel("sub_1", BACK1, feedback="switched_service")
    stages.append(stage(w, [GAP1], month(4, 9)))
    con = assert_incremental_equals_full(tmp_path, stages, 1)
    assert moves(con, w.account_id) == [NEW, (ASKED, "cancellation", CHURN, "voluntary", "switched_service")]
    con.close()
