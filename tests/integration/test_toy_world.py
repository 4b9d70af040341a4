"""The committed toy world in vLLM: drafts made by `sparrow-vllm train` load and keep the
target's greedy output, for Sparrow and for the full-visual draft under vLLM's `eagle`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.toy_models import assert_ran_on, run_engine_job, sparrow

TOY_WORLD = Path(__file__).resolve().parents[2] / "models" / "toy-world"
PROMPTS = [
    {"toy_scene": {"seed": 1, "index": i, "frames": frames, "question": "describe"}}
    for i, frames in enumerate([6, 8, 8, 16])
]
ENGINE = {"max_model_len": 1024, "max_num_seqs": 4, "limit_mm_per_prompt": {"video": 1}}


def _job(speculative_config=None) -> dict:
    return {
        "target": str(TOY_WORLD / "target"), "speculative_config": speculative_config,
        "engine": ENGINE, "prompts": PROMPTS, "max_tokens": 48, "ignore_eos": False,
    }


@pytest.fixture(scope="module")
def baseline(runner, tmp_path_factory):
    return run_engine_job(_job(), tmp_path_factory.mktemp("toy-world-baseline"), runner=runner)


def _accepted(result: dict) -> float:
    metrics = result["metrics"]
    return metrics["vllm:spec_decode_num_accepted_tokens"] / max(metrics["vllm:spec_decode_num_drafts"], 1)


def test_trained_sparrow_draft_keeps_greedy_output(baseline, runner, tmp_path):
    """Adaptive draft length (the default): K changes per step, the output does not."""
    result = run_engine_job(_job(sparrow(TOY_WORLD / "sparrow-draft", k=4, adaptive=True)), tmp_path,
                            runner=runner)
    assert_ran_on(result, runner)
    assert result["outputs"] == baseline["outputs"]
    # the policy chose several lengths (its warm-up alone tries 4 and 0)
    assert {"0", "4"} <= set(result["draft_lengths"])
    # trained: acceptance length (1 + accepted per draft) over 2.5
    assert 1 + _accepted(result) > 2.5


def test_draft_length_schedule_with_zero_keeps_greedy_output(baseline, runner, tmp_path):
    """vLLM's batch-size schedule, adaptive off: 2 drafts while 4 requests run, none at 2
    or 3, 4 for the last one. Requests go from K = 2 to 0 to 4 mid-answer; K = 0 steps
    must keep the draft cache whole for the K = 4 steps after them."""
    spec = {**sparrow(TOY_WORLD / "sparrow-draft", k=4), "adaptive_draft_length": False,
            "num_speculative_tokens_per_batch_size": [[1, 1, 4], [2, 3, 0], [4, 4, 2]]}
    job = {**_job(spec), "record_drafts": True}
    result = run_engine_job(job, tmp_path, runner=runner)
    assert_ran_on(result, runner)
    assert result["draft_lengths"] is None
    assert result["outputs"] == baseline["outputs"]
    assert result["draft_widths"] == [0, 2, 4]
    # the last request's K = 4 drafts, after K = 0 steps, are still accepted
    assert 1 + _accepted(result) > 2.0


def test_local_argmax_reduction_drafts_the_same_tokens(baseline, runner, tmp_path):
    """vLLM's `use_local_argmax_reduction` (greedy drafts by a vocab-parallel argmax of the
    LM head, no all-gather of the draft's logits) drafts what the full argmax drafts."""
    plain = {**_job(sparrow(TOY_WORLD / "sparrow-draft", k=4)), "record_drafts": True}
    local = {**plain, "speculative_config": {**plain["speculative_config"], "use_local_argmax_reduction": True}}
    expected = run_engine_job(plain, tmp_path, runner=runner)
    result = run_engine_job(local, tmp_path, runner=runner)
    assert_ran_on(result, runner)
    assert result["outputs"] == baseline["outputs"]
    assert result["drafts"] == expected["drafts"] and result["greedy_draft_steps"] > 10
    assert 1 + _accepted(result) > 2.0


def test_full_visual_draft_runs_under_vllm_eagle(baseline, runner, tmp_path):
    eagle = {"method": "eagle", "model": str(TOY_WORLD / "eagle-draft"), "num_speculative_tokens": 4}
    result = run_engine_job(_job(eagle), tmp_path, runner=runner)
    assert_ran_on(result, runner, sparrow=False)
    assert result["outputs"] == baseline["outputs"]
    assert _accepted(result) > 0.5


def test_vllm_answers_like_transformers(baseline):
    """Serving reads the video as training did (frames, fps, M-RoPE): vLLM's greedy answers
    are the HF target's."""
    from sparrow_vllm.toy_world.render import render
    from sparrow_vllm.toy_world.scene import sample_scene
    from sparrow_vllm.toy_world.target import process, prompt_messages
    from sparrow_vllm.training.target import load_hf_target

    target = load_hf_target(TOY_WORLD / "target")
    for spec, served in zip(PROMPTS, baseline["outputs"][0], strict=True):
        scene = spec["toy_scene"]
        prompt = target.processor.apply_chat_template(prompt_messages("describe"), add_generation_prompt=True, tokenize=False)
        inputs = process(target.processor, [prompt], [render(sample_scene(1, scene["index"]), scene["frames"])])
        out = target.model.generate(**inputs, max_new_tokens=48, do_sample=False)
        assert out[0, inputs["input_ids"].shape[1]:].tolist() == served
