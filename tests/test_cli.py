"""Every command's --help; one-line errors; read-only SQL (refusals) and SQL during a sync in another process."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from stripe_churn.cli import cli
from stripe_churn.errors import ConfigError, StoreError
from stripe_churn.sqlconsole import run_query
from stripe_churn.store.snapshot import publish_snapshot, snapshot_path

COMMANDS = ["sync", "daemon", "status", "report", "sql", "export", "sandbox", "demo"]


def test_every_command_has_help() -> None:
    runner = CliRunner()
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0
    for name in COMMANDS:
        assert name in top.output
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage:" in result.output and "--help" in result.output


def test_python_m_help() -> None:
    out = subprocess.run([sys.executable, "-m", "stripe_churn", "--help"], capture_output=True, text=True,
                         timeout=60, check=True)
    assert "demo" in out.stdout and "sql" in out.stdout


def test_demo_ends_with_a_verdict_on_the_month_before_this_one(tmp_path: Path) -> None:
    """A new user's `stripe-churn demo` (no key, no setting) ends with the bridge and a line that says whether the
    simulated business was at net negative churn in the latest complete month. Its history runs to today, so
    the data end this month and that month is the one before."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE")}
    demo = [sys.executable, "-m", "stripe_churn", "demo", "--dir", str(tmp_path / "demo"), "--customers", "150",
            "--months", "6"]
    out = subprocess.run(demo, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    # (its store removed by hand, the demo starts over: the store's lost-store refusal is for real stores)
    (tmp_path / "demo" / "stripe-churn.duckdb").unlink()
    out = subprocess.run(demo, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    today = dt.datetime.now(dt.UTC).date()
    upto = re.search(r"complete periods \(data up to (\d{4}-\d\d-\d\d)\)", out.stdout)
    assert upto, out.stdout
    assert today - dt.timedelta(days=4) <= dt.date.fromisoformat(upto.group(1)) <= today
    previous = (dt.date.fromisoformat(upto.group(1)).replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    verdict = out.stdout.strip().splitlines()[-1]
    assert re.match(rf"latest complete month \({previous.isoformat()}\): (AT|NOT at) net negative churn; ",
                    verdict), verdict
    assert (tmp_path / "demo" / "mrr.png").stat().st_size > 0 and (tmp_path / "demo" / "report.html").exists()


def make_db(path: Path, n: int = 3, store: bool = False) -> Path:
    """A database with a table t of ``n`` rows and a view v, its snapshot published; with ``store``, a
    stripe-churn store (migrated) too, as `status` wants one."""
    if store:
        from stripe_churn.store.db import open_store

        open_store(path).close()
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t AS SELECT range AS i FROM range($n)", {"n": n})
    con.execute("CREATE VIEW v AS SELECT sum(i) AS s FROM t")
    con.close()
    publish_snapshot(path)
    return path


def sql(db: Path, *args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["sql", *args], env={"STRIPE_CHURN_DB": str(db)})
    return r.exit_code, r.output


def test_sql_reads_snapshot_in_each_format(tmp_path: Path) -> None:
    db = make_db(tmp_path / "a.duckdb", 5)
    code, out = sql(db, "SELECT s FROM v", "--format", "json")
    assert code == 0 and json.loads(out) == [{"s": 10}]
    code, out = sql(db, "WITH x AS (SELECT i FROM t WHERE i > 2) SELECT count(*) AS n FROM x", "--format", "csv")
    assert code == 0 and out.split() == ["n", "2"]
    code, out = sql(db, "DESCRIBE t")
    assert code == 0 and "BIGINT" in out


def test_sql_shows_a_querys_values_as_stored(tmp_path: Path) -> None:
    """`sql`'s table is the query's own rows: its column names and every decimal place. It showed them as `report`
    does: 12.3457 as 12.35, a column named nrr (0.9876) as 98.76%, period_start headed "period"."""
    db = make_db(tmp_path / "a.duckdb", 1)
    code, out = sql(db, "SELECT CAST(12.3457 AS DECIMAL(18, 4)) AS mrr_delta, CAST(0.9876 AS DECIMAL(18, 4)) AS nrr, "
                        "DATE '2024-01-01' AS period_start, CAST(-30 AS DECIMAL(18, 4)) AS closing_mrr")
    assert code == 0, out
    header, values = [[cell.strip() for cell in line.strip("┃│ ").replace("┃", "│").split("│")]
                      for line in out.splitlines() if any(ch.isalnum() for ch in line)][:2]
    assert header == ["mrr_delta", "nrr", "period_start", "closing_mrr"], out
    assert values == ["12.3457", "0.9876", "2024-01-01", "-30.0000"], out


@pytest.mark.parametrize("query", [
    "INSERT INTO t VALUES (1)",
    "DROP TABLE t",
    "CREATE TABLE x AS SELECT 1",
    "COPY t TO '/tmp/leak.csv'",
    "COPY (SELECT 1) TO '/tmp/leak.parquet' (FORMAT parquet)",
    "ATTACH '/tmp/other.duckdb' AS o",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SELECT 1; DROP TABLE t",
    "PRAGMA database_list",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM '/etc/hostname'",
])
def test_sql_refuses_writes_and_outside_access(tmp_path: Path, query: str) -> None:
    db = make_db(tmp_path / "b.duckdb")
    code, out = sql(db, query)
    assert code != 0
    assert out.startswith("error: ") and out.count("\n") == 1, out
    assert not Path("/tmp/leak.csv").exists() and not Path("/tmp/leak.parquet").exists()
    con = duckdb.connect(str(snapshot_path(db)), read_only=True)
    assert con.execute("SELECT count(*) FROM t").fetchone() == (3,)
    con.close()


def test_sql_without_snapshot_says_what_to_do(tmp_path: Path) -> None:
    code, out = sql(tmp_path / "none.duckdb", "SELECT 1")
    assert code != 0 and "stripe-churn sync" in out and out.count("\n") == 1


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import duckdb
    from stripe_churn.lock import sync_lock
    from stripe_churn.store.snapshot import publish_snapshot
    db = Path(sys.argv[1])
    with sync_lock(db):
        con = duckdb.connect(str(db))
        print("writing", flush=True)
        con.execute("INSERT INTO t SELECT 1000 + range FROM range(1000)")
        if sys.argv[2] == "hold":  # keep the database and the lock until told to go on
            sys.stdin.readline()
        else:
            end = time.monotonic() + float(sys.argv[2])
            while time.monotonic() < end:
                con.execute("INSERT INTO t SELECT 1000 + range FROM range(1000)")
        con.execute("CHECKPOINT")
        con.close()
        publish_snapshot(db)
    print("published", flush=True)
""")

READER = textwrap.dedent("""
    import sys, time
    import duckdb
    con = duckdb.connect(sys.argv[1], read_only=True)
    print(con.execute("SELECT count(*) FROM t").fetchone()[0], flush=True)
    sys.stdin.readline()
    print(con.execute("SELECT count(*) FROM t").fetchone()[0], flush=True)
""")


def test_sql_during_a_sync_in_another_process(tmp_path: Path) -> None:
    """The writer holds the database and the lock; queries answer fast from the last snapshot."""
    db = make_db(tmp_path / "c.duckdb", 3)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), "hold"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline().strip() == "writing"
        t0 = time.monotonic()
        _, rows = run_query(db, "SELECT count(*) FROM t")
        # (answered without waiting for the writer, which holds on until told; the first query of a process took
        # 0.4 s beside two busy loops, so 1 s was no bound for a loaded machine)
        assert time.monotonic() - t0 < 5
        assert rows == [(3,)]
        cli_run = subprocess.run([sys.executable, "-m", "stripe_churn", "sql", "SELECT count(*) AS n FROM t",
                                  "--format", "csv"], capture_output=True, text=True, timeout=30,
                                 env={"STRIPE_CHURN_DB": str(db), "PATH": "/usr/bin:/bin"})
        assert cli_run.returncode == 0, cli_run.stderr
        assert cli_run.stdout.split() == ["n", "3"]
        assert writer.poll() is None, "the writer holds the database until told to go on"
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "published"
        assert writer.wait(timeout=30) == 0
    finally:
        writer.kill()
    _, rows = run_query(db, "SELECT count(*) FROM t")
    assert rows[0][0] > 3


def test_sync_never_fails_because_someone_is_querying(tmp_path: Path) -> None:
    """A reader keeps the old snapshot open; the next publish still succeeds and the reader keeps its view."""
    db = make_db(tmp_path / "d.duckdb", 3)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(snapshot_path(db))], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdin is not None
        assert reader.stdout.readline().strip() == "3"
        writer = subprocess.run([sys.executable, "-c", WRITER, str(db), "0.2"], capture_output=True, text=True,
                                timeout=60)
        assert writer.returncode == 0, writer.stderr
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == "3"
        assert reader.wait(timeout=10) == 0
    finally:
        reader.kill()
    _, rows = run_query(db, "SELECT count(*) FROM t")
    assert rows[0][0] > 3


def test_check_read_only_names_the_statement() -> None:
    from stripe_churn.sqlconsole import check_read_only

    with pytest.raises(ConfigError, match="only read queries"):
        check_read_only("UPDATE t SET i = 1")
    check_read_only("FROM t SELECT i")
    check_read_only("EXPLAIN SELECT 1")


def cli_run(db: Path | None, *args: str) -> tuple[int, str]:
    env = {"STRIPE_CHURN_DB": str(db)} if db is not None else {}
    r = CliRunner().invoke(cli, list(args), env=env)
    return r.exit_code, r.output


@pytest.mark.parametrize("args", [["daemon", "--no-sync-on-start", "--webhook-port", "99999"],
                                  ["sandbox", "--port", "99999"], ["sandbox", "--port", "-1"]])
def test_a_port_out_of_range_is_a_usage_error(args: list[str], tmp_path: Path) -> None:
    """(it was `error: unexpected OverflowError: bind(): port must be 0-65535.`, after seconds of simulating; the
    daemon's store is one of the test's: the daemon writes a refusal to its state file)"""
    code, out = cli_run(tmp_path / "d.duckdb", *args)
    assert code == 2 and "is not in the range 0<=x<=65535" in out, out
    assert "unexpected" not in out and "Traceback" not in out


def test_the_sandbox_checks_its_port_and_truth_out_before_simulating(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A taken port and an unwritable --truth-out are refused at once, not after the seconds of simulating."""
    import socket

    import stripe_churn.sandbox.server as server

    def simulate(**_: object) -> None:
        raise AssertionError("simulated before the options were checked")

    monkeypatch.setattr(server, "serve_forever", simulate)
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, out = cli_run(None, "sandbox", "--port", str(port))
    finally:
        taken.close()
    assert code == 2 and out == (f"error: sandbox could not listen on 127.0.0.1:{port}: Address already in use; "
                                 "pick another --port or 0 for a free one\n"), out
    code, out = cli_run(None, "sandbox", "--port", "0", "--truth-out", str(tmp_path / "nodir" / "truth.jsonl"))
    assert code == 2 and out.startswith("error: cannot write the ground truth to ") and out.count("\n") == 1, out
    assert "pass a writable --truth-out path" in out


@pytest.mark.parametrize("args", [["sandbox", "--customers", "-5"], ["sandbox", "--months", "-1"],
                                  ["demo", "--customers", "-1"], ["demo", "--months", "-2"],
                                  # (a demo of no customer or month synced, then failed: nothing to draw)
                                  ["demo", "--customers", "0"], ["demo", "--months", "0"]])
def test_negative_customers_or_months_are_usage_errors(args: list[str], tmp_path: Path) -> None:
    """(it was `error: unexpected ValueError: customers and months must be zero or more`)"""
    code, out = cli_run(None, *args, *(["--dir", str(tmp_path / "demo")] if args[0] == "demo" else []))
    assert code == 2 and f"{args[-1]} is not in the range x>={0 if args[0] == 'sandbox' else 1}" in out, out
    assert "unexpected" not in out and not (tmp_path / "demo").exists()


@pytest.mark.parametrize(("args", "line"), [
    (["sync", "--bogus"], "error: No such option '--bogus' (see `stripe-churn sync --help`)"),
    (["nocmd"], "error: No such command 'nocmd' (see `stripe-churn --help`)"),
    (["sql"], "error: Missing argument 'QUERY' (see `stripe-churn sql --help`)"),
    (["report", "--format", "nope"], "error: Invalid value for '--format': 'nope' is not one of 'table', 'csv', "
                                     "'json' (see `stripe-churn report --help`)"),
    (["--bogus"], "error: No such option '--bogus' (see `stripe-churn --help`)"),
    (["sql", "--format"], "error: Option '--format' requires an argument (see `stripe-churn sql --help`)"),
    (["sync", "--config"], "error: Option '--config' requires an argument (see `stripe-churn sync --help`)"),
    # (a key pasted where no argument is expected: masked, as in every message)
    (["sync", "sk_live_51AbCdEfGh"], "error: Got unexpected extra argument (sk_live_…) (see `stripe-churn sync "
                                     "--help`)")])
def test_a_usage_error_is_one_line_naming_the_help_to_read(args: list[str], line: str) -> None:
    """As every other error: one line on stderr, exit code 2 (click printed usage, a hint and the message on four)."""
    r = CliRunner().invoke(cli, args, prog_name="stripe-churn")
    assert (r.exit_code, r.stderr, r.stdout) == (2, line + "\n", ""), r.output


def test_no_command_at_all_shows_the_help() -> None:
    r = CliRunner().invoke(cli, [], prog_name="stripe-churn")
    assert r.output.startswith("Usage: stripe-churn [OPTIONS] COMMAND [ARGS]...") and "error" not in r.output
    assert all(name in r.output for name in COMMANDS)


@pytest.mark.parametrize("args", [["sql", "SELECT * FROM t"], ["status"], ["sql", "SELECT 1", "--format", "json"]])
def test_a_closed_stdout_ends_quietly(tmp_path: Path, args: list[str]) -> None:
    """`stripe-churn ... | head -1`: the reader went away; no message, exit code 1 (it was `error: unexpected
    BrokenPipeError: [Errno 32] Broken pipe`)."""
    db = make_db(tmp_path / "p.duckdb", 3, store=args == ["status"])
    read, write = os.pipe()
    os.close(read)  # (nobody reads: the first write fails with EPIPE)
    try:
        out = subprocess.run([sys.executable, "-m", "stripe_churn", *args], stdout=write, stderr=subprocess.PIPE,
                             text=True, timeout=60, env={**os.environ, "STRIPE_CHURN_DB": str(db)})
    finally:
        os.close(write)
    assert out.returncode == 1 and out.stderr == "", out.stderr


@pytest.mark.parametrize("damage", ["text", "cut short", "empty"])
def test_a_damaged_snapshot_is_one_line_saying_the_next_sync_replaces_it(tmp_path: Path, damage: str) -> None:
    """(status said `error: unexpected IOException`; sql, report and export `cannot open snapshot ...: IO Error`
    without what to do)"""
    db = make_db(tmp_path / "s.duckdb", 3000, store=True)
    snap = snapshot_path(db)
    good = snap.read_bytes()
    snap.write_bytes({"text": b"hello\n", "cut short": good[:5000], "empty": b""}[damage])
    for args in (["status"], ["sql", "SELECT 1"], ["report"], ["export", "--out", str(tmp_path / "e")]):
        code, out = cli_run(db, *args)
        assert code == 2 and out.count("\n") == 1, (args, out)
        assert out.startswith(f"error: the snapshot {snap} is damaged ("), (args, out)
        assert out.endswith("run `stripe-churn sync`, the next sync replaces it (the database itself is not "
                            "touched)\n"), (args, out)
    assert db.exists() and not (tmp_path / "e").exists()


def test_an_output_path_that_cannot_be_written_names_its_option(tmp_path: Path) -> None:
    """A file where --out's or --dir's folder should go: the error names that path and option, not the
    database's setting (it said `... (the database and the files beside it: setting db, STRIPE_CHURN_DB)`)."""
    db = make_db(tmp_path / "o.duckdb", 3)
    (tmp_path / "afile").write_text("in the way")
    for args, path, option in ((["export", "--out", str(tmp_path / "afile" / "exp")], "afile/exp", "--out"),
                               (["demo", "--dir", str(tmp_path / "afile" / "demo")], "afile/demo", "--dir"),
                               (["demo", "--dir", str(tmp_path / "afile" / "x" / "demo")], "afile/x/demo",
                                "--dir")):
        code, out = cli_run(db, *args)
        assert code == 2 and out.count("\n") == 1, out
        assert out == (f"error: cannot write {tmp_path / path} (a file stands where a directory is needed): move "
                       f"that file, or give {option} another path\n"), out


def test_a_demo_of_another_simulation_in_the_same_folder_starts_over(tmp_path: Path) -> None:
    """The same seed with other --customers is the same sandbox account: its store kept the customers and events
    the new simulation lacks (flagged deleted, or stale), and each recompute derived them again."""
    folder = tmp_path / "demo"

    def demo(customers: str, where: Path = folder) -> str:
        code, out = cli_run(None, "demo", "--dir", str(where), "--customers", customers, "--months", "6")
        assert code == 0, out
        return out

    def stored(where: Path = folder) -> tuple[int, int]:
        with duckdb.connect(str(where / "stripe-churn.duckdb"), read_only=True) as con:
            return con.execute("SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM events)").fetchall()[0]

    demo("40")
    demo("20", tmp_path / "fresh")
    assert stored()[0] == 40
    assert "starting over" in demo("20")
    assert stored() == stored(tmp_path / "fresh")  # (what a demo of 20 in a new folder stores, nothing more)
    assert "starting over" not in demo("20")  # (the same simulation syncs into its store again)
    assert stored() == stored(tmp_path / "fresh")


SORT_BIG = "SELECT count(DISTINCT s) FROM (SELECT md5(i::VARCHAR) AS s FROM range(1500000) t(i) ORDER BY s)"


def test_a_query_spills_no_further_than_leaves_the_next_sync_room(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A runaway query once wrote 43 GB of spill beside the store (DuckDB's own limit is 90% of the free space),
    and the next sync had no room for its snapshot. Its spill is now held to the free space less the store's size
    and 1 GiB: past it, one line that says what to do, and the store and snapshot as they were; within it, the
    same query answers."""
    import shutil

    import stripe_churn.sqlconsole as console

    db = make_db(tmp_path / "s.duckdb", 5)
    store_size = db.stat().st_size
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(console.shutil, "disk_usage",
                        lambda p: usage._replace(free=store_size + (1 << 30) + (24 << 20)))
    assert console.spill_room(db) == console.SPILL_FLOOR  # (24 MiB: the floor, 256 MiB, is given instead)
    monkeypatch.setattr(console, "SPILL_FLOOR", 8 << 20)
    assert console.spill_room(db) == 24 << 20
    before = snapshot_path(db).read_bytes()
    with pytest.raises(StoreError) as caught:
        run_query(db, SORT_BIG, memory_limit="32MB")
    message = str(caught.value)
    assert message.startswith("query stopped: it needed more than 24 MiB of spill space on disk beside the snapshot")
    assert "narrow it" in message and "\n" not in message
    assert snapshot_path(db).read_bytes() == before
    assert run_query(db, "SELECT count(*) FROM t")[1] == [(5,)]
    monkeypatch.setattr(console.shutil, "disk_usage", lambda p: usage._replace(free=store_size + (3 << 30)))
    assert console.spill_room(db) == 2 << 30
    assert run_query(db, SORT_BIG, memory_limit="32MB")[1] == [(1500000,)]


def test_a_query_out_of_memory_names_the_setting_not_duckdbs_set(tmp_path: Path) -> None:
    """DuckDB's own advice for a query out of memory is `SET memory_limit`, which `sql` refuses: the line names
    the setting instead."""
    db = make_db(tmp_path / "m.duckdb", 5)
    with pytest.raises(StoreError) as caught:
        run_query(db, "SELECT list(md5(i::VARCHAR)) FROM range(2000000) t(i)", memory_limit="8MB")
    assert str(caught.value) == ("query stopped: it ran out of memory under memory_limit 8MB: narrow it (fewer "
                                 "rows or columns, a shorter period) or raise the setting memory_limit")
