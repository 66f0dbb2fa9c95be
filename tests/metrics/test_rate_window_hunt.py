"""Exchange-rate moves and the movement window, against answers worked out by hand from design.md 4-6 and the rule
of README "Exchange rates" (CHANGELOG "Changed", NOTES of 2026-12-07, step 60's header): a rate's move is no change
of the customer's; it begins no movement window and joins none, and is an `fx` transition of its own on what the
customer held when it moved, unless it falls between the first and the last change of one window, whose transition
then carries the `fx` part. Each change is valued at the rate in force when it was made (a rate moves at 00:00 UTC,
before a change made then); new, reactivation and cancellation take the whole customer delta.

Cases: a change 60 minutes, one second and no time before a move, 60 and 61 minutes after it; two changes across
a move in one window (two items, the last at the move, one item, one item's seat added and taken away) and a window that ends before the move; a run of
changes every 40 minutes across a move, split into anchored windows; plan switches (the new plan after the move or
before it), a two-subscription signup and churn straddling a move; a cancellation at the move and ten minutes after
it; a comeback ten minutes after it; a customer billed in euros and pounds when both rates move and when one does;
daily rates with a change five minutes after each move; a one-day movement window (changes on each side of a move,
a window ending before one, a cancellation and a new plan ten hours apart, a window from one daily move to the
next); an account derived in full against one derived again incrementally after a later sync brings changes and a
rate. Each case checks the movements (time, label, customer MRR before and after, delta,
currency, amount in that currency, item), customer_mrr, and its own bridge lines by month (the bridge's segment
`metadata.case`: each customer is one case), opening + flows = closing.

Rates (USD for one unit): eur 1.08, 1.10 from 1 March 2024; gbp 1.25, 1.30 from 1 March, 1.28 from 1 May; chf 1.10,
then 1.11 on 4 March, 1.12 on the 5th ... 1.17 on the 10th (daily for a week). Prices: a core seat 10.00 EUR, a core
"pro" seat 20.00 EUR, an add-on seat 5.00 EUR (family addon), an add-on seat 10.00 GBP, a core seat 10.00 CHF and
an add-on seat 5.00 CHF, a core seat 10.00 USD (all monthly). The incremental account has rates of its own."""
from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import duckdb
import pytest
from builders import World, ts
from conftest import customer_mrr_at, make_settings
from test_bridge import assert_bridge_adds_up
from test_fx_hunt import expect, fx, levels, rows
from test_incremental import derived_contents, later_sync
from test_views_corners import MONEY

from stripe_churn.metrics import queries
from stripe_churn.metrics.incremental import recompute_changed
from stripe_churn.metrics.runner import recompute

D = Decimal
MIN = 60
T0 = ts(2024, 1, 1)
M = ts(2024, 3, 1)  # the euro's and the pound's move
MAY = ts(2024, 5, 1)  # the pound's second move (the euro stays)
SEEN = ts(2024, 6, 1)
FEB, MAR, APR = dt.date(2024, 2, 1), dt.date(2024, 3, 1), dt.date(2024, 4, 1)
CHF_DAYS = [(ts(2024, 3, day), 1.10 + (day - 3) / 100) for day in range(4, 11)]  # 4 March 1.11 ... 10 March 1.17
RATES: list[tuple[str, str, float]] = [
    ("2023-12-01", "eur", 1.08), ("2024-03-01", "eur", 1.10),
    ("2023-12-01", "gbp", 1.25), ("2024-03-01", "gbp", 1.30), ("2024-05-01", "gbp", 1.28),
    ("2023-12-01", "chf", 1.10),
    *((dt.datetime.fromtimestamp(t, tz=dt.UTC).date().isoformat(), "chf", round(r, 2)) for t, r in CHF_DAYS),
]

Row = tuple[Any, ...]


def feb29(hour: int, minute: int = 0) -> int:
    return ts(2024, 2, 29, hour, minute)


def mar1(hour: int, minute: int = 0) -> int:
    return ts(2024, 3, 1, hour, minute)


def catalogue(w: World) -> World:
    w.product("prod_seat", unit_label="seat", family="core")
    w.product("prod_pro", unit_label="seat", family="core")
    w.product("prod_addon", unit_label="seat", family="addon")
    w.price("seat_eur", "prod_seat", 1_000, currency="eur")
    w.price("pro_eur", "prod_pro", 2_000, currency="eur")
    w.price("addon_eur", "prod_addon", 500, currency="eur")
    w.price("addon_gbp", "prod_addon", 1_000, currency="gbp")
    w.price("seat_chf", "prod_seat", 1_000, currency="chf")
    w.price("addon_chf", "prod_addon", 500, currency="chf")
    w.price("seat_usd", "prod_seat", 1_000)
    w.fx_rates = list(RATES)
    return w


def customer(w: World, cid: str, currency: str = "eur") -> None:
    """A customer who is one case: its bridge is the segment ``metadata.case = cid``."""
    w.customer(cid, currency=currency, metadata={"case": cid})


# each store's bridge by case and month, read once (the stores live as long as the module)
_LINES: dict[int, dict[str, dict[dt.date, tuple[Any, ...]]]] = {}


def lines(con: duckdb.DuckDBPyConnection, cid: str) -> dict[dt.date, tuple[Any, ...]]:
    """The customer's bridge by month: (opening, new, reactivation, expansion, contraction, churn, fx, closing);
    checks opening + flows = closing on each."""
    if id(con) not in _LINES:
        cases: dict[str, dict[dt.date, tuple[Any, ...]]] = {}
        for r in queries.bridge(con, "month", "metadata.case"):
            got = tuple(r[c] for c in MONEY)
            opening, new, react, exp, contr, churn, fxl, closing = got
            assert opening + new + react + exp - contr - churn + fxl == closing, (r["segment_value"],
                                                                                 r["period_start"], got)
            cases.setdefault(r["segment_value"], {})[r["period_start"]] = got
        _LINES[id(con)] = cases
    return _LINES[id(con)][cid]


def line(opening: str, closing: str, *, new: str = "0", react: str = "0", exp: str = "0", contr: str = "0",
         churn: str = "0", fxl: str = "0") -> tuple[Decimal, ...]:
    return tuple(D(x) for x in (opening, new, react, exp, contr, churn, fxl, closing))


# --- store 1: the default 60-minute window ---------------------------------------------------------------------------

# a seat added to 2 seats x 10.00 EUR at these offsets (seconds) from the move
OFFSETS = {"an_hour_before": -3600, "a_second_before": -1, "at_the_move": 0, "an_hour_after": 3600,
           "61_minutes_after": 3660}
# a core seat, then an add-on seat: (first, last)
TWO_ITEMS = {"two_items": (feb29(23, 30), mar1(0, 20)), "two_items_last_at_the_move": (feb29(23, 20), M)}
# five changes 40 minutes apart from these times
RUNS = {"2240": feb29(22, 40), "2250": feb29(22, 50), "2330": feb29(23, 30)}


