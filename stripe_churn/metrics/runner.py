"""Recompute every derived table and finance view from the raw tables, in one transaction.

All logic lives in the ``*.sql`` files beside this module (one step or view each, run in name order); this
module only writes the settings they read, runs them, logs how long each took and turns a failed check
(such as a missing exchange rate) into a :class:`~stripe_churn.errors.DataError`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import os
import re
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import duckdb

from stripe_churn.errors import DataError, StoppedError
from stripe_churn.settings import Settings, check_rules
from stripe_churn.store.db import rollback

log = logging.getLogger(__name__)

_PACKAGE = "stripe_churn.metrics"


def sql_steps() -> list[tuple[str, str]]:
    """The package's SQL steps as (file name, text), in the order they run."""
    root = resources.files(_PACKAGE)
    names = sorted(p.name for p in root.iterdir() if p.name.endswith(".sql"))
    return [(name, root.joinpath(name).read_text(encoding="utf-8")) for name in names]


# Python modules whose text decides derived rows besides the SQL steps: the runner and the incremental path,
# and the typed columns the store extracts at load time.
_CODE_MODULES = (("stripe_churn.metrics", "runner.py"), ("stripe_churn.metrics", "incremental.py"),
                 ("stripe_churn.store", "schema.py"))


def code_digest(con: duckdb.DuckDBPyConnection) -> str:
    """What the derived rows of every customer depend on besides the raw objects, the exchange rates and the rules:
    the SQL steps, the modules that run them or fill the typed columns they read, the package's version and the
    store's migrations (a migration may fill typed columns anew)."""
    from stripe_churn import __version__

    h = hashlib.sha256(__version__.encode())
    for name, text in sql_steps():
        h.update(f"\0{name}\0{text}".encode())
    for package, name in _CODE_MODULES:
        h.update(f"\0{name}\0".encode() + resources.files(package).joinpath(name).read_bytes())
    for (name,) in con.execute("SELECT name FROM schema_migrations ORDER BY name").fetchall():
        h.update(f"\0{name}".encode())
    return h.hexdigest()[:32]


def fx_digest(con: duckdb.DuckDBPyConnection) -> str:
    """The stored exchange rates, as one digest (every customer billed in a currency depends on its rates)."""
    row = con.execute("SELECT count(*), md5(coalesce(string_agg(concat_ws('|', date, lower(currency), rate), ',' "
                      "ORDER BY date, lower(currency), rate), '')) FROM fx_rates").fetchone()
    return f"{row[0]}:{row[1]}" if row else ""


