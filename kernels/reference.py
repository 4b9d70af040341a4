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

from dataclasses import dataclass

import torch


def paged_cells(
    # [num_slots, M] int, physical block of each table column of a slot
    block_table: torch.Tensor,
    # [...] int, slot of each row (broadcasts with rows)
    slots: torch.Tensor,
    # [...] int, absolute row indices
    rows: torch.Tensor,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # ([...] physical block, [...] offset)
    """Where absolute row a of a slot lives in the block pool: block
    `block_table[slot, (a // S) % M]`, offset `a % S`. The one address formula: the cache
    (sparrow_vllm/serving/text_cache_layout.py) writes through it, this module
    reads through it, and the Triton kernel computes the same (text_window_attention.py)."""
    return block_table[slots, (rows // block_size) % block_table.shape[1]], rows % block_size


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
        blocks, offsets = paged_cells(block_table, slots[b], cached, block_size)
        blocks = blocks.long()
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


# ---- the same attention, batched (what the "reference" backend runs) -----------------------
#
# The loop above is the definition. The serving path runs this batched form of it: one
# padded gather for all requests instead of one per request, and the gather indices and the
# mask built once per draft forward (a `TextWindowPlan`) and shared by every layer. On CPU,
# where a decode step's tensors are tiny, the number of torch ops is the cost, not the math.
# tests/unit/kernels/test_attention_batched.py checks it against the loop over a grid of batches,
# windows, prefixes, first rows, block sizes and head groupings.


@dataclass(frozen=True)
class TextWindowPlan:
    """What a batched call reads besides q / k / v, the same for every layer of a forward.

    Request b's keys sit in a padded row of C cached slots then N new slots: cached slot j
    is absolute row lo_b + j (lo_b the first row any of its queries sees), new slot i is its
    i-th new row; its queries are the N new slots (past its n_b rows: padding, which sees
    at least itself, so no softmax row is empty; padded outputs are dropped)."""

    # [B * C] cell (block * S + offset) of each cached key slot (padding reads a valid cell)
    cells: torch.Tensor
    # [B, N] row of q / k_new / v_new of each new slot, or None when the rows are already
    # [B, N] (every request has N rows)
    new_rows: torch.Tensor | None
    # [B, 1, N, 1, C + N] bool, query slot i of request b does NOT see key slot j
    hidden: torch.Tensor
    # [T] flat index (b * N + i) of each row in the padded layout, or None (dense rows)
    unpad: torch.Tensor | None
    batch: int
    num_new: int


def _int64(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.int64 else x.long()


def plan_text_window(
    cu_seqlens: torch.Tensor,
    block_table: torch.Tensor,
    slot_ids: torch.Tensor,
    prefix_lens: torch.Tensor,
    first_rows: torch.Tensor,
    window: int | None,
    block_size: int,
    num_rows: int,
    max_cached: int | None = None,
    max_new: int | None = None,
    dense: bool = False,
) -> TextWindowPlan:
    """Indices and mask of `text_window_attention_batched` for `num_rows` rows of q (rows
    past cu_seqlens[-1] belong to no request and get some padded slot's output).

    Without bounds it reads three sizes back (free on CPU). With host bounds `max_cached`
    (of cached rows any query sees) and `max_new` (of rows per request) it reads nothing
    back and pads to them; `dense` then promises that every request has exactly `max_new`
    rows, in order (`num_rows == B * max_new`), which skips the unpadding gathers."""
    device = cu_seqlens.device
    batch = slot_ids.shape[0]
    cu = _int64(cu_seqlens)
    prefix = _int64(prefix_lens)
    # first cached row any query of the request sees
    lo = _int64(first_rows)
    if window is not None:
        lo = torch.maximum(lo, prefix - (window - 1))
    lo = torch.minimum(lo, prefix)
    if max_cached is not None and max_new is not None:
        num_cached, num_new, total = max_cached, max_new, -1  # `dense` says what total would
    elif batch == 0:
        num_cached = num_new = total = 0
    else:
        num_cached, num_new, total = torch.cat(
            (torch.stack(((prefix - lo).max(), (cu[1:] - cu[:-1]).max())), cu[-1:])).tolist()
    num_new = max(num_new, 1 if num_rows else 0)
    # absolute position of every key slot; cached padding (past the prefix) -> never seen
    cached_pos = lo[:, None] + torch.arange(num_cached, device=device)
    query_pos = prefix[:, None] + torch.arange(num_new, device=device)
    key_pos = torch.cat((cached_pos.masked_fill(cached_pos >= prefix[:, None], 1 << 62), query_pos), 1)
    # causal (padded queries see their own slot) and windowed
    hidden = key_pos[:, None, :] > query_pos[:, :, None]
    if window is not None:
        hidden |= key_pos[:, None, :] <= query_pos[:, :, None] - window
    rows = torch.minimum(cached_pos, (prefix[:, None] - 1).clamp(min=0))
    blocks, offsets = paged_cells(block_table, _int64(slot_ids)[:, None], rows, block_size)
    cells = (blocks * block_size + offsets).view(-1)
    if dense or total == num_rows == batch * num_new:  # every request has num_new rows, in order
        return TextWindowPlan(cells, None, hidden[:, None, :, None, :], None, batch, num_new)
    starts = cu[:-1, None]
    new_rows = (starts + torch.arange(num_new, device=device)).clamp(max=max(num_rows - 1, 0))
    row = torch.arange(num_rows, device=device)
    row_req = torch.searchsorted(cu[1:], row, right=True).clamp(max=max(batch - 1, 0))
    unpad = (row_req * num_new + row - cu[row_req]).clamp(0, max(batch * num_new - 1, 0))
    return TextWindowPlan(cells, new_rows, hidden[:, None, :, None, :], unpad, batch, num_new)


def text_window_attention_batched(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    plan: TextWindowPlan,
    scale: float,
) -> torch.Tensor:  # [T, Hq, D], dtype of q
    """`text_window_attention_reference` for all requests at once, from a plan."""
    batch, num_new = plan.batch, plan.num_new
    if batch == 0:
        return torch.zeros_like(q)
    num_q_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_new.shape[1]
    group = num_q_heads // num_kv_heads
    if plan.new_rows is not None:
        q, k_new, v_new = q[plan.new_rows], k_new[plan.new_rows], v_new[plan.new_rows]
    pool_shape = (batch, -1, num_kv_heads, head_dim)
    # [B, C + N, Hkv, D] -> [B, Hkv, C + N, D]
    keys = torch.cat((k_pool.view(-1, num_kv_heads, head_dim)[plan.cells].view(pool_shape),
                      k_new.view(batch, num_new, num_kv_heads, head_dim)), 1).transpose(1, 2)
    values = torch.cat((v_pool.view(-1, num_kv_heads, head_dim)[plan.cells].view(pool_shape),
                        v_new.view(batch, num_new, num_kv_heads, head_dim)), 1).transpose(1, 2)
    # query head h reads key head h // group: [B, N, Hkv, G, D] -> [B, Hkv, N * G, D]
    queries = q.reshape(batch, num_new, num_kv_heads, group, head_dim).transpose(1, 2)
    queries = queries.reshape(batch, num_kv_heads, num_new * group, head_dim)
    if q.dtype != torch.float32:
        queries, keys, values = queries.float(), keys.float(), values.float()
    num_keys = keys.shape[2]
    scores = torch.matmul(queries, keys.transpose(2, 3)).mul_(scale)
    scores = scores.view(batch, num_kv_heads, num_new, group, num_keys).masked_fill_(plan.hidden, float("-inf"))
    probs = scores.view(batch, num_kv_heads, num_new * group, num_keys).softmax(dim=-1)
    out = torch.matmul(probs, values).view(batch, num_kv_heads, num_new, group, head_dim)
    # [B, N, Hkv, G, D] -> [B * N, Hq, D], then the real rows
    out = out.transpose(1, 2).reshape(batch * num_new, num_q_heads, head_dim)
    if plan.unpad is not None:
        out = out[plan.unpad]
    return out if out.dtype == q.dtype else out.to(q.dtype)
