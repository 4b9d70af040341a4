"""TextKVCache: the draft's own paged KV cache of text rows.

Layout (what the attention op and its kernel read):

    k, v         [num_layers, num_blocks + 1, S, num_kv_heads, head_dim]   S rows per block
    block_table  [num_slots + 1, M]   physical block of each table column of a request slot
    lengths      [num_slots + 1]      committed text rows per slot (absolute count)
    first_row    [num_slots + 1]      first absolute row still cached (older ones dropped)
    next_seq     [num_slots + 1]      target index of the next row each slot expects
    row_seq      [num_blocks + 1, S]  target sequence index of each stored row
    row_token    [num_blocks + 1, S]  input token id of each stored row (inspection)

Absolute row a of a slot lives in block `block_table[slot, (a // S) % M]` at offset a % S.
The last block and the last slot are trash: rows that must not be stored are written
there, so a decode step needs no data-dependent indexing (no host synchronisation).

Blocks come from one pool sized by the text-row budget, are taken on demand and returned
when a request finishes, is aborted or is rewound. With a window W, whole blocks that no
future query can see are returned as the window moves. The host allocates ahead of each
write from an upper bound of each request's committed rows (exact after any step that
synchronises anyway, and on CUDA refreshed from an asynchronous copy of `lengths`), so a
decode step allocates without reading the device. When the pool runs dry a request
first takes blocks of paused requests, then gives up its own oldest rows, then the
oldest rows of the request holding most blocks: drafts get worse for those requests
(logged once each), outputs stay exact, the server never fails for it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)


@dataclass
class _SlotRows:
    """Host view of one request's rows."""

    req_id: str
    # logical block -> physical block, for every block from first_row's on
    blocks: dict[int, int] = field(default_factory=dict)
    first_row: int = 0
    # committed rows: exact at the last synchronisation (a lower bound) and an upper bound
    known_len: int = 0
    upper_len: int = 0
    starved: bool = False


