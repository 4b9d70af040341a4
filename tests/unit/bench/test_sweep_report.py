"""The visual-length sweep's paired intervals, goals and image point, on synthetic runs."""

from __future__ import annotations

import numpy as np
import pytest

from sparrow_vllm.bench.paired import (
    ACCEPTED,
    DRAFTS,
    acceptance_difference,
    drafts_accepted,
    speedup_ratio,
)
from sparrow_vllm.bench.sweep_report import (
    IMAGE_POINT,
    budget_goals,
    budget_goals_markdown,
    draft_step_goals,
    draft_step_goals_markdown,
    markdown,
    method_colours,
    of_point,
    plot,
    summarise,
    video_point,
)
from sparrow_vllm.bench.toy_requests import IMAGE_VISUAL_TOKENS, ToyQuestion


def test_paired_acceptance_difference_resolves_a_shift_that_request_noise_hides():
    rng = np.random.default_rng(0)
    drafts = np.full(12, 10.0)
    # requests differ a lot (0.5 .. 3.5 accepted per draft) and b is a 0.1 per draft above a on every one
    base = rng.uniform(5, 35, size=12)
    a = np.stack([drafts, base], 1)
    b = np.stack([drafts, base + 1.0], 1)
    result = acceptance_difference(a, b)
    assert result["diff"] == pytest.approx(-0.1)
    lo, hi = result["diff_ci95"]
    assert lo == pytest.approx(-0.1) and hi == pytest.approx(-0.1)  # paired: the request noise cancels
    a_lo, a_hi = result["a_ci95"]
    assert a_hi - a_lo > 0.5  # unpaired, the same shift is lost in the spread between requests


def test_paired_acceptance_refuses_different_requests():
    with pytest.raises(ValueError, match="same requests"):
        acceptance_difference(np.ones((3, 2)), np.ones((4, 2)))


def test_speedup_ratio_is_a_median_over_requests_that_one_slow_request_does_not_decide():
    base, a, b = [4.0, 4.0, 4.0, 4.0, 4.0], [1.0, 1.0, 1.0, 1.0, 9.0], [2.0, 2.0, 2.0, 2.0, 2.0]
    result = speedup_ratio(base, a, b)
    assert result["dsr_a"] == pytest.approx(4.0) and result["dsr_b"] == pytest.approx(2.0)
    assert result["ratio"] == pytest.approx(2.0)  # a is twice as fast on four of five requests
    assert result["dsr_a_sum"] == pytest.approx(20 / 13)  # the sum is dominated by the slow one
    lo, hi = result["ratio_ci95"]
    assert lo <= 2.0 <= hi


def test_drafts_accepted_reads_per_request_counters():
    rows = drafts_accepted([{DRAFTS: 4, ACCEPTED: 6}, {}])
    assert rows.tolist() == [[4.0, 6.0], [0.0, 0.0]]


def _record(point: dict, index: int, decode: float, accepted: float, steps: list[float]) -> dict:
    return {"seed": 3, "index": index, "frames": point["frames"], "question": "describe", "kind": point["kind"],
            "prompt_tokens": point["visual_tokens"] + 16, "output_token_ids": [1, 2, 3], "prefill_s": 0.1,
            "decode_s": decode, "draft_prefill_s": 0.01, "draft_decode_s": steps,
            "counters": {DRAFTS: 10.0, ACCEPTED: accepted}}


def _runs(points: list[dict]) -> dict[str, dict]:
    """none, eagle, sparrow and sparrow-budget on three requests per point: the budget draft
    accepts more than eagle everywhere and decodes faster; its draft step grows 5%."""
    spec = {"eagle": (0.6, 25.0, 2.0), "sparrow": (0.7, 22.0, 3.0), "sparrow-budget": (0.5, 28.0, 3.0)}
    runs: dict[str, dict] = {"none": {"requests": []}}
    for method in spec:
        runs[method] = {"requests": []}
    for point in points:
        for i in range(3):
            runs["none"]["requests"].append(_record(point, i, 1.5, 0.0, []))
            for method, (decode, accepted, step) in spec.items():
                grow = 1.05 if method == "sparrow-budget" and point["visual_tokens"] == 25000 else 1.0
                runs[method]["requests"].append(
                    _record(point, i, decode, accepted + i, [step * grow / 1000] * 4))
    return runs


