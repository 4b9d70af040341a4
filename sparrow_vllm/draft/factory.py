"""Make a Sparrow draft for a target: its config from the target's, weights fresh."""

from __future__ import annotations

from typing import Any

import torch

from sparrow_vllm.draft.config import SparrowConfig, layer_config_from_target
from sparrow_vllm.draft.model import SparrowDraftModel
from sparrow_vllm.families import TargetFamily


def sparrow_config_for(family: TargetFamily, **fields: Any) -> SparrowConfig:
    """SparrowConfig with the target_* fields filled from the target's family adapter."""
    text = family.text_config
    return SparrowConfig(
        target_hidden_size=text.hidden_size,
        target_vocab_size=text.vocab_size,
        target_num_layers=text.num_hidden_layers,
        target_architecture=family.architecture,
        **fields,
    )


def new_draft(family: TargetFamily, seed: int = 0, **fields: Any) -> SparrowDraftModel:
    """A randomly initialised draft (std 0.02 linears, zero biases, unit norms)."""
    sparrow = sparrow_config_for(family, **fields)
    family.check_feature_layer(sparrow.aux_layer_index(), sparrow.feature_layer)  # servable at all?
    layers = layer_config_from_target(family.text_config, sparrow.num_layers)
    generator = torch.Generator().manual_seed(seed)
    model = SparrowDraftModel(layers, sparrow)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return model
