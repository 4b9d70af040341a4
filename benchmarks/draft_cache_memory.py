"""Draft-cache memory at production settings: before (one slot per request sized for
max_model_len) and after (paged text rows sized by the text-row budget).

For a draft with Qwen2.5-VL-7B's geometry (1 layer, 4 KV heads, head dim 128, bf16: 2 KiB
of K/V per text row), K = 4, no text window (the training default), at max_model_len
32k and 128k x 256 and 1024 sequences (vLLM's default max_num_seqs on H100/H200 is 1024,
256 on smaller GPUs). "after" is the plan the server makes (`plan_text_cache`, the code
`vllm serve` runs at start-up) with the default budget, for the free memory given by
--free-gib (default: an H200's 141 GiB less ~16 GiB of 7B weights, an assumption, not a
measurement). Each "after" cache is also allocated here on the CPU and its tensors'
bytes are measured. Writes OUT.json, OUT.md and OUT.png.

    python benchmarks/draft_cache_memory.py --out benchmarks/results/draft_cache_memory_7b
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

from sparrow_vllm.bench.machine import describe_machine
from sparrow_vllm.provenance import provenance
from sparrow_vllm.serving.serving_options import SparrowServingOptions
from sparrow_vllm.serving.text_kv_cache import TextKVCache
from sparrow_vllm.serving.vllm.draft_loading import DEFAULT_FREE_MEMORY_FRACTION, plan_text_cache

GEOMETRY = dict(num_layers=1, num_kv_heads=4, head_dim=128, dtype=torch.bfloat16)
K = 4
OLD_LIMIT_GIB = 4.0  # the guard that stopped start-up before


def old_layout_bytes(max_model_len: int, max_num_seqs: int) -> int:
    """The previous TextKVCache: 2 slots per sequence x (max_model_len + K + 1) rows."""
    rows = 2 * max_num_seqs * (max_model_len + K + 1)
    return 2 * rows * GEOMETRY["num_kv_heads"] * GEOMETRY["head_dim"] * 2


def measured_bytes(plan) -> int:
    layout = TextKVCache.from_plan(plan, "cpu").layout
    tensors = [layout.k, layout.v, layout.block_table, layout.lengths, layout.first_row,
               layout.next_seq, layout.row_seq, layout.row_token]
    total = sum(t.numel() * t.element_size() for t in tensors)
    del layout, tensors
    gc.collect()
    return total


def run(args: argparse.Namespace) -> dict:
    rows = []
    for max_num_seqs in args.max_num_seqs:
        for max_model_len in args.max_model_lens:
            plan = plan_text_cache(
                **GEOMETRY, window=None, num_speculative_tokens=K, max_model_len=max_model_len,
                max_num_seqs=max_num_seqs, options=SparrowServingOptions(),
                free_bytes=int(args.free_gib * 2**30),
            )
            before = old_layout_bytes(max_model_len, max_num_seqs)
            rows.append({
                "max_model_len": max_model_len,
                "max_num_seqs": max_num_seqs,
                "before_gib": before / 2**30,
                "before_starts": before <= OLD_LIMIT_GIB * 2**30,
                "after_gib": plan.nbytes / 2**30,
                "after_measured_gib": measured_bytes(plan) / 2**30,
                "after_text_rows": plan.text_rows,
                "after_rows_per_sequence": plan.text_rows // max_num_seqs,
                "budget": plan.budget_source,
            })
    return {
        "benchmark": "draft_cache_memory",
        "geometry": {**{k: str(v) for k, v in GEOMETRY.items()}, "num_speculative_tokens": K},
        "free_gib": args.free_gib,
        "default_free_memory_fraction": DEFAULT_FREE_MEMORY_FRACTION,
        "machine": describe_machine(),
        "provenance": provenance(["benchmarks/draft_cache_memory.py", *sys.argv[1:]]),
        "rows": rows,
    }


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Draft cache, 7B geometry, K = {K}, no window; free memory {result['free_gib']:.0f} GiB "
        "(assumed); 'after' allocated and measured on " + result["machine"],
        "",
        "| max_model_len | max_num_seqs | before (GiB) | starts before? | after (GiB, measured) | text rows (per sequence) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['max_model_len']} | {r['max_num_seqs']} | {r['before_gib']:.1f} | "
            f"{'yes' if r['before_starts'] else 'no (4 GiB guard)'} | "
            f"{r['after_measured_gib']:.2f} | {r['after_text_rows']} ({r['after_rows_per_sequence']}) |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{r['max_model_len'] // 1000}k x {r['max_num_seqs']}" for r in result["rows"]]
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], [r["before_gib"] for r in result["rows"]], 0.4, label="before: slot per request")
    ax.bar([i + 0.2 for i in x], [r["after_measured_gib"] for r in result["rows"]], 0.4, label="after: paged, text budget")
    ax.set_yscale("log")
    ax.set_xticks(list(x), labels)
    ax.set_xlabel("max_model_len x max_num_seqs")
    ax.set_ylabel("draft cache (GiB, log)")
    ax.set_title("Sparrow draft cache, Qwen2.5-VL-7B draft geometry")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-model-lens", type=lambda s: [int(x) for x in s.split(",")], default=[32768, 128000])
    p.add_argument("--max-num-seqs", type=lambda s: [int(x) for x in s.split(",")], default=[256, 1024])
    p.add_argument("--free-gib", type=float, default=125.0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/draft_cache_memory_7b"))
    args = p.parse_args()
    write(run(args), args.out)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
