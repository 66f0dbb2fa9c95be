"""Derive again only the customers whose Stripe objects changed, instead of the whole account.

Every metrics step works per customer except a few account-wide facts (where event coverage starts, the
latest snapshot), so the customers touched since a moment can be derived apart: their raw rows (plus the
catalogue, the exchange rates and the account's oldest and newest events, which fix those facts) are
copied into in-memory databases, the same SQL steps run there, and their rows replace the old ones in every
per-customer derived table; the monthly bridge ledger is updated by their old and new contributions. Many
customers are split into shards derived side by side, each on its own connection (DuckDB runs a query over a
few thousand customers' rows on one thread). The full :func:`~stripe_churn.metrics.runner.recompute` stays
the default (design.md 2); this is the fast path after a billing run, and every derived table it leaves equals
a full recompute's (tests/metrics/test_incremental.py checks that).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import duckdb

from stripe_churn.errors import DataError, StoppedError
from stripe_churn.metrics.runner import (
    check_money_fits,
    code_digest,
    fx_digest,
    has_runs_table,
    missing_rates_error,
    recompute,
    record_run,
    run_statements,
    sql_steps,
    write_settings,
)
from stripe_churn.settings import Settings
from stripe_churn.store.db import rollback, sql_identifier, sql_literal
from stripe_churn.store.quiet import quiet

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _phase(name: str) -> Iterator[None]:
    """Log at DEBUG how long a phase of the run took (``scripts/bench_rollup.py --profile`` prints them)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _log_phase(name, t0)


def _log_phase(name: str, started: float) -> None:
    """Log at DEBUG that the phase ``name``, begun at ``time.perf_counter()`` = ``started``, took until now."""
    log.debug("incremental phase %s took %.3f s", name, time.perf_counter() - started)


_SCOPE = "touched_scope"
_CATALOGUE = ("products", "prices", "coupons")
# Columns of raw tables that no step reads: the scope's copies hold NULL there. A scope's rows are spread
# through the large tables, so copying them reads every stored vector of each column copied: the JSON above all,
# and the lines' columns, cost most of the copy. Raw tables read by their typed columns only lose their JSON (a
# customer's JSON is read only for metadata segments, which the scoped runs never compute, and a subscription's
# by the scheduled_churn view when it is queried, and by the steps for paused ones alone: _READ_RAW). If a step
# starts reading one of these, take it out here.
_UNREAD = {
    "customers": ("raw",),
    "subscriptions": ("raw",),
    "invoices": ("raw", "version", "first_seen_at", "state_seen_at", "currency", "amount_due", "amount_paid", "total",
                 "period_start", "period_end"),
    # (30_item_history reads the lines, and only these columns: account_id, id, invoice_id, subscription_id,
    # subscription_item_id, parent_proration, proration_credit, amount, price_id, quantity, period_start,
    # period_end, tax_inclusive, deleted; 70 invoice_item_id; 35 and 90 the JSON of those _READ_RAW names)
    "invoice_lines": ("raw", "version", "created", "first_seen_at", "last_seen_at", "state_seen_at", "product_id",
                      "currency", "proration"),
    "credit_notes": ("raw",),
    # (30_item_history reads the pending items' account_id, id, customer_id, subscription_id, subscription_item_id,
    # price_id, quantity, amount, proration, proration_credit, date, period_start, period_end, pending, deleted)
    "invoice_items": ("raw", "version", "created", "first_seen_at", "last_seen_at", "state_seen_at", "invoice_id",
                      "product_id", "currency"),
}
# The rows whose JSON the steps read, in tables read by their typed columns otherwise ({db}: the scope, whose
# subscriptions are copied before its events; {main}: the main database). Events: removed discounts
# (35_discounts), and the events of a subscription without a usable row of its own, whose last state stands in
# for it, and the events of a paused subscription state, which say what paused it (20_sub_states), and those of a
# subscription with a removed discount on one of its items, whose item lists date its end (35_discounts), and under
# churn_recognition = 'canceled' the updates that took a cancellation back and the states holding one (40_item_mrr).
# Subscriptions: those paused now (the same). Subscription items: those whose price is not stored (10_price_terms
# reads it from the item). Invoices: those of the owner of a discount removed with no end of its own
# (35_discounts), and for such a discount on one item, that item's non-proration lines (the same). Items (but of a
# metered price), lines and invoice items without a typed quantity (30 reads one the load could not read).
_READ_RAW = {
    "subscription_items": ("(price_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {main}.prices p "
                           "WHERE p.account_id = e.account_id AND p.id = e.price_id AND NOT coalesce(p.deleted, false)))"
                           # (and the items without a quantity whose price is not metered: 30 reads a quantity the
                           # load could not read from their JSON, as it does for the lines and invoice items below)
                           " OR (quantity IS NULL AND NOT EXISTS (SELECT 1 FROM {main}.prices p "
                           "WHERE p.account_id = e.account_id AND p.id = e.price_id AND p.usage_type = 'metered'))"),
    "events": ("(type = 'customer.discount.deleted' OR (type LIKE 'customer.subscription.%' AND (NOT EXISTS ("
               "SELECT 1 FROM {db}.subscriptions s WHERE s.account_id = e.account_id AND s.id = e.object_id "
               "AND NOT coalesce(s.deleted, false) AND s.customer_id IS NOT NULL) OR e.sub_state.status = 'paused' "
               "OR EXISTS (SELECT 1 FROM {main}.discounts u WHERE u.account_id = e.account_id "
               "AND u.subscription_id = e.object_id AND u.subscription_item_id IS NOT NULL "
               "AND coalesce(u.deleted, false))))"
               # (with churn_recognition = 'canceled': an update that took a cancellation back, and a state holding
               # a request, which 40_item_mrr compares across a gap in the events (one without its JSON there held
               # none); _CANCELED_RAW, added only under that setting, the stored one (a changed one derives
               # everything again): a test of the JSON in the text, even one that comes to false, reads the JSON of
               # every picked event, 0.3-0.4 s of the scope's copy at 1M customers)
               ")"),
    # the subscriptions paused now (20 reads what paused them, as it does of the events with a paused state above)
    "subscriptions": "(status = 'paused')",
    # the subscription invoice lines naming no item or price (90 reads their parent's type), and the lines of an
    # item owning a discount removed with no end of its own (35 dates its end by the discounts they list)
    "invoice_lines": ("(NOT coalesce(parent_proration, false) AND (subscription_item_id IS NULL OR price_id IS NULL "
                      "OR EXISTS (SELECT 1 FROM {main}.discounts u WHERE u.account_id = e.account_id "
                      "AND u.subscription_item_id = e.subscription_item_id AND coalesce(u.deleted, false) "
                      "AND json_extract_string(u.raw, '$.end') IS NULL))) OR quantity IS NULL"),
    "invoice_items": "quantity IS NULL",
    # the invoices of a subscription or customer owning a discount removed with no end of its own, but one on an
    # item (35 dates its end by the discounts they list)
    "invoices": ("EXISTS (SELECT 1 FROM {main}.discounts u WHERE u.account_id = e.account_id "
                 "AND coalesce(u.deleted, false) AND json_extract_string(u.raw, '$.end') IS NULL "
                 "AND u.subscription_item_id IS NULL AND (u.subscription_id = e.subscription_id "
                 "OR (u.subscription_id IS NULL AND u.customer_id = e.customer_id)))"),
}
# What _READ_RAW's events add under churn_recognition = 'canceled' (the stored setting).
_CANCELED_RAW = (" OR (type LIKE 'customer.subscription.%' AND coalesce(list_has_any(json_type(raw, "
                 "['$.data.previous_attributes.canceled_at', '$.data.object.canceled_at']), ['UBIGINT', 'BIGINT']), "
                 "false))")


def _seen_first(children: str, child_key: str, table: str, seen: str, cols: str) -> str:
    """SQL selecting ``cols`` of each row ``c`` of ``children`` (with account_id and ``child_key``) and its parent
    ``p`` in ``table`` (by account_id, id). The parent is nearly always seen in the same sync as the child: it is
    looked up among ``seen`` (the parents seen since) first, and in the whole table, which costs a scan of every
    row, only for the children whose parent is not there."""
    on = f"p.account_id = c.account_id AND p.id = c.{child_key}"
    return (f"SELECT {cols} FROM {children} c JOIN {seen} p ON {on} "
            f"UNION ALL SELECT {cols} FROM {table} p JOIN (SELECT c.* FROM {children} c ANTI JOIN {seen} p ON {on}) c "
            f"ON {on}")


