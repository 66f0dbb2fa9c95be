"""The incremental recompute (stripe_churn.metrics.incremental): deriving again only the customers a later sync
touched gives every derived table and view that a full recompute gives.

Each test loads a hand-built account, recomputes in full, loads what a later sync brings, derives again
incrementally, and compares with a fresh store loaded with the same objects and recomputed in full.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pytest
from builders import World, ts
from conftest import make_settings
from test_bridge import SEEN, book
from test_mrr_rules import paused_for
from test_same_second_events import reorder_ids
from test_sources_hunt import metered_until_february, month

from stripe_churn.errors import DataError
from stripe_churn.metrics.incremental import recompute_changed
from stripe_churn.metrics.runner import recompute
from stripe_churn.settings import Settings
from stripe_churn.store.db import open_store

VIEWS = {
    "mrr_movements": "customer_id, occurred_at, movement, subscription_item_id",
    "customer_mrr": "customer_id, valid_from",
    "item_mrr": "subscription_item_id, valid_from",
    "mrr_bridge": "period_start",
    "scheduled_churn": "subscription_id",
    "churn_reasons": "period_start, churn_type, cancellation_feedback",
    "cohort_revenue_retention": "cohort_month, month",
}


# Each finance view's timestamp columns (the views are the package's own, the same in every store: DESCRIBE binds
# the whole view, a third of reading its rows).
_STAMPS: dict[str, list[str]] = {}


def view_contents(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[Any, ...]]]:
    """Every finance view's rows in a fixed order (timestamps as text)."""
    out = {}
    for view, order in VIEWS.items():
        if view not in _STAMPS:
            _STAMPS[view] = [c[0] for c in con.execute(f"DESCRIBE {view}").fetchall()
                             if c[1] == "TIMESTAMP WITH TIME ZONE"]
        stamps = _STAMPS[view]
        replace = f" REPLACE ({', '.join(f'CAST({c} AS VARCHAR) AS {c}' for c in stamps)})" if stamps else ""
        out[view] = con.execute(f"SELECT *{replace} FROM {view} ORDER BY {order}").fetchall()
    return out


# One scope, or the touched customers split in two shards derived side by side (with a handful of
# customers some shards get none, and a touched customer owns the newest event every shard holds).
SHARDS = pytest.mark.parametrize("shards", [1, 2])
# One scope alone, for the cases whose change is no matter of how customers are split: the tests under SHARDS
# (every derived table, data quality included, in two stores; a moved customer's snapshot) cover the split, and a
# second shard count here doubled their time for nothing they do not already check (the coupon cases' second count
# alone took 13 s of the suite).
ONE_SCOPE = pytest.mark.parametrize("shards", [1])


def derived_contents(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """Every persistent derived table's rows, sorted (as text), plus the finance views. (derived_fx_days runs
    through today's UTC date, which moves at midnight between two recomputes of one test: its days from yesterday
    on are left out.)"""
    out: dict[str, list[str]] = {}
    names = con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
                        "AND schema_name = 'main' AND table_name LIKE 'derived%' ORDER BY 1").fetchall()
    for (table,) in names:
        where = " WHERE day < CAST(timezone('UTC', now()) AS DATE) - 1" if table == "derived_fx_days" else ""
        out[table] = sorted(repr(r) for r in con.execute(f"SELECT * FROM {table}{where}").fetchall())
    out.update({f"view {k}": [repr(r) for r in v] for k, v in view_contents(con).items()})
    return out


def later_sync(w: World, customers: set[str], subscriptions: set[str], since: int) -> World:
    """What a later sync brings: the given customers and subscriptions, the catalogue, the invoices and events
    created from ``since`` on (an incremental sync fetches what changed, not the whole account)."""
    changed = World(account_id=w.account_id)
    for resource, objects in w.objects.items():
        keep = {"customers": customers, "subscriptions": subscriptions}.get(resource)
        changed.objects[resource] = {k: v for k, v in objects.items() if keep is None or k in keep}
    changed.objects["invoices"] = {k: v for k, v in w.objects["invoices"].items() if v["created"] >= since}
    changed.objects["discounts"] = {}
    changed.events = [e for e in w.events if e["created"] >= since]
    return changed


def world_key(*parts: Any) -> str:
    """A digest of worlds, moments and settings: tests (and the shard counts of one test) that load the same worlds
    at the same moments under the same settings share a key, and so the stores built from them."""
    def plain(x: Any) -> Any:
        return [x.account_id, x.objects, x.events, x.fx_rates] if isinstance(x, World) else x
    return hashlib.sha256(json.dumps([plain(p) for p in parts], sort_keys=True, default=str).encode()).hexdigest()


# The stores the tests start from (``before`` recomputed, as a file to copy) and the derived contents of the fresh
# full recompute they are compared with, built once per worlds, moments and settings (the shard counts of a test,
# and the tests whose account is book()'s as it was at SEEN, start from the same store).
_BEFORE: dict[str, Path] = {}
_FULL: dict[str, dict[str, list[str]]] = {}
_MIGRATED: list[Path] = []


def new_store(path: Path) -> duckdb.DuckDBPyConnection:
    """A new store at ``path``, migrated: a copy of an empty store migrated once (migrating a new file takes about
    0.15 s, copying one 0.03 s), as the ``store`` fixture's."""
    if not _MIGRATED or not _MIGRATED[0].exists():
        template = path.parent / "migrated-template" / "migrated.duckdb"
        template.parent.mkdir(exist_ok=True)
        open_store(template).close()
        _MIGRATED[:] = [template]
    assert not Path(f"{_MIGRATED[0]}.wal").exists()
    shutil.copyfile(_MIGRATED[0], path)
    return open_store(path)


def keep_gap(con: duckdb.DuckDBPyConnection, account: str, gap: tuple[int, int] | None) -> None:
    """The cursors a sync that found ``gap`` = (where the stored events end, where they begin again) in the events
    keeps: `events:gap:<end>` and `events:unbroken`, both at where they begin again (coverage starts there)."""
    if gap is not None:
        for stream in (f"events:gap:{gap[0]}", "events:unbroken"):
            con.execute("INSERT INTO sync_cursors (account_id, stream, value, created, done) "
                        "VALUES (?, ?, NULL, ?, false)", [account, stream, gap[1]])


def recomputed_before(tmp_path: Path, before: World, seen: int, settings: Settings,
                      gap: tuple[int, int] | None = None) -> Path:
    """A closed store holding ``before`` loaded at ``seen`` (after ``gap``: keep_gap) and recomputed in full under
    ``settings``, to copy: built once per worlds, moments and settings."""
    start = world_key(before, seen, repr(settings), gap)
    if start not in _BEFORE or not _BEFORE[start].exists():
        path = tmp_path / f"before-{start[:12]}.duckdb"
        con = new_store(path)
        before.load(con, seen_at=seen)
        keep_gap(con, before.account_id, gap)
        recompute(con, settings)
        con.close()
        _BEFORE[start] = path
    assert not Path(f"{_BEFORE[start]}.wal").exists()  # (closed: everything is in the file)
    return _BEFORE[start]


