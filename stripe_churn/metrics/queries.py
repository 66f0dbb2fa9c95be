"""Read the finance views for a period and a segment: thin calls to the SQL table macros of the metrics steps.

The same results are plain SQL for anyone with the database open:

- ``SELECT * FROM mrr_bridge`` is the monthly bridge of the whole account (design.md 6 and 7).
- ``SELECT * FROM mrr_bridge_for(period_kind := 'quarter', segment_kind := 'family', segment_value := NULL)``
  gives the bridge per ``week``, ``month``, ``quarter`` or ``year``, for every value of a segment (one row per
  segment value and period, first column ``segment_value``), or for one value. Segment kinds: ``family``,
  ``plan`` (the price), ``product``, ``currency``, ``country`` (customer address), ``size_band`` (customer MRR
  band: under 100, 100 to 1k, 1k to 10k, 10k and more, in the reporting currency) and ``metadata.<key>``
  (a customer metadata key). A customer belongs, for a period, to the segment of its state at the period
  start (or of its first state with MRR in the period, when it had none), so each segment's bridge adds
  up exactly and the segments add up to the account. Its state is that of its largest item (the plan,
  product and family segments), and a change that leaves its MRR as it was (a switch to an annual plan at
  equal MRR) changes that state too.
- ``SELECT * FROM cohort_matrix()`` (also the view ``cohort_revenue_retention``): per cohort month (the month of
  a customer's first MRR) and month since, the cohort's MRR at the month end over its MRR at the end of its
  first month.
- ``SELECT * FROM churn_reasons_for('quarter')`` (the view ``churn_reasons`` is monthly) and
  ``SELECT * FROM scheduled_churn``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb

from stripe_churn.errors import ConfigError, DataError
from stripe_churn.metrics.runner import first_line
from stripe_churn.store.db import dict_rows

PERIODS = ("week", "month", "quarter", "year")
SEGMENT_KINDS = ("family", "plan", "product", "currency", "country", "size_band")


def _check_period(period: str) -> None:
    if period not in PERIODS:
        raise ConfigError(f"unknown period {period!r}: use one of {', '.join(PERIODS)}")


def _check_segment(segment: str | None) -> None:
    if segment is None:
        return
    if segment in SEGMENT_KINDS or (segment.startswith("metadata.") and len(segment) > len("metadata.")):
        return
    raise ConfigError(f"unknown segment {segment!r}: use one of {', '.join(SEGMENT_KINDS)} or metadata.<key>")


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows as dicts (TIMESTAMPTZ values as timezone-aware datetimes)."""
    try:
        return dict_rows(con, sql, params)
    except duckdb.Error as exc:  # (an amount too large for the views' money names itself; see money4)
        raise DataError(f"reading the views failed: {first_line(exc)}") from exc


def bridge(con: duckdb.DuckDBPyConnection, period: str = "month", segment: str | None = None,
           start: dt.date | None = None, end: dt.date | None = None, *,
           segment_value: str | None = None) -> list[dict[str, Any]]:
    """The MRR bridge rows per period (and per segment value when ``segment`` is given), oldest first.

    ``start`` / ``end`` keep the periods whose start lies in ``[start, end]``. Without a segment the rows have
    the columns of the ``mrr_bridge`` view; with one, ``segment_value`` comes first.
    """
    _check_period(period)
    _check_segment(segment)
    if segment_value is not None and segment is None:
        raise ConfigError("segment_value needs a segment kind, for example segment='family'")
    sql = ("SELECT * EXCLUDE (segment_value) " if segment is None else "SELECT * ") + (
        "FROM mrr_bridge_for(period_kind := $period, segment_kind := $segment, segment_value := $value) "
        "WHERE ($start IS NULL OR period_start >= $start) AND ($end IS NULL OR period_start <= $end) "
        "ORDER BY segment_value, period_start")
    return _rows(con, sql, {"period": period, "segment": segment, "value": segment_value,
                            "start": start, "end": end})


# the day the data is complete up to: the latest sync, in Stripe's clock (derived_coverage.snapshot_at), or
# today when that is later or unknown
_AS_OF_SQL = ("SELECT CAST(timezone('UTC', least(now(), coalesce(max(snapshot_at), now()))) AS DATE) AS d "
              "FROM derived_coverage")


def data_as_of(con: duckdb.DuckDBPyConnection) -> dt.date:
    """The day the stored data runs up to: the latest sync's day in Stripe's clock (a sandbox's or a test
    clock's may run behind), never after today. A period ending before it is complete."""
    day: dt.date = _rows(con, _AS_OF_SQL)[0]["d"]  # (one row: an aggregate, coalesced to today)
    return day


def reporting_currency(con: duckdb.DuckDBPyConnection) -> str | None:
    """The currency the stored views are in: the reporting currency of the recompute that derived them (None
    before any)."""
    if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
                       "AND table_name = 'derived_settings'").fetchall()[0][0]:
        return None
    row = con.execute("SELECT reporting_currency FROM derived_settings").fetchall()
    return str(row[0][0]) if row and row[0][0] else None


def latest_verdict(con: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
    """The bridge row that answers "are we at net negative churn?": the latest month complete in the stored
    data (ending before :func:`data_as_of`) that opened with MRR; None when there is none yet."""
    rows = _rows(con, f"SELECT * FROM mrr_bridge WHERE opening_mrr > 0 "
                      f"AND period_end < ({_AS_OF_SQL}) ORDER BY period_start DESC LIMIT 1")
    return rows[0] if rows else None


def cohort_matrix(con: duckdb.DuckDBPyConnection, start: dt.date | None = None,
                  end: dt.date | None = None) -> list[dict[str, Any]]:
    """Cohort revenue retention rows (cohort_month, months_since_start, month, ..., revenue_retention), at
    constant exchange rates (the rate at the end of the cohort's first month; fx movements left out)."""
    return _rows(con, "SELECT * FROM cohort_matrix() WHERE ($start IS NULL OR cohort_month >= $start) "
                      "AND ($end IS NULL OR cohort_month <= $end) ORDER BY cohort_month, month",
                 {"start": start, "end": end})


def churn_reasons(con: duckdb.DuckDBPyConnection, period: str = "month") -> list[dict[str, Any]]:
    """Churned MRR and customers per period, churn type and feedback."""
    _check_period(period)
    return _rows(con, "SELECT * FROM churn_reasons_for($period)", {"period": period})


def scheduled_churn(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Subscriptions set to cancel that have not ended yet, with the MRR at stake, soonest first."""
    return _rows(con, "SELECT * FROM scheduled_churn ORDER BY cancel_at, subscription_id")
