"""What a new user gets wrong first, each answered by one line that says what to do (exit code 2, no traceback,
no key): a store or snapshot this user may not open, a key that is no secret key, a config file with a typo, a key
Stripe refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from stripe_churn.cli import cli
from stripe_churn.errors import StoreError, store_failure
from stripe_churn.store.db import open_store
from stripe_churn.store.snapshot import publish_snapshot, snapshot_path

KEY = "sk_test_" + "4eC39HqLyjWDarjtT1zdp7dc"


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.output


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A migrated store with its snapshot published: what `sync` and the readers open."""
    db = tmp_path / "s.duckdb"
    open_store(db).close()
    publish_snapshot(db)
    return db


def refuse_to_open(monkeypatch: pytest.MonkeyPatch, *paths: Path) -> None:
    """DuckDB answers as it does for a file of another user (tests may run as root, whom no mode stops)."""
    real = duckdb.connect

    def connect(database: Any = ":memory:", *args: Any, **kwargs: Any) -> Any:
        if str(database) in {str(p) for p in paths}:
            raise duckdb.IOException(f'IO Error: Cannot open file "{database}": Permission denied')
        return real(database, *args, **kwargs)

    monkeypatch.setattr(duckdb, "connect", connect)


@pytest.mark.parametrize("args", [["sync"], ["status"], ["sql", "SELECT 1"], ["report"]],
                         ids=lambda a: a[0])
