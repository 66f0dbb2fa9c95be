"""Bad data: sandbox objects mutated the ways real accounts differ from the happy path, through the store
loader and the metrics recompute (and once through a real sync from a sandbox serving them).

Never a crash; every object kept as the raw JSON given; what cannot be used counted in ``data_quality``; the
bridge identity holds (``assert_bridge_adds_up`` of tests/metrics/test_bridge.py). The one failure by design
(design.md 4): a currency without an exchange rate is a one-line DataError naming it, and nothing stored or
previously derived is lost.
"""

from __future__ import annotations

import copy
import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stripe_churn.errors import DataError
from stripe_churn.metrics import queries
from stripe_churn.metrics.runner import recompute
from stripe_churn.sandbox.fx import SANDBOX_FX_RATES
from stripe_churn.sandbox.server import start_in_thread
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.settings import Secret, Settings
from stripe_churn.store.db import open_store
from stripe_churn.store.load import upsert_fx_rates, upsert_objects
from stripe_churn.sync import run_sync

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "metrics"))
from test_bridge import assert_bridge_adds_up

START = int(datetime(2025, 10, 1, tzinfo=UTC).timestamp())
KEY = "sk_test_bad_data"
Obj = dict[str, Any]
# every timestamp a field can hold without being nonsense: the epoch, before it, year 1, year 9999, milliseconds
FAR_TIMESTAMPS = [0, 1, -1, -62135596800, 253402300799, 1_700_000_000_000]
SUB_REASONS = ("subscription_create", "subscription_cycle", "subscription_update")


@dataclass
class World:
    """A deep copy of a simulation's objects to mutate, with what the mutations expect in data_quality."""

    account_id: str
    clock: int
    objects: dict[str, dict[str, Obj]]
    discounts: dict[str, Obj]
    events: list[Obj]
    fx: list[tuple[str, str, float]] = field(default_factory=list)
    expect: set[tuple[str, str, str]] = field(default_factory=set)  # (kind, object_type, object_id)
    usable_lines: set[str] = field(default_factory=set)  # old-shape lines the history must still read
    done: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, sim: Simulation) -> World:
        day = datetime.fromtimestamp(START, UTC).date().isoformat()
        fx = [(d, cur, float(rate)) for cur, rate in sorted(SANDBOX_FX_RATES.items()) for d in ("0001-01-01", day)]
        return cls(sim.account_id, int(sim.clock), copy.deepcopy(sim.objects), copy.deepcopy(sim.discounts),
                   copy.deepcopy(sim.events), fx)

    def live(self, resource: str) -> list[Obj]:
        return [o for _, o in sorted(self.objects[resource].items()) if not o.get("deleted")]

    def items(self) -> list[Obj]:
        return [it for s in self.live("subscriptions") for it in ((s.get("items") or {}).get("data") or [])]

    def sub_invoices(self) -> list[Obj]:
        return [i for i in self.live("invoices") if i.get("billing_reason") in SUB_REASONS and i["lines"]["data"]]

    def lines(self) -> list[Obj]:
        return [ln for i in self.live("invoices") for ln in ((i.get("lines") or {}).get("data") or [])]


def load_world(con: duckdb.DuckDBPyConnection, w: World) -> None:
    """What a sync stores, through the same loader: objects, items and lines unnested, discounts, events."""
    seen = datetime.fromtimestamp(w.clock, UTC)
    con.execute("BEGIN TRANSACTION")
    for resource in ("customers", "products", "prices", "coupons", "subscriptions", "invoices", "credit_notes"):
        upsert_objects(con, resource, w.account_id, list(w.objects.get(resource, {}).values()), seen)
    items = [{**it, "subscription": it.get("subscription") or s["id"]} for s in w.live("subscriptions")
             for it in ((s.get("items") or {}).get("data") or [])]
    upsert_objects(con, "subscription_items", w.account_id, items, seen)
    lines = [{**ln, "invoice": ln.get("invoice") or i["id"]} for i in w.live("invoices")
             for ln in ((i.get("lines") or {}).get("data") or [])]
    upsert_objects(con, "invoice_lines", w.account_id, lines, seen)
    upsert_objects(con, "discounts", w.account_id, list(w.discounts.values()), seen)
    upsert_objects(con, "events", w.account_id, [e for e in w.events if e["created"] >= w.clock - 30 * 86400], seen)
    upsert_fx_rates(con, w.fx)
    con.execute("COMMIT")


