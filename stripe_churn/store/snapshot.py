"""The read-only snapshot ``<db>.snapshot``: a copy published atomically after each sync for readers.

DuckDB lets one process write a file while no other process opens it; readers (``sql``, ``report``,
``export``, the duckdb CLI) open the snapshot instead, so a query never blocks a sync and never sees half of one.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb

from stripe_churn.errors import StoreError, damaged_store
from stripe_churn.store.quiet import quiet

T = TypeVar("T")


def snapshot_path(db: Path) -> Path:
    """``<db>.snapshot`` beside the database."""
    return db.with_name(db.name + ".snapshot")


def publish_snapshot(db: Path) -> Path:
    """Copy the (closed, checkpointed) database beside itself and rename the copy onto ``<db>.snapshot``.

    The rename is atomic: a reader that has the old snapshot open keeps reading it (its inode stays alive).
    """
    target = snapshot_path(db)
    fd, tmp = tempfile.mkstemp(prefix=db.name + ".", suffix=".tmp", dir=db.parent)
    os.close(fd)
    try:
        shutil.copyfile(db, tmp)
        # readable by whoever may read the database (mkstemp makes the copy its owner's alone: a finance user
        # could not open the snapshot README points them at)
        os.chmod(tmp, stat.S_IMODE(os.stat(db).st_mode))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def checkpoint(con: duckdb.DuckDBPyConnection) -> None:
    """Fold the write-ahead log into the file so that a file copy holds every committed row."""
    con.execute("CHECKPOINT")


def open_snapshot(db: Path) -> duckdb.DuckDBPyConnection:
    """Open the latest snapshot read-only; a one-line StoreError when no sync has published one yet."""
    path = snapshot_path(db)
    if not path.exists():
        raise StoreError(f"no snapshot at {path} yet: run `stripe-churn sync` (or `stripe-churn demo`) first")
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise damaged_store(exc, path, snapshot=True) or StoreError(f"cannot open snapshot {path}: {exc}") from exc
    # dates and months in UTC, as the views count them, whatever this machine's time zone (a cookbook query's
    # CAST(... AS DATE) or current_date answered for another month west of UTC in the first hours of a month)
    con.execute("SET TimeZone = 'UTC'")
    return quiet(con)


def interruptible(con: duckdb.DuckDBPyConnection, work: Callable[[], T]) -> T:
    """``work()`` (queries on ``con``) with Ctrl-C stopping it at once: the queries run in a worker thread while
    the main thread waits where Python sees the signal, and a KeyboardInterrupt there interrupts ``con`` and is
    raised (a query in the main thread was sometimes not interrupted at all, and otherwise ended as DuckDB's
    RuntimeError "Query interrupted", not as an interrupt)."""
    if threading.current_thread() is not threading.main_thread():
        return work()  # (only the main thread is given signals)
    outcome: dict[str, object] = {}
    done = threading.Event()  # (waited on, not the thread: a join cut short by Ctrl-C takes the thread for ended)

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # (handed to the main thread)
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="snapshot-query", daemon=True).start()
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        # (the statement stops at DuckDB's next check; asked again while it had not started yet, for 5 s at most,
        # and the interruption is reported either way)
        for _ in range(25):
            con.interrupt()
            if done.wait(0.2):
                break
        raise
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
