"""Secrets and access: the key and the webhook secret never leave memory, a restricted key is enough, and
``stripe-churn sql`` cannot reach past the snapshot.

Masking of ``Secret`` and a config file readable by others are unit-tested in tests/test_settings.py; a wrong
key's error and ``sync_runs`` row in tests/test_sync.py; statement-level refusals of ``sql`` in
tests/test_cli.py; the webhook's signature checks in tests/test_webhook.py. Here one account goes through
every path that handles the secrets, and everything those paths leave behind is scanned for their bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner
from test_sync import assert_store_equals_sandbox

from stripe_churn import webhook
from stripe_churn.cli import cli
from stripe_churn.daemon import Daemon, read_state
from stripe_churn.errors import AuthError, ConfigError, StoreError
from stripe_churn.sandbox.server import start_in_thread
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.settings import Secret, Settings, load_settings
from stripe_churn.sqlconsole import lock_down, run_query
from stripe_churn.store.db import open_store
from stripe_churn.store.snapshot import publish_snapshot, snapshot_path
from stripe_churn.stripe_api.client import StripeRaw
from stripe_churn.sync import run_sync
from stripe_churn.webhook import MAX_BODY, TOLERANCE_S, WebhookServer

# A restricted read key, as the README recommends, with distinctive bytes to look for.
KEY = "rk_test_51Qz" + "KeyBytesThatMustNeverLeak" + "7Xy"
WRONG_KEY = "sk_test_51Wr" + "OngKeyBytesAlsoSecret" + "9Zq"
WHSEC = "whsec_" + "WebhookSigningSecretBytes" + "42"
NEEDLES = {
    "api key": KEY.encode(), "wrong key": WRONG_KEY.encode(), "webhook secret": WHSEC.encode(),
    # distinctive middles too: a key cut, prefixed or re-encoded must not show either
    "api key body": b"KeyBytesThatMustNeverLeak", "wrong key body": b"OngKeyBytesAlsoSecret",
    "webhook secret body": b"WebhookSigningSecretBytes",
    "api key as Basic auth": base64.b64encode(f"{KEY}:".encode()),
}


def leaks(data: bytes | str) -> list[str]:
    raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
    return [name for name, needle in NEEDLES.items() if needle in raw or needle.decode() in raw.decode("latin-1")]


def sign(payload: bytes, secret: str = WHSEC, at: int | None = None) -> str:
    ts = int(time.time()) if at is None else at
    sig = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={sig}"


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", "/", body=body, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def table_text(con: duckdb.DuckDBPyConnection) -> str:
    """Every value of every table and view, as text (the file's compressed bytes could hide a string)."""
    out = []
    names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
    for name in names:
        out.append(str(con.execute(f'SELECT CAST(COLUMNS(*) AS VARCHAR) FROM "{name}"').fetchall()))
    return "\n".join(out)


def test_secrets_never_leave_memory(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                    capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("stripe", "httpx", "httpcore", "apscheduler", "stripe_churn"):
        logging.getLogger(name).setLevel(logging.DEBUG)  # stricter than production: every debug line too
    work = tmp_path / "work"
    work.mkdir()
    db = work / "store.duckdb"
    config = work / "stripe-churn.toml"
    config.write_text(f'api_key = "{KEY}"\nwebhook_secret = "{WHSEC}"\nrate_limit = 2000\n')
    config.chmod(0o600)
    texts: list[tuple[str, str]] = []  # (where, text) to scan besides files
    runner = CliRunner()
    sim = Simulation(customers=12, months=4, seed=21)

    with start_in_thread(sim, api_key=KEY) as sb:
        env = {"STRIPE_API_BASE": sb.url, "STRIPE_CHURN_DB": str(db), "STRIPE_CHURN_LOG_LEVEL": "DEBUG"}
        # 1. a manual sync with the key from a config file (restricted key: the whole account syncs)
        res = runner.invoke(cli, ["sync", "--config", str(config), "--format", "json"], env=env)
        assert res.exit_code == 0, res.output
        texts.append(("sync output", res.output))
        with open_store(db) as con:
            assert_store_equals_sandbox(con, sim)

        # 2. the daemon: a signed webhook delivery schedules a run (a wrongly signed one does not)
        settings = load_settings(config, env=env)
        sb.advance(1)
        daemon = Daemon(settings, sync_on_start=False, interval_seconds=3600, webhook_port=0,
                        debounce_seconds=0.1)
        thread = threading.Thread(target=daemon.run_forever, kwargs={"install_signals": False})
        thread.start()
        try:
            deadline = time.monotonic() + 60
            while daemon.webhook is None and time.monotonic() < deadline:
                time.sleep(0.05)
            body = json.dumps({"id": "evt_wh", "object": "event", "type": "invoice.paid",
                               "data": {"object": {}}}).encode()
            assert post(daemon.webhook.url, body, {"Stripe-Signature": sign(body)}) == 200
            assert post(daemon.webhook.url, body, {"Stripe-Signature": sign(body, "whsec_other")}) == 400
            while daemon.runs < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert daemon.runs == 1
            texts += [("daemon repr", repr(daemon)), ("webhook repr", repr(daemon.webhook))]
        finally:
            daemon.request_stop()
            thread.join(timeout=30)
        state = read_state(db)
        assert state is not None and state["state"] == "stopped" and state["last_error"] is None

        # 3. a failing sync with a wrong key: one line, nothing of either key
        res = runner.invoke(cli, ["sync"], env={**env, "STRIPE_API_KEY": WRONG_KEY, "STRIPE_RATE_LIMIT": "2000"})
        assert res.exit_code == 2 and res.output.startswith("error: ") and res.output.count("\n") == 1
        texts.append(("failed sync output", res.output))
        with pytest.raises(AuthError) as info:
            run_sync(Settings(api_key=Secret(WRONG_KEY), api_base=sb.url, db=db, rate_limit=2000.0), progress=False)
        texts += [("error str", str(info.value)), ("error repr", repr(info.value)),
                  ("error args", repr(info.value.args))]

        # reprs of everything that holds a secret
        raw = StripeRaw(settings)
        texts += [("settings repr", repr(settings)), ("settings str", str(settings)),
                  ("settings format", f"{settings} {settings.api_key} {settings.webhook_secret}"),
                  ("client repr", repr(raw)), ("sdk client repr", repr(raw.sdk)),
                  ("sandbox repr", repr(sb)), ("sandbox app repr", repr(sb.app))]

    # 4. export and report, every format
    out = work / "export"
    for fmt in ("parquet", "csv"):
        res = runner.invoke(cli, ["export", "--format", fmt, "--out", str(out / fmt), "--config", str(config)],
                            env=env)
        assert res.exit_code == 0, res.output
        texts.append((f"export {fmt} output", res.output))
    for fmt in ("table", "csv", "json"):
        res = runner.invoke(cli, ["report", "--format", fmt, "--config", str(config)], env=env)
        assert res.exit_code == 0, res.output
        texts.append((f"report {fmt}", res.output))
    res = runner.invoke(cli, ["report", "--html", str(work / "report.html"), "--config", str(config)], env=env)
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["status", "--format", "json", "--config", str(config)], env=env)
    assert res.exit_code == 0, res.output
    texts.append(("status", res.output))

    # scan: logs, outputs, errors, reprs, every file left behind, and every value in the store and snapshot
    captured = capfd.readouterr()
    texts += [("log records", caplog.text), ("stdout", captured.out), ("stderr", captured.err)]
    texts += [(f"log record {r.name}", f"{r.getMessage()} {r.exc_text or ''}") for r in caplog.records]
    assert len(caplog.records) > 50  # the scan did see the runs' logging
    found = [(where, leaks(text)) for where, text in texts if leaks(text)]
    files = sorted(p for p in work.rglob("*") if p.is_file() and p != config)
    names = {p.name for p in files}
    assert {"store.duckdb", "store.duckdb.snapshot", "mrr_bridge.parquet", "mrr_bridge.csv",
            "report.html", "store.duckdb.daemon.json"} <= names, names
    found += [(str(p.relative_to(work)), leaks(p.read_bytes())) for p in files if leaks(p.read_bytes())]
    for path in (db, snapshot_path(db)):
        con = duckdb.connect(str(path), read_only=True)
        try:
            found += [(f"values in {path.name}", leaks(table_text(con)))] if leaks(table_text(con)) else []
        finally:
            con.close()
    for p in files:
        if p.suffix == ".parquet":
            with duckdb.connect() as mem:
                text = str(mem.execute(f"SELECT CAST(COLUMNS(*) AS VARCHAR) FROM read_parquet('{p}')").fetchall())
            found += [(f"values in {p.name}", leaks(text))] if leaks(text) else []
    assert not found, found


# ------------------------------------------------------------------------------------------ read-only SQL
@pytest.fixture(scope="module")
def snapshot_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("sql") / "s.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE t AS SELECT range AS i FROM range(3)")
    con.close()
    publish_snapshot(db)
    return db


