"""vLLM's default compile mode (what users run: no --enforce-eager): the draft forward is
compiled with vLLM's torch.compile backend (inductor on the CPU) and the output is the
target's own, on both runners."""

from __future__ import annotations

from tests.integration.test_toy_world import ENGINE, PROMPTS, TOY_WORLD, _job
from tests.toy_models import assert_ran_on, run_engine_job, sparrow

COMPILED = {**ENGINE, "enforce_eager": False}


def test_compiled_draft_keeps_greedy_output(runner, tmp_path):
    # two of the toy world's prompts (one and several requests in a batch), 32 tokens:
    # compiling dominates the run
    job = {**_job(), "engine": COMPILED, "prompts": PROMPTS[1:3], "max_tokens": 32}
    base = run_engine_job(job, tmp_path, runner=runner)
    spec = run_engine_job({**job, "speculative_config": sparrow(TOY_WORLD / "sparrow-draft", k=4, adaptive=True)},
                          tmp_path, runner=runner)
    assert_ran_on(spec, runner)
    assert spec["outputs"] == base["outputs"]
    info = spec["runner_info"]
    assert info["draft_compile_backend"] == "inductor", info
    # warm-up compiled the shape families, and serving added none past the six (dynamo's
    # limit is 8, past which the forward would quietly run eagerly)
    assert 2 <= info["draft_forward_graphs"] <= 6, info
    assert info["sparrow_steps"] > 0
