"""Currencies and exchange rates, against answers worked out by hand from design.md 4-7 and the README ("Exchange
rates", "Metric definitions") before running ours: a euro customer across three rate moves; levels that round and a
rate that repeats or moves by less than the rounding; rates given weekly; a seat, a family or a discount changed
twenty minutes from a rate move or at its very moment (and a seat that offsets the move exactly); metered usage
billed when the rate moves; a signup twenty minutes before a rate move; cancellations after and at a rate move; a comeback
in another currency; trials through a move and before a currency's first rate; a plan switch across currencies
when both rates move; a customer billed in euros and dollars; zero- and three-decimal currencies; prices billed
through currency options or without an amount in the subscription's currency; an amount off in euros; a rate
missing inside the history; the bridge (lines, rates, currency segments, weeks), churn reasons and cohorts of
months with rate moves; reporting in euros, and in yen with rates above a hundred.

Each case checks customer_mrr levels and mrr_movements rows (time, movement, category, mrr_before, mrr_after,
mrr_delta in the reporting currency, currency, amount_delta_original in that currency, item). The cases that share
one list of rates are accounts of one store (conftest.OneStore); the bridge, the missing rate and the other
reporting currencies have stores of their own.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import duckdb
import pytest
from builders import DAY, World, ts
from conftest import OneStore, customer_mrr_at
from test_bridge import assert_bridge_adds_up
from test_classifier import MINUTE, check_invariants
from test_views_corners import COUNTS, MONEY
from test_views_corners import RATES as RATE_COLS

from stripe_churn.errors import DataError
from stripe_churn.metrics import queries
from stripe_churn.metrics.runner import recompute
from stripe_churn.settings import Settings

Derive = Callable[..., duckdb.DuckDBPyConnection]
D = Decimal
T0 = ts(2024, 1, 1)
SEEN = ts(2024, 4, 10)
FEB, MAR, APR = ts(2024, 2, 1), ts(2024, 3, 1), ts(2024, 4, 1)

# Units of USD for one unit of each currency, in force from the date until the currency's next row (README).
RATES = [
    ("2023-12-01", "eur", 1.08), ("2024-02-01", "eur", 1.10), ("2024-03-01", "eur", 1.05), ("2024-04-01", "eur", 1.12),
    ("2023-12-01", "gbp", 1.25), ("2024-03-01", "gbp", 1.30),
    ("2023-12-01", "jpy", 0.0067), ("2024-03-01", "jpy", 0.0070),
    ("2023-12-01", "kwd", 3.25), ("2024-03-01", "kwd", 3.30),
    # weekly, from Monday 1 January 2024 on
    ("2024-01-01", "chf", 1.10), ("2024-01-08", "chf", 1.12), ("2024-01-15", "chf", 1.15), ("2024-01-22", "chf", 1.13),
    # a row that repeats the rate, one that moves it by less than a ten-thousandth of a customer's MRR, one that moves
    ("2023-12-01", "sek", 0.095), ("2024-02-01", "sek", 0.095), ("2024-03-01", "sek", 0.09500004),
    ("2024-04-01", "sek", 0.0951),
    # a currency whose rates begin on 10 February
    ("2024-02-10", "pln", 0.25),
]

# The tests marked @one_store are each an account of one store, derived once (conftest.OneStore): their queries see
# their own account's rows alone.
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()

Row = tuple[Any, ...]


def catalogue(w: World) -> World:
    """Seats of family core in several currencies, an add-on family, a metered api family, the shared rates."""
    w.product("prod_seat", unit_label="seat", family="core")
    w.product("prod_addon", unit_label="seat", family="addon")
    w.product("prod_api", unit_label="api call", family="api")
    w.price("seat_usd", "prod_seat", 1_000)
    w.price("seat_eur", "prod_seat", 1_000, currency="eur")
    w.price("seat_gbp", "prod_seat", 5_000, currency="gbp")
    w.price("seat_jpy", "prod_seat", 1_000, currency="jpy")  # 1,000 yen, a zero-decimal currency
    w.price("seat_kwd", "prod_seat", 5_250, currency="kwd")  # 5.250 dinars, a three-decimal currency
    w.price("seat_chf", "prod_seat", 5_000, currency="chf")
    w.price("plan_sek", "prod_seat", 100_000, currency="sek")
    w.price("annual_eur", "prod_seat", 100_000, currency="eur", interval="year")
    w.price("annual_jpy", "prod_addon", 12_000, currency="jpy", interval="year")
    w.price("addon_eur", "prod_addon", 1_000, currency="eur")
    w.price("metered_eur", "prod_api", None, currency="eur", usage_type="metered")
    w.price("quarterly_gbp", "prod_seat", 10_000, currency="gbp", interval_count=3)
    w.price("seat_pln", "prod_seat", 4_000, currency="pln")
    w.fx_rates = list(RATES)
    return w


def rows(con: duckdb.DuckDBPyConnection, customer: str) -> list[Row]:
    """(unix time, movement, category, mrr_before, mrr_after, mrr_delta, currency, amount_delta_original, item)."""
    got = con.execute(
        "SELECT CAST(epoch(occurred_at) AS BIGINT), movement, category, mrr_before, mrr_after, mrr_delta, currency, "
        "amount_delta_original, subscription_item_id FROM mrr_movements WHERE customer_id = ? "
        "ORDER BY occurred_at, movement, subscription_item_id", [customer]).fetchall()
    return [tuple(r) for r in got]


def levels(con: duckdb.DuckDBPyConnection, customer: str) -> list[Row]:
    """customer_mrr as (valid_from, valid_to or None, mrr), unix seconds."""
    got = con.execute(
        "SELECT CAST(epoch(valid_from) AS BIGINT), CAST(epoch(valid_to) AS BIGINT), mrr FROM customer_mrr "
        "WHERE customer_id = ? ORDER BY valid_from", [customer]).fetchall()
    return [tuple(r) for r in got]


def expect(con: duckdb.DuckDBPyConnection, customer: str, want: list[Row]) -> None:
    got = rows(con, customer)
    want = sorted(want, key=lambda r: (r[0], r[1], r[8]))
    assert got == want, ("movements differ:\n  got      " + "\n           ".join(map(str, got))
                         + "\n  expected " + "\n           ".join(map(str, want)))
    check_invariants(con, customer)


def fx(at: int, before: str, after: str, currency: str, item: str) -> Row:
    """An fx row: nothing moves in the customer's own currency."""
    return (at, "fx", "fx", D(before), D(after), D(after) - D(before), currency, D(0), item)


# --- one currency, only the rate moves ------------------------------------------------------------------------------

@one_store
def test_a_euro_customer_with_no_change_across_three_rate_moves(world: World, derive: Derive) -> None:
    """design.md 4 (every amount converted with fx_rates; rate swings are their own `fx` line) and 5 (`fx`, category
    fx): 3 seats x 10.00 EUR = 30 EUR from 1 January. At 1.08: 32.40; 1 February 1.10: 33.00 (+0.60); 1 March 1.05:
    31.50 (-1.50); 1 April 1.12: 33.60 (+2.10). Each fx row at 00:00 UTC of its rate's day, in EUR 0 (the euro amount
    never moved); customer_mrr one level per rate."""
    w = catalogue(world)
    w.customer("c", currency="eur")
    w.subscribe("s", "c", [("si", "seat_eur", 3)], T0)
    con = derive(w, seen_at=SEEN)
    expect(con, "c", [
        (T0, "new", "new", D(0), D("32.40"), D("32.40"), "eur", D(30), "si"),
        fx(FEB, "32.40", "33.00", "eur", "si"),
        fx(MAR, "33.00", "31.50", "eur", "si"),
        fx(APR, "31.50", "33.60", "eur", "si"),
    ])
    assert levels(con, "c") == [(T0, FEB, D("32.40")), (FEB, MAR, D("33.00")), (MAR, APR, D("31.50")),
                                (APR, None, D("33.60"))]
    # (the level just before and at each move)
    assert [customer_mrr_at(con, "c", t) for t in (FEB - 1, FEB, MAR - 1, MAR, APR - 1, APR)] == [
        D("32.40"), D("33.00"), D("33.00"), D("31.50"), D("31.50"), D("33.60")]


