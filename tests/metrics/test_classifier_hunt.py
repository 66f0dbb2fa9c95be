"""More rules of design.md 5 (the movement classifier), each on a small hand-built account: the scenarios an
outside checker writes by hand and test_classifier.py does not cover (several items of several families in one
window, switch pairing of two removed and two added items, a seat product switched to a resource one, the exact
split of a price change against a quantity change, the window's edges, product family and unit precedence).

Each test states the rule it checks; the expected rows (time, movement, category, delta, item) are worked out by
hand from design.md 4 and 5 alone. Every test also checks that the rows of each transition add up to the
customer's change and that every row names the Stripe objects it came from (an event, else an invoice: a usage
invoice has no event of its own).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from builders import World, ts
from conftest import OneStore
from test_classifier import MINUTE, T0, Row, base, check_invariants, month, movements

Derive = Callable[..., duckdb.DuckDBPyConnection]

# The tests marked @one_store are each an account of one store, derived once (conftest.OneStore): their queries see
# their own account's rows alone.
one_store = OneStore()
world, derive, one_store_built = one_store.fixtures()
D = Decimal


def changes(con: duckdb.DuckDBPyConnection, customer: str = "cus_1") -> list[Row]:
    """The customer's movements other than the first `new` (time, movement, category, delta, item)."""
    got = movements(con, customer)
    assert got and got[0][1] == "new", got
    return got[1:]


def expect(con: duckdb.DuckDBPyConnection, expected: list[Row], customer: str = "cus_1",
           skip_new: bool = True, without_ids: tuple[str, ...] = ("fx",)) -> None:
    """The customer's movements (but its first `new`, unless ``skip_new`` is false) are ``expected``; the invariants of
    test_classifier hold; every row names its subscription, item, product and price, and every row but those of the
    movements in ``without_ids`` an event or invoice (an fx row names none: a rate's move is no Stripe object)."""
    got = changes(con, customer) if skip_new else movements(con, customer)
    want = sorted(expected, key=lambda r: (r[0], r[1], r[4] or ""))
    assert got == want, ("movements differ:\n  got      " + "\n           ".join(map(str, got))
                         + "\n  expected " + "\n           ".join(map(str, want)))
    check_invariants(con, customer)
    missing = con.execute("SELECT movement, subscription_item_id FROM mrr_movements WHERE customer_id = ? AND "
                          "((coalesce(source_event_id, source_invoice_id) IS NULL AND NOT list_contains(?, movement)) "
                          "OR subscription_id IS NULL OR subscription_item_id IS NULL "
                          "OR product_id IS NULL OR price_id IS NULL)", [customer, list(without_ids)]).fetchall()
    assert not missing, f"rows without their Stripe ids: {missing}"


def shared_store(tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path, w: World, seen_at: int,
                 **rules: Any) -> Iterator[duckdb.DuckDBPyConnection]:
    """One store holding ``w`` (several customers, one case each), derived once for a module: a recompute of a tiny
    store is most of a second, so one for a group of cases instead of one each."""
    from conftest import make_settings

    from stripe_churn.metrics.runner import recompute
    from stripe_churn.store.db import open_store

    path = tmp_path_factory.mktemp("hunt") / "hunt.duckdb"
    shutil.copyfile(migrated_store_file, path)
    con = open_store(path)
    w.load(con, seen_at=seen_at)
    recompute(con, make_settings(**rules))
    try:
        yield con
    finally:
        con.close()


def row(con: duckdb.DuckDBPyConnection, where: str) -> dict[str, Any]:
    cur = con.execute(f"SELECT * FROM mrr_movements WHERE {where}")
    cols = [d[0] for d in cur.description]
    (r,) = cur.fetchall()
    return dict(zip(cols, r, strict=True))


def event_of(w: World, etype: str, sid: str, at: int) -> str:
    (e,) = [e["id"] for e in w.events
            if e["type"] == etype and e["data"]["object"]["id"] == sid and e["created"] == at]
    return e


# --- several components in one window -----------------------------------------------------------------

