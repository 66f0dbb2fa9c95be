"""A store holds one Stripe account in one mode: a sync of another account, or of the same account's other mode (a
test key and a live key answer GET /v1/account with the same id), is refused before anything is written, with one
line that names both and says what to do. Without the check every view adds the two up. The real sync against
sandbox servers (one account id per seed)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

import stripe_churn
from stripe_churn.errors import ConfigError
from stripe_churn.sandbox.server import start_in_thread
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.settings import Secret, Settings
from stripe_churn.sync import STORE_MODE, key_mode, run_sync

TEST_KEY = "sk_test_identity_1234"
LIVE_KEY = "rk_live_identity_5678"
START = int(datetime(2025, 10, 1, tzinfo=UTC).timestamp())


def sim(seed: int) -> Simulation:
    return Simulation(customers=8, months=3, seed=seed, start=START)


def sync(s: Simulation, db: Path, key: str = TEST_KEY, **kw: Any) -> Any:
    with start_in_thread(s, api_key=key) as sb:
        settings = Settings(api_key=Secret(key), api_base=sb.url, db=db, rate_limit=5000.0)
        return run_sync(settings, progress=False, **kw)


def contents(db: Path) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT 'customers', account_id, count(*) FROM customers GROUP BY ALL UNION ALL "
                           "SELECT 'events', account_id, count(*) FROM events GROUP BY ALL UNION ALL "
                           "SELECT stream, account_id, value FROM sync_cursors WHERE stream = 'mode' "
                           "ORDER BY ALL").fetchall()
    finally:
        con.close()


def refused(exc: pytest.ExceptionInfo[ConfigError], *names: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and "STRIPE_CHURN_DB" in msg and "nothing was synced" in msg, msg
    assert TEST_KEY not in msg and LIVE_KEY not in msg, msg
    for name in names:
        assert name in msg, (name, msg)


@pytest.mark.parametrize("full", [pytest.param(False, id="incremental"), pytest.param(True, id="full")])
def test_a_sync_of_another_account_is_refused_and_the_store_is_left(tmp_path: Path, full: bool) -> None:
    db = tmp_path / "s.duckdb"
    one, other = sim(1), sim(7)
    assert one.account_id != other.account_id
    assert sync(one, db).status == "succeeded"
    before = contents(db)
    assert (STORE_MODE, one.account_id, "test") in before
    with pytest.raises(ConfigError) as exc:
        sync(other, db, full=full)
    refused(exc, f"{one.account_id} (test mode)", f"{other.account_id} (test mode)")
    assert contents(db) == before
    # the store's own account still syncs
    assert sync(one, db).status == "succeeded"


@pytest.mark.parametrize(("first", "then"), [pytest.param(TEST_KEY, LIVE_KEY, id="test-then-live"),
                                             pytest.param(LIVE_KEY, TEST_KEY, id="live-then-test")])
def test_the_other_mode_of_the_same_account_is_refused(tmp_path: Path, first: str, then: str) -> None:
    db = tmp_path / "s.duckdb"
    s = sim(3)  # (one account id, whatever the key: as Stripe answers a test and a live key of one account)
    assert sync(s, db, first).status == "succeeded"
    before = contents(db)
    for full in (False, True):
        with pytest.raises(ConfigError) as exc:
            sync(s, db, then, full=full)
        refused(exc, f"{s.account_id} ({key_mode(first)} mode)", f"{s.account_id} ({key_mode(then)} mode)")
        assert contents(db) == before


def test_a_store_synced_before_the_mode_was_recorded_learns_it(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    s = sim(3)
    assert sync(s, db).status == "succeeded"
    with duckdb.connect(str(db)) as con:  # (as a store synced by an earlier version holds it)
        con.execute("DELETE FROM sync_cursors WHERE stream = ?", [STORE_MODE])
    assert sync(s, db, LIVE_KEY).status == "succeeded"  # not refused: nothing says which mode it held
    assert (STORE_MODE, s.account_id, "live") in contents(db)
    with pytest.raises(ConfigError):
        sync(s, db, TEST_KEY)


def test_a_key_of_no_known_prefix_takes_the_mode_of_what_the_server_sends(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    s = sim(3)  # (the sandbox's objects say livemode: false)
    assert sync(s, db, "proxy-held-key").status == "succeeded"
    assert (STORE_MODE, s.account_id, "test") in contents(db)
    with pytest.raises(ConfigError):
        sync(s, db, LIVE_KEY)


def test_a_demo_in_a_folder_whose_store_it_did_not_make_is_refused(tmp_path: Path) -> None:
    """(a folder the demo filled records it in demo.json, and another simulation starts that store over: see
    tests/test_cli.py; a store without it, such as a real one given as --dir, is another account's)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE")}
    env["PYTHONPATH"] = str(Path(stripe_churn.__file__).parents[1])  # (this tree's package, not an installed one)

    def demo(seed: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "stripe_churn", "demo", "--dir", str(tmp_path / "demo"),
                               "--customers", "10", "--months", "3", "--seed", str(seed), "--format", "csv"],
                              capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env)

    assert demo(1).returncode == 0
    (tmp_path / "demo" / "demo.json").unlink()
    out = demo(2)
    assert out.returncode == 2, out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "acct_sandbox" in errors[0] and "--dir" in errors[0], out.stderr


