"""Serve a simulation's objects the way Stripe's list and retrieve endpoints do, from cached JSON bytes.

The catalog never changes the simulation. It keeps, per resource, the ids newest first (``created``, or an
invoice item's ``date``, descending; ties by creation sequence descending), filtered views of them with their
objects' serialised bytes stored in list order (see :class:`~stripe_churn.sandbox.listing.View`), and the
bytes of retrieved objects; :meth:`Catalog.reset` drops all of it after the simulation advances.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any, Protocol

import orjson

from stripe_churn.sandbox.listing import (
    COMMON_LIST_PARAMS,
    EVENT_RETENTION_S,
    EXTRA_LIST_PARAMS,
    ID_PREFIXES,
    SEQ_SPAN,
    TIME_FIELD,
    VIEW_CACHE_MAX,
    ApiError,
    Params,
    View,
    check_params,
    created_range,
    envelope,
    expand_paths,
    filters_for,
    item_shape,
    missing,
    page_body,
    page_span,
    paginate,
    ref,
    shape,
)
from stripe_churn.sandbox.objects import currency_options

_EXPAND_CACHE_MAX = 50_000
# fields whose expansion is not a plain lookup of the field's value (tiers, currency_options and applies_to come
# from the price or coupon itself)
_NOT_TOP_LEVEL = frozenset({"id", "object", "", "tiers", "currency_options", "applies_to"})


def _refused(node: dict[str, Any], seg: str) -> bool:
    """Whether Stripe refuses to expand ``seg`` of ``node``: a customer's discount, always embedded, never an id."""
    return seg == "discount" and node.get("object") == "customer"


def _holds_nothing(node: Any, segs: list[str]) -> bool:
    """Whether the expand path ``segs`` leads only to fields that hold null or an empty list in ``node`` (through
    embedded lists' ``data``), so that expanding it changes nothing. False when unsure (the slow path decides)."""
    if not isinstance(node, dict):
        return False
    seg, rest = segs[0], segs[1:]
    if node.get("object") == "list":
        return seg == "data" and bool(rest) and all(_holds_nothing(e, rest) for e in node.get("data") or [])
    if seg in _NOT_TOP_LEVEL or seg not in node or _refused(node, seg):
        return False
    value = node[seg]
    if value is None or value == []:
        return True
    return bool(rest) and isinstance(value, dict) and _holds_nothing(value, rest)


def _expandable_value(value: Any) -> bool:
    """Whether a field's value may be expanded: an id, or an object already. A plain hash (metadata, a price's
    recurring) or an embedded list (a subscription's items) holds neither: only a path through it may be expanded."""
    if isinstance(value, dict):
        kind = value.get("object")
        return isinstance(kind, str) and kind != "list"
    return True


class SimulationLike(Protocol):
    """What the server reads from a simulation (see docs/internals.md)."""

    objects: dict[str, dict[str, dict[str, Any]]]
    discounts: dict[str, dict[str, Any]]
    events: list[dict[str, Any]]
    clock: int
    account_id: str
    truth: list[dict[str, Any]]

    def advance(self, months: int = 1) -> None: ...


def _no_pos(_oid: str) -> int | None:
    return None


def _not_expandable(path: str) -> ApiError:
    return ApiError(400, f"This property cannot be expanded ({path}).", param="expand")


