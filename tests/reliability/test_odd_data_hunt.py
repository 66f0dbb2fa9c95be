"""Valid but unusual, and malformed, Stripe data reaching the store and the metrics, each case worked out by hand.

The standard (README "data_quality", design.md 3, 4 and 7): bad input gets a clear one-line error that says what
to do, or a ``data_quality`` row; stored data is never lost or corrupted (``raw`` is the JSON as Stripe sent it);
never a traceback, never a silently wrong number.

Two halves. The metrics: small hand-built accounts (tests/metrics/builders.py) loaded as the sync loads them, one
account each in one store recomputed once (the cases that may stop a recompute keep a store of their own). The
sync: the real sync against the sandbox server serving a hand-built account, the server changed to serve the odd
bytes (an integer beyond 64 bits, JSON nested hundreds of levels deep, a page's objects twice, objects of another
type, bodies that are no list page)."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "metrics"))
from builders import DAY, World, add_months, ts

from stripe_churn.errors import BadResponseError, DataError, StripeChurnError
from stripe_churn.metrics.runner import recompute
from stripe_churn.sandbox.server import RunningSandbox, start_in_thread
from stripe_churn.settings import Secret, Settings
from stripe_churn.store.db import open_store
from stripe_churn.sync import SyncResult, run_sync

Con = duckdb.DuckDBPyConnection
T0 = ts(2025, 1, 1)
SEEN = add_months(T0, 2)  # the sync of 1 Mar 2025, unless a case says otherwise
RATES = [("2024-12-01", "eur", 1.10)]


def d(x: str) -> Decimal:
    return Decimal(x)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty migrated store, copied for each store of the module (migrating costs ten times a copy)."""
    path = tmp_path_factory.mktemp("odd_template") / "empty.duckdb"
    open_store(path).close()
    return path


def store_from(template: Path, path: Path) -> Con:
    shutil.copyfile(template, path)
    return open_store(path)


# ============================================================================================== the metrics

def catalogue(w: World) -> World:
    """`basic` 10.00 a seat a month (family core), `addon` 5.00 a seat (family addon); the module's rates."""
    w.fx_rates = list(RATES)
    w.product("prod_seat", unit_label="seat", family="core")
    w.product("prod_addon", unit_label="seat", family="addon")
    w.price("basic", "prod_seat", 1_000)
    w.price("addon", "prod_addon", 500)
    return w


@dataclass
class Case:
    """One account of a shared store: the World, the sync it was loaded at, whether its events were stored."""

    world: World
    seen_at: int = SEEN
    events: bool = True
    notes: dict[str, Any] = field(default_factory=dict)


def case_subcent(w: World, c: Case) -> None:
    """cus_1: 1000 units of `half`, yearly, priced only by unit_amount_decimal "0.5" (half a cent; unit_amount
    null). cus_2: one unit of `speck`, monthly, "0.000000000001" cents (Stripe's 12 decimals, the least there is)."""
    w.price("half", "prod_seat", None, interval="year")["unit_amount_decimal"] = "0.5"
    w.price("speck", "prod_seat", None)["unit_amount_decimal"] = "0.000000000001"
    w.customer("cus_1")
    w.subscribe("sub_1", "cus_1", [("si_1", "half", 1000)], T0)
    w.customer("cus_2")
    w.subscribe("sub_2", "cus_2", [("si_2", "speck", 1)], T0)


def case_zero_quantity(w: World, c: Case) -> None:
    """0 basic seats from 1 Jan (Stripe allows a quantity of 0), 3 from 11 Jan."""
    w.customer("cus_1")
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 0)], T0)
    w.update("sub_1", T0 + 10 * DAY, items=[("si_1", "basic", 3)])


def case_null_price(w: World, c: Case) -> None:
    """si_a: 3 basic seats; si_b: an item whose `price` is null (Stripe documents an object there) in the listing
    and in its creation event, while the invoice made at its creation bills it 1 x addon."""
    w.customer("cus_1")
    sub = w.subscribe("sub_1", "cus_1", [("si_a", "basic", 3), ("si_b", "addon", 1)], T0, event=False)
    sub["items"]["data"][1]["price"] = None
    w.event("customer.subscription.created", T0, sub)
    c.notes["invoice"] = next(iter(w.objects["invoices"]))


def case_no_periods(w: World, c: Case) -> None:
    """3 basic seats; its items carry no current_period_start/end (absent, as an API version that moves them
    elsewhere would send); on 11 Jan set to cancel at its period's end, cancel_at 1 Feb. Synced on 21 Jan."""
    w.customer("cus_1")
    sub = w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0, event=False)
    for item in sub["items"]["data"]:
        del item["current_period_start"], item["current_period_end"]
    w.event("customer.subscription.created", T0, sub)
    w.update("sub_1", T0 + 10 * DAY, cancel_at_period_end=True, cancel_at=add_months(T0, 1),
             canceled_at=T0 + 10 * DAY)
    c.seen_at = T0 + 20 * DAY


def case_upper_case_currency(w: World, c: Case) -> None:
    """cus_e: customer, price and subscription in "EUR" (Stripe sends lower case); 3 seats of 10.00 EUR. cus_u: the
    same in "USD", the reporting currency's code in upper case."""
    w.price("basic_eur", "prod_seat", 1_000, currency="EUR")
    w.price("basic_usd", "prod_seat", 1_000, currency="USD")
    w.customer("cus_e", currency="EUR")
    w.subscribe("sub_e", "cus_e", [("si_e", "basic_eur", 3)], T0)
    w.customer("cus_u", currency="USD")
    w.subscribe("sub_u", "cus_u", [("si_u", "basic_usd", 3)], T0)


ODD = {"customer": "cus_ü'\"\\ x", "product": "prod_\"q'", "price": "price_é'\"", "subscription": "sub_'; DROP",
       "item": "si_\"x\\n", "discount": "di_'q\""}


def case_odd_ids(w: World, c: Case) -> None:
    """Ids with unicode, quotes, a backslash and a space (ODD): 2 seats of a 10.00 price; the item names a discount
    by an id with quotes that is not stored."""
    w.product(ODD["product"], unit_label="seat", family="core")
    w.price(ODD["price"], ODD["product"], 1_000)
    w.customer(ODD["customer"])
    sub = w.subscribe(ODD["subscription"], ODD["customer"], [(ODD["item"], ODD["price"], 2)], T0, event=False)
    sub["items"]["data"][0]["discounts"] = [ODD["discount"]]
    w.event("customer.subscription.created", T0, sub)


