"""Benchmark of the sync against the sandbox served from a separate process (issue 3 item 5).

Scenarios, one line each:
  (a) full sync of >= 100k objects, no latency and no rate limit: objects/s, requests/s, peak RSS; then (a2) the
      same account listed again into its store (`sync --full`, as the fallback re-list): objects/s against (a)'s,
      peak RSS;
  (b) the sandbox with 300 ms latency and a 100 requests/s limit: requests/s sustained while the sync runs
      (ramp-up and the last seconds left out; stopped after --window seconds at most); then (b2) the same with
      Stripe's per-endpoint limit as well (25 requests/s to any one endpoint), which the sync keeps to by default
      (setting endpoint_rate_limit): there the requests/s sustained are at most 25 per endpoint with work left, so
      the tail of a full sync, mostly invoices, runs at about 25-50/s; the figure that matters is 0 answered 429;
  (c) with --big: peak RSS of a full sync of ~1M objects, from a synthetic account served by
      scripts/big_account.py (the sandbox keeps ~25 KB per object in memory: 1M would not fit here);
  and a naive baseline on a bounded subset (SDK ``auto_paging_iter`` + one SQLModel insert per object).
Targets (the sync issue's): >= 10,000 objects/s in (a), >= 95 requests/s in (b), <= 500 MB in (c). The (b) target
assumed one limit; the sync now keeps each endpoint to Stripe's 25/s as well, and (b)'s account needs 650 requests
to one endpoint (`/v1/invoices/{id}/lines`), so (b) and (b2) show about 40 requests/s, with 0 answered 429.

    python scripts/bench_sync.py [--customers 2500 --months 36] [--window 60] [--big [--big-objects N]]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

KEY = "sk_test_sandbox"

CHILD = textwrap.dedent("""
    import json, resource, sys, threading, time
    from pathlib import Path
    from stripe_churn.settings import Secret, Settings
    from stripe_churn.sync import run_sync
    url, db, rate, window = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    full = len(sys.argv) > 5 and sys.argv[5] == "full"
    stop = threading.Event()
    if window > 0:
        timer = threading.Timer(window, stop.set)
        timer.daemon = True  # the process exits when the sync is over, not when the window is
        timer.start()
    t0 = time.perf_counter()
    r = run_sync(Settings(api_key=Secret(%r), api_base=url, db=Path(db), rate_limit=rate), full=full, progress=False,
                 stop=stop)
    dt = time.perf_counter() - t0
    print(json.dumps({"status": r.status, "objects": sum(r.counts.values()), "requests": r.requests, "seconds": dt,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""") % KEY

NAIVE = textwrap.dedent("""
    import json, sys, time
    from datetime import UTC, datetime
    import stripe
    from sqlmodel import Session, create_engine
    from stripe_churn.store.db import open_store
    from stripe_churn.store.schema import Invoice, Subscription
    url, db, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    open_store(db).close()
    engine = create_engine(f"duckdb:///{db}", json_serializer=lambda o: json.dumps(o, default=str))
    client = stripe.StripeClient(%r, base_addresses={"api": url})
    t0 = time.perf_counter()
    n = 0
    with Session(engine) as session:
        for model, pages in ((Subscription, client.v1.subscriptions.list({"status": "all", "limit": 100})),
                             (Invoice, client.v1.invoices.list({"limit": 100}))):
            taken = 0
            for obj in pages.auto_paging_iter():
                d = obj.to_dict()
                now = datetime.now(UTC)
                session.add(model(account_id="acct", id=d["id"], raw=d, created=datetime.fromtimestamp(d["created"], UTC),
                                  first_seen_at=now, last_seen_at=now))
                session.commit()
                n += 1
                taken += 1
                if taken >= limit // 2:
                    break
    dt = time.perf_counter() - t0
    print(json.dumps({"objects": n, "seconds": dt}))
""") % KEY


def start_sandbox(customers: int, months: int, *, latency_ms: float = 0, rate_limit: float = 0,
                  endpoint_rate_limit: float = 0) -> tuple[Any, str]:
    """``stripe-churn sandbox`` in its own process; returns it and the URL from its first line."""
    cmd = [sys.executable, "-m", "stripe_churn", "sandbox", "--port", "0", "--customers", str(customers),
           "--months", str(months), "--latency-ms", str(latency_ms), "--rate-limit", str(rate_limit),
           "--endpoint-rate-limit", str(endpoint_rate_limit), "--api-key", KEY]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise SystemExit(f"the sandbox did not start (first line {url!r})")
    return proc, url


def stats(url: str) -> dict[str, Any]:
    req = urllib.request.Request(f"{url}/_sandbox/stats", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def child(script: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.strip().splitlines() if "Error" in ln or "error" in ln]
        raise SystemExit(f"benchmark child failed: {(lines or ['?'])[-1][:300]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=2500)
    ap.add_argument("--months", type=int, default=36)
    ap.add_argument("--window", type=float, default=60.0, help="seconds of scenario (b) at most")
    ap.add_argument("--naive", type=int, default=2000, help="objects in the naive baseline")
    ap.add_argument("--big", action="store_true", help="also (c): a ~1M-object full sync (slow)")
    ap.add_argument("--big-objects", type=int, default=1_000_000, help="objects of the (c) account")
    ap.add_argument("--only", choices=("a", "b", "c"), help="run this scenario alone (a includes the naive baseline)")
    args = ap.parse_args()
    if args.only == "c":
        args.big = True
    tmp = Path(tempfile.mkdtemp(prefix="bench-sync-"))

    if args.only in (None, "a"):
        scenario_a(args, tmp)
    if args.only in (None, "b"):
        scenario_b(args, tmp)
        scenario_b(args, tmp, endpoint_limit=25)
    if args.big:
        scenario_c(args, tmp)
    for f in tmp.glob("*"):
        f.unlink()
    tmp.rmdir()


def scenario_a(args: argparse.Namespace, tmp: Path) -> None:
    proc, url = start_sandbox(args.customers, args.months)
    try:
        a = child(CHILD, url, str(tmp / "a.duckdb"), "100000", "0")
        ops = a["objects"] / a["seconds"]
        print(f"(a) full sync {args.customers}x{args.months}: {a['objects']:,} objects in {a['seconds']:.1f} s = "
              f"{ops:,.0f} objects/s, {a['requests'] / a['seconds']:,.0f} requests/s, peak RSS "
              f"{a['rss_mb']:.0f} MB [{a['status']}]", flush=True)
        # the same store listed again (`sync --full`, as the fallback after a gap in the events): merged over it
        again = child(CHILD, url, str(tmp / "a.duckdb"), "100000", "0", "full")
        aops = again["objects"] / again["seconds"]
        print(f"(a2) the same account listed again into its store (sync --full): {again['objects']:,} objects in "
              f"{again['seconds']:.1f} s = {aops:,.0f} objects/s ({aops / ops:.2f} times the first sync's rate), "
              f"peak RSS {again['rss_mb']:.0f} MB [{again['status']}]", flush=True)
        naive = child(NAIVE, url, str(tmp / "naive.duckdb"), str(args.naive))
    finally:
        proc.terminate()
        proc.wait()
    nops = naive["objects"] / naive["seconds"]
    print(f"(naive) auto_paging_iter + one SQLModel insert per object: {naive['objects']:,} objects in "
          f"{naive['seconds']:.1f} s = {nops:,.0f} objects/s; the sync is {ops / nops:,.0f}x faster")


def scenario_b(args: argparse.Namespace, tmp: Path, *, endpoint_limit: float = 0) -> None:
    """(b), or (b2) with ``endpoint_limit``: the sandbox also refuses more than that many requests a second to one
    endpoint, as Stripe does (25/s unless noted)."""
    proc, url = start_sandbox(args.customers, args.months, latency_ms=300, rate_limit=100,
                              endpoint_rate_limit=endpoint_limit)
    try:
        runner = subprocess.Popen([sys.executable, "-c", CHILD, url, str(tmp / f"b{endpoint_limit:g}.duckdb"), "100",
                                   str(args.window)], stdout=subprocess.PIPE, text=True)
        samples: list[tuple[float, int]] = []  # (time, requests served) every half second while the sync runs
        while runner.poll() is None:
            st = stats(url)  # /v1 requests only (these polls are counted under /_sandbox)
            samples.append((time.monotonic(), sum(sum(c.values()) for p, c in st["by_path"].items()
                                                  if p.startswith("/v1"))))
            time.sleep(0.5)
        out, _ = runner.communicate(timeout=120)
        b = json.loads(out.strip().splitlines()[-1])
        st = stats(url)
    finally:
        proc.terminate()
        proc.wait()
    # sustained: from 3 s after the first request to 3 s before the last (ramp-up and the last slices left out)
    busy = [(t, n) for t, n in samples if n > samples[0][1]]
    t_first = busy[0][0]
    t_last = next(t for t, n in busy if n == busy[-1][1])  # the last request, not the final commits
    window = [(t, n) for t, n in busy if t_first + 3 <= t <= t_last - 3]
    (w0, n0), (w1, n1) = window[0], window[-1]
    name = f"(b2) latency 300 ms, limit 100/s and {endpoint_limit:g}/s per endpoint" if endpoint_limit else \
        "(b) latency 300 ms, limit 100/s"
    busiest = max(((p, sum(c.values())) for p, c in st["by_path"].items() if p.startswith("/v1")),
                  key=lambda pc: pc[1], default=("-", 0))
    print(f"{name}: sustained {(n1 - n0) / (w1 - w0):.1f} requests/s over {w1 - w0:.0f} s "
          f"(whole run {b['requests']} requests in {b['seconds']:.1f} s = {b['requests'] / b['seconds']:.1f}/s, "
          f"{st.get('rate_limited', 0)} answered 429, {st.get('rate_limited_by', {})}; busiest path {busiest[0]} "
          f"{busiest[1]} requests) [{b['status']}]", flush=True)


def scenario_c(args: argparse.Namespace, tmp: Path) -> None:
    cmd = [sys.executable, str(Path(__file__).with_name("big_account.py")), "--objects", str(args.big_objects)]
    big = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert big.stdout is not None
        url = big.stdout.readline().strip()
        c = child(CHILD, url, str(tmp / "c.duckdb"), "100000", "0")
    finally:
        big.terminate()
        big.wait()
    print(f"(c) full sync of a synthetic {args.big_objects:,}-object account (scripts/big_account.py): "
          f"{c['objects']:,} objects in {c['seconds']:.0f} s = {c['objects'] / c['seconds']:,.0f} objects/s, "
          f"peak RSS {c['rss_mb']:.0f} MB [{c['status']}]", flush=True)


if __name__ == "__main__":
    main()
