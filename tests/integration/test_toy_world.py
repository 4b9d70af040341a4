"""The committed toy world in vLLM: drafts made by `sparrow-vllm train` load and keep the
target's greedy output, for Sparrow and for the full-visual draft under vLLM's `eagle`."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparrow_vllm.analysis.trace_replay import replay_decisions
from sparrow_vllm.engine_job import EngineJobError
from sparrow_vllm.engine_job import run_engine_job as run_job_process
from sparrow_vllm.serving.step_trace import TRACE_ENV, read_trace
from tests.hub_cache import lay_out_hub_cache, offline_hub_env
from tests.toy_models import JOB, assert_ran_on, run_engine_job, runner_env, sparrow

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
    tmp = tmp_path_factory.mktemp("toy-world-baseline")
    result = run_engine_job(_job(), tmp, runner=runner, env={TRACE_ENV: str(tmp / "trace.jsonl")})
    return {**result, "trace": read_trace(tmp / "trace.jsonl")}


def test_step_trace_without_speculation(baseline, runner):
    """SPARROW_STEP_TRACE records an engine without speculation too: every step drafts 0,
    and every request's prompt and output tokens are in it."""
    header, events = baseline["trace"]
    assert header["policy"] == "none" and header["num_speculative_tokens"] == 0 and header["runner"] == runner
    scheduled = [e for e in events if e["event"] == "schedule"]
    assert {e["num_draft_tokens"] for e in scheduled} == {0}
    assert len([e for e in events if e["event"] == "output"]) == len(scheduled)
    tokens: dict[str, int] = {}
    for e in scheduled:
        for req_id, q, _, _ in e["requests"]:
            tokens[req_id] = tokens.get(req_id, 0) + q
    # each request's prompt and outputs, less the last output (never fed back)
    fed = [p + len(out) - 1 for p, out in zip(baseline["prompt_lens"], baseline["outputs"][0], strict=True)]
    assert sorted(tokens.values()) == sorted(fed)


def _accepted(result: dict) -> float:
    metrics = result["metrics"]
    return metrics["vllm:spec_decode_num_accepted_tokens"] / max(metrics["vllm:spec_decode_num_drafts"], 1)


def test_trained_sparrow_draft_keeps_greedy_output(baseline, runner, tmp_path):
    """Adaptive draft length (the default): K changes per step, the output does not."""
    trace = tmp_path / "trace.jsonl"
    result = run_engine_job(_job(sparrow(TOY_WORLD / "sparrow-draft", k=4, adaptive=True)), tmp_path,
                            runner=runner, env={TRACE_ENV: str(trace)})
    assert_ran_on(result, runner)
    assert result["outputs"] == baseline["outputs"]
    # the policy chose several lengths (its warm-up alone tries 4 and 0)
    assert {"0", "4"} <= set(result["draft_lengths"])
    # the step trace replays offline to every K' the engine chose
    header, events = read_trace(trace)
    assert header["policy"] == "adaptive" and header["method"] == "sparrow" and header["runner"] == runner
    decisions = replay_decisions(header, events)
    assert len(decisions) >= sum(result["draft_lengths"].values()) > 10
    assert [recorded for _, recorded, _ in decisions] == [replayed for _, _, replayed in decisions]
    # trained: acceptance length (1 + accepted per draft) over 2.5
    assert 1 + _accepted(result) > 2.5


def test_draft_length_schedule_with_zero_keeps_greedy_output(baseline, runner, tmp_path):
    """vLLM's batch-size schedule, adaptive off: 2 drafts while 4 requests run, none at 2
    or 3, 4 for the last one. Requests go from K = 2 to 0 to 4 mid-answer; K = 0 steps
    must keep the draft cache whole for the K = 4 steps after them."""
    spec = {**sparrow(TOY_WORLD / "sparrow-draft", k=4), "adaptive_draft_length": False,
            "num_speculative_tokens_per_batch_size": [[1, 1, 4], [2, 3, 0], [4, 4, 2]]}
    job = {**_job(spec), "record_drafts": True}
    result = run_engine_job(job, tmp_path, runner=runner, env={TRACE_ENV: str(tmp_path / "trace.jsonl")})
    assert_ran_on(result, runner)
    assert result["draft_lengths"] is None
    assert result["outputs"] == baseline["outputs"]
    assert result["draft_widths"] == [0, 2, 4]
    # the trace records the table's K' for each step's batch size
    header, events = read_trace(tmp_path / "trace.jsonl")
    assert header["policy"] == "table"
    table = {1: 4, 2: 0, 3: 0, 4: 2}
    assert all(e["num_draft_tokens"] == table[len(e["requests"])] for e in events if e["event"] == "schedule")
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


def test_draft_by_hub_id_from_an_offline_cache(baseline, runner, tmp_path):
    """"model": "org/name" with a "revision" resolves through the Hugging Face cache
    (HF_HOME, offline): the workers load the draft from its snapshot there, and the output
    is the target's."""
    hf_home = tmp_path / "hf-home"
    snapshot = lay_out_hub_cache(hf_home, "sparrow-tests/toy-world-draft", TOY_WORLD / "sparrow-draft",
                                 refs=("main", "v1"))
    spec = {**sparrow("sparrow-tests/toy-world-draft", k=4), "revision": "v1"}
    result = run_engine_job(_job(spec), tmp_path, runner=runner, env=offline_hub_env(hf_home))
    assert_ran_on(result, runner)
    assert result["outputs"] == baseline["outputs"]
    loaded = Path(result["runner_info"]["draft_path"]).resolve()
    assert loaded == snapshot.resolve() and loaded.is_relative_to((hf_home / "hub").resolve())
    assert 1 + _accepted(result) > 2.0


def test_a_missing_hub_id_stops_the_engine_at_start_up(tmp_path):
    """Engine construction (LLM(...)) fails in the config, before any weight loads, naming
    the id, the revision, the cache it looked in and the fix."""
    hf_home = tmp_path / "empty-hf-home"
    env = {**runner_env("v1"), "VLLM_ENABLE_V1_MULTIPROCESSING": "0", **offline_hub_env(hf_home)}
    with pytest.raises(EngineJobError) as error:
        run_job_process(JOB, _job(sparrow("sparrow-tests/no-such-draft")), tmp_path, "missing", env=env,
                        timeout=300)
    assert ("SparrowConfigError: Sparrow draft 'sparrow-tests/no-such-draft' (revision 'main', the default) "
            f"is not a local directory and was not found in the Hugging Face cache {hf_home / 'hub'} "
            "(HF_HUB_OFFLINE is set, so nothing was downloaded). Download it with "
            "`hf download sparrow-tests/no-such-draft`") in str(error.value)
    log = (tmp_path / "missing.log").read_text()
    assert "Loading weights" not in log and "Starting to load model" not in log


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