OUTSIDE = [
    pytest.param("COPY t TO '{tmp}/out.csv'", id="copy-to-file"),
    pytest.param("COPY (SELECT * FROM t) TO '{tmp}/out.parquet' (FORMAT parquet)", id="copy-query-to-parquet"),
    pytest.param("EXPORT DATABASE '{tmp}/dump'", id="export-database"),
    pytest.param("ATTACH '{tmp}/other.duckdb' AS o", id="attach"),
    pytest.param("ATTACH ':memory:' AS m", id="attach-memory"),
    pytest.param("INSTALL httpfs", id="install-extension"),
    pytest.param("LOAD httpfs", id="load-extension"),
    pytest.param("LOAD '{tmp}/evil.duckdb_extension'", id="load-extension-file"),
    pytest.param("SET enable_external_access = true", id="re-enable-external-access"),
    pytest.param("RESET lock_configuration", id="unlock-configuration"),
    pytest.param("SELECT * FROM read_csv('/etc/passwd')", id="read-csv-etc-passwd"),
    pytest.param("SELECT * FROM read_text('/etc/passwd')", id="read-text"),
    pytest.param("SELECT * FROM read_blob('/etc/hostname')", id="read-blob"),
    pytest.param("SELECT * FROM glob('/etc/*')", id="glob"),
    pytest.param("SELECT * FROM '/etc/hostname'", id="replacement-scan-file"),
    pytest.param("SELECT * FROM read_json_objects('{tmp}/secret.json')", id="read-json-own-dir"),
    pytest.param("SELECT * FROM read_parquet('http://127.0.0.1:9/x.parquet')", id="http-url"),
    pytest.param("SELECT * FROM 'https://example.com/data.csv'", id="https-url"),
    pytest.param("SELECT * FROM read_csv('s3://bucket/x.csv')", id="s3-url"),
    pytest.param("SELECT * FROM duckdb_secrets()", id="secrets-manager"),
    pytest.param("CREATE SECRET s (TYPE s3, KEY_ID 'x', SECRET 'y')", id="create-secret"),
    pytest.param("SET profiling_output = '{tmp}/prof.json'", id="profiling-output-file"),
    pytest.param("CALL pragma_version()", id="call-statement"),
    pytest.param("SELECT 1; COPY t TO '{tmp}/out.csv'", id="second-statement"),
]