def assert_incremental_equals_full(tmp_path: Path, before: World, changed: World, seen: int, later: int,
                                   shards: int, upgrade: str = "", store: str = "stripe-churn.duckdb",
                                   settings: Settings | None = None,
                                   gap: tuple[int, int] | None = None) -> tuple[int, dict[str, list[str]]]:
    """Load ``before`` at ``seen`` and recompute; load ``changed`` at ``later`` and derive again incrementally in
    ``shards`` shards; compare every derived table and view with a fresh store fully recomputed. ``upgrade``: SQL
    run after the first recompute (derived tables as an older version left them). ``store``: the file name of the
    store derived incrementally (by default the default one, whose database name is no SQL identifier). Returns
    (customers derived again, the derived contents). ``settings``: the rules (by default the defaults). ``gap``: a
    gap in the events that the sync at ``seen`` found (keep_gap; the worlds hold none of its events)."""
    settings = settings or Settings()
    path = tmp_path / store
    shutil.copyfile(recomputed_before(tmp_path, before, seen, settings, gap), path)
    con = open_store(path)
    if upgrade:
        con.execute(upgrade)
    changed.load(con, seen_at=later)
    n = recompute_changed(con, settings, dt.datetime.fromtimestamp(later, tz=dt.UTC), shards=shards)
    incremental = derived_contents(con)
    con.close()

    end = world_key(before, seen, changed, later, repr(settings), gap)
    if end not in _FULL:
        fresh = new_store(tmp_path / "full.duckdb")
        before.load(fresh, seen_at=seen)
        keep_gap(fresh, before.account_id, gap)
        changed.load(fresh, seen_at=later)
        recompute(fresh, settings)
        _FULL[end] = derived_contents(fresh)
        fresh.close()
    full = _FULL[end]
    assert set(incremental) == set(full)
    for name in full:
        assert incremental[name] == full[name], name
    return n, full


@SHARDS
@pytest.mark.parametrize("store", ["stripe-churn.duckdb", "o'brien \"billing\" 2.duckdb"])
def test_every_derived_table_equals_a_full_recompute(world: World, tmp_path: Path, shards: int, store: str) -> None:
    """A billing run later (renewal with usage and seats, a signup, a cancellation taking effect): not only the
    views but every persistent derived table (the monthly ledger, data quality, exchange rate days...) is the
    full recompute's. The store's file names its database: with a hyphen, or quotes, it is no SQL identifier (the
    SQL built with it failed with a syntax error on the default file name, stripe-churn.duckdb). Two trials set to
    cancel after they end (the MRR they convert to, derived_trial_item_mrr): one untouched, one new."""
    w = book(world)
    w.customer("cus_h")
    w.subscribe("sub_h", "cus_h", [("si_h1", "basic_usd", 3)], ts(2024, 5, 2), trial_end=ts(2024, 6, 15))
    w.update("sub_h", ts(2024, 5, 5), cancel_at=ts(2024, 8, 1), canceled_at=ts(2024, 5, 5))
    before = copy.deepcopy(w)
    w.cycle("sub_a", ts(2024, 5, 10), usage={"si_a3": 20_000})
    w.update("sub_a", ts(2024, 5, 22), items=[("si_a1", "pro_usd", 8), ("si_a2", "analytics_usd", 1),
                                              ("si_a3", "api_usd", None)])
    w.customer("cus_f", address={"country": "US"})
    w.subscribe("sub_f", "cus_f", [("si_f1", "pro_usd", 2)], ts(2024, 5, 25))
    w.end("sub_e", ts(2024, 6, 1))
    w.customer("cus_g")
    w.subscribe("sub_g", "cus_g", [("si_g1", "pro_usd", 2)], ts(2024, 5, 28), trial_end=ts(2024, 6, 28))
    w.update("sub_g", ts(2024, 5, 29), cancel_at=ts(2024, 8, 10), canceled_at=ts(2024, 5, 29))
    changed = later_sync(w, {"cus_a", "cus_f", "cus_e", "cus_g"}, {"sub_a", "sub_f", "sub_e", "sub_g"},
                         ts(2024, 5, 10))
    n, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 6, 2), shards, store=store)
    assert n == 4
    assert any("cus_f" in r for r in full["view mrr_movements"])
    # (3 x basic and 2 x pro, paid from the trials' ends)
    at_stake = {sub: [r for r in full["view scheduled_churn"] if f"'{sub}'" in r] for sub in ("sub_g", "sub_h")}
    assert ["Decimal('40.0000')" in r for r in at_stake["sub_g"]] == [True]
    assert ["Decimal('30.0000')" in r for r in at_stake["sub_h"]] == [True]


@ONE_SCOPE
def test_usage_billed_at_a_threshold_after_the_last_sync(world: World, tmp_path: Path, shards: int) -> None:
    """A later sync brings a threshold invoice (90.00 of usage) and the period's own invoice (30.00 more): the
    scope copies what step 40 reads of them, and the period counts 120.00 of usage, as in a full recompute."""
    w = book(world)
    w.cycle("sub_a", ts(2024, 5, 10), usage={"si_a3": 20_000})
    before = copy.deepcopy(w)
    w.threshold("sub_a", ts(2024, 5, 25), {"si_a3": 9_000}, period_start=ts(2024, 5, 10))
    w.cycle("sub_a", ts(2024, 6, 10), usage={"si_a3": 3_000})
    changed = later_sync(w, {"cus_a"}, {"sub_a"}, ts(2024, 5, 21))
    n, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 6, 12), shards)
    assert n == 1
    assert [r for r in full["view mrr_movements"] if "cus_a" in r and "2024-06-10" in r
            and "'resource_contraction'" in r and "Decimal('-80.0000')" in r]


@ONE_SCOPE
def test_a_pause_after_a_payment_failure_after_the_last_sync(world: World, tmp_path: Path, shards: int) -> None:
    """A later sync brings a subscription paused after its payment failed (what paused it is in its state's JSON,
    read for paused states alone): the scope copies that JSON, and the churn is involuntary, as in a full
    recompute."""
    w = book(world)
    before = copy.deepcopy(w)
    w.update("sub_e", ts(2024, 5, 21), status="past_due")
    w.update("sub_e", ts(2024, 5, 28), status="paused",
             status_details=paused_for("final_payment_failure", ts(2024, 5, 28)))
    changed = later_sync(w, {"cus_e"}, {"sub_e"}, ts(2024, 5, 21))
    n, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 5, 30), shards)
    assert n == 1
    assert [r for r in full["view mrr_movements"] if "cus_e" in r and "'cancellation'" in r
            and "'involuntary'" in r and "2024-05-28" in r]


@ONE_SCOPE
def test_a_pause_after_a_payment_failure_seen_only_in_the_snapshot(world: World, tmp_path: Path, shards: int) -> None:
    """A later sync brings a subscription paused after its payment failed with no event of it (what paused it is in
    the subscription's own JSON, read for subscriptions paused now alone): the scope copies that JSON, and the churn
    is involuntary, as in a full recompute."""
    w = book(world)
    before = copy.deepcopy(w)
    w.update("sub_e", ts(2024, 5, 21), status="past_due", event=False)
    w.update("sub_e", ts(2024, 5, 28), status="paused",
             status_details=paused_for("final_payment_failure", ts(2024, 5, 28)), event=False)
    changed = later_sync(w, {"cus_e"}, {"sub_e"}, ts(2024, 5, 21))
    n, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 5, 30), shards)
    assert n == 1
    assert [r for r in full["view mrr_movements"] if "cus_e" in r and "'cancellation'" in r
            and "'involuntary'" in r], full["view mrr_movements"]


