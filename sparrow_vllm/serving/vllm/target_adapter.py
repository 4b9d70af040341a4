"""The target's vLLM text model as the draft sees it (family rules: sparrow_vllm.families)."""

from __future__ import annotations

from typing import Any


def language_model_of(target_model: Any) -> Any:
    """The vLLM text model (embedding + LM head) inside a VLM, or the model itself."""
    from vllm.model_executor.models.interfaces import supports_multimodal

    return target_model.get_language_model() if supports_multimodal(target_model) else target_model
