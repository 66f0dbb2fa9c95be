"""The independent bridge computation of test_bridge_oracle.py on customers with up to three subscriptions at once
(and switches: a subscription canceled and another begun within the movement window, one transition, some from
23:50 into the next day; and, with every event stored, annual plans: a switch to one at equal MRR is no movement),
so that one change has several parts labelled by design.md 5: a further subscription's items are `seat_expansion`
where the customer keeps their family (the add-on has no unit label and a licensed quantity: a seat) and
`cross_sell` where not; a subscription canceled, gone unpaid or an add-on removed while the customer stays is
`seat_contraction` where the customer keeps the family and `downgrade` where not; a discount on one subscription is a
`discount` part per item; each part is rounded at 4 decimals and the rounding remainder goes to the largest."""

from __future__ import annotations

import copy
import heapq
import os
import random
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import duckdb
import pytest
from builders import DAY, World, add_months
from test_bridge_oracle import (
    CATEGORY,
    COMBOS,
    NOON,
    SEEN,
    START,
    Move,
    Step,
    Sub,
    check,
    country_of,
    expected,
    r4,
    random_eur_rates,
    tier_of,
)
from test_bridge_oracle import PRICES as MONTHLY

Derive = Callable[..., duckdb.DuckDBPyConnection]
SEEDS = [int(s) for s in os.environ.get("ORACLE_SEEDS", "1").split()]
# monthly amounts (cents); annual and annual_pro are billed yearly (12 x), at the basic plan's MRR and above it
PRICES = {**MONTHLY, "annual": 1_000, "annual_pro": 1_800}
FAMILY = {"basic": "core", "pro": "core", "annual": "core", "annual_pro": "core", "addon": "analytics"}


def items_of(subs: list[Sub], cur: str, rate: Decimal) -> dict[str, dict[str, Any]]:
    """The counting items of a customer by item id: price, family, unit (cents), quantity, discount factor, own
    MRR and value in the reporting currency."""
    out = {}
    for s in subs:
        if not s.active or s.trialing:
            continue
        f = Decimal(100 - s.pct) / 100
        for iid, plan, qty in ((f"{s.sid}_i", s.plan, s.qty), (f"{s.sid}_a", "addon", 1 if s.addon else 0)):
            if qty:
                own = Decimal(PRICES[plan] * qty) * f / 100
                out[iid] = {"price": f"{plan}_{cur}", "family": FAMILY[plan], "unit": PRICES[plan], "qty": qty,
                            "f": f, "rate": rate, "own": own, "value": own * rate}
    return out


def labelled_parts(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], delta: Decimal
                   ) -> list[tuple[str, Decimal]]:
    """The labelled parts of a change from items ``a`` to items ``b`` whose customer MRR moved by ``delta``
    (design.md 5): an item in both, and a removed and an added item of one family (paired largest first), split into
    plan = (new price - old price) x old quantity, quantity = new price x (new - old quantity), both at the old
    discount, and discount = new amount x (new factor - old factor); unpaired items added (seat_expansion where the
    family was there before, else cross_sell) or removed (seat_contraction where the family stays, else downgrade).
    Each part rounded at 4 decimals, the remainder on the largest (of equal ones the first by item id, then plan,
    quantity, discount)."""
    pairs: list[tuple[dict[str, Any], dict[str, Any], str]] = [(a[i], b[i], i) for i in sorted(set(a) & set(b))]
    removed = {i: a[i] for i in set(a) - set(b)}
    added = {i: b[i] for i in set(b) - set(a)}
    for fam in sorted({v["family"] for v in removed.values()} & {v["family"] for v in added.values()}):
        rs = sorted((i for i in removed if removed[i]["family"] == fam), key=lambda i: (-removed[i]["own"], i))
        ads = sorted((i for i in added if added[i]["family"] == fam), key=lambda i: (-added[i]["own"], i))
        for ri, ai in zip(rs, ads, strict=False):
            pairs.append((removed.pop(ri), added.pop(ai), ai))
    parts: list[tuple[Decimal, str, int, str]] = []  # (exact, item id, order: plan 0 / quantity 1 / discount 2, label)
    for x, y, iid in pairs:
        r = y["rate"]
        plan = (y["unit"] - x["unit"]) * x["qty"] * x["f"] / 100 * r
        qty = y["unit"] * (y["qty"] - x["qty"]) * x["f"] / 100 * r
        disc = Decimal(y["unit"] * y["qty"]) * (y["f"] - x["f"]) / 100 * r
        parts += [(plan, iid, 0, "upgrade" if plan > 0 else "downgrade"),
                  (qty, iid, 1, "seat_expansion" if qty > 0 else "seat_contraction"), (disc, iid, 2, "discount")]
    fam_a, fam_b = {v["family"] for v in a.values()}, {v["family"] for v in b.values()}
    for iid, v in added.items():
        parts.append((v["value"], iid, 0, "seat_expansion" if v["family"] in fam_a else "cross_sell"))
    for iid, v in removed.items():
        parts.append((-v["value"], iid, 0, "seat_contraction" if v["family"] in fam_b else "downgrade"))
    parts = [p for p in parts if p[0] != 0]
    rounded = [r4(p[0]) for p in parts]
    big = min(range(len(parts)), key=lambda k: (-abs(parts[k][0]), parts[k][1], parts[k][2]))
    rounded[big] += delta - sum(rounded)
    out = []
    for (_, _, _, label), amount in zip(parts, rounded, strict=True):
        if label.startswith("seat_"):  # (a part the remainder turned over is labelled by its sign)
            label = "seat_expansion" if amount > 0 else "seat_contraction"
        out.append((label, amount))
    return out


