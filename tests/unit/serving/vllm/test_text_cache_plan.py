"""Sizing the draft cache: the text-row budget, not max_model_len x max_num_seqs."""

from __future__ import annotations

import pytest
import torch

from sparrow_vllm.errors import SparrowConfigError
from sparrow_vllm.serving.serving_options import SparrowServingOptions
from sparrow_vllm.serving.vllm.draft_loading import plan_text_cache, row_bytes

GIB = 2**30
# Qwen2.5-VL-7B draft geometry: 1 layer, 4 KV heads, head dim 128, bf16 (2 KiB per row)
SEVEN_B = dict(num_layers=1, num_kv_heads=4, head_dim=128, dtype=torch.bfloat16)


def plan(max_model_len=128_000, max_num_seqs=256, window=None, free=120 * GIB, **options):
    return plan_text_cache(
        **SEVEN_B, window=window, num_speculative_tokens=4, max_model_len=max_model_len,
        max_num_seqs=max_num_seqs, options=SparrowServingOptions(**options), free_bytes=free,
    )


def test_default_budget_is_a_share_of_free_memory_whatever_the_context():
    for max_model_len in (32_768, 128_000):
        p = plan(max_model_len)
        assert p.nbytes <= 0.021 * 120 * GIB
        assert p.text_rows >= 256 * 2000  # thousands of text rows per sequence
        assert "default" in p.budget_source
    # the old layout: 2 slots per sequence x max_model_len rows
    assert 2 * 256 * 128_000 * row_bytes(**SEVEN_B) > 100 * GIB


def test_default_is_capped_by_what_every_sequence_needs():
    p = plan(max_model_len=2048, max_num_seqs=4)
    assert p.num_blocks == p.full_need_blocks
    assert "capped" in p.budget_source


def test_explicit_budget_is_honoured_and_checked():
    p = plan(text_row_budget=100_000)
    assert p.text_rows == 100_000 and p.budget_source == "text_row_budget=100000"
    with pytest.raises(SparrowConfigError, match="raise text_row_budget"):
        plan(text_row_budget=100)
    with pytest.raises(SparrowConfigError, match="lower text_row_budget"):
        plan(text_row_budget=100_000_000, free=8 * GIB)


def test_window_bounds_the_block_table_not_the_pool():
    p = plan(window=512)
    assert p.table_width * p.block_size < 600


def test_options_are_taken_out_of_the_speculative_config():
    rest, options = SparrowServingOptions.pop_from(
        {"method": "sparrow", "model": "d", "text-row-budget": 5000, "text_block_size": 32})
    assert rest == {"method": "sparrow", "model": "d"}
    assert options.text_row_budget == 5000 and options.text_block_size == 32
    with pytest.raises(SparrowConfigError, match="text_block_size"):
        SparrowServingOptions.pop_from({"text_block_size": 0})
