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
- ``mode``: which of the account's modes the store holds (``value`` = ``live`` or ``test``), written by the first
  sync that knows it (a store synced before it was recorded learns it so). With the account id of the cursor rows
  it is the store's identity: one Stripe account in one mode. A sync of another account, or of the other mode
  (a test key and a live key of one account share its id), is refused before anything is written.

Pending invoice items have no cursor: every run, whatever its mode, lists them whole once the rest is done
(:meth:`_Sync._pending_items`), and only a listing that completed marks the stored ones it no longer returned.

Versions: an object from a list carries the version of the sync's start event (Stripe's clock), one from an
event carries the event's ``created``, a pending invoice item the server's time at its listing;
:func:`upsert_objects` never lets a lower version replace a higher.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal
from urllib.parse import quote

import duckdb
import orjson
from msgspec import UNSET

from stripe_churn.errors import BadResponseError, ConfigError, StripeAPIError, StripeChurnError
from stripe_churn.settings import Settings, redact_secrets
from stripe_churn.store.db import open_store, transaction
from stripe_churn.store.fx_file import rates_quoted_in, record_quote
from stripe_churn.store.load import (
    STATE_SEEN,
    Staged,
    create_stages,
    drop_stages,
    insert_staged,
    json_bytes,
    mark_missing_children,
    mark_unlisted_children,
    mark_unlisted_discounts,
    merge_stage,
    stage_seq,
    upsert_fx_rates,
    upsert_staged,
)
from stripe_churn.store.schema import RAW_TABLES
from stripe_churn.stripe_api.client import CursorGoneError, NotFoundError, Stopped, StripeRaw
from stripe_churn.stripe_api.listed import (
    OBJECT_NAMES,
    decode_object,
    head_of,
    is_object,
    parse_json,
)
from stripe_churn.stripe_api.streams import (
    DELETABLE,
    EVENT_RETENTION_S,
    LINE_LIST_PARAMS,
    OBJECT_TABLE,
    PAGE_LIMIT,
    PENDING_ITEMS,
    RETRIEVE_PARAMS,
    RETRIEVE_PATH,
    STREAMS,
    Stream,
    item_list_params,
    slice_count,
)

log = logging.getLogger(__name__)

DAY = 86400
SYNC_MEMORY_MB = 160  # DuckDB's memory during a sync (its cache spills to disk beyond it)
SYNC_MEMORY_MAX_MB = 4096  # how far the cap is raised when a statement needs more than it allows
SYNC_CHECKPOINT = "1GB"  # write-ahead log size that triggers a checkpoint during a sync
EVENTS_COMPLETE = "events:complete"  # ``created``: server time up to which every event was listed
# ``created``: the time from which the stored events have no gap (set when a full listing finds the events last
# complete beyond Stripe's 30-day retention: those in between are lost, and the metrics take history from
# invoices up to the first event after it, and from the item and status changes the events stored before the gap
# show)
EVENTS_UNBROKEN = "events:unbroken"
# Each such gap, kept for good (``status`` lists them): the stream ``events:gap:<unix time>`` of where the stored
# events ended, ``created`` where the unbroken ones begin
EVENTS_GAP = "events:gap:"
# What a full listing asks Stripe for (the lists, their expand[] and the objects fetched beside them), as a number
# raised whenever that grows: the ``listing`` cursor's ``value`` says which one listed the stored objects (written
# when a full listing completes; ``full:listing``, which one an unfinished listing began). A store listed by an older
# one lacks what only a listing fetches (an invoice's expanded discounts, a coupon's applies_to, a price's
# currency_options), which no event of an incremental sync brings back: its next sync lists everything once more.
LISTING = "listing"
FULL_LISTING = f"full:{LISTING}"
LISTING_VERSION = "2"
# sync_runs.error of a run interrupted by Ctrl-C: every page is committed with its cursor (full listing: the slice
# cursors; incremental: the events cursor), so the next run goes on from there
INTERRUPTED = "interrupted (Ctrl-C); the next sync resumes from the stored cursors"
# ... and of one stopped so by a terminate signal (a service manager stopping `sync`, `kill`, `timeout`)
TERMINATED = "terminated (SIGTERM); the next sync resumes from the stored cursors"
# (a run left `running` by a process that died: the next sync records it so, and `status` shows it so before that)
ENDED_UNRECORDED = "ended without recording its end (its process was killed, or the machine stopped)"
# ``value``: the mode of the account's objects the store holds, ``live`` or ``test`` (see the module's docstring)
STORE_MODE = "mode"
EVENT_GROUP = 500  # events applied (and their objects refreshed) together
# invoices whose lines a run remembers it paged whole for a finalized copy (_Sync._final_lines), the oldest forgotten
# first: an invoice's events come close together, in one group or the next; one forgotten is paged again, no harm
FINAL_LINES_KEPT = 10_000
# an invoice's statuses once finalized, after which its lines never change (a draft's lines may)
FINALIZED = frozenset({"open", "paid", "uncollectible", "void"})
CURSOR_RESTARTS = 3  # times a whole list (items, lines, pending items) is paged again when Stripe drops its cursor
CHECK_EACH_MAX = 250  # unlisted stored objects retrieved one by one at most (more are flagged at once)
QUEUE_PAGES = 28  # pages waiting for the writer (serialised: ~0.5 MB each at most), enough for TX_OBJECTS
TX_OBJECTS = 6_000  # objects per write transaction at most (DuckDB holds a transaction in memory; each
# transaction binds one insert per table again, about 25 ms in all: 3,000 gave 9.2k objects/s, 6,000 10-11k)
OPTION_TIERS_PER_CALL = 10  # currency options whose tiers one retrieve of a price expands
_CURSOR_SQL = (
    "INSERT INTO sync_cursors (account_id, stream, value, created, done, run_id, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (account_id, stream) DO UPDATE SET value = excluded.value, "
    "created = excluded.created, done = excluded.done, run_id = excluded.run_id, updated_at = excluded.updated_at")


# Objects no listing returns and only their deletion event carries (within Stripe's event window), by table: a
# discount added and removed between two invoices is on no subscription, item, customer or invoice any more; a
# coupon deleted while discounts made from it still run is neither listed nor retrievable, and those discounts
# name it by id.
_GONE_BY_EVENT = {"discounts": "customer.discount.deleted", "coupons": "coupon.deleted"}


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
    """Rows of one page (with its children) and the cursors that cover them: committed in one transaction.

    Objects are serialised as they are added (``Staged``), so a queued page holds compact JSON strings, not
    the parsed dicts.
    """

    rows: dict[str, Staged] = field(default_factory=lambda: defaultdict(Staged))
    # table -> [(parent id, present child ids, version)] with the parent column and an extra condition
    children: dict[tuple[str, str, str], list[tuple[str, list[str], int]]] = field(
        default_factory=lambda: defaultdict(list))
    cursors: list[tuple[str, str | None, int | None, bool]] = field(default_factory=list)

    def add(self, table: str, obj: dict[str, Any], version: int, deleted: bool | None = None) -> None:
        self.rows[table].add(obj, version, deleted)

    def add_raw(self, table: str, oid: str, blob: bytes, version: int, deleted: bool) -> None:
        """An object given as its JSON bytes (compact) and id."""
        self.rows[table].add_blob(oid, blob, version, deleted)

    def size(self) -> int:
        return sum(len(v) for v in self.rows.values())


class _Malformed(Exception):
    """An object of an answer is not of the shape the sync reads (the message says what): turned into a
    :class:`BadResponseError` naming the request by :func:`_answer_of`."""


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _options_without_tiers(price: dict[str, Any]) -> list[str]:
    """The currencies, other than its own, of a tiered price's options that came without their tiers."""
    options = price.get("currency_options")
    if price.get("billing_scheme") != "tiered" or not isinstance(options, dict):
        return []
    own = str(price.get("currency") or "").lower()
    return sorted(cur for cur, o in options.items()
                  if isinstance(o, dict) and cur.lower() != own and not isinstance(o.get("tiers"), list))


def _check_object(table: str, obj: Any, *, embedded: bool = True) -> None:
    """Raise :class:`_Malformed` when ``obj`` (an object of ``table`` as Stripe sent it) is not a JSON object with
    an id, or (``embedded``) what hangs off it that the sync reads (items, lines, discounts) is not of the shape
    it reads. (A field of another type than expected anywhere else is kept raw and counted by the metrics.)"""
    kind = table[:-1].replace("_", " ")
    if not isinstance(obj, dict):
        # (an excerpt of the answer: anything shaped like a Stripe key in it masked before it is cut)
        raise _Malformed(f"{_a(kind)} that is not an object ({redact_secrets(orjson.dumps(obj).decode())[:40]})")
    oid = obj.get("id")
    if not isinstance(oid, str) or not oid:
        raise _Malformed(f"{_a(kind)} without an id")
    sent = obj.get("object")
    if sent is not None and sent not in OBJECT_NAMES.get(table, (sent,)):
        raise _Malformed(f"an object {oid} of type {redact_secrets(str(sent))[:40]!r} where {_a(kind)} belongs")
    if not embedded or obj.get("deleted"):
        return
    inner = {"subscriptions": ("items", "subscription_items"), "invoices": ("lines", "invoice_lines"),
             "credit_notes": ("lines", "credit_note_lines")}.get(table)
    children: list[Any] = []
    if inner is not None:
        lst = obj.get(inner[0])
        data = lst.get("data") if isinstance(lst, dict) else None
        if lst is not None and (not isinstance(lst, dict) or not isinstance(data, list | None)):
            raise _Malformed(f"{_a(kind)} {oid} whose {inner[0]} are not a list object")
        children = data or []
        for child in children:
            _check_object(inner[1], child, embedded=False)
    for owner in [obj, *children]:
        discounts = owner.get("discounts")
        if discounts is not None and not isinstance(discounts, list):
            raise _Malformed(f"{_a(kind)} {oid} whose discounts are not a list")
        for d in [*(discounts or ()), owner.get("discount") if table == "customers" else None]:
            if isinstance(d, dict) and not (isinstance(d.get("id"), str) and d["id"]):
                raise _Malformed(f"{_a(kind)} {oid} with a discount without an id")


def _malformed_answer(problem: str, path: str) -> BadResponseError:
    return BadResponseError(f"Stripe sent {problem} for GET {path}: nothing of that answer was stored (what was "
                            "committed before is kept); run the sync again, and if it happens again check that "
                            "STRIPE_API_BASE (setting api_base) is Stripe's API")


@contextlib.contextmanager
def _answer_of(path: str) -> Iterator[None]:
    """Objects of the answer to GET ``path`` are checked within: a malformed one is a one-line error naming it."""
    try:
        yield
    except _Malformed as exc:
        raise _malformed_answer(str(exc), path) from None


