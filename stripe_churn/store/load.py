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


def _sql(table: str, replace: bool = False) -> str:
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
        "try(to_timestamp(TRY_CAST(s.x[1] AS BIGINT))) AS created",
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
        "ON CONFLICT (account_id, id) DO UPDATE SET " + ", ".join(sets)
        # version 0: "add when missing" (a copy that must not overwrite the one kept from the object's owner)
        + ("\nWHERE excluded.version > 0" if replace else
           f"\nWHERE excluded.version > 0 AND excluded.version >= coalesce({table}.version, 0)")
    )


_SQL: dict[tuple[str, bool], str] = {}


class Staged:
    """Rows for one raw table, serialised as they arrive (compact while queued); the last copy of an id wins
    unless an earlier one has a higher version."""

    __slots__ = ("_at", "blobs", "flags", "ids", "versions")

    def __init__(self) -> None:
        self._at: dict[str, int] = {}
        self.ids: list[str] = []
        self.flags: list[bool] = []
        self.versions: list[int] = []
        self.blobs: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, obj: dict[str, Any], version: int, deleted: bool | None = None) -> None:
        self.add_blob(str(obj["id"]), orjson.dumps(obj).decode(),
                      version, bool(obj.get("deleted", False)) if deleted is None else deleted)

    def add_blob(self, oid: str, blob: str, version: int, deleted: bool) -> None:
        at = self._at.get(oid)
        if at is not None:
            if version >= self.versions[at]:
                self.flags[at], self.versions[at], self.blobs[at] = deleted, version, blob
            return
        self._at[oid] = len(self.ids)
        self.ids.append(oid)
        self.flags.append(deleted)
        self.versions.append(version)
        self.blobs.append(blob)

    def extend(self, other: Staged) -> None:
        for i, oid in enumerate(other.ids):
            self.add_blob(oid, other.blobs[i], other.versions[i], other.flags[i])


def upsert_staged(con: duckdb.DuckDBPyConnection, table: str, account_id: str, rows: Staged, seen_at: datetime,
                  *, replace: bool = False) -> int:
    """Upsert staged rows into a raw table in one statement; returns the number of rows given.

    ``replace``: the rows win whatever the stored version (a full sync's listing is the truth of its moment,
    even against a store filled from another timeline); otherwise an older copy never replaces a newer one.
    """
    if table not in RAW_TABLES:
        raise ValueError(f"not a raw table: {table}")
    if not rows.ids:
        return 0
    staged = pa.table({"id": pa.array(rows.ids, pa.string()), "deleted": pa.array(rows.flags, pa.bool_()),
                       "version": pa.array(rows.versions, pa.int64()), "j": pa.array(rows.blobs, pa.string())})
    sql = _SQL.get((table, replace)) or _SQL.setdefault((table, replace), _sql(table, replace))
    con.register("staged", staged)
    try:
        con.execute(sql, {"account": account_id, "seen": seen_at.astimezone(UTC)})
    finally:
        with contextlib.suppress(duckdb.Error):  # in an aborted transaction: keep the statement's own error
            con.unregister("staged")
    return len(rows.ids)


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
    rows = Staged()
    for n, obj in enumerate(objects):
        if isinstance(versions, int):
            v = versions
        elif versions is None:
            v = default_version
        else:
            v = int(versions[n])
        if isinstance(deleted, bool):
            flag: bool | None = deleted
        elif deleted is None:
            flag = None
        else:
            flag = bool(deleted[n])
        rows.add(obj, v, flag)
    return upsert_staged(con, table, account_id, rows, seen_at)


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


# child table, its parent column, parent table
_CHILDREN: tuple[tuple[str, str, str], ...] = (
    ("subscription_items", "subscription_id", "subscriptions"),
    ("invoice_lines", "invoice_id", "invoices"),
)


def mark_unlisted_children(con: duckdb.DuckDBPyConnection, account_id: str, since: datetime,
                           seen_at: datetime) -> None:
    """After a full listing: flag as deleted the children no longer on their parent. Items and lines: not listed
    since ``since`` while their parent was (its list is complete) or is deleted. Discounts: not on the
    current copy of the subscription or customer they belong to (a discount also kept from an invoice that
    billed it is no longer on its subscription once it ended), or their owner is deleted. One statement per
    relation, not per page."""
    params = {"a": account_id, "since": since, "seen": seen_at}
    for child, col, parent in _CHILDREN:
        con.execute(
            f"UPDATE {child} c SET deleted = true, last_seen_at = $seen WHERE c.account_id = $a AND NOT c.deleted "
            f"AND c.last_seen_at < $since AND c.{col} IN (SELECT p.id FROM {parent} p "
            "WHERE p.account_id = $a AND (p.deleted OR p.last_seen_at >= $since))", params)
    con.execute(
        "UPDATE discounts c SET deleted = true, last_seen_at = $seen WHERE c.account_id = $a AND NOT c.deleted "
        "AND c.subscription_item_id IS NULL AND c.subscription_id IN (SELECT p.id FROM subscriptions p "
        "WHERE p.account_id = $a AND (p.deleted OR p.last_seen_at >= $since AND NOT list_contains(coalesce("
        "list_concat(json_extract_string(p.raw, '$.discounts[*].id'), json_extract_string(p.raw, "
        "'$.discounts[*]')), []), c.id)))", params)
    con.execute(
        "UPDATE discounts c SET deleted = true, last_seen_at = $seen WHERE c.account_id = $a AND NOT c.deleted "
        "AND c.subscription_id IS NULL AND c.customer_id IN (SELECT p.id FROM customers p WHERE p.account_id = $a "
        "AND (p.deleted OR p.last_seen_at >= $since AND coalesce(p.raw->>'$.discount.id', p.raw->>'$.discount', "
        "'') <> c.id))",
        params)


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
