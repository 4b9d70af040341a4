"""The draft's training objective: feature regression + cross-entropy over MTP steps.

    z_i   = FC([embed(x_{i+1}); h_i])   at text rows (and at visual rows in "full" mode)
    z_i   = m*-state of x_{i+1}         at bridge rows (IVSB), not through FC
    out   = draft layers over z with the serving attention rule (rows.attention_mask)
    loss  = sum_k w_k * ( SmoothL1(out_i, h_{i+1}) + ce_weight * CE(LM(out_i), t_{i+1}) )

over loss rows, where t is the target's greedy next token. Step k > 0 (multi-token
prediction) feeds each text row that follows a text row the draft's own output of the row
before from step k-1, as a chain of drafts does; visual rows and the first text row after
them keep the target's states (the anchors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparrow_vllm.draft.model import SparrowDraftModel
from sparrow_vllm.training.attention import masked_attention
from sparrow_vllm.training.rows import DraftRows, attention_mask, previous_text_row


def _pad(rows: list[DraftRows], window: int | None) -> dict[str, torch.Tensor]:
    """Stack sequences of rows into [B, R, ...] tensors padded at the end."""
    r = max(len(x) for x in rows)
    out: dict[str, list[torch.Tensor]] = {}
    for x in rows:
        n = len(x)
        for key, value in vars(x).items():
            pad = torch.zeros((r - n, *value.shape[1:]), dtype=value.dtype)
            out.setdefault(key, []).append(torch.cat((value, pad)))
        mask = torch.eye(r, dtype=torch.bool)  # padding rows attend to themselves only
        mask[:n, :n] = attention_mask(x, window)
        out.setdefault("mask", []).append(mask)
        prev = torch.zeros(r, dtype=torch.bool)
        prev[:n] = previous_text_row(x)
        out.setdefault("mtp_feed", []).append(prev)
    return {k: torch.stack(v) for k, v in out.items()}


class DraftObjective(nn.Module):
    """The trainable draft plus the target's frozen embedding and LM head."""

    def __init__(self, draft: SparrowDraftModel, embed: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.draft = draft
        self.embed = embed
        self.lm_head = lm_head
        for p in (*embed.parameters(), *lm_head.parameters()):
            p.requires_grad_(False)

    def forward(
        self, rows: list[DraftRows], window: int | None, step_weights: tuple[float, ...], ce_weight: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(self.draft.parameters()).device
        batch = {k: v.to(device) for k, v in _pad(rows, window).items()}
        b, r = batch["token_ids"].shape
        h = batch["hidden"].to(self.draft.fc.weight.dtype)
        embeds = self.embed(batch["token_ids"]).to(h.dtype)
        bridge = batch["is_bridge"][..., None]
        positions = batch["positions"].reshape(-1)
        attend = masked_attention(batch["mask"])
        loss_mask = batch["loss_mask"]
        feature_target = batch["feature_target"].to(h.dtype)[loss_mask]
        token_target = batch["token_target"][loss_mask]
        total = torch.zeros((), device=device)
        metrics: dict[str, float] = {}
        for step, weight in enumerate(step_weights):
            z = self.draft.fc(torch.cat((embeds, h), dim=-1))
            z = torch.where(bridge, batch["bridge"].to(z.dtype), z)
            out = self.draft.decode(z.reshape(b * r, -1), positions, attend).view(b, r, -1)
            pred = out[loss_mask]
            logits = self.lm_head(pred).float()
            regression = F.smooth_l1_loss(pred.float(), feature_target.float())
            ce = F.cross_entropy(logits, token_target)
            total = total + weight * (regression + ce_weight * ce)
            metrics[f"step{step}_top1"] = (logits.argmax(-1) == token_target).float().mean().item()
            metrics[f"step{step}_ce"] = ce.item()
            shifted = torch.cat((h[:, :1], out[:, :-1]), dim=1)
            h = torch.where(batch["mtp_feed"][..., None], shifted, h)
        metrics["loss"] = total.item()
        return total, metrics
