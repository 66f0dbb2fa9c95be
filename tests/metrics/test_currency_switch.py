"""A customer who moves from a plan in one currency to a plan in another (Stripe's multi-currency customers: the
subscription in the old currency is canceled and one in the new currency created, since a customer cannot keep two
active subscriptions in different currencies). design.md 5 pairs a removed and an added item of the same product
family as a plan switch, with no word on currencies: within the movement window the switch is an `upgrade` or a
`downgrade` by the change in the reporting currency, split into plan and quantity parts like any switch, not a
contraction of one item and an expansion of another. Each case is one customer of one store, worked out by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from builders import World, ts
from test_classifier import MINUTE, check_invariants, movements
from test_classifier_hunt import shared_store

D = Decimal
SWITCH = ts(2024, 4, 10, 15)
RATES = [("2023-12-01", "eur", 1.10), ("2024-04-11", "eur", 1.20)]  # EUR in USD: 1.10, from 11 April 1.20


def switched(w: World, cid: str, old: tuple[str, int], new: tuple[str, int], at: int, gap_minutes: int) -> None:
    """``cid`` on ``old`` (USD price, quantity) from January; at ``at`` its subscription is canceled and
    ``gap_minutes`` later one on ``new`` (EUR price, quantity) begins."""
    w.customer(cid)
    w.subscribe(f"{cid}_usd", cid, [(f"{cid}_i1", *old)], ts(2024, 1, 5))
    w.cancel(f"{cid}_usd", at)
    w.objects["customers"][cid]["currency"] = "eur"
    w.subscribe(f"{cid}_eur", cid, [(f"{cid}_i2", *new)], at + gap_minutes * MINUTE)


@pytest.fixture(scope="module")
def con(tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    w = World()
    w.product("prod_core", unit_label="seat", family="core")
    w.product("prod_other", unit_label="seat", family="other")
    w.price("pro_usd", "prod_core", 2_000)
    w.price("pro_eur", "prod_core", 2_000, currency="eur")
    w.price("basic_eur", "prod_core", 1_000, currency="eur")
    w.price("other_eur", "prod_other", 2_000, currency="eur")
    w.fx_rates += RATES
    switched(w, "same_plan", ("pro_usd", 2), ("pro_eur", 2), SWITCH, 10)
    switched(w, "cheaper_more_seats", ("pro_usd", 2), ("basic_eur", 5), SWITCH, 10)
    switched(w, "fewer_seats", ("pro_usd", 3), ("pro_eur", 2), SWITCH, 10)
    switched(w, "apart", ("pro_usd", 2), ("pro_eur", 2), SWITCH, 120)
    switched(w, "other_family", ("pro_usd", 2), ("other_eur", 2), SWITCH, 10)
    # (23:50 on 10 April to 00:10 on 11 April: the window takes in the rate's move from 1.10 to 1.20)
    switched(w, "over_midnight", ("pro_usd", 2), ("pro_eur", 2), ts(2024, 4, 10, 23, 50), 20)
    yield from shared_store(tmp_path_factory, migrated_store_file, w, seen_at=ts(2024, 6, 1))


def switch_rows(con: duckdb.DuckDBPyConnection, cid: str) -> list[tuple[object, ...]]:
    """The customer's rows of the switch (after its first `new`, before the rate's move on 11 April, which is an
    fx row of every euro customer): (movement, category, delta, item, currency, amount in that currency, whether
    it names an event)."""
    got = movements(con, cid)
    assert got[0][1:4] == ("new", "new", D("40.0000") if cid != "fewer_seats" else D("60.0000")), got
    check_invariants(con, cid)
    extra = con.execute("SELECT movement, currency, amount_delta_original, source_event_id IS NOT NULL "
                        "FROM mrr_movements WHERE customer_id = ? "
                        "ORDER BY occurred_at, movement, subscription_item_id", [cid]).fetchall()
    return [(*r[1:4], r[4], *x[1:]) for r, x in zip(got, extra, strict=True)
            if r[1] != "new" and r[0] < ts(2024, 4, 11)]


def test_the_same_plan_in_another_currency_is_an_upgrade_by_its_value_in_the_reporting_currency(
        con: duckdb.DuckDBPyConnection) -> None:
    """2 x 20.00 USD = 40.00, then 2 x 20.00 EUR = 44.00 USD at 1.10: one upgrade of 4.00 (3.6364 EUR: 40 EUR less
    the 36.3636 EUR the old plan was worth), dated at the cancellation, on the new item. Before, the removed and the
    added item were not paired (other currencies): seat_contraction -40.00 and seat_expansion +44.00."""
    assert switch_rows(con, "same_plan") == [
        ("upgrade", "expansion", D("4.0000"), "same_plan_i2", "eur", D("3.6364"), True)]
    assert movements(con, "same_plan")[1][0] == SWITCH


def test_a_switch_across_currencies_splits_into_plan_and_seats(con: duckdb.DuckDBPyConnection) -> None:
    """2 x 20.00 USD (40.00) to 5 x 10.00 EUR (50 EUR = 55.00 USD): plan part MRR(new price, old quantity) - MRR(old)
    = 2 x 10 EUR (22.00) - 40.00 = -18.00, a downgrade; seat part 55.00 - 22.00 = +33.00. They add up to +15.00."""
    assert switch_rows(con, "cheaper_more_seats") == [
        ("downgrade", "contraction", D("-18.0000"), "cheaper_more_seats_i2", "eur", D("-16.3636"), True),
        ("seat_expansion", "expansion", D("33.0000"), "cheaper_more_seats_i2", "eur", D("30.0000"), True)]


def test_fewer_seats_on_the_same_plan_in_another_currency(con: duckdb.DuckDBPyConnection) -> None:
    """3 x 20.00 USD (60.00) to 2 x 20.00 EUR (44.00 USD): plan part 3 x 20 EUR (66.00) - 60.00 = +6.00, an
    upgrade; seat part 44.00 - 66.00 = -22.00. Together -16.00."""
    assert switch_rows(con, "fewer_seats") == [
        ("seat_contraction", "contraction", D("-22.0000"), "fewer_seats_i2", "eur", D("-20.0000"), True),
        ("upgrade", "expansion", D("6.0000"), "fewer_seats_i2", "eur", D("5.4545"), True)]


def test_a_switch_wider_than_the_window_is_a_cancellation_and_a_reactivation(con: duckdb.DuckDBPyConnection) -> None:
    """Two hours apart (the window is 60 minutes): the customer leaves (-40.00 USD) and comes back (+44.00)."""
    assert switch_rows(con, "apart") == [
        ("cancellation", "churn", D("-40.0000"), "apart_i1", "usd", D("-40.0000"), True),
        ("reactivation", "reactivation", D("44.0000"), "apart_i2", "eur", D("40.0000"), True)]


def test_a_plan_of_another_family_in_another_currency_stays_unpaired(con: duckdb.DuckDBPyConnection) -> None:
    """A family the customer did not have is a cross_sell, and the family it left a downgrade, whatever the
    currencies (design.md 5's table)."""
    assert switch_rows(con, "other_family") == [
        ("cross_sell", "expansion", D("44.0000"), "other_family_i2", "eur", D("40.0000"), True),
        ("downgrade", "contraction", D("-40.0000"), "other_family_i1", "usd", D("-40.0000"), True)]


def test_a_switch_across_currencies_over_a_rate_change_keeps_the_rate_move_apart(
        con: duckdb.DuckDBPyConnection) -> None:
    """23:50 to 00:10 over the rate's move from 1.10 to 1.20: the EUR plan begins at 00:10, after the move, so it is
    valued at 1.20 (40 EUR = 48.00): one upgrade of 48.00 - 40.00 = +8.00 (6.6667 EUR: 40 EUR less the 40.00 USD
    plan at 1.20, 33.3333 EUR). Nothing in EUR was held when the rate moved, so there is no fx line (the USD plan's
    rate does not move). (Before, the switch was valued at the rates before the window, +4.00, and the rate's move
    on the new plan, 40 EUR x 0.10 = 4.00, was called fx though the customer held no EUR then.)"""
    assert switch_rows(con, "over_midnight") == [
        ("upgrade", "expansion", D("8.0000"), "over_midnight_i2", "eur", D("6.6667"), True)]
