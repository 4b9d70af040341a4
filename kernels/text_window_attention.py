"""Triton kernel: text-window attention of new draft rows over the paged text-row cache.

Same contract as `reference.py` beside it (the oracle its tests compare against). Absolute
row a of a request lives in block table[(a // S) % M] at offset a % S (reference.paged_cells,
the formula the cache writes through); only rows from
first_rows[b] on and inside the window of a query are attended to.

What each program does
----------------------
Main kernel, grid (batch, query tiles, KV heads x splits). One program takes one request b,
one tile of ROWS of its new rows, one KV head and one split of the cached row range:

* Its query tile holds the ROWS rows x the GROUP query heads that share the KV head (grouped-
  query attention folded into the tile's M dimension: tile row r is new row r // GROUP,
  query head kv_head * GROUP + r % GROUP), so each K/V row it streams is loaded once for the
  whole group. BLOCK_M is the smallest power of two >= 16 (tl.dot's minimum) holding
  ROWS x GROUP rows, at most 64 (or GROUP rounded up when a group is larger): a decode step's
  <= K + 1 rows fit one tile, so a decode step runs one program per (request, KV head, split).
* It streams its chunk of the cached rows [lo, prefix) through the block table, BLOCK_N rows
  at a time (lo: first_rows[b], raised to the window's start for the tile's first row), then,
  in the last split only, the new rows themselves (causal), with an online softmax (exp2,
  fp32 max / sum / accumulator).
* Unsplit (NUM_SPLITS = 1) it normalises and writes the output. Split (flash-decoding), the
  range [lo, prefix) is cut into NUM_SPLITS chunks of whole BLOCK_N tiles; each program
  writes its unnormalised accumulator and its (max, sum) to fp32 scratch, and the reduce
  kernel (same grid without splits) merges a tile's NUM_SPLITS partials and writes the
  output. A split whose chunk is empty writes max = -inf, sum = 0.

When to split is a host decision from host-known sizes only (no device-to-host read, so a
launch can be graph-captured): `choose_num_splits` splits when the main grid would not fill
the GPU's SMs and the longest possible cached range (the window, or the block table's
capacity M * S) is long, so that each program still streams >= 256 rows.

Precision: fp16 / bf16 inputs go to tl.dot in their own dtype (q.k, and p rounded to the
input dtype for p.v), accumulating in fp32. fp32 inputs use fp32 operands at "ieee"
precision (no tf32: the draft's fp32 path stays as exact as the reference). Under the
interpreter (TRITON_INTERPRET=1), whose tl.dot multiplies bf16 operands' raw bits (Triton
3.9), bf16 operands are widened to fp32 right before each dot, holding the same values.
Head dims that are not powers of two are padded with masks.
"""

from __future__ import annotations

import os
from functools import cache

import torch
import triton
import triton.language as tl

# rows a program's query tile holds at most (a decode step's K + 1 rows x group fit under it)
MAX_BLOCK_M = 64
# splits: each program streams at least this many cached rows; never more than MAX_SPLITS
SPLIT_MIN_ROWS = 256
MAX_SPLITS = 32
# SM count the split heuristic assumes off CUDA (the interpreter): an H100's
NOMINAL_SM_COUNT = 132
_LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile(
    q, acc, m_i, l_i, k_ptrs, v_ptrs, key_pos, q_pos, key_ok, window, qk_scale,
    HAS_WINDOW: tl.constexpr, D_MASK, IEEE: tl.constexpr, WIDEN: tl.constexpr,
):
    k = tl.load(k_ptrs, mask=key_ok[:, None] & D_MASK[None, :], other=0.0)
    v = tl.load(v_ptrs, mask=key_ok[:, None] & D_MASK[None, :], other=0.0)
    in_dtype = k.dtype
    if WIDEN:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    s = s * qk_scale  # log2 units
    visible = key_ok[None, :] & (key_pos[None, :] <= q_pos[:, None])
    if HAS_WINDOW:
        visible = visible & (key_pos[None, :] > q_pos[:, None] - window)
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # rows with nothing visible yet keep m = -inf; guard exp2(-inf - -inf)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    p_in = p.to(in_dtype)
    if WIDEN:
        p_in = p_in.to(tl.float32)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p_in, v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p_in, v)
    return acc, m_new, l_i


