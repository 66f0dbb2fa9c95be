"""The sandbox's read model: Stripe-shaped JSON bytes of every object, list views, pagination, expand.

Each object is serialised once (with embedded lists truncated and includable fields such as price ``tiers``
left out, as Stripe does) and cached as bytes. Views (sorted id lists of one resource under one filter) are
cached too, with their objects' bytes in list order; a list page is slices of those bytes inside its envelope,
sent without being joined. Everything is dropped and rebuilt lazily after an advance.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from stripe_churn.sandbox.objects import INCLUDABLE, currency_options, price_view

RESOURCES = ("customers", "products", "prices", "coupons", "subscriptions", "invoices", "credit_notes",
             "invoiceitems")
SINGULAR = {
    "customers": "customer", "products": "product", "prices": "price", "coupons": "coupon",
    "subscriptions": "subscription", "invoices": "invoice", "credit_notes": "credit note",
    "events": "event", "subscription_items": "subscription item", "line_items": "line item",
    "invoiceitems": "invoiceitem",
}
# the field a resource's lists are ordered and ``created``-filtered by when not ``created`` (an invoice item has
# ``date`` instead)
TIME_FIELD = {"invoiceitems": "date"}
EMBED_LIMIT = 10
EVENT_RETENTION_S = 30 * 86400
MAX_EXPAND_DEPTH = 4
SEQ_SPAN = 1 << 32
VIEW_CACHE_MAX = 512
ID_PREFIXES = {
    "cus_": "customers", "prod_": "products", "price_": "prices", "sub_": "subscriptions",
    "in_": "invoices", "cn_": "credit_notes",
}

Params = Mapping[str, Any]


class ApiError(Exception):
    """A request the sandbox refuses, answered with Stripe's error envelope."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param

    def envelope(self) -> dict[str, Any]:
        err: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code:
            err["code"] = self.code
            err["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            err["param"] = self.param
        return {"error": err}


def missing(resource: str, obj_id: str, param: str = "id") -> ApiError:
    """Stripe's 404 for an id that does not exist."""
    return ApiError(404, f"No such {SINGULAR.get(resource, resource)}: '{obj_id}'", code="resource_missing",
                    param=param)


def ref(value: Any) -> Any:
    """The id of an expandable field, whether it holds an id or an expanded object."""
    return value.get("id") if isinstance(value, dict) else value


@dataclass(slots=True)
class View:
    """Ids of one resource under one filter, newest first, with ascending sort keys for bisection.

    The view also keeps its objects' serialised bytes, filled as pages are asked for: the objects of each
    page served for the first time are stored together as one segment (their bytes joined by commas), and
    every position records its segment and byte range in it. A page is then a few slices of segments, whatever
    its cursor: consecutive objects lie side by side in memory, which the kernel copies much faster than a
    hundred scattered byte strings.
    """

    ids: list[str]
    keys: list[int]
    seg_of: list[int] | None = None  # segment of each position, -1 until its bytes are stored
    begin: list[int] = field(default_factory=list)  # byte range of each position in its segment
    end: list[int] = field(default_factory=list)
    segments: list[bytes] = field(default_factory=list)
    seg_stop: list[int] = field(default_factory=list)  # first position after each segment
    paths: tuple[str, ...] = ()  # the expand paths its objects' bytes are served with
    expanded: dict[tuple[str, ...], View] | None = None  # the same ids served with other expand paths


def _embedded(lst: dict[str, Any], url: str, item: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    data = lst.get("data") or []
    return {"object": "list", "data": [item(x) for x in data[:EMBED_LIMIT]],
            "has_more": len(data) > EMBED_LIMIT, "url": url}


def _without_includable(price: Any) -> Any:
    """A price (or coupon) without its includable fields; the same object when it has none."""
    if isinstance(price, dict) and any(k in price for k in INCLUDABLE):
        return price_view(price)
    return price


def item_shape(item: dict[str, Any]) -> dict[str, Any]:
    if isinstance(item.get("price"), dict) and any(k in item["price"] for k in INCLUDABLE):
        item = dict(item)
        item["price"] = _without_includable(item["price"])
        if isinstance(item.get("plan"), dict):
            item["plan"] = _without_includable(item["plan"])
    return item


def _same(x: dict[str, Any]) -> dict[str, Any]:
    return x


def shape(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the API serves it: embedded lists cut to 10 with ``has_more``/``url``, no tiers or
    currency_options."""
    if obj.get("deleted"):
        return obj
    kind = obj.get("object")
    if kind == "subscription" and isinstance(obj.get("items"), dict):
        out = dict(obj)
        out["items"] = _embedded(obj["items"], f"/v1/subscription_items?subscription={obj['id']}", item_shape)
        return out
    if kind == "invoice" and isinstance(obj.get("lines"), dict):
        out = dict(obj)
        out["lines"] = _embedded(obj["lines"], f"/v1/invoices/{obj['id']}/lines", _same)
        return out
    if kind == "credit_note" and isinstance(obj.get("lines"), dict):
        out = dict(obj)
        out["lines"] = _embedded(obj["lines"], f"/v1/credit_notes/{obj['id']}/lines", _same)
        return out
    if kind in ("price", "coupon"):
        return _without_includable(obj)
    if kind == "event":
        data = obj.get("data")
        if isinstance(data, dict) and isinstance(data.get("object"), dict):
            inner = shape(data["object"])
            if inner is not data["object"]:
                out = dict(obj)
                out["data"] = {**data, "object": inner}
                return out
    return obj


def served_objects(sim: Any, tables: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Every live object a simulation's sandbox serves now, per store table (``tables``: the store's raw
    tables), shaped as the sync asks for it: invoices and subscriptions with their discounts expanded,
    prices with their tiers and currency_options, coupons with theirs and their applies_to, events within the retention window, the
    pending invoice items. For tests and checks of a synced store."""
    exp: dict[str, dict[str, Any]] = {t: {} for t in tables}
    objs = sim.objects
    for table in ("customers", "products", "coupons", "invoices", "credit_notes"):
        for oid, o in objs[table].items():
            if not o.get("deleted"):
                exp[table][oid] = shape(o)

    def expanded(ids: list[Any] | None) -> list[Any]:
        return [sim.discounts.get(d, d) if isinstance(d, str) else d for d in ids or []]

    def line_with_discounts(ln: dict[str, Any]) -> dict[str, Any]:
        return {**ln, "discounts": expanded(ln.get("discounts"))} if ln.get("discounts") else ln

    for oid, inv in exp["invoices"].items():  # listed with expand[]=data.discounts and data.lines.data.discounts
        lines = inv.get("lines")
        if inv.get("discounts") or any(ln.get("discounts") for ln in (lines or {}).get("data") or []):
            exp["invoices"][oid] = {**inv, "discounts": expanded(inv.get("discounts"))}
            if lines:
                exp["invoices"][oid]["lines"] = {**lines, "data": [line_with_discounts(ln) for ln in lines["data"]]}
    for oid, o in objs["coupons"].items():  # listed with expand[]=data.currency_options and data.applies_to
        if not o.get("deleted"):
            exp["coupons"][oid] = {**exp["coupons"][oid], "currency_options": currency_options(o),
                                   "applies_to": o.get("applies_to")}
    for oid, o in objs["prices"].items():
        if not o.get("deleted"):
            # listed with expand[]=data.tiers and data.currency_options
            exp["prices"][oid] = {**o, "tiers": o.get("tiers"), "currency_options": currency_options(o)}
    for oid, s in objs["subscriptions"].items():
        if s.get("deleted"):
            continue
        o = dict(shape(s))
        o["discounts"] = [sim.discounts[d] if isinstance(d, str) else d for d in s.get("discounts") or []]
        exp["subscriptions"][oid] = o
        for d in o["discounts"]:
            exp["discounts"][d["id"]] = d
        # (listed with expand[]=data.items.data.discounts too; the embedded list is cut short, the items are all
        # stored)

        def with_discounts(it: dict[str, Any]) -> dict[str, Any]:
            return {**it, "discounts": [sim.discounts[d] if isinstance(d, str) else d
                                        for d in it.get("discounts") or []]}

        o["items"] = {**o["items"], "data": [with_discounts(it) for it in o["items"]["data"]]}
        for it in map(with_discounts, s["items"]["data"]):
            for d in it["discounts"]:
                exp["discounts"][d["id"]] = d
            exp["subscription_items"][it["id"]] = item_shape(it)
    for inv in objs["invoices"].values():
        if not inv.get("deleted"):
            for ln in map(line_with_discounts, inv["lines"]["data"]):
                exp["invoice_lines"][ln["id"]] = ln
    cutoff = int(sim.clock) - EVENT_RETENTION_S
    for e in sim.events:
        if e["created"] >= cutoff:
            exp["events"][e["id"]] = shape(e)
    if "invoice_items" in exp:  # (the sync lists the pending ones only)
        for oid, o in objs.get("invoiceitems", {}).items():
            if o.get("invoice") is None and not o.get("deleted"):  # (listed with expand[]=data.discounts)
                exp["invoice_items"][oid] = {**shape(o), "discounts": expanded(o.get("discounts"))}
    return exp


# --- filters ------------------------------------------------------------------------------------------


def parse_bool(params: Params, name: str) -> bool | None:
    raw = params.get(name)
    if raw is None:
        return None
    if raw in ("true", "false"):
        return raw == "true"
    raise ApiError(400, f"Invalid boolean: {raw}", param=name)


def parse_int(raw: Any, name: str) -> int:
    """An integer parameter: ASCII digits after at most one '-' (``int()`` alone would take other digits)."""
    if isinstance(raw, str):
        s = raw.strip()
        digits = s[1:] if s.startswith("-") else s
        if digits.isascii() and digits.isdigit():
            return int(s)
    raise ApiError(400, f"Invalid integer: {raw}", param=name)


def _str_param(params: Params, name: str) -> str | None:
    raw = params.get(name)
    if raw is None:
        return None
    if isinstance(raw, list) and raw and all(v == raw[0] for v in raw):
        raw = raw[0]  # the same value repeated (a url that already carries it, plus the param)
    if not isinstance(raw, str):
        raise ApiError(400, f"Invalid string: {name} must be a single value", param=name)
    return raw


def _str_list(params: Params, name: str) -> list[str] | None:
    raw = params.get(name)
    if raw is None:
        return None
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list):
        return raw
    raise ApiError(400, f"Invalid array: {name}", param=name)


def _invoice_subscription(inv: dict[str, Any]) -> Any:
    parent = inv.get("parent") or {}
    details = parent.get("subscription_details") or {}
    return ref(details.get("subscription")) or ref(inv.get("subscription"))


SUB_STATUSES = {"active", "all", "canceled", "ended", "incomplete", "incomplete_expired", "past_due",
                "paused", "trialing", "unpaid"}
INVOICE_STATUSES = {"draft", "open", "paid", "uncollectible", "void"}
# name -> (index field or None, predicate builder); values already validated strings
Predicate = Callable[[dict[str, Any]], bool]


def filters_for(resource: str, params: Params) -> list[tuple[str, Any, Predicate]]:
    """Validated filters of one list request as (name, value, predicate), in a canonical order."""
    out: list[tuple[str, Any, Predicate]] = []

    def eq(field: str, value: str, name: str | None = None) -> None:
        out.append((name or field, value, lambda o: ref(o.get(field)) == value))

    if resource in ("subscriptions", "invoices", "credit_notes", "invoiceitems"):
        cust = _str_param(params, "customer")
        if cust is not None:
            eq("customer", cust)
    if resource == "subscriptions":
        status = _str_param(params, "status")
        if status is not None and status not in SUB_STATUSES:
            raise ApiError(400, f"Invalid status: must be one of {', '.join(sorted(SUB_STATUSES))}",
                           param="status")
        if status is None:
            out.append(("status", None, lambda o: o.get("status") != "canceled"))
        elif status == "ended":
            out.append(("status", "ended", lambda o: o.get("status") in ("canceled", "incomplete_expired")))
        elif status != "all":
            eq("status", status)
        price = _str_param(params, "price")
        if price is not None:
            out.append(("price", price, lambda o: any(
                ref(i.get("price")) == price for i in (o.get("items") or {}).get("data", []))))
        coll = _str_param(params, "collection_method")
        if coll is not None:
            eq("collection_method", coll)
    elif resource == "invoices":
        status = _str_param(params, "status")
        if status is not None:
            if status not in INVOICE_STATUSES:
                raise ApiError(400, f"Invalid status: must be one of {', '.join(sorted(INVOICE_STATUSES))}",
                               param="status")
            eq("status", status)
        sub = _str_param(params, "subscription")
        if sub is not None:
            out.append(("subscription", sub, lambda o: _invoice_subscription(o) == sub))
        coll = _str_param(params, "collection_method")
        if coll is not None:
            eq("collection_method", coll)
    elif resource in ("credit_notes", "invoiceitems"):
        inv = _str_param(params, "invoice")
        if inv is not None:
            eq("invoice", inv)
        pending = parse_bool(params, "pending") if resource == "invoiceitems" else None
        if pending is not None:  # pending: on no invoice yet
            out.append(("pending", pending, lambda o: (o.get("invoice") is None) is pending))
    elif resource == "prices":
        active = parse_bool(params, "active")
        want = True if active is None else active
        out.append(("active", want, lambda o: bool(o.get("active")) is want))
        for field in ("product", "currency", "type"):
            val = _str_param(params, field)
            if val is not None:
                eq(field, val)
        lookup_keys = _str_list(params, "lookup_keys")
        if lookup_keys is not None:
            if len(lookup_keys) > 10:
                raise ApiError(400, "lookup_keys may contain at most 10 lookup keys.", param="lookup_keys")
            keyset = frozenset(lookup_keys)
            out.append(("lookup_keys", tuple(sorted(keyset)), lambda o: o.get("lookup_key") in keyset))
        out.extend(_recurring_filters(params))
    elif resource == "products":
        active = parse_bool(params, "active")
        if active is not None:
            out.append(("active", active, lambda o: bool(o.get("active")) is active))
        typ = _str_param(params, "type")
        if typ is not None:
            eq("type", typ)
        shippable = parse_bool(params, "shippable")
        if shippable is not None:  # (a service's shippable is null: not shippable)
            out.append(("shippable", shippable, lambda o: bool(o.get("shippable")) is shippable))
        ids = _str_list(params, "ids")
        if ids is not None:
            idset = frozenset(ids)
            out.append(("ids", tuple(sorted(idset)), lambda o: o.get("id") in idset))
    elif resource == "customers":
        email = _str_param(params, "email")
        if email is not None:
            eq("email", email)
    elif resource == "events":
        typ = _str_param(params, "type")
        types = _str_list(params, "types")
        if typ is not None and types is not None:
            raise ApiError(400, "You may only specify one of these parameters: type, types.", param="types")
        if types is not None and len(types) > 20:
            raise ApiError(400, "types may contain at most 20 event types.", param="types")
        patterns = [typ] if typ is not None else types
        if patterns is not None:
            exact = frozenset(p for p in patterns if not p.endswith("*"))
            prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))
            out.append(("type", tuple(patterns), lambda o: o.get("type") in exact
                        or (bool(prefixes) and str(o.get("type", "")).startswith(prefixes))))
    return out


