"""Helpers for tests that start the CLI in a subprocess and interrupt it."""

from __future__ import annotations

import signal


def interruptible() -> None:
    """`preexec_fn` of a child the test will Ctrl-C: SIGINT's default action. A shell's
    background job (as CI may run the tests) ignores SIGINT, the ignore is inherited across
    exec, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
