"""Exchange rates from a CSV file (setting ``fx_rates_file``) into the ``fx_rates`` table.

Stripe has no exchange rates, so an account billing in several currencies needs them from elsewhere (a
treasury export, a central bank's reference rates). The file has a header row naming the columns ``date``
(YYYY-MM-DD), ``currency`` (ISO code) and ``rate`` (units of the reporting currency for one unit of
``currency``, in force from that date until the currency's next row; kept to 8 decimals); other columns
are ignored. Columns are separated by commas, or by semicolons, as a spreadsheet set to a decimal comma saves
them, and then a rate may have a decimal comma. It is read whole and checked before a sync starts, and each
run writes it after the sync, before the recompute: the rates of every currency the file lists are replaced
by the file's (a row taken out of the file leaves the table), in one transaction. Currencies the file does
not list keep their rows, unless the stored rates are quoted in another currency than the file's (the reporting
currency was changed): then the file's rows replace the whole table, and a currency it leaves out is a missing
rate, not an old rate taken for one in the new currency.

The currency the stored rates are quoted in (:func:`rates_quoted_in`) is recorded by whatever writes them (this
file, the sync's sandbox rates) as a store-wide row of ``sync_cursors`` (account id ``''``, stream
``FX_QUOTE``, ``value`` the currency).
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path

import duckdb

from stripe_churn.errors import ConfigError
from stripe_churn.settings import read_text_file
from stripe_churn.store.db import transaction

log = logging.getLogger(__name__)

_COLUMNS = ("date", "currency", "rate")
FX_QUOTE = "fx_rates:quoted_in"  # the sync_cursors stream of the stored rates' quote currency (account id '')
_CURRENCY = re.compile(r"[a-z]{3}")


@dataclass(frozen=True)
class FxFile:
    """The checked rows of an exchange-rate file: (date, lower-case currency, rate), by currency and date."""

    path: Path
    rows: tuple[tuple[dt.date, str, Decimal], ...]
    currency: str | None = None  # the reporting currency the rates are units of (None: not said)

    @property
    def currencies(self) -> tuple[str, ...]:
        return tuple(sorted({c for _, c, _ in self.rows}))


def read_fx_file(path: Path, reporting: str) -> FxFile:
    """Read and check ``path``; every problem is a :class:`ConfigError` naming the file and the line.

    A row for the reporting currency itself must have rate 1 (it always converts at 1), so that a file
    written the other way round (reporting units per foreign unit inverted) is caught on its first line.
    """
    where = f"exchange-rate file {path} (setting fx_rates_file)"
    text = read_text_file(path, where, "create it (header: date,currency,rate) or unset the setting",
                          encoding="utf-8-sig")
    lines = text.splitlines()
    # (a spreadsheet set to a decimal comma saves its CSV with semicolons between the columns)
    semicolons = bool(lines) and ";" in lines[0] and "," not in lines[0]
    reader = csv.reader(lines, delimiter=";" if semicolons else ",")
    header = next(reader, None)
    names = [h.strip().lower() for h in header or []]
    missing = [c for c in _COLUMNS if c not in names]
    if missing:
        raise ConfigError(f"{where}: the first line must name the columns date, currency, rate (missing: "
                          f"{', '.join(missing)})")
    at = {c: names.index(c) for c in _COLUMNS}
    seen: dict[tuple[dt.date, str], int] = {}
    rows: list[tuple[dt.date, str, Decimal]] = []
    reporting = reporting.lower()
    for line, fields in enumerate(reader, start=2):
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(names):
            raise ConfigError(f"{where}, line {line}: {len(fields)} fields where the header has {len(names)} "
                              "(a rate is written with a decimal point, as 1.08)")
        day_text, cur_text, rate_text = (fields[at[c]].strip() for c in _COLUMNS)
        if semicolons:
            rate_text = rate_text.replace(",", ".")
        try:
            day = dt.date.fromisoformat(day_text)
        except ValueError:
            raise ConfigError(f"{where}, line {line}: date {day_text!r} is not YYYY-MM-DD") from None
        currency = cur_text.lower()
        if not _CURRENCY.fullmatch(currency):
            raise ConfigError(f"{where}, line {line}: currency {cur_text!r} is not a 3-letter ISO code such as eur")
        try:
            rate = Decimal(rate_text)
        except InvalidOperation:
            raise ConfigError(f"{where}, line {line}: rate {rate_text!r} is not a number") from None
        if not rate.is_finite() or rate <= 0:
            raise ConfigError(f"{where}, line {line}: rate {rate_text!r} must be a number above 0")
        if rate >= Decimal("1e10"):
            raise ConfigError(f"{where}, line {line}: rate {rate_text!r} does not fit the table (at most 10 "
                              "digits before the point)")
        # (the table keeps 8 decimals, as a cast would round them)
        rate = rate.quantize(Decimal("1e-8"), rounding=ROUND_HALF_EVEN)
        if rate == 0:
            raise ConfigError(f"{where}, line {line}: rate {rate_text!r} is 0 at 8 decimals")
        if currency == reporting and rate != 1:
            raise ConfigError(f"{where}, line {line}: the reporting currency {reporting} converts at 1, not "
                              f"{rate_text}; a rate is units of {reporting} for one unit of the other currency")
        if (day, currency) in seen:
            raise ConfigError(f"{where}, line {line}: a second rate for {currency} on {day} (the first is on "
                              f"line {seen[(day, currency)]})")
        seen[(day, currency)] = line
        rows.append((day, currency, rate))
    return FxFile(path=path, rows=tuple(sorted(rows, key=lambda r: (r[1], r[0]))), currency=reporting)


def rates_quoted_in(con: duckdb.DuckDBPyConnection) -> str | None:
    """The currency the stored rates are units of: as recorded, else (rates written before it was recorded) the
    reporting currency of the last recompute, which valued them as such; None when no rate is stored or neither
    is known."""
    row = con.execute("SELECT value FROM sync_cursors WHERE account_id = '' AND stream = ?", [FX_QUOTE]).fetchone()
    if row and row[0]:
        return str(row[0])
    if not con.execute("SELECT count(*) FROM (SELECT 1 FROM fx_rates LIMIT 1)").fetchone()[0]:  # type: ignore[index]
        return None
    from stripe_churn.metrics.queries import reporting_currency

    currency = reporting_currency(con)  # (the metrics' settings: none before the first recompute)
    return currency.lower() if currency else None


def record_quote(con: duckdb.DuckDBPyConnection, currency: str) -> None:
    """Record that the stored rates are units of ``currency`` (within the caller's transaction)."""
    con.execute("INSERT INTO sync_cursors (account_id, stream, value, done, updated_at) VALUES ('', ?, ?, true, "
                "now()) ON CONFLICT (account_id, stream) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at", [FX_QUOTE, currency.lower()])


def write_fx_rates(con: duckdb.DuckDBPyConnection, fx: FxFile) -> int:
    """Replace the rates of the file's currencies by the file's rows, in one transaction (the whole table when the
    stored rates are quoted in another currency than the file's); returns the rows written."""
    quoted = rates_quoted_in(con) if fx.currency else None
    requote = fx.currency is not None and quoted is not None and quoted != fx.currency.lower()
    with transaction(con):
        con.execute("CREATE OR REPLACE TEMP TABLE fx_file_rows (date DATE, currency VARCHAR, rate DECIMAL(18, 8))")
        if fx.rows:
            con.executemany("INSERT INTO fx_file_rows VALUES (?, ?, ?)", [list(r) for r in fx.rows])
        if requote:
            log.warning("the stored exchange rates were units of %s, the file's are units of %s (the reporting "
                        "currency): the file's replace them all", quoted, fx.currency)
            con.execute("DELETE FROM fx_rates")
        else:
            con.execute("DELETE FROM fx_rates WHERE lower(currency) IN (SELECT currency FROM fx_file_rows)")
        con.execute("INSERT INTO fx_rates (date, currency, rate) SELECT date, currency, rate FROM fx_file_rows")
        con.execute("DROP TABLE fx_file_rows")
        if fx.currency:
            record_quote(con, fx.currency)
    return len(fx.rows)