# Each new event with the customer it concerns: by its object's typed row where the store keeps that object (a
# customer, a subscription, an invoice, a credit note, a discount never changes customer); the event's own JSON
# is parsed only for the others (`orphan`: an object the store lacks, such as a subscription known only from
# its events, whose older events are then read with it).
_NEW_EVENTS_SQL = """
CREATE OR REPLACE TEMP TABLE touched_new_events AS
WITH new_events AS MATERIALIZED (
    SELECT account_id, id, object_type, object_id, rowid AS rid FROM events WHERE last_seen_at >= $since
),
{seen}
typed AS MATERIALIZED (
    SELECT account_id, id, object_id, object_id AS customer_id FROM new_events WHERE object_type = 'customer'
    -- (one join per kind of object the store keeps, filled in below)
    {typed}
)
SELECT account_id, object_id, customer_id, false AS orphan FROM typed WHERE customer_id IS NOT NULL
UNION ALL
SELECT account_id, object_id, coalesce(v[1], v[2], CASE WHEN object_type = 'customer' THEN object_id END), true
FROM (SELECT account_id, object_type, object_id,
             json_extract_string(raw, ['$.data.object.customer.id', '$.data.object.customer']) AS v
      FROM events
      WHERE last_seen_at >= $since
        AND rowid IN (SELECT e.rid FROM new_events e ANTI JOIN typed c
                      ON c.account_id = e.account_id AND c.id = e.id AND c.customer_id IS NOT NULL))
"""

_EVENT_OBJECTS = (("subscriptions", "subscription"), ("invoices", "invoice"), ("credit_notes", "credit_note"),
                  ("discounts", "discount"))
_NEW_EVENTS_SQL = _NEW_EVENTS_SQL.replace("{seen}", "\n".join(
    f"seen_{table} AS MATERIALIZED (SELECT account_id, id, customer_id FROM {table} WHERE last_seen_at >= $since),"
    for table, _ in _EVENT_OBJECTS)).replace("{typed}", "\n    ".join(
    "UNION ALL " + _seen_first(f"(SELECT * FROM new_events WHERE object_type = '{kind}')", "object_id", table,
                               f"seen_{table}", "c.account_id, c.id, c.object_id, p.customer_id")
    for table, kind in _EVENT_OBJECTS))

# Customers with a raw object seen at or after $since, by the typed columns the store keeps (a new item's or
# line's parent looked up among those seen first).
_TOUCHED_SQL = """
CREATE OR REPLACE TEMP TABLE touched_customers AS
WITH
new_items AS MATERIALIZED (SELECT account_id, subscription_id FROM subscription_items WHERE last_seen_at >= $since),
seen_subs AS MATERIALIZED (SELECT account_id, id, customer_id FROM subscriptions WHERE last_seen_at >= $since),
new_lines AS MATERIALIZED (SELECT account_id, invoice_id FROM invoice_lines WHERE last_seen_at >= $since),
seen_invoices AS MATERIALIZED (SELECT account_id, id, customer_id FROM invoices WHERE last_seen_at >= $since)
SELECT DISTINCT account_id, customer_id FROM (
    SELECT account_id, id AS customer_id FROM customers WHERE last_seen_at >= $since
    UNION ALL SELECT account_id, customer_id FROM seen_subs
    UNION ALL SELECT account_id, customer_id FROM seen_invoices
    UNION ALL {items}
    UNION ALL {lines}
    UNION ALL
    SELECT account_id, customer_id FROM discounts WHERE last_seen_at >= $since
    UNION ALL
    -- (a coupon the store lacked at the last recompute: the discounts that name it counted without its terms)
    SELECT d.account_id, d.customer_id
    FROM (SELECT account_id, id FROM coupons WHERE last_seen_at >= $since) c
    ANTI JOIN derived_coupon_terms t ON t.account_id = c.account_id AND t.coupon_id = c.id
    JOIN discounts d ON d.account_id = c.account_id AND d.coupon_id = c.id
    UNION ALL
    -- (an invoice item listed pending, or marked no longer pending, by the sync)
    SELECT account_id, customer_id FROM invoice_items WHERE last_seen_at >= $since
    UNION ALL
    SELECT account_id, customer_id FROM touched_new_events
)
WHERE customer_id IS NOT NULL
"""
_TOUCHED_SQL = _TOUCHED_SQL.format(
    items=_seen_first("new_items", "subscription_id", "subscriptions", "seen_subs", "p.account_id, p.customer_id"),
    lines=_seen_first("new_lines", "invoice_id", "invoices", "seen_invoices", "p.account_id, p.customer_id"))

# Where event coverage starts and the latest snapshot now (step 20's coverage_now()), against what the last
# recompute stored. Movements dated after the latest snapshot are left out
# (60_transitions), so when the snapshot moves, the customers with a change between the old and the new one
# are derived again too; when where coverage starts changes, the whole account is.
_COVERAGE_SQL = """
CREATE OR REPLACE TEMP TABLE touched_coverage AS
SELECT n.account_id, n.snapshot_at, o.snapshot_at AS old_snapshot_at,
       n.coverage_start IS DISTINCT FROM o.coverage_start
           OR n.has_events IS DISTINCT FROM o.has_events
           OR (n.snapshot_at IS NULL) <> (o.snapshot_at IS NULL) AS whole_account
FROM coverage_now() n
LEFT JOIN derived_coverage o USING (account_id)
WHERE n.snapshot_at IS DISTINCT FROM o.snapshot_at
   OR n.coverage_start IS DISTINCT FROM o.coverage_start
   OR n.has_events IS DISTINCT FROM o.has_events
"""

_WHOLE_ACCOUNT_SQL = """
INSERT INTO touched_customers
SELECT c.account_id, c.id FROM customers c JOIN touched_coverage v USING (account_id) WHERE v.whole_account
EXCEPT SELECT account_id, customer_id FROM touched_customers
"""

# A subscription is seen at its sync's moment, but never later than the latest snapshot (derived_subs.seen_at:
# the latest snapshot is in Stripe's clock, which may run behind this machine's, as the sandbox's and test
# clocks do), and so is its state first seen (derived_subs.state_seen_at). When the snapshot moves, the
# subscriptions seen, or whose state was first seen, after the older of the two snapshots move with it: their
# customers are derived again. (Against Stripe's own clock these are only the latest sync's.)
_CLAMPED_SQL = """
INSERT INTO touched_customers
SELECT DISTINCT s.account_id, s.customer_id
FROM subscriptions s JOIN touched_coverage v USING (account_id)
WHERE NOT v.whole_account AND s.customer_id IS NOT NULL AND NOT coalesce(s.deleted, false)
  AND greatest(s.last_seen_at, s.state_seen_at) > least(v.snapshot_at, v.old_snapshot_at)
EXCEPT SELECT account_id, customer_id FROM touched_customers
"""

# Customers with a change point (an item row's start or end, a customer level's start) between the two
# snapshots and nothing new of their own: only their transitions, movements and bridge change, so they are
# derived again from step 60 on, from their stored item and customer MRR (no raw JSON read).
_MOVED_SQL = """
CREATE OR REPLACE TEMP TABLE moved_customers AS
SELECT account_id, customer_id FROM (
    SELECT i.account_id, i.customer_id
    FROM derived_item_mrr i JOIN touched_coverage v USING (account_id)
    WHERE NOT v.whole_account
      AND ((i.valid_from > least(v.snapshot_at, v.old_snapshot_at)
            AND i.valid_from <= greatest(v.snapshot_at, v.old_snapshot_at))
           OR (i.valid_to > least(v.snapshot_at, v.old_snapshot_at)
               AND i.valid_to <= greatest(v.snapshot_at, v.old_snapshot_at)))
    UNION
    SELECT m.account_id, m.customer_id
    FROM derived_customer_mrr m JOIN touched_coverage v USING (account_id)
    WHERE NOT v.whole_account
      AND m.valid_from > least(v.snapshot_at, v.old_snapshot_at)
      AND m.valid_from <= greatest(v.snapshot_at, v.old_snapshot_at)
)
WHERE customer_id IS NOT NULL
EXCEPT SELECT account_id, customer_id FROM touched_customers
"""

