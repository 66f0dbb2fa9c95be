"""End-to-end sync tests: the real SDK HTTP client against the sandbox server on a free port, real DuckDB files.

After every sync the store must hold exactly what the sandbox serves: the same ids per table, the same raw
JSON (as the server shapes it: embedded lists cut to 10, tiers only when expanded), deleted objects flagged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

from stripe_churn import sync as sync_module
from stripe_churn.errors import AuthError, BadResponseError
from stripe_churn.sandbox.listing import EVENT_RETENTION_S, served_objects
from stripe_churn.sandbox.server import start_in_thread
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.settings import Secret, Settings
from stripe_churn.store.db import open_store
from stripe_churn.store.schema import RAW_TABLES
from stripe_churn.sync import run_sync

KEY = "sk_test_sync_tests"
# Ends on 2026-02-01: one month on (28 days) keeps the last events within the 30-day retention.
FEB = int(datetime(2025, 10, 1, tzinfo=UTC).timestamp())


def sim_small(customers: int = 30, seed: int = 5) -> Simulation:
    return Simulation(customers=customers, months=4, seed=seed, start=FEB)


def settings_for(url: str, db: Path, **kw: Any) -> Settings:
    kw.setdefault("rate_limit", 2000.0)
    return Settings(api_key=Secret(kw.pop("key", KEY)), api_base=url, db=db, max_retries=kw.pop("max_retries", 6),
                    **kw)


def served(sim: Simulation) -> dict[str, dict[str, Any]]:
    """Every live object the sandbox serves now, per raw table, as the sync asks for it."""
    return served_objects(sim, RAW_TABLES)


def stored(con: duckdb.DuckDBPyConnection, table: str, *, deleted: bool = False) -> dict[str, Any]:
    rows = con.execute(f"SELECT id, raw FROM {table} WHERE deleted = ?", [deleted]).fetchall()
    return {r[0]: orjson.loads(r[1]) for r in rows}


def assert_store_equals_sandbox(con: duckdb.DuckDBPyConnection, sim: Simulation) -> None:
    exp = served(sim)
    cutoff = int(sim.clock) - EVENT_RETENTION_S
    for table in RAW_TABLES:
        got = stored(con, table)
        if table == "events":  # events older than retention stay in the store (history), the rest must match
            got = {k: v for k, v in got.items() if v["created"] >= cutoff}
        if table == "invoice_items":  # those billed since stay, no longer pending
            pending = {r[0] for r in con.execute("SELECT id FROM invoice_items WHERE pending").fetchall()}
            got = {k: v for k, v in got.items() if k in pending}
        want = exp[table]
        assert sorted(got) == sorted(want), (
            f"{table}: {len(set(want) - set(got))} missing, {len(set(got) - set(want))} extra "
            f"(e.g. {sorted(set(want) ^ set(got))[:3]})")
        bad = [k for k in want if got[k] != want[k]]
        assert not bad, f"{table}: raw JSON differs for {len(bad)} objects, e.g. {bad[:3]}"
    # objects the sandbox deleted are flagged (when the store had them), never silently kept as live
    for table in ("customers", "products", "prices", "coupons"):
        gone = {oid for oid, o in sim.objects[table].items() if o.get("deleted")}
        assert not gone & set(stored(con, table)), f"{table}: deleted objects still live"


def table_snapshot(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a sync writes except seen timestamps and run bookkeeping."""
    snap = {t: con.execute(f"SELECT id, deleted, CAST(raw AS VARCHAR) FROM {t} ORDER BY id").fetchall()
            for t in RAW_TABLES}
    snap["fx_rates"] = con.execute("SELECT * FROM fx_rates ORDER BY ALL").fetchall()
    return snap


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sync.duckdb"


def test_full_sync_equals_sandbox_then_incremental_and_fallback(db: Path) -> None:
    sim = sim_small()
    with start_in_thread(sim, api_key=KEY) as sb:
        settings = settings_for(sb.url, db)
        first = run_sync(settings, progress=False)
        assert (first.mode, first.status) == ("full", "succeeded")
        con = open_store(db)
        try:
            assert_store_equals_sandbox(con, sim)
            assert con.execute("SELECT count(*) FROM fx_rates").fetchone() == (3,)
            counts = dict(con.execute("SELECT 'x', count(*) FROM customers").fetchall())
            assert counts["x"] == len([c for c in sim.objects["customers"].values() if not c.get("deleted")])
        finally:
            con.close()

        sb.advance(1)  # February: the cursor event is still retained
        second = run_sync(settings, progress=False)
        assert (second.mode, second.status) == ("incremental", "succeeded")
        assert second.counts.get("events", 0) > 0
        with open_store(db) as con:
            assert_store_equals_sandbox(con, sim)

        sb.advance(2)  # two months on: the cursor event is gone -> fallback re-list
        third = run_sync(settings, progress=False)
        assert third.mode == "fallback" and third.status == "succeeded"
        assert third.fallback_reason and "retention" in third.fallback_reason
        with open_store(db) as con:
            assert_store_equals_sandbox(con, sim)
            runs = con.execute("SELECT mode, status, fallback_reason IS NOT NULL FROM sync_runs "
                               "ORDER BY started_at").fetchall()
            assert runs == [("full", "succeeded", False), ("incremental", "succeeded", False),
                            ("fallback", "succeeded", True)]
            # (the gap in the events it found is kept: where the stored ones ended, where the kept ones begin)
            complete, gaps = con.execute(
                "SELECT (SELECT created FROM sync_cursors WHERE stream = 'events:complete'), "
                "list((stream, created)) FILTER (WHERE stream LIKE 'events:gap:%') FROM sync_cursors").fetchone()
        assert len(gaps) == 1 and complete - EVENT_RETENTION_S == gaps[0][1], gaps
        assert int(gaps[0][0].removeprefix("events:gap:")) < gaps[0][1]


