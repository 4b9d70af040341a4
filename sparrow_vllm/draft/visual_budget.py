"""Which visual rows a Sparrow draft keeps: the one selection rule of training and serving.

A draft's `visual_budget` is "none" (the paper's Sparrow: no visual row is ever drafted
over or cached), "all" (every visual row is kept, like a full-visual EAGLE draft) or an
integer N: each visual segment (a maximal run of visual tokens by the family's rule, one
image or one video) keeps all its L rows when L <= N, else N of them spread uniformly
over the run, so a draft query attends to at most N rows of each image or video whatever
its length.

The budget is per segment, not per request: a segment's kept rows depend on that segment
alone, never on images or videos after it, so a prefix of a request keeps the rows it
would keep in the whole request (prefix reuse stays valid) and a chunked prefill keeps
the rows of a one-pass prefill.

Uniform selection (a Bresenham walk): token j of a segment [s, s + L) that keeps n rows is
kept iff floor((j - s + 1) n / L) > floor((j - s) n / L). Exactly n tokens are kept, the
last one always, with gaps that differ by at most one; integer arithmetic only, so the
device evaluates it per row without reading anything back (`kept_on_device`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

VisualBudget = Literal["none", "all"] | int


def rows_kept(length: int, budget: VisualBudget) -> int:
    """How many of a segment's `length` visual rows a draft with `budget` keeps."""
    if budget == "none":
        return 0
    if budget == "all":
        return length
    return min(length, budget)


def segments(visual: Sequence[bool], budget: VisualBudget) -> list[tuple[int, int, int]]:
    """(start, end, kept) of each maximal run of visual tokens."""
    out: list[tuple[int, int, int]] = []
    start = None
    for i, flag in enumerate([*visual, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            out.append((start, i, rows_kept(i - start, budget)))
            start = None
    return out


def is_kept(j: int, start: int, end: int, kept: int) -> bool:
    """Token j of the segment [start, end) that keeps `kept` rows is one of them."""
    offset, length = j - start, end - start
    return (offset + 1) * kept // length > offset * kept // length


def kept_token_mask(visual: Sequence[bool], budget: VisualBudget) -> list[bool]:
    """Per token: a visual token the draft keeps (False for every text token)."""
    out = [False] * len(visual)
    for start, end, kept in segments(visual, budget):
        for j in range(start, end):
            out[j] = is_kept(j, start, end, kept)
    return out


def kept_on_device(
    # [N] int64 target index of each row's token
    token_index: torch.Tensor,
    # [N, R, 3] int64 (start, end, kept) of the segments of each row's request (padded
    # with (0, 0, 0): empty segments keep nothing)
    spans: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # ([N] bool inside a segment, [N] bool kept)
    """`is_kept` for every row at once, on the device (no host read)."""
    j = token_index[:, None]
    start, end, kept = spans[..., 0], spans[..., 1], spans[..., 2]
    inside = (j >= start) & (j < end)
    offset, length = j - start, (end - start).clamp(min=1)
    chosen = inside & ((offset + 1) * kept // length > offset * kept // length)
    return inside.any(dim=1), chosen.any(dim=1)
