"""A licensed price billed through one of its currency options: Stripe charges the option's amount in the
subscription's currency (a tiered price's option has tiers of its own), so the item's MRR is that amount in that
currency, normalised by that currency's minor unit (design.md 4: every amount in its own currency, converted with
``fx_rates``), and seat and plan changes split at it. The metered twin is in test_metered_currency.py."""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from builders import World, ts
from conftest import OneStore, customer_mrr_at, item_rows
from test_bridge import SEEN, book
from test_incremental import assert_incremental_equals_full, later_sync
from test_mrr_rules import T0, base, month

Derive = Callable[..., duckdb.DuckDBPyConnection]

# The tests marked @one_store are each an account of one store, derived once (conftest.OneStore).
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()


def tiers(*rows: tuple[int | None, int, int | None]) -> list[dict[str, Any]]:
    """Tiers as Stripe lists them, from (up_to, unit_amount, flat_amount) rows."""
    return [{"up_to": up_to, "unit_amount": unit, "unit_amount_decimal": str(unit),
             "flat_amount": flat, "flat_amount_decimal": None if flat is None else str(flat)}
            for up_to, unit, flat in rows]


def option(option_tiers: list[dict[str, Any]] | None = None, unit_amount: int | None = None) -> dict[str, Any]:
    """A currency option as an expanded price shows it: a tiered price's has tiers and no unit amount."""
    opt: dict[str, Any] = {"custom_unit_amount": None, "tax_behavior": "exclusive", "unit_amount": unit_amount,
                           "unit_amount_decimal": None if unit_amount is None else str(unit_amount)}
    if option_tiers is not None:
        opt["tiers"] = option_tiers
    return opt


def tiered_price(w: World, pid: str, mode: str, own: list[dict[str, Any]], currency: str,
                 other: list[dict[str, Any]], product: str = "prod_seat") -> dict[str, Any]:
    """A dollar tiered price (``own`` tiers) with an amount in ``currency`` of its own tiers (``other``); its
    currency_options list the dollar terms too, as Stripe's do."""
    p = w.price(pid, product, None, tiers=own, tiers_mode=mode)
    p["currency_options"] = {"usd": option(p["tiers"]), currency: option(other)}
    return p


# (the option's tiers are cheaper than the dollar ones and differ in shape, so an item valued at the dollar tiers,
# or at the option's tiers in dollars, gives other figures)
USD = tiers((5, 1_000, None), (10, 800, None), (None, 500, 700))
USD_PLUS = tiers((5, 2_000, None), (None, 1_500, None))
CASES = [
    # graduated, euros: 12 seats are 5 x 9.00 + 5 x 7.00 + 2 x 4.00 + 6.00 = 94.00 (107.00 at the dollar tiers);
    # 15 are 106.00; the dearer plan at 15 seats 5 x 18.00 + 10 x 13.00 = 220.00, at 20 seats 285.00
    pytest.param("eur", "graduated", tiers((5, 900, None), (10, 700, None), (None, 400, 600)),
                 tiers((5, 1_800, None), (None, 1_300, None)), 1.10,
                 [Decimal("94"), Decimal("106"), Decimal("285")], Decimal("103.4000"),
                 [("new", Decimal("94.0000")), ("seat_expansion", Decimal("12.0000")),
                  ("seat_expansion", Decimal("65.0000")), ("upgrade", Decimal("114.0000"))], id="graduated-eur"),
    # volume, yen (zero-decimal: 1,200 yen a seat are 1,200 major units): 12 seats 14,400 yen, 15 seats 18,000;
    # the dearer plan at 15 seats 15 x 2,000 = 30,000, at 20 seats 40,000
    pytest.param("jpy", "volume", tiers((5, 1_500, 200), (None, 1_200, None)),
                 tiers((10, 2_500, None), (None, 2_000, None)), 0.0067,
                 [Decimal("14400"), Decimal("18000"), Decimal("40000")], Decimal("96.4800"),
                 [("new", Decimal("14400.0000")), ("seat_expansion", Decimal("3600.0000")),
                  ("seat_expansion", Decimal("10000.0000")), ("upgrade", Decimal("12000.0000"))],
                 id="volume-zero-decimal-jpy"),
]


