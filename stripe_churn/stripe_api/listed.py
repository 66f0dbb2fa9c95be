"""List pages cut into each object's own JSON bytes, without building Python dicts.

A full sync stores every listed object's JSON as it came. Parsing a page into dicts and serialising each
object (and each embedded item or line) again cost most of the sync's Python time: about 20 ms for a page of
100 subscriptions. Here msgspec decodes a page into the raw byte spans of its objects (``msgspec.Raw``), and
each object only into the few fields the sync reads (id, created, deleted, the embedded lists and
discounts), each of those again as raw spans: about a tenth of the time, and the bytes stored are Stripe's own.

An object of another shape than expected (an ``items`` that is not a list object, no id) makes
:func:`decode_object` return None, and the sync takes the slow path (``orjson`` dicts) for it, which handles
every shape the sync accepts; so does an item or line without its parent's id (``UNSET``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType


class Page(Struct):
    """A list page, or a list embedded in an object: its objects' JSON spans."""

    data: list[Raw] = []
    has_more: Any = False


class ListPage(Struct):
    """A list endpoint's answer: ``object`` and ``data`` must be there. (A JSON object of another kind, say a proxy's
    or a maintenance page's ``{"message": ...}``, read as a page with no objects would make a full sync flag every
    stored object deleted.)"""

    object: str
    data: list[Raw]
    has_more: Any = False


class Head(Struct):
    """The fields every listed object is read by."""

    id: Any = None
    object: Any = None
    created: Any = None
    deleted: Any = False


class Customer(Head):
    discount: Raw | UnsetType = UNSET  # UNSET: the key is missing (not the same as null)


class Subscription(Head):
    items: Page | None = None
    discounts: list[Raw] | None = None


class Item(Head):
    subscription: Any = UNSET
    discounts: list[Raw] | None = None


class Invoice(Head):
    lines: Page | None = None
    discounts: list[Raw] | None = None


class Line(Head):
    invoice: Any = UNSET
    discounts: list[Raw] | None = None


class InvoiceItem(Head):
    discounts: list[Raw] | None = None


# What Stripe names the objects of each table (their ``object``): a page or an embedded list holding an object of
# another kind is no answer the sync can store as it is (a customers page holding a subscription stored it as a
# customer). Prices keep legacy plans too.
OBJECT_NAMES: dict[str, tuple[str, ...]] = {
    "customers": ("customer",), "products": ("product",), "prices": ("price", "plan"), "coupons": ("coupon",),
    "subscriptions": ("subscription",), "subscription_items": ("subscription_item",), "invoices": ("invoice",),
    "invoice_lines": ("line_item",), "credit_notes": ("credit_note",), "credit_note_lines": ("credit_note_line_item",),
    "discounts": ("discount",), "invoice_items": ("invoiceitem",), "events": ("event",),
}

_LIST_PAGE = msgspec.json.Decoder(ListPage)
_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    "customers": msgspec.json.Decoder(Customer), "subscriptions": msgspec.json.Decoder(Subscription),
    "invoices": msgspec.json.Decoder(Invoice), "subscription_items": msgspec.json.Decoder(Item),
    "invoice_lines": msgspec.json.Decoder(Line), "invoice_items": msgspec.json.Decoder(InvoiceItem),
}
_HEAD = msgspec.json.Decoder(Head)
_ANY = msgspec.json.Decoder()


def decode_page(body: bytes) -> ListPage:
    """A list page's objects as raw spans of compact JSON; ``ValueError`` (msgspec's) when ``body`` is not a
    list object (``"object": "list"`` and a ``data`` list). Pretty-printed JSON (Stripe's own answers are indented) is made
    compact first, so stored JSON never carries layout whitespace."""
    if b"\n" in body or b'": ' in body:
        body = msgspec.json.format(body, indent=-1)
    page = _LIST_PAGE.decode(body)
    if page.object != "list":
        raise msgspec.ValidationError(f"a list page's object is 'list', not {page.object[:40]!r}")
    return page


def decode_object(table: str, raw: Raw | bytes) -> Any:
    """The fields of one listed object that the sync reads (a :class:`Head` or its subclass for ``table``), or
    None when the object does not have the expected shape."""
    try:
        head = _DECODERS.get(table, _HEAD).decode(raw)
    except msgspec.DecodeError:
        return None
    if not isinstance(head.id, str) or not head.id:  # (the dict path says what is wrong with it)
        return None
    if head.object is not None and head.object not in OBJECT_NAMES.get(table, (head.object,)):
        return None
    return head


def parse_json(raw: Raw | bytes | str) -> Any:
    """``raw`` parsed as plain JSON (an object into dicts and lists, an id string, null), an integer of any size
    kept whole (orjson reads one beyond 64 bits as a double, and the object stored from it would no longer be what
    Stripe sent: design.md 7); ``ValueError`` when it is not JSON (NaN, a lone surrogate, a number beyond a double's range, cut short) and
    ``RecursionError`` when it is nested deeper than Python's recursion limit."""
    try:
        return _ANY.decode(raw)
    except msgspec.ValidationError as exc:  # (a number out of range: not JSON we can read, not a shape we expected)
        raise ValueError(str(exc)) from None


def is_object(raw: bytes) -> bool:
    """Whether a raw span is a JSON object (an expanded object, not an id string or null)."""
    return raw[:1] == b"{"


def head_of(raw: Raw | bytes) -> Head:
    """id/created/deleted of an embedded object (``ValueError`` when it is not an object)."""
    return _HEAD.decode(raw)
