"""TextCacheLayout: the device side of the draft's paged cache of text rows (the host
allocator of its blocks is TextKVCache, text_kv_cache.py).

Layout (what the attention op and its kernel read):

    k, v         [num_layers, num_blocks + 1, S, num_kv_heads, head_dim]   S rows per block
    block_table  [num_slots + 1, M]   physical block of each table column of a request slot
    lengths      [num_slots + 1]      committed text rows per slot (absolute count)
    first_row    [num_slots + 1]      first absolute row still cached (older ones dropped)
    next_seq     [num_slots + 1]      target index of the next row each slot expects
    row_seq      [num_blocks + 1, S]  target sequence index of each stored row
    row_token    [num_blocks + 1, S]  input token id of each stored row (inspection)
    hole_count   []                   requests whose rows had a gap, ever (note_holes)

Absolute row a of a slot lives in block `block_table[slot, (a // S) % M]` at offset a % S
(the one address formula, `paged_cells` of kernels/reference.py). The last block and the
last slot are trash: rows that must not be stored are written there, so a decode step
needs no data-dependent indexing (no host synchronisation).

Every write here runs on the device and reads nothing back: the cell (block, offset) of
each committed row and of each draft-chain row is computed on the device from the block
table (commit_targets, _cells). The host's bookkeeping (which block a table column holds,
reference counts, out-of-blocks policy) is the allocator's, in text_kv_cache.py.
"""

from __future__ import annotations

import torch

from sparrow_vllm.kernels.reference import paged_cells


