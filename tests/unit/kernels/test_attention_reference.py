"""text_window_attention (reference backend) against dense masked attention, through the
paged cache's block table."""

import pytest
import torch

from sparrow_vllm.serving.attention import select_backend, text_window_attention
from tests.unit.helpers import paged_pools


def _dense(q, k, v, window, first=0):
    """Dense causal attention over one request's full sequence; q rows are the last ones;
    keys before `first` are not visible (dropped from the cache)."""
    n, total = q.shape[0], k.shape[0]
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    qpos = torch.arange(total - n, total)[:, None]
    kpos = torch.arange(total)[None, :]
    mask = (kpos <= qpos) & ((kpos >= first) | (kpos >= total - n))
    if window is not None:
        mask &= kpos > qpos - window
    scores = torch.einsum("nhd,khd->hnk", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("hnk,khd->nhd", scores.masked_fill(~mask, float("-inf")).softmax(-1), v)


def _case(prefixes, news, heads, kv_heads, block_size, firsts=None, table_width=None, d=8):
    torch.manual_seed(0)
    keys = [torch.randn(p + n, kv_heads, d) for p, n in zip(prefixes, news, strict=True)]
    values = [torch.randn(p + n, kv_heads, d) for p, n in zip(prefixes, news, strict=True)]
    firsts = firsts or [0] * len(prefixes)
    k_pool, table = paged_pools([k[:p] for k, p in zip(keys, prefixes, strict=True)],
                                block_size, firsts, table_width, seed=1)
    v_pool, table_v = paged_pools([v[:p] for v, p in zip(values, prefixes, strict=True)],
                                  block_size, firsts, table_width, seed=1)
    assert torch.equal(table, table_v)
    q = torch.randn(sum(news), heads, d)
    k_new = torch.cat([k[p:] for k, p in zip(keys, prefixes, strict=True)])
    v_new = torch.cat([v[p:] for v, p in zip(values, prefixes, strict=True)])
    cu = torch.tensor([0, *torch.tensor(news).cumsum(0).tolist()])
    return q, k_new, v_new, cu, k_pool, v_pool, table, keys, values, firsts


@pytest.mark.parametrize("window", [None, 1, 3, 50])
@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (4, 1), (2, 2)])
@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_matches_dense_attention(window, heads, kv_heads, block_size):
    prefixes, news = [0, 5, 9, 40], [3, 1, 2, 4]
    q, k_new, v_new, cu, k_pool, v_pool, table, keys, values, _ = _case(
        prefixes, news, heads, kv_heads, block_size)
    slots = torch.arange(4)
    out = text_window_attention(q, k_new, v_new, cu, k_pool, v_pool, table, slots,
                                torch.tensor(prefixes), torch.zeros(4, dtype=torch.int64), window)
    for b in range(4):
        s, e = cu[b].item(), cu[b + 1].item()
        torch.testing.assert_close(out[s:e], _dense(q[s:e], keys[b], values[b], window))


@pytest.mark.parametrize("window", [None, 6])
def test_rows_before_first_row_are_not_seen_and_the_table_wraps(window):
    """Rows dropped from the cache (below first_rows) are invisible; a request whose rows
    run past M blocks reuses table columns (a // S) % M."""
    prefixes, news, firsts = [30, 7], [2, 3], [20, 4]
    q, k_new, v_new, cu, k_pool, v_pool, table, keys, values, _ = _case(
        prefixes, news, 2, 1, 4, firsts, table_width=4)
    out = text_window_attention(q, k_new, v_new, cu, k_pool, v_pool, table, torch.arange(2),
                                torch.tensor(prefixes), torch.tensor(firsts), window)
    for b in range(2):
        s, e = cu[b].item(), cu[b + 1].item()
        torch.testing.assert_close(out[s:e], _dense(q[s:e], keys[b], values[b], window, firsts[b]))


def _args(pool, table=None):
    table = torch.zeros(1, 2, dtype=torch.int32) if table is None else table
    return (torch.tensor([0, 2]), pool, pool, table, torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))


def test_bad_inputs_name_the_fix():
    q, k = torch.randn(2, 4, 8), torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        text_window_attention(q, k, k, *_args(torch.zeros(1, 4, 3, 8)))
    k2 = torch.randn(2, 2, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="one dtype"):
        text_window_attention(q, k2, k2, *_args(torch.zeros(1, 4, 2, 8)))
    pool = torch.zeros(1, 4, 4, 8)
    with pytest.raises(ValueError, match="cu_seqlens must be"):
        text_window_attention(q, q, q, torch.tensor([0]), *_args(pool)[1:])
    with pytest.raises(ValueError, match="block_table must be"):
        text_window_attention(q, q, q, *_args(pool, torch.zeros(1, 4, dtype=torch.int32)[:, ::2]))


def test_backend_can_be_forced_and_unknown_is_rejected(monkeypatch):
    assert select_backend(torch.device("cpu"), "reference") == "reference"
    monkeypatch.setenv("SPARROW_ATTENTION_BACKEND", "nope")
    with pytest.raises(ValueError, match="SPARROW_ATTENTION_BACKEND"):
        select_backend(torch.device("cpu"))


def test_non_contiguous_head_dim_and_wrong_device_name_the_fix():
    q = torch.randn(2, 4, 16)[:, :, ::2]  # head_dim stride 2
    k = torch.randn(2, 2, 8)
    pool = torch.zeros(1, 4, 2, 8)
    with pytest.raises(ValueError, match="contiguous"):
        text_window_attention(q, k, k, *_args(pool))
    bad = list(_args(pool))
    bad[0] = torch.tensor([0.0, 2.0])
    with pytest.raises(ValueError, match="int32 or int64"):
        text_window_attention(q.contiguous(), k, k, *bad)


def test_triton_on_cpu_without_interpreter_names_the_fix(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        select_backend(torch.device("cpu"), "triton")
