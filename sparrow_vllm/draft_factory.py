"""Make a Sparrow draft for a target: its config from the target's, weights fresh."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sparrow_vllm.config import SparrowConfig, layer_config_from_target, text_config_of
from sparrow_vllm.modeling.draft_model import SparrowDraftModel


def load_target_config(target_dir: str | Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(target_dir))


def sparrow_config_for(target_config: Any, **fields: Any) -> SparrowConfig:
    """SparrowConfig with the target_* fields filled from the target's config."""
    text = text_config_of(target_config)
    archs = getattr(target_config, "architectures", None) or ["unknown"]
    return SparrowConfig(
        target_hidden_size=text.hidden_size,
        target_vocab_size=text.vocab_size,
        target_num_layers=text.num_hidden_layers,
        target_architecture=archs[0],
        **fields,
    )


def new_draft(target_config: Any, seed: int = 0, **fields: Any) -> SparrowDraftModel:
    """A randomly initialised draft (std 0.02 linears, zero biases, unit norms)."""
    sparrow = sparrow_config_for(target_config, **fields)
    layers = layer_config_from_target(target_config, sparrow.num_layers)
    generator = torch.Generator().manual_seed(seed)
    model = SparrowDraftModel(layers, sparrow)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return model
