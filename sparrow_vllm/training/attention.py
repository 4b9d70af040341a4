"""Training-time attention with the serving rule: causal over text rows, optional window."""

from __future__ import annotations

import torch

from sparrow_vllm.draft.model import AttentionFn


def text_window_mask(n: int, window: int | None, device: torch.device | str = "cpu") -> torch.Tensor:
    """[n, n] bool, True where row i may attend to row j (j <= i, within the window)."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    mask = j <= i
    if window is not None:
        mask &= j > i - window
    return mask


def masked_attention(
    # [B, R, R] bool, True where a query row may attend to a key row
    mask: torch.Tensor,
) -> AttentionFn:
    """Attention over B sequences of R rows flattened to [B * R] rows, under `mask`."""
    b, r, _ = mask.shape

    def attend(layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        del layer_idx
        heads, kv_heads, dim = q.shape[1], k.shape[1], q.shape[2]
        group = heads // kv_heads
        qb = q.view(b, r, heads, dim).transpose(1, 2)
        kb = k.view(b, r, kv_heads, dim).repeat_interleave(group, dim=2).transpose(1, 2)
        vb = v.view(b, r, kv_heads, dim).repeat_interleave(group, dim=2).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask[:, None])
        return out.transpose(1, 2).reshape(b * r, heads, dim)

    return attend


def causal_text_attention(batch: int, n: int, window: int | None) -> AttentionFn:
    """Attention over `batch` sequences of `n` text rows, flattened to [batch * n] rows."""
    return masked_attention(text_window_mask(n, window).expand(batch, n, n))