def test_budget_goals_judge_every_goal_with_paired_intervals(tmp_path):
    videos = [video_point(512), video_point(25000)]
    points = [*videos, IMAGE_POINT]
    runs = _runs(points)
    rows = summarise(runs, points)
    assert {r["point"] for r in rows} == {"512", "25000", "image"}
    image_rows = [r for r in rows if r["kind"] == "image"]
    assert all(r["visual_tokens"] == IMAGE_VISUAL_TOKENS and r["frames"] == 1 for r in image_rows)
    goals = budget_goals(rows, runs, videos, IMAGE_POINT)
    assert goals["acceptance_short_vs_eagle"]["met"] and goals["acceptance_short_vs_eagle"]["diff"] > 0
    assert goals["acceptance_long_vs_sparrow"]["met"]
    assert goals["draft_step_long_over_short"]["ratio"] == pytest.approx(1.05)
    assert goals["draft_step_long_over_short"]["met"]
    assert goals["dsr_vs_eagle"]["image"]["ratio"] == pytest.approx(0.6 / 0.5)
    assert goals["dsr_vs_eagle"]["image"]["dsr_a"] == pytest.approx(1.5 / 0.5)
    assert goals["dsr_ge_eagle_at_every_video_length"] and goals["dsr_ge_eagle_on_image"]
    text = budget_goals_markdown(goals)
    assert "acceptance >= eagle's at 512 visual tokens" in text and "on one image" in text
    assert "NOT met" not in text
    assert goals["not_judged"] == {} and "not judged" not in text
    assert all(line.count("|") == 5 for line in text.splitlines() if line.startswith("| "))
    assert "| sparrow-budget | image | 16 |" in markdown(rows)
    plot(rows, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_budget_goals_say_not_met_when_eagle_decodes_faster():
    videos = [video_point(512), video_point(25000)]
    runs = _runs(videos)
    for record in runs["sparrow-budget"]["requests"]:
        record["decode_s"] = 0.9
    goals = budget_goals(summarise(runs, videos), runs, videos, None)
    assert not goals["dsr_ge_eagle_at_every_video_length"] and "dsr_ge_eagle_on_image" not in goals
    assert "NOT met" in budget_goals_markdown(goals)


def test_draft_step_goals_compare_with_eagle_per_length():
    videos = [video_point(512), video_point(25000)]
    runs = _runs(videos)
    goals = draft_step_goals(summarise(runs, videos), runs, videos, "sparrow")
    assert goals["per_length"]["512"]["over_eagle_draft_step"] == pytest.approx(1.5)
    assert not goals["draft_step_le_eagle_at_every_length"]
    settings = {"enforce_eager": False, "batch": 1}
    assert "| 512 | 1.50" in draft_step_goals_markdown(goals, settings)
    without_eagle = {m: r for m, r in runs.items() if m != "eagle"}
    goals = draft_step_goals(summarise(without_eagle, videos), without_eagle, videos, "sparrow")
    assert "not judged: eagle did not run" in draft_step_goals_markdown(goals, settings)


def test_records_before_images_count_as_videos():
    record = {"frames": 64}
    assert of_point([record], video_point(512)) == [record]
    assert of_point([record], IMAGE_POINT) == []


def test_image_question_is_one_frame_with_an_image_placeholder():
    question = ToyQuestion(3, 0, 1, "describe", kind="image")
    assert question.clip().shape == (1, 112, 112, 3)
    assert question.messages()[0]["content"][0] == {"type": "image"}
    content = question.chat_messages()[0]["content"]
    assert content[0]["type"] == "image_url" and content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert question.visual_tokens == IMAGE_VISUAL_TOKENS
    with pytest.raises(ValueError, match="frames=1"):
        ToyQuestion(3, 0, 8, "describe", kind="image")
    with pytest.raises(ValueError, match="video, image"):
        ToyQuestion(3, 0, 8, "describe", kind="audio")


def test_every_method_gets_a_colour_in_the_plot():
    rows = [{"method": m} for m in ("none", "eagle", "sparrow-x", "sparrow", "sparrow-y")]
    colours = method_colours(rows)
    assert "none" not in colours and {"eagle", "sparrow", "sparrow-x", "sparrow-y"} <= set(colours)
    assert len(set(colours.values())) == len(colours)
    with pytest.raises(ValueError, match="7 methods without a colour"):
        method_colours([{"method": f"m{i}"} for i in range(7)])


def test_budget_goals_say_which_goals_were_not_judged():
    videos = [video_point(512), video_point(25000)]
    runs = _runs(videos)
    del runs["eagle"]
    goals = budget_goals(summarise(runs, videos), runs, videos, None)
    assert goals["not_judged"] == {"acceptance_short_vs_eagle": "eagle did not run",
                                   "dsr_vs_eagle": "eagle did not run"}
    assert "| dsr_vs_eagle | - | not judged: eagle did not run | - |" in budget_goals_markdown(goals)
