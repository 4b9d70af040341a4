"""`sparrow-vllm init-draft`, `self-distill` and `export-eagle`: making a draft artefact."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sparrow_vllm.cli.options import (
    add_draft_arguments,
    add_draft_location_arguments,
    draft_fields_from,
)

logger = logging.getLogger(__name__)


def _cmd_init_draft(args: argparse.Namespace) -> None:
    from sparrow_vllm.draft.checkpoint import save_draft
    from sparrow_vllm.draft.factory import new_draft
    from sparrow_vllm.families import load_family

    model = new_draft(load_family(args.target), seed=args.seed, **draft_fields_from(args))
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

    out = export_eagle(args.draft, Path(args.out), draft_revision=args.draft_revision)
    logger.info("EAGLE checkpoint for vLLM's built-in `eagle` method written to %s", out)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init-draft", help="write a randomly initialised Sparrow draft")
    p.add_argument("--target", required=True, help="target model directory (HF format)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    add_draft_arguments(p)
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
    add_draft_location_arguments(p, "Sparrow draft")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_cmd_export_eagle)
