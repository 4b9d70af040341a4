"""One vLLM engine of `sparrow-vllm check`, run in its own process.

Usage: python -m sparrow_vllm.check.engine_run JOB.json RESULT.json

Serves the check prompts greedily (all in one batch), and reports the outputs, the prompt
token ids, vLLM's spec-decode counters and, from the worker, which runner and drafting
adapter ran, the draft attention backend's calls and the draft cache's size and use. With
a visual prompt it first prefills the last one alone (both engines, so they serve the same
sequence of requests) and, with Sparrow, reads the draft cache's rows for it.
The worker is read with `collective_rpc(function)`, so the parent sets
VLLM_ALLOW_INSECURE_SERIALIZATION=1 for this local, single-use engine.
"""

from __future__ import annotations

from typing import Any

from sparrow_vllm.check.prompts import build_prompt
from sparrow_vllm.engine_job import child_main
from sparrow_vllm.serving.vllm.runners import drafting_adapter


def _adapter(worker: Any) -> Any:
    return drafting_adapter(worker.model_runner)


def worker_info(worker: Any) -> dict[str, Any]:
    from sparrow_vllm.serving.attention import backend_calls

    runner = worker.model_runner
    adapter = _adapter(worker)
    drafter = getattr(adapter, "drafter", None)
    return {
        "runner_class": f"{type(runner).__module__}.{type(runner).__name__}",
        "runner_bases": [f"{c.__module__}.{c.__name__}" for c in type(runner).__mro__],
        "adapter": None if adapter is None else f"{type(adapter).__module__}.{type(adapter).__name__}",
        "sparrow_adapter": getattr(adapter, "adapter_name", None),
        "sparrow_steps": getattr(drafter, "steps", None),
        "attention_backend_calls": backend_calls(),
        "draft_cache": None if drafter is None else {**drafter.cache.stats(), "bytes": drafter.cache.nbytes},
    }


def cached_rows(worker: Any) -> dict[str, Any]:
    return _adapter(worker).cached_rows()


def spec_metrics(llm: Any) -> dict[str, float]:
    out = {}
    for metric in llm.get_metrics():
        if metric.name.startswith("vllm:spec_decode"):
            out[metric.name] = getattr(metric, "values", None) or getattr(metric, "value", None)
    return out


def inspect_after_prefill(llm: Any, prompt: dict[str, Any], params: Any) -> dict[str, Any]:
    """Prefill one request alone, read the draft cache's rows for it, abort it."""
    engine = llm.llm_engine
    engine.add_request("inspect", prompt, params)
    prompt_ids: list[int] = []
    for _ in range(1000):
        outputs = engine.step()
        done = [o for o in outputs if o.outputs and o.outputs[0].token_ids]
        if done:
            prompt_ids = list(done[0].prompt_token_ids)
            break
    rows = {"seq": [], "tokens": []}
    if llm.llm_engine.vllm_config.speculative_config is not None:
        # the one live request (vLLM gives it an internal id derived from "inspect")
        live = list(llm.collective_rpc(cached_rows)[0].values())
        if len(live) != 1:
            raise RuntimeError(f"expected one live request in the draft cache, found {len(live)}")
        rows = live[0]
    engine.abort_request(["inspect"])
    return {"prompt_token_ids": prompt_ids, **rows}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=job["target"], speculative_config=job.get("speculative_config"), seed=0,
              disable_log_stats=False, **job["engine"])
    tokenizer = llm.get_tokenizer()
    prompts = [build_prompt(kind, tokenizer, seed=i) for i, kind in enumerate(job["kinds"])]
    params = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"], ignore_eos=True)
    result: dict[str, Any] = {}
    visual = [i for i, kind in enumerate(job["kinds"]) if kind != "text"]
    if visual:  # both engines run the same sequence of requests
        result["inspected"] = {"kind": job["kinds"][visual[-1]],
                               **inspect_after_prefill(llm, prompts[visual[-1]], params)}
    generated = llm.generate(prompts, params, use_tqdm=False)
    result["outputs"] = [list(g.outputs[0].token_ids) for g in generated]
    result["prompt_token_ids"] = [list(g.prompt_token_ids) for g in generated]
    result["metrics"] = spec_metrics(llm)
    result["worker"] = llm.collective_rpc(worker_info)[0]
    return result


if __name__ == "__main__":
    child_main(run_job, log_info=False)
