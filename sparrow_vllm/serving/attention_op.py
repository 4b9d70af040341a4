"""`torch.ops.sparrow.text_window_attention`: the draft's attention as a registered op.

torch.compile sees the op as one opaque call with a known output shape (as vLLM registers
its own attention), so the draft forward around it compiles without graph breaks whatever
the backend does inside: the Triton kernel's launch arithmetic, or the reference
backend's batched gather. The reference backend's plan (indices and mask shared by every
layer of one forward) is built outside, where it compiles with the forward, and passed in
as its tensors. (This module has no `from __future__ import annotations`: the op's schema
is read from its annotations.)
"""


import torch

from sparrow_vllm.kernels.reference import TextWindowPlan
from sparrow_vllm.serving.attention import text_window_attention


@torch.library.custom_op("sparrow::text_window_attention", mutates_args=())
def text_window_attention_op(
    q: torch.Tensor,  # [T, Hq, D]
    k_new: torch.Tensor,  # [T, Hkv, D]
    v_new: torch.Tensor,  # [T, Hkv, D]
    cu_seqlens: torch.Tensor,  # [B + 1]
    k_pool: torch.Tensor,  # [num_blocks, S, Hkv, D]
    v_pool: torch.Tensor,  # [num_blocks, S, Hkv, D]
    block_table: torch.Tensor,  # [num_slots, M]
    slot_ids: torch.Tensor,  # [B]
    prefix_lens: torch.Tensor,  # [B]
    first_rows: torch.Tensor,  # [B]
    window: int | None,
    scale: float,
    backend: str,
    max_new_rows: int,
    plan_cells: torch.Tensor | None,  # TextWindowPlan.cells, None for Triton
    plan_new_rows: torch.Tensor | None,
    plan_hidden: torch.Tensor | None,
    plan_unpad: torch.Tensor | None,
    plan_batch: int,
    plan_num_new: int,
) -> torch.Tensor:  # [T, Hq, D]
    """`attention.text_window_attention` with its backend chosen and its plan given."""
    plan = None
    if plan_cells is not None and plan_hidden is not None:
        plan = TextWindowPlan(plan_cells, plan_new_rows, plan_hidden, plan_unpad, plan_batch, plan_num_new)
    return text_window_attention(
        q, k_new, v_new, cu_seqlens, k_pool, v_pool, block_table, slot_ids, prefix_lens, first_rows,
        window=window, scale=scale, backend=backend, max_new_rows=max_new_rows, plan=plan,
    )


@text_window_attention_op.register_fake
def _(q, k_new, v_new, cu_seqlens, k_pool, v_pool, block_table, slot_ids, prefix_lens, first_rows,
      window, scale, backend, max_new_rows, plan_cells, plan_new_rows, plan_hidden, plan_unpad,
      plan_batch, plan_num_new):
    return torch.empty_like(q)


def attend(
    q: torch.Tensor,  # [T, Hq, D]
    k_new: torch.Tensor,  # [T, Hkv, D]
    v_new: torch.Tensor,  # [T, Hkv, D]
    cu_seqlens: torch.Tensor,  # [B + 1]
    k_pool: torch.Tensor,  # [num_blocks, S, Hkv, D]
    v_pool: torch.Tensor,  # [num_blocks, S, Hkv, D]
    block_table: torch.Tensor,  # [num_slots, M]
    slot_ids: torch.Tensor,  # [B]
    prefix_lens: torch.Tensor,  # [B]
    first_rows: torch.Tensor,  # [B]
    window: int | None,
    backend: str,
    max_new_rows: int,
    plan: TextWindowPlan | None,
) -> torch.Tensor:  # [T, Hq, D]
    """The op, called with a plan object (the reference backend's) or None (Triton)."""
    return torch.ops.sparrow.text_window_attention(
        q, k_new, v_new, cu_seqlens, k_pool, v_pool, block_table, slot_ids, prefix_lens, first_rows,
        window, q.shape[-1] ** -0.5, backend, max_new_rows,
        None if plan is None else plan.cells, None if plan is None else plan.new_rows,
        None if plan is None else plan.hidden, None if plan is None else plan.unpad,
        0 if plan is None else plan.batch, 0 if plan is None else plan.num_new,
    )
