"""The DuckDB store: migrations, bulk upserts (newest version wins), deletions, locking."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from stripe_churn.errors import StoreError, StoreLockedError
from stripe_churn.store import load
from stripe_churn.store.db import MIGRATIONS, migrate, open_store
from stripe_churn.store.load import (
    Staged,
    create_stages,
    insert_staged,
    mark_missing_children,
    mark_unlisted_children,
    mark_unlisted_discounts,
    merge_stage,
    stage_seq,
    upsert_objects,
    upsert_staged,
)
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


def test_a_store_from_before_metrics_runs_gains_the_table(tmp_path: Path) -> None:
    """005_metrics_runs on a store made before it: the table is added, empty, and a fresh store's is kept."""
    path = tmp_path / "m.duckdb"
    open_store(path).close()
    c = duckdb.connect(str(path))
    c.execute("DROP TABLE metrics_runs")
    c.execute("DELETE FROM schema_migrations WHERE name = '005_metrics_runs'")
    c.close()
    c = open_store(path)
    try:
        assert one(c, "SELECT count(*) FROM metrics_runs") == 0
        assert [r[0] for r in c.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'metrics_runs' "
                                        "ORDER BY column_index").fetchall()] == [
            "started_at", "finished_at", "mode", "customers", "reason", "code_digest", "fx_digest"]
        assert one(c, "SELECT count(*) FROM schema_migrations WHERE name = '005_metrics_runs'") == 1
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


def test_of_lists_in_the_same_second_the_later_one_counts(con: duckdb.DuckDBPyConnection) -> None:
    """A subscription created with one item and updated to two in the same second (an API create and an update at
    once; Stripe's `created` is whole seconds): the events' lists and the refreshed copy's carry one version. The
    earlier list used to mark the item added after it deleted, until the subscription's next event."""
    items = [{"id": f"si_{c}", "object": "subscription_item", "subscription": "sub_1", "quantity": 1} for c in "ab"]
    upsert_objects(con, "subscription_items", ACCT, items, T0, versions=40)
    lists = [("sub_1", ["si_a"], 40), ("sub_1", ["si_a", "si_b"], 40), ("sub_1", ["si_a", "si_b"], 40)]
    mark_missing_children(con, "subscription_items", "subscription_id", ACCT, lists, T1)
    assert con.execute("SELECT id FROM subscription_items WHERE deleted").fetchall() == []
    # (and the later list still removes what it leaves out)
    mark_missing_children(con, "subscription_items", "subscription_id", ACCT,
                          [("sub_1", ["si_a", "si_b"], 41), ("sub_1", ["si_a"], 41)], T1)
    assert con.execute("SELECT id FROM subscription_items WHERE deleted").fetchall() == [("si_b",)]


def test_accounts_are_kept_apart(con: duckdb.DuckDBPyConnection) -> None:
    upsert_objects(con, "subscriptions", "acct_a", [sub("sub_1", "active")], T0)
    upsert_objects(con, "subscriptions", "acct_b", [sub("sub_1", "canceled")], T0)
    assert con.execute("SELECT account_id, status FROM subscriptions ORDER BY 1").fetchall() == [
        ("acct_a", "active"), ("acct_b", "canceled")]


def test_a_first_load_of_an_account_inserts_the_rows_an_upsert_makes(tmp_path: Path) -> None:
    """upsert_objects inserts into a table that holds no row of the account (nothing can conflict; an upsert is
    planned as a join with the table): every column as an upsert gives, copies of an id and stubs included."""
    objs = [sub("sub_1", "trialing"), sub("sub_2", "active"), sub("sub_1", "active"),
            {"id": "sub_3", "object": "subscription", "deleted": True}]
    stores = []
    for name in ("first", "upserted"):
        c = open_store(tmp_path / f"{name}.duckdb")
        upsert_objects(c, "subscriptions", "acct_other", [sub("sub_1", "canceled")], T0)
        if name == "first":
            assert upsert_objects(c, "subscriptions", ACCT, objs, T1, versions=[5, 5, 6, 7]) == 3
        else:
            rows = Staged()
            for obj, v in zip(objs, [5, 5, 6, 7], strict=True):
                rows.add(obj, v)
            upsert_staged(c, "subscriptions", ACCT, rows, T1)
        stores.append(c.execute("SELECT * FROM subscriptions ORDER BY account_id, id").fetchall())
        c.close()
    assert stores[0] == stores[1] and len(stores[0]) == 4
    assert [r[1] for r in stores[0]] == ["sub_1", "sub_1", "sub_2", "sub_3"]


def staged(*objs: dict[str, Any], version: int = 100) -> Staged:
    rows = Staged()
    for obj in objs:
        rows.add(obj, version)
    return rows


def test_plain_insert_refuses_an_id_already_stored(con: duckdb.DuckDBPyConnection) -> None:
    """The first listing's inserts look nothing up: a second copy of an id is an error, never a duplicate row."""
    assert insert_staged(con, "subscriptions", ACCT, staged(sub("sub_1", "active")), T0) == 1
    assert one(con, "SELECT status, customer_id, epoch(start_date) FROM subscriptions") == ("active", "cus_1",
                                                                                          1_700_000_000)
    with pytest.raises(duckdb.ConstraintException):
        insert_staged(con, "subscriptions", ACCT, staged(sub("sub_1", "canceled")), T1)
    assert one(con, "SELECT count(*), any_value(status) FROM subscriptions") == (1, "active")