# ------------------------------------------------------------------------------------------ mutations
OPTIONAL: dict[str, tuple[str, ...]] = {
    "customers": ("email", "name", "address", "metadata", "currency", "discount", "description", "phone",
                  "invoice_settings", "created"),
    "subscriptions": ("cancellation_details", "canceled_at", "ended_at", "trial_start", "trial_end", "discounts",
                      "metadata", "cancel_at", "pause_collection", "description", "latest_invoice", "currency",
                      "collection_method"),
    "prices": ("nickname", "lookup_key", "metadata", "tiers_mode", "transform_quantity", "unit_amount_decimal",
               "tiers", "recurring"),
    "products": ("unit_label", "metadata", "description", "name"),
    "invoices": ("description", "status", "discounts", "total", "subtotal", "period_start", "period_end"),
    "coupons": ("name", "metadata", "duration_in_months", "max_redemptions"),
}
ITEM_OPTIONAL = ("metadata", "discounts", "quantity", "plan", "current_period_start", "current_period_end",
                 "billing_thresholds", "tax_rates")
LINE_OPTIONAL = ("description", "discounts", "quantity", "taxes", "discount_amounts", "quantity_decimal")


def _pick(rnd: random.Random, objs: list[Obj]) -> Obj | None:
    return rnd.choice(objs) if objs else None


def m_remove_or_null(w: World, rnd: random.Random, *, null: bool) -> None:
    """Optional fields missing (older objects, other integrations) or explicitly null."""
    where = rnd.choice([*OPTIONAL, "items", "lines"])
    keys: tuple[str, ...]
    if where == "items":
        obj, keys = _pick(rnd, w.items()), ITEM_OPTIONAL
    elif where == "lines":
        obj, keys = _pick(rnd, w.lines()), LINE_OPTIONAL
    else:
        obj, keys = _pick(rnd, w.live(where)), OPTIONAL[where]
    if obj is None:
        return
    for key in rnd.sample(keys, k=min(len(keys), rnd.randint(1, 3))):
        if null:
            obj[key] = None
        else:
            obj.pop(key, None)


def m_subscription_without_customer(w: World, rnd: random.Random) -> None:
    sub = _pick(rnd, w.live("subscriptions"))
    if sub is not None:
        if rnd.random() < 0.5:
            sub.pop("customer", None)
        else:
            sub["customer"] = None
        w.expect.add(("unusable_object", "subscription", sub["id"]))


def m_unknown_fields(w: World, rnd: random.Random) -> None:
    """Fields Stripe adds in later versions: any name, any JSON, on any object, item or line."""
    pool = [o for r in w.objects for o in w.live(r)] + w.items() + w.lines()
    for obj in rnd.sample(pool, k=min(len(pool), 5)):
        obj[f"x_{rnd.randrange(10**6)}"] = rnd.choice([None, 0, -1.5, "", "text", [], [1, None, {"a": []}],
                                                      {"object": "future_thing", "id": "ft_1"}, True])


def m_unknown_object_types(w: World, rnd: random.Random) -> None:
    """Events of types and objects the sync does not know; a billing event whose object is not what its type says."""
    at = w.clock - rnd.randint(60, 20 * 86400)
    n = rnd.randrange(10**6)
    w.events.append({"id": f"evt_unknown{n}", "object": "event", "type": "quantum_meter.reconfigured",
                     "created": at, "api_version": "2099-01-01.future",
                     "data": {"object": {"id": f"qm_{n}", "object": "quantum_meter", "amount": 5}}})
    etype, obj = rnd.choice([("customer.subscription.updated", "subscription_v3"), ("invoice.paid", "invoice_v2"),
                             ("price.updated", "price_bundle")])
    w.events.append({"id": f"evt_odd{n}", "object": "event", "type": etype, "created": at,
                     "data": {"object": {"id": f"odd_{n}", "object": obj}}})
    w.expect.add(("unusable_object", "event", f"evt_odd{n}"))


