"""The DuckDB store: migrations, bulk upserts (newest version wins), deletions, locking."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from stripe_churn.errors import StoreError, StoreLockedError
from stripe_churn.store.db import MIGRATIONS, open_store
from stripe_churn.store.load import mark_missing_children, upsert_objects
from stripe_churn.store.schema import RAW_TABLES

ACCT = "acct_test"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 2, tzinfo=UTC)


def one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    rows = con.execute(sql, params or []).fetchall()
    assert len(rows) == 1
    row = rows[0]
    return row[0] if len(row) == 1 else row


def sub(sid: str, status: str, *, customer: str = "cus_1", qty: int = 1) -> dict[str, Any]:
    return {"id": sid, "object": "subscription", "status": status, "customer": customer, "created": 1_700_000_000,
            "currency": "usd", "cancel_at_period_end": False, "start_date": 1_700_000_000,
            "items": {"object": "list", "data": [{"id": f"si_{sid}", "subscription": sid, "quantity": qty,
                                                  "price": {"id": "price_1", "product": "prod_1"}}]}}


@pytest.fixture
def con(tmp_path: Path) -> Any:
    c = open_store(tmp_path / "s.duckdb")
    yield c
    c.close()


def test_migrations_recorded_once_and_tables_have_the_contract_columns(tmp_path: Path) -> None:
    path = tmp_path / "m.duckdb"
    open_store(path).close()
    c = open_store(path)  # second open: nothing to apply
    try:
        assert [r[0] for r in c.execute("SELECT name FROM schema_migrations").fetchall()] == [m[0] for m in MIGRATIONS]
        for table in RAW_TABLES:
            cols = {r[0]: r[1] for r in c.execute(f"DESCRIBE {table}").fetchall()}
            assert {"account_id", "id", "deleted", "raw", "created", "first_seen_at", "last_seen_at"} <= set(cols)
            assert cols["raw"] == "JSON" and cols["created"] == "TIMESTAMP WITH TIME ZONE"
        assert {r[0] for r in c.execute("DESCRIBE events").fetchall()} >= {"type", "object_id"}
        assert {r[0] for r in c.execute("DESCRIBE invoice_lines").fetchall()} >= {"invoice_id"}
        assert one(c, "SELECT data_type FROM information_schema.columns WHERE table_name = 'fx_rates' "
                      "AND column_name = 'rate'") == "DECIMAL(18,8)"
    finally:
        c.close()


def test_upsert_typed_columns_and_first_seen_kept(con: duckdb.DuckDBPyConnection) -> None:
    assert upsert_objects(con, "subscriptions", ACCT, [sub("sub_1", "active")], T0) == 1
    upsert_objects(con, "subscriptions", ACCT, [sub("sub_1", "past_due")], T1)
    row = one(con, "SELECT status, customer_id, first_seen_at = ?, last_seen_at = ?, epoch(created) "
                   "FROM subscriptions", [T0, T1])
    assert row == ("past_due", "cus_1", True, True, 1_700_000_000)
    assert one(con, "SELECT count(*) FROM subscriptions") == 1


def test_unusable_field_values_give_null_columns_and_keep_the_raw_json(con: duckdb.DuckDBPyConnection) -> None:
    """Timestamps beyond DuckDB's range, non-numeric numbers and odd booleans never stop a load."""
    odd = {**sub("sub_odd", "active"), "created": "yesterday", "start_date": 10**15, "ended_at": -(10**15),
           "cancel_at_period_end": "maybe", "cancel_at": 1.5e300}
    odd["items"]["data"][0]["quantity"] = "lots"
    assert upsert_objects(con, "subscriptions", ACCT, [odd, sub("sub_ok", "active")], T0) == 2
    row = one(con, "SELECT created, start_date, ended_at, cancel_at_period_end, cancel_at FROM subscriptions "
                   "WHERE id = 'sub_odd'")
    assert row == (None, None, None, None, None)
    assert orjson.loads(one(con, "SELECT raw FROM subscriptions WHERE id = 'sub_odd'")) == odd
    upsert_objects(con, "subscription_items", ACCT, odd["items"]["data"], T0)
    assert one(con, "SELECT quantity FROM subscription_items WHERE id = 'si_sub_odd'") is None
    assert one(con, "SELECT epoch(start_date) FROM subscriptions WHERE id = 'sub_ok'") == 1_700_000_000


