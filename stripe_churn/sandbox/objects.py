"""Builders of Stripe objects in API 2026-10-28 shape (every key Stripe's own examples carry)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

API_VERSION = "2026-10-28.endive"
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ADDRESS_KEYS = ("city", "country", "line1", "line2", "postal_code", "state")


def b62(n: int, width: int) -> str:
    """``n`` in base 62, left-padded to ``width`` characters."""
    out = ""
    while n:
        n, r = divmod(n, 62)
        out = _B62[r] + out
    return out.rjust(width, "0")


def customer(cid: str, created: int, currency: str, name: str, email: str, country: str,
             metadata: dict[str, str], prefix: str) -> dict[str, Any]:
    return {
        "id": cid, "object": "customer",
        "address": {**dict.fromkeys(ADDRESS_KEYS), "country": country},
        "balance": 0, "created": created, "currency": currency, "default_source": None, "delinquent": False,
        "description": None, "discount": None, "email": email,
        "invoice_prefix": prefix,
        "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None,
                             "rendering_options": None},
        "livemode": False, "metadata": metadata, "name": name, "next_invoice_sequence": 1, "phone": None,
        "preferred_locales": [], "shipping": None, "tax_exempt": "none", "test_clock": None,
    }


def product(pid: str, created: int, name: str, unit_label: str | None, metadata: dict[str, str],
            default_price: str | None) -> dict[str, Any]:
    return {
        "id": pid, "object": "product", "active": True, "created": created, "default_price": default_price,
        "description": None, "images": [], "livemode": False, "marketing_features": [], "metadata": metadata,
        "name": name, "package_dimensions": None, "shippable": None, "statement_descriptor": None,
        "tax_code": None, "unit_label": unit_label, "updated": created, "url": None, "type": "service",
    }


def price(prid: str, created: int, product_id: str, currency: str, interval: str, interval_count: int,
          unit_amount: int | None, *, usage_type: str = "licensed", meter: str | None = None,
          tiers: list[dict[str, Any]] | None = None, tiers_mode: str | None = None,
          transform: dict[str, Any] | None = None, nickname: str | None = None,
          lookup_key: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": prid, "object": "price", "active": True,
        "billing_scheme": "tiered" if tiers else "per_unit", "created": created, "currency": currency,
        "custom_unit_amount": None, "livemode": False, "lookup_key": lookup_key, "metadata": {},
        "nickname": nickname, "product": product_id,
        "recurring": {"interval": interval, "interval_count": interval_count, "meter": meter,
                      "usage_type": usage_type, "trial_period_days": None},
        "tax_behavior": "unspecified", "tiers_mode": tiers_mode, "transform_quantity": transform,
        "type": "recurring", "unit_amount": unit_amount,
        "unit_amount_decimal": None if unit_amount is None else str(unit_amount),
    }
    if tiers:
        obj["tiers"] = tiers
    return obj


def plan_of(p: dict[str, Any]) -> dict[str, Any]:
    """The legacy ``plan`` mirror of a recurring price."""
    rec = p["recurring"]
    return {
        "id": p["id"], "object": "plan", "active": p["active"], "amount": p["unit_amount"],
        "amount_decimal": p["unit_amount_decimal"], "billing_scheme": p["billing_scheme"],
        "created": p["created"], "currency": p["currency"], "interval": rec["interval"],
        "interval_count": rec["interval_count"], "livemode": False, "metadata": {}, "meter": rec["meter"],
        "nickname": p["nickname"], "product": p["product"], "tiers_mode": p["tiers_mode"],
        "transform_usage": p["transform_quantity"], "trial_period_days": None, "usage_type": rec["usage_type"],
    }


# (fields Stripe sends only when expanded: a price's tiers and currency_options, a coupon's currency_options and
# applies_to)
INCLUDABLE = ("tiers", "currency_options", "applies_to")


def price_view(p: dict[str, Any]) -> dict[str, Any]:
    """A price as embedded in an item, or served unexpanded: a copy without its includable fields."""
    return {k: v for k, v in p.items() if k not in INCLUDABLE}


def currency_options(p: dict[str, Any], with_tiers: Iterable[str] = ()) -> dict[str, Any]:
    """A price's or coupon's ``currency_options`` as an expand shows them: its own currency's terms (a coupon has
    them for an amount off only), then the other currencies it was given (kept on it as ``currency_options``).
    A tiered price's options show their ``tiers`` only for the currencies in ``with_tiers``: Stripe sends an
    option's tiers only when ``currency_options.<currency>.tiers`` is expanded."""
    if p.get("object") == "coupon":
        base = {p.get("currency"): {"amount_off": p["amount_off"]}} if p.get("amount_off") is not None else {}
        return {**base, **(p.get("currency_options") or {})}
    own = {"custom_unit_amount": None, "tax_behavior": p.get("tax_behavior"), "unit_amount": p.get("unit_amount"),
           "unit_amount_decimal": p.get("unit_amount_decimal")}
    if p.get("tiers"):
        own["tiers"] = p["tiers"]
    every = {p.get("currency"): own, **(p.get("currency_options") or {})}
    shown = set(with_tiers)
    return {cur: o if cur in shown or not isinstance(o, dict) else {k: v for k, v in o.items() if k != "tiers"}
            for cur, o in every.items()}


