"""TextCachePlan: how one engine's draft cache is laid out (shapes, counts, bytes) and why.

serving/vllm/draft_loading.py makes the plan from the text-row budget or free memory at
start-up; `TextKVCache.from_plan` builds the cache from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_BOOKKEEPING_BYTES_PER_ROW = 16  # row_seq and row_token (int64 each)


@dataclass(frozen=True)
class TextCachePlan:
    """How the draft cache of one engine is laid out, and why."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    block_size: int
    num_blocks: int
    num_slots: int
    table_width: int
    # blocks one request needs for a decode step (its rows and the draft chain)
    min_blocks_per_request: int
    # blocks every running sequence at full context (or full window) would need
    full_need_blocks: int
    budget_source: str

    @property
    def text_rows(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def nbytes(self) -> int:
        # every block plus the trash block, each row K/V and bookkeeping; the block table and
        # three int64 counts per slot plus the trash slot
        rows = (self.num_blocks + 1) * self.block_size
        per_row = row_bytes(self.num_layers, self.num_kv_heads, self.head_dim, self.dtype)
        return rows * per_row + (self.num_slots + 1) * (self.table_width * 4 + 24)

    def describe(self) -> str:
        return (
            f"{self.num_blocks} blocks x {self.block_size} text rows = {self.text_rows} rows "
            f"({self.nbytes / 2**20:.1f} MiB; {self.budget_source}), {self.num_slots} request "
            f"slots, up to {self.table_width * self.block_size} rows per request"
        )


def row_bytes(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Bytes of one cached text row (K and V of every draft layer, plus bookkeeping)."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * num_kv_heads * head_dim * elem + _BOOKKEEPING_BYTES_PER_ROW
