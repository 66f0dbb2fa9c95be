"""Where a movement, a customer and an amount land in time, worked out by hand from design.md 4-7 and the README
before running ours: movements at 23:59:59 of a period's last day and at 00:00:00 of the next one, for weeks
(ISO, Monday to Sunday, UTC; week 53 of 2020), months, quarters and years; movement windows that start in one
period and end in the next (dated at their first change, design.md 5: a `new`, an upgrade, a seat change, a
cancellation, and a cancel netted away by a comeback); a cancellation at its period's end, 00:00:00 of the 1st; a
trial that ends at 00:00:00 of a new year; customers who leave and come back within a period and across periods;
a business quiet at zero MRR for three months (its rows, its NULL rates, ARPA and the README's LTV); interval
normalisation (day x 365/12, week x 52/12, every 3 and 6 months, 2 weeks, 90 days, an amount off on a two-weekly
plan) rounded once per customer to 4 decimals; an annual plan begun on 29 February and a monthly plan anchored on
the 31st.

Two small accounts, each derived once for the module and read by the tests that read its bridge (the bridge sums a
whole store); the customer-level cases are accounts of one shared store (conftest.OneStore). Every account is in
USD, so no exchange rate moves anything.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import shutil
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from builders import Obj, World, ts
from conftest import OneStore

from stripe_churn.metrics import queries

Derive = Callable[..., duckdb.DuckDBPyConnection]
D = Decimal
UTC = dt.UTC
KINDS = ["week", "month", "quarter", "year"]
MONEY = ["opening_mrr", "new", "reactivation", "expansion", "contraction", "churn", "fx", "closing_mrr"]
COUNTS = ["opening_customers", "new_customers", "reactivated_customers", "churned_customers", "closing_customers"]
CELLS = MONEY + COUNTS
RATES = ["gross_revenue_churn_rate", "net_revenue_churn_rate", "nrr", "grr", "customer_churn_rate", "quick_ratio",
         "net_negative_churn"]

one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """Unix seconds of a UTC moment, to the second."""
    return ts(year, month, day, hour, minute) + second


def utc(t: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, tz=UTC)


Cells = tuple[Any, ...]


def flows(opening: Any, closing: Any, customers: tuple[int, int, int, int, int], *, new: Any = 0,
          reactivation: Any = 0, expansion: Any = 0, contraction: Any = 0, churn: Any = 0) -> Cells:
    """A bridge row's money (fx is 0 throughout) and its customers (opening, new, reactivated, churned, closing)."""
    return (D(opening), D(new), D(reactivation), D(expansion), D(contraction), D(churn), D(0), D(closing),
            *customers)


def quiet(mrr: Any, customers: int) -> Cells:
    return flows(mrr, mrr, (customers, 0, 0, 0, customers))


def cells(row: dict[str, Any]) -> Cells:
    return tuple(row[c] for c in CELLS)


def rates(row: dict[str, Any]) -> list[Any]:
    return [row[c] for c in RATES]


def approx(*values: float | bool | None) -> list[Any]:
    return [v if v is None or isinstance(v, bool) else pytest.approx(v) for v in values]


def today() -> dt.date:
    return dt.datetime.now(UTC).date()


def period_start(kind: str, day: dt.date) -> dt.date:
    """The UTC period of ``kind`` holding ``day``, worked out in Python (README: ISO weeks from Monday, quarters from
    January, April, July, October)."""
    if kind == "week":
        return day - dt.timedelta(days=day.weekday())
    if kind == "month":
        return day.replace(day=1)
    if kind == "quarter":
        return dt.date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
    return dt.date(day.year, 1, 1)


