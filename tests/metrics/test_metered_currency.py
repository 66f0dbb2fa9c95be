"""A metered price billed through a currency option: its usage is invoiced in the subscription's currency, so
the item's MRR is in that currency, normalised by that currency's minor unit (design.md 4: every amount in its
own currency, converted with ``fx_rates``)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import duckdb
import pytest
from builders import World
from conftest import customer_mrr_at, item_rows
from test_mrr_rules import T0, base, month

Derive = Callable[..., duckdb.DuckDBPyConnection]


def option(tiers: list[dict[str, Any]] | None) -> dict[str, Any]:
    """A currency option as Stripe lists it: a tiered one has tiers and no unit amount."""
    return {"unit_amount": None, "unit_amount_decimal": None, "tax_behavior": "exclusive", "custom_unit_amount": None,
            "tiers": tiers}


@pytest.mark.parametrize(("currency", "usage", "rate", "mrr_original", "mrr"), [
    pytest.param("eur", 5_000, 1.10, Decimal("50"), Decimal("55.0000"), id="eur"),
    # (a zero-decimal currency: 5,000 yen are 5,000 major units, not 50)
    pytest.param("jpy", 5_000, 0.0067, Decimal("5000"), Decimal("33.5000"), id="zero-decimal-jpy"),
])
def test_metered_usage_billed_in_a_currency_option_keeps_that_currency(
        derive: Derive, currency: str, usage: int, rate: float, mrr_original: Decimal, mrr: Decimal) -> None:
    """The usage line says the amount in the subscription's currency; the item used to be labelled with the price's
    own (USD: a tiered option has no unit amount, so no option row stood for it), counting 50.00 EUR as 50.00 USD
    and 5,000 yen as 50.00 USD."""
    w = World()
    base(w, currency=currency)
    tiers = [{"up_to": 1000, "unit_amount": 5}, {"up_to": None, "unit_amount": 4}]
    p = w.price("price_m", "prod_api", None, usage_type="metered", tiers=tiers, tiers_mode="graduated")
    p["currency_options"] = {"usd": option(p["tiers"]),
                             currency: option([{"up_to": None, "unit_amount": 3, "flat_amount": None,
                                                "unit_amount_decimal": "3", "flat_amount_decimal": None}])}
    w.subscribe("sub_1", "cus_1", [("si_m", "price_m", None)], T0)
    w.cycle("sub_1", month(1), usage={"si_m": usage})
    for inv in w.objects["invoices"].values():  # (Stripe bills in the subscription's currency)
        for line in inv["lines"]["data"]:
            line["currency"] = currency
    w.fx_rates.append(("2023-12-01", currency, rate))
    con = derive(w, seen_at=month(1, 3))
    row = [r for r in item_rows(con, "si_m") if r["mrr_original"] > 0][-1]
    assert (row["currency"], row["mrr_original"]) == (currency, mrr_original)
    assert customer_mrr_at(con, "cus_1", month(1, 1)) == mrr
    assert not con.execute("SELECT count(*) FROM data_quality WHERE kind = 'currency_mismatch'").fetchall()[0][0]
