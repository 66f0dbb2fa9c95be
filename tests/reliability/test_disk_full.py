"""A write that finds no room (a full disk, a quota, a file size limit): one line that says so, nothing lost.

DuckDB gives a database up after such a write ("database has been invalidated"), and a failed ROLLBACK after it
used to hide the cause; the committed transactions are in the file and its write-ahead log. The real command
runs here under a file size limit (RLIMIT_FSIZE: the write fails with EFBIG, as a full disk fails with ENOSPC),
against the sandbox.
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from test_sync import assert_store_equals_sandbox, settings_for

from stripe_churn import sync as sync_module
from stripe_churn.errors import DiskFullError, StoreError, disk_full, store_failure
from stripe_churn.pipeline import run_once
from stripe_churn.sandbox.server import start_in_thread
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.store.db import open_store, transaction
from stripe_churn.store.snapshot import snapshot_path
from stripe_churn.sync import run_sync

KEY = "sk_test_disk_full"


def test_a_sync_that_runs_out_of_room_says_so_and_the_next_run_loses_nothing(tmp_path: Path) -> None:
    sim = Simulation(customers=100, months=12, seed=41)
    db = tmp_path / "full.duckdb"
    with start_in_thread(sim, api_key=KEY) as sb:
        env = {**os.environ, "STRIPE_API_KEY": KEY, "STRIPE_API_BASE": sb.url, "STRIPE_CHURN_DB": str(db),
               "STRIPE_RATE_LIMIT": "2000", "STRIPE_CHURN_LOG_LEVEL": "WARNING"}

        def small_files() -> None:  # (in the child only)
            resource.setrlimit(resource.RLIMIT_FSIZE, (3 * 2**20, 3 * 2**20))

        cut = subprocess.run([sys.executable, "-m", "stripe_churn", "sync"], env=env, capture_output=True,
                             text=True, timeout=240, preexec_fn=small_files)
        last = cut.stderr.strip().splitlines()[-1]
        assert cut.returncode == 2, cut.stderr[-2000:]
        assert last.startswith(f"error: no room to write {db}") and "File too large" in last, last
        assert "what was committed before is kept" in last and "unexpected" not in cut.stderr
        assert not snapshot_path(db).exists()

        again = run_once(settings_for(sb.url, db, key=KEY), progress=False)
        assert again.status == "succeeded" and again.mode == "full", again
    con = open_store(db)
    try:
        assert_store_equals_sandbox(con, sim)
        assert con.execute("SELECT count(*) FROM mrr_movements").fetchone()[0] > 0  # type: ignore[index]
    finally:
        con.close()
    assert snapshot_path(db).exists()


def test_no_room_is_recognised_from_the_os_and_from_duckdb_and_through_a_chain() -> None:
    full = disk_full(OSError(errno.ENOSPC, "No space left on device", "/data/x.duckdb.snapshot.tmp"))
    assert isinstance(full, DiskFullError) and full.exit_code == 2
    assert str(full).startswith("no room to write /data/x.duckdb.snapshot.tmp (No space left on device:")
    invalidated = duckdb.FatalException(
        "FATAL Error: Failed: database has been invalidated because of a previous fatal error.\nOriginal error: "
        '"Failed to create checkpoint because of error: Could not write file "/data/x.duckdb": No space left on '
        'device"')
    assert str(disk_full(invalidated)).startswith("no room to write /data/x.duckdb (No space left on device:")
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError:
            raise RuntimeError("cannot rollback - no transaction is active") from None
    except RuntimeError as masked:
        # (`from None` hides the cause from the traceback, not from __context__)
        assert "Disk quota exceeded" in str(disk_full(masked))
    assert disk_full(OSError(errno.EACCES, "Permission denied", "/data/x.duckdb")) is None
    assert disk_full(duckdb.IOException("Could not set lock on file")) is None


def test_a_failed_rollback_does_not_hide_the_failure_that_caused_it(tmp_path: Path) -> None:
    con = open_store(tmp_path / "t.duckdb")
    try:
        with pytest.raises(ValueError, match="the real failure"), transaction(con):
            con.execute("CREATE TABLE t (x INTEGER)")
            con.execute("COMMIT")  # the transaction is over: the ROLLBACK after the failure fails
            raise ValueError("the real failure")
        assert con.execute("SELECT count(*) FROM t").fetchone() == (0,)
    finally:
        con.close()


def test_a_place_that_cannot_be_written_is_one_line_naming_it(tmp_path: Path) -> None:
    """(A read-only file system or a missing permission cannot be made here, where tests may run as root: a file
    where the database's directory should be fails the same way.)"""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    env = {**os.environ, "STRIPE_API_KEY": KEY, "STRIPE_API_BASE": "http://127.0.0.1:9",
           "STRIPE_CHURN_DB": str(blocker / "x.duckdb")}
    got = subprocess.run([sys.executable, "-m", "stripe_churn", "sync"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert got.returncode == 2, got.stderr
    assert got.stderr.strip().splitlines()[-1].startswith(f"error: cannot write {blocker}"), got.stderr
    assert "unexpected" not in got.stderr
    for code, text in ((errno.EROFS, "Read-only file system"), (errno.EACCES, "Permission denied")):
        refused = store_failure(OSError(code, text, "/data/x.duckdb.lock"))
        assert isinstance(refused, StoreError) and not isinstance(refused, DiskFullError)
        assert str(refused).startswith(f"cannot write /data/x.duckdb.lock ({text}): make that place writable")
    assert isinstance(store_failure(OSError(errno.ENOSPC, "No space left on device")), DiskFullError)
    assert store_failure(OSError(errno.ENOENT, "No such file or directory")) is None


def test_after_a_write_that_failed_for_a_moment_nothing_more_is_written(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk can refuse one write and take the next, smaller one (DuckDB cuts its log back after the
    failure). The sync went on writing the batches queued behind the failed one, whose cursors moved its slices
    past the pages that failed: the next run resumed from there and never stored them (invoices missing)."""
    sim = Simulation(customers=60, months=8, seed=43)
    real_write = sync_module._Sync._write
    calls = {"n": 0}

    def fails_once(self: object, rows: dict[str, object], *args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if "invoices" in rows and "failed" not in calls:  # the first page of invoices
            calls["failed"] = calls["n"]
            raise duckdb.IOException('Could not write file "x.duckdb.wal": No space left on device')
        real_write(self, rows, *args, **kwargs)  # type: ignore[arg-type]

    with start_in_thread(sim, api_key=KEY) as sb:
        settings = settings_for(sb.url, tmp_path / "moment.duckdb", key=KEY)
        monkeypatch.setattr(sync_module, "TX_OBJECTS", 1)  # (a transaction per page: many writes)
        monkeypatch.setattr(sync_module._Sync, "_write", fails_once)
        with pytest.raises(duckdb.IOException, match="No space left"):
            run_sync(settings, progress=False)
        assert calls["n"] == calls["failed"]  # nothing written after the failure
        monkeypatch.setattr(sync_module._Sync, "_write", real_write)
        assert run_sync(settings, progress=False).status == "succeeded"
    con = open_store(settings.db)
    try:
        assert_store_equals_sandbox(con, sim)
    finally:
        con.close()
