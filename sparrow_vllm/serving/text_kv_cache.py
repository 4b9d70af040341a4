"""TextKVCache: the draft's own KV cache of text rows, one pool slot per request.

Layout (what the attention op and a Triton kernel read):

    k, v      [num_layers, num_slots + 1, capacity, num_kv_heads, head_dim]
    lengths   [num_slots + 1]            committed text rows per slot (absolute count)
    next_seq  [num_slots + 1]            target index of the next row each slot expects
    row_seq   [num_slots + 1, capacity]  target sequence index of each stored row
    row_token [num_slots + 1, capacity]  input token id of each stored row (inspection)

The last slot is trash: rows that must not be committed are written there, so a decode
step needs no data-dependent indexing (no host synchronisation).

Absolute row a of a slot lives at ring index a % capacity. With a window W the capacity is
W + K + 1 (K = speculative tokens), enough for the window plus the scratch rows of one
draft chain; without a window it holds max_model_len + K + 1 rows. Only verified rows are
committed; chain rows are written past `lengths` as scratch and overwritten next step.

Slot assignment (request id -> slot) is bookkept on the host.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch

logger = logging.getLogger(__name__)


class TextKVCache:
    def __init__(
        self,
        num_layers: int,
        num_slots: int,
        capacity: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        pool = num_slots + 1
        shape = (num_layers, pool, capacity, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(pool, dtype=torch.int64, device=device)
        self.next_seq = torch.zeros(pool, dtype=torch.int64, device=device)
        self.row_seq = torch.full((pool, capacity), -1, dtype=torch.int64, device=device)
        self.row_token = torch.full((pool, capacity), -1, dtype=torch.int64, device=device)
        self.capacity = capacity
        self.num_slots = num_slots
        self.trash_slot = num_slots
        self._free = list(range(num_slots - 1, -1, -1))
        # req_id -> slot, least recently used first
        self._slot_of: OrderedDict[str, int] = OrderedDict()

    @staticmethod
    def nbytes_for(
        num_layers: int, num_slots: int, capacity: int, num_kv_heads: int, head_dim: int,
        dtype: torch.dtype,
    ) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * (num_slots + 1) * capacity * num_kv_heads * head_dim * elem

    @property
    def live_requests(self) -> list[str]:
        return list(self._slot_of)

    def slot_of(self, req_id: str) -> int | None:
        return self._slot_of.get(req_id)

    def prepare(self, req_id: str, seq_start: int, active: set[str], next_seq: list[int]) -> int:
        """The slot of `req_id`, set up for rows starting at target index `seq_start`
        (`next_seq`: the host copy of `self.next_seq`)."""
        slot = self._slot_of.get(req_id)
        if slot is None:
            slot = self._allocate(req_id, active)
        else:
            self._slot_of.move_to_end(req_id)
            if seq_start < next_seq[slot]:
                self._rewind(slot, seq_start)
        return slot

    def release(self, req_id: str) -> None:
        slot = self._slot_of.pop(req_id, None)
        if slot is not None:
            self._reset(slot)
            self._free.append(slot)

    def committed(self, req_id: str) -> tuple[list[int], list[int]]:
        """(target sequence indices, input token ids) of the rows stored for `req_id`."""
        slot = self._slot_of[req_id]
        n = min(int(self.lengths[slot]), self.capacity)
        first = int(self.lengths[slot]) - n
        ring = [(first + i) % self.capacity for i in range(n)]
        return self.row_seq[slot, ring].tolist(), self.row_token[slot, ring].tolist()

    def _allocate(self, req_id: str, active: set[str]) -> int:
        if not self._free:
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
        slot = self._free.pop()
        self._slot_of[req_id] = slot
        self._reset(slot)
        return slot

    def _reset(self, slot: int) -> None:
        self.lengths[slot] = 0
        self.next_seq[slot] = 0
        self.row_seq[slot] = -1
        self.row_token[slot] = -1

    def _rewind(self, slot: int, seq_start: int) -> None:
        """Forget rows at target index >= seq_start (preemption, recompute)."""
        length = int(self.lengths[slot])
        if length > self.capacity:
            # Older rows were overwritten in the ring; rows before seq_start cannot all
            # be restored, so the slot starts afresh (drafts only, output stays exact).
            self._reset(slot)
            return
        keep = int((self.row_seq[slot, :length] < seq_start).sum())
        self.lengths[slot] = keep
        self.row_seq[slot, keep:] = -1
        self.row_token[slot, keep:] = -1
        self.next_seq[slot] = seq_start
