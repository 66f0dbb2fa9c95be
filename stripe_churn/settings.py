"""Settings: defaults in code, then a TOML file, then the environment (the environment wins).

The file is ``config/stripe-churn.toml`` under the working directory when it exists, or the one named by
``--config``. Every key of the file is listed in :data:`FILE_KEYS`; an unknown key, a value of the wrong type
or an unreadable file is a :class:`ConfigError` that names the key and the file. The API key and the webhook
secret are held in :class:`Secret`, whose repr and str are masked, so they never reach a log or an error.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stripe_churn.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("config") / "stripe-churn.toml"
DEFAULT_API_BASE = "https://api.stripe.com"
DEFAULT_SCHEDULE = "*/30 * * * *"
SANDBOX_KEY = "sk_test_sandbox"
# Stripe's limit per API endpoint ("25 requests/s unless noted"), live and sandbox alike, and the share of the
# global limit it is in live mode (100/s): what an unset endpoint_rate_limit follows
# (Settings.effective_endpoint_rate_limit)
STRIPE_ENDPOINT_RATE = 25.0
ENDPOINT_SHARE = 0.25


# Environment variables other tools and guides hold a Stripe key in, named when STRIPE_API_KEY is missing
OTHER_KEY_NAMES = ("STRIPE_SECRET_KEY", "STRIPE_KEY", "STRIPE_SECRET", "STRIPE_API_SECRET", "STRIPE_RESTRICTED_KEY")
# Stripe keys that are no secret key, by prefix: what they are, for the message that refuses them as the API key
_NOT_SECRET_KEYS = (("pk_", "a publishable key (pk_...)"), ("whsec_", "a webhook signing secret (whsec_...)"))


class Secret:
    """A string that never shows itself in repr, str or f-strings; call :meth:`reveal` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    def __str__(self) -> str:
        return "********" if self._value else ""


@dataclass(frozen=True)
class Rules:
    """The MRR and classifier rules of design.md 4 and 5 (each a setting)."""

    movement_window_minutes: int = 60
    churn_recognition: str = "ended"  # "ended" | "canceled"
    include_metered: bool = True
    pause_collection_keeps_mrr: bool = True
    past_due_counts: bool = True
    # product id -> family name, used when product.metadata["family"] is not set
    families: Mapping[str, str] = field(default_factory=dict)
    # product id -> "seat" | "resource", overrides unit_label
    units: Mapping[str, str] = field(default_factory=dict)
    seat_unit_labels: tuple[str, ...] = ("seat", "seats", "user", "users", "member", "members", "license",
                                         "licenses", "agent", "agents")