def has_runs_table(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the store has ``metrics_runs`` (one opened without migrations has not)."""
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                            "AND schema_name = 'main' AND table_name = 'metrics_runs'").fetchall()[0][0])


def record_run(con: duckdb.DuckDBPyConnection, started_at: dt.datetime, mode: str, customers: int,
               reason: str | None = None) -> None:
    """Add the recompute that started at ``started_at`` to ``metrics_runs`` (inside its transaction, so that the
    row exists exactly when its results were committed). A store without the table (one opened without
    migrations) keeps no record."""
    if not has_runs_table(con):
        return
    con.execute("INSERT INTO metrics_runs (started_at, finished_at, mode, customers, reason, code_digest, fx_digest) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [started_at, dt.datetime.now(dt.UTC), mode, customers, reason, code_digest(con), fx_digest(con)])


# The largest amount money in the views holds (DECIMAL(18,4)). Every amount the views sum (levels and flows of
# any period, segment or cohort) is at most the sum of every movement's size, so below that nothing can fail.
_MONEY_MAX = 99_999_999_999_999


def check_money_fits(con: duckdb.DuckDBPyConnection) -> None:
    """Fail with a :class:`DataError` naming the amount when a monthly view's sum would not fit its DECIMAL(18,4)
    money columns, so that the recompute is refused (nothing changed) instead of every later query failing. One
    sum over the movements when no sum can be that large, as on any real account."""
    bound = con.execute("SELECT coalesce(sum(abs(mrr_delta)), 0) FROM derived_mrr_movements").fetchall()[0][0]
    if bound <= _MONEY_MAX:
        return
    try:
        # (read whole, so that each money column's own check names the amount that does not fit; the monthly views
        # are a few hundred rows)
        for view in ("mrr_bridge", "churn_reasons", "cohort_revenue_retention"):
            con.execute(f"SELECT * FROM {view}").fetchall()
    except duckdb.Error as exc:
        raise DataError(f"{first_line(exc)}; nothing was changed") from exc


def first_line(exc: BaseException) -> str:
    """A DuckDB error's message without its kind ("Invalid Input Error: "), on one line."""
    text = " ".join(str(exc).split("\n"))
    return text.split(": ", 1)[1] if text.split(": ", 1)[0].endswith("Error") else text


def write_settings(con: duckdb.DuckDBPyConnection, settings: Settings) -> None:
    """Write the rules of design.md 4 and 5 where the SQL reads them: one-row ``derived_settings`` and maps."""
    rules = settings.rules
    check_rules(rules, settings.source)
    con.execute(
        """
        CREATE OR REPLACE TABLE derived_settings (
            movement_window_minutes INTEGER, churn_recognition VARCHAR, include_metered BOOLEAN,
            pause_collection_keeps_mrr BOOLEAN, past_due_counts BOOLEAN, reporting_currency VARCHAR)
        """
    )
    con.execute(
        "INSERT INTO derived_settings VALUES (?, ?, ?, ?, ?, ?)",
        [rules.movement_window_minutes, rules.churn_recognition, rules.include_metered,
         rules.pause_collection_keeps_mrr, rules.past_due_counts, settings.currency.lower()],
    )
    con.execute("CREATE OR REPLACE TABLE derived_family_map (product_id VARCHAR PRIMARY KEY, family VARCHAR)")
    if rules.families:
        con.executemany("INSERT INTO derived_family_map VALUES (?, ?)", sorted(rules.families.items()))
    con.execute("CREATE OR REPLACE TABLE derived_unit_map (product_id VARCHAR PRIMARY KEY, unit_kind VARCHAR)")
    if rules.units:
        con.executemany("INSERT INTO derived_unit_map VALUES (?, ?)", sorted(rules.units.items()))
    con.execute("CREATE OR REPLACE TABLE derived_seat_labels (label VARCHAR PRIMARY KEY)")
    labels = sorted({label.strip().lower() for label in rules.seat_unit_labels if label.strip()})
    if labels:
        con.executemany("INSERT INTO derived_seat_labels VALUES (?)", [[label] for label in labels])


def _check_fx(con: duckdb.DuckDBPyConnection, reporting: str) -> None:
    rows: list[Any] = con.execute(
        "SELECT currency, first_date, last_date, customers FROM derived_fx_missing ORDER BY currency"
    ).fetchall()
    if not rows:
        return
    raise missing_rates_error(reporting, [f"{cur} on {first}..{last} ({n} customers)" for cur, first, last, n in rows])


def missing_rates_error(reporting: str, parts: list[str]) -> DataError:
    """The error for exchange rates missing to the reporting currency (``parts``: currency and days each)."""
    return DataError(
        f"no exchange rate to {reporting} for " + "; ".join(parts)
        + ": add rates (date, currency, rate) dated on or before those days to the exchange-rate file (setting "
        "fx_rates_file, a CSV; README \"Exchange rates\"), then sync again; the previous results were left in place"
    )


class _Interrupter:
    """Interrupts the connection's running statement once ``stop`` is set, and only while a step runs (an
    interrupted step aborts the transaction; between steps the loop checks ``stop`` itself)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, stop: threading.Event) -> None:
        self._con = con
        self._stop = stop
        self._lock = threading.Lock()
        self._in_step = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="recompute-stop", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.is_set():
            if self._stop.wait(0.1):
                with self._lock:
                    if self._in_step:
                        self._con.interrupt()
                return

    def step(self, running: bool) -> None:
        with self._lock:
            self._in_step = running

    def close(self) -> None:
        # (not joined: the watcher ends within 0.1 s by itself, and it no longer interrupts anything)
        with self._lock:
            self._in_step = False
        self._done.set()


@contextlib.contextmanager
def _ctrl_c_sets(stop: threading.Event) -> Iterator[threading.Event]:
    """In the main thread, Ctrl-C sets ``stop`` at once and the yielded event (which says it came); elsewhere
    nothing changes. (DuckDB's client looks for Ctrl-C only now and then while a statement runs, and not at all in its
    first 2 s, and a Python handler waits for the statement to end: the signal's wake-up byte is read on a
    thread of its own instead. SIGTERM's is too, and calls its handler there when it says it stops as Ctrl-C does,
    ``as_ctrl_c``: cli.sigterm_as_ctrl_c's, which sends the SIGINT.)"""
    pressed = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield pressed
        return
    r, w = os.pipe()
    os.set_blocking(w, False)
    done = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        pressed.set()
        stop.set()

    def watch() -> None:
        while not done.is_set():
            if not select.select([r], [], [], 0.1)[0]:
                continue
            got = os.read(r, 64)
            if signal.SIGINT in got:
                on_sigint(signal.SIGINT, None)
            elif signal.SIGTERM in got:
                # (SIGTERM taken as Ctrl-C, cli.sigterm_as_ctrl_c: its handler, which Python runs in the main thread
                # only once the statement lets it, sends the SIGINT read here; called now, as it allows)
                handler = signal.getsignal(signal.SIGTERM)
                if callable(handler) and getattr(handler, "as_ctrl_c", False):
                    handler(signal.SIGTERM, None)

    previous = signal.signal(signal.SIGINT, on_sigint)
    previous_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="recompute-ctrl-c", daemon=True)
    watcher.start()
    try:
        yield pressed
    finally:
        done.set()
        os.write(w, b"\0")  # (wakes the watcher now: a zero byte is no signal)
        watcher.join()
        signal.set_wakeup_fd(previous_fd)
        # (None: the previous handler was not set from Python; the default is the nearest we can restore)
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
        os.close(r)
        os.close(w)


def recompute(con: duckdb.DuckDBPyConnection, settings: Settings, *,
              progress: Callable[[int, int, str], None] | None = None,
              stop: threading.Event | None = None, reason: str | None = None) -> None:
    """Rebuild every derived table and view from the raw tables; all or nothing, safe to run twice.

    ``progress(done, total, name)`` is called before each step. When ``stop`` is set, the running step is
    interrupted and everything is rolled back (the previous results stay): :class:`StoppedError`. Ctrl-C
    (in the main thread) does the same and then raises KeyboardInterrupt. The run is recorded in
    ``metrics_runs`` with ``reason`` (why everything was derived when only the changed customers were asked for).
    """
    stop = stop if stop is not None else threading.Event()
    with _ctrl_c_sets(stop) as pressed:
        try:
            _recompute(con, settings, progress, stop, reason)
        except StoppedError as exc:
            if pressed.is_set():
                raise KeyboardInterrupt(str(exc).replace("stop requested", "Ctrl-C", 1)) from None
            raise


_MADE = re.compile(r"^\s*(?:CREATE\s+(?:OR\s+REPLACE\s+)?(?:TEMP(?:ORARY)?\s+)?(?:TABLE|VIEW|MACRO)"
                   r"(?:\s+IF\s+NOT\s+EXISTS)?|UPDATE|ALTER\s+TABLE|INSERT\s+INTO|DELETE\s+FROM)\s+([\w.]+)",
                   re.IGNORECASE)


def statement_label(step: str, sql: str) -> str:
    """How the DEBUG timings name one statement of a step: the step and the table, view or macro the statement
    makes or changes (``30_item_history.sql derived_item_history``), else the step and the statement's first
    word."""
    code = re.sub(r"--[^\n]*", " ", sql)  # (comments before the statement are part of its text)
    made = _MADE.search(code)
    return f"{step} {made.group(1) if made else (code.split() or ['?'])[0]}"


# Each step's text parsed once per process: parsing the 94 statements took 0.13 s of every recompute, about an
# eighth of a small store's (the suite's) and of each scope's fixed cost in the incremental path. DuckDB copies
# a parsed statement to run it, so one parse serves every connection and thread. (Keyed by the text itself; a
# process runs the same few texts, and the cache is emptied if ever it holds more.)
_PARSED: dict[str, tuple[duckdb.Statement, ...]] = {}
_PARSED_MAX = 64


def parsed_statements(con: duckdb.DuckDBPyConnection, text: str) -> tuple[duckdb.Statement, ...]:
    """``text``'s statements as DuckDB parses them (``con.extract_statements``), parsed once per process."""
    statements = _PARSED.get(text)
    if statements is None:
        statements = tuple(con.extract_statements(text))
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[text] = statements
    return statements


def run_statements(con: duckdb.DuckDBPyConnection, name: str, text: str, stop: threading.Event | None = None,
                   message: str = "metrics statement %s took %.3f s") -> None:
    """Run step ``name``'s statements one at a time, logging at DEBUG how long each took (``message``, with the
    statement's :func:`statement_label`; ``scripts/bench_rollup.py --profile`` prints the slowest). A ``stop``
    asked for between two of them ends the step there (the interrupt it sends lands on no running statement)."""
    timed = log.isEnabledFor(logging.DEBUG)  # (the label is built only for a log that shows it)
    for statement in parsed_statements(con, text):
        if stop is not None and stop.is_set():
            raise StoppedError(f"stop requested during metrics step {name}")
        t0 = time.perf_counter()
        con.execute(statement)
        if timed:
            log.debug(message, statement_label(name, statement.query), time.perf_counter() - t0)


def _recompute(con: duckdb.DuckDBPyConnection, settings: Settings,
               progress: Callable[[int, int, str], None] | None, stop: threading.Event,
               reason: str | None) -> None:
    steps = sql_steps()
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC)
    fx_checked = False
    # every step orders what it needs explicitly, so rows may come out in any order (less memory, more
    # parallel); the connection's own setting is restored afterwards
    preserve = con.execute("SELECT current_setting('preserve_insertion_order')").fetchall()[0][0]
    con.execute("SET preserve_insertion_order = false")
    interrupter = _Interrupter(con, stop)
    con.execute("BEGIN TRANSACTION")
    try:
        write_settings(con, settings)
        for k, (name, text) in enumerate(steps):
            if progress is not None:
                progress(k, len(steps), name)
            if stop.is_set():
                raise StoppedError(f"stop requested before metrics step {name}")
            t0 = time.perf_counter()
            interrupter.step(True)
            try:
                run_statements(con, name, text, stop)
            except duckdb.Error as exc:
                if stop.is_set():
                    raise StoppedError(f"stop requested during metrics step {name}") from exc
                raise DataError(f"metrics step {name} failed, nothing was changed: {exc}".replace("\n", " ")) from exc
            finally:
                interrupter.step(False)
            log.debug("metrics step %s took %.3f s", name, time.perf_counter() - t0)
            if not fx_checked and "TABLE derived_fx_missing" in text:
                _check_fx(con, settings.currency.lower())
                fx_checked = True
        if progress is not None:
            progress(len(steps), len(steps), "")
        if stop.is_set():
            raise StoppedError("stop requested before the metrics were committed")
        check_money_fits(con)
        customers = con.execute("SELECT count(*) FROM customers").fetchall()[0][0]
        record_run(con, started_at, "full", int(customers), reason)
        con.execute("COMMIT")
    except BaseException:
        rollback(con)
        raise
    finally:
        interrupter.close()
        con.execute(f"SET preserve_insertion_order = {'true' if preserve else 'false'}")
    log.info("metrics recomputed in %.2f s (%d steps)", time.perf_counter() - started, len(steps))
