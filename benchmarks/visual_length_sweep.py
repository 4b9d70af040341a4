"""Acceptance and speedup against visual length: no speculation, vLLM's built-in `eagle`
with a draft that sees the video, and Sparrow with each visual-rows mode (`sparrow`: none,
the paper's method; `sparrow-budget`: a draft trained with `--visual-budget N`;
`sparrow-all`: every visual row), in vLLM, one engine at a time.

For each visual length (video tokens per request) the same questions about the same
scenes are asked, greedy, with a fixed output length; requests run one at a time so that
prefill and decode times are the request's own. Per method and length it reports
acceptance length (vLLM's: 1 + accepted / drafts), per-position acceptance, prefill and
decode time, the drafter's time per decode step, DSR (decode speedup over no
speculation), ESR (end-to-end speedup), output tokens/s, and whether the text equals the
no-speculation text. With `--image` one more point asks the same questions about one image
(the scene's first frame), first: points run in increasing visual length. With
`sparrow-budget` in the methods, the visual-budget goals are judged with paired intervals
(sparrow_vllm/bench/sweep_report.budget_goals). Writes
RESULTS.json, RESULTS.md and RESULTS.png (sparrow_vllm/bench/sweep_report.py).

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
import sys
import time
from pathlib import Path

from sparrow_vllm.bench.machine import describe_machine
from sparrow_vllm.bench.offline import run_in_subprocess
from sparrow_vllm.bench.sweep_report import (
    IMAGE_POINT,
    budget_goals,
    budget_goals_markdown,
    draft_step_goals,
    draft_step_goals_markdown,
    markdown,
    plot,
    summarise,
    video_point,
)
from sparrow_vllm.engine_job import job_files
from sparrow_vllm.provenance import provenance
from sparrow_vllm.toy_world.dataset import frames_for_visual_tokens

logger = logging.getLogger("visual_length_sweep")
TOY_WORLD = Path(__file__).resolve().parents[1] / "models" / "toy-world"
LENGTHS = (512, 1536, 8192, 17408, 25000)
SCENE_SEED = 3  # held out from the target's (0) and the drafts' (2) training scenes


# method -> (vLLM speculative method, the argument naming its draft)
METHODS = {"none": (None, None), "eagle": ("eagle", "eagle_draft"), "sparrow": ("sparrow", "sparrow_draft"),
           "sparrow-budget": ("sparrow", "budget_draft"), "sparrow-all": ("sparrow", "all_draft")}


def _requests(points: list[dict], scenes: int, question: str) -> list[dict]:
    return [{"seed": SCENE_SEED, "index": i, "frames": p["frames"], "question": question, "kind": p["kind"]}
            for p in points for i in range(scenes)]


def _job(args: argparse.Namespace, method: str, requests: list[dict]) -> dict:
    spec = None
    kind, draft_arg = METHODS[method]
    if kind is not None:
        spec = {"method": kind, "model": str(getattr(args, draft_arg)), "num_speculative_tokens": args.k}
        if kind == "sparrow":
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


def _kept_result(workdir: Path, method: str, job: dict) -> dict | None:
    """The result a previous run of exactly this job left in workdir, or None."""
    job_file, result_file, _ = job_files(workdir, method)
    if not (job_file.is_file() and result_file.is_file()):
        return None
    if json.loads(job_file.read_text()) != json.loads(json.dumps(job, default=str)):
        logger.info("method %s: %s holds a different job; running it again", method, job_file)
        return None
    return json.loads(result_file.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=Path, default=TOY_WORLD / "target", help="the video LLM")
    parser.add_argument("--sparrow-draft", type=Path, default=TOY_WORLD / "sparrow-draft")
    parser.add_argument("--eagle-draft", type=Path, default=TOY_WORLD / "eagle-draft",
                        help="a draft that sees the video, for vLLM's built-in eagle method")
    parser.add_argument("--budget-draft", type=Path, default=TOY_WORLD / "budget-draft",
                        help="Sparrow draft trained with --visual-budget N (method sparrow-budget)")
    parser.add_argument("--all-draft", type=Path, default=TOY_WORLD / "all-draft",
                        help="Sparrow draft trained with --visual-budget all (method sparrow-all)")
    parser.add_argument("--methods", default="none,eagle,sparrow",
                        help=f"comma list of {', '.join(METHODS)}; none first (speedups are measured against it)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse a method's result from OUT-runs/ when its job there is the same one "
                             "(same requests, draft and engine settings): add a method without rerunning the rest")
    parser.add_argument("--image", action="store_true",
                        help="one more point: the same questions about one image (the scene's first frame)")
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
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods {','.join(unknown)}: unknown; use {', '.join(METHODS)}")
    if args.batch < 1 or args.scenes % args.batch:
        raise SystemExit(f"--scenes {args.scenes} must be a multiple of --batch {args.batch}")
    videos = [video_point(n) for n in args.lengths]
    # points run in increasing visual length, the image first: an engine that has prefilled
    # 25k-token requests steps slower afterwards (the image point measured after them:
    # draft step 6.6 against 3.6 ms, and the target's own decode slower too)
    points = [*([IMAGE_POINT] if args.image else []), *videos]
    requests = _requests(points, args.scenes, args.question)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs, seconds = {}, {}
    for method in methods:
        start = time.time()
        job, workdir = _job(args, method, requests), Path(f"{args.out}-runs")
        kept = _kept_result(workdir, method, job) if args.reuse else None
        if kept is not None:
            logger.info("method %s: the result of the same job in %s is reused (--reuse)", method, workdir)
            runs[method], seconds[method] = kept, None
            continue
        logger.info("method %s: %d requests", method, len(requests))
        runs[method] = run_in_subprocess(job, workdir, method)
        seconds[method] = time.time() - start
    cold = {}
    if args.cold_cache_mb:
        for method in methods[1:]:
            job = {**_job(args, method, requests), "flush_cache_mb": args.cold_cache_mb}
            cold[method] = run_in_subprocess(job, Path(f"{args.out}-runs"), f"{method}-cold-cache")
            logger.info("method %s with cold caches done", method)
    rows = summarise(runs, points, cold, args.temperature)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    goals = {m: draft_step_goals(rows, runs, videos, m) for m in methods if m.startswith("sparrow")}
    text = markdown(rows) + "".join(draft_step_goals_markdown(g, settings, m) for m, g in goals.items())
    if "sparrow-budget" in runs:
        goals["visual_budget"] = budget_goals(rows, runs, videos, IMAGE_POINT if args.image else None)
        text += budget_goals_markdown(goals["visual_budget"])
    result = {
        "benchmark": "visual_length_sweep", "machine": describe_machine(), "settings": settings,
        "wall_seconds": seconds, "rows": rows, "targets": goals, "provenance": provenance(sys.argv),
        "requests": {m: run["requests"] for m, run in runs.items()},
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(text)
    plot(rows, args.out.with_suffix(".png"))
    logger.info("\n%s\ntargets: %s", text, json.dumps(result["targets"]))


if __name__ == "__main__":
    main()
