"""`make demo`: Sparrow on a tiny offline Qwen2.5-VL, on this machine's CPU.

Builds (once, under artifacts/demo) a toy Qwen2.5-VL target and a Sparrow draft briefly
self-distilled on the target's outputs, then runs the same video/image/text prompts through
vLLM twice, one engine at a time: without speculation and with
`{"method": "sparrow", ...}`. It prints the answers, checks they are identical, and
prints vLLM's spec-decode counters and the acceptance length.
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

import numpy as np

logger = logging.getLogger("sparrow_vllm.demo")

VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
QUESTIONS = [
    ("ab cd ef gh", "video"),
    ("ij kl mn", "image"),
    ("op qr st uv", "video"),
    (" wx yz ab cd ef gh", None),
]
NUM_SPEC_TOKENS = 3


def _media(kind: str | None, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    if kind == "video":
        frames = rng.integers(0, 255, (8, 112, 112, 3), dtype=np.uint8)
        meta = {"total_num_frames": 8, "fps": 2.0, "duration": 4.0, "video_backend": "numpy",
                "frames_indices": list(range(8)), "do_sample_frames": False}
        return {"video": (frames, meta)}
    if kind == "image":
        from PIL import Image

        return {"image": Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))}
    return {}


def _prompt(text: str, kind: str | None, seed: int) -> dict:
    if kind is None:
        return {"prompt": text}
    placeholder = VIDEO if kind == "video" else IMAGE
    return {
        "prompt": f"<|im_start|> user {placeholder} {text} <|im_end|> <|im_start|> assistant",
        "multi_modal_data": _media(kind, seed),
    }


def run_engine(target: str, draft: str | None) -> dict:
    """One vLLM engine: generate the demo answers, return texts, counters and timings."""
    from vllm import LLM, SamplingParams

    spec = None
    if draft is not None:
        spec = {"method": "sparrow", "model": draft, "num_speculative_tokens": NUM_SPEC_TOKENS}
    llm = LLM(model=target, speculative_config=spec, dtype="float32", enforce_eager=True,
              max_model_len=1024, max_num_seqs=4, gpu_memory_utilization=0.3, seed=0,
              disable_log_stats=False, limit_mm_per_prompt={"video": 1, "image": 1})
    prompts = [_prompt(text, kind, seed) for seed, (text, kind) in enumerate(QUESTIONS)]
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
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


def prepare_models(root: Path) -> tuple[Path, Path]:
    from sparrow_vllm.checkpoint import save_draft
    from sparrow_vllm.draft_factory import load_target_config, new_draft
    from sparrow_vllm.toy_target import build_toy_target
    from sparrow_vllm.training.self_distill import SelfDistillSettings, self_distill

    target, draft = root / "target", root / "draft"
    if not (target / "config.json").exists():
        logger.info("building a toy Qwen2.5-VL target in %s", target)
        build_toy_target("qwen2_5_vl", target, seed=1)
    if not (draft / "config.json").exists():
        logger.info("self-distilling a Sparrow draft on the target's outputs (~2 min)")
        fresh = save_draft(root / "draft-init", new_draft(load_target_config(target)))
        self_distill(target, fresh, draft, SelfDistillSettings(num_prompts=1024, steps=1500))
    return target, draft


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
    lines = ["", "Answers (Sparrow):"]
    for (text, kind), answer in zip(QUESTIONS, spec["texts"], strict=True):
        lines.append(f"  [{kind or 'text'}] {text!r} -> {answer!r}")
    same = base["token_ids"] == spec["token_ids"]
    lines += [
        "",
        f"identical to the target alone: {'yes' if same else 'NO'}",
        f"drafts: {drafts}  draft tokens: {c.get('vllm:spec_decode_num_draft_tokens', 0)}  "
        f"accepted: {accepted}",
        f"accepted per position: {c.get('vllm:spec_decode_num_accepted_tokens_per_pos')}",
        f"acceptance length (1 + accepted / drafts): {1 + accepted / max(drafts, 1):.2f}",
        f"generate time: {base['seconds']:.1f}s without speculation, {spec['seconds']:.1f}s with "
        "Sparrow (tiny random model on CPU: the draft costs as much as the target here)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="artifacts/demo", help="where the demo models live")
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--draft", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        Path(args.result).write_text(json.dumps(run_engine(args.engine, args.draft)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(args.root)
    target, draft = prepare_models(root)
    logger.info("running the target alone, then with Sparrow (one vLLM engine at a time)")
    base = _run_in_subprocess(target, None, root / "result-target-alone.json")
    spec = _run_in_subprocess(target, draft, root / "result-sparrow.json")
    logger.info(report(base, spec))
    if base["token_ids"] != spec["token_ids"]:
        raise SystemExit("Sparrow output differs from the target's own output")


if __name__ == "__main__":
    main()
