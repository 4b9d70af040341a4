"""Host-side views of device state the draft cache's allocator uses without waiting for
the device."""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

# The allocator reads the row counts copied this many writes ago. On CUDA the copy was
# enqueued behind the write two steps back; the host has since waited for the target's
# sampled tokens of the step after it, so the copy has landed and the wait is free.
MIRROR_LAG = 2


# Host buffers the device's values are copied into (pinned on CUDA). Reading one is a host
# read of host memory, not of the device: tests that count device read-backs skip them.
_HOST_COPIES: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()


def is_host_copy(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is one of the host buffers made by `host_buffer`."""
    return _HOST_COPIES.get(id(tensor)) is tensor


def host_buffer(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype, pinned: bool) -> torch.Tensor:
    """A host tensor the device copies into without blocking (pinned on CUDA)."""
    buffer = torch.zeros(shape, dtype=dtype, pin_memory=pinned)
    _HOST_COPIES[id(buffer)] = buffer
    return buffer


class CopyEvent(Protocol):
    """What the mirror needs of a CUDA event (a test may stand in its own)."""

    def record(self) -> None: ...

    def synchronize(self) -> None: ...


@dataclass
class _Copy:
    """One host copy of the device's row counts, and the host's bounds when it was taken."""

    host: torch.Tensor
    event: CopyEvent | None
    # slot -> rows the host had reserved for it in all when the copy was taken; slots
    # whose host state changed since (sync, reset, rewind) are dropped
    reserved_at_copy: dict[int, int] = field(default_factory=dict)


class LengthMirror:
    """Host copies of `lengths` taken after each write without waiting for the device (a
    non-blocking copy into pinned memory and an event on CUDA; a plain copy on CPU).

    `refresh()` applies the copy taken `lag` writes earlier, waiting for it if it has not
    landed. What the allocator then knows is a function of the sequence of steps alone,
    never of when a copy happens to land, so every tensor-parallel rank (each with its own
    cache) makes the same allocation, eviction and starvation decisions.

    A copy makes each slot's lower bound exact as of that write; the upper bound becomes
    that count plus the rows reserved since (host states count the rows they ever
    reserved in `reserved`)."""

    def __init__(
        self,
        lengths: torch.Tensor,
        lag: int = MIRROR_LAG,
        event_factory: Callable[[], CopyEvent] | None = None,
    ) -> None:
        if lag < 1:
            raise ValueError(f"lag={lag}: the mirror reads a copy at least one write old")
        self.lengths = lengths
        self.lag = lag
        self.pinned = lengths.device.type == "cuda"
        if event_factory is None and self.pinned:
            event_factory = torch.cuda.Event
        self.event_factory = event_factory
        self._copies: deque[_Copy] = deque()
        self._spare: list[_Copy] = []  # landed copies whose buffers are reused

    def snapshot(self, rows: dict[int, Any], values: torch.Tensor | None = None) -> None:
        """After a write: copy the counts and remember the rows reserved so far (`rows`:
        slot -> host state with `reserved`). `values` ([L] int64, `lengths` first, then
        whatever else the caller reads back with them) defaults to `lengths`."""
        values = self.lengths if values is None else values
        copy = self._spare.pop() if self._spare else None
        if copy is None or copy.host.shape != values.shape:
            copy = _Copy(
                host_buffer(values.shape, values.dtype, self.pinned),
                self.event_factory() if self.event_factory is not None else None,
            )
        copy.host.copy_(values, non_blocking=self.pinned)
        if copy.event is not None:
            copy.event.record()
        copy.reserved_at_copy = {slot: state.reserved for slot, state in rows.items()}
        self._copies.append(copy)

    def forget(self, slots: list[int]) -> None:
        """The host changed these slots' rows itself: older copies no longer describe them."""
        for copy in self._copies:
            for slot in slots:
                copy.reserved_at_copy.pop(slot, None)

    def refresh(self, rows: dict[int, Any]) -> tuple[list[int], list[int]] | None:
        """Apply the newest copy at least `lag` writes old to `rows` (slot -> host state
        with `known_len`, `upper_len` and `reserved`). Returns that copy's values and the
        slots it still describes (their request is the one it was taken for), or None."""
        if len(self._copies) < self.lag:
            return None
        while len(self._copies) > self.lag:
            self._spare.append(self._copies.popleft())
        copy = self._copies.popleft()
        if copy.event is not None:
            copy.event.synchronize()
        values = copy.host.tolist()
        described = []
        for slot, reserved_then in copy.reserved_at_copy.items():
            state = rows.get(slot)
            if state is None:
                continue
            described.append(slot)
            state.known_len = values[slot]
            state.upper_len = values[slot] + state.reserved - reserved_then
        self._spare.append(copy)
        return values, described


def to_device(values: list[int], device: torch.device) -> torch.Tensor:
    """A small host list on `device` without a blocking copy (pinned, non-blocking)."""
    host = torch.tensor(values, dtype=torch.int64)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host


class AsyncRead:
    """Device values read back later without waiting: a non-blocking copy into a host
    buffer now, and `values()` once `lag` more writes have happened (by then the copy has
    landed, so the wait is free)."""

    def __init__(self, values: torch.Tensor, writes_now: int, lag: int = MIRROR_LAG) -> None:
        pinned = values.device.type == "cuda"
        self.host = host_buffer(values.shape, values.dtype, pinned)
        self.host.copy_(values, non_blocking=pinned)
        self.event = torch.cuda.Event() if pinned else None
        if self.event is not None:
            self.event.record()
        self.ready_at = writes_now + lag

    def values(self) -> list[int]:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()
