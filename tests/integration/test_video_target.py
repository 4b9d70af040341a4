"""Sparrow in vLLM on a tiny Qwen2.5-VL: video, image, video+image and text prompts.

The draft reads the target's penultimate layer (vLLM's auxiliary-hidden-state path) and
keeps a text window of 24 rows.
"""

from __future__ import annotations

import pytest

from tests.integration.conftest import run_engine_job, sparrow

VIDEO_TOKEN = "<|video_pad|>"
IMAGE_TOKEN = "<|image_pad|>"
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
}


@pytest.fixture(scope="module")
def baseline(toy_models, tmp_path_factory):
    job = {"target": str(toy_models["vl_target"]), "engine": ENGINE, "prompts": PROMPTS}
    return run_engine_job(job, tmp_path_factory.mktemp("vl-baseline"))


@pytest.fixture(scope="module")
def sparrow_run(toy_models, tmp_path_factory):
    job = {
        "target": str(toy_models["vl_target"]),
        "speculative_config": sparrow(toy_models["vl_draft"]),
        "engine": ENGINE,
        "prompts": PROMPTS,
        "inspect_after_prefill": 0,
    }
    return run_engine_job(job, tmp_path_factory.mktemp("vl-sparrow"))


def test_greedy_output_equals_target_alone(baseline, sparrow_run):
    assert sparrow_run["outputs"] == baseline["outputs"]
    assert sparrow_run["metrics"]["vllm:spec_decode_num_drafts"] > 0
    assert sparrow_run["metrics"]["vllm:spec_decode_num_accepted_tokens"] > 0


def test_draft_cache_after_video_prefill_holds_no_visual_rows(toy_models, sparrow_run):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(toy_models["vl_target"]))
    visual = {tok.convert_tokens_to_ids(VIDEO_TOKEN), tok.convert_tokens_to_ids(IMAGE_TOKEN)}
    prompt_ids = sparrow_run["inspected_prompt_ids"]
    assert (video_tokens := sum(t in visual for t in prompt_ids)) >= 1
    rows = sparrow_run["cached_rows"]
    assert len(rows) == 1
    (cached,) = rows.values()
    assert not visual & set(cached["tokens"]), "a visual row entered the draft cache"
    # After the prefill, the text rows of the expanded prompt (the window keeps the last
    # 24 + K + 1) are cached and nothing else.
    assert 0 < len(cached["tokens"]) <= 24 + 3 + 1
    assert cached["seq"] == sorted(cached["seq"])
    assert video_tokens  # the prompt text is expanded by vLLM; checked via the rows above


def test_finished_requests_leave_the_draft_cache(sparrow_run):
    assert sparrow_run["cached_rows_after"] == {}
