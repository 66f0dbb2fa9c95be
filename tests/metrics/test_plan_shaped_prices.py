"""A price row whose raw JSON is a legacy ``plan`` (what a ``plan.*`` event carries; a ``plan.deleted`` event's
object stays when the refresh answers with a deleted stub) reads as the recurring price it is: the same terms,
MRR and movements as the price-shaped row, and the same typed columns in the store."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from builders import DAY, World, add_months, ts
from conftest import OneStore, customer_mrr_at, make_settings
from test_mrr_rules import PRICE_CASES

from stripe_churn.metrics.runner import recompute
from stripe_churn.store.db import open_store
from stripe_churn.store.load import upsert_objects

T0 = ts(2025, 1, 1)
PLAN_MIGRATION = "007_plan_prices_and_decimal_quantities"
Derive = Callable[..., duckdb.DuckDBPyConnection]

# The tests marked @one_store are each an account of one store (and its "-plan" account), derived once
# (conftest.OneStore).
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()


def month(n: int, day: int = 0) -> int:
    return add_months(T0, n) + day * DAY


def plan_of(price: dict[str, Any]) -> dict[str, Any]:
    """The legacy ``plan`` object of a recurring price, as Stripe sends it (fixtures: ``plan``)."""
    rec = price["recurring"]
    plan = {"id": price["id"], "object": "plan", "active": price["active"], "aggregate_usage": None,
            "amount": price["unit_amount"], "amount_decimal": price["unit_amount_decimal"],
            "billing_scheme": price["billing_scheme"], "created": price["created"], "currency": price["currency"],
            "interval": rec["interval"], "interval_count": rec["interval_count"], "livemode": False, "metadata": {},
            "meter": None, "nickname": None, "product": price["product"], "tiers_mode": price["tiers_mode"],
            "transform_usage": price["transform_quantity"], "trial_period_days": None,
            "usage_type": rec["usage_type"]}
    if "tiers" in price:
        plan["tiers"] = copy.deepcopy(price["tiers"])
    return plan


def load_with(con: duckdb.DuckDBPyConnection, w: World, *, seen_at: int, events: bool,
              replace: dict[str, dict[str, Any]], deleted: bool) -> None:
    """Load ``w`` into ``con`` and write the price rows ``replace`` (id -> object) over the listed ones a day after
    ``seen_at`` (``deleted``: as a ``*.deleted`` event's object, then a deleted stub)."""
    w.load(con, seen_at=seen_at, events=events)
    later = datetime.fromtimestamp(seen_at + DAY, tz=UTC)
    for obj in replace.values():
        upsert_objects(con, "prices", w.account_id, [obj], later, deleted=deleted)
        if deleted:
            upsert_objects(con, "prices", w.account_id, [{"id": obj["id"], "object": obj["object"], "deleted": True}],
                           later)


def derive_shape(tmp_path: Path, template: Path, w: World, *, name: str, seen_at: int, events: bool,
                 replace: dict[str, dict[str, Any]], deleted: bool) -> duckdb.DuckDBPyConnection:
    """A store of ``w`` recomputed after :func:`load_with`."""
    shutil.copyfile(template, tmp_path / f"{name}.duckdb")
    con = open_store(tmp_path / f"{name}.duckdb")
    load_with(con, w, seen_at=seen_at, events=events, replace=replace, deleted=deleted)
    recompute(con, make_settings())
    return con


def outputs(con: duckdb.DuckDBPyConnection, account: str | None = None) -> dict[str, list[Any]]:
    """The derived rows compared between the shapes; of one ``account`` when the store holds several."""
    def rows(sql: str) -> list[Any]:
        return con.execute(sql.format(acct="account_id = coalesce(?, account_id)"), [account]).fetchall()

    return {
        "terms": rows(
            "SELECT price_id, product_id, currency, price_type, billing_scheme, tiers_mode, unit_amount_p, divide_by, "
            "round_mode, billing_interval, interval_count, usage_type, norm_num, norm_den, family, unit_kind "
            "FROM derived_price_terms WHERE {acct} ORDER BY price_id"),
        "tiers": rows("SELECT price_id, tier_no, up_to, unit_p, flat_p, lower_bound FROM derived_price_tiers "
                      "WHERE {acct} ORDER BY price_id, tier_no"),
        "customer_mrr": rows("SELECT customer_id, valid_from, valid_to, mrr FROM customer_mrr WHERE {acct} "
                             "ORDER BY customer_id, valid_from"),
        "items": rows("SELECT subscription_item_id, valid_from, valid_to, price_id, quantity, mrr_original "
                      "FROM derived_item_mrr WHERE {acct} ORDER BY subscription_item_id, valid_from"),
        "movements": rows("SELECT customer_id, occurred_at, movement, mrr_delta FROM mrr_movements WHERE {acct} "
                          "ORDER BY customer_id, occurred_at, movement"),
        "data_quality": rows("SELECT kind, object_id FROM data_quality WHERE {acct} ORDER BY ALL"),
    }


# --- a deleted plan behind history ---------------------------------------------------------------------

def moved_off_basic() -> World:
    """Two seats billed on "basic" (10.00) before the events kept, moved to "pro" (25.00) after two months."""
    w = World()
    w.product("prod_seat", unit_label="seat", family="core")
    w.price("basic", "prod_seat", 1_000)
    w.price("pro", "prod_seat", 2_500)
    w.customer("cus_1")
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 2)], T0, event=False)
    w.cycle("sub_1", month(1))
    w.update("sub_1", month(2), items=[("si_1", "pro", 2)], prorate=False, event=False)
    w.cycle("sub_1", month(2))
    w.cycle("sub_1", month(3))
    return w


