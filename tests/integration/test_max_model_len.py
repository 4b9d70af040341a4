"""A request reaching max_model_len beside one that does not: the V1 runner skips its
drafter for the whole batch on such steps (EAGLE's KV cache has no slots past the limit),
which would leave a gap in every request's text rows. Sparrow keeps drafting (ledger
entry 11); the drafter's gap detection (TextCacheLayout.note_holes) must find none."""

from __future__ import annotations

from tests.toy_models import assert_ran_on, run_engine_job, sparrow

WORDS = ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op", "qr", "st"]
# 50 tokens: stops at max_model_len = 64 after 14 tokens; 6 tokens: generates all 24
PROMPTS = [{"text": " " + " ".join(WORDS * 5)}, {"text": " " + " ".join(WORDS[:6])}]


def test_no_gap_when_a_request_reaches_max_model_len(toy_models, runner, tmp_path):
    job = {"target": str(toy_models["text_target"]), "prompts": PROMPTS, "max_tokens": 24,
           "speculative_config": sparrow(toy_models["text_draft"], k=3),
           "engine": {"max_model_len": 64, "max_num_seqs": 4}}
    run = run_engine_job(job, tmp_path, runner=runner)
    assert_ran_on(run, runner)
    short, long = run["prompt_lens"][0] + len(run["outputs"][0][0]), len(run["outputs"][0][1])
    assert short == 64 and long == 24, (short, long)  # the first hit the limit, mid-run
    cache = run["runner_info"]["draft_cache"]
    assert cache["holed_requests"] == 0, cache