@dataclass(frozen=True)
class Settings:
    """Everything stripe-churn can be told. Build it with :func:`load_settings`."""

    api_key: Secret = field(default_factory=lambda: Secret(""))
    db: Path = Path("stripe-churn.duckdb")
    api_base: str = DEFAULT_API_BASE
    account: str | None = None
    rate_limit: float | None = None  # None: 100 for live keys, 25 for test keys
    endpoint_rate_limit: float | None = None  # None: a quarter of the rate limit, at least 25 (effective_endpoint_...)
    schedule: str = DEFAULT_SCHEDULE
    webhook_secret: Secret = field(default_factory=lambda: Secret(""))
    webhook_host: str = "127.0.0.1"
    webhook_port: int | None = None
    currency: str = "usd"
    # CSV of exchange rates (date, currency, rate) written to fx_rates at every run; None: none
    fx_rates_file: Path | None = None
    log_level: str = "INFO"
    timeout_seconds: float = 30.0
    max_retries: int = 6
    # after a sync: "full" recomputes every customer (the default), "changed" only those with objects seen since
    # the last recompute (everything when the code, the rules, the catalogue or the exchange rates changed)
    recompute: str = "full"
    # DuckDB's memory limit for the metrics recompute ("4GB", "512MB", "50%"); None: DuckDB's default, 80% of the
    # machine's memory (the sync keeps to its own small cap whatever this says)
    memory_limit: str | None = None
    rules: Rules = field(default_factory=Rules)
    source: str = "defaults"  # where the settings came from, for messages
    # setting -> where its value came from ("environment variable STRIPE_CHURN_SCHEDULE", the config file's path),
    # for the checks made after loading (the daemon's schedule); a setting left out came from the defaults
    origins: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def from_file(self, attr: str) -> str | None:
        """The config file that gave the setting ``attr``, or None (the environment, the defaults, or settings built
        in code): for a message that names the setting where the user wrote it."""
        # (a setting the file gave has the file's path, the settings' source, as its origin)
        return self.source if self.origins.get(attr) == self.source else None

    def given_in(self, attr: str) -> str:
        """Where the setting ``attr`` was given, for a message that says what to check without showing the value:
        ``api_key in <the config file>``, ``the environment variable STRIPE_API_KEY`` (followed by ``(which
        overrides api_key in <the config file>)`` when the file gave it too), or both names when it was not given
        there (the defaults, settings built in code)."""
        env = next((name for name, a in ENV_KEYS.items() if a == attr), None)
        key = next((k for k, (_, a) in FILE_KEYS.items() if a == attr), attr)
        origin = self.origins.get(attr)
        if self.from_file(attr) is not None:
            return f"{key} in {origin}"
        if origin is not None:
            return f"the {origin}" if origin.startswith("environment variable ") else origin
        return f"{env} (setting {key})" if env else f"the setting {key}"

    @property
    def effective_rate_limit(self) -> float:
        """Read requests per second the syncer allows itself."""
        if self.rate_limit is not None:
            return self.rate_limit
        key = self.api_key.reveal()
        return 100.0 if key.startswith(("sk_live_", "rk_live_")) else 25.0

    @property
    def effective_endpoint_rate_limit(self) -> float:
        """Read requests per second the syncer allows itself to any one Stripe endpoint (``/v1/invoices``, and each
        object's ``/v1/invoices/{id}/lines``). Unset, it keeps Stripe's own proportions: a quarter of the rate
        limit, at least Stripe's 25/s per endpoint and at most the rate limit; so 25 for the default of either
        mode, and a raised rate_limit (an account with raised limits, the sandbox) raises it in step."""
        if self.endpoint_rate_limit is not None:
            return self.endpoint_rate_limit
        rate = self.effective_rate_limit
        return min(rate, max(STRIPE_ENDPOINT_RATE, rate * ENDPOINT_SHARE))

    @property
    def is_live_key(self) -> bool:
        return self.api_key.reveal().startswith(("sk_live_", "rk_live_"))

    def require_api_key(self) -> str:
        """The API key, or a ConfigError that names every place that was looked in."""
        key = self.api_key.reveal()
        if not key:
            # (the names Stripe's own guides and other tools give the key: set, they look like a key given)
            other = next((name for name in OTHER_KEY_NAMES if os.environ.get(name)), None)
            hint = f" ({other} is set, but stripe-churn reads STRIPE_API_KEY)" if other else ""
            raise ConfigError(
                f"no Stripe API key{hint}: set STRIPE_API_KEY in the environment or api_key in "
                f"{_file_or_any(self.source)}; for a try without Stripe run `stripe-churn demo`"
            )
        # (Stripe answers either with 401, which reads as a wrong or revoked key: say which key it is instead)
        wrong = next((what for prefix, what in _NOT_SECRET_KEYS if key.lower().startswith(prefix)), None)
        if wrong is not None:
            where = self.origins.get("api_key") or _file_or_any(self.source)
            raise ConfigError(
                f"the API key in {where} is {wrong}, which cannot read billing data (the value is not shown): give a "
                "secret key (sk_live_..., sk_test_...) or a restricted key with read access (rk_live_..., rk_test_...) "
                "from the Stripe dashboard, Developers > API keys")
        return key


