"""A subscription created ``incomplete`` (Stripe's payment_behavior=default_incomplete: the first payment is
confirmed afterwards) counts zero until it turns active (design.md 4), so its ``new`` is dated at the activation.
Its creation moves no MRR by itself and does not open a movement window (README, Metric definitions), as a payment
failing or recovering does not: with the activation 50 minutes later, across a month's end, the ``new`` is
the next month's."""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import Decimal

import duckdb
import pytest
from builders import World, ts
from conftest import customer_mrr_at

Derive = Callable[..., duckdb.DuckDBPyConnection]
CREATED = ts(2024, 1, 31, 23, 30)
ACTIVE = ts(2024, 2, 1, 0, 20)


def incomplete_signup(world: World, *, activated: bool = True) -> None:
    """cus_1 subscribes at CREATED (incomplete: its first invoice open), and pays at ACTIVE."""
    world.customer("cus_1")
    world.product("prod_seat", unit_label="seat")
    world.price("basic", "prod_seat", 1_000)
    sub = world.subscribe("sub_1", "cus_1", [("si_1", "basic", 1)], CREATED, event=False)
    sub["status"] = "incomplete"
    world.event("customer.subscription.created", CREATED, sub)
    (inv,) = world.objects["invoices"].values()
    inv["status"], inv["status_transitions"]["paid_at"] = "open", None
    if activated:
        inv["status"], inv["status_transitions"]["paid_at"] = "paid", ACTIVE
        world.update("sub_1", ACTIVE, status="active")
    else:
        before = copy.deepcopy(sub)
        sub.update(status="incomplete_expired", ended_at=CREATED + 23 * 3600)
        inv["status"] = "void"
        world.event("customer.subscription.updated", CREATED + 23 * 3600, sub, before)


@pytest.mark.parametrize("window", [60, 120])
def test_a_signup_paid_after_its_creation_is_new_when_it_turns_active(world: World, derive: Derive,
                                                                     window: int) -> None:
    incomplete_signup(world)
    con = derive(world, seen_at=ts(2024, 2, 10), movement_window_minutes=window)
    rows = con.execute("SELECT epoch(occurred_at), movement, mrr_delta, source_event_id FROM mrr_movements").fetchall()
    activation = [e["id"] for e in world.events if e["type"] == "customer.subscription.updated"]
    assert rows == [(ACTIVE, "new", Decimal("10.0000"), activation[0])]
    assert customer_mrr_at(con, "cus_1", CREATED + 60) == 0  # (incomplete counts zero)
    assert customer_mrr_at(con, "cus_1", ACTIVE) == Decimal("10.0000")
    bridge = con.execute("SELECT strftime(period_start, '%Y-%m'), new FROM mrr_bridge ORDER BY 1").fetchall()
    assert bridge[0] == ("2024-02", Decimal("10.0000"))


def test_a_signup_that_expires_incomplete_moves_nothing(world: World, derive: Derive) -> None:
    incomplete_signup(world, activated=False)
    con = derive(world, seen_at=ts(2024, 2, 10))
    assert con.execute("SELECT count(*) FROM mrr_movements").fetchall() == [(0,)]
    assert con.execute("SELECT count(*) FROM customer_mrr WHERE mrr <> 0").fetchall() == [(0,)]

