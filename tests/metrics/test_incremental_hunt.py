"""The incremental recompute (stripe_churn.metrics.incremental.recompute_changed, README "Recomputing only the changed
customers") against a full recompute of the same store, over three syncs: a full one, then two incremental ones,
each followed by a recompute of the customers with an object seen since the last recompute began.

Each scenario is a few customers (1-3) of one account, acct_hunt, whose changes are chosen to reach beyond the
customer itself: an untouched subscription of the customer, a neighbour, a closed month of the bridge, a cohort, one
movement window across two syncs, a change the snapshot passes with nothing seen. Two scenarios need an account of
their own: a gap in the events (where event coverage starts moves) and Stripe's clock behind this machine's. Each
sync brings what Stripe's incremental sync brings (sync.py): the events created since the last one, the objects they
name and those Stripe changes along with them (an invoice's customer and subscription, a discount's customer,
subscription and coupon, a credit note's customer and invoice), the discounts expanded on those, the subscription
items they no longer list flagged deleted, the pending invoice items new or changed (those no longer listed marked not
pending), the discounts their owners no longer list flagged deleted; every invoice comes with its event. A sync records
where the events are complete (`events:complete`, in Stripe's clock); the recompute after it begins 10 minutes after
the sync saw the objects, and the next one takes the objects seen from 5 minutes before that (README: the
margin for a clock set back).

After each incremental recompute, a copy of the store file is recomputed in full, and the two are compared: per
scenario, its rows of every derived table and of the finance views mrr_movements, customer_mrr, scheduled_churn and
data_quality; and per sync, every table and view of the whole store (the monthly ledger, which the incremental path
updates by the changed customers' old and new contributions, mrr_bridge, churn_reasons, cohort_revenue_retention).
Key rows of most scenarios are also worked out by hand from design.md 4-6, README and NOTES (the store-wide views of a
scenario computed over its customers' rows alone, by the product's own macros and step 80's ledger statement).

Timeline (UTC): the full sync S0 on 2024-05-20 00:00 (events kept from 30 days before), the first incremental sync
S1 on 2024-06-01 00:10, the second S2 on 2024-06-24 00:00.
"""
from __future__ import annotations

import copy
import datetime as dt
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from builders import DAY, World, add_months, ts

from stripe_churn.metrics import incremental
from stripe_churn.metrics.incremental import recompute_changed
from stripe_churn.metrics.runner import recompute
from stripe_churn.settings import Settings
from stripe_churn.store.db import open_store, sql_identifier
from stripe_churn.store.load import mark_unlisted_discounts, upsert_objects

D = Decimal
Obj = dict[str, Any]

S0, S1, S2 = ts(2024, 5, 20), ts(2024, 6, 1, 0, 10), ts(2024, 6, 24)
SYNCS = (S0, S1, S2)
EVENTS_KEPT = 30 * DAY  # (Stripe keeps events 30 days)
RECOMPUTE_AFTER = 600  # each recompute begins 10 minutes after its sync saw the objects
SETTINGS = Settings()

# Finance views with an account_id column (their rows attributed to the scenarios), and those summed over the whole
# store.
ACCOUNT_VIEWS = ("mrr_movements", "customer_mrr", "item_mrr", "scheduled_churn", "data_quality")
STORE_VIEWS = ("mrr_bridge", "churn_reasons", "cohort_revenue_retention")
WHOLE = "*"  # the rows of no scenario, and those of a table or view without an account_id column


# --- building the accounts --------------------------------------------------------------------------------------

def catalogue(account_id: str) -> World:
    """An empty account with its catalogue: core seats (basic 10.00 and pro 20.00 a month, pro_year 240.00 a year),
    an add-on (addon 50.00 a month, addon_year 600.00 a year), metered API calls and a one-time setup fee (50.00)."""
    w = World(account_id=account_id)
    w.objects["credit_notes"] = {}
    w.product("prod_core", unit_label="seat", family="core")
    w.product("prod_addon", family="addon")
    w.product("prod_api", unit_label="api call", family="api")
    w.price("basic", "prod_core", 1_000)
    w.price("pro", "prod_core", 2_000)
    w.price("pro_year", "prod_core", 24_000, interval="year")
    w.price("addon", "prod_addon", 5_000)
    w.price("addon_year", "prod_addon", 60_000, interval="year")
    w.price("api", "prod_api", None, usage_type="metered")
    w.price("setup", "prod_core", 5_000, interval=None)
    return w


def renew(w: World, sid: str, start: int, until: int, usage: dict[str, int] | None = None) -> None:
    """Monthly renewals of ``sid`` (begun at ``start``) up to ``until`` included."""
    n = 1
    while add_months(start, n) <= until:
        w.cycle(sid, add_months(start, n), usage=usage)
        n += 1


def neighbour(w: World, tag: str, at: int = ts(2023, 7, 1)) -> None:
    """cus_<tag>_n: one annual pro seat (20.00 a month) from ``at``, renewed after the last sync: no sync after the
    first brings anything of it."""
    w.customer(f"cus_{tag}_n")
    w.subscribe(f"sub_{tag}_n", f"cus_{tag}_n", [(f"si_{tag}_n", "pro_year", 1)], at)


def with_invoice_events(w: World) -> World:
    """``w`` as a sync finds it: every invoice with the event Stripe sent when it was finalized (`invoice.paid`, or
    `invoice.finalized` for one left open) at its creation. Returns a copy: the state at the sync."""
    evented = {e["data"]["object"]["id"] for e in w.events if e["type"].startswith("invoice.")}
    for inv in list(w.objects["invoices"].values()):
        if inv["id"] not in evented:
            w.event("invoice.paid" if inv["status"] == "paid" else "invoice.finalized", inv["created"], inv)
    return copy.deepcopy(w)


# A scenario adds its customers (cus_<tag>_<n>, with subscriptions sub_<tag>_<n> and items si_<tag>_<n>) to its
# account's World as they stand at S0, yields, makes the changes the sync at S1 brings, yields, and makes those the
# sync at S2 brings; it notes in ``hand`` the ids its hand-worked test needs.
Scenario = Callable[[World, dict[str, Any]], Iterator[None]]
SCENARIOS: dict[str, tuple[str, Scenario]] = {}


def scenario(tag: str, account_id: str = "acct_hunt") -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[tag] = (account_id, fn)
        return fn
    return register


@dataclass
class Account:
    """An account of the store: its state as each sync found it (None: no sync of it then)."""

    account_id: str
    states: list[World | None] = field(default_factory=list)
    behind: int = 0  # seconds by which Stripe's clock runs behind this machine's
    gap: tuple[int, int] | None = None  # a gap in the events the sync at S2 found: (stored end, where they begin again)


# Accounts with a property of their own (every other scenario is in acct_hunt): a sync skipped (S1) and the gap in
# the events the next one finds; Stripe's clock behind this machine's.
BEHIND = 600
ACCOUNTS = {"acct_gap": Account("acct_gap", gap=(S0, S2 - EVENTS_KEPT)),
            "acct_behind": Account("acct_behind", behind=BEHIND)}
SKIPPED = {"acct_gap": {1}}


def build_accounts() -> tuple[list[Account], dict[str, dict[str, Any]]]:
    """Every account, stage by stage, and each scenario's ``hand`` notes."""
    hand: dict[str, dict[str, Any]] = {tag: {} for tag in SCENARIOS}
    out = []
    for account_id in dict.fromkeys(a for a, _ in SCENARIOS.values()):
        w = catalogue(account_id)
        runs = [fn(w, hand[tag]) for tag, (a, fn) in SCENARIOS.items() if a == account_id]
        acct = copy.deepcopy(ACCOUNTS.get(account_id, Account(account_id)))
        for stage in range(3):
            for run in runs:
                next(run, None)
            acct.states.append(None if stage in SKIPPED.get(account_id, set()) else with_invoice_events(w))
        out.append(acct)
    return out, hand


def owners(w: World) -> dict[str, str]:
    """The scenario (tag) of each customer, subscription, item, invoice, line, discount, invoice item, credit note and
    event of ``w``."""
    out = {cid: cid.split("_")[1] for cid in w.objects["customers"]}
    for sub in w.objects["subscriptions"].values():
        out[sub["id"]] = out[sub["customer"]]
        out.update({it["id"]: out[sub["customer"]] for it in sub["items"]["data"]})
    for inv in w.objects["invoices"].values():
        out[inv["id"]] = out[inv["customer"]]
        out.update({ln["id"]: out[inv["customer"]] for ln in inv["lines"]["data"]})
    for resource in ("discounts", "invoiceitems", "credit_notes"):
        out.update({k: out[v["customer"]] for k, v in w.objects[resource].items()})
    for e in w.events:
        if e["data"]["object"]["id"] in out:
            out[e["id"]] = out[e["data"]["object"]["id"]]
    return out


# --- syncing ----------------------------------------------------------------------------------------------------

_TABLE_OF = {"customer": "customers", "subscription": "subscriptions", "invoice": "invoices",
             "discount": "discounts", "credit_note": "credit_notes", "invoiceitem": "invoiceitems"}


def _related(table: str, obj: Obj) -> set[tuple[str, str]]:
    """The object and those Stripe changes along with it, which the sync retrieves again after an event about it
    (sync._related)."""
    out = {(table, obj["id"])}
    if table in ("invoices", "credit_notes", "discounts") and obj.get("customer"):
        out.add(("customers", obj["customer"]))
    if table == "invoices":
        parent = (obj.get("parent") or {}).get("subscription_details") or {}
        if parent.get("subscription"):
            out.add(("subscriptions", parent["subscription"]))
    if table == "credit_notes":
        out.add(("invoices", obj["invoice"]))
    if table == "discounts":
        if obj.get("subscription"):
            out.add(("subscriptions", obj["subscription"]))
        out.add(("coupons", obj["source"]["coupon"]))
    return out


