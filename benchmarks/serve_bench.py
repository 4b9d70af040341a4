"""The OpenAI-compatible server under concurrent chat requests with videos: a load sweep
over concurrency and video length, for `vllm serve` without speculation, with vLLM's eagle
(a draft that sees the video), with Sparrow at a fixed draft length, and with Sparrow's
adaptive draft length (the default), the same requests each time. One server per method
serves every point of the sweep, so the adaptive policy meets each change of load as a
production server would. Per point: throughput, TTFT, TPOT and, from the server's
/metrics, the acceptance length. Writes OUT.json, OUT.md and OUT.png (TPOT per point).

The committed load sweep on the bundled toy world (2 CPU cores, about 25 minutes):

    python benchmarks/serve_bench.py --concurrency 1,4,8 --visual-tokens 1536,17408 \
        --rounds 1 --out benchmarks/results/serve_load_sweep_toy_world

One point, as before (24 requests, 4 in flight, 1.5k-token videos):

    python benchmarks/serve_bench.py --rounds 6 --out benchmarks/results/serve_bench_toy_world

On a GPU with a real Qwen2.5-VL:

    python benchmarks/serve_bench.py --target Qwen/Qwen2.5-VL-7B-Instruct \
        --sparrow-draft path/to/sparrow-draft --eagle-draft path/to/eagle-draft \
        --serve-args "--dtype bfloat16" --concurrency 1,8,32 --visual-tokens 1536,8192,25000 \
        --rounds 4 --out results/qwen7b_serve
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

from sparrow_vllm.bench.chat_load import load_summary, run_load
from sparrow_vllm.bench.machine import describe_machine
from sparrow_vllm.bench.server import (
    CPU_SERVE_ARGS,
    VllmServer,
    check_server_saw_videos,
    video_serve_args,
)
from sparrow_vllm.bench.speedup import acceptance, counter_delta
from sparrow_vllm.bench.toy_requests import ToyQuestion
from sparrow_vllm.provenance import provenance
from sparrow_vllm.toy_world.dataset import frames_for_visual_tokens
from sparrow_vllm.toy_world.target import VISUAL_TOKENS_PER_FRAME

logger = logging.getLogger("serve_bench")
TOY_WORLD = Path(__file__).resolve().parents[1] / "models" / "toy-world"
SCENE_SEED = 3
WARM_UP_CLIP = 10_000  # a clip no measured request asks about


METHODS = {
    # name: (speculative method, extra speculative-config keys)
    "none": (None, {}),
    "eagle": ("eagle", {}),
    "sparrow-fixed": ("sparrow", {"adaptive_draft_length": False}),
    "sparrow": ("sparrow", {}),
}


def serve_args(args: argparse.Namespace, method: str) -> list[str]:
    kind, extra_spec = METHODS[method]
    spec = None
    if kind is not None:
        draft = args.sparrow_draft if kind == "sparrow" else args.eagle_draft
        spec = {"method": kind, "model": str(draft), "num_speculative_tokens": args.k, **extra_spec}
    extra = shlex.split(args.serve_args) if args.serve_args is not None else None
    return video_serve_args(max(args.visual_tokens), max(args.concurrency), spec, extra)


def conversations_for(visual_tokens: int, indices: range, question: str) -> list[list[dict]]:
    """Chats about clips `indices` of the held-out scene seed (distinct clips never share a
    prefix-cache entry, so every request of a sweep prefills its own video)."""
    frames = frames_for_visual_tokens(visual_tokens)
    return [ToyQuestion(SCENE_SEED, i, frames, question).chat_messages() for i in indices]


def bench_method(args: argparse.Namespace, method: str) -> list[dict]:
    """Every (video length, concurrency) point against one server."""
    from openai import OpenAI

    points = []
    with VllmServer(args.target, serve_args(args, method), Path(f"{args.out}-logs/{method}.log"),
                    env={"VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib)}) as server:
        server.wait_ready(args.startup_timeout)
        client = OpenAI(base_url=server.url + "/v1", api_key="unused")
        model = client.models.list().data[0].id
        for visual_tokens in args.visual_tokens:
            warm_up = conversations_for(visual_tokens, range(WARM_UP_CLIP, WARM_UP_CLIP + 1), args.question)
            run_load(client, model, warm_up, args.max_tokens, 1, True)
            first = 0  # each point asks about new clips (the same ones for every method)
            for concurrency in args.concurrency:
                count = args.rounds * concurrency
                conversations = conversations_for(visual_tokens, range(first, first + count), args.question)
                first += count
                logger.info("%s: %d-token videos, %d requests, %d in flight", method, visual_tokens,
                            len(conversations), concurrency)
                before = server.metrics()
                results, wall = run_load(client, model, conversations, args.max_tokens, concurrency, True,
                                         args.temperature)
                counters = counter_delta(before, server.metrics())
                check_server_saw_videos([r.prompt_tokens for r in results], [visual_tokens] * len(results))
                summary = {"method": method, "visual_tokens": visual_tokens, "concurrency": concurrency,
                           "temperature": args.temperature, **load_summary(results, wall)}
                if method != "none":
                    summary.update(acceptance(counters))
                points.append({"summary": summary, "texts": [r.text for r in results]})
    return points


def _equal(flag: bool | None) -> str:
    return "- (T > 0)" if flag is None else ("yes" if flag else "NO")


def markdown(rows: list[dict]) -> str:
    lines = ["| method | visual tokens | concurrency | requests | prompt tokens | output tok/s | TTFT mean s "
             "| TPOT mean ms | acceptance length | drafts per drafting step | text = none |", "|" + "---|" * 11]
    for r in rows:
        acc = f"{r['acceptance_length']:.2f}" if r.get("acceptance_length") else "-"
        per_draft = f"{r['draft_tokens'] / r['drafts']:.2f}" if r.get("drafts") else "-"
        lines.append(f"| {r['method']} | {r['visual_tokens']} | {r['concurrency']} | {r['requests']} "
                     f"| {r['prompt_tokens_mean']:.0f} | {r['output_tokens_per_s']:.1f} | {r['ttft_mean_s']:.2f} "
                     f"| {r['tpot_mean_ms']:.1f} | {acc} | {per_draft} | {_equal(r['text_equal_to_none'])} |")
    return "\n".join(lines) + "\n"


def goals(rows: list[dict]) -> list[dict]:
    """Per point: adaptive Sparrow's TPOT against no speculation, and against fixed-K
    Sparrow where that beats no speculation (goal: within 5%)."""
    by = {(r["method"], r["visual_tokens"], r["concurrency"]): r["tpot_mean_ms"] for r in rows}
    out = []
    for (method, n, c), adaptive in by.items():
        if method != "sparrow" or ("none", n, c) not in by:
            continue
        none, fixed = by[("none", n, c)], by.get(("sparrow-fixed", n, c))
        point = {"visual_tokens": n, "concurrency": c, "tpot_adaptive_ms": adaptive, "tpot_none_ms": none,
                 "tpot_fixed_ms": fixed, "adaptive_at_most_none": adaptive <= none}
        if fixed is not None and fixed < none:
            point["adaptive_within_5pct_of_fixed"] = adaptive <= 1.05 * fixed
        out.append(point)
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["visual_tokens"] for r in rows})
    fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 4), squeeze=False)
    for ax, n in zip(axes[0], lengths, strict=True):
        for method in METHODS:
            mine = sorted((r["concurrency"], r["tpot_mean_ms"]) for r in rows
                          if r["method"] == method and r["visual_tokens"] == n)
            if mine:
                ax.plot(*zip(*mine, strict=True), marker="o", label=method)
        ax.set_title(f"{n}-token videos")
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel("TPOT mean (ms)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=str(TOY_WORLD / "target"))
    parser.add_argument("--sparrow-draft", default=str(TOY_WORLD / "sparrow-draft"))
    parser.add_argument("--eagle-draft", default=str(TOY_WORLD / "eagle-draft"))
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma list of {', '.join(METHODS)}; none first (sparrow: adaptive draft "
                             "length, sparrow-fixed: num_speculative_tokens every step)")
    parser.add_argument("--concurrency", type=_ints, default=[4], help="comma list of requests in flight")
    parser.add_argument("--visual-tokens", type=_ints, default=[1536], help="comma list: video tokens per request")
    parser.add_argument("--rounds", type=int, default=2, help="requests per point = rounds x concurrency")
    parser.add_argument("--question", default="describe")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (EOS ignored)")
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sampling temperature (0: greedy, and texts are checked against no speculation)")
    parser.add_argument("--serve-args", default=None,
                        help=f"extra `vllm serve` arguments (default on CPU: {' '.join(CPU_SERVE_ARGS)})")
    parser.add_argument("--kv-cache-gib", type=float, default=4, help="VLLM_CPU_KVCACHE_SPACE (CPU builds)")
    parser.add_argument("--startup-timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, default=Path("artifacts/serve_bench"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or methods[0] != "none":
        raise SystemExit(f"--methods: a comma list of {', '.join(METHODS)} starting with none (got {unknown or methods})")
    # the clips' real lengths in tokens
    args.visual_tokens = [frames_for_visual_tokens(n) * VISUAL_TOKENS_PER_FRAME for n in args.visual_tokens]
    runs = {method: bench_method(args, method) for method in methods}
    base = {(p["summary"]["visual_tokens"], p["summary"]["concurrency"]): p["texts"] for p in runs["none"]}
    rows = [{**p["summary"], "text_equal_to_none": None if args.temperature > 0 else
             p["texts"] == base[(p["summary"]["visual_tokens"], p["summary"]["concurrency"])]}
            for points in runs.values() for p in points]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "serve_bench", "machine": describe_machine(),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "rows": rows, "goals": goals(rows),
              "texts": {m: [p["texts"] for p in points] for m, points in runs.items()},
              "provenance": provenance(sys.argv)}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows))
    plot(rows, args.out.with_suffix(".png"))
    logger.info("\n%s", markdown(rows))
    for point in result["goals"]:
        logger.info("goal check %s", point)


if __name__ == "__main__":
    main()