def case_family_not_text(w: World, c: Case) -> None:
    """Product metadata `family` that is no string (Stripe's metadata values are). cus_n: prod_a's family is the
    number 7, prod_b's the text "7"; 1 x pa (10.00) on 1 Jan, replaced on 11 Jan by a new item 1 x pb (20.00).
    cus_o: the same with prod_c and prod_d, each family the object {"name": "core"}."""
    w.product("prod_a", unit_label="seat")["metadata"] = {"family": 7}
    w.product("prod_b", unit_label="seat")["metadata"] = {"family": "7"}
    w.product("prod_c", unit_label="seat")["metadata"] = {"family": {"name": "core"}}
    w.product("prod_d", unit_label="seat")["metadata"] = {"family": {"name": "core"}}
    for price, product, amount in (("pa", "prod_a", 1_000), ("pb", "prod_b", 2_000), ("pc", "prod_c", 1_000),
                                   ("pd", "prod_d", 2_000)):
        w.price(price, product, amount)
    for cid, old, new in (("cus_n", "pa", "pb"), ("cus_o", "pc", "pd")):
        w.customer(cid)
        w.subscribe(f"sub_{cid}", cid, [(f"si_{cid}_1", old, 1)], T0)
        w.update(f"sub_{cid}", T0 + 10 * DAY, items=[(f"si_{cid}_2", new, 1)])


def case_before_2010(w: World, c: Case) -> None:
    """A subscription created on 15 Nov 2009 (before Stripe's first customers): 3 basic seats."""
    start = ts(2009, 11, 15)
    w.customer("cus_1", created=start)
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], start)


def case_billing_reasons(w: World, c: Case) -> None:
    """No events stored. Three customers, each 3 basic seats from 1 Jan, renewed 1 Feb, 5 seats from 11 Feb with
    prorations; the proration invoice's billing_reason is `subscription_update` (cus_ok), null (cus_null: the field
    is nullable) or `subscription_update_v2` (cus_new: one the reference does not list)."""
    c.events = False
    for cid, reason in (("cus_ok", "subscription_update"), ("cus_null", None), ("cus_new", "subscription_update_v2")):
        sid = f"sub_{cid}"
        w.customer(cid)
        w.subscribe(sid, cid, [(f"si_{cid}", "basic", 3)], T0, event=False)
        w.cycle(sid, add_months(T0, 1))
        w.update(sid, add_months(T0, 1) + 10 * DAY, items=[(f"si_{cid}", "basic", 5)], event=False)
        inv = list(w.objects["invoices"].values())[-1]
        inv["billing_reason"] = reason
        c.notes[cid] = inv["id"]


def case_lines_without_period(w: World, c: Case) -> None:
    """No events stored. 3 basic seats from 1 Jan, renewed 1 Feb (3 seats), 5 seats from 11 Feb with prorations
    whose lines carry no `period` (null)."""
    c.events = False
    w.customer("cus_1")
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0, event=False)
    c.notes["renewal"] = w.cycle("sub_1", add_months(T0, 1))["id"]
    w.update("sub_1", add_months(T0, 1) + 10 * DAY, items=[("si_1", "basic", 5)], event=False)
    for line in list(w.objects["invoices"].values())[-1]["lines"]["data"]:
        line["period"] = None


def case_invoices_only(w: World, c: Case) -> None:
    """A customer with no subscription and one paid `manual` invoice of a one-time invoice item (a line of 30.00
    naming the recurring price `basic`, its parent invoice_item_details)."""
    w.customer("cus_1")
    w.subscribe("sub_tmp", "cus_1", [("si_tmp", "basic", 3)], T0, event=False)
    inv = list(w.objects["invoices"].values())[-1]
    del w.objects["subscriptions"]["sub_tmp"]
    inv.update(billing_reason="manual", parent=None)
    for line in inv["lines"]["data"]:
        line["parent"] = {"type": "invoice_item_details", "subscription_item_details": None,
                          "invoice_item_details": {"invoice_item": "ii_1", "proration": False, "subscription": None}}


def case_orphan_invoices(w: World, c: Case) -> None:
    """Invoices without their subscription: sub_x's subscription_create invoice (1 Jan) and renewal (1 Feb) bill
    3 basic seats of cus_1; no subscription sub_x is stored (none listed, no event)."""
    w.customer("cus_1")
    w.subscribe("sub_x", "cus_1", [("si_x", "basic", 3)], T0, event=False)
    w.cycle("sub_x", add_months(T0, 1))
    del w.objects["subscriptions"]["sub_x"]
    c.notes["invoices"] = sorted(w.objects["invoices"])


def case_recurring_null(w: World, c: Case) -> None:
    """A price of type `recurring` whose `recurring` is null (in the price, the item and the event): 3 units of
    10.00."""
    price = w.price("odd", "prod_seat", 1_000)
    w.customer("cus_1")
    sub = w.subscribe("sub_1", "cus_1", [("si_1", "odd", 3)], T0, event=False)
    price["recurring"] = None
    sub["items"]["data"][0]["price"]["recurring"] = None
    w.event("customer.subscription.created", T0, sub)


def case_billion_seats(w: World, c: Case) -> None:
    """One item of 1,000,000,000 units at 1,000,000 cents (10,000.00) a month."""
    w.price("pricey", "prod_seat", 1_000_000)
    w.customer("cus_1")
    w.subscribe("sub_1", "cus_1", [("si_1", "pricey", 3)], T0, event=False, invoice=False)
    w.objects["subscriptions"]["sub_1"]["items"]["data"][0]["quantity"] = 10**9
    w.event("customer.subscription.created", T0, w.objects["subscriptions"]["sub_1"])


def case_negative_quantity(w: World, c: Case) -> None:
    """si_a 3 basic seats, si_b -2 addon seats (Stripe never sends a negative quantity), in the listing and the
    events; its invoice line -10.00."""
    w.customer("cus_1")
    w.subscribe("sub_1", "cus_1", [("si_a", "basic", 3), ("si_b", "addon", -2)], T0)


SHARED: dict[str, Callable[[World, Case], None]] = {
    "subcent": case_subcent, "zero_quantity": case_zero_quantity, "null_price": case_null_price,
    "no_periods": case_no_periods, "upper_case_currency": case_upper_case_currency, "odd_ids": case_odd_ids,
    "family_not_text": case_family_not_text, "before_2010": case_before_2010, "billing_reasons": case_billing_reasons,
    "lines_without_period": case_lines_without_period, "invoices_only": case_invoices_only,
    "orphan_invoices": case_orphan_invoices, "recurring_null": case_recurring_null,
    "billion_seats": case_billion_seats, "negative_quantity": case_negative_quantity,
}


