"""The sync engine: Stripe -> raw tables, full (parallel ``created`` slices) or incremental (events).

Cursors (table ``sync_cursors``, one row per account and stream, committed in the same transaction as the
rows they cover):

- ``events``: the newest event applied (``value`` = event id, ``created`` = its time). Starts unset (a
  full sync runs). An incremental sync lists ``/v1/events?ending_before=<id>`` page by page (each page the
  events just after the cursor; applied oldest first) and moves the cursor to the newest event of each page,
  so the boundary is never applied twice. When the cursor event is no longer retained (Stripe keeps 30
  days) there is a gap: the sync falls back to a full re-list (``mode='fallback'``).
- ``full``: present while a full sync is under way; ``value`` = the newest event id when it started (the
  ``events`` cursor once it completes), ``created`` = that event's time, used as the version of listed
  objects. Removed when the full sync completes.
- ``full:<stream>:<lo>:<hi>``: one per ``created`` slice of a full sync; ``value`` = the last id paged
  (``starting_after``), ``done`` once the slice is exhausted. A killed full sync resumes from these.

Versions: an object from a list carries the version of the sync's start event (Stripe's clock), one from an
event carries the event's ``created``; :func:`upsert_objects` never lets a lower version replace a higher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import orjson

from stripe_churn.errors import StripeChurnError
from stripe_churn.settings import Settings
from stripe_churn.store.db import open_store
from stripe_churn.store.load import mark_missing_children, upsert_fx_rates, upsert_objects
from stripe_churn.stripe_api.client import NotFoundError, StripeRaw
from stripe_churn.stripe_api.streams import (
    DELETABLE,
    OBJECT_TABLE,
    PAGE_LIMIT,
    RETRIEVE_PARAMS,
    RETRIEVE_PATH,
    STREAMS,
    Stream,
    slice_count,
    split_range,
)

log = logging.getLogger(__name__)

DAY = 86400


@dataclass
class SyncResult:
    """What one sync run did."""

    run_id: str
    mode: str  # "full" | "incremental" | "fallback"
    status: str  # "succeeded" | "failed" | "stopped"
    counts: dict[str, int] = field(default_factory=dict)
    fallback_reason: str | None = None
    error: str | None = None
    requests: int = 0
    account_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass
class Batch:
    """Rows of one page (with its children) and the cursor that covers them: one transaction."""

    rows: dict[str, list[tuple[dict[str, Any], int, bool | None]]] = field(default_factory=lambda: defaultdict(list))
    # table -> [(parent id, present child ids, version)] with the parent column and an extra condition
    children: dict[tuple[str, str, str], list[tuple[str, list[str], int]]] = field(
        default_factory=lambda: defaultdict(list))
    cursor: tuple[str, str | None, int | None, bool] | None = None

    def add(self, table: str, obj: dict[str, Any], version: int, deleted: bool | None = None) -> None:
        self.rows[table].append((obj, version, deleted))

    def size(self) -> int:
        return sum(len(v) for v in self.rows.values())


class _Stopped(Exception):
    pass


class _Progress:
    """Per-table counters, shown as rich bars on a terminal or as periodic log lines otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.counts: dict[str, int] = defaultdict(int)
        self._rich: Any = None
        self._tasks: dict[str, Any] = {}
        self._last_log = time.monotonic()
        if enabled and sys.stderr.isatty():
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._rich = Progress(SpinnerColumn(), TextColumn("{task.description:<20}"),
                                  TextColumn("{task.completed:>10,} objects"), TimeElapsedColumn(), transient=False)
            self._rich.start()
        self.enabled = enabled

    def add(self, table: str, n: int) -> None:
        self.counts[table] += n
        if self._rich is not None:
            if table not in self._tasks:
                self._tasks[table] = self._rich.add_task(table, total=None)
            self._rich.update(self._tasks[table], completed=self.counts[table])
        elif self.enabled and time.monotonic() - self._last_log > 5.0:
            self._last_log = time.monotonic()
            log.info("sync progress: %s", ", ".join(f"{t} {c}" for t, c in sorted(self.counts.items())))

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()


