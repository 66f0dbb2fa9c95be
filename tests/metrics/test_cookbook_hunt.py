"""The README's ```sql blocks, each run exactly as the README prints it (read from README.md at test time) against
one small account built by hand, and compared with answers worked out by hand from design.md 4-7 and the README's
Metric definitions, SQL for finance and Finance cookbook before running ours.

The account sits in the recent past, so that the queries that look back from today (the latest complete month,
the last twelve months, the last six months, cohorts twelve months in, today's exchange rate) see it. Month k is
the k-th month after M0, the first month of the current quarter one year ago: k = 0, 3, 6, 9, 12 start quarters,
the current month is k = CUR (12, 13 or 14), nothing happens after k = 11, and the store was synced at the start of
today (UTC). Families: core (per seat, 10.00 a seat in USD or EUR) and analytics (50.00). EUR is 1.10 USD until
k = 6 and 1.20 from 00:00 of the 1st of k = 6.

- A (USD, tier gold): 6 core seats from k0 d5 (60.00, new); analytics added k2 d10 (+50.00, cross_sell: 110.00);
  8 seats at 00:00:00 UTC of k4 d1 (+20.00, seat_expansion: 130.00); 7 seats k9 d3 (-10.00, seat_contraction:
  120.00). Its main item is core throughout (60, 80, 70 against 50).
- B (EUR, tier silver): 3 core seats from k1 d3 (30.00 EUR x 1.10 = 33.00, new); fx at k6 d1 (+3.00: 36.00);
  canceled at once k8 d12, too_expensive, comment "Too pricey for us" (-36.00); back with 2 seats k10 d15 (20.00
  EUR x 1.20 = 24.00, reactivation); canceled k11 d5, too_expensive, no comment (-24.00).
- C (USD, tier gold): analytics from k0 d20 with a 20% coupon repeating 3 months (40.00, new); the coupon ends k3
  d20 (+10.00, discount expansion: 50.00); canceled at once k5 d7, unused, comment "We stopped using it" (-50.00).
- D (EUR, tier silver): 2 core seats on a trial from k4 d2 to k4 d15, then paying (20.00 EUR x 1.10 = 22.00, new
  dated at the trial's end); fx at k6 d1 (+2.00: 24.00); on k5 d10 asked to cancel at 00:00 of k16 d1
  (switched_service), still waiting.
- E (USD, tier silver): 3 core seats on a trial from k11 d20 to k16 d1 with a 50% coupon repeating 2 months (to
  k13 d20); on k11 d21 asked to cancel at k17 d1 (missing_features): never paying yet, so never in the MRR.
- F (USD, no tier): 1 core seat on a trial from k11 d22 to k15 d1 with a 10% forever coupon, set on k11 d23 to cancel
  at its period's end, the trial's end (k15 d1): never paying, never in the MRR.
- G (USD, tier gold): 1 core seat from k3 d3 (10.00, new), canceled at once k3 d20, too_complex (-10.00).
- K (USD, no tier): on k1 d2 two subscriptions, 1 core seat (10.00) and 1 analytics (50.00): one `new` of 60.00, its
  main item analytics. The analytics one past_due k1 d10; on k1 d20 at 10:00 the core one is canceled (low_quality,
  comment "Too buggy") and at 10:10 the analytics one goes unpaid: one window, one cancellation of -60.00 dated 10:00
  that carries, by README, the churn type, feedback and comment of the subscription of its largest item: the
  analytics one's, involuntary, no feedback, no comment.
- H (USD, no tier): 2 analytics from k2 d8 (100.00, new); past_due k8 d20 (still counts); unpaid at 00:00:00 UTC
  of k9 d1 (-100.00, involuntary churn, no feedback: one of k9's movements, and H one of k9's opening customers).

The monthly bridge by hand (opening, new, reactivation, expansion, contraction, churn, fx, closing; customers
opening / closing):
  k0: 0 + 100 (A 60, C 40) = 100; customers 0 / 2.
  k1: 100 + 33 (B) + 60 (K) - 60 (K churn) = 133; 2 / 3 (K new and churned).
  k2: 133 + 100 (H) + 50 (A cross_sell) = 283; 3 / 4.
  k3: 283 + 10 (G) + 10 (C discount) - 10 (G churn) = 293; 4 / 4 (G new and churned).
  k4: 293 + 22 (D) + 20 (A seats) = 335; 4 / 5.
  k5: 335 - 50 (C churn) = 285; 5 / 4.
  k6: 285 + 5 fx (B 3, D 2) = 290; 4 / 4.
  k7: quiet, 290; 4 / 4.
  k8: 290 - 36 (B churn) = 254; 4 / 3.
  k9: 254 - 10 (A contraction) - 100 (H churn) = 144; 3 / 2.
  k10: 144 + 24 (B reactivation) = 168; 2 / 3.
  k11: 168 - 24 (B churn) = 144; 3 / 2.
  k12 on: quiet, 144; 2 / 2.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from builders import World, ts

ROOT = Path(__file__).resolve().parents[2]
D = Decimal
Row = tuple[Any, ...]

# --- the calendar of the account: month k after M0 -------------------------------------------------------------------
_NOW = dt.datetime.now(dt.UTC)
_Q = (_NOW.month - 1) // 3 * 3 + 1  # the first month of the current quarter
M0_YEAR, M0_MONTH = _NOW.year - 1, _Q
CUR = 12 + _NOW.month - _Q  # the current month's k: 12, 13 or 14
SEEN_AT = ts(_NOW.year, _NOW.month, _NOW.day)  # the sync: 00:00 UTC today


def ym(k: int) -> tuple[int, int]:
    y, m = divmod(M0_MONTH - 1 + k, 12)
    return M0_YEAR + y, m + 1


def at(k: int, day: int = 1, hour: int = 0, minute: int = 0) -> int:
    """Unix seconds of day ``day`` of month k, UTC."""
    return ts(*ym(k), day, hour, minute)


def month(k: int) -> dt.date:
    return dt.date(*ym(k), 1)


def moment(k: int, day: int = 1) -> dt.datetime:
    return dt.datetime.fromtimestamp(at(k, day), tz=dt.UTC)


def readme_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def readme_query(starts: str) -> str:
    """The README's ```sql block that starts with ``starts``, exactly as printed (its ';' and line breaks too)."""
    found = [b for b in readme_blocks() if b.startswith(starts)]
    assert len(found) == 1, f"the README has {len(found)} ```sql blocks starting with {starts!r}"
    return found[0]


