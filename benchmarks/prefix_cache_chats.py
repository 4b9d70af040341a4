"""Does vLLM's prefix cache cost Sparrow acceptance? Multi-turn chats about one video.

With prefix caching vLLM computes only the uncached tail of a request, so the draft sees
the target's hidden states of that tail only and starts the request from there. This
benchmark runs 6-turn chats (a ~200-token system prompt, a toy-world video in the first
user turn, then one question per turn, each answer fed back) with Sparrow, one request at
a time, for two block sizes with prefix caching on and off, and reports per turn the
acceptance length and the share of prompt tokens served from the prefix cache, with the
draft cache's reuse of finished requests' text rows (`reuse_text_rows`) on and off. Writes
OUT.json and OUT.md. Answers have a fixed length (EOS ignored): the toy target, trained on
single-turn questions without a system prompt, would otherwise end these chats at once;
acceptance is the draft's agreement with the target on this text. vLLM's CPU attention needs block sizes that are multiples of 32 (the
default 32,64); on a GPU, where vLLM's default is 16, pass --block-sizes 16,32.

On the bundled toy world (2 CPU cores, about 4 minutes):

    python benchmarks/prefix_cache_chats.py --out benchmarks/results/prefix_cache_chats_toy_world
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sparrow_vllm.bench.machine import describe_machine
from sparrow_vllm.bench.speedup import acceptance, counter_delta, counter_sum
from sparrow_vllm.engine_job import run_engine_job
from sparrow_vllm.provenance import provenance
from sparrow_vllm.serving.vllm.runners import drafting_adapter

logger = logging.getLogger("prefix_cache_chats")
TOY_WORLD = Path(__file__).resolve().parents[1] / "models" / "toy-world"
SCENE_SEED = 3
QUESTIONS = ("describe", "count", "number", "first", "describe", "count")
PREFIX = ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits")


def system_prompt(tokens: int) -> str:
    """About `tokens` words of the toy vocabulary, one token each."""
    words = "describe the video . there is a shape and the number . how many shapes are there ?".split()
    return " ".join(words[i % len(words)] for i in range(tokens))


def _metrics(llm) -> dict[str, object]:
    return {m.name: getattr(m, "values", None) or getattr(m, "value", None) for m in llm.get_metrics()
            if m.name.startswith("vllm:spec_decode") or m.name in PREFIX}


def _chat_prompt(tokenizer, messages: list[dict], frames, meta) -> dict:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return {"prompt": text, "multi_modal_data": {"video": (frames, meta)}}


def run_config(config: dict) -> dict:
    """One engine: every chat, turn by turn, one request at a time."""
    from vllm import LLM, SamplingParams

    from sparrow_vllm.toy_world.render import render
    from sparrow_vllm.toy_world.scene import QUESTIONS as TEXTS
    from sparrow_vllm.toy_world.scene import sample_scene
    from sparrow_vllm.toy_world.target import video_metadata

    llm = LLM(model=config["target"], seed=0, dtype="float32", enforce_eager=True, disable_log_stats=False,
              limit_mm_per_prompt={"video": 1}, max_model_len=4096, max_num_seqs=1,
              block_size=config["block_size"], enable_prefix_caching=config["prefix_caching"],
              speculative_config={"method": "sparrow", "model": config["draft"],
                                  "num_speculative_tokens": config["k"],
                                  "reuse_text_rows": config["reuse_text_rows"]})
    tokenizer = llm.get_tokenizer()
    # the toy target learned single-turn questions without a system prompt and ends such
    # chats at once; EOS is ignored so every turn has `max_tokens` tokens to draft
    params = SamplingParams(temperature=0.0, max_tokens=config["max_tokens"], ignore_eos=True)
    turns = []
    for scene in range(config["scenes"]):
        frames = render(sample_scene(SCENE_SEED, scene), config["frames"])
        meta = {**video_metadata(config["frames"]), "do_sample_frames": False}
        messages: list[dict] = [{"role": "system", "content": system_prompt(config["system_tokens"])}]
        for turn, question in enumerate(QUESTIONS[: config["turns"]]):
            content = [{"type": "text", "text": TEXTS[question]}]
            if turn == 0:
                content.insert(0, {"type": "video"})
            messages.append({"role": "user", "content": content})
            before = _metrics(llm)
            out = llm.generate(_chat_prompt(tokenizer, messages, frames, meta), params, use_tqdm=False)[0]
            after = _metrics(llm)
            answer = out.outputs[0].text
            messages.append({"role": "assistant", "content": answer})
            turns.append({
                "scene": scene, "turn": turn + 1, "prompt_tokens": len(out.prompt_token_ids),
                "output_tokens": len(out.outputs[0].token_ids), "answer": answer,
                "counters": counter_delta(before, after),
                **{name.split(":")[1]: float(after.get(name) or 0) - float(before.get(name) or 0) for name in PREFIX},
            })
    return {"config": config, "turns": turns, "draft_cache": llm.collective_rpc(_draft_cache_stats)[0]}


def _draft_cache_stats(worker) -> dict:
    return drafting_adapter(worker.model_runner).drafter.cache.stats()


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (block size, prefix caching, turn): acceptance over scenes and the share
    of prompt tokens served from the prefix cache."""
    rows = []
    for run in runs:
        config = run["config"]
        for turn in sorted({t["turn"] for t in run["turns"]}):
            mine = [t for t in run["turns"] if t["turn"] == turn]
            queries = sum(t["prefix_cache_queries"] for t in mine)
            rows.append({
                "block_size": config["block_size"], "prefix_caching": config["prefix_caching"],
                "reuse_text_rows": config["reuse_text_rows"], "turn": turn,
                "prompt_tokens": sum(t["prompt_tokens"] for t in mine) / len(mine),
                "cached_share": sum(t["prefix_cache_hits"] for t in mine) / queries if queries else 0.0,
                "acceptance_length": acceptance(counter_sum([t["counters"] for t in mine]))["acceptance_length"],
            })
    for row in rows:
        off = next(r for r in rows if r["block_size"] == row["block_size"] and r["turn"] == row["turn"]
                   and not r["prefix_caching"])
        row["loss_vs_off"] = 1 - row["acceptance_length"] / off["acceptance_length"]
    return rows


