"""Read-only SQL for finance: one read statement against the snapshot, with files, ATTACH and extensions off."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import duckdb

from stripe_churn.errors import ConfigError, StoreError
from stripe_churn.store.snapshot import interruptible, open_snapshot, snapshot_path

ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
SPILL_FLOOR = 256 << 20  # the spill a query gets however little room there is (a few sorts' worth)
# the types whose infinite values (DuckDB's 'infinity', '-infinity') no Python date or datetime holds
_TEMPORAL = {"DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS"}
SYNC_ROOM_EXTRA = 1 << 30  # room kept for the next sync beyond the store's own size (its new rows, its WAL)


def check_read_only(sql: str) -> None:
    """Accept exactly one SELECT/WITH/FROM/DESCRIBE/SHOW/SUMMARIZE/EXPLAIN statement; ConfigError otherwise."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ConfigError(f"cannot parse the query: {str(exc).splitlines()[0]}") from exc
    if len(statements) != 1:
        raise ConfigError(f"give exactly one statement (got {len(statements)})")
    kind = statements[0].type
    if kind not in ALLOWED:
        raise ConfigError(f"only read queries are allowed here (got {kind.name}); "
                          "use `stripe-churn export` to write files")


def _with_hint(message: str) -> str:
    """DuckDB's error on one line: its first line, and the suggestion it puts on the next one when it has one (`Did
    you mean "mrr_bridge"?`, `Candidate bindings: ...`), without the query it quotes below (``LINE 1: ...``)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return message
    hint = lines[1] if len(lines) > 1 and not lines[1].startswith("LINE ") else ""
    return f"{lines[0]} {hint}".strip()


def lock_down(con: duckdb.DuckDBPyConnection) -> None:
    """No file, network or extension access for user SQL, and no way to turn it back on."""
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def spill_room(db: Path) -> int:
    """Bytes a query may spill to disk (DuckDB writes it beside the snapshot, in ``<db>.snapshot.tmp``): the free
    space less what the next sync needs there, a copy of the store for its snapshot and room to grow. DuckDB's own
    limit is 90% of the free space: one runaway query wrote 43 GB and left the next sync without room."""
    folder = snapshot_path(db).parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return SPILL_FLOOR
    keep = _size(db) + _size(db.with_name(db.name + ".wal")) + SYNC_ROOM_EXTRA
    return max(SPILL_FLOOR, free - keep)


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def _fetch(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, dict[int, int]]:
    """The rows of ``sql`` as an Arrow table (TIMESTAMPTZ as aware datetimes), with the values Python has no type
    for as DuckDB prints them: an INTERVAL as its text (``73 days 14:00:00``, not Arrow's month-day-nano triple),
    and an infinite date or timestamp (``'infinity'``, as in ``coalesce(valid_to, 'infinity')``) as ``infinity``
    in a column of its own after the query's, named in the returned map (column -> its text column)."""
    rel = con.sql(sql)
    kinds = [str(t) for t in rel.types]
    if not any(k == "INTERVAL" or k in _TEMPORAL for k in kinds):
        return rel.to_arrow_table(), {}
    names = list(rel.columns)
    cells: list[str] = []
    ends: dict[int, int] = {}
    for i, kind in enumerate(kinds):
        n = f"#{i + 1}"  # (by position: a query's columns may share a name)
        if kind == "INTERVAL":
            cells.append(f"CAST({n} AS VARCHAR)")
        elif kind in _TEMPORAL:
            cells.append(f"CASE WHEN isfinite({n}) THEN {n} END")
            ends[i] = len(names) + len(ends)
        else:
            cells.append(n)
    cells += [f"CASE WHEN NOT isfinite(#{i + 1}) THEN CAST(#{i + 1} AS VARCHAR) END" for i in ends]
    table = rel.project(", ".join(cells)).to_arrow_table()
    return table.rename_columns([*names, *(f"{names[i]} (text)" for i in ends)]), ends


def run_query(db: Path, sql: str, memory_limit: str | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one read query on ``<db>.snapshot``; returns column names and rows. DuckDB takes ``memory_limit`` (the
    setting; its default otherwise) and spills beyond it, up to :func:`spill_room`."""
    check_read_only(sql)
    con = open_snapshot(db)
    try:
        room = spill_room(db)
        con.execute(f"SET max_temp_directory_size = '{room}B'")
        if memory_limit is not None:
            con.execute(f"SET memory_limit = '{memory_limit}'")
        lock_down(con)
        try:  # (Ctrl-C stops the query: interruptible)
            table, ends = interruptible(con, lambda: _fetch(con, sql))
        except duckdb.Error as exc:
            if "attached in read-only mode" in str(exc):  # (a write inside a SELECT or an EXPLAIN ANALYZE)
                raise ConfigError("only read queries are allowed here (this one writes to a table inside its "
                                  "SELECT or EXPLAIN); use `stripe-churn export` to write files") from exc
            if isinstance(exc, duckdb.OutOfMemoryException) and "max_temp_directory_size" in str(exc):
                raise StoreError(
                    f"query stopped: it needed more than {_gib(room)} of spill space on disk beside the snapshot, "
                    "all there is while leaving the next sync room for the store and its snapshot: narrow it "
                    "(fewer rows or columns, a shorter period), raise memory_limit, or free disk space") from exc
            if isinstance(exc, duckdb.OutOfMemoryException):  # (DuckDB's hint names SET, which `sql` refuses)
                what = f"memory_limit {memory_limit}" if memory_limit else "DuckDB's default limit, 80% of memory"
                raise StoreError(f"query stopped: it ran out of memory under {what}: narrow it (fewer rows or "
                                 "columns, a shorter period) or raise the setting memory_limit") from exc
            raise StoreError(f"query failed: {_with_hint(str(exc))}") from exc
        columns = list(table.column_names)
        data = [table.column(i).to_pylist() for i in range(table.num_columns)]
        for i, j in ends.items():  # (an infinite date or timestamp: DuckDB's text for it in its column)
            data[i] = [text if text is not None else value for value, text in zip(data[i], data[j], strict=True)]
        shown = len(columns) - len(ends)  # (the text columns after the query's own are dropped)
        return columns[:shown], list(zip(*data[:shown], strict=True)) if shown else []
    finally:
        con.close()