def sub_item(siid: str, created: int, sub_id: str, p: dict[str, Any], quantity: int | None,
             period: tuple[int, int]) -> dict[str, Any]:
    return {
        "id": siid, "object": "subscription_item", "created": created, "discounts": [], "metadata": {},
        "price": price_view(p), "plan": plan_of(p), "quantity": quantity, "subscription": sub_id,
        "tax_rates": [], "current_period_start": period[0], "current_period_end": period[1],
        "billing_thresholds": None,
    }


def subscription(sid: str, created: int, customer_id: str, currency: str, items: list[dict[str, Any]],
                 anchor: int, status: str) -> dict[str, Any]:
    return {
        "id": sid, "object": "subscription", "application": None, "application_fee_percent": None,
        "automatic_tax": {"enabled": False, "liability": None, "disabled_reason": None},
        "billing_cycle_anchor": anchor, "billing_cycle_anchor_config": None, "cancel_at": None,
        "canceled_at": None, "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically", "created": created, "currency": currency,
        "customer": customer_id, "days_until_due": None, "default_payment_method": None,
        "default_source": None, "default_tax_rates": [], "description": None, "discounts": [],
        "ended_at": None,
        "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}, "custom_fields": None,
                             "description": None, "footer": None},
        "items": {"object": "list", "data": items, "has_more": False,
                  "url": f"/v1/subscription_items?subscription={sid}"},
        "latest_invoice": None, "livemode": False, "metadata": {}, "next_pending_invoice_item_invoice": None,
        "on_behalf_of": None, "pause_collection": None,
        "payment_settings": {"payment_method_options": None, "payment_method_types": None,
                             "save_default_payment_method": "off"},
        "pending_invoice_item_interval": None, "pending_setup_intent": None, "pending_update": None,
        "schedule": None, "start_date": created, "status": status, "test_clock": None, "transfer_data": None,
        "trial_end": None, "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
        "trial_start": None, "cancel_at_period_end": False, "billing_thresholds": None,
        "billing_mode": {"type": "classic", "flexible": None}, "customer_account": None,
        "managed_payments": None, "billing_schedules": [],
    }


def line(lid: str, invoice_id: str, currency: str, amount: int, description: str, period: tuple[int, int],
         quantity: int | None, sub_id: str, item_id: str, price_id: str, product_id: str, proration: bool,
         discount_amounts: list[dict[str, Any]], discounts: list[str]) -> dict[str, Any]:
    return {
        "id": lid, "object": "line_item", "amount": amount, "currency": currency, "description": description,
        "discount_amounts": discount_amounts, "discountable": True, "discounts": discounts,
        "invoice": invoice_id, "livemode": False, "metadata": {},
        "period": {"end": period[1], "start": period[0]}, "quantity": quantity, "subscription": sub_id,
        "pretax_credit_amounts": [], "taxes": [],
        "parent": {"invoice_item_details": None, "type": "subscription_item_details",
                   "subscription_item_details": {
                       "invoice_item": None, "proration": proration,
                       "proration_details": {"credited_items": None}, "subscription": sub_id,
                       "subscription_item": item_id}},
        "pricing": {"type": "price_details", "unit_amount_decimal": None,
                    "price_details": {"price": price_id, "product": product_id}},
        "subtotal": amount, "quantity_decimal": None if quantity is None else str(quantity),
    }