# the first words of every README ```sql block this file checks
CHECKED = {
    "credit_notes": "SELECT c.id AS credit_note_id",
    "net_negative": "SELECT period_start, net_revenue_churn_rate, net_negative_churn",
    "last_twelve": "SELECT period_start, opening_mrr, new, reactivation",
    "quarters": "SELECT period_start, gross_revenue_churn_rate",
    "ltv": "SELECT period_start, arpa, customer_churn_rate",
    "levers": "SELECT period_start, upgrade, cross_sell",
    "family_year": "SELECT segment_value AS family",
    "largest": "SELECT customer_id, occurred_at, mrr_delta, churn_type",
    "comments": "SELECT customer_id, occurred_at, mrr_delta, cancellation_feedback, cancellation_comment",
    "reasons": "SELECT churn_type, coalesce(cancellation_feedback, '(none)') AS cancellation_feedback,",
    "scheduled": "SELECT customer_id, subscription_id, cancel_at, mrr_at_stake",
    "on_a_day": "SELECT customer_id, mrr\nFROM customer_mrr",
    "opening": "SELECT count(*) FILTER (WHERE mrr > 0) AS opening_customers",
    "items_on_a_day": "WITH rates AS (\n    SELECT currency, arg_max(rate, date) AS rate FROM fx_rates",
    "by_label": "SELECT date_trunc('month'",
    "cohorts": "SELECT cohort_month, cohort_customers",
    "reactivations": "SELECT customer_id, occurred_at, mrr_after",
    "sync_runs": "SELECT run_id, mode, status",
}


def book(w: World) -> World:
    """The account of the module docstring."""
    w.product("prod_core", unit_label="seat", family="core")
    w.product("prod_analytics", family="analytics")
    w.price("core_usd", "prod_core", 1_000)
    w.price("core_eur", "prod_core", 1_000, currency="eur")
    w.price("analytics_usd", "prod_analytics", 5_000)
    w.fx_rates += [(month(-1).isoformat(), "eur", 1.10), (month(6).isoformat(), "eur", 1.20)]
    w.coupon("twenty", percent_off=20, duration="repeating", duration_in_months=3)
    w.coupon("half", percent_off=50, duration="repeating", duration_in_months=2)
    w.coupon("tenth", percent_off=10)

    w.customer("cus_a", metadata={"tier": "gold"})
    w.subscribe("sub_a", "cus_a", [("si_a1", "core_usd", 6)], at(0, 5))
    w.update("sub_a", at(2, 10), items=[("si_a1", "core_usd", 6), ("si_a2", "analytics_usd", 1)])
    w.update("sub_a", at(4, 1), items=[("si_a1", "core_usd", 8), ("si_a2", "analytics_usd", 1)])
    w.update("sub_a", at(9, 3), items=[("si_a1", "core_usd", 7), ("si_a2", "analytics_usd", 1)])

    w.customer("cus_b", currency="eur", address={"country": "DE"}, metadata={"tier": "silver"})
    w.subscribe("sub_b1", "cus_b", [("si_b1", "core_eur", 3)], at(1, 3))
    w.cancel("sub_b1", at(8, 12), feedback="too_expensive", comment="Too pricey for us")
    w.subscribe("sub_b2", "cus_b", [("si_b2", "core_eur", 2)], at(10, 15))
    w.cancel("sub_b2", at(11, 5), feedback="too_expensive")

    w.customer("cus_c", metadata={"tier": "gold"})
    disc = w.discount("twenty", at(0, 20), customer="cus_c", subscription="sub_c")
    assert disc["end"] == at(3, 20)
    w.subscribe("sub_c", "cus_c", [("si_c1", "analytics_usd", 1)], at(0, 20), discounts=[disc["id"]])
    w.cancel("sub_c", at(5, 7), feedback="unused", comment="We stopped using it")

    w.customer("cus_d", currency="eur", address={"country": "DE"}, metadata={"tier": "silver"})
    w.subscribe("sub_d", "cus_d", [("si_d1", "core_eur", 2)], at(4, 2), trial_end=at(4, 15))
    w.update("sub_d", at(4, 15), status="active")
    w.cycle("sub_d", at(4, 15))
    w.update("sub_d", at(5, 10), cancel_at=at(16, 1), canceled_at=at(5, 10),
             cancellation_details={"reason": "cancellation_requested", "feedback": "switched_service",
                                   "comment": None})

    w.customer("cus_e", metadata={"tier": "silver"})
    half = w.discount("half", at(11, 20), customer="cus_e", subscription="sub_e")
    assert half["end"] == at(13, 20)
    w.subscribe("sub_e", "cus_e", [("si_e1", "core_usd", 3)], at(11, 20), trial_end=at(16, 1), discounts=[half["id"]])
    w.objects["subscriptions"]["sub_e"]["items"]["data"][0]["current_period_end"] = at(16, 1)  # (the trial's end)
    w.update("sub_e", at(11, 21), cancel_at=at(17, 1), canceled_at=at(11, 21),
             cancellation_details={"reason": "cancellation_requested", "feedback": "missing_features",
                                   "comment": None})

    w.customer("cus_f")
    tenth = w.discount("tenth", at(11, 22), customer="cus_f", subscription="sub_f")
    w.subscribe("sub_f", "cus_f", [("si_f1", "core_usd", 1)], at(11, 22), trial_end=at(15, 1),
                discounts=[tenth["id"]])
    w.objects["subscriptions"]["sub_f"]["items"]["data"][0]["current_period_end"] = at(15, 1)  # (the trial's end)
    w.update("sub_f", at(11, 23), cancel_at_period_end=True, cancel_at=at(15, 1), canceled_at=at(11, 23),
             cancellation_details={"reason": "cancellation_requested", "feedback": None, "comment": None})

    w.customer("cus_g", metadata={"tier": "gold"})
    w.subscribe("sub_g", "cus_g", [("si_g1", "core_usd", 1)], at(3, 3))
    w.cancel("sub_g", at(3, 20), feedback="too_complex")

    w.customer("cus_k")
    w.subscribe("sub_k1", "cus_k", [("si_k1", "core_usd", 1)], at(1, 2))
    w.subscribe("sub_k2", "cus_k", [("si_k2", "analytics_usd", 1)], at(1, 2))
    w.update("sub_k2", at(1, 10), status="past_due")
    w.cancel("sub_k1", at(1, 20, 10), feedback="low_quality", comment="Too buggy")
    w.update("sub_k2", at(1, 20, 10, 10), status="unpaid")

    w.customer("cus_h")
    w.subscribe("sub_h", "cus_h", [("si_h1", "analytics_usd", 2)], at(2, 8))
    w.update("sub_h", at(8, 20), status="past_due")
    w.update("sub_h", at(9, 1), status="unpaid")
    return w


