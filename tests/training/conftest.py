"""A tiny toy-world target, dataset and features shared by the training tests (~30 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparrow_vllm.toy_targets import build_toy_target
from sparrow_vllm.toy_world.dataset import write_dataset
from sparrow_vllm.toy_world.scene import WORDS
from sparrow_vllm.training.features import FeatureSpec
from sparrow_vllm.training.pipeline import extract_features


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-world")
    target = build_toy_target("qwen2_5_vl", root / "target", words=WORDS, num_layers=2, seed=1)
    manifest = write_dataset(root / "data", num=12, frames=[4], questions=["describe", "count"])
    features = extract_features(
        target, manifest, root / "features", FeatureSpec(feature_layer=None, bridge_layer=1),
        regenerate_tokens=24, regenerate_with="hf", shard_size=5,
    )
    return {"root": root, "target": target, "manifest": manifest, "features": features}
