"""Opening the DuckDB store: named migrations (one transaction each), read-only opening, lock errors."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
from sqlalchemy.schema import CreateTable

from stripe_churn.errors import StoreError, StoreLockedError, damaged_store
from stripe_churn.store import schema
from stripe_churn.store.quiet import quiet

log = logging.getLogger(__name__)


@functools.cache  # (the schema is fixed: compiled once per process, not at each new store's migration)
def _ddl(table: str) -> str:
    from duckdb_engine import Dialect

    return str(CreateTable(schema.SQLModel.metadata.tables[table]).compile(dialect=Dialect())).strip()


# The raw JSON is most of a store: zstd keeps it about 4.5 times smaller than DuckDB's default string
# compression and costs less CPU at a checkpoint, with no slower reads (measured on a synced account).
_RAW_ZSTD = ("raw JSON NOT NULL,", "raw JSON USING COMPRESSION zstd NOT NULL,")


def _m001_initial(con: duckdb.DuckDBPyConnection) -> None:
    """Every table of schema.py as first defined; the raw tables' JSON column compressed with zstd where the
    store's DuckDB storage version has it."""
    zstd = _has_zstd(con)
    for table in schema.SQLModel.metadata.sorted_tables:
        if table.name == "schema_migrations":
            continue
        ddl = _ddl(table.name)
        if zstd and table.name in schema.RAW_TABLES:
            ddl = ddl.replace(*_RAW_ZSTD)
        con.execute(ddl)


def _has_zstd(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the store's storage format has zstd for strings (a file written in an older format does not).
    Probed on a connection of its own: a refusal would abort the migration's transaction."""
    row = con.execute("SELECT current_database()").fetchone()
    probe = con.cursor()
    try:
        probe.execute("BEGIN TRANSACTION")
        probe.execute(f'CREATE TABLE "{row[0] if row else "memory"}".main._zstd_probe (raw JSON USING COMPRESSION zstd)')
        return True
    except duckdb.Error as exc:
        log.debug("raw JSON left to DuckDB's default compression: %s", exc)
        return False
    finally:
        with contextlib.suppress(duckdb.Error):
            probe.execute("ROLLBACK")
        probe.close()


# Typed columns added for the metrics after 001 (a store created later has them from 001 already).
_M002_COLUMNS = {
    "customers": ("country",),
    "subscriptions": ("trial_start", "trial_end", "paused_at", "cancellation_reason", "cancellation_feedback",
                      "cancellation_comment", "pause_collection"),
    "invoices": ("marked_uncollectible_at",),
    "invoice_lines": ("parent_proration", "proration_credit", "tax_inclusive"),
}


def _m002_metrics_columns(con: duckdb.DuckDBPyConnection) -> None:
    """Typed columns the metrics read instead of the raw JSON, filled from ``raw`` for the rows already kept."""
    _add_extracted_columns(con, _M002_COLUMNS)


def _add_extracted_columns(con: duckdb.DuckDBPyConnection, columns: dict[str, tuple[str, ...]]) -> None:
    """Add the typed columns ``columns`` (table -> names) that a table lacks, filled from ``raw`` by
    schema.EXTRACT for the rows already kept. (A store created later has them from 001 already.)"""
    for table, names in columns.items():
        have = {r[0] for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = ? AND database_name = current_database()",
            [table]).fetchall()}
        missing = [n for n in names if n not in have]
        if not missing:
            continue
        from duckdb_engine import Dialect

        model = schema.SQLModel.metadata.tables[table]
        for name in missing:
            sql_type = model.c[name].type.compile(dialect=Dialect())
            con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")
        con.execute(f"UPDATE {table} SET {_extracted_sets(table, missing)} WHERE raw IS NOT NULL")


def _extracted_sets(table: str, names: Iterable[str]) -> str:
    """The SET list of an UPDATE that computes the typed columns ``names`` of ``table`` from ``raw`` by
    schema.EXTRACT."""
    return ", ".join(f"{n} = " + schema.EXTRACT[table][n].replace("j->>", "raw->>").replace("(j,", "(raw,")
                     for n in names)


