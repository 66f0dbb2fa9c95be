"""Running unattended, worked out by hand: the real `stripe-churn daemon` against the sandbox, with a schedule shorter
than its first sync, a manual `sync` while it holds the lock, SIGTERM in the middle of that first full listing, a
burst of webhook deliveries (and the ones it must refuse), SIGTERM while a webhook's sync waits for another process,
a stop while the metrics are derived (every customer, or the changed ones), two `status` at once, a schedule it
cannot read; `status` after each run, and the API key and the signing secret looked for in every byte left behind.

Every account is a fresh simulation of one seed (the same seed gives the same account), so a store synced once in
full is copied for the tests that start from one. Each daemon is a subprocess with a deadline on every wait.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner, Result
from test_sync import assert_store_equals_sandbox

import stripe_churn
from stripe_churn.cli import cli
from stripe_churn.daemon import Daemon, read_state
from stripe_churn.lock import lock_path, sync_lock
from stripe_churn.metrics import incremental
from stripe_churn.pipeline import collect_status, run_once
from stripe_churn.sandbox.server import RunningSandbox, start_in_thread
from stripe_churn.sandbox.sim import Simulation
from stripe_churn.settings import Secret, Settings
from stripe_churn.store.snapshot import snapshot_path
from stripe_churn.stripe_api.streams import STREAMS
from stripe_churn.webhook import MAX_BODY

ROOT = Path(stripe_churn.__file__).resolve().parents[1]
# distinctive bytes to look for; the sandbox accepts this key alone
KEY = "sk_test_" + "HuntDaemonKeyBytes" + "7Qw3"
WHSEC = "whsec_" + "HuntDaemonSigningBytes" + "5Rt"
NEEDLES = (KEY, WHSEC, "HuntDaemonKeyBytes", "HuntDaemonSigningBytes")
SEED, CUSTOMERS, MONTHS = 31, 8, 3
NEVER = "0 0 1 1 *"  # a yearly schedule: no scheduled tick falls inside a test


def simulation() -> Simulation:
    return Simulation(customers=CUSTOMERS, months=MONTHS, seed=SEED)


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store synced in full (and its snapshot) from a fresh simulation of the seed."""
    db = tmp_path_factory.mktemp("base") / "s.duckdb"
    with start_in_thread(simulation(), api_key=KEY) as sb:
        run_once(Settings(api_key=Secret(KEY), api_base=sb.url, db=db, rate_limit=1000.0), full=True,
                 progress=False)
    return db


def copy_store(base: Path, folder: Path) -> Path:
    """The store and its snapshot copied into ``folder`` with their times (status compares them)."""
    db = folder / base.name
    shutil.copy2(base, db)
    shutil.copy2(snapshot_path(base), snapshot_path(db))
    return db


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    with start_in_thread(simulation(), api_key=KEY) as sb:
        yield sb


def env_for(sb: RunningSandbox | None, db: Path, **more: str) -> dict[str, str]:
    return {"STRIPE_API_KEY": KEY, "STRIPE_API_BASE": sb.url if sb else "http://127.0.0.1:9",
            "STRIPE_CHURN_DB": str(db), "STRIPE_RATE_LIMIT": "1000", "STRIPE_CHURN_LOG_LEVEL": "INFO", **more}


