"""Write a Sparrow draft in the checkpoint form vLLM's built-in `eagle` method loads.

The Sparrow network is vLLM's EAGLE-1 layout (EagleLlamaForCausalLM: FC without bias,
first layer without input norm, no final norm), so the weights carry over by name. Qwen2's
q/k/v biases map to Llama's `qkv_bias`. Only a draft with fc_bias=false (or a zero bias)
can be exported, and the export drops the Sparrow-only behaviour (text-only rows, window).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from sparrow_vllm.draft.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_draft_config
from sparrow_vllm.draft.config import DraftLayerConfig, SparrowConfig
from sparrow_vllm.draft.locate import locate_draft
from sparrow_vllm.draft.model import SparrowDraftModel
from sparrow_vllm.errors import SparrowConfigError
from sparrow_vllm.provenance import provenance


def eagle_config(layers: DraftLayerConfig, sparrow: SparrowConfig) -> dict[str, Any]:
    """config.json of the draft in vLLM's EAGLE-1 Llama form."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": layers.hidden_size,
        "intermediate_size": layers.intermediate_size,
        "num_hidden_layers": layers.num_hidden_layers,
        "num_attention_heads": layers.num_attention_heads,
        "num_key_value_heads": layers.num_key_value_heads,
        "head_dim": layers.head_dim,
        "rms_norm_eps": layers.rms_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": layers.rope_theta},
        "rope_theta": layers.rope_theta,
        "max_position_embeddings": layers.max_position_embeddings,
        "vocab_size": layers.vocab_size,
        "hidden_act": "silu",
        "attention_bias": False,
        "qkv_bias": layers.qkv_bias,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "exported_from_sparrow": sparrow.model_dump(),
    }


def _eagle_tensors(tensors: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    tensors = dict(tensors)
    bias = tensors.pop("fc.bias", None)
    if bias is not None and bool(bias.abs().max() > 0):
        raise SparrowConfigError(
            f"{where} has a non-zero fc.bias; vLLM's EAGLE FC has no bias. Train or "
            "init the draft with --no-fc-bias to export it."
        )
    return tensors


def _write(out_dir: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    return out_dir


def export_eagle(draft: str | Path, out_dir: Path, draft_revision: str | None = None) -> Path:
    """Rewrite a Sparrow draft checkpoint in vLLM's `eagle` form. `draft`: its directory, or a
    Hugging Face hub id (at `draft_revision`) resolved through the cache (draft/locate.py)."""
    draft_dir = locate_draft(draft, draft_revision)
    layers, sparrow = read_draft_config(draft_dir)
    tensors = _eagle_tensors(load_file(str(draft_dir / WEIGHTS_FILE)), str(draft_dir))
    return _write(Path(out_dir), eagle_config(layers, sparrow), tensors)


def save_eagle_draft(model: SparrowDraftModel, out_dir: str | Path, command: list[str] | None = None) -> Path:
    """Write a draft network straight to vLLM's `eagle` form, with provenance."""
    config = eagle_config(model.layer_config, model.sparrow_config)
    config["provenance"] = provenance(command if command is not None else sys.argv)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    return _write(Path(out_dir), config, _eagle_tensors(tensors, "the trained draft"))
