"""The bridge (design.md 6) against an independent computation from the rules of design.md 4 and 5, on random small
accounts whose changes are far enough apart that no two of a customer's share a movement window: each change is one
transition of one kind (seats, plan, a family added or removed, a percent or amount off starting or ending, a rate
moving, a trial ending, past_due and back, unpaid, a cancellation at once or set for the period end, a signup). The
oracle computes each customer's MRR as a step function (round(sum of items x discount x rate, 4), half away from
zero), labels each step by the rules, and adds the steps up per period and segment; the bridge must agree in every
money column, count and rate, for week, month, quarter and year, for the whole account and by currency, size_band,
plan, family, country and a metadata key (a customer counts, for a period, in the segment of its state at the period
start, or of its first state with MRR in the period; for plan and family, that state's largest item). Also with
churn_recognition "canceled", past_due counting zero, and only the events of Stripe's last 30 days stored."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import heapq
import os
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import duckdb
import pytest
from builders import DAY, World, add_months, ts

from stripe_churn.metrics import queries

Derive = Callable[..., duckdb.DuckDBPyConnection]
NOON = 12 * 3600
START = ts(2024, 1, 1)
SEEN = ts(2025, 2, 10)
PRICES = {"basic": 1_000, "pro": 2_000, "addon": 5_000}  # cents; basic and pro of family core, addon of analytics
FLOWS = ("new", "reactivation", "expansion", "contraction", "churn", "fx", "upgrade", "cross_sell", "seat_expansion",
         "downgrade", "seat_contraction", "discount_expansion", "discount_contraction")
SEEDS = [int(s) for s in os.environ.get("ORACLE_SEEDS", "1").split()]  # (ORACLE_SEEDS="1 2 ... 99" for more)
COUNTS = ("opening_customers", "new_customers", "reactivated_customers", "churned_customers", "closing_customers")
CATEGORY = {"new": "new", "reactivation": "reactivation", "cancellation": "churn", "fx": "fx",
            "upgrade": "expansion", "cross_sell": "expansion", "seat_expansion": "expansion",
            "downgrade": "contraction", "seat_contraction": "contraction"}


# (period, segment) pairs checked: every segment whose membership moves by week, month and quarter; the static ones
# and the year once
COMBOS = [(k, s) for k in ("week", "month", "quarter") for s in (None, "currency", "size_band", "plan", "family")] + [
    ("year", None), ("month", "country"), ("month", "metadata.tier")]


def country_of(cid: str) -> str:
    return ("US", "DE", "FR")[int(cid[1:]) % 3]


def tier_of(cid: str) -> str | None:
    """The customer's metadata tier (None: no such key)."""
    return ("gold", None, "silver", "gold")[int(cid[1:]) % 4]


