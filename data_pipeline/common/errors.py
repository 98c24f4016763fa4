"""The one error type a user sees: a one-line reason, exit status 2, no traceback."""

from __future__ import annotations


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2, no traceback.

    Subclasses mark where it came from (``ShardFormatError``, ``DataError``, ``ConfigError``,
    ``RunDirError``, ...); the command-line front ends catch this base class only.
    """