def incremental_sync(before: World, now: World) -> World:
    """What an incremental sync brings of ``now`` after a sync that found ``before``: the new events, the objects
    they name and those Stripe changed along with them, the discounts expanded on those, the pending invoice items new
    or changed, and any new product, price or coupon."""
    known = {e["id"] for e in before.events}
    events = [e for e in now.events if e["id"] not in known]
    wanted: set[tuple[str, str]] = set()
    for e in events:
        obj = e["data"]["object"]
        wanted |= _related(_TABLE_OF[obj["object"]], obj)
    out = World(account_id=now.account_id)
    out.objects["credit_notes"] = {}
    for table, oid in sorted(wanted):
        out.objects[table][oid] = now.objects[table][oid]
    discounts = now.objects["discounts"]
    for sub in out.objects["subscriptions"].values():
        for did in [*sub["discounts"], *(d for it in sub["items"]["data"] for d in it["discounts"])]:
            out.objects["discounts"][did] = discounts[did]
    for cus in out.objects["customers"].values():
        if isinstance(cus.get("discount"), dict):
            out.objects["discounts"][cus["discount"]["id"]] = discounts[cus["discount"]["id"]]
    out.objects["invoiceitems"] = {k: v for k, v in now.objects["invoiceitems"].items()
                                   if v["invoice"] is None and before.objects["invoiceitems"].get(k) != v}
    for table in ("products", "prices", "coupons"):
        out.objects[table].update({k: v for k, v in now.objects[table].items() if k not in before.objects[table]})
    out.events = events
    return out


def sync(con: duckdb.DuckDBPyConnection, acct: Account, stage: int) -> None:
    """Load what the sync at ``SYNCS[stage]`` brings of ``acct``: everything at S0 and after a gap in the events (a
    full listing), else what incremental_sync brings, then the pending items no longer listed marked not pending and
    the discounts their owners seen no longer list flagged deleted (sync.Syncer._mark_discounts)."""
    now = acct.states[stage]
    if now is None:
        return
    seen_at = SYNCS[stage]
    stripes = seen_at - acct.behind
    seen = dt.datetime.fromtimestamp(seen_at, tz=dt.UTC)
    aid = acct.account_id
    full = stage == 0 or acct.gap is not None
    if full:
        got = now
        now.load(con, seen_at=seen_at, events=stripes - EVENTS_KEPT)
    else:
        before = next(s for s in reversed(acct.states[:stage]) if s is not None)
        got = incremental_sync(before, now)
        got.load(con, seen_at=seen_at)
        con.execute("UPDATE invoice_items SET pending = false, last_seen_at = $seen, state_seen_at = $seen "
                    "WHERE account_id = $a AND pending AND NOT list_contains($ids, id)",
                    {"seen": seen, "a": aid, "ids": [k for k, v in now.objects["invoiceitems"].items()
                                                     if v["invoice"] is None]})
        # (a subscription's items come whole: those it no longer lists are gone, sync.Syncer._add_object)
        subs = got.objects["subscriptions"].values()
        con.execute("UPDATE subscription_items SET deleted = true, last_seen_at = $seen, state_seen_at = $seen "
                    "WHERE account_id = $a AND list_contains($subs, subscription_id) AND NOT deleted "
                    "AND NOT list_contains($ids, id)",
                    {"seen": seen, "a": aid, "subs": [sub["id"] for sub in subs],
                     "ids": [it["id"] for sub in subs for it in sub["items"]["data"]]})
        mark_unlisted_discounts(con, aid, seen, seen, stripes, whole=False)
    upsert_objects(con, "credit_notes", aid, list(got.objects["credit_notes"].values()), seen)
    if acct.behind:  # (versions are Stripe's times: of the listing, or of the events)
        for table in ("customers", "subscriptions", "subscription_items", "invoices", "invoice_lines", "discounts",
                      "invoice_items", "credit_notes", "events"):
            con.execute(f"UPDATE {table} SET version = ? WHERE account_id = ? AND last_seen_at = ?",
                        [stripes, aid, seen])
    con.execute("INSERT OR REPLACE INTO sync_cursors (account_id, stream, value, created, done, updated_at) "
                "VALUES (?, 'events:complete', NULL, ?, true, ?)", [aid, stripes, seen])
    if stage and acct.gap is not None:
        for stream in (f"events:gap:{acct.gap[0]}", "events:unbroken"):
            con.execute("INSERT INTO sync_cursors (account_id, stream, value, created, done) VALUES (?, ?, NULL, ?, "
                        "false)", [aid, stream, acct.gap[1]])


# --- reading the results ----------------------------------------------------------------------------------------

@dataclass
class Rows:
    """A table's or view's column names and rows by scenario (``WHOLE``: rows of no scenario's, such as the
    catalogue's, and those of a table or view without an account_id column)."""

    columns: list[str]
    by_tag: dict[str, list[tuple[Any, ...]]]


def _ledger_view() -> str:
    """The monthly ledger as step 80 stores it (its own statement), as a view: over a connection that sees some
    customers' rows, the ledger of those customers."""
    text = (Path(incremental.__file__).parent / "80_mrr_bridge.sql").read_text(encoding="utf-8")
    found = re.search(r"CREATE OR REPLACE TABLE derived_bridge_ledger_month AS\n(.*?);\n", text, re.S)
    assert found is not None
    return "CREATE TEMP VIEW derived_bridge_ledger_month AS\n" + found.group(1)


def _tag_of(columns: list[str], owner: dict[str, str]) -> Callable[[tuple[Any, ...]], str]:
    """How a row of a table or view with these columns is attributed to a scenario: by its customer, else its
    subscription, else (data quality) the object it names or the related one."""
    for keys in (["customer_id"], ["subscription_id"], ["object_id", "related_id"]):
        if all(k in columns for k in keys):
            at = [columns.index(k) for k in keys]
            return lambda r: next((owner[r[i]] for i in at if r[i] in owner), WHOLE)
    return lambda r: WHOLE


def contents(con: duckdb.DuckDBPyConnection, owner: dict[str, str],
             per_scenario: dict[str, tuple[list[str], tuple[str, ...]]] | None = None) -> dict[str, Rows]:
    """Every persistent derived table and finance view, by scenario; with ``per_scenario`` (tag -> its customers and
    some of ``STORE_VIEWS``), those store-wide views of those scenarios too, over their rows alone (a second
    connection whose transitions, movements and customers are the scenario's, and whose ledger is step 80's over
    them)."""
    names = [r[0] for r in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = 'main' "
        "AND table_name LIKE 'derived%' ORDER BY 1").fetchall()]
    out: dict[str, Rows] = {}
    for name in [*names, *ACCOUNT_VIEWS, *STORE_VIEWS]:
        cur = con.execute(f"SELECT * FROM {name}")
        columns = [d[0] for d in cur.description]
        tag_of = _tag_of(columns, owner)
        by: dict[str, list[tuple[Any, ...]]] = {}
        for r in cur.fetchall():
            by.setdefault(tag_of(r), []).append(r)
        out[name] = Rows(columns, by)
    if not per_scenario:
        return out
    db = sql_identifier(con.execute("SELECT current_database()").fetchall()[0][0])
    one = con.cursor()
    try:
        one.execute("CREATE TEMP TABLE hunt_customers (customer_id VARCHAR)")
        for table, key in (("derived_transition_states", "customer_id"), ("derived_mrr_movements", "customer_id"),
                           ("customers", "id")):
            one.execute(f"CREATE TEMP VIEW {table} AS SELECT * FROM {db}.main.{table} "
                        f"WHERE {key} IN (SELECT customer_id FROM hunt_customers)")
        one.execute(_ledger_view())
        for tag, (customers, views) in per_scenario.items():
            one.execute("DELETE FROM hunt_customers")
            one.executemany("INSERT INTO hunt_customers VALUES (?)", [[c] for c in customers])
            for name in views:
                out[name].by_tag[tag] = one.execute(f"SELECT * FROM {name}").fetchall()
    finally:
        one.close()
    return out


@dataclass
class Stage:
    """After one incremental sync: the customers derived again (touched, or only moved), the recompute's mode
    (metrics_runs), and the results of the incremental recompute and of a full recompute of the same store."""

    touched: set[str]
    moved: set[str]
    mode: str
    incremental: dict[str, Rows]
    full: dict[str, Rows]


@dataclass
class Chain:
    hand: dict[str, dict[str, Any]]
    customers: dict[str, list[str]]  # per scenario
    stages: dict[int, Stage]


# The store-wide views the hand-worked tests read, computed over their scenario's rows alone.
HAND_VIEWS = {"cdisc": ("mrr_bridge",), "trial": STORE_VIEWS, "comeback": ("mrr_bridge", "cohort_revenue_retention"),
              "window": ("mrr_bridge",), "void": ("mrr_bridge",)}


def build_chain(folder: Path, migrated: Path) -> Chain:
    """The store of every scenario: synced at S0 and recomputed in full, then synced at S1 and at S2, each sync
    followed by the incremental recompute, and a copy of the store recomputed in full."""
    accounts, hand = build_accounts()
    owner: dict[str, str] = {}
    for a in accounts:
        owner.update(owners(next(s for s in reversed(a.states) if s is not None)))
    customers: dict[str, list[str]] = {tag: [] for tag in SCENARIOS}
    for k, tag in owner.items():
        if k.startswith("cus_"):
            customers[tag].append(k)
    path = folder / "stripe-churn.duckdb"
    shutil.copyfile(migrated, path)
    stages = {}
    for stage in range(3):
        con = open_store(path)
        try:
            con.execute("BEGIN TRANSACTION")
            for a in accounts:
                sync(con, a, stage)
            con.execute("COMMIT")
            if not stage:
                recompute(con, SETTINGS)
        finally:
            con.close()
        if not stage:
            continue
        full_path = folder / f"full-{stage}.duckdb"
        shutil.copyfile(path, full_path)
        since = dt.datetime.fromtimestamp(SYNCS[stage - 1] + RECOMPUTE_AFTER, tz=dt.UTC) - incremental.CLOCK_MARGIN

        con = open_store(path)
        try:
            recompute_changed(con, SETTINGS, since)
            touched = {r[0] for r in con.execute("SELECT customer_id FROM touched_customers").fetchall()}
            moved = {r[0] for r in con.execute("SELECT customer_id FROM moved_customers").fetchall()}
            mode = con.execute("SELECT mode FROM metrics_runs ORDER BY started_at DESC LIMIT 1").fetchall()[0][0]
            inc = contents(con, owner, {tag: (customers[tag], views) for tag, views in HAND_VIEWS.items()})
        finally:
            con.close()
        con = open_store(full_path)
        try:
            recompute(con, SETTINGS)
            full = contents(con, owner)
        finally:
            con.close()
        stages[stage] = Stage(touched, moved, mode, inc, full)
    return Chain(hand, customers, stages)


