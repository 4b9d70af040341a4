"""Real geometry without real weights: the drafter's share of a decode step at a real
model's size, Sparrow against vLLM's built-in eagle, on both of vLLM's model runners.

The target has Qwen2.5-VL-7B-Instruct's geometry (config only; vLLM's load_format="dummy"
gives it random weights) and the toy-world target's tokenizer and processor; the drafts
are random one-layer networks of the target's width and heads (sparrow_vllm/bench/
geometry.py builds all three). Timings need no trained weights. Per method (sparrow,
eagle), runner (v1: vLLM's V1 model runner, v2: Model Runner V2), batch and visual length
(toy-world video tokens per request) it queues one batch of requests and times full
decode steps (every request decoding with K drafts, so the target verifies K+1 tokens
per request; steps with a prefill in them are left out):

  target verify ms/step  the step's execute_model + sample_tokens minus the drafter: the
                         target forward on K+1 tokens per request, its logits, rejection
                         sampling and the runner's bookkeeping (`target_forward_ms`: the
                         forward alone, where the runner's call of it is seen)
  drafter ms/step        the runner's drafter (`propose`) in that step
  drafter share          drafter / (target verify + drafter)

Goal (issue 18): Sparrow's share <= 5% at 25k visual tokens, against eagle's, which grows
with the video. Writes OUT.json (rows, every step record, machine, provenance), OUT.md and
OUT.png (share against visual tokens per method, batch and runner).

CPU smoke test at a scaled-down geometry (2 cores: about 2 minutes for its 4 engines, run
one after another):

    python benchmarks/real_geometry.py --scale smoke \\
        --lengths 512 --batches 1,2 --decode-steps 4 --out artifacts/real_geometry_smoke

On a GPU (Qwen2.5-VL-7B geometry, bf16, CUDA graphs for the target; commit the result
with the GPU named, e.g. benchmarks/results/real_geometry_7b_h100):

    python benchmarks/real_geometry.py --scale 7b --no-enforce-eager \\
        --engine-args '{"gpu_memory_utilization": 0.9}' --out benchmarks/results/real_geometry_7b_<gpu>
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

from sparrow_vllm.bench.geometry import SCALES, TOY_TARGET, build_models, speculative_config
from sparrow_vllm.bench.geometry_job import run_in_subprocess
from sparrow_vllm.bench.machine import describe_machine
from sparrow_vllm.provenance import provenance

logger = logging.getLogger("real_geometry")
LENGTHS = (512, 1536, 8192, 17408, 25000)
BATCHES = (1, 8)
SCENE_SEED = 3
SHARE_GOAL = 0.05


def _job(args: argparse.Namespace, models: dict[str, Path], method: str) -> dict:
    runs = [{"visual_tokens": n, "batch": b} for b in args.batches for n in args.lengths]
    steps = args.skip_steps + args.decode_steps
    # enough tokens that no request finishes before its batch has `steps` full decode
    # steps, even at full acceptance and with every other request's prefill in between
    max_tokens = (args.k + 1) * (steps + max(args.batches) + 4)
    max_len = max(args.lengths) + 512 + max_tokens
    engine = {"dtype": args.dtype, "enforce_eager": args.enforce_eager, "max_num_seqs": max(args.batches),
              "max_model_len": max_len, "max_num_batched_tokens": max_len,  # a whole video per step
              **json.loads(args.engine_args)}
    return {"target": str(models["target"]), "engine": engine, "runs": runs, "max_tokens": max_tokens,
            "speculative_config": speculative_config(method, models[method], args.k, args.adaptive_draft_length),
            "skip_steps": args.skip_steps, "decode_steps": args.decode_steps, "scene_seed": SCENE_SEED,
            "question": args.question}


def _ms(values: list[float]) -> float:
    return 1000 * statistics.median(values) if values else float("nan")


def summarise(results: dict[tuple[str, str], dict], k: int) -> list[dict]:
    """One row per (method, runner, batch, visual tokens): medians over the measured steps."""
    rows = []
    for (method, runner), result in results.items():
        for run in result["runs"]:
            steps = run["steps"]
            target = [s["exec_s"] + s["sample_s"] - s["draft_s"] for s in steps]
            drafter = [s["draft_s"] for s in steps]
            forward = [s["forward_s"] for s in steps if s["forward_calls"]]
            shares = [d / (t + d) for t, d in zip(target, drafter, strict=True) if t + d > 0]
            rows.append({
                "method": method, "runner": runner, "batch": run["batch"], "visual_tokens": run["visual_tokens"],
                "k": k, "decode_steps": len(steps),
                "verified_tokens_per_step": statistics.mean(s["tokens"] for s in steps) if steps else 0,
                "target_verify_ms": _ms(target), "drafter_ms": _ms(drafter),
                "target_forward_ms": _ms(forward) if len(forward) == len(steps) else None,
                "step_ms": _ms([t + d for t, d in zip(target, drafter, strict=True)]),
                "drafter_share": statistics.median(shares) if shares else float("nan"),
                "drafter_calls_per_step": statistics.mean(s["draft_calls"] for s in steps) if steps else 0,
                "acceptance_length": run["acceptance_length"], "drafts_verified": run["drafts"],
            })
    return rows


def goals(rows: list[dict]) -> dict:
    """Sparrow's drafter share at the longest length (per runner and batch), <= 5%?"""
    longest = max(r["visual_tokens"] for r in rows)
    out = {}
    for r in rows:
        if r["visual_tokens"] == longest:
            out[f"{r['method']}_{r['runner']}_b{r['batch']}_share_at_{longest}"] = r["drafter_share"]
    sparrow = [r["drafter_share"] for r in rows if r["method"] == "sparrow" and r["visual_tokens"] == longest]
    if sparrow:
        out[f"sparrow_share_at_{longest}_within_5pct"] = max(sparrow) <= SHARE_GOAL
    return out


