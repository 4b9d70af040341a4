"""TextKVCache: the draft's own paged KV cache of text rows, as the host allocator of the
blocks of its device layout (`layout`, a TextCacheLayout: the tensors the attention op
reads and every write to them, text_cache_layout.py).

(Past 400 lines: allocation, out-of-blocks policy and sharing keep one invariant together,
each block's reference count equals its holders, requests and reusable rows.)

Blocks come from one pool sized by the text-row budget, are taken on demand and returned
when a request finishes, is aborted or is rewound. With a window W, whole blocks that no
future query can see are returned as the window moves. The host allocates ahead of each
write from an upper bound of each request's committed rows (exact after any step that
synchronises anyway, and on CUDA refreshed from an asynchronous copy of `lengths`), so a
decode step allocates without reading the device. When the pool runs dry a request
first takes blocks of paused requests, then gives up its own oldest rows, then the
oldest rows of the request holding most blocks: drafts get worse for those requests
(logged once each), outputs stay exact, the server never fails for it.

Rows outlive their request when its content is known (`register_content`): a finished
request's blocks stay in the pool as reusable rows (text_row_reuse.py), shared by
reference count with later requests whose prefix vLLM served from its prefix cache, and
are evicted least recently used before any live request loses rows. A block shared with
another holder is copied before a request writes into it.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from sparrow_vllm.serving.host_mirror import AsyncRead, LengthMirror, to_device
from sparrow_vllm.serving.text_cache_layout import TextCacheLayout
from sparrow_vllm.serving.text_cache_plan import TextCachePlan
from sparrow_vllm.serving.text_row_reuse import (
    RequestContent,
    ReusableRows,
    ReuseIndex,
    matching_rows,
    row_keys,
)

logger = logging.getLogger(__name__)


@dataclass
class _SlotRows:
    """Host view of one request's rows."""

    req_id: str
    # logical block -> physical block, for every block from first_row's on
    blocks: dict[int, int] = field(default_factory=dict)
    # lowest and highest logical block held (hi < lo: none). The blocks held form one run
    # [lo, hi] except after rows past a request's end were given up (rare, see _back), so
    # reserve() looks only at the blocks a step adds or drops, not at the whole context
    lo: int = 0
    hi: int = -1
    # logical block -> when it was taken (cache-wide count): blocks are freed oldest taken
    # first, the order `blocks` iterates in, without iterating it
    taken: dict[int, int] = field(default_factory=dict)
    first_row: int = 0
    # committed rows: exact at the last synchronisation (a lower bound) and an upper bound
    known_len: int = 0
    upper_len: int = 0
    # rows reserve() ever added to the upper bound (the mirror's copies count from it)
    reserved: int = 0
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
        reuse_rows: bool = True,
    ) -> None:
        self.layout = TextCacheLayout(num_layers, num_blocks, block_size, num_slots, table_width,
                                      num_kv_heads, head_dim, dtype, device)
        self.device = self.layout.device
        self.num_blocks, self.block_size, self.num_slots = num_blocks, block_size, num_slots
        self.table_width, self.window = table_width, window
        self._free_blocks = list(range(num_blocks - 1, -1, -1))
        self._free_slots = list(range(num_slots - 1, -1, -1))
        # req_id -> slot, least recently used first
        self._slot_of: OrderedDict[str, int] = OrderedDict()
        self._rows: dict[int, _SlotRows] = {}
        self._table_writes: dict[tuple[int, int], int] = {}  # (slot, column) -> block
        # slot -> row its device first_row is raised to (at least) at the next _flush: one
        # device op per step, not one per request whose window moved
        self._first_row_floors: dict[int, int] = {}
        self._mirror = LengthMirror(self.layout.lengths)
        self.starved_requests = 0  # requests that gave up rows for lack of blocks, ever
        # requests whose rows had a gap (a step the drafter never saw), counted on the
        # device by layout.note_holes() and read back with the row counts; the last reading
        self.holed_requests = 0
        # preempted requests (V1 keeps their state to resume them): the only ones whose
        # rows may be dropped whole when blocks or slots run out
        self._paused: set[str] = set()
        self._refs = [0] * num_blocks  # holders (requests, reusable entries) of each block
        self._holds = 0  # blocks requests ever took (orders each request's `taken`)
        # token ids -> per token, visual or not: rows whose input token is visual are never
        # stored (the drafter sets the family's rule; row keys need it)
        self.visual_token_mask: Callable[[Sequence[int]], list[bool]] = lambda ids: [False] * len(ids)
        self.reuse_rows = reuse_rows
        self._reuse = ReuseIndex()
        self._content: dict[str, RequestContent] = {}
        # released requests whose rows may become reusable: (content, rows, blocks from
        # row 0 on, their row count and rows' sequence indices and tokens on the way back)
        self._retiring: list[tuple[RequestContent, _SlotRows, list[int], AsyncRead]] = []
        self._writes = 0  # writes so far (after_write calls): when asynchronous reads land

    @classmethod
    def from_plan(cls, plan: TextCachePlan, device: torch.device | str, window: int | None = None,
                  reuse_rows: bool = True) -> TextKVCache:
        """The cache a start-up plan lays out (serving/text_cache_plan.py)."""
        return cls(plan.num_layers, plan.num_blocks, plan.block_size, plan.num_slots, plan.table_width,
                   plan.num_kv_heads, plan.head_dim, plan.dtype, device, window=window, reuse_rows=reuse_rows)

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

    @property
    def reused_rows(self) -> int:
        """Rows handed to later requests after a prefix-cache hit, ever (a host count)."""
        return self._reuse.reused_rows

    @property
    def nbytes(self) -> int:
        """Device bytes the cache holds (K/V pools, row bookkeeping, block table)."""
        return self.layout.nbytes

    def stats(self) -> dict[str, int]:
        """Pool size and use, for logs and tests."""
        return {
            "num_blocks": self.num_blocks,
            "block_size": self.block_size,
            "free_blocks": len(self._free_blocks),
            "live_requests": len(self._slot_of),
            "starved_requests": self.starved_requests,
            "reusable_entries": len(self._reuse.entries),
            "reused_rows": self._reuse.reused_rows,
            "holed_requests": int(self.layout.hole_count),  # reads the device counter
        }

    def register_content(self, req_id: str, content: RequestContent) -> None:
        """The prompt of a request vLLM just added: keys its rows for reuse."""
        if self.reuse_rows:
            self._content[req_id] = content

    def prepare_batch(
        self,
        req_ids: Sequence[str],
        # [B] int64 target index of each request's first row this step
        seq_start: torch.Tensor,
        # host: seq_start, exact for a request's first step (an upper bound later on)
        seq_start_host: Sequence[int],
        resumed: set[str],
    ) -> tuple[list[int], torch.Tensor]:
        """The pool slots of a batch whose requests changed ([B] host list and device
        tensor), without reading the device: a new request gets a slot (and the reusable
        rows matching its prefix-cache hit); a `resumed` one (preempted, now recomputed) is
        rewound on the device to the rows before its first row this step."""
        active = set(req_ids)
        # a prefix-cache hit may match rows released in the last steps: wait for their
        # copies then (they were enqueued a step or two ago; never a read of the device)
        hit = any(start > 0 and r in self._content and r not in self._slot_of
                  for r, start in zip(req_ids, seq_start_host, strict=True))
        self.retire_released(wait=hit)
        slots, fresh, rewound = [], [], []
        for b, (req_id, start) in enumerate(zip(req_ids, seq_start_host, strict=True)):
            self._paused.discard(req_id)
            slot = self._slot_of.get(req_id)
            if slot is None:
                slot = self._allocate_slot(req_id, active)
                fresh.append(b)
                # rows before seq_start come from vLLM's prefix cache: adopted when
                # reusable, else absent by design (not a hole)
                if start > 0 and req_id in self._content:
                    self._adopt_reusable_rows(slot, self._rows[slot], self._content[req_id], start, active)
            else:
                self._slot_of.move_to_end(req_id)
                if req_id in resumed:
                    rewound.append(b)
            slots.append(slot)
        slot_ids = to_device(slots, self.device)
        if fresh or rewound:
            index = to_device([*fresh, *rewound], self.device)
            fresh_idx, rewound_idx = index[: len(fresh)], index[len(fresh):]
            self.layout.expect_next(slot_ids[fresh_idx], seq_start[fresh_idx])
            if rewound:
                self.layout.rewind(slot_ids[rewound_idx], seq_start[rewound_idx])
                for b in rewound:
                    self._rewound_on_device(slots[b], active)
        self._flush()
        return slots, slot_ids

    def pause(self, req_ids: set[str]) -> None:
        """Requests vLLM preempted but keeps (V1): they resume later and are recomputed,
        so theirs are the rows to give up first when the pool or the slots run out."""
        self._paused.update(r for r in req_ids if r in self._slot_of)

    def _apply_reading(self, values: list[int], slots: list[int]) -> None:
        """A landed copy of the device's view (`layout.device_view`), for the `slots` it
        still describes: rows layout.note_holes() gave up are freed on the host, and new
        holes logged."""
        width = self.num_slots + 1
        first_rows, holes = values[width: 2 * width], values[-1]
        for slot in slots:
            state = self._rows[slot]
            if first_rows[slot] > state.first_row:
                self._set_first_row(slot, state, first_rows[slot])
        if holes > self.holed_requests:
            logger.warning(
                "Sparrow draft cache: %d request(s) missed a step's text rows (vLLM ran the "
                "target without the drafter); each drafts from the rows after the gap on "
                "(output stays exact; acceptance drops until its window refills). %d so far.",
                holes - self.holed_requests, holes,
            )
            self.holed_requests = holes

    def release(self, req_id: str, keep_rows: bool = True) -> None:
        """A request finished, was aborted or preempted: free its slot; its rows become
        reusable (at the next `retire_released`) when its content is known."""
        self._paused.discard(req_id)
        slot = self._slot_of.pop(req_id, None)
        content = self._content.pop(req_id, None)
        if slot is None:
            return
        state = self._rows.pop(slot)
        blocks = [state.blocks.get(j) for j in range(state.hi + 1)]
        if keep_rows and content is not None and state.first_row == 0 and state.blocks and None not in blocks:
            # its row count and rows come back without waiting; retired once they landed
            values = self.layout.retiring_view(slot, to_device(blocks, self.device))
            self._retiring.append((content, state, blocks, AsyncRead(values, self._writes)))
        else:
            for block in state.blocks.values():
                self._unref(block)
        self._table_writes = {key: b for key, b in self._table_writes.items() if key[0] != slot}
        self._reset_device(slot)
        self._free_slots.append(slot)

    def retire_released(self, wait: bool = False) -> None:
        """Turn released requests' rows into reusable entries once their asynchronous
        read-back has landed (MIRROR_LAG writes after the release: no wait), or all of
        them now (`wait`: waits for copies enqueued less than MIRROR_LAG writes ago)."""
        while self._retiring and (wait or self._retiring[0][3].ready_at <= self._writes):
            content, state, blocks, read = self._retiring.pop(0)
            values = read.values()
            length, cells = values[0], len(blocks) * self.block_size
            self._retire(content, state, blocks, length, values[1: 1 + length],
                         values[1 + cells: 1 + cells + length])

    def committed(self, req_id: str) -> tuple[list[int], list[int]]:
        """(target sequence indices, input token ids) of the rows stored for `req_id`."""
        return self.layout.committed(self._slot_of[req_id])

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
        reading = self._mirror.refresh(self._rows)
        if reading is not None:
            self._apply_reading(*reading)
        self.retire_released()
        for slot, rows in zip(slots, new_rows, strict=True):
            state = self._rows[slot]
            end = state.upper_len + rows + scratch_rows
            if end - self._needed_from(state) > (self.table_width - 1) * self.block_size:
                # the bound drifted further than the table's slack (device copies of the
                # lengths have not landed for many steps): read the exact count once
                logger.debug("Sparrow draft cache: reading row counts back for slot %d", slot)
                state.known_len = state.upper_len = int(self.layout.lengths[slot])
                self._mirror.forget([slot])
                end = state.upper_len + rows + scratch_rows
            if state.first_row > state.known_len == state.upper_len:
                # rows were given up up to past its end (out of blocks): cache again from
                # its exact current length on
                state.first_row = state.known_len
                # lowered on the device too: known_len is the exact count, at or above any
                # gap note_holes() marked, so no row before a gap becomes visible
                self._first_row_floors.pop(slot, None)
                self.layout.set_first_row(slot, state.known_len)
            self._drop_unseen(slot, state, end)
            self._back(slot, state, end, active)
            state.upper_len += rows
            state.reserved += rows
        self._flush()

    def visible_rows_bounds(self, slots: list[int], extras: tuple[int, ...]) -> list[int]:
        """Host upper bounds of the cached rows any query of `slots` sees, one per extra:
        when each slot has up to that many rows more than its reserved ones (the draft
        chain's scratch rows)."""
        widest = max((self._rows[s].upper_len - self._rows[s].first_row for s in slots), default=0)
        cap = None if self.window is None else self.window - 1
        return [max(0, widest + extra if cap is None else min(widest + extra, cap)) for extra in extras]

    def after_write(self) -> None:
        """Start the asynchronous read-back of `lengths` a later reserve() uses."""
        self._writes += 1
        self._mirror.snapshot(self._rows, self.layout.device_view())

    # ---- reuse ----------------------------------------------------------------------------

    def _retire(
        self, content: RequestContent, state: _SlotRows, block_list: list[int], length: int,
        seq: list[int], tokens: list[int],
    ) -> None:
        """`block_list`: the request's blocks from row 0 on; `seq` / `tokens`: its first
        `length` rows' target indices and input tokens."""
        rows = 0
        if length:
            prefilled = list(content.token_ids)
            # generated tokens are the input tokens of the rows past the prefilled ones
            generated = [t for s, t in zip(seq, tokens, strict=True) if s >= len(prefilled) - 1]
            visual = self.visual_token_mask(prefilled) + [False] * len(generated)
            keys = row_keys(prefilled + generated, content.mm_items, visual,
                            len(prefilled) + len(generated), content.namespace)
            rows = matching_rows(seq, keys)
        keep = -(-rows // self.block_size)
        for logical, block in state.blocks.items():
            if logical >= keep:
                self._unref(block)
        if rows:
            self._reuse.add(ReusableRows(block_list[:keep], rows, [k for _, k in keys[:rows]]))

    def _adopt_reusable_rows(
        self, slot: int, state: _SlotRows, content: RequestContent, seq_start: int, active: set[str]
    ) -> None:
        """Start a request whose first `seq_start` target rows came from vLLM's prefix
        cache with the longest run of reusable rows matching the tokens it is prefilled with."""
        keys = row_keys(content.token_ids, content.mm_items,
                        self.visual_token_mask(content.token_ids), seq_start, content.namespace)
        match = self._reuse.longest_match(keys)
        if match is None:
            return
        entry, rows = match
        full, partial = divmod(rows, self.block_size)
        for logical in range(full):
            self._refs[entry.blocks[logical]] += 1
            self._hold(slot, state, logical, entry.blocks[logical])
        if partial:
            copy = self._take_block(slot, state, full, active)
            if copy is None:
                rows = full * self.block_size
            else:
                self.layout.copy_block(entry.blocks[full], copy)
                self._hold(slot, state, full, copy)
        state.known_len = state.upper_len = rows
        self.layout.set_length(slot, rows)
        self._reuse.reused_rows += rows
        self._flush()

    def _own(self, slot: int, state: _SlotRows, logical: int, active: set[str]) -> bool:
        """Make `logical` a block only this request holds before it writes into it."""
        block = state.blocks[logical]
        if self._refs[block] == 1:
            return True
        copy = self._take_block(slot, state, logical, active)
        if copy is None:
            return False
        self.layout.copy_block(block, copy)
        self._unref(block)
        self._hold(slot, state, logical, copy)
        return True

    # ---- internals ----------------------------------------------------------------------

    def _hold(self, slot: int, state: _SlotRows, logical: int, block: int) -> None:
        if logical not in state.blocks:
            if not state.blocks:
                state.lo = state.hi = logical
            else:
                state.lo, state.hi = min(state.lo, logical), max(state.hi, logical)
            state.taken[logical] = self._holds
            self._holds += 1
        state.blocks[logical] = block
        self._table_writes[(slot, logical % self.table_width)] = block

    def _unref(self, block: int) -> None:
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._free_blocks.append(block)

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
        below = [j for j in range(state.lo, min(first_block, state.hi + 1)) if j in state.blocks]
        below.sort(key=state.taken.__getitem__)
        for logical in below:
            self._free_block(slot, state, logical)
        if row > state.first_row:
            state.first_row = row
            # never below the device's own (note_holes may have raised it)
            self._first_row_floors[slot] = max(self._first_row_floors.get(slot, row), row)

    def _free_block(self, slot: int, state: _SlotRows, logical: int) -> None:
        self._unref(state.blocks.pop(logical))
        del state.taken[logical]
        self._table_writes[(slot, logical % self.table_width)] = self.layout.trash_block
        if not state.blocks:
            state.lo, state.hi = 0, -1
        elif logical == state.lo:
            while state.lo not in state.blocks:
                state.lo += 1
        elif logical == state.hi:
            while state.hi not in state.blocks:
                state.hi -= 1

    def _back(self, slot: int, state: _SlotRows, end: int, active: set[str]) -> None:
        """Allocate the missing blocks of rows [first_row, end), newest first; rows that
        cannot be backed are given up (first_row moves past them).

        When the blocks held form one run [lo, hi], the missing ones are those above hi
        and below lo: the walk skips the run (while it allocates, the only blocks this
        request can lose are its lowest, so the run stays one). Only after rows past its
        end were given up (reserve() moved first_row back down) can the run have a gap;
        then every block is looked at until the gap fills."""
        one_run = len(state.blocks) == state.hi - state.lo + 1
        logical = (end - 1) // self.block_size
        while logical >= state.first_row // self.block_size:
            if logical in state.blocks:
                logical = state.lo - 1 if one_run else logical - 1
                continue
            block = self._take_block(slot, state, logical, active)
            if block is None:
                self._starve(slot, state, (logical + 1) * self.block_size)
                return
            self._hold(slot, state, logical, block)
            logical -= 1

    def _take_block(self, slot: int, state: _SlotRows, logical: int, active: set[str]) -> int | None:
        """A free block with one holder (the caller), or None."""
        if not self._free_blocks and self._retiring:
            self.retire_released(wait=True)  # rows on their way to reuse go first
        while not self._free_blocks:
            entry = self._reuse.pop_oldest()  # reusable rows go first, oldest first
            if entry is None:
                break
            for block in entry.blocks:
                self._unref(block)
        if not self._free_blocks:
            self._reclaim(slot, state, logical, active)
        if not self._free_blocks:
            return None
        block = self._free_blocks.pop()
        self._refs[block] = 1
        return block

    def _reclaim(self, slot: int, state: _SlotRows, logical: int, active: set[str]) -> None:
        """Free at least one block: a paused (preempted) request's rows, else the oldest
        block of a request holding more blocks than this one, else this request's oldest
        block below `logical`, else any request's oldest block (never a block its coming
        write needs). A live request merely not scheduled this step keeps its rows."""
        paused = self._oldest_paused(active)
        if paused is not None:
            logger.warning(
                "Sparrow draft cache out of blocks: dropping the cached rows of paused request "
                "%s (its output stays exact; its acceptance may drop after it resumes)", paused,
            )
            self.release(paused, keep_rows=False)
            return
        donors = sorted(((len(s.blocks), d) for d, s in self._rows.items() if d != slot), reverse=True)
        richer = [d for n, d in donors if n > len(state.blocks) + 1]
        if richer and self._give_oldest(richer[0]):
            return
        if state.blocks and state.lo < logical:  # its oldest block below `logical`
            self._starve(slot, state, (state.lo + 1) * self.block_size)
            return
        for _, donor in donors:
            if self._give_oldest(donor):
                return

    def _give_oldest(self, slot: int) -> bool:
        """Free `slot`'s oldest block if its coming write cannot need it."""
        rows = self._rows[slot]
        oldest = rows.lo if rows.blocks else None
        if oldest is None or (oldest + 1) * self.block_size > rows.known_len:
            return False
        self._starve(slot, rows, (oldest + 1) * self.block_size)
        return True

    def _starve(self, slot: int, state: _SlotRows, first_row: int) -> None:
        if not state.starved:
            state.starved = True
            self.starved_requests += 1
            logger.warning(
                "Sparrow draft cache out of blocks: request %s drafts without its text rows "
                "before row %d (output stays exact; its acceptance may drop). Raise "
                "text_row_budget in --speculative-config to avoid this.",
                state.req_id, first_row,
            )
        self._set_first_row(slot, state, first_row)

    def _flush(self) -> None:
        writes, floors = self._table_writes, self._first_row_floors
        if not writes and not floors:
            return
        slots, columns = zip(*writes, strict=True) if writes else ((), ())
        index = to_device([*slots, *columns, *writes.values(), *floors, *floors.values()], self.device)
        self.layout.apply_allocation(index, len(writes), len(floors))
        writes.clear()
        floors.clear()

    def _allocate_slot(self, req_id: str, active: set[str]) -> int:
        if not self._free_slots:
            victim = self._oldest_paused(active)
            if victim is None:
                raise RuntimeError(
                    f"Sparrow draft cache: all {self.num_slots} slots belong to requests "
                    "vLLM has not preempted (at most max_num_seqs run at once, and the cache "
                    "has twice as many slots): a request finished or was preempted without "
                    "the drafter being told; this vLLM version's runner is not supported"
                )
            logger.warning(
                "Sparrow draft cache full: dropping the cached rows of paused request %s "
                "(its output stays exact; its acceptance may drop after it resumes)",
                victim,
            )
            self.release(victim, keep_rows=False)
        slot = self._free_slots.pop()
        self._slot_of[req_id] = slot
        self._rows[slot] = _SlotRows(req_id)
        self._reset_device(slot)
        return slot

    def _oldest_paused(self, active: set[str]) -> str | None:
        """The least recently used paused request (never one of this step's batch)."""
        return next((r for r in self._slot_of if r in self._paused and r not in active), None)

    def _reset_device(self, slot: int) -> None:
        self._first_row_floors.pop(slot, None)
        self.layout.reset(slot)
        self._mirror.forget([slot])

    def _rewound_on_device(self, slot: int, active: set[str]) -> None:
        """Host side of `layout.rewind`: its exact row count is unknown until the next copy
        lands, so the lower bound drops to what any rewind keeps; the blocks stay held
        (rows past the new count are rewritten before anything reads them), except that
        a block shared with reusable rows is copied before the request writes into it."""
        state = self._rows[slot]
        state.known_len = min(state.known_len, state.first_row)
        for logical in sorted(state.blocks):
            if self._refs[state.blocks[logical]] > 1 and not self._own(slot, state, logical, active):
                # no block to copy it into: the rows from this block on are given up
                cap = logical * self.block_size
                self.layout.cap_length(slot, cap)
                state.known_len = min(state.known_len, cap)
                for above in [j for j in state.blocks if j >= logical]:
                    self._free_block(slot, state, above)
                break
        self._mirror.forget([slot])
