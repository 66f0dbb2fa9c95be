"""The typed ``quantity`` of invoice lines and invoice items: Stripe's ``quantity``, or else its
``quantity_decimal`` (the decimal string ``quantity`` is deprecated for) when that is a whole number."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from stripe_churn.metrics.runner import code_digest
from stripe_churn.store.db import open_store
from stripe_churn.store.load import Staged, create_stages, merge_stage, upsert_objects, upsert_staged

ACCT = "acct_test"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
MIGRATION = "007_plan_prices_and_decimal_quantities"

# id -> (quantity, quantity_decimal, the typed column)
CASES = {
    "quantity": (3, None, 3),
    "decimal_whole": (None, "3", 3),
    "decimal_large": (None, "174352450", 174352450),
    "decimal_zero_fraction": (None, "12.000000000000", 12),
    "decimal_zero": (None, "0", 0),
    "decimal_fractional": (None, "2.5", None),
    "decimal_tiny_fraction": (None, "0.000000000001", None),
    "decimal_not_a_number": (None, "many", None),
    "neither": (None, None, None),
    "quantity_wins": (4, "4.5", 4),
}


def line(lid: str, quantity: Any, quantity_decimal: Any) -> dict[str, Any]:
    return {"id": lid, "object": "line_item", "amount": 3000, "currency": "usd", "invoice": "in_1",
            "period": {"start": 1_767_225_600, "end": 1_769_904_000}, "quantity": quantity,
            "quantity_decimal": quantity_decimal,
            "parent": {"type": "subscription_item_details", "invoice_item_details": None,
                       "subscription_item_details": {"invoice_item": None, "proration": False,
                                                     "proration_details": {"credited_items": None},
                                                     "subscription": "sub_1", "subscription_item": "si_1"}},
            "pricing": {"type": "price_details", "price_details": {"price": "price_1", "product": "prod_1"},
                        "unit_amount_decimal": "1000"}}


def item(iid: str, quantity: Any, quantity_decimal: Any) -> dict[str, Any]:
    # (Stripe's invoiceitem fixture: quantity_decimal beside quantity)
    return {"id": iid, "object": "invoiceitem", "amount": 1000, "currency": "usd", "customer": "cus_1",
            "date": 1_767_225_600, "invoice": None, "period": {"start": 1_767_225_600, "end": 1_767_225_600},
            "proration": True, "quantity": quantity, "quantity_decimal": quantity_decimal,
            "parent": {"type": "subscription_details",
                       "subscription_details": {"subscription": "sub_1", "subscription_item": "si_1"}},
            "pricing": {"type": "price_details", "price_details": {"price": "price_1", "product": "prod_1"},
                        "unit_amount_decimal": "1000"}}


@pytest.fixture
def con(tmp_path: Path) -> Any:
    c = open_store(tmp_path / "s.duckdb")
    yield c
    c.close()


def test_quantity_on_load(con: duckdb.DuckDBPyConnection) -> None:
    upsert_objects(con, "invoice_lines", ACCT, [line(k, q, d) for k, (q, d, _) in CASES.items()], T0)
    upsert_objects(con, "invoice_items", ACCT, [item(k, q, d) for k, (q, d, _) in CASES.items()], T0)
    expected = {k: v for k, (_, _, v) in CASES.items()}
    assert dict(con.execute("SELECT id, quantity FROM invoice_lines").fetchall()) == expected
    assert dict(con.execute("SELECT id, quantity FROM invoice_items").fetchall()) == expected


def test_quantity_through_a_full_listing_stage(con: duckdb.DuckDBPyConnection) -> None:
    """A full sync's listing stages its rows before the merge: the same column."""
    create_stages(con, fresh=True)
    rows = Staged()
    rows.add(line("il_1", None, "7"), 1)
    rows.add(line("il_2", None, "7.25"), 1)
    upsert_staged(con, "invoice_lines", ACCT, rows, T0, stage_seq=1)
    merge_stage(con, "invoice_lines", ACCT)
    assert con.execute("SELECT id, quantity FROM invoice_lines ORDER BY id").fetchall() == [("il_1", 7), ("il_2", None)]


def test_a_store_from_before_the_fix_reads_its_lines_anew(tmp_path: Path) -> None:
    """An existing store's lines and items got NULL from quantity_decimal: the migration fills them from ``raw``
    (only those), also in a stage a full sync left to resume; and the metrics' code digest changes with it, so
    that the next recompute derives every customer again."""
    path = tmp_path / "s.duckdb"
    rows = [("il_dec", None, "5"), ("il_frac", None, "1.5"), ("il_int", 2, None), ("il_none", None, None)]
    with open_store(path) as con:
        upsert_objects(con, "invoice_lines", ACCT, [line(*r) for r in rows], T0)
        upsert_objects(con, "invoice_items", ACCT, [item(r[0].replace("il", "ii"), *r[1:]) for r in rows], T0)
        create_stages(con, fresh=True)
        staged = Staged()
        staged.add(line("il_staged", None, "9"), 1)
        upsert_staged(con, "invoice_lines", ACCT, staged, T0, stage_seq=1)
        # (as the load before the fix filled them; il_int's stays what it was)
        for table in ("invoice_lines", "invoice_items", "sync_stage_invoice_lines"):
            con.execute(f"UPDATE {table} SET quantity = NULL WHERE raw->>'$.quantity' IS NULL")
        con.execute("UPDATE invoice_lines SET quantity = 20 WHERE id = 'il_int'")  # left alone: not NULL
        con.execute("DELETE FROM schema_migrations WHERE name = ?", [MIGRATION])
        before = code_digest(con)
    with open_store(path) as con:
        assert con.execute("SELECT id, quantity FROM invoice_lines ORDER BY id").fetchall() == [
            ("il_dec", 5), ("il_frac", None), ("il_int", 20), ("il_none", None)]
        assert con.execute("SELECT id, quantity FROM invoice_items ORDER BY id").fetchall() == [
            ("ii_dec", 5), ("ii_frac", None), ("ii_int", 2), ("ii_none", None)]
        assert con.execute("SELECT quantity FROM sync_stage_invoice_lines").fetchall() == [(9,)]
        assert con.execute("SELECT count(*) FROM schema_migrations WHERE name = ?", [MIGRATION]).fetchone() == (1,)
        assert code_digest(con) != before