def test_a_store_or_snapshot_this_user_may_not_open_says_what_to_do(
        store: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    """(it was `error: cannot open the store ...: IO Error: Cannot open file "...": Permission denied`: what DuckDB
    said, not what to do, as for a daemon's store that another user runs `sql` on)"""
    snap = snapshot_path(store)
    refuse_to_open(monkeypatch, store, snap)
    code, out = run({"STRIPE_CHURN_DB": str(store), "STRIPE_API_KEY": KEY, "STRIPE_API_BASE": "http://127.0.0.1:9"},
                    *args)
    assert code == 2 and out.count("\n") == 1, out
    opened = snap if args[0] in ("sql", "report") else store
    assert out.startswith(f"error: cannot open {opened} (Permission denied) as the user "), out
    assert "run the command as the user the store belongs to (the daemon's), or give " in out, out
    assert "IO Error" not in out and KEY not in out


@pytest.mark.parametrize("text", [
    pytest.param('IO Error: Cannot open file "/data/s.duckdb": Permission denied', id="open"),
    pytest.param('TransactionContext Error: Failed to commit: Cannot open file "/data/s.duckdb.wal": Permission '
                 'denied', id="commit-wal"),
])
def test_duckdbs_words_for_a_refused_file_become_one_line(text: str) -> None:
    """A sync whose commit could not create the write-ahead log (a folder it may not write) ended as `error:
    unexpected TransactionException: ...` with exit code 1."""
    refused = store_failure(duckdb.TransactionException(text))
    assert isinstance(refused, StoreError)
    path = text.split('"')[1]
    assert str(refused).startswith(f"cannot open {path} (Permission denied) as the user ")
    assert str(refused).endswith("what was committed before is kept")
    ro = store_failure(duckdb.IOException(f'IO Error: Cannot open file "{path}": Read-only file system'))
    assert str(ro).startswith(f"cannot write {path} (Read-only file system): make that place writable")
    assert store_failure(duckdb.IOException('IO Error: Cannot open file "/x": No such file or directory')) is None


def test_the_daemon_logs_and_keeps_the_same_line(tmp_path: Path) -> None:
    """The daemon's ERROR line and its state (what `status` shows) say what to do too."""
    from stripe_churn.daemon import Daemon, read_state
    from stripe_churn.settings import Settings

    db = tmp_path / "d.duckdb"

    def refused(settings: Settings, **kw: Any) -> Any:
        try:
            raise duckdb.IOException(f'IO Error: Cannot open file "{db}": Permission denied')
        except duckdb.IOException as exc:  # (as store.db.open_store words it)
            raise StoreError(f"cannot open the store {db}: {exc}") from None

    Daemon(Settings(db=db), interval_seconds=3600, run=refused).tick("test")
    message = (read_state(db) or {})["last_error"]["message"]
    assert message.startswith(f"cannot open {db} (Permission denied) as the user "), message


def _terminate(proc: Any) -> tuple[str, str]:
    """SIGTERM to the process ``proc`` (a ``subprocess.Popen`` of text), then its output once it ends (the test fails
    if it runs on 30 s later)."""
    import signal
    import subprocess

    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("still running 30 s after SIGTERM")


def test_sigterm_stops_a_manual_sync_as_ctrl_c_does(tmp_path: Path) -> None:
    """SIGTERM (a service manager stopping a unit that runs `sync`, `timeout`, `kill`) killed the sync without a
    word (exit status -15): it now stops as Ctrl-C does, the pages listed committed, and says so in one line."""
    import os
    import subprocess
    import sys
    import time

    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.sync import INTERRUPTED

    db = tmp_path / "t.duckdb"
    root = Path(__file__).resolve().parents[1]
    with start_in_thread(Simulation(customers=20, months=2, seed=3), api_key=KEY, latency_ms=300) as sb:
        env = {**os.environ, "PYTHONPATH": str(root), "STRIPE_API_KEY": KEY, "STRIPE_API_BASE": sb.url,
               "STRIPE_CHURN_DB": str(db), "STRIPE_CHURN_LOG_LEVEL": "WARNING"}
        proc = subprocess.Popen([sys.executable, "-m", "stripe_churn", "sync"], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60  # (the sync has begun once it has asked Stripe a few things)
        while sb.stats()["requests"] < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        out, err = _terminate(proc)
    assert proc.returncode == 143, (proc.returncode, err)
    assert err == ("terminated: what was synced is kept; the next sync resumes from the stored cursors and brings "
                   "the metrics up to date\n"), err
    assert KEY not in out + err
    con = duckdb.connect(str(db), read_only=True)
    try:
        runs = con.execute("SELECT status, error FROM sync_runs").fetchall()
    finally:
        con.close()
    # (it said "interrupted (Ctrl-C)", which no one pressed: `status` shows this line)
    assert runs == [("failed", INTERRUPTED.replace("interrupted (Ctrl-C)", "terminated (SIGTERM)"))], runs


def sandbox() -> Any:
    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation

    return start_in_thread(Simulation(customers=2, months=1, seed=3), api_key=KEY)


WRONG = "sk_test_" + "NotTheSandboxKey0123456"


@pytest.mark.parametrize("in_file, in_env, where", [
    pytest.param(True, False, "api_key in {config}", id="config-file"),
    pytest.param(False, True, "the environment variable STRIPE_API_KEY", id="environment"),
    pytest.param(True, True, "the environment variable STRIPE_API_KEY (which overrides api_key in {config})",
                 id="environment-over-file"),
])
def test_a_refused_key_names_where_it_was_set(tmp_path: Path, in_file: bool, in_env: bool, where: str) -> None:
    """A wrong key in the config file said "check STRIPE_API_KEY", an environment variable the user never set: the
    line names the place the key was read from (the environment wins over the file, which it says, so that the
    user does not fix the file's key in vain), never the key."""
    db = tmp_path / "k.duckdb"
    config = tmp_path / "c.toml"
    config.write_text(f'api_key = "{WRONG}"\n' if in_file else "", encoding="utf-8")
    config.chmod(0o600)
    with sandbox() as sb:
        code, out = run({"STRIPE_API_KEY": WRONG if in_env else None, "STRIPE_API_BASE": sb.url,
                         "STRIPE_CHURN_DB": str(db), "STRIPE_CHURN_LOG_LEVEL": "WARNING"},
                        "sync", "--config", str(config))
    assert code == 2 and out.count("\n") == 1, out
    assert out.startswith(f"error: Stripe refused the API key (wrong, expired or revoked): check "
                          f"{where.format(config=config)} (a secret or restricted read key "), out
    assert WRONG not in out and (in_env or "STRIPE_API_KEY" not in out), out


def test_a_first_sync_that_fails_is_recorded_as_the_full_one_it_was(tmp_path: Path) -> None:
    """A first sync is a full listing (design.md: `sync` is incremental, or `--full`; a first has nothing to go on
    from), but one that failed before it knew its account (a wrong key, a 500) was recorded `incremental`; a sync
    after a completed one that fails so is the incremental one it was."""
    db = tmp_path / "m.duckdb"
    env = {"STRIPE_CHURN_DB": str(db), "STRIPE_CHURN_LOG_LEVEL": "WARNING"}
    with sandbox() as sb:
        env["STRIPE_API_BASE"] = sb.url
        assert run({**env, "STRIPE_API_KEY": WRONG}, "sync")[0] == 2
        assert run({**env, "STRIPE_API_KEY": KEY}, "sync")[0] == 0
        assert run({**env, "STRIPE_API_KEY": WRONG}, "sync")[0] == 2
    con = duckdb.connect(str(db), read_only=True)
    try:
        runs = con.execute("SELECT mode, status FROM sync_runs ORDER BY started_at").fetchall()
    finally:
        con.close()
    assert runs == [("full", "failed"), ("full", "succeeded"), ("incremental", "failed")], runs


@pytest.mark.parametrize("command, body", [
    pytest.param(["sql", "SELECT 1"], "stripe_churn.sqlconsole.run_query", id="sql"),
    pytest.param(["report"], "stripe_churn.report.build.build_report", id="report"),
    pytest.param(["export", "--out", "x"], "stripe_churn.report.export.export", id="export"),
    pytest.param(["demo", "--dir", "d", "--customers", "2", "--months", "1"], "stripe_churn.sandbox.server.start_in_thread",
                 id="demo"),
])
def test_sigterm_stops_the_other_commands_as_ctrl_c_does(tmp_path: Path, command: list[str], body: str) -> None:
    """`sql`, `report`, `export` and `demo` were killed by SIGTERM without a word (exit status -15), where `sync`
    says so: they end with one line and 143, as they end with "interrupted" and 130 on Ctrl-C. (The command's work
    is replaced by one that is sent SIGTERM while it runs: a real query waits on DuckDB in the subprocess below.)"""
    import os
    import subprocess
    import sys

    module, name = body.rsplit(".", 1)
    code = (f"import os, signal, sys, {module} as m\n"
            "def work(*args, **kwargs):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    for _ in range(10 ** 9):  # (Python code: the Ctrl-C the signal becomes stops it at once)\n"
            "        pass\n"
            "    sys.exit('still running long after SIGTERM')\n"
            f"m.{name} = work\n"
            f"sys.argv = ['stripe-churn', *{command!r}]\n"
            "from stripe_churn.cli import main\n"
            "main()\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "STRIPE_CHURN_DB": str(tmp_path / "s.duckdb"),
           "STRIPE_CHURN_LOG_LEVEL": "WARNING"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 143, (done.returncode, done.stderr)
    assert done.stderr.splitlines()[-1:] == ["terminated"], done.stderr


def test_a_process_started_under_sigterm_as_ctrl_c_is_stopped_by_sigterm() -> None:
    """SIGTERM was blocked while `sql`, `report`, `export`, `demo` and `sync` ran (sigterm_as_ctrl_c), and every
    process started meanwhile (by a library, a server) inherited the block: SIGTERM could not stop it. Nothing is
    blocked now, and such a process ends at SIGTERM as any does."""
    import contextlib
    import signal
    import subprocess
    import sys
    import threading

    from stripe_churn.cli import sigterm_as_ctrl_c

    # (else the block changes nothing)
    assert threading.current_thread() is threading.main_thread()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    child = ("import signal, time\n"
             "print(signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, []), flush=True)\n"
             "time.sleep(60)\n")
    with sigterm_as_ctrl_c():
        proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        blocked = proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        ended = proc.returncode  # (None: still running 10 s after SIGTERM)
    finally:
        proc.kill()
        proc.communicate()
    assert (blocked, ended) == ("False\n", -signal.SIGTERM), (blocked, ended)


def test_sigterm_during_demos_sync_is_recorded_as_sigterm(tmp_path: Path) -> None:
    """`demo` sent SIGTERM during its own sync said `terminated`, but its store's sync_runs said "interrupted
    (Ctrl-C)", which no one pressed (`status` shows that line): demo's sync is given the event that says SIGTERM
    came, as `sync`'s is. (Its first request is replaced by one that never answers, so SIGTERM comes while the
    sync waits on it.)"""
    import os
    import subprocess
    import sys

    from stripe_churn.sync import TERMINATED

    code = ("import asyncio, sys\n"
            "from stripe_churn.stripe_api.client import StripeRaw\n"
            "async def account_id(self, configured):\n"
            "    print('asking Stripe', file=sys.stderr, flush=True)\n"
            "    await asyncio.sleep(600)\n"
            "StripeRaw.account_id = account_id\n"
            "sys.argv = ['stripe-churn', 'demo', '--dir', 'd', '--customers', '2', '--months', '1']\n"
            "from stripe_churn.cli import main\n"
            "main()\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "STRIPE_CHURN_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    before = []
    for line in proc.stderr:  # (until the sync asks its first question, or the process ends)
        before.append(line)
        if line == "asking Stripe\n":
            break
    _, err = _terminate(proc)
    assert proc.returncode == 143, (proc.returncode, before, err)
    assert err.splitlines()[-1:] == ["terminated"], err
    con = duckdb.connect(str(tmp_path / "d" / "stripe-churn.duckdb"), read_only=True)
    try:
        runs = con.execute("SELECT status, error FROM sync_runs").fetchall()
    finally:
        con.close()
    assert runs == [("failed", TERMINATED)], runs


def test_sigterm_stops_a_query_as_ctrl_c_does(tmp_path: Path, store: Path) -> None:
    """A query that DuckDB runs when SIGTERM comes is stopped as by Ctrl-C, and `sql` says "terminated" and ends
    with 143 instead of being killed without a word."""
    import os
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "STRIPE_CHURN_DB": str(store), "STRIPE_CHURN_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "stripe_churn", "sql", "SELECT count(*) FROM range(1000000000000)"],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30  # (DuckDB runs once its workers join the main thread and the query's own)
    tasks = Path(f"/proc/{proc.pid}/task")
    while proc.poll() is None and len(list(tasks.iterdir())) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    out, err = _terminate(proc)
    assert proc.returncode == 143, (proc.returncode, err)
    assert err == "terminated\n" and out == "", (out, err)
