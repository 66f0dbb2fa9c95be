"""A daemon runs for months: what one run takes it must give back. A short soak of the real `stripe-churn daemon`
against the sandbox (the long one is scripts/soak_daemon.py): ten webhook-triggered runs, one after the other,
a billing run in the sandbox among them, and after each run the daemon's process and its store's folder sampled.

What must not grow at all from run to run: the open descriptors (a DuckDB connection, a snapshot, an HTTP
connection or a file left open per run), the threads (a thread per run that never ends, a pool made per run), the
files in the store's folder (a write-ahead log, a spill folder, a snapshot copy or a state file's temporary left
behind), the log lines per run (a handler added per run logs every line once more each run), and the state file's
size (a list kept in it). Memory is allowed to move (allocators keep freed pages), within a generous bound.
"""

# ruff: noqa: F811
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from test_daemon_hunt import (  # noqa: F401
    NEVER,
    ROOT,
    WHSEC,
    DaemonProcess,
    copy_store,
    env_for,
    event,
    post,
    read_state,
    sandbox,
    sign,
    synced,
)

from stripe_churn.sandbox.server import RunningSandbox

RUNS = 10  # (each takes 3 s: the webhook's 2 s debounce, then the run itself)
ADVANCE_BEFORE = 6  # the sandbox's billing run comes before this run: it brings new invoices, events, movements
FIRST = 2  # the sample compared with the last (the first runs may still load code and warm caches)
RSS_FIRST = 3
# (the run after the billing run, larger, moved RSS by up to 16 MB, either way; the runs with nothing new by under
# 1 MB; 200 runs with nothing new added 3 MB in all: scripts/soak_daemon.py --advance-every 0)
RSS_MAX_GROWTH_KB = 30 * 1024
EVENT_TYPES = ("invoice.paid", "customer.subscription.updated", "invoice.finalized", "customer.updated")


def soak_script() -> ModuleType:
    """scripts/soak_daemon.py as a module: its sampling of a process and a store's folder."""
    path = ROOT / "scripts" / "soak_daemon.py"
    spec = importlib.util.spec_from_file_location("soak_daemon", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("soak_daemon", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_ten_runs_leave_no_descriptor_thread_file_or_handler_behind(
        tmp_path: Path, synced: Path, sandbox: RunningSandbox) -> None:
    """A store synced in full, a daemon with the webhook (a yearly schedule, no sync at start), and 10 signed
    events, each posted once the run before it has ended (its state's last run changed); a billing run in the
    sandbox before the 6th. By hand, from the code that each run goes through: the run opens the store, its HTTP
    client and its event loop and closes them, publishes the snapshot through a temporary copy renamed over it,
    and writes the state through a temporary file renamed over it; its job runs on the scheduler's pool, whose
    idle thread takes the next job. So after run 2 and after run 10:

    - the same open descriptors, of the same kinds (nothing of the store's open between runs: the daemon's lock,
      its log, /dev/null, the webhook's listening socket);
    - the same number of threads;
    - the same files in the store's folder (the store, its snapshot, its two lock files, the state file);
    - each run's log says `sync starting` once and `run finished` once (a handler added per run would log them
      twice in the second run), and every run succeeds, an incremental sync (a run that failed or fell back to a
      full listing would not measure the steady state; the billing run moves the simulation from 1 November to
      1 December, 30 days, so the last event read is still within Stripe's retention);
    - the state file stays one record (under 2 KB: a list that grew per run would pass it);
    - resident memory after the last run within 30 MB of run 3's (a run that kept its store's memory alive, or
      its pages, would add megabytes a run)."""
    soak = soak_script()
    db = copy_store(synced, tmp_path)
    env = env_for(sandbox, db, STRIPE_WEBHOOK_SECRET=WHSEC, STRIPE_CHURN_SCHEDULE=NEVER)
    daemon = DaemonProcess(db, env, "--no-sync-on-start", "--webhook-port", "0")
    samples: list[Any] = []
    runs: list[dict[str, Any]] = []
    try:
        state = daemon.wait_for(lambda: (s := read_state(db) or {}).get("state") == "started"
                                and s.get("webhook_url") and s, "the webhook's address")
        url = state["webhook_url"]
        for n in range(1, RUNS + 1):
            if n == ADVANCE_BEFORE:
                sandbox.advance(1)
            body = event(EVENT_TYPES[n % len(EVENT_TYPES)])
            assert post(url, body, sign(body)) == 200
            state = daemon.wait_for(soak.run_ended(db, state), f"the end of run {n}")
            runs.append(state["last_run"])
            time.sleep(0.1)  # (the state is renamed into place, then its folder synced; the run's thread returns)
            samples.append(soak.sample_process(daemon.proc.pid, tmp_path, db, n))
        code, _ = daemon.stop()
    finally:
        daemon.kill()
    log = daemon.text()
    assert code == 0 and "Traceback" not in log and " ERROR " not in log and " WARNING " not in log, log[-3000:]
    assert [(r["status"], r["reason"]) for r in runs] == [
        ("succeeded", f"webhook {EVENT_TYPES[n % len(EVENT_TYPES)]}") for n in range(1, RUNS + 1)], runs
    assert log.count("sync starting (webhook ") == RUNS and log.count("run finished: mode=incremental ") == RUNS, \
        log[-3000:]
    assert sum(r["new_movements"] for r in runs) >= 1  # (the billing run brought something: not only empty runs)

    first, last = samples[FIRST - 1], samples[-1]
    table = "\n".join(f"run {s.run}: rss {s.rss_kb} KB, threads {s.threads}, fds {s.fds} {dict(s.fd_kinds)}, "
                      f"files {list(s.files)}, state {s.state_bytes} B" for s in samples)
    assert (last.fds, last.fd_kinds) == (first.fds, first.fd_kinds), table
    assert last.threads == first.threads, table
    assert last.files == first.files, table
    assert not [k for k in last.fd_kinds if k.startswith("store folder: s.duckdb") and "lock" not in k], table
    assert max(s.state_bytes for s in samples) < 2048, table
    assert last.rss_kb - samples[RSS_FIRST - 1].rss_kb < RSS_MAX_GROWTH_KB, table
