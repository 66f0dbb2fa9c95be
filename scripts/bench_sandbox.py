#!/usr/bin/env python
"""Sandbox throughput: list pages of 100 subscriptions/invoices per second, against two baselines.

The server runs on a background thread of this process (a 2,000-customer x 36-month simulation by default);
the load comes from a separate process: several concurrent keep-alive connections speaking raw HTTP/1.1 over
non-blocking sockets (one thread, a selector, ``recv_into`` one reused 1 MB buffer, so the client costs as
little CPU as it can on the cores it shares with the server). Each connection walks the lists page by page
with ``starting_after`` cursors, one request at a time, as a syncer does. What is measured:

  * start: the server serialises every object once and lays out each whole list in list order before it
    serves (as a server holds its objects ready to send); that time is printed;
  * first walk: every page of the lists as the sync asks for them (``expand[]=data.discounts``) exactly
    once, on the started server: the expanded lists are laid out as they are first asked for;
  * headline: plain list pages walked again and again for ``--seconds`` with cursors 50 objects off the first
    walk's. The server keeps no page cache: each page is built on request (cursor found by bisection in the
    list's view, the page sent as a slice of the list's stored bytes, with no joined copy);
  * sync lists: the first walk's expanded pages again, for half of ``--seconds``;
  * static: the same HTTP layer answering every request with one fixed page of the same size, so the ratio
    shows what the catalog costs on top of the protocol;
  * sdk: stripe-python's ``auto_paging_iter`` over the same sandbox, i.e. how fast a real client can consume
    (the server must be well above it so it never is the bottleneck of a sync benchmark).

CPU seconds per request of the server thread and of the client process are printed too: wall figures on a
shared machine are noisy, CPU per request much less so.

    python scripts/bench_sandbox.py [--customers 2000 --months 36 --seconds 10 --connections 8]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import selectors
import socket
import threading
import time
from queue import Empty
from typing import Any

import httpx
import orjson

KEY = "sk_test_bench"

Page = tuple[str, int, str]  # query, objects on the page, id of its first object


def _cursors(sim: Any, resource: str, keep: Any, shift: int = 0, expand: str = "") -> list[Page]:
    """Every page of ``resource`` at limit 100, newest first: (query, objects on it, its first id). With
    ``shift`` the pages after the first start ``shift`` objects later (other cursors than an unshifted walk);
    ``expand`` is added as ``expand[]=``."""
    objs = sim.objects[resource]
    seq = {oid: n for n, oid in enumerate(objs)}
    live = sorted((o for o in objs.values() if not o.get("deleted") and keep(o)),
                  key=lambda o: (o["created"], seq[o["id"]]), reverse=True)
    base = f"/v1/{resource}?limit=100" + ("&status=all" if resource == "subscriptions" else "")
    if expand:
        base += f"&expand[]={expand}"
    pages = [(base, min(100, len(live)), live[0]["id"] if live else "")]
    for start in range(100 if shift == 0 else shift, len(live), 100):
        pages.append((f"{base}&starting_after={live[start - 1]['id']}", min(100, len(live) - start),
                      live[start]["id"]))
    return pages


class _Conn:
    """One keep-alive connection of the load process and where it is in its current answer."""

    __slots__ = ("check", "head", "length", "next", "order", "remaining", "sock", "stop")

    def __init__(self, sock: socket.socket, order: list[int], stop: int) -> None:
        self.sock = sock
        self.order = order  # page indexes this connection asks for, in turn (cycled when stop < 0)
        self.next = 0
        self.stop = stop  # requests to make, or -1 to keep going until the time is up
        self.head = bytearray()
        self.remaining = -1  # body bytes still expected; -1 while reading the head
        self.length = 0
        self.check: bytearray | None = None


def _load(port: int, pages: list[Page], connections: int, seconds: float, once: bool, out: Any) -> None:
    """Child process: ``connections`` keep-alive clients; with ``once`` every page is asked for exactly once
    (split between the connections), else pages are walked round and round for ``seconds``. Reports totals."""
    requests_raw = [f"GET {q} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()
                    for q, _, _ in pages]
    sel = selectors.DefaultSelector()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    conns = []
    step = max(1, len(pages) // connections)
    for k in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if once:
            order = list(range(k, len(pages), connections))
            conn = _Conn(sock, order, len(order))
        else:
            order = [(k * step + i) % len(pages) for i in range(len(pages))]
            conn = _Conn(sock, order, -1)
        conns.append(conn)
    requests = objects = nbytes = checked = 0
    cpu0, started = time.process_time(), time.perf_counter()
    stop_at = started + seconds

    def ask(conn: _Conn) -> bool:
        if conn.stop >= 0 and conn.next >= conn.stop:
            return False
        if conn.stop < 0 and time.perf_counter() >= stop_at:
            return False
        conn.sock.sendall(requests_raw[conn.order[conn.next % len(conn.order)]])
        conn.next += 1
        return True

    live = 0
    for conn in conns:
        if ask(conn):
            conn.sock.setblocking(False)
            sel.register(conn.sock, selectors.EVENT_READ, conn)
            live += 1
    while live:
        for key, _ev in sel.select():
            conn = key.data
            n = conn.sock.recv_into(view)
            if n == 0:
                raise RuntimeError("the sandbox closed a keep-alive connection")
            if conn.remaining < 0:  # the head, read in place (no copy of the body bytes that came with it)
                if conn.head:  # a head split between reads (rare)
                    conn.head += view[:n]
                    data, size = conn.head, len(conn.head)
                else:
                    data, size = buf, n
                end = data.find(b"\r\n\r\n", 0, size)
                if end < 0:
                    if data is buf:
                        conn.head += view[:n]
                    continue
                head = bytes(data[:end])
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"bench request failed: {head[:60]!r}")
                conn.length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                # a few answers per connection parsed in full: the page holds what the cursor list promised
                conn.check = bytearray(data[end + 4:size]) if conn.next <= 2 else None
                conn.head = bytearray()
                conn.remaining = conn.length - (size - end - 4)
            else:
                conn.remaining -= n
                if conn.check is not None:
                    conn.check += view[:n]
            if conn.remaining > 0:
                continue
            if conn.remaining < 0:
                raise RuntimeError("more bytes than Content-Length: the sandbox sent an unasked answer")
            _q, n_objects, first_id = pages[conn.order[(conn.next - 1) % len(conn.order)]]
            if conn.check is not None:
                data = orjson.loads(conn.check)["data"]
                if len(data) != n_objects or (data and data[0]["id"] != first_id):
                    raise RuntimeError(f"page {_q} holds {len(data)} objects, expected {n_objects}")
                checked += 1
                conn.check = None
            requests += 1
            objects += n_objects
            nbytes += conn.length
            conn.remaining = -1
            if not ask(conn):
                sel.unregister(conn.sock)
                live -= 1
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    for conn in conns:
        conn.sock.close()
    out.put((requests, objects, nbytes, elapsed, cpu, checked))


def hammer(port: int, pages: list[Page], connections: int, seconds: float, *, once: bool = False,
           server_cpu: Any = None) -> dict[str, float]:
    """Run the load process against ``port``; ``server_cpu()`` (if given) reads the server thread's CPU time."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_load, args=(port, pages, connections, seconds, once, queue))
    cpu0 = server_cpu() if server_cpu else 0.0
    proc.start()
    deadline = time.monotonic() + seconds + 600
    while True:
        try:
            requests, objects, nbytes, elapsed, client_cpu, checked = queue.get(timeout=1.0)
            break
        except Empty:
            if not proc.is_alive() or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"load process failed (exit code {proc.exitcode})") from None
    proc.join(timeout=30)
    # the server's CPU includes accepting the connections, a few ms at most
    server = (server_cpu() - cpu0) if server_cpu else float("nan")
    return {"requests_per_s": requests / elapsed, "objects_per_s": objects / elapsed,
            "mb_per_s": nbytes / elapsed / 1e6, "requests": requests, "seconds": elapsed,
            "server_ms": server / requests * 1000, "client_ms": client_cpu / requests * 1000,
            "checked": checked}


