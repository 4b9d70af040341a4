"""Feature-extraction throughput on the toy world: 1 and 2 workers (Ray), and regeneration
of the target's answers with HF transformers' generate against vLLM.

Runs `sparrow-vllm extract-features` as a user does, once per setting, on one toy-world
manifest (the committed target), and reports per setting: wall time of the whole command,
start-up (until the first shard is written: model loading, the vLLM engine, Ray), and the
steady rate in samples/s after it (from the times the shards were finished). Checks that
nothing is lost: every setting writes every row, and the records agree (vLLM's answers
equal HF's token for token; 2 workers write the records of 1). Writes OUT.json, OUT.md
and OUT.png.

    python benchmarks/extraction_throughput.py --out benchmarks/results/extraction_throughput_toy_world

On a 2-core machine two workers share the cores, so expect ~1x from workers; the point is
the vLLM/HF ratio and that nothing is lost.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from sparrow_vllm.bench.machine import describe_machine
from sparrow_vllm.provenance import provenance
from sparrow_vllm.toy_world.dataset import write_dataset
from sparrow_vllm.training.features import FeatureShards

logger = logging.getLogger("extraction_throughput")
REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "models" / "toy-world" / "target"
# name: (workers, regenerate_with or None)
SETTINGS = {
    "features - 1 worker": (1, None),
    "features - 2 workers": (2, None),
    "HF regenerate - 1 worker": (1, "hf"),
    "vLLM regenerate - 1 worker": (1, "vllm"),
    "vLLM regenerate - 2 workers": (2, "vllm"),
}


def run_setting(manifest: Path, out: Path, workers: int, regenerate: str | None, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "sparrow_vllm.cli", "extract-features", "--target", str(TARGET),
               "--data", str(manifest), "--out", str(out), "--shard-size", str(args.shard_size),
               "--workers", str(workers)]
    if regenerate:
        command += ["--regenerate", str(args.new_tokens), "--regenerate-with", regenerate]
    env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.time()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.time() - started
    (out.parent / f"{out.name}.log").write_text(proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-4000:]}")
    finished = sorted(p.stat().st_mtime for p in out.glob("shard-*.json"))
    first, last = finished[0] - started, finished[-1] - started
    rows_after_first = args.rows - args.shard_size
    return {"workers": workers, "regenerate": regenerate, "wall_s": round(wall, 1),
            "startup_s": round(first, 1), "steady_samples_per_s": round(rows_after_first / max(last - first, 1e-6), 2),
            "overall_samples_per_s": round(args.rows / wall, 2)}


def compare(a: Path, b: Path, exact_answers: bool = True) -> dict:
    ra, rb = FeatureShards(a), FeatureShards(b)
    answers = sum(ra[i]["input_ids"].tolist() == rb[i]["input_ids"].tolist() for i in range(min(len(ra), len(rb))))
    diff = max((ra[i]["features"] - rb[i]["features"]).abs().max().item() for i in range(min(len(ra), len(rb))))
    return {"records": [len(ra), len(rb)], "equal_input_ids": answers, "max_feature_diff": diff}


def write_report(result: dict, out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    rows = ["| setting | wall (s) | start-up (s) | steady samples/s | overall samples/s |", "|---|---|---|---|---|"]
    for name, r in result["settings"].items():
        rows.append(f"| {name} | {r['wall_s']} | {r['startup_s']} | {r['steady_samples_per_s']} | "
                    f"{r['overall_samples_per_s']} |")
    checks = [f"- {name}: {c['equal_input_ids']} of {c['records'][1]} records with equal ids, "
              f"max feature difference {c['max_feature_diff']:.2g}" for name, c in result["checks"].items()]
    out.with_suffix(".md").write_text(
        f"# Extraction throughput, toy world ({result['rows']} rows, {result['frames']} frames, "
        f"{result['new_tokens']} regenerated tokens)\n\nMachine: {result['machine']}\n\n"
        + "\n".join(rows) + "\n\nNothing lost:\n\n" + "\n".join(checks) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["settings"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh(names, [result["settings"][n]["steady_samples_per_s"] for n in names], color="tab:blue")
    ax.set_xlabel("samples/s after start-up")
    ax.set_title(f"extract-features on the toy world ({result['machine'].split(',')[0]})")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output path without suffix")
    parser.add_argument("--rows", type=int, default=64, help="manifest rows")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (8 video tokens each)")
    parser.add_argument("--new-tokens", type=int, default=48, help="--regenerate MAX_NEW_TOKENS")
    parser.add_argument("--shard-size", type=int, default=8, help="rows per shard")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma list of settings to run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    chosen = [s.strip() for s in args.settings.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = write_dataset(root / "data", num=args.rows, frames=[args.frames], seed=11,
                                 questions=["describe", "count", "number", "first"])
        results, dirs = {}, {}
        for name in tqdm(chosen, desc="settings"):
            workers, regenerate = SETTINGS[name]
            dirs[name] = root / name.replace(" - ", "_").replace(" ", "_")
            results[name] = run_setting(manifest, dirs[name], workers, regenerate, args)
            logger.info("%s: %s", name, results[name])
        checks = {}
        pairs = [("2 workers vs 1 (features)", "features - 2 workers", "features - 1 worker"),
                 ("vLLM vs HF regeneration", "vLLM regenerate - 1 worker", "HF regenerate - 1 worker"),
                 ("2 workers vs 1 (vLLM regeneration)", "vLLM regenerate - 2 workers", "vLLM regenerate - 1 worker")]
        for label, a, b in pairs:
            if a in dirs and b in dirs:
                checks[label] = compare(dirs[a], dirs[b])
    result = {"machine": describe_machine(), "rows": args.rows, "frames": args.frames, "new_tokens": args.new_tokens,
              "shard_size": args.shard_size, "torch_threads": torch.get_num_threads(), "settings": results,
              "checks": checks, "provenance": provenance(sys.argv)}
    write_report(result, out)
    logger.info("written %s.{json,md,png}", out)


if __name__ == "__main__":
    main()
