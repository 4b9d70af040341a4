"""Whether a feature set (extract-features output) fits a draft: the checks `train` and
`eval-acceptance` run before they read a record, with messages in the CLI's words."""

from __future__ import annotations

from typing import Any

from sparrow_vllm.draft.config import SparrowConfig, feature_words
from sparrow_vllm.errors import UsageError
from sparrow_vllm.training.features import FeatureShards


def held_feature_layer(meta: dict[str, Any], num_layers: int) -> int | None:
    """The target layer index a feature set's index.json meta records: None (the final
    state) for "final" or null (indexes written before "final" was spelled out)."""
    value = meta.get("feature_layer")
    if value is None or value == "final":
        return None
    if value == "penultimate":
        return num_layers - 1
    return int(value)


def _feature_flag(aux_layer_index: int | None, num_layers: int) -> str:
    word = feature_words(aux_layer_index, num_layers)
    return f"--feature {word} (layer {aux_layer_index})" if word == "penultimate" else f"--feature {word}"


def check_feature_layer(shards: FeatureShards, sparrow: SparrowConfig) -> None:
    n = sparrow.target_num_layers
    held = held_feature_layer(shards.index.get("meta", {}), n)
    want = sparrow.aux_layer_index()
    if held != want:
        raise UsageError(
            f"{shards.dir} holds features made with {_feature_flag(held, n)} but the draft reads "
            f"{_feature_flag(want, n)}; extract again with `sparrow-vllm extract-features ... "
            f"--feature {feature_words(want, n)}`, or train a draft with --feature {feature_words(held, n)}"
        )


def check_frame_text(shards: FeatureShards, sparrow: SparrowConfig) -> None:
    held = shards.index.get("meta", {}).get("frame_text", "visual")
    if held != sparrow.frame_text:
        raise UsageError(
            f"{shards.dir} holds features made with --frame-text {held} but the draft reads "
            f"--frame-text {sparrow.frame_text}; extract again with `sparrow-vllm extract-features ... "
            f"--frame-text {sparrow.frame_text}`, or train a draft with --frame-text {held}"
        )


def check_bridge_states(shards: FeatureShards) -> None:
    if shards.index.get("meta", {}).get("bridge_layer") is None:
        raise UsageError(
            f"{shards.dir} holds no layer-m* visual states (made with --bridge-layer none), which "
            "IVSB trains on; extract again with `sparrow-vllm extract-features ... --bridge-layer "
            "default`, or train with --no-ivsb"
        )


def check_features(shards: FeatureShards, sparrow: SparrowConfig, *, needs_bridge: bool = False) -> None:
    """Stop unless `shards` were extracted for a draft like this one: the layer it reads
    (--feature), its --frame-text, and with needs_bridge (IVSB training) the bridge states."""
    check_feature_layer(shards, sparrow)
    check_frame_text(shards, sparrow)
    if needs_bridge:
        check_bridge_states(shards)
