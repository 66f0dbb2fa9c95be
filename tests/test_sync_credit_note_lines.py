"""A credit note with more lines than Stripe embeds (the sandbox, as Stripe, embeds 10 with ``has_more``): the sync
pages the rest from ``/v1/credit_notes/{id}/lines`` and stores the whole list in the credit note's JSON
(``lines.data`` complete, ``lines.has_more`` false), whether the credit note was listed, came in an event, or was
stored cut short before. A credit note whose lines answer 404 keeps what was embedded, and the run goes on. The real
sync against the sandbox server serving a hand-built account (tests/metrics/builders.py)."""

from __future__ import annotations

import asyncio
import copy
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

sys.path.insert(0, str(Path(__file__).parent / "metrics"))
from builders import DAY, Obj, World, ts

from stripe_churn.errors import StripeAPIError
from stripe_churn.sandbox.listing import ApiError
from stripe_churn.sandbox.server import RunningSandbox, start_in_thread
from stripe_churn.settings import Secret, Settings
from stripe_churn.store.db import open_store
from stripe_churn.sync import SyncResult, _Sync, run_sync

KEY = "sk_test_credit_note_lines"
T0 = ts(2026, 11, 1)
LINES = 25


def _world() -> World:
    w = World()
    w.customer("cus_1", created=T0)
    w.product("prod_1", unit_label="seat")
    w.price("price_1", "prod_1", 10_000)
    w.subscribe("sub_1", "cus_1", [("si_1", "price_1", 1)], T0)
    return w


def _credit_note(w: World, cnid: str, at: int, n: int = LINES) -> Obj:
    """A credit note of ``n`` lines (each of another amount) on the subscription's first invoice."""
    inv = next(iter(w.objects["invoices"].values()))
    lines = [{"id": f"cnli_{cnid[3:]}_{k:03d}", "object": "credit_note_line_item", "amount": 100 + k,
              "description": f"Credit {k}", "discount_amount": 0, "discount_amounts": [],
              "invoice_line_item": inv["lines"]["data"][0]["id"], "livemode": False, "quantity": 1, "tax_rates": [],
              "type": "custom_line_item", "unit_amount": 100 + k, "unit_amount_decimal": str(100 + k),
              "pretax_credit_amounts": [], "taxes": [], "metadata": {}} for k in range(n)]
    total = sum(ln["amount"] for ln in lines)
    return {"id": cnid, "object": "credit_note", "amount": total, "created": at, "currency": "usd",
            "customer": "cus_1", "invoice": inv["id"], "livemode": False, "metadata": {}, "number": f"{cnid}-01",
            "reason": "order_change", "status": "issued", "subtotal": total, "total": total, "type": "post_payment",
            "voided_at": None,
            "lines": {"object": "list", "data": lines, "has_more": False, "url": f"/v1/credit_notes/{cnid}/lines"}}


def _sync(w: World, notes: dict[str, Obj], clock: int, db: Path, *, full: bool = False,
          tamper: Callable[[RunningSandbox], None] | None = None) -> SyncResult:
    served = w.served(clock)
    served.objects["credit_notes"] = notes
    with start_in_thread(served, api_key=KEY) as sb:
        if tamper is not None:
            tamper(sb)
        return run_sync(Settings(api_key=Secret(KEY), api_base=sb.url, db=db, rate_limit=10_000), full=full,
                        progress=False)


def _stored(db: Path, cnid: str) -> tuple[list[str], Any, int, bool]:
    """The stored credit note's line ids (in order), ``lines.has_more``, the sum of its lines' amounts (as finance
    would read it with SQL) and ``deleted``."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute(
            "SELECT json_extract_string(raw, '$.lines.data[*].id'), json_extract(raw, '$.lines.has_more'), "
            "(SELECT sum(CAST(a AS BIGINT)) FROM unnest(json_extract_string(raw, '$.lines.data[*].amount')) t(a)), "
            "deleted FROM credit_notes WHERE id = ?", [cnid]).fetchone()
    finally:
        con.close()
    assert row is not None, f"{cnid} is not stored"
    return list(row[0] or []), None if row[1] is None else str(row[1]), int(row[2] or 0), bool(row[3])


def _complete(cn: Obj) -> tuple[list[str], str, int, bool]:
    return [ln["id"] for ln in cn["lines"]["data"]], "false", cn["total"], False


def _forget_lines_not_found(db: Path) -> None:
    """The store as a version that did not remember a 404 of a credit note's lines left it."""
    con = duckdb.connect(str(db))
    try:
        con.execute("UPDATE credit_notes SET lines_not_found_at = NULL")
    finally:
        con.close()


