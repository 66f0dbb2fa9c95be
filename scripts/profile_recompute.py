#!/usr/bin/env python
"""Profile a full metrics recompute of a store, statement by statement, and leave the store as it was.

Runs every step's statements one at a time in one transaction with DuckDB's profiler on, then rolls it back (the
store's derived tables and views are untouched). For each statement that took at least ``--min-seconds`` it prints
its time and its slowest operators, with the rows each produced and the optimizer's estimate. A join whose estimate
is far below what it produced, or which takes seconds for few rows, is a plan gone wrong (NOTES.md: step 90 at 200k
customers, step 62 at 1M); such plans may appear at one size of store only, so profile the size that is slow.

    python scripts/profile_recompute.py STORE.duckdb                        # statements of 0.5 s and more
    python scripts/profile_recompute.py STORE.duckdb --min-seconds 2 --operators 8
    python scripts/profile_recompute.py STORE.duckdb --statement derived_transition_sides
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stripe_churn.errors import StripeChurnError
from stripe_churn.metrics import runner
from stripe_churn.settings import load_settings
from stripe_churn.store.db import open_store


def operators(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every operator of a DuckDB json profile's tree (its ``operator`` list), flattened."""
    out = []
    for node in nodes:
        out.append(node)
        out.extend(operators(node.get("children", [])))
    return out


def describe(op: dict[str, Any]) -> str:
    info = op.get("extra_info") or {}
    detail = {k: info[k] for k in ("Join Type", "Conditions", "Table", "CTE Name", "Groups", "Projections") if k in info}
    estimate = info.get("Estimated Cardinality", "?")
    text = json.dumps(detail)
    return (f"{op.get('timing') or 0.0:7.2f} s  {op.get('type')}  "
            f"rows {op.get('intermediate_rows')} (estimated {estimate})  {text[:240]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store", type=Path, help="the DuckDB store to profile (nothing in it changes)")
    ap.add_argument("--config", type=Path, help="settings file whose rules to recompute with (default: the defaults)")
    ap.add_argument("--min-seconds", type=float, default=0.5, help="print statements that took at least this long")
    ap.add_argument("--operators", type=int, default=4, help="slowest operators printed per statement")
    ap.add_argument("--statement", help="profile only the statement whose label ends with this (the steps before it "
                                        "run unprofiled)")
    args = ap.parse_args(argv)
    if not args.store.exists():
        print(f"error: no store at {args.store}: give the path of a synced store", file=sys.stderr)
        return 2
    try:
        settings = load_settings(args.config) if args.config else load_settings(env={})
        con = open_store(args.store)
    except StripeChurnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    profile = Path(tempfile.mkdtemp()) / "profile.json"
    con.execute("SET preserve_insertion_order = false")
    con.execute("BEGIN TRANSACTION")
    rows: list[tuple[float, str]] = []
    started = time.perf_counter()
    try:
        runner.write_settings(con, settings)
        for name, text in runner.sql_steps():
            for statement in runner.parsed_statements(con, text):
                label = runner.statement_label(name, statement.query)
                wanted = args.statement is None or label.endswith(args.statement)
                if wanted:
                    con.execute("SET enable_profiling = 'json'")
                    con.execute("SET profiling_mode = 'detailed'")
                    con.execute(f"SET profiling_output = '{profile}'")
                profile.unlink(missing_ok=True)  # (a statement without a plan, as CREATE MACRO, writes none)
                t0 = time.perf_counter()
                con.execute(statement)
                took = time.perf_counter() - t0
                if not wanted:
                    continue
                con.execute("SET enable_profiling = 'no_output'")
                rows.append((took, label))
                if took >= args.min_seconds or args.statement is not None:
                    ops = operators(json.loads(profile.read_text()).get("operator", [])) if profile.exists() else []
                    ops.sort(key=lambda op: -(op.get("timing") or 0.0))
                    print(f"{took:7.2f} s  {label}", flush=True)
                    for op in ops[:args.operators]:
                        print(f"    {describe(op)}")
                if args.statement is not None:
                    break
            if args.statement is not None and rows:
                break
    finally:
        con.execute("ROLLBACK")
        con.close()
        profile.unlink(missing_ok=True)
        profile.parent.rmdir()
    if args.statement is not None and not rows:
        print(f"error: no statement's label ends with {args.statement!r}", file=sys.stderr)
        return 2
    total = time.perf_counter() - started
    print(f"{len(rows)} statements profiled in {total:.2f} s (under the profiler; the store is unchanged)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
