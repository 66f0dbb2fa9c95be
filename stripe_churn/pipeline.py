"""One run of the product: take the sync lock, sync, recompute the metrics, publish the read-only snapshot."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb

from stripe_churn.errors import (
    DiskFullError,
    StoppedError,
    StoreError,
    StoreLockedError,
    StripeChurnError,
    damaged_store,
    disk_full,
    exception_chain,
    out_of_memory,
    store_failure,
)
from stripe_churn.lock import sync_lock
from stripe_churn.settings import Settings, check_memory_limit
from stripe_churn.store.fx_file import read_fx_file, write_fx_rates
from stripe_churn.store.snapshot import checkpoint, open_snapshot, publish_snapshot, snapshot_path

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What one run changed: objects per type, new movements, and the current month's bridge line."""

    run_id: Any = None
    mode: str = ""
    status: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    new_movements: int = 0
    bridge_line: dict[str, Any] | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    # how the metrics were brought up to date: "full" or "changed" ("" when not recomputed), the customers
    # derived, and why everything was when the settings asked for the changed customers alone
    recompute: str = ""
    recomputed_customers: int = 0
    recompute_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``sync --format json``."""
        return {"run_id": self.run_id, "mode": self.mode, "status": self.status, "counts": self.counts,
                "new_movements": self.new_movements, "bridge_line": self.bridge_line,
                "recompute": self.recompute, "recomputed_customers": self.recomputed_customers,
                "recompute_reason": self.recompute_reason,
                "started_at": self.started_at.isoformat() if self.started_at else None,
                "finished_at": self.finished_at.isoformat() if self.finished_at else None}


def _count_movements(con: duckdb.DuckDBPyConnection) -> int:
    """Rows of mrr_movements, 0 before the first recompute created the view."""
    rows = _table(con, "SELECT count(*) AS n FROM mrr_movements")
    return int(rows[0]["n"]) if rows else 0


def current_bridge_line(con: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
    """The bridge row of the current month (None before any MRR)."""
    rows = _table(con, "SELECT * FROM mrr_bridge WHERE period_start <= CAST(timezone('UTC', now()) AS DATE) "
                       "ORDER BY period_start DESC LIMIT 1")
    return rows[0] if rows else None


def _progress_log_s() -> float:
    from stripe_churn.sync import PROGRESS_LOG_S

    return PROGRESS_LOG_S


class _StepProgress:
    """The metrics recompute's steps as a rich bar on a terminal, or a log line at most every 5 s otherwise
    (on a large store the recompute takes minutes)."""

    def __init__(self, enabled: bool | Literal["log"]) -> None:
        self.enabled = enabled
        self._rich: Any = None
        self._task: Any = None
        self._started = time.monotonic()
        self._last_log = self._started
        if enabled is True and sys.stderr.isatty():  # ("log": log lines on a terminal too)
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._rich = Progress(TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[step]}"), TimeElapsedColumn(), transient=False)
            self._rich.start()

    def __call__(self, done: int, total: int, name: str) -> None:
        step = name.removesuffix(".sql") if name else "committing"
        if self._rich is not None:
            if self._task is None:
                self._task = self._rich.add_task("metrics", total=total, step=step)
            self._rich.update(self._task, completed=done, step=step)
        elif self.enabled and time.monotonic() - self._last_log >= _progress_log_s():
            self._last_log = time.monotonic()
            log.info("metrics progress: step %d of %d (%s), %.0f s so far", min(done + 1, total), total, step,
                     self._last_log - self._started)

    def done(self) -> None:
        if self._rich is not None and self._task is not None:
            self._rich.update(self._task, step="done")

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None


def run_once(settings: Settings, *, full: bool = False, wait: float = 0.0, stop: threading.Event | None = None,
             progress: bool | Literal["log"] = True, terminated: threading.Event | None = None) -> RunSummary:
    """Sync, recompute and publish the snapshot under the sync lock; returns what changed.

    ``terminated`` is set when a Ctrl-C that interrupts the run is a SIGTERM's (``cli.sigterm_as_ctrl_c``): the
    run's stored error says so.

    Raises StoreLockedError when another sync keeps the lock longer than ``wait`` seconds, and StoreError when
    this machine refuses a write (DiskFullError when it found no room).
    """
    try:
        return _run_once(settings, full=full, wait=wait, stop=stop, progress=progress, terminated=terminated)
    except Exception as exc:
        error = _translated(exc, settings)
        if error is exc:
            raise
        raise error from exc


def _translated(exc: Exception, settings: Settings) -> BaseException:
    """The error a run ends with for ``exc``: ours, or the full disk under it; a Ctrl-C during a statement of this
    thread as an interrupt, as anywhere else; a write this machine refused or a damaged store as a StoreError;
    else ``exc`` itself."""
    if isinstance(exc, StripeChurnError):  # (ours already; a full disk under it is the cause to name)
        return exc if isinstance(exc, DiskFullError) else disk_full(exc) or exc
    if _query_interrupted(exc):
        return KeyboardInterrupt()
    return store_failure(exc) or damaged_store(exc, settings.db) or exc


def _query_interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from or during) is DuckDB's answer to a SIGINT (Ctrl-C) that came
    while a statement ran in the main thread: it stops the statement and raises this error in place of the
    KeyboardInterrupt."""
    return any(isinstance(c, RuntimeError) and str(c) == "Query interrupted" for c in exception_chain(exc))


