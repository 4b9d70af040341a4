#!/usr/bin/env bash
# The IVSB study on the toy world: where the committed toy-world target internalizes the
# video (`sparrow-vllm analyze` -> benchmarks/results/analyze_toy_world.*), then IVSB
# recipes against VATA+MTP (benchmarks/ablation.py -> benchmarks/results/ivsb_study_toy_world.*)
# at 0.5k and 25k visual tokens on held-out sets large enough to resolve 0.3 in acceptance
# length. About two hours on 2 CPU cores (most of it the 25k-token validation
# features and the drafts); every step whose output exists is skipped, so a rerun resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${TARGET:-models/toy-world/target}
WORK=${WORK:-artifacts/ivsb-study}
RESULTS=${RESULTS:-benchmarks/results}
STEPS=${STEPS:-600}
VAL_512=${VAL_512:-64}
VAL_25K=${VAL_25K:-24}
RUN=".venv/bin/sparrow-vllm"
mkdir -p "$WORK" "$RESULTS"

# 1. where the target internalizes the video (held-out scenes, all four questions)
if [ ! -f "$WORK/analysis/analysis.json" ]; then
  [ -f "$WORK/analyze-data/train.jsonl" ] || $RUN toy-world data --out "$WORK/analyze-data" --num 64 --frames 8,16 --seed 4
  $RUN analyze --target "$TARGET" --data "$WORK/analyze-data/train.jsonl" --out "$WORK/analysis"
fi
cp "$WORK/analysis/analysis.json" "$RESULTS/analyze_toy_world.json"
cp "$WORK/analysis/analysis.png" "$RESULTS/analyze_toy_world.png"
BRIDGE=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['suggested_bridge_layer'])" "$WORK/analysis/analysis.json")

# 2. training rows (the toy-world build's recipe: scene seed 2, the target's own answers)
#    with the bridge states of L // 2 = 4 and of the layer analyze suggests
[ -f "$WORK/data/train.jsonl" ] || $RUN toy-world data --out "$WORK/data" --num 384 --frames 8,16,64 \
    --questions describe,describe,count,first --seed 2
for LAYER in 4 "$BRIDGE"; do
  [ -f "$WORK/features-b$LAYER/index.json" ] || $RUN extract-features --target "$TARGET" \
      --data "$WORK/data/train.jsonl" --out "$WORK/features-b$LAYER" --regenerate 64 --regenerate-with hf \
      --bridge-layer "$LAYER"
done

# 3. held-out describe clips at the shortest and longest visual lengths (scene seed 3)
#    (a 25k-token row takes about 90 s here: small shards, so an interrupted run loses little)
for TOKENS in 512 25000; do
  NUM=$([ "$TOKENS" -gt 5000 ] && echo "$VAL_25K" || echo "$VAL_512")
  SHARDS=$([ "$TOKENS" -gt 5000 ] && echo "--regenerate-batch 2 --shard-size 4" || echo "")
  [ -f "$WORK/val-$TOKENS/train.jsonl" ] || $RUN toy-world data --out "$WORK/val-$TOKENS" --num "$NUM" \
      --visual-tokens "$TOKENS" --questions describe --seed 3
  # shellcheck disable=SC2086
  $RUN extract-features --target "$TARGET" --data "$WORK/val-$TOKENS/train.jsonl" \
      --out "$WORK/val-$TOKENS-features" --regenerate 64 --regenerate-with hf --max-seq-len 40000 $SHARDS
done

# 4. the drafts, then their acceptance (drafts already in $WORK/drafts are reused)
VARIANTS="VATA+MTP;all three;MTP+IVSB;all three, drop 0.5;all three, m*=$BRIDGE;all three, IVSB 1/3;all three, m*=$BRIDGE, drop 0.5"
ABLATION=(.venv/bin/python benchmarks/ablation.py --target "$TARGET" --features "$WORK/features-b4"
          --bridge-features "$BRIDGE=$WORK/features-b$BRIDGE" --variants "$VARIANTS" --steps "$STEPS"
          --work "$WORK/drafts" --reuse)
"${ABLATION[@]}" --train-only
"${ABLATION[@]}" --val "512=$WORK/val-512-features" --val "25000=$WORK/val-25000-features" \
    --out "$RESULTS/ivsb_study_toy_world.json"
