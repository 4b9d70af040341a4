"""Sparrow's adaptive draft length judged offline on recorded step traces (issue 29): the
replayed policy against every fixed K and the per-step oracle, on the recorded workload with
the recorded acceptance (sparrow_vllm/analysis/trace_replay.py).

TRACE_DIR holds one folder per load point (e.g. `v1536-c4`), each with the step traces
(SPARROW_STEP_TRACE, serving/step_trace.py) of the same requests served by `none`,
`sparrow-k1`..`sparrow-kK` (fixed K), `sparrow` (adaptive); others (`sparrow-table`,
`eagle`) are listed and not used. Per point:

  measured   MeasuredCost (analysis/measured_cost.py) of none + sparrow-k*: each simulated
             step = its recorded time x (0.5 m(K verified) + 0.5 m(K drafted)) / m(K_max),
             m(K) the mean step time measured at fixed K (exact in the mean at a fixed K,
             no linear assumption); the workload is sparrow-kK (K = the largest fixed K)
  fit        how well the fitted linear model predicts each of those traces (measured and
             predicted mean step seconds, relative RMS error per step)
  fitted     the step-cost model fitted to none + sparrow-k* (relative least squares, no
             forgetting); the workload is sparrow-kK (K = the largest fixed K), simulated
             with each recorded step's residual kept
  gpu        the same workload with gpu_theta (an estimate for Qwen2.5-VL-7B + Sparrow on
             one H100 SXM, not a measurement), without noise; gpu_noisy: with the recorded
             residuals (taken against the fitted model) applied to it

TRACE_DIR/sparrow.jsonl (and sparrow-g<i>.jsonl), an adaptive server's whole trace (its
policy lives through the warm-up and every point), is replayed through a fresh DraftLengthPolicy: the steps whose K'
matches the recorded one (all of them, or the trace misses something the policy saw).

Goal: regret of adaptive against the best fixed K (in hindsight) <= 3% on every trace.

    python benchmarks/trace_replay.py TRACE_DIR --out benchmarks/results/trace_replay_toy_world
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from sparrow_vllm.analysis.gpu_cost import gpu_theta
from sparrow_vllm.analysis.measured_cost import MeasuredCost, fit_quality
from sparrow_vllm.analysis.step_cost_fit import FEATURES, fit_step_cost
from sparrow_vllm.analysis.trace_replay import regret, replay_decisions
from sparrow_vllm.bench.machine import describe_machine
from sparrow_vllm.provenance import provenance
from sparrow_vllm.serving.step_trace import read_trace

logger = logging.getLogger("trace_replay")
GOAL = 0.03  # regret vs the best fixed K
FIXED = re.compile(r"sparrow-k(\d+)$")
MODELS = ("measured", "fitted", "gpu", "gpu_noisy")


def point_result(folder: Path) -> dict[str, Any]:
    """Fit, replay and regret of one load point's traces."""
    traces = {p.stem: read_trace(p) for p in sorted(folder.glob("*.jsonl"))}
    fixed = sorted((int(m.group(1)), name) for name in traces if (m := FIXED.match(name)))
    if "none" not in traces or not fixed:
        raise SystemExit(f"{folder}: needs none.jsonl and sparrow-k<K>.jsonl traces (has {sorted(traces)})")
    k_max, workload_name = fixed[-1]
    fit_from = ["none", *(name for _, name in fixed)]
    theta = fit_step_cost([traces[name] for name in fit_from])
    gpu = gpu_theta(k_max)
    workload = traces[workload_name]
    result: dict[str, Any] = {
        "workload": workload_name, "fit_from": fit_from,
        "unused": sorted(set(traces) - set(fit_from) - {"sparrow"}),
        "fitted_theta": dict(zip(FEATURES, theta.tolist(), strict=True)),
        "gpu_theta": dict(zip(FEATURES, gpu.tolist(), strict=True)),
        "fit_quality": fit_quality({name: traces[name] for name in fit_from}, theta),
    }
    measured = MeasuredCost.from_traces([traces[name] for name in fit_from])
    result["measured_means_s"] = {str(k): m for k, m in measured.means.items()}
    choices = tuple(traces["sparrow"][0]["choices"]) if traces.get("sparrow", ({},))[0].get("choices") else None
    if choices is not None and max(choices) > k_max:
        logger.warning("%s: the adaptive trace's choices %s pass the workload's K_max = %d (record sparrow-k%d "
                       "to simulate them); simulating choices <= %d only", folder, choices, k_max, max(choices), k_max)
        choices = tuple(c for c in choices if c <= k_max)
    missing = sorted(set(range(k_max + 1)) - set(measured.means))
    if missing:
        # the measured cost needs every fixed K's own steps; the linear fit and the GPU
        # estimate do not
        logger.warning("%s: no trace at K = %s, so no regret with the measured cost (record sparrow-k1..k%d "
                       "for it); the fitted and GPU costs still replay", folder, missing, k_max)
        result["measured_missing_k"] = missing
    result["regret"] = {
        "measured": None if missing else regret(workload, measured, keep_noise=True, choices=choices),
        "fitted": regret(workload, theta, keep_noise=True, choices=choices),
        "gpu": regret(workload, gpu, keep_noise=False, choices=choices),
        "gpu_noisy": regret(workload, gpu, keep_noise=True, noise_theta=theta, choices=choices),
    }
    return result


