"""The draft's one public attention op: text-window attention over the paged text-row cache.

Backends:
  "triton"     kernels/text_window_attention.py; the default on CUDA. On CPU it runs only
               under the Triton interpreter (TRITON_INTERPRET=1), which is how CI tests it.
  "reference"  kernels/reference.py (PyTorch); the default everywhere else. It runs the
               batched form of the reference loop for several requests (one padded gather
               for all of them), whose indices and mask a caller may build once per
               forward with `plan_attention` and pass to every layer's call; the loop
               itself for one request.

The choice is logged once per (backend, device type) and can be forced with the `backend`
argument or the SPARROW_ATTENTION_BACKEND environment variable. `backend_calls()` counts
calls per backend, so tests can prove which path ran.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from functools import cache

import torch

from sparrow_vllm.kernels.reference import (
    TextWindowPlan,
    plan_text_window,
    text_window_attention_batched,
    text_window_attention_reference,
)

logger = logging.getLogger(__name__)

BACKENDS = ("triton", "reference")
ENV_BACKEND = "SPARROW_ATTENTION_BACKEND"
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_calls: Counter[str] = Counter()


def backend_calls() -> dict[str, int]:
    """How many times each backend ran in this process."""
    return dict(_calls)


@cache
def _log_choice(backend: str, device_type: str, reason: str) -> None:
    logger.info("Sparrow draft attention: %s backend on %s (%s)", backend, device_type, reason)


def _triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def select_backend(device: torch.device, backend: str | None = None) -> str:
    """The backend the op uses on `device`, honouring the argument, then the env var."""
    requested = backend or os.environ.get(ENV_BACKEND) or None
    if requested is None:
        chosen = "triton" if device.type == "cuda" else "reference"
        _log_choice(chosen, device.type, "default")
        return chosen
    if requested not in BACKENDS:
        raise ValueError(
            f"Unknown Sparrow attention backend {requested!r}; choose one of {BACKENDS} "
            f"(argument `backend` or ${ENV_BACKEND})"
        )
    if requested == "triton" and device.type != "cuda" and not _triton_interpreter_on():
        raise ValueError(
            f"The Triton backend needs CUDA tensors (got {device.type}); on CPU set "
            "TRITON_INTERPRET=1 to run it in Triton's interpreter, or use 'reference'"
        )
    _log_choice(requested, device.type, "forced")
    return requested


def _validate(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    cu_seqlens: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    block_table: torch.Tensor,
    slot_ids: torch.Tensor,
    prefix_lens: torch.Tensor,
    first_rows: torch.Tensor,
    window: int | None,
) -> None:
    if q.dim() != 3 or k_new.dim() != 3 or k_new.shape != v_new.shape:
        raise ValueError(
            "q must be [T, Hq, D] and k_new / v_new [T, Hkv, D] with equal shapes; got "
            f"{tuple(q.shape)}, {tuple(k_new.shape)}, {tuple(v_new.shape)}"
        )
    if q.shape[0] != k_new.shape[0] or q.shape[2] != k_new.shape[2]:
        raise ValueError(
            f"q {tuple(q.shape)} and k_new {tuple(k_new.shape)} must agree on rows and head_dim"
        )
    if q.shape[1] % k_new.shape[1]:
        raise ValueError(
            f"query heads ({q.shape[1]}) must be a multiple of key/value heads "
            f"({k_new.shape[1]})"
        )
    if k_pool.dim() != 4 or k_pool.shape != v_pool.shape or k_pool.shape[2:] != k_new.shape[1:]:
        raise ValueError(
            "k_pool / v_pool must be [num_blocks, S, Hkv, D] matching k_new's heads and "
            "head_dim; got "
            f"{tuple(k_pool.shape)}, {tuple(v_pool.shape)}"
        )
    dtypes = {q.dtype, k_new.dtype, v_new.dtype, k_pool.dtype, v_pool.dtype}
    if len(dtypes) != 1 or q.dtype not in _SUPPORTED_DTYPES:
        raise ValueError(
            f"q, k_new, v_new and the pools must share one dtype among {_SUPPORTED_DTYPES}; "
            f"got {sorted(map(str, dtypes))}: cast them first"
        )
    indices = {"cu_seqlens": cu_seqlens, "block_table": block_table, "slot_ids": slot_ids,
               "prefix_lens": prefix_lens, "first_rows": first_rows}
    for name, index in indices.items():
        if index.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name} must be int32 or int64, got {index.dtype}")
    if len({t.device for t in (q, k_new, v_new, k_pool, v_pool, *indices.values())}) != 1:
        raise ValueError("all tensors must be on one device; move them first")
    if block_table.dim() != 2 or block_table.stride(-1) != 1:
        raise ValueError(
            f"block_table must be [num_slots, M] with contiguous rows; got "
            f"{tuple(block_table.shape)} with strides {block_table.stride()}"
        )
    if any(t.stride(-1) != 1 for t in (q, k_new, v_new, k_pool, v_pool)):
        raise ValueError("the last (head_dim) dimension of every tensor must be contiguous; "
                         "call .contiguous() first")
    if k_new.stride() != v_new.stride() or k_pool.stride() != v_pool.stride():
        raise ValueError("k and v tensors must share strides (allocate them alike)")
    batch = slot_ids.shape[0]
    if cu_seqlens.shape != (batch + 1,) or prefix_lens.shape != (batch,) or first_rows.shape != (batch,):
        raise ValueError(
            f"cu_seqlens must be [B + 1], prefix_lens and first_rows [B] for B = {batch} "
            f"slots; got {tuple(cu_seqlens.shape)}, {tuple(prefix_lens.shape)} and "
            f"{tuple(first_rows.shape)}"
        )
    if window is not None and window < 1:
        raise ValueError(f"window must be None or >= 1, got {window}")


def plan_attention(
    device: torch.device,
    cu_seqlens: torch.Tensor,
    block_table: torch.Tensor,
    slot_ids: torch.Tensor,
    prefix_lens: torch.Tensor,
    first_rows: torch.Tensor,
    window: int | None,
    block_size: int,
    num_rows: int,
    backend: str | None = None,
) -> TextWindowPlan | None:
    """What every layer's call of one forward shares (same indices, `num_rows` new rows,
    pools of `block_size` rows per block): a plan for the reference backend, None for
    Triton (its kernel needs none, and building one would read sizes back from the GPU)
    and for a single request (the plain loop is as cheap there: one gather either way)."""
    if select_backend(device, backend) != "reference" or slot_ids.shape[0] == 1:
        return None
    return plan_text_window(cu_seqlens, block_table, slot_ids, prefix_lens, first_rows, window,
                            block_size, num_rows)


def text_window_attention(
    # [T, Hq, D] queries of the new rows
    q: torch.Tensor,
    # [T, Hkv, D] keys of the new rows
    k_new: torch.Tensor,
    # [T, Hkv, D] values of the new rows
    v_new: torch.Tensor,
    # [B + 1] int, new rows of request b are cu_seqlens[b]:cu_seqlens[b + 1]
    cu_seqlens: torch.Tensor,
    # [num_blocks, S, Hkv, D] key blocks (S rows each)
    k_pool: torch.Tensor,
    # [num_blocks, S, Hkv, D] value blocks
    v_pool: torch.Tensor,
    # [num_slots, M] int, absolute row a of slot s lives in block block_table[s, (a // S) % M]
    block_table: torch.Tensor,
    # [B] int, table row (slot) per request
    slot_ids: torch.Tensor,
    # [B] int, committed rows per request (absolute count)
    prefix_lens: torch.Tensor,
    # [B] int, first absolute row still cached per request (older ones were dropped)
    first_rows: torch.Tensor,
    window: int | None = None,
    scale: float | None = None,
    backend: str | None = None,
    max_new_rows: int | None = None,
    plan: TextWindowPlan | None = None,
) -> torch.Tensor:  # [T, Hq, D]
    """Attention of new draft rows over each request's cached text rows and themselves.

    `max_new_rows` (a host int, any upper bound of the rows per request) lets the Triton
    path launch without reading `cu_seqlens` back from the device. `plan` (from
    `plan_attention` with these same indices) spares the reference backend rebuilding
    its indices and mask; the Triton backend ignores it.
    """
    _validate(q, k_new, v_new, cu_seqlens, k_pool, v_pool, block_table, slot_ids, prefix_lens,
              first_rows, window)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    chosen = select_backend(q.device, backend)
    _calls[chosen] += 1
    if chosen == "triton":
        from sparrow_vllm.kernels.text_window_attention import text_window_attention_triton

        if max_new_rows is None:
            max_new_rows = int((cu_seqlens[1:] - cu_seqlens[:-1]).max()) if len(slot_ids) else 0
        return text_window_attention_triton(
            q, k_new, v_new, cu_seqlens, k_pool, v_pool, block_table, slot_ids, prefix_lens,
            first_rows, window, scale, max_new_rows,
        )
    if plan is None and slot_ids.shape[0] == 1:
        return text_window_attention_reference(
            q, k_new, v_new, cu_seqlens, k_pool, v_pool, block_table, slot_ids, prefix_lens,
            first_rows, window, scale,
        )
    if plan is None:
        plan = plan_text_window(cu_seqlens, block_table, slot_ids, prefix_lens, first_rows, window,
                                k_pool.shape[1], q.shape[0])
    return text_window_attention_batched(q, k_new, v_new, k_pool, v_pool, plan, scale)