@one_store
def test_levels_round_once_and_a_move_that_rounds_away_is_no_movement(world: World, derive: Derive) -> None:
    """design.md 4 (money DECIMAL(18,4); month x 1 / interval_count), 5 (a transition whose MRR does not change
    produces no row) and 7 (customer_mrr: one row per level). c_sek: 1,000.00 SEK a month at 0.095 = 95.00; the row
    of 1 February repeats 0.095 and that of 1 March (0.09500004) makes 95.00004, still 95.0000: neither is a movement
    nor a new level; 1 April at 0.0951: fx +0.10. c_gbp: 100.00 GBP every 3 months is 33.3333... GBP a month: 41.6667
    at 1.25 (41.66666...), 43.3333 at 1.30 from 1 March (43.33333...); the fx row is the levels' difference, +1.6666
    (README: the rows add up to the customer's change exactly), not the rounded swing 33.3333... x 0.05 = 1.6667."""
    w = catalogue(world)
    w.customer("c_sek", currency="sek")
    w.subscribe("s_sek", "c_sek", [("si_sek", "plan_sek", 1)], T0)
    w.customer("c_gbp", currency="gbp")
    w.subscribe("s_gbp", "c_gbp", [("si_gbp", "quarterly_gbp", 1)], T0)
    con = derive(w, seen_at=SEEN)
    expect(con, "c_sek", [(T0, "new", "new", D(0), D(95), D(95), "sek", D(1000), "si_sek"),
                          fx(APR, "95.00", "95.10", "sek", "si_sek")])
    assert levels(con, "c_sek") == [(T0, APR, D("95.0000")), (APR, None, D("95.1000"))]
    expect(con, "c_gbp", [(T0, "new", "new", D(0), D("41.6667"), D("41.6667"), "gbp", D("33.3333"), "si_gbp"),
                          fx(MAR, "41.6667", "43.3333", "gbp", "si_gbp")])


@one_store
def test_rates_given_weekly_value_each_day_at_the_latest_on_or_before_it(world: World, derive: Derive) -> None:
    """README: a rate is in force from its date until the currency's next row. CHF rates every Monday (1.10, 1.12
    from the 8th, 1.15 from the 15th, 1.13 from the 22nd). 2 seats x 50.00 CHF from Wednesday 10 January 12:00: at the
    8th's 1.12, 112.00 (not 1.10, not the 15th's). 15 January: fx 100 x 0.03 = +3.00 (115.00). A third seat on 20
    January 10:00 at 1.15: seat_expansion +57.50 (50.0000 CHF), 172.50. 22 January: fx 150 x -0.02 = -3.00, 169.50;
    after that the 22nd's rate stays in force (no more rows)."""
    w = catalogue(world)
    w.customer("c", currency="chf")
    start, seat = ts(2024, 1, 10, 12), ts(2024, 1, 20, 10)
    w.subscribe("s", "c", [("si", "seat_chf", 2)], start)
    w.update("s", seat, items=[("si", "seat_chf", 3)])
    con = derive(w, seen_at=SEEN)
    expect(con, "c", [
        (start, "new", "new", D(0), D(112), D(112), "chf", D(100), "si"),
        fx(ts(2024, 1, 15), "112", "115", "chf", "si"),
        (seat, "seat_expansion", "expansion", D(115), D("172.50"), D("57.50"), "chf", D(50), "si"),
        fx(ts(2024, 1, 22), "172.50", "169.50", "chf", "si"),
    ])
    assert customer_mrr_at(con, "c", SEEN) == D("169.5000")


# --- a change and a rate move together --------------------------------------------------------------------------------

@one_store
def test_a_seat_removed_twenty_minutes_before_the_rate_falls(world: World, derive: Derive) -> None:
    """README "Exchange rates" (a rate's move is no change of the customer's: it joins no movement window; fx is the
    rate's move on what the customer held when the rate moved): 4 seats x 10.00 EUR, 44.00 at 1.10 in February. One
    seat removed at 23:40 on 29 February, the euro falling to 1.05 at 00:00: seat_contraction -10 EUR x 1.10 = -11.00
    at 23:40 (44.00 -> 33.00, February's), then fx 30 EUR x (1.05 - 1.10) = -1.50 at 00:00 (33.00 -> 31.50,
    March's). (Before, the move joined the seat's window: both rows dated 23:40.)"""
    w = catalogue(world)
    w.customer("c", currency="eur")
    w.subscribe("s", "c", [("si", "seat_eur", 4)], T0)
    t = MAR - 20 * MINUTE
    w.update("s", t, items=[("si", "seat_eur", 3)])
    con = derive(w, seen_at=SEEN)
    expect(con, "c", [
        (T0, "new", "new", D(0), D("43.20"), D("43.20"), "eur", D(40), "si"),
        fx(FEB, "43.20", "44.00", "eur", "si"),
        (t, "seat_contraction", "contraction", D(44), D(33), D(-11), "eur", D(-10), "si"),
        fx(MAR, "33.00", "31.50", "eur", "si"),
        fx(APR, "31.50", "33.60", "eur", "si"),
    ])
    assert levels(con, "c") == [(T0, FEB, D("43.20")), (FEB, t, D(44)), (t, MAR, D(33)), (MAR, APR, D("31.50")),
                                (APR, None, D("33.60"))]


@one_store
def test_a_seat_added_at_the_moment_the_rate_moves(world: World, derive: Derive) -> None:
    """docs/internals.md: a rate moves at 00:00 UTC, before a change made then; README: fx is the move on what was
    held, the rows rounded at 4 with the remainder on the largest part. c1: an annual 1,000.00 EUR seat (83.3333...
    EUR a month) at 1.08 = 90.0000; a second seat at 1 February 00:00, when the euro moves to 1.10: 166.6666... EUR
    = 183.3333 (+93.3333). fx on the seat held: 83.3333... x 0.02 = 1.66666... -> 1.6667; the new seat at the new
    rate: 83.3333... x 1.10 = 91.66666... -> 91.6667; rounded they add to 93.3334, so the remainder (-0.0001) goes to
    the largest part: seat_expansion 91.6666. Then 1 March 175.0000 (fx -8.3333), 1 April 186.6667 (fx +11.6667).
    c2 (design.md 5: a transition whose MRR does not change produces no row; README: offsetting parts are rows only
    when the customer's MRR changed): 21 seats x 10.00 EUR, 231.00 from 1 February; a 22nd seat at 1 March 00:00 as
    the euro falls to 1.05: 220 x 1.05 = 231.00 again (the seat +10.50 and the swing -10.50 offset): no row, no new
    level. 1 April: fx 220 x 0.07 = +15.40."""
    w = catalogue(world)
    w.customer("c1", currency="eur")
    w.subscribe("s1", "c1", [("si1", "annual_eur", 1)], T0)
    w.update("s1", FEB, items=[("si1", "annual_eur", 2)])
    w.customer("c2", currency="eur")
    w.subscribe("s2", "c2", [("si2", "seat_eur", 21)], T0)
    w.update("s2", MAR, items=[("si2", "seat_eur", 22)])
    con = derive(w, seen_at=SEEN)
    expect(con, "c1", [
        (T0, "new", "new", D(0), D(90), D(90), "eur", D("83.3333"), "si1"),
        (FEB, "fx", "fx", D(90), D("183.3333"), D("1.6667"), "eur", D(0), "si1"),
        (FEB, "seat_expansion", "expansion", D(90), D("183.3333"), D("91.6666"), "eur", D("83.3333"), "si1"),
        fx(MAR, "183.3333", "175", "eur", "si1"),
        fx(APR, "175", "186.6667", "eur", "si1"),
    ])
    expect(con, "c2", [(T0, "new", "new", D(0), D("226.80"), D("226.80"), "eur", D(210), "si2"),
                       fx(FEB, "226.80", "231.00", "eur", "si2"),
                       fx(APR, "231.00", "246.40", "eur", "si2")])
    assert levels(con, "c2") == [(T0, FEB, D("226.80")), (FEB, APR, D(231)), (APR, None, D("246.40"))]


