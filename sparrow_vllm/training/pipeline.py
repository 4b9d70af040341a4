"""What `sparrow-vllm extract-features` and `sparrow-vllm train` run: target, data, draft."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from sparrow_vllm.draft.checkpoint import check_draft_for_target, load_draft_weights
from sparrow_vllm.draft.factory import new_draft
from sparrow_vllm.draft.model import SparrowDraftModel
from sparrow_vllm.errors import UsageError
from sparrow_vllm.families import TargetFamily
from sparrow_vllm.training.data import ConversationDataset
from sparrow_vllm.training.extraction import ExtractionJob, run_extraction
from sparrow_vllm.training.feature_checks import check_features
from sparrow_vllm.training.features import (
    FeatureExtractor,
    FeatureRecord,
    FeatureShards,
    FeatureSpec,
)
from sparrow_vllm.training.regenerate import RegenerateWith
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
    regenerate_tokens: int | None = None, regenerate_with: RegenerateWith = "vllm",
    regenerate_batch: int = 32, engine_args: dict[str, Any] | None = None, shard_size: int = 64,
    workers: int = 1, ray_address: str | None = None,
) -> Path:
    """Features of every manifest row in out_dir (see `extraction.py`); resumes a partial run."""
    job = ExtractionJob(
        target=str(target_dir), data=str(data), out=str(out_dir), spec=spec,
        media_root=None if media_root is None else str(media_root), num_frames=num_frames,
        max_frames=max_frames, regenerate_tokens=regenerate_tokens, regenerate_with=regenerate_with,
        regenerate_batch=regenerate_batch, shard_size=shard_size, engine_args=dict(engine_args or {}),
    )
    return run_extraction(job, workers=workers, ray_address=ray_address)


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


def _validation_features(val_features: str | Path | None, draft: SparrowDraftModel) -> FeatureShards | None:
    """--val-features, checked like --features (validation needs no bridge states)."""
    if val_features is None:
        return None
    shards = FeatureShards(val_features)
    check_features(shards, draft.sparrow_config)
    return shards


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
    resume: bool = False, command: list[str] | None = None, val_features: str | Path | None = None,
) -> Path | None:
    """Train a draft on offline features (`features`) or online from `data` (features of
    the draft's feature layer, and with IVSB the states of `bridge_layer`, default L // 2),
    validating on `val_features` if given, else on records held out of the training set;
    returns the checkpoint directory on rank 0."""
    if (features is None) == (data is None):
        raise UsageError("give exactly one of --features (offline) or --data (online)")
    env = setup_distributed()
    target = load_hf_target(target_dir)
    draft = make_draft(target, init_draft, draft_fields, settings.seed)
    if settings.visual_rows == "full" and draft.sparrow_config.fc_bias:
        raise UsageError("--visual-rows full saves vLLM's eagle form, whose FC has no bias; add --no-fc-bias")
    source: Any
    if features is not None:
        source = FeatureShards(features)
        check_features(source, draft.sparrow_config, needs_bridge=settings.train_row_mode() == "bridge")
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
    trainer = Trainer(draft, embed, lm_head, source, settings, out_dir, env,
                      val_source=_validation_features(val_features, draft))
    if resume:
        trainer.resume()
    trainer.fit()
    return trainer.save_draft(command if command is not None else sys.argv)
