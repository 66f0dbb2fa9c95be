#!/usr/bin/env python
"""Sandbox throughput: list pages of 100 subscriptions/invoices per second, against two baselines.

The server runs on a background thread of this process (a 2,000-customer × 36-month simulation by default);
the load comes from a separate process with several concurrent keep-alive connections speaking raw HTTP/1.1,
walking the lists page by page with ``starting_after`` cursors. Baselines measured in the same run:
  * static: the same HTTP layer answering every request with one fixed page of the same size, so the ratio
    shows what the catalog costs on top of the protocol;
  * sdk: stripe-python's ``auto_paging_iter`` over the same sandbox, i.e. how fast a real client can consume
    (the server must be well above it so it never is the bottleneck of a sync benchmark).

    python scripts/bench_sandbox.py [--customers 2000 --months 36 --seconds 10 --connections 8]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import threading
import time
from queue import Empty
from typing import Any

import httpx
import orjson

KEY = "sk_test_bench"


def _cursors(sim: Any, resource: str, keep: Any) -> list[tuple[str, int]]:
    """(query, objects on that page) for every page of ``resource`` at limit 100, newest first."""
    objs = sim.objects[resource]
    seq = {oid: n for n, oid in enumerate(objs)}
    live = sorted((o for o in objs.values() if not o.get("deleted") and keep(o)),
                  key=lambda o: (o["created"], seq[o["id"]]), reverse=True)
    base = f"/v1/{resource}?limit=100" + ("&status=all" if resource == "subscriptions" else "")
    pages = [(base, min(100, len(live)))]
    for start in range(100, len(live), 100):
        pages.append((f"{base}&starting_after={live[start - 1]['id']}", min(100, len(live) - start)))
    return pages


async def _client(port: int, pages: list[tuple[str, int]], offset: int, stop_at: float,
                  totals: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while time.perf_counter() < stop_at:
            query, n_objects = pages[i % len(pages)]
            i += 1
            writer.write(f"GET {query} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"bench request failed: {head[:60]!r}")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            if totals[0] < 4:  # check a few bodies fully: the page holds what the cursor list promised
                assert len(orjson.loads(body)["data"]) == n_objects
            totals[0] += 1
            totals[1] += n_objects
            totals[2] += length
    finally:
        writer.close()


def _load(port: int, pages: list[tuple[str, int]], connections: int, seconds: float, out: Any) -> None:
    """Child process: ``connections`` concurrent keep-alive clients for ``seconds``; reports totals."""

    async def main() -> list[int]:
        totals = [0, 0, 0]
        stop_at = time.perf_counter() + seconds
        step = max(1, len(pages) // connections)
        await asyncio.gather(*(_client(port, pages, k * step, stop_at, totals) for k in range(connections)))
        return totals

    started = time.perf_counter()
    totals = asyncio.run(main())
    out.put((*totals, time.perf_counter() - started))


def hammer(port: int, pages: list[tuple[str, int]], connections: int, seconds: float) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_load, args=(port, pages, connections, seconds, queue))
    proc.start()
    deadline = time.monotonic() + seconds + 120
    while True:
        try:
            requests, objects, nbytes, elapsed = queue.get(timeout=1.0)
            break
        except Empty:
            if not proc.is_alive() or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"load process failed (exit code {proc.exitcode})") from None
    proc.join(timeout=30)
    return {"requests_per_s": requests / elapsed, "objects_per_s": objects / elapsed,
            "mb_per_s": nbytes / elapsed / 1e6, "requests": requests}


def static_baseline(body: bytes, pages: list[tuple[str, int]], connections: int,
                    seconds: float) -> dict[str, float]:
    """The same HTTP layer answering every request with one fixed body."""
    from stripe_churn.sandbox.wire import HttpServer, Request, Response

    def handler(_req: Request) -> Response:
        return Response(200, body, headers=[("Request-Id", "req_static")])

    loop = asyncio.new_event_loop()
    server = HttpServer(handler, 0)
    port = loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        return hammer(port, [(q, pages[0][1]) for q, _ in pages], connections, seconds)
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def sdk_baseline(url: str, seconds: float) -> dict[str, float]:
    """stripe-python's auto_paging_iter over invoices for ``seconds``: what one real client consumes."""
    import stripe

    client = stripe.StripeClient(KEY, base_addresses={"api": url})
    n = 0
    started = time.perf_counter()
    for _inv in client.v1.invoices.list({"limit": 100}).auto_paging_iter():
        n += 1
        if n % 100 == 0 and time.perf_counter() - started > seconds:
            break
    elapsed = time.perf_counter() - started
    return {"objects_per_s": n / elapsed, "requests_per_s": n / 100 / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--months", type=int, default=36)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()

    from stripe_churn.sandbox import server
    from stripe_churn.sandbox import sim as simulation

    started = time.perf_counter()
    sim = simulation.Simulation(customers=args.customers, months=args.months, seed=args.seed)
    build_s = time.perf_counter() - started
    # as `stripe-churn sandbox` does: the built history stays out of the cycle collector (its full passes over
    # millions of long-lived objects would stall the server thread for seconds)
    gc.freeze()
    pages = _cursors(sim, "subscriptions", lambda o: True) + _cursors(sim, "invoices", lambda o: True)
    n_objects = sum(n for _, n in pages)
    print(f"simulation {args.customers} customers x {args.months} months built in {build_s:.1f} s: "
          f"{len(sim.objects['subscriptions'])} subscriptions, {len(sim.objects['invoices'])} invoices, "
          f"{len(pages)} pages of <=100")

    with server.start_in_thread(sim, api_key=KEY) as sandbox:
        port = int(sandbox.url.rsplit(":", 1)[1])
        started = time.perf_counter()
        with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http:
            for query, _ in pages:  # the first touch serialises each object once and caches its bytes
                http.get(sandbox.url + query).raise_for_status()
            sample = http.get(sandbox.url + pages[-2][0]).content  # a full page of 100 invoices
        print(f"warm-up walk of every page: {time.perf_counter() - started:.1f} s")
        sandbox_run = hammer(port, pages, args.connections, args.seconds)
        sdk = sdk_baseline(sandbox.url, min(args.seconds, 5.0))
        stats = sandbox.stats()
    static = static_baseline(sample, pages, args.connections, min(args.seconds, 5.0))

    print(f"pages walked: {n_objects} objects in {len(pages)} pages (subscriptions status=all, invoices)")
    print(f"sandbox : {sandbox_run['requests_per_s']:8.0f} requests/s {sandbox_run['objects_per_s']:10.0f} "
          f"objects/s {sandbox_run['mb_per_s']:7.1f} MB/s ({args.connections} keep-alive connections, "
          f"{args.seconds:.0f} s)")
    print(f"static  : {static['requests_per_s']:8.0f} requests/s {static['objects_per_s']:10.0f} objects/s "
          f"{static['mb_per_s']:7.1f} MB/s (same HTTP layer, one fixed {len(sample) // 1024} KB page)")
    print(f"sdk     : {sdk['requests_per_s']:8.1f} requests/s {sdk['objects_per_s']:10.0f} objects/s "
          "(stripe-python auto_paging_iter over invoices, one client)")
    print(f"ratio sandbox/static = {sandbox_run['requests_per_s'] / static['requests_per_s']:.2f}; "
          f"sandbox/sdk objects = {sandbox_run['objects_per_s'] / sdk['objects_per_s']:.0f}x")
    errors = {p: c for p, c in stats["by_path"].items() if set(c) - {"200"}}
    print(f"server-side errors: {errors or 'none'}")


if __name__ == "__main__":
    main()
