"""Scheduled churn, churn reasons, the cohort matrix and the bridge per week, quarter and year, against cases
worked out by hand (design.md 4-7): the awkward ones a finance user would try.

Stores are built once per module where several tests read the same account.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from builders import World, ts
from test_bridge import catalogue

from stripe_churn.metrics import queries
from stripe_churn.metrics.runner import recompute
from stripe_churn.settings import Rules, Settings

D = Decimal
UTC = dt.UTC


def derived(tmp: Path, template: Path, w: World, *, seen_at: int, currency: str = "usd",
            **rules: Any) -> duckdb.DuckDBPyConnection:
    """A store at ``tmp`` holding ``w``, recomputed with ``rules``."""
    from stripe_churn.store.db import open_store

    shutil.copyfile(template, tmp / "hunt.duckdb")
    con = open_store(tmp / "hunt.duckdb")
    w.load(con, seen_at=seen_at)
    recompute(con, Settings(currency=currency, rules=Rules(**rules)))
    return con


# --- churn type ------------------------------------------------------------------------------------------------

def past_due_then_cancelled(w: World) -> World:
    """c1 falls past_due on 5 March and asks, the next day, to cancel at period end (5 April); c2 goes unpaid and
    is deleted later; c3 cancels for a failed payment."""
    catalogue(w)
    for c in ("c1", "c2", "c3"):
        w.customer(c)
    w.subscribe("s1", "c1", [("i1", "pro_usd", 2)], ts(2024, 1, 5))  # 40
    w.update("s1", ts(2024, 3, 5), status="past_due")
    w.cancel("s1", ts(2024, 3, 6), ended_at=ts(2024, 4, 5), reason="cancellation_requested",
             feedback="too_expensive")
    w.subscribe("s2", "c2", [("i2", "basic_usd", 3)], ts(2024, 1, 5))  # 30
    w.update("s2", ts(2024, 3, 7), status="past_due")
    w.update("s2", ts(2024, 3, 17), status="unpaid")
    w.cancel("s2", ts(2024, 4, 10), reason="payment_failed")
    w.subscribe("s3", "c3", [("i3", "basic_usd", 1)], ts(2024, 1, 5))  # 10
    w.cancel("s3", ts(2024, 3, 20), reason="payment_failed")
    return w


@pytest.mark.parametrize(("recognition", "c1_at"), [("ended", ts(2024, 4, 5)), ("canceled", ts(2024, 3, 6))])
def test_a_past_due_customer_who_asks_to_cancel_churns_voluntarily(
        tmp_path: Path, migrated_store_file: Path, recognition: str, c1_at: int) -> None:
    """design.md 5: involuntary when the reason is payment_failed or the subscription went unpaid. A past_due
    subscription counts (past_due_counts, the default) and did not go unpaid: its customer's own cancellation is
    voluntary however churn is recognised. With churn_recognition = "canceled" the churn is dated at the request,
    while the subscription is still past_due, and it was labelled involuntary."""
    con = derived(tmp_path, migrated_store_file, past_due_then_cancelled(World()), seen_at=ts(2024, 4, 20),
                  churn_recognition=recognition)
    got = {r[0]: r[1:] for r in con.execute(
        "SELECT customer_id, epoch(occurred_at), mrr_delta, churn_type, cancellation_feedback FROM mrr_movements "
        "WHERE movement = 'cancellation'").fetchall()}
    assert got == {"c1": (c1_at, D("-40"), "voluntary", "too_expensive"),
                   "c2": (ts(2024, 3, 17), D("-30"), "involuntary", None),
                   "c3": (ts(2024, 3, 20), D("-10"), "involuntary", None)}


def test_past_due_is_involuntary_churn_when_it_counts_zero(tmp_path: Path, migrated_store_file: Path) -> None:
    """With past_due_counts = false going past_due is the churn, and it is involuntary (README)."""
    con = derived(tmp_path, migrated_store_file, past_due_then_cancelled(World()), seen_at=ts(2024, 4, 20),
                  past_due_counts=False, churn_recognition="canceled")
    got = {r[0]: r[1:] for r in con.execute(
        "SELECT customer_id, epoch(occurred_at), mrr_delta, churn_type FROM mrr_movements "
        "WHERE movement = 'cancellation'").fetchall()}
    assert got == {"c1": (ts(2024, 3, 5), D("-40"), "involuntary"),
                   "c2": (ts(2024, 3, 7), D("-30"), "involuntary"),
                   "c3": (ts(2024, 3, 20), D("-10"), "involuntary")}
