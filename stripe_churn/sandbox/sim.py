"""A seeded, deterministic simulated subscription business in Stripe's object shapes, with its ground truth.

The model drives customers through signups, trials, plan changes, seat and usage changes, add-ons, coupons,
payment failures and cancellations, writing the objects and events Stripe would, and labels every MRR change
itself (design.md 4-5) without the classifier's code, so the two can be compared.
"""

from __future__ import annotations

import calendar
import datetime as dt
import gc
import heapq
import logging
import random
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any, TypedDict

import orjson

from stripe_churn.sandbox import objects as ob
from stripe_churn.sandbox import truth
from stripe_churn.sandbox.fx import SANDBOX_FX_RATES
from stripe_churn.sandbox.listing import EVENT_RETENTION_S
from stripe_churn.sandbox.truth import Comp

log = logging.getLogger(__name__)

END_OF_HISTORY = int(dt.datetime(2026, 11, 1, tzinfo=dt.UTC).timestamp())
RESOURCES = ("customers", "products", "prices", "coupons", "subscriptions", "invoices", "credit_notes")
CURRENCIES = ("usd", "usd", "usd", "eur", "gbp")
COUNTRIES = {"usd": ("US", "US", "CA"), "eur": ("DE", "FR", "NL", "ES"), "gbp": ("GB",)}
FEEDBACK = ("customer_service", "low_quality", "missing_features", "other", "switched_service", "too_complex",
            "too_expensive", "unused")
CORE = ("starter", "pro", "business")
CONNECTORS = ("Salesforce", "HubSpot", "Slack", "Zendesk", "Jira", "GitHub", "Shopify", "Xero", "Gmail", "Notion",
              "Intercom", "Segment", "Snowflake", "Twilio")
SEAT_LABELS = {"seat", "user", "member", "license", "agent"}
MONTHS_PER = {"year": Fraction(12), "month": Fraction(1), "week": Fraction(12, 52), "day": Fraction(12, 365)}
FX = {c: Fraction(str(r)) for c, r in SANDBOX_FX_RATES.items()}
COUNTING = ("active", "past_due")
DAY = 86_400
WINDOW_S = 3600  # changes of one customer within this many seconds of the first (the last second included, as
# the classifier's movement_window) are one transition


def add_months(ts: int, n: int) -> int:
    """``ts`` moved by ``n`` calendar months (day clamped to the month's length), in UTC."""
    d = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    y, m = divmod(d.month - 1 + n, 12)
    y += d.year
    day = min(d.day, calendar.monthrange(y, m + 1)[1])
    return int(d.replace(year=y, month=m + 1, day=day).timestamp())


def _next_month_start(ts: int) -> int:
    """The first of the month after ``ts`` (UTC), 00:00."""
    d = dt.datetime.fromtimestamp(ts, tz=dt.UTC)
    y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return int(dt.datetime(y, m, 1, tzinfo=dt.UTC).timestamp())


def start_of_today() -> int:
    """The start of the current day (UTC)."""
    return int(dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp())


def history_to_today(months: int) -> int:
    """The start of a history of ``months`` months that ends at the start of today (UTC), or up to three days
    earlier where a month on the way is short (from 31 May, three months back is 28 February, and three months
    on from there is 28 May). ``stripe-churn demo`` and ``stripe-churn sandbox`` give it to their simulation as
    ``start``, so that a report on it ends with the month still running. Without ``start`` a Simulation ends on
    END_OF_HISTORY whatever the day, which the tests whose answers must not move rely on."""
    return add_months(start_of_today(), -months)


# What ``stripe-churn demo`` and ``stripe-churn sandbox`` simulate beside the defaults: updates that wait for
# their payment and expire, prorations left pending until the renewal by Stripe's default create_prorations,
# metered usage billed early at a billing threshold, coupons restricted to some products, customer-wide coupons,
# trials that end into a pause and subscriptions paused after their last failed retry, as a real account has
# them. The Simulation's own defaults stay off, so that the tests' seeds keep their histories. (Not
# item_discounts: a later offer on an annual item, a repeating discount put on it with no proration, can start and
# end between two of its invoices before the events' window, and nothing the sync can read shows it, while the
# truth has it. The customer-wide coupons have a rarer case of the same kind: one shadowed by a subscription's own
# repeating discount on an annual item whose only invoice is the first, that starts to count when that discount
# ends, for a customer deleted later, all before the events' window: no listed object, invoice or kept event
# names it (one customer of seed 11 at 5,000 x 36, none in six other seeds; stripe_churn/metrics/NOTES.md).)
class Options(TypedDict, total=False):
    """The simulation's options of what happens in the account (Simulation's flags; the truth's rules are apart)."""

    item_discounts: bool
    pending_updates: bool
    deferred_prorations: bool
    thresholds: bool
    restricted_coupons: bool
    customer_discounts: bool
    trial_pauses: bool
    failure_pauses: bool
    collection_pauses: bool
    fx_changes: bool
    no_prorations: bool
    later_trials: bool
    option_prices: bool
    amount_off_coupons: bool


SANDBOX_OPTIONS: Options = {"pending_updates": True, "deferred_prorations": True, "thresholds": True,
                            "restricted_coupons": True, "customer_discounts": True, "trial_pauses": True,
                            "failure_pauses": True}
# ... and every option besides, as the truth checks run them (scripts/truth_check.py's flags, the ground-truth tests)
EVERY_OPTION: Options = {**SANDBOX_OPTIONS, "item_discounts": True, "collection_pauses": True,
                         "fx_changes": True, "no_prorations": True, "later_trials": True, "option_prices": True}