class TextCacheLayout:
    def __init__(
        self, num_layers: int, num_blocks: int, block_size: int, num_slots: int, table_width: int,
        num_kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device | str,
    ) -> None:
        shape = (num_layers, num_blocks + 1, block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.device = self.k.device
        self.block_size, self.table_width = block_size, table_width
        self.trash_block, self.trash_slot = num_blocks, num_slots
        slots = num_slots + 1
        self.block_table = torch.full((slots, table_width), num_blocks, dtype=torch.int32,
                                      device=device)
        self.lengths = torch.zeros(slots, dtype=torch.int64, device=device)
        self.first_row = torch.zeros(slots, dtype=torch.int64, device=device)
        self.next_seq = torch.zeros(slots, dtype=torch.int64, device=device)
        self.row_seq = torch.full((num_blocks + 1, block_size), -1, dtype=torch.int64, device=device)
        self.row_token = torch.full_like(self.row_seq, -1)
        self.hole_count = torch.zeros((), dtype=torch.int64, device=device)

    @property
    def nbytes(self) -> int:
        """Device bytes the cache holds (K/V pools, row bookkeeping, block table)."""
        tensors = (self.k, self.v, self.row_seq, self.row_token, self.block_table, self.lengths)
        return sum(t.nbytes for t in tensors)

    # ---- reads ----------------------------------------------------------------------------

    def device_view(self) -> torch.Tensor:  # [2 * (num_slots + 1) + 1] int64
        """What the host reads back asynchronously after each write: row counts, first
        cached rows and the hole counter."""
        return torch.cat((self.lengths, self.first_row, self.hole_count.view(1)))

    def retiring_view(
        self,
        slot: int,
        # [N] int64 blocks of the slot, from row 0 on
        blocks: torch.Tensor,
    ) -> torch.Tensor:  # [1 + 2 * N * S] int64
        """What the host reads back of a released slot: its row count, then its blocks'
        rows' sequence indices and input tokens."""
        return torch.cat((self.lengths[slot].view(1), self.row_seq[blocks].flatten(),
                          self.row_token[blocks].flatten()))

    def committed(self, slot: int) -> tuple[list[int], list[int]]:
        """(target sequence indices, input token ids) of the rows stored for `slot` (reads
        the device)."""
        length = int(self.lengths[slot])
        first = min(int(self.first_row[slot]), length)
        rows = torch.arange(first, length, device=self.device)
        block, offset = paged_cells(self.block_table, slot, rows, self.block_size)
        block = block.long()
        return self.row_seq[block, offset].tolist(), self.row_token[block, offset].tolist()

    # ---- a step's writes ------------------------------------------------------------------

    def note_holes(
        self,
        # [B] pool slot per request
        slots: torch.Tensor,
        # [B] target index of each request's first row this step
        seq_start: torch.Tensor,
    ) -> None:
        """Before a write: a request whose rows start past the next row its slot expects
        missed a step (the runner ran the target without the drafter). Its cached rows
        end before the gap, so drafting over them would read a wrong context: they are
        dropped (first_row moves to the current count) and the request drafts from the
        rows after the gap on, as after a prefix-cache hit. On the device, no sync;
        counted in `hole_count` and logged when its copy lands
        (TextKVCache._apply_reading)."""
        hole = seq_start > self.next_seq[slots]
        lengths = self.lengths[slots]
        self.first_row[slots] = torch.where(hole, torch.maximum(lengths, self.first_row[slots]),
                                            self.first_row[slots])
        self.hole_count += hole.sum()

    def commit_rows(
        self,
        # per layer, ([R, Hkv, D] keys, [R, Hkv, D] values) of a forward's rows
        records: list[tuple[torch.Tensor, torch.Tensor]],
        # [B] slot of each request
        slot_ids: torch.Tensor,
        # [B] rows each request committed before this write
        prefix_lens: torch.Tensor,
        # [R] request of each row
        req: torch.Tensor,
        # [R] bool, the row is a verified text row (committed rows first per request)
        commit: torch.Tensor,
        # [R] target sequence index of each row
        seq: torch.Tensor,
        # [R] input token of each row
        tokens: torch.Tensor,
    ) -> None:
        """Write committed rows to their cells (backed by TextKVCache.reserve beforehand),
        the others to the trash block, and count them in `lengths`."""
        block, offset, n_commit = commit_targets(
            self.block_table, slot_ids, prefix_lens, self.first_row[slot_ids], req, commit,
            self.block_size, self.trash_block)
        self.write_rows(records, block, offset)
        self.row_seq[block, offset] = seq
        self.row_token[block, offset] = tokens
        self.lengths.scatter_add_(0, slot_ids, n_commit)

    def scratch_cells(
        self,
        # [B] slot of each request
        slots: torch.Tensor,
        # [B] (or [steps, B]) absolute row of each request's scratch row
        rows: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (block, offset), shaped as rows
        """Cells of draft-chain rows: never committed, overwritten by the next step (trash
        for rows given up)."""
        return _cells(self.block_table, slots, rows, rows >= self.first_row[slots], self.block_size,
                      self.trash_block)

    def write_rows(
        self,
        records: list[tuple[torch.Tensor, torch.Tensor]],
        # [R] block and [R] offset of each row
        block: torch.Tensor,
        offset: torch.Tensor,
    ) -> None:
        for layer, (k_new, v_new) in enumerate(records):
            self.k[layer, block, offset] = k_new
            self.v[layer, block, offset] = v_new

    def expect_next(
        self,
        # [B] slot of each request
        slots: torch.Tensor,
        # [B] target index of the next row each request's next step starts at
        seq: torch.Tensor,
    ) -> None:
        self.next_seq[slots] = seq

    # ---- the allocator's writes -------------------------------------------------------------

    def apply_allocation(
        self,
        # [3 * writes + 2 * floors] int64: the table writes' slots, columns and blocks, then
        # the raised first rows' slots and rows (one host-to-device copy)
        packed: torch.Tensor,
        writes: int,
        floors: int,
    ) -> None:
        """The block table columns the allocator changed, and the first rows it raised
        (never below the device's own: note_holes may have raised them further)."""
        if writes:
            table = packed[: 3 * writes].view(3, -1)
            self.block_table[table[0], table[1]] = table[2].to(torch.int32)
        if floors:
            raised = packed[3 * writes:].view(2, -1)
            self.first_row[raised[0]] = torch.maximum(self.first_row[raised[0]], raised[1])

    def set_length(self, slot: int, rows: int) -> None:
        self.lengths[slot] = rows

    def cap_length(self, slot: int, rows: int) -> None:
        self.lengths[slot] = torch.clamp(self.lengths[slot], max=rows)

    def set_first_row(self, slot: int, row: int) -> None:
        self.first_row[slot] = row

    def copy_block(self, src: int, dst: int) -> None:
        if src == dst:
            return
        for pool in (self.k, self.v):
            pool[:, dst] = pool[:, src]
        for rows in (self.row_seq, self.row_token):
            rows[dst] = rows[src]

    def reset(self, slot: int) -> None:
        """A slot starts empty: no rows, every table column on the trash block."""
        self.lengths[slot] = 0
        self.first_row[slot] = 0
        self.next_seq[slot] = 0
        self.block_table[slot] = self.trash_block

    def rewind(
        self,
        # [R] slots of resumed requests
        slots: torch.Tensor,
        # [R] target index each one is recomputed from
        starts: torch.Tensor,
    ) -> None:
        """Forget, on the device, the rows at target index >= starts (preemption then
        recompute): rows are stored in sequence order, so they are the newest ones."""
        span = self.table_width * self.block_size  # at most this many rows are cached
        length = self.lengths[slots]
        first = torch.minimum(self.first_row[slots], length)
        rows = length[:, None] - 1 - torch.arange(span, device=self.device)  # newest first
        columns = (rows.clamp(min=0) // self.block_size) % self.table_width
        blocks = self.block_table[slots[:, None], columns].long()
        seq = self.row_seq[blocks, rows.clamp(min=0) % self.block_size]
        drop = (rows >= first[:, None]) & (seq >= starts[:, None])
        self.lengths[slots] = length - drop.sum(1)
        self.next_seq[slots] = starts


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


def _cells(
    # [num_slots + 1, M]
    block_table: torch.Tensor,
    # [...] slot of each row (broadcasts with rows)
    slots: torch.Tensor,
    # [...] absolute rows
    rows: torch.Tensor,
    # [...] bool, the row is stored (else it goes to the trash block)
    stored: torch.Tensor,
    block_size: int,
    trash_block: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(block, offset) of absolute `rows` of `slots`; (trash_block, 0) where not `stored`."""
    block, offset = paged_cells(block_table, slots, rows.clamp(min=0), block_size)
    return torch.where(stored, block.long(), trash_block), torch.where(stored, offset, 0)


def cumsum0(
    # [n]
    x: torch.Tensor,
) -> torch.Tensor:  # [n + 1]
    """Exclusive prefix sum starting at 0."""
    return torch.nn.functional.pad(torch.cumsum(x, 0), (1, 0))
