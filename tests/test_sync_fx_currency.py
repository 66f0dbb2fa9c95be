"""The stored exchange rates are units of one currency, the reporting currency when they were written; changing the
reporting currency (setting currency) must not take them for rates in the new one (every figure would come out
unchanged, labelled in the new currency). The sandbox's rates are replaced, a file's rates replace the whole table,
and with neither the sync says what to do."""

from __future__ import annotations

import datetime as dt
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from stripe_churn import sync as sync_module
from stripe_churn.errors import ConfigError, DataError
from stripe_churn.pipeline import run_once
from stripe_churn.sandbox.server import start_in_thread
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.settings import Secret, Settings
from stripe_churn.store.db import open_store
from stripe_churn.store.fx_file import rates_quoted_in, read_fx_file, write_fx_rates
from stripe_churn.sync import run_sync

KEY = "sk_test_fx_currency"
START = int(datetime(2025, 10, 1, tzinfo=UTC).timestamp())


def settings_for(url: str, db: Path, **kw: Any) -> Settings:
    return Settings(api_key=Secret(KEY), api_base=url, db=db, rate_limit=5000.0, **kw)


def rates(db: Path) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT currency, rate FROM fx_rates ORDER BY currency, date").fetchall()
    finally:
        con.close()


def test_the_sandboxs_rates_are_replaced_when_the_reporting_currency_changes(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    sim = Simulation(customers=12, months=3, seed=4, start=START)
    with start_in_thread(sim, api_key=KEY) as sb:
        assert run_once(settings_for(sb.url, db), full=True, progress=False).status == "succeeded"
        assert ("usd", Decimal("1.00000000")) in rates(db)
        # the sandbox has no rate for the yen: none of the dollar rates may be read as yen rates
        with pytest.raises(DataError, match="no exchange rate to jpy"):
            run_once(settings_for(sb.url, db, currency="jpy"), progress=False)
        assert rates(db) == []
        # in euros: every rate is in euros (the euro at 1), none left over in dollars
        assert run_once(settings_for(sb.url, db, currency="eur"), progress=False).status == "succeeded"
    got = dict(rates(db))
    assert got["eur"] == Decimal("1.00000000") and got["usd"] == (Decimal(1) / Decimal("1.08")).quantize(
        Decimal("1e-8"))
    with open_store(db) as con:
        assert rates_quoted_in(con) == "eur"


def test_without_rates_from_the_server_or_a_file_rates_in_another_currency_are_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "s.duckdb"
    sim = Simulation(customers=8, months=3, seed=4, start=START)
    with start_in_thread(sim, api_key=KEY) as sb:
        assert run_sync(settings_for(sb.url, db), full=True, progress=False).status == "succeeded"

        async def no_rates(self: Any) -> bool:  # (as real Stripe: it serves no exchange rates)
            return False

        monkeypatch.setattr(sync_module._Sync, "_fx_rates", no_rates)
        assert run_sync(settings_for(sb.url, db), progress=False).status == "succeeded"
        with pytest.raises(ConfigError) as exc:
            run_sync(settings_for(sb.url, db, currency="eur"), progress=False)
    msg = str(exc.value)
    assert "\n" not in msg and "units of usd" in msg and "is eur" in msg and "fx_rates_file" in msg, msg
    assert ("usd", Decimal("1.00000000")) in rates(db)  # (left as they were: the file that replaces them is to come)


def test_a_file_in_another_currency_replaces_every_stored_rate(tmp_path: Path) -> None:
    con = open_store(tmp_path / "s.duckdb")
    try:
        path = tmp_path / "fx.csv"
        path.write_text("date,currency,rate\n2025-01-01,eur,1.08\n2025-01-01,gbp,1.27\n", encoding="utf-8")
        write_fx_rates(con, read_fx_file(path, "usd"))
        assert rates_quoted_in(con) == "usd"
        # now in euros, and the file lists the pound and the dollar only: the euro's dollar rate must not stay
        path.write_text("date,currency,rate\n2025-01-01,gbp,1.17\n2025-01-01,usd,0.93\n", encoding="utf-8")
        write_fx_rates(con, read_fx_file(path, "eur"))
        assert con.execute("SELECT date, currency, rate FROM fx_rates ORDER BY currency").fetchall() == [
            (dt.date(2025, 1, 1), "gbp", Decimal("1.17000000")), (dt.date(2025, 1, 1), "usd", Decimal("0.93000000"))]
        assert rates_quoted_in(con) == "eur"
    finally:
        con.close()


def test_rates_stored_before_their_currency_was_recorded_are_taken_as_the_last_recomputes(tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    sim = Simulation(customers=8, months=3, seed=4, start=START)
    with start_in_thread(sim, api_key=KEY) as sb:
        assert run_once(settings_for(sb.url, db), full=True, progress=False).status == "succeeded"
        with open_store(db) as con:  # (as a store written by an earlier version holds them)
            con.execute("DELETE FROM sync_cursors WHERE account_id = ''")
            assert rates_quoted_in(con) == "usd"  # (the reporting currency of the recompute that valued them)
        with pytest.raises(DataError, match="no exchange rate to jpy"):
            run_once(settings_for(sb.url, db, currency="jpy"), progress=False)
