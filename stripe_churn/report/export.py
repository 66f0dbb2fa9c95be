"""Export views or tables of the snapshot to Parquet or CSV files, one file per name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb

from stripe_churn.errors import ConfigError
from stripe_churn.report.outputs import output_error
from stripe_churn.store.snapshot import open_snapshot

DEFAULT_NAMES = ("mrr_movements", "customer_mrr", "mrr_bridge", "scheduled_churn", "churn_reasons", "sync_runs")


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
        written = []
        for name in wanted:
            path = out / f"{name}.{fmt}"
            opts = "(FORMAT parquet)" if fmt == "parquet" else "(FORMAT csv, HEADER true)"
            try:
                # ORDER BY ALL: the same data always gives the same bytes, whatever order the query plan chose
                con.execute(f"COPY (SELECT * FROM \"{name}\" ORDER BY ALL) "
                            f"TO '{str(path).replace(chr(39), chr(39) * 2)}' {opts}")
            except duckdb.Error as exc:
                raise ConfigError(f"cannot export {name}: {str(exc).splitlines()[0]}") from exc
            written.append(path)
        return written
    finally:
        con.close()
