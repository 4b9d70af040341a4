"""`sparrow-vllm eval-acceptance`: the offline acceptance estimate of a trained draft on a
feature set (for instance one per visual length), for Sparrow and EAGLE-form drafts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from sparrow_vllm.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_draft_config
from sparrow_vllm.config import DraftLayerConfig, SparrowConfig
from sparrow_vllm.modeling.draft_model import SparrowDraftModel
from sparrow_vllm.training.features import FeatureShards
from sparrow_vllm.training.rows import RowMode
from sparrow_vllm.training.target import load_hf_target
from sparrow_vllm.training.trainer import validate


def load_trained_draft(path: str | Path) -> tuple[SparrowDraftModel, str]:
    """A draft in Sparrow form, or in the EAGLE form `train --visual-rows full` writes;
    returns the network and its form ("sparrow" or "eagle")."""
    path = Path(path)
    raw = json.loads((path / CONFIG_FILE).read_text())
    if "exported_from_sparrow" in raw:
        sparrow = SparrowConfig.model_validate(raw["exported_from_sparrow"]).model_copy(update={"fc_bias": False})
        layers = DraftLayerConfig.model_validate({**raw, "model_type": "qwen2"})
        form = "eagle"
    else:
        layers, sparrow = read_draft_config(path)
        form = "sparrow"
    model = SparrowDraftModel(layers, sparrow)
    model.load_state_dict({k: v.float() for k, v in load_file(str(path / WEIGHTS_FILE)).items()})
    return model.eval(), form


def evaluate_acceptance(
    target_dir: str | Path, draft_dir: str | Path, features: str | Path, k: int, mode: RowMode | None = None
) -> dict[str, Any]:
    """Acceptance of greedy K-chains over every record of `features`. mode defaults to the
    draft's serving form: 'text' for Sparrow (VATA), 'full' for an EAGLE-form draft."""
    target = load_hf_target(target_dir)
    draft, form = load_trained_draft(draft_dir)
    mode = mode or ("full" if form == "eagle" else "text")
    shards = FeatureShards(features)
    records = [shards[i] for i in range(len(shards))]
    with torch.no_grad():
        stats = validate(draft, target.model.get_input_embeddings(), target.model.get_output_embeddings(),
                         records, mode, k)
    visual = [int(r["visual_mask"].sum()) for r in records]
    return {"draft": str(draft_dir), "form": form, "mode": mode, "k": k, "sequences": len(records),
            "mean_visual_tokens": sum(visual) / max(len(visual), 1), **stats.as_dict()}
