"""Training-time attention with the serving rule: causal over text rows, optional window."""

from __future__ import annotations

import torch

from sparrow_vllm.modeling.draft_model import AttentionFn


def text_window_mask(n: int, window: int | None, device: torch.device | str = "cpu") -> torch.Tensor:
    """[n, n] bool, True where row i may attend to row j (j <= i, within the window)."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    mask = j <= i
    if window is not None:
        mask &= j > i - window
    return mask


def causal_text_attention(batch: int, n: int, window: int | None) -> AttentionFn:
    """Attention over `batch` sequences of `n` text rows, flattened to [batch * n] rows."""

    def attend(layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        del layer_idx
        heads, kv_heads, dim = q.shape[1], k.shape[1], q.shape[2]
        group = heads // kv_heads
        qb = q.view(batch, n, heads, dim).transpose(1, 2)
        kb = k.view(batch, n, kv_heads, dim).repeat_interleave(group, dim=2).transpose(1, 2)
        vb = v.view(batch, n, kv_heads, dim).repeat_interleave(group, dim=2).transpose(1, 2)
        mask = text_window_mask(n, window, q.device)
        out = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask)
        return out.transpose(1, 2).reshape(batch * n, heads, dim)

    return attend
