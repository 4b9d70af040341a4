"""`sparrow-vllm eval-acceptance`: the offline acceptance estimate of a trained draft on a
feature set (for instance one per visual length), for Sparrow and EAGLE-form drafts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from sparrow_vllm.draft.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    check_against_target,
    check_draft_for_target,
    read_draft_config,
)
from sparrow_vllm.draft.config import DraftLayerConfig, SparrowConfig
from sparrow_vllm.draft.locate import locate_draft
from sparrow_vllm.draft.model import SparrowDraftModel
from sparrow_vllm.errors import SparrowConfigError, UsageError
from sparrow_vllm.families import TargetFamily, load_family
from sparrow_vllm.training.feature_checks import check_features
from sparrow_vllm.training.features import FeatureShards
from sparrow_vllm.training.rows import RowMode
from sparrow_vllm.training.target import load_hf_target
from sparrow_vllm.training.trainer import validate


def read_trained_config(path: str | Path) -> tuple[DraftLayerConfig, SparrowConfig, str]:
    """The layer and Sparrow fields of a draft in Sparrow form, or in the EAGLE form
    `train --visual-rows full` writes, and the form ("sparrow" or "eagle")."""
    path = Path(path)
    config = path / CONFIG_FILE
    if not config.is_file():
        raise UsageError(f"{config} not found; --draft takes a directory `sparrow-vllm train` wrote")
    try:
        raw = json.loads(config.read_text())
    except json.JSONDecodeError as exc:
        raise SparrowConfigError(f"{config} is not valid JSON: {exc}") from exc
    if "exported_from_sparrow" not in raw:
        layers, sparrow = read_draft_config(path)
        return layers, sparrow, "sparrow"
    sparrow = SparrowConfig.model_validate(raw["exported_from_sparrow"]).model_copy(update={"fc_bias": False})
    return DraftLayerConfig.model_validate({**raw, "model_type": "qwen2"}), sparrow, "eagle"


def check_trained_draft_for_target(path: str | Path, family: TargetFamily) -> None:
    """What `vllm serve` checks before it loads a draft: check_draft_for_target for the
    Sparrow form; for the EAGLE form, the same shape checks against the target."""
    layers, sparrow, form = read_trained_config(path)
    if form == "sparrow":
        check_draft_for_target(path, family)
    else:
        check_against_target(layers, sparrow, family, path)


def load_trained_draft(path: str | Path) -> tuple[SparrowDraftModel, str]:
    """A draft in Sparrow form, or in the EAGLE form `train --visual-rows full` writes;
    returns the network and its form ("sparrow" or "eagle")."""
    layers, sparrow, form = read_trained_config(path)
    model = SparrowDraftModel(layers, sparrow)
    model.load_state_dict({k: v.float() for k, v in load_file(str(Path(path) / WEIGHTS_FILE)).items()})
    return model.eval(), form


def evaluate_acceptance(
    target_dir: str | Path, draft: str | Path, features: str | Path, k: int, mode: RowMode | None = None,
    draft_revision: str | None = None,
) -> dict[str, Any]:
    """Acceptance of greedy K-chains over every record of `features` (in total, and
    [drafts, accepted] per sequence). mode defaults to the
    draft's serving form: 'text' for Sparrow (VATA), 'full' for an EAGLE-form draft.
    Text-mode rows keep the visual rows of the draft's visual budget.
    `draft`: a directory, or a Hugging Face hub id (at `draft_revision`) resolved through
    the cache as the server resolves it (draft/locate.py).
    Refuses a draft made for another target and features made for another draft."""
    given, draft_dir = str(draft), locate_draft(draft, draft_revision)
    check_trained_draft_for_target(draft_dir, load_family(str(target_dir)))
    draft, form = load_trained_draft(draft_dir)
    shards = FeatureShards(features)
    check_features(shards, draft.sparrow_config)
    target = load_hf_target(target_dir)
    mode = mode or ("full" if form == "eagle" else "text")
    records = [shards[i] for i in range(len(shards))]
    per_sequence: list[list[int]] = []
    with torch.no_grad():
        stats = validate(draft, target.model.get_input_embeddings(), target.model.get_output_embeddings(),
                         records, mode, k, per_sequence)
    visual = [int(r["visual_mask"].sum()) for r in records]
    return {"draft": given, "draft_dir": str(draft_dir), "form": form, "mode": mode,
            "visual_budget": draft.sparrow_config.visual_budget, "k": k, "sequences": len(records),
            "mean_visual_tokens": sum(visual) / max(len(visual), 1), **stats.as_dict(),
            "per_sequence": per_sequence}
