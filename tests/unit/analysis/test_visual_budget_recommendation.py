"""`sparrow-vllm analyze`'s --visual-budget recommendation: the rule over the measured curves,
the ladder that stops where no sample is long enough, the mask that hides only the rows a
budget removes, and the summary's last line (the train flag to pass)."""

from __future__ import annotations

import argparse

import pytest
import torch

from sparrow_vllm.analysis.budget_advice import BudgetTotals, budget_curve, recommend_visual_budget
from sparrow_vllm.analysis.internalization import AnalyzeSettings, summary
from sparrow_vllm.analysis.visual_cutoff import cutoff_mask
from sparrow_vllm.cli.options import add_schema_arguments, settings_from

RULE = {"premise_depth": 0.75, "tolerance": 0.02, "max_budget": 512}


def point(n: int, agreement: float, samples: int = 4) -> dict:
    return {"budget": n, "agreement": agreement, "kl": 1 - agreement, "samples": samples, "positions": 40}


CURVE = [point(4, 0.6), point(8, 0.9), point(16, 0.985), point(32, 1.0)]


def test_none_when_the_target_internalizes_the_video_by_the_premise_depth():
    for layer in (0, 3, 21):  # 21 <= 0.75 * 28
        budget, reason = recommend_visual_budget(layer, 28, CURVE, None, **RULE)
        assert budget == "none" and f"x* = {layer} of L = 28" in reason
    assert recommend_visual_budget(22, 28, CURVE, None, **RULE)[0] == 16
    assert recommend_visual_budget(22, 28, CURVE, None, **{**RULE, "premise_depth": 0.8})[0] == "none"


def test_smallest_budget_within_tolerance_of_the_full_model():
    budget, reason = recommend_visual_budget(8, 8, CURVE, None, **RULE)
    assert budget == 16 and "0.985" in reason and "x* = 8 of L = 8" in reason
    assert recommend_visual_budget(8, 8, CURVE, None, **{**RULE, "tolerance": 0.1})[0] == 8
    assert recommend_visual_budget(8, 8, CURVE, None, **{**RULE, "tolerance": 0.0})[0] == 32


def test_no_budget_within_tolerance_falls_back_to_the_largest_tried_or_where_the_ladder_stopped():
    short = CURVE[:2]
    budget, reason = recommend_visual_budget(8, 8, short, None, **RULE)
    assert budget == 8 and "largest N tried" in reason
    # no sample was longer than 16 rows: N = 16 keeps them all (the full model on this data)
    budget, reason = recommend_visual_budget(8, 8, short, 16, **RULE)
    assert budget == 16 and "no analyzed image or video is longer than 16" in reason
    # every sample fit in the ladder's first rung: nothing was measured
    assert recommend_visual_budget(8, 8, [], 4, **RULE)[0] == 4


def test_the_recommendation_is_capped_at_max_budget():
    budget, reason = recommend_visual_budget(8, 8, CURVE, None, **{**RULE, "max_budget": 12})
    assert budget == 12 and "capped at max_budget 12" in reason
    assert recommend_visual_budget(8, 8, CURVE[:2], 1024, **RULE)[0] == 512
    assert recommend_visual_budget(8, 8, [point(1024, 0.7)], None, **RULE)[0] == 512


def test_the_ladder_stops_at_the_first_budget_no_sample_exceeds():
    totals = {4: BudgetTotals(agree=6, positions=10, kl=2.0, samples=2), 8: BudgetTotals(9, 10, 0.5, 1)}
    curve, stopped = budget_curve(totals, [4, 8, 16, 32])
    assert [p["budget"] for p in curve] == [4, 8] and stopped == 16
    assert curve[0] == {"budget": 4, "samples": 2, "positions": 10, "agreement": 0.6, "kl": 0.2}
    assert budget_curve(totals, [4, 8]) == (curve, None)
    # a rung no sample reached ends the curve even if a later one has counts
    assert budget_curve({4: totals[4], 16: totals[8]}, [4, 8, 16]) == ([curve[0]], 8)


def test_a_budget_mask_hides_only_the_removed_visual_keys_from_text_queries():
    visual = torch.tensor([False, True, True, True, False])
    removed = torch.tensor([False, True, False, True, False])  # row 2 is kept
    allowed = cutoff_mask(visual, "sdpa", torch.float32, removed)[0, 0]
    assert allowed[4].tolist() == [True, False, True, False, True]  # text sees text and kept rows
    assert allowed[3].tolist() == [True, True, True, True, False]  # visual rows keep their full view
    assert torch.equal(cutoff_mask(visual, "sdpa", torch.float32, visual), cutoff_mask(visual, "sdpa", torch.float32))
    assert cutoff_mask(visual, "sdpa", torch.float32, torch.zeros(5, dtype=torch.bool))[0, 0].equal(
        torch.ones(5, 5, dtype=torch.bool).tril())


def test_settings_read_the_ladder_from_the_command_line_sorted():
    parser = argparse.ArgumentParser()
    add_schema_arguments(parser, AnalyzeSettings)
    settings = settings_from(parser.parse_args(["--budget-ladder", "64", "8", "16", "--max-budget", "32"]),
                             AnalyzeSettings)
    assert settings.budget_ladder == (8, 16, 64) and settings.max_budget == 32
    assert settings_from(parser.parse_args([]), AnalyzeSettings).budget_ladder == (4, 8, 16, 32, 64, 128, 256, 512)
    with pytest.raises(ValueError, match="budgets must be >= 1"):
        AnalyzeSettings(budget_ladder=(0, 8))


def test_summary_ends_with_the_train_flag_to_pass():
    curves = [{"layer": x, "agreement": a, "kl": 1 - a, "accuracy": None} for x, a in enumerate([0.8, 0.9, 1.0])]
    budget, reason = recommend_visual_budget(2, 2, CURVE, None, **RULE)
    result = {"num_layers": 2, "samples": 4, "positions": 40, "tolerance": 0.01, "internalization_layer": 2,
              "suggested_bridge_layer": 1, "curves": curves, "budget_curve": CURVE,
              "recommended_visual_budget": budget, "recommendation_reason": reason}
    lines = summary(result, "target").splitlines()
    assert lines[-1] == f"recommended: sparrow-vllm train ... --visual-budget 16 ({reason})"
    assert "N=16 agreement 0.985 (4 samples)" in lines[-2]
    result.update(recommended_visual_budget="none", budget_curve=[])
    assert summary(result, "target").splitlines()[-1].startswith("recommended: sparrow-vllm train ... --visual-budget none")