RECURRING_VALUES = {"interval": ("day", "month", "week", "year"), "usage_type": ("licensed", "metered"),
                    "meter": None}


def _recurring_filters(params: Params) -> list[tuple[str, Any, Predicate]]:
    """A price list's ``recurring[interval|meter|usage_type]`` filters (only recurring prices have them)."""
    raw = params.get("recurring")
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise ApiError(400, "Invalid recurring: pass recurring[interval], recurring[meter] or recurring[usage_type]",
                       param="recurring")
    out: list[tuple[str, Any, Predicate]] = []
    for key, value in sorted(raw.items()):
        name = f"recurring[{key}]"
        if key not in RECURRING_VALUES:
            raise ApiError(400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name)
        allowed = RECURRING_VALUES[key]
        if allowed is not None and value not in allowed:
            raise ApiError(400, f"Invalid {name}: must be one of {', '.join(allowed)}", param=name)
        out.append((name, value, _recurring_is(key, value)))
    return out


def _recurring_is(key: str, value: str) -> Predicate:
    return lambda o: (o.get("recurring") or {}).get(key) == value


def created_range(params: Params) -> tuple[int | None, int | None]:
    """``created`` as an int or ``created[gt|gte|lt|lte]``, as an inclusive (low, high) pair."""
    raw = params.get("created")
    if raw is None:
        return None, None
    if isinstance(raw, str):
        value = parse_int(raw, "created")
        return value, value
    if not isinstance(raw, dict):
        raise ApiError(400, "Invalid created: pass an integer or created[gt|gte|lt|lte]", param="created")
    low: int | None = None
    high: int | None = None
    for op, val in raw.items():
        n = parse_int(val, f"created[{op}]")
        if op == "gt":
            low = max(low, n + 1) if low is not None else n + 1
        elif op == "gte":
            low = max(low, n) if low is not None else n
        elif op == "lt":
            high = min(high, n - 1) if high is not None else n - 1
        elif op == "lte":
            high = min(high, n) if high is not None else n
        else:
            raise ApiError(400, f"Received unknown parameter: created[{op}]", code="parameter_unknown",
                           param=f"created[{op}]")
    return low, high


