"""Bulk upserts into the raw tables, and loading a sandbox ``Simulation`` straight into the store.

Objects are staged as JSON strings in an Arrow table; DuckDB extracts the typed columns from the JSON and
merges with ``INSERT ... ON CONFLICT DO UPDATE``. Each row carries a ``version`` (unix seconds: the event's
``created`` for objects from events, the fetch time for lists); an older copy never replaces a newer one.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from stripe_churn.store.schema import EXTRACT, RAW_TABLES

log = logging.getLogger(__name__)

_PATH = re.compile(r"j->>'(\$[^']*)'")
_COMMON = ("account_id", "id", "deleted", "raw", "version", "created", "first_seen_at", "last_seen_at")


def _sql(table: str) -> str:
    # Every ``j->>'path'`` of the typed columns is read by one json_extract_string over all the paths, so
    # each document is parsed once, not once per column.
    paths: list[str] = ["$.created"]

    def slot(m: re.Match[str]) -> str:
        if m.group(1) not in paths:
            paths.append(m.group(1))
        return f"s.x[{paths.index(m.group(1)) + 1}]"

    typed = {name: _PATH.sub(slot, expr) for name, expr in EXTRACT[table].items()}
    cols = [*_COMMON, *typed]
    select = ",\n".join([
        "$account AS account_id", "s.id", "s.deleted",
        "s.j AS raw", "s.version",
        "to_timestamp(CAST(s.x[1] AS BIGINT)) AS created",
        "$seen AS first_seen_at", "$seen AS last_seen_at",
        *(f"{expr} AS {name}" for name, expr in typed.items()),
    ])
    path_list = ", ".join(f"'{p}'" for p in paths)
    # A stub ({"id", "object", "deleted": true}) only flags the row: the last full copy stays in raw.
    stub = "(excluded.raw->>'$.deleted' = 'true' AND excluded.raw->>'$.created' IS NULL)"
    sets = [
        "deleted = excluded.deleted",
        f"raw = CASE WHEN {stub} THEN {table}.raw ELSE excluded.raw END",
        "version = excluded.version",
        f"created = coalesce(excluded.created, {table}.created)",
        "last_seen_at = excluded.last_seen_at",
        *(f"{c} = CASE WHEN {stub} THEN {table}.{c} ELSE excluded.{c} END" for c in typed),
    ]
    return (
        f"INSERT INTO {table} ({', '.join(cols)})\n"
        f"SELECT {select}\nFROM (SELECT id, deleted, version, CAST(j AS JSON) AS j, "
        f"json_extract_string(j, [{path_list}]) AS x FROM staged) s\n"
        "ON CONFLICT (account_id, id) DO UPDATE SET " + ", ".join(sets) + "\n"
        f"WHERE excluded.version >= coalesce({table}.version, 0)"
    )


_SQL: dict[str, str] = {}


def upsert_objects(con: duckdb.DuckDBPyConnection, table: str, account_id: str, objects: Iterable[dict[str, Any]],
                   seen_at: datetime, *, versions: Sequence[int] | int | None = None,
                   deleted: Sequence[bool] | bool | None = None) -> int:
    """Upsert Stripe objects into a raw table; returns the number of objects given.

    ``versions``: one per object or one for all (default: ``seen_at``); ``deleted``: force the flag (for
    ``*.deleted`` events, whose object is the last full state); otherwise the object's own ``deleted``.
    Within one call the last copy of an id wins.
    """
    if table not in RAW_TABLES:
        raise ValueError(f"not a raw table: {table}")
    default_version = int(seen_at.timestamp())
    by_id: dict[str, int] = {}
    ids: list[str] = []
    flags: list[bool] = []
    vers: list[int] = []
    blobs: list[str] = []
    for n, obj in enumerate(objects):
        oid = obj["id"]
        if isinstance(versions, int):
            v = versions
        elif versions is None:
            v = default_version
        else:
            v = int(versions[n])
        if isinstance(deleted, bool):
            flag = deleted
        elif deleted is None:
            flag = bool(obj.get("deleted", False))
        else:
            flag = bool(deleted[n])
        blob = orjson.dumps(obj).decode()
        at = by_id.get(oid)
        if at is not None:
            if v >= vers[at]:
                flags[at], vers[at], blobs[at] = flag, v, blob
            continue
        by_id[oid] = len(ids)
        ids.append(oid)
        flags.append(flag)
        vers.append(v)
        blobs.append(blob)
    if not ids:
        return 0
    staged = pa.table({"id": pa.array(ids, pa.string()), "deleted": pa.array(flags, pa.bool_()),
                       "version": pa.array(vers, pa.int64()), "j": pa.array(blobs, pa.string())})
    sql = _SQL.get(table) or _SQL.setdefault(table, _sql(table))
    con.register("staged", staged)
    try:
        con.execute(sql, {"account": account_id, "seen": seen_at.astimezone(UTC)})
    finally:
        with contextlib.suppress(duckdb.Error):  # in an aborted transaction: keep the statement's own error
            con.unregister("staged")
    return len(ids)


def mark_missing_children(con: duckdb.DuckDBPyConnection, table: str, parent_column: str, account_id: str,
                          parents: Sequence[tuple[str, Sequence[str], int]], seen_at: datetime,
                          *, extra: str = "") -> None:
    """Flag as deleted the children of each parent missing from its complete list.

    ``parents``: (parent id, ids of the children it has now, version of that list). Only rows not newer
    than the list are touched. ``extra`` narrows the rows (for example customer-level discounts only).
    """
    if not parents:
        return
    staged = pa.table({"parent": pa.array([p[0] for p in parents], pa.string()),
                       "ids": pa.array([list(p[1]) for p in parents], pa.list_(pa.string())),
                       "v": pa.array([int(p[2]) for p in parents], pa.int64())})
    con.register("staged_parents", staged)
    try:
        con.execute(
            f"UPDATE {table} SET deleted = true, version = p.v, last_seen_at = $seen FROM staged_parents p "
            f"WHERE {table}.account_id = $a AND {table}.{parent_column} = p.parent AND NOT {table}.deleted "
            f"AND coalesce({table}.version, 0) <= p.v AND NOT list_contains(p.ids, {table}.id) {extra}",
            {"seen": seen_at, "a": account_id})
    finally:
        with contextlib.suppress(duckdb.Error):
            con.unregister("staged_parents")


def upsert_fx_rates(con: duckdb.DuckDBPyConnection, rows: Iterable[tuple[str, str, float | Decimal]]) -> None:
    """Insert or replace exchange rates (date ISO string, currency, rate)."""
    for day, currency, rate in rows:
        con.execute("INSERT INTO fx_rates (date, currency, rate) VALUES (CAST(? AS DATE), ?, ?) "
                    "ON CONFLICT (date, currency) DO UPDATE SET rate = excluded.rate",
                    [day, currency.lower(), Decimal(str(rate))])


def _sim_start(sim: Any) -> int:
    start = getattr(sim, "start", None)
    if isinstance(start, int):
        return start
    created = [int(c.get("created") or 0) for c in sim.objects.get("customers", {}).values() if not c.get("deleted")]
    return min(created) if created else int(sim.clock)


def load_simulation(con: duckdb.DuckDBPyConnection, sim: Any) -> None:
    """Every object of a sandbox ``Simulation`` straight into the store (no HTTP), in one transaction."""
    from stripe_churn.sandbox.fx import SANDBOX_FX_RATES

    seen = datetime.fromtimestamp(int(sim.clock), UTC)
    acct = sim.account_id
    con.execute("BEGIN TRANSACTION")
    try:
        for resource in ("customers", "products", "prices", "coupons", "subscriptions", "invoices", "credit_notes"):
            objs = list(sim.objects.get(resource, {}).values())
            upsert_objects(con, resource, acct, objs, seen)
        items = [it for s in sim.objects.get("subscriptions", {}).values() if not s.get("deleted")
                 for it in s.get("items", {}).get("data", [])]
        upsert_objects(con, "subscription_items", acct, items, seen)
        lines = [ln for inv in sim.objects.get("invoices", {}).values() if not inv.get("deleted")
                 for ln in inv.get("lines", {}).get("data", [])]
        upsert_objects(con, "invoice_lines", acct, lines, seen)
        upsert_objects(con, "discounts", acct, list(getattr(sim, "discounts", {}).values()), seen)
        oldest = int(sim.clock) - 30 * 86400
        upsert_objects(con, "events", acct, [e for e in sim.events if e["created"] >= oldest], seen)
        day = datetime.fromtimestamp(_sim_start(sim), UTC).date().isoformat()
        upsert_fx_rates(con, [(day, cur, rate) for cur, rate in sorted(SANDBOX_FX_RATES.items())])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    log.info("simulation %s loaded into the store", acct)
