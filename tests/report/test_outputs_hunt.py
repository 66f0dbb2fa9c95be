"""What a finance user gets out of the store through `report`, `export` and `sql`, checked against a small account
worked out by hand (design.md 6 and 7, README "Reports, charts and exports", "Output formats", "SQL for finance").

The account (reporting currency USD, synced on 15 April 2026; euro rates 1.10 from 1 November 2025, 1.20 from
1 April 2026):

- E: a trial from 10 November 2025, canceled on the 20th while trialing: never any MRR, so the periods start in
  December, not November.
- C: 2 seats of basic (10.00) from Monday 1 December 2025 00:00 UTC: new 20.00; a 25% forever coupon from
  12 March 2026: 15.00 (`discount`, contraction 5.00).
- A: 3 seats of basic from 3 December 10:00: new 30.00; pro (20.00) on 10 January: upgrade +30.00 (60.00);
  5 seats on Sunday 15 February: seat_expansion +40.00 (100.00).
- B: the add-on (50.00) from 20 December: new 50.00; canceled at once on 5 February 14:30 (too_expensive):
  churn 50.00; back on 10 March on the annual add-on (1,200.00 a year): reactivation +100.00.
- D (EUR): 4 seats of basic at 10.00 EUR from 20 February 09:15: new 40 x 1.10 = 44.00; the rate moves to 1.20
  on 1 April: fx +4.00 (48.00).

The monthly bridge by hand (customers opening/new/reactivated/churned/closing):

| month   | opening | new | react. | expansion | contraction | churn | fx | closing | customers |
|---------|---------|-----|--------|-----------|-------------|-------|----|---------|-----------|
| 2025-12 | 0       | 100 | 0      | 0         | 0           | 0     | 0  | 100     | 0/3/0/0/3 |
| 2026-01 | 100     | 0   | 0      | 30 (upg.) | 0           | 0     | 0  | 130     | 3/0/0/0/3 |
| 2026-02 | 130     | 44  | 0      | 40 (seat) | 0           | 50    | 0  | 164     | 3/1/0/1/3 |
| 2026-03 | 164     | 0   | 100    | 0         | 5 (disc.)   | 0     | 0  | 259     | 3/0/1/0/4 |
| 2026-04 | 259     | 0   | 0      | 0         | 0           | 0     | 4  | 263     | 4/0/0/0/4 |
| 2026-05 to the current month: quiet, 263 and 4 customers                                            |

The current month is taken from the clock, so the quiet tail runs to it.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import re
import shutil
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner, Result

sys.path.insert(0, str(Path(__file__).parents[1] / "metrics"))
from builders import World, ts

from stripe_churn.cli import cli

D = Decimal
SEEN = ts(2026, 4, 15)
AS_OF = dt.date(2026, 4, 15)
UTC = dt.UTC

BRIDGE_COLUMNS = [
    "period_start", "period_end", "opening_mrr", "new", "reactivation", "expansion", "contraction", "churn", "fx",
    "closing_mrr", "upgrade", "cross_sell", "seat_expansion", "resource_expansion", "downgrade", "seat_contraction",
    "resource_contraction", "discount_expansion", "discount_contraction", "opening_customers", "new_customers",
    "reactivated_customers", "churned_customers", "closing_customers", "gross_revenue_churn_rate",
    "net_revenue_churn_rate", "nrr", "grr", "customer_churn_rate", "quick_ratio", "arpa", "net_negative_churn"]
MOVEMENT_COLUMNS = [
    "account_id", "customer_id", "subscription_id", "subscription_item_id", "product_id", "price_id", "occurred_at",
    "movement", "category", "mrr_before", "mrr_after", "mrr_delta", "currency", "amount_delta_original",
    "churn_type", "cancellation_feedback", "source_event_id", "source_invoice_id"]
CUSTOMER_MRR_COLUMNS = ["account_id", "customer_id", "valid_from", "valid_to", "mrr"]
MONEY = ["opening_mrr", "new", "reactivation", "expansion", "contraction", "churn", "fx", "closing_mrr", "upgrade",
         "cross_sell", "seat_expansion", "resource_expansion", "downgrade", "seat_contraction",
         "resource_contraction", "discount_expansion", "discount_contraction", "arpa"]
COUNTS = ["opening_customers", "new_customers", "reactivated_customers", "churned_customers", "closing_customers"]
RATES = ["gross_revenue_churn_rate", "net_revenue_churn_rate", "nrr", "grr", "customer_churn_rate", "quick_ratio"]


def account(w: World) -> World:
    """The account of the module docstring."""
    w.product("prod_core", unit_label="seat", family="core")
    w.product("prod_addon", family="addon")
    w.price("basic_usd", "prod_core", 1_000)
    w.price("pro_usd", "prod_core", 2_000)
    w.price("basic_eur", "prod_core", 1_000, currency="eur")
    w.price("addon_usd", "prod_addon", 5_000)
    w.price("annual_usd", "prod_addon", 120_000, interval="year")
    w.coupon("co_25", percent_off=25)
    w.fx_rates += [("2025-11-01", "eur", 1.10), ("2026-04-01", "eur", 1.20)]
    for c in "ABCE":
        w.customer(c)
    w.customer("D", currency="eur")
    w.subscribe("sE", "E", [("iE", "basic_usd", 1)], ts(2025, 11, 10), trial_end=ts(2025, 11, 24))
    w.cancel("sE", ts(2025, 11, 20))
    w.subscribe("sC", "C", [("iC", "basic_usd", 2)], ts(2025, 12, 1))
    w.subscribe("sA", "A", [("iA", "basic_usd", 3)], ts(2025, 12, 3, 10))
    w.subscribe("sB", "B", [("iB", "addon_usd", 1)], ts(2025, 12, 20))
    w.update("sA", ts(2026, 1, 10), items=[("iA", "pro_usd", 3)])
    w.cancel("sB", ts(2026, 2, 5, 14, 30), feedback="too_expensive")
    w.update("sA", ts(2026, 2, 15), items=[("iA", "pro_usd", 5)])
    w.subscribe("sD", "D", [("iD", "basic_eur", 4)], ts(2026, 2, 20, 9, 15))
    w.subscribe("sB2", "B", [("iB2", "annual_usd", 1)], ts(2026, 3, 10))
    d = w.discount("co_25", ts(2026, 3, 12), customer="C", subscription="sC")
    w.update("sC", ts(2026, 3, 12), discounts=[d["id"]])
    return w


WORLD = account(World())


def event_id(etype: str, sid: str, at: int) -> str:
    """The id of the one event of ``etype`` about subscription ``sid`` made at ``at``."""
    found = [e["id"] for e in WORLD.events
             if e["type"] == etype and e["data"]["object"]["id"] == sid and e["created"] == at]
    assert len(found) == 1, (etype, sid, at, found)
    return str(found[0])


def invoice_id(sid: str, reason: str, at: int) -> str:
    found = [i["id"] for i in WORLD.objects["invoices"].values()
             if i["parent"]["subscription_details"]["subscription"] == sid and i["billing_reason"] == reason
             and i["created"] == at]
    assert len(found) == 1, (sid, reason, at, found)
    return str(found[0])


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The account loaded, recomputed and published as a snapshot, as a sync leaves it."""
    from stripe_churn.metrics.runner import recompute
    from stripe_churn.settings import Settings
    from stripe_churn.store.db import open_store
    from stripe_churn.store.snapshot import publish_snapshot

    path = tmp_path_factory.mktemp("hand") / "hand.duckdb"
    con = open_store(path)
    WORLD.load(con, seen_at=SEEN)
    recompute(con, Settings(db=path))
    con.execute("CHECKPOINT")
    con.close()
    publish_snapshot(path)
    return path


