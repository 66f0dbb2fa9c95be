#!/usr/bin/env python
"""Benchmark the metrics pipeline (history, MRR, labels, bridge) on a large store built from the simulation.

The store is built without HTTP: a block of customers is simulated and loaded with ``load_simulation``, then,
when more customers are asked for than the block holds, the block is replicated inside DuckDB with re-keyed
ids (customers, subscriptions, items, invoices, lines, events and discounts get a copy number; the catalogue
is shared) until the store holds the requested number of customers. Re-keying is one plain ``replace`` of the
simulation's id marker per value (no regular expressions); copies of the tables the metrics read by their
typed columns only (invoices, lines, credit notes, items) get a stub ``raw``. The output says how it was built.

Timed: the full recompute, an incremental recompute after one more billing run of the block (what an
incremental sync would fetch is loaded: the block's new and changed objects and new events; then
``stripe_churn.metrics.incremental`` derives again only the customers they belong to), a 5-year monthly
bridge query, peak memory, and a plain-Python per-customer loop over a sample for comparison. The store, and
the block's next billing run, are built in a child process: the timed phases run in a process that never held
the simulation's Python objects (about 11 GB at 1M: beside them, with DuckDB capped at 8.6 GB, the full recompute
took 321-324 s, against 208 s under an 8 GB cap without them and 175-181 s with DuckDB's default). For scale, a floor on the same store: a lean chain over integer-keyed invoice lines with none
of the rules (``--no-floor`` skips it), i.e. roughly the least any recompute from invoice lines costs on this
machine.

    python scripts/bench_rollup.py                       # 1,000,000 customers x 24 months (block of 20,000)
    python scripts/bench_rollup.py --customers 20000 --block 5000   # a small run
    python scripts/bench_rollup.py --customers 20000 --block 5000 --fx daily   # what daily rates cost
    python scripts/bench_rollup.py --customers 200000 --profile   # and where the time goes, step by step
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import multiprocessing
import os
import pickle
import resource
import sys
import tempfile
import time
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import duckdb
import orjson

from stripe_churn.metrics import incremental
from stripe_churn.metrics.runner import recompute
from stripe_churn.settings import Settings
from stripe_churn.store.schema import SUB_STATE_TYPE

TARGET_FULL_S = 20.0
TARGET_INCREMENTAL_S = 2.0
TARGET_BRIDGE_MS = 200.0
PROFILE_STATEMENTS = 12  # statements of the full and of the incremental recompute that --profile names
# Tables whose rows belong to one customer (re-keyed per copy); the catalogue tables are shared.
PER_CUSTOMER = ("customers", "subscriptions", "subscription_items", "invoices", "invoice_lines", "credit_notes",
                "discounts", "events")
# Per-customer tables whose raw JSON the metrics read (events, discounts) or may read for a few rows
# (customers for metadata segments, subscriptions for scheduled_churn): their copies keep the JSON, re-keyed.
# The metrics read invoices, lines, credit notes and items by their typed columns (an item's JSON only when
# its price is not stored, never here), so their copies get a stub JSON instead of tens of GB of text at 1M.
RAW_KEPT = ("customers", "subscriptions", "discounts", "events")
# Catalogue id prefixes (shared by every copy): the re-keying puts them back.
SHARED_PREFIXES = ("price", "prod")
# Typed columns holding a catalogue id: copied as they are.
SHARED_COLUMNS = ("price_id", "product_id", "coupon_id")
STUB_RAW = '{"note": "benchmark copy: raw JSON not kept (the metrics read this table by its typed columns)"}'


def peak_mb() -> float:
    """Peak resident memory of this process so far, in MB (DuckDB runs in-process)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def physical_mb() -> float:
    """This machine's memory, in MB."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20


def resident_mb() -> float:
    """This process's resident memory now, in MB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def id_marker(con: duckdb.DuckDBPyConnection) -> str:
    """The simulation's id marker: every id it makes is ``<prefix>_<marker><counter>`` (the marker comes from
    the seed, the same for every object); checked on the block's ids."""
    first = con.execute("SELECT min(id) FROM customers").fetchall()[0][0]
    marker = "_" + first.split("_", 1)[1][:4]
    bad = con.execute(
        "SELECT count(*) FROM (SELECT id FROM customers UNION ALL SELECT id FROM subscriptions "
        "UNION ALL SELECT id FROM invoices UNION ALL SELECT id FROM events) WHERE position(? IN id) = 0",
        [marker]).fetchall()[0][0]
    if bad:
        raise SystemExit(f"{bad} ids without the marker {marker!r}: this store was not built by the simulation")
    return marker


