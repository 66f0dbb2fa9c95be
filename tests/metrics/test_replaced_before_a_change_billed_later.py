"""An item put in place of another without prorations before the events begin, then changed with prorations
before the renewal that would first bill it, that renewal coming after the events begin (an annual plan, or a
change late in the month): the new item's first lines are that change's credit and new line (pending invoice
items, or a subscription_update invoice), and the old item's last billed period ends inside the events' coverage,
so nothing before it dates the old item's end; the first state the events give no longer lists it. It ends at the
new item's `created`, a plan switch, as when the renewal came before the events (test_item_changed_before_first_
renewal.py). (Found by scripts/truth_check.py --no-prorations --later-trials, 1,500 x 24 seed 7: the old item
counted until the events began, the new one from its `created`, a seat_expansion then a seat_contraction.)"""

from __future__ import annotations

from collections.abc import Callable

import duckdb
import pytest
from builders import DAY, World
from conftest import customer_mrr_at
from test_history_item_created import ADDED, T0, account, month, movements

Derive = Callable[..., duckdb.DuckDBPyConnection]
CHANGED = ADDED + 5 * DAY  # the change with prorations, before the renewal of month(2)
EVENTS_FROM = month(1, 20)  # the oldest event kept: after the change, before the renewal


@pytest.mark.parametrize("pending", [True, False], ids=["pending-prorations", "invoiced-prorations"])
def test_an_item_replaced_before_the_events_and_changed_before_its_first_renewal_inside_them(
        world: World, derive: Derive, pending: bool) -> None:
    """pro's 3 seats in place of basic's (a new item, 10.00 to 20.00 a seat) on the 11th without prorations; a
    fourth pro seat five days later with prorations; the events begin on the 21st, before the renewal of month(2).
    basic ends on the 11th (it counted until the 21st beside pro: 60 more from the 11th, 30 less on the 21st)."""
    account(world)
    world.update("sub_1", ADDED, items=[("si_2", "pro", 3)], prorate=False)
    world.update("sub_1", CHANGED, items=[("si_2", "pro", 4)], pending=pending)
    world.subscribe("sub_o", "cus_o", [("si_o", "basic", 1)], EVENTS_FROM)
    con = derive(world, seen_at=month(1, 25), events=EVENTS_FROM)
    assert movements(con) == [(T0, "new", 30), (ADDED, "upgrade", 30), (CHANGED, "seat_expansion", 20)]
    assert customer_mrr_at(con, "cus_1", ADDED - 1) == 30
    assert customer_mrr_at(con, "cus_1", ADDED) == 60
    assert customer_mrr_at(con, "cus_1", CHANGED) == 80
    assert customer_mrr_at(con, "cus_1", EVENTS_FROM + DAY) == 80