# What steps 60-88 read for the moved customers: their stored item MRR, customer MRR and subscriptions, their
# customer, subscription, invoice and invoice item rows (typed columns), the exchange rates; the catalogue and
# its macros are read from the main database. Their subscription events (70 names the event behind a change)
# come from the typed columns, numbered as 20 numbers them.
_MOVED = "touched_moved"


def _rows_of(table: str, who: str, db: str, key: str = "customer_id", cols: str = "*") -> str:
    """SQL selecting ``cols`` of ``db``'s ``table``'s rows whose (account_id, ``key``) is in ``who``: the matching
    row ids from the key columns first, then only those rows (the wide columns of everyone else are never read)."""
    src = f"{db}.{table}"
    return (f"SELECT {cols} FROM {src} WHERE rowid IN (SELECT t.rowid FROM {src} t JOIN {who} c "
            f"ON c.account_id = t.account_id AND c.customer_id = t.{key})")


# (the steps read a customer's JSON only for metadata segments, which the scoped runs never compute)
_NO_RAW = "* REPLACE (CAST(NULL AS JSON) AS raw)"
# What the monthly ledger of the whole account reads of the customers and movements (the movements' other
# columns, read from rows spread through the table, cost most of the old ledger).
_LEDGER_COLS = {"customers": _NO_RAW,
                "derived_mrr_movements": "account_id, customer_id, occurred_at, mrr_delta, category, movement"}


def _moved_inputs(main_db: str) -> dict[str, str]:
    """What steps 60-88 read for the moved customers (in ``_SCOPE.moved_customers``), by table."""
    who, db = f"{_SCOPE}.moved_customers", f"{main_db}.main"
    return {
        "customers": _rows_of("customers", who, db, "id", _NO_RAW),
        "subscriptions": _rows_of("subscriptions", who, db, cols=_NO_RAW),
        # (70 names the invoice behind a change by these columns alone)
        "invoices": _rows_of("invoices", who, db,
                             cols="account_id, id, customer_id, subscription_id, created, deleted, status"),
        # (and the pending proration items, by these)
        "invoice_items": _rows_of("invoice_items", who, db,
                                  cols="account_id, id, customer_id, subscription_id, subscription_item_id, date, "
                                       "deleted, pending, proration"),
        # (and which items the invoices of a window bill, and which invoice billed a proration item, by these: the
        # lines of the invoices just copied, which are read again no more)
        "invoice_lines": f"SELECT l.account_id, l.invoice_id, l.subscription_item_id, l.invoice_item_id, l.deleted "
                         f"FROM {db}.invoice_lines l SEMI JOIN {_MOVED}.invoices i "
                         f"ON i.account_id = l.account_id AND i.id = l.invoice_id",
        "derived_item_mrr": _rows_of("derived_item_mrr", who, db),
        "derived_customer_mrr": _rows_of("derived_customer_mrr", who, db),
        "derived_subs": _rows_of("derived_subs", who, db),
        # (70 names a cancellation taken back by it, 40)
        "derived_withdrawn_cancels": _rows_of("derived_withdrawn_cancels", who, db),
        "fx_rates": f"SELECT * FROM {db}.fx_rates",
        "derived_coverage": f"SELECT * FROM {_SCOPE}.new_coverage",
    }


_MOVED_SUB_EVENTS_SQL = """
CREATE OR REPLACE TEMP TABLE derived_sub_events AS
SELECT e.account_id, e.id AS event_id, e.type AS event_type, e.created AS moment, e.object_id AS subscription_id,
       -- (events in the same second: in the order step 20 kept for them, which takes the same seq numbers)
       -- (and those stored before coverage in the order step 20 gave them, derived_early_event_order)
       coalesce(o.seq, row_number() OVER (PARTITION BY e.account_id, e.object_id ORDER BY e.created, eo.pos, e.id)) AS seq
FROM {db}.events e
JOIN (SELECT s.account_id, s.subscription_id FROM {db}.derived_subs s
      JOIN {scope}.moved_customers c USING (account_id, customer_id)) x
  ON x.account_id = e.account_id AND x.subscription_id = e.object_id
LEFT JOIN {db}.derived_sub_event_order o ON o.account_id = e.account_id AND o.event_id = e.id
LEFT JOIN {db}.derived_early_event_order eo ON eo.account_id = e.account_id AND eo.event_id = e.id
WHERE e.type LIKE 'customer.subscription.%' AND e.object_type = 'subscription' AND NOT coalesce(e.deleted, false);
-- (those from before coverage are among them: step 30's table of them stays empty here)
CREATE OR REPLACE TEMP TABLE derived_early_sub_events AS
SELECT account_id, subscription_id, moment, event_id, seq FROM derived_sub_events WHERE false;
"""

# The raw rows of the touched customers, table by table, as (row id, owning customer): first the matching row ids
# from the key columns alone, then only those rows are copied (so the raw JSON of everyone else is never read).
# A row kept for an account-wide fact comes once more with no owner (NULL): every shard needs it.
_KEY = "SELECT t.rowid AS rid, t.account_id, t.id AS object_id, c.customer_id FROM {table} t "
_SCOPED_KEYS = {
    "customers": _KEY.format(table="customers")
    + "JOIN touched_customers c ON c.account_id = t.account_id AND c.customer_id = t.id",
    # (and each account's most recently seen subscription, which fixes the latest snapshot)
    "subscriptions": _KEY.format(table="subscriptions") + "JOIN touched_customers c USING (account_id, customer_id) "
    "UNION ALL SELECT arg_max(rowid, last_seen_at), account_id, NULL, NULL FROM subscriptions GROUP BY account_id",
    # (items and lines by their parents' rows just staged)
    "subscription_items": _KEY.format(table="subscription_items")
    + f"JOIN {_SCOPE}.rows_subscriptions c ON c.account_id = t.account_id AND c.object_id = t.subscription_id "
    "AND c.customer_id IS NOT NULL",
    "invoices": _KEY.format(table="invoices") + "JOIN touched_customers c USING (account_id, customer_id)",
    "invoice_lines": _KEY.format(table="invoice_lines")
    + f"JOIN {_SCOPE}.rows_invoices c ON c.account_id = t.account_id AND c.object_id = t.invoice_id",
    "credit_notes": _KEY.format(table="credit_notes") + "JOIN touched_customers c USING (account_id, customer_id)",
    "discounts": _KEY.format(table="discounts") + "JOIN touched_customers c USING (account_id, customer_id)",
    "invoice_items": _KEY.format(table="invoice_items")
    + "JOIN touched_customers c USING (account_id, customer_id)",
    # the events about the touched customers' objects, and each account's oldest (after a gap in them) and
    # newest event (which fix where event coverage starts), and its first after each earlier gap (where the events
    # start again there: 40_item_mrr dates a cancellation taken back in that gap at it)
    "events": _KEY.format(table="events")
    + "JOIN touched_objects c ON c.account_id = t.account_id AND c.object_id = t.object_id "
    # (one scan of the events for the three)
    "UNION ALL SELECT rowid, account_id, NULL, NULL FROM events WHERE (account_id, created) IN "
    "(SELECT (account_id, coverage_start) FROM coverage_now() WHERE has_events "
    "UNION ALL SELECT (account_id, max(created)) FROM events GROUP BY account_id "
    "UNION ALL SELECT (g.account_id, min(e.created)) FROM sync_cursors g JOIN events e ON e.account_id = g.account_id "
    "AND e.created >= to_timestamp(g.created) WHERE starts_with(g.stream, 'events:gap:') GROUP BY g.account_id, "
    "g.stream)",
}
# Every raw table a scope holds: the touched customers' rows of those above, the others whole.
_SCOPE_INPUTS = (*_SCOPED_KEYS, *_CATALOGUE, "fx_rates", "sync_cursors")


