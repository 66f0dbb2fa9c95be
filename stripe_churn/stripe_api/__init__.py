"""Talking to Stripe: raw page fetching through the SDK's HTTP client, the rate limiter, what to list."""