@pytest.mark.parametrize(("currency", "mode", "option_tiers", "option_tiers_plus", "rate", "mrr_original",
                          "first_mrr", "moves"), CASES)
def test_a_licensed_tiered_price_billed_through_a_currency_option_counts_the_options_tiers(
        world: World, derive: Derive, currency: str, mode: str, option_tiers: list[dict[str, Any]],
        option_tiers_plus: list[dict[str, Any]], rate: float, mrr_original: list[Decimal], first_mrr: Decimal,
        moves: list[tuple[str, Decimal]]) -> None:
    """A dollar tiered price with its own tiers in the subscription's currency: the item is in that currency at
    the option's tiers, seat and plan changes split at them (the plan change of both price and quantity prices
    the new plan at the old quantity through its option), and no currency_mismatch row."""
    base(world, currency=currency)
    tiered_price(world, "team", mode, USD, currency, option_tiers)
    tiered_price(world, "team_plus", mode, USD_PLUS, currency, option_tiers_plus)
    world.fx_rates.append(("2023-12-01", currency, rate))
    world.subscribe("sub_1", "cus_1", [("si_1", "team", 12)], T0)
    world.update("sub_1", month(1, 10), items=[("si_1", "team", 15)])
    world.update("sub_1", month(2, 10), items=[("si_1", "team_plus", 20)])
    con = derive(world, seen_at=month(2, 20))
    assert [(r["currency"], r["mrr_original"]) for r in item_rows(con, "si_1")] == [
        (currency, m) for m in mrr_original]
    assert customer_mrr_at(con, "cus_1", T0 + 1) == first_mrr
    found = con.execute("SELECT movement, currency, amount_delta_original FROM mrr_movements "
                        "ORDER BY occurred_at, movement").fetchall()
    assert found == [(m, currency, d) for m, d in moves], found
    # (the macro the classifier uses for a price billed in a currency gives the option's amount too)
    in_cur = con.execute("SELECT price_mrr_in('acct_test', 'team', ?, 12)", [currency]).fetchone()
    assert in_cur is not None and in_cur[0] == mrr_original[0]
    assert con.execute("SELECT kind, object_id FROM data_quality WHERE kind = 'currency_mismatch'").fetchall() == []


@pytest.mark.parametrize(("terms", "yen", "mrr_original"), [
    pytest.param({}, 1_100, Decimal("13200"), id="per-unit"),
    # (12 units in packs of 5, rounded up: 3 packs)
    pytest.param({"transform_quantity": {"divide_by": 5, "round": "up"}}, 1_100, Decimal("3300"),
                 id="transform-quantity-up"),
    pytest.param({"transform_quantity": {"divide_by": 5, "round": "down"}}, 1_100, Decimal("2200"),
                 id="transform-quantity-down"),
])
@one_store
def test_a_per_unit_price_billed_through_a_zero_decimal_currency_option(
        world: World, derive: Derive, terms: dict[str, Any], yen: int, mrr_original: Decimal) -> None:
    """A dollar per-unit price with a yen amount: 1,100 yen a unit are 1,100 major units (not 11), and the price's
    transform_quantity divides the quantity before the option's amount prices it."""
    base(world, currency="jpy")
    world.price("seat", "prod_seat", 1_000, **terms)["currency_options"] = {
        "usd": option(unit_amount=1_000), "jpy": option(unit_amount=yen)}
    world.fx_rates.append(("2023-12-01", "jpy", 0.0067))
    world.subscribe("sub_1", "cus_1", [("si_1", "seat", 12)], T0)
    con = derive(world, seen_at=month(1))
    assert [(r["currency"], r["mrr_original"]) for r in item_rows(con, "si_1")] == [("jpy", mrr_original)]
    assert customer_mrr_at(con, "cus_1", T0 + 1) == (mrr_original * Decimal("0.0067")).quantize(Decimal("0.0001"))
    assert con.execute("SELECT count(*) FROM data_quality WHERE kind = 'currency_mismatch'").fetchall() == [(0,)]


