"""One self-contained HTML page: the chart inlined as base64 PNG and the bridge table."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from stripe_churn.report.charts import build_figure
from stripe_churn.report.tables import _cell, bridge_rows


def render_html(rows: Sequence[dict[str, Any]], currency: str = "usd", period: str = "month",
                as_of: dt.date | None = None) -> str:
    """The page as a string; no external files, scripts or fonts. ``as_of``: the day the data runs up to (periods
    not complete before it get no verdict)."""
    fig = build_figure(rows, currency, period)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110)
    finally:
        plt.close(fig)
    img = base64.b64encode(buf.getvalue()).decode("ascii")
    cols, body = bridge_rows(rows, "table", as_of)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v, c))}</td>" for c, v in zip(cols, r, strict=True))
                  + "</tr>" for r in body)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>stripe-churn report</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}</style></head><body>"
            f"<h1>MRR bridge ({html.escape(period)}, {html.escape(currency.upper())})</h1>"
            f"<img alt='MRR waterfall and net revenue churn trend' src='data:image/png;base64,{img}'>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table></body></html>")


def write_html(rows: Sequence[dict[str, Any]], path: Path, currency: str = "usd", period: str = "month",
               as_of: dt.date | None = None) -> Path:
    """Write the page to ``path``, creating its folder when missing."""
    from stripe_churn.report.outputs import make_parent

    make_parent(path)
    path.write_text(render_html(rows, currency, period, as_of), encoding="utf-8")
    return path
