"""Sparrow in vLLM on a tiny Qwen2.5-VL: video, image, video+image and text prompts.

The draft reads the target's penultimate layer (vLLM's auxiliary-hidden-state path) and
keeps a text window of 24 rows. Both model runners (the `runner` fixture).
"""

from __future__ import annotations

import pytest

from sparrow_vllm.draft.visual_budget import kept_token_mask
from tests.draft_copies import with_visual_budget
from tests.toy_models import assert_ran_on, run_engine_job, sparrow

VIDEO_TOKEN = "<|video_pad|>"
PROMPTS = [
    {"text": "ab cd ef", "video": {"frames": 8, "size": 112, "seed": 0}},
    {"text": "gh ij", "image": {"size": 112, "seed": 1}},
    {"text": "kl mn op", "video": {"frames": 4, "size": 112, "seed": 2}, "image": {"size": 56, "seed": 3}},
    {"text": " qr st uv wx ab cd ab cd"},
    {"text": "yz ab", "video": {"frames": 8, "size": 112, "seed": 4}},
]
ENGINE = {
    "max_model_len": 1024,
    "max_num_seqs": 8,
    "enable_chunked_prefill": True,
    "max_num_batched_tokens": 128,
    "limit_mm_per_prompt": {"video": 1, "image": 1},
    # KV blocks of 32 tokens (the CPU default, 128, is longer than every prompt here, so
    # vLLM's prefix cache would hold nothing): a repeated video prompt finds its first
    # block, text and video tokens, in the prefix cache
    "block_size": 32,
}


@pytest.fixture(scope="module")
def baseline(toy_models, runner, tmp_path_factory):
    job = {"target": str(toy_models["vl_target"]), "engine": ENGINE, "prompts": PROMPTS, "rounds": 2}
    return run_engine_job(job, tmp_path_factory.mktemp("vl-baseline"), runner=runner)


@pytest.fixture(scope="module")
def sparrow_run(toy_models, runner, tmp_path_factory):
    job = {
        "target": str(toy_models["vl_target"]),
        "speculative_config": sparrow(toy_models["vl_draft"]),
        "engine": ENGINE,
        "prompts": PROMPTS,
        "inspect_after_prefill": 0,
        "rounds": 2,
    }
    return run_engine_job(job, tmp_path_factory.mktemp("vl-sparrow"), runner=runner)


def test_greedy_output_equals_target_alone(baseline, sparrow_run, runner):
    assert_ran_on(sparrow_run, runner)
    assert sparrow_run["outputs"] == baseline["outputs"]
    assert sparrow_run["metrics"]["vllm:spec_decode_num_drafts"] > 0
    assert sparrow_run["metrics"]["vllm:spec_decode_num_accepted_tokens"] > 0


def test_prefix_cache_hits_on_video_prompts_keep_output_exact(baseline, sparrow_run):
    """Round 1's prompt 0 repeats the inspected (aborted) request, and round 2 repeats
    round 1: vLLM serves their first blocks, video tokens included, from its prefix cache;
    the draft starts from the cached requests' text rows and the output stays the target's."""
    first, second = sparrow_run["prefix_cache"]
    assert first["hits"] > 0 and second["hits"] > 0, sparrow_run["prefix_cache"]
    assert sparrow_run["outputs"][1] == sparrow_run["outputs"][0] == baseline["outputs"][0]
    assert sparrow_run["runner_info"]["draft_cache"]["reused_rows"] > 0, sparrow_run["runner_info"]


def test_draft_cache_after_video_prefill_holds_no_visual_rows(toy_models, sparrow_run):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(toy_models["vl_target"]))
    video_id = tok.convert_tokens_to_ids(VIDEO_TOKEN)
    # vLLM expands the one placeholder to ceil(T/2) * (H/28) * (W/28) = 4 * 4 * 4 tokens.
    prompt = sparrow_run["inspected_prompt_ids"]
    at = prompt.index(video_id)
    expanded = prompt[:at] + [video_id] * 64 + prompt[at + 1 :]
    (cached,) = sparrow_run["cached_rows"].values()
    # Row i carries token i + 1 (the last row carries the first generated token).
    text_rows = [i for i in range(len(expanded)) if i + 1 == len(expanded) or expanded[i + 1] != video_id]
    assert len(text_rows) == len(prompt) - 1 <= 24 + 3 + 1  # all fit in the window ring
    assert cached["seq"] == text_rows
    assert cached["tokens"][:-1] == [expanded[i + 1] for i in text_rows[:-1]]
    assert video_id not in cached["tokens"]


def test_aborted_request_leaves_the_draft_cache(sparrow_run):
    # the inspected request was aborted; the following generate round freed its slot
    assert not any(r.startswith("inspect") for r in sparrow_run["cached_rows_after"])


# ---- a draft with a visual budget (issue 31): kept visual rows are cached like text rows --

BUDGET = 8


@pytest.fixture(scope="module")
def budget_run(toy_models, runner, tmp_path_factory):
    root = tmp_path_factory.mktemp("vl-budget")
    job = {
        "target": str(toy_models["vl_target"]),
        # no window: every cached row stays visible, so the inspection sees every kept row
        "speculative_config": sparrow(with_visual_budget(toy_models["vl_draft"], root, BUDGET, window=None)),
        "engine": ENGINE,
        "prompts": PROMPTS,
        "inspect_after_prefill": 0,
        "rounds": 2,
    }
    return run_engine_job(job, root, runner=runner)


def test_budget_draft_keeps_greedy_output_and_reuses_rows(baseline, budget_run, runner):
    """With visual_budget 8 the draft caches 8 rows of each image or video: the output is
    the target's on every prompt kind, through chunked prefill and prefix-cache hits, and
    round 2 starts from round 1's rows, kept visual rows included."""
    assert_ran_on(budget_run, runner)
    assert budget_run["outputs"] == baseline["outputs"]
    assert budget_run["metrics"]["vllm:spec_decode_num_drafts"] > 0
    first, second = budget_run["prefix_cache"]
    assert first["hits"] > 0 and second["hits"] > 0, budget_run["prefix_cache"]
    assert budget_run["runner_info"]["draft_cache"]["reused_rows"] > 0, budget_run["runner_info"]


def test_budget_draft_caches_text_rows_and_the_kept_visual_rows(toy_models, budget_run):
    from transformers import AutoTokenizer

    from sparrow_vllm.families import load_family

    tok = AutoTokenizer.from_pretrained(str(toy_models["vl_target"]))
    video_id = tok.convert_tokens_to_ids(VIDEO_TOKEN)
    prompt = budget_run["inspected_prompt_ids"]
    at = prompt.index(video_id)
    expanded = prompt[:at] + [video_id] * 64 + prompt[at + 1 :]
    visual = load_family(toy_models["vl_target"]).visual_token_mask(expanded, "visual")
    kept = kept_token_mask(visual, BUDGET)
    assert sum(kept) == BUDGET
    (cached,) = budget_run["cached_rows"].values()
    # row i carries token i + 1 (the last row the first generated token): committed when
    # that token is text or one the budget keeps
    rows = [i for i in range(len(expanded)) if i + 1 == len(expanded) or not visual[i + 1] or kept[i + 1]]
    assert cached["seq"] == rows
    assert cached["tokens"][:-1] == [expanded[i + 1] for i in rows[:-1]]
    assert cached["tokens"].count(video_id) == BUDGET