@one_store
def test_several_families_changed_in_one_update(world: World, derive: Derive) -> None:
    """design.md 5 table + pairing: one update adds two seats of core (same item: seat_expansion), removes the
    only analytics item while the customer stays (downgrade) and adds an item of family api the customer never
    had (cross_sell): three rows that add up to the change 80 -> 90."""
    w = base(world)
    w.price("api_flat", "prod_api", 4_000)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3), ("si_a", "analytics", 1)], T0)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_c", "core_basic", 5), ("si_p", "api_flat", 1)])
    con = derive(w, seen_at=month(2))
    expect(con, [
        (t, "seat_expansion", "expansion", D("20.0000"), "si_c"),
        (t, "downgrade", "contraction", D("-50.0000"), "si_a"),
        (t, "cross_sell", "expansion", D("40.0000"), "si_p"),
    ])
    upd = event_of(w, "customer.subscription.updated", "sub_1", t)
    assert {r[0] for r in con.execute("SELECT source_event_id FROM mrr_movements WHERE occurred_at = "
                                      "to_timestamp(?)", [t]).fetchall()} == {upd}


@one_store
def test_two_removed_and_two_added_items_of_one_family_pair_largest_first(world: World, derive: Derive) -> None:
    """design.md 5 pairing: removed basic x3 (30) and pro x1 (20), added pro x4 (80) and basic x1 (10), all of
    family core. Largest first: basic x3 -> pro x4 (plan MRR(pro,3) - MRR(basic,3) = 30, quantity MRR(pro,4) -
    MRR(pro,3) = 20) and pro x1 -> basic x1 (plan -10). Rows on the added items; total 50 -> 90."""
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_1", "core_basic", 3), ("si_2", "core_pro", 1)], T0)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_3", "core_pro", 4), ("si_4", "core_basic", 1)])
    con = derive(w, seen_at=month(2))
    expect(con, [
        (t, "upgrade", "expansion", D("30.0000"), "si_3"),
        (t, "seat_expansion", "expansion", D("20.0000"), "si_3"),
        (t, "downgrade", "contraction", D("-10.0000"), "si_4"),
    ])


@one_store
def test_a_switch_beside_an_added_item_of_the_kept_family(world: World, derive: Derive) -> None:
    """design.md 5 pairing: basic x3 (30) is replaced by pro x1 (20) and addon x3 (15), all family core. The
    removed item pairs with the largest added one (plan MRR(pro,3) - MRR(basic,3) = 30, quantity MRR(pro,1) -
    MRR(pro,3) = -40); the addon stays unpaired, an added item of a family the customer keeps: seat_expansion."""
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_1", "core_basic", 3)], T0)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_2", "core_pro", 1), ("si_3", "addon", 3)])
    con = derive(w, seen_at=month(2))
    expect(con, [
        (t, "upgrade", "expansion", D("30.0000"), "si_2"),
        (t, "seat_contraction", "contraction", D("-40.0000"), "si_2"),
        (t, "seat_expansion", "expansion", D("15.0000"), "si_3"),
    ])


@one_store
def test_a_removed_item_left_unpaired_in_a_kept_family_is_a_seat_contraction(world: World, derive: Derive
                                                                             ) -> None:
    """design.md 5 pairing: pro x3 (60) and addon x2 (10) removed, basic x4 (40) added, all family core. The
    largest removed pairs with the added one (plan MRR(basic,3) - MRR(pro,3) = -30, quantity MRR(basic,4) -
    MRR(basic,3) = +10); the addon stays unpaired, removed from a family the customer keeps: seat_contraction."""
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_1", "core_pro", 3), ("si_2", "addon", 2)], T0)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_3", "core_basic", 4)])
    con = derive(w, seen_at=month(2))
    expect(con, [
        (t, "downgrade", "contraction", D("-30.0000"), "si_3"),
        (t, "seat_expansion", "expansion", D("10.0000"), "si_3"),
        (t, "seat_contraction", "contraction", D("-10.0000"), "si_2"),
    ])


@one_store
def test_a_replaced_item_at_the_same_price_is_a_seat_change_not_a_plan_change(world: World, derive: Derive
                                                                              ) -> None:
    """design.md 5 pairing and split: the item is replaced by a new item id at the same price with more seats:
    paired (same family), plan part MRR(basic,3) - MRR(basic,3) = 0, quantity part 20: one seat_expansion."""
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_1", "core_basic", 3)], T0)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_2", "core_basic", 5)])
    con = derive(w, seen_at=month(2))
    expect(con, [(t, "seat_expansion", "expansion", D("20.0000"), "si_2")])


