"""Build small Stripe-shaped accounts by hand for the metrics tests, and load them into a store.

A :class:`World` holds Stripe objects in API 2026-10-28 shape (customers, products, prices, coupons,
discounts, subscriptions with embedded items, invoices with embedded lines, events). Helpers such as
:meth:`World.subscribe`, :meth:`World.update` and :meth:`World.cycle` change a subscription the way Stripe
would and leave the evidence Stripe leaves: a ``customer.subscription.*`` event with ``previous_attributes``,
and subscription invoices with per-item lines (prorations for mid-cycle changes). Tests choose which
evidence reaches the store (for example ``load(con, events=False)`` withholds events).
"""

from __future__ import annotations

import calendar
import copy
import itertools
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import duckdb

Obj = dict[str, Any]
DAY = 86_400


def ts(year: int, month: int = 1, day: int = 1, hour: int = 0, minute: int = 0) -> int:
    """Unix seconds of a UTC moment."""
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp())


def add_months(t: int, months: int) -> int:
    """``t`` moved by whole calendar months, the day clamped to the month's length (Stripe's anchors)."""
    d = datetime.fromtimestamp(t, tz=UTC)
    m = d.month - 1 + months
    year, month = d.year + m // 12, m % 12 + 1
    day = min(d.day, calendar.monthrange(year, month)[1])
    return int(d.replace(year=year, month=month, day=day).timestamp())


def add_interval(t: int, interval: str, count: int = 1) -> int:
    """``t`` plus ``count`` billing intervals."""
    if interval == "month":
        return add_months(t, count)
    if interval == "year":
        return add_months(t, 12 * count)
    return t + count * (7 * DAY if interval == "week" else DAY)


