"""`make demo`: Sparrow on the bundled toy-world video LLM, on this machine's CPU.

The repo ships a small Qwen2.5-VL trained on synthetic videos (models/toy-world/target)
and a Sparrow draft trained for it with `sparrow-vllm train` (models/toy-world/
sparrow-draft). The demo asks questions about rendered toy-world videos through vLLM
twice, one engine at a time: without speculation and with `{"method": "sparrow", ...}`.
It prints the answers next to the true ones, checks the outputs are identical, and prints
vLLM's spec-decode counters and the acceptance length.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger("sparrow_vllm.demo")

TOY_WORLD = Path(__file__).resolve().parents[1] / "models" / "toy-world"
# (scene index, frames, question) about scenes of the held-out seed SCENE_SEED
QUESTIONS = [(0, 8, "describe"), (1, 8, "describe"), (2, 16, "count"), (3, 8, "number"), (4, 8, "describe")]
SCENE_SEED = 1
NUM_SPEC_TOKENS = 4


def _prompt(tokenizer, index: int, frames: int, question: str) -> dict:
    from sparrow_vllm.toy_world.render import render
    from sparrow_vllm.toy_world.scene import sample_scene
    from sparrow_vllm.toy_world.target import prompt_messages, video_metadata

    text = tokenizer.apply_chat_template(prompt_messages(question), add_generation_prompt=True, tokenize=False)
    clip = render(sample_scene(SCENE_SEED, index), frames)
    meta = {**video_metadata(frames), "do_sample_frames": False}
    return {"prompt": text, "multi_modal_data": {"video": (clip, meta)}}


def run_engine(target: str, draft: str | None) -> dict:
    """One vLLM engine: generate the demo answers, return texts, counters and timings."""
    from vllm import LLM, SamplingParams

    spec = None
    if draft is not None:
        spec = {"method": "sparrow", "model": draft, "num_speculative_tokens": NUM_SPEC_TOKENS}
    llm = LLM(model=target, speculative_config=spec, dtype="float32", enforce_eager=True,
              max_model_len=1024, max_num_seqs=len(QUESTIONS), gpu_memory_utilization=0.3, seed=0,
              disable_log_stats=False, limit_mm_per_prompt={"video": 1})
    prompts = [_prompt(llm.get_tokenizer(), *q) for q in QUESTIONS]
    params = SamplingParams(temperature=0.0, max_tokens=64)
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    counters = {
        m.name: getattr(m, "values", None) or getattr(m, "value", None)
        for m in llm.get_metrics()
        if m.name.startswith("vllm:spec_decode")
    }
    return {
        "texts": [o.outputs[0].text for o in outputs],
        "token_ids": [list(o.outputs[0].token_ids) for o in outputs],
        "seconds": seconds,
        "counters": counters,
    }


def _run_in_subprocess(target: Path, draft: Path | None, result: Path) -> dict:
    args = [sys.executable, "-m", "sparrow_vllm.demo", "--engine", str(target),
            "--result", str(result)]
    if draft is not None:
        args += ["--draft", str(draft)]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"engine run failed ({proc.returncode})")
    return json.loads(result.read_text())


def report(base: dict, spec: dict) -> str:
    c = spec["counters"]
    drafts = c.get("vllm:spec_decode_num_drafts", 0)
    accepted = c.get("vllm:spec_decode_num_accepted_tokens", 0)
    from sparrow_vllm.toy_world.scene import QUESTIONS as QUESTION_TEXT
    from sparrow_vllm.toy_world.scene import sample_scene

    lines = ["", "Answers (Sparrow) and the true answers:"]
    correct = 0
    for (index, frames, question), answer in zip(QUESTIONS, spec["texts"], strict=True):
        truth = sample_scene(SCENE_SEED, index).answer(question)
        correct += answer.strip() == truth
        lines += [f"  video {index} ({frames} frames): {QUESTION_TEXT[question]}",
                  f"    answer: {answer.strip()}", f"    truth:  {truth}"]
    lines.append(f"  {correct} of {len(QUESTIONS)} answers exactly right")
    same = base["token_ids"] == spec["token_ids"]
    lines += [
        "",
        f"identical to the target alone: {'yes' if same else 'NO'}",
        f"drafts: {drafts}  draft tokens: {c.get('vllm:spec_decode_num_draft_tokens', 0)}  "
        f"accepted: {accepted}",
        f"accepted per position: {c.get('vllm:spec_decode_num_accepted_tokens_per_pos')}",
        f"acceptance length (1 + accepted / drafts): {1 + accepted / max(drafts, 1):.2f}",
        f"generate time: {base['seconds']:.1f}s without speculation, {spec['seconds']:.1f}s with "
        "Sparrow (a tiny target on CPU: a draft step costs nearly as much as a target step)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=str(TOY_WORLD), help="the toy world's models")
    parser.add_argument("--results", default="artifacts/demo", help="where run results go")
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--draft", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        Path(args.result).write_text(json.dumps(run_engine(args.engine, args.draft)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(args.results)
    root.mkdir(parents=True, exist_ok=True)
    target, draft = Path(args.models) / "target", Path(args.models) / "sparrow-draft"
    logger.info("running the target alone, then with Sparrow (one vLLM engine at a time)")
    base = _run_in_subprocess(target, None, root / "result-target-alone.json")
    spec = _run_in_subprocess(target, draft, root / "result-sparrow.json")
    logger.info(report(base, spec))
    if base["token_ids"] != spec["token_ids"]:
        raise SystemExit("Sparrow output differs from the target's own output")


if __name__ == "__main__":
    main()
