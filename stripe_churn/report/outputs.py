"""Files the user names (``report --chart`` and ``--html``, ``export --out``, ``demo --dir``, ``sandbox
--truth-out``): their folders made when missing, the chart's format read from its name, a path that is the store's
(or another file this option did not write) refused, and a failure to write one told as that path and option."""

from __future__ import annotations

import errno
from pathlib import Path

from stripe_churn.errors import ConfigError, FatalError

# The chart formats matplotlib writes without another library, by file name ending.
CHART_FORMATS = ("png", "svg", "pdf")

_NO_ROOM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}

# The files beside a store ``<db>`` that are its own: the write-ahead log, the snapshot (and its log), the sync lock,
# the daemon's claim and state, and their temporary copies (``<db>.<random>.tmp``) while they are published.
STORE_FILE_ENDINGS = (".wal", ".snapshot", ".snapshot.wal", ".lock", ".daemon.lock", ".daemon.json")

# What an earlier output of each kind holds in its first (or, for a PDF, last) bytes: such a file is written over.
_EARLIER_OUTPUT = {"html": (b"<title>stripe-churn report</title>",), "png": (b"matplotlib",),
                   "svg": (b"matplotlib",), "pdf": (b"matplotlib",), "jsonl": (b'{"',)}


def _is_duckdb_file(path: Path) -> bool:
    """The file is a DuckDB database (False when it cannot be read: no such file)."""
    from stripe_churn.store.db import is_duckdb_file

    return is_duckdb_file(path, unreadable=False)


def store_file_of(path: Path, db: Path | None = None) -> Path | None:
    """The store ``path`` belongs to (the database itself, or a file of STORE_FILE_ENDINGS beside one), when it is
    ``db`` or a file of ``db``, or of any DuckDB file beside it; None for any other path."""
    try:
        target = path.resolve()
    except OSError:
        return None
    stores = [db.resolve()] if db is not None else []
    if target == (stores[0] if stores else None):
        return stores[0]
    for ending in STORE_FILE_ENDINGS + tuple(f"{e}.tmp" for e in STORE_FILE_ENDINGS):
        if target.name.endswith(ending) and len(target.name) > len(ending):
            owner = target.with_name(target.name[:-len(ending)])
            if owner in stores or _is_duckdb_file(owner):
                return owner
    if (db is not None and target.parent == stores[0].parent and target.name.startswith(stores[0].name + ".")
            and target.name.endswith(".tmp")):
        return stores[0]  # (a copy being published: the snapshot's <db>.<random>.tmp, the state's <db>.daemon.json.<pid>.tmp)
    return None


def check_output(path: Path, option: str, kind: str | None, db: Path | None = None) -> None:
    """Refuse, in one line and before anything is written, an output path that is the store ``db``, one of its
    files (its write-ahead log, snapshot, locks, daemon state), any DuckDB file, or an existing file that is no
    earlier output of this ``kind`` (html, png, svg, pdf, jsonl; None: any other file may be written over, as
    ``export`` rewrites its folder): a report must never replace the data it reads."""
    owner = store_file_of(path, db)
    if owner is not None:
        what = "the store" if owner == path.resolve() else f"a file of the store {owner}"
        raise ConfigError(f"will not write {path}: it is {what}; give {option} another path")
    # a file where a folder of the path is needed: refused now, not after the report was printed
    for folder in path.absolute().parents:
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError(f"cannot write {path} (a file stands where a directory is needed: {folder}): "
                                  f"move that file, or give {option} another path")
            break
    if not path.is_file():
        return
    if _is_duckdb_file(path):
        raise ConfigError(f"will not write {path}: it is a DuckDB database; give {option} another path")
    if kind is None:
        return
    try:
        with path.open("rb") as f:
            head = f.read(4096)
            f.seek(max(0, path.stat().st_size - 4096))
            tail = f.read(4096)
    except OSError:
        return  # (a file that cannot be read is refused by the write, with output_error's line)
    marks = _EARLIER_OUTPUT.get(kind, ())
    if head and not any(m in head.lower() or m in tail.lower() for m in marks):
        raise ConfigError(f"will not write over {path}: it is not an earlier {option} output of stripe-churn; "
                          f"remove it first or give {option} another path")


def chart_format(path: Path, option: str = "--chart") -> str:
    """The format a chart file's name asks for (png without an ending); a one-line ConfigError for another."""
    ending = path.suffix.lower().lstrip(".")
    if not ending:
        return "png"
    if ending not in CHART_FORMATS:
        raise ConfigError(f"cannot draw the chart as .{ending} ({path}): give {option} a file name ending in "
                          + ", ".join(f".{f}" for f in CHART_FORMATS[:-1]) + f" or .{CHART_FORMATS[-1]}")
    return ending


def make_parent(path: Path) -> None:
    """Create the folders ``path`` goes in when they are missing."""
    path.parent.mkdir(parents=True, exist_ok=True)


def output_error(exc: OSError, path: Path, option: str) -> FatalError:
    """The one-line error for an output the user named (``path``, given by ``option``) that could not be written:
    it names that path and option (the database's own failures name the setting db)."""
    if exc.errno in _NO_ROOM_ERRNOS:
        why, fix = exc.strerror or "no room", "free space there"
    elif isinstance(exc, FileExistsError) or exc.errno == errno.ENOTDIR:
        why, fix = "a file stands where a directory is needed", "move that file"
    else:
        why, fix = exc.strerror or str(exc), "make that place writable"
    return FatalError(f"cannot write {path} ({why}): {fix}, or give {option} another path")
