"""Customer counts are of customers, not events: one who churns twice in a period is one churned customer, so the
counts need not roll forward, as README says (the MRR columns do)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import duckdb
from builders import World, ts
from test_bridge import catalogue

from stripe_churn.metrics import queries

README = Path(__file__).resolve().parents[2] / "README.md"


def test_a_customer_who_churns_twice_in_a_quarter_counts_once(derive: Callable[..., duckdb.DuckDBPyConnection]
                                                              ) -> None:
    w = catalogue(World())
    w.customer("c1")
    w.customer("c2")
    w.subscribe("s1", "c1", [("i1", "basic_usd", 5)], ts(2024, 1, 5))
    w.subscribe("s2", "c2", [("i2", "basic_usd", 2)], ts(2024, 1, 6))
    w.cancel("s1", ts(2024, 4, 10))
    w.subscribe("s1b", "c1", [("i1b", "basic_usd", 3)], ts(2024, 5, 10))
    w.cancel("s1b", ts(2024, 6, 10))
    con = derive(w, seen_at=ts(2024, 7, 20))
    q2 = next(r for r in queries.bridge(con, "quarter") if r["period_start"] == dt.date(2024, 4, 1))
    counts = [q2[k] for k in ("opening_customers", "new_customers", "reactivated_customers", "churned_customers",
                              "closing_customers")]
    assert counts == [2, 0, 1, 1, 1]
    flows = q2["new"] + q2["reactivation"] + q2["expansion"] - q2["contraction"] - q2["churn"] + q2["fx"]
    assert q2["opening_mrr"] + flows == q2["closing_mrr"]
    text = " ".join(README.read_text().split())
    assert ("one who churns, comes back and churns again in a quarter is one reactivated and one churned customer, "
            "and opening + new + reactivated − churned need not equal closing") in text
