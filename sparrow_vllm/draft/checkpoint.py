"""Sparrow draft checkpoints: a directory with config.json and model.safetensors.

`check_draft_for_target` runs when the engine starts (before any worker), so a draft that
does not fit its target fails there with a message that names the fix.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from sparrow_vllm.draft.config import (
    DraftLayerConfig,
    SparrowConfig,
    SparrowConfigError,
    build_config_json,
    parse_config_json,
)
from sparrow_vllm.draft.model import SparrowDraftModel
from sparrow_vllm.families import TargetFamily
from sparrow_vllm.provenance import provenance

logger = logging.getLogger(__name__)
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Optional tensors a draft may carry instead of sharing the target's.
OWN_EMBEDDING = "embed_tokens.weight"
OWN_LM_HEAD = "lm_head.weight"


@dataclass(frozen=True)
class DraftCheckpoint:
    path: Path
    layers: DraftLayerConfig
    sparrow: SparrowConfig
    has_own_embedding: bool
    has_own_lm_head: bool


def save_draft(
    out_dir: str | Path,
    model: SparrowDraftModel,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    command: list[str] | None = None,
) -> Path:
    """Write config.json (with provenance) and model.safetensors; returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = build_config_json(model.layer_config, model.sparrow_config)
    prov = provenance(command if command is not None else sys.argv)
    config["provenance"] = prov
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    for name, tensor in (extra_tensors or {}).items():
        tensors[name] = tensor.detach().contiguous().cpu()
    metadata = {"format": "pt", "sparrow_provenance": json.dumps(prov)}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata=metadata)
    return out


def read_draft_config(path: str | Path) -> tuple[DraftLayerConfig, SparrowConfig]:
    cfg_path = Path(path) / CONFIG_FILE
    if not cfg_path.is_file():
        raise SparrowConfigError(
            f"{cfg_path} not found. The Sparrow draft must be a directory with "
            "config.json and model.safetensors, as `sparrow-vllm train` writes it "
            "(`sparrow-vllm init-draft` writes a random one)."
        )
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise SparrowConfigError(f"{cfg_path} is not valid JSON: {exc}") from exc
    return parse_config_json(raw, str(cfg_path))


def _weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise SparrowConfigError(
            f"{weights} not found; the draft directory needs its weights, as "
            "`sparrow-vllm train` writes them."
        )
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except SafetensorError as e:
        raise _corrupt_weights(weights, str(e)) from e
    _check_weights_complete(weights)
    return shapes


def _corrupt_weights(weights: Path, why: str) -> SparrowConfigError:
    return SparrowConfigError(
        f"{weights} is not a readable safetensors file ({why}): it is truncated or corrupt, "
        "e.g. an interrupted copy or download. Copy the draft again, or write it again with "
        "`sparrow-vllm train`."
    )


def _check_weights_complete(weights: Path) -> None:
    """The file holds every byte its header promises (a truncated copy can have a whole
    header and lose tensor data; that would otherwise fail only when weights load)."""
    size = weights.stat().st_size
    with weights.open("rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    needed = 8 + header_len + max(ends, default=0)
    if size < needed:
        raise _corrupt_weights(weights, f"{size} bytes, its header describes {needed}")


TRAIN_FOR_TARGET = (
    "train one with `sparrow-vllm train --target <target dir>` on video data "
    '(docs/training.md)'
)


def check_against_target(
    layers: DraftLayerConfig, sparrow: SparrowConfig, family: TargetFamily, where: str | Path
) -> None:
    """Stop when a draft's shapes (its layers and the target it records) differ from the
    target's; warn when only the architecture differs. `where` names the draft."""
    text = family.text_config
    problems = []
    checks = [
        ("hidden_size", layers.hidden_size, text.hidden_size),
        ("sparrow.target_hidden_size", sparrow.target_hidden_size, text.hidden_size),
        ("vocab_size", layers.vocab_size, text.vocab_size),
        ("sparrow.target_vocab_size", sparrow.target_vocab_size, text.vocab_size),
        ("sparrow.target_num_layers", sparrow.target_num_layers, text.num_hidden_layers),
    ]
    for name, draft_value, target_value in checks:
        if draft_value != target_value:
            problems.append(f"{name}={draft_value} but the target has {target_value}")
    if not problems and sparrow.target_architecture != family.architecture:
        _warn_other_architecture(sparrow.target_architecture, family.architecture)
    if problems:
        raise SparrowConfigError(
            f"The draft {where} does not match the target model: "
            + "; ".join(problems)
            + f". Use a draft made for this target: {TRAIN_FOR_TARGET}."
        )


@functools.cache
def _warn_other_architecture(draft_for: str, target: str) -> None:
    logger.warning(
        "The Sparrow draft was made for %s but the target is %s. Shapes agree, so output stays "
        "exact, but the draft learned another model's hidden states: expect low acceptance. "
        "Use a draft made for this target: %s.", draft_for, target, TRAIN_FOR_TARGET,
    )


def _check_weights(path: Path, layers: DraftLayerConfig, sparrow: SparrowConfig) -> tuple[bool, bool]:
    expected = SparrowDraftModel(layers, sparrow).expected_weight_shapes()
    vocab_shape = (layers.vocab_size, layers.hidden_size)
    optional = {OWN_EMBEDDING: vocab_shape, OWN_LM_HEAD: vocab_shape}
    found = _weight_shapes(path)
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected) - set(optional))
    wrong = [
        f"{name}: {found[name]} (expected {shape})"
        for name, shape in {**expected, **optional}.items()
        if name in found and found[name] != shape
    ]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unexpected {extra}")
        if wrong:
            parts.append(f"wrong shapes {wrong}")
        raise SparrowConfigError(
            f"{path / WEIGHTS_FILE} does not match {path / CONFIG_FILE}: "
            + "; ".join(parts)
            + ". The config and weights come from different drafts; write the checkpoint "
            "again with `sparrow-vllm train` (or `sparrow-vllm init-draft` for a random one)."
        )
    return OWN_EMBEDDING in found, OWN_LM_HEAD in found


def check_draft_for_target(
    path: str | Path, family: TargetFamily, vllm_aux_hidden_states: bool | None = None
) -> DraftCheckpoint:
    """Validate a draft directory against its target's family adapter (no weights loaded).

    vllm_aux_hidden_states: whether the target's vLLM model returns intermediate layers
    (what the engine finds); None takes the family's own record of it. A draft that reads
    a layer vLLM cannot return is refused here, at training as at serving time.
    """
    path = Path(path)
    layers, sparrow = read_draft_config(path)
    check_against_target(layers, sparrow, family, path)
    family.check_feature_layer(sparrow.aux_layer_index(), sparrow.feature_layer, vllm_aux_hidden_states)
    own_embed, own_head = _check_weights(path, layers, sparrow)
    return DraftCheckpoint(path, layers, sparrow, own_embed, own_head)


def load_draft_weights(
    checkpoint: DraftCheckpoint, dtype: torch.dtype, device: torch.device | str
) -> tuple[SparrowDraftModel, dict[str, torch.Tensor]]:
    """The draft network with its weights, and any own embedding / LM head tensors."""
    model = SparrowDraftModel(checkpoint.layers, checkpoint.sparrow)
    own: dict[str, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(checkpoint.path / WEIGHTS_FILE), framework="pt") as f:
        for name in f.keys():
            target = own if name in (OWN_EMBEDDING, OWN_LM_HEAD) else state
            target[name] = f.get_tensor(name)
    model.load_state_dict(state, strict=True)
    model.to(device=device, dtype=dtype)
    return model, {k: v.to(device=device, dtype=dtype) for k, v in own.items()}
