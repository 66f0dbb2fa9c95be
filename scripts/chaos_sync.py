#!/usr/bin/env python
"""Crash test: SIGKILL ``stripe-churn sync`` at random moments against a faulty sandbox, then prove the store whole.

    python scripts/chaos_sync.py --cycles 100 [--customers 200 --months 12 --seed 1 --fault-rate 0.05
                                              --keep DIR --launcher fork|cli]

A sandbox (in this process, 127.0.0.1, a free port) answers a share of requests with injected faults
(5xx, 409/429 lock timeouts, resets, dropped connections, truncated bodies, a proxy's HTML page). Each cycle
runs the ``stripe-churn sync`` command (``--full`` or incremental, drawn from the seed) in a child process and
SIGKILLs it after a random delay (seeded), which may land in the lock, paging, a commit, the recompute, the
CHECKPOINT or the snapshot copy. The child is a fork of a process that has the package imported already
(``--launcher fork``, the default: no interpreter start-up per cycle) or a fresh ``python -m stripe_churn``
(``--launcher cli``: slower, and some kills land in start-up). Between some cycles the sandbox runs a billing run (``advance``, one or two months):
two months always, and one month sometimes, move the last applied event out of the 30-day retention, so the
next sync falls back to a full re-list.

Before each billing run the store gets one sync that is allowed to finish (a daemon that keeps failing for a
whole billing period loses the events that expire meanwhile, and that loss is not what this test measures);
a reference store, synced without kills and without faults, follows the same sandbox states. At the end one
clean sync runs and the script compares:

- the store with the sandbox: every live object with its latest raw JSON, deleted objects flagged, events
  within retention exact (older ones kept, each equal to what the sandbox sent), one row per (account, id);
- the store with the reference: raw tables (id, deleted flag, raw JSON of live rows: a deleted row keeps
  whichever full copy its runs saw last), exchange rates, and the views
  ``mrr_movements``, ``customer_mrr``, ``mrr_bridge``, ``churn_reasons`` after recompute.

It prints the cycles run, kills, rows compared and differences (0 expected; the exit code is 1 otherwise).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson

from stripe_churn.pipeline import run_once
from stripe_churn.sandbox.listing import EVENT_RETENTION_S, served_objects, shape
from stripe_churn.sandbox.server import RunningSandbox, start_in_thread
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.settings import Secret, Settings
from stripe_churn.store.schema import RAW_TABLES
from stripe_churn.sync import run_sync

KEY = "sk_test_chaos_sync"
FAULTS = ("500", "502", "503", "409_lock_timeout", "429_lock_timeout", "reset", "drop", "truncated", "html")
VIEWS = ("mrr_movements", "customer_mrr", "mrr_bridge", "churn_reasons")
SYNC_TIMEOUT_S = 600.0


@dataclass
class ChaosConfig:
    """What to run; the defaults are the 100-cycle run's."""

    cycles: int = 100
    customers: int = 200
    months: int = 12
    seed: int = 1
    fault_rate: float = 0.05
    full_share: float = 0.3  # share of cycles that run `sync --full`
    advance_share: float = 0.12  # share of cycles followed by a billing run
    rate_limit: float = 1000.0
    keep: Path | None = None
    launcher: str = "fork"  # "fork": the CLI in a fork of a preloaded process; "cli": python -m stripe_churn
    # first guesses of a sync's duration from its first request to its exit (recompute and snapshot
    # included), refined as syncs finish: kills are drawn up to 1.2 times the estimate
    full_estimate_s: float = 8.0
    incremental_estimate_s: float = 2.0


