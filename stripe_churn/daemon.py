"""The daemon: scheduled syncs (cron from settings), one at a time under the shared lock, clean stop on SIGTERM or
SIGINT, settings read again on SIGHUP (a reload refused keeps the settings running).

Transient errors are retried after a backoff in time (1, 2, 4 ... minutes, at most the schedule's interval or an
hour); fatal ones wait for the next scheduled run. Both are logged and kept in ``<db>.daemon.json`` so that
``stripe-churn status`` shows them (a transient one with when the next try is).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import signal
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from stripe_churn.errors import (
    ConfigError,
    FatalError,
    StoreLockedError,
    StripeChurnError,
    TransientError,
    explained,
)
from stripe_churn.lock import daemon_lock
from stripe_churn.settings import DEFAULT_CONFIG, Settings, read_text_file, redact_secrets, redacted_line

log = logging.getLogger(__name__)

# after a transient failure the next try comes this long after it, twice as long after each further one in a row, and
# never later than the schedule's shortest interval or RETRY_MAX_S: a blip costs a minute, an outage an attempt an
# hour at most (a daily schedule lost a day, or more, to one failure when the retries waited for ticks)
RETRY_FIRST_S = 60.0
RETRY_MAX_S = 3600.0
# a webhook's sync waits this long for another process's run to let go of the store, then logs and waits again
WEBHOOK_LOCK_WAIT_S = 60.0
_POLL_S = 0.2  # how often the main loop looks for a signal that asked for a stop
# scheduled ticks at once: one running and the next ones skipping (a skip takes microseconds)
_TICK_INSTANCES = 4
# how often the main loop has the scheduler look at the wall clock again: its thread waits for the next tick on the
# monotonic clock, which stands still while the machine is suspended (it would wait out the rest of a daily wait
# after a night asleep before seeing the tick it missed)
_WAKE_SCHEDULER_S = 60.0


def state_path(db: Path) -> Path:
    """``<db>.daemon.json`` beside the database."""
    return db.with_name(db.name + ".daemon.json")


def read_state(db: Path) -> dict[str, Any] | None:
    """The daemon's last written state, or None when no daemon ever ran against this database."""
    try:
        data: dict[str, Any] = json.loads(state_path(db).read_text(encoding="utf-8"))
        return data
    except (OSError, ValueError):
        return None