def _included(discount_ids: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """A proration line's discount amounts and discounts as Stripe lists them by default
    (``proration_discounts=included``): each discount in force, its amount 0 (it is in the line's amount)."""
    return [{"amount": 0, "discount": did} for did in discount_ids], list(discount_ids)


def period_amount(p: dict[str, Any], qty: int) -> int:
    """What one billing period of ``qty`` units of price ``p`` costs, in minor units."""
    tq = p.get("transform_quantity")
    if tq:
        q, r = divmod(qty, tq["divide_by"])
        qty = q + (1 if r and tq["round"] == "up" else 0)
    if p["billing_scheme"] != "tiered":
        return int(p["unit_amount"] or 0) * qty
    total, lower = 0, 0
    for tier in p["tiers"]:
        upper = tier["up_to"] if tier["up_to"] is not None else max(qty, lower)
        if p["tiers_mode"] == "volume":
            if qty <= upper:
                return int(tier["unit_amount"]) * qty + int(tier["flat_amount"] or 0)
        else:
            units = max(0, min(qty, upper) - lower)
            if units:
                total += int(tier["unit_amount"]) * units + int(tier["flat_amount"] or 0)
        lower = upper
    return total


def _tiers(base: int, steps: tuple[tuple[int, Any], ...]) -> list[dict[str, Any]]:
    """Tiers at ``base`` per unit up to each step's bound (scaled by its factor), the last one open-ended."""
    out = []
    for i, (bound, factor) in enumerate(steps):
        amount = max(1, int(base * factor))
        out.append({"flat_amount": None, "flat_amount_decimal": None, "unit_amount": amount,
                    "unit_amount_decimal": str(amount), "up_to": bound})
        if i == len(steps) - 1:
            last = max(1, int(base * factor * Fraction(4, 5)))
            out.append({"flat_amount": None, "flat_amount_decimal": None, "unit_amount": last,
                        "unit_amount_decimal": str(last), "up_to": None})
    return out


# the tiers' (bound, factor of the first tier's amount) of the tiered prices' options (eur's bounds moved)
_OPTION_STEPS: dict[tuple[str, str], tuple[tuple[int, Any], ...]] = {
    ("agents", "eur"): ((6, 1), (16, Fraction(3, 4))), ("agents", "gbp"): ((5, 1), (20, Fraction(3, 4))),
    ("storage", "eur"): ((120, 1), (400, Fraction(4, 5))), ("storage", "gbp"): ((100, 1), (500, Fraction(4, 5))),
}


def _options(amount: int, key: str) -> dict[str, Any]:
    """A dollar price's ``currency_options`` in eur and gbp (option_prices), from its amount ``amount`` (its
    first tier's for a tiered price ``key``): amounts of their own, and for the tiered ones tiers of their own (the
    bounds moved in eur, a flat amount on gbp's first tier)."""
    out = {}
    for cur, num, den in (("eur", 23, 25), ("gbp", 4, 5)):
        own = max(1, amount * num // den)
        opt: dict[str, Any] = {"custom_unit_amount": None, "tax_behavior": "unspecified", "unit_amount": own,
                               "unit_amount_decimal": str(own)}
        steps = _OPTION_STEPS.get((key, cur))
        if steps is not None:
            tiers = _tiers(own, steps)
            if cur == "gbp":
                tiers[0]["flat_amount"] = own * 2
                tiers[0]["flat_amount_decimal"] = str(own * 2)
            opt.update(unit_amount=None, unit_amount_decimal=None, tiers=tiers)
        out[cur] = opt
    return out


def _copy(obj: Any) -> Any:
    return orjson.loads(orjson.dumps(obj))


def _json_now(obj: Any) -> orjson.Fragment:
    """``obj`` as it is now, kept as JSON: for a previous attribute that only an event reads, which _event decodes
    when it copies the event's data (a copy of it as objects would only be copied again)."""
    return orjson.Fragment(orjson.dumps(obj))


@dataclass
class _Plan:
    """One sellable product of the catalog with its prices per (currency, interval key)."""

    key: str
    family: str
    product_id: str
    kind: str  # seat or resource
    prices: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass
class _Cust:
    id: str
    currency: str
    subs: list[str] = field(default_factory=list)
    had_mrr: bool = False
    path_t: list[int] = field(default_factory=list)
    path_v: list[float] = field(default_factory=list)
    mrr: Decimal = Decimal("0")
    deleted: bool = False


class Simulation:
    """The whole history of a simulated Stripe account (see docs/internals.md for the interface)."""

    def __init__(self, customers: int, months: int, seed: int, start: int | None = None, *,
                 item_discounts: bool = False, pending_updates: bool = False,
                 deferred_prorations: bool = False, thresholds: bool = False,
                 restricted_coupons: bool = False, customer_discounts: bool = False,
                 trial_pauses: bool = False, failure_pauses: bool = False,
                 collection_pauses: bool = False, fx_changes: bool = False, no_prorations: bool = False,
                 later_trials: bool = False, option_prices: bool = False, amount_off_coupons: bool = False,
                 credit_note_lines: int = 1,
                 window_minutes: int = WINDOW_S // 60, include_metered: bool = True,
                 past_due_counts: bool = True, churn_at_request: bool = False,
                 pause_collection_keeps_mrr: bool = True, families: dict[str, str] | None = None,
                 units: dict[str, str] | None = None) -> None:
        """``item_discounts``: some coupon redemptions go to one subscription item instead of the whole
        subscription. ``pending_updates``: some price or quantity increases are made with
        payment_behavior=pending_if_incomplete and their payment fails: the subscription stays as it was, and
        Stripe voids the update's invoice when the pending update expires 23 hours later.
        ``deferred_prorations``: half the item changes of annual subscriptions are made with Stripe's default
        proration_behavior=create_prorations: their prorations wait as pending invoice items
        (``objects["invoiceitems"]``) for the subscription's next invoice instead of being invoiced at once.
        ``thresholds``: some periods of subscriptions with metered items reach a billing threshold: a
        subscription_threshold invoice bills part of the period's usage early, and the renewal bills the rest
        (its line dated from the period's start or from the threshold), so the period's usage is their sum.
        ``restricted_coupons``: half the signup offers of the forever kind are a coupon restricted to the core
        plans' products (``applies_to.products``): it lowers the core item only, not the add-ons.
        ``customer_discounts``: some customers get a customer-wide coupon (10% forever) when they sign up; it
        lowers each of their subscriptions that has no discount of its own, as Stripe bills (a subscription's own
        discount replaces the customer's). Those customers get no once-only signup offer.
        ``trial_pauses``: some trials that would convert end into a pause instead (no payment method,
        ``missing_payment_method=pause``): no invoice while paused; most are resumed days later (a new period
        and its invoice), the others canceled while paused.
        ``failure_pauses``: the account bills in flexible billing mode and has Stripe pause a subscription after
        its last failed payment retry (status_details.paused.subscription.type final_payment_failure) instead of
        marking it unpaid, for half of them: paused, its invoice left open, no more invoices; an involuntary
        churn in the truth. Such a subscription stays paused: a pause that ended before the events' window leaves
        nothing on the invoices that dates it, so its truth could not be read back from what the sync finds.
        ``collection_pauses``: some active subscriptions have their payment collection paused
        (``pause_collection``, status unchanged) for 15 to 80 days, with each behavior Stripe has: the invoices
        made meanwhile are voided, marked uncollectible or kept as drafts, none paid. Half end at their
        ``resumes_at``, the others are resumed by hand. The subscription changes meanwhile as at any time (not
        with payment_behavior=pending_if_incomplete: no payment is attempted), its update invoices voided, marked
        uncollectible or left as drafts too. MRR is kept, as design.md's default says, so the pause itself is no
        movement in the truth, and a metered item's usage billed meanwhile sets its MRR as any renewal's does.
        ``fx_changes``: the exchange rates of eur and gbp move on the first of every month at 00:00 UTC (a random
        walk of 4-decimal rates, ``fx_rate_changes``): each revalues every customer billed in that currency, an
        ``fx`` row in the truth. A rate's move begins no movement window and joins none; one that falls between a
        window's first and latest change is inside that transition, which carries an ``fx`` part (the rate's move
        on what was held when it moved; each other part at the rate in force at its item's change).
        ``no_prorations``: some item changes are made with proration_behavior=none: the items change at once (the
        subscription's updated event), no proration is invoiced or left pending, and the next renewal bills the
        new state; MRR changes at the update, as with prorations. Some plan changes are made as a replacement of
        the item (a new item id in its place). Only the changes a sync can date are made so: an item added, alone
        or in place of another, at any time (its ``created`` says when); a price or quantity change of an item
        kept, or an item removed alone, only within the events' 30 days before the run's end (their event says
        when; before, nothing the sync reads does: no line bills the change until the renewal, and the renewal's
        line dates only the period it bills). An item added so before the window stays for the rest of the run (a
        deleted item is not listed, and its ``created`` with it); the other limits are _without_prorations'. A
        third of such updates are followed by another decision of the subscription before its renewal.
        ``later_trials``: some paying subscriptions are granted a trial of 7 to 45 days by an update (``trial_end``
        set in the future: status trialing, ``trial_start`` the update's moment, the billing cycle anchor moved to
        the trial's end; the event's previous_attributes have the status, the trial's dates and the items' period
        before). Stripe bills the update with a subscription_update invoice whose lines are 0.00 for the trial (for
        half, made with create_prorations, beside a credit for the unused time of the period the trial cuts short),
        and at the trial's end a new period and its invoice. MRR counts zero while the trial runs (design.md 4): the
        trial's start and end are transitions as any other (a cancellation and a reactivation when it is the
        customer's only subscription paying). Only subscriptions with no metered item, no paused collection and
        whose trial settings create an invoice; one may be granted several (Stripe keeps the latest trial only on
        the subscription: an earlier one is read from its invoices alone). A quarter of the trials are followed, at
        a moment inside them, by the customer's cancellation (reason cancellation_requested, with a feedback): half
        at once (customer.subscription.deleted, no invoice), half at the trial's end (cancel_at_period_end set; the
        subscription ends at the trial's end, deleted, no invoice). MRR is zero already, so neither is a movement;
        the cancellation row of the trial's start (when it left the customer no MRR) carries that churn type and
        feedback, the subscription's cancellation_details (design.md 5).
        ``option_prices``: every dollar price has ``currency_options`` in eur and gbp (amounts of their own, and a
        tiered price's tiers of their own: other amounts, bounds moved in eur, a flat amount on gbp's first tier;
        ``transform_quantity`` is the price's), and half the customers billed in eur or gbp subscribe to the dollar
        prices instead of their currency's: their subscriptions and invoices are in their currency, each line's
        amount the option's, as Stripe bills a price through a currency option; the truth prices their items so.
        ``amount_off_coupons``: half the signup offers of the forever kind are an amount-off coupon instead (10.00
        off each billing period, forever; 9.00 in eur and 8.00 in gbp through its ``currency_options``), and half the
        retention offers (15.00 off for 3 months: 13.50 in eur, 12.00 in gbp), on the whole subscription; with ``item_discounts``, half the later offers on one item
        are 25.00 off that item every period (22.50 in eur, 20.00 in gbp), which may take all of a small item's MRR. design.md 4: normalised like the price, shared across the subscription's items in proportion
        to their MRR, and capped so that MRR never goes below zero; so an item's change moves the share of each
        other item (a discount part on them), and an interval switch the amount a month. The truth prices it so.
        ``credit_note_lines``: how many lines each credit note has (1 by default), its amount spread over them and
        each crediting the invoice's lines in turn. With more than 10 the server embeds the first 10 (``has_more``)
        and serves the rest from ``/v1/credit_notes/{id}/lines``, as Stripe does. Credit notes carry no MRR: the
        truth, and every object but the credit notes and their events, are the same whatever the number.
        ``window_minutes``: the movement window the truth nets a customer's changes in (design.md 5's
        ``movement_window``, 60 by default; compare with the metrics run under the same setting). Only the truth
        depends on it: every object, event and moment is the same whatever it is. ``include_metered``: whether the
        truth counts metered items' usage (design.md 4's setting, rules.include_metered; on by default); off, a
        metered item counts 0 whatever its usage, its coming, going and discounts still changes of an item.
        ``past_due_counts``: whether a past_due subscription counts (design.md 4's setting, rules.past_due_counts;
        on by default); off, a failed renewal payment is an involuntary churn of what the subscription counted and
        its recovery a comeback. ``churn_at_request``: rules.churn_recognition = "canceled" (off by default,
        "ended": a subscription counts until it ends): it counts zero from the customer's request, ``canceled_at``,
        so one set to cancel at its period's end churns at the request. ``pause_collection_keeps_mrr``: design.md
        4's setting of that name (on by default); off, a subscription whose collection is paused counts zero from the
        pause to its resumption: the pause and the resumption are changes of MRR (a churn and a comeback when it is
        the customer's only subscription paying). Only the events show a paused collection, so the truth under it
        can be read back only from a store holding every event (loaded directly). ``families`` and ``units``: design.md
        5's mappings of the settings (rules.families, rules.units), by the catalogue's plan key ("storage", "agents",
        ...; ``plan_products`` gives their product ids for the settings): a family for a product with no
        ``metadata["family"]`` (only Extra Storage has none; a mapping for another is ignored, as the metrics ignore
        it), and "seat" or "resource" for a product, in place of what its unit label says. The truth labels by them.
        (All off by default: a seed's history is then what it always was.)"""
        if customers < 0 or months < 0:
            raise ValueError("customers and months must be zero or more")
        if window_minutes < 0:
            raise ValueError("window_minutes must be zero or more")
        self.window_s = window_minutes * 60
        self.include_metered = include_metered
        self.counting = COUNTING if past_due_counts else ("active",)
        self.churn_at_request = churn_at_request
        self.pause_collection_keeps_mrr = pause_collection_keeps_mrr
        self._family_map = dict(families or {})
        self._unit_map = dict(units or {})
        self._truth_labels: dict[str, tuple[str, str]] = {}  # plan key -> the family and unit the truth labels by
        if set(self._unit_map.values()) - {"seat", "resource"}:
            raise ValueError(f"units must map plan keys to 'seat' or 'resource', not {self._unit_map}")
        self.seed = seed
        self.item_discounts = item_discounts
        self.pending_updates = pending_updates
        self.deferred_prorations = deferred_prorations
        self._rng = random.Random(seed)
        # (a stream of its own, so that the main one draws the same numbers with pending updates on or off)
        self._rng_pending = random.Random(f"pending updates {seed}")
        self._rng_deferred = random.Random(f"deferred prorations {seed}")  # (likewise)
        self.thresholds = thresholds
        self._rng_threshold = random.Random(f"thresholds {seed}")  # (likewise)
        # metered item -> (usage billed at a threshold this period, when, the renewal's line dated from then)
        self._usage_early: dict[str, tuple[int, int, bool]] = {}
        self.restricted_coupons = restricted_coupons
        self._rng_restricted = random.Random(f"restricted coupons {seed}")  # (likewise)
        self._sub_products: dict[str, frozenset[str]] = {}  # subscription -> products its discount is limited to
        self.customer_discounts = customer_discounts
        self._rng_customer = random.Random(f"customer discounts {seed}")  # (likewise)
        self._cust_disc: dict[str, str] = {}  # customer -> its customer-wide discount
        self.trial_pauses = trial_pauses
        self._rng_pause = random.Random(f"trial pauses {seed}")  # (likewise)
        self.failure_pauses = failure_pauses
        self._rng_failure_pause = random.Random(f"failure pauses {seed}")  # (likewise)
        self.collection_pauses = collection_pauses
        self._rng_collection = random.Random(f"collection pauses {seed}")  # (likewise)
        self._collection_token: dict[str, int] = {}  # subscription -> its running collection pause
        self.fx_changes = fx_changes
        self._rng_fx = random.Random(f"fx changes {seed}")  # (likewise)
        self.no_prorations = no_prorations
        self._rng_no_prorations = random.Random(f"no prorations {seed}")  # (likewise)
        self.later_trials = later_trials
        self.amount_off_coupons = amount_off_coupons
        self._rng_amount = random.Random(f"amount off {seed}")  # (a stream of its own, as the options' above)
        self._sub_off: dict[str, str] = {}  # subscription -> its amount-off coupon in force (amount_off_coupons)
        # ... from when until when (kept once it ends: a transition is labelled later, when the next one begins)
        self._sub_off_span: dict[str, tuple[int, int | None]] = {}
        self._item_off: dict[str, str] = {}  # item -> its own amount-off coupon in force (amount_off_coupons)
        self._item_off_since: dict[str, int] = {}  # ... and since when (kept likewise)
        self._rng_later_trial = random.Random(f"later trials {seed}")  # (likewise)
        # (later_trials) subscription -> its truth rows of the latest transition labelled that moved it, and the
        # churn its cancellation rows carry once canceled while a later trial ran (see _trial_cancel_churn)
        self._sub_rows: dict[str, list[dict[str, Any]]] = {}
        self._trial_churn: dict[str, tuple[str, Any]] = {}
        self.option_prices = option_prices
        if credit_note_lines < 1:
            raise ValueError("credit_note_lines must be 1 or more")
        self.credit_note_lines = credit_note_lines
        self._rng_option = random.Random(f"option prices {seed}")  # (likewise)
        self._option_custs: set[str] = set()  # customers billed through the dollar prices' currency options
        self._terms_cache: dict[tuple[str, str], dict[str, Any]] = {}
        self._run_end = 0  # the end of the running run (its events' window is the 30 days before)
        # item -> the end of the run in which it was added without prorations before that run's events' window:
        # its `created` alone dates it, so it stays until the sync at that end has listed it (see _undated)
        self._added_unprorated: dict[str, int] = {}
        self._sub_added_unprorated: dict[str, int] = {}  # subscription -> its latest such addition
        # (moment, currency, rate) of each rate change after the start, oldest first (usd's 1 on each day too);
        # the rates before are FX
        self.fx_rate_changes: list[tuple[int, str, Decimal]] = []
        self._rates: dict[str, list[tuple[int, Fraction]]] = {c: [] for c in FX}  # currency -> (moment, rate)
        self._window_last: dict[str, int] = {}  # customer -> the latest change in its open window
        # customer -> its state when the exchange rate moved inside its open window (fx_changes: see _label_fx)
        self._window_held: dict[str, dict[str, Comp]] = {}
        # customer -> when the rate moved after the latest change of its open window (fx_changes): inside the window
        # when a later change joins it, else each a transition of its own after it (see _rate_moved; several under a
        # window longer than the month between two moves)
        self._rate_waiting: dict[str, list[int]] = {}
        # customer -> its latest rate move labelled as a transition of its own: (the move's moment, its rows, and the
        # customer's path length, MRR and had_mrr before them). A change made in that very second takes it back:
        # the move is then inside the window the change begins (see _transition)
        self._fx_own: dict[str, tuple[int, list[dict[str, Any]], int, Decimal, bool]] = {}
        # windows labelled at the end of a run that the next run may still join (see _close_windows)
        self._provisional: list[tuple[str, int, dict[str, Comp], Any, list[int] | None, list[dict[str, Any]],
                                      tuple[int, Decimal, bool]]] = []
        self._rate = customers / months if months else 0.0
        self.start = add_months(END_OF_HISTORY, -months) if start is None else start
        self.clock = self.start
        self.account_id = "acct_sandbox" + ob.b62(seed % 62**6, 6)
        self.objects: dict[str, dict[str, dict[str, Any]]] = {r: {} for r in RESOURCES}
        if deferred_prorations:  # (only then: without them the objects, and their bytes, are what they were)
            self.objects["invoiceitems"] = {}
        self.discounts: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.truth: list[dict[str, Any]] = []
        self._n = 0
        self._id_stem = ob.b62((seed * 7919) % 62**4, 4)  # (every id's: the seed's)
        self._q: list[tuple[int, int, str, tuple[Any, ...]]] = []
        self._pending: list[tuple[int, int, dict[str, Any]]] = []  # (moment, order made, event) not yet in events
        self._custs: dict[str, _Cust] = {}
        self._sub_gen: dict[str, int] = {}
        self._sub_mult: dict[str, Fraction] = {}
        self._sub_disc_end: dict[str, int] = {}
        self._item_mult: dict[str, Fraction] = {}  # item -> multiplier of its own (item-level) discount
        self._windows: dict[str, tuple[int, dict[str, Comp], tuple[str, Any] | None]] = {}
        self._usd_cache: dict[tuple[str, int, Fraction, str], Fraction] = {}
        self._usage_billed: dict[str, int] = {}  # metered item -> usage on its last invoice
        self._usage_now: dict[str, int] = {}  # metered item -> usage of the running period
        self._pending_items: dict[str, list[str]] = {}  # subscription -> its invoice items not billed yet
        self._build_catalog()
        unknown = (set(self._family_map) | set(self._unit_map)) - set(self._plans)
        if unknown:
            raise ValueError(f"no plan {sorted(unknown)} in the catalogue (plans: {sorted(self._plans)})")
        self._signups(customers, self.start, add_months(self.start, months))
        self._at(add_months(self.start, max(1, months // 2)) + 9 * 3600, "archive", "an_basic", "y")
        if fx_changes:
            self._at(_next_month_start(self.start), "fx")
        self._run(add_months(self.start, months))

    # --- ids, events, queue --------------------------------------------------------------------------
    def _id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._id_stem}{ob.b62(self._n, 10)}"

    def _event(self, etype: str, obj: dict[str, Any], t: int, prev: dict[str, Any] | None = None) -> None:
        data: dict[str, Any] = {"object": _copy(obj)}
        if prev is not None:
            data["previous_attributes"] = _copy(prev)
        evt = {"id": self._id("evt"), "object": "event", "api_version": ob.API_VERSION,
               "created": t, "data": data, "livemode": False, "pending_webhooks": 0,
               "request": {"id": None, "idempotency_key": None}, "type": etype}
        self._pending.append((t, self._n, evt))

    def _at(self, t: int, handler: str, *args: Any) -> None:
        self._n += 1
        heapq.heappush(self._q, (t, self._n, handler, args))

    def _run(self, end: int) -> None:
        # the history is millions of small acyclic dicts: the cycle collector only costs time here. They are
        # moved out of its reach before it runs again, else its next pass walks every one of them (1.5 s of the
        # 8 s a 2,000 x 24 history takes); freed as ever when their last reference goes. (Garbage made before is
        # collected first, so that none of it is kept for good: an unreferenced cycle may hold a database's file.)
        self._reopen_windows()
        self._run_end = end
        first_new_row = len(self.truth)
        was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        try:
            while self._q and self._q[0][0] < end:
                t, _, handler, args = heapq.heappop(self._q)
                getattr(self, "_h_" + handler)(t, *args)
            self._close_windows(end)
            self._settle_cancellation_details()
        finally:
            gc.freeze()
            if was_enabled:
                gc.enable()
        # events are kept in creation-time order (then in the order made); those a few seconds past the end wait for
        # the next run. (One sort of the run's events, most of them made in order already, rather than a heap; the
        # order made is unique, so no two events themselves are ever compared.)
        self._pending.sort()
        due = bisect_left(self._pending, end, key=lambda p: p[0])
        self.events += [evt for _, _, evt in self._pending[:due]]
        del self._pending[:due]
        self.truth[first_new_row:] = sorted(self.truth[first_new_row:], key=lambda r: str(r["occurred_at"]))
        self.clock = end

    def _time_in(self, lo: int, hi: int) -> int:
        return self._rng.randrange(lo, max(hi, lo + 1))

    # --- catalog ----------------------------------------------------------------------------------------
    def _build_catalog(self) -> None:
        t = self.start - 30 * DAY
        self._plans: dict[str, _Plan] = {}
        self._meter = "mtr_" + ob.b62(self.seed % 62**4, 4) + "events0000000"
        spec = [  # key, name, family (None: the product is its own family), unit_label, monthly usd cents
            ("starter", "Core Starter", "core", "seat", 1500),
            ("pro", "Core Pro", "core", "seat", 3500),
            ("business", "Core Business", "core", "seat", 6500),
            ("an_basic", "Analytics Basic", "analytics", None, 4900),
            ("an_plus", "Analytics Plus", "analytics", None, 14900),
            ("support", "Priority Support", "support", None, 9900),
            ("storage", "Extra Storage", None, "GB", 25),
            ("agents", "Agents", "automation", "agent", 2000),
            ("sms", "SMS Credits", "messaging", "message", 150),
            ("events", "Event Ingest", "analytics", "1k events", 200),
            *((f"conn{i}", f"Connector: {n}", "connectors", None, 1000) for i, n in enumerate(CONNECTORS)),
        ]
        for key, name, family, unit, cents in spec:
            pid = self._id("prod")
            meta = {"family": family} if family else {}
            prod = ob.product(pid, t, name, unit, meta, None)
            metered = key == "events"
            kind = "seat" if (unit or "").rstrip("s") in SEAT_LABELS or (unit is None and not metered) else "resource"
            plan = _Plan(key, family or pid, pid, kind)
            # (the settings' mappings, for the truth alone: a family only where the product's metadata has none)
            self._truth_labels[key] = (family or self._family_map.get(key) or pid, self._unit_map.get(key, kind))
            for cur in ("usd", "eur", "gbp"):
                base = cents if cur != "gbp" else max(1, cents * 85 // 100)
                for ikey, interval, count, amount in (("m", "month", 1, base), ("y", "year", 1, base * 10),
                                                      ("y12", "year", 1, base * 12), ("q", "month", 3, base * 3)):
                    if (ikey in ("y12", "q") and key not in CORE) or (metered and ikey != "m"):
                        continue
                    prid = self._id("price")
                    extra: dict[str, Any] = {}
                    if metered:
                        extra = {"usage_type": "metered", "meter": self._meter}
                    elif key == "agents":  # graduated tiers per agent
                        extra = {"tiers_mode": "graduated", "tiers": _tiers(amount, ((5, 1), (20, Fraction(3, 4))))}
                    elif key == "storage":  # volume tiers per GB
                        extra = {"tiers_mode": "volume", "tiers": _tiers(amount, ((100, 1), (500, Fraction(4, 5))))}
                    elif key == "sms":  # billed per started hundred messages
                        extra = {"transform": {"divide_by": 100, "round": "up"}}
                    p = ob.price(prid, t, pid, cur, interval, count, None if "tiers" in extra else amount,
                                 nickname=f"{name} {ikey} {cur}", lookup_key=f"{key}_{ikey}_{cur}", **extra)
                    if self.option_prices and cur == "usd":
                        p["currency_options"] = _options(amount, key)
                    self.objects["prices"][prid] = p
                    plan.prices[(cur, ikey)] = prid
            prod["default_price"] = plan.prices[("usd", "m")]
            self.objects["products"][pid] = prod
            self._plans[key] = plan
            self._event("product.created", prod, t)
        for p in self.objects["prices"].values():
            self._event("price.created", p, t)
        self._coupons: dict[str, str] = {}
        for key, pct, dur, months in (("forever", 20.0, "forever", None), ("repeating", 25.0, "repeating", 3),
                                      ("once", 50.0, "once", None), ("retention", 30.0, "forever", None)):
            self._add_coupon(key, key.upper(), t, pct, dur, months, f"{pct:g}% off ({key})")
        if self.restricted_coupons:  # (only then: the ids after it move)
            self._add_coupon("core", "CORE", t, 20.0, "forever", None, "20% off the core plan",
                             applies_to={"products": sorted(self._plans[k].product_id for k in CORE)})
        if self.customer_discounts:  # (likewise)
            self._add_coupon("partner", "PARTNER", t, 10.0, "forever", None, "10% off for partners' customers")
        if self.amount_off_coupons:  # (likewise) at signup, as a retention offer, and for one item alone (which may
            # take all of a small item's MRR)
            for key, prefix, cents, dur, months, name in (
                    ("amount", "AMOUNT", 1000, "forever", None, "10.00 off every period"),
                    ("amount_retention", "AMOUNTTHREE", 1500, "repeating", 3, "15.00 off for 3 months"),
                    ("item_amount", "ITEMOFF", 2500, "forever", None, "25.00 off the item every period")):
                self._add_coupon(key, prefix, t, None, dur, months, name, amount_off=cents, currency="usd",
                                 currency_options={"eur": {"amount_off": cents * 9 // 10},
                                                   "gbp": {"amount_off": cents * 8 // 10}})
        self._plan_of_price = {prid: plan for plan in self._plans.values() for prid in plan.prices.values()}
        self._metered_prices = frozenset(prid for prid, plan in self._plan_of_price.items() if plan.key == "events")

    def _add_coupon(self, key: str, prefix: str, t: int, percent_off: float | None, duration: str,
                    months: int | None, name: str, **extra: Any) -> None:
        """A coupon of the catalogue (its id ``prefix`` and the next id's number), known as ``key``."""
        cid = prefix + self._id("co").split("_", 1)[1]
        c = ob.coupon(cid, t, percent_off, duration, months, name)
        c.update(extra)
        self.objects["coupons"][cid] = c
        self._coupons[key] = cid
        self._event("coupon.created", c, t)

    # --- MRR model --------------------------------------------------------------------------------------
    def _terms(self, price_id: str, currency: str) -> dict[str, Any]:
        """Price ``price_id`` as it bills in ``currency``: its own terms, or those of its currency option there
        (amount and tiers; the scheme, tiers_mode, transform_quantity and interval are the price's)."""
        p = self.objects["prices"][price_id]
        if p["currency"] == currency:
            return p
        got = self._terms_cache.get((price_id, currency))
        if got is None:
            o = p["currency_options"][currency]
            got = {**p, "currency": currency, "unit_amount": o["unit_amount"], "tiers": o.get("tiers")}
            self._terms_cache[(price_id, currency)] = got
        return got

    def _catalog_currency(self, customer_id: str, currency: str) -> str:
        """The currency of the prices the customer subscribes to: the dollar ones for a customer billed through
        their currency options (option_prices), else its own."""
        return "usd" if customer_id in self._option_custs else currency

    def _item_mrr_own(self, p: dict[str, Any], qty: int, mult: Fraction) -> Fraction:
        """Exact item MRR in minor units of its own currency."""
        rec = p["recurring"]
        per_period = Fraction(period_amount(p, qty))
        return per_period * 12 / (MONTHS_PER[rec["interval"]] * 12 * rec["interval_count"]) * mult

    def _snap(self, cust: _Cust) -> dict[str, Comp]:
        out: dict[str, Comp] = {}
        for sid in cust.subs:
            sub = self.objects["subscriptions"][sid]
            if sub.get("deleted") or sub["status"] not in self.counting:
                continue
            if self.churn_at_request and sub.get("canceled_at") is not None:
                continue
            if not self.pause_collection_keeps_mrr and sub.get("pause_collection") is not None:
                continue
            mult = self._sub_mult.get(sid, Fraction(1))
            if sid in self._sub_off:
                mult = self._amount_off_mult(sub, cust.currency)
            if not sub["discounts"] and cust.id in self._cust_disc:  # (the customer's, when it has none of its own)
                mult = 1 - Fraction(str(self.objects["coupons"][self._coupons["partner"]]["percent_off"])) / 100
            for it in sub["items"]["data"]:
                p = self.objects["prices"][it["price"]["id"]]
                plan = self._plan_of_price[p["id"]]
                qty = self._counted_qty(it)
                m = mult if self._applies(sid, p["product"]) else Fraction(1)
                m = m * self._item_mult[it["id"]] if it["id"] in self._item_mult else m
                if it["id"] in self._item_off:
                    m = self._item_amount_off_mult(it, sub["currency"], cust.currency)
                family, kind = self._truth_labels[plan.key]
                if plan.key == "events" and not self.include_metered:
                    out[it["id"]] = Comp(sid, it["id"], family, kind, p["id"], 0, m, Fraction(0))
                    continue
                out[it["id"]] = Comp(sid, it["id"], family, kind, p["id"], qty, m,
                                      self._mrr_usd(p["id"], qty, m, cust.currency))
        return out

    def _amount_off_mult(self, sub: dict[str, Any], currency: str, billed: bool = False) -> Fraction:
        """What the subscription's amount-off discount leaves of each of its items' MRR (design.md 4: the amount a
        month, normalised like the price, shared in proportion to the items' MRR, capped at all of it); with metered
        usage not counted (include_metered off) only the other items' share it. ``billed``: of each line's amount
        on an invoice, where every item's share of it (the truth's rules change no object)."""
        return self._off_left(self._sub_off[sub["id"]], sub["currency"], sub["items"]["data"], currency,
                              every_item=billed)

    def _amount_off_rule(self, t: int, last: int) -> tuple[frozenset[str], frozenset[str]]:
        """truth.parts_of's arguments for the amount-off discounts (amount_off_coupons) of a transition from ``t`` to
        its latest change ``last``: the subscriptions and items with one in force before it and still after it
        (an item's stays while the item does), and the metered prices."""
        if not self._sub_off_span and not self._item_off_since:
            return frozenset(), frozenset()
        subs = (sid for sid, (since, until) in self._sub_off_span.items() if since < t and (until is None or until > last))
        items = (iid for iid, since in self._item_off_since.items() if since < t)
        return frozenset((*subs, *items)), self._metered_prices

    def _off_per_month(self, coupon_id: str, sub_currency: str, price: dict[str, Any]) -> Fraction:
        """An amount-off coupon's amount in the subscription's currency, a month at ``price``'s interval."""
        c = self.objects["coupons"][coupon_id]
        off = c["amount_off"] if c["currency"] == sub_currency else c["currency_options"][sub_currency]["amount_off"]
        rec = price["recurring"]
        return Fraction(off) * 12 / (MONTHS_PER[rec["interval"]] * 12 * rec["interval_count"])

    def _item_amount_off_mult(self, it: dict[str, Any], sub_currency: str, currency: str) -> Fraction:
        """What an item's own amount-off discount leaves of its MRR (capped at all of it)."""
        return self._off_left(self._item_off[it["id"]], sub_currency, [it], currency, every_item=True)

    def _off_left(self, coupon_id: str, sub_currency: str, items: list[dict[str, Any]], currency: str,
                  every_item: bool) -> Fraction:
        """What amount-off coupon ``coupon_id`` leaves of the MRR of ``items`` (of one subscription, one interval),
        shared in proportion to it: by the counted items only (metered ones not, under include_metered off) but
        with ``every_item``."""
        per_month = self._off_per_month(coupon_id, sub_currency, self.objects["prices"][items[0]["price"]["id"]])
        whole = sum((self._item_mrr_own(self._terms(it["price"]["id"], currency), self._counted_qty(it), Fraction(1))
                     for it in items if every_item or self.include_metered or not self._is_metered(it)), Fraction(0))
        return max(Fraction(0), 1 - per_month / whole) if whole > 0 else Fraction(1)

    def _counted_qty(self, it: dict[str, Any]) -> int:
        """An item's quantity as its MRR counts it: a metered item's usage on its last invoice."""
        if self._plan_of_price[it["price"]["id"]].key == "events":
            return self._usage_billed.get(it["id"], 0)
        return it["quantity"] or 0

    def _mrr_usd(self, price_id: str, qty: int, mult: Fraction, currency: str) -> Fraction:
        key = (price_id, qty, mult, currency)
        got = self._usd_cache.get(key)
        if got is None:
            got = self._item_mrr_own(self._terms(price_id, currency), qty, mult) * FX[currency] / 100
            self._usd_cache[key] = got
        return got

    def _applies(self, sid: str, product_id: str) -> bool:
        """Whether the subscription's own discount lowers items of ``product_id`` (its coupon's applies_to)."""
        products = self._sub_products.get(sid)
        return products is None or product_id in products

    @staticmethod
    def _coupon_applies(coupon: dict[str, Any], product_id: str) -> bool:
        restricted = coupon.get("applies_to")
        return not restricted or product_id in restricted["products"]

    def _transition(self, cust: _Cust, t: int, before: dict[str, Comp], churn: tuple[str, Any] | None = None
                    ) -> None:
        """Note a change made at ``t`` from state ``before``: changes within the movement window of the first
        one form one transition, labelled when the next one starts (or the run ends)."""
        own = self._fx_own.pop(cust.id, None)
        if own is not None and own[0] == t:
            # (the rate moved in this very second, labelled on its own just before: as the metrics do, the move is
            # inside the window this change begins, on what the customer held before it)
            _, rows, path_len, mrr, had_mrr = own
            gone = {id(r) for r in rows}
            self.truth = [r for r in self.truth if id(r) not in gone]
            del cust.path_t[path_len:], cust.path_v[path_len:]
            cust.mrr, cust.had_mrr = mrr, had_mrr
            self._window_held[cust.id] = before
        waiting = self._rate_waiting.pop(cust.id, None)
        pending = self._windows.get(cust.id)
        last = self._window_last.get(cust.id, t)
        self._window_last[cust.id] = t
        if pending is not None and t <= pending[0] + self.window_s:
            # (a rate's move since the window's latest change is now inside it: _window_held holds the state then)
            if churn is not None:
                self._windows[cust.id] = (pending[0], pending[1], churn)
            return
        if pending is not None:
            self._end_window(cust, pending, before, last, waiting)
        self._windows[cust.id] = (t, before, churn)

    def _transition_if_counted(self, cust: _Cust, t: int, before: dict[str, Comp]) -> None:
        """A discount's start or end at ``t``: a change only when it changed what the customer counts (one on a
        subscription counting nothing, trialing or its collection paused under pause_collection_keeps_mrr = false,
        begins no movement window)."""
        if before != self._snap(cust):
            self._transition(cust, t, before)

    def _end_window(self, cust: _Cust, window: tuple[int, dict[str, Comp], tuple[str, Any] | None],
                    after: dict[str, Comp], last: int, waiting: list[int] | None) -> None:
        """Label the window ``(t, before, churn)`` whose latest change was at ``last``, its state ``after``; then
        each rate's move in ``waiting`` (after ``last``, so not inside the window) as a transition of its own."""
        self._label(cust, window[0], window[1], after, window[2], last)
        for moved in waiting or ():
            if moved > last:  # (one in the second of the window's latest change is inside it, in its rate_b)
                self._label(cust, moved, after, after, None, moved)

    def _rate_moved(self, cust: _Cust, t: int, now: dict[str, Comp]) -> None:
        """The exchange rate moved at ``t`` while the customer held ``now`` (MRR above 0). A rate's move is no change
        of the customer's: it begins no movement window and joins none, and is an ``fx`` transition of its own, but
        when it falls between the first and the latest change of a window (inside A -> B; known once a later change
        joins the window)."""
        pending = self._windows.get(cust.id)
        if pending is not None and t <= pending[0] + self.window_s:
            self._window_held[cust.id] = now
            self._rate_waiting.setdefault(cust.id, []).append(t)
            return
        if pending is not None:
            del self._windows[cust.id]
            self._end_window(cust, pending, now, self._window_last.get(cust.id, pending[0]),
                             self._rate_waiting.pop(cust.id, None))
        kept = (len(self.truth), len(cust.path_t), cust.mrr, cust.had_mrr)
        self._label(cust, t, now, now, None, t)
        self._fx_own[cust.id] = (t, self.truth[kept[0]:], *kept[1:])

    def _close_windows(self, end: int) -> None:
        """Label the windows still open at the end of a run. One that a change of the next run (``advance``) can
        still join is labelled for now: the next run takes its rows back and opens it again."""
        for cid, (t, before, churn) in sorted(self._windows.items()):
            cust = self._custs[cid]
            kept = (len(self.truth), len(cust.path_t), cust.mrr, cust.had_mrr)
            held = self._window_held.get(cid)  # (_label takes it; the window opened again needs it back)
            waiting = self._rate_waiting.pop(cid, None)
            self._end_window(cust, (t, before, churn), self._snap(cust), self._window_last.get(cid, t), waiting)
            if t + self.window_s >= end:
                self._provisional.append((cid, t, before, churn, waiting, self.truth[kept[0]:], kept[1:]))
                if held is not None:
                    self._window_held[cid] = held
        self._windows.clear()

    def _reopen_windows(self) -> None:
        """Open again the windows the last run labelled for now (see _close_windows)."""
        if not self._provisional:
            return
        dropped = {id(r) for *_, rows, _ in self._provisional for r in rows}
        self.truth = [r for r in self.truth if id(r) not in dropped]
        for cid, t, before, churn, waiting, _, (path_len, mrr, had_mrr) in self._provisional:
            cust = self._custs[cid]
            del cust.path_t[path_len:], cust.path_v[path_len:]
            cust.mrr, cust.had_mrr = mrr, had_mrr
            self._windows[cid] = (t, before, churn)
            if waiting is not None:
                self._rate_waiting[cid] = waiting
        self._provisional.clear()

    def _label(self, cust: _Cust, t: int, before: dict[str, Comp], after: dict[str, Comp],
               churn: tuple[str, Any] | None, last: int) -> None:
        """Label the transition from ``before`` to ``after``, dated ``t`` (its latest change at ``last``), and
        extend the customer's path."""
        held = self._window_held.pop(cust.id, None)
        if self.fx_changes:
            labelled = self._label_fx(cust, t, before, after, last, held)
            if labelled is None:
                return
            parts, rates, m_a, m_b = labelled
        else:
            m_a, m_b = truth.total(before), truth.total(after)
            if m_a == m_b:
                return
            fixed_off, metered = self._amount_off_rule(t, last)
            parts = truth.parts_of(before, after, cust.had_mrr,
                                   lambda price_id, qty, mult: self._mrr_usd(price_id, qty, mult, cust.currency),
                                   totals=(m_a, m_b), fixed_off=fixed_off, metered=metered)
            rates = [FX[cust.currency]] * len(parts)
        cust.had_mrr = cust.had_mrr or m_b > 0
        new_rows = truth.rows(cust.id, cust.currency, rates, t, parts, m_a, m_b, churn)
        if self.later_trials:
            self._note_sub_rows(new_rows)
        self.truth += new_rows
        cust.mrr = m_b
        cust.path_t.append(t)
        cust.path_v.append(float(m_b))

    def _settle_cancellation_details(self) -> None:
        """README's rule for a subscription's cancellation_details (its latest state): they belong to its last
        cancellation, when it did not come back after it. So its reason and feedback label the cancellation rows of
        its last churn (involuntary for a payment_failed reason, as for a churn by a failed payment), though what
        made its MRR drop then was another change, as a later trial's start (or a payment failing, where past_due
        counts nothing) before an unpaid subscription was deleted."""
        last: dict[str, str] = {}
        for row in self.truth:
            if row["movement"] == "cancellation" and row["occurred_at"] > last.get(row["subscription_id"], ""):
                last[row["subscription_id"]] = row["occurred_at"]
        back = {row["subscription_id"] for row in self.truth
                if row["mrr_delta"] > 0 and row["occurred_at"] > last.get(row["subscription_id"], "~")}
        for row in self.truth:
            sid = row["subscription_id"]
            if row["movement"] != "cancellation" or sid in back or row["occurred_at"] != last[sid]:
                continue
            details = self.objects["subscriptions"][sid]["cancellation_details"]
            if details["reason"] is None:
                continue
            involuntary = details["reason"] == "payment_failed" or row["churn_type"] == "involuntary"
            row["churn_type"] = "involuntary" if involuntary else "voluntary"
            row["cancellation_feedback"] = details["feedback"]

    def _note_sub_rows(self, rows: list[dict[str, Any]]) -> None:
        """Keep each subscription's rows of this transition (later_trials); a subscription canceled while a later
        trial ran gives its cancellation rows labelled from then on the churn of that cancellation."""
        by_sub: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_sub.setdefault(row["subscription_id"], []).append(row)
            churn = self._trial_churn.get(row["subscription_id"])
            if churn is not None and row["movement"] == "cancellation":
                row["churn_type"], row["cancellation_feedback"] = churn
        self._sub_rows.update(by_sub)

    def _label_fx(self, cust: _Cust, t: int, before: dict[str, Comp], after: dict[str, Comp], last: int,
                  held: dict[str, Comp] | None) -> tuple[list[truth.Part], list[Fraction | None], Decimal, Decimal] | None:
        """With moving rates: A at the rate in force before ``t``, B at the rate of its latest change ``last``. The
        whole-customer movements take the whole delta; otherwise each part is valued at the rate of its item's own
        change: the rate before the window when the item was already as in B when the rate moved (``held``: the
        state then; a removed item, already gone), else the rate after it (a plan switch is made when its new item
        begins); the ``fx`` part (on the largest item of B) is the rest, the rate's move on what was held when it
        moved. None when the MRR does not change. Returns the parts, the rate each part's own-currency amount is
        read at (None for fx), M(A) and M(B)."""
        cur = cust.currency
        rate_a, rate_b = self._rate_at(cur, t - 1), self._rate_at(cur, last)
        # (amounts at a rate are those at the catalogue's rate FX times rate / FX, exactly; at FX itself, as the
        # dollar's always is, the state is used as _snap made it)

        def at(state: dict[str, Comp], rate: Fraction) -> dict[str, Comp]:
            if rate == FX[cur]:
                return state
            factor = rate / FX[cur]
            return {k: c.times(factor) for k, c in state.items()}

        def mrr(rate: Fraction) -> truth.MrrFn:
            if rate == FX[cur]:
                return lambda price_id, qty, mult: self._mrr_usd(price_id, qty, mult, cur)
            factor = rate / FX[cur]
            return lambda price_id, qty, mult: self._mrr_usd(price_id, qty, mult, cur) * factor

        a_at_a, b_at_b = at(before, rate_a), at(after, rate_b)
        fixed_off, metered = self._amount_off_rule(t, last)
        m_a, m_b = truth.total(a_at_a), truth.total(b_at_b)
        if m_a == m_b:
            return None
        if m_a == 0 or m_b == 0 or rate_a == rate_b:
            # (a whole-customer movement, or no rate moved: every part at one rate)
            rate = rate_b if m_a == 0 else rate_a
            one = truth.parts_of(a_at_a, b_at_b, cust.had_mrr, mrr(rate), totals=(m_a, m_b), fixed_off=fixed_off,
                                 metered=metered)
            return one, [rate] * len(one), m_a, m_b
        held = before if held is None else held
        # (the same components at either rate: a positive rate keeps their order, pairs and signs)
        at_a = truth.parts_of(a_at_a, at(after, rate_a), cust.had_mrr, mrr(rate_a), fixed_off=fixed_off,
                              metered=metered)
        at_b = truth.parts_of(at(before, rate_b), b_at_b, cust.had_mrr, mrr(rate_b), fixed_off=fixed_off,
                              metered=metered)
        parts: list[truth.Part] = []
        rates: list[Fraction | None] = []
        for pa, pb in zip(at_a, at_b, strict=True):
            iid = pb[0].item_id
            done = held.get(iid) == after[iid] if iid in after else iid not in held
            parts.append(pa if done else pb)
            rates.append(rate_a if done else rate_b)
        moved = (sum((c.usd for c in b_at_b.values()), Fraction(0)) - sum((c.usd for c in a_at_a.values()), Fraction(0))
                 - sum((p[2] for p in parts), Fraction(0)))
        if moved != 0:
            main = max(b_at_b.values(), key=lambda c: (c.usd, c.item_id))
            parts.append((main, "fx", moved))
            rates.append(None)
        return parts, rates, m_a, m_b

    def _rate_at(self, currency: str, at: int) -> Fraction:
        """The rate (USD for one unit of ``currency``) in force at ``at``."""
        changes = self._rates.get(currency) or []
        i = bisect_right(changes, at, key=lambda r: r[0])
        return changes[i - 1][1] if i else FX[currency]

    def _h_fx(self, t: int) -> None:
        """The first of a month (fx_changes): eur and gbp move, each customer billed in them with MRR is revalued."""
        moved = set()
        for cur in ("eur", "gbp"):
            old = Decimal(self._rate_at(cur, t).numerator) / Decimal(self._rate_at(cur, t).denominator)
            new = (old * Decimal(str(1 + self._rng_fx.gauss(0, 0.02)))).quantize(Decimal("0.0001"))
            self._rates[cur].append((t, Fraction(str(new))))
            self.fx_rate_changes.append((t, cur, new))
            if new != old:
                moved.add(cur)
        self.fx_rate_changes.append((t, "usd", Decimal("1.0000")))  # (the dollar's own, served on each day too)
        for cid in sorted(self._custs):
            cust = self._custs[cid]
            # (a rate that came out as it was changes nothing: no movement window begins at it)
            if cust.currency in moved:
                now = self._snap(cust)
                if truth.total(now) > 0:
                    self._rate_moved(cust, t, now)
                elif cid in self._windows and t <= self._windows[cid][0] + self.window_s:
                    self._window_held[cid] = now  # (nothing counted then: the window's changes come after)
        self._at(_next_month_start(t), "fx")

    # --- public ----------------------------------------------------------------------------------------
    def advance(self, months: int = 1) -> None:
        """Continue the history by ``months`` calendar months (new signups, changes, billing runs)."""
        if months < 1:
            raise ValueError("months must be 1 or more")
        end = add_months(self.clock, months)
        self._signups(round(self._rate * months), self.clock, end)
        self._run(end)

    def customer_mrr(self, at: int) -> dict[str, float]:
        """Each customer's true MRR (USD, 4 dp) at unix time ``at``, from the model's own path."""
        out = {}
        for cid, c in self._custs.items():
            i = bisect_right(c.path_t, at)
            out[cid] = c.path_v[i - 1] if i else 0.0
        return out

    def plan_products(self) -> dict[str, str]:
        """The catalogue's plan keys ("starter", "storage", ...) and their product ids."""
        return {key: plan.product_id for key, plan in self._plans.items()}

    def bundle_bytes(self) -> bytes:
        """Objects, discounts, events and truth serialised deterministically."""
        return orjson.dumps({"account": self.account_id, "clock": self.clock, "objects": self.objects,
                             "discounts": self.discounts, "events": self.events, "truth": self.truth},
                            option=orjson.OPT_SORT_KEYS)

    # --- behaviour ------------------------------------------------------------------------------------
    def _signups(self, n: int, lo: int, hi: int) -> None:
        for _ in range(n):
            self._at(self._time_in(lo, hi), "signup")

    def _h_signup(self, t: int) -> None:
        rng = self._rng
        cur = rng.choice(CURRENCIES)
        cid = self._id("cus")
        n = len(self._custs) + 1
        size = rng.choice(("1-10", "11-50", "51-200"))
        obj = ob.customer(cid, t, cur, f"Customer {n}", f"billing{n}@example.com",
                          rng.choice(COUNTRIES[cur]), {"size_band": size}, ob.b62(n, 7).upper())
        self.objects["customers"][cid] = obj
        cust = _Cust(cid, cur)
        self._custs[cid] = cust
        if self.option_prices and cur != "usd" and self._rng_option.random() < 0.5:
            self._option_custs.add(cid)
        self._event("customer.created", obj, t)
        trial = rng.random() < 0.2
        coupon = None
        r = rng.random()
        if r < 0.06:
            coupon = "forever"
        elif r < 0.14:
            coupon = "repeating"
        elif r < 0.18:
            coupon = "once"
        if coupon == "forever" and self.restricted_coupons and self._rng_restricted.random() < 0.5:
            coupon = "core"
        if self.customer_discounts and self._rng_customer.random() < 0.08:
            self._customer_coupon(obj, t + 1)
            if coupon == "once":
                coupon = None
        self._at(t + rng.randrange(30, 600), "first_sub", cid, trial, None if trial else coupon)

    def _customer_coupon(self, obj: dict[str, Any], t: int) -> None:
        """Redeem the partner coupon on the customer ``obj`` (customer-wide; embedded as its ``discount``)."""
        c = self.objects["coupons"][self._coupons["partner"]]
        did = self._id("di")
        disc = ob.discount(did, obj["id"], None, c["id"], t, None)
        self.discounts[did] = disc
        c["times_redeemed"] += 1
        self._cust_disc[obj["id"]] = did
        prev = {"discount": obj["discount"]}
        obj["discount"] = _copy(disc)
        self._event("customer.discount.created", disc, t)
        self._event("customer.updated", obj, t, prev)

    def _discounts_of(self, sub: dict[str, Any], it: dict[str, Any]) -> list[str]:
        """The discounts that bill an item: its own, then its subscription's, else its customer's."""
        own = [*it["discounts"], *sub["discounts"]]
        if not sub["discounts"] and sub["customer"] in self._cust_disc:
            own.append(self._cust_disc[sub["customer"]])
        return own

    def _h_first_sub(self, t: int, cid: str, trial: bool, coupon: str | None) -> None:
        self._subscribe(self._custs[cid], t, trial=trial, coupon=coupon)

    def _pick_items(self, cust: _Cust) -> tuple[str, list[tuple[str, int | None]]]:
        rng = self._rng
        r = rng.random()
        ikey = "y" if r < 0.2 else "q" if r < 0.25 else "m"
        core = rng.choice(("starter", "starter", "pro", "pro", "business"))
        seats = max(1, int(rng.lognormvariate(1.3, 0.9)))
        items: list[tuple[str, int | None]] = [(core, seats)]
        if ikey == "q":
            return ikey, items
        if rng.random() < 0.25:
            items.append((rng.choice(("an_basic", "an_plus")), 1))
        if rng.random() < 0.15:
            items.append(("storage", rng.choice((10, 50, 100, 250))))
        if rng.random() < 0.1:
            items.append(("agents", rng.randint(1, 5)))
        if rng.random() < 0.08:
            items.append(("sms", rng.choice((250, 1000, 2500))))
        if ikey == "m" and rng.random() < 0.2:
            items.append(("events", None))
        if rng.random() < 0.03:  # a larger account wiring up many connectors
            items += [(f"conn{i}", 1) for i in sorted(rng.sample(range(len(CONNECTORS)), rng.randint(8, 14)))]
        return ikey, items

    def _subscribe(self, cust: _Cust, t: int, *, trial: bool = False, coupon: str | None = None,
                   items: list[tuple[str, int | None]] | None = None, ikey: str | None = None,
                   before: dict[str, Comp] | None = None, at: int | None = None) -> str:
        """Create a subscription (and its first invoice); labels the transition unless ``before`` is given
        by a caller that labels it itself."""
        own_transition = before is None
        snap = self._snap(cust) if before is None else before
        if items is None or ikey is None:
            ikey, items = self._pick_items(cust)
        sid = self._id("sub")
        end = t + 14 * DAY if trial else add_months(t, {"m": 1, "q": 3}.get(ikey, 12))
        data = []
        for key, qty in items:
            prid = self._plans[key].prices[(self._catalog_currency(cust.id, cust.currency), ikey)]
            if not self.objects["prices"][prid]["active"]:
                continue
            data.append(ob.sub_item(self._id("si"), t, sid, self.objects["prices"][prid], qty, (t, end)))
            if qty is None:
                self._usage_now[data[-1]["id"]] = self._rng.randint(5, 60)
        sub = ob.subscription(sid, t, cust.id, cust.currency, data, t, "trialing" if trial else "active")
        if self.failure_pauses:
            sub["billing_mode"] = {"type": "flexible", "flexible": {"proration_discounts": "included"},
                                   "updated_at": t}
        if trial:
            sub["trial_start"], sub["trial_end"] = t, end
            if self._rng.random() < 0.35:
                sub["trial_settings"]["end_behavior"]["missing_payment_method"] = "cancel"
            elif self.trial_pauses and self._rng_pause.random() < 0.3:
                sub["trial_settings"]["end_behavior"]["missing_payment_method"] = "pause"
        self.objects["subscriptions"][sid] = sub
        self._sub_gen[sid] = 0
        cust.subs.append(sid)
        if coupon:
            # with item_discounts, half the signup offers go to one item, one the coupon applies to (Stripe
            # discounts a line only when the coupon's applies_to covers the line's product)
            terms = self.objects["coupons"][self._coupons[coupon]]
            covered = [it for it in sub["items"]["data"] if self._coupon_applies(terms, it["price"]["product"])]
            amount = coupon == "forever" and self.amount_off_coupons and self._rng_amount.random() < 0.5
            if amount:  # (on the whole subscription)
                coupon, covered = "amount", []
            if self.item_discounts and self._rng.random() < 0.5 and covered:
                self._apply_item_coupon(sub, self._rng.choice(covered), coupon, t)
            else:
                self._apply_coupon(sub, coupon, t)
        self._event("customer.subscription.created", sub, t)
        self._invoice(sub, t, "subscription_create", (t, end), zero=trial)
        self._at(end, "cycle", sid, 0)
        if not trial:
            self._at(self._time_in(t + DAY, end - DAY), "decide", sid, 0)
        if own_transition:
            self._transition(cust, t if at is None else at, snap)
        return sid

    def _apply_coupon(self, sub: dict[str, Any], key: str, t: int) -> None:
        c = self.objects["coupons"][self._coupons[key]]
        end = add_months(t, c["duration_in_months"]) if c["duration"] == "repeating" else None
        did = self._id("di")
        self.discounts[did] = ob.discount(did, sub["customer"], sub["id"], c["id"], t, end)
        sub["discounts"] = [*sub["discounts"], did]
        c["times_redeemed"] += 1
        if c["amount_off"] is not None:
            self._sub_mult[sub["id"]] = Fraction(1)  # (its share is worked out at each moment: _amount_off_mult)
            self._sub_off[sub["id"]] = c["id"]
            self._sub_off_span[sub["id"]] = (t, end)
        elif c["duration"] != "once":
            self._sub_mult[sub["id"]] = 1 - Fraction(str(c["percent_off"])) / 100
        if c.get("applies_to"):
            self._sub_products[sub["id"]] = frozenset(c["applies_to"]["products"])
        if end is not None:
            self._sub_disc_end[sub["id"]] = end
            self._at(end, "discount_end", sub["id"], did)

    def _h_discount_end(self, t: int, sid: str, did: str) -> None:
        sub = self.objects["subscriptions"][sid]
        if did not in sub["discounts"]:
            return
        cust = self._custs[sub["customer"]]
        before = self._snap(cust)
        prev = {"discounts": list(sub["discounts"])}
        sub["discounts"] = [d for d in sub["discounts"] if d != did]
        self._sub_mult.pop(sid, None)
        self._sub_off.pop(sid, None)
        self._sub_products.pop(sid, None)
        self._sub_disc_end.pop(sid, None)
        self._event("customer.subscription.updated", sub, t, prev)
        # (an end that changes nothing counted, as while the subscription is trialing, begins no movement window)
        self._transition_if_counted(cust, t, before)

    # --- item-level discounts (item_discounts=True) -------------------------------------------------------
    def _apply_item_coupon(self, sub: dict[str, Any], it: dict[str, Any], key: str, t: int) -> None:
        """Redeem coupon ``key`` on one item: a discount with ``subscription_item`` set, in the item's
        ``discounts``; it reduces that item's MRR only (design.md 4). The caller sends the subscription's event."""
        c = self.objects["coupons"][self._coupons[key]]
        end = add_months(t, c["duration_in_months"]) if c["duration"] == "repeating" else None
        did = self._id("di")
        disc = ob.discount(did, sub["customer"], sub["id"], c["id"], t, end, item_id=it["id"])
        self.discounts[did] = disc
        it["discounts"] = [*it["discounts"], did]
        c["times_redeemed"] += 1
        self._event("customer.discount.created", disc, t)
        if c["amount_off"] is not None:
            self._item_off[it["id"]] = c["id"]
            self._item_off_since[it["id"]] = t
        elif c["duration"] != "once":
            self._item_mult[it["id"]] = 1 - Fraction(str(c["percent_off"])) / 100
        if end is not None:
            self._at(end, "item_discount_end", sub["id"], it["id"], did)

    def _drop_item_discounts(self, it: dict[str, Any], t: int) -> None:
        """An item removed (or replaced by another item): Stripe deletes the discounts it carried."""
        for did in it["discounts"]:
            self._event("customer.discount.deleted", self.discounts[did], t)
        self._item_mult.pop(it["id"], None)
        self._item_off.pop(it["id"], None)

    def _h_item_discount_end(self, t: int, sid: str, iid: str, did: str) -> None:
        """A repeating item-level discount runs out: it leaves its item (a canceled subscription keeps it)."""
        sub = self.objects["subscriptions"][sid]
        if sub.get("deleted") or sub["status"] == "canceled":
            return
        it = next((x for x in sub["items"]["data"] if x["id"] == iid), None)
        if it is None or did not in it["discounts"]:
            return
        cust = self._custs[sub["customer"]]
        before = self._snap(cust)
        prev = {"items": _json_now(sub["items"])}
        it["discounts"] = [d for d in it["discounts"] if d != did]
        self._item_mult.pop(iid, None)
        self._event("customer.subscription.updated", sub, t, prev)
        self._event("customer.discount.deleted", self.discounts[did], t)
        self._transition_if_counted(cust, t, before)  # (as for the subscription's discount)

    def _has_item_discount(self, sub: dict[str, Any]) -> bool:
        return self.item_discounts and any(it["id"] in self._item_mult or it["id"] in self._item_off
                                           for it in sub["items"]["data"])

    def _item_coupon(self, sub: dict[str, Any], t: int) -> None:
        """A later offer on one item (a retention or a promotional coupon), never on top of another discount."""
        free = [it for it in sub["items"]["data"] if not it["discounts"]]
        if sub["id"] in self._sub_mult or not free:
            return
        it = self._rng.choice(free)
        key = self._rng.choice(("retention", "repeating"))
        # (an amount off on the item instead, for half of them; not beside a customer-wide discount)
        if (self.amount_off_coupons and self._rng_amount.random() < 0.5
                and sub["customer"] not in self._cust_disc):
            key = "item_amount"
        cust = self._custs[sub["customer"]]
        before = self._snap(cust)
        prev = {"items": _json_now(sub["items"])}
        self._apply_item_coupon(sub, it, key, t)
        self._event("customer.subscription.updated", sub, t, prev)
        # (as a discount's end: one begun where the subscription counts nothing, its collection paused under
        # pause_collection_keeps_mrr = false, begins no movement window)
        self._transition_if_counted(cust, t, before)

    def _line_amounts(self, sub: dict[str, Any], it: dict[str, Any], first: bool, usage: int | None = None,
                      early: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """A line's amount and discount amounts; a metered item's for ``usage`` (default: that of its last
        period), less what ``early`` units of it cost (billed at a threshold: tiers run on over the period)."""
        if usage is None:
            usage = self._usage_billed.get(it["id"], 0)
        qty = usage if self._is_metered(it) else (it["quantity"] or 0)
        price = self._terms(it["price"]["id"], sub["currency"])
        amount = period_amount(price, qty) - (period_amount(price, early) if early else 0)
        disc = []
        for did in self._discounts_of(sub, it):  # (line item discounts first, as Stripe applies them)
            coupon = self.objects["coupons"][self.discounts[did]["source"]["coupon"]]
            if not self._coupon_applies(coupon, it["price"]["product"]):
                continue
            if coupon["duration"] == "once" and not first:
                continue
            if coupon["amount_off"] is not None:  # (its share of the amount off, in proportion to the lines)
                if self.discounts[did]["subscription_item"]:
                    kept = self._item_amount_off_mult(it, sub["currency"], sub["currency"])
                else:
                    kept = self._amount_off_mult(sub, sub["currency"], billed=True)
                disc.append({"amount": round(amount * (1 - kept)), "discount": did})
                continue
            pct = coupon["percent_off"]
            disc.append({"amount": round(amount * pct / 100), "discount": did})
        return amount, disc

    def _invoice(self, sub: dict[str, Any], t: int, reason: str, period: tuple[int, int], *, zero: bool = False,
                 lines: list[dict[str, Any]] | None = None, fail: bool = False,
                 usage_from: int | None = None, bill_pending: bool = True) -> dict[str, Any]:
        """Make, finalise and pay (or fail to pay) an invoice of ``sub``; its pending invoice items go on it
        unless ``bill_pending`` is false."""
        cust_obj = self.objects["customers"][sub["customer"]]
        iid = self._id("in")
        if lines is None:
            lines = []
            for it in sub["items"]["data"]:
                amount, disc = (0, []) if zero else self._line_amounts(sub, it, reason == "subscription_create")
                qty, line_period = it["quantity"], period
                if self._is_metered(it):  # billed in arrears
                    qty = self._usage_billed.get(it["id"], 0) if usage_from is not None else 0
                    if usage_from is not None:
                        line_period = (usage_from, period[0])
                        early = self._usage_early.pop(it["id"], None)
                        if early is not None and not zero:  # (the rest after a threshold)
                            qty -= early[0]
                            amount, disc = self._line_amounts(sub, it, False, early=early[0])
                            if early[2]:
                                line_period = (early[1], period[0])
                    if reason == "subscription_create":
                        amount, disc = 0, []
                lines.append(ob.line(self._id("il"), iid, sub["currency"], amount,
                                     f"{qty} × {it['price']['nickname']}", line_period, qty,
                                     sub["id"], it["id"], it["price"]["id"], it["price"]["product"], False, disc,
                                     [d["discount"] for d in disc]))
        else:
            for ln in lines:
                ln["invoice"] = iid
        if bill_pending and self._pending_items.get(sub["id"]):
            lines = self._bill_pending_items(sub, iid) + lines
        paused = (sub.get("pause_collection") or {}).get("behavior")
        seq = cust_obj["next_invoice_sequence"]
        if paused != "keep_as_draft":  # (a draft gets its number when it is finalised)
            cust_obj["next_invoice_sequence"] = seq + 1
        inv = ob.invoice(iid, t, cust_obj, sub["id"], reason, lines, period, f"{cust_obj['invoice_prefix']}-{seq:04d}")
        if self.item_discounts:  # an item's discount is the line's (line.discounts), not the invoice's
            inv["discounts"] = [d for d in inv["discounts"] if self.discounts[d]["subscription_item"] is None]
        self.objects["invoices"][iid] = inv
        self._event("invoice.created", inv, t)
        sub["latest_invoice"] = iid
        if paused is not None:
            self._collection_paused_invoice(inv, paused, t)
            return inv
        inv["status"] = "open"
        inv["status_transitions"]["finalized_at"] = t
        if fail and inv["amount_due"] > 0:
            inv["attempted"], inv["attempt_count"] = True, 1
            self._event("invoice.payment_failed", inv, t + 60)
        else:
            self._pay(inv, t + 60)
        return inv

    def _collection_paused_invoice(self, inv: dict[str, Any], behavior: str, t: int) -> None:
        """What Stripe does with an invoice made while its subscription's collection is paused: keeps it as a
        draft (no number, not finalised), or finalises it and at once voids it or marks it uncollectible; no
        payment is attempted."""
        inv["auto_advance"] = False
        if behavior == "keep_as_draft":
            inv["number"] = None
            return
        inv["status_transitions"]["finalized_at"] = t
        self._event("invoice.finalized", inv, t)
        if behavior == "void":
            inv["status"], inv["amount_remaining"] = "void", 0
            inv["status_transitions"]["voided_at"] = t
            self._event("invoice.voided", inv, t)
        else:
            inv["status"] = "uncollectible"
            inv["status_transitions"]["marked_uncollectible_at"] = t
            self._event("invoice.marked_uncollectible", inv, t)

    def _pause_collection(self, sub: dict[str, Any], t: int) -> None:
        """Payment collection of the active ``sub`` is paused from ``t`` (its status stays): until a
        ``resumes_at`` 15 to 80 days on, or, for half, until it is resumed by hand as long after."""
        rng = self._rng_collection
        behavior = rng.choice(("void", "mark_uncollectible", "keep_as_draft"))
        until = t + rng.randint(15, 80) * DAY + rng.randrange(DAY)
        automatic = rng.random() < 0.5
        cust = self._custs[sub["customer"]]
        before = self._snap(cust)
        sub["pause_collection"] = {"behavior": behavior, "resumes_at": until if automatic else None}
        self._event("customer.subscription.updated", sub, t, {"pause_collection": None})
        if not self.pause_collection_keeps_mrr:  # (the pause counts zero: a change of MRR)
            self._transition(cust, t, before)
        self._n += 1
        self._collection_token[sub["id"]] = self._n
        self._at(until, "collection_resume", sub["id"], self._n)

    def _h_collection_resume(self, t: int, sid: str, token: int) -> None:
        """The collection pause ``token`` of ``sid`` ends (Stripe's at ``resumes_at``, else by hand); MRR was
        kept throughout, so no transition, unless the pause counted zero (pause_collection_keeps_mrr off)."""
        sub = self.objects["subscriptions"][sid]
        if self._collection_token.get(sid) != token or sub.get("deleted") or sub["status"] == "canceled":
            return
        del self._collection_token[sid]
        cust = self._custs[sub["customer"]]
        before = self._snap(cust)
        prev = {"pause_collection": _copy(sub["pause_collection"])}
        sub["pause_collection"] = None
        self._event("customer.subscription.updated", sub, t, prev)
        if not self.pause_collection_keeps_mrr:  # (what it counted before the pause counts again)
            self._transition(cust, t, before)

    def _bill_pending_items(self, sub: dict[str, Any], iid: str) -> list[dict[str, Any]]:
        """The pending invoice items of ``sub`` as proration lines of its invoice ``iid``, each item now naming
        that invoice. Stripe lists them before the subscription's own lines, newest first (those of one change
        in the order they were made: credit, then charge)."""
        items = [self.objects["invoiceitems"][i] for i in self._pending_items.pop(sub["id"])]
        lines = []
        for ii in sorted(items, key=lambda x: -x["date"]):
            price = ii["pricing"]["price_details"]
            ln = ob.line(self._id("il"), iid, ii["currency"], ii["amount"], ii["description"],
                         (ii["period"]["start"], ii["period"]["end"]), ii["quantity"], sub["id"],
                         ii["parent"]["subscription_details"]["subscription_item"], price["price"],
                         price["product"], True, *_included(ii["discounts"]))
            details = ln["parent"]["subscription_item_details"]
            details["invoice_item"] = ii["id"]
            details["proration_details"] = _copy(ii["proration_details"])
            ii["invoice"] = iid
            lines.append(ln)
        return lines

    def _pay(self, inv: dict[str, Any], t: int) -> None:
        inv["status"] = "paid"
        inv["attempted"] = True
        inv["attempt_count"] += 1
        inv["amount_paid"], inv["amount_remaining"] = inv["amount_due"], 0
        inv["status_transitions"]["paid_at"] = t
        self._event("invoice.paid", inv, t)
        # (a threshold's invoice draws from the thresholds' stream: the rest of the history stays what it was)
        rng = self._rng_threshold if inv["billing_reason"] == "subscription_threshold" else self._rng
        if inv["amount_due"] > 0 and rng.random() < 0.01:
            cn = ob.credit_note(self._id("cn"), t + 600, inv, max(1, inv["amount_due"] // 5),
                                inv["lines"]["data"][0]["id"], self._id("cnli"),
                                f"{inv['number']}-CN-01", "order_change")
            if self.credit_note_lines > 1:
                # (ids of the first line's and a suffix: no id is drawn, so every other object's is what it was)
                first = cn["lines"]["data"][0]["id"]
                ob.split_credit_note(cn, [ln["id"] for ln in inv["lines"]["data"]],
                                     [f"{first}{ob.b62(k, 3)}" for k in range(1, self.credit_note_lines)])
            self.objects["credit_notes"][cn["id"]] = cn
            inv["post_payment_credit_notes_amount"] = cn["amount"]
            self._event("credit_note.created", cn, cn["created"])

    def _is_metered(self, it: dict[str, Any]) -> bool:
        return bool(it["price"]["recurring"]["usage_type"] == "metered")

    def _live(self, sid: str, gen: int) -> dict[str, Any] | None:
        sub = self.objects["subscriptions"][sid]
        if self._sub_gen.get(sid) != gen or sub.get("deleted") or sub["status"] == "canceled":
            return None
        return sub

    def _bump(self, sid: str) -> int:
        self._sub_gen[sid] += 1
        return self._sub_gen[sid]

    def _set_period(self, sub: dict[str, Any], start: int, end: int) -> None:
        for it in sub["items"]["data"]:
            it["current_period_start"], it["current_period_end"] = start, end

    def _end_sub(self, sub: dict[str, Any], t: int, reason: str, feedback: str | None,
                 churn: tuple[str, Any] | None, label: bool = True, switching: bool = False) -> None:
        cust = self._custs[sub["customer"]]
        before = self._snap(cust)
        sub["status"] = "canceled"
        sub["ended_at"] = t
        sub["canceled_at"] = sub["canceled_at"] or t
        sub["cancellation_details"] = {"comment": None if feedback is None else f"Feedback: {feedback}",
                                       "feedback": feedback, "reason": reason}
        self._bump(sub["id"])
        self._event("customer.subscription.deleted", sub, t)  # (previous_attributes: *.updated events only)
        if label:
            self._transition(cust, t, before, churn)
        if not switching and all(self.objects["subscriptions"][s]["status"] == "canceled" for s in cust.subs):
            if self._rng.random() < 0.25:
                self._at(add_months(t, self._rng.randint(2, 10)) + self._rng.randrange(DAY), "reactivate",
                         cust.id)
            elif self._rng.random() < 0.1:
                self._at(t + self._rng.randint(20, 60) * DAY, "delete_customer", cust.id)

    def _h_cycle(self, t: int, sid: str, gen: int) -> None:
        sub = self._live(sid, gen)
        if sub is None or sub["status"] == "unpaid":
            return
        cust = self._custs[sub["customer"]]
        rng = self._rng
        if sub["status"] == "trialing":
            if sub["trial_settings"]["end_behavior"]["missing_payment_method"] == "cancel":
                self._end_sub(sub, t, "cancellation_requested", None, None, label=False)
                return
            if sub["trial_settings"]["end_behavior"]["missing_payment_method"] == "pause":
                self._pause_at_trial_end(sub, t)
                return
            if sub["cancel_at_period_end"]:  # (ends at the trial's end, no invoice: nothing counted before or after)
                feedback = sub["cancellation_details"]["feedback"]
                self._end_sub(sub, t, "cancellation_requested", feedback, ("voluntary", feedback), label=False)
                return
            before = self._snap(cust)
            prev: dict[str, Any] = {"status": "trialing"}
            sub["status"] = "active"
        elif sub["cancel_at_period_end"]:
            self._end_sub(sub, t, "cancellation_requested", sub["cancellation_details"]["feedback"],
                          ("voluntary", sub["cancellation_details"]["feedback"]))
            return
        else:
            before = None  # a renewal alone never changes MRR
            prev = {}
        rec = sub["items"]["data"][0]["price"]["recurring"]
        end = add_months(t, (12 if rec["interval"] == "year" else 1) * rec["interval_count"])
        prev["items"] = _json_now(sub["items"])
        usage_from = sub["items"]["data"][0]["current_period_start"]
        self._set_period(sub, t, end)
        metered = [it for it in sub["items"]["data"] if self._is_metered(it)]
        usage_alone = metered and before is None  # (a renewal whose metered usage may set new MRR)
        if usage_alone:
            before = self._snap(cust)
        for it in metered:  # usage of the period just ended is billed now and sets the item's MRR
            converting = prev.get("status") == "trialing"
            self._usage_billed[it["id"]] = 0 if converting else self._usage_now.get(it["id"], 0)
            walk = rng.lognormvariate(0.03, 0.25)
            self._usage_now[it["id"]] = max(1, round(self._usage_now.get(it["id"], 10) * walk))
        fail = rng.random() < 0.04 and sub.get("pause_collection") is None
        if fail:
            if before is None and "past_due" not in self.counting:
                before = self._snap(cust)  # (past_due counting nothing: the failure is a change of MRR)
            prev.setdefault("status", sub["status"])
            sub["status"] = "past_due"
        self._invoice(sub, t, "subscription_cycle", (t, end), fail=fail, usage_from=usage_from)
        self._event("customer.subscription.updated", sub, t, prev)
        gen = self._bump(sid)
        self._at(end, "cycle", sid, gen)
        if self.thresholds and metered and self._rng_threshold.random() < 0.3:
            self._at(self._rng_threshold.randrange(t + 2 * DAY, max(end - 2 * DAY, t + 2 * DAY + 1)), "threshold",
                     sid, gen)
        if fail:
            self._at(t + rng.randint(3, 12) * DAY + rng.randrange(DAY), "dunning", sid, gen)
        else:
            self._at(self._time_in(t + DAY, end - DAY), "decide", sid, gen)
        # (usage billed at the amount it had changes nothing: no change, so no movement window begins here)
        if before is not None and not (usage_alone and before == self._snap(cust)):
            self._transition(cust, t, before, ("involuntary", None) if fail and "past_due" not in self.counting
                             else None)

    def _pause_at_trial_end(self, sub: dict[str, Any], t: int) -> None:
        """The trial ended with no payment method: the subscription pauses (no invoice); it is resumed or
        canceled later. Nothing counted before or after, but its status changed: it begins a movement window, as
        any change of an item or status does (README "Metric definitions"), so a resume inside it is dated here."""
        before = self._snap(self._custs[sub["customer"]])
        gen = self._pause(sub, t, "trial_end_without_payment_method")
        self._transition(self._custs[sub["customer"]], t, before)
        rng = self._rng_pause
        if rng.random() < 0.7:
            self._at(t + rng.randint(3, 40) * DAY + rng.randrange(DAY), "resume", sub["id"], gen)
        else:
            self._at(t + rng.randint(20, 60) * DAY + rng.randrange(DAY), "cancel_paused", sub["id"], gen)

    def _h_resume(self, t: int, sid: str, gen: int) -> None:
        """A payment method added: the paused subscription resumes with a new period from now, invoiced now."""
        sub = self._live(sid, gen)
        if sub is None or sub["status"] != "paused":
            return
        cust = self._custs[sub["customer"]]
        before = self._snap(cust)
        prev = {"status": "paused", "status_details": sub["status_details"], "items": _json_now(sub["items"])}
        sub["status"], sub["status_details"] = "active", None
        rec = sub["items"]["data"][0]["price"]["recurring"]
        end = add_months(t, (12 if rec["interval"] == "year" else 1) * rec["interval_count"])
        self._set_period(sub, t, end)
        for it in sub["items"]["data"]:
            if self._is_metered(it):  # (nothing used while paused)
                self._usage_billed[it["id"]] = 0
        self._invoice(sub, t, "subscription_cycle", (t, end))
        self._event("customer.subscription.resumed", sub, t)  # (previous_attributes: *.updated events only)
        self._event("customer.subscription.updated", sub, t, prev)
        gen = self._bump(sid)
        self._at(end, "cycle", sid, gen)
        self._at(self._time_in(t + DAY, end - DAY), "decide", sid, gen)
        self._transition(cust, t, before)

    def _h_cancel_paused(self, t: int, sid: str, gen: int) -> None:
        sub = self._live(sid, gen)
        if sub is not None and sub["status"] == "paused":
            self._end_sub(sub, t, "cancellation_requested", None, None, label=False)

    def _h_threshold(self, t: int, sid: str, gen: int) -> None:
        """The subscription's usage reached its billing threshold (amount_gte): part of each metered item's usage
        of the running period is invoiced now (subscription_threshold); the renewal bills the rest."""
        sub = self._live(sid, gen)
        if sub is None or sub["status"] != "active":
            return
        rng = self._rng_threshold
        start = sub["items"]["data"][0]["current_period_start"]
        lines = []
        for it in sub["items"]["data"]:
            usage = self._usage_now.get(it["id"], 0)
            if not self._is_metered(it) or usage < 2:
                continue
            part = rng.randint(1, usage - 1)
            amount, disc = self._line_amounts(sub, it, False, usage=part)
            self._usage_early[it["id"]] = (part, t, rng.random() < 0.5)
            lines.append(ob.line(self._id("il"), "", sub["currency"], amount, f"{part} × {it['price']['nickname']}",
                                 (start, t), part, sid, it["id"], it["price"]["id"], it["price"]["product"], False,
                                 disc, [d["discount"] for d in disc]))
        if lines:
            prev = {"billing_thresholds": sub["billing_thresholds"]}
            if sub["billing_thresholds"] is None:
                sub["billing_thresholds"] = {"amount_gte": max(5_000, sum(ln["amount"] for ln in lines)),
                                             "reset_billing_cycle_anchor": False}
                self._event("customer.subscription.updated", sub, t, prev)
            self._invoice(sub, t, "subscription_threshold", (start, t), lines=lines, bill_pending=False)

    def _h_dunning(self, t: int, sid: str, gen: int) -> None:
        sub = self._live(sid, gen)
        if sub is None or sub["status"] != "past_due":
            return
        inv = self.objects["invoices"][sub["latest_invoice"]]
        cust = self._custs[sub["customer"]]
        if self._rng.random() < 0.6:
            before = self._snap(cust)
            self._pay(inv, t)
            sub["status"] = "active"
            self._event("customer.subscription.updated", sub, t, {"status": "past_due"})
            self._at(self._time_in(t + DAY, sub["items"]["data"][0]["current_period_end"] - DAY), "decide", sid,
                     gen)
            if "past_due" not in self.counting:  # (the payment recovered: what it counts again is a comeback)
                self._transition(cust, t, before)
            return
        before = self._snap(cust)
        wait = self._rng.randint(7, 20)  # (drawn either way: the main stream stays what it was)
        if self.failure_pauses and self._rng_failure_pause.random() < 0.5:
            # (Stripe's pause on payment failure, flexible billing mode: the invoice stays open, none follows)
            self._pause(sub, t, "final_payment_failure")
            self._transition(cust, t, before, ("involuntary", None))
            return
        sub["status"] = "unpaid"
        inv["status"] = "uncollectible"
        inv["status_transitions"]["marked_uncollectible_at"] = t
        self._event("invoice.marked_uncollectible", inv, t)
        self._event("customer.subscription.updated", sub, t, {"status": "past_due"})
        self._transition(cust, t, before, ("involuntary", None))
        self._at(t + wait * DAY, "cancel_unpaid", sid, gen)

    def _pause(self, sub: dict[str, Any], t: int, kind: str) -> int:
        """The subscription is paused at ``t`` (``kind``: what paused it, status_details.paused.subscription.type),
        with its events; returns its new generation (what was scheduled for it no longer runs)."""
        prev = {"status": sub["status"], "status_details": sub.get("status_details")}
        sub["status"] = "paused"
        sub["status_details"] = {"paused": {"type": "subscription", "transitioned_at": t,
                                            "subscription": {"type": kind}}}
        self._event("customer.subscription.paused", sub, t)  # (previous_attributes: *.updated events only)
        self._event("customer.subscription.updated", sub, t, prev)
        return self._bump(sub["id"])

    def _h_cancel_unpaid(self, t: int, sid: str, gen: int) -> None:
        sub = self._live(sid, gen)
        if sub is None or sub["status"] != "unpaid":
            return
        self._end_sub(sub, t, "payment_failed", None, ("involuntary", None))

    def _h_reactivate(self, t: int, cid: str) -> None:
        cust = self._custs[cid]
        if cust.deleted or any(self.objects["subscriptions"][s]["status"] != "canceled" for s in cust.subs):
            return
        self._subscribe(cust, t)

    def _h_delete_customer(self, t: int, cid: str) -> None:
        cust = self._custs[cid]
        if cust.deleted or any(self.objects["subscriptions"][s]["status"] != "canceled" for s in cust.subs):
            return
        obj = self.objects["customers"][cid]
        self._event("customer.deleted", obj, t)
        self.objects["customers"][cid] = {"id": cid, "object": "customer", "deleted": True}
        cust.deleted = True

    def _h_decide(self, t: int, sid: str, gen: int) -> None:
        sub = self._live(sid, gen)
        if sub is None or sub["status"] != "active" or sub["cancel_at_period_end"]:
            return
        rng = self._rng
        if self.collection_pauses and sub["pause_collection"] is None and self._rng_collection.random() < 0.03:
            self._pause_collection(sub, t)
            return
        if self.later_trials and self._rng_later_trial.random() < 0.03 and self._later_trial(sub, t):
            return
        r = rng.random()
        if r < 0.022:
            self._cancel(sub, t)
        elif r < 0.05:
            self._change_plan(sub, t)
        elif r < 0.13:
            self._change_qty(sub, t, seat=True)
        elif r < 0.17:
            self._change_qty(sub, t, seat=False)
        elif r < 0.20:
            self._add_on(sub, t)
        elif r < 0.215:
            self._remove_on(sub, t)
        elif r < 0.225:
            self._switch(sub, t)
        elif r < 0.232:
            self._interval_switch(sub, t)
        elif r < 0.239 and sid not in self._sub_mult and not self._has_item_discount(sub):
            cust = self._custs[sub["customer"]]
            before = self._snap(cust)
            prev = {"discounts": list(sub["discounts"])}
            amount = self.amount_off_coupons and self._rng_amount.random() < 0.5
            self._apply_coupon(sub, "amount_retention" if amount else "retention", t)
            self._event("customer.subscription.updated", sub, t, prev)
            self._transition_if_counted(cust, t, before)  # (likewise, _item_coupon)
        elif self.item_discounts and r < 0.26:
            self._item_coupon(sub, t)

    def _later_trial(self, sub: dict[str, Any], t: int) -> bool:
        """Grant the paying ``sub`` a trial from ``t`` (later_trials), when it may have one: an update setting
        ``trial_end``, billed by a subscription_update invoice of 0.00 lines for the trial (half with a credit for
        the unused time of the period it cuts short, as proration_behavior=create_prorations makes); the trial's end
        is the subscription's next cycle (a new period, invoiced), unless the customer cancels meanwhile (a quarter:
        _h_trial_cancel). Returns whether it was granted."""
        items = sub["items"]["data"]
        if (sub["pause_collection"] is not None or any(self._is_metered(it) for it in items)
                or sub["trial_settings"]["end_behavior"]["missing_payment_method"] != "create_invoice"):
            return False
        rng = self._rng_later_trial
        end = t + rng.randint(7, 45) * DAY
        cust = self._custs[sub["customer"]]
        before = self._snap(cust)
        prev = {"status": sub["status"], "trial_start": sub["trial_start"], "trial_end": sub["trial_end"],
                "billing_cycle_anchor": sub["billing_cycle_anchor"], "items": _json_now(sub["items"]),
                "latest_invoice": sub["latest_invoice"]}
        credits: list[dict[str, Any]] = []
        if rng.random() < 0.5:  # (proration_behavior=create_prorations: the unused time of the period credited)
            credits, _ = self._proration_lines(sub, t, [(it, {"price": it["price"], "quantity": it["quantity"]}, None)
                                                        for it in items])
        sub["status"] = "trialing"
        sub["trial_start"], sub["trial_end"] = t, end
        sub["billing_cycle_anchor"] = end
        self._set_period(sub, t, end)
        if credits:
            trial = [ob.line(self._id("il"), "", sub["currency"], 0, f"Trial period for {it['price']['nickname']}",
                             (t, end), it["quantity"], sub["id"], it["id"], it["price"]["id"], it["price"]["product"],
                             False, [], []) for it in items]
            self._invoice(sub, t, "subscription_update", (t, end), lines=credits + trial)
        else:
            self._invoice(sub, t, "subscription_update", (t, end), zero=True)
        self._event("customer.subscription.updated", sub, t, prev)
        gen = self._bump(sub["id"])
        self._at(end, "cycle", sub["id"], gen)
        self._transition(cust, t, before)
        if rng.random() < 0.25:  # canceled before the trial ends (at once, or at its end)
            self._at(rng.randrange(t + DAY, end - DAY), "trial_cancel", sub["id"], gen)
        return True

    def _h_trial_cancel(self, t: int, sid: str, gen: int) -> None:
        """The customer cancels while a later trial runs: at once (customer.subscription.deleted, no invoice) or at
        the trial's end (cancel_at_period_end; _h_cycle then ends it, no invoice). MRR is zero already: no movement
        now; the cancellation that the trial's start made (when it brought the customer to zero) carries this one's
        feedback, the subscription's cancellation_details (design.md 5)."""
        sub = self._live(sid, gen)
        if sub is None or sub["status"] != "trialing" or sub["cancel_at_period_end"]:
            return
        rng = self._rng_later_trial
        feedback = rng.choice(FEEDBACK)
        churn = ("voluntary", feedback)
        self._trial_cancel_churn(sid, churn)
        if rng.random() < 0.5:
            self._cancel_at_period_end(sub, t, feedback)
        else:
            self._end_sub(sub, t, "cancellation_requested", feedback, churn, label=False)

    def _trial_cancel_churn(self, sid: str, churn: tuple[str, Any]) -> None:
        """The subscription ``sid``, trialing, is canceled with ``churn``: the cancellation rows of its trial's start
        (the latest transition that moved it, when labelled already; else when it is) carry it. A trial's start that
        left the customer other MRR was a downgrade of the subscription: no cancellation row carries it."""
        self._trial_churn[sid] = churn
        for row in self._sub_rows.get(sid, []):
            if row["movement"] == "cancellation":
                row["churn_type"], row["cancellation_feedback"] = churn

    def _cancel_at_period_end(self, sub: dict[str, Any], t: int, feedback: str) -> None:
        """``sub`` set at ``t`` to cancel when its period ends, the customer's ``feedback`` given."""
        cust = self._custs[sub["customer"]]
        before = self._snap(cust)
        prev = {"cancel_at_period_end": False, "cancel_at": None, "canceled_at": None,
                "cancellation_details": dict(sub["cancellation_details"])}
        sub["cancel_at_period_end"] = True
        sub["cancel_at"] = sub["items"]["data"][0]["current_period_end"]
        sub["canceled_at"] = t
        sub["cancellation_details"] = {"comment": f"Feedback: {feedback}", "feedback": feedback,
                                       "reason": "cancellation_requested"}
        self._event("customer.subscription.updated", sub, t, prev)
        if self.churn_at_request:  # (the request is the churn: the subscription counts zero from it)
            self._transition(cust, t, before, ("voluntary", feedback))

    def _cancel(self, sub: dict[str, Any], t: int) -> None:
        feedback = self._rng.choice(FEEDBACK)
        if self._rng.random() < 0.6:
            self._cancel_at_period_end(sub, t, feedback)
        else:
            self._end_sub(sub, t, "cancellation_requested", feedback, ("voluntary", feedback))

    def _proration(self, sub: dict[str, Any], t: int, changes: list[tuple[dict[str, Any], dict[str, Any] | None,
                                                                            dict[str, Any] | None]]) -> None:
        """A subscription_update invoice: credit for the old item, charge for the new one, from ``t``. With
        deferred prorations, half the changes of an annual subscription leave them pending instead."""
        lines, end = self._proration_lines(sub, t, changes)
        if not lines:
            return
        if (self.deferred_prorations and sub["items"]["data"][0]["price"]["recurring"]["interval"] == "year"
                and self._rng_deferred.random() < 0.5):
            self._defer_proration(sub, t, lines)
        else:
            self._invoice(sub, t, "subscription_update", (t, end), lines=lines)

    def _defer_proration(self, sub: dict[str, Any], t: int, lines: list[dict[str, Any]]) -> None:
        """The change made at ``t`` with proration_behavior=create_prorations (Stripe's default): nothing is
        invoiced now, each proration line becomes a pending invoice item (``invoice`` null) that the
        subscription's next invoice bills (the renewal, months away on an annual plan). A credit for unused
        time names the invoice that billed that time: the subscription's latest, and its lines of the item."""
        latest = self.objects["invoices"][sub["latest_invoice"]]
        for ln in lines:
            details = ln["parent"]["subscription_item_details"]
            item_id = details["subscription_item"]
            credited = None
            if ln["amount"] < 0:
                credited = {"invoice": latest["id"], "invoice_line_items": [
                    x["id"] for x in latest["lines"]["data"]
                    if x["parent"]["subscription_item_details"]["subscription_item"] == item_id]}
            price = ln["pricing"]["price_details"]
            ii = ob.invoice_item(self._id("ii"), t, sub["customer"], ln["currency"], ln["amount"],
                                 ln["description"], (ln["period"]["start"], ln["period"]["end"]), ln["quantity"],
                                 sub["id"], item_id, price["price"], price["product"], credited)
            ii["discounts"] = list(ln["discounts"])  # (the discounts in force, as on the line it stands for)
            self.objects["invoiceitems"][ii["id"]] = ii
            self._pending_items.setdefault(sub["id"], []).append(ii["id"])
            self._event("invoiceitem.created", ii, t)

    def _proration_lines(self, sub: dict[str, Any], t: int,
                         changes: list[tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]]
                         ) -> tuple[list[dict[str, Any]], int]:
        """The proration lines of ``changes`` made at ``t`` (credits and charges to the period's end), and that end.
        As Stripe makes them by default (``proration_discounts=included``): a line lists the discounts in force on
        its item and subscription, its amount is net of them, and their discount amounts are 0."""
        it0 = sub["items"]["data"][0]
        start, end = it0["current_period_start"], it0["current_period_end"]
        frac = Fraction(end - t, max(end - start, 1))
        lines = []
        for item, old, new in changes:
            in_force, kept = self._line_discounts(sub, item)
            for state, sign in ((old, -1), (new, 1)):
                if state is None or state["quantity"] is None:
                    continue
                full = period_amount(self._terms(state["price"]["id"], sub["currency"]), state["quantity"])
                amount = round(sign * full * frac * kept)
                lines.append(ob.line(self._id("il"), "", sub["currency"], amount,
                                     ("Unused time on " if sign < 0 else "Remaining time on ")
                                     + str(state["price"]["nickname"]), (t, end), state["quantity"], sub["id"],
                                     item["id"], state["price"]["id"], state["price"]["product"], True,
                                     *_included(in_force)))
        return lines, end

    def _line_discounts(self, sub: dict[str, Any], item: dict[str, Any]) -> tuple[list[str], Fraction]:
        """The discounts a proration line of ``item`` lists (those in force on it and its subscription, but a
        once coupon's), and the share of its amount they leave."""
        in_force, kept = [], Fraction(1)
        for did in self._discounts_of(sub, item):
            coupon = self.objects["coupons"][self.discounts[did]["source"]["coupon"]]
            if coupon["duration"] != "once" and self._coupon_applies(coupon, item["price"]["product"]):
                in_force.append(did)
                if coupon["amount_off"] is None:  # (an amount off is the period's: none on a proration)
                    kept *= 1 - Fraction(str(coupon["percent_off"])) / 100
        return in_force, kept

    def _update_items(self, sub: dict[str, Any], t: int, mutate: Any) -> None:
        cust = self._custs[sub["customer"]]
        before = self._snap(cust)
        prev = {"items": _copy(sub["items"])}
        changes = mutate()
        if not changes:
            return
        unprorated = self._without_prorations(sub, t, changes)
        if (not unprorated and self.pending_updates and sub["pause_collection"] is None
                and self._pending_update(sub, t, prev["items"], changes)):
            return
        self._event("customer.subscription.updated", sub, t, prev)
        if not unprorated:
            self._proration(sub, t, changes)
        else:
            if t < self._run_end - EVENT_RETENTION_S:
                self._added_unprorated.update((it["id"], self._run_end) for it, old, _ in changes if old is None)
            # (a subscription decides once a period: some decide again before the renewal bills this change, so
            # that a later change, a cancellation or a failed payment may come first)
            end = sub["items"]["data"][0]["current_period_end"]
            if self._rng_no_prorations.random() < 0.3 and t + 2 * DAY < end:
                self._at(self._rng_no_prorations.randrange(t + DAY, end - DAY), "decide", sub["id"],
                         self._sub_gen[sub["id"]])
        self._transition(cust, t, before)

    def _without_prorations(self, sub: dict[str, Any], t: int,
                            changes: list[tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]]
                            ) -> bool:
        """Whether the item change just made to ``sub`` at ``t`` is made with proration_behavior=none
        (no_prorations): no invoice, no pending item; the next renewal bills the new state. An item added (alone
        or in place of another) is dated by its ``created``; a change of an item kept, or a removal alone, only by
        its event, so it is made so only inside the events' window at the run's end. (Before it nothing dates it:
        the renewal's lines say what was billed from the renewal on, not when it changed; the truth would have
        the change where no sync could see it.) Inside the window, a change of an item there before only on a
        subscription of ten items or fewer (an event's list of more is cut short). Before the window, an item
        replaced so ends at its successor's ``created`` only when no other item was added so since the renewal
        that last billed it (else nothing says which of the additions deleted it), and a new item whose
        promotion ends before the renewal is prorated (no line would name the promotion)."""
        if not self.no_prorations:
            return False
        inside = t >= self._run_end - EVENT_RETENTION_S
        added = any(old is None for _, old, _ in changes)
        if not inside and not added:
            return False
        if inside and not all(old is None for _, old, _ in changes):
            # (an event lists ten items at most, has_more past them: an item left out of a list cut short may
            # still be there, so only a subscription of ten items or fewer, before and after, shows the change)
            after = len(sub["items"]["data"])
            before = after - sum(old is None for _, old, _ in changes) + sum(new is None for _, _, new in changes)
            if max(before, after) > 10:
                return False
        end = sub["items"]["data"][0]["current_period_end"]
        if not inside and any(self.discounts[did]["end"] is not None and self.discounts[did]["end"] <= end
                              for it, old, _ in changes if old is None for did in it["discounts"]):
            # (a promotion on the new item that ends before the renewal: only a proration line would name it)
            return False
        unprorated = self._rng_no_prorations.random() < (0.5 if inside else 0.35)
        if unprorated and not inside:
            replacing = any(new is None for _, _, new in changes)
            since = sub["items"]["data"][0]["current_period_start"]
            if replacing and self._sub_added_unprorated.get(sub["id"], since - 1) >= since:
                return False
            self._sub_added_unprorated[sub["id"]] = t
        return unprorated

    def _undated(self, it: dict[str, Any]) -> bool:
        """Whether ``it`` was added without prorations before this run's events' window: then nothing but its
        ``created`` dates its addition (and the end of the item it replaced), and a deleted item is not listed, so
        it is neither removed nor replaced in this run (a sync at the run's end would not know when it began)."""
        return self._added_unprorated.get(it["id"]) == self._run_end

    def _pending_update(self, sub: dict[str, Any], t: int, items_before: dict[str, Any],
                        changes: list[tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]]) -> bool:
        """Whether the change just made to ``sub``'s items is, instead, an update made with
        payment_behavior=pending_if_incomplete whose payment fails (some price or quantity changes of items kept,
        with an amount due). Then Stripe bills it on a subscription_update invoice whose payment fails, keeps
        the subscription's items as they were, with the update in ``pending_update``, and when that expires (23
        hours later, nothing having been paid) voids the invoice and drops the update: no change ever happened."""
        if any(old is None or new is None for _, old, new in changes):
            return False
        lines, end = self._proration_lines(sub, t, changes)
        if sum(ln["amount"] for ln in lines) <= 0 or self._rng_pending.random() >= 0.1:
            return False
        asked = [{"id": it["id"], "price": new["price"]["id"], "quantity": new["quantity"]}
                 for it, _, new in changes if new is not None]
        sub["items"] = items_before
        latest = sub["latest_invoice"]
        # (the subscription's pending invoice items stay pending: this invoice is voided, the update never made)
        inv = self._invoice(sub, t, "subscription_update", (t, end), lines=lines, fail=True, bill_pending=False)
        expires = t + 23 * 3600
        sub["pending_update"] = {"billing_cycle_anchor": None, "expires_at": expires,
                                 "subscription_items": asked, "trial_end": None, "trial_from_plan": None}
        self._event("customer.subscription.updated", sub, t + 60, {"latest_invoice": latest, "pending_update": None})
        self._at(expires, "pending_expired", sub["id"], inv["id"])
        return True

    def _h_pending_expired(self, t: int, sid: str, iid: str) -> None:
        sub = self.objects["subscriptions"][sid]
        inv = self.objects["invoices"][iid]
        if sub["pending_update"] is None or inv["status"] != "open":
            return
        inv["status"], inv["amount_remaining"] = "void", 0
        inv["status_transitions"]["voided_at"] = t
        self._event("invoice.voided", inv, t)
        sub["pending_update"] = None
        self._event("customer.subscription.pending_update_expired", sub, t)

    def _ikey(self, sub: dict[str, Any]) -> str:
        it = sub["items"]["data"][0]
        return self.objects["prices"][it["price"]["id"]]["lookup_key"].split("_")[-2]

    def _change_plan(self, sub: dict[str, Any], t: int) -> None:
        order = ["starter", "pro", "business"]
        cur = self._catalog_currency(sub["customer"], sub["currency"])

        def mutate() -> list[Any]:
            for it in sub["items"]["data"]:
                plan = self._plan_of_price[it["price"]["id"]]
                if plan.key in order:
                    i = order.index(plan.key)
                    j = i + 1 if (self._rng.random() < 0.65 and i < 2) or i == 0 else i - 1
                    newp = self.objects["prices"][self._plans[order[j]].prices[(cur, self._ikey(sub))]]
                    old = {"price": it["price"], "quantity": it["quantity"]}
                    it["price"], it["plan"] = ob.price_view(newp), ob.plan_of(newp)
                    if self._rng.random() < 0.3:
                        it["quantity"] = max(1, it["quantity"] + self._rng.choice((-2, -1, 1, 2, 3)))
                    if not self._undated(it) and (
                            (self.item_discounts and it["discounts"] and self._rng.random() < 0.5)
                            or (self.no_prorations and self._rng_no_prorations.random() < 0.3)):
                        # done as a replacement: the item (and the discounts it carries) deleted, a new item of
                        # the new price and quantity in its place (the old dict is dropped, its state is `old`)
                        new = ob.sub_item(self._id("si"), t, sub["id"], newp, it["quantity"],
                                          (it["current_period_start"], it["current_period_end"]))
                        sub["items"]["data"][sub["items"]["data"].index(it)] = new
                        self._drop_item_discounts(it, t)
                        return [(it, old, None), (new, None, {"price": new["price"], "quantity": new["quantity"]})]
                    return [(it, old, {"price": it["price"], "quantity": it["quantity"]})]
            return []

        self._update_items(sub, t, mutate)

    def _change_qty(self, sub: dict[str, Any], t: int, seat: bool) -> None:
        def mutate() -> list[Any]:
            for it in sub["items"]["data"]:
                plan = self._plan_of_price[it["price"]["id"]]
                if (plan.kind == "seat") == seat and plan.key in (*CORE, "storage", "agents", "sms"):
                    old = {"price": it["price"], "quantity": it["quantity"]}
                    step = self._rng.choice((-1, 1, 1, 2)) if seat else self._rng.choice((-50, 50, 100, 250))
                    new_q = max(1, it["quantity"] + step)
                    if new_q == it["quantity"]:
                        return []
                    it["quantity"] = new_q
                    return [(it, old, {"price": it["price"], "quantity": new_q})]
            return []

        self._update_items(sub, t, mutate)

    def _add_on(self, sub: dict[str, Any], t: int) -> None:
        have = {self._plan_of_price[it["price"]["id"]].key for it in sub["items"]["data"]}
        ikey = self._ikey(sub)
        cur = self._catalog_currency(sub["customer"], sub["currency"])
        conn = f"conn{self._rng.randrange(len(CONNECTORS))}"
        choices = [k for k in ("an_basic", "support", "storage", "agents", "sms", "events", conn)
                   if k not in have and (cur, ikey) in self._plans[k].prices
                   and self.objects["prices"][self._plans[k].prices[(cur, ikey)]]["active"]]
        if "an_plus" in have:
            choices = [k for k in choices if k != "an_basic"]
        if not choices:
            return
        key = self._rng.choice(choices)

        def mutate() -> list[Any]:
            p = self.objects["prices"][self._plans[key].prices[(cur, ikey)]]
            it0 = sub["items"]["data"][0]
            qty = {"storage": 50, "agents": 2, "sms": 500, "events": None}.get(key, 1)
            it = ob.sub_item(self._id("si"), t, sub["id"], p, qty,
                             (it0["current_period_start"], it0["current_period_end"]))
            if qty is None:
                self._usage_now[it["id"]] = self._rng.randint(5, 60)
            sub["items"]["data"].append(it)
            if self.item_discounts and sub["id"] not in self._sub_mult and self._rng.random() < 0.3:
                self._apply_item_coupon(sub, it, self._rng.choice(("repeating", "forever")), t)  # an add-on promo
            return [(it, None, {"price": it["price"], "quantity": qty})]

        self._update_items(sub, t, mutate)

    def _remove_on(self, sub: dict[str, Any], t: int) -> None:
        def mutate() -> list[Any]:
            for it in sub["items"]["data"][1:]:
                # (usage items stay until the subscription ends; see _undated for the others kept)
                if self._is_metered(it) or self._undated(it):
                    continue
                sub["items"]["data"].remove(it)
                if it["discounts"]:
                    self._drop_item_discounts(it, t)
                return [(it, {"price": it["price"], "quantity": it["quantity"]}, None)]
            return []

        self._update_items(sub, t, mutate)

    def _interval_switch(self, sub: dict[str, Any], t: int) -> None:
        """Monthly to annual: at twelve months' price (same MRR, no movement) or the discounted annual one."""
        items = sub["items"]["data"]
        if self._ikey(sub) != "m" or any(self._is_metered(it) for it in items):
            return
        keys = [self._plan_of_price[it["price"]["id"]].key for it in items]
        target = "y12" if all(k in CORE for k in keys) and self._rng.random() < 0.5 else "y"
        cur = self._catalog_currency(sub["customer"], sub["currency"])
        new_ids = [self._plans[k].prices.get((cur, target)) for k in keys]
        if any(i is None or not self.objects["prices"][i]["active"] for i in new_ids):
            return
        cust = self._custs[sub["customer"]]
        before = self._snap(cust)
        prev = {"items": _json_now(sub["items"]), "billing_cycle_anchor": sub["billing_cycle_anchor"]}
        start, end = items[0]["current_period_start"], items[0]["current_period_end"]
        new_end = add_months(t, 12)
        frac = Fraction(end - t, max(end - start, 1))
        lines = []
        for it, new_id in zip(items, new_ids, strict=True):
            old_p, new_p = self.objects["prices"][it["price"]["id"]], self.objects["prices"][str(new_id)]
            old_t, new_t = self._terms(old_p["id"], sub["currency"]), self._terms(new_p["id"], sub["currency"])
            # (the lines list the discounts in force and are net of them, as any proration's: the same product)
            in_force, kept = self._line_discounts(sub, it)
            for p, amount, period in ((old_p, -round(period_amount(old_t, it["quantity"]) * frac * kept), (t, end)),
                                      (new_p, round(period_amount(new_t, it["quantity"]) * kept), (t, new_end))):
                lines.append(ob.line(self._id("il"), "", sub["currency"], amount,
                                     ("Unused time on " if amount < 0 else "Remaining time on ") + str(p["nickname"]),
                                     period, it["quantity"], sub["id"], it["id"], p["id"], p["product"], True,
                                     *_included(in_force)))
            it["price"], it["plan"] = ob.price_view(new_p), ob.plan_of(new_p)
        self._set_period(sub, t, new_end)
        sub["billing_cycle_anchor"] = t
        self._event("customer.subscription.updated", sub, t, prev)
        self._invoice(sub, t, "subscription_update", (t, new_end), lines=lines)
        gen = self._bump(sub["id"])
        self._at(new_end, "cycle", sub["id"], gen)
        self._at(self._time_in(t + DAY, new_end - DAY), "decide", sub["id"], gen)
        self._transition(cust, t, before)

    def _h_archive(self, t: int, key: str, ikey: str) -> None:
        """Retire a price: existing subscriptions keep it, new ones can no longer choose it."""
        ids = {prid for (_, k), prid in self._plans[key].prices.items() if k == ikey}
        for prid in sorted(ids):
            price = self.objects["prices"][prid]
            price["active"] = False
            self._event("price.updated", price, t, {"active": True})
        for sub in self.objects["subscriptions"].values():
            for it in sub.get("items", {}).get("data", []):
                if it["price"]["id"] in ids:
                    it["price"]["active"] = it["plan"]["active"] = False

    def _switch(self, sub: dict[str, Any], t: int) -> None:
        """Plan switch done as cancel + resubscribe a few minutes later (one transition, unless a window that began
        before the cancellation ends between the two)."""
        if sub["id"] in self._sub_mult or any(self._is_metered(it) for it in sub["items"]["data"]):
            return
        cust = self._custs[sub["customer"]]
        before = self._snap(cust)
        items = [(self._plan_of_price[it["price"]["id"]].key, it["quantity"]) for it in sub["items"]["data"]]
        order = ["starter", "pro", "business"]
        items = [(order[(order.index(k) + self._rng.choice((1, 2))) % 3] if k in order else k, q)
                 for k, q in items]
        feedback = "switched_service"
        self._end_sub(sub, t, "cancellation_requested", feedback, None, label=False, switching=True)
        # (two changes, each its own point: a movement window anchored before the cancellation may end between
        # them, and then the cancellation and the new subscription are two transitions)
        mid = self._snap(cust)
        again = t + self._rng.randint(60, 900)
        self._subscribe(cust, again, items=items, ikey=self._ikey(sub), before=mid)
        self._transition(cust, t, before, ("voluntary", feedback))
        self._transition(cust, again, mid)