def hour_world() -> World:
    w = catalogue(World(account_id="acct_hour"))
    for name, offset in OFFSETS.items():
        cid = f"c_{name}"
        customer(w, cid)
        w.subscribe(f"s_{name}", cid, [(f"si_{name}", "seat_eur", 2)], T0)
        w.update(f"s_{name}", M + offset, items=[(f"si_{name}", "seat_eur", 3)])
    # two items changed across the move: a core seat, then an add-on seat
    for name, (first, last) in TWO_ITEMS.items():
        customer(w, f"c_{name}")
        w.subscribe(f"s_{name}", f"c_{name}", [(f"si_{name}", "seat_eur", 2), (f"sa_{name}", "addon_eur", 1)], T0)
        w.update(f"s_{name}", first, items=[(f"si_{name}", "seat_eur", 3), (f"sa_{name}", "addon_eur", 1)])
        w.update(f"s_{name}", last, items=[(f"si_{name}", "seat_eur", 3), (f"sa_{name}", "addon_eur", 2)])
    # one item changed twice across the move, 23:30 and 00:20
    customer(w, "c_one_item")
    w.subscribe("s_oi", "c_one_item", [("si_oi", "seat_eur", 2)], T0)
    w.update("s_oi", feb29(23, 30), items=[("si_oi", "seat_eur", 3)])
    w.update("s_oi", mar1(0, 20), items=[("si_oi", "seat_eur", 4)])
    # one item given a seat at 23:30 and the seat taken away at 00:20
    customer(w, "c_one_item_back")
    w.subscribe("s_oib", "c_one_item_back", [("si_oib", "seat_eur", 2)], T0)
    w.update("s_oib", feb29(23, 30), items=[("si_oib", "seat_eur", 3)])
    w.update("s_oib", mar1(0, 20), items=[("si_oib", "seat_eur", 2)])
    # a window of 23:10 and 23:50, before the move
    customer(w, "c_before_window")
    w.subscribe("s_bw", "c_before_window", [("si_bw", "seat_eur", 2)], T0)
    w.update("s_bw", feb29(23, 10), items=[("si_bw", "seat_eur", 3)])
    w.update("s_bw", feb29(23, 50), items=[("si_bw", "seat_eur", 4)])
    # runs of five changes 40 minutes apart: a core seat each time, or (from 23:30) a core and an add-on seat in turn
    for name, start in RUNS.items():
        cid, sid, si, sa = f"c_run_{name}", f"s_run_{name}", f"si_run_{name}", f"sa_run_{name}"
        customer(w, cid)
        held = {si: 1, sa: 1} if name == "2330" else {si: 1}
        w.subscribe(sid, cid, [(i, "seat_eur" if i == si else "addon_eur", n) for i, n in held.items()], T0)
        for k in range(5):
            held[sa if name == "2330" and k % 2 else si] += 1
            w.update(sid, start + 40 * MIN * k,
                     items=[(i, "seat_eur" if i == si else "addon_eur", n) for i, n in held.items()])
    # a plan switch straddling the move: 3 core seats canceled at 23:50, 3 pro seats from 00:10
    customer(w, "c_switch")
    w.subscribe("s_sw_a", "c_switch", [("si_sw_a", "seat_eur", 3)], T0)
    w.cancel("s_sw_a", feb29(23, 50))
    w.subscribe("s_sw_b", "c_switch", [("si_sw_b", "pro_eur", 3)], mar1(0, 10))
    # the same, the new plan first (23:50) and the old one canceled after the move (00:10)
    customer(w, "c_switch_overlap")
    w.subscribe("s_so_a", "c_switch_overlap", [("si_so_a", "seat_eur", 3)], T0)
    w.subscribe("s_so_b", "c_switch_overlap", [("si_so_b", "pro_eur", 3)], feb29(23, 50))
    w.cancel("s_so_a", mar1(0, 10))
    # a signup of two subscriptions straddling the move (23:50 and 00:10), and a churn of two (the same times)
    customer(w, "c_gain")
    w.subscribe("s_g1", "c_gain", [("si_g1", "seat_eur", 2)], feb29(23, 50))
    w.subscribe("s_g2", "c_gain", [("sa_g2", "addon_eur", 1)], mar1(0, 10))
    customer(w, "c_loss")
    w.subscribe("s_l1", "c_loss", [("si_l1", "seat_eur", 2)], T0)
    w.subscribe("s_l2", "c_loss", [("sa_l2", "addon_eur", 1)], T0)
    w.cancel("s_l1", feb29(23, 50))
    w.cancel("s_l2", mar1(0, 10))
    # cancellations at the move and ten minutes after it
    for cid, at in (("c_cancel_at", M), ("c_cancel_after", mar1(0, 10))):
        customer(w, cid)
        w.subscribe(f"s_{cid}", cid, [(f"si_{cid}", "seat_eur", 3)], T0)
        w.cancel(f"s_{cid}", at)
    # a comeback ten minutes after the move
    customer(w, "c_back")
    w.subscribe("s_back1", "c_back", [("si_back1", "seat_eur", 2)], T0)
    w.cancel("s_back1", ts(2024, 2, 10))
    w.subscribe("s_back2", "c_back", [("si_back2", "seat_eur", 3)], mar1(0, 10))
    # euros and pounds
    customer(w, "c_two_currencies")
    w.subscribe("s_2e", "c_two_currencies", [("si_2e", "seat_eur", 3)], T0)
    w.objects["customers"]["c_two_currencies"]["currency"] = "gbp"
    w.subscribe("s_2g", "c_two_currencies", [("sa_2g", "addon_gbp", 2)], ts(2024, 1, 2))
    w.objects["customers"]["c_two_currencies"]["currency"] = "eur"
    w.update("s_2e", MAY + 30 * MIN, items=[("si_2e", "seat_eur", 4)])
    # daily rates: a seat at 00:05 on each day of a rate
    customer(w, "c_daily", "chf")
    w.subscribe("s_daily", "c_daily", [("si_daily", "seat_chf", 2)], T0)
    for k, (day, _) in enumerate(CHF_DAYS):
        w.update("s_daily", day + 5 * MIN, items=[("si_daily", "seat_chf", 3 + k)])
    return w


@pytest.fixture(scope="module")
def hour(module_stores: Callable[[], duckdb.DuckDBPyConnection]) -> duckdb.DuckDBPyConnection:
    """Every case of the 60-minute window, one account, derived once."""
    con = module_stores()
    hour_world().load(con, seen_at=SEEN)
    recompute(con, make_settings())
    return con


def seat_rows(name: str, offset: int) -> tuple[list[Row], list[Row], dict[dt.date, tuple[Decimal, ...]]]:
    """The hand answer for a seat added to 2 x 10.00 EUR at ``offset`` seconds from the move (rows, levels,
    bridge)."""
    item, t = f"si_{name}", M + offset
    new = (T0, "new", "new", D(0), D("21.60"), D("21.60"), "eur", D(20), item)
    if offset < 0:  # the seat at 1.08 then; the move on 3 seats
        return ([new, (t, "seat_expansion", "expansion", D("21.60"), D("32.40"), D("10.80"), "eur", D(10), item),
                 fx(M, "32.40", "33.00", "eur", item)],
                [(T0, t, D("21.60")), (t, M, D("32.40")), (M, None, D(33))],
                {FEB: line("21.60", "32.40", exp="10.80"), MAR: line("32.40", "33.00", fxl="0.60")})
    if offset == 0:  # one instant: the move on the 2 seats held, then the seat at 1.10
        return ([new, (M, "fx", "fx", D("21.60"), D(33), D("0.40"), "eur", D(0), item),
                 (M, "seat_expansion", "expansion", D("21.60"), D(33), D(11), "eur", D(10), item)],
                [(T0, M, D("21.60")), (M, None, D(33))],
                {FEB: line("21.60", "21.60"), MAR: line("21.60", "33.00", exp="11.00", fxl="0.40")})
    return ([new, fx(M, "21.60", "22.00", "eur", item),
             (t, "seat_expansion", "expansion", D(22), D(33), D(11), "eur", D(10), item)],
            [(T0, M, D("21.60")), (M, t, D(22)), (t, None, D(33))],
            {FEB: line("21.60", "21.60"), MAR: line("21.60", "33.00", exp="11.00", fxl="0.40")})