@ONE_SCOPE
def test_a_pause_after_a_payment_failure_then_resumed_after_the_last_sync(world: World, tmp_path: Path,
                                                                          shards: int) -> None:
    """A later sync brings a subscription paused after its payment failed and resumed since: what paused it is only
    in the paused state's event (the subscription's own JSON is active again), which the scope copies, and the
    churn is involuntary, as in a full recompute."""
    w = book(world)
    before = copy.deepcopy(w)
    w.update("sub_e", ts(2024, 5, 21), status="past_due")
    w.update("sub_e", ts(2024, 5, 24), status="paused",
             status_details=paused_for("final_payment_failure", ts(2024, 5, 24)))
    w.update("sub_e", ts(2024, 5, 27), status="active", status_details=None)
    changed = later_sync(w, {"cus_e"}, {"sub_e"}, ts(2024, 5, 21))
    n, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 5, 30), shards)
    assert n == 1
    assert [r for r in full["view mrr_movements"] if "cus_e" in r and "'cancellation'" in r
            and "'involuntary'" in r and "2024-05-24" in r], full["view mrr_movements"]


@ONE_SCOPE
def test_a_cancellation_taken_back_after_the_last_sync(world: World, tmp_path: Path, shards: int) -> None:
    """With churn_recognition = "canceled", cus_e's request of 10 May (churned then, 20.00) is taken back on 25 May,
    after the last sync: the event that took it back is read from its JSON in the scope too, and the churn of 10 May
    stays, with a reactivation on 25 May, as in a full recompute."""
    w = book(world)
    before = copy.deepcopy(w)
    w.update("sub_e", ts(2024, 5, 25), cancel_at_period_end=False, cancel_at=None, canceled_at=None,
             cancellation_details={"reason": None, "feedback": None, "comment": None})
    changed = later_sync(w, {"cus_e"}, {"sub_e"}, ts(2024, 5, 21))
    n, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 5, 30), shards,
                                             settings=make_settings("usd", churn_recognition="canceled"))
    assert n == 1
    rows = [r for r in full["view mrr_movements"] if "cus_e" in r and "2024-05" in r]
    assert [("'cancellation'" in r, "'reactivation'" in r, "'switched_service'" in r) for r in rows] == [
        (True, False, True), (False, True, False)]


@ONE_SCOPE
def test_a_cancellation_requested_then_canceled_at_once_after_the_last_sync(world: World, tmp_path: Path,
                                                                           shards: int) -> None:
    """With churn_recognition = "canceled", cus_e's request of 10 May (to cancel on 1 June) is followed on 25 May,
    after the last sync, by an immediate cancel (Stripe's canceled_at moves to 25 May): the scope reads the request's
    stored event, and the one churn stays on 10 May, as in a full recompute."""
    w = book(world)
    before = copy.deepcopy(w)
    w.cancel("sub_e", ts(2024, 5, 25), feedback="too_expensive")
    changed = later_sync(w, {"cus_e"}, {"sub_e"}, ts(2024, 5, 21))
    n, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 5, 30), shards,
                                             settings=make_settings("usd", churn_recognition="canceled"))
    assert n == 1
    rows = [r for r in full["view mrr_movements"] if "cus_e" in r and "'cancellation'" in r]
    assert len(rows) == 1 and "2024-05-10" in rows[0], rows


@ONE_SCOPE
def test_a_customers_discount_removed_by_its_own_event_after_the_last_sync(world: World, tmp_path: Path,
                                                                           shards: int) -> None:
    """A later sync brings the `customer.discount.deleted` event of cus_a's 10% discount (on the customer: no
    subscription event says when it went) and the discount flagged deleted, with no end of its own: the event
    dates its end (35 reads which discount from the event's JSON, which the scope copies), and the discount rows of
    25 May name it, as in a full recompute. (Without it: ended at the sync, an estimate.)"""
    w = book(world)
    w.coupon("tenth", percent_off=10)
    d = w.discount("tenth", ts(2024, 1, 5), customer="cus_a")
    before = copy.deepcopy(w)
    removed = w.event("customer.discount.deleted", ts(2024, 5, 25), d)
    d["deleted"] = True  # (as a sync leaves it: flagged deleted, its last copy kept)
    changed = later_sync(w, {"cus_a"}, {"sub_a"}, ts(2024, 5, 21))
    changed.objects["discounts"] = {d["id"]: d}
    n, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 6, 2), shards)
    assert n == 1
    rows = [r for r in full["view mrr_movements"] if "'cus_a'" in r and "'discount'" in r and "2024-05-25" in r]
    # (one per item of sub_a)
    assert len(rows) == 3 and all(removed["id"] in r for r in rows), full["view mrr_movements"]
    assert not [r for r in full["derived_data_quality"] if "discount_end_estimated" in r]


@ONE_SCOPE
def test_lines_naming_no_item_or_price(world: World, tmp_path: Path, shards: int) -> None:
    """Data quality reads the JSON of lines naming no subscription item or price (a one-time invoice item on a
    renewal is fine, a subscription line naming neither is not): the scopes copy it for those lines."""
    w = book(world)
    before = copy.deepcopy(w)
    w.add_one_time_and_broken_lines(w.cycle("sub_a", ts(2024, 5, 10)), "sub_a")
    changed = later_sync(w, {"cus_a"}, {"sub_a"}, ts(2024, 5, 10))
    _, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 6, 2), shards)
    assert [r for r in full["derived_data_quality"] if "il_" in r and "unusable_object" in r] == [
        r for r in full["derived_data_quality"] if "'il_broken'" in r] != []


def test_most_of_a_large_account_changed_recomputes_everything(world: World, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Above WHOLE_ABOVE changed customers, when they are over a quarter of all, one full pass is quicker than
    copying their rows into the scopes: everything is recomputed (below the quarter, not)."""
    import logging

    from stripe_churn.metrics import incremental

    monkeypatch.setattr(incremental, "WHOLE_ABOVE", 1)
    w = book(world)
    before = copy.deepcopy(w)
    w.cycle("sub_a", ts(2024, 5, 10))
    w.customer("cus_f", address={"country": "US"})
    w.subscribe("sub_f", "cus_f", [("si_f1", "pro_usd", 2)], ts(2024, 5, 25))
    changed = later_sync(w, {"cus_a", "cus_f"}, {"sub_a", "sub_f"}, ts(2024, 5, 10))
    with caplog.at_level(logging.INFO, logger="stripe_churn.metrics.incremental"):
        n, _ = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 6, 2), 1)
    everyone = len(w.objects["customers"])
    found = re.search(r"in full instead of for the changed customers: (\d+) of (\d+) customers changed$",
                      caplog.text, re.M)
    # (the two touched, and one whose change the moved snapshot shows)
    assert found is not None and found.groups() == ("3", str(everyone)) and n == everyone == 6
    monkeypatch.setattr(incremental, "WHOLE_ABOVE", 3)
    (tmp_path / "again").mkdir()
    n, _ = assert_incremental_equals_full(tmp_path / "again", before, changed, SEEN, ts(2024, 6, 2), 1)
    assert n == 3


def coupon_customer(w: World) -> World:
    """Add cus_g: a subscription from 2024-04-25 with a 50% coupon for one month (it ends after SEEN)."""
    w.coupon("co_month", percent_off=50, duration="repeating", duration_in_months=1)
    w.customer("cus_g", address={"country": "US"})
    coupon = w.discount("co_month", ts(2024, 4, 25), customer="cus_g", subscription="sub_g")
    w.subscribe("sub_g", "cus_g", [("si_g1", "pro_usd", 2)], ts(2024, 4, 25), discounts=[coupon["id"]])
    return w


def then_a_new_customer(w: World) -> tuple[World, World]:
    """``w`` as seen at SEEN, and a later sync that brings only a new customer (cus_f, from 2024-05-28)."""
    before = copy.deepcopy(w)
    w.customer("cus_f", address={"country": "US"})
    w.subscribe("sub_f", "cus_f", [("si_f1", "pro_usd", 2)], ts(2024, 5, 28))
    changed = later_sync(w, {"cus_f"}, {"sub_f"}, ts(2024, 5, 28))
    for resource in ("invoices", "invoiceitems"):
        changed.objects[resource] = {k: v for k, v in changed.objects[resource].items() if v["customer"] == "cus_f"}
    return before, changed


def derive_with_cus_g_moved(w: World, tmp_path: Path, shards: int, settings: Settings | None = None,
                            gap: tuple[int, int] | None = None) -> dict[str, list[str]]:
    """``w`` (with coupon_customer's cus_g) synced at SEEN (after ``gap`` in its events, when given), then
    then_a_new_customer's later sync on 2 June, which moves the latest snapshot past cus_g's coupon end: cus_f is
    derived again, cus_g from step 60 on (moved). Asserts that every derived table equals a full recompute's;
    returns the full recompute's contents."""
    before, changed = then_a_new_customer(w)
    n, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 6, 2), shards,
                                             settings=settings, gap=gap)
    assert n == 2  # (cus_f touched, cus_g moved)
    return full