def _refill_extracted_columns(con: duckdb.DuckDBPyConnection, table: str, names: tuple[str, ...], where: str) -> None:
    """Compute the typed columns ``names`` of ``table`` anew by schema.EXTRACT from ``raw``, for the rows kept that
    match ``where`` (SQL over the row; ``raw`` is the JSON): after a change of their extraction, the rows it can
    change. Also in the table's stage, when a full sync left one to resume (load.stage_table)."""
    from stripe_churn.store.load import stage_table

    sets = _extracted_sets(table, names)
    for target in (table, stage_table(table)):
        if target != table and not con.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND database_name = current_database()",
                [target]).fetchall()[0][0]:
            continue
        con.execute(f"UPDATE {target} SET {sets} WHERE raw IS NOT NULL AND ({where})")


def _m003_subscription_event_fields(con: duckdb.DuckDBPyConnection) -> None:
    """``events.sub_state``: what the metrics read of a subscription event, parsed once (schema.PARSE), filled
    from ``raw`` for the events already kept. (Rewritten in place by two changes of the column's type: first to
    the parsed values, then to the fields read from them; an UPDATE of a nested column costs milliseconds a row.)"""
    parsed = schema.PARSE["events"]
    as_row = {name: expr.replace("j->>'$.type'", "type").replace("(j, ", "(raw, ") for name, expr in parsed.items()}
    pairs = ", ".join(f"'{name}': {expr}" for name, expr in as_row.items())
    row = con.execute(f"SELECT typeof({{{pairs}}}) FROM (SELECT CAST('{{}}' AS JSON) AS raw, "
                      "'customer.subscription.created' AS type)").fetchone()
    con.execute("ALTER TABLE events ADD COLUMN sub_state BOOLEAN")
    con.execute(f"ALTER TABLE events ALTER sub_state SET DATA TYPE {row[0] if row else ''} USING "
                f"CASE WHEN type LIKE 'customer.subscription.%' AND raw IS NOT NULL THEN {{{pairs}}} END")
    fields = schema.EXTRACT["events"]["sub_state"].replace("(j, ", "(raw, ")
    for name in parsed:
        fields = fields.replace(f"s.{name}", f"sub_state.{name}")
    con.execute(f"ALTER TABLE events ALTER sub_state SET DATA TYPE {schema.SUB_STATE_TYPE} USING {fields}")


def _create_if_missing(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """A table of schema.py, unless the store has it (one added after 001: a store created later has it from 001
    already)."""
    con.execute(_ddl(table).replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))


def _create_raw_if_missing(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """A raw table of schema.py added after 001, its JSON compressed as 001 compresses the others'."""
    ddl = _ddl(table).replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1)
    con.execute(ddl.replace(*_RAW_ZSTD) if _has_zstd(con) else ddl)


def _m007_plan_prices_and_decimal_quantities(con: duckdb.DuckDBPyConnection) -> None:
    """Typed columns whose extraction changed, filled anew for the rows it changes: the terms of a price row that
    holds a legacy plan (read from the plan's own fields), and the quantity of the invoice lines and invoice items
    that have only ``quantity_decimal``."""
    _refill_extracted_columns(con, "prices", ("type", "unit_amount", "recurring_interval",
                                              "recurring_interval_count", "usage_type"),
                              "raw->>'$.object' = 'plan'")
    for table in ("invoice_lines", "invoice_items"):
        _refill_extracted_columns(con, table, ("quantity",),
                                  "quantity IS NULL AND raw->>'$.quantity_decimal' IS NOT NULL")


def _m009_state_seen_at(con: duckdb.DuckDBPyConnection) -> None:
    """``state_seen_at`` on every raw table: when the row's current state was first stored. What a row kept
    already holds was stored by its latest write at the latest, so it gets that write's moment (``last_seen_at``,
    or its version when later), which dates it as the metrics dated it until now. (A table created later has it
    from its creation.)"""
    for table in schema.RAW_TABLES:
        have = {r[0] for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = ? AND database_name = current_database()",
            [table]).fetchall()}
        if "state_seen_at" in have:
            continue
        con.execute(f"ALTER TABLE {table} ADD COLUMN state_seen_at TIMESTAMPTZ")
        con.execute(f"UPDATE {table} SET state_seen_at = greatest(last_seen_at, to_timestamp(version))")


def _add_column_if_missing(con: duckdb.DuckDBPyConnection, table: str, name: str) -> None:
    """A column of schema.py added after 001, NULL in the rows kept (a table created later has it already)."""
    have = {r[0] for r in con.execute(
        "SELECT column_name FROM duckdb_columns() WHERE table_name = ? AND database_name = current_database()",
        [table]).fetchall()}
    if name in have:
        return
    from duckdb_engine import Dialect

    sql_type = schema.SQLModel.metadata.tables[table].c[name].type.compile(dialect=Dialect())
    con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")


