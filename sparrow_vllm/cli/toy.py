"""`sparrow-vllm toy-target` and `toy-world`: tiny offline targets and the synthetic video world."""

from __future__ import annotations

import argparse
import logging

from sparrow_vllm.toy_targets import ARCHES as TOY_ARCHES

logger = logging.getLogger(__name__)


def _cmd_toy_target(args: argparse.Namespace) -> None:
    from sparrow_vllm.toy_targets import build_toy_target

    out = build_toy_target(args.arch, args.out, num_layers=args.num_target_layers, seed=args.seed)
    logger.info("toy %s target written to %s", args.arch, out)


def _cmd_toy_world(args: argparse.Namespace) -> None:
    from sparrow_vllm.toy_world import build

    build.run(args)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("toy-target", help="write a tiny offline target (random weights)")
    p.add_argument("--arch", choices=TOY_ARCHES, required=True)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-target-layers", type=int, default=2, help="decoder layers")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(func=_cmd_toy_target)

    p = sub.add_parser("toy-world", help="the synthetic video world: data, target, drafts")
    from sparrow_vllm.toy_world.build import add_arguments

    add_arguments(p)
    p.set_defaults(func=_cmd_toy_world)