def parse_limit(params: Params) -> int:
    raw = params.get("limit")
    if raw is None:
        return 10
    limit = parse_int(raw, "limit")
    if not 1 <= limit <= 100:
        raise ApiError(400, f"Invalid limit: must be between 1 and 100 (got {limit}).", param="limit")
    return limit


COMMON_LIST_PARAMS = frozenset({"limit", "starting_after", "ending_before", "expand", "created"})
EXTRA_LIST_PARAMS = {
    "customers": {"email"},
    "products": {"active", "type", "ids", "shippable"},
    "prices": {"active", "product", "currency", "type", "lookup_keys", "recurring"},
    "coupons": set(),
    "subscriptions": {"status", "customer", "price", "collection_method"},
    "invoices": {"status", "customer", "subscription", "collection_method"},
    "credit_notes": {"customer", "invoice"},
    "invoiceitems": {"customer", "invoice", "pending"},
    "events": {"type", "types"},
}


def check_params(params: Params, allowed: Iterable[str]) -> None:
    """Stripe refuses parameters it does not know; so does the sandbox, naming the first one."""
    allowed_set = set(allowed)
    for name in params:
        if name not in allowed_set:
            raise ApiError(400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name)


def expand_paths(params: Params) -> tuple[str, ...]:
    raw = params.get("expand")
    if raw is None:
        return ()
    paths = [raw] if isinstance(raw, str) else raw
    if not isinstance(paths, list):
        raise ApiError(400, "Invalid array: expand", param="expand")
    for path in paths:  # (the path as given: a list's leading ``data`` is a level, whatever objects it reaches)
        if path.count(".") >= MAX_EXPAND_DEPTH:
            raise ApiError(400, f"You cannot expand more than {MAX_EXPAND_DEPTH} levels of a property. "
                           f"Property: {path}", param="expand")
    return tuple(sorted(set(paths)))