def next_start(kind: str, start: dt.date) -> dt.date:
    if kind == "week":
        return start + dt.timedelta(days=7)
    months = {"month": 1, "quarter": 3, "year": 12}[kind] + start.month - 1
    return dt.date(start.year + months // 12, months % 12 + 1, 1)


def starts(kind: str, first: dt.date, last: dt.date) -> list[dt.date]:
    out = [period_start(kind, first)]
    while next_start(kind, out[-1]) <= last:
        out.append(next_start(kind, out[-1]))
    return out


def expect(kind: str, first: dt.date, busy: dict[dt.date, Cells]) -> dict[dt.date, Cells]:
    """Every period of ``kind`` from the one holding ``first`` through the current one: the ``busy`` ones as given,
    every other one quiet at the closing before it."""
    out: dict[dt.date, Cells] = {}
    before = quiet(0, 0)
    for p in starts(kind, first, today()):
        out[p] = busy.get(p, quiet(before[7], before[12]))
        before = out[p]
    assert set(busy) <= set(out), sorted(set(busy) - set(out))
    return out


class Derived:
    """A store holding one World, recomputed under the default settings, and its bridges, read once per kind."""

    def __init__(self, con: duckdb.DuckDBPyConnection, first: dt.date) -> None:
        self.con = con
        self.first = first  # (the day of the first movement)
        self._bridges: dict[tuple[str, str | None], list[dict[str, Any]]] = {}

    def bridge(self, kind: str, segment: str | None = None) -> list[dict[str, Any]]:
        if (kind, segment) not in self._bridges:
            self._bridges[(kind, segment)] = queries.bridge(self.con, kind, segment)
        return self._bridges[(kind, segment)]

    def rows(self, kind: str) -> dict[dt.date, dict[str, Any]]:
        return {r["period_start"]: r for r in self.bridge(kind)}

    def cells(self, kind: str) -> dict[dt.date, Cells]:
        return {p: cells(r) for p, r in self.rows(kind).items()}


def derived(tmp_path_factory: pytest.TempPathFactory, template: Path, w: World, seen_at: int, first: dt.date
            ) -> Iterator[Derived]:
    from stripe_churn.metrics.runner import recompute
    from stripe_churn.settings import Settings
    from stripe_churn.store.db import open_store

    path = tmp_path_factory.mktemp("calendar") / "calendar.duckdb"
    shutil.copyfile(template, path)
    con = open_store(path)
    try:
        w.load(con, seen_at=seen_at)
        recompute(con, Settings())
        yield Derived(con, first)
    finally:
        con.close()


def stripe_periods(w: World, inv: Obj, sid: str, end: int) -> None:
    """Stripe's period end for a renewal ``inv`` of ``sid`` (the builder counts a month or year from the renewal's
    day; Stripe keeps the billing cycle anchor's day: 29 February 2028, 31 March)."""
    for line in inv["lines"]["data"]:
        line["period"]["end"] = end
    for item in w.objects["subscriptions"][sid]["items"]["data"]:
        item["current_period_end"] = end


# --- one account through six years of edges ---------------------------------------------------------------------------

EDGES_SEEN = ts(2025, 11, 20)


def edges_world() -> World:
    """A seat price of 1.00 a month (family core), and two plans of family plans, std 30.00 and prem 50.00.

    2020-2023, week 53 and a business quiet at zero:
    - w0 1.00 at Sunday 27 December 2020 23:59:59 (ISO week 52), w1 2.00 at Monday 28 December 00:00:00 and w2 3.00
      at Sunday 3 January 2021 23:59:59 (both week 53: Monday 28 December 2020 to Sunday 3 January 2021), w3 5.00 at
      Monday 4 January 2021 00:00:00 (week 1 of 2021); all four cancel on Monday 15 February 2021 (10:00 to 13:00);
    - nothing in March, April and May 2021; w1 back with 20.00 on Thursday 3 June 2021, gone on 15 November 2023.
    2023-2025, the edges:
    - e1 7.00 at Sunday 31 December 2023 23:59:59, kept; e2 11.00 at Monday 1 January 2024 00:00:00 (renewed on the
      1st at 00:00), asked on 10 March to cancel at its period's end: it ends at Monday 1 April 2024 00:00:00; e3
      13.00 from 15 February 2024 12:00, cancelled at once at Sunday 31 March 2024 23:59:59;
    - e6 2 seats at Sunday 31 March 2024 23:30, 5 at Monday 1 April 00:15 (45 minutes later: one window); e8 8
      seats at Sunday 31 March 23:50, cancelled at Monday 1 April 00:20 (30 minutes later);
    - e4 std (30.00) from 10 May 2024 09:00, cancelled at Sunday 30 June 2024 23:40 and prem (50.00) taken at Monday
      1 July 00:20 (40 minutes later);
    - e9 17.00 from 15 August 2024 09:00, cancelled at Monday 30 September 23:30 and taken again, 17.00, at Tuesday
      1 October 00:15 (45 minutes later); e7 6.00 from 16 August 09:00, down to 2 seats at Monday 30 September
      23:35, cancelled at Tuesday 1 October 00:10 (35 minutes later);
    - e5 3.00 from 16 October 2024 12:00; 5 seats at Tuesday 31 December 2024 23:50, 4 at Wednesday 1 January 2025
      00:10 (20 minutes later);
    - e10 19.00 on a trial from 1 December 2024 00:00 to Wednesday 1 January 2025 00:00:00, when it converts.
    2025, customers who leave and come back:
    - k0 100.00, k1 9.00 and k3 3.00 from Monday 3 February 2025 10:00; k1 cancels on Tuesday 5 August 10:00 and
      comes back (9.00) on Wednesday 20 August 10:00; k2 5.00 from Tuesday 2 September 10:00 to Saturday 20
      September 10:00; k3 cancels on Friday 31 October 12:00 and comes back (4.00) on Saturday 1 November 12:00."""
    w = World()
    w.product("prod_seat", unit_label="seat", family="core")
    w.price("seat", "prod_seat", 100)
    w.product("prod_plan", family="plans")
    w.price("std", "prod_plan", 3_000)
    w.price("prem", "prod_plan", 5_000)
    for c in ("w0", "w1", "w2", "w3", "e1", "e2", "e3", "e6", "e8", "e4", "e9", "e7", "e5", "e10", "k0", "k1", "k2",
              "k3"):
        w.customer(c)
    for k, (start, seats) in enumerate(((at(2020, 12, 27, 23, 59, 59), 1), (at(2020, 12, 28), 2),
                                        (at(2021, 1, 3, 23, 59, 59), 3), (at(2021, 1, 4), 5))):
        w.subscribe(f"s_w{k}", f"w{k}", [(f"i_w{k}", "seat", seats)], start)
        w.cancel(f"s_w{k}", ts(2021, 2, 15, 10 + k))
    w.subscribe("s_w1b", "w1", [("i_w1b", "seat", 20)], ts(2021, 6, 3, 10))
    w.cancel("s_w1b", ts(2023, 11, 15, 10))
    w.subscribe("s_e1", "e1", [("i_e1", "seat", 7)], at(2023, 12, 31, 23, 59, 59))
    w.subscribe("s_e2", "e2", [("i_e2", "seat", 11)], at(2024, 1, 1))
    w.cycle("s_e2", at(2024, 2, 1))
    w.cycle("s_e2", at(2024, 3, 1))
    w.cancel("s_e2", ts(2024, 3, 10, 10), ended_at=at(2024, 4, 1))
    w.subscribe("s_e3", "e3", [("i_e3", "seat", 13)], ts(2024, 2, 15, 12))
    w.cancel("s_e3", at(2024, 3, 31, 23, 59, 59))
    w.subscribe("s_e6", "e6", [("i_e6", "seat", 2)], ts(2024, 3, 31, 23, 30))
    w.update("s_e6", ts(2024, 4, 1, 0, 15), items=[("i_e6", "seat", 5)])
    w.subscribe("s_e8", "e8", [("i_e8", "seat", 8)], ts(2024, 3, 31, 23, 50))
    w.cancel("s_e8", ts(2024, 4, 1, 0, 20))
    w.subscribe("s_e4a", "e4", [("i_e4a", "std", 1)], ts(2024, 5, 10, 9))
    w.cancel("s_e4a", ts(2024, 6, 30, 23, 40))
    w.subscribe("s_e4b", "e4", [("i_e4b", "prem", 1)], ts(2024, 7, 1, 0, 20))
    w.subscribe("s_e9a", "e9", [("i_e9a", "seat", 17)], ts(2024, 8, 15, 9))
    w.cancel("s_e9a", ts(2024, 9, 30, 23, 30))
    w.subscribe("s_e9b", "e9", [("i_e9b", "seat", 17)], ts(2024, 10, 1, 0, 15))
    w.subscribe("s_e7", "e7", [("i_e7", "seat", 6)], ts(2024, 8, 16, 9))
    w.update("s_e7", ts(2024, 9, 30, 23, 35), items=[("i_e7", "seat", 2)])
    w.cancel("s_e7", ts(2024, 10, 1, 0, 10), feedback="too_expensive")
    w.subscribe("s_e5", "e5", [("i_e5", "seat", 3)], ts(2024, 10, 16, 12))
    w.update("s_e5", ts(2024, 12, 31, 23, 50), items=[("i_e5", "seat", 5)])
    w.update("s_e5", ts(2025, 1, 1, 0, 10), items=[("i_e5", "seat", 4)])
    w.subscribe("s_e10", "e10", [("i_e10", "seat", 19)], ts(2024, 12, 1), trial_end=ts(2025, 1, 1))
    for line in next(i for i in w.objects["invoices"].values() if i["customer"] == "e10")["lines"]["data"]:
        line["period"]["end"] = ts(2025, 1, 1)  # (the trial's line bills 0 up to its end)
    w.update("s_e10", ts(2025, 1, 1), status="active")
    w.cycle("s_e10", ts(2025, 1, 1))
    for c, seats in (("k0", 100), ("k1", 9), ("k3", 3)):
        w.subscribe(f"s_{c}", c, [(f"i_{c}", "seat", seats)], ts(2025, 2, 3, 10))
    w.cancel("s_k1", ts(2025, 8, 5, 10))
    w.subscribe("s_k1b", "k1", [("i_k1b", "seat", 9)], ts(2025, 8, 20, 10))
    w.subscribe("s_k2", "k2", [("i_k2", "seat", 5)], ts(2025, 9, 2, 10))
    w.cancel("s_k2", ts(2025, 9, 20, 10))
    w.cancel("s_k3", ts(2025, 10, 31, 12))
    w.subscribe("s_k3b", "k3", [("i_k3b", "seat", 4)], ts(2025, 11, 1, 12))
    return w


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path) -> Iterator[Derived]:
    yield from derived(tmp_path_factory, migrated_store_file, edges_world(), EDGES_SEEN, dt.date(2020, 12, 27))