def _events_cursor(db: Path) -> Any:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT value FROM sync_cursors WHERE stream = 'events'").fetchall()
    finally:
        con.close()


def _refuse_lines_of(cnid: str, error: Callable[[dict[str, Any]], ApiError | None]) -> Callable[[RunningSandbox], None]:
    """A server change: ``error(params)`` answers the requests for the lines of ``cnid`` when it gives one."""
    def tamper(sb: RunningSandbox) -> None:
        sublist_page = sb.app.catalog.sublist_page

        def sublisted(resource: str, parent_id: str, params: Any, url: str, param: str = "id") -> Any:
            if resource == "credit_notes" and parent_id == cnid:
                refused = error(params)
                if refused is not None:
                    raise refused
            return sublist_page(resource, parent_id, params, url, param)

        sb.app.catalog.sublist_page = sublisted  # type: ignore[method-assign]
    return tamper


class _Once:
    """The first error ``make`` gives, once (``fired``: whether it was given)."""

    def __init__(self, make: Callable[[dict[str, Any]], ApiError | None]) -> None:
        self.make = make
        self.fired = False

    def __call__(self, params: dict[str, Any]) -> ApiError | None:
        got = self.make(params)
        if got is None or self.fired:
            return None
        self.fired = True
        return got


class _Pagings:
    """A server change that counts, per parent id, the requests for the lines of ``resource``'s objects
    (``requests``) and the pagings of them (``pagings``: the requests for a first page, without ``starting_after``),
    each as the server answered it (a refused one too, when this change is made after the refusal's)."""

    def __init__(self, resource: str = "credit_notes") -> None:
        self.resource = resource
        self.requests: Counter[str] = Counter()
        self.pagings: Counter[str] = Counter()

    def __call__(self, sb: RunningSandbox) -> None:
        inner = sb.app.catalog.sublist_page

        def counted(resource: str, parent_id: str, params: Any, url: str, param: str = "id") -> Any:
            if resource == self.resource:
                self.requests[parent_id] += 1
                if not params.get("starting_after"):
                    self.pagings[parent_id] += 1
            return inner(resource, parent_id, params, url, param)

        sb.app.catalog.sublist_page = counted  # type: ignore[method-assign]


def _both(*changes: Callable[[RunningSandbox], None]) -> Callable[[RunningSandbox], None]:
    """Server changes made in turn (a later one sees the requests before an earlier one answers them)."""
    def tamper(sb: RunningSandbox) -> None:
        for change in changes:
            change(sb)
    return tamper


def _not_found(_params: dict[str, Any]) -> ApiError:
    return ApiError(404, "No such credit note", code="resource_missing", param="id")


def _cursor_gone(params: dict[str, Any]) -> ApiError | None:
    after = params.get("starting_after")
    if not after:
        return None
    return ApiError(400, f"No such credit note line item: '{after}'", code="resource_missing", param="starting_after")


def _rate_limited(_params: dict[str, Any]) -> ApiError:
    return ApiError(429, "Too many requests", code="rate_limit")


@pytest.mark.parametrize(("make", "n"), [
    pytest.param(None, LINES, id="as-served"),
    # (the paging starts over from the first page: more lines than one page of 100, so that a cursor is sent)
    pytest.param(_cursor_gone, 130, id="cursor-gone-once"),
    pytest.param(_rate_limited, LINES, id="429-once"),  # (retried by the client)
])
def test_a_full_sync_stores_every_line_of_a_credit_note(tmp_path: Path, n: int,
                                                        make: Callable[[dict[str, Any]], ApiError | None] | None
                                                        ) -> None:
    w = _world()
    notes = {"cn_1": _credit_note(w, "cn_1", T0 + DAY, n), "cn_2": _credit_note(w, "cn_2", T0 + DAY + 60, 3)}
    db = tmp_path / "s.duckdb"
    refuse = None if make is None else _Once(make)
    r = _sync(w, notes, T0 + 2 * DAY, db, full=True,
              tamper=None if refuse is None else _refuse_lines_of("cn_1", refuse))
    assert (r.status, r.error) == ("succeeded", None)
    assert refuse is None or refuse.fired
    assert _stored(db, "cn_1") == _complete(notes["cn_1"])
    assert len(_stored(db, "cn_1")[0]) == n
    assert _stored(db, "cn_2") == _complete(notes["cn_2"])  # (one page embedded whole: as it came)


