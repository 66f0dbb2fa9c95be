"""One run of the product: take the sync lock, sync, recompute the metrics, publish the read-only snapshot."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import duckdb

from stripe_churn.lock import sync_lock
from stripe_churn.settings import Settings
from stripe_churn.store.snapshot import checkpoint, publish_snapshot

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

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``sync --format json``."""
        return {"run_id": self.run_id, "mode": self.mode, "status": self.status, "counts": self.counts,
                "new_movements": self.new_movements, "bridge_line": self.bridge_line,
                "started_at": self.started_at.isoformat() if self.started_at else None,
                "finished_at": self.finished_at.isoformat() if self.finished_at else None}


def _count_movements(con: duckdb.DuckDBPyConnection) -> int:
    """Rows of mrr_movements, 0 before the first recompute created the view."""
    try:
        row = con.execute("SELECT count(*) FROM mrr_movements").fetchone()
    except duckdb.Error:
        return 0
    return int(row[0]) if row else 0


def current_bridge_line(con: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
    """The bridge row of the current month (None before any MRR)."""
    try:
        cur = con.execute("SELECT * FROM mrr_bridge WHERE period_start <= CAST(timezone('UTC', now()) AS DATE) "
                          "ORDER BY period_start DESC LIMIT 1")
    except duckdb.Error:
        return None
    row = cur.fetchone()
    if row is None:
        return None
    names = [d[0] for d in cur.description]
    return dict(zip(names, row, strict=True))


def run_once(settings: Settings, *, full: bool = False, wait: float = 0.0, stop: threading.Event | None = None,
             progress: bool = True) -> RunSummary:
    """Sync, recompute and publish the snapshot under the sync lock; returns what changed.

    Raises StoreLockedError when another sync keeps the lock longer than ``wait`` seconds.
    """
    from stripe_churn.metrics.runner import recompute
    from stripe_churn.store.db import open_store
    from stripe_churn.sync import run_sync

    db = settings.db
    summary = RunSummary(started_at=dt.datetime.now(dt.UTC))
    with sync_lock(db, wait=wait):
        con = open_store(db)
        try:
            before = _count_movements(con)
            result = run_sync(settings, full=full, con=con, progress=progress, stop=stop)
            summary.run_id = getattr(result, "run_id", None)
            summary.mode = str(getattr(result, "mode", ""))
            summary.status = str(getattr(result, "status", ""))
            summary.counts = dict(getattr(result, "counts", {}) or {})
            recompute(con, settings)
            summary.new_movements = max(_count_movements(con) - before, 0)
            summary.bridge_line = current_bridge_line(con)
            checkpoint(con)
        finally:
            con.close()
        publish_snapshot(db)
    summary.finished_at = dt.datetime.now(dt.UTC)
    log.info("run finished: mode=%s status=%s new movements=%d", summary.mode, summary.status,
             summary.new_movements)
    return summary