def build(name: str, fn: Callable[[World, Case], None]) -> Case:
    c = Case(catalogue(World(account_id=name)))
    fn(c.world, c)
    return c


def load(con: Con, cases: dict[str, Case]) -> None:
    """Each case's account into ``con`` as the sync stores it; the exchange rates (store-wide) once."""
    for k, c in enumerate(cases.values()):
        if k:
            c.world.fx_rates = []
        c.world.load(con, seen_at=c.seen_at, events=c.events)


@pytest.fixture(scope="module")
def shared(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Con, dict[str, Case]]]:
    """Every case of SHARED, an account each, in one store recomputed once."""
    cases = {name: build(name, fn) for name, fn in SHARED.items()}
    con = store_from(template, tmp_path_factory.mktemp("odd_shared") / "store.duckdb")
    con.execute("BEGIN TRANSACTION")
    load(con, cases)
    con.execute("COMMIT")
    recompute(con, Settings())
    yield con, cases
    con.close()


def mrr_at(con: Con, account: str, customer: str, at: int) -> Decimal:
    rows = con.execute("SELECT mrr FROM customer_mrr WHERE account_id = ? AND customer_id = ? AND valid_from <= "
                       "to_timestamp(?) AND (valid_to IS NULL OR to_timestamp(?) < valid_to)",
                       [account, customer, at, at]).fetchall()
    assert len(rows) <= 1, rows
    return rows[0][0] if rows else Decimal("0")


def moves(con: Con, account: str, customer: str) -> list[tuple[int, str, Decimal]]:
    rows = con.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta FROM mrr_movements "
                       "WHERE account_id = ? AND customer_id = ? ORDER BY occurred_at, movement, subscription_item_id",
                       [account, customer]).fetchall()
    return [(int(t), str(m), delta) for t, m, delta in rows]


Row = tuple[str, str, str | None, str | None, int | None, str | None]


def quality(con: Con, account: str) -> list[Row]:
    rows = con.execute("SELECT kind, object_type, object_id, related_id, CAST(epoch(moment) AS BIGINT), detail "
                       "FROM data_quality WHERE account_id = ? ORDER BY ALL", [account]).fetchall()
    return [tuple(r) for r in rows]


def test_a_price_given_only_in_fractions_of_a_cent(shared: tuple[Con, dict[str, Case]]) -> None:
    """design.md 4 (per_unit: unit_amount x quantity; year / 12; money DECIMAL(18,4)); reference 1 (`*_decimal`,
    at most 12 decimals). cus_1: 1000 x 0.5 cents = 500 cents = 5.00 a year, / 12 = 0.41666... -> 0.4167 from 1 Jan,
    one `new` of 0.4167. cus_2: 0.000000000001 cents = 1e-14 a month, 0.0000 at four decimals: no MRR and no
    movement. Neither is a data-quality matter (both prices have their terms)."""
    con, _ = shared
    assert mrr_at(con, "subcent", "cus_1", T0 + DAY) == d("0.4167")
    assert moves(con, "subcent", "cus_1") == [(T0, "new", d("0.4167"))]
    assert mrr_at(con, "subcent", "cus_2", T0 + DAY) == 0 and moves(con, "subcent", "cus_2") == []
    assert quality(con, "subcent") == []


def test_a_quantity_of_zero_counts_nothing_until_seats_are_added(shared: tuple[Con, dict[str, Case]]) -> None:
    """0 x 10.00 = 0 from 1 Jan (no MRR: not yet a customer), 3 x 10.00 = 30.00 from 11 Jan: the customer's first
    MRR, so one `new` of 30.00 on 11 Jan (design.md 5: M(A)=0, M(B)>0, never had MRR), not on 1 Jan."""
    con, _ = shared
    assert [mrr_at(con, "zero_quantity", "cus_1", t) for t in (T0 + DAY, T0 + 10 * DAY)] == [0, d("30")]
    assert moves(con, "zero_quantity", "cus_1") == [(T0 + 10 * DAY, "new", d("30"))]
    assert quality(con, "zero_quantity") == []


def test_an_item_whose_price_is_null_counts_nothing_and_is_named(shared: tuple[Con, dict[str, Case]]) -> None:
    """README (missing_price: a price not stored or without terms, its item counting zero; the events win over an
    invoice). si_b names no price: it counts zero, si_a 3 x 10.00 = 30.00, and a missing_price row names si_b. The
    invoice that bills si_b as 1 x addon disagrees with the events (which give no price): an invoice_event_mismatch
    row naming si_b and that invoice, at 1 Jan; the events are used, so the MRR stays 30.00."""
    con, cases = shared
    assert mrr_at(con, "null_price", "cus_1", T0 + DAY) == d("30")
    assert moves(con, "null_price", "cus_1") == [(T0, "new", d("30"))]
    rows = quality(con, "null_price")
    assert [(r[0], r[3]) for r in rows if r[0] == "missing_price"] == [("missing_price", "si_b")]
    assert [r[:5] for r in rows if r[0] == "invoice_event_mismatch"] == [
        ("invoice_event_mismatch", "subscription_item", "si_b", cases["null_price"].notes["invoice"], T0)]


def test_every_row_of_an_item_without_a_price_says_what_it_is(shared: tuple[Con, dict[str, Case]]) -> None:
    """The rows of test_an_item_whose_price_is_null_counts_nothing_and_is_named each carry a detail: one line of
    text, not NULL."""
    con, _ = shared
    rows = quality(con, "null_price")
    assert len(rows) == 2
    for row in rows:
        assert row[5] and "\n" not in row[5], row


def test_items_without_their_periods_still_count_and_cancel_on_schedule(shared: tuple[Con, dict[str, Case]]) -> None:
    """design.md 4 and 7 (scheduled_churn: with the MRR at stake and the date). Nothing of the MRR needs the items'
    periods: 3 x 10.00 = 30.00 from 1 Jan. The cancellation asked on 11 Jan takes effect at cancel_at, 1 Feb,
    after the sync of 21 Jan: scheduled_churn holds sub_1 at 1 Feb with 30.00 at stake, and no churn happened
    yet."""
    con, _ = shared
    assert mrr_at(con, "no_periods", "cus_1", T0 + 15 * DAY) == d("30")
    assert moves(con, "no_periods", "cus_1") == [(T0, "new", d("30"))]
    got = con.execute("SELECT subscription_id, CAST(epoch(cancel_at) AS BIGINT), mrr_at_stake FROM scheduled_churn "
                      "WHERE account_id = 'no_periods'").fetchall()
    assert got == [("sub_1", add_months(T0, 1), d("30"))]
    assert quality(con, "no_periods") == []


