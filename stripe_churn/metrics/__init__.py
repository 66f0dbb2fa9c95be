"""Derive state history, MRR, movements and the bridge from the raw tables, in SQL inside DuckDB."""

from stripe_churn.metrics.runner import recompute, sql_steps

__all__ = ["recompute", "sql_steps"]
