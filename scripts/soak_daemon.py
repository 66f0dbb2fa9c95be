#!/usr/bin/env python
"""Soak test of the daemon: many webhook-triggered runs of one real ``stripe-churn daemon`` process, and what its
process and its store's folder hold after each.

    PYTHONPATH=. python scripts/soak_daemon.py [--runs 200 --advance-every 10 --customers 20 --months 6
                                                --seed 7 --run-timeout 120 --rss-max-growth-mb MB
                                                --csv FILE --keep DIR]

A sandbox (in this process, 127.0.0.1, a free port) serves a seeded simulated account. A daemon
(``python -m stripe_churn daemon --webhook-port 0``, a yearly schedule that fires on no day of the soak) syncs it in
full at start; then each run is one signed webhook event, posted once the run before it has ended (the state
file's ``last_run`` changed), which the daemon turns into an incremental sync two seconds later. Every
``--advance-every`` runs the sandbox runs a billing run first (its clock moves a month ahead), so that those runs
bring new billing data (and, at times, a re-list when the last event read left Stripe's 30 days).

After each run the script samples the daemon's ``/proc/<pid>``: resident memory (VmRSS), threads, open file
descriptors (and what they point at), and the files under the store's folder (the log aside), the state file's
size and the log lines the run added. Every 10% of the runs it prints a row, and at the end the baseline (after
``--baseline-run`` runs), the last values, the growth per run (least-squares slope over the second half of the
runs) and RSS's last/baseline ratio, then every descriptor kind and file that differs from the baseline. A daemon
that runs for months must hold as many descriptors, threads and files after run 200 as after run 10, and its RSS
must level off. The exit code is 1 when descriptors, threads or files changed (or the daemon did not exit 0 on
SIGTERM), or RSS grew by more than ``--rss-max-growth-mb`` when that is given.

Reading RSS: with ``--advance-every 0`` the account stays as it is and RSS should stay flat after the first runs.
With billing runs the account's history grows by a month each time, and the runs after one re-list it: the
memory the allocator keeps from those larger runs shows as a slow rise that follows the store, not the runs.

Each wait has a deadline (``--run-timeout``); the daemon is stopped (SIGTERM, then SIGKILL) on any exit, Ctrl-C
and SIGTERM to the script included.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk_test_soak_daemon"
WHSEC = "whsec_soak_daemon"
NEVER = "0 0 1 1 *"  # once a year, on the 1st of January at 00:00 UTC: no tick falls inside a soak
EVENT_TYPES = ("invoice.paid", "customer.subscription.updated", "invoice.finalized", "customer.updated")
LOG_NAME = "daemon.log"


@dataclass
class Sample:
    """What the daemon's process and its store's folder held after one run."""

    run: int
    rss_kb: int
    threads: int
    fds: int
    fd_kinds: Counter[str] = field(default_factory=Counter)
    files: tuple[str, ...] = ()
    state_bytes: int = 0
    store_bytes: int = 0  # the store's file (it grows with the account's history, as billing runs add to it)
    log_lines: int = 0  # lines the daemon's log gained during this run
    seconds: float = 0.0  # from the event's post to the run's end seen in the state file


def proc_status(pid: int) -> dict[str, str]:
    """``/proc/<pid>/status`` as a dict of its fields."""
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def fd_kinds(pid: int, folder: Path) -> Counter[str]:
    """The process's open descriptors by what they point at: ``socket``, ``pipe``, ``anon_inode:[eventfd]``...,
    a file under ``folder`` by its name there, any other file by its path (one gone meanwhile is skipped)."""
    kinds: Counter[str] = Counter()
    base = f"/proc/{pid}/fd"
    for name in os.listdir(base):
        try:
            target = os.readlink(f"{base}/{name}")
        except OSError:
            continue  # (closed between the listing and the look)
        if target.startswith(("socket:", "pipe:")):
            kinds[target.split(":")[0]] += 1
        elif target.startswith("anon_inode:"):
            kinds[target] += 1
        elif target.startswith(str(folder) + os.sep):
            kinds["store folder: " + os.path.relpath(target.removesuffix(" (deleted)"), folder)
                  + (" (deleted)" if target.endswith(" (deleted)") else "")] += 1
        else:
            kinds[target] += 1
    return kinds


def store_files(folder: Path) -> tuple[str, ...]:
    """Every file and folder under ``folder`` (relative paths, sorted), the daemon's log aside."""
    return tuple(sorted(str(p.relative_to(folder)) + ("/" if p.is_dir() else "")
                        for p in folder.rglob("*") if p.name != LOG_NAME))


