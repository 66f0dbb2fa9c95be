#!/usr/bin/env python
"""Compare what the metrics derive from a simulated account with the simulation's own truth, over many seeds.

    python scripts/truth_check.py --seeds 201-203 --customers 2000 --months 36                # loaded directly
    python scripts/truth_check.py --seeds 101-104 --months 24 --item-discounts                # and item discounts
    python scripts/truth_check.py --seeds 502 --customers 2500 --months 36 --via sandbox      # the real sync, HTTP
    python scripts/truth_check.py --seeds 601 --customers 1500 --months 12 --via daemon --runs 3
    python scripts/truth_check.py --seeds 40 --customers 5000 --months 36 --via sandbox --collection-pauses
    python scripts/truth_check.py --seeds 5 --customers 2000 --months 24 --fx-changes         # monthly exchange rates
    python scripts/truth_check.py --seeds 7 --customers 2000 --months 24 --no-prorations      # changes not prorated
    python scripts/truth_check.py --seeds 8 --customers 2000 --months 24 --later-trials       # trials of paying subs
    python scripts/truth_check.py --seeds 9 --customers 2000 --months 24 --option-prices      # currency options
    python scripts/truth_check.py --seeds 1-4 --customers 1000 --window 1440                 # a day's window
    python scripts/truth_check.py --seeds 1-4 --customers 1000 --amount-off-coupons --item-discounts
    python scripts/truth_check.py --seeds 1-4 --customers 1000 --every-event --pause-zero     # collection paused: 0
    python scripts/truth_check.py --seeds 1-2 --customers 1000 --family storage=core --unit pro=resource

Each seed's simulation (with every option ``stripe-churn sandbox`` uses, unless ``--plain``; ``--item-discounts``,
``--collection-pauses``, ``--fx-changes``, ``--no-prorations``, ``--later-trials``, ``--option-prices`` and
``--amount-off-coupons`` add those options; ``--window`` the movement window the truth nets changes in and the
metrics run under, 60 minutes by default, and ``--exclude-metered``, ``--past-due-zero``, ``--churn-recognition``,
``--pause-zero``, ``--family`` and ``--unit`` the other rules, likewise in both) reaches a new store one of three ways: ``direct`` loads its objects straight into the store (its last 30 days of events, as a first sync finds them,
or all of them with ``--every-event``); ``sandbox`` serves it on 127.0.0.1 and runs a
full sync with the real SDK; ``daemon`` does what the daemon does with ``recompute = "changed"``: a full sync,
then ``--runs`` times a month's billing run (``--months-per-run`` months) and a sync, each followed by the incremental
recompute (a 31-day month between syncs moves the last listed events out of Stripe's 30 days: the later syncs
re-list, and what changed in the gap comes from invoices, before it from the events stored then; the simulation
makes a change only the events date only inside a run's last 30 days). Then it compares
labels, MRR per customer at every month's start, churn type and feedback, and each row's amount_delta_original and
currency with the truth, as the ground-truth tests do (tests/metrics/test_ground_truth.py, whose comparison it
runs), and for ``daemon`` also every derived table and view with a full recompute of the same store.

One line per seed; with ``--report DIR`` every disagreement of a seed goes to ``DIR/seed-N.txt``. Exit code 1
when any seed disagrees. Through the sandbox and the daemon's flow, the truth's rows of a discount that nothing the
sync reads shows are set aside, with the discount's effect on the customer's MRR, and counted on the seed's line
(listed in the report): a discount that is not in the store, that no invoice or invoice item names, and that
started and was taken off before the oldest event Stripe kept at the first sync, such as a later three-month offer
on an annual item between two of its renewals (with ``--item-discounts``; see SANDBOX_OPTIONS in
stripe_churn/sandbox/sim.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "metrics")]

if TYPE_CHECKING:
    from stripe_churn.settings import Rules


def seeds_of(text: str) -> list[int]:
    """``"1,4-6"`` -> [1, 4, 5, 6]."""
    out: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        out += list(range(int(first), int(last or first) + 1))
    return out


def key_value(text: str) -> tuple[str, str]:
    """``"storage=support"`` -> ("storage", "support")."""
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected PLAN=VALUE, got {text!r}")
    return key, value


def rules_text(rules: Rules) -> str:
    """What a seed's line says of the rules it ran under that are not the defaults."""
    return "".join([f", a {rules.movement_window_minutes}-minute window" if rules.movement_window_minutes != 60 else "",
                    "" if rules.include_metered else ", metered usage not counted",
                    "" if rules.past_due_counts else ", past_due counting zero",
                    ", churn at the request" if rules.churn_recognition == "canceled" else "",
                    "" if rules.pause_collection_keeps_mrr else ", a paused collection counting zero"])


