"""`--format csv` and `--format json` of every command that takes them, read back by Python's csv and json modules
on a small sandbox store: one CSV (a header row, then rows of its width) or one JSON document on stdout, nothing
else; errors stay one line on stderr with the table format's exit code."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from stripe_churn.cli import cli
from stripe_churn.report.tables import FORMULA_STARTS

# the commands whose --format is the output's (export's --format is the kind of file it writes)
OUTPUT_FORMAT_COMMANDS = {"sync", "status", "report", "sql", "demo"}
LONG_FORM = ["section", "row", "key", "value"]
# (status's fields that move with the clock between two calls)
CLOCK_KEYS = {"snapshot_age", "lag"}


def run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def read_csv(text: str) -> list[list[str]]:
    """The rows of one CSV, each as wide as the header (the whole of stdout, or it fails)."""
    rows = list(csv.reader(io.StringIO(text)))
    assert rows and rows[0], text
    assert all(len(r) == len(rows[0]) for r in rows), text
    return rows


def long_form(text: str) -> dict[tuple[str, str, str], str]:
    """``section,row,key,value`` CSV as {(section, row, key): value}, each place once."""
    header, *rows = read_csv(text)
    assert header == LONG_FORM, header
    cells = {(s, r, k): v for s, r, k, v in rows}
    assert len(cells) == len(rows), text
    return cells


def places(doc: dict[str, Any], command: str) -> Iterator[tuple[tuple[str, str, str], Any]]:
    """The JSON document's fields at their places in the long form: a top-level field in the command's own
    section, a group's under its name (row 1), a table's rows numbered from 1."""
    for key, value in doc.items():
        if isinstance(value, dict):
            yield from (((key, "1", k), v) for k, v in value.items())
        elif isinstance(value, list):
            yield from (((key, str(i), k), v) for i, r in enumerate(value, 1) for k, v in r.items())
        else:
            yield (command, "1", key), value


def same_value(text: str, value: Any) -> bool:
    if value is None:
        return text == ""
    if isinstance(value, bool):
        return text == str(value)
    if isinstance(value, int | float):
        return float(text) == pytest.approx(value)
    return text == ("'" + value if value.startswith(FORMULA_STARTS) else value)


def assert_long_form_of(text: str, doc: dict[str, Any], command: str) -> None:
    """The CSV holds the JSON document's fields, each at its place, with the same values."""
    cells = long_form(text)
    expected = dict(places(doc, command))
    assert set(cells) == {p for p, v in expected.items() if not isinstance(v, dict | list)}
    for place, value in expected.items():
        if place[2] not in CLOCK_KEYS:
            assert same_value(cells[place], value), (place, cells[place], value)


@pytest.fixture(scope="module")
def account(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, str]]]:
    """A sandbox account of a dozen customers over three months, synced once into a new store."""
    from stripe_churn.pipeline import run_once
    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.settings import SANDBOX_KEY, Secret, Settings

    db = tmp_path_factory.mktemp("formats") / "s.duckdb"
    with start_in_thread(Simulation(customers=12, months=3, seed=9), api_key=SANDBOX_KEY) as sb:
        run_once(Settings(api_key=Secret(SANDBOX_KEY), api_base=sb.url, db=db, rate_limit=1000.0), full=True,
                 progress=False)
        yield sb, {"STRIPE_CHURN_DB": str(db), "STRIPE_API_KEY": SANDBOX_KEY, "STRIPE_API_BASE": sb.url,
                   "STRIPE_RATE_LIMIT": "1000"}


def test_the_commands_with_an_output_format_are_the_ones_checked_here() -> None:
    with_formats = set()
    for name, command in cli.commands.items():
        for param in command.params:
            if param.name == "fmt" and isinstance(param.type, click.Choice) and "json" in param.type.choices:
                assert list(param.type.choices) == ["table", "csv", "json"], name
                with_formats.add(name)
    assert with_formats == OUTPUT_FORMAT_COMMANDS


def test_sync_prints_one_csv_and_one_json_document(account: tuple[Any, dict[str, str]]) -> None:
    sb, env = account
    sb.advance(1)  # (a billing run: the sync has objects and movements to tell of)
    synced = run(env, "sync", "--format", "csv")
    assert synced.exit_code == 0, synced.output
    cells = long_form(synced.stdout)
    latest = json.loads(run(env, "status", "--format", "json").stdout)["runs"][0]
    assert (cells["sync", "1", "run_id"], cells["sync", "1", "status"]) == (latest["run_id"], "succeeded")
    counted = {k: int(v) for (s, _, k), v in cells.items() if s == "counts"}
    assert counted and sum(counted.values()) > 0 and int(cells["sync", "1", "new_movements"]) > 0
    assert {"period_start", "closing_mrr", "net_negative_churn", "complete"} <= {
        k for s, _, k in cells if s == "bridge_line"}

    sb.advance(1)
    synced = run(env, "sync", "--format", "json")
    assert synced.exit_code == 0, synced.output
    doc = json.loads(synced.stdout)
    latest = json.loads(run(env, "status", "--format", "json").stdout)["runs"][0]
    assert (doc["run_id"], doc["status"]) == (latest["run_id"], "succeeded")
    assert sum(doc["counts"].values()) > 0 and doc["bridge_line"]["period_start"]


