"""stripe-churn: a local DuckDB copy of Stripe billing history with labelled MRR movements.

The library is what the commands are built on; the names below are its public surface::

    from stripe_churn import load_settings, open_store, run_once

    settings = load_settings()                 # config file, then environment
    summary = run_once(settings)               # sync under the shared lock, recompute, publish the snapshot
    con = open_store(settings.db, read_only=True)

Names are imported on first use, so ``import stripe_churn`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "AuthError": "stripe_churn.errors",
    "BadResponseError": "stripe_churn.errors",
    "ConfigError": "stripe_churn.errors",
    "DaemonRunningError": "stripe_churn.errors",
    "DataError": "stripe_churn.errors",
    "DiskFullError": "stripe_churn.errors",
    "FatalError": "stripe_churn.errors",
    "MemoryLimitError": "stripe_churn.errors",
    "RunSummary": "stripe_churn.pipeline",
    "Secret": "stripe_churn.settings",
    "Settings": "stripe_churn.settings",
    "StoreError": "stripe_churn.errors",
    "StoreLockedError": "stripe_churn.errors",
    "StoppedError": "stripe_churn.errors",
    "StripeAPIError": "stripe_churn.errors",
    "StripeChurnError": "stripe_churn.errors",
    "SyncResult": "stripe_churn.sync",
    "TLSError": "stripe_churn.errors",
    "TransientError": "stripe_churn.errors",
    "load_settings": "stripe_churn.settings",
    "open_store": "stripe_churn.store.db",
    "recompute": "stripe_churn.metrics.runner",
    "run_once": "stripe_churn.pipeline",
    "run_sync": "stripe_churn.sync",
}

__all__ = [
    "AuthError",
    "BadResponseError",
    "ConfigError",
    "DaemonRunningError",
    "DataError",
    "DiskFullError",
    "FatalError",
    "MemoryLimitError",
    "RunSummary",
    "Secret",
    "Settings",
    "StoppedError",
    "StoreError",
    "StoreLockedError",
    "StripeAPIError",
    "StripeChurnError",
    "SyncResult",
    "TLSError",
    "TransientError",
    "__version__",
    "load_settings",
    "open_store",
    "recompute",
    "run_once",
    "run_sync",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and editors only
    from stripe_churn.errors import (
        AuthError,
        BadResponseError,
        ConfigError,
        DaemonRunningError,
        DataError,
        DiskFullError,
        FatalError,
        MemoryLimitError,
        StoppedError,
        StoreError,
        StoreLockedError,
        StripeAPIError,
        StripeChurnError,
        TLSError,
        TransientError,
    )
    from stripe_churn.metrics.runner import recompute
    from stripe_churn.pipeline import RunSummary, run_once
    from stripe_churn.settings import Secret, Settings, load_settings
    from stripe_churn.store.db import open_store
    from stripe_churn.sync import SyncResult, run_sync


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'stripe_churn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