@one_store
def test_seat_product_switched_to_a_resource_product_of_the_same_family(world: World, derive: Derive) -> None:
    """design.md 5: a seat item (basic x3, 30.00) replaced by a storage item of the same family (unit GB, 0.10
    x 500 = 50.00) is a plan switch; plan part MRR(storage, 3) - MRR(basic, 3) = 0.30 - 30 = -29.70 (downgrade),
    quantity part MRR(storage, 500) - MRR(storage, 3) = 49.70 on the new item's unit (resource_expansion)."""
    w = base(world)
    w.product("prod_storage", unit_label="GB", family="core")
    w.price("storage", "prod_storage", 10)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_s", "storage", 500)])
    con = derive(w, seen_at=month(2))
    expect(con, [
        (t, "downgrade", "contraction", D("-29.7000"), "si_s"),
        (t, "resource_expansion", "expansion", D("49.7000"), "si_s"),
    ])


# --- the exact split ----------------------------------------------------------------------------------

SPLITS = {
    # price up, quantity down: plan MRR(pro,5) - MRR(basic,5) = 50; quantity MRR(pro,2) - MRR(pro,5) = -60
    "price-up-quantity-down": (("core_basic", 5), ("core_pro", 2), [("upgrade", "expansion", "50.0000"),
                                                                    ("seat_contraction", "contraction", "-60.0000")]),
    # price down, quantity up: plan MRR(basic,2) - MRR(pro,2) = -20; quantity MRR(basic,5) - MRR(basic,2) = 30
    "price-down-quantity-up": (("core_pro", 2), ("core_basic", 5), [("downgrade", "contraction", "-20.0000"),
                                                                    ("seat_expansion", "expansion", "30.0000")]),
    # monthly 100 x1 -> annual 1200 x2: plan MRR(annual,1) - MRR(monthly,1) = 0 (no row), quantity +100
    "interval-switch-equal-with-seats": (("core_monthly", 1), ("core_annual", 2),
                                         [("seat_expansion", "expansion", "100.0000")]),
    # monthly 100 x2 -> annual 1500 x1: plan MRR(annual_hi,2) - MRR(monthly,2) = 250 - 200; quantity 125 - 250
    "interval-switch-higher-fewer-seats": (("core_monthly", 2), ("core_annual_hi", 1),
                                           [("upgrade", "expansion", "50.0000"),
                                            ("seat_contraction", "contraction", "-125.0000")]),
    # graduated tiers (2 at 15.00, then 5.00): MRR(tiered,3) = 35, MRR(tiered,5) = 45; plan 35 - 30, quantity 10
    "tiered-new-price": (("core_basic", 3), ("core_tiered", 5), [("upgrade", "expansion", "5.0000"),
                                                                 ("seat_expansion", "expansion", "10.0000")]),
    # weekly 3.00 (13.00 a month) x2 from basic x3: plan MRR(weekly,3) - MRR(basic,3) = 39 - 30; quantity 26 - 39
    "weekly-new-price": (("core_basic", 3), ("core_weekly", 2), [("upgrade", "expansion", "9.0000"),
                                                                 ("seat_contraction", "contraction", "-13.0000")]),
    # packs of 10 seats rounded up at 50.00 a pack, 25 seats (3 packs) from basic x3: plan MRR(pack,3) = 50 - 30;
    # quantity MRR(pack,25) - MRR(pack,3) = 150 - 50
    "transform-quantity-new-price": (("core_basic", 3), ("core_pack", 25),
                                     [("upgrade", "expansion", "20.0000"),
                                      ("seat_expansion", "expansion", "100.0000")]),
}


@pytest.fixture(scope="module")
def split_store(tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path
                ) -> Iterator[duckdb.DuckDBPyConnection]:
    """Every case of SPLITS as its own customer (cus_<case>) of one account, derived once."""
    w = base(World())
    w.price("core_tiered", "prod_core", None, tiers_mode="graduated",
            tiers=[{"up_to": 2, "unit_amount": 1_500}, {"up_to": None, "unit_amount": 500}])
    w.price("core_weekly", "prod_core", 300, interval="week")
    w.price("core_pack", "prod_core", 5_000, transform_quantity={"divide_by": 10, "round": "up"})
    for n, (case, (old, new, _)) in enumerate(SPLITS.items()):
        w.customer(f"cus_{case}")
        w.subscribe(f"sub_{n}", f"cus_{case}", [(f"si_{n}", *old)], T0)
        w.update(f"sub_{n}", month(1, 10), items=[(f"si_{n}", *new)])
    yield from shared_store(tmp_path_factory, migrated_store_file, w, month(2))


