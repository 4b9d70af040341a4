"""The Sparrow draft network, in plain PyTorch: the one definition used for serving and training.

Row i of the draft input pairs the embedding of token x_{i+1} with the target's hidden
state h_i and sits at the target position of i:

    z_i = FC([embed(x_{i+1}); h_i])              (2H -> H)
    r   = z;  for each layer:  r += Attn(norm_in(r));  r += MLP(norm_post(r))
    out = r                                     (fed to the target's LM head)

This is vLLM's EAGLE-1 layout exactly (the first layer has no input norm, no final norm),
so the same weights give the same drafts in both. Attention is a callback: serving attends
over the proposer's text-only KV cache, training over a masked sequence.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from sparrow_vllm.draft.config import DraftLayerConfig, SparrowConfig


class AttentionFn(Protocol):
    def __call__(
        self,
        layer_idx: int,
        # [T, num_heads, head_dim]
        q: torch.Tensor,
        # [T, num_kv_heads, head_dim]
        k: torch.Tensor,
        # [T, num_kv_heads, head_dim]
        v: torch.Tensor,
    ) -> torch.Tensor:  # [T, num_heads, head_dim]
        ...


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = _fp32(x)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if dtype == torch.float32 and self.weight.dtype == dtype:
            return self.weight * x32  # the casts below are no-ops then
        return (self.weight * x32.to(dtype)).to(dtype)


class RotaryEmbedding(nn.Module):
    """Neox-style RoPE (rotate half), as Qwen2 and Llama use."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(
        self,
        # [T] int64
        positions: torch.Tensor,
        # [T, heads, head_dim]
        x: torch.Tensor,
    ) -> torch.Tensor:
        return self.rotate(x, *self.cos_sin(positions))

    def cos_sin(
        self,
        # [T] int64
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # ([T, 1, head_dim / 2] fp32) x 2
        """The angles of `positions`, shared by every tensor rotated at them."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        return freqs.cos()[:, None, :], freqs.sin()[:, None, :]

    @staticmethod
    def rotate(
        # [T, heads, head_dim]
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> torch.Tensor:
        x1, x2 = _fp32(x).chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return out if out.dtype == x.dtype else out.to(x.dtype)


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """x in fp32 (x itself when it is: no op dispatched, which costs on CPU at decode sizes)."""
    return x if x.dtype == torch.float32 else x.float()


class DraftAttention(nn.Module):
    def __init__(self, cfg: DraftLayerConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        hidden = cfg.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim, cfg.rope_theta)

    def forward(
        self,
        layer_idx: int,
        # [T] int64
        positions: torch.Tensor,
        # [T, H]
        x: torch.Tensor,
        attend: AttentionFn,
    ) -> torch.Tensor:
        t = x.shape[0]
        q = self.q_proj(x).view(t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(t, self.num_kv_heads, self.head_dim)
        cos_sin = self.rotary.cos_sin(positions)
        q = self.rotary.rotate(q, *cos_sin)
        k = self.rotary.rotate(k, *cos_sin)
        out = attend(layer_idx, q, k, v)
        return self.o_proj(out.reshape(t, self.num_heads * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=False)
        self.up_proj = nn.Linear(hidden, inner, bias=False)
        self.down_proj = nn.Linear(inner, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DraftDecoderLayer(nn.Module):
    def __init__(self, cfg: DraftLayerConfig, has_input_norm: bool) -> None:
        super().__init__()
        self.input_layernorm: nn.Module = (
            RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if has_input_norm else nn.Identity()
        )
        self.self_attn = DraftAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(
        self, layer_idx: int, positions: torch.Tensor, r: torch.Tensor, attend: AttentionFn
    ) -> torch.Tensor:
        r = r + self.self_attn(layer_idx, positions, self.input_layernorm(r), attend)
        return r + self.mlp(self.post_attention_layernorm(r))


class SparrowDraftModel(nn.Module):
    """FC over [embed; hidden] and N decoder layers. Embedding and LM head are the target's."""

    def __init__(self, layers: DraftLayerConfig, sparrow: SparrowConfig) -> None:
        super().__init__()
        self.layer_config = layers
        self.sparrow_config = sparrow
        h = layers.hidden_size
        self.fc = nn.Linear(2 * h, h, bias=sparrow.fc_bias)
        self.layers = nn.ModuleList(
            DraftDecoderLayer(layers, has_input_norm=i > 0)
            for i in range(layers.num_hidden_layers)
        )

    def forward(
        self,
        # [T, H] embeddings of the input tokens x_{i+1}
        input_embeds: torch.Tensor,
        # [T, H] target (or previous draft step) hidden states h_i
        hidden_states: torch.Tensor,
        # [T] int64 positions (row 0 of M-RoPE)
        positions: torch.Tensor,
        attend: AttentionFn,
    ) -> torch.Tensor:  # [T, H]
        return self.decode(self.fc(torch.cat((input_embeds, hidden_states), dim=-1)), positions, attend)

    def decode(
        self,
        # [T, H] draft input rows z (FC output; training may put bridge states at some rows)
        z: torch.Tensor,
        # [T] int64 positions
        positions: torch.Tensor,
        attend: AttentionFn,
    ) -> torch.Tensor:  # [T, H]
        r = z
        for idx, layer in enumerate(self.layers):
            r = layer(idx, positions, r, attend)
        return r

    def expected_weight_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(p.shape) for name, p in self.state_dict().items()}
