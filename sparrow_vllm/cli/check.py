"""`sparrow-vllm check`: before deploying, prove a target + draft keep the output."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sparrow_vllm.cli.options import (
    add_draft_location_arguments,
    add_schema_arguments,
    settings_from,
)


def _cmd_check(args: argparse.Namespace) -> None:
    from sparrow_vllm.check import CheckSettings, run_check

    report = run_check(args.target, args.draft, settings_from(args, CheckSettings), workdir=args.workdir,
                       draft_revision=args.draft_revision)
    if args.json:
        Path(args.json).write_text(report.model_dump_json(indent=2) + "\n")
    print(report.summary())
    if not report.passed:
        sys.exit(1)


def add_commands(sub: argparse._SubParsersAction) -> None:
    from sparrow_vllm.check import CheckSettings

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
    add_draft_location_arguments(p, "Sparrow draft")
    p.add_argument("--json", help="also write the report as JSON here")
    p.add_argument("--workdir", help="keep the engines' jobs, results and logs here")
    add_schema_arguments(p, CheckSettings)
    p.set_defaults(func=_cmd_check)
