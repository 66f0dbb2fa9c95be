"""Idempotence: syncing the same sandbox state again, or recomputing again, leaves every view byte-for-byte equal.

What may legitimately differ between two runs is run bookkeeping: ``sync_runs`` rows and the seen-at times of
the raw tables. Views are compared through the files ``stripe-churn export`` writes (CSV and Parquet).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from stripe_churn.metrics.runner import recompute
from stripe_churn.pipeline import run_once
from stripe_churn.report.export import export
from stripe_churn.sandbox.server import start_in_thread
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.settings import Secret, Settings
from stripe_churn.store.db import open_store
from stripe_churn.store.snapshot import checkpoint, publish_snapshot, snapshot_path

KEY = "sk_test_idempotence"
FINANCE_VIEWS = {"mrr_movements", "customer_mrr", "mrr_bridge", "scheduled_churn", "churn_reasons"}


def views(db: Path) -> list[str]:
    con = duckdb.connect(str(snapshot_path(db)), read_only=True)
    try:
        return sorted(r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'VIEW'").fetchall())
    finally:
        con.close()


def exported(db: Path, out: Path) -> dict[str, bytes]:
    """Every view of the snapshot as CSV and Parquet bytes, by file name."""
    names = views(db)
    files = export(db, out / "csv", names, "csv") + export(db, out / "parquet", names, "parquet")
    return {p.name: p.read_bytes() for p in files}


def differing(a: dict[str, bytes], b: dict[str, bytes]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def recompute_and_publish(settings: Settings) -> None:
    con = open_store(settings.db)
    try:
        recompute(con, settings)
        checkpoint(con)
    finally:
        con.close()
    publish_snapshot(settings.db)


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, list[dict[str, bytes]]]:
    """One sandbox state synced three times (full, incremental with nothing new, full again); exports after each."""
    tmp = tmp_path_factory.mktemp("idem")
    sim = Simulation(customers=30, months=6, seed=21)
    with start_in_thread(sim, api_key=KEY) as sb:
        settings = Settings(api_key=Secret(KEY), api_base=sb.url, db=tmp / "i.duckdb", rate_limit=2000.0)
        runs = []
        for n, full in enumerate((True, False, True)):
            summary = run_once(settings, full=full, progress=False)
            assert summary.status == "succeeded"
            runs.append(exported(settings.db, tmp / f"run{n}"))
    return settings, runs


def test_the_export_covers_every_finance_view_with_rows(synced: tuple[Settings, list[dict[str, bytes]]]) -> None:
    settings, runs = synced
    names = set(views(settings.db))
    assert names >= FINANCE_VIEWS
    first = runs[0]
    assert {f"{v}.csv" for v in names} | {f"{v}.parquet" for v in names} == set(first)
    for view in ("mrr_movements", "customer_mrr", "mrr_bridge"):
        assert first[f"{view}.csv"].count(b"\n") > 5, view  # a real account, not empty views


def test_syncing_the_same_state_again_gives_identical_exports(
        synced: tuple[Settings, list[dict[str, bytes]]]) -> None:
    settings, runs = synced
    assert differing(runs[0], runs[1]) == [], "an incremental sync with nothing new changed these views"
    assert differing(runs[0], runs[2]) == [], "a full re-list of the same state changed these views"
    con = duckdb.connect(str(snapshot_path(settings.db)), read_only=True)
    try:  # the run bookkeeping does differ: three runs recorded
        assert con.execute("SELECT mode, status FROM sync_runs ORDER BY started_at").fetchall() == [
            ("full", "succeeded"), ("incremental", "succeeded"), ("full", "succeeded")]
    finally:
        con.close()


def test_recomputing_twice_gives_identical_views(synced: tuple[Settings, list[dict[str, bytes]]],
                                                 tmp_path: Path) -> None:
    settings, runs = synced
    recompute_and_publish(settings)
    once = exported(settings.db, tmp_path / "a")
    recompute_and_publish(settings)
    twice = exported(settings.db, tmp_path / "b")
    assert differing(once, twice) == []
    assert differing(runs[2], once) == []  # and equal to what the last sync published


def test_export_rows_come_in_a_fixed_order(tmp_path: Path) -> None:
    """The same rows inserted in another order export to the same bytes."""
    files = []
    for n, order in enumerate(("ASC", "DESC")):
        db = tmp_path / f"o{n}.duckdb"
        con = duckdb.connect(str(db))
        con.execute(f"CREATE TABLE t AS SELECT range AS i, range % 7 AS k FROM range(5000) ORDER BY i {order}")
        con.execute("CREATE VIEW v AS SELECT k, i FROM t")
        con.close()
        publish_snapshot(db)
        files.append([p.read_bytes() for p in export(db, tmp_path / f"out{n}", ["v"], "csv")
                      + export(db, tmp_path / f"out{n}", ["v"], "parquet")])
    assert files[0] == files[1]
