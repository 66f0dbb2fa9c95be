"""Bulk upserts into the raw tables, and loading a sandbox ``Simulation`` straight into the store.

Objects are staged as JSON strings in an Arrow table; DuckDB extracts the typed columns from the JSON and
merges with ``INSERT ... ON CONFLICT DO UPDATE``. Each row carries a ``version`` (unix seconds: the event's
``created`` for objects from events, the fetch time for lists); an older copy never replaces a newer one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from stripe_churn.store.db import rollback
from stripe_churn.store.schema import EXTRACT, PARSE, RAW_TABLES

log = logging.getLogger(__name__)

_PATH = re.compile(r"j->>'(\$[^']*)'")
_COMMON = ("account_id", "id", "deleted", "raw", "version", "created", "first_seen_at", "last_seen_at",
           "state_seen_at")


def _typed(table: str) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """The typed columns' expressions over ``s.x`` (the extracted paths) and ``s.<parsed>``, the parsed values'
    expressions (PARSE) over ``x`` and ``j``, and those paths."""
    # Every ``j->>'path'`` of the typed columns is read by one json_extract_string over all the paths, so
    # each document is parsed once, not once per column.
    paths: list[str] = ["$.created"]

    def slot(m: re.Match[str], prefix: str = "s.") -> str:
        if m.group(1) not in paths:
            paths.append(m.group(1))
        return f"{prefix}x[{paths.index(m.group(1)) + 1}]"

    typed = {name: _PATH.sub(slot, expr) for name, expr in EXTRACT[table].items()}
    parsed = {name: _PATH.sub(lambda m: slot(m, ""), expr) for name, expr in PARSE.get(table, {}).items()}
    return typed, parsed, paths


def typed_source(table: str, source: str, cols: str) -> str:
    """SQL of ``source``'s ``cols`` (which name ``j``, the object's JSON), each row with ``x`` (the values at the
    typed columns' paths) and the parsed values of PARSE, as the typed columns' expressions read them."""
    _, parsed, paths = _typed(table)
    path_list = ", ".join(f"'{p}'" for p in paths)
    inner = f"SELECT {cols}, json_extract_string(j, [{path_list}]) AS x FROM {source}"
    if not parsed:
        return inner
    return f"SELECT *, {', '.join(f'{e} AS {n}' for n, e in parsed.items())} FROM ({inner})"


# Fields Stripe sends only when expanded (the sync expands them when it lists or retrieves these objects), which
# the copy in an event lacks: a price's tiers and amounts in other currencies, a coupon's too and its products.
INCLUDABLE: dict[str, tuple[str, ...]] = {"prices": ("tiers", "currency_options"),
                                          "coupons": ("currency_options", "applies_to")}
# Typed columns read from such a field (table -> column -> field): a copy that lacks the field keeps the stored
# column with the stored field, so that the column says what the stored JSON holds.
INCLUDABLE_COLUMNS: dict[str, dict[str, str]] = {"prices": {"options_without_tiers": "currency_options"}}


def _keeps(field: str, new: str, old: str) -> str:
    """SQL: whether the stored ``<old>.raw``'s includable ``field`` is kept for the incoming ``<new>.raw``, which
    lacks it."""
    return f"(NOT json_exists({new}.raw, '$.{field}') AND json_type({old}.raw, '$.{field}') <> 'NULL')"


def _typed_value(table: str, column: str, new: str, old: str) -> str:
    """SQL of a typed column of the row an incoming copy ``<new>`` makes of the stored ``<old>``: the stored value
    when the copy is a stub, or lacks the includable field the column is read from; else the copy's."""
    stub = _STUB.format(row=new)
    field = INCLUDABLE_COLUMNS.get(table, {}).get(column)
    kept = stub if field is None else f"{stub} OR {_keeps(field, new, old)}"
    return f"CASE WHEN {kept} THEN {old}.{column} ELSE {new}.{column} END"


def _with_kept_includable(table: str, new: str = "excluded", old: str | None = None) -> str:
    """SQL of the incoming ``<new>.raw`` with each includable field it lacks (an event's copy) taken from the stored
    copy ``<old>.raw`` (default: the table's) that has one. (Mostly the refresh after the event brings them again;
    not for a deleted price or coupon, whose last full copy is the event's, and whose running discounts or items
    still need them.)"""
    fields = INCLUDABLE.get(table, ())
    old = table if old is None else old
    if not fields:
        return f"{new}.raw"
    kept = {f: (_keeps(f, new, old), f"CAST(json_extract({old}.raw, '$.{f}') AS VARCHAR)") for f in fields}
    # (the object's text without its closing brace, then the fields: no regular expression, whose replacement
    # would read the JSON's backslashes)
    text = f"rtrim(CAST({new}.raw AS VARCHAR), chr(32) || chr(9) || chr(10) || chr(13))"
    added = " || ".join(f"CASE WHEN {cond} THEN ',\"{f}\":' || {value} ELSE '' END" for f, (cond, value) in kept.items())
    return (f"CASE WHEN {' OR '.join(cond for cond, _ in kept.values())} "
            f"THEN CAST(left({text}, length({text}) - 1) || {added} || '}}' AS JSON) ELSE {new}.raw END")


# A stub ({"id", "object", "deleted": true}) only flags the row: the last full copy stays in raw (SQL over the
# incoming copy `{row}`). Its JSON is read only when its typed columns say it may be one (deleted, no created):
# parsing every incoming document for it took most of a merge's time and memory (1,865 stored events: more than
# 150 MB).
_STUB = ("(CASE WHEN {row}.deleted AND {row}.created IS NULL "
         "THEN {row}.raw->>'$.deleted' = 'true' AND {row}.raw->>'$.created' IS NULL ELSE false END)")


# When a write stores a row's state (SQL over the write's moment and the copy's version): that moment, or the version
# when it is later (Stripe's clock, running ahead of this machine's: the metrics read it as seen_in_stripes_clock
# reads last_seen_at and version).
STATE_SEEN = "greatest({seen}, to_timestamp({version}))"


def _state_changed(table: str, new: str, old: str) -> str:
    """SQL: whether the incoming copy ``<new>`` changes the state of the stored row ``<old>`` of the same id: its
    deleted flag, or its JSON as it would be stored (a stub only flags; includable fields kept). The JSON is
    compared as text first, and parsed only when the texts differ (a listed copy keeps the whitespace Stripe sent
    it with, a retrieved or an event's copy is compact)."""
    stub = _STUB.format(row=new)
    raw = _with_kept_includable(table, new, old)
    return (f"({new}.deleted IS DISTINCT FROM {old}.deleted OR CASE WHEN {stub} THEN false "
            f"WHEN CAST({raw} AS VARCHAR) IS NOT DISTINCT FROM CAST({old}.raw AS VARCHAR) THEN false "
            f"ELSE json({raw}) IS DISTINCT FROM json({old}.raw) END)")


def _conflict(table: str, replace: bool) -> str:
    """The ON CONFLICT clause of an upsert into ``table`` (see :func:`upsert_staged` for ``replace``)."""
    typed = EXTRACT[table]
    stub = _STUB.format(row="excluded")
    sets = [
        "deleted = excluded.deleted",
        f"raw = CASE WHEN {stub} THEN {table}.raw ELSE {_with_kept_includable(table)} END",
        "version = excluded.version",
        f"created = coalesce(excluded.created, {table}.created)",
        "last_seen_at = excluded.last_seen_at",
        f"state_seen_at = CASE WHEN {_state_changed(table, 'excluded', table)} THEN excluded.state_seen_at "
        f"ELSE {table}.state_seen_at END",
        *(f"{c} = {_typed_value(table, c, 'excluded', table)}" for c in typed),
    ]
    return (
        "\nON CONFLICT (account_id, id) DO UPDATE SET " + ", ".join(sets)
        # version 0: "add when missing" (a copy that must not overwrite the one kept from the object's owner)
        + ("\nWHERE excluded.version > 0" if replace else
           f"\nWHERE excluded.version > 0 AND excluded.version >= coalesce({table}.version, 0)"))


def _columns(table: str) -> list[str]:
    return [*_COMMON, *EXTRACT[table]]


def _replacing(table: str) -> str:
    """The select list of the rows an incoming copy ``s`` makes of the stored ``t`` of the same id, as the upsert's
    ON CONFLICT clause (``replace``) sets them: a stub only flags the row; ``first_seen_at`` stays, and
    ``state_seen_at`` unless the copy changes the row's state."""
    stub = _STUB.format(row="s")
    kept = {"account_id": "s.account_id", "id": "s.id", "deleted": "s.deleted", "version": "s.version",
            "created": "coalesce(s.created, t.created)", "first_seen_at": "t.first_seen_at",
            "last_seen_at": "s.last_seen_at",
            "state_seen_at": f"CASE WHEN {_state_changed(table, 's', 't')} THEN s.state_seen_at "
                             "ELSE t.state_seen_at END",
            "raw": f"CASE WHEN {stub} THEN t.raw ELSE {_with_kept_includable(table, 's', 't')} END"}
    return ", ".join(f"{kept.get(c) or _typed_value(table, c, 's', 't')} AS {c}" for c in _columns(table))


def _sql(table: str, replace: bool = False, source: str = "staged", *, stage: bool = False,
         insert: bool = False) -> str:
    """Rows ``(id, deleted, version, j[, seq])`` of ``source`` into ``table`` (upserted, or only inserted:
    ``insert``), or appended to its stage (``stage``: no key, nothing looked up; ``seq`` orders the copies of an
    id)."""
    typed = _typed(table)[0]
    select = ",\n".join([
        "$account AS account_id", "s.id", "s.deleted",
        "s.j AS raw", "s.version",
        "try(to_timestamp(TRY_CAST(s.x[1] AS BIGINT))) AS created",
        "$seen AS first_seen_at", "$seen AS last_seen_at",
        STATE_SEEN.format(seen="$seen", version="s.version") + " AS state_seen_at",
        *(f"{expr} AS {name}" for name, expr in typed.items()),
        *(["s.seq"] if stage else []),
    ])
    target = f"{stage_table(table)} ({', '.join(_columns(table))}, seq)" if stage else \
        f"{table} ({', '.join(_columns(table))})"
    return (
        f"INSERT INTO {target}\n"
        f"SELECT {select}\nFROM ("
        + typed_source(table, f"(SELECT id, deleted, version, CAST(j AS JSON) AS j{', seq' if stage else ''} "
                              f"FROM {source})", f"id, deleted, version, j{', seq' if stage else ''}") + ") s"
        + ("" if stage or insert else _conflict(table, replace))
    )


def stage_table(table: str) -> str:
    """The key-less table a full listing appends ``table``'s rows to before one merge (:func:`merge_stage`)."""
    return f"sync_stage_{table}"


def create_stages(con: duckdb.DuckDBPyConnection, *, fresh: bool) -> bool:
    """Create the stage tables (``fresh``: emptied first). Returns False when a kept stage does not have its raw
    table's columns any more (the store was migrated since): the listing that filled it must start over."""
    ok = True
    for table in RAW_TABLES:
        name = stage_table(table)
        if fresh:
            con.execute(f"DROP TABLE IF EXISTS {name}")
        else:
            have = [r[0] for r in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = ? AND database_name = "
                "current_database() ORDER BY column_index", [name]).fetchall()]
            if have and have != [*_columns(table), "seq"]:
                ok = False
                con.execute(f"DROP TABLE {name}")
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} AS SELECT {', '.join(_columns(table))}, "
                    f"CAST(0 AS BIGINT) AS seq FROM {table} LIMIT 0")
    return ok


