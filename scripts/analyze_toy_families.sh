#!/usr/bin/env bash
# `sparrow-vllm analyze` on each toy target family (random weights, 2 decoder layers:
# sparrow_vllm/toy_targets) over 16 toy-world clips of 8 and 16 frames, and what it
# recommends for --visual-budget; writes benchmarks/results/analyze_toy_families.{json,md}.
# A few minutes on 2 CPU cores. The recommendations say how the rule reads each family's
# curve; random-weight targets say nothing about a trained target's (see docs/training.md).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-artifacts/family-analyze}
RESULTS=${RESULTS:-benchmarks/results}
RUN=".venv/bin/sparrow-vllm"
mkdir -p "$WORK" "$RESULTS"
[ -f "$WORK/data/train.jsonl" ] || $RUN toy-world data --out "$WORK/data" --num 16 --frames 8,16 --seed 4
for ARCH in qwen2_5_vl qwen2_vl qwen3_vl llava_onevision; do
  [ -f "$WORK/$ARCH-target/config.json" ] || $RUN toy-target --arch "$ARCH" --out "$WORK/$ARCH-target" --seed 0
  [ -f "$WORK/$ARCH-analysis/analysis.json" ] || $RUN analyze --target "$WORK/$ARCH-target" \
      --data "$WORK/data/train.jsonl" --out "$WORK/$ARCH-analysis"
done
.venv/bin/python - "$WORK" "$RESULTS" <<'PY'
import json, sys
from pathlib import Path
work, results = Path(sys.argv[1]), Path(sys.argv[2])
rows = {}
for arch in ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "llava_onevision"):
    a = json.loads((work / f"{arch}-analysis" / "analysis.json").read_text())
    rows[arch] = {k: a.get(k) for k in ("internalization_layer", "num_layers", "recommended_visual_budget",
                                        "recommendation_reason", "budget_curve", "family")}
(results / "analyze_toy_families.json").write_text(json.dumps(rows, indent=1) + "\n")
lines = ["| toy family (random weights, 2 layers) | recommended --visual-budget | why |", "|---|---|---|"]
for arch, r in rows.items():
    lines.append(f"| {arch} | {r['recommended_visual_budget']} | {r['recommendation_reason']} |")
(results / "analyze_toy_families.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
