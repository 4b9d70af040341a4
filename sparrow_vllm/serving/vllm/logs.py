"""The plugin's log lines in vLLM's own log.

vLLM configures only its `vllm` logger (handler, format, level), and does so at different
moments in different processes (CLI parsing, engine start-up, worker start-up), possibly
after the plugin is registered. A `sparrow_vllm.*` logger would fall through to Python's
last-resort handler, which drops INFO. `route_to_vllm()` gives the `sparrow_vllm` logger one
handler that hands each record to the `vllm` logger at emit time, so lines such as
"Sparrow draft cache: ..." appear in `vllm serve`'s output, with vLLM's format and level
(VLLM_LOGGING_LEVEL), in every process the plugin is registered in, whenever vLLM set its
logging up.
"""

from __future__ import annotations

import logging

PACKAGE_LOGGER = "sparrow_vllm"


class _ToVllmLogger(logging.Handler):
    """Forwards records to the `vllm` logger's handlers, at its effective level."""

    def emit(self, record: logging.LogRecord) -> None:
        vllm_logger = logging.getLogger("vllm")
        if record.levelno >= vllm_logger.getEffectiveLevel():
            vllm_logger.handle(record)


def route_to_vllm() -> None:
    """Idempotent: send the `sparrow_vllm` logger's records through vLLM's logger."""
    ours = logging.getLogger(PACKAGE_LOGGER)
    if any(isinstance(h, _ToVllmLogger) for h in ours.handlers):
        return
    ours.addHandler(_ToVllmLogger())
    ours.setLevel(logging.DEBUG)  # the `vllm` logger's level decides
    ours.propagate = False
