"""The benchmark's store builder (scripts/bench_rollup.py): re-keyed copies of a simulated block must be
independent customers with the same history, so that a replicated store's metrics are the block's times the
number of copies, and the billing-run loader must give the same results as loading the whole simulation."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import SMALL_SIM, script_module

from stripe_churn.settings import Settings

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_rollup.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return script_module("bench_rollup")


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
    seen = dt.datetime.fromtimestamp(int(sim.clock), dt.UTC)
    assert bench.load_changes(con, bench.collect_changes(sim, before, clock), sim.account_id, seen) > 0
    touched = recompute_changed(con, Settings(), dt.datetime.fromtimestamp(clock + 1, tz=dt.UTC))
    assert 0 < touched < SMALL_SIM["customers"]
    movements = "SELECT * FROM mrr_movements ORDER BY ALL"
    incremental = con.execute(movements).fetchall(), _flows(con)
    recompute(con, Settings())
    assert incremental == (con.execute(movements).fetchall(), _flows(con))
    assert any(r[6] > dt.datetime.fromtimestamp(clock, tz=dt.UTC) for r in incremental[0])  # the run's own changes


def test_floor_chain_gives_a_plain_accounts_mrr(bench: ModuleType, world: Any, derive: Any) -> None:
    """The floor the benchmark compares the recompute with does the work it claims: on an account that needs
    none of the rules it leaves out (licensed monthly and annual prices, renewals, a quantity change at a
    renewal, no discounts, trials or events), its customer MRR is the product's, and its labels are too."""
    from builders import add_months, ts
    from conftest import customer_mrr_at

    t0 = ts(2024, 1, 1)
    world.customer("cus_a")
    world.customer("cus_b")
    world.product("prod_core", unit_label="seat")
    world.price("monthly", "prod_core", 1_000)
    world.price("annual", "prod_core", 120_000, interval="year")
    world.subscribe("sub_a", "cus_a", [("si_a", "monthly", 2)], t0)
    for k in (1, 2, 3, 4):
        if k == 3:
            world.update("sub_a", add_months(t0, 3), items=[("si_a", "monthly", 5)], prorate=False)
        world.cycle("sub_a", add_months(t0, k))
    world.subscribe("sub_b", "cus_b", [("si_b", "annual", 1)], t0 + 10 * 86_400)
    con = derive(world, seen_at=add_months(t0, 4) + 86_400, events=False)
    _, _, lines = bench.lean_floor(con, keep=True)
    assert lines == con.execute("SELECT count(*) FROM invoice_lines").fetchall()[0][0] == 6
    floor_mrr = ("SELECT m.mrr FROM floor_customer_mrr m JOIN floor_customers c ON c.k = m.ck "
                 "WHERE c.id = ? AND m.t <= ? ORDER BY m.t DESC LIMIT 1")
    checked = []
    for customer in ("cus_a", "cus_b"):
        for k in range(4):
            at = add_months(t0, k) + 15 * 86_400
            got = round(con.execute(floor_mrr, [customer, at]).fetchall()[0][0], 4)
            checked.append((customer, k, got))
            assert got == customer_mrr_at(con, customer, at), (customer, k)
    assert [g for c, k, g in checked if c == "cus_a"] == [20, 20, 20, 50]
    assert {g for c, k, g in checked if c == "cus_b"} == {100}
    labels = con.execute("SELECT c.id, m.category, round(m.mrr_after - m.mrr_before, 4) FROM floor_movements m "
                         "JOIN floor_customers c ON c.k = m.ck WHERE m.t <= ? ORDER BY c.id, m.t",
                         [add_months(t0, 4)]).fetchall()
    assert labels == [("cus_a", "new", 20), ("cus_a", "expansion", 30), ("cus_b", "new", 100)]


def test_the_benchmark_runs_end_to_end_with_the_store_built_apart(tmp_path: Path) -> None:
    """A tiny run of the whole benchmark: the store is built (and the next billing run simulated) in a child
    process, and the timing process loads the billing run's changes and derives only its customers again."""
    db = tmp_path / "tiny.duckdb"
    out = subprocess.run([sys.executable, str(SCRIPT), "--customers", "300", "--block", "100", "--months", "4",
                          "--sample", "50", "--no-floor", "--db", str(db)],
                         capture_output=True, text=True, timeout=120, cwd=SCRIPT.parents[1])
    assert out.returncode == 0, out.stderr
    assert "store: 300 customers (100 simulated, replicated x3" in out.stdout
    derived = re.search(r"incremental recompute after one billing run: [\d.]+ s .*?, ([\d,]+) customers derived "
                        r"again \(([\d,]+) new or changed objects", out.stdout)
    assert derived, out.stdout
    customers, objects = (int(g.replace(",", "")) for g in derived.groups())
    assert 0 < customers < 300 and objects > 0
    assert "(of the process that times; the store was built in another)" in out.stdout


def test_the_benchmark_profile_lists_every_step_and_phase_of_the_timed_runs(tmp_path: Path) -> None:
    """With --profile the timed runs' own DEBUG timings are printed: every SQL step of the full recompute, and the
    incremental's phases (find, stage, copy, steps, ledgers, replace, commit), and no debug line reaches the
    console."""
    from stripe_churn.metrics.runner import sql_steps

    out = subprocess.run([sys.executable, str(SCRIPT), "--customers", "200", "--block", "100", "--months", "4",
                          "--sample", "50", "--no-floor", "--profile", "--db", str(tmp_path / "p.duckdb")],
                         capture_output=True, text=True, timeout=120, cwd=SCRIPT.parents[1])
    assert out.returncode == 0, out.stderr
    listed = re.search(r"its steps, slowest first: (.*)", out.stdout)
    assert listed, out.stdout
    steps = dict(re.findall(r"(\d\d_\w+) ([\d.]+) s", listed.group(1)))
    assert set(steps) == {name.removesuffix(".sql") for name, _ in sql_steps()}
    # the slowest statements by the step and the table, view or macro each makes
    slowest = re.search(r"its (\d+) statements, the (\d+) slowest: (.*)", out.stdout)
    assert slowest, out.stdout
    statements = re.findall(r"(\d\d_\w+) (\w+) ([\d.]+) s", slowest.group(3))
    assert int(slowest.group(1)) > len(steps) and len(statements) == int(slowest.group(2)) == 12
    assert all(step in steps for step, _, _ in statements)
    assert [float(s) for _, _, s in statements] == sorted((float(s) for _, _, s in statements), reverse=True)
    # and the incremental's, on the changed customers (the scope runs every step)
    scoped = re.search(r"its (\d+) statements on the changed customers, the (\d+) slowest: (.*)", out.stdout)
    assert scoped, out.stdout
    assert int(scoped.group(1)) >= int(slowest.group(1)) and int(scoped.group(2)) == 12
    assert all(step in steps for step, _, _ in re.findall(r"(\d\d_\w+) (\w+) ([\d.]+) s", scoped.group(3)))
    phases = dict(re.findall(r"^    ([^:\n]+(?:: [^:\n]+)?): ([\d.]+) s$", out.stdout, re.MULTILINE))
    for phase in ("find customers", "stage row ids", "scope 0: copy rows", "scope 0: steps", "old ledger",
                  "new ledger", "compare the catalogue and rules", "replace rows", "commit"):
        assert phase in phases, (phase, out.stdout)
    assert "took" not in out.stderr and "DEBUG" not in out.stderr