def markdown(rows: list[dict], geometry: str, machine: str) -> str:
    lines = [f"Geometry: {geometry}; machine: {machine}.", "",
             "| method | runner | batch | visual tokens | target verify ms/step (K+1 tok/req) "
             "| target forward ms | drafter ms/step | drafter share | steps | acceptance length |",
             "|" + "---|" * 10]
    for r in rows:
        fwd = "-" if r["target_forward_ms"] is None else f"{r['target_forward_ms']:.2f}"
        acc = "-" if r["acceptance_length"] is None else f"{r['acceptance_length']:.2f}"
        lines.append(f"| {r['method']} | {r['runner']} | {r['batch']} | {r['visual_tokens']} "
                     f"| {r['target_verify_ms']:.2f} | {fwd} | {r['drafter_ms']:.2f} "
                     f"| {100 * r['drafter_share']:.1f}% | {r['decode_steps']} | {acc} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    colours = {"sparrow": "tab:red", "eagle": "tab:blue"}
    styles = {"v1": "-", "v2": "--"}
    markers = ["o", "s", "^", "D", "v"]
    batches = sorted({r["batch"] for r in rows})
    for key in sorted({(r["method"], r["runner"], r["batch"]) for r in rows}):
        method, runner, batch = key
        mine = sorted((r for r in rows if (r["method"], r["runner"], r["batch"]) == key),
                      key=lambda r: r["visual_tokens"])
        x = [r["visual_tokens"] for r in mine]
        style = dict(color=colours.get(method, "grey"), linestyle=styles.get(runner, ":"),
                     marker=markers[batches.index(batch) % len(markers)], label=f"{method} {runner} b{batch}")
        axes[0].plot(x, [100 * r["drafter_share"] for r in mine], **style)
        axes[1].plot(x, [r["drafter_ms"] for r in mine], **style)
    axes[0].axhline(100 * SHARE_GOAL, color="grey", lw=0.8, label="goal (5%)")
    for ax, name in zip(axes, ("drafter share of a decode step (%)", "drafter ms per decode step"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("visual tokens")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="7b",
                        help="geometry: 7b (Qwen2.5-VL-7B-Instruct) or smoke (a few layers, small widths)")
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="visual tokens, comma list")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="batch sizes, comma list")
    parser.add_argument("--runners", default="v1,v2", help="comma list of v1, v2")
    parser.add_argument("--methods", default="sparrow,eagle", help="comma list of sparrow, eagle")
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    parser.add_argument("--decode-steps", type=int, default=20, help="full decode steps measured per point")
    parser.add_argument("--skip-steps", type=int, default=2, help="full decode steps dropped first per point")
    parser.add_argument("--adaptive-draft-length", action="store_true",
                        help="leave Sparrow's adaptive draft length on (steps with fewer than K drafts "
                             "are then not measured)")
    parser.add_argument("--question", default="describe", help="toy-world question asked about every scene")
    parser.add_argument("--dtype", default=None, help="engine dtype (default: the scale's, float32 on a CPU)")
    parser.add_argument("--no-enforce-eager", dest="enforce_eager", action="store_false",
                        help="allow CUDA graphs / torch.compile (GPUs)")
    parser.add_argument("--engine-args", default="{}", help="extra vllm.LLM kwargs as JSON")
    parser.add_argument("--toy-target", type=Path, default=TOY_TARGET,
                        help="where the config keys, tokenizer and processor come from")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="where the weightless target and random drafts go (reused; default "
                             "artifacts/real_geometry_models/SCALE, git-ignored: at 7b the drafts are 2 GB)")
    parser.add_argument("--out", type=Path, default=Path("artifacts/real_geometry"),
                        help="output prefix: OUT.json, OUT.md, OUT.png (engine logs in OUT-runs/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    cpu = not torch.cuda.is_available()
    geometry = SCALES[args.scale]
    args.dtype = args.dtype or ("float32" if cpu else geometry.dtype)
    args.lengths = [int(n) for n in args.lengths.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    runners, methods = args.runners.split(","), args.methods.split(",")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    models_dir = args.models_dir or Path("artifacts") / "real_geometry_models" / args.scale
    models = build_models(models_dir, geometry, args.toy_target, sys.argv)
    logger.info("models (%s) built in %.1fs: %s", geometry.name, time.time() - start, models)
    results, seconds = {}, {}
    for runner in runners:
        for method in methods:
            start = time.time()
            logger.info("%s on %s", method, runner)
            results[(method, runner)] = run_in_subprocess(
                _job(args, models, method), runner, cpu, Path(f"{args.out}-runs"), f"{method}-{runner}")
            seconds[f"{method}-{runner}"] = time.time() - start
    rows = summarise(results, args.k)
    machine = describe_machine()
    result = {
        "benchmark": "real_geometry", "geometry": {"name": geometry.name, "text": geometry.text,
                                                   "vision": geometry.vision},
        "machine": machine, "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "wall_seconds": seconds, "rows": rows, "goals": goals(rows), "provenance": provenance(sys.argv),
        "runner_info": {f"{m}-{r}": res["runner_info"] for (m, r), res in results.items()},
        "runs": {f"{m}-{r}": res["runs"] for (m, r), res in results.items()},
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows, geometry.name, machine))
    plot(rows, args.out.with_suffix(".png"), f"{geometry.name}, K={args.k}, {machine}")
    logger.info("\n%s\ngoals: %s", markdown(rows, geometry.name, machine), json.dumps(result["goals"]))


if __name__ == "__main__":
    main()