class World:
    """One Stripe account built by hand: objects by resource and id, plus the events made so far."""

    def __init__(self, account_id: str = "acct_test") -> None:
        self.account_id = account_id
        self.objects: dict[str, dict[str, Obj]] = {
            r: {} for r in ("customers", "products", "prices", "coupons", "discounts", "subscriptions", "invoices",
                            "invoiceitems")
        }
        # per subscription, its pending invoice items' lines, billed on its next invoice
        self._pending: dict[str, list[Obj]] = {}
        self.events: list[Obj] = []
        self.fx_rates: list[tuple[str, str, float]] = []
        self._seq = itertools.count(1)

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._seq):06d}"

    # --- catalogue -----------------------------------------------------------------------------------
    def customer(self, cid: str, currency: str = "usd", created: int = 0, **extra: Any) -> Obj:
        obj = {"id": cid, "object": "customer", "created": created, "currency": currency, "metadata": {},
               "livemode": False, "email": f"{cid}@example.com", "address": {"country": "US"}, **extra}
        self.objects["customers"][cid] = obj
        return obj

    def product(self, pid: str, unit_label: str | None = None, family: str | None = None, **extra: Any) -> Obj:
        obj = {"id": pid, "object": "product", "active": True, "created": 0, "name": pid, "type": "service",
               "unit_label": unit_label, "metadata": {"family": family} if family else {}, "updated": 0,
               "livemode": False, **extra}
        self.objects["products"][pid] = obj
        return obj

    def price(self, pid: str, product: str, unit_amount: int | None = None, *, currency: str = "usd",
              interval: str | None = "month", interval_count: int = 1, usage_type: str = "licensed",
              tiers: list[Obj] | None = None, tiers_mode: str | None = None,
              transform_quantity: Obj | None = None) -> Obj:
        """A price; ``tiers`` as ``[{"up_to": 10, "unit_amount": 500, "flat_amount": 0}, ...]`` (last up_to None)."""
        recurring = None if interval is None else {
            "interval": interval, "interval_count": interval_count, "meter": None,
            "usage_type": usage_type, "trial_period_days": None}
        obj: Obj = {
            "id": pid, "object": "price", "active": True, "created": 0, "currency": currency, "livemode": False,
            "product": product, "type": "recurring" if interval else "one_time", "recurring": recurring,
            "billing_scheme": "tiered" if tiers else "per_unit", "tiers_mode": tiers_mode,
            "unit_amount": unit_amount, "unit_amount_decimal": None if unit_amount is None else str(unit_amount),
            "transform_quantity": transform_quantity, "tax_behavior": "exclusive", "metadata": {},
            "lookup_key": None, "nickname": None,
        }
        if tiers:
            obj["tiers"] = [{"flat_amount": t.get("flat_amount"), "unit_amount": t.get("unit_amount"),
                             "flat_amount_decimal": None if t.get("flat_amount") is None else str(t["flat_amount"]),
                             "unit_amount_decimal": None if t.get("unit_amount") is None else str(t["unit_amount"]),
                             "up_to": t.get("up_to")} for t in tiers]
        self.objects["prices"][pid] = obj
        return obj

    def coupon(self, cid: str, *, percent_off: float | None = None, amount_off: int | None = None,
               currency: str | None = None, duration: str = "forever", duration_in_months: int | None = None,
               products: list[str] | None = None) -> Obj:
        """A coupon; ``products``: the only products it applies to (its ``applies_to``, as the sync expands it)."""
        obj = {"id": cid, "object": "coupon", "created": 0, "percent_off": percent_off, "amount_off": amount_off,
               "currency": currency, "duration": duration, "duration_in_months": duration_in_months,
               "valid": True, "metadata": {}, "livemode": False, "name": cid,
               "applies_to": {"products": products} if products else None}
        self.objects["coupons"][cid] = obj
        return obj

    def discount(self, coupon: str, start: int, *, customer: str, subscription: str | None = None,
                 subscription_item: str | None = None, end: int | None = None, did: str | None = None) -> Obj:
        """A discount; a repeating coupon's ``end`` is filled in from its duration as Stripe does."""
        cp = self.objects["coupons"][coupon]
        if end is None and cp["duration"] == "repeating":
            end = add_months(start, int(cp["duration_in_months"]))
        obj = {"id": did or self._id("di"), "object": "discount", "start": start, "end": end,
               "customer": customer, "subscription": subscription, "subscription_item": subscription_item,
               "source": {"type": "coupon", "coupon": coupon}, "invoice": None, "invoice_item": None,
               "promotion_code": None, "checkout_session": None}
        self.objects["discounts"][obj["id"]] = obj
        return obj

    # --- subscriptions -------------------------------------------------------------------------------
    def _item(self, sub_id: str, iid: str, price: str, quantity: int | None, created: int) -> Obj:
        p = self.objects["prices"][price]
        metered = (p.get("recurring") or {}).get("usage_type") == "metered"
        return {"id": iid, "object": "subscription_item", "created": created, "subscription": sub_id,
                "price": copy.deepcopy(p), "quantity": None if metered else quantity, "discounts": [],
                "metadata": {}, "current_period_start": created,
                "current_period_end": add_interval(created, p["recurring"]["interval"],
                                                   p["recurring"]["interval_count"])}

    def subscribe(self, sid: str, customer: str, items: Iterable[tuple[str, str, int | None]], at: int, *,
                  trial_end: int | None = None, invoice: bool = True, event: bool = True,
                  discounts: Iterable[str] = ()) -> Obj:
        """A new subscription with ``items`` as (item id, price id, quantity), created at ``at``."""
        sub: Obj = {
            "id": sid, "object": "subscription", "customer": customer, "created": at, "start_date": at,
            "billing_cycle_anchor": trial_end or at, "status": "trialing" if trial_end else "active",
            "trial_start": at if trial_end else None, "trial_end": trial_end, "canceled_at": None,
            "ended_at": None, "cancel_at": None, "cancel_at_period_end": False,
            "cancellation_details": {"comment": None, "feedback": None, "reason": None},
            "currency": self.objects["customers"][customer]["currency"], "discounts": list(discounts),
            "pause_collection": None, "metadata": {}, "livemode": False, "collection_method": "charge_automatically",
            "items": {"object": "list", "data": [], "has_more": False, "url": f"/v1/subscription_items?subscription={sid}"},
        }
        sub["items"]["data"] = [self._item(sid, iid, price, qty, at) for iid, price, qty in items]
        self.objects["subscriptions"][sid] = sub
        if event:
            self.event("customer.subscription.created", at, sub)
        if invoice:
            self.invoice_for(sid, at, "subscription_create", period_start=at)
        return sub

    def update(self, sid: str, at: int, *, items: Iterable[tuple[str, str, int | None]] | None = None,
               prorate: bool = True, event: bool = True, pending: bool = False, **fields: Any) -> Obj:
        """Change a subscription at ``at``: its items (the full new list) and/or top-level fields.

        With ``prorate`` the changed items get proration lines (credit for the old state, debit for the new
        one, period from ``at`` to the item's period end) on a ``subscription_update`` invoice; with ``pending``
        too (Stripe's default create_prorations), they are pending invoice items instead, billed on the
        subscription's next invoice (:meth:`invoice_for`).
        """
        sub = self.objects["subscriptions"][sid]
        before = copy.deepcopy(sub)
        lines: list[Obj] = []
        if items is not None:
            old = {i["id"]: i for i in sub["items"]["data"]}
            new_items = []
            for iid, price, qty in items:
                if iid in old and old[iid]["price"]["id"] == price and old[iid]["quantity"] == qty:
                    new_items.append(old[iid])
                    continue
                item = self._item(sid, iid, price, qty, old[iid]["created"] if iid in old else at)
                if iid in old:
                    item["current_period_start"] = old[iid]["current_period_start"]
                    item["current_period_end"] = old[iid]["current_period_end"]
                else:
                    anchor = next(iter(old.values()), None)
                    if anchor is not None:
                        item["current_period_start"] = anchor["current_period_start"]
                        item["current_period_end"] = anchor["current_period_end"]
                new_items.append(item)
                if prorate:
                    lines.append(self._line(sid, item, at, item["current_period_end"], proration=True))
            kept = {iid for iid, _, _ in items}
            if prorate:
                for iid, item in old.items():
                    changed = iid not in kept or any(
                        n["id"] == iid and n is not item for n in new_items)
                    if changed:
                        lines.append(self._line(sid, item, at, item["current_period_end"], proration=True,
                                                credit=True))
            sub["items"]["data"] = new_items
        sub.update(fields)
        if event:
            self.event("customer.subscription.updated", at, sub, before)
        if lines and pending:
            for line in lines:
                self._pend(sid, at, line)
        elif lines:
            self._invoice(sid, at, "subscription_update", lines)
        return sub

    def _pend(self, sid: str, at: int, line: Obj) -> Obj:
        """The pending invoice item a proration line made at ``at`` comes from (the line waits for the next
        invoice)."""
        sub = self.objects["subscriptions"][sid]
        details = line["parent"]["subscription_item_details"]
        item: Obj = {"id": details["invoice_item"], "object": "invoiceitem", "amount": line["amount"],
                     "currency": line["currency"], "customer": sub["customer"], "date": at, "description": None,
                     "discountable": False, "discounts": [], "invoice": None, "livemode": False, "metadata": {},
                     "parent": {"type": "subscription_details",
                                "subscription_details": {"subscription": sid,
                                                         "subscription_item": details["subscription_item"]}},
                     "period": dict(line["period"]), "pricing": copy.deepcopy(line["pricing"]), "proration": True,
                     "proration_details": copy.deepcopy(details["proration_details"]),
                     "quantity": line["quantity"], "tax_rates": [], "test_clock": None}
        self.objects["invoiceitems"][item["id"]] = item
        self._pending.setdefault(sid, []).append(line)
        return item

    def pending_update(self, sid: str, at: int, items: Iterable[tuple[str, str, int | None]], *,
                       event: bool = True) -> Obj:
        """An update of ``sid``'s items made at ``at`` with payment_behavior=pending_if_incomplete whose payment
        has not gone through: Stripe bills it on a subscription_update invoice (open, its payment attempted and failed) and keeps the
        subscription's items as they were, with the update in ``pending_update`` (and, with ``event``, a
        customer.subscription.updated a minute later saying so). Returns the invoice."""
        sub = self.objects["subscriptions"][sid]
        kept = [(i["id"], i["price"]["id"], i["quantity"]) for i in sub["items"]["data"]]
        self.update(sid, at, items=items, event=False)
        inv = [i for i in self.objects["invoices"].values() if i["billing_reason"] == "subscription_update"][-1]
        inv.update(status="open", amount_paid=0, attempted=True, attempt_count=1)
        self.update(sid, at, items=kept, prorate=False, event=False)  # (the items as they were all along)
        if event:
            before = copy.deepcopy(sub)
            sub.update(pending_update={"expires_at": at + 23 * 3600, "subscription_items": [],
                                       "billing_cycle_anchor": None, "trial_end": None, "trial_from_plan": None},
                       latest_invoice=inv["id"])
            self.event("customer.subscription.updated", at + 60, sub, before)
        return inv

    def bill_pending(self, sid: str, at: int, reason: str = "automatic_pending_invoice_item_invoice") -> Obj:
        """An invoice made at ``at`` for ``sid``'s pending invoice items alone (a subscription's
        pending_invoice_item_interval, or ``manual``: one made by hand), its parent naming no subscription."""
        inv = self._invoice(sid, at, reason, [])
        inv["parent"] = None
        return inv

    def cycle(self, sid: str, at: int, usage: dict[str, int] | None = None) -> Obj:
        """A renewal at ``at``: a subscription_cycle invoice for the new period (metered usage in arrears)."""
        sub = self.objects["subscriptions"][sid]
        for item in sub["items"]["data"]:
            item["current_period_start"] = at
            rec = item["price"]["recurring"]
            item["current_period_end"] = add_interval(at, rec["interval"], rec["interval_count"])
        return self.invoice_for(sid, at, "subscription_cycle", period_start=at, usage=usage)

    def threshold(self, sid: str, at: int, usage: dict[str, int], *, period_start: int) -> Obj:
        """A billing threshold's invoice at ``at`` (billing_reason subscription_threshold): metered items' ``usage``
        (amount in minor units per item id) accrued from ``period_start`` to ``at``."""
        sub = self.objects["subscriptions"][sid]
        lines = [self._line(sid, item, period_start, at, amount=usage[item["id"]], quantity=1)
                 for item in sub["items"]["data"] if item["id"] in usage]
        return self._invoice(sid, at, "subscription_threshold", lines)

    def cancel(self, sid: str, at: int, *, ended_at: int | None = None, reason: str = "cancellation_requested",
               feedback: str | None = None, comment: str | None = None, event: bool = True) -> Obj:
        """Cancel at ``at``; with ``ended_at`` later than ``at`` the cancellation waits for period end."""
        details = {"reason": reason, "feedback": feedback, "comment": comment}
        if ended_at is not None and ended_at > at:
            self.update(sid, at, event=event, cancel_at_period_end=True, cancel_at=ended_at, canceled_at=at,
                        cancellation_details=details)
            return self.end(sid, ended_at, event=event)
        self.update(sid, at, event=False, canceled_at=at, cancellation_details=details)
        return self.end(sid, at, event=event)

    def end(self, sid: str, at: int, *, event: bool = True) -> Obj:
        sub = self.objects["subscriptions"][sid]
        sub.update(status="canceled", ended_at=at)
        if event:
            self.event("customer.subscription.deleted", at, sub)
        return sub

    # --- invoices ------------------------------------------------------------------------------------
    def _line(self, sid: str, item: Obj, start: int, end: int, *, proration: bool = False, credit: bool = False,
              amount: int | None = None, quantity: int | None = None) -> Obj:
        price = item["price"]
        qty = item["quantity"] if quantity is None else quantity
        if amount is None:
            amount = (price.get("unit_amount") or 0) * (qty or 0)
            if credit:
                amount = -amount
        details: Obj = {"invoice_item": self._id("ii") if proration else None, "proration": proration,
                        "proration_details": {"credited_items": {"invoice": "in_prev", "invoice_line_items": []}}
                        if credit else {"credited_items": None},
                        "subscription": sid, "subscription_item": item["id"]}
        return {"id": self._id("il"), "object": "line_item", "amount": amount, "currency": price["currency"],
                "description": None, "discountable": not proration, "discounts": [], "livemode": False,
                "metadata": {}, "period": {"start": start, "end": end}, "quantity": qty,
                "parent": {"type": "subscription_item_details", "subscription_item_details": details,
                           "invoice_item_details": None},
                "pricing": {"type": "price_details", "price_details": {"price": price["id"], "product": price["product"]},
                            "unit_amount_decimal": price.get("unit_amount_decimal")},
                "subtotal": amount, "taxes": []}

    def add_one_time_and_broken_lines(self, inv: Obj, sid: str) -> None:
        """Add to ``inv`` a one-time invoice item's line (``il_setup``, 50.00; its parent invoice_item_details,
        no price) and a line naming neither item nor price nor parent (``il_broken``)."""
        first = inv["lines"]["data"][0]
        setup = {**first, "id": "il_setup", "amount": 5_000, "quantity": 1,
                 "parent": {"type": "invoice_item_details", "subscription_item_details": None,
                            "invoice_item_details": {"invoice_item": "ii_setup", "proration": False,
                                                     "subscription": sid}},
                 "pricing": {"type": "price_details", "price_details": None, "unit_amount_decimal": "5000"}}
        inv["lines"]["data"] += [setup, {**first, "id": "il_broken", "parent": None, "pricing": None}]

    def invoice_one_off(self, sid: str, at: int, amount: int, reason: str = "manual") -> Obj:
        """An invoice of ``sid`` made at ``at`` (by hand: ``reason``) for a one-off invoice item of ``amount`` minor
        units (a setup fee; its line's parent invoice_item_details names the subscription, no item and no price)."""
        inv = self._invoice(sid, at, reason, [])
        line_id, item_id = self._id("il"), self._id("ii")
        inv["lines"]["data"] = [{
            "id": line_id, "object": "line_item", "amount": amount, "currency": inv["currency"],
            "description": "Setup fee", "discountable": True, "discounts": [], "livemode": False, "metadata": {},
            "invoice": inv["id"], "period": {"start": at, "end": at}, "quantity": 1,
            "parent": {"type": "invoice_item_details", "subscription_item_details": None,
                       "invoice_item_details": {"invoice_item": item_id, "proration": False, "subscription": sid}},
            "pricing": {"type": "price_details", "price_details": None, "unit_amount_decimal": str(amount)},
            "subtotal": amount, "taxes": []}]
        inv.update(subtotal=amount, total=amount)
        return inv

    def _invoice(self, sid: str, at: int, reason: str, lines: list[Obj], tax: int = 0) -> Obj:
        sub = self.objects["subscriptions"][sid]
        iid = self._id("in")
        # (the subscription's pending invoice items are billed first)
        waiting = self._pending.pop(sid, [])
        for line in waiting:
            self.objects["invoiceitems"][line["parent"]["subscription_item_details"]["invoice_item"]]["invoice"] = iid
        lines = [*waiting, *lines]
        for line in lines:
            line["invoice"] = iid
        subtotal = sum(line["amount"] for line in lines)
        inv: Obj = {
            "id": iid, "object": "invoice", "created": at, "customer": sub["customer"], "currency": sub["currency"],
            "billing_reason": reason, "status": "paid", "livemode": False, "period_start": at, "period_end": at,
            "parent": {"type": "subscription_details", "quote_details": None,
                       "subscription_details": {"subscription": sid, "metadata": {}}},
            "lines": {"object": "list", "data": lines, "has_more": False, "url": f"/v1/invoices/{iid}/lines"},
            "subtotal": subtotal, "total": subtotal + tax, "discounts": [], "total_taxes": [],
            "status_transitions": {"finalized_at": at, "paid_at": at, "marked_uncollectible_at": None,
                                   "voided_at": None},
        }
        self.objects["invoices"][iid] = inv
        return inv

    def invoice_for(self, sid: str, at: int, reason: str, *, period_start: int,
                    usage: dict[str, int] | None = None) -> Obj:
        """An invoice billing every licensed item for the period from ``period_start``, and metered items'
        ``usage`` (amount in minor units per item id) for the period that ended at ``period_start``."""
        sub = self.objects["subscriptions"][sid]
        lines = []
        for item in sub["items"]["data"]:
            rec = item["price"]["recurring"]
            if rec["usage_type"] == "metered":
                if usage is None or item["id"] not in usage:
                    continue
                prev = add_interval(period_start, rec["interval"], -rec["interval_count"])
                lines.append(self._line(sid, item, max(prev, item["created"]), period_start,
                                        amount=usage[item["id"]], quantity=1))
                continue
            end = add_interval(period_start, rec["interval"], rec["interval_count"])
            amount = 0 if sub["status"] == "trialing" else None
            lines.append(self._line(sid, item, period_start, end, amount=amount))
        return self._invoice(sid, at, reason, lines)

    # --- events --------------------------------------------------------------------------------------
    def event(self, etype: str, at: int, obj: Obj, before: Obj | None = None) -> Obj:
        """An event carrying a copy of ``obj``; for *.updated, ``previous_attributes`` from ``before``."""
        data: Obj = {"object": copy.deepcopy(obj)}
        if before is not None:
            data["previous_attributes"] = {k: copy.deepcopy(v) for k, v in before.items()
                                           if obj.get(k) != v}
        evt = {"id": self._id("evt"), "object": "event", "type": etype, "created": at, "data": data,
               "api_version": "2026-10-28.endive", "livemode": False, "pending_webhooks": 0,
               "request": {"id": None, "idempotency_key": None}}
        self.events.append(evt)
        return evt

    # --- store ---------------------------------------------------------------------------------------
    def load(self, con: duckdb.DuckDBPyConnection, *, seen_at: int, events: bool | int = True) -> None:
        """Load every object into the store; ``events``: True (all), False (none) or the oldest ``created``."""
        from stripe_churn.store.load import upsert_objects

        seen = datetime.fromtimestamp(seen_at, tz=UTC)
        acct = self.account_id
        for resource in ("customers", "products", "prices", "coupons", "discounts", "subscriptions", "invoices"):
            upsert_objects(con, resource, acct, list(self.objects[resource].values()), seen)
        items = [it for s in self.objects["subscriptions"].values() for it in s["items"]["data"]]
        upsert_objects(con, "subscription_items", acct, items, seen)
        lines = [ln for inv in self.objects["invoices"].values() for ln in inv["lines"]["data"]]
        upsert_objects(con, "invoice_lines", acct, lines, seen)
        # (as the sync lists them: the pending ones; one invoiced since is a line now, and no longer pending)
        upsert_objects(con, "invoice_items", acct, list(self.objects["invoiceitems"].values()), seen)
        if events is not False:
            oldest = 0 if events is True else int(events)
            upsert_objects(con, "events", acct, [e for e in self.events if e["created"] >= oldest], seen)
        for date, currency, rate in self.fx_rates:
            con.execute("INSERT INTO fx_rates (date, currency, rate) VALUES (?, ?, ?)", [date, currency, rate])

    # --- served --------------------------------------------------------------------------------------
    def served(self, clock: int) -> ServedWorld:
        """This account as the sandbox server serves a simulation, its clock (Stripe's "now") at ``clock``."""
        return ServedWorld(self, clock)


class ServedWorld:
    """A :class:`World` in the shape the sandbox server reads (``stripe_churn.sandbox.catalog.SimulationLike``):
    the same objects, by reference, served over HTTP to the real sync; the events older than Stripe's 30 days
    before ``clock`` are not served. It has no billing runs and no ground truth of its own."""

    def __init__(self, world: World, clock: int) -> None:
        self.account_id = world.account_id
        self.objects = {r: objs for r, objs in world.objects.items() if r != "discounts"}
        self.objects["credit_notes"] = {}
        self.discounts = world.objects["discounts"]
        self.events = sorted(world.events, key=lambda e: e["created"])
        self.clock = clock
        self.truth: list[Obj] = []

    def advance(self, months: int = 1) -> None:
        raise NotImplementedError("a hand-built account has no billing runs: build the next month with World")

