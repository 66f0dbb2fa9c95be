"""The ``report`` command's work: read the bridge from the snapshot, print it, draw the chart and the page."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from stripe_churn.errors import ConfigError
from stripe_churn.report.tables import day_of, money_text
from stripe_churn.settings import Settings
from stripe_churn.store.snapshot import interruptible, open_snapshot

log = logging.getLogger(__name__)


def parse_segment(segment: str | None) -> tuple[str | None, str | None]:
    """``KIND`` or ``KIND=VALUE`` into (kind, value)."""
    if not segment:
        return None, None
    kind, sep, value = segment.partition("=")
    if not kind:
        raise ConfigError(f"bad --segment {segment!r}: use KIND or KIND=VALUE, for example family=Pro")
    return kind, (value if sep else None)


def load_bridge(db: Path, *, start: dt.date | None = None, end: dt.date | None = None, period: str = "month",
                segment: str | None = None) -> tuple[list[dict[str, Any]], dt.date, str | None]:
    """Bridge rows per period (per segment value when asked) from the latest snapshot, oldest first, the day
    its data runs up to (:func:`stripe_churn.metrics.queries.data_as_of`) and the currency its amounts are in
    (None before any recompute), from one connection."""
    from stripe_churn.metrics.queries import bridge, data_as_of, reporting_currency

    kind, value = parse_segment(segment)
    con = open_snapshot(db)
    try:
        return interruptible(con, lambda: (  # (Ctrl-C stops the queries: interruptible)
            bridge(con, period=period, segment=kind, start=start, end=end, segment_value=value),
            data_as_of(con), reporting_currency(con)))
    finally:
        con.close()


def verdict_line(rows: list[dict[str, Any]], period: str, today: dt.date | None = None) -> str | None:
    """One sentence answering "are we at net negative churn?" for the latest period complete before ``today``
    (the day the data runs up to; the current period is still running) that opened with MRR; None when there
    is none or the rows are per segment."""
    if len({r.get("segment_value") for r in rows}) > 1:
        return None
    done = [r for r in complete_periods(rows, today) if r.get("opening_mrr") and float(r["opening_mrr"]) > 0]
    if not done:
        return None
    r = done[-1]
    rate = float(r["net_revenue_churn_rate"])
    gained = _amount(r["expansion"]) + _amount(r["reactivation"])
    lost = _amount(r["churn"]) + _amount(r["contraction"])
    answer = "AT net negative churn" if rate < 0 else "NOT at net negative churn"
    relation = "outweigh" if gained > lost else ("equal" if gained == lost else "fall short of")
    return (f"latest complete {period} ({r['period_start']}): {answer}; net revenue churn {rate:.2%} "
            f"(expansion + reactivation {money_text(gained)} {relation} churn + contraction {money_text(lost)})")


def _amount(value: Any) -> Decimal:
    """A bridge amount as an exact decimal (DuckDB gives Decimal; a float, as from JSON, by its shortest text)."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


def complete_periods(rows: list[dict[str, Any]], today: dt.date | None = None) -> list[dict[str, Any]]:
    """The rows of periods that ended before ``today`` (the day the data runs up to) and have a net revenue
    churn rate (they opened with MRR): the periods a verdict can be given for."""
    today = today or dt.datetime.now(dt.UTC).date()
    return [r for r in rows if r.get("net_revenue_churn_rate") is not None and day_of(r["period_end"]) < today]


def build_report(settings: Settings, *, start: dt.date | None = None, end: dt.date | None = None,
                 period: str = "month", segment: str | None = None, chart: Path | None = None,
                 html: Path | None = None, fmt: str = "table", echo: Callable[[str], None] = print,
                 named_by: str | None = None) -> list[dict[str, Any]]:
    """Print the bridge with a verdict per period; write the chart and page when asked (``named_by``: the option
    that named their place, when not --chart and --html). Returns the rows."""
    from stripe_churn.report.outputs import chart_format, check_output, output_error
    from stripe_churn.report.tables import bridge_rows, render

    # (an ending the chart cannot be drawn as, the store's own files and files no report wrote are refused before
    # anything is printed)
    if chart:
        check_output(chart, named_by or "--chart", chart_format(chart), settings.db)
    if html:
        check_output(html, named_by or "--html", "html", settings.db)
    rows, as_of, derived_in = load_bridge(settings.db, start=start, end=end, period=period, segment=segment)
    # (the amounts are in the currency of the recompute that derived them, whatever the settings say now)
    currency = derived_in or settings.currency.lower()
    if currency != settings.currency.lower():
        log.warning("the stored metrics are in %s, not the reporting currency %s set now: run `stripe-churn sync` "
                    "to derive them in %s", currency.upper(), settings.currency.upper(), settings.currency.upper())
    cols, body = bridge_rows(rows, fmt, as_of, segmented=bool(segment))
    echo(render(cols, body, fmt, title=f"MRR bridge per {period} ({currency.upper()})"))
    if fmt == "table" and not rows:
        echo("no MRR to report " + ("in that range or segment" if start or end or segment else
                                    "yet: the store holds no subscription revenue")
             + ", so no verdict on net negative churn (`stripe-churn status` shows what the last sync stored)")
    if fmt == "table" and rows:
        # (periods still running or after the data's last day have no verdict yet; per segment, every
        # segment's periods count)
        done = complete_periods(rows, as_of)
        negative = [r for r in done if float(r["net_revenue_churn_rate"]) < 0]
        echo(f"net negative churn in {len(negative)} of {len(done)} complete periods (data up to {as_of})")
        line = verdict_line(rows, period, as_of)
        if line:
            echo(line)
    drawable = rows if len({r.get("segment_value") for r in rows}) <= 1 else []
    if (chart or html) and not drawable:
        if rows:
            why = "the chart needs bridge rows without a segment (drop --segment or give KIND=VALUE)"
        elif start or end or segment:
            why = "no bridge rows in that range or segment; widen --from/--to" + (" or check --segment" if segment
                                                                                 else "")
        else:  # (no range asked for: the store has no MRR at all, as the table's line says)
            why = "the store holds no subscription revenue yet (`stripe-churn status` shows what the last sync stored)"
        raise ConfigError(f"nothing to draw: {why}")
    if chart:
        from stripe_churn.report.charts import write_chart

        try:
            write_chart(drawable, chart, currency, period)
        except OSError as exc:
            raise output_error(exc, chart, named_by or "--chart") from exc
    if html:
        from stripe_churn.report.html import write_html

        try:
            write_html(drawable, html, currency, period, as_of)
        except OSError as exc:
            raise output_error(exc, html, named_by or "--html") from exc
    return rows
