"""`sparrow-vllm check` without an engine: prompt kinds per family, the report, and a
mismatched pair failing before any engine starts, with the reason and exit code 1."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sparrow_vllm.check.prompts import build_prompt, prompt_kinds
from sparrow_vllm.check.run import (
    CheckReport,
    CheckSettings,
    _compare,
    _visual_rows_cached,
    run_check,
)
from sparrow_vllm.cli.main import main
from sparrow_vllm.draft.checkpoint import save_draft
from sparrow_vllm.draft.factory import new_draft
from sparrow_vllm.families import load_family, resolve_family
from sparrow_vllm.toy_targets import build_toy_target
from tests.unit.helpers import vl_family


def test_prompt_kinds_follow_the_family():
    assert prompt_kinds(resolve_family(SimpleNamespace(model_type="qwen2"))) == ["text"]
    family = resolve_family(SimpleNamespace(model_type="llava_onevision"))
    assert prompt_kinds(family) == ["text", "image", "video", "video+image"]


@pytest.mark.parametrize("arch, video", [("qwen3_vl", "<|video_pad|>"), ("llava_onevision", "<video>")])
def test_prompts_use_the_targets_own_chat_template(tmp_path, arch, video):
    from transformers import AutoTokenizer

    target = build_toy_target(arch, tmp_path / arch, num_layers=1)
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    prompt = build_prompt("video+image", tokenizer)
    assert video in prompt["prompt"]
    assert set(prompt["multi_modal_data"]) == {"video", "image"}
    frames, meta = prompt["multi_modal_data"]["video"]
    assert frames.shape[0] == meta["total_num_frames"]
    assert "multi_modal_data" not in build_prompt("text", tokenizer)


def test_mismatched_pair_fails_before_any_engine_with_the_reason(tmp_path, capsys):
    target = build_toy_target("qwen3_vl", tmp_path / "target", num_layers=1)
    other = build_toy_target("qwen2", tmp_path / "other", hidden_size=64, num_layers=1)
    draft = save_draft(tmp_path / "draft", new_draft(load_family(other)))
    report = run_check(target, draft)
    assert not report.passed and not report.prompts
    assert "hidden_size=64 but the target has 128" in report.failures[0]
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--target", str(target), "--draft", str(draft), "--json", str(tmp_path / "r.json")])
    assert exit_info.value.code == 1
    assert "FAILED" in capsys.readouterr().out
    saved = CheckReport.model_validate_json((tmp_path / "r.json").read_text())
    assert saved.failures == report.failures


def test_a_differing_output_is_a_failure_naming_the_prompt_and_token():
    report = CheckReport(target="t", draft="d", settings=CheckSettings())
    alone = {"prompt_token_ids": [[1, 2], [3]], "outputs": [[5, 6, 7], [8, 9]]}
    sparrow = {"outputs": [[5, 6, 7], [8, 4]]}
    _compare(report, ["text", "video"], alone, sparrow)
    assert [p.equal for p in report.prompts] == [True, False]
    assert report.prompts[1].first_difference == 1
    assert "video prompt" in report.failures[0] and "at token 1 (4 vs 9)" in report.failures[0]


@pytest.mark.parametrize(("budget", "expected"), [("none", (4, 0)), (2, (2, 2)), ("all", (0, 4))])
def test_cached_visual_rows_count_against_the_draft_only_when_its_budget_does_not_keep_them(budget, expected):
    """Rows 1..4 carry the four video tokens 2..5 (budget 2 keeps tokens 3 and 5)."""
    checkpoint = SimpleNamespace(sparrow=SimpleNamespace(frame_text="visual", visual_budget=budget))
    inspected = {"prompt_token_ids": [1, 1, 60, 60, 60, 60, 2], "seq": [0, 1, 2, 3, 4, 5]}
    assert _visual_rows_cached(vl_family(60), checkpoint, inspected) == expected
