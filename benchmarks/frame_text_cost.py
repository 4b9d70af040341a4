"""Qwen3-VL: the draft's cost against video length, with its frame text skipped or cached.

Qwen3-VL writes every two frames of a video as `<t seconds> <vision_start> pads <vision_end>`.
A draft with frame_text="visual" (the default) treats the timestamps and markers between
frames as part of the video; with "text" it caches them as text rows. For videos of 0.5k
to 8k visual tokens this runs a toy Qwen3-VL target in vLLM (V1, one request at a time)
with the same draft weights under both settings and reports, per length: prompt tokens,
the text rows the draft keeps (by the family rule), and the drafter's time per decode
step. Writes OUT.json, OUT.md and OUT.png.

    python benchmarks/frame_text_cost.py --cold-cache-mb 256 --out benchmarks/results/frame_text_cost_qwen3_vl_toy

The toy target's video budget is raised so frames keep their size (8 visual tokens per
frame at 112x112); the draft is untrained (cost does not depend on its weights).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from sparrow_vllm.bench.machine import describe_machine
from sparrow_vllm.bench.offline import run_in_subprocess
from sparrow_vllm.draft.checkpoint import save_draft
from sparrow_vllm.draft.factory import new_draft
from sparrow_vllm.families import load_family
from sparrow_vllm.provenance import provenance
from sparrow_vllm.toy_targets import build_toy_target
from sparrow_vllm.toy_world.scene import QUESTIONS

logger = logging.getLogger("frame_text_cost")
LENGTHS = (512, 1024, 2048, 4096, 8192)
TOKENS_PER_FRAME = 8  # toy Qwen3-VL: 112x112 frames -> 128x128, 16 tokens per 2 frames
SETTINGS = ("visual", "text")


def build_pair(root: Path, max_frames: int) -> tuple[Path, dict[str, Path]]:
    """A toy Qwen3-VL target whose video budget fits max_frames, and one draft saved
    under each frame_text setting (the same weights)."""
    target = build_toy_target("qwen3_vl", root / "target", seed=3, max_positions=65536)
    config_path = target / "video_preprocessor_config.json"
    video = json.loads(config_path.read_text())
    video["size"]["longest_edge"] = max_frames * 128 * 128
    video["max_frames"] = max_frames
    config_path.write_text(json.dumps(video, indent=2))
    family = load_family(target)
    drafts = {s: save_draft(root / f"draft-{s}", new_draft(family, seed=0, frame_text=s)) for s in SETTINGS}
    return target, drafts


def _job(target: Path, draft: Path, lengths: list[int], args: argparse.Namespace, cold_mb: int = 0) -> dict:
    max_len = max(lengths) * 2 + 1024  # visual tokens, frame text, the question and answer
    engine = {"dtype": "float32", "enforce_eager": True, "max_num_seqs": 1, "max_model_len": max_len,
              "max_num_batched_tokens": max_len}
    question = next(iter(QUESTIONS))
    requests = [{"seed": 3, "index": i, "frames": n // TOKENS_PER_FRAME, "question": question}
                for n in lengths for i in range(args.requests)]
    return {"target": str(target), "engine": engine, "max_tokens": args.max_tokens, "ignore_eos": True,
            "speculative_config": {"method": "sparrow", "model": str(draft), "num_speculative_tokens": args.k},
            "warmup": {**requests[0], "index": 1000}, "requests": requests, "keep_prompt_token_ids": True,
            "flush_cache_mb": cold_mb}


def _median_ms(run: dict, frames: int) -> float:
    return 1000 * statistics.median(s for r in run["requests"] if r["frames"] == frames for s in r["draft_decode_s"])


def summarise(target: Path, runs: dict[str, dict], lengths: list[int], cold: dict[str, dict] | None = None) -> list[dict]:
    family = load_family(target)
    rows = []
    for setting, run in runs.items():
        for n in lengths:
            mine = [r for r in run["requests"] if r["frames"] == n // TOKENS_PER_FRAME]
            ids = mine[0]["prompt_token_ids"]
            mask = family.visual_token_mask(ids, setting)
            steps = [s for r in mine for s in r["draft_decode_s"]]
            row = {
                "frame_text": setting, "visual_tokens": sum(t in family.placeholder_ids for t in ids),
                "target_visual_tokens": n, "prompt_tokens": len(ids),
                "draft_text_rows": sum(not v for v in mask),
                "draft_ms_per_step_median": 1000 * statistics.median(steps),
                "draft_ms_per_step_mean": 1000 * statistics.mean(steps),
                "acceptance_length": statistics.mean(r["acceptance_length"] for r in mine),
            }
            if cold:
                row["draft_ms_per_step_cold_cache"] = _median_ms(cold[setting], n // TOKENS_PER_FRAME)
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| frame_text | visual tokens | prompt tokens | draft text rows | draft ms/step (median) "
             "| draft ms/step, cold caches |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['frame_text']} | {r['visual_tokens']} | {r['prompt_tokens']} | {r['draft_text_rows']} "
              f"| {r['draft_ms_per_step_median']:.2f} | "
              + (f"{r['draft_ms_per_step_cold_cache']:.2f} |" if "draft_ms_per_step_cold_cache" in r else "- |")
              for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for setting in SETTINGS:
        mine = [r for r in rows if r["frame_text"] == setting]
        x = [r["visual_tokens"] for r in mine]
        axes[0].plot(x, [r["draft_text_rows"] for r in mine], marker="o", label=f"frame_text={setting}")
        axes[1].plot(x, [r["draft_ms_per_step_median"] for r in mine], marker="o", label=f"frame_text={setting}")
        if "draft_ms_per_step_cold_cache" in mine[0]:
            axes[1].plot(x, [r["draft_ms_per_step_cold_cache"] for r in mine], marker="x", linestyle="--",
                         label=f"frame_text={setting}, cold caches")
    for ax, title in zip(axes, ("text rows the draft keeps", "draft time per decode step (ms, median)"),
                         strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("visual tokens per video")
        ax.set_title(title)
        ax.legend()
        ax.set_ylim(bottom=0)
    fig.suptitle("Toy Qwen3-VL in vLLM: the draft's cost against video length")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="visual tokens per video")
    parser.add_argument("--requests", type=int, default=2, help="requests per length")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--k", type=int, default=3, help="num_speculative_tokens")
    parser.add_argument("--cold-cache-mb", type=int, default=0,
                        help="also time the drafter after writing this much memory before each call "
                        "(cold CPU caches whatever the target read before); 0 = warm runs only")
    parser.add_argument("--out", required=True, help="output path without suffix")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="frame-text-") as tmp:
        target, drafts = build_pair(Path(tmp), max(args.lengths) // TOKENS_PER_FRAME)
        runs, cold = {}, {}
        for setting in tqdm(SETTINGS, desc="frame_text settings"):
            runs[setting] = run_in_subprocess(_job(target, drafts[setting], args.lengths, args),
                                              Path(tmp) / "runs", setting)
            if args.cold_cache_mb:
                cold[setting] = run_in_subprocess(_job(target, drafts[setting], args.lengths, args, args.cold_cache_mb),
                                                  Path(tmp) / "runs", f"{setting}-cold")
        rows = summarise(target, runs, args.lengths, cold)
    long, short = max(args.lengths), min(args.lengths)

    def ratio(setting: str, key: str) -> float:
        by_len = {r["target_visual_tokens"]: r[key] for r in rows if r["frame_text"] == setting}
        return by_len[long] / by_len[short]

    result = {
        "rows": rows,
        "long_over_short": {s: {"text_rows": ratio(s, "draft_text_rows"),
                                "draft_ms_per_step": ratio(s, "draft_ms_per_step_median"),
                                **({"draft_ms_per_step_cold_cache": ratio(s, "draft_ms_per_step_cold_cache")}
                                   if args.cold_cache_mb else {})} for s in SETTINGS},
        "machine": describe_machine(), "provenance": provenance(sys.argv),
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(rows))
    plot(rows, out.with_suffix(".png"))
    logger.info("%s", markdown(rows))


if __name__ == "__main__":
    main()