@pytest.mark.parametrize("case", list(SPLITS))
def test_split_of_a_price_and_quantity_change(split_store: duckdb.DuckDBPyConnection, case: str) -> None:
    """design.md 5: plan part = MRR(new price, old quantity) - MRR(old price, old quantity); quantity part =
    MRR(new price, new quantity) - MRR(new price, old quantity); an interval switch at equal monthly MRR moves
    nothing by itself."""
    item = f"si_{list(SPLITS).index(case)}"
    expect(split_store, [(month(1, 10), m, c, D(v), item) for m, c, v in SPLITS[case][2]], f"cus_{case}")


# --- the window ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("gap", [59, 61])
@one_store
def test_cancel_and_resubscribe_on_another_plan_either_side_of_the_window(world: World, derive: Derive,
                                                                          gap: int) -> None:
    """design.md 5 window: cancel basic x3 (30) and subscribe pro x3 (60) 59 minutes later: one transition dated
    at the cancellation, the two items paired as a plan switch (upgrade +30). 61 minutes later: two transitions,
    a cancellation (-30) and a reactivation (+60). Each row names the event that caused it."""
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_1", "core_basic", 3)], T0)
    t = month(1, 10)
    w.cancel("sub_1", t, feedback="switched_service")
    t2 = t + gap * MINUTE
    w.subscribe("sub_2", "cus_1", [("si_2", "core_pro", 3)], t2)
    con = derive(w, seen_at=month(2))
    created = event_of(w, "customer.subscription.created", "sub_2", t2)
    create_invoice = next(i["id"] for i in w.objects["invoices"].values()
                          if i["parent"]["subscription_details"]["subscription"] == "sub_2")
    if gap < 60:
        expect(con, [(t, "upgrade", "expansion", D("30.0000"), "si_2")])
        r = row(con, "movement = 'upgrade'")
        assert (r["source_event_id"], r["source_invoice_id"]) == (created, create_invoice)
        assert r["churn_type"] is None and r["cancellation_feedback"] is None
    else:
        expect(con, [
            (t, "cancellation", "churn", D("-30.0000"), "si_1"),
            (t2, "reactivation", "reactivation", D("60.0000"), "si_2"),
        ])
        c = row(con, "movement = 'cancellation'")
        assert (c["churn_type"], c["cancellation_feedback"], c["subscription_id"]) == (
            "voluntary", "switched_service", "sub_1")
        assert c["source_event_id"] == event_of(w, "customer.subscription.deleted", "sub_1", t)
        r = row(con, "movement = 'reactivation'")
        assert (r["source_event_id"], r["source_invoice_id"]) == (created, create_invoice)


@one_store
def test_cancel_and_resubscribe_on_the_same_plan_within_the_window_is_no_movement(world: World, derive: Derive
                                                                                  ) -> None:
    """design.md 5: a transition whose MRR does not change produces no row, although its items changed."""
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_1", "core_basic", 3)], T0)
    t = month(1, 10)
    w.cancel("sub_1", t)
    w.subscribe("sub_2", "cus_1", [("si_2", "core_basic", 3)], t + 30 * MINUTE)
    con = derive(w, seen_at=month(2))
    expect(con, [])


@one_store
def test_offsetting_components_in_one_window_are_no_movement(world: World, derive: Derive) -> None:
    """design.md 5: analytics (50) removed and five more core seats (50) within one window net to no change of
    the customer's MRR: no row at all."""
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3), ("si_a", "analytics", 1)], T0)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_c", "core_basic", 3)])
    w.update("sub_1", t + 20 * MINUTE, items=[("si_c", "core_basic", 8)])
    con = derive(w, seen_at=month(2))
    expect(con, [])


@one_store
def test_a_discount_starting_later_in_the_window_of_a_seat_change(world: World, derive: Derive) -> None:
    """design.md 4 and 5: 4 -> 8 seats at t (+40), a 25% forever discount put on 20 minutes later (80 -> 60): one
    transition dated at t, the seats valued at the discount before the change (none: +40) and the discount's start
    the rest (-20)."""
    w = base(world)
    w.coupon("c25", percent_off=25)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 4)], T0)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_c", "core_basic", 8)])
    seats = w.events[-1]["id"]
    d = w.discount("c25", t + 20 * MINUTE, customer="cus_1", subscription="sub_1")
    w.update("sub_1", t + 20 * MINUTE, discounts=[d["id"]])
    discount = w.events[-1]["id"]
    con = derive(w, seen_at=month(2))
    expect(con, [
        (t, "seat_expansion", "expansion", D("40.0000"), "si_c"),
        (t, "discount", "contraction", D("-20.0000"), "si_c"),
    ])
    # (each row names the event of its own change: design.md 5, every movement keeps the ids that caused it)
    got = dict(con.execute("SELECT movement, source_event_id FROM mrr_movements WHERE movement <> 'new'").fetchall())
    assert got == {"seat_expansion": seats, "discount": discount}


