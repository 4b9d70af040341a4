"""Small configs for unit tests (no engine, no files unless a test asks)."""

from __future__ import annotations

from types import SimpleNamespace

from sparrow_vllm.config import DraftLayerConfig, SparrowConfig


def target_config(hidden: int = 32, vocab: int = 64, layers: int = 4, heads: int = 4, kv: int = 2):
    """An HF-like text config object."""
    return SimpleNamespace(
        hidden_size=hidden,
        vocab_size=vocab,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=2 * hidden,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        max_position_embeddings=512,
        architectures=["Qwen2ForCausalLM"],
    )


def sparrow_config(**overrides) -> SparrowConfig:
    fields = dict(
        target_hidden_size=32,
        target_vocab_size=64,
        target_num_layers=4,
        target_architecture="Qwen2ForCausalLM",
    )
    fields.update(overrides)
    return SparrowConfig(**fields)


def layer_config(**overrides) -> DraftLayerConfig:
    fields = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=64,
    )
    fields.update(overrides)
    return DraftLayerConfig(**fields)
