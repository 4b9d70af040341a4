"""Ablation of Sparrow's three parts, shaped like the paper's Table 6: offline acceptance
length at the shortest and longest visual length for each combination of MTP, IVSB and
VATA, every draft trained with `sparrow-vllm train` on the same features.

    row         trained with                            inference rows at visual positions
    none        visual rows as vLLM's eagle feeds them  kept (eagle form)
    VATA        text rows only                          dropped
    MTP         as `none`, plus MTP                     kept (eagle form)
    MTP+IVSB    bridge rows (IVSB), plus MTP            kept (the bridge states)
    VATA+MTP    text rows only, plus MTP                dropped  (the toy world's draft)
    all three   bridge rows (IVSB), plus MTP            dropped  (the paper's recipe)

    python benchmarks/ablation.py --target artifacts/toy-world-build/target \\
        --features artifacts/toy-world-build/features \\
        --val 512=artifacts/toy-world-build/val-512-features \\
        --val 25000=artifacts/toy-world-build/val-25000-features
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sparrow_vllm.bench.machine import describe_machine
from sparrow_vllm.provenance import provenance
from sparrow_vllm.training.evaluate import evaluate_acceptance
from sparrow_vllm.training.pipeline import train_draft
from sparrow_vllm.training.settings import TrainSettings

# name -> (TrainSettings fields, draft fields, inference rows)
VARIANTS: dict[str, tuple[dict, dict, str]] = {
    "none": ({"visual_rows": "full", "ivsb": False, "mtp_steps": 0}, {"fc_bias": False}, "full"),
    "VATA": ({"visual_rows": "text", "ivsb": False, "mtp_steps": 0}, {}, "text"),
    "MTP": ({"visual_rows": "full", "ivsb": False}, {"fc_bias": False}, "full"),
    "MTP+IVSB": ({"visual_rows": "text", "ivsb": True}, {}, "bridge"),
    "VATA+MTP": ({"visual_rows": "text", "ivsb": False}, {}, "text"),
    "all three": ({"visual_rows": "text", "ivsb": True}, {}, "text"),
}


def _length(spec: str) -> tuple[int, str]:
    tokens, path = spec.split("=", 1)
    return int(tokens), path


def run(args: argparse.Namespace) -> dict:
    base = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ce_weight=args.ce_weight,
                mtp_steps=args.mtp_steps, val_samples=args.val_samples, val_k=args.k, seed=args.seed)
    drafts: dict[str, Path] = {}
    rows = []
    for name, (train_fields, draft_fields, inference) in VARIANTS.items():
        key = json.dumps([train_fields, draft_fields], sort_keys=True)
        if key not in drafts:  # MTP+IVSB and all three share one draft
            out = Path(args.work) / name.replace(" ", "-").replace("+", "-")
            if args.reuse and (out / "model.safetensors").is_file():
                print(f"reusing the {name} draft in {out} (--reuse)", flush=True)
            else:
                start = time.perf_counter()
                train_draft(args.target, out, TrainSettings(**{**base, **train_fields}), draft_fields,
                            features=args.features, command=["benchmarks/ablation.py", name])
                print(f"trained {name} in {time.perf_counter() - start:.0f} s -> {out}", flush=True)
            drafts[key] = out
        row = {"variant": name, "draft": str(drafts[key]), "inference_rows": inference, "lengths": {}}
        for tokens, features in args.val:
            result = evaluate_acceptance(args.target, drafts[key], features, args.k, inference)
            row["lengths"][str(tokens)] = {
                k: result[k] for k in ("acceptance_length", "per_position_rate", "drafts", "sequences")
            }
        rows.append(row)
    return {"machine": describe_machine(), "k": args.k, "settings": base, "rows": rows,
            "provenance": provenance(["benchmarks/ablation.py"])}


def table(result: dict) -> str:
    lengths = list(result["rows"][0]["lengths"])
    lines = ["| variant | " + " | ".join(f"tau @ {t} visual tokens" for t in lengths) + " |",
             "|---|" + "---|" * len(lengths)]
    for row in result["rows"]:
        cells = [f"{row['lengths'][t]['acceptance_length']:.2f}" for t in lengths]
        lines.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    sizes = result["rows"][0]["lengths"]
    lines.append("\nK = {}; held-out sequences per length: {}.".format(
        result["k"], ", ".join(f"{t}: {sizes[t]['sequences']}" for t in lengths)))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="target model directory")
    parser.add_argument("--features", required=True, help="training features (extract-features output)")
    parser.add_argument("--val", type=_length, action="append", required=True,
                        help="TOKENS=DIR: validation features at one visual length (repeat)")
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
                        help="use a variant's draft already in --work (e.g. one trained with the same "
                             "settings by scripts/build_toy_world.sh) instead of training it again")
    args = parser.parse_args()
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(table(result) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