class TextKVCache:
    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_slots: int,
        table_width: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
        window: int | None = None,
    ) -> None:
        shape = (num_layers, num_blocks + 1, block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.device = self.k.device
        self.num_blocks, self.block_size, self.num_slots = num_blocks, block_size, num_slots
        self.table_width, self.window = table_width, window
        self.trash_block, self.trash_slot = num_blocks, num_slots
        slots = num_slots + 1
        self.block_table = torch.full((slots, table_width), num_blocks, dtype=torch.int32,
                                      device=device)
        self.lengths = torch.zeros(slots, dtype=torch.int64, device=device)
        self.first_row = torch.zeros(slots, dtype=torch.int64, device=device)
        self.next_seq = torch.zeros(slots, dtype=torch.int64, device=device)
        self.row_seq = torch.full((num_blocks + 1, block_size), -1, dtype=torch.int64, device=device)
        self.row_token = torch.full_like(self.row_seq, -1)
        self._free_blocks = list(range(num_blocks - 1, -1, -1))
        self._free_slots = list(range(num_slots - 1, -1, -1))
        # req_id -> slot, least recently used first
        self._slot_of: OrderedDict[str, int] = OrderedDict()
        self._rows: dict[int, _SlotRows] = {}
        self._table_writes: dict[tuple[int, int], int] = {}  # (slot, column) -> block
        self._mirror = _LengthMirror(self.lengths)

    @staticmethod
    def nbytes_for(
        num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
        dtype: torch.dtype,
    ) -> int:
        """Bytes of the K/V blocks (the bookkeeping adds 16 bytes per row)."""
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * (num_blocks + 1) * block_size * num_kv_heads * head_dim * elem

    # ---- requests -----------------------------------------------------------------------

    @property
    def live_requests(self) -> list[str]:
        return list(self._slot_of)

    def slot_of(self, req_id: str) -> int | None:
        return self._slot_of.get(req_id)

    def blocks_held(self, req_id: str) -> int:
        return len(self._rows[self._slot_of[req_id]].blocks)

    @property
    def free_blocks(self) -> int:
        return len(self._free_blocks)

    def prepare(self, req_id: str, seq_start: int, active: set[str], next_seq: list[int]) -> int:
        """The slot of `req_id`, set up for rows starting at target index `seq_start`
        (`next_seq`: the host copy of `self.next_seq`)."""
        slot = self._slot_of.get(req_id)
        if slot is None:
            slot = self._allocate_slot(req_id, active)
        else:
            self._slot_of.move_to_end(req_id)
            if seq_start < next_seq[slot]:
                self._rewind(slot, seq_start)
        return slot

    def release(self, req_id: str) -> None:
        slot = self._slot_of.pop(req_id, None)
        if slot is None:
            return
        state = self._rows.pop(slot)
        self._free_blocks.extend(state.blocks.values())
        self._table_writes = {key: b for key, b in self._table_writes.items() if key[0] != slot}
        self._reset_device(slot)
        self._free_slots.append(slot)

    def committed(self, req_id: str) -> tuple[list[int], list[int]]:
        """(target sequence indices, input token ids) of the rows stored for `req_id`."""
        slot = self._slot_of[req_id]
        length = int(self.lengths[slot])
        first = min(int(self.first_row[slot]), length)
        blocks, offsets = self._cells(slot, torch.arange(first, length, device=self.device))
        return self.row_seq[blocks, offsets].tolist(), self.row_token[blocks, offsets].tolist()

    # ---- allocation ahead of a write ----------------------------------------------------

    def sync(self, slots: list[int], lengths: list[int]) -> None:
        """Exact committed rows of `slots`, read back by a step that synchronised anyway."""
        for slot, length in zip(slots, lengths, strict=True):
            state = self._rows[slot]
            state.known_len = state.upper_len = length
        self._mirror.forget(slots)

    def reserve(
        self, slots: list[int], new_rows: list[int], scratch_rows: int, active: set[str]
    ) -> None:
        """Back with blocks every row the coming write may touch: up to `new_rows[i]`
        committed rows of slot `slots[i]` plus `scratch_rows` draft-chain rows after them.
        Host work only, plus one small non-blocking copy when the block table changes."""
        self._mirror.refresh(self._rows)
        for slot, rows in zip(slots, new_rows, strict=True):
            state = self._rows[slot]
            end = state.upper_len + rows + scratch_rows
            if end - self._needed_from(state) > (self.table_width - 1) * self.block_size:
                # the bound drifted further than the table's slack (device copies of the
                # lengths have not landed for many steps): read the exact count once
                logger.debug("Sparrow draft cache: reading row counts back for slot %d", slot)
                state.known_len = state.upper_len = int(self.lengths[slot])
                end = state.upper_len + rows + scratch_rows
            if state.first_row > state.known_len == state.upper_len:
                # rows were given up up to past its end (out of blocks): cache again from
                # its exact current length on
                state.first_row = state.known_len
                self.first_row[slot] = state.known_len
            self._drop_unseen(slot, state, end)
            self._back(slot, state, end, active)
            state.upper_len += rows
        self._flush()

    def after_write(self) -> None:
        """Start the asynchronous read-back of `lengths` the next reserve() may use."""
        self._mirror.snapshot()

    # ---- internals ----------------------------------------------------------------------

    def _cells(self, slot: int, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        columns = (rows // self.block_size) % self.table_width
        return self.block_table[slot, columns].long(), rows % self.block_size

    def _needed_from(self, state: _SlotRows) -> int:
        """The first row a coming query may read."""
        if self.window is None:
            return state.first_row
        return max(state.first_row, state.known_len - self.window + 1)

    def _drop_unseen(self, slot: int, state: _SlotRows, end: int) -> None:
        """Return blocks no query can see any more: behind the window, or more than the
        block table can address below `end`."""
        keep_from = max(self._needed_from(state), end - (self.table_width - 1) * self.block_size)
        self._set_first_row(slot, state, keep_from)

    def _set_first_row(self, slot: int, state: _SlotRows, row: int) -> None:
        first_block = row // self.block_size
        for logical in [j for j in state.blocks if j < first_block]:
            self._free_block(slot, state, logical)
        if row > state.first_row:
            state.first_row = row
            self.first_row[slot] = row

    def _free_block(self, slot: int, state: _SlotRows, logical: int) -> None:
        self._free_blocks.append(state.blocks.pop(logical))
        self._table_writes[(slot, logical % self.table_width)] = self.trash_block

    def _back(self, slot: int, state: _SlotRows, end: int, active: set[str]) -> None:
        """Allocate the missing blocks of rows [first_row, end), newest first; rows that
        cannot be backed are given up (first_row moves past them)."""
        logical = (end - 1) // self.block_size
        while logical >= state.first_row // self.block_size:
            if logical not in state.blocks:
                block = self._take_block(slot, state, logical, active)
                if block is None:
                    self._starve(slot, state, (logical + 1) * self.block_size)
                    return
                state.blocks[logical] = block
                self._table_writes[(slot, logical % self.table_width)] = block
            logical -= 1

    def _take_block(self, slot: int, state: _SlotRows, logical: int, active: set[str]) -> int | None:
        if not self._free_blocks:
            self._reclaim(slot, state, logical, active)
        return self._free_blocks.pop() if self._free_blocks else None

    def _reclaim(self, slot: int, state: _SlotRows, logical: int, active: set[str]) -> None:
        """Free at least one block: a paused request's rows, else the oldest block of a
        request holding more blocks than this one, else this request's oldest block below
        `logical`, else any request's oldest block (never a block its coming write needs)."""
        paused = next((r for r in self._slot_of if r not in active), None)
        if paused is not None:
            logger.warning(
                "Sparrow draft cache out of blocks: dropping the cached rows of paused request "
                "%s (its output stays exact; its acceptance may drop after it resumes)", paused,
            )
            self.release(paused)
            return
        donors = sorted(((len(s.blocks), d) for d, s in self._rows.items() if d != slot), reverse=True)
        richer = [d for n, d in donors if n > len(state.blocks) + 1]
        if richer and self._give_oldest(richer[0]):
            return
        older = [j for j in state.blocks if j < logical]
        if older:
            self._starve(slot, state, (min(older) + 1) * self.block_size)
            return
        for _, donor in donors:
            if self._give_oldest(donor):
                return

    def _give_oldest(self, slot: int) -> bool:
        """Free `slot`'s oldest block if its coming write cannot need it."""
        rows = self._rows[slot]
        oldest = min(rows.blocks, default=None)
        if oldest is None or (oldest + 1) * self.block_size > rows.known_len:
            return False
        self._starve(slot, rows, (oldest + 1) * self.block_size)
        return True

    def _starve(self, slot: int, state: _SlotRows, first_row: int) -> None:
        if not state.starved:
            state.starved = True
            logger.warning(
                "Sparrow draft cache out of blocks: request %s drafts without its text rows "
                "before row %d (output stays exact; its acceptance may drop). Raise "
                "text_row_budget in --speculative-config to avoid this.",
                state.req_id, first_row,
            )
        self._set_first_row(slot, state, first_row)

    def _flush(self) -> None:
        if not self._table_writes:
            return
        (slots, columns), blocks = zip(*self._table_writes, strict=True), self._table_writes.values()
        index = _to_device([*slots, *columns, *blocks], self.device).view(3, -1)
        self.block_table[index[0], index[1]] = index[2].to(torch.int32)
        self._table_writes.clear()

    def _allocate_slot(self, req_id: str, active: set[str]) -> int:
        if not self._free_slots:
            victim = next((r for r in self._slot_of if r not in active), None)
            if victim is None:
                raise RuntimeError(
                    f"Sparrow draft cache: all {self.num_slots} slots belong to requests "
                    "of this batch; the cache needs more slots than max_num_seqs"
                )
            logger.warning(
                "Sparrow draft cache full: dropping the cached rows of paused request %s "
                "(its output stays exact; its acceptance may drop after it resumes)",
                victim,
            )
            self.release(victim)
        slot = self._free_slots.pop()
        self._slot_of[req_id] = slot
        self._rows[slot] = _SlotRows(req_id)
        self._reset_device(slot)
        return slot

    def _reset_device(self, slot: int) -> None:
        self.lengths[slot] = 0
        self.first_row[slot] = 0
        self.next_seq[slot] = 0
        self.block_table[slot] = self.trash_block
        self._mirror.forget([slot])

    def _rewind(self, slot: int, seq_start: int) -> None:
        """Forget rows at target index >= seq_start (preemption, recompute)."""
        state = self._rows[slot]
        length = int(self.lengths[slot])
        first = min(state.first_row, length)
        blocks, offsets = self._cells(slot, torch.arange(first, length, device=self.device))
        keep = int((self.row_seq[blocks, offsets] < seq_start).sum())
        state.known_len = state.upper_len = first + keep
        self.lengths[slot] = first + keep
        self.next_seq[slot] = seq_start
        last_block = (first + keep - 1) // self.block_size if keep else -1
        for logical in [j for j in state.blocks if j > last_block]:
            self._free_block(slot, state, logical)
        self._flush()
        self._mirror.forget([slot])


class _LengthMirror:
    """A host copy of `lengths` taken after each write without waiting for the device (a
    non-blocking copy into pinned memory and an event on CUDA; the tensor itself on CPU).
    reserve() uses the latest copy, once it has landed, to make each request's bound exact
    again; slots changed on the host since the copy are left out."""

    def __init__(self, lengths: torch.Tensor) -> None:
        self.lengths = lengths
        self.on_cuda = lengths.device.type == "cuda"
        self.host = torch.zeros(lengths.shape, dtype=lengths.dtype, pin_memory=self.on_cuda)
        self.event = torch.cuda.Event() if self.on_cuda else None
        self.valid: set[int] = set()  # slots the latest copy still describes

    def snapshot(self) -> None:
        if self.event is not None:
            self.host.copy_(self.lengths, non_blocking=True)
            self.event.record()
        self.valid = set(range(self.lengths.shape[0]))

    def forget(self, slots: list[int]) -> None:
        self.valid.difference_update(slots)

    def refresh(self, rows: dict[int, _SlotRows]) -> None:
        if not self.valid or (self.event is not None and not self.event.query()):
            return
        values = (self.host if self.event is not None else self.lengths).tolist()
        for slot in self.valid & rows.keys():
            rows[slot].known_len = rows[slot].upper_len = values[slot]
        self.valid = set()


def _to_device(values: list[int], device: torch.device) -> torch.Tensor:
    """A small host list on `device` without a blocking copy."""
    host = torch.tensor(values, dtype=torch.int64)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host