@pytest.mark.parametrize("name", list(OFFSETS))
def test_a_seat_added_near_the_move(hour: duckdb.DuckDBPyConnection, name: str) -> None:
    """2 seats x 10.00 EUR from 1 January (21.60 at 1.08), a third seat added near the euro's move to 1.10 at 1 March
    00:00. The move joins no window, so the seat is dated when it was made and valued at the rate in force then:
    - an hour before (23:00; under the old rule the move, exactly 60 minutes later, joined the seat's window) and one
      second before (23:59:59): seat_expansion 10 x 1.08 = +10.80 (21.60 -> 32.40) then, fx 30 x 0.02 = +0.60 at
      00:00 (33.00). February: expansion 10.80, closing 32.40; March: fx +0.60, closing 33.00.
    - at 00:00 exactly (the rate moves first): one instant, one transition 21.60 -> 33.00: fx on the 20 EUR held
      +0.40 and seat_expansion 10 x 1.10 = +11.00.
    - 60 minutes after (under the old rule it joined the move's window, dated 00:00) and 61 minutes after: fx +0.40
      at 00:00 (21.60 -> 22.00), seat_expansion +11.00 at 01:00 or 01:01 (33.00).
    Either way after: March expansion 11.00, fx +0.40, 21.60 -> 33.00."""
    want, want_levels, want_lines = seat_rows(name, OFFSETS[name])
    cid = f"c_{name}"
    expect(hour, cid, want)
    assert levels(hour, cid) == want_levels
    got = lines(hour, cid)
    assert {m: got[m] for m in want_lines} == want_lines


@pytest.mark.parametrize("name", list(TWO_ITEMS))
def test_two_items_changed_across_the_move_are_one_transition_with_its_fx_part(hour: duckdb.DuckDBPyConnection,
                                                                               name: str) -> None:
    """Core 2 x 10.00 EUR and an add-on 1 x 5.00 EUR (25 EUR, 27.00 at 1.08). A core seat at 23:30 on 29 February and
    an add-on seat at 00:20 on 1 March: 50 minutes apart, one window, and the move at 00:00 falls between its first
    and last change: one transition dated 23:30, 27.00 -> 40 EUR x 1.10 = 44.00 (+17.00). Each change at the rate
    when it was made: the core seat 10 x 1.08 = +10.80, the add-on seat 5 x 1.10 = +5.50; fx on what was held at
    00:00 (3 core seats and 1 add-on, 35 EUR) x 0.02 = +0.70, on the largest item of B (core, 33.00). The same with
    the core seat at 23:20 and the add-on seat at 00:00 exactly, the move at the window's last change (the rate
    moves first: the add-on seat at 1.10, the move on the 35 EUR held before it), dated 23:20. February: opening
    27.00, expansion 16.30, fx +0.70, closing 44.00; March: nothing moves."""
    t = TWO_ITEMS[name][0]
    si, sa = f"si_{name}", f"sa_{name}"
    expect(hour, f"c_{name}", [
        (T0, "new", "new", D(0), D(27), D(27), "eur", D(25), si),
        (t, "fx", "fx", D(27), D(44), D("0.70"), "eur", D(0), si),
        (t, "seat_expansion", "expansion", D(27), D(44), D("10.80"), "eur", D(10), si),
        (t, "seat_expansion", "expansion", D(27), D(44), D("5.50"), "eur", D(5), sa),
    ])
    assert levels(hour, f"c_{name}") == [(T0, t, D(27)), (t, None, D(44))]
    got = lines(hour, f"c_{name}")
    assert (got[FEB], got[MAR]) == (line("27", "44", exp="16.30", fxl="0.70"), line("44", "44"))


def test_one_item_changed_twice_across_the_move_is_netted_and_valued_at_its_last_changes_rate(
        hour: duckdb.DuckDBPyConnection) -> None:
    """design.md 5 nets the changes of one window, and an item's changes net to one change from its A row to its B
    row: valued at the rate of its last change (its B row's start), the fx part on what it held before the window
    (README "Exchange rates"; the sandbox's truth reads it so: an item not yet as in B when the rate moved is valued
    at the rate after the move). 2 seats x 10.00 EUR (21.60), a third seat at 23:30 on 29 February and a fourth at
    00:20 on 1 March: one window (50 minutes) with the move inside, one transition dated 23:30, 21.60 -> 40 EUR x
    1.10 = 44.00 (+22.40): the item's net +2 seats at 1.10 = +22.00 (20 EUR), fx on its 2 seats of A, 20 x 0.02 =
    +0.40. February: expansion 22.00, fx +0.40, closing 44.00.

    Valuing each seat at its own rate instead (10.80 + 11.00, fx on the 3 seats held at 00:00, +0.60) would give the
    next case, a seat added at 23:30 and taken away at 00:20, a seat_contraction of -0.20 for no seat: a rate's swing
    disguised as a contraction, which design.md 4 forbids. (The same two changes on two items,
    test_two_items_changed_across_the_move..., are two items' changes, each at its own rate.)"""
    expect(hour, "c_one_item", [
        (T0, "new", "new", D(0), D("21.60"), D("21.60"), "eur", D(20), "si_oi"),
        (feb29(23, 30), "fx", "fx", D("21.60"), D(44), D("0.40"), "eur", D(0), "si_oi"),
        (feb29(23, 30), "seat_expansion", "expansion", D("21.60"), D(44), D("22.00"), "eur", D(20), "si_oi"),
    ])
    assert lines(hour, "c_one_item")[FEB] == line("21.60", "44", exp="22.00", fxl="0.40")


def test_a_seat_added_and_taken_away_across_the_move_nets_to_the_rates_move_alone(
        hour: duckdb.DuckDBPyConnection) -> None:
    """2 seats x 10.00 EUR (21.60), a third seat at 23:30 on 29 February, taken away at 00:20 on 1 March: one window
    across the move whose changes net to nothing on the item; what is left is the rate's move on the 2 seats, 21.60 ->
    22.00: one fx row of +0.40 dated at the window's start (the move lies inside it), no seat row. February: fx +0.40,
    closing 22.00."""
    expect(hour, "c_one_item_back", [
        (T0, "new", "new", D(0), D("21.60"), D("21.60"), "eur", D(20), "si_oib"),
        (feb29(23, 30), "fx", "fx", D("21.60"), D(22), D("0.40"), "eur", D(0), "si_oib"),
    ])
    assert levels(hour, "c_one_item_back") == [(T0, feb29(23, 30), D("21.60")), (feb29(23, 30), None, D(22))]
    assert lines(hour, "c_one_item_back")[FEB] == line("21.60", "22", fxl="0.40")


