"""A tiered price's currency options come without their tiers unless each is expanded
(``currency_options.<currency>.tiers``, one currency per path): the sync retrieves such a price again for the
options that lack them, so that an item billed in that currency counts at the option's tiers (metrics 10)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import requests

from stripe_churn.sandbox.server import start_in_thread
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.settings import Secret, Settings
from stripe_churn.store.db import _extracted_sets, open_store
from stripe_churn.sync import OPTION_TIERS_PER_CALL, run_sync

KEY = "sk_test_option_tiers"
# more currencies than one retrieve expands, so that the price is retrieved in several calls
CURRENCIES = ["aud", "cad", "chf", "czk", "dkk", "eur", "gbp", "huf", "jpy", "nok", "pln", "sek"]


def tiered_in_many_currencies(sim: Simulation) -> str:
    """A tiered USD price of the simulation given an option in each of CURRENCIES, with tiers of its own (the
    first tier's unit amount tells the currency apart)."""
    assert len(CURRENCIES) > OPTION_TIERS_PER_CALL
    pid = next(p["id"] for p in sim.objects["prices"].values()
               if p.get("billing_scheme") == "tiered" and p["currency"] == "usd")
    sim.objects["prices"][pid]["currency_options"] = {
        cur: {"custom_unit_amount": None, "tax_behavior": "exclusive", "unit_amount": None,
              "unit_amount_decimal": None,
              "tiers": [{"up_to": 5, "unit_amount": 100 + i, "unit_amount_decimal": str(100 + i),
                         "flat_amount": None, "flat_amount_decimal": None},
                        {"up_to": None, "unit_amount": 50 + i, "unit_amount_decimal": str(50 + i),
                         "flat_amount": None, "flat_amount_decimal": None}]}
        for i, cur in enumerate(CURRENCIES)}
    return pid


def get(url: str, path: str, **params: Any) -> Any:
    answer = requests.get(url + path, params=params, headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    return answer.status_code, answer.json()


def test_the_sandbox_serves_an_options_tiers_only_when_expanded() -> None:
    sim = Simulation(customers=5, months=2, seed=3)
    pid = tiered_in_many_currencies(sim)
    with start_in_thread(sim, api_key=KEY) as sb:
        listed: list[dict[str, Any]] = []
        more = True
        while more and pid not in {p["id"] for p in listed}:
            _, page = get(sb.url, "/v1/prices", **{"limit": 100, "expand[]": ["data.tiers", "data.currency_options"],
                                                   **({"starting_after": listed[-1]["id"]} if listed else {})})
            listed, more = listed + page["data"], page["has_more"]
        options = next(p for p in listed if p["id"] == pid)["currency_options"]
        assert set(options) == {"usd", *CURRENCIES} and not any("tiers" in o for o in options.values())
        _, one = get(sb.url, f"/v1/prices/{pid}", **{"expand[]": ["currency_options", "currency_options.eur.tiers"]})
        assert one["currency_options"]["eur"]["tiers"][0]["unit_amount"] == 100 + CURRENCIES.index("eur")
        assert "tiers" not in one["currency_options"]["gbp"] and "tiers" not in one["currency_options"]["usd"]
        status, refused = get(sb.url, f"/v1/prices/{pid}", **{"expand[]": "currency_options.xyz.tiers"})
        assert status == 400 and "cannot be expanded" in refused["error"]["message"]


def test_the_sync_stores_every_options_tiers(tmp_path: Path) -> None:
    from stripe_churn.metrics.runner import recompute

    sim = Simulation(customers=5, months=2, seed=3)
    pid = tiered_in_many_currencies(sim)
    with start_in_thread(sim, api_key=KEY) as sb:
        settings = Settings(api_key=Secret(KEY), api_base=sb.url, db=tmp_path / "s.duckdb", rate_limit=2000.0)
        assert run_sync(settings, progress=False).status == "succeeded"
        retrieved = sum(sb.stats()["by_path"].get("/v1/prices/{id}", {}).values())
    with open_store(settings.db) as con:
        raw = orjson.loads(con.execute("SELECT raw FROM prices WHERE id = ?", [pid]).fetchall()[0][0])
        options = raw["currency_options"]
        for i, cur in enumerate(CURRENCIES):
            assert [t["unit_amount"] for t in options[cur]["tiers"]] == [100 + i, 50 + i], cur
        # (the price's own currency keeps its tiers at the top level only)
        assert "tiers" not in options["usd"] and raw["tiers"]
        recompute(con, settings)
        per_currency = dict(con.execute(
            "SELECT currency, list(unit_p ORDER BY tier_no) FROM derived_price_tiers WHERE price_id = ? "
            "GROUP BY currency", [pid]).fetchall())
    assert set(per_currency) == {"usd", *CURRENCIES}
    assert per_currency["jpy"][0] == (100 + CURRENCIES.index("jpy")) * 10**12
    # (one retrieve per OPTION_TIERS_PER_CALL currencies, for the one price whose options lack their tiers)
    assert retrieved == -(-len(CURRENCIES) // OPTION_TIERS_PER_CALL)


def test_an_incremental_sync_completes_the_options_a_store_lacks_tiers_for(tmp_path: Path) -> None:
    """A store synced before the options' tiers were fetched gets them at its next incremental sync, from one
    retrieve of each such price (no re-list); the sync after that retrieves no price."""
    sim = Simulation(customers=5, months=2, seed=3)
    pid = tiered_in_many_currencies(sim)
    with start_in_thread(sim, api_key=KEY) as sb:
        settings = Settings(api_key=Secret(KEY), api_base=sb.url, db=tmp_path / "s.duckdb", rate_limit=2000.0)
        run_sync(settings, progress=False)
        with open_store(settings.db) as con:  # (as an older version stored it)
            raw = orjson.loads(con.execute("SELECT raw FROM prices WHERE id = ?", [pid]).fetchall()[0][0])
            raw["currency_options"] = {c: {k: v for k, v in o.items() if k != "tiers"}
                                       for c, o in raw["currency_options"].items()}
            con.execute("UPDATE prices SET raw = ? WHERE id = ?", [orjson.dumps(raw).decode(), pid])
            # (its typed column as a write of that JSON, or the migration that added it, sets it)
            con.execute(f"UPDATE prices SET {_extracted_sets('prices', ['options_without_tiers'])} WHERE id = ?", [pid])

        def retrieves() -> int:
            return sum(sb.stats()["by_path"].get("/v1/prices/{id}", {}).values())

        before = retrieves()
        assert run_sync(settings, progress=False).mode == "incremental"
        # (the stored copy is retrieved, then its options' tiers)
        assert retrieves() - before == 1 + -(-len(CURRENCIES) // OPTION_TIERS_PER_CALL)
        with open_store(settings.db) as con:
            raw = orjson.loads(con.execute("SELECT raw FROM prices WHERE id = ?", [pid]).fetchall()[0][0])
        assert all(raw["currency_options"][c]["tiers"] for c in CURRENCIES)
        before = retrieves()
        run_sync(settings, progress=False)
        assert retrieves() == before


def test_a_price_whose_options_tiers_never_come_is_not_retrieved_again_every_run(tmp_path: Path) -> None:
    """A tiered price with an option whose tiers Stripe does not send even when expanded (here: it has none): the
    full sync asks once and stores it without them; the incremental syncs after it do not retrieve the price again
    while it keeps that state (before: the price and its options' tiers, 3 retrieves every run, for ever). A new
    state of the row is asked for again, once."""
    sim = Simulation(customers=5, months=2, seed=3)
    pid = tiered_in_many_currencies(sim)
    del sim.objects["prices"][pid]["currency_options"]["eur"]["tiers"]
    with start_in_thread(sim, api_key=KEY) as sb:
        settings = Settings(api_key=Secret(KEY), api_base=sb.url, db=tmp_path / "s.duckdb", rate_limit=2000.0)

        def retrieves() -> int:
            return sum(sb.stats()["by_path"].get("/v1/prices/{id}", {}).values())

        assert run_sync(settings, progress=False).mode == "full"
        # (the listed copy's options expanded in two calls; the eur option comes without tiers)
        assert retrieves() == -(-len(CURRENCIES) // OPTION_TIERS_PER_CALL)
        with open_store(settings.db) as con:
            assert con.execute("SELECT options_without_tiers, option_tiers_not_found_at = state_seen_at FROM prices "
                               "WHERE id = ?", [pid]).fetchall() == [(True, True)]
        for k, changed in enumerate([False, False, True, False]):
            if changed:  # (as a write of another state of it sets it)
                with open_store(settings.db) as con:
                    con.execute("UPDATE prices SET state_seen_at = state_seen_at + INTERVAL 1 SECOND WHERE id = ?",
                                [pid])
            before = retrieves()
            r = run_sync(settings, progress=False)
            assert (k, r.mode, r.status) == (k, "incremental", "succeeded")
            # (asked again: the price retrieved, then its options' tiers)
            assert (k, retrieves() - before) == (k, 1 + -(-len(CURRENCIES) // OPTION_TIERS_PER_CALL) if changed else 0)
        with open_store(settings.db) as con:
            raw = orjson.loads(con.execute("SELECT raw FROM prices WHERE id = ?", [pid]).fetchall()[0][0])
        assert "tiers" not in raw["currency_options"]["eur"]
        assert all(raw["currency_options"][c]["tiers"] for c in CURRENCIES if c != "eur")
