"""`sparrow-vllm analyze`'s visual-budget advice: the budget probe's totals, its curve, and
the rule that turns the internalization layer and that curve into the draft's
`--visual-budget` (internalization.py runs the probe)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparrow_vllm.draft.visual_budget import VisualBudget


@dataclass
class BudgetTotals:
    """Sums over the analyzed positions of the samples that count at one budget N."""

    agree: int = 0
    positions: int = 0
    kl: float = 0.0
    samples: int = 0

    def as_dict(self, budget: int) -> dict[str, Any]:
        return {
            "budget": budget,
            "samples": self.samples,
            "positions": self.positions,
            "agreement": self.agree / max(self.positions, 1),
            "kl": self.kl / max(self.positions, 1),
        }


def budget_curve(totals: dict[int, BudgetTotals], ladder: list[int]) -> tuple[list[dict[str, Any]], int | None]:
    """The budget curve in ladder order, and the N it stopped at (the first N no sample's
    image or video exceeds; None when every N of the ladder was measured)."""
    curve = []
    for n in ladder:
        if n not in totals or totals[n].samples == 0:
            return curve, n
        curve.append(totals[n].as_dict(n))
    return curve, None


def recommend_visual_budget(
    internalization: int, num_layers: int, curve: list[dict[str, Any]], stopped_at: int | None, *,
    premise_depth: float, tolerance: float, max_budget: int,
) -> tuple[VisualBudget, str]:
    """The draft's --visual-budget from the measured curves, and why.

    - "none" when predictions are unchanged with the visual rows removed from layer x* <=
      premise_depth * L on: the text rows carry the video, a text-only draft suffices;
    - else the smallest N of the budget curve whose agreement is >= 1 - tolerance;
    - else the N the ladder stopped at (it keeps every visual row of the analyzed samples,
      so it equals the full model on them), or else the largest N tried;
    - never above max_budget."""
    depth = premise_depth * num_layers
    if internalization <= depth:
        return "none", (f"predictions unchanged with the visual rows removed from layer x* = {internalization} "
                        f"of L = {num_layers} on (<= {premise_depth:g} L = {depth:g}): the text rows carry "
                        "the video, so the draft needs no visual row")
    reads = f"the target reads its visual rows up to layer x* = {internalization} of L = {num_layers} " \
            f"(> {premise_depth:g} L = {depth:g})"
    for point in curve:
        if point["agreement"] >= 1 - tolerance:
            n = min(int(point["budget"]), max_budget)
            return n, (f"{reads}; with {point['budget']} visual rows per image/video the text rows agree "
                       f"with the full model at {point['agreement']:.3f} of positions (full model 1, "
                       f"tolerance {tolerance:g}; {point['samples']} samples)"
                       + (f", capped at max_budget {max_budget}" if n < point["budget"] else ""))
    below = (f"no N up to {curve[-1]['budget']} reaches agreement >= {1 - tolerance:.3f} "
             f"(agreement {curve[-1]['agreement']:.3f} at N = {curve[-1]['budget']})" if curve else "")
    if stopped_at is not None:
        n = min(stopped_at, max_budget)
        return n, (f"{reads}; {below + '; ' if below else ''}no analyzed image or video is longer than "
                   f"{stopped_at} rows, so N = {stopped_at} keeps them all (the full model on this data; "
                   "analyze longer videos to measure larger budgets)"
                   + (f", capped at max_budget {max_budget}" if n < stopped_at else ""))
    if not curve:
        return max_budget, f"{reads}; no budget was measured, so max_budget {max_budget}"
    n = min(int(curve[-1]["budget"]), max_budget)
    return n, f"{reads}; {below}, so the largest N tried" + (
        f", capped at max_budget {max_budget}" if n < curve[-1]["budget"] else "")
