"""`sparrow-vllm extract-features`, `train`, `eval-acceptance` and `analyze`: training a
draft for a target, and judging the target and the draft."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from sparrow_vllm.cli.options import (
    add_draft_arguments,
    add_draft_location_arguments,
    add_media_arguments,
    add_schema_arguments,
    add_sequence_arguments,
    bridge_layer,
    draft_fields_from,
    json_object,
    settings_from,
)
from sparrow_vllm.errors import UsageError
from sparrow_vllm.training.settings import TrainSettings

logger = logging.getLogger(__name__)


def _feature_spec(args: argparse.Namespace, target_dir: str) -> Any:
    from sparrow_vllm.draft.factory import sparrow_config_for
    from sparrow_vllm.families import load_family
    from sparrow_vllm.training.features import FeatureSpec
    from sparrow_vllm.training.pipeline import default_bridge_layer

    family = load_family(target_dir)
    aux = sparrow_config_for(family, feature_layer=args.feature_layer).aux_layer_index()
    bridge = {"default": default_bridge_layer(family), "none": None}.get(args.bridge_layer, args.bridge_layer)
    return FeatureSpec(feature_layer=aux, bridge_layer=bridge, max_seq_len=args.max_seq_len,
                       video_fps=args.video_fps, frame_text=args.frame_text)


def _cmd_extract_features(args: argparse.Namespace) -> None:
    from sparrow_vllm.training.pipeline import extract_features

    out = extract_features(
        args.target, args.data, args.out, _feature_spec(args, args.target), media_root=args.media_root,
        num_frames=args.num_frames, max_frames=args.max_frames, regenerate_tokens=args.regenerate,
        regenerate_with=args.regenerate_with, regenerate_batch=args.regenerate_batch,
        engine_args=args.regenerate_engine_args, shard_size=args.shard_size, workers=args.workers,
        ray_address=args.ray_address,
    )
    logger.info("features written to %s", out)


def _cmd_train(args: argparse.Namespace) -> None:
    from sparrow_vllm.training.pipeline import train_draft

    if args.bridge_layer == "none":
        raise UsageError("train --bridge-layer none: to train without visual states use --no-ivsb")
    settings = settings_from(args, TrainSettings)
    out = train_draft(
        args.target, args.out, settings, draft_fields_from(args), features=args.features, data=args.data,
        media_root=args.media_root, num_frames=args.num_frames,
        bridge_layer=None if args.bridge_layer == "default" else args.bridge_layer,
        max_seq_len=args.max_seq_len, video_fps=args.video_fps, init_draft=args.init_draft,
        resume=args.resume, command=sys.argv, val_features=args.val_features,
    )
    if out is not None:
        logger.info("trained draft written to %s", out)


def _cmd_eval_acceptance(args: argparse.Namespace) -> None:
    from sparrow_vllm.training.evaluate import evaluate_acceptance

    result = evaluate_acceptance(args.target, args.draft, args.features, args.k, args.visual_rows,
                                 draft_revision=args.draft_revision)
    text = json.dumps(result, indent=2)
    logger.info("%s", text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def _cmd_analyze(args: argparse.Namespace) -> None:
    from sparrow_vllm.analysis.internalization import AnalyzeSettings, run_analysis

    run_analysis(args.target, args.data, args.out, settings_from(args, AnalyzeSettings),
                 media_root=args.media_root, num_frames=args.num_frames, command=sys.argv)


def _add_extract_features(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract-features",
        help="run the target over a dataset and write draft-training features (resumable)",
        description="Run an HF target over a LLaVA-style JSON/JSONL dataset (video/image "
        "paths) and write safetensors shards with an index.json: input ids, positions, the "
        "draft's feature states, layer-m* visual states (IVSB) and the target's greedy next "
        "tokens. Rerun the same command to resume: finished rows are kept. Bad rows are "
        "counted and skipped. --workers N spreads the rows over N target replicas on Ray.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--target", required=True, help="target model directory (HF format)")
    p.add_argument("--data", required=True, help="manifest: .json list or .jsonl of records")
    p.add_argument("--out", required=True, help="output directory for shards + index.json")
    add_draft_arguments(p, ("feature_layer", "frame_text"))
    p.add_argument("--bridge-layer", type=bridge_layer, default="default",
                   help="target layer m* whose visual states IVSB (train --ivsb) uses: an index "
                   "(`sparrow-vllm analyze` suggests one), 'default' (L // 2) or 'none' (no visual "
                   "states, a smaller feature folder; train without --ivsb)")
    p.add_argument("--regenerate", type=int, metavar="MAX_NEW_TOKENS",
                   help="replace each answer by the target's own greedy answer first, so the "
                   "draft learns what the target says (recommended)")
    p.add_argument("--regenerate-with", choices=["vllm", "hf"], default="vllm",
                   help="engine of --regenerate: vLLM batch inference, or HF transformers' generate "
                   "(slower; greedy answers are the same)")
    p.add_argument("--regenerate-batch", type=int, default=32,
                   help="rows regenerated per vLLM call (their decoded frames are held in memory)")
    p.add_argument("--regenerate-engine-args", type=json_object, default={}, metavar="JSON",
                   help="extra vLLM engine arguments for --regenerate, e.g. '{\"gpu_memory_utilization\": "
                   "0.5, \"max_num_seqs\": 64}' (default: float32 on CPU, 0.6 of the GPU, which the "
                   "HF target shares)")
    p.add_argument("--max-frames", type=int, help="skip (and count) videos longer than this after sampling")
    p.add_argument("--shard-size", type=int, default=64,
                   help="manifest rows per shard file (a rerun resumes at the row, whatever the size)")
    p.add_argument("--workers", type=int, default=1,
                   help="target replicas working in parallel; above 1 they run as Ray actors (one GPU "
                   "each on a GPU cluster), on a local Ray cluster unless --ray-address is given")
    p.add_argument("--ray-address", help="join this Ray cluster (e.g. ray://head:10001 or auto); "
                   "--out must be on a filesystem all its nodes share")
    add_media_arguments(p)
    add_sequence_arguments(p)
    p.set_defaults(func=_cmd_extract_features)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a Sparrow draft (or a full-visual EAGLE-style baseline) for a target",
        description="Train a draft on features from extract-features (--features) or online "
        "from a dataset (--data). Runs on one CPU process or under torchrun on N processes "
        "(DDP). Writes the draft checkpoint the plugin loads (or, with --visual-rows full, "
        "the form vLLM's `eagle` method loads) plus trainer_state.pt for --resume.",
    )
    p.add_argument("--target", required=True, help="target model directory (HF format)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", help="directory written by extract-features")
    source.add_argument("--data", help="dataset manifest; features are computed online")
    p.add_argument("--out", required=True, help="output directory (checkpoint and trainer state)")
    p.add_argument("--val-features", help="validate on this directory written by extract-features "
                   "(its first --val-samples records) and train on all of --features / --data; "
                   "default: hold out the last --val-samples training sequences")
    p.add_argument("--init-draft", help="start from this draft checkpoint instead of a random one")
    p.add_argument("--resume", action="store_true", help="continue from OUT/trainer_state.pt")
    p.add_argument("--bridge-layer", type=bridge_layer, default="default",
                   help="online mode with IVSB: target layer m* whose visual states are bridged, "
                   "an index or 'default' (L // 2)")
    add_media_arguments(p)
    add_sequence_arguments(p)
    add_draft_arguments(p)
    add_schema_arguments(p, TrainSettings)
    p.set_defaults(func=_cmd_train)


def add_commands(sub: argparse._SubParsersAction) -> None:
    _add_extract_features(sub)
    _add_train(sub)

    p = sub.add_parser(
        "eval-acceptance",
        help="offline acceptance length of a trained draft on a feature set",
        description="Greedy chains of K drafts over the answers of a feature set, stepped as "
        "vLLM steps (acceptance length = 1 + accepted / drafts, per-position rates).",
    )
    p.add_argument("--target", required=True, help="target model directory (HF format)")
    add_draft_location_arguments(p, "draft (Sparrow or EAGLE form)")
    p.add_argument("--features", required=True, help="directory written by extract-features")
    p.add_argument("--k", type=int, default=4, help="draft chain length (num_speculative_tokens)")
    p.add_argument("--visual-rows", choices=["text", "bridge", "full"],
                   help="rows the draft sees at visual positions (default: its serving form)")
    p.add_argument("--out", help="write the result as JSON here")
    p.set_defaults(func=_cmd_eval_acceptance)

    from sparrow_vllm.analysis.internalization import AnalyzeSettings

    p = sub.add_parser(
        "analyze",
        help="from which layer does the target no longer need its visual rows? (--bridge-layer, --visual-budget)",
        description="For every layer x, runs the target with its visual rows removed from layer x on "
        "(text rows keep their positions), teacher-forced on its own greedy answers, and compares "
        "it with the full model: next-token agreement, KL divergence, and answer accuracy where the "
        "manifest has reference answers. Writes OUT/analysis.json and OUT/analysis.png and prints "
        "the smallest layer from which predictions are unchanged and a suggested --bridge-layer. A "
        "budget probe runs the text rows with only N visual rows per image/video (the rows a draft "
        "with --visual-budget N keeps) for each N of --budget-ladder; the log ends with the "
        "--visual-budget to train with (none when the target internalizes the video early).",
    )
    p.add_argument("--target", required=True, help="target model directory (HF format, a vision-language model)")
    p.add_argument("--data", required=True, help="dataset manifest (as extract-features takes it)")
    p.add_argument("--out", required=True, help="output directory (analysis.json, analysis.png)")
    add_media_arguments(p)
    add_schema_arguments(p, AnalyzeSettings)
    p.set_defaults(func=_cmd_analyze)
