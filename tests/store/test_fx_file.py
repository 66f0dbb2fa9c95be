"""The exchange-rate file (setting fx_rates_file): checked line by line, written as a whole per currency."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from stripe_churn.errors import ConfigError
from stripe_churn.store.db import open_store
from stripe_churn.store.fx_file import read_fx_file, write_fx_rates


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fx.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_rows_are_read_in_any_column_order_with_extra_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffCurrency,source,Date,Rate\nEUR,ecb,2026-01-01,1.08\n\ngbp,ecb,2026-01-01,1.27\n"
                           "eur,ecb,2026-02-01,1.123456789\nusd,,2026-01-01,1\n")
    fx = read_fx_file(path, "usd")
    assert fx.rows == ((dt.date(2026, 1, 1), "eur", Decimal("1.08")),
                       (dt.date(2026, 2, 1), "eur", Decimal("1.12345679")),  # (kept to 8 decimals)
                       (dt.date(2026, 1, 1), "gbp", Decimal("1.27")),
                       (dt.date(2026, 1, 1), "usd", Decimal("1")))
    assert fx.currencies == ("eur", "gbp", "usd")


def test_semicolons_and_decimal_commas_as_a_spreadsheet_saves_them(tmp_path: Path) -> None:
    path = tmp_path / "fx.csv"
    path.write_bytes("\ufeffdate;currency;rate\r\n2026-01-01;eur;1,08\r\n2026-02-01;gbp;1.27\r\n".encode())
    assert read_fx_file(path, "usd").rows == ((dt.date(2026, 1, 1), "eur", Decimal("1.08")),
                                               (dt.date(2026, 2, 1), "gbp", Decimal("1.27")))


@pytest.mark.parametrize(("text", "says"), [
    ("day,currency,rate\n2026-01-01,eur,1.08\n", "must name the columns date, currency, rate (missing: date)"),
    ("", "(missing: date, currency, rate)"),
    ("date,currency,rate\n01/02/2026,eur,1.08\n", "line 2: date '01/02/2026' is not YYYY-MM-DD"),
    ("date,currency,rate\n2026-01-01,euro,1.08\n", "line 2: currency 'euro' is not a 3-letter ISO code"),
    ("date,currency,rate\n2026-01-01,eur,1,08\n", "line 2: 4 fields where the header has 3"),
    ("date,currency,rate\n2026-01-01,eur,1.08\n2026-01-02,eur,abc\n", "line 3: rate 'abc' is not a number"),
    ("date,currency,rate\n2026-01-01,eur,-1\n", "line 2: rate '-1' must be a number above 0"),
    ("date,currency,rate\n2026-01-01,eur,NaN\n", "rate 'NaN' must be a number above 0"),
    ("date,currency,rate\n2026-01-01,eur,0.000000001\n", "rate '0.000000001' is 0 at 8 decimals"),
    ("date,currency,rate\n2026-01-01,eur,12345678901\n", "does not fit the table"),
    ("date,currency,rate\n2026-01-01,usd,0.92\n", "the reporting currency usd converts at 1, not 0.92"),
    ("date,currency,rate\n2026-01-01,eur,1.08\n2026-01-01,EUR,1.09\n",
     "line 3: a second rate for eur on 2026-01-01 (the first is on line 2)"),
])
def test_a_bad_file_is_one_line_naming_file_and_line(tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        read_fx_file(path, "usd")
    msg = str(err.value)
    assert says in msg and str(path) in msg and "fx_rates_file" in msg and "\n" not in msg


def test_a_missing_or_unreadable_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; create it"):
        read_fx_file(tmp_path / "nope.csv", "usd")
    path = tmp_path / "latin1.csv"
    path.write_bytes("date,currency,rate\n2026-01-01,eur,1.08 \xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="save it as UTF-8"):
        read_fx_file(path, "usd")


def test_the_file_replaces_the_rates_of_its_currencies_only(tmp_path: Path) -> None:
    con = open_store(tmp_path / "s.duckdb")
    try:
        con.execute("INSERT INTO fx_rates VALUES ('2025-01-01', 'eur', 1.05), ('2025-06-01', 'eur', 1.06), "
                    "('2025-01-01', 'gbp', 1.25)")
        # eur: one date kept with a new rate, one dropped (not in the file), one added; gbp untouched
        fx = read_fx_file(write(tmp_path, "date,currency,rate\n2025-01-01,eur,1.10\n2025-09-01,eur,1.12\n"), "usd")
        assert write_fx_rates(con, fx) == 2
        rows = con.execute("SELECT date, currency, rate FROM fx_rates ORDER BY currency, date").fetchall()
        assert rows == [(dt.date(2025, 1, 1), "eur", Decimal("1.10000000")),
                        (dt.date(2025, 9, 1), "eur", Decimal("1.12000000")),
                        (dt.date(2025, 1, 1), "gbp", Decimal("1.25000000"))]
        # the same file again changes nothing (no duplicate key on the rows deleted and written again)
        write_fx_rates(con, fx)
        assert con.execute("SELECT count(*) FROM fx_rates").fetchone() == (3,)
    finally:
        con.close()


def test_a_failed_write_leaves_the_rates_as_they_were(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    con = open_store(tmp_path / "s.duckdb")
    try:
        con.execute("INSERT INTO fx_rates VALUES ('2025-01-01', 'eur', 1.05)")
        fx = read_fx_file(write(tmp_path, "date,currency,rate\n2025-02-01,eur,1.10\n"), "usd")
        # a row the table refuses (a NULL rate slipped past the checks) fails the whole write
        broken = type(fx)(path=fx.path, rows=(*fx.rows, (dt.date(2025, 3, 1), "eur", None)))  # type: ignore[arg-type]
        with pytest.raises(duckdb.Error, match=r"NOT NULL"):
            write_fx_rates(con, broken)
        assert con.execute("SELECT date, rate FROM fx_rates").fetchall() == [(dt.date(2025, 1, 1), Decimal("1.05"))]
    finally:
        con.close()