def test_an_older_copy_never_overwrites_a_newer_one(con: duckdb.DuckDBPyConnection) -> None:
    upsert_objects(con, "subscriptions", ACCT, [sub("sub_1", "canceled")], T1, versions=200)
    upsert_objects(con, "subscriptions", ACCT, [sub("sub_1", "active")], T1, versions=100)
    assert one(con, "SELECT status FROM subscriptions") == "canceled"
    # within one call, the highest version of an id wins whatever the order
    upsert_objects(con, "subscriptions", ACCT, [sub("sub_2", "trialing"), sub("sub_2", "active")], T1,
                   versions=[300, 250])
    assert one(con, "SELECT status FROM subscriptions WHERE id = 'sub_2'") == "trialing"


def test_deleted_stub_keeps_the_last_full_copy(con: duckdb.DuckDBPyConnection) -> None:
    cus = {"id": "cus_9", "object": "customer", "email": "a@example.com", "created": 1_700_000_000}
    upsert_objects(con, "customers", ACCT, [cus], T0, versions=10)
    upsert_objects(con, "customers", ACCT, [{"id": "cus_9", "object": "customer", "deleted": True}], T1, versions=20)
    deleted, raw, email = one(con, "SELECT deleted, raw, email FROM customers")
    assert deleted is True and orjson.loads(raw)["email"] == "a@example.com" and email == "a@example.com"
    # a *.deleted event carries the full object: flag forced, raw replaced
    upsert_objects(con, "products", ACCT, [{"id": "prod_1", "object": "product", "name": "Old"}], T0, versions=1)
    upsert_objects(con, "products", ACCT, [{"id": "prod_1", "object": "product", "name": "Last"}], T1, versions=2,
                   deleted=True)
    assert one(con, "SELECT deleted, name FROM products") == (True, "Last")


def test_children_missing_from_a_complete_list_are_flagged(con: duckdb.DuckDBPyConnection) -> None:
    items = [{"id": f"si_{i}", "object": "subscription_item", "subscription": "sub_1", "quantity": 1} for i in range(3)]
    upsert_objects(con, "subscription_items", ACCT, items, T0, versions=10)
    mark_missing_children(con, "subscription_items", "subscription_id", ACCT, [("sub_1", ["si_0", "si_2"], 20)], T1)
    assert con.execute("SELECT id FROM subscription_items WHERE deleted").fetchall() == [("si_1",)]
    # an older list does not remove a newer item
    upsert_objects(con, "subscription_items", ACCT, [{**items[1], "quantity": 5}], T1, versions=30)
    mark_missing_children(con, "subscription_items", "subscription_id", ACCT, [("sub_1", ["si_0"], 25)], T1)
    assert con.execute("SELECT id FROM subscription_items WHERE deleted ORDER BY id").fetchall() == [("si_2",)]


def test_accounts_are_kept_apart(con: duckdb.DuckDBPyConnection) -> None:
    upsert_objects(con, "subscriptions", "acct_a", [sub("sub_1", "active")], T0)
    upsert_objects(con, "subscriptions", "acct_b", [sub("sub_1", "canceled")], T0)
    assert con.execute("SELECT account_id, status FROM subscriptions ORDER BY 1").fetchall() == [
        ("acct_a", "active"), ("acct_b", "canceled")]


def test_locked_store_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "locked.duckdb"
    open_store(path).close()
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('ready', flush=True); time.sleep(30)", str(path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        started = time.monotonic()
        with pytest.raises(StoreLockedError) as info:
            open_store(path)
        assert time.monotonic() - started < 5
        assert "in use by another process" in str(info.value) and "\n" not in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    open_store(path, read_only=True).close()


def test_read_only_open_of_a_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="stripe-churn sync"):
        open_store(tmp_path / "none.duckdb", read_only=True)