# file key -> (python type(s), settings attribute)
FILE_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "api_key": ((str,), "api_key"),
    "db": ((str,), "db"),
    "api_base": ((str,), "api_base"),
    "account": ((str,), "account"),
    "rate_limit": ((int, float), "rate_limit"),
    "endpoint_rate_limit": ((int, float), "endpoint_rate_limit"),
    "schedule": ((str,), "schedule"),
    "webhook_secret": ((str,), "webhook_secret"),
    "webhook_host": ((str,), "webhook_host"),
    "webhook_port": ((int,), "webhook_port"),
    "currency": ((str,), "currency"),
    "fx_rates_file": ((str,), "fx_rates_file"),
    "log_level": ((str,), "log_level"),
    "timeout_seconds": ((int, float), "timeout_seconds"),
    "max_retries": ((int,), "max_retries"),
    "recompute": ((str,), "recompute"),
    "memory_limit": ((str,), "memory_limit"),
}
RULE_KEYS: dict[str, tuple[type, ...]] = {
    # design.md 5's name; minutes, or a duration such as "90m" or "2h" (movement_window_minutes: the older name)
    "movement_window": (int, str),
    "movement_window_minutes": (int,),
    "churn_recognition": (str,),
    "include_metered": (bool,),
    "pause_collection_keeps_mrr": (bool,),
    "past_due_counts": (bool,),
    "families": (dict,),
    "units": (dict,),
    "seat_unit_labels": (list,),
}
ENV_KEYS: dict[str, str] = {
    "STRIPE_API_KEY": "api_key",
    "STRIPE_CHURN_DB": "db",
    "STRIPE_API_BASE": "api_base",
    "STRIPE_ACCOUNT": "account",
    "STRIPE_RATE_LIMIT": "rate_limit",
    "STRIPE_ENDPOINT_RATE_LIMIT": "endpoint_rate_limit",
    "STRIPE_CHURN_SCHEDULE": "schedule",
    "STRIPE_WEBHOOK_SECRET": "webhook_secret",
    "STRIPE_CHURN_CURRENCY": "currency",
    "STRIPE_CHURN_FX_RATES": "fx_rates_file",
    "STRIPE_CHURN_LOG_LEVEL": "log_level",
    "STRIPE_CHURN_RECOMPUTE": "recompute",
    "STRIPE_CHURN_MEMORY_LIMIT": "memory_limit",
}


def _type_name(types: tuple[type, ...]) -> str:
    """What a setting must be, with its article: "a number", "an integer or a string"."""
    if set(types) == {int, float}:  # (an integer is a number: "a integer or number" said it twice, badly)
        types = (float,)
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a table",
             list: "a list"}
    return " or ".join(names[t] for t in types)


def _unknown(key: str, known: Iterable[str], where: str) -> ConfigError:
    """The error for a key the file should not have: the nearest known one when it looks like a typo of it."""
    import difflib

    name = key.rpartition(".")[2]
    prefix = key[: len(key) - len(name)]
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    hint = f"did you mean '{prefix}{close[0]}'? " if close else ""
    return ConfigError(f"unknown setting '{key}' in {where}: {hint}known: {', '.join(sorted(known))}")


SECRET_KEYS = ("api_key", "webhook_secret")  # settings whose values no message may show
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _file_or_any(source: str) -> str:
    """``source`` when it is a config file, else where one would go (for messages that say where to set a thing)."""
    if source.startswith("defaults"):
        return f"a config file ({DEFAULT_CONFIG} or --config)"
    return source


def _kind(value: Any) -> str:
    """What a TOML value is, in words, without showing it (for secrets)."""
    if isinstance(value, bool):
        return "true/false"
    names = {int: "an integer", float: "a number", str: "a string", dict: "a table", list: "a list"}
    return next((name for t, name in names.items() if isinstance(value, t)), "a date or time")