def static_baseline(body: bytes, pages: list[Page], connections: int, seconds: float) -> dict[str, float]:
    """The same HTTP layer answering every request with one fixed body."""
    from stripe_churn.sandbox.wire import HttpServer, Request, Response

    def handler(_req: Request) -> Response:
        return Response(200, body, headers=[("Request-Id", "req_static")])

    loop = asyncio.new_event_loop()
    server = HttpServer(handler, 0)
    port = loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def server_cpu() -> float:
        return asyncio.run_coroutine_threadsafe(_thread_time(), loop).result(10)

    first = orjson.loads(body)["data"][0]["id"]
    try:
        return hammer(port, [(q, pages[-2][1], first) for q, _, _ in pages], connections, seconds,
                      server_cpu=server_cpu)
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _thread_time() -> float:
    return time.thread_time()


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


def _line(name: str, r: dict[str, float], what: str) -> str:
    return (f"{name:<9}: {r['requests_per_s']:7.0f} list requests/s {r['objects_per_s']:9.0f} objects/s "
            f"{r['mb_per_s']:6.1f} MB/s | CPU per request: server {r['server_ms']:.3f} ms, client "
            f"{r['client_ms']:.3f} ms | {r['requests']:.0f} requests in {r['seconds']:.1f} s; {what}")


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
    # (the built history is out of the cycle collector's reach, as each run of the simulation leaves it)
    pages = _cursors(sim, "subscriptions", lambda o: True) + _cursors(sim, "invoices", lambda o: True)
    n_objects = sum(n for _, n, _ in pages)
    print(f"simulation {args.customers} customers x {args.months} months built in {build_s:.1f} s: "
          f"{len(sim.objects['subscriptions'])} subscriptions, {len(sim.objects['invoices'])} invoices; "
          f"{n_objects} objects in {len(pages)} pages of <=100 (subscriptions status=all, invoices)")
    print(f"load: {args.connections} keep-alive connections from another process (raw HTTP/1.1, one request "
          f"at a time per connection, starting_after cursors), no latency; load average {os.getloadavg()[0]:.2f}")

    shifted = _cursors(sim, "subscriptions", lambda o: True, 50) + _cursors(sim, "invoices", lambda o: True, 50)
    synced = (_cursors(sim, "subscriptions", lambda o: True, expand="data.discounts")
              + _cursors(sim, "invoices", lambda o: True, expand="data.discounts"))
    started = time.perf_counter()
    with server.start_in_thread(sim, api_key=KEY) as sandbox:
        start_s = time.perf_counter() - started
        port = int(sandbox.url.rsplit(":", 1)[1])
        first = hammer(port, synced, args.connections, 0.0, once=True, server_cpu=sandbox.cpu_time)
        sandbox_run = hammer(port, shifted, args.connections, args.seconds, server_cpu=sandbox.cpu_time)
        again = hammer(port, synced, args.connections, args.seconds / 2, server_cpu=sandbox.cpu_time)
        with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http:
            sample = http.get(sandbox.url + pages[-2][0]).content  # a full page of 100 invoices
        sdk = sdk_baseline(sandbox.url, min(args.seconds, 5.0))
        stats = sandbox.stats()
    static = static_baseline(sample, pages, args.connections, min(args.seconds, 5.0))

    print(f"start    : {start_s:.1f} s to serialise every object and lay out each list before serving")
    print(_line("first", first, "first walk of every page as the sync asks for it (expand[]=data.discounts), "
                "each page once"))
    print(_line("SANDBOX", sandbox_run, f"headline: plain pages walked round and round for {args.seconds:.0f} s "
                "with cursors 50 objects off the first walk's, each page built on request"))
    print(_line("sync", again, "the first walk's expanded pages again"))
    print(_line("static", static, f"same HTTP layer, one fixed {len(sample) // 1024} KB page"))
    print(f"sdk      : {sdk['requests_per_s']:7.1f} list requests/s {sdk['objects_per_s']:9.0f} objects/s "
          "(stripe-python auto_paging_iter over invoices, one client)")
    print(f"ratio sandbox/static = {sandbox_run['requests_per_s'] / static['requests_per_s']:.2f}; "
          f"sandbox/sdk objects = {sandbox_run['objects_per_s'] / sdk['objects_per_s']:.0f}x; "
          f"pages checked in full: {first['checked'] + sandbox_run['checked'] + again['checked']:.0f}; "
          f"load average now {os.getloadavg()[0]:.2f}")
    errors = {p: c for p, c in stats["by_path"].items() if set(c) - {"200"}}
    print(f"server-side errors: {errors or 'none'}")


if __name__ == "__main__":
    main()