def rekey_sql(expr: str, marker: str, shared: bool = True) -> str:
    """SQL re-keying every simulation id inside ``expr`` (an id or a JSON text) for copy ``r.k``: one plain
    replace of the marker (``cus_0Mez...`` -> ``cus_3x0Mez...``), then, when ``expr`` may hold catalogue ids
    (``shared``), those put back."""
    out = f"replace({expr}, '{marker}', '_' || r.k || 'x{marker[1:]}')"
    for prefix in SHARED_PREFIXES if shared else ():
        out = f"replace({out}, '{prefix}_' || r.k || 'x{marker[1:]}', '{prefix}{marker}')"
    return out


def rekey_sub_state(marker: str) -> str:
    """SQL re-keying a subscription event's parsed fields (``events.sub_state``) as :func:`rekey_sql` re-keys
    its JSON: the items' ids and the discounts; prices stay shared."""
    def items(field: str) -> str:
        return (f"list_transform(sub_state.{field}, lambda i: {{'id': {rekey_sql('i.id', marker, shared=False)}, "
                "'price_id': i.price_id, 'quantity_text': i.quantity_text, 'created': i.created})")

    def discounts(field: str) -> str:
        return f"CAST({rekey_sql(f'CAST(sub_state.{field} AS VARCHAR)', marker)} AS JSON)"

    return (f"CAST(CASE WHEN sub_state IS NOT NULL THEN {{'status': sub_state.status, 'types': sub_state.types, "
            f"'has_more': sub_state.has_more, 'items': {items('items')}, 'discounts': {discounts('discounts')}, "
            "'prev_status': sub_state.prev_status, 'prev_has_more': sub_state.prev_has_more, "
            f"'prev_items': {items('prev_items')}, 'prev_discounts': {discounts('prev_discounts')}}} END "
            f"AS {SUB_STATE_TYPE})")


def replicate(con: duckdb.DuckDBPyConnection, copies: int) -> None:
    """Add ``copies - 1`` re-keyed copies of every per-customer row (copy k: ``cus_X`` -> ``cus_kxX``...), with
    the block's own rows spread among them as a real account's customers are spread through its tables (a
    billing run's customers are not stored side by side: reading them touches most of every table)."""
    if copies <= 1:
        return
    marker = id_marker(con)
    for table in PER_CUSTOMER:
        cols = con.execute(f"DESCRIBE {table}").fetchall()
        exprs = []
        for name, typ, *_ in cols:
            if name == "raw" and table in RAW_KEPT:
                expr = f"CAST({rekey_sql('CAST(raw AS VARCHAR)', marker)} AS JSON)"
            elif name == "raw":
                expr = f"CAST('{STUB_RAW}' AS JSON)"
            elif name == "sub_state":
                expr = rekey_sub_state(marker)
            elif typ == "VARCHAR" and name not in ("account_id", *SHARED_COLUMNS) and (
                    name == "id" or name.endswith("_id")):
                # (an event's object may be a price or a product; other id columns name one kind of object)
                expr = rekey_sql(name, marker, shared=name == "object_id")
            else:
                expr = name
            # (copy 0 is the block itself)
            exprs.append(name if expr == name else f"CASE WHEN r.k = 0 THEN {name} ELSE {expr} END AS {name}")
        # the block's rows are taken out and written again with their copies: the rows of one chunk of the block,
        # then that chunk's copies, and so on, so that the block ends up spread through the table
        con.execute(f"CREATE TEMP TABLE bench_block AS SELECT * FROM {table}")
        con.execute(f"DELETE FROM {table}")
        con.execute(f"INSERT INTO {table} SELECT {', '.join(exprs)} FROM bench_block t, range(0, {copies}) r(k)")
        con.execute("DROP TABLE bench_block")