@dataclass(eq=False)
class _Slice:
    """A ``created`` range [lo, hi] of one stream being paged newest first (``hi`` None: the stream's first page,
    before its range is known). ``pos``: ``created`` of the last object paged; what is left lies in [lo, pos]."""

    stream: Stream
    lo: int
    hi: int | None
    after: str | None
    key: str
    pos: int = 0
    fetched: int = 0
    density: float = 0.0  # objects per second of ``created`` (inherited by a split-off slice)
    # paged again without a cursor from ``created`` = this (the cursor's object left the list: see _next_page)
    ceiling: int | None = None

    def rate(self) -> float:
        if self.fetched and self.hi is not None:
            return self.fetched / max(1, self.hi - self.pos + 1)
        return self.density

    def left(self) -> float:
        """Estimated objects still to page."""
        if self.hi is None or self.pos <= self.lo + 1:
            return 0.0
        return self.rate() * (self.pos - self.lo)


PROGRESS_LOG_S = 5.0  # off a terminal (and in the daemon), a progress log line of the sync or the recompute at most this often


class _Progress:
    """Per-table counters, shown as rich bars on a terminal or as periodic log lines otherwise (``"log"``: log lines
    on a terminal too, as the daemon wants them)."""

    def __init__(self, enabled: bool | Literal["log"]) -> None:
        self.counts: dict[str, int] = defaultdict(int)
        self._rich: Any = None
        self._tasks: dict[str, Any] = {}
        self._last_log = time.monotonic()
        if enabled is True and sys.stderr.isatty():
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
        elif self.enabled and time.monotonic() - self._last_log > PROGRESS_LOG_S:
            self._last_log = time.monotonic()
            log.info("sync progress: %s", ", ".join(f"{t} {c}" for t, c in sorted(self.counts.items())))

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()


def sandbox_rates_in(rows: list[dict[str, Any]], reporting: str) -> list[tuple[str, str, Decimal]]:
    """The sandbox's rates (units of US dollars for one unit of each currency, per date) as units of the
    reporting currency: each divided by the reporting currency's rate on the same date, kept to 8 decimals.
    Dates without a rate for the reporting currency are left out (a needed rate then shows as missing)."""
    reporting = reporting.lower()
    base = {r["date"]: Decimal(str(r["rate"])) for r in rows
            if str(r["currency"]).lower() == reporting and Decimal(str(r["rate"])) > 0}
    if rows and not base:
        log.warning("the sandbox has no exchange rate for the reporting currency %s; its rates were not stored",
                    reporting)
    return [(r["date"], str(r["currency"]).lower(),
             (Decimal(str(r["rate"])) / base[r["date"]]).quantize(Decimal("1e-8"), rounding=ROUND_HALF_EVEN))
            for r in rows if r["date"] in base]


def key_mode(key: str) -> str | None:
    """``live`` or ``test`` as the key's prefix says (secret or restricted), None for a key of another shape (a
    proxy's, which holds the real key)."""
    if key.startswith(("sk_live_", "rk_live_")):
        return "live"
    if key.startswith(("sk_test_", "rk_test_")):
        return "test"
    return None


def _held(account: str, mode: str | None) -> str:
    return f"{account} ({mode} mode)" if mode else account


def _not_found_in_state(column: str) -> str:
    """SQL: the row is still to be asked for what it lacks: ``column`` (the sync's bookkeeping, see
    :meth:`_Sync._remember_not_found`) does not hold the row's current ``state_seen_at``, the state in which it was
    asked for and did not come."""
    return f"({column} IS NULL OR state_seen_at IS NULL OR {column} <> state_seen_at)"


