"""The full sync's fast path for listed objects (their JSON bytes as they came, see
:mod:`stripe_churn.stripe_api.listed`) puts into a batch exactly what the dict path does, or hands the object
back to the dict path."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from stripe_churn.sandbox.listing import served_objects
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.store.schema import RAW_TABLES
from stripe_churn.stripe_api.listed import decode_object
from stripe_churn.sync import Batch, _Sync

LISTED = ("customers", "products", "prices", "coupons", "subscriptions", "invoices", "credit_notes", "events")


def contents(batch: Batch) -> tuple[dict[str, list[tuple[str, bool, int, Any]]], dict[Any, Any]]:
    rows = {t: sorted(zip(s.ids, s.flags, s.versions, (orjson.loads(b) for b in s.blobs), strict=True),
                      key=lambda r: r[0]) for t, s in batch.rows.items() if len(s)}
    return rows, {k: v for k, v in batch.children.items() if v}


def both_ways(table: str, obj: dict[str, Any], version: int = 7) -> tuple[Any, Any, bool]:
    """(dict path's batch contents, fast path's, whether the fast path took the object)."""
    slow, fast = Batch(), Batch()
    engine = _Sync.__new__(_Sync)  # the two paths read nothing of the engine but its page fetcher
    asyncio.run(engine._add_object(slow, table, orjson.loads(orjson.dumps(obj)), version))
    raw = orjson.dumps(obj)
    head = decode_object(table, raw)
    took = head is not None and _Sync._add_listed(fast, table, raw, head, version)
    return contents(slow), contents(fast), took


def test_every_object_of_a_simulation_goes_the_fast_path_with_the_same_rows() -> None:
    sim = Simulation(customers=40, months=14, seed=21)
    served = served_objects(sim, RAW_TABLES)
    assert served["subscriptions"] and served["invoices"] and any(
        s.get("discounts") for s in served["subscriptions"].values())
    for table in LISTED:
        for obj in served[table].values():
            cut = any((obj.get(k) or {}).get("has_more") for k in ("items", "lines"))
            if cut:  # the sync fetches the whole list first (checked in tests/test_sync.py)
                continue
            slow, fast, took = both_ways(table, obj)
            assert took, (table, obj["id"])
            assert fast == slow, (table, obj["id"])


SUB: dict[str, Any] = {"id": "sub_1", "object": "subscription", "created": 100, "customer": "cus_1",
       "items": {"object": "list", "has_more": False, "data": [
           {"id": "si_1", "object": "subscription_item", "subscription": "sub_1",
            "discounts": [{"id": "di_2", "object": "discount", "coupon": {"id": "c"}}, "di_3"]}]},
       "discounts": ["di_1", {"id": "di_4", "object": "discount"}]}


@pytest.mark.parametrize(("table", "obj"), [
    ("subscriptions", SUB),
    ("subscriptions", {**SUB, "items": None, "discounts": None}),
    ("subscriptions", {**SUB, "deleted": True}),
    ("customers", {"id": "cus_1", "object": "customer", "discount": None}),
    ("customers", {"id": "cus_1", "object": "customer", "discount": {"id": "di_9", "object": "discount"}}),
    ("customers", {"id": "cus_1", "object": "customer"}),  # no discount key: nothing said of its discounts
    ("invoices", {"id": "in_1", "object": "invoice", "discounts": [{"id": "di_5"}, "di_6"],
                  "lines": {"data": [{"id": "il_1", "invoice": "in_1"}], "has_more": False}}),
    ("invoices", {"id": "in_2", "object": "invoice", "deleted": True}),
    # (the words of a cut-short list inside a string are no cut-short list)
    ("credit_notes", {"id": "cn_1", "object": "credit_note", "metadata": {"note": '"has_more":true'},
                      "lines": {"object": "list", "data": [{"id": "cnli_1"}], "has_more": False}}),
], ids=["sub", "sub-null-lists", "sub-deleted", "cus-null-discount", "cus-discount", "cus-no-discount-key",
        "invoice", "invoice-deleted", "credit-note"])
def test_shapes_the_fast_path_takes(table: str, obj: dict[str, Any]) -> None:
    slow, fast, took = both_ways(table, obj)
    assert took and fast == slow


@pytest.mark.parametrize(("table", "obj"), [
    # an item or line without its parent's id: the dict path fills it in
    ("subscriptions", {**SUB, "items": {"data": [{"id": "si_1"}], "has_more": False}}),
    ("invoices", {"id": "in_1", "lines": {"data": [{"id": "il_1"}], "has_more": False}}),
    # a cut-short list: the dict path fetches the rest
    ("subscriptions", {**SUB, "items": {**SUB["items"], "has_more": True}}),
    ("credit_notes", {"id": "cn_1", "object": "credit_note",
                      "lines": {"object": "list", "data": [{"id": "cnli_1"}], "has_more": True}}),
    # not the shape expected
    ("subscriptions", {**SUB, "items": ["si_1"]}),
    ("subscriptions", {"id": "sub_2", "deleted": True, "items": {"data": "odd"}}),
    ("customers", {"object": "customer"}),
], ids=["item-without-parent", "line-without-parent", "cut-short", "credit-note-cut-short", "items-not-a-list-object",
         "deleted-odd-items", "no-id"])
def test_other_shapes_go_back_to_the_dict_path_with_nothing_added(table: str, obj: dict[str, Any]) -> None:
    raw = orjson.dumps(obj)
    head = decode_object(table, raw)
    batch = Batch()
    assert head is None or not _Sync._add_listed(batch, table, raw, head, 7)
    assert contents(batch) == ({}, {})