@pytest.mark.parametrize("merge_rows", [1000, 2])  # one statement, or several (ids split by hash)
def test_stage_merge_picks_per_id_and_replaces_what_is_stored(con: duckdb.DuckDBPyConnection, merge_rows: int,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Per id: the highest version, then the latest staged copy; a version-0 copy only where nothing else is;
    stored rows replaced whatever their version (a listing is the truth of its moment)."""
    monkeypatch.setattr(load, "MERGE_ROWS", merge_rows)
    upsert_objects(con, "subscriptions", ACCT, [sub("sub_old", "active"), sub("sub_keep", "active")], T0,
                   versions=500)
    upsert_objects(con, "discounts", ACCT, [{"id": "di_owned", "object": "discount", "start": 1}], T0, versions=50)
    create_stages(con, fresh=True)
    upsert_staged(con, "subscriptions", ACCT, staged(sub("sub_old", "canceled"), sub("sub_new", "trialing")), T1,
                  stage_seq=1)
    upsert_staged(con, "subscriptions", ACCT, staged(sub("sub_new", "active")), T1, stage_seq=2)
    upsert_staged(con, "subscriptions", ACCT, staged(sub("sub_new", "past_due"), version=90), T1, stage_seq=3)
    # discounts billed on invoices come at version 0: added when missing, never over a stored copy
    upsert_staged(con, "discounts", ACCT, staged({"id": "di_owned", "object": "discount", "start": 2},
                                                 {"id": "di_billed", "object": "discount", "start": 3}, version=0),
                  T1, stage_seq=4)
    assert stage_seq(con) == 4
    assert merge_stage(con, "subscriptions", ACCT) == 4
    assert merge_stage(con, "discounts", ACCT) == 2
    assert con.execute("SELECT id, status, version FROM subscriptions ORDER BY id").fetchall() == [
        ("sub_keep", "active", 500), ("sub_new", "active", 100), ("sub_old", "canceled", 100)]
    assert con.execute("SELECT id, epoch(start_at) FROM discounts ORDER BY id").fetchall() == [
        ("di_billed", 3), ("di_owned", 1)]
    assert one(con, "SELECT count(*) FROM sync_stage_subscriptions") == 0
    assert merge_stage(con, "subscriptions", ACCT) == 0  # merged once: nothing left to merge


def test_a_relisting_merges_in_parts_that_fit_duckdbs_memory_cap(con: duckdb.DuckDBPyConnection) -> None:
    """A listing over a store that holds the account (`sync --full` again, the fallback re-list) replaces the stored
    rows by deleting and inserting them, in parts of a share of DuckDB's memory cap: 4,000 events, 18 MB of JSON,
    re-listed under a 60 MB cap, fit. (An upsert held every replaced value, old and new, until it committed, and
    parsed every incoming document: it needed more than the cap, and the sync raised it with a WARNING on each
    re-list.) A stub keeps the stored copy and its typed columns; a changed state is stored."""
    filler = "x" * 2_000
    def event(n: int, status: str = "active") -> dict[str, Any]:
        return {"id": f"evt_{n:05d}", "object": "event", "type": "customer.subscription.updated", "created": 1_700_000_000 + n,
                "data": {"object": {**sub(f"sub_{n}", status), "description": filler},
                         "previous_attributes": {"status": "trialing", "metadata": {"note": filler}}}}
    events = [event(n) for n in range(4_000)]
    upsert_objects(con, "events", ACCT, events, T0)
    upsert_objects(con, "subscriptions", ACCT, [sub("sub_gone", "active", qty=3)], T0)
    create_stages(con, fresh=True)
    # (evt_00000's state changed: a test of the copy, not Stripe)
    upsert_staged(con, "events", ACCT, staged(*events[1:], event(0, "past_due"), version=2_000_000_000), T1,
                  stage_seq=1)
    upsert_staged(con, "subscriptions", ACCT,
                  staged({"id": "sub_gone", "object": "subscription", "deleted": True}, version=2_000_000_000), T1,
                  stage_seq=2)
    assert one(con, "SELECT sum(strlen(CAST(raw AS VARCHAR))) FROM sync_stage_events") > 10_000_000
    con.execute("CHECKPOINT")  # (as the stored rows and the listing's pages are, on disk)
    con.execute("SET memory_limit = '60MB'")
    assert merge_stage(con, "events", ACCT) == 4_000
    assert merge_stage(con, "subscriptions", ACCT) == 1
    con.execute("RESET memory_limit")
    assert one(con, "SELECT count(*), count(DISTINCT version), min(epoch(last_seen_at)) FROM events") == (
        4_000, 1, T1.timestamp())
    assert one(con, "SELECT sub_state.status FROM events WHERE id = 'evt_00000'") == "past_due"
    assert one(con, "SELECT count(*) FROM events WHERE sub_state.status = 'active'") == 3_999
    assert one(con, "SELECT deleted, status, customer_id, raw->>'$.created' FROM subscriptions") == (
        True, "active", "cus_1", "1700000000")


def test_stage_merge_into_an_empty_table_inserts_one_row_per_id(con: duckdb.DuckDBPyConnection) -> None:
    create_stages(con, fresh=True)
    upsert_staged(con, "customers", ACCT, staged({"id": "cus_1", "object": "customer", "email": "a@x"}), T0,
                  stage_seq=1)
    upsert_staged(con, "customers", ACCT, staged({"id": "cus_1", "object": "customer", "email": "b@x"}), T0,
                  stage_seq=2)
    merge_stage(con, "customers", ACCT)
    assert con.execute("SELECT id, email FROM customers").fetchall() == [("cus_1", "b@x")]
    # a stage that no longer has its table's columns is reported (the listing that filled it starts over)
    con.execute("ALTER TABLE sync_stage_customers DROP COLUMN country")
    assert create_stages(con, fresh=False) is False
    assert create_stages(con, fresh=False) is True


def test_discounts_no_longer_on_their_owner_are_flagged_after_a_listing(con: duckdb.DuckDBPyConnection) -> None:
    def disc(did: str, **owner: str) -> dict[str, Any]:
        return {"id": did, "object": "discount", "start": 1, **owner}

    upsert_objects(con, "discounts", ACCT, [disc("di_s1", subscription="sub_1"), disc("di_s2", subscription="sub_1"),
                                            disc("di_gone", subscription="sub_2"), disc("di_c1", customer="cus_1"),
                                            disc("di_c2", customer="cus_1"), disc("di_other", customer="cus_9")], T0)
    upsert_objects(con, "subscriptions", ACCT, [{**sub("sub_1", "active"), "discounts": ["di_s1"]}], T1)
    upsert_objects(con, "subscriptions", ACCT, [{"id": "sub_2", "object": "subscription", "deleted": True}], T1)
    upsert_objects(con, "customers", ACCT, [{"id": "cus_1", "object": "customer", "discount": disc("di_c2")}], T1)
    mark_unlisted_children(con, ACCT, T1, T1)
    assert con.execute("SELECT id FROM discounts WHERE deleted ORDER BY id").fetchall() == [
        ("di_c1",), ("di_gone",), ("di_s2",)]


def test_an_incremental_sync_flags_only_the_discounts_its_owners_seen_no_longer_have(
        con: duckdb.DuckDBPyConnection) -> None:
    """After an incremental sync (``whole=False``): a discount taken off an item seen in the run is gone (Stripe sends
    no event for it), as is a subscription's or customer's the owner seen no longer has; one on an item the run did
    not see (its subscription's list cut short before it), or of an owner deleted before the run, is left as it is,
    where a full listing flags both."""
    def disc(did: str, **owner: str) -> dict[str, Any]:
        return {"id": did, "object": "discount", "start": 1, **owner}

    def item(iid: str, sid: str, discounts: list[str]) -> dict[str, Any]:
        return {"id": iid, "object": "subscription_item", "subscription": sid, "quantity": 1, "discounts": discounts,
                "price": {"id": "price_1", "product": "prod_1"}}

    upsert_objects(con, "subscriptions", ACCT, [{**sub("sub_1", "active"), "discounts": ["di_s1"]},
                                                sub("sub_3", "active"),
                                                {"id": "sub_2", "object": "subscription", "deleted": True}], T0)
    upsert_objects(con, "subscription_items", ACCT, [item("si_1", "sub_1", ["di_i1"]), item("si_a", "sub_3", []),
                                                     item("si_b", "sub_3", ["di_ib"])], T0)
    upsert_objects(con, "discounts", ACCT, [
        disc("di_i1", subscription="sub_1", subscription_item="si_1"), disc("di_s1", subscription="sub_1"),
        disc("di_ib", subscription="sub_3", subscription_item="si_b"), disc("di_old", subscription="sub_2"),
        disc("di_c1", customer="cus_1")], T0)
    # the run (T1): sub_1 seen with its own discount gone and its item's taken off, sub_3 with only si_a (its list
    # cut short before si_b), cus_1 without its discount
    upsert_objects(con, "subscriptions", ACCT, [sub("sub_1", "active"), sub("sub_3", "active")], T1)
    upsert_objects(con, "subscription_items", ACCT, [item("si_1", "sub_1", []), item("si_a", "sub_3", [])], T1)
    upsert_objects(con, "customers", ACCT, [{"id": "cus_1", "object": "customer", "discount": None}], T1)
    assert one(con, "SELECT last_seen_at FROM subscription_items WHERE id = 'si_b'") == T0
    mark_unlisted_discounts(con, ACCT, T1, T1, whole=False)
    assert con.execute("SELECT id FROM discounts WHERE deleted ORDER BY id").fetchall() == [
        ("di_c1",), ("di_i1",), ("di_s1",)]
    mark_unlisted_children(con, ACCT, T1, T1)  # (a full listing: si_b was not listed, sub_2 is deleted)
    assert con.execute("SELECT id FROM discounts WHERE deleted ORDER BY id").fetchall() == [
        ("di_c1",), ("di_i1",), ("di_ib",), ("di_old",), ("di_s1",)]


def test_load_simulation_takes_objects_whose_embedded_lists_are_null(con: duckdb.DuckDBPyConnection) -> None:
    from types import SimpleNamespace

    inv = {"id": "in_1", "object": "invoice", "customer": "cus_1", "created": 1_700_000_000, "lines": None}
    sim = SimpleNamespace(account_id=ACCT, clock=1_700_100_000, start=1_700_000_000, discounts={}, events=[],
                          objects={"customers": {"cus_1": {"id": "cus_1", "object": "customer", "created": 1}},
                                   "subscriptions": {"sub_1": {**sub("sub_1", "active"), "items": None},
                                                     "sub_2": sub("sub_2", "active")},
                                   "invoices": {"in_1": inv}})
    load.load_simulation(con, sim)
    assert con.execute("SELECT id FROM subscriptions ORDER BY id").fetchall() == [("sub_1",), ("sub_2",)]
    assert con.execute("SELECT id, subscription_id FROM subscription_items").fetchall() == [("si_sub_2", "sub_2")]
    assert one(con, "SELECT count(*) FROM invoices") == 1 and one(con, "SELECT count(*) FROM invoice_lines") == 0


def test_load_simulation_stores_its_invoice_items_pending_and_billed(con: duckdb.DuckDBPyConnection) -> None:
    from types import SimpleNamespace

    from stripe_churn.sandbox.sim import Simulation

    made = Simulation(customers=150, months=24, seed=3, deferred_prorations=True)
    items = made.objects["invoiceitems"]
    # (its invoice items alone: the rest of the account is loaded as it always was, and would only take time)
    sim = SimpleNamespace(account_id=ACCT, clock=made.clock, start=made.start, discounts={}, events=[],
                          objects={"invoiceitems": items})
    load.load_simulation(con, sim)
    got = con.execute("SELECT id, subscription_id, invoice_id, pending, amount FROM invoice_items ORDER BY id").fetchall()
    assert got == sorted((i, o["parent"]["subscription_details"]["subscription"], o["invoice"], o["invoice"] is None,
                          o["amount"]) for i, o in items.items())
    assert {r[3] for r in got} == {True, False}
    plain = SimpleNamespace(account_id="acct_plain", clock=made.clock, start=made.start, discounts={}, events=[],
                            objects={"customers": {}})  # (a simulation made without deferred prorations)
    load.load_simulation(con, plain)
    assert one(con, "SELECT count(*) FROM invoice_items WHERE account_id = 'acct_plain'") == 0


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
        msg = str(info.value)
        assert "in use by another process" in msg and "\n" not in msg
        # (who holds it, from DuckDB's own message; no advice to stop a daemon, which holds no store between runs)
        assert f"pid {holder.pid})" in msg and "daemon" not in msg and f"{path}.snapshot" in msg, msg
    finally:
        holder.kill()
        holder.wait()
    open_store(path, read_only=True).close()


def _file_state(path: Path) -> tuple[bytes, list[Path]]:
    return path.read_bytes(), sorted(path.parent.iterdir())


def _refused_unchanged(path: Path, read_only: bool) -> str:
    """The one-line StoreError of opening ``path``, which must leave the file as it was."""
    before = _file_state(path)
    with pytest.raises(StoreError) as info:
        open_store(path, read_only=read_only)
    assert _file_state(path) == before
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("read_only", [False, True], ids=["writable", "read-only"])
def test_a_duckdb_file_that_is_not_a_store_is_refused_and_left_as_it_was(tmp_path: Path, read_only: bool) -> None:
    path = tmp_path / "other.duckdb"
    c = duckdb.connect(str(path))
    c.execute("CREATE TABLE customers (id INT, name VARCHAR)")
    c.execute("INSERT INTO customers VALUES (1, 'Ada')")
    c.close()
    msg = _refused_unchanged(path, read_only)
    assert "not a stripe-churn store" in msg and "STRIPE_CHURN_DB" in msg
    c = duckdb.connect(str(path), read_only=True)
    try:
        assert c.execute("SELECT table_name FROM duckdb_tables()").fetchall() == [("customers",)]
    finally:
        c.close()


def test_an_empty_duckdb_file_becomes_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / "empty.duckdb"
    duckdb.connect(str(path)).close()
    with open_store(path) as c:
        assert [r[0] for r in c.execute("SELECT name FROM schema_migrations").fetchall()] == [m[0] for m in MIGRATIONS]


@pytest.mark.parametrize("read_only", [False, True], ids=["writable", "read-only"])
def test_a_store_of_a_newer_version_is_refused_and_left_as_it_was(tmp_path: Path, read_only: bool) -> None:
    path = tmp_path / "newer.duckdb"
    open_store(path).close()
    c = duckdb.connect(str(path))
    c.execute("INSERT INTO schema_migrations (name, applied_at) VALUES ('009_future_thing', now())")
    c.execute("DROP TABLE metrics_runs")  # (as if 005 were missing too: nothing may be applied)
    c.execute("DELETE FROM schema_migrations WHERE name = '005_metrics_runs'")
    c.close()
    msg = _refused_unchanged(path, read_only)
    assert "newer stripe-churn" in msg and "009_future_thing" in msg and "upgrade" in msg


def test_read_only_open_of_a_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="stripe-churn sync"):
        open_store(tmp_path / "none.duckdb", read_only=True)


def test_spill_files_of_a_killed_process_are_removed_on_the_next_open(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    open_store(db).close()
    spill = textwrap.dedent(f"""
        import os, duckdb
        con = duckdb.connect({str(db)!r})
        con.execute("SET memory_limit = '50MB'")
        con.execute("SELECT count(*) FROM (SELECT i, md5(i::varchar) m FROM range(3000000) t(i) ORDER BY m)").fetchall()
        os.kill(os.getpid(), 9)  # killed while its spill files exist
    """)
    proc = subprocess.run([sys.executable, "-c", spill], capture_output=True, timeout=120, check=False)
    assert proc.returncode == -9
    folder = tmp_path / "s.duckdb.tmp"
    assert any(folder.iterdir())  # what the killed process left
    # a live process's spill file is kept (this one's pid)
    mine = folder / f"duckdb_temp_{os.getpid()}_0_owner"
    mine.write_bytes(b"")
    open_store(db).close()
    assert [p.name for p in folder.iterdir()] == [mine.name]
    mine.unlink()
    open_store(db).close()
    assert not folder.exists()


def test_raw_json_is_stored_with_zstd(tmp_path: Path) -> None:
    """The raw JSON, most of a store, is compressed with zstd on disk (about 4.5x smaller than DuckDB's default
    string compression on a synced account); the other columns keep DuckDB's choice."""
    path = tmp_path / "z.duckdb"
    with open_store(path) as con:
        objs = [{"id": f"evt_{n:06d}", "object": "event", "type": "customer.updated", "created": 1_700_000_000 + n,
                 "data": {"object": {"id": f"cus_{n % 50}", "object": "customer", "note": "x" * 300}}}
                for n in range(5000)]
        upsert_objects(con, "events", ACCT, objs, T0)
        con.execute("CHECKPOINT")
        kinds = dict(con.execute(
            "SELECT column_name, string_agg(DISTINCT compression, ',') FROM pragma_storage_info('events') "
            "WHERE segment_type <> 'VALIDITY' GROUP BY column_name").fetchall())
        assert kinds["raw"] == "ZSTD"
        assert "ZSTD" not in kinds["id"]
        assert orjson.loads(con.execute("SELECT raw FROM events WHERE id = 'evt_000007'").fetchone()[0]) == objs[7]


def test_a_store_in_an_older_storage_format_is_created_without_zstd(tmp_path: Path) -> None:
    con = duckdb.connect()
    con.execute(f"ATTACH '{tmp_path / 'old.duckdb'}' AS old (STORAGE_VERSION 'v1.0.0')")
    con.execute("USE old")
    assert [name for name, _ in MIGRATIONS] == migrate(con)
    upsert_objects(con, "customers", ACCT, [{"id": "cus_1", "object": "customer"}], T0)
    assert con.execute("SELECT count(*) FROM customers").fetchone() == (1,)
    assert "ZSTD" not in con.execute("SELECT sql FROM duckdb_tables() WHERE table_name = 'customers'").fetchone()[0]


T2 = datetime(2026, 1, 3, tzinfo=UTC)
T3 = datetime(2026, 1, 4, tzinfo=UTC)
T4 = datetime(2026, 1, 5, tzinfo=UTC)


def seen(con: duckdb.DuckDBPyConnection, table: str, oid: str) -> tuple[datetime, datetime]:
    """(last_seen_at, state_seen_at) of a row."""
    return one(con, f"SELECT last_seen_at, state_seen_at FROM {table} WHERE id = ?", [oid])


def listed(*objs: dict[str, Any], version: int = 100) -> Staged:
    """Objects as a listing brings them: the JSON as Stripe sent it, pretty-printed."""
    rows = Staged()
    for obj in objs:
        rows.add_blob(obj["id"], orjson.dumps(obj, option=orjson.OPT_INDENT_2), version, bool(obj.get("deleted")))
    return rows


def test_state_seen_at_moves_only_when_the_state_changes(con: duckdb.DuckDBPyConnection) -> None:
    """Every write moves last_seen_at; state_seen_at stays at the first write of the row's current state (its JSON,
    whitespace aside, and its deleted flag), whichever way the write comes: an upsert (an incremental sync, or a
    listing not staged), or a full listing's stage merged."""
    upsert_objects(con, "subscriptions", ACCT, [sub("sub_1", "active")], T0, versions=10)
    assert seen(con, "subscriptions", "sub_1") == (T0, T0)
    upsert_objects(con, "subscriptions", ACCT, [sub("sub_1", "active")], T1, versions=20)
    assert seen(con, "subscriptions", "sub_1") == (T1, T0)
    upsert_staged(con, "subscriptions", ACCT, listed(sub("sub_1", "active"), version=30), T2, replace=True)
    assert seen(con, "subscriptions", "sub_1") == (T2, T0)
    create_stages(con, fresh=True)
    upsert_staged(con, "subscriptions", ACCT, listed(sub("sub_1", "active"), version=40), T3, stage_seq=1)
    merge_stage(con, "subscriptions", ACCT)
    assert seen(con, "subscriptions", "sub_1") == (T3, T0)
    # a change, by each way of writing
    upsert_staged(con, "subscriptions", ACCT, listed(sub("sub_1", "active", qty=2), version=50), T4, stage_seq=2)
    merge_stage(con, "subscriptions", ACCT)
    assert seen(con, "subscriptions", "sub_1") == (T4, T4)
    upsert_objects(con, "subscriptions", ACCT, [sub("sub_1", "past_due", qty=2)], T0, versions=60)
    assert seen(con, "subscriptions", "sub_1") == (T0, T0)
    # a deletion stub only flags the row, and that is a change of its state
    upsert_objects(con, "subscriptions", ACCT, [{"id": "sub_1", "object": "subscription", "deleted": True}], T1,
                   versions=70)
    assert seen(con, "subscriptions", "sub_1") == (T1, T1)
    # so is a child flagged gone from its parent's complete list
    items = [{"id": f"si_{i}", "object": "subscription_item", "subscription": "sub_1", "quantity": 1} for i in range(2)]
    upsert_objects(con, "subscription_items", ACCT, items, T0, versions=10)
    mark_missing_children(con, "subscription_items", "subscription_id", ACCT, [("sub_1", ["si_0"], 20)], T2)
    assert seen(con, "subscription_items", "si_0") == (T0, T0)
    assert seen(con, "subscription_items", "si_1") == (T2, T2)


def test_state_seen_at_is_at_least_the_copys_version(con: duckdb.DuckDBPyConnection) -> None:
    """With Stripe's clock ahead of this machine's (a sandbox or test clock advanced), the copy's version (Stripe's
    time of the listing or event) dates the state when it is later than the write's moment, as the metrics read
    last_seen_at and version."""
    upsert_objects(con, "customers", ACCT, [{"id": "cus_1", "object": "customer"}], T0, versions=int(T3.timestamp()))
    assert seen(con, "customers", "cus_1") == (T0, T3)
    upsert_objects(con, "customers", ACCT, [{"id": "cus_1", "object": "customer"}], T1, versions=int(T4.timestamp()))
    assert seen(con, "customers", "cus_1") == (T1, T3)


def test_a_store_from_before_state_seen_at_gains_it_from_each_rows_latest_write(tmp_path: Path) -> None:
    """009_state_seen_at on a store made before it: every raw table gains the column, a row kept already gets its
    latest write's moment (or its version, when later), and the store goes on keeping it."""
    path = tmp_path / "m.duckdb"
    c = open_store(path)
    upsert_objects(c, "subscriptions", ACCT, [sub("sub_1", "active")], T0, versions=10)
    upsert_objects(c, "subscriptions", ACCT, [sub("sub_1", "active")], T1, versions=20)
    upsert_objects(c, "customers", ACCT, [{"id": "cus_1", "object": "customer"}], T0, versions=int(T2.timestamp()))
    for table in RAW_TABLES:
        c.execute(f"ALTER TABLE {table} DROP COLUMN state_seen_at")
    c.execute("DELETE FROM schema_migrations WHERE name = '009_state_seen_at'")
    c.close()
    c = open_store(path)
    try:
        for table in RAW_TABLES:
            assert one(c, "SELECT data_type FROM duckdb_columns() WHERE table_name = ? AND column_name = "
                          "'state_seen_at'", [table]) == "TIMESTAMP WITH TIME ZONE"
        assert seen(c, "subscriptions", "sub_1") == (T1, T1)
        assert seen(c, "customers", "cus_1") == (T0, T2)
        upsert_objects(c, "subscriptions", ACCT, [sub("sub_1", "active")], T3, versions=30)
        assert seen(c, "subscriptions", "sub_1") == (T3, T1)
        upsert_objects(c, "subscriptions", ACCT, [sub("sub_1", "canceled")], T4, versions=40)
        assert seen(c, "subscriptions", "sub_1") == (T4, T4)
        assert one(c, "SELECT count(*) FROM schema_migrations WHERE name = '009_state_seen_at'") == 1
    finally:
        c.close()


def test_a_store_from_before_the_credit_note_lines_bookkeeping_gains_its_column_empty(tmp_path: Path) -> None:
    """010_credit_note_lines_not_found on a store made before it: credit_notes gains ``lines_not_found_at``, NULL
    in the rows kept (none of them was found to answer 404 yet), which are left as they were; no write of a credit
    note sets it."""
    path = tmp_path / "m.duckdb"
    c = open_store(path)
    note = {"id": "cn_1", "object": "credit_note", "created": 1_700_000_000, "total": 500,
            "lines": {"object": "list", "data": [], "has_more": True, "url": "/v1/credit_notes/cn_1/lines"}}
    upsert_objects(c, "credit_notes", ACCT, [note], T0, versions=10)
    c.execute("ALTER TABLE credit_notes DROP COLUMN lines_not_found_at")
    c.execute("DELETE FROM schema_migrations WHERE name = '010_credit_note_lines_not_found'")
    kept = c.execute("SELECT * FROM credit_notes").fetchall()
    c.close()
    c = open_store(path)
    try:
        assert one(c, "SELECT data_type FROM duckdb_columns() WHERE table_name = 'credit_notes' AND column_name = "
                      "'lines_not_found_at'") == "TIMESTAMP WITH TIME ZONE"
        assert c.execute("SELECT * EXCLUDE (lines_not_found_at) FROM credit_notes").fetchall() == kept
        assert one(c, "SELECT lines_not_found_at FROM credit_notes") is None
        c.execute("UPDATE credit_notes SET lines_not_found_at = state_seen_at")
        upsert_objects(c, "credit_notes", ACCT, [{**note, "total": 400}], T1, versions=20)
        assert one(c, "SELECT lines_not_found_at = ?, total FROM credit_notes", [T0]) == (True, 400)
        assert one(c, "SELECT count(*) FROM schema_migrations WHERE name = '010_credit_note_lines_not_found'") == 1
    finally:
        c.close()


def test_a_credit_notes_cut_short_lines_are_a_typed_column_filled_for_the_rows_kept(tmp_path: Path) -> None:
    """``credit_notes.lines_has_more`` is the JSON's ``lines.has_more`` (the sync finds the notes cut short by it,
    without reading every JSON): set by every write, and by 011_credit_note_lines_has_more for the rows a store made
    before it keeps; a deleted stub leaves it as it was."""
    path = tmp_path / "m.duckdb"
    c = open_store(path)

    def note(cnid: str, more: bool | None) -> dict[str, Any]:
        lines = None if more is None else {"object": "list", "data": [], "has_more": more,
                                           "url": f"/v1/credit_notes/{cnid}/lines"}
        return {"id": cnid, "object": "credit_note", "created": 1_700_000_000, "total": 500, "lines": lines}

    upsert_objects(c, "credit_notes", ACCT, [note("cn_cut", True), note("cn_whole", False), note("cn_none", None)],
                   T0, versions=10)
    c.execute("ALTER TABLE credit_notes DROP COLUMN lines_has_more")
    c.execute("DELETE FROM schema_migrations WHERE name = '011_credit_note_lines_has_more'")
    c.close()
    c = open_store(path)
    try:
        def cut() -> list[tuple[str, Any]]:
            return c.execute("SELECT id, lines_has_more FROM credit_notes ORDER BY id").fetchall()

        assert cut() == [("cn_cut", True), ("cn_none", None), ("cn_whole", False)]
        upsert_objects(c, "credit_notes", ACCT, [note("cn_cut", False), note("cn_whole", True)], T1, versions=20)
        assert cut() == [("cn_cut", False), ("cn_none", None), ("cn_whole", True)]
        upsert_objects(c, "credit_notes", ACCT, [{"id": "cn_whole", "object": "credit_note", "deleted": True}], T1,
                       versions=30)
        assert cut() == [("cn_cut", False), ("cn_none", None), ("cn_whole", True)]
        assert one(c, "SELECT count(*) FROM schema_migrations WHERE name = '011_credit_note_lines_has_more'") == 1
    finally:
        c.close()


def reopened_as_before(c: duckdb.DuckDBPyConnection, path: Path, table: str, columns: tuple[str, ...],
                       migration: str) -> tuple[duckdb.DuckDBPyConnection, list[tuple[Any, ...]]]:
    """The store at ``path`` (open as ``c``) made as a store from before ``migration`` was: ``table`` without
    ``columns``, the migration not recorded; closed and opened again, so that the migration applies. Returns the new
    connection and ``table``'s rows as they were before it, by id."""
    for column in columns:
        c.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    c.execute("DELETE FROM schema_migrations WHERE name = ?", [migration])
    kept = c.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
    c.close()
    return open_store(path), kept


def test_a_store_from_before_the_price_option_tiers_columns_gains_them_filled(tmp_path: Path) -> None:
    """012_price_option_tiers on a store made before it: prices gain ``options_without_tiers``, filled from the
    JSON kept (a tiered price with an option in another currency than its own without tiers), and
    ``option_tiers_not_found_at``, NULL (none found to lack them for good yet); the rows are otherwise as they were,
    and no write of a price sets the second one."""
    path = tmp_path / "m.duckdb"
    c = open_store(path)

    def price(pid: str, scheme: str, options: Any) -> dict[str, Any]:
        return {"id": pid, "object": "price", "created": 1_700_000_000, "currency": "usd", "billing_scheme": scheme,
                "currency_options": options}

    tiers = [{"up_to": None, "unit_amount": 5}]
    upsert_objects(c, "prices", ACCT, [
        price("price_lacks", "tiered", {"usd": {}, "eur": {"tiers": tiers}, "gbp": {"unit_amount": None}}),
        price("price_whole", "tiered", {"usd": {}, "eur": {"tiers": tiers}}),
        price("price_own_only", "tiered", {"USD": {}}),
        price("price_per_unit", "per_unit", {"usd": {}, "eur": {"unit_amount": 9}}),
        price("price_no_options", "tiered", None)], T0, versions=10)
    c, kept = reopened_as_before(c, path, "prices", ("options_without_tiers", "option_tiers_not_found_at"),
                                 "012_price_option_tiers")
    try:
        assert c.execute("SELECT * EXCLUDE (options_without_tiers, option_tiers_not_found_at) FROM prices "
                         "ORDER BY id").fetchall() == kept
        assert c.execute("SELECT id, options_without_tiers, option_tiers_not_found_at FROM prices ORDER BY id"
                         ).fetchall() == [("price_lacks", True, None), ("price_no_options", False, None),
                                          ("price_own_only", False, None), ("price_per_unit", False, None),
                                          ("price_whole", False, None)]
        c.execute("UPDATE prices SET option_tiers_not_found_at = state_seen_at")
        upsert_objects(c, "prices", ACCT, [price("price_lacks", "tiered", {"usd": {}, "gbp": {"tiers": tiers}})], T1,
                       versions=20)
        assert one(c, "SELECT options_without_tiers, option_tiers_not_found_at = ? FROM prices "
                      "WHERE id = 'price_lacks'", [T0]) == (False, True)
        assert one(c, "SELECT count(*) FROM schema_migrations WHERE name = '012_price_option_tiers'") == 1
    finally:
        c.close()


def test_a_store_from_before_the_invoice_payment_dates_gains_them_filled(tmp_path: Path) -> None:
    """014_invoice_payment_dates on a store made before it: invoices gain ``finalized_at``, ``paid_at`` and
    ``attempt_count`` (a renewal paid at a later attempt shows a past_due spell before the events' window), filled
    from the JSON kept; the rows are otherwise as they were, and every write sets them."""
    path = tmp_path / "m.duckdb"
    c = open_store(path)

    def invoice(iid: str, attempts: int | None, paid: int | None) -> dict[str, Any]:
        return {"id": iid, "object": "invoice", "customer": "cus_1", "subscription": "sub_1", "status": "paid",
                "billing_reason": "subscription_cycle", "created": 1_700_000_000, "attempt_count": attempts,
                "status_transitions": {"finalized_at": 1_700_000_060, "paid_at": paid,
                                       "marked_uncollectible_at": None, "voided_at": None}}

    upsert_objects(c, "invoices", ACCT, [invoice("in_late", 2, 1_700_432_000), invoice("in_once", 1, 1_700_000_120),
                                         invoice("in_odd", None, None)], T0, versions=10)
    c, kept = reopened_as_before(c, path, "invoices", ("finalized_at", "paid_at", "attempt_count"),
                                 "014_invoice_payment_dates")
    try:
        def payments() -> list[tuple[Any, ...]]:
            return c.execute("SELECT id, epoch(finalized_at), epoch(paid_at), attempt_count FROM invoices "
                             "ORDER BY id").fetchall()

        assert c.execute("SELECT * EXCLUDE (finalized_at, paid_at, attempt_count) FROM invoices ORDER BY id"
                         ).fetchall() == kept
        assert payments() == [("in_late", 1_700_000_060, 1_700_432_000, 2), ("in_odd", 1_700_000_060, None, None),
                              ("in_once", 1_700_000_060, 1_700_000_120, 1)]
        upsert_objects(c, "invoices", ACCT, [invoice("in_odd", 3, 1_700_500_000)], T1, versions=20)
        assert payments()[1] == ("in_odd", 1_700_000_060, 1_700_500_000, 3)
        assert one(c, "SELECT count(*) FROM schema_migrations WHERE name = '014_invoice_payment_dates'") == 1
    finally:
        c.close()


def test_a_store_from_before_the_lines_invoice_items_gains_them_filled(tmp_path: Path) -> None:
    """013_line_invoice_items on a store made before it: invoice_lines gain ``invoice_item_id``, the invoice item a
    line bills (a pending proration billed by a later invoice names it in ``subscription_item_details``, a one-time
    item in ``invoice_item_details``), filled from the JSON kept; the rows are otherwise as they were, and every
    write sets it."""
    path = tmp_path / "m.duckdb"
    c = open_store(path)

    def line(lid: str, parent: dict[str, Any]) -> dict[str, Any]:
        return {"id": lid, "object": "line_item", "invoice": "in_1", "amount": 1000, "currency": "usd",
                "period": {"start": 1_700_000_000, "end": 1_702_592_000}, "parent": parent}

    def of_item(item: str | None, proration: bool) -> dict[str, Any]:
        return {"type": "subscription_item_details", "invoice_item_details": None,
                "subscription_item_details": {"invoice_item": item, "proration": proration, "subscription": "sub_1",
                                              "subscription_item": "si_1"}}

    one_time = {"type": "invoice_item_details", "subscription_item_details": None,
                "invoice_item_details": {"invoice_item": "ii_setup", "proration": False}}
    upsert_objects(c, "invoice_lines", ACCT, [line("il_pending", of_item("ii_1", True)),
                                              line("il_renewal", of_item(None, False)),
                                              line("il_setup", one_time)], T0, versions=10)
    c, kept = reopened_as_before(c, path, "invoice_lines", ("invoice_item_id",), "013_line_invoice_items")
    try:
        def items() -> list[tuple[str, Any]]:
            return c.execute("SELECT id, invoice_item_id FROM invoice_lines ORDER BY id").fetchall()

        assert c.execute("SELECT * EXCLUDE (invoice_item_id) FROM invoice_lines ORDER BY id").fetchall() == kept
        assert items() == [("il_pending", "ii_1"), ("il_renewal", None), ("il_setup", "ii_setup")]
        upsert_objects(c, "invoice_lines", ACCT, [line("il_renewal", of_item("ii_2", True))], T1, versions=20)
        assert items() == [("il_pending", "ii_1"), ("il_renewal", "ii_2"), ("il_setup", "ii_setup")]
        assert one(c, "SELECT count(*) FROM schema_migrations WHERE name = '013_line_invoice_items'") == 1
    finally:
        c.close()