# A Stripe secret wherever it is pasted: a secret or restricted key, live or test, or a webhook signing secret,
# in any case (currency and log_level are lower- and upper-cased before a message shows them)
_SECRET_LIKE = re.compile(r"(?<![A-Za-z0-9])((?:[sr]k_(?:live|test)_|whsec_))[\w+/=-]+", re.IGNORECASE)


def redact_secrets(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with its secrets masked: each of ``known`` (the configured key and webhook secret, in any case) as
    ``********``, and anything shaped like a Stripe key or signing secret down to its prefix (``sk_test_…``)."""
    for secret in known:
        if secret:
            text = re.sub(re.escape(secret), "********", text, flags=re.IGNORECASE)
    return _SECRET_LIKE.sub(lambda m: f"{m.group(1)}…", text)


def redacted_line(text: str, known: Iterable[str] = ()) -> str:
    """``text`` fit for one log line: a message over several lines (DuckDB's) joined, its secrets masked
    (:func:`redact_secrets`)."""
    return redact_secrets(" ".join(text.split()), known)


def _shown(value: Any, known: Iterable[str] = ()) -> str:
    """``repr(value)`` for a message, unless the value is or holds a secret (shaped like a Stripe key, or one of
    ``known``, the configured key and webhook secret): then masked, and called a key in the wrong setting."""
    text = repr(value)
    # (a known secret is matched with its quotes: a value equal to it, or an item of a list equal to it)
    masked = redact_secrets(text, [repr(k) for k in known if k])
    return text if masked == text else f"{masked}, which looks like a Stripe secret key in the wrong setting"


def _known_secrets(*sources: Mapping[str, Any] | None) -> list[str]:
    """The API keys and webhook secrets given in ``sources`` (the file, the environment, the overrides), for
    :func:`_shown` to recognise before the settings are built."""
    known = []
    for source in sources:
        for name in (*SECRET_KEYS, *(env for env, attr in ENV_KEYS.items() if attr in SECRET_KEYS)):
            value = (source or {}).get(name)
            value = value.reveal() if isinstance(value, Secret) else value
            if value and isinstance(value, str):
                known.append(value)
    return known


def _check_type(key: str, value: Any, types: tuple[type, ...], where: str, known: Iterable[str] = ()) -> None:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        got = _kind(value) if key in SECRET_KEYS else _shown(value, known)
        raise ConfigError(f"setting '{key}' in {where} must be {_type_name(types)}, got {got}")


def _convert(attr: str, value: Any) -> Any:
    if attr in ("api_key", "webhook_secret"):
        return Secret(str(value))
    if attr in ("db", "fx_rates_file"):
        return Path(value).expanduser()
    if attr in ("rate_limit", "endpoint_rate_limit"):
        return float(value)
    if attr in ("currency", "recompute"):
        return str(value).strip().lower()
    if attr == "log_level":
        return str(value).strip().upper()
    if attr == "api_base":
        return str(value).rstrip("/")
    if attr == "memory_limit":
        return " ".join(str(value).split()) or None
    return value


def read_text_file(path: Path, what: str, if_missing: str, encoding: str = "utf-8") -> str:
    """The text of a file a setting names; a missing or unreadable one is a one-line ConfigError that calls it
    ``what`` and says what to do (``if_missing`` when it does not exist)."""
    try:
        return path.read_bytes().decode(encoding)
    except FileNotFoundError:
        raise ConfigError(f"{what} does not exist; {if_missing}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} cannot be read ({exc.__class__.__name__}); fix its permissions or save it "
                          "as UTF-8") from None


def _read_file(path: Path) -> dict[str, Any]:
    text = read_text_file(path, f"config file {path}",
                          "check --config or create it from config/stripe-churn.example.toml")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _warn_if_world_readable(path: Path, data: Mapping[str, Any]) -> None:
    held = [(key, env) for key, env in (("api_key", "STRIPE_API_KEY"), ("webhook_secret", "STRIPE_WEBHOOK_SECRET"))
            if data.get(key)]
    if not held:
        return
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("config file %s holds a secret (%s) and is readable by other users; run `chmod 600 %s` "
                    "or move it to %s", path, " and ".join(k for k, _ in held), path,
                    " and ".join(e for _, e in held))


def load_settings(config: str | Path | None = None, env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Build settings from defaults, the config file, then the environment, then explicit overrides."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    rules: dict[str, Any] = {}
    window_key = "movement_window_minutes"  # the name the file gave the movement window, for messages
    source = "defaults (no config file)"
    origins: dict[str, str] = {}  # where each setting given in the file or the environment came from
    path: Path | None = Path(config) if config is not None else None
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    data = _read_file(path) if path is not None else {}
    # (a key pasted into another setting is not shown by that setting's error, whatever its shape)
    known = _known_secrets(data, env, overrides)
    if path is not None:
        where = str(path)
        _warn_if_world_readable(path, data)
        source = where
        for key, value in data.items():
            if key == "rules":
                if not isinstance(value, dict):
                    raise ConfigError(f"setting 'rules' in {where} must be a table ([rules])")
                _check_misplaced(value, where)
                for rkey, rvalue in value.items():
                    if rkey not in RULE_KEYS:
                        raise _unknown(f"rules.{rkey}", RULE_KEYS, where)
                    _check_type(f"rules.{rkey}", rvalue, RULE_KEYS[rkey], where, known)
                    rules[rkey] = tuple(rvalue) if isinstance(rvalue, list) else rvalue
                if "movement_window" in rules:
                    if "movement_window_minutes" in rules:
                        raise ConfigError(f"settings 'rules.movement_window' and 'rules.movement_window_minutes' in "
                                          f"{where} are one setting given twice; keep 'rules.movement_window'")
                    rules["movement_window_minutes"] = _window_minutes(rules.pop("movement_window"), where,
                                                                       known)
                    window_key = "movement_window"
                continue
            if key not in FILE_KEYS:
                raise _unknown(key, [*FILE_KEYS, "rules"], where)
            types, attr = FILE_KEYS[key]
            _check_type(key, value, types, where, known)
            values[attr] = _convert(attr, value)
            origins[attr] = where
    _warn_unknown_env(env)
    for name, attr in ENV_KEYS.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        # (a value the file also gave is overridden: said, so that the user does not fix the file in vain)
        over = next((k for k, (_, a) in FILE_KEYS.items() if a == attr), attr) if origins.get(attr) == source \
            else None
        origins[attr] = f"environment variable {name}" + (f" (which overrides {over} in {source})" if over else "")
        if attr in ("rate_limit", "endpoint_rate_limit"):
            try:
                rate = float(raw)
            except ValueError:
                raise ConfigError(f"environment variable {name} must be a number, got {_shown(raw, known)}") \
                    from None
            if not rate > 0 or not math.isfinite(rate):
                raise ConfigError(f"environment variable {name} must be above 0, got {_shown(raw, known)}")
            values[attr] = rate
        else:
            values[attr] = _convert(attr, raw)
    for attr, value in (overrides or {}).items():
        if value is not None:
            values[attr] = _convert(attr, value)
            origins[attr] = "the overrides given to load_settings"
    if rules:
        values["rules"] = Rules(**rules)
    settings = Settings(source=source, origins=origins, **values)
    _validate(settings, origins, window_key)
    return settings


def _warn_unknown_env(env: Mapping[str, str]) -> None:
    """A warning for each STRIPE_CHURN_* variable of the environment that is no setting (a typo, such as
    STRIPE_CHURN_SCHEDUEL, was ignored without a word, and the default ran); its value is not shown."""
    import difflib

    for name in sorted(env):
        if name.startswith("STRIPE_CHURN_") and name not in ENV_KEYS:
            # (the part after the prefix: the prefix alone would make every name look like another)
            ours = {known.removeprefix("STRIPE_CHURN_"): known for known in ENV_KEYS}
            close = difflib.get_close_matches(name.removeprefix("STRIPE_CHURN_"), list(ours), n=1, cutoff=0.75)
            log.warning("environment variable %s is no stripe-churn setting and is ignored%s", name,
                        f": did you mean {ours[close[0]]}?" if close else f" (known: {', '.join(sorted(ENV_KEYS))})")


def _check_misplaced(rules: Mapping[str, Any], where: str) -> None:
    """A ConfigError for a setting written below the ``[rules]`` line (or ``[rules.families]``, ``[rules.units]``) that
    belongs elsewhere: TOML reads every key after a table's line as part of that table, and the example file ends
    with those tables, so a setting added at its end lands in ``[rules.units]`` (where it was refused as a unit, or
    taken as a product's family without a word). A key of a valid value in families or units may be a product id,
    and is only warned of."""
    tables: list[tuple[str, Mapping[str, Any]]] = [("rules", rules)]
    tables += [(f"rules.{name}", rules[name]) for name in ("families", "units") if isinstance(rules.get(name), dict)]
    for table, items in tables:
        for key, value in items.items():
            if key in FILE_KEYS:
                place = "above the [rules] line"
            elif key in RULE_KEYS and table != "rules":
                place = "under [rules], before the [rules.families] and [rules.units] lines"
            else:
                continue
            said = (f"'{table}.{key}' in {where} comes after the [{table}] line, so TOML reads it as part of that "
                    f"table: if it is the setting '{key}', move it {place}")
            valid = (isinstance(value, str) and (table != "rules.units" or value in ("seat", "resource"))
                     and table != "rules")
            if not valid:
                raise ConfigError(f"setting {said}")
            log.warning("%s (a product id '%s' may stay)", said, key)


# A memory size as DuckDB reads one: a number and a unit, or a share of the machine's memory
_MEMORY = re.compile(r"(\d+(?:\.\d+)?) ?(kb|mb|gb|tb|kib|mib|gib|tib|%)", re.IGNORECASE)
_MEMORY_BYTES = {"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def check_memory_limit(value: str, where: str) -> None:
    """A ConfigError unless ``value`` is a memory size DuckDB takes as its limit (``where``: where it was set)."""
    match = _MEMORY.fullmatch(value)
    amount = float(match.group(1)) if match else 0.0
    unit = match.group(2).lower() if match else ""
    ok = 0 < amount <= 100 if unit == "%" else amount * _MEMORY_BYTES.get(unit, 0) >= 1e6
    if not ok:
        raise ConfigError(f"setting 'memory_limit' in {where} must be a memory size such as \"4GB\" or \"512MB\" "
                          f"(at least 1MB), or a share of the machine's memory such as \"50%\", got {value!r}")


# The movement window's bounds in minutes (design.md 5; 0: only changes at the same moment are netted)
MAX_MOVEMENT_WINDOW_MINUTES = 366 * 24 * 60


# A movement window written as a duration: a whole number of minutes or hours
_WINDOW = re.compile(r"(\d+) ?(m|min|mins|minute|minutes|h|hour|hours)?", re.IGNORECASE)


def _window_minutes(value: int | str, where: str, known: Iterable[str] = ()) -> int:
    """The minutes of ``rules.movement_window`` as the file gives it: an integer (minutes) or a duration such as
    "90m" or "2h"; a ConfigError for any other text (the bounds are :func:`check_rules`'s)."""
    if isinstance(value, int):
        return value
    match = _WINDOW.fullmatch(value.strip())
    if not match:
        raise ConfigError(f"setting 'rules.movement_window' in {where} must be a number of minutes (60) or a "
                          f"duration such as \"90m\" or \"2h\", got {_shown(value, known)}")
    unit = (match.group(2) or "m").lower()
    return int(match.group(1)) * (60 if unit.startswith("h") else 1)


# The rules that are tables or lists, and what they must be: the file's types (RULE_KEYS) say table or list, not
# what is in them (a number among the labels failed in the recompute, after the sync had committed)
_RULE_ITEMS: dict[str, str] = {
    "families": "table of strings (product id = family name)",
    "units": 'table of strings (product id = "seat" or "resource")',
    "seat_unit_labels": 'list of strings such as ["seat", "users"]',
}


def check_rules(rules: Rules, where: str, window_key: str = "movement_window_minutes") -> None:
    """A ConfigError for rules the metrics cannot use (``where``: the file or source that set them;
    ``window_key``: the name the movement window was given there)."""
    window = rules.movement_window_minutes
    if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window <= MAX_MOVEMENT_WINDOW_MINUTES:
        raise ConfigError(f"setting 'rules.{window_key}' in {where} must be a whole number of minutes "
                          f"from 0 to {MAX_MOVEMENT_WINDOW_MINUTES} (a year), got {window!r}")
    for name, what in _RULE_ITEMS.items():
        value = getattr(rules, name)
        if what.startswith("table") and isinstance(value, Mapping):
            items = [(f"for {key!r}", item) for key, item in value.items()]
        elif what.startswith("list") and isinstance(value, (tuple, list)):
            items = [(f"as item {n}", item) for n, item in enumerate(value, 1)]
        else:  # (settings built in code; the file's types are checked as it is read)
            raise ConfigError(f"setting 'rules.{name}' in {where} must be a {what}, got {_shown(value)}")
        for place, item in items:
            if not isinstance(item, str):
                raise ConfigError(f"setting 'rules.{name}' in {where} must be a {what}, got {_shown(item)} {place}")
    # (here, not only where a file is read: settings built in code reach the recompute through this check alone,
    # and a kind it does not know would become a label design.md 5 does not have)
    if rules.churn_recognition not in ("ended", "canceled"):
        raise ConfigError(f"setting 'rules.churn_recognition' in {where} must be \"ended\" or \"canceled\"")
    for pid, unit in rules.units.items():
        if unit not in ("seat", "resource"):
            raise ConfigError(f"setting 'rules.units.{pid}' in {where} must be \"seat\" or \"resource\"")


def _validate(s: Settings, origins: Mapping[str, str] | None = None,
              window_key: str = "movement_window_minutes") -> None:
    where = s.source
    origins = origins or {}
    _check_misplaced_secrets(s, origins)
    check_rules(s.rules, where, window_key)
    for attr in SECRET_KEYS:
        check_secret(attr, getattr(s, attr), origins.get(attr, where))
    if s.recompute not in ("full", "changed"):
        raise ConfigError(f"setting 'recompute' in {origins.get('recompute', where)} must be \"full\" or "
                          f"\"changed\", got {s.recompute!r}")
    if s.log_level not in LOG_LEVELS:
        raise ConfigError(f"setting 'log_level' in {origins.get('log_level', where)} must be one of "
                          f"{', '.join(LOG_LEVELS)}, got {s.log_level!r}")
    if s.memory_limit is not None:
        check_memory_limit(s.memory_limit, origins.get("memory_limit", where))
    for attr in ("rate_limit", "endpoint_rate_limit"):
        rate = getattr(s, attr)
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ConfigError(f"setting '{attr}' in {origins.get(attr, where)} must be a number of requests per "
                              f"second above 0, got {rate!r}")
    if not (s.timeout_seconds > 0 and math.isfinite(s.timeout_seconds)):
        raise ConfigError(f"setting 'timeout_seconds' in {origins.get('timeout_seconds', where)} must be a number "
                          f"of seconds above 0, got {s.timeout_seconds!r}")
    if s.max_retries < 0:
        raise ConfigError(f"setting 'max_retries' in {origins.get('max_retries', where)} must be 0 or more "
                          f"(0: no retries), got {s.max_retries!r}")
    if s.webhook_port is not None and not 0 <= s.webhook_port <= 65535:
        raise ConfigError(f"setting 'webhook_port' in {origins.get('webhook_port', where)} must be a port from "
                          f"1 to 65535 (0 for a free one), got {s.webhook_port!r}")
    try:
        base = urlsplit(s.api_base)
    except ValueError as exc:  # (an unclosed IPv6 bracket, a bracketed host that is no address)
        # (the value is not shown: it may carry a user and password, refused below once it parses)
        raise ConfigError(f"setting 'api_base' in {origins.get('api_base', where)} is not a URL "
                          f"({redact_secrets(str(exc))}): give the server's root such as https://api.stripe.com"
                          ) from None
    if base.username is not None or base.password is not None:
        # (a URL's user and password would reach every error and log line that names the server: not shown here)
        shown = base._replace(netloc=base.netloc.rpartition("@")[2]).geturl()
        raise ConfigError(f"setting 'api_base' in {origins.get('api_base', where)} carries a user or password "
                          f"({shown} with credentials before the host): give the server alone; the API key goes in "
                          "STRIPE_API_KEY")
    if not s.api_base.startswith(("http://", "https://")):
        raise ConfigError(f"setting 'api_base' ({s.api_base!r}) in {origins.get('api_base', where)} must start "
                          "with http:// or https://")
    if s.db.is_dir():  # (DuckDB's "Could not read from file ...: Is a directory" said nothing of what to do)
        raise ConfigError(f"setting 'db' in {origins.get('db', where)} names {s.db}, which is a folder: give the "
                          f"path of the database file in it, such as {s.db / 'stripe-churn.duckdb'}")
    if len(s.currency) != 3 or not s.currency.isascii() or not s.currency.isalpha():
        raise ConfigError(f"setting 'currency' in {origins.get('currency', where)} must be a 3-letter ISO code such "
                          f"as usd, got {s.currency!r}")


def _check_misplaced_secrets(s: Settings, origins: Mapping[str, str]) -> None:
    """A ConfigError, which masks the value, for a setting other than the API key and the webhook secret that holds
    one of them or anything shaped like a Stripe key: the other checks would show it in full (and a path, an
    account or a schedule is not checked at all before it reaches logs and errors)."""
    known = [s.api_key.reveal(), s.webhook_secret.reveal()]
    for f in dataclasses.fields(s):
        value = getattr(s, f.name)
        if f.name in (*SECRET_KEYS, "source") or not isinstance(value, (str, Path)):
            continue
        shown = _shown(str(value), known)
        if shown != repr(str(value)):
            raise ConfigError(f"setting '{f.name}' in {origins.get(f.name, s.source)} holds {shown}: an API key "
                              "goes in STRIPE_API_KEY (or api_key), a webhook signing secret in STRIPE_WEBHOOK_SECRET "
                              f"(or webhook_secret); give '{f.name}' its own value")


def check_secret(attr: str, secret: Secret, where: str) -> None:
    """A ConfigError, which does not show the value, when a secret holds whitespace, a control character or
    anything but printable ASCII (Stripe's keys and signing secrets never do; a pasted newline does)."""
    value = secret.reveal()
    if value and not (value.isascii() and value.isprintable() and " " not in value):
        what = "API key" if attr == "api_key" else "webhook signing secret"
        raise ConfigError(f"setting '{attr}' in {where} holds a space, a line break or another character no "
                          f"Stripe {what} has (the value is not shown); copy it again from the Stripe dashboard")


def replace(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with some attributes changed (values converted as from a file)."""
    return dataclasses.replace(settings, **{k: _convert(k, v) for k, v in changes.items()})
