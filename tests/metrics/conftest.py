"""Shared fixtures for the metrics tests: a fresh store, hand-built Stripe accounts, a small simulation.

Engineers working on the metrics add fixtures here by appending; keep every fixture small and fast.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from builders import World

from stripe_churn.settings import Rules, Settings

SMALL_SIM = {"customers": 60, "months": 8, "seed": 7}


@pytest.fixture(scope="session")
def migrated_store_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty store with every migration applied, closed: the file each test's store starts as (migrating a new
    file takes about 0.4 s, copying this one 0.04 s)."""
    from stripe_churn.store.db import open_store

    path = tmp_path_factory.mktemp("template") / "migrated.duckdb"
    open_store(path).close()
    assert not Path(f"{path}.wal").exists()
    return path


@pytest.fixture
def store(tmp_path: Path, migrated_store_file: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A fresh, migrated DuckDB store in a temporary directory."""
    from stripe_churn.store.db import open_store

    shutil.copyfile(migrated_store_file, tmp_path / "metrics.duckdb")
    con = open_store(tmp_path / "metrics.duckdb")
    try:
        yield con
    finally:
        con.close()


@pytest.fixture
def world() -> World:
    """An empty hand-built Stripe account (see tests/metrics/builders.py)."""
    return World()


def make_settings(currency: str = "usd", **rules: Any) -> Settings:
    """Default settings with some rules of design.md 4 and 5 changed."""
    return Settings(currency=currency, rules=Rules(**rules))


@pytest.fixture
def derive(store: duckdb.DuckDBPyConnection) -> Callable[..., duckdb.DuckDBPyConnection]:
    """Load a World into the store and recompute; ``derive(world, seen_at=..., events=..., **rules)``."""
    from stripe_churn.metrics.runner import recompute

    def run(w: World, *, seen_at: int, events: bool | int = True, currency: str = "usd",
            **rules: Any) -> duckdb.DuckDBPyConnection:
        w.load(store, seen_at=seen_at, events=events)
        recompute(store, make_settings(currency, **rules))
        return store

    return run


def record_stripes_clock(con: duckdb.DuckDBPyConnection, account_id: str, at: int) -> None:
    """Record, as a sync does, Stripe's clock at the sync's last listing (the cursor ``events:complete``): unix
    time ``at``, which may differ from the ``seen_at`` (this machine's clock) the rows were loaded with."""
    con.execute("INSERT INTO sync_cursors (account_id, stream, value, created, done) "
                "VALUES (?, 'events:complete', NULL, ?, true)", [account_id, at])


def customer_mrr_at(con: duckdb.DuckDBPyConnection, customer_id: str, at: int, account_id: str | None = None
                    ) -> Decimal:
    """The customer's MRR at unix time ``at`` from the customer_mrr view (0 when no row covers it); of one account
    when the store holds several with the same ids."""
    row = con.execute(
        "SELECT mrr FROM customer_mrr WHERE customer_id = ? AND valid_from <= to_timestamp(?) "
        "AND (valid_to IS NULL OR to_timestamp(?) < valid_to) AND account_id = coalesce(?, account_id)",
        [customer_id, at, at, account_id]).fetchall()
    assert len(row) <= 1, f"customer_mrr has overlapping rows for {customer_id} at {at}: {row}"
    return row[0][0] if row else Decimal("0")


def item_rows(con: duckdb.DuckDBPyConnection, item_id: str, account_id: str | None = None) -> list[dict[str, Any]]:
    """derived_item_mrr rows of one item in time order, timestamps as unix seconds; of one account when the store
    holds several with the same ids."""
    cur = con.execute(
        "SELECT * REPLACE (CAST(epoch(valid_from) AS BIGINT) AS valid_from, "
        "CAST(epoch(valid_to) AS BIGINT) AS valid_to) FROM derived_item_mrr "
        "WHERE subscription_item_id = ? AND account_id = coalesce(?, account_id) ORDER BY valid_from",
        [item_id, account_id])
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


@pytest.fixture(scope="module")
def module_stores(tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path
                  ) -> Iterator[Callable[[], duckdb.DuckDBPyConnection]]:
    """Fresh, migrated stores that live as long as the test module: ``module_stores()`` opens one more.

    For a family of cases derived together: each case its own account of one store (``World(account_id=...)``;
    coverage, snapshots and every derived row are per account), loaded, then ONE recompute per settings instead
    of one per case (a recompute of a tiny store costs about half a second, most of it DuckDB's planning)."""
    from stripe_churn.store.db import open_store

    folder = tmp_path_factory.mktemp("module_stores")
    opened: list[duckdb.DuckDBPyConnection] = []

    def make() -> duckdb.DuckDBPyConnection:
        path = folder / f"store{len(opened)}.duckdb"
        shutil.copyfile(migrated_store_file, path)
        opened.append(open_store(path))
        return opened[-1]

    try:
        yield make
    finally:
        for con in opened:
            con.close()


@pytest.fixture(scope="session")
def small_sim() -> Any:
    """A small seeded simulation (built once per session)."""
    from stripe_churn.sandbox.sim import Simulation

    return Simulation(**SMALL_SIM)


@pytest.fixture
def sim_store(small_sim: Any, tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A fresh store holding ``small_sim`` loaded directly (no HTTP), not yet recomputed."""
    from stripe_churn.store.db import open_store
    from stripe_churn.store.load import load_simulation

    con = open_store(tmp_path / "sim.duckdb")
    load_simulation(con, small_sim)
    try:
        yield con
    finally:
        con.close()
