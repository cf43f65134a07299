"""The errors a user can act on.

Every error raised on bad user input derives from :class:`YoloPruneError`; the CLI prints its
message as one line on stderr and exits with status 2. Messages say where (file and line), what
was found, what was expected and, where there is one, the likely fix.
"""

from __future__ import annotations

from pathlib import Path


class YoloPruneError(Exception):
    """Base class of every error caused by user input (files, options, arguments)."""


def _where(path: str | Path | None, line: int | None) -> str:
    if path is None:
        return ""
    name = Path(path).name if path else "<text>"
    return f"{name}:{line}: " if line else f"{name}: "


class CfgError(YoloPruneError):
    """A Darknet .cfg file that cannot be parsed or describes an impossible network."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None):
        self.path = path
        self.line = line
        self.detail = message
        super().__init__(_where(path if path is not None else "<cfg>", line) + message)


class WeightsError(YoloPruneError):
    """A Darknet .weights file (or a checkpoint) that does not fit the network."""

    def __init__(self, message: str, *, path: str | Path | None = None):
        self.path = path
        super().__init__(_where(path, None) + message)


class DataError(YoloPruneError):
    """A dataset, image, label or video file that cannot be used."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None):
        self.path = path
        self.line = line
        super().__init__(_where(path, line) + message)


class ConfigError(YoloPruneError):
    """An option, recipe or argument with a value the tool cannot use."""


class PruneError(YoloPruneError):
    """A pruning request that cannot be carried out (ratio, target pattern, protected layer)."""


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return ``path`` as a Path, raising a one-line error if it is not an existing file."""
    p = Path(path)
    if not p.exists():
        raise YoloPruneError(f"{p}: no such {what}; check the path")
    if not p.is_file():
        raise YoloPruneError(f"{p}: is a directory, expected a {what}")
    return p
