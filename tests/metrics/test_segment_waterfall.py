"""A segment's waterfall (report --segment KIND=VALUE --chart/--html) adds up when a customer moves into the
segment within the range: the MRR it brings is a step of its own."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import duckdb
from builders import World, ts
from test_bridge import catalogue

from stripe_churn.metrics import queries
from stripe_churn.report.charts import waterfall_steps


def test_a_customer_moving_into_the_segment_is_a_step(derive: Callable[..., duckdb.DuckDBPyConnection]) -> None:
    """c1 switches from core 50 to analytics 100 on 10 Feb (its upgrade counts in core; it moves to analytics on
    1 March); c2 is new on analytics at 50: the chart climbed from 0 by new 50 and then closed at 150."""
    w = catalogue(World())
    w.customer("c1")
    w.customer("c2")
    w.subscribe("s1", "c1", [("i1", "basic_usd", 5)], ts(2025, 1, 5))
    w.update("s1", ts(2025, 2, 10), items=[("i2", "analytics_usd", 2)])
    w.subscribe("s2", "c2", [("i3", "analytics_usd", 1)], ts(2025, 1, 6))
    con = derive(w, seen_at=ts(2025, 4, 20))
    rows = queries.bridge(con, "month", "family", start=dt.date(2025, 1, 1), end=dt.date(2025, 4, 1),
                          segment_value="analytics")
    steps = waterfall_steps(rows)
    assert steps[0][1] + sum(v for _, v in steps[1:-1]) == steps[-1][1] == 150.0, steps
    assert dict(steps)["moved_in_out"] == 100.0
