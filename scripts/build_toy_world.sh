#!/usr/bin/env bash
# Rebuild the committed toy world under models/toy-world from scratch (seeded; ~40 min on
# 2 CPU cores): train the Qwen2.5-VL target, extract features with the target's own
# answers, train the Sparrow draft and the full-visual EAGLE-style baseline, store bf16.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-models/toy-world}
WORK=${WORK:-artifacts/toy-world-build}
STEPS_TARGET=${STEPS_TARGET:-1200}
STEPS_DRAFT=${STEPS_DRAFT:-1200}
RUN=".venv/bin/sparrow-vllm"
mkdir -p "$WORK" "$OUT"

$RUN toy-world train-target --out "$WORK/target" --steps "$STEPS_TARGET" --seed 0
$RUN toy-world data --out "$WORK/data" --num 768 --frames 4,8,16 --questions describe,describe,count,first --seed 2
$RUN extract-features --target "$WORK/target" --data "$WORK/data/train.jsonl" --out "$WORK/features" \
    --regenerate 64
COMMON=(--target "$WORK/target" --features "$WORK/features" --steps "$STEPS_DRAFT" --batch-size 16
        --lr 2e-3 --ce-weight 1.0 --mtp-steps 2 --val-samples 48 --val-k 4)
$RUN train "${COMMON[@]}" --out "$WORK/sparrow-draft"
$RUN train "${COMMON[@]}" --out "$WORK/eagle-draft" --visual-rows full --no-ivsb --no-fc-bias

.venv/bin/python - "$WORK" "$OUT" <<'PY'
"""Copy the models to OUT with bf16 weights (the repo keeps them under 20 MB)."""
import shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
work, out = Path(sys.argv[1]), Path(sys.argv[2])
for name in ("target", "sparrow-draft", "eagle-draft"):
    src, dst = work / name, out / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("trainer_state.pt", "*.tmp"))
    for weights in dst.glob("*.safetensors"):
        tensors = {k: v.bfloat16() for k, v in load_file(str(weights)).items()}
        save_file(tensors, str(weights), metadata={"format": "pt"})
PY
du -sh "$OUT"/*
