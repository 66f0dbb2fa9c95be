"""One root error for the product; subclasses say whether trying again can help.

The daemon retries only :class:`TransientError`; everything else is fatal until a person acts.
Messages are one line: what happened, what state was left, and what to do next.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator


class StripeChurnError(Exception):
    """Root of every error stripe-churn raises on purpose."""

    transient: bool = False
    exit_code: int = 1

    def __init__(self, message: str, *, request_id: str | None = None, http_status: int | None = None,
                 object_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.http_status = http_status
        self.object_id = object_id

    def __str__(self) -> str:
        extra = []
        if self.http_status is not None:
            extra.append(f"HTTP {self.http_status}")
        if self.request_id:
            extra.append(f"request {self.request_id}")
        return f"{self.message} ({', '.join(extra)})" if extra else self.message


class TransientError(StripeChurnError):
    """Trying again later can help (rate limits, 5xx, dropped connections, a busy database)."""

    transient = True


class FatalError(StripeChurnError):
    """A person has to act (bad key, bad config, missing permission) before a retry can help."""

    exit_code = 2


class ConfigError(FatalError):
    """A setting is missing, unknown, of the wrong type, or its file cannot be read."""


class AuthError(FatalError):
    """Stripe refused the API key (401) or the key lacks a permission (403)."""


class TLSError(FatalError):
    """The TLS handshake with the Stripe base URL failed in a way trying again cannot change: a certificate this
    machine does not trust (or of another host, or not yet or no longer valid by its clock), a server without TLS."""


class StripeAPIError(TransientError):
    """Stripe (or the sandbox) kept failing after the allowed retries."""


class BadResponseError(TransientError):
    """Stripe sent a body that is not the JSON it should be (truncated, HTML from a proxy)."""


class StoreError(FatalError):
    """The DuckDB file cannot be used (corrupt, wrong schema, not writable)."""


class StoreLockedError(TransientError):
    """Another process holds the database or the sync lock.

    ``held`` says who holds what, without the advice of the message (which names `sync`'s options): the daemon
    words its own."""

    exit_code = 3

    def __init__(self, message: str, *, held: str | None = None) -> None:
        super().__init__(message)
        self.held = held or message


class DaemonRunningError(FatalError):
    """Another daemon runs against the same database (it holds ``<db>.daemon.lock``)."""


class DataError(FatalError):
    """Stored data cannot be turned into numbers (for example a missing exchange rate)."""


class StoppedError(StripeChurnError):
    """A stop was requested while work ran: what was committed stays, the rest was rolled back."""


class DiskFullError(StoreError):
    """A write found no room (disk full, quota, file size limit): what was committed stays."""


class MemoryLimitError(FatalError):
    """The metrics recompute needed more memory than DuckDB's limit allows: it was rolled back."""


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the failures it was raised from or during, nearest first (each once)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


# Writes that found no room, as the OS (errno) and DuckDB (the OS's text inside its message) report them.
_NO_ROOM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_ROOM_TEXTS = ("No space left on device", "Disk quota exceeded", "File too large")
_WRITING = re.compile(r'(?:write|open|create|extend|truncate) (?:to )?file "([^"]+)"', re.IGNORECASE)


def disk_full(exc: BaseException) -> DiskFullError | None:
    """The one-line error for ``exc`` when it (or the failure it was raised from) is a write that found no room on
    the disk; None otherwise. DuckDB gives a database up after such a write: its committed transactions are in
    the file and the write-ahead log, which the next opening replays."""
    for current in exception_chain(exc):
        if isinstance(current, OSError) and current.errno in _NO_ROOM_ERRNOS:
            reason, where = current.strerror or "no room", current.filename
            break
        text = str(current)
        found = next((t for t in _NO_ROOM_TEXTS if t in text), None)
        if found is not None:
            match = _WRITING.search(text)
            reason, where = found, match.group(1) if match else None
            break
    else:
        return None
    return DiskFullError(
        f"no room to write {where or 'the store'} ({reason}: the disk is full, or a quota or file size limit is "
        "reached): what was committed before is kept, and the next run goes on from it; free space there (a sync "
        "needs room for the database, its write-ahead log and a snapshot copy as large as the database) and run "
        "again")


def out_of_memory(exc: BaseException, limit: str | None) -> MemoryLimitError | None:
    """The one-line error for ``exc`` when it (or the failure it was raised from) is DuckDB running out of memory
    under its limit (``limit``: the setting memory_limit, None for DuckDB's default); None otherwise."""
    if not any(str(current).startswith("Out of Memory Error") for current in exception_chain(exc)):
        return None
    what = f"memory_limit {limit}" if limit else "its default limit, 80% of this machine's memory"
    return MemoryLimitError(
        f"the metrics recompute ran out of memory under DuckDB's {what}: raise the setting memory_limit "
        "(STRIPE_CHURN_MEMORY_LIMIT) or free memory on this machine, and run again; the synced rows are kept, and "
        "the previous metrics stay until a recompute succeeds")


_NOT_WRITABLE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR}
_NOT_PERMITTED_ERRNOS = {errno.EACCES, errno.EPERM}
# DuckDB's words for a file the OS would not let it open or write (the store, its write-ahead log, the snapshot):
# `IO Error: Cannot open file "<path>": Permission denied`, also inside a failed commit's message
_REFUSED_TEXT = re.compile(r'file "([^"]+)": (Permission denied|Operation not permitted|Read-only file system)')
_KEPT = "what was committed before is kept"
_ELSEWHERE = "or use another one (the database and the files beside it: setting db, STRIPE_CHURN_DB)"


