"""The sync lock (shared by daemon and manual runs) and the snapshot; run_once against the sandbox."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from stripe_churn.errors import StoreLockedError
from stripe_churn.lock import is_locked, lock_path, sync_lock
from stripe_churn.store.snapshot import publish_snapshot, snapshot_path

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from stripe_churn.lock import sync_lock
    with sync_lock(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def hold_lock(db: Path, seconds: float) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_lock_excludes_and_names_the_holder(tmp_path: Path) -> None:
    db = tmp_path / "x.duckdb"
    holder = hold_lock(db, 30)
    try:
        assert is_locked(db)
        t0 = time.monotonic()
        with pytest.raises(StoreLockedError) as err, sync_lock(db, wait=0.5):
            pass
        waited = time.monotonic() - t0
        assert 0.5 <= waited < 2.0
        msg = str(err.value)
        assert f"pid {holder.pid}" in msg and "--wait" in msg and "since 20" in msg
    finally:
        holder.kill()
        holder.wait()
    # the kernel drops the lock with the process: no stale lock after a crash
    with sync_lock(db, wait=1.0):
        assert is_locked(db)
    assert not is_locked(db)


def test_wait_gets_the_lock_when_the_holder_finishes(tmp_path: Path) -> None:
    db = tmp_path / "y.duckdb"
    holder = hold_lock(db, 0.8)
    try:
        t0 = time.monotonic()
        with sync_lock(db, wait=10):
            assert time.monotonic() - t0 < 5
    finally:
        holder.wait(timeout=10)


@contextlib.contextmanager
def lock_held_by_a_thread(db: Path, by: str | None = None) -> Iterator[threading.Event]:
    """The sync lock, held by another thread of this process until the event yielded is set (or the block ends)."""
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with sync_lock(db, by=by):
            inside.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert inside.wait(5)
        yield release
    finally:
        release.set()
        t.join()


def test_lock_between_threads_of_one_process(tmp_path: Path) -> None:
    """flock works per open file, so two runs inside one process (daemon tick + webhook) also exclude."""
    db = tmp_path / "z.duckdb"
    with lock_held_by_a_thread(db), pytest.raises(StoreLockedError), sync_lock(db):
        pass


def test_a_sync_waits_a_moment_for_status_reading_the_runs(tmp_path: Path) -> None:
    """`status` reads the runs under the sync lock, naming itself a brief holder: a sync (or a daemon's tick)
    starting then waits for it instead of failing or skipping its tick, as it does for another sync."""
    db = tmp_path / "b.duckdb"
    with lock_held_by_a_thread(db, by="status") as release:
        threading.Timer(0.5, release.set).start()
        t0 = time.monotonic()
        with sync_lock(db, wait=0.0):
            assert 0.3 < time.monotonic() - t0 < 5
    # (another sync is no brief holder: no wait)
    with lock_held_by_a_thread(db), pytest.raises(StoreLockedError) as info, sync_lock(db, wait=0.0):
        pass
    assert "status" not in str(info.value)


def test_a_stop_ends_the_wait_for_the_lock(tmp_path: Path) -> None:
    """A daemon's webhook run waits up to a minute for another sync's lock: a stop (SIGTERM) ends that wait,
    where README promises an exit within 10 s; the run is a skip."""
    from stripe_churn.pipeline import run_once
    from stripe_churn.settings import Secret, Settings

    db = tmp_path / "w.duckdb"
    stop = threading.Event()
    with lock_held_by_a_thread(db):
        threading.Timer(0.3, stop.set).start()
        t0 = time.monotonic()
        with pytest.raises(StoreLockedError):
            run_once(Settings(api_key=Secret("sk_test_x"), db=db), wait=60.0, stop=stop, progress=False)
        assert time.monotonic() - t0 < 5


def test_manual_sync_while_locked_waits_then_says_why(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    holder = hold_lock(db, 30)
    try:
        env = {**os.environ, "STRIPE_CHURN_DB": str(db), "STRIPE_API_KEY": "sk_test_sandbox",
               "STRIPE_API_BASE": "http://127.0.0.1:9"}
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "stripe_churn", "sync", "--wait", "1"], capture_output=True,
                           text=True, timeout=60, env=env)
        waited = time.monotonic() - t0
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 3
    assert waited >= 1.0
    assert r.stderr.startswith("error: another sync holds") and f"pid {holder.pid}" in r.stderr
    assert "sk_test_sandbox" not in r.stderr + r.stdout
    assert lock_path(db).exists()


def test_snapshot_is_replaced_atomically(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE t AS SELECT 1 AS v")
    con.execute("CHECKPOINT")
    publish_snapshot(db)
    old = duckdb.connect(str(snapshot_path(db)), read_only=True)
    con.execute("UPDATE t SET v = 2")
    con.execute("CHECKPOINT")
    con.close()
    publish_snapshot(db)
    assert old.execute("SELECT v FROM t").fetchone() == (1,)  # the open reader keeps its snapshot
    old.close()
    new = duckdb.connect(str(snapshot_path(db)), read_only=True)
    assert new.execute("SELECT v FROM t").fetchone() == (2,)
    new.close()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600])
def test_the_snapshot_is_as_readable_as_the_database(tmp_path: Path, mode: int) -> None:
    """The snapshot was its owner's alone (0600, from mkstemp) beside a 0644 database: the finance users README
    sends to it could not open it. It now takes the database's permissions."""
    db = tmp_path / "s.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE t AS SELECT 1 AS v")
    con.close()
    os.chmod(db, mode)
    publish_snapshot(db)
    assert stat.S_IMODE(os.stat(snapshot_path(db)).st_mode) == mode


