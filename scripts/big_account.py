"""A large synthetic Stripe account for the sync's memory benchmark (bench_sync.py scenario c).

The sandbox keeps its whole simulated history in memory (about 25 KB per object), so a 1M-object sandbox does
not fit on a small machine. This server instead generates object ``i`` of each list on demand from the JSON
of a small sandbox simulation (same shapes and sizes: invoices with their lines, subscriptions with their
items), with unique ids and ``created`` times, and serves them with Stripe's list semantics as far as a full
sync uses them: newest first, ``limit``, ``starting_after``, ``created[gte|lte]``, ``has_more``, embedded
lists complete (at most 10 entries in the templates). It holds only the templates.

    python scripts/big_account.py --objects 1000000   # prints its URL, serves until killed
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import sys
from typing import Any

import orjson

from stripe_churn.sandbox.listing import EMBED_LIMIT, item_shape, shape
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.sandbox.wire import HttpServer, Request, Response, parse_query

KEY = "sk_test_sandbox"
T0 = 1_600_000_000  # the account's creation
SPAN = 5 * 365 * 86400  # objects' created times spread over five years


def templates() -> dict[str, list[dict[str, Any]]]:
    """Objects of a small simulation as the API shapes them (items and lines within the embed limit)."""
    sim = Simulation(customers=300, months=12, seed=11)
    out: dict[str, list[dict[str, Any]]] = {}
    for resource in ("customers", "products", "prices", "coupons", "subscriptions", "invoices", "credit_notes"):
        objs = [shape(o) for o in sim.objects[resource].values() if not o.get("deleted")]
        if resource == "subscriptions":
            objs = [o for o in objs if not o["items"]["has_more"]]
            for o in objs:
                o["items"]["data"] = [item_shape(i) for i in o["items"]["data"]]
                o["discounts"] = [sim.discounts[d] if isinstance(d, str) else d for d in o.get("discounts") or []]
        if resource == "invoices":
            objs = [o for o in objs if len(o["lines"]["data"]) <= EMBED_LIMIT and not o["lines"]["has_more"]]
        out[resource] = objs
    out["events"] = [shape(e) for e in sim.events[-2000:]]
    return out


class BigAccount:
    """Object ``i`` of a resource (0 = oldest) is a template with id ``<prefix>_big<i>`` and created ``t(i)``."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.tpl = templates()
        self.counts = counts

    def created(self, resource: str, i: int) -> int:
        return T0 + (i * SPAN) // max(1, self.counts[resource])

    def index_at(self, resource: str, t: int) -> int:
        """The first index whose created is >= t."""
        n = self.counts[resource]
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if self.created(resource, mid) < t:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def obj(self, resource: str, i: int) -> dict[str, Any]:
        tpls = self.tpl[resource]
        o = copy.deepcopy(tpls[i % len(tpls)])
        oid = f"{o['id'].split('_')[0]}_big{i:09d}"
        o["id"], o["created"] = oid, self.created(resource, i)
        if resource == "subscriptions":
            for k, it in enumerate(o["items"]["data"]):
                it["id"], it["subscription"] = f"si_big{i:09d}{k:02d}", oid
            for k, d in enumerate(o.get("discounts") or []):
                d["id"], d["subscription"] = f"di_big{i:09d}{k:02d}", oid
        elif resource == "invoices":
            for k, ln in enumerate(o["lines"]["data"]):
                ln["id"], ln["invoice"] = f"il_big{i:09d}{k:02d}", oid
        elif resource == "customers" and isinstance(o.get("discount"), dict):
            o["discount"] = None
        return o

    def handle(self, req: Request) -> Response:
        parts = [p for p in req.path.split("/") if p]
        if req.headers.get("authorization") != f"Bearer {KEY}":
            return Response(401, b'{"error":{"type":"invalid_request_error","message":"Invalid API Key"}}')
        if parts == ["v1", "account"]:
            return Response(200, orjson.dumps({"id": "acct_big", "object": "account", "created": T0}))
        if len(parts) == 2 and parts[0] == "v1" and parts[1] in self.counts:
            return Response(200, self.page(parts[1], parse_query(req.query)))
        return Response(404, b'{"error":{"type":"invalid_request_error","message":"Unrecognized request URL"}}')

    def page(self, resource: str, q: dict[str, Any]) -> bytes:
        n = self.counts[resource]
        limit = int(q.get("limit", 10))
        raw = q.get("created")
        created: dict[str, Any] = raw if isinstance(raw, dict) else {}
        lo = self.index_at(resource, int(created["gte"])) if "gte" in created else 0
        hi = self.index_at(resource, int(created["lte"]) + 1) if "lte" in created else n  # exclusive
        after = q.get("starting_after")
        if isinstance(after, str):
            hi = min(hi, int(after.rsplit("big", 1)[1]))
        first = max(lo, hi - limit)
        data = [self.obj(resource, i) for i in range(hi - 1, first - 1, -1)]
        return orjson.dumps({"object": "list", "data": data, "has_more": first > lo, "url": f"/v1/{resource}"})


def split(total: int) -> dict[str, int]:
    """Counts per list so that the objects stored (with items, lines, discounts) come to about ``total``:
    per invoice about 3.2 objects with its lines, per subscription about 3.2 with items and discounts."""
    unit = total / 8.6
    return {"customers": int(unit * 0.3), "products": 40, "prices": 200, "coupons": 6,
            "subscriptions": int(unit * 0.4), "invoices": int(unit * 2.3), "credit_notes": int(unit * 0.05),
            "events": int(unit * 0.5)}


async def main(objects: int) -> None:
    account = BigAccount(split(objects))
    server = HttpServer(account.handle, 0)
    port = await server.start()
    sys.stdout.write(f"http://127.0.0.1:{port}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=1_000_000)
    asyncio.run(main(ap.parse_args().objects))
