"""Every error sparrow-vllm raises on purpose, under one base class.

Each message names the fix. The CLI prints a `SparrowError`'s message without a traceback;
inside vLLM the same errors stop start-up with that message. (A dataset row that cannot be
used, `training.skips.SampleError`, is counted and skipped rather than shown; it shares the
base class and stays beside its skip reasons.)
"""

from __future__ import annotations


class SparrowError(Exception):
    """Base of sparrow-vllm's own errors."""


class UsageError(SparrowError, ValueError):
    """A mistake in what the user asked for (an option, a path, a mismatched input); the
    CLI prints its message, which names the fix, without a traceback."""


class MissingInput(UsageError, FileNotFoundError):
    """A path the user gave does not exist (still a FileNotFoundError for callers)."""


class RunStopped(SparrowError, RuntimeError):
    """A long run that stopped part-way (a worker died, a node went away); its message says
    how to resume. The CLI prints it without a traceback."""


class SparrowConfigError(SparrowError, ValueError):
    """A draft checkpoint or its configuration does not fit; the message names the fix."""


class UnknownRunnerError(SparrowConfigError):
    """vLLM reached the Sparrow draft through a runner or code path without an adapter."""


class UnsupportedVLLMVersion(SparrowError, RuntimeError):
    """The installed vLLM is not a version sparrow-vllm supports."""


class EngineJobError(SparrowError, RuntimeError):
    """A vLLM engine run in its own process (sparrow_vllm/engine_job.py) failed: it exited
    non-zero, timed out, or wrote no result; the message names the job and quotes its log."""
