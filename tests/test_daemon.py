"""The daemon: scheduled runs (interval trigger), skips while the lock is held, backoff, fatal errors in status,
webhook-triggered debounced syncs, and a clean stop on SIGTERM mid-run in a real subprocess."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from stripe_churn.cli import cli
from stripe_churn.daemon import Daemon, read_state, state_path
from stripe_churn.errors import AuthError, ConfigError, TransientError
from stripe_churn.lock import sync_lock
from stripe_churn.pipeline import RunSummary
from stripe_churn.settings import Secret, Settings
from stripe_churn.store.snapshot import publish_snapshot

# Holds the sync lock until its stdin closes: the checks made while it holds must not race a timer (a holder that
# let go after 1.5 s did so before a daemon slow to start on a loaded machine had skipped twice).
HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from stripe_churn.lock import sync_lock
    with sync_lock(Path(sys.argv[1])):
        print("held", flush=True)
        sys.stdin.read()
""")


def hold_the_lock(db: Path) -> subprocess.Popen[str]:
    """A process holding the store's sync lock until :func:`let_go`."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def let_go(holder: subprocess.Popen[str]) -> None:
    holder.communicate("", timeout=30)


def locked_writer(batches: int = 1, batch_s: float = 0.0) -> Callable[..., RunSummary]:
    """A run that takes the real lock and commits batches into the real DuckDB file, checking ``stop``."""

    def run(settings: Settings, *, wait: float = 0.0, stop: threading.Event | None = None,
            progress: bool = True) -> RunSummary:
        with sync_lock(settings.db, wait=wait):
            con = duckdb.connect(str(settings.db))
            try:
                con.execute("CREATE TABLE IF NOT EXISTS batches (n INTEGER)")
                done = 0
                for _ in range(batches):
                    if stop is not None and stop.is_set():
                        break
                    time.sleep(batch_s)
                    con.execute("INSERT INTO batches VALUES (1)")  # autocommit: one batch, one commit
                    done += 1
                con.execute("CHECKPOINT")
            finally:
                con.close()
            publish_snapshot(settings.db)
        return RunSummary(status="stopped" if done < batches else "ok", counts={"batches": done})

    return run


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    daemons: list[tuple[Daemon, threading.Thread]] = []

    def make(settings: Settings | None = None, **kwargs: Any) -> Daemon:
        settings = settings or Settings(db=tmp_path / "d.duckdb", webhook_secret=Secret("whsec_x"))
        d = Daemon(settings, **kwargs)
        t = threading.Thread(target=d.run_forever, kwargs={"install_signals": False})
        t.start()
        daemons.append((d, t))
        return d

    yield make
    for d, t in daemons:
        d.request_stop()
        t.join(timeout=15)
        assert not t.is_alive()


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def fire_days(schedule: str, tmp_path: Path, count: int = 5) -> list[str]:
    """The next ``count`` fire times of the daemon's cron trigger from Sunday 2025-06-01 00:00 UTC, as "Sun 01 06:00"."""
    trigger = Daemon(Settings(db=tmp_path / "d.duckdb", schedule=schedule)).trigger
    now = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
    fires: list[str] = []
    previous = None
    for _ in range(count):
        nxt = trigger.get_next_fire_time(previous, now)
        assert nxt is not None
        fires.append(nxt.strftime("%a %d %H:%M"))
        previous = now = nxt
    return fires


@pytest.mark.parametrize(("schedule", "expected"), [
    pytest.param("0 6 * * 1-5", ["Mon 02 06:00", "Tue 03 06:00", "Wed 04 06:00", "Thu 05 06:00", "Fri 06 06:00"],
                 id="weekdays-by-number"),
    pytest.param("0 6 * * mon-fri", ["Mon 02 06:00", "Tue 03 06:00", "Wed 04 06:00", "Thu 05 06:00",
                                     "Fri 06 06:00"], id="weekdays-by-name"),
    pytest.param("0 6 * * 0", ["Sun 01 06:00", "Sun 08 06:00", "Sun 15 06:00"], id="zero-is-sunday"),
    pytest.param("0 6 * * 7", ["Sun 01 06:00", "Sun 08 06:00", "Sun 15 06:00"], id="seven-is-sunday"),
    pytest.param("0 6 * * SUN", ["Sun 01 06:00", "Sun 08 06:00", "Sun 15 06:00"], id="name-any-case"),
    pytest.param("0 6 * * 6,0", ["Sun 01 06:00", "Sat 07 06:00", "Sun 08 06:00", "Sat 14 06:00"], id="list"),
    pytest.param("0 6 * * 5-7", ["Sun 01 06:00", "Fri 06 06:00", "Sat 07 06:00", "Sun 08 06:00"],
                 id="range-to-seven"),
    pytest.param("0 6 * * */2", ["Sun 01 06:00", "Tue 03 06:00", "Thu 05 06:00", "Sat 07 06:00", "Sun 08 06:00"],
                 id="step-from-sunday"),
    pytest.param("0 6 * * 1-5/2", ["Mon 02 06:00", "Wed 04 06:00", "Fri 06 06:00", "Mon 09 06:00"],
                 id="range-with-step"),
    pytest.param("30 */12 * * 1", ["Mon 02 00:30", "Mon 02 12:30", "Mon 09 00:30"], id="other-fields-untouched"),
    pytest.param("0 6 * * *", ["Sun 01 06:00", "Mon 02 06:00", "Tue 03 06:00"], id="every-day"),
])
def test_schedule_weekdays_mean_what_they_mean_in_cron(schedule: str, expected: list[str], tmp_path: Path) -> None:
    """Cron numbers the days of the week from Sunday (0 or 7) to Saturday (6); APScheduler 3 from Monday (0)."""
    assert fire_days(schedule, tmp_path, len(expected)) == expected


@pytest.mark.parametrize("schedule", ["0 6 * * 8", "0 6 * * 5-1", "0 6 * * funday", "0 6 * * */0", "0 6 * * 1-",
                                      "0 6 * *",
                                      # (cron runs on the 1st and on every Monday; this scheduler would run on
                                      # Mondays that are the 1st alone)
                                      "0 6 1 * 1"])
