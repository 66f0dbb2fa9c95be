"""What a full sync lists, with which parameters, and how a resource's ``created`` range is cut into slices.

Test clocks: Stripe's list endpoints leave out objects attached to a test clock unless ``test_clock`` (or
``customer``) is given. A full sync therefore also lists ``/v1/test_helpers/test_clocks`` and, for each
clock, lists customers and subscriptions with ``test_clock=<id>`` (see :data:`TEST_CLOCK_RESOURCES`); when
that endpoint is missing (live mode, or a server without it) the sync logs it once and goes on. The
sandbox has no test clocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

PAGE_LIMIT = 100


@dataclass(frozen=True)
class Stream:
    """One list endpoint pass: table it fills, path, fixed parameters."""

    name: str  # unique, also the cursor prefix
    table: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)


STREAMS: tuple[Stream, ...] = (
    # (a customer's discount is always embedded: Stripe refuses to expand it, "This property cannot be expanded")
    Stream("customers", "customers", "/v1/customers"),
    Stream("products.active", "products", "/v1/products", {"active": True}),
    Stream("products.inactive", "products", "/v1/products", {"active": False}),
    # (tiers and the amounts in other currencies come only when expanded)
    Stream("prices.active", "prices", "/v1/prices",
           {"active": True, "expand": ["data.tiers", "data.currency_options"]}),
    Stream("prices.inactive", "prices", "/v1/prices",
           {"active": False, "expand": ["data.tiers", "data.currency_options"]}),
    # (a coupon's products, when it is restricted to some, come only when expanded)
    Stream("coupons", "coupons", "/v1/coupons", {"expand": ["data.currency_options", "data.applies_to"]}),
    # (a discount on one item comes only with its item: design.md 7)
    Stream("subscriptions", "subscriptions", "/v1/subscriptions",
           {"status": "all", "expand": ["data.discounts", "data.items.data.discounts"]}),
    # (a discount on one item is billed on that item's lines, not among the invoice's discounts: the lines are
    # the only trace of one that has ended)
    Stream("invoices", "invoices", "/v1/invoices", {"expand": ["data.discounts", "data.lines.data.discounts"]}),
    Stream("credit_notes", "credit_notes", "/v1/credit_notes"),
    Stream("events", "events", "/v1/events"),
)

# The pending invoice items (on no invoice yet), listed whole at every sync, full or incremental; not sliced by
# ``created`` like STREAMS: they are few, and only a complete listing tells which stored ones have left the
# pending list since (invoiced or deleted). Prorations of a change made with Stripe's default
# ``create_prorations`` wait here for the next invoice, months away on an annual plan; once invoiced they are
# that invoice's lines. A server without the endpoint (404) is logged once per sync, which goes on without them.
# (Their discounts expanded: an add-on sold on an annual plan with a promotion that ends before the renewal has
# its discount named on its pending proration alone.)
PENDING_ITEMS = Stream("invoice_items.pending", "invoice_items", "/v1/invoiceitems",
                       {"pending": True, "expand": ["data.discounts"]})


# the parameters listing an invoice's lines when its embedded list is cut short (their discounts expanded, as in
# the invoices' listing)
LINE_LIST_PARAMS: dict[str, Any] = {"expand": ["data.discounts"]}


def item_list_params(subscription_id: str) -> dict[str, Any]:
    """The parameters listing a subscription's items when its embedded list is cut short (their discounts
    expanded, as in the subscriptions' listing and for lines)."""
    return {"subscription": subscription_id, **LINE_LIST_PARAMS}


# resources listed again per test clock (their lists leave test-clock objects out)
TEST_CLOCK_RESOURCES = ("customers", "subscriptions")

# retrieve path of each table whose objects can disappear from lists (deleted)
RETRIEVE_PATH: dict[str, str] = {
    "customers": "/v1/customers/{id}", "products": "/v1/products/{id}", "prices": "/v1/prices/{id}",
    "coupons": "/v1/coupons/{id}", "subscriptions": "/v1/subscriptions/{id}", "invoices": "/v1/invoices/{id}",
    "credit_notes": "/v1/credit_notes/{id}",
}

# what a retrieve expands, so that a retrieved copy has the shape of a listed one
RETRIEVE_PARAMS: dict[str, dict[str, Any]] = {
    "prices": {"expand": ["tiers", "currency_options"]},
    "coupons": {"expand": ["currency_options", "applies_to"]},
    "subscriptions": {"expand": ["discounts", "items.data.discounts"]}, "invoices": {"expand": ["discounts", "lines.data.discounts"]},
}

# event object type -> table
# (``invoiceitem.created|deleted`` events are stored with the other events but not applied to invoice_items:
# the pending listing of the same run is the truth and always comes after them, so they would add nothing
# there; an item created and invoiced between two syncs would get a row from its creation event besides its
# invoice's line, which is all the listing leaves of it; and on a server without /v1/invoiceitems, items from
# events would stay pending for ever, as no complete listing would say they left. Whether an item that left the
# pending list was invoiced or deleted, the invoices' lines tell.)
OBJECT_TABLE: dict[str, str] = {
    "customer": "customers", "product": "products", "price": "prices", "plan": "prices", "coupon": "coupons",
    "subscription": "subscriptions", "invoice": "invoices", "credit_note": "credit_notes",
    "discount": "discounts",
}
# tables whose ``*.deleted`` event means the object is gone (a subscription's ``.deleted`` means canceled)
DELETABLE = frozenset({"customers", "products", "prices", "coupons", "invoices", "discounts"})

EVENT_RETENTION_S = 30 * 86400


# Without a rate limit the server itself is the limit: a few hundred list pages per second at most, and a few
# requests in flight keep it busy (more only queue there, holding pages in memory).
SERVER_CEILING_RPS = 200.0
UNLIMITED_IN_FLIGHT = 6


def slice_count(rate_limit: float, latency_s: float, *, floor: int = 4, cap: int = 48) -> int:
    """Slices listed at once (over all streams) so that the requests in flight fill the rate limit:
    rate x latency, with a margin for the time spent between a page's answer and the next request."""
    if rate_limit >= 5 * SERVER_CEILING_RPS:
        return UNLIMITED_IN_FLIGHT
    in_flight = min(rate_limit, SERVER_CEILING_RPS) * max(latency_s, 0.005) * 1.5
    return max(floor, min(cap, math.ceil(in_flight)))
