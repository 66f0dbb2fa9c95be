"""Suite-wide ordering: the long tests (marked ``slow``) are collected first, so that with two workers
(``pytest -n 2 --dist loadfile``, as scripts/check runs it) their files start at once instead of last. And Ctrl-C
is handled as at a terminal, however the suite was started."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_as_at_a_terminal() -> Iterator[None]:
    """The tests of Ctrl-C send SIGINT to the test process or to the commands it starts. A suite started in the
    background by a script (``cmd &``) ignores SIGINT, and every process it starts inherits that (Python then
    leaves SIGINT ignored): those tests failed, the commands running on to their end. Python's own handler is
    put in its place for the session (a process started from here gets the default then)."""
    ignored = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if ignored:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    # a stable sort: files holding a slow test first, every file's own order kept
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_files)
