"""A subscription that began with a trial, paid, and was later granted another trial: Stripe keeps only the latest
trial on the subscription (trial_start, trial_end), so without events the first one shows only on the invoices
(design.md 3: the subscription_create invoice bills the items at 0 for a period ending at the trial's end, then
the trial's end is invoiced). Both trials count zero (design.md 4), and `new` is dated at the first trial's end,
as the events say. A signup's 100%-off coupon, a free price and a metered item also leave lines that pay nothing:
they are no trial."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from builders import DAY, World, add_months, ts
from conftest import OneStore, customer_mrr_at

T0 = ts(2024, 1, 1)
FIRST_END = T0 + 14 * DAY  # the signup trial's end
LATER = add_months(FIRST_END, 2) + 10 * DAY  # a second trial granted by an update, for 30 days
LATER_END = LATER + 30 * DAY
Derive = Callable[..., duckdb.DuckDBPyConnection]

# The tests marked @one_store are each an account of one store, derived once (conftest.OneStore): their queries see
# their own account's rows alone.
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()

# events: every one stored; none (invoices and the subscription's dates only); or from after the first trial on
EVENTS = [pytest.param(True, id="events"), pytest.param(False, id="invoices-and-dates"),
          pytest.param(add_months(FIRST_END, 1), id="events-from-between-the-trials")]


def status_steps(con: duckdb.DuckDBPyConnection, sid: str = "sub_1") -> list[tuple[int, str]]:
    """The subscription's status over time (one per moment, the latest source winning as 40 reads them), a step
    repeating the status before it left out."""
    rows = con.execute(
        "SELECT CAST(epoch(moment) AS BIGINT), status FROM derived_sub_status_steps WHERE subscription_id = ? "
        "QUALIFY row_number() OVER (PARTITION BY moment ORDER BY ord DESC) = 1 ORDER BY moment", [sid]).fetchall()
    out: list[tuple[int, str]] = []
    for moment, status in rows:
        if not out or out[-1][1] != status:
            out.append((moment, status))
    return out


def movements(con: duckdb.DuckDBPyConnection) -> list[tuple[int, str, Decimal]]:
    rows = con.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta FROM mrr_movements "
                       "ORDER BY occurred_at, movement").fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def later_trial(w: World, paid_from: int) -> None:
    """Renewals after ``paid_from``, then a 30-day trial granted at LATER (its update invoice bills 0) and paid
    from its end."""
    w.cycle("sub_1", add_months(paid_from, 1))
    w.cycle("sub_1", add_months(paid_from, 2))
    w.update("sub_1", LATER, status="trialing", trial_start=LATER, trial_end=LATER_END)
    w.invoice_for("sub_1", LATER, "subscription_update", period_start=LATER)  # (0.00 lines)
    w.update("sub_1", LATER_END, status="active")
    w.cycle("sub_1", LATER_END)


def signup_trial_then_later_trial(w: World, ended_early: int | None = None) -> None:
    """cus_1 subscribes 2 seats at 25.00 on a 14-day trial: the create invoice bills them at 0 for the trial (its
    line's period ends at the trial's end, as Stripe's "Trial period for ..." line does), the trial's end is
    invoiced at once (a renewal; or, ended early by an update at ``ended_early``, that update's invoice for a new
    period); later another trial is granted."""
    w.customer("cus_1")
    w.product("prod_seat", unit_label="seat", family="core")
    w.price("price_a", "prod_seat", 2_500)
    w.subscribe("sub_1", "cus_1", [("si_1", "price_a", 2)], T0, trial_end=FIRST_END)
    create = next(iter(w.objects["invoices"].values()))
    assert create["billing_reason"] == "subscription_create"
    for line in create["lines"]["data"]:
        assert line["amount"] == 0
        line["period"]["end"] = FIRST_END
    if ended_early is None:
        w.update("sub_1", FIRST_END, status="active")
        w.cycle("sub_1", FIRST_END)
    else:
        w.update("sub_1", ended_early, status="active", trial_end=ended_early, billing_cycle_anchor=ended_early)
        w.invoice_for("sub_1", ended_early, "subscription_update", period_start=ended_early)
    later_trial(w, FIRST_END if ended_early is None else ended_early)


@pytest.mark.parametrize("ended", ["at-its-end", "early-by-an-update"])
@pytest.mark.parametrize("events", EVENTS)
@one_store
def test_a_signup_trial_counts_zero_when_a_later_trial_replaced_it(world: World, derive: Derive,
                                                                   events: bool | int, ended: str) -> None:
    """Both trials count zero and `new` is dated at the first trial's end, whichever evidence the store holds:
    the events, or before them the invoices (it used to be active from the signup, `new` dated there)."""
    first_end = FIRST_END if ended == "at-its-end" else T0 + 5 * DAY
    signup_trial_then_later_trial(world, None if ended == "at-its-end" else first_end)
    con = derive(world, seen_at=LATER_END + 5 * DAY, events=events)
    assert status_steps(con) == [(T0, "trialing"), (first_end, "active"), (LATER, "trialing"),
                                 (LATER_END, "active")]
    assert customer_mrr_at(con, "cus_1", T0 + DAY) == 0
    assert customer_mrr_at(con, "cus_1", first_end - 1) == 0
    assert customer_mrr_at(con, "cus_1", first_end) == Decimal("50.0000")
    assert customer_mrr_at(con, "cus_1", LATER) == 0
    assert customer_mrr_at(con, "cus_1", LATER_END) == Decimal("50.0000")
    assert movements(con) == [(first_end, "new", Decimal("50.0000")),
                              (LATER, "cancellation", Decimal("-50.0000")),
                              (LATER_END, "reactivation", Decimal("50.0000"))]


def signup_without_trial_then_later_trial(w: World, kind: str) -> None:
    """cus_1 subscribes on T0 with no trial, its create invoice paying nothing all the same: a 100%-off coupon
    for the first month (the line bills the full price, discount_amounts take it off), a free price, or a metered
    item (its line bills no usage yet: it is billed in arrears); renewed monthly, then granted a later trial."""
    w.customer("cus_1")
    w.product("prod_seat", unit_label="seat", family="core")
    w.product("prod_api", unit_label="api call", family="api")
    discounts: list[str] = []
    if kind == "coupon":
        w.coupon("free_month", percent_off=100, duration="repeating", duration_in_months=1)
        discounts = [w.discount("free_month", T0, customer="cus_1", subscription="sub_1", did="di_1")["id"]]
        w.price("price_a", "prod_seat", 2_500)
        items = [("si_1", "price_a", 2)]
    elif kind == "free-price":
        w.price("price_a", "prod_seat", 0)
        items = [("si_1", "price_a", 2)]
    else:
        w.price("price_m", "prod_api", 10, usage_type="metered")
        items = [("si_1", "price_m", None)]
    sub = w.subscribe("sub_1", "cus_1", items, T0, discounts=discounts)
    create = next(iter(w.objects["invoices"].values()))
    if kind == "coupon":
        (line,) = create["lines"]["data"]
        assert line["amount"] == 5_000
        line["discount_amounts"] = [{"amount": 5_000, "discount": "di_1"}]
        line["discounts"] = ["di_1"]
    elif kind == "metered":
        # (Stripe lists the metered item on the create invoice at 0, for the period it will bill in arrears)
        item = sub["items"]["data"][0]
        line = w._line("sub_1", item, T0, add_months(T0, 1), amount=0, quantity=0)
        line["invoice"] = create["id"]
        create["lines"]["data"].append(line)
    usage = {"si_1": 4_000} if kind == "metered" else None
    w.cycle("sub_1", add_months(T0, 1), usage=usage)
    w.cycle("sub_1", add_months(T0, 2), usage=usage)
    w.update("sub_1", add_months(T0, 2) + 10 * DAY, status="trialing", trial_start=add_months(T0, 2) + 10 * DAY,
             trial_end=add_months(T0, 3) + 10 * DAY)
    w.update("sub_1", add_months(T0, 3) + 10 * DAY, status="active")
    w.cycle("sub_1", add_months(T0, 3) + 10 * DAY, usage=usage)


@pytest.mark.parametrize("kind", ["coupon", "free-price", "metered"])
@pytest.mark.parametrize("events", [True, False], ids=["events", "invoices-and-dates"])
@one_store
def test_a_signup_paying_nothing_without_a_trial_is_no_trial(world: World, derive: Derive, events: bool,
                                                              kind: str) -> None:
    """A signup whose invoice pays nothing for another reason than a trial stays active from its start (with
    events, and from the invoices before them): a coupon's month counts zero as a discount, not as a trial."""
    signup_without_trial_then_later_trial(world, kind)
    con = derive(world, seen_at=add_months(T0, 4), events=events)
    later, later_end = add_months(T0, 2) + 10 * DAY, add_months(T0, 3) + 10 * DAY
    assert status_steps(con) == [(T0, "active"), (later, "trialing"), (later_end, "active")]
    if kind == "coupon":
        # the coupon's month counts zero as a discount, the subscription active all along
        assert customer_mrr_at(con, "cus_1", T0 + DAY) == 0
        assert customer_mrr_at(con, "cus_1", add_months(T0, 1)) == Decimal("50.0000")
        discounted = con.execute("SELECT count(*) FROM derived_item_mrr WHERE subscription_item_id = 'si_1' "
                                 "AND status = 'active' AND valid_from = to_timestamp(?) AND mrr_original = 0",
                                 [T0]).fetchone()
        assert discounted == (1,)
    elif kind == "metered":
        # (a metered item's MRR is its last invoiced period's usage, from that invoice on)
        assert customer_mrr_at(con, "cus_1", add_months(T0, 1)) == Decimal("40.0000")
    assert customer_mrr_at(con, "cus_1", later) == 0


@pytest.mark.parametrize("shards", [1])
def test_the_incremental_path_reads_the_signup_trial_as_a_full_recompute_does(world: World, tmp_path: Path,
                                                                              shards: int) -> None:
    """The store holds no event of the first trial (coverage starts at the later trial's events, which a later
    sync brings): the customer's scope holds the invoices that date it, and every derived table is the full
    recompute's, `new` dated at the first trial's end."""
    from test_incremental import assert_incremental_equals_full, later_sync

    signup_trial_then_later_trial(world)
    world.customer("cus_2")
    world.subscribe("sub_2", "cus_2", [("si_2", "price_a", 1)], T0 + 3 * DAY)
    world.events = [e for e in world.events if e["created"] >= LATER]
    before = copy.deepcopy(world)
    before.events = []
    # (sub_1 as it was before the later trial)
    before.objects["subscriptions"]["sub_1"].update(status="active", trial_start=T0, trial_end=FIRST_END)
    before.objects["invoices"] = {k: v for k, v in before.objects["invoices"].items() if v["created"] < LATER}
    changed = later_sync(world, {"cus_1"}, {"sub_1"}, LATER)
    # (the events' coverage begins with that sync: every customer is derived again, each in its scope)
    _, full = assert_incremental_equals_full(tmp_path, before, changed, LATER - DAY, LATER_END + 2 * DAY, shards)
    assert [r for r in full["view mrr_movements"] if "cus_1" in r and "'new'" in r
            and str(dt.datetime.fromtimestamp(FIRST_END, tz=dt.UTC).date()) in r]



EARLIER = T0 + 5 * DAY  # an earlier trial granted by an update, for 10 days
EARLIER_END = EARLIER + 10 * DAY


def earlier_trial_then_later_trial(w: World) -> None:
    """cus_1 pays 2 seats at 25.00 from T0 (no trial at signup); at EARLIER an update grants a 10-day trial, billed
    by a subscription_update invoice of 0.00 lines from then (with a credit for the unused time of the period cut
    short, as create_prorations makes it); its end is invoiced; later another trial is granted (LATER)."""
    w.customer("cus_1")
    w.product("prod_seat", unit_label="seat", family="core")
    w.price("price_a", "prod_seat", 2_500)
    w.subscribe("sub_1", "cus_1", [("si_1", "price_a", 2)], T0)
    w.update("sub_1", EARLIER, status="trialing", trial_start=EARLIER, trial_end=EARLIER_END,
             billing_cycle_anchor=EARLIER_END)
    inv = w.invoice_for("sub_1", EARLIER, "subscription_update", period_start=EARLIER)  # (0.00 lines)
    item = w.objects["subscriptions"]["sub_1"]["items"]["data"][0]
    credit = w._line("sub_1", item, EARLIER, add_months(T0, 1), proration=True, credit=True)
    credit["invoice"] = inv["id"]
    inv["lines"]["data"].insert(0, credit)
    w.update("sub_1", EARLIER_END, status="active")
    w.cycle("sub_1", EARLIER_END)
    later_trial(w, EARLIER_END)


@pytest.mark.parametrize("events", EVENTS[:2])
@one_store
def test_an_earlier_trial_granted_by_an_update_counts_zero_when_a_later_trial_replaced_it(
        world: World, derive: Derive, events: bool | int) -> None:
    """Both trials granted by updates count zero, whichever evidence the store holds: the events, or before them
    the earlier trial's update invoice (0.00 lines from the update on) and the invoice of its end (it used to be
    active throughout, no movement at either end). (Found by scripts/truth_check.py --later-trials.)"""
    earlier_trial_then_later_trial(world)
    con = derive(world, seen_at=LATER_END + 5 * DAY, events=events)
    assert status_steps(con) == [(T0, "active"), (EARLIER, "trialing"), (EARLIER_END, "active"),
                                 (LATER, "trialing"), (LATER_END, "active")]
    assert customer_mrr_at(con, "cus_1", EARLIER) == 0
    assert customer_mrr_at(con, "cus_1", EARLIER_END) == Decimal("50.0000")
    assert movements(con) == [(T0, "new", Decimal("50.0000")),
                              (EARLIER, "cancellation", Decimal("-50.0000")),
                              (EARLIER_END, "reactivation", Decimal("50.0000")),
                              (LATER, "cancellation", Decimal("-50.0000")),
                              (LATER_END, "reactivation", Decimal("50.0000"))]


@one_store
def test_an_update_invoice_paying_nothing_for_another_reason_is_no_trial(world: World, derive: Derive) -> None:
    """A plan switched to a free price by an update that restarts the period (its invoice bills 0.00 from then,
    as the price costs nothing), switched back days later, is no trial: the subscription stays active until the
    later trial."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat", family="core")
    world.price("price_a", "prod_seat", 2_500)
    world.price("price_free", "prod_seat", 0)
    world.subscribe("sub_1", "cus_1", [("si_1", "price_a", 2)], T0)
    for at, price in ((EARLIER, "price_free"), (EARLIER_END, "price_a")):
        world.update("sub_1", at, items=[("si_1", price, 2)], prorate=False, billing_cycle_anchor=at)
        for it in world.objects["subscriptions"]["sub_1"]["items"]["data"]:
            it["current_period_start"], it["current_period_end"] = at, add_months(at, 1)
        world.invoice_for("sub_1", at, "subscription_update", period_start=at)
    later_trial(world, EARLIER_END)
    con = derive(world, seen_at=LATER_END + 5 * DAY, events=False)
    assert [s for s in status_steps(con) if s[0] < LATER] == [(T0, "active")]


@pytest.mark.parametrize("shards", [1])
def test_the_incremental_path_reads_an_earlier_trial_granted_by_an_update_as_a_full_recompute_does(
        world: World, tmp_path: Path, shards: int) -> None:
    """The earlier trial granted by an update with no event of it stored (coverage starts at the later trial's
    events, which a later sync brings): every derived table is the full recompute's, the earlier trial's
    cancellation and reactivation read from its invoices."""
    from test_incremental import assert_incremental_equals_full, later_sync

    earlier_trial_then_later_trial(world)
    world.customer("cus_2")
    world.subscribe("sub_2", "cus_2", [("si_2", "price_a", 1)], T0 + 3 * DAY)
    world.events = [e for e in world.events if e["created"] >= LATER]
    before = copy.deepcopy(world)
    before.events = []
    # (sub_1 as it was before the later trial)
    before.objects["subscriptions"]["sub_1"].update(status="active", trial_start=EARLIER, trial_end=EARLIER_END)
    before.objects["invoices"] = {k: v for k, v in before.objects["invoices"].items() if v["created"] < LATER}
    changed = later_sync(world, {"cus_1"}, {"sub_1"}, LATER)
    _, full = assert_incremental_equals_full(tmp_path, before, changed, LATER - DAY, LATER_END + 2 * DAY, shards)
    day = str(dt.datetime.fromtimestamp(EARLIER_END, tz=dt.UTC).date())
    assert [r for r in full["view mrr_movements"] if "cus_1" in r and "'reactivation'" in r and day in r]
