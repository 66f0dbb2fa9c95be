"""The benchmark's store builder (scripts/bench_rollup.py): re-keyed copies of a simulated block must be
independent customers with the same history, so that a replicated store's metrics are the block's times the
number of copies, and the billing-run loader must give the same results as loading the whole simulation."""

from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import SMALL_SIM

from stripe_churn.settings import Settings

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_rollup.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_rollup", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flows(con: Any) -> dict[str, Any]:
    row = con.execute("SELECT count(*), sum(new), sum(reactivation), sum(expansion), sum(contraction), sum(churn), "
                      "sum(new_customers), sum(churned_customers) FROM mrr_bridge").fetchall()[0]
    moves = con.execute("SELECT movement, count(*), sum(mrr_delta) FROM mrr_movements GROUP BY ALL "
                        "ORDER BY ALL").fetchall()
    return {"bridge": row, "movements": moves}


def test_replicated_copies_are_independent_customers(bench: ModuleType, tmp_path: Path) -> None:
    from stripe_churn.metrics.runner import recompute
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.store.db import open_store
    from stripe_churn.store.load import load_simulation

    sim = Simulation(**SMALL_SIM)
    con = open_store(tmp_path / "block.duckdb")
    load_simulation(con, sim)
    recompute(con, Settings())
    one = _flows(con)
    n_prices = con.execute("SELECT count(*) FROM prices").fetchall()[0][0]
    bench.replicate(con, 3)
    recompute(con, Settings())
    three = _flows(con)

    assert con.execute("SELECT count(*) FROM customers").fetchall()[0][0] == 3 * SMALL_SIM["customers"]
    # the catalogue is shared: every item and line of a copy names a stored price, and no price was copied
    assert con.execute("SELECT count(*) FROM subscription_items i ANTI JOIN prices p ON p.id = i.price_id"
                       ).fetchall()[0][0] == 0
    assert con.execute("SELECT count(*) FROM prices").fetchall()[0][0] == n_prices
    # a copy's event JSON names the copy's own subscription, and its items the shared prices
    ev = con.execute("SELECT object_id, raw->>'$.data.object.id', raw->>'$.data.object.items.data[0].price.id' "
                     "FROM events WHERE object_type = 'subscription' AND object_id LIKE 'sub\\_2x%' ESCAPE '\\' "
                     "LIMIT 1").fetchall()
    assert ev and ev[0][0] == ev[0][1] and ev[0][2].startswith("price_") and "2x" not in ev[0][2]
    # three copies of the block: every flow and count three times the block's
    n, *sums = one["bridge"]
    assert three["bridge"][0] == n
    assert list(three["bridge"][1:]) == [3 * s for s in sums]
    assert three["movements"] == [(m, 3 * c, 3 * d) for m, c, d in one["movements"]]


def test_billing_run_loader_then_incremental_equals_full(bench: ModuleType, tmp_path: Path) -> None:
    """Loading only what a billing run changed touches only some customers, and the incremental recompute of
    them gives the same movements and bridge as a full recompute of the same store."""
    from stripe_churn.metrics.incremental import recompute_changed
    from stripe_churn.metrics.runner import recompute
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.store.db import open_store
    from stripe_churn.store.load import load_simulation

    sim = Simulation(**SMALL_SIM)
    con = open_store(tmp_path / "changes.duckdb")
    load_simulation(con, sim)
    recompute(con, Settings())
    before, clock = bench.fingerprints(sim), sim.clock
    sim.advance(1)
    assert bench.load_changes(con, sim, before, clock) > 0
    touched = recompute_changed(con, Settings(), dt.datetime.fromtimestamp(clock + 1, tz=dt.UTC))
    assert 0 < touched < SMALL_SIM["customers"]
    movements = "SELECT * FROM mrr_movements ORDER BY ALL"
    incremental = con.execute(movements).fetchall(), _flows(con)
    recompute(con, Settings())
    assert incremental == (con.execute(movements).fetchall(), _flows(con))
    assert any(r[6] > dt.datetime.fromtimestamp(clock, tz=dt.UTC) for r in incremental[0])  # the run's own changes
