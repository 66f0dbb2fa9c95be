"""The daemon's state file is written durably: synced to disk before it replaces the last, a failed write leaving no
temporary file behind and stopping nothing."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_daemon import locked_writer, wait_for

from stripe_churn.daemon import Daemon, read_state, state_path
from stripe_churn.pipeline import RunSummary
from stripe_churn.settings import Settings


def leftovers(db: Path) -> list[str]:
    return sorted(p.name for p in db.parent.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def failing_write(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A store whose state file cannot be written: its place taken by a folder (the rename fails), or the
    temporary file on a full disk (/dev/full: the write fails)."""
    db = tmp_path / "d.duckdb"
    if request.param == "rename":
        state_path(db).mkdir()
        (state_path(db) / "in the way").write_text("x")
    else:
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full")
        state_path(db).with_name(state_path(db).name + f".{os.getpid()}.tmp").symlink_to("/dev/full")
    yield db


@pytest.mark.parametrize("failing_write", ["rename", "disk-full"], indirect=True)
def test_a_failed_state_write_leaves_no_temporary_file_and_is_logged_once(
        failing_write: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = failing_write
    caplog.set_level(logging.DEBUG, logger="stripe_churn.daemon")
    d = Daemon(Settings(db=db), interval_seconds=3600, run=locked_writer())
    for n in range(3):
        d._save(n=n)
        assert leftovers(db) == []
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot write daemon state" in warnings[0].getMessage(), caplog.text


def test_a_daemon_whose_state_cannot_be_written_runs_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The state file cannot be written (its place taken, a full disk): the daemon syncs on, with one WARNING,
    and writes its state again once it can."""
    db = tmp_path / "d.duckdb"
    state_path(db).mkdir()
    (state_path(db) / "in the way").write_text("x")
    caplog.set_level(logging.INFO, logger="stripe_churn.daemon")
    runs: list[int] = []
    inner = locked_writer()

    def run(settings: Settings, **kw: Any) -> RunSummary:
        runs.append(1)
        return inner(settings, **kw)

    d = Daemon(Settings(db=db), interval_seconds=0.2, run=run)
    t = threading.Thread(target=d.run_forever, kwargs={"install_signals": False})
    t.start()
    try:
        assert wait_for(lambda: d.runs >= 4), caplog.text
        with d._state_lock:  # (between two writes)
            assert leftovers(db) == []
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "cannot write daemon state" in warnings[0].getMessage(), caplog.text
        (state_path(db) / "in the way").unlink()
        state_path(db).rmdir()
        assert wait_for(lambda: (read_state(db) or {}).get("last_run") is not None)
        assert (read_state(db) or {}).get("state") == "started"
    finally:
        d.request_stop()
        t.join(timeout=15)
    assert not t.is_alive() and (read_state(db) or {}).get("state") == "stopped"
    assert leftovers(db) == []


def test_the_state_file_is_synced_to_disk_before_it_replaces_the_last(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The state is replaced by a rename: without an fsync of the new file first, a power cut could leave the
    state file empty. The file is synced before the rename, and the folder after it."""
    db = tmp_path / "d.duckdb"
    d = Daemon(Settings(db=db), interval_seconds=3600, run=locked_writer())
    done: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        done.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        done.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    d._save(state="started")
    path = state_path(db)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    assert done == [("fsync", str(tmp)), ("replace", str(path)), ("fsync", str(tmp_path))]
    assert (read_state(db) or {}).get("state") == "started"