def _user() -> str:
    """The name of the user this process runs as (its uid when it has none), for messages about permissions."""
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError, OSError):
        return f"uid {os.geteuid()}"


def store_failure(exc: BaseException) -> StoreError | None:
    """The one-line error for a file this machine refuses to write (no room: :func:`disk_full`; a read-only file
    system, a missing permission, a file where a directory should be), found in ``exc`` or what it was raised
    from, as an OSError or in DuckDB's words (a file DuckDB could not open); None otherwise."""
    full = disk_full(exc)
    if full is not None:
        return full
    for current in exception_chain(exc):
        # (a directory made where a file stands: mkdir(exist_ok=True) raises EEXIST)
        in_the_way = (isinstance(current, FileExistsError) and current.filename is not None
                      and not os.path.isdir(current.filename))
        if isinstance(current, OSError) and (current.errno in _NOT_WRITABLE_ERRNOS or in_the_way):
            why = "a file stands where a directory is needed" if in_the_way else current.strerror
            owner = (f" for the user {_user()}, run the command as the user the store belongs to (the daemon's),"
                     if current.errno in _NOT_PERMITTED_ERRNOS and not in_the_way else "")
            return StoreError(f"cannot write {current.filename or 'a file'} ({why}): make that place writable{owner} "
                              f"{_ELSEWHERE}; {_KEPT}")
        refused = _REFUSED_TEXT.search(str(current))
        if refused is not None:
            path, why = refused.groups()
            if why == "Read-only file system":
                return StoreError(f"cannot write {path} ({why}): make that place writable, {_ELSEWHERE}; {_KEPT}")
            user = _user()
            # (the same words whether it was to be read or written: DuckDB opens the store to write, the snapshot
            # to read, and says "Cannot open" for both)
            return StoreError(
                f"cannot open {path} ({why}) as the user {user}: run the command as the user the store belongs to "
                f"(the daemon's), or give {user} access to that file and its folder (read and write for `sync` and "
                f"the daemon, read for the other commands); {_KEPT}")
    return None


# The messages the store and the snapshot fall back to for a file DuckDB could not open (store.db.open_store,
# store.snapshot.open_snapshot): they quote DuckDB but do not say what to do
_OPEN_FAILED = ("cannot open the store ", "cannot open snapshot ")


def explained(exc: StripeChurnError) -> StripeChurnError:
    """``exc``, or, when it is the store or the snapshot that DuckDB could not open because this machine refused it
    (a permission, a read-only file system), the one line of :func:`store_failure` that says what to do."""
    if type(exc) is StoreError and str(exc).startswith(_OPEN_FAILED):
        return store_failure(exc) or exc
    return exc


# How DuckDB reports a database file whose bytes are not what it wrote (a bad block, a file cut short).
_DAMAGED_TEXTS = ("Corrupt database file", "Could not read enough bytes")


def damaged_store(exc: BaseException, db: os.PathLike[str] | str | None = None, *,
                  snapshot: bool = False) -> StoreError | None:
    """The one-line error for a damaged database file, found in ``exc`` or what it was raised from; None
    otherwise. ``db``: the store (or, with ``snapshot``, the snapshot) that was being read, when known."""
    # (a snapshot is only ever a database a sync published: one DuckDB does not take as a database is damaged too)
    texts = (*_DAMAGED_TEXTS, "not a valid DuckDB database file") if snapshot else _DAMAGED_TEXTS
    for current in exception_chain(exc):
        text = str(current).strip()
        if any(t in text for t in texts):
            what = text.splitlines()[0]
            break
    else:
        return None
    if snapshot:
        return StoreError(f"the snapshot {db} is damaged ({what}): run `stripe-churn sync`, the next sync replaces it "
                          "(the database itself is not touched)")
    store = f"the store {db}" if db is not None else "a database file"
    snap = f"{db}.snapshot" if db is not None else "<db>.snapshot"
    return StoreError(
        f"{store} is damaged ({what}): stop the daemon, move the file aside, and copy its snapshot {snap} (the "
        "last good copy, from the last sync) in its place, or run `stripe-churn sync --full` to build it again from "
        "Stripe; a damaged snapshot is replaced by the next `stripe-churn sync`")
