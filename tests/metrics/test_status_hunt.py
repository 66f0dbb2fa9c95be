"""Subscription status, churn timing, trials and pauses (design.md 4 "Status", "Churn timing", 5 churn_type and
feedback, 6 and 7 the bridge, scheduled_churn and churn_reasons), on small hand-built accounts: a trial moved later
or ended early, items and a discount changed while a trial runs, a signup coupon running out as the trial ends, a
trial converting while its collection is paused, a comeback through a trial, subscriptions created incomplete,
spells that begin and end inside one movement window, a cancellation made while a subscription is paused or its
collection paused, an unpaid spell paid back before a later cancellation, requests to cancel made while past_due,
seats changed after a request under both churn recognitions, a request on one of two subscriptions, a cancel_at
inside a month after seats and an item were taken off, the MRR at stake of a paused collection, a paused
collection across a month's end under both collection settings, and one account whose statuses cross month ends.

Each expected answer is worked out by hand from design.md first (the arithmetic is in the docstring), where it is
silent with the conventions README.md (Metric definitions, the finance cookbook on churn) fixes: a change that moves
no MRR by itself starts no window; the subscription's reason and feedback go to its last cancellation; the MRR at
stake is the subscription's MRR just before its cancellation takes effect.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import duckdb
import pytest
from builders import DAY, World, add_months, ts
from conftest import OneStore, customer_mrr_at
from test_classifier import check_invariants

from stripe_churn.metrics import queries

Derive = Callable[..., duckdb.DuckDBPyConnection]
D = Decimal
T0 = ts(2024, 1, 1)
MINUTE = 60
HOUR = 3_600

# The tests marked @one_store are each an account of one store, derived once (conftest.OneStore): their queries see
# their own account's rows alone. The tests that read the bridge or churn_reasons (sums over a whole store) keep
# their own store.
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()

Row = tuple[int, str, str, Decimal, str | None, str | None]


def month(n: int, day: int = 0) -> int:
    """The 1st of the n-th month after January 2024, plus ``day`` days."""
    return add_months(T0, n) + day * DAY


def catalogue(w: World, *customers: str) -> World:
    """Family core (seats: basic 10.00, pro 20.00 a seat) and family analytics (50.00), and the customers."""
    w.product("prod_core", unit_label="seat", family="core")
    w.product("prod_analytics", family="analytics")
    w.price("core_basic", "prod_core", 1_000)
    w.price("core_pro", "prod_core", 2_000)
    w.price("analytics", "prod_analytics", 5_000)
    for c in customers or ("cus_1",):
        w.customer(c)
    return w


def paused_for(kind: str, at: int) -> dict[str, Any]:
    """A paused subscription's status_details (``kind``: what paused it)."""
    return {"paused": {"type": "subscription", "transitioned_at": at, "subscription": {"type": kind}}}


def rows(con: duckdb.DuckDBPyConnection, customer: str = "cus_1") -> list[Row]:
    """The customer's movements: (unix time, movement, category, delta, churn_type, feedback), in time order."""
    got = con.execute(
        "SELECT CAST(epoch(occurred_at) AS BIGINT), movement, category, mrr_delta, churn_type, cancellation_feedback "
        "FROM mrr_movements WHERE customer_id = ? ORDER BY occurred_at, movement, subscription_item_id",
        [customer]).fetchall()
    return [tuple(r) for r in got]  # type: ignore[misc]


def comments(con: duckdb.DuckDBPyConnection, customer: str = "cus_1") -> list[tuple[Any, ...]]:
    """(unix time, comment) of the customer's cancellation rows (derived_mrr_movements, under the view)."""
    return [tuple(r) for r in con.execute(
        "SELECT CAST(epoch(occurred_at) AS BIGINT), cancellation_comment FROM derived_mrr_movements "
        "WHERE customer_id = ? AND movement = 'cancellation' ORDER BY occurred_at", [customer]).fetchall()]


def months(con: duckdb.DuckDBPyConnection) -> dict[dt.date, dict[str, Any]]:
    return {r["period_start"]: r for r in queries.bridge(con)}


def flows(r: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(r[c] for c in ("opening_mrr", "new", "reactivation", "expansion", "contraction", "churn", "fx",
                                "closing_mrr"))


def counts(r: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(r[c] for c in ("opening_customers", "new_customers", "reactivated_customers", "churned_customers",
                                "closing_customers"))


def new(at: int, delta: str) -> Row:
    return (at, "new", "new", D(delta), None, None)


def churn(at: int, delta: str, churn_type: str = "voluntary", feedback: str | None = None) -> Row:
    return (at, "cancellation", "churn", D(delta), churn_type, feedback)


def back(at: int, delta: str) -> Row:
    return (at, "reactivation", "reactivation", D(delta), None, None)


def trial_create_line_ends_at(w: World, sid: str, end: int) -> None:
    """The create invoice of a trial bills its items at 0 up to the trial's end (Stripe's "Trial period" line)."""
    for inv in w.objects["invoices"].values():
        if inv["billing_reason"] == "subscription_create" and inv["parent"]["subscription_details"][
                "subscription"] == sid:
            for line in inv["lines"]["data"]:
                assert line["amount"] == 0
                line["period"]["end"] = end


# --- trials --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("events", [True, False], ids=["events", "invoices-and-dates"])
@pytest.mark.parametrize("how", ["extended", "ended-early"])
@one_store
def test_a_trial_whose_end_was_moved_converts_when_it_really_ends(world: World, derive: Derive, how: str,
                                                                  events: bool) -> None:
    """design.md 4: trialing counts zero. core basic x3 (30.00) on a trial from 1 January.
    - extended: the trial was to end on 1 February; on 20 January it is moved to 15 February (trial_end and the
      anchor moved, no invoice). It counts zero up to 15 February, where its first renewal bills it: one `new`
      +30.00 on 15 February, nothing on 1 February.
    - ended-early: the trial was to end on 15 February; on 20 January at 10:00 it is ended at once (status active,
      trial_end then, an update invoice for the new period): `new` +30.00 on 20 January 10:00.
    Without events the subscription's trial_start and trial_end (the latest) and the invoices say the same."""
    w = catalogue(world)
    if how == "extended":
        w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0, trial_end=month(1))
        trial_create_line_ends_at(w, "sub_1", month(1))
        w.update("sub_1", month(0, 19), trial_end=month(1, 14), billing_cycle_anchor=month(1, 14))
        converts = month(1, 14)
        w.update("sub_1", converts, status="active")
        w.cycle("sub_1", converts)
    else:
        w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0, trial_end=month(1, 14))
        trial_create_line_ends_at(w, "sub_1", month(1, 14))
        converts = month(0, 19) + 10 * HOUR
        w.update("sub_1", converts, status="active", trial_end=converts, billing_cycle_anchor=converts)
        w.invoice_for("sub_1", converts, "subscription_update", period_start=converts)
    con = derive(w, seen_at=month(2, 5), events=events)
    assert rows(con) == [new(converts, "30.0000")]
    assert customer_mrr_at(con, "cus_1", converts - 1) == 0
    assert customer_mrr_at(con, "cus_1", month(1)) == (0 if how == "extended" else D("30.0000"))
    assert customer_mrr_at(con, "cus_1", converts) == D("30.0000")
    check_invariants(con)


