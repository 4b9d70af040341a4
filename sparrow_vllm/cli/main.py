"""`sparrow-vllm`: tools to make targets and drafts for tests, demos and users."""

from __future__ import annotations

import argparse
import logging

from pydantic import ValidationError

from sparrow_vllm.cli import bench, check, draft, toy, training
from sparrow_vllm.cli.options import OPTION_SCHEMAS, validation_words
from sparrow_vllm.errors import RunStopped, SparrowConfigError, UsageError

# one module per command group, in the order `--help` lists them
COMMAND_GROUPS = (toy, draft, training, check, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparrow-vllm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_commands(sub)
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