class _Sync:
    def __init__(self, settings: Settings, con: duckdb.DuckDBPyConnection, progress: bool | Literal["log"],
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
        self.queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=QUEUE_PAGES)  # bounds memory
        self.listing = False  # a full (or fallback) listing: rows replace whatever is stored
        self.oldest = 0  # no object is older than this (the account's creation)
        self._slices: list[_Slice] = []  # slices being listed
        self._tasks: list[asyncio.Task[None]] = []
        self.write_error: BaseException | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._db_lock = threading.Lock()  # one DuckDB call at a time (writer thread and everything else)
        self.memory_mb = SYNC_MEMORY_MB  # DuckDB's cap set by _lean, raised when a write needs more
        # while a full listing pages: rows go to the key-less stages, merged once the listing is over (an
        # upsert into a keyed table joins the whole table: per page, that cost grows with the store)
        self.staging = False
        self._seq = 0
        # tables holding nothing of the account when this listing began (a first full sync): its rows are
        # inserted straight away (discounts excepted: the same discount comes on several objects)
        self.fresh: set[str] = set()
        # the complete lines of each credit note whose lines this run paged for the copies the events bring (their
        # refresh: several groups of events may bring it again), and None for each whose lines answered 404 in any
        # part of the run; a credit note's lines never change once it is issued, so every copy of it in one run takes
        # them from here: one paging a note, not one a copy. (Not the lines paged by a full listing or the completion
        # of the notes stored cut short, which no other copy of the run needs: every note's lines held until the run
        # ends, parsed, grow with the account)
        self._cn_lines: dict[str, list[dict[str, Any]] | None] = {}
        # the invoices whose cut-short lines this run paged whole for a finalized copy (ids only, at most
        # FINAL_LINES_KEPT): a finalized invoice's lines never change, so a later copy of the run (its refresh after
        # a later group of events) stores its embedded page, as an event's copy, and the rows paged stay, instead of
        # the lines being paged once a group
        self._final_lines: dict[str, None] = {}
        # the tiered prices whose options' tiers this run asked for: whether they all came (False: some did not, or
        # the price answered 404), remembered at the run's end (_remember_option_tiers_not_found)
        self._option_tiers: dict[str, bool] = {}

    async def _db(self, fn: Any, *args: Any) -> Any:
        """Run a database function off the event loop, serialised with the writer. The functions run here roll
        their transaction back on error (see :func:`stripe_churn.store.db.transaction`), so one that ran out of
        DuckDB's memory cap runs again under a doubled cap (a store's key indexes grow with it, and a cap that
        fits a small store does not fit a large one)."""
        def locked() -> Any:
            with self._db_lock:
                while True:
                    try:
                        return fn(*args)
                    except duckdb.OutOfMemoryException:
                        if not self._more_memory():
                            raise
        return await asyncio.to_thread(locked)

    def _more_memory(self) -> bool:
        """Double DuckDB's memory cap for the rest of this sync; False when it is at its ceiling already."""
        if self.memory_mb >= SYNC_MEMORY_MAX_MB:
            return False
        before, self.memory_mb = self.memory_mb, min(self.memory_mb * 2, SYNC_MEMORY_MAX_MB)
        self.con.execute(f"SET memory_limit = '{self.memory_mb}MB'")
        log.warning("a write needed more than DuckDB's %d MB cap: raised to %d MB for the rest of this sync",
                    before, self.memory_mb)
        return True

    # ------------------------------------------------------------------ database (writer thread)
    def _now(self) -> datetime:
        return datetime.now(UTC)

    def _apply(self, batches: list[Batch]) -> None:
        """Several pages in one transaction: one write per table, then their cursors."""
        seen = self._now()
        rows: dict[str, Staged] = {}
        children: dict[tuple[str, str, str], list[tuple[str, list[str], int]]] = defaultdict(list)
        cursors: dict[str, tuple[str | None, int | None, bool]] = {}
        for b in batches:
            for table, staged in b.rows.items():
                if table not in rows:
                    rows[table] = staged
                else:
                    rows[table].extend(staged)
            for key, parents in b.children.items():
                children[key].extend(parents)
            for stream, value, created, done in b.cursors:
                cursors[stream] = (value, created, done)
        try:
            self._write(rows, children, cursors, seen)
        except duckdb.ConstraintException:
            if not self.fresh:
                raise
            # an object listed twice (it cannot be inserted again): from now on everything goes by the stages
            log.info("an object was listed twice: the rest of the listing is staged and merged")
            self.fresh.clear()
            self._write(rows, children, cursors, seen)
        for table, staged in rows.items():
            self.progress.add(table, len(staged))

    def _write(self, rows: dict[str, Staged], children: dict[tuple[str, str, str], list[tuple[str, list[str], int]]],
               cursors: dict[str, tuple[str | None, int | None, bool]], seen: datetime) -> None:
        con = self.con
        with transaction(con):
            for table, staged in rows.items():
                if table == "credit_notes":
                    self._keep_stored_lines(staged)
                if not self.staging:
                    upsert_staged(con, table, self.account, staged, seen, replace=self.listing)
                elif table in self.fresh:  # nothing of the account stored: plain inserts, nothing looked up
                    insert_staged(con, table, self.account, staged, seen)
                else:
                    upsert_staged(con, table, self.account, staged, seen, stage_seq=self._next_seq())
            if not self.listing:  # a full listing flags unlisted children once, at its end
                for (table, col, extra), parents in children.items():
                    mark_missing_children(con, table, col, self.account, parents, seen, extra=extra)
            if cursors:
                now = self._now()
                con.executemany(_CURSOR_SQL, [[self.account, k, v, c, d, self.run_id, now]
                                              for k, (v, c, d) in cursors.items()])

    def _keep_stored_lines(self, staged: Staged) -> None:
        """The credit notes of ``staged`` cut short (their lines were not paged: a 404) whose stored copy holds their
        whole list take that list in place of the embedded page, with their other fields as they came: a credit
        note's lines never change once it is issued (an update sets its memo and metadata, a void its status), and a
        newer copy cut short would otherwise replace the lines the store had. A stored list is taken only when it
        holds every line the copy embeds, and more (not the lines of another note of that id: a store filled from
        another account state). Read in the write's own transaction, so that it is the copy the write replaces."""
        cut: dict[str, tuple[int, dict[str, Any]]] = {}
        for at, blob in enumerate(staged.blobs):
            if b'"has_more":true' in blob:  # (serialised compact: see Staged)
                cn = parse_json(blob)
                if isinstance(cn, dict) and _lines_cut(cn):
                    cut[staged.ids[at]] = (at, cn)
        if not cut:
            return
        rows = self.con.execute(
            "SELECT id, CAST(json_extract(raw, '$.lines.data') AS VARCHAR) FROM credit_notes WHERE account_id = ? "
            "AND list_contains(?, id) AND lines_has_more = false AND json_type(raw, '$.lines.data') = 'ARRAY'",
            [self.account, sorted(cut)]).fetchall()
        for cnid, data in rows:
            at, cn = cut[cnid]
            stored = [ln for ln in parse_json(data) if isinstance(ln, dict)]
            embedded = [ln.get("id") for ln in cn["lines"].get("data") or [] if isinstance(ln, dict)]
            if len(stored) <= len(embedded) or not set(embedded) <= {ln.get("id") for ln in stored}:
                log.warning("credit note %s came with the first %d of its lines, and the %d stored are not the rest "
                            "of them: its embedded page is stored", cnid, len(embedded), len(stored))
                continue
            _with_lines(cn, stored)
            staged.blobs[at] = json_bytes(cn)
            log.info("credit note %s came with the first %d of its lines, which were not paged: its %d lines stored "
                     "whole are kept", cnid, len(embedded), len(stored))

    def _next_seq(self) -> int:
        """Order of what is staged (a page batch holds fewer than 4096 pages)."""
        self._seq += 4096
        return self._seq

    def _merge(self) -> None:
        """The listing's staged rows into the raw tables, one set-based merge per table."""
        for table in RAW_TABLES:
            merge_stage(self.con, table, self.account)

    def _set_cursor(self, stream: str, value: str | None, created: int | None, done: bool) -> None:
        self.con.execute(_CURSOR_SQL, [self.account, stream, value, created, done, self.run_id, self._now()])

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
            size = first.size()
            end = False
            while size < TX_OBJECTS:
                try:
                    nxt = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is None:
                    end = True
                    break
                batches.append(nxt)
                size += nxt.size()
            # After a failed write nothing more is written, only drained (so that producers never block): a later
            # batch carries its slice's cursor past the pages that failed, and a write can fail for a moment only
            # (a full disk: DuckDB cuts its log back, and a smaller write fits), so applying it would lose them.
            if self.write_error is None:
                try:
                    await self._db(self._apply, batches)
                except Exception as exc:  # surfaced by _flush and _put (a cancel ends the writer: not caught)
                    self.write_error = exc
            if end:
                return

    async def _put(self, batch: Batch) -> None:
        if self.write_error is not None:
            raise self.write_error
        await self.queue.put(batch)

    # ------------------------------------------------------------------ shaping pages into batches
    async def _sub_items(self, sub: dict[str, Any], *, from_event: bool = False) -> list[dict[str, Any]] | None:
        """The subscription's complete item list (None: see :meth:`_complete_list`)."""
        return await self._complete_list(sub.get("items"), "/v1/subscription_items", item_list_params(sub["id"]),
                                         from_event)

    async def _invoice_lines(self, inv: dict[str, Any], *, from_event: bool = False) -> list[dict[str, Any]] | None:
        """The invoice's complete line list (None: see :meth:`_complete_list`)."""
        return await self._complete_list(inv.get("lines"), f"/v1/invoices/{path_id(inv['id'])}/lines", LINE_LIST_PARAMS,
                                         from_event)

    async def _credit_note_lines(self, cn: dict[str, Any]) -> list[dict[str, Any]] | None:
        """The credit note's complete line list: the embedded one when it is whole, else
        :meth:`_paged_credit_note_lines` (None when they answer 404)."""
        if not _lines_cut(cn):
            return list((cn.get("lines") or {}).get("data") or [])
        return await self._paged_credit_note_lines(cn["id"], keep=not self.listing)

    async def _paged_credit_note_lines(self, cnid: str, *, keep: bool) -> list[dict[str, Any]] | None:
        """The lines of the credit note ``cnid`` paged whole from its lines endpoint, once a run (``_cn_lines``; a
        paging whose lines no other copy of the run needs, not ``keep``, leaves them out of it, and only a 404 in).
        None whenever they answer 404: its lines have no table whose rows a failure would leave wrong, so what was
        embedded is stored (or, for a note stored whole before, the lines stored: :meth:`_keep_stored_lines`), and a
        later run asks again once the credit note changes
        (:meth:`_complete_stored_credit_note_lines`); failing here instead would fail every later run on the same
        event. Any other failure is raised (and not kept: a run that goes on asks again)."""
        if cnid in self._cn_lines:
            got = self._cn_lines[cnid]
            return None if got is None else list(got)
        try:
            lines = await self._page_all(_credit_note_lines_path(cnid), {})
        except NotFoundError:
            log.info("the lines of credit note %s answered 404: its embedded page is kept (its lines stored whole, "
                     "when they are)", cnid)
            self._cn_lines[cnid] = None
            return None
        if keep:
            self._cn_lines[cnid] = lines
            return list(lines)
        return lines

    async def _complete_list(self, embedded: Any, path: str, params: dict[str, Any],
                             from_event: bool) -> list[dict[str, Any]] | None:
        """An embedded list, paged whole from ``path`` when Stripe cut it short (``has_more``). None when the
        object came from an event (``from_event``) and its list answers 404: the object is gone since (a draft
        invoice deleted, a subscription of a deleted test clock), and only the embedded part is known. The refresh
        after the event page retrieves the object itself and stores its deleted stub; failing here instead would
        fail every later run on the same event, the events cursor never moving past it."""
        lst = embedded or {}
        data = list(lst.get("data") or [])
        if not lst.get("has_more"):
            return data
        try:
            return await self._page_all(path, params)
        except NotFoundError:
            if not from_event:
                raise
            log.info("%s answered 404 (its object was deleted after the event): only its embedded part is stored",
                     path)
            return None

    async def _page_all(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Every object of a list, paged from its start again when Stripe drops the cursor (an item removed from
        its subscription while its items are paged), ``CURSOR_RESTARTS`` times at most."""
        assert self.api is not None
        out: list[dict[str, Any]] = []
        after: str | None = None
        restarts = 0
        while True:
            try:
                page = await self.api.get(path, {**params, "limit": PAGE_LIMIT, "starting_after": after})
            except CursorGoneError:
                if restarts >= CURSOR_RESTARTS:
                    raise
                restarts += 1
                log.info("%s: Stripe no longer knows the object %s paged last: listing it again", path, after)
                out, after = [], None
                continue
            data = _list_data(page, path)
            with _answer_of(path):
                for obj in data:
                    _check_object("list_items", obj, embedded=False)
            out.extend(data)
            if not page.get("has_more") or not data:
                return out
            after = data[-1]["id"]

    async def _add_object(self, batch: Batch, table: str, obj: dict[str, Any], version: int,
                          deleted: bool | None = None, *, children: list[dict[str, Any]] | None = None,
                          from_event: bool = False, embedded_only: bool = False) -> None:
        """An object and what hangs off it (items, lines, discounts) into the batch.

        ``children``: the object's complete item or line list when already fetched. ``from_event``: the object is
        an event's (its cut-short list may be gone since: then its embedded part is stored, and none of its stored
        children is marked missing). ``embedded_only``: its cut-short list is not asked for, and stored as it came
        (the same): known to be gone, or paged for a fresher copy that follows in the same batch (an event's
        object, which the refresh after the event page retrieves). Nor are a finalized invoice's lines that this run
        paged whole before (``_final_lines``): they cannot have changed. A credit note's lines have no table: its
        cut-short list is completed in its own JSON (:func:`_with_lines`). Raises :class:`_Malformed` for an object
        not of the shape read here.
        """
        _check_object(table, obj)
        if table == "prices" and not (deleted or obj.get("deleted")):
            await self._complete_option_tiers(obj)
        if table == "credit_notes" and not (deleted or obj.get("deleted")):
            got = None if embedded_only else children if children is not None else \
                await self._credit_note_lines(obj)
            _with_lines(obj, got)
        batch.add(table, obj, version, deleted)
        if deleted or obj.get("deleted"):
            if table == "invoices":  # (a deleted draft's lines go with it: Stripe answers 404 for them)
                batch.children[("invoice_lines", "invoice_id", "")].append((obj["id"], [], version))
            return
        if table == "subscriptions":
            got = None if embedded_only else children if children is not None else \
                await self._sub_items(obj, from_event=from_event)
            items = got if got is not None else list((obj.get("items") or {}).get("data") or [])
            for it in items:
                it.setdefault("subscription", obj["id"])
                batch.add("subscription_items", it, version)
            if got is not None:  # (a list known whole: the stored items it lacks are gone)
                batch.children[("subscription_items", "subscription_id", "")].append(
                    (obj["id"], [it["id"] for it in items], version))
            discounts = obj.get("discounts") or []
            for d in discounts:
                if isinstance(d, dict):
                    batch.add("discounts", d, version)
            on_items = [d for it in items for d in it.get("discounts") or []]
            for d in on_items:
                if isinstance(d, dict):
                    batch.add("discounts", d, version)
            # (a discount on one of its items names the subscription too: it stays while the item keeps it)
            batch.children[("discounts", "subscription_id", "")].append(
                (obj["id"], [d["id"] if isinstance(d, dict) else str(d) for d in [*discounts, *on_items]], version))
        elif table == "invoices":
            paged = _lines_cut(obj) and obj["id"] in self._final_lines  # (this run, for a finalized copy)
            got = None if embedded_only or paged else children if children is not None else \
                await self._invoice_lines(obj, from_event=from_event)
            if got is not None and children is None and _lines_cut(obj) and obj.get("status") in FINALIZED:
                self._final_lines[obj["id"]] = None
                if len(self._final_lines) > FINAL_LINES_KEPT:
                    del self._final_lines[next(iter(self._final_lines))]
            lines = got if got is not None else list((obj.get("lines") or {}).get("data") or [])
            for ln in lines:
                ln.setdefault("invoice", obj["id"])
                batch.add("invoice_lines", ln, version)
            if got is not None:
                batch.children[("invoice_lines", "invoice_id", "")].append(
                    (obj["id"], [ln["id"] for ln in lines], version))
            # the discounts billed on it and on its lines (expanded): the only trace of a discount that has
            # since ended
            for d in [*(obj.get("discounts") or []), *(d for ln in lines for d in ln.get("discounts") or [])]:
                if isinstance(d, dict):  # version 0: added when missing, never over its subscription's copy
                    batch.add("discounts", d, 0)
        elif table == "customers":
            disc = obj.get("discount")
            if isinstance(disc, dict):
                batch.add("discounts", disc, version)
            if "discount" in obj:
                keep = [disc["id"]] if isinstance(disc, dict) else []
                batch.children[("discounts", "customer_id", "AND discounts.subscription_id IS NULL")].append(
                    (obj["id"], keep, version))

    async def _complete_option_tiers(self, price: dict[str, Any]) -> None:
        """A tiered price's currency options with their tiers. Stripe sends an option's ``tiers`` only when
        ``currency_options.<currency>.tiers`` is expanded, one currency per path, so a listed or retrieved copy has
        the options without them: the price is retrieved again for the options in other currencies than its own
        that lack them (few prices are tiered in several currencies). Left as they are when the price is gone
        (404) or the answer holds none: 90 then reports the items billed in such a currency."""
        missing = _options_without_tiers(price)
        if not missing:
            return
        assert self.api is not None
        path = RETRIEVE_PATH["prices"].format(id=path_id(price["id"]))
        self._option_tiers[price["id"]] = False
        for at in range(0, len(missing), OPTION_TIERS_PER_CALL):
            wanted = missing[at:at + OPTION_TIERS_PER_CALL]
            try:
                full = await self.api.get(path, {"expand": [f"currency_options.{c}.tiers" for c in wanted]})
            except NotFoundError:
                return
            with _answer_of(path):
                _check_object("prices", full)
            options = full.get("currency_options")
            for cur in wanted:
                got = options.get(cur) if isinstance(options, dict) else None
                if isinstance(got, dict) and isinstance(got.get("tiers"), list):
                    price["currency_options"][cur] = {**price["currency_options"][cur], "tiers": got["tiers"]}
        self._option_tiers[price["id"]] = not _options_without_tiers(price)

    @staticmethod
    def _add_listed(batch: Batch, table: str, raw: bytes, head: Any, version: int) -> bool:
        """A listed object as it came (its JSON bytes and the fields :func:`decode_object` read) and what hangs
        off it into the batch, as :meth:`_add_object` would add them, without building dicts. False, with
        nothing added, when it needs the dict path: a cut-short item or line list, or a shape not expected."""
        if (table == "prices" and b'"tiered"' in raw and b'"currency_options"' in raw
                and _options_without_tiers(orjson.loads(raw))):
            return False  # (its options' tiers need a retrieve: _complete_option_tiers)
        if table == "credit_notes" and b'"has_more":true' in raw and _lines_cut(orjson.loads(raw)):
            return False  # (the rest of its lines are paged: _children)
        subs: list[tuple[bytes, Any]] = []  # (raw, head) of the embedded items or lines
        discounts: list[bytes] = []
        if not head.deleted and table in ("subscriptions", "invoices"):
            inner = head.items if table == "subscriptions" else head.lines
            if inner is not None and inner.has_more:
                return False
            child, parent_field = ("subscription_items", "subscription") if table == "subscriptions" else \
                ("invoice_lines", "invoice")
            for r in inner.data if inner is not None else ():
                b = bytes(r)
                h = decode_object(child, b)
                if h is None or getattr(h, parent_field) is UNSET:  # the dict path fills the parent in
                    return False
                subs.append((b, h))
            discounts = [bytes(d) for d in head.discounts or ()]
        batch.add_raw(table, str(head.id), raw, version, bool(head.deleted))
        if head.deleted:
            if table == "invoices":  # (as in _add_object)
                batch.children[("invoice_lines", "invoice_id", "")].append((str(head.id), [], version))
            return True
        if table == "subscriptions":
            for b, it in subs:
                batch.add_raw("subscription_items", str(it.id), b, version, bool(it.deleted))
            batch.children[("subscription_items", "subscription_id", "")].append(
                (head.id, [it.id for _, it in subs], version))
            discounts += [bytes(d) for _, it in subs for d in it.discounts or ()]  # (as in _add_object)
            ids = [_add_listed_discount(batch, d, version) for d in discounts]
            batch.children[("discounts", "subscription_id", "")].append(
                (head.id, [i if i is not None else str(parse_json(d)) for i, d in zip(ids, discounts, strict=True)],
                 version))
        elif table == "invoices":
            for b, ln in subs:
                batch.add_raw("invoice_lines", str(ln.id), b, version, bool(ln.deleted))
            batch.children[("invoice_lines", "invoice_id", "")].append(
                (head.id, [ln.id for _, ln in subs], version))
            for d in [*discounts, *(bytes(d) for _, ln in subs for d in ln.discounts or ())]:
                _add_listed_discount(batch, d, 0)  # version 0, as in _add_object
        elif table == "customers" and head.discount is not UNSET:
            got = _add_listed_discount(batch, bytes(head.discount), version)
            batch.children[("discounts", "customer_id", "AND discounts.subscription_id IS NULL")].append(
                (head.id, [] if got is None else [got], version))
        return True

    # ------------------------------------------------------------------ full sync
    async def _fetch_page(self, sl: _Slice) -> tuple[list[tuple[bytes, Any]], bool]:
        """The slice's next page: each object's JSON bytes with the fields the sync reads (None when the object's
        shape needs the dict path), and whether more follow."""
        assert self.api is not None
        params: dict[str, Any] = {**sl.stream.params, "limit": PAGE_LIMIT, "starting_after": sl.after}
        if sl.hi is not None:
            params["created"] = {"gte": sl.lo, "lte": sl.hi if sl.ceiling is None else sl.ceiling}
        page = await self.api.get_page(sl.stream.path, params)
        objs = []
        for r in page.data:
            b = bytes(r)
            objs.append((b, decode_object(sl.stream.table, b)))
        return objs, bool(page.has_more)

    async def _next_page(self, sl: _Slice) -> tuple[list[tuple[bytes, Any]], bool]:
        """:meth:`_fetch_page`; when Stripe no longer knows the slice's cursor (its object was deleted, or left the
        list's filter, since the page that named it: an archived price, a deleted coupon), the slice goes on without
        it, from the ``created`` of the last object paged (those of that second listed again: a copy listed twice is
        one row). A slice resumed from its stored cursor knows no such time: it is listed again whole. Each time
        must find older objects than the time before, or the error stands (no endless loop on one second)."""
        try:
            return await self._fetch_page(sl)
        except CursorGoneError:
            assert sl.hi is not None  # (a stream's first page has no cursor)
            at = sl.pos if sl.fetched else sl.hi
            if sl.ceiling is not None and at >= sl.ceiling:
                raise
            log.info("%s: Stripe no longer knows the object %s paged last (deleted, or out of the list since): "
                     "listing on from its time, %s", sl.stream.name, sl.after,
                     datetime.fromtimestamp(at, UTC).isoformat())
            sl.after, sl.ceiling = None, at
            return await self._fetch_page(sl)

    async def _children(self, table: str, objs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]] | None]:
        """The complete item/line lists of the objects whose embedded list is cut, fetched concurrently; None for an
        object whose list answers 404: it is gone since it was listed (a draft invoice deleted, a subscription of
        a test clock deleted), and its deletion event, after the listing's start event, flags it."""
        async def whole(path: str, params: dict[str, Any]) -> list[dict[str, Any]] | None:
            try:
                return await self._page_all(path, params)
            except NotFoundError:
                log.info("%s answered 404 (its object was deleted since it was listed): only its embedded part is "
                         "stored", path)
                return None

        todo: list[tuple[str, Coroutine[Any, Any, list[dict[str, Any]] | None]]] = []
        for obj in objs:
            if obj.get("deleted"):
                continue
            if table == "subscriptions" and (obj.get("items") or {}).get("has_more"):
                todo.append((obj["id"], whole("/v1/subscription_items", item_list_params(obj["id"]))))
            elif table == "invoices" and (obj.get("lines") or {}).get("has_more"):
                todo.append((obj["id"], whole(f"/v1/invoices/{path_id(obj['id'])}/lines", LINE_LIST_PARAMS)))
            elif table == "credit_notes" and _lines_cut(obj):
                todo.append((obj["id"], self._paged_credit_note_lines(obj["id"], keep=False)))
        if not todo:
            return {}
        got = await asyncio.gather(*(paged for _, paged in todo))
        return {oid: lst for (oid, _), lst in zip(todo, got, strict=True)}

    async def _page_batch(self, table: str, data: list[tuple[bytes, Any]], version: int) -> Batch:
        """A page's objects into a batch: as they came where they can be (:meth:`_add_listed`), the others (a
        cut-short item or line list, an unexpected shape) parsed into dicts, with their complete lists."""
        batch = Batch()
        slow: list[dict[str, Any]] = []
        for raw, head in data:
            if head is None or not self._add_listed(batch, table, raw, head, version):
                slow.append(parse_json(raw))
                _check_object(table, slow[-1])
        if slow:
            full_lists = await self._children(table, slow)
            for obj in slow:
                await self._add_object(batch, table, obj, version, children=full_lists.get(obj["id"]),
                                       embedded_only=obj["id"] in full_lists and full_lists[obj["id"]] is None)
        return batch

    def _split(self) -> tuple[_Slice, _Slice] | None:
        """Cut the slice with the most work left in two (by ``created``); the new lower half is returned."""
        best, most = None, 2.0 * PAGE_LIMIT
        for sl in self._slices:
            left = sl.left()
            if left > most:
                best, most = sl, left
        if best is None:
            return None
        mid = (best.lo + best.pos) // 2 + 1  # best keeps [mid, hi] from its cursor, the new one [lo, mid - 1]
        assert best.hi is not None
        low = _Slice(best.stream, best.lo, mid - 1, None, key=f"full:{best.stream.name}:{best.lo}:{mid - 1}",
                     pos=mid - 1, density=best.rate())
        best.lo = mid
        return best, low

    async def _fill(self, version: int) -> None:
        """Start slices (splitting the busiest) until enough requests are in flight for the rate limit."""
        assert self.api is not None
        want = slice_count(self.api.limiter.target, self.api.latency_s)
        while len(self._slices) < want:
            cut = self._split()
            if cut is None:
                return
            parent, low = cut
            split = Batch()  # both cursors commit before any page of the new slice
            split.cursors = [(parent.key, parent.after, parent.lo, False), (low.key, None, low.lo, False)]
            await self._put(split)
            self._start(low, version)

    def _start(self, sl: _Slice, version: int) -> None:
        self._slices.append(sl)
        self._tasks.append(asyncio.create_task(self._run_slice(sl, version)))

    async def _run_slice(self, sl: _Slice, version: int) -> None:
        try:
            while True:
                if self.stop.is_set():
                    raise Stopped
                data, more = await self._next_page(sl)
                whole = len(data)
                while True:
                    # the slice may have been split while its page was on the way: what now lies below its range
                    # belongs to the split-off slice, which lists it (a first listing inserts each object once)
                    lo = sl.lo
                    if sl.hi is not None:
                        data = [o for o in data if _listed_created(o, lo) >= lo]
                    with _answer_of(sl.stream.path):
                        batch = await self._page_batch(sl.stream.table, data, version)
                    if sl.lo == lo:
                        break
                if sl.hi is None:  # the stream's first page: from now on a slice of [oldest, newest]
                    # (the page's newest time: an object without one, first, would date the range at 0 and leave
                    # every later page out)
                    sl.hi = max((_listed_created(o, 0) for o in data), default=0)
                    sl.lo = min(self.oldest, sl.hi)
                    sl.key = f"full:{sl.stream.name}:{sl.lo}:{sl.hi}"
                done = not more or not data or len(data) < whole
                if data:
                    sl.after = str(_listed(data[-1], "id"))
                    sl.pos = _listed_created(data[-1], sl.lo)
                    sl.fetched += len(data)
                batch.cursors.append((sl.key, sl.after, sl.lo, done))
                await self._put(batch)
                if done:
                    return
                await self._fill(version)
        finally:
            self._slices.remove(sl)

    async def _oldest_bound(self) -> int:
        """No object is older than its account: the listing's lower bound, without probing each stream. Not for a
        connected account (STRIPE_ACCOUNT): its `created` is when it was connected to the platform, and a Standard
        account connected later holds objects from before (they were never listed)."""
        assert self.api is not None
        if self.settings.account:
            return 0
        try:
            acct = await self.api.account()  # (asked for once: the account id came from it)
            return max(0, int(acct.get("created") or 0))
        except StripeChurnError as exc:
            log.debug("account creation time unknown (%s): slices start at 0", exc)
            return 0

    async def _full(self, mode: str) -> None:
        assert self.api is not None
        self.listing = True
        cursors = await self._db(self._cursors)
        had_rows = await self._db(self._has_rows)
        if "full" in cursors and mode == "full" and cursors.get(FULL_LISTING, (None,))[0] != LISTING_VERSION:
            # (its slices' pages hold less than this version's listing asks for)
            log.warning("the unfinished full sync was begun by another version of stripe-churn, which listed "
                        "otherwise: starting over")
            cursors.pop("full")
        elif "full" in cursors and mode == "full" and not await self._db(self._resume_stages):
            log.warning("the unfinished full sync's staged rows no longer fit the store's tables: starting over")
            cursors.pop("full")
        if "full" in cursors and mode == "full":
            start_evt, version_o, _ = cursors["full"]
            version = int(version_o or 0)
            # objects the interrupted attempts listed count as seen by this full sync (no retrieve each)
            self.full_started = await self._db(self._full_started) or self.started
            log.info("resuming the unfinished full sync (%d slice cursors)",
                     sum(1 for k in cursors if k.startswith("full:") and k != FULL_LISTING))
        else:
            await self._db(self._clear_full)
            cursors = {}
            newest = await self.api.get("/v1/events", {"limit": 1})
            evs = _events_of(newest)
            start_evt = evs[0]["id"] if evs else None
            # (no event retained: the server's time at that answer, as Stripe's clock dates the events to come;
            # this machine's may run ahead of it, and the events after the listing would then be skipped)
            version = int(evs[0]["created"]) if evs else (self.api.server_time or int(time.time()))
            await self._db(self._start_full, start_evt, version, self.api.server_time)
        self.oldest = await self._oldest_bound()

        self.fresh = await self._db(self._fresh_tables)
        self.staging = True
        by_name = {s.name: s for s in STREAMS}
        started: set[str] = set()
        for key, (value, lo, done) in cursors.items():
            parts = key.split(":")
            if len(parts) != 4 or parts[0] != "full" or parts[1] not in by_name:
                continue
            started.add(parts[1])
            if not done:
                self._start(_Slice(by_name[parts[1]], int(lo or parts[2]), int(parts[3]), value, key=key,
                                   pos=int(parts[3])), version)
        for s in STREAMS:
            if s.name not in started:  # the first page of each stream, then slices of what it has left
                self._start(_Slice(s, 0, None, None, key=f"full:{s.name}"), version)
        try:
            while True:  # every slice task ever started is awaited here (failures are never lost)
                pending = [t for t in self._tasks if not t.done()]
                if not pending:
                    break
                await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                failed = [t.exception() for t in self._tasks if t.done() and not t.cancelled()
                          and t.exception() is not None and not isinstance(t.exception(), Stopped)]
                if failed:  # one slice failed for good: the others stop where they are (their pages are committed)
                    raise failed[0]  # type: ignore[misc]
        except BaseException:
            # (also when the run is cancelled, by Ctrl-C: no slice outlives the listing, to fail later on the
            # closed HTTP client with nobody to hear it)
            await self._cancel_slices()
            raise
        stopped = any(isinstance(t.exception(), Stopped) for t in self._tasks if not t.cancelled())
        await self._flush()
        self.staging = False
        await self._db(self._merge)  # a stopped listing's rows too (its next run goes on from its cursors)
        if stopped:
            raise Stopped  # every slice finished its page and stopped
        log.info("full sync: %d slices listed", len(self._tasks))
        await self._test_clocks(version)
        await self._flush()
        if had_rows:
            await self._check_missing(version)
        await self._gone_from_events()
        await self._db(self._mark_children, self.api.server_time)
        cur = await self._db(self._cursors)
        start_evt = cur.get("full", (start_evt, version, False))[0]
        await self._db(self._finish_full, start_evt, version)

    async def _cancel_slices(self) -> None:
        """Cancel the slice tasks still running and wait until every one has ended (their failures taken)."""
        while any(not t.done() for t in self._tasks):
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _only_in_deletions(self) -> list[tuple[str, int, str]]:
        """(table, unix time, event JSON) of the newest deletion event of each object the store lacks that only
        such an event carries (``_GONE_BY_EVENT``)."""
        rows: list[tuple[str, int, str]] = []
        for table, etype in _GONE_BY_EVENT.items():
            rows += self.con.execute(
                f"SELECT '{table}', CAST(epoch(e.created) AS BIGINT), e.raw FROM events e WHERE e.account_id = $a "
                "AND NOT e.deleted AND e.type = $t AND e.object_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
                f"{table} d WHERE d.account_id = e.account_id AND d.id = e.object_id) "
                "QUALIFY row_number() OVER (PARTITION BY e.object_id ORDER BY e.created DESC, e.id DESC) = 1",
                {"a": self.account, "t": etype}).fetchall()
        return rows

    async def _gone_from_events(self) -> None:
        """Store what a listing cannot show and only a deletion event still carries, flagged deleted, with that
        event's time as version (an incremental sync stores these from its events as they come)."""
        found = await self._db(self._only_in_deletions)
        if not found:
            return
        batch = Batch()
        for table, created, raw in found:
            obj = (parse_json(raw).get("data") or {}).get("object")
            if isinstance(obj, dict) and obj.get("id") and OBJECT_TABLE.get(str(obj.get("object"))) == table:
                await self._add_object(batch, table, obj, int(created), True)
        log.info("%d deleted objects stored from their deletion events", len(found))
        await self._put(batch)
        await self._flush()

    def _mark_children(self, server_time: int | None) -> None:
        with transaction(self.con):
            mark_unlisted_children(self.con, self.account, self.full_started, self._now(), server_time)
            if server_time is not None:  # Stripe lists every event it keeps: stored ones it did not list are gone
                self.con.execute(
                    "UPDATE events SET deleted = true, last_seen_at = $seen, "
                    f"state_seen_at = {STATE_SEEN.format(seen='$seen', version='version')} WHERE account_id = $a AND NOT deleted "
                    "AND last_seen_at < $since AND created >= to_timestamp($cutoff)",
                    {"seen": self._now(), "a": self.account, "since": self.full_started,
                     "cutoff": server_time - EVENT_RETENTION_S})

    def _has_rows(self) -> bool:
        row = self.con.execute("SELECT count(*) FROM customers WHERE account_id = ?", [self.account]).fetchone()
        return bool(row and row[0])

    def _fresh_tables(self) -> set[str]:
        union = " UNION ALL ".join(f"SELECT '{t}' AS t, (SELECT count(*) FROM (SELECT 1 FROM {t} "
                                   "WHERE account_id = $a LIMIT 1)) AS n" for t in RAW_TABLES if t != "discounts")
        return {t for t, n in self.con.execute(union, {"a": self.account}).fetchall() if not n}

    def _resume_stages(self) -> bool:
        ok = create_stages(self.con, fresh=False)
        self._seq = stage_seq(self.con)
        return ok

    def _clear_full(self) -> None:
        self.con.execute("DELETE FROM sync_cursors WHERE account_id = ? AND (stream = 'full' OR stream LIKE 'full:%')",
                         [self.account])

    def _start_full(self, start_evt: str | None, version: int, server_time: int | None) -> None:
        """The full sync's start: its version, and (when the server said its time) that the events are
        complete up to then (the incremental sync after it continues from the start event). When the stored
        events were last complete before Stripe's retention reaches back now, the events in between are lost:
        the stored ones are unbroken only from the oldest Stripe still keeps (``EVENTS_UNBROKEN``)."""
        with transaction(self.con):
            create_stages(self.con, fresh=True)
            self._set_cursor("full", start_evt, version, False)
            self._set_cursor(FULL_LISTING, LISTING_VERSION, None, False)
            if server_time is not None:
                cursors = self._cursors()
                # (as _gap reads it: the last complete listing, else the newest event applied)
                complete = cursors.get(EVENTS_COMPLETE, (None, None, False))[1]
                last = complete if complete is not None else cursors.get("events", (None, None, False))[1]
                kept_from = server_time - EVENT_RETENTION_S
                if last is not None and last < kept_from:
                    log.warning("the stored events end at %s, before the oldest event Stripe keeps now: the "
                                "events in between are lost, and history up to %s is taken from invoices (and from the item "
                                "and status changes the events stored before the gap show)",
                                datetime.fromtimestamp(last, UTC).isoformat(),
                                datetime.fromtimestamp(kept_from, UTC).isoformat())
                    self._set_cursor(EVENTS_UNBROKEN, None, kept_from, False)
                    self._set_cursor(f"{EVENTS_GAP}{last}", None, kept_from, False)
                self._set_cursor(EVENTS_COMPLETE, None, server_time, False)

    def _finish_full(self, start_evt: str | None, version: int) -> None:
        with transaction(self.con):
            self._clear_full()
            drop_stages(self.con)
            self._set_cursor("events", start_evt, version, False)
            self._set_cursor(LISTING, LISTING_VERSION, None, True)

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
        """Objects stored before this listing but not in it: deleted (Stripe lists every object of these types
        that is not). A few are retrieved to take their last state; beyond ``CHECK_EACH_MAX`` (a store filled
        from another account state) they are flagged in one statement, not retrieved one by one at the rate
        limit."""
        unseen = await self._db(self._unseen)
        if not unseen:
            return
        if len(unseen) > CHECK_EACH_MAX:
            log.info("%d stored objects are no longer listed: flagged as deleted", len(unseen))
            await self._db(self._flag_unseen, version)
            return
        log.info("%d stored objects no longer listed: checking each", len(unseen))
        sem = asyncio.Semaphore(16)

        async def one(table: str, oid: str) -> None:
            async with sem:
                obj = await self._retrieve(table, oid)
            batch = Batch()
            await self._add_object(batch, table, obj, version, True if obj.get("deleted") else None)
            await self._put(batch)

        await asyncio.gather(*(one(t, i) for t, i in unseen))
        await self._flush()

    def _flag_unseen(self, version: int) -> None:
        with transaction(self.con):
            for table in RETRIEVE_PATH:
                self.con.execute(
                    f"UPDATE {table} SET deleted = true, version = $v, last_seen_at = $seen, "
                    f"state_seen_at = {STATE_SEEN.format(seen='$seen', version='$v')} "
                    "WHERE account_id = $a AND NOT deleted AND last_seen_at < $since",
                    {"v": version, "seen": self._now(), "a": self.account, "since": self.full_started})

    async def _fx_rates(self) -> bool:
        """The sandbox serves its exchange rates (in US dollars); real Stripe has none (rates come from the
        setting fx_rates_file). Fetched as every request is (counted, rate-limited, retried): a rate lost to a
        fault would value a month at the month before's rates. Whether the server sent rates."""
        assert self.api is not None
        if "api.stripe.com" in self.api.base:
            return False
        try:
            rows = await self.api.get_json("/_sandbox/fx_rates")
        except NotFoundError:  # not the sandbox
            return False
        if not isinstance(rows, list) or not all(isinstance(r, dict) and {"date", "currency", "rate"} <= r.keys()
                                                 for r in rows):
            log.warning("the sandbox's exchange rates are not a list of date, currency and rate; none were stored")
            return False
        await self._db(self._store_fx, sandbox_rates_in(rows, self.settings.currency))
        return True

    def _store_fx(self, rows: list[tuple[str, str, Decimal]]) -> None:
        """The sandbox's rates, in the reporting currency, over the stored ones; all of these go first when they
        are quoted in another currency (the setting was changed), or none of them would be found missing."""
        reporting = self.settings.currency.lower()
        quoted = rates_quoted_in(self.con)
        with transaction(self.con):
            if quoted is not None and quoted != reporting:
                log.warning("the stored exchange rates were units of %s; the reporting currency is now %s: they are "
                            "replaced by the sandbox's rates in %s", quoted, reporting, reporting)
                self.con.execute("DELETE FROM fx_rates")
            upsert_fx_rates(self.con, rows)
            record_quote(self.con, reporting)

    def _check_fx_quote(self) -> None:
        """No rates came with this sync, nor come from a file after it: the stored ones (a file's, before it was
        unset) must be in the reporting currency, or every figure converted with them would be in another one
        under its name."""
        quoted = rates_quoted_in(self.con)
        reporting = self.settings.currency.lower()
        if quoted is not None and quoted != reporting:
            raise ConfigError(
                f"the stored exchange rates are units of {quoted}, but the reporting currency (setting currency, "
                f"STRIPE_CHURN_CURRENCY) is {reporting}: the synced objects are stored, the figures were not derived "
                f"again; set fx_rates_file (STRIPE_CHURN_FX_RATES) to a file of rates in {reporting} (README "
                f"\"Exchange rates\"), or set the currency back to {quoted}")

    # ------------------------------------------------------------------ incremental sync
    async def _gap(self, cursors: dict[str, tuple[str | None, int | None, bool]]) -> tuple[str | None, bool]:
        """(why the events cursor cannot be continued or None, whether to list the retained events by time).

        The cursor event may be gone (30-day retention) although nothing after it was: every event up to the
        server time of the last complete events listing (``events:complete``) was applied, so only a listing
        older than the retention window means events may have been lost.
        """
        assert self.api is not None
        value, created, _ = cursors["events"]
        complete = cursors.get(EVENTS_COMPLETE, (None, None, False))[1]
        now = self.api.server_time

        def lost(upto: int) -> str:
            return (f"the events were last listed up to {datetime.fromtimestamp(upto, UTC):%Y-%m-%d %H:%M} UTC, "
                    "beyond Stripe's 30-day retention (events in between may be lost)")

        if value is None:
            # (no event was left to continue from: a listing that found none keeps only its time, and events made
            # after it may since have left the retention window unseen)
            listed = max(t for t in (complete, created, 0) if t is not None)
            if listed and now is not None and listed < now - EVENT_RETENTION_S:
                return lost(listed), False
            return None, True
        try:
            await self.api.get(f"/v1/events/{path_id(value)}")
        except NotFoundError:
            now = self.api.server_time  # (this answer's)
            if complete is not None and now is not None and complete >= now - EVENT_RETENTION_S:
                log.info("the last applied event %s has left Stripe's 30-day retention, but the events were "
                         "complete up to %s: continuing from the retained events", value,
                         datetime.fromtimestamp(complete, UTC).isoformat())
                return None, True
            return lost((complete if complete is not None else created) or 0), False
        return None, False

    async def _incremental(self, cursor: tuple[str | None, int | None, bool], by_time: bool) -> None:
        assert self.api is not None
        value, created, _ = cursor
        if by_time:  # no usable cursor event: every retained event from the cursor's time on, newest page first
            await self._events_by_time(int(created or 0))
        else:
            group: list[dict[str, Any]] = []
            while True:
                if self.stop.is_set():
                    raise Stopped
                page = await self.api.get("/v1/events", {"limit": PAGE_LIMIT, "ending_before": value})
                data = _events_of(page)
                if data:
                    data.reverse()  # oldest first
                    group.extend(data)
                    value = data[-1]["id"]
                # a few pages per refresh: an object touched on several pages is retrieved once
                if group and (not data or len(group) >= EVENT_GROUP):
                    await self._apply_events(group, group[-1]["id"], int(group[-1]["created"]))
                    group = []
                if not data:
                    break
        await self._complete_stored_option_tiers()
        await self._complete_stored_credit_note_lines()
        await self._complete_events()
        await self._flush()
        await self._db(self._mark_discounts, self.api.server_time)

    def _mark_discounts(self, server_time: int | None) -> None:
        """The discounts the owners seen in this incremental run no longer have, flagged deleted: a discount taken
        off one item by an update has no event of its own, and without the flag the metrics could not tell that it
        went until a full listing."""
        with transaction(self.con):
            mark_unlisted_discounts(self.con, self.account, self.started, self._now(), server_time, whole=False)

    def _stored_without_option_tiers(self) -> list[str]:
        """Ids of the stored tiered prices whose options lack their tiers (``options_without_tiers``) and were not
        found to lack them for good in their stored state (``option_tiers_not_found_at``: see
        :meth:`_remember_option_tiers_not_found`), nor asked for in this run."""
        # (by the typed columns alone: reading every tiered price's JSON took 0.06-0.20 s a run at 5,000 tiered prices
        # with currency options; the columns, about a millisecond)
        rows = self.con.execute(
            "SELECT id FROM prices WHERE account_id = ? AND NOT deleted AND options_without_tiers "
            f"AND {_not_found_in_state('option_tiers_not_found_at')} ORDER BY id", [self.account]).fetchall()
        return [str(r[0]) for r in rows if r[0] not in self._option_tiers]

    def _remember_option_tiers_not_found(self) -> None:
        """The stored tiered prices whose options still lack their tiers after this run asked for them: their
        state's ``state_seen_at`` into ``option_tiers_not_found_at``, so that later runs do not retrieve them again
        while the row keeps that state (a new state asks: a listed or retrieved copy is completed as it comes, a
        changed one has another ``state_seen_at``). Nothing else of the row changes."""
        self._remember_not_found("prices", "option_tiers_not_found_at", "options_without_tiers",
                                 [pid for pid, complete in self._option_tiers.items() if not complete])

    async def _complete_stored_option_tiers(self) -> None:
        """Stored tiered prices whose options lack their tiers (stored by a version that did not fetch them, or
        whose retrieve failed), retrieved again: no event brings them, and a re-list of the whole account for
        them would cost every store a full listing. Few prices qualify; once complete they are not asked again,
        nor while they keep a state whose retrieve did not bring them (:meth:`_remember_option_tiers_not_found`)."""
        assert self.api is not None
        ids = await self._db(self._stored_without_option_tiers)
        if not ids:
            return
        log.info("%d stored tiered prices lack their currency options' tiers: retrieving them", len(ids))
        version = self.api.server_time or int(time.time())
        batch = Batch()
        for pid in ids:
            fresh = await self._retrieve("prices", pid)
            await self._add_object(batch, "prices", fresh, version, True if fresh.get("deleted") else None)
        await self._put(batch)
        await self._flush()

    def _stored_cut_credit_notes(self) -> list[tuple[str, int]]:
        """(JSON, version) of the stored credit notes cut short whose lines were not found to answer 404 in their
        stored state (``lines_not_found_at``: see :meth:`_remember_lines_not_found`), nor asked for in this run."""
        # (by the typed columns alone: reading every note's JSON for its has_more took 0.16-0.37 s a run at 50,000
        # credit notes; the column, about a millisecond)
        rows = self.con.execute(
            "SELECT id, raw, version FROM credit_notes WHERE account_id = ? AND NOT deleted AND lines_has_more "
            f"AND {_not_found_in_state('lines_not_found_at')} ORDER BY id", [self.account]).fetchall()
        return [(str(r[1]), int(r[2] or 0)) for r in rows if r[0] not in self._cn_lines]

    def _remember_lines_not_found(self) -> None:
        """The stored credit notes still cut short whose lines answered 404 in this run: their state's
        ``state_seen_at`` into ``lines_not_found_at``, so that later runs do not ask again while the row keeps that
        state (a new state asks: an event's copy is paged as it comes, a changed one has another ``state_seen_at``).
        Nothing else of the row changes (its JSON is what Stripe sent, ``last_seen_at`` stays)."""
        self._remember_not_found("credit_notes", "lines_not_found_at", "lines_has_more",
                                 [cnid for cnid, lines in self._cn_lines.items() if lines is None])

    def _remember_not_found(self, table: str, column: str, lacking: str, ids: list[str]) -> None:
        """``column`` := ``state_seen_at`` for the rows ``ids`` of ``table`` that still lack what the sync completes
        (the typed column ``lacking``): the state in which it was asked for and did not come
        (:func:`_not_found_in_state`). Nothing else of the rows changes."""
        if not ids:
            return
        with transaction(self.con):
            self.con.execute(
                f"UPDATE {table} SET {column} = state_seen_at WHERE account_id = ? AND NOT deleted "
                f"AND list_contains(?, id) AND {lacking}", [self.account, sorted(ids)])

    async def _complete_stored_credit_note_lines(self) -> None:
        """Stored credit notes whose lines are cut short (stored by a version that kept only the embedded page, or
        whose lines answered 404 in a state they no longer have), their lines paged again and put in their JSON with
        the version they had, as a listing would have stored them: no event brings them back while the credit note
        does not change, and a re-list of the whole account for them would cost every store a full listing. One
        whose lines answer 404 again is left as it is, and not asked again while it keeps that state
        (:meth:`_remember_lines_not_found`); one whose lines fail otherwise fails the run, once the others completed
        are stored. Once complete they are not asked again."""
        await self._flush()  # (the events' copies first: one completed by this run's events is not asked again)
        stored = await self._db(self._stored_cut_credit_notes)
        if not stored:
            return
        log.info("%d stored credit notes have only the first page of their lines: paging the rest", len(stored))
        sem = asyncio.Semaphore(16)

        async def one(raw: str, version: int) -> tuple[dict[str, Any], int, list[dict[str, Any]] | None]:
            cn = parse_json(raw)
            async with sem:  # (None, 404: its stored copy is left as it is)
                return cn, version, await self._paged_credit_note_lines(cn["id"], keep=False)

        batch = Batch()
        failed: BaseException | None = None  # (the first: raised once the others completed are stored)
        for got in await asyncio.gather(*(one(r, v) for r, v in stored), return_exceptions=True):
            if isinstance(got, BaseException):
                failed = failed or got
                continue
            cn, version, lines = got
            if lines is not None:
                _with_lines(cn, lines)
                batch.add("credit_notes", cn, version)
        if batch.size():
            await self._put(batch)
            await self._flush()
        if failed is not None:
            raise failed

    async def _complete_events(self) -> None:
        """Record the server time up to which the events are complete (the last listing's Date)."""
        if self.api is not None and self.api.server_time is not None:
            batch = Batch()
            batch.cursors.append((EVENTS_COMPLETE, None, self.api.server_time, False))
            await self._put(batch)

    async def _events_by_time(self, since: int) -> None:
        """Every retained event created at or after ``since``, paged newest first; the events cursor moves to the
        newest one with the last page (an interrupted run starts over, applying again is harmless)."""
        assert self.api is not None
        newest: tuple[str, int] | None = None
        after: str | None = None
        while True:
            if self.stop.is_set():
                raise Stopped
            page = await self.api.get("/v1/events", {"limit": PAGE_LIMIT, "starting_after": after,
                                                     "created": {"gte": since}})
            data = _events_of(page)
            if not data:
                break
            if newest is None:
                newest = (data[0]["id"], int(data[0]["created"]))
            after = data[-1]["id"]
            last = not page.get("has_more")
            data.reverse()
            await self._apply_events(data, *(newest if last else (None, None)))
            if last:
                break

    async def _apply_events(self, events: list[dict[str, Any]], last_id: str | None, last_created: int | None) -> None:
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
            if not isinstance(obj, dict) or not isinstance(obj.get("id"), str) or not obj["id"]:
                continue  # (kept with its event, as an object of a type the sync does not know)
            table = OBJECT_TABLE.get(str(obj.get("object")))
            if table is None:
                continue
            gone = table in DELETABLE and str(ev.get("type", "")).endswith(".deleted")
            related = _related(table, obj)
            # (an object the refresh retrieves has its cut-short list paged for that copy, which replaces this one:
            # paging it for each of its events too would ask for the same list again and again)
            with _answer_of("/v1/events"):
                await self._add_object(batch, table, obj, v, True if gone else None, from_event=True,
                                       embedded_only=(table, obj["id"]) in related)
            touched.update(related)
        await self._refresh(batch, touched, max(int(e["created"]) for e in events))
        if last_id is not None:
            batch.cursors.append(("events", last_id, last_created, False))
        await self._put(batch)

    async def _retrieve(self, table: str, oid: str) -> dict[str, Any]:
        assert self.api is not None
        path = RETRIEVE_PATH[table].format(id=path_id(oid))
        try:
            obj = await self.api.get(path, RETRIEVE_PARAMS.get(table))
        except NotFoundError:
            return {"id": oid, "deleted": True}
        except StripeAPIError as exc:
            if exc.http_status != 400 or table not in RETRIEVE_PARAMS:
                raise
            # a deleted object has nothing to expand (its stub is all there is): ask again without expand
            try:
                obj = await self.api.get(path)
            except NotFoundError:
                return {"id": oid, "deleted": True}
        with _answer_of(path):
            _check_object(table, obj)
        return obj

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

    # ------------------------------------------------------------------ pending invoice items
    async def _pending_items(self) -> None:
        """List the pending invoice items whole (``PENDING_ITEMS``: no ``created`` filter, they are few), page by
        page into invoice_items; once the listing completed, the stored items it no longer returned (invoiced
        or deleted since) are marked not pending. A listing stopped or failed leaves its committed pages and
        marks nothing: only a complete one says which items left.

        The version is the server's time at the first page, the listing's moment. An incremental run writes
        only the items new or changed since they were stored: a row written again takes a new ``last_seen_at``,
        and the metrics recompute the customers whose rows have one, every run for a pending item waiting a
        year for its invoice. A full listing writes all, as it writes every other object.
        """
        assert self.api is not None
        stream = PENDING_ITEMS
        stored = {} if self.listing else await self._db(self._stored_pending)
        listed: list[str] = []
        after: str | None = None
        version: int | None = None
        restarts = 0
        while True:
            if self.stop.is_set():
                raise Stopped
            try:
                page = await self.api.get_page(stream.path, {**stream.params, "limit": PAGE_LIMIT,
                                                             "starting_after": after})
            except CursorGoneError:  # (the item paged last was invoiced or deleted since: listed again whole)
                if restarts >= CURSOR_RESTARTS:
                    raise
                restarts += 1
                listed, after = [], None
                continue
            except NotFoundError:
                if after is not None:  # the endpoint answered its first page: not a missing endpoint
                    raise
                log.warning("the server has no %s (a proxy or an old server?): pending invoice items are not "
                            "synced, and the stored ones are left as they were", stream.path)
                return
            if version is None:
                version = self.api.server_time or int(time.time())
            batch = Batch()
            for r in page.data:
                raw = bytes(r)
                head = decode_object(stream.table, raw)
                if head is None:
                    raise BadResponseError(f"Stripe listed an invoice item that is not an object with an id for GET "
                                           f"{stream.path}; its pages before were stored, nothing was marked, run the "
                                           "sync again")
                oid = str(head.id)
                listed.append(oid)
                if oid not in stored or stored[oid] != parse_json(raw):
                    batch.add_raw(stream.table, oid, raw, version, bool(head.deleted))
                    with _answer_of(stream.path):
                        for d in head.discounts or ():  # (version 0, as an invoice line's: added when missing)
                            _add_listed_discount(batch, bytes(d), 0)
            if batch.size():
                await self._put(batch)
            if not page.has_more or not page.data:
                break
            after = listed[-1]
        await self._flush()  # every page committed before the items it did not return are marked
        left = await self._db(self._no_longer_pending, listed)
        if left:
            log.info("%d stored invoice items are no longer pending (invoiced or deleted)", left)

    def _stored_pending(self) -> dict[str, Any]:
        """The account's stored pending invoice items, id -> JSON (parsed)."""
        rows = self.con.execute("SELECT id, raw FROM invoice_items WHERE account_id = ? AND pending AND NOT deleted",
                                [self.account]).fetchall()
        return {r[0]: parse_json(r[1]) for r in rows}

    def _no_longer_pending(self, listed: list[str]) -> int:
        """Mark the stored pending items a complete listing did not return (``listed``: the ids it did) as not
        pending, seen now; nothing else of them changes (their JSON stays as last listed). Returns how many."""
        with transaction(self.con):
            row = self.con.execute(
                "UPDATE invoice_items SET pending = false, last_seen_at = $seen, "
                f"state_seen_at = {STATE_SEEN.format(seen='$seen', version='version')} WHERE account_id = $a AND pending "
                "AND NOT list_contains($ids, id)", {"seen": self._now(), "a": self.account, "ids": listed}).fetchone()
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------ the run
    async def _mode_of_objects(self) -> str | None:
        """The mode of what the server sends (for a key whose prefix does not say it): the ``livemode`` of its
        newest event (None when it has none, or does not say)."""
        assert self.api is not None
        page = await self.api.get("/v1/events", {"limit": 1})
        data = _events_of(page)
        livemode = data[0].get("livemode") if data else None
        return None if not isinstance(livemode, bool) else "live" if livemode else "test"

    def _holds_objects(self, account: str) -> bool:
        """Whether the store keeps any object of ``account`` (cursor rows alone are what a first sync that failed
        before storing anything left: a key without a permission, a mistyped one)."""
        return any(self.con.execute(f"SELECT 1 FROM {t} WHERE account_id = ? LIMIT 1", [account]).fetchall()
                   for t in RAW_TABLES)

    def _check_identity(self, account: str, mode: str | None) -> None:
        """Refuse a sync of another Stripe account, or of the other mode of the same one, than the store holds
        objects of (its rows would be summed with the stored ones by every view); record the mode when it is not
        yet (the first sync, or the first since the mode was recorded), or when nothing of the account is stored.
        A store that already held several accounts before the mode was recorded keeps syncing each of them."""
        rows = self.con.execute(
            "SELECT account_id, max(value) FILTER (WHERE stream = $mode) FROM sync_cursors WHERE account_id <> '' "
            "GROUP BY account_id ORDER BY account_id", {"mode": STORE_MODE}).fetchall()  # ('': the store's own rows)
        held = {str(a): m for a, m in rows if self._holds_objects(str(a))}
        stored_mode = held.get(account)
        if (held and account not in held) or (mode and stored_mode and mode != stored_mode):
            holds = " and ".join(_held(a, m) for a, m in held.items())
            if self.settings.source == "demo":
                todo = "run the demo with another --dir (or remove that folder's store)"
            else:
                todo = ("set STRIPE_CHURN_DB (setting db) to another file for it (or move this one aside to start "
                        "over)")
            by = "STRIPE_ACCOUNT names" if self.settings.account else "the key is for"
            raise ConfigError(f"the store {self.settings.db} holds Stripe account {holds}; {by} "
                              f"{_held(account, mode)}: nothing was synced (a store holds one account in one mode, "
                              f"or every figure would add them up): {todo}")
        if mode and stored_mode is None:
            with transaction(self.con):
                self.con.execute(_CURSOR_SQL, [account, STORE_MODE, mode, None, True, self.run_id, self._now()])

    def _written(self) -> dict[str, int]:
        """Distinct objects this run wrote, per table (an object listed or applied twice counts once)."""
        union = " UNION ALL ".join(
            f"SELECT '{t}' AS t, count(*) AS n FROM {t} WHERE account_id = $a AND last_seen_at >= $since"
            for t in RAW_TABLES)
        rows = self.con.execute(union, {"a": self.account, "since": self.started}).fetchall()
        return {t: int(n) for t, n in rows if n}

    def _lists_everything(self) -> bool:
        """Whether this run lists everything (mode ``full``) whichever account the key turns out to be for (only
        Stripe says which): no account of the store has the events cursor an incremental sync starts from, or each
        that has one has a full listing to finish (a first sync, say), as :meth:`run` decides once it knows."""
        row = self.con.execute("SELECT count(*) FROM (SELECT account_id FROM sync_cursors WHERE account_id <> '' "
                               "GROUP BY account_id HAVING bool_or(stream = 'events') AND NOT bool_or(stream = 'full'))"
                               ).fetchone()
        return not row or row[0] == 0

    def _record_start(self, mode: str) -> None:
        # A run still `running` here never recorded its end: its process was killed (kill -9, a service manager's
        # timeout, a power cut). Syncs of one store run one at a time (the sync lock; DuckDB lets one process
        # write), so it is over: said so instead of `running` for ever.
        self.con.execute("UPDATE sync_runs SET status = 'failed', error = ? WHERE status = 'running'", [ENDED_UNRECORDED])
        self.con.execute("INSERT INTO sync_runs (run_id, account_id, started_at, mode, status) VALUES (?, ?, ?, ?, ?)",
                         [self.run_id, self.account or None, self.started, mode, "running"])

    def _record_mode(self, mode: str) -> None:
        """The mode once it is known (a full listing resumed, or a fallback, where an incremental was asked for)."""
        self.con.execute("UPDATE sync_runs SET mode = ? WHERE run_id = ?", [mode, self.run_id])

    def _record_end(self, result: SyncResult) -> None:
        self.con.execute(
            "UPDATE sync_runs SET account_id = ?, finished_at = ?, mode = ?, status = ?, counts = ?, requests = ?, "
            "error = ?, fallback_reason = ? WHERE run_id = ?",
            [result.account_id, result.finished_at, result.mode, result.status, orjson.dumps(result.counts).decode(),
             result.requests, result.error, result.fallback_reason, self.run_id])

    async def run(self, full: bool, terminated: threading.Event | None = None) -> SyncResult:
        # (a run that fails before it knows its account, a first sync with a wrong key, is recorded as what it was)
        result = SyncResult(self.run_id, "full" if full or self._lists_everything() else "incremental", "running",
                            started_at=self.started)
        self._record_start(result.mode)
        self._writer_task = asyncio.create_task(self._writer())
        try:
            async with StripeRaw(self.settings, stop=self.stop) as api:
                self.api = api
                try:
                    account = await api.account_id(self.settings.account)
                    mode = key_mode(self.settings.api_key.reveal())
                    if mode is None or self.settings.account:
                        # (a configured account is taken as given, without a request: one proves the key reaches
                        # it before the store records it as the one it holds)
                        probed = await self._mode_of_objects()
                        mode = mode or probed
                    await self._db(self._check_identity, account, mode)
                    self.account = account
                    result.account_id = self.account
                    cursors = await self._db(self._cursors)
                    if full or "events" not in cursors or "full" in cursors:
                        result.mode = "full"
                        await self._db(self._record_mode, result.mode)
                        await self._full("full")
                    else:
                        reason, by_time = await self._gap(cursors)
                        if not reason and cursors.get(LISTING, (None,))[0] != LISTING_VERSION:
                            reason = ("the stored objects were listed by another version of stripe-churn, which "
                                      "asked Stripe for other things (an older one: no invoices' discounts, coupons' "
                                      "applies_to or prices' currency_options)")
                        if reason:
                            result.mode, result.fallback_reason = "fallback", reason
                            log.warning("incremental sync not possible: %s; re-listing everything instead", reason)
                            await self._db(self._record_mode, result.mode)
                            await self._full("fallback")
                        else:
                            await self._incremental(cursors["events"], by_time)
                    await self._flush()
                    await self._db(self._remember_lines_not_found)
                    await self._db(self._remember_option_tiers_not_found)
                    # (whatever the mode: rates dated since the last sync come with the next one)
                    served_rates = await self._fx_rates()
                    await self._pending_items()
                    await self._flush()
                    if not served_rates and not self.settings.fx_rates_file:  # (a file is written after the sync)
                        await self._db(self._check_fx_quote)
                    result.status = "succeeded"
                except Stopped:
                    await self._flush()
                    result.status = "stopped"
                finally:
                    result.requests = api.requests
        except BaseException as exc:
            result.status = "failed"
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):  # (Ctrl-C: asyncio.run cancels the run)
                result.error = TERMINATED if terminated is not None and terminated.is_set() else INTERRUPTED
            else:
                result.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            with contextlib.suppress(BaseException):
                await self.queue.put(None)
                if self._writer_task is not None:
                    await asyncio.wait_for(self._writer_task, 30)
            raise
        finally:
            self.progress.close()
            result.counts = dict(self.progress.counts)
            if self.account:
                with contextlib.suppress(Exception), self._db_lock:
                    result.counts = self._written()
            result.finished_at = datetime.now(UTC)
            with contextlib.suppress(Exception), self._db_lock:
                self._record_end(result)
            log.info("sync %s %s (%s): %s; %d requests", result.run_id, result.status, result.mode,
                     ", ".join(f"{t} {c}" for t, c in sorted(result.counts.items())) or "nothing", result.requests)
        return result