@pytest.mark.parametrize("change", ["seats-and-an-item", "a-discount"])
@one_store
def test_changes_made_during_a_trial_move_nothing_until_it_converts(world: World, derive: Derive, change: str
                                                                   ) -> None:
    """design.md 4 (trialing counts zero: the whole subscription trials, what is added to it too; a discount
    starting is a `discount` movement) and 5 (a transition whose MRR does not change produces no row; a first
    subscription with several families is one `new`, taking the whole delta). A trial from 1 January to 1 February:
    - seats-and-an-item: core basic x3; 5 seats on 10 January, analytics added on 15 January (no prorations during a
      trial): nothing moves in January; on 1 February one `new` of 5 x 10 + 50 = +100.00.
    - a-discount: core basic x3 (30.00) and analytics (50.00); 25% off for ever put on the subscription on 15
      January: 0 -> 0, no row; the trial converts at the discounted MRR: `new` +60.00 (80 x 0.75) on 1 February,
      and no `discount` row anywhere."""
    w = catalogue(world)
    if change == "seats-and-an-item":
        w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0, trial_end=month(1))
        w.update("sub_1", month(0, 9), items=[("si_c", "core_basic", 5)], prorate=False)
        w.update("sub_1", month(0, 14), items=[("si_c", "core_basic", 5), ("si_a", "analytics", 1)], prorate=False)
        mrr = "100.0000"
    else:
        w.coupon("c25", percent_off=25)
        w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3), ("si_a", "analytics", 1)], T0, trial_end=month(1))
        d = w.discount("c25", month(0, 14), customer="cus_1", subscription="sub_1")
        w.update("sub_1", month(0, 14), discounts=[d["id"]])
        mrr = "60.0000"
    trial_create_line_ends_at(w, "sub_1", month(1))
    w.update("sub_1", month(1), status="active")
    w.cycle("sub_1", month(1))
    con = derive(w, seen_at=month(2, 5))
    assert rows(con) == [new(month(1), mrr)]
    assert customer_mrr_at(con, "cus_1", month(0, 20)) == 0
    assert customer_mrr_at(con, "cus_1", month(1)) == D(mrr)
    check_invariants(con)


@pytest.mark.parametrize("coupon_months", [1, 2])
@one_store
def test_a_signup_coupon_running_out_at_or_after_the_trials_end(world: World, derive: Derive,
                                                                coupon_months: int) -> None:
    """design.md 4 (trialing counts zero; a repeating discount reduces MRR while it applies, its end a `discount`
    movement at its `end`) and 5 (`new` takes the whole delta of its transition). core basic x3 (30.00) on a trial
    from 1 January to 1 February, 50% off for ``coupon_months`` months from 1 January.
    - 1 month: the coupon ends at the very moment the trial converts (1 February): one `new` +30.00, the full price,
      and no `discount` row.
    - 2 months: `new` +15.00 on 1 February, then `discount` +15.00 (expansion) on 1 March."""
    w = catalogue(world)
    w.coupon("half", percent_off=50, duration="repeating", duration_in_months=coupon_months)
    d = w.discount("half", T0, customer="cus_1", subscription="sub_1")
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0, trial_end=month(1), discounts=[d["id"]])
    trial_create_line_ends_at(w, "sub_1", month(1))
    w.update("sub_1", month(1), status="active")
    w.cycle("sub_1", month(1))
    w.cycle("sub_1", month(2))
    con = derive(w, seen_at=month(2, 5))
    if coupon_months == 1:
        assert rows(con) == [new(month(1), "30.0000")]
    else:
        assert rows(con) == [new(month(1), "15.0000"),
                             (month(2), "discount", "expansion", D("15.0000"), None, None)]
    check_invariants(con)


@pytest.mark.parametrize("keeps", [True, False], ids=["keeps-mrr", "drops-mrr"])
@one_store
def test_a_trial_that_converts_while_its_collection_is_paused(world: World, derive: Derive, keeps: bool) -> None:
    """design.md 4 (trialing counts zero; pause_collection keeps MRR by default, setting
    pause_collection_keeps_mrr). core basic x3 (30.00) on a trial from 1 January to 1 February; its collection is
    paused (void) on 10 January; the trial ends on 1 February (status active, the renewal voided) and collection
    resumes on 10 February.
    - keeps MRR: `new` +30.00 on 1 February, when the trial ends.
    - drops MRR: still zero at the trial's end (collection paused): `new` +30.00 on 10 February, at the resume."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0, trial_end=month(1))
    trial_create_line_ends_at(w, "sub_1", month(1))
    w.update("sub_1", month(0, 9), pause_collection={"behavior": "void", "resumes_at": None})
    w.update("sub_1", month(1), status="active")
    w.cycle("sub_1", month(1))["status"] = "void"
    w.update("sub_1", month(1, 9), pause_collection=None)
    w.cycle("sub_1", month(2))
    con = derive(w, seen_at=month(2, 5), **({} if keeps else {"pause_collection_keeps_mrr": False}))
    converts = month(1) if keeps else month(1, 9)
    assert rows(con) == [new(converts, "30.0000")]
    assert customer_mrr_at(con, "cus_1", month(1, 5)) == (D("30.0000") if keeps else 0)
    check_invariants(con)


@pytest.mark.parametrize("trial", ["started-after-the-churn", "running-at-the-churn"])
@one_store
def test_a_comeback_through_a_trial_is_a_reactivation_when_the_trial_converts(world: World, derive: Derive,
                                                                              trial: str) -> None:
    """design.md 4 (trialing counts zero) and 5 (M(A) > 0, M(B) = 0: `cancellation`, however many subscriptions the
    customer keeps; M(A) = 0, M(B) > 0 and the customer had MRR before: `reactivation`, the whole delta). core basic
    x3 (30.00) from 1 January, canceled at once on 10 February (feedback unused): -30.00, voluntary, unused.
    - started-after-the-churn: an analytics subscription on a trial from 1 March to 15 March converts then:
      `reactivation` +50.00 on 15 March (not at the trial's start, and not a `new`).
    - running-at-the-churn: the analytics subscription's trial runs from 1 February to 1 March (the customer still
      has a subscription when the core one ends, counting zero: a `cancellation` all the same); it converts on 1
      March: `reactivation` +50.00."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.cycle("sub_1", month(1))
    start, end = (month(2), month(2, 14)) if trial == "started-after-the-churn" else (month(1), month(2))
    if trial == "running-at-the-churn":
        w.subscribe("sub_2", "cus_1", [("si_a", "analytics", 1)], start, trial_end=end)
    w.cancel("sub_1", month(1, 9), feedback="unused")
    if trial == "started-after-the-churn":
        w.subscribe("sub_2", "cus_1", [("si_a", "analytics", 1)], start, trial_end=end)
    trial_create_line_ends_at(w, "sub_2", end)
    w.update("sub_2", end, status="active")
    w.cycle("sub_2", end)
    con = derive(w, seen_at=month(3, 5))
    assert rows(con) == [new(T0, "30.0000"), churn(month(1, 9), "-30.0000", feedback="unused"),
                         back(end, "50.0000")]
    assert customer_mrr_at(con, "cus_1", end - 1) == 0
    check_invariants(con)


