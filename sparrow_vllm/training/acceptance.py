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

from sparrow_vllm.modeling.draft_model import SparrowDraftModel
from sparrow_vllm.training.rows import DraftRows, attention_mask


@dataclass
class AcceptanceStats:
    k: int
    drafts: int = 0
    accepted: int = 0
    per_position: list[int] = field(default_factory=list)

    def add(self, other: AcceptanceStats) -> None:
        self.drafts += other.drafts
        self.accepted += other.accepted
        self.per_position = [a + b for a, b in zip(self.per_position or [0] * self.k, other.per_position, strict=True)]

    @property
    def acceptance_length(self) -> float:
        return 1.0 + self.accepted / max(self.drafts, 1)

    def as_dict(self) -> dict[str, float | int | list[float]]:
        return {
            "acceptance_length": self.acceptance_length,
            "drafts": self.drafts,
            "accepted": self.accepted,
            "per_position_rate": [c / max(self.drafts, 1) for c in self.per_position or [0] * self.k],
        }


class _ChainAttention:
    """Attention for the base pass (records K/V per layer) and for chain depth s."""

    def __init__(self, mask: torch.Tensor, rows: DraftRows, window: int | None) -> None:
        self.mask, self.rows, self.window = mask, rows, window
        self.base: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.chain: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.depth = 0

    def _base_mask(self) -> torch.Tensor:
        if self.window is None:
            return self.mask
        rank = torch.cumsum((~self.rows.is_visual).long(), 0)
        r = len(rank)
        allowed = torch.arange(r)[None, :] <= torch.arange(r)[:, None]
        near = rank[:, None] - rank[None, :] + self.depth < self.window
        return allowed & (near | self.rows.is_visual[None, :])

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        group = q.shape[1] // k.shape[1]
        scale = 1.0 / math.sqrt(q.shape[-1])
        if self.depth == 0:
            self.base[layer] = (k, v)
            self.chain[layer] = []
        else:
            self.chain[layer].append((k, v))
        kb, vb = (t.repeat_interleave(group, dim=1) for t in self.base[layer])
        scores = torch.einsum("rhd,jhd->rhj", q, kb) * scale
        scores = scores.masked_fill(~self._base_mask()[:, None, :], float("-inf"))
        chain = self.chain[layer][-self.window :] if self.window is not None else self.chain[layer]
        if self.depth > 0:
            ck = torch.stack([c[0].repeat_interleave(group, dim=1) for c in chain], dim=-1)
            cv = torch.stack([c[1].repeat_interleave(group, dim=1) for c in chain], dim=-1)
            scores = torch.cat((scores, (q[..., None] * ck).sum(2) * scale), dim=-1)
        probs = scores.softmax(-1)
        r = kb.shape[0]
        out = torch.einsum("rhj,jhd->rhd", probs[..., :r], vb)
        if self.depth > 0:
            out = out + (probs[..., r:, None].transpose(-1, -2) * cv).sum(-1)
        return out


@torch.no_grad()
def chain_drafts(
    draft: SparrowDraftModel, embed: nn.Module, lm_head: nn.Module, rows: DraftRows,
    window: int | None, k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """([R, K] draft tokens of the chain from each row, [R, H] base outputs)."""
    attend = _ChainAttention(attention_mask(rows, window), rows, window)
    dtype = draft.fc.weight.dtype
    z = draft.fc(torch.cat((embed(rows.token_ids).to(dtype), rows.hidden.to(dtype)), dim=-1))
    z = torch.where(rows.is_bridge[:, None], rows.bridge.to(dtype), z)
    base = draft.decode(z, rows.positions, attend)
    out, tokens = base, [lm_head(base).argmax(-1)]
    for depth in range(1, k):
        attend.depth = depth
        z = draft.fc(torch.cat((embed(tokens[-1]).to(dtype), out), dim=-1))
        out = draft.decode(z, rows.positions + depth, attend)
        tokens.append(lm_head(out).argmax(-1))
    return torch.stack(tokens, dim=1), base


def simulate(rows: DraftRows, drafts: torch.Tensor, target_next: torch.Tensor, loss_start: int) -> AcceptanceStats:
    """Step through the answer (sequence indices loss_start .. n-1) as vLLM would."""
    k = drafts.shape[1]
    n = target_next.shape[0]
    row_of = {int(s): r for r, s in enumerate(rows.source.tolist())}
    stats = AcceptanceStats(k=k, per_position=[0] * k)
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
