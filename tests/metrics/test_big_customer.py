"""A customer of many subscriptions (a reseller, an agency): step 62 lists, for a customer of more than 32 item rows,
only the rows a 'change' transition needs (those with a boundary in its window, the largest held row of each
currency, one held row per family they touch) instead of every row it holds. Whatever the data, that must give what
listing every row gives: every persisted derived table and finance view, compared row for row."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import duckdb
import pytest
from conftest import script_module

from stripe_churn.metrics import runner
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.settings import Settings
from stripe_churn.store.db import open_store
from stripe_churn.store.load import load_simulation

BIG = "HAVING count(*) > 32"
VIEWS = ["mrr_movements", "customer_mrr", "item_mrr", "mrr_bridge", "scheduled_churn", "churn_reasons",
         "cohort_revenue_retention"]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return script_module("bench_big_customer")


def every_row_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 62 as if no customer had more than 32 rows: every row a transition holds is listed."""
    steps = runner.sql_steps()
    assert sum(text.count(BIG) for name, text in steps if name.startswith("62_")) == 1
    monkeypatch.setattr(runner, "sql_steps", lambda: [
        (name, text.replace(BIG, "HAVING count(*) > 1000000000") if name.startswith("62_") else text)
        for name, text in steps])


def derived(con: duckdb.DuckDBPyConnection) -> dict[str, list[Any]]:
    tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE NOT temporary "
                                        "AND table_name LIKE 'derived%'").fetchall()]
    return {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables + VIEWS}


# (the options these accounts are simulated with: not the simulation's EVERY_OPTION, which has more)
WHALE_OPTIONS = {"item_discounts": True, "option_prices": True, "fx_changes": True, "collection_pauses": True,
                "later_trials": True}


# (11, 2: a rate moving inside a window sends its transitions to the whole listing, or the results differ;
# 11, 1: a family of more than 32 rows whose held row is not among its first sends them there, or two rows differ)
@pytest.mark.parametrize(("seed", "whales", "options"), [(11, 2, WHALE_OPTIONS), (11, 1, WHALE_OPTIONS)])
def test_a_customer_of_many_subscriptions_is_labelled_as_if_every_row_were_listed(
        bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int, whales: int,
        options: dict[str, bool]) -> None:
    """A simulated account of 40 customers, every subscription, invoice, discount and event moved onto ``whales``
    customers: the same results with step 62's short listing as with every row listed."""
    results, listed = [], []
    for whole in (False, True):
        if whole:
            every_row_listed(monkeypatch)
        sim = Simulation(customers=40, months=12, seed=seed, **options)
        bench.onto_whales(sim, whales)
        con = open_store(tmp_path / f"{whole}.duckdb")
        load_simulation(con, sim)
        runner.recompute(con, Settings(currency="usd"))
        if not whole:  # (the short listing is taken: below, it lists fewer rows)
            big = con.execute("SELECT count(*) FROM (SELECT customer_id FROM derived_item_mrr GROUP BY ALL "
                              "HAVING count(*) > 32)").fetchall()[0][0]
            assert big == whales
        results.append(derived(con))
        listed.append(con.execute("SELECT count(*) FROM derived_transition_sides").fetchall()[0][0])
        con.close()
    short, whole_listing = results
    assert listed[0] < listed[1], listed
    assert short.keys() == whole_listing.keys() and "derived_mrr_movements" in short
    assert len(short["mrr_movements"]) > 100
    for name in whole_listing:
        assert short[name] == whole_listing[name], name
