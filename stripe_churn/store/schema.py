"""SQLModel models of the store's tables; the DDL is generated from this metadata for DuckDB.

Every raw table keeps the whole object (``raw``) plus typed columns pulled out of it for joins. The typed
columns are computed from the JSON by :data:`EXTRACT` at load time, so the raw JSON stays the truth.
"""

from __future__ import annotations

import datetime as dt
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Double, Numeric
from sqlmodel import Field, SQLModel


class RawBase(SQLModel):
    """Columns common to every raw table; primary key (account_id, id)."""

    account_id: str = Field(primary_key=True)
    id: str = Field(primary_key=True)
    deleted: bool = Field(default=False)
    raw: Any = Field(default=None, sa_type=JSON)
    version: int | None = Field(default=None, sa_type=BigInteger)  # unix seconds of the copy kept
    created: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    first_seen_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    last_seen_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # when the row's current state (its JSON, its deleted flag) was first stored: the write that changed it, at
    # that write's moment, or at the copy's version when that is later (Stripe's clock running ahead of this
    # machine's); a write of the same state again leaves it (last_seen_at moves at every write)
    state_seen_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class Customer(RawBase, table=True):
    __tablename__ = "customers"
    email: str | None = None
    name: str | None = None
    currency: str | None = None
    test_clock: str | None = None
    country: str | None = None


class Product(RawBase, table=True):
    __tablename__ = "products"
    name: str | None = None
    active: bool | None = None
    unit_label: str | None = None


class Price(RawBase, table=True):
    __tablename__ = "prices"
    product_id: str | None = None
    active: bool | None = None
    currency: str | None = None
    type: str | None = None
    unit_amount: int | None = Field(default=None, sa_type=BigInteger)
    recurring_interval: str | None = None
    recurring_interval_count: int | None = None
    usage_type: str | None = None
    # A tiered price's currency option in another currency than its own came without its tiers (Stripe sends an
    # option's tiers only when each is expanded: the sync retrieves the price again for them), so that the sync finds
    # such prices without reading every tiered price's JSON. Kept with the options when a copy lacks them (an event's).
    options_without_tiers: bool | None = None
    # The sync's own bookkeeping, not from the JSON (no upsert of the price sets it; a full listing's merge clears it):
    # the ``state_seen_at`` of the stored state whose retrieve did not bring those tiers (or answered 404). While the
    # row keeps that state no incremental sync retrieves it again for them; a new state is asked for. NULL: not asked,
    # or asked and answered.
    option_tiers_not_found_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class Coupon(RawBase, table=True):
    __tablename__ = "coupons"
    duration: str | None = None
    percent_off: float | None = Field(default=None, sa_type=Double)
    amount_off: int | None = Field(default=None, sa_type=BigInteger)
    currency: str | None = None


class Subscription(RawBase, table=True):
    __tablename__ = "subscriptions"
    customer_id: str | None = None
    status: str | None = None
    currency: str | None = None
    start_date: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    cancel_at_period_end: bool | None = None
    cancel_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    canceled_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    ended_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    test_clock: str | None = None
    trial_start: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    trial_end: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    paused_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    cancellation_reason: str | None = None
    cancellation_feedback: str | None = None
    cancellation_comment: str | None = None
    pause_collection: bool | None = None


class SubscriptionItem(RawBase, table=True):
    __tablename__ = "subscription_items"
    subscription_id: str | None = None
    price_id: str | None = None
    product_id: str | None = None
    quantity: int | None = Field(default=None, sa_type=BigInteger)
    current_period_start: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    current_period_end: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class Invoice(RawBase, table=True):
    __tablename__ = "invoices"
    customer_id: str | None = None
    subscription_id: str | None = None
    status: str | None = None
    currency: str | None = None
    billing_reason: str | None = None
    amount_due: int | None = Field(default=None, sa_type=BigInteger)
    amount_paid: int | None = Field(default=None, sa_type=BigInteger)
    total: int | None = Field(default=None, sa_type=BigInteger)
    period_start: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    period_end: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    marked_uncollectible_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    attempted: bool | None = None  # a payment of it was tried (`attempted`, or an `attempt_count` above 0)
    # when it was finalized and paid, and how many payments of it were tried: a subscription's renewal paid only at a
    # later attempt (or not yet) shows a past_due spell, before the events' window the only trace of it
    finalized_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    paid_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    attempt_count: int | None = Field(default=None, sa_type=BigInteger)


