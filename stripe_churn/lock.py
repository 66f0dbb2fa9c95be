"""The sync lock: an OS file lock on ``<db>.lock`` shared by the daemon and manual runs, so two syncs never overlap;
and the daemon's claim on its store, ``<db>.daemon.lock``, so that one daemon runs per store."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from stripe_churn.errors import DaemonRunningError, StoreLockedError

log = logging.getLogger(__name__)

HOLDER_GRACE_S = 1.0
# A holder that keeps the lock for a moment only (`stripe-churn status` reading the runs): a sync waits this much
# longer for it instead of failing or skipping its tick.
BRIEF_HOLDER_S = 5.0


def lock_path(db: Path) -> Path:
    """``<db>.lock`` beside the database."""
    return db.with_name(db.name + ".lock")


def _holder_info(f: IO[str]) -> dict[str, Any]:
    """What the holder wrote into the file (pid, since, and `by` for a brief one); {} while it is empty."""
    try:
        f.seek(0)
        info = json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) and info.get("pid") else {}


def _holder(f: IO[str]) -> str | None:
    """Who holds the lock, from the JSON its holder wrote into the file; None while the file is empty."""
    info = _holder_info(f)
    if not info:
        return None
    by = f"{info['by']}, " if info.get("by") else ""
    return f"since {info.get('since', '?')} ({by}pid {info['pid']})"


def daemon_lock_path(db: Path) -> Path:
    """``<db>.daemon.lock`` beside the database: held by the one daemon of the store for its lifetime."""
    return db.with_name(db.name + ".daemon.lock")


def _acquire(f: IO[str], wait: float, poll: float,
             stop: threading.Event | None = None) -> tuple[bool, str | None]:
    """Take an exclusive flock on ``f`` within ``wait`` seconds: (True, None), or (False, who holds it); a ``stop``
    set meanwhile ends the wait (a daemon asked to stop does not wait its minute for another sync)."""
    deadline = time.monotonic() + max(wait, 0.0)
    while True:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True, None
        except BlockingIOError:
            if stop is not None and stop.is_set():
                return False, _holder(f)
            now = time.monotonic()
            if now >= deadline and _holder_info(f).get("by") and now < deadline + BRIEF_HOLDER_S:
                time.sleep(min(poll, 0.05))  # (a brief holder: it lets go within moments)
                continue
            if now >= deadline:
                holder = _holder(f)
                # a holder writes its pid just after taking the lock and clears it just before letting
                # go: an empty file means one of those moments, so look again briefly
                if holder is not None or now >= deadline + HOLDER_GRACE_S:
                    return False, holder
                time.sleep(0.01)
                continue
            time.sleep(poll)


@contextmanager
def _holding(f: IO[str], by: str | None = None) -> Iterator[None]:
    """With the flock on ``f`` taken: write who holds it (``by``: a brief holder, such as `status`), and clear
    that and let go after the block."""
    f.seek(0)
    f.truncate()
    info: dict[str, Any] = {"pid": os.getpid(), "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    if by:
        info["by"] = by
    f.write(json.dumps(info))
    f.flush()
    try:
        yield
    finally:
        f.seek(0)
        f.truncate()
        f.flush()
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextmanager
def sync_lock(db: Path, wait: float = 0.0, poll: float = 0.1, by: str | None = None,
              stop: threading.Event | None = None) -> Iterator[None]:
    """Hold the sync lock for the block; wait up to ``wait`` seconds, then raise :class:`StoreLockedError`
    (and up to ``BRIEF_HOLDER_S`` more for a brief holder, one that names itself with ``by``).

    The kernel releases a flock when its process dies, so a crash never leaves a stale lock behind.
    """
    path = lock_path(db)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole block
    try:
        taken, holder = _acquire(f, wait, poll, stop)
        if not taken:
            held = f"another sync holds {path} {holder or '(holder unknown)'}"
            raise StoreLockedError(f"{held}; retry later or pass --wait SECONDS", held=held)
        with _holding(f, by):
            yield
    finally:
        f.close()


@contextmanager
def daemon_lock(db: Path) -> Iterator[None]:
    """Claim the store for one daemon for the block, or raise :class:`DaemonRunningError` naming the daemon that
    has it (two daemons would both sync on their schedules and overwrite each other's ``<db>.daemon.json``).

    A flock, as :func:`sync_lock`: the kernel lets go of it when the process dies.
    """
    path = daemon_lock_path(db)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole block
    try:
        taken, holder = _acquire(f, 0.0, 0.1)
        if not taken:
            raise DaemonRunningError(f"another daemon runs against {db} {holder or '(holder unknown)'}; stop it "
                                     "first, or point this one at another database")
        with _holding(f):
            yield
    finally:
        f.close()


def is_locked(db: Path) -> bool:
    """True when a sync holds the sync lock right now: not a brief holder, such as a `status` reading the runs
    for a moment, which names itself in the file (``by``)."""
    path = lock_path(db)
    if not path.exists():
        return False
    with open(path, encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return not _holder_info(f).get("by")
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False
