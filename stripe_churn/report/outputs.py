"""Files the user names (``report --chart`` and ``--html``, ``export --out``, ``demo --dir``): their folders made
when missing, the chart's format read from its name, and a failure to write one told as that path and option."""

from __future__ import annotations

import errno
from pathlib import Path

from stripe_churn.errors import ConfigError, FatalError

# The chart formats matplotlib writes without another library, by file name ending.
CHART_FORMATS = ("png", "svg", "pdf")

_NO_ROOM_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def chart_format(path: Path, option: str = "--chart") -> str:
    """The format a chart file's name asks for (png without an ending); a one-line ConfigError for another."""
    ending = path.suffix.lower().lstrip(".")
    if not ending:
        return "png"
    if ending not in CHART_FORMATS:
        raise ConfigError(f"cannot draw the chart as .{ending} ({path}): give {option} a file name ending in "
                          + ", ".join(f".{f}" for f in CHART_FORMATS[:-1]) + f" or .{CHART_FORMATS[-1]}")
    return ending


def make_parent(path: Path) -> None:
    """Create the folders ``path`` goes in when they are missing."""
    path.parent.mkdir(parents=True, exist_ok=True)


def output_error(exc: OSError, path: Path, option: str) -> FatalError:
    """The one-line error for an output the user named (``path``, given by ``option``) that could not be written:
    it names that path and option (the database's own failures name the setting db)."""
    if exc.errno in _NO_ROOM_ERRNOS:
        why, fix = exc.strerror or "no room", "free space there"
    elif isinstance(exc, FileExistsError) or exc.errno == errno.ENOTDIR:
        why, fix = "a file stands where a directory is needed", "move that file"
    else:
        why, fix = exc.strerror or str(exc), "make that place writable"
    return FatalError(f"cannot write {path} ({why}): {fix}, or give {option} another path")
