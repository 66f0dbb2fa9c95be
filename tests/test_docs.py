"""The README: every command documented, every ```sql block runs as written against a demo-sized store."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from stripe_churn.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_starts_with_the_two_setup_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks[0].strip() == "pip install -e . && stripe-churn demo"
    assert blocks[1].strip() == "pip install -e '.[dev]' && scripts/check"


def test_ci_runs_the_readmes_test_command() -> None:
    """CI runs the second set-up command as the README gives it (pip's -q aside), so that it stays right."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    ci = (README.parent / ".ci" / "run").read_text()
    ran = [line.replace("pip install -q ", "pip install ") for line in ci.splitlines() if "scripts/check" in line]
    assert ran == [blocks[1].strip()], ran


def test_every_command_is_documented() -> None:
    text = README.read_text()
    commands = sorted(cli.commands)
    assert {"sync", "daemon", "status", "report", "sql", "export", "sandbox", "demo"} <= set(commands)
    for name in commands:
        assert f"stripe-churn {name}" in text, name
        result = CliRunner().invoke(cli, [name, "--help"])
        for opt in re.findall(r"(--[a-z][a-z-]+)", result.output):
            if opt in ("--help", "--config", "--format", "--version"):
                continue
            assert opt in text, f"{name} {opt} is not in the README"


def test_every_setting_is_documented() -> None:
    from stripe_churn.settings import ENV_KEYS, FILE_KEYS

    text = README.read_text()
    for name in ENV_KEYS:
        assert f"`{name}`" in text, name
    for key in FILE_KEYS:
        assert f"`{key}`" in text, key


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo-sized account (800 customers, 24 months) loaded, recomputed and published."""
    from stripe_churn.metrics.runner import recompute
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.settings import Settings
    from stripe_churn.store.db import open_store
    from stripe_churn.store.load import load_simulation
    from stripe_churn.store.snapshot import publish_snapshot

    db = tmp_path_factory.mktemp("docs") / "demo.duckdb"
    con = open_store(db)
    load_simulation(con, Simulation(customers=800, months=24, seed=1))
    recompute(con, Settings(db=db))
    con.execute("CHECKPOINT")
    con.close()
    publish_snapshot(db)
    return db


def test_cookbook_has_ten_queries() -> None:
    assert len(sql_blocks()) >= 10


@pytest.mark.parametrize("query", sql_blocks(), ids=lambda q: q.splitlines()[0][:40])
def test_cookbook_query_runs(snapshot: Path, query: str) -> None:
    from stripe_churn.sqlconsole import run_query

    columns, rows = run_query(snapshot, query.strip().rstrip(";"))
    assert columns
    if "scheduled_churn" not in query and "sync_runs" not in query and "months_since_start = 12" not in query:
        assert rows, "the query returns rows on a demo-sized account"


def test_sql_help_names_every_kind_of_statement_it_takes() -> None:
    """(its help left out FROM and SUMMARIZE, which it takes and the README lists)"""
    from stripe_churn.sqlconsole import check_read_only

    kinds = re.search(r"`stripe-churn sql` runs exactly one read statement \(([A-Z, ]+)\)", README.read_text())
    assert kinds, "the README lists the statements `sql` takes"
    shown = " ".join(CliRunner().invoke(cli, ["sql", "--help"]).output.split())
    examples = {"SELECT": "SELECT 1", "WITH": "WITH x AS (SELECT 1) SELECT * FROM x", "FROM": "FROM range(3)",
                "DESCRIBE": "DESCRIBE SELECT 1", "SHOW": "SHOW TABLES", "SUMMARIZE": "SUMMARIZE SELECT 1",
                "EXPLAIN": "EXPLAIN SELECT 1"}
    for kind in kinds.group(1).split(", "):
        check_read_only(examples[kind])  # (the README's list is what `sql` takes)
        assert re.search(rf"\b{kind}\b", shown), f"`sql --help` does not name {kind}"


def test_status_help_names_every_table_status_prints(tmp_path: Path) -> None:
    """(its help left out the recomputes and accounts tables it prints, which the README's output formats list)"""
    from stripe_churn.pipeline import collect_status
    from stripe_churn.store.db import open_store
    from stripe_churn.store.snapshot import publish_snapshot

    db = tmp_path / "s.duckdb"
    open_store(db).close()
    publish_snapshot(db)
    tables = [name for name, value in collect_status(db).items() if isinstance(value, list)]
    shown = " ".join(CliRunner().invoke(cli, ["status", "--help"]).output.split())
    in_words = {"runs": "runs", "recomputes": "recomputes", "accounts": "accounts", "cursors": "cursors",
                "event_gaps": "gaps in the events", "data_quality": "data-quality", "exchange_rates": "exchange rates"}
    listed = re.search(r"each table's rows under its name, numbered from 1\s+\(`status`'s ([^;]+);", README.read_text())
    assert listed, "the README lists the tables of `status --format csv`"
    for name in tables:
        assert in_words[name] in shown, f"`status --help` does not name {name}"
        assert f"`{name}`" in listed.group(1), f"the README's output formats do not list status's {name}"


def test_daemon_webhook_options_name_the_settings_they_override(tmp_path: Path) -> None:
    """Left out, --webhook-port and --webhook-host take the file's webhook_port and webhook_host (its help said
    "default 127.0.0.1" whatever the file set); the README's settings table names each option beside its setting."""
    from stripe_churn.daemon import Daemon
    from stripe_churn.settings import Settings

    shown = " ".join(CliRunner().invoke(cli, ["daemon", "--help"]).output.split())
    text = README.read_text()
    for option, setting in (("--webhook-port", "webhook_port"), ("--webhook-host", "webhook_host")):
        help_text = shown.split(option, 1)[1].split(" --", 1)[0]
        assert f"the setting {setting}" in help_text, (option, help_text)
        row = next(line for line in text.splitlines() if line.startswith(f"| (file only) | `{setting}` |"))
        assert f"`daemon {option}` overrides" in row, row
    # (what the help says: the settings when the options are left out, the options when given)
    settings = Settings(db=tmp_path / "s.duckdb", webhook_host="0.0.0.0", webhook_port=8787)
    left_out = Daemon(settings, run=lambda *a, **k: None)
    assert (left_out.webhook_port, left_out.webhook_host) == (8787, "0.0.0.0")
    given = Daemon(settings, run=lambda *a, **k: None, webhook_port=9797, webhook_host="127.0.0.2")
    assert (given.webhook_port, given.webhook_host) == (9797, "127.0.0.2")