def page_body(chunks: Sequence[bytes], has_more: bool, url: str) -> list[bytes | memoryview]:
    """A list envelope around already serialised objects, as the pieces to send back to back (no joined copy)."""
    n = len(chunks)
    parts: list[bytes | memoryview] = [b","] * (2 * n - 1) if n else []
    parts[::2] = chunks
    return envelope(parts, has_more, url)


def envelope(data: list[bytes | memoryview], has_more: bool, url: str) -> list[bytes | memoryview]:
    """A list envelope around ``data``, the pieces of the objects already separated by commas."""
    data.insert(0, b'{"object":"list","data":[')
    data.append(b"".join((b'],"has_more":', b"true" if has_more else b"false", b',"url":', orjson.dumps(url),
                          b"}")))
    return data


def paginate(ids: list[str], keys: list[int] | None, pos_of: Callable[[str], int | None],
             key_of: Callable[[str], int | None], resource: str, params: Params,
             lo: int = 0, hi: int | None = None) -> tuple[list[str], bool]:
    """One page of ``ids[lo:hi]`` (newest first) after the cursor parameters; returns (ids, has_more)."""
    start, end, has_more = page_span(ids, keys, pos_of, key_of, resource, params, lo, hi)
    return ids[start:end], has_more


def page_span(ids: list[str], keys: list[int] | None, pos_of: Callable[[str], int | None],
              key_of: Callable[[str], int | None], resource: str, params: Params,
              lo: int = 0, hi: int | None = None) -> tuple[int, int, bool]:
    """Where one page of ``ids[lo:hi]`` (newest first) lies after the cursor parameters: (start, end, has_more).

    With ``keys`` a cursor object outside the view still finds its place by its sort key (as Stripe does
    for, say, a canceled subscription used as ``starting_after`` on the default list); without keys the
    cursor must be in the list.
    """
    limit = parse_limit(params)
    hi = len(ids) if hi is None else hi
    after = _str_param(params, "starting_after")
    before = _str_param(params, "ending_before")
    if after is not None and before is not None:
        raise ApiError(400, "You may only specify one of these parameters: ending_before, starting_after.",
                       param="ending_before")

    def locate(cursor: str, param: str) -> tuple[int, int]:
        if keys is not None:
            k = key_of(cursor)
            if k is None:
                raise missing(resource, cursor, param)
            return bisect.bisect_left(keys, k, lo, hi), bisect.bisect_right(keys, k, lo, hi)
        p = pos_of(cursor)
        if p is None:
            raise missing(resource, cursor, param)
        return p, p + 1

    if before is not None:
        end = locate(before, "ending_before")[0]
        start = max(lo, end - limit)
        return start, end, start > lo
    start = lo if after is None else locate(after, "starting_after")[1]
    start = max(start, lo)
    end = min(hi, start + limit)
    return start, end, end < hi