def main_of(items: dict[str, dict[str, Any]]) -> tuple[str, str]:
    if not items:
        return ("", "")
    iid = max(items, key=lambda i: (items[i]["own"], i))
    return (items[iid]["price"], items[iid]["family"])


def build(seed: int, rich: bool = True) -> tuple[World, dict[str, str], dict[str, list[Step]], list[Move]]:
    """As test_bridge_oracle.build, with up to three subscriptions per customer (``rich``: with trials and
    subscriptions gone unpaid)."""
    rng = random.Random(seed)
    w = World()
    w.product("prod_core", unit_label="seat", family="core")
    w.product("prod_an", family="analytics")
    for cur in ("usd", "eur"):
        for plan, cents in PRICES.items():
            yearly = plan.startswith("annual")
            w.price(f"{plan}_{cur}", "prod_an" if plan == "addon" else "prod_core", cents * 12 if yearly else cents,
                    currency=cur, interval="year" if yearly else "month")
    rates, rate_at = random_eur_rates(rng, w)

    currency: dict[str, str] = {}
    queue: list[tuple[int, int, str, str, str]] = []
    used: dict[str, set[int]] = defaultdict(set)
    seq = 0
    for n in range(rng.randint(5, 8)):
        cid = f"c{n}"
        currency[cid] = rng.choice(["usd", "eur", "eur"])
        w.customer(cid, currency=currency[cid], address={"country": country_of(cid)},
                   metadata={"tier": tier_of(cid)} if tier_of(cid) else {})
        for d in sorted(rng.sample(range(0, 395, 2), rng.randint(3, 12))):
            seq += 1
            used[cid].add(START // DAY + d)
            heapq.heappush(queue, (START + d * DAY + NOON, seq, cid, "act", ""))
    subs: dict[str, list[Sub]] = {c: [] for c in currency}
    history: dict[str, list[tuple[int, str, str, list[Sub]]]] = {c: [] for c in currency}  # (t, kind, sub, state)
    nsub = ndisc = 0

    def live(cid: str) -> list[Sub]:
        return [s for s in subs[cid] if s.active]

    while queue:
        t, _, cid, what, sid = heapq.heappop(queue)
        cur = currency[cid]
        s = next((x for x in subs[cid] if x.sid == sid), None)

        def note(kind: str, sub_id: str, t: int = t, cid: str = cid) -> None:
            history[cid].append((t, kind, sub_id, copy.deepcopy(live(cid))))

        def later(kind: str, sub_id: str, t: int = t, cid: str = cid) -> None:
            nonlocal seq
            for k in range(rng.randint(2, 20), 40):
                day = (t + k * DAY) // DAY
                if not {day - 1, day, day + 1} & used[cid] and t + k * DAY < SEEN:
                    used[cid].add(day)
                    seq += 1
                    heapq.heappush(queue, (t + k * DAY, seq, cid, kind, sub_id))
                    return

        if what == "end":
            if s is not None and s.active and s.disc is not None:
                s.pct, s.disc = 0, None
                note("discount", s.sid)
            continue
        if what == "trial_end":
            if s is not None and s.active and s.trialing:
                s.trialing = False
                w.update(sid, t, status="active", trial_end=t)
                note("start", s.sid)
            continue
        if what == "delete":
            w.update(sid, t, event=False, canceled_at=t,
                     cancellation_details={"reason": "payment_failed", "feedback": None, "comment": None})
            w.end(sid, t)
            continue
        if what == "cycle":
            if s is not None and s.active:
                if not s.plan.startswith("annual"):  # (an annual plan renews yearly: no invoice this month)
                    w.cycle(sid, t)
                if add_months(t, 1) < SEEN:
                    seq += 1
                    heapq.heappush(queue, (add_months(t, 1), seq, cid, "cycle", sid))
            continue
        mine = live(cid)
        action = "signup" if not mine else rng.choice(
            ["seat", "seat", "plan", "family", "family", "discount", "cancel", "switch", "switch"]
            + (["unpaid"] if rich else [])
            + (["signup", "signup"] if len(mine) < 3 else []))
        if action == "signup":
            nsub += 1
            s = Sub(f"s{nsub}", rng.choice(["basic", "pro"]), rng.randint(1, 6))
            s.addon = rng.random() < 0.3
            subs[cid].append(s)
            items = [(f"{s.sid}_i", f"{s.plan}_{cur}", s.qty)] + ([(f"{s.sid}_a", f"addon_{cur}", 1)] if s.addon else [])
            if rich and rng.random() < 0.2:
                s.trialing = True
                w.subscribe(s.sid, cid, items, t, trial_end=t + 14 * DAY)
                later("trial_end", s.sid)
            else:
                w.subscribe(s.sid, cid, items, t)
                seq += 1
                heapq.heappush(queue, (add_months(t, 1), seq, cid, "cycle", s.sid))
            note("start", s.sid)
            continue
        s = rng.choice(mine)
        if action in ("unpaid", "discount", "switch") and s.trialing:
            continue
        if action == "switch":  # cancel a subscription and subscribe to another within the movement window
            nsub += 1
            new = Sub(f"s{nsub}", rng.choice(["basic", "pro"]), rng.randint(1, 6), addon=rng.random() < 0.4)
            items = [(f"{new.sid}_i", f"{new.plan}_{cur}", new.qty)] + (
                [(f"{new.sid}_a", f"addon_{cur}", 1)] if new.addon else [])
            cancel_first = rng.random() < 0.5
            if cur == "usd" and rng.random() < 0.5:
                t = t - NOON - 10 * 60  # (23:50 the day before: the window runs into the next day, and period)
            second = 20 * 60 if cancel_first else 0
            for at, step in sorted([(t + (0 if cancel_first else 20 * 60), "cancel"), (t + second, "start")]):
                if step == "cancel":
                    w.cancel(s.sid, at)
                    s.active = False
                    history[cid].append((at, "cancel", s.sid, copy.deepcopy(live(cid))))
                else:
                    w.subscribe(new.sid, cid, items, at)
                    subs[cid].append(new)
                    history[cid].append((at, "start", new.sid, copy.deepcopy(live(cid))))
            if add_months(t + second, 1) < SEEN:
                seq += 1
                heapq.heappush(queue, (add_months(t + second, 1), seq, cid, "cycle", new.sid))
            continue
        if action == "cancel":
            w.cancel(s.sid, t)
            s.active = False
        elif action == "unpaid":
            w.update(s.sid, t, status="unpaid")
            s.active = False
            later("delete", s.sid)
        elif action == "discount":
            if s.disc is not None:
                continue
            ndisc += 1
            pct, months = rng.choice([10, 20, 25, 50]), rng.randint(1, 3)
            w.coupon(f"co{ndisc}", percent_off=pct, duration="repeating", duration_in_months=months)
            end = add_months(t, months)
            if {end // DAY - 1, end // DAY, end // DAY + 1} & used[cid] or end > SEEN:
                continue
            used[cid].add(end // DAY)
            seq += 1
            heapq.heappush(queue, (end, seq, cid, "end", s.sid))
            d = w.discount(f"co{ndisc}", t, customer=cid, subscription=s.sid)
            w.update(s.sid, t, discounts=[d["id"]])
            s.pct, s.disc = pct, d["id"]
        else:
            if action == "seat":
                s.qty = rng.choice([q for q in range(1, 8) if q != s.qty])
            elif action == "plan":
                plans = ["basic", "pro"] + (["annual", "annual_pro"] if rich else [])
                s.plan = rng.choice([p for p in plans if p != s.plan])
            else:
                s.addon = not s.addon
            w.update(s.sid, t, items=[(f"{s.sid}_i", f"{s.plan}_{cur}", s.qty)]
                     + ([(f"{s.sid}_a", f"addon_{cur}", 1)] if s.addon else []))
        note(action, s.sid)

    steps: dict[str, list[Step]] = {}
    moves: list[Move] = []
    for cid, hist in history.items():
        cur = currency[cid]
        points = [(t, kind, state) for t, kind, _, state in hist]
        if cur == "eur":
            for at, _ in rates[1:]:
                before = [h for h in hist if h[0] < at]
                points.append((at, "fx", before[-1][3] if before else []))
        points.sort(key=lambda p: p[0])
        # changes within the movement window of the first are one transition (design.md 5), dated at the first
        groups: list[list[tuple[int, str, list[Sub]]]] = []
        for pt in points:
            if groups and pt[0] - groups[-1][0][0] <= 3600:
                groups[-1].append(pt)
            else:
                groups.append([pt])
        prev: list[Sub] = []
        level, had = Decimal(0), False
        steps[cid] = []
        for group in groups:
            t, kind, state = group[0][0], group[0][1], group[-1][2]
            rate = rate_at(group[-1][0], cur)
            b = items_of(state, cur, rate)
            after = r4(sum((v["value"] for v in b.values()), Decimal(0)))
            main = main_of(b)
            if after == level:
                # (a change that leaves the MRR as it was is no movement, but the customer's state, and so its plan
                # or family segment, follows it)
                if after > 0 and kind != "fx":
                    steps[cid].append((t, after, main))
                prev = state
                continue
            if level == 0 or after == 0:
                movement = ("reactivation" if had else "new") if level == 0 else "cancellation"
                moves.append(Move(t, cid, movement, CATEGORY[movement], level, after, main))
            elif kind == "fx":
                moves.append(Move(t, cid, "fx", "fx", level, after, main))
            else:
                a = items_of(prev, cur, rate)  # (no rate moves inside these windows)
                for mv, amount in labelled_parts(a, b, after - level):
                    moves.append(Move(t, cid, mv, "expansion" if amount > 0 else "contraction", level, after, main,
                                      amount))
            steps[cid].append((t, after, main))
            level, had = after, had or after > 0
            prev = state
    return w, currency, steps, moves


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("events", ["all", "last-30-days"])
def test_several_subscriptions_agree_with_an_independent_computation(derive: Derive, seed: int, events: str) -> None:
    """design.md 5 and 6: every movement (per customer, moment and label) and the bridge per period and segment; with
    the events of Stripe's last 30 days only, from the invoices before them (design.md 3)."""
    w, currency, steps, moves = build(seed, rich=events == "all")
    con = derive(w, seen_at=SEEN, events=True if events == "all" else SEEN - 30 * DAY)
    got = [(int(r[0].timestamp()), r[1], r[2], r[3]) for r in con.execute(
        "SELECT occurred_at, customer_id, movement, sum(mrr_delta) FROM mrr_movements GROUP BY ALL").fetchall()]
    want: dict[tuple[int, str, str], Decimal] = defaultdict(Decimal)
    for m in moves:
        want[(m.t, m.cid, m.movement)] += m.amount()
    assert sorted(got) == sorted((*k, v) for k, v in want.items() if v != 0 or k[2] != "fx")
    checked = 0
    for kind, segment in COMBOS:
        checked += check(con, kind, segment, expected(kind, segment, currency, steps, moves), seed)
    assert checked > 100