def max_losses(rows: list[dict]) -> dict[str, float]:
    """The largest acceptance loss against caching off, with and without row reuse."""
    def worst(reuse: bool) -> float:
        return max((r["loss_vs_off"] for r in rows if r["prefix_caching"] and r["reuse_text_rows"] == reuse),
                   default=float("nan"))
    return {"max_loss_vs_off": worst(True), "max_loss_vs_off_without_reuse": worst(False)}


def markdown(rows: list[dict]) -> str:
    lines = ["| block size | prefix caching | draft rows reused | turn | prompt tokens | cached share | acceptance length | loss vs off |",
             "|" + "---|" * 8]
    for r in rows:
        reuse = ("yes" if r["reuse_text_rows"] else "no") if r["prefix_caching"] else "-"
        lines.append(f"| {r['block_size']} | {'on' if r['prefix_caching'] else 'off'} | {reuse} | {r['turn']} "
                     f"| {r['prompt_tokens']:.0f} | {r['cached_share']:.2f} | {r['acceptance_length']:.2f} "
                     f"| {100 * r['loss_vs_off']:+.1f}% |")
    return "\n".join(lines) + "\n"


def _run_in_subprocess(config: dict, workdir: Path, name: str) -> dict:
    return run_engine_job(Path(__file__), config, workdir, name, child_args=("--job",),
                          env={"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}, env_defaults={"VLLM_CPU_KVCACHE_SPACE": "2"})


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--job":
        Path(sys.argv[3]).write_text(json.dumps(run_config(json.loads(Path(sys.argv[2]).read_text()))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=str(TOY_WORLD / "target"))
    parser.add_argument("--draft", default=str(TOY_WORLD / "sparrow-draft"))
    parser.add_argument("--block-sizes", default="32,64", help="comma list (CPU: multiples of 32)")
    parser.add_argument("--scenes", type=int, default=4, help="chats (one video each)")
    parser.add_argument("--turns", type=int, default=6, help=f"turns per chat, at most {len(QUESTIONS)}")
    parser.add_argument("--frames", type=int, default=16, help="video frames (64 visual tokens each)")
    parser.add_argument("--system-tokens", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--modes", default="off,on-no-reuse,on",
                        help="prefix caching off; on without reusing draft rows; on with reuse")
    parser.add_argument("--out", type=Path, default=Path("artifacts/prefix_cache_chats"))
    args = parser.parse_args()
    if not 1 <= args.turns <= len(QUESTIONS):
        raise SystemExit(f"--turns must be 1..{len(QUESTIONS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    runs = []
    modes = {"off": (False, True), "on-no-reuse": (True, False), "on": (True, True)}
    for block_size in (int(b) for b in args.block_sizes.split(",")):
        for mode in args.modes.split(","):
            caching, reuse = modes[mode]
            config = {"target": args.target, "draft": args.draft, "block_size": block_size, "prefix_caching": caching,
                      "reuse_text_rows": reuse, "scenes": args.scenes, "turns": args.turns, "frames": args.frames,
                      "system_tokens": args.system_tokens, "max_tokens": args.max_tokens, "k": args.k}
            name = f"block{block_size}-{mode}"
            logger.info("engine %s: %d chats of %d turns", name, args.scenes, args.turns)
            runs.append(_run_in_subprocess(config, Path(f"{args.out}-runs"), name))
    rows = summarise(runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "prefix_cache_chats", "machine": describe_machine(), "settings": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "rows": rows,
        **max_losses(rows), "runs": runs, "provenance": provenance(sys.argv)}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows))
    logger.info("\n%s\nlargest loss with caching on: %.1f%% reusing draft rows, %.1f%% without",
                markdown(rows), 100 * result["max_loss_vs_off"], 100 * result["max_loss_vs_off_without_reuse"])


if __name__ == "__main__":
    main()
