"""What `stripe-churn report` prints for a small account worked out by hand (tests/metrics/test_views_hunt.py's
five customers, last synced on 20 July 2024): per quarter as JSON, CSV and a table, and per currency."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "metrics"))
from builders import World
from test_views_hunt import FIVE_SEEN, five_customers

from stripe_churn.cli import cli


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stripe_churn.metrics.runner import recompute
    from stripe_churn.settings import Settings
    from stripe_churn.store.db import open_store
    from stripe_churn.store.snapshot import publish_snapshot

    path = tmp_path_factory.mktemp("five") / "five.duckdb"
    con = open_store(path)
    five_customers(World()).load(con, seen_at=FIVE_SEEN)
    recompute(con, Settings(db=path))
    con.execute("CHECKPOINT")
    con.close()
    publish_snapshot(path)
    return path


def run(db: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["report", *args], env={"STRIPE_CHURN_DB": str(db)})
    assert result.exit_code == 0, result.output
    return result.output


def test_quarters_as_json_csv_and_a_table(db: Path) -> None:
    got = json.loads(run(db, "--period", "quarter", "--format", "json", "--from", "2024-01", "--to", "2024-09"))
    assert [(r["period_start"], r["opening_mrr"], r["new"], r["reactivation"], r["expansion"], r["churn"], r["fx"],
             r["closing_mrr"], r["churned_customers"], r["net_negative_churn"], r["complete"]) for r in got] == [
        ("2024-01-01", 0, 147.8, 10, 20, 10, 0, 167.8, 1, None, True),
        ("2024-04-01", 167.8, 0, 50, 11, 40, 0.6, 189.4, 1, True, True),
        ("2024-07-01", 189.4, 0, 0, 0, 0, 0, 189.4, 0, False, False),  # (running on 20 July)
    ]
    assert got[1]["net_revenue_churn_rate"] == pytest.approx(-21 / 167.8) and got[0]["quick_ratio"] == 17.78
    assert got[2]["quick_ratio"] is None and got[0]["nrr"] is None
    rows = list(csv.DictReader(io.StringIO(run(db, "--period", "quarter", "--format", "csv", "--from", "2024-04",
                                               "--to", "2024-04"))))
    assert [(r["period_start"], r["period_end"], r["closing_mrr"], r["arpa"], r["customer_churn_rate"],
             r["net_negative_churn"], r["complete"]) for r in rows] == [
        ("2024-04-01", "2024-06-30", "189.4000", "37.8800", "0.2", "True", "True")]
    table = run(db, "--period", "quarter", "--to", "2024-12")
    cells = [[c.strip() for c in line.strip("│ ").split("│")] for line in table.splitlines()
             if line.startswith("│ 2024-")]
    assert {c[0]: (c[1], c[-1]) for c in cells} == {
        "2024-01-01": ("0.00", "n/a"), "2024-04-01": ("167.80", "yes"), "2024-07-01": ("189.40", "running"),
        "2024-10-01": ("189.40", "after data")}
    assert "net negative churn in 1 of 1 complete periods (data up to 2024-07-20)" in table
    assert ("latest complete quarter (2024-04-01): AT net negative churn; net revenue churn -12.51% (expansion + "
            "reactivation 61.00 outweigh churn + contraction 40.00)") in " ".join(table.split())


def test_a_segment_per_quarter_is_the_macro(db: Path) -> None:
    """EUR (B): 32.40, then 11.00 of seats and 0.60 of fx in Q2; GBP (E) 25.40 from February."""
    got = json.loads(run(db, "--period", "quarter", "--format", "json", "--segment", "currency", "--to", "2024-06"))
    assert [(r["segment_value"], r["period_start"], r["opening_mrr"], r["new"], r["expansion"], r["fx"],
             r["closing_mrr"]) for r in got] == [
        ("eur", "2024-01-01", 0, 32.4, 0, 0, 32.4), ("eur", "2024-04-01", 32.4, 0, 11, 0.6, 44),
        ("gbp", "2024-01-01", 0, 25.4, 0, 0, 25.4), ("gbp", "2024-04-01", 25.4, 0, 0, 0, 25.4),
        ("usd", "2024-01-01", 0, 90, 20, 0, 110), ("usd", "2024-04-01", 110, 0, 0, 0, 120)]
    con = duckdb.connect(str(db), read_only=True)
    try:
        macro = con.execute("SELECT segment_value, period_start, closing_mrr FROM mrr_bridge_for(period_kind := "
                            "'quarter', segment_kind := 'currency', segment_value := NULL) "
                            "WHERE period_start <= DATE '2024-06-30' ORDER BY ALL").fetchall()
    finally:
        con.close()
    assert [(s, p.isoformat(), float(c)) for s, p, c in macro] == [
        (r["segment_value"], r["period_start"], r["closing_mrr"]) for r in got]