@one_store
def test_a_trial_set_to_cancel_after_it_ends_converts_then_churns_at_the_date(world: World, derive: Derive) -> None:
    """design.md 4 (trialing counts zero; a cancellation counts when the subscription ends, churn_recognition
    "ended") and 5 (feedback on the cancellation row). core basic x3 on a trial from 1 January to 1 February; on 20
    January set to cancel on 15 March (missing_features); it converts on 1 February (`new` +30.00), renews on 1
    March and ends on 15 March: `cancellation` -30.00, voluntary, missing_features; nothing at the request."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0, trial_end=month(1))
    trial_create_line_ends_at(w, "sub_1", month(1))
    w.update("sub_1", month(0, 19), cancel_at=month(2, 14), canceled_at=month(0, 19),
             cancellation_details={"reason": "cancellation_requested", "feedback": "missing_features",
                                   "comment": None})
    w.update("sub_1", month(1), status="active")
    w.cycle("sub_1", month(1))
    w.cycle("sub_1", month(2))
    w.end("sub_1", month(2, 14))
    con = derive(w, seen_at=month(3))
    assert rows(con) == [new(month(1), "30.0000"), churn(month(2, 14), "-30.0000", feedback="missing_features")]
    assert queries.scheduled_churn(con) == []
    check_invariants(con)


# --- incomplete ----------------------------------------------------------------------------------------------------

def incomplete(w: World, sid: str, items: list[tuple[str, str, int | None]], at: int) -> dict[str, Any]:
    """``sid`` created ``incomplete`` at ``at`` (its first invoice open, not paid); returns that invoice."""
    sub = w.subscribe(sid, "cus_1", items, at, event=False)
    sub["status"] = "incomplete"
    w.event("customer.subscription.created", at, sub)
    inv = next(i for i in w.objects["invoices"].values() if i["parent"]["subscription_details"]["subscription"] == sid)
    inv["status"], inv["status_transitions"]["paid_at"] = "open", None
    return inv


@one_store
def test_a_second_subscription_created_incomplete_is_a_cross_sell_when_paid(world: World, derive: Derive) -> None:
    """design.md 4 (incomplete and incomplete_expired count zero) and 5 (an item of a family the customer did not
    have: `cross_sell`). core basic x3 (30.00) from 1 January. On 10 February 10:00 an analytics subscription is
    created incomplete (its first payment failed), and paid on 11 February 09:00: `cross_sell` +50.00 dated at the
    payment (the creation moves nothing and starts no window). On 20 February another analytics subscription is
    created incomplete and expires 23 hours later (incomplete_expired): nothing."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.cycle("sub_1", month(1))
    created, paid = month(1, 9) + 10 * HOUR, month(1, 10) + 9 * HOUR
    inv = incomplete(w, "sub_2", [("si_a", "analytics", 1)], created)
    inv["status"], inv["status_transitions"]["paid_at"] = "paid", paid
    w.update("sub_2", paid, status="active")
    expired_at = month(1, 19)
    inv3 = incomplete(w, "sub_3", [("si_a3", "analytics", 1)], expired_at)
    sub3 = w.objects["subscriptions"]["sub_3"]
    before = copy.deepcopy(sub3)
    sub3.update(status="incomplete_expired", ended_at=expired_at + 23 * HOUR)
    inv3["status"] = "void"
    w.event("customer.subscription.updated", expired_at + 23 * HOUR, sub3, before)
    con = derive(w, seen_at=month(2, 5))
    assert rows(con) == [new(T0, "30.0000"), (paid, "cross_sell", "expansion", D("50.0000"), None, None)]
    assert customer_mrr_at(con, "cus_1", created + HOUR) == D("30.0000")
    assert customer_mrr_at(con, "cus_1", paid) == D("80.0000")
    assert customer_mrr_at(con, "cus_1", expired_at + HOUR) == D("80.0000")
    check_invariants(con)


@one_store
def test_a_signup_that_expired_incomplete_leaves_the_next_one_new(world: World, derive: Derive) -> None:
    """design.md 4 (incomplete and incomplete_expired count zero) and 5 (`new` when the customer never had MRR).
    cus_1's first subscription is created incomplete on 10 January and expires 23 hours later; a second one, core
    basic x3, paid at once on 15 January: `new` +30.00 (not a `reactivation`: the customer never had MRR)."""
    w = catalogue(world)
    created = month(0, 9)
    inv = incomplete(w, "sub_1", [("si_x", "core_basic", 3)], created)
    sub = w.objects["subscriptions"]["sub_1"]
    before = copy.deepcopy(sub)
    sub.update(status="incomplete_expired", ended_at=created + 23 * HOUR)
    inv["status"] = "void"
    w.event("customer.subscription.updated", created + 23 * HOUR, sub, before)
    w.subscribe("sub_2", "cus_1", [("si_c", "core_basic", 3)], month(0, 14))
    con = derive(w, seen_at=month(1, 5))
    assert rows(con) == [new(month(0, 14), "30.0000")]
    assert customer_mrr_at(con, "cus_1", created + HOUR) == 0
    check_invariants(con)


# --- spells inside one movement window -----------------------------------------------------------------------------

