"""Output paths the CLI writes (report --chart/--html, export --out, sandbox --truth-out) never replace the store,
its files, another database or a file no report wrote."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from stripe_churn.cli import check_sandbox_outputs, cli
from stripe_churn.errors import ConfigError
from tests.report.test_report import published_store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return published_store(tmp_path_factory.mktemp("outputs") / "s.duckdb", customers=20, months=4)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def invoke(db: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env={"STRIPE_CHURN_DB": str(db)})
    return result.exit_code, result.output


@pytest.mark.parametrize("ending", ["", ".snapshot", ".wal", ".snapshot.wal", ".lock", ".daemon.lock",
                                    ".daemon.json", ".daemon.json.123.tmp", ".k2j4x8.tmp"])
def test_the_page_never_replaces_the_store_or_its_files(store: Path, ending: str) -> None:
    """(`report --html <db>` replaced the store with a page: `sync` then said it is not a DuckDB database)"""
    target = store.with_name(store.name + ending)
    before = digest(target) if target.exists() else None
    code, out = invoke(store, "report", "--html", str(target))
    assert code == 2, out
    assert out.splitlines()[-1].startswith(f"error: will not write {target}: it is "), out
    assert len(out.splitlines()) == 1, out  # (refused before the table is printed)
    assert (digest(target) if target.exists() else None) == before


def test_a_page_named_after_the_store_is_no_file_of_it(store: Path) -> None:
    page = store.with_name(store.name + ".html")
    code, out = invoke(store, "report", "--html", str(page))
    assert code == 0 and "<table>" in page.read_text(), out
    page.unlink()


def test_no_chart_page_or_export_over_another_database(store: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.png"
    shutil.copyfile(store, other)
    for args in (["report", "--chart", str(other)], ["report", "--html", str(other)]):
        code, out = invoke(store, *args)
        assert code == 2 and out == f"error: will not write {other}: it is a DuckDB database; give " \
                                    f"{args[1]} another path\n", out
    shutil.copyfile(store, tmp_path / "mrr_bridge.parquet")
    code, out = invoke(store, "export", "--out", str(tmp_path), "mrr_bridge")
    assert code == 2 and "it is a DuckDB database; give --out another path" in out, out
    assert digest(tmp_path / "mrr_bridge.parquet") == digest(store)


def test_a_file_no_report_wrote_is_kept_and_an_earlier_report_is_replaced(store: Path, tmp_path: Path) -> None:
    notes, page, chart = tmp_path / "notes.html", tmp_path / "r.html", tmp_path / "c.svg"
    notes.write_text("<html>board notes</html>")
    code, out = invoke(store, "report", "--html", str(notes))
    assert code == 2 and out == (f"error: will not write over {notes}: it is not an earlier --html output of "
                                 f"stripe-churn; remove it first or give --html another path\n"), out
    assert notes.read_text() == "<html>board notes</html>"
    for _ in range(2):  # (the second run writes over the first's page and chart)
        code, out = invoke(store, "report", "--html", str(page), "--chart", str(chart))
        assert code == 0, out
    assert "<table>" in page.read_text() and "<svg" in chart.read_text()
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a chart")
    code, out = invoke(store, "report", "--chart", str(tmp_path / "photo.png"))
    assert code == 2 and "not an earlier --chart output" in out, out
    code, out = invoke(store, "export", "--format", "csv", "--out", str(tmp_path), "mrr_bridge")
    assert code == 0, out
    code, out = invoke(store, "export", "--format", "csv", "--out", str(tmp_path), "mrr_bridge")
    assert code == 0, out  # (export writes over its own folder, as README says)


def test_the_ground_truth_never_replaces_a_store(store: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="it is a file of the store"):
        check_sandbox_outputs(0, store.with_name(store.name + ".snapshot.wal"))
    with pytest.raises(ConfigError, match="it is a DuckDB database"):
        check_sandbox_outputs(0, store)
    (tmp_path / "t.jsonl").write_text('{"a": 1}\n')
    check_sandbox_outputs(0, tmp_path / "t.jsonl")
