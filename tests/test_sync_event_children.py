"""An event's object whose embedded item or line list is cut short (``has_more``) and which is gone by the time
the incremental sync pages the rest: the 404 on its list must not fail the run (the events cursor would never move
past that event, and every later run would fail on it). The real sync against the sandbox server serving a
hand-built account (tests/metrics/builders.py)."""

from __future__ import annotations

import copy
import itertools
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest

sys.path.insert(0, str(Path(__file__).parent / "metrics"))
from builders import DAY, World, ts

from stripe_churn.sandbox.server import RunningSandbox, start_in_thread
from stripe_churn.settings import Secret, Settings
from stripe_churn.sync import run_sync

KEY = "sk_test_event_children"
T0 = ts(2026, 11, 1)


def _world() -> World:
    w = World()
    w.customer("cus_1", created=T0)
    w.product("prod_1", unit_label="seat")
    for k in range(12):
        w.price(f"price_{k}", "prod_1", 1_000 + k)
    w.subscribe("sub_1", "cus_1", [("si_1", "price_0", 1)], T0)
    return w


def _synced_in_full(w: World, db: Path) -> Callable[[str], Settings]:
    """A full sync of ``w`` into ``db`` on day 1; the settings of a later sync against a server at a URL."""

    def settings(url: str) -> Settings:
        return Settings(api_key=Secret(KEY), api_base=url, db=db, rate_limit=10_000)

    with start_in_thread(w.served(T0 + DAY), api_key=KEY) as sb:
        assert run_sync(settings(sb.url), full=True, progress=False).status == "succeeded"
    return settings


def _count_pagings(sb: RunningSandbox) -> Counter[tuple[str, str]]:
    """How many times the sandbox ``sb`` is asked, from here on, for the first page of a list under an object, per
    (resource, object id)."""
    pagings: Counter[tuple[str, str]] = Counter()
    inner = sb.app.catalog.sublist_page

    def counted(resource: str, parent_id: str, params: Any, url: str, param: str = "id") -> Any:
        if not params.get("starting_after"):
            pagings[resource, parent_id] += 1
        return inner(resource, parent_id, params, url, param)

    sb.app.catalog.sublist_page = counted  # type: ignore[method-assign]
    return pagings


def _draft_deleted(w: World) -> tuple[str, str]:
    """A manual draft with 12 lines (its event embeds 10), deleted an hour later."""
    w._seq = itertools.count(500)
    item = w.objects["subscriptions"]["sub_1"]["items"]["data"][0]
    lines = [w._line("sub_1", item, T0 + 2 * DAY, T0 + 2 * DAY, amount=100) for _ in range(12)]
    inv = w._invoice("sub_1", T0 + 2 * DAY, "manual", lines)
    inv.update(status="draft", parent=None)
    w.event("invoice.created", T0 + 2 * DAY, inv)
    w.event("invoice.deleted", T0 + 2 * DAY + 3600, copy.deepcopy(inv))
    w.objects["invoices"][inv["id"]] = {"id": inv["id"], "object": "invoice", "deleted": True}
    return "invoices", inv["id"]


def _subscription_deleted(w: World) -> tuple[str, str]:
    """A subscription of 12 items (its event embeds 10), gone an hour later (as a deleted test clock takes its
    subscriptions): its item list answers 404."""
    w.customer("cus_2", created=T0 + 2 * DAY)
    w.subscribe("sub_2", "cus_2", [(f"si_2_{k}", f"price_{k}", 1) for k in range(12)], T0 + 2 * DAY,
                invoice=False)
    w.objects["subscriptions"]["sub_2"] = {"id": "sub_2", "object": "subscription", "deleted": True}
    return "subscriptions", "sub_2"


@pytest.mark.parametrize("make", [pytest.param(_draft_deleted, id="draft-invoice-lines"),
                                  pytest.param(_subscription_deleted, id="subscription-items")])
def test_a_gone_objects_cut_short_list_does_not_stop_the_sync(tmp_path: Path,
                                                               make: Callable[[World], tuple[str, str]]) -> None:
    w = _world()
    db = tmp_path / "s.duckdb"
    settings = _synced_in_full(w, db)
    table, oid = make(w)
    for _ in range(2):  # (the second: the daemon's next tick finds nothing left over)
        with start_in_thread(w.served(T0 + 3 * DAY), api_key=KEY) as sb:
            r = run_sync(settings(sb.url), progress=False)
        assert (r.status, r.error) == ("succeeded", None)
    con = duckdb.connect(str(db), read_only=True)
    try:
        # the refresh after the event page settled it: flagged deleted
        assert con.execute(f"SELECT deleted FROM {table} WHERE id = ?", [oid]).fetchall() == [(True,)]
        # the events cursor moved past both events
        newest = max(e["id"] for e in w.events)
        assert con.execute("SELECT value FROM sync_cursors WHERE stream = 'events'").fetchall() == [(newest,)]
        # what the event embedded is stored; nothing was marked missing from a list that was never complete
        child, parent = ("invoice_lines", "invoice_id") if table == "invoices" else \
            ("subscription_items", "subscription_id")
        assert con.execute(f"SELECT count(*) FROM {child} WHERE {parent} = ?", [oid]).fetchone() == (10,)
    finally:
        con.close()


