"""Constant exchange rates of the sandbox: units of USD for one unit of each currency."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

SANDBOX_FX_RATES: dict[str, float] = {"usd": 1.0, "eur": 1.08, "gbp": 1.27}
SANDBOX_FX_DECIMAL: dict[str, Decimal] = {c: Decimal(str(r)) for c, r in SANDBOX_FX_RATES.items()}


def rate_rows(sim: Any, day: str) -> list[tuple[str, str, float]]:
    """(date, currency, rate) of what a simulation serves: the constant rates dated ``day`` (its start), then each
    change of one made with ``fx_changes`` (dated at the day it takes effect) up to its clock."""
    return [(day, cur, rate) for cur, rate in sorted(SANDBOX_FX_RATES.items())] + [
        (datetime.fromtimestamp(at, UTC).date().isoformat(), cur, float(rate))
        for at, cur, rate in getattr(sim, "fx_rate_changes", ()) if at <= sim.clock]