def replay_whole(path: Path) -> dict[str, Any]:
    """The adaptive server's whole trace (warm-up and every point, as the policy lived
    through them) replayed: each recorded K' against the replayed one."""
    decisions = replay_decisions(*read_trace(path))
    wrong = [d for d in decisions if d[1] != d[2]]
    return {"trace": str(path), "steps": len(decisions), "matches": len(decisions) - len(wrong),
            "first_mismatches": wrong[:5]}


def goals(points: dict[str, dict[str, Any]]) -> dict[str, bool | None]:
    """Per cost model: regret within the goal at every point (None: not replayed at some point)."""
    met: dict[str, bool | None] = {}
    for model in MODELS:
        regrets = [p["regret"][model] for p in points.values()]
        met[model] = None if None in regrets else all(r["regret_vs_best_fixed"] <= GOAL for r in regrets)
    return met


def markdown(points: dict[str, dict[str, Any]], met: dict[str, bool], replay: list[dict[str, Any]]) -> str:
    k_max = max(len(p["regret"]["fitted"]["fixed"]) for p in points.values()) - 1
    head = ["point", "cost", *(f"K={k}" for k in range(k_max + 1)), "best fixed", "adaptive", "oracle",
            "regret vs best fixed", "regret vs oracle", "adaptive K counts"]
    lines = ["Tokens/s per policy on each point's K_max workload trace (simulated; measured: the "
             "point's per-K mean step times; fitted: its linear step-cost fit, both with recorded noise; "
             "gpu: an H100 + Qwen2.5-VL-7B estimate).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, p in points.items():
        for model in MODELS:
            r = p["regret"][model]
            if r is None:
                lines.append(f"| {name} | {model} | not replayed: no trace at K = {p['measured_missing_k']} |")
                continue
            rates = [f"{r['fixed'][str(k)]:.1f}" if str(k) in r["fixed"] else "" for k in range(k_max + 1)]
            counts = ", ".join(f"{k}: {c}" for k, c in r["adaptive_k_counts"].items())
            lines.append(f"| {name} | {model} | " + " | ".join(rates) + f" | {r['best_fixed']:.1f} (K={r['best_fixed_k']})"
                         f" | {r['adaptive']:.1f} | {r['oracle']:.1f} | {r['regret_vs_best_fixed']:+.1%}"
                         f" | {r['regret_vs_oracle']:+.1%} | {counts} |")
    lines.append("")
    for name, p in points.items():
        fit = ", ".join(f"{trace} {q['measured_mean_s'] * 1e3:.1f}/{q['predicted_mean_s'] * 1e3:.1f} ms "
                        f"({q['relative_rms']:.2f})" for trace, q in p["fit_quality"].items())
        lines.append(f"- {name} linear fit, mean step measured/predicted (relative RMS error): {fit}")
    lines.append("")
    for whole in replay:
        lines += [f"Decision replay of {Path(whole['trace']).name}: {whole['matches']} of {whole['steps']} "
                  "recorded K' reproduced exactly.", ""]
    for model in MODELS:
        verdict = {True: "met", False: "NOT met", None: "not judged (a point lacks a fixed-K trace)"}[met[model]]
        lines.append(f"Goal (regret vs best fixed <= {GOAL:.0%} on every trace), {model} cost: {verdict}.")
    return "\n".join(lines) + "\n"


def plot(points: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in MODELS if all(p["regret"][m] is not None for p in points.values())]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    axes = axes[0]
    for ax, model in zip(axes, models, strict=True):
        names = list(points)
        first = points[names[0]]["regret"][model]
        policies = [f"K={k}" for k in first["fixed"]] + ["adaptive", "oracle"]
        width = 0.8 / len(policies)
        for j, policy in enumerate(policies):
            values = []
            for name in names:
                r = points[name]["regret"][model]
                values.append(r[policy] if policy in ("adaptive", "oracle") else r["fixed"].get(policy[2:], 0.0))
            ax.bar([i + j * width for i in range(len(names))], values, width, label=policy)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
        ax.set_title(f"tokens/s, {model} cost")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace_dir", type=Path, help="folders <point>/<method>.jsonl")
    parser.add_argument("--out", type=Path, default=Path("artifacts/trace_replay"),
                        help="output prefix: OUT.json, OUT.md, OUT.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    folders = sorted(p for p in args.trace_dir.iterdir() if p.is_dir() and any(p.glob("*.jsonl")))
    if not folders:
        raise SystemExit(f"{args.trace_dir}: no <point>/<method>.jsonl step traces")
    points = {folder.name: point_result(folder) for folder in folders}
    met = goals(points)
    wholes = [*args.trace_dir.glob("sparrow.jsonl"), *sorted(args.trace_dir.glob("sparrow-g*.jsonl"))]
    replay = [replay_whole(path) for path in wholes]
    result = {"benchmark": "trace_replay", "machine": describe_machine(), "trace_dir": str(args.trace_dir),
              "goal": {"regret_vs_best_fixed_at_most": GOAL, "met": met}, "points": points, "replay": replay,
              "provenance": provenance(sys.argv if argv is None else ["benchmarks/trace_replay.py", *argv])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(points, met, replay)
    args.out.with_suffix(".md").write_text(text)
    plot(points, args.out.with_suffix(".png"))
    logger.info("\n%s", text)


if __name__ == "__main__":
    main()