def test_a_window_that_ends_before_the_move_leaves_the_move_a_row_of_its_own(hour: duckdb.DuckDBPyConnection
                                                                            ) -> None:
    """2 seats x 10.00 EUR (21.60); a seat at 23:10 and another at 23:50 on 29 February: one window, 23:10 to 23:50.
    The move at 00:00 lies within 60 minutes of the window's first change but after its last: it joins nothing.
    seat_expansion 20 x 1.08 = +21.60 at 23:10 (43.20); fx on the 4 seats, 40 x 0.02 = +0.80 at 00:00 (44.00).
    February: expansion 21.60, closing 43.20; March: fx +0.80, closing 44.00."""
    expect(hour, "c_before_window", [
        (T0, "new", "new", D(0), D("21.60"), D("21.60"), "eur", D(20), "si_bw"),
        (feb29(23, 10), "seat_expansion", "expansion", D("21.60"), D("43.20"), D("21.60"), "eur", D(20), "si_bw"),
        fx(M, "43.20", "44.00", "eur", "si_bw"),
    ])
    assert levels(hour, "c_before_window") == [(T0, feb29(23, 10), D("21.60")), (feb29(23, 10), M, D("43.20")),
                                               (M, None, D(44))]
    got = lines(hour, "c_before_window")
    assert (got[FEB], got[MAR]) == (line("21.60", "43.20", exp="21.60"), line("43.20", "44", fxl="0.80"))


def run_answer(name: str) -> tuple[list[Row], list[Row], dict[dt.date, tuple[Decimal, ...]]]:
    start = RUNS[name]
    t = [start + 40 * MIN * k for k in range(5)]
    si, sa = f"si_run_{name}", f"sa_run_{name}"

    def seat(at: int, before: str, after: str, delta: str, eur: int, item: str = si) -> Row:
        return (at, "seat_expansion", "expansion", D(before), D(after), D(delta), "eur", D(eur), item)

    if name == "2240":
        # windows 22:40-23:20, 00:00-00:40 (the move at its first change), 01:20
        return ([(T0, "new", "new", D(0), D("10.80"), D("10.80"), "eur", D(10), si),
                 seat(t[0], "10.80", "32.40", "21.60", 20),
                 (M, "fx", "fx", D("32.40"), D(55), D("0.60"), "eur", D(0), si),
                 seat(M, "32.40", "55", "22", 20), seat(t[4], "55", "66", "11", 10)],
                [(T0, t[0], D("10.80")), (t[0], M, D("32.40")), (M, t[4], D(55)), (t[4], None, D(66))],
                {FEB: line("10.80", "32.40", exp="21.60"), MAR: line("32.40", "66", exp="33", fxl="0.60")})
    if name == "2250":
        # windows 22:50-23:30, 00:10-00:50, 01:30: the move between two windows
        return ([(T0, "new", "new", D(0), D("10.80"), D("10.80"), "eur", D(10), si),
                 seat(t[0], "10.80", "32.40", "21.60", 20), fx(M, "32.40", "33", "eur", si),
                 seat(t[2], "33", "55", "22", 20), seat(t[4], "55", "66", "11", 10)],
                [(T0, t[0], D("10.80")), (t[0], M, D("32.40")), (M, t[2], D(33)), (t[2], t[4], D(55)),
                 (t[4], None, D(66))],
                {FEB: line("10.80", "32.40", exp="21.60"), MAR: line("32.40", "66", exp="33", fxl="0.60")})
    # windows 23:30-00:10 (the move inside), 00:50-01:30, 02:10; the changes alternate core, add-on, core, ...
    return ([(T0, "new", "new", D(0), D("16.20"), D("16.20"), "eur", D(15), si),
             (t[0], "fx", "fx", D("16.20"), D(33), D("0.50"), "eur", D(0), si),
             seat(t[0], "16.20", "33", "10.80", 10), seat(t[0], "16.20", "33", "5.50", 5, sa),
             seat(t[2], "33", "49.50", "11", 10), seat(t[2], "33", "49.50", "5.50", 5, sa),
             seat(t[4], "49.50", "60.50", "11", 10)],
            [(T0, t[0], D("16.20")), (t[0], t[2], D(33)), (t[2], t[4], D("49.50")), (t[4], None, D("60.50"))],
            {FEB: line("16.20", "33", exp="16.30", fxl="0.50"), MAR: line("33", "60.50", exp="27.50")})


@pytest.mark.parametrize("name", list(RUNS))
def test_a_run_of_changes_every_forty_minutes_across_the_move(hour: duckdb.DuckDBPyConnection, name: str) -> None:
    """Five changes 40 minutes apart: a run longer than the window is split into anchored windows (a change joins
    the window when within 60 minutes of its first change): changes at k = 0..4 give windows {0, 1}, {2, 3}, {4}.
    Which window holds the move at 00:00:
    - from 22:40 (one seat each, 1 -> 6 seats of 10.00 EUR): 22:40-23:20 at 1.08, +21.60 (10.80 -> 32.40); the
      window 00:00-00:40 begins with a change at the move's instant: the move on the 3 seats held (+0.60) and 2
      seats at 1.10 (+22.00), 32.40 -> 55.00, dated 00:00; 01:20: +11.00 (66.00).
    - from 22:50: 22:50-23:30 +21.60 (32.40); the move between windows, its own row: +0.60 at 00:00 (33.00);
      00:10-00:50 +22.00 (55.00); 01:30 +11.00 (66.00).
    - from 23:30, a core seat (10.00 EUR) and an add-on seat (5.00 EUR) in turn, from 1 + 1 (15 EUR, 16.20): the move
      inside 23:30-00:10: the core seat of 23:30 at 1.08 (+10.80), the add-on seat of 00:10 at 1.10 (+5.50), fx on
      the 25 EUR held at 00:00 (+0.50): 16.20 -> 33.00, dated 23:30, fx on the core item (22.00 against 11.00 in B);
      00:50-01:30 +11.00 and +5.50 (49.50); 02:10 +11.00 (60.50).
    Bridges: 22:40 and 22:50, February expansion 21.60 (closing 32.40), March expansion 33.00 and fx +0.60 (66.00);
    23:30, February expansion 16.30 and fx +0.50 (33.00), March expansion 27.50 (60.50)."""
    want, want_levels, want_lines = run_answer(name)
    cid = f"c_run_{name}"
    expect(hour, cid, want)
    assert levels(hour, cid) == want_levels
    got = lines(hour, cid)
    assert {m: got[m] for m in want_lines} == want_lines


def test_a_plan_switch_straddling_the_move(hour: duckdb.DuckDBPyConnection) -> None:
    """design.md 5 (cancel plan X, subscribe to plan Y within the window: one change) with README (a plan switch is
    made when its new plan begins; fx on what was held when the rate moved): 3 core seats x 10.00 EUR (32.40)
    canceled at 23:50 on 29 February, 3 pro seats x 20.00 EUR from 00:10: one transition dated 23:50, 32.40 -> 60 x
    1.10 = 66.00 (+33.60). The old plan is held until the new one begins: fx 30 x 0.02 = +0.60; upgrade at 1.10,
    (60 - 30) x 1.10 = +33.00 (30 EUR), both on the pro item. February: expansion 33.00 (all upgrade), fx +0.60,
    closing 66.00."""
    t = feb29(23, 50)
    expect(hour, "c_switch", [
        (T0, "new", "new", D(0), D("32.40"), D("32.40"), "eur", D(30), "si_sw_a"),
        (t, "fx", "fx", D("32.40"), D(66), D("0.60"), "eur", D(0), "si_sw_b"),
        (t, "upgrade", "expansion", D("32.40"), D(66), D(33), "eur", D(30), "si_sw_b"),
    ])
    assert levels(hour, "c_switch") == [(T0, t, D("32.40")), (t, None, D(66))]
    assert lines(hour, "c_switch")[FEB] == line("32.40", "66", exp="33", fxl="0.60")
    feb = next(r for r in queries.bridge(hour, "month", "metadata.case", segment_value="c_switch")
           if r["period_start"] == FEB)
    assert (feb["upgrade"], feb["seat_expansion"]) == (33, 0)


