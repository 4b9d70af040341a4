"""`SparrowDraftForCausalLM`: the draft as vLLM sees it, wrapping `SparrowDraftModel`.

vLLM's config layer needs the draft architecture registered; the runner adapters build
this class (never vLLM's model loader: that would run the checkpoint as plain EAGLE, so
it stops start-up), loads the checkpoint into the wrapped network and binds the target's
embedding and LM head (unless the checkpoint carries its own).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparrow_vllm.draft.checkpoint import (
    OWN_EMBEDDING,
    OWN_LM_HEAD,
    DraftCheckpoint,
    load_draft_weights,
)
from sparrow_vllm.draft.model import AttentionFn, SparrowDraftModel
from sparrow_vllm.errors import UnknownRunnerError
from sparrow_vllm.serving.vllm.runners import describe_unknown_runner


class SparrowDraftForCausalLM(nn.Module):
    def __init__(self, *, vllm_config: Any = None, prefix: str = "") -> None:
        super().__init__()
        del prefix
        if vllm_config is not None:
            # Only vLLM's own model loader passes a config: some runner tried to run the
            # Sparrow checkpoint as a plain EAGLE draft. Never let it.
            raise UnknownRunnerError(describe_unknown_runner())
        self.draft: SparrowDraftModel | None = None
        self.target_language_model: nn.Module | None = None
        self.own_embedding: torch.Tensor | None = None
        self.own_lm_head: torch.Tensor | None = None

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: DraftCheckpoint,
        target_language_model: nn.Module,
        dtype: torch.dtype,
        device: torch.device,
    ) -> SparrowDraftForCausalLM:
        module = cls()
        module.draft, own = load_draft_weights(checkpoint, dtype, device)
        module.own_embedding = own.get(OWN_EMBEDDING)
        module.own_lm_head = own.get(OWN_LM_HEAD)
        module.target_language_model = target_language_model
        return module

    def embed_input_ids(
        self,
        # [T] int
        input_ids: torch.Tensor,
    ) -> torch.Tensor:  # [T, H]
        if self.own_embedding is not None:
            return F.embedding(input_ids.long(), self.own_embedding)
        assert self.target_language_model is not None, "bind the target first"
        return self.target_language_model.embed_input_ids(input_ids)

    def compute_logits(
        self,
        # [T, H]
        hidden_states: torch.Tensor,
    ) -> torch.Tensor:  # [T, vocab]
        if self.own_lm_head is not None:
            return hidden_states @ self.own_lm_head.t()
        assert self.target_language_model is not None, "bind the target first"
        return self.target_language_model.compute_logits(hidden_states)

    def get_top_tokens(
        self,
        # [T, H]
        hidden_states: torch.Tensor,
    ) -> torch.Tensor:  # [T] int64
        """Greedy draft tokens without gathering the full logits (vLLM's
        `use_local_argmax_reduction`): the target's vocab-parallel LM head takes each rank's
        argmax and gathers one (value, index) pair per rank. A draft's own LM head is whole
        on every rank, so its argmax needs no communication at all."""
        if self.own_lm_head is not None:
            return self.compute_logits(hidden_states).argmax(dim=-1)
        lm = self.target_language_model
        return lm.logits_processor.get_top_tokens(lm.lm_head, hidden_states)

    def supports_top_tokens(self) -> bool:
        """Whether get_top_tokens has an LM head to reduce over."""
        lm = self.target_language_model
        return self.own_lm_head is not None or (hasattr(lm, "logits_processor") and hasattr(lm, "lm_head"))

    def forward(
        self,
        # [T, H]
        input_embeds: torch.Tensor,
        # [T, H]
        hidden_states: torch.Tensor,
        # [T] int64
        positions: torch.Tensor,
        attend: AttentionFn,
    ) -> torch.Tensor:  # [T, H]
        assert self.draft is not None
        return self.draft(input_embeds, hidden_states, positions, attend)
