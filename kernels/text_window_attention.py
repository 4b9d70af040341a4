"""Triton kernel: text-window attention of new draft rows over the paged text-row cache.

Same contract as `reference.py` beside it. One program handles BLOCK_M new rows of one
request for one query head: it streams the request's cached rows through its block table
(absolute row a in block table[(a // S) % M] at offset a % S; only rows from first_rows[b]
on and inside the window of the program's rows) and then the new rows themselves (causal),
with an fp32 online softmax. Inputs may be fp32, fp16 or bf16; scores and
accumulators are fp32. Head dims that are not powers of two are padded with masks.

Grid: (batch, cdiv(max_new_rows, BLOCK_M), num_q_heads). `max_new_rows` is a host int the
caller knows (1 in a decode step), so launching needs no device-to-host copy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _attend_tile(
    q, acc, m_i, l_i, k_ptrs, v_ptrs, key_pos, q_pos, key_ok, window, scale,
    HAS_WINDOW: tl.constexpr, D_MASK,
):
    k = tl.load(k_ptrs, mask=key_ok[:, None] & D_MASK[None, :], other=0.0).to(tl.float32)
    v = tl.load(v_ptrs, mask=key_ok[:, None] & D_MASK[None, :], other=0.0).to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
    visible = key_ok[None, :] & (key_pos[None, :] <= q_pos[:, None])
    if HAS_WINDOW:
        visible = visible & (key_pos[None, :] > q_pos[:, None] - window)
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # rows with nothing visible yet keep m = -inf; guard exp(-inf - -inf)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp(s - m_safe[:, None])
    alpha = tl.exp(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
    return acc, m_new, l_i


@triton.jit
def _text_window_attention_kernel(
    q_ptr, k_new_ptr, v_new_ptr, cu_ptr, k_pool_ptr, v_pool_ptr, table_ptr, slot_ptr, prefix_ptr,
    first_ptr, out_ptr,
    stride_qt, stride_qh,
    stride_kt, stride_kh,
    stride_pb, stride_pr, stride_ph,
    stride_ts,
    stride_ot, stride_oh,
    table_width, window, scale,
    BLOCK_SIZE: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
):
    b = tl.program_id(0)
    m_block = tl.program_id(1)
    head = tl.program_id(2)
    kv_head = head // GROUP

    start = tl.load(cu_ptr + b)
    n_new = tl.load(cu_ptr + b + 1) - start
    if m_block * BLOCK_M >= n_new:
        return
    slot = tl.load(slot_ptr + b).to(tl.int64)
    prefix = tl.load(prefix_ptr + b)
    first = tl.load(first_ptr + b)

    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    row_ok = offs_m < n_new
    q_pos = prefix + offs_m  # combined index of each query row
    q_ptrs = q_ptr + (start + offs_m)[:, None] * stride_qt + head * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_mask[None, :], other=0.0).to(tl.float32)

    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)

    # 1. cached rows [lo, prefix): only those still cached that the block's first row sees
    lo = tl.maximum(first, 0)
    if HAS_WINDOW:
        lo = tl.maximum(lo, prefix + m_block * BLOCK_M - window + 1)
    table = table_ptr + slot * stride_ts
    pool_k = k_pool_ptr + kv_head * stride_ph
    pool_v = v_pool_ptr + kv_head * stride_ph
    for n0 in range(lo, prefix, BLOCK_N):
        key_pos = n0 + tl.arange(0, BLOCK_N)
        key_ok = key_pos < prefix
        block = tl.load(table + (key_pos // BLOCK_SIZE) % table_width, mask=key_ok, other=0)
        cell = block.to(tl.int64) * stride_pb + (key_pos % BLOCK_SIZE) * stride_pr
        acc, m_i, l_i = _attend_tile(
            q, acc, m_i, l_i,
            pool_k + cell[:, None] + offs_d[None, :],
            pool_v + cell[:, None] + offs_d[None, :],
            key_pos, q_pos, key_ok, window, scale, HAS_WINDOW, d_mask,
        )

    # 2. the new rows themselves, causally (up to the block's last row)
    hi = tl.minimum(n_new, (m_block + 1) * BLOCK_M)
    new_lo = 0
    if HAS_WINDOW:
        new_lo = tl.maximum(m_block * BLOCK_M - window + 1, 0)
        new_lo = (new_lo // BLOCK_N) * BLOCK_N
    for n0 in range(new_lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        key_ok = offs_n < hi
        rows = (start + offs_n)[:, None] * stride_kt + kv_head * stride_kh + offs_d[None, :]
        acc, m_i, l_i = _attend_tile(
            q, acc, m_i, l_i, k_new_ptr + rows, v_new_ptr + rows,
            prefix + offs_n, q_pos, key_ok, window, scale, HAS_WINDOW, d_mask,
        )

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # l_i == 0 only on padding rows
    o_ptrs = out_ptr + (start + offs_m)[:, None] * stride_ot + head * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & d_mask[None, :])


def text_window_attention_triton(
    # [T, Hq, D]
    q: torch.Tensor,
    # [T, Hkv, D]
    k_new: torch.Tensor,
    # [T, Hkv, D]
    v_new: torch.Tensor,
    # [B + 1] int
    cu_seqlens: torch.Tensor,
    # [num_blocks, S, Hkv, D]
    k_pool: torch.Tensor,
    # [num_blocks, S, Hkv, D]
    v_pool: torch.Tensor,
    # [num_slots, M] int
    block_table: torch.Tensor,
    # [B] int
    slot_ids: torch.Tensor,
    # [B] int
    prefix_lens: torch.Tensor,
    # [B] int
    first_rows: torch.Tensor,
    window: int | None,
    scale: float,
    max_new_rows: int,
) -> torch.Tensor:  # [T, Hq, D]
    batch = slot_ids.shape[0]
    num_heads, head_dim = q.shape[1], q.shape[2]
    out = torch.empty_like(q)
    if batch == 0 or max_new_rows == 0:
        return out
    block_m = 16
    block_n = 64 if head_dim <= 64 else 32
    grid = (batch, triton.cdiv(max_new_rows, block_m), num_heads)
    _text_window_attention_kernel[grid](
        q, k_new, v_new, cu_seqlens, k_pool, v_pool, block_table, slot_ids, prefix_lens,
        first_rows, out,
        q.stride(0), q.stride(1),
        k_new.stride(0), k_new.stride(1),
        k_pool.stride(0), k_pool.stride(1), k_pool.stride(2),
        block_table.stride(0),
        out.stride(0), out.stride(1),
        block_table.shape[1], window if window is not None else 0, scale,
        BLOCK_SIZE=k_pool.shape[1],
        GROUP=num_heads // k_new.shape[1],
        HEAD_DIM=head_dim,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        HAS_WINDOW=window is not None,
    )
    return out