@triton.jit
def _text_window_attention_kernel(
    q_ptr, k_new_ptr, v_new_ptr, cu_ptr, k_pool_ptr, v_pool_ptr, table_ptr, slot_ptr, prefix_ptr,
    first_ptr, out_ptr, part_acc_ptr, part_ml_ptr,
    stride_qt, stride_qh,
    stride_kt, stride_kh,
    stride_pb, stride_pr, stride_ph,
    stride_ts,
    stride_ot, stride_oh,
    stride_as, stride_at, stride_ah,
    stride_ms, stride_mt, stride_mh,
    table_width, window, qk_scale,
    BLOCK_SIZE: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    IEEE: tl.constexpr,
    WIDEN: tl.constexpr,
):
    b = tl.program_id(0)
    m_block = tl.program_id(1)
    kv_head = tl.program_id(2) // NUM_SPLITS
    split = tl.program_id(2) % NUM_SPLITS

    start = tl.load(cu_ptr + b)
    n_new = tl.load(cu_ptr + b + 1) - start
    m0 = m_block * ROWS
    if m0 >= n_new:
        return
    slot = tl.load(slot_ptr + b).to(tl.int64)
    prefix = tl.load(prefix_ptr + b)
    first = tl.load(first_ptr + b)

    # tile row r: new row m0 + r // GROUP of query head kv_head * GROUP + r % GROUP
    offs_r = tl.arange(0, BLOCK_M)
    row = m0 + offs_r // GROUP
    head = kv_head * GROUP + offs_r % GROUP
    row_ok = (offs_r < ROWS * GROUP) & (row < n_new)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    q_pos = prefix + row  # combined index of each query row
    tok = (start + row).to(tl.int64)
    q_ptrs = q_ptr + tok[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_mask[None, :], other=0.0)
    if WIDEN:
        q = q.to(tl.float32)

    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)

    # 1. cached rows [lo, prefix) still cached that the tile's first row sees; this split's
    #    chunk of them
    lo = tl.maximum(first, 0)
    if HAS_WINDOW:
        lo = tl.maximum(lo, prefix + m0 - window + 1)
    hi = prefix
    if NUM_SPLITS > 1:
        span = tl.maximum(prefix - lo, 0)
        chunk = tl.cdiv(tl.cdiv(span, NUM_SPLITS), BLOCK_N) * BLOCK_N
        lo = lo + split * chunk
        hi = tl.minimum(lo + chunk, prefix)
    table = table_ptr + slot * stride_ts
    pool_k = k_pool_ptr + kv_head * stride_ph
    pool_v = v_pool_ptr + kv_head * stride_ph
    for n0 in range(lo, hi, BLOCK_N):
        key_pos = n0 + tl.arange(0, BLOCK_N)
        key_ok = key_pos < hi
        block = tl.load(table + (key_pos // BLOCK_SIZE) % table_width, mask=key_ok, other=0)
        cell = block.to(tl.int64) * stride_pb + (key_pos % BLOCK_SIZE) * stride_pr
        acc, m_i, l_i = _attend_tile(
            q, acc, m_i, l_i,
            pool_k + cell[:, None] + offs_d[None, :],
            pool_v + cell[:, None] + offs_d[None, :],
            key_pos, q_pos, key_ok, window, qk_scale, HAS_WINDOW, d_mask, IEEE, WIDEN,
        )

    # 2. the new rows themselves, causally (up to the tile's last row), in the last split
    if split == NUM_SPLITS - 1:
        new_hi = tl.minimum(n_new, m0 + ROWS)
        new_lo = 0
        if HAS_WINDOW:
            new_lo = tl.maximum(m0 - window + 1, 0)
            new_lo = (new_lo // BLOCK_N) * BLOCK_N
        for n0 in range(new_lo, new_hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            key_ok = offs_n < new_hi
            rows = (start + offs_n).to(tl.int64)[:, None] * stride_kt + kv_head * stride_kh + offs_d[None, :]
            acc, m_i, l_i = _attend_tile(
                q, acc, m_i, l_i, k_new_ptr + rows, v_new_ptr + rows,
                prefix + offs_n, q_pos, key_ok, window, qk_scale, HAS_WINDOW, d_mask, IEEE, WIDEN,
            )

    store_mask = row_ok[:, None] & d_mask[None, :]
    if NUM_SPLITS == 1:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # l_i == 0 only on padding rows
        o_ptrs = out_ptr + tok[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=store_mask)
    else:
        a_ptrs = (part_acc_ptr + split * stride_as + tok[:, None] * stride_at
                  + head[:, None] * stride_ah + offs_d[None, :])
        tl.store(a_ptrs, acc, mask=store_mask)
        ml_ptrs = part_ml_ptr + split * stride_ms + tok * stride_mt + head * stride_mh
        tl.store(ml_ptrs, m_i, mask=row_ok)
        tl.store(ml_ptrs + 1, l_i, mask=row_ok)


@triton.jit
def _reduce_splits_kernel(
    cu_ptr, out_ptr, part_acc_ptr, part_ml_ptr,
    stride_ot, stride_oh,
    stride_as, stride_at, stride_ah,
    stride_ms, stride_mt, stride_mh,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    """Merge the NUM_SPLITS partial (max, sum, accumulator) of one query tile (the main
    kernel's tile addressing) and write its normalised output."""
    b = tl.program_id(0)
    m_block = tl.program_id(1)
    kv_head = tl.program_id(2)
    start = tl.load(cu_ptr + b)
    n_new = tl.load(cu_ptr + b + 1) - start
    m0 = m_block * ROWS
    if m0 >= n_new:
        return
    offs_r = tl.arange(0, BLOCK_M)
    row = m0 + offs_r // GROUP
    head = kv_head * GROUP + offs_r % GROUP
    row_ok = (offs_r < ROWS * GROUP) & (row < n_new)
    offs_d = tl.arange(0, BLOCK_D)
    mask = row_ok[:, None] & (offs_d < HEAD_DIM)[None, :]
    tok = (start + row).to(tl.int64)

    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for split in range(NUM_SPLITS):
        ml_ptrs = part_ml_ptr + split * stride_ms + tok * stride_mt + head * stride_mh
        m_s = tl.load(ml_ptrs, mask=row_ok, other=float("-inf"))
        l_s = tl.load(ml_ptrs + 1, mask=row_ok, other=0.0)
        a_s = tl.load(part_acc_ptr + split * stride_as + tok[:, None] * stride_at
                      + head[:, None] * stride_ah + offs_d[None, :], mask=mask, other=0.0)
        m_new = tl.maximum(m_i, m_s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        beta = tl.exp2(m_s - m_safe)
        acc = acc * alpha[:, None] + a_s * beta[:, None]
        l_i = l_i * alpha + l_s * beta
        m_i = m_new
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    o_ptrs = out_ptr + tok[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)


def query_tile(max_new_rows: int, group: int) -> tuple[int, int]:
    """(BLOCK_M, ROWS): a program's query tile holds ROWS new rows x `group` query heads in
    BLOCK_M >= 16 rows (tl.dot's minimum), a power of two."""
    block_m = max(16, triton.next_power_of_2(min(max_new_rows * group, MAX_BLOCK_M)))
    block_m = max(block_m, triton.next_power_of_2(group))
    return block_m, max(1, min(max_new_rows, block_m // group))


def choose_num_splits(programs: int, max_cached_rows: int, sm_count: int) -> int:
    """Splits of the cached row range per query tile: 1 when `programs` (the unsplit grid)
    already fill `sm_count` SMs or the range is short; else enough to fill the SMs, each
    split streaming >= SPLIT_MIN_ROWS of `max_cached_rows` (a host-known bound)."""
    if programs >= sm_count:
        return 1
    return max(1, min(MAX_SPLITS, triton.cdiv(sm_count, programs), max_cached_rows // SPLIT_MIN_ROWS))


@cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return NOMINAL_SM_COUNT


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
    num_splits: int | None = None,
) -> torch.Tensor:  # [T, Hq, D]
    """Launch the kernel(s). `max_new_rows` is a host int (any upper bound of the rows per
    request; K + 1 or less in a decode step), so launching needs no device-to-host copy.
    `num_splits` forces the split of the cached row range (None: `choose_num_splits`)."""
    batch = slot_ids.shape[0]
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_new.shape[1]
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    if batch == 0 or max_new_rows == 0:
        return out
    block_m, rows = query_tile(max_new_rows, group)
    m_blocks = triton.cdiv(max_new_rows, rows)
    block_size = k_pool.shape[1]
    if num_splits is None:
        max_cached = block_table.shape[1] * block_size
        if window is not None:
            max_cached = min(max_cached, window - 1)
        num_splits = choose_num_splits(batch * m_blocks * num_kv_heads, max_cached, _sm_count(q.device))
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    if num_splits > 1:
        part_acc = torch.empty((num_splits, *q.shape), dtype=torch.float32, device=q.device)
        part_ml = torch.empty((num_splits, *q.shape[:2], 2), dtype=torch.float32, device=q.device)
    else:  # unused by the kernel; any fp32 tensor fills the argument
        part_acc = part_ml = torch.empty((1, 1, 1, 2), dtype=torch.float32, device=q.device)
    interpreted = os.environ.get("TRITON_INTERPRET", "0") == "1"
    tile = {"GROUP": group, "HEAD_DIM": head_dim, "ROWS": rows, "BLOCK_M": block_m,
            "BLOCK_D": max(16, triton.next_power_of_2(head_dim)), "NUM_SPLITS": num_splits}
    part_strides = (*part_acc.stride()[:3], *part_ml.stride()[:3])
    _text_window_attention_kernel[(batch, m_blocks, num_kv_heads * num_splits)](
        q, k_new, v_new, cu_seqlens, k_pool, v_pool, block_table, slot_ids, prefix_lens,
        first_rows, out, part_acc, part_ml,
        q.stride(0), q.stride(1),
        k_new.stride(0), k_new.stride(1),
        k_pool.stride(0), k_pool.stride(1), k_pool.stride(2),
        block_table.stride(0),
        out.stride(0), out.stride(1),
        *part_strides,
        block_table.shape[1], window if window is not None else 0, scale * _LOG2E,
        BLOCK_SIZE=block_size,
        BLOCK_N=64 if head_dim <= 64 else 32,
        HAS_WINDOW=window is not None,
        IEEE=q.dtype == torch.float32,
        WIDEN=interpreted and q.dtype == torch.bfloat16,
        **tile,
    )
    if num_splits > 1:
        _reduce_splits_kernel[(batch, m_blocks, num_kv_heads)](
            cu_seqlens, out, part_acc, part_ml,
            out.stride(0), out.stride(1),
            *part_strides,
            **tile,
        )
    return out
