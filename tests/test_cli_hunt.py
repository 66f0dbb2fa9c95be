"""The commands as a demanding user meets them, run as `python -m stripe_churn ...` against one small sandbox and
one store synced from it: each failure is one line on stderr that says what to do, a non-zero exit code, and the
stored data as it was."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from stripe_churn.settings import SANDBOX_KEY
from stripe_churn.store.snapshot import snapshot_path

ROOT = Path(__file__).resolve().parents[1]


class Done:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code, self.out, self.err = proc.returncode, proc.stdout, proc.stderr

    @property
    def error(self) -> str:
        """The one error line (the log lines before it aside), checked to be one line without a traceback."""
        assert "Traceback" not in self.err, self.err
        lines = [ln for ln in self.err.splitlines() if ln.startswith("error: ")]
        assert len(lines) == 1 and self.err.rstrip().endswith(lines[0]), self.err
        return lines[0]


def run(env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 60) -> Done:
    full = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE")}
    full.update({"PYTHONPATH": str(ROOT), **env})
    return Done(subprocess.run([sys.executable, "-m", "stripe_churn", *args], env=full, cwd=cwd or ROOT,
                               capture_output=True, text=True, timeout=timeout))


def rows(db: Path, query: str) -> list[Any]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Any]:
    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation

    with start_in_thread(Simulation(customers=10, months=3, seed=5), api_key=SANDBOX_KEY) as sb:
        yield sb


@pytest.fixture(scope="module")
def store(sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A store synced once from the sandbox, and the environment that points the commands at both."""
    from stripe_churn.pipeline import run_once
    from stripe_churn.settings import Secret, Settings

    db = tmp_path_factory.mktemp("hunt") / "s.duckdb"
    run_once(Settings(api_key=Secret(SANDBOX_KEY), api_base=sandbox.url, db=db, rate_limit=1000.0), full=True,
             progress=False)
    return db, {"STRIPE_CHURN_DB": str(db), "STRIPE_API_KEY": SANDBOX_KEY, "STRIPE_API_BASE": sandbox.url,
                "STRIPE_RATE_LIMIT": "1000"}


def test_a_bad_schedule_from_the_file_names_the_file_not_the_environment(tmp_path: Path) -> None:
    """A schedule written in the config file is refused as that file's setting: the message sent the user to an
    environment variable they never set."""
    config = tmp_path / "c.toml"
    config.write_text('schedule = "* * *"\n', encoding="utf-8")
    done = run({"STRIPE_API_KEY": SANDBOX_KEY, "STRIPE_CHURN_DB": str(tmp_path / "d.duckdb")},
               "daemon", "--config", str(config))
    assert done.code == 2
    assert done.error == (f"error: bad schedule '* * *' (setting 'schedule' in {config}): 3 fields, not 5; use a "
                          "five-field cron expression such as '*/30 * * * *'")
    # (from the environment it is still the variable that is named)
    done = run({"STRIPE_API_KEY": SANDBOX_KEY, "STRIPE_CHURN_DB": str(tmp_path / "d.duckdb"),
                "STRIPE_CHURN_SCHEDULE": "61 * * * *"}, "daemon", "--config", str(config))
    assert done.code == 2 and "STRIPE_CHURN_SCHEDULE '61 * * * *'" in done.error


def test_a_store_path_that_is_a_folder_says_to_name_a_file(tmp_path: Path, store: tuple[Path, dict[str, str]]
                                                           ) -> None:
    """DuckDB's "Could not read from file ...: Is a directory" said nothing of what to do."""
    _, env = store
    for command in (["sync"], ["status"], ["sql", "SELECT 1"], ["report"]):
        done = run({**env, "STRIPE_CHURN_DB": str(tmp_path)}, *command)
        assert done.code == 2, done.err
        assert done.error == (f"error: setting 'db' in environment variable STRIPE_CHURN_DB names {tmp_path}, which is "
                              f"a folder: give the path of the database file in it, such as "
                              f"{tmp_path / 'stripe-churn.duckdb'}")
    assert list(tmp_path.iterdir()) == [] and not tmp_path.with_name(tmp_path.name + ".lock").exists()


def test_a_query_killed_while_it_spilled_to_disk_does_not_stop_the_syncs(store: tuple[Path, dict[str, str]]
                                                                         ) -> None:
    """A `sql` query that spilled to disk makes DuckDB's folder ``<db>.snapshot.tmp``, and a query killed then
    leaves it behind (with its spill files, gigabytes of them): every sync after failed on it as "a snapshot copy
    left by an interrupted run" (its name has eight letters), the daemon too, until a person removed it. The
    syncs leave the folder of a live query alone and clear what a dead one left."""
    db, env = store
    spill = db.with_name(db.name + ".snapshot.tmp")
    spill.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (spill / f"duckdb_temp_{dead.pid}_0_storage_DEFAULT-0.tmp").write_bytes(b"x" * 1000)
    live = spill / f"duckdb_temp_{os.getpid()}_0_storage_DEFAULT-0.tmp"
    live.write_bytes(b"y")
    before = rows(snapshot_path(db), "SELECT count(*) FROM sync_runs")[0][0]
    try:
        done = run(env, "sync")
        assert done.code == 0, done.err
        assert [p.name for p in spill.iterdir()] == [live.name]  # (a running query's spill is its own)
        assert rows(snapshot_path(db), "SELECT count(*) FROM sync_runs")[0][0] == before + 1
    finally:
        live.unlink()