# Ids of every object of the touched customers that events can be about, with the customer (and the objects
# the store lacks that new events name): from the rows staged for their subscriptions, invoices and discounts
# (each table is read once).
_TOUCHED_OBJECTS_SQL = """
CREATE OR REPLACE TEMP TABLE touched_objects AS
SELECT account_id, customer_id AS object_id, customer_id FROM touched_customers
UNION ALL
SELECT account_id, object_id, customer_id FROM {scope}.rows_subscriptions WHERE customer_id IS NOT NULL
UNION ALL
SELECT account_id, object_id, customer_id FROM {scope}.rows_invoices WHERE customer_id IS NOT NULL
UNION ALL
SELECT account_id, object_id, customer_id FROM {scope}.rows_discounts WHERE customer_id IS NOT NULL
UNION ALL
SELECT DISTINCT account_id, object_id, customer_id FROM touched_new_events WHERE orphan AND customer_id IS NOT NULL
"""


# The objects of the touched customers that data-quality rows name (object_id), from the staged row lists: their
# customers, subscriptions, items, invoices, lines, credit notes, discounts, the events about them, and the
# objects the store lacks that new events name. Their rows in derived_data_quality are replaced by the scope's
# (a row about an exchange rate names a currency, not an object: a missing rate stops the recompute before
# anything is replaced).
_TOUCHED_DQ_OBJECTS_SQL = """
CREATE OR REPLACE TEMP TABLE touched_dq_objects AS
SELECT DISTINCT account_id, object_id, customer_id FROM (
    {staged}
    UNION ALL SELECT account_id, object_id, customer_id FROM touched_objects
    -- (and the items their invoice lines bill: an item known only from a line is named by data-quality rows)
    UNION ALL SELECT l.account_id, l.subscription_item_id, r.customer_id
    FROM invoice_lines l JOIN {scope}.rows_invoice_lines r ON r.rid = l.rowid
    WHERE r.customer_id IS NOT NULL AND l.subscription_item_id IS NOT NULL
)
"""


# The last day of derived_fx_days as 62_transition_items fixes it: today, or the last transition's end when
# that is later.
_FX_LAST_DAY_SQL = """
SELECT greatest(CAST(timezone('UTC', now()) AS DATE),
                coalesce(CAST(timezone('UTC', max(t_end)) AS DATE), DATE '1970-01-01'))
FROM {db}derived_transition_states
"""


class _WholeAccount(Exception):
    """The changed customers' results alone cannot fix an account-wide table: recompute everything."""


# Derived tables of the catalogue (rows per product, price, price tier or coupon, by the key given) and of the
# rules: a scope derives them as a full recompute does, from the whole catalogue and the settings, except the
# prices known only as embedded in an item, which it knows for the touched customers' items alone.
_CATALOGUE_TABLES = {"derived_products": "product_id", "derived_price_terms": "price_id",
                     "derived_price_tiers": "price_id", "derived_price_options": "price_id",
                     "derived_coupon_terms": "coupon_id"}
# the table that lists every product, price or coupon the store had, per key of _CATALOGUE_TABLES
_CATALOGUE_KEYS = {"product_id": "derived_products", "price_id": "derived_price_terms",
                   "coupon_id": "derived_coupon_terms"}
# catalogue tables with rows of prices known only from the items embedding them (each shard: its customers' items)
_ITEM_PRICE_TABLES = ("derived_price_terms", "derived_price_tiers", "derived_price_options")
# catalogue tables a scope derives whole (only from listed objects): a stored row the scope lacks is gone
_CATALOGUE_WHOLE = ("derived_coupon_terms",)
_RULE_TABLES = ("derived_settings", "derived_family_map", "derived_unit_map", "derived_seat_labels")


def _check_account_wide(con: duckdb.DuckDBPyConnection) -> None:
    """Raise _WholeAccount when the rules or a product, price, tier or coupon the store already had changed since the
    last recompute: the customers not derived again depend on them too. (New ones concern only customers
    whose objects changed.)"""
    # a derived table the scope made with other columns than the stored one (the steps changed since the last
    # full recompute, as after an upgrade): its rows cannot be swapped, and the other customers' are stale
    reshaped = con.execute(
        "SELECT DISTINCT coalesce(s.table_name, m.table_name) FROM "
        "(SELECT table_name, column_name, column_index, data_type FROM duckdb_columns() "
        " WHERE database_name = ? AND schema_name = 'main') s "
        "FULL JOIN (SELECT table_name, column_name, column_index, data_type FROM duckdb_columns() "
        "           WHERE database_name = current_database() AND schema_name = 'main' "
        "             AND table_name IN (SELECT table_name FROM duckdb_tables() WHERE database_name = ?)) m "
        "  ON m.table_name = s.table_name AND m.column_index = s.column_index "
        " AND m.column_name = s.column_name AND m.data_type = s.data_type "
        "WHERE coalesce(s.table_name, m.table_name) LIKE 'derived\\_%' ESCAPE '\\' "
        "  AND (s.table_name IS NULL OR m.table_name IS NULL) ORDER BY 1", [_SCOPE, _SCOPE]).fetchall()
    if reshaped:
        raise _WholeAccount("the derived tables changed shape since the last recompute ("
                            + ", ".join(r[0] for r in reshaped) + ")")
    _check_rules(con, _SCOPE)
    for table, key in _CATALOGUE_TABLES.items():
        # rows the store had that the scope lacks (of an object the scope knows, or at all for a table it derives
        # whole: a deleted coupon) or has otherwise, and rows the scope has for a product, price or coupon the
        # store had that the store lacks (a price that gained tiers or an amount in another currency)
        owner = _CATALOGUE_KEYS[key]
        known = "" if table in _CATALOGUE_WHOLE else (f"SEMI JOIN {_SCOPE}.{table} s "
                                                      f"ON s.account_id = m.account_id AND s.{key} = m.{key} ")
        changed = con.execute(f"SELECT count(*) FROM ((SELECT m.* FROM {table} m {known}"
                              f"EXCEPT ALL SELECT * FROM {_SCOPE}.{table}) "
                              f"UNION ALL (SELECT s.* FROM {_SCOPE}.{table} s SEMI JOIN {owner} m "
                              f"ON m.account_id = s.account_id AND m.{key} = s.{key} "
                              f"EXCEPT ALL SELECT * FROM {table}))").fetchall()
        if changed[0][0]:
            raise _WholeAccount(f"a product, price or coupon the store had changed ({table})")


def _check_rules(con: duckdb.DuckDBPyConnection, db: str) -> None:
    """Raise _WholeAccount when the rules written in the attached database ``db`` differ from the stored ones."""
    for table in _RULE_TABLES:
        differ = con.execute(f"SELECT count(*) FROM ((SELECT * FROM {table} EXCEPT ALL SELECT * FROM {db}.{table}) "
                             f"UNION ALL (SELECT * FROM {db}.{table} EXCEPT ALL SELECT * FROM {table}))").fetchall()
        if differ[0][0]:
            raise _WholeAccount(f"the rules changed since the last recompute ({table})")


def _catalogue_seen(con: duckdb.DuckDBPyConnection, since: dt.datetime) -> bool:
    """Whether a product, price or coupon was seen at or after ``since``."""
    return bool(con.execute(" UNION ALL ".join(f"(SELECT 1 FROM {table} WHERE last_seen_at >= $since LIMIT 1)"
                                               for table in _CATALOGUE), {"since": since}).fetchall())


def _check_rules_alone(con: duckdb.DuckDBPyConnection, main_db: str, settings: Settings) -> None:
    """_check_rules when no customer is derived again (no scope holds the rules): they are written apart."""
    cur = quiet(con.cursor())
    cur.execute("ATTACH ':memory:' AS rules_now")
    try:
        cur.execute("USE rules_now")
        write_settings(cur, settings)
        cur.execute(f"USE {main_db}")
        _check_rules(cur, "rules_now")
    finally:
        cur.execute(f"USE {main_db}")
        cur.execute("DETACH rules_now")
        cur.close()