def invoice_item(iiid: str, date: int, customer_id: str, currency: str, amount: int, description: str,
                 period: tuple[int, int], quantity: int | None, sub_id: str, item_id: str, price_id: str,
                 product_id: str, credited_items: dict[str, Any] | None) -> dict[str, Any]:
    """A pending proration (``invoice`` null until an invoice of its subscription bills it). ``credited_items``:
    for a credit for unused time, the invoice and lines that billed the time credited."""
    return {
        "id": iiid, "object": "invoiceitem", "amount": amount, "currency": currency, "customer": customer_id,
        "customer_account": None, "date": date, "description": description, "discountable": False,
        "discounts": [], "invoice": None, "livemode": False, "metadata": {}, "net_amount": amount,
        "parent": {"type": "subscription_details",
                   "subscription_details": {"subscription": sub_id, "subscription_item": item_id}},
        "period": {"end": period[1], "start": period[0]},
        "pricing": {"type": "price_details", "price_details": {"price": price_id, "product": product_id},
                    "unit_amount_decimal": None},
        "proration": True, "proration_details": {"credited_items": credited_items}, "quantity": quantity,
        "quantity_decimal": None if quantity is None else str(quantity), "tax_rates": [], "test_clock": None,
    }


def invoice(iid: str, created: int, cust: dict[str, Any], sub_id: str, reason: str,
            lines: list[dict[str, Any]], period: tuple[int, int], number: str) -> dict[str, Any]:
    subtotal = sum(ln["amount"] for ln in lines)
    disc = sum(d["amount"] for ln in lines for d in ln["discount_amounts"])
    total = subtotal - disc
    totals: dict[str, int] = {}
    for ln in lines:
        for d in ln["discount_amounts"]:
            totals[d["discount"]] = totals.get(d["discount"], 0) + d["amount"]
    return {
        "id": iid, "object": "invoice", "account_country": "US", "account_name": "Sandbox Inc.",
        "account_tax_ids": None, "amount_due": max(total, 0), "amount_paid": 0,
        "amount_remaining": max(total, 0), "amount_shipping": 0, "application": None, "attempt_count": 0,
        "attempted": False, "auto_advance": False,
        "automatic_tax": {"enabled": False, "liability": None, "status": None, "disabled_reason": None,
                          "provider": None},
        "billing_reason": reason, "collection_method": "charge_automatically", "created": created,
        "currency": cust["currency"], "custom_fields": None, "customer": cust["id"],
        "customer_address": dict(cust["address"]), "customer_email": cust["email"],
        "customer_name": cust["name"], "customer_phone": None, "customer_shipping": None,
        "customer_tax_exempt": "none", "customer_tax_ids": [], "default_payment_method": None,
        "default_source": None, "default_tax_rates": [], "description": None, "discounts": sorted(totals),
        "due_date": None, "effective_at": created, "ending_balance": 0, "footer": None, "from_invoice": None,
        "hosted_invoice_url": None, "invoice_pdf": None, "issuer": {"type": "self"},
        "last_finalization_error": None, "latest_revision": None,
        "lines": {"object": "list", "data": lines, "has_more": False, "url": f"/v1/invoices/{iid}/lines"},
        "livemode": False, "metadata": {}, "next_payment_attempt": None, "number": number,
        "on_behalf_of": None,
        "payment_settings": {"default_mandate": None, "payment_method_options": None,
                             "payment_method_types": None},
        "period_end": period[1], "period_start": period[0], "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0, "receipt_number": None,
        "rendering": None, "shipping_cost": None, "shipping_details": None, "starting_balance": 0,
        "statement_descriptor": None, "status": "draft",
        "status_transitions": {"finalized_at": None, "marked_uncollectible_at": None, "paid_at": None,
                               "voided_at": None},
        "subscription": sub_id, "subtotal": subtotal, "subtotal_excluding_tax": subtotal,
        "test_clock": None, "total": total,
        "total_discount_amounts": [{"amount": a, "discount": d} for d, a in sorted(totals.items())],
        "total_excluding_tax": total, "webhooks_delivered_at": created, "automatically_finalizes_at": None,
        "total_pretax_credit_amounts": [], "total_taxes": [], "amount_overpaid": 0,
        "parent": {"quote_details": None, "type": "subscription_details",
                   "subscription_details": {"metadata": {}, "subscription": sub_id}},
        "customer_account": None,
    }