def test_a_rate_change_twenty_minutes_after_a_seat_change(world: World, derive: Derive) -> None:
    """design.md 4 and 5: a euro customer adds two seats at 23:40 (30 -> 50 EUR) and the rate moves from 1.00 to
    1.10 at midnight, 20 minutes later. A rate's move is no change of the customer's and joins no movement window:
    the seats at 23:40 at the rate then (+20.00), the rate's move at midnight on what the customer has then (50 x
    0.10 = +5.00, fx)."""
    w = base(world, currency="eur")
    w.fx_rates += [("2023-12-01", "eur", 1.0), ("2024-02-01", "eur", 1.10)]
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    t = ts(2024, 2, 1) - 20 * MINUTE
    w.update("sub_1", t, items=[("si_c", "core_basic", 5)])
    con = derive(w, seen_at=month(2))
    expect(con, [
        (t, "seat_expansion", "expansion", D("20.0000"), "si_c"),
        (ts(2024, 2, 1), "fx", "fx", D("5.0000"), "si_c"),
    ])


@one_store
def test_a_new_customer_netted_over_the_window_is_one_new(world: World, derive: Derive) -> None:
    """design.md 5: subscribe 3 x basic, 30 minutes later 5 x pro, 45 minutes in a second subscription of
    another family: one transition 0 -> 150 dated at the first change, one `new` with the whole delta."""
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.update("sub_1", T0 + 30 * MINUTE, items=[("si_c", "core_pro", 5)])
    w.subscribe("sub_2", "cus_1", [("si_a", "analytics", 1)], T0 + 45 * MINUTE)
    con = derive(w, seen_at=month(1))
    expect(con, [(T0, "new", "new", D("150.0000"), "si_c")], skip_new=False)


@one_store
def test_seats_added_then_canceled_within_the_window_is_one_cancellation(world: World, derive: Derive) -> None:
    """design.md 5: two more seats, then a cancellation 30 minutes later: one transition from M(A) = 30 to 0,
    dated at the first change, a cancellation of -30 with its churn_type and feedback."""
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_c", "core_basic", 5)])
    w.cancel("sub_1", t + 30 * MINUTE, feedback="too_expensive", comment="seats cost too much")
    con = derive(w, seen_at=month(2))
    expect(con, [(t, "cancellation", "churn", D("-30.0000"), "si_c")])
    c = row(con, "movement = 'cancellation'")
    assert (c["churn_type"], c["cancellation_feedback"], float(c["mrr_before"]), float(c["mrr_after"])) == (
        "voluntary", "too_expensive", 30.0, 0.0)


@one_store
def test_reactivation_on_another_family_with_several_items_is_one_row(world: World, derive: Derive) -> None:
    """design.md 5: after a full churn of core, a comeback with analytics (50) and api (40): one `reactivation`
    with the whole customer delta (on the largest item)."""
    w = base(world)
    w.price("api_flat", "prod_api", 4_000)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.cancel("sub_1", month(1, 10), reason="payment_failed")
    w.subscribe("sub_2", "cus_1", [("si_a", "analytics", 1), ("si_p", "api_flat", 1)], month(3))
    con = derive(w, seen_at=month(4))
    expect(con, [
        (month(1, 10), "cancellation", "churn", D("-30.0000"), "si_c"),
        (month(3), "reactivation", "reactivation", D("90.0000"), "si_a"),
    ])
    assert row(con, "movement = 'cancellation'")["churn_type"] == "involuntary"


@one_store
def test_a_trial_that_never_paid_leaves_the_later_subscription_new(world: World, derive: Derive) -> None:
    """design.md 5: `reactivation` needs MRR before; a trial canceled at its end never had MRR, so the customer's
    first paid subscription months later is `new`."""
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_1", "core_basic", 3)], T0, trial_end=month(0, 14))
    w.cancel("sub_1", month(0, 14))
    w.subscribe("sub_2", "cus_1", [("si_2", "core_pro", 2)], month(2))
    con = derive(w, seen_at=month(3))
    expect(con, [(month(2), "new", "new", D("40.0000"), "si_2")], skip_new=False)


# --- product family and unit --------------------------------------------------------------------------