def drop_stages(con: duckdb.DuckDBPyConnection) -> None:
    for table in RAW_TABLES:
        con.execute(f"DROP TABLE IF EXISTS {stage_table(table)}")


def stage_seq(con: duckdb.DuckDBPyConnection) -> int:
    """The highest ``seq`` staged so far (a resumed listing goes on after it)."""
    union = " UNION ALL ".join(f"SELECT max(seq) AS m FROM {stage_table(t)}" for t in RAW_TABLES)
    row = con.execute(f"SELECT coalesce(max(m), 0) FROM ({union})").fetchone()
    return int(row[0]) if row else 0


MERGE_ROWS = 25_000  # staged rows merged per statement at most (DuckDB's memory for the join stays bounded)
# and staged JSON per statement at most, into a table that holds rows of the account already, as a share of
# DuckDB's memory cap (the rows a statement writes are held until it commits: 17,024 invoices, 72 MB of JSON, needed
# more than 80 MB)
MERGE_SHARE = 4  # a part's JSON is at most 1/4 of the cap
_UNITS = {"": 1, "B": 1, "BYTES": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "PIB": 2**50, "EIB": 2**60}


def memory_cap(con: duckdb.DuckDBPyConnection) -> int:
    """DuckDB's memory cap on ``con`` in bytes (``memory_limit``, which DuckDB shows as "152.5 MiB"); 160 MB when
    it shows something else."""
    row = con.execute("SELECT current_setting('memory_limit')").fetchone()
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(row[0] if row else ""))
    if match is None or match.group(2).upper() not in _UNITS:
        return 160 * 10**6
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def merge_stage(con: duckdb.DuckDBPyConnection, table: str, account_id: str) -> int:
    """Move ``table``'s staged rows into it: per id the copy of the highest version, then the latest ``seq``;
    replacing what is stored (a version-0 copy only when none is). Set-based, in parts of at most ``MERGE_ROWS``
    rows (and, when the table holds rows of the account, of JSON a ``MERGE_SHARE`` of DuckDB's memory cap), each in
    its own transaction with the deletion of the rows it moved (a merge cut short is simply run again). A plain
    INSERT when the table holds nothing of the account: no lookup at all. Otherwise the stored rows a part replaces
    are deleted and inserted anew (:func:`_replacing`), and its new ids inserted: an upsert (``ON CONFLICT``)
    holds every replaced value, old and new, in memory until it commits (a re-list of 17,394 invoices and 3,730
    events needed more than the sync's 160 MB, and updating the events' nested ``sub_state`` took 9 s). Returns
    the number of rows merged."""
    stage = stage_table(table)
    row = con.execute(f"SELECT count(*) FROM {stage}").fetchone()
    total = int(row[0]) if row else 0
    if not total:
        return 0
    parts = -(-total // MERGE_ROWS)
    cols = ", ".join(_columns(table))
    # the parts hold disjoint ids: what one part inserted never meets the next
    row = con.execute(f"SELECT count(*) FROM {table} WHERE account_id = ?", [account_id]).fetchone()
    empty = not (row and row[0])
    if not empty:
        row = con.execute(f"SELECT coalesce(sum(strlen(CAST(raw AS VARCHAR))), 0) FROM {stage}").fetchone()
        parts = max(parts, -(-int(row[0] if row else 0) * MERGE_SHARE // memory_cap(con)))
    scratch = f"sync_merging_{table}"
    same = "t.account_id = s.account_id AND t.id = s.id"
    for part in range(parts):
        where = f"WHERE hash(id) % {parts} = {part}" if parts > 1 else ""
        picked = (f"SELECT {cols} FROM {stage} WHERE rowid IN (SELECT arg_max(rowid, (version, seq)) FROM {stage} "
                  f"{where} GROUP BY id)")
        con.execute("BEGIN TRANSACTION")
        try:
            if not empty:
                con.execute(f"CREATE OR REPLACE TABLE {scratch} AS SELECT {_replacing(table)} "
                            f"FROM ({picked}) s JOIN {table} t ON {same} WHERE s.version > 0")
                con.execute(f"DELETE FROM {table} t USING {scratch} s WHERE {same}")
                con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {scratch}")
                con.execute(f"DROP TABLE {scratch}")
            con.execute(f"INSERT INTO {table} ({cols}) {picked}" if empty else
                        f"INSERT INTO {table} ({cols}) SELECT s.* FROM ({picked}) s ANTI JOIN {table} t ON {same}")
            con.execute(f"DELETE FROM {stage} {where}")
            con.execute("COMMIT")
        except BaseException:
            rollback(con)
            raise
    return total


_SQL: dict[tuple[str, bool | str], str] = {}
# Blobs come from orjson, so they are handed over as Arrow's JSON type: DuckDB takes them as JSON without
# parsing each one again to validate it (a full pass over every document).
_JSON = pa.json_(pa.string())


def _is_stub(blob: bytes) -> bool:
    """Whether ``blob`` is a deleted object's stub (``{"id", "object", "deleted": true}``, no ``created``), as
    ``_STUB`` tells one in SQL."""
    obj = orjson.loads(blob)  # (only for a deleted copy meeting another of its id: seldom)
    return isinstance(obj, dict) and obj.get("deleted") is True and obj.get("created") is None


def json_bytes(obj: Any) -> bytes:
    """``obj`` as compact JSON: orjson's, or the standard library's for what orjson will not write (an object
    nested deeper than its 254 levels, which Stripe's own objects never are but a metadata value sent as text and
    kept as sent can be; an integer beyond 64 bits)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


class Staged:
    """Rows for one raw table, serialised as they arrive (compact while queued); the last copy of an id wins
    unless an earlier one has a higher version."""

    __slots__ = ("_at", "blobs", "flags", "ids", "versions")

    def __init__(self) -> None:
        self._at: dict[str, int] = {}
        self.ids: list[str] = []
        self.flags: list[bool] = []
        self.versions: list[int] = []
        self.blobs: list[bytes] = []

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, obj: dict[str, Any], version: int, deleted: bool | None = None) -> None:
        self.add_blob(str(obj["id"]), json_bytes(obj),
                      version, bool(obj.get("deleted", False)) if deleted is None else deleted)

    def add_blob(self, oid: str, blob: bytes, version: int, deleted: bool) -> None:
        at = self._at.get(oid)
        if at is not None:
            if version >= self.versions[at]:
                # a stub (a deleted object retrieved after its deletion event) only flags the copy before it, as
                # the upsert does with a stored one: the event's last full state is kept
                if not (deleted and _is_stub(blob) and not _is_stub(self.blobs[at])):
                    self.blobs[at] = blob
                self.flags[at], self.versions[at] = deleted, version
            return
        self._at[oid] = len(self.ids)
        self.ids.append(oid)
        self.flags.append(deleted)
        self.versions.append(version)
        self.blobs.append(blob)

    def extend(self, other: Staged) -> None:
        if self._at.keys().isdisjoint(other._at):  # the usual case (pages of a listing): list copies, no lookups
            self._at.update(zip(other.ids, range(len(self.ids), len(self.ids) + len(other.ids)), strict=True))
            self.ids.extend(other.ids)
            self.flags.extend(other.flags)
            self.versions.extend(other.versions)
            self.blobs.extend(other.blobs)
            return
        for i, oid in enumerate(other.ids):
            self.add_blob(oid, other.blobs[i], other.versions[i], other.flags[i])


def upsert_staged(con: duckdb.DuckDBPyConnection, table: str, account_id: str, rows: Staged, seen_at: datetime,
                  *, replace: bool = False, stage_seq: int | None = None) -> int:
    """Upsert staged rows into a raw table in one statement; returns the number of rows given.

    ``replace``: the rows win whatever the stored version (a full sync's listing is the truth of its moment,
    even against a store filled from another timeline); otherwise an older copy never replaces a newer one.
    ``stage_seq``: append the rows to the table's stage instead, in that order (see :func:`merge_stage`).
    """
    if table not in RAW_TABLES:
        raise ValueError(f"not a raw table: {table}")
    if not rows.ids:
        return 0
    staged = pa.table({"id": pa.array(rows.ids, pa.string()), "deleted": pa.array(rows.flags, pa.bool_()),
                       "version": pa.array(rows.versions, pa.int64()), "j": pa.array(rows.blobs, _JSON),
                       "seq": pa.array([stage_seq or 0] * len(rows.ids), pa.int64())})
    key = (table, "stage" if stage_seq is not None else replace)
    sql = _SQL.get(key) or _SQL.setdefault(key, _sql(table, replace, stage=stage_seq is not None))
    con.register("staged", staged)
    try:
        con.execute(sql, {"account": account_id, "seen": seen_at.astimezone(UTC)})
    finally:
        with contextlib.suppress(duckdb.Error):  # in an aborted transaction: keep the statement's own error
            con.unregister("staged")
    return len(rows.ids)


def insert_staged(con: duckdb.DuckDBPyConnection, table: str, account_id: str, rows: Staged,
                  seen_at: datetime) -> int:
    """Insert staged rows that are not stored yet (``duckdb.ConstraintException`` when one is), nothing looked up.

    DuckDB runs an upsert (``ON CONFLICT``) as a join with the whole table: for a full sync's first listing,
    page after page, that cost would grow with the store.
    """
    if not rows.ids:
        return 0
    staged = pa.table({"id": pa.array(rows.ids, pa.string()), "deleted": pa.array(rows.flags, pa.bool_()),
                       "version": pa.array(rows.versions, pa.int64()), "j": pa.array(rows.blobs, _JSON)})
    sql = _SQL.get((table, "insert")) or _SQL.setdefault((table, "insert"), _sql(table, insert=True))
    con.register("staged", staged)
    try:
        con.execute(sql, {"account": account_id, "seen": seen_at.astimezone(UTC)})
    finally:
        with contextlib.suppress(duckdb.Error):
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
    if not rows.ids:
        return 0
    held = con.execute(f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE account_id = ? LIMIT 1)",
                       [account_id]).fetchall()[0][0]
    # (into a table that holds no row of the account nothing can conflict: inserted, as a first full listing is,
    # the same rows at about a third of an upsert's cost, which DuckDB plans as a join with the table)
    return (upsert_staged if held else insert_staged)(con, table, account_id, rows, seen_at)


def mark_missing_children(con: duckdb.DuckDBPyConnection, table: str, parent_column: str, account_id: str,
                          parents: Sequence[tuple[str, Sequence[str], int]], seen_at: datetime,
                          *, extra: str = "") -> None:
    """Flag as deleted the children of each parent missing from its complete list.

    ``parents``: (parent id, ids of the children it has now, version of that list), oldest first. Only rows not
    newer than the list are touched. ``extra`` narrows the rows (for example customer-level discounts only).
    A parent's newest list alone counts: an older one (an earlier event's) says nothing of children added
    since, and with equal versions (events in the same second: Stripe's ``created`` is whole seconds) it would
    mark them deleted; of lists with equal versions the later one is the newer.
    """
    newest: dict[str, tuple[str, Sequence[str], int]] = {}
    for parent in parents:
        if parent[0] not in newest or int(parent[2]) >= int(newest[parent[0]][2]):
            newest[parent[0]] = parent
    parents = list(newest.values())
    if not parents:
        return
    staged = pa.table({"parent": pa.array([p[0] for p in parents], pa.string()),
                       "ids": pa.array([list(p[1]) for p in parents], pa.list_(pa.string())),
                       "v": pa.array([int(p[2]) for p in parents], pa.int64())})
    con.register("staged_parents", staged)
    try:
        con.execute(
            f"UPDATE {table} SET deleted = true, version = p.v, last_seen_at = $seen, "
            f"state_seen_at = {STATE_SEEN.format(seen='$seen', version='p.v')} FROM staged_parents p "
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
                           seen_at: datetime, server_time: int | None = None) -> None:
    """After a full listing: flag as deleted the children no longer on their parent. Items and lines: not listed
    since ``since`` while their parent was (its list is complete) or is deleted. Discounts: not on the
    current copy of the subscription or customer they belong to (a discount also kept from an invoice that
    billed it is no longer on its subscription once it ended), or their owner is deleted; their version becomes
    ``server_time`` (Stripe's clock at the listing's end) when higher: with no event to date its end, a discount
    went when the sync found it gone, and ``seen_at`` is this machine's clock, which may run behind Stripe's (a
    removed discount never comes back, so no later copy is kept out). One statement per relation, not per page."""
    params = {"a": account_id, "since": since, "seen": seen_at}
    for child, col, parent in _CHILDREN:
        con.execute(
            f"UPDATE {child} c SET deleted = true, last_seen_at = $seen, "
            f"state_seen_at = {STATE_SEEN.format(seen='$seen', version='c.version')} WHERE c.account_id = $a AND NOT c.deleted "
            f"AND c.last_seen_at < $since AND c.{col} IN (SELECT p.id FROM {parent} p "
            "WHERE p.account_id = $a AND (p.deleted OR p.last_seen_at >= $since))", params)
    mark_unlisted_discounts(con, account_id, since, seen_at, server_time)


def mark_unlisted_discounts(con: duckdb.DuckDBPyConnection, account_id: str, since: datetime, seen_at: datetime,
                            server_time: int | None = None, whole: bool = True) -> None:
    """Flag as deleted the discounts no longer on their owner (a subscription, one item of it, a customer) as
    seen since ``since``. ``whole``: after a full listing (every owner listed; a discount of a subscription listed
    again on an item not listed with it went with the item, and a deleted owner's are gone); otherwise after an
    incremental sync, only those whose owner itself was seen since, in full: a discount taken off one item by an
    update has no event of its own, and a full listing may be months away. Their version becomes ``server_time``
    when higher (see :func:`mark_unlisted_children`)."""
    gone = ("deleted = true, last_seen_at = $seen, version = greatest(version, coalesce($v, version)), state_seen_at = "
            + STATE_SEEN.format(seen="$seen", version="greatest(version, coalesce($v, version))"))
    gone_params = {"a": account_id, "since": since, "seen": seen_at, "v": server_time}
    owner_seen = "(p.deleted OR p.last_seen_at >= $since)" if whole else "p.last_seen_at >= $since"
    # Which discounts each listed owner still has, as (owner, discount) pairs joined by equality: a test of each
    # discount against its owner's JSON would compare every discount with every owner (hours at a million). A
    # subscription's own discounts are kept by its JSON, a discount on one item by its item's (listed again).
    for on_item, owner_col, owners in ((False, "subscription_id", "subscriptions"),
                                       (True, "subscription_item_id", "subscription_items")):
        item_seen = ("" if whole or not on_item else
                     " AND c.subscription_item_id IN (SELECT p.id FROM subscription_items p WHERE p.account_id = $a "
                     "AND NOT p.deleted AND p.last_seen_at >= $since)")
        con.execute(
            f"UPDATE discounts c SET {gone} WHERE c.account_id = $a AND NOT c.deleted "
            f"AND c.subscription_item_id IS {'NOT ' if on_item else ''}NULL AND c.subscription_id IN ("
            f"SELECT p.id FROM subscriptions p WHERE p.account_id = $a AND {owner_seen}){item_seen} "
            "AND NOT EXISTS (SELECT 1 FROM (SELECT p.id AS owner, unnest(coalesce(list_concat("
            "json_extract_string(p.raw, '$.discounts[*].id'), json_extract_string(p.raw, '$.discounts[*]')), [])) "
            f"AS kept FROM {owners} p WHERE p.account_id = $a AND NOT p.deleted AND p.last_seen_at >= $since) k "
            f"WHERE k.owner = c.{owner_col} AND k.kept = c.id)",
            gone_params)
    con.execute(
        f"UPDATE discounts c SET {gone} WHERE c.account_id = $a AND NOT c.deleted "
        "AND c.subscription_id IS NULL AND c.customer_id IN (SELECT p.id FROM customers p WHERE p.account_id = $a "
        f"AND {owner_seen}) AND NOT EXISTS (SELECT 1 FROM (SELECT p.id AS owner, "
        "coalesce(p.raw->>'$.discount.id', p.raw->>'$.discount', '') AS kept FROM customers p "
        "WHERE p.account_id = $a AND NOT p.deleted AND p.last_seen_at >= $since) k "
        "WHERE k.owner = c.customer_id AND k.kept = c.id)",
        gone_params)


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


def load_simulation(con: duckdb.DuckDBPyConnection, sim: Any, every_event: bool = False) -> None:
    """Every object of a sandbox ``Simulation`` straight into the store (no HTTP), in one transaction: its events of
    the last 30 days, as a first sync finds them, or with ``every_event`` all of them, as a store synced since the
    account began keeps them."""
    from stripe_churn.sandbox.fx import rate_rows

    seen = datetime.fromtimestamp(int(sim.clock), UTC)
    acct = sim.account_id
    con.execute("BEGIN TRANSACTION")
    try:
        for resource in ("customers", "products", "prices", "coupons", "subscriptions", "invoices", "credit_notes"):
            objs = list(sim.objects.get(resource, {}).values())
            upsert_objects(con, resource, acct, objs, seen)
        items = [it for s in sim.objects.get("subscriptions", {}).values() if not s.get("deleted")
                 for it in (s.get("items") or {}).get("data") or []]
        upsert_objects(con, "subscription_items", acct, items, seen)
        lines = [ln for inv in sim.objects.get("invoices", {}).values() if not inv.get("deleted")
                 for ln in (inv.get("lines") or {}).get("data") or []]
        upsert_objects(con, "invoice_lines", acct, lines, seen)
        upsert_objects(con, "discounts", acct, list(getattr(sim, "discounts", {}).values()), seen)
        # pending and billed alike (a simulation made without deferred prorations has none)
        upsert_objects(con, "invoice_items", acct, list(sim.objects.get("invoiceitems", {}).values()), seen)
        oldest = 0 if every_event else int(sim.clock) - 30 * 86400
        upsert_objects(con, "events", acct, [e for e in sim.events if e["created"] >= oldest], seen)
        day = datetime.fromtimestamp(_sim_start(sim), UTC).date().isoformat()
        upsert_fx_rates(con, rate_rows(sim, day))
        con.execute("COMMIT")
    except BaseException:
        rollback(con)
        raise
    log.info("simulation %s loaded into the store", acct)