def test_a_currency_code_in_upper_case_is_the_same_currency(shared: tuple[Con, dict[str, Case]]) -> None:
    """Currency codes are ISO 4217 (Stripe sends them lower case; the rates file is case-blind). cus_e: 3 x 10.00
    EUR = 30.00 EUR x 1.10 = 33.00, its row's amount in its own currency 30.00; cus_u: 3 x 10.00 USD = 30.00 (the
    reporting currency: no rate needed). No error, no row."""
    con, _ = shared
    assert mrr_at(con, "upper_case_currency", "cus_e", T0 + DAY) == d("33")
    assert mrr_at(con, "upper_case_currency", "cus_u", T0 + DAY) == d("30")
    got = con.execute("SELECT customer_id, movement, mrr_delta, amount_delta_original FROM mrr_movements "
                      "WHERE account_id = 'upper_case_currency' ORDER BY customer_id").fetchall()
    assert got == [("cus_e", "new", d("33"), d("30")), ("cus_u", "new", d("30"), d("30"))]
    assert quality(con, "upper_case_currency") == []


def test_ids_with_unicode_quotes_and_backslashes_are_kept_as_they_are(shared: tuple[Con, dict[str, Case]]) -> None:
    """2 x 10.00 = 20.00 from 1 Jan, a `new` row naming the customer, subscription, item, product and price by
    their exact ids; the item's discount is not stored, so its MRR leaves it out (README missing_discount) and one
    row names the item and the discount, its detail quoting the id as it is."""
    con, _ = shared
    assert mrr_at(con, "odd_ids", ODD["customer"], T0 + DAY) == d("20")
    got = con.execute("SELECT customer_id, subscription_id, subscription_item_id, product_id, price_id, movement, "
                      "mrr_delta FROM mrr_movements WHERE account_id = 'odd_ids'").fetchall()
    assert got == [(ODD["customer"], ODD["subscription"], ODD["item"], ODD["product"], ODD["price"], "new", d("20"))]
    rows = quality(con, "odd_ids")
    assert [r[:5] for r in rows] == [("missing_discount", "subscription_item", ODD["item"], ODD["discount"], T0)]
    assert (rows[0][5] or "").startswith(f"discount {ODD['discount']} of this item is not stored"), rows[0][5]


def test_a_family_given_as_a_number_or_an_object_is_its_text(shared: tuple[Con, dict[str, Case]]) -> None:
    """design.md 5 (family: product.metadata["family"] when set; a removed and an added item of one family in a
    transition are a plan switch). cus_n: the number 7 and the text "7" are one family "7": the switch from 10.00
    to 20.00 on 11 Jan is one `upgrade` of +10.00 (two families would give cross_sell +20.00 and downgrade
    -10.00). cus_o: two products whose family is the same object are one family too (its JSON text): an
    `upgrade` of +10.00."""
    con, _ = shared
    for cid in ("cus_n", "cus_o"):
        assert moves(con, "family_not_text", cid) == [(T0, "new", d("10")), (T0 + 10 * DAY, "upgrade", d("10"))]
    families = dict(con.execute("SELECT product_id, family FROM derived_products WHERE account_id = "
                                "'family_not_text'").fetchall())
    assert families["prod_a"] == families["prod_b"] == "7"


def test_a_subscription_from_before_2010_counts_from_its_start(shared: tuple[Con, dict[str, Case]]) -> None:
    """3 x 10.00 = 30.00 from 15 Nov 2009 (a `new` then), and still on 1 Jan 2010 and at the sync."""
    con, _ = shared
    start = ts(2009, 11, 15)
    assert moves(con, "before_2010", "cus_1") == [(start, "new", d("30"))]
    assert [mrr_at(con, "before_2010", "cus_1", t) for t in (start - 1, ts(2010), SEEN)] == [0, d("30"), d("30")]
    assert quality(con, "before_2010") == []


def test_an_unknown_or_null_billing_reason_does_not_hide_a_change(shared: tuple[Con, dict[str, Case]]) -> None:
    """design.md 3 (proration lines mark when a change happened). Whatever its billing_reason (a documented one,
    null, or one the reference does not list), the proration invoice's lines date the change: each customer 30.00
    (3 x 10.00) until 11 Feb, 50.00 from it, a seat_expansion of +20.00 naming that invoice; no row."""
    con, cases = shared
    notes = cases["billing_reasons"].notes
    at = add_months(T0, 1) + 10 * DAY
    for cid in ("cus_ok", "cus_null", "cus_new"):
        assert [mrr_at(con, "billing_reasons", cid, t) for t in (at - 1, at)] == [d("30"), d("50")], cid
        got = con.execute("SELECT CAST(epoch(occurred_at) AS BIGINT), movement, mrr_delta, source_invoice_id "
                          "FROM mrr_movements WHERE account_id = 'billing_reasons' AND customer_id = ? "
                          "AND movement <> 'new'", [cid]).fetchall()
        assert got == [(at, "seat_expansion", d("20"), notes[cid])], cid
    assert quality(con, "billing_reasons") == []


def test_proration_lines_without_a_period_fall_back_to_the_sync_and_say_so(
        shared: tuple[Con, dict[str, Case]]) -> None:
    """README (invoice_snapshot_mismatch: without events, the sync's state stands from the sync itself when nothing
    shows when it changed). The lines of the 11 Feb proration say neither from when nor to when they bill: nothing
    dates the change to 5 seats, so 30.00 until the sync of 1 Mar, 50.00 from it, and one row naming si_1 and the 1
    Feb renewal (3 seats) at the sync."""
    con, cases = shared
    assert [mrr_at(con, "lines_without_period", "cus_1", t) for t in (SEEN - 1, SEEN)] == [d("30"), d("50")]
    assert [r[:5] for r in quality(con, "lines_without_period")] == [
        ("invoice_snapshot_mismatch", "subscription_item", "si_1", cases["lines_without_period"].notes["renewal"],
         SEEN)]


