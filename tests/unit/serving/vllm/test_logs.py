"""The plugin's log lines go through vLLM's `vllm` logger (its handlers, format, level)."""

import logging

from sparrow_vllm.serving.vllm import logs


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_records_reach_vllm_handlers_at_vllm_level():
    vllm_logger = logging.getLogger("vllm")
    capture = _Capture()
    old_level = vllm_logger.level
    vllm_logger.addHandler(capture)
    try:
        vllm_logger.setLevel(logging.INFO)
        logs.route_to_vllm()
        logs.route_to_vllm()  # idempotent: one forwarding handler
        ours = logging.getLogger("sparrow_vllm")
        assert sum(isinstance(h, logs._ToVllmLogger) for h in ours.handlers) == 1
        child = logging.getLogger("sparrow_vllm.serving.vllm.draft_loading")
        child.info("Sparrow draft cache: %d slots", 8)
        child.debug("not at INFO")
        assert capture.messages == ["Sparrow draft cache: 8 slots"]
        vllm_logger.setLevel(logging.DEBUG)  # VLLM_LOGGING_LEVEL=DEBUG
        child.debug("now shown")
        assert capture.messages[-1] == "now shown"
    finally:
        vllm_logger.removeHandler(capture)
        vllm_logger.setLevel(old_level)