def _replace_price_rows(con: duckdb.DuckDBPyConnection) -> None:
    """Data-quality rows about a price or product: those naming an item (a price found nowhere, or only embedded in
    the item; a product not stored) follow the touched items; those about a stored price's terms are the scope's,
    which holds the whole stored catalogue (a price known only from items it lacks keeps its stored rows)."""
    items = "(account_id, related_id) IN (SELECT (account_id, object_id) FROM touched_dq_objects)"
    stored = (f"(account_id, object_id) IN (SELECT (account_id, price_id) FROM {_SCOPE}.derived_price_terms "
              "WHERE found_in <> 'subscription_items')")
    for where in (f"object_type IN ('price', 'product') AND related_id IS NOT NULL AND {items}",
                  f"object_type = 'price' AND related_id IS NULL AND {stored}"):
        con.execute(f"DELETE FROM derived_data_quality WHERE {where}")
        con.execute(f"INSERT INTO derived_data_quality BY NAME SELECT * FROM {_SCOPE}.derived_data_quality "
                    f"WHERE {where}")


def _replace_catalogue(con: duckdb.DuckDBPyConnection) -> None:
    """The catalogue's derived rows the scope has (new products, prices and coupons among them) replace the stored
    ones."""
    for table, key in _CATALOGUE_TABLES.items():
        con.execute(f"DELETE FROM {table} t USING {_SCOPE}.{table} s "
                    f"WHERE t.account_id = s.account_id AND t.{key} = s.{key}")
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {_SCOPE}.{table}")


def _per_customer_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Derived tables of the main database that hold rows per (account_id, customer_id)."""
    rows = con.execute(
        "SELECT table_name FROM duckdb_columns() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name LIKE 'derived\\_%' ESCAPE '\\' "
        "AND column_name IN ('account_id', 'customer_id') "
        "GROUP BY table_name HAVING count(*) = 2 ORDER BY table_name").fetchall()
    return [r[0] for r in rows]


def _per_subscription_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Derived tables of the main database that hold rows per (account_id, subscription_id) without a
    customer_id (derived_sub_status_steps)."""
    rows = con.execute(
        "SELECT table_name FROM duckdb_columns() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND table_name LIKE 'derived\\_%' ESCAPE '\\' "
        "GROUP BY table_name "
        "HAVING count(*) FILTER (WHERE column_name IN ('account_id', 'subscription_id')) = 2 "
        "AND count(*) FILTER (WHERE column_name = 'customer_id') = 0 ORDER BY table_name").fetchall()
    return [r[0] for r in rows]


def _touched_ledger(cur: duckdb.DuckDBPyConnection, main_db: str, sources: list[tuple[str, str]],
                    name: str) -> None:
    """The monthly bridge ledger of some customers alone, from their rows in each (database, customer table) of
    ``sources``, as the table ``_SCOPE.<name>_ledger``; the macro runs over copies of their rows so that it needs
    no filter of its own. Timed as the phase "old ledger" or "new ledger" (``name`` touched_old, touched_new)."""
    with _phase(f"{name.removeprefix('touched_')} ledger"):
        cur.execute(f"ATTACH ':memory:' AS {name}")
        try:
            for table, key in (("derived_transition_states", "customer_id"),
                               ("derived_mrr_movements", "customer_id"), ("customers", "id")):
                union = " UNION ALL ".join(
                    _rows_of(table, who, f"{db}.main", key, _LEDGER_COLS.get(table, "*"))
                    for db, who in sources)
                cur.execute(f"CREATE TABLE {name}.{table} AS {union}")
            cur.execute("SET search_path = " + sql_literal(f"{name}.main,{main_db}.main"))
            try:
                cur.execute(f"CREATE TABLE {_SCOPE}.{name}_ledger AS SELECT * FROM bridge_ledger('month', NULL)")
            finally:
                cur.execute("RESET search_path")
        finally:
            cur.execute(f"DETACH {name}")


def _derive_moved(cur: duckdb.DuckDBPyConnection, main_db: str, settings: Settings,
                  stop: threading.Event | None = None) -> None:
    """Steps 60-88 for the moved customers, in the attached database ``_MOVED``, on the connection ``cur``; a
    ``stop`` ends them between two statements (:class:`StoppedError`)."""
    with _phase("moved customers: copy rows"):
        for table, sql in _moved_inputs(main_db).items():
            cur.execute(f"CREATE TABLE {_MOVED}.{table} AS {sql}")
        cur.execute(_MOVED_SUB_EVENTS_SQL.format(db=f"{main_db}.main", scope=_SCOPE))
    cur.execute(f"USE {_MOVED}")
    cur.execute("SET search_path = " + sql_literal(f"{_MOVED}.main,{main_db}.main"))
    write_settings(cur, settings)
    with _phase("moved customers: steps 60-88"):
        _run_steps(cur, lambda name: name >= "60" and not name.startswith("9"), stop)


def _run_steps(con: duckdb.DuckDBPyConnection, wanted: Callable[[str], bool],
               stop: threading.Event | None = None) -> None:
    """The metrics steps whose file name ``wanted`` takes, in the current database, statement by statement (each
    one's time logged at DEBUG as "scoped statement LABEL took S s"); a ``stop`` set ends them between two."""
    for name, text in sql_steps():
        if not wanted(name):
            continue
        try:
            run_statements(con, name, text, stop, message="scoped statement %s took %.3f s")
        except duckdb.Error as exc:
            raise DataError(f"metrics step {name} failed for the changed customers, nothing was "
                            f"changed: {exc}".replace("\n", " ")) from exc


def _replace_rows(con: duckdb.DuckDBPyConnection, table: str, source_db: str, keys: str, key: str) -> None:
    """``table``'s rows of the (account_id, ``key``) pairs in ``keys`` := their rows in ``source_db``."""
    con.execute(f"DELETE FROM {table} t USING {keys} k WHERE t.account_id = k.account_id AND t.{key} = k.{key}")
    con.execute(f"INSERT INTO {table} BY NAME SELECT s.* FROM {source_db}.{table} s "
                f"JOIN {keys} k USING (account_id, {key})")


def _update_ledger(con: duckdb.DuckDBPyConnection, old: str, new: str) -> None:
    """ledger := ledger - old contributions of the touched customers + their new ones (every column adds up
    over customers); rows left all zero are dropped."""
    cols = [c[0] for c in con.execute("DESCRIBE derived_bridge_ledger_month").fetchall()
            if c[0] not in ("segment_value", "period_start")]
    exprs = ", ".join(f"coalesce(l.{c}, 0) - coalesce(o.{c}, 0) + coalesce(n.{c}, 0) AS {c}" for c in cols)
    nonzero = " OR ".join(f"{c} <> 0" for c in cols)
    con.execute(f"""
        CREATE OR REPLACE TABLE derived_bridge_ledger_month AS
        SELECT * FROM (
            SELECT coalesce(l.segment_value, o.segment_value, n.segment_value) AS segment_value,
                   coalesce(l.period_start, o.period_start, n.period_start) AS period_start, {exprs}
            FROM derived_bridge_ledger_month l
            FULL JOIN {old} o ON o.segment_value = l.segment_value AND o.period_start = l.period_start
            FULL JOIN {new} n ON n.segment_value = coalesce(l.segment_value, o.segment_value)
                             AND n.period_start = coalesce(l.period_start, o.period_start))
        WHERE {nonzero}""")


# Below this many customers to derive again, the steps run in one scope; above it, the customers are split into
# shards derived side by side, each on its own connection (at most _MAX_SHARDS): queries over a few thousand
# customers' rows run on one thread each. One thread is left to the moved customers and the old ledger, which
# run beside the shards: on 2 threads one scope and those tasks already keep both busy (measured: 2 shards were
# no faster there, 7.0-7.5 s against 7.2-7.4 s for 6,261 customers of a 200k-customer store).
_SHARD_MIN_CUSTOMERS = 2000
_MAX_SHARDS = 4
_SHARD = "touched_shard"