@SHARDS
def test_a_moved_snapshot_shows_an_untouched_customers_change(world: World, tmp_path: Path, shards: int) -> None:
    """Movements after the latest snapshot are left out; when a later sync moves the snapshot past a change of a
    customer it did not touch (a repeating coupon that ran out), that customer is derived again from its stored
    MRR and the change shows, as in a full recompute."""
    w = coupon_customer(book(world))
    full = derive_with_cus_g_moved(w, tmp_path, shards)
    assert sum("cus_g" in r and "2024-05-25" in r for r in full["view mrr_movements"]) == 1


@ONE_SCOPE
def test_a_moved_snapshot_completes_a_window_begun_before_the_last_sync(world: World, tmp_path: Path,
                                                                        shards: int) -> None:
    """A change dated after the latest sync joins no window begun before it (60); when a later sync moves the
    snapshot past it, the customer it did not touch is derived again from step 60 on and the window holds it, as in
    a full recompute. cus_h: 2 seats under 50% off for a month from 20 April 00:30 (it ends 20 May 00:30); a third
    seat 19 May 23:50; synced 20 May 00:00 (SEEN): one row, the seat. The later sync (cus_f alone) moves the
    snapshot to 2 June: the seat and the coupon's end, both dated 19 May 23:50."""
    w = coupon_customer(book(world))
    w.coupon("co_h", percent_off=50, duration="repeating", duration_in_months=1)
    w.customer("cus_h", address={"country": "US"})
    coupon = w.discount("co_h", ts(2024, 4, 20) + 30 * 60, customer="cus_h", subscription="sub_h")
    w.subscribe("sub_h", "cus_h", [("si_h1", "pro_usd", 2)], ts(2024, 4, 20) + 30 * 60, discounts=[coupon["id"]])
    w.update("sub_h", SEEN - 10 * 60, items=[("si_h1", "pro_usd", 3)])
    before, changed = then_a_new_customer(w)
    con = new_store(tmp_path / "at-seen.duckdb")
    before.load(con, seen_at=SEEN)
    recompute(con, Settings())
    at_seen = con.execute("SELECT movement FROM mrr_movements WHERE customer_id = 'cus_h' AND occurred_at > "
                          "'2024-05-01' ORDER BY movement").fetchall()
    con.close()
    assert at_seen == [("seat_expansion",)]
    n, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 6, 2), shards)
    assert n == 3  # (cus_f touched; cus_g and cus_h moved)
    h = [r for r in full["view mrr_movements"] if "cus_h" in r and "2024-05-19 23:50" in r]
    assert len(h) == 2 and any("'discount'" in r for r in h), h


@ONE_SCOPE
def test_a_moved_customer_with_events_in_one_second(world: World, tmp_path: Path, shards: int) -> None:
    """A moved customer (derived again from step 60 on, its events read anew from the store) whose subscription had
    two updates in one second with ids sorting the other way round (seats 2 -> 3, then pro -> basic): every derived
    table and view equals a full recompute's, the change being one movement named by the later event."""
    w = coupon_customer(book(world))
    w.update("sub_g", ts(2024, 5, 2), items=[("si_g1", "pro_usd", 3)])
    w.update("sub_g", ts(2024, 5, 2), items=[("si_g1", "basic_usd", 3)])
    reorder_ids(w, len(w.events) - 2, [1, 0])
    full = derive_with_cus_g_moved(w, tmp_path, shards)
    later = [e["id"] for e in w.events if e["created"] == ts(2024, 5, 2)
             and e["data"]["object"]["items"]["data"][0]["price"]["id"] == "basic_usd"]
    assert [r for r in full["view mrr_movements"] if "cus_g" in r and "2024-05-02" in r and later[0] in r]


@ONE_SCOPE
def test_a_moved_customer_whose_window_has_an_invoice_per_item(world: World, tmp_path: Path, shards: int) -> None:
    """A moved customer whose subscription had two changes 20 minutes apart, one movement window, each billed on its
    own proration invoice (an item added, then the other item's seats raised): each movement names the invoice
    that bills its own item, read from the invoices' lines, in the incremental as in a full recompute."""
    w = coupon_customer(book(world))
    w.update("sub_g", ts(2024, 5, 2, 10), items=[("si_g1", "pro_usd", 2), ("si_g2", "analytics_usd", 1)])
    w.update("sub_g", ts(2024, 5, 2, 10, 20), items=[("si_g1", "pro_usd", 4), ("si_g2", "analytics_usd", 1)])
    billed = {i["id"]: {ln["parent"]["subscription_item_details"]["subscription_item"] for ln in i["lines"]["data"]}
              for i in w.objects["invoices"].values() if i["billing_reason"] == "subscription_update"
              and i["created"] >= ts(2024, 5, 2, 10) and i["customer"] == "cus_g"}
    assert sorted(sorted(v) for v in billed.values()) == [["si_g1"], ["si_g2"]]  # (an invoice per item)
    invoices = {next(iter(items)): iid for iid, items in billed.items()}
    full = derive_with_cus_g_moved(w, tmp_path, shards)
    named = {item: [r for r in full["view mrr_movements"] if "cus_g" in r and "2024-05-02" in r and f"'{item}'" in r]
             for item in ("si_g1", "si_g2")}
    assert all(len(rows) == 1 and invoices[item] in rows[0] for item, rows in named.items()), (invoices, named)