@one_store
def test_family_metadata_wins_over_the_settings_mapping_over_the_product(world: World, derive: Derive) -> None:
    """design.md 5 family: product.metadata["family"] when set (prod_x says core although the settings map it to
    analytics: a seat_expansion of kept core), else the settings' mapping (prod_y -> core: seat_expansion), else
    the product itself (prod_z: a family of its own, cross_sell)."""
    w = base(world)
    w.product("prod_x", unit_label="seat", family="core")
    w.product("prod_y")
    w.product("prod_z")
    w.price("x", "prod_x", 2_500)
    w.price("y", "prod_y", 700)
    w.price("z", "prod_z", 900)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.update("sub_1", month(1, 1), items=[("si_c", "core_basic", 3), ("si_x", "x", 2)])
    w.update("sub_1", month(1, 5), items=[("si_c", "core_basic", 3), ("si_x", "x", 2), ("si_y", "y", 1)])
    w.update("sub_1", month(1, 9), items=[("si_c", "core_basic", 3), ("si_x", "x", 2), ("si_y", "y", 1),
                                          ("si_z", "z", 1)])
    con = derive(w, seen_at=month(2), families={"prod_x": "analytics", "prod_y": "core"})
    expect(con, [
        (month(1, 1), "seat_expansion", "expansion", D("50.0000"), "si_x"),
        (month(1, 5), "seat_expansion", "expansion", D("7.0000"), "si_y"),
        (month(1, 9), "cross_sell", "expansion", D("9.0000"), "si_z"),
    ])


@one_store
def test_a_family_of_the_product_itself_pairs_its_prices(world: World, derive: Derive) -> None:
    """design.md 5: a product with no family anywhere is its own family: its item replaced by one of another
    price of the same product is a plan switch (upgrade 10 -> 30); replaced by an item of another such product,
    it is a family removed while the customer stays (downgrade) and one she did not have (cross_sell)."""
    w = base(world)
    w.product("prod_solo")
    w.product("prod_other")
    w.price("solo_a", "prod_solo", 1_000)
    w.price("solo_b", "prod_solo", 3_000)
    w.price("other", "prod_other", 4_500)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3), ("si_1", "solo_a", 1)], T0)
    w.update("sub_1", month(1, 1), items=[("si_c", "core_basic", 3), ("si_2", "solo_b", 1)])
    w.update("sub_1", month(1, 9), items=[("si_c", "core_basic", 3), ("si_3", "other", 1)])
    con = derive(w, seen_at=month(2))
    expect(con, [
        (month(1, 1), "upgrade", "expansion", D("20.0000"), "si_2"),
        (month(1, 9), "downgrade", "contraction", D("-30.0000"), "si_2"),
        (month(1, 9), "cross_sell", "expansion", D("45.0000"), "si_3"),
    ])


UNITS = {
    # case: (product's unit_label, settings' units mapping for it, the label of 5 more units)
    "User": ("User", None, "seat_expansion"),
    "member-padded": ("  member ", None, "seat_expansion"),
    "LICENSE": ("LICENSE", None, "seat_expansion"),
    "agent": ("agent", None, "seat_expansion"),
    "GB": ("GB", None, "resource_expansion"),
    "api-call": ("api call", None, "resource_expansion"),
    "no-label": (None, None, "seat_expansion"),  # licensed quantity without a label
    "empty-label": ("", None, "seat_expansion"),  # (an empty label is no label)
    "seat-mapped-resource": ("seat", "resource", "resource_expansion"),  # the settings' mapping wins
    "GB-mapped-seat": ("GB", "seat", "seat_expansion"),
}


@pytest.fixture(scope="module")
def units_store(tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path
                ) -> Iterator[duckdb.DuckDBPyConnection]:
    """Every case of UNITS as its own customer (cus_<case>), product and item of one account, derived once."""
    w = base(World())
    for n, (case, (label, _, _)) in enumerate(UNITS.items()):
        w.product(f"prod_u{n}", unit_label=label, family="core")
        w.price(f"u{n}", f"prod_u{n}", 400)
        w.customer(f"cus_{case}")
        w.subscribe(f"sub_{n}", f"cus_{case}", [(f"si_{n}", f"u{n}", 2)], T0)
        w.update(f"sub_{n}", month(1, 10), items=[(f"si_{n}", f"u{n}", 7)])
    units = {f"prod_u{n}": kind for n, (_, kind, _) in enumerate(UNITS.values()) if kind}
    yield from shared_store(tmp_path_factory, migrated_store_file, w, month(2), units=units)


