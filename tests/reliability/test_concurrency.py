"""Concurrency with real processes: one sync at a time, readers never blocked, migrations all or nothing."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from stripe_churn.daemon import read_state
from stripe_churn.lock import is_locked
from stripe_churn.pipeline import run_once
from stripe_churn.sandbox.server import RunningSandbox, start_in_thread
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.settings import Secret, Settings
from stripe_churn.store.db import MIGRATIONS, open_store

KEY = "sk_test_concurrency"
CLI = [sys.executable, "-m", "stripe_churn"]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    with start_in_thread(Simulation(customers=30, months=5, seed=31), api_key=KEY) as sb:
        yield sb


def env_for(sb: RunningSandbox, db: Path, *, rate_limit: float = 2000.0, log_level: str = "WARNING") -> dict[str, str]:
    return {**os.environ, "STRIPE_API_KEY": KEY, "STRIPE_API_BASE": sb.url, "STRIPE_CHURN_DB": str(db),
            "STRIPE_RATE_LIMIT": str(rate_limit), "STRIPE_CHURN_LOG_LEVEL": log_level}


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def runs(db: Path) -> list[tuple[str, str, object, object]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT mode, status, started_at, finished_at FROM sync_runs ORDER BY started_at").fetchall()
    finally:
        con.close()


def test_two_manual_syncs_and_the_daemon_started_at_once_run_one_at_a_time(sandbox: RunningSandbox,
                                                                          tmp_path: Path) -> None:
    """One syncs at a time; `sync --wait` waits its turn, `sync` without it is refused naming the holder."""
    db = tmp_path / "c.duckdb"
    # 30 requests/s: a full sync of this account takes a few seconds, so the three starts overlap
    env = env_for(sandbox, db, rate_limit=30.0)
    daemon_log = tmp_path / "daemon.log"
    with open(daemon_log, "w", encoding="utf-8") as log:
        daemon = subprocess.Popen([*CLI, "daemon", "--interval-seconds", "2"], stdout=log, stderr=log,
                                  env={**env, "STRIPE_CHURN_LOG_LEVEL": "INFO"})
        waiting, impatient = (subprocess.Popen([*CLI, "sync", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                               text=True, env=env)
                              for args in (["--full", "--wait", "120"], []))
        try:
            (w_out, w_err), (i_out, i_err) = waiting.communicate(timeout=180), impatient.communicate(timeout=180)
            # the daemon syncs on start or, when a manual run had the lock, on a later tick
            wait_for(lambda: (read_state(db) or {}).get("last_run"), 120, "a finished daemon run")
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=60) == 0
        finally:
            for p in (daemon, waiting, impatient):
                if p.poll() is None:
                    p.kill()
                    p.wait()
    daemon_text = daemon_log.read_text(encoding="utf-8")
    assert KEY not in w_out + w_err + i_out + i_err + daemon_text
    assert waiting.returncode == 0, w_err
    assert re.search(r"sync \w+ succeeded", w_out), w_out
    if impatient.returncode == 0:
        assert re.search(r"sync \w+ succeeded", i_out), i_out
    else:
        assert impatient.returncode == 3, i_err
        lines = i_err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: another sync holds"), i_err
        holder = re.search(r"\(pid (\d+)\)", lines[0])
        assert holder and int(holder.group(1)) in {daemon.pid, waiting.pid}, lines[0]
    skipped = daemon_text.count("sync skipped")
    assert (impatient.returncode == 3) + skipped >= 1, "three syncs started at once and none found the lock taken"
    # exactly one at a time: the recorded runs never overlap, and every one finished, but for the daemon's last,
    # which the SIGTERM above may have stopped cleanly (its schedule starts a sync every 2 seconds)
    recorded = runs(db)
    shown = "\n".join(map(repr, recorded)) + "\n" + daemon_text
    *done, last = recorded
    assert all(status == "succeeded" for _, status, _, _ in done), shown
    assert last[1] == "succeeded" or (last[1] == "stopped" and "SIGTERM received" in daemon_text), shown
    succeeded = [r for r in recorded if r[1] == "succeeded"]
    assert len(succeeded) >= 2 + (impatient.returncode == 0), shown  # each manual success and the daemon's
    for (_, _, _, end), (_, _, start, _) in itertools.pairwise(recorded):
        assert end is not None and end <= start, recorded


def test_sql_and_report_during_a_sync_answer_from_the_last_snapshot(sandbox: RunningSandbox,
                                                                    tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    # a run SIGKILLed while copying the snapshot leaves its copy behind; the next run clears it, and only it
    stale, other = tmp_path / "r.duckdb.k3x_9q0a.tmp", tmp_path / "r.duckdb.daemon.json.77.tmp"
    stale.write_bytes(b"half a copy")
    other.write_bytes(b"{}")
    first = run_once(Settings(api_key=Secret(KEY), api_base=sandbox.url, db=db, rate_limit=2000.0), full=True,
                     progress=False)
    published = first.new_movements
    assert not stale.exists() and other.exists()
    assert published > 0
    env = env_for(sandbox, db, rate_limit=25.0)  # a slow full sync: several seconds under the lock
    sync = subprocess.Popen([*CLI, "sync", "--full"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    during = 0
    try:
        wait_for(lambda: is_locked(db) or sync.poll() is not None, 60, "the sync to take the lock")
        while sync.poll() is None and during < 2:
            held_before = is_locked(db)
            q = subprocess.Popen([*CLI, "sql", "SELECT count(*) AS n FROM mrr_movements", "--format", "csv"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            r = subprocess.Popen([*CLI, "report", "--format", "csv"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env)
            (q_out, q_err), (r_out, r_err) = q.communicate(timeout=60), r.communicate(timeout=60)
            held_after = is_locked(db)
            assert q.returncode == 0, q_err
            assert r.returncode == 0, r_err
            assert q_out.split() == ["n", str(published)]  # the snapshot, or the same state re-synced
            assert r_out.splitlines()[0].startswith("period"), r_out[:200]
            during += held_before and held_after
        assert sync.wait(timeout=120) == 0, sync.stderr.read() if sync.stderr else ""
    finally:
        if sync.poll() is None:
            sync.kill()
            sync.wait()
    assert during >= 1, "no query ran while the sync held the lock; make the sync slower"


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from stripe_churn.store import db

    def extra(con):
        con.execute("ALTER TABLE customers ADD COLUMN probe VARCHAR")
        con.execute("UPDATE customers SET probe = 'x'")
        con.execute("CREATE TABLE probe_table AS SELECT 1 AS x")

    def pausing(name, step, pause):
        def run(con):
            step(con)
            if name == pause:
                print("inside", flush=True)
                time.sleep(120)
        return run

    path, pause, with_extra = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
    steps = list(db.MIGRATIONS) + ([("900_probe", extra)] if with_extra else [])
    db.MIGRATIONS[:] = [(n, pausing(n, s, pause)) for n, s in steps]
    db.open_store(path).close()
    print("done", flush=True)
""")