@ONE_SCOPE
def test_a_moved_customer_whose_change_a_pending_item_bills(world: World, tmp_path: Path, shards: int) -> None:
    """A moved customer whose seats were raised with Stripe's default create_prorations before the last sync: the
    prorations still wait as pending invoice items, and the seat expansion names the one that bills the seats
    added, in the incremental (which reads the moved customers' pending items anew) as in a full recompute."""
    w = coupon_customer(book(world))
    w.update("sub_g", ts(2024, 5, 12), items=[("si_g1", "pro_usd", 3)], pending=True)
    charge = next(i for i in w.objects["invoiceitems"].values() if i["customer"] == "cus_g" and i["amount"] > 0)
    full = derive_with_cus_g_moved(w, tmp_path, shards)
    mine = [r for r in full["view mrr_movements"] if "'cus_g'" in r and "2024-05-12" in r]
    assert len(mine) == 1 and "seat_expansion" in mine[0] and charge["id"] in mine[0], mine


@ONE_SCOPE
def test_a_moved_customers_item_removed_in_a_second_of_two_updates(world: World, tmp_path: Path, shards: int) -> None:
    """A moved customer whose subscription had two updates in one second, ids sorting the other way round: an item
    removed, then the other item's seats raised. The removal names the event of that second that step 20 orders
    last, in the incremental (which numbers the moved customers' events anew) as in a full recompute."""
    w = coupon_customer(book(world))
    w.update("sub_g", ts(2024, 5, 1), items=[("si_g1", "pro_usd", 2), ("si_g2", "analytics_usd", 1)])
    w.update("sub_g", ts(2024, 5, 2), items=[("si_g1", "pro_usd", 2)])
    w.update("sub_g", ts(2024, 5, 2), items=[("si_g1", "pro_usd", 3)])
    reorder_ids(w, len(w.events) - 2, [1, 0])
    full = derive_with_cus_g_moved(w, tmp_path, shards)
    removed = [r for r in full["view mrr_movements"] if "'cus_g'" in r and "2024-05-02" in r and "'si_g2'" in r]
    assert len(removed) == 1, removed


@ONE_SCOPE
def test_a_moved_customers_item_removed_in_a_second_of_two_updates_before_a_gap(world: World, tmp_path: Path,
                                                                              shards: int) -> None:
    """As above, the two updates (an item removed, then the other item's seats raised, ids sorting the other way
    round) stored before a gap in the events (3 to 10 May: sub_c2's creation lost), so before coverage: the removal
    names the event of that second that step 20 orders last among those before coverage (derived_early_event_order),
    in the incremental (which numbers the moved customers' events anew) as in a full recompute."""
    w = coupon_customer(book(world))
    w.update("sub_g", ts(2024, 5, 1), items=[("si_g1", "pro_usd", 2), ("si_g2", "analytics_usd", 1)])
    w.update("sub_g", ts(2024, 5, 2), items=[("si_g1", "pro_usd", 2)])
    w.update("sub_g", ts(2024, 5, 2), items=[("si_g1", "pro_usd", 3)])
    reorder_ids(w, len(w.events) - 2, [1, 0])
    raised = w.events[-1]["id"]
    gap = (ts(2024, 5, 3), ts(2024, 5, 10))
    w.events = [e for e in w.events if not gap[0] <= e["created"] < gap[1]]
    full = derive_with_cus_g_moved(w, tmp_path, shards, gap=gap)
    removed = [r for r in full["view mrr_movements"] if "'cus_g'" in r and "2024-05-02" in r and "'si_g2'" in r]
    assert len(removed) == 1 and raised in removed[0], removed
    assert [r for r in full["derived_coverage"] if "2024, 5, 10" in r], full["derived_coverage"]


@ONE_SCOPE
def test_a_moved_customers_cancellation_taken_back(world: World, tmp_path: Path, shards: int) -> None:
    """With churn_recognition = "canceled", a moved customer whose request to cancel (5 May, too_expensive) was taken
    back three days later, both before the last sync: the cancellation carries the request's feedback and the
    reactivation is named by the event that took it back, in the incremental (which derives the moved customers'
    movements from their stored requests taken back) as in a full recompute."""
    w = coupon_customer(book(world))
    w.update("sub_g", ts(2024, 5, 5), cancel_at_period_end=True, cancel_at=ts(2024, 5, 25),
             canceled_at=ts(2024, 5, 5),
             cancellation_details={"reason": "cancellation_requested", "feedback": "too_expensive", "comment": None})
    w.update("sub_g", ts(2024, 5, 8), cancel_at_period_end=False, cancel_at=None, canceled_at=None,
             cancellation_details={"reason": None, "feedback": None, "comment": None})
    taken_back = w.events[-1]["id"]
    full = derive_with_cus_g_moved(w, tmp_path, shards, make_settings("usd", churn_recognition="canceled"))
    rows = [r for r in full["view mrr_movements"] if "'cus_g'" in r and ("2024-05-05" in r or "2024-05-08" in r)]
    assert [("'cancellation'" in r and "'too_expensive'" in r, "'reactivation'" in r and taken_back in r)
            for r in rows] == [(True, False), (False, True)], rows


@ONE_SCOPE
def test_an_event_about_an_object_the_store_lacks_touches_the_customer_it_names(world: World, tmp_path: Path,
                                                                                   shards: int) -> None:
    """The later sync brings a new subscription's events but neither the subscription, its invoice nor its customer
    (another customer's renewal moves the snapshot past it): the customer named inside the events is derived
    again, and gains the subscription's MRR."""
    w = book(world)
    before = copy.deepcopy(w)
    w.customer("cus_h", address={"country": "US"})
    w.subscribe("sub_h", "cus_h", [("si_h1", "pro_usd", 3)], ts(2024, 5, 25))
    w.cycle("sub_a", ts(2024, 5, 26))
    changed = later_sync(w, {"cus_a"}, {"sub_a"}, ts(2024, 5, 25))
    changed.objects["invoices"] = {k: v for k, v in changed.objects["invoices"].items() if v["customer"] != "cus_h"}
    assert "customer.subscription.created" in [e["type"] for e in changed.events]
    n, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 6, 2), shards)
    assert n == 2
    assert any("cus_h" in r and "'new'" in r for r in full["view mrr_movements"])


def unusable_event(w: World, at: int, customer: str) -> dict[str, Any]:
    """A customer.subscription.updated event whose data.object is an invoice of ``customer``: data quality lists
    it as an unusable object."""
    invoice = next(v for v in w.objects["invoices"].values() if v["customer"] == customer)
    return w.event("customer.subscription.updated", at, invoice)


@ONE_SCOPE
def test_data_quality_rows_follow_the_customers_derived_again(world: World, tmp_path: Path, shards: int) -> None:
    """A data-quality row about an object of a touched customer is added; one about an untouched customer's
    object stays as the full recompute left it."""
    w = book(world)
    untouched = unusable_event(w, ts(2024, 5, 12), "cus_b")
    before = copy.deepcopy(w)
    w.cycle("sub_a", ts(2024, 5, 10), usage={"si_a3": 20_000})
    touched = unusable_event(w, ts(2024, 5, 24), "cus_a")
    changed = later_sync(w, {"cus_a"}, {"sub_a"}, ts(2024, 5, 24))
    _, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 6, 2), shards)
    rows = full["derived_data_quality"]
    assert sum(untouched["id"] in r for r in rows) == 1
    assert sum(touched["id"] in r for r in rows) == 1