def test_the_edges_movements_are_dated_at_their_first_change(edges: Derived) -> None:
    """design.md 5: a window is netted into one transition dated at its first change, and no row when the MRR does
    not change; `new` and `cancellation` take the whole customer delta. e6's 2 seats at 23:30 on 31 March and 5 at
    00:15 on 1 April: one `new` of 5.00 at 31 March 23:30. e8's subscription from 23:50 to 00:20 nets to nothing:
    no row (nor any customer count, cohort or level in the tests below). e4's cancel and new plan 40 minutes apart:
    one upgrade of +20.00 at 30 June 23:40. e9's cancel and the same plan again 45 minutes apart: no row. e7's seats
    down at 23:35 on 30 September and its end at 00:10: one cancellation of -6.00 at 23:35. e5's +2 and -1 seat 20
    minutes apart: one seat_expansion of +1.00 at 31 December 23:50. design.md 4: e2's request on 10 March moves
    nothing, its end at 1 April 00:00:00 is its churn; e10's trial counts zero, its `new` is at its end."""
    got = [(r[0], r[1].astimezone(UTC), r[2], r[3]) for r in edges.con.execute(
        "SELECT customer_id, occurred_at, movement, mrr_delta FROM mrr_movements "
        "ORDER BY occurred_at, customer_id").fetchall()]
    expected = [("w0", at(2020, 12, 27, 23, 59, 59), "new", 1), ("w1", at(2020, 12, 28), "new", 2),
                ("w2", at(2021, 1, 3, 23, 59, 59), "new", 3), ("w3", at(2021, 1, 4), "new", 5),
                *[(f"w{k}", ts(2021, 2, 15, 10 + k), "cancellation", -(1, 2, 3, 5)[k]) for k in range(4)],
                ("w1", ts(2021, 6, 3, 10), "reactivation", 20), ("w1", ts(2023, 11, 15, 10), "cancellation", -20),
                ("e1", at(2023, 12, 31, 23, 59, 59), "new", 7), ("e2", at(2024, 1, 1), "new", 11),
                ("e3", ts(2024, 2, 15, 12), "new", 13), ("e6", ts(2024, 3, 31, 23, 30), "new", 5),
                ("e3", at(2024, 3, 31, 23, 59, 59), "cancellation", -13),
                ("e2", at(2024, 4, 1), "cancellation", -11), ("e4", ts(2024, 5, 10, 9), "new", 30),
                ("e4", ts(2024, 6, 30, 23, 40), "upgrade", 20), ("e9", ts(2024, 8, 15, 9), "new", 17),
                ("e7", ts(2024, 8, 16, 9), "new", 6), ("e7", ts(2024, 9, 30, 23, 35), "cancellation", -6),
                ("e5", ts(2024, 10, 16, 12), "new", 3), ("e5", ts(2024, 12, 31, 23, 50), "seat_expansion", 1),
                ("e10", at(2025, 1, 1), "new", 19),
                ("k0", ts(2025, 2, 3, 10), "new", 100), ("k1", ts(2025, 2, 3, 10), "new", 9),
                ("k3", ts(2025, 2, 3, 10), "new", 3),
                ("k1", ts(2025, 8, 5, 10), "cancellation", -9), ("k1", ts(2025, 8, 20, 10), "reactivation", 9),
                ("k2", ts(2025, 9, 2, 10), "new", 5), ("k2", ts(2025, 9, 20, 10), "cancellation", -5),
                ("k3", ts(2025, 10, 31, 12), "cancellation", -3), ("k3", ts(2025, 11, 1, 12), "reactivation", 4)]
    assert got == [(c, utc(t), m, D(x)) for c, t, m, x in expected]


MONTHS = {dt.date(2020, 12, 1): flows(0, 3, (0, 2, 0, 0, 2), new=3),
          dt.date(2021, 1, 1): flows(3, 11, (2, 2, 0, 0, 4), new=8),
          dt.date(2021, 2, 1): flows(11, 0, (4, 0, 0, 4, 0), churn=11),
          dt.date(2021, 6, 1): flows(0, 20, (0, 0, 1, 0, 1), reactivation=20),
          dt.date(2023, 11, 1): flows(20, 0, (1, 0, 0, 1, 0), churn=20),
          dt.date(2023, 12, 1): flows(0, 7, (0, 1, 0, 0, 1), new=7),
          dt.date(2024, 1, 1): flows(7, 18, (1, 1, 0, 0, 2), new=11),
          dt.date(2024, 2, 1): flows(18, 31, (2, 1, 0, 0, 3), new=13),
          dt.date(2024, 3, 1): flows(31, 23, (3, 1, 0, 1, 3), new=5, churn=13),
          dt.date(2024, 4, 1): flows(23, 12, (3, 0, 0, 1, 2), churn=11),
          dt.date(2024, 5, 1): flows(12, 42, (2, 1, 0, 0, 3), new=30),
          dt.date(2024, 6, 1): flows(42, 62, (3, 0, 0, 0, 3), expansion=20),
          dt.date(2024, 8, 1): flows(62, 85, (3, 2, 0, 0, 5), new=23),
          dt.date(2024, 9, 1): flows(85, 79, (5, 0, 0, 1, 4), churn=6),
          dt.date(2024, 10, 1): flows(79, 82, (4, 1, 0, 0, 5), new=3),
          dt.date(2024, 12, 1): flows(82, 83, (5, 0, 0, 0, 5), expansion=1),
          dt.date(2025, 1, 1): flows(83, 102, (5, 1, 0, 0, 6), new=19),
          dt.date(2025, 2, 1): flows(102, 214, (6, 3, 0, 0, 9), new=112),
          dt.date(2025, 8, 1): flows(214, 214, (9, 0, 1, 1, 9), reactivation=9, churn=9),
          dt.date(2025, 9, 1): flows(214, 214, (9, 1, 0, 1, 9), new=5, churn=5),
          dt.date(2025, 10, 1): flows(214, 211, (9, 0, 0, 1, 8), churn=3),
          dt.date(2025, 11, 1): flows(211, 215, (8, 0, 1, 0, 9), reactivation=4)}


def test_the_edges_month_by_month(edges: Derived) -> None:
    """design.md 6: periods from the first month with MRR (December 2020) through the current one, quiet ones
    included. A movement at 23:59:59 of a month's last day is that month's, one at 00:00:00 of the 1st the next
    month's: December 2020 new 1 + 2, January 2021 3 + 5; December 2023 e1 (7), January 2024 e2 (11). A window is
    the month of its first change: March 2024 holds e6's whole `new` (5) beside e3's churn at its last second (13),
    April e2's churn at 00:00:00 of the 1st (11) and nothing of e6; June e4's upgrade (+20), nothing in July;
    September e7's cancellation (6) and nothing of e9; December 2024 e5's +1; January 2025 e10's 19 (its December on
    trial counts nowhere). 2025: k1 out and back in August (one churned and one reactivated customer, 9 at either
    end), k2 in and out in September, k3 out in October and back in November."""
    assert edges.cells("month") == expect("month", dt.date(2020, 12, 1), MONTHS)
    m = edges.rows("month")
    assert rates(m[dt.date(2024, 3, 1)]) == approx(13 / 31, 13 / 31, 18 / 31, 18 / 31, 1 / 3, 5 / 13, False)
    assert rates(m[dt.date(2024, 4, 1)]) == approx(11 / 23, 11 / 23, 12 / 23, 12 / 23, 1 / 3, 0.0, False)
    assert rates(m[dt.date(2024, 9, 1)]) == approx(6 / 85, 6 / 85, 79 / 85, 79 / 85, 1 / 5, 0.0, False)
    assert (m[dt.date(2024, 6, 1)]["upgrade"], m[dt.date(2024, 12, 1)]["seat_expansion"]) == (20, 1)


def test_customers_who_leave_and_come_back_month_by_month(edges: Derived) -> None:
    """design.md 6 and README (customer counts are of customers; customer churn rate = customers with MRR at the
    period start who churned in it / customers at the start). August 2025: k1 leaves and comes back at 9.00: 1 of 9
    churned; net (9 - 9) / 214 = 0, not negative; NRR and GRR 205 / 214 (reactivation in neither), quick ratio
    9 / 9; ARPA 214 / 9 = 23.7778. September: k2 starts and leaves: it had no MRR at the start, customer churn rate
    0 / 9. October: k3, 1 of 9. November: k3's comeback alone: net -4 / 211 (net negative), NRR and GRR 1, quick
    ratio NULL (nothing lost)."""
    m = edges.rows("month")
    assert rates(m[dt.date(2025, 8, 1)]) == approx(9 / 214, 0.0, 205 / 214, 205 / 214, 1 / 9, 1.0, False)
    assert rates(m[dt.date(2025, 9, 1)]) == approx(5 / 214, 5 / 214, 209 / 214, 209 / 214, 0.0, 1.0, False)
    assert rates(m[dt.date(2025, 10, 1)]) == approx(3 / 214, 3 / 214, 211 / 214, 211 / 214, 1 / 9, 0.0, False)
    assert rates(m[dt.date(2025, 11, 1)]) == approx(0.0, -4 / 211, 1.0, 1.0, 0.0, None, True)
    assert m[dt.date(2025, 8, 1)]["arpa"] == D("23.7778")


