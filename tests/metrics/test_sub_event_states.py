"""The state before a subscription's first event is ``data.object`` with ``previous_attributes`` merged onto it
(JSON merge patch). Step 20 reads it field by field from one typed parse instead of merging whole states; these
events cover each merge rule (a key replaced, set to null, absent, a nested ``items`` object merged key by key, a
price given as a plain id) and the typed fields must equal what ``json_merge_patch`` gives."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import duckdb
from conftest import make_settings

from stripe_churn.metrics.runner import recompute
from stripe_churn.store.load import upsert_objects

T0 = 1_735_689_600  # 2025-01-01


def item(iid: str, price: Any, quantity: Any) -> dict[str, Any]:
    return {"id": iid, "object": "subscription_item", "created": T0, "quantity": quantity,
            "price": {"id": price, "object": "price", "product": "prod_1"} if isinstance(price, str) else price}


def state(sid: str, status: str = "active", items: list[dict[str, Any]] | None = None,
          pause: Any = None) -> dict[str, Any]:
    return {"id": sid, "object": "subscription", "customer": "cus_1", "currency": "usd", "status": status,
            "start_date": T0, "created": T0, "pause_collection": pause, "discounts": [],
            "items": {"object": "list", "data": items if items is not None else [item(f"si_{sid}", "price_1", 2)],
                      "has_more": False}}


# subscription -> (state after, previous_attributes or None for a created event)
CASES: dict[str, tuple[dict[str, Any], Any]] = {
    "sub_status": (state("sub_status"), {"status": "trialing"}),
    "sub_status_null": (state("sub_status_null"), {"status": None}),
    "sub_pause_set": (state("sub_pause_set", pause={"behavior": "void", "resumes_at": None}),
                      {"pause_collection": None}),
    "sub_pause_lifted": (state("sub_pause_lifted"), {"pause_collection": {"behavior": "void"}}),
    "sub_items_null": (state("sub_items_null"), {"items": None}),
    "sub_items_has_more": (state("sub_items_has_more"), {"items": {"has_more": True}}),
    "sub_items_data": (state("sub_items_data"),
                       {"items": {"data": [item("si_old", "price_0", 5), item("si_two", "price_0", "7")]}}),
    "sub_items_data_null": (state("sub_items_data_null"), {"items": {"data": None, "has_more": None}}),
    # a price given as a plain id (an old API shape): read by the exact parse
    "sub_plain_price": (state("sub_plain_price"), {"items": {"data": [
        {"id": "si_plain", "object": "subscription_item", "price": "price_plain", "quantity": 4}]}}),
    "sub_items_scalar": (state("sub_items_scalar"), {"items": 3}),
    "sub_empty_prev": (state("sub_empty_prev", status="past_due"), {}),
    "sub_created": (state("sub_created"), None),
}


def events() -> list[dict[str, Any]]:
    out = []
    for n, (after, prev) in enumerate(case for _, case in sorted(CASES.items())):
        data: dict[str, Any] = {"object": copy.deepcopy(after)}
        if prev is not None:
            data["previous_attributes"] = prev
        out.append({"id": f"evt_{n:03d}", "object": "event", "created": T0 + 86400 + n,
                    "type": "customer.subscription.updated" if prev is not None else "customer.subscription.created",
                    "data": data})
    return out


# the reference: merge the whole states, then read the fields the way step 20 reads them (no items list and an
# empty one are the same: no observation rows)
REFERENCE = """
WITH e AS (
    SELECT json_extract_string(raw, '$.data.object.id') AS subscription_id,
           json_merge_patch(json_extract(raw, '$.data.object'), json_extract(raw, '$.data.previous_attributes'))
               AS before
    FROM events WHERE json_type(raw, '$.data.previous_attributes') = 'OBJECT'
)
SELECT subscription_id, json_extract_string(before, '$.status'),
       json_type(json_extract(before, '$.pause_collection')) = 'OBJECT',
       TRY_CAST(json_extract_string(before, '$.items.has_more') AS BOOLEAN),
       list_sort(list_transform(coalesce(CAST(json_extract(before, '$.items.data[*]') AS JSON[]), []),
                 lambda x: concat_ws('|', json_extract_string(x, '$.id'),
                                     coalesce(json_extract_string(x, '$.price.id'), json_extract_string(x, '$.price')),
                                     json_extract_string(x, '$.quantity'))))
FROM e ORDER BY 1
"""

DERIVED = """
SELECT subscription_id, before_status, before_pause_collection, before_has_more,
       list_sort(list_transform(coalesce(before_items, []), lambda x: concat_ws('|', x.id, x.price_id, x.quantity_text)))
FROM derived_sub_events WHERE has_before ORDER BY 1
"""


def test_state_before_first_event_follows_merge_patch(store: duckdb.DuckDBPyConnection) -> None:
    upsert_objects(store, "events", "acct_1", events(), datetime.fromtimestamp(T0 + 2 * 86400, UTC))
    recompute(store, make_settings())
    reference = store.execute(REFERENCE).fetchall()
    assert len(reference) == len(CASES) - 1  # every updated event has a state before
    assert store.execute(DERIVED).fetchall() == reference
    # a created event has no state before; each event's state after is its data.object's
    created = store.execute("SELECT has_before, after_status, before_state FROM derived_sub_events "
                            "WHERE subscription_id = 'sub_created'").fetchall()
    assert created == [(False, "active", None)]
    plain = store.execute("SELECT before_items[1].price_id FROM derived_sub_events "
                          "WHERE subscription_id = 'sub_plain_price'").fetchall()
    assert plain == [("price_plain",)]
    # data quality reads status and items from the small JSON states at a subscription's first event
    dq = store.execute("SELECT json_extract_string(coalesce(before_state, after_state), '$.status') "
                       "FROM derived_sub_events WHERE subscription_id IN ('sub_status', 'sub_status_null') "
                       "ORDER BY subscription_id").fetchall()
    assert dq == [("trialing",), (None,)]