def coupon(cid: str, created: int, percent_off: float | None, duration: str, months: int | None,
           name: str) -> dict[str, Any]:
    return {
        "id": cid, "object": "coupon", "amount_off": None, "created": created, "currency": None,
        "duration": duration, "duration_in_months": months, "livemode": False, "max_redemptions": None,
        "metadata": {}, "name": name, "percent_off": percent_off, "redeem_by": None, "times_redeemed": 0,
        "valid": True,
    }


def discount(did: str, customer_id: str, sub_id: str | None, coupon_id: str, start: int,
             end: int | None, item_id: str | None = None) -> dict[str, Any]:
    """A discount on a subscription, or (``item_id``) on one of its items only, or (no ``sub_id``) on the
    customer."""
    return {
        "id": did, "object": "discount", "checkout_session": None, "customer": customer_id, "end": end,
        "invoice": None, "invoice_item": None, "promotion_code": None, "start": start,
        "subscription": sub_id, "subscription_item": item_id,
        "source": {"coupon": coupon_id, "type": "coupon"}, "customer_account": None,
    }


def credit_note(cnid: str, created: int, inv: dict[str, Any], amount: int, line_id: str,
                cnli_id: str, number: str, reason: str) -> dict[str, Any]:
    return {
        "id": cnid, "object": "credit_note", "amount": amount, "amount_shipping": 0, "created": created,
        "currency": inv["currency"], "customer": inv["customer"], "customer_balance_transaction": None,
        "discount_amount": 0, "discount_amounts": [], "effective_at": created, "invoice": inv["id"],
        "lines": {"object": "list", "has_more": False, "url": f"/v1/credit_notes/{cnid}/lines", "data": [{
            "id": cnli_id, "object": "credit_note_line_item", "amount": amount, "description": "Service credit",
            "discount_amount": 0, "discount_amounts": [], "invoice_line_item": line_id, "livemode": False,
            "quantity": 1, "tax_rates": [], "type": "invoice_line_item", "unit_amount": amount,
            "unit_amount_decimal": str(amount), "pretax_credit_amounts": [], "taxes": [], "metadata": {}}]},
        "livemode": False, "memo": None, "metadata": {}, "number": number, "out_of_band_amount": None,
        "pdf": f"/credit_notes/{cnid}/pdf", "shipping_cost": None, "status": "issued", "subtotal": amount,
        "subtotal_excluding_tax": amount, "total": amount, "total_excluding_tax": amount, "type": "post_payment",
        "voided_at": None, "pretax_credit_amounts": [], "total_taxes": [], "refunds": [],
        "post_payment_amount": amount, "pre_payment_amount": 0, "reason": reason, "customer_account": None,
    }


def split_credit_note(cn: dict[str, Any], line_ids: list[str], cnli_ids: list[str]) -> None:
    """Spread a credit note of one line over ``1 + len(cnli_ids)`` lines (the new ones with those ids), its amount
    split as evenly as minor units allow (the first lines take the remainder), each line crediting the next of the
    invoice's lines ``line_ids`` in turn; its total stays what it was."""
    first = cn["lines"]["data"][0]
    n = 1 + len(cnli_ids)
    base, rest = divmod(cn["amount"], n)
    lines = []
    for k, cnli_id in enumerate([first["id"], *cnli_ids]):
        amount = base + (1 if k < rest else 0)
        lines.append({**first, "id": cnli_id, "amount": amount, "unit_amount": amount,
                      "unit_amount_decimal": str(amount), "invoice_line_item": line_ids[k % len(line_ids)]})
    cn["lines"]["data"] = lines
