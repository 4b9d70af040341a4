"""An HF transformers target seen from the draft trainer: embedding, LM head, features."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparrow_vllm.families import TargetFamily, load_family


@dataclass
class TargetStates:
    # [B, n, H] the hidden state that feeds the draft
    features: torch.Tensor
    # [B, n, H] layer-m* hidden states (None when not asked for)
    bridge: torch.Tensor | None
    # [B, n, V] the target's logits
    logits: torch.Tensor


@dataclass
class TargetFeatures:
    model: Any
    tokenizer: Any
    family: TargetFamily
    processor: Any = None

    @property
    def config(self) -> Any:
        return self.family.config

    def _text_model(self) -> Any:
        model = self.model.model
        return getattr(model, "language_model", model)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(hidden)

    @torch.no_grad()
    def forward_states(
        self, inputs: dict[str, Any], feature_layer: int | None, bridge_layer: int | None
    ) -> TargetStates:
        """Run the target on processor outputs; features are the final norm's output
        (feature_layer None) or HF output_hidden_states[feature_layer]."""
        captured: list[torch.Tensor] = []
        norm = self._text_model().norm
        handle = norm.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            out = self.model(**inputs, output_hidden_states=True)
        finally:
            handle.remove()
        features = captured[-1] if feature_layer is None else out.hidden_states[feature_layer]
        bridge = out.hidden_states[bridge_layer] if bridge_layer is not None else None
        return TargetStates(features=features, bridge=bridge, logits=out.logits)

    @torch.no_grad()
    def features(self, ids: torch.Tensor, aux_layer: int | None) -> torch.Tensor:
        """[B, n, H] hidden states that feed the draft, for text-only input ids."""
        return self.forward_states({"input_ids": ids}, aux_layer, None).features


def load_hf_target(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
) -> TargetFeatures:
    """Load a target checkpoint with transformers (fp32 on the CPU unless told otherwise,
    eval mode, frozen), with its processor (the tokenizer for a text-only target).
    attn_implementation: transformers' attention kernel (None: its default)."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    family = load_family(str(path))
    family.use_serving_positions()
    is_vlm = family.is_multimodal
    auto = AutoModelForImageTextToText if is_vlm else AutoModelForCausalLM
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = auto.from_pretrained(str(path), dtype=dtype, **extra).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    processor = AutoProcessor.from_pretrained(str(path)) if is_vlm else tokenizer
    return TargetFeatures(model=model, tokenizer=tokenizer, family=family, processor=processor)