def migrate_in_child(path: Path, pause: str, with_extra: bool) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(path), pause, "1" if with_extra else "0"],
                            stdout=subprocess.PIPE, text=True)


def kill_inside(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "inside"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def schema_of(path: Path) -> tuple[list[str], list[str], list[str]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = sorted(r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall())
        done = sorted(r[0] for r in con.execute("SELECT name FROM schema_migrations").fetchall())
        cols = sorted(r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                                "WHERE table_name = 'customers'").fetchall())
    finally:
        con.close()
    return tables, done, cols


def test_first_migration_killed_midway_is_rolled_back_then_completed(tmp_path: Path) -> None:
    db = tmp_path / "m.duckdb"
    kill_inside(migrate_in_child(db, MIGRATIONS[0][0], with_extra=False))
    tables, done, _ = schema_of(db)
    assert done == [] and tables == ["schema_migrations"], tables  # none of the migration's tables stayed
    con = open_store(db)
    con.close()
    tables, done, _ = schema_of(db)
    assert done == [name for name, _ in MIGRATIONS]
    assert {"customers", "subscriptions", "events", "sync_runs", "sync_cursors"} <= set(tables)


def test_later_migration_killed_midway_keeps_the_data_and_the_earlier_ones(tmp_path: Path) -> None:
    db = tmp_path / "n.duckdb"
    con = open_store(db)
    con.execute("INSERT INTO customers (account_id, id, deleted, raw) VALUES ('acct_1', 'cus_1', false, '{}')")
    con.close()
    before_tables, before_done, before_cols = schema_of(db)
    kill_inside(migrate_in_child(db, "900_probe", with_extra=True))
    assert schema_of(db) == (before_tables, before_done, before_cols)  # no half-added column or table
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT account_id, id FROM customers").fetchall() == [("acct_1", "cus_1")]
    con.close()
    child = migrate_in_child(db, "none", with_extra=True)  # the next open completes it
    assert child.stdout is not None and child.stdout.readline().strip() == "done"
    assert child.wait(timeout=60) == 0
    tables, done, cols = schema_of(db)
    assert done == sorted([*before_done, "900_probe"]) and "probe" in cols and "probe_table" in tables
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT id, probe FROM customers").fetchall() == [("cus_1", "x")]
    con.close()