def _m012_price_option_tiers(con: duckdb.DuckDBPyConnection) -> None:
    """``prices.options_without_tiers`` (a typed column, filled from ``raw`` for the rows kept) and
    ``prices.option_tiers_not_found_at`` (the sync's bookkeeping, NULL in the rows kept: none was found to lack them
    for good yet)."""
    _add_extracted_columns(con, {"prices": ("options_without_tiers",)})
    _add_column_if_missing(con, "prices", "option_tiers_not_found_at")


def _m013_line_invoice_items(con: duckdb.DuckDBPyConnection) -> None:
    """``invoice_lines.invoice_item_id`` (the invoice item a line bills), filled from ``raw`` for the lines kept that
    can bill one: the proration lines and those naming no subscription item (one-time items). A pending proration's
    stored invoice item says only that it is no longer pending once billed; its line says by which invoice."""
    _add_column_if_missing(con, "invoice_lines", "invoice_item_id")
    # (a stage a full sync left lacks the column: load.create_stages has that listing start over)
    con.execute(f"UPDATE invoice_lines SET {_extracted_sets('invoice_lines', ('invoice_item_id',))} "
                "WHERE raw IS NOT NULL AND (coalesce(parent_proration, false) OR subscription_item_id IS NULL)")


# Applied in this order, each once; never edit one that shipped -- add a new one.
MIGRATIONS: list[tuple[str, Callable[[duckdb.DuckDBPyConnection], None]]] = [
    ("001_initial", _m001_initial),
    ("002_metrics_columns", _m002_metrics_columns),
    ("003_subscription_event_fields", _m003_subscription_event_fields),
    ("004_line_pretax_credits", lambda con: _add_extracted_columns(con, {"invoice_lines": ("pretax_credits",)})),
    ("005_metrics_runs", lambda con: _create_if_missing(con, "metrics_runs")),
    ("006_invoice_items", lambda con: _create_raw_if_missing(con, "invoice_items")),
    ("007_plan_prices_and_decimal_quantities", _m007_plan_prices_and_decimal_quantities),
    ("008_invoice_attempted", lambda con: _add_extracted_columns(con, {"invoices": ("attempted",)})),
    ("009_state_seen_at", _m009_state_seen_at),
    ("010_credit_note_lines_not_found",
     lambda con: _add_column_if_missing(con, "credit_notes", "lines_not_found_at")),
    ("011_credit_note_lines_has_more", lambda con: _add_extracted_columns(con, {"credit_notes": ("lines_has_more",)})),
    ("012_price_option_tiers", _m012_price_option_tiers),
    ("013_line_invoice_items", _m013_line_invoice_items),
    ("014_invoice_payment_dates",
     lambda con: _add_extracted_columns(con, {"invoices": ("finalized_at", "paid_at", "attempt_count")})),
]