def r4(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


@dataclass
class Sub:
    sid: str
    plan: str
    qty: int
    addon: bool = False
    pct: int = 0  # the percent off in force, 0 for none
    off: int = 0  # or the amount off in force (cents a month)
    disc: str | None = None  # the discount giving it
    active: bool = True
    trialing: bool = False
    past_due: bool = False
    cancel_asked: int | None = None  # set to cancel at its period end: when asked
    ending_at: int | None = None  # and when it ends


@dataclass
class Move:
    t: int
    cid: str
    movement: str
    category: str
    before: Decimal
    after: Decimal
    main: tuple[str, str]  # (price, family) of the main item after it
    delta: Decimal | None = None  # a part's share of a transition that has several (else after - before)

    def amount(self) -> Decimal:
        return self.after - self.before if self.delta is None else self.delta


Step = tuple[int, Decimal, tuple[str, str]]  # (moment, MRR from then, its main item's (price, family))


def main_of(state: Sub | None, cur: str) -> tuple[str, str]:
    """The main item's (price, family): the largest MRR (the plan's, of equal ones: its item id is the larger)."""
    if state is None or not state.active or state.trialing:
        return ("", "")
    if state.addon and PRICES["addon"] > PRICES[state.plan] * state.qty:
        return (f"addon_{cur}", "analytics")
    return (f"{state.plan}_{cur}", "core")


def mrr_of(state: Sub | None, rate: Decimal, past_due_counts: bool = True) -> Decimal:
    if state is None or not state.active or state.trialing or (state.past_due and not past_due_counts):
        return Decimal(0)
    cents = PRICES[state.plan] * state.qty + (PRICES["addon"] if state.addon else 0)
    net = max(Decimal(cents) * Decimal(100 - state.pct) / 100 - state.off, Decimal(0))
    return r4(net / 100 * rate)



def random_eur_rates(rng: random.Random, w: World
                     ) -> tuple[list[tuple[int, Decimal]], Callable[[int, str], Decimal]]:
    """EUR's rate in USD from December 2023 on, moving at 00:00 every 20 to 70 days until the store is seen (each
    between 0.95 and 1.25), stored as ``w``'s fx_rates; returned as (unix time, rate) in time order, with the rate
    of a currency at a unix time (1 for usd)."""
    rates: list[tuple[int, Decimal]] = [(ts(2023, 12, 1), Decimal("1.0800"))]
    day = START
    while True:
        day += rng.randint(20, 70) * DAY
        if day >= SEEN - DAY:
            break
        rates.append((day, Decimal(rng.randint(9_500, 12_500)) / 10_000))
    w.fx_rates = [(dt.datetime.fromtimestamp(t, tz=dt.UTC).date().isoformat(), "eur", float(r)) for t, r in rates]

    def rate_at(t: int, cur: str) -> Decimal:
        return Decimal(1) if cur == "usd" else [r for at, r in rates if at <= t][-1]

    return rates, rate_at

def build(seed: int, rich: bool = True, recognition: str = "ended", past_due_counts: bool = True
          ) -> tuple[World, dict[str, str], dict[str, list[Step]], list[Move]]:
    """A random account, each customer's currency, each customer's MRR steps [(moment, MRR from then)] and the
    movements, by hand. Subscriptions renew monthly (a subscription_cycle invoice); with ``rich``, some signups
    have a trial, and some subscriptions go past_due (and recover) or unpaid (and are deleted later), changes whose
    only evidence here is their events."""
    rng = random.Random(seed)
    w = World()
    w.product("prod_core", unit_label="seat", family="core")
    w.product("prod_an", family="analytics")
    for cur in ("usd", "eur"):
        for plan, cents in PRICES.items():
            w.price(f"{plan}_{cur}", "prod_an" if plan == "addon" else "prod_core", cents, currency=cur)
    rates, rate_at = random_eur_rates(rng, w)

    currency: dict[str, str] = {}
    queue: list[tuple[int, int, str, str, str]] = []  # (moment, seq, customer, action, sub id for an end)
    used: dict[str, set[int]] = defaultdict(set)
    seq = 0
    for n in range(rng.randint(6, 9)):
        cid = f"c{n}"
        currency[cid] = rng.choice(["usd", "usd", "eur"])
        w.customer(cid, currency=currency[cid], address={"country": country_of(cid)},
                   metadata={"tier": tier_of(cid)} if tier_of(cid) else {})
        for d in sorted(rng.sample(range(0, 395, 2), rng.randint(2, 9))):  # (days apart: never one window)
            seq += 1
            used[cid].add(START // DAY + d)
            # (a usd customer's change may come at 00:00:00 or 23:59:59, a period's first or last instant; a eur
            # customer's at noon, away from the rates' moves at 00:00)
            at = rng.choice([NOON, NOON, 0, DAY - 1]) if currency[cid] == "usd" else NOON
            heapq.heappush(queue, (START + d * DAY + at, seq, cid, "act", ""))
    state: dict[str, Sub | None] = dict.fromkeys(currency)
    history: dict[str, list[tuple[int, str, Sub | None]]] = {c: [] for c in currency}  # (moment, kind, state after)
    nsub = ndisc = 0
    while queue:
        t, _, cid, what, sid = heapq.heappop(queue)
        s, cur = state[cid], currency[cid]
        if what == "end":  # a repeating discount's end
            if s is not None and s.active and s.sid == sid and s.disc is not None:
                s.pct, s.off, s.disc = 0, 0, None
                history[cid].append((t, "discount", copy.copy(s)))
            continue
        if what == "delete":  # an unpaid subscription deleted: no MRR of its own by then
            w.update(sid, t, event=False, canceled_at=t,
                     cancellation_details={"reason": "payment_failed", "feedback": None, "comment": None})
            w.end(sid, t)
            continue
        if what == "ended":  # a cancellation set for the period end takes effect
            if s is not None and s.sid == sid:
                s.active = False
                history[cid].append((t, "cancel", copy.copy(s)))
            continue
        if what == "cycle":
            if s is not None and s.active and s.sid == sid and not (s.ending_at and t >= s.ending_at):
                w.cycle(sid, t)
                nxt = add_months(t, 1)
                if nxt < SEEN:
                    seq += 1
                    heapq.heappush(queue, (nxt, seq, cid, "cycle", sid))
            continue
        if what == "recover":  # a past_due subscription paid
            if s is not None and s.active and s.sid == sid and s.past_due:
                w.update(sid, t, status="active")
                s.past_due = False
                history[cid].append((t, "recover", copy.copy(s)))
            continue
        if what == "trial_end":
            if s is not None and s.active and s.sid == sid and s.trialing:
                s.trialing = False
                w.update(sid, t, status="active", trial_end=t)
                history[cid].append((t, "signup", copy.copy(s)))
            continue

        def later(kind: str, sub_id: str, t: int = t, cid: str = cid) -> None:
            nonlocal seq
            for k in range(rng.randint(2, 20), 40):
                day = (t + k * DAY) // DAY
                if not {day - 1, day, day + 1} & used[cid] and t + k * DAY < SEEN:
                    used[cid].add((t + k * DAY) // DAY)
                    seq += 1
                    heapq.heappush(queue, (t + k * DAY, seq, cid, kind, sub_id))
                    return

        if s is not None and s.ending_at is not None and s.active:
            continue  # (nothing more happens to a subscription set to cancel, until it ends)
        if s is None or not s.active:
            nsub += 1
            s = Sub(f"s{nsub}", rng.choice(["basic", "pro"]), rng.randint(1, 6))
            state[cid] = s
            if rich and rng.random() < 0.25:  # a trial of 14 days or so, ended by the next free day
                s.trialing = True
                w.subscribe(s.sid, cid, [(f"{s.sid}_i", f"{s.plan}_{cur}", s.qty)], t, trial_end=t + 14 * DAY)
                later("trial_end", s.sid, t + 12 * DAY)
            else:
                w.subscribe(s.sid, cid, [(f"{s.sid}_i", f"{s.plan}_{cur}", s.qty)], t)
                seq += 1
                heapq.heappush(queue, (add_months(t, 1), seq, cid, "cycle", s.sid))
            history[cid].append((t, "signup", copy.copy(s)))
            continue
        action = rng.choice(["seat", "seat", "plan", "family", "discount", "cancel"]
                           + (["unpaid", "past_due"] if rich else []))
        if action == "unpaid" and s.trialing:
            action = "cancel"
        if action == "past_due":
            if s.trialing:
                continue
            if s.past_due:
                continue
            w.update(s.sid, t, status="past_due")
            s.past_due = True
            history[cid].append((t, "past_due", copy.copy(s)))
            later("recover", s.sid)
            continue
        if action == "unpaid":
            w.update(s.sid, t, status="unpaid")
            s.active = False
            history[cid].append((t, "unpaid", copy.copy(s)))
            later("delete", s.sid)
            continue
        if action == "discount":
            if s.disc is not None:
                continue
            ndisc += 1
            pct, repeating, months = rng.choice([10, 20, 25, 50]), rng.random() < 0.5, rng.randint(1, 3)
            off = rng.choice([0, 0, 500, 1_500, 3_000])  # (an amount off, shared among the items, MRR floored at 0)
            w.coupon(f"co{ndisc}", percent_off=None if off else pct, amount_off=off or None,
                     currency=cur if off else None, duration="repeating" if repeating else "forever",
                     duration_in_months=months if repeating else None)
            if repeating:
                end = add_months(t, months)
                if {end // DAY - 1, end // DAY, end // DAY + 1} & used[cid] or end > SEEN:
                    continue  # (its end would share a window with another change of the customer's, or come later)
                used[cid].add(end // DAY)
                seq += 1
                heapq.heappush(queue, (end, seq, cid, "end", s.sid))
            d = w.discount(f"co{ndisc}", t, customer=cid, subscription=s.sid)
            w.update(s.sid, t, discounts=[d["id"]])
            s.pct, s.off, s.disc = (0, off, d["id"]) if off else (pct, 0, d["id"])
        elif action == "cancel":
            end = w.objects["subscriptions"][s.sid]["items"]["data"][0]["current_period_end"]
            if rng.random() < 0.5 and not s.trialing and t < end < SEEN and not {
                    end // DAY - 1, end // DAY, end // DAY + 1} & used[cid]:
                # (set to cancel at the period end: churn then, or when asked with churn_recognition "canceled")
                used[cid].add(end // DAY)
                w.cancel(s.sid, t, ended_at=end, feedback="too_expensive")
                s.cancel_asked, s.ending_at = t, end
                seq += 1
                heapq.heappush(queue, (end, seq, cid, "ended", s.sid))
                continue
            w.cancel(s.sid, t)
            s.active = False
        else:
            if action == "seat":
                s.qty = rng.choice([q for q in range(1, 8) if q != s.qty])
            elif action == "plan":
                s.plan = "pro" if s.plan == "basic" else "basic"
            else:
                s.addon = not s.addon
                action = "cross_sell" if s.addon else "remove_family"
            w.update(s.sid, t, items=[(f"{s.sid}_i", f"{s.plan}_{cur}", s.qty)]
                     + ([(f"{s.sid}_a", f"addon_{cur}", 1)] if s.addon else []))
        history[cid].append((t, action, copy.copy(s)))

    steps: dict[str, list[Step]] = {}
    moves: list[Move] = []
    for cid, hist in history.items():
        cur = currency[cid]
        if recognition == "canceled":  # (a subscription set to cancel counts nothing from when that was asked)
            hist = [(t, kind, dataclasses.replace(st, active=False) if st is not None and st.cancel_asked is not None
                     and st.cancel_asked <= t else st) for t, kind, st in hist]
            for _t, _, st in list(hist):
                if st is not None and st.cancel_asked is not None and not any(
                        h[0] == st.cancel_asked for h in hist):
                    hist.append((st.cancel_asked, "cancel", dataclasses.replace(st, active=False)))
            hist.sort(key=lambda h: h[0])
        points = list(hist)
        if cur == "eur":
            for at, _ in rates[1:]:
                before = [h for h in hist if h[0] < at]
                points.append((at, "fx", before[-1][2] if before else None))
        points.sort(key=lambda p: p[0])
        level, had = Decimal(0), False
        steps[cid] = []
        for t, kind, st in points:
            after = mrr_of(st, rate_at(t, cur), past_due_counts)
            if after == level:
                continue
            if level == 0:
                movement = "reactivation" if had else "new"
            elif after == 0:
                movement = "cancellation"
            elif kind == "discount":
                movement = "discount"
            elif kind == "seat":
                movement = "seat_expansion" if after > level else "seat_contraction"
            elif kind == "plan":
                movement = "upgrade" if after > level else "downgrade"
            elif kind == "remove_family":
                movement = "downgrade"
            else:
                movement = kind  # cross_sell, fx
            category = CATEGORY.get(movement) or ("expansion" if after > level else "contraction")
            moves.append(Move(t, cid, movement, category, level, after, main_of(st, cur)))
            steps[cid].append((t, after, main_of(st, cur)))
            level, had = after, had or after > 0
    return w, currency, steps, moves


def period_start(kind: str, t: int) -> dt.date:
    d = dt.datetime.fromtimestamp(t, tz=dt.UTC).date()
    if kind == "week":
        return d - dt.timedelta(days=d.weekday())
    if kind == "month":
        return d.replace(day=1)
    if kind == "quarter":
        return dt.date(d.year, (d.month - 1) // 3 * 3 + 1, 1)
    return dt.date(d.year, 1, 1)


def next_start(kind: str, p: dt.date) -> dt.date:
    if kind == "week":
        return p + dt.timedelta(days=7)
    months = {"month": 1, "quarter": 3, "year": 12}[kind]
    m = p.month - 1 + months
    return dt.date(p.year + m // 12, m % 12 + 1, 1)


def band(mrr: Decimal) -> str:
    return ("a: under 100" if mrr < 100 else "b: 100 to 1k" if mrr < 1000 else "c: 1k to 10k" if mrr < 10000
            else "d: 10k and more")


def expected(kind: str, segment: str | None, currency: dict[str, str], steps: dict[str, list[Step]],
             moves: list[Move]) -> dict[tuple[str, dt.date], dict[str, Any]]:
    """The bridge rows by hand, per (segment value, period start), from the first period with MRR through SEEN's."""
    def at_start(cid: str, p: dt.date) -> tuple[Decimal, tuple[str, str]]:
        t = int(dt.datetime(p.year, p.month, p.day, tzinfo=dt.UTC).timestamp())
        before = [(m, main) for at, m, main in steps[cid] if at < t]
        return before[-1] if before else (Decimal(0), ("", ""))

    first = period_start(kind, min(m.t for m in moves))
    out: dict[tuple[str, dt.date], dict[str, Any]] = {}
    p = first
    last = period_start(kind, SEEN)
    while p <= last:
        q = next_start(kind, p)
        t0 = int(dt.datetime(p.year, p.month, p.day, tzinfo=dt.UTC).timestamp())
        t1 = int(dt.datetime(q.year, q.month, q.day, tzinfo=dt.UTC).timestamp())
        for cid in currency:
            opening, main = at_start(cid, p)
            inside = [m for m in moves if m.cid == cid and t0 <= m.t < t1]
            if opening == 0 and not inside:
                continue
            if segment is None:
                seg = "all"
            elif segment == "currency":
                seg = currency[cid]
            elif segment == "country":
                seg = country_of(cid)
            elif segment == "metadata.tier":
                seg = tier_of(cid) or "(none)"
            else:
                first = main if opening > 0 else next(m.main for m in inside if m.after > 0)
                seg = {"plan": first[0], "family": first[1]}.get(segment) or band(
                    opening if opening > 0 else next(m.after for m in inside if m.after > 0))
            row = out.setdefault((seg, p), {c: Decimal(0) for c in ("opening_mrr", "closing_mrr", *FLOWS)}
                                 | dict.fromkeys((*COUNTS, "churned_from_opening"), 0))
            closing = inside[-1].after if inside else opening
            row["opening_mrr"] += opening
            row["closing_mrr"] += opening + sum(m.amount() for m in inside)
            row["opening_customers"] += opening > 0
            for m in inside:
                delta = m.amount()
                sign = 1 if m.category in ("new", "reactivation", "expansion", "fx") else -1
                row[m.category] += sign * delta
                if m.movement == "discount":
                    row[f"discount_{m.category}"] += sign * delta
                elif m.category in ("expansion", "contraction"):
                    row[m.movement] += sign * delta
            row["new_customers"] += any(m.movement == "new" for m in inside)
            row["reactivated_customers"] += any(m.movement == "reactivation" for m in inside)
            churned = any(m.movement == "cancellation" for m in inside)
            row["churned_customers"] += churned
            row["churned_from_opening"] += churned and opening > 0
            # (closing customers are of the segment the customer counted in this period; a later move is the next's)
            row["closing_customers"] += closing > 0
        p = q
    return out


def check(con: duckdb.DuckDBPyConnection, kind: str, segment: str | None, want: dict[tuple[str, dt.date], Any],
          seed: int) -> int:
    got = {(r.get("segment_value", "all"), r["period_start"]): r for r in queries.bridge(con, kind, segment)
           if r["period_start"] <= period_start(kind, SEEN)}
    if segment is not None and got:  # (one value asked for gives that value's rows)
        value = sorted({k[0] for k in got})[-1]
        one = {(r["segment_value"], r["period_start"]): r for r in queries.bridge(con, kind, segment, segment_value=value)
               if r["period_start"] <= period_start(kind, SEEN)}
        assert one == {k: r for k, r in got.items() if k[0] == value}, (seed, kind, segment, value)
    # (a segment value's quiet periods, in which no customer counts there, are rows of zeros or not there at all)
    checked = 0
    for key in sorted(set(want) | set(got)):
        w = want.get(key)
        g = got.get(key)
        where = f"seed {seed} {kind}/{segment} {key}"
        if w is None:
            assert g is not None
            assert all(g[c] == 0 for c in ("opening_mrr", "closing_mrr", *FLOWS, *COUNTS)), (where, g)
            continue
        assert g is not None, (where, w)
        for col in ("opening_mrr", "closing_mrr", *FLOWS, *COUNTS):
            assert g[col] == w[col], (where, col, g[col], w[col])
        om = w["opening_mrr"]
        lost, won = w["churn"] + w["contraction"], w["expansion"] + w["reactivation"]
        assert g["gross_revenue_churn_rate"] == (None if om == 0 else pytest.approx(float(lost / om))), where
        assert g["net_revenue_churn_rate"] == (None if om == 0 else pytest.approx(float((lost - won) / om))), where
        assert g["nrr"] == (None if om == 0 else pytest.approx(float((om + w["expansion"] - lost) / om))), where
        assert g["grr"] == (None if om == 0 else pytest.approx(float((om - lost) / om))), where
        assert g["net_negative_churn"] == (None if om == 0 else lost - won < 0), where
        oc = w["opening_customers"]
        assert g["customer_churn_rate"] == (None if oc == 0 else pytest.approx(w["churned_from_opening"] / oc)), where
        gains = w["new"] + w["reactivation"] + w["expansion"]
        assert g["quick_ratio"] == (None if lost == 0 else pytest.approx(float(gains / lost))), where
        cc = w["closing_customers"]
        assert g["arpa"] == (None if cc == 0 else r4(w["closing_mrr"] / cc)), where
        checked += 1
    return checked


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("events", "recognition", "past_due_counts"), [
    ("all", "ended", True), ("last-30-days", "ended", True), ("all", "canceled", True), ("all", "ended", False)])
def test_the_bridge_agrees_with_an_independent_computation(derive: Derive, seed: int, events: str,
                                                           recognition: str, past_due_counts: bool) -> None:
    """Every movement, and the bridge per period and segment. With the events of Stripe's last 30 days only, the
    history before them comes from the invoices (design.md 3), and the account has only the changes invoices show."""
    w, currency, steps, moves = build(seed, rich=events == "all", recognition=recognition,
                                      past_due_counts=past_due_counts)
    con = derive(w, seen_at=SEEN, events=True if events == "all" else SEEN - 30 * DAY,
                 churn_recognition=recognition, past_due_counts=past_due_counts)
    got = [(int(r[0].timestamp()), r[1], r[2], r[3]) for r in con.execute(
        "SELECT occurred_at, customer_id, movement, sum(mrr_delta) FROM mrr_movements GROUP BY ALL "
        "ORDER BY occurred_at, customer_id").fetchall()]
    want: dict[tuple[int, str, str], Decimal] = defaultdict(Decimal)
    for m in moves:
        want[(m.t, m.cid, m.movement)] += m.amount()
    assert sorted(got) == sorted((*k, v) for k, v in want.items())
    checked = 0
    for kind, segment in COMBOS:
        checked += check(con, kind, segment, expected(kind, segment, currency, steps, moves), seed)
    assert checked > 100