def _refuse_a_lost_store(db: Path) -> None:
    """A store gone from beside its snapshot was removed or moved (a daemon would otherwise start a new one
    unnoticed, with none of the events older than Stripe's 30 days, which no sync can fetch again)."""
    snap = snapshot_path(db)
    if not db.exists() and snap.exists():
        raise StoreError(f"the store {db} is missing but its snapshot {snap} is there (was it removed or moved?): "
                         f"restore it with `cp {snap} {db}` (the events older than Stripe's 30 days are kept only "
                         "in the store), or move the snapshot aside to start a new store with a full sync")


def _run_once(settings: Settings, *, full: bool, wait: float, stop: threading.Event | None,
              progress: bool | Literal["log"], terminated: threading.Event | None) -> RunSummary:
    db = settings.db
    summary = RunSummary(started_at=dt.datetime.now(dt.UTC))
    # (a bad exchange-rate file stops the run before anything is synced)
    fx = read_fx_file(settings.fx_rates_file, settings.currency) if settings.fx_rates_file else None
    if settings.memory_limit is not None:  # (settings built in code skip load_settings's checks)
        check_memory_limit(settings.memory_limit, settings.source)
    with sync_lock(db, wait=wait, stop=stop):
        from stripe_churn.metrics.incremental import recompute_after_sync
        from stripe_churn.store.db import open_store
        from stripe_churn.sync import run_sync

        _refuse_a_lost_store(db)
        con = open_store(db)
        synced = None  # the run's id once its sync succeeded: a failure after it is that run's failure
        try:
            try:
                if settings.memory_limit is not None:
                    # (the recompute's limit: the sync keeps to its own small cap and puts this one back after it)
                    con.execute(f"SET memory_limit = '{settings.memory_limit}'")
                before = _count_movements(con)
                result = run_sync(settings, full=full, con=con, progress=progress, stop=stop, terminated=terminated)
                summary.run_id = getattr(result, "run_id", None)
                summary.mode = str(getattr(result, "mode", ""))
                summary.status = str(getattr(result, "status", ""))
                summary.counts = dict(getattr(result, "counts", {}) or {})
                if summary.status == "succeeded":
                    synced = summary.run_id
                if stop is not None and stop.is_set():
                    log.info("stop requested: synced rows are committed; the next run recomputes and publishes")
                    _record_stopped_run(con, synced)
                    summary.status = "stopped" if synced is not None else summary.status
                    checkpoint(con)
                    summary.finished_at = dt.datetime.now(dt.UTC)
                    return summary
                if fx is not None:
                    written = write_fx_rates(con, fx)
                    log.info("exchange rates: %d rows for %s from %s", written,
                             ", ".join(fx.currencies) or "no currency", fx.path)
                step_progress = _StepProgress(progress)
                try:
                    # (a full sync, or an incremental one that fell back to listing everything, saw every object
                    # again: everything is derived again too)
                    seen_all = (None if summary.mode == "incremental"
                                else f"the sync was a {summary.mode or 'full'} one: it saw every object again")
                    done = recompute_after_sync(con, settings, changed_only=settings.recompute == "changed",
                                                progress=step_progress, stop=stop, everything_seen=seen_all)
                    step_progress.done()
                    summary.recompute, summary.recomputed_customers = done.mode, done.customers
                    summary.recompute_reason = done.reason
                except StoppedError:
                    # (the synced rows are committed; the derived tables and the snapshot stay as they were)
                    log.info("stop requested: the metrics recompute was rolled back; the next run recomputes")
                    _record_stopped_run(con, synced)
                    checkpoint(con)
                    summary.status = "stopped"
                    summary.finished_at = dt.datetime.now(dt.UTC)
                    return summary
                except Exception as exc:  # (a stop is handled above)
                    short = out_of_memory(exc, settings.memory_limit)
                    if short is None:
                        raise
                    raise short from exc
                finally:
                    step_progress.close()
                summary.new_movements = max(_count_movements(con) - before, 0)
                summary.bridge_line = current_bridge_line(con)
                checkpoint(con)
            finally:
                con.close()
            _remove_stale_copies(db)
            publish_snapshot(db)
        except BaseException as exc:
            if synced is not None:
                _record_failed_run(db, synced, _failure_line(exc, settings, terminated))
            raise
    summary.finished_at = dt.datetime.now(dt.UTC)
    log.info("run finished: mode=%s status=%s new movements=%d", summary.mode, summary.status,
             summary.new_movements)
    return summary