def credit_notes() -> list[dict[str, Any]]:
    """cn_1 (two lines: 15.00 and 5.00) and cn_2 (one line of 7.00), stored deleted."""
    def note(cid: str, lines: list[tuple[str, int]]) -> dict[str, Any]:
        return {"id": cid, "object": "credit_note", "created": at(6, 2), "customer": "cus_a", "currency": "usd",
                "invoice": "in_x", "livemode": False, "status": "issued", "type": "pre_payment",
                "amount": sum(a for _, a in lines),
                "lines": {"object": "list", "has_more": False, "url": f"/v1/credit_notes/{cid}/lines",
                          "data": [{"id": lid, "object": "credit_note_line_item", "amount": a,
                                    "type": "custom_line_item"} for lid, a in lines]}}
    return [note("cn_1", [("cnli_1", 1_500), ("cnli_2", 500)]), note("cn_2", [("cnli_3", 700)])]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path) -> Path:
    """The account loaded (every event stored), recomputed once under the default settings and published as a sync
    does: the README's queries read the snapshot."""
    from stripe_churn.metrics.runner import recompute
    from stripe_churn.settings import Settings
    from stripe_churn.store.db import open_store
    from stripe_churn.store.load import upsert_objects
    from stripe_churn.store.snapshot import publish_snapshot

    path = tmp_path_factory.mktemp("cookbook") / "cookbook.duckdb"
    shutil.copyfile(migrated_store_file, path)
    con = open_store(path)
    try:
        w = book(World())
        w.load(con, seen_at=SEEN_AT)
        seen = dt.datetime.fromtimestamp(SEEN_AT, tz=dt.UTC)
        cn1, cn2 = credit_notes()
        upsert_objects(con, "credit_notes", w.account_id, [cn1], seen)
        upsert_objects(con, "credit_notes", w.account_id, [cn2], seen, deleted=True)
        recompute(con, Settings(db=path))
        con.execute("CHECKPOINT")
    finally:
        con.close()
    publish_snapshot(path)
    return path


def run(db: Path, query: str) -> tuple[list[str], list[Row]]:
    """The query as `stripe-churn sql` runs it on the snapshot."""
    from stripe_churn.sqlconsole import run_query

    return run_query(db, query)


def rows_of(db: Path, key: str) -> list[dict[str, Any]]:
    columns, rows = run(db, readme_query(CHECKED[key]))
    return [dict(zip(columns, r, strict=True)) for r in rows]


# --- the monthly bridge by hand (module docstring) -------------------------------------------------------------------
# k: (opening, new, reactivation, expansion, contraction, churn, fx, closing)
BRIDGE: dict[int, tuple[int, ...]] = {
    0: (0, 100, 0, 0, 0, 0, 0, 100),
    1: (100, 93, 0, 0, 0, 60, 0, 133),
    2: (133, 100, 0, 50, 0, 0, 0, 283),
    3: (283, 10, 0, 10, 0, 10, 0, 293),
    4: (293, 22, 0, 20, 0, 0, 0, 335),
    5: (335, 0, 0, 0, 0, 50, 0, 285),
    6: (285, 0, 0, 0, 0, 0, 5, 290),
    7: (290, 0, 0, 0, 0, 0, 0, 290),
    8: (290, 0, 0, 0, 0, 36, 0, 254),
    9: (254, 0, 0, 0, 10, 100, 0, 144),
    10: (144, 0, 24, 0, 0, 0, 0, 168),
    11: (168, 0, 0, 0, 0, 24, 0, 144),
    **{k: (144, 0, 0, 0, 0, 0, 0, 144) for k in range(12, 15)},
}
# k: (opening customers, customers of those who churned in the month, closing customers)
CUSTOMERS: dict[int, tuple[int, int, int]] = {
    0: (0, 0, 2), 1: (2, 0, 3), 2: (3, 0, 4), 3: (4, 0, 4), 4: (4, 0, 5), 5: (5, 1, 4), 6: (4, 0, 4), 7: (4, 0, 4),
    8: (4, 1, 3), 9: (3, 1, 2), 10: (2, 0, 3), 11: (3, 1, 2), **{k: (2, 0, 2) for k in range(12, 15)},
}
BRIDGE_COLUMNS = ["opening_mrr", "new", "reactivation", "expansion", "contraction", "churn", "fx", "closing_mrr"]


def test_every_readme_sql_block_is_checked_here() -> None:
    """Each ```sql block of the README is one of those this file runs (a new recipe needs its hand-worked case)."""
    blocks = readme_blocks()
    unchecked = [b.splitlines()[0] for b in blocks if not any(b.startswith(s) for s in CHECKED.values())]
    assert not unchecked, unchecked
    for starts in CHECKED.values():
        readme_query(starts)


def test_the_account_is_where_the_docstring_puts_it() -> None:
    """Guards the calendar: the current month is k = CUR (12 to 14) and k = 0 starts a quarter."""
    assert 12 <= CUR <= 14 and M0_MONTH in (1, 4, 7, 10)
    assert month(CUR) == dt.date(_NOW.year, _NOW.month, 1)


def test_are_we_at_net_negative_churn(db: Path) -> None:
    """README: the latest month complete in the data, ended before the last sync. Synced at 00:00 UTC today: the
    month before this one, k = CUR - 1. k = 11: opening 168.00, churn 24.00 (B), net revenue churn 24 / 168 =
    0.142857..., not net negative; k = 12 or 13: quiet, opening 144.00, net 0 / 144 = 0.0, not net negative (0 is
    not below 0)."""
    got = rows_of(db, "net_negative")
    k = CUR - 1
    rate = 24 / 168 if k == 11 else 0.0
    assert [(r["period_start"], r["net_revenue_churn_rate"], r["net_negative_churn"]) for r in got] == [
        (month(k), pytest.approx(rate, abs=1e-12), False)]