def test_a_customer_with_invoices_of_one_time_items_only_has_no_mrr(shared: tuple[Con, dict[str, Case]]) -> None:
    """design.md 4 (one-time items do not change MRR): no subscription, one manual invoice of an invoice item:
    no MRR, no movement, and nothing to report (README: unusable_object, not a one-time invoice item)."""
    con, _ = shared
    assert mrr_at(con, "invoices_only", "cus_1", T0 + DAY) == 0 and moves(con, "invoices_only", "cus_1") == []
    assert quality(con, "invoices_only") == []


def test_invoices_of_a_subscription_the_store_does_not_hold_are_named(shared: tuple[Con, dict[str, Case]]) -> None:
    """A data_quality row names sub_x or one of its invoices."""
    con, cases = shared
    named = {r[2] for r in quality(con, "orphan_invoices")} | {r[3] for r in quality(con, "orphan_invoices")}
    assert named & {"sub_x", *cases["orphan_invoices"].notes["invoices"]}


def test_a_recurring_price_without_its_recurring_terms_counts_nothing_and_says_so(
        shared: tuple[Con, dict[str, Case]]) -> None:
    """README (unknown_interval: a recurring price billed at an interval the rules do not normalise, its items
    counted zero). `recurring` null gives no interval: 0 MRR, no movement, one row naming the price."""
    con, _ = shared
    assert mrr_at(con, "recurring_null", "cus_1", T0 + DAY) == 0 and moves(con, "recurring_null", "cus_1") == []
    assert [r[:4] for r in quality(con, "recurring_null")] == [("unknown_interval", "price", "odd", None)]


def test_a_billion_seats_at_ten_thousand_fit_the_views_money(shared: tuple[Con, dict[str, Case]]) -> None:
    """1,000,000,000 x 10,000.00 = 10,000,000,000,000.00 a month, under DECIMAL(18,4)'s 99,999,999,999,999.9999:
    exact, to the cent, as customer MRR and as the `new` row."""
    con, _ = shared
    assert mrr_at(con, "billion_seats", "cus_1", T0 + DAY) == d("10000000000000.0000")
    assert moves(con, "billion_seats", "cus_1") == [(T0, "new", d("10000000000000.0000"))]


def test_a_negative_quantity_is_named(shared: tuple[Con, dict[str, Case]]) -> None:
    """By hand: -2 seats is no quantity an MRR can take (-2 x 5.00 would take 10.00 off): the customer's MRR is the
    30.00 (3 x 10.00) of si_a, and a data_quality row names si_b."""
    con, _ = shared
    assert mrr_at(con, "negative_quantity", "cus_1", T0 + DAY) == d("30")
    assert [r for r in quality(con, "negative_quantity") if "si_b" in (r[2], r[3])]


# --- the cases that may stop a recompute: a store each -----------------------------------------------------------

def alone(template: Path, tmp_path: Path, c: Case) -> tuple[Con, DataError | None]:
    """``c`` alone in a store, recomputed: the store and the recompute's DataError (None when it went through)."""
    con = store_from(template, tmp_path / "alone.duckdb")
    c.world.load(con, seen_at=c.seen_at, events=c.events)
    try:
        recompute(con, Settings())
    except DataError as exc:
        return con, exc
    return con, None


def test_a_quantity_beyond_64_bits_is_an_error_or_a_row_not_a_silent_zero(template: Path, tmp_path: Path) -> None:
    """cus_1: 3 basic seats (30.00). cus_2: 10,000,000,000,000,000,000 basic seats, in the listing and in the
    event alike. By hand: 10^19 x 10.00 = 10^20 a month, more than the 99,999,999,999,999.9999 money in the views
    holds: either the recompute stops with one line that names cus_2 (or si_2) and says to check the quantities
    (as for a quantity of 10^10 at 999,999.99), or cus_2's item is a data_quality row saying its quantity cannot be
    read, with no row claiming the listing differs from the event."""
    w = catalogue(World(account_id="beyond"))
    for cid, n in (("cus_1", "1"), ("cus_2", "2")):
        w.customer(cid)
        w.subscribe(f"sub_{n}", cid, [(f"si_{n}", "basic", 3)], T0, event=False, invoice=False)
    w.objects["subscriptions"]["sub_2"]["items"]["data"][0]["quantity"] = 10**19
    for sid in ("sub_1", "sub_2"):
        w.event("customer.subscription.created", T0, w.objects["subscriptions"][sid])
    con, error = alone(template, tmp_path, Case(w))
    try:
        if error is not None:
            msg = str(error)
            assert "\n" not in msg and ("cus_2" in msg or "si_2" in msg) and "quantit" in msg, msg
            return
        rows = quality(con, "beyond")
        assert not [r for r in rows if r[0] == "snapshot_event_mismatch"], rows
        assert [r for r in rows if "si_2" in (r[2], r[3]) and "quantity" in (r[5] or "")], rows
    finally:
        con.close()


def beyond_64_bits(where: str) -> World:
    """cus_1: 3 basic seats (30.00) from T0 with its events. cus_2 with a quantity of 10^19 in one place only: its
    item as the sync lists it (no event, no invoice: the snapshot alone says it), an invoice line of its first
    invoice, or a pending invoice item of an update (Stripe's default create_prorations)."""
    w = catalogue(World(account_id="beyond_" + where))
    w.customer("cus_1")
    w.subscribe("sub_1", "cus_1", [("si_1", "basic", 3)], T0)
    w.customer("cus_2")
    huge = 10**19
    if where == "snapshot":
        w.subscribe("sub_2", "cus_2", [("si_2", "basic", 3)], T0, event=False, invoice=False)
        w.objects["subscriptions"]["sub_2"]["items"]["data"][0]["quantity"] = huge
    elif where == "line":
        w.subscribe("sub_2", "cus_2", [("si_2", "basic", 3)], T0)
        invoice = next(v for v in w.objects["invoices"].values()
                       if v["parent"]["subscription_details"]["subscription"] == "sub_2")
        invoice["lines"]["data"][0]["quantity"] = huge
    else:
        w.subscribe("sub_2", "cus_2", [("si_2", "basic", 3)], T0)
        w.update("sub_2", T0 + 10 * DAY, items=[("si_2", "basic", 5)], pending=True)
        for item in w.objects["invoiceitems"].values():
            item["quantity"] = huge
    return w