@pytest.mark.parametrize("etype", ["credit_note.created", "credit_note.voided"])
def test_an_incremental_sync_stores_every_line_of_a_credit_note_from_its_event(tmp_path: Path, etype: str) -> None:
    w = _world()
    db = tmp_path / "s.duckdb"
    assert _sync(w, {}, T0 + DAY, db, full=True).status == "succeeded"
    cn = _credit_note(w, "cn_1", T0 + 2 * DAY)
    if etype == "credit_note.voided":
        cn.update(status="void", voided_at=T0 + 2 * DAY)
    w.event(etype, T0 + 2 * DAY, cn)
    r = _sync(w, {"cn_1": cn}, T0 + 3 * DAY, db)
    assert (r.mode, r.status, r.error) == ("incremental", "succeeded", None)
    assert _stored(db, "cn_1") == _complete(cn)


def test_a_credit_note_whose_lines_answer_404_keeps_its_embedded_page_and_is_asked_again_once_it_changes(
        tmp_path: Path) -> None:
    """Its lines answer 404 between the page that lists it and the request for the rest (as an invoice deleted
    meanwhile does): the listing stores what was embedded and goes on. The next sync does not ask for them again
    while the credit note is as stored (before, every later run asked, for ever), nor marks anything in its JSON;
    once it changes (an event: its metadata updated) it is asked again, once a change while they still answer 404,
    and stored whole when they answer."""
    w = _world()
    cn = _credit_note(w, "cn_1", T0 + DAY)
    db = tmp_path / "s.duckdb"
    gone = _refuse_lines_of("cn_1", _not_found)
    r = _sync(w, {"cn_1": cn}, T0 + 2 * DAY, db, full=True, tamper=gone)
    assert (r.status, r.error) == ("succeeded", None)
    embedded = [ln["id"] for ln in cn["lines"]["data"][:10]]
    assert _stored(db, "cn_1") == (embedded, "true", sum(range(100, 110)), False)
    for k, (change, lines_answer, asked) in enumerate([(False, False, 0), (True, False, 1), (False, False, 0),
                                                        (False, True, 0), (True, True, 1)]):
        at = T0 + 2 * DAY + (k + 1) * 3600
        if change:
            before, cn = cn, copy.deepcopy(cn)
            cn["metadata"] = {"change": str(k)}
            w.event("credit_note.updated", at - 60, cn, before=before)
        count = _Pagings()
        r = _sync(w, {"cn_1": cn}, at, db, tamper=count if lines_answer else _both(gone, count))
        assert (k, r.mode, r.status, r.error) == (k, "incremental", "succeeded", None)
        assert (k, count.requests["cn_1"]) == (k, asked)
        if not lines_answer:
            assert (k, _stored(db, "cn_1")) == (k, (embedded, "true", sum(range(100, 110)), False))
    assert _stored(db, "cn_1") == _complete(cn)
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT raw->>'$.metadata.change' FROM credit_notes").fetchall() == [("4",)]
    finally:
        con.close()


def test_a_credit_note_gone_after_its_event_does_not_stop_the_sync(tmp_path: Path) -> None:
    """An event's credit note whose lines (and itself) answer 404 by the time the sync pages them: the run
    succeeds and the events cursor moves past it (else every later run would fail on the same event); the other
    credit note of the same events is stored whole."""
    w = _world()
    db = tmp_path / "s.duckdb"
    assert _sync(w, {}, T0 + DAY, db, full=True).status == "succeeded"
    gone, kept = _credit_note(w, "cn_1", T0 + 2 * DAY), _credit_note(w, "cn_2", T0 + 2 * DAY + 60)
    w.event("credit_note.created", T0 + 2 * DAY, gone)
    w.event("credit_note.created", T0 + 2 * DAY + 60, kept)
    r = _sync(w, {"cn_1": {"id": "cn_1", "object": "credit_note", "deleted": True}, "cn_2": kept}, T0 + 3 * DAY, db)
    assert (r.status, r.error) == ("succeeded", None)
    assert _events_cursor(db) == [(w.events[-1]["id"],)]
    assert _stored(db, "cn_2") == _complete(kept)