def test_the_monthly_bridge_of_the_last_twelve_months(db: Path) -> None:
    """The twelve latest months, the current (running) one first: k = CUR down to CUR - 11, with the hand bridge of
    the module docstring (k = 12 on: quiet, 144.00 in and out)."""
    got = rows_of(db, "last_twelve")
    assert [r["period_start"] for r in got] == [month(k) for k in range(CUR, CUR - 12, -1)]
    for r in got:
        k = next(k for k in BRIDGE if month(k) == r["period_start"])
        assert tuple(r[c] for c in BRIDGE_COLUMNS) == BRIDGE[k], (k, r)


def test_churn_and_retention_rates_per_quarter(db: Path) -> None:
    """Quarters are k 0-2, 3-5, 6-8, 9-11 and the current one, 12-14.
    Q0: opening 0: every rate NULL.
    Q1: opening 283; new 10 + 22; expansion 10 + 20 = 30; churn 50 + 10 = 60: gross 60/283, net (60 - 30)/283,
        NRR (283 + 30 - 60)/283 = 253/283, GRR (283 - 60)/283 = 223/283.
    Q2: opening 285; churn 36; fx +5: gross and net 36/285, NRR and GRR 249/285.
    Q3: opening 254; contraction 10; churn 100 + 24 = 124 (B's 24 came back inside the quarter: churned all the same);
        reactivation 24: gross 134/254, net (124 + 10 - 24)/254 = 110/254, NRR and GRR (254 - 10 - 124)/254 =
        120/254.
    Q4 (running): quiet: gross 0, net 0, NRR 1, GRR 1."""
    got = rows_of(db, "quarters")
    want = [
        (month(0), None, None, None, None),
        (month(3), 60 / 283, 30 / 283, 253 / 283, 223 / 283),
        (month(6), 36 / 285, 36 / 285, 249 / 285, 249 / 285),
        (month(9), 134 / 254, 110 / 254, 120 / 254, 120 / 254),
        (month(12), 0.0, 0.0, 1.0, 1.0),
    ]
    assert [(r["period_start"], r["gross_revenue_churn_rate"], r["net_revenue_churn_rate"], r["nrr"], r["grr"])
            for r in got] == [(w[0], *(None if x is None else pytest.approx(x, abs=1e-12) for x in w[1:]))
                              for w in want]


def test_lifetime_value_per_month_and_over_the_trailing_twelve_months(db: Path) -> None:
    """ARPA = closing MRR / closing customers (k0 50.00, k1 133/3 = 44.3333, k2 70.75, k3 73.25, k4 67.00, k5 71.25,
    k6-7 72.50, k8 254/3 = 84.6667, k9 72.00, k10 56.00, k11 on 72.00). Monthly customer churn rate = customers with
    MRR at the start who churned / customers at the start: k5 1/5, k8 1/4, k9 1/3 (H), k11 1/3 (B, back in k10), 0
    otherwise (k3's G started and churned within the month: 0 of 4), NULL at k0 (no customer at the start).
    LTV = ARPA / rate: k5 71.25 / 0.2 = 356.25, k8 84.6667 / 0.25 = 338.6668 -> 338.67, k9 and k11 72 x 3 = 216.00,
    NULL in the other months.
    Trailing: the rows' churned (rate x opening customers) over the rows' opening customers, twelve rows back.
    Opening customers k0-k11: 0 2 3 4 4 5 4 4 4 3 2 3 (38), then 2. Churned: k5, k8, k9, k11.
    k5: 1/18 -> 71.25 x 18 = 1,282.50; k6: 1/22 -> 72.50 x 22 = 1,595.00; k7: 1/26 -> 1,885.00; k8: 2/30 ->
    84.6667 x 15 = 1,270.0005 -> 1,270.00; k9: 3/33 -> 72 x 11 = 792.00; k10: 3/35 -> 56 x 35/3 = 653.33;
    k11: 4/38 -> 72 x 9.5 = 684.00; k12 (rows k1-k12): 4/40 -> 720.00; k13 (k2-k13): 4/40 -> 720.00; k14 (k3-k14):
    4/39 -> 702.00; NULL before k5."""
    arpa = {0: "50", 1: "44.3333", 2: "70.75", 3: "73.25", 4: "67", 5: "71.25", 6: "72.5", 7: "72.5", 8: "84.6667",
            9: "72", 10: "56", **{k: "72" for k in range(11, 15)}}
    rate = {k: 0.0 for k in range(1, 15)} | {0: None, 5: 1 / 5, 8: 1 / 4, 9: 1 / 3, 11: 1 / 3}
    ltv = {5: "356.25", 8: "338.67", 9: "216.00", 11: "216.00"}
    trailing = {5: "1282.50", 6: "1595.00", 7: "1885.00", 8: "1270.00", 9: "792.00", 10: "653.33", 11: "684.00",
                12: "720.00", 13: "720.00", 14: "702.00"}
    got = rows_of(db, "ltv")
    assert [r["period_start"] for r in got] == [month(k) for k in range(CUR, CUR - 12, -1)]
    for k, r in zip(range(CUR, CUR - 12, -1), got, strict=True):
        want_rate = None if rate[k] is None else pytest.approx(rate[k], abs=1e-12)
        assert (r["arpa"], r["customer_churn_rate"], r["ltv"], r["ltv_trailing_12"]) == (
            D(arpa[k]), want_rate, D(ltv[k]) if k in ltv else None, D(trailing[k]) if k in trailing else None), k


def test_expansion_by_lever_per_month(db: Path) -> None:
    """Every month from k0: cross_sell 50.00 in k2 (A's analytics), discount_expansion 10.00 in k3 (C's coupon
    ended), seat_expansion 20.00 in k4 (A's seats at 00:00:00 of the 1st: k4, not k3); 0 everywhere else."""
    got = rows_of(db, "levers")
    cols = ["upgrade", "cross_sell", "seat_expansion", "resource_expansion", "discount_expansion"]
    want = {k: [0, 0, 0, 0, 0] for k in range(CUR + 1)}
    want[2][1], want[4][2], want[3][4] = 50, 20, 10
    assert [(r["period_start"], [r[c] for c in cols]) for r in got] == [(month(k), want[k]) for k in range(CUR + 1)]