def test_a_deleted_plan_keeps_the_history_billed_at_it(tmp_path: Path, migrated_store_file: Path) -> None:
    """The item was billed at the plan for two months before it moved; the plan, deleted since, is stored in its
    plan shape: those months count at its amount, and the movements are those of the price-shaped row."""
    runs = {}
    for shape in ("price", "plan"):
        w = moved_off_basic()
        basic = w.objects["prices"]["basic"]
        replace = {"basic": plan_of(basic) if shape == "plan" else basic}
        runs[shape] = outputs(derive_shape(tmp_path, migrated_store_file, w, name=shape, seen_at=month(3, 1),
                                           events=False, replace=replace, deleted=True))
    plan, price = runs["plan"], runs["price"]
    assert plan == price
    assert [(row[1], row[2], row[3]) for row in plan["movements"]] == [
        (datetime.fromtimestamp(T0, tz=UTC), "new", Decimal("20.0000")),
        (datetime.fromtimestamp(month(2), tz=UTC), "upgrade", Decimal("30.0000"))]
    basic = next(t for t in plan["terms"] if t[0] == "basic")
    assert basic[3] == "recurring" and basic[9] == "month" and basic[6] == 1_000 * 10**12


# --- a plan-shaped row's terms --------------------------------------------------------------------------

# (the price terms of every rule of design.md 4, test_mrr_rules.py's, and a plan with only amount_decimal)
PLAN_CASES = [
    *PRICE_CASES,
    pytest.param({"unit_amount_decimal": "1250.5"}, 2, Decimal("25.0100"), id="amount-decimal-only"),
]


def plan_case(w: World, shape: str, terms: dict[str, Any], quantity: int) -> dict[str, dict[str, Any]]:
    """A case's account ``w``: ``quantity`` seats at the price of ``terms``, one more a month and ten days later.
    Returns the row kept for the price in ``shape`` ("price" or "plan")."""
    terms = dict(terms)  # (the cases are shared with test_mrr_rules.py)
    decimal = terms.pop("unit_amount_decimal", None)
    w.product("prod_seat", unit_label="seat", family="core")
    w.customer("cus_1")
    price = w.price("price_x", "prod_seat", **terms)
    if decimal is not None:
        price.update(unit_amount=None, unit_amount_decimal=decimal)
    w.subscribe("sub_1", "cus_1", [("si_1", "price_x", quantity)], T0)
    w.update("sub_1", month(1, 10), items=[("si_1", "price_x", quantity + 1)])
    return {"price_x": plan_of(price) if shape == "plan" else price}


@pytest.mark.parametrize(("terms", "quantity", "expected"), PLAN_CASES)
@one_store
def test_a_plan_shaped_row_prices_as_the_price(world: World, derive: Derive, terms: dict[str, Any], quantity: int,
                                               expected: Decimal) -> None:
    """The row kept for the price (not deleted: a ``plan.updated`` event's object) is plan-shaped: it wins over the
    price embedded in the item, and gives the price's terms, MRR and movements."""
    shapes = {"price": world, "plan": World(account_id=f"{world.account_id}-plan")}
    rows = {w.account_id: plan_case(w, shape, terms, quantity) for shape, w in shapes.items()}
    con = derive(*shapes.values(), seen_at=month(2),
                 load=lambda w, c, **at: load_with(c, w, replace=rows[w.account_id], deleted=False, **at))
    case = world.account_id
    runs = {}
    for shape, w in shapes.items():
        account = w.account_id
        runs[shape] = outputs(con, account)
        assert runs[shape]["items"] and runs[shape]["terms"], f"{account}: no rows derived"
        got = customer_mrr_at(con, "cus_1", month(0, 1), account)
        assert got == expected, f"{account}: MRR {got}, expected {expected}"
        macro = con.execute("SELECT price_mrr(?, 'price_x', ?)", [account, quantity]).fetchone()
        assert macro is not None and round(macro[0], 4) == expected, f"{account}: price_mrr {macro}"
    assert runs["plan"] == runs["price"], case


