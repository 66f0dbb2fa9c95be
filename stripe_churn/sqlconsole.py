"""Read-only SQL for finance: one read statement against the snapshot, with files, ATTACH and extensions off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from stripe_churn.errors import ConfigError, StoreError
from stripe_churn.store.snapshot import interruptible, open_snapshot

ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


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


def run_query(db: Path, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one read query on ``<db>.snapshot``; returns column names and rows."""
    check_read_only(sql)
    con = open_snapshot(db)
    try:
        lock_down(con)
        try:  # (Ctrl-C stops the query: interruptible)
            table = interruptible(con, lambda: con.sql(sql).to_arrow_table())  # Arrow: TIMESTAMPTZ aware datetimes
        except duckdb.Error as exc:
            if "attached in read-only mode" in str(exc):  # (a write inside a SELECT or an EXPLAIN ANALYZE)
                raise ConfigError("only read queries are allowed here (this one writes to a table inside its "
                                  "SELECT or EXPLAIN); use `stripe-churn export` to write files") from exc
            raise StoreError(f"query failed: {_with_hint(str(exc))}") from exc
        columns = list(table.column_names)
        data = [table.column(i).to_pylist() for i in range(table.num_columns)]
        return columns, list(zip(*data, strict=True)) if data else []
    finally:
        con.close()