def test_a_plan_switch_whose_new_plan_begins_before_the_move(hour: duckdb.DuckDBPyConnection) -> None:
    """3 core seats x 10.00 EUR (32.40); 3 pro seats x 20.00 EUR subscribed at 23:50 on 29 February, the core
    subscription canceled at 00:10: one window with the move inside, 32.40 -> 60 x 1.10 = 66.00 (+33.60), dated
    23:50. README: a plan switch is made when its new plan begins, here before the move: upgrade (60 - 30) x 1.08 =
    +32.40 (30 EUR), and what was held when the rate moved is the new plan: fx 60 x 0.02 = +1.20. February:
    expansion 32.40, fx +1.20, closing 66.00."""
    t = feb29(23, 50)
    expect(hour, "c_switch_overlap", [
        (T0, "new", "new", D(0), D("32.40"), D("32.40"), "eur", D(30), "si_so_a"),
        (t, "fx", "fx", D("32.40"), D(66), D("1.20"), "eur", D(0), "si_so_b"),
        (t, "upgrade", "expansion", D("32.40"), D(66), D("32.40"), "eur", D(30), "si_so_b"),
    ])
    assert lines(hour, "c_switch_overlap")[FEB] == line("32.40", "66", exp="32.40", fxl="1.20")


def test_a_signup_and_a_churn_of_two_subscriptions_straddling_the_move(hour: duckdb.DuckDBPyConnection) -> None:
    """design.md 5: new and cancellation take the whole customer delta, so a move inside their window leaves no fx
    row. c_gain subscribes 2 core seats (20 EUR) at 23:50 and an add-on (5 EUR) at 00:10: one `new` dated 23:50 of
    M(B) = 25 x 1.10 = 27.50, on the core item; February's bridge: new 27.50, closing 27.50; March: nothing. c_loss
    (the same 25 EUR, 27.00 at 1.08) cancels the core subscription at 23:50 and the add-on one at 00:10: one
    `cancellation` of M(A) = -27.00 (-25 EUR) dated 23:50, on the core item; February: churn 27.00, closing 0."""
    t = feb29(23, 50)
    expect(hour, "c_gain", [(t, "new", "new", D(0), D("27.50"), D("27.50"), "eur", D(25), "si_g1")])
    assert lines(hour, "c_gain")[FEB] == line("0", "27.50", new="27.50")
    assert lines(hour, "c_gain")[MAR] == line("27.50", "27.50")
    expect(hour, "c_loss", [(T0, "new", "new", D(0), D(27), D(27), "eur", D(25), "si_l1"),
                            (t, "cancellation", "churn", D(27), D(0), D(-27), "eur", D(-25), "si_l1")])
    assert lines(hour, "c_loss")[FEB] == line("27", "0", churn="27")
    assert customer_mrr_at(hour, "c_loss", t - 1) == 27 and customer_mrr_at(hour, "c_loss", mar1(1)) == 0


def test_a_cancellation_at_the_move_and_ten_minutes_after(hour: duckdb.DuckDBPyConnection) -> None:
    """3 seats x 10.00 EUR (32.40). Ended ten minutes after the move (README: a cancellation after the move is fx at
    midnight and the whole MRR at the new rate): fx +0.60 at 00:00 (33.00), cancellation -33.00 (-30 EUR) at 00:10;
    March: opening 32.40, fx +0.60, churn 33.00, closing 0. Ended at 00:00 exactly: the change and the move are one
    instant, one transition 32.40 -> 0, and a cancellation takes that whole delta (design.md 5): -32.40 (-30 EUR),
    no fx row; March: churn 32.40, fx 0. (So test_fx_hunt's cancellation at the move holds too. Read with "the rate
    moves before a change made then" as two steps, it would be fx +0.60 and a cancellation of -33.00 at 00:00; design.md
    does not say which, and one instant has one customer_mrr level.)"""
    expect(hour, "c_cancel_after", [
        (T0, "new", "new", D(0), D("32.40"), D("32.40"), "eur", D(30), "si_c_cancel_after"),
        fx(M, "32.40", "33", "eur", "si_c_cancel_after"),
        (mar1(0, 10), "cancellation", "churn", D(33), D(0), D(-33), "eur", D(-30), "si_c_cancel_after"),
    ])
    assert lines(hour, "c_cancel_after")[MAR] == line("32.40", "0", churn="33", fxl="0.60")
    expect(hour, "c_cancel_at", [
        (T0, "new", "new", D(0), D("32.40"), D("32.40"), "eur", D(30), "si_c_cancel_at"),
        (M, "cancellation", "churn", D("32.40"), D(0), D("-32.40"), "eur", D(-30), "si_c_cancel_at"),
    ])
    assert lines(hour, "c_cancel_at")[MAR] == line("32.40", "0", churn="32.40")


def test_a_comeback_ten_minutes_after_the_move(hour: duckdb.DuckDBPyConnection) -> None:
    """2 seats x 10.00 EUR (21.60) canceled on 10 February; nothing held when the rate moves at 00:00, so no fx row
    and no level; back with 3 seats at 00:10: reactivation 30 x 1.10 = +33.00 (30 EUR). February: churn 21.60,
    closing 0; March: opening 0, reactivation 33.00, fx 0, closing 33.00."""
    expect(hour, "c_back", [
        (T0, "new", "new", D(0), D("21.60"), D("21.60"), "eur", D(20), "si_back1"),
        (ts(2024, 2, 10), "cancellation", "churn", D("21.60"), D(0), D("-21.60"), "eur", D(-20), "si_back1"),
        (mar1(0, 10), "reactivation", "reactivation", D(0), D(33), D(33), "eur", D(30), "si_back2"),
    ])
    got = lines(hour, "c_back")
    assert (got[FEB], got[MAR]) == (line("21.60", "0", churn="21.60"), line("0", "33", react="33"))


def test_a_customer_billed_in_euros_and_pounds_when_both_rates_move_and_when_one_does(
        hour: duckdb.DuckDBPyConnection) -> None:
    """3 core seats x 10.00 EUR from 1 January (32.40) and, from 2 January, 2 add-on seats x 10.00 GBP (cross_sell
    20 x 1.25 = +25.00; 57.40). 1 March 00:00, both move: eur 30 x 0.02 = +0.60, gbp 20 x 0.05 = +1.00: one fx
    transition of +1.60 (57.40 -> 59.00), one row (step 64: the rates' moves are one fx part; NOTES 2026-12-06: on
    B's largest item when its currency moved), on the euro item (33.00 against 26.00). 1 May 00:00, only the pound
    moves to 1.28: fx 20 x -0.02 = -0.40 (58.60), on the pound item (the largest item's currency did not move); a euro
    seat at 00:30 is dated then, at the euro's 1.10: +11.00 (69.60). Bridges: March fx +1.60 (59.00); April flat;
    May expansion 11.00, fx -0.40 (69.60)."""
    expect(hour, "c_two_currencies", [
        (T0, "new", "new", D(0), D("32.40"), D("32.40"), "eur", D(30), "si_2e"),
        (ts(2024, 1, 2), "cross_sell", "expansion", D("32.40"), D("57.40"), D(25), "gbp", D(20), "sa_2g"),
        fx(M, "57.40", "59.00", "eur", "si_2e"),
        fx(MAY, "59.00", "58.60", "gbp", "sa_2g"),
        (MAY + 30 * MIN, "seat_expansion", "expansion", D("58.60"), D("69.60"), D(11), "eur", D(10), "si_2e"),
    ])
    got = lines(hour, "c_two_currencies")
    assert (got[MAR], got[APR], got[dt.date(2024, 5, 1)]) == (
        line("57.40", "59", fxl="1.60"), line("59", "59"), line("59", "69.60", exp="11", fxl="-0.40"))


