#!/usr/bin/env python
"""Benchmark the metrics recompute on an account whose subscriptions belong to a few big customers.

A reseller or an agency may bill hundreds or thousands of subscriptions to one Stripe customer. The steps that look
at every item a customer holds at each of its changes (its MRR level at each moment, the items on each side of a
transition) then meet (items x changes) pairs for that customer, where an account of small customers meets a few per
customer. This script simulates an account (no HTTP), loads it into one store as simulated (the baseline) and into
another with every subscription, invoice, discount and event moved onto ``--whales`` customers (the ids rewritten in
the objects' JSON before loading, so that every table agrees), recomputes both, and prints the times, their ratio and
the slowest statements of the big customers' run. Both stores hold the same subscriptions, so the same total MRR
(summed over customers, each rounded at 4 decimals) up to a few ten-thousandths per month.

    python scripts/bench_big_customer.py                              # 3,000 customers x 24 months onto 1
    python scripts/bench_big_customer.py --customers 5000 --whales 2  # 5,000 customers' subscriptions onto 2
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stripe_churn.metrics.runner import recompute
from stripe_churn.settings import Settings

PROFILE_STATEMENTS = 6


def merged(obj: Any, new_id: dict[str, str]) -> Any:
    """``obj`` with every string that is a customer id of ``new_id`` replaced by its new id (any depth)."""
    if isinstance(obj, dict):
        return {k: merged(v, new_id) for k, v in obj.items()}
    if isinstance(obj, list):
        return [merged(v, new_id) for v in obj]
    if isinstance(obj, str):
        return new_id.get(obj, obj)
    return obj


def onto_whales(sim: Any, whales: int) -> None:
    """Move every customer's objects onto the first ``whales`` customers (round robin) and drop the others."""
    ids = sorted(sim.objects["customers"])
    new_id = {cid: ids[n % whales] for n, cid in enumerate(ids)}
    for resource, objs in sim.objects.items():
        if resource == "customers":
            sim.objects[resource] = {cid: o for cid, o in objs.items() if new_id[cid] == cid}
        else:
            sim.objects[resource] = {oid: merged(o, new_id) for oid, o in objs.items()}
    if getattr(sim, "discounts", None):
        sim.discounts = {did: merged(d, new_id) for did, d in sim.discounts.items()}
    # (events about a dropped customer itself, such as its customer.created, would name an object the store lacks)
    sim.events = [merged(e, new_id) for e in sim.events
                  if not (e["data"]["object"].get("object") == "customer" and new_id[e["data"]["object"]["id"]]
                          != e["data"]["object"]["id"])]


class _Statements(logging.Handler):
    """The runner's DEBUG lines that time each statement of the full recompute."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.times: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = re.match(r"metrics statement (.+) took ([0-9.]+) s", record.getMessage())
        if m:
            self.times.append((float(m.group(2)), m.group(1)))


def build_and_recompute(path: Path, sim: Any) -> tuple[float, list[tuple[float, str]], dict[str, Any]]:
    from stripe_churn.store.db import open_store
    from stripe_churn.store.load import load_simulation

    con = open_store(path)
    load_simulation(con, sim)
    handler = _Statements()
    logger = logging.getLogger("stripe_churn.metrics.runner")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        t0 = time.perf_counter()
        recompute(con, Settings(currency="usd"))
        elapsed = time.perf_counter() - t0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    facts = {
        "customers with subscriptions": con.execute(
            "SELECT count(DISTINCT customer_id) FROM subscriptions").fetchall()[0][0],
        "largest customer's subscriptions": con.execute(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM subscriptions GROUP BY customer_id)").fetchall()[0][0],
        "movements": con.execute("SELECT count(*) FROM mrr_movements").fetchall()[0][0],
        "closing MRR, last complete month": con.execute(
            "SELECT closing_mrr FROM mrr_bridge ORDER BY period_start DESC LIMIT 1 OFFSET 1").fetchall()[0][0],
    }
    con.close()
    return elapsed, sorted(handler.times, reverse=True), facts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=3000, help="customers simulated (default 3,000)")
    ap.add_argument("--months", type=int, default=24, help="months of history (default 24)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--whales", type=int, default=1, help="customers that end up holding every subscription")
    args = ap.parse_args(argv)
    if args.whales < 1 or args.whales > args.customers:
        ap.error("--whales must be between 1 and --customers")
    from stripe_churn.sandbox.sim import Simulation

    print(f"simulating {args.customers:,} customers x {args.months} months", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-big-customer-") as tmp:
        spread = build_and_recompute(Path(tmp) / "spread.duckdb",
                                     Simulation(customers=args.customers, months=args.months, seed=args.seed))
        sim = Simulation(customers=args.customers, months=args.months, seed=args.seed)
        onto_whales(sim, args.whales)
        whale = build_and_recompute(Path(tmp) / "whales.duckdb", sim)
    for name, (elapsed, _, facts) in (("as simulated", spread), (f"onto {args.whales} customer(s)", whale)):
        print(f"{name}: full recompute {elapsed:.2f} s; " + ", ".join(f"{k} {v:,}" for k, v in facts.items()))
    print(f"ratio big customers / as simulated: {whale[0] / spread[0]:.1f}")
    print(f"  the big customers' {PROFILE_STATEMENTS} slowest statements: "
          + ", ".join(f"{label} {t:.2f} s" for t, label in whale[1][:PROFILE_STATEMENTS]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
