"""Host-side views of device state the draft cache's allocator uses without waiting for
the device."""

from __future__ import annotations

from typing import Any

import torch


class LengthMirror:
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

    def refresh(self, rows: dict[int, Any]) -> None:
        if not self.valid or (self.event is not None and not self.event.query()):
            return
        values = (self.host if self.event is not None else self.lengths).tolist()
        for slot in self.valid & rows.keys():
            rows[slot].known_len = rows[slot].upper_len = values[slot]
        self.valid = set()


def to_device(values: list[int], device: torch.device) -> torch.Tensor:
    """A small host list on `device` without a blocking copy."""
    host = torch.tensor(values, dtype=torch.int64)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host
