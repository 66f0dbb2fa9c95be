"""The daemon's start: whatever stops `stripe-churn daemon` at start is in `<db>.daemon.json` for `status`, unless
another daemon has the store or the settings name no store."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from test_daemon import locked_writer, wait_for

from stripe_churn.cli import cli
from stripe_churn.daemon import Daemon, read_state, state_path
from stripe_churn.settings import ENV_KEYS, Settings

KEY = "rk_live_51StartRefusalKey0123456789"
PREVIOUS = {"pid": 1, "state": "stopped", "started_at": "2026-12-04T10:00:00+00:00", "last_run": None,
            "last_error": None}


def env(**values: str) -> dict[str, str | None]:
    """The command's environment: no STRIPE_* setting of the machine's own, ``values`` on top."""
    return {**dict.fromkeys(ENV_KEYS), **values}


def invoke(*args: str, **values: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env(**values))


def status_of(db: Path) -> dict[str, Any]:
    result = invoke("status", "--format", "json", STRIPE_CHURN_DB=str(db))
    assert result.exit_code == 0, result.output
    info: dict[str, Any] = json.loads(result.output)
    return info


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of its own: no config/stripe-churn.toml, and the default store would be here."""
    where = tmp_path / "cwd"
    where.mkdir()
    monkeypatch.chdir(where)
    return where


def test_a_daemon_without_a_key_says_so_in_status(tmp_path: Path, cwd: Path) -> None:
    """No key stopped the daemon before it wrote anything: `status` kept showing the last daemon's `stopped`
    while systemd restarted the service every 30 s."""
    db = tmp_path / "d.duckdb"
    state_path(db).write_text(json.dumps(PREVIOUS), encoding="utf-8")
    result = invoke("daemon", "--no-sync-on-start", STRIPE_CHURN_DB=str(db))
    assert result.exit_code == 2 and "no Stripe API key" in result.output, result.output
    info = status_of(db)
    assert info["daemon"].startswith(f"crashed (pid {os.getpid()}, since "), info
    assert "fatal: no Stripe API key" in info["daemon_error"], info


@pytest.mark.parametrize(("config", "values", "error"), [
    pytest.param('rate_limit = "fast"\n', {"STRIPE_CHURN_DB": "{db}"},
                 "setting 'rate_limit' in {config} must be a number", id="bad-file-db-from-env"),
    pytest.param('db = "{db}"\nwebhook_port = 99999\n', {},
                 "setting 'webhook_port' in {config} must be a port", id="bad-webhook-port-db-from-file"),
    pytest.param('db = "{db}"\n', {"STRIPE_CHURN_LOG_LEVEL": "LOUD"},
                 "setting 'log_level' in environment variable STRIPE_CHURN_LOG_LEVEL", id="bad-env-db-from-file"),
    pytest.param("not toml [\n", {"STRIPE_CHURN_DB": "{db}"}, "is not valid TOML", id="not-toml-db-from-env"),
])
def test_a_daemon_refused_for_its_settings_says_so_in_status(tmp_path: Path, cwd: Path, config: str,
                                                             values: dict[str, str], error: str) -> None:
    """Settings refused stop the daemon before it exists: their error is written to the state file of the store
    they name (the environment's STRIPE_CHURN_DB, else the file's db), without the key the file holds."""
    db = tmp_path / "d.duckdb"
    state_path(db).write_text(json.dumps(PREVIOUS), encoding="utf-8")
    path = tmp_path / "stripe-churn.toml"
    path.write_text(f'api_key = "{KEY}"\n' + config.format(db=db), encoding="utf-8")
    path.chmod(0o600)
    result = invoke("daemon", "--config", str(path), **{k: v.format(db=db) for k, v in values.items()})
    wanted = error.format(config=path)
    assert result.exit_code == 2 and wanted in result.output, result.output
    text = state_path(db).read_text(encoding="utf-8")
    assert KEY not in text
    state = json.loads(text)
    assert state["state"] == "crashed" and wanted in state["last_error"]["message"], state
    assert "\n" not in state["last_error"]["message"]
    assert wanted in status_of(db)["daemon_error"]
    assert list(cwd.iterdir()) == []  # (not the default store's)


def test_settings_that_name_no_store_write_nothing(tmp_path: Path, cwd: Path) -> None:
    """A file that cannot be read gives no store path (the default one may not be the daemon's): nothing is written
    anywhere, not even beside the default store in the working directory; nor beside a db that holds a key."""
    broken = tmp_path / "broken.toml"
    broken.write_text('db = "a.duckdb"\nnot toml [\n', encoding="utf-8")
    missing = tmp_path / "missing.toml"
    for config in (broken, missing):
        result = invoke("daemon", "--config", str(config), STRIPE_API_KEY=KEY)
        assert result.exit_code == 2, result.output
    pasted = tmp_path / "pasted.toml"
    pasted.write_text(f'db = "{KEY}"\n', encoding="utf-8")
    result = invoke("daemon", "--config", str(pasted))
    assert result.exit_code == 2 and KEY not in result.output, result.output
    assert list(cwd.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "broken.toml", "cwd", "pasted.toml"]



def test_a_daemon_refused_where_there_is_no_store_leaves_no_files(cwd: Path) -> None:
    """`stripe-churn daemon --bogus` (or with no key) in a folder with no store and no daemon before: nothing to
    tell `status` of, so no state or lock file is left beside the default store path."""
    for args, values in ((["daemon", "--bogus"], {"STRIPE_API_KEY": KEY}), (["daemon"], {})):
        result = invoke(*args, **values)
        assert result.exit_code == 2, result.output
    assert list(cwd.iterdir()) == []

def test_an_option_refused_says_so_in_status(tmp_path: Path, cwd: Path) -> None:
    """A --webhook-port out of range (or any option refused) stops the daemon as a usage error: in the state file
    too, for the store its settings name."""
    db = tmp_path / "d.duckdb"
    state_path(db).write_text(json.dumps(PREVIOUS), encoding="utf-8")
    result = invoke("daemon", "--webhook-port", "99999", STRIPE_CHURN_DB=str(db), STRIPE_API_KEY=KEY)
    assert result.exit_code == 2 and "is not in the range 0<=x<=65535" in result.output, result.output
    info = status_of(db)
    assert info["daemon"].startswith("crashed (pid "), info
    assert "Invalid value for '--webhook-port'" in info["daemon_error"], info


def test_a_refusal_leaves_a_running_daemons_state_alone(tmp_path: Path, cwd: Path) -> None:
    """While a daemon runs against the store, the state file is its own: another start refused for its settings
    writes nothing there."""
    db = tmp_path / "d.duckdb"
    d = Daemon(Settings(db=db), interval_seconds=3600, sync_on_start=False, run=locked_writer())
    t = threading.Thread(target=d.run_forever, kwargs={"install_signals": False})
    t.start()
    try:
        assert wait_for(lambda: (read_state(db) or {}).get("state") == "started")
        before = state_path(db).read_bytes()
        assert invoke("daemon", STRIPE_CHURN_DB=str(db)).exit_code == 2
        assert invoke("daemon", "--webhook-port", "99999", STRIPE_CHURN_DB=str(db)).exit_code == 2
        assert invoke("daemon", STRIPE_CHURN_DB=str(db), STRIPE_RATE_LIMIT="fast").exit_code == 2
        assert state_path(db).read_bytes() == before
    finally:
        d.request_stop()
        t.join(timeout=15)
    assert (read_state(db) or {}).get("state") == "stopped"