@pytest.mark.parametrize("spell", ["paused", "unpaid", "collection-paused"])
@one_store
def test_a_spell_ended_within_the_movement_window_it_began_in_is_no_movement(world: World, derive: Derive,
                                                                             spell: str) -> None:
    """design.md 4 (paused and unpaid count zero; with pause_collection_keeps_mrr = false a paused collection does)
    and 5 (changes within 60 minutes net into one transition; one whose MRR does not change has no row). core
    basic x3 (30.00) from 1 January; on 10 February at 10:00 it is paused (at the customer's request), goes unpaid
    (past_due since 5 February), or has its collection paused, and 30 minutes later it is active again (resumed,
    paid back, collection resumed): 30 -> 30, no row; customer_mrr, one row per level after the netting, keeps
    30.00 through it."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.cycle("sub_1", month(1))
    at = month(1, 9) + 10 * HOUR
    rules: dict[str, Any] = {}
    if spell == "paused":
        w.update("sub_1", at, status="paused", status_details=paused_for("pause_requested", at))
        w.update("sub_1", at + 30 * MINUTE, status="active", status_details=None)
    elif spell == "unpaid":
        w.update("sub_1", month(1, 4), status="past_due")
        w.update("sub_1", at, status="unpaid")
        w.update("sub_1", at + 30 * MINUTE, status="active")
    else:
        w.update("sub_1", at, pause_collection={"behavior": "void", "resumes_at": None})
        w.update("sub_1", at + 30 * MINUTE, pause_collection=None)
        rules["pause_collection_keeps_mrr"] = False
    con = derive(w, seen_at=month(2, 5), **rules)
    assert rows(con) == [new(T0, "30.0000")]
    assert customer_mrr_at(con, "cus_1", at + 15 * MINUTE) == D("30.0000")
    check_invariants(con)


# --- cancellations while paused, unpaid or past_due ----------------------------------------------------------------

@pytest.mark.parametrize("pause", ["status-paused", "collection-paused-dropping-mrr", "collection-paused-keeping-mrr"])
@one_store
def test_a_subscription_canceled_while_paused_churns_once(world: World, derive: Derive, pause: str) -> None:
    """design.md 4 (paused counts zero; a paused collection keeps MRR by default, not with
    pause_collection_keeps_mrr = false; a later deletion of what already counts zero is no second movement) and 5
    (cancellation rows carry churn_type and the subscription's feedback; README: they belong to its last
    cancellation). core basic x3 (30.00) from 1 January; paused on 10 February (status paused at the customer's
    request, or its collection paused); deleted on 5 March while paused, feedback unused, comment "seasonal".
    - status paused, or collection paused with the setting off: `cancellation` -30.00 on 10 February, voluntary,
      unused (its last cancellation: nothing came back), with the comment; the deletion adds nothing.
    - collection paused with the default: the MRR runs on to the deletion: -30.00 on 5 March, voluntary, unused."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.cycle("sub_1", month(1))
    paused = month(1, 9)
    rules: dict[str, Any] = {}
    if pause == "status-paused":
        w.update("sub_1", paused, status="paused", status_details=paused_for("pause_requested", paused))
    else:
        w.update("sub_1", paused, pause_collection={"behavior": "void", "resumes_at": None})
        if pause == "collection-paused-dropping-mrr":
            rules["pause_collection_keeps_mrr"] = False
    w.cancel("sub_1", month(2, 4), feedback="unused", comment="seasonal")
    con = derive(w, seen_at=month(3), **rules)
    at = month(2, 4) if pause == "collection-paused-keeping-mrr" else paused
    assert rows(con) == [new(T0, "30.0000"), churn(at, "-30.0000", feedback="unused")]
    assert comments(con) == [(at, "seasonal")]
    assert customer_mrr_at(con, "cus_1", month(2)) == (D("30.0000") if at == month(2, 4) else 0)
    check_invariants(con)


@one_store
def test_an_unpaid_spell_paid_back_then_a_cancellation_with_feedback(world: World, derive: Derive) -> None:
    """design.md 4 (unpaid churns at the transition, counts zero) and 5 (churn_type: involuntary when the
    subscription went unpaid; README: an earlier churn the customer undid carries no feedback, the subscription's
    feedback goes to its last cancellation). core basic x3 (30.00) from 1 January; past_due 2 February (nothing),
    unpaid 15 February: -30.00 involuntary, no feedback; paid back 4 March: `reactivation` +30.00; canceled at once
    on 10 April with feedback other and a comment: -30.00 voluntary (this churn is the customer's request, not the
    unpaid spell), other, the comment on that row alone."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.update("sub_1", month(1, 1), status="past_due")
    w.update("sub_1", month(1, 14), status="unpaid")
    w.update("sub_1", month(2, 3), status="active")
    w.cycle("sub_1", month(3))
    w.cancel("sub_1", month(3, 9), feedback="other", comment="moving to an in-house tool")
    con = derive(w, seen_at=month(4, 5))
    assert rows(con) == [new(T0, "30.0000"), churn(month(1, 14), "-30.0000", "involuntary"),
                         back(month(2, 3), "30.0000"), churn(month(3, 9), "-30.0000", feedback="other")]
    assert comments(con) == [(month(1, 14), None), (month(3, 9), "moving to an in-house tool")]
    check_invariants(con)


@pytest.mark.parametrize("then", ["unpaid", "paid", "paid-past-due-counting-zero"])
@one_store
def test_a_request_to_cancel_made_while_past_due(world: World, derive: Derive, then: str) -> None:
    """design.md 4 (past_due counts by default, setting past_due_counts; unpaid churns at that transition, its later
    end is no second movement) and 5 (involuntary when the subscription went unpaid; README: past_due counting zero
    churns involuntarily, and the subscription's reason and feedback go to its last cancellation, an earlier churn
    the customer undid carries none). core basic x3 (30.00) from 1 January, renewed 1 February, past_due from 3
    February; on 5 February asked to cancel at the period's end, 1 March (too_expensive); it ends on 1 March.
    - unpaid on 20 February: `cancellation` -30.00 then, involuntary, too_expensive; the end adds nothing, and
      nothing is left in scheduled_churn.
    - paid on 12 February (active): one `cancellation` -30.00 on 1 March, voluntary, too_expensive.
    - paid on 12 February, past_due counting zero: -30.00 on 3 February, involuntary, no feedback; `reactivation`
      +30.00 on 12 February; -30.00 on 1 March, voluntary, too_expensive."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    renewal = w.cycle("sub_1", month(1))
    renewal["status_transitions"]["paid_at"] = None
    renewal["status"] = "open"
    w.update("sub_1", month(1, 2), status="past_due")
    w.update("sub_1", month(1, 4), cancel_at_period_end=True, cancel_at=month(2), canceled_at=month(1, 4),
             cancellation_details={"reason": "cancellation_requested", "feedback": "too_expensive", "comment": None})
    if then == "unpaid":
        w.update("sub_1", month(1, 19), status="unpaid")
    else:
        renewal["status"], renewal["status_transitions"]["paid_at"] = "paid", month(1, 11)
        w.update("sub_1", month(1, 11), status="active")
    w.end("sub_1", month(2))
    # (a setting left at its default is not passed: the cases of one settings share one store)
    con = derive(w, seen_at=month(2, 5), **({"past_due_counts": False} if then.endswith("zero") else {}))
    end = churn(month(2), "-30.0000", feedback="too_expensive")
    assert rows(con) == {
        "unpaid": [new(T0, "30.0000"), churn(month(1, 19), "-30.0000", "involuntary", "too_expensive")],
        "paid": [new(T0, "30.0000"), end],
        "paid-past-due-counting-zero": [new(T0, "30.0000"), churn(month(1, 2), "-30.0000", "involuntary"),
                                        back(month(1, 11), "30.0000"), end]}[then]
    assert queries.scheduled_churn(con) == []
    check_invariants(con)