def test_a_business_quiet_at_zero_for_three_months(edges: Derived) -> None:
    """design.md 6: quiet periods included; a rate with a zero denominator is NULL. February 2021 loses all 11.00 (4
    of 4 customers): gross and net 1, NRR and GRR 0, quick ratio 0 / 11 = 0, no ARPA (no customer), not net
    negative. March, April and May 2021: rows of zeros, every rate NULL (0 / 0), net_negative_churn NULL, no ARPA.
    June: w1's comeback, reactivation 20 on a zero opening: every rate NULL (the quick ratio's denominator is 0
    too), ARPA 20. July on: nothing moves: 0, 0, 1, 1, 0, NULL, not net negative, ARPA 20; 2022 as a year the same.
    Per quarter, Q2 2021 opens at 0 and holds the reactivation; per week, the week of Monday 15 March 2021 is a row
    of zeros with every rate NULL."""
    m = edges.rows("month")
    assert rates(m[dt.date(2021, 2, 1)]) == approx(1.0, 1.0, 0.0, 0.0, 1.0, 0.0, False)
    for k in (2, 3, 4, 5):
        assert m[dt.date(2021, k, 1)]["arpa"] is None, k
    for k in (3, 4, 5, 6):
        assert rates(m[dt.date(2021, k, 1)]) == [None] * 7, k
    assert m[dt.date(2021, 6, 1)]["arpa"] == 20
    for k in (7, 12):
        assert rates(m[dt.date(2021, k, 1)]) == approx(0.0, 0.0, 1.0, 1.0, 0.0, None, False), k
        assert m[dt.date(2021, k, 1)]["arpa"] == 20, k
    y2022 = edges.rows("year")[dt.date(2022, 1, 1)]
    assert cells(y2022) == quiet(20, 1) and rates(y2022) == approx(0.0, 0.0, 1.0, 1.0, 0.0, None, False)
    q2 = edges.rows("quarter")[dt.date(2021, 4, 1)]
    assert cells(q2) == flows(0, 20, (0, 0, 1, 0, 1), reactivation=20) and rates(q2) == [None] * 7
    week = edges.rows("week")[dt.date(2021, 3, 15)]
    assert cells(week) == quiet(0, 0) and rates(week) == [None] * 7 and week["arpa"] is None


