"""Thin commands: parse options, call one library function, turn known errors into one line and an exit code."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from stripe_churn.errors import (
    FatalError,
    StoreError,
    StripeChurnError,
    damaged_store,
    explained,
    store_failure,
)
from stripe_churn.settings import Settings, load_settings, redact_secrets

F = TypeVar("F", bound=Callable[..., Any])

FORMATS = ("table", "csv", "json")


# A TCP port (0: the OS picks a free one) and a count of things to simulate, refused while the options are read
PORT = click.IntRange(0, 65535)
COUNT = click.IntRange(min=0)
# (the demo's report of no customer or no month had nothing to draw: `error: nothing to draw`, exit 2)
DEMO_COUNT = click.IntRange(min=1)

def setup_logging(level: str = "INFO") -> None:
    """Plain log lines on stderr; the key never reaches them (it is a masked Secret everywhere). Called again, it
    sets the level alone."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def config_option(f: F) -> F:
    """``--config FILE``: the TOML settings file (default config/stripe-churn.toml when present)."""
    return click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
                        default=None, help="Settings file (TOML). Default: config/stripe-churn.toml if present.")(f)


def format_option(f: F) -> F:
    """``--format table|csv|json``: one output option shared by every command that prints data."""
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="Output format.")(f)


def stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader went away (``stripe-churn report | head -1``); True when that
    cannot be told (a BrokenPipeError from elsewhere is wrapped where it happens: the Stripe client's errors)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


def end_quietly() -> NoReturn:
    """The reader of stdout went away: no message and exit code 1, as Python's documentation advises for
    SIGPIPE, with stdout pointed at /dev/null so that the interpreter's last flush has nowhere to fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # (no file descriptor: a test's captured stdout)
        pass
    sys.exit(1)


def query_interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is DuckDB's RuntimeError "Query interrupted" for a Ctrl-C that came during a statement."""
    from stripe_churn.pipeline import _query_interrupted

    return _query_interrupted(exc)


def handle_errors(f: F) -> F:
    """Known errors become one line on stderr and a non-zero exit code; nothing else is swallowed."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except StripeChurnError as exc:
            exc = explained(exc)  # (a store or snapshot this user may not open: what to do, not DuckDB's words)
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:  # (a command may say what the interruption leaves: see `sync`)
            word, code = ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
            click.echo(f"{word}: {exc}" if str(exc) else word, err=True)
            sys.exit(code)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:  # an unexpected failure still ends in one line; the traceback goes to DEBUG
            if isinstance(exc, BrokenPipeError) and stdout_closed():
                end_quietly()
            if query_interrupted(exc):  # (DuckDB's answer to a Ctrl-C during a statement: an interruption too)
                click.echo("interrupted", err=True)
                sys.exit(130)
            logging.getLogger(__name__).debug("unexpected failure", exc_info=True)
            refused = store_failure(exc) or damaged_store(exc)
            if refused is not None:
                click.echo(f"error: {refused}", err=True)
                sys.exit(refused.exit_code)
            first = str(exc).splitlines()[0] if str(exc) else ""
            click.echo(f"error: unexpected {type(exc).__name__}: {first} "
                       "(set STRIPE_CHURN_LOG_LEVEL=DEBUG for the traceback)", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


class Terminated(KeyboardInterrupt):
    """SIGTERM stopped the command as Ctrl-C does (see :func:`sigterm_as_ctrl_c`): it ends with ``terminated``
    and exit code 143, as a process ended by SIGTERM does, instead of ``interrupted`` and 130."""


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[threading.Event]:
    """In the block, SIGTERM (a service manager stopping a unit, ``timeout``, ``kill``) stops the command as Ctrl-C
    does: the yielded event is set and SIGINT is sent to the main thread, so that whatever runs stops where it would
    for a Ctrl-C (the sync commits the pages it has, a recompute rolls back) instead of dying without a word. Python
    runs the SIGTERM handler in the main thread, which the kernel hands a signal sent to the process while it does
    not block it: the signal cuts short what that thread waits on (the sync's event loop, a query's wait), and a
    DuckDB statement running there runs Python's handlers between its tasks; the recompute's watcher of wake-up
    bytes calls the handler at once (``as_ctrl_c``). Nothing is blocked: a blocked signal is inherited by every
    process started while it is (a library's subprocess, a server), which SIGTERM then could not stop. Outside the
    main thread, or when SIGINT is not Python's own (ignored, or handled by the caller), nothing changes."""
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield received
        return
    main = threading.get_ident()
    once = threading.Lock()

    def on_sigterm(signum: int, frame: Any) -> None:
        # (once: a second SIGTERM, as a second Ctrl-C, would cut the stop short; a lock taken without waiting, as
        # this may run in the main thread and in the recompute's watcher at once)
        if once.acquire(blocking=False):
            received.set()
            # (SIGINT, not a KeyboardInterrupt raised here: the handler SIGINT has now runs, the asyncio loop's of a
            # sync, the recompute's wake-up-byte watcher)
            signal.pthread_kill(main, signal.SIGINT)

    # (metrics.runner's watcher of wake-up bytes calls it at SIGTERM's, while the main thread waits on a statement)
    on_sigterm.as_ctrl_c = True  # type: ignore[attr-defined]
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def terminable() -> Iterator[threading.Event]:
    """:func:`sigterm_as_ctrl_c`, with the KeyboardInterrupt that a SIGTERM became raised as :class:`Terminated`
    (a query under way too: store.snapshot.interruptible). The event is set once SIGTERM came: a sync run in the
    block is given it (``run_once(terminated=)``), so that its stored error says SIGTERM, not Ctrl-C."""
    with sigterm_as_ctrl_c() as terminated:
        try:
            yield terminated
        except KeyboardInterrupt:
            if terminated.is_set():
                raise Terminated from None
            raise


def terminated_as_ctrl_c(f: F) -> F:
    """The command, under :func:`terminable`, ends on SIGTERM with ``terminated`` and exit code 143 as it ends on
    Ctrl-C with ``interrupted`` and 130, instead of being killed without a word: for the commands that change no
    stored data (the readers), whose Ctrl-C leaves nothing to say. (`demo`, which syncs, uses :func:`terminable`.)"""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with terminable():
            return f(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


# What a Ctrl-C of `sync` leaves (pipeline.run_once): the pages synced are committed, a recompute under way is rolled
# back, and the next run syncs from the stored cursors and recomputes everything seen since the last recompute.
SYNC_INTERRUPTED = ("what was synced is kept; the next sync resumes from the stored cursors and brings the metrics "
                    "up to date")


def get_settings(config_path: Path | None, **overrides: Any) -> Settings:
    setup_logging("WARNING")  # (what loading the settings warns of comes in the same format as every log line)
    settings = load_settings(config_path, overrides=overrides)
    setup_logging(settings.log_level)
    return settings


class OneLineUsageError(click.UsageError):
    """A usage error (an unknown command or option, a value refused) shown as every other error is: one line on
    stderr that says what to do, instead of click's usage, hint and message on four lines. Exit code 2, as click's."""

    def show(self, file: Any = None) -> None:
        where = f"{self.ctx.command_path} --help" if self.ctx is not None else "stripe-churn --help"
        # (a key typed where an argument was not expected is masked, as in every other message)
        click.echo(redact_secrets(f"error: {self.format_message().rstrip('.')} (see `{where}`)"), err=True)


class ContextualCommand(click.Command):
    """A command whose parse errors name it: click raises some without their context ("Option '--format' requires
    an argument"), which would send the user to the top group's help instead of the command's."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if exc.ctx is None:
                exc.ctx = ctx
            raise


class OneLineErrorsGroup(click.Group):
    """The top group: a usage error raised while its arguments or a command's are parsed becomes a
    :class:`OneLineUsageError` (click shows a ClickException through its ``show``)."""

    command_class = ContextualCommand

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # (a command unknown, or its options: parsed inside the group's invoke)
            raise _one_line(exc) from exc


def _one_line(exc: click.UsageError) -> click.UsageError:
    if isinstance(exc, (OneLineUsageError, click.exceptions.NoArgsIsHelpError)):  # (no command at all: the help)
        return exc
    return OneLineUsageError(exc.format_message(), exc.ctx)  # (exit code 2, as every usage error's)


@click.group(cls=OneLineErrorsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="stripe-churn")
def cli() -> None:
    """stripe-churn: keep a DuckDB copy of a Stripe account, label every MRR change, answer churn in SQL."""


@cli.command()
@click.option("--customers", type=COUNT, default=2000, show_default=True, help="Customers to simulate.")
@click.option("--months", type=COUNT, default=36, show_default=True, help="Months of history to simulate.")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed (same seed, same account).")
@click.option("--port", type=PORT, default=12111, show_default=True, help="Port on 127.0.0.1 (0 picks a free one).")
@click.option("--latency-ms", type=float, default=0.0, show_default=True, help="Added latency per request.")
@click.option("--rate-limit", type=float, default=0.0, show_default=True,
              help="Requests per second before 429 (0: no limit).")
@click.option("--endpoint-rate-limit", type=float, default=0.0, show_default=True,
              help="Requests per second to any one endpoint before 429, as Stripe's 25/s (0: no limit).")
@click.option("--fault-rate", type=float, default=0.0, show_default=True,
              help="Share of requests answered with a 5xx or a dropped connection.")
@click.option("--api-key", default=None,
              help="The one accepted key (default: STRIPE_API_KEY, else the config file's api_key, else "
                   "sk_test_sandbox).")
@click.option("--truth-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the ground truth movements as JSON Lines to this file.")
@config_option
@handle_errors
def sandbox(customers: int, months: int, seed: int, port: int, latency_ms: float, rate_limit: float,
            endpoint_rate_limit: float, fault_rate: float, api_key: str | None, truth_out: Path | None,
            config_path: Path | None) -> None:
    """Serve the built-in simulated Stripe account on 127.0.0.1 until SIGTERM/SIGINT.

    The first line printed is the base URL; point STRIPE_API_BASE at it.
    """
    from stripe_churn.sandbox.server import serve_forever
    from stripe_churn.settings import DEFAULT_CONFIG, SANDBOX_KEY

    setup_logging()
    check_sandbox_outputs(port, truth_out)  # (before the seconds of simulating, not after)
    # (the settings' key: the environment's, else the config file's; a file given is read, not passed over)
    configured = (get_settings(config_path).api_key.reveal()
                  if config_path is not None or DEFAULT_CONFIG.is_file() else "")
    key = api_key or os.environ.get("STRIPE_API_KEY") or configured or SANDBOX_KEY
    serve_forever(customers=customers, months=months, seed=seed, port=port, latency_ms=latency_ms,
                  rate_limit=rate_limit, endpoint_rate_limit=endpoint_rate_limit, fault_rate=fault_rate, api_key=key,
                  truth_out=truth_out)


def check_sandbox_outputs(port: int, truth_out: Path | None) -> None:
    """The port can be listened on and the ground truth's folder written, before the simulation runs (the same
    one-line errors as the server's, seconds sooner)."""
    import socket
    import tempfile

    if port:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise FatalError(f"sandbox could not listen on 127.0.0.1:{port}: {exc.strerror}; "
                             "pick another --port or 0 for a free one") from None
        finally:
            probe.close()
    if truth_out is not None:
        from stripe_churn.report.outputs import check_output

        check_output(truth_out, "--truth-out", "jsonl")  # (never a store, its files or a file it did not write)
        try:
            with tempfile.TemporaryFile(dir=truth_out.parent):
                pass
        except OSError as exc:
            raise FatalError(f"cannot write the ground truth to {truth_out}: {exc.strerror}; "
                             "pass a writable --truth-out path") from None


def emit(columns: list[str], rows: list[Any], fmt: str, title: str | None = None, *, as_stored: bool = False) -> None:
    """Print rows in the chosen format (CLI output, not logging); ``as_stored``: see ``render``."""
    from stripe_churn.report.tables import render

    click.echo(render(columns, rows, fmt, title, as_stored=as_stored))


# A document of several sections (`sync`'s summary, `status`) as one CSV: every field on a line of its own
LONG_FORM = ["section", "row", "key", "value"]


def long_form(doc: dict[str, Any], section: str) -> list[list[Any]]:
    """``doc``'s fields as ``section,row,key,value`` rows: its own fields first, in ``section`` (the command's
    name), then each group (a dict) under its key as row 1, and each table (a list of dicts) under its key with
    its rows numbered from 1. An empty group or table has no rows."""
    rows: list[list[Any]] = [[section, 1, k, v] for k, v in doc.items() if not isinstance(v, dict | list)]
    for name, value in doc.items():
        if isinstance(value, dict):
            rows += [[name, 1, k, v] for k, v in value.items()]
        elif isinstance(value, list):
            rows += [[name, i, k, v] for i, record in enumerate(value, 1) for k, v in record.items()]
    return rows


def emit_document(doc: dict[str, Any], fmt: str, section: str) -> None:
    """Print a document of several sections for a program: ``json`` as one JSON object, ``csv`` as one CSV in
    long form (see ``long_form``); the table format prints its own lines and tables instead."""
    from stripe_churn.report.tables import _json_default

    if fmt == "json":
        click.echo(json.dumps(doc, default=_json_default, indent=1))
    else:
        emit(LONG_FORM, long_form(doc, section), "csv")


def _summary_lines(summary: Any, fmt: str, as_of: Any = None) -> None:
    """What a run changed: objects per type, new movements, the current month's bridge line (with the words and
    the ``complete`` field of ``report``, given ``as_of``, the day the data runs up to)."""
    from stripe_churn.report.tables import bridge_rows, complete

    if fmt != "table":
        info = summary.as_dict()
        if summary.bridge_line and as_of is not None:
            info["bridge_line"] = {**summary.bridge_line, "complete": complete(summary.bridge_line, as_of)}
        emit_document(info, fmt, "sync")
        return
    click.echo(f"sync {summary.mode or ''} {summary.status or ''}: "
               f"{sum(summary.counts.values())} objects, {summary.new_movements} new movements".replace("  ", " "))
    if summary.recompute == "changed":
        click.echo(f"metrics derived again for {summary.recomputed_customers} changed customers")
    elif summary.recompute and summary.recompute_reason:
        click.echo(f"metrics recomputed in full: {summary.recompute_reason}")
    if any(summary.counts.values()):  # (the first line says "0 objects"; an empty table would only repeat it)
        emit(["object_type", "objects"], sorted(summary.counts.items()), fmt, title="Objects synced per type")
    if summary.bridge_line:
        cols, rows = bridge_rows([summary.bridge_line], fmt, as_of)
        emit(cols, rows, fmt, title="Current month")


def _data_as_of(db: Path) -> Any:
    """The day the data of the latest snapshot runs up to (what ``report`` judges periods complete by); None when
    the snapshot cannot be read (the sync itself succeeded: its summary then leaves the words out)."""
    from stripe_churn.metrics.queries import data_as_of
    from stripe_churn.store.snapshot import open_snapshot

    try:
        con = open_snapshot(db)
    except Exception:  # (a summary line is no reason to fail a sync that committed)
        logging.getLogger(__name__).debug("snapshot unreadable for the summary", exc_info=True)
        return None
    try:
        return data_as_of(con)
    finally:
        con.close()


@cli.command()
@click.option("--full", is_flag=True, help="Read every object again instead of the events since the last run.")
@click.option("--wait", type=float, default=0.0, show_default=True,
              help="Seconds to wait for a sync that holds the lock (the daemon's, another manual run).")
@format_option
@config_option
@handle_errors
def sync(full: bool, wait: float, fmt: str, config_path: Path | None) -> None:
    """Sync now (after a billing run, say), recompute the metrics and print what changed."""
    from stripe_churn.pipeline import run_once

    settings = get_settings(config_path)
    settings.require_api_key()
    with sigterm_as_ctrl_c() as terminated:
        try:
            summary = run_once(settings, full=full, wait=wait, progress=fmt == "table", terminated=terminated)
        except KeyboardInterrupt:
            raise (Terminated if terminated.is_set() else KeyboardInterrupt)(SYNC_INTERRUPTED) from None
    _summary_lines(summary, fmt, _data_as_of(settings.db) if summary.bridge_line else None)


def _config_given(args: list[str]) -> tuple[bool, Path | None]:
    """The ``--config`` among the daemon's arguments, which were refused before it was read: (True, the file or
    None when none is given), or (False, None) when it cannot be told (``--config`` without a value)."""
    for n, arg in enumerate(args):
        if arg == "--":
            break
        if arg.startswith("--config="):
            return True, Path(arg.partition("=")[2])
        if arg == "--config":
            return (True, Path(args[n + 1])) if n + 1 < len(args) else (False, None)
    return True, None


class DaemonCommand(ContextualCommand):
    """The daemon's options refused (a --webhook-port out of range, an unknown option) stop it at start as a bad
    setting does: written to its store's state file too, for `status` (see ``daemon.refused_at_start``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given = list(args)
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            from stripe_churn.daemon import refused_at_start

            known, config = _config_given(given)
            if known:
                refused_at_start(exc.format_message(), config=config)
            raise


@cli.command(cls=DaemonCommand)
@click.option("--no-sync-on-start", is_flag=True, help="Wait for the first scheduled tick instead of syncing now.")
@click.option("--webhook-port", type=PORT, default=None,
              help="Also accept Stripe webhooks on this port (needs STRIPE_WEBHOOK_SECRET). Default: the setting "
                   "webhook_port (unset: no webhook).")
@click.option("--webhook-host", default=None,
              help="Address for the webhook. Default: the setting webhook_host (127.0.0.1).")
@click.option("--interval-seconds", type=float, default=None, hidden=True)
@config_option
@handle_errors
def daemon(no_sync_on_start: bool, webhook_port: int | None, webhook_host: str | None,
           interval_seconds: float | None, config_path: Path | None) -> None:
    """Sync on the schedule (STRIPE_CHURN_SCHEDULE), one run at a time, until SIGTERM/SIGINT; SIGHUP reloads."""
    from stripe_churn.daemon import Daemon, refused_at_start

    # (what stops it at start goes into its state file, for `status`: a service manager restarts it meanwhile; a
    # schedule refused, the webhook's port and anything after are written by the daemon itself)
    try:
        settings = get_settings(config_path)
    except Exception as exc:
        refused_at_start(str(exc) if isinstance(exc, StripeChurnError) else f"unexpected {type(exc).__name__}: {exc}",
                         config=config_path)
        raise
    try:
        settings.require_api_key()
    except StripeChurnError as exc:
        refused_at_start(str(exc), settings)
        raise
    # (SIGHUP reads the same file again, and the environment as it was at start: a service manager's environment
    # file is read when the service starts, not at a reload)
    environment = dict(os.environ)
    d = Daemon(settings, sync_on_start=not no_sync_on_start, interval_seconds=interval_seconds,
               webhook_port=webhook_port, webhook_host=webhook_host,
               reload=lambda: load_settings(config_path, env=environment))
    sys.exit(d.run_forever())


@cli.command()
@format_option
@config_option
@handle_errors
def status(fmt: str, config_path: Path | None) -> None:
    """Last runs (failed ones too), recomputes, accounts, cursors, gaps in the events, lag, data-quality counts,
    exchange rates and the daemon's state."""
    from stripe_churn.pipeline import collect_status as collect

    settings = get_settings(config_path)
    info = collect(settings.db)
    if info.get("store_error"):  # (missing, damaged, not a store: one line and exit 2, as `sync` says it)
        raise StoreError(info["store_error"])
    if fmt != "table":
        emit_document(info, fmt, "status")
        return
    for key in ("database", "snapshot", "snapshot_age", "sync_running", "lag", "daemon"):
        click.echo(f"{key}: {info.get(key)}")
    if info.get("store_held"):
        click.echo(f"store held: {info['store_held']}")
    if info.get("daemon_error"):
        click.echo(f"daemon last error: {info['daemon_error']}")
    for name in ("runs", "recomputes", "accounts", "cursors", "event_gaps", "data_quality", "exchange_rates"):
        table = info.get(name) or []
        if table:
            cols = list(table[0].keys())
            emit(cols, [[r[c] for c in cols] for r in table], fmt, title=name.replace("_", " "))


def _parse_date(value: str | None, last_day: bool = False) -> Any:
    """A day given as YYYY-MM-DD, or a month as YYYY-MM: its first day, or with ``last_day`` (``--to``) its last,
    so that ``--to 2026-11`` keeps November's weeks."""
    import datetime as dt

    if value is None:
        return None
    try:
        day = dt.date.fromisoformat(value if len(value) > 7 else value + "-01")
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM or YYYY-MM-DD)") from None
    if last_day and len(value) <= 7:
        following = day.replace(year=day.year + day.month // 12, month=day.month % 12 + 1)
        day = following - dt.timedelta(days=1)
    return day


@cli.command()
@click.option("--from", "start", default=None,
              help="Keep the periods that start on or after this day (YYYY-MM-DD, or YYYY-MM: the month's first day).")
@click.option("--to", "end", default=None,
              help="Keep the periods that start on or before this day (YYYY-MM-DD, or YYYY-MM: the month's last day).")
@click.option("--period", type=click.Choice(["month", "week", "quarter", "year"]), default="month",
              show_default=True, help="Period length.")
@click.option("--segment", default=None, metavar="KIND[=VALUE]",
              help="Segment: family, plan, product, currency, country, size_band or metadata.<key>, "
                   "optionally =VALUE for one value.")
@click.option("--chart", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the MRR waterfall and net revenue churn trend to this file (.png, .svg or .pdf).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write one self-contained HTML page (chart and table).")
@format_option
@config_option
@handle_errors
@terminated_as_ctrl_c
def report(start: str | None, end: str | None, period: str, segment: str | None, chart: Path | None,
           html_out: Path | None, fmt: str, config_path: Path | None) -> None:
    """The MRR bridge and churn rates per period, with a plain net-negative-churn verdict per period."""
    from stripe_churn.report.build import build_report

    first, last = _parse_date(start), _parse_date(end, last_day=True)
    if first is not None and last is not None and first > last:
        raise click.BadParameter(f"--from {start} is after --to {end}: give the earlier period first")
    settings = get_settings(config_path)
    build_report(settings, start=first, end=last, period=period, segment=segment,
                 chart=chart, html=html_out, fmt=fmt, echo=click.echo)


@cli.command()
@click.argument("query")
@format_option
@config_option
@handle_errors
@terminated_as_ctrl_c
def sql(query: str, fmt: str, config_path: Path | None) -> None:
    """Run one read-only query (SELECT, WITH, FROM, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN) on the latest snapshot."""
    from stripe_churn.sqlconsole import run_query

    settings = get_settings(config_path)
    columns, rows = run_query(settings.db, query, settings.memory_limit)
    emit(columns, rows, fmt, as_stored=True)


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["parquet", "csv"]), default="parquet", show_default=True,
              help="File format.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory to write.")
@click.argument("names", nargs=-1)
@config_option
@handle_errors
@terminated_as_ctrl_c
def export(fmt: str, out: Path, names: tuple[str, ...], config_path: Path | None) -> None:
    """Write views or tables (default: the finance views) as one Parquet or CSV file each."""
    from stripe_churn.report.export import export as do_export

    settings = get_settings(config_path)
    for path in do_export(settings.db, out, names, fmt):
        click.echo(str(path))


@cli.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=Path("stripe-churn-demo"), show_default=True, help="Where the database, chart and page go.")
@click.option("--customers", type=DEMO_COUNT, default=800, show_default=True, help="Customers to simulate.")
@click.option("--months", type=DEMO_COUNT, default=24, show_default=True, help="Months of history to simulate.")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed.")
@format_option
@handle_errors
def demo(directory: Path, customers: int, months: int, seed: int, fmt: str) -> None:
    """Sandbox + sync + report in one go: no Stripe key, no setting."""
    # (SIGTERM ends it as Ctrl-C does, `terminated` and 143; its sync records "terminated (SIGTERM)")
    with terminable() as terminated:
        _demo(directory, customers, months, seed, fmt, terminated)


def _demo(directory: Path, customers: int, months: int, seed: int, fmt: str, terminated: threading.Event) -> None:
    import tempfile
    import time

    from stripe_churn.pipeline import run_once
    from stripe_churn.report.build import build_report
    from stripe_churn.report.outputs import output_error
    from stripe_churn.sandbox.server import start_in_thread
    from stripe_churn.sandbox.sim import SANDBOX_OPTIONS, Simulation, history_to_today
    from stripe_churn.settings import SANDBOX_KEY, Secret, Settings
    from stripe_churn.store.snapshot import snapshot_path

    setup_logging("WARNING")
    t0 = time.monotonic()
    try:  # (the folder is made and shown writable before the simulation runs)
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise output_error(exc, directory, "--dir") from exc
    click.echo(f"simulating {customers} customers over {months} months ...", err=True)
    # (the history ends at the start of today, so the report ends with the running month and its verdict is on
    # the month before)
    sim = Simulation(customers=customers, months=months, seed=seed, start=history_to_today(months),
                     **SANDBOX_OPTIONS)
    db = directory / "stripe-churn.duckdb"
    # (what the folder's store simulates, written by the demo that filled it: another simulation of the same seed
    # has the same account, so the store would keep what the new one lacks; the demo's own store starts over)
    made, wanted = directory / "demo.json", {"seed": seed, "customers": customers, "months": months}
    try:
        was = json.loads(made.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        was = None
    if db.exists() and isinstance(was, dict) and was != wanted:
        click.echo(f"{db} holds the demo of another simulation ({_described(was)}): starting over", err=True)
        for stale in (db, db.with_name(db.name + ".wal")):
            stale.unlink(missing_ok=True)
    if not db.exists():  # (the demo's store removed by hand: its old snapshot goes too, and the demo starts over)
        snapshot_path(db).unlink(missing_ok=True)
    with start_in_thread(sim, api_key=SANDBOX_KEY) as sb:
        settings = Settings(api_key=Secret(SANDBOX_KEY), api_base=sb.url, db=db, rate_limit=1000.0, source="demo")
        click.echo(f"sandbox at {sb.url}; syncing into {settings.db} ...", err=True)
        summary = run_once(settings, full=True, wait=30.0, progress=False, terminated=terminated)
    made.write_text(json.dumps(wanted) + "\n", encoding="utf-8")
    click.echo(f"synced {sum(summary.counts.values())} objects, {summary.new_movements} movements "
               f"in {time.monotonic() - t0:.1f} s", err=True)
    chart, page = directory / "mrr.png", directory / "report.html"
    build_report(settings, period="month", chart=chart, html=page, fmt=fmt, echo=click.echo, named_by="--dir")
    click.echo(f"chart: {chart}\npage: {page}\nquery it: STRIPE_CHURN_DB={settings.db} "
               "stripe-churn sql \"SELECT * FROM mrr_bridge\"", err=True)


def _described(params: dict[str, Any]) -> str:
    """A demo's simulation in words, from what its demo.json holds."""
    return ", ".join(f"--{k} {v}" for k, v in params.items())


def main() -> None:
    """Console entry point."""
    try:
        cli()
    except SystemExit as done:
        if done.code in (130, 143):
            # interrupted: a second Ctrl-C (or SIGTERM) while the interpreter shuts down would end the process by the
            # signal instead of this exit code (set here, not in handle_errors: the process ends now)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise


if __name__ == "__main__":
    main()