def test_a_configured_account_the_key_cannot_reach_is_not_recorded_as_the_stores(tmp_path: Path) -> None:
    from stripe_churn.errors import AuthError

    db = tmp_path / "s.duckdb"
    s = sim(3)
    with start_in_thread(s, api_key=TEST_KEY) as sb:
        for account in ("acct_1NoAccessHere", s.account_id):
            settings = Settings(api_key=Secret(TEST_KEY), api_base=sb.url, db=db, rate_limit=5000.0,
                                account=account)
            if account != s.account_id:  # (Stripe's 403 before the store takes the account as its own)
                with pytest.raises(AuthError):
                    run_sync(settings, progress=False)
            else:
                assert run_sync(settings, progress=False).status == "succeeded"
    assert (STORE_MODE, s.account_id, "test") in contents(db)


def test_a_store_that_held_several_accounts_before_keeps_syncing_them_and_takes_no_other(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An earlier version synced several accounts (STRIPE_ACCOUNT) into one store: refusing them all would leave
    the store unsyncable, and starting over would lose the events Stripe no longer keeps."""
    from stripe_churn import sync as sync_module

    db = tmp_path / "s.duckdb"
    one, two = sim(1), sim(7)
    with monkeypatch.context() as m:  # (as an earlier version made it: no check, no mode recorded)
        m.setattr(sync_module._Sync, "_check_identity", lambda self, account, mode: None)
        assert sync(one, db).status == "succeeded" and sync(two, db).status == "succeeded"
    for s in (one, two, one):
        assert sync(s, db).status == "succeeded"
    with pytest.raises(ConfigError) as exc:
        sync(sim(11), db)
    refused(exc, one.account_id, two.account_id, sim(11).account_id)


def test_a_first_sync_that_stored_nothing_does_not_claim_the_store(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A first sync refused by Stripe before it stored anything (a restricted key without a permission, a mistyped
    key of another account) recorded the store as that account's and mode's: the corrected key was refused."""
    from stripe_churn.errors import AuthError
    from stripe_churn.stripe_api import client

    db = tmp_path / "s.duckdb"
    s = sim(3)
    real_get = client.StripeRaw.get_page

    async def no_customers(self: Any, path: str, params: Any = None) -> Any:
        if path.startswith("/v1/customers"):
            raise AuthError("Stripe says the API key lacks a permission needed (HTTP 403)")
        return await real_get(self, path, params)

    monkeypatch.setattr(client.StripeRaw, "get_page", no_customers)
    with pytest.raises(AuthError):
        sync(s, db, TEST_KEY)
    monkeypatch.setattr(client.StripeRaw, "get_page", real_get)
    assert not [r for r in contents(db) if r[0] in ("customers", "events")]
    assert sync(s, db, LIVE_KEY).status == "succeeded"
    assert (STORE_MODE, s.account_id, "live") in contents(db)
    with pytest.raises(ConfigError):  # (now it holds the live objects)
        sync(s, db, TEST_KEY)
