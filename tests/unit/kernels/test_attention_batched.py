"""The batched reference (what the "reference" backend runs: one padded gather for all
requests, indices and mask planned once per forward) against the plain per-request loop
of kernels/reference.py, the definition, over a grid of shapes."""

import itertools

import pytest
import torch
from sparrow_vllm.kernels.reference import (
    plan_text_window,
    text_window_attention_batched,
    text_window_attention_reference,
)

from sparrow_vllm.serving.attention import plan_attention, text_window_attention


def _case(batch, block_size, heads, kv_heads, seed, dtype=torch.float32, d=8, width=6, num_blocks=40):
    """Random pools and table; per request a prefix (0 included), a first row (sometimes
    past the prefix: rows given up for lack of blocks) and 0..5 new rows."""
    g = torch.Generator().manual_seed(seed)
    prefixes = torch.randint(0, width * block_size + 7, (batch,), generator=g)
    prefixes[0] = 0 if batch > 1 else prefixes[0]
    firsts = torch.where(torch.rand(batch, generator=g) < 0.4,
                         (torch.rand(batch, generator=g) * (prefixes + 3)).long(), 0)
    news = torch.randint(0, 6, (batch,), generator=g)
    news[-1] = max(int(news[-1]), 1)
    cu = torch.cat((torch.zeros(1, dtype=torch.int64), news.cumsum(0)))
    rows = int(cu[-1])
    slots = torch.randperm(batch + 2, generator=g)[:batch]
    table = torch.randint(0, num_blocks, (batch + 2, width), generator=g).to(torch.int32)
    k_pool = torch.randn(num_blocks, block_size, kv_heads, d, generator=g).to(dtype)
    v_pool = torch.randn(num_blocks, block_size, kv_heads, d, generator=g).to(dtype)
    q = torch.randn(rows, heads, d, generator=g).to(dtype)
    k_new = torch.randn(rows, kv_heads, d, generator=g).to(dtype)
    v_new = torch.randn(rows, kv_heads, d, generator=g).to(dtype)
    return q, k_new, v_new, cu, k_pool, v_pool, table, slots, prefixes, firsts


@pytest.mark.parametrize("batch", [1, 2, 5])
@pytest.mark.parametrize("window", [None, 1, 3, 17])
@pytest.mark.parametrize("block_size", [1, 4, 16])
@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (4, 1), (2, 2)])
def test_batched_matches_the_loop(batch, window, block_size, heads, kv_heads):
    for seed in range(4):
        q, k_new, v_new, cu, k_pool, v_pool, table, slots, prefixes, firsts = _case(
            batch, block_size, heads, kv_heads, seed)
        expected = text_window_attention_reference(q, k_new, v_new, cu, k_pool, v_pool, table, slots,
                                                   prefixes, firsts, window, 0.35)
        plan = plan_text_window(cu, table, slots, prefixes, firsts, window, block_size, q.shape[0])
        got = text_window_attention_batched(q, k_new, v_new, k_pool, v_pool, plan, 0.35)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_batched_matches_the_loop_in_half_precision(dtype):
    for batch, window, seed in itertools.product([1, 4], [None, 5], range(3)):
        q, k_new, v_new, cu, k_pool, v_pool, table, slots, prefixes, firsts = _case(
            batch, 4, 4, 2, seed, dtype)
        expected = text_window_attention_reference(q, k_new, v_new, cu, k_pool, v_pool, table, slots,
                                                   prefixes, firsts, window, 0.35)
        plan = plan_text_window(cu, table, slots, prefixes, firsts, window, 4, q.shape[0])
        got = text_window_attention_batched(q, k_new, v_new, k_pool, v_pool, plan, 0.35)
        assert got.dtype == dtype
        torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)


def test_one_plan_serves_every_layer_and_rows_of_no_request_are_empty():
    """A plan depends on the indices only: the public op with a plan built once equals the
    op building its own, layer after layer (other q / k / v / pools); zero new rows give [0]."""
    q, k_new, v_new, cu, k_pool, v_pool, table, slots, prefixes, firsts = _case(3, 4, 4, 2, 0)
    plan = plan_attention(q.device, cu, table, slots, prefixes, firsts, 3, 4, q.shape[0])
    assert plan is not None
    for layer in range(3):
        g = torch.Generator().manual_seed(layer)
        tensors = [torch.randn(t.shape, generator=g) for t in (q, k_new, v_new, k_pool, v_pool)]
        args = (*tensors[:3], cu, *tensors[3:], table, slots, prefixes, firsts)
        torch.testing.assert_close(text_window_attention(*args, window=3, plan=plan),
                                   text_window_attention(*args, window=3), rtol=0, atol=0)
    empty = torch.zeros(0, 4, 8)
    zero = torch.zeros(0, 2, 8)
    out = text_window_attention(empty, zero, zero, torch.zeros(3, dtype=torch.int64), k_pool, v_pool,
                                table, slots[:2], prefixes[:2], firsts[:2])
    assert out.shape == (0, 4, 8)