def test_a_tiered_option_listed_without_its_tiers_stays_a_currency_mismatch(world: World, derive: Derive) -> None:
    """An option whose tiers the copy lacks (Stripe sends them only when expanded) says nothing of the amount in
    that currency: the item keeps its price's own currency and tiers, and data_quality says its tiers there are
    missing."""
    base(world, currency="eur")
    p = world.price("team", "prod_seat", None, tiers=USD, tiers_mode="graduated")
    p["currency_options"] = {"usd": option(p["tiers"]), "eur": option()}
    world.fx_rates.append(("2023-12-01", "eur", 1.10))
    world.subscribe("sub_1", "cus_1", [("si_1", "team", 12)], T0)
    con = derive(world, seen_at=month(1))
    assert [(r["currency"], r["mrr_original"]) for r in item_rows(con, "si_1")] == [("usd", Decimal("107"))]
    [(item, detail)] = con.execute(
        "SELECT object_id, detail FROM data_quality WHERE kind = 'currency_mismatch'").fetchall()
    assert item == "si_1" and "no tiers in eur" in detail and "unit amount" not in detail, detail


@pytest.mark.parametrize("shards", [1, 2])
def test_an_options_tiers_changed_derive_the_whole_account_again(world: World, tmp_path: Path, shards: int) -> None:
    """Only the euro tiers of a dollar price the store had changed (its own terms as they were): every customer
    billed in euros at it may change, so the whole account is derived again, and every derived table equals a
    full recompute's, the item at the new euro tiers."""
    w = book(world)
    tiered_price(w, "team_usd", "graduated", USD, "eur", tiers((5, 900, None), (None, 700, None)),
                 product="prod_core")
    w.customer("cus_t", currency="eur")
    w.subscribe("sub_t", "cus_t", [("si_t1", "team_usd", 12)], ts(2024, 2, 1))
    before = copy.deepcopy(w)
    # (12 seats: 5 x 9.00 + 7 x 7.00 = 94.00 EUR before, 5 x 9.00 + 7 x 6.00 = 87.00 EUR after)
    w.objects["prices"]["team_usd"]["currency_options"]["eur"]["tiers"] = tiers((5, 900, None), (None, 600, None))
    w.cycle("sub_a", ts(2024, 5, 10), usage={"si_a3": 20_000})
    changed = later_sync(w, {"cus_a"}, {"sub_a"}, ts(2024, 5, 10))
    n, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 6, 2), shards)
    assert n == len(w.objects["customers"])
    item = [r for r in full["derived_item_mrr"] if "'si_t1'" in r]
    assert len(item) == 1 and "'eur', Decimal('87.0000000000')" in item[0], item


def test_a_tiered_price_without_tiers_of_its_own_is_missing_its_terms_whatever_its_options(
        world: World, derive: Derive) -> None:
    """A dollar tiered price stored without its own tiers but with an option's (a copy fetched without expanding
    ``tiers``): its dollar items count zero, and data_quality names the price as missing its terms; the message
    of an item billed in a currency whose option lacks its tiers says so."""
    base(world, currency="usd")
    p = world.price("team", "prod_seat", None, tiers=USD, tiers_mode="graduated")
    p["currency_options"] = {"usd": option(), "eur": option(tiers((None, 900, None)))}
    del p["tiers"]
    world.subscribe("sub_1", "cus_1", [("si_1", "team", 12)], T0)
    con = derive(world, seen_at=month(1))
    assert con.execute("SELECT object_id FROM data_quality WHERE kind = 'missing_price_terms'").fetchall() == [
        ("team",)]