def test_an_objects_cut_short_list_is_paged_once_for_all_of_its_events_in_a_run(tmp_path: Path) -> None:
    """A subscription of 12 items and its invoice of 12 lines (their events embed 10), with several events each in
    one run: the items are paged once and the lines once, for the copy the refresh after the events retrieves
    (before, once more for every event's copy, whose list that copy replaces: 3 pagings of the items and 4 of the
    lines). Both are stored whole, as they are now (the item the update removed is on neither list)."""
    w = _world()
    db = tmp_path / "s.duckdb"
    settings = _synced_in_full(w, db)
    at = T0 + 2 * DAY
    w.customer("cus_2", created=at)
    sub = w.subscribe("sub_2", "cus_2", [(f"si_2_{k}", f"price_{k}", 1) for k in range(12)], at, invoice=False)
    inv = w.invoice_for("sub_2", at, "subscription_create", period_start=at)
    for k, etype in enumerate(("invoice.created", "invoice.finalized", "invoice.paid")):
        w.event(etype, at + k, inv)
    before = copy.deepcopy(sub)
    sub["items"]["data"] = [it for it in sub["items"]["data"] if it["id"] != "si_2_11"]
    w.event("customer.subscription.updated", at + 60, sub, before=before)
    with start_in_thread(w.served(T0 + 3 * DAY), api_key=KEY) as sb:
        pagings = _count_pagings(sb)
        r = run_sync(settings(sb.url), progress=False)
    assert (r.mode, r.status, r.error) == ("incremental", "succeeded", None)
    assert pagings == {("subscriptions", "sub_2"): 1, ("invoices", inv["id"]): 1}
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert sorted(con.execute("SELECT id, deleted FROM subscription_items WHERE subscription_id = 'sub_2'")
                      .fetchall()) == sorted((f"si_2_{k}", False) for k in range(11))
        assert con.execute("SELECT count(*) FROM invoice_lines WHERE invoice_id = ? AND NOT deleted",
                           [inv["id"]]).fetchone() == (12,)
    finally:
        con.close()


@pytest.mark.parametrize("status, paged", [pytest.param("paid", 1, id="finalized"),
                                            pytest.param("draft", 2, id="draft")])
def test_a_finalized_invoices_lines_are_paged_once_a_run_across_groups_of_events(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: str, paged: int) -> None:
    """An invoice of 12 lines (its events embed 10) whose events fall in two groups of one run (groups of 500 events;
    of 2 here, of pages of 2): each group's refresh retrieves it again, and its lines were paged again for each copy,
    twice a run. A finalized invoice's lines never change: they are paged once a run, and the later copy stores its
    embedded page, the rows paged staying. A draft's may change: paged for each copy still. All 12 are stored."""
    import stripe_churn.sync as sync_module

    w = _world()
    db = tmp_path / "s.duckdb"
    settings = _synced_in_full(w, db)
    w._seq = itertools.count(500)
    at = T0 + 2 * DAY
    item = w.objects["subscriptions"]["sub_1"]["items"]["data"][0]
    inv = w._invoice("sub_1", at, "manual", [w._line("sub_1", item, at, at, amount=100) for _ in range(12)])
    inv["status"] = status
    for k, etype in enumerate(("invoice.created", "invoice.updated", "invoice.updated")):
        w.event(etype, at + k, inv)
    monkeypatch.setattr(sync_module, "PAGE_LIMIT", 2)
    monkeypatch.setattr(sync_module, "EVENT_GROUP", 2)
    groups: list[set[str]] = []
    apply_events = sync_module._Sync._apply_events

    async def applied(self: Any, events: list[dict[str, Any]], *args: Any) -> None:
        groups.append({str(((e.get("data") or {}).get("object") or {}).get("id")) for e in events})
        await apply_events(self, events, *args)

    monkeypatch.setattr(sync_module._Sync, "_apply_events", applied)
    with start_in_thread(w.served(T0 + 3 * DAY), api_key=KEY) as sb:
        pagings = _count_pagings(sb)
        r = run_sync(settings(sb.url), progress=False)
    assert (r.mode, r.status, r.error) == ("incremental", "succeeded", None)
    assert sum(inv["id"] in g for g in groups) == 2, groups  # (the events of the invoice in two groups)
    assert pagings == {("invoices", inv["id"]): paged}, pagings
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM invoice_lines WHERE invoice_id = ? AND NOT deleted",
                           [inv["id"]]).fetchone() == (12,)
    finally:
        con.close()
