"""Errors the CLI shows as a message, without a traceback."""

from __future__ import annotations


class UsageError(ValueError):
    """A mistake in what the user asked for (an option, a path, a mismatched input); the
    CLI prints its message, which names the fix, without a traceback."""


class MissingInput(UsageError, FileNotFoundError):
    """A path the user gave does not exist (still a FileNotFoundError for callers)."""


class RunStopped(RuntimeError):
    """A long run that stopped part-way (a worker died, a node went away); its message says
    how to resume. The CLI prints it without a traceback."""