def stored_rates(con: duckdb.DuckDBPyConnection) -> set[tuple[str, str, Any]]:
    return {(d.isoformat(), c, r) for d, c, r in con.execute("SELECT date, currency, rate FROM fx_rates").fetchall()}


def test_the_sandboxs_new_exchange_rates_come_with_an_incremental_sync(db: Path) -> None:
    """A rate dated on the first of a month arrives with whatever sync comes next: the incremental sync of a
    billing run within the events' retention (February's 28 days) stores February's rates as a re-listing does.
    (Only the full sync fetched the rates: the month's fx movements were missing and its MRR valued at the month
    before's rates, until some later sync happened to re-list.)"""
    sim = Simulation(customers=30, months=4, seed=5, start=FEB, fx_changes=True)
    with start_in_thread(sim, api_key=KEY) as sb:
        settings = settings_for(sb.url, db)
        assert run_sync(settings, progress=False).mode == "full"
        with open_store(db) as con:
            before = stored_rates(con)
        sb.advance(1)
        second = run_sync(settings, progress=False)
        assert (second.mode, second.status) == ("incremental", "succeeded")
        served = set(sync_module.sandbox_rates_in(sb.app.fx_rates(), "usd"))
        new = {(d, c, r) for d, c, r in served if d == "2026-02-01"}
        assert {c for _, c, _ in new} == {"eur", "gbp", "usd"} and not new & before
        with open_store(db) as con:
            assert stored_rates(con) == served


