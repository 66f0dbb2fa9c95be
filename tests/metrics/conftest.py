"""Shared fixtures for the metrics tests: a fresh store, hand-built Stripe accounts, a small simulation.

Engineers working on the metrics add fixtures here by appending; keep every fixture small and fast.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from types import ModuleType
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


Load = Callable[..., None]  # a test's own loading instead of World.load: load(world, con, *, seen_at, events)


def load_worlds(con: duckdb.DuckDBPyConnection, worlds: tuple[World, ...], *, seen_at: int, events: bool | int,
                load: Load | None, rates_loaded: bool = False) -> None:
    """Load each World of one ``derive(...)`` into ``con`` with ``load`` (None: its own ``load``); their exchange
    rates (global, the same for each) once, or not at all when ``rates_loaded``."""
    assert worlds and len({repr(w.fx_rates) for w in worlds}) == 1, (
        "derive(...) takes Worlds that load the same exchange rates (fx_rates is global)")
    for k, w in enumerate(worlds):
        rates = w.fx_rates
        if rates_loaded or k:
            w.fx_rates = []
        try:
            if load is None:
                w.load(con, seen_at=seen_at, events=events)
            else:
                load(w, con, seen_at=seen_at, events=events)
        finally:
            w.fx_rates = rates


def derive_in(store: duckdb.DuckDBPyConnection) -> Callable[..., duckdb.DuckDBPyConnection]:
    """The ``derive`` of one store: load Worlds into it and recompute."""
    from stripe_churn.metrics.runner import recompute

    def run(*worlds: World, seen_at: int, events: bool | int = True, currency: str = "usd", load: Load | None = None,
            **rules: Any) -> duckdb.DuckDBPyConnection:
        load_worlds(store, worlds, seen_at=seen_at, events=events, load=load)
        recompute(store, make_settings(currency, **rules))
        return store

    return run


@pytest.fixture
def derive(store: duckdb.DuckDBPyConnection) -> Callable[..., duckdb.DuckDBPyConnection]:
    """Load a World into the store and recompute: ``derive(world, seen_at=..., events=..., **rules)``. Several
    Worlds (each its own account) load into the one store; ``load=`` a function ``(world, con, *, seen_at,
    events)`` loads each instead of ``World.load`` (e.g. that then flags what a full sync no longer lists)."""
    return derive_in(store)


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

    The stores of :class:`OneStore`: each case its own account of one store (``World(account_id=...)``; coverage,
    snapshots and every derived row are per account), loaded, then ONE recompute per settings instead of one per
    case (a recompute of a tiny store costs about half a second, most of it DuckDB's planning)."""
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
def sim_store(small_sim: Any, tmp_path: Path, migrated_store_file: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A fresh store holding ``small_sim`` loaded directly (no HTTP), not yet recomputed."""
    from stripe_churn.store.db import open_store
    from stripe_churn.store.load import load_simulation

    shutil.copyfile(migrated_store_file, tmp_path / "sim.duckdb")
    con = open_store(tmp_path / "sim.duckdb")
    load_simulation(con, small_sim)
    try:
        yield con
    finally:
        con.close()


@pytest.fixture(scope="session")
def small_sim_derived_file(small_sim: Any, tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path
                           ) -> Path:
    """A store holding ``small_sim`` loaded directly and recomputed under the default settings, closed: built once
    per session (a worker) for the tests that only read what that recompute derived."""
    from stripe_churn.metrics.runner import recompute
    from stripe_churn.store.db import open_store
    from stripe_churn.store.load import load_simulation

    path = tmp_path_factory.mktemp("small_sim_derived") / "sim.duckdb"
    shutil.copyfile(migrated_store_file, path)
    con = open_store(path)
    try:
        load_simulation(con, small_sim)
        recompute(con, Settings())
    finally:
        con.close()
    return path


@pytest.fixture
def small_sim_derived(small_sim_derived_file: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """``small_sim`` loaded and recomputed under the default settings (``Settings()``), shared by the tests that
    read it: a read-only connection, so that a test cannot change what the next one reads (DuckDB refuses any
    write)."""
    con = duckdb.connect(str(small_sim_derived_file), read_only=True)
    try:
        yield con
    finally:
        con.close()


def shadowing(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The statements by which :func:`account_view` shadows ``con``'s store (``{accounts}``: the accounts' ids,
    quoted); they depend on the store's catalogue alone, so a store read by many views reads it once."""
    db = con.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    rels = con.execute(
        "SELECT t.table_name, t.table_type, bool_or(c.column_name = 'account_id') FROM information_schema.tables t "
        "JOIN information_schema.columns c USING (table_catalog, table_schema, table_name) "
        "WHERE t.table_catalog = ? AND t.table_schema = 'main' GROUP BY ALL ORDER BY 1", [db]).fetchall()
    out = []
    for name, kind, has_account in rels:
        if has_account:
            out.append(f'CREATE TEMP VIEW "{name}" AS SELECT * FROM "{db}".main."{name}" '
                       "WHERE account_id IN ({accounts})")
        elif kind == "VIEW" or name == "derived_bridge_ledger_month":
            out.append(f'CREATE TEMP VIEW "{name}" AS SELECT NULL AS store_wide FROM range(1) '
                       f"WHERE error('{name} sums every account of a shared store: this test cannot share one')"
                       " IS NULL")
    for name, params in con.execute("SELECT function_name, parameters FROM duckdb_functions() WHERE database_name = ? "
                                    "AND schema_name = 'main' AND function_type = 'table_macro'", [db]).fetchall():
        out.append(f'CREATE TEMP MACRO "{name}"({", ".join(params)}) AS TABLE SELECT '
                   f"error('{name} reads every account of a shared store: this test cannot share one') AS x")
    return out


def account_view(con: duckdb.DuckDBPyConnection, *account_ids: str, statements: list[str] | None = None
                 ) -> duckdb.DuckDBPyConnection:
    """A second connection to ``con``'s store that sees some accounts (usually one): every table and view with an
    ``account_id`` column is shadowed by a temp view of those accounts' rows; every view without one and the bridge's
    ledger (sums over the whole store: mrr_bridge, churn_reasons, the cohorts) and every table macro (mrr_bridge_for,
    ...) by one that fails when read. (Temp objects belong to the connection; the store and ``con`` are untouched.
    Left as they are: the inputs shared by a store's accounts, fx_rates and the settings' tables, and scalar macros
    such as price_mrr.) ``statements``: :func:`shadowing` of the store, when known."""
    quoted = ", ".join("'" + account.replace("'", "''") + "'" for account in account_ids)
    cur = con.cursor()
    for sql in shadowing(con) if statements is None else statements:
        cur.execute(sql.replace("{accounts}", quoted))
    return cur


def keep_temp_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Copy the temp tables of ``con`` that have an ``account_id`` column (a recompute's, e.g. step 20's
    derived_sub_events) into its store, where another connection (:func:`account_view`) sees them as ``con`` does."""
    for (name,) in con.execute("SELECT DISTINCT table_name FROM duckdb_columns() WHERE database_name = 'temp' "
                               "AND column_name = 'account_id' ORDER BY 1").fetchall():
        con.execute(f'CREATE TABLE main."{name}" AS FROM temp."{name}"')


def _store_key(worlds: tuple[World, ...], currency: str, rules: dict[str, Any]) -> str:
    """Which shared store a derive(...) of ``worlds`` loads into: one per settings (currency, rules) and exchange
    rates (the same for each World of one derive: :func:`load_worlds`)."""
    return repr((currency, sorted(rules.items()), worlds[0].fx_rates if worlds else None))


def _derive_call(worlds: tuple[World, ...], key: str, seen_at: int, events: bool | int, load: Load | None
                 ) -> tuple[Any, ...]:
    """What a ``derive(...)`` of a @one_store test asks for: its accounts, store, clock, events and loading."""
    return tuple(w.account_id for w in worlds), key, seen_at, events, getattr(load, "__qualname__", repr(load))


class _Loaded(Exception):
    """Raised by the collecting ``derive`` once a test's Worlds are loaded: the rest of the test runs later."""


class OneStore:
    """The tests of one module whose cases are each an account of one store: ONE recompute per settings for all.

    In the module: ``one_store = OneStore()`` and ``world, derive, one_store_built = one_store.fixtures()``;
    decorate each such test ``@one_store`` (innermost, under its parametrize marks). Such a test takes only
    ``world``, ``derive`` and its parameters, builds its Worlds deterministically and calls ``derive`` once: with
    ``world``, whose account is the test's id (e.g. ``test_x[case]``), and, for a test that compares accounts (a
    case and its copy with the events' ids reordered, a price and its plan-shaped row), more Worlds whose accounts
    start with that id; ``load=`` as for the plain ``derive``.

    The first of them to run builds every one's case: it runs each test's body with a World of its own account up
    to its ``derive(...)``, which loads the Worlds into the store of those settings (currency and rules) and
    exchange rates and stops the body there; then each store is recomputed once. Each test then runs in full as it
    reads, rebuilding the same Worlds (a few milliseconds), and its ``derive`` checks that it asks for what was
    loaded and returns :func:`account_view` of its accounts: every query sees those accounts' rows alone, and a
    store-wide view fails (the recompute's temp tables with an account column, such as step 20's
    derived_sub_events, are kept in the store for those views: :func:`keep_temp_tables`). Coverage, the snapshot
    and Stripe's clock are per account; fx_rates is not, so the accounts of a store are those that load the same
    rates. Unmarked tests of the module keep their own store. (Under pytest-xdist each worker builds every case of
    a module it runs a test of.)
    """

    def __init__(self) -> None:
        self.tests: set[str] = set()

    def __call__(self, fn: Callable[..., None]) -> Callable[..., None]:
        self.tests.add(fn.__name__)
        return fn

    def fixtures(self) -> tuple[Any, Any, Any]:
        tests = self.tests

        def shared(node: Any) -> bool:
            return getattr(node, "originalname", None) in tests

        @pytest.fixture(name="one_store_built", scope="module")
        def built(request: pytest.FixtureRequest, module_stores: Callable[[], duckdb.DuckDBPyConnection]
                  ) -> dict[str, tuple[duckdb.DuckDBPyConnection, list[str], tuple[Any, ...]]]:
            from stripe_churn.metrics.runner import recompute

            stores: dict[str, tuple[duckdb.DuckDBPyConnection, Any]] = {}
            keys: dict[str, tuple[Any, ...]] = {}  # each test's derive(...), as loaded
            accounts: set[str] = set()
            calls: list[tuple[Any, ...]] = []  # the current test's derive(...), as loaded

            def collect(*worlds: World, seen_at: int, events: bool | int = True, currency: str = "usd",
                        load: Load | None = None, **rules: Any) -> duckdb.DuckDBPyConnection:
                key = _store_key(worlds, currency, rules)
                known = key in stores  # (fx_rates is global: one store per list of rates, loaded once)
                if not known:
                    stores[key] = (module_stores(), (currency, rules))
                load_worlds(stores[key][0], worlds, seen_at=seen_at, events=events, load=load, rates_loaded=known)
                calls.append(_derive_call(worlds, key, seen_at, events, load))
                raise _Loaded

            for item in request.session.items:
                if getattr(item, "module", None) is not request.module or not shared(item):
                    continue
                assert item.get_closest_marker("xfail") is None, f"{item.name}: an expected failure keeps its own store"
                calls.clear()
                params = getattr(getattr(item, "callspec", None), "params", {})
                with contextlib.suppress(_Loaded):
                    item.function(world=World(account_id=item.name), derive=collect, **params)
                assert len(calls) == 1, f"{item.name} did not call derive(...) (a @one_store test calls it once)"
                for account in calls[0][0]:
                    assert account.startswith(item.name) and account not in accounts, (
                        f"{item.name} derives account {account}: a @one_store test's accounts are its own, named "
                        "by its id")
                    accounts.add(account)
                keys[item.name] = calls[0]
            statements: dict[str, list[str]] = {}
            for key, (con, (currency, rules)) in stores.items():
                recompute(con, make_settings(currency, **rules))
                keep_temp_tables(con)
                statements[key] = shadowing(con)
            return {name: (stores[call[1]][0], statements[call[1]], call) for name, call in keys.items()}

        @pytest.fixture(name="world")
        def world_fx(request: pytest.FixtureRequest) -> World:
            return World(account_id=request.node.name) if shared(request.node) else World()

        @pytest.fixture(name="derive")
        def derive_fx(request: pytest.FixtureRequest) -> Callable[..., duckdb.DuckDBPyConnection]:
            if not shared(request.node):
                return derive_in(request.getfixturevalue("store"))
            con, statements, call = request.getfixturevalue("one_store_built")[request.node.name]
            views: list[duckdb.DuckDBPyConnection] = []

            def run(*worlds: World, seen_at: int, events: bool | int = True, currency: str = "usd",
                    load: Load | None = None, **rules: Any) -> duckdb.DuckDBPyConnection:
                assert not views, f"{request.node.name}: a @one_store test derives once"
                asked = _derive_call(worlds, _store_key(worlds, currency, rules), seen_at, events, load)
                assert asked == call, f"{request.node.name}: derive asks for {asked}, the shared store loaded {call}"
                views.append(account_view(con, *asked[0], statements=statements))
                request.addfinalizer(views[-1].close)
                return views[-1]

            return run

        return world_fx, derive_fx, built


def _derivation_key(worlds: tuple[World, ...], seen_at: int, events: bool | int, currency: str, load: Load | None,
                    rules: dict[str, Any]) -> str:
    """A digest of what a ``derive(...)`` loads and the settings it recomputes under."""
    import hashlib
    import json

    asked = [[[w.account_id, w.objects, w.events, w.fx_rates] for w in worlds], seen_at, events, currency,
             getattr(load, "__qualname__", repr(load)), repr(sorted(rules.items()))]
    return hashlib.sha256(json.dumps(asked, sort_keys=True, default=str).encode()).hexdigest()


@pytest.fixture(scope="session")
def _derived_once(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """The folder and the stores of ``derive_read_only``, by :func:`_derivation_key`."""
    return tmp_path_factory.mktemp("derived_once"), {}


@pytest.fixture
def derive_read_only(request: pytest.FixtureRequest, _derived_once: tuple[Path, dict[str, Path]],
                     migrated_store_file: Path) -> Callable[..., duckdb.DuckDBPyConnection]:
    """``derive`` for a test that only reads what it derived (the same arguments): a read-only connection to a store
    of those Worlds loaded and recomputed under those settings, built once per session (a worker) and shared by
    every test that derives the same Worlds at the same moment under the same rules (a recompute of a tiny store
    costs about half a second). DuckDB refuses any write, so a test cannot change what the next one reads."""
    from stripe_churn.metrics.runner import recompute
    from stripe_churn.store.db import open_store

    folder, stores = _derived_once

    def run(*worlds: World, seen_at: int, events: bool | int = True, currency: str = "usd", load: Load | None = None,
            **rules: Any) -> duckdb.DuckDBPyConnection:
        key = _derivation_key(worlds, seen_at, events, currency, load, rules)
        if key not in stores:
            path = folder / f"{key[:20]}.duckdb"
            shutil.copyfile(migrated_store_file, path)
            con = open_store(path)
            try:
                load_worlds(con, worlds, seen_at=seen_at, events=events, load=load)
                recompute(con, make_settings(currency, **rules))
            finally:
                con.close()
            stores[key] = path
        con = open_store(stores[key], read_only=True)
        request.addfinalizer(con.close)
        return con

    return run


def script_module(name: str) -> ModuleType:
    """The benchmark script ``scripts/<name>.py`` as a module (its helpers build the benchmarks' stores)."""
    path = Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