def _shard_count(con: duckdb.DuckDBPyConnection, customers: int) -> int:
    threads = int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
    return max(1, min(threads - 1, _MAX_SHARDS, customers // (_SHARD_MIN_CUSTOMERS // 2)))


def _shard_sql(shards: int) -> str:
    """A touched customer's shard (the same everywhere in one run)."""
    return f"CAST(hash(customer_id) % {shards} AS INTEGER)"


def _stage_rows(con: duckdb.DuckDBPyConnection, shards: int) -> None:
    """Per raw table, the row ids a scope needs with the shard of the customer owning each (NULL: every shard
    needs the row, for an account-wide fact), in ``_SCOPE`` where every connection sees them; the shard of each
    touched customer in ``_SCOPE.shard_of``; in ``_SCOPE.spread`` the touched customers owning a row every
    shard holds (the other shards derive them from that row alone: those rows are not theirs)."""
    con.execute(f"CREATE TABLE {_SCOPE}.shard_of AS SELECT account_id, customer_id, {_shard_sql(shards)} AS shard "
                "FROM touched_customers")
    spread = []
    for table, keys in _SCOPED_KEYS.items():
        if table == "events":
            # (the events are staged last: they need the objects of the rows staged before them)
            con.execute(_TOUCHED_OBJECTS_SQL.format(scope=_SCOPE))
        con.execute(f"CREATE TABLE {_SCOPE}.rows_{table} AS "
                    f"SELECT rid, any_value(account_id) AS account_id, max(object_id) AS object_id, "
                    f"max(customer_id) AS customer_id, "
                    f"CASE WHEN bool_or(customer_id IS NULL) THEN NULL ELSE max({_shard_sql(shards)}) END AS shard "
                    f"FROM ({keys}) GROUP BY rid")
        spread.append(f"SELECT account_id, customer_id FROM {_SCOPE}.rows_{table} "
                      "WHERE shard IS NULL AND customer_id IS NOT NULL")
    con.execute(f"CREATE TABLE {_SCOPE}.spread AS SELECT DISTINCT h.* FROM ({' UNION ALL '.join(spread)}) x "
                f"JOIN {_SCOPE}.shard_of h USING (account_id, customer_id)")
    con.execute(_TOUCHED_DQ_OBJECTS_SQL.format(scope=_SCOPE, staged=" UNION ALL ".join(
        f"SELECT account_id, object_id, customer_id FROM {_SCOPE}.rows_{table} WHERE customer_id IS NOT NULL"
        for table in _SCOPED_KEYS)))


def _read_raw(cur: duckdb.DuckDBPyConnection, table: str, db: str, main_db: str) -> str:
    """``table``'s filter of _READ_RAW for the scope ``db`` (with _CANCELED_RAW for the events when the stored
    settings, ``main_db``'s, recognise churn at the cancellation)."""
    where = _READ_RAW[table].format(db=db, main=f"{main_db}.main")
    if table == "events" and cur.execute(f"SELECT count(*) FROM {main_db}.main.derived_settings "
                                         "WHERE churn_recognition = 'canceled'").fetchall()[0][0]:
        where = f"({where}{_CANCELED_RAW})"
    return where


def _without_unread(cur: duckdb.DuckDBPyConnection, main_db: str, table: str, keep: tuple[str, ...] = ()) -> str:
    """A select list of ``table``'s columns with NULL (of the column's type) in those of ``_UNREAD`` (but ``keep``);
    ``main_db``: the quoted name of the database holding it."""
    unread = tuple(c for c in _UNREAD.get(table, ()) if c not in keep)
    if not unread:
        return "*"
    types = {r[0]: r[1] for r in cur.execute(f"DESCRIBE {main_db}.main.{table}").fetchall()}
    return "* REPLACE (" + ", ".join(f"CAST(NULL AS {types[c]}) AS {c}" for c in unread if c in types) + ")"


def _copy_scope(cur: duckdb.DuckDBPyConnection, main_db: str, db: str, shard: int) -> None:
    """Copy into database ``db`` the raw rows of shard ``shard`` (and those of no touched customer), the
    catalogue, the exchange rates and the sync cursors."""
    for table in _SCOPE_INPUTS:
        src = f"{main_db}.main.{table}"
        if table not in _SCOPED_KEYS:
            cur.execute(f"CREATE TABLE {db}.{table} AS SELECT * FROM {src}")
            continue
        picked = f"SELECT rid FROM {_SCOPE}.rows_{table} WHERE shard = {shard} OR shard IS NULL"
        rows = f"rowid IN ({picked})"
        if table in _READ_RAW:
            # the JSON of only the rows whose JSON the steps read: their row ids first, from the typed columns of the
            # picked rows alone (joined by row id, so the scan reads no other row; as a filter inside the copy, the
            # test read the row ids of the whole table twice: 0.6-0.8 s of invoices at 1M customers), then the copy
            cur.execute(f"CREATE OR REPLACE TEMP TABLE copy_raw_rows AS SELECT e.rowid AS rid FROM {src} e "
                        f"SEMI JOIN ({picked}) k ON e.rowid = k.rid "
                        f"WHERE {_read_raw(cur, table, db, main_db)}")
            rest = _without_unread(cur, main_db, table) if table in _UNREAD else _NO_RAW
            cur.execute(f"CREATE TABLE {db}.{table} AS SELECT {_without_unread(cur, main_db, table, ('raw',))} "
                        f"FROM {src} WHERE rowid IN (SELECT rid FROM copy_raw_rows) "
                        f"UNION ALL SELECT {rest} FROM {src} "
                        f"WHERE rowid IN (SELECT k.rid FROM ({picked}) k ANTI JOIN copy_raw_rows r ON r.rid = k.rid)")
            cur.execute("DROP TABLE copy_raw_rows")
            continue
        cur.execute(f"CREATE TABLE {db}.{table} AS SELECT {_without_unread(cur, main_db, table)} FROM {src} "
                    f"WHERE {rows}")


def _derive_scope(cur: duckdb.DuckDBPyConnection, main_db: str, db: str, shard: int, settings: Settings,
                  stop: threading.Event | None = None) -> None:
    """Copy a shard's rows into database ``db`` and run every metrics step there, on the connection ``cur``; a
    ``stop`` ends the steps between two statements (:class:`StoppedError`)."""
    with _phase(f"scope {shard}: copy rows"):
        _copy_scope(cur, main_db, db, shard)
    cur.execute(f"USE {db}")
    write_settings(cur, settings)
    with _phase(f"scope {shard}: steps"):
        _run_steps(cur, lambda name: True, stop)


def _gather_shards(con: duckdb.DuckDBPyConnection, names: list[str], tables: list[str],
                   sub_tables: list[str]) -> None:
    """The shards' results in ``_SCOPE``, as if the steps had run there: the per-customer tables (``tables``)
    side by side (a touched customer's rows from its own shard only; rows of other customers, derived from
    the rows every shard holds, are never read), the per-subscription ones (``sub_tables``) from the shard
    of the subscription's customer, data-quality rows from the shard of the object they name, account-wide
    tables from the first shard (the exchange-rate days from the shard whose last transition ends latest), the
    price tables from every shard (a price known only from an item is known to the shard of its customer)."""
    derived = [t for (t,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ?",
                                         [names[0]]).fetchall() if t not in _SCOPE_INPUTS]
    latest = con.execute(" UNION ALL ".join(
        f"SELECT {k} AS k, max(t_end) AS t FROM {db}.derived_transition_states" for k, db in enumerate(names))
        + " ORDER BY t DESC NULLS LAST, k LIMIT 1").fetchall()[0][0]
    # (and the customers, which the ledger of the touched customers reads)
    for table in (*derived, "customers"):
        if table in tables or table == "customers":
            key = "id" if table == "customers" else "customer_id"
            parts = [f"SELECT x.* FROM {db}.{table} x ANTI JOIN {_SCOPE}.spread h ON h.account_id = x.account_id "
                     f"AND h.customer_id = x.{key} AND h.shard <> {k}" for k, db in enumerate(names)]
        elif table == "derived_fx_missing":
            parts = [f"SELECT * FROM {db}.{table}" for db in names]
        elif table in _ITEM_PRICE_TABLES:
            # (every shard has the stored prices; a price known only from an item, from the shard of the item's
            # customer: each price's rows from the first shard that has them)
            parts = [f"SELECT * FROM {names[0]}.{table}"] + [
                f"SELECT x.* FROM {db}.{table} x ANTI JOIN ("
                + " UNION ALL ".join(f"SELECT account_id, price_id FROM {e}.{table}" for e in names[:k])
                + ") e ON e.account_id = x.account_id AND e.price_id = x.price_id"
                for k, db in enumerate(names) if k > 0]
        elif table in sub_tables:
            parts = [f"SELECT x.* FROM {db}.{table} x SEMI JOIN (SELECT d.account_id, d.subscription_id "
                     f"FROM {db}.derived_subs d JOIN {_SCOPE}.shard_of h ON h.account_id = d.account_id "
                     f"AND h.customer_id = d.customer_id AND h.shard = {k}) s "
                     f"ON s.account_id = x.account_id AND s.subscription_id = x.subscription_id"
                     for k, db in enumerate(names)]
        elif table == "derived_data_quality":
            parts = [f"SELECT x.* FROM {db}.{table} x SEMI JOIN touched_dq_shards o "
                     f"ON o.account_id = x.account_id AND o.object_id = x.object_id AND o.shard = {k}"
                     for k, db in enumerate(names)]
            # (a row about a price or product that names an item: from the shard of the item)
            parts += [f"SELECT x.* FROM {db}.{table} x SEMI JOIN touched_dq_shards o "
                      f"ON o.account_id = x.account_id AND o.object_id = x.related_id AND o.shard = {k} "
                      f"WHERE x.object_type IN ('price', 'product')"
                      for k, db in enumerate(names)]
            parts.append(f"SELECT x.* FROM {names[0]}.{table} x ANTI JOIN touched_dq_shards o "
                         f"ON o.account_id = x.account_id AND o.object_id = x.object_id "
                         f"WHERE NOT (x.object_type IN ('price', 'product') AND x.related_id IS NOT NULL)")
        else:
            parts = [f"SELECT * FROM {names[latest if table == 'derived_fx_days' else 0]}.{table}"]
        con.execute(f"CREATE TABLE {_SCOPE}.{table} AS " + " UNION ALL ".join(parts))


def _derive_all(con: duckdb.DuckDBPyConnection, main_db: str, settings: Settings, shards: int, moved: bool,
                tables: list[str], sub_tables: list[str], stop: threading.Event | None = None) -> None:
    """Side by side, each on its own connection: the touched customers' shards, copied and derived (in
    ``_SCOPE`` itself when there is one), the moved customers from step 60 on (in ``_MOVED``) and the old
    ledger of both (``_SCOPE.touched_old_ledger``); then the shards gathered into ``_SCOPE``."""
    with _phase("stage row ids"):
        _stage_rows(con, shards)
    names = [_SCOPE] if shards == 1 else [f"{_SHARD}_{k}" for k in range(shards)]
    if shards > 1:
        for db in names:
            con.execute(f"ATTACH ':memory:' AS {db}")
    tasks: list[Callable[[duckdb.DuckDBPyConnection], None]] = [
        partial(_derive_scope, main_db=main_db, db=names[k], shard=k, settings=settings, stop=stop)
        for k in range(shards)]
    if moved:
        tasks.append(partial(_derive_moved, main_db=main_db, settings=settings, stop=stop))
    tasks.append(partial(_touched_ledger, main_db=main_db, name="touched_old", sources=[
        (main_db, f"{_SCOPE}.touched_customers"), (main_db, f"{_SCOPE}.moved_customers")]))

    def run(task: Callable[[duckdb.DuckDBPyConnection], None]) -> None:
        cur = quiet(con.cursor())
        try:
            task(cur)
        finally:
            cur.close()

    threads = int(con.execute("SELECT current_setting('threads')").fetchall()[0][0])
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(tasks)))) as pool:
        for done in [pool.submit(run, task) for task in tasks]:
            done.result()
    if shards > 1:
        con.execute(f"CREATE OR REPLACE TEMP TABLE touched_dq_shards AS SELECT o.account_id, o.object_id, h.shard "
                    f"FROM touched_dq_objects o JOIN {_SCOPE}.shard_of h USING (account_id, customer_id)")
        with _phase("gather shards"):
            _gather_shards(con, names, tables, sub_tables)
        for db in names:
            con.execute(f"DETACH {db}")