class DaemonProcess:
    """`python -m stripe_churn daemon ...` with its log in a file beside the store."""

    def __init__(self, db: Path, env: dict[str, str], *args: str) -> None:
        self.log = db.with_name("daemon.log")
        full = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE")}
        full.update({"PYTHONPATH": str(ROOT), **env})
        with open(self.log, "w", encoding="utf-8") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "stripe_churn", "daemon", *args], env=full,
                                         cwd=db.parent, stdout=out, stderr=out)

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8")

    def wait_for(self, cond: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = cond()
            if got:
                return got
            assert self.proc.poll() is None, f"the daemon exited ({self.proc.returncode}) before {what}:\n{self.text()}"
            time.sleep(0.02)
        raise AssertionError(f"no {what} within {timeout} s:\n{self.text()[-3000:]}")

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> tuple[int, float]:
        """The exit code and how long it took after ``signum``."""
        t0 = time.monotonic()
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"no exit 20 s after {signum.name}:\n{self.text()[-3000:]}") from None
        return code, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def invoke(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def status_json(env: dict[str, str]) -> tuple[dict[str, Any], str]:
    res = invoke(env, "status", "--format", "json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout), res.output


def runs_of(db: Path) -> list[tuple[str, str]]:
    """(mode, status) of every recorded sync, oldest first, read from the store itself."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [(m, s) for m, s in con.execute("SELECT mode, status FROM sync_runs ORDER BY started_at").fetchall()]
    finally:
        con.close()


def lag_seconds(lag: str) -> int:
    m = re.fullmatch(r"(\d+):(\d\d):(\d\d) since the last successful sync", lag)
    assert m, lag
    return int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])


def leaks(folder: Path, texts: list[str]) -> list[str]:
    """Where a secret shows: in ``texts``, in the bytes of any file in ``folder``, or among the values of any table
    of the store or its snapshot (its compressed bytes could hide a string)."""
    found = [f"text {n}" for n, t in enumerate(texts) if any(s in t for s in NEEDLES)]
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [path.name for s in NEEDLES if s.encode() in data][:1]
    for path in (folder / "s.duckdb", snapshot_path(folder / "s.duckdb")):
        if not path.exists():
            continue
        con = duckdb.connect(str(path), read_only=True)
        try:
            names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
            text = "\n".join(str(con.execute(f'SELECT CAST(COLUMNS(*) AS VARCHAR) FROM "{name}"').fetchall())
                             for name in names)
        finally:
            con.close()
        found += [f"values in {path.name}" for s in NEEDLES if s in text][:1]
    return found


# ---------------------------------------------------------------------------------------------------- the schedule
@pytest.mark.parametrize(("schedule", "why"), [
    pytest.param("*/0 * * * *", "Increment must be higher than 0", id="step-zero"),
    pytest.param("@hourly", "1 fields, not 5", id="cron-macro"),
    pytest.param("*/5 * * * * *", "6 fields, not 5", id="seconds-field"),
    pytest.param("0 24 * * *", "higher than the maximum value (23)", id="hour-24"),
    pytest.param("0 6 * * mon#1", "bad day-of-week item 'mon#1'", id="nth-weekday"),
])
def test_a_schedule_the_daemon_cannot_read_is_one_line_and_exit_2(tmp_path: Path, schedule: str, why: str) -> None:
    """README (Running the daemon): a schedule it cannot read stops the daemon at start with exit code 2; design.md 7:
    a one-line reason. By hand: step 0 repeats nothing, `@hourly` and a seconds field are not the five fields the
    README asks for, cron's hours run 0-23, and `#` (the nth weekday) is no cron weekday item. The line names the
    variable the schedule came from and shows an example; no traceback; and a daemon started where no store is yet
    leaves no file behind (README: "a daemon started in the wrong folder")."""
    res = invoke({**env_for(None, tmp_path / "s.duckdb"), "STRIPE_CHURN_SCHEDULE": schedule}, "daemon")
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output and res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: bad STRIPE_CHURN_SCHEDULE {schedule!r}: "), lines
    assert why in lines[0] and lines[0].endswith("use a five-field cron expression such as '*/30 * * * *'"), lines
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------- a first sync longer than the schedule
def holder_pid(db: Path) -> int | None:
    """The pid the sync lock's holder wrote into ``<db>.lock`` (None while no one holds it)."""
    try:
        info = json.loads(lock_path(db).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return None
    return info.get("pid") if isinstance(info, dict) else None


def test_a_first_sync_longer_than_the_schedule_a_manual_sync_sigterm_and_the_resume(
        tmp_path: Path, sandbox: RunningSandbox) -> None:
    """A new store, a daemon ticking every second (as a schedule shorter than a sync: `* * * * *` against an
    hour-long first sync) and a rate of 2 requests a second: its first sync, a full one of about 20 requests, takes
    9 s or more, and everything below happens inside it.

    By hand, from README and design.md 7:
    - the ticks during the run skip, one INFO line each; a tick is no run, so sync_runs gets no row for one (the
      stop comes 2.5 s into the run: a tick at least has come);
    - `sync` by hand: exit 3 and one line, "another sync holds <db>.lock since <when> (pid <the daemon's>)", with
      nothing on stdout under --format json; `sync --wait 0.5` waits half a second, then the same;
    - `status` meanwhile: a sync running, no snapshot yet, no runs it can read (the store is held and nothing was
      published), no lag (nothing succeeded), the daemon `started` with its pid;
    - SIGTERM: exit 0 within 10 s; one sync_runs row, (full, stopped): the first sync of a store lists everything;
      the daemon's state `stopped`, its last run stopped, for reason `start`, and no error;
    - `status` then: that one row, no lag, no daemon error; as CSV (README, Output formats: the long form
      section,row,key,value), `status,1,lag,` empty and the row under `runs,1,...`, no `runs,2`;
    - the next `sync` is the rest of that full listing (mode full) and succeeds: what the stopped run listed whole
      is not asked for again (the sandbox counts its requests), and the store equals the sandbox;
    - `status` after it: two rows, newest first (full succeeded, full stopped); lag = now - that run's end, which
      lies between its start and its return;
    - the key appears nowhere: outputs, log, state and lock files, the store and its snapshot."""
    db = tmp_path / "s.duckdb"
    env = env_for(sandbox, db)
    daemon = DaemonProcess(db, {**env, "STRIPE_RATE_LIMIT": "2"}, "--interval-seconds", "1")
    outputs: list[str] = []
    try:
        daemon.wait_for(lambda: "sync starting (start)" in daemon.text(), "start-up sync")
        # (the run logs that it starts, then takes the sync lock: a manual sync in between took the lock first, under
        # a busy machine, and succeeded; the lock file names its holder once taken)
        daemon.wait_for(lambda: holder_pid(db) == daemon.proc.pid, "the start-up sync to hold the lock")
        began = time.monotonic()
        started_wall = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=5)

        refused = invoke(env, "sync", "--format", "json")
        outputs.append(refused.output)
        assert refused.exit_code == 3 and refused.stdout == "", refused.output
        line = refused.stderr.rstrip("\n")
        m = re.fullmatch(rf"error: another sync holds {re.escape(str(lock_path(db)))} since (\S+) "
                         rf"\(pid {daemon.proc.pid}\); retry later or pass --wait SECONDS", line)
        assert m and "\n" not in line, refused.stderr
        assert started_wall <= dt.datetime.fromisoformat(m[1]) <= dt.datetime.now(dt.UTC)

        t0 = time.monotonic()
        waited = invoke(env, "sync", "--wait", "0.5")
        outputs.append(waited.output)
        assert waited.exit_code == 3 and waited.stderr.rstrip("\n") == line, waited.output
        assert 0.5 <= time.monotonic() - t0 < 8

        during, text = status_json(env)
        outputs.append(text)
        assert during["sync_running"] is True and during["snapshot"] == "none yet" and during["lag"] is None
        assert not during.get("runs")
        assert during["daemon"].startswith(f"started (pid {daemon.proc.pid}, since ")

        time.sleep(max(0.0, 2.5 - (time.monotonic() - began)))
        code, took = daemon.stop()
    finally:
        daemon.kill()
    log = daemon.text()
    assert code == 0 and took < 10, log[-3000:]
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    assert log.count("sync skipped (schedule): a run in this daemon is still going") >= 1, log[-3000:]
    assert runs_of(db) == [("full", "stopped")]
    state = read_state(db)
    assert state is not None and state["state"] == "stopped" and state["last_error"] is None
    assert (state["last_run"]["reason"], state["last_run"]["status"]) == ("start", "stopped")

    after, text = status_json(env)
    outputs.append(text)
    assert after["sync_running"] is False and after["lag"] is None and "daemon_error" not in after
    assert [(r["mode"], r["status"]) for r in after["runs"]] == [("full", "stopped")]
    assert after["daemon"].startswith(f"stopped (pid {daemon.proc.pid}, since ")
    long_form = invoke(env, "status", "--format", "csv")
    outputs.append(long_form.output)
    assert long_form.exit_code == 0, long_form.output
    lines = long_form.stdout.splitlines()
    assert lines[0] == "section,row,key,value"
    assert {"status,1,sync_running,False", "status,1,lag,", "runs,1,mode,full", "runs,1,status,stopped"} <= set(lines)
    assert not [ln for ln in lines if ln.startswith("runs,2,")], lines

    # the lists the stopped run finished: every slice of every stream of an endpoint done ('full:<stream>:<from>:<to>';
    # a stream with no slice yet is not begun). The events are listed again after any listing, to catch up.
    con = duckdb.connect(str(db), read_only=True)
    try:
        slices = con.execute("SELECT stream, done FROM sync_cursors WHERE stream LIKE 'full:%:%:%'").fetchall()
    finally:
        con.close()
    done: dict[str, bool] = {}
    for stream, finished_slice in slices:
        done[stream.split(":")[1]] = done.get(stream.split(":")[1], True) and bool(finished_slice)
    finished = sorted({s.path for s in STREAMS if s.path != "/v1/events"}
                      - {s.path for s in STREAMS if not done.get(s.name)})
    assert finished, slices  # (else the check below would check nothing)
    before = {p: sum(c.values()) for p, c in sandbox.app.by_path.items()}

    t_resume, wall_resume = time.monotonic(), time.time()
    resumed = invoke(env, "sync", "--format", "json")
    wall_returned = time.time()
    outputs.append(resumed.output)
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads(resumed.stdout)
    assert (summary["mode"], summary["status"]) == ("full", "succeeded")
    asked = {p: sum(c.values()) - before.get(p, 0) for p, c in sandbox.app.by_path.items()}
    assert {p: asked.get(p, 0) for p in finished} == dict.fromkeys(finished, 0), (finished, asked)
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert_store_equals_sandbox(con, sandbox.sim)  # type: ignore[arg-type]
    finally:
        con.close()

    wall_status = time.time()
    last, text = status_json(env)
    outputs.append(text)
    assert [(r["mode"], r["status"]) for r in last["runs"]] == [("full", "succeeded"), ("full", "stopped")]
    lag = lag_seconds(last["lag"])
    assert int(wall_status - wall_returned) - 1 <= lag <= time.time() - wall_resume + 1, (lag, last["lag"])
    assert time.monotonic() - t_resume < 60
    assert leaks(tmp_path, outputs) == []


# -------------------------------------------------------------------------------------------------- webhooks
def sign(body: bytes, secret: str = WHSEC, at: int | None = None) -> str:
    ts = int(time.time()) if at is None else at
    return f"t={ts},v1=" + hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


def post(url: str, body: bytes, signature: str | None) -> int:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", "/", body=body, headers={"Stripe-Signature": signature} if signature else {})
        return conn.getresponse().status
    except (ConnectionError, http.client.HTTPException):
        return -1  # (a server that answered early and closed may reset a client still sending)
    finally:
        conn.close()


def post_declared(url: str, length: int) -> int:
    """The answer to a POST that declares a body of ``length`` bytes and sends its first KiB: a body refused for its
    size is refused on its headers, and a client still sending the rest may meet a closed connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST / HTTP/1.1\r\nHost: x\r\nStripe-Signature: {sign(b'{}')}\r\n"
                     f"Content-Length: {length}\r\n\r\n".encode() + b"{" * 1024)
        return int(sock.recv(100).split(b" ")[1])


def event(etype: str, pad: int = 0) -> bytes:
    body = json.dumps({"id": "evt_hunt", "object": "event", "type": etype, "livemode": False,
                       "data": {"object": {}}, "pad": ""}).encode()
    return body[:-2] + b"x" * pad + body[-2:] if pad else body


def test_a_webhook_burst_is_one_sync_refusals_are_none_and_a_stop_cuts_a_wait_for_the_lock(
        tmp_path: Path, synced: Path, sandbox: RunningSandbox) -> None:
    """A store synced in full, a billing run in the sandbox, and a daemon with the webhook and no scheduled tick in
    sight (a yearly schedule, no sync at start).

    By hand, from README (Webhook trigger) and Stripe's signature scheme (HMAC-SHA256 of "t.body" under the
    endpoint's secret, at most 300 s old; during a secret's rotation the header carries one v1 per secret):
    - refused, and no sync: a wrong secret, 400; a timestamp 400 s old or 400 s ahead, 400; a signed body that is
      no JSON, 400; a signed event of 1 MiB and one byte, 413;
    - answered 200 and ignored: charge.succeeded (nothing stored) and invoice.upcoming (a reminder);
    - then twenty events in well under a second, each 200: one signed 290 s ago (inside the tolerance), one with
      two v1 signatures (a rotated secret's first), and one of exactly 1 MiB (not over it). The sync comes two
      seconds after the first and the rest join it: one run, incremental, its reason the first event's type
      (each refused or ignored request above has a type of its own: one that had triggered would be the reason);
    - that run brings the billing run: the store equals the sandbox;
    - another process holds the sync lock and an event comes: its sync waits for the lock (a minute by default);
      SIGTERM then stops the daemon within 10 s, exit 0, no run recorded for it, and no error in the state;
    - sync_runs: exactly (full, succeeded), (incremental, succeeded); `status`: those two, newest first, and a lag
      between (status time - when the run was seen) and (status time - when the burst began);
    - neither the key nor the signing secret appears anywhere."""
    db = copy_store(synced, tmp_path)
    sandbox.advance(1)
    env = env_for(sandbox, db, STRIPE_WEBHOOK_SECRET=WHSEC, STRIPE_CHURN_SCHEDULE=NEVER)
    daemon = DaemonProcess(db, env, "--no-sync-on-start", "--webhook-port", "0")
    held = contextlib.ExitStack()
    try:
        url = daemon.wait_for(lambda: (read_state(db) or {}).get("state") == "started"
                              and (read_state(db) or {}).get("webhook_url"), "the webhook's address")
        now = int(time.time())
        refused = {
            "wrong secret": (event("invoice.created"), sign(event("invoice.created"), "whsec_someoneelse")),
            "400 s old": (event("invoice.voided"), sign(event("invoice.voided"), at=now - 400)),
            "400 s ahead": (event("invoice.deleted"), sign(event("invoice.deleted"), at=now + 400)),
            "not json": (b"customer.created", sign(b"customer.created")),
        }
        got = {name: post(url, body, sig) for name, (body, sig) in refused.items()}
        got["over 1 MiB"] = post_declared(url, MAX_BODY + 1)
        got["charge"] = post(url, event("charge.succeeded"), sign(event("charge.succeeded")))
        got["reminder"] = post(url, event("invoice.upcoming"), sign(event("invoice.upcoming")))
        assert got == {"wrong secret": 400, "400 s old": 400, "400 s ahead": 400, "not json": 400,
                       "over 1 MiB": 413, "charge": 200, "reminder": 200}

        burst_wall, t0 = time.time(), time.monotonic()
        types = ["customer.subscription.updated", "invoice.paid", "invoice.finalized", "customer.updated"]
        codes = []
        for n in range(20):
            body = event(types[n % 4])
            sig = sign(body)
            if n == 5:
                sig = sign(body, at=int(time.time()) - 290)
            elif n == 6:
                sig = sign(body, "whsec_rotatedaway") + "," + sig.split(",")[1]
            elif n == 7:
                body = event("invoice.paid", pad=MAX_BODY - len(event("invoice.paid")))
                assert len(body) == MAX_BODY
                sig = sign(body)
            codes.append(post(url, body, sig))
        assert codes == [200] * 20 and time.monotonic() - t0 < 1.5
        last_run = daemon.wait_for(lambda: (read_state(db) or {}).get("last_run"), "the webhook's sync")
        seen_wall = time.time()
        assert (last_run["reason"], last_run["status"]) == ("webhook customer.subscription.updated", "succeeded")

        held.enter_context(sync_lock(db))  # (another process's run: this one's, which the daemon's is not)
        assert post(url, event("invoice.paid"), sign(event("invoice.paid"))) == 200
        daemon.wait_for(lambda: "sync starting (webhook invoice.paid)" in daemon.text(), "the second sync", 15)
        time.sleep(0.3)  # (it waits for the lock now)
        code, took = daemon.stop()
    finally:
        daemon.kill()
        held.close()
    log = daemon.text()
    assert code == 0 and took < 10, log[-3000:]
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    state = read_state(db)
    assert state is not None and state["state"] == "stopped" and state["last_error"] is None
    assert state["last_run"]["reason"] == "webhook customer.subscription.updated"
    assert runs_of(db) == [("full", "succeeded"), ("incremental", "succeeded")]
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert_store_equals_sandbox(con, sandbox.sim)  # type: ignore[arg-type]
    finally:
        con.close()
    status_wall = time.time()
    info, text = status_json(env)
    assert [(r["mode"], r["status"]) for r in info["runs"]] == [("incremental", "succeeded"), ("full", "succeeded")]
    assert info["sync_running"] is False and "daemon_error" not in info
    lag = lag_seconds(info["lag"])
    assert int(status_wall - seen_wall) - 1 <= lag <= time.time() - burst_wall + 1, (lag, info["lag"])
    assert leaks(tmp_path, [text]) == []


# --------------------------------------------------------------------------------- a stop during the recompute
@pytest.mark.parametrize("recompute", [
    pytest.param("full", id="full"),
    pytest.param("changed", id="changed"),
])
def test_a_sigterm_during_the_recompute_rolls_it_back_whatever_the_recompute_mode(
        tmp_path: Path, synced: Path, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch,
        recompute: str) -> None:
    """The daemon (in this process, the pipeline's own run) syncs a billing run; the moment its metrics start being
    derived (every customer, or only the changed ones), SIGTERM comes and the daemon's main loop passes it on as a
    stop before the derivation goes on.

    By hand, README: "a stop while the metrics are being recomputed interrupts the recompute, which is rolled back
    (the previous results and snapshot stay, the synced rows stay committed, and the next run recomputes)". So:
    the run is stopped (sync_runs (incremental, stopped), the state's last run stopped), metrics_runs keeps its
    one row (the full sync's), the snapshot is the one published before, and the daemon ends with no error."""
    db = copy_store(synced, tmp_path)
    published = snapshot_path(db).stat().st_mtime_ns
    sandbox.advance(1)
    settings = Settings(api_key=Secret(KEY), api_base=sandbox.url, db=db, rate_limit=1000.0, recompute=recompute)
    d = Daemon(settings, interval_seconds=3600)
    name = "_derive_changed" if recompute == "changed" else "recompute"
    real = getattr(incremental, name)

    def sigterm_then(*args: Any, **kwargs: Any) -> Any:
        d.handle_signal(signal.SIGTERM, None)  # (what the daemon's SIGTERM handler does)
        assert d.stop_event.wait(10)  # the main loop has made it a stop
        return real(*args, **kwargs)

    monkeypatch.setattr(incremental, name, sigterm_then)
    done: list[int] = []
    thread = threading.Thread(target=lambda: done.append(d.run_forever(install_signals=False)))
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive() and done == [0]
    state = read_state(db)
    assert state is not None and state["state"] == "stopped" and state["last_error"] is None
    assert runs_of(db) == [("full", "succeeded"), ("incremental", "stopped")]
    assert state["last_run"]["status"] == "stopped"
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM metrics_runs").fetchone() == (1,)
    finally:
        con.close()
    assert snapshot_path(db).stat().st_mtime_ns == published


# ----------------------------------------------------------------------------------------- two statuses at once
def test_a_status_reading_the_runs_is_no_sync_to_a_second_status(tmp_path: Path, synced: Path) -> None:
    """Two monitors ask `status` at the same moment: the first holds the sync lock for the moment it reads the runs
    (as a brief holder, by="status"). By hand: no sync runs, so the second says sync_running false."""
    db = copy_store(synced, tmp_path)
    with sync_lock(db, by="status"):  # (what the first status holds while it reads the runs)
        info = collect_status(db)
    assert info["sync_running"] is False