@pytest.fixture(scope="module")
def spare(db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the store (database and snapshot) for the commands that are to be refused a write."""
    from stripe_churn.store.snapshot import snapshot_path

    path = tmp_path_factory.mktemp("spare") / "hand.duckdb"
    shutil.copyfile(db, path)
    shutil.copyfile(snapshot_path(db), snapshot_path(path))
    SPARE_DIGESTS[:] = digest(path, snapshot_path(path))
    return path


SPARE_DIGESTS: list[str] = []


def invoke(db: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"STRIPE_CHURN_DB": str(db)})


def ok(db: Path, *args: str) -> str:
    result = invoke(db, *args)
    assert result.exit_code == 0, result.output
    return result.stdout


_PRINTED: dict[tuple[str, ...], str] = {}


def report_json(db: Path, *args: str) -> list[dict[str, Any]]:
    """`report --format json` with ``args``, run once per module for the same arguments."""
    key = (str(db), *args)
    if key not in _PRINTED:
        _PRINTED[key] = ok(db, "report", *args, "--format", "json")
    doc: list[dict[str, Any]] = json.loads(_PRINTED[key])
    return doc


def one_line_error(result: Result) -> str:
    """The failure of a command: a non-zero exit code, nothing on stdout, one line on stderr, no traceback."""
    assert result.exit_code not in (0, None), result.output
    assert result.stdout == "", result.stdout
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.stderr.strip()


def months_to_now(first: dt.date) -> list[dt.date]:
    today = dt.datetime.now(UTC).date()
    out, m = [], first
    while m <= today:
        out.append(m)
        m = dt.date(m.year + m.month // 12, m.month % 12 + 1, 1)
    return out


def month_end(m: dt.date) -> dt.date:
    return dt.date(m.year + m.month // 12, m.month % 12 + 1, 1) - dt.timedelta(days=1)


def bridge_row(start: dt.date, end: dt.date, opening: str, closing: str, customers: tuple[int, int, int, int, int],
               rates: tuple[Any, ...], arpa: str | None, nnc: bool | None, **flows: str) -> dict[str, Any]:
    """One bridge row written out by hand: money as exact decimals, ``flows`` the non-zero flow columns,
    ``rates`` (gross, net, NRR, GRR, customer churn, quick ratio) as fractions or None."""
    row: dict[str, Any] = {"period_start": start, "period_end": end, "opening_mrr": D(opening),
                           "closing_mrr": D(closing), "arpa": None if arpa is None else D(arpa),
                           "net_negative_churn": nnc}
    for c in MONEY:
        row.setdefault(c, D(flows.get(c, "0")))
    row.update(zip(COUNTS, customers, strict=True))
    row.update(zip(RATES, rates, strict=True))
    return row


QUIET = (0.0, 0.0, 1.0, 1.0, 0.0, None)


def hand_months() -> list[dict[str, Any]]:
    """The monthly bridge of the module docstring, with its rates:
    - December: every denominator (opening MRR, opening customers, contraction + churn) is zero: all NULL.
    - January: gross 0/100, net (0 - 30)/100 = -0.30, NRR 130/100, GRR 100/100, customers 0/3, quick 30/0 NULL.
    - February: gross 50/130, net (50 - 40)/130, NRR (130 + 40 - 50)/130, GRR 80/130, customers 1/3 (B),
      quick (44 + 40)/50 = 1.68, ARPA 164/3 = 54.6667.
    - March: gross 5/164, net (5 - 100)/164, NRR and GRR 159/164, customers 0/3, quick 100/5 = 20.
    - April on: gross 0, net 0, NRR and GRR 1, customers 0/4, quick 0/0 NULL; ARPA 263/4 = 65.75 (fx is in no
      rate)."""
    rows = [
        bridge_row(dt.date(2025, 12, 1), dt.date(2025, 12, 31), "0", "100", (0, 3, 0, 0, 3), (None,) * 6,
                   "33.3333", None, new="100"),
        bridge_row(dt.date(2026, 1, 1), dt.date(2026, 1, 31), "100", "130", (3, 0, 0, 0, 3),
                   (0.0, -0.3, 1.3, 1.0, 0.0, None), "43.3333", True, expansion="30", upgrade="30"),
        bridge_row(dt.date(2026, 2, 1), dt.date(2026, 2, 28), "130", "164", (3, 1, 0, 1, 3),
                   (50 / 130, 10 / 130, 120 / 130, 80 / 130, 1 / 3, 1.68), "54.6667", False,
                   new="44", expansion="40", seat_expansion="40", churn="50"),
        bridge_row(dt.date(2026, 3, 1), dt.date(2026, 3, 31), "164", "259", (3, 0, 1, 0, 4),
                   (5 / 164, -95 / 164, 159 / 164, 159 / 164, 0.0, 20.0), "64.75", True,
                   reactivation="100", contraction="5", discount_contraction="5"),
        bridge_row(dt.date(2026, 4, 1), dt.date(2026, 4, 30), "259", "263", (4, 0, 0, 0, 4), QUIET, "65.75", False,
                   fx="4"),
    ]
    for m in months_to_now(dt.date(2026, 5, 1)):
        rows.append(bridge_row(m, month_end(m), "263", "263", (4, 0, 0, 0, 4), QUIET, "65.75", False))
    return rows


def same(got: Any, want: Any) -> bool:
    if want is None or isinstance(want, bool) or got is None or isinstance(got, bool):
        return got is want or (got == want and type(got) is type(want))
    if isinstance(want, float):
        return bool(float(got) == pytest.approx(want, rel=1e-9, abs=1e-12))
    if isinstance(want, int):
        return int(got) == want
    if isinstance(want, Decimal):
        return D(str(got)) == want
    if isinstance(want, dt.date):
        return str(got)[:10] == want.isoformat()
    return bool(got == want)


def differences(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> list[Any]:
    """(period, column, got, want) of each cell that differs; a missing or extra row as one difference."""
    out: list[Any] = []
    if len(got) != len(want):
        out.append(("rows", len(got), len(want)))
    for g, w in zip(got, want, strict=False):
        out += [(str(w["period_start"]), c, g.get(c), v) for c, v in w.items() if not same(g.get(c), v)]
    return out


def view(db: Path, query: str) -> list[dict[str, Any]]:
    from stripe_churn.store.snapshot import snapshot_path

    con = duckdb.connect(str(snapshot_path(db)), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        rel = con.sql(query)
        names = rel.columns
        return [dict(zip(names, r, strict=True)) for r in rel.fetchall()]
    finally:
        con.close()


def digest(*paths: Path) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


# --- report ------------------------------------------------------------------------------------------------------


def test_the_monthly_report_as_json_is_the_bridge_worked_out_by_hand(db: Path) -> None:
    """design.md 6 and 7: one row per month from December 2025 (the first month with MRR: E's November trial never
    counted) through the current month, quiet months included, each with the view's columns in design.md 7's
    order and then `complete` (true for the months that ended before the 15 April sync). The numbers: the
    module docstring's table and `hand_months`."""
    got = report_json(db)
    assert [list(r) for r in got] == [[*BRIDGE_COLUMNS, "complete"]] * len(got)
    assert differences(got, hand_months()) == []
    assert [r["complete"] for r in got] == [True] * 4 + [False] * (len(got) - 4)


def test_csv_json_and_the_view_agree_to_the_cent(db: Path) -> None:
    """The same rows three ways: `report --format csv` writes each amount as the view stores it (4 decimals), JSON
    as the same number, the rates as the same double; the identity opening + new + reactivation + expansion -
    contraction - churn + fx = closing holds in each month's CSV cells exactly."""
    stored = view(db, "SELECT * FROM mrr_bridge ORDER BY period_start")
    assert differences(stored, hand_months()) == []
    text = ok(db, "report", "--format", "csv")
    header, *cells = list(csv.reader(io.StringIO(text)))
    assert header == [*BRIDGE_COLUMNS, "complete"]
    as_json = report_json(db)
    assert len(cells) == len(as_json) == len(stored)
    for line, doc, row in zip(cells, as_json, stored, strict=True):
        got = dict(zip(header, line, strict=True))
        for c in MONEY:
            want = row[c]
            assert D(got[c]) == want and D(str(doc[c])) == want, (row["period_start"], c, got[c], doc[c], want)
            assert re.fullmatch(r"-?\d+\.\d{4}", got[c]), got[c]
        for c in RATES:
            assert (got[c] == "" and doc[c] is None) if row[c] is None else \
                float(got[c]) == doc[c] == row[c], (c, got[c], doc[c], row[c])
        assert [int(got[c]) for c in COUNTS] == [doc[c] for c in COUNTS] == [row[c] for c in COUNTS]
        flows = (D(got["opening_mrr"]) + D(got["new"]) + D(got["reactivation"]) + D(got["expansion"])
                 - D(got["contraction"]) - D(got["churn"]) + D(got["fx"]))
        assert flows == D(got["closing_mrr"]), got
        assert (got["net_negative_churn"] == "") == (doc["net_negative_churn"] is None)
        assert doc["net_negative_churn"] is row["net_negative_churn"]


def table_cells(text: str) -> dict[str, list[str]]:
    """The table's data rows by their first cell."""
    rows = [[c.strip() for c in line.strip().strip("│").split("│")] for line in text.splitlines()
            if re.match(r"^│ \d{4}-\d\d-\d\d", line.strip())]
    return {r[0]: r[1:] for r in rows}


def test_the_monthly_table_rounds_to_the_cent_and_gives_a_verdict_per_month(db: Path) -> None:
    """README "Reports": amounts to the cent, rates as percentages (NULL as an empty cell), `n/a` for December
    (no opening MRR), yes/no for the complete months, `running` for April (the sync was on the 15th) and `after
    data` later. Complete periods at net negative churn: January (-30%) and March (-95/164 = -57.93%) of
    December-March with opening MRR (January, February, March): 2 of 3. February: gross 50/130 = 38.46%, net
    10/130 = 7.69%, NRR 120/130 = 92.31%, customers 1/3 = 33.33%, quick 1.68."""
    text = ok(db, "report")
    assert "MRR bridge per month (USD)" in text
    cells = table_cells(text)
    assert cells["2025-12-01"] == ["0.00", "100.00", "0.00", "0.00", "0.00", "0.00", "0.00", "100.00",
                                   "", "", "", "", "", "n/a"]
    assert cells["2026-01-01"] == ["100.00", "0.00", "0.00", "30.00", "0.00", "0.00", "0.00", "130.00",
                                   "0.00%", "-30.00%", "130.00%", "0.00%", "", "yes"]
    assert cells["2026-02-01"] == ["130.00", "44.00", "0.00", "40.00", "0.00", "50.00", "0.00", "164.00",
                                   "38.46%", "7.69%", "92.31%", "33.33%", "1.68", "no"]
    assert cells["2026-03-01"] == ["164.00", "0.00", "100.00", "0.00", "5.00", "0.00", "0.00", "259.00",
                                   "3.05%", "-57.93%", "96.95%", "0.00%", "20.00", "yes"]
    assert cells["2026-04-01"] == ["259.00", "0.00", "0.00", "0.00", "0.00", "0.00", "4.00", "263.00",
                                   "0.00%", "0.00%", "100.00%", "0.00%", "", "running"]
    later = [m.isoformat() for m in months_to_now(dt.date(2026, 5, 1))]
    assert sorted(cells) == ["2025-12-01", "2026-01-01", "2026-02-01", "2026-03-01", "2026-04-01", *later]
    assert {cells[m][-1] for m in later} == {"after data"}
    flat = " ".join(text.split())
    assert "net negative churn in 2 of 3 complete periods (data up to 2026-04-15)" in flat
    assert ("latest complete month (2026-03-01): AT net negative churn; net revenue churn -57.93% (expansion + "
            "reactivation 100.00 outweigh churn + contraction 5.00)") in flat


def hand_quarters() -> list[dict[str, Any]]:
    """Q4 2025 (from 1 October: the quarter of the first month with MRR): new 100, closing 100, no rate.
    Q1 2026: opening 100 (3), new 44, reactivation 100, expansion 30 + 40 = 70, contraction 5, churn 50: closing
    259; gross 55/100, net (55 - 70 - 100)/100 = -1.15, NRR (100 + 70 - 55)/100 = 1.15, GRR 45/100, customers
    1/3 (B had MRR on 1 January and churned), quick (44 + 100 + 70)/55, ARPA 259/4. Q2: fx 4, 263. Then quiet."""
    rows = [
        bridge_row(dt.date(2025, 10, 1), dt.date(2025, 12, 31), "0", "100", (0, 3, 0, 0, 3), (None,) * 6,
                   "33.3333", None, new="100"),
        bridge_row(dt.date(2026, 1, 1), dt.date(2026, 3, 31), "100", "259", (3, 1, 1, 1, 4),
                   (0.55, -1.15, 1.15, 0.45, 1 / 3, 214 / 55), "64.75", True, new="44", reactivation="100",
                   expansion="70", upgrade="30", seat_expansion="40", contraction="5", discount_contraction="5",
                   churn="50"),
        bridge_row(dt.date(2026, 4, 1), dt.date(2026, 6, 30), "259", "263", (4, 0, 0, 0, 4), QUIET, "65.75", False,
                   fx="4"),
    ]
    today = dt.datetime.now(UTC).date()
    q = dt.date(2026, 7, 1)
    while q <= today:
        rows.append(bridge_row(q, month_end(dt.date(q.year, q.month + 2, 1)), "263", "263", (4, 0, 0, 0, 4), QUIET,
                               "65.75", False))
        q = dt.date(q.year + (q.month + 3 > 12), (q.month + 2) % 12 + 1, 1)
    return rows


def test_quarters_by_hand_in_json_and_in_the_table(db: Path) -> None:
    """`--period quarter`: `hand_quarters`; the table counts Q1 2026 alone as complete with opening MRR (Q4 2025 is
    n/a, Q2 running on 15 April) and answers for it: net -115.00%, 170.00 against 55.00."""
    got = report_json(db, "--period", "quarter")
    assert differences(got, hand_quarters()) == []
    assert [r["complete"] for r in got] == [True, True] + [False] * (len(got) - 2)
    text = ok(db, "report", "--period", "quarter")
    assert [v[-1] for v in table_cells(text).values()][:3] == ["n/a", "yes", "running"]
    flat = " ".join(text.split())
    assert "MRR bridge per quarter (USD)" in flat
    assert "net negative churn in 1 of 1 complete periods (data up to 2026-04-15)" in flat
    assert ("latest complete quarter (2026-01-01): AT net negative churn; net revenue churn -115.00% (expansion + "
            "reactivation 170.00 outweigh churn + contraction 55.00)") in flat


def test_years_by_hand(db: Path) -> None:
    """`--period year`: 2025 (opening 0, new 100, closing 100: n/a) and 2026 (opening 100, Q1's flows and April's
    fx 4: 263; gross 0.55, net -1.15, NRR 1.15, GRR 0.45, customers 1/3, quick 214/55, ARPA 263/4 = 65.75), running
    on 15 April: no complete period with opening MRR, so no verdict sentence."""
    got = report_json(db, "--period", "year")
    want = [
        bridge_row(dt.date(2025, 1, 1), dt.date(2025, 12, 31), "0", "100", (0, 3, 0, 0, 3), (None,) * 6,
                   "33.3333", None, new="100"),
        bridge_row(dt.date(2026, 1, 1), dt.date(2026, 12, 31), "100", "263", (3, 1, 1, 1, 4),
                   (0.55, -1.15, 1.15, 0.45, 1 / 3, 214 / 55), "65.75", True, new="44", reactivation="100",
                   expansion="70", upgrade="30", seat_expansion="40", contraction="5", discount_contraction="5",
                   churn="50", fx="4"),
    ]
    assert differences(got, want) == []
    assert [r["complete"] for r in got] == [True, False]
    text = ok(db, "report", "--period", "year")
    assert [v[-1] for v in table_cells(text).values()] == ["n/a", "running"]
    flat = " ".join(text.split())
    assert "net negative churn in 0 of 0 complete periods (data up to 2026-04-15)" in flat
    assert "latest complete" not in flat


def test_weeks_by_hand(db: Path) -> None:
    """`--period week`: ISO weeks from Monday 1 December 2025 (C's signup at its first instant) through the week of
    today, every one a Monday to Sunday, quiet weeks included. Flows: 1 Dec new 50 (C, A); 15 Dec new 50 (B on
    Saturday the 20th); 5 Jan upgrade 30 (Saturday the 10th); 2 Feb churn 50 (Thursday the 5th); 9 Feb seats 40
    (Sunday the 15th, the week's last day); 16 Feb new 44; 9 Mar reactivation 100 and discount 5 (Tuesday and
    Thursday); 30 Mar fx 4 (Wednesday 1 April). Each week opens at the previous week's close; the week of 9 Feb
    has net (0 - 40)/80 = -0.5 and is at net negative churn; the week of 13 April is the one the data ends in."""
    got = report_json(db, "--period", "week")
    today = dt.datetime.now(UTC).date()
    mondays = [dt.date(2025, 12, 1) + dt.timedelta(weeks=k)
               for k in range((today - dt.date(2025, 12, 1)).days // 7 + 1)]
    assert [r["period_start"] for r in got] == [m.isoformat() for m in mondays]
    assert [r["period_end"] for r in got] == [(m + dt.timedelta(days=6)).isoformat() for m in mondays]
    flows = {"2025-12-01": {"new": 50}, "2025-12-15": {"new": 50}, "2026-01-05": {"upgrade": 30, "expansion": 30},
             "2026-02-02": {"churn": 50}, "2026-02-09": {"seat_expansion": 40, "expansion": 40},
             "2026-02-16": {"new": 44}, "2026-03-09": {"reactivation": 100, "contraction": 5,
                                                       "discount_contraction": 5},
             "2026-03-30": {"fx": 4}}
    level = 0
    for r in got:
        want = flows.get(r["period_start"], {})
        assert {c: r[c] for c in MONEY[1:7] + MONEY[8:17] if r[c]} == want, r
        assert r["opening_mrr"] == level, r
        level = r["closing_mrr"]
    assert level == 263
    week = {r["period_start"]: r for r in got}
    assert week["2026-02-09"]["net_revenue_churn_rate"] == -0.5 and week["2026-02-09"]["net_negative_churn"] is True
    assert (week["2026-04-06"]["complete"], week["2026-04-13"]["complete"]) == (True, False)


@pytest.mark.parametrize(("args", "starts"), [
    (["--from", "2026-02", "--period", "quarter"], ["2026-04-01", "2026-07-01", "2026-10-01"]),
    (["--from", "2025-12", "--to", "2025-12", "--period", "week"],
     ["2025-12-01", "2025-12-08", "2025-12-15", "2025-12-22", "2025-12-29"]),
    (["--from", "2026-01-15", "--to", "2026-03-01"], ["2026-02-01", "2026-03-01"]),
    (["--to", "2026-02", "--period", "quarter"], ["2025-10-01", "2026-01-01"]),
    (["--from", "2025-06", "--to", "2025-12-01", "--period", "year"], []),
])
def test_from_and_to_keep_the_periods_that_start_within_them(db: Path, args: list[str], starts: list[str]) -> None:
    """README: `--from` and `--to` keep the periods that start within them, a month given to `--from` is its first
    day and to `--to` its last (`--from 2026-02 --period quarter` begins with April's quarter; December 2025's
    weeks start on 1, 8, 15, 22 and 29 December; `--to 2026-02` keeps January's quarter, which starts before 28
    February; the year 2025 starts before June 2025). The rows kept are the
    full-range rows, unchanged (the quarters after Q2 only as far as today goes)."""
    today = dt.datetime.now(UTC).date().isoformat()
    starts = [s for s in starts if s <= today]
    period = args[args.index("--period") + 1] if "--period" in args else "month"
    whole = {r["period_start"]: r for r in report_json(db, "--period", period)}
    got = json.loads(ok(db, "report", *args, "--format", "json"))
    assert [r["period_start"] for r in got] == starts
    assert got == [whole[s] for s in starts]


def test_a_range_without_periods_is_an_empty_report_in_every_format(db: Path) -> None:
    """Nothing starts in 2024: JSON `[]`, CSV the header alone (the view's columns and `complete`, as with rows),
    the table its line that there is no MRR in that range; exit code 0 each time."""
    rng = ["report", "--from", "2024-01", "--to", "2024-12"]
    assert json.loads(ok(db, *rng, "--format", "json")) == []
    assert ok(db, *rng, "--format", "csv").splitlines() == [",".join([*BRIDGE_COLUMNS, "complete"])]
    assert "no MRR to report in that range" in " ".join(ok(db, *rng).split())


def test_a_family_segment_by_hand(db: Path) -> None:
    """README (a customer belongs for a period to the segment of its state at the period start, or of its first
    state with MRR in it): family `addon` is B alone. February: opening 50, churn 50, closing 0: gross, net and
    customer churn 50/50 = 1, NRR and GRR 0, quick 0/50 = 0, ARPA NULL (no closing customer). March: B's comeback
    on the annual add-on, reactivation 100 from an opening of 0: every rate NULL, ARPA 100. Family `core` (A, C,
    D): closings 50, 80, 164, 159, 163 from December to April, and the two families add up to the account."""
    got = json.loads(ok(db, "report", "--segment", "family=addon", "--from", "2026-02", "--to", "2026-03",
                        "--format", "json"))
    assert [list(r) for r in got] == [["segment_value", *BRIDGE_COLUMNS, "complete"]] * 2
    assert [r["segment_value"] for r in got] == ["addon", "addon"]
    want = [
        bridge_row(dt.date(2026, 2, 1), dt.date(2026, 2, 28), "50", "0", (1, 0, 0, 1, 0),
                   (1.0, 1.0, 0.0, 0.0, 1.0, 0.0), None, False, churn="50"),
        bridge_row(dt.date(2026, 3, 1), dt.date(2026, 3, 31), "0", "100", (0, 0, 1, 0, 1), (None,) * 6, "100",
                   None, reactivation="100"),
    ]
    assert differences(got, want) == []
    rows = list(csv.DictReader(io.StringIO(ok(db, "report", "--segment", "family", "--to", "2026-04",
                                             "--format", "csv"))))
    closing: dict[tuple[str, str], Decimal] = {(r["segment_value"], r["period_start"]): D(r["closing_mrr"])
                                               for r in rows}
    months = ["2025-12-01", "2026-01-01", "2026-02-01", "2026-03-01", "2026-04-01"]
    assert [closing[("core", m)] for m in months] == [50, 80, 164, 159, 163]
    assert [closing[("core", m)] + closing.get(("addon", m), D(0)) for m in months] == [100, 130, 164, 259, 263]


def test_a_segmented_table_counts_every_segments_complete_periods(db: Path) -> None:
    """README: per segment, every segment's periods count, and there is no one-sentence verdict. By family to
    April, complete (ended before 15 April) with opening MRR: addon January (0/50: no) and February (50/50: no),
    core January (-30/50 = -60.00%: yes), February (-40/80 = -50.00%: yes) and March (5/164 = 3.05%: no); December
    of both and addon's March opened at 0 (n/a), April is running: 2 of 5."""
    text = ok(db, "report", "--segment", "family", "--to", "2026-04")
    rows = [[c.strip() for c in ln.strip("│").split("│")] for ln in text.splitlines() if ln.startswith("│ ")]
    assert [(r[0], r[1], r[11], r[-1]) for r in rows] == [
        ("addon", "2025-12-01", "", "n/a"), ("addon", "2026-01-01", "0.00%", "no"),
        ("addon", "2026-02-01", "100.00%", "no"), ("addon", "2026-03-01", "", "n/a"),
        ("addon", "2026-04-01", "0.00%", "running"), ("core", "2025-12-01", "", "n/a"),
        ("core", "2026-01-01", "-60.00%", "yes"), ("core", "2026-02-01", "-50.00%", "yes"),
        ("core", "2026-03-01", "3.05%", "no"), ("core", "2026-04-01", "0.00%", "running")]
    flat = " ".join(text.split())
    assert "net negative churn in 2 of 5 complete periods (data up to 2026-04-15)" in flat
    assert "latest complete" not in flat


def test_the_chart_draws_the_ranges_waterfall_by_hand(db: Path, tmp_path: Path) -> None:
    """README `--chart`: the waterfall over the chosen range. January to March: opening 100, new 44, reactivation
    100, upgrade 30, seat expansion 40, contraction -5, churn -50, fx 0, closing 259; each bar is labelled with its
    amount (matplotlib keeps each text of an SVG as a comment)."""
    chart = tmp_path / "bridge.svg"
    ok(db, "report", "--from", "2026-01", "--to", "2026-03", "--chart", str(chart))
    svg = chart.read_text(encoding="utf-8")
    texts = re.findall(r"<!-- (.*?) -->", svg)
    title = "MRR bridge, 2026-01-01 to 2026-03-01 (USD)"
    assert title in texts and "MRR (USD)" in texts
    labels = ["opening", "new", "reactivation", "upgrade", "cross sell", "seat expansion", "resource expansion",
              "discount expansion", "contraction", "churn", "fx", "closing"]
    at = texts.index("opening")
    assert texts[at:at + len(labels)] == labels
    amounts = ["100", "44", "100", "30", "0", "40", "0", "0", "-5", "-50", "0", "259"]
    # (the bars' labels come after the axis's name, before the panel's title)
    assert texts[texts.index("MRR (USD)") + 1:texts.index(title)] == amounts


# --- export ------------------------------------------------------------------------------------------------------


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, tzinfo=UTC)


def hand_movements() -> list[tuple[Any, ...]]:
    """mrr_movements by hand in design.md 7's column order (account, customer, subscription, item, product, price,
    occurred_at, movement, category, before, after, delta, currency, amount in that currency, churn type, feedback,
    event, invoice), ordered by time. Each row names the event and invoice of its change (README: a plan or
    quantity part names its invoice; a cancellation made at once and a discount have no invoice of their own;
    an `fx` row names none)."""
    created, updated = "customer.subscription.created", "customer.subscription.updated"
    a = "acct_test"
    return [
        (a, "C", "sC", "iC", "prod_core", "basic_usd", at(2025, 12, 1), "new", "new", D(0), D(20), D(20), "usd",
         D(20), None, None, event_id(created, "sC", ts(2025, 12, 1)),
         invoice_id("sC", "subscription_create", ts(2025, 12, 1))),
        (a, "A", "sA", "iA", "prod_core", "basic_usd", at(2025, 12, 3, 10), "new", "new", D(0), D(30), D(30), "usd",
         D(30), None, None, event_id(created, "sA", ts(2025, 12, 3, 10)),
         invoice_id("sA", "subscription_create", ts(2025, 12, 3, 10))),
        (a, "B", "sB", "iB", "prod_addon", "addon_usd", at(2025, 12, 20), "new", "new", D(0), D(50), D(50), "usd",
         D(50), None, None, event_id(created, "sB", ts(2025, 12, 20)),
         invoice_id("sB", "subscription_create", ts(2025, 12, 20))),
        (a, "A", "sA", "iA", "prod_core", "pro_usd", at(2026, 1, 10), "upgrade", "expansion", D(30), D(60), D(30),
         "usd", D(30), None, None, event_id(updated, "sA", ts(2026, 1, 10)),
         invoice_id("sA", "subscription_update", ts(2026, 1, 10))),
        (a, "B", "sB", "iB", "prod_addon", "addon_usd", at(2026, 2, 5, 14, 30), "cancellation", "churn", D(50), D(0),
         D(-50), "usd", D(-50), "voluntary", "too_expensive",
         event_id("customer.subscription.deleted", "sB", ts(2026, 2, 5, 14, 30)), None),
        (a, "A", "sA", "iA", "prod_core", "pro_usd", at(2026, 2, 15), "seat_expansion", "expansion", D(60), D(100),
         D(40), "usd", D(40), None, None, event_id(updated, "sA", ts(2026, 2, 15)),
         invoice_id("sA", "subscription_update", ts(2026, 2, 15))),
        (a, "D", "sD", "iD", "prod_core", "basic_eur", at(2026, 2, 20, 9, 15), "new", "new", D(0), D(44), D(44),
         "eur", D(40), None, None, event_id(created, "sD", ts(2026, 2, 20, 9, 15)),
         invoice_id("sD", "subscription_create", ts(2026, 2, 20, 9, 15))),
        (a, "B", "sB2", "iB2", "prod_addon", "annual_usd", at(2026, 3, 10), "reactivation", "reactivation", D(0),
         D(100), D(100), "usd", D(100), None, None, event_id(created, "sB2", ts(2026, 3, 10)),
         invoice_id("sB2", "subscription_create", ts(2026, 3, 10))),
        (a, "C", "sC", "iC", "prod_core", "basic_usd", at(2026, 3, 12), "discount", "contraction", D(20), D(15),
         D(-5), "usd", D(-5), None, None, event_id(updated, "sC", ts(2026, 3, 12)), None),
        (a, "D", "sD", "iD", "prod_core", "basic_eur", at(2026, 4, 1), "fx", "fx", D(44), D(48), D(4), "eur", D(0),
         None, None, None, None),
    ]


def hand_customer_mrr() -> list[tuple[Any, ...]]:
    """customer_mrr by hand, one row per level (NOTES: zero levels included, so B's month away is a row of 0, and a
    level breaks at an exchange rate's date); E's trial never had MRR (a level of 0 from its start, if any, is
    left out of the comparison)."""
    a = "acct_test"
    return [
        (a, "A", at(2025, 12, 3, 10), at(2026, 1, 10), D(30)), (a, "A", at(2026, 1, 10), at(2026, 2, 15), D(60)),
        (a, "A", at(2026, 2, 15), None, D(100)),
        (a, "B", at(2025, 12, 20), at(2026, 2, 5, 14, 30), D(50)), (a, "B", at(2026, 2, 5, 14, 30), at(2026, 3, 10),
                                                                   D(0)),
        (a, "B", at(2026, 3, 10), None, D(100)),
        (a, "C", at(2025, 12, 1), at(2026, 3, 12), D(20)), (a, "C", at(2026, 3, 12), None, D(15)),
        (a, "D", at(2026, 2, 20, 9, 15), at(2026, 4, 1), D(44)), (a, "D", at(2026, 4, 1), None, D(48)),
    ]


@pytest.fixture(scope="module")
def parquet_dir(db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`export` with no name: the finance views as Parquet, one file each."""
    out = tmp_path_factory.mktemp("parquet") / "exports"
    listed = ok(db, "export", "--format", "parquet", "--out", str(out)).split()
    assert sorted(Path(p).name for p in listed) == sorted(
        f"{n}.parquet" for n in ("mrr_movements", "customer_mrr", "mrr_bridge", "scheduled_churn", "churn_reasons",
                                 "sync_runs"))
    return out


def read_parquet(path: Path, order: str) -> tuple[list[tuple[str, str]], list[tuple[Any, ...]]]:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        rel = con.sql(f"SELECT * FROM read_parquet('{path}') ORDER BY {order}")
        return [(c, str(t)) for c, t in zip(rel.columns, rel.types, strict=True)], rel.fetchall()
    finally:
        con.close()


def test_the_bridge_exported_to_parquet_is_the_hand_bridge_with_its_types(parquet_dir: Path) -> None:
    """design.md 7: mrr_bridge's columns in order; money DECIMAL(18,4) (design.md 4), net_negative_churn BOOLEAN,
    the rates NULL where the denominator is zero; every value as `hand_months` has it."""
    types, data = read_parquet(parquet_dir / "mrr_bridge.parquet", "period_start")
    assert [c for c, _ in types] == BRIDGE_COLUMNS
    kind = dict(types)
    assert {c: kind[c] for c in MONEY} == dict.fromkeys(MONEY, "DECIMAL(18,4)")
    assert kind["net_negative_churn"] == "BOOLEAN"
    assert (kind["period_start"], kind["period_end"]) == ("DATE", "DATE")
    got = [dict(zip(BRIDGE_COLUMNS, r, strict=True)) for r in data]
    assert differences(got, hand_months()) == []


def test_movements_and_levels_exported_to_parquet_by_hand(parquet_dir: Path) -> None:
    """design.md 7: mrr_movements and customer_mrr with their columns in order, occurred_at and the levels'
    bounds TIMESTAMPTZ (UTC), amounts DECIMAL(18,4); the rows of `hand_movements` and `hand_customer_mrr`."""
    types, moves = read_parquet(parquet_dir / "mrr_movements.parquet", "occurred_at, customer_id, movement")
    assert [c for c, _ in types] == MOVEMENT_COLUMNS
    kind = dict(types)
    assert kind["occurred_at"] == "TIMESTAMP WITH TIME ZONE"
    assert {kind[c] for c in ("mrr_before", "mrr_after", "mrr_delta", "amount_delta_original")} == {
        "DECIMAL(18,4)"}
    assert moves == hand_movements()
    types, levels = read_parquet(parquet_dir / "customer_mrr.parquet", "customer_id, valid_from")
    assert [c for c, _ in types] == CUSTOMER_MRR_COLUMNS
    assert [kind for _, kind in types[2:]] == ["TIMESTAMP WITH TIME ZONE", "TIMESTAMP WITH TIME ZONE",
                                              "DECIMAL(18,4)"]
    assert [r for r in levels if r[1] != "E"] == hand_customer_mrr()
    assert {r[4] for r in levels if r[1] == "E"} <= {D(0)}


@pytest.fixture(scope="module")
def csv_dir(db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("csv") / "exports"
    ok(db, "export", "--format", "csv", "--out", str(out), "mrr_bridge", "mrr_movements", "customer_mrr")
    return out


def csv_of(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    header, *rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    return header, [dict(zip(header, r, strict=True)) for r in rows]


def utc_text(cell: str) -> dt.datetime | None:
    """A TIMESTAMPTZ cell: empty for NULL, else a moment written at UTC's offset."""
    if cell == "":
        return None
    assert re.search(r"(\+00(:00)?|Z)$", cell), cell
    return dt.datetime.fromisoformat(cell.replace("Z", "+00:00"))


def test_the_bridge_exported_to_csv_is_the_hand_bridge(csv_dir: Path) -> None:
    """The CSV of mrr_bridge: the view's header in order, amounts to 4 decimals as stored, a NULL rate an empty
    cell, net_negative_churn true/false (empty for December), values as `hand_months`."""
    header, rows = csv_of(csv_dir / "mrr_bridge.csv")
    assert header == BRIDGE_COLUMNS
    assert all(re.fullmatch(r"-?\d+\.\d{4}", r[c]) for r in rows for c in MONEY)
    got: list[dict[str, Any]] = [
        {c: (None if r[c] == "" else r[c].lower() == "true" if c == "net_negative_churn" else r[c]) for c in header}
        for r in rows]
    assert differences(got, hand_months()) == []
    assert [r["net_negative_churn"] for r in rows][:4] == ["", "true", "false", "true"]


def test_movements_and_levels_exported_to_csv_by_hand(csv_dir: Path) -> None:
    """The CSVs of mrr_movements and customer_mrr: design.md 7's headers, the moments in UTC, the amounts as
    stored (a cancellation's -50.0000 a number, not neutralised as text), NULL as an empty cell."""
    header, rows = csv_of(csv_dir / "mrr_movements.csv")
    assert header == MOVEMENT_COLUMNS
    got = sorted((tuple(None if r[c] == "" else utc_text(r[c]) if c == "occurred_at" else
                        D(r[c]) if c in ("mrr_before", "mrr_after", "mrr_delta", "amount_delta_original") else r[c]
                        for c in header) for r in rows), key=lambda t: (t[6], t[1], t[7]))
    assert got == hand_movements()
    assert [r["mrr_delta"] for r in rows if r["movement"] == "cancellation"] == ["-50.0000"]
    header, rows = csv_of(csv_dir / "customer_mrr.csv")
    assert header == CUSTOMER_MRR_COLUMNS
    levels = sorted((r["account_id"], r["customer_id"], utc_text(r["valid_from"]), utc_text(r["valid_to"]),
                     D(r["mrr"])) for r in rows if r["customer_id"] != "E")
    assert levels == hand_customer_mrr()


def test_the_outputs_are_in_utc_whatever_the_machines_time_zone(db: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Run on a machine set to Los Angeles (UTC-8 in winter), the months are still UTC's and the moments are
    written at UTC: C's signup at 00:00 UTC on 1 December 2025 (16:00 on 30 November there) stays in December, D's
    fx at 00:00 UTC on 1 April (31 March there) in April; `export --format csv` writes B's cancellation as
    2026-02-05 14:30 at UTC's offset, and so does `sql --format csv`."""
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        assert duckdb.connect().sql("SELECT current_setting('TimeZone')").fetchall() == [("America/Los_Angeles",)]
        months = {r["period_start"]: (r["new"], r["fx"], r["closing_mrr"])
                  for r in json.loads(ok(db, "report", "--to", "2026-04", "--format", "json"))}
        ok(db, "export", "--format", "csv", "--out", str(tmp_path), "mrr_movements", "mrr_bridge")
        queried = ok(db, "sql", "SELECT occurred_at FROM mrr_movements WHERE movement = 'cancellation'",
                     "--format", "csv")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert months == {"2025-12-01": (100, 0, 100), "2026-01-01": (0, 0, 130), "2026-02-01": (44, 0, 164),
                      "2026-03-01": (0, 0, 259), "2026-04-01": (0, 4, 263)}
    churned = dt.datetime(2026, 2, 5, 14, 30, tzinfo=UTC)
    _, moves = csv_of(tmp_path / "mrr_movements.csv")
    assert [utc_text(r["occurred_at"]) for r in moves if r["movement"] == "cancellation"] == [churned]
    assert [utc_text(c) for c in queried.splitlines()[1:]] == [churned]
    _, bridge = csv_of(tmp_path / "mrr_bridge.csv")
    got = {r["period_start"]: (D(r["new"]), D(r["fx"]), D(r["closing_mrr"])) for r in bridge}
    assert got["2025-12-01"] == (100, 0, 100) and got["2026-04-01"] == (0, 4, 263) and "2025-11-01" not in got


# --- sql ---------------------------------------------------------------------------------------------------------

B_MOVES = ("SELECT customer_id, occurred_at, movement, mrr_delta, churn_type, cancellation_feedback "
           "FROM mrr_movements WHERE customer_id = 'B' ORDER BY occurred_at")


def test_sql_prints_nulls_decimals_and_utc_timestamps_as_stored_in_csv_and_json(db: Path) -> None:
    """README "Output formats": `sql` shows rows as stored under the query's column names: B's three movements
    (new 50.0000 on 20 December 00:00, cancellation -50.0000 on 5 February 14:30 voluntary/too_expensive,
    reactivation 100.0000 on 10 March) with the NULL churn type and feedback of the others: empty in CSV, null in
    JSON; timestamps at UTC (the session's TimeZone is UTC); amounts with their 4 decimals. (The table: below.)"""
    want = [("B", "2025-12-20T00:00:00+00:00", "new", "50.0000", "", ""),
            ("B", "2026-02-05T14:30:00+00:00", "cancellation", "-50.0000", "voluntary", "too_expensive"),
            ("B", "2026-03-10T00:00:00+00:00", "reactivation", "100.0000", "", "")]
    header, *rows = list(csv.reader(io.StringIO(ok(db, "sql", B_MOVES, "--format", "csv"))))
    assert header == ["customer_id", "occurred_at", "movement", "mrr_delta", "churn_type", "cancellation_feedback"]
    assert [(r[0], utc_text(r[1]), *r[2:]) for r in rows] == [(w[0], utc_text(w[1]), *w[2:]) for w in want]
    doc = json.loads(ok(db, "sql", B_MOVES, "--format", "json"))
    assert [list(d) for d in doc] == [header] * 3
    assert [(d["customer_id"], utc_text(d["occurred_at"]), d["movement"], D(str(d["mrr_delta"])), d["churn_type"],
             d["cancellation_feedback"]) for d in doc] == [
        (w[0], utc_text(w[1]), w[2], D(w[3]), w[4] or None, w[5] or None) for w in want]


def test_sql_table_shows_every_value_and_column_name_whole(db: Path) -> None:
    """README "Output formats": `sql`'s table shows a query's rows as stored, under its own column names. Six
    columns of B's movements: each timestamp whole (`2026-02-05T14:30:00+00:00`), the header
    `cancellation_feedback` whole, no cell cut short."""
    table = ok(db, "sql", B_MOVES)
    header = [ln for ln in table.splitlines() if ln.startswith("┃")]
    assert [c.strip() for c in header[0].strip("┃").split("┃")] == [
        "customer_id", "occurred_at", "movement", "mrr_delta", "churn_type", "cancellation_feedback"]
    lines = [[c.strip() for c in ln.strip("│").split("│")] for ln in table.splitlines() if ln.startswith("│")]
    assert lines == [
        ["B", "2025-12-20T00:00:00+00:00", "new", "50.0000", "", ""],
        ["B", "2026-02-05T14:30:00+00:00", "cancellation", "-50.0000", "voluntary", "too_expensive"],
        ["B", "2026-03-10T00:00:00+00:00", "reactivation", "100.0000", "", ""]]
    assert "…" not in table


def test_sql_prints_the_bridges_null_rates_and_booleans(db: Path) -> None:
    """December's rates have zero denominators (NULL: empty in CSV, null in JSON), January's quick ratio 30/0 is
    NULL while its customer churn 0/3 is 0 and it is at net negative churn; February: ARPA 164/3 = 54.6667,
    quick 1.68, customer churn 1/3."""
    query = ("SELECT period_start, opening_mrr, arpa, quick_ratio, customer_churn_rate, net_negative_churn "
             "FROM mrr_bridge WHERE period_start <= DATE '2026-02-01' ORDER BY period_start")
    doc = json.loads(ok(db, "sql", query, "--format", "json"))
    assert doc == [
        {"period_start": "2025-12-01", "opening_mrr": 0, "arpa": 33.3333, "quick_ratio": None,
         "customer_churn_rate": None, "net_negative_churn": None},
        {"period_start": "2026-01-01", "opening_mrr": 100, "arpa": 43.3333, "quick_ratio": None,
         "customer_churn_rate": 0, "net_negative_churn": True},
        {"period_start": "2026-02-01", "opening_mrr": 130, "arpa": 54.6667, "quick_ratio": pytest.approx(1.68),
         "customer_churn_rate": pytest.approx(1 / 3), "net_negative_churn": False}]
    header, *rows = list(csv.reader(io.StringIO(ok(db, "sql", query, "--format", "csv"))))
    assert header == list(doc[0])
    assert [r[:3] for r in rows] == [["2025-12-01", "0.0000", "33.3333"], ["2026-01-01", "100.0000", "43.3333"],
                                     ["2026-02-01", "130.0000", "54.6667"]]
    assert [r[3] for r in rows] == ["", "", "1.68"] and rows[0][4:] == ["", ""]
    assert [r[5].lower() for r in rows[1:]] == ["true", "false"]


TENURE = ("SELECT customer_id, max(occurred_at) - min(occurred_at) AS tenure FROM mrr_movements "
          "WHERE customer_id IN ('A', 'B') GROUP BY customer_id ORDER BY customer_id")


def test_sql_prints_an_interval_as_a_duration(db: Path) -> None:
    """README: `sql` shows a query's rows as stored. The time between a customer's first and last movement is an
    INTERVAL: A from 3 December 2025 10:00 to 15 February 2026 00:00 is 73 days 14 hours, B from 20 December to
    10 March is 80 days. The table and the CSV show those durations, not a Python object's repr."""
    for fmt in ("table", "csv"):
        out = ok(db, "sql", TENURE, "--format", fmt)
        assert "MonthDayNano" not in out and "nanoseconds" not in out, out
        assert "73 days" in out and "14:00:00" in out and "80 days" in out, out


def test_sql_prints_an_open_end_written_as_infinity(db: Path) -> None:
    """An open level's end written as DuckDB's `'infinity'` (a usual way to query ranges: `coalesce(valid_to,
    'infinity')`) is a read query like any other: exit code 0, A's current level of 100.0000 shown with its end
    as `infinity` in CSV (and as text in JSON)."""
    query = ("SELECT customer_id, mrr, coalesce(valid_to, 'infinity'::TIMESTAMPTZ) AS until FROM customer_mrr "
             "WHERE customer_id = 'A' ORDER BY valid_from DESC LIMIT 1")
    header, row = list(csv.reader(io.StringIO(ok(db, "sql", query, "--format", "csv"))))
    assert header == ["customer_id", "mrr", "until"] and row == ["A", "100.0000", "infinity"]
    assert json.loads(ok(db, "sql", query, "--format", "json")) == [
        {"customer_id": "A", "mrr": 100, "until": "infinity"}]


def test_sql_json_keeps_a_whole_sum_whole(db: Path) -> None:
    """A count summed (DuckDB's sum of BIGINTs is a HUGEINT, a DECIMAL(38,0) on its way out) is a whole number in
    JSON: 10 movements, not 10.0; an amount keeps its decimals (263.0000 closing is 263.0 as a JSON number)."""
    query = ("SELECT sum(n) AS movements, max(closing) AS closing FROM (SELECT count(*) AS n, NULL AS closing "
             "FROM mrr_movements UNION ALL SELECT 0, max(closing_mrr) FROM mrr_bridge)")
    text = ok(db, "sql", query, "--format", "json")
    assert '"movements": 10,' in text and '"closing": 263.0' in text, text


@pytest.mark.parametrize("query", [
    "SELECT customer_id, mrr FROM customer_mrr WHERE mrr < 0",
    "FROM mrr_movements SELECT customer_id, mrr_delta WHERE movement = 'cross_sell'",
])
def test_sql_with_no_rows_prints_the_header_alone(db: Path, query: str) -> None:
    """No row: CSV is the header alone, JSON an empty list, the table its header; exit code 0."""
    names = ["customer_id", "mrr"] if "customer_mrr" in query else ["customer_id", "mrr_delta"]
    assert ok(db, "sql", query, "--format", "csv").splitlines() == [",".join(names)]
    assert json.loads(ok(db, "sql", query, "--format", "json")) == []
    table = ok(db, "sql", query)
    assert all(n in table for n in names) and not re.search(r"│ [A-E] ", table)


def test_sql_describes_the_views_as_design_md_7_types_them(db: Path) -> None:
    """`DESCRIBE` (a read statement README allows): mrr_bridge's columns in design.md 7's order, money
    DECIMAL(18,4), net_negative_churn BOOLEAN; mrr_movements.occurred_at TIMESTAMPTZ."""
    doc = json.loads(ok(db, "sql", "DESCRIBE mrr_bridge", "--format", "json"))
    assert [d["column_name"] for d in doc] == BRIDGE_COLUMNS
    kinds = {d["column_name"]: d["column_type"] for d in doc}
    assert {kinds[c] for c in MONEY} == {"DECIMAL(18,4)"} and kinds["net_negative_churn"] == "BOOLEAN"
    doc = json.loads(ok(db, "sql", "DESCRIBE mrr_movements", "--format", "json"))
    assert [d["column_name"] for d in doc] == MOVEMENT_COLUMNS
    assert {d["column_name"]: d["column_type"] for d in doc}["occurred_at"] == "TIMESTAMP WITH TIME ZONE"


WRITES = [
    "INSERT INTO fx_rates (date, currency, rate) VALUES (DATE '2026-01-01', 'eur', 2.0)",
    "UPDATE customers SET deleted = true",
    "DELETE FROM customers",
    "CREATE TABLE notes AS SELECT 1 AS x",
    "CREATE VIEW mrr_bridge_copy AS SELECT * FROM mrr_bridge",
    "DROP VIEW mrr_bridge",
    "ALTER TABLE customers ADD COLUMN note VARCHAR",
    "COPY mrr_bridge TO '{out}/bridge.csv'",
    "COPY (SELECT * FROM mrr_movements) TO '{out}/moves.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '{out}/dump'",
    "ATTACH '{out}/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET TimeZone = 'Asia/Tokyo'",
    "PRAGMA enable_profiling",
    "CHECKPOINT",
    "SELECT 1; DROP VIEW mrr_bridge",
    "SELECT * FROM read_csv('{out}/../hand.duckdb')",
]


@pytest.mark.parametrize("query", WRITES)
def test_sql_refuses_anything_but_one_read_in_one_line_and_leaves_the_store(spare: Path, tmp_path: Path,
                                                                           query: str) -> None:
    """README "SQL for finance": exactly one read statement, with file, network and extension access off; a write,
    COPY, EXPORT, ATTACH, INSTALL, LOAD, SET, PRAGMA, a second statement or a file read is refused with one line
    and a non-zero exit code, and the store and its snapshot keep every byte (nothing written where the query
    pointed either)."""
    from stripe_churn.store.snapshot import snapshot_path

    files = (spare, snapshot_path(spare))
    before = [(f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    out = tmp_path / "out"
    out.mkdir()
    one_line_error(invoke(spare, "sql", query.format(out=out)))
    assert [(f.stat().st_size, f.stat().st_mtime_ns) for f in files] == before
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in spare.parent.iterdir()) == ["hand.duckdb", "hand.duckdb.snapshot"]


# --- bad options -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["report", "--period", "fortnight"],
    ["report", "--period", ""],
    ["report", "--from", "2026-13"],
    ["report", "--from", "2026-02-30"],
    ["report", "--to", "last month"],
    ["report", "--from", "2026-03-01", "--to", "2026-02-28"],
    ["report", "--format", "xml"],
    ["report", "--format", "parquet"],
    ["report", "--segment", "planet"],
    ["report", "--segment", "=core"],
    ["report", "--chart", "{tmp}/chart.bmp"],
    ["report", "--chart", "{file}/chart.png"],
    ["report", "--html", "{file}/page.html"],
    ["report", "--html", "{file}"],
    ["export", "--format", "xlsx", "--out", "{tmp}/x"],
    ["export", "--format", "json", "--out", "{tmp}/x"],
    ["export", "--out", "{tmp}/x", "mrr_bridges"],
    ["export", "--out", "{file}"],
    ["export", "--out", "{file}/x"],
    ["export", "mrr_bridge"],
    ["sql", "SELEC period_start FROM mrr_bridge"],
    ["sql", "SELECT * FROM mrr_bridge", "--format", "xml"],
    ["sql"],
])
def test_a_bad_option_is_one_line_and_a_non_zero_exit_code(db: Path, tmp_path: Path, args: list[str]) -> None:
    """design.md 7: a non-zero exit code with a one-line reason on any failure, never a traceback: an unknown
    period, format, segment or view, a date that is none (month 13, 30 February, words), a range that ends before
    it starts, a chart ending that cannot be drawn, an output path under a file or on a file no report wrote, a
    missing --out or query. Nothing on stdout: a chart or page whose folder is a file is refused before the table
    is printed, so a program reading the CSV never gets a whole one from a command that failed."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine\n", encoding="utf-8")
    argv = [a.format(tmp=tmp_path, file=blocker) for a in args]
    error = one_line_error(invoke(db, *argv))
    if "{file}" in " ".join(args):
        assert str(blocker) in error, error
    assert blocker.read_text(encoding="utf-8") == "mine\n"


def test_the_store_is_left_as_it_was(db: Path, spare: Path) -> None:
    """After every command above, the snapshot still holds the account: 10 movements, 263.00 at the end; the copy
    every write was tried on keeps every byte of its database and snapshot."""
    from stripe_churn.store.snapshot import snapshot_path

    assert digest(spare, snapshot_path(spare)) == SPARE_DIGESTS
    assert view(db, "SELECT count(*) AS n FROM mrr_movements") == [{"n": 10}]
    assert view(db, "SELECT closing_mrr FROM mrr_bridge ORDER BY period_start DESC LIMIT 1") == [
        {"closing_mrr": D("263.0000")}]
