"""A full sync against a sandbox that limits each endpoint as Stripe does (25/s in live mode, a quarter of the
global 100/s): concurrent requests to one endpoint (the slices that list /v1/invoices at once, the lines of many
invoices fetched together) stay under that endpoint's limit, and the total under the global one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from stripe_churn.sandbox.server import start_in_thread
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.settings import Secret, Settings
from stripe_churn.sync import run_sync

KEY = "sk_test_endpoint_limit"
START = int(datetime(2025, 10, 1, tzinfo=UTC).timestamp())


def test_full_sync_keeps_under_the_per_endpoint_limit(tmp_path: Path) -> None:
    # Stripe's live proportions (100/s global, 25/s an endpoint) scaled up to 160/s and 40/s, so that the test is
    # quick; rate_limit alone is set: the endpoint limit that follows from it is a quarter of it, the sandbox's
    sim = Simulation(customers=300, months=12, seed=5, start=START)
    with start_in_thread(sim, api_key=KEY, rate_limit=160, endpoint_rate_limit=40) as sb:
        settings = Settings(api_key=Secret(KEY), api_base=sb.url, db=tmp_path / "s.duckdb", rate_limit=160.0)
        result = run_sync(settings, progress=False)
        stats = sb.stats()
    assert result.status == "succeeded"
    by_path = stats["by_path"]
    # several requests to one endpoint were on the way at once (several pages of invoices, lines of many invoices)
    assert by_path["/v1/invoices"]["200"] > 4 and by_path["/v1/invoices/{id}/lines"]["200"] > 20
    # (one bucket for all endpoints sent them up to the whole 160/s: the lines endpoint was refused 5 to 17 times)
    assert stats["rate_limited_by"] == {}, stats["rate_limited_by"]
    assert stats["rate_limited"] == 0
