"""Suite-wide ordering: the heaviest files (HEAVY_FILES, then any holding a test marked ``slow``) are collected
first, so that with the workers of scripts/check (``pytest -n 3 --dist loadfile --no-loadscope-reorder``) they
start at once instead of last. Ctrl-C is handled as at a terminal, however the suite was started. And the small
stores of most tests run DuckDB on one thread (see ``one_duckdb_thread``)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from typing import Any

import duckdb
import pytest

# Test modules whose stores keep DuckDB's threads (one per core): those whose code runs work side by side on
# several connections by the thread count (the incremental path's shards), those with stores large enough to be
# split among threads (the ground truth and the benchmark, where an order that depends on the threads would show),
# and the interrupt tests, which stop queries while DuckDB's threads run them.
_MANY_THREADS = frozenset({
    "test_incremental", "test_incremental_catalogue", "test_ground_truth", "test_ground_truth_options",
    "test_ground_truth_more_options", "test_bench_store", "test_interrupt", "test_chaos", "test_concurrency",
})
_one_thread = {"on": True}
_real_connect = duckdb.connect


def _connect(database: Any = ":memory:", read_only: bool = False, config: dict[str, Any] | None = None) -> Any:
    """duckdb.connect, on one thread while ``one_duckdb_thread`` says so (unless ``config`` names threads)."""
    if _one_thread["on"]:
        config = {"threads": 1, **(config or {})}
    return _real_connect(database, read_only=read_only, config=config or {})


duckdb.connect = _connect  # type: ignore[assignment]


@pytest.fixture(scope="module", autouse=True)
def one_duckdb_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    """Stores opened by a test module's tests (in this process) run DuckDB on one thread, but in _MANY_THREADS.
    A test store's tables fit in one row group, which DuckDB scans as one task whatever its threads: more threads
    only add their scheduling, about a quarter of a small recompute's CPU (0.52 against 0.40 s), and with the
    suite's two workers on two cores the threads of one wait for the other's anyway."""
    _one_thread["on"] = request.module.__name__.rsplit(".", 1)[-1] not in _MANY_THREADS
    yield
    _one_thread["on"] = True


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


# Seconds the heaviest files took in a clean run (`scripts/check --durations=0`, summed per file, at b9b1cd5; the
# files of 15 s or more). The workers take whole files (--dist loadfile) in the order collected (scripts/check
# passes --no-loadscope-reorder: by default pytest-xdist hands out files by their number of tests instead, and a
# file of a few long tests, the ground truths with options or the daemon soak, started among the last): the
# heaviest go first, longest first, so that no worker is left with one of them at the end while the others have
# nothing to do.
HEAVY_FILES = {
    "tests/metrics/test_incremental.py": 150, "tests/metrics/test_ground_truth.py": 111,
    "tests/metrics/test_ground_truth_more_options.py": 60, "tests/sandbox/test_sim.py": 64, "tests/test_sync.py": 63,
    "tests/metrics/test_ground_truth_options.py": 53, "tests/metrics/test_incremental_catalogue.py": 53,
    "tests/test_daemon.py": 50, "tests/test_pipeline.py": 42, "tests/metrics/test_mrr_rules.py": 40,
    "tests/metrics/test_sources_hunt.py": 38, "tests/metrics/test_rules_hunt.py": 34, "tests/test_daemon_soak.py": 33,
    "tests/metrics/test_bridge.py": 29, "tests/test_daemon_hunt.py": 29, "tests/test_cli.py": 26,
    "tests/metrics/test_bench_store.py": 26, "tests/metrics/test_history.py": 23,
    "tests/reliability/test_chaos.py": 23, "tests/metrics/test_item_changed_before_first_renewal.py": 23,
    "tests/metrics/test_history_item_created.py": 22, "tests/test_cli_hunt.py": 22,
    "tests/reliability/test_concurrency.py": 22, "tests/test_sync_credit_note_lines.py": 20,
    "tests/reliability/test_bad_data.py": 19, "tests/metrics/test_status_hunt.py": 18,
    "tests/metrics/test_runner.py": 18, "tests/metrics/test_classifier.py": 17, "tests/store/test_store.py": 16,
    "tests/metrics/test_requests_across_gaps.py": 16, "tests/reliability/test_faults.py": 15,
    "tests/metrics/test_option_currency.py": 15, "tests/metrics/test_views_contract.py": 15,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}

    def weight(item: pytest.Item) -> int:
        path = item.nodeid.split("::")[0]
        return HEAVY_FILES.get(path, 1 if path in slow_files else 0)

    # a stable sort: the heaviest files first (then any other holding a slow test), every file's own order kept
    items.sort(key=lambda item: -weight(item))
