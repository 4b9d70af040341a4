"""`make demo`: Sparrow on the bundled toy-world video LLM, served by `vllm serve` on this
machine and asked through the `openai` client.

The repo ships a small Qwen2.5-VL trained on synthetic videos (models/toy-world/target)
and a Sparrow draft trained for it with `sparrow-vllm train` (models/toy-world/
sparrow-draft). The demo serves the target twice, one server at a time: alone, then with
`--speculative-config '{"method": "sparrow", ...}'`, and sends the same video questions
(mp4 clips as data URLs) to each. It prints the answers next to the true ones, checks that
Sparrow's answers are the target's own, and prints the acceptance length (from the
server's /metrics) and the speedup over the target alone.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from sparrow_vllm.bench.chat_load import ChatResult, chat_once
from sparrow_vllm.bench.server import VllmServer, check_server_saw_videos, video_serve_args
from sparrow_vllm.bench.speedup import acceptance, counter_delta
from sparrow_vllm.bench.toy_requests import ToyQuestion

logger = logging.getLogger("sparrow_vllm.demo")

TOY_WORLD = Path(__file__).resolve().parents[1] / "models" / "toy-world"
SCENE_SEED = 1  # held out from the target's and the draft's training scenes
QUESTIONS = [ToyQuestion(SCENE_SEED, 0, 64, "describe"), ToyQuestion(SCENE_SEED, 1, 192, "describe"),
             ToyQuestion(SCENE_SEED, 2, 1024, "count"), ToyQuestion(SCENE_SEED, 3, 64, "number"),
             ToyQuestion(SCENE_SEED, 4, 1024, "describe"), ToyQuestion(SCENE_SEED, 5, 192, "first")]
NUM_SPEC_TOKENS = 4


def ask_all(target: Path, draft: Path | None, log: Path) -> tuple[list[ChatResult], dict]:
    """Serve `target` (with Sparrow when `draft` is given), ask every question in turn,
    return the answers and the server's spec-decode counters for them."""
    from openai import OpenAI

    spec = None
    if draft is not None:
        spec = {"method": "sparrow", "model": str(draft), "num_speculative_tokens": NUM_SPEC_TOKENS}
    args = video_serve_args(max(q.visual_tokens for q in QUESTIONS), max_num_seqs=1, speculative_config=spec)
    with VllmServer(target, args, log, env={"VLLM_CPU_KVCACHE_SPACE": "1"}) as server:
        server.wait_ready()
        client = OpenAI(base_url=server.url + "/v1", api_key="unused")
        model = client.models.list().data[0].id
        warmup = ToyQuestion(SCENE_SEED, 100, 64, "describe").chat_messages()
        chat_once(client, model, warmup, 64, ignore_eos=False)
        before = server.metrics()
        results = [chat_once(client, model, q.chat_messages(), 64, ignore_eos=False) for q in QUESTIONS]
        counters = counter_delta(before, server.metrics())
    check_server_saw_videos([r.prompt_tokens for r in results], [q.visual_tokens for q in QUESTIONS])
    return results, counters


def report(base: list[ChatResult], spec: list[ChatResult], counters: dict) -> str:
    stats = acceptance(counters)
    lines = ["", "Answers (Sparrow) and the true answers:"]
    correct = 0
    for question, answer in zip(QUESTIONS, spec, strict=True):
        correct += answer.text.strip() == question.truth
        lines += [f"  scene {question.index}, {question.frames} frames ({question.visual_tokens} video tokens): "
                  f"{question.text}", f"    answer: {answer.text.strip()}", f"    truth:  {question.truth}"]
    lines.append(f"  {correct} of {len(QUESTIONS)} answers exactly right")
    same = [a.text for a in base] == [a.text for a in spec]
    base_s, spec_s = sum(r.total_s for r in base), sum(r.total_s for r in spec)
    base_decode = sum(r.total_s - r.ttft_s for r in base)
    spec_decode = sum(r.total_s - r.ttft_s for r in spec)
    lines += [
        "",
        f"identical to the target alone: {'yes' if same else 'NO'}",
        f"drafts: {stats['drafts']:.0f}  draft tokens: {stats['draft_tokens']:.0f}  "
        f"accepted: {stats['accepted_tokens']:.0f}",
        "acceptance rate per draft position: " + ", ".join(f"{p:.2f}" for p in stats["per_position_rate"]),
        f"acceptance length (1 + accepted / drafts): {stats['acceptance_length']:.2f}",
        f"time for the {len(QUESTIONS)} requests: {base_s:.2f}s target alone, {spec_s:.2f}s with Sparrow: "
        f"speedup {base_s / spec_s:.2f}x end to end, {base_decode / spec_decode:.2f}x after the first token",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=str(TOY_WORLD), help="the toy world's models")
    parser.add_argument("--results", default="artifacts/demo", help="where server logs and results go")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(args.results)
    target, draft = Path(args.models) / "target", Path(args.models) / "sparrow-draft"
    logger.info("serving the target alone, then with Sparrow (one vllm serve at a time); logs in %s", root)
    base, _ = ask_all(target, None, root / "serve-target-alone.log")
    spec, counters = ask_all(target, draft, root / "serve-sparrow.log")
    logger.info(report(base, spec, counters))
    (root / "demo.json").write_text(json.dumps({
        "questions": [q.__dict__ for q in QUESTIONS], "target_alone": [r.__dict__ for r in base],
        "sparrow": [r.__dict__ for r in spec], "counters": counters}, indent=1))
    if [a.text for a in base] != [a.text for a in spec]:
        raise SystemExit("Sparrow's answers differ from the target's own answers")


if __name__ == "__main__":
    main()
