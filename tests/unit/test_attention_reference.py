"""text_window_attention (reference backend) against dense masked attention."""

import pytest
import torch

from sparrow_vllm.serving.attention import select_backend, text_window_attention


def _dense(q, k, v, window):
    """Dense causal attention over one request's full sequence; q rows are the last ones."""
    n, total = q.shape[0], k.shape[0]
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    qpos = torch.arange(total - n, total)[:, None]
    kpos = torch.arange(total)[None, :]
    mask = kpos <= qpos
    if window is not None:
        mask &= kpos > qpos - window
    scores = torch.einsum("nhd,khd->hnk", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("hnk,khd->nhd", scores.masked_fill(~mask, float("-inf")).softmax(-1), v)


@pytest.mark.parametrize("window", [None, 1, 3, 50])
@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (4, 1), (2, 2)])
def test_matches_dense_attention(window, heads, kv_heads):
    torch.manual_seed(0)
    d, capacity = 8, 64
    prefixes, news = [0, 1, 5, 9], [3, 1, 2, 4]
    slots = [2, 0, 3, 1]
    k_pool = torch.randn(4, capacity, kv_heads, d)
    v_pool = torch.randn(4, capacity, kv_heads, d)
    total = sum(news)
    q = torch.randn(total, heads, d)
    k_new, v_new = torch.randn(total, kv_heads, d), torch.randn(total, kv_heads, d)
    cu = torch.tensor([0, *torch.tensor(news).cumsum(0).tolist()])
    out = text_window_attention(
        q, k_new, v_new, cu, k_pool, v_pool, torch.tensor(slots), torch.tensor(prefixes), window
    )
    for b in range(4):
        s, e = cu[b].item(), cu[b + 1].item()
        keys = torch.cat((k_pool[slots[b], : prefixes[b]], k_new[s:e]))
        values = torch.cat((v_pool[slots[b], : prefixes[b]], v_new[s:e]))
        torch.testing.assert_close(out[s:e], _dense(q[s:e], keys, values, window))


def test_ring_buffer_wraps():
    torch.manual_seed(0)
    capacity, window, d = 4, 3, 8
    rows = torch.randn(10, 1, d)  # absolute rows 0..9 of one request
    k_pool = torch.zeros(1, capacity, 1, d)
    for a in range(7):
        k_pool[0, a % capacity] = rows[a]
    q = torch.randn(3, 2, d)
    out = text_window_attention(
        q, rows[7:10], rows[7:10], torch.tensor([0, 3]), k_pool, k_pool,
        torch.tensor([0]), torch.tensor([7]), window,
    )
    torch.testing.assert_close(out, _dense(q, rows[:10], rows[:10], window))


def test_bad_inputs_name_the_fix():
    q, k = torch.randn(2, 4, 8), torch.randn(2, 3, 8)
    pool = torch.zeros(1, 4, 3, 8)
    args = (torch.tensor([0, 2]), pool, pool, torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        text_window_attention(q, k, k, *args)
    k2 = torch.randn(2, 2, 8, dtype=torch.float64)
    pool2 = torch.zeros(1, 4, 2, 8)
    with pytest.raises(ValueError, match="one dtype"):
        text_window_attention(q, k2, k2, torch.tensor([0, 2]), pool2, pool2, torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="cu_seqlens must be"):
        text_window_attention(q, q, q, torch.tensor([0]), torch.zeros(1, 4, 4, 8), torch.zeros(1, 4, 4, 8), torch.tensor([0]), torch.tensor([0]))


def test_backend_can_be_forced_and_unknown_is_rejected(monkeypatch):
    assert select_backend(torch.device("cpu"), "reference") == "reference"
    monkeypatch.setenv("SPARROW_ATTENTION_BACKEND", "nope")
    with pytest.raises(ValueError, match="SPARROW_ATTENTION_BACKEND"):
        select_backend(torch.device("cpu"))


def test_non_contiguous_head_dim_and_wrong_device_name_the_fix():
    q = torch.randn(2, 4, 16)[:, :, ::2]  # head_dim stride 2
    k = torch.randn(2, 2, 8)
    pool = torch.zeros(1, 4, 2, 8)
    args = (torch.tensor([0, 2]), pool, pool, torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="contiguous"):
        text_window_attention(q, k, k, *args)
    with pytest.raises(ValueError, match="int32 or int64"):
        text_window_attention(q.contiguous(), k, k, torch.tensor([0.0, 2.0]), pool, pool, torch.tensor([0]), torch.tensor([0]))


def test_triton_on_cpu_without_interpreter_names_the_fix(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        select_backend(torch.device("cpu"), "triton")