@dataclass
class ChaosReport:
    """What happened and what the comparison found."""

    cycles: int = 0
    kills: int = 0
    finished: int = 0  # cycles whose sync ended before its kill
    failed: list[str] = field(default_factory=list)  # syncs that ended non-zero on their own
    billing_runs: int = 0
    rows_compared: int = 0
    differences: list[str] = field(default_factory=list)
    runs: dict[str, int] = field(default_factory=dict)  # sync_runs rows by mode/status in the chaos store
    faults: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """The summary printed at the end."""
        out = [f"cycles run: {self.cycles}",
               f"kills: {self.kills} (syncs that ended before their kill: {self.finished}, "
               f"ended non-zero on their own: {len(self.failed)})",
               f"billing runs: {self.billing_runs}",
               "sync runs recorded: " + ", ".join(f"{k} {v}" for k, v in sorted(self.runs.items())),
               "faults injected: " + (", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())) or "none"),
               f"rows compared: {self.rows_compared}",
               f"differences: {len(self.differences)}"]
        out += [f"  {d}" for d in self.differences[:20]]
        out += [f"  sync failure: {f}" for f in self.failed[:5]]
        out.append(f"time: {self.seconds:.1f} s")
        return out


# ---------------------------------------------------------------------------------------------- comparing
def expected_live(sim: Simulation) -> dict[str, dict[str, Any]]:
    """Every live object the sandbox serves now, per raw table, as the sync asks for it."""
    return served_objects(sim, RAW_TABLES)


def billed_discounts(sim: Simulation, exp: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Discounts seen only expanded on invoices (ended ones, say): the store keeps them, live or flagged."""
    out: dict[str, Any] = {}
    for inv in exp["invoices"].values():
        for d in inv.get("discounts") or []:
            if isinstance(d, dict) and d["id"] not in exp["discounts"]:
                out[d["id"]] = d
    return out


def compare_with_sandbox(con: duckdb.DuckDBPyConnection, sim: Simulation) -> tuple[int, list[str]]:
    """(rows compared, differences) between a store and what the sandbox shows now."""
    exp = expected_live(sim)
    billed = billed_discounts(sim, exp)
    diffs: list[str] = []
    rows = 0
    cutoff = int(sim.clock) - EVENT_RETENTION_S
    all_events = {e["id"]: e for e in sim.events}
    for table in RAW_TABLES:
        dup = con.execute(f"SELECT count(*) - count(DISTINCT (account_id, id)), count(*) FILTER "
                          f"(WHERE account_id IS DISTINCT FROM ?) FROM {table}", [sim.account_id]).fetchone()
        assert dup is not None
        if dup[0]:
            diffs.append(f"{table}: {dup[0]} duplicate rows")
        if dup[1]:
            diffs.append(f"{table}: {dup[1]} rows of another account")
        got: dict[str, tuple[bool, Any]] = {
            r[0]: (bool(r[1]), orjson.loads(r[2]))
            for r in con.execute(f"SELECT id, deleted, CAST(raw AS VARCHAR) FROM {table}").fetchall()}
        rows += len(got)
        want = exp[table]
        live = {oid for oid, (deleted, _) in got.items() if not deleted}
        if table == "events":
            old = {oid for oid in live if got[oid][1].get("created", 0) < cutoff}
            for oid in sorted(old):  # history beyond retention: kept, and exactly what the sandbox sent
                if oid not in all_events or got[oid][1] != shape(all_events[oid]):
                    diffs.append(f"events: stored event {oid} older than retention differs from the sandbox's")
            live -= old
        if table == "discounts":
            stale_billed = sorted(oid for oid in live & set(billed) if got[oid][1] != billed[oid])
            if stale_billed:
                diffs.append(f"discounts: raw JSON differs for {len(stale_billed)} discounts billed on invoices, "
                             f"e.g. {stale_billed[:3]}")
            live -= set(billed)
        missing, extra = sorted(set(want) - live), sorted(live - set(want))
        if missing:
            diffs.append(f"{table}: {len(missing)} objects missing or wrongly flagged deleted, e.g. {missing[:3]}")
        if extra:
            diffs.append(f"{table}: {len(extra)} live rows the sandbox does not show, e.g. {extra[:3]}")
        stale = sorted(oid for oid in set(want) & live if got[oid][1] != want[oid])
        if stale:
            diffs.append(f"{table}: raw JSON differs from the latest state for {len(stale)} objects, e.g. {stale[:3]}")
        if table in sim.objects:  # a deleted object the store knows is flagged, as Stripe shows it (deleted: true)
            gone = {oid for oid, o in sim.objects[table].items() if o.get("deleted")}
            wrong = sorted(gone & live)
            if wrong:
                diffs.append(f"{table}: {len(wrong)} objects deleted in the sandbox are live in the store, "
                             f"e.g. {wrong[:3]}")
    return rows, diffs


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(r) for r in con.execute(sql).fetchall())


def compare_stores(a: duckdb.DuckDBPyConnection, b: duckdb.DuckDBPyConnection,
                   views: tuple[str, ...] = VIEWS) -> tuple[int, list[str]]:
    """(rows compared, differences) between two stores: raw tables, exchange rates and finance views."""
    # a deleted row keeps the last full copy the store saw, and which copy that was depends on the runs (a
    # full re-list skips the intermediate states events carry): like Stripe, compare only the deleted flag
    queries = {t: f"SELECT account_id, id, deleted, CASE WHEN deleted THEN NULL ELSE CAST(raw AS VARCHAR) END "
                  f"FROM {t}" for t in RAW_TABLES}
    queries["fx_rates"] = "SELECT * FROM fx_rates"
    queries.update({v: f"SELECT * FROM {v}" for v in views})
    diffs: list[str] = []
    rows = 0
    for name, sql in queries.items():
        x, y = _rows(a, sql), _rows(b, sql)
        rows += sum(x.values())
        only_a, only_b = x - y, y - x
        if only_a or only_b:
            example = next(iter(only_a or only_b))
            diffs.append(f"{name}: {sum(only_a.values())} rows only in the crashed store, {sum(only_b.values())} "
                         f"only in the reference, e.g. {str(example)[:300]}")
    return rows, diffs


# ---------------------------------------------------------------------------------------------- running
def _sync_args(full: bool, config: Path) -> list[str]:
    return ["sync", "--format", "json", "--config", str(config), *(["--full"] if full else [])]


def _forked_cli(args: list[str], env: dict[str, str], err_path: str) -> None:
    """Child body of the ``fork`` launcher: the ``stripe-churn`` command itself, stderr to a file."""
    os.environ.clear()
    os.environ.update(env)
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(err, 2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    from stripe_churn.cli import cli

    cli.main(args=args, prog_name="stripe-churn")


class Child:
    """A sync in its own process: ``python -m stripe_churn`` (launcher ``cli``) or a fork of a server that has
    the package imported already (launcher ``fork``, the same command without interpreter start-up)."""

    _ctx: Any = None

    def __init__(self, launcher: str, args: list[str], env: dict[str, str], err: Path) -> None:
        self._proc: Any
        if launcher == "cli":
            with open(err, "w", encoding="utf-8") as fh:
                self._proc = subprocess.Popen([sys.executable, "-m", "stripe_churn", *args], env=env,
                                              stdout=subprocess.DEVNULL, stderr=fh)
            self.pid = self._proc.pid
            return
        if Child._ctx is None:
            Child._ctx = multiprocessing.get_context("forkserver")
            Child._ctx.set_forkserver_preload(["stripe_churn.cli", "stripe_churn.pipeline", "stripe_churn.sync",
                                               "stripe_churn.metrics.runner", "stripe_churn.report.tables"])
        self._proc = Child._ctx.Process(target=_forked_cli, args=(args, env, str(err)), daemon=False)
        self._proc.start()
        self.pid = self._proc.pid

    def poll(self) -> int | None:
        if isinstance(self._proc, subprocess.Popen):
            return self._proc.poll()
        return None if self._proc.is_alive() else int(self._proc.exitcode)

    def wait(self, timeout: float) -> int:
        """The exit code; raises subprocess.TimeoutExpired when still running after ``timeout`` seconds."""
        if isinstance(self._proc, subprocess.Popen):
            return int(self._proc.wait(timeout=timeout))
        self._proc.join(timeout)
        code = self.poll()
        if code is None:
            raise subprocess.TimeoutExpired("stripe-churn sync", timeout)
        return code

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.wait(30)


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no output)"
    return lines[-1] if lines else "(no output)"


class Chaos:
    """One chaos run in a work directory (see the module docstring)."""

    def __init__(self, cfg: ChaosConfig, work: Path, say: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.work = work
        self.say = say
        self.rng = random.Random(cfg.seed)
        self.report = ChaosReport()
        self.db = work / "chaos.duckdb"
        self.ref_db = work / "reference.duckdb"
        self.config = work / "stripe-churn.toml"
        self.config.write_text("max_retries = 12\ntimeout_seconds = 20\n", encoding="utf-8")
        self.estimate = {True: cfg.full_estimate_s, False: cfg.incremental_estimate_s}

    def _env(self, sb: RunningSandbox) -> dict[str, str]:
        return {**os.environ, "STRIPE_API_KEY": KEY, "STRIPE_API_BASE": sb.url, "STRIPE_CHURN_DB": str(self.db),
                "STRIPE_RATE_LIMIT": str(self.cfg.rate_limit), "STRIPE_CHURN_LOG_LEVEL": "WARNING"}

    def sync(self, sb: RunningSandbox, full: bool, kill: bool, label: str) -> bool:
        """One sync in a child process, SIGKILLed at a random moment when ``kill``; True when it was killed.

        Most kills are timed from the child's first request to the sandbox (so start-up, which is slow on a
        busy machine, does not swallow them) up to 1.2 times the duration of the last finished syncs; one in
        six is timed from the start of the process, to hit start-up and the lock.
        """
        err = self.work / "logs" / f"{label}.err"
        err.parent.mkdir(exist_ok=True)
        before = sb.stats()["requests"]
        from_start = kill and self.rng.random() < 1 / 6
        delay = self.rng.uniform(0.0, 1.2 * self.estimate[full]) if kill else SYNC_TIMEOUT_S
        t0 = time.monotonic()
        proc = Child(self.cfg.launcher, _sync_args(full, self.config), self._env(sb), err)
        try:
            if not from_start:
                while proc.poll() is None and sb.stats()["requests"] == before \
                        and time.monotonic() - t0 < SYNC_TIMEOUT_S:
                    time.sleep(0.01)
            t_active = time.monotonic()
            code = proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.kill()
            if kill:
                return True
            raise RuntimeError(f"{label}: sync still running after {SYNC_TIMEOUT_S:.0f} s") from None
        if code != 0:
            self.report.failed.append(f"{label} (exit {code}): {_last_line(err)}")
        elif not from_start:
            self.estimate[full] = 0.5 * self.estimate[full] + 0.5 * (time.monotonic() - t_active)
        return False

    def settle(self, sb: RunningSandbox, label: str, final: bool = False) -> None:
        """A sync allowed to finish (retried when faults beat its retries), and the reference's sync."""
        for attempt in range(3):
            before = len(self.report.failed)
            self.sync(sb, False, False, f"{label}-settle{attempt}")
            if len(self.report.failed) == before:
                break
        else:
            self.report.differences.append(f"{label}: no sync finished in 3 attempts")
        sb.app.options.fault_rate = 0.0  # the reference sees no faults
        try:
            ref = Settings(api_key=Secret(KEY), api_base=sb.url, db=self.ref_db, rate_limit=self.cfg.rate_limit,
                           log_level="WARNING")
            if final:
                run_once(ref, progress=False)  # sync, recompute, snapshot
            else:
                run_sync(ref, progress=False)  # the recompute is a full one: only the last matters
        finally:
            sb.app.options.fault_rate = self.cfg.fault_rate

    def run(self) -> ChaosReport:
        cfg, rep = self.cfg, self.report
        t0 = time.monotonic()
        sim = Simulation(customers=cfg.customers, months=cfg.months, seed=cfg.seed)
        with start_in_thread(sim, api_key=KEY, fault_rate=cfg.fault_rate, faults=FAULTS,
                             fault_seed=cfg.seed) as sb:
            for cycle in range(1, cfg.cycles + 1):
                full = self.rng.random() < cfg.full_share
                killed = self.sync(sb, full, True, f"cycle{cycle:03d}")
                rep.cycles += 1
                rep.kills += killed
                rep.finished += not killed
                if cycle < cfg.cycles and self.rng.random() < cfg.advance_share:
                    self.settle(sb, f"cycle{cycle:03d}")
                    months = self.rng.choice((1, 1, 2))
                    sb.advance(months)
                    rep.billing_runs += 1
                if cycle % 10 == 0:
                    self.say(f"... {cycle} cycles, {rep.kills} kills, {time.monotonic() - t0:.0f} s")
            self.settle(sb, "final", final=True)
            rep.faults = dict(sb.stats()["faults"])
        self._compare(sim)
        rep.seconds = time.monotonic() - t0
        return rep

    def _compare(self, sim: Simulation) -> None:
        rep = self.report
        stray = sorted(p.name for p in self.work.iterdir() if p.name.endswith(".tmp"))
        if stray:
            rep.differences.append(f"{len(stray)} temporary files left beside the store: {stray[:3]}")
        con = duckdb.connect(str(self.db), read_only=True)
        ref = duckdb.connect(str(self.ref_db), read_only=True)
        snap = duckdb.connect(str(self.db) + ".snapshot", read_only=True)
        try:
            rep.runs = {f"{m}/{s}": n for m, s, n in con.execute(
                "SELECT mode, CASE status WHEN 'running' THEN 'killed' ELSE status END, count(*) "
                "FROM sync_runs GROUP BY ALL").fetchall()}
            for n, diffs in (compare_with_sandbox(con, sim), compare_with_sandbox(ref, sim),
                             compare_stores(con, ref), compare_stores(snap, con, ("mrr_movements",))):
                rep.rows_compared += n
                rep.differences += diffs
        finally:
            con.close()
            ref.close()
            snap.close()


def run_chaos(cfg: ChaosConfig, say: Callable[[str], None] = print) -> ChaosReport:
    """Run the crash test in ``cfg.keep`` (or a temporary directory, removed afterwards)."""
    if cfg.keep is not None:
        cfg.keep.mkdir(parents=True, exist_ok=True)
        if any(cfg.keep.iterdir()):
            raise SystemExit(f"--keep {cfg.keep} is not empty: give a new or empty directory")
        return Chaos(cfg, cfg.keep, say).run()
    work = Path(tempfile.mkdtemp(prefix="chaos-sync-"))
    try:
        return Chaos(cfg, work, say).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--cycles", type=int, required=True, help="Kill cycles to run.")
    p.add_argument("--customers", type=int, default=ChaosConfig.customers)
    p.add_argument("--months", type=int, default=ChaosConfig.months)
    p.add_argument("--seed", type=int, default=ChaosConfig.seed)
    p.add_argument("--fault-rate", type=float, default=ChaosConfig.fault_rate,
                   help="Share of API requests answered with an injected fault.")
    p.add_argument("--keep", type=Path, default=None, help="Keep the databases and logs in this directory.")
    p.add_argument("--launcher", choices=("fork", "cli"), default=ChaosConfig.launcher,
                   help="fork: run the sync command in a fork of a process that imported the package (fast); "
                        "cli: a fresh `python -m stripe_churn sync` each time (also kills during start-up).")
    args = p.parse_args(argv)
    cfg = ChaosConfig(cycles=args.cycles, customers=args.customers, months=args.months, seed=args.seed,
                      fault_rate=args.fault_rate, keep=args.keep, launcher=args.launcher)
    report = run_chaos(cfg, say=lambda s: print(s, flush=True))
    for line in report.lines():
        print(line)
    return 1 if report.differences else 0


if __name__ == "__main__":
    sys.exit(main())
