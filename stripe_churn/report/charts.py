"""The chart: an MRR waterfall over the chosen range and the net revenue churn trend per period (matplotlib, Agg)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import logging

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter

logging.getLogger("matplotlib").setLevel(logging.WARNING)

UP = ("new", "reactivation", "upgrade", "cross_sell", "seat_expansion", "resource_expansion", "discount_expansion")
DOWN = ("contraction", "churn")
WATERFALL_TITLE = "MRR bridge"
TREND_TITLE = "Net revenue churn rate per period"


def _f(v: Any) -> float:
    return float(v) if v is not None else 0.0


def _period_label(start: Any, period: str) -> str:
    """2026-03 for a month, 2026-Q1 for a quarter, 2026 for a year, the date for a week."""
    text = str(start)[:10]
    if period == "month":
        return text[:7]
    if period == "quarter":
        return f"{text[:4]}-Q{(int(text[5:7]) - 1) // 3 + 1}"
    if period == "year":
        return text[:4]
    return text


# A segment's period opens with the MRR of the customers in it at the period start, so a customer who moved into
# (or out of) the segment brings (or takes) MRR that no flow of the segment shows: the step that reconciles it.
MOVED = "moved_in_out"


def waterfall_steps(rows: Sequence[dict[str, Any]]) -> list[tuple[str, float]]:
    """(label, signed amount) from opening to closing over the rows: flows summed, losses negative; for a segment,
    a ``moved_in_out`` step (each period's opening less the previous period's closing) when customers moved
    between segments, so that the steps always add up to the closing."""
    steps = [("opening", _f(rows[0]["opening_mrr"]))]
    steps += [(k, sum(_f(r.get(k)) for r in rows)) for k in UP]
    steps += [(k, -sum(_f(r.get(k)) for r in rows)) for k in DOWN]
    steps.append(("fx", sum(_f(r.get("fx")) for r in rows)))
    moved = sum(_f(r["opening_mrr"]) - _f(before["closing_mrr"]) for before, r in itertools.pairwise(rows))
    if round(moved, 4):  # (never for the whole account: a period opens with the previous one's closing)
        steps.append((MOVED, moved))
    steps.append(("closing", _f(rows[-1]["closing_mrr"])))
    return steps


def build_figure(rows: Sequence[dict[str, Any]], currency: str = "usd", period: str = "month") -> Figure:
    """Two titled panels: the waterfall (opening → flows → closing) and the net revenue churn trend."""
    if not rows:
        raise ValueError("no bridge rows to draw")
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 9), constrained_layout=True)
    steps = waterfall_steps(rows)
    labels, bottoms, heights, colors = [], [], [], []
    level = 0.0
    for name, amount in steps:
        labels.append("moved in/out" if name == MOVED else name.replace("_", " "))
        if name in ("opening", "closing"):
            bottoms.append(0.0)
            heights.append(amount)
            colors.append("#4c72b0")
            level = amount
        else:
            bottoms.append(level if amount >= 0 else level + amount)
            heights.append(abs(amount))
            colors.append("#55a868" if amount >= 0 else "#c44e52")
            level += amount
    xpos = list(range(len(labels)))
    bars = ax1.bar(xpos, heights, bottom=bottoms, color=colors)
    ax1.set_xticks(xpos)
    ax1.set_xticklabels(labels, rotation=30, ha="right")
    ax1.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    for bar, (_, amount) in zip(bars, steps, strict=True):
        ax1.annotate(f"{amount:,.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_y() + bar.get_height()),
                     ha="center", va="bottom", fontsize=8)
    first, last = rows[0]["period_start"], rows[-1]["period_start"]
    ax1.set_title(f"{WATERFALL_TITLE}, {first} to {last} ({currency.upper()})")
    ax1.set_ylabel(f"MRR ({currency.upper()})")

    labels_x = [_period_label(r["period_start"], period) for r in rows]
    xs = list(range(len(rows)))
    ys = [float(r["net_revenue_churn_rate"]) * 100 if r.get("net_revenue_churn_rate") is not None else float("nan")
          for r in rows]
    ax2.plot(xs, ys, marker="o", color="#4c72b0", label="net revenue churn")
    neg = [(x, y) for x, y in zip(xs, ys, strict=True) if y < 0]
    if neg:
        ax2.scatter([x for x, _ in neg], [y for _, y in neg], color="#55a868", zorder=3, s=60,
                    label="net negative churn")
    ax2.axhline(0, color="black", linewidth=1)
    ax2.set_title(f"{TREND_TITLE} ({period}; below zero = net negative churn)")
    ax2.set_ylabel("% of opening MRR")
    ax2.legend(loc="best")
    step = max(1, len(xs) // 12)
    ax2.set_xticks(xs[::step])
    ax2.set_xticklabels(labels_x[::step], rotation=30, ha="right")
    return fig


def write_chart(rows: Sequence[dict[str, Any]], path: Path, currency: str = "usd", period: str = "month") -> Path:
    """Draw the two panels into a file in the format its name ends in (PNG, SVG or PDF; PNG without an ending),
    creating its folder when missing."""
    from stripe_churn.report.outputs import chart_format, make_parent

    fmt = chart_format(path)
    fig = build_figure(rows, currency, period)
    try:
        make_parent(path)
        fig.savefig(path, format=fmt, dpi=110)
    finally:
        plt.close(fig)
    return path