def recompute_changed(con: duckdb.DuckDBPyConnection, settings: Settings, since: dt.datetime,
                      shards: int | None = None) -> int:
    """Derive again the customers with raw objects seen at or after ``since``; returns how many.

    Needs a full :func:`~stripe_churn.metrics.runner.recompute` to have run once on this store. When the changed
    customers alone cannot fix an account-wide table, everything is recomputed (and every customer counted).
    Exchange rates and the metrics code are not compared here: :func:`recompute_after_sync` (the pipeline's way in)
    compares their digests first and recomputes in full when they changed. ``shards``: how many groups of customers are derived side by side (default: one per DuckDB thread but one,
    when there are enough customers).
    """
    return _changed_or_full(con, settings, since, shards)[1]


# Above this many changed customers, when they are more than a quarter of all, everything is recomputed instead.
WHOLE_ABOVE = 20_000

# Objects are marked seen by the syncing process's clock, and the previous recompute's start by the same clock:
# the changed customers are those with objects seen from a little before it (a clock set back by up to this much
# loses nothing; the cost is deriving again the customers of the sync just before it).
CLOCK_MARGIN = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Recomputed:
    """How :func:`recompute_after_sync` brought the metrics up to date."""

    mode: str  # "full" or "changed"
    customers: int  # customers derived (every customer when "full")
    reason: str | None = None  # why everything was derived when only the changed customers were asked for


def recompute_after_sync(con: duckdb.DuckDBPyConnection, settings: Settings, *, changed_only: bool,
                         progress: Callable[[int, int, str], None] | None = None,
                         stop: threading.Event | None = None, everything_seen: str | None = None) -> Recomputed:
    """Bring the metrics up to date after a sync: every customer (the default, design.md 2), or, when
    ``changed_only``, only the customers with objects seen since the last recorded recompute (``metrics_runs``)
    began. Everything is recomputed instead when no recompute is recorded, when the SQL steps, the package, the
    store's migrations or the exchange rates differ from what the last one saw, and when the rules, the catalogue
    or where event coverage starts changed (:func:`recompute_changed`), and when ``everything_seen`` says why the
    sync saw every object again; the reason is returned and logged."""
    reason: str | None = None
    if changed_only:
        last = con.execute("SELECT started_at, code_digest, fx_digest FROM metrics_runs "
                           "ORDER BY started_at DESC LIMIT 1").fetchall() if has_runs_table(con) else []
        if everything_seen:
            reason = everything_seen
        elif not last:
            reason = "no recompute of this store is recorded yet"
        elif last[0][1] != code_digest(con):
            reason = "the metrics code or the store's schema changed since the last recompute"
        elif last[0][2] != fx_digest(con):
            reason = "the exchange rates changed since the last recompute"
        else:
            if stop is not None and stop.is_set():
                raise StoppedError("stop requested before the metrics recompute")
            mode, customers, why = _changed_or_full(con, settings, last[0][0] - CLOCK_MARGIN, None,
                                                    progress=progress, stop=stop)
            return Recomputed(mode, customers, why)
        log.info("metrics recomputed in full instead of for the changed customers: %s", reason)
    recompute(con, settings, progress=progress, stop=stop, reason=reason)
    return Recomputed("full", _customer_count(con), reason)


def _customer_count(con: duckdb.DuckDBPyConnection) -> int:
    return int(con.execute("SELECT count(*) FROM customers").fetchall()[0][0])


def _changed_or_full(con: duckdb.DuckDBPyConnection, settings: Settings, since: dt.datetime, shards: int | None,
                     progress: Callable[[int, int, str], None] | None = None,
                     stop: threading.Event | None = None) -> tuple[str, int, str | None]:
    """(mode, customers derived, why everything was) of deriving the changed customers, or everything when they
    alone cannot fix an account-wide table."""
    try:
        return "changed", _derive_changed(con, settings, since, shards, stop), None
    except _WholeAccount as why:
        log.info("metrics recomputed in full instead of for the changed customers: %s", why)
        recompute(con, settings, progress=progress, stop=stop, reason=str(why))
        return "full", _customer_count(con), str(why)


def _stopped(stop: threading.Event | None) -> None:
    """StoppedError when ``stop`` is set: nothing of the changed customers' derivation is kept (the scopes are
    attached in memory; the store's rows are replaced in one transaction, rolled back)."""
    if stop is not None and stop.is_set():
        raise StoppedError("stop requested during the metrics recompute of the changed customers")


