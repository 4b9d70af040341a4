"""PyTorch reference of text-window attention over the draft's slot-indexed KV pool.

Each request b has `prefix_lens[b]` text rows already in the pool, in slot
`slot_ids[b]`, stored at ring index `a % C` for absolute row a (C = pool capacity). This
step brings `n_b` new rows (queries and their own keys/values) that follow the prefix
causally. New row j sits at combined index p = prefix_lens[b] + j and sees combined indices
in [max(0, p - W + 1), p] with a window W, or [0, p] without one. Scores are accumulated in
fp32 whatever the input dtype.
"""

from __future__ import annotations

import torch


def text_window_attention_reference(
    # [T, Hq, D] queries of the new rows of all requests
    q: torch.Tensor,
    # [T, Hkv, D] keys of the new rows
    k_new: torch.Tensor,
    # [T, Hkv, D] values of the new rows
    v_new: torch.Tensor,
    # [B + 1] int, start of each request's new rows in q / k_new / v_new
    cu_seqlens: torch.Tensor,
    # [S, C, Hkv, D] key pool, one slot per request
    k_pool: torch.Tensor,
    # [S, C, Hkv, D] value pool
    v_pool: torch.Tensor,
    # [B] int, pool slot of each request
    slot_ids: torch.Tensor,
    # [B] int, rows of each request already in the pool (absolute count)
    prefix_lens: torch.Tensor,
    window: int | None,
    scale: float,
) -> torch.Tensor:  # [T, Hq, D], dtype of q
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    group = num_q_heads // k_new.shape[1]
    capacity = k_pool.shape[1]
    out = torch.empty_like(q)
    cu = cu_seqlens.tolist()
    slots = slot_ids.tolist()
    prefixes = prefix_lens.tolist()
    for b, (start, end) in enumerate(zip(cu[:-1], cu[1:], strict=True)):
        n, prefix = end - start, prefixes[b]
        if n == 0:
            continue
        first_needed = max(0, prefix - (window - 1)) if window is not None else 0
        first_needed = max(first_needed, prefix - capacity)
        ring = torch.arange(first_needed, prefix, device=q.device) % capacity
        keys = torch.cat((k_pool[slots[b], ring], k_new[start:end]), dim=0).float()
        values = torch.cat((v_pool[slots[b], ring], v_new[start:end]), dim=0).float()
        key_pos = torch.arange(first_needed, prefix + n, device=q.device)
        query_pos = torch.arange(prefix, prefix + n, device=q.device)
        visible = key_pos[None, :] <= query_pos[:, None]
        if window is not None:
            visible &= key_pos[None, :] > query_pos[:, None] - window
        keys = keys.repeat_interleave(group, dim=1)
        values = values.repeat_interleave(group, dim=1)
        # [heads, n, keys]
        scores = torch.einsum("nhd,khd->hnk", q[start:end].float(), keys) * scale
        scores = scores.masked_fill(~visible[None], float("-inf"))
        probs = scores.softmax(dim=-1)
        out[start:end] = torch.einsum("hnk,khd->nhd", probs, values).to(q.dtype)
    return out.view(-1, num_q_heads, head_dim)
