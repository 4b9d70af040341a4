"""Ablation of Sparrow's three parts, shaped like the paper's Table 6, plus the IVSB recipes
of the IVSB study: offline acceptance length at the shortest and longest visual length for
each variant, every draft trained with `sparrow-vllm train` on the same training rows.

    row                  trained with                              inference rows at visual positions
    none                 visual rows as vLLM's eagle feeds them    kept (eagle form)
    VATA                 text rows only                            dropped
    MTP                  as `none`, plus MTP                       kept (eagle form)
    MTP+IVSB             bridge rows (IVSB, m* = L // 2), MTP      kept (the bridge states)
    VATA+MTP             text rows only, plus MTP                  dropped  (the toy world's draft)
    all three            bridge rows (IVSB, m* = L // 2), MTP      dropped  (the paper's recipe)
    all three, m*=X      IVSB from layer X (`sparrow-vllm analyze`'s suggestion)   dropped
    all three, drop 0.5  IVSB, each sequence drops its bridge rows with chance 0.5 per step
    all three, IVSB 1/3  IVSB in the first third of the steps, text rows only after
    all three, m*=X, drop 0.5
    VATA+MTP, budget 64  text rows plus at most 64 visual rows per image/video, MTP   the same kept
    VATA+MTP, all rows   text rows plus every visual row, MTP      kept (Sparrow's cache)

Each length reports tau with a 95% bootstrap interval over held-out sequences, and the
paired difference to VATA+MTP (same sequences resampled for both), so a difference is
resolved when its interval excludes 0.

    python benchmarks/ablation.py --target models/toy-world/target \\
        --features artifacts/ivsb-study/features-b4 --bridge-features 7=artifacts/ivsb-study/features-b7 \\
        --val 512=artifacts/ivsb-study/val-512-features --val 25000=artifacts/ivsb-study/val-25000-features
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparrow_vllm.bench.intervals import bootstrap_picks, ci95
from sparrow_vllm.bench.machine import describe_machine
from sparrow_vllm.bench.paired import acceptance_difference, tau
from sparrow_vllm.provenance import provenance
from sparrow_vllm.training.evaluate import evaluate_acceptance
from sparrow_vllm.training.pipeline import train_draft
from sparrow_vllm.training.settings import TrainSettings

REFERENCE = "VATA+MTP"
IVSB = {"visual_rows": "text", "ivsb": True}


@dataclass(frozen=True)
class Variant:
    train: dict[str, Any]  # TrainSettings fields
    inference: str  # rows at visual positions when measuring: text | bridge | full
    draft: dict[str, Any] = field(default_factory=dict)  # SparrowConfig fields
    bridge_layer: str = "default"  # which --bridge-features the draft trains on


def variants(suggested: int | None) -> dict[str, Variant]:
    table = {
        "none": Variant({"visual_rows": "full", "ivsb": False, "mtp_steps": 0}, "full", {"fc_bias": False}),
        "VATA": Variant({"visual_rows": "text", "ivsb": False, "mtp_steps": 0}, "text"),
        "MTP": Variant({"visual_rows": "full", "ivsb": False}, "full", {"fc_bias": False}),
        "MTP+IVSB": Variant(IVSB, "bridge"),
        "VATA+MTP": Variant({"visual_rows": "text", "ivsb": False}, "text"),
        "all three": Variant(IVSB, "text"),
        "all three, drop 0.5": Variant({**IVSB, "bridge_dropout": 0.5}, "text"),
        "all three, IVSB 1/3": Variant({**IVSB, "ivsb_fraction": 1 / 3}, "text"),
        # Sparrow drafts that keep visual rows in their own cache (--visual-budget): kept
        # rows are FC rows like text rows, in training and when measuring
        "VATA+MTP, budget 64": Variant({"visual_rows": "text", "ivsb": False}, "text", {"visual_budget": 64}),
        "VATA+MTP, all rows": Variant({"visual_rows": "text", "ivsb": False}, "text", {"visual_budget": "all"}),
    }
    if suggested is not None:
        table[f"all three, m*={suggested}"] = Variant(IVSB, "text", bridge_layer=str(suggested))
        table[f"all three, m*={suggested}, drop 0.5"] = Variant(
            {**IVSB, "bridge_dropout": 0.5}, "text", bridge_layer=str(suggested))
    return table


def _length(spec: str) -> tuple[int, str]:
    tokens, path = spec.split("=", 1)
    return int(tokens), path


def bootstrap(per_sequence: np.ndarray, reference: np.ndarray | None, draws: int = 4000,
              seed: int = 0) -> dict[str, Any]:
    """95% intervals of tau and of tau - tau(reference), resampling sequences (paired)."""
    if reference is None:
        return {"ci95": ci95(tau(per_sequence[bootstrap_picks(len(per_sequence), draws, seed)]))}
    paired = acceptance_difference(per_sequence, reference, draws, seed)
    return {"ci95": paired["a_ci95"], "diff_vs_reference": paired["diff"], "diff_ci95": paired["diff_ci95"]}


def train_variant(name: str, variant: Variant, args: argparse.Namespace, base: dict) -> Path:
    out = Path(args.work) / re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
    if args.reuse and (out / "model.safetensors").is_file():
        print(f"reusing the {name} draft in {out} (--reuse)", flush=True)
        return out
    features = args.features if variant.bridge_layer == "default" else args.bridge_features[variant.bridge_layer]
    start = time.perf_counter()
    train_draft(args.target, out, TrainSettings(**{**base, **variant.train}), variant.draft,
                features=features, command=["benchmarks/ablation.py", name])
    print(f"trained {name} in {time.perf_counter() - start:.0f} s -> {out}", flush=True)
    return out


def run(args: argparse.Namespace) -> dict:
    base = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ce_weight=args.ce_weight,
                mtp_steps=args.mtp_steps, val_samples=args.val_samples, val_k=args.k, seed=args.seed)
    suggested = next(iter(args.bridge_features), None)
    table = variants(int(suggested) if suggested is not None else None)
    chosen = [REFERENCE] + [v for v in (args.variants or list(table)) if v != REFERENCE]
    unknown = [v for v in chosen if v not in table]
    if unknown:
        raise SystemExit(f"unknown --variants {unknown}; choose from {list(table)}")
    drafts: dict[str, Path] = {}
    rows = []
    for name in chosen:
        variant = table[name]
        key = json.dumps([variant.train, variant.draft, variant.bridge_layer], sort_keys=True)
        if key not in drafts:  # MTP+IVSB and all three share one draft
            drafts[key] = train_variant(name, variant, args, base)
        if args.train_only:
            continue
        row = {"variant": name, "draft": str(drafts[key]), "inference_rows": variant.inference,
               "train": variant.train, "bridge_layer": variant.bridge_layer, "lengths": {}}
        for tokens, features in args.val:
            result = evaluate_acceptance(args.target, drafts[key], features, args.k, variant.inference)
            row["lengths"][str(tokens)] = {
                k: result[k] for k in ("acceptance_length", "per_position_rate", "drafts", "sequences", "per_sequence")
            }
        rows.append(row)
    if args.train_only:
        return {}
    for tokens, _ in args.val:
        reference = np.array(rows[0]["lengths"][str(tokens)]["per_sequence"])
        for row in rows:
            entry = row["lengths"][str(tokens)]
            entry.update(bootstrap(np.array(entry["per_sequence"]), None if row is rows[0] else reference))
    return {"machine": describe_machine(), "k": args.k, "settings": base, "reference": REFERENCE,
            "rows": rows, "provenance": provenance(["benchmarks/ablation.py"])}


def table(result: dict) -> str:
    lengths = list(result["rows"][0]["lengths"])
    lines = ["| variant | " + " | ".join(f"tau @ {t} visual tokens (95% CI) | vs {result['reference']}"
                                        for t in lengths) + " |",
             "|---|" + "---|---|" * len(lengths)]
    for row in result["rows"]:
        cells = []
        for t in lengths:
            e = row["lengths"][t]
            cells.append(f"{e['acceptance_length']:.2f} ({e['ci95'][0]:.2f}-{e['ci95'][1]:.2f})")
            cells.append(f"{e['diff_vs_reference']:+.2f} ({e['diff_ci95'][0]:+.2f} to {e['diff_ci95'][1]:+.2f})"
                         if "diff_vs_reference" in e else "reference")
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    sizes = result["rows"][0]["lengths"]
    lines.append("\nK = {}; held-out sequences per length: {}; intervals: 95% bootstrap over sequences, "
                 "differences paired.".format(
                     result["k"], ", ".join(f"{t}: {sizes[t]['sequences']}" for t in lengths)))
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = list(result["rows"][0]["lengths"])
    names = [r["variant"] for r in result["rows"]]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.5))
    height = 0.8 / len(lengths)
    for i, t in enumerate(lengths):
        values = [r["lengths"][t]["acceptance_length"] for r in result["rows"]]
        low = [v - r["lengths"][t]["ci95"][0] for v, r in zip(values, result["rows"], strict=True)]
        high = [r["lengths"][t]["ci95"][1] - v for v, r in zip(values, result["rows"], strict=True)]
        ax.barh(np.arange(len(names)) + i * height, values, height, xerr=[low, high], capsize=3,
                label=f"{t} visual tokens")
    ax.set_yticks(np.arange(len(names)) + height * (len(lengths) - 1) / 2, names)
    ax.invert_yaxis()
    ax.set_xlabel(f"acceptance length (K = {result['k']}), 95% CI")
    ax.set_title("Sparrow ablation and IVSB recipes, toy world", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="target model directory")
    parser.add_argument("--features", required=True,
                        help="training features (extract-features output, bridge layer L // 2)")
    parser.add_argument("--bridge-features", type=_length, action="append", default=[],
                        help="LAYER=DIR: the same rows extracted with --bridge-layer LAYER (adds the "
                        "'m*=LAYER' variants; give the layer `sparrow-vllm analyze` suggests)")
    parser.add_argument("--val", type=_length, action="append", default=[],
                        help="TOKENS=DIR: validation features at one visual length (repeat)")
    parser.add_argument("--variants", type=lambda s: [v.strip() for v in s.split(";")],
                        help=f"';'-separated variants to run (default: all; {REFERENCE} always runs)")
    parser.add_argument("--work", default="artifacts/ablation", help="where the drafts go")
    parser.add_argument("--out", default="benchmarks/results/ablation_toy_world.json", help="JSON result")
    parser.add_argument("--steps", type=int, default=1200, help="training steps per draft")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--ce-weight", type=float, default=1.0, help="cross-entropy weight")
    parser.add_argument("--mtp-steps", type=int, default=2, help="MTP steps of the MTP variants")
    parser.add_argument("--val-samples", type=int, default=32, help="held-out training sequences")
    parser.add_argument("--k", type=int, default=4, help="draft chain length")
    parser.add_argument("--seed", type=int, default=0, help="seed")
    parser.add_argument("--reuse", action="store_true",
                        help="use a variant's draft already in --work instead of training it again")
    parser.add_argument("--train-only", action="store_true",
                        help="train the drafts into --work and stop (measure them later with --reuse)")
    args = parser.parse_args()
    if not args.val and not args.train_only:
        parser.error("--val TOKENS=DIR is required (at least one) unless --train-only")
    args.bridge_features = {str(layer): path for layer, path in args.bridge_features}
    result = run(args)
    if args.train_only:
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(table(result) + "\n")
    plot(result, out.with_suffix(".png"))
    print(table(result))


if __name__ == "__main__":
    main()
