"""Fault matrix: the real SDK HTTP client against the sandbox server answering with injected faults.

Each case ends one of two ways: the sync succeeds after bounded retries and the store equals what the
sandbox serves (nothing lost), or it fails with a one-line error naming the cause and the next step and the
raw tables and cursors are exactly as the last commit left them (checksums before and after).

Every case starts from the same committed store (a clean full sync, then one simulated month): the
incremental run that follows is one page of events plus the objects it touched, a single transaction, so a
failure anywhere in it must leave the store byte-for-byte unchanged. The HTTP edge alone (429 with and
without ``Stripe-Should-Retry``, 5xx, resets, bad bodies, 401/403) is unit-tested under ``responses`` in
tests/stripe_api/test_client.py; the full-sync-under-mixed-faults, 429-burst and wrong-key cases are in
tests/test_sync.py.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner
from test_sync import assert_store_equals_sandbox

from stripe_churn.errors import AuthError, BadResponseError, StripeAPIError, StripeChurnError
from stripe_churn.sandbox.server import start_in_thread
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.settings import Secret, Settings
from stripe_churn.store.db import open_store
from stripe_churn.store.schema import RAW_TABLES
from stripe_churn.stripe_api.client import StripeRaw
from stripe_churn.sync import run_sync

KEY = "sk_test_fault_matrix_key_4242"
START = int(datetime(2025, 10, 1, tzinfo=UTC).timestamp())
MAX_RETRIES = 2


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries wait milliseconds instead of the production backoff; their number is what is tested."""
    monkeypatch.setattr(StripeRaw, "_backoff", lambda self, attempt: 0.005 * attempt)


@dataclass
class Synced:
    """A simulation one month past a committed full sync, and that store's file to copy per case."""

    sim: Simulation
    template: Path


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Synced:
    sim = Simulation(customers=12, months=4, seed=5, start=START)  # one month on keeps the cursor event retained
    template = tmp_path_factory.mktemp("faults") / "template.duckdb"
    with start_in_thread(sim, api_key=KEY) as sb:
        result = run_sync(settings(sb.url, template), progress=False)
        assert result.status == "succeeded"
        sb.advance(1)
    # the incremental run must be a single page of events for the unchanged-store guarantee to be exact
    with open_store(template) as con:
        row = con.execute("SELECT created FROM sync_cursors WHERE stream = 'events'").fetchone()
    assert row is not None
    assert 0 < len([e for e in sim.events if e["created"] > row[0]]) < 100
    return Synced(sim, template)


@pytest.fixture
def db(synced: Synced, tmp_path: Path) -> Path:
    path = tmp_path / "case.duckdb"
    shutil.copyfile(synced.template, path)
    return path


def settings(url: str, db: Path, **kw: Any) -> Settings:
    return Settings(api_key=Secret(kw.pop("key", KEY)), api_base=url, db=db, rate_limit=2000.0,
                    max_retries=kw.pop("max_retries", MAX_RETRIES), timeout_seconds=kw.pop("timeout", 5.0), **kw)


def checksum(db: Path) -> str:
    """Digest of every raw table (id, deleted, raw JSON, version), fx rates and sync cursors."""
    h = hashlib.sha256()
    con = duckdb.connect(str(db), read_only=True)
    try:
        for table in RAW_TABLES:
            for row in con.execute(f"SELECT id, deleted, CAST(raw AS VARCHAR), version FROM {table} ORDER BY id").fetchall():
                h.update(repr(row).encode())
        for q in ("SELECT * FROM fx_rates ORDER BY ALL",
                  "SELECT account_id, stream, value, created, done FROM sync_cursors ORDER BY ALL"):
            h.update(repr(con.execute(q).fetchall()).encode())
    finally:
        con.close()
    return h.hexdigest()


def last_run(db: Path) -> tuple[str, str | None]:
    with open_store(db) as con:
        row = con.execute("SELECT status, error FROM sync_runs ORDER BY started_at DESC LIMIT 1").fetchone()
    assert row is not None
    return row[0], row[1]


# ----------------------------------------------------------------------------------------------- success
# A share of requests fail; bounded retries get every page through and the store equals the sandbox.
RECOVERABLE = [
    pytest.param(["429_lock_timeout"], True, {}, id="429-storm-should-retry-true"),
    pytest.param(["429_lock_timeout"], None, {}, id="429-storm-no-header"),
    pytest.param(["500", "502", "503", "409_lock_timeout"], None, {}, id="5xx-and-409-lock-timeout"),
    pytest.param(["reset", "drop"], None, {}, id="connection-reset-and-drop"),
    pytest.param(["slow"], None, {"slow_s": 1.0, "timeout": 0.3}, id="slow-past-timeout"),
    pytest.param(["truncated", "not_json", "html"], None, {}, id="truncated-not-json-html-bodies"),
]