@pytest.mark.parametrize("query", OUTSIDE)
def test_sql_cannot_reach_past_the_snapshot(snapshot_db: Path, tmp_path: Path, query: str) -> None:
    (tmp_path / "secret.json").write_text('{"a": 1}')
    before = {p.name for p in tmp_path.iterdir()}
    q = query.format(tmp=tmp_path)
    with pytest.raises((ConfigError, StoreError)) as info:
        run_query(snapshot_db, q)
    assert "\n" not in str(info.value)
    assert {p.name for p in tmp_path.iterdir()} == before  # nothing written
    assert run_query(snapshot_db, "SELECT count(*) FROM t")[1] == [(3,)]


# refused by the statement filter only: harmless to the files even when run (memory only, or a read)
FILTER_ONLY = {"attach-memory", "call-statement", "second-statement"}


def test_sql_lock_down_holds_without_the_statement_filter(tmp_path: Path) -> None:
    """The DuckDB settings alone refuse file, network and extension access (the filter is a second wall)."""
    (tmp_path / "secret.json").write_text('{"a": 1}')
    before = {p.name for p in tmp_path.iterdir()}
    con = duckdb.connect(":memory:")
    passed = []
    try:
        con.execute("CREATE TABLE t AS SELECT 1 AS i")
        lock_down(con)
        for param in OUTSIDE:
            if param.id in FILTER_ONLY:
                continue
            try:
                con.execute(str(param.values[0]).format(tmp=tmp_path)).fetchall()
                passed.append(param.id)
            except duckdb.Error:
                pass
        settings = dict(con.execute("SELECT name, value FROM duckdb_settings() WHERE name IN "
                                    "('enable_external_access', 'lock_configuration', "
                                    "'autoinstall_known_extensions', 'autoload_known_extensions')").fetchall())
    finally:
        con.close()
    assert passed == []
    assert settings == {"enable_external_access": "false", "lock_configuration": "true",
                        "autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}
    assert {p.name for p in tmp_path.iterdir()} == before


def test_sql_reads_still_work_and_the_snapshot_is_read_only(snapshot_db: Path) -> None:
    cols, rows = run_query(snapshot_db, "WITH x AS (SELECT i FROM t) SELECT sum(i) AS s FROM x")
    assert (cols, rows) == (["s"], [(3,)])
    with pytest.raises(ConfigError):
        run_query(snapshot_db, "UPDATE t SET i = 0")
    con = duckdb.connect(str(snapshot_path(snapshot_db)), read_only=True)
    assert con.execute("SELECT sum(i) FROM t").fetchone() == (3,)
    con.close()


# ------------------------------------------------------------------------------------------ webhook edge
@pytest.fixture
def hook() -> Any:
    seen: list[str] = []
    srv = WebhookServer(WHSEC, seen.append, port=0).start()
    try:
        yield srv, seen
    finally:
        srv.stop()


def _event() -> bytes:
    return json.dumps({"id": "evt_1", "object": "event", "type": "invoice.paid", "data": {"object": {}}}).encode()


def test_webhook_default_host_is_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(env={"STRIPE_WEBHOOK_SECRET": WHSEC})
    assert settings.webhook_host == "127.0.0.1"
    daemon = Daemon(settings, interval_seconds=3600, webhook_port=0)
    assert daemon.webhook_host == "127.0.0.1"


@pytest.mark.parametrize("skew", [-(TOLERANCE_S + 60), TOLERANCE_S + 60], ids=["replay-too-old", "from-the-future"])
def test_webhook_refuses_timestamps_outside_the_tolerance(hook: Any, skew: int) -> None:
    srv, seen = hook
    body = _event()
    assert post(srv.url, body, {"Stripe-Signature": sign(body, at=int(time.time()) + skew)}) == 400
    assert post(srv.url, body, {"Stripe-Signature": sign(body, at=int(time.time()) - 30)}) == 200
    assert seen == ["invoice.paid"]


def test_webhook_refuses_a_negative_or_chunked_length_without_reading_forever(hook: Any) -> None:
    """A body whose length is not declared up front cannot bypass the size limit."""
    srv, seen = hook
    host, port = srv.httpd.server_address[:2]
    for head in (b"Content-Length: -1\r\n", b"Transfer-Encoding: chunked\r\n"):
        with socket.create_connection((str(host), port), timeout=5) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,v1=00\r\n" + head + b"\r\n"
                         + b"{" * 4096)
            sock.settimeout(5)
            reply = sock.recv(100)
        assert reply.split(b" ")[1] in (b"400", b"411", b"413"), reply
    assert seen == []


def test_webhook_body_limit_is_enforced_on_what_is_read(hook: Any) -> None:
    srv, seen = hook
    body = b'{"type": "invoice.paid", "pad": "' + b"x" * (MAX_BODY + 10) + b'"}'
    try:
        status = post(srv.url, body, {"Stripe-Signature": sign(body)})
    except (ConnectionError, http.client.HTTPException):
        status = 413  # the server may close before the client finished sending
    assert status == 413
    assert seen == []


def test_webhook_closes_an_idle_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that sends headers and then nothing does not hold a thread forever."""
    monkeypatch.setattr(webhook, "READ_TIMEOUT_S", 0.3)
    srv = WebhookServer(WHSEC, lambda _: None, port=0).start()
    try:
        host, port = srv.httpd.server_address[:2]
        with socket.create_connection((str(host), port), timeout=10) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            t0 = time.monotonic()
            data = sock.recv(100)
            waited = time.monotonic() - t0
    finally:
        srv.stop()
    assert data == b"" and waited < 5  # closed by the server, well before the client's own timeout