class Billed(RawBase):
    """The columns of what bills a subscription item: an invoice's line, or the invoice item it comes from."""

    invoice_id: str | None = None
    subscription_id: str | None = None
    subscription_item_id: str | None = None
    price_id: str | None = None
    product_id: str | None = None
    quantity: int | None = Field(default=None, sa_type=BigInteger)
    amount: int | None = Field(default=None, sa_type=BigInteger)
    currency: str | None = None
    proration: bool | None = None
    period_start: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    period_end: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class InvoiceLine(Billed, table=True):
    __tablename__ = "invoice_lines"
    # the line's parent as the metrics read it: proration flag, a credit for unused time, inclusive tax
    parent_proration: bool | None = None
    proration_credit: bool | None = None
    tax_inclusive: int | None = Field(default=None, sa_type=BigInteger)
    # what comes off the amount before tax (discounts, pre-tax credits): tax is worked out on the rest
    pretax_credits: int | None = Field(default=None, sa_type=BigInteger)
    # the invoice item the line bills (a pending proration billed by a later invoice, or a one-time item)
    invoice_item_id: str | None = None


class InvoiceItem(Billed, table=True):
    """An invoice item (``/v1/invoiceitems``). The sync lists the pending ones (not yet on an invoice) at every
    run: the prorations of a change made with Stripe's default ``create_prorations`` wait there for the next
    invoice, months away on an annual plan, and date the change when no event does."""

    __tablename__ = "invoice_items"
    customer_id: str | None = None
    proration_credit: bool | None = None  # a credit for unused time (proration_details.credited_items)
    date: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # on no invoice as of the latest complete listing of the pending items (the sync sets it false for an item
    # that listing no longer returned: invoiced or deleted since)
    pending: bool | None = None


class CreditNote(RawBase, table=True):
    __tablename__ = "credit_notes"
    customer_id: str | None = None
    invoice_id: str | None = None
    status: str | None = None
    currency: str | None = None
    total: int | None = Field(default=None, sa_type=BigInteger)
    # ``lines.has_more``: only the first page of its lines is stored (Stripe embeds 10; the sync stores the whole list
    # once it has paged it), so that the sync finds the notes cut short without reading every JSON
    lines_has_more: bool | None = None
    # The sync's own bookkeeping, not from the JSON (no upsert of the credit note sets it; a full listing's merge
    # clears it): the ``state_seen_at`` of the stored state whose lines endpoint answered 404 (its embedded page
    # kept, ``lines.has_more`` true). While the row keeps that state no incremental sync asks for its lines again;
    # a new state (an event's, a changed copy) is asked for. NULL: not asked, or asked and answered.
    lines_not_found_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class Discount(RawBase, table=True):
    __tablename__ = "discounts"
    customer_id: str | None = None
    subscription_id: str | None = None
    subscription_item_id: str | None = None
    coupon_id: str | None = None
    start_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    end_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class Event(RawBase, table=True):
    __tablename__ = "events"
    type: str | None = None
    object_id: str | None = None
    object_type: str | None = None


class FxRate(SQLModel, table=True):
    __tablename__ = "fx_rates"
    date: dt.date = Field(primary_key=True)
    currency: str = Field(primary_key=True)
    rate: Decimal = Field(sa_type=Numeric(18, 8))


