"""What the draft needs from a target model, per family, in one place."""

from __future__ import annotations

from typing import Any

# Config attributes that hold an image/video placeholder token id, across VLM families
# (Qwen2-VL / Qwen2.5-VL: *_token_id; LLaVA-OneVision: *_token_index).
_PLACEHOLDER_ATTRS = ("image_token_id", "video_token_id", "image_token_index", "video_token_index")


def visual_placeholder_ids(target_config: Any) -> list[int]:
    """Token ids whose positions carry visual embeddings (empty for text targets)."""
    ids = {getattr(target_config, name, None) for name in _PLACEHOLDER_ATTRS}
    return sorted(i for i in ids if isinstance(i, int) and i >= 0)


def language_model_of(target_model: Any) -> Any:
    """The vLLM text model (embedding + LM head) inside a VLM, or the model itself."""
    from vllm.model_executor.models.interfaces import supports_multimodal

    return target_model.get_language_model() if supports_multimodal(target_model) else target_model
