"""The public mrr-playbook seed data, with its known answer (../shared/external/mrr-playbook/).

Each subscription period becomes a Stripe subscription of one product with a monthly price of the period's
amount, starting at its start and ending at its end, with a subscription_create invoice and one
subscription_cycle invoice per month, as Stripe would leave them. The store gets the objects as a sync two
years later would find them: every subscription and invoice, and only the events of the last 30 days, so
the history comes from invoices and the subscriptions' dates. The account is served by the sandbox server
and fetched by a full sync (the real SDK over HTTP, Stripe's clock at the sync moment), and, to tell a
loading fault from a derivation fault, also loaded straight into a store. Our category per customer and
month, and the month's sum of mrr_delta, must equal the playbook's.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from builders import DAY, World, add_months

PLAYBOOK = Path(__file__).resolve().parents[2].parent / "shared" / "external" / "mrr-playbook"
CATEGORY = {"new": "new", "upgrade": "expansion", "downgrade": "contraction", "churn": "churn",
            "reactivation": "reactivation", "": None}

pytestmark = pytest.mark.skipif(not PLAYBOOK.is_dir(), reason=f"playbook data not found at {PLAYBOOK}")


def unix(day: str) -> int:
    return int(dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).timestamp())


def playbook_world() -> tuple[World, int]:
    """The 121 periods as subscriptions, built in time order; returns the world and the sync moment."""
    with (PLAYBOOK / "subscription_periods.csv").open() as f:
        periods = list(csv.DictReader(f))
    w = World(account_id="acct_playbook")
    w.product("prod_app", family="app")
    for amount in sorted({int(p["monthly_amount"]) for p in periods}):
        w.price(f"price_{amount}", "prod_app", amount * 100)
    for cid in sorted({p["customer_id"] for p in periods}, key=int):
        w.customer(f"cus_{cid}", created=unix("2017-01-01"))
    # (moment, order, action): at one moment, endings come before starts, renewals last
    actions: list[tuple[int, int, str, dict[str, str]]] = []
    for p in periods:
        start, end = unix(p["start_date"]), unix(p["end_date"])
        actions.append((start, 1, "start", p))
        actions.append((end, 0, "end", p))
        t = add_months(start, 1)
        while t < end:
            actions.append((t, 2, "cycle", p))
            t = add_months(t, 1)
    for moment, _, action, p in sorted(actions, key=lambda a: (a[0], a[1], int(a[3]["subscription_id"]))):
        sid = f"sub_{p['subscription_id']}"
        if action == "start":
            w.subscribe(sid, f"cus_{p['customer_id']}", [(f"si_{p['subscription_id']}",
                                                          f"price_{p['monthly_amount']}", 1)], moment)
        elif action == "cycle":
            w.cycle(sid, moment)
        else:
            w.cancel(sid, moment)
    return w, unix("2020-03-01")


def expected() -> dict[tuple[str, dt.date], tuple[str | None, Decimal]]:
    with (PLAYBOOK / "expected_customer_months.csv").open() as f:
        return {(f"cus_{r['customer_id']}", dt.date.fromisoformat(r["date_month"])):
                (CATEGORY[r["change_category"]], Decimal(r["mrr_change"])) for r in csv.DictReader(f)}


@pytest.fixture(params=["sandbox", "direct"])
def playbook_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """The playbook's account derived from a full sync through the sandbox server, or loaded directly."""
    w, seen_at = playbook_world()
    if request.param == "direct":
        yield request.getfixturevalue("derive")(w, seen_at=seen_at, events=seen_at - 30 * DAY)
        return
    from test_ground_truth import derived_through_the_sandbox

    with derived_through_the_sandbox(w.served(seen_at), tmp_path / "playbook.duckdb") as con:
        # (the sync fetched what Stripe keeps: every object, and only the last 30 days' events)
        assert con.execute("SELECT count(*) FROM subscriptions").fetchall() == [(121,)]
        assert con.execute("SELECT count(*) FROM events").fetchall() == [
            (sum(e["created"] >= seen_at - 30 * DAY for e in w.events),)]
        yield con


def test_playbook_categories_and_sums(playbook_store: duckdb.DuckDBPyConnection) -> None:
    con = playbook_store
    got: dict[tuple[str, dt.date], list[tuple[str, Decimal]]] = defaultdict(list)
    for customer, month, category, delta in con.execute(
            "SELECT customer_id, CAST(date_trunc('month', timezone('UTC', occurred_at)) AS DATE), category, "
            "mrr_delta FROM mrr_movements").fetchall():
        got[(customer, month)].append((category, delta))
    want = expected()
    problems = []
    for key, (category, change) in sorted(want.items()):
        rows = got.get(key, [])
        categories = sorted({c for c, _ in rows})
        total = sum((d for _, d in rows), Decimal(0))
        if categories != ([category] if category else []) or total != change:
            problems.append(f"{key[0]} {key[1]}: expected {category or '-'} {change}, got {rows or '-'}")
    for key, rows in sorted(got.items()):
        if key not in want:
            problems.append(f"{key[0]} {key[1]}: unexpected {rows}")
    assert not problems, f"{len(problems)} customer-months differ from the playbook:\n" + "\n".join(problems)
    # the playbook's totals (README): new 55 (+2295), upgrade 30 (+660), downgrade 27 (-555), churn 58 (-2550),
    # reactivation 3 (+150)
    totals = dict(con.execute(
        "SELECT category, sum(mrr_delta) FROM mrr_movements GROUP BY category").fetchall())
    assert totals == {"new": 2295, "expansion": 660, "contraction": -555, "churn": -2550, "reactivation": 150}
    months = {r["period_start"]: r for r in bridge_rows(con)}
    assert months[dt.date(2017, 9, 1)]["opening_mrr"] == 0
    assert months[dt.date(2020, 2, 1)]["closing_mrr"] == 0


def bridge_rows(con: duckdb.DuckDBPyConnection) -> list[dict[str, object]]:
    from stripe_churn.metrics import queries

    return queries.bridge(con, "month")
