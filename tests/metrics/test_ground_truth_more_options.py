"""Ground truth with the simulation's options for changes without prorations, trials granted to paying
subscriptions and prices billed through currency options, loaded directly or synced through the sandbox: the same
comparison as tests/metrics/test_ground_truth.py (whose helpers these tests use), in a file of their own so that
they run beside tests/metrics/test_ground_truth_options.py on the suite's other worker.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_ground_truth import (
    check_exactly,
    derived_directly,
    derived_through_the_sandbox,
    unseen_discount_rows,
)


def unprorated_cases(sim: Any) -> None:
    """The cases of changes made without prorations (Simulation(no_prorations=True)) that the simulation must hold:
    before the events' window, add-ons and plan changes made as a new item (dated by its `created` alone, the item
    it replaced ending then), some changed again with prorations before that renewal, some in subscriptions
    canceled before it; inside the window, changes in place and removals too (dated by their events)."""
    import sys
    from collections import defaultdict

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sandbox"))
    from test_sim import _item_updates

    window = sim.clock - 30 * 86_400
    updates = [(kind, e) for kind, e, billed in _item_updates(sim) if not billed]
    kinds = Counter((kind, e["created"] >= window) for kind, e in updates)
    assert kinds[("add", False)] >= 200 and kinds[("replace", False)] >= 40, kinds
    assert all(kinds[(kind, True)] for kind in ("add", "price", "qty", "remove")), kinds
    lines = defaultdict(list)
    for inv in sim.objects["invoices"].values():
        for ln in inv["lines"]["data"]:
            lines[ln["parent"]["subscription_item_details"]["subscription_item"]].append(ln)
    added = [(e, it) for _, e in updates if e["created"] < window for it in e["data"]["object"]["items"]["data"]
             if it["created"] == e["created"] and it["price"]["recurring"]["usage_type"] == "licensed"]
    first = {it["id"]: min(lines[it["id"]], key=lambda ln: ln["period"]["start"], default=None) for _, it in added}
    assert sum(1 for ln in first.values() if ln and ln["parent"]["subscription_item_details"]["proration"]) >= 3
    ended = {s["id"]: s["ended_at"] for s in sim.objects["subscriptions"].values() if s["ended_at"]}
    assert sum(1 for e, it in added if first[it["id"]] is None and e["data"]["object"]["id"] in ended) >= 2


def granted_trial_cases(sim: Any) -> None:
    """The cases of trials granted to paying subscriptions (Simulation(later_trials=True)) that the simulation must
    hold."""
    window = sim.clock - 30 * 86_400
    granted = [e for e in sim.events if e["type"] == "customer.subscription.updated"
               and e["data"]["object"]["status"] == "trialing"
               and e["data"]["previous_attributes"].get("status") == "active"]
    subs = [e["data"]["object"] for e in granted]
    assert len(granted) >= 300 and sum(e["created"] >= window for e in granted) >= 5, len(granted)
    assert sum(sim.objects["subscriptions"][s["id"]]["status"] == "trialing" for s in subs) >= 3
    signup_trial = {i["subscription"] for i in sim.objects["invoices"].values()
                    if i["billing_reason"] == "subscription_create" and i["total"] == 0}
    assert sum(s["id"] in signup_trial for s in subs) >= 10
    # (an earlier trial of a subscription granted another later, both before the events: read from its invoices)
    earlier = Counter(s["id"] for e, s in zip(granted, subs, strict=True) if e["created"] < window)
    assert sum(n >= 2 for n in earlier.values()) >= 20, earlier
    credited = {inv["subscription"] for inv in sim.objects["invoices"].values()
                if inv["billing_reason"] == "subscription_update"
                and any(ln["amount"] < 0 for ln in inv["lines"]["data"])
                and any(not ln["parent"]["subscription_item_details"]["proration"] and ln["amount"] == 0
                        for ln in inv["lines"]["data"])}
    assert sum(s["id"] in credited for s in subs) >= 50
    # (canceled while the trial ran, with a feedback: at once, or at its end by cancel_at_period_end; MRR was zero
    # since the trial's start, whose cancellation carries the feedback. A deletion has no previous_attributes: ended
    # at the trial's end at the latest)
    trialed = {s["id"] for s in subs}
    ended = {e["data"]["object"]["id"]: e["data"]["object"] for e in sim.events
             if e["type"] == "customer.subscription.deleted" and e["data"]["object"]["id"] in trialed
             and e["data"]["object"]["trial_end"] is not None
             and e["data"]["object"]["ended_at"] <= e["data"]["object"]["trial_end"]}
    at_once = {sid for sid, s in ended.items() if s["ended_at"] < s["trial_end"]}
    assert len(at_once) >= 10 and len(ended) - len(at_once) >= 10, (len(at_once), len(ended))
    carried = {t["subscription_id"] for t in sim.truth if t["movement"] == "cancellation"
               and t["subscription_id"] in ended and t["cancellation_feedback"] is not None}
    assert len(carried) >= 20, len(carried)


@pytest.mark.slow
def test_ground_truth_with_changes_made_without_prorations_and_trials_granted_to_paying_subscriptions(
        tmp_path: Path) -> None:
    """Simulation(no_prorations=True, later_trials=True) beside item discounts, collection pauses, moving rates and
    every option of the sandbox (2,000 x 36, seed 35, loaded straight into the store); the cases of each option
    are checked to be there (unprorated_cases, granted_trial_cases). Without prorations, some item changes are
    made with proration_behavior=none, no invoice, the renewal billing the new state. Some paying subscriptions
    are granted a trial by an update, billed by a subscription_update invoice of 0.00 lines (half with a credit
    for the unused time of the period cut short) and, at the trial's end, a new period. MRR counts zero meanwhile;
    the subscription keeps only its latest trial, so a trial at signup before it shows only on the signup's
    invoice, and an earlier one granted by an update only on that update's invoice. Some are canceled while the
    trial runs (at once, or at its end): the cancellation of the trial's start carries their feedback. Labels,
    MRR, churn types and feedback must agree exactly with the truth. (With the metrics before the rules for
    changes without prorations, tests/metrics/test_item_changed_before_first_renewal.py: 23 label and 2 MRR
    disagreements on its own 2,000 x 36; with step 20 before it read an earlier trial granted by an update from its
    invoices: 237 label and 90 MRR disagreements. The two options were two simulations of 2,000 x 36 until both
    fitted in one, which also covers them side by side.)"""
    from stripe_churn.sandbox.sim import SANDBOX_OPTIONS, Simulation

    sim = Simulation(customers=2_000, months=36, seed=35, later_trials=True, no_prorations=True, item_discounts=True,
                     collection_pauses=True, fx_changes=True, **SANDBOX_OPTIONS)
    unprorated_cases(sim)
    granted_trial_cases(sim)
    with derived_directly(sim, tmp_path / "unprorated_later_trials.duckdb") as con:
        stored = con.execute("SELECT count(*) FILTER (WHERE ended_at < trial_end), count(*) FILTER "
                             "(WHERE ended_at = trial_end AND cancel_at_period_end) FROM subscriptions "
                             "WHERE status = 'canceled' AND cancellation_feedback IS NOT NULL").fetchone()
        assert stored is not None and min(stored) >= 10, stored
        check_exactly(sim, con, "2,000 x 36 with changes made without prorations and trials granted to paying "
                      "subscriptions")


@pytest.mark.timeout(600)
def test_ground_truth_with_changes_made_without_prorations_through_the_sandbox(tmp_path: Path) -> None:
    """Changes without prorations beside item discounts, collection pauses, moving rates and every option of the
    sandbox (the options above but later trials), 1,500 x 24 (seed 1), synced through the sandbox with the real
    sync: lists of more than ten items cut short in events and deleted items that are not listed, as Stripe serves
    them. Exact against the truth, with the discounts no sync can see set aside as scripts/truth_check.py sets them aside. (Before the
    simulation kept to what a sync can date: 7 label and 3 MRR disagreements, a replacement inside the events on a
    subscription of 17 items, whose events list ten, and a three-month promotion on an add-on of an annual plan
    added without prorations, which no line names.)"""
    from stripe_churn.sandbox.listing import EVENT_RETENTION_S
    from stripe_churn.sandbox.sim import SANDBOX_OPTIONS, Simulation

    sim = Simulation(customers=1_500, months=24, seed=1, no_prorations=True, item_discounts=True,
                     collection_pauses=True, fx_changes=True, **SANDBOX_OPTIONS)
    with derived_through_the_sandbox(sim, tmp_path / "unprorated.duckdb") as con:
        unseen = unseen_discount_rows(sim, con, int(sim.clock) - EVENT_RETENTION_S)
        check_exactly(sim, con, "1,500 x 24 with changes made without prorations through the sandbox", unseen)


@pytest.mark.timeout(600)
def test_ground_truth_with_prices_billed_through_currency_options_through_the_sandbox(tmp_path: Path) -> None:
    """Simulation(option_prices=True) beside every option of the sandbox (1,200 x 24, seed 2), synced through the
    sandbox with the real sync: half the customers billed in eur or gbp are on the dollar prices, billed through
    their currency options (per unit, graduated and volume tiers of the options' own, transform_quantity, metered
    usage). The prices are listed with their options, whose tiers Stripe sends only when each is expanded, so the
    sync retrieves the tiered ones again: every option's tiers are stored, and labels, MRR and each row's amount in
    its currency agree exactly with the truth."""
    from stripe_churn.sandbox.sim import SANDBOX_OPTIONS, Simulation

    sim = Simulation(customers=1_200, months=24, seed=2, option_prices=True, **SANDBOX_OPTIONS)
    prices = sim.objects["prices"]
    through = Counter((s["currency"], prices[it["price"]["id"]]["billing_scheme"],
                       prices[it["price"]["id"]]["recurring"]["usage_type"])
                      for s in sim.objects["subscriptions"].values() for it in s["items"]["data"]
                      if prices[it["price"]["id"]]["currency"] != s["currency"])
    for cur in ("eur", "gbp"):
        assert through[(cur, "tiered", "licensed")] >= 5 and through[(cur, "per_unit", "metered")] >= 5, through
    with derived_through_the_sandbox(sim, tmp_path / "options.duckdb") as con:
        tiered = {r[0]: orjson.loads(r[1]) for r in con.execute(
            "SELECT id, raw FROM prices WHERE currency = 'usd' AND raw->>'billing_scheme' = 'tiered'").fetchall()}
        assert tiered and all(raw["currency_options"][cur]["tiers"] == prices[pid]["currency_options"][cur]["tiers"]
                              for pid, raw in tiered.items() for cur in ("eur", "gbp"))
        assert con.execute("SELECT count(*) FROM data_quality WHERE kind = 'currency_mismatch'").fetchone() == (0,)
        check_exactly(sim, con, "1,200 x 24 with prices billed through currency options through the sandbox")
