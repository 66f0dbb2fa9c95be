"""The DuckDB store: raw Stripe tables, exchange rates and sync bookkeeping (see docs/internals.md)."""