@pytest.mark.parametrize("where", ["snapshot", "line", "pending_item"])
def test_a_quantity_beyond_64_bits_anywhere_the_load_keeps_one_stops_the_recompute(
        template: Path, tmp_path: Path, where: str) -> None:
    """The standard (a clear one-line error, never a silently wrong number): a quantity of 10,000,000,000,000,000,000
    that only the stored JSON holds (the typed column the load fills is NULL) stops the recompute with one line that
    names the object and its quantity, and the store keeps what it had."""
    w = beyond_64_bits(where)
    con, error = alone(template, tmp_path, Case(w))
    try:
        assert error is not None, "the recompute went through"
        msg = str(error)
        named = {"snapshot": "subscription item si_2", "line": "invoice line ", "pending_item": "invoice item "}[where]
        assert "\n" not in msg and named in msg and "10000000000000000000" in msg and "quantity" in msg, msg
        assert con.execute("SELECT count(*) FROM metrics_runs").fetchall() == [(0,)]
    finally:
        con.close()


@pytest.mark.parametrize("where", ["snapshot", "line", "pending_item"])
def test_a_quantity_beyond_64_bits_a_later_sync_brings_stops_the_changed_customers_recompute(
        template: Path, tmp_path: Path, where: str) -> None:
    """The same quantity arriving with a later sync (cus_2's item as listed after an update that left no event, a
    renewal's line, or an update's pending invoice item) stops the recompute of the changed customers too (the scope
    copies those rows' JSON), and their rows stay as the last recompute left them."""
    import datetime as dt

    from stripe_churn.metrics.incremental import recompute_changed

    w = beyond_64_bits("snapshot")
    w.objects["subscriptions"]["sub_2"]["items"]["data"][0]["quantity"] = 3
    con = store_from(template, tmp_path / "later.duckdb")
    try:
        w.load(con, seen_at=SEEN)
        recompute(con, Settings())
        before = con.execute("SELECT * FROM derived_mrr_movements ORDER BY ALL").fetchall()
        assert before
        if where == "snapshot":
            w.update("sub_2", SEEN + DAY, items=[("si_2", "basic", 5)], event=False, prorate=False)
            w.objects["subscriptions"]["sub_2"]["items"]["data"][0]["quantity"] = 10**19
        elif where == "line":
            w.cycle("sub_2", SEEN + DAY)["lines"]["data"][0]["quantity"] = 10**19
        else:
            w.update("sub_2", SEEN + DAY, items=[("si_2", "basic", 5)], pending=True)
            for item in w.objects["invoiceitems"].values():
                item["quantity"] = 10**19
        w.fx_rates = []  # (stored with the first load)
        w.load(con, seen_at=SEEN + 2 * DAY)
        with pytest.raises(DataError) as caught:
            recompute_changed(con, Settings(), dt.datetime.fromtimestamp(SEEN + 2 * DAY, tz=dt.UTC))
        named = {"snapshot": "subscription item si_2", "line": "invoice line ", "pending_item": "invoice item "}[where]
        assert named in str(caught.value) and "10000000000000000000" in str(caught.value), caught.value
        assert con.execute("SELECT * FROM derived_mrr_movements ORDER BY ALL").fetchall() == before
    finally:
        con.close()


def test_a_currency_option_under_a_key_with_a_quote_does_not_stop_the_recompute(template: Path,
                                                                                  tmp_path: Path) -> None:
    """`intl` 20.00 USD with options {'eu"r': 18.00, 'eur': 17.00}; cus_1 billed in eur, 1 x intl. By hand: 'eu"r'
    is no currency any subscription is billed in, so nothing reads it; cus_1 counts the eur option, 17.00 x 1.10 =
    18.70. (A one-line error naming the price `intl` would do too.)"""
    w = catalogue(World(account_id="options"))
    w.price("intl", "prod_seat", 2_000)["currency_options"] = {'eu"r': {"unit_amount": 1_800},
                                                               "eur": {"unit_amount": 1_700}}
    w.customer("cus_1", currency="eur")
    w.subscribe("sub_1", "cus_1", [("si_1", "intl", 1)], T0)
    con, error = alone(template, tmp_path, Case(w))
    try:
        if error is not None:
            assert "\n" not in str(error) and "intl" in str(error), error
            return
        assert mrr_at(con, "options", "cus_1", T0 + DAY) == d("18.7")
    finally:
        con.close()


# ============================================================================================== the sync

KEY = "sk_test_odd_data"
S0 = ts(2026, 6, 1)
ODD_CUSTOMER = "cus_ü'\"\\ x"  # (no "/": see SLASHED)
SLASHED = "prod/pro"  # a product's id is free text in Stripe (create product: `id`)
BIG = b"100000000000000000000001"  # an integer beyond 64 bits (orjson reads it as a double)


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


# placeholders the served objects carry, replaced in every answer by the bytes no JSON library of ours writes
SWAPS = {b'"@big@"': BIG, b'"@deep200@"': nested(200), b'"@deep300@"': nested(300)}


def swapped(body: bytes) -> bytes:
    for placeholder, real in SWAPS.items():
        body = body.replace(placeholder, real)
    return body


def dumps(value: Any) -> bytes:
    """Compact JSON by Python's json, which writes an integer beyond 64 bits and any nesting as they are."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def as_sent(obj: dict[str, Any]) -> Any:
    """``obj`` as the server sends it, parsed by Python's json (which keeps an integer beyond 64 bits whole)."""
    return json.loads(swapped(orjson.dumps(obj)))


Tamper = Callable[[RunningSandbox], None]


def serving(pages: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] | None = None) -> Tamper:
    """The server with SWAPS in every list page and retrieve, and each list page of a resource in ``pages`` changed
    by its function (the parsed page in, the page to send out)."""
    def tamper(sb: RunningSandbox) -> None:
        catalog = sb.app.catalog
        list_page, retrieve = catalog.list_page, catalog.retrieve

        def listed(resource: str, params: Any) -> Any:
            body = swapped(b"".join(bytes(p) for p in list_page(resource, params)))
            if pages and resource in pages:
                body = dumps(pages[resource](json.loads(body)))
            return [body]

        def retrieved(resource: str, oid: str, params: Any) -> bytes:
            return swapped(bytes(retrieve(resource, oid, params)))

        catalog.list_page, catalog.retrieve = listed, retrieved  # type: ignore[method-assign]
    return tamper


def twice(page: dict[str, Any]) -> dict[str, Any]:
    """Every object of the page twice (a page served again within one answer)."""
    return {**page, "data": page["data"] + copy.deepcopy(page["data"])}


