"""The recompute's progress reports and its stop: a stop between or during steps rolls everything back."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from stripe_churn.errors import StoppedError
from stripe_churn.metrics import runner
from stripe_churn.settings import Settings

# a step that would run for hours: only an interrupt ends it
SLOW_STEP = ("45_slow.sql", "CREATE OR REPLACE TEMP TABLE slow AS SELECT sum(hash(range)) AS h FROM range(1000000000000);")


def results(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    return {"movements": con.execute("SELECT * FROM mrr_movements ORDER BY ALL").fetchall(),
            "customer_mrr": con.execute("SELECT * FROM customer_mrr ORDER BY ALL").fetchall(),
            "bridge": con.execute("SELECT * FROM mrr_bridge ORDER BY ALL").fetchall()}


def drop_half_the_subscriptions(con: duckdb.DuckDBPyConnection) -> None:
    """Raw data a finished recompute would turn into other results."""
    con.execute("DELETE FROM subscriptions WHERE hash(id) % 2 = 0")


def test_progress_is_reported_before_every_step_and_before_the_commit(sim_store: duckdb.DuckDBPyConnection) -> None:
    calls: list[tuple[int, int, str]] = []
    runner.recompute(sim_store, Settings(), progress=lambda done, total, name: calls.append((done, total, name)))
    names = [name for name, _ in runner.sql_steps()]
    assert calls == [(k, len(names), name) for k, name in enumerate(names)] + [(len(names), len(names), "")]


def test_a_stop_between_steps_rolls_back_and_keeps_the_previous_results(sim_store: duckdb.DuckDBPyConnection) -> None:
    con = sim_store
    runner.recompute(con, Settings())
    before = results(con)
    assert before["movements"]
    drop_half_the_subscriptions(con)
    stop = threading.Event()

    def stop_at_the_movements(done: int, total: int, name: str) -> None:
        if name.startswith("70"):
            stop.set()

    with pytest.raises(StoppedError, match="70_mrr_movements"):
        runner.recompute(con, Settings(), progress=stop_at_the_movements, stop=stop)
    assert results(con) == before
    # no transaction is left open, and the connection's setting is restored
    con.execute("BEGIN TRANSACTION")
    con.execute("ROLLBACK")
    assert con.execute("SELECT current_setting('preserve_insertion_order')").fetchall() == [(True,)]
    # without a stop the same recompute changes them (so the check above could fail)
    runner.recompute(con, Settings())
    assert results(con) != before


def test_a_stop_interrupts_the_running_step(sim_store: duckdb.DuckDBPyConnection,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    con = sim_store
    runner.recompute(con, Settings())
    before = results(con)
    drop_half_the_subscriptions(con)
    real = runner.sql_steps()
    monkeypatch.setattr(runner, "sql_steps", lambda: sorted([*real, SLOW_STEP]))
    stop = threading.Event()

    def stop_soon_after_the_slow_step_starts(done: int, total: int, name: str) -> None:
        if name == SLOW_STEP[0]:
            threading.Timer(0.3, stop.set).start()

    started = time.monotonic()
    with pytest.raises(StoppedError, match="during metrics step 45_slow"):
        runner.recompute(con, Settings(), progress=stop_soon_after_the_slow_step_starts, stop=stop)
    assert time.monotonic() - started < 30
    assert results(con) == before
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'slow'").fetchall() == [(0,)]


def test_a_stop_between_two_statements_of_a_step_ends_it_there(sim_store: duckdb.DuckDBPyConnection,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A step runs statement by statement: a stop that comes after one (when the interrupt it sends finds no running
    statement) ends the step before the next, and everything is rolled back."""
    con = sim_store
    runner.recompute(con, Settings())
    before = results(con)
    drop_half_the_subscriptions(con)
    two = ("45_two.sql", "CREATE OR REPLACE TEMP TABLE first_half AS SELECT 1 AS x;\n"
                         "CREATE OR REPLACE TEMP TABLE second_half AS SELECT 2 AS x;")
    real = runner.sql_steps()
    monkeypatch.setattr(runner, "sql_steps", lambda: sorted([*real, two]))
    stop = threading.Event()

    class StopAfterTheFirst(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("metrics statement 45_two.sql first_half took"):
                stop.set()

    handler = StopAfterTheFirst(logging.DEBUG)
    logger = logging.getLogger("stripe_churn.metrics.runner")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        with pytest.raises(StoppedError, match="during metrics step 45_two"):
            runner.recompute(con, Settings(), stop=stop)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert results(con) == before
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name IN ('first_half', 'second_half')"
                       ).fetchall() == [(0,)]


