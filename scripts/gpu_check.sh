#!/usr/bin/env bash
# One prepared GPU check (issue 28): every check that needs a CUDA GPU, about 8 minutes on
# one H100, one JSON: benchmarks/results/gpu_check_<device>.json. See scripts/gpu_check.py.
#
#   make setup && scripts/gpu_check.sh     # on the GPU machine (CUDA build of vLLM)
#   scripts/gpu_check.sh --dry-run         # anywhere: the plan and the JSON's shape
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ ! -x "$PY" ]; then
    echo "gpu_check: $PY not found: run \`make setup\` first (on a GPU machine it installs vLLM's CUDA build)" >&2
    exit 2
fi
# nothing is downloaded: the toy world is in the repository, the 7B geometry has dummy weights
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$PY" scripts/gpu_check.py "$@"
