"""Write a Sparrow draft in the checkpoint form vLLM's built-in `eagle` method loads.

The Sparrow network is vLLM's EAGLE-1 layout (EagleLlamaForCausalLM: FC without bias,
first layer without input norm, no final norm), so the weights carry over by name. Qwen2's
q/k/v biases map to Llama's `qkv_bias`. Only a draft with fc_bias=false (or a zero bias)
can be exported, and the export drops the Sparrow-only behaviour (text-only rows, window).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from sparrow_vllm.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_draft_config
from sparrow_vllm.config import SparrowConfigError


def export_eagle(draft_dir: Path, out_dir: Path) -> Path:
    layers, sparrow = read_draft_config(draft_dir)
    tensors = load_file(str(draft_dir / WEIGHTS_FILE))
    bias = tensors.pop("fc.bias", None)
    if bias is not None and bool(bias.abs().max() > 0):
        raise SparrowConfigError(
            f"{draft_dir} has a non-zero fc.bias; vLLM's EAGLE FC has no bias. Train or "
            "init the draft with --no-fc-bias to export it."
        )
    config = {
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
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    return out_dir