def test_a_run_whose_metrics_failed_is_a_failed_run_in_status(store: tuple[Path, dict[str, str]]) -> None:
    """A reporting currency without rates stops the run after its sync: one line naming the currency and the dates,
    exit 2, the snapshot as it was. `status` showed that run `succeeded`, without its error, and counted the lag
    from it, while the metrics and the snapshot were as old as before."""
    db, env = store
    before = rows(snapshot_path(db), "SELECT count(*), max(started_at) FROM sync_runs")[0]
    done = run({**env, "STRIPE_CHURN_CURRENCY": "xyz"}, "sync")
    assert done.code == 2
    assert re.match(r"error: no exchange rate to xyz for .*\busd on \d{4}-\d\d-\d\d\.\.\d{4}-\d\d-\d\d ",
                    done.error), done.error
    assert rows(snapshot_path(db), "SELECT count(*), max(started_at) FROM sync_runs")[0] == before
    asked = dt.datetime.now(dt.UTC)
    status = run(env, "status", "--format", "json")
    answered = dt.datetime.now(dt.UTC)
    assert status.code == 0, status.err
    info = json.loads(status.out)
    last, *earlier = info["runs"]
    assert (last["status"], last["error"]) == ("failed", done.error.removeprefix("error: ")), last
    assert dt.datetime.fromisoformat(last["started_at"]) > before[1]
    # (the lag runs from the end of the last run that succeeded, the one before)
    ok = dt.datetime.fromisoformat(next(r for r in earlier if r["status"] == "succeeded")["finished_at"])
    h, m, sec = (int(n) for n in info["lag"].removesuffix(" since the last successful sync").split(":"))
    assert (asked - ok).total_seconds() - 1 <= h * 3600 + m * 60 + sec <= (answered - ok).total_seconds()
    done = run(env, "sync")
    assert done.code == 0, done.err
    assert json.loads(run(env, "status", "--format", "json").out)["runs"][0]["status"] == "succeeded"


@pytest.mark.parametrize("query", [
    "WITH gone AS (DELETE FROM customers RETURNING id) SELECT count(*) FROM gone",
    "EXPLAIN ANALYZE UPDATE customers SET deleted = true",
])
def test_a_write_inside_a_read_statement_is_refused_as_a_write(store: tuple[Path, dict[str, str]], query: str
                                                               ) -> None:
    """A write inside a SELECT or an EXPLAIN passes the statement filter and DuckDB's read-only snapshot refuses
    it: the line said 'Cannot execute statement of type "SELECT" ... read-only mode', not that writes are refused
    here and what to do instead."""
    db, env = store
    before = rows(snapshot_path(db), "SELECT count(*), count(*) FILTER (WHERE deleted) FROM customers")
    done = run(env, "sql", query)
    assert done.code == 2
    assert done.error.startswith("error: only read queries are allowed here (this one writes"), done.error
    assert "use `stripe-churn export` to write files" in done.error
    assert rows(snapshot_path(db), "SELECT count(*), count(*) FILTER (WHERE deleted) FROM customers") == before


