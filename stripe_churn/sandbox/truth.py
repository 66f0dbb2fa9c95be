"""The simulation's own ground-truth labeller: one transition of a customer into movement rows (design.md 4-5).

Written independently of the classifier's SQL on purpose: the two must agree, and neither reads the other.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

# (price id, quantity or usage, discount multiplier) -> exact item MRR in USD major units
MrrFn = Callable[[str, int, Fraction], Fraction]
Part = tuple["Comp", str, Fraction]
_FIXED_CATEGORY = {"new": "new", "reactivation": "reactivation", "cancellation": "churn",
                   "cross_sell": "expansion", "fx": "fx"}


@dataclass
class Comp:
    """One counting subscription item at a moment."""

    sub_id: str
    item_id: str
    family: str
    kind: str  # seat or resource
    price_id: str
    qty: int
    mult: Fraction
    usd: Fraction  # exact MRR in USD major units

    def times(self, factor: Fraction) -> Comp:
        """The same item with its MRR times ``factor`` (at another exchange rate)."""
        return Comp(self.sub_id, self.item_id, self.family, self.kind, self.price_id, self.qty, self.mult,
                    self.usd * factor)


def round4(x: Fraction) -> Decimal:
    """Half away from zero at 4 decimals."""
    return (Decimal(x.numerator) / Decimal(x.denominator)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


@functools.lru_cache(maxsize=4096)  # (the parts of one transition, and a month's fx rows, share a moment)
def iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def total(state: dict[str, Comp]) -> Decimal:
    """Customer MRR of a state, rounded once."""
    return round4(sum((c.usd for c in state.values()), Fraction(0)))


def parts_of(before: dict[str, Comp], after: dict[str, Comp], had_mrr: bool, mrr: MrrFn, *,
             totals: tuple[Decimal, Decimal] | None = None, fixed_off: frozenset[str] = frozenset(),
             metered: frozenset[str] = frozenset()) -> list[Part]:
    """The components of a transition with their label and exact USD delta (zero parts dropped). ``totals``: the
    two states' :func:`total`, when the caller has them already. ``fixed_off``: subscriptions (and items) whose
    amount-off discount stays in force through the transition (README: a fixed amount off is no discount change; what its new
    split among the subscription's items moves belongs to the change that moved it); ``metered``: metered prices."""
    m_a, m_b = totals if totals is not None else (total(before), total(after))
    if m_a == m_b:
        return []
    if m_a == 0:
        label = "reactivation" if had_mrr else "new"
        return [(c, label, c.usd) for _, c in sorted(after.items())]
    if m_b == 0:
        return [(c, "cancellation", -c.usd) for _, c in sorted(before.items())]
    parts: list[Part] = []

    def qty_label(kind: str, delta: Fraction) -> str:
        return f"{kind}_{'expansion' if delta > 0 else 'contraction'}"

    def pair(a: Comp, b: Comp) -> None:
        # in order: the plan part, then the quantity part (both under the old discount), then the discount; under a
        # fixed amount off no discount part: the parts at the old share, or undiscounted when the item's own share of
        # the amount stays, and what the new split moves joins the larger part (of two equal ones, as when the amount
        # off took all of the item, the larger before discounts; the usage of a metered item at the same price)
        fixed = (a.sub_id == b.sub_id and b.sub_id in fixed_off) or (a.item_id == b.item_id and b.item_id in fixed_off)
        one = Fraction(1)
        f = a.mult
        if fixed and mrr(a.price_id, a.qty, one) - a.usd == mrr(b.price_id, b.qty, one) - b.usd:
            f = one
        plan = mrr(b.price_id, a.qty, f) - mrr(a.price_id, a.qty, f)
        qty = mrr(b.price_id, b.qty, f) - mrr(b.price_id, a.qty, f)
        rest = b.usd - a.usd - plan - qty
        if fixed:
            plan_u = mrr(b.price_id, a.qty, one) - mrr(a.price_id, a.qty, one)
            qty_u = mrr(b.price_id, b.qty, one) - mrr(b.price_id, a.qty, one)
            if b.price_id == a.price_id and b.price_id in metered:
                qty += rest
            elif (abs(plan), abs(plan_u)) >= (abs(qty), abs(qty_u)):
                plan += rest
            else:
                qty += rest
            rest = Fraction(0)
        parts.append((b, "upgrade" if plan > 0 else "downgrade", plan))
        parts.append((b, qty_label(b.kind, qty), qty))
        parts.append((b, "discount", rest))

    resplit: list[tuple[Comp, Fraction]] = []  # (items whose share of a fixed amount off alone moved)
    for iid in sorted(before.keys() & after.keys()):
        a, b = before[iid], after[iid]
        if a == b:  # (an item as it was has only zero parts)
            continue
        if (b.sub_id in fixed_off and a.sub_id == b.sub_id and a.price_id == b.price_id and a.qty == b.qty
                and b.price_id not in metered):
            resplit.append((b, b.usd - a.usd))
        else:
            pair(a, b)
    removed = sorted((c for i, c in before.items() if i not in after), key=lambda c: (-c.usd, c.item_id))
    added = sorted((c for i, c in after.items() if i not in before), key=lambda c: (-c.usd, c.item_id))
    for fam in sorted({c.family for c in removed} & {c.family for c in added}):
        for a, b in zip([c for c in removed if c.family == fam], [c for c in added if c.family == fam],
                        strict=False):  # a plan switch: largest MRR first
            pair(a, b)
            removed.remove(a)
            added.remove(b)
    before_fams = {c.family for c in before.values()}
    after_fams = {c.family for c in after.values()}
    for b in added:
        parts.append((b, qty_label(b.kind, b.usd) if b.family in before_fams else "cross_sell", b.usd))
    for a in removed:
        parts.append((a, qty_label(a.kind, -a.usd) if a.family in after_fams else "downgrade", -a.usd))
    for b, moved in resplit:
        # (joined to the largest other part of its subscription: the change that moved the split)
        own = [k for k, p in enumerate(parts) if p[0].sub_id == b.sub_id and p[2] != 0]
        if own:
            k = max(own, key=lambda k: (abs(parts[k][2]), parts[k][0].item_id))
            parts[k] = (parts[k][0], parts[k][1], parts[k][2] + moved)
        else:
            parts.append((b, "upgrade" if moved > 0 else "downgrade", moved))
    return [p for p in parts if p[2] != 0]


def rows(customer_id: str, currency: str, rates: list[Fraction | None], t: int, parts: list[Part], m_a: Decimal,
         m_b: Decimal, churn: tuple[str, Any] | None) -> list[dict[str, Any]]:
    """Truth rows of one transition; rounded parts add up exactly to the rounded customer delta. ``rates``: the
    rate each part's amount in ``currency`` is read at (None: no amount, as an fx part has)."""
    rounded = [round4(p[2]) for p in parts]
    if parts:
        big = max(range(len(parts)), key=lambda i: (abs(parts[i][2]), -i))
        rounded[big] += (m_b - m_a) - sum(rounded, Decimal(0))
    out = []
    running = m_a
    for (comp, movement, exact), delta, rate in zip(parts, rounded, rates, strict=True):
        if delta == 0:
            continue
        row: dict[str, Any] = {
            "customer_id": customer_id, "subscription_id": comp.sub_id, "subscription_item_id": comp.item_id,
            "occurred_at": iso(t), "movement": movement,
            "category": _FIXED_CATEGORY.get(movement, "expansion" if delta > 0 else "contraction"),
            "mrr_before": float(running), "mrr_after": float(running + delta), "mrr_delta": float(delta),
            "currency": currency, "amount_delta_original": float(round4(exact / rate)) if rate is not None else 0.0,
        }
        if movement == "cancellation":
            row["churn_type"], row["cancellation_feedback"] = churn or ("voluntary", None)
        running += delta
        out.append(row)
    return out