@one_store
def test_usage_billed_at_the_moment_the_rate_moves(world: World, derive: Derive) -> None:
    """design.md 4 (metered: the last full period's usage, from its invoice) with the rate moving at the same
    instant: 2 seats x 10.00 EUR and a metered item, 21.60 at 1.08. The renewal of 1 February 00:00 bills 30.00 EUR
    of January's usage as the euro moves to 1.10: resource_expansion 30 x 1.10 = +33.00 (the usage at the rate in
    force), fx on the 20 EUR held = +0.40: 55.00. 1 March: usage 45.00 EUR and 1.05: resource_expansion 15 x 1.05 =
    +15.75, fx 50 x -0.05 = -2.50: 68.25. 1 April: usage unchanged (no movement of its own), 1.12: fx 65 x 0.07 =
    +4.55, 72.80."""
    w = catalogue(world)
    w.customer("c", currency="eur")
    w.subscribe("s", "c", [("si_c", "seat_eur", 2), ("si_m", "metered_eur", None)], T0)
    w.cycle("s", FEB, usage={"si_m": 3_000})
    w.cycle("s", MAR, usage={"si_m": 4_500})
    w.cycle("s", APR, usage={"si_m": 4_500})
    con = derive(w, seen_at=SEEN)
    expect(con, "c", [
        (T0, "new", "new", D(0), D("21.60"), D("21.60"), "eur", D(20), "si_c"),
        (FEB, "resource_expansion", "expansion", D("21.60"), D(55), D(33), "eur", D(30), "si_m"),
        (FEB, "fx", "fx", D("21.60"), D(55), D("0.40"), "eur", D(0), "si_m"),
        (MAR, "resource_expansion", "expansion", D(55), D("68.25"), D("15.75"), "eur", D(15), "si_m"),
        (MAR, "fx", "fx", D(55), D("68.25"), D("-2.50"), "eur", D(0), "si_m"),
        fx(APR, "68.25", "72.80", "eur", "si_m"),
    ])


@one_store
def test_a_signup_twenty_minutes_before_a_rate_move_is_new_at_the_rate_then(world: World, derive: Derive) -> None:
    """design.md 5: `new` takes the whole customer delta, dated at the window's first change; a rate's move joins no
    window (README "Exchange rates"). c1 subscribes 3 seats x 10.00 EUR at 23:40 on 29 February: `new` of 30 x 1.10
    = 33.00 then; the euro moves from 1.10 to 1.05 at 00:00: fx -1.50 (31.50). c2 subscribes at 1 March 00:00
    exactly: `new` 31.50 at the new rate, no fx. Both move with April's 1.12: +2.10. (Before, the move joined c1's
    window: one `new` of 31.50 dated 23:40, so that February's flows came to 31.50 and its closing to 33.00.)"""
    w = catalogue(world)
    t1 = MAR - 20 * MINUTE
    for cid, at in (("c1", t1), ("c2", MAR)):
        w.customer(cid, currency="eur")
        w.subscribe(f"s_{cid}", cid, [(f"si_{cid}", "seat_eur", 3)], at)
    con = derive(w, seen_at=SEEN)
    expect(con, "c1", [(t1, "new", "new", D(0), D(33), D(33), "eur", D(30), "si_c1"),
                       fx(MAR, "33", "31.50", "eur", "si_c1"),
                       fx(APR, "31.50", "33.60", "eur", "si_c1")])
    expect(con, "c2", [(MAR, "new", "new", D(0), D("31.50"), D("31.50"), "eur", D(30), "si_c2"),
                       fx(APR, "31.50", "33.60", "eur", "si_c2")])


@one_store
def test_a_switch_from_euros_to_pounds_over_a_midnight_when_both_rates_move(world: World, derive: Derive) -> None:
    """README ("Metric definitions": a switch across currencies is valued at the rates of the day the new plan begins,
    amount_delta_original in the new plan's currency with the old plan counted at those rates; "Exchange rates": a
    plan switch is made when its new plan begins, fx the move on what was held when the rate moved): 3 seats x 10.00
    EUR (33.00 at 1.10 in February), canceled at 23:50 on 29 February; 3 seats x 50.00 GBP from 1 March 00:10. At
    00:00 the euro falls to 1.05 and the pound rises to 1.30. The euro plan was held through the move: fx 30 x -0.05
    = -1.50. The switch at 1 March's rates: old plan 30 EUR x 1.05 = 31.50, new 150 GBP x 1.30 = 195.00, same seats:
    upgrade +163.50; in pounds 150 - 31.50 / 1.30 = 125.7692. 33.00 -> 195.00 (+162.00), dated 23:50. April's euro
    move is nothing to it."""
    w = catalogue(world)
    w.customer("c", currency="eur")
    w.subscribe("s_eur", "c", [("si_e", "seat_eur", 3)], T0)
    t = MAR - 10 * MINUTE
    w.cancel("s_eur", t)
    w.objects["customers"]["c"]["currency"] = "gbp"
    w.subscribe("s_gbp", "c", [("si_g", "seat_gbp", 3)], t + 20 * MINUTE)
    con = derive(w, seen_at=SEEN)
    got = rows(con, "c")
    assert got[:2] == [(T0, "new", "new", D(0), D("32.40"), D("32.40"), "eur", D(30), "si_e"),
                       fx(FEB, "32.40", "33.00", "eur", "si_e")]
    assert [r[:6] + r[7:8] for r in got[2:]] == [
        (t, "fx", "fx", D(33), D(195), D("-1.50"), D(0)),
        (t, "upgrade", "expansion", D(33), D(195), D("163.50"), D("125.7692"))]
    assert got[3][6] == "gbp" and got[3][8] == "si_g"
    check_invariants(con, "c")
    assert levels(con, "c") == [(T0, FEB, D("32.40")), (FEB, t, D(33)), (t, None, D(195))]