def test_the_sandbox_takes_its_key_from_the_config_file_it_is_given(tmp_path: Path) -> None:
    """`sandbox --config FILE` read nothing of the file: given the same file, `sync --config FILE` was refused
    with a 401 by the sandbox it had just started. The key is `--api-key`, else STRIPE_API_KEY, else the file's
    api_key, else sk_test_sandbox."""
    import http.client

    config = tmp_path / "c.toml"
    config.write_text('api_key = "sk_test_fromTheFile42"\n', encoding="utf-8")
    config.chmod(0o600)
    full = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE")}
    proc = subprocess.Popen([sys.executable, "-m", "stripe_churn", "sandbox", "--customers", "2", "--months", "1",
                             "--port", "0", "--config", str(config)], env={**full, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.stderr else url
        host, port = url.removeprefix("http://").split(":")

        def answer(key: str) -> int:
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            try:
                conn.request("GET", "/v1/customers?limit=1", headers={"Authorization": f"Bearer {key}"})
                return conn.getresponse().status
            finally:
                conn.close()

        assert answer("sk_test_fromTheFile42") == 200
        assert answer(SANDBOX_KEY) == 401
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.parametrize(("query", "hint"), [
    ("SELECT * FROM mrr_bridg", 'Did you mean "mrr_bridge"?'),
    ("SELECT opening_mr FROM mrr_bridge", 'Candidate bindings: "opening_mrr"'),
])
def test_a_misspelt_name_in_sql_keeps_duckdbs_suggestion(store: tuple[Path, dict[str, str]], query: str, hint: str
                                                         ) -> None:
    """DuckDB follows "Table with name mrr_bridg does not exist!" with the names it meant on the next line: the one
    line kept its first line alone, which says what is wrong and not what to type instead."""
    _, env = store
    done = run(env, "sql", query)
    assert done.code == 2
    assert done.error.startswith("error: query failed: ") and hint in done.error, done.error
    assert "LINE 1" not in done.error


@pytest.mark.parametrize("when", ["after the sync", "during the recompute"])
def test_a_run_stopped_before_its_metrics_is_no_success_in_status(store: tuple[Path, dict[str, str]], sandbox: Any,
                                                                  monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    """A daemon stopped (SIGTERM: `systemctl restart`) after a run's sync, before its metrics were derived and
    published: the run stayed `succeeded` in sync_runs, and `status` counted the lag from it."""
    from stripe_churn.errors import StoppedError
    from stripe_churn.metrics import incremental
    from stripe_churn.pipeline import collect_status, run_once
    from stripe_churn.settings import Secret, Settings

    db, _ = store
    stop = threading.Event()
    if when == "during the recompute":
        def recompute(*args: Any, **kwargs: Any) -> Any:
            stop.set()
            raise StoppedError("stop requested")

        monkeypatch.setattr(incremental, "recompute_after_sync", recompute)
    else:
        import stripe_churn.sync as sync_module

        real = sync_module.run_sync

        def run_sync(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            stop.set()
            return result

        monkeypatch.setattr(sync_module, "run_sync", run_sync)
    published = snapshot_path(db).stat().st_mtime_ns
    summary = run_once(Settings(api_key=Secret(SANDBOX_KEY), api_base=sandbox.url, db=db, rate_limit=1000.0),
                       stop=stop, progress=False)
    assert summary.status == "stopped"
    assert snapshot_path(db).stat().st_mtime_ns == published
    info = collect_status(db)
    last, *earlier = info["runs"]
    assert (last["run_id"], last["status"], last["error"]) == (summary.run_id, "stopped", None)
    ok = next(r for r in earlier if r["status"] == "succeeded")["finished_at"]
    h, m, sec = (int(n) for n in info["lag"].removesuffix(" since the last successful sync").split(":"))
    assert h * 3600 + m * 60 + sec >= int((dt.datetime.now(dt.UTC) - ok).total_seconds()) - 1


def test_a_chart_of_a_store_without_revenue_says_why_not_of_a_range(tmp_path: Path) -> None:
    """`report --chart` of a store synced from an account with no subscription yet said "no bridge rows in that
    range" when no range was given, and nothing of what to do; the table's own line says it right."""
    from stripe_churn.pipeline import run_once
    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.settings import Secret, Settings

    db = tmp_path / "empty.duckdb"
    with start_in_thread(Simulation(customers=0, months=1, seed=5), api_key=SANDBOX_KEY) as sb:
        run_once(Settings(api_key=Secret(SANDBOX_KEY), api_base=sb.url, db=db, rate_limit=1000.0), full=True,
                 progress=False)
    env = {"STRIPE_CHURN_DB": str(db)}
    done = run(env, "report", "--chart", str(tmp_path / "mrr.png"))
    assert done.code == 2 and not (tmp_path / "mrr.png").exists()
    assert done.error == ("error: nothing to draw: the store holds no subscription revenue yet (`stripe-churn "
                          "status` shows what the last sync stored)"), done.error
    done = run(env, "report", "--html", str(tmp_path / "r.html"), "--from", "2020-01", "--to", "2020-02")
    assert done.code == 2 and done.error == ("error: nothing to draw: no bridge rows in that range or segment; "
                                             "widen --from/--to"), done.error


def test_status_says_when_another_program_holds_the_store(store: tuple[Path, dict[str, str]]) -> None:
    """A program of the user's with the store itself open (not the snapshot): every sync skips or fails on it, and
    `status` said nothing of it, reading the snapshot's runs as if all were well. It names the process; once the
    program closes the store, the line goes."""
    from click.testing import CliRunner

    from stripe_churn.cli import cli

    db, env = store

    def status(*args: str) -> str:
        done = CliRunner().invoke(cli, ["status", *args], env=env)
        assert done.exit_code == 0, done.output
        return done.output

    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
                               "print('open', flush=True); sys.stdin.read()", str(db)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        info = json.loads(status("--format", "json"))
        assert re.fullmatch(rf"the store {re.escape(str(db))} is in use by another process \(.+, pid {holder.pid}\): "
                            "syncs wait or fail until it closes the store", info["store_held"]), info
        assert info["runs"], info  # (the snapshot's runs, as before)
        assert f"store held: the store {db} is in use by another process" in status()
    finally:
        holder.communicate("", timeout=30)
    assert "store_held" not in json.loads(status("--format", "json"))