def _list_data(page: Any, path: str) -> list[dict[str, Any]]:
    """The ``data`` of a list page read as a dict; a one-line error for any other JSON object (a proxy's or a
    maintenance page's ``{"message": ...}`` read as an empty list would flag every child of a parent deleted, or
    take no event for all of them)."""
    if not isinstance(page, dict) or page.get("object") != "list":
        raise _malformed_answer("JSON that is not a list page", path)
    data = page.get("data")
    if not isinstance(data, list):
        raise _malformed_answer("a list page whose data is not a list", path)
    return data


def _events_of(page: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a page of /v1/events, each an object with an id, a ``created`` time and its ``data``;
    a one-line error naming the first that is not."""
    data = _list_data(page, "/v1/events")
    for ev in data:
        with _answer_of("/v1/events"):
            _check_object("events", ev, embedded=False)
        created = ev.get("created")
        if isinstance(created, bool) or not isinstance(created, int):
            raise _malformed_answer(f"the event {ev['id']} without a created time", "/v1/events")
        if not isinstance(ev.get("data"), dict | None):
            raise _malformed_answer(f"the event {ev['id']} whose data is not an object", "/v1/events")
    return data


def path_id(oid: str) -> str:
    """An object's id as one segment of a request's path: percent-encoded, as an id chosen by the account (a
    product's or coupon's) may hold "/", "?" or "#" (``prod/pro`` asked for ``/v1/products/prod/pro``, got a 404,
    and the live product was flagged deleted)."""
    return quote(str(oid), safe="")


def _credit_note_lines_path(cnid: str) -> str:
    """Where the lines of a credit note whose embedded list Stripe cut short are paged."""
    return f"/v1/credit_notes/{path_id(cnid)}/lines"


def _lines_cut(obj: dict[str, Any]) -> bool:
    """Whether an object's embedded ``lines`` list is cut short (``has_more``)."""
    lines = obj.get("lines")
    return isinstance(lines, dict) and bool(lines.get("has_more"))


def _with_lines(cn: dict[str, Any], lines: list[dict[str, Any]] | None) -> None:
    """A credit note's complete line list (paged from its lines endpoint) put in its JSON in place of the embedded
    page: ``lines.data`` whole and ``lines.has_more`` false, the list's other keys (``object``, ``url``) as Stripe
    sent them. Unlike an invoice's lines, a credit note's have no table of their own: its JSON is the only place
    they are kept. ``lines`` None (the list was not paged: it answered 404) leaves the embedded page as it came."""
    if lines is None or not _lines_cut(cn):
        return
    cn["lines"] = {**cn["lines"], "data": lines, "has_more": False}


def _add_listed_discount(batch: Batch, raw: bytes, version: int) -> Any:
    """An embedded discount (raw JSON) into the batch when it is an expanded object; its id, or None when it is
    not an object (an id string, null)."""
    if not is_object(raw):
        return None
    head = head_of(raw)
    if not isinstance(head.id, str) or not head.id:
        raise _Malformed("a discount without an id")
    batch.add_raw("discounts", head.id, raw, version, bool(head.deleted))
    return head.id


def _listed(obj: tuple[bytes, Any], name: str) -> Any:
    """A field of a listed object (its JSON bytes and what :func:`decode_object` read from them, or None when
    it did not take the object)."""
    raw, head = obj
    if head is not None:
        return getattr(head, name)
    parsed = orjson.loads(raw)
    return parsed.get(name) if isinstance(parsed, dict) else None


def _listed_created(obj: tuple[bytes, Any], default: int) -> int:
    try:
        return int(_listed(obj, "created"))
    except (TypeError, ValueError):
        return default


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
             progress: bool | Literal["log"] = True, stop: threading.Event | None = None,
             terminated: threading.Event | None = None) -> SyncResult:
    """Bring the store up to date with Stripe: incremental from the events cursor, or a full re-list.
    ``terminated``: set when a Ctrl-C that interrupts the run is a SIGTERM's (see ``cli.sigterm_as_ctrl_c``)."""
    with _connection(settings, con) as db, _lean(db):
        return _run_interruptible(_Sync(settings, db, progress, stop).run(full, terminated))