def _failure_line(exc: BaseException, settings: Settings, terminated: threading.Event | None = None) -> str:
    """The one line ``sync`` ends with for ``exc`` (as run_once turns it and the command words it), secrets masked,
    for sync_runs.error (``terminated``: see :func:`run_once`)."""
    from stripe_churn.settings import redacted_line

    error = _translated(exc, settings) if isinstance(exc, Exception) else exc
    if isinstance(error, KeyboardInterrupt):
        by = "terminated (SIGTERM)" if terminated is not None and terminated.is_set() else "interrupted (Ctrl-C)"
        text = f"{by} after the sync, before the metrics were published; the next sync brings them up to date"
    elif isinstance(error, StripeChurnError):
        text = str(error)
    else:
        first = str(error).splitlines()[0] if str(error) else ""
        text = f"unexpected {type(error).__name__}: {first}"
    return redacted_line(text, [settings.api_key.reveal(), settings.webhook_secret.reveal()])


def _record_stopped_run(con: duckdb.DuckDBPyConnection, run_id: Any) -> None:
    """The run ``run_id``, whose sync succeeded, recorded ``stopped``: a stop came before its metrics were derived
    and published (a daemon stopped mid-run), so `status` must not count it as a success. None: nothing to do."""
    if run_id is None:
        return
    try:
        con.execute("UPDATE sync_runs SET status = 'stopped' WHERE run_id = ? AND status = 'succeeded'", [run_id])
    except duckdb.Error as exc:  # (the stop is what counts; the run is left recorded as it was)
        log.debug("the run %s is left recorded as it was: %s", run_id, exc)


def _record_failed_run(db: Path, run_id: Any, error: str) -> None:
    """The run ``run_id``, whose sync succeeded, recorded ``failed`` with ``error``: what came after the sync (the
    exchange rates, the metrics recompute, the snapshot) failed, so the command failed and its metrics and snapshot
    are as they were (`status` showed it `succeeded` and counted the lag from it). Best effort, under the sync
    lock: a store that cannot be written now keeps the run as it was."""
    try:
        con = duckdb.connect(str(db))
        try:
            con.execute("UPDATE sync_runs SET status = 'failed', error = ? WHERE run_id = ? AND status = 'succeeded'",
                        [error, run_id])
        finally:
            con.close()
    except Exception as exc:  # (the failure being raised is the one that counts)
        log.debug("the run %s is left recorded as it was: %s", run_id, exc)


