"""`sparrow-vllm toy-world ...`: make toy-world datasets, train and evaluate its target."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from sparrow_vllm.toy_world.scene import QUESTIONS
from sparrow_vllm.toy_world.target import FRAME_CHOICES

logger = logging.getLogger(__name__)


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",")]


class DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default; an option without one says in its help
    what happens when it is left out."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="toy_command", required=True)
    defaults_shown = {"formatter_class": DefaultsShown}
    p = sub.add_parser("data", help="write a LLaVA-style JSONL dataset of toy-world videos", **defaults_shown)
    p.add_argument("--out", required=True, help="output directory (train.jsonl + videos/)")
    p.add_argument("--num", type=int, default=256, help="rows")
    p.add_argument("--frames", type=_ints, default="8", help="frames per clip, comma list cycled over rows")
    p.add_argument("--visual-tokens", type=int,
                   help="instead of --frames: clips with about this many video tokens (default: use --frames)")
    p.add_argument("--questions", default=",".join(QUESTIONS),
                   help=f"comma list of {', '.join(QUESTIONS)}, cycled over rows")
    p.add_argument("--format", dest="video_format", choices=["npy", "mp4"], default="npy", help="clip files")
    p.add_argument("--seed", type=int, default=0, help="scene seed (0 trains the target; use others to hold out)")

    p = sub.add_parser("train-target", help="build and train the toy-world Qwen2.5-VL target on CPU", **defaults_shown)
    p.add_argument("--out", required=True, help="output directory of the trained target")
    p.add_argument("--steps", type=int, default=1800, help="optimizer steps")
    p.add_argument("--seed", type=int, default=0, help="seed of init and of the training scenes")
    p.add_argument("--init", help="continue from this trained target instead of a fresh one (default: a fresh one)")
    p.add_argument("--first-step", type=int, default=0,
                   help="number batches from here (with --init: the steps already trained)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=50, help="warm-up steps")
    p.add_argument("--frames", type=_ints, default=",".join(map(str, FRAME_CHOICES)),
                   help="clip lengths in frames, comma list; each batch picks one")

    p = sub.add_parser("evaluate", help="answer accuracy with the real, a blank and a shuffled video", **defaults_shown)
    p.add_argument("--target", required=True, help="toy-world target directory")
    p.add_argument("--num", type=int, default=64, help="held-out scenes per question")
    p.add_argument("--frames", type=int, default=8, help="frames per clip")
    p.add_argument("--out", help="write the accuracies as JSON here (default: log them only)")


def evaluate_all(target: str | Path, num: int, frames: int) -> dict[str, dict[str, float]]:
    from sparrow_vllm.toy_world.target import evaluate

    return {video: evaluate(target, num, frames, video=video) for video in ("real", "blank", "shuffled")}


def run(args: argparse.Namespace) -> None:
    if args.toy_command == "data":
        from sparrow_vllm.toy_world.dataset import frames_for_visual_tokens, write_dataset

        frames = [frames_for_visual_tokens(args.visual_tokens)] if args.visual_tokens else args.frames
        manifest = write_dataset(args.out, args.num, frames, args.seed, args.questions.split(","), args.video_format)
        logger.info("toy-world dataset written: %s (%d rows, frames %s)", manifest, args.num, frames)
    elif args.toy_command == "train-target":
        import tempfile

        from sparrow_vllm.toy_world.target import TargetTrainSettings, build_target, train_target

        settings = TargetTrainSettings(steps=args.steps, seed=args.seed, first_step=args.first_step,
                                       lr=args.lr, warmup=args.warmup, frames=tuple(args.frames))
        with tempfile.TemporaryDirectory() as tmp:
            init = args.init or build_target(Path(tmp) / "init", seed=args.seed)
            out = train_target(init, args.out, settings)
        accuracy = evaluate_all(out, 64, 8)
        (Path(out) / "toy_world_accuracy.json").write_text(json.dumps(accuracy, indent=2) + "\n")
        logger.info("toy-world target written to %s; accuracy %s", out, accuracy)
    elif args.toy_command == "evaluate":
        accuracy = evaluate_all(args.target, args.num, args.frames)
        logger.info("%s", json.dumps(accuracy, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(accuracy, indent=2) + "\n")