@pytest.mark.parametrize(("faults", "should_retry", "extra"), RECOVERABLE)
def test_incremental_survives_a_share_of_faults(synced: Synced, db: Path, faults: list[str],
                                                should_retry: bool | None, extra: dict[str, Any]) -> None:
    slow_s = extra.get("slow_s", 10.0)
    with start_in_thread(synced.sim, api_key=KEY, fault_rate=0.25, faults=faults, fault_seed=11,
                         should_retry=should_retry, slow_s=slow_s) as sb:
        t0 = time.monotonic()
        result = run_sync(settings(sb.url, db, max_retries=8, timeout=extra.get("timeout", 5.0)), progress=False)
        elapsed = time.monotonic() - t0
        stats = sb.stats()
    assert (result.mode, result.status) == ("incremental", "succeeded")
    injected = sum(stats["faults"].values())
    assert injected >= 3 and set(stats["faults"]) == set(faults), stats["faults"]
    assert result.requests == stats["requests"]  # every answer, faulty or not, was one request of ours
    # bounded: each request that got through took at most 1 + max_retries attempts
    assert stats["requests"] <= (stats["requests"] - injected) * (1 + 8)
    assert elapsed < 30
    with open_store(db) as con:
        assert_store_equals_sandbox(con, synced.sim)


def test_full_sync_from_empty_under_every_fault_kind(synced: Synced, tmp_path: Path) -> None:
    kinds = ["500", "502", "503", "409_lock_timeout", "429_lock_timeout", "reset", "drop", "truncated",
             "not_json", "html", "slow"]
    with start_in_thread(synced.sim, api_key=KEY, fault_rate=0.35, faults=kinds, fault_seed=5, slow_s=1.5,
                         should_retry=True) as sb:
        result = run_sync(settings(sb.url, tmp_path / "full.duckdb", max_retries=10, timeout=0.4), progress=False)
        stats = sb.stats()
    assert (result.mode, result.status) == ("full", "succeeded")
    assert sum(stats["faults"].values()) >= 3 and len(stats["faults"]) >= 2, stats["faults"]
    with open_store(tmp_path / "full.duckdb") as con:
        assert_store_equals_sandbox(con, synced.sim)


# ----------------------------------------------------------------------------------------------- failure
# Every request after the first (the account lookup) fails: the next one, the check that the events cursor
# is still retained, is retried exactly MAX_RETRIES times, then the run stops with one line.
PERSISTENT = [
    pytest.param(["429_lock_timeout"], True, {}, StripeAPIError, "429 (lock_timeout)", id="429-storm-should-retry-true"),
    pytest.param(["429_lock_timeout"], None, {}, StripeAPIError, "429 (lock_timeout)", id="429-storm-no-header"),
    pytest.param(["500", "502", "503"], None, {}, StripeAPIError, "answered 50", id="500-502-503"),
    pytest.param(["409_lock_timeout"], None, {}, StripeAPIError, "409 (lock_timeout)", id="409-lock-timeout"),
    pytest.param(["reset"], None, {}, StripeAPIError, "connection to http://127.0.0.1:", id="connection-reset"),
    pytest.param(["slow"], None, {"slow_s": 1.0, "timeout": 0.25}, StripeAPIError, "gave no answer within 0.25 s",
                 id="slow-past-timeout"),
    pytest.param(["truncated"], None, {}, StripeAPIError, "connection to http://127.0.0.1:", id="truncated-body"),
    pytest.param(["not_json"], None, {}, BadResponseError, "not JSON", id="not-json-body"),
    pytest.param(["html"], None, {}, StripeAPIError, "answered 502", id="html-proxy-page"),
]