@ONE_SCOPE
def test_new_and_changed_prices(world: World, tmp_path: Path, shards: int) -> None:
    """A new price is added to the derived catalogue and valued as in a full recompute (here tax-inclusive:
    the new customer's MRR loses the tax its invoice shows, and an item no invoice tells of is a data-quality
    row); a price the store had that changed makes the whole account derived again (every customer may use
    it)."""
    w = book(world)
    w.price("gross_usd", "prod_pro", 1_200)["tax_behavior"] = "inclusive"
    before = copy.deepcopy(w)
    w.price("gross_eur", "prod_pro", 1_200, currency="eur")["tax_behavior"] = "inclusive"
    w.customer("cus_f", currency="eur")
    w.subscribe("sub_f", "cus_f", [("si_f1", "gross_eur", 1)], ts(2024, 5, 25))
    line = list(w.objects["invoices"].values())[-1]["lines"]["data"][0]
    line["taxes"] = [{"amount": 200, "tax_behavior": "inclusive", "type": "tax_rate_details"}]
    w.customer("cus_g", currency="eur")
    w.subscribe("sub_g", "cus_g", [("si_g1", "gross_eur", 1)], ts(2024, 5, 26), invoice=False)
    changed = later_sync(w, {"cus_f", "cus_g"}, {"sub_f", "sub_g"}, ts(2024, 5, 25))
    (tmp_path / "added").mkdir()
    (tmp_path / "changed").mkdir()
    n, full = assert_incremental_equals_full(tmp_path / "added", before, changed, SEEN, ts(2024, 6, 2), shards)
    assert n == 2
    assert any("gross_eur" in r for r in full["derived_price_terms"])
    new = {c: [r for r in full["view mrr_movements"] if "'new'" in r and f"'{c}'" in r] for c in ("cus_f", "cus_g")}
    # (the currency, then the amount in it: 12.00 less 2.00 of VAT; 12.00 where no invoice shows the tax)
    assert len(new["cus_f"]) == 1 and "'eur', Decimal('10.0000')" in new["cus_f"][0], new
    assert len(new["cus_g"]) == 1 and "'eur', Decimal('12.0000')" in new["cus_g"][0], new
    # (and the book's prices name a product, prod_pro, that it does not store: missing_product, for every item)
    assert [r for r in full["derived_data_quality"] if "tax_inclusive_price" in r] == [
        r for r in full["derived_data_quality"] if "si_g1" in r and "missing_product" not in r] != []
    w.objects["prices"]["gross_usd"]["tax_behavior"] = "exclusive"
    changed = later_sync(w, {"cus_f", "cus_g"}, {"sub_f", "sub_g"}, ts(2024, 5, 25))
    n, _ = assert_incremental_equals_full(tmp_path / "changed", before, changed, SEEN, ts(2024, 6, 2), shards)
    assert n == len(w.objects["customers"])
    # (only an amount in another currency added: the price's own terms are as they were)
    w.objects["prices"]["gross_usd"]["tax_behavior"] = "inclusive"
    w.objects["prices"]["gross_usd"]["currency_options"] = {"eur": {"unit_amount": 1_100}}
    (tmp_path / "option").mkdir()
    changed = later_sync(w, {"cus_f", "cus_g"}, {"sub_f", "sub_g"}, ts(2024, 5, 25))
    n, _ = assert_incremental_equals_full(tmp_path / "option", before, changed, SEEN, ts(2024, 6, 2), shards)
    assert n == len(w.objects["customers"])


@ONE_SCOPE
def test_new_changed_and_deleted_coupons(world: World, tmp_path: Path, shards: int) -> None:
    """A new coupon's terms are added to the derived ones and only its customer is derived again; a coupon the
    store had that changed makes the whole account derived again (every customer with a discount from it may
    change; before, the customers not derived again kept the old coupon's terms). A deleted one keeps its last
    terms (its discounts keep running)."""
    w = book(world)
    w.coupon("co_ten", percent_off=10)
    w.objects["subscriptions"]["sub_a"]["discounts"] = [
        w.discount("co_ten", ts(2024, 1, 1), customer="cus_a", subscription="sub_a", did="di_a")["id"]]
    before = copy.deepcopy(w)
    w.coupon("co_five", amount_off=500, currency="usd")
    w.objects["subscriptions"]["sub_c2"]["discounts"] = [
        w.discount("co_five", ts(2024, 5, 25), customer="cus_c", subscription="sub_c2", did="di_c")["id"]]
    changed = later_sync(w, {"cus_c"}, {"sub_c2"}, ts(2024, 5, 25))
    changed.objects["discounts"] = {"di_c": w.objects["discounts"]["di_c"]}
    (tmp_path / "added").mkdir()
    n, full = assert_incremental_equals_full(tmp_path / "added", before, changed, SEEN, ts(2024, 6, 2), shards)
    assert n == 1
    assert [r for r in full["derived_coupon_terms"] if "'co_five'" in r] != []
    assert [r for r in full["view mrr_movements"] if "'cus_c'" in r and "'discount'" in r] != []
    w.objects["coupons"]["co_ten"]["percent_off"] = 20
    (tmp_path / "changed").mkdir()
    changed = later_sync(w, {"cus_c"}, {"sub_c2"}, ts(2024, 5, 25))
    n, full = assert_incremental_equals_full(tmp_path / "changed", before, changed, SEEN, ts(2024, 6, 2), shards)
    assert n == len(w.objects["customers"])
    assert [r for r in full["derived_discount_spans"] if "'di_a'" in r and "Decimal('20" in r] != []
    w.objects["coupons"]["co_ten"] = {"id": "co_ten", "object": "coupon", "deleted": True}
    (tmp_path / "deleted").mkdir()
    changed = later_sync(w, {"cus_c"}, {"sub_c2"}, ts(2024, 5, 25))
    n, full = assert_incremental_equals_full(tmp_path / "deleted", before, changed, SEEN, ts(2024, 6, 2), shards)
    # (a deleted coupon's discounts keep running on the last terms the store saw: nothing else to derive again)
    assert n == 1
    assert [r for r in full["derived_discount_spans"] if "'di_a'" in r and "Decimal('10" in r] != []


@ONE_SCOPE
def test_a_coupon_the_store_lacked_arriving_later_derives_its_discounts_customers_again(
        world: World, tmp_path: Path, shards: int) -> None:
    """A discount names a coupon the store did not have (it counted at full price, `missing_coupon`); a later sync
    brings the coupon alone: the customers whose discounts name it are derived again, as a full recompute would.
    (Nobody was: their MRR stayed undiscounted and the data-quality row stayed.)"""
    w = book(world)
    w.coupon("co_late", percent_off=10)
    w.objects["subscriptions"]["sub_a"]["discounts"] = [
        w.discount("co_late", ts(2024, 1, 1), customer="cus_a", subscription="sub_a", did="di_a")["id"]]
    before = copy.deepcopy(w)
    del before.objects["coupons"]["co_late"]
    changed = later_sync(w, set(), set(), ts(2024, 6, 1))
    n, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 6, 2), shards)
    assert n == 1
    assert [r for r in full["derived_discount_spans"] if "'di_a'" in r and "Decimal('10" in r] != []


