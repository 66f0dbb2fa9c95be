# ruff: noqa: F811
"""SIGHUP reads the daemon's settings again (the config file, the environment as at start): the schedule, the rate
limit, the key, the webhook's secret... from the next run, a run going left alone; settings refused are one ERROR
line and the settings running stay. It used to stop the daemon with exit code 0, which a service manager's
Restart=on-failure does not restart."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# (start: test_daemon's fixture, which the tests here take by name)
from test_daemon import locked_writer, start, wait_for  # noqa: F401

from stripe_churn.daemon import Daemon, read_state
from stripe_churn.errors import AuthError
from stripe_churn.pipeline import RunSummary
from stripe_churn.settings import Secret, Settings

KEY = "rk_live_51ReloadKey0123456789abc"


def hup(d: Daemon, caplog: pytest.LogCaptureFixture, line: str) -> str:
    """SIGHUP as the daemon's handler notes it (its main loop reloads), and the first log line after it that
    starts with ``line``."""
    before = len(caplog.records)
    d.handle_signal(signal.SIGHUP, None)
    assert wait_for(lambda: any(r.getMessage().startswith(line) for r in caplog.records[before:]), timeout=5), \
        caplog.text[-2000:]
    return next(r.getMessage() for r in caplog.records[before:] if r.getMessage().startswith(line))


def next_run(d: Daemon) -> dt.datetime:
    job = d.scheduler.get_job("scheduled-sync")
    assert job is not None and job.next_run_time is not None
    return job.next_run_time.astimezone(dt.UTC)  # type: ignore[no-any-return]


def test_a_reload_is_for_the_next_run_and_leaves_the_run_going_alone(start: Callable[..., Daemon], tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="stripe_churn.daemon")
    settings = Settings(db=tmp_path / "d.duckdb", api_key=Secret(KEY), schedule="0 6 * * *", rate_limit=5)
    current = [settings]
    release = threading.Event()
    given: list[Settings] = []
    ended: list[float] = []
    inner = locked_writer()

    def run(settings: Settings, **kw: Any) -> RunSummary:
        given.append(settings)
        if len(given) == 1:
            assert release.wait(timeout=30)
        try:
            return inner(settings, **kw)
        finally:
            ended.append(time.monotonic())

    d = start(settings, run=run, reload=lambda: current[0])
    assert wait_for(lambda: len(given) == 1)
    assert next_run(d).hour == 6
    current[0] = dataclasses.replace(settings, schedule="0 7 * * *", rate_limit=7.0, source="the file")
    line = hup(d, caplog, "settings read again")
    assert line == "settings read again from the file: rate_limit, schedule changed, for the next run"
    assert next_run(d).hour == 7 and next_run(d).minute == 0
    assert any(r.getMessage().startswith("schedule '0 7 * * *', in UTC; next run ") for r in caplog.records)
    time.sleep(0.3)
    assert ended == [] and not d.stop_event.is_set()  # the run going goes on
    release.set()
    assert wait_for(lambda: d.runs == 1)
    assert given[0].rate_limit == 5  # (it began with the old settings and kept them)
    # (runs counts the run before it lets go of the job: a tick at once could find it still held and skip)
    assert wait_for(lambda: not d._job_lock.locked())
    d.tick("schedule")
    assert d.runs == 2 and given[1].rate_limit == 7.0
    assert (read_state(d.settings.db) or {}).get("state") == "started"


@pytest.mark.parametrize(("change", "error"), [
    pytest.param({"schedule": "61 * * * *"}, "bad STRIPE_CHURN_SCHEDULE '61 * * * *'", id="schedule"),
    pytest.param({"api_key": Secret("")}, "no Stripe API key", id="no-key"),
    pytest.param({"db": Path("elsewhere.duckdb")}, "setting 'db' changed from ", id="another-store"),
    pytest.param({"webhook_port": 1}, "the webhook's address changed from none to 127.0.0.1:1", id="webhook-port"),
])
def test_settings_refused_at_a_reload_keep_the_settings_running(start: Callable[..., Daemon], tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture,
                                                                change: dict[str, Any], error: str) -> None:
    """Settings a daemon cannot take are one ERROR line that says why, and it runs on with the settings it had
    (its schedule too): a refused reload must not stop a daemon that syncs."""
    caplog.set_level("INFO", logger="stripe_churn.daemon")
    settings = Settings(db=tmp_path / "d.duckdb", api_key=Secret(KEY), schedule="0 6 * * *")

    d = start(settings, run=locked_writer(), sync_on_start=False,
              reload=lambda: dataclasses.replace(settings, rate_limit=9.0, **change))
    assert wait_for(lambda: (read_state(d.settings.db) or {}).get("state") == "started")
    line = hup(d, caplog, "reload refused")
    assert line.startswith("reload refused, the daemon runs on with the settings it had: ") and error in line, line
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0].getMessage()
    assert d.settings is settings and next_run(d).hour == 6 and not d.stop_event.is_set()
    d.tick("schedule")
    assert d.runs == 1


def test_a_reload_that_fails_unexpectedly_is_one_line_without_the_key(start: Callable[..., Daemon], tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="stripe_churn.daemon")
    settings = Settings(db=tmp_path / "d.duckdb", api_key=Secret(KEY))

    def reload() -> Settings:
        raise RuntimeError(f"cannot read\nthe file holding {KEY}")

    d = start(settings, run=locked_writer(), sync_on_start=False, reload=reload, interval_seconds=3600)
    assert wait_for(lambda: (read_state(d.settings.db) or {}).get("state") == "started")
    line = hup(d, caplog, "reload refused")
    assert line.endswith("unexpected RuntimeError: cannot read the file holding ********"), line
    assert KEY not in caplog.text


def test_a_daemon_given_settings_in_code_runs_on_at_a_sighup(start: Callable[..., Daemon], tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="stripe_churn.daemon")
    d = start(run=locked_writer(), sync_on_start=False, interval_seconds=3600)
    assert wait_for(lambda: (read_state(d.settings.db) or {}).get("state") == "started")
    line = hup(d, caplog, "reload asked")
    assert "has none to read again; it runs on as it was" in line
    assert not d.stop_event.is_set()


def test_a_reload_rotates_the_webhook_secret(start: Callable[..., Daemon], tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """The endpoint's signing secret rolled in the dashboard: after a reload, events signed with the new one start a
    sync and those signed with the old one are refused, on the same port."""
    from test_webhook import post, sign

    caplog.set_level("INFO", logger="stripe_churn.daemon")
    settings = Settings(db=tmp_path / "d.duckdb", api_key=Secret(KEY), webhook_secret=Secret("whsec_old"))
    d = start(settings, run=locked_writer(), sync_on_start=False, interval_seconds=3600, webhook_port=0,
              debounce_seconds=0.1, reload=lambda: dataclasses.replace(settings, webhook_secret=Secret("whsec_new")))
    assert wait_for(lambda: d.webhook is not None and (read_state(d.settings.db) or {}).get("state") == "started")
    url = d.webhook.url
    assert hup(d, caplog, "settings read again").endswith("webhook_secret changed, for the next run")
    assert d.webhook.url == url
    body = json.dumps({"id": "evt_1", "type": "invoice.paid", "livemode": True}).encode()
    assert post(d.webhook, body, {"Stripe-Signature": sign(body, "whsec_old")}) == 400
    assert post(d.webhook, body, {"Stripe-Signature": sign(body, "whsec_new")}) == 200
    assert wait_for(lambda: d.runs == 1)


def test_a_reload_after_a_failure_a_person_fixed_tries_at_once(start: Callable[..., Daemon], tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A key refused waits for the next scheduled run (an hour here); the key fixed in the settings and the daemon
    reloaded, it tries at once, not at that run."""
    caplog.set_level("INFO", logger="stripe_churn.daemon")
    settings = Settings(db=tmp_path / "d.duckdb", api_key=Secret("rk_live_revoked"))
    inner = locked_writer()

    def run(settings: Settings, **kw: Any) -> RunSummary:
        if settings.api_key.reveal() == "rk_live_revoked":
            raise AuthError("Stripe refused the API key (401): set STRIPE_API_KEY to a valid key")
        return inner(settings, **kw)

    d = start(settings, run=run, interval_seconds=3600,
              reload=lambda: dataclasses.replace(settings, api_key=Secret(KEY)))
    assert wait_for(lambda: ((read_state(d.settings.db) or {}).get("last_error") or {}).get("kind") == "fatal")
    hup(d, caplog, "settings read again")
    assert wait_for(lambda: d.runs == 1, timeout=5)
    state = read_state(d.settings.db)
    assert state is not None and state["last_error"] is None and state["last_run"]["reason"] == "reload"