def test_the_simulated_accounts_credit_notes_are_stored_whole_after_a_full_and_an_incremental_sync(
        tmp_path: Path) -> None:
    """The sandbox's simulation with credit notes of 25 lines: after a full sync, and after a billing run and an
    incremental sync (its new credit notes come in events), each stored credit note is the simulation's own, lines
    and all."""
    from stripe_churn.sandbox.sim import Simulation

    sim = Simulation(customers=80, months=6, seed=7, credit_note_lines=LINES)
    db = tmp_path / "s.duckdb"

    def stored() -> dict[str, Any]:
        con = duckdb.connect(str(db), read_only=True)
        try:
            return {i: orjson.loads(raw) for i, raw in con.execute("SELECT id, raw FROM credit_notes").fetchall()}
        finally:
            con.close()

    with start_in_thread(sim, api_key=KEY) as sb:
        settings = Settings(api_key=Secret(KEY), api_base=sb.url, db=db, rate_limit=10_000)
        assert run_sync(settings, full=True, progress=False).status == "succeeded"
        assert stored() == sim.objects["credit_notes"] and len(stored()) == 2
        sb.advance(1)
        r = run_sync(settings, progress=False)
        assert (r.mode, r.status, r.error) == ("incremental", "succeeded", None)
        assert stored() == sim.objects["credit_notes"] and len(stored()) == 4


def test_a_stored_credit_note_whose_lines_keep_failing_does_not_lose_the_others_completed(tmp_path: Path) -> None:
    """Two credit notes stored cut short (as a version that kept only the embedded page left them); the next sync
    completes them, but the lines of one keep answering 500: the run fails with Stripe's error (as any request that
    fails after its retries), and the other one is stored whole all the same (not paged again by every later run
    until the first answers)."""
    w = _world()
    notes = {"cn_1": _credit_note(w, "cn_1", T0 + DAY), "cn_2": _credit_note(w, "cn_2", T0 + DAY + 60)}
    db = tmp_path / "s.duckdb"
    r = _sync(w, notes, T0 + 2 * DAY, db, full=True,
              tamper=_both(_refuse_lines_of("cn_1", _not_found), _refuse_lines_of("cn_2", _not_found)))
    assert (r.status, _stored(db, "cn_1")[1], _stored(db, "cn_2")[1]) == ("succeeded", "true", "true")
    _forget_lines_not_found(db)
    served = w.served(T0 + 2 * DAY + 3600)
    served.objects["credit_notes"] = notes
    with start_in_thread(served, api_key=KEY) as sb:
        _refuse_lines_of("cn_1", lambda _p: ApiError(500, "Something went wrong"))(sb)
        with pytest.raises(StripeAPIError, match="500 for GET /v1/credit_notes/cn_1/lines"):
            run_sync(Settings(api_key=Secret(KEY), api_base=sb.url, db=db, rate_limit=10_000, max_retries=0),
                     progress=False)
    assert _stored(db, "cn_1")[1] == "true"
    assert _stored(db, "cn_2") == _complete(notes["cn_2"])


def test_an_events_credit_note_whose_lines_answer_404_does_not_stop_the_events(tmp_path: Path) -> None:
    """An event's credit note still there, but its lines answer 404 (as the listing and the completion of stored
    ones allow): the run succeeds with its embedded page stored and the events cursor past it, else every later run
    would fail on the same event; the next run with a change of it (voided), whose lines answer, completes it."""
    w = _world()
    db = tmp_path / "s.duckdb"
    assert _sync(w, {}, T0 + DAY, db, full=True).status == "succeeded"
    cn = _credit_note(w, "cn_1", T0 + 2 * DAY)
    w.event("credit_note.created", T0 + 2 * DAY, cn)
    gone = _refuse_lines_of("cn_1", lambda _p: ApiError(404, "No such credit note: 'cn_1'", code="resource_missing",
                                                        param="id"))
    r = _sync(w, {"cn_1": cn}, T0 + 3 * DAY, db, tamper=gone)
    assert (r.mode, r.status, r.error) == ("incremental", "succeeded", None)
    assert _events_cursor(db) == [(w.events[-1]["id"],)]
    assert _stored(db, "cn_1")[1:] == ("true", sum(ln["amount"] for ln in cn["lines"]["data"][:10]), False)
    voided = {**cn, "status": "void", "voided_at": T0 + 3 * DAY}
    w.event("credit_note.voided", T0 + 3 * DAY, voided)
    assert _sync(w, {"cn_1": voided}, T0 + 3 * DAY + 60, db).status == "succeeded"
    assert _stored(db, "cn_1") == _complete(voided)