@pytest.mark.parametrize("minutes", [-20, 20], ids=["before", "after"])
@one_store
def test_a_family_dropped_twenty_minutes_from_a_rate_move(world: World, derive: Derive, minutes: int) -> None:
    """design.md 5 (an item of a family removed while the customer stays: `downgrade`) with README's rules for rates
    (a rate's move joins no movement window; the change at the rate in force when it was made; fx the move on what
    was held when the rate moved): core 3 x 10.00 EUR and an add-on 2 x 10.00 EUR, 55.00 at 1.10 in February; the
    add-on removed 20 minutes before or after the euro falls to 1.05 on 1 March. Before (23:40): downgrade -20 x
    1.10 = -22.00 then, fx on the 30 EUR held = -1.50 at 00:00. After (00:20): fx on the 50 EUR held = -2.50 at
    00:00, downgrade -20 x 1.05 = -21.00 at 00:20. Either way 55.00 -> 31.50, then +2.10 in April."""
    w = catalogue(world)
    w.customer("c", currency="eur")
    w.subscribe("s", "c", [("si_c", "seat_eur", 3), ("si_a", "addon_eur", 2)], T0)
    w.update("s", MAR + minutes * MINUTE, items=[("si_c", "seat_eur", 3)])
    con = derive(w, seen_at=SEEN)
    t = MAR + minutes * MINUTE
    if minutes < 0:
        march = [(t, "downgrade", "contraction", D(55), D(33), D(-22), "eur", D(-20), "si_a"),
                 fx(MAR, "33", "31.50", "eur", "si_c")]
    else:
        march = [fx(MAR, "55", "52.50", "eur", "si_c"),
                 (t, "downgrade", "contraction", D("52.50"), D("31.50"), D(-21), "eur", D(-20), "si_a")]
    got = rows(con, "c")
    assert got[0][:6] == (T0, "new", "new", D(0), D(54), D(54))
    assert got[1:] == [fx(FEB, "54", "55", "eur", "si_c"), *march, fx(APR, "31.50", "33.60", "eur", "si_c")]
    check_invariants(con, "c")


@one_store
def test_a_discount_that_ends_twenty_minutes_after_the_rate_moves(world: World, derive: Derive) -> None:
    """design.md 4 (a discount ending is a movement dated at its end) and README (the change at the rate in force when
    it was made; fx the move on what was held): 3 seats x 10.00 EUR with 30% off for two months from 1 January
    00:20: 21 EUR, 22.68 at 1.08; 1 February fx +0.42 (23.10). The discount ends on 1 March 00:20, 20 minutes after
    the euro falls to 1.05: fx on the 21 EUR held = -1.05 at 00:00 (23.10 -> 22.05; a rate's move joins no movement
    window), discount +9 EUR x 1.05 = +9.45 (9.0000 EUR) at 00:20 (31.50). 1 April fx +2.10 (33.60)."""
    w = catalogue(world)
    w.customer("c", currency="eur")
    w.coupon("c30", percent_off=30, duration="repeating", duration_in_months=2)
    start = T0 + 20 * MINUTE
    d = w.discount("c30", start, customer="c", subscription="s")
    w.subscribe("s", "c", [("si", "seat_eur", 3)], start, discounts=[d["id"]])
    con = derive(w, seen_at=SEEN)
    expect(con, "c", [
        (start, "new", "new", D(0), D("22.68"), D("22.68"), "eur", D(21), "si"),
        fx(FEB, "22.68", "23.10", "eur", "si"),
        fx(MAR, "23.10", "22.05", "eur", "si"),
        (MAR + 20 * MINUTE, "discount", "expansion", D("22.05"), D("31.50"), D("9.45"), "eur", D(9), "si"),
        fx(APR, "31.50", "33.60", "eur", "si"),
    ])


# --- churn and comebacks ------------------------------------------------------------------------------------------------

@one_store
def test_cancellations_at_period_end_after_and_at_a_rate_move(world: World, derive: Derive) -> None:
    """design.md 4 (a cancellation counts at `ended_at`, so cancel_at_period_end churns at period end), 5 (a
    cancellation takes the whole customer delta, M(A) -> 0) and 7 (amount_delta_original in `currency`). c_gbp: 2
    seats x 50.00 GBP from 15 January, 125.00 at 1.25; asked to cancel on 10 February, it ends on 15 March; the pound
    moved to 1.30 on 1 March (fx +5.00, 130.00). The cancellation takes what the customer had when it ended: -130.00
    USD, -100.0000 GBP, voluntary, with its feedback. c_eur: 3 seats x 10.00 EUR from 1 January (33.00 at 1.10 in
    February), asked to cancel on 10 February, ends at its period's end, 1 March 00:00, the very moment the euro
    falls to 1.05: one transition from M(A) = 33.00 to 0, one `cancellation` of -33.00 (-30.0000 EUR), no fx row.
    (README's "valued at the rate in force when it was made" read with a rate moving before a change made then would
    give fx -1.50 and a cancellation of -31.50 instead; test_rules_hunt's
    test_a_cancellation_twenty_minutes_after_a_rate_change checks the same of a cancellation
    20 minutes after the move.)"""
    w = catalogue(world)
    w.customer("c_gbp", currency="gbp")
    start, end = ts(2024, 1, 15), ts(2024, 3, 15)
    w.subscribe("s_gbp", "c_gbp", [("si_g", "seat_gbp", 2)], start)
    w.cancel("s_gbp", ts(2024, 2, 10), ended_at=end, feedback="too_expensive")
    w.customer("c_eur", currency="eur")
    w.subscribe("s_eur", "c_eur", [("si_e", "seat_eur", 3)], T0)
    w.cancel("s_eur", ts(2024, 2, 10), ended_at=MAR)
    con = derive(w, seen_at=SEEN)
    expect(con, "c_gbp", [
        (start, "new", "new", D(0), D(125), D(125), "gbp", D(100), "si_g"),
        fx(MAR, "125", "130", "gbp", "si_g"),
        (end, "cancellation", "churn", D(130), D(0), D(-130), "gbp", D(-100), "si_g"),
    ])
    assert con.execute("SELECT churn_type, cancellation_feedback FROM mrr_movements WHERE movement = 'cancellation' "
                       "AND customer_id = 'c_gbp'").fetchall() == [("voluntary", "too_expensive")]
    assert customer_mrr_at(con, "c_gbp", end - 1) == D(130) and customer_mrr_at(con, "c_gbp", end) == 0
    expect(con, "c_eur", [
        (T0, "new", "new", D(0), D("32.40"), D("32.40"), "eur", D(30), "si_e"),
        fx(FEB, "32.40", "33.00", "eur", "si_e"),
        (MAR, "cancellation", "churn", D(33), D(0), D(-33), "eur", D(-30), "si_e"),
    ])


@one_store
def test_a_customer_back_in_another_currency_after_the_rate_moved(world: World, derive: Derive) -> None:
    """design.md 5 (reactivation: M(A) = 0, M(B) > 0, had MRR before; whole delta) and 4: 3 seats x 10.00 EUR (32.40,
    33.00 from 1 February), canceled on 10 February: -33.00 USD, -30.0000 EUR. While it has nothing, the euro moves
    (1 March, 1 April): no fx row. Back on 10 March in pounds, 2 seats x 50.00 GBP at 1.30: reactivation +130.00,
    100.0000 GBP. The euro's April move touches it no more (it holds no euros)."""
    w = catalogue(world)
    w.customer("c", currency="eur")
    w.subscribe("s_eur", "c", [("si_e", "seat_eur", 3)], T0)
    gone, back = ts(2024, 2, 10), ts(2024, 3, 10)
    w.cancel("s_eur", gone)
    w.objects["customers"]["c"]["currency"] = "gbp"
    w.subscribe("s_gbp", "c", [("si_g", "seat_gbp", 2)], back)
    con = derive(w, seen_at=SEEN)
    expect(con, "c", [
        (T0, "new", "new", D(0), D("32.40"), D("32.40"), "eur", D(30), "si_e"),
        fx(FEB, "32.40", "33.00", "eur", "si_e"),
        (gone, "cancellation", "churn", D(33), D(0), D(-33), "eur", D(-30), "si_e"),
        (back, "reactivation", "reactivation", D(0), D(130), D(130), "gbp", D(100), "si_g"),
    ])
    assert levels(con, "c") == [(T0, FEB, D("32.40")), (FEB, gone, D(33)), (gone, back, D(0)), (back, None, D(130))]


