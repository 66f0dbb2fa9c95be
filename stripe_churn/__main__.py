"""Allow ``python -m stripe_churn``."""

from stripe_churn.cli import main

if __name__ == "__main__":
    main()