def test_daily_rates_with_a_change_five_minutes_after_each_move(hour: duckdb.DuckDBPyConnection) -> None:
    """2 seats x 10.00 CHF from 1 January at 1.10 (22.00); the franc moves every day from 4 to 10 March (1.11 ...
    1.17, +0.01 a day), and a seat is added at 00:05 each of those days. Each day: an fx row at 00:00 on the n seats
    held, n x 10 x 0.01, then the seat at 00:05 at that day's rate, 10 x rate (under the old rule both dated 00:00):
    4th +0.20 (22.20), +11.10 (33.30); 5th +0.30 (33.60), +11.20 (44.80); 6th +0.40 (45.20), +11.30 (56.50); 7th
    +0.50 (57.00), +11.40 (68.40); 8th +0.60 (69.00), +11.50 (80.50); 9th +0.70 (81.20), +11.60 (92.80); 10th +0.80
    (93.60), +11.70 (105.30 = 90 CHF x 1.17). March: opening 22.00, expansion 79.80, fx +3.50, closing 105.30."""
    want = [(T0, "new", "new", D(0), D(22), D(22), "chf", D(20), "si_daily")]
    held = D(22)
    for k, (day, rate) in enumerate(CHF_DAYS):
        seats = 2 + k
        moved = held + D(seats) * 10 * D("0.01")
        want.append(fx(day, str(held), str(moved), "chf", "si_daily"))
        held = moved + 10 * D(str(round(rate, 2)))
        want.append((day + 5 * MIN, "seat_expansion", "expansion", moved, held, held - moved, "chf", D(10),
                     "si_daily"))
    assert held == D("105.30")
    expect(hour, "c_daily", want)
    assert len(levels(hour, "c_daily")) == 15
    assert lines(hour, "c_daily")[MAR] == line("22", "105.30", exp="79.80", fxl="3.50")


def test_the_whole_accounts_bridge_adds_up_and_is_the_sum_of_the_cases(hour: duckdb.DuckDBPyConnection) -> None:
    """design.md 6 for the account of every case above: the identity in every month, per currency and per case,
    the cases' closings adding up to the account's; and March's fx line by hand, the sum of the cases' fx dated in
    March: 2 x 0.60 (the seats before the move) + 3 x 0.40 (at and after it) + 0.80 (the window before it) + 0.60 +
    0.60 (runs from 22:40 and 22:50) + 0.60 (the cancellation after it) + 1.60 (euros and pounds) + 3.50 (daily) =
    10.10. The fx of the windows opened on 29 February (two items, one item, the run from 23:30, the switch) is
    February's, however the one-item case splits it."""
    assert assert_bridge_adds_up(hour, "rate window hunt", ["month"], [None, "currency", "metadata.case"]) > 0
    mar = next(r for r in queries.bridge(hour, "month") if r["period_start"] == MAR)
    assert mar["fx"] == D("10.10")


# --- store 2: a one-day movement window -------------------------------------------------------------------------------

def day_world() -> World:
    w = catalogue(World(account_id="acct_day"))
    customer(w, "d_inside")
    w.subscribe("s_di", "d_inside", [("si_di", "seat_eur", 2), ("sa_di", "addon_eur", 1)], T0)
    w.update("s_di", feb29(12), items=[("si_di", "seat_eur", 3), ("sa_di", "addon_eur", 1)])
    w.update("s_di", mar1(10), items=[("si_di", "seat_eur", 3), ("sa_di", "addon_eur", 2)])
    w.update("s_di", ts(2024, 3, 2, 11), items=[("si_di", "seat_eur", 4), ("sa_di", "addon_eur", 2)])
    customer(w, "d_before")
    w.subscribe("s_db", "d_before", [("si_db", "seat_eur", 2)], T0)
    w.update("s_db", feb29(1), items=[("si_db", "seat_eur", 3)])
    w.update("s_db", mar1(3), items=[("si_db", "seat_eur", 4)])
    customer(w, "d_switch")
    w.subscribe("s_ds_a", "d_switch", [("si_ds_a", "seat_eur", 3)], T0)
    w.cancel("s_ds_a", feb29(20))
    w.subscribe("s_ds_b", "d_switch", [("si_ds_b", "pro_eur", 3)], mar1(6))
    customer(w, "d_two_moves", "chf")
    w.subscribe("s_d2", "d_two_moves", [("si_d2", "seat_chf", 2), ("sa_d2", "addon_chf", 1)], T0)
    w.update("s_d2", ts(2024, 3, 4), items=[("si_d2", "seat_chf", 3), ("sa_d2", "addon_chf", 1)])
    w.update("s_d2", ts(2024, 3, 5), items=[("si_d2", "seat_chf", 3), ("sa_d2", "addon_chf", 2)])
    customer(w, "d_failed")
    w.subscribe("s_df", "d_failed", [("si_df", "seat_eur", 2), ("sa_df", "addon_eur", 1)], T0)
    w.update("s_df", feb29(12), items=[("si_df", "seat_eur", 3), ("sa_df", "addon_eur", 1)])
    w.update("s_df", mar1(6), status="past_due")
    w.update("s_df", mar1(8), items=[("si_df", "seat_eur", 3), ("sa_df", "addon_eur", 2)])
    return w


@pytest.fixture(scope="module")
def day(module_stores: Callable[[], duckdb.DuckDBPyConnection]) -> duckdb.DuckDBPyConnection:
    """The cases of a one-day window (movement_window_minutes = 1440), one account, derived once."""
    con = module_stores()
    day_world().load(con, seen_at=SEEN)
    recompute(con, make_settings(movement_window_minutes=1440))
    return con


