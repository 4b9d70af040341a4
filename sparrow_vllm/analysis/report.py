"""`sparrow-vllm analyze`'s outputs: analysis.json, analysis.png (metric vs layer, and vs
visual budget N when the budget probe measured any) and the provenance of the run."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from sparrow_vllm.errors import UsageError

logger = logging.getLogger(__name__)
RESULT_FILE = "analysis.json"
PLOT_FILE = "analysis.png"


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise UsageError("`sparrow-vllm analyze` plots with matplotlib: pip install 'sparrow-vllm[train]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(result: dict[str, Any], path: Path, title: str) -> None:
    """Agreement and accuracy (left axis) and KL (right axis) against the cut layer; a
    second panel, agreement and KL against the visual budget N, when one was measured."""
    plt = _pyplot()
    curves = result["curves"]
    layers = [c["layer"] for c in curves]
    budgets = result.get("budget_curve") or []
    if budgets:
        fig, (ax, budget_ax) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [7, 5]})
        _plot_budgets(budget_ax, result)
    else:
        fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(layers, [c["agreement"] for c in curves], "o-", color="tab:blue", label="next-token agreement")
    if curves[0]["accuracy"] is not None:
        ax.plot(layers, [c["accuracy"] for c in curves], "s-", color="tab:green", label="answer accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("visual rows removed from layer x on (x = L: full model)")
    ax.set_ylabel("fraction")
    kl_axis = ax.twinx()
    kl_axis.plot(layers, [c["kl"] for c in curves], "^--", color="tab:red", label="KL(full || cut), nats")
    kl_axis.set_ylabel("KL (nats)")
    kl_axis.set_ylim(bottom=0)
    layer = result["internalization_layer"]
    ax.axvline(layer, color="grey", linestyle=":", label=f"unchanged from layer {layer}")
    handles = ax.get_legend_handles_labels()
    kl_handles = kl_axis.get_legend_handles_labels()
    ax.legend(handles[0] + kl_handles[0], handles[1] + kl_handles[1], loc="center right", fontsize=8)
    ax.set_xticks(layers)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_budgets(ax: Any, result: dict[str, Any]) -> None:
    """Agreement (left axis) and KL (right axis) against the visual budget N (log scale)."""
    budgets = result["budget_curve"]
    ns = [b["budget"] for b in budgets]
    ax.plot(ns, [b["agreement"] for b in budgets], "o-", color="tab:blue", label="next-token agreement")
    tolerance = result["settings"]["budget_tolerance"]
    ax.axhline(1 - tolerance, color="grey", linestyle=":", label=f"1 - budget_tolerance ({1 - tolerance:g})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("text rows see N visual rows per image/video (from layer 0 on)")
    kl_axis = ax.twinx()
    kl_axis.plot(ns, [b["kl"] for b in budgets], "^--", color="tab:red", label="KL(full || budget), nats")
    kl_axis.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()
    kl_handles = kl_axis.get_legend_handles_labels()
    ax.legend(handles[0] + kl_handles[0], handles[1] + kl_handles[1], loc="lower right", fontsize=8)
    ax.set_title(f"recommended --visual-budget {result['recommended_visual_budget']}", fontsize=10)


def write_report(result: dict[str, Any], out_dir: str | Path, title: str) -> Path:
    """Write analysis.json and analysis.png into out_dir; returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULT_FILE
    path.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / PLOT_FILE, title)
    logger.info("analysis written to %s and %s", path, out / PLOT_FILE)
    return path