# per family and month k: (new + reactivation + expansion - contraction - churn + fx, expansion, churn,
# contraction, reactivation)
FAMILY_MONTHS: dict[str, dict[int, tuple[int, int, int, int, int]]] = {
    # core: A (main item core throughout), B, D, G
    "core": {0: (60, 0, 0, 0, 0), 1: (33, 0, 0, 0, 0), 2: (50, 50, 0, 0, 0), 3: (0, 0, 10, 0, 0),
             4: (42, 20, 0, 0, 0), 6: (5, 0, 0, 0, 0), 8: (-36, 0, 36, 0, 0), 9: (-10, 0, 0, 10, 0),
             10: (24, 0, 0, 0, 24), 11: (-24, 0, 24, 0, 0)},
    # analytics: C, H, K (its main item analytics)
    "analytics": {0: (40, 0, 0, 0, 0), 1: (0, 0, 60, 0, 0), 2: (100, 0, 0, 0, 0), 3: (10, 10, 0, 0, 0),
                  5: (-50, 0, 50, 0, 0), 9: (-100, 0, 100, 0, 0)},
}


def test_the_bridge_per_product_family_per_year(db: Path) -> None:
    """Each customer stays in one family (its main item's): core = A (whole MRR, analytics item included), B, D, G;
    analytics = C, H, K (new and churned in k1, its main item analytics). The monthly family flows (FAMILY_MONTHS,
    from the module docstring) added up per calendar year of the month (the years depend on today's date; the sums
    are the hand figures): each family's rows run from its first year through the current one; opening = what the
    years before left, closing = opening + the year's net; net_negative_churn NULL on a zero opening, else (churn +
    contraction - expansion - reactivation) / opening < 0. E.g. core over all months: 60 + 33 + 50 + 0 + 42 + 5 - 36
    - 10 + 24 - 24 = 144 (A 120 + D 24); analytics 40 + 0 + 100 + 10 - 50 - 100 = 0. With segment_value := 'core'
    (README: "family=core for one") the same query gives the core rows alone."""
    want = []
    for family in ("analytics", "core"):
        years: dict[int, list[int]] = {}
        for k, (net, exp, churn, contr, react) in FAMILY_MONTHS[family].items():
            y = years.setdefault(ym(k)[0], [0, 0, 0, 0, 0])
            for i, v in enumerate((net, exp, churn, contr, react)):
                y[i] += v
        opening = 0
        for year in range(min(years), _NOW.year + 1):
            net, exp, churn, contr, react = years.get(year, [0, 0, 0, 0, 0])
            nnc = None if opening == 0 else (churn + contr - exp - react) / opening < 0
            want.append((family, dt.date(year, 1, 1), opening, exp, churn, opening + net, nnc))
            opening += net
    got = rows_of(db, "family_year")
    assert [tuple(r.values()) for r in got] == want
    assert want[-1][5] == 144 and [w for w in want if w[0] == "analytics"][-1][5] == 0
    query = readme_query(CHECKED["family_year"])
    assert query.count("segment_value := NULL") == 1
    _, core = run(db, query.replace("segment_value := NULL", "segment_value := 'core'"))
    assert core == [w for w in want if w[0] == "core"]


def test_the_twenty_largest_cancellations(db: Path) -> None:
    """Every cancellation, largest first: H -100.00 (went unpaid at 00:00:00 of k9 d1: involuntary, no feedback),
    K -60.00 (k1 d20 10:00; the churn type and feedback of its largest item's subscription, the analytics one that
    went unpaid: involuntary, none), C -50.00 (unused), B -36.00 (too_expensive, k8), B -24.00 (too_expensive,
    k11), G -10.00 (too_complex); C's, B's and G's voluntary."""
    got = rows_of(db, "largest")
    assert [tuple(r.values()) for r in got] == [
        ("cus_h", moment(9, 1), D(-100), "involuntary", None),
        ("cus_k", moment(1, 20) + dt.timedelta(hours=10), D(-60), "involuntary", None),
        ("cus_c", moment(5, 7), D(-50), "voluntary", "unused"),
        ("cus_b", moment(8, 12), D(-36), "voluntary", "too_expensive"),
        ("cus_b", moment(11, 5), D(-24), "voluntary", "too_expensive"),
        ("cus_g", moment(3, 20), D(-10), "voluntary", "too_complex"),
    ]


def test_what_churned_customers_wrote(db: Path) -> None:
    """The cancellations with a comment, latest first: B's first (k8, -36.00, too_expensive) and C's (k5, -50.00,
    unused); B's second subscription was canceled without one, H and G wrote nothing, and K's row carries the comment
    of its largest item's subscription (the analytics one, none), not the core one's "Too buggy"."""
    got = rows_of(db, "comments")
    assert [tuple(r.values()) for r in got] == [
        ("cus_b", moment(8, 12), D(-36), "too_expensive", "Too pricey for us"),
        ("cus_c", moment(5, 7), D(-50), "unused", "We stopped using it"),
    ]


def test_churned_mrr_by_reason_over_the_last_six_months(db: Path) -> None:
    """period_start >= the 1st of the month six months before this one: k >= CUR - 6 (6, 7 or 8), so C's churn (k5)
    and G's (k3) are out, B's (k8, k11) and H's (k9) in. involuntary / (none): 100.00 (H); voluntary /
    too_expensive: 36 + 24 = 60.00 (B twice). Largest first."""
    got = rows_of(db, "reasons")
    assert [(r["churn_type"], r["cancellation_feedback"], r["churned_mrr"]) for r in got] == [
        ("involuntary", "(none)", D(100)), ("voluntary", "too_expensive", D(60))]


def test_the_customers_who_churned_by_reason_over_the_last_six_months(db: Path) -> None:
    """The same recipe's `customers`: the customers who churned over the six months for each reason. H once
    (involuntary); B, one customer, churned twice for too_expensive (k8, then again k11 after its comeback): 1.
    (The recipe summed churn_reasons' monthly churned_customers, which gave B twice.)"""
    got = rows_of(db, "reasons")
    assert [(r["churn_type"], r["cancellation_feedback"], r["customers"]) for r in got] == [
        ("involuntary", "(none)", 1), ("voluntary", "too_expensive", 1)]


