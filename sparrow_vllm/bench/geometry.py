"""Real geometry without real weights: a target with a real model's shapes (config only;
vLLM's `load_format="dummy"` fills random weights) and Sparrow and eagle drafts of matching
shapes. benchmarks/real_geometry.py drives it; the engine job that times each decode step
on them is sparrow_vllm/bench/geometry_job.py.

Models (`build_models`): the toy-world target's config.json with its geometry keys
overridden from a `Geometry` (`SCALES`: Qwen2.5-VL-7B's, or a small one for CPU smoke
tests), its tokenizer, chat template and processor files copied unchanged (so toy-world
video requests with N visual tokens work exactly as on the toy world), and no weights.
One random draft network (one decoder layer of the target's width and heads, FC without
bias) is written twice: as a Sparrow checkpoint (the Sparrow loader reads its own
safetensors, whatever the engine's load format) and in vLLM's eagle form (vLLM's eagle
loader inherits the engine's load config, so under `load_format="dummy"` its weights are
random too; the file is there for other load formats).

"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TOY_TARGET = Path(__file__).resolve().parents[2] / "models" / "toy-world" / "target"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
NOT_COPIED = ("config.json", "toy_world_accuracy.json")  # written anew / about the toy's weights


@dataclass(frozen=True)
class Geometry:
    """The shape keys of a Qwen2.5-VL config: text model and vision tower."""

    name: str
    text: dict[str, Any]
    vision: dict[str, Any]
    dtype: str


QWEN25_VL_7B = Geometry(
    name="Qwen2.5-VL-7B-Instruct",
    text={
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
        "max_position_embeddings": 128000, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "mrope_section": [16, 24, 24],
    },
    vision={
        "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
        "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
        "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
    },
    dtype="bfloat16",
)
# Small enough for two CPU cores; the same structure (GQA, M-RoPE, windowed vision tower).
SMOKE = Geometry(
    name="smoke",
    text={
        "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "mrope_section": [8, 12, 12],
    },
    vision={
        "depth": 2, "hidden_size": 128, "intermediate_size": 256, "num_heads": 4,
        "out_hidden_size": 256, "patch_size": 14, "spatial_merge_size": 2,
        "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [1],
    },
    dtype="float32",
)
SCALES: dict[str, Geometry] = {"7b": QWEN25_VL_7B, "smoke": SMOKE}

def speculative_config(method: str, draft: Path, k: int, adaptive_draft_length: bool = False) -> dict[str, Any]:
    """vLLM's speculative config for `method` with K drafts every step: Sparrow's adaptive
    draft length is off unless asked for, so that every decode step verifies K+1 tokens
    per request (random drafts are never accepted, and the policy would stop drafting)."""
    spec: dict[str, Any] = {"method": method, "model": str(draft), "num_speculative_tokens": k}
    if method == "sparrow":
        spec["adaptive_draft_length"] = adaptive_draft_length
    return spec


def target_config(toy_config: dict[str, Any], geometry: Geometry) -> dict[str, Any]:
    """The toy target's config.json with `geometry`'s shape keys (token ids, processor
    settings and every other key stay the toy's)."""
    config = json.loads(json.dumps(toy_config))
    text, vision = config["text_config"], config["vision_config"]
    shape = dict(geometry.text)
    mrope, theta = shape.pop("mrope_section"), shape.pop("rope_theta")
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    if 2 * sum(mrope) != head_dim:
        raise ValueError(f"mrope_section {mrope} must sum to head_dim / 2 = {head_dim // 2}")
    text.update(shape)
    text["layer_types"] = ["full_attention"] * shape["num_hidden_layers"]
    text["max_window_layers"] = shape["num_hidden_layers"]
    text["rope_parameters"] = {**text.get("rope_parameters", {}), "mrope_section": mrope, "rope_theta": theta}
    vision.update(geometry.vision)
    for part in (config, text, vision):
        part["dtype"] = geometry.dtype
    config["geometry"] = geometry.name
    return config


def build_target(out_dir: Path, geometry: Geometry, toy_target: Path = TOY_TARGET) -> Path:
    """A weightless target directory: scaled config.json plus the toy target's tokenizer,
    chat template and processor files. Load it with `load_format="dummy"`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in toy_target.iterdir():
        if path.is_file() and path.suffix not in WEIGHT_SUFFIXES and path.name not in NOT_COPIED:
            shutil.copy2(path, out_dir / path.name)
    toy_config = json.loads((toy_target / "config.json").read_text())
    (out_dir / "config.json").write_text(json.dumps(target_config(toy_config, geometry), indent=2) + "\n")
    return out_dir


def build_drafts(target: Path, out_dir: Path, seed: int = 0, command: list[str] | None = None) -> dict[str, Path]:
    """A random one-layer draft of the target's geometry, as a Sparrow checkpoint and in
    vLLM's eagle form: {"sparrow": dir, "eagle": dir}."""
    from sparrow_vllm.draft.checkpoint import save_draft
    from sparrow_vllm.draft.eagle_export import save_eagle_draft
    from sparrow_vllm.draft.factory import new_draft
    from sparrow_vllm.families import load_family

    model = new_draft(load_family(str(target)), seed=seed, fc_bias=False)
    sparrow = save_draft(out_dir / "sparrow-draft", model, command=command)
    eagle = save_eagle_draft(model, out_dir / "eagle-draft", command=command)
    return {"sparrow": sparrow, "eagle": eagle}


def build_models(out_dir: Path, geometry: Geometry, toy_target: Path = TOY_TARGET,
                 command: list[str] | None = None) -> dict[str, Path]:
    """Target and drafts under out_dir ({"target", "sparrow", "eagle"}); reused when
    out_dir already holds them for the same geometry."""
    target = out_dir / "target"
    drafts = {"sparrow": out_dir / "sparrow-draft", "eagle": out_dir / "eagle-draft"}
    stamp = out_dir / "geometry.json"
    wanted = {"geometry": geometry.name, "text": geometry.text, "vision": geometry.vision, "dtype": geometry.dtype}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted and all(
            (d / "model.safetensors").is_file() for d in drafts.values()):
        return {"target": target, **drafts}
    build_target(target, geometry, toy_target)
    drafts = build_drafts(target, out_dir, command=command)
    stamp.write_text(json.dumps(wanted, indent=1) + "\n")
    return {"target": target, **drafts}
