"""`sparrow-vllm`: tools to make targets and drafts for tests, demos and users."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from sparrow_vllm.config import SparrowConfig

logger = logging.getLogger("sparrow_vllm.cli")

# SparrowConfig fields a user sets when making a draft; their help text is the schema's.
_DRAFT_FIELDS = ("num_layers", "feature_layer", "window", "fc_bias")


def _feature(value: str) -> str | int:
    return int(value) if value.lstrip("-").isdigit() else value


def add_sparrow_arguments(parser: argparse.ArgumentParser) -> None:
    """Options generated from SparrowConfig: one schema for config.json and the CLI."""
    for name in _DRAFT_FIELDS:
        field = SparrowConfig.model_fields[name]
        flag = (field.json_schema_extra or {}).get("cli", "--" + name.replace("_", "-"))
        kwargs: dict[str, Any] = {"dest": name, "default": field.default, "help": field.description}
        if field.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif name == "feature_layer":
            kwargs["type"] = _feature
        elif name == "window":
            kwargs["type"] = int
        else:
            kwargs["type"] = type(field.default)
        parser.add_argument(flag, **kwargs)


def _cmd_toy_target(args: argparse.Namespace) -> None:
    from sparrow_vllm.toy_target import build_toy_target

    out = build_toy_target(args.arch, args.out, num_layers=args.num_target_layers, seed=args.seed)
    logger.info("toy %s target written to %s", args.arch, out)


def _cmd_init_draft(args: argparse.Namespace) -> None:
    from sparrow_vllm.checkpoint import save_draft
    from sparrow_vllm.draft_factory import load_target_config, new_draft

    fields = {name: getattr(args, name) for name in _DRAFT_FIELDS}
    model = new_draft(load_target_config(args.target), seed=args.seed, **fields)
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
    from sparrow_vllm.eagle_export import export_eagle

    out = export_eagle(Path(args.draft), Path(args.out))
    logger.info("EAGLE checkpoint for vLLM's built-in `eagle` method written to %s", out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparrow-vllm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("toy-target", help="write a tiny offline target (random weights)")
    p.add_argument("--arch", choices=["qwen2", "qwen2_5_vl"], required=True)
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
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