@pytest.mark.parametrize("case", list(UNITS))
def test_unit_of_a_quantity_change(units_store: duckdb.DuckDBPyConnection, case: str) -> None:
    """design.md 5 seat vs resource: the settings' mapping, else unit_label (seat, user, member, license, agent ->
    seat; any other label -> resource), else licensed quantity -> seat."""
    item = f"si_{list(UNITS).index(case)}"
    expect(units_store, [(month(1, 10), UNITS[case][2], "expansion", D("20.0000"), item)], f"cus_{case}")


@pytest.mark.parametrize(("unit_label", "up", "down"), [
    (None, "resource_expansion", "resource_contraction"),
    ("user", "seat_expansion", "seat_contraction"),
], ids=["no-label", "seat-label"])
@one_store
def test_unit_of_metered_usage(world: World, derive: Derive, unit_label: str | None, up: str, down: str) -> None:
    """design.md 5: metered usage up/down is a resource movement when the product has no unit label (metered ->
    resource), while a seat label comes first in the order of the rule."""
    w = base(world)
    w.product("prod_m", unit_label=unit_label, family="meter")
    w.price("m", "prod_m", None, usage_type="metered")
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 1), ("si_m", "m", None)], T0)
    w.cycle("sub_1", month(1), usage={"si_m": 3_000})
    w.cycle("sub_1", month(2), usage={"si_m": 4_500})
    w.cycle("sub_1", month(3), usage={"si_m": 1_000})
    con = derive(w, seen_at=month(3, 5))
    expect(con, [
        (month(1), up, "expansion", D("30.0000"), "si_m"),
        (month(2), up, "expansion", D("15.0000"), "si_m"),
        (month(3), down, "contraction", D("-35.0000"), "si_m"),
    ])
    invoices = [i["id"] for i in w.objects["invoices"].values() if i["billing_reason"] == "subscription_cycle"]
    got = [r[0] for r in con.execute("SELECT source_invoice_id FROM mrr_movements WHERE movement <> 'new' "
                                     "ORDER BY occurred_at").fetchall()]
    assert got == invoices


@one_store
def test_a_removed_item_of_a_kept_family_takes_its_own_unit(world: World, derive: Derive) -> None:
    """design.md 5: an added or removed item of a family the customer keeps is seat_ or resource_ by its own
    unit: storage (GB) of family core added beside core seats is resource_expansion, removed resource_contraction.
    """
    w = base(world)
    w.product("prod_storage", unit_label="GB", family="core")
    w.price("storage", "prod_storage", 10)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3)], T0)
    w.update("sub_1", month(1, 1), items=[("si_c", "core_basic", 3), ("si_s", "storage", 200)])
    w.update("sub_1", month(1, 9), items=[("si_c", "core_basic", 3)])
    con = derive(w, seen_at=month(2))
    expect(con, [
        (month(1, 1), "resource_expansion", "expansion", D("20.0000"), "si_s"),
        (month(1, 9), "resource_contraction", "contraction", D("-20.0000"), "si_s"),
    ])


# --- metered items whose price changes ------------------------------------------------------------------

@pytest.mark.parametrize("how", ["same-item", "new-item"])
@pytest.mark.parametrize(("old", "new", "expected"), [
    # usage of 50.00 billed, then the item moves to a flat 40.00 price: the price changed, MRR 50 -> 40
    ("api_metered", "api_flat", ("downgrade", "contraction", "-10.0000")),
    # a flat 40.00 item moves to the metered price: MRR(metered) is 0 until its first usage invoice
    ("api_flat", "api_metered", ("downgrade", "contraction", "-40.0000")),
], ids=["metered-to-flat", "flat-to-metered"])
@one_store
def test_a_metered_item_moved_to_another_price_is_a_plan_change(world: World, derive: Derive, how: str, old: str,
                                                                new: str, expected: tuple[str, str, str]) -> None:
    """design.md 5: "same item or same product family, price changed" is upgrade/downgrade by sign; usage up or
    down (resource_*) is a change at the same price. A plan switch is labelled alike whether Stripe kept the
    item id or replaced the item."""
    w = base(world)
    w.price("api_flat", "prod_api", 4_000)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 1), ("si_m", old, 1)], T0)
    w.cycle("sub_1", month(1), usage={"si_m": 5_000})
    t = month(1, 10)
    new_id = "si_m" if how == "same-item" else "si_n"
    w.update("sub_1", t, items=[("si_c", "core_basic", 1), (new_id, new, 1)])
    con = derive(w, seen_at=month(2))
    got = changes(con)
    if old == "api_metered":
        assert got[0] == (month(1), "resource_expansion", "expansion", D("50.0000"), "si_m")
        got = got[1:]
    assert got == [(t, *expected[:2], D(expected[2]), new_id)]
    check_invariants(con)