def sample_process(pid: int, folder: Path, db: Path, run: int) -> Sample:
    """The daemon ``pid``'s memory, threads and descriptors, and the files of ``folder`` (the store ``db``'s)."""
    status = proc_status(pid)
    kinds = fd_kinds(pid, folder)
    state = db.with_name(db.name + ".daemon.json")
    return Sample(run=run, rss_kb=int(status["VmRSS"].split()[0]), threads=int(status["Threads"]),
                  fds=sum(kinds.values()), fd_kinds=kinds, files=store_files(folder),
                  state_bytes=state.stat().st_size if state.exists() else 0,
                  store_bytes=db.stat().st_size if db.exists() else 0)


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The least-squares slope of ``ys`` over ``xs`` (0 for fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def sign(body: bytes, secret: str = WHSEC) -> str:
    """A ``Stripe-Signature`` header for ``body``, signed now with ``secret`` (Stripe's scheme)."""
    ts = int(time.time())
    return f"t={ts},v1=" + hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


def event(etype: str, n: int) -> bytes:
    return json.dumps({"id": f"evt_soak_{n}", "object": "event", "type": etype, "livemode": False,
                       "data": {"object": {}}}).encode()


def post(url: str, body: bytes, signature: str) -> int:
    """POST ``body`` to the webhook at ``url``; its status code."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", "/", body=body, headers={"Stripe-Signature": signature})
        return conn.getresponse().status
    finally:
        conn.close()


def read_state(db: Path) -> dict[str, Any]:
    """The daemon's state file (``{}`` while it has none, or it is between two writes)."""
    try:
        data: dict[str, Any] = json.loads(db.with_name(db.name + ".daemon.json").read_text(encoding="utf-8"))
        return data
    except (OSError, ValueError):
        return {}


def wait_until(cond: Callable[[], Any], proc: subprocess.Popen[bytes], what: str, timeout: float,
               log: Path) -> Any:
    """``cond()``'s first true value, polled every 50 ms; RuntimeError when the daemon exits or ``timeout`` passes."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited ({proc.returncode}) before {what}:\n{tail(log)}")
        time.sleep(0.05)
    raise RuntimeError(f"no {what} within {timeout} s:\n{tail(log)}")


def tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(encoding="utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


def run_ended(db: Path, before: dict[str, Any]) -> Callable[[], dict[str, Any] | None]:
    """A condition: the state's last run or last error differs from ``before``'s (the run after it has ended).
    A run ends at least the webhook's two-second debounce after the one before, so its time (in seconds) differs."""

    def cond() -> dict[str, Any] | None:
        state = read_state(db)
        if state.get("last_run") != before.get("last_run") or state.get("last_error") != before.get("last_error"):
            return state
        return None

    return cond


def log_lines(log: Path) -> int:
    with open(log, "rb") as f:
        return sum(1 for _ in f)


def start_daemon(db: Path, sandbox_url: str, *, sync_on_start: bool) -> subprocess.Popen[bytes]:
    """``python -m stripe_churn daemon`` on ``db`` with the webhook on a free port; its log in ``daemon.log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE")}
    env.update({"PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
                "STRIPE_API_KEY": KEY, "STRIPE_API_BASE": sandbox_url, "STRIPE_CHURN_DB": str(db),
                "STRIPE_RATE_LIMIT": "1000", "STRIPE_CHURN_LOG_LEVEL": "INFO", "STRIPE_WEBHOOK_SECRET": WHSEC,
                "STRIPE_CHURN_SCHEDULE": NEVER})
    args = [sys.executable, "-m", "stripe_churn", "daemon", "--webhook-port", "0"]
    if not sync_on_start:
        args.append("--no-sync-on-start")
    with open(db.with_name(LOG_NAME), "wb") as out:
        return subprocess.Popen(args, env=env, cwd=db.parent, stdout=out, stderr=out)


def stop_daemon(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, then SIGKILL after 20 s; the exit code (None when it had to be killed)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def drive(db: Path, proc: subprocess.Popen[bytes], runs: int, *, run_timeout: float = 120.0,
          advance: Callable[[], object] | None = None, advance_every: int = 0,
          on_sample: Callable[[Sample], None] | None = None) -> list[Sample]:
    """``runs`` webhook-triggered runs of the started daemon ``proc`` on ``db``, one after the other, and a sample
    after each. ``advance`` (a billing run in the sandbox) is called before every ``advance_every``-th run. A run
    that ends in an error raises RuntimeError."""
    folder, log = db.parent, db.with_name(LOG_NAME)
    state = wait_until(lambda: (s := read_state(db)).get("state") == "started" and s.get("webhook_url") and s,
                       proc, "the webhook's address", run_timeout, log)
    if state.get("last_run") is None:  # (a sync at start: its end comes first)
        state = wait_until(lambda: (s := read_state(db)).get("last_run") and s, proc, "the sync at start",
                           run_timeout, log)
    url = state["webhook_url"]
    samples: list[Sample] = []
    lines = log_lines(log)
    for n in range(1, runs + 1):
        if advance is not None and advance_every and n % advance_every == 0:
            advance()
        etype = EVENT_TYPES[n % len(EVENT_TYPES)]
        body = event(etype, n)
        t0 = time.monotonic()
        code = post(url, body, sign(body))
        if code != 200:
            raise RuntimeError(f"run {n}: the webhook answered {code}:\n{tail(log)}")
        after = wait_until(run_ended(db, state), proc, f"the end of run {n}", run_timeout, log)
        took = time.monotonic() - t0
        if after.get("last_error") and after.get("last_error") != state.get("last_error"):
            raise RuntimeError(f"run {n} failed: {after['last_error']}:\n{tail(log)}")
        state = after
        time.sleep(0.2)  # (the run's thread lets go of the job lock and returns to its pool just after the write)
        s = sample_process(proc.pid, folder, db, n)
        now_lines = log_lines(log)
        s.log_lines, lines, s.seconds = now_lines - lines, now_lines, took
        samples.append(s)
        if on_sample is not None:
            on_sample(s)
    return samples


@dataclass
class Summary:
    baseline: Sample
    last: Sample
    rss_slope_kb: float  # per run, over the second half
    fds_slope: float
    threads_slope: float
    rss_ratio: float
    fd_changes: dict[str, tuple[int, int]]  # kind: (baseline, last)
    files_gone: tuple[str, ...]
    files_new: tuple[str, ...]

    @property
    def rss_growth_mb(self) -> float:
        return (self.last.rss_kb - self.baseline.rss_kb) / 1024


def summarize(samples: Sequence[Sample], baseline_run: int) -> Summary:
    """The baseline (the sample of run ``baseline_run``, or the first), the last sample, the slopes over the second
    half of the runs and what differs between the two."""
    base = next((s for s in samples if s.run == baseline_run), samples[0])
    last = samples[-1]
    half = samples[len(samples) // 2:]
    xs = [float(s.run) for s in half]
    kinds = set(base.fd_kinds) | set(last.fd_kinds)
    return Summary(
        baseline=base, last=last,
        rss_slope_kb=slope(xs, [float(s.rss_kb) for s in half]),
        fds_slope=slope(xs, [float(s.fds) for s in half]),
        threads_slope=slope(xs, [float(s.threads) for s in half]),
        rss_ratio=last.rss_kb / base.rss_kb if base.rss_kb else 0.0,
        fd_changes={k: (base.fd_kinds[k], last.fd_kinds[k]) for k in sorted(kinds)
                    if base.fd_kinds[k] != last.fd_kinds[k]},
        files_gone=tuple(sorted(set(base.files) - set(last.files))),
        files_new=tuple(sorted(set(last.files) - set(base.files))))


ROW = "{:>6} {:>9} {:>8} {:>5} {:>6} {:>11} {:>9} {:>10} {:>7}"
CSV_FIELDS = ("run", "rss_kb", "threads", "fds", "files", "state_bytes", "store_bytes", "log_lines", "seconds")


def header() -> str:
    return ROW.format("run", "RSS MB", "threads", "fds", "files", "state bytes", "store MB", "log lines", "run s")


def row(s: Sample) -> str:
    return ROW.format(s.run, f"{s.rss_kb / 1024:.1f}", s.threads, s.fds, len(s.files), s.state_bytes,
                      f"{s.store_bytes / 2**20:.1f}", s.log_lines, f"{s.seconds:.2f}")


def csv_row(s: Sample) -> str:
    return ",".join(str(v) for v in (s.run, s.rss_kb, s.threads, s.fds, len(s.files), s.state_bytes, s.store_bytes,
                                     s.log_lines, f"{s.seconds:.3f}"))


def report(summary: Summary, samples: Sequence[Sample]) -> str:
    b, last = summary.baseline, summary.last
    rss = [s.rss_kb / 1024 for s in samples]
    lines = [
        "",
        f"{'':<22}{'baseline':>12}{'last':>12}{'per run (2nd half)':>20}",
        f"{'':<22}{f'(run {b.run})':>12}{f'(run {last.run})':>12}",
        f"{'RSS MB':<22}{b.rss_kb / 1024:>12.1f}{last.rss_kb / 1024:>12.1f}{summary.rss_slope_kb:>17.1f} KB",
        f"{'threads':<22}{b.threads:>12}{last.threads:>12}{summary.threads_slope:>20.3f}",
        f"{'open fds':<22}{b.fds:>12}{last.fds:>12}{summary.fds_slope:>20.3f}",
        f"{'files in store folder':<22}{len(b.files):>12}{len(last.files):>12}",
        f"{'state file bytes':<22}{b.state_bytes:>12}{last.state_bytes:>12}",
        f"{'store MB':<22}{b.store_bytes / 2**20:>12.1f}{last.store_bytes / 2**20:>12.1f}",
        "",
        f"RSS last/baseline: {summary.rss_ratio:.3f} ({summary.rss_growth_mb:+.1f} MB); min {min(rss):.1f} MB, "
        f"max {max(rss):.1f} MB over all runs",
        f"run time: median {sorted(s.seconds for s in samples)[len(samples) // 2]:.2f} s; log lines per run: "
        f"{dict(sorted(Counter(s.log_lines for s in samples).items()))}",
        f"store folder at the end: {', '.join(last.files)}",
    ]
    if summary.fd_changes:
        lines.append("fds that changed (baseline -> last):")
        lines += [f"  {k}: {a} -> {z}" for k, z_a in summary.fd_changes.items() for a, z in [z_a]]
    else:
        lines.append("fds: the same kinds and counts as at the baseline")
    if summary.files_gone or summary.files_new:
        lines.append(f"files new since the baseline: {list(summary.files_new)}; gone: {list(summary.files_gone)}")
    else:
        lines.append("files: the same as at the baseline")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run one real daemon process through many webhook-triggered syncs against the sandbox and "
                    "report whether its memory, threads, open files or store folder grow from run to run.")
    parser.add_argument("--runs", type=int, default=200, help="webhook-triggered runs (default 200)")
    parser.add_argument("--advance-every", type=int, default=10,
                        help="a billing run in the sandbox (a month ahead) before every Nth run; 0: never "
                             "(default 10)")
    parser.add_argument("--customers", type=int, default=20, help="simulated customers (default 20)")
    parser.add_argument("--months", type=int, default=6, help="months of simulated history (default 6)")
    parser.add_argument("--seed", type=int, default=7, help="the simulation's seed (default 7)")
    parser.add_argument("--baseline-run", type=int, default=10,
                        help="the run whose sample is the baseline (default 10; at most half the runs)")
    parser.add_argument("--run-timeout", type=float, default=120.0,
                        help="seconds a run (or the start) may take before the soak gives up (default 120)")
    parser.add_argument("--rss-max-growth-mb", type=float, default=None,
                        help="fail the soak when RSS grew more than this from the baseline to the last run "
                             "(default: RSS is reported, not judged; it follows the store, which billing runs grow)")
    parser.add_argument("--csv", type=Path, default=None,
                        help="also write every run's sample to this CSV file (run, rss_kb, threads, fds, files, "
                             "state_bytes, store_bytes, log_lines, seconds)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="an empty or new folder for the store and the daemon's log, kept after the soak "
                             "(default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    baseline_run = max(1, min(args.baseline_run, args.runs // 2))
    # (SIGTERM ends the script through its cleanup, as Ctrl-C does: the daemon is not left running)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))

    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation

    folder = args.keep or Path(tempfile.mkdtemp(prefix="soak-daemon-"))
    folder.mkdir(parents=True, exist_ok=True)
    folder = folder.resolve()
    db = folder / "s.duckdb"
    every = max(1, args.runs // 10)
    proc: subprocess.Popen[bytes] | None = None
    code: int | None = None
    csv = open(args.csv, "w", encoding="utf-8") if args.csv else None  # noqa: SIM115 (closed below)
    if csv is not None:
        csv.write(",".join(CSV_FIELDS) + "\n")
    try:
        sim = Simulation(customers=args.customers, months=args.months, seed=args.seed)
        with start_in_thread(sim, api_key=KEY) as sandbox:
            proc = start_daemon(db, sandbox.url, sync_on_start=True)
            billing = (f"a billing run (a month) every {args.advance_every} runs" if args.advance_every
                       else "no billing run")
            print(f"daemon pid {proc.pid}; store {db}; {args.runs} runs, {billing}", flush=True)
            print(header(), flush=True)

            def progress(s: Sample) -> None:
                if csv is not None:
                    csv.write(csv_row(s) + "\n")
                    csv.flush()
                if s.run == baseline_run or s.run % every == 0 or s.run == args.runs:
                    print(row(s), flush=True)

            samples = drive(db, proc, args.runs, run_timeout=args.run_timeout,
                            advance=lambda: sandbox.advance(1), advance_every=args.advance_every,
                            on_sample=progress)
            code = stop_daemon(proc)
    finally:
        if proc is not None and proc.poll() is None:
            stop_daemon(proc)
        if csv is not None:
            csv.close()
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    summary = summarize(samples, baseline_run)
    print(report(summary, samples))
    print(f"daemon exit code after SIGTERM: {code}")
    leaked = (summary.last.fds != summary.baseline.fds or summary.last.threads != summary.baseline.threads
              or summary.files_new or summary.files_gone
              or (args.rss_max_growth_mb is not None and summary.rss_growth_mb > args.rss_max_growth_mb))
    return 1 if leaked or code != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
