"""One root error for the product; subclasses say whether trying again can help.

The daemon retries only :class:`TransientError`; everything else is fatal until a person acts.
Messages are one line: what happened, what state was left, and what to do next.
"""

from __future__ import annotations


class StripeChurnError(Exception):
    """Root of every error stripe-churn raises on purpose."""

    transient: bool = False
    exit_code: int = 1

    def __init__(self, message: str, *, request_id: str | None = None, http_status: int | None = None,
                 object_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.http_status = http_status
        self.object_id = object_id

    def __str__(self) -> str:
        extra = []
        if self.http_status is not None:
            extra.append(f"HTTP {self.http_status}")
        if self.request_id:
            extra.append(f"request {self.request_id}")
        return f"{self.message} ({', '.join(extra)})" if extra else self.message


class TransientError(StripeChurnError):
    """Trying again later can help (rate limits, 5xx, dropped connections, a busy database)."""

    transient = True


class FatalError(StripeChurnError):
    """A person has to act (bad key, bad config, missing permission) before a retry can help."""

    exit_code = 2


class ConfigError(FatalError):
    """A setting is missing, unknown, of the wrong type, or its file cannot be read."""


class AuthError(FatalError):
    """Stripe refused the API key (401) or the key lacks a permission (403)."""


class StripeAPIError(TransientError):
    """Stripe (or the sandbox) kept failing after the allowed retries."""


class BadResponseError(TransientError):
    """Stripe sent a body that is not the JSON it should be (truncated, HTML from a proxy)."""


class StoreError(FatalError):
    """The DuckDB file cannot be used (corrupt, wrong schema, not writable)."""


class StoreLockedError(TransientError):
    """Another process holds the database or the sync lock."""

    exit_code = 3


class DataError(FatalError):
    """Stored data cannot be turned into numbers (for example a missing exchange rate)."""


class StoppedError(StripeChurnError):
    """A stop was requested while work ran: what was committed stays, the rest was rolled back."""