def test_churn_reasons_per_quarter_add_up_to_the_bridges_churn(db: Path) -> None:
    """README: "Per period, the rows' churned_mrr add up to the bridge's churn", and churn_reasons_for cuts periods as
    mrr_bridge_for does. Quarters: Q0 involuntary (none) 60.00 (K); Q1 voluntary too_complex 10.00 (G) and unused
    50.00 (C): 60.00; Q2 voluntary too_expensive 36.00 (B); Q3 involuntary (none) 100.00 (H) and voluntary
    too_expensive 24.00 (B again): 124.00. Per month (the view): k1 60.00, k3 10.00, k5 50.00, k8 36.00, k9 100.00,
    k11 24.00, the hand bridge's churn."""
    _, rows = run(db, "SELECT period_start, churn_type, cancellation_feedback, churned_customers, churned_mrr "
                      "FROM churn_reasons_for(period_kind := 'quarter') ORDER BY ALL")
    assert rows == [
        (month(0), "involuntary", "(none)", 1, D(60)),
        (month(3), "voluntary", "too_complex", 1, D(10)), (month(3), "voluntary", "unused", 1, D(50)),
        (month(6), "voluntary", "too_expensive", 1, D(36)),
        (month(9), "involuntary", "(none)", 1, D(100)), (month(9), "voluntary", "too_expensive", 1, D(24)),
    ]
    _, bridge = run(db, "SELECT period_start, churn FROM mrr_bridge_for(period_kind := 'quarter') WHERE churn > 0 "
                        "ORDER BY 1")
    assert bridge == [(month(0), D(60)), (month(3), D(60)), (month(6), D(36)), (month(9), D(124))]
    _, monthly = run(db, "SELECT period_start, sum(churned_mrr) FROM churn_reasons GROUP BY 1 ORDER BY 1")
    assert monthly == [(month(k), D(v[5])) for k, v in BRIDGE.items() if v[5]]


def test_mrr_at_stake_in_scheduled_cancellations(db: Path) -> None:
    """D: 20.00 EUR a month, asked on k5 d10 (EUR at 1.10 then) to cancel at 00:00 of k16 d1: at today's rate 1.20,
    24.00. E: still on its trial (to k16 d1), set to cancel after it (k17 d1): it converts first, so at stake is its
    paid MRR with its discounts as they will stand just before k17: the 50% coupon ended on k13 d20, 3 x 10.00 =
    30.00. F: set to cancel when its trial ends (k15 d1): it never converts, 0.00 (its 10% coupon changes nothing).
    Largest first."""
    got = rows_of(db, "scheduled")
    assert [tuple(r.values()) for r in got] == [
        ("cus_e", "sub_e", moment(17), D(30), "missing_features"),
        ("cus_d", "sub_d", moment(16), D(24), "switched_service"),
        ("cus_f", "sub_f", moment(15), D(0), None),
    ]


def test_each_customers_mrr_on_a_given_day(db: Path) -> None:
    """The recipe with its instant (2026-01-01 00:00:00+00 as printed) set to 00:00:00 UTC of k4 d1, the instant of
    A's seat change: "changes made at 00:00:00 included", so A is at 130.00; H 100.00, C 50.00 (its coupon ended
    in k3), B 33.00, and G 0.00 (it churned in k3: its level after the churn is 0 and runs on); D's trial begins
    only on k4 d2, E's and F's in k11: no row; K 0.00 (churned in k1)."""
    printed = "TIMESTAMPTZ '2026-01-01 00:00:00+00'"
    query = readme_query(CHECKED["on_a_day"])
    assert query.count(printed) == 2
    _, rows = run(db, query.replace(printed, f"TIMESTAMPTZ '{month(4)} 00:00:00+00'"))
    assert rows[:4] == [("cus_a", D(130)), ("cus_h", D(100)), ("cus_c", D(50)), ("cus_b", D(33))]
    assert sorted(rows[4:]) == [("cus_g", D(0)), ("cus_k", D(0))]


def test_each_items_mrr_on_a_given_day(db: Path) -> None:
    """The item_mrr recipe with its day (2026-01-01 as printed) set to 00:00:00 UTC of k4 d1, the instant of A's
    seat change (included, as in customer_mrr's recipe): A's 8 seats (80.00) and analytics (50.00); B's 3 EUR seats,
    30.00 EUR at 1.10 = 33.00; C's analytics, its coupon ended in k3: 50.00; H's 2 analytics (100.00); the items of
    G (canceled in k3) and of K (canceled and unpaid in k1) are there at 0.00, their last state; D's trial begins
    on k4 d2, E's and F's in k11: no row. Each customer's items add up to its customer_mrr level then."""
    printed = ("DATE '2026-01-01'", "TIMESTAMPTZ '2026-01-01 00:00:00+00'")
    query = readme_query(CHECKED["items_on_a_day"])
    assert query.count(printed[0]) == 1 and query.count(printed[1]) == 2
    query = query.replace(printed[0], f"DATE '{month(4)}'").replace(printed[1], f"TIMESTAMPTZ '{month(4)} 00:00:00+00'")
    _, rows = run(db, query)
    assert [(r[0], r[1], r[2], r[3], r[4], r[6], r[7], r[8]) for r in rows] == [
        ("cus_a", "si_a1", "core_usd", 8, "active", D(80), "usd", D(80)),
        ("cus_a", "si_a2", "analytics_usd", 1, "active", D(50), "usd", D(50)),
        ("cus_b", "si_b1", "core_eur", 3, "active", D(30), "eur", D(33)),
        ("cus_c", "si_c1", "analytics_usd", 1, "active", D(50), "usd", D(50)),
        ("cus_g", "si_g1", "core_usd", 1, "canceled", D(0), "usd", D(0)),
        ("cus_h", "si_h1", "analytics_usd", 2, "active", D(100), "usd", D(100)),
        ("cus_k", "si_k1", "core_usd", 1, "canceled", D(0), "usd", D(0)),
        ("cus_k", "si_k2", "analytics_usd", 1, "unpaid", D(0), "usd", D(0)),
    ]
    # (C's coupon is on its row while it ran, and no longer)
    assert [r[5] for r in rows if r[0] == "cus_c"] == [None]


def test_a_periods_opening_from_customer_mrr(db: Path) -> None:
    """The opening recipe at 00:00:00 UTC of k4 d1: the state just before it, so A's change at that instant is one
    of k4's movements: A 110.00 + H 100.00 + C 50.00 + B 33.00 = 293.00 from 4 customers, k4's opening in the
    bridge."""
    printed = "TIMESTAMPTZ '2026-01-01 00:00:00+00'"
    query = readme_query(CHECKED["opening"])
    assert query.count(printed) == 2
    _, rows = run(db, query.replace(printed, f"TIMESTAMPTZ '{month(4)} 00:00:00+00'"))
    assert rows == [(4, D(293))]
    _, bridge = run(db, f"SELECT opening_customers, opening_mrr FROM mrr_bridge WHERE period_start = '{month(4)}'")
    assert bridge == rows