def differences(stage: Stage, tag: str) -> dict[str, tuple[list[str], list[str]]]:
    """Per table or view, the rows of scenario ``tag`` (``WHOLE``: of none, or of the whole store) that only the
    incremental recompute has, and those only the full one has. (The store-wide views computed per scenario exist for
    the incremental store alone: they are functions of the scenario's rows of derived_transition_states,
    derived_mrr_movements and customers, compared here, and of tables of no scenario, compared under ``WHOLE``.)"""
    out = {}
    for name, full in stage.full.items():
        if name in STORE_VIEWS and tag != WHOLE:
            continue
        a = sorted(map(repr, stage.incremental[name].by_tag.get(tag, [])))
        b = sorted(map(repr, full.by_tag.get(tag, [])))
        if a != b:
            out[name] = ([r for r in a if r not in b], [r for r in b if r not in a])
    return out


def rows(chain: Chain, stage: int, name: str, tag: str, **where: Any) -> list[dict[str, Any]]:
    """The incremental recompute's rows of ``name`` for scenario ``tag`` after the sync ``stage``, as dicts, those
    whose columns equal ``where``."""
    got = chain.stages[stage].incremental[name]
    out = [dict(zip(got.columns, r, strict=True)) for r in got.by_tag.get(tag, [])]
    return [r for r in out if all(r[k] == v for k, v in where.items())]


def at(t: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path) -> Chain:
    return build_chain(tmp_path_factory.mktemp("incremental_hunt"), migrated_store_file)


# --- the scenarios ----------------------------------------------------------------------------------------------

DISC_ON, DISC_OFF = ts(2024, 5, 28, 10), ts(2024, 6, 12, 9)