def m_old_event_shape(w: World, rnd: random.Random) -> None:
    """A subscription event rendered with a pre-2025 API version: plan, quantity, current_period_* on the
    subscription, a single ``discount`` instead of ``discounts``."""
    events = [e for e in w.events if e["type"].startswith("customer.subscription.")
              and e["created"] >= w.clock - 30 * 86400]
    ev = _pick(rnd, events)
    if ev is None:
        return
    sub = ev["data"]["object"]
    ev["api_version"] = "2024-06-20"
    items = (sub.get("items") or {}).get("data") or []
    start = sub.get("start_date") or ev["created"]
    sub["current_period_start"], sub["current_period_end"] = start, start + 30 * 86400
    if items:
        sub["plan"] = items[0].get("plan") or {"id": (items[0].get("price") or {}).get("id"), "object": "plan"}
        sub["quantity"] = items[0].get("quantity")
    sub["discount"] = None
    sub.pop("discounts", None)
    prev = ev["data"].get("previous_attributes")
    if isinstance(prev, dict) and "items" in prev:
        prev["plan"] = sub.get("plan")


def m_old_line_shape(w: World, rnd: random.Random) -> None:
    """Lines of a subscription invoice in the pre-2025 shape: ``price``/``plan``/``proration``/
    ``subscription_item`` at the top level, no ``parent`` or ``pricing``. Still usable: history reads them."""
    inv = _pick(rnd, w.sub_invoices())
    if inv is None:
        return
    for ln in inv["lines"]["data"]:
        par = (ln.get("parent") or {}).get("subscription_item_details") or {}
        price = ((ln.get("pricing") or {}).get("price_details") or {}).get("price")
        ln.pop("parent", None)
        ln.pop("pricing", None)
        ln.update({"type": "subscription", "price": {"id": price, "object": "price"} if price else None,
                   "plan": {"id": price, "object": "plan"} if price else None,
                   "proration": bool(par.get("proration")), "subscription_item": par.get("subscription_item")})
        if price and par.get("subscription_item"):
            w.usable_lines.add(ln["id"])


def m_line_without_item_or_price(w: World, rnd: random.Random) -> None:
    """A subscription invoice line that names neither its item nor its price: kept raw, counted."""
    inv = _pick(rnd, w.sub_invoices())
    if inv is None:
        return
    ln = rnd.choice(inv["lines"]["data"])
    for key in ("parent", "pricing", "price", "plan", "subscription_item"):
        ln.pop(key, None)
    w.usable_lines.discard(ln["id"])
    w.expect.add(("unusable_object", "invoice_line", ln["id"]))


def m_huge_invoice(w: World, rnd: random.Random) -> None:
    """A subscription invoice with 1,000 lines (copies of one real line with their own ids, some zero or negative)."""
    base_inv = _pick(rnd, w.sub_invoices())
    if base_inv is None:
        return
    n = rnd.randrange(10**6)
    inv = copy.deepcopy(base_inv)
    inv.update({"id": f"in_huge{n}", "billing_reason": "subscription_cycle"})
    line = inv["lines"]["data"][0]
    inv["lines"] = {"object": "list", "has_more": False, "url": f"/v1/invoices/in_huge{n}/lines",
                    "data": [{**copy.deepcopy(line), "id": f"il_huge{n}_{i:04d}", "invoice": inv["id"],
                              "amount": rnd.choice([0, -1, line.get("amount") or 0])} for i in range(1000)]}
    w.objects["invoices"][inv["id"]] = inv


def m_amounts(w: World, rnd: random.Random) -> None:
    """Zero and negative amounts and quantities where Stripe sends non-negative ones."""
    for price in rnd.sample(w.live("prices"), k=min(3, len(w.live("prices")))):
        if price.get("unit_amount") is not None:
            price["unit_amount"] = rnd.choice([0, -price["unit_amount"], -1])
    for it in rnd.sample(w.items(), k=min(3, len(w.items()))):
        it["quantity"] = rnd.choice([0, -2])
        if isinstance(it.get("price"), dict) and it["price"].get("unit_amount") is not None:
            it["price"]["unit_amount"] = rnd.choice([0, -500])
    for ln in rnd.sample(w.lines(), k=min(5, len(w.lines()))):
        ln["amount"] = rnd.choice([0, -abs(ln.get("amount") or 1)])
    for inv in rnd.sample(w.live("invoices"), k=min(2, len(w.live("invoices")))):
        inv["total"] = inv["amount_due"] = rnd.choice([0, -100])


def m_unknown_currency_with_rate(w: World, rnd: random.Random) -> None:
    """A currency the sandbox never uses (ISO 4217 'xts', the testing code), with a rate supplied."""
    price = _pick(rnd, [p for p in w.live("prices") if p.get("type") == "recurring"])
    if price is None:
        return
    price["currency"] = "xts"
    for it in w.items():
        if isinstance(it.get("price"), dict) and it["price"].get("id") == price["id"]:
            it["price"]["currency"] = "xts"
    w.fx.append(("0001-01-01", "xts", 0.5))


