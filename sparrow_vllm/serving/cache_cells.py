"""Where a drafting step's rows go in the paged TextKVCache (its device-side math; only
text_kv_cache.py calls it): the cell (block, offset) of
each committed row and of each draft-chain row, computed on the device from the block
table (no host read)."""

from __future__ import annotations

import torch

from sparrow_vllm.kernels.reference import paged_cells


def commit_targets(
    # [num_slots + 1, M] physical block of each table column
    block_table: torch.Tensor,
    # [B] table row (slot) of each request
    slot_ids: torch.Tensor,
    # [B] rows each request committed before this write
    prefix_lens: torch.Tensor,
    # [B] first absolute row each request still caches (after this step's allocation)
    first_rows: torch.Tensor,
    # [R] request of each row
    req: torch.Tensor,
    # [R] bool, the row is committed (a request's committed rows in sequence order)
    commit: torch.Tensor,
    block_size: int,
    trash_block: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where one write stores each row: (block [R], offset [R], committed rows per
    request [B]). The k-th committed row of request b this step is absolute row
    prefix_lens[b] + k. Rows below the request's first cached row (given up when blocks ran
    out) go to the trash block like uncommitted rows. The allocator backs every row from
    first_rows[b] up with a distinct block and spans fewer than M columns, so no two rows
    of one write land in the same cell of a real block (an indexed store with duplicate
    indices leaves the winner undefined on CUDA)."""
    n_commit = torch.zeros_like(prefix_lens)
    n_commit.scatter_add_(0, req, commit.long())
    # absolute row = cached rows + rank among this request's committed rows
    rank = torch.cumsum(commit.long(), 0) - 1 - cumsum0(n_commit)[:-1][req]
    row = prefix_lens[req] + rank
    stored = commit & (row >= first_rows[req])
    block, offset = _cells(block_table, slot_ids[req], row, stored, block_size, trash_block)
    return block, offset, n_commit


def scratch_cells(
    # [num_slots + 1, M]
    block_table: torch.Tensor,
    # [B] slot of each request
    slot_ids: torch.Tensor,
    # [B] (or [steps, B]) absolute row of each request's scratch row
    rows: torch.Tensor,
    # [B] first cached row of each request
    first_rows: torch.Tensor,
    block_size: int,
    trash_block: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # ([B] block, [B] offset)
    """Cells of one draft-chain row per request, or of `steps` rows (trash for rows given up)."""
    return _cells(block_table, slot_ids, rows, rows >= first_rows, block_size, trash_block)


def _cells(
    block_table: torch.Tensor, slots: torch.Tensor, rows: torch.Tensor, stored: torch.Tensor,
    block_size: int, trash_block: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(block, offset) of absolute `rows` of `slots`; (trash_block, 0) where not `stored`."""
    block, offset = paged_cells(block_table, slots, rows.clamp(min=0), block_size)
    return torch.where(stored, block.long(), trash_block), torch.where(stored, offset, 0)


def cumsum0(x: torch.Tensor) -> torch.Tensor:
    """[n] -> [n + 1] exclusive prefix sum starting at 0."""
    return torch.nn.functional.pad(torch.cumsum(x, 0), (1, 0))