# --- requests to cancel and the MRR at stake -----------------------------------------------------------------------

@pytest.mark.parametrize("case", ["pending", "done"])
@one_store
def test_a_cancel_at_inside_a_month_after_seats_and_an_item_were_taken_off(world: World, derive: Derive,
                                                                           case: str) -> None:
    """design.md 4 (a cancellation counts at ended_at; a scheduled one shows in scheduled_churn with the MRR at
    stake) and 5 (seats down: seat_contraction; an item of a family removed while the customer stays: downgrade).
    core basic x5 (50.00) and analytics (50.00) from 1 January; on 5 February set to cancel on 15 March
    (low_quality); 2 seats on 20 February (-30.00), analytics removed on 25 February (-50.00).
    - pending, seen 1 March: scheduled_churn lists it for 15 March (not at a period end), active, 20.00 at stake
      (what the cancellation will take, not the 100.00 of the request), low_quality.
    - done, ended 15 March, seen 20 March: `cancellation` -20.00 on 15 March, voluntary, low_quality; nothing
      pending."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 5), ("si_a", "analytics", 1)], T0)
    w.cycle("sub_1", month(1))
    w.update("sub_1", month(1, 4), cancel_at=month(2, 14), canceled_at=month(1, 4),
             cancellation_details={"reason": "cancellation_requested", "feedback": "low_quality", "comment": None})
    w.update("sub_1", month(1, 19), items=[("si_c", "core_basic", 2), ("si_a", "analytics", 1)])
    w.update("sub_1", month(1, 24), items=[("si_c", "core_basic", 2)])
    if case == "done":
        w.cycle("sub_1", month(2))
        w.end("sub_1", month(2, 14))
    con = derive(w, seen_at=month(2) if case == "pending" else month(2, 19))
    want = [new(T0, "100.0000"), (month(1, 19), "seat_contraction", "contraction", D("-30.0000"), None, None),
            (month(1, 24), "downgrade", "contraction", D("-50.0000"), None, None)]
    if case == "pending":
        assert rows(con) == want
        assert [(r["subscription_id"], r["cancel_at"], r["cancel_at_period_end"], r["status"], r["mrr_at_stake"],
                 r["cancellation_feedback"]) for r in queries.scheduled_churn(con)] == [
            ("sub_1", dt.datetime(2024, 3, 15, tzinfo=dt.UTC), False, "active", D("20.0000"), "low_quality")]
    else:
        assert rows(con) == [*want, churn(month(2, 14), "-20.0000", feedback="low_quality")]
        assert queries.scheduled_churn(con) == []
    check_invariants(con)


@pytest.mark.parametrize("keeps", [True, False], ids=["keeps-mrr", "drops-mrr"])
@one_store
def test_a_request_to_cancel_while_collection_is_paused(world: World, derive: Derive, keeps: bool) -> None:
    """design.md 4 (pause_collection keeps MRR by default; a scheduled cancellation shows in scheduled_churn) and
    README (at stake: the subscription's MRR just before the cancellation takes effect). core basic x5 (50.00) from 1
    January, renewed 1 February; collection paused on 5 February (no date to resume);
    on 10 February set to cancel at the period's end, 1 March (unused); seen 20 February.
    - keeps MRR (default): no movement after the `new`; 50.00 at stake on 1 March.
    - pause_collection_keeps_mrr = false: the pause is the churn, -50.00 on 5 February (voluntary); the request
      takes nothing more: 0.00 at stake, the row still listed (it has not ended)."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 5)], T0)
    w.cycle("sub_1", month(1))
    w.update("sub_1", month(1, 4), pause_collection={"behavior": "keep_as_draft", "resumes_at": None})
    w.update("sub_1", month(1, 9), cancel_at_period_end=True, cancel_at=month(2), canceled_at=month(1, 9),
             cancellation_details={"reason": "cancellation_requested", "feedback": "unused", "comment": None})
    con = derive(w, seen_at=month(1, 19), **({} if keeps else {"pause_collection_keeps_mrr": False}))
    got = [r[:5] for r in rows(con)]
    assert got == ([new(T0, "50.0000")[:5]] if keeps else
                   [new(T0, "50.0000")[:5], churn(month(1, 4), "-50.0000")[:5]])
    assert [(r["subscription_id"], r["cancel_at"], r["cancel_at_period_end"], r["mrr_at_stake"],
             r["cancellation_feedback"]) for r in queries.scheduled_churn(con)] == [
        ("sub_1", dt.datetime(2024, 3, 1, tzinfo=dt.UTC), True, D("50.0000") if keeps else D("0.0000"), "unused")]
    check_invariants(con)


@pytest.mark.parametrize("recognition", ["ended", "canceled"])
@one_store
def test_a_request_to_cancel_one_of_two_subscriptions_is_a_downgrade(world: World, derive: Derive,
                                                                    recognition: str) -> None:
    """design.md 4 (churn_recognition: at ended_at, or at the request) and 5 (an item of a family removed while the
    customer stays: `downgrade`, contraction; only cancellation rows carry churn_type and feedback). core basic x3
    (30.00) and, a minute later on its own subscription, analytics (50.00) from 1 January: one `new` +80.00. On 10
    February the analytics subscription is set to cancel at its period's end, 1 March (too_expensive), and ends
    then. The customer keeps 30.00: `downgrade` -50.00 with no churn_type or feedback, on 1 March ("ended") or on
    10 February ("canceled"); no churn."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.subscribe("sub_2", "cus_1", [("si_a", "analytics", 1)], T0 + MINUTE)
    for sid in ("sub_1", "sub_2"):
        w.cycle(sid, month(1))
    w.cancel("sub_2", month(1, 9), ended_at=month(2), feedback="too_expensive")
    con = derive(w, seen_at=month(2, 5), **({} if recognition == "ended" else {"churn_recognition": recognition}))
    at = month(2) if recognition == "ended" else month(1, 9)
    assert rows(con) == [new(T0, "80.0000"), (at, "downgrade", "contraction", D("-50.0000"), None, None)]
    assert customer_mrr_at(con, "cus_1", month(1, 20)) == (D("80.0000") if recognition == "ended" else D("30.0000"))
    check_invariants(con)


@one_store
def test_cancel_at_period_end_without_a_cancel_at_date_is_due_at_the_period_end(world: World, derive: Derive) -> None:
    """design.md 4 and 7 (scheduled_churn: subscriptions set to cancel, with the MRR at stake and the date).
    core basic x5 (50.00) from 1 January, renewed 1 February (its items' period runs to 1 March); on 10 February
    cancel_at_period_end is set with no cancel_at (as older API versions sent it); seen 20 February: one row,
    due 1 March 00:00 (the period's end), cancel_at_period_end, active, 50.00 at stake; no movement yet."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 5)], T0)
    w.cycle("sub_1", month(1))
    w.update("sub_1", month(1, 9), cancel_at_period_end=True, canceled_at=month(1, 9),
             cancellation_details={"reason": "cancellation_requested", "feedback": None, "comment": None})
    con = derive(w, seen_at=month(1, 19))
    assert rows(con) == [new(T0, "50.0000")]
    assert [(r["subscription_id"], r["cancel_at"], r["cancel_at_period_end"], r["status"], r["mrr_at_stake"])
            for r in queries.scheduled_churn(con)] == [
        ("sub_1", dt.datetime(2024, 3, 1, tzinfo=dt.UTC), True, "active", D("50.0000"))]


def collection_paused_to_a_date_then_set_to_cancel(w: World, ended: bool) -> World:
    """core basic x5 (50.00) from 1 January, renewed 1 February; collection paused on 5 February to resume on 15
    February (resumes_at); on 10 February set to cancel at the period's end, 1 March (unused). With ``ended``,
    collection resumes on 15 February and the subscription ends on 1 March."""
    catalogue(w)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 5)], T0)
    w.cycle("sub_1", month(1))
    w.update("sub_1", month(1, 4), pause_collection={"behavior": "keep_as_draft", "resumes_at": month(1, 14)})
    w.update("sub_1", month(1, 9), cancel_at_period_end=True, cancel_at=month(2), canceled_at=month(1, 9),
             cancellation_details={"reason": "cancellation_requested", "feedback": "unused", "comment": None})
    if ended:
        w.update("sub_1", month(1, 14), pause_collection=None)
        w.end("sub_1", month(2))
    return w


