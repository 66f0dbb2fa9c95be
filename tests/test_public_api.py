"""The package's public names: listed once, sorted, and each one importable from the package."""

from __future__ import annotations

import subprocess
import sys

import pytest

import stripe_churn


def test_all_is_sorted_and_every_name_resolves() -> None:
    names = [n for n in stripe_churn.__all__ if n != "__version__"]
    assert names == sorted(names)
    assert set(names) == set(stripe_churn._EXPORTS)
    assert len(set(names)) == len(names)
    for name in names:
        value = getattr(stripe_churn, name)
        assert getattr(value, "__name__", name) == name, name


def test_every_error_a_caller_may_catch_is_exported() -> None:
    """Every exception class of stripe_churn.errors is reachable from the package."""
    import stripe_churn.errors as errors

    public_errors = {n for n, v in vars(errors).items()
                     if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == errors.__name__
                     and not n.startswith("_")}
    missing = public_errors - set(stripe_churn.__all__)
    assert not missing, missing


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = stripe_churn.no_such_name


def test_import_is_cheap() -> None:
    """Importing the package does not pull in duckdb, the SDK or the metrics (the CLI's start-up time)."""
    code = "import sys, stripe_churn; print(sorted(m for m in ('duckdb', 'stripe', 'stripe_churn.sync') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
