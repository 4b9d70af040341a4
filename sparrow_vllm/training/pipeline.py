"""What `sparrow-vllm extract-features` and `sparrow-vllm train` run: target, data, draft."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from sparrow_vllm.checkpoint import check_draft_for_target, load_draft_weights
from sparrow_vllm.draft_factory import new_draft
from sparrow_vllm.families import TargetFamily
from sparrow_vllm.modeling.draft_model import SparrowDraftModel
from sparrow_vllm.training.data import ConversationDataset
from sparrow_vllm.training.features import (
    FeatureExtractor,
    FeatureRecord,
    FeatureShards,
    FeatureSpec,
    write_feature_shards,
)
from sparrow_vllm.training.settings import TrainSettings
from sparrow_vllm.training.skips import SampleError
from sparrow_vllm.training.target import TargetFeatures, load_hf_target
from sparrow_vllm.training.trainer import Trainer, setup_distributed

logger = logging.getLogger(__name__)


def default_bridge_layer(family: TargetFamily) -> int:
    """m* = L // 2, the layer whose visual states IVSB bridges."""
    return family.num_layers // 2


def extract_features(
    target_dir: str | Path, data: str | Path, out_dir: str | Path, spec: FeatureSpec, *,
    media_root: str | Path | None = None, num_frames: int | None = None, max_frames: int | None = None,
    regenerate_tokens: int | None = None, shard_size: int = 256,
) -> Path:
    target = load_hf_target(target_dir)
    dataset = ConversationDataset(data, media_root=media_root, num_frames=num_frames, max_frames=max_frames)
    extractor = FeatureExtractor(target, target.processor, spec)
    meta = {
        "target": str(Path(target_dir).resolve()), "data": str(Path(data).resolve()),
        "feature_layer": spec.feature_layer, "bridge_layer": spec.bridge_layer,
        "num_frames": num_frames, "regenerate_tokens": regenerate_tokens, "video_fps": spec.video_fps,
        "frame_text": spec.frame_text,
    }
    return write_feature_shards(extractor, dataset, out_dir, shard_size, regenerate_tokens, meta)


class OnlineFeatures:
    """Records computed from the dataset with the target inside the training step."""

    def __init__(self, dataset: ConversationDataset, extractor: FeatureExtractor) -> None:
        self.dataset, self.extractor = dataset, extractor

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> FeatureRecord | None:
        try:
            return self.extractor.extract(self.dataset.load(index))
        except SampleError as error:
            self.dataset.skips.add(f"row{index}", error)
            logger.warning("skipping row %d: %s", index, error)
            return None


def _check_features(shards: FeatureShards, draft: SparrowDraftModel, settings: TrainSettings) -> None:
    meta = shards.index.get("meta", {})
    want = draft.sparrow_config.aux_layer_index()
    if meta.get("feature_layer") != want:
        raise ValueError(
            f"{shards.dir} holds features of layer {meta.get('feature_layer')} (None = final) but "
            f"the draft's feature_layer needs {want}; extract again with the draft's --feature"
        )
    frame_text = meta.get("frame_text", "visual")
    if frame_text != draft.sparrow_config.frame_text:
        raise ValueError(
            f"{shards.dir} marks frame text as {frame_text!r} but the draft's frame_text is "
            f"{draft.sparrow_config.frame_text!r}; extract again with --frame-text "
            f"{draft.sparrow_config.frame_text} (training and serving must agree)"
        )
    if settings.train_row_mode() == "bridge" and meta.get("bridge_layer") is None:
        raise ValueError(f"{shards.dir} has no bridge states; extract with --bridge-layer or train with --no-ivsb")


def make_draft(target: TargetFeatures, init_draft: str | Path | None, fields: dict[str, Any], seed: int) -> SparrowDraftModel:
    if init_draft is not None:
        checkpoint = check_draft_for_target(init_draft, target.family)
        draft, _ = load_draft_weights(checkpoint, target.model.dtype, "cpu")
        return draft
    return new_draft(target.family, seed=seed, **fields)


def train_draft(
    target_dir: str | Path, out_dir: str | Path, settings: TrainSettings, draft_fields: dict[str, Any], *,
    features: str | Path | None = None, data: str | Path | None = None,
    media_root: str | Path | None = None, num_frames: int | None = None, bridge_layer: int | None = None,
    max_seq_len: int = 32768, video_fps: float = 2.0, init_draft: str | Path | None = None,
    resume: bool = False, command: list[str] | None = None,
) -> Path | None:
    """Train a draft on offline features (`features`) or online from `data` (features of
    the draft's feature layer, and with IVSB the states of `bridge_layer`, default L // 2);
    returns the checkpoint directory on rank 0."""
    if (features is None) == (data is None):
        raise ValueError("give exactly one of --features (offline) or --data (online)")
    env = setup_distributed()
    target = load_hf_target(target_dir)
    draft = make_draft(target, init_draft, draft_fields, settings.seed)
    if settings.visual_rows == "full" and draft.sparrow_config.fc_bias:
        raise ValueError("--visual-rows full saves vLLM's eagle form, whose FC has no bias; add --no-fc-bias")
    source: Any
    if features is not None:
        source = FeatureShards(features)
        _check_features(source, draft, settings)
    else:
        bridge = None
        if settings.train_row_mode() == "bridge":
            bridge = bridge_layer if bridge_layer is not None else default_bridge_layer(target.family)
        spec = FeatureSpec(feature_layer=draft.sparrow_config.aux_layer_index(), bridge_layer=bridge,
                           max_seq_len=max_seq_len, video_fps=video_fps,
                           frame_text=draft.sparrow_config.frame_text)
        dataset = ConversationDataset(data, media_root=media_root, num_frames=num_frames)
        source = OnlineFeatures(dataset, FeatureExtractor(target, target.processor, spec))
    embed = target.model.get_input_embeddings()
    lm_head = target.model.get_output_embeddings()
    trainer = Trainer(draft, embed, lm_head, source, settings, out_dir, env)
    if resume:
        trainer.resume()
    trainer.fit()
    return trainer.save_draft(command if command is not None else sys.argv)
