"""Fields Stripe sends only when expanded (a price's tiers and currency_options, a coupon's currency_options and
applies_to) are missing from an event's copy of the object. A later copy without them keeps the stored ones: the
copy a ``*.deleted`` event brings is a deleted price's or coupon's last full state, and its items or running
discounts still need its tiers, amounts in other currencies or products."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from stripe_churn.store.db import open_store
from stripe_churn.store.load import (
    Staged,
    create_stages,
    drop_stages,
    merge_stage,
    upsert_objects,
    upsert_staged,
)

ACCT = "acct_test"
SEEN = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def con(tmp_path: Path) -> Any:
    c = open_store(tmp_path / "s.duckdb")
    yield c
    c.close()


def coupon(**extra: Any) -> dict[str, Any]:
    return {"id": "co_1", "object": "coupon", "created": 1_700_000_000, "percent_off": 50.0, "amount_off": None,
            "currency": None, "duration": "forever", "valid": True, "metadata": {}, **extra}


def price(**extra: Any) -> dict[str, Any]:
    return {"id": "price_1", "object": "price", "created": 1_700_000_000, "active": True, "currency": "usd",
            "billing_scheme": "tiered", "tiers_mode": "graduated", "type": "recurring", "unit_amount": None,
            "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"},
            "product": "prod_1", "metadata": {}, **extra}


def raw(con: duckdb.DuckDBPyConnection, table: str) -> tuple[dict[str, Any], bool]:
    row = con.execute(f"SELECT raw, deleted FROM {table}").fetchall()
    assert len(row) == 1
    return orjson.loads(row[0][0]), row[0][1]


def test_a_deleted_coupons_event_copy_keeps_its_products(con: duckdb.DuckDBPyConnection) -> None:
    listed = coupon(applies_to={"products": ["prod_a"]}, currency_options={})
    upsert_objects(con, "coupons", ACCT, [listed], SEEN, versions=100)
    # (the coupon.deleted event's object: its last state, without the fields only an expand brings; its name
    # holds the characters JSON escapes)
    event_copy = coupon(name='50% "core" \\ only', metadata={"k": "v"})
    upsert_objects(con, "coupons", ACCT, [event_copy], SEEN, versions=200, deleted=True)
    got, deleted = raw(con, "coupons")
    assert deleted
    assert got == {**event_copy, "currency_options": {}, "applies_to": {"products": ["prod_a"]}}
    # (the stub a retrieve answers afterwards only flags the row)
    upsert_objects(con, "coupons", ACCT, [{"id": "co_1", "object": "coupon", "deleted": True}], SEEN, versions=300)
    assert raw(con, "coupons")[0]["applies_to"] == {"products": ["prod_a"]}


def test_a_copy_that_has_the_fields_replaces_them(con: duckdb.DuckDBPyConnection) -> None:
    upsert_objects(con, "coupons", ACCT, [coupon(applies_to={"products": ["prod_a"]})], SEEN, versions=100)
    upsert_objects(con, "coupons", ACCT, [coupon(applies_to=None)], SEEN, versions=200)
    assert raw(con, "coupons")[0]["applies_to"] is None
    # (nor is a stored null added to a copy without the field)
    upsert_objects(con, "coupons", ACCT, [coupon()], SEEN, versions=300)
    assert "applies_to" not in raw(con, "coupons")[0]


def test_a_deleted_prices_event_copy_keeps_its_tiers_and_currency_options(con: duckdb.DuckDBPyConnection) -> None:
    tiers = [{"up_to": 5, "unit_amount": 1000, "flat_amount": None},
             {"up_to": None, "unit_amount": 800, "flat_amount": None}]
    options = {"eur": {"unit_amount": None, "tiers": tiers, "tax_behavior": "exclusive"}}
    upsert_objects(con, "prices", ACCT, [price(tiers=tiers, currency_options=options)], SEEN, versions=100)
    upsert_objects(con, "prices", ACCT, [price(active=False, nickname="old\nplan")], SEEN, versions=200,
                   deleted=True)
    got, _ = raw(con, "prices")
    assert got == {**price(active=False, nickname="old\nplan"), "tiers": tiers, "currency_options": options}
    assert con.execute("SELECT active FROM prices").fetchall() == [(False,)]


def _options(eur_tiers: bool) -> dict[str, Any]:
    eur: dict[str, Any] = {"unit_amount": None}
    if eur_tiers:
        eur["tiers"] = [{"up_to": None, "unit_amount": 90, "flat_amount": None}]
    return {"usd": {"unit_amount": None}, "eur": eur}


@pytest.mark.parametrize("through", ["upsert", "listing-merge"])
def test_a_prices_options_without_tiers_column_follows_the_options_kept(con: duckdb.DuckDBPyConnection,
                                                                        through: str) -> None:
    """``prices.options_without_tiers`` says whether an option in another currency than the price's own lacks its
    tiers (the sync finds such prices by it, without reading every tiered price's JSON): a copy without
    currency_options (an event's) keeps the stored options, and the column with them; a copy with them sets it."""
    upsert_objects(con, "prices", ACCT, [price(currency_options=_options(False)), {**price(), "id": "price_2",
                   "currency_options": _options(True)}], SEEN, versions=100)

    def write(copies: list[dict[str, Any]], version: int) -> None:
        if through == "upsert":
            upsert_objects(con, "prices", ACCT, copies, SEEN, versions=version)
            return
        create_stages(con, fresh=True)
        rows = Staged()
        for c in copies:
            rows.add(c, version)
        upsert_staged(con, "prices", ACCT, rows, SEEN, stage_seq=1)
        merge_stage(con, "prices", ACCT)
        drop_stages(con)

    def column() -> list[tuple[str, bool, bool]]:
        return con.execute("SELECT id, options_without_tiers, raw->>'$.currency_options.eur.tiers' IS NULL "
                           "FROM prices ORDER BY id").fetchall()

    assert column() == [("price_1", True, True), ("price_2", False, False)]
    write([price(metadata={"k": "v"}), {**price(metadata={"k": "v"}), "id": "price_2"}], 200)  # (events' copies)
    assert column() == [("price_1", True, True), ("price_2", False, False)]
    write([price(currency_options=_options(True)), {**price(), "id": "price_2", "currency_options": _options(False)}],
          300)
    assert column() == [("price_1", False, False), ("price_2", True, True)]
