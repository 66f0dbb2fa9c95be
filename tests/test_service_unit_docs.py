"""The sample systemd unit needs a user, a folder, a config file and an environment file: README says how to make
each one next to where it installs the unit (followed as written, the service exited 2 and restarted every 30 s)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_everything_the_unit_needs_is_made_in_the_readme() -> None:
    unit = (ROOT / "config" / "stripe-churn.service").read_text()
    needs = {
        "user": re.search(r"^User=(\S+)", unit, re.M).group(1),  # type: ignore[union-attr]
        "folder": re.search(r"^WorkingDirectory=(\S+)", unit, re.M).group(1),  # type: ignore[union-attr]
        "env": re.search(r"^EnvironmentFile=-?(\S+)", unit, re.M).group(1),  # type: ignore[union-attr]
        "config": re.search(r"--config (\S+)", unit).group(1),  # type: ignore[union-attr]
    }
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Running the daemon"):]
    section = section[:section.index("\n## ", 1)]
    setup = "\n".join(re.findall(r"```bash\n(.*?)```", section, flags=re.S))
    assert "useradd --system" in setup and needs["user"] in setup
    assert f"-o {needs['user']} -g {needs['user']} -m 0750 {needs['folder']}" in setup
    assert f"-m 0600 /dev/null {needs['env']}" in setup
    assert f"config/stripe-churn.example.toml {needs['config']}" in setup
    assert setup.index(needs["config"]) < setup.index("systemctl daemon-reload")


def test_the_unit_reloads_with_sighup_as_readme_says() -> None:
    """SIGHUP reloads the daemon's settings (it stopped it with exit code 0, which Restart=on-failure did not
    restart): the unit's ExecReload sends it, and README's daemon section says what a reload takes and what needs a
    restart."""
    unit = (ROOT / "config" / "stripe-churn.service").read_text()
    assert re.search(r"^ExecReload=/bin/kill -HUP \$MAINPID$", unit, re.M)
    assert re.search(r"^Restart=on-failure$", unit, re.M)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "SIGHUP (`systemctl reload stripe-churn`, or `kill -HUP <pid>`) reloads the settings without a restart" in readme
    assert "(a changed `EnvironmentFile`, such as a new `STRIPE_API_KEY` in `/etc/stripe-churn/env`, needs `systemctl restart`)" in readme
    assert "SIGTERM or SIGINT stops it" in readme and "SIGHUP stops" not in readme
