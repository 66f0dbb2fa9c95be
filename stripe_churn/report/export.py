"""Export views or tables of the snapshot to Parquet or CSV files, one file per name."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import duckdb

from stripe_churn.errors import ConfigError
from stripe_churn.report.outputs import check_output, output_error
from stripe_churn.report.tables import FORMULA_STARTS, csv_text
from stripe_churn.store.db import sql_identifier, sql_literal
from stripe_churn.store.snapshot import interruptible, open_snapshot

DEFAULT_NAMES = ("mrr_movements", "customer_mrr", "mrr_bridge", "scheduled_churn", "churn_reasons", "sync_runs")


def _csv_columns(con: duckdb.DuckDBPyConnection, name: str) -> str:
    """The SELECT list of a CSV export of ``name``: its VARCHAR columns with a leading ``'`` on the values that
    a spreadsheet would read as a formula (tables.csv_text, done in SQL), the other columns (numbers, dates,
    decimals) as they are; each under its own name (as a header cell, neutralised the same way)."""
    rel = con.sql(f"SELECT * FROM {sql_identifier(name)}")
    starts = ", ".join(sql_literal(c) for c in FORMULA_STARTS)
    cols = []
    for col, typ in zip(rel.columns, rel.types, strict=True):
        value = sql_identifier(col)
        if str(typ) == "VARCHAR":
            value = f"CASE WHEN left({value}, 1) IN ({starts}) THEN '''' || {value} ELSE {value} END"
        cols.append(f"{value} AS {sql_identifier(csv_text(col))}")
    return ", ".join(cols)


def export(db: Path, out: Path, names: Sequence[str] = (), fmt: str = "parquet") -> list[Path]:
    """Write ``<out>/<name>.<fmt>`` for each name (default: the finance views); returns the files written."""
    if fmt not in ("parquet", "csv"):
        raise ConfigError(f"unknown export format {fmt!r}: use parquet or csv")
    con = open_snapshot(db)
    try:
        known = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        wanted = list(names) or [n for n in DEFAULT_NAMES if n in known]
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise ConfigError(f"no table or view named {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise output_error(exc, out, "--out") from exc
        for name in wanted:  # (the store's own files are never written over, even in the store's folder)
            check_output(out / f"{name}.{fmt}", "--out", None, db)
        written = []
        for name in wanted:
            path = out / f"{name}.{fmt}"
            opts = "(FORMAT parquet)" if fmt == "parquet" else "(FORMAT csv, HEADER true)"
            try:
                # CSV: text that a spreadsheet would run as a formula is neutralised (_csv_columns)
                cols = "*" if fmt == "parquet" else _csv_columns(con, name)
                # ORDER BY ALL: the same data always gives the same bytes, whatever order the query plan chose
                copy = (f"COPY (SELECT {cols} FROM {sql_identifier(name)} ORDER BY ALL) "
                        f"TO {sql_literal(str(path))} {opts}")
                interruptible(con, functools.partial(con.execute, copy))  # (Ctrl-C stops the copy)
            except duckdb.Error as exc:
                raise ConfigError(f"cannot export {name}: {str(exc).splitlines()[0]}") from exc
            written.append(path)
        return written
    finally:
        con.close()