def test_run_once_against_the_sandbox(tmp_path: Path) -> None:
    """The real pipeline: sync from the sandbox over HTTP, recompute, snapshot; then a billing run."""
    pytest.importorskip("stripe_churn.sync")
    from stripe_churn.pipeline import run_once
    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.settings import SANDBOX_KEY, Secret, Settings

    with start_in_thread(Simulation(customers=40, months=6, seed=5), api_key=SANDBOX_KEY) as sb:
        settings = Settings(api_key=Secret(SANDBOX_KEY), api_base=sb.url, db=tmp_path / "p.duckdb",
                            rate_limit=1000.0)
        first = run_once(settings, full=True, progress=False)
        assert first.counts.get("customers", 0) > 0 and first.new_movements > 0
        assert first.bridge_line is not None
        sb.advance(1)
        second = run_once(settings, progress=False)
    assert second.new_movements > 0
    con = duckdb.connect(str(snapshot_path(settings.db)), read_only=True)
    try:
        n = con.execute("SELECT count(*) FROM mrr_movements").fetchone()
        assert n is not None and n[0] == first.new_movements + second.new_movements
    finally:
        con.close()
    # status names the account and mode the store holds; its cursors are those that cover a time
    from stripe_churn.pipeline import collect_status

    info = collect_status(settings.db)
    assert [r["mode"] for r in info["accounts"]] == ["test"] and info["accounts"][0]["account_id"].startswith("acct_")
    assert info["cursors"] and all(r["covers_until"] is not None for r in info["cursors"]), info["cursors"]


def test_status_lists_the_gaps_in_the_events(tmp_path: Path) -> None:
    """Synced, then again two months later: the events in between are lost (Stripe keeps 30 days), and `status`
    says where the stored ones ended and where the kept ones begin (the changes in between are dated by invoices),
    beside the cursors, which no longer list it."""
    from stripe_churn.pipeline import collect_status, run_once
    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.settings import SANDBOX_KEY, Secret, Settings

    with start_in_thread(Simulation(customers=30, months=6, seed=5), api_key=SANDBOX_KEY) as sb:
        settings = Settings(api_key=Secret(SANDBOX_KEY), api_base=sb.url, db=tmp_path / "g.duckdb",
                            rate_limit=1000.0)
        run_once(settings, full=True, progress=False)
        assert collect_status(settings.db)["event_gaps"] == []
        synced_at = sb.sim.clock
        sb.advance(2)
        assert run_once(settings, progress=False).mode == "fallback"
        now = sb.sim.clock
    info = collect_status(settings.db)
    assert [(r["events_lost_after"].timestamp(), r["events_kept_from"].timestamp()) for r in info["event_gaps"]] == [
        (synced_at, now - 30 * 86_400)]
    assert not [r for r in info["cursors"] if r["stream"].startswith("events:gap:")]