@scenario("cdisc")
def customer_discount(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_cdisc_1: sub_cdisc_2, the add-on yearly from 15 November 2023 (50.00), and sub_cdisc_1, two pro seats monthly
    from 10 January (40.00, renewed on the 10th). A 20% forever discount put on the customer on 28 May 10:00 (sync 1:
    the customer and the discount alone), taken off on 12 June 09:00 (sync 2, with sub_cdisc_1's renewal of 10 June):
    sub_cdisc_2 is in neither sync."""
    w.customer("cus_cdisc_1")
    w.subscribe("sub_cdisc_2", "cus_cdisc_1", [("si_cdisc_2", "addon_year", 1)], ts(2023, 11, 15))
    w.subscribe("sub_cdisc_1", "cus_cdisc_1", [("si_cdisc_1", "pro", 2)], ts(2024, 1, 10))
    renew(w, "sub_cdisc_1", ts(2024, 1, 10), S0)
    yield
    w.coupon("co_cdisc", percent_off=20)
    d = w.discount("co_cdisc", DISC_ON, customer="cus_cdisc_1", did="di_cdisc")
    w.objects["customers"]["cus_cdisc_1"]["discount"] = d
    hand["on"] = w.event("customer.discount.created", DISC_ON, d)["id"]
    yield
    w.cycle("sub_cdisc_1", ts(2024, 6, 10))
    hand["off"] = w.event("customer.discount.deleted", DISC_OFF, d)["id"]
    d["deleted"] = True
    w.objects["customers"]["cus_cdisc_1"]["discount"] = None


TRIAL_END, PAST_DUE, UNPAID, DELETED = ts(2024, 5, 29), ts(2024, 5, 29, 1, 30), ts(2024, 6, 12), ts(2024, 6, 20)


@scenario("trial")
def trial_to_deleted(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_trial_1: sub_trial_1, three pro seats (60.00) trialing from 15 to 29 May (sync 0: trialing). Sync 1: the
    trial ended on 29 May 00:00 (active, its invoice) and the payment failed (past_due at 01:30). Sync 2: unpaid on 12
    June, deleted on 20 June. cus_trial_n: an annual neighbour."""
    neighbour(w, "trial")
    w.customer("cus_trial_1")
    w.subscribe("sub_trial_1", "cus_trial_1", [("si_trial_1", "pro", 3)], ts(2024, 5, 15), trial_end=TRIAL_END)
    yield
    w.update("sub_trial_1", TRIAL_END, status="active")
    w.cycle("sub_trial_1", TRIAL_END)
    w.update("sub_trial_1", PAST_DUE, status="past_due")
    yield
    w.update("sub_trial_1", UNPAID, status="unpaid")
    hand["unpaid"] = w.events[-1]["id"]
    w.update("sub_trial_1", DELETED, event=False, canceled_at=DELETED,
             cancellation_details={"reason": "cancellation_requested", "feedback": None, "comment": None})
    w.end("sub_trial_1", DELETED)


@scenario("latepay")
def invoice_paid_late(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_latepay_1: one pro seat (20.00) from 15 February, billed by invoice (send_invoice); the renewal of 15 May is
    open at sync 0 and paid on 27 May (sync 1: the invoice's status alone, and what Stripe changes with it: its
    customer and subscription, as they were); sync 2 brings the renewal of 15 June."""
    w.customer("cus_latepay_1")
    w.subscribe("sub_latepay_1", "cus_latepay_1", [("si_latepay_1", "pro", 1)],
                ts(2024, 2, 15))["collection_method"] = "send_invoice"
    renew(w, "sub_latepay_1", ts(2024, 2, 15), S0)
    late = w.objects["invoices"][list(w.objects["invoices"])[-1]]
    late.update(status="open", amount_paid=0)
    late["status_transitions"]["paid_at"] = None
    yield
    late.update(status="paid", amount_paid=late["total"])
    late["status_transitions"]["paid_at"] = ts(2024, 5, 27, 9)
    w.event("invoice.paid", ts(2024, 5, 27, 9), late)
    yield
    w.cycle("sub_latepay_1", ts(2024, 6, 15))


SEAT_ADDED, PENDING_BILLED = ts(2024, 5, 25, 12), ts(2024, 6, 15)


@scenario("pending")
def pending_item_billed_later(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_pending_1: two annual pro seats (2 x 240.00 a year: 40.00 a month) from 1 September 2023. On 25 May 12:00 a
    third seat, with Stripe's default create_prorations: the prorations wait as pending invoice items (sync 1 lists
    them). On 15 June they are invoiced by hand (sync 2: the invoice; the items no longer pending)."""
    w.customer("cus_pending_1")
    w.subscribe("sub_pending_1", "cus_pending_1", [("si_pending_1", "pro_year", 2)], ts(2023, 9, 1))
    yield
    w.update("sub_pending_1", SEAT_ADDED, items=[("si_pending_1", "pro_year", 3)], pending=True)
    hand["event"] = w.events[-1]["id"]
    hand["charge"] = next(i["id"] for i in w.objects["invoiceitems"].values()
                          if i["customer"] == "cus_pending_1" and i["amount"] > 0)
    yield
    hand["bill"] = w.bill_pending("sub_pending_1", PENDING_BILLED, reason="manual")["id"]


@scenario("oneoff")
def one_time_item_and_credit_note(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_oneoff_1: two basic seats (20.00) monthly from 12 February. Sync 1: a one-time setup fee (50.00) added on 26
    May as a pending invoice item for the next invoice, and a credit note of 5.00 on 28 May on the renewal of 12 May.
    Sync 2: the renewal of 12 June, which bills the setup fee too. Neither changes MRR (design.md 4)."""
    w.customer("cus_oneoff_1")
    w.subscribe("sub_oneoff_1", "cus_oneoff_1", [("si_oneoff_1", "basic", 2)], ts(2024, 2, 12))
    renew(w, "sub_oneoff_1", ts(2024, 2, 12), S0)
    may = w.objects["invoices"][list(w.objects["invoices"])[-1]]
    yield
    fee_at = ts(2024, 5, 26, 15)
    fee: Obj = {"id": "ii_oneoff_setup", "object": "invoiceitem", "amount": 5_000, "currency": "usd",
                "customer": "cus_oneoff_1", "date": fee_at, "description": "Setup", "discountable": True,
                "discounts": [], "invoice": None, "livemode": False, "metadata": {},
                "parent": {"type": "subscription_details",
                           "subscription_details": {"subscription": "sub_oneoff_1", "subscription_item": None}},
                "period": {"start": fee_at, "end": fee_at},
                "pricing": {"type": "price_details", "price_details": {"price": "setup", "product": "prod_core"},
                            "unit_amount_decimal": "5000"},
                "proration": False, "proration_details": {"credited_items": None}, "quantity": 1, "tax_rates": [],
                "test_clock": None}
    w.objects["invoiceitems"][fee["id"]] = fee
    w.event("invoiceitem.created", fee_at, fee)
    note: Obj = {"id": "cn_oneoff", "object": "credit_note", "created": ts(2024, 5, 28), "customer": "cus_oneoff_1",
                 "invoice": may["id"], "status": "issued", "currency": "usd", "total": 500, "amount": 500,
                 "reason": "order_change", "type": "post_payment", "livemode": False, "metadata": {},
                 "lines": {"object": "list", "has_more": False, "url": "/v1/credit_notes/cn_oneoff/lines",
                           "data": [{"id": "cnli_oneoff", "object": "credit_note_line_item", "amount": 500,
                                     "quantity": 1, "type": "custom_line_item", "description": "Goodwill"}]}}
    w.objects["credit_notes"][note["id"]] = note
    w.event("credit_note.created", note["created"], note)
    yield
    june = w.cycle("sub_oneoff_1", ts(2024, 6, 12))
    first = june["lines"]["data"][0]
    june["lines"]["data"].append({
        **first, "id": "il_oneoff_setup", "amount": 5_000, "quantity": 1, "period": {"start": fee_at, "end": fee_at},
        "parent": {"type": "invoice_item_details", "subscription_item_details": None,
                   "invoice_item_details": {"invoice_item": fee["id"], "proration": False,
                                            "subscription": "sub_oneoff_1"}},
        "pricing": {"type": "price_details", "price_details": {"price": "setup", "product": "prod_core"},
                    "unit_amount_decimal": "5000"}})
    fee["invoice"] = june["id"]


COMEBACK = ts(2024, 6, 12, 16)


@scenario("comeback")
def comeback_after_ten_months(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_comeback_1: three basic seats (30.00) monthly from 1 February 2023, canceled at once on 15 August 2023
    (too_expensive). cus_comeback_2: one annual pro seat (20.00) from 10 February 2023, renewed on 10 February 2024:
    the same February 2023 cohort, untouched by the later syncs. Sync 2: cus_comeback_1 comes back on 12 June 2024
    16:00 with two pro seats (40.00)."""
    w.customer("cus_comeback_1")
    w.subscribe("sub_comeback_1", "cus_comeback_1", [("si_comeback_1", "basic", 3)], ts(2023, 2, 1))
    renew(w, "sub_comeback_1", ts(2023, 2, 1), ts(2023, 8, 1))
    w.cancel("sub_comeback_1", ts(2023, 8, 15), feedback="too_expensive")
    w.customer("cus_comeback_2")
    w.subscribe("sub_comeback_2", "cus_comeback_2", [("si_comeback_2", "pro_year", 1)], ts(2023, 2, 10))
    w.cycle("sub_comeback_2", ts(2024, 2, 10))
    yield
    yield
    w.subscribe("sub_comeback_3", "cus_comeback_1", [("si_comeback_3", "pro", 2)], COMEBACK)


@scenario("metered")
def metered_usage_only(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_metered_1: one basic seat (10.00) and metered API calls from 1 March; usage of 80.00 billed on 1 April and of
    100.00 on 1 May. Sync 1 brings only the renewal of 1 June 00:00, billing 123.45 of May's usage."""
    w.customer("cus_metered_1")
    w.subscribe("sub_metered_1", "cus_metered_1", [("si_metered_1", "basic", 1), ("si_metered_m", "api", None)],
                ts(2024, 3, 1))
    w.cycle("sub_metered_1", ts(2024, 4, 1), usage={"si_metered_m": 8_000})
    w.cycle("sub_metered_1", ts(2024, 5, 1), usage={"si_metered_m": 10_000})
    yield
    hand["invoice"] = w.cycle("sub_metered_1", ts(2024, 6, 1), usage={"si_metered_m": 12_345})["id"]
    yield


@scenario("gap", "acct_gap")
def events_gap(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """acct_gap is synced at S0, then only at S2, 35 days later: Stripe no longer has the events of 20 to 25 May, so
    the sync lists everything again and event coverage starts again on 25 May (README: where event coverage starts
    changed, so the whole account is derived again). cus_gap_1: two pro seats monthly from 5 January, four from 22 May
    10:00 (in the lost days; its proration invoice is listed), renewed on 5 June; cus_gap_2 new on 10 June;
    cus_gap_n: an annual neighbour."""
    neighbour(w, "gap")
    w.customer("cus_gap_1")
    w.subscribe("sub_gap_1", "cus_gap_1", [("si_gap_1", "pro", 2)], ts(2024, 1, 5))
    renew(w, "sub_gap_1", ts(2024, 1, 5), S0)
    yield
    yield
    w.update("sub_gap_1", ts(2024, 5, 22, 10), items=[("si_gap_1", "pro", 4)])
    w.cycle("sub_gap_1", ts(2024, 6, 5))
    w.customer("cus_gap_2")
    w.subscribe("sub_gap_2", "cus_gap_2", [("si_gap_2", "basic", 1)], ts(2024, 6, 10))


CANCEL_ASKED, PERIOD_END = ts(2024, 5, 28, 9), ts(2024, 6, 15)


@scenario("sched")
def cancel_at_period_end(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_sched_1: two pro seats (40.00) monthly from 15 March, with a 25% coupon for 4 months (30.00 until 15 July).
    Sync 1: on 28 May 09:00 the customer asks to cancel at the period's end, 15 June (feedback unused). Sync 2: it
    ends then."""
    w.customer("cus_sched_1")
    w.coupon("co_sched", percent_off=25, duration="repeating", duration_in_months=4)
    d = w.discount("co_sched", ts(2024, 3, 15), customer="cus_sched_1", subscription="sub_sched_1")
    w.subscribe("sub_sched_1", "cus_sched_1", [("si_sched_1", "pro", 2)], ts(2024, 3, 15), discounts=[d["id"]])
    renew(w, "sub_sched_1", ts(2024, 3, 15), S0)
    yield
    w.update("sub_sched_1", CANCEL_ASKED, cancel_at_period_end=True, cancel_at=PERIOD_END, canceled_at=CANCEL_ASKED,
             cancellation_details={"reason": "cancellation_requested", "feedback": "unused", "comment": None})
    yield
    w.end("sub_sched_1", PERIOD_END)


SAME_MINUTE = ts(2024, 5, 30, 10)


@scenario("minute")
def two_customers_in_one_minute(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_minute_1: two pro seats, cus_minute_2: four basic seats, both monthly from 1 February. Sync 1: on 30 May
    cus_minute_1 goes to three seats at 10:00:00 and cus_minute_2 to three at 10:00:30; both renew on 1 June 00:00."""
    for n, price, seats in ((1, "pro", 2), (2, "basic", 4)):
        w.customer(f"cus_minute_{n}")
        w.subscribe(f"sub_minute_{n}", f"cus_minute_{n}", [(f"si_minute_{n}", price, seats)], ts(2024, 2, 1))
        renew(w, f"sub_minute_{n}", ts(2024, 2, 1), S0)
    yield
    w.update("sub_minute_1", SAME_MINUTE, items=[("si_minute_1", "pro", 3)])
    w.update("sub_minute_2", SAME_MINUTE + 30, items=[("si_minute_2", "basic", 3)])
    for n in (1, 2):
        w.cycle(f"sub_minute_{n}", ts(2024, 6, 1))
    yield


CUSTOMER_DELETED = ts(2024, 5, 30, 14)


@scenario("deleted")
def customer_deleted(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_deleted_1: one pro seat (20.00) monthly from 3 March; cus_deleted_n: an annual neighbour. Sync 1:
    cus_deleted_1 deleted in Stripe on 30 May 14:00, which cancels its subscription at once
    (customer.subscription.deleted, then customer.deleted, in the same second)."""
    neighbour(w, "deleted")
    w.customer("cus_deleted_1")
    w.subscribe("sub_deleted_1", "cus_deleted_1", [("si_deleted_1", "pro", 1)], ts(2024, 3, 3))
    renew(w, "sub_deleted_1", ts(2024, 3, 3), S0)
    yield
    w.cancel("sub_deleted_1", CUSTOMER_DELETED)
    cus = w.objects["customers"]["cus_deleted_1"]
    w.event("customer.deleted", CUSTOMER_DELETED, cus)
    cus["deleted"] = True
    yield


SEAT_UP, SEAT_DOWN = S1 - 20 * 60, S1 + 20 * 60


@scenario("window")
def one_window_across_two_syncs(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_window_1: two pro seats (40.00) monthly from 7 February. A third seat on 31 May 23:50 (sync 1, 20 minutes
    before it), taken off again on 1 June 00:30 (sync 2), both with proration invoices: one 60-minute movement window
    spanning the two syncs and two months; sync 2 also brings the renewal of 7 June."""
    w.customer("cus_window_1")
    w.subscribe("sub_window_1", "cus_window_1", [("si_window_1", "pro", 2)], ts(2024, 2, 7))
    renew(w, "sub_window_1", ts(2024, 2, 7), S0)
    yield
    w.update("sub_window_1", SEAT_UP, items=[("si_window_1", "pro", 3)])
    yield
    w.update("sub_window_1", SEAT_DOWN, items=[("si_window_1", "pro", 2)])
    w.cycle("sub_window_1", ts(2024, 6, 7))


@scenario("behind", "acct_behind")
def stripes_clock_behind(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """acct_behind: Stripe's clock runs 10 minutes behind this machine's (each sync's events are complete up to its time
    less 10 minutes; versions are Stripe's times). cus_behind_1: one pro seat monthly from 10 March; two seats on 29 May
    (sync 1), four on 1 June 00:05 in Stripe's clock (sync 2): after sync 1's listing, but before the recompute after
    it began (00:20 by this machine's clock); renewed on 10 June. cus_behind_3: one basic seat monthly from 25 March,
    renewed on 25 May with two seats added at 12:00 (sync 1), in no later sync (its subscription's seen_at moves with
    the snapshot). cus_behind_n: an annual neighbour."""
    neighbour(w, "behind")
    w.customer("cus_behind_1")
    w.subscribe("sub_behind_1", "cus_behind_1", [("si_behind_1", "pro", 1)], ts(2024, 3, 10))
    renew(w, "sub_behind_1", ts(2024, 3, 10), S0 - BEHIND)
    w.customer("cus_behind_3")
    w.subscribe("sub_behind_3", "cus_behind_3", [("si_behind_3", "basic", 1)], ts(2024, 3, 25))
    renew(w, "sub_behind_3", ts(2024, 3, 25), S0 - BEHIND)
    yield
    w.cycle("sub_behind_3", ts(2024, 5, 25))
    w.update("sub_behind_3", ts(2024, 5, 25, 12), items=[("si_behind_3", "basic", 3)])
    w.update("sub_behind_1", ts(2024, 5, 29), items=[("si_behind_1", "pro", 2)])
    yield
    w.update("sub_behind_1", S1 - BEHIND + 300, items=[("si_behind_1", "pro", 4)])
    w.cycle("sub_behind_1", ts(2024, 6, 10))


VOIDED, UPGRADED = ts(2024, 6, 20, 12), ts(2023, 12, 10)


@scenario("void")
def failed_upgrade_invoice_voided_months_later(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_void_1: three pro seats (60.00) monthly from 1 October 2023. On 10 December 2023 (long before the events
    kept) five seats, with prorations: the subscription_update invoice's payment was attempted and failed, and it stays
    open; the renewals from 1 January bill five seats (that of 1 June in sync 1). Sync 2: on 20 June 12:00 the
    December update invoice is voided by hand. cus_void_n: an annual neighbour from 1 June 2023."""
    neighbour(w, "void", at=ts(2023, 6, 1))
    w.customer("cus_void_1")
    w.subscribe("sub_void_1", "cus_void_1", [("si_void_1", "pro", 3)], ts(2023, 10, 1))
    renew(w, "sub_void_1", ts(2023, 10, 1), ts(2023, 12, 1))
    w.update("sub_void_1", UPGRADED, items=[("si_void_1", "pro", 5)])
    upgrade = w.objects["invoices"][list(w.objects["invoices"])[-1]]
    upgrade.update(status="open", amount_paid=0, attempted=True, attempt_count=1)
    upgrade["status_transitions"]["paid_at"] = None
    renew(w, "sub_void_1", ts(2023, 12, 1), S0)
    hand["upgrade"] = upgrade["id"]
    hand["january"] = next(i["id"] for i in w.objects["invoices"].values()
                           if i["customer"] == "cus_void_1" and i["created"] == ts(2024, 1, 1))
    yield
    w.cycle("sub_void_1", ts(2024, 6, 1))
    yield
    upgrade.update(status="void")
    upgrade["status_transitions"]["voided_at"] = VOIDED
    w.event("invoice.voided", VOIDED, upgrade)


@scenario("voidrenewal")
def old_renewal_voided(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_voidrenewal_1: three pro seats (60.00) monthly from 1 October 2023, billed by invoice. Five seats from 20
    November 2023 without prorations (long before the events kept): the renewal of 1 December first bills them, and is
    left open; the later renewals are paid (that of 1 June in sync 1). Sync 2: on 20 June 12:00 the December renewal is
    voided."""
    w.customer("cus_voidrenewal_1")
    w.subscribe("sub_voidrenewal_1", "cus_voidrenewal_1", [("si_voidrenewal_1", "pro", 3)],
                ts(2023, 10, 1))["collection_method"] = "send_invoice"
    w.cycle("sub_voidrenewal_1", ts(2023, 11, 1))
    w.update("sub_voidrenewal_1", ts(2023, 11, 20), items=[("si_voidrenewal_1", "pro", 5)], prorate=False)
    december = w.cycle("sub_voidrenewal_1", ts(2023, 12, 1))
    december.update(status="open", amount_paid=0)
    december["status_transitions"]["paid_at"] = None
    renew(w, "sub_voidrenewal_1", ts(2023, 12, 1), S0)
    yield
    w.cycle("sub_voidrenewal_1", ts(2024, 6, 1))
    yield
    december.update(status="void")
    december["status_transitions"]["voided_at"] = VOIDED
    w.event("invoice.voided", VOIDED, december)


LAG_TRIAL_END, LAG_PROCESSED = ts(2024, 6, 1), ts(2024, 6, 1, 0, 40)


@scenario("lagtrial")
def trial_end_processed_after_the_sync(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_lagtrial_1: one pro seat trialing from 18 May to 1 June 00:00. Stripe ends a trial up to an hour late: the
    subscription turns active, and its first invoice is made, only at 00:40, after the sync of 00:10, which brings
    nothing of it, though its snapshot has passed the trial's end. Sync 2 brings the update and the invoice."""
    w.customer("cus_lagtrial_1")
    w.subscribe("sub_lagtrial_1", "cus_lagtrial_1", [("si_lagtrial_1", "pro", 1)], ts(2024, 5, 18),
                trial_end=LAG_TRIAL_END)
    yield
    yield
    w.update("sub_lagtrial_1", LAG_PROCESSED, status="active")
    w.cycle("sub_lagtrial_1", LAG_PROCESSED)


UNPAID_SINCE, PAID_OFF = ts(2024, 3, 20), ts(2024, 5, 25, 10)


@scenario("paidoff")
def unpaid_spell_paid_off(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_paidoff_1: two pro seats (40.00) monthly from 5 January. The renewal of 5 March failed, its invoice was
    marked uncollectible on 20 March and the subscription went unpaid then (long before the events kept): at sync 0 it
    is unpaid. Sync 1: on 25 May 10:00 the customer pays that invoice, and Stripe makes the subscription active again
    (customer.subscription.updated). cus_paidoff_n: an annual neighbour."""
    neighbour(w, "paidoff")
    w.customer("cus_paidoff_1")
    w.subscribe("sub_paidoff_1", "cus_paidoff_1", [("si_paidoff_1", "pro", 2)], ts(2024, 1, 5))
    renew(w, "sub_paidoff_1", ts(2024, 1, 5), ts(2024, 3, 5))
    failed = w.objects["invoices"][list(w.objects["invoices"])[-1]]
    failed.update(status="uncollectible", amount_paid=0, attempted=True, attempt_count=4)
    failed["status_transitions"].update(paid_at=None, marked_uncollectible_at=UNPAID_SINCE)
    w.update("sub_paidoff_1", ts(2024, 3, 5, 1), status="past_due")
    w.update("sub_paidoff_1", UNPAID_SINCE, status="unpaid")
    yield
    failed.update(status="paid", amount_paid=failed["total"])
    failed["status_transitions"]["paid_at"] = PAID_OFF
    w.event("invoice.paid", PAID_OFF, failed)
    w.update("sub_paidoff_1", PAID_OFF, status="active")
    yield


ADDON_DROPPED = ts(2024, 5, 27, 15)


@scenario("drop")
def add_on_removed(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_drop_1: two pro seats (si_drop_1, 40.00) and the add-on (si_drop_2, 50.00) monthly from 20 February,
    renewed on the 20th (20 May 00:00, at sync 0). Sync 1: the add-on removed on 27 May 15:00, with its proration
    credit (the subscription's item list no longer has it). Sync 2: the renewal of 20 June."""
    w.customer("cus_drop_1")
    w.subscribe("sub_drop_1", "cus_drop_1", [("si_drop_1", "pro", 2), ("si_drop_2", "addon", 1)], ts(2024, 2, 20))
    renew(w, "sub_drop_1", ts(2024, 2, 20), S0)
    yield
    w.update("sub_drop_1", ADDON_DROPPED, items=[("si_drop_1", "pro", 2)])
    yield
    w.cycle("sub_drop_1", ts(2024, 6, 20))


COUPON_FROM, COUPON_TO = ts(2024, 5, 10), ts(2024, 6, 10)


@scenario("runout")
def customer_coupon_runs_out_between_syncs(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_runout_1: one annual pro seat (sub_runout_1, 20.00) and the add-on yearly (sub_runout_2, 50.00), both renewed
    after the last sync; a 10% customer-wide coupon for one month from 10 May (63.00 until 10 June). Nothing of it
    changes in Stripe after sync 0: the coupon runs out on 10 June, between the two incremental syncs, which bring
    nothing of the customer (its change shows once the snapshot passes it: derived again from its stored MRR)."""
    w.customer("cus_runout_1")
    w.subscribe("sub_runout_1", "cus_runout_1", [("si_runout_1", "pro_year", 1)], ts(2023, 8, 20))
    w.subscribe("sub_runout_2", "cus_runout_1", [("si_runout_2", "addon_year", 1)], ts(2023, 9, 1))
    w.coupon("co_runout", percent_off=10, duration="repeating", duration_in_months=1)
    d = w.discount("co_runout", COUPON_FROM, customer="cus_runout_1", did="di_runout")
    assert d["end"] == COUPON_TO
    w.objects["customers"]["cus_runout_1"]["discount"] = d
    w.event("customer.discount.created", COUPON_FROM, d)
    yield
    yield


LAG_CANCEL_AT, LAG_ENDED = ts(2024, 6, 1), ts(2024, 6, 1, 0, 40)


@scenario("lagcancel")
def cancellation_processed_after_the_sync(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_lagcancel_1: two basic seats (20.00) monthly from 1 March; on 15 May it asked to cancel at the period's end,
    1 June 00:00 (too_complex). Stripe ends it then, but sends customer.subscription.deleted only at 00:40, after the
    sync of 00:10, which brings nothing of it though its snapshot has passed the period's end; sync 2 brings the
    deletion."""
    w.customer("cus_lagcancel_1")
    w.subscribe("sub_lagcancel_1", "cus_lagcancel_1", [("si_lagcancel_1", "basic", 2)], ts(2024, 3, 1))
    renew(w, "sub_lagcancel_1", ts(2024, 3, 1), S0)
    w.update("sub_lagcancel_1", ts(2024, 5, 15, 8), cancel_at_period_end=True, cancel_at=LAG_CANCEL_AT,
             canceled_at=ts(2024, 5, 15, 8),
             cancellation_details={"reason": "cancellation_requested", "feedback": "too_complex", "comment": None})
    yield
    yield
    w.objects["subscriptions"]["sub_lagcancel_1"].update(status="canceled", ended_at=LAG_CANCEL_AT)
    w.event("customer.subscription.deleted", LAG_ENDED, w.objects["subscriptions"]["sub_lagcancel_1"])


SUB_DISC_OFF = ts(2024, 5, 30, 16)


@scenario("subdisc")
def subscription_discount_taken_off(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_subdisc_1: three pro seats (60.00) monthly from 12 March with a 15% forever discount of the subscription's
    (51.00). Sync 1: an update on 30 May 16:00 takes it off (the subscription's discounts empty; the sync flags the
    discount deleted, its owner no longer listing it). Sync 2: the renewal of 12 June."""
    w.customer("cus_subdisc_1")
    w.coupon("co_subdisc", percent_off=15)
    d = w.discount("co_subdisc", ts(2024, 3, 12), customer="cus_subdisc_1", subscription="sub_subdisc_1",
                   did="di_subdisc")
    w.subscribe("sub_subdisc_1", "cus_subdisc_1", [("si_subdisc_1", "pro", 3)], ts(2024, 3, 12), discounts=[d["id"]])
    renew(w, "sub_subdisc_1", ts(2024, 3, 12), S0)
    yield
    w.update("sub_subdisc_1", SUB_DISC_OFF, discounts=[])
    hand["event"] = w.events[-1]["id"]
    yield
    w.cycle("sub_subdisc_1", ts(2024, 6, 12))


@scenario("country")
def customer_moved_country(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_country_1: one pro seat monthly from 15 January, in the US. Sync 1: only the customer, moved to Germany on
    27 May (customer.updated). Sync 2: the renewal of 15 June."""
    w.customer("cus_country_1")
    w.subscribe("sub_country_1", "cus_country_1", [("si_country_1", "pro", 1)], ts(2024, 1, 15))
    renew(w, "sub_country_1", ts(2024, 1, 15), S0)
    yield
    cus = w.objects["customers"]["cus_country_1"]
    cus["address"] = {"country": "DE"}
    w.event("customer.updated", ts(2024, 5, 27), cus)
    yield
    w.cycle("sub_country_1", ts(2024, 6, 15))


ITEM_DISC_OFF = ts(2024, 5, 29, 11)


@scenario("itemdisc")
def item_discount_taken_off(w: World, hand: dict[str, Any]) -> Iterator[None]:
    """cus_itemdisc_1: sub_itemdisc_1 from 5 February, two pro seats (si_itemdisc_1, 40.00) and the add-on
    (si_itemdisc_2) with a 50% forever discount of its own (25.00): 65.00, renewed on the 5th. Sync 1: an update on 29
    May 11:00 takes the discount off si_itemdisc_2 (no event of the discount's own: the sync flags it deleted, as its
    owner no longer lists it). Sync 2: the renewal of 5 June."""
    w.customer("cus_itemdisc_1")
    w.coupon("co_itemdisc", percent_off=50)
    d = w.discount("co_itemdisc", ts(2024, 2, 5), customer="cus_itemdisc_1", subscription="sub_itemdisc_1",
                   subscription_item="si_itemdisc_2", did="di_itemdisc")
    w.subscribe("sub_itemdisc_1", "cus_itemdisc_1", [("si_itemdisc_1", "pro", 2), ("si_itemdisc_2", "addon", 1)],
                ts(2024, 2, 5))
    sub = w.objects["subscriptions"]["sub_itemdisc_1"]
    for obj in (sub, w.events[-1]["data"]["object"]):
        obj["items"]["data"][1]["discounts"] = [d["id"]]
    renew(w, "sub_itemdisc_1", ts(2024, 2, 5), S0)
    for inv in w.objects["invoices"].values():
        for line in inv["lines"]["data"]:
            if line["parent"]["subscription_item_details"]["subscription_item"] == "si_itemdisc_2":
                line["discounts"] = [d["id"]]
    yield
    before = copy.deepcopy(sub)
    sub["items"]["data"][1]["discounts"] = []
    hand["event"] = w.event("customer.subscription.updated", ITEM_DISC_OFF, sub, before)["id"]
    yield
    w.cycle("sub_itemdisc_1", ts(2024, 6, 5))


# --- the tests ----------------------------------------------------------------------------------------------------

STAGES = pytest.mark.parametrize("stage", [1, 2], ids=["after-sync-1", "after-sync-2"])


def moves(chain: Chain, stage: int, tag: str) -> list[tuple[Any, ...]]:
    """The scenario's movements after ``stage``: (occurred_at, customer, item, movement, category, mrr_delta)."""
    return sorted((r["occurred_at"], r["customer_id"], r["subscription_item_id"], r["movement"], r["category"],
                   r["mrr_delta"]) for r in rows(chain, stage, "mrr_movements", tag))


def month(chain: Chain, stage: int, tag: str, year: int, mon: int) -> dict[str, Any]:
    """The scenario's bridge row of one month (mrr_bridge over its rows alone)."""
    got = rows(chain, stage, "mrr_bridge", tag, period_start=dt.date(year, mon, 1))
    assert len(got) == 1, got
    return got[0]


FLOWS = ("opening_mrr", "new", "reactivation", "expansion", "contraction", "churn", "closing_mrr")


def flows(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[k] for k in FLOWS)


@STAGES
def test_the_whole_store_equals_a_full_recompute(chain: Chain, stage: int) -> None:
    """Every table and view of the whole store: the monthly ledger (which the incremental path updates by the touched
    customers' old and new contributions), mrr_bridge, churn_reasons and cohort_revenue_retention summed over every
    scenario, the exchange-rate days, where coverage starts, the catalogue and the rules; and the rows no scenario
    owns. Each recompute after an incremental sync derived the changed customers (metrics_runs mode `changed`), not
    everything again."""
    assert chain.stages[stage].mode == "changed"
    assert differences(chain.stages[stage], WHOLE) == {}


@STAGES
@pytest.mark.parametrize("tag", list(SCENARIOS))
def test_each_scenario_equals_a_full_recompute(chain: Chain, tag: str, stage: int) -> None:
    """The scenario's rows of every derived table (per customer, per subscription, its data-quality rows) and of the
    finance views mrr_movements, customer_mrr, scheduled_churn and data_quality, after the incremental recompute, are
    a full recompute's of the same store. (Its store-wide views are functions of its rows of the derived tables and of
    the rows of no scenario, which test_the_whole_store_equals_a_full_recompute compares.)"""
    assert differences(chain.stages[stage], tag) == {}


def test_the_incremental_path_ran_for_the_changed_customers_alone(chain: Chain) -> None:
    """Equality would mean little if everything had been derived again. README: a run derives again only the customers
    with a Stripe object seen since the last recompute began; where Stripe's clock runs behind this machine's, also
    those of every subscription seen since the older snapshot; every customer of an account whose event coverage
    moved. So cus_metered_1 only after sync 1, cus_comeback_1 only after sync 2, and of the neighbours (nothing of
    theirs changes after S0) cus_behind_n alone after sync 1 (seen at S0, after that sync's snapshot in Stripe's
    clock) and cus_gap_n alone after sync 2 (acct_gap's coverage moved)."""
    one, two = chain.stages[1], chain.stages[2]
    everyone = {c for cs in chain.customers.values() for c in cs}
    assert one.touched | one.moved < everyone and two.touched | two.moved < everyone
    assert "cus_metered_1" in one.touched and "cus_metered_1" not in two.touched
    assert "cus_comeback_1" in two.touched and "cus_comeback_1" not in one.touched
    neighbours = {c for c in everyone if c.endswith("_n")}
    assert (one.touched & neighbours, two.touched & neighbours) == ({"cus_behind_n"}, {"cus_gap_n"})


def test_customer_discount_on_then_off_by_hand(chain: Chain) -> None:
    """cdisc (design.md 4, README Discounts: a customer-wide discount applies to each subscription without one of its
    own). Before: 2 x 20.00 + 600.00 / 12 = 90.00. 28 May 10:00, 20% on both: si_cdisc_1 -8.00, si_cdisc_2 -10.00
    (`discount`, contraction; 90.00 -> 72.00), named by the customer.discount.created event; 12 June 09:00, off again:
    +8.00 and +10.00 (expansion; 72.00 -> 90.00), named by customer.discount.deleted; sub_cdisc_1's renewal of 10 June
    changes nothing. Bridge: May 90.00 - 18.00 (discount_contraction 18.00) = 72.00; June, after sync 1, 72.00 flat,
    after sync 2 72.00 + 18.00 (discount_expansion) = 90.00."""
    on = [(at(DISC_ON), "cus_cdisc_1", "si_cdisc_1", "discount", "contraction", D(-8)),
          (at(DISC_ON), "cus_cdisc_1", "si_cdisc_2", "discount", "contraction", D(-10))]
    off = [(at(DISC_OFF), "cus_cdisc_1", "si_cdisc_1", "discount", "expansion", D(8)),
           (at(DISC_OFF), "cus_cdisc_1", "si_cdisc_2", "discount", "expansion", D(10))]
    for stage, expected in ((1, on), (2, on + off)):
        got = [m for m in moves(chain, stage, "cdisc") if m[3] == "discount"]
        assert got == expected, stage
    named = {(r["occurred_at"], r["source_event_id"]) for r in rows(chain, 2, "mrr_movements", "cdisc",
                                                                     movement="discount")}
    assert named == {(at(DISC_ON), chain.hand["cdisc"]["on"]), (at(DISC_OFF), chain.hand["cdisc"]["off"])}
    may = month(chain, 2, "cdisc", 2024, 5)
    assert flows(may) == (90, 0, 0, 0, 18, 0, 72) and may["discount_contraction"] == 18
    assert flows(month(chain, 1, "cdisc", 2024, 6)) == (72, 0, 0, 0, 0, 0, 72)
    june = month(chain, 2, "cdisc", 2024, 6)
    assert flows(june) == (72, 0, 0, 18, 0, 0, 90) and june["discount_expansion"] == 18
    assert [(r["valid_from"], r["mrr"]) for r in sorted(rows(chain, 2, "customer_mrr", "cdisc"),
                                                         key=lambda r: r["valid_from"])][-3:] == [
        (at(ts(2024, 1, 10)), 90), (at(DISC_ON), 72), (at(DISC_OFF), 90)]


def test_trial_to_past_due_to_unpaid_to_deleted_by_hand(chain: Chain) -> None:
    """trial (design.md 4: trialing counts zero, past_due counts, unpaid churns at its transition and the later
    deletion is no second movement; design.md 5: churn_type involuntary when the subscription went unpaid). After sync
    1: `new` +60.00 (3 x 20.00) at the trial's end, 29 May 00:00, nothing at past_due. After sync 2: besides it a
    `cancellation` -60.00 on 12 June, involuntary, no feedback; nothing on 20 June. Bridge, with the neighbour's
    20.00: May 20.00 + 60.00 new = 80.00 (1 new customer); June after sync 2 80.00 - 60.00 churn = 20.00, 1 of 2
    customers churned (customer churn rate 0.5). churn_reasons: June, involuntary, (none), 1 customer, 60.00. The May
    2024 cohort starts at 60.00 and holds 0.00 in June."""
    new = (at(TRIAL_END), "cus_trial_1", "si_trial_1", "new", "new", D(60))
    gone = (at(UNPAID), "cus_trial_1", "si_trial_1", "cancellation", "churn", D(-60))
    assert [m for m in moves(chain, 1, "trial") if m[1] == "cus_trial_1"] == [new]
    assert [m for m in moves(chain, 2, "trial") if m[1] == "cus_trial_1"] == [new, gone]
    (row,) = rows(chain, 2, "mrr_movements", "trial", movement="cancellation")
    assert (row["churn_type"], row["cancellation_feedback"], row["source_event_id"]) == (
        "involuntary", None, chain.hand["trial"]["unpaid"])
    may = month(chain, 2, "trial", 2024, 5)
    assert flows(may) == (20, 60, 0, 0, 0, 0, 80) and may["new_customers"] == 1
    assert flows(month(chain, 1, "trial", 2024, 6)) == (80, 0, 0, 0, 0, 0, 80)
    june = month(chain, 2, "trial", 2024, 6)
    assert flows(june) == (80, 0, 0, 0, 0, 60, 20)
    assert (june["opening_customers"], june["churned_customers"], june["customer_churn_rate"]) == (2, 1, 0.5)
    assert [(r["period_start"], r["churn_type"], r["cancellation_feedback"], r["churned_customers"],
             r["churned_mrr"]) for r in rows(chain, 2, "churn_reasons", "trial")] == [
        (dt.date(2024, 6, 1), "involuntary", "(none)", 1, 60)]
    for stage, june_mrr in ((1, 60), (2, 0)):
        (cohort,) = rows(chain, stage, "cohort_revenue_retention", "trial", cohort_month=dt.date(2024, 5, 1),
                         month=dt.date(2024, 6, 1))
        assert (cohort["starting_mrr"], cohort["mrr"]) == (60, june_mrr), stage


@pytest.mark.parametrize("stage", [1, 2], ids=["after-sync-1", "after-sync-2"])
def test_pending_items_name_what_bills_the_seat_by_hand(chain: Chain, stage: int) -> None:
    """pending (README: pending invoice items date the change when it was made; until an invoice bills them, the
    movement names the pending item as its source_invoice_id). A third annual seat, 240.00 / 12 = 20.00 a month:
    `seat_expansion` +20.00 at 25 May 12:00 (40.00 -> 60.00), named by its update event and, after sync 1, by the
    pending item that charges the seat; after sync 2, by the invoice of 15 June that bills it."""
    (row,) = [r for r in rows(chain, stage, "mrr_movements", "pending") if r["movement"] != "new"]
    hand = chain.hand["pending"]
    assert (row["occurred_at"], row["movement"], row["mrr_before"], row["mrr_after"], row["mrr_delta"]) == (
        at(SEAT_ADDED), "seat_expansion", 40, 60, 20)
    assert (row["source_event_id"], row["source_invoice_id"]) == (
        hand["event"], hand["charge"] if stage == 1 else hand["bill"])


def test_comeback_after_ten_months_by_hand(chain: Chain) -> None:
    """comeback (design.md 5: M(A) = 0, M(B) > 0 for a customer who had MRR before is a `reactivation`; README
    cohorts: a comeback's reactivation is added to its cohort's mrr). After sync 2: `reactivation` +40.00 (2 x 20.00)
    on 12 June 16:00, nothing else new. Bridge June: 20.00 + 40.00 reactivation = 60.00, 1 reactivated customer. The
    February 2023 cohort (cus_comeback_1 30.00, cus_comeback_2 20.00) starts at 50.00, holds 20.00 from August 2023,
    and in June 2024 20.00 (0.4) after sync 1, 60.00 (1.2) after sync 2."""
    assert [m for m in moves(chain, 2, "comeback") if m[0] > at(S0)] == [
        (at(COMEBACK), "cus_comeback_1", "si_comeback_3", "reactivation", "reactivation", D(40))]
    assert not [m for m in moves(chain, 1, "comeback") if m[0] > at(S0)]
    june = month(chain, 2, "comeback", 2024, 6)
    assert flows(june) == (20, 0, 40, 0, 0, 0, 60) and june["reactivated_customers"] == 1
    for stage, mrr, retention in ((1, 20, 0.4), (2, 60, 1.2)):
        (cohort,) = rows(chain, stage, "cohort_revenue_retention", "comeback", cohort_month=dt.date(2023, 2, 1),
                         month=dt.date(2024, 6, 1))
        assert (cohort["cohort_customers"], cohort["starting_mrr"], cohort["mrr"]) == (2, 50, mrr), stage
        assert cohort["revenue_retention"] == pytest.approx(retention)


def test_metered_usage_invoice_by_hand(chain: Chain) -> None:
    """metered (design.md 4: metered MRR is the last invoiced full period's amount, from that invoice on; README: usage
    billed by an invoice names that invoice and no event). The renewal of 1 June 00:00 bills 123.45 for May where 1 May
    billed 100.00: `resource_expansion` +23.45 on si_metered_m (110.00 -> 133.45), in both syncs' results."""
    for stage in (1, 2):
        (row,) = rows(chain, stage, "mrr_movements", "metered", occurred_at=at(ts(2024, 6, 1)))
        assert (row["subscription_item_id"], row["movement"], row["mrr_before"], row["mrr_after"], row["mrr_delta"],
                row["source_event_id"], row["source_invoice_id"]) == (
            "si_metered_m", "resource_expansion", D("110"), D("133.45"), D("23.45"), None,
            chain.hand["metered"]["invoice"])


def test_cancellation_at_period_end_by_hand(chain: Chain) -> None:
    """sched (design.md 4: a cancel_at_period_end churns when the subscription ends, and waits in scheduled_churn
    until then; README: at stake is the MRR just before it takes effect, so a coupon still running then still reduces
    it). 2 x 20.00 less 25% (until 15 July) = 30.00. After sync 1: scheduled_churn holds sub_sched_1, cancel_at 15
    June, 30.00 at stake, feedback unused; no cancellation yet. After sync 2: no scheduled row, a `cancellation` -30.00
    on 15 June 00:00, voluntary, unused."""
    (sched,) = rows(chain, 1, "scheduled_churn", "sched")
    assert (sched["subscription_id"], sched["cancel_at"], sched["cancel_at_period_end"], sched["mrr_at_stake"],
            sched["cancellation_feedback"]) == ("sub_sched_1", at(PERIOD_END), True, 30, "unused")
    assert not rows(chain, 1, "mrr_movements", "sched", movement="cancellation")
    assert rows(chain, 2, "scheduled_churn", "sched") == []
    (gone,) = rows(chain, 2, "mrr_movements", "sched", movement="cancellation")
    assert (gone["occurred_at"], gone["mrr_delta"], gone["churn_type"], gone["cancellation_feedback"]) == (
        at(PERIOD_END), -30, "voluntary", "unused")


def test_two_customers_in_one_minute_by_hand(chain: Chain) -> None:
    """minute (design.md 5: changes are netted per customer within the window): two movements, cus_minute_1
    `seat_expansion` +20.00 at 10:00:00 (40.00 -> 60.00) and cus_minute_2 `seat_contraction` -10.00 at 10:00:30
    (40.00 -> 30.00); the renewals of 1 June change nothing."""
    expected = [(at(SAME_MINUTE), "cus_minute_1", "si_minute_1", "seat_expansion", "expansion", D(20)),
                (at(SAME_MINUTE + 30), "cus_minute_2", "si_minute_2", "seat_contraction", "contraction", D(-10))]
    for stage in (1, 2):
        assert [m for m in moves(chain, stage, "minute") if m[3] != "new"] == expected


def test_customer_deleted_by_hand(chain: Chain) -> None:
    """deleted (design.md 4: a cancellation counts when the subscription ends): the deletion of cus_deleted_1 ended its
    subscription at once, a `cancellation` -20.00 on 30 May 14:00, voluntary; its neighbour keeps 20.00."""
    for stage in (1, 2):
        got = [m for m in moves(chain, stage, "deleted") if m[3] != "new"]
        assert got == [(at(CUSTOMER_DELETED), "cus_deleted_1", "si_deleted_1", "cancellation", "churn", D(-20))]
        (row,) = rows(chain, stage, "mrr_movements", "deleted", movement="cancellation")
        assert row["churn_type"] == "voluntary"


def test_one_window_across_two_syncs_by_hand(chain: Chain) -> None:
    """window (design.md 5: changes within 60 minutes are one transition from A to B dated at the first; no row when
    M(A) = M(B)). After sync 1 only the third seat is known: `seat_expansion` +20.00 on 31 May 23:50, May's bridge 40.00
    + 20.00 = 60.00. After sync 2 the seat taken off at 00:30 joins its window: 2 seats before and after, no movement
    at all; May 40.00 flat, June 40.00 flat (the customer's only level is 40.00 from 7 February)."""
    assert [m for m in moves(chain, 1, "window") if m[3] != "new"] == [
        (at(SEAT_UP), "cus_window_1", "si_window_1", "seat_expansion", "expansion", D(20))]
    may = month(chain, 1, "window", 2024, 5)
    assert flows(may) == (40, 0, 0, 20, 0, 0, 60) and may["seat_expansion"] == 20
    assert [m for m in moves(chain, 2, "window") if m[3] != "new"] == []
    assert flows(month(chain, 2, "window", 2024, 5)) == (40, 0, 0, 0, 0, 0, 40)
    assert flows(month(chain, 2, "window", 2024, 6)) == (40, 0, 0, 0, 0, 0, 40)
    assert [(r["valid_from"], r["mrr"]) for r in rows(chain, 2, "customer_mrr", "window")] == [
        (at(ts(2024, 2, 7)), 40)]


def test_failed_upgrade_invoice_voided_months_later_by_hand(chain: Chain) -> None:
    """void (README: voided invoices are not part of the history; 30_item_history and NOTES: a voided update invoice
    whose payment was attempted is no evidence, a voided renewal is). After sync 1 the open proration invoice of 10
    December 2023 dates the two seats added: `seat_expansion` +40.00 (60.00 -> 100.00) then, named by it. After sync 2
    it is voided: the renewal of 1 January 2024 first bills five seats, so the change counts from then, named by that
    renewal. Bridge with the neighbour's 20.00, a month long closed re-opened: December 2023 80.00 + 40.00 = 120.00
    after sync 1, 80.00 flat after sync 2; January 2024 120.00 flat after sync 1, 80.00 + 40.00 = 120.00 after."""
    hand = chain.hand["void"]
    for stage, when, invoice in ((1, UPGRADED, hand["upgrade"]), (2, ts(2024, 1, 1), hand["january"])):
        (row,) = rows(chain, stage, "mrr_movements", "void", customer_id="cus_void_1", movement="seat_expansion")
        assert (row["occurred_at"], row["mrr_before"], row["mrr_after"], row["source_invoice_id"]) == (
            at(when), 60, 100, invoice), stage
    assert flows(month(chain, 1, "void", 2023, 12)) == (80, 0, 0, 40, 0, 0, 120)
    assert flows(month(chain, 1, "void", 2024, 1)) == (120, 0, 0, 0, 0, 0, 120)
    assert flows(month(chain, 2, "void", 2023, 12)) == (80, 0, 0, 0, 0, 0, 80)
    assert flows(month(chain, 2, "void", 2024, 1)) == (80, 0, 0, 40, 0, 0, 120)


def test_old_renewal_voided_keeps_its_evidence_by_hand(chain: Chain) -> None:
    """voidrenewal (NOTES "30/40, voided renewals": a voided subscription_cycle invoice still shows what the
    subscription renewed with). The five seats first billed by the renewal of 1 December 2023 count from then,
    `seat_expansion` +40.00 (60.00 -> 100.00), after sync 1 and, the renewal voided, after sync 2 too."""
    for stage in (1, 2):
        assert [m for m in moves(chain, stage, "voidrenewal") if m[3] != "new"] == [
            (at(ts(2023, 12, 1)), "cus_voidrenewal_1", "si_voidrenewal_1", "seat_expansion", "expansion", D(40))]


def test_unpaid_spell_paid_off_by_hand(chain: Chain) -> None:
    """paidoff (design.md 4: unpaid churns at its transition; README: before the events, invoices show unpaid spells;
    design.md 5: a comeback is a reactivation). The unpaid spell from 20 March (its invoice marked uncollectible then):
    a `cancellation` -40.00, involuntary; paid off on 25 May 10:00: `reactivation` +40.00, named by the update that
    made the subscription active. The March churn stays where it was once the invoice is paid."""
    expected = [(at(UNPAID_SINCE), "cus_paidoff_1", "si_paidoff_1", "cancellation", "churn", D(-40)),
                (at(PAID_OFF), "cus_paidoff_1", "si_paidoff_1", "reactivation", "reactivation", D(40))]
    for stage in (1, 2):
        assert [m for m in moves(chain, stage, "paidoff") if m[1] == "cus_paidoff_1" and m[3] != "new"] == expected
        (gone,) = rows(chain, stage, "mrr_movements", "paidoff", movement="cancellation")
        assert gone["churn_type"] == "involuntary"


def test_add_on_removed_and_discounts_taken_off_by_hand(chain: Chain) -> None:
    """drop (design.md 5: an item of a family removed while the customer stays is a `downgrade`): -50.00 on 27 May
    15:00 (90.00 -> 40.00). itemdisc (design.md 4: an item-level discount applies to that item; README: one taken off
    inside the event window ends at the update that took it off): the add-on's 50% ends on 29 May 11:00, a `discount`
    +25.00 (65.00 -> 90.00) named by that update. subdisc (design.md 4: a subscription-level discount applies to all
    its items): 15% of 60.00 ends on 30 May 16:00, a `discount` +9.00 (51.00 -> 60.00) named by that update."""
    for stage in (1, 2):
        assert [m for m in moves(chain, stage, "drop") if m[3] != "new"] == [
            (at(ADDON_DROPPED), "cus_drop_1", "si_drop_2", "downgrade", "contraction", D(-50))]
        (off,) = rows(chain, stage, "mrr_movements", "itemdisc", movement="discount")
        assert (off["occurred_at"], off["subscription_item_id"], off["category"], off["mrr_before"], off["mrr_after"],
                off["source_event_id"]) == (at(ITEM_DISC_OFF), "si_itemdisc_2", "expansion", 65, 90,
                                            chain.hand["itemdisc"]["event"])
        (off,) = rows(chain, stage, "mrr_movements", "subdisc", movement="discount")
        assert (off["occurred_at"], off["mrr_before"], off["mrr_after"], off["mrr_delta"], off["source_event_id"]) == (
            at(SUB_DISC_OFF), D("51"), 60, D("9"), chain.hand["subdisc"]["event"])


def test_where_event_coverage_starts(chain: Chain) -> None:
    """gap and the rest (README: where event coverage starts changing recomputes the whole account). acct_hunt's
    coverage starts where it did after both incremental syncs; acct_gap's moves after the gap, to its first event
    from 25 May on (the renewal of 5 June's invoice), and every customer of acct_gap is derived again at S2, the
    neighbour too; cus_gap_1's four seats of 22 May, inside the gap, are dated by their proration invoice (design.md
    3: proration lines mark mid-cycle changes): a `seat_expansion` +40.00 then (2 x 20.00), and cus_gap_2's `new`
    +10.00 on 10 June."""
    def coverage(stage: int) -> dict[str, dt.datetime]:
        got = chain.stages[stage].incremental["derived_coverage"]
        return {r[0]: r[got.columns.index("coverage_start")] for r in got.by_tag[WHOLE]}
    one, two = coverage(1), coverage(2)
    assert one["acct_hunt"] == two["acct_hunt"] and one["acct_gap"] < at(S0)
    assert two["acct_gap"] == at(ts(2024, 6, 5))
    assert {"cus_gap_1", "cus_gap_2", "cus_gap_n"} <= chain.stages[2].touched
    assert [m for m in moves(chain, 2, "gap") if m[0] > at(S0)] == [
        (at(ts(2024, 5, 22, 10)), "cus_gap_1", "si_gap_1", "seat_expansion", "expansion", D(40)),
        (at(ts(2024, 6, 10)), "cus_gap_2", "si_gap_2", "new", "new", D(10))]


def test_stripes_clock_behind_by_hand(chain: Chain) -> None:
    """behind (README: objects count as changed from 5 minutes before the last recompute began; where Stripe's clock
    runs behind this machine's, the customers of every subscription seen since the older snapshot are derived again).
    The four seats of 1 June 00:05 in Stripe's clock (before the last recompute began, 00:20 by this machine's) show
    after sync 2: `seat_expansion` +40.00 (40.00 -> 80.00); cus_behind_3, seen in sync 1 and in no later one, is
    derived again at S2."""
    assert "cus_behind_3" in chain.stages[2].touched
    assert [m for m in moves(chain, 2, "behind") if m[0] > at(ts(2024, 5, 31))] == [
        (at(S1 - BEHIND + 300), "cus_behind_1", "si_behind_1", "seat_expansion", "expansion", D(40))]


def test_coupon_running_out_between_syncs_by_hand(chain: Chain) -> None:
    """runout (design.md 4: a repeating discount reduces MRR while it applies, its end a `discount` movement; README:
    a customer-wide discount applies to each subscription; 60_transitions: a change dated after the latest sync has
    not happened yet). 10% of 20.00 and of 50.00: -2.00 and -5.00 on 10 May (70.00 -> 63.00). Its end on 10 June is
    after sync 1's snapshot: not there after sync 1; after sync 2, +2.00 and +5.00 (63.00 -> 70.00), the customer
    being derived again from its stored MRR alone (no object of it was seen)."""
    ended = [(at(COUPON_TO), "cus_runout_1", "si_runout_1", "discount", "expansion", D(2)),
             (at(COUPON_TO), "cus_runout_1", "si_runout_2", "discount", "expansion", D(5))]
    assert [m for m in moves(chain, 1, "runout") if m[0] >= at(COUPON_TO)] == []
    assert [m for m in moves(chain, 2, "runout") if m[0] >= at(COUPON_TO)] == ended
    assert chain.stages[2].moved == {"cus_runout_1"}


def test_cancellation_processed_after_the_sync_by_hand(chain: Chain) -> None:
    """lagcancel (design.md 4: a cancellation counts when the subscription ends, ended_at; until then it shows in
    scheduled_churn). After sync 1 the store still holds it active and set to cancel on 1 June (20.00 at stake, no
    churn yet); after sync 2 a `cancellation` -20.00 at 1 June 00:00, its ended_at, voluntary, too_complex, and no
    scheduled row."""
    assert [(r["cancel_at"], r["mrr_at_stake"]) for r in rows(chain, 1, "scheduled_churn", "lagcancel")] == [
        (at(LAG_CANCEL_AT), 20)]
    assert not rows(chain, 1, "mrr_movements", "lagcancel", movement="cancellation")
    (gone,) = rows(chain, 2, "mrr_movements", "lagcancel", movement="cancellation")
    assert (gone["occurred_at"], gone["mrr_delta"], gone["churn_type"], gone["cancellation_feedback"]) == (
        at(LAG_CANCEL_AT), -20, "voluntary", "too_complex")
    assert rows(chain, 2, "scheduled_churn", "lagcancel") == []


def test_trial_end_processed_after_the_sync_by_hand(chain: Chain) -> None:
    """lagtrial (design.md 4: trialing counts zero, active counts, from the transition the events show). After sync 1
    the store still holds the subscription trialing (the trial's end date passed, Stripe had not ended it yet): no
    movement. After sync 2 its update of 1 June 00:40 makes it active: `new` +20.00 then."""
    assert moves(chain, 1, "lagtrial") == []
    assert moves(chain, 2, "lagtrial") == [
        (at(LAG_PROCESSED), "cus_lagtrial_1", "si_lagtrial_1", "new", "new", D(20))]


@pytest.mark.parametrize(("tag", "start", "mrr"), [("oneoff", ts(2024, 2, 12), 20), ("latepay", ts(2024, 2, 15), 20),
                                                   ("country", ts(2024, 1, 15), 20)])
def test_changes_that_move_no_mrr_by_hand(chain: Chain, tag: str, start: int, mrr: int) -> None:
    """oneoff (design.md 4: one-time prices and credit notes do not change MRR), latepay (an invoice's status is no
    subscription change) and country (a customer's address is none either): after both syncs, the customer's only
    movement is its `new` (2 x 10.00 or 1 x 20.00), and its only customer_mrr level the one it began with."""
    for stage in (1, 2):
        assert [(m[0], m[3], m[5]) for m in moves(chain, stage, tag)] == [(at(start), "new", mrr)]
        assert [(r["valid_from"], r["valid_to"], r["mrr"]) for r in rows(chain, stage, "customer_mrr", tag)] == [
            (at(start), None, mrr)]