@one_store
def test_trials_through_a_rate_move_and_before_a_currencys_first_rate(world: World, derive: Derive) -> None:
    """design.md 4 (trialing counts zero; a missing rate is an error for an amount to convert, never a silent zero).
    c_eur: a trial of 3 seats x 10.00 EUR from 20 January to 20 February holds no money when the euro moves on 1
    February, so no fx row; it converts at the rate then, 1.10: `new` +33.00; 1 March fx -1.50; 1 April fx +2.10.
    c_pln: PLN rates begin on 10 February; a trial of 3 seats x 40.00 PLN from 20 January converts on 20 February,
    120 PLN at 0.25 = 30.00: `new` +30.00, and the trial's days before the first rate are no error."""
    w = catalogue(world)
    start, paid = ts(2024, 1, 20), ts(2024, 2, 20)
    for cur, price in (("eur", "seat_eur"), ("pln", "seat_pln")):
        w.customer(f"c_{cur}", currency=cur)
        w.subscribe(f"s_{cur}", f"c_{cur}", [(f"si_{cur}", price, 3)], start, trial_end=paid)
        w.update(f"s_{cur}", paid, status="active")
    con = derive(w, seen_at=SEEN)
    expect(con, "c_eur", [
        (paid, "new", "new", D(0), D(33), D(33), "eur", D(30), "si_eur"),
        fx(MAR, "33", "31.50", "eur", "si_eur"),
        fx(APR, "31.50", "33.60", "eur", "si_eur"),
    ])
    assert customer_mrr_at(con, "c_eur", FEB + DAY) == 0
    expect(con, "c_pln", [(paid, "new", "new", D(0), D(30), D(30), "pln", D(120), "si_pln")])


# --- several currencies, minor units, options, discounts ----------------------------------------------------------------

@one_store
def test_a_customer_billed_in_euros_and_dollars(world: World, derive: Derive) -> None:
    """design.md 4 (each amount in its own currency): 4 seats x 10.00 USD from 1 January (40.00) and, from 2 January,
    an add-on of another family at 3 x 10.00 EUR (30 EUR, 32.40 at 1.08): cross_sell +32.40. 1 February: only the
    euros move, fx 30 x 0.02 = +0.60 on the euro item (73.00). 1 March 00:00: two more dollar seats as the euro falls
    to 1.05: seat_expansion +20.00 (20.0000 USD) and fx 30 x -0.05 = -1.50 on the euro item (91.50). 1 April: fx
    +2.10 (93.60). The dollar item never has an fx part."""
    w = catalogue(world)
    w.customer("c")
    w.subscribe("s_usd", "c", [("si_u", "seat_usd", 4)], T0)
    w.objects["customers"]["c"]["currency"] = "eur"
    w.subscribe("s_eur", "c", [("si_e", "addon_eur", 3)], T0 + DAY)
    w.objects["customers"]["c"]["currency"] = "usd"
    w.update("s_usd", MAR, items=[("si_u", "seat_usd", 6)])
    con = derive(w, seen_at=SEEN)
    got = rows(con, "c")
    assert got[0][:6] == (T0, "new", "new", D(0), D(40), D(40))
    assert got[1:] == [
        (T0 + DAY, "cross_sell", "expansion", D(40), D("72.40"), D("32.40"), "eur", D(30), "si_e"),
        fx(FEB, "72.40", "73.00", "eur", "si_e"),
        (MAR, "fx", "fx", D(73), D("91.50"), D("-1.50"), "eur", D(0), "si_e"),
        (MAR, "seat_expansion", "expansion", D(73), D("91.50"), D(20), "usd", D(20), "si_u"),
        fx(APR, "91.50", "93.60", "eur", "si_e"),
    ]
    check_invariants(con, "c")


@one_store
def test_zero_and_three_decimal_currencies_with_seats_and_a_rate_move(world: World, derive: Derive) -> None:
    """Stripe's amounts are in the currency's smallest unit (NOTES, step 10): the yen itself for JPY, a thousandth for
    KWD; amount_delta_original in the currency's major unit. c_jpy: a seat at unit_amount 1000 is 1,000 yen; 3 seats
    = 3,000 yen at 0.0067 = 20.10 USD. 15 February, 5 seats: seat_expansion 2,000 yen = +13.40 (33.50). 1 March,
    0.0070: fx 5,000 x 0.0003 = +1.50 (35.00). 10 March, an annual add-on of 12,000 yen (1,000 yen a month):
    cross_sell +7.00 (42.00). c_kwd: a seat at unit_amount 5250 is 5.250 KWD; 2 seats = 10.500 KWD at 3.25 =
    34.1250. 1 March, 3.30: fx 10.5 x 0.05 = +0.5250 (34.6500). 10 March, a third seat at 3.30: seat_expansion 5.25 x
    3.30 = +17.3250 (51.9750), 5.2500 KWD."""
    w = catalogue(world)
    seats, addon = ts(2024, 2, 15), ts(2024, 3, 10)
    w.customer("c_jpy", currency="jpy")
    w.subscribe("s_jpy", "c_jpy", [("si_j", "seat_jpy", 3)], T0)
    w.update("s_jpy", seats, items=[("si_j", "seat_jpy", 5)])
    w.update("s_jpy", addon, items=[("si_j", "seat_jpy", 5), ("si_ja", "annual_jpy", 1)])
    w.customer("c_kwd", currency="kwd")
    w.subscribe("s_kwd", "c_kwd", [("si_k", "seat_kwd", 2)], T0)
    w.update("s_kwd", addon, items=[("si_k", "seat_kwd", 3)])
    con = derive(w, seen_at=SEEN)
    expect(con, "c_jpy", [
        (T0, "new", "new", D(0), D("20.10"), D("20.10"), "jpy", D(3000), "si_j"),
        (seats, "seat_expansion", "expansion", D("20.10"), D("33.50"), D("13.40"), "jpy", D(2000), "si_j"),
        fx(MAR, "33.50", "35.00", "jpy", "si_j"),
        (addon, "cross_sell", "expansion", D(35), D(42), D(7), "jpy", D(1000), "si_ja"),
    ])
    expect(con, "c_kwd", [
        (T0, "new", "new", D(0), D("34.125"), D("34.125"), "kwd", D("10.5"), "si_k"),
        fx(MAR, "34.125", "34.65", "kwd", "si_k"),
        (addon, "seat_expansion", "expansion", D("34.65"), D("51.975"), D("17.325"), "kwd", D("5.25"), "si_k"),
    ])