def _run_interruptible(run: Coroutine[Any, Any, SyncResult]) -> SyncResult:
    """``asyncio.run(run)``, where Ctrl-C (SIGINT, when Python's default handler has it) cancels the run once, as
    asyncio.run does, and a second one does not raise KeyboardInterrupt into the event loop, as asyncio.run's
    does: raised between a future's end and its task's wakeup it leaves that task waiting for ever, and the run
    hangs (or fails on the closed HTTP client, or on a DuckDB statement it stops). The interrupted run ends as
    fast anyway (its last pages are committed, then its HTTP client closed); KeyboardInterrupt is raised once it
    has."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return asyncio.run(run)  # (the daemon's own handler asks for a stop by its event)
    interrupted = False

    async def main() -> SyncResult:
        task = asyncio.current_task()
        assert task is not None

        def on_sigint() -> None:
            nonlocal interrupted
            if not interrupted:
                interrupted = True
                log.info("interrupted: the pages listed are committed, then the sync stops")
                task.cancel()

        # (the loop's handler runs as one of its callbacks; it stays until the loop is closed, after its tasks
        # and threads have ended, when the loop puts Python's default handler back)
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, on_sigint)
        return await run

    try:
        result = asyncio.run(main())
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    if interrupted:  # (a Ctrl-C as the run ended: the user asked to stop what comes after it)
        raise KeyboardInterrupt
    return result


@contextlib.contextmanager
def _lean(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """What keeps a long sync's memory flat and its CPU on the data: DuckDB's buffer cache capped (it would
    otherwise keep most of what it wrote in memory), checkpoints every GB of log rather than 16 MB (each one
    rewrites the primary-key indexes, a cost that grows with the store: at 1M objects, 48 MB checkpoints took
    half the sync's CPU), insertion order not preserved; the
    cycle collector run rarely (pages are millions of small acyclic objects that it would walk again and
    again)."""
    names = ("memory_limit", "checkpoint_threshold", "preserve_insertion_order")
    before = con.execute("SELECT " + ", ".join(f"current_setting('{n}')" for n in names)).fetchone()
    thresholds = gc.get_threshold()
    con.execute(f"SET memory_limit = '{SYNC_MEMORY_MB}MB'")
    con.execute(f"SET checkpoint_threshold = '{SYNC_CHECKPOINT}'")
    con.execute("SET preserve_insertion_order = false")
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        # the log written since the last checkpoint (up to a GB) goes into the file under the sync's memory cap,
        # not at close with DuckDB's default cap (most of the machine's memory: 2.1 GB at 1M objects)
        with contextlib.suppress(duckdb.Error):
            con.execute("CHECKPOINT")
        if before is not None:
            with contextlib.suppress(duckdb.Error):
                for name, value in zip(names, before, strict=True):
                    con.execute(f"SET {name} = '{value}'")