def test_exchange_rates_of_another_shape_are_a_warning_and_keep_the_stored_ones(
        db: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A server whose /_sandbox/fx_rates answers JSON that is no list of (date, currency, rate): one WARNING, the
    stored rates kept, the sync itself succeeds."""
    sim = sim_small()
    with start_in_thread(sim, api_key=KEY) as sb:
        settings = settings_for(sb.url, db)
        run_sync(settings, progress=False)
        with open_store(db) as con:
            before = stored_rates(con)
        sb.app.fx_rates = lambda: {"date": "2026-02-01", "currency": "eur", "rate": 2}  # type: ignore[method-assign]
        with caplog.at_level(logging.WARNING, logger="stripe_churn.sync"):
            second = run_sync(settings, progress=False)
    assert (second.mode, second.status) == ("incremental", "succeeded")
    assert [r.getMessage() for r in caplog.records if "exchange rates" in r.getMessage()] == [
        "the sandbox's exchange rates are not a list of date, currency and rate; none were stored"]
    with open_store(db) as con:
        assert stored_rates(con) == before and len(before) == 3


def test_a_discount_on_one_item_is_stored_and_counts(db: Path) -> None:
    """A discount on one subscription item comes only with its item (design.md 7: discounts come expanded on
    subscriptions, items, customers and invoices). It was left as an id, so the item's MRR ignored it silently."""
    sim = sim_small(customers=12)
    sub = next(s for s in sim.objects["subscriptions"].values() if s["status"] == "active" and not s["discounts"]
               and s["items"]["data"][0].get("quantity"))
    item = sub["items"]["data"][0]
    coupon = next(c for c in sim.objects["coupons"].values() if c.get("duration") == "forever")
    did = "di_on_one_item"
    sim.discounts[did] = {"id": did, "object": "discount", "start": sub["start_date"], "end": None,
                          "customer": sub["customer"], "subscription": sub["id"], "subscription_item": item["id"],
                          "source": {"type": "coupon", "coupon": coupon["id"]}, "invoice": None,
                          "invoice_item": None, "promotion_code": None, "checkout_session": None}
    item["discounts"] = [did]
    with start_in_thread(sim, api_key=KEY) as sb:
        settings = settings_for(sb.url, db)
        assert run_sync(settings, progress=False).status == "succeeded"
    with open_store(db) as con:
        assert_store_equals_sandbox(con, sim)
        assert con.execute("SELECT subscription_item_id, deleted FROM discounts WHERE id = ?",
                           [did]).fetchall() == [(item["id"], False)]
        from stripe_churn.metrics.runner import recompute

        recompute(con, settings)
        got = con.execute("SELECT bool_and(list_contains(discount_ids, ?)) FROM derived_item_mrr "
                          "WHERE subscription_item_id = ? AND valid_from >= to_timestamp(?) AND mrr_original > 0",
                          [did, item["id"], sub["start_date"]]).fetchall()
        assert got == [(True,)]


def test_item_level_discounts_of_the_simulation_full_incremental_and_fallback(db: Path) -> None:
    """The simulation's own item-level discounts (Simulation(item_discounts=True): redeemed on one item, ended,
    removed with their item): after a full sync, an incremental one and a fallback re-list, the store holds what
    the sandbox serves; a discount that left its item is flagged deleted, whichever way the sync learnt it."""
    sim = Simulation(customers=90, months=4, seed=5, start=FEB, item_discounts=True)
    assert any(d["subscription_item"] for d in sim.discounts.values())
    with start_in_thread(sim, api_key=KEY) as sb:
        settings = settings_for(sb.url, db)
        for months in (0, 1, 2):
            if months:
                sb.advance(months)
            result = run_sync(settings, progress=False)
            assert result.status == "succeeded", result
            with open_store(db) as con:
                assert_store_equals_sandbox(con, sim)
    assert result.mode == "fallback"


def test_incremental_lands_updates_deletions_and_older_events_do_not_win(db: Path) -> None:
    sim = sim_small(customers=40, seed=9)
    with start_in_thread(sim, api_key=KEY) as sb:
        settings = settings_for(sb.url, db)
        run_sync(settings, progress=False)
        sb.advance(1)
        result = run_sync(settings, progress=False)
        assert result.mode == "incremental"
        with open_store(db) as con:
            assert_store_equals_sandbox(con, sim)
            # every subscription the sandbox changed this month carries its newest state
            changed = {e["data"]["object"]["id"] for e in sim.events
                       if e["type"].startswith("customer.subscription.") and e["created"] > FEB}
            assert changed
            # a second run with nothing new is a no-op on the data
            before = table_snapshot(con)
        again = run_sync(settings, progress=False)
        assert again.mode == "incremental" and sum(again.counts.values()) == 0
        with open_store(db) as con:
            assert table_snapshot(con) == before


def test_faults_are_survived(db: Path) -> None:
    sim = sim_small(customers=25, seed=3)
    faults = ["500", "502", "503", "409_lock_timeout", "429_lock_timeout", "reset", "truncated", "html", "drop"]
    with start_in_thread(sim, api_key=KEY, fault_rate=0.2, faults=faults, fault_seed=4) as sb:
        result = run_sync(settings_for(sb.url, db, max_retries=10), progress=False)
        stats = sb.stats()
    assert result.status == "succeeded"
    assert sum(stats["faults"].values()) >= 3, stats["faults"]
    with open_store(db) as con:
        assert_store_equals_sandbox(con, sim)


def test_a_write_beyond_duckdbs_memory_cap_runs_again_under_a_raised_cap(
        db: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # a cap that fits a small store does not fit a large one (its key indexes grow): 2 MB fits nothing here
    monkeypatch.setattr(sync_module, "SYNC_MEMORY_MB", 2)
    sim = sim_small(customers=25, seed=3)
    with start_in_thread(sim, api_key=KEY) as sb, caplog.at_level(logging.WARNING, logger="stripe_churn.sync"):
        result = run_sync(settings_for(sb.url, db), progress=False)
    assert result.status == "succeeded"
    assert any("raised to 4 MB" in r.getMessage() for r in caplog.records)
    with open_store(db) as con:
        assert_store_equals_sandbox(con, sim)


def test_sandbox_rate_limit_429_bursts_are_survived(db: Path) -> None:
    sim = sim_small(customers=20, seed=4)
    with start_in_thread(sim, api_key=KEY, rate_limit=10) as sb:
        result = run_sync(settings_for(sb.url, db, rate_limit=400.0, max_retries=10), progress=False)
        stats = sb.stats()
    assert result.status == "succeeded"
    assert stats["rate_limited"] > 0
    with open_store(db) as con:
        assert_store_equals_sandbox(con, sim)


def test_wrong_key_is_one_clear_error_and_leaves_the_store(db: Path) -> None:
    sim = sim_small(customers=10, seed=2)
    with start_in_thread(sim, api_key=KEY) as sb:
        run_sync(settings_for(sb.url, db), progress=False)
        with open_store(db) as con:
            before = table_snapshot(con)
            cursors = con.execute("SELECT account_id, stream, value, created, done FROM sync_cursors ORDER BY ALL").fetchall()
        sb.advance(1)
        with pytest.raises(AuthError) as info:
            run_sync(settings_for(sb.url, db, key="sk_test_wrong_key_123"), progress=False)
    msg = str(info.value)
    assert "STRIPE_API_KEY" in msg and "sk_test_wrong_key_123" not in msg and "\n" not in msg
    with open_store(db) as con:
        assert table_snapshot(con) == before
        assert con.execute("SELECT account_id, stream, value, created, done FROM sync_cursors ORDER BY ALL").fetchall() == cursors
        assert con.execute("SELECT status FROM sync_runs ORDER BY started_at DESC LIMIT 1").fetchone() == ("failed",)
        assert "sk_test_wrong" not in str(con.execute("SELECT CAST(COLUMNS(*) AS VARCHAR) FROM sync_runs").fetchall())


def sync_stopped_midway(sb: Any, settings: Settings) -> Any:
    """A full sync of the sandbox ``sb`` stopped once 40 requests are in (2-3 s at 50 requests/s): its result."""
    stop = threading.Event()

    def stop_midway() -> None:
        deadline = time.monotonic() + 20
        while sb.stats()["requests"] < 40 and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()

    watcher = threading.Thread(target=stop_midway)
    watcher.start()
    try:
        return run_sync(settings, progress=False, stop=stop)
    finally:
        watcher.join()


def test_stop_then_rerun_resumes_to_the_same_store(tmp_path: Path) -> None:
    sim = Simulation(customers=150, months=12, seed=6)  # ~115 requests: 2-3 s at 50 requests/s
    with start_in_thread(sim, api_key=KEY, latency_ms=5) as sb:
        settings = settings_for(sb.url, tmp_path / "a.duckdb", rate_limit=50.0)
        first = sync_stopped_midway(sb, settings)
        assert first.status == "stopped"
        with open_store(settings.db) as con:
            assert con.execute("SELECT count(*) FROM sync_cursors WHERE stream LIKE 'full:%'").fetchall()[0][0] > 0
        second = run_sync(settings, progress=False)
        assert (second.mode, second.status) == ("full", "succeeded")
        with open_store(settings.db) as con:
            assert_store_equals_sandbox(con, sim)


def _as_an_older_listing_left_it(con: duckdb.DuckDBPyConnection) -> None:
    """What an older stripe-churn's listing left: no record of the listing's version, and coupons without what it
    did not ask for (``applies_to``, expanded since)."""
    con.execute("DELETE FROM sync_cursors WHERE stream IN ('listing', 'full:listing')")
    con.execute("UPDATE coupons SET raw = json_merge_patch(raw, '{\"applies_to\": null}')")


def test_a_store_an_older_version_listed_is_listed_once_more(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """An older stripe-churn listed less (coupons' applies_to, invoices' expanded discounts, prices'
    currency_options), and no event of an incremental sync brings that back: the first sync after an upgrade lists
    everything once more and says why; an unfinished full listing it began starts over instead of resuming. (The
    store kept the old listing's rows, and MRR wrong, until someone ran `sync --full`.)"""
    caplog.set_level("WARNING", logger="stripe_churn.sync")
    sim = Simulation(customers=150, months=12, seed=6)
    with start_in_thread(sim, api_key=KEY, latency_ms=5) as sb:
        settings = settings_for(sb.url, tmp_path / "a.duckdb", rate_limit=50.0)
        assert sync_stopped_midway(sb, settings).status == "stopped"
        with open_store(settings.db) as con:
            _as_an_older_listing_left_it(con)
        assert (run_sync(settings, progress=False).mode, caplog.text.count("begun by another version of stripe-churn")) == (
            "full", 1)
        with open_store(settings.db) as con:
            assert_store_equals_sandbox(con, sim)
            _as_an_older_listing_left_it(con)
        sb.advance(1)
        upgraded = run_sync(settings, progress=False)
        assert (upgraded.mode, upgraded.status) == ("fallback", "succeeded")
        assert "listed by another version of stripe-churn" in (upgraded.fallback_reason or "")
        with open_store(settings.db) as con:
            assert_store_equals_sandbox(con, sim)
        assert run_sync(settings, progress=False).mode == "incremental"


KILL_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from stripe_churn.settings import Secret, Settings
    from stripe_churn.sync import run_sync
    url, db = sys.argv[1], sys.argv[2]
    run_sync(Settings(api_key=Secret(%r), api_base=url, db=Path(db), rate_limit=50.0), progress=False)
""") % KEY


def test_killed_sync_then_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    sim = Simulation(customers=150, months=12, seed=8)
    with start_in_thread(sim, api_key=KEY, latency_ms=5) as sb:
        killed_db = tmp_path / "killed.duckdb"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, sb.url, str(killed_db)], env=env)
        deadline = time.monotonic() + 20
        # kill once a few pages are in (the sync needs a few seconds at 50 requests/s)
        while time.monotonic() < deadline and sb.stats()["requests"] < 60:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with open_store(killed_db) as con:
            assert con.execute("SELECT count(*) FROM sync_cursors WHERE stream = 'full'").fetchall()[0][0] == 1, \
                "the sync finished before it was killed"
        run_sync(settings_for(sb.url, killed_db), progress=False)
        with open_store(killed_db) as con:
            # (the killed run is not `running` for ever, and says the mode it ran in, not the one asked for)
            assert con.execute("SELECT mode, status, error FROM sync_runs ORDER BY started_at").fetchall() == [
                ("full", "failed", sync_module.ENDED_UNRECORDED), ("full", "succeeded", None)]
        clean_db = tmp_path / "clean.duckdb"
        run_sync(settings_for(sb.url, clean_db), progress=False)
    with open_store(killed_db) as a, open_store(clean_db) as b:
        assert table_snapshot(a) == table_snapshot(b)
        assert_store_equals_sandbox(a, sim)


def test_an_interrupted_sync_records_why_and_the_next_resumes(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) in the middle of a full listing of `stripe-churn sync`: the command says what is kept and
    what the next run does, the run is recorded failed with a readable reason (not asyncio's 'CancelledError'),
    and the next run resumes the listing from the stored cursors."""
    from stripe_churn.cli import SYNC_INTERRUPTED

    sim = Simulation(customers=150, months=12, seed=8)
    db = tmp_path / "int.duckdb"
    with start_in_thread(sim, api_key=KEY, latency_ms=5) as sb:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "STRIPE_API_KEY": KEY,
               "STRIPE_API_BASE": sb.url, "STRIPE_CHURN_DB": str(db), "STRIPE_RATE_LIMIT": "50"}
        proc = subprocess.Popen([sys.executable, "-m", "stripe_churn", "sync", "--full"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sb.stats()["requests"] < 60:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert err.splitlines()[-1] == f"interrupted: {SYNC_INTERRUPTED}", err
        assert KEY not in err
        with open_store(db) as con:
            assert con.execute("SELECT status, error FROM sync_runs").fetchall() == [("failed", sync_module.INTERRUPTED)]
            assert con.execute("SELECT count(*) FROM sync_cursors WHERE stream LIKE 'full:%'").fetchone()[0] > 0
        again = run_sync(settings_for(sb.url, db), progress=False)
    assert (again.mode, again.status) == ("full", "succeeded")
    with open_store(db) as con:
        assert_store_equals_sandbox(con, sim)


def test_cursor_event_past_retention_but_events_complete_within_it_continues(db: Path) -> None:
    # Ends on 2025-11-01: one month on is exactly 30 days, so the newest event of the first sync (created before
    # the clock) has left the 30-day window although every event after it is still kept.
    sim = Simulation(customers=30, months=4, seed=12, start=int(datetime(2025, 7, 1, tzinfo=UTC).timestamp()))
    with start_in_thread(sim, api_key=KEY) as sb:
        settings = settings_for(sb.url, db)
        assert run_sync(settings, progress=False).status == "succeeded"
        newest_then = max(int(e["created"]) for e in sim.events)
        sb.advance(1)
        assert newest_then < sim.clock - EVENT_RETENTION_S, "the cursor event must be past retention"
        second = run_sync(settings, progress=False)
        assert (second.mode, second.status, second.fallback_reason) == ("incremental", "succeeded", None)
        assert second.counts.get("events", 0) > 0
        with open_store(db) as con:
            assert_store_equals_sandbox(con, sim)
        sb.advance(2)  # events were last listed 2 months ago: some are lost for good -> re-list
        third = run_sync(settings, progress=False)
        assert third.mode == "fallback" and third.fallback_reason and "retention" in third.fallback_reason
        with open_store(db) as con:
            assert_store_equals_sandbox(con, sim)


def test_full_sync_into_a_store_of_another_state_counts_distinct_objects(db: Path) -> None:
    # the store was filled from the same account a month later (higher versions, objects that do not exist now)
    later = sim_small(customers=25, seed=13)
    with start_in_thread(later, api_key=KEY) as sb:
        sb.advance(1)
        run_sync(settings_for(sb.url, db), progress=False)
    with open_store(db) as con:
        before = {t: set(stored(con, t)) for t in ("customers", "subscriptions", "invoices")}
    now = sim_small(customers=25, seed=13)
    with start_in_thread(now, api_key=KEY) as sb:
        result = run_sync(settings_for(sb.url, db), full=True, progress=False)
    assert (result.mode, result.status) == ("full", "succeeded")
    with open_store(db) as con:
        assert_store_equals_sandbox(con, now)
    exp = served(now)
    for table, had in before.items():
        # every object listed once, plus each stored one that is gone now, flagged once
        assert result.counts[table] == len(exp[table]) + len(had - set(exp[table])), table


def test_an_object_listed_twice_by_a_first_full_sync_is_stored_once(db: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A first listing inserts without looking anything up; a copy of an object it already committed (a page
    served again) rolls that transaction back and the rest of the listing goes by the stages and one merge."""
    import stripe_churn.sync as sync_module

    monkeypatch.setattr(sync_module, "TX_OBJECTS", 100)  # a few pages per transaction
    original = sync_module._Sync._page_batch
    first: dict[str, Any] = {}

    async def page_batch(self: Any, table: str, data: list[tuple[bytes, Any]], version: int) -> Any:
        batch = await original(self, table, data, version)
        if table == "customers" and data and not first:
            first.update(orjson.loads(data[0][0]))
        elif table == "invoices" and first:
            batch.add("customers", dict(first), version)  # the customer again, on a later page
        return batch

    monkeypatch.setattr(sync_module._Sync, "_page_batch", page_batch)
    sim = sim_small(customers=25, seed=3)
    caplog.set_level("INFO", logger="stripe_churn.sync")
    with start_in_thread(sim, api_key=KEY) as sb:
        result = run_sync(settings_for(sb.url, db), progress=False)
    assert (result.mode, result.status) == ("full", "succeeded") and first
    assert "listed twice" in caplog.text
    with open_store(db) as con:
        assert_store_equals_sandbox(con, sim)
        assert con.execute("SELECT count(*) FROM customers WHERE id = ?", [first["id"]]).fetchone() == (1,)
        # the stages are gone once the full sync completed
        assert not con.execute("SELECT table_name FROM duckdb_tables() WHERE table_name LIKE 'sync_stage_%'").fetchall()


def test_a_slice_split_while_its_page_is_on_the_way_lists_each_object_once(
        db: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The page answers with objects that, after the split, belong to the new lower slice: they are left to it,
    so the first listing's plain inserts never meet an object twice (and nothing is lost)."""
    import stripe_churn.sync as sync_module

    orig_fetch, orig_run = sync_module._Sync._fetch_page, sync_module._Sync._run_slice
    split: list[int] = []

    async def run_slice(self: Any, sl: Any, version: int) -> None:
        self.test_version = version
        await orig_run(self, sl, version)

    async def fetch_page(self: Any, sl: Any) -> tuple[list[tuple[bytes, Any]], bool]:
        data, more = await orig_fetch(self, sl)
        if not split and sl.stream.name == "invoices" and sl.hi is not None and len(data) > 20:
            mid = int(orjson.loads(data[len(data) // 2][0])["created"])  # cut inside the page that is on its way
            low = sync_module._Slice(sl.stream, sl.lo, mid - 1, None, key=f"full:{sl.stream.name}:{sl.lo}:{mid - 1}",
                                     pos=mid - 1, density=sl.rate())
            sl.lo = mid
            cut = sync_module.Batch()
            cut.cursors = [(sl.key, sl.after, sl.lo, False), (low.key, None, low.lo, False)]
            await self._put(cut)
            self._start(low, self.test_version)
            split.append(mid)
        return data, more

    monkeypatch.setattr(sync_module._Sync, "_run_slice", run_slice)
    monkeypatch.setattr(sync_module._Sync, "_fetch_page", fetch_page)
    monkeypatch.setattr(sync_module, "slice_count", lambda *a, **k: 1)  # no splits but the one above
    monkeypatch.setattr(sync_module, "TX_OBJECTS", 1)  # every page its own transaction
    sim = sim_small(customers=120, seed=4)  # a few pages of invoices
    caplog.set_level("INFO", logger="stripe_churn.sync")
    with start_in_thread(sim, api_key=KEY) as sb:
        result = run_sync(settings_for(sb.url, db), progress=False)
    assert result.status == "succeeded" and split
    assert "listed twice" not in caplog.text
    with open_store(db) as con:
        assert_store_equals_sandbox(con, sim)


def test_pending_invoice_items_full_incremental_and_fallback(db: Path) -> None:
    """Simulation(deferred_prorations=True): the prorations of some changes to annual plans wait as pending
    invoice items for the renewal. Every sync, whatever its mode, stores the pending ones as the sandbox serves
    them; those invoiced since are no longer pending, seen again by that run, their JSON as last listed."""
    # ends on 2026-02-01: one month on (28 days) is incremental, the next (31 days) a fallback re-list
    sim = Simulation(customers=300, months=12, seed=11, start=int(datetime(2025, 2, 1, tzinfo=UTC).timestamp()),
                     deferred_prorations=True)

    def pending_now() -> dict[str, Any]:
        return {k: o for k, o in sim.objects["invoiceitems"].items() if o["invoice"] is None}

    def stored_items(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[Any, ...]]:
        rows = con.execute("SELECT id, pending, deleted, last_seen_at, raw FROM invoice_items").fetchall()
        return {r[0]: (r[1], r[2], r[3], orjson.loads(r[4])) for r in rows}

    def assert_pending_as_served(got: dict[str, tuple[Any, ...]]) -> None:
        want = pending_now()
        assert {k: v[3] for k, v in got.items() if v[0]} == want
        assert not [k for k, v in got.items() if v[1]], "an invoice item is never taken for deleted"

    with start_in_thread(sim, api_key=KEY) as sb:
        settings = settings_for(sb.url, db)
        first = run_sync(settings, progress=False)
        assert (first.mode, first.status) == ("full", "succeeded")
        before = pending_now()
        assert before and first.counts["invoice_items"] == len(before)
        with open_store(db) as con:
            was = stored_items(con)
            assert_pending_as_served(was)

        sb.advance(1)
        now = pending_now()
        invoiced, new = set(before) - set(now), set(now) - set(before)
        assert invoiced and new, "the seed must bill some pending items and defer new ones within the month"
        second = run_sync(settings, progress=False)
        assert (second.mode, second.status) == ("incremental", "succeeded")
        assert second.counts["invoice_items"] == len(invoiced) + len(new)
        with open_store(db) as con:
            got = stored_items(con)
            assert_pending_as_served(got)
            assert_store_equals_sandbox(con, sim)
            for oid in invoiced:
                pending, deleted, seen, raw = got[oid]
                assert (pending, deleted, raw) == (False, False, was[oid][3]) and seen > was[oid][2]
                # billed: one of its invoice's lines now (stored from that invoice)
                assert con.execute("SELECT count(*) FROM invoice_lines WHERE raw->>'$.parent.subscription_item_details"
                                   ".invoice_item' = ?", [oid]).fetchone() == (1,)
            assert all(got[oid][2] == was[oid][2] for oid in set(before) & set(now)), "unchanged: not written"

        again = run_sync(settings, progress=False)
        assert again.mode == "incremental" and "invoice_items" not in again.counts
        with open_store(db) as con:
            assert stored_items(con) == got

        sb.advance(1)
        third = run_sync(settings, progress=False)
        assert (third.mode, third.status) == ("fallback", "succeeded")
        with open_store(db) as con:
            assert_pending_as_served(stored_items(con))
            assert_store_equals_sandbox(con, sim)


def _doctor_pages(monkeypatch: pytest.MonkeyPatch, path: str, change: Any) -> None:
    """Every list page the full sync fetches for ``path`` (first pages included) with its objects changed by
    ``change`` (parsed objects in, JSON-able values out)."""
    import msgspec

    from stripe_churn.stripe_api.client import StripeRaw

    original = StripeRaw.get_page

    async def get_page(self: Any, p: str, params: Any = None) -> Any:
        page = await original(self, p, params)
        if p == path and page.data:
            page.data = [msgspec.Raw(orjson.dumps(o)) for o in change([orjson.loads(bytes(r)) for r in page.data])]
        return page

    monkeypatch.setattr(StripeRaw, "get_page", get_page)


@pytest.mark.parametrize(("path", "change", "said"), [
    ("/v1/customers", lambda objs: [o["id"] for o in objs], "a customer that is not an object"),
    ("/v1/customers", lambda objs: ["Bearer sk_live_LEAKCANARY1234567890", *objs],
     "a customer that is not an object (\"Bearer sk_live_…\")"),
    ("/v1/invoices", lambda objs: [{k: v for k, v in o.items() if k != "id"} if i == 1 else o
                                   for i, o in enumerate(objs)], "an invoice without an id"),
    ("/v1/subscriptions", lambda objs: [{**o, "items": "si_1"} for o in objs], "whose items are not a list object"),
    ("/v1/invoices", lambda objs: [{**o, "lines": {"object": "list", "data": [5], "has_more": False}} for o in objs],
     "an invoice line that is not an object"),
], ids=["strings", "a-key-echoed", "invoice-without-id", "items-a-string", "lines-of-numbers"])
def test_a_malformed_list_page_is_one_line_naming_the_endpoint_and_nothing_of_it_is_stored(
        db: Path, monkeypatch: pytest.MonkeyPatch, path: str, change: Any, said: str) -> None:
    _doctor_pages(monkeypatch, path, change)
    sim = sim_small(customers=10, seed=2)
    with start_in_thread(sim, api_key=KEY) as sb, pytest.raises(BadResponseError) as info:
        run_sync(settings_for(sb.url, db, max_retries=0), progress=False)
    msg = str(info.value)
    assert said in msg and f"GET {path}" in msg and "nothing of that answer was stored" in msg and "\n" not in msg
    table = path.rsplit("/", 1)[1]
    with open_store(db) as con:
        assert con.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        if table == "invoices":
            assert con.execute("SELECT count(*) FROM invoice_lines").fetchone() == (0,)
        status, error = con.execute("SELECT status, error FROM sync_runs").fetchone()
        assert status == "failed" and said in error


@contextlib.contextmanager
def synced_once(db: Path) -> Iterator[tuple[Any, Settings, dict[str, list[tuple[Any, ...]]]]]:
    """A small sandbox account synced once into ``db``: (the sandbox, the settings, the store's rows then)."""
    with start_in_thread(sim_small(customers=10, seed=2), api_key=KEY) as sb:
        settings = settings_for(sb.url, db, max_retries=0)
        run_sync(settings, progress=False)
        with open_store(db) as con:
            before = table_snapshot(con)
        yield sb, settings, before


def test_a_json_object_that_is_no_list_page_fails_a_full_sync_and_flags_nothing_deleted(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 200 whose body is a JSON object but no list page (a proxy's or maintenance page's {"message": ...}) is
    a bad answer, not an empty list: a full sync read it as no customers at all and flagged every stored one
    deleted, then said it succeeded."""
    from stripe_churn.stripe_api import client as client_module

    with synced_once(db) as (_, settings, before):
        original = client_module.decode_page

        def maintenance(body: bytes) -> Any:
            customers = b'"object":"customer"' in body or b'"object": "customer"' in body
            return original(b'{"message": "down for maintenance"}' if customers else body)

        monkeypatch.setattr(client_module, "decode_page", maintenance)
        with pytest.raises(BadResponseError) as info:
            run_sync(settings, full=True, progress=False)
    msg = str(info.value)
    assert "not a list page" in msg and "GET /v1/customers" in msg and "\n" not in msg
    with open_store(db) as con:
        assert con.execute("SELECT count(*) FROM customers WHERE deleted").fetchone() == (0,)
        assert table_snapshot(con) == before


def _events_without_created(page: Any) -> Any:
    if page.get("data"):
        page["data"] = [{k: v for k, v in e.items() if k != "created"} for e in page["data"]]
    return page


@pytest.mark.parametrize(("doctor", "said"), [
    (_events_without_created, "without a created time"),
    # (a JSON object that is no list page, read as no events, recorded the events complete up to the server's time)
    (lambda page: {"message": "down for maintenance"}, "JSON that is not a list page"),
], ids=["events-without-created", "no-list-page"])
def test_a_malformed_events_page_is_one_line_and_moves_no_cursor(db: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 doctor: Any, said: str) -> None:
    from stripe_churn.stripe_api.client import StripeRaw

    with synced_once(db) as (sb, settings, before):
        with open_store(db) as con:
            cursors = con.execute("SELECT stream, value, created FROM sync_cursors ORDER BY ALL").fetchall()
        sb.advance(1)
        original = StripeRaw.get

        async def get(self: Any, p: str, params: Any = None) -> Any:
            page = await original(self, p, params)
            return doctor(page) if p == "/v1/events" else page

        monkeypatch.setattr(StripeRaw, "get", get)
        with pytest.raises(BadResponseError) as info:
            run_sync(settings, progress=False)
    msg = str(info.value)
    assert said in msg and "GET /v1/events" in msg and "\n" not in msg
    with open_store(db) as con:
        assert table_snapshot(con) == before
        assert con.execute("SELECT stream, value, created FROM sync_cursors ORDER BY ALL").fetchall() == cursors


INTERRUPT_SCRIPT = textwrap.dedent("""
    import asyncio, os, signal
    from stripe_churn.sync import _run_interruptible
    done = []

    async def run():
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: the run is cancelled
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            os.kill(os.getpid(), signal.SIGINT)  # the second, while the run commits what it has and closes
            for _ in range(5):
                await asyncio.sleep(0.02)
                await asyncio.to_thread(lambda: None)
            done.append("cleanup")
            raise

    try:
        _run_interruptible(run())
    except KeyboardInterrupt:
        print("interrupted", done)
        raise SystemExit(130)
""")


def test_a_second_ctrl_c_does_not_break_into_the_interrupted_runs_cleanup() -> None:
    """asyncio.run raises KeyboardInterrupt into the event loop at a second SIGINT, wherever it is: between a
    future's end and its task's wakeup that task waits for ever (a sync hung after Ctrl-C pressed twice). Here
    the second one is ignored, the cleanup ends, and the run ends in one KeyboardInterrupt."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", INTERRUPT_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert proc.stdout.strip() == "interrupted ['cleanup']" and proc.stderr == ""


def test_a_cancelled_writer_ends_instead_of_waiting_for_more_pages(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled while its write runs (the run's shutdown after Ctrl-C), the writer ends: it used to take the
    cancel for a failed write and wait on its queue for ever, and asyncio.run's shutdown with it."""
    monkeypatch.setattr(sync_module._Sync, "_apply", lambda self, batches: time.sleep(0.3))

    async def scenario(engine: Any) -> str:
        writer = asyncio.create_task(engine._writer())
        await engine.queue.put(sync_module.Batch())
        await asyncio.sleep(0.1)  # the write is under way
        writer.cancel()
        try:
            await asyncio.wait_for(writer, 5)
        except asyncio.CancelledError:
            return "ended"
        except TimeoutError:
            return "waits for ever"
        return "finished"

    with open_store(db) as con:
        engine = sync_module._Sync(settings_for("http://127.0.0.1:9", db), con, False, None)
        assert asyncio.run(scenario(engine)) == "ended"
        assert engine.write_error is None


def test_a_stop_is_not_held_up_by_a_server_that_never_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's SIGTERM sets the stop event; a server that takes connections and never answers used to hold
    the sync for timeout x (retries + 1) (3 min 45 s seen with the defaults, where README promises 10 s). The
    request on the way now gets STOP_GRACE_S to answer after the stop, no retry starts, and the run is recorded
    stopped. (The grace is cut to 1 s here: against the 30 s timeout a held-up stop still shows, and the test does
    not wait out the default 5 s of a server that never answers.)"""
    import socket

    from stripe_churn.stripe_api import client

    monkeypatch.setattr(client, "STOP_GRACE_S", 1.0)
    held: list[socket.socket] = []
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def take() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])  # read nothing, answer nothing

    threading.Thread(target=take, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    db = tmp_path / "hung.duckdb"
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    t0 = time.monotonic()
    try:
        result = run_sync(settings_for(url, db, timeout_seconds=30.0, max_retries=2), progress=False, stop=stop)
    finally:
        server.close()
        for c in held:
            c.close()
    took = time.monotonic() - t0
    assert result.status == "stopped" and held, result
    assert took < 1.0 + client.STOP_GRACE_S + 5.0, took  # (before: 90 s, three attempts of 30 s)
    with open_store(db) as con:
        assert con.execute("SELECT status FROM sync_runs").fetchall() == [("stopped",)]


def test_a_connected_accounts_objects_from_before_it_was_connected_are_listed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With STRIPE_ACCOUNT, /v1/account's `created` is when the account was connected to the platform (a Standard
    account connected later holds older objects). It was the listing's lower bound: a full sync stored the first
    page of each stream and nothing older, and said it succeeded."""
    import stripe_churn.sandbox.server as server

    sim = Simulation(customers=120, months=12, seed=8)
    connected = int(sim.clock) - 60 * 86400  # (two months ago: most objects are older)
    original = server.SandboxApp._account
    monkeypatch.setattr(server.SandboxApp, "_account",
                        lambda self: orjson.dumps({**orjson.loads(original(self)), "created": connected}))
    db = tmp_path / "connected.duckdb"
    with start_in_thread(sim, api_key=KEY) as sb:
        result = run_sync(settings_for(sb.url, db, account=sim.account_id), full=True, progress=False)
    assert result.status == "succeeded"
    with open_store(db) as con:
        assert_store_equals_sandbox(con, sim)