def test_a_metered_plan_counts_its_usage(tmp_path: Path, migrated_store_file: Path) -> None:
    """A metered plan (usage_type at the top level) is read as metered: MRR from the last full period's usage."""
    runs = {}
    for shape in ("price", "plan"):
        w = World()
        w.product("prod_api", unit_label="api call", family="api")
        w.customer("cus_1")
        price = w.price("price_m", "prod_api", None, usage_type="metered")
        w.subscribe("sub_1", "cus_1", [("si_m", "price_m", None)], T0)
        w.cycle("sub_1", month(1), usage={"si_m": 5_000})
        w.cycle("sub_1", month(2), usage={"si_m": 7_250})
        con = derive_shape(tmp_path, migrated_store_file, w, name=shape, seen_at=month(2, 3), events=True,
                           replace={"price_m": plan_of(price) if shape == "plan" else price}, deleted=False)
        runs[shape] = outputs(con)
        assert customer_mrr_at(con, "cus_1", month(2)) == Decimal("72.5000")
    assert runs["plan"] == runs["price"]


# --- the store's typed columns -------------------------------------------------------------------------

PLAN = {"id": "price_1PgafmB7WZ01zgkW6dKueIc5", "object": "plan", "active": True, "amount": 2000,
        "amount_decimal": "2000", "billing_scheme": "per_unit", "created": 1234567890, "currency": "usd",
        "interval": "month", "interval_count": 1, "livemode": False, "metadata": {}, "meter": None,
        "nickname": None, "product": "prod_QXg1hqf4jFNsqG", "tiers_mode": None,
        "transform_usage": {"divide_by": 1592560163, "round": "down"}, "trial_period_days": None,
        "usage_type": "licensed"}
TYPED = ("SELECT product_id, active, currency, type, unit_amount, recurring_interval, recurring_interval_count, "
         "usage_type FROM prices WHERE id = ?")
PLAN_TYPED = ("prod_QXg1hqf4jFNsqG", True, "usd", "recurring", 2000, "month", 1, "licensed")


def test_typed_columns_of_a_plan_shaped_row(tmp_path: Path) -> None:
    with open_store(tmp_path / "s.duckdb") as con:
        upsert_objects(con, "prices", "acct_1", [PLAN], datetime(2026, 1, 1, tzinfo=UTC))
        assert con.execute(TYPED, [PLAN["id"]]).fetchone() == PLAN_TYPED


def test_a_store_from_before_the_fix_reads_its_plan_rows_anew(tmp_path: Path) -> None:
    """The migration fills the typed columns of the plan-shaped rows kept (a price-shaped row is left alone)."""
    path = tmp_path / "s.duckdb"
    price = {"id": "price_2", "object": "price", "active": True, "currency": "eur", "type": "recurring",
             "unit_amount": 900, "recurring": {"interval": "year", "interval_count": 2, "usage_type": "licensed"},
             "product": "prod_2", "created": 1234567890}
    with open_store(path) as con:
        upsert_objects(con, "prices", "acct_1", [PLAN, price], datetime(2026, 1, 1, tzinfo=UTC))
        # (as the load before the fix filled them)
        con.execute("UPDATE prices SET type = NULL, unit_amount = NULL, recurring_interval = NULL, "
                    "recurring_interval_count = NULL, usage_type = NULL WHERE id = ?", [PLAN["id"]])
        con.execute("DELETE FROM schema_migrations WHERE name = ?", [PLAN_MIGRATION])
    with open_store(path) as con:
        assert con.execute(TYPED, [PLAN["id"]]).fetchone() == PLAN_TYPED
        assert con.execute(TYPED, ["price_2"]).fetchone() == ("prod_2", True, "eur", "recurring", 900, "year", 2,
                                                              "licensed")
        assert con.execute("SELECT count(*) FROM schema_migrations WHERE name = ?", [PLAN_MIGRATION]).fetchone() == (1,)
