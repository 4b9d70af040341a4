"""Sizes shared by every toy target, the decoder's config fields, and the text-only target
(a Qwen2ForCausalLM)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToySizes:
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vision_depth: int = 2
    vision_hidden_size: int = 64
    intermediate_multiple: int = 2
    max_positions: int = 4096

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def text_kwargs(vocab: dict[str, int], sizes: ToySizes) -> dict[str, Any]:
    """The decoder's config fields (a Qwen2/Qwen3 text config) for `vocab` and `sizes`."""
    return dict(
        vocab_size=len(vocab),  # every id decodes
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_multiple * sizes.hidden_size,
        num_hidden_layers=sizes.num_layers,
        num_attention_heads=sizes.num_heads,
        num_key_value_heads=sizes.num_kv_heads,
        max_position_embeddings=sizes.max_positions,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=vocab["<|endoftext|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )


def build_qwen2(vocab: dict[str, int], sizes: ToySizes) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM(Qwen2Config(**text_kwargs(vocab, sizes), rope_theta=10000.0))