def test_a_day_long_window_nets_changes_on_each_side_of_the_move(day: duckdb.DuckDBPyConnection) -> None:
    """movement_window 1440 minutes. Core 2 x 10.00 EUR and an add-on 1 x 5.00 EUR (27.00). A core seat at 12:00 on
    29 February, an add-on seat at 10:00 on 1 March (22 hours later: one window, the move at 00:00 inside it), a core
    seat at 11:00 on 2 March (47 hours after the window's first change: a window of its own). First transition dated
    12:00 on 29 February, 27.00 -> 40 EUR x 1.10 = 44.00: the core seat at 1.08 (+10.80), the add-on seat at 1.10
    (+5.50), fx on the 35 EUR held at 00:00 (+0.70), all February's; then +11.00 on 2 March (55.00). February:
    expansion 16.30, fx +0.70, closing 44.00; March: expansion 11.00, fx 0, closing 55.00."""
    t = feb29(12)
    expect(day, "d_inside", [
        (T0, "new", "new", D(0), D(27), D(27), "eur", D(25), "si_di"),
        (t, "fx", "fx", D(27), D(44), D("0.70"), "eur", D(0), "si_di"),
        (t, "seat_expansion", "expansion", D(27), D(44), D("10.80"), "eur", D(10), "si_di"),
        (t, "seat_expansion", "expansion", D(27), D(44), D("5.50"), "eur", D(5), "sa_di"),
        (ts(2024, 3, 2, 11), "seat_expansion", "expansion", D(44), D(55), D(11), "eur", D(10), "si_di"),
    ])
    got = lines(day, "d_inside")
    assert (got[FEB], got[MAR]) == (line("27", "44", exp="16.30", fxl="0.70"), line("44", "55", exp="11"))


def test_a_payment_failing_after_the_move_is_no_change_of_the_item(day: duckdb.DuckDBPyConnection) -> None:
    """movement_window 1440 minutes; README "Exchange rates" (an item's change is valued at the rate of its last
    change) and "Metric definitions" (a payment failing is no change). Core 2 x 10.00 EUR and an add-on 1 x 5.00 EUR
    (27.00); a core seat at 12:00 on 29 February, the move at 00:00, the subscription's payment failing at 06:00 on 1
    March (active to past_due, which counts: each item gets a row there) and an add-on seat at 08:00: one window
    dated 12:00, 27.00 -> 40 EUR x 1.10 = 44.00. The core seat was added before the move: +10.80 at 1.08; the add-on
    seat +5.50 at 1.10; fx on the 35 EUR held at 00:00, +0.70 (as without the failure, d_inside). (The core item's
    row that begins at the failure was read as its change: its seat at 1.10, +11.00, fx +0.50.)"""
    # (d_inside's rows up to its window, on this customer's items: the failure changes none of them)
    items = {"si_di": "si_df", "sa_di": "sa_df"}
    expect(day, "d_failed", [(*r[:8], items[r[8]]) for r in rows(day, "d_inside") if r[0] <= feb29(12)])
    assert lines(day, "d_failed")[FEB] == line("27", "44", exp="16.30", fxl="0.70")


def test_a_day_long_window_whose_last_change_is_before_the_move(day: duckdb.DuckDBPyConnection) -> None:
    """movement_window 1440 minutes. 2 seats x 10.00 EUR (21.60), a seat at 01:00 on 29 February (+10.80, 32.40) and
    another at 03:00 on 1 March, 26 hours later (a window of its own). The first window could reach to 01:00 on 1
    March, but its only change is before the move: the move is its own row, fx 30 x 0.02 = +0.60 at 00:00 (33.00);
    the seat of 03:00 at 1.10, +11.00 (44.00). February: expansion 10.80 (32.40); March: expansion 11.00, fx +0.60
    (44.00)."""
    expect(day, "d_before", [
        (T0, "new", "new", D(0), D("21.60"), D("21.60"), "eur", D(20), "si_db"),
        (feb29(1), "seat_expansion", "expansion", D("21.60"), D("32.40"), D("10.80"), "eur", D(10), "si_db"),
        fx(M, "32.40", "33", "eur", "si_db"),
        (mar1(3), "seat_expansion", "expansion", D(33), D(44), D(11), "eur", D(10), "si_db"),
    ])
    got = lines(day, "d_before")
    assert (got[FEB], got[MAR]) == (line("21.60", "32.40", exp="10.80"), line("32.40", "44", exp="11", fxl="0.60"))


def test_a_day_long_window_nets_a_cancellation_and_a_new_plan_ten_hours_apart(day: duckdb.DuckDBPyConnection
                                                                             ) -> None:
    """movement_window 1440 minutes: 3 core seats x 10.00 EUR (32.40) canceled at 20:00 on 29 February, 3 pro seats
    x 20.00 EUR from 06:00 on 1 March (10 hours later): one plan switch dated 20:00, 32.40 -> 66.00; the old plan
    held until the new one begins takes the move, fx 30 x 0.02 = +0.60; upgrade (60 - 30) x 1.10 = +33.00 (30 EUR);
    no churn, no reactivation. February: expansion 33.00, fx +0.60, closing 66.00."""
    t = feb29(20)
    expect(day, "d_switch", [
        (T0, "new", "new", D(0), D("32.40"), D("32.40"), "eur", D(30), "si_ds_a"),
        (t, "fx", "fx", D("32.40"), D(66), D("0.60"), "eur", D(0), "si_ds_b"),
        (t, "upgrade", "expansion", D("32.40"), D(66), D(33), "eur", D(30), "si_ds_b"),
    ])
    assert lines(day, "d_switch")[FEB] == line("32.40", "66", exp="33", fxl="0.60")


def test_a_day_long_window_from_one_move_to_the_next(day: duckdb.DuckDBPyConnection) -> None:
    """movement_window 1440 minutes, daily franc rates. Core 2 x 10.00 CHF and an add-on 1 x 5.00 CHF (25 CHF, 27.50
    at 1.10). A core seat at 00:00 on 4 March and an add-on seat at 00:00 on 5 March: exactly a window apart, so one
    window (a change exactly the window after the first still joins), and both moves are at its changes. In
    sequence, each rate moving before the change made then: 4 March, fx on 25 CHF x 0.01 = +0.25, the core seat 10 x
    1.11 = +11.10; 5 March, fx on 35 CHF x 0.01 = +0.35, the add-on seat 5 x 1.12 = +5.60. One transition dated 4
    March 00:00, 27.50 -> 40 CHF x 1.12 = 44.80: fx +0.60 (on the core item, 33.60 in B), seat_expansion +11.10 and
    +5.60. Then a row per day on 40 CHF: +0.40 on each of 6 to 10 March (46.80 = 40 x 1.17). March: opening 27.50,
    expansion 16.70, fx +2.60, closing 46.80."""
    t = ts(2024, 3, 4)
    want = [(T0, "new", "new", D(0), D("27.50"), D("27.50"), "chf", D(25), "si_d2"),
            (t, "fx", "fx", D("27.50"), D("44.80"), D("0.60"), "chf", D(0), "si_d2"),
            (t, "seat_expansion", "expansion", D("27.50"), D("44.80"), D("11.10"), "chf", D(10), "si_d2"),
            (t, "seat_expansion", "expansion", D("27.50"), D("44.80"), D("5.60"), "chf", D(5), "sa_d2")]
    held = D("44.80")
    for day_ in range(6, 11):
        want.append(fx(ts(2024, 3, day_), str(held), str(held + D("0.40")), "chf", "si_d2"))
        held += D("0.40")
    expect(day, "d_two_moves", want)
    assert lines(day, "d_two_moves")[MAR] == line("27.50", "46.80", exp="16.70", fxl="2.60")


# --- store 3: derived in full, then again for the customers a later sync touched -------------------------------------

FIRST = mar1(0, 5)  # the first sync, five minutes after the euro moved to 1.10
LATER = ts(2024, 3, 20)  # the later one
LATER_RATE = ("2024-03-15", "eur", 1.12)