def test_movements_by_label_and_month(db: Path) -> None:
    """Per UTC month and label: k0 new 2 (100.00); k1 cancellation 1 (-60.00, K's two subscriptions in one window),
    new 2 (B 33.00, K 60.00: one row for its two subscriptions); k2 cross_sell 1 (50.00), new 1 (100.00);
    k3 cancellation 1 (-10.00), discount 1 (10.00), new 1 (10.00); k4 new 1 (22.00), seat_expansion 1 (20.00, at
    00:00:00 of the 1st); k5 cancellation 1 (-50.00); k6 fx 2 (B 3.00 + D 2.00); k8 cancellation 1 (-36.00);
    k9 cancellation 1 (-100.00), seat_contraction 1 (-10.00); k10 reactivation 1 (24.00); k11 cancellation 1
    (-24.00)."""
    got = rows_of(db, "by_label")
    want = [(0, "new", 2, 100), (1, "cancellation", 1, -60), (1, "new", 2, 93),
            (2, "cross_sell", 1, 50), (2, "new", 1, 100),
            (3, "cancellation", 1, -10), (3, "discount", 1, 10), (3, "new", 1, 10),
            (4, "new", 1, 22), (4, "seat_expansion", 1, 20), (5, "cancellation", 1, -50), (6, "fx", 2, 5),
            (8, "cancellation", 1, -36), (9, "cancellation", 1, -100), (9, "seat_contraction", 1, -10),
            (10, "reactivation", 1, 24), (11, "cancellation", 1, -24)]
    assert [(r["month"], r["movement"], r["movements"], r["mrr_delta"]) for r in got] == [
        (dt.datetime(*ym(k), 1), m, n, D(v)) for k, m, n, v in want]


def test_revenue_retention_twelve_months_in(db: Path) -> None:
    """Cohorts by the month of the first `new`: k0 (A, C), k1 (B, K), k2 (H), k3 (G), k4 (D); twelve months in exists
    for the cohorts up to k = CUR - 12.
    k0: starting = MRR at the end of k0 = A 60 + C 40 = 100.00; at the end of k12: A 120.00 (110, 130, then 120),
        C gone: 120.00, retention 1.2.
    k1: B and K, 2 customers; K started and churned in k1, adding nothing; B in EUR at the rate of k1's last day,
        1.10: starting 30 x 1.10 = 33.00; churn -30 EUR, comeback +20 EUR, churn -20 EUR, each x 1.10, fx left out:
        0.00 at the end of k13, retention 0.0.
    k2: H, 100.00 then 0.00 at the end of k14, retention 0.0."""
    want = {0: (month(0), 2, D(100), D(120), pytest.approx(1.2, abs=1e-12)),
            1: (month(1), 2, D(33), D(0), 0.0),
            2: (month(2), 1, D(100), D(0), 0.0)}
    got = rows_of(db, "cohorts")
    assert [tuple(r.values()) for r in got] == [want[k] for k in range(CUR - 11)]


def test_customers_who_came_back_after_churning(db: Path) -> None:
    """B alone came back: 20.00 EUR x 1.20 = 24.00 on k10 d15."""
    got = rows_of(db, "reactivations")
    assert [tuple(r.values()) for r in got] == [("cus_b", moment(10, 15), D(24))]


def test_the_last_syncs(db: Path) -> None:
    """No sync ran (the account was loaded directly): the recipe's columns and no row."""
    columns, rows = run(db, readme_query(CHECKED["sync_runs"]))
    assert (columns, rows) == (["run_id", "mode", "status", "started_at", "finished_at", "error"], [])


def test_a_credit_notes_lines_with_their_amounts(db: Path) -> None:
    """cn_1's two lines (15.00 and 5.00, in minor units as Stripe gives them); cn_2 is deleted: left out."""
    _, rows = run(db, readme_query(CHECKED["credit_notes"]))
    assert sorted(rows) == [("cn_1", "cnli_1", 1_500), ("cn_1", "cnli_2", 500)]


def test_a_metadata_segments_bridge_per_quarter(db: Path) -> None:
    """README: `metadata.<key>` is the customer's as last synced, for every period. tier gold = A, C, G; silver = B,
    D (E never pays); (none) = H, K. Q1 gold: opening A 110 + C 40 = 150.00, new 10 (G), expansion 20 (A) + 10 (C) =
    30, churn 50 (C) + 10 (G) = 60: closing 130.00 (A); Q0 gold: new 60 (A) + 40 (C), expansion 50 (A's analytics):
    150.00. Q0 silver: new 33 (B); Q1 silver: opening 33, new 22 (D): 55.00. Q0 (none): new 100 (H) + 60 (K),
    churn 60 (K): 100.00."""
    _, rows = run(db, "SELECT segment_value, period_start, opening_mrr, new, expansion, churn, closing_mrr "
                      "FROM mrr_bridge_for(period_kind := 'quarter', segment_kind := 'metadata.tier', "
                      "segment_value := NULL) WHERE period_start <= ? ORDER BY 1, 2".replace("?", f"'{month(3)}'"))
    assert rows == [
        ("(none)", month(0), 0, 160, 0, 60, 100), ("(none)", month(3), 100, 0, 0, 0, 100),
        ("gold", month(0), 0, 100, 50, 0, 150), ("gold", month(3), 150, 10, 30, 60, 130),
        ("silver", month(0), 0, 33, 0, 0, 33), ("silver", month(3), 33, 22, 0, 0, 55),
    ]


def test_the_views_have_the_columns_the_readme_names(db: Path) -> None:
    """README: `mrr_movements` keeps the columns design.md 7 lists (the comment is on derived_mrr_movements only), and
    `data_quality` is (account_id, kind, object_type, object_id, related_id, moment, detail); this account, whose
    invoices and events agree throughout, has no row there."""
    movements, _ = run(db, "SELECT * FROM mrr_movements LIMIT 0")
    assert movements == ["account_id", "customer_id", "subscription_id", "subscription_item_id", "product_id",
                         "price_id", "occurred_at", "movement", "category", "mrr_before", "mrr_after", "mrr_delta",
                         "currency", "amount_delta_original", "churn_type", "cancellation_feedback",
                         "source_event_id", "source_invoice_id"]
    quality, rows = run(db, "SELECT * FROM data_quality")
    assert quality == ["account_id", "kind", "object_type", "object_id", "related_id", "moment", "detail"]
    assert rows == []


