"""Thin commands: parse options, call one library function, turn known errors into one line and an exit code."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from stripe_churn.errors import StripeChurnError
from stripe_churn.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

FORMATS = ("table", "csv", "json")


def setup_logging(level: str = "INFO") -> None:
    """Plain log lines on stderr; the key never reaches them (it is a masked Secret everywhere)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def config_option(f: F) -> F:
    """``--config FILE``: the TOML settings file (default config/stripe-churn.toml when present)."""
    return click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                        default=None, help="Settings file (TOML). Default: config/stripe-churn.toml if present.")(f)


def format_option(f: F) -> F:
    """``--format table|csv|json``: one output option shared by every command that prints data."""
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="Output format.")(f)


def handle_errors(f: F) -> F:
    """Known errors become one line on stderr and a non-zero exit code; nothing else is swallowed."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except StripeChurnError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def get_settings(config_path: Path | None, **overrides: Any) -> Settings:
    settings = load_settings(config_path, overrides=overrides)
    setup_logging(settings.log_level)
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stripe-churn")
def cli() -> None:
    """stripe-churn: keep a DuckDB copy of a Stripe account, label every MRR change, answer churn in SQL."""


@cli.command()
@click.option("--customers", type=int, default=2000, show_default=True, help="Customers to simulate.")
@click.option("--months", type=int, default=36, show_default=True, help="Months of history to simulate.")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed (same seed, same account).")
@click.option("--port", type=int, default=12111, show_default=True, help="Port on 127.0.0.1 (0 picks a free one).")
@click.option("--latency-ms", type=float, default=0.0, show_default=True, help="Added latency per request.")
@click.option("--rate-limit", type=float, default=0.0, show_default=True,
              help="Requests per second before 429 (0: no limit).")
@click.option("--fault-rate", type=float, default=0.0, show_default=True,
              help="Share of requests answered with a 5xx or a dropped connection.")
@click.option("--api-key", default=None, help="The one accepted key (default: STRIPE_API_KEY, else sk_test_sandbox).")
@click.option("--truth-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the ground truth movements as JSON Lines to this file.")
@config_option
@handle_errors
def sandbox(customers: int, months: int, seed: int, port: int, latency_ms: float, rate_limit: float,
            fault_rate: float, api_key: str | None, truth_out: Path | None, config_path: Path | None) -> None:
    """Serve the built-in simulated Stripe account on 127.0.0.1 until SIGTERM/SIGINT.

    The first line printed is the base URL; point STRIPE_API_BASE at it.
    """
    import os

    from stripe_churn.sandbox.server import serve_forever
    from stripe_churn.settings import SANDBOX_KEY

    setup_logging()
    key = api_key or os.environ.get("STRIPE_API_KEY") or SANDBOX_KEY
    serve_forever(customers=customers, months=months, seed=seed, port=port, latency_ms=latency_ms,
                  rate_limit=rate_limit, fault_rate=fault_rate, api_key=key, truth_out=truth_out)


def main() -> None:
    """Console entry point."""
    cli()


if __name__ == "__main__":
    main()
