"""Fixtures the vLLM-boundary unit tests share."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module", params=["EngineArgs", "AsyncEngineArgs"])
def engine_args_cls(request):
    """EngineArgs (LLM, offline) and AsyncEngineArgs (`vllm serve`'s parser), after the
    plugin registered as `vllm serve` registers it before it builds its parser."""
    from vllm.engine import arg_utils
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    return getattr(arg_utils, request.param)
