"""The OpenAI-compatible server under concurrent chat requests with videos: `vllm serve`
without speculation and with Sparrow (and optionally vLLM's eagle with a draft that sees
the video), the same requests each time. Reports throughput, TTFT, TPOT and, from the
server's /metrics, the acceptance length. Writes OUT.json and OUT.md.

On the bundled toy world (2 CPU cores, about 3 minutes with the defaults):

    python benchmarks/serve_bench.py --out benchmarks/results/serve_bench_toy_world

On a GPU with a real Qwen2.5-VL:

    python benchmarks/serve_bench.py --target Qwen/Qwen2.5-VL-7B-Instruct \\
        --sparrow-draft path/to/sparrow-draft --serve-args "--dtype bfloat16" \\
        --requests 64 --concurrency 16 --visual-tokens 8192 --out results/qwen7b_serve
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


def serve_args(args: argparse.Namespace, method: str) -> list[str]:
    spec = None
    if method != "none":
        draft = args.sparrow_draft if method == "sparrow" else args.eagle_draft
        spec = {"method": method, "model": str(draft), "num_speculative_tokens": args.k}
    extra = shlex.split(args.serve_args) if args.serve_args is not None else None
    return video_serve_args(args.visual_tokens, args.concurrency, spec, extra)


def bench_method(args: argparse.Namespace, method: str, conversations: list[list[dict]]) -> dict:
    from openai import OpenAI

    with VllmServer(args.target, serve_args(args, method), Path(f"{args.out}-logs/{method}.log"),
                    env={"VLLM_CPU_KVCACHE_SPACE": "2"}) as server:
        server.wait_ready(args.startup_timeout)
        client = OpenAI(base_url=server.url + "/v1", api_key="unused")
        model = client.models.list().data[0].id
        run_load(client, model, conversations[:1], args.max_tokens, 1, True)  # warm-up
        before = server.metrics()
        results, wall = run_load(client, model, conversations, args.max_tokens, args.concurrency, True,
                                 args.temperature)
        counters = counter_delta(before, server.metrics())
    check_server_saw_videos([r.prompt_tokens for r in results], [args.visual_tokens] * len(results))
    summary = {"method": method, "temperature": args.temperature, **load_summary(results, wall)}
    if method != "none":
        summary.update(acceptance(counters))
    return {"summary": summary, "texts": [r.text for r in results]}


def _equal(flag: bool | None) -> str:
    return "- (T > 0)" if flag is None else ("yes" if flag else "NO")


def markdown(rows: list[dict]) -> str:
    lines = ["| method | requests | concurrency | prompt tokens | output tok/s | req/s | TTFT mean s | TPOT mean ms "
             "| acceptance length | text = none |", "|" + "---|" * 10]
    for r in rows:
        acc = f"{r['acceptance_length']:.2f}" if r.get("acceptance_length") else "-"
        lines.append(f"| {r['method']} | {r['requests']} | {r['concurrency']} | {r['prompt_tokens_mean']:.0f} "
                     f"| {r['output_tokens_per_s']:.1f} "
                     f"| {r['requests_per_s']:.2f} | {r['ttft_mean_s']:.2f} | {r['tpot_mean_ms']:.1f} | {acc} "
                     f"| {_equal(r['text_equal_to_none'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=str(TOY_WORLD / "target"))
    parser.add_argument("--sparrow-draft", default=str(TOY_WORLD / "sparrow-draft"))
    parser.add_argument("--eagle-draft", default=str(TOY_WORLD / "eagle-draft"))
    parser.add_argument("--methods", default="none,sparrow,eagle", help="comma list; none first")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--visual-tokens", type=int, default=1536, help="video tokens per request")
    parser.add_argument("--question", default="describe")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (EOS ignored)")
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sampling temperature (0: greedy, and texts are checked against no speculation)")
    parser.add_argument("--serve-args", default=None,
                        help=f"extra `vllm serve` arguments (default on CPU: {' '.join(CPU_SERVE_ARGS)})")
    parser.add_argument("--startup-timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, default=Path("artifacts/serve_bench"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    methods = args.methods.split(",")
    if methods[0] != "none":
        raise SystemExit("--methods must start with none: outputs are checked against it")
    frames = frames_for_visual_tokens(args.visual_tokens)
    args.visual_tokens = frames * VISUAL_TOKENS_PER_FRAME  # the clip's real length in tokens
    conversations = [ToyQuestion(SCENE_SEED, i, frames, args.question).chat_messages() for i in range(args.requests)]
    runs = {}
    for method in methods:
        logger.info("method %s: %d requests, concurrency %d", method, args.requests, args.concurrency)
        runs[method] = bench_method(args, method, conversations)
    rows = []
    for run in runs.values():
        rows.append({**run["summary"], "concurrency": args.concurrency, "visual_tokens": args.visual_tokens,
                     "text_equal_to_none": None if args.temperature > 0 else run["texts"] == runs["none"]["texts"]})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "serve_bench", "machine": describe_machine(),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "rows": rows, "texts": {m: r["texts"] for m, r in runs.items()}, "provenance": provenance(sys.argv)}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows))
    logger.info("\n%s", markdown(rows))


if __name__ == "__main__":
    main()