class Catalog:
    """List/retrieve/expand over one simulation, with byte caches rebuilt lazily after :meth:`reset`."""

    def __init__(self, sim: SimulationLike) -> None:
        self.sim = sim
        self.reset()

    def reset(self) -> None:
        """Forget every cache (call after the simulation changed)."""
        self._bytes: dict[str, dict[str, bytes]] = {}
        self._keys: dict[str, dict[str, int]] = {}
        self._views: dict[tuple[Any, ...], View] = {}
        self._by_customer: dict[str, dict[str, View]] = {}
        self._expanded: dict[tuple[Any, ...], bytes] = {}
        self._sublists: dict[tuple[str, str], tuple[list[str], dict[str, int], list[dict[str, Any]]]] = {}
        self._item_parent: dict[str, str] | None = None
        self._event_pos: dict[str, int] | None = None
        self._event_window: tuple[int, View] | None = None

    def warm(self) -> int:
        """Serialise every stored object once and lay out each whole list in list order, before serving (as a
        server holds its objects ready to send), so that the first walk of a list does not pay for it; returns
        the number of objects. After a billing run the caches fill again as they are asked for."""
        count = 0
        for resource, objs in self.sim.objects.items():
            cache = self._bytes.setdefault(resource, {})
            for oid in objs:
                if oid not in cache:
                    cache[oid] = self._serialise(resource, oid)
                    count += 1
            view = self._all_view(resource)
            if view.ids:
                self._page_pieces(resource, view, 0, len(view.ids))
        return count

    # --- single objects ---------------------------------------------------------------------------
    def obj_bytes(self, resource: str, oid: str) -> bytes:
        """The cached API bytes of one object (which must exist)."""
        cache = self._bytes.get(resource)
        if cache is None:
            cache = self._bytes[resource] = {}
        data = cache.get(oid)
        if data is None:
            data = cache[oid] = self._serialise(resource, oid)
        return data

    def _serialise(self, resource: str, oid: str) -> bytes:
        obj = self._event(oid) if resource == "events" else self.sim.objects[resource][oid]
        return orjson.dumps(shape(obj))

    def retrieve(self, resource: str, oid: str, params: Params) -> bytes:
        """``GET /v1/{resource}/{id}``: deleted objects come back as their stub; events only within retention."""
        check_params(params, ("expand",))
        if resource == "events":
            if self._event_index_of(oid) is None:
                raise missing("events", oid)
        elif oid not in self._objects(resource):
            raise missing(resource, oid)
        paths = expand_paths(params)
        if paths:
            return self._expanded_bytes(resource, oid, paths)
        return self.obj_bytes(resource, oid)

    # --- lists ------------------------------------------------------------------------------------
    def list_page(self, resource: str, params: Params) -> list[bytes | memoryview]:
        """``GET /v1/{resource}`` with Stripe's filters, ``created`` ranges and cursor pagination; the page is
        returned as pieces to send as they are (the envelope, and slices of the view's stored object bytes)."""
        check_params(params, COMMON_LIST_PARAMS | EXTRA_LIST_PARAMS[resource])
        filters = filters_for(resource, params)
        low, high = created_range(params)
        paths = self._list_expand(params)
        view = self._view(resource, filters)
        lo = 0 if high is None else bisect.bisect_left(view.keys, -(high * SEQ_SPAN + SEQ_SPAN - 1))
        hi = len(view.ids) if low is None else bisect.bisect_right(view.keys, -(low * SEQ_SPAN))
        start, end, has_more = page_span(view.ids, view.keys, _no_pos, lambda i: self._key_of(resource, i),
                                         resource, params, lo, max(lo, hi))
        if paths:
            view = self._expanded_view(view, paths)
        return envelope(self._page_pieces(resource, view, start, end), has_more, f"/v1/{resource}")

    @staticmethod
    def _expanded_view(view: View, paths: tuple[str, ...]) -> View:
        """The same ids as ``view``, their bytes stored as served with ``paths`` expanded."""
        if view.expanded is None:
            view.expanded = {}
        found = view.expanded.get(paths)
        if found is None:
            found = view.expanded[paths] = View(view.ids, view.keys, paths=paths)
        return found

    def _page_pieces(self, resource: str, view: View, start: int, end: int) -> list[bytes | memoryview]:
        """The bytes of ``view.ids[start:end]`` joined by commas, as slices of the view's segments."""
        seg_of = view.seg_of
        if seg_of is None:
            n = len(view.ids)
            seg_of = view.seg_of = [-1] * n
            view.begin = [0] * n
            view.end = [0] * n
        if -1 in seg_of[start:end]:
            self._fill(resource, view, start, end)
        segments, seg_stop, begin, stop = view.segments, view.seg_stop, view.begin, view.end
        pieces: list[bytes | memoryview] = []
        k = start
        while k < end:
            seg = seg_of[k]
            last = min(end, seg_stop[seg]) - 1
            if pieces:
                pieces.append(b",")
            pieces.append(memoryview(segments[seg])[begin[k]:stop[last]])
            k = last + 1
        return pieces

    def _fill(self, resource: str, view: View, start: int, end: int) -> None:
        """Serialise the objects of ``view.ids[start:end]`` not stored yet, each run of them as one segment."""
        seg_of, begin, stop, ids = view.seg_of, view.begin, view.end, view.ids
        assert seg_of is not None
        cache = self._bytes.get(resource) or {}
        k = start
        while k < end:
            if seg_of[k] != -1:
                k += 1
                continue
            j = k
            while j < end and seg_of[j] == -1:
                j += 1
            chunks = [self._listed_bytes(resource, oid, view.paths, cache) for oid in ids[k:j]]
            seg = len(view.segments)
            view.segments.append(b",".join(chunks))
            view.seg_stop.append(j)
            pos = 0
            for i, chunk in enumerate(chunks, k):
                seg_of[i] = seg
                begin[i] = pos
                pos += len(chunk)
                stop[i] = pos
                pos += 1
            k = j

    def sublist_page(self, resource: str, parent_id: str, params: Params, url: str,
                     param: str = "id") -> list[bytes | memoryview]:
        """Items of a subscription or lines of an invoice / credit note, in their embedded order."""
        check_params(params, ("limit", "starting_after", "ending_before", "expand") +
                     (("subscription",) if resource == "subscriptions" else ()))
        ids, pos, elems = self._sublist(resource, parent_id, param)
        paths = self._list_expand(params)
        kind = "subscription_items" if resource == "subscriptions" else "line_items"
        page, has_more = paginate(ids, None, pos.get, lambda _i: None, kind, params)
        chunks = []
        for oid in page:
            elem = elems[pos[oid]]
            if paths:
                elem = orjson.loads(orjson.dumps(elem))
                for p in paths:
                    self._expand(elem, p.split("."), p)
            chunks.append(orjson.dumps(elem))
        return page_body(chunks, has_more, url)

    def subscription_item(self, item_id: str, params: Params) -> bytes:
        """``GET /v1/subscription_items/{id}``."""
        check_params(params, ("expand",))
        if self._item_parent is None:
            self._item_parent = {
                item["id"]: sid
                for sid, sub in self.sim.objects["subscriptions"].items() if not sub.get("deleted")
                for item in (sub.get("items") or {}).get("data", [])
            }
        sid = self._item_parent.get(item_id)
        if sid is None:
            raise missing("subscription_items", item_id)
        _ids, pos, elems = self._sublist("subscriptions", sid, "subscription")
        elem = elems[pos[item_id]]
        paths = expand_paths(params)
        if paths:
            elem = orjson.loads(orjson.dumps(elem))
            for p in paths:
                self._expand(elem, p.split("."), p)
        return orjson.dumps(elem)

    def counts(self) -> dict[str, int]:
        """Listable (not deleted) objects per resource, and events within retention."""
        out = {r: len(self._view(r, []).ids) for r in self.sim.objects}
        out["events"] = len(self._events_view().ids)
        return out

    # --- internals: views -------------------------------------------------------------------------
    def _objects(self, resource: str) -> dict[str, dict[str, Any]]:
        """The simulation's objects of ``resource``; none when it has no such resource (a simulation made without
        deferred prorations has no invoice items: it serves them as Stripe serves an account without any)."""
        return self.sim.objects.get(resource) or {}

    def _key_of(self, resource: str, oid: str) -> int | None:
        if resource == "events":
            idx = self._event_index_of(oid)
            return None if idx is None else -(int(self.sim.events[idx]["created"]) * SEQ_SPAN + idx)
        if self._objects(resource).get(oid, {}).get("deleted"):
            return None  # (a deleted object, its stub without a time, is no cursor: resource_missing, as Stripe)
        return self._keys_for(resource).get(oid)

    def _keys_for(self, resource: str) -> dict[str, int]:
        """Sort key per id: ascending key = newest first, ties by creation sequence descending."""
        keys = self._keys.get(resource)
        if keys is None:
            field = TIME_FIELD.get(resource, "created")
            keys = self._keys[resource] = {
                oid: -(int(obj.get(field) or 0) * SEQ_SPAN + seq)
                for seq, (oid, obj) in enumerate(self._objects(resource).items())
            }
        return keys

    def _view(self, resource: str, filters: list[tuple[str, Any, Any]]) -> View:
        if resource == "events":
            base = self._events_view()
            if not filters:
                return base
        elif not filters:
            return self._all_view(resource)
        ident = (resource, *((name, value) for name, value, _ in filters))
        view = self._views.get(ident)
        if view is not None:
            return view
        if resource == "events":
            events = self.sim.events
            pos = self._event_positions()
            preds = [p for _, _, p in filters]
            keep = [k for k, oid in enumerate(base.ids) if all(p(events[pos[oid]]) for p in preds)]
            view = View([base.ids[k] for k in keep], [base.keys[k] for k in keep])
        else:
            objs = self._objects(resource)
            preds = [p for name, _, p in filters]
            cust = next((v for name, v, _ in filters if name == "customer"), None)
            if cust is not None:
                start = self._customer_view(resource, cust)
                preds = [p for name, _, p in filters if name != "customer"]
            else:
                start = self._all_view(resource)
            keep = [k for k, oid in enumerate(start.ids) if all(p(objs[oid]) for p in preds)]
            view = View([start.ids[k] for k in keep], [start.keys[k] for k in keep])
        if len(self._views) >= VIEW_CACHE_MAX:
            # filtered views go; the whole lists (and the object bytes they hold) stay
            self._views = {k: v for k, v in self._views.items() if k[1:] == (("__all__", None),)}
        self._views[ident] = view
        return view

    def _all_view(self, resource: str) -> View:
        ident = (resource, ("__all__", None))
        view = self._views.get(ident)
        if view is None:
            keys = self._keys_for(resource)
            objs = self._objects(resource)
            order = sorted((k, oid) for oid, k in keys.items() if not objs[oid].get("deleted"))
            view = self._views[ident] = View([oid for _, oid in order], [k for k, _ in order])
        return view

    def _customer_view(self, resource: str, customer: str) -> View:
        groups = self._by_customer.get(resource)
        if groups is None:
            base = self._all_view(resource)
            objs = self._objects(resource)
            grouped: dict[str, tuple[list[str], list[int]]] = {}
            for oid, key in zip(base.ids, base.keys, strict=True):
                cid = ref(objs[oid].get("customer"))
                if cid is not None:
                    entry = grouped.setdefault(cid, ([], []))
                    entry[0].append(oid)
                    entry[1].append(key)
            groups = self._by_customer[resource] = {c: View(i, k) for c, (i, k) in grouped.items()}
        return groups.get(customer) or View([], [])

    def _events_view(self) -> View:
        clock = int(self.sim.clock)
        if self._event_window is not None and self._event_window[0] == clock:
            return self._event_window[1]
        events = self.sim.events
        cutoff = clock - EVENT_RETENTION_S
        # sorted here rather than trusting creation order: a late-recorded event may carry an earlier time
        order = sorted((-(int(e["created"]) * SEQ_SPAN + i), e["id"]) for i, e in enumerate(events)
                       if int(e["created"]) >= cutoff)
        view = View([oid for _, oid in order], [k for k, _ in order])
        self._event_window = (clock, view)
        return view

    def _event_positions(self) -> dict[str, int]:
        if self._event_pos is None:
            self._event_pos = {e["id"]: i for i, e in enumerate(self.sim.events)}
        return self._event_pos

    def _event_index_of(self, oid: str) -> int | None:
        """Index of an event still within the 30-day retention, else None."""
        idx = self._event_positions().get(oid)
        if idx is None or int(self.sim.events[idx]["created"]) < int(self.sim.clock) - EVENT_RETENTION_S:
            return None
        return idx

    def _event(self, oid: str) -> dict[str, Any]:
        return self.sim.events[self._event_positions()[oid]]

    def _sublist(self, resource: str, parent_id: str,
                 param: str) -> tuple[list[str], dict[str, int], list[dict[str, Any]]]:
        key = (resource, parent_id)
        cached = self._sublists.get(key)
        if cached is not None:
            return cached
        parent = self.sim.objects[resource].get(parent_id)
        if parent is None or parent.get("deleted"):
            raise missing(resource, parent_id, param)
        field = "items" if resource == "subscriptions" else "lines"
        data = list(self._sub_elems(resource, parent.get(field) or {}))
        ids = [e["id"] for e in data]
        entry = (ids, {oid: k for k, oid in enumerate(ids)}, data)
        self._sublists[key] = entry
        return entry

    @staticmethod
    def _sub_elems(resource: str, lst: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for elem in lst.get("data") or []:
            yield item_shape(elem) if resource == "subscriptions" else elem

    # --- internals: expand ------------------------------------------------------------------------
    @staticmethod
    def _list_expand(params: Params) -> tuple[str, ...]:
        paths = expand_paths(params)
        for p in paths:
            if not p.startswith("data."):
                raise _not_expandable(p)
        return tuple(p[5:] for p in paths)

    def _listed_bytes(self, resource: str, oid: str, paths: tuple[str, ...], cache: dict[str, bytes]) -> bytes:
        """One listed object's bytes with ``paths`` (if any) expanded. When every path leads to fields that hold
        nothing (null or an empty list, as an invoice's ``discounts`` or a subscription's items' ``discounts``
        mostly do), expanding changes nothing and the plain bytes are served without parsing them again."""
        plain = cache.get(oid) or self._serialise(resource, oid)
        if not paths:
            return plain
        if resource != "events":
            obj = self.sim.objects[resource][oid]
            if obj.get("object") != "list" and all(_holds_nothing(obj, p.split(".")) for p in paths):
                return plain
        return self._expand_bytes(plain, paths)

    def _expand_bytes(self, plain: bytes, paths: tuple[str, ...]) -> bytes:
        node = orjson.loads(plain)
        for p in paths:
            self._expand(node, p.split("."), p)
        return orjson.dumps(node)

    def _expanded_bytes(self, resource: str, oid: str, paths: tuple[str, ...]) -> bytes:
        key = (resource, oid, paths)
        data = self._expanded.get(key)
        if data is None:
            data = self._expand_bytes(self.obj_bytes(resource, oid), paths)
            if len(self._expanded) >= _EXPAND_CACHE_MAX:
                self._expanded.clear()
            self._expanded[key] = data
        return data

    def _expand(self, node: Any, segs: list[str], path: str) -> None:
        """Expand ``path`` (split as ``segs``, its depth checked by ``expand_paths``) in ``node``."""
        seg, rest = segs[0], segs[1:]
        if not isinstance(node, dict) or seg in ("id", "object", ""):
            raise _not_expandable(path)
        if node.get("object") == "list":
            if seg != "data" or not rest:
                raise _not_expandable(path)
            for elem in node.get("data") or []:
                self._expand(elem, rest, path)
            return
        if seg == "tiers" and node.get("object") == "price" and not rest:
            source = self.sim.objects["prices"].get(node.get("id", ""), {})
            node["tiers"] = orjson.loads(orjson.dumps(source.get("tiers")))
            return
        if _refused(node, seg):
            raise _not_expandable(path)
        if seg == "applies_to" and node.get("object") == "coupon" and not rest:
            # (a restricted coupon keeps its products on the simulation's object; any other has none)
            source = self.sim.objects["coupons"].get(node.get("id", ""), {})
            node["applies_to"] = orjson.loads(orjson.dumps(source.get("applies_to")))
            return
        if seg == "currency_options" and node.get("object") in ("price", "coupon") and not rest:
            source = self.sim.objects[node["object"] + "s"].get(node.get("id", ""), {})
            if not isinstance(node.get("currency_options"), dict):  # (an option's tiers may be expanded already)
                node["currency_options"] = orjson.loads(orjson.dumps(currency_options(source)))
            return
        if seg == "currency_options" and node.get("object") == "price" and len(rest) == 2 and rest[1] == "tiers":
            # (`currency_options.<currency>.tiers`: that option's tiers, with the options they belong to)
            source = self.sim.objects["prices"].get(node.get("id", ""), {})
            full = currency_options(source, with_tiers=[rest[0]])
            if rest[0] not in full:
                raise _not_expandable(path)
            shown = node.get("currency_options")
            if not isinstance(shown, dict):
                shown = node["currency_options"] = orjson.loads(orjson.dumps(currency_options(source)))
            shown[rest[0]] = orjson.loads(orjson.dumps(full[rest[0]]))
            return
        if seg not in node:
            raise _not_expandable(path)
        value = node[seg]
        if value is None:
            return
        if not rest and not all(map(_expandable_value, value if isinstance(value, list) else [value])):
            raise _not_expandable(path)
        if isinstance(value, list):
            resolved: Any = [self._resolve(seg, v, path) for v in value]
            targets = resolved
        else:
            resolved = self._resolve(seg, value, path)
            targets = [resolved]
        node[seg] = resolved
        if rest:
            for target in targets:
                if isinstance(target, dict):
                    self._expand(target, rest, path)

    def _resolve(self, field: str, value: Any, path: str) -> Any:
        """An id replaced by its object (a fresh copy); objects and plain sub-dicts pass through."""
        if isinstance(value, dict):
            return value
        if not isinstance(value, str):
            raise _not_expandable(path)
        if field == "coupon" or value.startswith("di_"):
            table = self.sim.objects["coupons"] if field == "coupon" else self.sim.discounts
            obj = table.get(value)
            return value if obj is None else orjson.loads(orjson.dumps(shape(obj)))
        if value.startswith("si_"):
            return orjson.loads(self.subscription_item(value, {}))
        for prefix, resource in ID_PREFIXES.items():
            if value.startswith(prefix):
                if value in self.sim.objects[resource]:
                    return orjson.loads(self.obj_bytes(resource, value))
                return value
        raise _not_expandable(path)