def m_far_timestamps(w: World, rnd: random.Random) -> None:
    """Timestamps far in the past and the future on customers, subscriptions, items, invoices and lines."""
    t = rnd.choice(FAR_TIMESTAMPS)
    target = rnd.choice(["customers", "subscriptions", "items", "invoices", "lines", "prices"])
    if target == "items":
        obj = _pick(rnd, w.items())
        keys: tuple[str, ...] = ("created", "current_period_start", "current_period_end")
    elif target == "lines":
        obj = _pick(rnd, w.lines())
        if obj is not None:
            obj["period"] = {"start": min(t, 0), "end": t}
        return
    else:
        obj = _pick(rnd, w.live(target))
        keys = {"subscriptions": ("created", "start_date", "ended_at", "canceled_at", "cancel_at", "trial_end",
                                  "billing_cycle_anchor"),
                "invoices": ("created", "period_start", "period_end")}.get(target, ("created",))
    if obj is not None:
        for key in rnd.sample(keys, k=min(len(keys), 2)):
            obj[key] = t


MUTATIONS: dict[str, Callable[[World, random.Random], None]] = {
    "missing_optional": lambda w, r: m_remove_or_null(w, r, null=False),
    "null_optional": lambda w, r: m_remove_or_null(w, r, null=True),
    "subscription_without_customer": m_subscription_without_customer,
    "unknown_fields": m_unknown_fields,
    "unknown_object_types": m_unknown_object_types,
    "old_event_shape": m_old_event_shape,
    "old_line_shape": m_old_line_shape,
    "line_without_item_or_price": m_line_without_item_or_price,
    "huge_invoice": m_huge_invoice,
    "zero_negative_amounts": m_amounts,
    "unknown_currency_with_rate": m_unknown_currency_with_rate,
    "far_timestamps": m_far_timestamps,
}


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def sim() -> Simulation:
    return Simulation(customers=10, months=4, seed=3, start=START)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated empty store, copied for each example (migrating costs more than copying)."""
    path = tmp_path_factory.mktemp("bad") / "empty.duckdb"
    open_store(path).close()
    return path


@pytest.fixture
def fresh(empty_store: Path) -> Iterator[Callable[[], duckdb.DuckDBPyConnection]]:
    dirs: list[tempfile.TemporaryDirectory[str]] = []
    cons: list[duckdb.DuckDBPyConnection] = []

    def make() -> duckdb.DuckDBPyConnection:
        d = tempfile.TemporaryDirectory()
        dirs.append(d)
        path = Path(d.name) / "s.duckdb"
        shutil.copyfile(empty_store, path)
        cons.append(open_store(path))
        return cons[-1]

    yield make
    for con in cons:
        con.close()
    for d in dirs:
        d.cleanup()


def raw_of(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, Any]:
    return {r[0]: orjson.loads(r[1]) for r in con.execute(f"SELECT id, CAST(raw AS VARCHAR) FROM {table}").fetchall()}


def check(con: duckdb.DuckDBPyConnection, w: World, label: str) -> None:
    """Raw JSON kept as given, what cannot be used counted, the bridge adding up."""
    for resource in ("customers", "products", "prices", "subscriptions", "invoices"):
        stored = raw_of(con, resource)
        for obj in w.live(resource):
            assert stored.get(obj["id"]) == orjson.loads(orjson.dumps(obj)), f"{label}: {resource} {obj['id']} raw"
    stored_lines = raw_of(con, "invoice_lines")
    assert {ln["id"] for ln in w.lines()} <= set(stored_lines), f"{label}: invoice lines missing"
    stored_events = raw_of(con, "events")
    for ev in w.events:
        if ev["created"] >= w.clock - 30 * 86400:
            assert stored_events[ev["id"]] == orjson.loads(orjson.dumps(ev)), f"{label}: event {ev['id']}"
    found = set(con.execute("SELECT kind, object_type, object_id FROM data_quality").fetchall())
    missing = w.expect - found
    assert not missing, f"{label}: not counted in data_quality: {sorted(missing)[:5]}"
    if w.usable_lines:
        read = {r[0] for r in con.execute(
            "SELECT line_id FROM derived_invoice_lines WHERE subscription_item_id IS NOT NULL "
            "AND price_id IS NOT NULL").fetchall()}
        assert w.usable_lines <= read, f"{label}: old-shape lines not read: {sorted(w.usable_lines - read)[:5]}"
    assert_bridge_adds_up(con, label, periods=["month"], segments=[None, "currency"])


# ------------------------------------------------------------------------------------------ tests
@settings(max_examples=3, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(picks=st.lists(st.tuples(st.sampled_from(sorted(MUTATIONS)), st.integers(0, 2**32)), min_size=2, max_size=6))
@example(picks=[(name, i) for i, name in enumerate(sorted(MUTATIONS))])  # every kind at once
def test_loader_and_recompute_survive_bad_objects(sim: Simulation, fresh: Callable[[], duckdb.DuckDBPyConnection],
                                                  picks: list[tuple[str, int]]) -> None:
    w = World.of(sim)
    for name, seed in picks:
        MUTATIONS[name](w, random.Random(seed))
        w.done.append(name)
    con = fresh()
    load_world(con, w)
    recompute(con, Settings())
    check(con, w, "+".join(w.done))


def test_unknown_currency_without_rate_is_a_clear_error_and_keeps_data(
        sim: Simulation, fresh: Callable[[], duckdb.DuckDBPyConnection]) -> None:
    w = World.of(sim)
    con = fresh()
    load_world(con, w)
    recompute(con, Settings())
    bridge = queries.bridge(con)
    movements = con.execute("SELECT * FROM mrr_movements ORDER BY ALL").fetchall()
    assert bridge and movements

    price = next(p for p in w.live("prices") if p.get("type") == "recurring"
                 and any((it.get("price") or {}).get("id") == p["id"] for it in w.items()))
    price["currency"] = "xts"
    for it in w.items():
        if (it.get("price") or {}).get("id") == price["id"]:
            it["price"]["currency"] = "xts"
    load_world(con, w)
    raw_before = {t: raw_of(con, t) for t in ("prices", "subscriptions", "subscription_items")}
    with pytest.raises(DataError) as info:
        recompute(con, Settings())
    msg = str(info.value)
    assert "\n" not in msg and "xts" in msg and "fx_rates" in msg
    assert any(ch.isdigit() for ch in msg.split("xts", 1)[1][:30]), msg  # the dates follow the currency
    # what was stored stays (the new currency included), and the previous results were left in place
    assert {t: raw_of(con, t) for t in raw_before} == raw_before
    assert raw_of(con, "prices")[price["id"]]["currency"] == "xts"
    assert queries.bridge(con) == bridge
    assert con.execute("SELECT * FROM mrr_movements ORDER BY ALL").fetchall() == movements


def test_real_sync_of_a_sandbox_serving_bad_objects(tmp_path: Path) -> None:
    """The served objects carry unknown fields, old line shapes, a 1,000-line invoice (paged through
    /v1/invoices/{id}/lines), zero and negative amounts and far timestamps; sync and recompute go through."""
    sim = Simulation(customers=10, months=4, seed=3, start=START)
    w = World(sim.account_id, int(sim.clock), sim.objects, sim.discounts, sim.events)  # mutate what is served
    for name in ("unknown_fields", "old_line_shape", "huge_invoice", "zero_negative_amounts", "far_timestamps",
                 "old_event_shape", "unknown_object_types"):
        MUTATIONS[name](w, random.Random(7))
    sim.events.sort(key=lambda e: e["created"])  # the sandbox serves events in creation order
    huge = next(i for i in sim.objects["invoices"] if i.startswith("in_huge"))
    db = tmp_path / "sync.duckdb"
    with start_in_thread(sim, api_key=KEY) as sb:
        result = run_sync(Settings(api_key=Secret(KEY), api_base=sb.url, db=db, rate_limit=2000.0), progress=False)
        stats = sb.stats()
    assert result.status == "succeeded"
    assert stats["by_path"]["/v1/invoices/{id}/lines"]["200"] >= 10  # the big invoice was paged
    with open_store(db) as con:
        assert con.execute("SELECT count(*) FROM invoice_lines WHERE invoice_id = ?", [huge]).fetchone() == (1000,)
        recompute(con, Settings())
        found = set(con.execute("SELECT kind, object_type, object_id FROM data_quality").fetchall())
        assert w.expect and not (w.expect - found), sorted(w.expect - found)[:5]
        assert_bridge_adds_up(con, "served bad objects", periods=["month"], segments=[None, "currency"])
