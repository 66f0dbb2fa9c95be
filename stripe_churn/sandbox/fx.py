"""Constant exchange rates of the sandbox: units of USD for one unit of each currency."""

from __future__ import annotations

from decimal import Decimal

SANDBOX_FX_RATES: dict[str, float] = {"usd": 1.0, "eur": 1.08, "gbp": 1.27}
SANDBOX_FX_DECIMAL: dict[str, Decimal] = {c: Decimal(str(r)) for c, r in SANDBOX_FX_RATES.items()}
