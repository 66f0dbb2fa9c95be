"""The crash test of ``scripts/chaos_sync.py``, bounded: a few SIGKILLed syncs, then 0 differences.

The script's own functions run here (the 100-cycle run is ``python scripts/chaos_sync.py --cycles 100``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb
import pytest

from stripe_churn.sandbox.server import start_in_thread
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.settings import Secret, Settings
from stripe_churn.store.db import open_store
from stripe_churn.sync import run_sync

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
# importable by module name: the fork launcher's children unpickle their entry point from it
from chaos_sync import ChaosConfig, compare_stores, compare_with_sandbox, run_chaos


@pytest.mark.slow
def test_killed_syncs_leave_the_store_equal_to_the_sandbox_and_to_an_uninterrupted_run(tmp_path: Path) -> None:
    cfg = ChaosConfig(cycles=10, customers=20, months=3, seed=3, advance_share=0.2, full_share=0.3,
                      full_estimate_s=2.0, incremental_estimate_s=1.0, keep=tmp_path / "chaos")
    report = run_chaos(cfg, say=lambda _: None)
    text = "\n".join(report.lines())
    assert report.cycles == 10
    assert report.kills >= 5, text  # most cycles end in a SIGKILL
    assert report.billing_runs >= 1, text
    assert sum(report.faults.values()) >= 5, text  # and the sandbox did inject faults
    assert report.failed == [], text  # every fault was retried away
    assert report.rows_compared > 1000, text
    assert report.differences == [], text


def test_the_comparison_finds_missing_stale_and_undeleted_rows(tmp_path: Path) -> None:
    """The checks the crash test relies on do fail on a damaged store."""
    key = "sk_test_compare"
    sim = Simulation(customers=15, months=3, seed=4)
    with start_in_thread(sim, api_key=key) as sb:
        for name in ("a", "b"):
            run_sync(Settings(api_key=Secret(key), api_base=sb.url, db=tmp_path / f"{name}.duckdb",
                              rate_limit=2000.0), progress=False)
    con = open_store(tmp_path / "a.duckdb")
    ref = duckdb.connect(str(tmp_path / "b.duckdb"), read_only=True)
    try:
        rows, diffs = compare_with_sandbox(con, sim)
        assert rows > 100 and diffs == []
        assert compare_stores(con, ref, views=())[1] == []
        inv, sub, cus = (con.execute(f"SELECT id FROM {t} ORDER BY id LIMIT 1").fetchone()
                         for t in ("invoices", "subscriptions", "customers"))
        assert inv and sub and cus
        con.execute("DELETE FROM invoices WHERE id = ?", [inv[0]])
        con.execute("UPDATE subscriptions SET raw = json_merge_patch(raw, '{\"status\": \"canceled\"}') "
                    "WHERE id = ?", [sub[0]])
        con.execute("UPDATE customers SET deleted = true WHERE id = ?", [cus[0]])
        prod = sorted(p for p, o in sim.objects["products"].items() if not o.get("deleted"))[0]
        sim.objects["products"][prod] = {"id": prod, "object": "product", "deleted": True}  # gone in Stripe
        _, diffs = compare_with_sandbox(con, sim)
        text = "\n".join(diffs)
        assert "invoices: 1 objects missing" in text
        assert "subscriptions: raw JSON differs" in text
        assert "customers: 1 objects missing or wrongly flagged deleted" in text
        assert "products: 1 objects deleted in the sandbox are live in the store" in text
        _, diffs = compare_stores(con, ref, views=())
        assert {d.split(":")[0] for d in diffs} == {"invoices", "subscriptions", "customers"}
    finally:
        con.close()
        ref.close()
