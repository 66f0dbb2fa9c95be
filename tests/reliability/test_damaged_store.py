"""A damaged database file (a bad block, a file cut short): one line that says which file and how to recover,
and the recovery it names works."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from stripe_churn.errors import StoreError, damaged_store
from stripe_churn.pipeline import run_once
from stripe_churn.sandbox.server import start_in_thread
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.settings import Secret, Settings
from stripe_churn.store.db import open_store
from stripe_churn.store.snapshot import snapshot_path

KEY = "sk_test_damaged"
HEADER = 3 * 4096  # DuckDB's file headers; the blocks follow


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stripe_churn", *args], env=env, capture_output=True, text=True,
                          timeout=180)


def movements(path: Path) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("SELECT * FROM mrr_movements ORDER BY ALL").fetchall()
    finally:
        con.close()


def test_a_damaged_store_and_snapshot_say_how_to_recover_and_the_recovery_works(tmp_path: Path) -> None:
    db = tmp_path / "store.duckdb"
    with start_in_thread(Simulation(customers=30, months=6, seed=47), api_key=KEY) as sb:
        env = {**os.environ, "STRIPE_API_KEY": KEY, "STRIPE_API_BASE": sb.url, "STRIPE_CHURN_DB": str(db),
               "STRIPE_RATE_LIMIT": "2000", "STRIPE_CHURN_LOG_LEVEL": "WARNING"}
        settings = Settings(api_key=Secret(KEY), api_base=sb.url, db=db, rate_limit=2000)
        run_once(settings, progress=False)
        good = movements(snapshot_path(db))
        assert good

        # every block of the store overwritten: DuckDB finds the bad checksums when it opens it
        size = db.stat().st_size
        with db.open("r+b") as f:
            f.seek(HEADER)
            f.write(os.urandom(size - HEADER))
        got = cli(env, "sync")
        last = got.stderr.strip().splitlines()[-1]
        assert got.returncode == 2, got.stderr[-2000:]
        assert last.startswith(f"error: the store {db} is damaged (Corrupt database file"), last
        assert f"copy its snapshot {db}.snapshot" in last and "unexpected" not in got.stderr

        # the recovery the line names: the snapshot in the store's place, then a sync goes on from it
        db.rename(tmp_path / "damaged.duckdb")
        shutil.copyfile(snapshot_path(db), db)
        assert run_once(settings, progress=False).status == "succeeded"
        assert movements(snapshot_path(db)) == good

    # a snapshot cut short: readers are told to publish a new one
    with snapshot_path(db).open("r+b") as f:
        f.truncate(snapshot_path(db).stat().st_size // 2)
    report = cli(env, "report")
    assert report.returncode == 2
    assert report.stderr.strip().splitlines()[-1].startswith(
        f"error: the snapshot {snapshot_path(db)} is damaged ("), report.stderr


def test_only_a_damaged_file_is_called_damaged(tmp_path: Path) -> None:
    found = damaged_store(duckdb.IOException('Could not read enough bytes from file "x"'), "/d/x.duckdb")
    assert isinstance(found, StoreError) and str(found).startswith("the store /d/x.duckdb is damaged (")
    assert damaged_store(duckdb.IOException("Could not set lock on file"), "/d/x.duckdb") is None
    assert damaged_store(ValueError("Corrupt database file: checksum")) is not None
    # a file that is no DuckDB database at all (the setting pointing at something else) is not called damaged
    other = tmp_path / "notes.duckdb"
    other.write_text("customer,mrr\n")
    with pytest.raises(StoreError, match=f"^{other} is not a DuckDB database: point the setting db"):
        open_store(other)
    assert other.read_text() == "customer,mrr\n"
