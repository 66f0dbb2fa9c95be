"""The sync against Stripe's documented (and reported) behaviour, at its edges: the real sync, through the SDK's HTTP
client, against the sandbox server serving a small account built by hand (tests/metrics/builders.py), each case
built so that the right store can be worked out by hand."""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest

sys.path.insert(0, str(Path(__file__).parent / "metrics"))
from builders import DAY, World, ts

from stripe_churn.sandbox.server import start_in_thread
from stripe_churn.settings import Secret, Settings
from stripe_churn.sync import SyncResult, run_sync

KEY = "sk_test_sync_hunt"
T0 = ts(2026, 6, 1)


def _sync(w: World, clock: int, db: Path, *, full: bool = False) -> SyncResult:
    """One sync of ``w`` as Stripe serves it at ``clock``."""
    with start_in_thread(w.served(clock), api_key=KEY) as sb:
        return run_sync(Settings(api_key=Secret(KEY), api_base=sb.url, db=db, rate_limit=10_000), full=full,
                        progress=False)


def _rows(db: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def _one_sub(w: World, at: int) -> None:
    w.customer("cus_1", created=at)
    w.product("prod_1", unit_label="seat")
    w.price("price_1", "prod_1", 1_000)
    w.subscribe("sub_1", "cus_1", [("si_1", "price_1", 1)], at)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "hunt.duckdb"


def test_a_full_sync_of_an_account_without_retained_events_dates_its_listing_by_stripes_clock(db: Path) -> None:
    """No event within Stripe's 30 days when the full sync starts: the listing's version and the events cursor
    are the server's time (its ``Date``), not this machine's. Here this machine's clock is months ahead of the
    served account's: by its clock, the incremental sync after listed no event from before it (the new subscription
    was lost), and the listed subscription's copy outranked every later event of it (its change was lost too)."""
    _one_sub(w := World(), T0)
    assert _sync(w, T0 + 40 * DAY, db, full=True).status == "succeeded"  # the account's events have all expired
    w.customer("cus_2", created=T0 + 41 * DAY)
    w.subscribe("sub_2", "cus_2", [("si_2", "price_1", 1)], T0 + 41 * DAY)
    w.update("sub_1", T0 + 41 * DAY + 60, items=[("si_1", "price_1", 3)], prorate=False)
    r = _sync(w, T0 + 42 * DAY, db)
    assert (r.mode, r.status) == ("incremental", "succeeded")
    assert _rows(db, "SELECT id FROM subscriptions ORDER BY id") == [("sub_1",), ("sub_2",)]
    assert _rows(db, "SELECT id, quantity FROM subscription_items ORDER BY id") == [("si_1", 3), ("si_2", 1)]


def test_a_customer_deleted_between_two_syncs_keeps_the_state_its_deletion_event_carries(db: Path) -> None:
    """``customer.deleted`` carries the customer as it was before its deletion; retrieving it after (the refresh of
    the event page) gives only its stub. The stub flags the stored row deleted and keeps the last full copy, in the
    store (load._STUB) and within the page as well: the stub replaced the event's copy, so a customer created and
    deleted between two syncs was stored as ``{"id", "deleted"}`` alone (no created time, currency, country or
    metadata for its segments), and one changed just before its deletion kept its state from before the change."""
    _one_sub(w := World(), T0)
    assert _sync(w, T0 + DAY, db, full=True).status == "succeeded"
    c1 = w.objects["customers"]["cus_1"]
    before = copy.deepcopy(c1)
    c1["metadata"] = {"tier": "silver"}
    w.event("customer.updated", T0 + 2 * DAY, c1, before)
    w.event("customer.deleted", T0 + 2 * DAY + 60, c1)
    c2 = w.customer("cus_2", created=T0 + 2 * DAY, metadata={"tier": "gold"})
    w.event("customer.created", T0 + 2 * DAY, c2)
    w.event("customer.deleted", T0 + 2 * DAY + 60, c2)
    for cid in ("cus_1", "cus_2"):  # (Stripe answers a deleted customer's retrieve with its stub)
        w.objects["customers"][cid] = {"id": cid, "object": "customer", "deleted": True}
    assert _sync(w, T0 + 3 * DAY, db).status == "succeeded"
    got = {cid: (deleted, orjson.loads(raw)) for cid, deleted, raw in _rows(db, "SELECT id, deleted, raw FROM customers")}
    assert got == {"cus_1": (True, c1), "cus_2": (True, c2)}