def test_an_incremental_sync_pages_a_credit_notes_lines_once_however_many_of_its_events_it_applies(
        tmp_path: Path) -> None:
    """Two credit notes of 25 lines, each in two events of one run (created, then updated or voided): each note's
    lines are paged once (before, once for every event's copy and once more for the copy the refresh after the
    events retrieves: 3 pagings a note against Stripe's 25 requests per second to the lines endpoint), and each is
    stored whole, in its latest state."""
    w = _world()
    db = tmp_path / "s.duckdb"
    assert _sync(w, {}, T0 + DAY, db, full=True).status == "succeeded"
    cn1, cn2 = _credit_note(w, "cn_1", T0 + 2 * DAY), _credit_note(w, "cn_2", T0 + 2 * DAY + 60)
    w.event("credit_note.created", T0 + 2 * DAY, cn1)
    w.event("credit_note.created", T0 + 2 * DAY + 60, cn2)
    updated, voided = copy.deepcopy(cn1), copy.deepcopy(cn2)
    updated["metadata"] = {"order": "42"}
    voided.update(status="void", voided_at=T0 + 2 * DAY + 180)
    w.event("credit_note.updated", T0 + 2 * DAY + 120, updated, before=cn1)
    w.event("credit_note.voided", T0 + 2 * DAY + 180, voided)
    count = _Pagings()
    r = _sync(w, {"cn_1": updated, "cn_2": voided}, T0 + 3 * DAY, db, tamper=count)
    assert (r.mode, r.status, r.error) == ("incremental", "succeeded", None)
    assert count.pagings == {"cn_1": 1, "cn_2": 1}
    assert count.requests == {"cn_1": 1, "cn_2": 1}  # (25 lines: one page each)
    assert _stored(db, "cn_1") == _complete(updated)
    assert _stored(db, "cn_2") == _complete(voided)
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT raw->>'$.metadata.order', status FROM credit_notes ORDER BY id").fetchall() == \
            [("42", "issued"), (None, "void")]
    finally:
        con.close()


def test_a_credit_note_whose_lines_answer_404_is_asked_once_in_a_run(tmp_path: Path) -> None:
    """An event's credit note whose lines answer 404: one request in the run (before: one for the event's copy, one
    for the refreshed copy, and one more by the completion of the stored credit notes cut short at the run's end),
    its embedded page stored."""
    w = _world()
    db = tmp_path / "s.duckdb"
    assert _sync(w, {}, T0 + DAY, db, full=True).status == "succeeded"
    cn = _credit_note(w, "cn_1", T0 + 2 * DAY)
    w.event("credit_note.created", T0 + 2 * DAY, cn)
    count = _Pagings()
    r = _sync(w, {"cn_1": cn}, T0 + 3 * DAY, db, tamper=_both(_refuse_lines_of("cn_1", _not_found), count))
    assert (r.mode, r.status, r.error) == ("incremental", "succeeded", None)
    assert count.requests == {"cn_1": 1}
    assert _stored(db, "cn_1")[1] == "true"


@pytest.mark.parametrize("change", [
    pytest.param("credit_note.updated", id="updated-event"),
    pytest.param("credit_note.voided", id="voided-event"),
    pytest.param("relisted", id="full-sync"),
])
def test_a_credit_note_stored_whole_keeps_its_lines_when_a_later_copy_comes_cut_short(tmp_path: Path,
                                                                                     change: str) -> None:
    """A credit note stored whole (25 lines), then a later copy of it (an event's, or a full sync's listing) while
    its lines answer 404: the copy embeds 10 with has_more, and replaced the 25 stored (before: a sum of its lines
    came short of its total from then on). A credit note's lines never change once it is issued: the stored whole
    list stays, the other fields are the newer copy's; the lines are asked once, and not again by the next run."""
    w = _world()
    cn = _credit_note(w, "cn_1", T0 + DAY)
    db = tmp_path / "s.duckdb"
    assert _sync(w, {"cn_1": cn}, T0 + 2 * DAY, db, full=True).status == "succeeded"
    assert _stored(db, "cn_1") == _complete(cn)
    later = copy.deepcopy(cn)
    if change == "credit_note.voided":
        later.update(status="void", voided_at=T0 + 2 * DAY + 60)
        w.event(change, T0 + 2 * DAY + 60, later)
    else:
        later["metadata"] = {"order": "42"}
        if change == "credit_note.updated":
            w.event(change, T0 + 2 * DAY + 60, later, before=cn)
    gone = _refuse_lines_of("cn_1", _not_found)
    for k, full in enumerate([change == "relisted", False]):
        count = _Pagings()
        r = _sync(w, {"cn_1": later}, T0 + (3 + k) * DAY, db, full=full, tamper=_both(gone, count))
        assert (k, r.mode, r.status, r.error) == (k, "full" if full else "incremental", "succeeded", None)
        assert (k, dict(count.requests)) == (k, {"cn_1": 1} if k == 0 else {})
        assert (k, _stored(db, "cn_1")) == (k, _complete(later))
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT status, raw->>'$.metadata.order', lines_has_more, lines_not_found_at "
                           "FROM credit_notes").fetchall() == [(later["status"], later["metadata"].get("order"),
                                                                False, None)]
    finally:
        con.close()