def sync(w: World, clock: int, db: Path, tamper: Tamper, *, full: bool = False, **kw: Any) -> SyncResult:
    with start_in_thread(w.served(clock), api_key=KEY) as sb:
        tamper(sb)
        return run_sync(Settings(api_key=Secret(KEY), api_base=sb.url, db=db, rate_limit=10_000, **kw), full=full,
                        progress=False)


def rows_of(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def raw_of(db: Path, table: str, oid: str) -> Any:
    ((raw,),) = rows_of(db, f"SELECT CAST(raw AS VARCHAR) FROM {table} WHERE id = ?", [oid])
    return json.loads(raw)


RAW = ("customers", "products", "prices", "subscriptions", "subscription_items", "invoices", "invoice_lines",
       "events", "discounts", "coupons", "credit_notes", "invoice_items")


def stored(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every raw table's rows (id, deleted, raw as text, version)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: con.execute(f"SELECT id, deleted, CAST(raw AS VARCHAR), version FROM {t} ORDER BY id").fetchall()
                for t in RAW}
    finally:
        con.close()


@dataclass
class Synced:
    db: Path
    world: World
    full: SyncResult
    after_full: dict[str, Any]  # customer id -> its raw after the full sync
    incremental: SyncResult
    deep_outcome: SyncResult | BaseException
    sent_first: dict[str, Any]  # customer id -> as the full sync's server sent it
    sent: dict[str, Any]  # object id -> as the server last sent it


@pytest.fixture(scope="module")
def synced(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Synced:
    """A hand-built account synced in full, then twice incrementally, the server sending the odd bytes:
    - cus_1: 1 x 10.00 of product SLASHED (its id holds a "/");
    - ODD_CUSTOMER: an id of unicode, quotes, a backslash and a space; metadata of 10,000 keys plus a 1 MB value
      and an object nested 200 levels deep; `balance` BIG;
    - cus_deep: metadata holding an object nested 300 levels deep;
    every customers page holding each customer twice. First incremental (1 day on): ODD_CUSTOMER renamed and
    SLASHED renamed, one event each, the events page holding each event twice. Second (2 days on): cus_deep
    renamed."""
    w = World()
    w.customer("cus_1", created=S0)
    w.product(SLASHED, unit_label="seat")
    w.price("price_1", SLASHED, 1_000)
    w.subscribe("sub_1", "cus_1", [("si_1", "price_1", 1)], S0)
    odd = w.customer(ODD_CUSTOMER, created=S0 + 10, balance="@big@")
    odd["metadata"] = {**{f"k{i:05d}": str(i) for i in range(10_000)}, "big": "x" * 1_000_000, "deep": "@deep200@"}
    deep = w.customer("cus_deep", created=S0 + 20)
    deep["metadata"] = {"deep": "@deep300@"}
    db = tmp_path_factory.mktemp("odd_sync") / "store.duckdb"
    shutil.copyfile(template, db)

    full = sync(w, S0 + DAY, db, serving({"customers": twice}), full=True)
    after_full = {r[0]: json.loads(r[1]) for r in rows_of(db, "SELECT id, CAST(raw AS VARCHAR) FROM customers")}
    sent_first = {cid: as_sent(c) for cid, c in w.objects["customers"].items()}

    for obj, etype in ((odd, "customer.updated"), (w.objects["products"][SLASHED], "product.updated")):
        before = copy.deepcopy(obj)
        obj["name"] = f"{obj.get('name') or obj['id']} renamed"
        w.event(etype, S0 + DAY + 60, obj, before)
    incremental = sync(w, S0 + 2 * DAY, db, serving({"events": twice}))
    sent = {ODD_CUSTOMER: as_sent(odd), SLASHED: as_sent(w.objects["products"][SLASHED])}

    before = copy.deepcopy(deep)
    deep["name"] = "deep renamed"
    w.event("customer.updated", S0 + 2 * DAY + 60, deep, before)
    deep_outcome: SyncResult | BaseException
    try:
        deep_outcome = sync(w, S0 + 3 * DAY, db, serving(), max_retries=0)
    except Exception as exc:
        deep_outcome = exc
    return Synced(db, w, full, after_full, incremental, deep_outcome, sent_first, sent)


def test_a_full_listing_keeps_odd_customers_exactly_and_once(synced: Synced) -> None:
    """design.md 7 (raw: the latest state as Stripe sent it; one row per id). Each customer listed twice on its
    page is one row, its JSON equal to what was sent: the 24-digit balance whole, the 10,000 metadata keys, the
    1 MB value, the 200- and the 300-level nestings, the id with its quotes and backslash."""
    assert synced.full.status == "succeeded" and synced.full.error is None
    assert rows_of(synced.db, "SELECT count(*), count(DISTINCT id) FROM customers") == [(3, 3)]
    assert synced.after_full == synced.sent_first
    assert sorted(synced.sent_first) == sorted(["cus_1", ODD_CUSTOMER, "cus_deep"])
    assert synced.after_full[ODD_CUSTOMER]["balance"] == int(BIG)


def test_an_incremental_sync_refreshes_the_odd_customer_and_stores_each_event_once(synced: Synced) -> None:
    """The customer.updated event of ODD_CUSTOMER: the row takes the new name and keeps every metadata key, the 1 MB
    value and the 200-level nesting, not deleted; the two events, each sent twice on their page, are two rows."""
    assert synced.incremental.status == "succeeded" and synced.incremental.error is None
    got = raw_of(synced.db, "customers", ODD_CUSTOMER)
    assert got["name"] == synced.sent[ODD_CUSTOMER]["name"] and got["metadata"] == synced.sent[ODD_CUSTOMER]["metadata"]
    assert rows_of(synced.db, "SELECT deleted FROM customers WHERE id = ?", [ODD_CUSTOMER]) == [(False,)]
    assert rows_of(synced.db, "SELECT count(*), count(DISTINCT id) FROM events WHERE type IN ('customer.updated', "
                              "'product.updated') AND object_id <> 'cus_deep'") == [(2, 2)]


def test_an_incremental_sync_keeps_an_integer_beyond_64_bits_whole(synced: Synced) -> None:
    """design.md 7: raw is the JSON as Stripe sent it. After the refresh of ODD_CUSTOMER (its event and its
    retrieve, both parsed into dicts) its raw equals what was sent, the balance 100000000000000000000001 (read as
    orjson reads it, a double, it was stored as 1.0000000000000001e+23)."""
    got = raw_of(synced.db, "customers", ODD_CUSTOMER)
    assert got["balance"] == int(BIG) and got == synced.sent[ODD_CUSTOMER]


def test_a_listed_object_the_dict_path_takes_keeps_an_integer_beyond_64_bits_whole(template: Path,
                                                                                     tmp_path: Path) -> None:
    """A full listing whose subscription comes with its item lacking the subscription's id (the dict path fills
    it in: the object is parsed into dicts, not stored as its bytes came) and with a field holding BIG: the
    subscription and its item are stored with BIG whole, the item with its subscription's id."""
    w = small_account()

    def odd_subscriptions(page: dict[str, Any]) -> dict[str, Any]:
        sub = page["data"][0]
        item = sub["items"]["data"][0]
        del item["subscription"]
        item["odd_count"] = int(BIG)
        return {**page, "data": [{**sub, "odd_count": -int(BIG)}]}

    db = tmp_path / "dict_path.duckdb"
    shutil.copyfile(template, db)
    assert sync(w, S0 + DAY, db, serving({"subscriptions": odd_subscriptions}), full=True).status == "succeeded"
    assert raw_of(db, "subscriptions", "sub_1")["odd_count"] == -int(BIG)
    item = raw_of(db, "subscription_items", "si_1")
    assert item["odd_count"] == int(BIG) and item["subscription"] == "sub_1"


def test_a_product_whose_id_holds_a_slash_is_refreshed_not_taken_for_deleted(synced: Synced) -> None:
    """After the incremental sync the product is stored once, not deleted, with its new name."""
    assert rows_of(synced.db, "SELECT id, deleted, name FROM products WHERE id = ?", [SLASHED]) == [
        (SLASHED, False, synced.sent[SLASHED]["name"])]


def test_an_event_of_an_object_nested_300_levels_deep_is_stored_as_the_listing_stored_it(synced: Synced) -> None:
    """By hand: the event's customer is stored as sent (the new name, the nesting whole) as the full listing stored
    it, or the run fails with a one-line error of this product (a StripeChurnError) that says to run again or
    what to check."""
    outcome = synced.deep_outcome
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, StripeChurnError) and "\n" not in str(outcome), repr(outcome)
        return
    assert outcome.status == "succeeded", outcome.error
    assert raw_of(synced.db, "customers", "cus_deep") == as_sent(synced.world.objects["customers"]["cus_deep"])


BODIES: dict[str, Callable[[bytes], bytes]] = {
    "nan": lambda body: body.replace(b'"livemode":false', b'"livemode":NaN', 1),
    "data-not-a-list": lambda body: dumps({**json.loads(body), "data": {"0": json.loads(body)["data"][0]}}),
    "cut-short": lambda body: body[: len(body) // 2],
}


def small_account() -> World:
    """cus_1 with 1 x 10.00 from 1 Jun 2026."""
    w = World()
    w.customer("cus_1", created=S0)
    w.product("prod_1", unit_label="seat")
    w.price("price_1", "prod_1", 1_000)
    w.subscribe("sub_1", "cus_1", [("si_1", "price_1", 1)], S0)
    return w


@pytest.fixture(scope="module")
def small_synced(template: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[World, Path]:
    """small_account synced in full once."""
    w = small_account()
    db = tmp_path_factory.mktemp("odd_small") / "store.duckdb"
    shutil.copyfile(template, db)
    assert sync(w, S0 + DAY, db, serving(), full=True).status == "succeeded"
    return w, db


@pytest.mark.parametrize("bad", sorted(BODIES))
def test_a_customers_page_that_is_no_json_list_fails_in_one_line_and_keeps_the_store(
        small_synced: tuple[World, Path], bad: str) -> None:
    """A 200 whose body is JSON with NaN (no JSON number), a list object whose `data` is an object, or JSON cut
    off halfway (a complete answer, not a dropped connection): a full sync of the store stops with one line naming
    GET /v1/customers and saying to run the sync again, recorded as a failed run with that line, and every raw
    table holds what it held."""
    w, db = small_synced
    before = stored(db)

    def tamper(sb: RunningSandbox) -> None:
        listed = sb.app.catalog.list_page

        def customers(resource: str, params: Any) -> Any:
            pieces = listed(resource, params)
            return [BODIES[bad](b"".join(bytes(p) for p in pieces))] if resource == "customers" else pieces

        sb.app.catalog.list_page = customers  # type: ignore[method-assign]

    with pytest.raises(BadResponseError) as info:
        sync(w, S0 + 2 * DAY, db, tamper, full=True, max_retries=0)
    msg = str(info.value)
    assert "\n" not in msg and "GET /v1/customers" in msg and "run the sync again" in msg, msg
    assert rows_of(db, "SELECT status, error FROM sync_runs ORDER BY started_at DESC LIMIT 1") == [("failed", msg)]
    assert stored(db) == before


def test_listed_objects_of_another_type_are_named(template: Path, tmp_path: Path) -> None:
    """cus_1 with 1 x 10.00 from 1 Jun 2026; the customers page also holds {"id": "sub_odd", "object":
    "subscription", ...} and the subscriptions page {"id": "in_odd", "object": "invoice", "status": "paid", ...}.
    By hand: each is no object of the list it came in, so either the sync stops with one line naming it, or the
    recompute lists each as an unusable_object row; and cus_1's MRR is 10.00 either way."""
    w = small_account()

    def stranger(oid: str, kind: str, **extra: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def add(page: dict[str, Any]) -> dict[str, Any]:
            first = page["data"][0]
            return {**page, "data": [*page["data"], {**first, "id": oid, "object": kind, "created": S0 - 5, **extra}]}
        return add

    db = tmp_path / "strangers.duckdb"
    shutil.copyfile(template, db)
    try:
        sync(w, S0 + DAY, db, serving({"customers": stranger("sub_odd", "subscription"),
                                       "subscriptions": stranger("in_odd", "invoice", status="paid")}), full=True)
    except BadResponseError as exc:
        assert "\n" not in str(exc) and ("sub_odd" in str(exc) or "in_odd" in str(exc)), exc
        return
    with open_store(db) as con:
        recompute(con, Settings())
        assert mrr_at(con, w.account_id, "cus_1", S0 + DAY) == d("10")
        found = {(r[0], r[2]) for r in quality(con, w.account_id)}
    assert {("unusable_object", "sub_odd"), ("unusable_object", "in_odd")} <= found, found
