"""The item_mrr view (README "SQL for finance"): every subscription item's state and MRR over time, one row per
level, against answers worked out by hand, and against customer_mrr on the small simulation (the items of a
customer add up to its level once each movement window is done)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal

import duckdb
from builders import World, ts

D = Decimal
Derive = Callable[..., duckdb.DuckDBPyConnection]
UTC = dt.UTC
COLUMNS = [
    ("account_id", "VARCHAR"), ("customer_id", "VARCHAR"), ("subscription_id", "VARCHAR"),
    ("subscription_item_id", "VARCHAR"), ("product_id", "VARCHAR"), ("price_id", "VARCHAR"), ("family", "VARCHAR"),
    ("unit_kind", "VARCHAR"), ("usage_type", "VARCHAR"), ("quantity", "BIGINT"),
    ("valid_from", "TIMESTAMP WITH TIME ZONE"), ("valid_to", "TIMESTAMP WITH TIME ZONE"), ("status", "VARCHAR"),
    ("pause_collection", "BOOLEAN"), ("currency", "VARCHAR"), ("mrr_original", "DECIMAL(18,4)"),
    ("undiscounted_mrr_original", "DECIMAL(18,4)"), ("discount_ids", "VARCHAR[]"), ("source_event_id", "VARCHAR"),
    ("source_invoice_id", "VARCHAR"),
]


def day(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def shop(w: World) -> World:
    """Seats of core (basic 10.00, pro 20.00 a seat) and analytics (50.00); a 10% coupon for two months."""
    w.product("prod_core", unit_label="seat", family="core")
    w.product("prod_an", family="analytics")
    w.price("basic", "prod_core", 1_000)
    w.price("pro", "prod_core", 2_000)
    w.price("an", "prod_an", 5_000)
    w.coupon("co_10", percent_off=10, duration="repeating", duration_in_months=2)
    return w


def test_item_levels_by_hand(derive: Derive) -> None:
    """cus_1: 3 basic seats on a trial from 1 January (0.00, trialing), paying from its end on 15 January (30.00);
    on 20 February pro and analytics (60.00 and 50.00); 10% off the subscription from 25 February (54.00 and 45.00,
    60.00 and 50.00 before it); analytics removed on 5 March (its row ends); canceled on 10 April (0.00, canceled,
    open). cus_2: 2 basic seats from 1 January, 10% off from 20 March for two months, to 20 May, after the sync on
    1 April: the row the coupon's end begins is not known yet, so 18.00 stays open, as customer_mrr's level does.
    Each row names the event that dated it."""
    w = shop(World())
    w.customer("cus_1")
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], ts(2024, 1, 1), trial_end=ts(2024, 1, 15))
    created = w.events[-1]["id"]
    w.update("sub_1", ts(2024, 1, 15), status="active")
    trial_end_event = w.events[-1]["id"]
    w.cycle("sub_1", ts(2024, 2, 15))
    w.update("sub_1", ts(2024, 2, 20), items=[("si_1", "pro", 3), ("si_2", "an", 1)])
    switch_event = w.events[-1]["id"]
    discount = w.discount("co_10", ts(2024, 2, 25), customer="cus_1", subscription="sub_1")["id"]
    w.update("sub_1", ts(2024, 3, 5), items=[("si_1", "pro", 3)])
    w.cancel("sub_1", ts(2024, 4, 10))
    cancel_event = w.events[-1]["id"]
    w.customer("cus_2")
    w.subscribe("sub_2", "cus_2", [("si_3", "basic", 2)], ts(2024, 1, 1))
    created_2 = w.events[-1]["id"]
    discount_2 = w.discount("co_10", ts(2024, 3, 20), customer="cus_2", subscription="sub_2")["id"]
    con = derive(w, seen_at=ts(2024, 4, 15))

    assert [(c[0], c[1]) for c in con.execute("DESCRIBE item_mrr").fetchall()] == COLUMNS
    rows = con.execute("SELECT subscription_item_id, price_id, quantity, valid_from, valid_to, status, mrr_original, "
                       "undiscounted_mrr_original, discount_ids, source_event_id FROM item_mrr "
                       "ORDER BY subscription_item_id, valid_from").fetchall()
    assert rows == [
        ("si_1", "basic", 3, day(2024, 1, 1), day(2024, 1, 15), "trialing", D("0"), D("0"), None, created),
        ("si_1", "basic", 3, day(2024, 1, 15), day(2024, 2, 20), "active", D("30"), D("30"), None, trial_end_event),
        ("si_1", "pro", 3, day(2024, 2, 20), day(2024, 2, 25), "active", D("60"), D("60"), None, switch_event),
        ("si_1", "pro", 3, day(2024, 2, 25), day(2024, 4, 10), "active", D("54"), D("60"), [discount], None),
        ("si_1", "pro", 3, day(2024, 4, 10), None, "canceled", D("0"), D("0"), [discount], cancel_event),
        ("si_2", "an", 1, day(2024, 2, 20), day(2024, 2, 25), "active", D("50"), D("50"), None, switch_event),
        ("si_2", "an", 1, day(2024, 2, 25), day(2024, 3, 5), "active", D("45"), D("50"), [discount], None),
        ("si_3", "basic", 2, day(2024, 1, 1), day(2024, 3, 20), "active", D("20"), D("20"), None, created_2),
        ("si_3", "basic", 2, day(2024, 3, 20), None, "active", D("18"), D("20"), [discount_2], None),
    ]
    # (the stored history does hold the coupon's end on 20 May: the view leaves out what the sync cannot know yet)
    assert con.execute("SELECT count(*) FROM derived_item_mrr WHERE valid_from = ?", [day(2024, 5, 20)]
                       ).fetchall() == [(1,)]
    assert con.execute("SELECT mrr FROM customer_mrr WHERE customer_id = 'cus_2' AND valid_to IS NULL"
                       ).fetchall() == [(D("18"),)]
    assert con.execute("SELECT DISTINCT product_id, family, unit_kind, usage_type, currency, pause_collection "
                       "FROM item_mrr WHERE subscription_item_id = 'si_2'").fetchall() == [
        ("prod_an", "analytics", "seat", "licensed", "usd", False)]


def test_items_add_up_to_customer_mrr_once_each_window_is_done(small_sim_derived: duckdb.DuckDBPyConnection
                                                                ) -> None:
    """On the small simulation (three currencies at the sandbox's constant rates, trials, discounts, metered usage,
    cancellations and comebacks): just before each of a customer's MRR levels ends (its next window begins; at the
    latest sync for its last one), the item_mrr rows in force then, each at its currency's rate, add up to that
    level, to within the rounding of each row at 4 decimals."""
    con = small_sim_derived
    off = con.execute("""
        WITH points AS (
            SELECT c.account_id, c.customer_id, c.mrr,
                   coalesce(c.valid_to - INTERVAL 1 MICROSECOND, v.snapshot_at) AS at
            FROM customer_mrr c JOIN derived_coverage v USING (account_id)
        ),
        rated AS (
            SELECT i.*, CASE WHEN i.currency = s.reporting_currency THEN 1 ELSE
                       (SELECT x.rate FROM derived_fx_days x WHERE x.currency = i.currency
                        ORDER BY x.day DESC LIMIT 1) END AS rate
            FROM item_mrr i CROSS JOIN derived_settings s
        )
        SELECT p.customer_id, p.at, p.mrr, sum(i.mrr_original * i.rate) AS items, count(i.mrr_original) AS n
        FROM points p
        LEFT JOIN rated i
          ON i.account_id = p.account_id AND i.customer_id = p.customer_id AND i.valid_from <= p.at
         AND (i.valid_to IS NULL OR p.at < i.valid_to)
        GROUP BY ALL
        HAVING abs(coalesce(sum(i.mrr_original * i.rate), 0) - p.mrr)
               > 0.00005 + 0.00005 * coalesce(sum(i.rate), 0)
    """).fetchall()
    assert off == []
    checked = con.execute("SELECT count(*), count(DISTINCT customer_id) FROM customer_mrr").fetchall()[0]
    assert checked[0] > 100 and checked[1] > 50, checked
    kinds = con.execute("SELECT count(DISTINCT currency), count(DISTINCT status), bool_or(discount_ids IS NOT NULL), "
                        "bool_or(usage_type = 'metered' AND mrr_original > 0) FROM item_mrr").fetchall()[0]
    assert kinds[0] == 3 and kinds[1] >= 3 and kinds[2] and kinds[3], kinds


def test_rows_begin_at_or_before_the_latest_sync_and_never_overlap(small_sim_derived: duckdb.DuckDBPyConnection
                                                                  ) -> None:
    """No row begins after the latest sync or ends after it (the open rows are those still in force), and an
    item's rows follow each other without overlapping."""
    con = small_sim_derived
    assert con.execute("""
        SELECT count(*) FROM item_mrr i JOIN derived_coverage c USING (account_id)
        WHERE i.valid_from > c.snapshot_at OR i.valid_to > c.snapshot_at OR i.valid_to <= i.valid_from
    """).fetchall() == [(0,)]
    assert con.execute("""
        SELECT count(*) FROM (
            SELECT valid_from, lag(valid_to) OVER (PARTITION BY account_id, subscription_item_id ORDER BY valid_from)
                AS prev_to, lag(valid_from) OVER (PARTITION BY account_id, subscription_item_id ORDER BY valid_from)
                AS prev_from
            FROM item_mrr)
        WHERE prev_from IS NOT NULL AND (prev_to IS NULL OR prev_to > valid_from)
    """).fetchall() == [(0,)]