def test_every_months_opening_from_customer_mrr_is_the_bridges(db: Path) -> None:
    """The opening recipe at 00:00:00 UTC of the 1st of every month k = 0 .. CUR gives the hand bridge's opening
    (BRIDGE, CUSTOMERS): the state just before the instant, so A's seats (k4), the rate (k6) and H's unpaid (k9), all
    at 00:00:00 of the 1st, are not in their month's opening. E.g. k9: A 130 + H 100 + D 24 = 254.00 from 3
    customers; k6: A 130 + H 100 + B 33 + D 22 = 285.00 from 4."""
    printed = "TIMESTAMPTZ '2026-01-01 00:00:00+00'"
    query = readme_query(CHECKED["opening"])
    got = [run(db, query.replace(printed, f"TIMESTAMPTZ '{month(k)} 00:00:00+00'"))[1][0] for k in range(CUR + 1)]
    assert got == [(CUSTOMERS[k][0], D(BRIDGE[k][0])) for k in range(CUR + 1)]


def test_each_customers_mrr_at_the_instants_of_changes_at_midnight(db: Path) -> None:
    """The given-day recipe at 00:00:00 UTC of k6 d1 (the rate moves to 1.20): B 30 EUR = 36.00, D 20 EUR = 24.00;
    A 130.00, H 100.00; C, G and K 0 (churned before). At 00:00:00 of k9 d1 (H unpaid then): A 130.00, D 24.00, and H,
    B, C, G, K at 0. (Order among equal MRR is not the recipe's: compared as sets.)"""
    printed = "TIMESTAMPTZ '2026-01-01 00:00:00+00'"
    query = readme_query(CHECKED["on_a_day"])
    k6 = run(db, query.replace(printed, f"TIMESTAMPTZ '{month(6)} 00:00:00+00'"))[1]
    assert sorted(k6) == sorted([("cus_a", D(130)), ("cus_h", D(100)), ("cus_b", D(36)), ("cus_d", D(24)),
                                 ("cus_c", D(0)), ("cus_g", D(0)), ("cus_k", D(0))])
    k9 = run(db, query.replace(printed, f"TIMESTAMPTZ '{month(9)} 00:00:00+00'"))[1]
    assert sorted(k9) == sorted([("cus_a", D(130)), ("cus_d", D(24)), ("cus_h", D(0)), ("cus_b", D(0)),
                                 ("cus_c", D(0)), ("cus_g", D(0)), ("cus_k", D(0))])


def test_the_cohorts_first_month_and_a_comeback(db: Path) -> None:
    """README on cohort_revenue_retention: starting_mrr is the cohort's MRR at the end of its first month, less what
    churned in it (K, in B's cohort, adds nothing); a comeback's reactivation adds to mrr; at constant rates (fx
    left out, other currencies at the rate of the last day of the cohort's first month).
    k3 (G: started and churned in k3): starting 0.00, mrr 0.00, retention NULL (zero base) in every month.
    k4 (D, EUR, rate on k4's last day 1.10): 22.00 every month, retention 1.0 (the k6 fx +2.00 left out).
    k1 (B, 1.10): 33.00 through k7; 0.00 in k8-k9 (churn -30 EUR x 1.10); k10 +20 EUR x 1.10 = 22.00, retention
    22/33 = 0.6667; 0.00 from k11."""
    _, rows = run(db, "SELECT cohort_month, month, starting_mrr, mrr, revenue_retention FROM cohort_revenue_retention "
                      f"WHERE cohort_month IN ('{month(1)}', '{month(3)}', '{month(4)}') ORDER BY 1, 2")
    b = {k: 33 for k in range(1, 8)} | {8: 0, 9: 0, 10: 22} | {k: 0 for k in range(11, CUR + 1)}
    want: list[Row] = [(month(1), month(k), D(33), D(v), pytest.approx(v / 33, abs=1e-12))
                       for k, v in sorted(b.items())]
    want += [(month(3), month(k), D(0), D(0), None) for k in range(3, CUR + 1)]
    want += [(month(4), month(k), D(22), D(22), 1.0) for k in range(4, CUR + 1)]
    assert rows == want


def test_the_third_quarters_customer_counts(db: Path) -> None:
    """README: customer churn rate = customers with MRR at the period start who churned in it / customers at the
    start; counts are of customers, once a period. Q3 (k9-k11) opens with A, H (its unpaid at 00:00:00 of k9 d1 is in
    Q3) and D: 3; H churns, B comes back and churns: reactivated 1, churned 2 (H, B), closing 2 (A, D), rate 1/3 (B
    was not there at the start)."""
    _, rows = run(db, "SELECT opening_customers, new_customers, reactivated_customers, churned_customers, "
                      "closing_customers, customer_churn_rate FROM mrr_bridge_for(period_kind := 'quarter') "
                      f"WHERE period_start = '{month(9)}'")
    assert rows == [(3, 0, 1, 2, 2, pytest.approx(1 / 3, abs=1e-12))]


def test_every_recipe_answers_the_same_in_a_session_of_another_time_zone(db: Path, tmp_path: Path) -> None:
    """README: the queries take timezone('UTC', ...) so that a duckdb CLI or Python session in another time zone
    gives the same answer as `stripe-churn sql` (UTC). Here the account's changes at 00:00:00 UTC of the 1st (k4, k6,
    k9) are the last day of the month before in Los Angeles; every block (the given-day ones as printed) gives the
    same rows in a session set to Los Angeles, compared as sets."""
    zone = "America/Los_Angeles"
    import duckdb

    # (a copy: this process's `sql` connections to the snapshot itself lock DuckDB's settings of that file)
    plain = tmp_path / "plain.duckdb"
    shutil.copyfile(db.with_name(db.name + ".snapshot"), plain)
    con = duckdb.connect(str(plain), read_only=True)
    try:
        con.execute(f"SET TimeZone = '{zone}'")
        for key, starts in CHECKED.items():
            query = readme_query(starts)
            utc = run(db, query)[1]
            local = con.execute(query).fetchall()
            assert sorted(local, key=repr) == sorted(utc, key=repr), key
    finally:
        con.close()
