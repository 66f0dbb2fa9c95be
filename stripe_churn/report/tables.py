"""Rows to text: a rich table for people, CSV or JSON for programs; the bridge with a plain verdict per period."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

BRIDGE_COLUMNS = ("period_start", "opening_mrr", "new", "reactivation", "expansion", "contraction", "churn", "fx",
                  "closing_mrr", "gross_revenue_churn_rate", "net_revenue_churn_rate", "nrr", "customer_churn_rate",
                  "quick_ratio")
# the columns of the mrr_bridge view (design.md 7), what CSV and JSON print: kept here for a range or segment value
# with no rows, which has no row to take them from
VIEW_COLUMNS = (
    "period_start", "period_end", "opening_mrr", "new", "reactivation", "expansion", "contraction", "churn", "fx",
    "closing_mrr", "upgrade", "cross_sell", "seat_expansion", "resource_expansion", "downgrade", "seat_contraction",
    "resource_contraction", "discount_expansion", "discount_contraction", "opening_customers", "new_customers",
    "reactivated_customers", "churned_customers", "closing_customers", "gross_revenue_churn_rate",
    "net_revenue_churn_rate", "nrr", "grr", "customer_churn_rate", "quick_ratio", "arpa", "net_negative_churn")
HEADERS = {"period_start": "period", "opening_mrr": "opening", "closing_mrr": "closing", "reactivation": "react.",
           "gross_revenue_churn_rate": "gross churn", "net_revenue_churn_rate": "net churn",
           "customer_churn_rate": "cust. churn", "nrr": "NRR", "quick_ratio": "quick", "segment_value": "segment",
           "net_negative_churn": "net negative churn?"}
CENT = Decimal("0.01")
RATE_COLUMNS = {"gross_revenue_churn_rate", "net_revenue_churn_rate", "nrr", "grr", "customer_churn_rate"}
# What a spreadsheet reads as the start of a formula in a CSV cell: text that starts so (a customer name, a
# cancellation comment, a metadata value typed into Stripe) gets a leading single quote in every CSV written,
# which the spreadsheet shows as text. Numbers, dates and decimals are never text cells, so they stay as they are.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: Any) -> Any:
    """``value`` for a CSV cell: text that a spreadsheet would read as a formula with a leading ``'``; any
    other value (None, numbers, dates, text that starts otherwise) as it is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        # (a whole number of scale 0, as DuckDB's HUGEINT sum of integers arrives, stays an integer: 3, not 3.0)
        return int(value) if value.is_finite() and value.as_tuple().exponent == 0 else float(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def _json_number(value: Any) -> Any:
    """A float JSON cannot hold (NaN, ±infinity: a DOUBLE column can) as the text DuckDB prints for it."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def unique_names(columns: Sequence[str]) -> list[str]:
    """Column names made distinct for a JSON object's keys, as DuckDB names the columns of a subquery: a name
    already taken gets ``_1``, else ``_2``, ... (``SELECT 1 AS a, 2 AS a`` gives ``a`` and ``a_1``)."""
    taken: set[str] = set()
    names = []
    for name in columns:
        unique, k = name, 0
        while unique in taken:
            k += 1
            unique = f"{name}_{k}"
        taken.add(unique)
        names.append(unique)
    return names


def money_text(amount: Decimal) -> str:
    """An amount to the cent as finance rounds it, half away from zero (2.675 -> 2.68, -0.125 -> -0.13), with
    thousands separators. (Through a float, 2.675 is 2.67499999... and showed as 2.67.)"""
    return f"{amount.quantize(CENT, rounding=ROUND_HALF_UP):,.2f}"


def _cell(value: Any, column: str = "") -> str:
    if value is None:
        return ""
    if column in RATE_COLUMNS and isinstance(value, int | float | Decimal):
        return f"{float(value) * 100:.2f}%"
    if isinstance(value, Decimal):
        return money_text(value)
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def _stored_cell(value: Any) -> str:
    """A cell of a query's own rows (`sql`): the value as stored, every decimal place of an amount kept."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, list):
        return _list_text(value)
    return str(value)


def _list_text(values: list[Any]) -> str:
    """A list (DuckDB's LIST, such as item_mrr's discount_ids) as DuckDB writes one: ``[di_1, di_2]``, NULL for a
    missing element (Python's own text, ``['di_1', 'di_2']``, quoted each id)."""
    return "[" + ", ".join("NULL" if v is None else _stored_cell(v) for v in values) + "]"


def _terminal_text(text: str) -> str:
    """``text`` for a terminal table: control characters (an escape sequence's ESC, CR, NUL, ...) shown escaped,
    as Python writes them, so that stored text cannot move the cursor, retitle the window or hide rows."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, title: str | None = None, *,
           as_stored: bool = False) -> str:
    """Format rows as ``table`` (rich), ``csv`` or ``json`` (a list of objects). In CSV, a text cell that starts
    like a formula (``=``, ``+``, ``-``, ``@``, TAB, CR) gets a leading ``'`` (see ``csv_text``); JSON is the data
    as it is. A table shows the report's headers, amounts to the cent and rates as percentages, unless
    ``as_stored`` (a query's own rows): its column names and every value as stored."""
    if fmt == "json":
        keys = unique_names(columns)
        return json.dumps([{k: _json_number(v) for k, v in zip(keys, r, strict=True)} for r in rows],
                          default=_json_default, indent=1, allow_nan=False)
    if fmt == "csv":
        buf = io.StringIO()
        # rows end in "\r\n" for the writer, so that it quotes a cell with a CR in it too (a spreadsheet starts a
        # new row at a bare CR, and the text after it would start a cell); each then ends in "\n"
        w = csv.writer(buf, lineterminator="\r\n")
        lines = []
        for cells in [[csv_text(c) for c in columns],
                      # (NULL, dates and lists as `sql` shows them; text that reads as a formula quoted, numbers as
                      # they are: as text, a negative one would read as a formula too)
                      *([_stored_cell(v) if v is None or isinstance(v, dt.date | dt.datetime | list) else csv_text(v)
                         for v in r] for r in rows)]:
            w.writerow(cells)
            lines.append(buf.getvalue()[:-2])
            buf.seek(0)
            buf.truncate()
        return "\n".join(lines)
    table = Table(title=title, show_lines=False)
    # (cells and headers as plain Text: customers' text, such as a metadata value or a name, is neither rich markup,
    # where "[/b]" stopped the report with a MarkupError, nor terminal control sequences)
    for c in columns:
        table.add_column(Text(_terminal_text(c if as_stored else HEADERS.get(c, c))),
                         justify="left" if c in ("period_start", "net_negative_churn", "segment_value") else "right")
    widths = [cell_len(h.plain) for h in (col.header for col in table.columns) if isinstance(h, Text)]
    for r in rows:
        cells = [Text(_terminal_text(_stored_cell(v) if as_stored else _cell(v, c)))
                 for c, v in zip(columns, r, strict=True)]
        widths = [max(w, cell_len(t.plain)) for w, t in zip(widths, cells, strict=True)]
        table.add_row(*cells)
    # as wide as the widest cell of each column needs (its padding and borders: 3 characters a column, and 1), so
    # that no value or column name is cut: a query's rows are shown whole, whatever the terminal's width
    console = Console(file=io.StringIO(), width=max(100, sum(widths) + 3 * len(widths) + 1), force_terminal=False,
                      color_system=None)
    console.print(table)
    out: str = console.file.getvalue()  # type: ignore[attr-defined]
    return out.rstrip("\n")


def verdict(row: dict[str, Any], as_of: dt.date | None = None) -> str:
    """Plain words for one period: "yes" at net negative churn, "no" otherwise, "n/a" without opening MRR.
    Given the day the data runs up to (``as_of``), a period not ended before it has no verdict yet: "running"
    when that day falls in it, "after data" when it starts later."""
    if as_of is not None and not complete(row, as_of):
        return "running" if day_of(row.get("period_start")) <= as_of else "after data"
    rate = row.get("net_revenue_churn_rate")
    if rate is None:
        return "n/a"
    return "yes" if float(rate) < 0 else "no"


def complete(row: dict[str, Any], as_of: dt.date) -> bool:
    """Whether the period of ``row`` ended before ``as_of``, the day the data runs up to (otherwise it is still
    running, or starts after the data)."""
    return day_of(row.get("period_end")) < as_of


def day_of(value: Any) -> dt.date:
    """A date, datetime or ISO text as a date."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


def bridge_rows(rows: Sequence[dict[str, Any]], fmt: str, as_of: dt.date | None = None, *,
                segmented: bool = False) -> tuple[list[str], list[list[Any]]]:
    """For a table: the compact bridge and a yes/no verdict (none yet for periods not complete before
    ``as_of``, when given); for CSV/JSON every column of the view as it is (its ``net_negative_churn``
    BOOLEAN is the verdict, for complete periods) and then ``complete``: whether the period ended before
    ``as_of`` (false for the running one and those after the data; empty without ``as_of``). ``segmented``: the
    rows are per segment value (``segment_value`` first), which the columns say when there are no rows."""
    if not rows:
        first = ["segment_value"] if segmented else []
        if fmt == "table":
            return [*first, *BRIDGE_COLUMNS, "net_negative_churn"], []
        return [*first, *VIEW_COLUMNS, "complete"], []
    if fmt == "table":
        cols = [c for c in ("segment_value", *BRIDGE_COLUMNS) if c in rows[0]]
    else:
        return ([*rows[0].keys(), "complete"],
                [[*r.values(), None if as_of is None else complete(r, as_of)] for r in rows])
    return [*cols, "net_negative_churn"], [[r.get(c) for c in cols] + [verdict(r, as_of)] for r in rows]
