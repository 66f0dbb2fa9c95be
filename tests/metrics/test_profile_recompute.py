"""scripts/profile_recompute.py: a full recompute profiled statement by statement, the store left as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
from conftest import script_module

from stripe_churn.metrics import runner


def contents(path: Path) -> dict[str, list[tuple[object, ...]]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE NOT temporary "
                                            "AND (table_name LIKE 'derived%' OR table_name = 'metrics_runs')"
                                            ).fetchall()]
        return {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    finally:
        con.close()


def test_every_statement_is_profiled_and_the_store_is_unchanged(small_sim_derived_file: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store.duckdb"
    shutil.copyfile(small_sim_derived_file, store)
    before = contents(store)
    assert before["derived_mrr_movements"]
    # (under other rules, so that a recompute left in place would change what the store holds)
    config = tmp_path / "rules.toml"
    config.write_text('[rules]\nchurn_recognition = "canceled"\nmovement_window = "24h"\n')
    profile = script_module("profile_recompute")
    assert profile.main([str(store), "--config", str(config), "--min-seconds", "0", "--operators", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    with duckdb.connect() as parser:
        statements = sum(len(runner.parsed_statements(parser, text)) for _, text in runner.sql_steps())
    assert out[-1].startswith(f"{statements} statements profiled")
    labelled = [line for line in out if line.startswith(" ") and " s  " in line and "rows" not in line]
    assert any(line.endswith("derived_transition_sides") for line in labelled), out[:5]
    # each statement's slowest operators, with what they produced and the optimizer's estimate
    assert sum("(estimated " in line for line in out) >= statements
    assert contents(store) == before


def test_one_statement_and_the_errors(small_sim_derived_file: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "store.duckdb"
    shutil.copyfile(small_sim_derived_file, store)
    profile = script_module("profile_recompute")
    assert profile.main([str(store), "--statement", "derived_item_mrr", "--operators", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("40_item_mrr.sql derived_item_mrr") and len(out) == 5, out
    assert profile.main([str(tmp_path / "none.duckdb")]) == 2
    assert "no store at" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[rules]\nmovement_window = "a day"\n')
    assert profile.main([str(store), "--config", str(bad)]) == 2
    assert "error: setting 'rules.movement_window'" in capsys.readouterr().err
    assert profile.main([str(store), "--statement", "derived_nothing"]) == 2
    assert "no statement's label ends with 'derived_nothing'" in capsys.readouterr().err
