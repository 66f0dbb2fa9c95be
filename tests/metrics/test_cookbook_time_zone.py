"""The README cookbook answers for UTC's days and months, as `report` does, in a session of any time zone:
`stripe-churn sql` (its snapshot connection is set to UTC) and the duckdb CLI or Python (the queries take
timezone('UTC', ...))."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from builders import World, ts
from click.testing import CliRunner
from test_bridge import catalogue

from stripe_churn.cli import cli

ROOT = Path(__file__).resolve().parents[2]


def cookbook(starts: str) -> str:
    """The README's ```sql block that starts with ``starts``."""
    blocks = re.findall(r"```sql\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return next(b for b in blocks if b.startswith(starts)).strip().rstrip(";")


def published(world: World, path: Path, seen_at: int) -> Path:
    from stripe_churn.metrics.runner import recompute
    from stripe_churn.settings import Settings
    from stripe_churn.store.db import open_store
    from stripe_churn.store.snapshot import publish_snapshot

    con = open_store(path)
    world.load(con, seen_at=seen_at)
    recompute(con, Settings(db=path))
    con.execute("CHECKPOINT")
    con.close()
    publish_snapshot(path)
    return path


def sql_in_zone(db: Path, query: str, zone: str) -> list[dict]:
    """`stripe-churn sql` run in a process whose local time zone is ``zone``."""
    env = {**os.environ, "STRIPE_CHURN_DB": str(db), "TZ": zone, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "stripe_churn", "sql", query, "--format", "json"], env=env,
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return json.loads(out)


def duckdb_in_zone(db: Path, query: str, zone: str) -> list[tuple]:
    """The query in a plain duckdb session (the duckdb CLI's or Python's) set to ``zone``."""
    con = duckdb.connect(str(db.with_name(db.name + ".snapshot")), read_only=True)
    try:
        con.execute(f"SET TimeZone = '{zone}'")
        return con.execute(query).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def synced_after_month_end(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """March a contraction, April an expansion (net negative), synced 1 May 03:00 UTC (30 April in Los Angeles)."""
    w = catalogue(World())
    w.customer("c1")
    w.subscribe("s1", "c1", [("i1", "basic_usd", 5)], ts(2024, 1, 5))
    w.update("s1", ts(2024, 3, 10), items=[("i1", "basic_usd", 4)])
    w.update("s1", ts(2024, 4, 10), items=[("i1", "basic_usd", 6)])
    return published(w, tmp_path_factory.mktemp("tz") / "tz.duckdb", seen_at=ts(2024, 5, 1, 3))


@pytest.mark.parametrize("zone", ["America/Los_Angeles", "Asia/Tokyo"])
def test_the_net_negative_churn_answer_is_reports_in_any_time_zone(synced_after_month_end: Path,
                                                                  zone: str) -> None:
    """(in Los Angeles the cookbook answered for March, not at net negative churn, where `report` said April is)"""
    result = CliRunner().invoke(cli, ["report"], env={"STRIPE_CHURN_DB": str(synced_after_month_end)})
    assert "latest complete month (2024-04-01): AT net negative churn" in result.output, result.output
    query = cookbook("SELECT period_start, net_revenue_churn_rate, net_negative_churn")
    got = sql_in_zone(synced_after_month_end, query, zone)
    assert got[0]["period_start"].startswith("2024-04-01") and got[0]["net_negative_churn"] is True, got
    assert str(duckdb_in_zone(synced_after_month_end, query, zone)[0][0]) == "2024-04-01"


def test_movements_by_month_are_the_bridges_months_in_any_time_zone(tmp_path: Path) -> None:
    """(a movement on 1 April 02:00 UTC was listed under March west of UTC, where the bridge has it in April)"""
    w = catalogue(World())
    w.customer("c1")
    w.subscribe("s1", "c1", [("i1", "basic_usd", 5)], ts(2024, 1, 5))
    w.update("s1", ts(2024, 4, 1, 2), items=[("i1", "basic_usd", 6)])
    db = published(w, tmp_path / "tz2.duckdb", seen_at=ts(2024, 5, 20))
    query = cookbook("SELECT date_trunc('month'")
    got = {(r["month"][:10], r["movement"]) for r in sql_in_zone(db, query, "America/Los_Angeles")}
    assert ("2024-04-01", "seat_expansion") in got, got
    got_duckdb = {(str(r[0])[:10], r[1]) for r in duckdb_in_zone(db, query, "America/Los_Angeles")}
    assert ("2024-04-01", "seat_expansion") in got_duckdb, got_duckdb
