"""Acceptance and speedup against visual length: no speculation, vLLM's built-in `eagle`
with a draft that sees the video, and `sparrow`, in vLLM, one engine at a time.

For each visual length (video tokens per request) the same questions about the same
scenes are asked, greedy, with a fixed output length; requests run one at a time so that
prefill and decode times are the request's own. Per method and length it reports
acceptance length (vLLM's: 1 + accepted / drafts), per-position acceptance, prefill and
decode time, the drafter's time per decode step, DSR (decode speedup over no
speculation), ESR (end-to-end speedup), output tokens/s, and whether the text equals the
no-speculation text. Writes RESULTS.json, RESULTS.md and RESULTS.png.

On the bundled toy world (2 CPU cores: about 7 minutes with the defaults, 12 with the
cold-cache drafter pass that the committed results include):

    python benchmarks/visual_length_sweep.py --cold-cache-mb 256 \
        --out benchmarks/results/visual_length_sweep_toy_world

`--batch N` submits N requests together (max_num_seqs N, all N prefilled in one step) and
times the drafter on the steps all N decode in. Medians of the draft step come with a 95%
bootstrap interval over steps.

On a GPU with your own Qwen2.5-VL target and drafts (the requests are toy-world clips and
questions; any Qwen2.5-VL chat template renders them):

    python benchmarks/visual_length_sweep.py --target Qwen/Qwen2.5-VL-7B-Instruct \\
        --sparrow-draft path/to/sparrow-draft --eagle-draft path/to/eagle-draft \\
        --dtype bfloat16 --no-enforce-eager --engine-args '{"gpu_memory_utilization": 0.9}' \\
        --out results/qwen7b_sweep
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

from sparrow_vllm.bench.intervals import median_ci95, median_ratio_ci95
from sparrow_vllm.bench.machine import describe_machine
from sparrow_vllm.bench.offline import run_in_subprocess
from sparrow_vllm.bench.speedup import acceptance, counter_sum, speedups
from sparrow_vllm.provenance import provenance
from sparrow_vllm.toy_world.dataset import frames_for_visual_tokens

logger = logging.getLogger("visual_length_sweep")
TOY_WORLD = Path(__file__).resolve().parents[1] / "models" / "toy-world"
LENGTHS = (512, 1536, 8192, 17408, 25000)
SCENE_SEED = 3  # held out from the target's (0) and the drafts' (2) training scenes


def _requests(lengths: list[int], scenes: int, question: str) -> list[dict]:
    return [{"seed": SCENE_SEED, "index": i, "frames": frames_for_visual_tokens(n), "question": question}
            for n in lengths for i in range(scenes)]


def _job(args: argparse.Namespace, method: str, requests: list[dict]) -> dict:
    spec = None
    if method != "none":
        draft = args.sparrow_draft if method == "sparrow" else args.eagle_draft
        spec = {"method": method, "model": str(draft), "num_speculative_tokens": args.k}
        if method == "sparrow":
            # K drafts every step, like eagle: acceptance length and draft time per step
            # compare at the same K (serve_bench.py measures the adaptive draft length)
            spec["adaptive_draft_length"] = False
    # a whole video fits in one step's encoder budget (all the batch's videos: one prefill step)
    max_len = max(args.lengths) + 512
    engine = {"dtype": args.dtype, "enforce_eager": args.enforce_eager, "max_num_seqs": args.batch,
              "max_model_len": max_len, "max_num_batched_tokens": args.batch * max_len, **json.loads(args.engine_args)}
    warmup = {"seed": SCENE_SEED, "index": 1000, "frames": frames_for_visual_tokens(min(args.lengths)),
              "question": args.question}
    return {"target": str(args.target), "speculative_config": spec, "engine": engine,
            "temperature": args.temperature, "max_tokens": args.max_tokens, "ignore_eos": True, "warmup": warmup,
            "requests": requests, "batch": args.batch}


def _draft_steps(run: dict, frames: int) -> list[float]:
    return [s for r in run["requests"] if r["frames"] == frames for s in r["draft_decode_s"]]


def summarise(runs: dict[str, dict], lengths: list[int], cold: dict[str, dict] | None = None,
              temperature: float = 0.0) -> list[dict]:
    """One row per (method, visual length) from the per-request records (and the
    cold-cache drafter runs, when there are any). Texts are compared with no speculation
    only when greedy (at T > 0 equal texts are not expected: `text_equal_to_none` is None)."""
    rows = []
    for method, run in runs.items():
        for n in lengths:
            frames = frames_for_visual_tokens(n)
            mine = [r for r in run["requests"] if r["frames"] == frames]
            base = [r for r in runs["none"]["requests"] if r["frames"] == frames]
            out_tokens = sum(len(r["output_token_ids"]) for r in mine)
            prefill, decode = sum(r["prefill_s"] for r in mine), sum(r["decode_s"] for r in mine)
            row = {
                "method": method, "visual_tokens": n, "frames": frames, "requests": len(mine),
                "prompt_tokens": statistics.mean(r["prompt_tokens"] for r in mine),
                "prefill_s": prefill / len(mine), "decode_s": decode / len(mine),
                "output_tokens_per_s": out_tokens / (prefill + decode),
                "decode_tokens_per_s": out_tokens / decode,
                "temperature": temperature,
                "text_equal_to_none": None if temperature > 0 else all(
                    a["output_token_ids"] == b["output_token_ids"] for a, b in zip(mine, base, strict=True)),
                **speedups(base, mine),
            }
            if method != "none":
                stats = acceptance(counter_sum([r["counters"] for r in mine]))
                steps = _draft_steps(run, frames)
                row.update({
                    "acceptance_length": stats["acceptance_length"],
                    "per_position_rate": stats["per_position_rate"],
                    "draft_ms_per_step": 1000 * statistics.mean(steps),
                    "draft_ms_per_step_median": 1000 * statistics.median(steps),
                    "draft_ms_per_step_median_ci95": [1000 * v for v in median_ci95(steps)],
                    "draft_steps": len(steps),
                    "draft_prefill_ms": 1000 * statistics.mean(r["draft_prefill_s"] for r in mine),
                })
                if cold and method in cold:
                    row["draft_ms_per_step_cold_cache"] = 1000 * statistics.median(_draft_steps(cold[method], frames))
            rows.append(row)
    return rows


def targets(rows: list[dict], runs: dict[str, dict] | None = None) -> dict:
    """The issue's goals: Sparrow's draft time per step at the longest length within 1.1x
    of the shortest; Sparrow's DSR at the longest length above 1 and above eagle's; and (with
    `runs`) Sparrow's median draft step at most eagle's at every length, with a 95% interval
    of the ratio."""
    def row(method: str, n: int) -> dict:
        return next(r for r in rows if r["method"] == method and r["visual_tokens"] == n)

    lengths = sorted({r["visual_tokens"] for r in rows})
    short, long = lengths[0], lengths[-1]
    out = {"draft_step_ratio_long_over_short": row("sparrow", long)["draft_ms_per_step_median"]
           / row("sparrow", short)["draft_ms_per_step_median"]}
    out["draft_step_within_1.1x"] = out["draft_step_ratio_long_over_short"] <= 1.1
    if runs is not None:
        out["draft_step_ratio_long_over_short_ci95"] = median_ratio_ci95(
            _draft_steps(runs["sparrow"], frames_for_visual_tokens(long)),
            _draft_steps(runs["sparrow"], frames_for_visual_tokens(short)))
    if "draft_ms_per_step_cold_cache" in row("sparrow", long):
        out["cold_cache_draft_step_ratio_long_over_short"] = (
            row("sparrow", long)["draft_ms_per_step_cold_cache"] / row("sparrow", short)["draft_ms_per_step_cold_cache"])
    out["sparrow_dsr_long"] = row("sparrow", long)["dsr"]
    if any(r["method"] == "eagle" for r in rows):
        out["eagle_dsr_long"] = row("eagle", long)["dsr"]
        out["sparrow_dsr_above_1_and_eagle"] = out["sparrow_dsr_long"] > max(1.0, out["eagle_dsr_long"])
        if runs is not None:
            per_length = {}
            for n in lengths:
                sparrow, eagle = row("sparrow", n), row("eagle", n)
                frames = frames_for_visual_tokens(n)
                ratio = sparrow["draft_ms_per_step_median"] / eagle["draft_ms_per_step_median"]
                per_length[str(n)] = {
                    "sparrow_over_eagle_draft_step": ratio,
                    "ratio_ci95": median_ratio_ci95(_draft_steps(runs["sparrow"], frames),
                                                    _draft_steps(runs["eagle"], frames)),
                    "sparrow_draft_step_le_eagle": ratio <= 1.0,
                    "sparrow_dsr": sparrow["dsr"], "eagle_dsr": eagle["dsr"]}
            out["per_length"] = per_length
            out["sparrow_draft_step_le_eagle_at_every_length"] = all(
                v["sparrow_draft_step_le_eagle"] for v in per_length.values())
    return out


def _equal(flag: bool | None) -> str:
    return "- (T > 0)" if flag is None else ("yes" if flag else "NO")


def markdown(rows: list[dict]) -> str:
    head = ("| method | visual tokens | acceptance length | per-position acceptance | prefill s | decode s "
            "| draft ms/step (median [95% CI]) | draft ms/step, cold caches | DSR | ESR | out tok/s | text = none |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        pos = ", ".join(f"{p:.2f}" for p in r.get("per_position_rate", []))
        acc = f"{r['acceptance_length']:.2f}" if "acceptance_length" in r else "-"
        draft = "-"
        if "draft_ms_per_step" in r:
            lo, hi = r["draft_ms_per_step_median_ci95"]
            draft = f"{r['draft_ms_per_step_median']:.2f} [{lo:.2f}, {hi:.2f}] ({r['draft_steps']} steps)"
        cold = f"{r['draft_ms_per_step_cold_cache']:.2f}" if "draft_ms_per_step_cold_cache" in r else "-"
        lines.append(f"| {r['method']} | {r['visual_tokens']} | {acc} | {pos or '-'} | {r['prefill_s']:.2f} "
                     f"| {r['decode_s']:.2f} | {draft} | {cold} | {r['dsr']:.2f} | {r['esr']:.2f} "
                     f"| {r['output_tokens_per_s']:.1f} | {_equal(r['text_equal_to_none'])} |")
    return "\n".join(lines) + "\n"


def goals_markdown(goals: dict, settings: dict) -> str:
    """The goals beside the numbers: Sparrow's median draft step against eagle's per length."""
    mode = "enforce-eager" if settings["enforce_eager"] else "vLLM's default compile mode (enforce_eager false)"
    lines = [f"\nMode: {mode}; batch {settings['batch']}.\n",
             "| visual tokens | sparrow / eagle median draft step [95% CI] | goal sparrow <= eagle | sparrow DSR | eagle DSR |",
             "|---|---|---|---|---|"]
    for n, v in goals.get("per_length", {}).items():
        lo, hi = v["ratio_ci95"]
        lines.append(f"| {n} | {v['sparrow_over_eagle_draft_step']:.2f} [{lo:.2f}, {hi:.2f}] "
                     f"| {'met' if v['sparrow_draft_step_le_eagle'] else 'NOT met'} "
                     f"| {v['sparrow_dsr']:.2f} | {v['eagle_dsr']:.2f} |")
    ratio = goals["draft_step_ratio_long_over_short"]
    lo, hi = goals.get("draft_step_ratio_long_over_short_ci95", [float("nan")] * 2)
    lines.append(f"\nSparrow draft step longest/shortest length: {ratio:.2f} [{lo:.2f}, {hi:.2f}] (goal <= 1.1: "
                 f"{'met' if goals['draft_step_within_1.1x'] else 'NOT met'}).\n")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for method, colour in (("sparrow", "tab:red"), ("eagle", "tab:blue")):
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        x = [r["visual_tokens"] for r in mine]
        axes[0].plot(x, [r["dsr"] for r in mine], "o-", color=colour, label=f"{method} DSR")
        axes[0].plot(x, [r["esr"] for r in mine], "s--", color=colour, alpha=0.6, label=f"{method} ESR")
        axes[1].plot(x, [r["acceptance_length"] for r in mine], "o-", color=colour, label=method)
        axes[2].plot(x, [r["draft_ms_per_step_median"] for r in mine], "o-", color=colour, label=method)
        if "draft_ms_per_step_cold_cache" in mine[0]:
            axes[2].plot(x, [r["draft_ms_per_step_cold_cache"] for r in mine], "s--", color=colour, alpha=0.6,
                         label=f"{method}, cold caches")
    axes[0].axhline(1.0, color="grey", lw=0.8)
    titles = ("speedup over no speculation", "acceptance length (1 + accepted/drafts)", "drafter time per decode step (ms, median)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("visual tokens")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=Path, default=TOY_WORLD / "target", help="the video LLM")
    parser.add_argument("--sparrow-draft", type=Path, default=TOY_WORLD / "sparrow-draft")
    parser.add_argument("--eagle-draft", type=Path, default=TOY_WORLD / "eagle-draft",
                        help="a draft that sees the video, for vLLM's built-in eagle method")
    parser.add_argument("--methods", default="none,eagle,sparrow", help="comma list; none is required")
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="visual tokens, comma list")
    parser.add_argument("--scenes", type=int, default=5, help="requests (scenes) per length")
    parser.add_argument("--question", default="describe", help="toy-world question asked about every scene")
    parser.add_argument("--max-tokens", type=int, default=32, help="output tokens per request (EOS ignored)")
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sampling temperature (0: greedy, and texts are checked against no speculation)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--no-enforce-eager", dest="enforce_eager", action="store_false",
                        help="allow CUDA graphs / torch.compile (GPUs)")
    parser.add_argument("--engine-args", default="{}", help="extra vllm.LLM kwargs as JSON")
    parser.add_argument("--batch", type=int, default=1,
                        help="requests submitted together (max_num_seqs; --scenes must be a multiple)")
    parser.add_argument("--cold-cache-mb", type=int, default=0,
                        help="also run each speculative method with this many MiB of memory written "
                             "before every drafter call, and report its drafter time with cold CPU "
                             "caches (0: skip); separates the drafter's own work from cache effects "
                             "of the target's KV reads")
    parser.add_argument("--out", type=Path, default=Path("artifacts/visual_length_sweep"),
                        help="output prefix: OUT.json, OUT.md, OUT.png (engine logs in OUT-runs/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.lengths = [int(n) for n in args.lengths.split(",")]
    methods = args.methods.split(",")
    if methods[0] != "none":
        raise SystemExit("--methods must start with none: speedups are measured against it")
    if args.batch < 1 or args.scenes % args.batch:
        raise SystemExit(f"--scenes {args.scenes} must be a multiple of --batch {args.batch}")
    requests = _requests(args.lengths, args.scenes, args.question)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs, seconds = {}, {}
    for method in methods:
        start = time.time()
        logger.info("method %s: %d requests", method, len(requests))
        runs[method] = run_in_subprocess(_job(args, method, requests), Path(f"{args.out}-runs"), method)
        seconds[method] = time.time() - start
    cold = {}
    if args.cold_cache_mb:
        for method in methods[1:]:
            job = {**_job(args, method, requests), "flush_cache_mb": args.cold_cache_mb}
            cold[method] = run_in_subprocess(job, Path(f"{args.out}-runs"), f"{method}-cold-cache")
            logger.info("method %s with cold caches done", method)
    rows = summarise(runs, args.lengths, cold, args.temperature)
    result = {
        "benchmark": "visual_length_sweep", "machine": describe_machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "wall_seconds": seconds, "rows": rows, "targets": targets(rows, runs), "provenance": provenance(sys.argv),
        "requests": {m: run["requests"] for m, run in runs.items()},
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(rows) + goals_markdown(result["targets"], result["settings"])
    args.out.with_suffix(".md").write_text(text)
    plot(rows, args.out.with_suffix(".png"))
    logger.info("\n%s\ntargets: %s", text, json.dumps(result["targets"]))


if __name__ == "__main__":
    main()
