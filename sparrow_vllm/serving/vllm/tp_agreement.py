"""What every tensor-parallel rank must agree on before its drafter decides anything.

Each rank runs its own drafter and its own TextKVCache; Model Runner V2 verifies each
rank's own drafts, so the ranks must draft the same tokens. Everything the cache decides
(block counts, eviction, starvation, adoption after a prefix hit) follows from the
scheduler's output and the config, except its size when it is taken from free memory,
which differs per rank: the ranks take the least of their values.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def least_over_tensor_parallel_group(value: int) -> int:
    """The smallest of `value` over this rank's tensor-parallel group (`value` itself when
    the process has no group of more than one rank). A collective: every rank of the
    group must call it, at the same point of its start-up."""
    from vllm.distributed import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return value
    group = parallel_state.get_tp_group()
    if group.world_size == 1:
        return value
    agreed = torch.tensor([value], dtype=torch.int64)
    torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN, group=group.cpu_group)
    least = int(agreed[0])
    if least != value:
        logger.info(
            "Sparrow draft cache: this rank's %d is lowered to %d, the least over its %d "
            "tensor-parallel ranks (every rank must size the same cache)",
            value, least, group.world_size,
        )
    return least
