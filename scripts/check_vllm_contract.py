"""Print where each vLLM touch point of sparrow-vllm lives, and what no longer matches.

Usage: python scripts/check_vllm_contract.py [ROOT | --vllm VERSION]
  ROOT           a vLLM source root (site-packages, or a folder holding an extracted vllm/);
                 default: the installed vLLM
  --vllm 0.33.0  that release's wheel (downloaded once, see sparrow_vllm.serving.vllm.source_roots)
Exit status 1 when a touch point is broken. The list is sparrow_vllm/serving/vllm/contract.py;
the checks are sparrow_vllm/serving/vllm/contract_check.py (tests/unit/serving/vllm/test_vllm_contract.py runs them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sparrow_vllm.serving.vllm.contract_check import check_source, describe, validate_touch_points
from sparrow_vllm.serving.vllm.source_roots import installed_source, wheel_source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("root", nargs="?", type=Path, help="vLLM source root (default: installed)")
    where.add_argument("--vllm", metavar="VERSION", help="check this release's wheel")
    args = parser.parse_args(argv)
    root = (wheel_source(args.vllm) if args.vllm else args.root) or installed_source()
    print(f"vLLM source: {root}")
    print("\n".join(describe(root)))
    problems = validate_touch_points() + check_source(root)
    print("\n".join(["", f"{len(problems)} problem(s)", *problems]))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
