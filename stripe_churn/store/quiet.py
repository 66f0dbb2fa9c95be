"""One setting every store connection needs (a module of its own: importing it costs nothing)."""

from __future__ import annotations

import duckdb


def quiet(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Keep DuckDB's own progress bar out of the output (it prints to stdout once a query runs 2 s: into CSV and
    JSON output and the journal). The bar stays enabled underneath: its polling is what lets Ctrl-C stop a
    running statement (once it has run 2 s; without the bar, never). Settings are per connection: call it on
    every connection and cursor that may run a long query."""
    con.execute("SET enable_progress_bar_print = false")
    return con