def test_status_csv_is_its_json_document_in_long_form(account: tuple[Any, dict[str, str]]) -> None:
    _, env = account
    as_csv, as_json = run(env, "status", "--format", "csv"), run(env, "status", "--format", "json")
    assert as_csv.exit_code == 0 and as_json.exit_code == 0, as_csv.output + as_json.output
    doc = json.loads(as_json.stdout)
    assert doc["runs"] and doc["accounts"] and doc["cursors"]
    assert_long_form_of(as_csv.stdout, doc, "status")


@pytest.mark.parametrize("args", [["report"], ["report", "--period", "week", "--segment", "currency"],
                                  ["sql", "SELECT customer_id, occurred_at, movement, mrr_delta FROM mrr_movements"]])
def test_rows_print_as_csv_and_as_json_of_the_same_rows(account: tuple[Any, dict[str, str]],
                                                       args: list[str]) -> None:
    _, env = account
    as_csv, as_json = run(env, *args, "--format", "csv"), run(env, *args, "--format", "json")
    assert as_csv.exit_code == 0 and as_json.exit_code == 0, as_csv.output + as_json.output
    header, *rows = read_csv(as_csv.stdout)
    doc = json.loads(as_json.stdout)
    assert doc and len(rows) == len(doc) and all(list(r) == header for r in doc)


def test_the_demo_prints_its_report_alone_on_stdout(tmp_path: Path) -> None:
    demo = ["demo", "--dir", str(tmp_path / "demo"), "--customers", "10", "--months", "2"]
    as_csv, as_json = run({}, *demo, "--format", "csv"), run({}, *demo, "--format", "json")
    assert as_csv.exit_code == 0 and as_json.exit_code == 0, as_csv.output + as_json.output
    header, *rows = read_csv(as_csv.stdout)
    doc = json.loads(as_json.stdout)
    assert rows and len(rows) == len(doc) and list(doc[0]) == header


@pytest.mark.parametrize("args", [["status"], ["sync"], ["report"], ["sql", "SELECT 1"]])
def test_an_error_is_one_line_on_stderr_whatever_the_format(tmp_path: Path, args: list[str]) -> None:
    env = {"STRIPE_CHURN_DB": str(tmp_path / "none.duckdb"), "STRIPE_API_KEY": ""}
    results = [run(env, *args, "--format", fmt) for fmt in ("table", "csv", "json")]
    assert results[0].exit_code not in (0, 1), results[0].output
    for r in results:
        assert r.exit_code == results[0].exit_code and r.stdout == "", r.output
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr


def test_sql_json_keeps_every_column_and_is_strict_json(account: tuple[Any, dict[str, str]]) -> None:
    """Two columns of one name both reach the JSON (named as DuckDB names a subquery's), and a DOUBLE that JSON
    cannot hold is text, so a strict parser reads the document."""
    _, env = account
    query = ("SELECT 1 AS a, 2 AS a, 3 AS a, 'nan'::DOUBLE AS x, 'inf'::DOUBLE AS y, '-inf'::DOUBLE AS z, "
             "0.5::DOUBLE AS w")
    out = run(env, "sql", query, "--format", "json")
    assert out.exit_code == 0, out.output

    def refuse(word: str) -> None:
        raise ValueError(word)

    doc = json.loads(out.stdout, parse_constant=refuse)
    assert doc == [{"a": 1, "a_1": 2, "a_2": 3, "x": "NaN", "y": "Infinity", "z": "-Infinity", "w": 0.5}]
    header, row = read_csv(run(env, "sql", query, "--format", "csv").stdout)
    assert header == ["a", "a", "a", "x", "y", "z", "w"] and row[:3] == ["1", "2", "3"]


def test_a_sync_that_changed_nothing_prints_no_empty_table(account: tuple[Any, dict[str, str]]) -> None:
    _, env = account
    run(env, "sync")
    again = run(env, "sync")  # (nothing happened in the account since)
    assert again.exit_code == 0, again.output
    assert re.search(r"^sync \w+ succeeded: 0 objects, 0 new movements$", again.stdout, re.M), again.stdout
    assert "Objects synced per type" not in again.stdout and "Current month" in again.stdout