class SyncRun(SQLModel, table=True):
    __tablename__ = "sync_runs"
    run_id: str = Field(primary_key=True)
    account_id: str | None = None
    started_at: datetime = Field(sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    mode: str = "full"
    status: str = "running"
    counts: Any = Field(default=None, sa_type=JSON, nullable=True)
    requests: int | None = None
    error: str | None = None
    fallback_reason: str | None = None
    cursor_before: int | None = Field(default=None, sa_type=BigInteger)
    cursor_after: int | None = Field(default=None, sa_type=BigInteger)


class SyncCursor(SQLModel, table=True):
    __tablename__ = "sync_cursors"
    account_id: str = Field(primary_key=True)
    stream: str = Field(primary_key=True)  # "events" or "<resource>:<slice>" of a full sync
    value: str | None = None  # starting_after id or event id
    created: int | None = Field(default=None, sa_type=BigInteger)  # unix seconds the cursor covers
    done: bool = False
    run_id: str | None = None
    updated_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class MetricsRun(SQLModel, table=True):
    """One committed metrics recompute: what it derived and what it was derived from (metrics.runner)."""

    __tablename__ = "metrics_runs"
    started_at: datetime = Field(primary_key=True, sa_type=DateTime(timezone=True))  # before it read anything
    finished_at: datetime = Field(sa_type=DateTime(timezone=True))
    mode: str = "full"  # "full" | "changed" (only the customers with objects seen since the previous run)
    customers: int = Field(default=0, sa_type=BigInteger)  # customers derived
    reason: str | None = None  # why a run asked for the changed customers recomputed everything
    code_digest: str = ""  # the metrics code (runner.code_digest) and the store's migrations
    fx_digest: str = ""  # the exchange rates


class SchemaMigration(SQLModel, table=True):
    __tablename__ = "schema_migrations"
    name: str = Field(primary_key=True)
    applied_at: datetime = Field(sa_type=DateTime(timezone=True))


RAW_TABLES: tuple[str, ...] = ("customers", "products", "prices", "coupons", "subscriptions",
                               "subscription_items", "invoices", "invoice_lines", "credit_notes", "discounts",
                               "events", "invoice_items")


def _t(path: str) -> str:
    # out-of-range or non-numeric values give NULL (the raw JSON keeps them; the sync never stops on them)
    return f"try(to_timestamp(TRY_CAST(j->>'{path}' AS BIGINT)))"


def _id(path: str) -> str:
    """An id field that may hold either the id or the expanded object."""
    return f"coalesce(j->>'{path}.id', j->>'{path}')"


def _amounts(path: str) -> str:
    """The sum of the ``amount`` fields of a list of objects (NULL when the list is absent or empty)."""
    return (f"list_sum(list_transform(CAST(json_extract(j->>'{path}', '$[*]') AS JSON[]), "
            "lambda x: TRY_CAST(x->>'amount' AS BIGINT)))")


def _plan(path: str) -> str:
    """A field of a legacy ``plan`` object (NULL for any other object)."""
    return f"CASE WHEN j->>'$.object' = 'plan' THEN j->>'{path}' END"


# An invoice line's or invoice item's quantity: ``quantity``, or else ``quantity_decimal`` (the decimal string Stripe
# deprecates ``quantity`` for) when it is a whole number, as a licensed quantity is; NULL otherwise. (The decimal is
# read only for the rows without ``quantity``, and as a DECIMAL only when it has a fraction: "3.000000000000" is
# whole, "2.5" is not; a BIGINT cast alone would round it.)
_QUANTITY_DECIMAL = "TRY_CAST(j->>'$.quantity_decimal' AS DECIMAL(38, 12))"
_QUANTITY = ("coalesce(TRY_CAST(j->>'$.quantity' AS BIGINT), "
             "CASE WHEN NOT contains(j->>'$.quantity_decimal', '.') THEN TRY_CAST(j->>'$.quantity_decimal' AS BIGINT) "
             f"WHEN {_QUANTITY_DECIMAL} = trunc({_QUANTITY_DECIMAL}) THEN TRY_CAST({_QUANTITY_DECIMAL} AS BIGINT) END)")

# table -> typed column -> DuckDB SQL over the object JSON ``j`` (used by load.upsert_objects)
EXTRACT: dict[str, dict[str, str]] = {
    "customers": {"email": "j->>'$.email'", "name": "j->>'$.name'", "currency": "j->>'$.currency'",
                  "test_clock": _id("$.test_clock"), "country": "j->>'$.address.country'"},
    "products": {"name": "j->>'$.name'", "active": "TRY_CAST(j->>'$.active' AS BOOLEAN)",
                 "unit_label": "j->>'$.unit_label'"},
    # (a row may hold a legacy plan, the object of plan.* events: its terms are top-level fields, and a plan is
    # always recurring; 10_price_terms reads it the same way)
    "prices": {"product_id": _id("$.product"), "active": "TRY_CAST(j->>'$.active' AS BOOLEAN)",
               "currency": "j->>'$.currency'",
               "type": "coalesce(j->>'$.type', CASE WHEN j->>'$.object' = 'plan' THEN 'recurring' END)",
               "unit_amount": "TRY_CAST(coalesce(j->>'$.unit_amount', " + _plan("$.amount") + ") AS BIGINT)",
               "recurring_interval": "coalesce(j->>'$.recurring.interval', " + _plan("$.interval") + ")",
               "recurring_interval_count": "TRY_CAST(coalesce(j->>'$.recurring.interval_count', "
                                           + _plan("$.interval_count") + ") AS INTEGER)",
               "usage_type": "coalesce(j->>'$.recurring.usage_type', " + _plan("$.usage_type") + ")",
               # (as sync._options_without_tiers reads the JSON)
               "options_without_tiers": "CASE WHEN j->>'$.billing_scheme' = 'tiered' AND json_type(j, "
                                        "'$.currency_options') = 'OBJECT' THEN coalesce(list_bool_or(list_transform("
                                        "list_zip(json_keys(j, '$.currency_options'), CAST(json_extract(j, "
                                        "'$.currency_options.*') AS JSON[])), lambda o: lower(o[1]) <> "
                                        "lower(coalesce(j->>'$.currency', '')) AND json_type(o[2]) = 'OBJECT' AND "
                                        "coalesce(json_type(o[2], '$.tiers'), 'NULL') <> 'ARRAY')), false) "
                                        "ELSE false END"},
    "coupons": {"duration": "j->>'$.duration'", "percent_off": "TRY_CAST(j->>'$.percent_off' AS DOUBLE)",
                "amount_off": "TRY_CAST(j->>'$.amount_off' AS BIGINT)", "currency": "j->>'$.currency'"},
    "subscriptions": {"customer_id": _id("$.customer"), "status": "j->>'$.status'",
                      "currency": "j->>'$.currency'", "start_date": _t("$.start_date"),
                      "cancel_at_period_end": "TRY_CAST(j->>'$.cancel_at_period_end' AS BOOLEAN)",
                      "cancel_at": _t("$.cancel_at"), "canceled_at": _t("$.canceled_at"),
                      "ended_at": _t("$.ended_at"), "test_clock": _id("$.test_clock"),
                      "trial_start": _t("$.trial_start"), "trial_end": _t("$.trial_end"),
                      "paused_at": _t("$.status_details.paused.transitioned_at"),
                      "cancellation_reason": "j->>'$.cancellation_details.reason'",
                      "cancellation_feedback": "j->>'$.cancellation_details.feedback'",
                      "cancellation_comment": "j->>'$.cancellation_details.comment'",
                      "pause_collection": "coalesce(starts_with(j->>'$.pause_collection', '{'), false)"},
    "subscription_items": {"subscription_id": "j->>'$.subscription'", "price_id": _id("$.price"),
                           "product_id": _id("$.price.product"),
                           "quantity": "TRY_CAST(j->>'$.quantity' AS BIGINT)",
                           "current_period_start": _t("$.current_period_start"),
                           "current_period_end": _t("$.current_period_end")},
    "invoices": {"customer_id": _id("$.customer"),
                 "subscription_id": "coalesce(j->>'$.parent.subscription_details.subscription', "
                                    + _id("$.subscription") + ")",
                 "status": "j->>'$.status'", "currency": "j->>'$.currency'",
                 "billing_reason": "j->>'$.billing_reason'",
                 "amount_due": "TRY_CAST(j->>'$.amount_due' AS BIGINT)",
                 "amount_paid": "TRY_CAST(j->>'$.amount_paid' AS BIGINT)",
                 "total": "TRY_CAST(j->>'$.total' AS BIGINT)",
                 "period_start": _t("$.period_start"), "period_end": _t("$.period_end"),
                 "marked_uncollectible_at": _t("$.status_transitions.marked_uncollectible_at"),
                 "attempted": "(j->>'$.attempted' = 'true' OR TRY_CAST(j->>'$.attempt_count' AS BIGINT) > 0)",
                 "finalized_at": _t("$.status_transitions.finalized_at"),
                 "paid_at": _t("$.status_transitions.paid_at"),
                 "attempt_count": "TRY_CAST(j->>'$.attempt_count' AS BIGINT)"},
    "invoice_lines": {"invoice_id": "j->>'$.invoice'",
                      "subscription_id": "coalesce(j->>'$.parent.subscription_item_details.subscription', "
                                         + _id("$.subscription") + ")",
                      "subscription_item_id": "coalesce(j->>'$.parent.subscription_item_details"
                                              ".subscription_item', j->>'$.subscription_item')",
                      "price_id": "coalesce(j->>'$.pricing.price_details.price', " + _id("$.price") + ")",
                      "product_id": "coalesce(j->>'$.pricing.price_details.product', j->>'$.price.product')",
                      "quantity": _QUANTITY,
                      "amount": "TRY_CAST(j->>'$.amount' AS BIGINT)", "currency": "j->>'$.currency'",
                      "proration": "TRY_CAST(coalesce(j->>'$.parent.subscription_item_details.proration', "
                                   "j->>'$.proration') AS BOOLEAN)",
                      "period_start": _t("$.period.start"), "period_end": _t("$.period.end"),
                      # the parent is subscription_item_details when it names an item, else invoice_item_details
                      "parent_proration": "coalesce(TRY_CAST(CASE WHEN j->>'$.parent.subscription_item_details"
                                          ".subscription_item' IS NOT NULL THEN j->>'$.parent"
                                          ".subscription_item_details.proration' ELSE j->>'$.parent"
                                          ".invoice_item_details.proration' END AS BOOLEAN), false)",
                      "proration_credit": "coalesce(starts_with(CASE WHEN j->>'$.parent.subscription_item_details"
                                          ".subscription_item' IS NOT NULL THEN j->>'$.parent"
                                          ".subscription_item_details.proration_details.credited_items' "
                                          "ELSE j->>'$.parent.invoice_item_details.proration_details"
                                          ".credited_items' END, '{'), false)",
                      "tax_inclusive": "coalesce(list_sum(list_transform(list_filter(CAST(json_extract("
                                       "j->>'$.taxes', '$[*]') AS JSON[]), lambda x: x->>'tax_behavior' = "
                                       "'inclusive'), lambda x: TRY_CAST(x->>'amount' AS BIGINT))), 0)",
                      # pretax_credit_amounts (discounts and credit balance), or discount_amounts where a line
                      # has only those (older API versions)
                      "pretax_credits": "coalesce(nullif(" + _amounts("$.pretax_credit_amounts") + ", 0), "
                                        + _amounts("$.discount_amounts") + ", 0)",
                      "invoice_item_id": "coalesce(j->>'$.parent.subscription_item_details.invoice_item', "
                                         "j->>'$.parent.invoice_item_details.invoice_item')"},
    "invoice_items": {"customer_id": _id("$.customer"),
                      "subscription_id": "coalesce(j->>'$.parent.subscription_details.subscription', "
                                         + _id("$.subscription") + ")",
                      "subscription_item_id": "coalesce(j->>'$.parent.subscription_details.subscription_item', "
                                              "j->>'$.subscription_item')",
                      "invoice_id": _id("$.invoice"),
                      "price_id": "coalesce(j->>'$.pricing.price_details.price', " + _id("$.price") + ")",
                      "product_id": "coalesce(j->>'$.pricing.price_details.product', j->>'$.price.product')",
                      "quantity": _QUANTITY,
                      "amount": "TRY_CAST(j->>'$.amount' AS BIGINT)", "currency": "j->>'$.currency'",
                      "proration": "TRY_CAST(j->>'$.proration' AS BOOLEAN)",
                      "proration_credit": "coalesce(starts_with(j->>'$.proration_details.credited_items', '{'), "
                                          "false)",
                      "date": _t("$.date"),
                      "period_start": _t("$.period.start"), "period_end": _t("$.period.end"),
                      "pending": "(" + _id("$.invoice") + ") IS NULL"},
    "credit_notes": {"customer_id": _id("$.customer"), "invoice_id": _id("$.invoice"),
                     "status": "j->>'$.status'", "currency": "j->>'$.currency'",
                     "total": "TRY_CAST(j->>'$.total' AS BIGINT)",
                     "lines_has_more": "TRY_CAST(j->>'$.lines.has_more' AS BOOLEAN)"},
    "discounts": {"customer_id": _id("$.customer"), "subscription_id": "j->>'$.subscription'",
                  "subscription_item_id": "j->>'$.subscription_item'",
                  "coupon_id": "coalesce(j->>'$.source.coupon.id', j->>'$.source.coupon', j->>'$.coupon.id')",
                  "start_at": _t("$.start"), "end_at": _t("$.end")},
    "events": {"type": "j->>'$.type'", "object_id": "j->>'$.data.object.id'",
               "object_type": "j->>'$.data.object.object'"},
}

# Subscription events: what the metrics read of the state after (``data.object``) and of
# ``previous_attributes`` (20_sub_states), parsed once at load instead of at every recompute: such an event's
# JSON is about 7 KB, and parsing it again was a tenth of a full recompute. ``types`` are the JSON types at
# _SUB_TYPE_PATHS (NULL: the key is absent), which JSON merge-patch rules depend on; items are (id, price id,
# quantity as sent, created), the price id being the embedded price's id, or the price when it is an id.
_SUB_ITEM_TYPE = "STRUCT(id VARCHAR, price_id VARCHAR, quantity_text VARCHAR, created VARCHAR)"
SUB_STATE_TYPE = (f"STRUCT(status VARCHAR, types VARCHAR[], has_more VARCHAR, items {_SUB_ITEM_TYPE}[], "
                  f"discounts JSON, prev_status VARCHAR, prev_has_more VARCHAR, prev_items {_SUB_ITEM_TYPE}[], "
                  "prev_discounts JSON)")
_SUB_PART = ('{"status": "VARCHAR", "discounts": "JSON", "items": {"has_more": "VARCHAR", "data": [{"id": "VARCHAR", '
             '"price": {"id": "VARCHAR"}, "quantity": "VARCHAR", "created": "VARCHAR"}]}}')
_SUB_TYPE_PATHS = ("$.data.previous_attributes", "$.data.previous_attributes.status",
                   "$.data.previous_attributes.pause_collection", "$.data.previous_attributes.items",
                   "$.data.previous_attributes.items.data", "$.data.previous_attributes.items.has_more",
                   "$.data.object.pause_collection")
_IS_SUB_EVENT = "j->>'$.type' LIKE 'customer.subscription.%'"

# table -> parsed value -> DuckDB SQL over the object JSON ``j``, computed once per row before the typed columns
# of EXTRACT, which read it as ``s.<name>`` (so that a document is not parsed once per column that needs it)
PARSE: dict[str, dict[str, str]] = {
    "events": {
        "sub_j": f"CASE WHEN {_IS_SUB_EVENT} THEN json_transform(j, "
                 f"'{{\"data\": {{\"object\": {_SUB_PART}, \"previous_attributes\": {_SUB_PART}}}}}') END",
        "sub_t": f"CASE WHEN {_IS_SUB_EVENT} THEN json_type(j, [{', '.join(repr(p) for p in _SUB_TYPE_PATHS)}]) END",
    },
}


def _sub_items(fast: str, path: str) -> str:
    """The items of a parsed state's ``fast`` list; read again from ``j`` at ``path`` when a price is an id."""
    return (f"CASE WHEN list_bool_or(list_transform({fast}, lambda i: i.price.id IS NULL)) THEN list_transform("
            f"list_transform(CAST(json_extract(json_extract(j, '{path}'), '$[*]') AS JSON[]), "
            "lambda i: json_extract_string(i, ['$.id', '$.price.id', '$.price', '$.quantity', '$.created'])), "
            "lambda v: {'id': v[1], 'price_id': coalesce(v[2], v[3]), 'quantity_text': v[4], 'created': v[5]}) "
            f"ELSE list_transform({fast}, lambda i: {{'id': i.id, 'price_id': i.price.id, 'quantity_text': i.quantity, "
            "'created': i.created}) END")


EXTRACT["events"]["sub_state"] = (
    "CASE WHEN s.sub_t IS NOT NULL THEN CAST({"
    "'status': s.sub_j.data.object.status, 'types': s.sub_t, 'has_more': s.sub_j.data.object.items.has_more, "
    f"'items': {_sub_items('s.sub_j.data.object.items.data', '$.data.object.items.data')}, "
    "'discounts': s.sub_j.data.object.discounts, 'prev_status': s.sub_j.data.previous_attributes.status, "
    "'prev_has_more': s.sub_j.data.previous_attributes.items.has_more, "
    "'prev_items': CASE WHEN s.sub_t[1] = 'OBJECT' AND s.sub_t[4] = 'OBJECT' AND s.sub_t[5] IS NOT NULL THEN "
    f"{_sub_items('s.sub_j.data.previous_attributes.items.data', '$.data.previous_attributes.items.data')} END, "
    f"'prev_discounts': s.sub_j.data.previous_attributes.discounts}} AS {SUB_STATE_TYPE}) END")
