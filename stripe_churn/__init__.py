"""stripe-churn: a local DuckDB copy of Stripe billing history with labelled MRR movements."""
__version__ = "0.1.0"