@one_store
def test_prices_billed_through_currency_options_follow_the_subscriptions_currency(world: World, derive: Derive) -> None:
    """README: an item is in the currency its subscription is billed in; a price with currency_options counts at its
    amount in that currency. A dollar price of 20.00 with a euro option of 18.00, billed to a euro customer (2
    seats, 36 EUR): 38.88 at 1.08, then fx +0.72, -1.80, +2.52 with the euro (39.60, 37.80, 40.32). A euro price of
    10.00 with a dollar option of 11.00, billed to a dollar customer (3 seats): 33.00, and no fx row at all though
    the euro moves three times. Neither is a currency_mismatch. A euro customer on 3 seats of a 10.00 USD price with
    no currency_options (README: `currency_mismatch`, valued at the price's own amount) counts 30.00 USD, in usd,
    with no fx row; data_quality says so once."""
    w = catalogue(world)
    w.price("pro_usd_opt", "prod_seat", 2_000)["currency_options"] = {"eur": {"unit_amount": 1_800}}
    w.price("pro_eur_opt", "prod_seat", 1_000, currency="eur")["currency_options"] = {"usd": {"unit_amount": 1_100}}
    w.customer("ce", currency="eur")
    w.subscribe("s_e", "ce", [("si_e", "pro_usd_opt", 2)], T0)
    w.customer("cu")
    w.subscribe("s_u", "cu", [("si_u", "pro_eur_opt", 3)], T0)
    w.customer("cm", currency="eur")
    w.subscribe("s_m", "cm", [("si_m", "seat_usd", 3)], T0)
    con = derive(w, seen_at=SEEN)
    expect(con, "ce", [
        (T0, "new", "new", D(0), D("38.88"), D("38.88"), "eur", D(36), "si_e"),
        fx(FEB, "38.88", "39.60", "eur", "si_e"),
        fx(MAR, "39.60", "37.80", "eur", "si_e"),
        fx(APR, "37.80", "40.32", "eur", "si_e"),
    ])
    expect(con, "cu", [(T0, "new", "new", D(0), D(33), D(33), "usd", D(33), "si_u")])
    expect(con, "cm", [(T0, "new", "new", D(0), D(30), D(30), "usd", D(30), "si_m")])
    assert con.execute("SELECT object_id FROM data_quality WHERE kind = 'currency_mismatch'").fetchall() == [("si_m",)]


@one_store
def test_an_amount_off_in_euros_on_a_euro_subscription_across_rate_moves(world: World, derive: Derive) -> None:
    """design.md 4 (a discount starting is a movement dated at its start, label `discount`) and README (an amount-off
    coupon's amount in the subscription's currency): 3 seats x 10.00 EUR (32.40, 33.00 from 1 February); 5.00 EUR off
    forever from 15 February: discount -5 x 1.10 = -5.50 (27.50), -5.0000 EUR. The rate then moves what is left,
    25 EUR: 1 March fx -1.25 (26.25), 1 April fx +1.75 (28.00)."""
    w = catalogue(world)
    w.customer("c", currency="eur")
    w.coupon("off5", amount_off=500, currency="eur")
    w.subscribe("s", "c", [("si", "seat_eur", 3)], T0)
    t = ts(2024, 2, 15)
    d = w.discount("off5", t, customer="c", subscription="s")
    w.update("s", t, discounts=[d["id"]])
    con = derive(w, seen_at=SEEN)
    expect(con, "c", [
        (T0, "new", "new", D(0), D("32.40"), D("32.40"), "eur", D(30), "si"),
        fx(FEB, "32.40", "33.00", "eur", "si"),
        (t, "discount", "contraction", D(33), D("27.50"), D("-5.50"), "eur", D(-5), "si"),
        fx(MAR, "27.50", "26.25", "eur", "si"),
        fx(APR, "26.25", "28.00", "eur", "si"),
    ])


# --- a missing rate ---------------------------------------------------------------------------------------------------

def test_a_rate_missing_inside_the_history_names_the_currency_and_days_and_changes_nothing(
        store: duckdb.DuckDBPyConnection) -> None:
    """design.md 4 and README: a customer billed in a currency with no rate on or before a day it needs makes the
    recompute fail with the currency and the days, and the previous results stay. A store recomputed with a euro and
    a dollar customer; then a dollar customer switches on 10 February 12:00 to a plan in NOK, whose rates begin on 1
    March, and adds a seat on 20 February: the recompute stops with one line naming nok and 10 to 20 February (not
    eur, whose rates are all there), and customer_mrr and mrr_movements are as they were."""
    w = catalogue(World())
    w.customer("ce", currency="eur")
    w.subscribe("s_e", "ce", [("si_e", "seat_eur", 3)], T0)
    w.customer("cu")
    w.subscribe("s_u", "cu", [("si_u", "seat_usd", 2)], T0)
    w.load(store, seen_at=SEEN)
    recompute(store, Settings())
    before = [store.execute(f"SELECT * FROM {v} ORDER BY ALL").fetchall() for v in ("customer_mrr", "mrr_movements")]
    assert len(before[1]) == 5

    # (the same account, loaded again: its objects are upserted; the rates loaded once, so only the new ones now)
    w.fx_rates = [("2024-03-01", "nok", 0.094)]
    w.price("seat_nok", "prod_seat", 10_000, currency="nok")
    w.customer("cn")
    w.subscribe("s_u2", "cn", [("si_u2", "seat_usd", 2)], T0)
    w.cancel("s_u2", ts(2024, 2, 10, 12))
    w.objects["customers"]["cn"]["currency"] = "nok"
    w.subscribe("s_n", "cn", [("si_n", "seat_nok", 2)], ts(2024, 2, 10, 12, 10))
    w.update("s_n", ts(2024, 2, 20), items=[("si_n", "seat_nok", 3)])
    w.load(store, seen_at=SEEN)
    with pytest.raises(DataError) as err:
        recompute(store, Settings())
    message = str(err.value)
    assert "\n" not in message.strip()
    assert "nok" in message and "2024-02-10" in message and "2024-02-20" in message, message
    assert "eur" not in message, message
    after = [store.execute(f"SELECT * FROM {v} ORDER BY ALL").fetchall() for v in ("customer_mrr", "mrr_movements")]
    assert after == before


# --- the bridge ---------------------------------------------------------------------------------------------------------

BRIDGE_SEEN = ts(2024, 4, 20)


def bridge_world(w: World) -> World:
    """e1: 3 x 10.00 EUR from 1 January. g1: 2 x 50.00 GBP from 1 January, canceled on 20 March. u1: 5 x 10.00 USD
    from 1 January, one seat fewer on 5 March. e2: 2 x 10.00 EUR from 10 February."""
    catalogue(w)
    w.customer("e1", currency="eur")
    w.subscribe("s_e1", "e1", [("si_e1", "seat_eur", 3)], T0)
    w.customer("g1", currency="gbp")
    w.subscribe("s_g1", "g1", [("si_g1", "seat_gbp", 2)], T0)
    w.cancel("s_g1", ts(2024, 3, 20))
    w.customer("u1")
    w.subscribe("s_u1", "u1", [("si_u1", "seat_usd", 5)], T0)
    w.update("s_u1", ts(2024, 3, 5), items=[("si_u1", "seat_usd", 4)])
    w.customer("e2", currency="eur")
    w.subscribe("s_e2", "e2", [("si_e2", "seat_eur", 2)], ts(2024, 2, 10))
    return w


