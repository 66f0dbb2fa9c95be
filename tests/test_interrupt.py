"""Ctrl-C (SIGINT) during a long `sql` or `report` query ends it at once with "interrupted" and exit code 130, as
`sync` ends (it was ignored now and then, and otherwise ended as "unexpected RuntimeError: Query interrupted", 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from stripe_churn.cli import cli

ROOT = Path(__file__).resolve().parents[1]
LONG = "SELECT sum(hash(i)) FROM range(100000000000) t(i)"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A store path whose snapshot is an empty database: enough for `sql` (`report` is given a long query below)."""
    db = tmp_path / "s.duckdb"
    duckdb.connect(str(tmp_path / "s.duckdb.snapshot")).close()
    return db


@pytest.mark.parametrize("delay", [0.5, 2.0])
def test_ctrl_c_stops_a_long_sql_query(db: Path, delay: float) -> None:
    env = {**os.environ, "STRIPE_CHURN_DB": str(db), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "stripe_churn", "sql", LONG], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60  # (the query has begun once DuckDB's threads are there: not mid-import)
    while len(os.listdir(f"/proc/{proc.pid}/task")) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("still running 15 s after SIGINT")
    assert (proc.returncode, err) == (130, "interrupted\n"), (out, err)


def test_ctrl_c_stops_a_long_report_query(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stripe_churn.metrics import queries

    def long_bridge(con: duckdb.DuckDBPyConnection, **_: object) -> list:
        con.execute(LONG).fetchall()
        return []

    monkeypatch.setattr(queries, "bridge", long_bridge)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    began = time.monotonic()
    try:
        result = CliRunner().invoke(cli, ["report"], env={"STRIPE_CHURN_DB": str(db)})
    finally:
        timer.cancel()
    assert (result.exit_code, result.stderr) == (130, "interrupted\n"), (result.output, result.stderr)
    assert time.monotonic() - began < 10
