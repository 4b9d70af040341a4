"""PyTorch reference of text-window attention over the draft's paged text-row cache.

Each request b has `prefix_lens[b]` committed text rows (an absolute count). Absolute row
a of the request lives in physical block `block_table[slot_ids[b], (a // S) % M]` at
offset `a % S` (S = rows per block, M = block-table width); rows below `first_rows[b]`
are no longer cached (dropped by the window or reclaimed when blocks ran out). This step
brings `n_b` new rows (queries and their own keys/values) that follow the prefix causally.
New row j sits at combined index p = prefix_lens[b] + j and sees combined indices in
[max(first_rows[b], p - W + 1), p] with a window W, or [first_rows[b], p] without one.
Scores are accumulated in fp32 whatever the input dtype.
"""

from __future__ import annotations

import torch


def paged_rows(
    # [M] physical block of each table column of one request
    table_row: torch.Tensor,
    # [n] absolute row indices
    rows: torch.Tensor,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # ([n] physical block, [n] offset)
    """Where absolute rows of one request live in the block pool."""
    return table_row[(rows // block_size) % table_row.shape[0]], rows % block_size


def text_window_attention_reference(
    # [T, Hq, D] queries of the new rows of all requests
    q: torch.Tensor,
    # [T, Hkv, D] keys of the new rows
    k_new: torch.Tensor,
    # [T, Hkv, D] values of the new rows
    v_new: torch.Tensor,
    # [B + 1] int, start of each request's new rows in q / k_new / v_new
    cu_seqlens: torch.Tensor,
    # [num_blocks, S, Hkv, D] key blocks
    k_pool: torch.Tensor,
    # [num_blocks, S, Hkv, D] value blocks
    v_pool: torch.Tensor,
    # [num_slots, M] int, physical block of each request slot's table columns
    block_table: torch.Tensor,
    # [B] int, table row (slot) of each request
    slot_ids: torch.Tensor,
    # [B] int, committed rows of each request (absolute count)
    prefix_lens: torch.Tensor,
    # [B] int, first absolute row still cached per request
    first_rows: torch.Tensor,
    window: int | None,
    scale: float,
) -> torch.Tensor:  # [T, Hq, D], dtype of q
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    group = num_q_heads // k_new.shape[1]
    block_size = k_pool.shape[1]
    out = torch.empty_like(q)
    cu = cu_seqlens.tolist()
    slots, prefixes, firsts = slot_ids.tolist(), prefix_lens.tolist(), first_rows.tolist()
    for b, (start, end) in enumerate(zip(cu[:-1], cu[1:], strict=True)):
        n, prefix = end - start, prefixes[b]
        if n == 0:
            continue
        first_needed = max(0, prefix - (window - 1)) if window is not None else 0
        first_needed = min(max(first_needed, firsts[b]), prefix)
        cached = torch.arange(first_needed, prefix, device=q.device)
        blocks, offsets = paged_rows(block_table[slots[b]].long(), cached, block_size)
        keys = torch.cat((k_pool[blocks, offsets], k_new[start:end]), dim=0).float()
        values = torch.cat((v_pool[blocks, offsets], v_new[start:end]), dim=0).float()
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
