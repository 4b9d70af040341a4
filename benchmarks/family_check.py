"""`sparrow-vllm check` on a toy target of every VLM family, as a table.

For each family: a toy target, a draft self-distilled briefly on the target's own outputs
(the recipe the tests use), then `check` on each runner asked for. Writes OUT.json and
OUT.md: per family and runner, whether every prompt kind kept its greedy output, the
acceptance length, the visual rows found in the draft cache (must be 0) and the text rows
it kept after a video prefill.

    python benchmarks/family_check.py --runners v1 v2 --out benchmarks/results/family_check_toy

On a CPU machine, Model Runner V2 runs in Triton's interpreter with the test hook `make setup`
installs: export TRITON_INTERPRET=1 SPARROW_TEST_TRITON_CPU=1 for `--runners v2`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from sparrow_vllm.bench.machine import describe_machine
from sparrow_vllm.check import CheckSettings, run_check
from sparrow_vllm.draft.checkpoint import save_draft
from sparrow_vllm.draft.factory import new_draft
from sparrow_vllm.families import load_family
from sparrow_vllm.provenance import provenance
from sparrow_vllm.toy_targets import VLM_ARCHES, build_toy_target
from sparrow_vllm.training.self_distill import SelfDistillSettings, self_distill

logger = logging.getLogger("family_check")
DISTILL = SelfDistillSettings(num_prompts=512, steps=600, seed=0)


def toy_pair(arch: str, root: Path, seed: int) -> tuple[Path, Path]:
    target = build_toy_target(arch, root / f"{arch}-target", seed=seed)
    fresh = save_draft(root / f"{arch}-draft-init", new_draft(load_family(target)))
    return target, self_distill(target, fresh, root / f"{arch}-draft", DISTILL)


def markdown(rows: list[dict]) -> str:
    lines = ["| family | runner | prompt kinds, all equal | acceptance length | visual rows cached | text rows cached | draft cache MiB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        kinds = ", ".join(p["kind"] for p in r["prompts"])
        equal = "yes" if r["prompts"] and all(p["equal"] for p in r["prompts"]) else "NO"
        accept = f"{r['acceptance_length']:.2f}" if r["acceptance_length"] is not None else "-"
        mib = f"{r['draft_cache']['bytes'] / 2**20:.1f}" if r["draft_cache"] else "-"
        lines.append(f"| {r['arch']} | {r['settings']['runner']} | {kinds}: {equal} | {accept} "
                     f"| {r['visual_rows_in_draft_cache']} | {r['text_rows_in_draft_cache']} | {mib} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arches", nargs="+", default=list(VLM_ARCHES), choices=VLM_ARCHES)
    parser.add_argument("--runners", nargs="+", default=["v1"], choices=["v1", "v2", "auto"])
    parser.add_argument("--out", required=True, help="output path without suffix")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="family-check-") as tmp:
        for i, arch in enumerate(tqdm(args.arches, desc="families")):
            target, draft = toy_pair(arch, Path(tmp), seed=10 + i)
            for runner in args.runners:
                report = run_check(target, draft, CheckSettings(runner=runner, max_model_len=2048, max_tokens=24))
                logger.info("%s", report.summary())
                rows.append({"arch": arch, **report.model_dump(exclude={"target", "draft"})})
    result = {"rows": rows, "machine": describe_machine(), "provenance": provenance(sys.argv)}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(rows))
    logger.info("%s", markdown(rows))
    if not all(r["passed"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