def test_every_statement_is_timed_at_debug_by_its_step_and_what_it_makes(sim_store: duckdb.DuckDBPyConnection,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """``STRIPE_CHURN_LOG_LEVEL=DEBUG`` (and ``scripts/bench_rollup.py --profile``) shows each statement's time."""
    with caplog.at_level(logging.DEBUG, logger="stripe_churn.metrics.runner"):
        runner.recompute(sim_store, Settings())
    timed = [r.args for r in caplog.records if r.msg == "metrics statement %s took %.3f s"]
    steps = {r.args[0]: r.args[1] for r in caplog.records if r.msg == "metrics step %s took %.3f s"}
    expected = [runner.statement_label(name, st.query)
                for name, text in runner.sql_steps() for st in sim_store.extract_statements(text)]
    assert [label for label, _ in timed] == expected
    assert "30_item_history.sql derived_item_history" in expected and "80_mrr_bridge.sql mrr_bridge" in expected
    for name, took in steps.items():
        assert sum(s for label, s in timed if label.startswith(name + " ")) <= took


class CountingParser:
    """A connection's parser that counts how often it is asked to parse."""

    def __init__(self) -> None:
        self.con = duckdb.connect()
        self.calls = 0

    def extract_statements(self, text: str) -> list[duckdb.Statement]:
        self.calls += 1
        return self.con.extract_statements(text)


def test_a_steps_text_is_parsed_once_and_its_statements_run_on_any_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every recompute runs the same texts: each is parsed once per process (0.13 s of every recompute), and a
    parsed statement runs on connections other than the one that parsed it, as often as asked."""
    monkeypatch.setattr(runner, "_PARSED", {})
    parser = CountingParser()
    text = "CREATE TABLE t AS SELECT 41 AS x;\nUPDATE t SET x = x + 1;"
    first = runner.parsed_statements(parser, text)  # type: ignore[arg-type]
    again = runner.parsed_statements(parser, text)  # type: ignore[arg-type]
    assert parser.calls == 1 and again is first and len(first) == 2
    for _ in range(2):
        other = duckdb.connect()
        for statement in runner.parsed_statements(other, text):
            other.execute(statement)
        assert other.execute("SELECT x FROM t").fetchall() == [(42,)]
    # (never more than _PARSED_MAX texts kept: past it the cache starts again)
    for k in range(runner._PARSED_MAX + 1):
        runner.parsed_statements(parser, f"SELECT {k};")  # type: ignore[arg-type]
    assert len(runner._PARSED) <= runner._PARSED_MAX
    runner.parsed_statements(parser, text)  # type: ignore[arg-type]
    assert parser.calls == runner._PARSED_MAX + 3


def test_without_a_terminal_progress_is_a_log_line_at_most_every_5_s(caplog: pytest.LogCaptureFixture) -> None:
    from stripe_churn.pipeline import _StepProgress

    shown = _StepProgress(True)
    with caplog.at_level("INFO", logger="stripe_churn.pipeline"):
        shown(0, 16, "10_price_terms.sql")  # (just started: nothing yet)
        shown._last_log -= 6.0
        shown(2, 16, "30_item_history.sql")
        shown(3, 16, "35_discounts.sql")  # (within 5 s of the last line)
    shown.close()
    lines = [r.getMessage() for r in caplog.records if "metrics progress" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("metrics progress: step 3 of 16 (30_item_history)"), lines
    quiet = _StepProgress(False)
    with caplog.at_level("INFO", logger="stripe_churn.pipeline"):
        quiet._last_log -= 6.0
        quiet(5, 16, "60_transitions.sql")
    assert len([r for r in caplog.records if "metrics progress" in r.getMessage()]) == 1


CTRL_C_SCRIPT = """
import sys
from stripe_churn.metrics import runner
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.settings import Settings
from stripe_churn.store.db import open_store
from stripe_churn.store.load import load_simulation

con = open_store(sys.argv[1])
load_simulation(con, Simulation(customers=20, months=4, seed=3))
runner.recompute(con, Settings())
before = con.execute("SELECT * FROM mrr_movements ORDER BY ALL").fetchall()
real = runner.sql_steps()
runner.sql_steps = lambda: sorted([*real, SLOW_STEP])

def tell(done, total, name):
    if name == SLOW_STEP[0]:
        print("slow step", flush=True)

try:
    runner.recompute(con, Settings(), progress=tell)
except KeyboardInterrupt as exc:
    print("KeyboardInterrupt:", exc, flush=True)
print("unchanged:", con.execute("SELECT * FROM mrr_movements ORDER BY ALL").fetchall() == before, flush=True)
"""


def test_sigterm_taken_as_ctrl_c_stops_a_recompute_whose_main_thread_runs_no_handler() -> None:
    """Under cli.sigterm_as_ctrl_c (`sync`, `demo`), SIGTERM sets the recompute's stop at once, as Ctrl-C does,
    while the main thread runs no Python handler (it waits on a DuckDB statement, which runs them only now and then):
    the recompute's watcher reads SIGTERM's wake-up byte and calls the handler, which sends the SIGINT. Here the
    signal is sent to another thread, which it interrupts instead of the main one."""
    from stripe_churn.cli import sigterm_as_ctrl_c

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # (else sigterm_as_ctrl_c does nothing)
    stop = threading.Event()
    with sigterm_as_ctrl_c() as terminated, runner._ctrl_c_sets(stop) as pressed:
        assert callable(signal.getsignal(signal.SIGTERM))  # (taken: SIGTERM does not end this process)
        go = threading.Event()

        def sigterm_here() -> None:
            go.wait()  # (the main thread holds the GIL until it waits below)
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

        other = threading.Thread(target=sigterm_here)
        other.start()
        go.set()
        stopped = stop.wait(5)  # (woken by the SIGINT the handler sends; without it, by nothing)
        other.join()
    assert stopped and pressed.is_set() and terminated.is_set()


@pytest.mark.parametrize("after", [0.5, 2.5])
def test_ctrl_c_during_a_step_is_a_keyboard_interrupt_and_rolls_back(tmp_path: Path, after: float) -> None:
    """Ctrl-C stops the running statement at once: the recompute rolls back and raises KeyboardInterrupt,
    which the commands turn into `interrupted` and exit code 130: inside a statement's first 2 s (when DuckDB's
    client does not look for it) and later. Nothing is printed on stdout but what the script prints (DuckDB's
    own progress bar, shown from 2 s on, is off the output)."""
    script = f"SLOW_STEP = {SLOW_STEP!r}\n" + CTRL_C_SCRIPT
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "c.duckdb")], stdout=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "slow step"
        time.sleep(after)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
        assert time.monotonic() - sent < 10
    finally:
        proc.kill()
    assert out.splitlines() == ["KeyboardInterrupt: Ctrl-C during metrics step 45_slow.sql", "unchanged: True"], out