RESOURCES = ("customers", "products", "prices", "coupons", "subscriptions", "invoices", "credit_notes")


def fingerprints(sim: Any) -> dict[tuple[str, str], int]:
    """A hash of every object of the simulation (and of its discounts), to tell later what a billing run changed."""
    out = {(r, oid): hash(orjson.dumps(obj)) for r in RESOURCES for oid, obj in sim.objects.get(r, {}).items()}
    out.update({("discounts", did): hash(orjson.dumps(d)) for did, d in getattr(sim, "discounts", {}).items()})
    return out


def collect_changes(sim: Any, before: dict[tuple[str, str], int], since: int) -> list[tuple[str, list[Any]]]:
    """What an incremental sync fetches after a billing run, per resource: the objects new or changed since
    ``before`` (a changed subscription with all its items, a changed invoice with all its lines) and the events
    created after ``since``."""
    def changed(resource: str, objs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        return [o for oid, o in objs.items() if before.get((resource, oid)) != hash(orjson.dumps(o))]

    out: list[tuple[str, list[Any]]] = []
    for kind in RESOURCES:
        objs = changed(kind, sim.objects.get(kind, {}))
        out.append((kind, objs))
        if kind == "subscriptions":
            out.append(("subscription_items", [it for s in objs if not s.get("deleted")
                                               for it in s.get("items", {}).get("data", [])]))
        if kind == "invoices":
            out.append(("invoice_lines", [ln for v in objs if not v.get("deleted")
                                          for ln in v.get("lines", {}).get("data", [])]))
    out.append(("discounts", changed("discounts", getattr(sim, "discounts", {}))))
    out.append(("events", [e for e in sim.events if e["created"] > since]))
    return out


def load_changes(con: duckdb.DuckDBPyConnection, changes: list[tuple[str, list[Any]]], account_id: str,
                 seen: dt.datetime) -> int:
    """Load the ``changes`` of :func:`collect_changes` as seen at ``seen``, in one transaction. Returns the number
    of objects loaded."""
    from stripe_churn.store.load import upsert_objects

    n = 0
    con.execute("BEGIN TRANSACTION")
    try:
        for kind, objs in changes:
            n += upsert_objects(con, kind, account_id, objs, seen)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return n


# --- a plain-Python version of the derive/classify/rollup steps, one customer at a time ---------------------

def python_rollup(rows: list[tuple[Any, ...]], window_s: int = 3600) -> dict[str, Decimal]:
    """From item MRR intervals (customer, item, family, price, qty, from, to, mrr, rate), per customer: MRR
    levels, transitions netted over the window, labels, then monthly flows. Returns net flow per month."""
    by_customer: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for r in rows:
        by_customer[r[0]].append(r)
    flows: dict[str, Decimal] = defaultdict(Decimal)
    q = Decimal("0.0001")
    for items in by_customer.values():
        points = sorted({r[5] for r in items} | {r[6] for r in items if r[6] is not None})

        def state(at: float, before: bool, items: list[tuple[Any, ...]] = items) -> dict[str, tuple[Any, ...]]:
            if before:
                return {r[1]: r for r in items if r[5] < at and (r[6] is None or r[6] >= at)}
            return {r[1]: r for r in items if r[5] <= at and (r[6] is None or r[6] > at)}

        def mrr(s: dict[str, tuple[Any, ...]]) -> Decimal:
            return sum((Decimal(r[7]) * Decimal(r[8]) for r in s.values()), Decimal(0)).quantize(q, ROUND_HALF_UP)

        had = False
        i = 0
        while i < len(points):
            start = points[i]
            j = i
            while j + 1 < len(points) and points[j + 1] - start <= window_s:
                j += 1
            a, b = state(start, True), state(points[j], False)
            ma, mb = mrr(a), mrr(b)
            i = j + 1
            if ma == mb:
                continue
            month = dt.datetime.fromtimestamp(start, tz=dt.UTC).strftime("%Y-%m")
            if ma == 0 or mb == 0:
                label = "cancellation" if mb == 0 else ("reactivation" if had else "new")
                flows[f"{month} {label}"] += mb - ma
            else:
                fam_a, fam_b = {r[2] for r in a.values()}, {r[2] for r in b.values()}
                for item in set(a) | set(b):
                    ra, rb = a.get(item), b.get(item)
                    delta = (Decimal(rb[7]) if rb else Decimal(0)) - (Decimal(ra[7]) if ra else Decimal(0))
                    if delta == 0:
                        continue
                    if ra and rb:
                        label = "upgrade" if ra[3] != rb[3] else "seat"
                    elif rb:
                        label = "expansion" if rb[2] in fam_a else "cross_sell"
                    else:
                        label = "contraction" if ra is not None and ra[2] in fam_b else "downgrade"
                    flows[f"{month} {label}"] += delta
            had = had or mb > 0
    return flows


# --- a floor: the least a recompute from invoice lines must do, without the rules ------------------------------

# Integer keys and compact invoice lines (what a store built for speed would keep at load time), then a lean chain
# over them: runs of equal price and quantity per item, item MRR, customer MRR by a running sum, each item's change
# at each point, a four-way label and a monthly sum. None of the rules of design.md 3-5 (events, snapshots,
# discounts, tiers, statuses, trials, metered usage, exchange rates, the movement window, pairing, the split of a
# combined change, data quality) is here: this is what the full recompute is measured against, not a product.
FLOOR_KEYS = (
    ("floor_customers", "SELECT account_id, id, CAST(row_number() OVER () AS INTEGER) AS k FROM customers"),
    ("floor_items", "SELECT account_id, subscription_item_id AS id, CAST(row_number() OVER () AS INTEGER) AS k "
                    "FROM (SELECT DISTINCT account_id, subscription_item_id FROM invoice_lines "
                    "WHERE subscription_item_id IS NOT NULL)"),
    ("floor_prices", "SELECT account_id, id, CAST(row_number() OVER () AS INTEGER) AS k, unit_amount, "
                     "CASE recurring_interval WHEN 'year' THEN 12.0 WHEN 'month' THEN 1.0 WHEN 'week' THEN 12 / 52 "
                     "WHEN 'day' THEN 12 / 365 END * coalesce(recurring_interval_count, 1) AS months "
                     "FROM prices WHERE recurring_interval IS NOT NULL AND unit_amount IS NOT NULL"),
    ("floor_lines", "SELECT c.k AS ck, i.k AS ik, p.k AS pk, CAST(l.quantity AS INTEGER) AS q, "
                    "CAST(epoch(l.period_start) AS BIGINT) AS ps, CAST(epoch(l.period_end) AS BIGINT) AS pe, "
                    "coalesce(l.parent_proration, false) AS pr, CAST(epoch(v.created) AS BIGINT) AS ct "
                    "FROM invoice_lines l "
                    "JOIN invoices v ON v.account_id = l.account_id AND v.id = l.invoice_id "
                    "JOIN floor_customers c ON c.account_id = v.account_id AND c.id = v.customer_id "
                    "JOIN floor_items i ON i.account_id = l.account_id AND i.id = l.subscription_item_id "
                    "JOIN floor_prices p ON p.account_id = l.account_id AND p.id = l.price_id "
                    "WHERE NOT coalesce(l.deleted, false) AND NOT coalesce(v.deleted, false)"),
)
FLOOR_CHAIN = (
    ("floor_changes", "SELECT *, (pk IS DISTINCT FROM lag(pk) OVER w OR q IS DISTINCT FROM lag(q) OVER w OR pr) "
                      "AS chg FROM floor_lines WINDOW w AS (PARTITION BY ik ORDER BY ps, ct)"),
    ("floor_runs", "SELECT ck, ik, pk, q, min(ps) AS vf, max(pe) AS vt FROM (SELECT *, sum(CAST(chg AS INTEGER)) "
                   "OVER (PARTITION BY ik ORDER BY ps, ct) AS run FROM floor_changes) GROUP BY ck, ik, pk, q, run"),
    ("floor_item_mrr", "SELECT r.*, r.q * p.unit_amount / p.months / 100 AS mrr FROM floor_runs r "
                       "JOIN floor_prices p ON p.k = r.pk"),
    ("floor_points", "SELECT ck, t, sum(d) AS d FROM (SELECT ck, vf AS t, mrr AS d FROM floor_item_mrr "
                     "UNION ALL SELECT ck, vt, -mrr FROM floor_item_mrr) GROUP BY ck, t"),
    ("floor_customer_mrr", "SELECT ck, t, sum(d) OVER (PARTITION BY ck ORDER BY t) AS mrr, d FROM floor_points"),
    ("floor_item_deltas", "SELECT ck, ik, t, sum(d) AS d FROM (SELECT ck, ik, vf AS t, mrr AS d "
                          "FROM floor_item_mrr UNION ALL SELECT ck, ik, vt, -mrr FROM floor_item_mrr) "
                          "GROUP BY ck, ik, t"),
    ("floor_movements", "SELECT c.ck, c.t, c.mrr - c.d AS mrr_before, c.mrr AS mrr_after, "
                        "CASE WHEN round(c.mrr - c.d, 6) = 0 THEN 'new' WHEN round(c.mrr, 6) = 0 THEN 'churn' "
                        "WHEN c.d > 0 THEN 'expansion' ELSE 'contraction' END AS category, x.n "
                        "FROM floor_customer_mrr c JOIN (SELECT ck, t, count(*) AS n FROM floor_item_deltas "
                        "WHERE d <> 0 GROUP BY ck, t) x USING (ck, t) WHERE round(c.d, 6) <> 0"),
    ("floor_bridge", "SELECT date_trunc('month', to_timestamp(t)) AS month, category, sum(mrr_after - mrr_before) "
                     "AS mrr_delta FROM floor_movements GROUP BY ALL"),
)


def lean_floor(con: duckdb.DuckDBPyConnection, keep: bool = False) -> tuple[float, float, int]:
    """Build the floor's integer-keyed lines, then run its chain (TEMP tables, dropped after unless ``keep``);
    returns (seconds to build the keyed lines, seconds for the chain, lines keyed)."""
    def run(steps: tuple[tuple[str, str], ...]) -> float:
        t0 = time.perf_counter()
        for name, sql in steps:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}")
        return time.perf_counter() - t0

    # (as the recompute runs: row order kept by no statement)
    preserve = con.execute("SELECT current_setting('preserve_insertion_order')").fetchall()[0][0]
    con.execute("SET preserve_insertion_order = false")
    try:
        t_keys = run(FLOOR_KEYS)
        t_chain = run(FLOOR_CHAIN)
        lines = con.execute("SELECT count(*) FROM floor_lines").fetchall()[0][0]
    finally:
        con.execute(f"SET preserve_insertion_order = {'true' if preserve else 'false'}")
        for name, _ in (*FLOOR_KEYS, *FLOOR_CHAIN) if not keep else ():
            con.execute(f"DROP TABLE IF EXISTS temp.{name}")
    return t_keys, t_chain, lines