@pytest.mark.parametrize(("faults", "should_retry", "extra", "error", "cause"), PERSISTENT)
def test_persistent_fault_is_one_line_and_leaves_the_store(
        synced: Synced, db: Path, faults: list[str], should_retry: bool | None, extra: dict[str, Any],
        error: type[StripeChurnError], cause: str) -> None:
    before = checksum(db)
    with start_in_thread(synced.sim, api_key=KEY, fault_rate=1.0, faults=faults, fault_after=1,
                         should_retry=should_retry, slow_s=extra.get("slow_s", 10.0)) as sb:
        t0 = time.monotonic()
        with pytest.raises(error) as info:
            run_sync(settings(sb.url, db, timeout=extra.get("timeout", 5.0)), progress=False)
        elapsed = time.monotonic() - t0
        stats = sb.stats()
    msg = str(info.value)
    assert "\n" not in msg and cause in msg, msg
    assert f"after {MAX_RETRIES} retries" in msg and "run the sync again" in msg, msg
    assert stats["requests"] == 1 + (MAX_RETRIES + 1), stats  # the account, then one request and its retries
    assert elapsed < 10
    assert checksum(db) == before
    assert last_run(db) == ("failed", msg)


def test_should_retry_false_stops_at_once(synced: Synced, db: Path) -> None:
    """Stripe says a retry cannot help: no retry at all, one line, store unchanged."""
    before = checksum(db)
    with start_in_thread(synced.sim, api_key=KEY, fault_rate=1.0, faults=["429_lock_timeout", "503"],
                         fault_after=1, should_retry=False) as sb:
        with pytest.raises(StripeAPIError) as info:
            run_sync(settings(sb.url, db, max_retries=5), progress=False)
        stats = sb.stats()
    msg = str(info.value)
    assert stats["requests"] == 2
    assert "after 0 retries" in msg and "run the sync again" in msg and "\n" not in msg
    assert checksum(db) == before


@pytest.mark.parametrize("after", [1, 3, 8], ids=["before-events", "after-events-page", "during-refresh"])
def test_key_revoked_mid_run(synced: Synced, db: Path, after: int) -> None:
    """401 from some request on: no retry of a refused key, one line naming STRIPE_API_KEY, store unchanged."""
    before = checksum(db)
    with start_in_thread(synced.sim, api_key=KEY, auth_revoked_after=after) as sb:
        with pytest.raises(AuthError) as info:
            run_sync(settings(sb.url, db), progress=False)
        stats = sb.stats()
    msg = str(info.value)
    assert "\n" not in msg and "revoked" in msg and "STRIPE_API_KEY" in msg and KEY not in msg
    assert stats["by_path"] and sum(c.get("401", 0) for c in stats["by_path"].values()) >= 1
    assert checksum(db) == before
    assert last_run(db)[0] == "failed"
    if after < 8:
        return
    # once the key works again the next run catches up completely
    with start_in_thread(synced.sim, api_key=KEY) as sb:
        assert run_sync(settings(sb.url, db), progress=False).status == "succeeded"
    with open_store(db) as con:
        assert_store_equals_sandbox(con, synced.sim)


def test_key_revoked_through_the_cli_is_one_line_and_exit_2(synced: Synced, db: Path) -> None:
    before = checksum(db)
    with start_in_thread(synced.sim, api_key=KEY, auth_revoked_after=2) as sb:
        env = {"STRIPE_API_KEY": KEY, "STRIPE_API_BASE": sb.url, "STRIPE_CHURN_DB": str(db),
               "STRIPE_RATE_LIMIT": "2000"}
        result = CliRunner().invoke(cli_main(), ["sync", "--format", "json"], env=env)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "STRIPE_API_KEY" in lines[0] and KEY not in result.output
    assert checksum(db) == before


def cli_main() -> Any:
    from stripe_churn.cli import cli

    return cli


def test_connected_account_without_access(synced: Synced, db: Path) -> None:
    """STRIPE_ACCOUNT set to an account the key cannot reach: Stripe's 403, not retried, one line, no change."""
    before = checksum(db)
    with start_in_thread(synced.sim, api_key=KEY) as sb:
        with pytest.raises(AuthError) as info:
            run_sync(settings(sb.url, db, account="acct_1NoAccessHere"), progress=False)
        stats = sb.stats()
        assert checksum(db) == before
        # the account the key does reach, named explicitly, syncs normally
        ok = run_sync(settings(sb.url, db, account=synced.sim.account_id), progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "acct_1NoAccessHere" in msg and "STRIPE_ACCOUNT" in msg and KEY not in msg
    assert "HTTP 403" in msg
    assert stats["requests"] == 1  # a refusal is not retried
    assert ok.status == "succeeded" and ok.account_id == synced.sim.account_id
    with open_store(db) as con:
        assert_store_equals_sandbox(con, synced.sim)