def incremental_worlds() -> tuple[World, World]:
    """Before (synced at 00:05 on 1 March, the euro's rates known up to 1 March's 1.10) and what the later sync
    brings (a new subscription, an add-on seat, a pro seat, and the euro's rate of 15 March)."""
    w = catalogue(World(account_id="acct_inc"))
    w.fx_rates = [("2023-12-01", "eur", 1.08), ("2024-03-01", "eur", 1.10)]
    customer(w, "i_switch")
    w.subscribe("s_is1", "i_switch", [("si_is1", "seat_eur", 2)], T0)
    w.cancel("s_is1", feb29(23, 50))
    customer(w, "i_seat")
    w.subscribe("s_it", "i_seat", [("si_it", "seat_eur", 2), ("sa_it", "addon_eur", 1)], T0)
    w.update("s_it", feb29(23, 50), items=[("si_it", "seat_eur", 3), ("sa_it", "addon_eur", 1)])
    customer(w, "i_usd", "usd")
    w.subscribe("s_iu", "i_usd", [("si_iu", "seat_usd", 5)], T0)
    before = copy.deepcopy(w)
    w.subscribe("s_is2", "i_switch", [("si_is2", "pro_eur", 2)], mar1(0, 10))
    w.update("s_is2", mar1(12), items=[("si_is2", "pro_eur", 3)])
    w.update("s_it", mar1(0, 30), items=[("si_it", "seat_eur", 3), ("sa_it", "addon_eur", 2)])
    changed = later_sync(w, {"i_switch", "i_seat"}, {"s_is1", "s_is2", "s_it"}, FIRST)
    changed.fx_rates = [LATER_RATE]
    return before, changed


@pytest.fixture(scope="module")
def incremental(module_stores: Callable[[], duckdb.DuckDBPyConnection]
                ) -> Iterator[dict[str, Any]]:
    """``first``: the first full recompute's rows of i_switch and i_seat; ``con``: the store derived again incrementally;
    ``touched``: how many customers that derived; ``same``: whether every derived table and view equals a fresh full
    recompute of the same data."""
    before, changed = incremental_worlds()
    con = module_stores()
    before.load(con, seen_at=FIRST)
    recompute(con, make_settings())
    first = [rows(con, "i_switch"), rows(con, "i_seat")]
    changed.load(con, seen_at=LATER)
    touched = recompute_changed(con, make_settings(), dt.datetime.fromtimestamp(LATER, tz=dt.UTC), shards=1)
    full = module_stores()
    before.load(full, seen_at=FIRST)
    changed.load(full, seen_at=LATER)
    recompute(full, make_settings())
    got, want = derived_contents(con), derived_contents(full)
    yield {"first": first, "con": con, "touched": touched,
           "differ": sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))}


def test_the_incremental_recompute_equals_the_full_one(incremental: dict[str, Any]) -> None:
    """The later sync touches two customers (i_switch, i_seat; i_usd not), the only ones billed in euros, so the
    euro's later rate concerns only them: those are derived again, and every derived table and view equals a fresh
    full recompute of the same objects and rates."""
    assert incremental["touched"] == 2
    assert incremental["differ"] == []


def test_the_first_recompute_by_hand(incremental: dict[str, Any]) -> None:
    """Synced at 00:05 on 1 March. i_switch: 2 seats x 10.00 EUR (21.60) canceled at 23:50: a cancellation of -21.60,
    as far as anyone knows then, and no fx (nothing held at 00:00). i_seat: core 2 x 10.00 EUR and an add-on 1 x 5.00
    EUR (27.00), a core seat at 23:50 (+10.80, 37.80), the move at 00:00 after that window's only change: fx on 35
    EUR x 0.02 = +0.70 (38.50)."""
    assert incremental["first"] == [
        [(T0, "new", "new", D(0), D("21.60"), D("21.60"), "eur", D(20), "si_is1"),
         (feb29(23, 50), "cancellation", "churn", D("21.60"), D(0), D("-21.60"), "eur", D(-20), "si_is1")],
        [(T0, "new", "new", D(0), D(27), D(27), "eur", D(25), "si_it"),
         (feb29(23, 50), "seat_expansion", "expansion", D(27), D("37.80"), D("10.80"), "eur", D(10), "si_it"),
         fx(M, "37.80", "38.50", "eur", "si_it")],
    ]


def test_the_incremental_recompute_by_hand(incremental: dict[str, Any]) -> None:
    """The later sync brings 2 pro seats x 20.00 EUR for i_switch from 00:10 on 1 March and a third at 12:00, an
    add-on seat for i_seat at 00:30, and the euro's 1.12 from 15 March. i_switch: the cancellation of 23:50 and the
    new plan of 00:10 are one window now, the move inside it: a plan switch dated 23:50, 21.60 -> 40 x 1.10 = 44.00,
    fx on the old plan held until 00:10, 20 x 0.02 = +0.40, upgrade (40 - 20) x 1.10 = +22.00 (20 EUR); a pro seat
    at 12:00, 20 x 1.10 = +22.00 (66.00); 15 March fx 60 x 0.02 = +1.20 (67.20). February: expansion 22.00, fx +0.40,
    closing 44.00 (no churn any more); March: expansion 22.00, fx +1.20, closing 67.20. i_seat: the add-on seat of
    00:30 joins the window of 23:50, and the move at 00:00 is inside it now (its row of the first recompute is
    gone): one transition dated 23:50, 27.00 -> 40 x 1.10 = 44.00, the core seat at 1.08 (+10.80), the add-on seat at
    1.10 (+5.50), fx on the 35 EUR held at 00:00 (+0.70); 15 March fx 40 x 0.02 = +0.80 (44.80). February: expansion
    16.30, fx +0.70, closing 44.00; March: fx +0.80, closing 44.80. i_usd: new 50.00, nothing else."""
    con = incremental["con"]
    t = feb29(23, 50)
    mid = ts(2024, 3, 15)
    expect(con, "i_switch", [
        (T0, "new", "new", D(0), D("21.60"), D("21.60"), "eur", D(20), "si_is1"),
        (t, "fx", "fx", D("21.60"), D(44), D("0.40"), "eur", D(0), "si_is2"),
        (t, "upgrade", "expansion", D("21.60"), D(44), D(22), "eur", D(20), "si_is2"),
        (mar1(12), "seat_expansion", "expansion", D(44), D(66), D(22), "eur", D(20), "si_is2"),
        fx(mid, "66", "67.20", "eur", "si_is2"),
    ])
    got = lines(con, "i_switch")
    assert (got[FEB], got[MAR]) == (line("21.60", "44", exp="22", fxl="0.40"),
                                    line("44", "67.20", exp="22", fxl="1.20"))
    expect(con, "i_seat", [
        (T0, "new", "new", D(0), D(27), D(27), "eur", D(25), "si_it"),
        (t, "fx", "fx", D(27), D(44), D("0.70"), "eur", D(0), "si_it"),
        (t, "seat_expansion", "expansion", D(27), D(44), D("10.80"), "eur", D(10), "si_it"),
        (t, "seat_expansion", "expansion", D(27), D(44), D("5.50"), "eur", D(5), "sa_it"),
        fx(mid, "44", "44.80", "eur", "si_it"),
    ])
    got = lines(con, "i_seat")
    assert (got[FEB], got[MAR]) == (line("27", "44", exp="16.30", fxl="0.70"), line("44", "44.80", fxl="0.80"))
    expect(con, "i_usd", [(T0, "new", "new", D(0), D(50), D(50), "usd", D(50), "si_iu")])