def _remove_stale_copies(db: Path) -> None:
    """Delete snapshot copies a run killed while publishing left behind (``<db>.XXXXXXXX.tmp``).

    Called under the sync lock, so no other run is copying right now. And the spill files a `sql` query killed
    while it spilled to disk left in DuckDB's folder ``<db>.snapshot.tmp`` (those of running queries stay): that
    folder's name has the shape of a copy's too, and it was taken for one, which failed every sync.
    """
    from stripe_churn.store.db import clear_stale_spill

    pattern = re.compile(re.escape(db.name) + r"\.[a-z0-9_]{8}\.tmp")
    for path in db.parent.glob(db.name + ".*.tmp"):
        if pattern.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            log.info("removing %s, a snapshot copy left by an interrupted run", path.name)
            path.unlink(missing_ok=True)
    removed = clear_stale_spill(snapshot_path(db))
    if removed:
        log.info("removed %d spill files that ended queries left in %s.tmp", removed, snapshot_path(db).name)


def _table(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    """Rows as dicts (TIMESTAMPTZ as aware datetimes); [] when the table is not there yet."""
    from stripe_churn.store.db import dict_rows

    try:
        return dict_rows(con, sql)
    except duckdb.Error as exc:
        log.debug("no rows from %s: %s", sql.split(" FROM ")[-1][:40], exc)
        return []


# Per currency the account bills in, other than the reporting one: the customers billed in it now and the
# stored rates (their number, the latest one and its date).
_FX_STATUS_SQL = """
SELECT c.currency, c.customers_now, count(f.date) AS rates, max(f.date) AS latest_rate_date,
       arg_max(f.rate, f.date) AS latest_rate
FROM (SELECT i.currency,
             count(DISTINCT i.customer_id) FILTER (WHERE i.valid_to IS NULL AND i.mrr_original > 0) AS customers_now
      FROM derived_item_mrr i
      WHERE i.currency <> (SELECT lower(reporting_currency) FROM derived_settings)
      GROUP BY i.currency) c
LEFT JOIN fx_rates f ON lower(f.currency) = c.currency
GROUP BY c.currency, c.customers_now
ORDER BY c.currency
"""


# The gaps in the stored events (the sync's cursors ``events:gap:<unix time>``, {prefix}): where the stored events
# ended, where the unbroken ones begin again, and when the sync that found it started.
_EVENT_GAPS_SQL = """
SELECT account_id, to_timestamp(TRY_CAST(substr(stream, length('{prefix}') + 1) AS BIGINT)) AS events_lost_after,
       to_timestamp(created) AS events_kept_from, updated_at AS found_at
FROM sync_cursors WHERE starts_with(stream, '{prefix}') ORDER BY account_id, created
"""


def _process_alive(pid: Any) -> bool:
    """Whether a process with this pid runs on this machine (True when that cannot be told)."""
    import os

    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # (another user's process: it runs)
        return True
    return True


_RUNS_SQL = "SELECT run_id, mode, status, started_at, finished_at, error FROM sync_runs ORDER BY started_at DESC LIMIT 5"
_LAST_OK_SQL = ("SELECT max(finished_at) AS t FROM sync_runs WHERE error IS NULL "
                "AND status NOT IN ('running', 'failed', 'stopped')")


def _live_runs(db: Path, held_by: list[str] | None = None) -> tuple[list[dict[str, Any]], dt.datetime | None] | None:
    """The latest runs and the end of the last successful one, from the store itself, when it was written after the
    snapshot (a run that failed publishes none, so the snapshot shows no failed run) and no sync holds it. Read under
    the sync lock as a brief holder: a sync starting meanwhile waits for it; None when that cannot be done now.
    A store that is missing, damaged or no stripe-churn store is the StoreError ``sync`` gives for it. A store that
    another process has open (a program of the user's, the duckdb shell on the store itself) is said in ``held_by``."""
    from stripe_churn.lock import sync_lock
    from stripe_churn.store.db import open_store

    snap, wal = snapshot_path(db), db.with_name(db.name + ".wal")
    from stripe_churn.daemon import state_path

    _refuse_a_lost_store(db)
    if not db.exists():
        if state_path(db).exists():
            return None  # (a daemon ran against it and made none yet, a key refused, say: its state says why)
        raise StoreError(f"no store at {db}: run `stripe-churn sync` to start one, or point the setting db "
                         "(STRIPE_CHURN_DB) at the store")
    try:
        written = max(db.stat().st_mtime, wal.stat().st_mtime if wal.exists() else 0.0)
        newer = not snap.exists() or written > snap.stat().st_mtime
    except OSError:
        newer = False
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(sync_lock(db, wait=0.0, by="status"))
        except Exception as exc:  # (a sync holds it, or its lock file cannot be made here: the snapshot's view stands)
            log.debug("status reads the runs from the snapshot: %s", exc)
            return None
        try:
            # (opened even when nothing was written since the snapshot: a store damaged since is said, not hidden)
            con = held.enter_context(contextlib.closing(open_store(db, read_only=True)))
            if not newer:
                return None  # (nothing since the snapshot: its runs are the store's)
            runs = _table(con, _RUNS_SQL)
            last = _table(con, _LAST_OK_SQL)
        except StoreLockedError as exc:  # (the daemon or another program has it open: the snapshot's view stands)
            log.debug("status reads the runs from the snapshot: %s", exc)
            if held_by is not None:
                held_by.append(exc.held)
            return None
        except StoreError:  # (damaged, no DuckDB file, not a store, a newer version's: what sync says)
            raise
        except Exception as exc:
            refused = damaged_store(exc, db)
            if refused is not None:
                raise refused from exc
            log.debug("status reads the runs from the snapshot: %s", exc)  # (unreadable here, say)
            return None
    from stripe_churn.sync import ENDED_UNRECORDED

    for run in runs:
        if run["status"] == "running":  # (no sync holds the store: that run's process ended without a word)
            run["status"], run["error"] = "failed", ENDED_UNRECORDED
    return runs, (last[0]["t"] if last else None)


def _lag(now: dt.datetime, last_ok: dt.datetime | None) -> str | None:
    return None if last_ok is None else str(now - last_ok).split(".")[0] + " since the last successful sync"


def collect_status(db: Path) -> dict[str, Any]:
    """Last runs (from the store when it was written after the snapshot: failed runs publish none), cursors, the
    gaps in the stored events, lag, data-quality counts and the exchange rates of the currencies billed (from the snapshot), the lock and the
    daemon's state; ``store_error``, and nothing from the snapshot, when the store is missing, damaged or no store."""
    from stripe_churn.daemon import read_state, state_path
    from stripe_churn.lock import is_locked
    from stripe_churn.sync import EVENTS_GAP

    now = dt.datetime.now(dt.UTC)
    snap = snapshot_path(db)
    info: dict[str, Any] = {"database": str(db), "snapshot": str(snap) if snap.exists() else "none yet",
                            "snapshot_age": None, "sync_running": is_locked(db), "lag": None}
    state = read_state(db)
    err: dict[str, Any] | None = None  # the daemon's last error (or the previous daemon's), shown until a run succeeds
    if state:
        daemon = f"{state.get('state')} (pid {state.get('pid')}, since {state.get('started_at')})"
        if state.get("state") in ("starting", "started", "stopping") and not _process_alive(state.get("pid")):
            daemon += "; no process has that pid now: it ended without writing so (killed?)"
        skipping = state.get("skipping")
        if isinstance(skipping, dict):  # (scheduled ticks in a row that found the store held by another process)
            ticks = skipping.get("ticks")
            daemon += (f"; its scheduled syncs skipped since {skipping.get('since')} ({ticks} tick"
                       f"{'' if ticks == 1 else 's'}): {skipping.get('held')}")
        refused = state.get("reload_refused")
        if isinstance(refused, dict) and state.get("state") in ("starting", "started"):
            # (SIGHUP's settings refused: the daemon runs on with those it had)
            daemon += (f"; its settings' reload was refused at {refused.get('at')}, it runs on with those it had: "
                       f"{refused.get('message')}")
        info["daemon"] = daemon
        err = state.get("last_error") or state.get("previous_error")
        if err:
            info["daemon_error"] = f"{err.get('at')} {err.get('kind')}: {err.get('message')}"
    elif state_path(db).exists():
        info["daemon"] = (f"its state file {state_path(db)} cannot be read (damaged?); the daemon's next start "
                          "writes it anew")
    else:
        info["daemon"] = "never ran against this database"
    live = None
    if not info["sync_running"]:
        try:
            held: list[str] = []
            live = _live_runs(db, held)
            if held:  # (no sync can open it while that process does: a scheduled one skips, a manual one waits or fails)
                info["store_held"] = (f"{held[0].split(', and DuckDB')[0]}: syncs wait or fail until it closes "
                                      "the store")
        except StoreError as exc:  # (`status` says it in one line and fails, as `sync` does)
            info["store_error"] = str(exc)
            return info
    last_ok: dt.datetime | None = None
    if live is not None:
        info["runs"], last_ok = live
        info["lag"] = _lag(now, last_ok)
    if not snap.exists():
        _note_a_later_success(info, err, last_ok)
        return info
    info["snapshot_age"] = str(dt.timedelta(seconds=int(now.timestamp() - snap.stat().st_mtime)))
    con = open_snapshot(db)
    try:
        if live is None:  # (a sync holds the store: the runs as of the last published one)
            info["runs"] = _table(con, _RUNS_SQL)
            last_ok = (_table(con, _LAST_OK_SQL) or [{"t": None}])[0]["t"]
            info["lag"] = _lag(now, last_ok)
        # (the account and mode the store holds, and the cursors proper: not the rows that only record what
        # listed the store, its mode or its rates' currency, which cover no time)
        info["accounts"] = _table(con, "SELECT account_id, value AS mode FROM sync_cursors WHERE stream = 'mode' "
                                       "ORDER BY account_id")
        info["cursors"] = _table(con, "SELECT account_id, stream, done, to_timestamp(created) AS covers_until, "
                                      "updated_at FROM sync_cursors WHERE account_id <> '' "
                                      "AND stream NOT IN ('mode', 'listing', 'full:listing') "
                                      f"AND NOT starts_with(stream, '{EVENTS_GAP}') ORDER BY stream")
        # (the gaps in the stored events: the changes made in one are dated by invoices alone)
        info["event_gaps"] = _table(con, _EVENT_GAPS_SQL.format(prefix=EVENTS_GAP))
        info["recomputes"] = _table(con, "SELECT mode, customers, started_at, finished_at, reason "
                                         "FROM metrics_runs ORDER BY started_at DESC LIMIT 5")
        info["data_quality"] = _table(con, "SELECT kind, count(*) AS n FROM data_quality GROUP BY kind ORDER BY kind")
        # (a rate holds until the next one: an old latest rate keeps valuing a currency billed today)
        info["exchange_rates"] = _table(con, _FX_STATUS_SQL)
    finally:
        con.close()
    _note_a_later_success(info, err, last_ok)
    return info


def _note_a_later_success(info: dict[str, Any], err: dict[str, Any] | None, last_ok: dt.datetime | None) -> None:
    """The daemon's error (``err``) stays until a run of the daemon succeeds: a sync that succeeded after it (a
    manual one) is said beside it, since the error may be over (or may be the daemon's own, as a key in its
    environment)."""
    if not err or last_ok is None:
        return
    try:
        at = dt.datetime.fromisoformat(str(err.get("at")))
    except ValueError:
        return
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    if last_ok.tzinfo is None:
        last_ok = last_ok.replace(tzinfo=dt.UTC)
    if last_ok > at:
        info["daemon_error"] += (f" (a sync succeeded after it, at {last_ok.isoformat(timespec='seconds')}; "
                                 "the daemon's next run clears it)")