def test_the_readme_ltv_over_the_quiet_months(edges: Derived) -> None:
    """README's LTV recipe: ARPA / monthly customer churn rate, and ARPA over the trailing twelve months' rate (their
    churned customers / their opening customers; the rows run from December 2020). February 2021: 4 of 4 churned but
    no ARPA: NULL both. July 2021: ARPA 20, no churn (NULL); December 2020 to July 2021 opened with 0 + 2 + 4 + 0 + 0
    + 0 + 0 + 1 = 7 customers, 4 churned: 20 x 7 / 4 = 35.00. December 2021: January to December opened with 2 + 4 +
    6 x 1 = 12: 60.00. February 2022: March 2021 to February 2022 hold no churn: NULL. December 2023: e1's 7.00
    opens no customer (NULL rate); January to December 2023 opened with 11 x 1 customers, 1 churned: 77.00. April
    2024: ARPA 12 / 2 = 6 and 1 of 3 churned: 18.00; May 2023 to April 2024 opened with 7 + 0 + 1 + 2 + 3 + 3 = 16,
    3 churned (w1, e3, e2): 32.00."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (recipe,) = [b for b in re.findall(r"```sql\n(.*?)```", readme, flags=re.S)
                 if b.startswith("SELECT period_start, arpa, customer_churn_rate,")]
    assert recipe.rstrip().endswith("LIMIT 12;")
    got = {r[0]: r[1:] for r in edges.con.execute(recipe.rstrip()[:-len("LIMIT 12;")]).fetchall()}
    assert got[dt.date(2021, 2, 1)] == (None, 1.0, None, None)
    assert got[dt.date(2021, 4, 1)] == (None, None, None, None)
    assert got[dt.date(2021, 7, 1)] == (D("20.0000"), 0.0, None, D("35.00"))
    assert got[dt.date(2021, 12, 1)][2:] == (None, D("60.00"))
    assert got[dt.date(2022, 2, 1)][2:] == (None, None)
    assert got[dt.date(2023, 12, 1)] == (D("7.0000"), None, None, D("77.00"))
    assert got[dt.date(2024, 4, 1)][0] == D("6.0000") and got[dt.date(2024, 4, 1)][2:] == (D("18.00"), D("32.00"))


def test_the_edges_quarter_by_quarter(edges: Derived) -> None:
    """Q1 2024 opens with e1 alone (7.00, 1 customer): new e2 11 + e3 13 + e6 5, e3's churn 13 at its last second;
    e3 was not there at the quarter's start, so 0 of 1 opening customers churned; gross 13 / 7, NRR and GRR
    (7 - 13) / 7, quick ratio 29 / 13. Q2 opens at 23 (e1, e2, e6): e2's churn at 00:00:00 of 1 April is Q2's, e4's
    new 30 and upgrade 20: 1 of 3 churned, net (11 - 20) / 23, net negative, NRR 32 / 23, GRR 12 / 23, quick ratio
    50 / 11. Q3 holds e9's and e7's new (23) and e7's churn (6, e7 not an opening customer: 0 of 3); nothing of e4's
    switch or e9's netted one. Q4 e5's 3 and +1: quick ratio NULL (nothing lost). 2025's Q3: k1 out and back, k2 in
    and out: 1 new, 1 reactivated, 2 churned customers, 9 at either end, 1 of 9 opening ones churned; Q4: k3 out and
    back, one churned and one reactivated customer, net (3 - 4) / 214."""
    q = dt.date
    busy = {q(2020, 10, 1): flows(0, 3, (0, 2, 0, 0, 2), new=3),
            q(2021, 1, 1): flows(3, 0, (2, 2, 0, 4, 0), new=8, churn=11),
            q(2021, 4, 1): flows(0, 20, (0, 0, 1, 0, 1), reactivation=20),
            q(2023, 10, 1): flows(20, 7, (1, 1, 0, 1, 1), new=7, churn=20),
            q(2024, 1, 1): flows(7, 23, (1, 3, 0, 1, 3), new=29, churn=13),
            q(2024, 4, 1): flows(23, 62, (3, 1, 0, 1, 3), new=30, expansion=20, churn=11),
            q(2024, 7, 1): flows(62, 79, (3, 2, 0, 1, 4), new=23, churn=6),
            q(2024, 10, 1): flows(79, 83, (4, 1, 0, 0, 5), new=3, expansion=1),
            q(2025, 1, 1): flows(83, 214, (5, 4, 0, 0, 9), new=131),
            q(2025, 7, 1): flows(214, 214, (9, 1, 1, 2, 9), new=5, reactivation=9, churn=14),
            q(2025, 10, 1): flows(214, 215, (9, 0, 1, 1, 9), reactivation=4, churn=3)}
    assert edges.cells("quarter") == expect("quarter", q(2020, 10, 1), busy)
    got = edges.rows("quarter")
    assert rates(got[q(2021, 1, 1)]) == approx(11 / 3, 11 / 3, -8 / 3, -8 / 3, 1.0, 8 / 11, False)
    assert rates(got[q(2023, 10, 1)]) == approx(1.0, 1.0, 0.0, 0.0, 1.0, 7 / 20, False)
    assert rates(got[q(2024, 1, 1)]) == approx(13 / 7, 13 / 7, -6 / 7, -6 / 7, 0.0, 29 / 13, False)
    assert rates(got[q(2024, 4, 1)]) == approx(11 / 23, -9 / 23, 32 / 23, 12 / 23, 1 / 3, 50 / 11, True)
    assert rates(got[q(2024, 7, 1)]) == approx(6 / 62, 6 / 62, 56 / 62, 56 / 62, 0.0, 23 / 6, False)
    assert rates(got[q(2024, 10, 1)]) == approx(0.0, -1 / 79, 80 / 79, 1.0, 0.0, None, True)
    assert rates(got[q(2025, 7, 1)]) == approx(14 / 214, 5 / 214, 200 / 214, 200 / 214, 1 / 9, 1.0, False)
    assert rates(got[q(2025, 10, 1)]) == approx(3 / 214, -1 / 214, 211 / 214, 211 / 214, 1 / 9, 4 / 3, True)
    assert [got[q(2024, m, 1)]["period_end"] for m in (1, 4, 7, 10)] == [
        q(2024, 3, 31), q(2024, 6, 30), q(2024, 9, 30), q(2024, 12, 31)]


def test_the_edges_year_by_year(edges: Derived) -> None:
    """Per year: 2020 new 1 + 2 (w2's 3 January is 2021's, though ISO counts it in 2020's week 53). 2021 opens at 3
    (w0, w1): w2, w3 new 8, all four churned (11; customer churn 2 / 2), w1 back with 20: net (11 - 20) / 3 = -3 (net
    negative while NRR is (3 - 11) / 3), quick ratio 28 / 11. 2022 quiet at 20. 2023: w1's churn (20) and e1's 7 at
    its last second: 1 of 1 churned, quick ratio 7 / 20. 2024 opens at 7 with e1: new 11 + 13 + 5 + 30 + 17 + 6 + 3 =
    85 (7 customers), expansion 20 + 1, churn 13 + 11 + 6 = 30, closing 83 (e1, e6, e4, e9, e5): e1, the only opening
    customer, stayed (customer churn 0), gross 30 / 7, net (30 - 21) / 7, NRR (7 + 21 - 30) / 7, GRR (7 - 30) / 7,
    quick ratio 106 / 30, ARPA 83 / 5 = 16.6. 2025 opens at 83 (5 customers): e10's 19 at 00:00:00 of 1 January and
    the k customers: new 19 + 112 + 5 = 136, reactivation 9 + 4, churn 9 + 5 + 3 = 17, closing 215; 5 new, 2
    reactivated, 3 churned, 9 closing customers, none of the opening 5 churned; ARPA 215 / 9 = 23.8889."""
    y = dt.date
    busy = {y(2020, 1, 1): flows(0, 3, (0, 2, 0, 0, 2), new=3),
            y(2021, 1, 1): flows(3, 20, (2, 2, 1, 4, 1), new=8, reactivation=20, churn=11),
            y(2023, 1, 1): flows(20, 7, (1, 1, 0, 1, 1), new=7, churn=20),
            y(2024, 1, 1): flows(7, 83, (1, 7, 0, 3, 5), new=85, expansion=21, churn=30),
            y(2025, 1, 1): flows(83, 215, (5, 5, 2, 3, 9), new=136, reactivation=13, churn=17)}
    assert edges.cells("year") == expect("year", y(2020, 1, 1), busy)
    got = edges.rows("year")
    assert rates(got[y(2020, 1, 1)]) == [None] * 7
    assert rates(got[y(2021, 1, 1)]) == approx(11 / 3, -3.0, -8 / 3, -8 / 3, 1.0, 28 / 11, True)
    assert rates(got[y(2023, 1, 1)]) == approx(1.0, 1.0, 0.0, 0.0, 1.0, 7 / 20, False)
    assert rates(got[y(2024, 1, 1)]) == approx(30 / 7, 9 / 7, -2 / 7, -23 / 7, 0.0, 106 / 30, False)
    assert rates(got[y(2025, 1, 1)]) == approx(17 / 83, 4 / 83, 66 / 83, 66 / 83, 0.0, 149 / 17, False)
    assert [got[y(k, 1, 1)]["arpa"] for k in (2020, 2021, 2023, 2024, 2025)] == [
        D("1.5"), D("20"), D("7"), D("16.6"), D("23.8889")]
    assert got[y(2024, 1, 1)]["period_end"] == y(2024, 12, 31)


def test_the_edges_week_by_week(edges: Derived) -> None:
    """README: a week runs from Monday 00:00 to Sunday, UTC (ISO weeks). 2020 has 53 ISO weeks: the week of Monday
    28 December 2020 (W53) ends on Sunday 3 January 2021 and holds w1 (its first second) and w2 (its last), while w0
    (Sunday 27 December 23:59:59) is W52's and w3 (Monday 4 January 00:00:00) 2021's W1. Sunday 31 December 2023
    23:59:59 and Monday 1 January 2024 00:00:00 split the week as the month, quarter and year; Sunday 31 March and
    Monday 1 April 2024 too (e6's new window and e3's churn, e2's churn); e4's upgrade at Sunday 30 June 23:40 is the
    week of 24 June, nothing in the week of 1 July; the week of Monday 30 December 2024 holds e5's +1 and e10's 19.
    k2, new on 2 September 2025, opens the week of 15 September, so its churn there is 1 of 10 opening customers;
    k3's Friday and Saturday are one week (27 October): 1 churned and 1 reactivated customer, 1 of 9."""
    assert dt.date(2020, 12, 28).isocalendar()[:2] == (2020, 53)
    w = dt.date
    busy = {w(2020, 12, 21): flows(0, 1, (0, 1, 0, 0, 1), new=1),
            w(2020, 12, 28): flows(1, 6, (1, 2, 0, 0, 3), new=5),
            w(2021, 1, 4): flows(6, 11, (3, 1, 0, 0, 4), new=5),
            w(2021, 2, 15): flows(11, 0, (4, 0, 0, 4, 0), churn=11),
            w(2021, 5, 31): flows(0, 20, (0, 0, 1, 0, 1), reactivation=20),
            w(2023, 11, 13): flows(20, 0, (1, 0, 0, 1, 0), churn=20),
            w(2023, 12, 25): flows(0, 7, (0, 1, 0, 0, 1), new=7),
            w(2024, 1, 1): flows(7, 18, (1, 1, 0, 0, 2), new=11),
            w(2024, 2, 12): flows(18, 31, (2, 1, 0, 0, 3), new=13),
            w(2024, 3, 25): flows(31, 23, (3, 1, 0, 1, 3), new=5, churn=13),
            w(2024, 4, 1): flows(23, 12, (3, 0, 0, 1, 2), churn=11),
            w(2024, 5, 6): flows(12, 42, (2, 1, 0, 0, 3), new=30),
            w(2024, 6, 24): flows(42, 62, (3, 0, 0, 0, 3), expansion=20),
            w(2024, 8, 12): flows(62, 85, (3, 2, 0, 0, 5), new=23),
            w(2024, 9, 30): flows(85, 79, (5, 0, 0, 1, 4), churn=6),
            w(2024, 10, 14): flows(79, 82, (4, 1, 0, 0, 5), new=3),
            w(2024, 12, 30): flows(82, 102, (5, 1, 0, 0, 6), new=19, expansion=1),
            w(2025, 2, 3): flows(102, 214, (6, 3, 0, 0, 9), new=112),
            w(2025, 8, 4): flows(214, 205, (9, 0, 0, 1, 8), churn=9),
            w(2025, 8, 18): flows(205, 214, (8, 0, 1, 0, 9), reactivation=9),
            w(2025, 9, 1): flows(214, 219, (9, 1, 0, 0, 10), new=5),
            w(2025, 9, 15): flows(219, 214, (10, 0, 0, 1, 9), churn=5),
            w(2025, 10, 27): flows(214, 215, (9, 0, 1, 1, 9), reactivation=4, churn=3)}
    assert edges.cells("week") == expect("week", w(2020, 12, 21), busy)
    got = edges.rows("week")
    assert [(p, got[p]["period_end"]) for p in (w(2020, 12, 21), w(2020, 12, 28), w(2021, 1, 4))] == [
        (w(2020, 12, 21), w(2020, 12, 27)), (w(2020, 12, 28), w(2021, 1, 3)), (w(2021, 1, 4), w(2021, 1, 10))]
    assert [got[p]["customer_churn_rate"] for p in (w(2025, 8, 4), w(2025, 9, 15), w(2025, 10, 27))] == approx(
        1 / 9, 1 / 10, 1 / 9)


def test_customer_mrr_at_the_edges_agrees_with_the_bridge(edges: Derived) -> None:
    """README: customer_mrr has one row per level after the window's netting, so it agrees with the bridge at every
    moment; a period's opening (customers and MRR) is the state just before its first instant, by the README's
    query, at every period start of every kind. 1 April 2024: opening e1 7 + e2 11 + e6 5 (e6's 5 from 31 March
    23:30, its 2 seats never a level) = 23, 3 customers; at the instant 7 + 5 (e2 ends then). 30 June 23:50: e4 at
    50 already, between its old plan's end and its new plan's start. 30 September 23:59: e9 still 17 (its comeback
    nets the cancel away), e7 none since 23:35. 1 January 2025: opening 7 + 5 + 50 + 17 + 4 = 83 (e5's 5 seats never
    a level), at the instant 102 (e10's 19). e8's half hour is no level."""
    sql = ("SELECT CAST(d AS DATE), count(c.mrr) FILTER (WHERE c.mrr > 0), coalesce(sum(c.mrr), 0) "
           "FROM unnest(CAST(? AS DATE[])) AS p(d) LEFT JOIN customer_mrr c "
           "ON c.valid_from < CAST(p.d AS TIMESTAMPTZ) "
           "AND (c.valid_to IS NULL OR c.valid_to >= CAST(p.d AS TIMESTAMPTZ)) GROUP BY ALL")
    firsts = {r["period_start"]: (r["opening_customers"], r["opening_mrr"])
              for kind in KINDS for r in edges.bridge(kind)}
    openings = {r[0]: (r[1], r[2]) for r in edges.con.execute(sql, [sorted(firsts)]).fetchall()}
    assert openings == firsts
    assert openings[dt.date(2024, 4, 1)] == (3, D("23")) and openings[dt.date(2025, 1, 1)] == (5, D("83"))

    def at_the_instant(t: int) -> dict[str, Decimal]:
        return dict(edges.con.execute(
            "SELECT customer_id, mrr FROM customer_mrr WHERE valid_from <= to_timestamp(?) "
            "AND (valid_to IS NULL OR valid_to > to_timestamp(?)) AND mrr <> 0", [t, t]).fetchall())

    assert at_the_instant(at(2024, 4, 1)) == {"e1": D("7"), "e6": D("5")}
    assert at_the_instant(ts(2024, 3, 31, 23, 45))["e6"] == D("5")
    assert at_the_instant(ts(2024, 6, 30, 23, 50))["e4"] == D("50")
    moment = at_the_instant(ts(2024, 9, 30, 23, 59))
    assert moment["e9"] == D("17") and "e7" not in moment
    assert at_the_instant(ts(2024, 12, 31, 23, 55))["e5"] == D("4")
    assert sum(at_the_instant(at(2025, 1, 1)).values()) == D("102")
    assert edges.con.execute("SELECT count(*) FROM customer_mrr WHERE customer_id = 'e8' AND mrr <> 0").fetchall() == [
        (0,)]


def test_a_plan_switch_across_midnight_moves_its_segment_at_the_next_period(edges: Derived) -> None:
    """README (segments): a customer belongs for a period to the segment of its state at the period's start and
    takes its closing MRR to its new segment at the next period's start, with no flow. e4's switch from std to prem
    is dated 30 June 23:40, so June, Q2 and the week of 24 June are std's (opening 30, upgrade 20, closing 50); at
    July's, Q3's and the week of 1 July's start e4 is prem's: std opens at 0, prem at 50, and neither moves."""
    for kind, june, july in (("month", dt.date(2024, 6, 1), dt.date(2024, 7, 1)),
                             ("quarter", dt.date(2024, 4, 1), dt.date(2024, 7, 1)),
                             ("week", dt.date(2024, 6, 24), dt.date(2024, 7, 1))):
        got = {(r["segment_value"], r["period_start"]): r for r in edges.bridge(kind, "plan")}
        opening = 0 if kind == "quarter" else 30  # (Q2 holds e4's new too)
        assert cells(got[("std", june)])[:8] == flows(opening, 50, (0,) * 5, new=30 - opening, expansion=20)[:8]
        assert cells(got[("std", july)])[:8] == quiet(0, 0)[:8], kind
        assert cells(got[("prem", july)]) == quiet(50, 1), kind
        assert ("prem", june) not in got, kind


def test_cohorts_start_in_the_month_of_the_first_change(edges: Derived) -> None:
    """README: a cohort is the customers whose first `new` falls in one UTC month; starting_mrr is its MRR at that
    month's end. w0 and w1 (27 December 2020 23:59:59 and 28 December 00:00:00) start December 2020's at 3.00, all
    gone in February 2021, and w1's comeback in June 2021 brings 20.00 to it; w2 (3 January 2021 23:59:59, in ISO
    week 53 of 2020) and w3 start January 2021's at 8.00; e1 (31 December 2023 23:59:59) is December 2023's cohort, e2
    (1 January 2024 00:00:00) January's, gone at April's first second; e6's window makes it March 2024's at 5.00; e9
    and e7 start August 2024's at 23.00, 17.00 at September's end (e7's churn at 23:35 on the 30th); e10 is January
    2025's (its December was a trial); k2 starts and leaves in September 2025: a cohort of 1 with no starting MRR."""
    got = {(r["cohort_month"], r["month"]): (r["cohort_customers"], r["active_customers"], r["starting_mrr"],
                                             r["mrr"])
           for r in queries.cohort_matrix(edges.con)}
    d = dt.date
    assert got[(d(2020, 12, 1), d(2020, 12, 1))] == (2, 2, D("3"), D("3"))
    assert got[(d(2020, 12, 1), d(2021, 2, 1))] == (2, 0, D("3"), D("0"))
    assert got[(d(2020, 12, 1), d(2021, 6, 1))] == (2, 1, D("3"), D("20"))
    assert got[(d(2021, 1, 1), d(2021, 1, 1))] == (2, 2, D("8"), D("8"))
    assert got[(d(2023, 12, 1), d(2024, 4, 1))] == (1, 1, D("7"), D("7"))
    assert got[(d(2024, 1, 1), d(2024, 3, 1))] == (1, 1, D("11"), D("11"))
    assert got[(d(2024, 1, 1), d(2024, 4, 1))] == (1, 0, D("11"), D("0"))
    assert got[(d(2024, 3, 1), d(2024, 3, 1))] == (1, 1, D("5"), D("5"))
    assert got[(d(2024, 8, 1), d(2024, 9, 1))] == (2, 1, D("23"), D("17"))
    assert (d(2024, 12, 1), d(2024, 12, 1)) not in got
    assert got[(d(2025, 1, 1), d(2025, 1, 1))] == (1, 1, D("19"), D("19"))
    assert got[(d(2025, 9, 1), d(2025, 9, 1))] == (1, 0, D("0"), D("0"))


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Pacific/Pago_Pago"])
def test_the_periods_are_utcs_in_a_session_of_any_time_zone(edges: Derived, zone: str) -> None:
    """README: periods are UTC's, and mrr_bridge_for and churn_reasons_for cut them the same way. Read in a session
    set to UTC+14 (Sunday 31 December 2023 23:59:59 UTC is Monday 1 January 13:59:59 there) or UTC-11 (Monday 1
    January 2024 00:00:00 UTC is Sunday 31 December 13:00 there), every period kind gives the rows it gives in UTC,
    which the tests above worked out by hand; so do the churn reasons (e3's churn in the week of 25 March, e2's in
    the week of 1 April, e7's in the week of 30 September)."""
    cur = edges.con.cursor()
    try:
        cur.execute(f"SET TimeZone = '{zone}'")
        for kind in KINDS:
            assert queries.bridge(cur, kind) == edges.bridge(kind), kind
        reasons = queries.churn_reasons(cur, "week")
        assert reasons == queries.churn_reasons(edges.con, "week")
        weekly = {r["period_start"]: r["churned_mrr"] for r in reasons}
        assert [weekly[d] for d in (dt.date(2024, 3, 25), dt.date(2024, 4, 1), dt.date(2024, 9, 30))] == [
            D("13"), D("11"), D("6")]
    finally:
        cur.close()


# --- interval normalisation and where it rounds -----------------------------------------------------------------------

ROUNDING_SEEN = ts(2025, 3, 20)


def rounding_world() -> World:
    """r1: six subscriptions from Monday 6 January 2025 10:00, each one item of its own product (no family, no unit
    label: licensed seats): 0.10 a day, 0.10 a week, 1.00 every 3 months, 1.00 every 6 months, 1.00 every 2 weeks,
    9.00 every 90 days. r2: one subscription from 11:00 with three items of 1.00 a week (products wa, wb, wc). r3:
    10.00 every 2 weeks from 14 February 10:00 with 3.00 off for a month (to 14 March 10:00). r1 cancels its 6-month
    subscription on 10 February and takes a second daily seat on 10 March; r2 drops wc on 12 February and wb on 12
    March."""
    w = World()
    for pid, amount, interval, count in (("day", 10, "day", 1), ("week", 10, "week", 1), ("3m", 100, "month", 3),
                                         ("6m", 100, "month", 6), ("2w", 100, "week", 2), ("90d", 900, "day", 90),
                                         ("wa", 100, "week", 1), ("wb", 100, "week", 1), ("wc", 100, "week", 1),
                                         ("2w10", 1_000, "week", 2)):
        w.product(f"prod_{pid}")
        w.price(f"p_{pid}", f"prod_{pid}", amount, interval=interval, interval_count=count)
    for c in ("r1", "r2", "r3"):
        w.customer(c)
    for pid in ("day", "week", "3m", "6m", "2w", "90d"):
        w.subscribe(f"s_{pid}", "r1", [(f"i_{pid}", f"p_{pid}", 1)], ts(2025, 1, 6, 10))
    w.subscribe("s_r2", "r2", [("i_wa", "p_wa", 1), ("i_wb", "p_wb", 1), ("i_wc", "p_wc", 1)], ts(2025, 1, 6, 11))
    w.coupon("off3", amount_off=300, currency="usd", duration="repeating", duration_in_months=1)
    off = w.discount("off3", ts(2025, 2, 14, 10), customer="r3", subscription="s_r3")
    w.subscribe("s_r3", "r3", [("i_r3", "p_2w10", 1)], ts(2025, 2, 14, 10), discounts=[off["id"]])
    w.cancel("s_6m", ts(2025, 2, 10, 10))
    w.update("s_r2", ts(2025, 2, 12, 10), items=[("i_wa", "p_wa", 1), ("i_wb", "p_wb", 1)])
    w.update("s_day", ts(2025, 3, 10, 10), items=[("i_day", "p_day", 2)])
    w.update("s_r2", ts(2025, 3, 12, 10), items=[("i_wa", "p_wa", 1)])
    return w


@pytest.fixture(scope="module")
def rounded(tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path) -> Iterator[Derived]:
    yield from derived(tmp_path_factory, migrated_store_file, rounding_world(), ROUNDING_SEEN, dt.date(2025, 1, 6))


def test_interval_normalisation_rounds_once_per_customer(rounded: Derived) -> None:
    """design.md 4 (year / 12, month x 1, week x 52/12, day x 365/12, each / interval_count; money DECIMAL(18,4))
    and docs/internals.md (rounded once, at the customer level, half away from zero; mrr_delta = after - before of
    the rounded levels; an amount off is per billing period, normalised the same way). r1's items: 0.10 x 365/12 =
    73/24 (3.041666...), 0.10 x 52/12 = 13/30 (0.4333...), 1/3, 1/6, 52/24 = 13/6 (2.1666...), 9.00 x 365 / (12 x
    90) = 73/24: 551/60 = 9.18333... -> 9.1833 (each item rounded first would add up to 9.1834). Without the 6-month
    item 541/60 = 9.01666... -> 9.0167: the downgrade is -0.1666 (the item alone rounds to 0.1667). With a second
    daily seat 1447/120 = 12.058333... -> 12.0583: +3.0416 (the seat alone 3.0417). r2: 3 x 52/12 = 13.0000 exactly
    (three items rounded first: 12.9999), 26/3 -> 8.6667 (-4.3333), 13/3 -> 4.3333 (-4.3334: the same item's size,
    rounded the other way). r3: (10.00 - 3.00) x 52/24 = 91/6 -> 15.1667, and 10.00 x 52/24 = 65/3 -> 21.6667 when
    the amount off ends: a discount row of +6.5000 (3.00 x 52/24 exactly)."""
    got = [(r[0], r[1].astimezone(UTC), r[2], r[3], r[4], r[5]) for r in rounded.con.execute(
        "SELECT customer_id, occurred_at, movement, mrr_before, mrr_after, mrr_delta FROM mrr_movements "
        "ORDER BY customer_id, occurred_at").fetchall()]
    assert got == [
        ("r1", utc(ts(2025, 1, 6, 10)), "new", D("0"), D("9.1833"), D("9.1833")),
        ("r1", utc(ts(2025, 2, 10, 10)), "downgrade", D("9.1833"), D("9.0167"), D("-0.1666")),
        ("r1", utc(ts(2025, 3, 10, 10)), "seat_expansion", D("9.0167"), D("12.0583"), D("3.0416")),
        ("r2", utc(ts(2025, 1, 6, 11)), "new", D("0"), D("13.0000"), D("13.0000")),
        ("r2", utc(ts(2025, 2, 12, 10)), "downgrade", D("13.0000"), D("8.6667"), D("-4.3333")),
        ("r2", utc(ts(2025, 3, 12, 10)), "downgrade", D("8.6667"), D("4.3333"), D("-4.3334")),
        ("r3", utc(ts(2025, 2, 14, 10)), "new", D("0"), D("15.1667"), D("15.1667")),
        ("r3", utc(ts(2025, 3, 14, 10)), "discount", D("15.1667"), D("21.6667"), D("6.5000"))]
    levels = [(r[0], r[1].astimezone(UTC), r[2]) for r in rounded.con.execute(
        "SELECT customer_id, valid_from, mrr FROM customer_mrr ORDER BY customer_id, valid_from").fetchall()]
    assert levels == [(c, t, after) for c, t, _, _, after, _ in got]
    assert rounded.con.execute("SELECT DISTINCT typeof(mrr) FROM customer_mrr").fetchall() == [("DECIMAL(18,4)",)]


def test_the_bridge_adds_the_rounded_customer_amounts(rounded: Derived) -> None:
    """design.md 6 (the identity exactly) over the amounts above, which the bridge adds as they are. January: new
    9.1833 + 13.0000 = 22.1833, ARPA 22.1833 / 2 = 11.09165, half up 11.0917. February: new 15.1667 (r3),
    contraction 0.1666 + 4.3333 = 4.4999 (downgrade), closing 9.0167 + 8.6667 + 15.1667 = 32.8501, ARPA 32.8501 / 3
    = 10.950033... -> 10.9500. March: expansion 3.0416 (seat) + 6.5000 (discount), contraction 4.3334, closing
    12.0583 + 4.3333 + 21.6667 = 38.0583, ARPA 12.6861. Q1 and the year: new 37.3500, expansion 9.5416, contraction
    8.8333, closing 38.0583."""
    m = dt.date
    busy = {m(2025, 1, 1): flows(0, "22.1833", (0, 2, 0, 0, 2), new="22.1833"),
            m(2025, 2, 1): flows("22.1833", "32.8501", (2, 1, 0, 0, 3), new="15.1667", contraction="4.4999"),
            m(2025, 3, 1): flows("32.8501", "38.0583", (3, 0, 0, 0, 3), expansion="9.5416", contraction="4.3334")}
    assert rounded.cells("month") == expect("month", m(2025, 1, 1), busy)
    months = rounded.rows("month")
    assert [months[m(2025, k, 1)]["arpa"] for k in (1, 2, 3, 4)] == [D("11.0917"), D("10.9500"), D("12.6861"),
                                                                    D("12.6861")]
    assert (months[m(2025, 2, 1)]["downgrade"], months[m(2025, 3, 1)]["downgrade"],
            months[m(2025, 3, 1)]["seat_expansion"], months[m(2025, 3, 1)]["discount_expansion"]) == (
        D("4.4999"), D("4.3334"), D("3.0416"), D("6.5"))
    assert rates(months[m(2025, 2, 1)]) == approx(4.4999 / 22.1833, 4.4999 / 22.1833, 17.6834 / 22.1833,
                                                  17.6834 / 22.1833, 0.0, 15.1667 / 4.4999, False)
    q1 = flows(0, "38.0583", (0, 3, 0, 0, 3), new="37.35", expansion="9.5416", contraction="8.8333")
    assert rounded.cells("quarter")[m(2025, 1, 1)] == q1
    assert rounded.cells("year")[m(2025, 1, 1)] == q1


# --- both stores: one period runs into the next -----------------------------------------------------------------------

@pytest.mark.parametrize("store", ["edges", "rounded"])
def test_each_period_opens_where_the_one_before_closed(request: pytest.FixtureRequest, store: str) -> None:
    """design.md 6: opening + new + reactivation + expansion - contraction - churn + fx = closing exactly, for every
    period kind; each period opens with the MRR and customers the one before closed with, starts the day after it
    ends (a week on Monday), and the rows run from the period of the first movement through the current one."""
    got: Derived = request.getfixturevalue(store)
    for kind in KINDS:
        rows = got.bridge(kind)
        assert [r["period_start"] for r in rows] == starts(kind, got.first, today()), kind
        for r in rows:
            assert (r["opening_mrr"] + r["new"] + r["reactivation"] + r["expansion"] - r["contraction"] - r["churn"]
                    + r["fx"]) == r["closing_mrr"], (kind, r["period_start"])
            assert r["period_end"] == next_start(kind, r["period_start"]) - dt.timedelta(days=1), kind
        for before, after in itertools.pairwise(rows):
            assert (after["opening_mrr"], after["opening_customers"]) == (
                before["closing_mrr"], before["closing_customers"]), (kind, after["period_start"])
        assert rows[0]["opening_mrr"] == 0 and rows[0]["opening_customers"] == 0, kind


# --- the calendar of one customer: a leap day, an anchor on the 31st --------------------------------------------------

def movements(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return [(r[0].astimezone(UTC), *r[1:]) for r in con.execute(
        "SELECT occurred_at, movement, mrr_delta FROM mrr_movements ORDER BY occurred_at, movement").fetchall()]


def levels_of(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return [(r[0].astimezone(UTC), None if r[1] is None else r[1].astimezone(UTC), r[2]) for r in con.execute(
        "SELECT valid_from, valid_to, mrr FROM customer_mrr ORDER BY valid_from").fetchall()]


@pytest.mark.parametrize("events", [True, False], ids=["events", "invoices-and-dates"])
@one_store
def test_an_annual_plan_begun_on_a_leap_day(world: World, derive: Derive, events: bool) -> None:
    """design.md 4: a yearly price counts / 12 whatever the year's length: 1,000.00 a year is 83.3333 a month from
    Thursday 29 February 2024. Stripe keeps the anchor's day where the month has it: renewals on 28 February 2025,
    2026 and 2027 and on Tuesday 29 February 2028 (a period of 366 days from 28 February 2027). Seen on 10 March 2028
    (Stripe's clock ahead of this machine's, as a test clock may be): one `new` of 83.3333 and no other movement or
    level, whether the history comes from the events or from the invoices and dates; nothing for data_quality."""
    world.customer("cus_1")
    world.product("prod_core", unit_label="seat", family="core")
    world.price("annual", "prod_core", 100_000, interval="year")
    world.subscribe("sub_1", "cus_1", [("si_1", "annual", 1)], ts(2024, 2, 29))
    renewals = [ts(2025, 2, 28), ts(2026, 2, 28), ts(2027, 2, 28), ts(2028, 2, 29), ts(2029, 2, 28)]
    for renewal, end in itertools.pairwise(renewals):
        stripe_periods(world, world.cycle("sub_1", renewal), "sub_1", end)
    con = derive(world, seen_at=ts(2028, 3, 10), events=events)
    assert movements(con) == [(utc(ts(2024, 2, 29)), "new", D("83.3333"))]
    assert levels_of(con) == [(utc(ts(2024, 2, 29)), None, D("83.3333"))]
    assert con.execute("SELECT kind, object_id, detail FROM data_quality").fetchall() == []


@pytest.mark.parametrize("events", [True, False], ids=["events", "invoices-and-dates"])
@one_store
def test_a_monthly_plan_anchored_on_the_31st_through_february_and_april(world: World, derive: Derive,
                                                                       events: bool) -> None:
    """design.md 4: a monthly price counts x 1 whatever the month's length. 25.00 a month from 31 January 2024 10:00;
    Stripe's renewals on 29 February, 31 March, 30 April and 31 May (periods of 29, 31, 30 and 31 days); a second
    seat on 15 April 10:00 (prorated to 30 April). One `new` of 25.00 and one seat_expansion of +25.00 on 15 April,
    nothing at any renewal, whether from the events or from the invoices and dates; nothing for data_quality."""
    world.customer("cus_1")
    world.product("prod_core", unit_label="seat", family="core")
    world.price("monthly", "prod_core", 2_500)
    world.subscribe("sub_1", "cus_1", [("si_1", "monthly", 1)], ts(2024, 1, 31, 10))
    ends = [ts(2024, 2, 29, 10), ts(2024, 3, 31, 10), ts(2024, 4, 30, 10), ts(2024, 5, 31, 10), ts(2024, 6, 30, 10)]
    for renewal, end in itertools.pairwise(ends):
        if renewal == ends[2]:
            world.update("sub_1", ts(2024, 4, 15, 10), items=[("si_1", "monthly", 2)])
        stripe_periods(world, world.cycle("sub_1", renewal), "sub_1", end)
    con = derive(world, seen_at=ts(2024, 6, 10), events=events)
    assert movements(con) == [(utc(ts(2024, 1, 31, 10)), "new", D("25.0000")),
                              (utc(ts(2024, 4, 15, 10)), "seat_expansion", D("25.0000"))]
    assert levels_of(con) == [(utc(ts(2024, 1, 31, 10)), utc(ts(2024, 4, 15, 10)), D("25.0000")),
                              (utc(ts(2024, 4, 15, 10)), None, D("50.0000"))]
    assert con.execute("SELECT kind, object_id, detail FROM data_quality").fetchall() == []
