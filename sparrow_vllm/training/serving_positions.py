"""Train with the M-RoPE positions vLLM serves with.

What: transformers 5.x's Qwen2-VL and Qwen2.5-VL `get_rope_index` start the text after an image or
video at `start + max(grid_h, grid_w)`, ignoring the video's time extent; vLLM 0.32
(`Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions`, like the original Qwen
code) starts it after the largest position of the block, time included. A model trained
with one rule and served with the other sees every text token after a video shifted; the
toy-world target answered nothing in vLLM until this was fixed.
How: `use_serving_positions(module, model)` wraps a model class's `get_rope_index` so that
each block of text starts at the previous block's largest position + 1, as vLLM does.
Idempotent; each Qwen VL family adapter names its class (`TargetFamily.use_serving_positions`),
and training, feature extraction and the toy world's target call it through the family.
Remove when transformers and vLLM agree on the rule.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)
_PATCHED: set[type] = set()


def _shift_like_vllm(
    # [3, n] positions of one sequence from transformers' rule
    positions: torch.Tensor,
    # [n] 0 for text, > 0 for image / video tokens
    token_types: torch.Tensor,
) -> torch.Tensor:  # [3, n]
    out = positions.clone()
    shift = 0
    groups = itertools.groupby(enumerate(token_types.tolist()), key=lambda x: x[1] != 0)
    spans = [(visual, g[0][0], g[-1][0] + 1) for visual, g in ((v, list(g)) for v, g in groups)]
    for visual, start, end in spans:
        out[:, start:end] = positions[:, start:end] + shift
        if visual and end < positions.shape[1]:
            shift = int(out[:, start:end].max()) + 1 - int(positions[0, end])
    return out


def _wrap(original: Any) -> Any:
    def get_rope_index(self: Any, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor | None = None,
                       *args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        positions, deltas = original(self, input_ids, mm_token_type_ids, *args, attention_mask=attention_mask, **kwargs)
        if mm_token_type_ids is None or not bool((mm_token_type_ids != 0).any()):
            return positions, deltas
        positions = positions.clone()
        new_deltas = []
        for b in range(input_ids.shape[0]):
            keep = attention_mask[b].bool() if attention_mask is not None else torch.ones_like(input_ids[b], dtype=torch.bool)
            fixed = _shift_like_vllm(positions[:, b, keep], mm_token_type_ids[b][keep])
            positions[:, b, keep] = fixed
            new_deltas.append(int(fixed.max()) + 1 - int(keep.sum()))
        return positions, torch.tensor(new_deltas, device=deltas.device).reshape(deltas.shape)

    return get_rope_index


def use_serving_positions(module: str, model: str) -> None:
    """Make transformers' M-RoPE positions of `module.model` (a Qwen VL model class whose
    `get_rope_index` has the signature above) follow vLLM's rule (see the module doc)."""
    import importlib

    cls = getattr(importlib.import_module(module), model)
    if cls in _PATCHED:
        return
    cls.get_rope_index = _wrap(cls.get_rope_index)
    _PATCHED.add(cls)
    logger.info("transformers %s positions now follow vLLM's rule (text after a video starts "
                "after its last position)", model)