@one_store
def test_a_metered_subscription_resubscribed_at_the_same_price_is_usage_not_plan(world: World, derive: Derive
                                                                                 ) -> None:
    """design.md 5: cancel a subscription whose metered item had 50.00 of usage and subscribe again to the same
    price ten minutes later: one transition, the two items paired (same family); the price did not change, so
    the plan part MRR(new price) - MRR(old price) is 0 and the change (-50: no usage invoiced yet on the new
    item) is the usage's, resource_contraction."""
    w = base(world)
    w.subscribe("sub_0", "cus_1", [("si_c", "core_basic", 1)], T0)
    w.subscribe("sub_1", "cus_1", [("si_m", "api_metered", None)], T0)
    w.cycle("sub_1", month(1), usage={"si_m": 5_000})
    t = month(1, 10)
    w.cancel("sub_1", t)
    w.subscribe("sub_2", "cus_1", [("si_n", "api_metered", None)], t + 10 * MINUTE)
    con = derive(w, seen_at=month(2))
    expect(con, [
        (month(1), "resource_expansion", "expansion", D("50.0000"), "si_m"),
        (t, "resource_contraction", "contraction", D("-50.0000"), "si_n"),
    ])


@pytest.mark.parametrize("how", ["same-item", "new-item"])
@one_store
def test_a_metered_item_moved_to_a_discounted_price_keeps_its_plan_part(world: World, derive: Derive, how: str
                                                                        ) -> None:
    """design.md 4 and 5: usage of 50.00 billed, then the item moves to a flat 40.00 price with an item-level 25%
    forever discount starting with it (30.00): the plan part at the discount before the change (-10, downgrade),
    the discount's start the rest (-10, discount), alike on the same item id or a new one."""
    w = base(world)
    w.price("api_flat", "prod_api", 4_000)
    w.coupon("q", percent_off=25)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 1), ("si_m", "api_metered", None)], T0)
    w.cycle("sub_1", month(1), usage={"si_m": 5_000})
    t = month(1, 10)
    new_id = "si_m" if how == "same-item" else "si_n"
    d = w.discount("q", t, customer="cus_1", subscription="sub_1", subscription_item=new_id)
    w.update("sub_1", t, items=[("si_c", "core_basic", 1), (new_id, "api_flat", 1)])
    w.objects["subscriptions"]["sub_1"]["items"]["data"][1]["discounts"] = [d["id"]]
    con = derive(w, seen_at=month(2))
    expect(con, [
        (month(1), "resource_expansion", "expansion", D("50.0000"), "si_m"),
        (t, "downgrade", "contraction", D("-10.0000"), new_id),
        (t, "discount", "contraction", D("-10.0000"), new_id),
    ])


# --- source ids -----------------------------------------------------------------------------------------

@one_store
def test_two_changes_of_one_subscription_in_a_window_keep_their_own_ids(world: World, derive: Derive) -> None:
    """design.md 5: every movement keeps the Stripe ids that caused it. Analytics is removed at t (an update
    event and a proration invoice crediting it), two seats are added 30 minutes later (another event and
    invoice): one transition, and each row names its own change's event and invoice, not the other's."""
    w = base(world)
    w.subscribe("sub_1", "cus_1", [("si_c", "core_basic", 3), ("si_a", "analytics", 1)], T0)
    t = month(1, 10)
    w.update("sub_1", t, items=[("si_c", "core_basic", 3)])
    removal = (w.events[-1]["id"], list(w.objects["invoices"])[-1])
    w.update("sub_1", t + 30 * MINUTE, items=[("si_c", "core_basic", 5)])
    seats = (w.events[-1]["id"], list(w.objects["invoices"])[-1])
    con = derive(w, seen_at=month(2))
    expect(con, [
        (t, "downgrade", "contraction", D("-50.0000"), "si_a"),
        (t, "seat_expansion", "expansion", D("20.0000"), "si_c"),
    ])
    got = {r[0]: (r[1], r[2]) for r in con.execute(
        "SELECT movement, source_event_id, source_invoice_id FROM mrr_movements WHERE movement <> 'new'").fetchall()}
    assert got == {"downgrade": removal, "seat_expansion": seats}
