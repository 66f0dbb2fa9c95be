"""Suite-wide ordering: the long tests (marked ``slow``) are collected first, so that with two workers
(``pytest -n 2 --dist loadfile``, as scripts/check runs it) their files start at once instead of last."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    # a stable sort: files holding a slow test first, every file's own order kept
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_files)