def _write_state(path: Path, state: dict[str, Any]) -> None:
    """``state`` written to ``path`` for good: into a temporary file beside it, synced to disk, renamed over it, and
    the folder synced (where its file system allows); the temporary file removed when any of that fails (OSError)."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    data = json.dumps(state, indent=1, default=str).encode("utf-8")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # (a rename before the data reach the disk may leave an empty file after a crash)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    try:
        folder = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(folder)  # (the rename itself)
    except OSError:
        pass
    finally:
        os.close(folder)


def store_of_refused_settings(config: Path | None,
                              env: Mapping[str, str] | None = None) -> tuple[Path, list[str]] | None:
    """The store that settings refused still name, and the secrets they hold, for the state file of a daemon they
    stopped: the environment's STRIPE_CHURN_DB, else the settings file's ``db``, else the default store when there
    is no file (as :func:`stripe_churn.settings.load_settings` reads them). None when that cannot be told: the file
    is missing, unreadable or no TOML, its ``db`` no text, or the path holds a secret."""
    env = os.environ if env is None else env
    path = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    data: dict[str, Any] | None = {}
    if path is not None:
        try:
            data = tomllib.loads(read_text_file(Path(path), f"config file {path}", ""))
        except (StripeChurnError, tomllib.TOMLDecodeError):
            data = None
    secrets = [value for value in (env.get("STRIPE_API_KEY"), env.get("STRIPE_WEBHOOK_SECRET"),
                                   *((data or {}).get(key) for key in ("api_key", "webhook_secret")))
               if isinstance(value, str) and value]
    db: Any = env.get("STRIPE_CHURN_DB") or None
    if db is None:
        if data is None:
            return None
        db = data.get("db", str(Settings().db))
    if not isinstance(db, str) or not db or redact_secrets(db, secrets) != db:
        return None
    return Path(db).expanduser(), secrets


def refused_at_start(message: str, settings: Settings | None = None, config: Path | None = None) -> bool:
    """What stops the daemon at start (a setting, an option, no key) written to the state file as `crashed` with
    ``message`` (one line, secrets masked), for `status` to show: a service manager restarts the daemon meanwhile,
    over and over, and `status` showed the last daemon's state. The store is ``settings``', or when they were
    refused, the one they name (:func:`store_of_refused_settings`, from the file ``config``). Nothing is written
    when the store cannot be told, when neither it nor a state file exists yet (a daemon started in another
    folder), or when another daemon has it (the state file is that one's). True when written; never raises."""
    try:
        if settings is not None:
            db, secrets = settings.db, [settings.api_key.reveal(), settings.webhook_secret.reveal()]
        else:
            found = store_of_refused_settings(config)
            if found is None:
                log.debug("the settings name no store: no state file is written")
                return False
            db, secrets = found
        if not (db.exists() or state_path(db).exists()):
            return False  # (neither a store nor a daemon here yet: a daemon started in the wrong folder litters none)
        at = _now()
        state: dict[str, Any] = {"pid": os.getpid(), "state": "crashed", "started_at": at, "last_run": None,
                                 "last_error": {"at": at, "kind": "fatal", "message": redacted_line(message, secrets)}}
        with daemon_lock(db):
            previous = read_state(db)
            if previous and previous.get("last_error"):
                state["previous_error"] = _without_retry(previous["last_error"])
            _write_state(state_path(db), state)
        return True
    except Exception as other:  # (DaemonRunningError, OSError: the error that stopped the daemon is what counts)
        log.debug("the state file is left as it is: %s", other)
        return False


_RETRY_SAID = "; the daemon tries again at "


def _without_retry(error: Any) -> Any:
    """An earlier daemon's last error without the retry it promised (that daemon is gone: a daemon killed while it
    backed off left "the daemon tries again at ..." in its state, which no one will do)."""
    if not isinstance(error, dict) or "retry_at" not in error:
        return error
    kept = {k: v for k, v in error.items() if k != "retry_at"}
    if isinstance(kept.get("message"), str):
        kept["message"] = kept["message"].split(_RETRY_SAID, 1)[0]
    return kept


# cron's day-of-week numbers: 0 (and 7) Sunday, 1 Monday ... 6 Saturday
_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DOW_ITEM = re.compile(r"(?:(?P<star>\*)|(?P<first>[0-9]+|[a-z]+)(?:-(?P<last>[0-9]+|[a-z]+))?)(?:/(?P<step>[0-9]+))?$",
                       re.IGNORECASE)


def _cron_day(value: str, *, last: bool) -> int:
    """A day of the week as cron numbers it (a name too; ``sun`` ends a range as 7)."""
    if value.isdigit():
        day = int(value)
        if day > 7:
            raise ValueError(f"day of week {day} is not between 0 and 7")
        return day
    try:
        day = _CRON_DAYS.index(value.lower())
    except ValueError:
        raise ValueError(f"unknown day of week {value!r} (use 0-7 or sun, mon, ... sat)") from None
    return 7 if last and day == 0 else day


def cron_weekdays(field: str) -> str:
    """Cron's day-of-week field as the day names APScheduler 3 reads.

    APScheduler 3 numbers the days from Monday (0), cron from Sunday (0 or 7): the numbers, ranges, lists and
    steps are worked out here in cron's numbering and handed over as names, which both read alike.
    """
    if field == "*":
        return field
    days: set[int] = set()
    for item in field.split(","):
        m = _DOW_ITEM.match(item)
        if m is None:
            raise ValueError(f"bad day-of-week item {item!r}")
        step = int(m["step"] or 1)
        if step == 0:
            raise ValueError(f"step 0 in day-of-week item {item!r}")
        if m["star"]:
            first, last = 0, 6
        else:
            first = _cron_day(m["first"], last=False)
            last = _cron_day(m["last"], last=True) if m["last"] else (7 if m["step"] else first)
            if first > last:
                raise ValueError(f"day-of-week range {item!r} runs backwards")
        days.update(day % 7 for day in range(first, last + 1, step))
    return ",".join(_CRON_DAYS[day] for day in sorted(days, key=lambda d: (d - 1) % 7))


def _one_line(text: str, settings: Settings) -> str:
    """``text`` for one log line and the state file, the settings' secrets masked (:func:`redacted_line`)."""
    return redacted_line(text, [settings.api_key.reveal(), settings.webhook_secret.reveal()])


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    """``seconds`` in words for a log line: "45 s", "2 min", "1 h"."""
    if seconds < 60:
        return f"{seconds:.3g} s"
    if seconds < 3600:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def shortest_interval(trigger: BaseTrigger, now: dt.datetime | None = None, fires: int = 12) -> float | None:
    """The shortest time in seconds between two of the trigger's next ``fires`` fire times from ``now`` (a cron
    schedule's gaps differ: ``0,5 * * * *`` has 5 and 55 minutes), or None when it fires less than twice."""
    if isinstance(trigger, IntervalTrigger):
        return float(trigger.interval.total_seconds())
    previous = None
    at = now or dt.datetime.now(dt.UTC)
    gaps: list[float] = []
    for _ in range(fires):
        nxt = trigger.get_next_fire_time(previous, at)
        if nxt is None:
            break
        if previous is not None:
            gaps.append((nxt - previous).total_seconds())
        previous = at = nxt
    return min(gaps) if gaps else None


class Daemon:
    """Runs ``run(settings, wait=..., stop=...)`` on a schedule until :meth:`request_stop`.

    ``run`` defaults to :func:`stripe_churn.pipeline.run_once`; tests pass ``interval_seconds`` instead of
    waiting for the cron schedule. ``reload`` reads the settings again (from the same file and environment as at
    start) when SIGHUP asks for it; without it a SIGHUP changes nothing.
    """

    def __init__(self, settings: Settings, *, sync_on_start: bool = True, interval_seconds: float | None = None,
                 webhook_port: int | None = None, webhook_host: str | None = None,
                 run: Callable[..., Any] | None = None, debounce_seconds: float = 2.0,
                 lock_wait_seconds: float = WEBHOOK_LOCK_WAIT_S, retry_first_seconds: float = RETRY_FIRST_S,
                 reload: Callable[[], Settings] | None = None) -> None:
        if run is None:
            from stripe_churn.pipeline import run_once

            run = run_once
        self.settings = settings
        self.sync_on_start = sync_on_start
        self._webhook_options = (webhook_port, webhook_host)  # (the command's options: they win over the settings)
        self.webhook_port, self.webhook_host = self._webhook_address(settings)
        self._reload = reload
        self._interval_seconds = interval_seconds
        self._reload_asked = False  # SIGHUP came (set by handle_signal only; the main loop reloads)
        self._last_failed = False  # the last run failed (a reload that changes a setting then tries at once)
        self.debounce_seconds = debounce_seconds
        self.lock_wait_seconds = lock_wait_seconds  # how long a webhook's sync waits for another process's run
        self.retry_first_seconds = retry_first_seconds  # the wait before the first retry of a transient failure
        self._run = run
        self.stop_event = threading.Event()
        self._signalled = 0  # the signal that asked for a stop (set by handle_signal only)
        self._job_lock = threading.Lock()
        # a webhook's sync that found a run going: the reason of the one run that follows it (None: none owed);
        # read and written under _follow_lock, with _job_lock taken or let go in the same block, so that an
        # event is never noted just after the run it waited for looked for one
        self._follow_up: str | None = None
        self._follow_lock = threading.Lock()
        # transient failures in a row, when the retry comes (None: not backing off), its job's id, and the last
        # failure's message (the state file's, without the retry's time, once no retry comes: the daemon stopped)
        self._failures = 0
        self._retry_at: dt.datetime | None = None
        self._retry_job: str | None = None
        self._retry_jobs = 0
        self._failure_message = ""
        # scheduled ticks in a row that found the store held by another process, and the first one's time
        self._lock_skips = 0
        self._lock_skips_since: str | None = None
        self.runs = 0
        self.skipped = 0
        self._state_lock = threading.Lock()
        self._state_unwritten = False  # a write of the state failed, and none succeeded since (logged once)
        self._state: dict[str, Any] = {"pid": os.getpid(), "state": "starting", "started_at": _now(),
                                       "last_run": None, "last_error": None}
        previous = read_state(settings.db)
        if previous and previous.get("last_error"):
            self._state["previous_error"] = _without_retry(previous["last_error"])
        try:
            self.trigger = self._make_trigger(interval_seconds, settings.schedule, settings.from_file("schedule"))
        except ConfigError as exc:
            refused_at_start(str(exc), settings)
            raise
        self._interval_s = shortest_interval(self.trigger)
        # (misfire_grace_time None: a tick missed while the machine slept runs when it wakes, however late, once)
        self.scheduler = BackgroundScheduler(timezone=dt.UTC, job_defaults={
            "max_instances": 1, "coalesce": True, "misfire_grace_time": None})
        self.webhook: Any = None

    def _webhook_address(self, settings: Settings) -> tuple[int | None, str]:
        """The webhook's port (None: no webhook) and host: the command's options, else the settings'."""
        port, host = self._webhook_options
        return (port if port is not None else settings.webhook_port), (host or settings.webhook_host)

    @staticmethod
    def _make_trigger(interval_seconds: float | None, schedule: str, file: str | None = None) -> BaseTrigger:
        """The schedule's trigger; a ConfigError when it is no five-field cron expression that fires, naming the
        setting in ``file`` when that config file gave it, else the variable STRIPE_CHURN_SCHEDULE."""
        if interval_seconds:
            return IntervalTrigger(seconds=interval_seconds, timezone=dt.UTC)
        try:
            fields = schedule.split()
            if len(fields) != 5:
                raise ValueError(f"{len(fields)} fields, not 5")
            minute, hour, day, month, weekdays = fields
            if day != "*" and weekdays != "*":
                # (cron runs on the days either field names; this scheduler only on days both name)
                raise ValueError("both the day of the month and the weekday are restricted, which cron reads as "
                                 "either of them; restrict one of the two")
            trigger = CronTrigger(minute=minute, hour=hour, day=day, month=month,
                                  day_of_week=cron_weekdays(weekdays), timezone=dt.UTC)
            if trigger.get_next_fire_time(None, dt.datetime.now(dt.UTC)) is None:
                # (the 31st of February, say: the daemon would run and never sync, with a healthy status)
                raise ValueError("it never fires (no such day in those months)")
            return trigger
        except ValueError as exc:
            named = (f"STRIPE_CHURN_SCHEDULE {schedule!r}" if file is None
                     else f"schedule {schedule!r} (setting 'schedule' in {file})")
            raise ConfigError(f"bad {named}: {exc}; "
                              "use a five-field cron expression such as '*/30 * * * *'") from exc

    # -- state -------------------------------------------------------------------------------------------
    def _save(self, **changes: Any) -> None:
        """Apply ``changes`` to the state and write it.

        The main thread and a run's thread save at the same moments (started, a run's end): one at a time, or both
        would write the same temporary file and one change would be lost. A write that fails (a full disk) stops
        nothing: one WARNING, then DEBUG lines until a write succeeds again."""
        path = state_path(self.settings.db)
        with self._state_lock:
            self._state.update(changes)
            try:
                _write_state(path, self._state)
            except OSError as exc:
                if self._state_unwritten:
                    log.debug("cannot write daemon state %s: %s", path, exc)
                else:
                    log.warning("cannot write daemon state %s: %s; the daemon runs on, and says when it can again "
                                "(`status` shows the last state written meanwhile)", path, exc)
                self._state_unwritten = True
            else:
                if self._state_unwritten:
                    log.info("daemon state %s written again", path)
                self._state_unwritten = False

    # -- jobs --------------------------------------------------------------------------------------------
    def tick(self, reason: str = "schedule", wait: float = 0.0, follow: bool = False) -> None:
        """One scheduled run: skipped when another run holds the lock or while backing off.

        With ``follow`` (a webhook's sync), finding a run of this daemon going is no skip: one more run follows
        that one as soon as it ends (however many events asked for it meanwhile), since the run going may have
        listed the events before those that arrived."""
        if self.stop_event.is_set():
            return
        retry_at = self._retry_at
        if retry_at is not None and dt.datetime.now(dt.UTC) < retry_at and (reason == "schedule" or follow):
            # (the retry takes the events too; a webhook's sync at each event of a billing run would hammer a
            # Stripe that keeps failing, and a tick would retry before the backoff's time)
            log.info("sync %s (%s): backing off after %d transient failure(s) in a row; the next try is at %s",
                     "waits for the retry" if follow else "skipped", reason, self._failures,
                     retry_at.isoformat(sep=" ", timespec="seconds"))
            return
        with self._follow_lock:
            if not self._job_lock.acquire(blocking=False):
                if not follow:
                    log.info("sync skipped (%s): a run in this daemon is still going", reason)
                elif self._follow_up is None:
                    self._follow_up = reason
                    log.info("sync (%s) will start when the run going ends", reason)
                else:
                    log.info("sync (%s) joins the one that starts when the run going ends", reason)
                self.skipped += 1  # (counted once logged, as runs are once their state is written)
                return
        succeeded = False
        locked_out = False
        retry: str | None = None
        began = time.monotonic()
        self._cancel_retry()  # (this run is the try: a failure schedules the next one)
        settings = self.settings  # (the run keeps the settings it began with: a reload meanwhile is for the next)
        try:
            log.info("sync starting (%s)", reason)
            # progress as log lines, at most one per 5 s, on a terminal too (no bars among the daemon's log lines)
            summary = self._run(settings, wait=wait, stop=self.stop_event, progress="log")
            self._failures, self._retry_at, self._last_failed = 0, None, False
            succeeded = True
            info = summary.as_dict() if hasattr(summary, "as_dict") else {"result": str(summary)}
            # (this run got the store: the skips in a row end with it, in the same write)
            self._save(last_run={"at": _now(), "reason": reason, "status": info.get("status"),
                                 "counts": info.get("counts"), "new_movements": info.get("new_movements")},
                       last_error=None, previous_error=None,  # (the last daemon's, shown until a run succeeds)
                       **self._end_skips())
            self.runs += 1  # (counted once its state is written: a reader who sees the count sees the state)
        except StoreLockedError as exc:
            locked_out = True
            if follow:
                # (a webhook's events are Stripe's news of a change: another process's run, a manual `sync` maybe
                # hours long, may have listed before them, so they wait for it rather than for the next tick)
                log.info("sync (%s) still waits: %s; trying again", reason, exc.held)
                retry = reason
            else:
                # (once is a manual `sync` at the same moment; more in a row, a store held for a whole interval or
                # more, as by a program that keeps the store itself open: a WARNING, and in the state for `status`)
                held = _one_line(exc.held, settings)
                self._lock_skips += 1
                self._lock_skips_since = self._lock_skips_since or _now()
                if self._lock_skips == 1:
                    log.info("sync skipped (%s): %s; the next tick tries again", reason, held)
                else:
                    log.warning("sync skipped (%s), %d ticks in a row since %s: %s; the next tick tries again",
                                reason, self._lock_skips, self._lock_skips_since, held)
                self._save(skipping={"since": self._lock_skips_since, "ticks": self._lock_skips, "held": held})
            self.skipped += 1  # (once its lines and state are written)
        except TransientError as exc:
            self._failures += 1
            self._last_failed = True
            delay = self.retry_delay(self._failures)
            when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delay)
            message = self._failure_message = _one_line(str(exc), settings)
            shown = when.isoformat(sep=" ", timespec="seconds")
            log.warning("sync failed (%d in a row), will retry in %s, at %s: %s", self._failures, _duration(delay),
                        shown, message)
            self._save(last_error={"at": _now(), "kind": "transient", "retry_at": when.isoformat(timespec="seconds"),
                                   "message": f"{message}{_RETRY_SAID}{shown} (failure "
                                              f"{self._failures} in a row)"})
            self._schedule_retry(when)
        except (FatalError, StripeChurnError) as exc:
            # (no retry before the next scheduled run: a key, a setting or a permission waits for a person)
            self._failures, self._retry_at, self._last_failed = 0, None, True
            message = _one_line(str(explained(exc)), settings)
            log.error("sync failed and needs a person: %s", message)
            self._save(last_error={"at": _now(), "kind": "fatal", "message": message})
        except Exception as exc:
            self._failures, self._retry_at, self._last_failed = 0, None, True
            # (one line, as every log line: the traceback at DEBUG, as the commands log it)
            message = _one_line(f"{type(exc).__name__}: {exc}", settings)
            log.error("sync crashed: %s (STRIPE_CHURN_LOG_LEVEL=DEBUG logs the traceback)", message)
            log.debug("sync crashed", exc_info=True)
            self._save(last_error={"at": _now(), "kind": "fatal", "message": message})
        finally:
            if not locked_out and self._lock_skips:  # (this run got the store, and failed)
                self._save(**self._end_skips())
            with self._follow_lock:
                self._job_lock.release()
                follow_up, self._follow_up = self._follow_up, None
            # (after a run that failed or was skipped none follows at once: the backoff and the next tick take
            # the events too)
            if follow_up is not None and succeeded:
                self._schedule_webhook_sync(follow_up, dt.datetime.now(dt.UTC), "follow-up-sync")
            elif retry is not None:
                # (at once after a full wait for the lock; else, as when DuckDB itself refused the file, which
                # another process held open, the rest of a wait later: never a loop of attempts)
                rest = max(0.0, self.lock_wait_seconds - (time.monotonic() - began))
                self._schedule_webhook_sync(retry, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=rest),
                                            "webhook-retry-sync")

    def _end_skips(self) -> dict[str, Any]:
        """A run got the store: the scheduled ticks skipped in a row for it end. The state's change that says so
        (none when there were none), for the write of the run's end."""
        if not self._lock_skips:
            return {}
        self._lock_skips, self._lock_skips_since = 0, None
        return {"skipping": None}

    def retry_delay(self, failures: int) -> float:
        """Seconds from the ``failures``-th transient failure in a row to the next try: ``retry_first_seconds``,
        doubled at each further failure, at most the schedule's shortest interval or ``RETRY_MAX_S``."""
        cap = min(RETRY_MAX_S, self._interval_s or RETRY_MAX_S)
        return min(self.retry_first_seconds * 2 ** min(max(failures - 1, 0), 30), cap)

    def _schedule_retry(self, when: dt.datetime) -> None:
        """The next try of a transient failure at ``when``, as a job of its own (scheduled ticks skip until then)."""
        self._retry_at = when
        if self.stop_event.is_set():
            return
        # (an id of its own each time: the job that runs this try may still be in the job store, which removes it
        # by id once it has been handed to a thread)
        self._retry_jobs += 1
        self._retry_job = f"retry-sync-{self._retry_jobs}"
        self.scheduler.add_job(self.tick, "date", run_date=when, id=self._retry_job, kwargs={"reason": "retry"})

    def _cancel_retry(self) -> None:
        job, self._retry_job = self._retry_job, None
        if job is not None:
            with contextlib.suppress(JobLookupError):
                self.scheduler.remove_job(job)

    def _schedule_once(self, reason: str, when: dt.datetime, job_id: str, **tick: Any) -> None:
        """A run for ``reason`` at ``when``, ``tick``'s other arguments given (none when one of ``job_id`` waits
        already). More than one instance, as the scheduled ticks: the job of an event that comes while the sync of an
        earlier one runs reaches tick(), which has a run follow that one; APScheduler dropped it with a WARNING."""
        if self.stop_event.is_set():
            return
        try:
            self.scheduler.add_job(self.tick, "date", run_date=when, id=job_id, max_instances=_TICK_INSTANCES,
                                   kwargs={"reason": reason, **tick})
        except ConflictingIdError:
            log.debug("%s already scheduled", job_id)

    def _schedule_webhook_sync(self, reason: str, when: dt.datetime, job_id: str) -> None:
        self._schedule_once(reason, when, job_id, wait=self.lock_wait_seconds, follow=True)

    def webhook_event(self, event_type: str) -> None:
        """Debounce: the first event schedules a sync a few seconds out; events before it runs join it, and so
        do events while it waits for a run going (see :meth:`tick`)."""
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.debounce_seconds)
        self._schedule_webhook_sync(f"webhook {event_type}", when, "webhook-sync")

    # -- lifecycle ---------------------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        """Ask the daemon to stop: the running sync finishes its batch and commits."""
        if not self.stop_event.is_set():
            log.info("stop requested")
            self.stop_event.set()

    def handle_signal(self, signum: int, _frame: Any) -> None:
        """SIGTERM/SIGINT (a stop), SIGHUP (a reload): only note it; the main loop acts within ``_POLL_S``.

        A handler runs between two bytecodes of the main thread, which spends its time in ``stop_event.wait`` and
        may hold the event's lock at that moment: setting the event (or logging, whose stream may be mid-write)
        from here could wait on that lock forever, and the daemon would never exit."""
        if signum == signal.SIGHUP:
            self._reload_asked = True
        else:
            self._signalled = signum

    def reload_settings(self) -> bool:
        """Read the settings again (``reload``) and run on with them: the schedule, the rate limit, the key, the
        webhook's secret, the rules... from the next run (the run going keeps its own). Settings refused, or that
        a running daemon cannot take (another store, another webhook address), are one ERROR line, and the
        settings running stay. True when the new settings were taken."""
        if self._reload is None:
            log.warning("reload asked: this daemon was given its settings in code, it has none to read again; it "
                        "runs on as it was")
            return False
        old = self.settings
        new: Settings | None = None
        try:
            new = self._reload()
            new.require_api_key()
            trigger = self._check_reload(old, new)
        except Exception as exc:
            secrets = [old.api_key.reveal(), old.webhook_secret.reveal()]
            if new is not None:
                secrets += [new.api_key.reveal(), new.webhook_secret.reveal()]
            text = str(exc) if isinstance(exc, StripeChurnError) else f"unexpected {type(exc).__name__}: {exc}"
            message = redacted_line(text, secrets)
            log.error("reload refused, the daemon runs on with the settings it had: %s", message)
            # (kept for `status` until a reload is taken: an operator who sent SIGHUP looks there for the outcome)
            self._save(reload_refused={"at": _now(), "message": message})
            return False
        changed = [f.name for f in dataclasses.fields(new)
                   if f.name not in ("source", "origins") and getattr(new, f.name) != getattr(old, f.name)]
        if trigger is not None:
            job = self.scheduler.reschedule_job("scheduled-sync", trigger=trigger)
            self.trigger, self._interval_s = trigger, shortest_interval(trigger)
            upcoming = getattr(job, "next_run_time", None)
            log.info("schedule '%s', in UTC; next run %s", new.schedule,
                     upcoming.astimezone(dt.UTC).isoformat(sep=" ") if upcoming else "none")
        if self.webhook is not None:
            self.webhook.configure(new.webhook_secret.reveal(), account=new.account, livemode=self._livemode(new),
                                   secrets=[new.api_key.reveal()])
        self.settings = new
        if self._state.get("reload_refused"):
            self._save(reload_refused=None)
        if new.log_level != old.log_level:
            logging.getLogger().setLevel(new.log_level)
            logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))
        log.info("settings read again from %s: %s", new.source,
                 f"{', '.join(changed)} changed, for the next run" if changed else "nothing changed")
        if changed and self._last_failed:
            # (a person fixed what failed: a key, a setting; the try need not wait for the schedule or a backoff)
            self._schedule_once("reload", dt.datetime.now(dt.UTC), "reload-sync")
        return True

    def _check_reload(self, old: Settings, new: Settings) -> BaseTrigger | None:
        """A ConfigError for settings a running daemon cannot take; the new schedule's trigger (None: unchanged)."""
        if new.db != old.db:
            raise ConfigError(f"setting 'db' changed from {old.db} to {new.db}: a daemon keeps the store it started "
                              "with; restart it to sync another store")
        port, host = self._webhook_address(new)
        if (port, host) != (self.webhook_port, self.webhook_host):
            was = f"{self.webhook_host}:{self.webhook_port}" if self.webhook_port is not None else "none"
            now = f"{host}:{port}" if port is not None else "none"
            raise ConfigError(f"the webhook's address changed from {was} to {now}: a daemon keeps the address it "
                              "started with; restart it to listen elsewhere")
        if port is not None and not new.webhook_secret:
            raise ConfigError("the webhook needs STRIPE_WEBHOOK_SECRET (the endpoint's signing secret, whsec_...)")
        if self._interval_seconds or new.schedule == old.schedule:
            return None
        return self._make_trigger(None, new.schedule, new.from_file("schedule"))

    @staticmethod
    def _livemode(settings: Settings) -> bool | None:
        """The mode of the events to take (None: any): the key's, when its prefix says it."""
        from stripe_churn.sync import key_mode

        mode = key_mode(settings.api_key.reveal())
        return None if mode is None else mode == "live"

    def run_forever(self, install_signals: bool = True) -> int:
        """Block until stopped; 0 after a clean stop. Raises :class:`DaemonRunningError`, with the state file left
        as it is, when another daemon has the store."""
        with daemon_lock(self.settings.db):
            return self._run_until_stopped(install_signals)

    def _run_until_stopped(self, install_signals: bool) -> int:
        if install_signals:  # (SIGHUP too: a reload; its default kills the process at once)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                # a signal the daemon was started ignoring stays ignored: `nohup` ignores SIGHUP so that the daemon
                # outlives its terminal (it cannot be reloaded then), and a shell's `&` ignores SIGINT
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    signal.signal(signum, self.handle_signal)
        logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))
        crashed = True
        try:
            self._save(state="starting")
            if self.webhook_port is not None:  # (its port is taken first: a bad one stops the daemon before a sync)
                from stripe_churn.webhook import WebhookServer

                # (only the events of the account and mode synced: an endpoint that listens to connected accounts
                # gets all of theirs; a key's prefix says its mode, the sandbox's too)
                self.webhook = WebhookServer(self.settings.webhook_secret.reveal(), self.webhook_event,
                                             host=self.webhook_host, port=self.webhook_port,
                                             account=self.settings.account, livemode=self._livemode(self.settings),
                                             secrets=[self.settings.api_key.reveal()])
            # (more than one instance: a tick that finds a run going reaches tick(), which skips it with one INFO
            # line; APScheduler's own limit would log a WARNING at every tick of a long run)
            self.scheduler.add_job(self.tick, self.trigger, id="scheduled-sync", max_instances=_TICK_INSTANCES)
            if self.sync_on_start:
                self.scheduler.add_job(self.tick, "date", run_date=dt.datetime.now(dt.UTC), id="start-sync",
                                       kwargs={"reason": "start"})
            self.scheduler.start()
            if self.webhook is not None:
                self.webhook.start()
                self._save(webhook_url=self.webhook.url)
            self._save(state="started")
            # (the zone said: "0 6 * * *" is 06:00 UTC, 07:00 or 08:00 in Berlin by the season)
            job = self.scheduler.get_job("scheduled-sync")
            upcoming = getattr(job, "next_run_time", None)
            log.info("daemon started (schedule %s, in UTC; next run %s)",
                     f"'{self.settings.schedule}'" if isinstance(self.trigger, CronTrigger) else self.trigger,
                     upcoming.astimezone(dt.UTC).isoformat(sep=" ") if upcoming else "none")
            woken = time.monotonic()
            while not self.stop_event.wait(_POLL_S):
                if self._signalled:
                    log.info("%s received", signal.Signals(self._signalled).name)
                    self.request_stop()
                elif self._reload_asked:
                    self._reload_asked = False
                    log.info("SIGHUP received: reading the settings again")
                    try:
                        self.reload_settings()
                    except Exception as exc:  # (a reload never stops a daemon that syncs)
                        log.error("reload failed, the daemon runs on: %s",
                                  _one_line(f"{type(exc).__name__}: {exc}", self.settings))
                        log.debug("reload failed", exc_info=True)
                elif time.monotonic() - woken >= _WAKE_SCHEDULER_S:
                    woken = time.monotonic()
                    self.scheduler.wakeup()  # (a tick whose time passed while the machine slept runs now)
            self._save(state="stopping")
            if self.webhook is not None:
                self.webhook.stop()
            self.scheduler.shutdown(wait=True)
            crashed = False
            if self._retry_at is not None:  # (no retry comes now: `status` must not promise one)
                last = dict(self._state.get("last_error") or {})
                last.pop("retry_at", None)
                self._save(last_error={**last, "message": self._failure_message})
            return 0
        except StripeChurnError as exc:  # (a bad setting found on the way up): `status` shows why it stopped
            self._save(last_error={"at": _now(), "kind": "fatal", "message": _one_line(str(exc), self.settings)})
            raise
        except Exception as exc:  # (unexpected: its type and message, one line, as a run's)
            message = _one_line(f"{type(exc).__name__}: {exc}", self.settings)
            self._save(last_error={"at": _now(), "kind": "fatal", "message": message})
            raise
        finally:
            if crashed:
                self._save(state="crashed")
                log.error("daemon crashed")
            else:
                self._save(state="stopped")
                log.info("daemon stopped")
