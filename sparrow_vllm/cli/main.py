"""`sparrow-vllm`: tools to make targets and drafts for tests, demos and users."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from sparrow_vllm.cli.options import (
    DRAFT_FIELDS,
    OPTION_SCHEMAS,
    add_settings_arguments,
    add_sparrow_arguments,
    feature_layer,
    settings_from,
    validation_words,
)
from sparrow_vllm.draft.config import FrameText, SparrowConfig
from sparrow_vllm.errors import RunStopped, SparrowConfigError, UsageError
from sparrow_vllm.toy_targets import ARCHES as TOY_ARCHES
from sparrow_vllm.training.settings import TrainSettings

logger = logging.getLogger("sparrow_vllm.cli")


def _cmd_toy_target(args: argparse.Namespace) -> None:
    from sparrow_vllm.toy_targets import build_toy_target

    out = build_toy_target(args.arch, args.out, num_layers=args.num_target_layers, seed=args.seed)
    logger.info("toy %s target written to %s", args.arch, out)


def _cmd_init_draft(args: argparse.Namespace) -> None:
    from sparrow_vllm.draft.checkpoint import save_draft
    from sparrow_vllm.draft.factory import new_draft
    from sparrow_vllm.families import load_family

    fields = {name: getattr(args, name) for name in DRAFT_FIELDS}
    model = new_draft(load_family(args.target), seed=args.seed, **fields)
    out = save_draft(args.out, model, command=sys.argv)
    logger.info("random Sparrow draft written to %s", out)


def _cmd_self_distill(args: argparse.Namespace) -> None:
    from sparrow_vllm.training.self_distill import SelfDistillSettings, self_distill

    settings = SelfDistillSettings(
        num_prompts=args.prompts, new_tokens=args.new_tokens, steps=args.steps, seed=args.seed
    )
    out = self_distill(Path(args.target), Path(args.draft), Path(args.out), settings)
    logger.info("trained Sparrow draft written to %s", out)


def _cmd_export_eagle(args: argparse.Namespace) -> None:
    from sparrow_vllm.draft.eagle_export import export_eagle

    out = export_eagle(Path(args.draft), Path(args.out))
    logger.info("EAGLE checkpoint for vLLM's built-in `eagle` method written to %s", out)


def _bridge_layer(value: str) -> int | None:
    return None if value == "none" else int(value)


def _feature_spec(args: argparse.Namespace, target_dir: str) -> Any:
    from sparrow_vllm.draft.factory import sparrow_config_for
    from sparrow_vllm.families import load_family
    from sparrow_vllm.training.features import FeatureSpec
    from sparrow_vllm.training.pipeline import default_bridge_layer

    family = load_family(target_dir)
    aux = sparrow_config_for(family, feature_layer=args.feature_layer).aux_layer_index()
    bridge = default_bridge_layer(family) if args.bridge_layer == "default" else _bridge_layer(args.bridge_layer)
    return FeatureSpec(feature_layer=aux, bridge_layer=bridge, max_seq_len=args.max_seq_len,
                       video_fps=args.video_fps, frame_text=args.frame_text)


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--media-root", help="directory relative video/image paths resolve against "
                   "(default: the manifest's directory)")
    p.add_argument("--num-frames", type=int, help="sample this many frames per video, uniformly")
    p.add_argument("--max-seq-len", type=int, default=32768,
                   help="skip (and count) sequences longer than this many tokens")
    p.add_argument("--video-fps", type=float, default=2.0,
                   help="frame rate of the sampled frames, for M-RoPE time positions; match "
                   "what the server sees")


def _json_object(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {value!r}") from exc
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {value!r}")
    return parsed


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

    settings = settings_from(args, TrainSettings)
    fields = {name: getattr(args, name) for name in DRAFT_FIELDS}
    out = train_draft(
        args.target, args.out, settings, fields, features=args.features, data=args.data,
        media_root=args.media_root, num_frames=args.num_frames,
        bridge_layer=None if args.bridge_layer == "default" else int(args.bridge_layer),
        max_seq_len=args.max_seq_len, video_fps=args.video_fps, init_draft=args.init_draft,
        resume=args.resume, command=sys.argv, val_features=args.val_features,
    )
    if out is not None:
        logger.info("trained draft written to %s", out)


def _cmd_eval_acceptance(args: argparse.Namespace) -> None:
    from sparrow_vllm.training.evaluate import evaluate_acceptance

    result = evaluate_acceptance(args.target, args.draft, args.features, args.k, args.visual_rows)
    text = json.dumps(result, indent=2)
    logger.info("%s", text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def _cmd_analyze(args: argparse.Namespace) -> None:
    from sparrow_vllm.analysis.internalization import AnalyzeSettings, run_analysis

    run_analysis(args.target, args.data, args.out, settings_from(args, AnalyzeSettings),
                 media_root=args.media_root, num_frames=args.num_frames, command=sys.argv)


def _cmd_toy_world(args: argparse.Namespace) -> None:
    from sparrow_vllm.toy_world import build

    build.run(args)


def _cmd_check(args: argparse.Namespace) -> None:
    from sparrow_vllm.check import CheckSettings, run_check

    report = run_check(args.target, args.draft, settings_from(args, CheckSettings), workdir=args.workdir)
    if args.json:
        Path(args.json).write_text(report.model_dump_json(indent=2) + "\n")
    print(report.summary())
    if not report.passed:
        sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparrow-vllm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("toy-target", help="write a tiny offline target (random weights)")
    p.add_argument("--arch", choices=TOY_ARCHES, required=True)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-target-layers", type=int, default=2, help="decoder layers")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=_cmd_toy_target)

    p = sub.add_parser("init-draft", help="write a randomly initialised Sparrow draft")
    p.add_argument("--target", required=True, help="target model directory (HF format)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    add_sparrow_arguments(p)
    p.set_defaults(func=_cmd_init_draft)

    p = sub.add_parser(
        "self-distill",
        help="train a draft briefly on the target's own greedy outputs (text only)",
    )
    p.add_argument("--target", required=True, help="target model directory (HF format)")
    p.add_argument("--draft", required=True, help="draft to start from (init-draft output)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--prompts", type=int, default=64, help="random prompts to continue")
    p.add_argument("--new-tokens", type=int, default=48, help="greedy tokens per prompt")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=_cmd_self_distill)

    p = sub.add_parser(
        "export-eagle", help="write a Sparrow draft in the form vLLM's `eagle` method loads"
    )
    p.add_argument("--draft", required=True, help="Sparrow draft directory")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_cmd_export_eagle)

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
    p.add_argument("--feature", dest="feature_layer", type=feature_layer, default="final",
                   help=SparrowConfig.model_fields["feature_layer"].description)
    p.add_argument("--frame-text", dest="frame_text", choices=get_args(FrameText), default="visual",
                   help=SparrowConfig.model_fields["frame_text"].description)
    p.add_argument("--bridge-layer", default="default",
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
    p.add_argument("--regenerate-engine-args", type=_json_object, default={}, metavar="JSON",
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
    _add_data_arguments(p)
    p.set_defaults(func=_cmd_extract_features)

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
    p.add_argument("--bridge-layer", default="default",
                   help="online mode with IVSB: target layer m* whose visual states are bridged, "
                   "an index or 'default' (L // 2)")
    _add_data_arguments(p)
    add_sparrow_arguments(p)
    add_settings_arguments(p, TrainSettings)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "eval-acceptance",
        help="offline acceptance length of a trained draft on a feature set",
        description="Greedy chains of K drafts over the answers of a feature set, stepped as "
        "vLLM steps (acceptance length = 1 + accepted / drafts, per-position rates).",
    )
    p.add_argument("--target", required=True, help="target model directory (HF format)")
    p.add_argument("--draft", required=True, help="draft directory (Sparrow or EAGLE form)")
    p.add_argument("--features", required=True, help="directory written by extract-features")
    p.add_argument("--k", type=int, default=4, help="draft chain length (num_speculative_tokens)")
    p.add_argument("--visual-rows", choices=["text", "bridge", "full"],
                   help="rows the draft sees at visual positions (default: its serving form)")
    p.add_argument("--out", help="write the result as JSON here")
    p.set_defaults(func=_cmd_eval_acceptance)

    p = sub.add_parser(
        "analyze",
        help="from which layer does the target no longer need its visual rows? (and --bridge-layer)",
        description="For every layer x, runs the target with its visual rows removed from layer x on "
        "(text rows keep their positions), teacher-forced on its own greedy answers, and compares "
        "it with the full model: next-token agreement, KL divergence, and answer accuracy where the "
        "manifest has reference answers. Writes OUT/analysis.json and OUT/analysis.png and prints "
        "the smallest layer from which predictions are unchanged and a suggested --bridge-layer.",
    )
    p.add_argument("--target", required=True, help="target model directory (HF format, a vision-language model)")
    p.add_argument("--data", required=True, help="dataset manifest (as extract-features takes it)")
    p.add_argument("--out", required=True, help="output directory (analysis.json, analysis.png)")
    p.add_argument("--media-root", help="directory relative video/image paths resolve against "
                   "(default: the manifest's directory)")
    p.add_argument("--num-frames", type=int, help="sample this many frames per video, uniformly")
    from sparrow_vllm.analysis.internalization import AnalyzeSettings

    add_settings_arguments(p, AnalyzeSettings)
    p.set_defaults(func=_cmd_analyze)

    p = sub.add_parser(
        "check",
        help="before deploying: validate a target + draft and prove Sparrow keeps the output",
        description="Validates the pair, then serves the target's prompt kinds (text, image, "
        "video, video+image as its family takes them) greedily with the target alone and with "
        "Sparrow, each in a fresh vLLM engine, and compares the outputs token for token. "
        "Reports acceptance length, the runner, adapter and draft attention backend that ran, "
        "the draft cache's memory, and visual rows found in the draft cache (must be 0). "
        "Exits 1 with the reasons on any mismatch.",
    )
    p.add_argument("--target", required=True, help="target model directory (HF format)")
    p.add_argument("--draft", required=True, help="Sparrow draft directory")
    p.add_argument("--json", help="also write the report as JSON here")
    p.add_argument("--workdir", help="keep the engines' jobs, results and logs here")
    from sparrow_vllm.check import CheckSettings

    add_settings_arguments(p, CheckSettings)
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("toy-world", help="the synthetic video world: data, target, drafts")
    from sparrow_vllm.toy_world.build import add_arguments

    add_arguments(p)
    p.set_defaults(func=_cmd_toy_world)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run one tool; a usage mistake or a draft that does not fit exits 2 with its message
    (no traceback), anything else raises."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (UsageError, SparrowConfigError) as error:
        parser.exit(2, f"error: {error}\n")
    except RunStopped as error:
        parser.exit(1, f"stopped: {error}\n")
    except ValidationError as error:
        if error.title not in OPTION_SCHEMAS:
            raise
        parser.exit(2, f"error: {validation_words(error)}\n")


if __name__ == "__main__":
    main()