def set_fx_rates(con: duckdb.DuckDBPyConnection, kind: str) -> int:
    """Replace the constant eur and gbp rates by one per month (the first) or per day, from the first stored
    rate through today, each a little different from the one before (every change revalues the customers
    billed in that currency); returns how many rates were written."""
    first = con.execute("SELECT min(date) FROM fx_rates").fetchall()[0][0]
    days = [first + dt.timedelta(days=i) for i in range((dt.datetime.now(dt.UTC).date() - first).days + 1)]
    if kind == "monthly":
        days = [first] + [d for d in days[1:] if d.day == 1]
    rows = [(d, cur, base + sign * Decimal(k % 50) / 10_000) for k, d in enumerate(days)
            for cur, base, sign in (("eur", Decimal("1.08"), 1), ("gbp", Decimal("1.27"), -1))]
    con.execute("DELETE FROM fx_rates WHERE currency IN ('eur', 'gbp')")
    con.executemany("INSERT INTO fx_rates VALUES (?, ?, ?)", [list(r) for r in rows])
    return len(rows)


class Timings(logging.Handler):
    """Collects the timings the recompute logs at DEBUG ("metrics step NAME took S s", "metrics statement NAME
    took S s", "incremental phase NAME took S s"), in the order they were logged, by what they time (the
    message's words before the name: "metrics step", "metrics statement", "incremental phase")."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.rows: list[tuple[str, str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if isinstance(record.msg, str) and record.msg.endswith(" %s took %.3f s") and isinstance(args, tuple) \
                and len(args) == 2 and isinstance(args[1], (int, float)):
            self.rows.append((record.msg.removesuffix(" %s took %.3f s"), str(args[0]), float(args[1])))

    def take(self, kind: str) -> list[tuple[str, float]]:
        """The timings of ``kind`` logged since the last take, and forget them."""
        out = [(name, s) for k, name, s in self.rows if k == kind]
        self.rows = [r for r in self.rows if r[0] != kind]
        return out


def print_slowest(statements: list[tuple[str, float]], what: str) -> None:
    """Print how many ``statements`` were timed and the ``PROFILE_STATEMENTS`` slowest of them."""
    slowest = sorted(statements, key=lambda r: -r[1])[:PROFILE_STATEMENTS]
    print(f"  its {len(statements)} {what}, the {len(slowest)} slowest: "
          + ", ".join(f"{name.replace('.sql', '')} {s:.2f} s" for name, s in slowest), flush=True)


def watch_timings() -> Timings:
    """Start collecting the recompute's step and phase timings (the console still shows warnings only)."""
    timings = Timings()
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    for name in ("stripe_churn.metrics.runner", "stripe_churn.metrics.incremental"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(timings)
    return timings


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def build(path: Path, out: Path, block: int, copies: int, months: int, seed: int, start: int,
          memory_limit: str | None) -> None:
    """Simulate ``block`` customers, load them into the store at ``path`` and replicate them ``copies`` times;
    then simulate the block's next billing run and write to ``out`` what an incremental sync would fetch after it
    (with the moment it is seen, the account and the moment the store was loaded as seen at)."""
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.store.db import open_store
    from stripe_churn.store.load import load_simulation

    print(f"building: simulating {block:,} customers x {months} months in Python", flush=True)
    t_sim, sim = timed(lambda: Simulation(customers=block, months=months, seed=seed, start=start))
    con = open_store(path)
    # (DuckDB's own default, 80% of the machine's memory, does not count the simulation held in Python: at
    # 1M customers the two together could exhaust the machine)
    limit = memory_limit or f"{max(1.0, 0.7 * (physical_mb() - resident_mb()) / 1024):.1f}GB"
    con.execute(f"SET memory_limit = '{limit}'")
    print(f"building: DuckDB memory_limit {limit}", flush=True)
    t_load, _ = timed(load_simulation, con, sim)
    t_rep, _ = timed(replicate, con, copies)
    n_customers = con.execute("SELECT count(*) FROM customers").fetchall()[0][0]
    sizes = {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
             for t in ("subscriptions", "invoices", "invoice_lines", "events")}
    con.close()
    how = (f"{block:,} simulated, replicated x{copies} with re-keyed ids in SQL" if copies > 1
           else f"{block:,} simulated")
    print(f"store: {n_customers:,} customers ({how}); " + ", ".join(f"{k} {v:,}" for k, v in sizes.items()))
    print(f"  simulate {t_sim:.1f} s, load {t_load:.1f} s, replicate {t_rep:.1f} s", flush=True)
    since = dt.datetime.fromtimestamp(sim.clock + 1, tz=dt.UTC)  # the block is loaded as seen at the sim's clock
    before, clock = fingerprints(sim), sim.clock
    sim.advance(1)
    with out.open("wb") as fh:
        pickle.dump((collect_changes(sim, before, clock), dt.datetime.fromtimestamp(int(sim.clock), dt.UTC),
                     sim.account_id, since), fh)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1_000_000, help="customers in the store (default 1,000,000)")
    ap.add_argument("--block", type=int, default=20_000, help="customers simulated in Python (default 20,000)")
    ap.add_argument("--months", type=int, default=24, help="months of history (default 24)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sample", type=int, default=10_000, help="customers in the Python-loop sample")
    ap.add_argument("--db", type=Path, help="DuckDB file to build (default: a temporary one, removed after)")
    ap.add_argument("--fx", choices=("constant", "monthly", "daily"), default="constant",
                    help="exchange rates of eur and gbp: the sandbox's constant ones (default), or a rate on the "
                         "first of every month, or one every day, from the store's first rate to today")
    ap.add_argument("--memory-limit", default=None,
                    help="DuckDB memory_limit, e.g. 6GB (default: DuckDB's own for the timed phases; 70%% of the "
                         "memory left beside the simulation while building)")
    ap.add_argument("--no-floor", action="store_true",
                    help="skip the floor (a lean chain without the rules, timed on the same store for comparison)")
    ap.add_argument("--profile", action="store_true",
                    help="also print how long each step of the full recompute, its slowest statements and each "
                         "phase of the incremental took (from the timings they log at DEBUG, in the timed runs "
                         "themselves)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    timings = watch_timings() if args.profile else None
    from stripe_churn.store.db import open_store

    if args.db is not None and (args.db.exists() or Path(f"{args.db}.wal").exists()):
        # (loading into it would mix a new block with the stored one, found only after the simulation)
        ap.error(f"--db {args.db} already exists: the benchmark builds a new store; remove it or name another file")
    block = min(args.block, args.customers)
    copies = -(-args.customers // block)
    settings = Settings()
    tmp = tempfile.TemporaryDirectory(prefix="bench-rollup-")
    path = args.db or Path(tmp.name) / "bench.duckdb"
    five_years_ago = int((dt.datetime.now(dt.UTC) - dt.timedelta(days=5 * 365)).timestamp())
    start = max(five_years_ago, int(time.time()) - (args.months + 1) * 31 * 86400)

    # The store is built in a child process, which also simulates the block's next billing run and keeps what an
    # incremental sync would fetch after it (loaded here after the full recompute): the timed phases run in a
    # process that never held the simulation's several GB of Python objects, beside nothing a user's would not.
    built = Path(tmp.name) / "build.pickle"
    child = multiprocessing.get_context("fork").Process(
        target=build, args=(path, built, block, copies, args.months, args.seed, start, args.memory_limit))
    child.start()
    child.join()
    if child.exitcode != 0:
        print(f"building the store failed (exit code {child.exitcode})", file=sys.stderr)
        return 1
    with built.open("rb") as fh:
        changes, seen, account_id, since = pickle.load(fh)
    con = open_store(path)
    if args.memory_limit:
        con.execute(f"SET memory_limit = '{args.memory_limit}'")
    limit = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    print(f"timed phases: DuckDB memory_limit {limit} (DuckDB's default unless --memory-limit)", flush=True)
    n_customers = con.execute("SELECT count(*) FROM customers").fetchall()[0][0]

    if args.fx != "constant":
        print(f"exchange rates: {set_fx_rates(con, args.fx):,} {args.fx} rates of eur and gbp", flush=True)
    t_full, _ = timed(recompute, con, settings)
    n_movements = con.execute("SELECT count(*) FROM derived_mrr_movements").fetchall()[0][0]
    print(f"full recompute: {t_full:.2f} s (target {TARGET_FULL_S:.0f} s) -> {n_movements:,} movements; "
          f"peak memory so far {peak_mb():,.0f} MB", flush=True)
    if n_customers < 1_000_000:
        print(f"  {t_full / n_customers * 1e6:,.0f} us/customer; at 1,000,000 customers, linearly: "
              f"{t_full / n_customers * 1_000_000:,.0f} s", flush=True)
    if timings is not None:
        steps = sorted(timings.take("metrics step"), key=lambda r: -r[1])
        print("  its steps, slowest first: " + ", ".join(f"{name.removesuffix('.sql')} {s:.2f} s"
                                                         for name, s in steps), flush=True)
        print_slowest(timings.take("metrics statement"), "statements")

    # one more billing run of the block: what an incremental sync would fetch (its new and changed objects
    # and new events) is loaded, then only the customers they belong to are derived again
    t_reload, n_loaded = timed(load_changes, con, changes, account_id, seen)
    t_inc, touched = timed(incremental.recompute_changed, con, settings, since)
    print(f"incremental recompute after one billing run: {t_inc:.2f} s (target {TARGET_INCREMENTAL_S:.0f} s), "
          f"{touched:,} customers derived again ({n_loaded:,} new or changed objects of the block loaded in "
          f"{t_reload:.1f} s, not timed)", flush=True)
    if timings is not None:
        print("  its phases, in the order they ended (the moved customers' and the old ledger ran beside the "
              "scopes; 'derive' holds those from staging on):", flush=True)
        for name, s in timings.take("incremental phase"):
            print(f"    {name}: {s:.2f} s", flush=True)
        # (the moved customers' statements and the scopes', one list: their names say which steps they are)
        print_slowest(timings.take("scoped statement"), "statements on the changed customers")

    t_bridge = min(timed(lambda: con.execute(
        "SELECT * FROM mrr_bridge WHERE period_start >= current_date - INTERVAL 5 YEAR").fetchall())[0]
        for _ in range(5))
    n_periods = len(con.execute("SELECT 1 FROM mrr_bridge WHERE period_start >= current_date - INTERVAL 5 YEAR")
                    .fetchall())
    print(f"5-year monthly bridge query: {t_bridge * 1000:.0f} ms for {n_periods} months "
          f"(target {TARGET_BRIDGE_MS:.0f} ms)")

    sample = con.execute(
        "SELECT i.customer_id, i.subscription_item_id, i.family, i.price_id, i.quantity, epoch(i.valid_from), "
        "epoch(i.valid_to), CAST(i.mrr_original AS VARCHAR), '1' FROM derived_item_mrr i "
        "JOIN (SELECT DISTINCT customer_id FROM derived_item_mrr ORDER BY customer_id LIMIT ?) s USING (customer_id)",
        [args.sample]).fetchall()
    n_sample = len({r[0] for r in sample})
    t_py, _ = timed(python_rollup, sample)
    per_py = t_py / max(n_sample, 1)
    per_sql = t_full / max(n_customers, 1)
    print(f"plain-Python per-customer loop: {t_py:.2f} s for {n_sample:,} customers (from item MRR rows on, "
          f"so less work than the SQL does); {per_py * 1e6:,.0f} us/customer against {per_sql * 1e6:,.1f} "
          f"us/customer for the whole SQL recompute: ratio Python/SQL {per_py / per_sql:,.2f} "
          f"({'SQL' if per_py > per_sql else 'the plain loop'} is faster)")
    if not args.no_floor:
        t_keys, t_chain, n_lines = lean_floor(con)
        print(f"floor: a lean chain over integer-keyed invoice lines, without any rule of design.md 3-5 (runs of "
              f"price and quantity, item and customer MRR, a four-way label, a monthly sum): {t_chain:.2f} s over "
              f"{n_lines:,} lines, after {t_keys:.2f} s to key them; the full recompute took "
              f"{t_full / t_chain:,.1f} times the chain", flush=True)
    print(f"peak memory: {peak_mb():,.0f} MB (of the process that times; the store was built in another)")
    con.close()
    tmp.cleanup()
    ok = t_full <= TARGET_FULL_S and t_inc <= TARGET_INCREMENTAL_S and t_bridge * 1000 <= TARGET_BRIDGE_MS
    if n_customers < 1_000_000:
        # (the targets are set for a 1M-customer store: a smaller one can only be judged by extrapolation)
        full_at_1m = t_full / n_customers * 1_000_000
        print(f"the targets are for 1,000,000 customers and this store has {n_customers:,}: the full recompute, "
              f"extrapolated linearly, {'meets' if full_at_1m <= TARGET_FULL_S else 'misses'} its target "
              f"({full_at_1m:,.0f} s against {TARGET_FULL_S:.0f} s); the incremental and bridge figures are for "
              f"this store")
    else:
        print("all targets met" if ok else "some targets missed (see above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
