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
from test_sync import assert_store_equals_sandbox

from stripe_churn.errors import DiskFullError, disk_full
from stripe_churn.sandbox.server import start_in_thread
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.store.db import open_store, transaction
from stripe_churn.store.snapshot import snapshot_path

KEY = "sk_test_disk_full"


def test_a_sync_that_runs_out_of_room_says_so_and_the_next_run_loses_nothing(tmp_path: Path) -> None:
    sim = Simulation(customers=150, months=12, seed=41)
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

        again = subprocess.run([sys.executable, "-m", "stripe_churn", "sync"], env=env, capture_output=True,
                               text=True, timeout=240)
        assert again.returncode == 0, again.stderr[-2000:]
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