def check_store(con: duckdb.DuckDBPyConnection, where: str | Path = "this DuckDB database") -> None:
    """Refuse, before anything is written, a database that is not a stripe-churn store (tables or views but no
    ``schema_migrations``) or one a newer stripe-churn migrated (a migration this version does not know). An
    empty database is a new store."""
    objects = con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "UNION ALL SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal "
        "AND database_name = current_database()").fetchall()
    if not objects:
        return
    if ("main", "schema_migrations") not in objects:
        raise StoreError(
            f"{where} is a DuckDB database but not a stripe-churn store (it has tables, none of them "
            "schema_migrations): point STRIPE_CHURN_DB (setting db) at a new or existing stripe-churn file; "
            "that database was left as it was")
    known = {name for name, _ in MIGRATIONS}
    unknown = sorted(r[0] for r in con.execute("SELECT name FROM main.schema_migrations").fetchall()
                     if r[0] not in known)
    if unknown:
        raise StoreError(
            f"the store {where} was written by a newer stripe-churn (its migration {unknown[-1]} is unknown to this "
            "version): upgrade stripe-churn to use it, or point STRIPE_CHURN_DB (setting db) at another store; "
            "the store was left as it was")


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply the migrations not yet recorded in schema_migrations; returns the names applied. A database that
    :func:`check_store` refuses is left as it was."""
    check_store(con)
    _create_if_missing(con, "schema_migrations")
    done = {r[0] for r in con.execute("SELECT name FROM schema_migrations").fetchall()}
    applied = []
    for name, step in MIGRATIONS:
        if name in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            step(con)
            con.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
                        [name, datetime.now(UTC)])
            con.execute("COMMIT")
        except BaseException:
            rollback(con)
            raise
        log.info("store migration %s applied", name)
        applied.append(name)
    if applied:
        # (written into the file at once: replaying a migration's ALTER ... USING from the write-ahead log after a
        # crash would need DuckDB's json extension before the store has loaded it)
        con.execute("CHECKPOINT")
    return applied


_SPILL_FILE = re.compile(r"duckdb_temp_(\d+)_")


def clear_stale_spill(path: Path) -> int:
    """Remove the files a killed process left in DuckDB's spill folder ``<db>.tmp`` (named after their
    process id; those of live processes stay), and the folder when that empties it: DuckDB removes only a
    folder it created itself, and a killed sync may have left up to its memory cap's worth of spill there.
    Returns the number of files removed."""
    folder = path.with_name(path.name + ".tmp")
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        match = _SPILL_FILE.match(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
            removed += 1
    with contextlib.suppress(OSError):
        folder.rmdir()  # only when empty
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """One transaction: committed when the block ends, rolled back when it raises."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        rollback(con)
        raise


def dict_rows(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``sql``'s rows as dicts (TIMESTAMPTZ values as aware datetimes in the connection's time zone). Run as one
    statement: ``con.sql(...)`` binds a statement once more before it runs it, about 10 ms for a view such as
    mrr_bridge, a third of reading it."""
    cur = con.execute(sql, params or {})
    names = [d[0] for d in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def sql_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier (a table, a column, a database named after its file)."""
    return '"' + name.replace('"', '""') + '"'


def sql_literal(text: str) -> str:
    """``text`` as an SQL string literal (a path in a COPY, a database's name)."""
    return "'" + text.replace("'", "''") + "'"


def rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back the open transaction after a failure, keeping that failure the one raised: when DuckDB has
    already ended the transaction (a failed COMMIT) or given up the database (a write that found the disk
    full), the ROLLBACK's own error would hide why."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error as exc:
        log.debug("rollback after a failure: %s", exc)


def is_duckdb_file(path: Path, unreadable: bool = True) -> bool:
    """Whether ``path`` starts as a DuckDB file does (its magic bytes after the checksum: a store, a snapshot,
    another program's database); ``unreadable`` when it cannot be read (missing too)."""
    try:
        with path.open("rb") as f:
            head = f.read(12)
    except OSError:
        return unreadable
    return head[8:12] == b"DUCK"


def open_store(path: str | Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (and, when writable, create or migrate) the store at ``path``."""
    path = Path(path)
    if read_only and not path.exists():
        raise StoreError(f"no store at {path}: run `stripe-churn sync` first")
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
        clear_stale_spill(path)
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        text = str(exc)
        if "lock" in text.lower():
            held = re.search(r"held in (.+?) \(PID (\d+)\)", text)
            who = f" ({held.group(1)}, pid {held.group(2)})" if held else ""
            raise StoreLockedError(
                f"the store {path} is in use by another process{who}, and DuckDB lets one process open it at a "
                f"time: wait for it to finish, or close it (queries belong on the snapshot {path}.snapshot), and "
                "try again") from None
        if not is_duckdb_file(path):
            raise StoreError(
                f"{path} is not a DuckDB database: point the setting db (STRIPE_CHURN_DB) at the store, or at a new "
                f"path to start one; a store damaged this far can be replaced by its snapshot {path}.snapshot") from None
        raise damaged_store(exc, path) or StoreError(f"cannot open the store {path}: {text.splitlines()[0]}") from None
    except duckdb.Error as exc:
        raise damaged_store(exc, path) or StoreError(f"cannot open the store {path}: {str(exc).splitlines()[0]}; "
                                                     "move it aside and run `stripe-churn sync --full`") from None
    con.execute("SET TimeZone = 'UTC'")
    quiet(con)
    try:
        check_store(con, path)  # (before any write: a file that is not a store, or a newer one's, stays as it is)
    except BaseException:
        con.close()
        raise
    if not read_only:
        try:
            migrate(con)
        except Exception:
            con.close()
            raise
    return con