def _derive_changed(con: duckdb.DuckDBPyConnection, settings: Settings, since: dt.datetime,
                    shards: int | None, stop: threading.Event | None = None) -> int:
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC)
    # (the store's database is named after its file: quoted, as a name such as stripe-churn is no identifier)
    main_db = sql_identifier(con.execute("SELECT current_database()").fetchall()[0][0])
    with _phase("find customers"):
        con.execute(_NEW_EVENTS_SQL, {"since": since})
        con.execute(_TOUCHED_SQL, {"since": since})
        con.execute(_COVERAGE_SQL)
        con.execute(_WHOLE_ACCOUNT_SQL)
        con.execute(_CLAMPED_SQL)
        con.execute(_MOVED_SQL)
    touched = con.execute("SELECT count(*) FROM touched_customers").fetchall()[0][0]
    moved = con.execute("SELECT count(*) FROM moved_customers").fetchall()[0][0]
    if touched + moved > WHOLE_ABOVE:
        everyone = _customer_count(con)
        if (touched + moved) * 4 > everyone:
            # (the scopes hold copies of their customers' rows in memory: for most of a large account, one pass
            # over the store is quicker and needs less)
            raise _WholeAccount(f"{touched + moved:,} of {everyone:,} customers changed")
    if touched == 0:
        if moved == 0:
            if not _catalogue_seen(con, since):
                _check_rules_alone(con, main_db, settings)
                con.execute("BEGIN TRANSACTION")
                try:
                    # (the latest snapshot may still have moved, with no change of anyone's between the two)
                    con.execute("DELETE FROM derived_coverage WHERE account_id IN "
                                "(SELECT account_id FROM touched_coverage)")
                    con.execute("INSERT INTO derived_coverage BY NAME SELECT n.* FROM coverage_now() n "
                                "SEMI JOIN touched_coverage t USING (account_id)")
                    record_run(con, started_at, "changed", 0)
                    con.execute("COMMIT")
                except BaseException:
                    rollback(con)
                    raise
                return 0
            # (a product, price or coupon came with the sync and no customer did: a scope of no customer derives
            # the catalogue, which is compared with the stored one as in any other run, and its new rows kept)
        else:
            # (no scope of new objects to take the latest snapshot from: derive them in full)
            con.execute("INSERT INTO touched_customers SELECT * FROM moved_customers")
            con.execute("DELETE FROM moved_customers")
            touched, moved = moved, 0
    tables = _per_customer_tables(con)
    sub_tables = _per_subscription_tables(con)
    con.execute(f"ATTACH ':memory:' AS {_SCOPE}")
    con.execute(f"ATTACH ':memory:' AS {_MOVED}")
    try:
        # (the connections that derive side by side see the attached databases, not this one's temp tables)
        con.execute(f"CREATE TABLE {_SCOPE}.touched_customers AS SELECT * FROM touched_customers")
        con.execute(f"CREATE TABLE {_SCOPE}.moved_customers AS SELECT * FROM moved_customers")
        con.execute(f"CREATE TABLE {_SCOPE}.new_coverage AS SELECT * FROM coverage_now()")
        shards = _shard_count(con, touched) if shards is None else shards
        _stopped(stop)
        with _phase("derive: from staging the row ids to the steps"):
            _derive_all(con, main_db, settings, shards, moved > 0, tables, sub_tables, stop)
        _stopped(stop)
        missing = con.execute(f"SELECT currency, min(first_date), max(last_date) FROM {_SCOPE}.derived_fx_missing "
                              "GROUP BY currency ORDER BY currency").fetchall()
        if missing:
            raise missing_rates_error(settings.currency.lower(),
                                      [f"{cur} on {first}..{last}" for cur, first, last in missing])
        with _phase("compare the catalogue and rules"):
            _check_account_wide(con)
        inputs = _moved_inputs(main_db)
        moved_tables = [t for (t,) in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [_MOVED]).fetchall()
            if t in tables and t not in inputs]
        _touched_ledger(con, main_db, [(_SCOPE, f"{_SCOPE}.touched_customers"), (_MOVED, f"{_SCOPE}.moved_customers")]
                        if moved else [(_SCOPE, f"{_SCOPE}.touched_customers")], "touched_new")
        # The commit's checkpoint leaves the replaced rows as delete markers instead of compacting the row
        # groups that hold them: a compaction that merges a small row group into its neighbour rewrites every
        # row group after it, a cost that grows with the whole table, not with the customers derived again
        # (the next full recompute writes the tables afresh).
        vacuum_tasks = con.execute("SELECT current_setting('max_vacuum_tasks')").fetchall()[0][0]
        con.execute("SET max_vacuum_tasks = 0")
        # the subscriptions of the touched customers, before and after (for the tables kept per subscription)
        con.execute(f"CREATE OR REPLACE TEMP TABLE touched_subscriptions AS "
                    f"SELECT s.account_id, s.subscription_id FROM derived_subs s "
                    f"JOIN touched_customers c USING (account_id, customer_id) "
                    f"UNION SELECT s.account_id, s.subscription_id FROM {_SCOPE}.derived_subs s "
                    f"JOIN touched_customers c USING (account_id, customer_id)")
        _stopped(stop)
        con.execute("BEGIN TRANSACTION")
        replacing = time.perf_counter()
        try:
            for table in sub_tables:
                _replace_rows(con, table, _SCOPE, "touched_subscriptions", "subscription_id")
            # where event coverage starts and the latest snapshot: the scope holds each account's oldest and
            # newest event and most recently seen subscription, so it computed them as a full recompute would
            con.execute(f"DELETE FROM derived_coverage WHERE account_id IN "
                        f"(SELECT account_id FROM {_SCOPE}.derived_coverage)")
            con.execute(f"INSERT INTO derived_coverage BY NAME SELECT * FROM {_SCOPE}.derived_coverage")
            _replace_catalogue(con)
            for table in tables:
                _replace_rows(con, table, _SCOPE, "touched_customers", "customer_id")
            for table in moved_tables:
                _replace_rows(con, table, _MOVED, "moved_customers", "customer_id")
            _update_ledger(con, f"{_SCOPE}.touched_old_ledger", f"{_SCOPE}.touched_new_ledger")
            con.execute("DELETE FROM derived_data_quality t USING touched_dq_objects k "
                        "WHERE t.account_id = k.account_id AND t.object_id = k.object_id")
            con.execute(f"INSERT INTO derived_data_quality BY NAME SELECT s.* FROM {_SCOPE}.derived_data_quality s "
                        "SEMI JOIN touched_dq_objects k ON k.account_id = s.account_id AND k.object_id = s.object_id")
            _replace_price_rows(con)
            # the exchange rate per day runs through the same last day as in the scope (today, unless a
            # transition ends later): the scope's table is the whole account's then
            last_day = con.execute(_FX_LAST_DAY_SQL.format(db="")).fetchall()[0][0]
            scope_last_day = con.execute(_FX_LAST_DAY_SQL.format(db=f"{_SCOPE}.")).fetchall()[0][0]
            if last_day != scope_last_day:
                raise _WholeAccount(f"a transition ends on {last_day}, after today and the changed customers' "
                                    "last one")
            con.execute("DELETE FROM derived_fx_days")
            con.execute(f"INSERT INTO derived_fx_days BY NAME SELECT * FROM {_SCOPE}.derived_fx_days")
            check_money_fits(con)
            record_run(con, started_at, "changed", int(touched + moved))
            _log_phase("replace rows", replacing)
            _stopped(stop)  # (the last moment a stop rolls everything back)
            with _phase("commit"):
                con.execute("COMMIT")
        except BaseException:
            rollback(con)
            raise
        finally:
            con.execute(f"SET max_vacuum_tasks = {int(vacuum_tasks)}")
    finally:
        con.execute(f"DETACH {_SCOPE}")
        con.execute(f"DETACH DATABASE IF EXISTS {_MOVED}")
        for k in range(_MAX_SHARDS if shards is None else max(shards, _MAX_SHARDS)):
            con.execute(f"DETACH DATABASE IF EXISTS {_SHARD}_{k}")
    log.info("metrics derived again for %d changed customers (and from the transitions on for %d more) in "
             "%.2f s", touched, moved, time.perf_counter() - started)
    return int(touched + moved)