def hup_as_default() -> None:
    """In the daemon's process before it starts: SIGHUP's default action, as a service manager starts it with. A
    suite run under `nohup` would pass its SIGHUP ignored on, and a daemon started ignoring SIGHUP keeps ignoring it
    (by design: it outlives its terminal)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


RELOAD_PROC = textwrap.dedent("""
    import logging, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_daemon import locked_writer
    from stripe_churn.daemon import Daemon
    from stripe_churn.settings import Secret, Settings
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    db = Path(sys.argv[1])
    inner = locked_writer(batches=40, batch_s=0.05)
    def run(settings, **kw):
        print("running", settings.rate_limit, flush=True)
        return inner(settings, **kw)
    d = Daemon(Settings(db=db, rate_limit=5.0), interval_seconds=3600, run=run,
               reload=lambda: Settings(db=db, rate_limit=7.0, api_key=Secret("sk_test_x")))
    sys.exit(d.run_forever())
""")


def test_sighup_mid_run_reloads_and_the_run_ends_as_it_would(tmp_path: Path) -> None:
    """A real SIGHUP to a daemon process in the middle of a run: the process stays, the run commits all its batches,
    and SIGTERM still stops it with exit code 0 (SIGHUP stopped it with 0, which Restart=on-failure does not
    restart)."""
    db = tmp_path / "hup.duckdb"
    log = (tmp_path / "daemon.log").open("w")
    p = subprocess.Popen([sys.executable, "-c", RELOAD_PROC, str(db), str(Path(__file__).parent)],
                         stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=hup_as_default)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "running 5.0"
        time.sleep(0.5)
        p.send_signal(signal.SIGHUP)
        assert wait_for(lambda: ((read_state(db) or {}).get("last_run") or {}).get("status") == "ok", timeout=15), \
            (tmp_path / "daemon.log").read_text()[-3000:]
        assert p.poll() is None
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=15) == 0
    finally:
        p.kill()
        log.close()
    stderr = (tmp_path / "daemon.log").read_text()
    assert "SIGHUP received: reading the settings again" in stderr
    assert "settings read again from defaults: api_key, rate_limit changed, for the next run" in stderr, stderr
    state = read_state(db)
    assert state is not None and state["state"] == "stopped" and state["last_run"]["counts"] == {"batches": 40}


def test_the_daemon_command_reloads_its_config_file_on_sighup(tmp_path: Path) -> None:
    """The real command: SIGHUP reads the --config file again (a new schedule is taken, with its next run logged), a
    file refused is one ERROR line and the daemon runs on with what it had, and SIGTERM stops it with exit code 0."""
    db = tmp_path / "cli.duckdb"
    config = tmp_path / "stripe-churn.toml"
    config.write_text(f'db = "{db}"\nschedule = "0 6 * * *"\n', encoding="utf-8")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STRIPE")}, "STRIPE_API_KEY": KEY,
           "STRIPE_API_BASE": "http://127.0.0.1:9", "STRIPE_CHURN_LOG_LEVEL": "INFO"}
    log_path = tmp_path / "daemon.log"
    log = log_path.open("w")
    p = subprocess.Popen([sys.executable, "-m", "stripe_churn", "daemon", "--no-sync-on-start", "--config",
                          str(config)], env=env, stderr=log, text=True, cwd=tmp_path,
                         preexec_fn=hup_as_default)

    def logged(text: str) -> bool:
        return text in log_path.read_text()

    try:
        assert wait_for(lambda: (read_state(db) or {}).get("state") == "started", timeout=30), log_path.read_text()
        config.write_text(f'db = "{db}"\nschedule = "30 7 * * *"\nrate_limit = 3\n', encoding="utf-8")
        p.send_signal(signal.SIGHUP)
        assert wait_for(lambda: logged("rate_limit, schedule changed, for the next run")), log_path.read_text()
        assert logged("schedule '30 7 * * *', in UTC; next run ") and logged(":30:00+00:00")
        config.write_text(f'db = "{db}"\nschedule = "0 6 * * *"\nrate_limit = "fast"\n', encoding="utf-8")
        p.send_signal(signal.SIGHUP)
        assert wait_for(lambda: logged("reload refused")), log_path.read_text()
        assert p.poll() is None
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=15) == 0
    finally:
        p.kill()
        log.close()
    text = log_path.read_text()
    errors = [line for line in text.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"setting 'rate_limit' in {config} must be a number" in errors[0], text
    assert KEY not in text
    state = read_state(db)
    assert state is not None and state["state"] == "stopped"


def test_a_webhook_secret_missing_at_a_reload_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """(no thread: the check alone) A webhook with no secret would refuse every event: the reload is refused."""
    settings = Settings(db=tmp_path / "d.duckdb", api_key=Secret(KEY), webhook_secret=Secret("whsec_x"))
    d = Daemon(settings, webhook_port=0, run=locked_writer(), interval_seconds=3600,
               reload=lambda: dataclasses.replace(settings, webhook_secret=Secret("")))
    caplog.set_level("INFO", logger="stripe_churn.daemon")
    assert d.reload_settings() is False
    assert "reload refused" in caplog.text and "the webhook needs STRIPE_WEBHOOK_SECRET" in caplog.text
    assert d.settings is settings


def test_status_says_a_reload_was_refused_until_one_is_taken(start: Callable[..., Daemon], tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """An operator who sent SIGHUP looks at `status` for the outcome: a refused reload is there, with why, until a
    reload is taken."""
    from stripe_churn.pipeline import collect_status

    caplog.set_level("INFO", logger="stripe_churn.daemon")
    settings = Settings(db=tmp_path / "d.duckdb", api_key=Secret(KEY), schedule="0 6 * * *")
    given = [dataclasses.replace(settings, schedule="61 * * * *")]
    d = start(settings, run=locked_writer(), sync_on_start=False, reload=lambda: given[0])
    assert wait_for(lambda: (read_state(d.settings.db) or {}).get("state") == "started")
    hup(d, caplog, "reload refused")
    # (the refusal is logged, then written to the state file: waited for)
    assert wait_for(lambda: "reload was refused at " in collect_status(settings.db)["daemon"])
    daemon = collect_status(settings.db)["daemon"]
    assert "reload was refused at " in daemon and "bad STRIPE_CHURN_SCHEDULE '61 * * * *'" in daemon, daemon
    assert KEY not in json.dumps(read_state(settings.db))
    given[0] = dataclasses.replace(settings, schedule="0 7 * * *")
    hup(d, caplog, "settings read again")
    assert "reload" not in collect_status(settings.db)["daemon"]