def test_a_stored_list_that_does_not_hold_a_copys_embedded_lines_is_not_taken(tmp_path: Path) -> None:
    """The stored whole list is taken for a copy cut short only when it holds every line the copy embeds: a store
    that held another note of the same id (filled from another account state) keeps the copy's embedded page, not
    lines of the other note."""
    w = _world()
    db = tmp_path / "s.duckdb"
    other = _credit_note(w, "cn_1", T0 + DAY, 12)
    for ln in other["lines"]["data"]:
        ln["id"] = ln["id"].replace("cnli_", "cnli_other_")
    assert _sync(w, {"cn_1": other}, T0 + 2 * DAY, db, full=True).status == "succeeded"
    cn = _credit_note(w, "cn_1", T0 + DAY)
    r = _sync(w, {"cn_1": cn}, T0 + 3 * DAY, db, full=True, tamper=_refuse_lines_of("cn_1", _not_found))
    assert (r.status, r.error) == ("succeeded", None)
    assert _stored(db, "cn_1") == ([ln["id"] for ln in cn["lines"]["data"][:10]], "true", sum(range(100, 110)), False)


def _lines_held(w: World, notes: dict[str, Obj], clock: int, db: Path, *, full: bool) -> int:
    """A sync run as run_sync runs it, then how many credit note lines the run still holds in memory at its end."""
    served = w.served(clock)
    served.objects["credit_notes"] = notes
    with start_in_thread(served, api_key=KEY) as sb:
        con = open_store(db)
        try:
            sync = _Sync(Settings(api_key=Secret(KEY), api_base=sb.url, db=db, rate_limit=10_000), con, False, None)
            r = asyncio.run(sync.run(full))
        finally:
            con.close()
    assert (r.mode, r.status, r.error) == ("full" if full else "incremental", "succeeded", None)
    return sum(len(lines or []) for lines in sync._cn_lines.values())


def test_a_sync_does_not_hold_every_credit_notes_lines_until_it_ends(tmp_path: Path) -> None:
    """A full sync pages the lines of each credit note cut short as it lists it, and stores them in its JSON; it
    kept them all in memory besides until the run ended, for another copy of the note in the same run, which a
    listing hardly has (300 notes of 100 lines: 39 MB held; an account with thousands of such notes, hundreds of
    MB, against the sync's flat memory). So did the completion of the stored notes cut short (a store from an older
    version: every such note at once). Neither holds them now; each note is still stored whole."""
    w = _world()
    notes = {f"cn_{k}": _credit_note(w, f"cn_{k}", T0 + DAY + k) for k in range(3)}
    db = tmp_path / "s.duckdb"
    assert _lines_held(w, notes, T0 + 2 * DAY, db, full=True) == 0
    for cnid, cn in notes.items():
        assert _stored(db, cnid) == _complete(cn)
    con = duckdb.connect(str(db))
    try:  # (as a version that kept only the embedded page stored them)
        for cnid, cn in notes.items():
            cut = {**cn, "lines": {**cn["lines"], "data": cn["lines"]["data"][:10], "has_more": True}}
            con.execute("UPDATE credit_notes SET raw = ?, lines_has_more = true WHERE id = ?",
                        [orjson.dumps(cut).decode(), cnid])
    finally:
        con.close()
    assert _lines_held(w, notes, T0 + 3 * DAY, db, full=False) == 0
    for cnid, cn in notes.items():
        assert _stored(db, cnid) == _complete(cn)
