"""Ledger entries 8 and 9 (patches.py): two fixes to vLLM's CPU build's sampling.

Both bugs hit every speculative method on the CPU build (Sparrow, eagle, ...); CUDA builds
never reach this code.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import torch

from sparrow_vllm.serving.vllm.patch_common import mark

# ---- 8. CPU build: the rejection sampler's per-token expansion ----------------------------


def expand_per_request(
    # [num_tokens] written in place (its first cu_num_tokens[-1] entries)
    output: torch.Tensor,
    # [batch] one value per request
    input_val: torch.Tensor,
    # [batch] inclusive cumulative token count per request
    cu_num_tokens: torch.Tensor,
    replace_from: Any,
    replace_to: Any,
    MAX_NUM_TOKENS: Any = None,  # noqa: N803 (the Triton kernel's keyword)
) -> None:
    """What vLLM's `expand_kernel` computes: output[t] = value of t's request, with
    `replace_from` replaced by `replace_to`."""
    del MAX_NUM_TOKENS
    counts = torch.diff(cu_num_tokens.long(), prepend=cu_num_tokens.new_zeros(1).long())
    values = torch.where(input_val == replace_from, torch.as_tensor(replace_to, dtype=input_val.dtype), input_val)
    total = int(cu_num_tokens[-1]) if cu_num_tokens.numel() else 0
    output[:total] = torch.repeat_interleave(values, counts, output_size=total).to(output.dtype)


def patch_cpu_triton_utils(module: ModuleType) -> None:
    mark(expand_per_request)
    module._expand_kernel_impl = expand_per_request


# ---- 9. CPU build: top-k on a step without draft tokens ---------------------------------


def patch_topk_topp_sampler(module: ModuleType) -> None:
    original = module.apply_top_k_only

    @functools.wraps(original)
    def apply_top_k_only(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        # logits: [num_rows, vocab]; k: [num_rows]
        if logits.shape[0] == 0:
            return logits
        return original(logits, k)

    mark(apply_top_k_only)
    module.apply_top_k_only = apply_top_k_only