def test_a_stop_during_the_recompute_keeps_results_and_snapshot(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop (the daemon's SIGTERM) while the metrics recompute runs: the synced rows stay committed, the
    recompute is rolled back, the snapshot is not replaced, and the next run recomputes."""
    pytest.importorskip("stripe_churn.sync")
    from stripe_churn.metrics import runner
    from stripe_churn.pipeline import run_once
    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.settings import SANDBOX_KEY, Secret, Settings

    real = runner.sql_steps()
    slow = ("45_slow.sql", "CREATE OR REPLACE TEMP TABLE slow AS SELECT sum(hash(range)) FROM range(1000000000000);")
    stop = threading.Event()

    def steps_with_a_slow_one() -> list[tuple[str, str]]:
        threading.Timer(1.0, stop.set).start()
        return sorted([*real, slow])

    with start_in_thread(Simulation(customers=30, months=5, seed=4), api_key=SANDBOX_KEY) as sb:
        settings = Settings(api_key=Secret(SANDBOX_KEY), api_base=sb.url, db=tmp_path / "p.duckdb",
                            rate_limit=1000.0)
        first = run_once(settings, full=True, progress=False)
        published = snapshot_path(settings.db).stat().st_mtime_ns
        with duckdb.connect(str(settings.db), read_only=True) as con:
            seen_first = con.execute("SELECT max(last_seen_at) FROM subscriptions").fetchone()
        sb.advance(1)
        monkeypatch.setattr(runner, "sql_steps", steps_with_a_slow_one)
        started = time.monotonic()
        stopped = run_once(settings, progress=False, stop=stop)
        assert time.monotonic() - started < 60
        assert stopped.status == "stopped" and sum(stopped.counts.values()) > 0
        assert snapshot_path(settings.db).stat().st_mtime_ns == published
        with duckdb.connect(str(settings.db), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM mrr_movements").fetchone() == (first.new_movements,)
            # (the synced rows were committed)
            assert con.execute("SELECT max(last_seen_at) FROM subscriptions").fetchone() > seen_first  # type: ignore[operator]
        monkeypatch.setattr(runner, "sql_steps", lambda: real)
        third = run_once(settings, progress=False)
    assert third.status != "stopped" and third.new_movements > 0


def test_a_recompute_short_of_memory_says_which_setting_to_raise_and_keeps_everything(tmp_path: Path) -> None:
    """The setting memory_limit caps the recompute (not the sync, which keeps to its own cap): a cap too small
    for it ends the run with one line naming the setting, the synced rows and the previous metrics and snapshot
    stay, and a run with room recomputes as if nothing had happened."""
    pytest.importorskip("stripe_churn.sync")
    from stripe_churn.errors import ConfigError, MemoryLimitError
    from stripe_churn.pipeline import run_once
    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.settings import SANDBOX_KEY, Secret, Settings, replace

    movements = "SELECT * FROM mrr_movements ORDER BY ALL"
    with start_in_thread(Simulation(customers=30, months=5, seed=4), api_key=SANDBOX_KEY) as sb:
        settings = Settings(api_key=Secret(SANDBOX_KEY), api_base=sb.url, db=tmp_path / "p.duckdb",
                            rate_limit=1000.0, memory_limit="2GB")
        first = run_once(settings, full=True, progress=False)
        assert first.new_movements > 0
        published = snapshot_path(settings.db).stat().st_mtime_ns
        with duckdb.connect(str(settings.db), read_only=True) as con:
            before = con.execute(movements).fetchall()
            seen_first = con.execute("SELECT max(last_seen_at) FROM subscriptions").fetchone()
        sb.advance(1)
        with pytest.raises(MemoryLimitError) as err:
            run_once(replace(settings, memory_limit="1MB"), progress=False)
        message = str(err.value)
        assert "\n" not in message and "memory_limit 1MB" in message and "STRIPE_CHURN_MEMORY_LIMIT" in message
        assert snapshot_path(settings.db).stat().st_mtime_ns == published
        with duckdb.connect(str(settings.db), read_only=True) as con:
            assert con.execute(movements).fetchall() == before
            # (the sync ran under its own cap: its rows were committed)
            assert con.execute("SELECT max(last_seen_at) FROM subscriptions").fetchone() > seen_first  # type: ignore[operator]
        # (settings built in code are checked too: nothing reaches DuckDB's SET but a memory size)
        with pytest.raises(ConfigError, match="setting 'memory_limit'"):
            run_once(replace(settings, memory_limit="1GB'; DROP TABLE customers; --"), progress=False)
        again = run_once(settings, progress=False)
    assert again.new_movements > 0
    with duckdb.connect(str(settings.db), read_only=True) as con:
        assert set(before) < set(con.execute(movements).fetchall())


def test_exchange_rates_from_the_file_revalue_customers_as_fx(tmp_path: Path) -> None:
    """The exchange-rate file is written after the sync and before the recompute: a new euro rate mid-history
    is an fx movement for every customer then billed in euros, worth the rate's change; a bad file stops the
    run before anything is synced."""
    from stripe_churn.errors import ConfigError
    from stripe_churn.pipeline import run_once
    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.settings import SANDBOX_KEY, Secret, Settings

    bad = tmp_path / "bad.csv"
    bad.write_text("date,currency,rate\n2026-08-01,eur,1,62\n", encoding="utf-8")
    rates = tmp_path / "fx.csv"
    rates.write_text("date,currency,rate\n2000-01-01,eur,1.08\n2026-08-01,eur,1.62\n", encoding="utf-8")
    with start_in_thread(Simulation(customers=60, months=6, seed=3), api_key=SANDBOX_KEY) as sb:
        settings = Settings(api_key=Secret(SANDBOX_KEY), api_base=sb.url, db=tmp_path / "p.duckdb",
                            rate_limit=1000.0, fx_rates_file=bad)
        with pytest.raises(ConfigError, match=r"bad\.csv.*line 2"):
            run_once(settings, full=True, progress=False)
        assert not settings.db.exists()
        run_once(Settings(**{**settings.__dict__, "fx_rates_file": rates}), full=True, progress=False)
    con = duckdb.connect(str(snapshot_path(settings.db)), read_only=True)
    try:
        # the sandbox's own euro rate (dated at its start) was replaced by the file's; the others stay
        assert con.execute("SELECT CAST(date AS VARCHAR), CAST(rate AS VARCHAR) FROM fx_rates WHERE currency = 'eur' "
                           "ORDER BY date").fetchall() == [("2000-01-01", "1.08000000"), ("2026-08-01", "1.62000000")]
        assert con.execute("SELECT count(*) FROM fx_rates WHERE currency = 'gbp'").fetchone() == (1,)
        fx = con.execute("SELECT customer_id, occurred_at, mrr_before, mrr_after, mrr_delta, currency FROM mrr_movements "
                         "WHERE category = 'fx'").fetchall()
        euro_then = con.execute(
            "SELECT DISTINCT customer_id FROM derived_item_mrr WHERE currency = 'eur' AND mrr_original > 0 "
            "AND valid_from < TIMESTAMPTZ '2026-08-01 00:00:00+00' "
            "AND (valid_to IS NULL OR valid_to > TIMESTAMPTZ '2026-08-01 00:00:00+00')").fetchall()
        bridge = con.execute("SELECT fx FROM mrr_bridge WHERE period_start = DATE '2026-08-01'").fetchone()
    finally:
        con.close()
    assert euro_then and sorted({r[0] for r in fx}) == sorted(r[0] for r in euro_then)
    for _, at, before, after, delta, currency in fx:
        assert at.isoformat() == "2026-08-01T00:00:00+00:00" and currency == "eur"
        assert float(after) == pytest.approx(float(before) * 1.5, abs=0.0002)
        assert float(delta) == pytest.approx(float(after) - float(before), abs=1e-9)
    assert bridge is not None and float(bridge[0]) == pytest.approx(sum(float(r[4]) for r in fx), abs=1e-6)
    # status lists the rates of each currency billed: how many, the latest and since when
    from stripe_churn.pipeline import collect_status

    rates = {r["currency"]: r for r in collect_status(settings.db)["exchange_rates"]}
    assert sorted(rates) == ["eur", "gbp"] and all(r["customers_now"] > 0 for r in rates.values())
    assert (rates["eur"]["rates"], str(rates["eur"]["latest_rate_date"]), float(rates["eur"]["latest_rate"])) == (
        2, "2026-08-01", 1.62)
    assert rates["gbp"]["rates"] == 1 and float(rates["gbp"]["latest_rate"]) == 1.27


def test_the_sandbox_rates_follow_the_reporting_currency(tmp_path: Path) -> None:
    """The sandbox's rates are in US dollars: a run reporting in euros stores them per euro, so the same
    account's MRR in euros is its MRR in dollars divided by the dollar rate of the euro."""
    from stripe_churn.pipeline import run_once
    from stripe_churn.sandbox.fx import SANDBOX_FX_DECIMAL
    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.settings import SANDBOX_KEY, Secret, Settings
    from stripe_churn.sync import sandbox_rates_in

    assert sandbox_rates_in([{"date": "2025-01-01", "currency": "usd", "rate": 1.0},
                             {"date": "2025-01-01", "currency": "eur", "rate": 1.08},
                             {"date": "2025-01-01", "currency": "GBP", "rate": 1.27}], "EUR") == [
        ("2025-01-01", "usd", Decimal("0.92592593")), ("2025-01-01", "eur", Decimal("1.00000000")),
        ("2025-01-01", "gbp", Decimal("1.17592593"))]
    assert sandbox_rates_in([{"date": "2025-01-01", "currency": "usd", "rate": 1.0}], "jpy") == []

    closing = {}
    with start_in_thread(Simulation(customers=40, months=6, seed=5), api_key=SANDBOX_KEY) as sb:
        for cur in ("usd", "eur"):
            settings = Settings(api_key=Secret(SANDBOX_KEY), api_base=sb.url, db=tmp_path / f"{cur}.duckdb",
                                rate_limit=1000.0, currency=cur)
            run_once(settings, full=True, progress=False)
            with duckdb.connect(str(snapshot_path(settings.db)), read_only=True) as con:
                closing[cur] = con.execute("SELECT period_start, closing_mrr FROM mrr_bridge ORDER BY 1").fetchall()
                rates = dict(con.execute("SELECT currency, rate FROM fx_rates").fetchall())
            assert rates[cur] == 1
    assert [p for p, _ in closing["usd"]] == [p for p, _ in closing["eur"]] and closing["usd"][-1][1] > 0
    for (_, usd), (_, eur) in zip(closing["usd"], closing["eur"], strict=True):
        # (each customer is rounded to 4 decimals in each currency)
        assert float(eur) == pytest.approx(float(usd) / float(SANDBOX_FX_DECIMAL["eur"]), abs=0.01)


def test_sync_command_prints_what_changed(tmp_path: Path) -> None:
    """`stripe-churn sync` after a billing run: objects per type, new movements, the current month's line."""
    pytest.importorskip("stripe_churn.sync")
    import json

    from click.testing import CliRunner

    from stripe_churn.cli import cli
    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.settings import SANDBOX_KEY

    with start_in_thread(Simulation(customers=30, months=4, seed=9), api_key=SANDBOX_KEY) as sb:
        env = {"STRIPE_CHURN_DB": str(tmp_path / "s.duckdb"), "STRIPE_API_KEY": SANDBOX_KEY,
               "STRIPE_API_BASE": sb.url, "STRIPE_RATE_LIMIT": "1000"}
        first = CliRunner().invoke(cli, ["sync", "--full", "--format", "json"], env=env)
        assert first.exit_code == 0, first.output
        data = json.loads(first.output)
        assert data["counts"]["customers"] == 30 and data["new_movements"] > 0
        assert data["recompute"] == "full" and data["recomputed_customers"] == 30
        sb.advance(1)
        second = CliRunner().invoke(cli, ["sync"], env={**env, "STRIPE_CHURN_RECOMPUTE": "changed"})
        status = CliRunner().invoke(cli, ["status", "--format", "json"], env=env)
    assert second.exit_code == 0, second.output
    assert re.search(r"sync (incremental|fallback) succeeded: \d+ objects, [1-9]\d* new movements", second.output)
    assert re.search(r"^metrics derived again for [1-9]\d* changed customers$", second.output, re.M)
    assert "Objects synced per type" in second.output and "Current month" in second.output
    assert SANDBOX_KEY not in first.output + second.output
    # status lists the recomputes, newest first
    assert status.exit_code == 0, status.output
    assert [(r["mode"], r["reason"]) for r in json.loads(status.output)["recomputes"]] == [
        ("changed", None), ("full", None)]


def test_ctrl_c_during_a_statement_of_the_main_thread_is_an_interrupt(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB stops a statement of the main thread at a SIGINT and raises RuntimeError('Query interrupted') in
    place of the KeyboardInterrupt: the run ends in the KeyboardInterrupt (the commands' `interrupted`, exit
    130), not in an unexpected RuntimeError."""
    import stripe_churn.sync as sync_module
    from stripe_churn.pipeline import run_once
    from stripe_churn.settings import Secret, Settings

    def interrupted(*args: object, **kwargs: object) -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("Query interrupted") from None

    monkeypatch.setattr(sync_module, "run_sync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_once(Settings(api_key=Secret("sk_test_x"), db=tmp_path / "s.duckdb"), progress=False)


@pytest.mark.parametrize("sigterm, stored", [
    pytest.param(False, "interrupted (Ctrl-C) after the sync", id="ctrl-c"),
    pytest.param(True, "terminated (SIGTERM) after the sync", id="sigterm"),
])
def test_a_run_stopped_after_its_sync_records_what_stopped_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               sigterm: bool, stored: str) -> None:
    """A SIGTERM during the metrics recompute of `sync` (taken as a Ctrl-C, see cli.sigterm_as_ctrl_c) was stored in
    sync_runs, and shown by `status`, as "interrupted (Ctrl-C)", which no one pressed."""
    import stripe_churn.metrics.incremental as incremental
    from stripe_churn.pipeline import collect_status, run_once
    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.settings import SANDBOX_KEY, Secret, Settings

    terminated = threading.Event()

    def stopped(*args: object, **kwargs: object) -> None:
        if sigterm:  # (as the SIGTERM handler does, before it sends the SIGINT)
            terminated.set()
        raise KeyboardInterrupt

    monkeypatch.setattr(incremental, "recompute_after_sync", stopped)
    with start_in_thread(Simulation(customers=2, months=1, seed=5), api_key=SANDBOX_KEY) as sb:
        settings = Settings(api_key=Secret(SANDBOX_KEY), api_base=sb.url, db=tmp_path / "p.duckdb",
                            rate_limit=1000.0, max_retries=0)
        with pytest.raises(KeyboardInterrupt):
            run_once(settings, progress=False, terminated=terminated)
    runs = collect_status(settings.db)["runs"]
    assert [(r["status"], r["error"].split(",")[0]) for r in runs] == [("failed", stored)], runs


def test_status_says_when_the_daemon_it_names_is_gone_or_its_state_file_is_damaged(tmp_path: Path) -> None:
    """A daemon killed with kill -9 leaves its last state, `started`: status adds that no process has its pid.
    A damaged state file is not "never ran"."""
    import json

    from stripe_churn.daemon import state_path
    from stripe_churn.pipeline import collect_status

    db = tmp_path / "s.duckdb"
    assert collect_status(db)["daemon"] == "never ran against this database"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    state = {"pid": gone.pid, "state": "started", "started_at": "2026-12-04T10:00:00+00:00"}
    state_path(db).write_text(json.dumps(state), encoding="utf-8")
    assert collect_status(db)["daemon"] == (f"started (pid {gone.pid}, since 2026-12-04T10:00:00+00:00); no process "
                                            "has that pid now: it ended without writing so (killed?)")
    state_path(db).write_text(json.dumps({**state, "pid": os.getpid()}), encoding="utf-8")
    assert collect_status(db)["daemon"] == f"started (pid {os.getpid()}, since 2026-12-04T10:00:00+00:00)"
    state_path(db).write_text(json.dumps({**state, "state": "stopped"}), encoding="utf-8")
    assert collect_status(db)["daemon"].startswith("stopped (pid")
    assert "no process" not in collect_status(db)["daemon"]
    state_path(db).write_text('{"pid": 12, "sta', encoding="utf-8")
    assert collect_status(db)["daemon"] == (f"its state file {state_path(db)} cannot be read (damaged?); the "
                                            "daemon's next start writes it anew")


def test_status_shows_failed_runs_which_publish_no_snapshot(tmp_path: Path) -> None:
    """`status` read the runs from the snapshot, which only runs that succeed publish: a daemon failing every tick
    showed its last successes. It now reads them from the store when no sync holds it (a run left `running` by a
    killed process is said to have ended), and from the snapshot while a sync runs."""
    from stripe_churn.errors import StripeChurnError
    from stripe_churn.pipeline import collect_status, run_once
    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.settings import SANDBOX_KEY, Secret, Settings
    from stripe_churn.sync import ENDED_UNRECORDED

    with start_in_thread(Simulation(customers=20, months=3, seed=5), api_key=SANDBOX_KEY) as sb:
        settings = Settings(api_key=Secret(SANDBOX_KEY), api_base=sb.url, db=tmp_path / "p.duckdb",
                            rate_limit=1000.0, max_retries=0)
        run_once(settings, full=True, progress=False)
    with pytest.raises(StripeChurnError):  # (the sandbox is gone)
        run_once(settings, progress=False)
    status = collect_status(settings.db)
    assert [r["status"] for r in status["runs"]] == ["failed", "succeeded"], status["runs"]
    assert status["runs"][0]["error"].startswith("nothing is listening at http://127.0.0.1:")
    assert status["lag"].endswith("since the last successful sync")
    with duckdb.connect(str(settings.db)) as con:  # (what a kill -9 leaves)
        con.execute("INSERT INTO sync_runs (run_id, started_at, mode, status) VALUES ('killed', now(), 'full', "
                    "'running')")
    runs = collect_status(settings.db)["runs"]
    assert (runs[0]["run_id"], runs[0]["status"], runs[0]["error"]) == ("killed", "failed", ENDED_UNRECORDED)
    with sync_lock(settings.db):  # a sync runs: the snapshot's runs
        assert [r["status"] for r in collect_status(settings.db)["runs"]] == ["succeeded"]


def test_a_store_gone_from_beside_its_snapshot_is_not_started_anew(tmp_path: Path) -> None:
    """A store removed under a running daemon was rebuilt by the next tick from scratch, without a word: its run
    history and the events older than Stripe's 30 days (which no sync fetches again) gone. The run now stops in
    one line that says how to restore it, and creates nothing."""
    from stripe_churn.errors import StoreError
    from stripe_churn.pipeline import run_once
    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.settings import SANDBOX_KEY, Secret, Settings

    with start_in_thread(Simulation(customers=20, months=3, seed=5), api_key=SANDBOX_KEY) as sb:
        settings = Settings(api_key=Secret(SANDBOX_KEY), api_base=sb.url, db=tmp_path / "p.duckdb", rate_limit=1000.0)
        run_once(settings, full=True, progress=False)
        settings.db.unlink()
        with pytest.raises(StoreError) as info:
            run_once(settings, progress=False)
        assert not settings.db.exists()
        msg = str(info.value)
        assert "\n" not in msg and f"cp {snapshot_path(settings.db)} {settings.db}" in msg, msg
        os.replace(snapshot_path(settings.db), settings.db)  # restored as it says: the runs go on
        assert run_once(settings, progress=False).status == "succeeded"


@pytest.mark.parametrize("case", ["cut short", "another program's database", "no DuckDB file", "missing",
                                  "missing beside its snapshot"])
def test_status_refuses_a_store_sync_would_refuse_in_one_line(tmp_path: Path, case: str) -> None:
    """(`status` printed the snapshot's runs, or `snapshot: none yet`, and exited 0 where `sync` refuses the store)"""
    import duckdb
    from click.testing import CliRunner

    from stripe_churn.cli import cli
    from stripe_churn.store.db import open_store
    from stripe_churn.store.snapshot import publish_snapshot

    db = tmp_path / "s.duckdb"
    if case in ("cut short", "missing beside its snapshot"):
        con = open_store(db)
        con.execute("CREATE TABLE filler AS SELECT range AS i, repeat('x', 200) AS t FROM range(20000)")
        con.execute("CHECKPOINT")
        con.close()
        publish_snapshot(db)
        if case == "cut short":
            with db.open("r+b") as f:
                f.truncate(db.stat().st_size // 3)
        else:
            db.unlink()
    elif case == "another program's database":
        con = duckdb.connect(str(db))
        con.execute("CREATE TABLE sales(a INT)")
        con.close()
    elif case == "no DuckDB file":
        db.write_text("hello\n")
    expected = {"cut short": f"the store {db} is damaged", "another program's database": "not a stripe-churn store",
                "no DuckDB file": "is not a DuckDB database", "missing": f"no store at {db}: run `stripe-churn sync`",
                "missing beside its snapshot": f"the store {db} is missing but its snapshot"}[case]
    for fmt in ("table", "json"):
        result = CliRunner().invoke(cli, ["status", "--format", fmt], env={"STRIPE_CHURN_DB": str(db)})
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert result.output.startswith("error: ") and expected in result.output, result.output
