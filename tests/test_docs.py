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