class _Sync:
    def __init__(self, settings: Settings, con: duckdb.DuckDBPyConnection, progress: bool,
                 stop: threading.Event | None) -> None:
        self.settings = settings
        self.con = con
        self.stop = stop or threading.Event()
        self.progress = _Progress(progress)
        self.run_id = uuid.uuid4().hex[:16]
        self.started = datetime.now(UTC)
        self.full_started = self.started
        self.account = ""
        self.api: StripeRaw | None = None
        self.queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=16)  # bounds memory: pages in flight
        self.write_error: BaseException | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._db_lock = threading.Lock()  # one DuckDB call at a time (writer thread and everything else)

    async def _db(self, fn: Any, *args: Any) -> Any:
        """Run a database function off the event loop, serialised with the writer."""
        def locked() -> Any:
            with self._db_lock:
                return fn(*args)
        return await asyncio.to_thread(locked)

    # ------------------------------------------------------------------ database (writer thread)
    def _now(self) -> datetime:
        return datetime.now(UTC)

    def _apply(self, batches: list[Batch]) -> None:
        con = self.con
        seen = self._now()
        con.execute("BEGIN TRANSACTION")
        try:
            for b in batches:
                for table, rows in b.rows.items():
                    if not rows:
                        continue
                    flags = [r[2] if r[2] is not None else bool(r[0].get("deleted", False)) for r in rows]
                    upsert_objects(con, table, self.account, [r[0] for r in rows], seen,
                                   versions=[r[1] for r in rows], deleted=flags)
                for (table, col, extra), parents in b.children.items():
                    mark_missing_children(con, table, col, self.account, parents, seen, extra=extra)
                if b.cursor is not None:
                    stream, value, created, done = b.cursor
                    self._set_cursor(stream, value, created, done)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        for b in batches:
            for table, rows in b.rows.items():
                self.progress.add(table, len(rows))

    def _set_cursor(self, stream: str, value: str | None, created: int | None, done: bool) -> None:
        self.con.execute(
            "INSERT INTO sync_cursors (account_id, stream, value, created, done, run_id, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (account_id, stream) DO UPDATE SET value = excluded.value, "
            "created = excluded.created, done = excluded.done, run_id = excluded.run_id, "
            "updated_at = excluded.updated_at",
            [self.account, stream, value, created, done, self.run_id, self._now()])

    def _cursors(self) -> dict[str, tuple[str | None, int | None, bool]]:
        rows = self.con.execute("SELECT stream, value, created, done FROM sync_cursors WHERE account_id = ?",
                                [self.account]).fetchall()
        return {r[0]: (r[1], r[2], bool(r[3])) for r in rows}

    async def _writer(self) -> None:
        """Drain the queue, several pages per transaction when they pile up."""
        while True:
            first = await self.queue.get()
            if first is None:
                return
            batches = [first]
            end = False
            while len(batches) < 32 and sum(b.size() for b in batches) < 5000:
                try:
                    nxt = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is None:
                    end = True
                    break
                batches.append(nxt)
            try:
                await self._db(self._apply, batches)
            except BaseException as exc:  # surfaced by _flush; keep draining so producers never block
                self.write_error = self.write_error or exc
            if end:
                return

    async def _put(self, batch: Batch) -> None:
        if self.write_error is not None:
            raise self.write_error
        await self.queue.put(batch)

    # ------------------------------------------------------------------ shaping pages into batches
    async def _sub_items(self, sub: dict[str, Any]) -> list[dict[str, Any]]:
        items = sub.get("items") or {}
        data = list(items.get("data") or [])
        if items.get("has_more"):
            data = await self._page_all("/v1/subscription_items", {"subscription": sub["id"]})
        return data

    async def _invoice_lines(self, inv: dict[str, Any]) -> list[dict[str, Any]]:
        lines = inv.get("lines") or {}
        data = list(lines.get("data") or [])
        if lines.get("has_more"):
            data = await self._page_all(f"/v1/invoices/{inv['id']}/lines", {})
        return data

    async def _page_all(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        assert self.api is not None
        out: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            page = await self.api.get(path, {**params, "limit": PAGE_LIMIT, "starting_after": after})
            data = page.get("data") or []
            out.extend(data)
            if not page.get("has_more") or not data:
                return out
            after = data[-1]["id"]

    async def _add_object(self, batch: Batch, table: str, obj: dict[str, Any], version: int,
                          deleted: bool | None = None) -> None:
        """An object and what hangs off it (items, lines, discounts) into the batch."""
        batch.add(table, obj, version, deleted)
        if deleted or obj.get("deleted"):
            return
        if table == "subscriptions":
            items = await self._sub_items(obj)
            for it in items:
                it.setdefault("subscription", obj["id"])
                batch.add("subscription_items", it, version)
            batch.children[("subscription_items", "subscription_id", "")].append(
                (obj["id"], [it["id"] for it in items], version))
            discounts = obj.get("discounts") or []
            for d in discounts:
                if isinstance(d, dict):
                    batch.add("discounts", d, version)
            batch.children[("discounts", "subscription_id", "")].append(
                (obj["id"], [d["id"] if isinstance(d, dict) else str(d) for d in discounts], version))
            for it in items:
                for d in it.get("discounts") or []:
                    if isinstance(d, dict):
                        batch.add("discounts", d, version)
        elif table == "invoices":
            lines = await self._invoice_lines(obj)
            for ln in lines:
                ln.setdefault("invoice", obj["id"])
                batch.add("invoice_lines", ln, version)
            batch.children[("invoice_lines", "invoice_id", "")].append(
                (obj["id"], [ln["id"] for ln in lines], version))
        elif table == "customers":
            disc = obj.get("discount")
            if isinstance(disc, dict):
                batch.add("discounts", disc, version)
            if "discount" in obj:
                keep = [disc["id"]] if isinstance(disc, dict) else []
                batch.children[("discounts", "customer_id", "AND discounts.subscription_id IS NULL")].append(
                    (obj["id"], keep, version))

    # ------------------------------------------------------------------ full sync
    async def _probe(self, stream: Stream, created: dict[str, int] | None = None) -> dict[str, Any]:
        assert self.api is not None
        return await self.api.get(stream.path, {**stream.params, "limit": 1, "created": created})

    async def _oldest(self, stream: Stream, hi: int) -> int:
        """The oldest ``created`` of a stream, by probing ``created[lt]`` (day steps, then bisection)."""
        step, lo_known = DAY, hi
        while True:  # find a bound below which nothing exists
            page = await self._probe(stream, {"lt": hi - step})
            if not page.get("data"):
                break
            lo_known = int(page["data"][0]["created"])
            step *= 4
            if step > 40 * 365 * DAY:
                return 0
        lo, upper = hi - step, lo_known  # oldest is in [lo, upper]
        while upper - lo > DAY:
            mid = (lo + upper) // 2
            page = await self._probe(stream, {"lt": mid})
            if page.get("data"):
                upper = min(upper, int(page["data"][0]["created"]))
            else:
                lo = mid
        return max(lo, 0)

    async def _plan(self, stream: Stream, version: int, n_streams: int) -> list[tuple[int, int]] | None:
        """Slices for a stream, or None when its first page was the whole stream (stored right away)."""
        assert self.api is not None
        page = await self.api.get(stream.path, {**stream.params, "limit": PAGE_LIMIT})
        data = page.get("data") or []
        if not page.get("has_more"):
            batch = Batch()
            for obj in data:
                await self._add_object(batch, stream.table, obj, version)
            batch.cursor = (f"full:{stream.name}:0:0", data[-1]["id"] if data else None, 0, True)
            await self._put(batch)
            return None
        hi = int(data[0]["created"]) + 1
        lo = await self._oldest(stream, hi)
        n = slice_count(self.api.limiter.target, self.api.latency_s, streams=n_streams)
        return split_range(lo, hi, n)

    async def _run_slice(self, stream: Stream, lo: int, hi: int, after: str | None, version: int) -> None:
        assert self.api is not None
        name = f"full:{stream.name}:{lo}:{hi}"
        while True:
            if self.stop.is_set():
                raise _Stopped
            page = await self.api.get(stream.path, {**stream.params, "limit": PAGE_LIMIT, "starting_after": after,
                                                    "created": {"gte": lo, "lte": hi}})
            data = page.get("data") or []
            batch = Batch()
            for obj in data:
                await self._add_object(batch, stream.table, obj, version)
            done = not page.get("has_more") or not data
            after = data[-1]["id"] if data else after
            batch.cursor = (name, after, lo, done)
            await self._put(batch)
            if done:
                return

    async def _full(self, mode: str) -> None:
        assert self.api is not None
        cursors = await self._db(self._cursors)
        had_rows = await self._db(self._has_rows)
        if "full" in cursors and mode == "full":
            start_evt, version_o, _ = cursors["full"]
            version = int(version_o or 0)
            # objects the interrupted attempts listed count as seen by this full sync (no retrieve each)
            self.full_started = await self._db(self._full_started) or self.started
            log.info("resuming the unfinished full sync (%d slice cursors)",
                     sum(1 for k in cursors if k.startswith("full:")))
        else:
            await self._db(self._clear_full)
            cursors = {}
            newest = await self.api.get("/v1/events", {"limit": 1})
            evs = newest.get("data") or []
            start_evt = evs[0]["id"] if evs else None
            version = int(evs[0]["created"]) if evs else int(time.time())
            await self._db(self._commit_cursor, "full", start_evt, version, False)

        slices: list[tuple[Stream, int, int, str | None]] = []
        planned = {k for k in cursors if k.startswith("full:")}
        if planned:
            by_name = {s.name: s for s in STREAMS}
            for key in planned:
                _, sname, lo, hi = key.split(":")
                value, _, done = cursors[key]
                if not done and sname in by_name and not (lo == "0" and hi == "0"):
                    slices.append((by_name[sname], int(lo), int(hi), value))
                elif not done and sname in by_name:
                    plan = await self._plan(by_name[sname], version, 1)
                    slices.extend((by_name[sname], a, b, None) for a, b in plan or [])
            # streams that never got planned before the interruption
            seen_streams = {k.split(":")[1] for k in planned}
            todo = [s for s in STREAMS if s.name not in seen_streams]
        else:
            todo = list(STREAMS)
        # only the big streams (customers, subscriptions, invoices, events) need slices: share the rate among 4
        plans = await asyncio.gather(*(self._plan(s, version, 4) for s in todo))
        for s, plan in zip(todo, plans, strict=True):
            if plan is None:
                continue
            await self._db(self._commit_slices, s, plan)
            slices.extend((s, a, b, None) for a, b in plan)
        log.info("full sync: %d slices over %d streams", len(slices), len({s[0].name for s in slices}))
        await asyncio.gather(*(self._run_slice(s, a, b, after, version) for s, a, b, after in slices))
        await self._test_clocks(version)
        await self._flush()
        if had_rows:
            await self._check_missing(version)
        await self._fx_rates()
        cur = await self._db(self._cursors)
        start_evt = cur.get("full", (start_evt, version, False))[0]
        await self._db(self._finish_full, start_evt, version)

    def _has_rows(self) -> bool:
        row = self.con.execute("SELECT count(*) FROM customers WHERE account_id = ?", [self.account]).fetchone()
        return bool(row and row[0])

    def _clear_full(self) -> None:
        self.con.execute("DELETE FROM sync_cursors WHERE account_id = ? AND (stream = 'full' OR stream LIKE 'full:%')",
                         [self.account])

    def _commit_cursor(self, stream: str, value: str | None, created: int | None, done: bool) -> None:
        self._set_cursor(stream, value, created, done)

    def _commit_slices(self, stream: Stream, plan: list[tuple[int, int]]) -> None:
        self.con.execute("BEGIN TRANSACTION")
        for lo, hi in plan:
            self._set_cursor(f"full:{stream.name}:{lo}:{hi}", None, lo, False)
        self.con.execute("COMMIT")

    def _finish_full(self, start_evt: str | None, version: int) -> None:
        self.con.execute("BEGIN TRANSACTION")
        self._clear_full()
        self._set_cursor("events", start_evt, version, False)
        self.con.execute("COMMIT")

    async def _flush(self) -> None:
        """Wait until every queued batch is committed (restarting the writer afterwards)."""
        await self.queue.put(None)
        if self._writer_task is not None:
            await self._writer_task
        if self.write_error is not None:
            raise self.write_error
        self._writer_task = asyncio.create_task(self._writer())

    async def _test_clocks(self, version: int) -> None:
        """Objects on test clocks are left out of lists; list them per clock (test mode only)."""
        assert self.api is not None
        if self.settings.is_live_key:
            return
        try:
            clocks = await self._page_all("/v1/test_helpers/test_clocks", {})
        except NotFoundError:
            log.debug("no test clocks endpoint; objects on test clocks (if any) are not listed")
            return
        except StripeChurnError as exc:
            log.warning("test clocks could not be listed (%s); objects on test clocks are not synced", exc)
            return
        for clock in clocks:
            for s in STREAMS:
                if s.table in ("customers", "subscriptions"):
                    objs = await self._page_all(s.path, {**s.params, "test_clock": clock["id"]})
                    batch = Batch()
                    for obj in objs:
                        await self._add_object(batch, s.table, obj, version)
                    await self._put(batch)

    def _full_started(self) -> datetime | None:
        """When the unfinished full sync began (its ``full`` cursor is written once, at the start)."""
        row = self.con.execute("SELECT updated_at FROM sync_cursors WHERE account_id = ? AND stream = 'full'",
                               [self.account]).fetchone()
        return row[0] if row else None

    def _unseen(self) -> list[tuple[str, str]]:
        """(table, id) of stored objects not seen since this full sync started (across resumed attempts)."""
        out: list[tuple[str, str]] = []
        for table in RETRIEVE_PATH:
            out.extend((table, r[0]) for r in self.con.execute(
                f"SELECT id FROM {table} WHERE account_id = ? AND NOT deleted AND last_seen_at < ?",
                [self.account, self.full_started]).fetchall())
        return out

    async def _check_missing(self, version: int) -> None:
        """Objects stored before this run but not listed now: retrieve each; gone ones become deleted."""
        unseen = await self._db(self._unseen)
        if not unseen:
            return
        log.info("%d stored objects no longer listed: checking each", len(unseen))
        sem = asyncio.Semaphore(16)

        async def one(table: str, oid: str) -> None:
            assert self.api is not None
            async with sem:
                try:
                    obj = await self.api.get(RETRIEVE_PATH[table].format(id=oid),
                                             {"expand": ["discounts"]} if table == "subscriptions" else None)
                except NotFoundError:
                    obj = {"id": oid, "deleted": True}
            batch = Batch()
            await self._add_object(batch, table, obj, version, True if obj.get("deleted") else None)
            await self._put(batch)

        await asyncio.gather(*(one(t, i) for t, i in unseen))
        await self._flush()

    async def _fx_rates(self) -> None:
        """The sandbox serves its exchange rates; real Stripe has none (rates come from elsewhere)."""
        assert self.api is not None
        if "api.stripe.com" in self.api.base:
            return
        try:
            body, status, _ = await self.api._send(f"{self.api.base}/_sandbox/fx_rates")
            if status != 200:
                return
            rows = orjson.loads(body)
        except Exception:
            log.debug("no sandbox exchange rates", exc_info=True)
            return
        await self._db(self._store_fx, [(r["date"], r["currency"], r["rate"]) for r in rows])

    def _store_fx(self, rows: list[tuple[str, str, float]]) -> None:
        self.con.execute("BEGIN TRANSACTION")
        upsert_fx_rates(self.con, rows)
        self.con.execute("COMMIT")

    # ------------------------------------------------------------------ incremental sync
    async def _gap(self, cursor: tuple[str | None, int | None, bool]) -> str | None:
        """Why the events cursor cannot be continued (None when it can)."""
        assert self.api is not None
        value, created, _ = cursor
        if value is None:
            return None
        try:
            await self.api.get(f"/v1/events/{value}")
        except NotFoundError:
            return (f"the last applied event {value} (from "
                    f"{datetime.fromtimestamp(created or 0, UTC):%Y-%m-%d}) is no longer kept by Stripe "
                    "(30-day retention)")
        return None

    async def _incremental(self, cursor: tuple[str | None, int | None, bool]) -> None:
        assert self.api is not None
        value, created, _ = cursor
        if value is None:  # the account had no events at the full sync: take every event, oldest first
            events = await self._page_all("/v1/events", {"created": {"gte": created or 0}})
            events.reverse()
            for i in range(0, len(events), PAGE_LIMIT):
                chunk = events[i:i + PAGE_LIMIT]
                await self._apply_events(chunk, chunk[-1]["id"], int(chunk[-1]["created"]))
            return
        while True:
            if self.stop.is_set():
                raise _Stopped
            page = await self.api.get("/v1/events", {"limit": PAGE_LIMIT, "ending_before": value})
            data = page.get("data") or []
            if not data:
                return
            data.reverse()  # oldest first
            value = data[-1]["id"]
            await self._apply_events(data, value, int(data[-1]["created"]))

    async def _apply_events(self, events: list[dict[str, Any]], last_id: str, last_created: int) -> None:
        """Store a page of events, apply their objects in order, then refresh what they touched.

        An event's object is the state at the event; fields Stripe changes without an event of their own
        (a customer's ``next_invoice_sequence``, a subscription's ``latest_invoice``, a coupon's
        ``times_redeemed``) are caught by retrieving, after the page, each object the page touched and the
        objects an invoice, credit note or discount changes along with it. The refreshed copies carry the
        page's newest event time as version, so they win over the page's events and lose to later ones.
        """
        batch = Batch()
        touched: set[tuple[str, str]] = set()
        for ev in events:
            v = int(ev["created"])
            batch.add("events", ev, v, False)
            obj = (ev.get("data") or {}).get("object")
            if not isinstance(obj, dict) or "id" not in obj:
                continue
            table = OBJECT_TABLE.get(str(obj.get("object")))
            if table is None:
                continue
            gone = table in DELETABLE and str(ev.get("type", "")).endswith(".deleted")
            await self._add_object(batch, table, obj, v, True if gone else None)
            touched.update(_related(table, obj))
        await self._refresh(batch, touched, last_created)
        batch.cursor = ("events", last_id, last_created, False)
        await self._put(batch)

    async def _retrieve(self, table: str, oid: str) -> dict[str, Any]:
        assert self.api is not None
        try:
            return await self.api.get(RETRIEVE_PATH[table].format(id=oid), RETRIEVE_PARAMS.get(table))
        except NotFoundError:
            return {"id": oid, "deleted": True}

    async def _refresh(self, batch: Batch, touched: set[tuple[str, str]], version: int) -> None:
        sem = asyncio.Semaphore(32)

        async def one(table: str, oid: str) -> tuple[str, dict[str, Any]]:
            async with sem:
                return table, await self._retrieve(table, oid)

        got = await asyncio.gather(*(one(t, i) for t, i in sorted(touched)))
        # a discount changes its coupon's times_redeemed: refresh the coupons the refreshed subscriptions use
        coupons = {("coupons", c) for t, o in got if t == "subscriptions" for d in o.get("discounts") or []
                   if isinstance(d, dict) for c in [_ref((d.get("source") or {}).get("coupon") or d.get("coupon"))]
                   if c} - touched
        got += await asyncio.gather(*(one(t, i) for t, i in sorted(coupons)))
        for table, obj in got:
            await self._add_object(batch, table, obj, version, True if obj.get("deleted") else None)

    # ------------------------------------------------------------------ the run
    def _record_start(self, mode: str) -> None:
        self.con.execute("INSERT INTO sync_runs (run_id, account_id, started_at, mode, status) VALUES (?, ?, ?, ?, ?)",
                         [self.run_id, self.account or None, self.started, mode, "running"])

    def _record_end(self, result: SyncResult) -> None:
        self.con.execute(
            "UPDATE sync_runs SET account_id = ?, finished_at = ?, mode = ?, status = ?, counts = ?, requests = ?, "
            "error = ?, fallback_reason = ? WHERE run_id = ?",
            [result.account_id, result.finished_at, result.mode, result.status, orjson.dumps(result.counts).decode(),
             result.requests, result.error, result.fallback_reason, self.run_id])

    async def run(self, full: bool) -> SyncResult:
        result = SyncResult(self.run_id, "full" if full else "incremental", "running", started_at=self.started)
        self._record_start(result.mode)
        self._writer_task = asyncio.create_task(self._writer())
        try:
            async with StripeRaw(self.settings) as api:
                self.api = api
                try:
                    self.account = await api.account_id(self.settings.account)
                    result.account_id = self.account
                    cursors = await self._db(self._cursors)
                    if full or "events" not in cursors or "full" in cursors:
                        result.mode = "full"
                        await self._full("full")
                    else:
                        reason = await self._gap(cursors["events"])
                        if reason:
                            result.mode, result.fallback_reason = "fallback", reason
                            log.warning("incremental sync not possible: %s; re-listing everything instead", reason)
                            await self._full("fallback")
                        else:
                            await self._incremental(cursors["events"])
                    await self._flush()
                    result.status = "succeeded"
                except _Stopped:
                    await self._flush()
                    result.status = "stopped"
                finally:
                    result.requests = api.requests
        except BaseException as exc:
            result.status = "failed"
            result.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            with contextlib.suppress(BaseException):
                await self.queue.put(None)
                if self._writer_task is not None:
                    await asyncio.wait_for(self._writer_task, 30)
            raise
        finally:
            self.progress.close()
            result.counts = dict(self.progress.counts)
            result.finished_at = datetime.now(UTC)
            with contextlib.suppress(Exception), self._db_lock:
                self._record_end(result)
            log.info("sync %s %s (%s): %s; %d requests", result.run_id, result.status, result.mode,
                     ", ".join(f"{t} {c}" for t, c in sorted(result.counts.items())) or "nothing", result.requests)
        return result


def _ref(value: Any) -> str | None:
    if isinstance(value, dict):
        return str(value["id"]) if "id" in value else None
    return str(value) if value else None


def _related(table: str, obj: dict[str, Any]) -> list[tuple[str, str]]:
    """The object itself and the objects Stripe changes along with it, as (table, id) to retrieve again."""
    out: list[tuple[str, str | None]] = []
    if table in RETRIEVE_PATH:
        out.append((table, obj["id"]))
    if table in ("invoices", "credit_notes", "discounts"):
        out.append(("customers", _ref(obj.get("customer"))))
    if table == "invoices":
        parent = (obj.get("parent") or {}).get("subscription_details") or {}
        out.append(("subscriptions", _ref(parent.get("subscription") or obj.get("subscription"))))
    if table == "credit_notes":
        out.append(("invoices", _ref(obj.get("invoice"))))
    if table == "discounts":
        out.append(("subscriptions", _ref(obj.get("subscription"))))
        source = obj.get("source") or {}
        out.append(("coupons", _ref(source.get("coupon") or obj.get("coupon"))))
    return [(t, i) for t, i in out if i]


@contextlib.contextmanager
def _connection(settings: Settings, con: duckdb.DuckDBPyConnection | None) -> Iterator[duckdb.DuckDBPyConnection]:
    if con is not None:
        yield con
        return
    own = open_store(settings.db)
    try:
        yield own
    finally:
        own.close()


def run_sync(settings: Settings, *, full: bool = False, con: duckdb.DuckDBPyConnection | None = None,
             progress: bool = True, stop: threading.Event | None = None) -> SyncResult:
    """Bring the store up to date with Stripe: incremental from the events cursor, or a full re-list."""
    with _connection(settings, con) as db:
        return asyncio.run(_Sync(settings, db, progress, stop).run(full))