def test_a_sync_that_changed_nothing_still_moves_the_latest_snapshot(world: World, tmp_path: Path) -> None:
    """A later sync that finds no change still records how far Stripe's events were read: where the data stands
    (derived_coverage's snapshot, `data_as_of`, the latest complete month's verdict) moves as in a full recompute.
    (It stayed at the sync before.)"""
    from stripe_churn.metrics import queries

    w = book(world)
    stores = []
    for name in ("incremental", "full"):
        shutil.copyfile(recomputed_before(tmp_path, w, SEEN, Settings()), tmp_path / f"{name}.duckdb")
        con = open_store(tmp_path / f"{name}.duckdb")
        later = dt.datetime.fromtimestamp(SEEN, tz=dt.UTC) + dt.timedelta(days=31)
        con.execute("INSERT OR REPLACE INTO sync_cursors (account_id, stream, created, done, updated_at) "
                    "VALUES (?, 'events:complete', ?, true, ?)", [w.account_id, int(later.timestamp()), later])
        if name == "incremental":
            assert recompute_changed(con, Settings(), later) == 0
        else:
            recompute(con, Settings())
        stores.append(con)
    inc, full = stores
    assert derived_contents(inc) == derived_contents(full)
    assert queries.data_as_of(inc) == queries.data_as_of(full)
    assert inc.execute("SELECT snapshot_at FROM derived_coverage").fetchall()[0][0] > dt.datetime.fromtimestamp(
        SEEN + 30 * 86400, tz=dt.UTC)


@ONE_SCOPE
@pytest.mark.parametrize("upgrade", [
    "ALTER TABLE derived_item_mrr DROP COLUMN cancellation_comment",
    "ALTER TABLE derived_mrr_movements ALTER COLUMN mrr_delta TYPE DECIMAL(18, 2)",
    "DROP TABLE derived_sub_churn",
])
def test_derived_tables_of_another_shape_fall_back_to_a_full_recompute(world: World, tmp_path: Path, shards: int,
                                                                      upgrade: str) -> None:
    """Derived tables left by a version whose steps made other columns (a column fewer, another type, a table
    it did not make): the scope's rows cannot replace theirs, and the customers not derived again would keep
    the old shape, so everything is recomputed. (Before, the comparison of the catalogue failed with a binder
    error.)"""
    w = book(world)
    before = copy.deepcopy(w)
    w.cycle("sub_a", ts(2024, 5, 10))
    changed = later_sync(w, {"cus_a"}, {"sub_a"}, ts(2024, 5, 10))
    n, _ = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 6, 2), shards, upgrade)
    assert n == len(w.objects["customers"])


@ONE_SCOPE
def test_transitions_past_today_fall_back_to_a_full_recompute(world: World, tmp_path: Path, shards: int) -> None:
    """The exchange rate per day runs through today or the last transition, whichever is later; when another
    customer's transition ends later than anything the touched customers have (data dated in the future), the
    changed customers alone cannot fix it, so everything is recomputed."""
    year = dt.datetime.now(dt.UTC).year + 3
    w = world
    w.product("prod_core", unit_label="seat", family="core")
    w.price("pro_eur", "prod_core", 2_000, currency="eur")
    w.fx_rates += [("2020-01-01", "eur", 1.08)]
    w.customer("cus_a", currency="eur")
    w.subscribe("sub_a", "cus_a", [("si_a1", "pro_eur", 2)], ts(year, 1, 5))
    w.customer("cus_b", currency="eur")
    w.subscribe("sub_b", "cus_b", [("si_b1", "pro_eur", 1)], ts(year, 1, 10))
    # (without an event: the newest event, which every scoped run reads, is then the touched customer's)
    w.update("sub_b", ts(year, 3, 10), items=[("si_b1", "pro_eur", 4)], event=False)
    before = copy.deepcopy(w)
    w.update("sub_a", ts(year, 2, 1), items=[("si_a1", "pro_eur", 3)])
    changed = later_sync(w, {"cus_a"}, {"sub_a"}, ts(year, 2, 1))
    changed.objects["invoices"] = {k: v for k, v in changed.objects["invoices"].items() if v["customer"] == "cus_a"}
    changed.events = [e for e in changed.events if e["data"]["object"]["customer"] == "cus_a"]
    n, full = assert_incremental_equals_full(tmp_path, before, changed, ts(year, 3, 20), ts(year, 3, 21), shards)
    assert n == 2  # (every customer: the full recompute ran)
    assert max(full["derived_fx_days"]) >= repr(("eur", dt.date(year, 3, 10)))[:24]


@ONE_SCOPE
def test_a_missing_exchange_rate_stops_it_and_leaves_every_result_in_place(world: World, tmp_path: Path,
                                                                           shards: int) -> None:
    """A later sync brings a customer in a currency without exchange rates: one clear error, nothing replaced,
    and nothing left behind (the same call fails the same way again)."""
    w = book(world)
    before = copy.deepcopy(w)
    w.price("pro_jpy", "prod_core", 2_000, currency="jpy")
    w.customer("cus_j", currency="jpy", address={"country": "JP"})
    w.subscribe("sub_j", "cus_j", [("si_j1", "pro_jpy", 1)], ts(2024, 5, 25))
    w.cycle("sub_a", ts(2024, 5, 26))
    changed = later_sync(w, {"cus_a", "cus_j"}, {"sub_a", "sub_j"}, ts(2024, 5, 25))
    shutil.copyfile(recomputed_before(tmp_path, before, SEEN, Settings()), tmp_path / "incremental.duckdb")
    con = open_store(tmp_path / "incremental.duckdb")
    derived = derived_contents(con)
    changed.load(con, seen_at=ts(2024, 6, 2))
    for _ in range(2):
        with pytest.raises(DataError, match=r"^no exchange rate to usd for jpy on .*previous results were left") as err:
            recompute_changed(con, Settings(), dt.datetime.fromtimestamp(ts(2024, 6, 2), tz=dt.UTC), shards=shards)
        assert "\n" not in str(err.value)
        assert derived_contents(con) == derived
    con.close()


