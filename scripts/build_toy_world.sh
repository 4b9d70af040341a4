#!/usr/bin/env bash
# Rebuild the committed toy world under models/toy-world from scratch (seeded; about an
# hour and a half on 2 CPU cores): train the Qwen2.5-VL target, extract features with the target's
# own answers, train the Sparrow draft and the full-visual EAGLE-style baseline, measure
# acceptance at 0.5k and 25k visual tokens, store the weights in bf16.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-models/toy-world}
WORK=${WORK:-artifacts/toy-world-build}
STEPS_TARGET=${STEPS_TARGET:-2300}
STEPS_DRAFT=${STEPS_DRAFT:-1200}
RUN=".venv/bin/sparrow-vllm"
mkdir -p "$WORK" "$OUT"

# 1. the target, and how much its answers depend on the video: short clips first, then
#    clips of 6 to 1024 frames (48 to 8k video tokens) so that answers hold on long videos.
#    (The committed target's first 1800 steps used transformers' M-RoPE rule and fps 2, then
#    500 steps vLLM's rule, then the 400 long-clip steps; this script uses vLLM's rule and
#    4-second clips throughout: see sparrow_vllm/training/serving_positions.py and
#    CLIP_SECONDS in sparrow_vllm/toy_world/target.py.)
if [ ! -f "$WORK/target/config.json" ]; then
  $RUN toy-world train-target --out "$WORK/target-stage1" --steps "$STEPS_TARGET" --seed 0 --frames 6,8
  $RUN toy-world train-target --init "$WORK/target-stage1" --first-step "$STEPS_TARGET" --steps 400 --lr 1e-3 \
      --warmup 20 --out "$WORK/target"
fi

# 2. draft training data (held-out scene seed 2) with the target's own answers
$RUN toy-world data --out "$WORK/data" --num 384 --frames 8,16,64 --questions describe,describe,count,first --seed 2
$RUN extract-features --target "$WORK/target" --data "$WORK/data/train.jsonl" --out "$WORK/features" --regenerate 64

# 3. the drafts: Sparrow (text rows only, MTP) and the full-visual baseline. On this toy
#    world every IVSB recipe tried costs acceptance (benchmarks/results/ivsb_study_toy_world.md;
#    `sparrow-vllm analyze` shows the target reads the video up to its last layer), so the
#    Sparrow draft is trained without it (train's default; --no-ivsb says so explicitly);
#    --ivsb gives the paper's full recipe.
COMMON=(--target "$WORK/target" --features "$WORK/features" --steps "$STEPS_DRAFT" --batch-size 16
        --lr 2e-3 --ce-weight 1.0 --mtp-steps 2 --val-samples 32 --val-k 4 --val-every 400)
$RUN train "${COMMON[@]}" --out "$WORK/sparrow-draft" --no-ivsb
$RUN train "${COMMON[@]}" --out "$WORK/eagle-draft" --visual-rows full --no-ivsb --no-fc-bias
#    and Sparrow drafts that keep visual rows in their own cache: the budget `sparrow-vllm
#    analyze` recommends for this target (64: every row of an 8-frame clip, 64 uniform rows
#    of a longer one; benchmarks/results/analyze_toy_world.json), and every visual row.
$RUN train "${COMMON[@]}" --out "$WORK/budget-draft" --no-ivsb --visual-budget 64
$RUN train "${COMMON[@]}" --out "$WORK/all-draft" --no-ivsb --visual-budget all

# 4. acceptance at the shortest and longest visual lengths of the benchmarks
for TOKENS in 512 25000; do
  NUM=$([ "$TOKENS" -gt 5000 ] && echo 2 || echo 8)
  $RUN toy-world data --out "$WORK/val-$TOKENS" --num "$NUM" --visual-tokens "$TOKENS" --questions describe --seed 3
  $RUN extract-features --target "$WORK/target" --data "$WORK/val-$TOKENS/train.jsonl" \
      --out "$WORK/val-$TOKENS-features" --regenerate 64 --max-seq-len 40000
  for DRAFT in sparrow-draft eagle-draft budget-draft all-draft; do
    $RUN eval-acceptance --target "$WORK/target" --draft "$WORK/$DRAFT" --k 4 \
        --features "$WORK/val-$TOKENS-features" --out "$WORK/acceptance-$DRAFT-$TOKENS.json"
  done
done

# 5. copy to OUT with bf16 weights (the repo keeps the toy world under 20 MB)
.venv/bin/python - "$WORK" "$OUT" <<'PY'
import json, shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
work, out = Path(sys.argv[1]), Path(sys.argv[2])
for name in ("target", "sparrow-draft", "eagle-draft", "budget-draft", "all-draft"):
    src, dst = work / name, out / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("trainer_state.pt", "*.tmp"))
    for weights in dst.glob("*.safetensors"):
        tensors = {k: v.bfloat16() for k, v in load_file(str(weights)).items()}
        save_file(tensors, str(weights), metadata={"format": "pt"})
results = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("acceptance-*.json"))}
(out / "acceptance.json").write_text(json.dumps(results, indent=2) + "\n")
PY
du -sh "$OUT"/*
