"""The typed columns the metrics read instead of the raw JSON: a store from before they existed gets them
filled by its migration, with the values a fresh load gives, and both stores derive the same movements."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
from builders import World, add_months, ts
from conftest import make_settings

from stripe_churn.metrics.runner import recompute
from stripe_churn.store import db
from stripe_churn.store.db import open_store

T0 = ts(2025, 1, 1)
SEEN = add_months(T0, 4)


def account() -> World:
    w = World()
    w.customer("cus_1", address={"country": "DE"})
    w.customer("cus_2")
    w.product("prod_seat", unit_label="seat")
    w.price("price_a", "prod_seat", 1_000)
    w.price("price_b", "prod_seat", 3_000)
    w.subscribe("sub_1", "cus_1", [("si_1", "price_a", 2)], T0)
    w.cycle("sub_1", add_months(T0, 1))
    w.update("sub_1", add_months(T0, 1) + 10 * 86400, items=[("si_1", "price_b", 3)])  # credit + debit lines
    inv = list(w.objects["invoices"].values())[-1]
    inv["lines"]["data"][0]["taxes"] = [{"amount": 125, "tax_behavior": "inclusive", "type": "tax_rate_details"},
                                        {"amount": 99, "tax_behavior": "exclusive", "type": "tax_rate_details"}]
    w.update("sub_1", add_months(T0, 2), pause_collection={"behavior": "void", "resumes_at": None})
    w.subscribe("sub_2", "cus_2", [("si_2", "price_a", 1)], T0, trial_end=T0 + 14 * 86400)
    w.cancel("sub_2", add_months(T0, 2), reason="payment_failed", feedback="too_expensive", comment="bye")
    return w


def typed(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[object, ...]]]:
    return {table: con.execute(f"SELECT id, {', '.join(cols)} FROM {table} ORDER BY id").fetchall()
            for table, cols in db._M002_COLUMNS.items()}


def movements(con: duckdb.DuckDBPyConnection) -> list[tuple[object, ...]]:
    recompute(con, make_settings())
    return con.execute("SELECT * FROM mrr_movements ORDER BY occurred_at, customer_id, subscription_item_id, "
                       "movement").fetchall()


def old_and_fresh(w: World, tmp_path: Path, migration: str,
                  columns: list[tuple[str, str]]) -> tuple[duckdb.DuckDBPyConnection, duckdb.DuckDBPyConnection]:
    """``w`` loaded into a store as it was before ``migration`` (without its ``columns`` and without it in the
    migrations, which then run it on opening), and into a fresh store."""
    old = open_store(tmp_path / "old.duckdb")
    w.load(old, seen_at=SEEN)
    for table, col in columns:
        old.execute(f"ALTER TABLE {table} DROP COLUMN {col}")
    old.execute("DELETE FROM schema_migrations WHERE name = ?", [migration])
    old.close()
    old = open_store(tmp_path / "old.duckdb")
    fresh = open_store(tmp_path / "fresh.duckdb")
    w.load(fresh, seen_at=SEEN)
    return old, fresh


def column_after_migration(w: World, tmp_path: Path, migration: str, table: str, column: str) -> dict[str, Any]:
    """``table.column`` by id, as ``migration`` fills it in an old store: asserted equal to a fresh load's, and both
    stores deriving the same movements."""
    old, fresh = old_and_fresh(w, tmp_path, migration, [(table, column)])
    try:
        query = f"SELECT id, {column} FROM {table} ORDER BY id"
        got, want = old.execute(query).fetchall(), fresh.execute(query).fetchall()
        assert got == want
        assert movements(old) == movements(fresh) != []
        return dict(want)
    finally:
        old.close()
        fresh.close()


def test_old_store_gets_the_metrics_columns_filled(tmp_path: Path) -> None:
    old, fresh = old_and_fresh(account(), tmp_path, "002_metrics_columns",
                               [(table, col) for table, cols in db._M002_COLUMNS.items() for col in cols])
    try:
        got, want = typed(old), typed(fresh)
        assert got == want
        # the values are the ones the metrics need, not just equal
        assert ("cus_1", "DE") in want["customers"]
        sub_1, sub_2 = want["subscriptions"]
        assert sub_1[0] == "sub_1" and sub_1[7] is True  # pause_collection
        assert sub_2[0] == "sub_2" and sub_2[2].timestamp() == T0 + 14 * 86400  # trial_end
        assert sub_2[4:7] == ("payment_failed", "too_expensive", "bye")
        lines = want["invoice_lines"]
        assert any(credit for _, _, credit, _ in lines) and any(not credit for _, _, credit, _ in lines)
        assert sorted(tax for *_, tax in lines if tax) == [125]
        assert all(proration for _, proration, credit, _ in lines if credit)
        assert movements(old) == movements(fresh) != []
    finally:
        old.close()
        fresh.close()


def sub_states(con: duckdb.DuckDBPyConnection) -> list[tuple[object, ...]]:
    return con.execute("SELECT id, type, sub_state FROM events ORDER BY id").fetchall()


def test_old_store_gets_the_subscription_event_fields_filled(tmp_path: Path) -> None:
    w = account()
    # an update whose state after names its item's price by id, not as an embedded object
    bare = next(e for e in w.events if e["type"] == "customer.subscription.updated"
                and "items" in e["data"]["previous_attributes"])
    bare["data"]["object"]["items"]["data"][0]["price"] = "price_b"
    old, fresh = old_and_fresh(w, tmp_path, "003_subscription_event_fields", [("events", "sub_state")])
    try:
        got, want = sub_states(old), sub_states(fresh)
        assert got == want
        by_id = {eid: state for eid, _, state in want}
        # only subscription events carry it; the values are the ones the metrics need, not just equal
        assert all((state is None) == (not etype.startswith("customer.subscription.")) for _, etype, state in want)
        state = by_id[bare["id"]]
        assert state["items"] == [{"id": "si_1", "price_id": "price_b", "quantity_text": "3",
                                   "created": state["items"][0]["created"]}]
        assert [(i["price_id"], i["quantity_text"]) for i in state["prev_items"]] == [("price_a", "2")]
        assert state["types"][0] == "OBJECT" and state["types"][3] == "OBJECT"
        paused = next(by_id[e["id"]] for e in w.events if "pause_collection" in e["data"].get("previous_attributes", {}))
        assert paused["types"][2] == "NULL" and paused["types"][6] == "OBJECT" and paused["prev_items"] is None
        assert movements(old) == movements(fresh) != []
    finally:
        old.close()
        fresh.close()


def test_old_store_gets_the_lines_pretax_credits_filled(tmp_path: Path) -> None:
    w = account()
    lines = [ln for inv in w.objects["invoices"].values() for ln in inv["lines"]["data"]]
    lines[0]["pretax_credit_amounts"] = [{"amount": 300, "type": "discount"},
                                         {"amount": 20, "type": "credit_balance_transaction"}]
    lines[1]["discount_amounts"] = [{"amount": 150, "discount": "di_1"}]  # (an older API version's line)
    credits = column_after_migration(w, tmp_path, "004_line_pretax_credits", "invoice_lines", "pretax_credits")
    assert credits[lines[0]["id"]] == 320 and credits[lines[1]["id"]] == 150
    assert sorted(credits.values())[:-2] == [0] * (len(credits) - 2)


def test_old_store_gets_the_invoices_attempted_filled(tmp_path: Path) -> None:
    """``invoices.attempted`` (30_item_history tells the voided invoice of an expired pending update, whose payment
    was tried, from one voided while collection was paused): filled from the JSON of the invoices already kept,
    from ``attempted`` or an ``attempt_count`` above 0."""
    w = account()
    invoices = list(w.objects["invoices"].values())
    invoices[0].update(attempted=True, attempt_count=1)
    invoices[1].update(attempted=False, attempt_count=2)  # (as an older API version might list it)
    invoices[2].update(attempted=False, attempt_count=0)
    attempted = column_after_migration(w, tmp_path, "008_invoice_attempted", "invoices", "attempted")
    assert [attempted[i["id"]] for i in invoices[:3]] == [True, True, False]