def test_the_pipeline_derives_only_the_changed_customers_when_asked(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`recompute = "changed"`: after a billing run, run_once derives again the customers the sync touched
    (those of a sync whose recompute never ran among them), and every derived table and view equals a full
    recompute of the same store; a full sync, new metrics code, new exchange rates or new rules recompute
    everything, and say why. (The sandbox's clock runs behind this machine's, so each subscription counts as
    seen at the latest snapshot, which every sync moves: its customer is derived again each time. Before that
    rule the derived subscriptions of the others kept the old snapshot.)"""
    from stripe_churn.metrics import incremental, runner
    from stripe_churn.pipeline import run_once
    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.settings import SANDBOX_KEY, Rules, Secret
    from stripe_churn.sync import run_sync

    rates = tmp_path / "fx.csv"
    rates.write_text("date,currency,rate\n2000-01-01,eur,1.08\n", encoding="utf-8")
    # (the runs follow each other within seconds: with the margin for a clock set back, every sync's objects
    # would count as new)
    monkeypatch.setattr(incremental, "CLOCK_MARGIN", dt.timedelta(0))

    def runs() -> list[tuple[Any, ...]]:
        with duckdb.connect(str(settings.db), read_only=True) as con:
            return con.execute("SELECT mode, customers, reason FROM metrics_runs ORDER BY started_at").fetchall()

    def equals_a_full_recompute() -> None:
        con = duckdb.connect(str(settings.db))
        try:
            after = derived_contents(con)
            recompute(con, settings)
            assert derived_contents(con) == after
            con.execute("DELETE FROM metrics_runs WHERE started_at = (SELECT max(started_at) FROM metrics_runs)")
        finally:
            con.close()

    with start_in_thread(Simulation(customers=60, months=6, seed=5), api_key=SANDBOX_KEY) as sb:
        settings = Settings(api_key=Secret(SANDBOX_KEY), api_base=sb.url, db=tmp_path / "p.duckdb",
                            rate_limit=1000.0, fx_rates_file=rates, recompute="changed")
        first = run_once(settings, full=True, progress=False)
        total = first.counts["customers"]
        assert (first.recompute, first.recomputed_customers) == ("full", total)
        # a billing run synced without a recompute (stopped, or the process died): the next run derives its
        # customers
        sb.advance(1)
        con = open_store(settings.db)
        try:
            run_sync(settings, con=con, progress=False)
            total = con.execute("SELECT count(*) FROM customers").fetchall()[0][0]
        finally:
            con.close()
        second = run_once(settings, progress=False)
        assert second.recompute == "changed" and 0 < second.recomputed_customers <= total
        assert second.new_movements > 0 and sum(second.counts.values()) == 0
        equals_a_full_recompute()
        # nothing new
        third = run_once(settings, progress=False)
        assert third.recompute == "changed" and third.new_movements == 0
        equals_a_full_recompute()

        sb.advance(1)
        full_sync = run_once(settings, full=True, progress=False)
        rates.write_text("date,currency,rate\n2000-01-01,eur,1.08\n2026-08-01,eur,1.20\n", encoding="utf-8")
        new_rates = run_once(settings, progress=False)
        real = runner.sql_steps()
        monkeypatch.setattr(runner, "sql_steps", lambda: [*real, ("99_note.sql", "SELECT 1;")])
        new_code = run_once(settings, progress=False)
        new_rules = run_once(Settings(**{**settings.__dict__, "rules": Rules(movement_window_minutes=30)}),
                             progress=False)
    assert (full_sync.recompute, full_sync.recompute_reason) == (
        "full", "the sync was a full one: it saw every object again")
    assert (new_rates.recompute, new_rates.recompute_reason) == (
        "full", "the exchange rates changed since the last recompute")
    assert (new_code.recompute, new_code.recompute_reason) == (
        "full", "the metrics code or the store's schema changed since the last recompute")
    assert new_rules.recompute == "full" and "the rules changed" in str(new_rules.recompute_reason)
    assert [r[0] for r in runs()] == ["full", "changed", "changed", "full", "full", "full", "full"]
    assert runs()[1][1] == second.recomputed_customers and runs()[3][1] > total


@ONE_SCOPE
def test_a_pending_update_voided_after_the_last_sync(world: World, tmp_path: Path, shards: int) -> None:
    """An upgrade made with payment_behavior=pending_if_incomplete whose payment failed: at the first sync its
    subscription_update invoice is open and the update pending (the subscription's items unchanged, as its
    event shows); by the next sync Stripe has voided the invoice and the update expired. The customer is
    derived again, every derived table equals a full recompute's, and no upgrade happened at any point."""
    w = book(world)
    t = ts(2024, 5, 19) + 12 * 3600
    sub = w.objects["subscriptions"]["sub_a"]
    items = [(i["id"], i["price"]["id"], i["quantity"]) for i in sub["items"]["data"]]
    inv = w.pending_update("sub_a", t, [(iid, "pro_usd", 8) if iid == "si_a1" else (iid, p, q) for iid, p, q in items])
    assert inv["created"] == t
    before = copy.deepcopy(w)
    inv.update(status="void")
    w.event("invoice.voided", t + 23 * 3600, inv)
    sub.update(pending_update=None)
    w.event("customer.subscription.pending_update_expired", t + 23 * 3600, sub)
    changed = later_sync(w, {"cus_a"}, {"sub_a"}, t)
    n, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, ts(2024, 5, 21), shards)
    assert n == 1
    moments = [r for r in full["view mrr_movements"] if "'cus_a'" in r]
    assert moments and not any("2024-05-19" in r or "2024-05-20" in r for r in moments), moments


@ONE_SCOPE
@pytest.mark.parametrize("then", ["billed", "deleted"])
def test_pending_invoice_items_billed_or_deleted_after_the_last_sync(world: World, tmp_path: Path, shards: int,
                                                                     then: str) -> None:
    """Seats added with Stripe's default create_prorations: at the first sync the prorations are pending invoice
    items, and the seat expansion names the one that bills the seats added. By the next sync they are billed on
    the renewal, or deleted (nothing else of the customer's changed then): the customer is derived again, every
    derived table equals a full recompute's, and the movement names no pending item any more."""
    w = book(world)
    t = ts(2024, 5, 12)
    w.update("sub_a", t, items=[("si_a1", "pro_usd", 7), ("si_a2", "analytics_usd", 1), ("si_a3", "api_usd", None)],
             pending=True)
    charge = next(i for i in w.objects["invoiceitems"].values() if i["amount"] > 0)
    before = copy.deepcopy(w)
    con = duckdb.connect(str(recomputed_before(tmp_path, before, SEEN, Settings())), read_only=True)
    assert con.execute("SELECT movement, source_invoice_id FROM mrr_movements WHERE customer_id = 'cus_a' "
                       "AND occurred_at = to_timestamp(?)", [t]).fetchall() == [("seat_expansion", charge["id"])]
    con.close()
    later = ts(2024, 5, 21)
    if then == "billed":
        w.cycle("sub_a", later, usage={"si_a3": 9_000})
        assert charge["invoice"] is not None
        changed = later_sync(w, {"cus_a"}, {"sub_a"}, later)
    else:
        for item in w.objects["invoiceitems"].values():
            item["deleted"] = True
        changed = later_sync(w, set(), set(), later)
        changed.objects = {"invoiceitems": w.objects["invoiceitems"],
                           **{k: {} for k in w.objects if k != "invoiceitems"}}
    n, full = assert_incremental_equals_full(tmp_path, before, changed, SEEN, later + 3600, shards)
    assert n == 1
    mine = [r for r in full["view mrr_movements"] if "'cus_a'" in r and "2024-05-12" in r]
    assert len(mine) == 1 and "seat_expansion" in mine[0] and "ii_" not in mine[0], mine


@ONE_SCOPE
def test_a_metered_item_gone_before_the_syncs_seen_again(world: World, tmp_path: Path, shards: int) -> None:
    """A metered item known only from invoices (no event stored), removed on 11 February with its subscription's
    next invoice not yet made: the sync of 13 February first saw the subscription without it, and a later sync
    on 21 February lists the same subscription again. Derived again incrementally (every customer of an account
    without events: its coverage starts at the moved snapshot), every derived table equals a full recompute's, and
    the item still ends on the 13th."""
    w = metered_until_february(world)
    w.update("sub_1", month(1, 10), items=[("si_s", "basic", 1)], prorate=False, event=False)
    w.events.clear()
    before = copy.deepcopy(w)
    changed = later_sync(w, {"cus_1"}, {"sub_1"}, month(1, 12))
    n, full = assert_incremental_equals_full(tmp_path, before, changed, month(1, 12), month(1, 20), shards)
    assert n == 1
    ends = [r for r in full["derived_item_history"] if "'si_m'" in r]
    assert len(ends) == 1 and "datetime.datetime(2026, 2, 13, 0, 0, " in ends[0], ends  # (valid_to: month(1, 12))
