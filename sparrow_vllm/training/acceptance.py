"""Offline acceptance-length estimate: greedy chains of K drafts, stepped as vLLM does.

For every row the draft builds the chain it would propose from there: the row's output
gives draft 1; chain row s embeds draft s, carries the draft's previous output as its
hidden state, sits at pos + s and attends to the verified rows (with the serving window)
and to the chain rows before it. The simulation then walks the answer as vLLM decodes it:
draft from the last verified row, accept the longest prefix equal to the target's greedy
tokens, add the bonus token, move on. tau = 1 + accepted / drafts, vLLM's definition; it
is exact when the answers are the target's own greedy output (extract with --regenerate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from sparrow_vllm.draft.model import SparrowDraftModel
from sparrow_vllm.training.rows import DraftRows


@dataclass
class AcceptanceStats:
    k: int
    drafts: int = 0
    accepted: int = 0
    per_position: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.per_position = self.per_position or [0] * self.k

    def add(self, other: AcceptanceStats) -> None:
        self.drafts += other.drafts
        self.accepted += other.accepted
        self.per_position = [a + b for a, b in zip(self.per_position, other.per_position, strict=True)]

    @property
    def acceptance_length(self) -> float:
        return 1.0 + self.accepted / max(self.drafts, 1)

    def as_dict(self) -> dict[str, float | int | list[float]]:
        return {
            "acceptance_length": self.acceptance_length,
            "drafts": self.drafts,
            "accepted": self.accepted,
            "per_position_rate": [c / max(self.drafts, 1) for c in self.per_position],
        }


class _ChainAttention:
    """Attention for the base pass over all rows (records K/V per layer; queries in chunks
    so a 25k-row sequence never builds an R x R score matrix) and for the chain rows at
    depth s, one chain per start row."""

    CHUNK = 1024

    def __init__(self, rows: DraftRows, window: int | None, starts: torch.Tensor) -> None:
        self.rows, self.window, self.starts = rows, window, starts
        # the window counts FC rows (text and kept visual), as the serving cache does
        self.rank = torch.cumsum((~rows.is_bridge).long(), 0)
        self.base: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.chain: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.depth = 0

    def _mask(self, queries: torch.Tensor) -> torch.Tensor:
        """[Q, R] bool: the verified rows query row q (at the current depth) may see."""
        keys = torch.arange(len(self.rank))
        allowed = keys[None, :] <= queries[:, None]
        if self.window is None:
            return allowed
        distance = self.rank[queries][:, None] - self.rank[None, :] + self.depth
        return allowed & ((distance < self.window) | self.rows.is_bridge[None, :])

    def _attend(self, q: torch.Tensor, queries: torch.Tensor, layer: int) -> torch.Tensor:
        k, v = self.base[layer]
        group = q.shape[1] // k.shape[1]
        kb, vb = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scale = 1.0 / math.sqrt(q.shape[-1])
        scores = torch.einsum("qhd,jhd->qhj", q, kb) * scale
        scores = scores.masked_fill(~self._mask(queries)[:, None, :], float("-inf"))
        if self.depth == 0:
            return torch.einsum("qhj,jhd->qhd", scores.softmax(-1), vb)
        chain = self.chain[layer][-self.window :] if self.window is not None else self.chain[layer]
        ck = torch.stack([c[0].repeat_interleave(group, dim=1) for c in chain], dim=-1)
        cv = torch.stack([c[1].repeat_interleave(group, dim=1) for c in chain], dim=-1)
        probs = torch.cat((scores, (q[..., None] * ck).sum(2) * scale), dim=-1).softmax(-1)
        r = kb.shape[0]
        out = torch.einsum("qhj,jhd->qhd", probs[..., :r], vb)
        return out + (probs[..., None, r:] * cv).sum(-1)

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.depth > 0:
            self.chain[layer].append((k, v))
            return self._attend(q, self.starts, layer)
        self.base[layer], self.chain[layer] = (k, v), []
        queries = torch.arange(q.shape[0])
        return torch.cat([
            self._attend(q[i : i + self.CHUNK], queries[i : i + self.CHUNK], layer)
            for i in range(0, q.shape[0], self.CHUNK)
        ])


@torch.no_grad()
def chain_drafts(
    draft: SparrowDraftModel, embed: nn.Module, lm_head: nn.Module, rows: DraftRows,
    window: int | None, k: int, starts: torch.Tensor | None = None,
) -> torch.Tensor:
    """[S, K] draft tokens of the chain from each start row (default: every row)."""
    starts = torch.arange(len(rows)) if starts is None else starts
    attend = _ChainAttention(rows, window, starts)
    dtype = draft.fc.weight.dtype
    z = draft.fc(torch.cat((embed(rows.token_ids).to(dtype), rows.hidden.to(dtype)), dim=-1))
    z = torch.where(rows.is_bridge[:, None], rows.bridge.to(dtype), z)
    out = draft.decode(z, rows.positions, attend)[starts]
    tokens = [lm_head(out).argmax(-1)]
    for depth in range(1, k):
        attend.depth = depth
        z = draft.fc(torch.cat((embed(tokens[-1]).to(dtype), out), dim=-1))
        out = draft.decode(z, rows.positions[starts] + depth, attend)
        tokens.append(lm_head(out).argmax(-1))
    return torch.stack(tokens, dim=1)


def answer_rows(rows: DraftRows, loss_start: int) -> torch.Tensor:
    """Row indices drafting can start from: the last prompt row and the answer rows."""
    return torch.nonzero(rows.source >= loss_start - 1).flatten()


def simulate(
    rows: DraftRows, starts: torch.Tensor, drafts: torch.Tensor, target_next: torch.Tensor, loss_start: int
) -> AcceptanceStats:
    """Step through the answer (sequence indices loss_start .. n-1) as vLLM would, with
    drafts[j] the chain from row starts[j]."""
    k = drafts.shape[1]
    n = target_next.shape[0]
    row_of = {int(rows.source[r]): j for j, r in enumerate(starts.tolist())}
    stats = AcceptanceStats(k=k)
    i = loss_start - 1
    while i + 1 < n - 1:
        if i not in row_of:
            raise ValueError(f"no draft row for sequence index {i}; answers must be text")
        room = min(k, n - 2 - i)
        proposed = drafts[row_of[i], :room].tolist()
        accepted = 0
        while accepted < room and proposed[accepted] == int(target_next[i + 1 + accepted]):
            stats.per_position[accepted] += 1
            accepted += 1
        stats.drafts += 1
        stats.accepted += accepted
        i += accepted + 1
    return stats
