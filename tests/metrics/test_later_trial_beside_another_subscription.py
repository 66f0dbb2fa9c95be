"""A trial granted to one of a customer's subscriptions while another keeps paying (design.md 4: trialing counts
zero). M(B) > 0, so it is no cancellation: design.md 5's item rules label the trial's start and end as those of an
item removed and added, as the simulation's truth does (stripe_churn/sandbox/truth.py). The contract names no
label of its own for a trial of one subscription among several."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import duckdb
import pytest
from builders import DAY, World
from conftest import OneStore, customer_mrr_at
from test_mrr_rules import T0, base, month

Derive = Callable[..., duckdb.DuckDBPyConnection]

# The tests marked @one_store are each an account of one store, derived once (conftest.OneStore).
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()


@pytest.mark.parametrize("events", [True, False], ids=["events", "invoices-and-dates"])
@pytest.mark.parametrize(("family", "labels"), [
    pytest.param("support", ("downgrade", "cross_sell"), id="a-family-the-customer-keeps-no-other-item-of"),
    pytest.param("core", ("seat_contraction", "seat_expansion"), id="a-family-the-customer-keeps"),
])
@one_store
def test_a_trial_of_one_subscription_while_another_pays(world: World, derive: Derive, events: bool, family: str,
                                                        labels: tuple[str, str]) -> None:
    """cus_1 pays 50.00 on sub_1 (core seats) and 99.00 on sub_2; sub_2 is granted a month's trial. MRR is 50.00
    while it runs; its start takes sub_2's 99.00 as an item removed (a downgrade, or a seat contraction when the
    customer keeps an item of the family) and its end gives it back as one added (a cross-sell, or a seat
    expansion), with events and from the invoices and the subscription's dates."""
    base(world)
    world.product("prod_other", family=family)
    world.price("price_a", "prod_seat", 2_500)
    world.price("price_o", "prod_other", 9_900)
    world.subscribe("sub_1", "cus_1", [("si_1", "price_a", 2)], T0)
    world.subscribe("sub_2", "cus_1", [("si_2", "price_o", 1)], T0 + 5 * DAY)
    world.cycle("sub_1", month(1))
    world.cycle("sub_2", month(1, 5))
    world.update("sub_2", month(1, 10), status="trialing", trial_start=month(1, 10), trial_end=month(2, 10))
    world.invoice_for("sub_2", month(1, 10), "subscription_update", period_start=month(1, 10))  # (0.00 lines)
    world.cycle("sub_1", month(2))
    world.update("sub_2", month(2, 10), status="active")
    world.cycle("sub_2", month(2, 10))
    con = derive(world, seen_at=month(3), events=events)
    assert customer_mrr_at(con, "cus_1", month(1, 10) - 1) == Decimal("149.0000")
    assert customer_mrr_at(con, "cus_1", month(1, 10)) == Decimal("50.0000")
    assert customer_mrr_at(con, "cus_1", month(2, 10)) == Decimal("149.0000")
    rows = con.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), subscription_item_id, movement, mrr_delta "
                       "FROM mrr_movements WHERE occurred_at >= to_timestamp(?) ORDER BY occurred_at",
                       [month(1, 10)]).fetchall()
    assert rows == [(month(1, 10), "si_2", labels[0], Decimal("-99.0000")),
                    (month(2, 10), "si_2", labels[1], Decimal("99.0000"))]
    # (the simulation's own labeller gives the same; its customers never have two subscriptions at once)
    from fractions import Fraction

    from stripe_churn.sandbox.truth import Comp, parts_of

    def mrr(price_id: str, qty: int, mult: Fraction) -> Fraction:
        return Fraction(25 if price_id == "price_a" else 99) * qty * mult

    one = Comp("sub_1", "si_1", "core", "seat", "price_a", 2, Fraction(1), Fraction(50))
    two = Comp("sub_2", "si_2", family, "seat", "price_o", 1, Fraction(1), Fraction(99))
    both, alone = {"si_1": one, "si_2": two}, {"si_1": one}
    assert [p[1] for p in parts_of(both, alone, True, mrr)] == [labels[0]]
    assert [p[1] for p in parts_of(alone, both, True, mrr)] == [labels[1]]