def test_a_bad_weekday_field_is_a_config_error(schedule: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bad STRIPE_CHURN_SCHEDULE"):
        Daemon(Settings(db=tmp_path / "d.duckdb", schedule=schedule))


@pytest.mark.parametrize("schedule", ["0 0 31 2 *", "0 0 30 2 *", "0 6 31 4,6,9,11 *"])
def test_a_schedule_that_never_fires_is_a_config_error(schedule: str, tmp_path: Path) -> None:
    """(the daemon started, said `started`, and never synced: APScheduler has no next time for such a day)"""
    with pytest.raises(ConfigError, match=r"never fires \(no such day in those months\)"):
        Daemon(Settings(db=tmp_path / "d.duckdb", schedule=schedule))
    assert fire_days("0 0 29 2 *", tmp_path, 1)  # (a leap day fires, once in four years)


def test_scheduled_runs_and_state(start: Callable[..., Daemon], tmp_path: Path) -> None:
    d = start(interval_seconds=0.2, run=locked_writer())
    assert wait_for(lambda: d.runs >= 3)
    state = read_state(d.settings.db)
    assert state is not None and state["state"] == "started" and state["pid"] == os.getpid()
    assert state["last_run"]["counts"] == {"batches": 1}
    d.request_stop()
    assert wait_for(lambda: (read_state(d.settings.db) or {}).get("state") == "stopped")


def test_ticks_skip_while_another_process_holds_the_lock(start: Callable[..., Daemon], tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "d.duckdb"
    holder = hold_the_lock(db)
    caplog.set_level("INFO", logger="stripe_churn.daemon")
    d = start(interval_seconds=0.2, run=locked_writer())
    try:
        assert wait_for(lambda: d.skipped >= 2)
        assert d.runs == 0
        assert "sync skipped" in caplog.text and "another sync holds" in caplog.text
        assert f"(pid {holder.pid})" in caplog.text
        assert "--wait" not in caplog.text  # (`sync` has that option, `daemon` does not)
    finally:
        let_go(holder)
    assert wait_for(lambda: d.runs >= 1)


def test_overlapping_ticks_do_not_run_twice(start: Callable[..., Daemon]) -> None:
    active = 0
    peak = 0
    lock = threading.Lock()
    inner = locked_writer(batches=4, batch_s=0.1)

    def slow(settings: Settings, **kw: Any) -> RunSummary:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        try:
            return inner(settings, **kw)
        finally:
            with lock:
                active -= 1

    d = start(interval_seconds=0.1, run=slow)
    assert wait_for(lambda: d.runs >= 3)
    assert peak == 1


def test_ticks_during_a_run_skip_with_one_info_line_each(start: Callable[..., Daemon],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A tick that finds the daemon's run going is a normal thing: one INFO line of the daemon's, not APScheduler's
    WARNING "maximum number of running instances reached" at every tick."""
    caplog.set_level("INFO")
    release = threading.Event()
    inner = locked_writer()

    def slow(settings: Settings, **kw: Any) -> RunSummary:
        assert release.wait(timeout=30)
        return inner(settings, **kw)

    d = start(interval_seconds=0.3, run=slow, sync_on_start=False)
    try:
        assert wait_for(lambda: d.skipped >= 5)
    finally:
        release.set()
    assert wait_for(lambda: d.runs >= 1)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [], [r.getMessage() for r in warnings]
    skips = [r for r in caplog.records if r.getMessage() == "sync skipped (schedule): a run in this daemon is still going"]
    assert len(skips) >= 5 and {r.levelname for r in skips} == {"INFO"}


def test_transient_errors_back_off(start: Callable[..., Daemon], caplog: pytest.LogCaptureFixture) -> None:
    """A transient failure is tried again after a wait in time that doubles at each further failure in a row (here
    0.1, 0.2, 0.4, 0.8 s), not at the next scheduled tick (an hour away here): the ticks counted before kept a daily
    schedule a day or more without a sync after one blip."""
    caplog.set_level("INFO", logger="stripe_churn.daemon")
    calls: list[float] = []

    def failing(settings: Settings, **kw: Any) -> RunSummary:
        calls.append(time.monotonic())
        raise TransientError("Stripe kept answering 503")

    d = start(interval_seconds=3600, run=failing, retry_first_seconds=0.1)
    assert wait_for(lambda: len(calls) >= 5, timeout=30)
    d.request_stop()
    failed = [r.getMessage().split(", at ")[0] for r in caplog.records if r.getMessage().startswith("sync failed")]
    assert failed[:4] == [f"sync failed ({n} in a row), will retry in {want} s"
                          for n, want in enumerate(("0.1", "0.2", "0.4", "0.8"), 1)]  # the waits grow
    gaps = [b - a for a, b in itertools.pairwise(calls)][:4]
    # (never before its time, and far from the next tick's hour; late by what the state's write and the scheduler's
    # wake-up take, which a loaded machine makes longer than the first waits: the gaps of the tries themselves
    # grew less than 3-fold when each state write took 0.3 s)
    assert all(want * 0.95 <= gap <= want + 10 for gap, want in zip(gaps, (0.1, 0.2, 0.4, 0.8), strict=True)), gaps


def test_a_blip_on_a_daily_schedule_is_retried_soon(start: Callable[..., Daemon], tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """On a daily schedule, the start-up sync that met a transient failure twice is tried again after the backoff
    (0.2 s, then 0.4 s here; a minute, then two by default) and succeeds: the next try was the next day's run. Each
    failure's line says when the next try is."""
    caplog.set_level("INFO", logger="stripe_churn.daemon")
    calls: list[float] = []
    inner = locked_writer()

    def flaky(settings: Settings, **kw: Any) -> RunSummary:
        calls.append(time.monotonic())
        if len(calls) <= 2:
            raise TransientError("Stripe answered 503")
        return inner(settings, **kw)

    d = start(Settings(db=tmp_path / "d.duckdb", schedule="0 6 * * *"), run=flaky, retry_first_seconds=0.2)
    assert wait_for(lambda: d.runs == 1, timeout=10), caplog.text[-2000:]
    assert len(calls) == 3 and calls[2] - calls[0] < 3
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sync failed")]
    assert len(failed) == 2 and failed[0].startswith("sync failed (1 in a row), will retry in 0.2 s, at ")
    assert failed[1].startswith("sync failed (2 in a row), will retry in 0.4 s, at "), failed
    state = read_state(d.settings.db)
    assert state is not None and state["last_error"] is None and state["last_run"]["reason"] == "retry"


@pytest.mark.parametrize(("schedule", "minutes"), [
    pytest.param("0 6 * * *", [1, 2, 4, 8, 16, 32, 60, 60], id="daily-capped-at-an-hour"),
    pytest.param("*/30 * * * *", [1, 2, 4, 8, 16, 30, 30], id="capped-at-the-interval"),
    pytest.param("0,5 * * * *", [1, 2, 4, 5, 5], id="capped-at-the-shortest-gap"),
])
def test_the_backoff_is_what_readme_says(tmp_path: Path, schedule: str, minutes: list[int]) -> None:
    """The waits before each try after transient failures in a row: 1, 2, 4 ... minutes, at most the schedule's
    shortest interval or an hour, whichever is less; README says so."""
    d = Daemon(Settings(db=tmp_path / "d.duckdb", schedule=schedule), run=locked_writer())
    assert [d.retry_delay(n) / 60 for n in range(1, len(minutes) + 1)] == minutes
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8").split())
    assert ("are retried after a backoff in time: 1 minute after the failure, then 2, 4, 8 ... minutes after each "
            "further failure in a row, at most the schedule's interval or an hour, whichever is less") in readme


def test_ticks_and_webhook_syncs_wait_for_the_retry(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """While backing off, a scheduled tick skips and a webhook's sync waits for the retry (which takes its events
    too), each with a line that says when the retry is: a webhook's sync at each event of a billing run would hammer
    a Stripe that keeps failing. The retry that succeeds ends the backoff: the next tick syncs."""
    import time_machine

    caplog.set_level("INFO", logger="stripe_churn.daemon")
    fail = True
    calls: list[str] = []
    inner = locked_writer()

    def run(settings: Settings, **kw: Any) -> RunSummary:
        calls.append("run")
        if fail:
            raise TransientError("Stripe kept answering 503")
        return inner(settings, **kw)

    d = Daemon(Settings(db=tmp_path / "d.duckdb"), interval_seconds=3600, run=run)
    d.tick("start")
    assert calls == ["run"] and d._retry_at is not None
    retry_at = d._retry_at
    d.tick("schedule")
    d.tick("webhook invoice.paid", follow=True)
    assert calls == ["run"]
    shown = retry_at.isoformat(sep=" ", timespec="seconds")
    lines = [r.getMessage() for r in caplog.records if "backing off" in r.getMessage()]
    assert lines == [f"sync skipped (schedule): backing off after 1 transient failure(s) in a row; the next try is "
                     f"at {shown}",
                     f"sync waits for the retry (webhook invoice.paid): backing off after 1 transient failure(s) "
                     f"in a row; the next try is at {shown}"]
    fail = False
    with time_machine.travel(retry_at + dt.timedelta(seconds=1), tick=True):
        d.tick("retry")
        assert d.runs == 1
        d.tick("schedule")
    assert d.runs == 2 and len(calls) == 3


def test_a_fatal_error_is_not_retried_before_the_schedule(start: Callable[..., Daemon]) -> None:
    """A failure a retry cannot fix (a key refused, a setting refused) waits for the next scheduled run: no retry
    of its own, and a transient failure's retry pending before it is dropped."""
    calls: list[float] = []

    def run(settings: Settings, **kw: Any) -> RunSummary:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise TransientError("Stripe answered 503")
        raise AuthError("Stripe refused the API key (401): set STRIPE_API_KEY to a valid key")

    d = start(interval_seconds=3600, run=run, retry_first_seconds=0.1)
    assert wait_for(lambda: len(calls) == 2)
    time.sleep(1.0)
    assert len(calls) == 2
    state = read_state(d.settings.db)
    assert state is not None and state["last_error"]["kind"] == "fatal" and "retry_at" not in state["last_error"]


def test_status_says_when_the_next_try_is_until_the_daemon_stops(start: Callable[..., Daemon]) -> None:
    """`status` shows a transient failure with when the daemon tries again; once the daemon has stopped, no try
    comes, and it no longer says one does."""
    def failing(settings: Settings, **kw: Any) -> RunSummary:
        raise TransientError("Stripe answered 503")

    d = start(interval_seconds=3600, run=failing)
    env = {"STRIPE_CHURN_DB": str(d.settings.db)}
    assert wait_for(lambda: ((read_state(d.settings.db) or {}).get("last_error") or {}).get("kind") == "transient")
    state = read_state(d.settings.db)
    assert state is not None and d._retry_at is not None
    assert state["last_error"]["retry_at"] == d._retry_at.isoformat(timespec="seconds")
    error = json.loads(CliRunner().invoke(cli, ["status", "--format", "json"], env=env).output)["daemon_error"]
    shown = d._retry_at.isoformat(sep=" ", timespec="seconds")
    assert error.endswith(f"transient: Stripe answered 503; the daemon tries again at {shown} (failure 1 in a row)")
    d.request_stop()
    assert wait_for(lambda: (read_state(d.settings.db) or {}).get("state") == "stopped")
    error = json.loads(CliRunner().invoke(cli, ["status", "--format", "json"], env=env).output)["daemon_error"]
    assert error.endswith("transient: Stripe answered 503"), error


def test_a_daemon_killed_while_it_backed_off_promises_no_try_to_the_next(start: Callable[..., Daemon],
                                                                           tmp_path: Path) -> None:
    """A daemon killed (no clean stop) while it waited for a retry left "the daemon tries again at ..." in its state:
    the next daemon keeps that error as the previous one, without the try no one will make."""
    db = tmp_path / "killed.duckdb"
    state_path(db).write_text(json.dumps({
        "pid": 999_999_999, "state": "started", "started_at": "2026-01-01T00:00:00+00:00", "last_run": None,
        "last_error": {"at": "2026-01-01T00:01:00+00:00", "kind": "transient", "retry_at": "2026-01-01T00:02:00+00:00",
                       "message": "Stripe answered 503; the daemon tries again at 2026-01-01 00:02:00+00:00 "
                                  "(failure 1 in a row)"}}), encoding="utf-8")
    d = start(Settings(db=db, api_key=Secret("sk_test_x")), run=locked_writer(), sync_on_start=False,
              interval_seconds=3600)
    assert wait_for(lambda: (read_state(d.settings.db) or {}).get("pid") == os.getpid())
    previous = (read_state(db) or {})["previous_error"]
    assert previous == {"at": "2026-01-01T00:01:00+00:00", "kind": "transient", "message": "Stripe answered 503"}


def test_fatal_error_is_surfaced_in_status(start: Callable[..., Daemon], tmp_path: Path) -> None:
    def bad_key(settings: Settings, **kw: Any) -> RunSummary:
        raise AuthError("Stripe refused the API key (401): set STRIPE_API_KEY to a valid key")

    d = start(interval_seconds=5, run=bad_key)
    assert wait_for(lambda: ((read_state(d.settings.db) or {}).get("last_error") or {}).get("kind") == "fatal")
    result = CliRunner().invoke(cli, ["status"], env={"STRIPE_CHURN_DB": str(d.settings.db)})
    assert result.exit_code == 0, result.output
    assert "daemon last error" in result.output and "refused the API key" in result.output
    result = CliRunner().invoke(cli, ["status", "--format", "json"], env={"STRIPE_CHURN_DB": str(d.settings.db)})
    assert json.loads(result.output)["daemon_error"].endswith("set STRIPE_API_KEY to a valid key")


def test_a_run_that_succeeds_clears_the_previous_daemons_error(start: Callable[..., Daemon], tmp_path: Path) -> None:
    """README: a fatal error is shown by status until a run succeeds, also when the daemon was restarted since."""
    def bad_key(settings: Settings, **kw: Any) -> RunSummary:
        raise AuthError("Stripe refused the API key (401): set STRIPE_API_KEY to a valid key")

    settings = Settings(db=tmp_path / "d.duckdb", webhook_secret=Secret("whsec_x"))
    first = Daemon(settings, interval_seconds=3600, run=bad_key)
    thread = threading.Thread(target=first.run_forever, kwargs={"install_signals": False})
    thread.start()
    try:
        assert wait_for(lambda: ((read_state(settings.db) or {}).get("last_error") or {}).get("kind") == "fatal",
                        timeout=30)
    finally:
        first.request_stop()
        thread.join(timeout=15)
    assert not thread.is_alive()
    from stripe_churn.store.db import open_store

    open_store(settings.db).close()  # (the store the run below writes in: `status` refuses a file that is none)
    env = {"STRIPE_CHURN_DB": str(settings.db)}
    d = start(interval_seconds=3600, run=locked_writer(), sync_on_start=False)
    assert wait_for(lambda: (read_state(settings.db) or {}).get("state") == "started")
    assert "refused the API key" in CliRunner().invoke(cli, ["status"], env=env).output  # until a run succeeds
    d.tick("schedule")
    assert d.runs == 1
    state = read_state(settings.db)
    assert state is not None and state.get("last_error") is None and state.get("previous_error") is None
    result = CliRunner().invoke(cli, ["status", "--format", "json"], env=env)
    assert result.exit_code == 0, result.output
    assert "daemon_error" not in json.loads(result.output)


@pytest.mark.parametrize("synced", ["after", "before"])
def test_status_says_when_a_sync_succeeded_after_the_daemons_error(tmp_path: Path, synced: str) -> None:
    """The daemon's fatal error stays in `status` until a run of the daemon succeeds; a manual sync that succeeded
    after it is said beside it (it used to stand alone, as if nothing had worked since)."""
    from stripe_churn.daemon import state_path
    from stripe_churn.store.db import open_store

    db = tmp_path / "d.duckdb"
    failed_at = dt.datetime(2026, 11, 3, 6, 0, tzinfo=dt.UTC)
    state_path(db).write_text(json.dumps({"pid": 1, "state": "stopped", "started_at": "2026-11-03T05:00:00+00:00",
                                          "last_error": {"at": failed_at.isoformat(), "kind": "fatal",
                                                         "message": "Stripe refused the API key (401)"}}))
    ran = failed_at + (dt.timedelta(hours=2) if synced == "after" else -dt.timedelta(hours=2))
    with open_store(db) as con:
        con.execute("INSERT INTO sync_runs (run_id, account_id, started_at, finished_at, mode, status) "
                    "VALUES ('r1', 'acct_1', ?, ?, 'incremental', 'succeeded')", [ran, ran])
    publish_snapshot(db)
    result = CliRunner().invoke(cli, ["status", "--format", "json"], env={"STRIPE_CHURN_DB": str(db)})
    assert result.exit_code == 0, result.output
    error = json.loads(result.output)["daemon_error"]
    assert "refused the API key" in error
    assert ("a sync succeeded after it, at 2026-11-03T08:00:00+00:00" in error) == (synced == "after")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.slow
@pytest.mark.parametrize("terminal", [pytest.param(False, id="off-a-terminal"), pytest.param(True, id="terminal")])
def test_a_long_run_of_the_daemon_logs_its_progress(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch, terminal: bool) -> None:
    """A sync of the daemon that takes longer than the progress interval (5 s; 0.4 s here) logs `sync progress: ...`
    lines, as a manual `sync` off a terminal does (at most one per interval); it asked for no progress at all. On a
    terminal too, and it draws no bar there (no bars among its log lines)."""
    from stripe_churn import sync
    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.settings import SANDBOX_KEY

    monkeypatch.setattr(sync, "PROGRESS_LOG_S", 0.4)
    stderr = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    caplog.set_level("INFO")
    # (each answer 0.08 s late: pages still come in well after an interval since the sync began, to show a progress
    # line; the sync takes about 1.2 s then)
    with start_in_thread(Simulation(customers=150, months=6, seed=3), api_key=SANDBOX_KEY, latency_ms=80) as sb:
        settings = Settings(db=tmp_path / "p.duckdb", api_key=Secret(SANDBOX_KEY), api_base=sb.url, rate_limit=1000)
        d = Daemon(settings, interval_seconds=3600)
        t0 = time.monotonic()
        d.tick("schedule")
        elapsed = time.monotonic() - t0
    assert d.runs == 1, caplog.text[-2000:]
    lines = [r for r in caplog.records if r.getMessage().startswith(("sync progress: ", "metrics progress: "))]
    assert stderr.getvalue() == ""  # no progress bar
    assert elapsed > 2 * sync.PROGRESS_LOG_S, "the sync was too quick to show progress"
    assert lines, caplog.text[-2000:]
    assert all(b.created - a.created >= 0.98 * sync.PROGRESS_LOG_S for a, b in itertools.pairwise(lines))


def test_state_saves_from_several_threads_lose_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The main thread (starting, started) and a run's thread (last run, last error) write the state file at the
    same moments: both wrote the same temporary file, and one change was lost (a fatal error status never showed)
    with a "cannot write daemon state" warning."""
    d = Daemon(Settings(db=tmp_path / "d.duckdb"), interval_seconds=3600, run=locked_writer())
    go = threading.Event()

    def saves(n: int) -> None:
        go.wait()
        for i in range(100):
            d._save(**{f"t{n}": i})

    threads = [threading.Thread(target=saves, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(timeout=30)
    assert "cannot write daemon state" not in caplog.text
    state = read_state(d.settings.db)
    assert state is not None and all(state[f"t{n}"] == 99 for n in range(4))


def test_a_webhook_port_in_use_stops_the_daemon_before_any_sync(tmp_path: Path) -> None:
    """The port is taken before the scheduler starts: a bad one is a clear error, and no sync was begun (it was an
    "unexpected OSError" after the start-up sync had begun, which the exit then cut short)."""
    runs: list[float] = []

    def run(settings: Settings, **kw: Any) -> RunSummary:
        runs.append(time.monotonic())
        return RunSummary(status="ok")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = Daemon(Settings(db=tmp_path / "d.duckdb", webhook_secret=Secret("whsec_x")), interval_seconds=3600,
                   run=run, webhook_port=port)
        with pytest.raises(ConfigError, match=f"the webhook cannot listen on 127.0.0.1:{port}: Address already in use; "
                                              "pick another --webhook-port"):
            d.run_forever(install_signals=False)
    time.sleep(0.3)
    assert runs == [] and not d.scheduler.running
    state = read_state(d.settings.db)
    assert state is not None and state["state"] == "crashed"
    assert state["last_error"]["message"].startswith(f"the webhook cannot listen on 127.0.0.1:{port}")


def test_webhook_events_schedule_one_debounced_sync(start: Callable[..., Daemon]) -> None:
    from test_webhook import post, sign

    d = start(interval_seconds=3600, sync_on_start=False, run=locked_writer(), webhook_port=0,
              debounce_seconds=0.5)
    assert wait_for(lambda: d.webhook is not None)
    t0 = time.monotonic()
    for etype in ("invoice.paid", "customer.subscription.updated", "invoice.finalized"):
        body = json.dumps({"id": "evt", "type": etype}).encode()
        assert post(d.webhook, body, {"Stripe-Signature": sign(body, "whsec_x")}) == 200
    assert wait_for(lambda: d.runs == 1, timeout=5)
    assert time.monotonic() - t0 < 5
    time.sleep(1.0)
    assert d.runs == 1

def first_run_held() -> tuple[Callable[..., RunSummary], threading.Event, list[float], list[float]]:
    """A run (the store's writer for a moment) whose first call waits for ``release``; when each call started and
    ended."""
    release = threading.Event()
    started: list[float] = []
    ended: list[float] = []
    inner = locked_writer()

    def run(settings: Settings, **kw: Any) -> RunSummary:
        started.append(time.monotonic())
        try:
            if len(started) == 1:
                assert release.wait(timeout=30)
            return inner(settings, **kw)
        finally:
            ended.append(time.monotonic())

    return run, release, started, ended



def test_webhook_events_during_a_run_make_one_run_follow_it(start: Callable[..., Daemon]) -> None:
    """Events whose debounced sync finds the daemon's own run going are not dropped: one run follows that run."""
    from test_webhook import post, sign

    run, release, started, ended = first_run_held()

    d = start(interval_seconds=3600, run=run, webhook_port=0, debounce_seconds=0.1)
    assert wait_for(lambda: d.webhook is not None and len(started) == 1)
    for etype in ("invoice.paid", "customer.subscription.updated"):
        body = json.dumps({"id": "evt", "type": etype}).encode()
        assert post(d.webhook, body, {"Stripe-Signature": sign(body, "whsec_x")}) == 200
    assert wait_for(lambda: d.skipped >= 1)  # the debounced sync found the start-up run going
    body = json.dumps({"id": "evt", "type": "invoice.finalized"}).encode()
    assert post(d.webhook, body, {"Stripe-Signature": sign(body, "whsec_x")}) == 200
    assert wait_for(lambda: d.skipped >= 2)
    release.set()
    assert wait_for(lambda: d.runs == 2)
    time.sleep(1.0)
    assert d.runs == 2 and len(started) == 2  # many events during one run: one run after it
    assert started[1] >= ended[0]
    state = read_state(d.settings.db)
    assert state is not None and state["last_run"]["reason"].startswith("webhook ")


def test_webhook_events_wait_for_another_process_run_longer_than_the_lock_wait(
        start: Callable[..., Daemon], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A webhook's sync that finds another process's run (a manual `sync`) going past its lock wait is not left to
    the next scheduled tick (an hour away here): it waits again, and runs once that process lets go."""
    from test_webhook import post, sign

    caplog.set_level("INFO", logger="stripe_churn.daemon")
    db = tmp_path / "d.duckdb"
    holder = hold_the_lock(db)
    try:
        d = start(interval_seconds=3600, sync_on_start=False, run=locked_writer(), webhook_port=0,
                  debounce_seconds=0.1, lock_wait_seconds=0.3)
        assert wait_for(lambda: d.webhook is not None)
        body = json.dumps({"id": "evt", "type": "invoice.paid"}).encode()
        assert post(d.webhook, body, {"Stripe-Signature": sign(body, "whsec_x")}) == 200
        assert wait_for(lambda: d.skipped >= 2)  # waited its 0.3 s twice while the holder held on
        assert d.runs == 0
        assert "sync (webhook invoice.paid) still waits: another sync holds" in caplog.text
        assert f"(pid {holder.pid})" in caplog.text
    finally:
        let_go(holder)
    assert wait_for(lambda: d.runs == 1)
    assert wait_for(lambda: ((read_state(d.settings.db) or {}).get("last_run") or {}).get("reason")
                    == "webhook invoice.paid")
    time.sleep(1.0)
    assert d.runs == 1  # no retry after the run


def test_a_webhook_sync_refused_at_once_retries_at_the_lock_wait_not_in_a_loop(start: Callable[..., Daemon]) -> None:
    """A store refused at once, not after the lock wait (DuckDB's own lock: another process holds the file open, a
    duckdb shell on it), retries the webhook's sync a lock wait later, not at once in a loop of attempts and log
    lines (126 attempts in 1.5 s)."""
    from stripe_churn.errors import StoreLockedError

    free = threading.Event()
    attempts: list[float] = []
    inner = locked_writer()

    def run(settings: Settings, **kw: Any) -> RunSummary:
        attempts.append(time.monotonic())
        if not free.is_set():
            raise StoreLockedError("the store is in use by another process", held="the store is in use")
        return inner(settings, **kw)

    d = start(interval_seconds=3600, sync_on_start=False, run=run, lock_wait_seconds=0.3, debounce_seconds=0.1)
    d.webhook_event("invoice.paid")
    # (waited for, not slept: the attempts counted after a fixed 1.5 s were fewer than 2 when the daemon took a
    # second and a half to start, as on a loaded machine)
    assert wait_for(lambda: len(attempts) >= 4, timeout=30)
    free.set()
    assert wait_for(lambda: d.runs == 1)
    # about one per 0.3 s: each try a lock wait after the last one began, less the moment that takes to reach the run
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert min(gaps) >= 0.15 and (attempts[-1] - attempts[0]) / len(gaps) >= 0.25, gaps


def test_no_run_follows_at_once_a_run_that_failed(start: Callable[..., Daemon]) -> None:
    """Events during a run that fails owe no run right after it: that would retry at once, past the backoff (the
    backoff and the next tick take the events too)."""
    from test_webhook import post, sign

    release = threading.Event()
    calls: list[float] = []

    def failing(settings: Settings, **kw: Any) -> RunSummary:
        calls.append(time.monotonic())
        assert release.wait(timeout=30)
        raise TransientError("Stripe kept answering 503")

    d = start(interval_seconds=3600, run=failing, webhook_port=0, debounce_seconds=0.1)
    assert wait_for(lambda: d.webhook is not None and len(calls) == 1)
    body = json.dumps({"id": "evt", "type": "invoice.paid"}).encode()
    assert post(d.webhook, body, {"Stripe-Signature": sign(body, "whsec_x")}) == 200
    assert wait_for(lambda: d.skipped >= 1)  # the debounced sync found the failing run going
    release.set()
    assert wait_for(lambda: (read_state(d.settings.db) or {}).get("last_error") is not None)
    time.sleep(1.0)
    assert len(calls) == 1


def test_a_second_daemon_on_the_store_exits_2_naming_the_first(tmp_path: Path) -> None:
    """Two daemons on one store would both sync and overwrite each other's state file: the second one stops at once
    with one line naming the first one's pid, and leaves the state file as the first one wrote it."""
    db = tmp_path / "two.duckdb"
    env = {**os.environ, "STRIPE_CHURN_DB": str(db), "STRIPE_API_KEY": "sk_test_sandbox",
           "STRIPE_API_BASE": "http://127.0.0.1:9", "STRIPE_CHURN_LOG_LEVEL": "INFO"}
    cmd = [sys.executable, "-m", "stripe_churn", "daemon", "--no-sync-on-start", "--interval-seconds", "3600"]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(cmd, env=env, stderr=log, text=True)
    try:
        assert wait_for(lambda: (read_state(db) or {}).get("state") == "started", timeout=30)
        before = (tmp_path / "two.duckdb.daemon.json").read_bytes()
        try:
            second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("a second daemon on the same store kept running")
        assert second.returncode == 2, second.stderr
        assert second.stderr.count("\n") == 1 and f"pid {first.pid}" in second.stderr, second.stderr
        assert (tmp_path / "two.duckdb.daemon.json").read_bytes() == before
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=15) == 0
    finally:
        first.kill()
        log.close()
    state = read_state(db)
    assert state is not None and state["state"] == "stopped" and state["pid"] == first.pid


DAEMON_PROC = textwrap.dedent("""
    import logging, sys, threading, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_daemon import locked_writer
    from stripe_churn.daemon import Daemon
    from stripe_churn.settings import Settings
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    inner = locked_writer(batches=1000, batch_s=0.05)
    def run(settings, **kw):
        print("running", flush=True)
        return inner(settings, **kw)
    d = Daemon(Settings(db=Path(sys.argv[1])), interval_seconds=3600, run=run)
    sys.exit(d.run_forever())
""")


@pytest.mark.parametrize("signum", [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")])
def test_a_signal_mid_run_stops_cleanly_and_keeps_committed_batches(tmp_path: Path, signum: signal.Signals) -> None:
    """SIGTERM and SIGINT stop the daemon cleanly mid-run (SIGHUP reloads its settings: test_daemon_reload)."""
    db = tmp_path / "sig.duckdb"
    log = (tmp_path / "daemon.log").open("w")
    p = subprocess.Popen([sys.executable, "-c", DAEMON_PROC, str(db), str(Path(__file__).parent)],
                         stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "running"
        time.sleep(0.5)
        t0 = time.monotonic()
        p.send_signal(signum)
        try:
            code = p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit 15 s after {signum.name}:\n" + (tmp_path / "daemon.log").read_text()[-3000:])
        elapsed = time.monotonic() - t0
    finally:
        p.kill()
        log.close()
    stderr = (tmp_path / "daemon.log").read_text()
    assert code == 0, stderr
    assert elapsed < 10
    assert f"{signum.name} received" in stderr and "daemon stopped" in stderr
    state = read_state(db)
    assert state is not None and state["state"] == "stopped" and state["last_run"]["status"] == "stopped"
    committed = state["last_run"]["counts"]["batches"]
    assert 0 < committed < 1000
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM batches").fetchone() == (committed,)
    con.close()


def test_a_daemon_started_under_nohup_outlives_a_sighup(tmp_path: Path) -> None:
    """`nohup stripe-churn daemon &` ignores SIGHUP so that the daemon outlives its terminal: the daemon's own
    handler (a reload) must not take that back. SIGTERM still stops it."""
    db = tmp_path / "nohup.duckdb"
    log = (tmp_path / "daemon.log").open("w")
    p = subprocess.Popen([sys.executable, "-c", DAEMON_PROC, str(db), str(Path(__file__).parent)],
                         stdout=subprocess.PIPE, stderr=log, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "running"
        p.send_signal(signal.SIGHUP)
        with pytest.raises(subprocess.TimeoutExpired):
            p.wait(timeout=2)
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=15) == 0
    finally:
        p.kill()
        log.close()
    stderr = (tmp_path / "daemon.log").read_text()
    assert "SIGHUP received" not in stderr and "SIGTERM received" in stderr, stderr


def test_the_signal_handler_waits_on_no_lock_the_main_thread_may_hold(tmp_path: Path) -> None:
    """A signal is handled between two bytecodes of the main thread, which spends its time in ``stop_event.wait``
    and holds the event's lock around each check: a handler that set the event there waited on that lock forever
    (a daemon that never exited after SIGTERM). The handler runs here on a thread while the lock is held."""
    d = Daemon(Settings(db=tmp_path / "d.duckdb"), interval_seconds=3600, run=locked_writer())
    with d.stop_event._cond:  # type: ignore[attr-defined]  # the lock Event.wait holds around its checks
        handler = threading.Thread(target=d.handle_signal, args=(signal.SIGTERM, None), daemon=True)
        handler.start()
        handler.join(timeout=10)
        assert not handler.is_alive()
    main = threading.Thread(target=d.run_forever, kwargs={"install_signals": False})
    main.start()
    # (the main loop passes the noted signal on as a stop; a start and a stop that write the state four times took
    # more than 5 s with each write 1 s slow, as a loaded disk's fsync may be)
    main.join(timeout=30)
    assert not main.is_alive() and d.stop_event.is_set()
    state = read_state(d.settings.db)
    assert state is not None and state["state"] == "stopped"


@pytest.mark.parametrize("signum", [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")])
def test_daemon_cli_against_the_sandbox_stops_on_a_signal(tmp_path: Path, signum: signal.Signals) -> None:
    """The real command: first sync from the sandbox, scheduled runs, SIGTERM (or SIGINT) mid-sync, data intact."""
    pytest.importorskip("stripe_churn.sync")
    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.settings import SANDBOX_KEY
    from stripe_churn.store.snapshot import snapshot_path

    db = tmp_path / "real.duckdb"
    with start_in_thread(Simulation(customers=60, months=6, seed=2), api_key=SANDBOX_KEY, latency_ms=5) as sb:
        env = {**os.environ, "STRIPE_CHURN_DB": str(db), "STRIPE_API_KEY": SANDBOX_KEY, "STRIPE_API_BASE": sb.url,
               "STRIPE_RATE_LIMIT": "1000"}
        log = (tmp_path / "daemon.log").open("w")
        p = subprocess.Popen([sys.executable, "-m", "stripe_churn", "daemon", "--interval-seconds", "1"],
                             env=env, stderr=log, text=True)
        try:
            assert wait_for(lambda: snapshot_path(db).exists(), timeout=40)
            sb.advance(1)
            time.sleep(1.2)  # the next tick is syncing now, or about to
            t0 = time.monotonic()
            p.send_signal(signum)
            try:
                code = p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pytest.fail(f"no exit 15 s after {signum.name}:\n" + (tmp_path / "daemon.log").read_text()[-3000:])
            assert time.monotonic() - t0 < 10
        finally:
            p.kill()
            log.close()
        assert code == 0, (tmp_path / "daemon.log").read_text()[-2000:]
    state = read_state(db)
    assert state is not None and state["state"] == "stopped"
    con = duckdb.connect(str(db), read_only=True)
    try:
        runs = con.execute("SELECT status FROM sync_runs").fetchall()
        assert runs and all(r[0] != "running" for r in runs)
    finally:
        con.close()


def test_a_run_missed_while_the_machine_slept_runs_when_it_wakes(start: Callable[..., Daemon], tmp_path: Path) -> None:
    """A machine that was suspended (or a paused VM) wakes hours past a scheduled time: that run is owed, once,
    however late (README: missed ticks are coalesced into one). APScheduler dropped a time missed by more than
    5 minutes with a WARNING, and a daily schedule went a day without a sync."""
    # (a yearly schedule: the tick missed is the only one between its time and now)
    d = start(Settings(db=tmp_path / "d.duckdb", schedule="0 0 1 1 *"), sync_on_start=False, run=locked_writer())
    assert wait_for(lambda: (read_state(d.settings.db) or {}).get("state") == "started")
    # what the scheduler finds when the machine wakes: its tick's time two hours in the past
    d.scheduler.modify_job("scheduled-sync", next_run_time=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
    assert wait_for(lambda: d.runs == 1, timeout=5)
    time.sleep(0.5)
    assert d.runs == 1  # the missed ticks are one run


def test_the_scheduler_looks_at_the_wall_clock_again_while_it_waits(start: Callable[..., Daemon],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler's thread waits for its next tick on the monotonic clock, which stands still while the machine
    is suspended: after a night asleep it would still wait out the rest of its wait before seeing the tick it
    missed (hours for a daily schedule). The daemon makes it look at the wall clock again every so often; here the
    tick's time is moved into the past behind the scheduler's back, as the wall clock moves during a suspend."""
    import stripe_churn.daemon as daemon_module

    monkeypatch.setattr(daemon_module, "_WAKE_SCHEDULER_S", 0.5)
    d = start(interval_seconds=3600, sync_on_start=False, run=locked_writer())
    assert wait_for(lambda: (read_state(d.settings.db) or {}).get("state") == "started")
    time.sleep(0.3)  # (the scheduler thread is in its hour-long wait now)
    store = d.scheduler._lookup_jobstore("default")  # (no modify_job: that would wake the scheduler)
    job = store.lookup_job("scheduled-sync")
    job._modify(next_run_time=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    store.update_job(job)
    assert wait_for(lambda: d.runs == 1, timeout=5)


@pytest.mark.parametrize("account", [pytest.param("acct_mine", id="connected-account"),
                                     pytest.param(None, id="platform")])
def test_a_webhook_event_of_another_account_or_mode_starts_no_sync(start: Callable[..., Daemon], tmp_path: Path,
                                                                    account: str | None) -> None:
    """An endpoint that listens to connected accounts gets the events of all of them, signed with one secret (and a
    key's account has test and live events): only those of the account and mode the daemon syncs start a sync. Every
    connected account's invoices started a sync of this one, each using the platform's rate limit."""
    from test_webhook import post, sign

    settings = Settings(db=tmp_path / "d.duckdb", webhook_secret=Secret("whsec_x"), api_key=Secret("rk_live_x"),
                        account=account)
    d = start(settings, interval_seconds=3600, sync_on_start=False, run=locked_writer(), webhook_port=0,
              debounce_seconds=0.1)
    assert wait_for(lambda: d.webhook is not None)

    def deliver(**fields: Any) -> None:
        body = json.dumps({"id": "evt_1", "object": "event", "type": "invoice.paid", **fields}).encode()
        assert post(d.webhook, body, {"Stripe-Signature": sign(body, "whsec_x")}) == 200

    mine = {"account": account} if account else {}
    others: list[dict[str, Any]] = [{"account": "acct_other", "livemode": True},  # another connected account
                                    {"livemode": False, **mine}]  # this account's test mode
    if not account:
        others.append({"account": "acct_mine", "livemode": True})  # a connected account of the platform synced
    for fields in others:
        deliver(**fields)
    time.sleep(1.0)
    assert d.runs == 0
    deliver(livemode=True, **mine)
    assert wait_for(lambda: d.runs == 1)
    if account:  # (an endpoint of the connected account itself: its events name no account)
        deliver(livemode=True)
        assert wait_for(lambda: d.runs == 2)


def test_a_run_that_crashes_is_one_error_line_without_the_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected failure of a run is one ERROR line (DuckDB's messages run over several lines, and the traceback
    over dozens: the journal kept them as lines of their own, without time or level) with no secret in it, in the log
    and in the state file that `status` prints; the traceback goes to DEBUG, as the commands do."""
    key = "rk_live_51abcdefghijklmn"

    def run(settings: Settings, **kw: Any) -> RunSummary:
        con = duckdb.connect()
        try:
            con.execute(f"SELECT * FROM {key}")  # (a catalog error: its message quotes the name and the query)
        finally:
            con.close()
        return RunSummary(status="ok")

    caplog.set_level("DEBUG", logger="stripe_churn.daemon")
    d = Daemon(Settings(db=tmp_path / "d.duckdb", api_key=Secret(key)), interval_seconds=3600, run=run)
    d.tick("schedule")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    line = logging.Formatter("%(levelname)s %(name)s: %(message)s").format(errors[0])
    assert "\n" not in line and "Catalog Error: Table with name" in line and key not in line, line
    state = read_state(d.settings.db)
    assert state is not None
    message = state["last_error"]["message"]
    assert "\n" not in message and message.startswith("CatalogException: Catalog Error") and key not in message
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records)  # (the traceback)


def test_a_daemon_refused_for_its_schedule_says_so_in_status(tmp_path: Path) -> None:
    """A bad schedule stops the daemon at start (exit 2, one line), which under systemd restarts it every 30 s;
    `status` showed the last daemon's "stopped" with no error at all. It says why now, as for a port in use; and a
    daemon that runs meanwhile keeps its state file."""
    db = tmp_path / "d.duckdb"
    env = {"STRIPE_CHURN_DB": str(db), "STRIPE_API_KEY": "sk_test_x", "STRIPE_API_BASE": "http://127.0.0.1:9"}

    def run_a_daemon(then: Callable[[], None]) -> None:
        d = Daemon(Settings(db=db), interval_seconds=3600, sync_on_start=False, run=locked_writer())
        t = threading.Thread(target=d.run_forever, kwargs={"install_signals": False})
        t.start()
        try:
            assert wait_for(lambda: (read_state(db) or {}).get("state") == "started")
            then()
        finally:
            d.request_stop()
            t.join(timeout=15)

    def refused_meanwhile() -> None:
        before = read_state(db)
        with pytest.raises(ConfigError):
            Daemon(Settings(db=db, schedule="61 * * * *"))
        assert read_state(db) == before  # (not the running daemon's error)

    run_a_daemon(refused_meanwhile)
    assert (read_state(db) or {}).get("state") == "stopped"
    result = CliRunner().invoke(cli, ["daemon"], env={**env, "STRIPE_CHURN_SCHEDULE": "61 * * * *"})
    assert result.exit_code == 2 and "bad STRIPE_CHURN_SCHEDULE '61 * * * *'" in result.output
    status = CliRunner().invoke(cli, ["status", "--format", "json"], env=env)
    assert status.exit_code == 0, status.output
    info = json.loads(status.output)
    assert info["daemon"].startswith("crashed (pid "), info
    assert "fatal: bad STRIPE_CHURN_SCHEDULE '61 * * * *'" in info["daemon_error"]


def test_the_start_line_says_the_schedule_is_in_utc_and_when_it_runs_next(start: Callable[..., Daemon], tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The cron schedule is read in UTC, whatever the machine's zone and its daylight saving: the start line says so
    and gives the next run's time, so that "0 6 * * *" meant as 06:00 in Berlin is seen to be 07:00 or 08:00 there."""
    caplog.set_level("INFO", logger="stripe_churn.daemon")
    start(Settings(db=tmp_path / "d.duckdb", schedule="0 6 * * *"), sync_on_start=False, run=locked_writer())
    assert wait_for(lambda: any(r.getMessage().startswith("daemon started") for r in caplog.records))
    now = dt.datetime.now(dt.UTC)
    nxt = now.replace(hour=6, minute=0, second=0, microsecond=0)
    nxt += dt.timedelta(days=1) if nxt <= now else dt.timedelta()
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("daemon started"))
    assert "in UTC" in line and f"next run {nxt.isoformat(sep=' ')}" in line, line


def test_webhook_events_during_a_webhook_run_make_one_run_follow_it(start: Callable[..., Daemon],
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Events that come while a webhook's own sync runs (a billing run sends many, minutes apart) are owed a run
    after it, as during any other run: APScheduler dropped their job, of the same id as the one running, with a
    WARNING ("maximum number of running instances reached"), and they waited for the next scheduled tick."""
    from test_webhook import post, sign

    caplog.set_level("INFO")
    run, release, started, ended = first_run_held()

    d = start(interval_seconds=3600, sync_on_start=False, run=run, webhook_port=0, debounce_seconds=0.1)
    assert wait_for(lambda: d.webhook is not None)

    def deliver(etype: str) -> None:
        body = json.dumps({"id": "evt", "type": etype}).encode()
        assert post(d.webhook, body, {"Stripe-Signature": sign(body, "whsec_x")}) == 200

    deliver("invoice.created")
    assert wait_for(lambda: len(started) == 1)  # the webhook's sync runs
    deliver("invoice.paid")
    # (waited for, not slept: a sync that reached tick() after a fixed 0.5 s found the run over and ran as any other,
    # the test passing without a run following one)
    assert wait_for(lambda: d.skipped >= 1)  # its debounce is over: it found the run going
    assert "sync (webhook invoice.paid) will start when the run going ends" in caplog.text
    release.set()
    assert wait_for(lambda: d.runs == 2), caplog.text[-2000:]
    assert started[1] >= ended[0]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_ticks_skipped_for_a_store_held_open_say_so_in_status(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A program that keeps the store itself open (a duckdb shell, a notebook, a BI tool: DuckDB lets one process
    open it) makes every scheduled run skip. That was an INFO line per tick and nothing in `status` (no error, the
    sync lock free): a daemon that had not synced for days looked healthy. From the second tick in a row it is a
    WARNING, and `status` says since when the runs are skipped and who holds the store, until a run gets it."""
    from stripe_churn.store.db import open_store

    db = tmp_path / "held.duckdb"
    open_store(db).close()
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(60)", str(db)], stdout=subprocess.PIPE, text=True)
    env = {"STRIPE_CHURN_DB": str(db)}
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        caplog.set_level("INFO", logger="stripe_churn.daemon")
        d = Daemon(Settings(db=db, api_key=Secret("sk_test_x"), api_base="http://127.0.0.1:9", max_retries=0),
                   interval_seconds=3600)
        for _ in range(3):
            d.tick("schedule")
        assert d.runs == 0 and d.skipped == 3
        skips = [r for r in caplog.records if r.getMessage().startswith("sync skipped")]
        assert [r.levelname for r in skips] == ["INFO", "WARNING", "WARNING"]
        assert f"pid {holder.pid}" in skips[-1].getMessage() and "3 ticks in a row" in skips[-1].getMessage()
        status = CliRunner().invoke(cli, ["status", "--format", "json"], env=env)
        assert status.exit_code == 0, status.output
        daemon = json.loads(status.output)["daemon"]
        assert "scheduled syncs skipped since " in daemon and "(3 ticks)" in daemon and f"pid {holder.pid}" in daemon
    finally:
        holder.kill()
        holder.wait(timeout=10)
    d.tick("schedule")  # (the store is free: the run gets it, and fails on Stripe, which is not there)
    state = read_state(db)
    assert state is not None and state["last_error"]["kind"] == "transient" and state.get("skipping") is None
    status = CliRunner().invoke(cli, ["status", "--format", "json"], env=env)
    assert "skipped" not in json.loads(status.output)["daemon"]


def test_a_run_after_skipped_ticks_is_counted_once_status_no_longer_says_they_skip(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run counts (``runs``) once its state is written: the run that gets the store after ticks skipped for it
    ends those skips in the state in the same write. They were cleared in a write of their own after the count, and
    a reader who saw the count could still find `status` saying the scheduled syncs were skipped (made certain here
    by a write of that clearing 0.3 s slow)."""
    from stripe_churn.errors import StoreLockedError

    db = tmp_path / "d.duckdb"
    inner = locked_writer()
    calls: list[str] = []

    def run(settings: Settings, **kw: Any) -> RunSummary:
        calls.append("run")
        if len(calls) <= 2:
            raise StoreLockedError("the store is in use by another process", held="the store is in use")
        return inner(settings, **kw)

    real_save = Daemon._save

    def slow_clearing(self: Daemon, **changes: Any) -> None:
        if "skipping" in changes and changes["skipping"] is None:
            time.sleep(0.3)
        real_save(self, **changes)

    monkeypatch.setattr(Daemon, "_save", slow_clearing)
    d = Daemon(Settings(db=db), interval_seconds=3600, run=run)
    d.tick("schedule")
    d.tick("schedule")
    assert d.skipped == 2 and ((read_state(db) or {}).get("skipping") or {}).get("ticks") == 2
    t = threading.Thread(target=d.tick, args=("schedule",))
    t.start()
    try:
        assert wait_for(lambda: d.runs == 1)
        state = read_state(db)
        assert state is not None and state["last_run"]["reason"] == "schedule" and state.get("skipping") is None, state
    finally:
        t.join(timeout=30)