def check_seed(seed: int, args: argparse.Namespace, workdir: Path) -> bool:
    """Derive one seed's simulation the way ``args.via`` says and compare it with the truth; print one line."""
    import test_ground_truth as truth

    from stripe_churn.sandbox.listing import EVENT_RETENTION_S
    from stripe_churn.sandbox.sim import SANDBOX_OPTIONS, Simulation
    from stripe_churn.settings import Rules

    options = {} if args.plain else dict(SANDBOX_OPTIONS)
    for name in ("item_discounts", "collection_pauses", "fx_changes", "no_prorations", "later_trials", "option_prices",
                 "amount_off_coupons"):
        if getattr(args, name):
            options[name] = True
    started = time.perf_counter()
    start = None if args.start is None else int(dt.datetime.fromisoformat(args.start).replace(tzinfo=dt.UTC).timestamp())
    rules = Rules(movement_window_minutes=args.window, include_metered=not args.exclude_metered,
                  past_due_counts=not args.past_due_zero, churn_recognition=args.churn_recognition,
                  pause_collection_keeps_mrr=not args.pause_zero)
    families, units = dict(args.family), dict(args.unit)
    sim = Simulation(customers=args.customers, months=args.months, seed=seed, start=start,
                     window_minutes=rules.movement_window_minutes, include_metered=rules.include_metered,
                     past_due_counts=rules.past_due_counts, churn_at_request=rules.churn_recognition == "canceled",
                     pause_collection_keeps_mrr=rules.pause_collection_keeps_mrr, families=families, units=units,
                     **options)
    # (the settings' mappings are by product id, which the simulation gives its plans)
    products = sim.plan_products()
    rules = dataclasses.replace(rules, families={products[k]: v for k, v in families.items()},
                                units={products[k]: v for k, v in units.items()})
    db = workdir / f"seed-{seed}.duckdb"
    cutoff = int(sim.clock) - EVENT_RETENTION_S  # the oldest event Stripe keeps at the first (full) sync
    differing: list[str] = []
    if args.via == "direct":
        context = truth.derived_directly(sim, db, rules, args.every_event)
    elif args.via == "sandbox":
        context = truth.derived_through_the_sandbox(sim, db, rules)
    else:
        con, differing = truth.derived_as_the_daemon_does(sim, db, args.runs, args.months_per_run, rules)
    if args.report:
        os.environ["GROUND_TRUTH_REPORT"] = str(Path(args.report) / f"seed-{seed}.txt")
    via = "direct, every event" if args.every_event else args.via
    mapped = "".join(f", {k} in family {v}" for k, v in families.items()) + "".join(
        f", {k} a {v} unit" for k, v in units.items())
    label = f"seed {seed} ({args.customers:,} x {args.months}, {via}{rules_text(rules)}{mapped})"
    try:
        if args.via == "daemon":
            try:
                unseen = truth.unseen_discount_rows(sim, con, cutoff)
                line, ok = truth.check_against_truth(sim, con, label, unseen), True
            finally:
                con.close()
        else:
            with context as con:
                unseen = truth.unseen_discount_rows(sim, con, cutoff) if args.via == "sandbox" else None
                line, ok = truth.check_against_truth(sim, con, label, unseen), True
    except AssertionError as failed:
        line, ok = str(failed).splitlines()[0], False
    if "agreement 1.00000, 0 label and 0 MRR disagreements, 0 churn type" not in line:
        ok = False
    if args.via == "daemon":
        line += f"; incremental against full: {', '.join(differing) or 'equal'}"
        ok = ok and not differing
    print(f"{line} [{time.perf_counter() - started:.0f} s]", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1", help="seeds, e.g. 1,4-6 (default 1)")
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--months", type=int, default=24)
    parser.add_argument("--via", choices=("direct", "sandbox", "daemon"), default="direct")
    parser.add_argument("--runs", type=int, default=3, help="billing runs synced one at a time (--via daemon)")
    parser.add_argument("--months-per-run", type=int, default=1, metavar="N",
                        help="months each billing run covers (--via daemon): more than one leaves a gap of lost events "
                        "before each sync")
    parser.add_argument("--plain", action="store_true", help="the Simulation's defaults, not the sandbox's options")
    parser.add_argument("--item-discounts", action="store_true", help="coupons redeemed on one item too")
    parser.add_argument("--collection-pauses", action="store_true",
                        help="some subscriptions have their payment collection paused for a while")
    parser.add_argument("--fx-changes", action="store_true",
                        help="eur and gbp rates move on the first of every month (fx movements)")
    parser.add_argument("--no-prorations", action="store_true",
                        help="some item changes are made with proration_behavior=none (no proration invoice)")
    parser.add_argument("--later-trials", action="store_true",
                        help="some paying subscriptions are granted a trial by an update (MRR zero while it runs); a "
                             "quarter of them are canceled before the trial ends")
    parser.add_argument("--option-prices", action="store_true",
                        help="customers in eur and gbp billed on dollar prices through their currency options")
    parser.add_argument("--amount-off-coupons", action="store_true",
                        help="half the forever signup offers an amount-off coupon (10.00 off every period) instead")
    parser.add_argument("--start", metavar="YYYY-MM-DD", help="when the history begins (default: it ends at the "
                        "simulation's usual end of history); far from today, Stripe's clock runs behind or ahead of "
                        "this machine's")
    parser.add_argument("--window", type=int, default=60, metavar="MINUTES",
                        help="the movement window (rules.movement_window) the metrics run under and the truth nets "
                             "changes in (default 60)")
    parser.add_argument("--exclude-metered", action="store_true",
                        help="metered usage counts no MRR (rules.include_metered = false), in the truth and the metrics")
    parser.add_argument("--past-due-zero", action="store_true",
                        help="a past_due subscription counts zero (rules.past_due_counts = false), in the truth and "
                             "the metrics")
    parser.add_argument("--churn-recognition", choices=("ended", "canceled"), default="ended",
                        help="when a cancellation churns (rules.churn_recognition), in the truth and the metrics")
    parser.add_argument("--every-event", action="store_true",
                        help="(--via direct) the store holds every event of the history, as one synced since the "
                             "account began does, not only the last 30 days' as a first sync's")
    parser.add_argument("--pause-zero", action="store_true",
                        help="a subscription whose collection is paused counts zero (rules.pause_collection_keeps_mrr "
                             "= false), in the truth and the metrics (with --every-event only: only the events show "
                             "a paused collection)")
    parser.add_argument("--family", type=key_value, action="append", default=[], metavar="PLAN=FAMILY",
                        help="rules.families for a plan of the catalogue (its product), e.g. storage=support, in the "
                             "truth and the metrics (only Extra Storage has no metadata family; repeatable)")
    parser.add_argument("--unit", type=key_value, action="append", default=[], metavar="PLAN=seat|resource",
                        help="rules.units for a plan of the catalogue, e.g. agents=resource, in the truth and the "
                             "metrics (repeatable)")
    parser.add_argument("--report", metavar="DIR", help="write each seed's disagreements to DIR/seed-N.txt")
    args = parser.parse_args(argv)
    if args.every_event and args.via != "direct":
        parser.error("--every-event is for --via direct: a sync finds the events of the last 30 days")
    if args.pause_zero and not args.every_event:
        parser.error("--pause-zero needs --every-event: a paused collection shows only in the events, and a first "
                     "sync finds the last 30 days of them")
    if args.report:
        Path(args.report).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="truth-check-") as tmp:
        results = [check_seed(seed, args, Path(tmp)) for seed in seeds_of(args.seeds)]
    print(f"{sum(results)} of {len(results)} seeds exact")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