@pytest.mark.parametrize("case", ["pending", "done"])
def test_the_mrr_at_stake_of_a_collection_pause_that_resumes_before_the_cancellation(world: World, derive: Derive,
                                                                                     case: str) -> None:
    """design.md 4 and 7 (scheduled_churn: the MRR at stake) with pause_collection_keeps_mrr = false, and README (the
    MRR at stake is what the cancellation takes: the subscription's MRR just before it takes effect, so a coupon
    still running then still reduces it and a trial ending before it converts first).
    collection_paused_to_a_date_then_set_to_cancel: the pause is a churn, -50.00 on 5 February (voluntary).
    - pending, seen 12 February: that churn is the subscription's last cancellation so far (unused). Stripe resumes
      collection on 15 February (resumes_at), two weeks before the cancellation takes effect, so just before 1 March
      the subscription counts 50.00 again: 50.00 at stake.
    - done, seen 5 March: the resume is a `reactivation` +50.00 on 15 February and the cancellation on 1 March takes
      50.00 (voluntary, unused: the request's feedback goes to the last cancellation, the pause's churn has none)."""
    w = collection_paused_to_a_date_then_set_to_cancel(world, ended=case == "done")
    con = derive(w, seen_at=month(1, 11) if case == "pending" else month(2, 4), pause_collection_keeps_mrr=False)
    if case == "pending":
        assert rows(con) == [new(T0, "50.0000"), churn(month(1, 4), "-50.0000", feedback="unused")]
        assert [(r["subscription_id"], r["cancel_at"], r["mrr_at_stake"]) for r in queries.scheduled_churn(con)] == [
            ("sub_1", dt.datetime(2024, 3, 1, tzinfo=dt.UTC), D("50.0000"))]
    else:
        assert rows(con) == [new(T0, "50.0000"), churn(month(1, 4), "-50.0000"), back(month(1, 14), "50.0000"),
                             churn(month(2), "-50.0000", feedback="unused")]
        assert queries.scheduled_churn(con) == []
    check_invariants(con)


@one_store
def test_a_discount_ending_while_the_subscription_is_paused_is_no_movement(world: World, derive: Derive) -> None:
    """design.md 4 (paused counts zero; a discount ending is a movement dated at its end) and 5 (no row when the
    MRR does not change; reactivation takes the whole delta). core basic x4 (40.00) under 50% off for two months
    (ends 1 March): 20.00. Paused on 10 February: -20.00 (voluntary). The discount ends on 1 March while paused: 0 ->
    0, no row. Resumed on 10 March: `reactivation` +40.00, the full price."""
    w = catalogue(world)
    w.coupon("c50", percent_off=50, duration="repeating", duration_in_months=2)
    d = w.discount("c50", T0, customer="cus_1", subscription="sub_1")
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 4)], T0, discounts=[d["id"]])
    w.cycle("sub_1", month(1))
    w.update("sub_1", month(1, 9), status="paused", status_details=paused_for("pause_requested", month(1, 9)))
    w.update("sub_1", month(2, 9), status="active", status_details=None)
    w.cycle("sub_1", month(2, 9))
    con = derive(w, seen_at=month(3))
    assert rows(con) == [new(T0, "20.0000"), churn(month(1, 9), "-20.0000"), back(month(2, 9), "40.0000")]
    assert customer_mrr_at(con, "cus_1", month(2, 5)) == 0
    check_invariants(con)


# --- bridges: each its own store (the bridge and churn_reasons sum a whole store) ---------------------------------