def by_start(got: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {(r.get("segment_value"), r["period_start"]): r for r in got}


def pick(row: dict[str, Any], cols: list[str]) -> tuple[Any, ...]:
    return tuple(row[c] for c in cols)


def rates_of(row: dict[str, Any]) -> list[Any]:
    return [row[c] if row[c] is None or isinstance(row[c], bool) else pytest.approx(float(row[c]))
            for c in RATE_COLS]


def test_the_bridge_of_months_with_rate_moves(derive_read_only: Derive) -> None:
    """design.md 6: opening + new + reactivation + expansion - contraction - churn + fx = closing, fx signed and in no
    rate. January: new 32.40 + 125.00 + 50.00 = 207.40. February: e2 new 22.00 (20 EUR at 1.10), fx +0.60 (e1):
    230.00. March: fx e1 -1.50, e2 -1.00, g1 +5.00 = +2.50; u1 seat_contraction 10.00; g1 churns at 130.00: 92.50;
    gross = net = 140 / 230, NRR = GRR = (230 - 10 - 130) / 230, 1 of 4 customers churned, quick ratio 0 / 140 = 0,
    ARPA 92.50 / 3 = 30.8333. April, only fx (e1 +2.10, e2 +1.40 = +3.50): 96.00; gross 0, net 0, NRR and GRR 1,
    quick ratio NULL (0 / 0), not net negative. Q1: new 229.40, contraction 10, churn 130, fx +3.10, closing 92.50."""
    con = derive_read_only(bridge_world(World()), seen_at=BRIDGE_SEEN)
    months = by_start(queries.bridge(con))
    jan, feb, mar, apr = (months[(None, dt.date(2024, m, 1))] for m in (1, 2, 3, 4))
    assert pick(jan, MONEY) == (0, D("207.40"), 0, 0, 0, 0, 0, D("207.40"))
    assert pick(jan, COUNTS) == (0, 3, 0, 0, 3)
    assert pick(feb, MONEY) == (D("207.40"), 22, 0, 0, 0, 0, D("0.60"), 230)
    assert pick(feb, COUNTS) == (3, 1, 0, 0, 4)
    assert pick(mar, MONEY) == (230, 0, 0, 0, 10, 130, D("2.50"), D("92.50"))
    assert pick(mar, COUNTS) == (4, 0, 0, 1, 3)
    assert (mar["seat_contraction"], mar["downgrade"]) == (10, 0)
    assert rates_of(mar) == [140 / 230, 140 / 230, 90 / 230, 90 / 230, 0.25, 0, False]
    assert mar["arpa"] == D("30.8333")
    assert pick(apr, MONEY) == (D("92.50"), 0, 0, 0, 0, 0, D("3.50"), 96)
    assert rates_of(apr) == [0, 0, 1, 1, 0, None, False]
    assert apr["arpa"] == D("32.0000")
    q1 = by_start(queries.bridge(con, "quarter"))[(None, dt.date(2024, 1, 1))]
    assert pick(q1, MONEY) == (0, D("229.40"), 0, 0, 10, 130, D("3.10"), D("92.50"))
    # the closing MRR is the customers' MRR at the month's end
    for m, row in ((2, feb), (3, mar), (4, apr)):
        end = ts(2024, m + 1, 1) - 1
        total = sum((customer_mrr_at(con, c, end) for c in ("e1", "g1", "u1", "e2")), D(0))
        assert total == row["closing_mrr"], m


def test_currency_segments_weeks_cohorts_and_churn_reasons_with_rate_moves(derive_read_only: Derive) -> None:
    """design.md 6-7 and README on the same account. Currency segments (the identity holds for every period and
    segment; `currency` is the customer's): eur January new 32.40; February opening 32.40, new 22.00, fx +0.60,
    closing 55.00; March fx -2.50 (52.50); April fx +3.50 (56.00); Q1 new 54.40, fx -1.90, closing 52.50. gbp 125.00
    until March, when fx +5.00 and churn 130.00 leave 0. usd 50.00, March contraction 10.00 (40.00), fx 0 throughout.
    Weeks (Monday starts): the week of 29 January holds February's first fx (207.40 +0.60 = 208.00), that of 26
    February March's (230.00 +2.50 = 232.50), that of 4 March u1's seat (-10.00). churn_reasons: March, voluntary,
    no feedback, 1 customer, 130.00 (g1 at the rate when it churned). The cohort matrix at constant rates (the rate
    on the last day of the cohort's first month; fx left out): January's cohort 207.40 in January and February,
    72.40 from March (g1's -100 GBP at January's 1.25 = -125.00, u1's -10.00); February's (e2) 22.00 throughout (at
    February's 1.10), though the euro moved twice."""
    con = derive_read_only(bridge_world(World()), seen_at=BRIDGE_SEEN)
    seg = by_start(queries.bridge(con, "month", "currency"))
    assert pick(seg[("eur", dt.date(2024, 1, 1))], MONEY) == (0, D("32.40"), 0, 0, 0, 0, 0, D("32.40"))
    assert pick(seg[("eur", dt.date(2024, 2, 1))], MONEY) == (D("32.40"), 22, 0, 0, 0, 0, D("0.60"), 55)
    assert pick(seg[("eur", dt.date(2024, 3, 1))], MONEY) == (55, 0, 0, 0, 0, 0, D("-2.50"), D("52.50"))
    assert pick(seg[("eur", dt.date(2024, 4, 1))], MONEY) == (D("52.50"), 0, 0, 0, 0, 0, D("3.50"), 56)
    assert pick(seg[("gbp", dt.date(2024, 2, 1))], MONEY) == (125, 0, 0, 0, 0, 0, 0, 125)
    assert pick(seg[("gbp", dt.date(2024, 3, 1))], MONEY) == (125, 0, 0, 0, 0, 130, 5, 0)
    assert pick(seg[("usd", dt.date(2024, 3, 1))], MONEY) == (50, 0, 0, 0, 10, 0, 0, 40)
    assert all(r["fx"] == 0 for (cur, _), r in seg.items() if cur == "usd")
    q1 = by_start(queries.bridge(con, "quarter", "currency"))[("eur", dt.date(2024, 1, 1))]
    assert pick(q1, MONEY) == (0, D("54.40"), 0, 0, 0, 0, D("-1.90"), D("52.50"))
    assert assert_bridge_adds_up(con, "fx hunt", ["month", "quarter", "year"], [None, "currency", "size_band"]) > 0
    weeks = by_start(queries.bridge(con, "week", start=dt.date(2024, 1, 29), end=dt.date(2024, 3, 4)))
    assert pick(weeks[(None, dt.date(2024, 1, 29))], MONEY) == (D("207.40"), 0, 0, 0, 0, 0, D("0.60"), 208)
    assert pick(weeks[(None, dt.date(2024, 2, 26))], MONEY) == (230, 0, 0, 0, 0, 0, D("2.50"), D("232.50"))
    assert pick(weeks[(None, dt.date(2024, 3, 4))], MONEY) == (D("232.50"), 0, 0, 0, 10, 0, 0, D("222.50"))
    assert [(r["period_start"], r["churn_type"], r["cancellation_feedback"], r["churned_customers"],
             r["churned_mrr"]) for r in queries.churn_reasons(con)] == [
        (dt.date(2024, 3, 1), "voluntary", "(none)", 1, D(130))]
    cohorts = [(r["cohort_month"].month, r["month"].month, r["mrr"]) for r in queries.cohort_matrix(con)
               if r["month"] <= dt.date(2024, 4, 1)]
    assert cohorts == [(1, 1, D("207.40")), (1, 2, D("207.40")), (1, 3, D("72.40")), (1, 4, D("72.40")),
                       (2, 2, D(22)), (2, 3, D(22)), (2, 4, D(22))]


# --- another reporting currency -----------------------------------------------------------------------------------------

def test_reporting_in_euros_moves_dollar_and_pound_customers_with_their_rates(derive: Derive) -> None:
    """design.md 7 (STRIPE_CHURN_CURRENCY) and README (rates are units of the reporting currency): reporting in EUR
    with usd 0.92 (0.90 from 1 February) and gbp 1.16 (1.20 from 1 March). c_usd 50.00 USD: 46.00 EUR, fx -1.00 on
    1 February (45.00), canceled on 10 April: churn 45.00 (-50.0000 USD). c_eur 40.00 EUR: 40.00, never an fx row.
    c_gbp 2 x 50.00 GBP from 15 January: 116.00, fx +4.00 on 1 March (120.00), a third seat on 10 March at 1.20:
    seat_expansion +60.00 (50.0000 GBP), 180.00. Bridge: January new 202.00; February fx -1.00 (201.00); March fx
    +4.00, expansion 60.00 (265.00); April churn 45.00 (220.00): gross = net = 45 / 265, NRR = GRR = 220 / 265, 1 of
    3 customers. Per currency: usd February (46, fx -1, 45); gbp March (116, +60, fx +4, 180); eur flat at 40. The
    cohort matrix at January's rates (usd 0.92, gbp 1.16; fx left out): 202.00, 202.00, March + 50 GBP x 1.16 =
    260.00, April - 50 USD x 0.92 = 214.00. c_gbp, set on 20 March to cancel on 15 May: 180.00 EUR at stake (150 GBP
    at today's 1.20)."""
    w = catalogue(World())
    w.fx_rates = [("2023-12-01", "usd", 0.92), ("2024-02-01", "usd", 0.90), ("2023-12-01", "gbp", 1.16),
                  ("2024-03-01", "gbp", 1.20)]
    w.customer("c_usd")
    w.subscribe("s_usd", "c_usd", [("si_u", "seat_usd", 5)], T0)
    w.cancel("s_usd", ts(2024, 4, 10))
    w.customer("c_eur", currency="eur")
    w.subscribe("s_eur", "c_eur", [("si_e", "seat_eur", 4)], T0)
    w.customer("c_gbp", currency="gbp")
    w.subscribe("s_gbp", "c_gbp", [("si_g", "seat_gbp", 2)], ts(2024, 1, 15))
    w.update("s_gbp", ts(2024, 3, 10), items=[("si_g", "seat_gbp", 3)])
    w.update("s_gbp", ts(2024, 3, 20), cancel_at_period_end=True, cancel_at=ts(2024, 5, 15),
             canceled_at=ts(2024, 3, 20))
    con = derive(w, seen_at=BRIDGE_SEEN, currency="eur")
    expect(con, "c_usd", [
        (T0, "new", "new", D(0), D(46), D(46), "usd", D(50), "si_u"),
        fx(FEB, "46", "45", "usd", "si_u"),
        (ts(2024, 4, 10), "cancellation", "churn", D(45), D(0), D(-45), "usd", D(-50), "si_u"),
    ])
    expect(con, "c_eur", [(T0, "new", "new", D(0), D(40), D(40), "eur", D(40), "si_e")])
    expect(con, "c_gbp", [
        (ts(2024, 1, 15), "new", "new", D(0), D(116), D(116), "gbp", D(100), "si_g"),
        fx(MAR, "116", "120", "gbp", "si_g"),
        (ts(2024, 3, 10), "seat_expansion", "expansion", D(120), D(180), D(60), "gbp", D(50), "si_g"),
    ])
    months = by_start(queries.bridge(con))
    assert pick(months[(None, dt.date(2024, 1, 1))], MONEY) == (0, 202, 0, 0, 0, 0, 0, 202)
    assert pick(months[(None, dt.date(2024, 2, 1))], MONEY) == (202, 0, 0, 0, 0, 0, -1, 201)
    assert pick(months[(None, dt.date(2024, 3, 1))], MONEY) == (201, 0, 0, 60, 0, 0, 4, 265)
    apr = months[(None, dt.date(2024, 4, 1))]
    assert pick(apr, MONEY) == (265, 0, 0, 0, 0, 45, 0, 220)
    assert rates_of(apr) == [45 / 265, 45 / 265, 220 / 265, 220 / 265, 1 / 3, 0, False]
    seg = by_start(queries.bridge(con, "month", "currency"))
    assert pick(seg[("usd", dt.date(2024, 2, 1))], MONEY) == (46, 0, 0, 0, 0, 0, -1, 45)
    assert pick(seg[("gbp", dt.date(2024, 3, 1))], MONEY) == (116, 0, 0, 60, 0, 0, 4, 180)
    assert all(pick(r, MONEY) == (40, 0, 0, 0, 0, 0, 0, 40) for (cur, start), r in seg.items()
               if cur == "eur" and start > dt.date(2024, 1, 1))
    assert [r["mrr"] for r in queries.cohort_matrix(con) if r["month"] <= dt.date(2024, 4, 1)] == [202, 202, 260, 214]
    (at_stake,) = queries.scheduled_churn(con)
    assert (at_stake["subscription_id"], at_stake["mrr_at_stake"], at_stake["currency"],
            at_stake["mrr_at_stake_original"]) == ("s_gbp", D(180), "gbp", D(150))


def test_reporting_in_a_zero_decimal_currency_with_rates_above_a_hundred(derive: Derive) -> None:
    """design.md 7 (STRIPE_CHURN_CURRENCY: any reporting currency) and 4 (money in major units of the reporting
    currency) with README (a rate is units of the reporting currency for one unit of the other; the file takes rates
    up to 10 digits before the point): reporting in JPY, usd 150.1234 (151.00 from 1 February), eur 162.50. c_jpy: 3
    seats of 1,000 yen = 3000.0000, a fourth on 10 February: seat_expansion +1000.0000. c_usd: 50.00 USD = 7506.1700
    yen, fx +43.8300 on 1 February (7550.0000). c_eur: 3 seats x 10.00 EUR less a customer-wide 2.50 EUR off = 27.50
    EUR = 4468.7500 yen. January's bridge: new 14974.92; February: expansion 1000, fx +43.83, closing 16018.75."""
    w = catalogue(World())
    w.fx_rates = [("2023-12-01", "usd", 150.1234), ("2024-02-01", "usd", 151.0), ("2023-12-01", "eur", 162.5)]
    w.customer("c_jpy", currency="jpy")
    w.subscribe("s_jpy", "c_jpy", [("si_j", "seat_jpy", 3)], T0)
    w.update("s_jpy", ts(2024, 2, 10), items=[("si_j", "seat_jpy", 4)])
    w.customer("c_usd")
    w.subscribe("s_usd", "c_usd", [("si_u", "seat_usd", 5)], T0)
    w.customer("c_eur", currency="eur")
    w.coupon("off250", amount_off=250, currency="eur")
    w.objects["customers"]["c_eur"]["discount"] = w.discount("off250", T0 - DAY, customer="c_eur")
    w.subscribe("s_eur", "c_eur", [("si_e", "seat_eur", 3)], T0)
    con = derive(w, seen_at=BRIDGE_SEEN, currency="jpy")
    expect(con, "c_jpy", [(T0, "new", "new", D(0), D(3000), D(3000), "jpy", D(3000), "si_j"),
                          (ts(2024, 2, 10), "seat_expansion", "expansion", D(3000), D(4000), D(1000), "jpy", D(1000),
                           "si_j")])
    expect(con, "c_usd", [(T0, "new", "new", D(0), D("7506.17"), D("7506.17"), "usd", D(50), "si_u"),
                          fx(FEB, "7506.17", "7550", "usd", "si_u")])
    expect(con, "c_eur", [(T0, "new", "new", D(0), D("4468.75"), D("4468.75"), "eur", D("27.5"), "si_e")])
    months = by_start(queries.bridge(con))
    assert pick(months[(None, dt.date(2024, 1, 1))], MONEY) == (0, D("14974.92"), 0, 0, 0, 0, 0, D("14974.92"))
    assert pick(months[(None, dt.date(2024, 2, 1))], MONEY) == (
        D("14974.92"), 0, 0, 1000, 0, 0, D("43.83"), D("16018.75"))