@pytest.mark.parametrize("recognition", ["ended", "canceled"])
def test_seats_added_after_a_request_under_each_churn_recognition(world: World, derive: Derive,
                                                                  recognition: str) -> None:
    """design.md 4 (churn_recognition "ended": the churn counts when the subscription ends; "canceled": when it is
    requested) and 6. core basic x3 (30.00) from 1 January, renewed 1 February; on 10 February the customer asks to
    cancel at the period's end, 1 March (too_expensive); on 20 February a fourth seat; it ends on 1 March.
    - ended: seat_expansion +10.00 on 20 February, `cancellation` -40.00 on 1 March. February: opening 30,
      expansion 10 (seat_expansion), closing 40; March: opening 40, churn 40, closing 0, 1 churned of 1 (rate 1.0);
      churn_reasons March voluntary too_expensive 40.00.
    - canceled: `cancellation` -30.00 on 10 February (MRR zero from the request); the seat after it moves 0 -> 0,
      no row; the end adds nothing. February: opening 30, churn 30, closing 0, expansion 0; March: all 0;
      churn_reasons February voluntary too_expensive 30.00."""
    w = catalogue(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.cycle("sub_1", month(1))
    w.update("sub_1", month(1, 9), cancel_at_period_end=True, cancel_at=month(2), canceled_at=month(1, 9),
             cancellation_details={"reason": "cancellation_requested", "feedback": "too_expensive", "comment": None})
    w.update("sub_1", month(1, 19), items=[("si_c", "core_basic", 4)])
    w.end("sub_1", month(2))
    con = derive(w, seen_at=month(3), churn_recognition=recognition)
    by = months(con)
    feb, mar = by[dt.date(2024, 2, 1)], by[dt.date(2024, 3, 1)]
    reasons = [(r["period_start"], r["churn_type"], r["cancellation_feedback"], r["churned_customers"],
                r["churned_mrr"]) for r in queries.churn_reasons(con)]
    if recognition == "ended":
        assert rows(con) == [new(T0, "30.0000"),
                             (month(1, 19), "seat_expansion", "expansion", D("10.0000"), None, None),
                             churn(month(2), "-40.0000", feedback="too_expensive")]
        assert flows(feb) == (30, 0, 0, 10, 0, 0, 0, 40) and feb["seat_expansion"] == 10
        assert flows(mar) == (40, 0, 0, 0, 0, 40, 0, 0)
        assert counts(mar) == (1, 0, 0, 1, 0) and mar["customer_churn_rate"] == 1.0
        assert reasons == [(dt.date(2024, 3, 1), "voluntary", "too_expensive", 1, D("40.0000"))]
    else:
        assert rows(con) == [new(T0, "30.0000"), churn(month(1, 9), "-30.0000", feedback="too_expensive")]
        assert flows(feb) == (30, 0, 0, 0, 0, 30, 0, 0)
        assert counts(feb) == (1, 0, 0, 1, 0) and feb["customer_churn_rate"] == 1.0
        assert flows(mar) == (0, 0, 0, 0, 0, 0, 0, 0)
        assert reasons == [(dt.date(2024, 2, 1), "voluntary", "too_expensive", 1, D("30.0000"))]
    check_invariants(con)


@pytest.mark.parametrize("keeps", [True, False], ids=["keeps-mrr", "drops-mrr"])
def test_a_collection_pause_across_a_months_end_in_the_bridge(world: World, derive: Derive, keeps: bool) -> None:
    """design.md 4 (pause_collection keeps MRR by default; setting pause_collection_keeps_mrr) and 6. c1: core
    basic x5 (50.00) from 1 January, its collection paused on 20 February and resumed on 10 March; c2: core basic
    x3 (30.00) from 1 January, untouched.
    - keeps MRR: no movement; February and March open and close at 80, no churn.
    - drops MRR: c1 `cancellation` -50.00 on 20 February (voluntary, no feedback) and `reactivation` +50.00 on 10
      March. February: opening 80, churn 50, closing 30, customers 2 -> 1, 1 churned (rate 1/2), churn_reasons
      voluntary (none) 50.00; March: opening 30, reactivation 50, closing 80, 1 reactivated, customers 1 -> 2."""
    w = catalogue(world, "c1", "c2")
    w.subscribe("s1", "c1", [("i1", "core_basic", 5)], T0)
    w.subscribe("s2", "c2", [("i2", "core_basic", 3)], T0)
    for sid in ("s1", "s2"):
        w.cycle(sid, month(1))
    w.update("s1", month(1, 19), pause_collection={"behavior": "mark_uncollectible", "resumes_at": month(2, 9)})
    w.cycle("s2", month(2))
    held = w.cycle("s1", month(2))
    held.update(status="uncollectible")
    held["status_transitions"].update(paid_at=None, marked_uncollectible_at=month(2))
    w.update("s1", month(2, 9), pause_collection=None)
    con = derive(w, seen_at=month(3, 5), pause_collection_keeps_mrr=keeps)
    by = months(con)
    feb, mar = by[dt.date(2024, 2, 1)], by[dt.date(2024, 3, 1)]
    reasons = [(r["period_start"], r["churn_type"], r["cancellation_feedback"], r["churned_customers"],
                r["churned_mrr"]) for r in queries.churn_reasons(con)]
    if keeps:
        assert rows(con, "c1") == [new(T0, "50.0000")]
        assert flows(feb) == (80, 0, 0, 0, 0, 0, 0, 80) and flows(mar) == (80, 0, 0, 0, 0, 0, 0, 80)
        assert reasons == []
    else:
        assert rows(con, "c1") == [new(T0, "50.0000"), churn(month(1, 19), "-50.0000"), back(month(2, 9), "50.0000")]
        assert flows(feb) == (80, 0, 0, 0, 0, 50, 0, 30)
        assert counts(feb) == (2, 0, 0, 1, 1) and feb["customer_churn_rate"] == 0.5
        assert flows(mar) == (30, 0, 50, 0, 0, 0, 0, 80) and counts(mar) == (1, 0, 1, 0, 2)
        assert reasons == [(dt.date(2024, 2, 1), "voluntary", "(none)", 1, D("50.0000"))]
    check_invariants(con, "c1")


def test_statuses_crossing_month_ends_in_one_account(world: World, derive: Derive) -> None:
    """design.md 4 (trialing and paused count zero, past_due counts, unpaid churns at the transition, a
    cancellation at period end churns when it ends), 5 (windows; feedback) and 6 (the bridge, customer counts and
    rates), worked out by hand (USD; March 2024):
    - c1: core basic x3 on a trial from 15 January that converts at 1 March 00:00: `new` 30 in March, not February.
    - c2: core pro x2 (40) from 5 January, paused (at its request) on 20 February, resumed 10 March: churn 40 in
      February (voluntary, no feedback), reactivation 40 in March.
    - c3: core pro x1 (20) from 10 January, past_due 25 February, active again 3 March: no movement.
    - c4: analytics (50) from 12 January, past_due 20 February, unpaid 29 February 23:50, paid back 1 March 00:30
      (40 minutes: one window, 50 -> 50): no movement.
    - c5: core basic x1 from 5 March (`new` 10), canceled 12 March (feedback other, a comment: churn 10), back on
      20 March with core basic x2 (`reactivation` 20).
    - c6: core basic x3 (30) from 3 January, set on 10 February to cancel at the period's end (low_quality), which
      ends it on 3 March: churn 30 in March.
    January: new 40 + 20 + 50 + 30 = 140, 4 new customers. February: opening 140, churn 40, closing 100; customers
    4 -> 3, 1 churned, rate 1/4; gross and net revenue churn 40/140, quick ratio 0. March: opening 100 (c3, c4,
    c6), new 30 + 10 = 40, reactivation 40 + 20 = 60, churn 10 + 30 = 40, closing 160 (30 + 40 + 20 + 50 + 20);
    customers: opening 3, new 2 (c1, c5), reactivated 2 (c2, c5), churned 2 (c5, c6), closing 5; customer churn
    rate 1/3 (c5 was not there at the start); gross 40/100 = 0.4, net (40 - 60)/100 = -0.2 (net negative), NRR and
    GRR 60/100, quick ratio 100/40 = 2.5, ARPA 160/5 = 32. churn_reasons: February voluntary (none) 1 40; March
    voluntary low_quality 1 30, voluntary other 1 10."""
    w = catalogue(world, "c1", "c2", "c3", "c4", "c5", "c6")
    mar1 = ts(2024, 3, 1)
    w.subscribe("s1", "c1", [("i1", "core_basic", 3)], ts(2024, 1, 15), trial_end=mar1)
    trial_create_line_ends_at(w, "s1", mar1)
    w.update("s1", mar1, status="active")
    w.cycle("s1", mar1)
    w.subscribe("s2", "c2", [("i2", "core_pro", 2)], ts(2024, 1, 5))
    w.cycle("s2", ts(2024, 2, 5))
    w.update("s2", ts(2024, 2, 20), status="paused", status_details=paused_for("pause_requested", ts(2024, 2, 20)))
    w.update("s2", ts(2024, 3, 10), status="active", status_details=None)
    w.cycle("s2", ts(2024, 3, 10))
    w.subscribe("s3", "c3", [("i3", "core_pro", 1)], ts(2024, 1, 10))
    w.cycle("s3", ts(2024, 2, 10))
    w.update("s3", ts(2024, 2, 25), status="past_due")
    w.update("s3", ts(2024, 3, 3), status="active")
    w.subscribe("s4", "c4", [("i4", "analytics", 1)], ts(2024, 1, 12))
    w.cycle("s4", ts(2024, 2, 12))
    w.update("s4", ts(2024, 2, 20), status="past_due")
    w.update("s4", ts(2024, 2, 29, 23, 50), status="unpaid")
    w.update("s4", ts(2024, 3, 1, 0, 30), status="active")
    w.subscribe("s5", "c5", [("i5", "core_basic", 1)], ts(2024, 3, 5))
    w.cancel("s5", ts(2024, 3, 12), feedback="other", comment="closing the team down")
    w.subscribe("s5b", "c5", [("i5b", "core_basic", 2)], ts(2024, 3, 20))
    w.subscribe("s6", "c6", [("i6", "core_basic", 3)], ts(2024, 1, 3))
    w.cycle("s6", ts(2024, 2, 3))
    w.cancel("s6", ts(2024, 2, 10), ended_at=ts(2024, 3, 3), feedback="low_quality")
    con = derive(w, seen_at=ts(2024, 3, 25))
    assert rows(con, "c1") == [new(mar1, "30.0000")]
    assert rows(con, "c2") == [new(ts(2024, 1, 5), "40.0000"), churn(ts(2024, 2, 20), "-40.0000"),
                               back(ts(2024, 3, 10), "40.0000")]
    assert rows(con, "c3") == [new(ts(2024, 1, 10), "20.0000")]
    assert rows(con, "c4") == [new(ts(2024, 1, 12), "50.0000")]
    assert customer_mrr_at(con, "c4", ts(2024, 3, 1, 0, 10)) == D("50.0000")
    assert rows(con, "c5") == [new(ts(2024, 3, 5), "10.0000"), churn(ts(2024, 3, 12), "-10.0000", feedback="other"),
                               back(ts(2024, 3, 20), "20.0000")]
    assert comments(con, "c5") == [(ts(2024, 3, 12), "closing the team down")]
    assert rows(con, "c6") == [new(ts(2024, 1, 3), "30.0000"),
                               churn(ts(2024, 3, 3), "-30.0000", feedback="low_quality")]
    by = months(con)
    jan, feb, mar = (by[dt.date(2024, m, 1)] for m in (1, 2, 3))
    assert flows(jan) == (0, 140, 0, 0, 0, 0, 0, 140) and counts(jan) == (0, 4, 0, 0, 4)
    assert flows(feb) == (140, 0, 0, 0, 0, 40, 0, 100) and counts(feb) == (4, 0, 0, 1, 3)
    assert feb["customer_churn_rate"] == pytest.approx(1 / 4)
    assert feb["gross_revenue_churn_rate"] == pytest.approx(40 / 140)
    assert feb["net_revenue_churn_rate"] == pytest.approx(40 / 140) and feb["quick_ratio"] == 0
    assert flows(mar) == (100, 40, 60, 0, 0, 40, 0, 160) and counts(mar) == (3, 2, 2, 2, 5)
    assert mar["customer_churn_rate"] == pytest.approx(1 / 3)
    assert (mar["gross_revenue_churn_rate"], mar["net_revenue_churn_rate"], mar["nrr"], mar["grr"],
            mar["quick_ratio"]) == (pytest.approx(0.4), pytest.approx(-0.2), pytest.approx(0.6), pytest.approx(0.6),
                                    pytest.approx(2.5))
    assert (mar["arpa"], mar["net_negative_churn"]) == (D("32.0000"), True)
    assert [(r["period_start"], r["churn_type"], r["cancellation_feedback"], r["churned_customers"], r["churned_mrr"])
            for r in queries.churn_reasons(con)] == [
        (dt.date(2024, 2, 1), "voluntary", "(none)", 1, D("40.0000")),
        (dt.date(2024, 3, 1), "voluntary", "low_quality", 1, D("30.0000")),
        (dt.date(2024, 3, 1), "voluntary", "other", 1, D("10.0000"))]
    for c in ("c1", "c2", "c3", "c4", "c5", "c6"):
        check_invariants(con, c)
